"""A ninefs server whose files keep no data, for bench_9p.py's like-for-like rows.

    python benchmarks/sink_server.py [--msize N]

prints "ninefs: serving on ADDRESS" and serves until killed. It is the real
server (`fileserver.serve.serve_tree`, the codec, the dispatch, a RamTree for
names, opens and stats), but a file's data is only a length: a write is
counted and dropped, a read answers zeros from one shared buffer. That is
exactly what benchmarks/trio_echo.py does with its payloads, so the sink rows
compare 9P's own cost with bare trio, leaving out what storing data costs in
the RAM tree (new memory: on this VM a first touch of fresh pages costs
~400 us/MiB, which trio_echo never pays because it keeps nothing).
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fileserver.ram import RamTree, _Node
from fileserver.serve import serve_tree
from ninep.server import Limits

_ZEROS = bytes(16 << 20)


class Sink:
    """Stands in for a RAM file's pieces (fileserver/pieces.py): a length and no bytes."""

    def __init__(self) -> None:
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def read(self, offset: int, count: int) -> memoryview:
        return memoryview(_ZEROS)[: max(0, min(count, self.size - offset, len(_ZEROS)))]

    def write(self, offset: int, data: bytes) -> None:
        if data:
            self.size = max(self.size, offset + len(data))

    def truncate(self, size: int) -> None:
        self.size = size


class SinkTree(RamTree):
    async def create(self, node: _Node, name: str, perm: int, mode: int):  # type: ignore[no-untyped-def]
        qid_iounit = await super().create(node, name, perm, mode)
        node.file.data = Sink()  # type: ignore[assignment]
        return qid_iounit


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msize", type=int, default=1 << 20)
    args = ap.parse_args()
    trio.run(lambda: serve_tree(SinkTree(), "tcp!127.0.0.1!0", limits=Limits(msize=args.msize)))
