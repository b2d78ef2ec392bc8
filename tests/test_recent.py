"""RecentMap: at most its bound, and the least recently used entry goes first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agenthost.recent import RecentMap


def test_a_get_keeps_an_entry_and_a_peek_does_not() -> None:
    recent: RecentMap[str, int] = RecentMap(2)
    recent.put("a", 1)
    recent.put("b", 2)
    assert recent.get("a") == 1  # now the most recent: "b" goes next
    recent.put("c", 3)
    assert (recent.peek("a"), recent.peek("b"), recent.peek("c")) == (1, None, 3)
    assert recent.peek("a") == 1  # not moved: "a" is still older than "c"
    recent.put("d", 4)
    assert recent.peek("a") is None and len(recent) == 2


def test_pop_removes_and_answers() -> None:
    recent: RecentMap[str, int] = RecentMap(3)
    recent.put("a", 1)
    assert recent.pop("a") == 1 and recent.pop("a") is None and len(recent) == 0


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecentMap(0)


@given(st.integers(1, 5), st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=60))
def test_it_holds_what_a_list_of_recent_keys_holds(
    bound: int, steps: list[tuple[bool, int]]
) -> None:
    recent: RecentMap[int, int] = RecentMap(bound)
    order: list[int] = []  # the model: keys, least recently used first
    for is_put, key in steps:
        if is_put:
            recent.put(key, key * 10)
            order = [k for k in order if k != key] + [key]
            order = order[-bound:]
        else:
            found = recent.get(key)
            assert found == (key * 10 if key in order else None)
            if key in order:
                order = [k for k in order if k != key] + [key]
        assert len(recent) == len(order) <= bound
    assert list(recent) == order and all(key in recent for key in order)
    assert all(recent.peek(key) == key * 10 for key in order)
