"""The target summary ``make bench`` prints under its table (``benchmarks.targets``)."""

from __future__ import annotations

import re

from benchmarks import targets
from benchmarks.report import Row
from benchmarks.targets import OPS, Target


def test_a_column_is_read_as_the_number_it_shows() -> None:
    row = Row("r", 10, 2.0, {"ratio": "0.43", "RSS after": "54.2 MiB", "n": "1,234", "x": ""})
    assert targets.value_of(row, "ratio") == 0.43
    assert targets.value_of(row, "RSS after") == 54.2
    assert targets.value_of(row, "n") == 1234
    assert targets.value_of(row, "x") is None
    assert targets.value_of(row, "missing") is None
    assert targets.value_of(row, OPS) == 5.0


def test_each_target_is_reported_met_not_met_or_not_measured() -> None:
    chosen = [
        Target("fast enough", "a", OPS, at_least=100),
        Target("slow", "b", "ratio", at_least=0.5),
        Target("small", "c", "ms/round", below=20),
        Target("absent", "d", "ratio", at_least=0.5),
        Target("in band", "e", "ratio", at_least=0.8, at_most=1.2),
    ]
    rows = [
        Row("a", 300, 2.0),
        Row("b", 1, 1.0, {"ratio": "0.43"}),
        Row("c", 1, 1.0, {"ms/round": "20.0"}),  # a bound that is strict: not met
        Row("c", 1, 1.0, {"ms/round": "5.0"}),  # a later row of the same name: not read
        Row("e", 1, 1.0, {"ratio": "1.25"}),
    ]
    lines = targets.report(rows, chosen).splitlines()
    assert lines[0].endswith("1 of 4 met (1 not measured: their benchmarks did not run)")
    verdicts = dict(
        reversed(re.match(r"\s+(met|NOT MET)\s+(.+?): ", line).groups())  # type: ignore[union-attr]
        for line in lines[1:]
    )
    assert verdicts == {
        "fast enough": "met",
        "slow": "NOT MET",
        "small": "NOT MET",
        "in band": "NOT MET",
    }
    assert "slow: 0.43 (target >= 0.5)" in lines[2]
