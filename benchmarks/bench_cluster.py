"""`ninefs cpu -w` fan-out against pdsh and clush over ssh, on clusters of 16 and 64 machines.

    .venv/bin/python benchmarks/bench_cluster.py [--hosts 16,64] [--passes 3] [--lines 1600000]
                                                [--json PATH] [--only ns]

Each cluster is tests/cluster.py's: N network namespaces joined to ours by veth pairs,
each with its own hostname, running `ninefs serve --machine --allow-exec
--authorized-keys FILE` on port 564 and a private sshd (own host key, root by key only)
on port 22 of the same address. So the three tools reach the same machines, over the
same links, from the same client; everything runs on this one machine's CPUs.

The tools, each told to reach all N hosts at once:

  ninefs   ninefs cpu -w ^MACHINES -- CMD       (fan-out limit 64, its default)
  pdsh     pdsh -R ssh -f N -w IP,IP,... CMD    (ssh with the cluster's key, no known_hosts)
  clush    clush -f N -o SSH_OPTIONS -w IP,... CMD

Rows, each the wall time of one client process from start to exit, with its output
checked (and, for count, parsed and summed), in seconds:

  true       CMD = true
  uname -n   CMD = uname -n (N distinct names checked)
  count      split/count/gather over LINES generated lines: before timing, line i of the
             data set goes to host (i mod N)'s share, written to a file the host reads
             from its own disk (SHARES/HOSTNAME); timed: the fan-out of
             `sh -c 'grep -c 7 SHARES/$(uname -n)'` (pdsh and clush: that string, which
             their remote shell runs), parsing each host's count and summing them; the sum
             must equal the count over the whole data set

  ns run true     ninefs ns run -n NSFILE -- true, NSFILE mounting every host at /n/hN
  ns run cat all  the same with `sh -c 'cat /n/h*/dev/sysname'`: every mount answering
  ns run none     ninefs ns run -- true, no mounts (what the mounts add is the difference)

`--only ns`: the ns run rows alone (no sshd, pdsh or clush needed), for start-up work.

One untimed warm-up of every row first; then PASSES passes, the tools taking turns in
an order that rotates each pass so all see the same background load; the median is
reported. CPU: the client's (its process and children, ssh included) and the servers'
(every ninefs server, or every sshd with the sessions it forked), in CPU seconds.
RSS: VmRSS of each idle ninefs server and sshd listener after the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from tests.cluster import Cluster, cluster, netns_works  # noqa: E402
from tests.servers import ninefs_command  # noqa: E402

TOOLS = ("ninefs", "pdsh", "clush")
PATTERN = "7"


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    client_cpu: float
    server_cpu: float


@dataclass(frozen=True, slots=True)
class Row:
    hosts: int
    job: str
    tool: str
    runs: tuple[Run, ...]

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def median_of(self, field: str) -> float:
        return statistics.median(getattr(r, field) for r in self.runs)


def _cpu_of(pid: int) -> float:
    """utime+stime of a process and of the children it has reaped, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Bench:
    def __init__(self, c: Cluster, shares: Path) -> None:
        self.c = c
        self.n = len(c.hosts)
        self.shares = shares
        self.ips = ",".join(c.ips)

    def argv(self, tool: str, command: list[str], shell: str) -> list[str]:
        if tool == "ninefs":
            return ninefs_command("cpu", "-w", f"^{self.c.machines}", "--", *command)
        if tool == "pdsh":
            return ["pdsh", "-R", "ssh", "-f", str(self.n), "-w", self.ips, shell]
        return ["clush", "-f", str(self.n), "-o", self.c.ssh_options, "-w", self.ips, shell]

    def server_pids(self, tool: str) -> list[int]:
        procs = [h.proc if tool == "ninefs" else h.sshd for h in self.c.hosts]
        return [p.pid for p in procs if p is not None]

    def timed(self, argv: list[str], check: Callable[[str], None], servers: list[int]) -> Run:
        cpu0, srv0 = _children_cpu(), sum(_cpu_of(p) for p in servers)
        t0 = time.perf_counter()
        r = subprocess.run(
            argv, capture_output=True, text=True, env=self.c.env, stdin=subprocess.DEVNULL, timeout=300
        )
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {r.returncode}: {r.stderr.strip()[-500:]}")
        check(r.stdout)
        seconds = time.perf_counter() - t0
        return Run(seconds, _children_cpu() - cpu0, sum(_cpu_of(p) for p in servers) - srv0)

    def by_host(self, stdout: str) -> dict[str, str]:
        """`LABEL: TEXT` lines, one per host, as {label: text}."""
        out = dict(line.split(": ", 1) for line in stdout.splitlines())
        if len(out) != self.n:
            raise RuntimeError(f"{len(out)} hosts answered, not {self.n}: {stdout[:300]!r}")
        return out


