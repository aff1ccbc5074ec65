"""Summarise a `py-spy record --format raw` (collapsed stacks) file: top functions by self and total time.

    python benchmarks/spy_summary.py PROFILE.txt [--top 25] [--busy]

Percentages are of all samples; with --busy, samples whose innermost frame is
the event loop waiting for I/O (epoll/select/wait) are left out, so the numbers
are shares of CPU time rather than wall time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LINE = re.compile(r"\s*\(([^:()]*):?\d*\)$")
IDLE = ("get_events (", "select (selectors", "poll (selectors", "wait (threading")


def frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`: lines folded into their function."""
    m = _LINE.search(frame)
    if not m:
        return frame.strip()
    path = m.group(1)
    short = "/".join(path.split("/")[-2:])
    return f"{frame[: m.start()].strip()} ({short})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--busy", action="store_true", help="leave out samples waiting for I/O")
    args = ap.parse_args()
    self_t: Counter[str] = Counter()
    total_t: Counter[str] = Counter()
    n = idle = 0
    with open(args.profile) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            c = int(count)
            frames = [frame_name(f) for f in stack.split(";")]
            if any(x in frames[-1] for x in IDLE):
                idle += c
                if args.busy:
                    continue
            n += c
            self_t[frames[-1]] += c
            for f in set(frames):
                total_t[f] += c
    print(f"{n} samples ({idle} idle in the event loop's I/O wait{', left out' if args.busy else ''})")
    print(f"\n{'self %':>7}  function")
    for f, c in self_t.most_common(args.top):
        print(f"{100 * c / n:7.1f}  {f}")
    print(f"\n{'total %':>7}  function")
    for f, c in total_t.most_common(args.top):
        print(f"{100 * c / n:7.1f}  {f}")


if __name__ == "__main__":
    main()
