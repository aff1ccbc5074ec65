"""A walk and what follows it sent in one write (RemoteTree.walk_open, walk_open_read,
walk_stat, walk_remove): one round trip instead of two. intro(5) lets a server handle
the requests in any order, so each case runs against a server that answers in order
and against one whose walks finish after the requests sent behind them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio

import ninep
from fileserver.ram import RamTree
from ninep.constants import ORDWR, OREAD
from ninep.remote import RemoteTree

from .servers import serving


class LateWalks(RamTree):
    """Answers every message at once but a walk, which takes a moment in a task of its
    own: the open, read, stat or remove sent right behind it finds no fid yet."""

    never_blocks = RamTree.never_blocks - {"walk"}

    def __init__(self) -> None:
        super().__init__()
        self.walks = 0

    async def walk(self, node: Any, names: Sequence[str]) -> Any:
        self.walks += 1
        await trio.sleep(0.02)
        return await super().walk(node, names)


@pytest.fixture(params=["in order", "out of order"])
def tree(request: pytest.FixtureRequest) -> RamTree:
    return RamTree() if request.param == "in order" else LateWalks()


async def test_walk_and_act_in_one_round_trip(tree: RamTree) -> None:
    async with serving(tree) as address:
        async with ninep.connect(address) as fs:
            await fs.mkdir("d")
            await fs.write_bytes("d/f", b"hello 9p\n")
            await fs.write_bytes("d/gone", b"x")
        async with RemoteTree.connect(address) as remote:
            root = await remote.attach("", "")
            node, qid, _, data = await remote.walk_open_read(root, ["d", "f"], OREAD, 1 << 20)
            assert bytes(data) == b"hello 9p\n" and not qid.is_dir
            await remote.clunk(node)

            node, _, _ = await remote.walk_open(root, ["d", "f"], ORDWR)
            assert await remote.write(node, 0, b"HELLO") == 5
            await remote.clunk(node)

            node, stat = await remote.walk_stat(root, ["d", "f"])
            assert (stat.name, stat.length) == ("f", 9)
            clone, _, _ = await remote.walk_open(node, [], OREAD)  # no names: a clone, opened
            assert bytes(await remote.read(clone, 0, 100)) == b"HELLO 9p\n"
            for n in (node, clone):
                await remote.clunk(n)

            made, qid, _ = await remote.walk_create(root, ["d"], "new", 0o644, ORDWR)
            assert not qid.is_dir and await remote.write(made, 0, b"made") == 4
            await remote.clunk(made)
            made, qid, _ = await remote.walk_create(root, [], "e", 0o755 | ninep.DMDIR, OREAD)  # on a clone
            assert qid.is_dir
            await remote.clunk(made)
            with pytest.raises(FileExistsError):
                await remote.walk_create(root, ["d"], "new", 0o644, ORDWR)
            node, _, _ = await remote.walk_open(root, ["d", "new"], OREAD)
            assert bytes(await remote.read(node, 0, 10)) == b"made"
            await remote.clunk(node)

            await remote.walk_remove(root, ["d", "gone"])
            for call in (
                remote.walk_open(root, ["d", "gone"], OREAD),
                remote.walk_open_read(root, ["d", "nothing", "here"], OREAD, 10),
                remote.walk_stat(root, ["nothing"]),
                remote.walk_remove(root, ["d", "gone"]),
                remote.walk_create(root, ["nothing"], "x", 0o644, ORDWR),
            ):
                with pytest.raises(FileNotFoundError):
                    await call
            assert remote.conn.fids.get() <= 4  # no fid was lost on the way (root + a few reused)


async def test_an_error_of_the_second_request_is_the_one_reported(tree: RamTree) -> None:
    async with serving(tree) as address:
        async with ninep.connect(address) as fs:
            await fs.write_bytes("secret", b"s")
            await fs.chmod("secret", 0o200)  # write only, even for its owner
        async with RemoteTree.connect(address) as remote:
            root = await remote.attach("", "")
            with pytest.raises(PermissionError):
                await remote.walk_open(root, ["secret"], OREAD)
            with pytest.raises(PermissionError):
                await remote.walk_open_read(root, ["secret"], OREAD, 10)
    if isinstance(tree, LateWalks):
        assert tree.walks >= 2  # the walks did come late: the retries were needed


async def test_stat_and_clunk_in_one_round_trip(tree: RamTree) -> None:
    async with serving(tree) as address:
        async with ninep.connect(address) as fs:
            await fs.write_bytes("f", b"12345")
        async with RemoteTree.connect(address) as remote:
            root = await remote.attach("", "")
            before = remote.conn.fids.get()
            remote.conn.fids.put(before)
            node, _ = await remote.walk_stat(root, ["f"])
            assert (await remote.stat_clunk(node)).length == 5
            assert remote.conn.fids.get() == before  # the fid is free again


async def test_a_window_stops_at_the_first_error_and_a_cancelled_one_is_flushed() -> None:
    from ninep.messages import Rstat, Tread, Tstat

    from .servers import raw_connection
    from .test_server import SlowTree

    tree = SlowTree()
    async with serving(tree) as address, raw_connection(address) as c:
        await c.attach(0, "u")
        await c.walk(0, 1, [])
        await c.create(1, "slow", 0o644, ORDWR)
        # window 1: after the error nothing more is sent, and the results end with it
        results = await c.windowed(
            [(Tstat(0, 0), Rstat), (Tstat(0, 99), Rstat), (Tstat(0, 0), Rstat)], 1, stop_on_error=True
        )
        assert len(results) == 2 and isinstance(results[1], ninep.NinePError)
        # a window of reads waiting on the server, cancelled: each is flushed (flush(5))
        with trio.move_on_after(0.3):
            await c.windowed([(Tread(0, 1, 0, 10), ninep.messages.Rread)] * 4, 4)
        with trio.fail_after(5):
            while tree.cancelled < 4:
                await trio.sleep(0.01)
        tree.release.set()
        assert (await c.stat(0)).qid.is_dir  # the connection goes on, its tags free again
        assert not c._calls


async def test_a_read_that_fails_behind_an_open_leaves_the_open_standing() -> None:
    class BadSectors(RamTree):
        async def read(self, node: Any, offset: int, count: int) -> bytes:
            raise ninep.NinePError("i/o error: bad sector")

    async with serving(BadSectors()) as address:
        async with ninep.connect(address) as fs:
            await fs.write_bytes("f", b"unreadable")
        async with RemoteTree.connect(address) as remote:
            root = await remote.attach("", "")
            node, qid, _, data = await remote.walk_open_read(root, ["f"], OREAD, 100)
            assert data is None and not qid.is_dir  # opened; the read says why later
            with pytest.raises(OSError, match="bad sector"):
                await remote.read(node, 0, 100)
            await remote.clunk(node)


async def test_a_namespace_passes_walk_and_act_to_the_tree_it_stays_in(tree: RamTree) -> None:
    from namespaces import MAFTER, Namespace

    async with serving(tree) as address:
        async with ninep.connect(address) as fs:
            await fs.mkdir("d")
            await fs.write_bytes("d/f", b"remote file\n")
            await fs.write_bytes("d/gone", b"x")
        local = RamTree()
        async with Namespace(local, uname="u") as ns:
            await ns.mount(address, "/n/r")
            await ns.bind("/n/r/d", "/u")
            await ns.bind("/", "/u", MAFTER)  # /u: a union of the remote d and the root
            root = await ns.attach("u", "")
            n = await ns.walk_open(root, [], OREAD)  # a clone of the root, opened
            await ns.clunk(n[0])
            _, r = await ns.walk(root, ["n", "r"])  # a mount point
            d, _, _ = await ns.walk_open(r, ["d"], OREAD)  # inside the mounted tree: passed on
            assert d.path == ("n", "r", "d") and d.open_members
            await ns.clunk(d)
            _, d = await ns.walk(r, ["d"])
            node, _, _, data = await ns.walk_open_read(d, ["f"], OREAD, 100)
            assert bytes(data) == b"remote file\n" and node.path == ("n", "r", "d", "f")
            node2, stat = await ns.walk_stat(d, ["f"])
            assert (stat.name, stat.length) == ("f", 12) and node2.qid == node.qid
            assert (await ns.stat_clunk(node2)).length == 12
            await ns.walk_remove(d, ["gone"])
            with pytest.raises(FileNotFoundError):
                await ns.walk_stat(d, ["gone"])
            _, n_dir = await ns.walk(root, ["n"])
            mp, stat = await ns.walk_stat(n_dir, ["r"])  # a mount point: walked as usual
            assert stat.name == "r" and mp.mount_point
            _, u = await ns.walk(root, ["u"])
            uf, stat = await ns.walk_stat(u, ["f"])  # a union: walked as usual
            assert stat.length == 12
            for x in (node, mp, uf, d, r, n_dir, u, root):
                await ns.clunk(x)


async def test_a_clunk_sent_soon_rides_with_the_next_request_or_goes_alone() -> None:
    """Tclunk of a fid nobody waits on (FUSE release) goes out with the next requests, and
    still reaches the server before them; with nothing else to send, it goes alone. The
    fid is not reused until Rclunk says the server let go of it. ORCLOSE makes the clunk
    visible: it removes the file."""
    async with serving(RamTree()) as address, ninep.connect(address) as fs, ninep.connect(address) as other:
        conn = fs.conn
        fid, _ = await fs.walk_fid("/")
        await conn.create(fid, "a", 0o644, ORDWR | ninep.ORCLOSE)
        conn.clunk_soon(fid)
        spare = conn.fids.get()
        assert spare != fid  # not free yet
        conn.fids.put(spare)
        assert not await fs.exists("a")  # the walk went out behind the clunk
        assert conn.fids.get() == fid  # Rclunk is in: free again (lowest first)
        conn.fids.put(fid)

        fid, _ = await fs.walk_fid("/")
        await conn.create(fid, "b", 0o644, ORDWR | ninep.ORCLOSE)
        conn.clunk_soon(fid)
        assert await other.exists("b")  # another connection's requests carry nothing of ours
        with trio.fail_after(2):
            while await other.exists("b"):
                await trio.sleep(0.005)


async def test_a_send_cancelled_before_its_turn_leaves_the_clunks_it_would_have_carried() -> None:
    """A call given up while another sender holds the connection takes no `soon` clunk
    with it: the clunk still reaches the server (the ORCLOSE file goes)."""
    async with serving(RamTree()) as address, ninep.connect(address) as fs, ninep.connect(address) as other:
        conn = fs.conn
        fid, _ = await fs.walk_fid("/")
        await conn.create(fid, "c", 0o644, ORDWR | ninep.ORCLOSE)
        root, _ = await fs.walk_fid("/")
        go_on = trio.Event()

        async def another_sender(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with conn._send_lock:  # its turn, and it takes a while
                task_status.started()
                await go_on.wait()

        async with trio.open_nursery() as nursery:
            await nursery.start(another_sender)
            conn.clunk_soon(fid)
            with trio.move_on_after(0.05) as waited:
                await conn.stat(root)
            assert waited.cancelled_caught
            go_on.set()
        with trio.fail_after(2):
            while await other.exists("c"):
                await trio.sleep(0.005)
