"""Namespaces through the library: bind, mount, unions, namespace files, export."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import ninep
from fileserver.ram import RamTree
from namespaces import MAFTER, MBEFORE, MCREATE, MREPL, Namespace, NamespaceFileError, apply, parse
from ninep.errors import NinePError, PermissionDenied
from ninep.messages import Stat
from ninep.tree import Tree

from .servers import serving


@asynccontextmanager
async def opened(ns: Tree, path: str) -> AsyncIterator[Any]:
    """`path` walked from a fresh attach and opened for reading, the way the server would."""
    root = await ns.attach("u", "")
    try:
        _, node = await ns.walk(root, [n for n in path.split("/") if n])
        if node is None:
            raise FileNotFoundError(path)
        try:
            await ns.open(node, ninep.OREAD)
            yield node
        finally:
            await ns.clunk(node)
    finally:
        await ns.clunk(root)


async def read(ns: Tree, path: str) -> bytes:
    async with opened(ns, path) as node:
        return await ns.read(node, 0, 1 << 20)


async def listdir(ns: Tree, path: str) -> list[str]:
    async with opened(ns, path) as node:
        return [s.name for s in await ns.readdir(node)]


async def filled(files: dict[str, bytes], tree: RamTree | None = None) -> RamTree:
    tree = tree or RamTree()
    async with serving(tree) as address, ninep.connect(address) as fs:
        for path, data in files.items():
            if "/" in path.strip("/"):
                await fs.mkdir(path.rsplit("/", 1)[0], parents=True)
            await fs.write_bytes(path, data)
    return tree


@pytest.fixture
async def two_servers():
    alpha = await filled({"bin/tool": b"alpha tool", "bin/only-alpha": b"a", "readme": b"alpha"})
    beta = await filled({"bin/tool": b"beta tool", "bin/only-beta": b"b", "data/x": b"beta x"})
    async with serving(alpha) as a, serving(beta) as b:
        yield a, b


async def test_mount_two_servers_side_by_side(two_servers):
    a, b = two_servers
    async with Namespace() as ns:
        await ns.mount(a, "/n/alpha")
        await ns.mount(b, "/n/beta")
        assert sorted(await listdir(ns, "/n")) == ["alpha", "beta"]
        assert await read(ns, "/n/alpha/readme") == b"alpha"
        assert await read(ns, "/n/beta/data/x") == b"beta x"


async def test_union_before_takes_the_first_member_that_has_the_name(two_servers):
    a, b = two_servers
    async with Namespace() as ns:
        await ns.mount(a, "/n/alpha")
        await ns.mount(b, "/n/beta")
        await ns.bind("/n/beta/bin", "/n/alpha/bin", MBEFORE)
        assert await read(ns, "/n/alpha/bin/tool") == b"beta tool"
        assert await read(ns, "/n/alpha/bin/only-alpha") == b"a"
        assert await listdir(ns, "/n/alpha/bin") == ["tool", "only-beta", "only-alpha"]


async def test_union_after_keeps_the_original_first(two_servers):
    a, b = two_servers
    async with Namespace() as ns:
        await ns.mount(a, "/n/alpha")
        await ns.mount(b, "/n/beta")
        await ns.bind("/n/beta/bin", "/n/alpha/bin", MAFTER)
        assert await read(ns, "/n/alpha/bin/tool") == b"alpha tool"
        assert await listdir(ns, "/n/alpha/bin") == ["tool", "only-alpha", "only-beta"]


async def test_replace_hides_the_original(two_servers):
    a, b = two_servers
    async with Namespace() as ns:
        await ns.mount(a, "/n/alpha")
        await ns.mount(b, "/n/beta")
        await ns.bind("/n/beta/bin", "/n/alpha/bin", MREPL)
        assert sorted(await listdir(ns, "/n/alpha/bin")) == ["only-beta", "tool"]


async def test_create_in_a_union_goes_to_the_mcreate_member_or_fails(two_servers):
    a, b = two_servers
    async with Namespace() as ns, ninep.connect(a) as fa, ninep.connect(b) as fb:
        await ns.mount(a, "/n/alpha")
        await ns.mount(b, "/n/beta")
        await ns.bind("/n/beta/bin", "/n/alpha/bin", MAFTER)
        async with serving(ns) as served, ninep.connect(served) as fs:
            with pytest.raises(PermissionError, match="create prohibited"):
                await fs.write_bytes("/n/alpha/bin/new", b"x")
        await ns.unmount("/n/alpha/bin")
        await ns.bind("/n/alpha/bin", "/n/alpha/bin", MREPL)
        await ns.bind("/n/beta/bin", "/n/alpha/bin", MAFTER | MCREATE)
        async with serving(ns) as served, ninep.connect(served) as fs:
            await fs.write_bytes("/n/alpha/bin/new", b"lands in beta")
        assert await fb.read_bytes("bin/new") == b"lands in beta"
        assert not await fa.exists("bin/new")


async def test_dotdot_from_a_mount_point_goes_to_the_namespace_parent(two_servers):
    a, _ = two_servers
    async with Namespace() as ns:
        await ns.mount(a, "/n/alpha")
        root = await ns.attach("u", "")
        _qids, node = await ns.walk(root, ["n", "alpha", "bin", "..", "..", ".."])
        assert node is not None and node.path == ()
        await ns.clunk(node)
        await ns.clunk(root)


async def test_unmount_one_member_of_a_union(two_servers):
    a, b = two_servers
    async with Namespace() as ns:
        await ns.mount(a, "/n/alpha")
        await ns.mount(b, "/n/beta")
        await ns.bind("/n/beta/bin", "/n/alpha/bin", MBEFORE)
        await ns.unmount("/n/alpha/bin", "/n/beta/bin")
        assert await read(ns, "/n/alpha/bin/tool") == b"alpha tool"
        await ns.unmount("/n/beta")
        with pytest.raises(FileNotFoundError):
            await read(ns, "/n/beta/data/x")


async def test_namespace_served_over_9p_is_a_tree_like_any_other(two_servers):
    a, b = two_servers
    async with Namespace() as ns:
        await ns.mount(a, "/n/alpha", MCREATE)
        await ns.mount(b, "/n/beta", MCREATE)
        async with serving(ns) as exported, ninep.connect(exported) as fs:
            assert sorted(await fs.listdir("/n")) == ["alpha", "beta"]
            st = await fs.stat("/n/alpha")
            assert st.name == "alpha" and st.is_dir
            data = await fs.read_bytes("/n/beta/data/x")
            await fs.write_bytes("/n/alpha/copied", data)  # cp between two remote trees
            assert await fs.read_bytes("/n/alpha/copied") == b"beta x"


async def test_a_dead_server_fails_only_its_own_paths():
    alpha = await filled({"f": b"alive"})
    beta = await filled({"g": b"doomed"})
    async with serving(alpha) as a, Namespace() as ns:
        await ns.mount(a, "/n/alpha")
        async with trio.open_nursery() as nursery:
            server = ninep.Server(beta)
            addrs = await nursery.start(server.serve, "tcp!127.0.0.1!0")
            await ns.mount(str(addrs[0]), "/n/beta")
            assert await read(ns, "/n/beta/g") == b"doomed"
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError):
            await read(ns, "/n/beta/g")
        assert await read(ns, "/n/alpha/f") == b"alive"
        assert await listdir(ns, "/n") in (["alpha"], ["alpha", "beta"])


# --- namespace files ----------------------------------------------------------------------


def test_namespace_file_syntax():
    ops = parse(
        """
        # a comment
        mount -c tcp!127.0.0.1!1 /n/alpha   # trailing comment
        bind -bc '#s' /srv
        bind -a $HOME/bin /bin
        unmount /n/alpha/bin /bin
        cd /n/alpha
        """,
        "test.ns",
        {"HOME": "/home/glenda"},
    )
    assert [(o.verb, o.args, o.flags, o.where) for o in ops] == [
        ("mount", ("tcp!127.0.0.1!1", "/n/alpha"), MCREATE, "test.ns:3"),
        ("bind", ("#s", "/srv"), MBEFORE | MCREATE, "test.ns:4"),
        ("bind", ("/home/glenda/bin", "/bin"), MAFTER, "test.ns:5"),
        ("unmount", ("/n/alpha/bin", "/bin"), 0, "test.ns:6"),
        ("cd", ("/n/alpha",), 0, "test.ns:7"),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("bind /a", "x.ns:1: usage: bind [-abcC] new old"),
        ("\nmount -z tcp!h!1 /n", "x.ns:2: unknown flag -z"),
        ("bind -ab /a /b", "x.ns:1: -a and -b cannot go together"),
        ("frobnicate /a", "x.ns:1: unknown command 'frobnicate'"),
        ("bind $NOPE /b", "x.ns:1: $NOPE is not set"),
        ("bind 'unclosed /b", "x.ns:1: No closing quotation"),
        (". missing.ns", "x.ns:1: missing.ns: No such file or directory"),
    ],
)
def test_namespace_file_errors_name_the_line(text, message):
    with pytest.raises(NamespaceFileError) as info:
        parse(text, "x.ns", {})
    assert str(info.value).startswith(message)


def test_includes_are_relative_to_the_including_file(tmp_path):
    (tmp_path / "inner.ns").write_text("bind /a /b\n")
    (tmp_path / "outer.ns").write_text("mount tcp!h!1 /n/h\n. inner.ns\n")
    from namespaces import parse_file

    ops = parse_file(str(tmp_path / "outer.ns"), {})
    assert [o.where for o in ops] == [f"{tmp_path}/outer.ns:1", f"{tmp_path}/inner.ns:1"]


def test_include_loops_are_an_error(tmp_path):
    (tmp_path / "loop.ns").write_text(". loop.ns\n")
    from namespaces import parse_file

    with pytest.raises(NamespaceFileError, match="nest deeper"):
        parse_file(str(tmp_path / "loop.ns"), {})


async def test_applying_stops_at_the_failing_line_and_names_it(two_servers):
    a, _ = two_servers
    ops = parse(f"mount {a} /n/alpha\nbind /n/alpha/nonexistent /x\n", "y.ns", {})
    async with Namespace() as ns:
        with pytest.raises(
            NamespaceFileError, match=r"^y\.ns:2: bind /n/alpha/nonexistent /x: .*does not exist"
        ):
            await apply(ns, ops)


async def test_applying_a_namespace_file(two_servers):
    a, b = two_servers
    ops = parse(
        f"mount {a} /n/alpha\nmount {b} /n/beta\nbind -b /n/beta/bin /n/alpha/bin\ncd /n/alpha\n", "z.ns"
    )
    async with Namespace() as ns:
        assert await apply(ns, ops) == "/n/alpha"
        assert await read(ns, "/n/alpha/bin/tool") == b"beta tool"


async def test_a_namespace_inside_a_namespace_keeps_qids_distinct(two_servers):
    a, b = two_servers
    async with Namespace() as inner:
        await inner.mount(a, "/x")
        await inner.mount(b, "/y")
        async with Namespace() as outer:
            await outer.mount(inner, "/n/inner")
            root = await outer.attach("u", "")
            qids = []
            for path in (["n", "inner", "x"], ["n", "inner", "y"], ["n", "inner"]):
                _, node = await outer.walk(root, path)
                qids.append(node.qid.path)
                await outer.clunk(node)
            await outer.clunk(root)
            assert len(set(qids)) == 3


class _Syncing(RamTree):
    """A RAM tree that counts the null wstats (stat(5)'s sync) it gets, or fails them."""

    def __init__(self, fails: NinePError | None = None) -> None:
        super().__init__()
        self.synced = 0
        self.fails = fails

    async def wstat(self, node: Any, st: Stat) -> None:
        if st == Stat.dont_touch():
            if self.fails is not None:
                raise self.fails
            self.synced += 1
        await super().wstat(node, st)


async def _synced(alpha: _Syncing, beta: _Syncing) -> NinePError | None:
    """fsync(2) of the union /n/alpha/bin (alpha's bin, beta's after it), as the mount
    sends it: a null wstat of the directory's node. What it raised, if anything."""
    for tree in (alpha, beta):
        await filled({"bin/x": b"x"}, tree)
    async with serving(alpha) as a, serving(beta) as b, Namespace() as ns:
        await ns.mount(a, "/n/alpha")
        await ns.mount(b, "/n/beta")
        await ns.bind("/n/beta/bin", "/n/alpha/bin", MAFTER | MCREATE)
        async with opened(ns, "/n/alpha/bin") as node:
            try:
                await ns.wstat(node, Stat.dont_touch())
            except NinePError as e:
                return e
    return None


async def test_syncing_a_union_directory_syncs_every_member():
    """A create in a union lands in its MCREATE member, often not the first: an fsync of
    the directory (SQLite after its journal, git) must reach that member too."""
    alpha, beta = _Syncing(), _Syncing()
    assert await _synced(alpha, beta) is None
    assert (alpha.synced, beta.synced) == (1, 1)


async def test_a_union_member_that_cannot_sync_does_not_hide_the_others():
    refusing, beta = _Syncing(PermissionDenied("permission denied")), _Syncing()
    assert await _synced(refusing, beta) is None  # one that will not sync: as durable as it makes it
    assert beta.synced == 1
    alpha, failing = _Syncing(), _Syncing(NinePError("i/o error: disk"))
    error = await _synced(alpha, failing)
    assert error is not None and "i/o error: disk" in str(error)
    assert alpha.synced == 1
