"""The `ninefs` command fails like a Unix tool (issue #18): one line naming what failed,
a non-zero exit, never a traceback, and nothing left behind (no mount, no process).

Every case runs the real CLI as a subprocess, as a person would type it, against real
sockets on 127.0.0.1: a port held bound but not listening (refused), one listening that
never answers (silent), one in use. `--help` is checked by walking every parser.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount.cli import parser

from .fuse_helpers import needs_fuse
from .servers import ninefs_command, server_process

pytestmark = pytest.mark.slow

UNRESOLVABLE = "tcp!no.such.host.invalid!564"  # RFC 6761: .invalid never resolves


def ninefs(*args: str, cwd: str | Path | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    """`ninefs ARGS` with no terminal and nothing on stdin; output as text."""
    return subprocess.run(
        ninefs_command(*args),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NINEFS_KEY": "/nonexistent"},  # no key of the developer's is offered
    )


def one_line(r: subprocess.CompletedProcess, *names: str) -> str:
    """The failure's single line on stderr (and that it names each of `names`)."""
    assert r.returncode != 0, f"exit 0: {r.stdout!r} {r.stderr!r}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def usage_error(r: subprocess.CompletedProcess, *names: str) -> str:
    """argparse's refusal: usage, then one `error:` line naming the option; exit 2."""
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "error:" in last
    for name in names:
        assert name in last, last
    return last


