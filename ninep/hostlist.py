"""Host ranges, machines files and dshbak-style grouping for running one command on many
machines (`ninefs cpu -w`, issue #19).

Pure code: nothing here dials or awaits; `read_machines` is the only function that reads a
file. It sits in `ninep` because the library's `run_all` and the command line both need it.

- `expand` and `fold` spell host lists as pdsh and ClusterShell do: `node[1-16]`,
  `tcp!10.0.0.[1-16]!564`, `rack[1-2]-node[01-04]`.
- `parse_machines` reads a machines file: `NAME ADDRESS` a line, ranges expanded in step.
- `group` and `format_group` print identical results once, under the header `dshbak -c`
  prints (pdsh 2.34's dshbak, checked against /usr/bin/dshbak in tests/test_hostlist.py).

Where the three disagree, and what we do:
- Folding is NodeSet's (ClusterShell 1.10), items compared in the tests: several numbers
  fold into a grid (`a[1-2]b[1-2]`); dshbak folds only a name's last number. A padded run
  stops where the width changes (`node[01-99,100]`, as NodeSet, which refuses
  `[01-100]`); dshbak writes `node[01-100]`. `expand` takes both spellings.
- Items come in natural order (`0a,1`, as `sort -V`); NodeSet sorts them by their text
  first (`1,0a`). For names that end in their number the two agree.
- `1[0-10]` is 1 followed by each of 0..10, as pdsh reads it; NodeSet reads 10 to 110.
  NodeSet's negative numbers (`a[-3]`) are an error here.
- The header's divider is dshbak's sixteen dashes, whatever the host list's width.
- A bracket group holding `:` is an IPv6 literal (`[::1]:564`), never a range.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "MAX_NAMES",
    "Machine",
    "expand",
    "fold",
    "format_group",
    "group",
    "label",
    "natural_key",
    "parse_machines",
    "read_machines",
]

# One host list never names more machines than this: `node[1-999999999]` is a typo, and
# expanding it would eat the memory before any host is dialled.
MAX_NAMES = 100_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Machine:
    """One line (or one name of a ranged line) of a machines file."""

    name: str
    address: str


# ---------------------------------------------------------------------------------------
# expand


# ASCII digits only: `\d` would take "٣" for 3 and fold it back as "3". A number is at most
# 64 digits (far past any host's), so no int() ever meets Python's 4300-digit limit.
_ELEMENT = re.compile(r"([0-9]{1,64})(?:-([0-9]{1,64})(?:/([0-9]{1,64}))?)?")
_NUMBER = re.compile(r"([0-9]{1,64})")


def _shown(word: str) -> str:
    """A word as an error shows it: quoted when it holds a newline or a control, and cut
    short when it is long (the error is one line, not the megabyte a typo pasted)."""
    if len(word) > 80:
        word = word[:77] + "..."
    return word if word.isprintable() and word else repr(word)


def _words(text: str) -> list[str]:
    """Split on commas outside brackets, so `n[1,3],m2` is two words."""
    words: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            if depth:
                raise ValueError(f"{_shown(_word_at(text, start))}: '[' inside brackets")
            depth = 1
        elif ch == "]":
            if not depth:
                raise ValueError(f"{_shown(_word_at(text, start))}: ']' without '['")
            depth = 0
        elif ch == "," and not depth:
            words.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"{_shown(text[start:].strip())}: '[' never closed")
    words.append(text[start:])
    return [w.strip() for w in words if w.strip()]


def _word_at(text: str, start: int) -> str:
    """The word starting at `start`, up to the next comma outside brackets (for errors)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth = max(depth - 1, 0)
        elif text[i] == "," and not depth:
            return text[start:i].strip()
    return text[start:].strip()


def _group_size(word: str, body: str) -> list[tuple[int, int, int, int]]:
    """Parse `1,3-5,08-10/2` into (first, last, step, width) runs, checking each."""
    if not body:
        raise ValueError(f"{_shown(word)}: empty group []")
    runs: list[tuple[int, int, int, int]] = []
    for element in body.split(","):
        m = _ELEMENT.fullmatch(element)
        if m is None:
            what = "empty range" if not element else f"{element!r} is not a number or a range a-b"
            raise ValueError(f"{_shown(word)}: {what}")
        first_s, last_s, step_s = m.groups()
        first = int(first_s)
        last = first if last_s is None else int(last_s)
        step = 1 if step_s is None else int(step_s)
        if last < first:
            raise ValueError(f"{_shown(word)}: range goes backwards")
        if step == 0:
            raise ValueError(f"{_shown(word)}: step 0")
        # pdsh and ClusterShell: a leading zero on the first number fixes the width.
        width = len(first_s) if first_s.startswith("0") and len(first_s) > 1 else 0
        runs.append((first, last, step, width))
    return runs


