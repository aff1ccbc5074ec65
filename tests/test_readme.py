"""The README's snippets, run as a person would paste them (issue #18).

Every ```python block is run, and every ```sh block is either run or listed in
SH_BLOCKS with the reason it is not; a new block that is neither fails
test_every_readme_block_is_run_or_says_why_not.

What the test changes, and only this (`here()`):
- Ports: the README's fixed ports (5640-5643, 5650) may be in use on a shared machine,
  so each is replaced by a free one picked for this module (bound, then closed just
  before use), the same one in every block.
- Host paths outside the checkout a snippet names as an example (`/srv/share`, `/mnt/x`,
  `/tmp/copy`) become directories of the test. The share holds what the snippets take
  for granted of a person's share: `src/`, `bin/`, and a git repository around them.
- Blocks run with bash -e in a scratch directory with `.venv` linked to the checkout's
  (so `.venv/bin/ninefs` works as written and what the snippets write, `cluster.ns`,
  `authorized`, stays there), with a `Makefile` for `cpu --cwd -- make`, and with HOME
  a scratch directory (`key gen`, `known_hosts`, `~/share`, `--machine ~`).
A block's background servers are in its own process group (a new session), which is
killed when the test ends, however it ends.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .fuse_helpers import needs_fuse
from .servers import ninefs_command

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parent.parent
README = CHECKOUT / "README.md"
README_PORTS = (5640, 5641, 5642, 5643, 5650)


@dataclass(frozen=True, slots=True)
class Block:
    lang: str
    text: str
    line: int  # where it starts in README.md

    @property
    def first(self) -> str:
        return self.text.splitlines()[0]


def blocks(lang: str) -> list[Block]:
    found = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```$", README.read_text(), re.M | re.S):
        if m[1] == lang:
            found.append(Block(m[1], m[2], README.read_text()[: m.start()].count("\n") + 1))
    return found


def sh_block(first: str) -> Block:
    (block,) = [b for b in blocks("sh") if b.first == first]
    return block


def python_block(marker: str) -> Block:
    (block,) = [b for b in blocks("python") if marker in b.text]
    return block


RUN = None  # run by the test named in the comment beside it
SH_BLOCKS: dict[str, str | None] = {
    "make demo   # starts servers on loopback, uses them from the shell and from Python, cleans up": (
        "not run here: `make test` runs this suite (it would start itself), and `make demo` "
        "installs packages with apt-get before it runs the demo"
    ),
    ".venv/bin/ninefs serve /srv/share --listen 'tcp!127.0.0.1!5640' &   # a host directory": RUN,  # servers
    "A='tcp!127.0.0.1!5641'": RUN,  # test_the_command_line_block_runs
    "mkdir -p /mnt/x": RUN,  # test_the_mount_block_runs
    "cat > cluster.ns <<'NS'": RUN,  # test_the_namespace_file_block_runs
    ".venv/bin/ninefs serve --machine ~ --allow-exec --listen 'tcp!127.0.0.1!5642' &": RUN,  # machine
    "cat > machines <<'MACHINES'": (
        "not run here: it needs sixteen machines at 10.0.0.1-16; the same fan-out on machines "
        "made of network namespaces is tests/test_cluster.py"
    ),
    ".venv/bin/ninefs key gen                       # ~/.config/ninefs/id_ed25519 (0600) and .pub": RUN,
}


@dataclass
class Session:
    """Where the snippets run: scratch directories and the ports standing for the README's."""

    root: Path
    ports: dict[int, int]
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    def address(self, port: int, network: str = "tcp") -> str:
        return f"{network}!127.0.0.1!{self.ports[port]}"

    def here(self, text: str) -> str:
        """`text` with the README's ports and example host paths replaced by this session's."""

        def port(m: re.Match[str]) -> str:
            return f"{m[1]}!127.0.0.1!{self.ports[int(m[2])]}"

        text = re.sub(r"(tcp|tls)!127\.0\.0\.1!(\d+)", port, text)
        for theirs, ours in self.paths.items():
            text = text.replace(theirs, ours)
        return text

    def env(self, home: str = "home") -> dict[str, str]:
        # Nor make's variables, when the suite runs under `make test`: a `make` in a snippet
        # would think itself a sub-make and print "Entering directory".
        dropped = {"NINEFS_KEY", "MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        return {**env, "HOME": str(self.root / home)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("readme")
    s = Session(root, {port: free_port() for port in README_PORTS})
    s.cwd.mkdir()
    (s.cwd / ".venv").symlink_to(CHECKOUT / ".venv")
    (s.cwd / "Makefile").write_text("all:\n\t@echo made in $(notdir $(CURDIR))\n")
    for home in ("home", "home-keys"):
        (root / home).mkdir()
    share = root / "share"
    (share / "src").mkdir(parents=True)
    (share / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (share / "bin").mkdir()
    (share / "bin" / "hello-tool").write_text("#!/bin/sh\necho hello\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", str(share)], check=True)
    subprocess.run([*git, "-C", str(share), "add", "."], check=True)
    subprocess.run([*git, "-C", str(share), "commit", "-qm", "share"], check=True)
    s.paths = {"/srv/share": str(share), "/mnt/x": str(root / "mnt"), "/tmp/copy": str(root / "copy")}
    return s


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_sh(session: Session, block: Block, stdin: str = "", home: str = "home", timeout: float = 180) -> Ran:
    """Run `block` as written (but `here()`) with bash -e; its background jobs are left
    running in the process group, which the caller kills (`stop_group`)."""
    out, err = session.root / f"sh{block.line}.out", session.root / f"sh{block.line}.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            ["bash", "-e", "-c", session.here(block.text)],
            cwd=session.cwd,
            env=session.env(home),
            stdin=subprocess.PIPE,
            stdout=o,  # files, not pipes: a server started with & keeps them open
            stderr=e,
            text=True,
            start_new_session=True,
        )
        _groups.append(proc.pid)
        try:
            proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc.pid)
            raise
    return Ran(proc.returncode, out.read_text(), err.read_text())


