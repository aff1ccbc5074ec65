"""A key is a user on a whole machine: /cmd commands, /proc env and ctl (DESIGN.md "Trust boundaries").

The server runs as root here (as in CI), with keys for root and for nobody; one test runs
it as nobody instead. Also: --allow-exec without keys only where the address resolves to
loopback.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio

import mount.cli
import ninep
from ninep import ORDWR, OREAD, Client
from ninep.auth import generate_key

from .servers import ninefs_command, server_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts commands as other users: needs root"),
]

NOBODY = pwd.getpwnam("nobody")
SECRET = "NINEFS_TEST_SECRET"


@pytest.fixture
def keys() -> Iterator[Path]:
    """Keys for root, nobody and ghost (no such host user), in a directory nobody may read."""
    where = Path(tempfile.mkdtemp(prefix="ninefs-users-"))
    os.chmod(where, 0o755)  # a server running as nobody reads the authorized file
    lines = []
    for user in ("root", "nobody", "ghost"):
        generate_key(str(where / user), f"{user}@test")
        kind, blob = (where / f"{user}.pub").read_text().split()[:2]
        lines.append(f"{kind} {blob} {user}\n")
    (where / "authorized").write_text("".join(lines))
    os.chmod(where / "authorized", 0o644)
    try:
        yield where
    finally:
        shutil.rmtree(where)


@pytest.fixture
def machine(keys: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`serve --machine --allow-exec --allow-control --authorized-keys`, as root."""
    monkeypatch.setenv(SECRET, "the server's own")  # commands started for users must not see it
    with server_process(
        "--machine", "--allow-exec", "--allow-control", "--authorized-keys", str(keys / "authorized")
    ) as (address, _):
        yield address


@asynccontextmanager
async def as_user(address: str, user: str, keys: Path) -> AsyncIterator[Client]:
    async with ninep.connect(address, uname=user, key=str(keys / user)) as fs:
        yield fs


@asynccontextmanager
async def started(fs: Client, command: str, *, dir: str | None = None) -> AsyncIterator[tuple[int, dict]]:
    """A cmd session running `command`: yields n and the fids of its files, opened before exec."""
    ctl, _ = await fs.walk_fid("cmd/clone")
    fids = {"ctl": ctl}
    try:
        await fs.conn.open(ctl, ORDWR)
        n = int(await fs.conn.read(ctl, 0, 64))
        for name in ("data", "stderr", "wait"):
            fids[name], _ = await fs.walk_fid(f"cmd/{n}/{name}")
            await fs.conn.open(fids[name], OREAD)
        if dir is not None:
            await fs.conn.write(ctl, 0, f"dir {dir}".encode())
        await fs.conn.write(ctl, 0, f"exec {command}".encode())
        yield n, fids
    finally:
        with trio.CancelScope(shield=True):
            for fid in reversed(fids.values()):
                await fs._clunk(fid)


async def read_all(fs: Client, fid: int) -> str:
    out, offset = b"", 0
    while data := await fs.conn.read(fid, offset, fs.conn.iounit):
        out += data
        offset += len(data)
    return out.decode()


async def run(fs: Client, command: str, *, dir: str | None = None) -> tuple[str, str, str]:
    """Run `command` through /cmd: its stdout, stderr and wait line."""
    async with started(fs, command, dir=dir) as (_, fids):
        return tuple([await read_all(fs, fids[name]) for name in ("data", "stderr", "wait")])  # type: ignore[return-value]


# --- /cmd ------------------------------------------------------------------------------------------


async def test_a_key_listed_for_nobody_runs_commands_as_nobody(machine: str, keys: Path) -> None:
    async with as_user(machine, "nobody", keys) as fs:
        out, _, wait = await run(fs, "id -u")
        assert out == f"{NOBODY.pw_uid}\n" and wait.endswith("exit 0\n")
        assert (await run(fs, "id -g"))[0] == f"{NOBODY.pw_gid}\n"
        groups = sorted(os.getgrouplist("nobody", NOBODY.pw_gid))
        assert sorted(int(g) for g in (await run(fs, "id -G"))[0].split()) == groups


