"""Bytes from /dev/fuse into request values, and replies and notifications into bytes.

Pure (no I/O), like ninep/codec.py: `parse` takes one request as the kernel wrote
it and gives a `Request` whose `args` is a value per opcode, or raises
`BadRequest` (with the request's unique id when the header was whole, so the
session can answer it with an error, never crash). The reply encoders take the
values of fuseabi.py. Layouts are linux/fuse.h's (fuseabi.py).
"""

from __future__ import annotations

import errno as errno_mod

from . import fuseabi as abi
from .fuseabi import Attr, FileInfo, Op, SetattrIn, StatvfsData
from .fuseargs import (
    BARE,
    Access,
    BatchForget,
    Create,
    Flush,
    Forget,
    Fsync,
    Getattr,
    Init,
    Interrupt,
    Link,
    Lookup,
    Mkdir,
    Mknod,
    Open,
    Read,
    Readdir,
    Release,
    Rename,
    Request,
    Rmdir,
    Setattr,
    Symlink,
    Unlink,
    Write,
    Xattr,
)

__all__ = [
    "BadRequest",
    "DirentBuffer",
    "Request",
    "attr_out",
    "entry_out",
    "init_out",
    "notify_delete",
    "notify_inval_entry",
    "notify_inval_inode",
    "open_out",
    "parse",
    "reply",
    "reply_error",
    "statfs_out",
    "write_out",
]

_U64 = (1 << 64) - 1


class BadRequest(Exception):
    """A request that cannot be read: `unique` is None when not even its header could."""

    def __init__(self, message: str, unique: int | None = None, errno: int = errno_mod.EINVAL) -> None:
        super().__init__(message)
        self.unique = unique
        self.errno = errno


# --- parsing --------------------------------------------------------------------------


def _name(body: memoryview, unique: int, start: int = 0) -> tuple[bytes, int]:
    """A NUL-terminated name from `start`; and where the next one begins."""
    raw = bytes(body[start:])
    end = raw.find(b"\0")
    if end < 0:
        raise BadRequest("name without its NUL", unique)
    return raw[:end], start + end + 1


def _need(body: memoryview, size: int, unique: int, what: str) -> None:
    if len(body) < size:
        raise BadRequest(f"{what}: {len(body)} bytes, need {size}", unique)


def parse(buf: bytes | bytearray | memoryview, minor: int = abi.KERNEL_MINOR) -> Request:
    """One request, as read from /dev/fuse (exactly the bytes of one read)."""
    view = memoryview(buf)
    if len(view) < abi.IN_HEADER.size:
        raise BadRequest(f"request of {len(view)} bytes, shorter than its header")
    length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = abi.IN_HEADER.unpack_from(view)
    if length != len(view) or length < abi.IN_HEADER.size:
        raise BadRequest(f"request says {length} bytes, read {len(view)}", unique)
    end = length - extlen * 8  # extensions (security contexts) follow the body; we ask for none
    if end < abi.IN_HEADER.size:
        raise BadRequest("extensions longer than the request", unique)
    body = view[abi.IN_HEADER.size : end]
    decode = _DECODERS.get(opcode)
    args = BARE if decode is None else decode(body, unique, minor)
    return Request(opcode, unique, nodeid, uid, gid, pid, args)


def _lookup(body: memoryview, unique: int, minor: int) -> Lookup:
    return Lookup(_name(body, unique)[0])


def _forget(body: memoryview, unique: int, minor: int) -> Forget:
    _need(body, abi.FORGET_IN.size, unique, "forget")
    return Forget(abi.FORGET_IN.unpack_from(body)[0])


def _batch_forget(body: memoryview, unique: int, minor: int) -> BatchForget:
    _need(body, abi.BATCH_FORGET_IN.size, unique, "batch_forget")
    count = abi.BATCH_FORGET_IN.unpack_from(body)[0]
    _need(body, abi.BATCH_FORGET_IN.size + count * abi.FORGET_ONE.size, unique, "batch_forget")
    items = list(abi.FORGET_ONE.iter_unpack(body[abi.BATCH_FORGET_IN.size :][: count * abi.FORGET_ONE.size]))
    return BatchForget(items)


def _getattr(body: memoryview, unique: int, minor: int) -> Getattr:
    if len(body) < abi.GETATTR_IN.size:  # before 7.9 GETATTR had no body
        return Getattr(None)
    flags, _, fh = abi.GETATTR_IN.unpack_from(body)
    return Getattr(fh if flags & abi.FUSE_GETATTR_FH else None)


