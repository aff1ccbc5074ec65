"""A cluster of machines on this one: each a network namespace, a UTS namespace and a server.

`cluster(n)` is what the fan-out tests and benchmarks/bench_cluster.py stand on. Every host
is a network namespace joined to ours by a veth pair, with its own hostname (a UTS
namespace per process started in it), running `ninefs serve --machine --allow-exec` on
port 564 of its own address and, with `sshd=True`, a private sshd on port 22, so ninefs's
fan-out and pdsh/clush reach the same machines.

Other people's tests build network namespaces on this machine at the same time, so a
cluster claims a whole 10.X.0.0/16 for itself with an `unreachable` route: adding that
route is atomic (EEXIST for the second claimer), it keeps a cut link's packets from
falling through to the default route, and every host's /30 lies inside it. Names carry
a random prefix. Teardown kills every process and deletes every netns, veth and route
the cluster made, also when the body raised.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .servers import ninefs_command

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NINEP_PORT = 564
# A server takes ~0.45 s of CPU to start (imports): 64 of them on a busy 2-CPU machine
# need most of a minute.
START_SECONDS = 30.0
START_SECONDS_PER_HOST = 1.5
FIRST_OCTET_CHOICES = range(232, 254)  # 10.231/16 is netns_host's (tests/test_nsrun.py)


def netns_works() -> bool:
    """Whether this process may make network namespaces (root, and a kernel that has them)."""
    probe = f"nfp{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return r.returncode == 0


def _ip_batch(lines: list[str], *, netns: str | None = None, force: bool = False) -> None:
    """Run many `ip` commands in one process: a 64-host cluster is ~400 of them."""
    argv = ["ip", *(["-n", netns] if netns else []), *(["-force"] if force else []), "-batch", "-"]
    r = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if r.returncode != 0 and not force:
        raise RuntimeError(f"ip -batch failed: {r.stderr.strip()}")


def _claim_network() -> tuple[int, str]:
    """A 10.X.0.0/16 nobody on this machine uses, held by our unreachable route."""
    for x in FIRST_OCTET_CHOICES:
        net = f"10.{x}.0.0/16"
        inside = subprocess.run(["ip", "-4", "route", "show", "root", net], capture_output=True, text=True)
        covering = subprocess.run(["ip", "-4", "route", "show", "match", net], capture_output=True, text=True)
        if inside.stdout.strip() or any(not ln.startswith("default") for ln in covering.stdout.splitlines()):
            continue
        guard = f"unreachable {net} metric 4000"
        if subprocess.run(["ip", "route", "add", *guard.split()], capture_output=True).returncode == 0:
            return x, guard
    raise RuntimeError("no free 10.X.0.0/16 for a test cluster (10.232-10.253 all in use)")


@dataclass
class Host:
    """One machine of a cluster: `name` is its label (`h3`), `address` its 9P dial string."""

    name: str
    index: int
    ip: str
    netns: str
    hostname: str
    inner: str  # the veth inside the netns; cut_link() takes it down
    workdir: Path
    serve_args: list[str]
    proc: subprocess.Popen | None = None
    sshd: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "serve.log"

    @property
    def address(self) -> str:
        return f"tcp!{self.ip}!{NINEP_PORT}"

    def _in_host(self, argv: list[str]) -> list[str]:
        """argv run in this host's netns, in a new UTS namespace named like the host."""
        script = f"hostname {shlex.quote(self.hostname)} && exec {shlex.join(argv)}"
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", script]

    def start(self) -> None:
        """Start the server; `wait_serving` says when it listens."""
        with open(self.workdir / "serve.out", "w") as out, open(self.log, "a") as err:
            # ip netns exec, unshare and sh all exec: the Popen's pid is the server itself,
            # so kill() reaches it and RSS is its own.
            self.proc = subprocess.Popen(
                self._in_host(ninefs_command(*self.serve_args)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=CHECKOUT,
            )

    def serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name}: server exited {self.proc.returncode}: {self._tail()}")
        return (self.workdir / "serve.out").read_text().startswith("ninefs: serving on ")

    def _tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"

    def kill(self) -> None:
        """SIGKILL the server: the host stops answering 9P, its link stays up (connection refused)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        """Start the server again on the same address and wait until it serves."""
        self.kill()
        self.start()
        wait_serving([self], deadline=time.monotonic() + START_SECONDS)

    def cut_link(self) -> None:
        """Take the inner veth down: packets to the host vanish (connect times out, no RST)."""
        subprocess.run(["ip", "-n", self.netns, "link", "set", self.inner, "down"], check=True)

    def restore_link(self) -> None:
        subprocess.run(["ip", "-n", self.netns, "link", "set", self.inner, "up"], check=True)

    def rss_kib(self) -> int:
        """The server's resident set (VmRSS), in KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        for p in (self.proc, self.sshd):
            if p is not None and p.poll() is None:
                p.terminate()
        for p in (self.proc, self.sshd):
            if p is not None:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def wait_serving(hosts: list[Host], *, deadline: float) -> None:
    """Wait for every host's "ninefs: serving on" line (and sshd's listening line)."""
    waiting = list(hosts)
    while waiting:
        waiting = [h for h in waiting if not (h.serving() and _sshd_listening(h))]
        if not waiting:
            return
        if time.monotonic() > deadline:
            names = ", ".join(h.name for h in waiting)
            raise RuntimeError(f"hosts not serving by the deadline: {names}")
        time.sleep(0.02)