def _parts(word: str) -> list[str | list[tuple[int, int, int, int]]]:
    """A word as literal text and range groups, left to right."""
    parts: list[str | list[tuple[int, int, int, int]]] = []
    for i, piece in enumerate(re.split(r"\[([^\[\]]*)\]", word)):
        if i % 2 == 0:
            if piece:
                parts.append(piece)
        elif ":" in piece:
            # An IPv6 literal (`[::1]:564`), never a range: no range holds a colon.
            parts.append(f"[{piece}]")
        else:
            parts.append(_group_size(word, piece))
    return parts


def _count(runs: list[tuple[int, int, int, int]]) -> int:
    return sum((last - first) // step + 1 for first, last, step, _ in runs)


def expand(text: str) -> list[str]:
    """Every name `text` spells, in order, duplicates dropped (the first one stays).

    `node[1-3,7],tcp!10.0.0.[1-2]!564` is node1 node2 node3 node7 tcp!10.0.0.1!564
    tcp!10.0.0.2!564. Several groups in one word are a cartesian product, the leftmost
    varying slowest. Raises ValueError naming the word for a malformed list or more
    than MAX_NAMES names (counted before any is made).
    """
    names: dict[str, None] = {}
    total = 0
    for word in _words(text):
        if any(ch.isspace() for ch in word):
            raise ValueError(f"{_shown(word)}: blank inside a host name")
        parts = _parts(word)
        count = 1
        for part in parts:
            if not isinstance(part, str):
                count *= _count(part)
        total += count
        if total > MAX_NAMES:
            raise ValueError(f"{_shown(word)}: more than {MAX_NAMES:,} names")
        choices: list[list[str]] = []
        for part in parts:
            if isinstance(part, str):
                choices.append([part])
            else:
                choices.append(
                    [
                        str(n).zfill(width)
                        for first, last, step, width in part
                        for n in range(first, last + 1, step)
                    ]
                )
        for combination in itertools.product(*choices):
            names.setdefault("".join(combination), None)
    return list(names)


def label(address: str) -> str:
    """How a host is shown when no machines file names it: `tcp!node1!564` is `node1`."""
    return address.removeprefix("tcp!").removesuffix("!564") or address


# ---------------------------------------------------------------------------------------
# machines files


def parse_machines(text: str, filename: str) -> list[Machine]:
    """The machines a machines file names, in file order.

    A line is `NAME ADDRESS` or just `ADDRESS` (named by its `label`); a word starting
    with `#` starts a comment. `node[1-16] tcp!10.0.0.[1-16]!564` is sixteen machines,
    node1 at 10.0.0.1 and so on: both sides must expand to the same count. Errors are
    ValueError("FILE:LINE: what is wrong"); a name given twice is one.
    """
    machines: list[Machine] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        for i, word in enumerate(words):
            if word.startswith("#"):
                del words[i:]
                break
        if not words:
            continue
        where = f"{filename}:{number}"
        if len(words) > 2:
            raise ValueError(f"{where}: expected NAME ADDRESS, found {len(words)} words")
        try:
            addresses = expand(words[-1])
            names = expand(words[0]) if len(words) == 2 else [label(a) for a in addresses]
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if len(names) != len(addresses):
            raise ValueError(
                f"{where}: {words[0]} is {len(names)} names but {words[1]} is {len(addresses)} addresses"
            )
        for name, address in zip(names, addresses, strict=True):
            # A name is a directory under --outdir; a label of unix!/path is left to the caller.
            if len(words) == 2 and ("/" in name or name in (".", "..")):
                raise ValueError(f"{where}: {_shown(name)}: a machine name cannot be a path")
            if name in seen:
                raise ValueError(f"{where}: {_shown(name)} is already named on line {seen[name]}")
            seen[name] = number
            machines.append(Machine(name, address))
        if len(machines) > MAX_NAMES:
            raise ValueError(f"{where}: more than {MAX_NAMES:,} machines")
    return machines


def read_machines(path: str) -> list[Machine]:
    """`parse_machines` of the file at `path`; an unreadable file is a ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    return parse_machines(text, path)


# ---------------------------------------------------------------------------------------
# fold


def natural_key(name: str) -> tuple[str | tuple[int, int], ...]:
    """Sort key putting node2 before node10 (and node1 before node01)."""
    pieces = _NUMBER.split(name)
    return tuple(p if i % 2 == 0 else (int(p), len(p)) for i, p in enumerate(pieces))


def _ranges(values: Iterable[str]) -> str:
    """`1,2,3,7` as `1-3,7`, each run keeping one width (`08,09,10` is `08-10`).

    A number with a leading zero has its width; one without joins that width when its
    length matches, so 10 continues 08-09 but 100 does not (dshbak and ClusterShell agree).
    """
    values = set(values)
    padded = {len(v) for v in values if v.startswith("0") and len(v) > 1}
    classes: dict[int, list[int]] = {}
    for v in values:
        width = len(v) if len(v) in padded else 0
        classes.setdefault(width, []).append(int(v))
    runs: list[tuple[int, int, int]] = []
    for width, numbers in classes.items():
        numbers.sort()
        first = prev = numbers[0]
        for n in numbers[1:]:
            if n != prev + 1:
                runs.append((first, prev, width))
                first = n
            prev = n
        runs.append((first, prev, width))
    # NodeSet's order: by the length of a run's first number, then its value
    # (`[1-2,01-02]`, `[0,00,100]`); natural order when no number is padded.
    runs.sort(key=lambda r: (len(str(r[0]).zfill(r[2])), r[0]))
    spelled = []
    for first, last, width in runs:
        a, b = str(first).zfill(width), str(last).zfill(width)
        spelled.append(a if first == last else f"{a}-{b}")
    return ",".join(spelled)


def fold(names: Iterable[str]) -> str:
    """The shortest-ish host list `expand` turns back into `names` (as a set), as
    ClusterShell's NodeSet folds: node1,node2,node3,node7 is `node[1-3,7]`.

    Names alike but for their numbers fold on the numbers that vary: the last one first,
    then each one before it over the items that agree everywhere else, so
    tcp!10.0.0.1!564,tcp!10.0.0.2!564 is `tcp!10.0.0.[1-2]!564` and a 2x2 grid is
    `a[1-2]b[1-2]`. Items come in natural order. A name holding `[`, `]`, `,` or a
    blank could not be expanded again: ValueError.
    """
    shapes: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for name in dict.fromkeys(names):
        if not name or any(ch in "[]," or ch.isspace() for ch in name):
            raise ValueError(f"{_shown(name)}: not a host name a host list can hold")
        pieces = _NUMBER.split(name)
        shapes.setdefault(tuple(pieces[0::2]), []).append(tuple(pieces[1::2]))
    items: list[tuple[tuple[str | tuple[int, int], ...], str]] = []
    for text, numbers in shapes.items():
        for sets in _fold_shape(numbers):
            spelled = [text[0]]
            for i, values in enumerate(sets):
                only = next(iter(values)) if len(values) == 1 else None
                spelled.append(only if only is not None else f"[{_ranges(values)}]")
                spelled.append(text[i + 1])
            first = _smallest(text, sets)
            items.append((natural_key(first), "".join(spelled)))
    items.sort()
    return ",".join(item for _, item in items)


def _smallest(text: tuple[str, ...], sets: tuple[frozenset[str], ...]) -> str:
    """The first name of an item in natural order (items sort by it)."""
    smallest = [min(values, key=lambda v: (int(v), len(v))) for values in sets]
    return "".join(itertools.chain.from_iterable(zip(text, [*smallest, ""], strict=True)))


def _fold_shape(numbers: list[tuple[str, ...]]) -> list[tuple[frozenset[str], ...]]:
    """Merge names of one shape (same text between numbers) into cartesian items.

    One pass per number position, last to first: items that agree on every other
    position merge, their values at this one united. A merge only ever unites items whose
    other sets are equal, so the product of an item is exactly the names merged into it.
    """
    items: list[tuple[frozenset[str], ...]] = [tuple(frozenset([v]) for v in n) for n in numbers]
    for position in reversed(range(len(numbers[0]))):
        merged: dict[tuple[frozenset[str], ...], set[str]] = {}
        for item in items:
            rest = item[:position] + item[position + 1 :]
            merged.setdefault(rest, set()).update(item[position])
        items = [(*rest[:position], frozenset(values), *rest[position:]) for rest, values in merged.items()]
    return items


# ---------------------------------------------------------------------------------------
# dshbak -c


def group(results: Mapping[str, T]) -> list[tuple[list[str], T]]:
    """Hosts whose results are equal, together: each group's hosts in natural order,
    the groups in the natural order of their first host (as `dshbak -c` orders them)."""
    groups: list[tuple[list[str], T]] = []
    by_value: dict[object, int] = {}
    for host in sorted(results, key=natural_key):
        value = results[host]
        try:
            index = by_value.setdefault(value, len(groups))
        except TypeError:  # unhashable (a list, a dataclass holding one): compare each
            index = next((i for i, (_, v) in enumerate(groups) if v == value), len(groups))
        if index == len(groups):
            groups.append(([host], value))
        else:
            groups[index][0].append(host)
    return groups


# pdsh's dshbak prints sixteen dashes whatever the width of the host list
# (`print_header` in dshbak; ClusterShell's clubak prints fifteen).
_DIVIDER = "-" * 16


def format_group(hosts: list[str], body: str) -> str:
    """One group as `dshbak -c` prints it: divider, folded host list, divider, body.

    The body's last line gets its newline if it lacks one; an empty body is the header
    alone (dshbak never shows a host that printed nothing, a caller may).
    """
    if body and not body.endswith("\n"):
        body += "\n"
    return f"{_DIVIDER}\n{fold(hosts)}\n{_DIVIDER}\n{body}"
