"""Serving test apps on 127.0.0.1, over TLS when asked, on sockets bound in advance.

MSAL only accepts an ``https`` authority, so the fake provider is served over TLS with a
certificate for 127.0.0.1 from a throw-away CA made here; clients trust that CA alone.
Sockets are bound before anything is configured, because the channel's ``redirect_uri``
and the provider's issuer must name their ports before either app is built.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app

__all__ = ["TlsFiles", "bound_socket", "make_tls", "serve_on"]


@attrs.frozen
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting this CA only (not the system's)."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls(directory: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agenthost test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key"
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def base_url(sock: socket.socket, *, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def serve_on(
    app: Any, sock: socket.socket, *, tls: TlsFiles | None = None, timeout: float = 10.0
) -> AsyncIterator[str]:
    """Serve ``app`` with the real Hypercorn on ``sock``; yield its base URL; stop on exit."""
    url = base_url(sock, tls=tls is not None)
    # Hypercorn takes ownership of the descriptor and closes it when it stops.
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=5.0)
    if tls is not None:
        config.certfile = str(tls.cert)
        config.keyfile = str(tls.key)
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: serve_app(app, config, shutdown_trigger=stop.wait))
        try:
            await _wait_ready(url, tls, timeout)
            yield url
        finally:
            stop.set()


async def _wait_ready(url: str, tls: TlsFiles | None, timeout: float) -> None:
    verify: ssl.SSLContext | bool = tls.client_context() if tls is not None else True
    with anyio.fail_after(timeout):
        async with httpx.AsyncClient(base_url=url, verify=verify) as client:
            while True:
                try:
                    if (await client.get("/readiness")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.02)
