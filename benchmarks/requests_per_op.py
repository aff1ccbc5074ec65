"""How many FUSE requests each common operation costs through `ninefs mount` (docs/mount.md).

    .venv/bin/python benchmarks/requests_per_op.py

Serves a temporary directory with `ninefs serve`, mounts it in this process with the
session's request counter (mount_tree(counts=...)), runs each operation as a shell
command (after one warm-up run of the same command, so the row shows the steady
state, unless the row says "first"), and prints the requests each one made by
opcode. Needs /dev/fuse (and root, or fusermount3).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from functools import partial

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mount.fuse import FuseOptions
from mount.mounter import mount_tree
from ninep import RemoteTree

# (row, warm-up command or None, the command counted); {m} is the mount point
ROWS = [
    ("stat of a name not seen", None, "stat {m}/d/f1 >/dev/null"),
    ("stat again", "stat {m}/d/f2 >/dev/null", "stat {m}/d/f2 >/dev/null"),
    ("stat of a missing name, again", "stat {m}/nope 2>/dev/null; true", "stat {m}/nope 2>/dev/null; true"),
    ("ls of a directory (first)", None, "ls {m}/big >/dev/null"),
    ("ls again", "ls {m}/big >/dev/null", "ls {m}/big >/dev/null"),
    ("ls -l of 200 files (first)", None, "ls -l {m}/big2 >/dev/null"),
    ("ls -l again", "ls -l {m}/big2 >/dev/null", "ls -l {m}/big2 >/dev/null"),
    ("cat of a small file", "cat {m}/d/f3 >/dev/null", "cat {m}/d/f3 >/dev/null"),
    (
        "create + write 4 KiB + close",
        "head -c 4096 /dev/zero > {m}/d/w0",
        "head -c 4096 /dev/zero > {m}/d/w1",
    ),
    ("rm", "rm {m}/d/w0", "rm {m}/d/w1"),
    ("mkdir", None, "mkdir {m}/d/newdir"),
    ("mv a b (same directory)", None, "mv {m}/d/f4 {m}/d/f4b"),
    ("chmod", "chmod 600 {m}/d/f5", "chmod 644 {m}/d/f5"),
    ("touch -d", "touch -d 2020-01-01 {m}/d/f6", "touch -d 2021-01-01 {m}/d/f6"),
    ("truncate", "truncate -s 1 {m}/d/f7", "truncate -s 2 {m}/d/f7"),
    ("echo >> (append)", "echo a >> {m}/d/f8", "echo b >> {m}/d/f8"),
    ("df", "df {m} >/dev/null", "df {m} >/dev/null"),
]


def sh(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=False, capture_output=True)


async def measure(address: str, mp: str) -> list[tuple[str, Counter[str]]]:
    counts: Counter[str] = Counter()
    rows = []
    async with RemoteTree.connect(address) as tree, trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(
            partial(
                mount_tree,
                tree,
                mp,
                options=FuseOptions(),
                ready=ready.set,
                unmount_on_signals=False,
                counts=counts,
            )
        )
        await ready.wait()
        for name, warm, command in ROWS:
            if warm:
                await trio.to_thread.run_sync(sh, warm.format(m=mp))
            await trio.sleep(0.05)  # what went behind the warm-up (clunks, restats) is in
            counts.clear()
            await trio.to_thread.run_sync(sh, command.format(m=mp))
            rows.append((name, Counter(counts)))
        nursery.cancel_scope.cancel()
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="reqs-") as tmp:
        export, mp = os.path.join(tmp, "export"), os.path.join(tmp, "mnt")
        os.makedirs(os.path.join(export, "d"))
        for sub, n in (("big", 200), ("big2", 200)):
            os.makedirs(os.path.join(export, sub))
            for i in range(n):
                with open(os.path.join(export, sub, f"n{i:03d}"), "w") as f:
                    f.write("x" * 100)
        for i in range(1, 10):
            with open(os.path.join(export, "d", f"f{i}"), "w") as f:
                f.write("hello\n")
        os.mkdir(mp)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mount.cli", "serve", export, "--listen", "tcp!127.0.0.1!0"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        try:
            assert proc.stdout is not None
            address = proc.stdout.readline().split()[-1]
            rows = trio.run(measure, address, mp)
        finally:
            proc.terminate()
            proc.wait()
    print(f"{'operation':34} {'requests':>8}  by opcode")
    for name, c in rows:
        detail = ", ".join(f"{op.lower()} {n}" for op, n in sorted(c.items(), key=lambda kv: -kv[1]))
        print(f"{name:34} {sum(c.values()):8}  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
