"""The server's side of a round trip: small-file operations against `ninefs serve DIR`.

    .venv/bin/python benchmarks/bench_roundtrip.py [-n 2000] [--repeats 5]
    .venv/bin/python benchmarks/bench_roundtrip.py --spy /tmp/server.txt     # py-spy the server
    .venv/bin/python benchmarks/bench_roundtrip.py --only stat,readp
    .venv/bin/python benchmarks/bench_roundtrip.py --cprofile /tmp/server.prof
    .venv/bin/python benchmarks/bench_roundtrip.py --server-root /tmp/old   # another checkout's server

Starts `ninefs serve DIR` (a host directory: a fresh temporary one) on 127.0.0.1 at an
ephemeral port and drives it with the client library's Connection, one 9P request
at a time unless the row says "pipelined" (all of its requests in one write, as the
FUSE mount sends a walk and what follows it). Each repetition does `n` of each:

  create    Twalk (clone of the root) Tcreate Twrite (4 KiB) Tclunk        4 requests
  stat      Tstat of a walked fid                                          1
  walk      Twalk (one name from the root) Tclunk                          2
  read      Twalk Topen Tread (small file) Tclunk                          4
  read|     the same four requests pipelined in one write                  4
  remove    Twalk Tremove                                                  2

and prints, per row, the median over repetitions of: wall µs per operation and
per request, and the CPU µs per request of the server process (from
/proc/PID/schedstat, the main thread: where the tree is served) and of this
client. `--server-root` runs the server of another checkout (say `git archive HEAD`
unpacked somewhere) with this client, to compare two servers run after run on a
noisy machine; `--tmp /dev/shm` puts the export on tmpfs, where a create costs the
disk nothing (on this VM's ext4 an O_CREAT alone takes ~600 µs). A benchmark: it
prints a table and asserts nothing. The server and its
directory are always removed, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import trio

import ninep
from ninep.constants import OREAD, OWRITE
from ninep.messages import Rclunk, Ropen, Rread, Rwalk, Tclunk, Topen, Tread, Twalk

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = b"\xa5" * 4096
SMALL = b"hello, 9P\n" * 20  # the small file every read row reads back


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the server -------------------------------------------------------------------------

_CPROFILE = """
import cProfile, runpy, sys
out = sys.argv[1]
sys.argv = ["ninefs", *sys.argv[2:]]
prof = cProfile.Profile()
prof.enable()
try:
    runpy.run_module("mount.cli", run_name="__main__")
except SystemExit:
    pass
finally:
    prof.disable()
    prof.dump_stats(out)
"""


@contextlib.contextmanager
def ninefs_serve(
    directory: str, cprofile: str | None, server_root: str = ROOT, timeout: float = 20.0
) -> Iterator[tuple[str, int]]:
    """`ninefs serve DIRECTORY` on an ephemeral loopback port, run from the checkout
    `server_root` (`-m` imports from the working directory first): yield (address, pid);
    always stop it."""
    args = ["serve", directory, "--listen", "tcp!127.0.0.1!0"]
    argv = [sys.executable, "-m", "mount.cli", *args]
    if cprofile:
        argv = [sys.executable, "-c", _CPROFILE, cprofile, *args]
    proc = subprocess.Popen(
        argv,
        cwd=server_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"ninefs serve: no address after {timeout}s")
        line = proc.stdout.readline()
        prefix = "ninefs: serving on "
        if not line.startswith(prefix):
            raise RuntimeError(f"ninefs serve did not start: {line!r}")
        yield line[len(prefix) :].strip(), proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30 if cprofile else 5)  # the profile is written on the way out
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def py_spy(pid: int, out: str | None) -> Iterator[None]:
    """py-spy record the server (raw collapsed stacks, for benchmarks/spy_summary.py) while inside."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "997", "-o", out]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached before the first timed operation
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        note(f"py-spy profile of the server in {out} (benchmarks/spy_summary.py {out} --busy)")


