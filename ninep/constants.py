"""Numbers fixed by the 9P2000 protocol (intro(5)), shared by codec, server and client."""

from __future__ import annotations

from enum import IntEnum

VERSION = "9P2000"
NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
MAXWELEM = 16  # walk(5): at most 16 names per Twalk
IOHDRSZ = 24  # read(5)/write(5): header bytes around the data of a Tread/Rread/Twrite
DEFAULT_MSIZE = 1 << 20
MIN_MSIZE = 256  # smaller than this cannot hold a stat entry with sensible names
NOT_TOUCHED_U16 = 0xFFFF
NOT_TOUCHED_U32 = 0xFFFFFFFF
NOT_TOUCHED_U64 = 0xFFFFFFFFFFFFFFFF


class MsgType(IntEnum):
    Tversion = 100
    Rversion = 101
    Tauth = 102
    Rauth = 103
    Tattach = 104
    Rattach = 105
    Terror = 106  # illegal on the wire
    Rerror = 107
    Tflush = 108
    Rflush = 109
    Twalk = 110
    Rwalk = 111
    Topen = 112
    Ropen = 113
    Tcreate = 114
    Rcreate = 115
    Tread = 116
    Rread = 117
    Twrite = 118
    Rwrite = 119
    Tclunk = 120
    Rclunk = 121
    Tremove = 122
    Rremove = 123
    Tstat = 124
    Rstat = 125
    Twstat = 126
    Rwstat = 127


# qid.type bits
QTDIR = 0x80
QTAPPEND = 0x40
QTEXCL = 0x20
QTMOUNT = 0x10
QTAUTH = 0x08
QTTMP = 0x04
QTFILE = 0x00

# stat.mode bits
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMMOUNT = 0x10000000
DMAUTH = 0x08000000
DMTMP = 0x04000000
PERM_MASK = 0o777
# 9P2000.u's bits for setuid, setgid and sticky; ninefs's own servers keep them in 9P2000 too
# (ninep/posix.py)
DMSETUID = 0x00080000
DMSETGID = 0x00040000
DMSETVTX = 0x00010000

# open(5) modes
OREAD = 0
OWRITE = 1
ORDWR = 2
OEXEC = 3
OTRUNC = 0x10
ORCLOSE = 0x40
OACCMODE = 3


def qid_type_for_mode(mode: int) -> int:
    """The qid type bits are the top byte of the mode bits (stat(5))."""
    return (mode >> 24) & 0xFF