async def test_nobody_cannot_read_shadow_nor_write_in_roots_home(machine: str, keys: Path) -> None:
    victim = f"/root/ninefs-test-{uuid.uuid4().hex}"
    try:
        async with as_user(machine, "nobody", keys) as fs:
            out, err, wait = await run(fs, "cat /etc/shadow")
            assert out == "" and "Permission denied" in err and not wait.endswith("exit 0\n")
            _, err, wait = await run(fs, f"touch {victim}")
            assert "Permission denied" in err and not wait.endswith("exit 0\n")
        assert not os.path.exists(victim)
    finally:
        if os.path.exists(victim):
            os.unlink(victim)


async def test_a_command_gets_its_users_environment_not_the_servers(machine: str, keys: Path) -> None:
    async with as_user(machine, "nobody", keys) as fs:
        env = dict(line.split("=", 1) for line in (await run(fs, "env"))[0].splitlines())
    assert env["HOME"] == NOBODY.pw_dir and env["SHELL"] == NOBODY.pw_shell
    assert env["USER"] == env["LOGNAME"] == "nobody"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert SECRET not in env


async def test_a_root_key_still_runs_as_root(machine: str, keys: Path) -> None:
    async with as_user(machine, "root", keys) as fs:
        assert (await run(fs, "id -u"))[0] == "0\n"
        env = dict(line.split("=", 1) for line in (await run(fs, "env"))[0].splitlines())
    assert env["HOME"] == pwd.getpwnam("root").pw_dir and env["USER"] == "root"


async def test_dir_goes_only_where_the_host_lets_the_user_go(machine: str, keys: Path) -> None:
    async with as_user(machine, "nobody", keys) as fs:
        with pytest.raises(PermissionError, match="permission denied: dir /root"):
            await run(fs, "ls", dir="/root")
        with pytest.raises(FileNotFoundError, match="dir /no/such/place"):
            await run(fs, "ls", dir="/no/such/place")
        assert (await run(fs, "pwd", dir="/tmp"))[0] == "/tmp\n"
        assert (await run(fs, "pwd"))[0] == "/\n"  # no dir: home (here /nonexistent), else /
    async with as_user(machine, "root", keys) as fs:
        assert (await run(fs, "pwd", dir="/root"))[0] == "/root\n"


async def test_a_session_is_its_users_own(machine: str, keys: Path) -> None:
    async with (
        as_user(machine, "root", keys) as root,
        as_user(machine, "nobody", keys) as nobody,
        started(root, "cat") as (n, fids),
    ):
        assert str(n) not in await nobody.listdir("cmd")
        # Not there for nobody (a namespace's walk says only "file does not exist").
        with pytest.raises(FileNotFoundError):
            await nobody.write_bytes(f"cmd/{n}/data", b"echo owned\n", append=True)
        with pytest.raises(FileNotFoundError):
            await nobody.stat(f"cmd/{n}")
        await root.write_bytes(f"cmd/{n}/data", b"roots own\n", append=True)
        assert await root.conn.read(fids["data"], 0, 64) == b"roots own\n"
        async with started(nobody, "sleep 30") as (m, _):
            assert {str(n), str(m)} <= set(await root.listdir("cmd"))  # root sees every session
            assert (await nobody.stat(f"cmd/{m}/ctl")).uid == "nobody"


async def test_a_host_user_that_does_not_exist_runs_nothing(machine: str, keys: Path) -> None:
    async with as_user(machine, "ghost", keys) as fs:
        with pytest.raises(PermissionError, match="permission denied: no host user ghost"):
            await run(fs, "id")


# --- /proc -----------------------------------------------------------------------------------------


@pytest.fixture
def roots_process() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(["sleep", "60"], env={**os.environ, SECRET: "root's"})
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


async def test_nobody_may_not_read_the_env_of_roots_processes(
    machine: str, keys: Path, roots_process: subprocess.Popen
) -> None:
    async with as_user(machine, "nobody", keys) as fs:
        for pid in (1, roots_process.pid):
            with pytest.raises(PermissionError, match=f"process {pid} is root's"):
                await fs.read_bytes(f"proc/{pid}/env")
        assert b"sleep" in await fs.read_bytes(f"proc/{roots_process.pid}/cmdline")  # as on the host
    async with as_user(machine, "root", keys) as fs:
        assert f"{SECRET}=root's".encode() in await fs.read_bytes(f"proc/{roots_process.pid}/env")


