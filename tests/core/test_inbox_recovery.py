"""The durable inbox's recovery rules: candidates, leases to try, what is taken, the CAS."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agenthost.sansio_core.inbox_recovery import (
    InboxEntry,
    RecoveryPlan,
    may_move,
    plan_recovery,
    to_take,
)

ME = "me"


def entry(key: str, owner: str | None) -> InboxEntry:
    return InboxEntry(key, owner)


# --- rule 2: candidates ---------------------------------------------------------------


def test_own_records_are_not_candidates() -> None:
    plan = plan_recovery([entry("001", ME), entry("002", ME)], me=ME, known=set())
    assert plan == RecoveryPlan(candidates=(), leases_to_try=())


def test_keys_known_here_are_not_candidates() -> None:
    plan = plan_recovery([entry("001", "dead"), entry("002", "dead")], me=ME, known={"001"})
    assert plan.candidates == (entry("002", "dead"),)


def test_candidates_are_in_key_order_whatever_order_they_were_listed_in() -> None:
    listed = [entry("003", "b"), entry("001", "a"), entry("002", None)]
    plan = plan_recovery(listed, me=ME, known=set())
    assert [e.key for e in plan.candidates] == ["001", "002", "003"]


# --- rule 3: the leases to try --------------------------------------------------------


def test_each_other_owner_s_lease_is_tried_once_and_none_has_no_lease() -> None:
    listed = [
        entry("001", "b"),
        entry("002", "a"),
        entry("003", "b"),
        entry("004", None),
        entry("005", ME),
    ]
    plan = plan_recovery(listed, me=ME, known=set())
    assert plan.leases_to_try == ("a", "b")


def test_an_owner_whose_only_records_are_known_here_is_not_tried() -> None:
    plan = plan_recovery([entry("001", "a")], me=ME, known={"001"})
    assert plan.leases_to_try == ()


# --- rule 4: what is taken ------------------------------------------------------------


def test_a_live_owner_s_records_are_untouched() -> None:
    plan = plan_recovery([entry("001", "live"), entry("002", "live")], me=ME, known=set())
    assert list(to_take(plan.candidates, gone=set(), known=set())) == []


def test_a_dead_owner_s_records_are_taken_in_key_order_and_a_live_one_s_left() -> None:
    listed = [
        entry("004", "dead"),
        entry("001", "dead"),
        entry("002", "live"),
        entry("003", "dead"),
    ]
    plan = plan_recovery(listed, me=ME, known=set())
    taken = list(to_take(plan.candidates, gone={"dead"}, known=set()))
    assert taken == [entry("001", "dead"), entry("003", "dead"), entry("004", "dead")]


def test_records_without_an_owner_are_taken_without_a_lease() -> None:
    plan = plan_recovery([entry("001", None), entry("002", "live")], me=ME, known=set())
    assert list(to_take(plan.candidates, gone=set(), known=set())) == [entry("001", None)]


def test_known_keys_are_not_taken() -> None:
    candidates = [entry("001", "dead"), entry("002", None)]
    assert list(to_take(candidates, gone={"dead"}, known={"001", "002"})) == []


def test_a_key_that_becomes_known_while_taking_is_skipped() -> None:
    """The caller moves one record at a time; a key known meanwhile (a concurrent recovery
    here took it) is no longer taken."""
    known: set[str] = set()
    taken: list[str] = []
    for taking in to_take(
        [entry("001", "dead"), entry("002", "dead"), entry("003", "dead")],
        gone={"dead"},
        known=known,
    ):
        taken.append(taking.key)
        known.add("002")
    assert taken == ["001", "003"]


# --- rule 5: the compare-and-set ------------------------------------------------------


def test_a_record_still_with_its_listed_owner_is_moved() -> None:
    assert may_move(entry("001", "dead"), entry("001", "dead"))
    assert may_move(entry("001", None), entry("001", None))


def test_a_record_handled_meanwhile_is_not_taken() -> None:
    assert not may_move(entry("001", "dead"), None)
    assert not may_move(entry("001", None), None)


def test_a_record_already_moved_here_is_not_taken_again() -> None:
    assert not may_move(entry("001", "dead"), entry("001", ME))
    assert not may_move(entry("001", None), entry("001", ME))


def test_a_record_moved_to_another_replica_is_not_taken() -> None:
    assert not may_move(entry("001", "dead"), entry("001", "other"))
    assert not may_move(entry("001", None), entry("001", "other"))


def test_a_record_given_an_owner_is_not_taken_as_ownerless() -> None:
    assert not may_move(entry("001", None), entry("001", "dead"))


def test_another_key_is_never_the_listed_record() -> None:
    assert not may_move(entry("001", "dead"), entry("002", "dead"))


# --- properties -----------------------------------------------------------------------

owners = st.sampled_from([ME, "a", "b", "c", None])
listings = st.dictionaries(
    st.text(alphabet="0123456789", min_size=1, max_size=3), owners, max_size=12
)


@given(
    listing=listings,
    known=st.sets(st.text(alphabet="0123456789", min_size=1, max_size=3), max_size=6),
    gone=st.sets(st.sampled_from(["a", "b", "c"]), max_size=3),
)
def test_what_is_taken_is_exactly_the_unknown_records_of_gone_owners_in_key_order(
    listing: dict[str, str | None], known: set[str], gone: set[str]
) -> None:
    entries = [entry(key, owner) for key, owner in listing.items()]
    plan = plan_recovery(entries, me=ME, known=known)
    assert set(plan.leases_to_try) <= {"a", "b", "c"}
    taken = list(to_take(plan.candidates, gone=gone, known=known))
    expected = sorted(
        (
            e
            for e in entries
            if e.key not in known and e.owner != ME and (e.owner is None or e.owner in gone)
        ),
        key=lambda e: e.key,
    )
    assert taken == expected
    # Each taken record's CAS succeeds against itself and fails once it is moved here.
    for e in taken:
        assert may_move(e, e)
        assert not may_move(e, entry(e.key, ME))
