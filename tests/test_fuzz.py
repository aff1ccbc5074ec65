"""Hostile clients: generated and mutated 9P traffic against a live server.

Each example opens a connection to a server exporting a temporary directory,
sends a generated sequence of messages (bad fids, reused tags, walks from open
fids, reads past EOF, huge counts, odd names, "..", names with "/", symlinks
out of the export, raw mutated frames), and hangs up. Afterwards the server
must still serve, must have released every fid of that connection (no node of
the tree stays alive), and nothing outside the exported directory may have
changed. `make fuzz` runs many more examples (NINEFS_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import gc
import os
import struct

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ninep
from fileserver.local import LocalTree
from ninep import codec
from ninep.constants import NOFID, NOTAG
from ninep.messages import (
    Stat,
    Tattach,
    Tauth,
    Tclunk,
    Tcreate,
    Tflush,
    Topen,
    Tread,
    Tremove,
    Tstat,
    Tversion,
    Twalk,
    Twrite,
    Twstat,
)

EXAMPLES = int(os.environ.get("NINEFS_FUZZ_EXAMPLES", "150"))

fids = st.sampled_from([0, 1, 2, 3, 7, NOFID])
tags = st.integers(0, 5) | st.just(NOTAG)
names = st.sampled_from(
    [
        "a",
        "b",
        "file",
        "dir",
        "escape",
        "..",
        ".",
        "",
        "/",
        "a/b",
        "../outside",
        "/etc",
        "é",
        "x" * 300,
        "sub",
    ]
)
offsets = st.sampled_from([0, 1, 4096, 1 << 32, (1 << 63) - 1, (1 << 64) - 1])
counts = st.sampled_from([0, 1, 100, 8192, 1 << 20, 0xFFFFFFFF])
modes = st.integers(0, 0xFF)
perms = st.sampled_from([0o644, 0o755, 0x80000000 | 0o755, 0x40000000 | 0o600, 0xFFFFFFFF, 0])
stats = st.builds(
    Stat.dont_touch,
    name=st.sampled_from(["", "renamed", "..", "a/b", "escape"]),
    length=st.sampled_from([0xFFFFFFFFFFFFFFFF, 0, 3, 1 << 40]),
    mode=st.sampled_from([0xFFFFFFFF, 0o777, 0x80000000 | 0o755]),
)
messages = st.one_of(
    st.builds(
        Tattach, tags, fids, fids, st.sampled_from(["u", ""]), st.sampled_from(["", "sub", "../", "/etc"])
    ),
    st.builds(Twalk, tags, fids, fids, st.lists(names, max_size=18).map(tuple)),
    st.builds(Topen, tags, fids, modes),
    st.builds(Tcreate, tags, fids, names, perms, modes),
    st.builds(Tread, tags, fids, offsets, counts),
    st.builds(Twrite, tags, fids, offsets, st.binary(max_size=64)),
    st.builds(Tclunk, tags, fids),
    st.builds(Tremove, tags, fids),
    st.builds(Tstat, tags, fids),
    st.builds(Twstat, tags, fids, stats),
    st.builds(Tflush, tags, tags),
    st.builds(Tauth, tags, fids, st.just("u"), st.just("")),
    st.builds(
        Tversion, st.just(NOTAG), st.sampled_from([8192, 100, 1 << 20]), st.sampled_from(["9P2000", "x"])
    ),
)


def frames(msgs: list, garbage: list[bytes]) -> list[bytes]:
    out = [codec.encode(Tversion(NOTAG, 8192, "9P2000"))]
    for m in msgs:
        try:
            out.append(codec.encode(m))
        except codec.CodecError:
            continue
    for g in garbage:  # raw, possibly malformed frames at the end (they may close the connection)
        out.append(struct.pack("<I", len(g) + 4) + g)
    return out


def make_export(tmp: str) -> tuple[str, str]:
    root = os.path.join(tmp, "export")
    outside = os.path.join(tmp, "outside")
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    os.makedirs(outside, exist_ok=True)
    with open(os.path.join(root, "file"), "w") as f:
        f.write("inside\n")
    with open(os.path.join(outside, "sentinel"), "w") as f:
        f.write("untouched\n")
    if not os.path.lexists(os.path.join(root, "escape")):
        os.symlink(outside, os.path.join(root, "escape"))
    return root, outside


def snapshot(path: str) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.join(d, f)] = fh.read()
    return out


async def scenario(tree: LocalTree, wire: list[bytes]) -> None:
    server = ninep.Server(tree)
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(server.serve, "tcp!127.0.0.1!0")
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            try:
                for frame in wire:
                    await stream.send_all(frame)
                await stream.send_eof()  # the client hangs up; the server must clean up and close
                with trio.fail_after(10):
                    while await stream.receive_some(1 << 16):
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        # The server goes on serving others.
        with trio.fail_after(5):
            async with ninep.connect(str(address), uname="u") as fs:
                await fs.stat("/")
            while server.connections:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(messages, max_size=40),
    st.lists(st.binary(min_size=0, max_size=40), max_size=2),
)
def test_hostile_traffic_never_crashes_leaks_or_escapes(tmp_path_factory, msgs, garbage):
    tmp = str(tmp_path_factory.mktemp("fuzz"))
    root, outside = make_export(tmp)
    before = snapshot(outside)
    tree = LocalTree(root)
    trio.run(scenario, tree, frames(msgs, garbage))
    gc.collect()
    assert len(tree._beneath._all) == 0, "fids of a closed connection were not all released"
    assert snapshot(outside) == before
    assert set(os.listdir(tmp)) == {"export", "outside"}
