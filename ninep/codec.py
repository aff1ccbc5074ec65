"""The 9P2000 wire codec: pure functions from messages to bytes and back.

No I/O and no trio here (the sans-I/O pattern of h11): the transport hands us
whole frames, we hand back values. Every malformed frame raises `CodecError`,
never anything else, so a server can answer it and carry on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .constants import MsgType
from .messages import (
    Message,
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

__all__ = [
    "HEADER",
    "CodecError",
    "decode",
    "decode_stat",
    "decode_stats",
    "encode",
    "encode_parts",
    "encode_stat",
    "frame_tag",
]


class CodecError(ValueError):
    """A frame that is not a well-formed 9P2000 message."""

    def __init__(self, message: str, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag  # the frame's tag when it could be read, so an Rerror can answer it


HEADER = struct.Struct("<IBH")  # size[4] type[1] tag[2]
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_QID = struct.Struct("<BIQ")
_STAT_FIXED = struct.Struct("<HHIBIQIIIQ")  # size type dev qid mode atime mtime length
_IO = struct.Struct("<IQI")  # fid offset count (Tread, Twrite)
_U32_U32 = struct.Struct("<II")
_QID_U32 = struct.Struct("<BIQI")
_U32_U8 = struct.Struct("<IB")


# --- encoding ---------------------------------------------------------------


def _s(value: str) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError(f"string {value!r} is not valid UTF-8") from None
    if len(raw) > 0xFFFF:
        raise CodecError(f"string of {len(raw)} bytes is longer than 65535")
    return _U16.pack(len(raw)) + raw


def _qid(q: Qid) -> bytes:
    return _QID.pack(q.type, q.vers, q.path)


def encode_stat(st: Stat) -> bytes:
    """One stat entry, starting with its own size[2] (as in a directory read)."""
    strings = _s(st.name) + _s(st.uid) + _s(st.gid) + _s(st.muid)
    size = _STAT_FIXED.size - 2 + len(strings)
    if size > 0xFFFF:
        raise CodecError("stat entry longer than 65535 bytes")
    q = st.qid
    return (
        _STAT_FIXED.pack(
            size, st.type, st.dev, q.type, q.vers, q.path, st.mode, st.atime, st.mtime, st.length
        )
        + strings
    )


def _frame(mtype: int, tag: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), mtype, tag) + body


def _wstat_body(st: Stat) -> bytes:
    entry = encode_stat(st)
    return _U16.pack(len(entry)) + entry  # stat(5): Rstat/Twstat wrap the entry in n[2]


_ENCODERS: dict[type, tuple[int, Callable[..., bytes]]] = {
    Tversion: (MsgType.Tversion, lambda m: _U32.pack(m.msize) + _s(m.version)),
    Rversion: (MsgType.Rversion, lambda m: _U32.pack(m.msize) + _s(m.version)),
    Tauth: (MsgType.Tauth, lambda m: _U32.pack(m.afid) + _s(m.uname) + _s(m.aname)),
    Rauth: (MsgType.Rauth, lambda m: _qid(m.aqid)),
    Tattach: (
        MsgType.Tattach,
        lambda m: _U32_U32.pack(m.fid, m.afid) + _s(m.uname) + _s(m.aname),
    ),
    Rattach: (MsgType.Rattach, lambda m: _qid(m.qid)),
    Rerror: (MsgType.Rerror, lambda m: _s(m.ename)),
    Tflush: (MsgType.Tflush, lambda m: _U16.pack(m.oldtag)),
    Rflush: (MsgType.Rflush, lambda m: b""),
    Twalk: (
        MsgType.Twalk,
        lambda m: (
            _U32_U32.pack(m.fid, m.newfid) + _U16.pack(len(m.wnames)) + b"".join(_s(n) for n in m.wnames)
        ),
    ),
    Rwalk: (MsgType.Rwalk, lambda m: _U16.pack(len(m.qids)) + b"".join(_qid(q) for q in m.qids)),
    Topen: (MsgType.Topen, lambda m: _U32_U8.pack(m.fid, m.mode)),
    Ropen: (MsgType.Ropen, lambda m: _QID_U32.pack(m.qid.type, m.qid.vers, m.qid.path, m.iounit)),
    Tcreate: (
        MsgType.Tcreate,
        lambda m: _U32.pack(m.fid) + _s(m.name) + _U32_U8.pack(m.perm, m.mode),
    ),
    Rcreate: (
        MsgType.Rcreate,
        lambda m: _QID_U32.pack(m.qid.type, m.qid.vers, m.qid.path, m.iounit),
    ),
    Tread: (MsgType.Tread, lambda m: _IO.pack(m.fid, m.offset, m.count)),
    Rread: (MsgType.Rread, lambda m: _U32.pack(len(m.data)) + m.data),
    Twrite: (MsgType.Twrite, lambda m: _IO.pack(m.fid, m.offset, len(m.data)) + m.data),
    Rwrite: (MsgType.Rwrite, lambda m: _U32.pack(m.count)),
    Tclunk: (MsgType.Tclunk, lambda m: _U32.pack(m.fid)),
    Rclunk: (MsgType.Rclunk, lambda m: b""),
    Tremove: (MsgType.Tremove, lambda m: _U32.pack(m.fid)),
    Rremove: (MsgType.Rremove, lambda m: b""),
    Tstat: (MsgType.Tstat, lambda m: _U32.pack(m.fid)),
    Rstat: (MsgType.Rstat, lambda m: _wstat_body(m.stat)),
    Twstat: (MsgType.Twstat, lambda m: _U32.pack(m.fid) + _wstat_body(m.stat)),
    Rwstat: (MsgType.Rwstat, lambda m: b""),
}


BIG = 1 << 16  # data at least this long is sent beside its header, not copied after it


def encode_parts(msg: Message) -> tuple[bytes, ...]:
    """The frame as pieces to send one after another: for an Rread or Twrite with big
    data, its header and the data itself (no copy of the data); otherwise one piece."""
    t = type(msg)
    if t is Rread and len(msg.data) >= BIG:  # type: ignore[attr-defined]
        data = msg.data  # type: ignore[attr-defined]
        return HEADER.pack(11 + len(data), MsgType.Rread, msg.tag) + _U32.pack(len(data)), data
    if t is Twrite and len(msg.data) >= BIG:  # type: ignore[attr-defined]
        m: Twrite = msg  # type: ignore[assignment]
        n = len(m.data)
        return HEADER.pack(23 + n, MsgType.Twrite, m.tag) + _IO.pack(m.fid, m.offset, n), m.data
    return (encode(msg),)


def encode(msg: Message) -> bytes:
    """The whole frame for `msg`, size prefix included."""
    t = type(msg)
    if t is Rread:  # the hot paths: one copy of the data, no table
        data = msg.data
        return b"".join((HEADER.pack(11 + len(data), MsgType.Rread, msg.tag), _U32.pack(len(data)), data))
    if t is Twrite:
        data = msg.data
        head = HEADER.pack(23 + len(data), MsgType.Twrite, msg.tag) + _IO.pack(msg.fid, msg.offset, len(data))
        return b"".join((head, data))
    whole = _WHOLE.get(t)
    if whole is not None:
        try:
            return whole(msg)
        except Exception:  # out of range, not a string ...: the table below says what
            pass
    try:
        mtype, body = _ENCODERS[type(msg)]
    except KeyError:
        raise CodecError(f"not a 9P2000 message: {type(msg).__name__}") from None
    try:
        return _frame(mtype, msg.tag, body(msg))
    except struct.error as e:
        raise CodecError(f"{type(msg).__name__}: field out of range: {e}") from None


# The frequent messages as one pack of header and fields: the same bytes as _ENCODERS,
# without its pieces and joins. Any failure falls back to _ENCODERS, whose errors are the
# codec's (CodecError naming the field), so both paths behave the same.
_H_U32 = struct.Struct("<IBHI")  # Tclunk Tremove Tstat Rwrite
_H_U32_U8 = struct.Struct("<IBHIB")  # Topen
_H_IO = struct.Struct("<IBHIQI")  # Tread
_H_QID = struct.Struct("<IBHBIQ")  # Rattach
_H_QID_U32 = struct.Struct("<IBHBIQI")  # Ropen Rcreate
_H_WALK = struct.Struct("<IBHIIH")  # Twalk before its names
_H_RWALK1 = struct.Struct("<IBHHBIQ")  # Rwalk of one qid
_H_RSTAT = struct.Struct("<IBHH" + _STAT_FIXED.format[1:])  # Rstat before the entry's strings


def _rstat_frame(m: Rstat) -> bytes:
    st = m.stat
    strings = _s(st.name) + _s(st.uid) + _s(st.gid) + _s(st.muid)
    n = _STAT_FIXED.size + len(strings)
    q = st.qid
    head = _H_RSTAT.pack(
        9 + n,
        125,
        m.tag,
        n,
        n - 2,
        st.type,
        st.dev,
        q.type,
        q.vers,
        q.path,
        st.mode,
        st.atime,
        st.mtime,
        st.length,
    )
    return head + strings


def _rwalk_frame(m: Rwalk) -> bytes:
    qids = m.qids
    if len(qids) == 1:
        q = qids[0]
        return _H_RWALK1.pack(22, 111, m.tag, 1, q.type, q.vers, q.path)
    return _frame(MsgType.Rwalk, m.tag, _U16.pack(len(qids)) + b"".join(_qid(q) for q in qids))


def _twalk_frame(m: Twalk) -> bytes:
    names = b"".join([_s(n) for n in m.wnames])
    return _H_WALK.pack(17 + len(names), 110, m.tag, m.fid, m.newfid, len(m.wnames)) + names


_WHOLE: dict[type, Callable[[Any], bytes]] = {
    Rclunk: lambda m: HEADER.pack(7, 121, m.tag),
    Rremove: lambda m: HEADER.pack(7, 123, m.tag),
    Rwstat: lambda m: HEADER.pack(7, 127, m.tag),
    Rflush: lambda m: HEADER.pack(7, 109, m.tag),
    Rwrite: lambda m: _H_U32.pack(11, 119, m.tag, m.count),
    Ropen: lambda m: _H_QID_U32.pack(24, 113, m.tag, m.qid.type, m.qid.vers, m.qid.path, m.iounit),
    Rcreate: lambda m: _H_QID_U32.pack(24, 115, m.tag, m.qid.type, m.qid.vers, m.qid.path, m.iounit),
    Rattach: lambda m: _H_QID.pack(20, 105, m.tag, m.qid.type, m.qid.vers, m.qid.path),
    Rwalk: _rwalk_frame,
    Rstat: _rstat_frame,
    Tclunk: lambda m: _H_U32.pack(11, 120, m.tag, m.fid),
    Tremove: lambda m: _H_U32.pack(11, 122, m.tag, m.fid),
    Tstat: lambda m: _H_U32.pack(11, 124, m.tag, m.fid),
    Topen: lambda m: _H_U32_U8.pack(12, 112, m.tag, m.fid, m.mode),
    Tread: lambda m: _H_IO.pack(23, 116, m.tag, m.fid, m.offset, m.count),
    Twalk: _twalk_frame,
}


# --- decoding ---------------------------------------------------------------


class _Reader:
    """A cursor over one frame body; every read checks that the bytes are there."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes | memoryview, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def need(self, n: int) -> int:
        pos = self.pos
        if pos + n > self.end:
            raise CodecError("message overruns its size")
        self.pos = pos + n
        return pos

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack_from(self.buf, self.need(st.size))

    def u16(self) -> int:
        return _U16.unpack_from(self.buf, self.need(2))[0]

    def u32(self) -> int:
        return _U32.unpack_from(self.buf, self.need(4))[0]

    def string(self) -> str:
        n = self.u16()
        pos = self.need(n)
        try:
            return bytes(self.buf[pos : pos + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError("string is not valid UTF-8") from None

    def data(self) -> bytes:
        n = self.u32()
        pos = self.need(n)
        return _slice(self.buf, pos, n)

    def qid(self) -> Qid:
        return Qid(*self.unpack(_QID))

    def stat(self) -> Stat:
        size, typ, dev, qt, qv, qp, mode, atime, mtime, length = self.unpack(_STAT_FIXED)
        end = self.pos - _STAT_FIXED.size + 2 + size
        if end > self.end:
            raise CodecError("stat entry overruns its message")
        outer_end, self.end = self.end, end
        try:
            name, uid, gid, muid = self.string(), self.string(), self.string(), self.string()
        finally:
            self.end = outer_end
        # Extension fields (9P2000.u) inside the entry's size are skipped, not an error.
        self.pos = end
        return Stat(typ, dev, Qid(qt, qv, qp), mode, atime, mtime, length, name, uid, gid, muid)

    def wrapped_stat(self) -> Stat:
        n = self.u16()
        start = self.pos
        st = self.stat()
        if self.pos - start != n:
            raise CodecError("stat entry size disagrees with its n[2] wrapper")
        return st


def _walk_names(r: _Reader) -> tuple[str, ...]:
    return tuple(r.string() for _ in range(r.u16()))


def _qids(r: _Reader) -> tuple[Qid, ...]:
    return tuple(r.qid() for _ in range(r.u16()))


_DECODERS: dict[int, Callable[[_Reader, int], Message]] = {
    MsgType.Tversion: lambda r, t: Tversion(t, r.u32(), r.string()),
    MsgType.Rversion: lambda r, t: Rversion(t, r.u32(), r.string()),
    MsgType.Tauth: lambda r, t: Tauth(t, r.u32(), r.string(), r.string()),
    MsgType.Rauth: lambda r, t: Rauth(t, r.qid()),
    MsgType.Tattach: lambda r, t: Tattach(t, r.u32(), r.u32(), r.string(), r.string()),
    MsgType.Rattach: lambda r, t: Rattach(t, r.qid()),
    MsgType.Rerror: lambda r, t: Rerror(t, r.string()),
    MsgType.Tflush: lambda r, t: Tflush(t, r.u16()),
    MsgType.Rflush: lambda r, t: Rflush(t),
    MsgType.Twalk: lambda r, t: Twalk(t, r.u32(), r.u32(), _walk_names(r)),
    MsgType.Rwalk: lambda r, t: Rwalk(t, _qids(r)),
    MsgType.Topen: lambda r, t: Topen(t, *r.unpack(_U32_U8)),
    MsgType.Ropen: lambda r, t: Ropen(t, r.qid(), r.u32()),
    MsgType.Tcreate: lambda r, t: Tcreate(t, r.u32(), r.string(), *r.unpack(_U32_U8)),
    MsgType.Rcreate: lambda r, t: Rcreate(t, r.qid(), r.u32()),
    MsgType.Tread: lambda r, t: Tread(t, *r.unpack(_IO)),
    MsgType.Rread: lambda r, t: Rread(t, r.data()),
    MsgType.Twrite: lambda r, t: _twrite(r, t),
    MsgType.Rwrite: lambda r, t: Rwrite(t, r.u32()),
    MsgType.Tclunk: lambda r, t: Tclunk(t, r.u32()),
    MsgType.Rclunk: lambda r, t: Rclunk(t),
    MsgType.Tremove: lambda r, t: Tremove(t, r.u32()),
    MsgType.Rremove: lambda r, t: Rremove(t),
    MsgType.Tstat: lambda r, t: Tstat(t, r.u32()),
    MsgType.Rstat: lambda r, t: Rstat(t, r.wrapped_stat()),
    MsgType.Twstat: lambda r, t: Twstat(t, r.u32(), r.wrapped_stat()),
    MsgType.Rwstat: lambda r, t: Rwstat(t),
}


def _twrite(r: _Reader, tag: int) -> Twrite:
    fid, offset, count = r.unpack(_IO)
    pos = r.need(count)
    return Twrite(tag, fid, offset, _slice(r.buf, pos, count))


BIG_DATA = 8192  # data this big is a view of its frame, not a copy


def _slice(buf: bytes | memoryview, pos: int, n: int) -> bytes:
    """The data of an Rread or Twrite. Large data is a zero-copy view of the frame (it is
    bytes-like: it compares, joins and writes like bytes), so a MiB is not copied again.
    The view is read-only: nothing changes a frame once it is read, so a tree may keep
    the data as it is (fileserver/pieces.py)."""
    if n >= BIG_DATA:
        return memoryview(buf)[pos : pos + n].toreadonly()  # type: ignore[return-value]
    return bytes(buf[pos : pos + n])


# The frequent messages decoded in one go: for a well-formed frame the same message as
# _DECODERS gives, and None for anything else, which _DECODERS then refuses with the
# codec's errors. Each is (frame, size, tag) -> message or None.


def _fixed(size: int, st: struct.Struct, build: Callable[..., Message]) -> Callable[..., Message | None]:
    """A message of one size: its fields in one unpack."""

    def fast(frame: bytes | memoryview, n: int, tag: int) -> Message | None:
        return build(tag, *st.unpack_from(frame, HEADER.size)) if n == size else None

    return fast


def _fast_twalk(frame: bytes | memoryview, size: int, tag: int) -> Twalk | None:
    if size < 17:
        return None
    fid, newfid, count = _WALK_FIXED.unpack_from(frame, HEADER.size)
    pos = 17
    names = []
    for _ in range(count):
        if pos + 2 > size:
            return None
        n = _U16.unpack_from(frame, pos)[0]
        pos += 2
        if pos + n > size:
            return None
        try:
            names.append(str(frame[pos : pos + n], "utf-8"))
        except UnicodeDecodeError:
            return None
        pos += n
    return Twalk(tag, fid, newfid, tuple(names)) if pos == size else None


def _fast_twrite(frame: bytes | memoryview, size: int, tag: int) -> Twrite | None:
    if size < 23:
        return None
    fid, offset, count = _IO.unpack_from(frame, HEADER.size)
    return Twrite(tag, fid, offset, _slice(frame, 23, count)) if 23 + count == size else None


def _fast_rread(frame: bytes | memoryview, size: int, tag: int) -> Rread | None:
    if size < 11:
        return None
    count = _U32.unpack_from(frame, HEADER.size)[0]
    return Rread(tag, _slice(frame, 11, count)) if 11 + count == size else None


def _rwalk1(tag: int, n: int, qt: int, qv: int, qp: int) -> Message | None:
    return Rwalk(tag, (Qid(qt, qv, qp),)) if n == 1 else None


_WALK_FIXED = struct.Struct("<IIH")
_NOTHING = struct.Struct("")
_FAST: dict[int, Callable[[bytes | memoryview, int, int], Message | None]] = {
    MsgType.Tstat: _fixed(11, _U32, Tstat),
    MsgType.Tclunk: _fixed(11, _U32, Tclunk),
    MsgType.Tremove: _fixed(11, _U32, Tremove),
    MsgType.Topen: _fixed(12, _U32_U8, Topen),
    MsgType.Tread: _fixed(23, _IO, Tread),
    MsgType.Tflush: _fixed(9, _U16, Tflush),
    MsgType.Twalk: _fast_twalk,
    MsgType.Twrite: _fast_twrite,
    MsgType.Rread: _fast_rread,
    MsgType.Rwrite: _fixed(11, _U32, Rwrite),
    MsgType.Rclunk: _fixed(7, _NOTHING, Rclunk),
    MsgType.Rremove: _fixed(7, _NOTHING, Rremove),
    MsgType.Rwstat: _fixed(7, _NOTHING, Rwstat),
    MsgType.Rflush: _fixed(7, _NOTHING, Rflush),
    MsgType.Ropen: _fixed(24, _QID_U32, lambda t, qt, qv, qp, iounit: Ropen(t, Qid(qt, qv, qp), iounit)),
    MsgType.Rcreate: _fixed(24, _QID_U32, lambda t, qt, qv, qp, iounit: Rcreate(t, Qid(qt, qv, qp), iounit)),
    MsgType.Rattach: _fixed(20, _QID, lambda t, qt, qv, qp: Rattach(t, Qid(qt, qv, qp))),
    MsgType.Rwalk: _fixed(22, struct.Struct("<HBIQ"), _rwalk1),
}


def frame_tag(frame: bytes | memoryview) -> int | None:
    """The tag of a frame, if it is long enough to have one."""
    if len(frame) < HEADER.size:
        return None
    return HEADER.unpack_from(frame)[2]


def decode(frame: bytes | memoryview) -> Message:
    """Decode one whole frame (size prefix included) into a message."""
    if len(frame) < HEADER.size:
        raise CodecError(f"frame of {len(frame)} bytes is shorter than a 9P header")
    size, mtype, tag = HEADER.unpack_from(frame)
    if size != len(frame):
        raise CodecError(f"frame says {size} bytes but has {len(frame)}", tag)
    fast = _FAST.get(mtype)
    if fast is not None:
        msg = fast(frame, size, tag)
        if msg is not None:
            return msg
    dec = _DECODERS.get(mtype)
    if dec is None:
        raise CodecError(f"unknown message type {mtype}", tag)
    r = _Reader(frame, HEADER.size, size)
    try:
        msg = dec(r, tag)
    except CodecError as e:
        raise CodecError(f"{MsgType(mtype).name}: {e}", tag) from None
    if r.pos != size:
        raise CodecError(f"{MsgType(mtype).name}: {size - r.pos} bytes after the message", tag)
    return msg


def decode_stat(data: bytes | memoryview) -> Stat:
    """Exactly one stat entry (with its leading size[2])."""
    r = _Reader(data, 0, len(data))
    st = r.stat()
    if r.pos != len(data):
        raise CodecError("bytes after the stat entry")
    return st


def decode_stats(data: bytes | memoryview) -> list[Stat]:
    """The stat entries of a directory read (read(5): whole entries only)."""
    r = _Reader(data, 0, len(data))
    out = []
    while r.pos < r.end:
        out.append(r.stat())
    return out