_groups: list[int] = []  # process groups of blocks that may have left servers running


def stop_group(pgid: int) -> None:
    """SIGTERM a block's process group (only what that block started), SIGKILL what stays."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture(scope="module", autouse=True)
def stop_what_blocks_started() -> Iterator[None]:
    yield
    while _groups:
        stop_group(_groups.pop())


def answers(address: str, timeout: float = 60) -> None:
    """Wait until a 9P server answers at `address` (`ninefs ping`)."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(ninefs_command("ping", address), capture_output=True, text=True)
        if r.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{address} never answered: {r.stderr}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def servers(session: Session) -> Session:
    """The block "Export and use a tree": a directory on 5640, a RAM tree on 5641."""
    ran = run_sh(
        session,
        sh_block(".venv/bin/ninefs serve /srv/share --listen 'tcp!127.0.0.1!5640' &   # a host directory"),
    )
    assert ran.returncode == 0, ran.stderr
    answers(session.address(5640))
    answers(session.address(5641))
    return session


@pytest.fixture(scope="module")
def machine(servers: Session) -> tuple[Session, Ran]:
    """The block "A whole machine, and `cpu`": --machine ~ --allow-exec on 5642 (cpu needs FUSE)."""
    ran = run_sh(
        servers, sh_block(".venv/bin/ninefs serve --machine ~ --allow-exec --listen 'tcp!127.0.0.1!5642' &")
    )
    return servers, ran


