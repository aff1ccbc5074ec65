"""The FUSE kernel protocol codec (mount/fusecodec.py): requests as the kernel writes them
(linux/fuse.h layouts), replies as it reads them, and hostile bytes answered, never a crash."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mount import fuseabi as abi
from mount import fuseargs as args
from mount import fusecodec as codec
from mount.fuseabi import Attr, FileInfo, Op

EXAMPLES = int(os.environ.get("NINEFS_FUZZ_EXAMPLES", "300"))

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
names = st.binary(min_size=1, max_size=255).filter(lambda b: b"\0" not in b)


def request(opcode: int, body: bytes, unique: int = 7, nodeid: int = 1, uid=0, gid=0, pid=1) -> bytes:
    """A request as the kernel frames it: fuse_in_header, then the opcode's body."""
    return (
        abi.IN_HEADER.pack(abi.IN_HEADER.size + len(body), opcode, unique, nodeid, uid, gid, pid, 0, 0) + body
    )


@given(unique=u64, nodeid=u64, name=names, uid=u32, gid=u32, pid=u32)
@settings(max_examples=EXAMPLES)
def test_a_lookup_names_its_parent_and_the_name(unique, nodeid, name, uid, gid, pid):
    r = codec.parse(request(Op.LOOKUP, name + b"\0", unique, nodeid, uid, gid, pid))
    assert (r.opcode, r.unique, r.nodeid, r.uid, r.gid, r.pid) == (Op.LOOKUP, unique, nodeid, uid, gid, pid)
    assert r.args == args.Lookup(name)


@given(fh=u64, offset=u64, data=st.binary(max_size=4096), flags=u32)
@settings(max_examples=EXAMPLES)
def test_a_write_carries_exactly_its_bytes(fh, offset, data, flags):
    body = abi.WRITE_IN.pack(fh, offset, len(data), flags, 0, 0, 0) + data
    assert codec.parse(request(Op.WRITE, body)).args == args.Write(fh, offset, data, flags)


def test_a_write_whose_size_disagrees_with_its_data_is_refused_with_its_unique():
    body = abi.WRITE_IN.pack(1, 0, 10, 0, 0, 0, 0) + b"abc"
    with pytest.raises(codec.BadRequest) as e:
        codec.parse(request(Op.WRITE, body, unique=99))
    assert e.value.unique == 99


@given(newdir=u64, old=names, new=names, flags=st.sampled_from([0, 1, 2]))
@settings(max_examples=EXAMPLES)
def test_rename2_gives_both_names_and_its_flags(newdir, old, new, flags):
    body = abi.RENAME2_IN.pack(newdir, flags, 0) + old + b"\0" + new + b"\0"
    assert codec.parse(request(Op.RENAME2, body)).args == args.Rename(newdir, old, new, flags)
    body = abi.RENAME_IN.pack(newdir) + old + b"\0" + new + b"\0"
    assert codec.parse(request(Op.RENAME, body)).args == args.Rename(newdir, old, new, 0)


@given(items=st.lists(st.tuples(u64, u64), max_size=100))
@settings(max_examples=EXAMPLES)
def test_batch_forget_lists_every_inode(items):
    body = abi.BATCH_FORGET_IN.pack(len(items), 0) + b"".join(abi.FORGET_ONE.pack(*i) for i in items)
    assert codec.parse(request(Op.BATCH_FORGET, body)).args.items == items


def test_a_batch_forget_counting_more_than_it_carries_is_refused():
    body = abi.BATCH_FORGET_IN.pack(5, 0) + abi.FORGET_ONE.pack(1, 1)
    with pytest.raises(codec.BadRequest):
        codec.parse(request(Op.BATCH_FORGET, body))


@given(
    valid=u32,
    fh=u64,
    size=u64,
    mode=u32,
    uid=u32,
    gid=u32,
    at=st.integers(0, 2**33),
    mt=st.integers(0, 2**33),
)
@settings(max_examples=EXAMPLES)
def test_setattr_says_which_fields_count(valid, fh, size, mode, uid, gid, at, mt):
    valid &= ~(abi.FATTR_ATIME_NOW | abi.FATTR_MTIME_NOW)
    body = abi.SETATTR_IN.pack(valid, 0, fh, size, 0, at, mt, 0, 5, 6, 0, mode, 0, uid, gid, 0)
    c = codec.parse(request(Op.SETATTR, body)).args.changes
    assert c.update_size == bool(valid & abi.FATTR_SIZE) and c.st_size == size
    assert c.update_mode == bool(valid & abi.FATTR_MODE) and c.st_mode == mode
    assert c.has_fh == bool(valid & abi.FATTR_FH) and c.fh == fh
    assert (c.st_uid, c.st_gid) == (uid, gid)
    assert (c.st_atime_ns, c.st_mtime_ns) == (at * 10**9 + 5, mt * 10**9 + 6)


