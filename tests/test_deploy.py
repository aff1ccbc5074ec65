"""Deployment on engines people already run (issue #19): systemd socket activation of
`ninefs serve --listen sd`, the unit files of deploy/systemd, and the Kubernetes
manifests of deploy/kubernetes.

The servers are real subprocesses started by systemd's own `systemd-socket-activate`
(the sockets are made and passed exactly as systemd passes them), or by a shell that
puts a socket this test made at fd 3, for the sockets systemd would never pass.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

import ninep
import ninep.sync
from ninep import ORDWR, OREAD
from ninep.auth import authorize, generate_key, parse_public_line

from .servers import ninefs_command, server_process

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate not installed (Debian package systemd)"
)
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    """Until systemd-socket-activate has its socket (a connect lands in the backlog)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"systemd-socket-activate exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}: {log.read_text()}")


@contextmanager
def socket_activated(
    tmp_path: Path, argv: list[str], *, unix: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`systemd-socket-activate -l 127.0.0.1:PORT [-l UNIX] -- ARGV` (one server for all
    connections, Accept=no); yields the TCP dial string, the process and its log."""
    port = free_port()
    log = tmp_path / f"activate-{port}.log"
    listen = ["-l", f"127.0.0.1:{port}"] + (["-l", str(unix)] if unix else [])
    assert ACTIVATE is not None
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [ACTIVATE, *listen, "--", *argv], stdout=err, stderr=err, cwd=ROOT, start_new_session=True
        )
    try:
        wait_listening(port, proc, log)
        yield f"tcp!127.0.0.1!{port}", proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server (exec'd in its place) and what it ran
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if unix is not None and unix.exists():
            unix.unlink()


def serve_on_fds(
    fds: list[int], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`ninefs serve ARGS --listen sd` with `fds` at 3, 4, ... and LISTEN_PID its own pid,
    as systemd would start it (LISTEN_FDS and the rest from `env`)."""
    moves = [f"exec {200 + i}<&{fd} {fd}<&-" for i, fd in enumerate(fds)]
    moves += [f"exec {3 + i}<&{200 + i} {200 + i}<&-" for i in range(len(fds))]
    script = "; ".join([*moves, 'export LISTEN_PID="${FAKE_LISTEN_PID:-$$}"', 'exec "$@"'])
    return subprocess.run(
        ["bash", "-c", script, "bash", *ninefs_command("serve", *args, "--listen", "sd")],
        env={**os.environ, **(env or {})},
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def listening_inode(proc: subprocess.Popen) -> str:
    """What /proc says fd 3 of the server (the socket from systemd) is: socket:[N]."""
    return os.readlink(f"/proc/{proc.pid}/fd/3")


async def run_through_cmd(address: str, command: str, *, key: Any = None) -> str:
    """Run `command` through the server's /cmd (cmd(3): clone, ctl, data); its stdout."""
    async with ninep.connect(address, key=key, connect_timeout=20, timeout=60) as fs:
        ctl, _ = await fs.walk_fid("cmd/clone")
        await fs.conn.open(ctl, ORDWR)
        n = int(await fs.conn.read(ctl, 0, 64))
        data, _ = await fs.walk_fid(f"cmd/{n}/data")
        await fs.conn.open(data, OREAD)
        await fs.conn.write(ctl, 0, f"exec {command}".encode())
        out, offset = [], 0
        while chunk := await fs.conn.read(data, offset, 8192):
            out.append(chunk)
            offset += len(chunk)
        await fs._clunk(data)
        await fs._clunk(ctl)
        return b"".join(out).decode()


def unit_exec_start(unit: str) -> list[str]:
    text = (DEPLOY / "systemd" / unit).read_text()
    line = re.search(r"^ExecStart=(.*)$", text, re.M)
    assert line is not None, f"{unit} has no ExecStart="
    return shlex.split(line.group(1))


def machine_key(tmp_path: Path) -> tuple[Path, Path]:
    """A key and an authorized-keys file that lets it in as root: (key, authorized_keys)."""
    key, keys = tmp_path / "id_ed25519", tmp_path / "authorized_keys"
    authorize(str(keys), parse_public_line(generate_key(str(key), "deploy-test"), str(key)), "root")
    return key, keys


# systemd socket activation


@needs_activate
def test_a_directory_is_read_through_systemds_tcp_and_unix_sockets(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "motd").write_text("from systemd's socket\n")
    unix = tmp_path / "9p.sock"
    argv = ninefs_command("serve", str(export), "--listen", "sd")
    with socket_activated(tmp_path, argv, unix=unix) as (address, _, log):
        with ninep.sync.connect(address, connect_timeout=20) as fs:
            assert fs.read_bytes("motd") == b"from systemd's socket\n"
        with ninep.sync.connect(f"unix!{unix}", connect_timeout=20) as fs:
            assert [s.name for s in fs.ls("/")] == ["motd"]
        ls = subprocess.run(
            ninefs_command("cat", address, "motd"), capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert ls.returncode == 0, ls.stderr
        assert ls.stdout == "from systemd's socket\n"
    assert f"serving on {address}" in log.read_text()


@needs_activate
def test_a_silent_connection_on_systemds_socket_is_closed_at_the_handshake_deadline(tmp_path: Path) -> None:
    argv = ninefs_command("serve", str(tmp_path), "--listen", "sd", "--handshake-timeout", "1")
    with socket_activated(tmp_path, argv) as (address, _, log):
        port = int(address.rsplit("!", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
            assert silent.recv(1) == b""  # closed by the server, not by our timeout
        with ninep.sync.connect(address, connect_timeout=20) as fs:
            fs.ls("/")  # and the server goes on serving
    assert "handshake not done within 1" in log.read_text()


@needs_activate
async def test_commands_run_through_cmd_inherit_neither_the_variables_nor_the_socket(tmp_path: Path) -> None:
    argv = ninefs_command("serve", "--machine", "--allow-exec", str(tmp_path), "--listen", "sd")
    with socket_activated(tmp_path, argv) as (address, proc, _):
        out = await run_through_cmd(
            address,
            'sh -c \'echo "${LISTEN_PID-none} ${LISTEN_FDS-none} ${LISTEN_FDNAMES-none}"; '
            "ls -l /proc/$$/fd'",
        )
        inode = listening_inode(proc)
    assert out.splitlines()[0] == "none none none"
    assert inode.startswith("socket:[")
    assert inode not in out


@needs_activate
@pytest.mark.skipif(os.geteuid() != 0, reason="the unit runs commands as the key's user: needs root")
async def test_the_units_command_line_runs_commands_for_an_authorized_key(tmp_path: Path) -> None:
    key, keys = machine_key(tmp_path)
    exec_start = unit_exec_start("ninefs.service")
    assert exec_start[0].endswith("/ninefs")
    args = [str(keys) if a == "/etc/ninefs/authorized_keys" else a for a in exec_start[1:]]
    assert str(keys) in args and args[-2:] == ["--listen", "sd"]
    with socket_activated(tmp_path, ninefs_command(*args)) as (address, proc, _):
        out = await run_through_cmd(address, "sh -c 'echo ran as $(id -un); ls -l /proc/$$/fd'", key=key)
        inode = listening_inode(proc)
        stranger = tmp_path / "stranger"
        generate_key(str(stranger), "not authorized")
        with pytest.raises(ninep.NinePError):  # a key not in the file: no attach
            async with ninep.connect(address, key=str(stranger), connect_timeout=20) as fs:
                await fs.ls("/")
    assert out.splitlines()[0] == "ran as root"
    assert inode not in out


def test_listen_sd_outside_systemd_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    r = subprocess.run(
        ninefs_command("serve", str(tmp_path), "--listen", "sd"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["ninefs serve: --listen sd: no sockets from systemd (LISTEN_FDS unset)"]


@contextmanager
def passed(kind: str) -> Iterator[list[int]]:
    """File descriptors systemd would never pass to a ListenStream= service."""
    with ExitStack() as opened:
        if kind == "listening":
            f: Any = opened.enter_context(socket.socket())
            f.bind(("127.0.0.1", 0))
            f.listen()
        elif kind == "connected":
            f, other = socket.socketpair()
            opened.enter_context(f)
            opened.enter_context(other)
        elif kind == "datagram":
            f = opened.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            f.bind(("127.0.0.1", 0))
        else:
            f = opened.enter_context(open(os.devnull))
        yield [f.fileno()]


@pytest.mark.parametrize(
    ("kind", "env", "says"),
    [
        ("listening", {"LISTEN_FDS": "1", "FAKE_LISTEN_PID": "1"}, "are for process 1, not this one"),
        ("listening", {"LISTEN_FDS": "one"}, "LISTEN_FDS='one' is not a number"),
        ("listening", {"LISTEN_FDS": "0"}, "no sockets from systemd (LISTEN_FDS=0)"),
        ("listening", {"LISTEN_FDS": "2"}, "fd 4 is not open"),
        ("listening", {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, "LISTEN_FDNAMES names 2 sockets"),
        ("connected", {"LISTEN_FDS": "1"}, "fd 3 is a connection, not a listening socket (use Accept=no)"),
        ("datagram", {"LISTEN_FDS": "1"}, "fd 3 is not a stream socket"),
        ("file", {"LISTEN_FDS": "1"}, "fd 3 is not a socket"),
    ],
)
def test_listen_sd_refuses_what_systemd_would_not_pass_in_one_line(
    tmp_path: Path, kind: str, env: dict[str, str], says: str
) -> None:
    with passed(kind) as fds:
        r = serve_on_fds(fds, str(tmp_path), env=env)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ninefs serve: --listen sd: ")
    assert says in lines[0]


def test_allow_exec_on_an_open_systemd_socket_without_keys_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        r = serve_on_fds([s.fileno()], "--machine", "--allow-exec", env={"LISTEN_FDS": "1"})
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"ninefs serve: refusing --allow-exec/--allow-control on tcp!0.0.0.0!{port}: "
        "without --authorized-keys only loopback addresses may have them"
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's ninefs.
    ninefs = Path(sys.executable).parent / "ninefs"
    units = sorted((DEPLOY / "systemd").iterdir())
    assert {u.name for u in units} >= {"ninefs.socket", "ninefs.service"}
    for unit in units:
        text = unit.read_text().replace("/opt/ninefs/bin/ninefs", str(ninefs))
        (tmp_path / unit.name).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / u.name) for u in units)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Unknown keys and bad values are only warnings (exit 0): none is allowed either.
    assert (r.returncode, r.stderr) == (0, "")


# Kubernetes

MANIFESTS = sorted(p.name for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_the_kubernetes_manifests_pass_strict_validation(manifest: str) -> None:
    validate = Path(sys.executable).parent / "kubernetes-validate"
    if not validate.exists():
        pytest.skip("kubernetes-validate not installed (pip install -e '.[test]')")
    r = subprocess.run(
        [str(validate), "--strict", str(DEPLOY / "kubernetes" / manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout and "WARN" not in r.stdout + r.stderr


def load_yaml(name: str) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DEPLOY / "kubernetes" / name).read_text())


def test_the_kustomization_holds_every_manifest_and_makes_the_secret_the_daemonset_mounts() -> None:
    kustomization = load_yaml("kustomization.yaml")
    assert sorted([*kustomization["resources"], "secret.yaml"]) == MANIFESTS
    (generated,) = kustomization["secretGenerator"]
    (volume,) = [
        v for v in load_yaml("daemonset.yaml")["spec"]["template"]["spec"]["volumes"] if "secret" in v
    ]
    assert generated["name"] == volume["secret"]["secretName"] == load_yaml("secret.yaml")["metadata"]["name"]
    assert generated["files"] == ["authorized_keys"]


def daemonset_container() -> dict[str, Any]:
    (container,) = load_yaml("daemonset.yaml")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_daemonset_server_answers_its_own_readiness_probe(tmp_path: Path) -> None:
    container = daemonset_container()
    _, keys = machine_key(tmp_path)
    args = [str(keys) if a == "/etc/ninefs/authorized_keys" else a for a in container["args"]]
    assert args[0] == "serve" and args[-2:] == ["--listen", "tcp!0.0.0.0!564"]
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["ninefs", "ping"] and probe[2] == "tcp!127.0.0.1!564"
    with server_process(*args[1:-2], listen="tcp!127.0.0.1!0") as (address, _):
        r = subprocess.run(
            ninefs_command(*probe[1:2], address), capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert r.returncode == 0, r.stderr
    r = subprocess.run(
        ninefs_command(*probe[1:2], address), capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert r.returncode == 1  # and a server that is gone fails it


def test_the_image_runs_what_the_daemonset_runs() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    entry = re.search(r"^ENTRYPOINT (.*)$", dockerfile, re.M)
    cmd = re.search(r"^CMD (.*)$", dockerfile, re.M)
    assert entry is not None and cmd is not None
    assert json.loads(entry.group(1)) == ["ninefs"]
    assert json.loads(cmd.group(1)) == daemonset_container()["args"]