def _setattr(body: memoryview, unique: int, minor: int) -> Setattr:
    _need(body, abi.SETATTR_IN.size, unique, "setattr")
    (valid, _, fh, size, _, atime, mtime, _, atimensec, mtimensec, _, mode, _, uid, gid, _) = (
        abi.SETATTR_IN.unpack_from(body)
    )
    a, m = SetattrIn.times(valid, atime, atimensec, mtime, mtimensec)
    return Setattr(SetattrIn(valid, fh, size, a, m, mode, uid, gid))


def _mknod(body: memoryview, unique: int, minor: int) -> Mknod:
    _need(body, abi.MKNOD_IN.size, unique, "mknod")
    mode, rdev, umask, _ = abi.MKNOD_IN.unpack_from(body)
    return Mknod(_name(body, unique, abi.MKNOD_IN.size)[0], mode, rdev, umask)


def _mkdir(body: memoryview, unique: int, minor: int) -> Mkdir:
    _need(body, abi.MKDIR_IN.size, unique, "mkdir")
    mode, umask = abi.MKDIR_IN.unpack_from(body)
    return Mkdir(_name(body, unique, abi.MKDIR_IN.size)[0], mode, umask)


def _unlink(body: memoryview, unique: int, minor: int) -> Unlink:
    return Unlink(_name(body, unique)[0])


def _rmdir(body: memoryview, unique: int, minor: int) -> Rmdir:
    return Rmdir(_name(body, unique)[0])


def _rename(body: memoryview, unique: int, minor: int) -> Rename:
    _need(body, abi.RENAME_IN.size, unique, "rename")
    (newdir,) = abi.RENAME_IN.unpack_from(body)
    old, at = _name(body, unique, abi.RENAME_IN.size)
    return Rename(newdir, old, _name(body, unique, at)[0], 0)


def _rename2(body: memoryview, unique: int, minor: int) -> Rename:
    _need(body, abi.RENAME2_IN.size, unique, "rename2")
    newdir, flags, _ = abi.RENAME2_IN.unpack_from(body)
    old, at = _name(body, unique, abi.RENAME2_IN.size)
    return Rename(newdir, old, _name(body, unique, at)[0], flags)


def _symlink(body: memoryview, unique: int, minor: int) -> Symlink:
    name, at = _name(body, unique)
    return Symlink(name, _name(body, unique, at)[0])


def _link(body: memoryview, unique: int, minor: int) -> Link:
    _need(body, 8, unique, "link")
    return Link(abi.RENAME_IN.unpack_from(body)[0], _name(body, unique, 8)[0])


def _open(body: memoryview, unique: int, minor: int) -> Open:
    _need(body, abi.OPEN_IN.size, unique, "open")
    return Open(abi.OPEN_IN.unpack_from(body)[0])


def _read(body: memoryview, unique: int, minor: int) -> Read:
    _need(body, abi.READ_IN.size, unique, "read")
    fh, offset, size, *_ = abi.READ_IN.unpack_from(body)
    return Read(fh, offset, size)


def _readdir(body: memoryview, unique: int, minor: int, plus: bool = False) -> Readdir:
    _need(body, abi.READ_IN.size, unique, "readdir")
    fh, offset, size, *_ = abi.READ_IN.unpack_from(body)
    return Readdir(fh, offset, size, plus)


def _readdirplus(body: memoryview, unique: int, minor: int) -> Readdir:
    return _readdir(body, unique, minor, True)


def _write(body: memoryview, unique: int, minor: int) -> Write:
    _need(body, abi.WRITE_IN.size, unique, "write")
    fh, offset, size, write_flags, *_ = abi.WRITE_IN.unpack_from(body)
    data = body[abi.WRITE_IN.size :]
    if len(data) != size:
        raise BadRequest(f"write of {size} bytes carries {len(data)}", unique)
    return Write(fh, offset, bytes(data), write_flags)


def _release(body: memoryview, unique: int, minor: int) -> Release:
    _need(body, abi.RELEASE_IN.size, unique, "release")
    fh, flags, *_ = abi.RELEASE_IN.unpack_from(body)
    return Release(fh, flags)


def _flush(body: memoryview, unique: int, minor: int) -> Flush:
    _need(body, abi.FLUSH_IN.size, unique, "flush")
    return Flush(abi.FLUSH_IN.unpack_from(body)[0])