def test_utime_now_is_the_clocks_now():
    import time

    body = abi.SETATTR_IN.pack(abi.FATTR_MTIME_NOW, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    c = codec.parse(request(Op.SETATTR, body)).args.changes
    assert c.update_mtime and abs(c.st_mtime_ns - time.time_ns()) < 5 * 10**9


@given(flags=u32, mode=u32, umask=u32, name=names)
@settings(max_examples=EXAMPLES)
def test_create_and_mkdir_carry_mode_umask_and_name(flags, mode, umask, name):
    body = abi.CREATE_IN.pack(flags, mode, umask, 0) + name + b"\0"
    assert codec.parse(request(Op.CREATE, body)).args == args.Create(name, flags, mode, umask)
    body = abi.MKDIR_IN.pack(mode, umask) + name + b"\0"
    assert codec.parse(request(Op.MKDIR, body)).args == args.Mkdir(name, mode, umask)


def test_getattr_through_an_open_file_names_its_handle():
    assert codec.parse(request(Op.GETATTR, abi.GETATTR_IN.pack(abi.FUSE_GETATTR_FH, 0, 42))).args.fh == 42
    assert codec.parse(request(Op.GETATTR, abi.GETATTR_IN.pack(0, 0, 42))).args.fh is None


def test_an_opcode_the_mount_does_not_read_still_parses():
    r = codec.parse(request(Op.IOCTL, b"\x01" * 32))
    assert r.opcode == Op.IOCTL and isinstance(r.args, args.Bare)
    assert codec.parse(request(9999, b"")).opcode == 9999


def test_a_name_without_its_nul_is_refused():
    with pytest.raises(codec.BadRequest) as e:
        codec.parse(request(Op.LOOKUP, b"abc", unique=5))
    assert e.value.unique == 5


def test_a_short_header_cannot_be_answered():
    with pytest.raises(codec.BadRequest) as e:
        codec.parse(b"\x00" * 20)
    assert e.value.unique is None


def test_a_length_that_disagrees_with_the_read_is_refused():
    raw = bytearray(request(Op.LOOKUP, b"x\0"))
    struct.pack_into("<I", raw, 0, 500)
    with pytest.raises(codec.BadRequest):
        codec.parse(bytes(raw))


@given(st.binary(max_size=300))
@settings(max_examples=EXAMPLES * 3)
def test_random_bytes_parse_or_are_refused_never_crash(raw):
    try:
        codec.parse(raw)
    except codec.BadRequest:
        pass


@given(opcode=st.sampled_from([int(o) for o in Op]), body=st.binary(max_size=200))
@settings(max_examples=EXAMPLES * 3)
def test_random_bodies_under_a_whole_header_parse_or_are_refused_with_their_unique(opcode, body):
    try:
        codec.parse(request(opcode, body, unique=1234))
    except codec.BadRequest as e:
        assert e.unique == 1234


# --- replies ---------------------------------------------------------------------------------

attrs = st.builds(
    Attr,
    st_ino=u64,
    entry_timeout=st.floats(0, 1e6),
    attr_timeout=st.floats(0, 1e6),
    st_mode=st.integers(0, 0o177777),
    st_nlink=u32,
    st_uid=u32,
    st_gid=u32,
    st_size=u64,
    st_blocks=u64,
    st_atime_ns=st.integers(0, 2**62),
    st_mtime_ns=st.integers(0, 2**62),
    st_ctime_ns=st.integers(0, 2**62),
)


@given(a=attrs)
@settings(max_examples=EXAMPLES)
def test_entry_and_attr_replies_are_the_kernels_sizes_and_fields(a):
    e = codec.entry_out(a)
    assert len(e) == 128  # sizeof(struct fuse_entry_out)
    nodeid, _, entry_valid, attr_valid, _, _ = abi.ENTRY_OUT.unpack_from(e)
    f = abi.ATTR.unpack_from(e, abi.ENTRY_OUT.size)
    assert (nodeid, f[0], f[1], f[9], f[11], f[12]) == (
        a.st_ino,
        a.st_ino,
        a.st_size,
        a.st_mode,
        a.st_uid,
        a.st_gid,
    )
    assert f[4] * 10**9 + f[7] == a.st_mtime_ns
    assert entry_valid == int(a.entry_timeout) and attr_valid == int(a.attr_timeout)
    assert len(codec.attr_out(a)) == 104  # sizeof(struct fuse_attr_out)


def test_reply_headers_count_their_bodies_and_errors_are_negative():
    out = codec.reply(77, b"x" * 10)
    assert abi.OUT_HEADER.unpack_from(out) == (26, 0, 77)
    assert abi.OUT_HEADER.unpack(codec.reply_error(78, 2)) == (16, -2, 78)


def test_open_reply_flags():
    fi = FileInfo(fh=3, keep_cache=True, noflush=True)
    assert abi.OPEN_OUT.unpack(codec.open_out(fi)) == (3, abi.FOPEN_KEEP_CACHE | abi.FOPEN_NOFLUSH, 0)
    fi = FileInfo(fh=4, direct_io=True, cache_dir=True)
    assert abi.OPEN_OUT.unpack(codec.open_out(fi))[1] == abi.FOPEN_DIRECT_IO | abi.FOPEN_CACHE_DIR


@given(entries=st.lists(st.tuples(names, attrs), max_size=60), size=st.integers(0, 8192), plus=st.booleans())
@settings(max_examples=EXAMPLES)
def test_a_directory_buffer_never_passes_its_size_and_reads_back(entries, size, plus):
    buf = codec.DirentBuffer(size, plus)
    added = []
    for i, (name, a) in enumerate(entries):
        if not buf.add(name, a, i + 1):
            break
        added.append((name, a, i + 1))
    data = buf.bytes()
    assert len(data) <= size and len(data) % 8 == 0
    at, got = 0, []
    while at < len(data):
        if plus:
            at += 128
        ino, off, namelen, typ = abi.DIRENT.unpack_from(data, at)
        name = data[at + abi.DIRENT.size : at + abi.DIRENT.size + namelen]
        got.append((name, ino, off, typ))
        at += (abi.DIRENT.size + namelen + 7) // 8 * 8
    assert got == [(n, a.st_ino, off, (a.st_mode >> 12) & 0xF) for n, a, off in added]


def test_notifications_have_unique_zero_and_the_code_in_the_error_field():
    msg = codec.notify_inval_entry(5, b"name")
    length, code, unique = abi.OUT_HEADER.unpack_from(msg)
    assert (length, code, unique) == (len(msg), abi.Notify.INVAL_ENTRY, 0)
    assert msg.endswith(b"name\0")
    ino, off, ln = abi.NOTIFY_INVAL_INODE.unpack_from(codec.notify_inval_inode(9), abi.OUT_HEADER.size)
    assert (ino, off, ln) == (9, -1, 0)
    parent, child, namelen, _ = abi.NOTIFY_DELETE.unpack_from(codec.notify_delete(1, 2, b"ab"), 16)
    assert (parent, child, namelen) == (1, 2, 2)
    head = codec.notify_store_header(7, 0, 4096)  # the bytes follow in the same write
    length, code, unique = abi.OUT_HEADER.unpack_from(head)
    assert (length, code, unique) == (len(head) + 4096, abi.Notify.STORE, 0)
    assert abi.NOTIFY_STORE.unpack_from(head, abi.OUT_HEADER.size) == (7, 0, 4096, 0)


def test_init_reply_asks_for_the_pages_of_its_max_write():
    out = codec.init_out(38, 131072, abi.FUSE_ASYNC_READ | abi.FUSE_MAX_PAGES, 64, 48, 1 << 20)
    major, minor, ra, _, bg, cong, max_write, _, pages, _, flags2 = abi.INIT_OUT.unpack(out)
    assert (major, minor, ra, bg, cong, max_write, pages, flags2) == (7, 38, 131072, 64, 48, 1 << 20, 256, 0)
    assert len(out) == 64
