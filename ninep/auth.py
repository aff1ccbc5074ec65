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
line `ninefs-ed25519 BASE64 COMMENT` (COMMENT: user@host). An authorized-keys file has one
key per line (`#` starts a comment), in either form:

    ninefs-ed25519 BASE64 USER
    user=USER ninefs-ed25519 BASE64 [COMMENT]

The second is a `.pub` line as `key gen` wrote it, pasted whole, with the user it maps to
given as an ssh-like option in front (`ninefs key authorize` writes it). A three-word line
whose last word holds `@` is such a pasted line without its user: refused, not read as
user "root@vm". A key listed for two users is refused too: a key is one user.
Every error names FILE:LINE.

Who "I" am, for the default user name and comments, is the password entry of the
effective uid (`local_user`), never $USER: see its docstring.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import os
import pwd
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .constants import QTAUTH
from .errors import NinePError
from .messages import Qid

# cryptography is imported where a key is made, read, used or checked, not here: every
# client names its user through this module (local_user) and most never see a key, and
# importing cryptography costs ~20 ms, a tenth of `ninefs cpu HOST -- true` (issue #19).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "DEFAULT_AUTHORIZED_KEYS",
    "DEFAULT_KEY",
    "KEY_TYPE",
    "AuthSession",
    "Authenticator",
    "AuthorizedKey",
    "KeyFileError",
    "PublicKey",
    "authorize",
    "check_user",
    "client_response",
    "generate_key",
    "load_authorized_keys",
    "load_private_key",
    "load_public_key",
    "local_user",
    "no_key_reason",
    "parse_authorized_keys",
    "parse_public_line",
    "public_key",
    "public_line",
    "read_authorized_keys",
    "resolve_key",
]

PROTOCOL = "ninefs-auth-v1"
KEY_TYPE = "ninefs-ed25519"
DEFAULT_KEY = os.path.join(os.path.expanduser("~"), ".config", "ninefs", "id_ed25519")
DEFAULT_AUTHORIZED_KEYS = os.path.join(os.path.dirname(DEFAULT_KEY), "authorized_keys")


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
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_line(key: Ed25519PrivateKey, comment: str) -> str:
    """The `.pub` / authorized-keys line for `key`."""
    return f"{KEY_TYPE} {base64.b64encode(_raw_public(key.public_key())).decode()} {comment}"


