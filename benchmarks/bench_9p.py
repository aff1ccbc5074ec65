"""ninefs vs bare trio: stat round trips and big sequential reads and writes over loopback TCP.

    .venv/bin/python benchmarks/bench_9p.py [--quick] [--json PATH]

Starts two subprocesses on 127.0.0.1 -- `ninefs serve` (a RAM tree) and
benchmarks/trio_echo.py (plain trio streams, 4-byte-length framing, a
request/response loop) -- and drives both from this process:

  stat RTT/s     one Tstat at a time on an already walked fid (conn.stat)
                 vs. an 11-byte request answered by an Rstat-sized reply
  write MB/s     fs.open(path, "wb").write(big chunk): iounit-sized Twrites,
                 ninep.files.WINDOW in flight  vs. iounit-sized messages
                 answered by an 11-byte ack, WINDOW in flight
  read MB/s      fs.open(path, "rb").read(big chunk)  vs. 23-byte requests
                 answered by iounit-sized replies, WINDOW in flight

at msize 1 MiB and 64 KiB. Every number is the best of a few runs (the machine
is shared and noisy). MB is 10**6 bytes of payload. The subprocesses are always
stopped, also on errors and Ctrl-C.

For profiling: `--ninefs tcp!127.0.0.1!PORT` uses a server you started (e.g.
under py-spy) instead of spawning one, `--only stat,io1m,io64k` picks
measurements, `--no-baseline` skips the trio side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import trio

import ninep
from ninep import codec
from ninep.constants import IOHDRSZ
from ninep.files import WINDOW
from ninep.messages import Rstat

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1 << 20
SIZES = {"io1m": 1 * MIB, "io64k": 64 * 1024}
WARMUP = 32 * MIB  # an untimed transfer before the timed ones
TARGET = 60.0  # percent of bare trio

_SIZE = struct.Struct("<I")
_REQ = struct.Struct("<IBHI")  # size type tag want: the baseline's request header


@dataclass
class Settings:
    file_size: int
    chunk: int
    repeats: int
    stat_seconds: float
    only: set[str]
    baseline: bool


@dataclass
class Results:
    ninefs: dict[str, float] = field(default_factory=dict)
    sink: dict[str, float] = field(default_factory=dict)
    trio: dict[str, float] = field(default_factory=dict)
    runs: dict[str, list[float]] = field(default_factory=dict)  # every run, not just the best

    def add(self, side: str, key: str, value: float) -> None:
        self.runs.setdefault(f"{side}:{key}", []).append(value)
        table = {"ninefs": self.ninefs, "sink": self.sink, "trio": self.trio}[side]
        table[key] = max(table.get(key, 0.0), value)


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- subprocesses -------------------------------------------------------------------


@contextlib.contextmanager
def subprocess_server(argv: list[str], prefix: str, timeout: float = 20.0) -> Iterator[tuple[str, int]]:
    """Run `argv`, wait for its "PREFIX ADDRESS" line; yield (address, pid); always stop it."""
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"{argv[1:3]}: no address after {timeout}s")
        line = proc.stdout.readline()
        sel.close()
        if not line.startswith(prefix):
            raise RuntimeError(f"{' '.join(argv)}: did not start: {line!r}")
        yield line[len(prefix) :].strip(), proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def ninefs_server(msize: int) -> contextlib.AbstractContextManager[tuple[str, int]]:
    argv = [sys.executable, "-m", "mount.cli", "serve", "--listen", "tcp!127.0.0.1!0", "--msize", str(msize)]
    return subprocess_server(argv, "ninefs: serving on ")


def sink_server(msize: int) -> contextlib.AbstractContextManager[tuple[str, int]]:
    argv = [sys.executable, os.path.join(HERE, "sink_server.py"), "--msize", str(msize)]
    return subprocess_server(argv, "ninefs: serving on ")


def trio_server() -> contextlib.AbstractContextManager[tuple[str, int]]:
    return subprocess_server([sys.executable, os.path.join(HERE, "trio_echo.py")], "trio_echo: serving on ")


# --- ninefs side ----------------------------------------------------------------------
#
# Each side opens its connection once per shape and hands back "passes": async
# callables that do one timed run and return its rate. The runner alternates the
# two sides run by run, so both see the same background noise.

Pass = Callable[[], Awaitable[float]]


async def timed_loop(one: Callable[[], Awaitable[object]], seconds: float) -> float:
    """Calls of `one` per second, one at a time, for about `seconds`."""
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(100):
            await one()
        n += 100
        t = time.perf_counter()
        if t >= deadline:
            return n / (t - t0)


@contextlib.asynccontextmanager
async def ninefs_stat(addr: str, s: Settings) -> AsyncIterator[tuple[Pass, int]]:
    """Tstat round trips per second on one walked fid; also gives the Rstat frame size."""
    async with ninep.connect(addr, msize=MIB) as fs:
        await fs.write_bytes("/stat.dat", b"x" * 100)
        fid, _ = await fs.walk_fid("/stat.dat")
        rstat_size = len(codec.encode(Rstat(0, await fs.conn.stat(fid))))
        for _ in range(200):  # warm up
            await fs.conn.stat(fid)
        yield (lambda: timed_loop(lambda: fs.conn.stat(fid), s.stat_seconds)), rstat_size
        await fs.conn.clunk(fid)
        fs.conn.fids.put(fid)
        await fs.remove("/stat.dat")


@contextlib.asynccontextmanager
async def ninefs_io(addr: str, key: str, msize: int, s: Settings) -> AsyncIterator[tuple[Pass, Pass]]:
    """fs.open(path, "wb").write / fs.open(path, "rb").read of the whole file, in big chunks."""
    chunk = b"\xa5" * s.chunk
    path = f"/{key}.dat"
    async with ninep.connect(addr, msize=msize) as fs:
        if fs.conn.msize != msize:
            raise RuntimeError(f"asked for msize {msize}, server gave {fs.conn.msize}")

        async def write(size: int = s.file_size) -> float:
            t0 = time.perf_counter()
            async with fs.open(path, "wb") as f:
                assert f.iounit == msize - IOHDRSZ, f.iounit
                done = 0
                while done < size:
                    done += await f.write(chunk if size - done >= s.chunk else chunk[: size - done])
            return size / (time.perf_counter() - t0) / 1e6

        async def read(size: int = s.file_size) -> float:
            t0 = time.perf_counter()
            got = 0
            async with fs.open(path, "rb") as f:
                while True:
                    data = await f.read(s.chunk)
                    if not data:
                        break
                    got += len(data)
            t = time.perf_counter() - t0
            if got != size:
                raise RuntimeError(f"read {got} bytes back, wrote {size}")
            return size / t / 1e6

        warm = min(s.file_size, WARMUP)  # untimed: socket buffers grow, the server's heap settles
        await write(warm)
        await read(warm)
        yield write, read
        await fs.remove(path)


# --- bare trio side ---------------------------------------------------------------------


class Frames:
    """The minimal frame reader a plain trio program would write."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def next(self) -> bytes:
        buf = self.buf
        while len(buf) < 4:
            buf += await self._more(65536)
        size = _SIZE.unpack_from(buf)[0]
        while len(buf) < size:
            buf += await self._more(max(size - len(buf), 65536))
        frame = bytes(buf[:size])
        del buf[:size]
        return frame

    async def _more(self, n: int) -> bytes:
        chunk = await self.stream.receive_some(n)
        if not chunk:
            raise RuntimeError("baseline server hung up")
        return chunk


