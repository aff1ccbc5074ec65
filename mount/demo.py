"""`ninefs demo` (what `make demo` runs): the main job, end to end, on loopback.

It starts real servers as subprocesses, uses them through the Python library
and through the command line, prints every command and its output, and cleans
up everything it started, also when something fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import trio

import ninep

__all__ = ["register"]


def _ninefs(*args: str) -> list[str]:
    return [sys.executable, "-m", "mount.cli", *args]


def _say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def _sh(command: str, cwd: str | None = None, stdin: bytes | None = None) -> str:
    """Run a shell command as a person would type it; show it and its output."""
    print(f"$ {command}", flush=True)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(command, shell=True, cwd=cwd, input=stdin, capture_output=True, env=env, timeout=120)
    out = (r.stdout + r.stderr).decode(errors="replace")
    if out:
        print(out.rstrip("\n"), flush=True)
    if r.returncode:
        print(f"(exit status {r.returncode})", flush=True)
    return out


@contextmanager
def _server(*args: str) -> Iterator[str]:
    proc = subprocess.Popen(
        _ninefs("serve", *args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ninefs: serving on "):
            raise RuntimeError(f"server did not start: {line!r}")
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _library_part(address: str) -> None:
    print(">>> async with ninep.connect(address) as fs:")
    async with ninep.connect(address) as fs:
        await fs.mkdir("notes/2026", parents=True)
        await fs.write_text("notes/2026/plan.txt", "bind, mount, union\n")
        print("...     await fs.write_text('notes/2026/plan.txt', ...)")
        async with fs.open("notes/2026/plan.txt", "a") as f:
            await f.write("export it all over 9P\n")
        print("...     async with fs.open('notes/2026/plan.txt', 'a') as f: await f.write(...)")
        for entry in await fs.ls("/"):
            print(f"...     fs.ls('/') -> {entry.name}{'/' if entry.is_dir else ''} {entry.length} bytes")
        print(f"...     fs.read_text(...) -> {await fs.read_text('notes/2026/plan.txt')!r}")
        try:
            await fs.read_bytes("no/such/file")
        except FileNotFoundError as e:
            print(f"...     except FileNotFoundError as e: {e}")


def _mount_part(address: str, tmp: str) -> None:
    _say("Any program can use it: mount it with FUSE and run ordinary shell commands")
    if not os.path.exists("/dev/fuse"):
        print("(skipped: this machine has no /dev/fuse)")
        return
    mnt = os.path.join(tmp, "mnt")
    os.makedirs(mnt)
    q = shlex.quote(address)
    _sh(f"ninefs mount {q} {mnt}")
    try:
        _sh(f"grep ' {mnt} ' /proc/mounts")
        _sh(f"cd {mnt} && ls -l && cat src/hello.c")
        _sh(f"cd {mnt} && echo 'int answer = 42;' >> src/hello.c && tail -1 src/hello.c")
        _sh(f"cd {mnt} && cp -r src src-copy && diff -r src src-copy && echo identical")
        _sh(f"cd {mnt} && seq 1 100000 > numbers && wc -l numbers && sha1sum numbers")
        _sh(f"cd {mnt} && tar cf - src | tar tvf -")
        _sh(f"cd {mnt} && find . -type f | sort")
        _sh(f"cd {mnt} && cat does-not-exist")
    finally:
        _sh(f"ninefs umount {mnt}")


def _namespace_part(alpha: str, beta: str, tmp: str) -> None:
    _say("The main job: one namespace composed from two machines, for one shell and its children")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("(skipped: `ninefs ns run` needs root and /dev/fuse)")
        return
    b = shlex.quote(beta)
    _sh(
        f"ninefs mkdir {b} bin && printf '#!/bin/sh\\necho hello from beta, args: $*\\n' | ninefs write {b} bin/greet"
    )
    _sh(f"echo 'the quarterly numbers' | ninefs write {b} report.txt")
    local = os.path.join(tmp, "localbin")
    os.makedirs(local)
    with open(os.path.join(local, "greet-local"), "w") as f:
        f.write("#!/bin/sh\necho hello from this machine\n")
    nsfile = os.path.join(tmp, "demo.ns")
    with open(nsfile, "w") as f:
        f.write(
            "# namespace(6): two machines at /n, and a union directory\n"
            f"mount -c {alpha} /n/alpha\n"
            f"mount -c {beta} /n/beta\n"
            f"bind -a {local} /n/beta/bin\n"
        )
    _sh(f"cat {nsfile}")
    script = (
        "ls /n; ls /n/beta/bin; sh /n/beta/bin/greet one two; sh /n/beta/bin/greet-local; "
        "cp /n/beta/report.txt /n/alpha/notes/ && cat /n/alpha/notes/report.txt; "
        "grep ' /n' /proc/self/mounts | cut -d' ' -f1-3"
    )
    _sh(f"ninefs ns run -n {nsfile} -- sh -c {shlex.quote(script)}")
    _say("...and nothing of it is visible outside that shell")
    _sh("ls /n/alpha 2>&1; grep -c ' /n' /proc/self/mounts | sed 's/^/mounts at \\/n out here: /'")
    _sh(f"ninefs ns run -n {nsfile} -- sh -c 'exit 7'; echo exit status passed through: $?")


def _cpu_part(tmp: str) -> None:
    _say("cpu: run a command on another machine that works on this machine's files")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("(skipped: `ninefs cpu` needs root and /dev/fuse on the remote machine)")
        return
    mine = os.path.join(tmp, "mine")
    os.makedirs(mine)
    with open(os.path.join(mine, "numbers.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in range(1, 101)))
    with _server(
        "--machine", os.path.join(tmp, "export"), "--allow-exec", "--listen", "tcp!127.0.0.1!0"
    ) as cpu:
        q = shlex.quote(cpu)
        print(f"$ ninefs serve --machine --allow-exec --listen tcp!127.0.0.1!0    # the CPU server -> {cpu}")
        _sh(f"ninefs ls {q} / && ninefs cat {q} /dev/ncpu /dev/load")
        script = "echo on $(cat /dev/sysname 2>/dev/null || hostname), in $(pwd); awk '{s+=$1} END {print \"sum:\", s}' numbers.txt > sum.txt; cat sum.txt"
        _sh(f"ninefs cpu {q} --cwd -- sh -c {shlex.quote(script)}", cwd=mine)
        _sh(f"cat {shlex.quote(os.path.join(mine, 'sum.txt'))}    # written by the remote command, here")
        _sh(f"ninefs cpu {q} -- sh -c 'exit 3'; echo remote exit status: $?")


def _fanout_part(tmp: str) -> None:
    _say("Many machines as one: a command on all of them at once, from one process (like pdsh)")
    top = os.path.join(tmp, "fleet")
    with contextlib.ExitStack() as stack:
        lines = []
        for i in range(1, 5):
            home = os.path.join(top, f"node{i}", "work")
            os.makedirs(home)
            with open(os.path.join(home, "load"), "w") as f:
                f.write(f"{i * 7}\n")
            address = stack.enter_context(
                _server("--machine", home, "--allow-exec", "--listen", "tcp!127.0.0.1!0")
            )
            lines.append(f"node{i} {address}")
        machines = os.path.join(tmp, "machines")
        with open(machines, "w") as f:
            f.write(
                "# NAME ADDRESS: four machines (here, four servers on loopback)\n" + "\n".join(lines) + "\n"
            )
        print("$ for i in 1 2 3 4; do ninefs serve --machine --allow-exec ... & done    # four machines")
        _sh(f"cat {machines}")
        _sh(f"ninefs cpu -w ^{machines} -- cat load")
        _sh(f"ninefs cpu -w ^{machines} -b -- uname -s")
        _sh(f"echo 'one line for everyone' | ninefs cpu -w ^{machines} -N -- wc -c")
        out = os.path.join(tmp, "results")
        _sh(
            f"ninefs cpu -w ^{machines} --outdir {out} -- sh -c 'cat load; exit $(($(cat load) % 2))'; echo exit status: $?"
        )
        _sh(f"cd {out} && head -n 20 */status */stdout")
        _sh(f"ninefs cpu -w ^{machines} -w tcp!127.0.0.1!1 --json -x node[2-4] -- true; echo exit status: $?")
        if os.geteuid() == 0 and os.path.exists("/dev/fuse"):
            _say("...and all of them in one namespace: /n/NAME for each machine, with one not answering")
            nsfile = os.path.join(tmp, "fleet.ns")
            with open(nsfile, "w") as f:
                f.write(f"machines {machines}\nmount tcp!127.0.0.1!1 /n/node5\n")
            _sh(f"cat {nsfile}")
            script = (
                "cat /n/node*/fs/load | awk '{s += $1} END {print \"sum:\", s}'; cat /n/.status; ls /n/node5"
            )
            _sh(f"ninefs ns run -n {nsfile} -- sh -c {shlex.quote(script)}")


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ninefs-demo-") as tmp:
        export = os.path.join(tmp, "export")
        os.makedirs(os.path.join(export, "src"))
        with open(os.path.join(export, "README"), "w") as f:
            f.write("This directory is exported by a ninefs server.\n")
        with open(os.path.join(export, "src", "hello.c"), "w") as f:
            f.write('#include <stdio.h>\nint main(void) { puts("hello, 9P"); return 0; }\n')

        _say("A machine exports a directory over 9P2000 (a real server process on loopback)")
        with _server(export, "--listen", "tcp!127.0.0.1!0") as address:
            print(f"$ ninefs serve {export} --listen tcp!127.0.0.1!0    # -> {address}")

            _say("Another program uses it through the command line (like plan9port's 9p)")
            q = shlex.quote(address)
            _sh(f"ninefs ls -l {q} /")
            _sh(f"ninefs cat {q} src/hello.c")
            _sh(f"date | ninefs write {q} /stamp && ninefs cat {q} /stamp")
            _sh(f"ninefs mkdir -p {q} build/out && ninefs mv {q} /stamp build")
            _sh(f"ninefs ls -l {q} build")
            _sh(f"ninefs cat {q} /nonexistent")

            _say("...and through the Python library")
            trio.run(_library_part, address)

            _mount_part(address, tmp)

            _say("The changes are real files on the exporting machine")
            _sh(f"find {shlex.quote(export)} -type f | sort | sed 's|{export}|<export>|'")
            _sh(f"cat {shlex.quote(os.path.join(export, 'notes/2026/plan.txt'))}")

            with _server("--listen", "tcp!127.0.0.1!0") as beta:
                _namespace_part(address, beta, tmp)

        _cpu_part(tmp)
        _fanout_part(tmp)

        _say("A second server with a RAM tree, read-only: changes are refused with a clear error")
        with _server("--ro", "--listen", "tcp!127.0.0.1!0") as address:
            _sh(f"echo hi | ninefs write {shlex.quote(address)} /x")
        _say("Done: servers stopped, temporary files removed")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show ninefs working end to end on loopback")
    p.set_defaults(run=_run)
