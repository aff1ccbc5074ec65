"""How fast can Python answer FUSE lookups without libfuse? A measurement for planning #10.

    .venv/bin/python benchmarks/rawfuse.py [--files 2000] [--rounds 5]

The cold-stat row of bench_mount (os.stat of N files after drop_caches: one FUSE
LOOKUP each) could not beat sshfs through pyfuse3: its bare passthrough, which did
nothing but an lstat per request, was already 3-4x slower than sshfs's C daemon.
This script asks whether the cost is the FUSE loop's (pyfuse3's, or ninefs' own
session that replaced it), trio's, or Python's. It mounts the same directory up to
four ways and stats every file after drop_caches, best of --rounds. Each answers
LOOKUP from attributes it cached when it first saw the file (as ninefs's cache and
sshfs's do), so no row pays for the disk:

  pyfuse3    pyfuse3.main (per request a trio.Lock, a wait_readable on the FUSE fd,
             fuse_session_receive_buf, the handler coroutine, a reply); only when
             pyfuse3 is installed (ninefs no longer needs it: pip install pyfuse3,
             which builds against libfuse3-dev), else skipped with a note
  session    ninefs' FuseSession (mount/fusesession.py), mounted as ninefs mounts
             (mount/fusedev.py): a pool of trio workers, each parsing a request into
             a value, calling the file system's coroutine and encoding the reply
  raw trio   a loop of our own: /dev/fuse opened non-blocking and mounted with
             mount(2), each request read with os.readv into one buffer and answered
             with os.write; trio.lowlevel.wait_readable only when a read would block
  raw block  the same loop with blocking reads and no trio at all: the least any
             Python FUSE loop can cost (no other task could run beside it)

The raw loops answer INIT, LOOKUP, GETATTR, FORGET, BATCH_FORGET, STATFS and
DESTROY, and ENOSYS to anything else: what the stat pass needs; the pyfuse3 and
session rows' file systems have lookup, getattr (and forget, statfs) only. They
are ceilings, not file systems. All use 1 s entry/attribute timeouts,
default_permissions and allow_other. Needs root and /dev/fuse; every mount is
undone on the way out.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import importlib.util
import os
import stat as st_mod
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trio

# include/uapi/linux/fuse.h
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct(
    "<QQQQQQIIIIIIIIII"
)  # ino size blocks a/m/ctime a/m/ctimensec mode nlink uid gid rdev blksize flags
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid entry_nsec attr_nsec (+ attr)
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy (+ attr)
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
KSTATFS = struct.Struct("<QQQQQIIII6I")
LOOKUP, FORGET, GETATTR, STATFS, INIT, DESTROY, BATCH_FORGET = 1, 2, 3, 17, 26, 38, 42
ROOT = 1
TIMEOUT = 1  # s, entry and attribute


class RawFS:
    """Inode numbers are the source's own (root: 1), as in passthrough.py."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.root_ino = os.lstat(source).st_ino
        self.paths: dict[int, str] = {ROOT: source}
        self.cache: dict[str, os.stat_result] = {}

    def attr(self, s: os.stat_result, ino: int) -> bytes:
        return ATTR.pack(
            ino, s.st_size, s.st_blocks, int(s.st_atime), int(s.st_mtime), int(s.st_ctime),
            s.st_atime_ns % 10**9, s.st_mtime_ns % 10**9, s.st_ctime_ns % 10**9,
            s.st_mode, s.st_nlink, s.st_uid, s.st_gid, s.st_rdev, 4096, 0,
        )  # fmt: skip

    def answer(self, op: int, nodeid: int, body: memoryview) -> tuple[int, bytes] | None:
        """(errno, reply body) for a request; None for the ones without a reply."""
        if op == LOOKUP:
            parent = self.paths.get(nodeid)
            if parent is None:
                return errno.ESTALE, b""
            name = bytes(body[: len(body) - 1]).decode("utf-8", "surrogateescape")
            path = os.path.join(parent, name)
            s = self.cache.get(path)
            if s is None:
                try:
                    s = self.cache[path] = os.lstat(path)
                except OSError as e:
                    return e.errno or errno.EIO, b""
            ino = ROOT if s.st_ino == self.root_ino else s.st_ino
            self.paths[ino] = path
            return 0, ENTRY_OUT.pack(ino, 0, TIMEOUT, TIMEOUT, 0, 0) + self.attr(s, ino)
        if op == GETATTR:
            path = self.paths.get(nodeid)
            if path is None:
                return errno.ESTALE, b""
            return 0, ATTR_OUT.pack(TIMEOUT, 0, 0) + self.attr(os.lstat(path), nodeid)
        if op in (FORGET, BATCH_FORGET):
            return None  # the kernel wants no answer; the path map is kept (a ceiling)
        if op == STATFS:
            v = os.statvfs(self.source)
            return 0, KSTATFS.pack(
                v.f_blocks,
                v.f_bfree,
                v.f_bavail,
                v.f_files,
                v.f_ffree,
                v.f_bsize,
                255,
                v.f_frsize,
                0,
                *[0] * 6,
            )
        if op == INIT:
            _major, minor, readahead, _flags = INIT_IN.unpack_from(body)
            return 0, INIT_OUT.pack(
                7, min(minor, 31), readahead, 0, 16, 12, 128 * 1024, 1, 32, 0, 0, *[0] * 7
            )
        if op == DESTROY:
            return 0, b""
        return errno.ENOSYS, b""


