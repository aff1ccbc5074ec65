"""The RAM tree's file contents (fileserver.pieces) against a plain bytearray."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fileserver.pieces import BIG, Pieces

sizes = st.sampled_from([0, 1, 7, BIG - 1, BIG, BIG + 3, 3 * BIG])
offsets = st.integers(min_value=0, max_value=5 * BIG)
op = st.one_of(
    st.tuples(st.just("write"), offsets, sizes, st.sampled_from(["bytes", "view", "bytearray"])),
    st.tuples(st.just("append"), sizes, st.sampled_from(["bytes", "view", "bytearray"])),
    st.tuples(st.just("truncate"), offsets),
    st.tuples(st.just("read"), offsets, sizes),
)


def _data(n: int, kind: str, seed: int) -> bytes | bytearray | memoryview:
    raw = bytes((seed + i) % 251 for i in range(n))
    if kind == "view":
        return memoryview(bytearray(raw)).toreadonly()
    return bytearray(raw) if kind == "bytearray" else raw


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=25))
def test_pieces_behave_like_a_bytearray(ops: list[tuple]) -> None:
    model, pieces, held = bytearray(), Pieces(), []
    for seed, (name, *args) in enumerate(ops):
        if name in ("write", "append"):
            offset = len(model) if name == "append" else args[0]
            n, kind = args[-2], args[-1]
            data = _data(n, kind, seed)
            if offset > len(model) and n:  # like write(2): writing nothing changes nothing
                model.extend(bytes(offset - len(model)))
            model[offset : offset + n] = data
            pieces.write(offset, data)
            if isinstance(data, bytearray):
                data[:] = b"\xff" * n  # the caller reuses its buffer: the file must not change
        elif name == "truncate":
            del model[args[0] :]
            model.extend(bytes(args[0] - len(model)))
            pieces.truncate(args[0])
        else:
            offset, n = args
            got = pieces.read(offset, n)
            assert bytes(got) == bytes(model[offset : offset + n])
            held.append((bytes(got), got))  # what was read stays as it was read
        assert len(pieces) == len(model)
    assert bytes(pieces.read(0, len(model) + 1)) == bytes(model)
    for snapshot, view in held:
        assert bytes(view) == snapshot
