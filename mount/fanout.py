"""`ninefs cpu -w HOSTS -- CMD`: a fan-out's results shown as pdsh, dshbak and clush show them.

The engine is ninep.fanout (`run_all`); this module only decides what the user sees:

- default: each line as it arrives, prefixed `HOST: ` (stdout to stdout, stderr to
  stderr), as pdsh prints; `-N` drops the prefix.
- `-b`: when every host is done, hosts whose stdout, stderr and outcome are identical
  under one header naming them as folded ranges (dshbak -c, clush -b).
- `--json`: one JSON object per host, as each finishes (host, address, status, stdout,
  stderr, seconds, error).
- `--outdir DIR`: DIR/HOST/stdout, stderr and status written as output arrives: the
  results are files, for the next command to read (status holds the exit status, or
  the error, one line).

Whatever the mode, each group of hosts that failed gets one closing line on stderr
("node[3-4]: exit 1", "node7: unreachable (connection refused)"), and the exit status
is the largest remote one, or 255 when a host did not run the command to its end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import IO

from ninep.fanout import HostResult, Machine, run_all
from ninep.hostlist import fold, format_group, group

__all__ = ["closing_lines", "exit_code", "fan_out"]


class _StdoutClosed(Exception):
    """Our stdout (or stderr) was closed (`| head`): ours to stop, not the hosts' fault."""


def _write(out: IO[bytes], data: bytes) -> None:
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:
        raise _StdoutClosed from None


class _Lines:
    """Output of many hosts, written a whole line at a time with its host's prefix, so the
    lines of two hosts never interleave inside a line (pdsh's rule)."""

    def __init__(self, prefix: bool) -> None:
        self.prefix = prefix
        self.partial: dict[tuple[str, str], bytes] = {}

    def _out(self, name: str) -> IO[bytes]:
        return sys.stdout.buffer if name == "stdout" else sys.stderr.buffer

    def add(self, host: str, name: str, chunk: bytes) -> None:
        data = self.partial.pop((host, name), b"") + chunk
        *lines, rest = data.split(b"\n")
        if rest:
            self.partial[(host, name)] = rest
        if lines:
            head = f"{host}: ".encode() if self.prefix else b""
            _write(self._out(name), b"".join(head + line + b"\n" for line in lines))

    def finish(self, host: str) -> None:
        for name in ("stdout", "stderr"):
            rest = self.partial.pop((host, name), b"")
            if rest:
                self.add(host, name, rest + b"\n")


class _Outdir:
    """DIR/HOST/{stdout,stderr,status}, written as output arrives."""

    def __init__(self, top: str, hosts: Sequence[Machine]) -> None:
        self.top = top
        self.files: dict[tuple[str, str], IO[bytes]] = {}
        for m in hosts:
            d = os.path.join(top, _safe(m.name))
            os.makedirs(d, exist_ok=True)
            for name in ("stdout", "stderr"):
                self.files[(m.name, name)] = open(os.path.join(d, name), "wb")  # noqa: SIM115

    def add(self, host: str, name: str, chunk: bytes) -> None:
        self.files[(host, name)].write(chunk)

    def finish(self, r: HostResult) -> None:
        for name in ("stdout", "stderr"):
            self.files.pop((r.host, name)).close()
        status = str(r.status) if r.error is None else r.error
        with open(os.path.join(self.top, _safe(r.host), "status"), "w") as f:
            f.write(status + "\n")

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _safe(name: str) -> str:
    """A host label as one directory name ("unix!/run/9p" has slashes)."""
    return name.replace("/", "_") or "_"


def _record(r: HostResult) -> str:
    return json.dumps(
        {
            "host": r.host,
            "address": r.address,
            "status": r.status,
            "stdout": r.stdout.decode(errors="replace"),
            "stderr": r.stderr.decode(errors="replace"),
            "seconds": round(r.seconds, 3),
            "error": r.error,
        }
    )


def _print_groups(results: list[HostResult]) -> None:
    """-b: identical results once, under their hosts (dshbak -c's layout)."""
    groups = group({r.host: (r.stdout, r.stderr, r.outcome) for r in results})
    for hosts, (stdout, stderr, _) in groups:
        if stdout or not stderr:
            sys.stdout.write(format_group(hosts, stdout.decode(errors="replace")))
        if stderr:
            sys.stdout.flush()
            sys.stderr.write(format_group(hosts, stderr.decode(errors="replace")))
    sys.stdout.flush()
    sys.stderr.flush()


def closing_lines(results: list[HostResult]) -> list[str]:
    """One line per group of hosts that failed alike: "node[3-4]: exit 1"."""
    failed = {r.host: r.outcome for r in results if r.error is not None or r.status != 0}
    return [f"{fold(hosts)}: {outcome}" for hosts, outcome in group(failed)]


def exit_code(results: list[HostResult]) -> int:
    return max((r.code for r in results), default=0)


async def fan_out(
    hosts: Sequence[Machine],
    argv: list[str],
    *,
    mode: str,
    prefix: bool = True,
    outdir: str | None = None,
    **options: object,
) -> int:
    """Run and show, as `mode` says ("lines", "group" or "json"); the exit status."""
    lines = _Lines(prefix)
    files = _Outdir(outdir, hosts) if outdir is not None else None

    def on_output(host: str, name: str, chunk: bytes) -> None:
        if files is not None:
            files.add(host, name, chunk)
        elif mode == "lines":
            lines.add(host, name, chunk)

    def on_done(r: HostResult) -> None:
        if files is not None:
            files.finish(r)
        elif mode == "lines":
            lines.finish(r.host)
        elif mode == "json":
            _write(sys.stdout.buffer, _record(r).encode() + b"\n")

    try:
        results = await run_all(
            hosts,
            argv,
            collect=mode in ("group", "json"),
            on_output=on_output,
            on_done=on_done,
            **options,  # type: ignore[arg-type]
        )
    except BaseExceptionGroup as group:
        closed, rest = group.split(_StdoutClosed)
        if closed is None or rest is not None:
            raise
        # As cat(1) under `| head`: stop quietly (every command is killed as its connection
        # closes), with SIGPIPE's status, and nothing more written to the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        return 128 + signal.SIGPIPE
    finally:
        if files is not None:
            files.close()
    if mode == "group":
        _print_groups(results)
    for line in closing_lines(results):
        print(line, file=sys.stderr)
    return exit_code(results)