async def serve(fd: int, fs: RawFS) -> None:
    """The loop; with a blocking `fd`, readv never raises BlockingIOError and trio never waits."""
    buf = bytearray(128 * 1024 + 4096)
    view = memoryview(buf)
    while True:
        try:
            n = os.readv(fd, [buf])
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):
                continue  # the request was interrupted before we read it
            if e.errno == errno.ENODEV:
                return  # unmounted
            raise
        if n == 0:
            return
        length, op, unique, nodeid, *_ = IN_HEADER.unpack_from(buf)
        res = fs.answer(op, nodeid, view[IN_HEADER.size : length])
        if res is None:
            continue
        err, body = res
        try:
            os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), -err, unique) + body)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                raise
        if op == DESTROY:
            return


def _mount(fd: int, mountpoint: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other".encode()
    if libc.mount(b"rawfuse", mountpoint.encode(), b"fuse.rawfuse", 0, opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {mountpoint}: {os.strerror(e)}")


@contextmanager
def mounted(how: str, source: str, mountpoint: str) -> Iterator[None]:
    """Serve `source` on `mountpoint` from a child process (`how`: pyfuse3, session, trio, block)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", how, source, mountpoint], stdout=subprocess.PIPE
    )
    try:
        _await_ready(proc)
        yield
    finally:
        _unmount(mountpoint, proc)


def _await_ready(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"server exited with {proc.wait()}")


def _unmount(mountpoint: str, proc: subprocess.Popen) -> None:
    subprocess.run(["umount", mountpoint], stderr=subprocess.DEVNULL, check=False)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        subprocess.run(["umount", "-l", mountpoint], stderr=subprocess.DEVNULL, check=False)


def _serve_main(how: str, source: str, mountpoint: str) -> None:
    if how == "pyfuse3":
        _serve_pyfuse3(source, mountpoint)
        return
    if how == "session":
        trio.run(_serve_session, source, mountpoint)
        return
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | (os.O_NONBLOCK if how == "trio" else 0))
    _mount(fd, mountpoint)
    print("ready", flush=True)
    trio.run(serve, fd, RawFS(source))


def _serve_pyfuse3(source: str, mountpoint: str) -> None:
    import pyfuse3

    raw = RawFS(source)

    class Cached(pyfuse3.Operations):
        """LOOKUP and GETATTR from RawFS's cache, through pyfuse3."""

        def _entry(self, ino: int, s: os.stat_result) -> pyfuse3.EntryAttributes:
            e = pyfuse3.EntryAttributes()
            for f in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks"):
                setattr(e, f, getattr(s, f))
            e.st_ino, e.st_blksize = ino, 4096
            e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns
            e.entry_timeout = e.attr_timeout = TIMEOUT
            return e

        async def lookup(self, parent: int, name: bytes, ctx: object = None) -> pyfuse3.EntryAttributes:
            err, _ = raw.answer(LOOKUP, parent, memoryview(name + b"\0")) or (0, b"")
            if err:
                raise pyfuse3.FUSEError(err)
            path = os.path.join(raw.paths[parent], os.fsdecode(name))
            s = raw.cache[path]
            return self._entry(ROOT if s.st_ino == raw.root_ino else s.st_ino, s)

        async def getattr(self, ino: int, ctx: object = None) -> pyfuse3.EntryAttributes:
            return self._entry(ino, os.lstat(raw.paths[ino]))

    options = set(pyfuse3.default_options) | {"fsname=rawfuse", "allow_other"}
    pyfuse3.init(Cached(), mountpoint, options)
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


async def _serve_session(source: str, mountpoint: str) -> None:
    """LOOKUP and GETATTR from RawFS's cache, through ninefs' FuseSession, mounted as
    mount/mounter.py's mount_tree mounts (fuse_mount: mount(2) as root)."""
    from mount.fuseabi import Attr, FuseError, StatvfsData
    from mount.fusedev import MountSpec, fuse_mount, fuse_unmount
    from mount.fusesession import FuseSession

    raw = RawFS(source)

    def entry(ino: int, s: os.stat_result) -> Attr:
        return Attr(
            st_ino=ino,
            entry_timeout=TIMEOUT,
            attr_timeout=TIMEOUT,
            st_mode=s.st_mode,
            st_nlink=s.st_nlink,
            st_uid=s.st_uid,
            st_gid=s.st_gid,
            st_size=s.st_size,
            st_blocks=s.st_blocks,
            st_atime_ns=s.st_atime_ns,
            st_mtime_ns=s.st_mtime_ns,
            st_ctime_ns=s.st_ctime_ns,
        )

    class Cached:
        async def lookup(self, parent: int, name: bytes, ctx: object = None) -> Attr:
            err, _ = raw.answer(LOOKUP, parent, memoryview(name + b"\0")) or (0, b"")
            if err:
                raise FuseError(err)
            s = raw.cache[os.path.join(raw.paths[parent], os.fsdecode(name))]
            return entry(ROOT if s.st_ino == raw.root_ino else s.st_ino, s)

        async def getattr(self, ino: int, ctx: object = None, fh: int | None = None) -> Attr:
            return entry(ino, os.lstat(raw.paths[ino]))

        async def forget(self, inode_list: list[tuple[int, int]]) -> None:
            return None  # the path map is kept, as the raw loops keep it (a ceiling)

        async def statfs(self, ctx: object) -> StatvfsData:
            v = os.statvfs(source)
            return StatvfsData(v.f_bsize, v.f_frsize, v.f_blocks, v.f_bfree, v.f_bavail, v.f_files, v.f_ffree)

    spec = MountSpec(
        mountpoint, fsname="rawfuse", subtype="rawfuse", allow_other=True, default_permissions=True
    )
    fd = await fuse_mount(spec)
    try:
        await FuseSession(fd, Cached()).run(lambda: print("ready", flush=True))
    finally:
        fuse_unmount(mountpoint, fd)
        os.close(fd)


def cold_stat(paths: list[str], rounds: int) -> tuple[float, float]:
    """Best stats/s over `rounds` passes after drop_caches, and that pass's median µs."""
    best, best_p50 = 0.0, 0.0
    for _ in range(rounds):
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        lat = []
        t0 = time.perf_counter()
        for p in paths:
            t = time.perf_counter()
            os.stat(p)
            lat.append(time.perf_counter() - t)
        rate = len(paths) / (time.perf_counter() - t0)
        if rate > best:
            best, best_p50 = rate, sorted(lat)[len(lat) // 2] * 1e6
    return best, best_p50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--serve", nargs=3, metavar=("HOW", "SOURCE", "MOUNTPOINT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve_main(*args.serve)
        return 0
    if os.getuid() != 0:
        print("rawfuse.py: needs root (mount(2), drop_caches)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="rawfuse-") as tmp:
        source, mp = os.path.join(tmp, "src"), os.path.join(tmp, "mnt")
        os.mkdir(source)
        os.mkdir(mp)
        names = [f"f{i:05d}" for i in range(args.files)]
        for n in names:
            with open(os.path.join(source, n), "wb") as f:
                f.write(b"x" * 4096)
        paths = [os.path.join(mp, n) for n in names]
        hows = [
            ("pyfuse3", "pyfuse3.main"),
            ("session", "FuseSession (ninefs)"),
            ("trio", "raw loop, trio"),
            ("block", "raw loop, blocking"),
        ]
        notes = []
        if importlib.util.find_spec("pyfuse3") is None:
            hows = hows[1:]
            notes.append("pyfuse3 is not installed: its row is skipped (pip install pyfuse3 to add it)")
        rates: dict[str, float] = {}
        rows = []
        for how, name in hows:
            with mounted(how, source, mp):
                if not st_mod.S_ISREG(os.stat(paths[0]).st_mode):
                    raise RuntimeError(f"{name}: {paths[0]} is not a file")
                rate, p50 = cold_stat(paths, args.rounds)
            rates[how] = rate
            rows.append((name, rate, p50))
        print(f"cold stat of {args.files} files (drop_caches before each pass; best of {args.rounds})\n")
        print(f"{'':22} {'stats/s':>9} {'p50 µs':>8}")
        for name, rate, p50 in rows:
            print(f"{name:22} {rate:9,.0f} {p50:8.1f}")
        print()
        print(
            "   ".join(
                f"{name} / FuseSession: {rates[h] / rates['session']:.2f}x"
                for h, name in hows
                if h != "session"
            )
        )
        for note in notes:
            print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
