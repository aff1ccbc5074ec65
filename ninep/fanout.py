"""Fan-out: one command on many machines at once, each result kept by host (pdsh, clush).

What `ninefs cpu -w HOSTS -- CMD` runs, and the library call `run_all`. One process
and one trio nursery for every host: no process per host (pdsh forks an ssh for each),
and on each machine the server starts the command itself (cmd(3)'s `exec`, no
wrapper process), so a host costs a few 9P round trips and a fork on its side.

Per host, in order: connect (dial, Tversion, auth, attach) and start the command
within `connect_timeout`; then stdin is sent (the same bytes to every host) and
stdout, stderr and the exit status are read until the command exits or `timeout`
passes. A connection that falls silent while a command runs (a cut link sends no
RST, and TCP keepalive would take a minute) is noticed by a heartbeat: a Tstat on
the ctl file whenever HEARTBEAT seconds pass, which must be answered within
`connect_timeout`. A host never stops the others: whatever happens to it becomes its
result (`error`), and the command on a host given up is killed by the server when
its fids are clunked (cmd(3)), or when the connection ends.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from .command import exit_status, start_command
from .errors import NinePError, ProtocolError
from .files import connect
from .hostlist import Machine, expand, label, read_machines
from .remote import reason

__all__ = ["UNREACHABLE", "HostResult", "Machine", "resolve_hosts", "run_all"]

FANOUT = 64  # hosts served at once (pdsh's default fan-out is 32, clush's 64)
CONNECT_TIMEOUT = 10.0
HEARTBEAT = 5.0  # seconds of silence from a running command's host before we ask it
UNREACHABLE = 255  # the exit status of a fan-out that could not run everywhere (ssh's)
DEFAULT_PORT = 564

# Called with (host, "stdout" or "stderr", bytes) as output arrives, in arrival order.
OutputSink = Callable[[str, str, bytes], None]


@dataclass(frozen=True, slots=True)
class HostResult:
    """What one host did: `status` is its exit status (128+N for signal N), None when it
    never ran to the end; `error` then says why ("unreachable (connection refused)")."""

    host: str
    address: str
    status: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    seconds: float = 0.0
    error: str | None = None
    started: float = field(default=0.0, compare=False)  # time.time() at the start

    @property
    def code(self) -> int:
        """This host's share of the fan-out's exit status."""
        return UNREACHABLE if self.status is None else self.status

    @property
    def outcome(self) -> str:
        """One word or phrase for a closing line: "exit 1", "unreachable (…)"."""
        return self.error if self.error is not None else f"exit {self.status}"


def machine_for(word: str) -> Machine:
    """A host word as a machine: a dial string keeps its address, a bare name dials 9P's port."""
    if any(c in word for c in "!:/"):
        return Machine(label(word), word)
    return Machine(word, f"tcp!{word}!{DEFAULT_PORT}")


def resolve_hosts(specs: Iterable[str | Machine]) -> list[Machine]:
    """-w arguments as machines, in order, each once: `node[1-4]`, `tcp!10.0.0.[1-9]!564`,
    comma lists, `^FILE` (a machines file), or Machine values. ValueError names a bad one."""
    out: dict[str, Machine] = {}
    for spec in specs:
        if isinstance(spec, Machine):
            found = [spec]
        elif spec.startswith("^"):
            found = read_machines(spec[1:])
        else:
            found = [machine_for(w) for w in expand(spec)]
        for m in found:
            out.setdefault(m.name, m)
    return list(out.values())


async def run_all(
    hosts: Iterable[str | Machine],
    argv: Sequence[str],
    *,
    fanout: int = FANOUT,
    connect_timeout: float = CONNECT_TIMEOUT,
    timeout: float | None = None,
    stdin: bytes = b"",
    key: object = None,
    uname: str | None = None,
    collect: bool = True,
    on_output: OutputSink | None = None,
    on_done: Callable[[HostResult], None] | None = None,
) -> list[HostResult]:
    """Run `argv` on every host at once (at most `fanout` at a time); one result per host,
    in the order given. Output is kept in the results (`collect`) and/or handed to
    `on_output` as it comes; `on_done` sees each result as its host finishes."""
    machines = resolve_hosts(hosts)
    if not argv:
        raise ValueError("no command to run")
    results: dict[str, HostResult] = {}
    limit = trio.CapacityLimiter(max(1, fanout))

    async def one(m: Machine) -> None:
        async with limit:
            r = await _run_on(m, list(argv), connect_timeout, timeout, stdin, key, uname, collect, on_output)
        results[m.name] = r
        if on_done is not None:
            on_done(r)

    async with trio.open_nursery() as nursery:
        for m in machines:
            nursery.start_soon(one, m)
    return [results[m.name] for m in machines]


