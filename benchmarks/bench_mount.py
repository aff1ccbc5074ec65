"""ninefs as a mounted file system, side by side with the alternatives, over the same data.

    .venv/bin/python benchmarks/bench_mount.py [--quick] [--json PATH] [--configs direct,ninefs,...]
                                              [--passes N] [--profile DIR] [--no-install] [--keep-going]

Configurations (each one works in its own subdirectory of one export directory
under /tmp, so the disk is the same for all):

  direct   the exported directory itself, no FUSE
  ninefs   `ninefs serve DIR` + `ninefs mount tcp!127.0.0.1!PORT MP` (default --cache 1)
  sshfs    sshfs to a private sshd the benchmark starts on 127.0.0.1 (own host and user
           keys in the temp dir), tuned for speed on loopback:
             -o Ciphers=aes128-gcm@openssh.com,Compression=no,kernel_cache,max_conns=2,dir_cache=yes
           kernel_cache: the kernel keeps a file's pages across opens (nothing else writes
           the export during a pass); max_conns=2: two SSH connections, one per core here;
           dir_cache=yes: sshfs's own cache of names and attributes (its default, 20 s);
           the kernel's entry/attr timeouts stay at libfuse's 1 s, as for ninefs and the
           ceiling. An option that `sshfs -h` does not list is left out, and the note says
           so. "n/a" when sshfs/openssh-server cannot be installed
  ceiling  benchmarks/passthrough.py: a bare passthrough on our FUSE session (no network, same
           kernel options as ninefs: 1 s entry/attr timeouts, no writeback cache)

Rows, per configuration, in this order:

  seq write    one file, 1 MiB writes, fsync before close          MiB/s
  seq read     that file after `sync; echo 3 > drop_caches`        MiB/s  (cold: the page
               cache of the mount AND of the disk are dropped; the disk reads at ~1.8 GB/s)
  create       N files of 4 KiB (open O_CREAT, write, close)       files/s
  stat         os.stat of those N files right after creating them  stats/s (kernel and
               user-space caches do what they do: this is what a user gets)
  stat p50/p99 latency of each os.stat of the pass above           µs
  read small   open, read, close each of the N files (warm)        files/s
  ls -l        `ls -l` of the N-file directory (a new process)    s
  cold stat    os.stat of the N files after drop_caches           stats/s (+ p50 in µs)
  unlink       os.unlink of the N files                            files/s
  tar          `tar cf - TREE | cat > /dev/null` of a tree of M files after drop_caches   s

Workload rows, then, on a generated tree of W files (2,000; quick 300): directories
p*/m*/s* three deep (every 10th file one level up), 70 % text files of words (200 B to
16 KiB, .txt .py .c .md; every 7th holds one line with the word "zyzzyva") and 30 %
binary (256 B to 64 KiB), sizes log-uniform, the same bytes every run. It is made once
per run on local disk outside the export (TMP/src), with a bare git repository of it
(one commit, packed) and a tar archive of its first A files (500; quick 150). Each row
runs real programs (a new process) and is timed in seconds:

  git clone        git clone -q --no-hardlinks file://TMP/src/repo.git DEST, onto the mount
  git status cold  `git status` in that clone after drop_caches (it must say "working tree
                   clean"; the first status may re-read files whose mtime is too close to
                   the index's and rewrite the index, as git does)
  git status warm  the same again, at once
  tar xf           the A-file archive extracted onto the mount (`tar xf ARCHIVE -C DEST`)
  rsync -a         the tree, from local disk into a new directory on the mount
  du -s            that tree, after drop_caches
  find | wc -l     that tree, after drop_caches (the count is checked)
  grep -r          `grep -r zyzzyva` over that tree, after drop_caches (matches checked)
  rm -rf           that tree, right after grep (no drop_caches)
  sqlite 200 tx    python's sqlite3, a database file on the mount, 200 transactions of one
                   INSERT and commit each, in-process; sqlite's defaults: journal_mode=DELETE,
                   synchronous=FULL, so every commit creates, writes, fsyncs and deletes a
                   -journal file and writes and fsyncs the database

The local sources are read into the page cache just before git clone, tar xf and rsync,
so no configuration pays for the local disk. "After drop_caches" drops the kernel's
caches only: sshfs's own 20 s cache of names and attributes and ninefs' 10 s
--attr-cache live in the daemons and survive it. A workload row that fails is n/a, the
reason is printed under the table, the other rows go on, and the exit status is 1.
git runs with a config of its own (GIT_CONFIG_GLOBAL in the temp dir, no system config,
LC_ALL=C). git, rsync, tar, grep, findutils and coreutils are installed with apt-get if
missing (unless --no-install; their rows are then n/a).

Ratios compare ninefs with each other column and are always "how many times better
ninefs is": rate_ninefs / rate_other for rates, time_other / time_ninefs for times.
So > 1 means ninefs wins, < 1 means it loses (0.25 = four times worse).

--profile DIR records the ninefs mount and server processes with py-spy (raw
collapsed stacks, one file per row and process) while the rows run; py-spy stops
the process to sample, so numbers of a profiled run are not for comparing.

Needs root (drop_caches, sshd, apt-get), /dev/fuse and fusermount3. Every mount is
unmounted and every process it started is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import math
import os
import platform
import random
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

try:
    import sqlite3
except ImportError:  # a Python built without libsqlite3: the sqlite row is n/a
    sqlite3 = None  # type: ignore[assignment]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
MiB = 1 << 20
CONFIGS = ("direct", "ninefs", "sshfs", "ceiling")
CACHE = 1.0  # the ceiling's entry/attr timeout (libfuse's default, as sshfs gives the kernel)


@dataclass(frozen=True)
class Sizes:
    big: int  # bytes of the sequential file
    files: int  # small files
    small: int  # bytes of each small file
    tree: int  # files in the tar tree
    wl_files: int = 2000  # files in the generated workload tree
    wl_archive: int = 500  # files in the tar xf archive (the first of that tree)
    sqlite_tx: int = 200  # transactions of the sqlite row


FULL = Sizes(big=256 * MiB, files=2000, small=4096, tree=500, wl_files=2000, wl_archive=500, sqlite_tx=200)
QUICK = Sizes(big=32 * MiB, files=300, small=4096, tree=150, wl_files=300, wl_archive=150, sqlite_tx=200)


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool


ROWS = (
    Row("seq_write", "seq write {big}", "MiB/s", True),
    Row("seq_read", "seq read {big} (cold)", "MiB/s", True),
    Row("create", "create {files} x 4 KiB", "files/s", True),
    Row("stat", "stat just-created", "stats/s", True),
    Row("stat_p50", "  stat p50", "µs", False),
    Row("stat_p99", "  stat p99", "µs", False),
    Row("read_small", "read 4 KiB files", "files/s", True),
    Row("ls_l", "ls -l {files}-file dir", "s", False),
    Row("cold_stat", "cold stat (drop_caches)", "stats/s", True),
    Row("cold_stat_p50", "  cold stat p50", "µs", False),
    Row("unlink", "unlink {files}", "files/s", True),
    Row("tar", "tar {tree}-file tree (cold)", "s", False),
    Row("git_clone", "git clone ({wl} files)", "s", False),
    Row("git_status_cold", "git status (cold)", "s", False),
    Row("git_status_warm", "git status (warm)", "s", False),
    Row("tar_x", "tar xf {archive}-file archive", "s", False),
    Row("rsync", "rsync -a {wl}-file tree in", "s", False),
    Row("du", "du -s tree (cold)", "s", False),
    Row("find", "find | wc -l (cold)", "s", False),
    Row("grep", "grep -r WORD (cold)", "s", False),
    Row("rm_rf", "rm -rf tree", "s", False),
    Row("sqlite", "sqlite {tx} tx (journal DELETE)", "s", False),
)
# The programs each workload row needs: missing ones make the row n/a.
ROW_TOOLS = {
    "git_clone": ("git",),
    "git_status_cold": ("git",),
    "git_status_warm": ("git",),
    "tar_x": ("tar",),
    "rsync": ("rsync",),
    "du": ("du",),
    "find": ("find", "wc"),
    "grep": ("grep",),
    "rm_rf": ("rm",),
    "sqlite": ("sqlite3",),
}
# Debian packages of those programs (sqlite3 is python's module: apt cannot add it).
TOOL_PACKAGES = {
    "git": "git",
    "rsync": "rsync",
    "tar": "tar",
    "grep": "grep",
    "find": "findutils",
    "du": "coreutils",
    "wc": "coreutils",
    "rm": "coreutils",
}


# --- processes and clean-up ---------------------------------------------------------------------


class Cleanup:
    """Clean-up actions, run last-in first-out; each one is tried even if another fails."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self.actions.append((what, fn))

    def run(self) -> None:
        # Ctrl-C while cleaning up must not leave mounts behind: ignore it until done.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self.actions:
                what, fn = self.actions.pop()
                try:
                    fn()
                except Exception as e:
                    print(f"bench_mount: cleaning up {what}: {e}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, old)


def stop_process(proc: subprocess.Popen | int, timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL: one process we started (a Popen or a pid we found)."""
    if isinstance(proc, subprocess.Popen):
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        return
    pid = proc
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def find_pid(*needles: str) -> int | None:
    """The pid of a process whose command line holds every needle (a daemon that forked away)."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if all(any(n == a or n in a for a in args) for n in needles):
            return int(d)
    return None


def is_mounted(mp: str) -> bool:
    mp = os.path.realpath(mp)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == mp for line in f)


def unmount(mp: str) -> None:
    if not is_mounted(mp):
        return
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "umount"
    for args in (["-u"], ["-u", "-z"]):
        cmd = [tool, *args, mp] if tool != "umount" else ["umount", *(["-l"] if "-z" in args else []), mp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            return
    raise RuntimeError(f"could not unmount {mp}: {r.stderr.strip()}")


def wait_mounted(mp: str, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(mp):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mounting {mp}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mounting {mp}: not mounted after {timeout} s")
        time.sleep(0.05)


def remove_tmp(tmp: str) -> None:
    with open("/proc/self/mounts") as f:
        left = [line.split()[1] for line in f if line.split()[1].startswith(tmp + "/")]
    if left:
        raise RuntimeError(f"still mounted, {tmp} left in place: {', '.join(left)}")
    shutil.rmtree(tmp, ignore_errors=True)


def drop_caches() -> None:
    """Write back everything, then drop the page cache, dentries and inodes (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout, or an error if it says nothing in time."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"{proc.args[:4]}: no output after {timeout} s")
        chunk = os.read(fd, 1)
        if not chunk:
            raise RuntimeError(f"{proc.args[:4]}: exited with {proc.wait()}")
        buf += chunk
    return buf.decode().strip()


# --- configurations ------------------------------------------------------------------------------


@dataclass
class Config:
    name: str
    root: str | None = None  # where the benchmark reads and writes; None: n/a
    why_na: str = ""
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid, for py-spy
    note: str = ""


def setup_direct(export: str, tmp: str, cleanup: Cleanup) -> Config:
    return Config("direct", root=export, note="the export directory itself")


def setup_ninefs(export: str, tmp: str, cleanup: Cleanup) -> Config:
    with open(os.path.join(tmp, "ninefs-serve.log"), "wb") as log:
        server = subprocess.Popen(
            [PY, "-m", "mount.cli", "serve", export, "--listen", "tcp!127.0.0.1!0"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    cleanup.push("ninefs server", lambda: stop_process(server))
    line = read_line(server, 20)
    prefix = "ninefs: serving on "
    if not line.startswith(prefix):
        raise RuntimeError(f"ninefs serve said {line!r}")
    addr = line[len(prefix) :]
    mp = os.path.join(tmp, "mnt-ninefs")
    os.mkdir(mp)
    r = subprocess.run(
        [PY, "-m", "mount.cli", "mount", addr, mp],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid = find_pid("mount.cli", "--foreground", mp)
    if pid is not None:
        cleanup.push("ninefs mount process", lambda: stop_process(pid))
    cleanup.push("ninefs mount", lambda: _ninefs_umount(mp))
    if r.returncode != 0:
        raise RuntimeError(f"ninefs mount failed: {r.stderr.strip()}")
    wait_mounted(mp, None, 10)
    pids = {"server": server.pid}
    if pid is not None:
        pids["mount"] = pid
    return Config("ninefs", root=mp, pids=pids, note=f"{addr}, default caches (--attr-cache 10)")


def _ninefs_umount(mp: str) -> None:
    if not is_mounted(mp):
        return
    r = subprocess.run([PY, "-m", "mount.cli", "umount", mp], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        unmount(mp)


_apt_updated = False


def apt_install(packages: list[str], install: bool) -> str:
    """apt-get install packages: '' when it ran and said yes, else why not."""
    global _apt_updated
    if not install:
        return "--no-install"
    if os.getuid() != 0 or not shutil.which("apt-get"):
        return "cannot apt-get install (not root)"
    print(f"bench_mount: installing {' '.join(packages)} with apt-get ...", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        _apt_updated = True
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return ""


def ensure_sshfs(install: bool) -> str:
    """'' when sshfs and sshd are there (installing them if allowed), else why not."""

    def have() -> bool:
        return (
            bool(shutil.which("sshfs"))
            and os.path.exists("/usr/sbin/sshd")
            and bool(shutil.which("ssh-keygen"))
        )

    if have():
        return ""
    why = apt_install(["sshfs", "openssh-server", "openssh-client"], install)
    if why or not have():
        return f"sshfs/sshd missing ({why or 'not there after apt-get install'})"
    return ""


def ensure_tools(install: bool) -> dict[str, str]:
    """The workload rows' programs: installs missing ones if allowed; returns tool -> why missing."""
    missing = sorted(t for t in TOOL_PACKAGES if not shutil.which(t))
    why = ""
    if missing:
        why = apt_install(sorted({TOOL_PACKAGES[t] for t in missing}), install)
    out = {
        t: f"{t} missing ({why or 'not there after apt-get install'})" for t in missing if not shutil.which(t)
    }
    if sqlite3 is None:
        out["sqlite3"] = "this Python has no sqlite3 module (apt-get cannot add it)"
    return out


# sshfs options for speed on loopback (see the docstring); each is used if `sshfs -h` lists it.
SSHFS_TUNED = ("kernel_cache", "max_conns=2", "dir_cache=yes")


def sshfs_tuned_options() -> tuple[list[str], list[str]]:
    """(the options of SSHFS_TUNED this sshfs has, those it lacks)."""
    r = subprocess.run(["sshfs", "-h"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    text = r.stdout + r.stderr
    have = [o for o in SSHFS_TUNED if f"-o {o.split('=')[0]}" in text]
    return have, [o for o in SSHFS_TUNED if o not in have]


def setup_sshfs(export: str, tmp: str, cleanup: Cleanup, install: bool, tuned: bool = False) -> Config:
    """sshfs of export; tuned adds SSHFS_TUNED (bench_mount), else sshfs's defaults (pjdfstest)."""
    why = ensure_sshfs(install)
    if why:
        return Config("sshfs", why_na=why)
    d = os.path.join(tmp, "ssh")
    os.mkdir(d, 0o700)
    host_key, user_key = os.path.join(d, "host_key"), os.path.join(d, "user_key")
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    shutil.copy(user_key + ".pub", os.path.join(d, "authorized_keys"))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    sftp = (
        "/usr/lib/openssh/sftp-server" if os.path.exists("/usr/lib/openssh/sftp-server") else "internal-sftp"
    )
    port = free_port()
    conf = os.path.join(d, "sshd_config")
    with open(conf, "w") as f:
        f.write(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nX11Forwarding no\n"
            "Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com\nLogLevel ERROR\n"
            f"Subsystem sftp {sftp}\n"
        )
    with open(os.path.join(d, "sshd.log"), "wb") as log:
        sshd = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", conf], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    cleanup.push("sshd", lambda: stop_process(sshd))
    deadline = time.monotonic() + 10
    while True:
        if sshd.poll() is not None:
            raise RuntimeError(f"sshd exited with {sshd.returncode}; see {d}/sshd.log")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            break
        if time.monotonic() > deadline:
            raise RuntimeError("sshd does not listen")
        time.sleep(0.05)
    mp = os.path.join(tmp, "mnt-sshfs")
    os.mkdir(mp)
    opts = [
        f"IdentityFile={user_key}",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "LogLevel=ERROR",
        "Ciphers=aes128-gcm@openssh.com",
        "Compression=no",
    ]
    note = "aes128-gcm"
    if tuned:
        have, lacking = sshfs_tuned_options()
        opts += have
        note = ",".join(["Ciphers=aes128-gcm@openssh.com", "Compression=no", *have])
        if lacking:
            note += f" (this sshfs lacks {','.join(lacking)})"
    cleanup.push("sshfs mount", lambda: unmount(mp))
    r = subprocess.run(
        ["sshfs", "-p", str(port), "-o", ",".join(opts), f"{getpass.getuser()}@127.0.0.1:{export}", mp],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid = find_pid("sshfs", mp)
    if pid is not None:
        cleanup.push("sshfs process", lambda: stop_process(pid))
    if r.returncode != 0:
        raise RuntimeError(f"sshfs failed: {r.stderr.strip()}")
    wait_mounted(mp, None, 10)
    return Config("sshfs", root=mp, pids={"sshfs": pid or 0}, note=f"sshd on 127.0.0.1:{port}, {note}")


def setup_ceiling(export: str, tmp: str, cleanup: Cleanup) -> Config:
    mp = os.path.join(tmp, "mnt-ceiling")
    os.mkdir(mp)
    with open(os.path.join(tmp, "passthrough.log"), "wb") as log:
        proc = subprocess.Popen(
            [PY, os.path.join(REPO, "benchmarks", "passthrough.py"), export, mp, "--cache", str(CACHE)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    cleanup.push("passthrough process", lambda: stop_process(proc))
    cleanup.push("passthrough mount", lambda: unmount(mp))
    if read_line(proc, 20) != "ready":
        raise RuntimeError("passthrough.py did not say ready")
    wait_mounted(mp, proc, 10)
    return Config(
        "ceiling",
        root=mp,
        pids={"passthrough": proc.pid},
        note="passthrough on our own FUSE session, no network",
    )


# --- the measurements ---------------------------------------------------------------------------------


class Profiler:
    """py-spy on some processes for the length of a `with` block (one file per row and process)."""

    def __init__(self, outdir: str | None, pids: dict[str, int], suffix: str = "") -> None:
        self.outdir, self.pids, self.suffix = outdir, pids, suffix
        self.spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")

    @contextlib.contextmanager
    def row(self, key: str):
        if not self.outdir or not self.pids:
            yield
            return
        procs = []
        try:
            for role, pid in self.pids.items():
                out = os.path.join(self.outdir, f"{role}-{key}{self.suffix}.txt")
                p = subprocess.Popen(
                    [self.spy, "record", "--format", "raw", "--rate", "250", "-o", out, "--pid", str(pid)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                procs.append(p)
            time.sleep(0.5)  # let py-spy attach
            yield
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def stat_pass(paths: list[str]) -> tuple[float, list[float]]:
    lat = []
    pc = time.perf_counter_ns
    stat = os.stat
    t0 = time.perf_counter()
    for p in paths:
        a = pc()
        stat(p)
        lat.append((pc() - a) / 1000)
    return time.perf_counter() - t0, lat


def make_tree(root: str, n: int) -> int:
    """n files of 1-64 KiB in n/20 directories (two levels); returns the bytes written."""
    rnd = random.Random(9)
    total = 0
    blob = rnd.randbytes(64 * 1024)
    for i in range(n):
        d = os.path.join(root, f"d{i // 100:02d}", f"e{(i // 20) % 5}")
        os.makedirs(d, exist_ok=True)
        size = rnd.randint(1, 64) * 1024
        with open(os.path.join(d, f"f{i:04d}.dat"), "wb") as f:
            f.write(blob[:size])
        total += size
    return total


NEEDLE = "zyzzyva"  # what grep -r looks for: one line in every 7th text file, nowhere else
_TEXT = """the of and to in is it that for on with as was at by be this from or an are not but
    have you they which one all were when we there can been has more if will would so what
    out up about into than them then some could time these two may first any like over
    such make only new most very after also many where just those through file server
    tree name mount read write open close walk stat clunk remove create directory kernel
    buffer cache page inode entry attribute socket message reply request version error
    length offset count mode owner group return value table index import print range list
    string integer struct static void const unsigned while break switch case default"""
WORDS = tuple(_TEXT.split())  # what the text files are made of


@dataclass
class Workload:
    """The generated tree and what is made of it, on local disk outside the export."""

    base: str  # TMP/src: everything below is read into the page cache before a row copies it in
    tree: str
    files: int
    dirs: int  # directories below tree
    nbytes: int
    needles: int  # lines holding NEEDLE
    repo: str  # a bare git repository of the tree
    archive: str  # a tar of the first files of the tree
    archived: int  # files in it
    env: dict[str, str]  # for git: a config of our own, C locale
    missing: dict[str, str]  # tool -> why it is missing


def make_workload_tree(root: str, n: int) -> tuple[list[str], int, int, int]:
    """n files in p*/m*/s* directories, the same bytes every run: (file paths in order, dirs,
    bytes, lines holding NEEDLE). 250 files per p, 50 per m, 9 per s and every 10th file in
    its m; 70 % text of WORDS, 200 B-16 KiB, 30 % binary, 256 B-64 KiB, sizes log-uniform."""
    rnd = random.Random(17)
    dirs: set[str] = set()
    files: list[str] = []
    total = needles = texts = 0
    for i in range(n):
        mid = os.path.join(f"p{i // 250}", f"m{i // 50 % 5}")
        where = mid if i % 10 == 0 else os.path.join(mid, f"s{i // 10 % 5}")
        for d in (f"p{i // 250}", mid, where):
            if d not in dirs:
                dirs.add(d)
                os.makedirs(os.path.join(root, d), exist_ok=True)
        if rnd.random() < 0.7:
            texts += 1
            ext = rnd.choice((".txt", ".py", ".c", ".md"))
            size = int(math.exp(rnd.uniform(math.log(200), math.log(16 * 1024))))
            lines, length = [], 0
            while length < size:
                line = " ".join(rnd.choices(WORDS, k=rnd.randint(3, 12)))
                lines.append(line)
                length += len(line) + 1
            if texts % 7 == 0:
                lines.insert(rnd.randrange(len(lines) + 1), f"here is the {NEEDLE} of file {i}")
                needles += 1
            data = ("\n".join(lines) + "\n").encode()
        else:
            ext = ".bin"
            data = rnd.randbytes(int(math.exp(rnd.uniform(math.log(256), math.log(64 * 1024)))))
        rel = os.path.join(where, f"f{i:04d}{ext}")
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        files.append(rel)
        total += len(data)
    return files, len(dirs), total, needles


def run_tool(
    cmd: list[str] | str, what: str, cwd: str | None = None, env: dict[str, str] | None = None
) -> bytes:
    """Run a program (a str: a bash command line with pipefail) and return its stdout."""
    shell = isinstance(cmd, str)
    r = subprocess.run(
        f"set -o pipefail; {cmd}" if shell else cmd,
        shell=shell,
        executable="/bin/bash" if shell else None,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=1800,
    )
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{what} exited with {r.returncode}: {' | '.join(err[-3:]) or 'no message'}")
    return r.stdout


def make_workload(tmp: str, sizes: Sizes, missing: dict[str, str]) -> Workload:
    base = os.path.join(tmp, "src")
    tree = os.path.join(base, "tree")
    os.makedirs(tree)
    files, ndirs, nbytes, needles = make_workload_tree(tree, sizes.wl_files)
    gitconfig = os.path.join(tmp, "gitconfig")
    with open(gitconfig, "w") as f:
        f.write(
            "[user]\n\tname = bench_mount\n\temail = bench_mount@localhost\n"
            "[safe]\n\tdirectory = *\n[gc]\n\tauto = 0\n[init]\n\tdefaultBranch = main\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        LC_ALL="C",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=gitconfig,
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_DATE="2026-01-01T00:00:00Z",
        GIT_COMMITTER_DATE="2026-01-01T00:00:00Z",
    )
    repo = os.path.join(base, "repo.git")
    if "git" not in missing:
        git = ["git", f"--git-dir={repo}", f"--work-tree={tree}"]
        run_tool(["git", "init", "-q", "--bare", repo], "git init", env=env)
        run_tool([*git, "add", "-A"], "git add", env=env)
        run_tool([*git, "commit", "-q", "-m", f"{sizes.wl_files} generated files"], "git commit", env=env)
        run_tool(["git", f"--git-dir={repo}", "gc", "-q"], "git gc", env=env)
    archive = os.path.join(base, "archive.tar")
    chosen = files[: sizes.wl_archive]
    if "tar" not in missing:
        names: list[str] = []
        for rel in chosen:  # each directory before what is in it, as tar cf of a tree would list them
            parts = rel.split(os.sep)
            for k in range(1, len(parts)):
                d = os.path.join(*parts[:k])
                if d not in names:
                    names.append(d)
            names.append(rel)
        listing = os.path.join(base, "archive.list")
        with open(listing, "w") as f:
            f.write("".join(n + "\n" for n in names))
        run_tool(["tar", "cf", archive, "-C", tree, "--no-recursion", "-T", listing], "tar cf", env=env)
    return Workload(
        base=base,
        tree=tree,
        files=len(files),
        dirs=ndirs,
        nbytes=nbytes,
        needles=needles,
        repo=repo,
        archive=archive,
        archived=len(chosen),
        env=env,
        missing=missing,
    )


def warm_sources(wl: Workload) -> None:
    """Read every local source file, so copying it in costs no configuration a disk read."""
    for d, _, names in os.walk(wl.base):
        for name in names:
            with open(os.path.join(d, name), "rb") as f:
                while f.read(MiB):
                    pass


def run_workloads(
    cfg: Config, wl: Workload, sizes: Sizes, profiler: Profiler, tag: str
) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """The workload rows on one configuration: (seconds per row, row -> why it failed,
    row -> why it did not run: a program is missing)."""
    assert cfg.root is not None
    res: dict[str, float] = {}
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    work = os.path.join(cfg.root, f"wl-{cfg.name}")
    os.mkdir(work)
    env = wl.env

    def step(key: str, what: str) -> contextlib.AbstractContextManager:
        print(f"  {tag} {cfg.name:8s} {what} ...", file=sys.stderr, flush=True)
        return profiler.row(key)

    def usable(*keys: str) -> bool:
        """Whether these rows can still run: their programs are there and they did not fail."""
        for key in keys:
            for tool in ROW_TOOLS[key]:
                if tool in wl.missing:
                    skipped.setdefault(key, wl.missing[tool])
        return not any(k in skipped or k in failed for k in keys)

    def row(key: str, what: str, fn: Callable[[], object], after: tuple[str, ...] = ()) -> bool:
        """Time fn as row key unless a row it depends on failed; a failure is noted, not raised."""
        if not usable(key):
            return False
        if bad := [a for a in after if a in failed or a in skipped]:
            skipped[key] = f"not run, as {bad[0]} did not work"
            return False
        try:
            with step(key, what):
                res[key] = timed(fn)
        except Exception as e:  # the row is n/a; the others go on
            failed[key] = str(e)
            print(f"bench_mount: {cfg.name}: {what} failed: {e}", file=sys.stderr, flush=True)
            return False
        return True

    def git_status(clone: str) -> None:
        out = run_tool(["git", "status"], "git status", cwd=clone, env=env)
        if b"working tree clean" not in out:
            raise RuntimeError(
                "git status: " + out.decode(errors="replace").strip().replace("\n", " | ")[:300]
            )

    clone = os.path.join(work, "clone")
    if usable("git_clone"):
        warm_sources(wl)
        url = f"file://{wl.repo}"
        row(
            "git_clone",
            "git clone",
            lambda: run_tool(["git", "clone", "-q", "--no-hardlinks", url, clone], "git clone", env=env),
        )
        drop_caches()
        row("git_status_cold", "git status (cold)", lambda: git_status(clone), after=("git_clone",))
        row("git_status_warm", "git status (warm)", lambda: git_status(clone), after=("git_clone",))
    else:
        usable("git_status_cold", "git_status_warm")
    shutil.rmtree(clone, ignore_errors=True)

    dest = os.path.join(work, "x")
    if usable("tar_x"):
        os.mkdir(dest)
        warm_sources(wl)
        row("tar_x", "tar xf", lambda: run_tool(["tar", "xf", wl.archive, "-C", dest], "tar xf", env=env))
        shutil.rmtree(dest, ignore_errors=True)

    tree = os.path.join(work, "tree")
    warm_sources(wl)
    if usable("rsync"):
        row(
            "rsync",
            "rsync -a",
            lambda: run_tool(["rsync", "-a", wl.tree + "/", tree + "/"], "rsync", env=env),
        )
    else:  # the rows below still need the tree
        shutil.copytree(wl.tree, tree)

    def find() -> None:
        out = run_tool(f"find {shlex.quote(tree)} | wc -l", "find | wc -l", env=env)
        if int(out) != wl.files + wl.dirs + 1:
            raise RuntimeError(f"find listed {int(out)} names, not {wl.files + wl.dirs + 1}")

    def grep() -> None:
        out = run_tool(["grep", "-r", NEEDLE, tree], "grep -r", env=env)
        lines = out.count(b"\n")
        if lines != wl.needles:
            raise RuntimeError(f"grep -r found {lines} lines, not {wl.needles}")

    def rm_rf() -> None:
        run_tool(["rm", "-rf", tree], "rm -rf", env=env)
        if os.path.lexists(tree):
            raise RuntimeError("rm -rf left the tree")

    drop_caches()
    row("du", "du -s", lambda: run_tool(["du", "-s", tree], "du -s", env=env))
    drop_caches()
    row("find", "find | wc -l", find)
    drop_caches()
    row("grep", "grep -r", grep)
    row("rm_rf", "rm -rf", rm_rf)
    shutil.rmtree(tree, ignore_errors=True)

    if usable("sqlite"):
        db = os.path.join(work, "bench.sqlite")

        def sqlite_rows() -> None:
            con = sqlite3.connect(db)  # python's default: a BEGIN before the INSERT, commit ends it
            try:
                con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, payload TEXT)")
                con.commit()
                payload = "x" * 200
                t = 0.0
                for i in range(sizes.sqlite_tx):
                    t0 = time.perf_counter()
                    con.execute("INSERT INTO t (n, payload) VALUES (?, ?)", (i, payload))
                    con.commit()
                    t += time.perf_counter() - t0
                mode = con.execute("PRAGMA journal_mode").fetchone()[0]
                count = con.execute("SELECT count(*) FROM t").fetchone()[0]
            finally:
                con.close()
            if mode != "delete" or count != sizes.sqlite_tx:
                raise RuntimeError(f"sqlite: journal_mode {mode}, {count} rows")
            res["sqlite"] = t

        try:
            with step("sqlite", "sqlite"):
                sqlite_rows()
        except Exception as e:
            failed["sqlite"] = str(e)
            print(f"bench_mount: {cfg.name}: sqlite failed: {e}", file=sys.stderr, flush=True)
        for suffix in ("", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db + suffix)
    shutil.rmtree(work, ignore_errors=True)
    return res, failed, skipped


def run_config(cfg: Config, sizes: Sizes, tree: str, profiler: Profiler, tag: str) -> dict[str, float]:
    assert cfg.root is not None
    res: dict[str, float] = {}
    work = os.path.join(cfg.root, f"work-{cfg.name}")
    os.mkdir(work)
    chunk = random.Random(1).randbytes(MiB)

    def step(key: str, what: str) -> contextlib.AbstractContextManager:
        print(f"  {tag} {cfg.name:8s} {what} ...", file=sys.stderr, flush=True)
        return profiler.row(key)

    # sequential write, fsync before close
    big = os.path.join(work, "big")
    with step("seq_write", "seq write"):

        def write_big() -> None:
            fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for _ in range(sizes.big // MiB):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)

        res["seq_write"] = sizes.big / MiB / timed(write_big)

    # sequential read, cold
    drop_caches()
    with step("seq_read", "seq read"):
        buf = bytearray(MiB)
        got = 0

        def read_big() -> None:
            nonlocal got
            fd = os.open(big, os.O_RDONLY)
            try:
                while n := os.readv(fd, [buf]):
                    got += n
            finally:
                os.close(fd)

        res["seq_read"] = sizes.big / MiB / timed(read_big)
    if got != sizes.big:
        raise RuntimeError(f"{cfg.name}: read {got} of {sizes.big} bytes")
    os.unlink(big)

    # small files
    small = os.path.join(work, "small")
    os.mkdir(small)
    paths = [os.path.join(small, f"file{i:05d}") for i in range(sizes.files)]
    data = random.Random(2).randbytes(sizes.small)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with step("create", "create"):

        def create() -> None:
            for p in paths:
                fd = os.open(p, flags, 0o644)
                os.write(fd, data)
                os.close(fd)

        res["create"] = sizes.files / timed(create)

    with step("stat", "stat"):
        t, lat = stat_pass(paths)
    res["stat"] = sizes.files / t
    res["stat_p50"], res["stat_p99"] = percentile(lat, 0.50), percentile(lat, 0.99)

    with step("read_small", "read small"):

        def read_small() -> None:
            for p in paths:
                fd = os.open(p, os.O_RDONLY)
                n = len(os.read(fd, 2 * sizes.small))
                os.close(fd)
                if n != sizes.small:
                    raise RuntimeError(f"{cfg.name}: {p}: read {n} bytes")

        res["read_small"] = sizes.files / timed(read_small)

    with step("ls_l", "ls -l"):
        env = dict(os.environ, LC_ALL="C")

        def ls() -> None:
            r = subprocess.run(["ls", "-l", small], stdout=subprocess.PIPE, env=env, check=True)
            listed = r.stdout.count(b"\n") - 1  # less the "total" line
            if listed != sizes.files:
                raise RuntimeError(f"{cfg.name}: ls -l listed {listed} files")

        res["ls_l"] = timed(ls)

    drop_caches()
    with step("cold_stat", "cold stat"):
        t, lat = stat_pass(paths)
    res["cold_stat"] = sizes.files / t
    res["cold_stat_p50"] = percentile(lat, 0.50)

    with step("unlink", "unlink"):

        def unlink() -> None:
            for p in paths:
                os.unlink(p)

        res["unlink"] = sizes.files / timed(unlink)
    os.rmdir(small)
    os.rmdir(work)

    # tar of the shared tree, cold
    drop_caches()
    with step("tar", "tar"):
        where = os.path.join(cfg.root, os.path.basename(tree))

        def tar() -> None:
            r = subprocess.run(
                f"set -o pipefail; tar cf - -C {where} . | cat > /dev/null",
                shell=True,
                executable="/bin/bash",
                stderr=subprocess.PIPE,
            )
            if r.returncode != 0:
                raise RuntimeError(f"{cfg.name}: tar failed: {r.stderr.decode().strip()}")

        res["tar"] = timed(tar)
    return res


# --- the table ------------------------------------------------------------------------------------------


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "n/a"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def ratio(row: Row, ninefs: float | None, other: float | None) -> float | None:
    if not ninefs or not other:
        return None
    return ninefs / other if row.higher_is_better else other / ninefs


def render(results: dict[str, dict[str, float] | None], sizes: Sizes) -> str:
    names = dict(
        big=f"{sizes.big // MiB} MiB",
        files=str(sizes.files),
        tree=str(sizes.tree),
        wl=f"{sizes.wl_files:,}",
        archive=str(sizes.wl_archive),
        tx=str(sizes.sqlite_tx),
    )
    head = ["", "unit", *CONFIGS, "9fs/sshfs", "9fs/ceil", "9fs/direct"]
    lines = [head]
    for row in ROWS:
        vals = {c: (results.get(c) or {}).get(row.key) for c in CONFIGS}
        n = vals["ninefs"]
        rs = [ratio(row, n, vals[o]) for o in ("sshfs", "ceiling", "direct")]
        lines.append(
            [
                row.label.format(**names),
                row.unit,
                *(fmt(vals[c]) for c in CONFIGS),
                *(fmt_ratio(r) for r in rs),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for j, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells))
        if j == 0:
            out.append("-" * len(out[0]))
    out.append("")
    out.append("ratios: >1x = ninefs better (rates: ninefs/other; s and µs: other/ninefs); n/a = not run")
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description="ninefs mounted, against direct, sshfs and a passthrough on our own FUSE session"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="32 MiB, 300 files, 150-file tree; workloads: 300 files, 150 in tar xf",
    )
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument(
        "--repeat",
        "--passes",
        dest="repeat",
        type=int,
        default=None,
        help="passes per configuration, median taken (default 3, quick 1)",
    )
    ap.add_argument("--configs", default=",".join(CONFIGS), help="which columns to run (comma-separated)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy record the ninefs processes, one file per row")
    ap.add_argument(
        "--no-install", action="store_true", help="do not apt-get install sshfs, openssh-server, git, rsync"
    )
    ap.add_argument("--keep-going", action="store_true", help="a failing configuration becomes n/a")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    repeat = args.repeat or (1 if args.quick else 3)
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
    if bad := [c for c in wanted if c not in CONFIGS]:
        ap.error(f"unknown configuration {bad[0]!r} (known: {', '.join(CONFIGS)})")
    if os.getuid() != 0:
        print("bench_mount: needs root (drop_caches, sshd)", file=sys.stderr)
        return 2
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)

    # SIGTERM and SIGHUP clean up like Ctrl-C does.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored

    cleanup = Cleanup()
    results: dict[str, dict[str, float] | None] = {}
    passes: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGS}
    failures: dict[str, dict[str, str]] = {c: {} for c in CONFIGS}  # workload rows that failed
    skipped: dict[str, dict[str, str]] = {c: {} for c in CONFIGS}  # and that could not run
    configs: dict[str, Config] = {}
    wl: Workload | None = None
    started = time.monotonic()
    try:
        tmp = tempfile.mkdtemp(prefix="bench-mount-", dir="/tmp")
        cleanup.push("temp dir", lambda: remove_tmp(tmp))
        export = os.path.join(tmp, "export")
        os.mkdir(export)
        tree = os.path.join(export, "tree")
        tree_bytes = make_tree(tree, sizes.tree)
        wl = make_workload(tmp, sizes, ensure_tools(not args.no_install))
        setups = {
            "direct": lambda: setup_direct(export, tmp, cleanup),
            "ninefs": lambda: setup_ninefs(export, tmp, cleanup),
            "sshfs": lambda: setup_sshfs(export, tmp, cleanup, not args.no_install, tuned=True),
            "ceiling": lambda: setup_ceiling(export, tmp, cleanup),
        }
        for name in CONFIGS:
            if name not in wanted:
                configs[name] = Config(name, why_na="not selected (--configs)")
                continue
            try:
                configs[name] = setups[name]()
            except Exception as e:
                if not args.keep_going and name != "sshfs":
                    raise
                configs[name] = Config(name, why_na=f"set-up failed: {e}")
        print(
            f"bench_mount: {'quick' if args.quick else 'full'} run in {tmp}; "
            f"tree {sizes.tree} files / {tree_bytes / MiB:.1f} MiB; workload tree {wl.files} files "
            f"in {wl.dirs} directories / {wl.nbytes / MiB:.1f} MiB, {wl.needles} lines of {NEEDLE!r}",
            file=sys.stderr,
        )
        for name, cfg in configs.items():
            print(
                f"  {name:8s} {cfg.root or 'n/a: ' + cfg.why_na}  {cfg.note}".rstrip(),
                file=sys.stderr,
                flush=True,
            )
        # Passes go round the configurations, so a slow spell of the machine hits all of them.
        for i in range(repeat):
            for name in CONFIGS:
                cfg = configs[name]
                if cfg.root is None:
                    continue
                pids = cfg.pids if (args.profile and name == "ninefs") else {}
                profiler = Profiler(args.profile, pids, f"-{i}" if repeat > 1 else "")
                tag = f"pass {i + 1}/{repeat}"
                try:
                    res = run_config(cfg, sizes, tree, profiler, tag)
                    wres, wfailed, wskipped = run_workloads(cfg, wl, sizes, profiler, tag)
                    res.update(wres)
                    passes[name].append(res)
                    for key, why in wfailed.items():
                        failures[name].setdefault(key, f"pass {i + 1}: {why}")
                    for key, why in wskipped.items():
                        skipped[name].setdefault(key, why)
                except Exception as e:
                    if not args.keep_going:
                        raise
                    print(f"bench_mount: {name} failed: {e}", file=sys.stderr)
                    cfg.why_na, cfg.root = f"failed: {e}", None
                    passes[name] = []
        for name in CONFIGS:
            ps = passes[name]
            # A row that failed in any pass is n/a.
            keys = [k for k in ps[0] if all(k in p for p in ps)] if ps else []
            results[name] = {k: statistics.median(p[k] for p in ps) for k in keys} if ps else None
    except KeyboardInterrupt:
        print("\nbench_mount: interrupted, cleaning up", file=sys.stderr)
        cleanup.run()
        return 130
    finally:
        cleanup.run()

    elapsed = time.monotonic() - started
    print()
    print(
        f"ninefs mount benchmark ({'quick' if args.quick else 'full'}; {platform.node()}, "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}; "
        f"median of {repeat} pass{'es' if repeat > 1 else ''}; {elapsed:.0f} s)"
    )
    print(render(results, sizes))
    labels = {r.key: r.label.split(" (")[0] for r in ROWS}
    for name, cfg in configs.items():
        if cfg.root is None and name in wanted:
            print(f"{name}: n/a ({cfg.why_na})")
        for key, why in failures[name].items():
            print(f"{name}: {labels[key]} failed, {why}")
        for key, why in skipped[name].items():
            print(f"{name}: {labels[key]} n/a, {why}")
    if wl is not None:
        print(
            f"workload tree: {wl.files} files in {wl.dirs} directories, {wl.nbytes / MiB:.1f} MiB; "
            f"tar xf of its first {wl.archived}; sqlite: {sizes.sqlite_tx} transactions"
        )
    if configs.get("sshfs") and configs["sshfs"].root is not None:
        print(f"sshfs: {configs['sshfs'].note}")
    if args.profile:
        print(f"profiles (py-spy raw) in {args.profile}; numbers of a profiled run are slowed down")
    if args.json:
        doc = {
            "benchmark": "bench_mount",
            "mode": "quick" if args.quick else "full",
            "sizes": sizes.__dict__,
            "elapsed_s": round(elapsed, 1),
            "profiled": bool(args.profile),
            "repeat": repeat,
            "passes": passes,
            "failures": failures,
            "skipped": skipped,
            "workload": None
            if wl is None
            else {
                "files": wl.files,
                "dirs": wl.dirs,
                "bytes": wl.nbytes,
                "grep_word": NEEDLE,
                "grep_lines": wl.needles,
                "tar_xf_files": wl.archived,
                "sqlite_tx": sizes.sqlite_tx,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
            },
            "configs": {
                n: {"run": c.root is not None, "note": c.note or c.why_na} for n, c in configs.items()
            },
            "rows": [
                {
                    "key": r.key,
                    "unit": r.unit,
                    "higher_is_better": r.higher_is_better,
                    "values": {c: (results.get(c) or {}).get(r.key) for c in CONFIGS},
                }
                for r in ROWS
            ],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