def make_shares(c: Cluster, lines: int) -> tuple[Path, int]:
    """Deal the data set's lines round-robin to the hosts; the expected count of PATTERN."""
    shares = c.dir / "shares"
    shares.mkdir()
    n = len(c.hosts)
    parts: list[list[str]] = [[] for _ in range(n)]
    expected = 0
    for i in range(lines):
        line = f"{i:07d} the quick brown fox {i * 7919 % 100003}\n"
        expected += PATTERN in line
        parts[i % n].append(line)
    for h, part in zip(c.hosts, parts, strict=True):
        (shares / h.hostname).write_text("".join(part))
    return shares, expected


def bench_cluster(c: Cluster, lines: int, passes: int, *, fan_out: bool = True) -> list[Row]:
    n = len(c.hosts)
    shares, expected = make_shares(c, lines) if fan_out else (c.dir, 0)
    b = Bench(c, shares)
    names = {h.hostname for h in c.hosts}

    def none(_: str) -> None:
        pass

    def check_names(stdout: str) -> None:
        if set(b.by_host(stdout).values()) != names:
            raise RuntimeError(f"uname -n gave {sorted(b.by_host(stdout).values())[:4]}...")

    def check_count(stdout: str) -> None:
        total = sum(int(v) for v in b.by_host(stdout).values())
        if total != expected:
            raise RuntimeError(f"count gathered {total}, not {expected}")

    count_sh = f"grep -c {PATTERN} {shares}/$(uname -n)"
    jobs = [
        ("true", ["true"], "true", none),
        ("uname -n", ["uname", "-n"], "uname -n", check_names),
        ("count", ["sh", "-c", count_sh], count_sh, check_count),
    ]
    if not fan_out:
        jobs = []
    nsfile = c.dir / "cluster.ns"
    nsfile.write_text("".join(f"mount {h.address} /n/{h.name}\n" for h in c.hosts))

    def check_cat(stdout: str) -> None:
        if set(stdout.split()) != names:
            raise RuntimeError(f"cat /n/h*/dev/sysname gave {stdout[:200]!r}")

    ns_jobs = [
        ("ns run true", ninefs_command("ns", "run", "-n", str(nsfile), "--", "true"), none),
        (
            "ns run cat all",
            ninefs_command("ns", "run", "-n", str(nsfile), "--", "sh", "-c", "cat /n/h*/dev/sysname"),
            check_cat,
        ),
        ("ns run none", ninefs_command("ns", "run", "--", "true"), none),
    ]
    runs: dict[tuple[str, str], list[Run]] = {}
    for p in range(-1, passes):  # pass -1 is the warm-up
        for job, command, shell, check in jobs:
            order = TOOLS[p % 3 :] + TOOLS[: p % 3]
            for tool in order:
                run = b.timed(b.argv(tool, command, shell), check, b.server_pids(tool))
                if p >= 0:
                    runs.setdefault((job, tool), []).append(run)
        for job, argv, check in ns_jobs:
            run = b.timed(argv, check, b.server_pids("ninefs"))
            if p >= 0:
                runs.setdefault((job, "ninefs"), []).append(run)
        print(f"  {n} hosts: pass {p + 1 if p >= 0 else 'warm-up'} done", file=sys.stderr)
    return [Row(n, job, tool, tuple(rs)) for (job, tool), rs in runs.items()]


