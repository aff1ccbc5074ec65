"""Cold stat of two (or more) checkouts, interleaved: an A/B that the machine's drift
between full bench_mount runs cannot fake.

    .venv/bin/python benchmarks/ab_cold_stat.py CHECKOUT [CHECKOUT ...] [--files 2000] [--rounds 8]

Each checkout (a directory with its own .venv, e.g. a `git worktree` with a link to
this one's) gets a server and a mount of its own over loopback TCP, all at once; then,
round after round, each mount in turn: drop_caches, and os.stat of every file (one FUSE
LOOKUP each, answered from the mount's memory). Prints p50 and p90 of a stat for each.
Needs root (drop_caches) and /dev/fuse; unmounts and stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    procs: list[subprocess.Popen] = []
    mounted: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="ab-cold-") as base:
        try:
            for k, repo in enumerate(args.checkouts):
                export, mp = f"{base}/e{k}", f"{base}/m{k}"
                os.makedirs(f"{export}/d")
                os.mkdir(mp)
                for i in range(args.files):
                    with open(f"{export}/d/f{i}", "w") as f:
                        f.write("x")
                py = os.path.join(repo, ".venv", "bin", "python")
                serve = [py, "-m", "mount.cli", "serve", export, "--listen", "tcp!127.0.0.1!0"]
                proc = subprocess.Popen(
                    serve, cwd=repo, stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
                )
                procs.append(proc)
                assert proc.stdout is not None
                address = proc.stdout.readline().split()[-1]
                subprocess.run([py, "-m", "mount.cli", "mount", address, mp], cwd=repo, check=True)
                mounted.append((repo, mp))
            lat: list[list[float]] = [[] for _ in mounted]
            for _ in range(args.rounds):
                for k, (_, mp) in enumerate(mounted):
                    os.listdir(f"{mp}/d")
                    with open("/proc/sys/vm/drop_caches", "w") as f:
                        f.write("3\n")
                    time.sleep(0.3)
                    os.stat(f"{mp}/d")
                    for i in range(args.files):
                        t = time.perf_counter()
                        os.stat(f"{mp}/d/f{i}")
                        lat[k].append(time.perf_counter() - t)
            for (repo, _), got in zip(mounted, lat, strict=True):
                v = sorted(got)
                print(f"{repo}: p50 {v[len(v) // 2] * 1e6:.1f} µs, p90 {v[len(v) * 9 // 10] * 1e6:.1f} µs")
        finally:
            for repo, mp in mounted:
                py = os.path.join(repo, ".venv", "bin", "python")
                subprocess.run([py, "-m", "mount.cli", "umount", mp], cwd=repo, check=False)
            for proc in procs:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
