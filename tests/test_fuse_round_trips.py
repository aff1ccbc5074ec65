"""What the mount asks the server, counted: each way the mount saves a 9P round trip
(issue #17) is checked by the waits it saves, and by what a user still sees.

A "wait" is one call of the client that waited for replies: at least one round trip,
however many requests went in its write (Connection.counts). The mount runs in this
test's trio loop over a real `ninefs serve` subprocess; the commands are real programs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ninep.messages import Message, Twalk

from .fuse_helpers import mounted_here, needs_fuse

pytestmark = [pytest.mark.fuse, needs_fuse]


_CONNS: dict[int, Any] = {}


@asynccontextmanager
async def counted(export: Path, mp: Path, **options: float) -> AsyncIterator[Counter[str]]:
    """`export` served and mounted on `mp` in this loop; yields the 9P counter (by request
    type, and "waits")."""
    async with mounted_here(export, mp, **options) as tree:
        nine: Counter[str] = Counter()
        tree.conn.counts = nine
        _CONNS[id(nine)] = tree.conn
        try:
            yield nine
        finally:
            del _CONNS[id(nine)]


def recorded_calls(nine: Counter[str]) -> list[list[Message]]:
    """From now on, the requests of each call the connection `counted` counts with `nine`
    makes (one write each), in the order they went."""
    conn = _CONNS[id(nine)]
    calls: list[list[Message]] = []
    windowed = conn.windowed

    async def recording(requests: Any, window: int, **kw: Any) -> Any:
        calls.append([m for m, _ in requests])
        return await windowed(requests, window, **kw)

    conn.windowed = recording
    return calls


async def sh(command: str) -> str:
    r = await trio.run_process(["sh", "-c", command], capture_stdout=True, capture_stderr=True, check=False)
    assert r.returncode == 0, f"{command}: {r.stderr.decode()}"
    return r.stdout.decode()


async def settle() -> None:
    """What went behind the last command (clunks, the stat after a close) is in."""
    await trio.sleep(0.1)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    export, mp = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    d = export / "d"
    d.mkdir()
    for i in range(200):
        (d / f"n{i:03d}").write_text(f"file {i}\n")
    (export / "f").write_text("hello\n")
    return export, mp


async def test_a_listing_comes_with_its_open(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        await sh(f"stat {mp}/d >/dev/null")
        await settle()
        nine.clear()
        names = (await sh(f"ls {mp}/d")).split()
        assert names == sorted(p.name for p in (export / "d").iterdir())
        # Twalk+Topen+Tread in one write, then the Tread that hears the end: was three waits
        assert nine["waits"] == 2 and nine["Tread"] == 2


async def test_a_directory_the_mount_read_whole_is_listed_from_memory_then_read_again(tree):
    # What `find`, `du` or `git status` after drop_caches meets: the kernel has no listing,
    # the mount has one (here read in the background, after two lookups of names it lacks).
    export, mp = tree
    async with counted(export, mp, attr_cache=2.0) as nine:
        await sh(f"stat {mp}/d/nothing {mp}/d/nor-this 2>/dev/null; true")
        await settle()
        nine.clear()
        names = sorted(p.name for p in (export / "d").iterdir())
        assert (await sh(f"ls {mp}/d")).split() == names
        assert nine["waits"] == 0, nine  # within the attribute cache: the trust lookups put in it
        await trio.sleep(2.2)
        assert (await sh(f"ls {mp}/d")).split() == names
        # Past the attribute cache: its stat for the lookup (Twalk+Tstat), and the listing read
        # again (Twalk+Topen+Tread, the Tread that hears the end), every name's stat with it
        assert nine["waits"] == 3 and nine["Topen"] == 1 and nine["Tread"] == 2, nine
        (export / "d" / "new").write_text("made on the host\n")
        with trio.fail_after(2.0 + 3):  # another machine's change shows within the attribute cache
            while "new" not in (await sh(f"ls {mp}/d")).split():
                await trio.sleep(0.2)


async def test_a_listing_from_memory_shows_every_change_made_through_the_mount_at_once(tree):
    export, mp = tree
    (export / "e").mkdir()
    async with counted(export, mp) as nine:

        async def same(*dirs: str) -> None:
            for d in dirs:
                nine.clear()
                assert (await sh(f"ls -a {mp}/{d}")).split() == sorted([".", "..", *os.listdir(export / d)])
                assert nine["Tread"] == 0, nine  # the mount's own listing, read whole before

        await sh(f"ls {mp}/d {mp}/e >/dev/null")
        steps = [
            f"echo new > {mp}/d/made",
            f"mkdir {mp}/d/sub",
            f"mv {mp}/d/made {mp}/d/renamed",
            f"mv {mp}/d/renamed {mp}/e/moved",
            f"mv {mp}/e/moved {mp}/d/n005",  # onto a name that exists
            f"rm {mp}/d/n006",
            f"rmdir {mp}/d/sub",
            f"mv {mp}/d/n007 {mp}/e/; mkdir {mp}/e/n008; mv {mp}/e/n008 {mp}/d/dir8",
        ]
        for step in steps:
            await sh(step)
            await same("d", "e")
        assert (await sh(f"cat {mp}/d/n005")) == "new\n"


async def test_ls_l_past_the_attribute_cache_reads_the_directory_again_not_each_stat(tree):
    export, mp = tree
    async with counted(export, mp, attr_cache=1.0) as nine:
        await sh(f"ls -l {mp}/d >/dev/null")
        await trio.sleep(1.2)
        nine.clear()
        out = await sh(f"ls -l {mp}/d")
        assert len(out.splitlines()) == 201
        # The directory's stat, its listing in two reads: was a Tstat for each of 200 names,
        # the kernel having kept its listing while the stats in it went old.
        assert nine["waits"] <= 4 and nine["Tstat"] <= 1, nine


async def test_stat_of_every_name_past_the_attribute_cache_reads_their_directory_once(tree):
    # `git status` or `du` after the attribute cache: an lstat of each file the mount knows,
    # each stat too old to answer with.
    export, mp = tree
    async with counted(export, mp, attr_cache=1.0) as nine:
        await sh(f"ls {mp}/d >/dev/null")
        (export / "d" / "n010").write_text("changed on the host\n")
        await trio.sleep(1.2)
        nine.clear()
        sizes = (await sh(f"cd {mp}/d && stat -c '%n %s' n*")).splitlines()
        assert len(sizes) == 200 and "n010 20" in sizes  # the host's change is seen
        # Two walks (the second starts the listing), the listing: not 200 walks
        assert nine["waits"] <= 8, nine


async def test_the_fsync_of_a_directory_reaches_the_server(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        code = "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.close(fd)"
        await sh(f"stat {mp}/d >/dev/null")
        await settle()
        nine.clear()
        await sh(f"python3 -c '{code}' {mp}/d")
        # The open reads the listing (SQLite does this after each journal it makes or
        # removes, an editor after its rename); the null Twstat is the fsync (stat(5)),
        # which was answered at once and never asked: its entries were not made durable.
        assert nine["Twstat"] == 1 and nine["waits"] <= 2, nine
        await sh(f"ls {mp}/d >/dev/null; echo x > {mp}/d/new")
        await settle()
        nine.clear()
        await sh(f"python3 -c '{code}' {mp}/d")  # listed from memory: only the fsync waits
        assert nine["Twstat"] == 1 and nine["waits"] == 1, nine
        nine.clear()
        await sh(f"python3 -c '{code}' {mp}")  # the root too
        assert nine["Twstat"] == 1, nine


async def test_a_chmod_to_the_mode_a_file_has_asks_nothing(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        await sh(f"echo x > {mp}/new; chmod 600 {mp}/new")
        await settle()
        nine.clear()
        await sh(f"chmod 600 {mp}/new")  # rsync's fchmod of the temporary file it made
        assert nine["Twstat"] == 0
        await sh(f"chmod 640 {mp}/new")
        assert nine["Twstat"] == 1
        assert oct((export / "new").stat().st_mode & 0o777) == "0o640"


async def test_fstat_after_our_own_writes_is_answered_without_the_server(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        code = (
            f"import os; fd = os.open('{mp}/w', os.O_CREAT | os.O_WRONLY, 0o644); "
            "sizes = []; "
            "[(os.write(fd, b'x' * 1000), sizes.append(os.fstat(fd).st_size)) for _ in range(20)]; "
            "os.close(fd); print(sizes[-1], len(set(sizes)))"
        )
        nine.clear()
        out = await sh(f'python3 -c "{code}"')
        assert out.split() == ["20000", "20"]  # each fstat saw every byte written before it
        # the lookup that found no `w` (its walk and stat go together) and the stat after
        # close, off the writer's path; it was one more for each fstat
        assert nine["Tstat"] <= 2
        assert (export / "w").stat().st_size == 20000


async def test_a_rename_to_a_new_name_is_one_round_trip_and_over_an_old_one_replaces_it(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        await sh(f"echo a > {mp}/a; echo c > {mp}/c; ls {mp} >/dev/null")
        await settle()
        nine.clear()
        await sh(f"mv {mp}/a {mp}/b")
        assert nine["waits"] == 1  # Twalk and Twstat in one write
        assert (export / "b").read_text() == "a\n" and not (export / "a").exists()
        await sh(f"mv {mp}/b {mp}/c")  # POSIX: the target is replaced
        assert (export / "c").read_text() == "a\n" and not (export / "b").exists()
        assert (await sh(f"ls {mp}")).split() == ["c", "d", "f"]


async def test_times_or_a_mode_set_on_a_closed_file_are_one_round_trip(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        await sh(f"echo x > {mp}/t; mkdir {mp}/dd")
        await settle()
        utime = "import os, sys; os.utime(sys.argv[1], (1577923200, 1577923200))"  # 2020-01-02, by name
        # (touch opens a file and sets its times on the open fid; rsync sets them by name)
        for command in (f"python3 -c '{utime}' {mp}/t", f"chmod 640 {mp}/t", f"touch -d 2020-01-03 {mp}/dd"):
            nine.clear()
            await sh(command)
            assert nine["waits"] == 1, command  # the walk went with the Twstat (was a wait of its own)
        assert (await sh(f"date -r {mp}/t +%F")).strip() == "2020-01-02"
        assert oct((export / "t").stat().st_mode & 0o777) == "0o640"
        assert (await sh(f"date -r {mp}/dd +%F")).strip() == "2020-01-03"
        assert (await sh(f"date -r {export}/dd +%F")).strip() == "2020-01-03"
        await sh(f"rm {export}/t")  # gone behind the mount's back: still an error, not a success
        r = await trio.run_process(["python3", "-c", utime, f"{mp}/t"], capture_stderr=True, check=False)
        assert r.returncode != 0 and b"FileNotFoundError" in r.stderr
        assert not (export / "t").exists()


async def test_rsync_into_the_mount_waits_seven_times_a_file(tree, tmp_path):
    export, mp = tree
    src = tmp_path / "src"
    for i in range(20):
        (src / f"s{i // 5}").mkdir(parents=True, exist_ok=True)
        (src / f"s{i // 5}" / f"f{i}").write_text(f"rsync {i}\n" * 10)
    async with counted(export, mp) as nine:
        await sh(f"mkdir {mp}/r")
        await settle()
        nine.clear()
        await sh(f"rsync -a {src}/ {mp}/r/")
        await settle()
        # Each file: create, the close's write, the stat after it, its times, the open for
        # its mode, the mode, the rename: 7, was 8 (its times waited for a walk of their
        # own, and so did a directory's). 161 here, was 183.
        assert nine["waits"] <= 7 * 20 + 5 * 4 + 5, nine
    assert (await sh(f"cd {src} && find . -type f | sort | xargs md5sum")) == (
        await sh(f"cd {export}/r && find . -type f | sort | xargs md5sum")
    )
    assert (await sh(f"stat -c '%a %Y' {src}/s1/f5")) == (await sh(f"stat -c '%a %Y' {export}/r/s1/f5"))


async def test_files_of_a_directory_the_mount_made_are_walked_from_that_directory(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        await sh(f"mkdir -p {mp}/w/s/t")
        await settle()
        for i in range(20):
            await sh(f"echo {i} > {mp}/w/s/t/f{i}")
        await settle()
        calls = recorded_calls(nine)
        out = await sh(" ; ".join(f"cat {mp}/w/s/t/f{i}" for i in range(20)))
        assert out.split() == [str(i) for i in range(20)]
        await sh(f"rm {mp}/w/s/t/f*")
        await settle()
        walked = [len(m.wnames) for call in calls for m in call if isinstance(m, Twalk)]  # names each
        # Each open and remove walks one name from t (a walk of t went behind the first);
        # they walked w/s/t/f from the root, four names, before.
        assert len(walked) >= 40 and sum(n > 1 for n in walked) <= 2, walked
        assert not list((export / "w/s/t").iterdir())


async def test_the_first_remove_or_rename_in_a_directory_with_no_fid_is_one_round_trip(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        await sh(f"mkdir -p {mp}/w/s && for i in 1 2 3; do echo $i > {mp}/w/s/f$i; done")
        await settle()
        calls = recorded_calls(nine)
        for command, last in ((f"rm {mp}/w/s/f1", "Tremove"), (f"mv {mp}/w/s/f2 {mp}/w/s/g2", "Twstat")):
            calls.clear()
            await sh(command)
            await settle()
            # the walk from the root goes with the remove (or rename); a walk of s only after,
            # behind it, for the next names there (it was a wait of its own, first)
            assert [type(m).__name__ for m in calls[0]] == ["Twalk", last], calls
        assert sorted(p.name for p in (export / "w/s").iterdir()) == ["f3", "g2"]


async def test_deep_trees_made_read_and_removed_at_once_leave_nothing_behind(tree):
    # Nodes walked behind for directories (above) race the removes of those directories:
    # every fid they took must go back, and no remove may fail for them.
    export, mp = tree
    async with counted(export, mp) as nine:
        fids = _CONNS[id(nine)].fids
        await sh(f"mkdir {mp}/x; rmdir {mp}/x")
        await settle()
        in_use = fids.in_use
        for _ in range(15):
            await sh(
                f"mkdir -p {mp}/x/a/b/c && for i in 1 2 3; do echo $i > {mp}/x/a/b/c/f$i; done && "
                f"cat {mp}/x/a/b/c/f* > /dev/null && rm -rf {mp}/x"
            )
        await settle()
        assert not (export / "x").exists()
        # the mount may keep a few for the directories it knows (d, the root); not one a pass
        assert fids.in_use <= in_use + 3, (fids.in_use, in_use)


async def test_an_open_after_our_own_touch_gets_its_stat_with_it(tree):
    export, mp = tree
    async with counted(export, mp) as nine:
        await sh(f"cat {mp}/f >/dev/null; touch -d 2020-01-02 {mp}/f")
        await settle()
        nine.clear()
        assert await sh(f"cat {mp}/f") == "hello\n"
        assert nine["waits"] == 1  # Twalk+Topen+Tstat+Tread; the Tstat was a wait of its own
        assert (await sh(f"date -r {mp}/f +%F")).strip() == "2020-01-02"


async def test_a_burst_of_creates_in_a_directory_made_elsewhere_looks_names_up_from_a_listing(tree):
    export, mp = tree
    (export / "e").mkdir()
    (export / "e" / "there").write_text("x")
    async with counted(export, mp) as nine:
        nine.clear()
        await sh(f"for i in $(seq 40); do echo $i > {mp}/e/f$i; done")
        # A lookup that goes to the server walks and stats together; the only other Tstats
        # are the one after each close. Names not there yet are asked for only until the
        # directory has been read once: it was one lookup per file.
        lookups = nine["Tstat"] - 40
        assert lookups <= 4, nine
        assert sorted(os.listdir(export / "e")) == sorted(["there", *(f"f{i}" for i in range(1, 41))])
        assert (await sh(f"cat {mp}/e/there {mp}/e/f7")) == "x7\n"


async def test_a_name_made_elsewhere_after_the_listing_shows_once_the_attribute_cache_is_over(tree):
    export, mp = tree
    (export / "e").mkdir()
    async with counted(export, mp, attr_cache=0.5, negative_cache=0.5):
        await sh(f"for i in 1 2 3 4; do echo $i > {mp}/e/f$i; done")
        (export / "e" / "late").write_text("from the host\n")
        await trio.sleep(0.8)
        assert await sh(f"cat {mp}/e/late") == "from the host\n"


WAL_WRITER = """
import sqlite3, sys
db, who = sys.argv[1], sys.argv[2]
con = sqlite3.connect(db, timeout=60, isolation_level=None)
for i in range(20):
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO t (who, i) VALUES (?, ?)", (who, i))
    con.execute("COMMIT")
