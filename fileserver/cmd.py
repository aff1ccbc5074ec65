"""Host commands as files: Inferno's cmd(3) device as a `Tree`.

The tree a `cpu` client drives to run a command on the serving machine. Like
Inferno's `#C`, it is a root with a `clone` file and one directory per session:

    /clone          open: allocates a new session n; the open fid *becomes* n/ctl
    /n/ctl          read: "n"; write: one request per write (see below)
    /n/data         write: the command's stdin; read: its stdout
    /n/stderr       read: the command's stderr
    /n/wait         read: blocks until the command exits, then its status line
    /n/term         a byte pipe to the command's side (cpu(1)'s /mnt/term; after `term`)

ctl requests (one per write, words split like a shell's with `shlex`):
`dir PATH` sets the working directory for a later exec; `exec CMD ARGS…`
starts the command (no shell is involved: run `sh -c '…'` for one); `kill`
sends SIGKILL to the command's process group; `signal NAME` sends it that signal
(INT, TERM, HUP, ...); `term` (before exec) makes n/term
a pipe to a 9P client that shows the caller's files to the command at /mnt/term,
and only to it. The tree's `term_wrapper` (from the mount layer: fileserver.cmdterm) decides how: a
`TermMounter` that can (a server running as root) mounts it for the command
itself, in a mount namespace the child makes before it becomes its user, and
serves it from this process for the session's life; otherwise the command
inherits the pipe's other end and is run through a wrapper (ninefs: `ns run`,
in a namespace of its own where 9P spoken on that pipe is mounted at
/mnt/term). Anything else is an Rerror ("unknown ctl request 'x'").

Files are streams, as in cmd(3): offsets are ignored and every file reports
length 0 and qid.vers 0 (so a mount reads them directly: docs/mount.md). `data`
is append-only (DMAPPEND/QTAPPEND), so clients write it in order instead of
pipelining writes out of order. Reads of `data` and `stderr`
return output as it arrives (a read blocks until there is some, or EOF, which
reads as b""); concurrent reads of one stream are served one at a time, in the
order they reach the tree, so read a stream with sequential reads (as cat(1)
does), not pipelined ones. Output is never buffered here: a read takes at most
its count from the pipe, so a command that writes faster than the client reads
blocks on its full pipe (backpressure), and memory stays bounded however much
it writes. Reads and writes of data, stderr and wait made before `exec` wait
for it (a Tflush ends the wait).
As in cmd(3), stderr is discarded while no fid has `stderr` open (so a command
cannot hang on a pipe nobody reads): open it before `exec` to see all of it.

stdin is closed (the command reads EOF) by a zero-length write to `data`, or
when the last fid open for writing on `data` is clunked (cmd(3): "when closed,
further reads by the command will see end of file").

`wait` reads, once the command has exited, as one line (offsets apply, so
cat(1) sees it once):

    pid 1234 exit 3        exited with status 3
    pid 1234 killed 9      terminated by signal 9

Lifetimes (structured: nothing outlives the tree). Commands run in their own
session and process group (start_new_session), so `kill` reaches their
children too. A session lives while any fid names it (clone-derived ctl,
the directory, or any of its files); when the last one is clunked — which is
also what the server does for every fid of a connection that drops — the
process group is killed, the pipes are closed and the directory disappears.
Each command has a task in the nursery given to the tree that reaps it;
`close()` kills everything, and `open_cmd_tree()` owns a nursery for you.
Session numbers are never reused, so qids stay unique.

Running commands is the whole point of this tree and also a remote shell for
whoever can reach it: the server decides whether to export it (`--allow-exec`).
With `check_users` (an authenticated server: a key is a user), each command runs
as the user who attached (fileserver.cmdexec), and a session is its user's: others
do not see it in the root and may not walk into it (root may).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import itertools
import os
import shlex
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import trio

from ninep.constants import DMAPPEND, DMDIR, OACCMODE, OEXEC, ORDWR, OWRITE, QTAPPEND, QTDIR, QTFILE
from ninep.errors import NinePError, NotADirectory, NotFound, PermissionDenied
from ninep.messages import Qid, Stat
from ninep.tree import Tree, is_null_wstat

from .cmdexec import open_command
from .cmdterm import TermMount, TermMounter, TermWrapper, check_term_dir, exec_later, serve_term
from .owners import host_account
from .proc import parse_signal

__all__ = ["CmdTree", "TermWrapper", "open_cmd_tree"]

PIPE_SIZE = 1 << 20  # ask the kernel for bigger pipes: fewer, larger reads per 9P round trip
REAP_TIMEOUT = 5.0  # how long close() waits for killed commands to be reaped


class _Kind(IntEnum):
    """What a node names; also the low byte of its qid path."""

    ROOT = 0
    CLONE = 1
    DIR = 2
    CTL = 3
    DATA = 4
    STDERR = 5
    WAIT = 6
    TERM = 7


_FILES = {
    "ctl": _Kind.CTL,
    "data": _Kind.DATA,
    "stderr": _Kind.STDERR,
    "wait": _Kind.WAIT,
    "term": _Kind.TERM,
}
_NAMES = {k: n for n, k in _FILES.items()} | {_Kind.CLONE: "clone"}
_PERMS = {
    _Kind.ROOT: DMDIR | 0o555,
    _Kind.CLONE: 0o666,
    _Kind.DIR: DMDIR | 0o555,
    _Kind.CTL: 0o666,
    _Kind.DATA: DMAPPEND | 0o666,
    _Kind.STDERR: 0o444,
    _Kind.WAIT: 0o444,
    _Kind.TERM: DMAPPEND | 0o666,
}


@dataclass(eq=False, slots=True)
class _Session:
    """One n/ directory: at most one command, its pipes, and who refers to it."""

    n: int
    ctime: int
    user: str | None  # with check_users: whose session it is, and as whom its command runs
    dir: str | None = None  # asked for with `dir`; None: the tree's default
    refs: int = 0  # nodes (fids) naming this session
    writers: int = 0  # data nodes open for writing
    stderr_readers: int = 0  # stderr nodes open; with none, stderr is drained and discarded
    drain: trio.CancelScope | None = None  # the task discarding stderr, while it runs
    starting: bool = False
    closed: bool = False
    proc: trio.Process | None = None
    status: str | None = None  # the wait line, once exited
    started: trio.Event = field(default_factory=trio.Event)  # exec done, or the session closed
    exited: trio.Event = field(default_factory=trio.Event)  # the command was reaped
    stdin_lock: trio.Lock = field(default_factory=trio.Lock)
    stdout_lock: trio.Lock = field(default_factory=trio.Lock)
    stderr_lock: trio.Lock = field(default_factory=trio.Lock)
    stdin: Any = None  # the command's stdin, stdout and stderr streams once it runs:
    stdout: Any = None  # pipes, or (after `pty`) all three the master side of a terminal
    stderr: Any = None
    pty: bool = False  # run the command on a pseudo-terminal (cpu(1) from a terminal)
    winsize: tuple[int, int] | None = None  # rows, columns of that terminal
    term: trio.SocketStream | None = None  # our end of the term pipe, after `term`
    term_peer: socket.socket | None = None  # the command's end, until exec hands it over
    term_serving: trio.CancelScope | None = None  # the task serving /mnt/term, when we do
    term_read_lock: trio.Lock = field(default_factory=trio.Lock)
    term_write_lock: trio.Lock = field(default_factory=trio.Lock)


@dataclass(eq=False, slots=True)
class _Node:
    kind: _Kind
    session: _Session | None = None
    user: str | None = None  # with check_users: the attached user
    counted: bool = False  # open data-for-writing or stderr node, counted in its session

    @property
    def qid(self) -> Qid:
        n = self.session.n + 1 if self.session is not None else 0
        typ = QTDIR if self.kind in (_Kind.ROOT, _Kind.DIR) else QTFILE
        if self.kind in (_Kind.DATA, _Kind.TERM):
            typ |= QTAPPEND
        return Qid(typ, 0, (n << 8) | self.kind)


class CmdTree(Tree):
    """cmd(3) over 9P: runs host commands; each command is reaped by a task in `nursery`.

    `dir` is the default working directory of commands (None: the server's own; with
    check_users, the user's home). `check_users`: users are authenticated, and each
    command runs as the user who attached.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        dir: str | None = None,
        term_wrapper: TermWrapper | None = None,
        check_users: bool = False,
    ) -> None:
        self._nursery = nursery
        self._check_users = check_users
        self._term_wrapper = term_wrapper
        self._dir = dir
        self._owner = getpass.getuser()
        self._ctime = int(time.time())
        self._numbers = itertools.count()
        self._sessions: dict[int, _Session] = {}
        self._all: set[_Session] = set()  # sessions whose command may still need reaping
        self._closed = False

    # --- sessions --------------------------------------------------------------------

    def _new_session(self, user: str | None) -> _Session:
        if self._closed:
            raise NinePError("i/o error: cmd tree closed")
        s = _Session(next(self._numbers), int(time.time()), user)
        self._sessions[s.n] = s
        return s

    def _ref(self, s: _Session | None) -> None:
        if s is not None:
            s.refs += 1

    def _unref(self, s: _Session | None) -> None:
        if s is None:
            return
        s.refs -= 1
        if s.refs <= 0:
            self._end(s)

    def _end(self, s: _Session) -> None:
        """Tear a session down: kill its process group, close its pipes, forget its name."""
        if s.closed:
            return
        s.closed = True
        self._sessions.pop(s.n, None)
        self._stop_drain(s)
        if s.proc is not None:
            _kill_group(s.proc)
            for stream in (s.stdin, s.stdout, s.stderr):
                _close_stream(stream)
        _close_stream(s.term)
        if s.term_serving is not None:
            s.term_serving.cancel()  # closes the mount's device: the kernel aborts the mount
        if s.term_peer is not None:
            s.term_peer.close()
            s.term_peer = None
        s.started.set()  # wake anyone still waiting for an exec that will never come

    async def _reap(self, s: _Session, proc: trio.Process) -> None:
        """The task that owns a command: waits for it, records its status."""
        try:
            await proc.wait()
        except BaseException:  # the tree's nursery is being cancelled: leave nothing behind
            self._end(s)
            _kill_group(proc)
            with trio.CancelScope(shield=True), trio.move_on_after(REAP_TIMEOUT):
                await proc.wait()
            raise
        finally:
            self._all.discard(s)
            code = proc.returncode
            if code is not None:
                how = f"killed {-code}" if code < 0 else f"exit {code}"
                s.status = f"pid {proc.pid} {how}\n"
            s.exited.set()

    async def close(self) -> None:
        """Kill every command and wait (briefly) until each is reaped."""
        self._closed = True
        for s in list(self._sessions.values()):
            self._end(s)
        with trio.CancelScope(shield=True), trio.move_on_after(REAP_TIMEOUT):
            for s in list(self._all):
                await s.exited.wait()

    # --- ctl ---------------------------------------------------------------------------

    async def _ctl(self, s: _Session, data: bytes) -> None:
        try:
            words = shlex.split(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise NinePError(f"bad ctl request: {e}") from None
        if not words:
            raise NinePError("bad ctl request: empty")
        verb, args = words[0], words[1:]
        if verb == "dir":
            if len(args) != 1:
                raise NinePError("bad ctl request: usage: dir PATH")
            if s.proc is not None or s.starting:
                raise NinePError("dir: command already started")
            # As the user, the command enters it itself (and exec says if it could not): the
            # server's own look would tell the user what lies where the user may not look.
            if s.user is None and not os.path.isdir(args[0]):
                raise NotADirectory(f"dir: {args[0]}: not a directory")
            s.dir = args[0]
        elif verb == "exec":
            if not args:
                raise NinePError("bad ctl request: usage: exec CMD ARGS...")
            await self._exec(s, args)
        elif verb == "term":
            # cpu(1): the caller serves its namespace over n/term, and the command sees it at
            # /mnt/term. Bytes written to n/term reach the command's side of a socket pair;
            # what that side sends comes back as reads of n/term.
            if args:
                raise NinePError("bad ctl request: usage: term")
            if self._term_wrapper is None:
                raise NinePError("term: this server cannot show a caller's namespace to commands")
            if s.proc is not None or s.starting or s.term is not None:
                raise NinePError("term: too late, or already asked")
            ours, theirs = socket.socketpair()
            s.term = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            s.term_peer = theirs
        elif verb == "kill":
            if args:
                raise NinePError("bad ctl request: usage: kill")
            if s.proc is None:
                raise NinePError("kill: no command started")
            _kill_group(s.proc)
        elif verb == "pty":  # a terminal instead of pipes: stdout and stderr both come on data
            if args:
                raise NinePError("bad ctl request: usage: pty")
            if s.proc is not None or s.starting:
                raise NinePError("pty: command already started")
            s.pty = True
        elif verb == "winsize":
            if len(args) != 2 or not all(a.isdigit() for a in args):
                raise NinePError("bad ctl request: usage: winsize ROWS COLS")
            s.winsize = (int(args[0]), int(args[1]))
            if s.pty and s.stdout is not None:
                _set_winsize(s.stdout.fileno(), s.winsize)
        elif verb == "signal":  # cpu(1) passes the caller's Ctrl-C (and TERM, HUP) this way
            if len(args) != 1:
                raise NinePError("bad ctl request: usage: signal NAME")
            if s.proc is None:
                raise NinePError("signal: no command started")
            sig = parse_signal(args[0])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(s.proc.pid, sig)
        else:
            raise NinePError(f"unknown ctl request {verb!r}")

    async def _exec(self, s: _Session, argv: list[str]) -> None:
        if s.proc is not None or s.starting:
            raise NinePError("exec: command already started")
        pass_fds: tuple[int, ...] = ()
        mount: TermMount | None = None
        helper = self._term_wrapper
        if s.term_peer is not None and helper is not None:
            if isinstance(helper, TermMounter):
                check_term_dir(s.dir)
                mount = helper.prepare()
            if mount is None:
                wrap = helper.wrap if isinstance(helper, TermMounter) else helper
                pass_fds = (s.term_peer.fileno(),)
                argv = wrap(s.term_peer.fileno(), argv)
            else:
                argv = exec_later(argv)
        s.starting = True
        master = slave = -1
        io: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        if s.pty:
            master, slave = os.openpty()
            if s.winsize:
                _set_winsize(master, s.winsize)
            # The terminal becomes the command's controlling terminal in its new session.
            io = {"stdin": slave, "stdout": slave, "stderr": slave, "preexec": _take_terminal}
        try:
            proc = await open_command(
                argv,
                user=s.user,
                dir=s.dir,
                default_dir=self._dir,
                pass_fds=pass_fds,
                as_root=mount.in_child if mount is not None else None,
                start_new_session=True,  # its own process group, so kill reaches its children
                **io,
            )
        except BaseException as e:
            s.starting = False
            if mount is not None:
                mount.close()
            if master >= 0:
                os.close(master)
                os.close(slave)
            if not isinstance(e, (OSError, subprocess.SubprocessError)):
                raise  # a cancel, say: with the pty and the mount's device let go
            if isinstance(e, NinePError):
                raise
            if isinstance(e, subprocess.SubprocessError):
                raise NinePError(f"exec {argv[0]}: could not start it") from None
            raise NinePError(f"exec {argv[0]}: {e.strerror or e}") from None
        if s.pty:
            os.close(slave)
            s.stdin = s.stdout = trio.lowlevel.FdStream(master)
        else:
            s.stdin, s.stdout, s.stderr = proc.stdin, proc.stdout, proc.stderr
        if mount is not None and s.term_peer is None:  # closed while starting: nobody to serve
            mount.close()
        elif mount is not None and s.term_peer is not None:  # we are the command's side of term
            s.term_serving = trio.CancelScope()
            self._nursery.start_soon(serve_term, mount, s.term_peer, s.user or self._owner, s.term_serving)
            s.term_peer = None
        elif s.term_peer is not None:  # the command has its end now
            s.term_peer.close()
            s.term_peer = None
        s.proc = proc
        self._all.add(s)
        self._nursery.start_soon(self._reap, s, proc)
        if not s.pty:
            for stream in (proc.stdout, proc.stderr):
                _grow_pipe(stream)
        if s.stderr_readers == 0:
            self._start_drain(s)
        if s.closed:  # every fid went away while the command was starting
            _kill_group(proc)
            for stream in (s.stdin, s.stdout, s.stderr):
                _close_stream(stream)
            raise NinePError("i/o error: session closed")
        s.started.set()

    async def _started(self, s: _Session) -> trio.Process:
        await s.started.wait()
        if s.proc is None or s.closed:
            raise NinePError("i/o error: session closed")
        return s.proc

    # --- streams --------------------------------------------------------------------

    def _start_drain(self, s: _Session) -> None:
        # cmd(3): "If the stderr file is not opened, the error output will be discarded",
        # so a command that writes much to stderr cannot block on a pipe nobody reads.
        if s.drain is None and s.stderr is not None and not s.closed:
            s.drain = trio.CancelScope()
            self._nursery.start_soon(self._drain_stderr, s, s.drain)

    def _stop_drain(self, s: _Session) -> None:
        if s.drain is not None:
            s.drain.cancel()
            s.drain = None

    async def _drain_stderr(self, s: _Session, scope: trio.CancelScope) -> None:
        stream = s.stderr
        assert stream is not None
        with scope:
            async with s.stderr_lock:
                try:
                    while await stream.receive_some(1 << 16):
                        pass
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
        if s.drain is scope:
            s.drain = None

    async def _receive(self, s: _Session, kind: _Kind, count: int) -> bytes:
        await self._started(s)
        stream, lock = (s.stdout, s.stdout_lock) if kind is _Kind.DATA else (s.stderr, s.stderr_lock)
        if stream is None:
            return b""  # stderr of a command on a terminal: it all comes on data
        async with lock:
            try:
                return await stream.receive_some(count) if count else b""
            except trio.BrokenResourceError:
                if s.pty:
                    return b""  # the terminal hung up (EIO): the command is done with it
                raise NinePError("i/o error: session closed") from None
            except trio.ClosedResourceError:
                raise NinePError("i/o error: session closed") from None

    async def _send(self, s: _Session, data: bytes) -> int:
        await self._started(s)
        stdin = s.stdin
        assert stdin is not None
        async with s.stdin_lock:
            try:
                if not data:  # a zero-length write is end of file for the command
                    if not s.pty:  # (on a terminal, ^D is the user's to type)
                        _close_stream(stdin)
                else:
                    await stdin.send_all(data)
            except trio.ClosedResourceError:
                raise NinePError("i/o error: stdin closed") from None
            except trio.BrokenResourceError:
                raise NinePError("i/o error: command no longer reads its stdin") from None
        return len(data)

    def _term(self, s: _Session) -> trio.SocketStream:
        if s.term is None:
            raise NinePError("term: not asked for (write `term` to ctl before exec)")
        return s.term

    async def _term_receive(self, s: _Session, count: int) -> bytes:
        stream = self._term(s)
        async with s.term_read_lock:
            try:
                return await stream.receive_some(count) if count else b""
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return b""

    async def _term_send(self, s: _Session, data: bytes) -> int:
        stream = self._term(s)
        async with s.term_write_lock:
            try:
                await stream.send_all(data)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise NinePError("i/o error: the command's side of term is gone") from None
        return len(data)

    # --- the tree interface -----------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> _Node:
        if aname not in ("", "/"):
            raise NotFound(f"file does not exist: no tree named {aname!r}")
        return _Node(_Kind.ROOT, user=uname if self._check_users else None)

    async def clone(self, node: _Node) -> _Node:
        self._ref(node.session)
        return _Node(node.kind, node.session, user=node.user)

    def _may_see(self, user: str | None, s: _Session) -> bool:
        """Whether `user` may use session `s`: its own, or any when root (or unchecked)."""
        if user is None or s.user is None or s.user == user:
            return True
        account = host_account(user)
        return account is not None and account[0].pw_uid == 0

    async def walk1(self, node: _Node, name: str) -> _Node:
        if name == ".":
            return await self.clone(node)
        if node.kind is _Kind.ROOT:
            if name == "..":
                return _Node(_Kind.ROOT, user=node.user)
            if name == "clone":
                return _Node(_Kind.CLONE, user=node.user)
            s = self._sessions.get(int(name)) if name.isdigit() and name.isascii() else None
            if s is None:
                raise NotFound("file does not exist")
            if not self._may_see(node.user, s):
                raise PermissionDenied(f"permission denied: session {s.n} is {s.user}'s")
            self._ref(s)
            return _Node(_Kind.DIR, s, user=node.user)
        if node.kind is _Kind.DIR:
            if name == "..":
                return _Node(_Kind.ROOT, user=node.user)
            kind = _FILES.get(name)
            if kind is None or node.session is None or node.session.closed:
                raise NotFound("file does not exist")
            self._ref(node.session)
            return _Node(kind, node.session, user=node.user)
        raise NotADirectory("walk in non-directory")

    async def open(self, node: _Node, mode: int) -> tuple[Qid, int]:
        acc = mode & OACCMODE
        writing = acc in (OWRITE, ORDWR)
        if acc == OEXEC and node.kind not in (_Kind.ROOT, _Kind.DIR):
            raise PermissionDenied("permission denied")
        if writing and node.kind in (_Kind.STDERR, _Kind.WAIT):
            raise PermissionDenied("permission denied: read-only file")
        if node.session is not None and node.session.closed:
            raise NinePError("i/o error: session closed")
        if node.kind is _Kind.CLONE:  # cmd(3): the clone fid becomes the new session's ctl
            s = self._new_session(node.user)
            self._ref(s)
            node.kind, node.session = _Kind.CTL, s
        elif node.kind is _Kind.DATA and writing:
            assert node.session is not None
            node.counted = True
            node.session.writers += 1
        elif node.kind is _Kind.STDERR:
            assert node.session is not None
            node.counted = True
            node.session.stderr_readers += 1
            self._stop_drain(node.session)
        return node.qid, 0

    async def create(self, node: _Node, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        raise PermissionDenied("create prohibited: cmd files are fixed")

    async def read(self, node: _Node, offset: int, count: int) -> bytes:
        s = node.session
        if node.kind is _Kind.CTL and s is not None:
            return str(s.n).encode()[offset : offset + count]
        if node.kind in (_Kind.DATA, _Kind.STDERR) and s is not None:
            return await self._receive(s, node.kind, count)
        if node.kind is _Kind.TERM and s is not None:
            return await self._term_receive(s, count)
        if node.kind is _Kind.WAIT and s is not None:
            await self._started(s)
            await s.exited.wait()
            if s.status is None:
                raise NinePError("i/o error: command was not reaped")
            return s.status.encode()[offset : offset + count]
        raise PermissionDenied("permission denied")

    async def readdir(self, node: _Node) -> Sequence[Stat]:
        if node.kind is _Kind.ROOT:
            mine = [s for _, s in sorted(self._sessions.items()) if self._may_see(node.user, s)]
            nodes = [_Node(_Kind.CLONE)] + [_Node(_Kind.DIR, s) for s in mine]
        elif node.kind is _Kind.DIR and node.session is not None and not node.session.closed:
            nodes = [_Node(k, node.session) for k in _FILES.values()]
        else:
            nodes = []
        return [self._stat(n) for n in nodes]

    async def write(self, node: _Node, offset: int, data: bytes) -> int:
        s = node.session
        if s is None:
            raise PermissionDenied("permission denied")
        if node.kind is _Kind.CTL:
            await self._ctl(s, data)
            return len(data)
        if node.kind is _Kind.DATA:
            return await self._send(s, data)
        if node.kind is _Kind.TERM:
            return await self._term_send(s, data)
        raise PermissionDenied("permission denied: read-only file")

    def _stat(self, node: _Node) -> Stat:
        s = node.session
        if node.kind is _Kind.ROOT:
            name = "/"
        elif node.kind is _Kind.DIR and s is not None:
            name = str(s.n)
        else:
            name = _NAMES[node.kind]
        t = s.ctime if s is not None else self._ctime
        owner = s.user if s is not None and s.user is not None else self._owner
        return Stat(
            qid=node.qid,
            mode=_PERMS[node.kind],
            atime=t,
            mtime=t,
            length=0,
            name=name,
            uid=owner,
            gid=owner,
            muid=owner,
        )

    async def stat(self, node: _Node) -> Stat:
        return self._stat(node)

    async def wstat(self, node: _Node, stat: Stat) -> None:
        if is_null_wstat(stat):
            return  # stat(5): a null wstat asks to sync; there is nothing to sync
        raise PermissionDenied("permission denied: cmd files are fixed")

    async def remove(self, node: _Node) -> None:
        try:
            raise PermissionDenied("permission denied: cmd files are fixed")
        finally:
            await self.clunk(node)

    async def clunk(self, node: _Node) -> None:
        s = node.session
        if s is None:
            return
        if node.counted and node.kind is _Kind.DATA:
            s.writers -= 1
            if s.writers == 0 and s.proc is not None and not s.pty:
                _close_stream(s.stdin)  # cmd(3): closing data for writing is EOF on stdin
        elif node.counted and node.kind is _Kind.STDERR:
            s.stderr_readers -= 1
            if s.stderr_readers == 0:
                self._start_drain(s)
        node.counted = False
        node.session = None
        self._unref(s)


@asynccontextmanager
async def open_cmd_tree(
    *, dir: str | None = None, term_wrapper: TermWrapper | None = None, check_users: bool = False
) -> AsyncIterator[CmdTree]:
    """A `CmdTree` with a nursery of its own; every command is killed and reaped on exit."""
    async with trio.open_nursery() as nursery:
        tree = CmdTree(nursery, dir=dir, term_wrapper=term_wrapper, check_users=check_users)
        try:
            yield tree
        finally:
            await tree.close()


def _kill_group(proc: trio.Process) -> None:
    # The group outlives its leader while any member lives, so its id cannot be reused
    # until then; once empty, killpg fails with ESRCH. (Only if the group is empty *and*
    # the pid space wrapped around meanwhile could the number name someone else's group.)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _set_winsize(fd: int, winsize: tuple[int, int]) -> None:
    rows, cols = winsize
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:
    """In the child, after setsid: make stdin (the terminal) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _close_stream(stream: object) -> None:
    """Close a pipe now (no await): a task blocked on it gets ClosedResourceError."""
    if isinstance(stream, trio.lowlevel.FdStream):
        stream.close()
    elif isinstance(stream, trio.SocketStream):
        trio.lowlevel.notify_closing(stream.socket)
        stream.socket.close()


def _grow_pipe(stream: object) -> None:
    if isinstance(stream, trio.lowlevel.FdStream):
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
