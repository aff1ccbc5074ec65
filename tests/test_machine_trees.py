"""The machine trees, dev and proc, read and written through the 9P client over TCP."""

from __future__ import annotations

import errno
import getpass
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

import ninep
from fileserver.dev import DevTree
from fileserver.proc import ProcTree, parse_signal
from ninep import DMDIR, Client

from .servers import serving

DEV_FILES = {"sysname", "cputype", "ncpu", "load", "mem", "uptime", "time", "random", "log"}


@pytest.fixture
async def dev() -> AsyncIterator[Client]:
    tree = DevTree()
    try:
        async with serving(tree) as address, ninep.connect(address) as fs:
            yield fs
    finally:
        await tree.close()


@asynccontextmanager
async def proc_client(allow_control: bool) -> AsyncIterator[Client]:
    async with serving(ProcTree(allow_control=allow_control)) as address, ninep.connect(address) as fs:
        yield fs


@pytest.fixture
async def proc() -> AsyncIterator[Client]:
    async with proc_client(allow_control=False) as fs:
        yield fs


@pytest.fixture
async def proc_ctl() -> AsyncIterator[Client]:
    async with proc_client(allow_control=True) as fs:
        yield fs


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    child = subprocess.Popen(["sleep", "60"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


async def exit_status(child: subprocess.Popen, within: float = 5.0) -> int | None:
    with trio.move_on_after(within):
        while child.poll() is None:
            await trio.sleep(0.01)
    return child.returncode


async def state_of(fs: Client, pid: int) -> str:
    status = await fs.read_text(f"/{pid}/status")
    return dict(line.split(" ", 1) for line in status.splitlines())["state"]


# --- dev -----------------------------------------------------------------------------


async def test_dev_lists_its_files_read_only(dev):
    stats = {st.name: st for st in await dev.ls("/")}
    assert set(stats) == DEV_FILES
    assert len({st.qid.path for st in stats.values()}) == len(DEV_FILES)
    user = getpass.getuser()
    for st in stats.values():
        assert st.mode == 0o444 and st.length == 0
        assert (st.uid, st.gid) == (user, user)
    root = await dev.stat("/")
    assert root.mode == DMDIR | 0o555 and root.qid.is_dir


async def test_ncpu_is_what_nproc_says(dev):
    ncpu = int(await dev.read_text("/ncpu"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}  # nproc(1) obeys these
    nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, env=env, check=True).stdout)
    assert ncpu == nproc == len(os.sched_getaffinity(0))
    if len(os.sched_getaffinity(0)) == os.cpu_count():  # unless CPUs are withheld from us
        assert ncpu == os.cpu_count()


async def test_machine_facts(dev):
    load = (await dev.read_text("/load")).split()
    assert len(load) == 3 and all(float(x) >= 0 for x in load)
    mem = dict(line.split() for line in (await dev.read_text("/mem")).splitlines())
    assert int(mem["total"]) > 0 and 0 <= int(mem["free"]) <= int(mem["total"])
    assert int(mem["available"]) <= int(mem["total"])
    assert await dev.read_text("/sysname") == socket.gethostname() + "\n"
    assert (await dev.read_text("/cputype")).strip() == os.uname().machine
    assert float(await dev.read_text("/uptime")) > 0


async def test_time_is_fresh_on_every_read(dev):
    first = (await dev.read_text("/time")).split()
    second = (await dev.read_text("/time")).split()
    assert first != second
    seconds, ns = int(second[0]), int(second[1])
    assert seconds == ns // 10**9
    assert abs(ns / 1e9 - time.time()) < 5


async def test_one_open_reads_one_snapshot(dev):
    async with dev.open("/time", "rb") as f:
        head = await f.read(4)
        await trio.sleep(0.01)
        rest = await f.read()
        await f.seek(0)
        assert await f.read() == head + rest


async def test_random_gives_the_count_asked_and_never_ends(dev):
    async with dev.open("/random", "rb") as f:
        a = await f.read(64)
        b = await f.read(64)
        big = await f.read(100_000)
    assert len(a) == len(b) == 64 and a != b
    assert len(big) == 100_000


async def test_dev_refuses_writes(dev):
    with pytest.raises(PermissionError):
        await dev.write_text("/ncpu", "64\n")
    with pytest.raises(PermissionError):
        await dev.write_text("/newfile", "x")
    with pytest.raises(PermissionError):
        await dev.remove("/time")
    with pytest.raises(PermissionError):
        await dev.chmod("/load", 0o666)
    with pytest.raises(FileNotFoundError):
        await dev.read_text("/nothing")


async def test_log_shows_the_servers_messages(dev):
    token = uuid.uuid4().hex
    logging.getLogger("ninefs.test").warning("something to see: %s", token)
    log = await dev.read_text("/log")
    [line] = [x for x in log.splitlines() if token in x]
    assert "ninefs.test" in line and "WARNING" in line


async def test_log_is_a_bounded_ring_and_let_go_on_close():
    tree = DevTree(log_lines=3)
    try:
        for i in range(10):
            logging.getLogger("ninefs.test").warning("line %d", i)
        lines = tree.log_handler.snapshot().decode().splitlines()
        assert [x.rsplit(" ", 1)[1] for x in lines] == ["7", "8", "9"]
    finally:
        await tree.close()
    assert tree.log_handler not in logging.getLogger("ninefs").handlers


# --- proc ----------------------------------------------------------------------------


async def test_proc_lists_processes_and_reads_a_childs_files(proc, sleeper):
    names = await proc.listdir("/")
    assert str(sleeper.pid) in names and str(os.getpid()) in names
    assert all(n.isdigit() for n in names)  # no "self"
    status = await proc.read_text(f"/{sleeper.pid}/status")
    fields = dict(line.split(" ", 1) for line in status.splitlines())
    assert fields["name"] == "sleep"
    assert fields["pid"] == str(sleeper.pid)
    assert fields["ppid"] == str(os.getpid())
    assert fields["user"] == getpass.getuser()
    assert await proc.read_text(f"/{sleeper.pid}/cmdline") == "sleep 60\n"
    assert f"PATH={os.environ['PATH']}" in (await proc.read_text(f"/{sleeper.pid}/env")).splitlines()
    stats = {st.name: st for st in await proc.ls(f"/{sleeper.pid}")}
    assert set(stats) == {"status", "cmdline", "env", "ctl", "note"}
    assert len({st.qid.path for st in stats.values()}) == 5
    assert stats["ctl"].mode == 0o200 and stats["status"].mode == 0o444


async def test_ctl_sends_a_signal(proc_ctl, sleeper):
    await proc_ctl.write_text(f"/{sleeper.pid}/note", "STOP")
    with trio.fail_after(5):
        while not (await state_of(proc_ctl, sleeper.pid)).startswith("T"):
            await trio.sleep(0.01)
    await proc_ctl.write_text(f"/{sleeper.pid}/ctl", "SIGcont\n")
    with trio.fail_after(5):
        while (await state_of(proc_ctl, sleeper.pid)).startswith("T"):
            await trio.sleep(0.01)
    await proc_ctl.write_text(f"/{sleeper.pid}/ctl", "term")
    assert await exit_status(sleeper) == -15


async def test_ctl_refuses_unknown_signals(proc_ctl, sleeper):
    with pytest.raises(OSError) as e:
        await proc_ctl.write_text(f"/{sleeper.pid}/ctl", "explode")
    assert e.value.errno == errno.EINVAL
    assert sleeper.poll() is None


def test_signal_names():
    for word in ("kill", "KILL", "SIGKILL", "sigkill", "9"):
        assert parse_signal(word) == signal.SIGKILL
    assert parse_signal("TERM\n") == signal.SIGTERM
    assert parse_signal("start") == signal.SIGCONT
    assert parse_signal("usr2") == signal.SIGUSR2


async def test_ctl_is_off_unless_allowed(proc, sleeper):
    with pytest.raises(PermissionError, match="process control is off"):
        await proc.write_text(f"/{sleeper.pid}/ctl", "kill")
    with pytest.raises(PermissionError):
        await proc.write_text(f"/{sleeper.pid}/status", "x")
    await trio.sleep(0.05)
    assert sleeper.poll() is None


async def test_a_process_that_exited_does_not_exist(proc):
    gone = subprocess.Popen(["true"])
    gone.wait()
    with pytest.raises(FileNotFoundError):
        await proc.read_text(f"/{gone.pid}/status")
    with pytest.raises(FileNotFoundError):
        await proc.stat(f"/{gone.pid}")
    with pytest.raises(FileNotFoundError):
        await proc.stat("/self")


async def test_a_node_outlived_by_its_process_names_nothing(sleeper):
    tree = ProcTree(allow_control=True)
    root = await tree.attach(getpass.getuser(), "")
    procdir = await tree.walk1(root, str(sleeper.pid))
    ctl = await tree.walk1(procdir, "ctl")
    sleeper.kill()
    sleeper.wait()  # reaped: the pid may now be anyone's
    with pytest.raises(FileNotFoundError):
        await tree.open(procdir, ninep.OREAD)
    with pytest.raises(FileNotFoundError):
        await tree.open(ctl, ninep.OWRITE)
    with pytest.raises(FileNotFoundError):
        await tree.walk1(procdir, "status")
