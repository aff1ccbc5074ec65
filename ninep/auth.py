"""Authentication over 9P's own mechanism (attach(5)): Ed25519 keys on an auth fid.

The exchange, for anyone writing another implementation (docs/auth.md has it too):

1. Client: Tauth afid uname aname  ->  server: Rauth aqid (QTAUTH).
2. Client reads afid  ->  "ninefs-auth-v1 NONCE\\n", NONCE 64 hex digits (32 random bytes).
3. Client writes afid  <-  "ninefs-ed25519 PUBKEY SIGNATURE\\n", both base64: the raw
   32-byte Ed25519 public key, and its signature over
   b"ninefs-auth-v1\\0" + NONCE + b"\\0" + uname + b"\\0" + aname + b"\\0" + BINDING,
   BINDING being SHA-256 of the server's TLS certificate (DER), or empty without TLS
   (the nonce is fresh per Tauth, so a signature is good for this session only).
4. Client reads afid  ->  "ok USER\\n" when the key is in the server's authorized keys
   for USER (and USER is the uname asked for); otherwise Rerror "authentication failed".
5. Client: Tattach fid afid uname aname: acts as USER. Without a valid afid the server
   answers "authentication required".

Keys: `ninefs key gen` writes a private key (PKCS#8 PEM, mode 0600) and `KEY.pub`, a
line `ninefs-ed25519 BASE64 COMMENT`. An authorized-keys file has lines
`ninefs-ed25519 BASE64 USER` (# comments allowed).
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .constants import QTAUTH
from .errors import NinePError
from .messages import Qid

__all__ = [
    "DEFAULT_KEY",
    "KEY_TYPE",
    "AuthSession",
    "Authenticator",
    "client_response",
    "generate_key",
    "load_authorized_keys",
    "load_private_key",
    "public_line",
    "resolve_key",
]

PROTOCOL = "ninefs-auth-v1"
KEY_TYPE = "ninefs-ed25519"
DEFAULT_KEY = os.path.join(os.path.expanduser("~"), ".config", "ninefs", "id_ed25519")


def _message(nonce: str, uname: str, aname: str, binding: bytes = b"") -> bytes:
    return b"\0".join([PROTOCOL.encode(), nonce.encode(), uname.encode(), aname.encode(), binding])


def channel_binding(certificate_der: bytes | None) -> bytes:
    """What ties a signature to this connection: SHA-256 of the server's TLS certificate
    (so an answer relayed through a man in the middle fails); empty without TLS."""
    if not certificate_der:
        return b""
    import hashlib

    return hashlib.sha256(certificate_der).digest()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_line(key: Ed25519PrivateKey, comment: str) -> str:
    """The `.pub` / authorized-keys line for `key`."""
    return f"{KEY_TYPE} {base64.b64encode(_raw_public(key.public_key())).decode()} {comment}"


def generate_key(path: str, comment: str) -> str:
    """Write a new private key to `path` (0600) and `path`.pub; give the public line."""
    key = Ed25519PrivateKey.generate()
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    line = public_line(key, comment)
    with open(path + ".pub", "w") as f:
        f.write(line + "\n")
    return line


def load_private_key(path: str) -> Ed25519PrivateKey:
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def resolve_key(key: object) -> Ed25519PrivateKey | None:
    """A key given as a key, a path, or None: then $NINEFS_KEY, or the default file if any."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    path = key if isinstance(key, str) else os.environ.get("NINEFS_KEY") or DEFAULT_KEY
    if key is None and not os.path.exists(path):
        return None
    return load_private_key(path)


def _parse_public(b64: str) -> bytes:
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return raw


def load_authorized_keys(path: str) -> dict[bytes, str]:
    """Raw public key -> user name, from an authorized-keys file."""
    keys: dict[bytes, str] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 3 or words[0] != KEY_TYPE:
                raise ValueError(f"{path}:{lineno}: want '{KEY_TYPE} BASE64 USER'")
            try:
                keys[_parse_public(words[1])] = words[2]
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
    return keys


def client_response(
    key: Ed25519PrivateKey, challenge: bytes, uname: str, aname: str, binding: bytes = b""
) -> bytes:
    """What the client writes to the afid after reading the server's challenge."""
    words = challenge.decode(errors="replace").split()
    if len(words) != 2 or words[0] != PROTOCOL:
        raise NinePError(f"authentication failed: unknown auth protocol {challenge[:40]!r}")
    signature = key.sign(_message(words[1], uname, aname, binding))
    pub = base64.b64encode(_raw_public(key.public_key())).decode()
    return f"{KEY_TYPE} {pub} {base64.b64encode(signature).decode()}\n".encode()


@dataclass(eq=False, slots=True)
class AuthSession:
    """The state behind one afid: the challenge sent, and the user once proven."""

    uname: str
    aname: str
    qid: Qid
    binding: bytes = b""  # channel_binding() of the connection the afid belongs to
    nonce: str = field(default_factory=lambda: secrets.token_hex(32))
    sent_challenge: bool = False
    user: str | None = None
    failed: str | None = None

    def read(self, count: int) -> bytes:
        if not self.sent_challenge:
            self.sent_challenge = True
            return f"{PROTOCOL} {self.nonce}\n".encode()[:count]
        if self.user is not None:
            return f"ok {self.user}\n".encode()[:count]
        raise NinePError(f"authentication failed: {self.failed or 'no response written yet'}")


class Authenticator:
    """The server side: checks responses against an authorized-keys table."""

    def __init__(self, authorized: dict[bytes, str]) -> None:
        self.authorized = authorized
        self._paths = 0

    @classmethod
    def from_file(cls, path: str) -> Authenticator:
        return cls(load_authorized_keys(path))

    def start(self, uname: str, aname: str, binding: bytes = b"") -> AuthSession:
        self._paths += 1
        return AuthSession(uname, aname, Qid(QTAUTH, 0, self._paths), binding=binding)

    def write(self, session: AuthSession, data: bytes) -> int:
        if not session.sent_challenge:
            raise NinePError("authentication failed: read the challenge first")
        if session.user is not None or session.failed is not None:
            raise NinePError("authentication failed: response already given")
        words = data.decode(errors="replace").split()
        try:
            if len(words) != 3 or words[0] != KEY_TYPE:
                raise ValueError(f"want '{KEY_TYPE} PUBKEY SIGNATURE'")
            raw = _parse_public(words[1])
            signature = base64.b64decode(words[2], validate=True)
            user = self.authorized.get(raw)
            if user is None:
                raise ValueError("key not authorized")
            Ed25519PublicKey.from_public_bytes(raw).verify(
                signature, _message(session.nonce, session.uname, session.aname, session.binding)
            )
            if user != session.uname:
                raise ValueError(f"key is {user}'s, not {session.uname}'s")
        except (ValueError, InvalidSignature) as e:
            session.failed = str(e) or "bad signature"
            raise NinePError(f"authentication failed: {session.failed}") from None
        session.user = user
        return len(data)
