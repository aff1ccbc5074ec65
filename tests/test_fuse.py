"""A 9P tree mounted through FUSE, used by real programs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest

from .fuse_helpers import mounted, needs_fuse, ninefs_mounts, sh
from .servers import ninefs_command, server_process

pytestmark = [pytest.mark.fuse, needs_fuse]


@pytest.fixture
def mnt(tmp_path):
    """(export dir, mount point): a LocalTree served by a subprocess, mounted by another."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "hello.txt").write_text("hello\n")
    (export / "src").mkdir()
    for i in range(20):
        (export / "src" / f"f{i:02}.txt").write_text(f"file {i}\n" * (i + 1))
    mp = tmp_path / "mnt"
    mp.mkdir()
    with server_process(str(export)) as (address, _), mounted(address, str(mp)):
        yield export, mp


def ok(command: str, cwd=None) -> str:
    r = sh(command, cwd=cwd)
    assert r.returncode == 0, f"{command}: {r.stderr}"
    return r.stdout


def test_ls_l_stat_cat(mnt):
    export, mp = mnt
    out = ok(f"ls -l {mp}")
    assert "hello.txt" in out and out.splitlines()[0].startswith("total")
    assert ok(f"stat -c '%s %F' {mp}/hello.txt") == "6 regular file\n"
    assert ok(f"cat {mp}/hello.txt") == "hello\n"
    assert sorted(os.listdir(mp / "src")) == sorted(os.listdir(export / "src"))


def test_echo_append_and_truncate(mnt):
    export, mp = mnt
    ok(f"echo more >> {mp}/hello.txt")
    assert (export / "hello.txt").read_text() == "hello\nmore\n"
    ok(f"echo new > {mp}/hello.txt")
    assert (export / "hello.txt").read_text() == "new\n"
    ok(f"truncate -s 2 {mp}/hello.txt")
    assert (export / "hello.txt").read_text() == "ne"
    ok(f"truncate -s 10 {mp}/hello.txt")
    assert (export / "hello.txt").read_bytes() == b"ne" + b"\0" * 8


def test_cp_r_in_and_out_and_diff(mnt, tmp_path):
    export, mp = mnt
    ok(f"cp -r {mp}/src {tmp_path}/copy-out")
    ok(f"diff -r {export}/src {tmp_path}/copy-out")
    ok(f"cp -r {tmp_path}/copy-out {mp}/copy-in")
    ok(f"diff -r {tmp_path}/copy-out {export}/copy-in")
    ok(f"diff -r {mp}/copy-in {mp}/src")


def test_tar_both_ways(mnt, tmp_path):
    export, mp = mnt
    (tmp_path / "x").mkdir()
    ok(f"tar cf - -C {mp} src | tar xf - -C {tmp_path}/x")
    ok(f"diff -r {export}/src {tmp_path}/x/src")
    ok(f"mkdir {mp}/untar && tar cf - -C {tmp_path}/x src | tar xf - -C {mp}/untar")
    ok(f"diff -r {export}/src {export}/untar/src")


def test_find_mkdir_p_rm_r(mnt):
    export, mp = mnt
    ok(f"mkdir -p {mp}/a/b/c/d")
    assert (export / "a" / "b" / "c" / "d").is_dir()
    ok(f"touch {mp}/a/b/c/d/leaf")
    assert ok(f"cd {mp} && find a -type f") == "a/b/c/d/leaf\n"
    assert len(ok(f"find {mp}/src -name '*.txt'").split()) == 20
    ok(f"rm -r {mp}/a")
    assert not (export / "a").exists()


def test_mv_within_and_across_directories(mnt):
    export, mp = mnt
    ok(f"mv {mp}/hello.txt {mp}/renamed.txt")
    assert (export / "renamed.txt").read_text() == "hello\n" and not (export / "hello.txt").exists()
    ok(f"mv {mp}/renamed.txt {mp}/src/")  # across directories: mv falls back to copy on EXDEV
    assert (export / "src" / "renamed.txt").read_text() == "hello\n"
    ok(f"mv -f {mp}/src/f00.txt {mp}/src/f01.txt")  # replaces an existing target, as POSIX says
    assert (export / "src" / "f01.txt").read_text() == "file 0\n"


