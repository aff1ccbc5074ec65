"""Encrypted connections: TLS with the server's Ed25519 key, pinned by the client.

Dial strings `tls!host!port` (and listen strings `tls!*!port`) speak 9P inside TLS
1.3. The server's certificate is self-signed, made from its host key (generated
on first use); clients pin that key the way ssh does: the first time a server is
seen its key is recorded in `known_hosts` (trust on first use, with a message),
and a later, different key is refused with a message saying where to look.
"""

from __future__ import annotations

import base64
import datetime
import os
import ssl
import sys
import tempfile

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from .auth import KEY_TYPE, channel_binding, load_private_key
from .errors import NinePError

__all__ = [
    "DEFAULT_HOST_KEY",
    "KNOWN_HOSTS",
    "HostKeyChanged",
    "client_wrap",
    "server_context",
    "server_context_from_files",
]

CONFIG = os.path.join(os.path.expanduser("~"), ".config", "ninefs")
DEFAULT_HOST_KEY = os.path.join(CONFIG, "host_ed25519")
KNOWN_HOSTS = os.path.join(CONFIG, "known_hosts")


class HostKeyChanged(NinePError, PermissionError):
    """The server's key is not the one pinned for it: maybe an impostor."""


def _host_key(path: str) -> Ed25519PrivateKey:
    if not os.path.exists(path):
        from .auth import generate_key

        generate_key(path, "ninefs host key")
    return load_private_key(path)


def server_context_from_files(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A TLS 1.3 server context from a certificate and key given as PEM files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_path, key_path)
    with open(cert_path, "rb") as f:
        der = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
    ctx.ninefs_binding = channel_binding(der)  # type: ignore[attr-defined]
    return ctx


def server_context(host_key_path: str = DEFAULT_HOST_KEY) -> ssl.SSLContext:
    """A TLS 1.3 server context whose certificate is the host key, self-signed."""
    key = _host_key(host_key_path)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ninefs")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, None)  # Ed25519 signs without a separate hash
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # ssl loads certificates only from files: write them where only we can read, briefly.
    with tempfile.TemporaryDirectory() as d:
        cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        ctx.load_cert_chain(cert_path, key_path)
    # What authenticated clients sign with their answer (ninep/auth.py): this certificate.
    ctx.ninefs_binding = channel_binding(cert.public_bytes(serialization.Encoding.DER))  # type: ignore[attr-defined]
    return ctx


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # no CA: the key is pinned instead (check_pin)
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _key_of(der: bytes) -> tuple[str, str]:
    """The (type, base64) that pins a certificate's key: the raw key for Ed25519 (our own
    certificates), the SubjectPublicKeyInfo for any other (certificates given as files)."""
    key = x509.load_der_x509_certificate(der).public_key()
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return KEY_TYPE, base64.b64encode(raw).decode()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "ninefs-spki", base64.b64encode(spki).decode()


def fingerprint(b64: str) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(base64.b64decode(b64))
    return "SHA256:" + base64.b64encode(digest.finalize()).decode().rstrip("=")


def check_pin(where: str, key: tuple[str, str], known_hosts: str = KNOWN_HOSTS) -> None:
    """Trust on first use; refuse a key that differs from the pinned one."""
    kind, b64 = key
    lines: list[str] = []
    if os.path.exists(known_hosts):
        with open(known_hosts) as f:
            lines = f.read().splitlines()
    for i, line in enumerate(lines, 1):
        words = line.split()
        if len(words) == 3 and words[0] == where:
            if (words[1], words[2]) == (kind, b64):
                return
            raise HostKeyChanged(
                f"server key for {where} changed! it is now {fingerprint(b64)}; "
                f"if you expected that, delete line {i} of {known_hosts}"
            )
    os.makedirs(os.path.dirname(os.path.abspath(known_hosts)), mode=0o700, exist_ok=True)
    with open(known_hosts, "a") as f:
        f.write(f"{where} {kind} {b64}\n")
    print(f"ninefs: new server {where}, key {fingerprint(b64)}, recorded in {known_hosts}", file=sys.stderr)


async def client_wrap(stream: trio.abc.Stream, where: str, known_hosts: str | None = None) -> trio.SSLStream:
    """TLS over `stream`, with the server's key checked against the pin for `where`."""
    tls = trio.SSLStream(stream, _client_context(), server_hostname=None)
    await tls.do_handshake()
    der = tls.getpeercert(binary_form=True)
    if der is None:
        raise NinePError("i/o error: server sent no certificate")
    check_pin(where, _key_of(der), known_hosts or os.environ.get("NINEFS_KNOWN_HOSTS") or KNOWN_HOSTS)
    return tls
