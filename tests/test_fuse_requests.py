"""What the kernel asks the mount, counted: each mechanism of our FUSE layer that exists to
make the kernel ask less (issue #17) is checked by the requests it saves, and each cache by
the change that must still reach the kernel (docs/mount.md, "Requests per operation").

The mount runs in this test's trio loop (mount_tree with a request counter) over a real
`ninefs serve` subprocess; the commands are real programs, run as subprocesses, so the
loop serving the mount is free to answer them."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from mount.mounter import mount_tree
from ninep import RemoteTree

from .fuse_helpers import mounted_here, needs_fuse
from .servers import server_process

pytestmark = [pytest.mark.fuse, needs_fuse]


@asynccontextmanager
async def counted_mount(export: Path, mp: Path, **options: float | bool) -> AsyncIterator[Counter[str]]:
    """`export` served by `ninefs serve` and mounted on `mp` in this loop; yields the counter
    of the kernel's requests by opcode name."""
    counts: Counter[str] = Counter()
    async with mounted_here(export, mp, counts, **options):
        yield counts


async def sh(command: str) -> str:
    """A shell command, as a subprocess (the kernel's requests it makes reach this loop)."""
    r = await trio.run_process(["sh", "-c", command], capture_stdout=True, capture_stderr=True, check=False)
    assert r.returncode == 0, f"{command}: {r.stderr.decode()}"
    return r.stdout.decode()


async def fails(command: str) -> str:
    r = await trio.run_process(["sh", "-c", command], capture_stdout=True, capture_stderr=True, check=False)
    assert r.returncode != 0, f"{command} succeeded: {r.stdout.decode()}"
    return r.stderr.decode()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    export, mp = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    (export / "f").write_text("hello\n")
    d = export / "d"
    d.mkdir()
    for i in range(200):
        (d / f"n{i:03d}").write_text(f"file {i}\n")
    return export, mp


async def test_reading_a_file_sends_no_flush(tree):
    export, mp = tree
    async with counted_mount(export, mp) as counts:
        assert await sh(f"cat {mp}/f") == "hello\n"
        counts.clear()
        assert await sh(f"cat {mp}/f; cat {mp}/f") == "hello\nhello\n"
        assert counts["OPEN"] == 2 and counts["RELEASE"] == 2
        assert counts["FLUSH"] == 0  # FOPEN_NOFLUSH: a read-only open has nothing to flush
        await sh(f"echo more >> {mp}/f")
        assert counts["FLUSH"] >= 1  # a writer's close still waits for its writes (sh: one per dup)


async def test_a_small_file_is_read_with_its_open_not_a_read_request(tree):
    export, mp = tree
    data = os.urandom(4096).hex()[:4096]
    async with counted_mount(export, mp) as counts:
        await sh(f"printf %s {data} > {mp}/w; stat {mp}/w > /dev/null")  # written through us
        (export / "o").write_text("other\n")  # and one written elsewhere
        await sh(f"stat {mp}/o > /dev/null")
        counts.clear()
        assert await sh(f"cat {mp}/w") == data
        assert await sh(f"cat {mp}/o") == "other\n"
        # the open's Tread filled the kernel's pages (notify_store): no READ
        assert counts["OPEN"] == 2 and counts["READ"] == 0, counts
        (export / "o").write_text("OTHER\n")  # same length, new bytes: the next open reads them
        assert await sh(f"cat {mp}/o") == "OTHER\n"
        assert await sh(f"cat {mp}/o") == "OTHER\n"


async def test_small_files_read_by_many_processes_at_once_never_wait_on_each_other(tree):
    """A file's pages are filled at open only while no one else has it open: a READ in
    flight holds their locks, and the mount would wait in the kernel for itself."""
    export, mp = tree
    (export / "d" / "big").write_bytes(os.urandom(3 << 20))
    want = {p.name: p.read_bytes() for p in (export / "d").iterdir()}
    loop = "for i in 1 2 3 4 5 6 7 8 9 10; do cat {mp}/d/n00[0-9] {mp}/d/big > /dev/null; done"
    async with counted_mount(export, mp):
        with trio.fail_after(120):  # a deadlock hangs; this only ends the test if it does
            async with trio.open_nursery() as n:
                for _ in range(6):
                    n.start_soon(sh, loop.format(mp=mp))
        got = await trio.to_thread.run_sync(lambda: {p.name: p.read_bytes() for p in (mp / "d").iterdir()})
        assert got == want


