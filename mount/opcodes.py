"""Each FUSE opcode onto the file system's method (TreeFS), and its answer into bytes.

The file system sees values, never bytes: the arguments pyfuse3 gave, and it gives back
attributes, file infos and data, which the codec packs. An opcode with no handler here
is answered ENOSYS by the session (fusesession.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from . import fusecodec as codec
from .fuseabi import FileInfo, Op
from .fuseargs import Request

__all__ = ["HANDLERS"]


class Session(Protocol):
    """What a handler needs of the session: the file system it serves."""

    fs: Any


async def _lookup(s: Session, req: Request) -> bytes:
    return codec.entry_out(await s.fs.lookup(req.nodeid, req.args.name, req))


async def _forget(s: Session, req: Request) -> bytes:
    await s.fs.forget([(req.nodeid, req.args.nlookup)])
    return b""


async def _batch_forget(s: Session, req: Request) -> bytes:
    await s.fs.forget(req.args.items)
    return b""


async def _getattr(s: Session, req: Request) -> bytes:
    return codec.attr_out(await s.fs.getattr(req.nodeid, req, fh=req.args.fh))


async def _setattr(s: Session, req: Request) -> bytes:
    c = req.args.changes
    return codec.attr_out(await s.fs.setattr(req.nodeid, c, c, c.fh if c.has_fh else None, req))


async def _mkdir(s: Session, req: Request) -> bytes:
    a = req.args
    return codec.entry_out(await s.fs.mkdir(req.nodeid, a.name, a.mode, req))


async def _unlink(s: Session, req: Request) -> bytes:
    await s.fs.unlink(req.nodeid, req.args.name, req)
    return b""


async def _rmdir(s: Session, req: Request) -> bytes:
    await s.fs.rmdir(req.nodeid, req.args.name, req)
    return b""


async def _rename(s: Session, req: Request) -> bytes:
    a = req.args
    await s.fs.rename(req.nodeid, a.old, a.newdir, a.new, a.flags, req)
    return b""


async def _symlink(s: Session, req: Request) -> bytes:
    a = req.args
    return codec.entry_out(await s.fs.symlink(req.nodeid, a.name, a.target, req))


async def _link(s: Session, req: Request) -> bytes:
    a = req.args
    return codec.entry_out(await s.fs.link(a.oldnodeid, req.nodeid, a.name, req))


async def _mknod(s: Session, req: Request) -> bytes:
    a = req.args
    return codec.entry_out(await s.fs.mknod(req.nodeid, a.name, a.mode, a.rdev, req))


async def _readlink(s: Session, req: Request) -> bytes:
    return bytes(await s.fs.readlink(req.nodeid, req))


async def _open(s: Session, req: Request) -> bytes:
    return codec.open_out(await s.fs.open(req.nodeid, req.args.flags, req))


async def _read(s: Session, req: Request) -> bytes:
    a = req.args
    return await s.fs.read(a.fh, a.offset, a.size)


async def _write(s: Session, req: Request) -> bytes:
    a = req.args
    return codec.write_out(await s.fs.write(a.fh, a.offset, a.data))


async def _statfs(s: Session, req: Request) -> bytes:
    return codec.statfs_out(await s.fs.statfs(req))


async def _release(s: Session, req: Request) -> bytes:
    await s.fs.release(req.args.fh)
    return b""


async def _flush(s: Session, req: Request) -> bytes:
    await s.fs.flush(req.args.fh)
    return b""


async def _fsync(s: Session, req: Request) -> bytes:
    await s.fs.fsync(req.args.fh, req.args.datasync)
    return b""


async def _opendir(s: Session, req: Request) -> bytes:
    got = await s.fs.opendir(req.nodeid, req)
    return codec.open_out(got if isinstance(got, FileInfo) else FileInfo(fh=got))


async def _readdir(s: Session, req: Request) -> bytes:
    a = req.args
    buf = codec.DirentBuffer(a.size, a.plus)
    await s.fs.readdir(a.fh, a.offset, buf)
    return buf.bytes()


async def _releasedir(s: Session, req: Request) -> bytes:
    await s.fs.releasedir(req.args.fh)
    return b""


async def _fsyncdir(s: Session, req: Request) -> bytes:
    await s.fs.fsyncdir(req.args.fh, req.args.datasync)
    return b""


async def _create(s: Session, req: Request) -> bytes:
    a = req.args
    fi, attr = await s.fs.create(req.nodeid, a.name, a.mode, a.flags, req)
    return codec.entry_out(attr) + codec.open_out(fi)


async def _destroy(s: Session, req: Request) -> bytes:
    return b""


HANDLERS: dict[int, Callable[[Session, Request], Awaitable[bytes]]] = {
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
    Op.RENAME2: _rename,
    Op.SYMLINK: _symlink,
    Op.LINK: _link,
    Op.READLINK: _readlink,
    Op.OPEN: _open,
    Op.READ: _read,
    Op.WRITE: _write,
    Op.STATFS: _statfs,
    Op.RELEASE: _release,
    Op.FLUSH: _flush,
    Op.FSYNC: _fsync,
    Op.OPENDIR: _opendir,
    Op.READDIR: _readdir,
    Op.READDIRPLUS: _readdir,
    Op.RELEASEDIR: _releasedir,
    Op.FSYNCDIR: _fsyncdir,
    Op.CREATE: _create,
    Op.DESTROY: _destroy,
    # ACCESS, the xattrs and the rest: ENOSYS, which the kernel remembers and stops asking
}