def _fsync(body: memoryview, unique: int, minor: int) -> Fsync:
    _need(body, abi.FSYNC_IN.size, unique, "fsync")
    fh, flags, _ = abi.FSYNC_IN.unpack_from(body)
    return Fsync(fh, bool(flags & abi.FUSE_FSYNC_FDATASYNC))


def _access(body: memoryview, unique: int, minor: int) -> Access:
    _need(body, abi.ACCESS_IN.size, unique, "access")
    return Access(abi.ACCESS_IN.unpack_from(body)[0])


def _create(body: memoryview, unique: int, minor: int) -> Create:
    _need(body, abi.CREATE_IN.size, unique, "create")
    flags, mode, umask, _ = abi.CREATE_IN.unpack_from(body)
    return Create(_name(body, unique, abi.CREATE_IN.size)[0], flags, mode, umask)


def _interrupt(body: memoryview, unique: int, minor: int) -> Interrupt:
    _need(body, abi.INTERRUPT_IN.size, unique, "interrupt")
    return Interrupt(abi.INTERRUPT_IN.unpack_from(body)[0])


def _init(body: memoryview, unique: int, minor: int) -> Init:
    _need(body, abi.INIT_IN.size, unique, "init")
    return Init(*abi.INIT_IN.unpack_from(body))


def _getxattr(body: memoryview, unique: int, minor: int) -> Xattr:
    _need(body, abi.GETXATTR_IN.size, unique, "getxattr")
    return Xattr(_name(body, unique, abi.GETXATTR_IN.size)[0], abi.GETXATTR_IN.unpack_from(body)[0])


def _listxattr(body: memoryview, unique: int, minor: int) -> Xattr:
    _need(body, abi.GETXATTR_IN.size, unique, "listxattr")
    return Xattr(b"", abi.GETXATTR_IN.unpack_from(body)[0])


_DECODERS = {
    Op.LOOKUP: _lookup,
    Op.FORGET: _forget,
    Op.BATCH_FORGET: _batch_forget,
    Op.GETATTR: _getattr,
    Op.SETATTR: _setattr,
    Op.MKNOD: _mknod,
    Op.MKDIR: _mkdir,
    Op.UNLINK: _unlink,
    Op.RMDIR: _rmdir,
    Op.RENAME: _rename,
    Op.RENAME2: _rename2,
    Op.SYMLINK: _symlink,
    Op.LINK: _link,
    Op.OPEN: _open,
    Op.OPENDIR: _open,
    Op.READ: _read,
    Op.READDIR: _readdir,
    Op.READDIRPLUS: _readdirplus,
    Op.WRITE: _write,
    Op.RELEASE: _release,
    Op.RELEASEDIR: _release,
    Op.FLUSH: _flush,
    Op.FSYNC: _fsync,
    Op.FSYNCDIR: _fsync,
    Op.ACCESS: _access,
    Op.CREATE: _create,
    Op.INTERRUPT: _interrupt,
    Op.INIT: _init,
    Op.GETXATTR: _getxattr,
    Op.LISTXATTR: _listxattr,
}
_DECODERS = {int(k): v for k, v in _DECODERS.items()}


# --- replies ----------------------------------------------------------------------------


def reply(unique: int, body: bytes = b"") -> bytes:
    return abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(body), 0, unique) + body


def reply_error(unique: int, errno: int) -> bytes:
    return abi.OUT_HEADER.pack(abi.OUT_HEADER.size, -errno, unique)


def _split(seconds: float) -> tuple[int, int]:
    if seconds <= 0:
        return 0, 0
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


def _ns(t: int) -> tuple[int, int]:
    s, ns = divmod(t, 1_000_000_000)
    return s & _U64, ns


def _attr_fields(a: Attr) -> tuple[int, ...]:
    asec, ansec = _ns(a.st_atime_ns)
    msec, mnsec = _ns(a.st_mtime_ns)
    csec, cnsec = _ns(a.st_ctime_ns)
    return (
        a.st_ino, a.st_size, a.st_blocks, asec, msec, csec, ansec, mnsec, cnsec,
        a.st_mode, a.st_nlink, a.st_uid & 0xFFFFFFFF, a.st_gid & 0xFFFFFFFF, a.st_rdev, a.st_blksize, 0,
    )  # fmt: skip


def _attr(a: Attr) -> bytes:
    return abi.ATTR.pack(*_attr_fields(a))


