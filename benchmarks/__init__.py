"""Benchmarks: how fast the host's layers are, measured without thresholds.

Run them with ``python -m benchmarks`` (or ``make bench``); name some to run only those,
e.g. ``python -m benchmarks core_sessions``. Each benchmark is one module listed in
``BENCHMARKS`` with a ``run() -> list[Row]`` that stays within a few seconds; it raises
:class:`benchmarks.report.BenchmarkPending` when what it measures does not exist yet.
"""

BENCHMARKS = (
    "core_sessions",
    "authorization",
    "sqlite_store",
    "invocations_http",
    "responses_http",
    "mcp_http",
    "delivery",
    "telegram_webhook",
    "agent_framework_peer",
    "session_scale",
    "one_connection_latency",
    "server_memory",
    "workflow_turns",
    "discord_interactions",
    "a2a_http",
    "activity_webhook",
    "postgres_store",
)