def generate_key(path: str, comment: str) -> str:
    """Write a new private key to `path` (0600) and `path`.pub; give the public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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


# A key file is a few hundred bytes; reading more than this is reading the wrong file
# (a disk image, /dev/zero), not a key.
MAX_KEY_FILE = 64 << 10


class KeyFileError(OSError):
    """A key file, or a line of an authorized-keys file, that cannot be used.

    str() is one line naming the file (`PATH: reason`, `PATH:LINE: reason`), so every
    command prints it as it is. An OSError, with `filename` the path, so that callers
    reporting a missing or unreadable file report a garbage one the same way.
    """

    def __init__(self, path: str, reason: str, lineno: int | None = None, code: int = errno.EINVAL) -> None:
        super().__init__(code, reason, path)
        self.lineno = lineno

    @property
    def where(self) -> str:
        return self.filename if self.lineno is None else f"{self.filename}:{self.lineno}"

    def __str__(self) -> str:
        return f"{self.where}: {self.strerror}"

    def __reduce__(self):  # type: ignore[override]  # pickling keeps path and line
        return (type(self), (self.filename, self.strerror, self.lineno, self.errno))


def local_user() -> str:
    """Who this process is: the password entry of its effective uid, else the uid itself.

    Not getpass.getuser(), which believes $LOGNAME and $USER first: those are inherited,
    so under `sudo -E`, `su`, a cron job, a container image or a cpu session they may name
    someone the process is not, or be unset. The name a client attaches as and the user a
    key is offered for should be the identity the kernel gives us. A uid with no entry
    (containers run with arbitrary uids) is named by its number, which is at least true.
    """
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as e:
        raise KeyFileError(path, e.strerror or str(e), code=e.errno or errno.EIO) from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(path, f"not a key: larger than {MAX_KEY_FILE} bytes")
    return data


# Keys parsed so far, by the bytes of their file: every connection of a namespace over 64
# machines reads the same key, and parsing it each time was ~8 ms of `ns run` (issue #19).
# The file is still read every time, so a key changed or gone on disk is noticed.
_parsed: dict[bytes, Ed25519PrivateKey] = {}


def load_private_key(path: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in `path`; any failure is a KeyFileError naming `path`."""
    data = _read_key_file(path)
    known = _parsed.get(data)
    if known is not None:
        return known
    text = data.lstrip()
    if text.startswith(KEY_TYPE.encode()):
        raise KeyFileError(path, "a public key: give the private key (the file without .pub)")
    if text.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        raise KeyFileError(
            path, "an OpenSSH key: ninefs keys are PKCS#8 PEM (make one with `ninefs key gen`)"
        )
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying the key has a passphrase
        raise KeyFileError(path, "encrypted private key: ninefs keys have no passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(path, "not a PEM private key (make one with `ninefs key gen`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "") or "other"
        raise KeyFileError(path, f"not an Ed25519 private key (an {kind} key)")
    if len(_parsed) >= 16:
        _parsed.clear()
    _parsed[data] = key
    return key


def resolve_key(key: object) -> Ed25519PrivateKey | None:
    """A key given as a key, a path, or None: then $NINEFS_KEY, or the default file if any.

    A path given must hold a key. $NINEFS_KEY naming no file means no key, as the default
    file's absence does (scripts set NINEFS_KEY=/nonexistent to offer none).
    """
    if isinstance(key, (str, os.PathLike)):
        return load_private_key(os.fspath(key))
    if key is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if isinstance(key, Ed25519PrivateKey):
            return key
        raise TypeError(f"a key is an Ed25519PrivateKey or a path, not {type(key).__name__}")
    path = os.environ.get("NINEFS_KEY") or DEFAULT_KEY
    if not os.path.lexists(path):
        return None
    try:
        return load_private_key(path)
    except KeyFileError as e:
        if path == DEFAULT_KEY:
            raise
        raise KeyFileError(f"{path} ($NINEFS_KEY)", e.strerror, code=e.errno) from None


def no_key_reason() -> str:
    """Why resolve_key(None) found nothing, naming where it looked."""
    named = os.environ.get("NINEFS_KEY")
    where = f"$NINEFS_KEY={named}" if named else DEFAULT_KEY
    return f"no key: {where} does not exist (make one with `ninefs key gen`, or give --key)"


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A `.pub` line: the raw 32-byte Ed25519 key and its comment (user@host, or empty)."""

    raw: bytes
    comment: str = ""

    @property
    def base64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def line(self) -> str:
        return f"{KEY_TYPE} {self.base64} {self.comment}".rstrip()


@dataclass(frozen=True, slots=True)
class AuthorizedKey:
    """One line of an authorized-keys file: the key, the user it acts as, where it was."""

    key: PublicKey
    user: str
    lineno: int

    def line(self) -> str:
        """The line `ninefs key authorize` writes: the .pub line with its user in front."""
        return f"user={self.user} {self.key.line()}"


def _parse_public(b64: str) -> bytes:
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise ValueError(f"bad key {b64[:20]!r}: not base64") from None
    if len(raw) != 32:
        raise ValueError(f"bad key {b64[:20]!r}: an Ed25519 public key has 32 bytes, not {len(raw)}")
    return raw


def check_user(user: str) -> str:
    """`user` if it can stand in an authorized-keys line and a Tattach; else ValueError."""
    if not user:
        raise ValueError("empty user name")
    bad = [c for c in user if c.isspace() or not c.isprintable() or c in "#,=/"]
    if bad:
        raise ValueError(f"bad user name {user!r}: no spaces, '#', ',', '=' or '/'")
    return user


def parse_public_line(text: str, where: str) -> PublicKey:
    """The one key of a `.pub` file's text (`ninefs-ed25519 BASE64 [COMMENT]`)."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise KeyFileError(where, "no public key in it")
    if lines[0].startswith("-----BEGIN"):
        raise KeyFileError(where, "a private key: give its .pub (`ninefs key show KEY` prints it)")
    if len(lines) > 1:
        raise KeyFileError(where, "more than one line: give one .pub line")
    words = lines[0].split()
    if words[0] != KEY_TYPE or len(words) < 2:
        raise KeyFileError(where, f"not a .pub line: want '{KEY_TYPE} BASE64 COMMENT'")
    try:
        return PublicKey(_parse_public(words[1]), " ".join(words[2:]))
    except ValueError as e:
        raise KeyFileError(where, str(e)) from None


def public_key(key: Ed25519PrivateKey, comment: str = "") -> PublicKey:
    """The public half of `key`, as a `.pub` line would hold it."""
    return PublicKey(_raw_public(key.public_key()), comment)


def load_public_key(path: str) -> PublicKey:
    """The key of the `.pub` file `path`; KeyFileError names it."""
    data = _read_key_file(path)
    return parse_public_line(_decode(data, path, "a .pub file"), path)


_FORMS = f"want '{KEY_TYPE} BASE64 USER' or 'user=USER {KEY_TYPE} BASE64 [COMMENT]'"


def _parse_authorized_line(words: list[str], path: str, lineno: int) -> AuthorizedKey:
    def refuse(reason: str) -> KeyFileError:
        return KeyFileError(path, reason, lineno)

    user: str | None = None
    if words[0] != KEY_TYPE and "=" in words[0]:
        for option in words.pop(0).split(","):
            name, _, value = option.partition("=")
            if name != "user":
                raise refuse(f"unknown option {option!r}: the only one is user=USER")
            user = value
        if not words or words[0] != KEY_TYPE:
            raise refuse(f"{KEY_TYPE} must follow user=USER; {_FORMS}")
        if len(words) < 2:
            raise refuse(f"no key after {KEY_TYPE}")
        comment = " ".join(words[2:])
    elif words[0] != KEY_TYPE or len(words) > 3:
        raise refuse(_FORMS)
    elif len(words) == 2:
        raise refuse(
            "no user for this key: put user=USER in front, or add it with "
            "`ninefs key authorize PUB --user USER`"
        )
    elif "@" in words[2]:
        raise refuse(
            f"{words[2]!r} is a .pub comment, not a user: put user=USER in front of the pasted line, "
            f"or add it with `ninefs key authorize PUB --user USER`"
        )
    else:
        user, comment = words[2], ""
    try:
        return AuthorizedKey(PublicKey(_parse_public(words[1]), comment), check_user(user or ""), lineno)
    except ValueError as e:
        raise refuse(str(e)) from None


def parse_authorized_keys(text: str, path: str) -> list[AuthorizedKey]:
    """Every key line of an authorized-keys file's `text`; KeyFileError names PATH:LINE."""
    entries: list[AuthorizedKey] = []
    first: dict[bytes, AuthorizedKey] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        entry = _parse_authorized_line(words, path, lineno)
        seen = first.setdefault(entry.key.raw, entry)
        if seen.user != entry.user:
            raise KeyFileError(
                path, f"this key is already {seen.user}'s at line {seen.lineno}: a key is one user", lineno
            )
        entries.append(entry)
    return entries


def _decode(data: bytes, path: str, what: str = "an authorized-keys file") -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise KeyFileError(path, f"not text (not UTF-8), so not {what}", lineno) from None


def read_authorized_keys(path: str) -> list[AuthorizedKey]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KeyFileError(path, e.strerror or str(e), code=e.errno or errno.EIO) from None
    return parse_authorized_keys(_decode(data, path), path)


def load_authorized_keys(path: str) -> dict[bytes, str]:
    """Raw public key -> user name, from an authorized-keys file."""
    return {e.key.raw: e.user for e in read_authorized_keys(path)}


def authorize(path: str, key: PublicKey, user: str, *, replace: bool = False) -> AuthorizedKey:
    """Add `key` for `user` to the authorized-keys file `path`; the entry written.

    Creates the file (0600) and any missing directories (the last 0700). A key already listed is refused
    (KeyFileError naming its line, EEXIST) unless `replace`, which drops its old lines.
    The file is checked whole first: nothing is added to a file a server would refuse.
    Holds flock(2) on the file throughout, so two `authorize` at once both land.
    """
    check_user(user)
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise KeyFileError(path, e.strerror or str(e), code=e.errno or errno.EIO) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                mine, now = os.fstat(fd), os.stat(path)
            except FileNotFoundError:
                continue
            if (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino):
                continue  # a --replace renamed a new file over the one we locked: lock that
            data = b""
            while chunk := os.pread(fd, 1 << 16, len(data)):
                data += chunk
            text = _decode(data, path)
            entries = parse_authorized_keys(text, path)
            listed = [e for e in entries if e.key.raw == key.raw]
            if listed and not replace:
                raise KeyFileError(
                    path,
                    f"this key is already listed for {listed[0].user} (--replace to change that)",
                    listed[0].lineno,
                    errno.EEXIST,
                )
            if not listed:
                lineno = len(text.splitlines()) + 1
                entry = AuthorizedKey(key, user, lineno)
                os.write(
                    fd, (("\n" if text and not text.endswith("\n") else "") + entry.line() + "\n").encode()
                )
                return entry
            drop = {e.lineno for e in listed}
            kept = [ln for i, ln in enumerate(text.splitlines(), 1) if i not in drop]
            entry = AuthorizedKey(key, user, len(kept) + 1)
            _replace_file(path, "".join(ln + "\n" for ln in kept) + entry.line() + "\n", mine)
            return entry
        finally:
            os.close(fd)


def _replace_file(path: str, text: str, old: os.stat_result) -> None:
    """Write `text` to `path` by rename, so a crash leaves the old file or the new, whole;
    with the old file's mode and, as far as we may, its owner (a server's own user's file)."""
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, old.st_mode & 0o777)
        with os.fdopen(fd, "w") as f:
            with contextlib.suppress(PermissionError):
                os.fchown(f.fileno(), old.st_uid, old.st_gid)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyFileError(path, e.strerror or str(e), code=e.errno or errno.EIO) from None


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
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
