"""The codec's fast paths (whole-frame packs and one-go decodes) against its tables:
the same bytes, the same messages and the same errors, for good frames and hostile ones."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ninep import codec
from ninep.codec import CodecError
from ninep.messages import Qid, Rstat, Rwalk, Stat, Tclunk, Twalk

from .test_codec import messages, u8


def _outcome(fn, *args):
    """What `fn(*args)` gives: ("ok", value) or (exception type, its message)."""
    try:
        return "ok", fn(*args)
    except Exception as e:  # compared, whatever it is
        return type(e), str(e), getattr(e, "tag", None)


def _tables_only(monkeypatch, fn, *args):
    with monkeypatch.context() as m:
        m.setattr(codec, "_FAST", {})
        m.setattr(codec, "_WHOLE", {})
        return _outcome(fn, *args)


@settings(max_examples=1500)
@given(messages)
def test_fast_encoding_gives_the_tables_bytes(msg):
    with pytest.MonkeyPatch.context() as mp:
        assert _outcome(codec.encode, msg) == _tables_only(mp, codec.encode, msg)


@settings(max_examples=1500)
@given(messages, st.data())
def test_fast_decoding_agrees_with_the_tables_on_corrupted_frames(msg, data):
    frame = bytearray(codec.encode(msg))
    for _ in range(data.draw(st.integers(0, 2))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(u8)
    cut = data.draw(st.integers(0, len(frame)))
    kind = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
    frame = kind(bytes(frame[:cut]))
    with pytest.MonkeyPatch.context() as mp:
        assert _outcome(codec.decode, frame) == _tables_only(mp, codec.decode, frame)


@pytest.mark.parametrize(
    "msg",
    [
        Tclunk(1, 1 << 40),
        Tclunk(1 << 20, 1),
        Twalk(1 << 20, 1 << 40, 2, ("a",)),
        Twalk(1, 1, 2, ("\udcff",)),
        Rwalk(1, (Qid(0x100, 0, 0),)),
        Rstat(1, Stat(name="x" * 70000)),
        Rstat(1 << 17, Stat(type=1 << 17)),
    ],
)
def test_unencodable_messages_fail_as_they_always_did(msg, monkeypatch):
    got = _outcome(codec.encode, msg)
    assert got[0] is CodecError
    assert got == _tables_only(monkeypatch, codec.encode, msg)