def request(size: int, want: int, mtype: int = 0) -> bytes:
    return _REQ.pack(size, mtype, 0, want) + b"\x00" * (size - _REQ.size)


@contextlib.asynccontextmanager
async def trio_connection(addr: str) -> AsyncIterator[tuple[trio.SocketStream, Frames]]:
    host, port = addr.split()
    stream = await trio.open_tcp_stream(host, int(port))
    stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
    async with stream:
        yield stream, Frames(stream)


@contextlib.asynccontextmanager
async def trio_rtt(addr: str, rstat_size: int, s: Settings) -> AsyncIterator[Pass]:
    """An 11-byte request (a Tstat's size) answered by an Rstat-sized reply, one at a time."""
    req = request(11, rstat_size)
    async with trio_connection(addr) as (stream, frames):

        async def one() -> None:
            await stream.send_all(req)
            await frames.next()

        for _ in range(200):
            await one()
        yield lambda: timed_loop(one, s.stat_seconds)


async def trio_window(stream: trio.SocketStream, frames: Frames, req: bytes, count: int) -> None:
    """`count` request/reply pairs, at most WINDOW requests unanswered at once."""
    window = trio.Semaphore(WINDOW)

    async def sender() -> None:
        for _ in range(count):
            await window.acquire()
            await stream.send_all(req)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        for _ in range(count):
            await frames.next()
            window.release()