def cpu_ns(pid: int | None) -> int:
    """Nanoseconds on CPU of `pid`'s main thread so far (0 when unknown)."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


# --- the operations -------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    requests: int  # 9P requests per operation
    wall: list[float] = field(default_factory=list)  # µs per operation, one per repetition
    server: list[float] = field(default_factory=list)  # server CPU µs per operation
    client: list[float] = field(default_factory=list)  # client CPU µs per operation


ROWS = [
    Row("create", "create+write 4K+clunk", 4),
    Row("stat", "stat", 1),
    Row("walk", "walk+clunk", 2),
    Row("read", "walk+open+read+clunk", 4),
    Row("readp", "... pipelined (one write)", 4),
    Row("remove", "walk+remove", 2),
]


class Bench:
    def __init__(self, fs: ninep.Client, n: int, pid: int | None) -> None:
        self.fs = fs
        self.conn = fs.conn
        self.root = fs.root_fid
        self.n = n
        self.pid = pid
        self.names = [f"f{i:05d}" for i in range(n)]

    async def timed(self, row: Row, one: Callable[[str], Awaitable[None]]) -> None:
        """`one(name)` for every name, one after another; the row gets this repetition's costs."""
        cpu0, s0, t0 = time.process_time(), cpu_ns(self.pid), time.perf_counter()
        for name in self.names:
            await one(name)
        t1, s1, cpu1 = time.perf_counter(), cpu_ns(self.pid), time.process_time()
        row.wall.append((t1 - t0) * 1e6 / self.n)
        row.client.append((cpu1 - cpu0) * 1e6 / self.n)
        if self.pid is not None:
            row.server.append((s1 - s0) / 1e3 / self.n)

    async def create(self, name: str) -> None:
        conn = self.conn
        fid = conn.fids.get()
        await conn.walk(self.root, fid, ())
        await conn.create(fid, name, 0o644, OWRITE)
        await conn.write(fid, 0, DATA)
        await conn.clunk(fid)
        conn.fids.put(fid)

    async def walk(self, name: str) -> None:
        conn = self.conn
        fid = conn.fids.get()
        await conn.walk(self.root, fid, (name,))
        await conn.clunk(fid)
        conn.fids.put(fid)

    async def read(self, name: str) -> None:
        conn = self.conn
        fid = conn.fids.get()
        await conn.walk(self.root, fid, ("small",))
        await conn.open(fid, OREAD)
        data = await conn.read(fid, 0, 8192)
        await conn.clunk(fid)
        conn.fids.put(fid)
        if len(data) != len(SMALL):
            raise RuntimeError(f"read {len(data)} bytes of {len(SMALL)}")

    async def read_pipelined(self, name: str) -> None:
        conn = self.conn
        fid = conn.fids.get()
        replies = await conn.pipeline(
            (Twalk(0, self.root, fid, ("small",)), Rwalk),
            (Topen(0, fid, OREAD), Ropen),
            (Tread(0, fid, 0, 8192), Rread),
            (Tclunk(0, fid), Rclunk),
        )
        conn.fids.put(fid)
        bad = [r for r in replies if isinstance(r, Exception)]
        if bad:
            raise bad[0]

    async def remove(self, name: str) -> None:
        conn = self.conn
        fid = conn.fids.get()
        await conn.walk(self.root, fid, (name,))
        await conn.remove(fid)
        conn.fids.put(fid)

    async def repetition(self, rows: dict[str, Row], only: set[str]) -> None:
        """One of each row in `only`; the files walk and remove need are made and removed."""
        stat_fid, _ = await self.fs.walk_fid("/small")

        async def stat(name: str) -> None:
            await self.conn.stat(stat_fid)

        files = bool(only & {"create", "walk", "remove"})
        steps = [
            ("create", self.create, files),
            ("stat", stat, "stat" in only),
            ("walk", self.walk, "walk" in only),
            ("read", self.read, "read" in only),
            ("readp", self.read_pipelined, "readp" in only),
            ("remove", self.remove, files),
        ]
        for key, one, wanted in steps:
            if wanted:
                await self.timed(rows[key], one)
        await self.conn.clunk(stat_fid)
        self.conn.fids.put(stat_fid)


