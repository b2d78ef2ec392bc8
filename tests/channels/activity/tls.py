"""A certificate for 127.0.0.1 and a TLS server on loopback, for fakes that must be https.

The certificate is self-signed (it is its own CA). A test makes the host trust it through
``SSL_CERT_FILE``, which httpx reads when the host creates its client, so nothing in the
channel changes for the test.
"""

from __future__ import annotations

import datetime
import ipaddress
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
from cryptography.x509.oid import NameOID

from agenthost.backends.serving import bound_socket, hypercorn_config, serve_app


@attrs.frozen
class LoopbackCertificate:
    certfile: Path
    keyfile: Path


def loopback_certificate(directory: Path) -> LoopbackCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agenthost test 127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile = directory / "loopback-cert.pem"
    keyfile = directory / "loopback-key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return LoopbackCertificate(certfile, keyfile)


@asynccontextmanager
async def served_tls(app: Any, certificate: LoopbackCertificate) -> AsyncIterator[str]:
    """Yield the https base URL of ``app`` served on loopback; stop it on exit."""
    sock = bound_socket("127.0.0.1")
    port = sock.getsockname()[1]
    config = hypercorn_config(bind=[f"fd://{sock.detach()}"], graceful_timeout=5.0)
    config.certfile = str(certificate.certfile)
    config.keyfile = str(certificate.keyfile)
    stop = anyio.Event()
    base_url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(certificate.certfile))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: serve_app(app, config, shutdown_trigger=stop.wait))
        with anyio.fail_after(10.0):
            async with httpx.AsyncClient(base_url=base_url, verify=context) as client:
                while True:
                    try:
                        await client.get("/")
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.02)
        try:
            yield base_url
        finally:
            stop.set()