async def test_nobody_may_not_signal_roots_processes(
    machine: str, keys: Path, roots_process: subprocess.Popen
) -> None:
    async with as_user(machine, "nobody", keys) as fs:
        for ctl in ("ctl", "note"):
            with pytest.raises(PermissionError, match="is root's, not nobody's"):
                await fs.write_bytes(f"proc/{roots_process.pid}/{ctl}", b"kill")
    await trio.sleep(0.1)
    assert roots_process.poll() is None


async def test_nobody_reads_the_env_of_and_signals_its_own_process(machine: str, keys: Path) -> None:
    async with (
        as_user(machine, "nobody", keys) as fs,
        as_user(machine, "root", keys) as root,
        started(fs, "sh -c 'echo $$; exec sleep 30'") as (_, fids),
    ):
        pid = int(await fs.conn.read(fids["data"], 0, 64))
        assert b"USER=nobody\n" in await fs.read_bytes(f"proc/{pid}/env")
        assert b"USER=nobody\n" in await root.read_bytes(f"proc/{pid}/env")  # root sees all
        await fs.write_bytes(f"proc/{pid}/ctl", b"kill")
        assert re.fullmatch(rf"pid {pid} killed 9\n", await read_all(fs, fids["wait"]))


# --- a server that is not root -----------------------------------------------------------------------


@contextmanager
def serving_as_nobody(keys: Path) -> Iterator[str]:
    """The machine server run by nobody (setpriv), exporting a directory nobody may use."""
    export = keys / "export"
    export.mkdir()
    os.chown(export, NOBODY.pw_uid, NOBODY.pw_gid)
    as_nobody = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--init-groups"]
    command = ninefs_command(
        "serve", str(export), "--machine", "--allow-exec", "--authorized-keys", str(keys / "authorized"),
        "--listen", "tcp!127.0.0.1!0",
    )  # fmt: skip
    proc = subprocess.Popen(
        as_nobody + command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,  # this checkout, as server_process runs it
        env={**os.environ, "HOME": str(export)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ninefs: serving on "), line
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


async def test_a_server_that_is_not_root_starts_commands_for_its_own_user_only(keys: Path) -> None:
    with serving_as_nobody(keys) as address:
        async with as_user(address, "nobody", keys) as fs:
            assert (await run(fs, "id -u"))[0] == f"{NOBODY.pw_uid}\n"
        async with as_user(address, "root", keys) as fs:
            with pytest.raises(
                PermissionError,
                match="permission denied: this server runs as nobody and cannot start commands as root",
            ):
                await run(fs, "id -u")


# --- loopback, decided by resolving -------------------------------------------------------------


def serve_briefly(*args: str) -> subprocess.CompletedProcess:
    """`ninefs serve ARGS`, stopped once it is serving (or when it exits by itself)."""
    proc = subprocess.Popen(
        ninefs_command("serve", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if first.startswith("ninefs: serving on "):
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err)


def test_exec_on_a_name_that_does_not_resolve_is_refused() -> None:
    r = serve_briefly("--machine", "--allow-exec", "--listen", "tcp!127.attacker.invalid!0")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "ninefs serve: refusing --allow-exec/--allow-control on tcp!127.attacker.invalid!0: "
        "cannot resolve 127.attacker.invalid: Name or service not known"
    ]


def test_exec_on_a_name_that_resolves_elsewhere_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = __import__("socket").getaddrinfo

    def fake(host, *args, **kwargs):  # what an attacker's DNS would answer for its 127.* name
        if host == "127.attacker.example":
            return [(2, 1, 6, "", ("203.0.113.7", 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr("socket.getaddrinfo", fake)
    for flag in ("--allow-exec", "--allow-control"):
        assert mount.cli.main(["serve", "--machine", flag, "--listen", "tcp!127.attacker.example!0"]) == 2
        assert "only loopback addresses may have them" in capsys.readouterr().err


def test_exec_on_loopback_without_keys_warns_that_every_local_user_may_run_commands() -> None:
    r = serve_briefly("--machine", "--allow-exec", "--listen", "tcp!localhost!0")
    assert r.stdout.startswith("ninefs: serving on ")
    warnings = [line for line in r.stderr.splitlines() if "every user of this machine" in line]
    assert len(warnings) == 1 and warnings[0].endswith("can run commands as root")
    r = serve_briefly("--machine", "--listen", "tcp!127.0.0.1!0")
    assert "every user of this machine" not in r.stderr
