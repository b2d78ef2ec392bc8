"""Draw the core's lifecycle tables as ``docs/lifecycles.md``.

The tables in ``agenthost/sansio_core`` are the source of truth; this script only renders
them (a Mermaid state diagram and a markdown table each) next to the rules written at the
top of their modules. ``tests/test_docs.py`` fails when the committed file is stale.

Run it from the repository root::

    python docs/generate.py          # rewrite docs/lifecycles.md
    python docs/generate.py --check  # exit 1 if docs/lifecycles.md is stale
"""

from __future__ import annotations

import enum
import re
import sys
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import attrs

from agenthost.sansio_core import background, delivery, leases, link_codes, routing
from agenthost.sansio_core.types import ChannelIdentity, ChannelRequest, RunStatus

OUTPUT = Path(__file__).resolve().parent / "lifecycles.md"
REGENERATE = "python docs/generate.py"


@attrs.frozen
class Edge:
    """One drawn transition: ``before --event--> after``, with the decisions it may answer."""

    before: enum.Enum
    event: type
    after: enum.Enum
    decisions: tuple[type, ...] = ()

    @property
    def label(self) -> str:
        if not self.decisions:
            return self.event.__name__
        return f"{self.event.__name__} / {', '.join(d.__name__ for d in self.decisions)}"


@attrs.frozen
class Lifecycle:
    title: str
    module: ModuleType
    table_name: str
    states: type[enum.Enum]
    events: tuple[type, ...]  # in the order the module declares them
    edges: Callable[[], list[Edge]]
    initial: Callable[[], enum.Enum]
    finals: tuple[enum.Enum, ...] = ()  # states a record leaves by being deleted
    final_label: str = ""

    @property
    def source(self) -> str:
        return self.module.__name__.replace(".", "/") + ".py"


def _lease_edges() -> list[Edge]:
    return [
        Edge(before, event, after, decisions)
        for (before, event, after), decisions in leases.RUN_LEASE_TRANSITIONS.items()
    ]


def _run_edges() -> list[Edge]:
    return [
        Edge(before, event, after)
        for (before, event), afters in background.RUN_TRANSITIONS.items()
        for after in afters
    ]


def _delivery_edges() -> list[Edge]:
    return [
        Edge(before, event, after)
        for (before, event), afters in delivery.DELIVERY_TRANSITIONS.items()
        for after in afters
    ]


def _delivery_initial() -> enum.Enum:
    identity = ChannelIdentity("docs", "docs")
    [planned] = delivery.plan(
        [routing.Destination("docs", identity, None)],
        key_prefix="run",
        isolation_key="ik",
        reply={"text": ""},
        echo=None,
        now=0.0,
        retry=delivery.RetryPolicy(),
    )
    return planned.status


def _code_edges() -> list[Edge]:
    return [
        Edge(before, event, after, decisions)
        for (before, event, after), decisions in link_codes.CODE_TRANSITIONS.items()
    ]


def _code_initial() -> enum.Enum:
    issued = link_codes.issue(
        issuer=ChannelIdentity("docs", "docs"),
        challenge_id="docs",
        entropy=bytes(link_codes.ENTROPY_BYTES),
        salt=bytes(link_codes.SALT_BYTES),
        now=0.0,
        limits=link_codes.CodeLimits(),
    )
    return issued.challenge.state


def _lease_initial() -> enum.Enum:
    return leases.initial_state("session").state_of("run", now=0.0)


def _run_initial() -> enum.Enum:
    identity = ChannelIdentity("docs", "docs")
    request = ChannelRequest(channel="docs", identity=identity, input=())
    # S106: "token" here is a run's continuation token, not a credential.
    record = background.new_run(
        token="run",  # noqa: S106
        request=request,
        isolation_key="ik",
        session_id=None,
        session_key=None,
        now=0.0,
        max_attempts=1,
    )
    return record.status


LIFECYCLES = (
    Lifecycle(
        title="Session lease, per run",
        module=leases,
        table_name="RUN_LEASE_TRANSITIONS",
        states=leases.RunLeaseState,
        events=typing.get_args(leases.LeaseEvent),
        edges=_lease_edges,
        initial=_lease_initial,
    ),
    Lifecycle(
        title="Background run",
        module=background,
        table_name="RUN_TRANSITIONS",
        states=RunStatus,
        events=typing.get_args(background.RunEvent),
        edges=_run_edges,
        initial=_run_initial,
        finals=tuple(status for status in RunStatus if status.is_final),
        final_label="expired",
    ),
    Lifecycle(
        title="Delivery (the outbox)",
        module=delivery,
        table_name="DELIVERY_TRANSITIONS",
        states=delivery.DeliveryStatus,
        events=typing.get_args(delivery.DeliveryEvent),
        edges=_delivery_edges,
        initial=_delivery_initial,
        finals=(delivery.DeliveryStatus.DEAD,),
        final_label="purged",
    ),
    Lifecycle(
        title="One-time link code",
        module=link_codes,
        table_name="CODE_TRANSITIONS",
        states=link_codes.CodeState,
        events=(link_codes.Attempt,),
        edges=_code_edges,
        initial=_code_initial,
        finals=tuple(link_codes.CodeState),
        final_label="deleted after expiry",
    ),
)