def _sshd_listening(h: Host) -> bool:
    if h.sshd is None:
        return True
    if h.sshd.poll() is not None:
        raise RuntimeError(
            f"{h.name}: sshd exited {h.sshd.returncode}: {(h.workdir / 'sshd.log').read_text()}"
        )
    log = h.workdir / "sshd.log"
    return log.exists() and "Server listening on" in log.read_text()


@dataclass
class Cluster:
    """The hosts, and what a client needs to reach them: the key, the machines file, ssh's options."""

    hosts: list[Host]
    dir: Path
    key: Path  # the ninefs key authorized for root on every host
    machines: Path  # `h1 tcp!10.X.1.2!564` lines, for -w ^FILE
    ssh_key: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """os.environ with NINEFS_KEY, and ssh's options for pdsh."""
        env = dict(os.environ, NINEFS_KEY=str(self.key))
        if self.ssh_key is not None:
            env["PDSH_SSH_ARGS_APPEND"] = self.ssh_options
        return env

    @property
    def ssh_options(self) -> str:
        """For pdsh's PDSH_SSH_ARGS_APPEND and clush's -o: our key, no known_hosts, no prompts."""
        return (
            f"-i {self.ssh_key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o BatchMode=yes -o LogLevel=ERROR"
        )

    @property
    def ips(self) -> list[str]:
        return [h.ip for h in self.hosts]

    def __getitem__(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)


_SSHD_CONFIG = """\
ListenAddress {ip}
Port 22
HostKey {dir}/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
MaxStartups 200
MaxSessions 100
"""


def _keygen(path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root", "-f", str(path)],
        stdout=subprocess.DEVNULL,
    )


@contextmanager
def cluster(n: int, *, sshd: bool = False) -> Iterator[Cluster]:
    """n hosts h1..hn at 10.X.i.2, each serving its machine on port 564 (and sshd on 22)."""
    if not 1 <= n <= 250:
        raise ValueError(f"a cluster has 1-250 hosts, not {n}")
    prefix = uuid.uuid4().hex[:4]
    top = Path(tempfile.mkdtemp(prefix=f"ninefs-cluster-{prefix}-"))
    hosts: list[Host] = []
    guard: str | None = None
    try:
        x, guard = _claim_network()
        key = top / "key"
        gen = subprocess.run(
            ninefs_command("key", "gen", "--out", str(key), "--comment", "root"),
            capture_output=True,
            text=True,
        )
        if gen.returncode != 0:
            raise RuntimeError(f"ninefs key gen: {gen.stderr.strip()}")
        authorized = top / "authorized_keys"
        shutil.copy(f"{key}.pub", authorized)
        for i in range(1, n + 1):
            netns = f"nf{prefix}h{i}"
            workdir = top / f"h{i}"
            workdir.mkdir()
            ip = f"10.{x}.{i}.2"
            serve = ["serve", "--machine", "--allow-exec", "--authorized-keys", str(authorized)]
            hosts.append(
                Host(
                    f"h{i}",
                    i,
                    ip,
                    netns,
                    f"nfh{i}",
                    f"{netns}b",
                    workdir,
                    [*serve, "--listen", f"tcp!{ip}!564"],
                )
            )
        root_cmds: list[str] = []
        for h in hosts:
            outer = f"nf{prefix}h{h.index}a"
            root_cmds += [
                f"netns add {h.netns}",
                f"link add {outer} type veth peer name {h.inner} netns {h.netns}",
                f"addr add 10.{x}.{h.index}.1/30 dev {outer}",
                f"link set {outer} up",
            ]
        _ip_batch(root_cmds)
        for h in hosts:
            _ip_batch(
                [f"addr add {h.ip}/30 dev {h.inner}", f"link set {h.inner} up", "link set lo up"],
                netns=h.netns,
            )
        ssh_key: Path | None = None
        if sshd:
            ssh_key = top / "ssh_key"
            gens = [_keygen(ssh_key), *(_keygen(h.workdir / "ssh_host_ed25519_key") for h in hosts)]
            if any(g.wait() != 0 for g in gens):
                raise RuntimeError("ssh-keygen failed")
            shutil.copy(f"{ssh_key}.pub", top / "ssh_authorized_keys")
        for h in hosts:
            h.start()
            if sshd:
                config = h.workdir / "sshd_config"
                config.write_text(
                    _SSHD_CONFIG.format(ip=h.ip, dir=h.workdir, authorized=top / "ssh_authorized_keys")
                )
                log = h.workdir / "sshd.log"
                argv = ["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(log)]
                h.sshd = subprocess.Popen(
                    h._in_host(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                )
        wait_serving(hosts, deadline=time.monotonic() + START_SECONDS + START_SECONDS_PER_HOST * n)
        machines = top / "machines"
        machines.write_text("".join(f"{h.name} {h.address}\n" for h in hosts))
        yield Cluster(hosts, top, key, machines, ssh_key)
    finally:
        for h in hosts:
            for p in (h.proc, h.sshd):
                if p is not None and p.poll() is None:
                    p.terminate()
        for h in hosts:
            h.stop()
        # Deleting a netns deletes the veth end in it, and with it the pair.
        _ip_batch([f"netns del {h.netns}" for h in hosts], force=True)
        _ip_batch([f"link del nf{prefix}h{h.index}a" for h in hosts], force=True)
        if guard is not None:
            subprocess.run(["ip", "route", "del", *guard.split()], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)
