"""The codec against intro(5)/stat(5) byte layouts, round trips, and hostile bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ninep import codec
from ninep.codec import CodecError
from ninep.constants import NOTAG, MsgType
from ninep.messages import (
    Qid,
    Rattach,
    Rauth,
    Rclunk,
    Rcreate,
    Rerror,
    Rflush,
    Ropen,
    Rread,
    Rremove,
    Rstat,
    Rversion,
    Rwalk,
    Rwrite,
    Rwstat,
    Stat,
    Tattach,
    Tauth,
    Tclunk,
    Tcreate,
    Tflush,
    Topen,
    Tread,
    Tremove,
    Tstat,
    Tversion,
    Twalk,
    Twrite,
    Twstat,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
text = st.text(max_size=40).filter(lambda s: len(s.encode()) < 200)
qids = st.builds(Qid, u8, u32, u64)
stats = st.builds(Stat, u16, u32, qids, u32, u32, u32, u64, text, text, text, text)

messages = st.one_of(
    st.builds(Tversion, u16, u32, text),
    st.builds(Rversion, u16, u32, text),
    st.builds(Tauth, u16, u32, text, text),
    st.builds(Rauth, u16, qids),
    st.builds(Tattach, u16, u32, u32, text, text),
    st.builds(Rattach, u16, qids),
    st.builds(Rerror, u16, text),
    st.builds(Tflush, u16, u16),
    st.builds(Rflush, u16),
    st.builds(Twalk, u16, u32, u32, st.lists(text, max_size=16).map(tuple)),
    st.builds(Rwalk, u16, st.lists(qids, max_size=16).map(tuple)),
    st.builds(Topen, u16, u32, u8),
    st.builds(Ropen, u16, qids, u32),
    st.builds(Tcreate, u16, u32, text, u32, u8),
    st.builds(Rcreate, u16, qids, u32),
    st.builds(Tread, u16, u32, u64, u32),
    st.builds(Rread, u16, st.binary(max_size=300)),
    st.builds(Twrite, u16, u32, u64, st.binary(max_size=300)),
    st.builds(Rwrite, u16, u32),
    st.builds(Tclunk, u16, u32),
    st.builds(Rclunk, u16),
    st.builds(Tremove, u16, u32),
    st.builds(Rremove, u16),
    st.builds(Tstat, u16, u32),
    st.builds(Rstat, u16, stats),
    st.builds(Twstat, u16, u32, stats),
    st.builds(Rwstat, u16),
)


@given(messages)
def test_every_message_round_trips(msg):
    frame = codec.encode(msg)
    assert struct.unpack_from("<I", frame)[0] == len(frame)
    assert codec.decode(frame) == msg


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_decoding_random_bytes_raises_only_codec_error(data):
    try:
        codec.decode(data)
    except CodecError:
        pass


@settings(max_examples=1000)
@given(messages, st.data())
def test_decoding_corrupted_frames_raises_only_codec_error(msg, data):
    frame = bytearray(codec.encode(msg))
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] = data.draw(u8)
    cut = data.draw(st.integers(0, len(frame)))
    try:
        codec.decode(bytes(frame[:cut]))
    except CodecError:
        pass


def test_tversion_bytes_match_the_manual():
    # size[4] Tversion tag[2] msize[4] version[s]
    frame = codec.encode(Tversion(NOTAG, 8192, "9P2000"))
    assert frame == struct.pack("<IBHIH", 19, 100, 0xFFFF, 8192, 6) + b"9P2000"


def test_rstat_wraps_the_stat_entry_in_one_more_size():
    st_ = Stat(qid=Qid(0x80, 1, 2), mode=0o755 | 0x80000000, name="d", uid="u", gid="g", muid="m")
    entry = codec.encode_stat(st_)
    frame = codec.encode(Rstat(1, st_))
    body = frame[7:]
    (n,) = struct.unpack_from("<H", body)
    assert n == len(entry)
    assert struct.unpack_from("<H", body, 2)[0] == len(entry) - 2  # the entry's own size[2]
    assert body[2:] == entry


def test_twstat_wraps_the_stat_entry_in_one_more_size():
    frame = codec.encode(Twstat(1, 7, Stat.dont_touch(name="new")))
    (fid, n, size) = struct.unpack_from("<IHH", frame, 7)
    assert fid == 7 and n == size + 2


def test_an_rstat_without_the_wrapper_is_refused():
    entry = codec.encode_stat(Stat(name="x"))
    frame = struct.pack("<IBH", 7 + len(entry), MsgType.Rstat, 1) + entry
    with pytest.raises(CodecError):
        codec.decode(frame)


def test_stat_entry_is_49_bytes_plus_strings():
    assert len(codec.encode_stat(Stat())) == 2 + 2 + 4 + 13 + 4 + 4 + 4 + 8 + 4 * 2


def test_directory_data_decodes_into_entries():
    entries = [Stat(name=f"f{i}", length=i) for i in range(5)]
    data = b"".join(codec.encode_stat(e) for e in entries)
    assert codec.decode_stats(data) == entries


def test_stat_extension_fields_inside_the_entry_size_are_skipped():
    raw = bytearray(codec.encode_stat(Stat(name="x")))
    raw += b"\x00\x00"  # a 9P2000.u-style extra string (empty) inside the entry
    struct.pack_into("<H", raw, 0, len(raw) - 2)
    assert codec.decode_stats(bytes(raw))[0].name == "x"


@pytest.mark.parametrize(
    "frame, why",
    [
        (b"", "shorter than a 9P header"),
        (b"\x07\x00\x00\x00", "shorter than a 9P header"),
        (struct.pack("<IBH", 7, 106, 1), "unknown message type 106"),  # Terror is illegal
        (struct.pack("<IBH", 7, 200, 1), "unknown message type"),
        (struct.pack("<IBH", 8, 120, 1), "says 8 bytes"),
        (struct.pack("<IBHI", 11, 120, 1, 5) + b"x", "says 11 bytes"),
        (struct.pack("<IBHI", 12, 120, 1, 5) + b"x", "after the message"),
        (struct.pack("<IBHH", 11, 107, 1, 50) + b"ab", "overruns"),
        (struct.pack("<IBHH", 11, 107, 1, 2) + b"\xff\xfe", "not valid UTF-8"),
        (struct.pack("<IBHIIH", 19, 110, 1, 0, 1, 3) + b"\x00\x00", "overruns"),
        (struct.pack("<IBHIQI", 23, 118, 1, 0, 0, 1000), "overruns"),
    ],
)
def test_malformed_frames_are_codec_errors_naming_the_problem(frame, why):
    with pytest.raises(CodecError, match=why):
        codec.decode(frame)


def test_codec_error_keeps_the_tag_when_it_could_be_read():
    with pytest.raises(CodecError) as info:
        codec.decode(struct.pack("<IBH", 7, 200, 42))
    assert info.value.tag == 42


def test_encoding_a_string_longer_than_65535_bytes_is_an_error():
    with pytest.raises(CodecError):
        codec.encode(Rerror(1, "x" * 70000))


def test_encoding_an_out_of_range_field_is_an_error():
    with pytest.raises(CodecError):
        codec.encode(Tclunk(1, 1 << 40))


@given(messages | st.builds(Rread, u16, st.binary(min_size=70000, max_size=70010)))
def test_frames_sent_in_parts_are_the_same_frame(msg):
    assert b"".join(bytes(p) for p in codec.encode_parts(msg)) == codec.encode(msg)