JOURNAL = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
for r in range(int(sys.argv[2])):
    os.pwrite(fd, b"H" * 512, 0)  # a journal's header, then its pages one after another
    for i in range(6):
        os.pwrite(fd, bytes([65 + i + r % 7]) * 4096, 512 + 4096 * i)
    os.pwrite(fd, b"h%d" % r * 9, 0)  # the header rewritten over the unsent ones: after them
    os.pwrite(fd, b"Z" * 100, (1 << 20) + r)  # far from the rest
    os.fdatasync(fd)
os.close(fd)
"""


def journal_bytes(rounds: int) -> bytes:
    out = bytearray()

    def put(data: bytes, at: int) -> None:
        out.extend(b"\0" * max(0, at + len(data) - len(out)))
        out[at : at + len(data)] = data

    for r in range(rounds):
        put(b"H" * 512, 0)
        for i in range(6):
            put(bytes([65 + i + r % 7]) * 4096, 512 + 4096 * i)
        put(b"h%d" % r * 9, 0)
        put(b"Z" * 100, (1 << 20) + r)
    return bytes(out)


async def test_small_writes_that_continue_each_other_go_to_the_server_as_one(tree):
    export, mp = tree
    nine: Counter[str] = Counter()
    async with mounted_here(export, mp) as t:
        t.conn.counts = nine
        await trio.run_process([sys.executable, "-c", JOURNAL, str(mp / "j"), "1"])
        # 9 writes: the header and the pages after it go as one Twrite (unless 2 ms pass
        # between every two of them); the rewrite and the far one each on their own
        assert nine["Twrite"] < 9, nine
        assert (export / "j").read_bytes() == journal_bytes(1)
        await trio.run_process([sys.executable, "-c", JOURNAL, str(mp / "k"), "40"])
        assert (export / "k").read_bytes() == journal_bytes(40)
        got = await trio.to_thread.run_sync((mp / "k").read_bytes)
        assert got == journal_bytes(40)


async def test_a_second_listing_is_served_by_the_kernels_directory_cache(tree):
    export, mp = tree
    async with counted_mount(export, mp) as counts:
        first = await sh(f"ls {mp}/d")
        assert counts["READDIRPLUS"] + counts["READDIR"] >= 1
        counts.clear()
        assert await sh(f"ls {mp}/d") == first
        assert counts["READDIRPLUS"] + counts["READDIR"] == 0  # FOPEN_CACHE_DIR + KEEP_CACHE
        assert counts["OPENDIR"] == 1  # which learns the directory's qid.vers


async def test_a_directory_this_mount_changed_is_served_by_the_kernels_cache_once_it_read_it(tree):
    export, mp = tree
    async with counted_mount(export, mp, attr_cache=3.0) as counts:
        await sh(f"mkdir {mp}/w && for i in 1 2 3; do echo $i > {mp}/w/f$i; done")
        assert (await sh(f"ls {mp}/w")).split() == ["f1", "f2", "f3"]  # from the mount's memory
        counts.clear()
        assert (await sh(f"ls {mp}/w")).split() == ["f1", "f2", "f3"]
        # the kernel's own copy (a tree git or tar wrote was read anew at each listing:
        # git status again was two readdirplus a directory)
        assert counts["READDIRPLUS"] + counts["READDIR"] == 0, counts
        await sh(f"echo 4 > {mp}/w/f4; rm {mp}/w/f1; mv {mp}/w/f2 {mp}/w/g2")
        assert (await sh(f"ls {mp}/w")).split() == ["f3", "f4", "g2"]  # each change at once
        counts.clear()
        assert (await sh(f"ls {mp}/w")).split() == ["f3", "f4", "g2"]
        assert counts["READDIRPLUS"] + counts["READDIR"] == 0, counts
        (export / "w" / "elsewhere").write_text("x")  # another machine's: past the attribute cache
        await trio.sleep(3.2)
        assert (await sh(f"ls {mp}/w")).split() == ["elsewhere", "f3", "f4", "g2"]


async def test_a_listing_after_another_client_changed_the_directory_is_read_afresh(tree):
    export, mp = tree
    async with counted_mount(export, mp, attr_cache=1.0) as counts:
        await sh(f"ls {mp}/d")
        (export / "d" / "new").write_text("x")
        os.unlink(export / "d" / "n000")
        await trio.sleep(1.5)
        counts.clear()
        names = (await sh(f"ls {mp}/d")).split()
        assert "new" in names and "n000" not in names
        assert counts["READDIRPLUS"] + counts["READDIR"] >= 1


async def test_ls_l_asks_nothing_per_file(tree):
    export, mp = tree
    async with counted_mount(export, mp) as counts:
        await sh(f"stat {mp}/d > /dev/null")
        counts.clear()
        out = await sh(f"ls -l {mp}/d")
        assert len(out.splitlines()) == 201
        assert counts["LOOKUP"] == 0  # READDIRPLUS gave every entry with its attributes
        assert counts["GETATTR"] <= 2
        counts.clear()
        await sh(f"ls -l {mp}/d")
        assert counts["LOOKUP"] + counts["READDIRPLUS"] == 0
        # The kernel forgets a directory's atime once it has read it (fuse_invalidate_atime), so
        # `ls -l` asks for the directory's stat again (answered from our cache); not on --ro.
        assert counts["GETATTR"] <= 1
        assert counts["GETXATTR"] + counts["LISTXATTR"] == 0  # ENOSYS once: never asked again


async def test_a_read_only_mount_asks_nothing_for_a_repeated_ls_l(tree):
    export, mp = tree
    async with counted_mount(export, mp, read_only=True) as counts:
        await sh(f"ls -l {mp}/d > /dev/null; cat {mp}/f > /dev/null")
        counts.clear()
        await sh(f"ls -l {mp}/d > /dev/null; cat {mp}/f > /dev/null; stat {mp}/f > /dev/null")
        assert counts["LOOKUP"] + counts["GETATTR"] + counts["READDIRPLUS"] + counts["FLUSH"] == 0
        await fails(f"touch {mp}/f")  # and it is read-only: EROFS


async def test_a_repeated_stat_within_the_attribute_cache_asks_nothing(tree):
    export, mp = tree
    async with counted_mount(export, mp) as counts:
        await sh(f"stat {mp}/f")
        counts.clear()
        await sh(f"for i in 1 2 3 4 5; do stat {mp}/f >/dev/null; done")
        assert counts["LOOKUP"] + counts["GETATTR"] == 0  # the kernel's timeouts are our cache's


async def test_a_missing_name_is_asked_for_once_within_the_negative_cache(tree):
    export, mp = tree
    async with counted_mount(export, mp) as counts:
        await sh(f"ls {mp}/f")  # the root listed? no: only f looked up
        counts.clear()
        for _ in range(3):
            await fails(f"stat {mp}/missing")
        assert counts["LOOKUP"] == 1


async def test_a_name_made_elsewhere_shows_once_the_negative_cache_is_over(tree):
    export, mp = tree
    async with counted_mount(export, mp, negative_cache=1.0) as _:
        await fails(f"stat {mp}/later")
        (export / "later").write_text("now\n")
        deadline = time.monotonic() + 10
        while True:
            r = await trio.run_process(["cat", f"{mp}/later"], capture_stdout=True, check=False)
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, "a name made elsewhere never showed"
            await trio.sleep(0.2)
        assert r.stdout == b"now\n"


async def test_a_name_made_through_the_mount_shows_at_once_despite_the_negative_cache(tree):
    export, mp = tree
    async with counted_mount(export, mp) as _:
        await fails(f"stat {mp}/soon")
        await sh(f"echo here > {mp}/soon")
        assert await sh(f"cat {mp}/soon") == "here\n"


async def test_another_clients_change_shows_in_stat_within_the_attribute_cache(tree):
    export, mp = tree
    async with counted_mount(export, mp, attr_cache=2.0) as _:
        assert (await sh(f"stat -c %s {mp}/f")).strip() == "6"
        (export / "f").write_text("longer than before\n")
        t0 = time.monotonic()
        while (await sh(f"stat -c %s {mp}/f")).strip() != "19":
            assert time.monotonic() - t0 < 2.0 + 5, "the change never showed in stat"
            await trio.sleep(0.2)


async def test_a_file_replaced_on_the_host_by_a_rename_is_what_the_next_open_reads(tree):
    """An editor's save on the server (write a new file, rename it over the old): the
    next open reads the new file at once, within the attribute cache, as sshfs and NFS
    do; the kernel is told ESTALE, looks the name up again, and opens what it finds."""
    export, mp = tree
    async with counted_mount(export, mp, attr_cache=30.0):
        assert await sh(f"cat {mp}/f") == "hello\n"
        async with trio.open_nursery() as n:  # held open across the replacement
            done = trio.Event()

            async def holder() -> None:
                fd = await trio.to_thread.run_sync(os.open, str(mp / "f"), os.O_RDONLY)
                await done.wait()
                assert await trio.to_thread.run_sync(os.pread, fd, 100, 0) == b"hello\n"
                os.close(fd)

            n.start_soon(holder)
            await trio.sleep(0.2)
            (export / ".f.new").write_text("saved again\n")
            os.rename(export / ".f.new", export / "f")
            assert await sh(f"cat {mp}/f") == "saved again\n"
            assert await sh(f"cat {mp}/f; stat -c %s {mp}/f") == "saved again\n12\n"
            done.set()


async def test_our_own_write_shows_in_stat_at_once(tree):
    export, mp = tree
    async with counted_mount(export, mp) as _:
        assert (await sh(f"stat -c %s {mp}/f")).strip() == "6"
        await sh(f"echo more >> {mp}/f")
        assert (await sh(f"stat -c %s {mp}/f")).strip() == "11"
        await sh(f"truncate -s 2 {mp}/f")
        assert (await sh(f"stat -c %s {mp}/f; cat {mp}/f")) == "2\nhe"


async def test_a_file_removed_elsewhere_is_gone_from_lookups_after_a_listing(tree):
    export, mp = tree
    async with counted_mount(export, mp, attr_cache=1.0) as _:
        await sh(f"cat {mp}/d/n001")
        os.unlink(export / "d" / "n001")
        await trio.sleep(1.5)
        assert "n001" not in (await sh(f"ls {mp}/d")).split()
        await fails(f"stat {mp}/d/n001")


async def test_without_allow_other_creates_and_removes_cost_no_getattr_of_the_directory(tree):
    export, mp = tree
    async with counted_mount(export, mp) as counts:
        await sh(f"ls {mp}/d > /dev/null")
        counts.clear()
        await sh(f"cd {mp}/d && for i in 1 2 3 4 5 6 7 8 9 10; do echo x > new$i; done && rm new*")
        assert counts["CREATE"] == 10 and counts["UNLINK"] == 10
        assert counts["GETATTR"] <= 2  # no default_permissions: the kernel checks no modes


async def test_a_connection_the_kernel_aborts_ends_the_session_and_its_dead_mount_is_taken_down(tree):
    """echo 1 > /sys/fs/fuse/connections/N/abort (fusectl, mounted in a mount namespace of
    the test's own): the session sees ENODEV, mount_tree returns, and the mount, dead
    (ENOTCONN) rather than unmounted, is detached, not left behind."""
    export, mp = tree
    with server_process(str(export)) as (address, _):
        async with RemoteTree.connect(address, uname="root") as t, trio.open_nursery() as nursery:
            ready, ended = trio.Event(), trio.Event()

            async def serve() -> None:
                try:
                    await mount_tree(t, str(mp), uname="root", ready=ready.set, unmount_on_signals=False)
                finally:
                    ended.set()

            nursery.start_soon(serve)
            with trio.fail_after(30):
                await ready.wait()
            # a stat of our own mount from the loop that serves it would never be answered
            minor = os.minor((await trio.to_thread.run_sync(os.stat, mp)).st_dev)
            fusectl = "/sys/fs/fuse/connections"  # mounted already on some hosts
            script = f"{{ mountpoint -q {fusectl} || mount -t fusectl none {fusectl}; }} && echo 1 > /sys/fs/fuse/connections/{minor}/abort"
            await trio.run_process(["unshare", "-m", "sh", "-c", script])
            with trio.fail_after(20):
                await ended.wait()
    with open("/proc/mounts") as f:
        assert str(mp) not in [line.split()[1] for line in f]
    assert os.listdir(mp) == []  # the directory underneath again