@pytest.fixture
def refused() -> Iterator[str]:
    """An address that refuses connections: a port held bound, never listened on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"tcp!127.0.0.1!{s.getsockname()[1]}"


@pytest.fixture
def silent() -> Iterator[str]:
    """An address that accepts a connection (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"tcp!127.0.0.1!{s.getsockname()[1]}"


@pytest.fixture
def busy() -> Iterator[tuple[str, int]]:
    """A port someone else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        yield f"tcp!127.0.0.1!{port}", port


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """A directory with a key (`id`, `id.pub`) and an authorized-keys file letting it in."""
    d = tmp_path / "keys"
    d.mkdir()
    assert ninefs("key", "gen", "-o", "id", cwd=d).returncode == 0
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert ninefs("key", "authorize", "id.pub", "--user", me, "--file", "authorized", cwd=d).returncode == 0
    return d


# --- mount -----------------------------------------------------------------------------


def mounted_here(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def processes_naming(path: Path) -> list[str]:
    """Processes whose command line names `path` (a test's own directory: only ours can)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace")
        except OSError:
            continue
        if str(path) in argv:
            found.append(f"{pid}: {argv}")
    return found


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """An empty directory; afterwards, nothing mounted on it and no process about it."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield mp
    left = processes_naming(mp)
    for _ in range(50):  # a background mount that failed may still be exiting
        if not left:
            break
        time.sleep(0.1)
        left = processes_naming(mp)
    was_mounted = mounted_here(mp)
    if was_mounted:
        subprocess.run(["umount", "-l", str(mp)], capture_output=True)
    assert not was_mounted, f"{mp} was left mounted"
    assert not left, f"processes left behind: {left}"


@needs_fuse
@pytest.mark.fuse
def test_mount_of_a_host_that_does_not_resolve_names_it(mountpoint: Path) -> None:
    one_line(ninefs("mount", UNRESOLVABLE, str(mountpoint)), UNRESOLVABLE, "not known")


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("garbage", ["tcp!!", "tcp!127.0.0.1!99999", "carrier!pigeon!1", ""])
def test_mount_of_a_garbage_address_is_refused_before_anything_starts(mountpoint: Path, garbage: str) -> None:
    r = ninefs("mount", garbage, str(mountpoint))
    assert r.returncode == 2
    line = one_line(r, "ninefs mount:")
    assert "ValueError" not in line
    if garbage:
        assert garbage in line


@needs_fuse
@pytest.mark.fuse
def test_mount_of_a_refused_port_says_connection_refused(mountpoint: Path, refused: str) -> None:
    assert one_line(ninefs("mount", refused, str(mountpoint)), refused) == (
        f"ninefs mount: {refused}: connection refused"
    )


@needs_fuse
@pytest.mark.fuse
def test_mount_of_a_silent_server_gives_up_at_its_timeout(mountpoint: Path, silent: str) -> None:
    one_line(ninefs("mount", "--timeout", "1", silent, str(mountpoint)), silent, "timed out")


@needs_fuse
@pytest.mark.fuse
def test_mount_on_a_missing_directory_or_a_file_names_it(tmp_path: Path, refused: str) -> None:
    missing = tmp_path / "nowhere"
    assert one_line(ninefs("mount", refused, str(missing))) == f"ninefs mount: {missing}: no such directory"
    file = tmp_path / "file"
    file.write_text("x")
    assert one_line(ninefs("mount", refused, str(file))) == f"ninefs mount: {file}: not a directory"


@needs_fuse
@pytest.mark.fuse
def test_mount_takes_a_relative_key_as_ls_does(key_dir: Path, mountpoint: Path) -> None:
    with server_process("--authorized-keys", str(key_dir / "authorized")) as (address, _):
        assert ninefs("write", "-k", "id", address, "/hello", cwd=key_dir).returncode == 0
        r = ninefs("mount", "-k", "id", address, str(mountpoint), cwd=key_dir)
        assert r.returncode == 0, r.stderr
        try:
            assert os.listdir(mountpoint) == ["hello"]
        finally:
            assert ninefs("umount", str(mountpoint)).returncode == 0


@needs_fuse
@pytest.mark.fuse
def test_mount_with_a_garbage_or_missing_key_names_the_file(
    tmp_path: Path, mountpoint: Path, refused: str
) -> None:
    (tmp_path / "garbage").write_text("not a key\n")
    line = one_line(ninefs("mount", "-k", "garbage", refused, str(mountpoint), cwd=tmp_path))
    assert line.startswith(f"ninefs mount: {tmp_path / 'garbage'}: not a PEM private key")
    line = one_line(ninefs("mount", "-k", "absent", refused, str(mountpoint), cwd=tmp_path))
    assert line == f"ninefs mount: {tmp_path / 'absent'}: No such file or directory"


@needs_fuse
@pytest.mark.fuse
def test_mount_without_the_key_a_server_wants_says_so(key_dir: Path, mountpoint: Path) -> None:
    with server_process("--authorized-keys", str(key_dir / "authorized")) as (address, _):
        one_line(ninefs("mount", address, str(mountpoint)), address, "authentication required")


def test_umount_of_what_is_not_mounted_says_so(tmp_path: Path) -> None:
    assert one_line(ninefs("umount", str(tmp_path))) == f"ninefs umount: {tmp_path}: not mounted"
    missing = tmp_path / "nowhere"
    assert one_line(ninefs("umount", str(missing))) == f"ninefs umount: {missing}: no such directory"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--timeout", "-1"), ("--timeout", "0"), ("--attr-cache", "soon"), ("--cache", "nan")],
)
def test_mount_refuses_times_that_mean_nothing(tmp_path: Path, option: str, value: str) -> None:
    usage_error(ninefs("mount", option, value, "tcp!127.0.0.1!1", str(tmp_path)), option)


# --- serve -----------------------------------------------------------------------------


def test_serve_on_a_port_in_use_says_so_in_one_line(busy: tuple[str, int]) -> None:
    address, _ = busy
    assert (
        one_line(ninefs("serve", "--listen", address)) == f"ninefs serve: {address}: Address already in use"
    )


@pytest.mark.parametrize("garbage", ["tcp!!", "tcp!127.0.0.1!70000", "carrier!pigeon!1", ""])
def test_serve_on_a_garbage_address_is_refused(garbage: str) -> None:
    r = ninefs("serve", "--listen", garbage)
    assert r.returncode == 2
    one_line(r, "ninefs serve:", garbage)


def test_serve_on_a_name_that_does_not_resolve_names_it() -> None:
    r = ninefs("serve", "--listen", UNRESOLVABLE)
    assert one_line(r) == (
        f"ninefs serve: {UNRESOLVABLE}: cannot resolve no.such.host.invalid: Name or service not known"
    )


def test_serve_on_a_unix_socket_in_a_missing_directory_names_it(tmp_path: Path) -> None:
    address = f"unix!{tmp_path}/nowhere/sock"
    one_line(ninefs("serve", "--listen", address), address, "No such file or directory")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("machine", [False, True])
def test_serve_of_a_missing_directory_or_a_file_names_it(tmp_path: Path, machine: bool) -> None:
    flags = ["--machine"] if machine else []
    missing, file = tmp_path / "nowhere", tmp_path / "file"
    file.write_text("x")
    r = ninefs("serve", *flags, str(missing), "--listen", "tcp!127.0.0.1!0")
    assert one_line(r) == f"ninefs serve: {missing}: no such directory"
    r = ninefs("serve", *flags, str(file), "--listen", "tcp!127.0.0.1!0")
    assert one_line(r) == f"ninefs serve: {file}: not a directory"


def test_serve_with_missing_or_garbage_authorized_keys_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    r = ninefs("serve", "--authorized-keys", str(missing), "--listen", "tcp!127.0.0.1!0")
    assert one_line(r) == f"ninefs serve: {missing}: No such file or directory"
    garbage = tmp_path / "garbage"
    garbage.write_text("# keys\nthis is not a key line\n")
    r = ninefs("serve", "--authorized-keys", str(garbage), "--listen", "tcp!127.0.0.1!0")
    assert one_line(r).startswith(f"ninefs serve: {garbage}:2: ")
    r = ninefs("serve", "--authorized-keys", str(tmp_path), "--listen", "tcp!127.0.0.1!0")
    assert one_line(r) == f"ninefs serve: {tmp_path}: Is a directory"


def test_serve_with_bad_tls_files_names_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    listen = ["--listen", "tls!127.0.0.1!0"]
    r = ninefs("serve", "--tls-cert", str(tmp_path / "absent.pem"), "--tls-key", str(garbage), *listen)
    assert one_line(r) == f"ninefs serve: {tmp_path / 'absent.pem'}: No such file or directory"
    r = ninefs("serve", "--tls-cert", str(garbage), "--tls-key", str(garbage), *listen)
    one_line(r, str(garbage), "not a PEM certificate")
    r = ninefs("serve", "--host-key", str(garbage), *listen)
    one_line(r, str(garbage), "not a PEM private key")


@pytest.mark.parametrize(("option", "value"), [("--msize", "10"), ("--connections", "0"), ("--fids", "many")])
def test_serve_refuses_limits_that_mean_nothing(option: str, value: str) -> None:
    usage_error(ninefs("serve", option, value), option)


# --- cpu ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("home")
    with server_process("--machine", str(home), "--allow-exec") as (address, _):
        yield address


def test_cpu_to_a_host_that_does_not_resolve_names_it() -> None:
    one_line(ninefs("cpu", UNRESOLVABLE, "--", "true"), UNRESOLVABLE, "not known")


def test_cpu_to_a_garbage_address_is_refused_in_one_line() -> None:
    r = ninefs("cpu", "tcp!!", "--", "true")
    assert r.returncode == 2
    one_line(r, "tcp!!")


def test_cpu_to_a_refused_port_says_connection_refused(refused: str) -> None:
    assert one_line(ninefs("cpu", refused, "--", "true")) == f"ninefs cpu: {refused}: connection refused"


def test_cpu_to_a_silent_server_gives_up(silent: str) -> None:
    one_line(ninefs("cpu", silent, "--connect-timeout", "2", "-T", "--", "true"), silent, "within 2 s")


def test_cpu_with_uname_runs_the_command(machine: str) -> None:
    r = ninefs("cpu", machine, "--uname", "somebody", "-T", "--", "echo", "ran")
    assert (r.returncode, r.stdout, r.stderr) == (0, "ran\n", "")


def test_cpu_with_uname_other_than_the_keys_user_is_refused_in_one_line(key_dir: Path) -> None:
    with server_process(
        "--machine", str(key_dir), "--allow-exec", "--authorized-keys", str(key_dir / "authorized")
    ) as (address, _):
        r = ninefs("cpu", "-k", "id", "--uname", "nobody", address, "-T", "--", "true", cwd=key_dir)
        one_line(r, address, "not nobody's")


def test_cpu_t_without_a_terminal_says_so(machine: str) -> None:
    assert one_line(ninefs("cpu", machine, "-t", "--", "true")) == "ninefs cpu: -t: stdin is not a terminal"


def test_cpu_to_a_server_without_cmd_says_so_naming_it_once() -> None:
    with server_process() as (address, _):
        line = one_line(ninefs("cpu", address, "-T", "--", "true"), "no /cmd here")
        assert line.count(address) == 1


# --- others found by trying what a new user would ------------------------------------


@pytest.mark.parametrize("garbage", ["tcp!!", UNRESOLVABLE])
def test_ns_export_on_a_garbage_address_is_refused_in_one_line(garbage: str) -> None:
    one_line(ninefs("ns", "export", "--listen", garbage, "-e", "bind /tmp /x"), garbage)


def test_ns_run_strict_with_a_host_that_does_not_resolve_says_so() -> None:
    r = ninefs("ns", "run", "--strict", "--mount", UNRESOLVABLE, "/n/x", "--", "true")
    assert r.returncode == 2
    assert one_line(r, UNRESOLVABLE).lower().endswith("name or service not known")


def test_ns_run_with_a_missing_namespace_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.ns"
    one_line(ninefs("ns", "run", "-n", str(missing), "--", "true"), str(missing))


def test_ls_of_a_refused_port_says_connection_refused(refused: str) -> None:
    assert one_line(ninefs("ls", refused, "/")) == f"ninefs ls: {refused}: connection refused"


def test_a_command_that_does_not_exist_lists_the_ones_that_do() -> None:
    usage_error(ninefs("mont", "x"), "invalid choice", "mount", "serve")


# --- help ------------------------------------------------------------------------------

# Options of other engineers' files that have no help yet (reported to the lead): the
# walk below fails if one of these gains help (remove it here) or a new one lacks it.
NO_HELP_YET: set[tuple[str, str]] = set()  # every positional and option has its line now


def walk(
    p: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    """Every (command path, action) of `p` and of all its subcommands."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path, _choice(action, name)
                yield from walk(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def _choice(action: argparse._SubParsersAction, name: str) -> argparse.Action:
    """The pseudo-action `--help` lists a subcommand by (its one-line help)."""
    for choice in action._choices_actions:
        if choice.dest == name:
            return choice
    return argparse.Action([], name, help=None)


def test_every_option_of_every_command_has_a_one_line_help() -> None:
    missing, stale = [], set()
    for path, action in walk(parser()):
        if action.help == argparse.SUPPRESS:
            continue
        name = (action.option_strings or [action.dest])[0]
        where = (" ".join(path), name)
        if not (action.help or "").strip():
            if where not in NO_HELP_YET:
                missing.append(where)
        else:
            assert "\n" not in action.help, where
            if where in NO_HELP_YET:
                stale.add(where)
    assert not missing, f"options without help: {missing}"
    assert not stale, f"these have help now; drop them from NO_HELP_YET: {sorted(stale)}"


def test_help_of_each_command_lists_every_option() -> None:
    commands: list[tuple[str, ...]] = [(), *sorted({path for path, _ in walk(parser()) if path})]
    for words in commands:
        p = parser()
        for word in words:
            p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        # The real command for the top and for one that builds its parser alone (cpu); the
        # same parser's text for the rest (a process each would cost a second apiece).
        if words in ((), ("cpu",)):
            r = ninefs(*words, "--help")
            assert r.returncode == 0 and r.stderr == "", (words, r.stderr)
            text = r.stdout
        else:
            text = p.format_help()
        for action in p._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                assert option in text, (words, option)
