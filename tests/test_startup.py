"""Start-up (issue #19): what `ninefs cpu` and `ns run` load, and how they end.

No timings here (other people's tests share this machine): what a command imports is
what its start-up costs, so these check that the paths of `cpu` and of a namespace's
options stay lazy, and that the quick exit of `cpu` and `ns` (no interpreter teardown)
still delivers every byte and the right status.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys

import pytest

from ninep.messages import Qid, Rflush, Stat, Twalk

from .fuse_helpers import needs_fuse
from .servers import CHECKOUT, ninefs_command, server_process

# Runs the `ninefs` command line of ARGV as the console script does (argv=None: the process
# is the command's), and writes the names of the modules it imported to OUT at exit.
_LOADED = """
import atexit, json, runpy, sys
out, sys.argv = sys.argv[1], ["ninefs", *sys.argv[2:]]
atexit.register(lambda: json.dump(sorted(sys.modules), open(out, "w")))
runpy.run_module("mount.cli", run_name="__main__")
"""


def loaded_by(tmp_path, *argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = tmp_path / "modules.json"
    r = subprocess.run(
        [sys.executable, "-c", _LOADED, str(out), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=CHECKOUT,
        stdin=subprocess.DEVNULL,
    )
    return r, set(json.loads(out.read_text())) if out.exists() else set()


def imports_of(code: str) -> set[str]:
    r = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=CHECKOUT,
        check=True,
    )
    return set(json.loads(r.stdout))


@pytest.fixture
def machine(tmp_path):
    with server_process("--machine", str(tmp_path), "--allow-exec") as (address, _):
        yield address


@pytest.mark.slow
@pytest.mark.fuse
@needs_fuse
def test_cpu_loads_no_fuse_no_cryptography_and_no_copier_and_still_runs(machine, tmp_path):
    r, loaded = loaded_by(tmp_path, "cpu", machine, "--", "sh", "-c", "echo ran; exit 3")
    assert (r.returncode, r.stdout) == (3, "ran\n"), r.stderr
    assert "ninep.client" in loaded  # the list is the command's
    for heavy in ("mount.fuse", "mount.fusesession", "cryptography", "ninep.copy", "fileserver.cmd"):
        assert heavy not in loaded, heavy
    # no namespace file: no parser of one's machines lines, no DNS discovery, no /n/.status
    assert not {"namespaces.discovery", "namespaces.status"} & loaded


@pytest.mark.slow
@pytest.mark.fuse
@needs_fuse
def test_cpu_ends_with_every_byte_of_output_delivered_and_the_commands_status(machine, tmp_path):
    out = tmp_path / "out"
    with open(out, "wb") as f:  # a file: our stdout fully buffered, flushed only as we end
        r = subprocess.run(
            ninefs_command("cpu", machine, "--", "sh", "-c", "seq 1 20000; echo last >&2; exit 5"),
            stdout=f,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            timeout=60,
            cwd=CHECKOUT,
        )
    assert r.returncode == 5
    assert out.read_text() == "".join(f"{i}\n" for i in range(1, 20001))
    assert r.stderr == b"last\n"


@pytest.mark.slow
def test_a_fan_out_printed_by_this_process_is_flushed_as_it_ends(machine, tmp_path):
    out = tmp_path / "out"
    with open(out, "wb") as f:
        r = subprocess.run(
            ninefs_command("cpu", "-w", machine, "--", "echo", "hello"),
            stdout=f,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            timeout=60,
            cwd=CHECKOUT,
        )
    assert r.returncode == 0, r.stderr
    assert out.read_text().endswith(": hello\n")


def test_a_bad_address_is_still_one_line_and_exit_2(tmp_path):
    r, _ = loaded_by(tmp_path, "cpu", "tcp!!nowhere", "--", "true")
    assert r.returncode == 2
    assert r.stderr.startswith("ninefs cpu: ") and r.stderr.count("\n") == 1, r.stderr


def test_namespace_options_and_the_clients_user_load_no_namespace_machinery():
    loaded = imports_of("import namespaces.cli, ninep.auth; ninep.auth.local_user()")
    assert not {"namespaces.namespace", "namespaces.nsfile", "cryptography"} & loaded


def test_the_9p_commands_load_the_copier_only_to_copy():
    assert "ninep.copy" not in imports_of("import ninep.cli")


def test_a_namespace_file_without_machines_loads_no_discovery():
    loaded = imports_of("import namespaces; namespaces.parse('mount tcp!a!564 /n/a\\nbind /n/a /b', 'x')")
    assert "namespaces.nsfile" in loaded and "namespaces.discovery" not in loaded


def test_messages_are_frozen_dataclasses_that_compare_hash_and_print_by_value():
    walk = Twalk(1, 2, 3, ("a", "b"))
    assert walk == Twalk(1, 2, 3, ("a", "b")) and walk != Twalk(1, 2, 3, ("a",))
    assert Rflush(7) != Twalk(7, 0, 0, ())  # another message with the same fields is not equal
    assert hash(Qid(1, 2, 3)) == hash(Qid(1, 2, 3)) and len({Qid(1, 2, 3), Qid(1, 2, 3)}) == 1
    assert repr(walk) == "Twalk(tag=1, fid=2, newfid=3, wnames=('a', 'b'))"
    assert [f.name for f in dataclasses.fields(Twalk)] == ["tag", "fid", "newfid", "wnames"]
    stat = Stat(name="x", qid=Qid(0x80, 0, 9))
    assert dataclasses.replace(stat, name="y") == Stat(name="y", qid=Qid(0x80, 0, 9))
    assert pickle.loads(pickle.dumps(stat)) == stat
    with pytest.raises(dataclasses.FrozenInstanceError):
        walk.fid = 5  # type: ignore[misc]
    assert not hasattr(stat, "__dict__")  # slots
