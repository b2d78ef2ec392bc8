"""Bot Framework activities per second through token validation, next to Invocations.

Three processes on loopback, each with its own event loop (``multiprocessing``, spawn):

- the fake Bot Framework from the tests (``tests/channels/activity/fake_bot_framework.py``):
  the token issuer's OpenID metadata and JWKS, the Bot Connector (counting the replies) and
  Entra's client-credentials endpoint, served over TLS with a certificate made for this
  run (msal insists on https; the host trusts it through ``SSL_CERT_FILE``);
- the host: ``Host(target=echo, channels=[ActivityChannel(...)])`` on SQLite pointed at
  the fake, streaming off; or, for the baseline, ``Host(target=echo,
  channels=[InvocationsChannel()])`` on SQLite;
- this process, the load: ``WORKERS`` keep-alive connections, one request at a time each,
  for ``BUDGET_SECONDS``. Activities are Teams 1:1 messages from ``CHATS`` users, each with
  a fresh activity id and one bearer token minted here with the issuer's key (the Bot
  Framework reuses a token for its lifetime). Every request is verified in full (RS256
  signature, claims, endorsement, service URL) against the cached JWKS: the keys are
  fetched once, in the warm-up.

Rows:

- ``token verified + parsed``: the verifier alone, in this process, over the cached JWKS:
  the RS256 signature and claims, the Activity model parse and the binding checks;
- ``invocations: answered``: the baseline, ``POST /invocations/invoke`` run to its answer;
- ``activity: acknowledged``: activity POSTs answered 200: token verified, body parsed,
  conversation reference and inbox record written (one store transaction). Acknowledging
  outruns answering, so the host's inbox bound is raised for this (by default 1,000
  waiting activities make the endpoint answer 503 until the backlog drains);
- ``activity: answered``: the same activities end to end, counted until the last reply
  reached the fake connector (the turn, and a connector POST with the bot's token).

``ratio`` is the row's operations per second over the baseline's, on the same backend.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import httpx

from benchmarks import loopback
from benchmarks.report import BenchmarkPending, Row, format_seconds
from benchmarks.timing import percentile

BUDGET_SECONDS = 3.0
CHATS = 256
WARMUP_REQUESTS = CHATS  # every user once: the rows measure returning users
WORKERS = 16
MAX_POSTS_PER_WORKER = 200_000
DRAIN_TIMEOUT = 120.0
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SERVER_LIFETIME = 600.0
ACTIVITY_PATH = "/activity/api/messages"
INVOKE_PATH = "/invocations/invoke"
KID = "bench-key"
VERIFY_COUNT = 2_000
BACKENDS = ("asyncio", "trio")


def run() -> list[Row]:
    try:
        import microsoft_agents.activity  # noqa: F401 - the channel's extra
        import msal  # noqa: F401

        from tests.channels.activity.fake_bot_framework import FakeChannelService  # noqa: F401
    except ImportError as missing:
        raise BenchmarkPending(
            f"pending: the activity extra or the tests are missing ({missing})"
        ) from None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.channels.activity.tls import loopback_certificate

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    rows: list[Row] = [anyio.run(_measure_verification, pem)]
    with tempfile.TemporaryDirectory(prefix="agenthost-bench-activity-") as directory:
        certificate = loopback_certificate(Path(directory))
        cert = (str(certificate.certfile), str(certificate.keyfile))
        for index, backend in enumerate(BACKENDS):
            state = Path(directory) / f"{backend}-{index}"
            (state / "invocations").mkdir(parents=True)
            (state / "activity").mkdir()
            with process(
                _serve, (_invocations_app, str(state / "invocations"), backend), "bench-invoke"
            ) as invoke_port:
                baseline = anyio.run(_measure_invocations, invoke_port, backend=backend)
            with (
                process(_serve_fake, (pem, cert), "bench-activity-fake") as fake_port,
                process(
                    _serve,
                    (
                        partial(_activity_app, fake_port, cert[0]),
                        str(state / "activity"),
                        backend,
                    ),
                    "bench-activity-host",
                ) as host_port,
            ):
                acknowledged, answered = anyio.run(
                    _measure_activity, pem, fake_port, host_port, cert[0], backend=backend
                )
            label = f"(SQLite, {backend})"
            rows.append(Row(f"invocations: answered {label}", *baseline))
            for name, (operations, seconds, extra) in (
                ("acknowledged", acknowledged),
                ("answered", answered),
            ):
                ratio = (operations / seconds) / (baseline[0] / baseline[1])
                rows.append(
                    Row(
                        f"activity: {name} {label}",
                        operations,
                        seconds,
                        {**extra, "ratio": f"{ratio:.2f}"},
                    )
                )
    return rows


# --- the load (this process) -------------------------------------------------------------


async def _measure_verification(pem: bytes) -> Row:
    """The verifier alone, in this process: token, body parse and binding per activity."""
    from agenthost.channels.activity import codec
    from agenthost.channels.activity.tokens import SigningKeys, TokenVerifier
    from tests.channels.activity.fake_bot_framework import FakeChannelService, IssuerKey

    private = _private_key(pem)
    service = FakeChannelService(key=IssuerKey(KID, private, ["msteams"]))
    service.base_url = "https://issuer.invalid"
    jwks = {"keys": [key.jwk() for key in service.keys]}
    metadata = {"jwks_uri": f"{service.base_url}/v1/keys"}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=jwks if request.url.path == "/v1/keys" else metadata)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        verifier = TokenVerifier(_app_id(), SigningKeys(http, service.metadata_url))
        authorization = f"Bearer {service.token()}"
        bodies = [
            json.dumps(_activity(n, service.service_url)).encode() for n in range(VERIFY_COUNT)
        ]
        await verifier.verify(authorization)  # the keys are fetched once, before timing
        started = time.perf_counter()
        for body in bodies:
            verified = await verifier.verify(authorization)
            activity = codec.parse(json.loads(body))
            verifier.check_binding(
                verified, channel_id=str(activity.channel_id), service_url=activity.service_url
            )
        seconds = time.perf_counter() - started
    return Row("activity: token verified + parsed (in process)", len(bodies), seconds)


def _private_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(pem, password=None)


Measured = tuple[int, float, dict[str, str]]


async def _measure_invocations(port: int) -> Measured:
    await _ready(port)
    counter = iter(range(10**9))

    def request() -> bytes:
        n = next(counter)
        body = json.dumps({"input": f"hello {n}", "session_id": f"s-{n % CHATS}"}).encode()
        return loopback.post_request(INVOKE_PATH, body)

    await _load(port, request, seconds=None, count=WARMUP_REQUESTS)
    started = time.perf_counter()
    samples = await _load(port, request, seconds=BUDGET_SECONDS)
    return len(samples), time.perf_counter() - started, _latency(samples)


async def _measure_activity(
    pem: bytes, fake_port: int, host_port: int, cafile: str
) -> tuple[Measured, Measured]:
    import jwt

    service_url = f"https://127.0.0.1:{fake_port}/amer/"
    token = jwt.encode(
        {
            "iss": "https://api.botframework.com",
            "aud": _app_id(),
            "serviceurl": service_url,
            "nbf": int(time.time()) - 10,
            "exp": int(time.time()) + 3600,
        },
        pem,
        algorithm="RS256",
        headers={"kid": KID},
    )
    headers = {"authorization": f"Bearer {token}"}
    counter = iter(range(10**9))

    def request() -> bytes:
        n = next(counter)
        body = json.dumps(_activity(n, service_url), separators=(",", ":")).encode()
        return loopback.post_request(ACTIVITY_PATH, body, headers=headers)

    await _ready(host_port)
    async with httpx.AsyncClient(verify=_context(cafile), timeout=10.0, trust_env=False) as client:
        stats = f"https://127.0.0.1:{fake_port}/bench/stats"
        await _load(host_port, request, seconds=None, count=WARMUP_REQUESTS)
        await _until(client, stats, lambda replies: replies >= WARMUP_REQUESTS)
        before = (await client.get(stats)).json()["replies"]
        started = time.perf_counter()
        samples = await _load(host_port, request, seconds=BUDGET_SECONDS)
        acknowledged = time.perf_counter() - started
        await _until(client, stats, lambda replies: replies >= before + len(samples))
        answered = time.perf_counter() - started
    return (len(samples), acknowledged, _latency(samples)), (len(samples), answered, {})


def _context(cafile: str) -> Any:
    import ssl

    return ssl.create_default_context(cafile=cafile)


def _latency(samples: list[float]) -> dict[str, str]:
    ordered = sorted(samples)
    return {
        "p50": format_seconds(percentile(ordered, 0.50)),
        "p99": format_seconds(percentile(ordered, 0.99)),
    }


async def _ready(port: int) -> None:
    with anyio.fail_after(STARTUP_TIMEOUT):
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            while True:
                with suppress(httpx.TransportError):
                    if (await client.get(f"http://127.0.0.1:{port}/readiness")).status_code == 200:
                        return
                await anyio.sleep(0.05)


async def _until(client: httpx.AsyncClient, url: str, condition: Callable[[int], bool]) -> None:
    with anyio.fail_after(DRAIN_TIMEOUT):
        while True:
            if condition((await client.get(url)).json()["replies"]):
                return
            await anyio.sleep(0.02)


async def _load(
    port: int, request: Callable[[], bytes], *, seconds: float | None, count: int | None = None
) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds if seconds is not None else float("inf")
    remaining = [count if count is not None else MAX_POSTS_PER_WORKER * WORKERS]

    async def worker() -> None:
        connection = loopback.RawConnection(port)
        try:
            for _ in range(MAX_POSTS_PER_WORKER):
                if clock() >= deadline or remaining[0] <= 0:
                    return
                remaining[0] -= 1
                answer = await connection.request(request())
                samples.append(answer.seconds)
                if answer.status != 200:
                    raise AssertionError(f"the host answered {answer.status}: {answer.body!r}")
        finally:
            await connection.aclose()

    async with anyio.create_task_group() as tasks:
        for _ in range(WORKERS):
            tasks.start_soon(worker)
    return samples


def _app_id() -> str:
    from tests.channels.activity.fake_bot_framework import APP_ID

    return APP_ID


def _activity(n: int, service_url: str) -> dict[str, Any]:
    user = n % CHATS
    return {
        "type": "message",
        "id": f"{1_733_000_000_000 + n}",
        "timestamp": "2026-11-30T10:15:04.529Z",
        "channelId": "msteams",
        "serviceUrl": service_url,
        "from": {
            "id": f"29:1bench{user}",
            "name": "Bench",
            "aadObjectId": f"00000000-0000-0000-0000-{user:012d}",
        },
        "conversation": {
            "conversationType": "personal",
            "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "id": f"a:1bench-conversation-{user}",
        },
        "recipient": {"id": f"28:{_app_id()}", "name": "Bench"},
        "textFormat": "plain",
        "text": f"hello {n}",
        "entities": [{"type": "clientInfo", "locale": "en-GB"}],
        "channelData": {"tenant": {"id": "72f988bf-86f1-41af-91ab-2d7cd011db47"}},
        "locale": "en-GB",
    }


# --- the servers (spawned processes) -------------------------------------------------------


@contextmanager
def process(target: Any, args: tuple[Any, ...], name: str) -> Iterator[int]:
    """Start a server process; yield the port it bound; always stop it."""
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    child = context.Process(target=target, args=(*args, child_conn), name=name, daemon=True)
    child.start()
    child_conn.close()
    try:
        if not conn.poll(STARTUP_TIMEOUT):
            raise TimeoutError(f"{name} did not bind a port in {STARTUP_TIMEOUT}s")
        try:
            port = int(conn.recv())
        except EOFError:
            raise RuntimeError(f"{name} exited during start-up ({child.exitcode})") from None
        yield port
    finally:
        with suppress(OSError):
            conn.send("stop")
        child.join(STOP_TIMEOUT)
        if child.is_alive():
            child.terminate()
            child.join(3.0)
        if child.is_alive():
            child.kill()
            child.join(3.0)
        conn.close()


def _serve(
    app_factory: Any,
    state_dir: str,
    backend: str,
    conn: Connection,
    tls: tuple[str, str] | None = None,
) -> None:
    from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app

    sock = bound_socket("127.0.0.1")
    port = sock.getsockname()[1]
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=2.0)
    config.loglevel = "WARNING"
    if tls is not None:
        config.certfile, config.keyfile = tls

    async def main() -> None:
        app = app_factory(Path(state_dir), port)
        conn.send(port)
        await serve_app(app, config, shutdown_trigger=partial(_until_stopped, conn))

    anyio.run(main, backend=backend)


async def _until_stopped(conn: Connection) -> None:
    deadline = time.monotonic() + SERVER_LIFETIME
    while time.monotonic() < deadline:
        if conn.poll():
            with suppress(EOFError):
                conn.recv()
            return
        await anyio.sleep(0.05)


async def echo(messages: list[Any]) -> str:
    return str(messages[-1].text)


def _invocations_app(state_dir: Path, port: int) -> Any:
    from agenthost.channels.invocations import InvocationsChannel

    return loopback.host_app(echo, InvocationsChannel(), "sqlite", state_dir)


def _activity_app(fake_port: int, cafile: str, state_dir: Path, port: int) -> Any:
    # The host's HTTP client (created at start-up) trusts the fake's certificate.
    os.environ["SSL_CERT_FILE"] = cafile
    from agenthost.channels.activity import ActivityChannel
    from tests.channels.activity.fake_bot_framework import APP_ID, APP_SECRET

    fake = f"https://127.0.0.1:{fake_port}"
    channel = ActivityChannel(
        APP_ID,
        app_secret=APP_SECRET,
        openid_metadata_url=f"{fake}/v1/.well-known/openidconfiguration",
        authority_host=fake,
        service_urls=[fake],
        stream=False,
        typing_delay=60.0,
        # The load outruns the answers on purpose (the ack row measures recording), so the
        # backlog may pass the default 1,000, where a real connector would get 503s.
        max_pending=100_000,
    )
    return loopback.host_app(echo, channel, "sqlite", state_dir)


def _serve_fake(pem: bytes, tls: tuple[str, str], conn: Connection) -> None:
    _serve(partial(_fake_app, pem), tempfile.gettempdir(), "asyncio", conn, tls)


def _fake_app(pem: bytes, state_dir: Path, port: int) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from tests.channels.activity.fake_bot_framework import (
        FakeChannelService,
        FakeEntra,
        IssuerKey,
    )

    service = FakeChannelService(key=IssuerKey(KID, _private_key(pem), ["msteams"]))
    entra = FakeEntra(service)
    service.base_url = entra.base_url = f"https://127.0.0.1:{port}"
    replies = [0]

    async def stats(request: Request) -> Response:
        replies[0] += len(service.received)
        service.received.clear()  # keep the fake's memory flat over a long run
        return JSONResponse({"replies": replies[0]})

    return Starlette(routes=[Route("/bench/stats", stats), *service.app.routes, *entra.app.routes])
