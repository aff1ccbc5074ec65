"""What a wake-up of another process costs on this machine: the floor under every row of
bench_mount that waits on one request at a time.

    .venv/bin/python benchmarks/pingpong.py [--rounds 3000]

Two processes bounce a 40-byte message over a loopback TCP connection (as the mount and
the server do) and over a Unix socket pair, first where the scheduler puts them, then
both pinned to one CPU. Each round trip is two wake-ups of a process that was asleep.
On a machine whose idle CPUs halt at once (a VM with no guest halt polling:
/sys/module/haltpoll/parameters/guest_halt_poll_ns 0), a wake-up across CPUs costs an
interrupt to a halted CPU; pinned, it is a context switch. A FUSE stat answered from
memory is two such wake-ups (the program to the mount, and back), an open-read-close
of a small file four (and the mount's to the server and back). sshfs pays them too:
bench_mount run under `taskset -c 0` moves both columns (issue #17's closing notes).
Then the same round trip with one side, or both, polling for its message instead of
sleeping: what ninep/polling.py buys.
"""

from __future__ import annotations

import argparse
import os
import socket
import time


def _recv(s: socket.socket, poll: bool) -> bytes:
    """A message; `poll`: ask again until it is there instead of sleeping (ninep/polling.py)."""
    if not poll:
        return s.recv(64)
    while True:
        try:
            return s.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass


def _bounce(
    a: socket.socket,
    b: socket.socket,
    rounds: int,
    cpu: int | None,
    polls: tuple[bool, bool] = (False, False),
) -> float:
    """Seconds per round trip, `b` echoed by a child process; both on `cpu` if given;
    `polls`: whether the client and the echo poll for their message."""
    pid = os.fork()
    if pid == 0:  # the echo
        try:
            a.close()
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            while data := _recv(b, polls[1]):
                b.sendall(data)
        finally:
            os._exit(0)
    b.close()
    mask = os.sched_getaffinity(0)
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        msg = b"x" * 40
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(rounds):
                a.sendall(msg)
                _recv(a, polls[0])
            best = min(best, (time.perf_counter() - t) / rounds)
        return best
    finally:
        os.sched_setaffinity(0, mask)
        a.close()
        os.waitpid(pid, 0)


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3000)
    args = ap.parse_args()
    cpu = min(os.sched_getaffinity(0))
    print(f"round trip of 40 bytes between two processes, best of 3 x {args.rounds} (µs)")
    print(f"{'':16s} {'any CPU':>10s} {'one CPU':>10s}")
    for name, pair in (("loopback TCP", _tcp_pair), ("unix socketpair", socket.socketpair)):
        free = _bounce(*pair(), args.rounds, None)
        pinned = _bounce(*pair(), args.rounds, cpu)
        print(f"{name:16s} {free * 1e6:10.1f} {pinned * 1e6:10.1f}")
    print("loopback TCP, any CPU, polling instead of sleeping (µs)")
    for name, polls in (
        ("client polls", (True, False)),
        ("echo polls", (False, True)),
        ("both poll", (True, True)),
    ):
        print(f"{name:16s} {_bounce(*_tcp_pair(), args.rounds, None, polls) * 1e6:10.1f}")
    try:
        with open("/sys/module/haltpoll/parameters/guest_halt_poll_ns") as f:
            print(f"guest_halt_poll_ns: {f.read().strip()}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
