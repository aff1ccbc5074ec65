"""fsspec's `9p://` protocol: a ninefs tree for pandas, dask, xarray and pyarrow.

`fsspec.open("9p://127.0.0.1:5640/data.csv")`, `pandas.read_csv("9p://host:5640/x.csv")`.
fsspec's async machinery is asyncio-only, so this is a synchronous AbstractFileSystem over
the blocking facade (ninep/sync.py): one trio loop in a helper thread owns the connection,
and every call here is a coroutine handed to it. The connection is made at first use, so an
instance pickles by its options (fsspec's `__reduce__`: dask workers dial their own), and a
forked child dials again instead of sharing its parent's socket.

Round trips, where 9P allows fewer: a walk and what follows it on the new fid go out in
one write, and are retried in order when the server ran them out of order: ninep/batch.py.

The top layer of nothing: this module is part of ninep and imports only ninep and fsspec.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import stat as st_mod
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.utils import stringify_path

from . import batch
from .batch import abs_path
from .bounds import CONNECT_TIMEOUT
from .constants import QTAPPEND
from .errors import NinePError, NotADirectory
from .messages import Stat
from .posix import unix_special
from .sync import SyncClient
from .sync import connect as sync_connect
from .transport import parse_address

__all__ = ["NinePFile", "NinePFileSystem"]

TIMEOUT = 60.0  # per 9P request: a server gone silent is an error, not a hang of read_csv


def _entry(path: str, st: Stat) -> dict[str, Any]:
    """fsspec's info dict: name, size, type; and 9P's own fields beside them."""
    kind = st_mod.S_IFDIR if st.is_dir else st_mod.S_IFREG
    return {
        "name": path,
        "size": 0 if st.is_dir else st.length,
        "type": "directory" if st.is_dir else "file",
        "mode": kind | (st.mode & 0o777) | unix_special(st.mode),
        "mtime": float(st.mtime),
        "atime": float(st.atime),
        "uid": st.uid,
        "gid": st.gid,
        "muid": st.muid,
        "qid": (st.qid.type, st.qid.vers, st.qid.path),
        "islink": False,
    }


class NinePFileSystem(AbstractFileSystem):
    """A 9P2000 tree as an fsspec file system; paths are absolute names from the attach root.

    Where: `9p://host:port/path` (port 564 when absent), or `address=` any dial string
    (`unix!/run/ninefs.sock`, `tls!host!port`) with `9p:///path`. `tls=True` dials
    tls!host!port. `auto_mkdir`: writing a file makes its missing directories (as
    LocalFileSystem's option; off by default, like it). `uname`, `aname`, `key` (a path, so that the instance pickles), `msize`,
    `timeout` (seconds per 9P request), `connect_timeout`: as for ninep.connect.
    """

    # "ninep" too: RFC 3986 schemes begin with a letter, and pandas passes to fsspec only
    # URLs whose scheme does (pandas.io.common.is_fsspec_url), so read_csv needs ninep://.
    protocol = ("9p", "ninep")
    root_marker = "/"

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        address: str | None = None,
        uname: str | None = None,
        aname: str = "",
        key: Any = None,
        tls: bool = False,
        auto_mkdir: bool = False,
        msize: int | None = None,
        timeout: float | None = TIMEOUT,
        connect_timeout: float | None = CONNECT_TIMEOUT,
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        self.address = _dial_string(host, port, address, tls)
        self.auto_mkdir = auto_mkdir
        self._options: dict[str, Any] = {
            "uname": uname,
            "aname": aname,
            "key": key,
            "timeout": timeout,
            "connect_timeout": connect_timeout,
            **({"msize": msize} if msize else {}),
        }
        self._lock = threading.Lock()
        self._client: SyncClient | None = None
        self._pid = 0

    # --- the connection ------------------------------------------------------------------------

    def _sync(self) -> SyncClient:
        """The connection, dialled at first use and again in a forked child (whose copy of
        the parent's socket and helper thread is not its own)."""
        pid = os.getpid()
        if self._pid != pid:
            self._lock = threading.Lock()  # a lock held by a parent's thread stays held here
        with self._lock:
            if self._client is None or self._pid != pid:
                try:
                    client = sync_connect(self.address, **self._options)
                except NinePError as e:  # a refused attach, a peer that is no 9P server
                    if e.filename is not None:
                        raise
                    raise type(e)(e.ename, self.address) from None
                self._client, self._pid = client, pid
                weakref.finalize(self, client.close)
            return self._client

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        sync = self._sync()
        return sync._loop.call(fn, sync.client, *args)

    def close(self) -> None:
        """End the connection now (it also ends when the instance is collected)."""
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None

    # --- URLs -------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        rest = _after_scheme(path)
        if rest is not None:
            path = rest[rest.find("/") :] if "/" in rest else "/"
        return abs_path(path)

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        rest = _after_scheme(path)
        if rest is None:
            return {}
        netloc = rest.split("/", 1)[0]
        user, _, netloc = netloc.rpartition("@")
        out: dict[str, Any] = {"uname": user} if user else {}
        if netloc:
            addr = parse_address(netloc)
            out.update(host=addr.host, port=addr.port)
        return out

    def unstrip_protocol(self, name: str) -> str:
        return name if _after_scheme(name) is not None else f"9p://{_url_host(self.address)}{abs_path(name)}"

    # --- metadata ---------------------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return _entry(path, self._run(batch.stat, path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        is_dir, stats = self._run(batch.ls, path)
        if not is_dir:
            entries = [_entry(path, stats[0])]
        else:
            entries = [_entry(posixpath.join(path, st.name), st) for st in stats]
        entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Whether `path` is there; an unreachable server is an error, not a "no"."""
        try:
            self.info(path)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def modified(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.UTC)

    def created(self, path: str) -> datetime.datetime:
        raise NotImplementedError("9P2000 keeps no creation time (stat(5) has atime and mtime only)")

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if truncate or not self.exists(path):
            self.pipe_file(path, b"")
        else:
            self._sync().wstat(path, mtime=int(time.time()))

    # --- directories --------------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if create_parents:
            self.makedirs(self._parent(path), exist_ok=True)
        self._sync().mkdir(path, kwargs.get("perm", 0o777))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if not exist_ok and self.exists(path):
            raise FileExistsError(f"{path}: file already exists")
        self._sync().mkdir(path, parents=True, exist_ok=True)

    def rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        if not self.isdir(path):
            raise NotADirectory("not a directory", path)
        self._run(batch.remove, path)

    def rm_file(self, path: str) -> None:
        self._run(batch.remove, self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """One path, recursive: a walk of the tree removing as it goes, concurrently; anything
        else (lists, globs, maxdepth) as fsspec does it. Never the root."""
        if isinstance(path, str) and recursive and maxdepth is None and not _has_magic(path):
            path = self._strip_protocol(path)
            if path == "/":
                raise PermissionError("/: refusing to remove the root of the tree")
            self._run(batch.rmtree, path)
            return
        paths = path if isinstance(path, list) else [path]
        if any(self._strip_protocol(p) == "/" for p in paths) and recursive:
            raise PermissionError("/: refusing to remove the root of the tree")
        super().rm(path, recursive=recursive, maxdepth=maxdepth)

    # --- contents -----------------------------------------------------------------------------

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        return self._run(batch.cat, self._strip_protocol(path), start, end)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        self._run(batch.pipe, self._strip_protocol(path), bytes(value), mode == "create", self.auto_mkdir)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Through this client (9P has no server-side copy), a block at a time."""
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        with self.open(path1, "rb") as src, self.open(path2, "wb") as dst:
            while block := src.read(self.blocksize):
                dst.write(block)

    def mv(
        self, path1: Any, path2: Any, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any
    ) -> None:
        """Within one directory, a 9P rename (wstat of the name): atomic, any size, keeps
        qid, mode and mtime. Across directories, copy then remove (wstat(5) can do no more)."""
        if not (isinstance(path1, str) and isinstance(path2, str)) or _has_magic(path1) or maxdepth:
            return super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if path2.endswith("/") or self.isdir(dst):
            dst = posixpath.join(dst, posixpath.basename(src))
        if src == dst:
            return None
        if posixpath.dirname(src) != posixpath.dirname(dst):
            return super().mv(src, dst, recursive=recursive or self.isdir(src))
        sync = self._sync()
        try:
            sync.rename(src, dst)
        except FileExistsError:
            if self.isdir(dst):
                raise
            sync.remove(dst)  # POSIX rename(2) replaces a file; Plan 9's wstat refuses
            sync.rename(src, dst)
        return None

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> NinePFile:
        """`kwargs`: AbstractBufferedFile's (block_size, cache_type, cache_options, ...)."""
        return NinePFile(self, self._strip_protocol(path), mode, **kwargs)


class NinePFile(AbstractBufferedFile):
    """An open 9P file: fsspec's buffering and read-ahead over one fid, opened for the whole
    life of the file (reads and writes at offsets; no walk per block)."""

    def __init__(self, fs: NinePFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> None:
        if mode not in ("rb", "wb", "ab", "xb"):
            raise NotImplementedError(f"{path}: file mode {mode!r} not supported (rb, wb, ab, xb)")
        self._fid: int | None = None
        self._conn = fs._sync()
        if mode == "rb":
            self._fid, self._qid, self._iounit, st = self._conn._loop.call(
                batch.open_read, self._conn.client, path
            )
            kwargs["size"] = st.length
        else:
            self._fid, self._qid, self._iounit, self._base, _ = self._conn._loop.call(
                batch.open_write, self._conn.client, path, mode[0], b"", fs.auto_mkdir
            )
        try:
            super().__init__(fs, path, mode, **kwargs)
        except BaseException:
            self._clunk()
            raise
        if mode == "rb":
            self.details = _entry(path, st)

    def _fetch_range(self, start: int, end: int) -> bytes:
        client = self._conn.client
        return bytes(
            self._conn._loop.call(client.pread, self._fid, start, end - start, self._iounit, self.path)
        )

    def _initiate_upload(self) -> None:
        pass  # the file was opened (and created or truncated) when this object was made

    def _upload_chunk(self, final: bool = False) -> bool:
        data = self.buffer.getvalue()
        if data:
            client = self._conn.client
            ordered = bool(self._qid.type & QTAPPEND)
            at = self._base + self.offset
            self._conn._loop.call(
                lambda: client.pwrite(self._fid, at, data, self._iounit, self.path, ordered=ordered)
            )
        return True

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            self._clunk()

    def _clunk(self) -> None:
        fid, self._fid = self._fid, None
        if fid is not None:
            try:
                self._conn._loop.call(self._conn.client._clunk, fid)
            except (OSError, RuntimeError):
                pass  # the connection is gone, and the fid with it (trio.RunFinishedError)


def _dial_string(host: str | None, port: int | None, address: str | None, tls: bool) -> str:
    if address is not None:
        if host:
            raise ValueError(f"9p: give address={address!r} or a host ({host!r}), not both")
        addr = parse_address(address)
    elif host:
        addr = parse_address(f"tcp!{host}!{port or 564}")
    else:
        raise ValueError("9p: no server: use 9p://host:port/path, or address='tcp!host!port'")
    if tls:
        if addr.network == "unix":
            raise ValueError(f"9p: tls=True needs a TCP address, not {address!r}")
        return f"tls!{addr.host}!{addr.port}"
    return str(addr)


def _url_host(address: str) -> str:
    addr = parse_address(address)
    if addr.network in ("tcp", "tls"):
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        return f"{host}:{addr.port}"
    return ""  # a unix socket is no URL: 9p:///path with address= in the options


def _after_scheme(url: str) -> str | None:
    for scheme in ("9p://", "ninep://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return None


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")
