"""Our own FUSE layer (issue #17) as a user meets it: no FUSE code where nothing mounts,
a mount by a user other than root through fusermount3, ^C of a blocked read, a mount
process killed, a read-only mount."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .fuse_helpers import mounted, needs_fuse, ninefs_mounts, sh
from .servers import ninefs_command, server_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to become nobody)")

# --- commands that do not mount never load the FUSE code -----------------------------------------

# Run before the command: every module of the FUSE layer (and what only mounting uses) fails
# to import, as on a host where it could not work. A command that reached for one would die.
NO_FUSE = """
import importlib.abc, runpy, sys
FUSE = {"mount.fuse", "mount.fileio", "mount.nodes", "mount.inodes", "mount.fuseop",
        "mount.fuseabi", "mount.fuseargs", "mount.fusecodec", "mount.fusedev",
        "mount.fusesession", "mount.mounter", "mount.nsrun", "pyfuse3"}
class NoFuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in FUSE:
            raise ImportError(f"{name}: no FUSE code on this host")
        return None
sys.meta_path.insert(0, NoFuse())
"""
CLI = NO_FUSE + 'sys.argv[0] = "ninefs"\nrunpy.run_module("mount.cli", run_name="__main__")\n'


def without_fuse(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=60, cwd=REPO, **kw
    )


@pytest.mark.slow
def test_serve_write_ls_and_cat_run_without_the_fuse_code():
    server = subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", "--listen", "tcp!127.0.0.1!0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("ninefs: serving on "), server.communicate(timeout=30)[1]
        address = line.split()[-1]
        r = without_fuse("write", address, "/greeting", input="hello\n")
        assert r.returncode == 0, r.stderr
        r = without_fuse("ls", address, "/")
        assert r.returncode == 0 and r.stdout.split() == ["greeting"], r.stderr
        r = without_fuse("cat", address, "/greeting")
        assert r.returncode == 0 and r.stdout == "hello\n", r.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "ImportError" not in err


@pytest.mark.slow
def test_the_library_imports_without_the_fuse_code():
    code = NO_FUSE + "import ninep, ninep.sync, fileserver, fileserver.serve, namespaces\nprint('ok')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


@pytest.mark.slow
def test_help_still_lists_the_mounting_commands():
    r = subprocess.run(ninefs_command("--help"), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0
    assert all(c in r.stdout for c in ("serve", "mount", "umount", "ns", "cpu"))


# --- a user other than root mounts through fusermount3 -------------------------------------------


def _as_nobody(prefix: list[str], env: dict[str, str], *cmd: str) -> list[str]:
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return [*prefix, *setpriv, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]


def _python_for_nobody(env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """An interpreter nobody can run (the mount starts itself again with it), with this
    checkout and our packages importable. Ours, unless it lives where nobody may not go
    (a pyenv under a 0700 /root): then the system's of the same version, with our packages."""
    probe = "import trio, cryptography, mount.cli"
    ours = {**env, "PYTHONPATH": REPO}
    with_ours = {**env, "PYTHONPATH": os.pathsep.join([REPO, sysconfig.get_path("purelib")])}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python, e in ((sys.executable, ours), (f"/usr/bin/{version}", with_ours)):
        # a shell first: setpriv itself still has root's rights when it execs its command
        cmd = _as_nobody([], e, "/bin/sh", "-c", f'exec "$0" -c "{probe}"', python)
        if os.path.exists(python) and subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0:
            return python, e
    pytest.skip(f"no {version} that nobody may run imports trio and ninefs here")