def run_python(session: Session, block: Block, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", session.here(block.text)],
        cwd=session.cwd,
        env=session.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_readme_block_is_run_or_says_why_not() -> None:
    assert {b.first for b in blocks("sh")} == set(SH_BLOCKS)
    for marker in PYTHON_BLOCKS:
        python_block(marker)  # exactly one block each
    assert len(blocks("python")) == len(PYTHON_BLOCKS)
    ports = {
        int(p) for b in blocks("sh") + blocks("python") for p in re.findall(r"127\.0\.0\.1!(\d+)", b.text)
    }
    assert ports <= set(README_PORTS), "a README port this test does not replace"


def test_the_export_block_serves_a_directory_and_a_ram_tree(servers: Session) -> None:
    r = subprocess.run(ninefs_command("ls", servers.address(5640), "/"), capture_output=True, text=True)
    assert r.stdout.split() == [".git", "bin", "src"]


def test_the_command_line_block_runs(servers: Session) -> None:
    ran = run_sh(servers, sh_block("A='tcp!127.0.0.1!5641'"))
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    lines = ran.stdout.splitlines()
    assert lines[0] == "hello"  # cat: what was written, then the date appended
    assert re.match(r"d\S+ 1 \S+ \S+ +0 .* 2026$", lines[2]), ran.stdout  # ls -l docs: docs/2026
    assert re.match(r"-\S+ 1 \S+ \S+ +\d+ .* greeting$", lines[3]), ran.stdout  # and the greeting moved in
    assert lines[4].startswith("'greeting' -"), ran.stdout  # stat
    assert (servers.cwd / "greeting.txt").read_text().startswith("hello\n")  # cp from the server
    r = subprocess.run(ninefs_command("ls", servers.address(5641), "/"), capture_output=True, text=True)
    assert "docs" not in r.stdout.split()  # rm -r docs


@needs_fuse
@pytest.mark.fuse
def test_the_mount_block_runs(servers: Session) -> None:
    mnt = Path(servers.paths["/mnt/x"])
    try:
        ran = run_sh(servers, sh_block("mkdir -p /mnt/x"))
    finally:
        with open("/proc/self/mountinfo") as f:
            if any(line.split()[4] == str(mnt) for line in f):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert ran.returncode == 0, ran.stderr
    assert "hello-tool" not in ran.stdout and " src" in ran.stdout  # ls -l /mnt/x
    assert "nothing to commit, working tree clean" in ran.stdout  # git -C /mnt/x status
    assert (Path(servers.paths["/tmp/copy"]) / "main.c").read_text() == "int main(void) { return 0; }\n"


@needs_fuse
@pytest.mark.fuse
@pytest.mark.skipif(os.geteuid() != 0, reason="ns run needs root (the README says so)")
def test_the_namespace_file_block_runs(servers: Session) -> None:
    ran = run_sh(servers, sh_block("cat > cluster.ns <<'NS'"), stdin="ls /n/alpha/bin; ls -d /n/beta\n")
    assert ran.returncode == 0, ran.stderr
    assert "hello-tool" in ran.stdout.split() and "/n/beta" in ran.stdout.split()


@needs_fuse
@pytest.mark.fuse
def test_the_machine_block_runs(machine: tuple[Session, Ran]) -> None:
    session, ran = machine
    assert ran.returncode == 0, ran.stderr
    # the server's own "serving on" line shares the terminal (stdout) with the rest
    lines = [x for x in ran.stdout.splitlines() if not x.startswith("ninefs: serving on ")]
    assert lines[0].startswith(f"{session.address(5642)}: 9P2000, msize ")  # ping: up
    assert lines[1:5] == ["cmd", "dev", "fs", "proc"]  # ls /
    assert re.fullmatch(r"[\d.]+ [\d.]+ [\d.]+", lines[5])  # cat /dev/load: the load averages
    assert lines[6:] == ["made in cwd"]  # make, run there, in /mnt/term + the directory here


def test_the_security_block_runs(session: Session) -> None:
    ran = run_sh(
        session,
        sh_block(
            ".venv/bin/ninefs key gen                       # ~/.config/ninefs/id_ed25519 (0600) and .pub"
        ),
        home="home-keys",
    )
    assert ran.returncode == 0, ran.stderr
    home = session.root / "home-keys"
    assert (home / ".config/ninefs/id_ed25519").stat().st_mode & 0o777 == 0o600
    assert (home / ".config/ninefs/known_hosts").read_text().strip()  # the server's key, pinned
    assert "authentication required: 1 keys from authorized" in ran.stderr


# --- python ------------------------------------------------------------------------------


def check_namespace(session: Session, block: Block) -> None:
    """The namespace example serves for ever: it is checked while it serves, then stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-c", session.here(block.text)],
        cwd=session.cwd,
        env=session.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = session.address(5650)
        answers(address)
        r = subprocess.run(ninefs_command("ls", address, "/n/alpha/bin"), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "hello-tool" in r.stdout.split()  # alpha's bin, after beta's files
        assert proc.poll() is None
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err


def check_library(session: Session, block: Block) -> None:
    r = run_python(session, block)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("bind /n/kremvax /mnt\nmount the CPU server\n")
    assert "'notes'" in r.stdout
    assert r.stdout.endswith("/missing: file does not exist\n")


def check_sync(session: Session, block: Block) -> None:
    r = run_python(session, block)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("b'from a script' [")


def check_run_all(session: Session, block: Block) -> None:
    r = run_python(session, block)
    assert r.returncode == 0, r.stderr
    machine, ram = r.stdout.splitlines()
    assert machine.split()[1:] == ["0", socket.gethostname(), "None"]  # host status stdout error
    assert ram.split()[1] == "None" and "no /cmd" in ram  # status None: see error


PYTHON_BLOCKS: dict[str, Callable[[Session, Block], None]] = {
    "Namespace()": check_namespace,
    "ninep.connect(": check_library,
    "ninep.sync.connect(": check_sync,
    "ninep.sync.run_all(": check_run_all,
}


@pytest.mark.parametrize("marker", list(PYTHON_BLOCKS))
def test_the_python_block_runs(marker: str, servers: Session, request: pytest.FixtureRequest) -> None:
    if marker == "ninep.sync.run_all(":
        request.getfixturevalue("machine")  # its server, on 5642
    PYTHON_BLOCKS[marker](servers, python_block(marker))
