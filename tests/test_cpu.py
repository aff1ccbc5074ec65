"""`ninefs cpu`: a command on another machine that sees the caller's files at /mnt/term."""

from __future__ import annotations

import subprocess

import pytest

import ninep.sync

from .fuse_helpers import needs_fuse, on_terminal
from .servers import ninefs_command, server_process

pytestmark = [pytest.mark.fuse, needs_fuse]


def cpu(address: str, *args: str, stdin: str = "", cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ninefs_command("cpu", address, *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=cwd,
    )


@pytest.fixture
def machine(tmp_path):
    with server_process("--machine", str(tmp_path), "--allow-exec") as (address, _):
        yield address


def test_the_remote_command_reads_and_writes_the_callers_files(machine, tmp_path):
    mine = tmp_path / "caller"
    mine.mkdir()
    (mine / "notes.txt").write_text("the caller's notes\n")
    r = cpu(
        machine,
        "--",
        "sh",
        "-c",
        f"cat /mnt/term{mine}/notes.txt; echo from the remote > /mnt/term{mine}/reply.txt",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the caller's notes\n"
    assert (mine / "reply.txt").read_text() == "from the remote\n"


def test_exit_status_stdin_and_stderr_pass_through(machine):
    r = cpu(machine, "--", "sh", "-c", "wc -c; echo oops >&2; exit 3", stdin="x" * 100_000)
    assert r.returncode == 3
    assert r.stdout.strip() == "100000"
    assert r.stderr == "oops\n"


def test_cwd_is_the_callers_directory_under_mnt_term(machine, tmp_path):
    (tmp_path / "here.txt").write_text("here\n")
    r = cpu(machine, "--cwd", "--", "sh", "-c", "pwd; cat here.txt", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"/mnt/term{tmp_path}\nhere\n"


def test_the_callers_namespace_file_shapes_what_the_remote_sees(machine, tmp_path):
    with server_process() as (beta, _):
        with ninep.sync.connect(beta) as fs:
            fs.write_bytes("report", b"from beta\n")
        r = cpu(machine, "-e", f"mount {beta} /n/beta", "--", "cat", "/mnt/term/n/beta/report")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "from beta\n"


def test_a_server_without_exec_says_so(tmp_path):
    with server_process("--machine", str(tmp_path)) as (address, _):
        r = cpu(address, "--", "true")
        assert r.returncode == 1 and "--allow-exec" in r.stderr


def test_a_missing_program_is_exit_127_with_a_message(machine):
    r = cpu(machine, "--", "no-such-program-here")
    assert r.returncode == 127 and "no-such-program-here" in r.stderr


def test_a_signal_to_cpu_reaches_the_remote_command(machine, tmp_path):
    import signal
    import time

    proc = subprocess.Popen(
        ninefs_command(
            "cpu",
            machine,
            "--",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert "got TERM" in out
        assert proc.returncode == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_from_a_terminal_the_remote_command_gets_a_terminal_of_the_same_size(machine):
    script = "tty; stty size; read line; echo got $line; exit 5"
    argv = ninefs_command("cpu", machine, "--", "sh", "-c", script)
    status, out = on_terminal(argv, b"33 101", b"typed\r", size=(33, 101))
    assert status == 5, out
    text = out.decode(errors="replace")
    assert "/dev/pts/" in text and "33 101" in text and "got typed" in text


def test_ctrl_c_at_a_terminal_interrupts_the_remote_command(machine):
    script = "trap 'echo interrupted; exit 3' INT; echo ready; while :; do sleep 0.1; done"
    status, out = on_terminal(ninefs_command("cpu", machine, "--", "sh", "-c", script), b"ready", b"\x03")
    assert status == 3, out
    assert b"interrupted" in out