async def run(addr: str, pid: int | None, n: int, repeats: int, rows: dict[str, Row], only: set[str]) -> None:
    async with ninep.connect(addr) as fs:
        await fs.write_bytes("/small", SMALL)
        warm = Bench(fs, min(n, 200), pid)  # untimed: imports, caches and the heap settle
        await warm.repetition({r.key: Row(r.key, r.label, r.requests) for r in ROWS}, only)
        bench = Bench(fs, n, pid)
        for i in range(repeats):
            note(f"repetition {i + 1} of {repeats} ...")
            await bench.repetition(rows, only)


def table(rows: list[Row], n: int, repeats: int) -> str:
    def med(values: list[float], per: int = 1) -> str:
        return f"{statistics.median(values) / per:,.1f}" if values else "-"

    lines = [
        f"ninefs serve DIR over loopback TCP: {n} of each, median of {repeats} repetitions",
        "",
        f"{'':27} {'reqs':>4} {'µs/op':>8} {'µs/req':>8} {'server CPU':>11} {'client CPU':>11}",
        f"{'':27} {'':>4} {'':>8} {'':>8} {'µs/req':>11} {'µs/req':>11}",
    ]
    for r in rows:
        lines.append(
            f"{r.label:27} {r.requests:>4} {med(r.wall):>8} {med(r.wall, r.requests):>8} "
            f"{med(r.server, r.requests):>11} {med(r.client, r.requests):>11}"
        )
    lines += [
        "",
        "server CPU: the server process's main thread (/proc/PID/schedstat), system calls included;",
        "client CPU: this process. The rest of a round trip is loopback TCP and the scheduler.",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="small-file 9P round trips against ninefs serve DIR")
    ap.add_argument("-n", type=int, default=2000, help="operations of each kind per repetition")
    ap.add_argument("--repeats", type=int, default=5, help="repetitions; the median is shown")
    keys = ",".join(r.key for r in ROWS)
    ap.add_argument("--only", default=keys, help=f"comma list of rows (default {keys}); readp: pipelined")
    ap.add_argument("--ninefs", metavar="ADDR", help="use this running server (serving a directory)")
    ap.add_argument("--pid", type=int, help="with --ninefs: its pid, for its CPU time")
    ap.add_argument("--spy", metavar="OUT", help="py-spy record the server into OUT (raw format)")
    ap.add_argument("--cprofile", metavar="OUT", help="run the server under cProfile, stats into OUT")
    ap.add_argument("--server-root", metavar="DIR", default=ROOT, help="run the server of this checkout")
    ap.add_argument("--tmp", metavar="DIR", help="make the exported directory in DIR (default: $TMPDIR)")
    args = ap.parse_args()

    only = {k.strip() for k in args.only.split(",") if k.strip()}
    if only - {r.key for r in ROWS}:
        ap.error(f"unknown rows: {', '.join(sorted(only - {r.key for r in ROWS}))}")
    rows = [Row(r.key, r.label, r.requests) for r in ROWS if r.key in only]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.ninefs:
            addr, pid = args.ninefs, args.pid
        else:
            directory = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="bench_roundtrip.", dir=args.tmp)
            )
            server_root = os.path.abspath(args.server_root)
            addr, pid = stack.enter_context(ninefs_serve(directory, args.cprofile, server_root))
            note(f"ninefs serve {directory} (from {server_root}): pid {pid} on {addr}")
        if pid is not None:
            stack.enter_context(py_spy(pid, args.spy))
        try:
            every = {r.key: Row(r.key, r.label, r.requests) for r in ROWS} | {r.key: r for r in rows}
            trio.run(run, addr, pid, args.n, args.repeats, every, only)
        except KeyboardInterrupt:
            note("interrupted")
            return 130
    print(table(rows, args.n, args.repeats))
    print(
        f"\n({time.perf_counter() - started:.0f} s; {platform.python_implementation()} "
        f"{platform.python_version()}, trio {trio.__version__}, {os.cpu_count()} CPUs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
