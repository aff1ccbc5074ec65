"""Host ranges, machines files and dshbak grouping (ninep.hostlist), issue #19.

Pure code, so the tests are fast; the interop ones check us against ClusterShell's NodeSet
and pdsh's real `dshbak -c`, implementations we did not write.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ninep.hostlist import (
    MAX_NAMES,
    Machine,
    expand,
    fold,
    format_group,
    group,
    label,
    natural_key,
    parse_machines,
    read_machines,
)

try:
    from ClusterShell.NodeSet import NodeSet, NodeSetParseError
except ImportError:  # the interop tests say why they skip
    NodeSet = None

needs_clustershell = pytest.mark.skipif(
    NodeSet is None,
    reason="ClusterShell is not installed (pip install ClusterShell): no NodeSet to compare with",
)
DSHBAK = shutil.which("dshbak")
needs_dshbak = pytest.mark.skipif(DSHBAK is None, reason="dshbak is not installed (apt-get install pdsh)")

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


# ---------------------------------------------------------------------------------------
# expand, fold, label


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("node[1-3,7]", ["node1", "node2", "node3", "node7"]),
        ("n[01-03]", ["n01", "n02", "n03"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[098-100]", ["n098", "n099", "n100"]),
        ("n[1-9/4]", ["n1", "n5", "n9"]),
        ("tcp!10.0.0.[1-2]!564,unix!/tmp/s", ["tcp!10.0.0.1!564", "tcp!10.0.0.2!564", "unix!/tmp/s"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("b,a,b,n[2,1-2]", ["b", "a", "n2", "n1"]),
        (" a , ,b ", ["a", "b"]),
        ("[::1]:564,tcp!fe80::1!564", ["[::1]:564", "tcp!fe80::1!564"]),
        ("", []),
    ],
)
def test_expand_spells_every_name_in_order(text: str, names: list[str]) -> None:
    assert expand(text) == names


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("a,node[3-1]", "node[3-1]: range goes backwards"),
        ("node[1-2", "node[1-2: '[' never closed"),
        ("a,node1-2],b", "node1-2]: ']' without '['"),
        ("n[1[2]]", "n[1[2]]: '[' inside brackets"),
        ("n[]", "n[]: empty group []"),
        ("n[1,,2]", "n[1,,2]: empty range"),
        ("n[a-b]", "n[a-b]: 'a-b' is not a number or a range a-b"),
        ("n[1-4/0]", "n[1-4/0]: step 0"),
        ("n[1-100001]", "n[1-100001]: more than 100,000 names"),
        ("a[1-1000]b[1-1000]", "a[1-1000]b[1-1000]: more than 100,000 names"),
        ("n[1-99999999999999999999999999]", "n[1-99999999999999999999999999]: more than 100,000 names"),
        ("a b", "a b: blank inside a host name"),
    ],
)
def test_a_bad_host_list_is_an_error_naming_the_word(text: str, error: str) -> None:
    with pytest.raises(ValueError) as e:
        expand(text)
    assert str(e.value) == error


def test_an_error_about_a_huge_word_stays_one_short_line() -> None:
    with pytest.raises(ValueError) as e:
        expand("[" * 100_000)
    assert len(str(e.value)) < 120
    with pytest.raises(ValueError) as e:
        expand("a\nb")
    assert str(e.value) == "'a\\nb': blank inside a host name"


def test_the_name_limit_counts_the_whole_list() -> None:
    assert len(expand(f"a[1-{MAX_NAMES}]")) == MAX_NAMES
    with pytest.raises(ValueError, match="more than 100,000 names"):
        expand(f"a[1-{MAX_NAMES}],b1")


@pytest.mark.parametrize(
    ("names", "folded"),
    [
        ("node1,node2,node3,node7", "node[1-3,7]"),
        ("node01,node02", "node[01-02]"),
        ("node08,node09,node10", "node[08-10]"),
        ("node9,node10", "node[9-10]"),
        ("node7", "node7"),
        ("b1,a2,a1,n1,node1,foo", "a[1-2],b1,foo,n1,node1"),
        ("node10,node2", "node[2,10]"),
        ("tcp!10.0.0.1!564,tcp!10.0.0.2!564", "tcp!10.0.0.[1-2]!564"),
        ("tcp!10.0.0.1!564,tcp!10.0.0.2!5640", "tcp!10.0.0.1!564,tcp!10.0.0.2!5640"),
        ("rack1-node1,rack1-node2,rack2-node1", "rack1-node[1-2],rack2-node1"),
        ("a1b1,a1b2,a2b1,a2b2", "a[1-2]b[1-2]"),
        ("rack10-n1,rack2-n1", "rack[2,10]-n1"),
        ("node1,node01", "node[1,01]"),
    ],
)
def test_fold_writes_names_as_ranges(names: str, folded: str) -> None:
    assert fold(names.split(",")) == folded


@pytest.mark.parametrize("name", ["a[1]", "a,b", "a b", ""])
def test_fold_refuses_a_name_no_host_list_can_hold(name: str) -> None:
    with pytest.raises(ValueError):
        fold(["ok", name])


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("tcp!node1!564", "node1"),
        ("tcp!10.231.3.2!5640", "10.231.3.2!5640"),
        ("tcp!node1", "node1"),
        ("unix!/run/n.sock", "unix!/run/n.sock"),
        ("node1:564", "node1:564"),
    ],
)
def test_a_label_drops_the_default_network_and_port(address: str, shown: str) -> None:
    assert label(address) == shown


# Names with a few numbers from a small space, so that ranges, padding and grids happen.
_number = st.builds(lambda n, width: str(n).zfill(width), st.integers(0, 40), st.sampled_from([0, 0, 2, 3]))
_text = st.text(alphabet="ab-.", max_size=3)


@st.composite
def _names(draw: st.DrawFn, text: st.SearchStrategy[str] = _text, numbers: int = 3) -> str:
    pieces = [draw(text)]
    for _ in range(draw(st.integers(0, numbers))):
        pieces += [draw(_number), draw(text)]
    name = "".join(pieces)
    assume(name)
    return name


_dial_text = st.text(alphabet="ab-.!:/", max_size=3)
_host_lists = st.lists(st.one_of(_names(), _names(_dial_text)), max_size=40)


@given(_host_lists)
def test_expanding_a_fold_gives_back_exactly_the_names(names: list[str]) -> None:
    again = expand(fold(names))
    assert len(again) == len(set(again))
    assert sorted(again, key=natural_key) == sorted(set(names), key=natural_key)


@given(_host_lists)
def test_a_folded_list_folds_to_itself(names: list[str]) -> None:
    folded = fold(names)
    assert fold(expand(folded)) == folded


@given(_text, st.lists(st.integers(0, 200), max_size=40))
def test_a_folded_range_expands_in_natural_order(prefix: str, numbers: list[int]) -> None:
    names = [f"{prefix}{n}" for n in numbers]
    assert expand(fold(names)) == sorted(set(names), key=natural_key)


_hostile = st.one_of(st.text(), st.text(alphabet="a0123456789[],-/ !", max_size=40))


@given(_hostile)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_any_text_as_a_host_list_is_names_or_a_value_error(text: str) -> None:
    try:
        names = expand(text)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    assert len(names) <= MAX_NAMES
    if names:
        assert sorted(expand(fold(names)), key=natural_key) == sorted(names, key=natural_key)


@given(st.lists(st.text(), max_size=10))
def test_any_names_fold_or_are_a_value_error(names: list[str]) -> None:
    try:
        folded = fold(names)
    except ValueError:
        return
    assert sorted(expand(folded), key=natural_key) == sorted(set(names), key=natural_key)


@given(st.text(alphabet=st.sampled_from(list("ab1[]-,# \n!x/")), max_size=60))
def test_any_text_as_a_machines_file_is_machines_or_a_value_error(text: str) -> None:
    try:
        machines = parse_machines(text, "m")
    except ValueError as e:
        assert str(e).startswith("m:")
        return
    assert len({m.name for m in machines}) == len(machines)


# ---------------------------------------------------------------------------------------
# ClusterShell's NodeSet (not ours) on the same lists


@st.composite
def _range_lists(draw: st.DrawFn) -> str:
    """Host lists in the syntax both accept: no `!` (an operator to NodeSet), and padded
    ranges whose ends have one width (NodeSet refuses `[01-100]`, pdsh takes it)."""
    words = []
    for _ in range(draw(st.integers(1, 4))):
        word = draw(st.text(alphabet="ab-", max_size=3))
        for _ in range(draw(st.integers(0, 2))):
            elements = []
            for _ in range(draw(st.integers(1, 3))):
                width = draw(st.sampled_from([0, 2, 3]))
                first = draw(st.integers(0, 30))
                last = draw(st.integers(first, 40))
                a, b = str(first).zfill(width), str(last).zfill(width)
                assume(len(a) == len(b) or not width)
                elements.append(a if first == last else f"{a}-{b}")
            word += "[" + ",".join(elements) + "]" + draw(st.text(alphabet="ab-", max_size=2))
        assume(word)
        words.append(word)
    return ",".join(words)


@needs_clustershell
@given(_range_lists())
def test_expand_names_what_clustershell_names(text: str) -> None:
    try:
        theirs = list(NodeSet(text))
    except NodeSetParseError:
        assume(False)
    assert sorted(expand(text)) == sorted(theirs)


@needs_clustershell
@given(st.text(alphabet="ab-0123[],", max_size=30))
def test_what_clustershell_expands_we_expand_the_same(text: str) -> None:
    # NodeSet reads `[]0` as `0` (and refuses `a[]`); an empty group is an error to us.
    assume("[]" not in text)
    # NodeSet takes negative numbers (`a[-3]` is a-3, `a[1-2-3]` is a-2 to a3); we do not.
    elements = [e for body in re.findall(r"\[([^\[\]]*)\]", text) for e in body.split(",")]
    assume(not any(e.startswith("-") or e.count("-") > 1 for e in elements))
    # NodeSet reads `[,]0` as `0`; an empty element is an error to us.
    assume("" not in elements)
    # NodeSet joins digits before a group to its numbers: `1[0-10]` is 10 to 110, 101 names;
    # to us (and to pdsh) it is 1 followed by each of 0..10, 11 names.
    assume(not re.search(r"[0-9]\[", text))
    try:
        theirs = list(NodeSet(text))
    except (NodeSetParseError, ValueError):  # NodeSet 1.10 raises a bare ValueError on `[--[0]`
        assume(False)
    assert sorted(expand(text)) == sorted(theirs)


_cs_names = st.lists(_names(st.text(alphabet="ab-", max_size=3)), min_size=1, max_size=40)


@needs_clustershell
@given(_cs_names)
def test_fold_writes_what_clustershell_writes(names: list[str]) -> None:
    assert _items(fold(names)) == _items(str(NodeSet.fromlist(names)))


def _items(folded: str) -> list[str]:
    """The items of a folded list, sorted: NodeSet orders items by their text first
    (`1,0a`), we in natural order (`0a,1`, as `sort -V`); the items themselves agree."""
    return sorted(re.split(r",(?![^\[]*\])", folded))


@needs_clustershell
@given(
    st.lists(
        st.builds(str.__add__, _text, st.one_of(st.just(""), _number)).filter(bool), min_size=1, max_size=40
    )
)
def test_fold_orders_names_as_clustershell_when_numbers_end_them(names: list[str]) -> None:
    assert fold(names) == str(NodeSet.fromlist(names))


@needs_clustershell
@given(_range_lists())
def test_fold_of_a_clustershell_range_is_clustershell_fold(text: str) -> None:
    try:
        theirs = NodeSet(text)
    except NodeSetParseError:
        assume(False)
    assert _items(fold(expand(text))) == _items(str(theirs))


# ---------------------------------------------------------------------------------------
# group and format_group, against pdsh's real dshbak -c


@dataclass(frozen=True, slots=True)
class _Result:
    status: int
    lines: list[str]  # unhashable, as results with output lists are


def test_group_puts_equal_results_together_in_natural_order() -> None:
    results = {"n10": "b", "n2": "a", "n1": "b", "n3": "a"}
    assert group(results) == [(["n1", "n10"], "b"), (["n2", "n3"], "a")]


def test_group_compares_unhashable_results_by_equality() -> None:
    results = {"n2": _Result(0, ["x"]), "n1": _Result(1, ["x"]), "n3": _Result(0, ["x"])}
    assert group(results) == [(["n1"], _Result(1, ["x"])), (["n2", "n3"], _Result(0, ["x"]))]


def test_format_group_prints_dshbaks_header() -> None:
    assert format_group(["n2", "n1", "n3"], "up\ndown") == (
        "----------------\nn[1-3]\n----------------\nup\ndown\n"
    )


def _dshbak(results: dict[str, str]) -> str:
    """What `dshbak -c` prints for pdsh output of these hosts (`host: line` each)."""
    assert DSHBAK is not None
    lines = [f"{host}: {line}\n" for host, body in results.items() for line in body.splitlines()]
    done = subprocess.run(
        [DSHBAK, "-c"], input="".join(lines), capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


_bodies = st.lists(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=12),
    min_size=1,
    max_size=3,
).map(lambda lines: "".join(f"{line}\n" for line in lines))  # whole lines, as programs print


@st.composite
def _pdsh_results(draw: st.DrawFn) -> dict[str, str]:
    """Hosts of one prefix with distinct numbers: dshbak orders hosts by their trailing
    number alone and breaks ties in Perl's hash order, so only then is its order defined."""
    prefix = draw(st.sampled_from(["node", "10.0.0.", "rack-a"]))
    width = draw(st.sampled_from([0, 2]))
    numbers = draw(st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True))
    outputs = draw(st.lists(_bodies, min_size=1, max_size=3))
    return {f"{prefix}{str(n).zfill(width)}": draw(st.sampled_from(outputs)) for n in numbers}


@needs_dshbak
@settings(max_examples=60, deadline=None)
@given(_pdsh_results())
def test_format_group_prints_what_dshbak_c_prints(results: dict[str, str]) -> None:
    # A host that printed nothing has no `host:` line, so dshbak cannot show it.
    ours = "".join(format_group(hosts, body) for hosts, body in group(results) if body)
    assert ours == _dshbak(results)


@needs_dshbak
def test_dshbak_and_we_agree_on_a_rack() -> None:
    results = {f"node{n:02d}": "Linux 6.1\n" for n in range(1, 17)}
    results["node07"] = "Linux 5.10\n"
    ours = "".join(format_group(hosts, body) for hosts, body in group(results))
    assert ours == _dshbak(results)
    assert ours.splitlines()[1] == "node[01-06,08-16]"