def sorted_edges(lifecycle: Lifecycle) -> list[Edge]:
    """The lifecycle's edges grouped by event, then by state, in declaration order."""
    states = list(lifecycle.states)
    events = list(lifecycle.events)

    def event_rank(event: type) -> tuple[int, str]:
        # An event missing from the module's union still sorts, after the known ones.
        rank = events.index(event) if event in events else len(events)
        return rank, event.__name__

    return sorted(
        lifecycle.edges(),
        key=lambda e: (event_rank(e.event), states.index(e.before), states.index(e.after)),
    )


def mermaid_lines(lifecycle: Lifecycle) -> list[str]:
    """The body of the ``stateDiagram-v2`` block, one transition a line."""
    lines = ["stateDiagram-v2", f"    [*] --> {lifecycle.initial().value}"]
    lines += [
        f"    {edge.before.value} --> {edge.after.value} : {edge.label}"
        for edge in sorted_edges(lifecycle)
    ]
    lines += [f"    {state.value} --> [*] : {lifecycle.final_label}" for state in lifecycle.finals]
    return lines


def _markdown_table(lifecycle: Lifecycle) -> list[str]:
    edges = sorted_edges(lifecycle)
    with_decisions = any(edge.decisions for edge in edges)
    header = ["before", "event", "after"] + (["decision"] if with_decisions else [])
    rows = [" | ".join(header), " | ".join("---" for _ in header)]
    for edge in edges:
        cells = [f"`{edge.before.value}`", f"`{edge.event.__name__}`", f"`{edge.after.value}`"]
        if with_decisions:
            cells.append(", ".join(f"`{d.__name__}`" for d in edge.decisions))
        rows.append(" | ".join(cells))
    return [f"| {row} |" for row in rows]


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :data:`X` -> `X`
_DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")


def rules_of(module: ModuleType) -> str:
    """The module docstring from its ``Rules`` line on, as markdown."""
    doc = module.__doc__ or ""
    lines = doc.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Rules")), None)
    if start is None:
        raise ValueError(
            f"{module.__name__} has no paragraph starting with 'Rules' in its docstring: "
            "a lifecycle module states its rules at the top, and this page shows them"
        )
    text = "\n".join(lines[start:]).strip()
    text = _ROLE.sub(r"`\1`", text)
    return _DOUBLE_BACKTICKS.sub(r"`\1`", text)


def _summary_of(module: ModuleType) -> str:
    return (module.__doc__ or "").strip().splitlines()[0]


def _section(lifecycle: Lifecycle) -> list[str]:
    return [
        f"## {lifecycle.title}",
        "",
        _summary_of(lifecycle.module),
        "",
        f"Drawn from `{lifecycle.table_name}` in `{lifecycle.source}`.",
        "",
        "### Rules",
        "",
        rules_of(lifecycle.module),
        "",
        "### Diagram",
        "",
        "```mermaid",
        *mermaid_lines(lifecycle),
        "```",
        "",
        "### Transitions",
        "",
        *_markdown_table(lifecycle),
        "",
    ]


def _contents(lifecycles: Iterable[Lifecycle]) -> list[str]:
    lines = []
    for lifecycle in lifecycles:
        anchor = re.sub(r"[^a-z0-9 -]", "", lifecycle.title.lower()).replace(" ", "-")
        lines.append(f"- [{lifecycle.title}](#{anchor})")
    return lines


def render() -> str:
    """The whole of ``docs/lifecycles.md``."""
    lines = [
        "<!-- Generated by docs/generate.py from agenthost/sansio_core. Do not edit by hand:",
        f"     change the tables or their module docstrings, then run `{REGENERATE}`. -->",
        "",
        "# Lifecycles",
        "",
        "Each lifecycle below is drawn from the transition table its module checks on every",
        "step, so the diagram cannot drift from the code. An edge reads",
        "`before --> after : Event` (and `/ Decision` where the step answers one);",
        "`[*]` marks where a record starts and, for stored records, where it is deleted.",
        "See [architecture.md](architecture.md) for who applies these transitions.",
        "",
        *_contents(LIFECYCLES),
        "",
    ]
    for lifecycle in LIFECYCLES:
        lines += _section(lifecycle)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args == ["--check"]:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.name} is stale: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python docs/generate.py [--check]", file=sys.stderr)
        return 2
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