def _entry_fields(a: Attr) -> tuple[int, ...]:
    es, ens = _split(a.entry_timeout)
    ats, atns = _split(a.attr_timeout)
    return (a.st_ino, a.generation, es, ats, ens, atns, *_attr_fields(a))


def entry_out(a: Attr) -> bytes:
    """A lookup's (mkdir's, create's) answer; st_ino 0 is a negative entry."""
    return abi.ENTRY_AND_ATTR.pack(*_entry_fields(a))


def attr_out(a: Attr) -> bytes:
    s, ns = _split(a.attr_timeout)
    return abi.ATTR_OUT.pack(s, ns, 0) + _attr(a)


def open_out(fi: FileInfo) -> bytes:
    return abi.OPEN_OUT.pack(fi.fh, fi.open_flags, 0)


def write_out(n: int) -> bytes:
    return abi.WRITE_OUT.pack(n, 0)


def statfs_out(s: StatvfsData) -> bytes:
    return abi.KSTATFS.pack(
        s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize, s.f_namemax, s.f_frsize, 0
    )


def init_out(
    minor: int, max_readahead: int, flags: int, max_background: int, congestion: int, max_write: int
) -> bytes:
    max_pages = (max_write + 4095) // 4096
    return abi.INIT_OUT.pack(
        abi.KERNEL_MAJOR, minor, max_readahead, flags & 0xFFFFFFFF, max_background, congestion,
        max_write, 1, max_pages, 0, flags >> 32,
    )  # fmt: skip


_PADS = tuple(b"\0" * k for k in range(8))


class DirentBuffer:
    """A READDIR(PLUS) answer being filled: entries until the kernel's buffer is full.

    Each entry carries the offset of the one after it, which the kernel passes back
    to continue from there (seekdir, or a listing longer than one buffer)."""

    __slots__ = ("_parts", "plus", "size", "used")

    def __init__(self, size: int, plus: bool) -> None:
        self.size = size
        self.plus = plus
        self.used = 0
        self._parts: list[bytes] = []

    def add(self, name: bytes, attr: Attr, next_offset: int) -> bool:
        """Add an entry; False (and nothing added) once it would not fit."""
        n = len(name)
        pad = -(abi.DIRENT.size + n) % 8
        dirent = (attr.st_ino, next_offset, n, (attr.st_mode >> 12) & 0xF)
        if self.plus:  # one pack for fuse_direntplus: entry_out, attr and dirent
            total = abi.DIRENTPLUS.size + n + pad
            if self.used + total > self.size:
                return False
            record = abi.DIRENTPLUS.pack(*_entry_fields(attr), *dirent)
        else:
            total = abi.DIRENT.size + n + pad
            if self.used + total > self.size:
                return False
            record = abi.DIRENT.pack(*dirent)
        self._parts.append(record + name + _PADS[pad])
        self.used += total
        return True

    def bytes(self) -> bytes:
        return b"".join(self._parts)


# --- notifications ----------------------------------------------------------------------


def _notify(code: int, body: bytes, more: int = 0) -> bytes:
    """A notification's header and `body`; `more` bytes follow it in the same write."""
    return abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(body) + more, code, 0) + body


def notify_inval_inode(ino: int, offset: int = -1, length: int = 0) -> bytes:
    """The kernel forgets `ino`'s attributes; with offset >= 0, also its pages from there
    (length 0: to the end)."""
    return _notify(abi.Notify.INVAL_INODE, abi.NOTIFY_INVAL_INODE.pack(ino, offset, length))


def notify_inval_entry(parent: int, name: bytes) -> bytes:
    """The kernel forgets what `name` in `parent` was (a positive or a negative entry)."""
    return _notify(abi.Notify.INVAL_ENTRY, abi.NOTIFY_INVAL_ENTRY.pack(parent, len(name), 0) + name + b"\0")


def notify_delete(parent: int, child: int, name: bytes) -> bytes:
    """`name` (inode `child`) in `parent` is gone: as inval_entry, and the dentry deleted."""
    return _notify(abi.Notify.DELETE, abi.NOTIFY_DELETE.pack(parent, child, len(name), 0) + name + b"\0")


def notify_store_header(ino: int, offset: int, size: int) -> bytes:
    """The kernel's page cache of `ino` gets `size` bytes at `offset`: the bytes follow."""
    return _notify(abi.Notify.STORE, abi.NOTIFY_STORE.pack(ino, offset, size, 0), size)
