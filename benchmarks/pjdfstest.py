"""pjdfstest (POSIX conformance of the file system calls) on a plain directory, a ninefs
mount and an sshfs mount, side by side.

    .venv/bin/python benchmarks/pjdfstest.py [--src DIR] [--fs plain,ninefs,sshfs]
                                             [--dirs chmod,chown,...] [--results PATH]
                                             [--timeout S] [--no-install]

--src (or $PJDFSTEST_SRC) is pjdfstest's source: a checkout of github.com/pjd/pjdfstest,
a bare git directory of it, or a tree that already holds a built `pjdfstest`. The default
is /work/.mirror/pjd+pjdfstest/repo when it exists. The source is copied into a temp dir
and built there (autoreconf -ifs && ./configure && make pjdfstest); nothing is fetched.

File systems (each one runs the tests in its own subdirectory of one export directory
under /tmp, so the disk below is the same for all):

  plain    the exported directory itself (ext4 here, no FUSE)
  ninefs   `ninefs serve DIR` + `ninefs mount` (as root, so with allow_other)
  sshfs    sshfs to a private sshd on 127.0.0.1, set up as benchmarks/bench_mount.py does
           (sshfs's defaults: no allow_other, so tests acting as another uid get EACCES)

Each test file (tests/DIR/NN.t) runs with `prove -v FILE`, its working directory inside
the file system under test, as root (pjdfstest switches uid itself). A file passes when
prove does. Prints a table of test files passed/total per directory and file system, and
writes every failing subtest ("not ok N - tried 'OP ARGS', expected X, got Y") per file
to the results file (default benchmarks/results/pjdfstest.txt, not committed).

Needs root, /dev/fuse, prove (perl) and autoconf, automake, libtool and a C compiler;
missing Debian packages are installed with apt-get unless --no-install.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_mount import REPO, Cleanup, remove_tmp, setup_ninefs, setup_sshfs

DEFAULT_SRC = "/work/.mirror/pjd+pjdfstest/repo"
DIRS = [
    "chmod",
    "chown",
    "ftruncate",
    "mkdir",
    "open",
    "rename",
    "rmdir",
    "truncate",
    "unlink",
    "utimensat",
    "link",
    "symlink",
    "mkfifo",
]
FILE_SYSTEMS = ("plain", "ninefs", "sshfs")
BUILD_TOOLS = ("autoreconf", "automake", "libtoolize", "cc", "make", "prove")
BUILD_PACKAGES_ALL = ["autoconf", "automake", "libtool", "build-essential"]


@dataclass
class FileResult:
    test: str  # "chmod/00.t"
    passed: bool
    planned: int | None
    not_ok: list[str] = field(default_factory=list)  # the "not ok" lines
    notes: list[str] = field(default_factory=list)  # prove's parse errors, timeouts


# --- pjdfstest: source and build ------------------------------------------------------------------


def ensure_build_tools(install: bool) -> None:
    missing = [tool for tool in BUILD_TOOLS if not shutil.which(tool)]
    if not missing:
        return
    if not install or os.getuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(
            f"pjdfstest: missing {', '.join(missing)}; apt-get install {' '.join(BUILD_PACKAGES_ALL)}"
        )
    print(
        f"pjdfstest: installing {' '.join(BUILD_PACKAGES_ALL)} with apt-get ...", file=sys.stderr, flush=True
    )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *BUILD_PACKAGES_ALL, "perl"], env=env, check=True, timeout=900
    )


def prepare_source(src: str, build: str) -> str:
    """Copy (or extract, from a git directory) pjdfstest's source into `build`; build it there.
    Returns the directory holding `pjdfstest` and `tests/`."""
    is_git_dir = os.path.isfile(os.path.join(src, "HEAD")) and os.path.isdir(os.path.join(src, "objects"))
    if is_git_dir:
        os.mkdir(build)
        archive = subprocess.Popen(["git", "--git-dir", src, "archive", "HEAD"], stdout=subprocess.PIPE)
        subprocess.run(["tar", "x", "-C", build], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit(f"pjdfstest: git archive of {src} failed")
    elif os.path.isfile(os.path.join(src, "pjdfstest.c")) or os.path.isfile(os.path.join(src, "pjdfstest")):
        shutil.copytree(src, build, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    else:
        raise SystemExit(f"pjdfstest: {src} is neither pjdfstest's source nor a git directory of it")
    binary = os.path.join(build, "pjdfstest")
    if not os.access(binary, os.X_OK):
        print("pjdfstest: building (autoreconf, configure, make) ...", file=sys.stderr, flush=True)
        with open(os.path.join(build, "build.log"), "wb") as log:
            for cmd in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
                r = subprocess.run(cmd, cwd=build, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    raise SystemExit(f"pjdfstest: {' '.join(cmd)} failed; see {build}/build.log")
    return build


# --- running ---------------------------------------------------------------------------------------


NOT_OK = re.compile(r"^not ok \d+")
PLAN = re.compile(r"^1\.\.(\d+)")


def run_file(pjd: str, test: str, cwd: str, timeout: float) -> FileResult:
    """`prove -v tests/TEST` with `cwd` inside the file system under test."""
    proc = subprocess.Popen(
        ["prove", "-v", os.path.join(pjd, "tests", test)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: a timeout stops the whole test
    )
    notes = []
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        notes.append(f"timed out after {timeout:g} s")
    planned = None
    not_ok = []
    for raw in out.splitlines():
        line = raw.strip()
        if m := PLAN.match(line):
            planned = int(m.group(1))
        elif NOT_OK.match(line) and "# TODO" not in line and "# SKIP" not in line:
            not_ok.append(line)
        elif line.startswith(("Parse errors:", "Non-zero exit status:", "Non-zero wait status:")):
            notes.append(line)
    passed = proc.returncode == 0 and not notes
    return FileResult(test, passed, planned, not_ok, notes)


def run_fs(name: str, pjd: str, root: str, dirs: list[str], timeout: float) -> list[FileResult]:
    work = os.path.join(root, f"pjdfstest-{name}")
    os.mkdir(work)
    os.chmod(work, 0o755)
    results = []
    for d in dirs:
        files = sorted(f for f in os.listdir(os.path.join(pjd, "tests", d)) if f.endswith(".t"))
        t0 = time.monotonic()
        for f in files:
            results.append(run_file(pjd, f"{d}/{f}", work, timeout))
        ok = sum(r.passed for r in results if r.test.startswith(d + "/"))
        print(
            f"  {name:7s} {d:10s} {ok:3d}/{len(files):<3d} ({time.monotonic() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return results


# --- reporting -------------------------------------------------------------------------------------


def table(results: dict[str, list[FileResult] | None], dirs: list[str], why: dict[str, str]) -> str:
    names = list(results)
    rows = [["directory", *names]]

    def cell(rs: list[FileResult] | None, prefix: str) -> str:
        if rs is None:
            return "n/a"
        mine = [r for r in rs if r.test.startswith(prefix)]
        return f"{sum(r.passed for r in mine)}/{len(mine)}"

    for d in dirs:
        rows.append([d, *(cell(results[n], d + "/") for n in names)])
    rows.append(["total", *(cell(results[n], "") for n in names)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append(
            "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])
        )
        if j == 0 or j == len(rows) - 2:
            lines.append("-" * len(lines[0]))
    for n, w in why.items():
        lines.append(f"{n}: n/a ({w})")
    return "\n".join(lines)


def write_results(path: str, results: dict[str, list[FileResult] | None], head: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(head + "\n")
        for name, rs in results.items():
            if rs is None:
                continue
            failed = [r for r in rs if not r.passed]
            f.write(f"\n=== {name}: {len(failed)} of {len(rs)} test files fail\n")
            for r in failed:
                f.write(f"\n{name} {r.test}: {len(r.not_ok)} of {r.planned or '?'} subtests not ok\n")
                for note in r.notes:
                    f.write(f"  ! {note}\n")
                for line in r.not_ok:
                    f.write(f"  {line}\n")


# --- main ------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description="pjdfstest on a plain directory, a ninefs mount and sshfs")
    ap.add_argument(
        "--src",
        default=os.environ.get("PJDFSTEST_SRC") or (DEFAULT_SRC if os.path.exists(DEFAULT_SRC) else None),
        help="pjdfstest's source tree or git directory (default $PJDFSTEST_SRC, else " + DEFAULT_SRC + ")",
    )
    ap.add_argument("--fs", default=",".join(FILE_SYSTEMS), help="which file systems (comma-separated)")
    ap.add_argument("--dirs", default=",".join(DIRS), help="which test directories (comma-separated)")
    ap.add_argument(
        "--results",
        default=os.path.join(REPO, "benchmarks", "results", "pjdfstest.txt"),
        help="failing subtests",
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds one test file may take")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install anything")
    args = ap.parse_args()
    if not args.src:
        ap.error("no pjdfstest source: pass --src DIR or set PJDFSTEST_SRC (see benchmarks/README-mount.md)")
    wanted = [x.strip() for x in args.fs.split(",") if x.strip()]
    dirs = [x.strip() for x in args.dirs.split(",") if x.strip()]
    if bad := [x for x in wanted if x not in FILE_SYSTEMS]:
        ap.error(f"unknown file system {bad[0]!r} (known: {', '.join(FILE_SYSTEMS)})")
    if os.getuid() != 0:
        print("pjdfstest: needs root (it switches uids, and chown needs it)", file=sys.stderr)
        return 2
    ensure_build_tools(not args.no_install)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    cleanup = Cleanup()
    results: dict[str, list[FileResult] | None] = {}
    why: dict[str, str] = {}
    started = time.monotonic()
    try:
        tmp = tempfile.mkdtemp(prefix="pjdfstest-", dir="/tmp")
        os.chmod(tmp, 0o755)  # the tests act as uid 65534 too
        cleanup.push("temp dir", lambda: remove_tmp(tmp))
        pjd = prepare_source(os.path.abspath(args.src), os.path.join(tmp, "pjdfstest"))
        for d in dirs:
            if not os.path.isdir(os.path.join(pjd, "tests", d)):
                raise SystemExit(f"pjdfstest: no tests/{d} in {args.src}")
        export = os.path.join(tmp, "export")
        os.mkdir(export, 0o755)
        for name in FILE_SYSTEMS:
            if name not in wanted:
                continue
            if name == "plain":
                root = export
            else:
                try:
                    cfg = (
                        setup_ninefs
                        if name == "ninefs"
                        else lambda e, t, c: setup_sshfs(e, t, c, not args.no_install)
                    )(export, tmp, cleanup)
                except Exception as e:
                    why[name], results[name] = f"set-up failed: {e}", None
                    continue
                if cfg.root is None:
                    why[name], results[name] = cfg.why_na, None
                    continue
                root = cfg.root
            print(f"pjdfstest: {name} in {root}", file=sys.stderr, flush=True)
            results[name] = run_fs(name, pjd, root, dirs, args.timeout)
    except KeyboardInterrupt:
        print("\npjdfstest: interrupted, cleaning up", file=sys.stderr)
        cleanup.run()
        return 130
    finally:
        cleanup.run()

    head = (
        f"pjdfstest ({args.src}), test files passed/total; {os.cpu_count()} CPUs, "
        f"Linux {os.uname().release}; {time.monotonic() - started:.0f} s"
    )
    print()
    print(head)
    print(table(results, dirs, why))
    write_results(args.results, results, head + "\n" + table(results, dirs, why))
    print(f"failing subtests per file: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
