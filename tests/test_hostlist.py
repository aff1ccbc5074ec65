"""Host ranges, machines files and dshbak grouping (ninep.hostlist), issue #19.

Pure code, so the tests are fast; the interop ones check us against ClusterShell's NodeSet
and pdsh's real `dshbak -c`, implementations we did not write.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ninep.hostlist import Machine, parse_machines, read_machines

# ---------------------------------------------------------------------------------------
# machines files


def test_a_machines_file_names_each_machine_at_its_address() -> None:
    text = "# the rack\n\nalpha tcp!10.0.0.1!564\nbeta  unix!/run/beta.sock   # local\n"
    assert parse_machines(text, "m") == [
        Machine("alpha", "tcp!10.0.0.1!564"),
        Machine("beta", "unix!/run/beta.sock"),
    ]


def test_a_ranged_line_expands_name_and_address_in_step() -> None:
    machines = parse_machines("node[1-16] tcp!10.0.0.[1-16]!564\n", "m")
    assert len(machines) == 16
    assert machines[0] == Machine("node1", "tcp!10.0.0.1!564")
    assert machines[15] == Machine("node16", "tcp!10.0.0.16!564")


def test_a_line_with_only_an_address_is_named_by_its_label() -> None:
    machines = parse_machines("tcp!10.0.0.[1-2]!564\ntcp!gw!5640\nhost:99\n", "m")
    assert [m.name for m in machines] == ["10.0.0.1", "10.0.0.2", "gw!5640", "host:99"]
    assert machines[2].address == "tcp!gw!5640"


def test_a_hash_inside_a_word_is_not_a_comment() -> None:
    assert parse_machines("a#1 tcp!h!564 #gone\n", "m") == [Machine("a#1", "tcp!h!564")]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "node[1-2] tcp!10.0.0.[1-3]!564\n",
            "m:1: node[1-2] is 2 names but tcp!10.0.0.[1-3]!564 is 3 addresses",
        ),
        ("a tcp!h!564\n\nb x\na tcp!i!564\n", "m:4: a is already named on line 1"),
        ("n[1-2] x[1-2]\nn2 y\n", "m:2: n2 is already named on line 1"),
        ("a b c\n", "m:1: expected NAME ADDRESS, found 3 words"),
        ("ok x\nnode[3-1] x[1-3]\n", "m:2: node[3-1]: range goes backwards"),
        ("node[1-2 x\n", "m:1: node[1-2: '[' never closed"),
        ("../etc x\n", "m:1: ../etc: a machine name cannot be a path"),
    ],
)
def test_a_bad_machines_file_names_the_file_and_line(text: str, error: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_machines(text, "m")
    assert str(e.value) == error


def test_read_machines_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "machines"
    path.write_text("n[1-2] unix!/tmp/n[1-2]\n")
    assert read_machines(str(path)) == [Machine("n1", "unix!/tmp/n1"), Machine("n2", "unix!/tmp/n2")]


def test_a_missing_machines_file_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"^.*/nope: No such file or directory$"):
        read_machines(missing)
    with pytest.raises(ValueError, match=r": Is a directory$"):
        read_machines(str(tmp_path))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"binary: not UTF-8 text$"):
        read_machines(str(binary))