def test_dd_64_mib_with_checksum(mnt, tmp_path):
    export, mp = mnt
    src = tmp_path / "random.bin"
    src.write_bytes(os.urandom(64 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    ok(f"dd if={src} of={mp}/big.bin bs=1M status=none")
    assert hashlib.sha256((export / "big.bin").read_bytes()).hexdigest() == want
    got = ok(f"dd if={mp}/big.bin bs=1M status=none | sha256sum").split()[0]
    assert got == want


def test_touch_d_and_chmod(mnt):
    export, mp = mnt
    ok(f"touch -d '2001-02-03 04:05:06 UTC' {mp}/hello.txt")
    assert int(os.stat(export / "hello.txt").st_mtime) == 981173106
    ok(f"chmod 600 {mp}/hello.txt")
    assert os.stat(export / "hello.txt").st_mode & 0o777 == 0o600
    assert oct(os.stat(mp / "hello.txt").st_mode & 0o777) == "0o600"


def test_rename_errors_leave_both_names_as_they_were(mnt):
    export, mp = mnt
    (export / "adir").mkdir()
    (export / "afile").write_text("kept")
    with pytest.raises(IsADirectoryError):
        os.rename(mp / "afile", mp / "adir")
    with pytest.raises(NotADirectoryError):
        os.rename(mp / "adir", mp / "afile")
    with pytest.raises(FileNotFoundError):
        os.rename(mp / "missing", mp / "afile")
    assert (mp / "afile").read_text() == "kept" and (mp / "adir").is_dir()
    os.rename(mp / "afile", mp / "bfile")
    assert sorted(os.listdir(export)) == sorted(os.listdir(mp))
    assert (export / "bfile").read_text() == "kept" and not (export / "afile").exists()


def test_a_python_program_using_os_and_open(mnt):
    _export, mp = mnt
    program = f"""
import os
d = {str(mp)!r}
os.makedirs(os.path.join(d, "py/sub"), exist_ok=True)
with open(os.path.join(d, "py/sub/data"), "wb") as f:
    for i in range(1000):
        f.write(b"%d\\n" % i)
with open(os.path.join(d, "py/sub/data"), "r+b") as f:
    f.seek(4)
    assert f.read(2) == b"2\\n"
    f.seek(0)
    f.write(b"X")
    f.flush(); os.fsync(f.fileno())
assert os.path.getsize(os.path.join(d, "py/sub/data")) == 3890
os.rename(os.path.join(d, "py/sub/data"), os.path.join(d, "py/sub/moved"))
print(sorted(os.listdir(os.path.join(d, "py/sub"))))
os.unlink(os.path.join(d, "py/sub/moved"))
os.rmdir(os.path.join(d, "py/sub"))
print(os.listdir(os.path.join(d, "py")))
"""
    out = subprocess.run(["python3", "-c", program], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "['moved']\n[]\n"


def test_git_init_add_commit(mnt):
    export, mp = mnt
    repo = mp / "repo"
    repo.mkdir()
    env = "GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@x GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@x"
    ok(f"git init -q . && echo data > file && git add file && {env} git commit -qm first", cwd=repo)
    assert ok("git log --oneline", cwd=repo).strip().endswith("first")
    assert ok(f"git -C {export / 'repo'} show HEAD:file") == "data\n"


def test_errors_a_user_sees(mnt):
    _export, mp = mnt
    r = sh(f"cat {mp}/missing")
    assert r.returncode != 0 and "No such file or directory" in r.stderr
    r = sh(f"rmdir {mp}/src")
    assert r.returncode != 0 and "Directory not empty" in r.stderr
    r = sh(f"mkdir {mp}/src")
    assert r.returncode != 0 and "File exists" in r.stderr


def test_read_only_export_says_read_only_file_system(tmp_path):
    export, mp = tmp_path / "ro", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    (export / "f").write_text("keep")
    with server_process(str(export), "--ro") as (address, _), mounted(address, str(mp)):
        r = sh(f"echo x > {mp}/f")
        assert r.returncode != 0 and "Read-only file system" in r.stderr
        r = sh(f"touch {mp}/new")
        assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert (export / "f").read_text() == "keep"


def test_killing_the_server_gives_io_errors_within_the_deadline_and_umount_works(tmp_path):
    export, mp = tmp_path / "e", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    (export / "big").write_bytes(os.urandom(8 << 20))
    with server_process(str(export)) as (address, proc), mounted(address, str(mp), "--timeout=5"):
        reader = subprocess.Popen(
            f"while true; do cat {mp}/big > /dev/null || exit 7; done",
            shell=True,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            start = time.monotonic()
            _, err = reader.communicate(timeout=30)
            assert reader.returncode == 7
            assert "Input/output error" in err or "Connection timed out" in err
            assert time.monotonic() - start < 15
            r = sh(f"ls {mp}")
            assert r.returncode != 0
        finally:
            if reader.poll() is None:
                reader.kill()
        r = subprocess.run(ninefs_command("umount", str(mp)), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert str(mp) not in ninefs_mounts()


def test_umount_by_sigterm_to_the_mount_process(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with server_process() as (address, _):
        proc = subprocess.Popen(ninefs_command("mount", "--foreground", address, str(mp)))
        try:
            deadline = time.monotonic() + 20
            while str(mp) not in ninefs_mounts():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            ok(f"echo hi > {mp}/x")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            assert str(mp) not in ninefs_mounts()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if str(mp) in ninefs_mounts():
                sh(f"fusermount3 -uz {mp}")


def test_mount_of_a_server_that_is_not_there_fails_clearly(tmp_path):
    r = subprocess.run(
        ninefs_command("mount", "tcp!127.0.0.1!1", str(tmp_path)), capture_output=True, text=True
    )
    assert r.returncode == 1 and "tcp!127.0.0.1!1" in r.stderr
    assert str(tmp_path) not in ninefs_mounts()


def test_changes_on_the_server_show_up(mnt):
    export, mp = mnt
    assert ok(f"cat {mp}/hello.txt") == "hello\n"
    time.sleep(0.01)
    (export / "hello.txt").write_text("changed behind our back\n")
    time.sleep(1.2)  # past the attribute cache
    assert ok(f"cat {mp}/hello.txt") == "changed behind our back\n"


def test_a_whole_machine_mounted_reads_like_files(tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine\n")
    child = subprocess.Popen(["sleep", "60"])
    try:
        with server_process("--machine", str(tmp_path / "home")) as (address, _), mounted(address, str(mp)):
            assert ok(f"cat {mp}/dev/ncpu").strip() == ok("nproc").strip()
            assert len(ok(f"cat {mp}/dev/load").split()) == 3
            assert str(child.pid) in ok(f"ls {mp}/proc").split()
            assert "sleep" in ok(f"cat {mp}/proc/{child.pid}/status")
            assert ok(f"cat {mp}/fs/notes.txt") == "mine\n"
            assert sorted(os.listdir(mp)) == ["dev", "fs", "proc"]  # no /cmd without --allow-exec
    finally:
        child.kill()
        child.wait()


def test_exec_is_refused_on_a_non_loopback_address():
    r = subprocess.run(
        ninefs_command("serve", "--machine", "--allow-exec", "--listen", "tcp!0.0.0.0!0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "only loopback" in r.stderr


def test_the_mount_reconnects_after_the_server_restarts(tmp_path):
    export, mp = tmp_path / "e", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    (export / "before.txt").write_text("written before\n")
    with server_process(str(export)) as (address, proc), mounted(address, str(mp), "--timeout=20"):
        assert ok(f"cat {mp}/before.txt") == "written before\n"
        ok(f"mkdir {mp}/d && echo kept > {mp}/d/kept.txt")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with server_process(str(export), listen=address):  # the same address, a new process
            assert ok(f"cat {mp}/d/kept.txt") == "kept\n"
            ok(f"echo after > {mp}/after.txt")
            assert (export / "after.txt").read_text() == "after\n"
            assert sorted(os.listdir(mp)) == ["after.txt", "before.txt", "d"]


def test_no_reconnect_fails_instead(tmp_path):
    export, mp = tmp_path / "e", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    (export / "f").write_text("x\n")
    with (
        server_process(str(export)) as (address, proc),
        mounted(address, str(mp), "--no-reconnect", "--timeout=5"),
    ):
        assert ok(f"cat {mp}/f") == "x\n"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with server_process(str(export), listen=address):
            r = sh(f"cat {mp}/f")
            assert r.returncode != 0


def test_open_for_append_finds_a_file_made_elsewhere_after_a_listing(tmp_path):
    export, mp = tmp_path / "export", tmp_path / "mnt"
    (export / "src").mkdir(parents=True)
    mp.mkdir()
    with server_process(str(export)) as (address, _), mounted(address, str(mp), "--attr-cache", "1"):
        ok(f"ls {mp}/src")  # the mount now knows every name in src
        (export / "src" / "late.txt").write_text("made on the server\n")
        time.sleep(1.2)  # past the attribute cache: the next listing asks the server
        assert ok(f"ls {mp}/src").count("late.txt") == 1
        (export / "src" / "later.txt").write_text("first\n")
        ok(f"echo appended >> {mp}/src/later.txt")  # O_CREAT: opens what is there, no EEXIST
        assert (export / "src" / "later.txt").read_text() == "first\nappended\n"


def test_reads_are_whole_when_the_server_answers_in_small_pieces(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    data = os.urandom(300_000)
    (export / "big.bin").write_bytes(data)
    mp = tmp_path / "mnt"
    mp.mkdir()
    with server_process(str(export), "--msize", "8192") as (address, _), mounted(address, str(mp)):
        assert hashlib.sha256((mp / "big.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
        with open(mp / "big.bin", "rb") as f:
            f.seek(123_457)
            assert f.read(70_000) == data[123_457:193_457]


def test_more_files_than_the_server_allows_fids(tmp_path):
    # Our server gives a connection 4096 fids; the kernel may know many more inodes.
    export = tmp_path / "export"
    (export / "many").mkdir(parents=True)
    for i in range(4300):
        (export / "many" / f"f{i}").write_text(str(i))
    mp = tmp_path / "mnt"
    mp.mkdir()
    with (
        server_process(str(export)) as (address, _),
        mounted(address, str(mp), "--attr-cache", "0"),
    ):
        program = (
            "import os, sys\n"
            "d = sys.argv[1]\n"
            "sizes = [os.stat(f'{d}/f{i}').st_size for i in range(4300)]\n"
            "texts = [open(f'{d}/f{i}').read() for i in range(0, 4300, 5)]\n"
            "print(sum(sizes), len(texts))\n"
        )
        r = subprocess.run(
            ["python3", "-c", program, str(mp / "many")], capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [str(sum(len(str(i)) for i in range(4300))), "860"]


def test_a_directory_renamed_behind_the_mounts_back_is_used_by_its_new_name(mnt):
    # A qid.path seen again under another name (renamed elsewhere, or a removed file's
    # number given to a new one): nothing the mount walked for the old name is used.
    export, mp = mnt
    ok(f"mkdir {mp}/a && echo 1 > {mp}/a/f && echo 2 > {mp}/a/g")  # a's next create is prepared
    (export / "a").rename(export / "b")
    time.sleep(1.2)  # past the kernel's own cache
    assert "b" in ok(f"ls {mp}").split()
    ok(f"echo 3 > {mp}/b/h && cat {mp}/b/f")
    assert (export / "b" / "h").read_text() == "3\n"