def _processes_naming(path: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if path.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


@contextmanager
def _where_nobody_may_use_fuse(base: str) -> Iterator[list[str]]:
    """The command prefix under which nobody may open /dev/fuse: none on a stock Debian, whose
    udev makes it 0666. Where it is root's alone (0600: no udev, as in this VM), fusermount3
    refuses ("failed to open /dev/fuse: Permission denied": it opens the device with the
    user's rights); then a private mount namespace with a 0666 node of the same device bound
    over /dev/fuse, which nothing outside it sees."""
    if (
        subprocess.run(
            _as_nobody([], {}, "/usr/bin/test", "-r", "/dev/fuse", "-a", "-w", "/dev/fuse")
        ).returncode
        == 0
    ):
        yield []
        return
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("/dev/fuse is root's alone here (no udev rule) and unshare/nsenter are missing")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
    try:
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == ours:
            assert time.monotonic() < deadline, "unshare made no mount namespace"
            time.sleep(0.02)
        prefix = ["nsenter", "-t", str(holder.pid), "-m"]
        node = os.path.join(base, "fuse")
        os.mknod(node, 0o666 | 0o020000, os.makedev(10, 229))
        os.chmod(node, 0o666)
        subprocess.run([*prefix, "mount", "--bind", node, "/dev/fuse"], check=True, timeout=30)
        yield prefix
    finally:
        holder.kill()
        holder.wait()


@needs_root
@pytest.mark.skipif(not shutil.which("fusermount3"), reason="needs fusermount3 (Debian: fuse3)")
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv")
@pytest.mark.fuse
@needs_fuse
def test_nobody_mounts_lists_reads_and_unmounts_through_fusermount3():
    # Not under tmp_path: its ancestors are root's 0700 directories, which nobody cannot enter.
    base = tempfile.mkdtemp(prefix="ninefs-nobody-", dir="/tmp")
    os.chmod(base, 0o755)
    export, mp = os.path.join(base, "export"), os.path.join(base, "mnt")
    os.mkdir(export)
    os.mkdir(mp)
    os.chown(mp, NOBODY, NOBODY)  # fusermount3 mounts only where the user may write
    with open(os.path.join(export, "hello.txt"), "w") as f:
        f.write("hello, nobody\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": base, "LC_ALL": "C.UTF-8"}
    python, env = _python_for_nobody(env)
    try:
        with server_process(export) as (address, _), _where_nobody_may_use_fuse(base) as prefix:

            def nobody(*cmd: str) -> subprocess.CompletedProcess:
                return subprocess.run(
                    _as_nobody(prefix, env, *cmd), capture_output=True, text=True, timeout=60, cwd=base
                )

            def mounts() -> str:
                return subprocess.run(
                    [*prefix, "cat", "/proc/self/mounts"], capture_output=True, text=True
                ).stdout

            try:
                r = nobody(python, "-m", "mount.cli", "mount", address, mp)
                assert r.returncode == 0, r.stderr
                line = next(m for m in mounts().splitlines() if f" {mp} " in m)
                assert " fuse.ninefs " in line and f"user_id={NOBODY}" in line
                r = nobody("ls", "-l", mp)
                assert r.returncode == 0 and "hello.txt" in r.stdout, r.stderr
                r = nobody("cat", os.path.join(mp, "hello.txt"))
                assert r.returncode == 0 and r.stdout == "hello, nobody\n", r.stderr
                r = nobody(python, "-m", "mount.cli", "umount", mp)
                assert r.returncode == 0, r.stderr
                assert f" {mp} " not in mounts()
                deadline = time.monotonic() + 20
                while _processes_naming(mp):  # the background mount process ends with its mount
                    assert time.monotonic() < deadline, f"left running: {_processes_naming(mp)}"
                    time.sleep(0.1)
            finally:
                if f" {mp} " in mounts():
                    subprocess.run([*prefix, "umount", "-l", mp], capture_output=True)
                for pid in _processes_naming(mp):  # only a failed test leaves any: ours
                    os.kill(pid, signal.SIGKILL)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- an interrupted request, a killed mount, a read-only mount -----------------------------------


@pytest.mark.fuse
@needs_fuse
def test_ctrl_c_of_a_read_blocked_on_the_server_flushes_it_and_the_mount_goes_on(tmp_path):
    export, mp, log = tmp_path / "export", tmp_path / "mnt", tmp_path / "server.log"
    export.mkdir()
    mp.mkdir()
    (export / "hello.txt").write_text("still here\n")
    os.mkfifo(export / "fifo")
    # A writer that never writes: the server's read of the FIFO waits (fileserver/local.py
    # reads FIFOs in a thread), and with it the cat through the mount.
    writer = os.open(export / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        with (
            open(log, "w") as err,
            server_process(str(export), "--trace", stderr=err) as (address, _),
            mounted(address, str(mp)),
        ):
            for k in (1, 2):  # twice: the worker answering EINTR takes up its work again
                start = time.monotonic()
                r = subprocess.run(["timeout", "-s", "INT", "2", "cat", str(mp / "fifo")], timeout=60)
                assert r.returncode != 0  # killed by the SIGINT, with nothing read
                assert time.monotonic() - start < 30
                deadline = time.monotonic() + 20
                while log.read_text().count("-> Tflush(") < k:  # the INTERRUPT became a Tflush
                    assert time.monotonic() < deadline, "no Tflush reached the server"
                    time.sleep(0.1)
                r = sh(f"cat {mp}/hello.txt && ls {mp}", timeout=60)
                assert r.returncode == 0 and r.stdout.split() == ["still", "here", "fifo", "hello.txt"], (
                    r.stderr
                )
    finally:
        os.close(writer)  # the server's abandoned read of the FIFO sees EOF and ends


@pytest.mark.fuse
@needs_fuse
def test_a_mount_process_killed_leaves_enotconn_not_a_hang_and_umount_clears_it(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with server_process() as (address, _):
        proc = subprocess.Popen(ninefs_command("mount", "--foreground", address, str(mp)), cwd=REPO)
        try:
            deadline = time.monotonic() + 30
            while str(mp) not in ninefs_mounts():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            assert sh(f"echo hi > {mp}/x && cat {mp}/x").stdout == "hi\n"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            r = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import os\ntry: os.stat({str(mp)!r})\nexcept OSError as e: print(e.errno)",
                ],
                capture_output=True,
                text=True,
                timeout=30,  # a hang fails here
            )
            assert r.stdout.strip() == str(errno.ENOTCONN), r.stderr
            r = subprocess.run(ninefs_command("umount", str(mp)), capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            assert str(mp) not in ninefs_mounts()
            assert os.listdir(mp) == []  # the directory underneath again
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if str(mp) in ninefs_mounts():
                sh(f"umount -l {mp}")


@pytest.mark.fuse
@needs_fuse
def test_a_read_only_tree_mounted_ro_refuses_every_change_with_erofs(tmp_path):
    export, mp = tmp_path / "ro", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    (export / "f").write_text("keep")
    (export / "d").mkdir()
    with server_process(str(export), "--ro") as (address, _), mounted(address, str(mp), "--ro"):
        line = next(m for m in Path("/proc/mounts").read_text().splitlines() if f" {mp} " in m)
        assert line.split()[3].split(",")[0] == "ro"
        assert (mp / "f").read_text() == "keep"
        changes = {
            "write": lambda: os.open(mp / "f", os.O_WRONLY),
            "append": lambda: os.open(mp / "f", os.O_WRONLY | os.O_APPEND),
            "create": lambda: os.open(mp / "new", os.O_CREAT | os.O_WRONLY, 0o644),
            "mkdir": lambda: os.mkdir(mp / "e"),
            "unlink": lambda: os.unlink(mp / "f"),
            "rmdir": lambda: os.rmdir(mp / "d"),
            "rename": lambda: os.rename(mp / "f", mp / "g"),
            "chmod": lambda: os.chmod(mp / "f", 0o600),
            "truncate": lambda: os.truncate(mp / "f", 0),
            "utime": lambda: os.utime(mp / "f", (0, 0)),
        }
        for what, change in changes.items():
            with pytest.raises(OSError) as e:
                change()
            assert e.value.errno == errno.EROFS, what
        r = sh(f"echo x > {mp}/f")
        assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert (export / "f").read_text() == "keep"
    assert sorted(os.listdir(export)) == ["d", "f"]