con.close()
"""


async def test_sqlite_wal_databases_made_one_after_another_are_not_mistaken_for_old_files(tree):
    # Each WAL database removes its -wal and -shm when the last writer closes it, and ext4
    # gives the next database's files the same inode numbers (the server's qid.path follows
    # them). The mount took a new file for the removed one it still knew: the new -wal read
    # as 512 bytes of nothing, and SQLite said "disk I/O error" or "file is not a database".
    import sqlite3
    import sys

    export, mp = tree
    (export / "db").mkdir()
    async with counted(export, mp):
        for k in range(8):
            db = f"{mp}/db/t{k}.db"
            setup = (
                f"import sqlite3; con = sqlite3.connect('{db}', isolation_level=None); "
                "con.execute('PRAGMA journal_mode=WAL'); "
                "con.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, i INTEGER)'); con.close()"
            )
            await sh(f'{sys.executable} -c "{setup}"')
            async with trio.open_nursery() as nursery:
                for who in "ab":
                    code = WAL_WRITER.replace('"', "'")
                    nursery.start_soon(sh, f'{sys.executable} -c "{code}" {db} {who}')
            con = sqlite3.connect(export / "db" / f"t{k}.db")
            try:
                assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                assert con.execute("SELECT who, count(*) FROM t GROUP BY who").fetchall() == [
                    ("a", 20),
                    ("b", 20),
                ]
            finally:
                con.close()


CREATE_WHILE_LISTED = """
import os, sys, time
d = sys.argv[1]
end = time.monotonic() + 3
i = 0
while time.monotonic() < end:
    for missing in ("x", "y"):  # two misses: the mount reads the directory behind our back
        try:
            os.stat(os.path.join(d, f"{missing}{i}"))
        except FileNotFoundError:
            pass
    p = os.path.join(d, f"f{i}")
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"data")
    os.close(fd)
    os.stat(p)  # FileNotFoundError if a listing read before the create took the name away
    os.rename(p, os.path.join(d, f"g{i}"))
    i += 1
print(i)
"""


async def test_files_made_while_the_mount_reads_their_directory_stay_there(tree):
    # An editor's save (write a temporary file, stat it, rename it over) in a directory the
    # mount reads in the background: a listing that began before the create lacks the new
    # name, and must not make the mount forget it.
    export, mp = tree
    (export / "busy").mkdir()
    async with counted(export, mp, attr_cache=0.2, negative_cache=0.2):
        code = CREATE_WHILE_LISTED.replace('"', "'")
        n = int(await sh(f'python3 -c "{code}" {mp}/busy'))
        assert n > 10
        assert sorted(os.listdir(export / "busy")) == sorted(f"g{i}" for i in range(n))