class _Lost(Exception):
    """The host stopped answering while its command ran."""


async def _run_on(
    m: Machine,
    argv: list[str],
    connect_timeout: float,
    timeout: float | None,
    stdin: bytes,
    key: object,
    uname: str | None,
    collect: bool,
    on_output: OutputSink | None,
) -> HostResult:
    began, wall = trio.current_time(), time.time()
    out = {"stdout": bytearray(), "stderr": bytearray()}
    status: int | None = None
    error: str | None = None
    started = False
    silent: list[str] = []  # why the heartbeat gave the connection up, if it did
    deadline = math.inf if timeout is None else began + timeout
    try:
        with trio.fail_at(deadline):
            try:
                async with connect(
                    m.address, uname=uname, key=key, connect_timeout=connect_timeout, reconnect=False
                ) as fs:
                    with trio.fail_after(connect_timeout):
                        cmd = await start_command(fs, m.address)
                        await cmd.exec(argv)
                    started = True
                    conn = fs.conn

                    async def pump(fid: int, name: str) -> None:
                        while chunk := await conn.read(fid, 0, conn.iounit):
                            if collect:
                                out[name] += chunk
                            if on_output is not None:
                                on_output(m.name, name, chunk)

                    async def feed() -> None:
                        with contextlib.suppress(NinePError):  # the command stopped reading
                            if stdin:
                                await cmd.send_input(stdin)
                            await cmd.close_input()

                    async def heartbeat() -> None:
                        while True:
                            await trio.sleep(HEARTBEAT)
                            answered = trio.Event()

                            async def ask() -> None:
                                await conn.stat(cmd.ctl)
                                answered.set()

                            async with trio.open_nursery() as asking:
                                asking.start_soon(ask)
                                with trio.move_on_after(connect_timeout):
                                    await answered.wait()
                                if not answered.is_set():
                                    # Given up, not flushed: a Tflush would wait for an answer too.
                                    # Said first: closing fails the other calls, which may win.
                                    silent.append(f"no answer for {connect_timeout:g} s")
                                    await conn.aclose()
                                    raise _Lost(silent[0])

                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(feed)
                            nursery.start_soon(heartbeat)
                            async with trio.open_nursery() as outputs:
                                outputs.start_soon(pump, cmd.data, "stdout")
                                outputs.start_soon(pump, cmd.stderr, "stderr")
                            status = exit_status(await cmd.status())
                            nursery.cancel_scope.cancel()
                    except BaseExceptionGroup as group:
                        raise _first(group) from None
            except BaseExceptionGroup as group:
                raise _first(group) from None
    except trio.TooSlowError:
        error = f"timed out after {timeout:g} s" if trio.current_time() >= deadline else "timed out"
        if not started and trio.current_time() < deadline:
            error = f"unreachable (no answer in {connect_timeout:g} s)"
    except _Lost as e:
        error = f"connection lost ({e})"
    except (OSError, NinePError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        why = silent[0] if silent else reason(e)
        if started:
            error = f"connection lost ({why})"
        elif isinstance(e, NinePError) and not isinstance(e, (ProtocolError, TimeoutError)):
            error = why  # the server answered: "authentication failed", "no /cmd here"
        else:
            error = f"unreachable ({why})"
    return HostResult(
        m.name,
        m.address,
        status,
        bytes(out["stdout"]),
        bytes(out["stderr"]),
        trio.current_time() - began,
        error,
        wall,
    )


def _first(group: BaseExceptionGroup) -> BaseException:
    """The one error a host's tasks failed with (the rest are the same loss seen again):
    the heartbeat's, when it gave the connection up."""
    lost = group.subgroup(_Lost)
    first: BaseException = group if lost is None else lost
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
