"""The serving machine's processes as files, like Plan 9's proc(3).

`ProcTree` has one directory per process, named by its pid, holding
`status` (name, pid, ppid, state, user, threads, rss: one "name value" a
line), `cmdline` (the arguments joined by spaces), `env` (NAME=value lines;
reading it needs the host's permission to read /proc/PID/environ) and `ctl`
with its alias `note`: writing a signal name there ("kill", "term", "hup",
"SIGUSR1", ... or a number) sends that signal to the process. It is one of
the machine trees that `ninefs serve --machine` composes.

Signalling is off unless the tree is built with `allow_control=True`, since
until the server authenticates its clients anyone who can dial it could kill
the server's processes.

With `check_users` (an authenticated server: a key is a user), a user reads the
`env` and writes the `ctl`/`note` of its own processes only, as the host would
let it (root: of every process). `env` is the user's when every uid of the
process (real, effective, saved, filesystem) is the user's, as ptrace(2)'s
check for /proc/PID/environ asks; a signal may go where kill(2) would send it,
to a process whose real or saved uid is the user's. Another user's `env` reads
as "permission denied", and its `ctl` does not open. Everyone may read every
`status` and `cmdline`, as on the host.

Like Plan 9's synthetic files, files report length 0 and their content is
computed when opened. A pid can be reused, so a node remembers the start time
of the process it was walked to: once that process is gone the node's files
do not exist, even if a new process got the same pid, and signals are sent
through a pidfd after checking the start time, never to the newcomer.
qid.path is `start << 30 | pid << 8 | file` (pids stay below 2**22), so two
processes that shared a pid never share a qid; qid.vers is 0, and with length 0
that tells a client a file is a stream, to read afresh (docs/mount.md).
"""

from __future__ import annotations

import getpass
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ninep.constants import DMDIR, OACCMODE, OREAD, OTRUNC, OWRITE, QTDIR, QTFILE
from ninep.errors import IsADirectory, NinePError, NotADirectory, NotFound, PermissionDenied
from ninep.messages import Qid, Stat
from ninep.tree import Tree, is_null_wstat

from .owners import group_name, host_account, user_name

__all__ = ["ProcTree", "parse_signal"]

CONTROL_OFF = "permission denied: process control is off"

