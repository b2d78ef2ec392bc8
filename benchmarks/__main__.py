"""``python -m benchmarks [name ...]``: run the benchmarks and print one table.

A benchmark whose subject is not written yet prints as pending; one that fails prints its
error, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import importlib
import platform
import sys
import traceback

from benchmarks import BENCHMARKS, targets
from benchmarks.report import BenchmarkPending, Row, render_table
from benchmarks.timing import machine_speed


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2

    rows: list[Row] = []
    notes: dict[str, str] = {}
    failed = False
    speed_before = machine_speed()
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            rows += module.run()
        except BenchmarkPending as pending:
            notes[name] = str(pending) if str(pending).startswith("pending") else "pending"
        except Exception as error:
            traceback.print_exc()
            notes[name] = f"error: {type(error).__name__}: {error}"
            failed = True

    print(
        f"agenthost benchmarks - Python {platform.python_version()} "
        f"({platform.python_implementation()}) on {platform.machine()} {platform.system()}"
    )
    print(
        f"machine speed: a fixed Python loop took {speed_before * 1000:.0f} ms before the "
        f"benchmarks and {machine_speed() * 1000:.0f} ms after (rows with no baseline beside "
        "them, such as core and routing, move with it)"
    )
    print()
    print(render_table(rows, notes))
    print()
    print(targets.report(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
