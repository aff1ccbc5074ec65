"""Faults across a real (virtual) network: a link that drops for a while, a server that dies."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from .fuse_helpers import mounted, needs_fuse, sh
from .test_nsrun import _netns_works, netns_host

pytestmark = [pytest.mark.fuse, needs_fuse, pytest.mark.skipif(not _netns_works(), reason="needs ip netns")]


def serve_in(netns: str, ip: str, export: str) -> tuple[subprocess.Popen, str]:
    from .servers import ninefs_command

    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, *ninefs_command("serve", export, "--listen", f"tcp!{ip}!5640")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    line = proc.stdout.readline()
    assert line.startswith("ninefs: serving on"), line
    return proc, line.split()[-1]


def test_a_link_down_for_5_seconds_delays_but_loses_nothing(tmp_path):
    export, mp = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mp.mkdir()
    with netns_host(5) as (name, ip):
        proc, address = serve_in(name, ip, str(export))
        try:
            with mounted(address, str(mp), "--timeout=20"):
                # Written and fsync'd before the fault: must survive it.
                r = sh(
                    f"python3 -c \"import os; f=open('{mp}/safe.txt','w'); f.write('fsynced\\\\n'); f.flush(); os.fsync(f.fileno())\""
                )
                assert r.returncode == 0, r.stderr
                # The namespace's end goes down: the host keeps its route to it, so
                # nothing sent meanwhile can take the default route out of the machine.
                inner = ["ip", "netns", "exec", name, "ip", "link", "set", f"{name}b"]
                subprocess.run([*inner, "down"], check=True)
                start = time.monotonic()
                try:
                    # Uncached metadata and contents have to cross the dead link.
                    reader = subprocess.Popen(
                        f"echo during > {mp}/during.txt && cat {mp}/safe.txt", shell=True,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    )  # fmt: skip
                    time.sleep(5)
                finally:
                    subprocess.run([*inner, "up"], check=True)
                out, err = reader.communicate(timeout=60)
                took = time.monotonic() - start
                # TCP carries it over the gap: it goes through once the link is back, well
                # within the 20 s deadline (which would have turned it into an error).
                assert took < 25, f"hung for {took:.1f} s"
                assert reader.returncode == 0, err
                assert out == "fsynced\n"
                assert took >= 5  # it really waited for the link
                assert (export / "during.txt").read_text() == "during\n"
                assert (export / "safe.txt").read_text() == "fsynced\n"
                assert sh(f"cat {mp}/safe.txt").stdout == "fsynced\n"  # and the mount works again
        finally:
            proc.terminate()
            proc.wait(timeout=10)
