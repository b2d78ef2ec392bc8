"""The collector set-up of a serving process (``serving.prepare_collector``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agenthost.backends import serving


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_serving_freezes_start_up_objects_and_collects_the_young_less_often() -> None:
    gc.set_threshold(700, 10, 10)
    kept = [object() for _ in range(3)], {"built": "at start-up"}  # a container: tracked
    serving.prepare_collector()
    assert gc.get_freeze_count() > 0
    assert not any(kept is tracked for tracked in gc.get_objects())  # out of sight
    assert gc.get_threshold() == (serving.SERVING_YOUNG_THRESHOLD, 10, 10)


def test_an_application_threshold_above_the_host_s_is_kept() -> None:
    gc.set_threshold(50_000, 20, 5)
    serving.prepare_collector()
    assert gc.get_threshold() == (50_000, 20, 5)
