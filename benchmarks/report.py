"""The shared shape of a benchmark result, and the plain-text table that prints it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs


@attrs.frozen
class Row:
    """One measured operation: ``operations`` of it took ``seconds`` in all.

    ``seconds`` counts time inside the operation only, not the loop around it.

    ``extra`` holds further columns (``p50``, ``p99``, ``effects/op``...), already formatted.
    """

    name: str
    operations: int
    seconds: float
    extra: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def ops_per_second(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else 0.0


class BenchmarkPending(Exception):
    """What the benchmark measures is not written yet; the runner prints it as pending."""


def format_seconds(seconds: float) -> str:
    """A latency in the unit that keeps it readable (ns, µs, ms or s)."""
    for unit, scale in (("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3)):
        if seconds < 1000 * scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.2f} s"


def render_table(rows: Sequence[Row], notes: Mapping[str, str] | None = None) -> str:
    """The rows as aligned columns; ``notes`` are benchmarks that produced no rows."""
    extra_names: list[str] = []
    for row in rows:
        extra_names += [name for name in row.extra if name not in extra_names]
    header = ["benchmark", "operations", "seconds", "ops/s", *extra_names]
    body = [
        [
            row.name,
            f"{row.operations:,}",
            f"{row.seconds:.2f}",
            f"{row.ops_per_second:,.0f}",
            *(row.extra.get(name, "") for name in extra_names),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    widths[0] = max([widths[0], *(len(name) for name in notes or {})])

    def line(cells: Sequence[str]) -> str:
        # The first column reads left to right; the numbers line up on the right.
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    # A note runs on past the columns instead of widening them.
    noted = [f"{name.ljust(widths[0])}  {note}" for name, note in (notes or {}).items()]
    return "\n".join([line(header), rule, *(line(cells) for cells in body), *noted])