# index -> (name, mode); index 0 is the process directory, and the low byte of qid.path
_FILES: list[tuple[str, int]] = [
    ("", DMDIR | 0o555),
    ("status", 0o444),
    ("cmdline", 0o444),
    ("env", 0o400),
    ("ctl", 0o200),
    ("note", 0o200),
]
_INDEX = {name: i for i, (name, _) in enumerate(_FILES) if name}
_CTL = (_INDEX["ctl"], _INDEX["note"])
_ROOT_QID = Qid(QTDIR, 0, 0)
_ALIASES = {"START": "CONT"}  # proc(3): the ctl message "start" resumes a stopped process


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    with open("/proc/uptime") as f:
        return time.time() - float(f.read().split()[0])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _start_ticks(pid: int) -> int:
    """When `pid` started, in clock ticks since boot; NotFound if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise NotFound("file does not exist") from None
    # proc(5): the name in parentheses may itself hold ")" and spaces; fields resume after the last.
    fields = raw.rpartition(b")")[2].split()
    return int(fields[19])  # field 22, starttime; fields[0] is field 3, the state


def parse_signal(message: str) -> signal.Signals:
    """The signal a ctl message names: "kill", "TERM", "SIGhup", "start" (SIGCONT), "15"."""
    word = message.strip().upper()
    if not word or len(word.split()) != 1:
        raise NinePError(f"invalid argument: bad control message {message.strip()!r}")
    if word.isdigit():
        try:
            return signal.Signals(int(word))
        except ValueError:
            raise NinePError(f"invalid argument: unknown signal {word}") from None
    word = word.removeprefix("SIG")
    word = _ALIASES.get(word, word)
    try:
        return signal.Signals["SIG" + word]
    except KeyError:
        raise NinePError(f"invalid argument: unknown signal {message.strip()!r}") from None


@dataclass(eq=False, slots=True)
class _Node:
    pid: int | None  # None: the root
    start: int = 0  # the process's start time in ticks: tells a reused pid apart
    file: int = 0  # index in _FILES; 0: the process directory
    data: bytes | None = None  # the content as of open
    user: str | None = None  # with check_users: the attached user

    @property
    def qid(self) -> Qid:
        if self.pid is None:
            return _ROOT_QID
        kind = QTDIR if self.file == 0 else QTFILE
        return Qid(kind, 0, (self.start << 30 | self.pid << 8 | self.file) & 0xFFFFFFFFFFFFFFFF)


class ProcTree(Tree):
    """The machine's processes; `ctl`/`note` send signals only when `allow_control` is set.

    `check_users`: users are authenticated, and each may read the env of and signal
    only its own processes.
    """

    def __init__(
        self, owner: str | None = None, *, allow_control: bool = False, check_users: bool = False
    ) -> None:
        self.owner = owner or getpass.getuser()
        self.allow_control = allow_control
        self.check_users = check_users
        self._boot = _boot_time()

    # --- helpers ------------------------------------------------------------------

    def _check_alive(self, node: _Node) -> None:
        """The node's process is still the one it was walked to."""
        assert node.pid is not None
        if _start_ticks(node.pid) != node.start:
            raise NotFound("file does not exist")

    def _proc_stat(self, pid: int, start: int, index: int) -> Stat:
        try:
            st = os.stat(f"/proc/{pid}")
        except (FileNotFoundError, ProcessLookupError):
            raise NotFound("file does not exist") from None
        name, mode = _FILES[index]
        started = int(self._boot + start / _CLK_TCK)
        uid = user_name(st.st_uid)
        return Stat(
            qid=_Node(pid, start, index).qid,
            mode=mode,
            atime=started,
            mtime=started,
            length=0,
            name=name or str(pid),
            uid=uid,
            gid=group_name(st.st_gid),
            muid=uid,
        )

    def _check_user(self, node: _Node, signalling: bool) -> None:
        """With check_users: the node's process is its user's to read the env of, or signal."""
        if node.user is None:
            return
        assert node.pid is not None
        account = host_account(node.user)
        if account is not None and account[0].pw_uid == 0:
            return
        uids = _uids(node.pid)  # real, effective, saved, filesystem
        if account is not None:
            uid = account[0].pw_uid
            if (uid in (uids[0], uids[2])) if signalling else all(u == uid for u in uids):
                return
        owner = user_name(uids[0])
        raise PermissionDenied(f"permission denied: process {node.pid} is {owner}'s, not {node.user}'s")

    def _content(self, node: _Node) -> bytes:
        assert node.pid is not None
        pid, name = node.pid, _FILES[node.file][0]
        try:
            if name == "status":
                return _status(pid)
            if name == "cmdline":
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
                if args and args[-1] == b"":
                    args.pop()
                return b" ".join(args) + b"\n" if args else b""
            if name == "env":
                self._check_user(node, signalling=False)
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read()
                # Checked again after: it may have exec'd a set-uid program meanwhile.
                self._check_user(node, signalling=False)
                self._check_alive(node)
                return b"".join(v + b"\n" for v in env.split(b"\0") if v)
        except NinePError:
            raise
        except (FileNotFoundError, ProcessLookupError):
            raise NotFound("file does not exist") from None
        except PermissionError:
            raise PermissionDenied("permission denied") from None
        return b""

    def _signal(self, node: _Node, sig: signal.Signals) -> None:
        assert node.pid is not None
        try:
            try:
                pidfd = os.pidfd_open(node.pid)
            except (AttributeError, NotImplementedError):  # no pidfds: a small race remains
                self._check_alive(node)
                self._check_user(node, signalling=True)
                os.kill(node.pid, sig)
                return
            try:
                self._check_alive(node)  # the pidfd holds this process, not a later one
                self._check_user(node, signalling=True)
                signal.pidfd_send_signal(pidfd, sig)
            finally:
                os.close(pidfd)
        except NinePError:
            raise
        except ProcessLookupError:
            raise NotFound("file does not exist") from None
        except PermissionError:
            raise PermissionDenied("permission denied") from None

    # --- the tree interface ------------------------------------------------------

    async def attach(self, uname: str, aname: str) -> _Node:
        if aname not in ("", "/"):
            raise NotFound(f"file does not exist: no tree named {aname!r}")
        return _Node(None, user=uname if self.check_users else None)

    async def clone(self, node: _Node) -> _Node:
        return _Node(node.pid, node.start, node.file, user=node.user)

    async def walk1(self, node: _Node, name: str) -> _Node:
        if node.file != 0:
            raise NotADirectory("walk in non-directory")
        if name == ".":
            return await self.clone(node)
        if node.pid is None:
            if name == "..":
                return _Node(None, user=node.user)
            if not name.isdigit() or name != str(int(name)):  # "007" is not a pid
                raise NotFound("file does not exist")
            pid = int(name)
            return _Node(pid, _start_ticks(pid), user=node.user)
        self._check_alive(node)
        if name == "..":
            return _Node(None, user=node.user)
        index = _INDEX.get(name)
        if index is None:
            raise NotFound("file does not exist")
        return _Node(node.pid, node.start, index, user=node.user)

    async def open(self, node: _Node, mode: int) -> tuple[Qid, int]:
        if node.pid is None:
            return node.qid, 0
        self._check_alive(node)
        if node.file in _CTL:
            if mode & OACCMODE != OWRITE or mode & ~(OACCMODE | OTRUNC):  # write-only, like proc(3)'s ctl
                raise PermissionDenied("permission denied")
            if not self.allow_control:
                raise PermissionDenied(CONTROL_OFF)
            self._check_user(node, signalling=True)
        elif mode != OREAD:  # OTRUNC and ORCLOSE are writes too
            raise PermissionDenied("permission denied")
        elif node.file != 0:
            node.data = self._content(node)
        return node.qid, 0

    async def create(self, node: _Node, name: str, perm: int, mode: int) -> tuple[Qid, int]:
        raise PermissionDenied("permission denied")

    async def read(self, node: _Node, offset: int, count: int) -> bytes:
        if node.file == 0:
            raise IsADirectory("is a directory")
        return (node.data or b"")[offset : offset + count]

    async def readdir(self, node: _Node) -> Sequence[Stat]:
        if node.pid is not None:
            self._check_alive(node)
            return [self._proc_stat(node.pid, node.start, i) for i in range(1, len(_FILES))]
        stats: list[Stat] = []
        pids = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
        for pid in pids:
            try:
                stats.append(self._proc_stat(pid, _start_ticks(pid), 0))
            except NotFound:
                continue  # exited while we listed
        return stats

    async def write(self, node: _Node, offset: int, data: bytes) -> int:
        if node.file not in _CTL:
            raise PermissionDenied("permission denied")
        if not self.allow_control:
            raise PermissionDenied(CONTROL_OFF)
        self._signal(node, parse_signal(data.decode("utf-8", "replace")))
        return len(data)

    async def stat(self, node: _Node) -> Stat:
        if node.pid is None:
            return Stat(
                qid=_ROOT_QID,
                mode=DMDIR | 0o555,
                atime=int(self._boot),
                mtime=int(self._boot),
                name="/",
                uid=self.owner,
                gid=self.owner,
                muid=self.owner,
            )
        self._check_alive(node)
        return self._proc_stat(node.pid, node.start, node.file)

    async def wstat(self, node: _Node, stat: Stat) -> None:
        if is_null_wstat(stat):
            return  # stat(5): a null wstat asks for a sync, and there is nothing to sync
        raise PermissionDenied("permission denied")

    async def remove(self, node: _Node) -> None:
        raise PermissionDenied("permission denied")

    async def clunk(self, node: _Node) -> None:
        node.data = None


def _uids(pid: int) -> list[int]:
    """The process's real, effective, saved and filesystem uids (proc(5): the Uid line)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return [int(u) for u in line.split()[1:5]]
    except (FileNotFoundError, ProcessLookupError):
        raise NotFound("file does not exist") from None
    raise NotFound("file does not exist")


def _status(pid: int) -> bytes:
    """The few lines of /proc/PID/status a person wants, in bytes where the kernel says kB."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    uid = fields.get("Uid", "").split()
    rss = fields.get("VmRSS", "0 kB").split()
    lines = [
        ("name", fields.get("Name", "")),
        ("pid", fields.get("Pid", str(pid))),
        ("ppid", fields.get("PPid", "0")),
        ("state", fields.get("State", "")),
        ("user", user_name(int(uid[0])) if uid else ""),
        ("threads", fields.get("Threads", "1")),
        ("rss", str(int(rss[0]) * 1024) if rss and rss[0].isdigit() else "0"),
    ]
    return "".join(f"{k} {v}\n" for k, v in lines).encode("utf-8", "replace")