@contextlib.asynccontextmanager
async def trio_io(addr: str, msize: int, s: Settings) -> AsyncIterator[tuple[Pass, Pass]]:
    """ "write": iounit-sized messages, 11-byte acks; "read": 23-byte requests, iounit-sized replies."""
    iounit = msize - IOHDRSZ
    count = -(-s.file_size // iounit)
    write_req = request(23 + iounit, 11)  # Twrite with iounit bytes -> Rwrite
    read_req = request(23, 11 + iounit)  # Tread -> Rread with iounit bytes
    async with trio_connection(addr) as (stream, frames):

        async def run(req: bytes, n: int = count) -> float:
            t0 = time.perf_counter()
            await trio_window(stream, frames, req, n)
            return n * iounit / (time.perf_counter() - t0) / 1e6

        warm = -(-min(s.file_size, WARMUP) // iounit)
        await run(write_req, warm)
        await run(read_req, warm)
        yield (lambda: run(write_req)), (lambda: run(read_req))


# --- the run ------------------------------------------------------------------------------


async def alternate(s: Settings, res: Results, passes: dict[str, list[tuple[str, Pass]]]) -> None:
    """Run every pass `repeats` times, the sides taking turns; keep every rate."""
    for _ in range(s.repeats):
        for key, sides in passes.items():
            for side, one in sides:
                res.add(side, key, await one())


async def run_all(
    ninefs_addr: str, sink_addr: str | None, trio_addr: str | None, s: Settings, res: Results
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if "stat" in s.only:
            note("stat round trips ...")
            ours, rstat_size = await stack.enter_async_context(ninefs_stat(ninefs_addr, s))
            sides = [("ninefs", ours)]
            if trio_addr is not None:
                sides.append(("trio", await stack.enter_async_context(trio_rtt(trio_addr, rstat_size, s))))
            await alternate(s, res, {"stat": sides})
    for key, msize in SIZES.items():
        if key not in s.only:
            continue
        note(f"sequential write and read @ {msize // 1024} KiB ...")
        async with contextlib.AsyncExitStack() as stack:
            write, read = await stack.enter_async_context(ninefs_io(ninefs_addr, key, msize, s))
            passes = {f"write_{key}": [("ninefs", write)], f"read_{key}": [("ninefs", read)]}
            if sink_addr is not None:
                swrite, sread = await stack.enter_async_context(ninefs_io(sink_addr, key, msize, s))
                passes[f"write_{key}"].append(("sink", swrite))
                passes[f"read_{key}"].append(("sink", sread))
            if trio_addr is not None:
                twrite, tread = await stack.enter_async_context(trio_io(trio_addr, msize, s))
                passes[f"write_{key}"].append(("trio", twrite))
                passes[f"read_{key}"].append(("trio", tread))
            await alternate(s, res, passes)


ROWS = [
    ("stat", "stat RTT/s", "{:,.0f}"),
    ("write_io1m", "write MB/s @1MiB", "{:,.1f}"),
    ("read_io1m", "read MB/s @1MiB", "{:,.1f}"),
    ("write_io64k", "write MB/s @64KiB", "{:,.1f}"),
    ("read_io64k", "read MB/s @64KiB", "{:,.1f}"),
]


def table(res: Results, s: Settings) -> str:
    """One row per measurement; 9P's own cost is the RAM tree's for stat and the sink's for data."""

    def cell(v: float | None, fmt: str) -> str:
        return fmt.format(v) if v else "-"

    def pct(a: float | None, b: float | None) -> str:
        return f"{100 * a / b:.0f}%" if a and b else "-"

    lines = [
        f"ninefs vs bare trio over loopback TCP (best of {s.repeats}; file {s.file_size // MIB} MiB, "
        f"chunk {s.chunk // MIB} MiB, window {WINDOW}); target >= {TARGET:.0f}% of bare trio",
        "",
        f"{'':20} {'RAM tree':>10} {'sink':>10} {'bare trio':>10} {'RAM/trio':>9} {'sink/trio':>9}",
    ]
    for key, label, fmt in ROWS:
        ram, sink, bare = res.ninefs.get(key), res.sink.get(key), res.trio.get(key)
        if not (ram or sink or bare):
            continue
        ours = ram if key == "stat" else sink  # the like-for-like figure: no data kept, as trio_echo
        flag = "" if not (ours and bare) else ("  ok" if 100 * ours / bare >= TARGET else "  below target")
        lines.append(
            f"{label:20} {cell(ram, fmt):>10} {cell(sink, fmt):>10} {cell(bare, fmt):>10} "
            f"{pct(ram, bare):>9} {pct(sink, bare):>9}{flag}"
        )
    lines += [
        "",
        "RAM tree: `ninefs serve` (data stored in memory). sink: the same server, codec and dispatch",
        "(benchmarks/sink_server.py) with files that keep only a length, as bare trio keeps nothing;",
        "the verdict is on sink/trio for data rows (what 9P itself costs) and RAM/trio for stat.",
    ]
    return "\n".join(lines)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip()
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description="ninefs vs bare trio: stat RTT and sequential MB/s")
    ap.add_argument("--quick", action="store_true", help="small file, fewer repeats (~30 s)")
    ap.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    ap.add_argument("--size-mib", type=int, help="file size in MiB (default 256, 64 with --quick)")
    ap.add_argument("--repeats", type=int, help="runs per measurement, best kept (default 5, 3 with --quick)")
    ap.add_argument("--ninefs", metavar="ADDR", help="use this running ninefs server instead of starting one")
    ap.add_argument("--only", default="stat,io1m,io64k", help="comma list of: stat, io1m, io64k")
    ap.add_argument("--no-baseline", action="store_true", help="measure ninefs only")
    ap.add_argument("--no-sink", action="store_true", help="skip the sink server (RAM tree only)")
    args = ap.parse_args()

    s = Settings(
        file_size=(args.size_mib or (64 if args.quick else 256)) * MIB,
        chunk=8 * MIB,
        repeats=args.repeats or (3 if args.quick else 5),
        stat_seconds=0.5 if args.quick else 1.0,
        only={x.strip() for x in args.only.split(",") if x.strip()},
        baseline=not args.no_baseline,
    )
    bad = s.only - {"stat", *SIZES}
    if bad:
        ap.error(f"unknown measurement(s): {', '.join(sorted(bad))}")

    res = Results()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.ninefs:
            ninefs_addr = args.ninefs
        else:
            ninefs_addr, pid = stack.enter_context(ninefs_server(max(SIZES.values())))
            note(f"ninefs server pid {pid} on {ninefs_addr}")
        sink_addr = None
        if not args.no_sink and s.only - {"stat"}:
            sink_addr, pid = stack.enter_context(sink_server(max(SIZES.values())))
            note(f"ninefs sink server pid {pid} on {sink_addr}")
        trio_addr = None
        if s.baseline:
            trio_addr, pid = stack.enter_context(trio_server())
            note(f"trio baseline server pid {pid} on {trio_addr.replace(' ', ':')}")
        try:
            trio.run(run_all, ninefs_addr, sink_addr, trio_addr, s, res)
        except KeyboardInterrupt:
            note("interrupted")
            return 130
    elapsed = time.perf_counter() - started

    print(table(res, s))
    print(
        f"\n({elapsed:.0f} s; {platform.python_implementation()} {platform.python_version()}, "
        f"trio {trio.__version__}, {os.cpu_count()} CPUs)"
    )
    if args.json:
        out = {
            "settings": {
                "file_size": s.file_size,
                "chunk": s.chunk,
                "repeats": s.repeats,
                "stat_seconds": s.stat_seconds,
                "window": WINDOW,
                "msizes": SIZES,
            },
            "best": {"ninefs": res.ninefs, "sink": res.sink, "trio": res.trio},
            "ratio_percent": {k: 100 * res.ninefs[k] / res.trio[k] for k in res.ninefs if res.trio.get(k)},
            "sink_ratio_percent": {k: 100 * res.sink[k] / res.trio[k] for k in res.sink if res.trio.get(k)},
            "target_percent": TARGET,
            "runs": res.runs,
            "elapsed_s": elapsed,
            "commit": git_commit(),
            "python": platform.python_version(),
            "trio": trio.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        note(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