def rss(c: Cluster) -> dict[str, dict[str, float]]:
    out = {}
    for tool in ("ninefs", "sshd"):
        kib = [_rss_kib(p.pid) for h in c.hosts if (p := h.proc if tool == "ninefs" else h.sshd)]
        if not kib:
            continue
        out[tool] = {"median_mib": statistics.median(kib) / 1024, "total_mib": sum(kib) / 1024}
    return out


def table(rows: list[Row], memory: dict[int, dict[str, dict[str, float]]]) -> str:
    get = {(r.hosts, r.job, r.tool): r for r in rows}
    out = []
    if any(r.tool != "ninefs" for r in rows):  # not --only ns
        out += [
            "| hosts | job | ninefs s | pdsh s | clush s | ninefs/pdsh | ninefs/clush "
            "| client CPU s (ninefs/pdsh/clush) | server CPU s (ninefs/sshd/sshd) |",
            "|---:|---|---:|---:|---:|---:|---:|---|---|",
        ]
    for n in sorted({r.hosts for r in rows}):
        for job in ("true", "uname -n", "count"):
            if (n, job, "ninefs") not in get:
                continue
            rs = [get[(n, job, t)] for t in TOOLS]
            t9, tp, tc = (r.median for r in rs)
            ccpu = "/".join(f"{r.median_of('client_cpu'):.2f}" for r in rs)
            scpu = "/".join(f"{r.median_of('server_cpu'):.2f}" for r in rs)
            out.append(
                f"| {n} | {job} | {t9:.3f} | {tp:.3f} | {tc:.3f} | {t9 / tp:.2f} | {t9 / tc:.2f} | {ccpu} | {scpu} |"
            )
    out += ["", "| hosts | ns run | seconds | client CPU s | servers' CPU s |", "|---:|---|---:|---:|---:|"]
    for n in sorted({r.hosts for r in rows}):
        for job in ("ns run none", "ns run true", "ns run cat all"):
            r = get[(n, job, "ninefs")]
            out.append(
                f"| {n} | {job[7:]} | {r.median:.3f} | {r.median_of('client_cpu'):.2f} "
                f"| {r.median_of('server_cpu'):.2f} |"
            )
    out += ["", "| hosts | ninefs server RSS median / total MiB | sshd listener RSS median / total MiB |"]
    out.append("|---:|---:|---:|")
    for n, m in sorted(memory.items()):
        f, s = m["ninefs"], m.get("sshd")
        sshd = f"{s['median_mib']:.1f} / {s['total_mib']:.0f}" if s else "-"
        out.append(f"| {n} | {f['median_mib']:.1f} / {f['total_mib']:.0f} | {sshd} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", default="16,64", help="cluster sizes, comma-separated (default 16,64)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--lines", type=int, default=1_600_000)
    ap.add_argument("--json", type=Path, help="also write the runs here")
    ap.add_argument("--only", choices=["ns"], help="ns: only the ns run rows (no sshd, pdsh, clush)")
    args = ap.parse_args()
    fan_out = args.only is None
    missing = [t for t in ("pdsh", "clush", "/usr/sbin/sshd", "ssh-keygen") if not shutil.which(t)]
    if missing and fan_out:
        print(f"bench_cluster: missing {', '.join(missing)} (make bench-cluster-deps)", file=sys.stderr)
        return 1
    if not netns_works():
        print("bench_cluster: cannot make network namespaces (run as root)", file=sys.stderr)
        return 1
    try:
        sizes = [int(s) for s in args.hosts.split(",")]
    except ValueError:
        print(f"bench_cluster: --hosts {args.hosts}: not a list of numbers", file=sys.stderr)
        return 2
    rows: list[Row] = []
    memory = {}
    for n in sizes:
        t0 = time.monotonic()
        with cluster(n, sshd=fan_out) as c:
            print(f"{n} hosts up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
            rows += bench_cluster(c, args.lines, args.passes, fan_out=fan_out)
            memory[n] = rss(c)
    print(table(rows, memory))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "rows": [dict(asdict(r), median=r.median) for r in rows],
            "rss": memory,
            "cpus": os.cpu_count(),
        }
        args.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
