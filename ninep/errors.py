"""One exception hierarchy for 9P errors, and the one table from 9P error strings to errno.

A 9P error is a string (error(5)). We raise it as a `NinePError`, an `OSError`
whose errno comes from Plan 9's wording, with subclasses that are also Python's
own (`FileNotFoundError`, ...), so `except FileNotFoundError:` works on remote
files. The FUSE side uses `errno_for` from this same table.
"""

from __future__ import annotations

import errno as E

__all__ = [
    "REFUSED_SYNC",
    "Exists",
    "Interrupted",
    "IsADirectory",
    "NinePError",
    "NotADirectory",
    "NotEmpty",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "TimedOut",
    "Unreachable",
    "ename_for",
    "errno_for",
    "error_for",
]

# Plan 9's wording (NINEP.md "Errors") with the errno a Linux program expects.
# Order matters only for ename_for: the first string for an errno is the one we send.
ERRORS: list[tuple[str, int]] = [
    ("file does not exist", E.ENOENT),
    ("permission denied", E.EACCES),
    ("file already exists", E.EEXIST),
    ("not a directory", E.ENOTDIR),
    ("is a directory", E.EISDIR),
    ("directory not empty", E.ENOTEMPTY),
    ("read-only file system", E.EROFS),
    ("no space left on device", E.ENOSPC),
    ("interrupted", E.EINTR),
    ("i/o error", E.EIO),
    ("host unreachable", E.EIO),  # Unreachable's, re-exported: EIO whatever its cause says
    ("timed out", E.ETIMEDOUT),
    ("invalid argument", E.EINVAL),
    ("file name too long", E.ENAMETOOLONG),
    ("cross-device link", E.EXDEV),
    ("operation not permitted", E.EPERM),
    ("device or resource busy", E.EBUSY),
    ("file too large", E.EFBIG),
    ("too many open files", E.EMFILE),
    ("function not implemented", E.ENOSYS),
    ("operation not supported", E.EOPNOTSUPP),
    ("connection closed", E.ECONNRESET),
    ("file in use", E.EBUSY),
    ("fid unknown or out of range", E.EBADF),
    ("fid already in use", E.EBADF),
    ("file not open", E.EBADF),
    ("file already open", E.EBUSY),
    ("bad use of fid", E.EBADF),
    ("walk in non-directory", E.ENOTDIR),
    ("create prohibited", E.EPERM),
    ("bad offset in directory read", E.EINVAL),
    ("authentication not required", E.EPERM),
    ("authentication failed", E.EACCES),
    ("too many outstanding requests", E.EAGAIN),
    ("too many fids", E.EMFILE),
    ("message too large", E.EMSGSIZE),
    # Other servers' wordings for the same things.
    ("no such file or directory", E.ENOENT),
    ("file not found", E.ENOENT),
    ("does not exist", E.ENOENT),
    ("exists", E.EEXIST),
    ("not empty", E.ENOTEMPTY),
    ("read-only", E.EROFS),
]
_BY_NAME = {name: code for name, code in ERRORS}
_BY_ERRNO: dict[int, str] = {}
for _name, _code in ERRORS:
    _BY_ERRNO.setdefault(_code, _name)


def errno_for(ename: str) -> int:
    """The errno a Linux program should see for a 9P error string (EIO when unknown)."""
    code = _BY_NAME.get(ename)
    if code is not None:
        return code
    low = ename.lower()
    for name, code in ERRORS:  # "'x' file does not exist" and similar decorated strings
        if name in low:
            return code
    return E.EIO


def ename_for(code: int) -> str:
    """Plan 9's wording for an errno, for servers that turn OSError into Rerror."""
    import os

    return _BY_ERRNO.get(code) or os.strerror(code).lower()


class NinePError(OSError):
    """A 9P error: `ename` is the string the server sent, `filename` the path we used."""

    def __init__(self, ename: str, path: str | None = None) -> None:
        args = (errno_for(ename), ename) if path is None else (errno_for(ename), ename, path)
        super().__init__(*args)
        self.ename = ename

    def __str__(self) -> str:
        return f"{self.filename}: {self.ename}" if self.filename is not None else self.ename

    def __reduce__(self):  # pickling keeps the class and path
        return (type(self), (self.ename, self.filename))


class ProtocolError(NinePError):
    """The peer broke the protocol (bad frame, wrong reply type, closed connection)."""


class NotFound(NinePError, FileNotFoundError):
    pass


class PermissionDenied(NinePError, PermissionError):
    pass


class Exists(NinePError, FileExistsError):
    pass


class NotADirectory(NinePError, NotADirectoryError):
    pass


class IsADirectory(NinePError, IsADirectoryError):
    pass


class NotEmpty(NinePError):
    pass


class Interrupted(NinePError, InterruptedError):
    pass


class TimedOut(NinePError, TimeoutError):
    pass


class Unreachable(ProtocolError):
    """The server cannot be reached just now: its connection was lost and is not back yet.

    Always EIO, whatever the cause in its words ("connection timed out" is not ETIMEDOUT
    here): the call was refused at once, it did not wait out a deadline.
    """

    def __init__(self, ename: str, path: str | None = None) -> None:
        OSError.__init__(self, *((E.EIO, ename) if path is None else (E.EIO, ename, path)))
        self.ename = ename


_CLASS_FOR_ERRNO: dict[int, type[NinePError]] = {
    E.ENOENT: NotFound,
    E.EACCES: PermissionDenied,
    E.EPERM: PermissionDenied,
    E.EEXIST: Exists,
    E.ENOTDIR: NotADirectory,
    E.EISDIR: IsADirectory,
    E.ENOTEMPTY: NotEmpty,
    E.EINTR: Interrupted,
    E.ETIMEDOUT: TimedOut,
}


# What a server that will not sync a file answers stat(5)'s null wstat with: a refusal,
# not an error of its disk or of the connection (a lost one is EIO, a deadline ETIMEDOUT).
REFUSED_SYNC = frozenset({E.EPERM, E.EACCES, E.EINVAL, E.ENOTSUP, E.ENOSYS, E.EISDIR, E.ENOENT})


def error_for(ename: str, path: str | None = None) -> NinePError:
    """The exception to raise for an Rerror, of the class a Python caller would catch."""
    cls = _CLASS_FOR_ERRNO.get(errno_for(ename), NinePError)
    return cls(ename, path)


def ename_from_oserror(exc: OSError) -> str:
    """How a server reports a host OSError: Plan 9's wording when there is one."""
    if isinstance(exc, NinePError):
        return exc.ename
    if exc.errno is not None:
        return ename_for(exc.errno)
    return str(exc) or "i/o error"
