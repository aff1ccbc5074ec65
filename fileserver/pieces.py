"""File contents as a list of pieces that never change once stored: the RAM tree's data.

One growing bytearray copied every write into itself, copied the whole file again
whenever realloc moved it, and made every read copy out (a view would pin the
array's size). Pieces avoid all three. A big write keeps the caller's buffer as a
piece when the caller promises not to change it (`bytes`, or a read-only view such
as the server's decoded Twrite data, a view of a frame nothing else holds), so a
MiB written over 9P is stored without being copied; a read inside one piece answers
with a view of it, which the server sends without copying either. Small writes are
gathered into a private tail, so a file written a few bytes at a time does not turn
into a list of tiny pieces.
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["Pieces"]

Buffer = bytes | bytearray | memoryview
BIG = 64 * 1024  # pieces at least this big are kept as given; smaller ones are copied and merged


def _owned(data: Buffer) -> bool:
    """True when `data` may be kept without a copy: nobody is going to change it."""
    return isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly)


class Pieces:
    """Bytes addressed by offset; `read` may return a view, and views stay valid forever."""

    __slots__ = ("_pieces", "_size", "_starts", "_tail")

    def __init__(self) -> None:
        self._pieces: list[Buffer] = []
        self._starts: list[int] = []  # offset of each piece
        self._size = 0
        # The last piece is a bytearray of ours that small appends grow in place; it is
        # never handed out as a view.
        self._tail = False

    def __len__(self) -> int:
        return self._size

    def read(self, offset: int, count: int) -> Buffer:
        end = min(self._size, offset + count)
        if offset >= end:
            return b""
        i = bisect_right(self._starts, offset) - 1
        piece, start = self._pieces[i], self._starts[i]
        if end <= start + len(piece):
            if self._tail and i == len(self._pieces) - 1:
                return bytes(piece[offset - start : end - start])
            return memoryview(piece)[offset - start : end - start]
        parts = []
        while offset < end:
            piece, start = self._pieces[i], self._starts[i]
            stop = min(end, start + len(piece))
            parts.append(memoryview(piece)[offset - start : stop - start])
            offset = stop
            i += 1
        return b"".join(parts)

    def write(self, offset: int, data: Buffer) -> None:
        n = len(data)
        if not n:
            return
        if offset > self._size:
            self._append(bytes(offset - self._size))
        if offset == self._size:
            self._append(data)
        else:
            self._splice(offset, data)

    def truncate(self, size: int) -> None:
        if size > self._size:
            self._append(bytes(size - self._size))
        elif size < self._size:
            self._cut(size, self._size, [])

    # --- inside -------------------------------------------------------------------------

    def _append(self, data: Buffer) -> None:
        n = len(data)
        if n >= BIG:
            self._pieces.append(data if _owned(data) else bytes(data))
            self._starts.append(self._size)
            self._tail = False
        elif self._tail and len(self._pieces[-1]) < BIG:
            self._pieces[-1] += data  # type: ignore[operator]  # the tail is our bytearray
        else:
            self._pieces.append(bytearray(data))
            self._starts.append(self._size)
            self._tail = True
        self._size += n

    def _splice(self, offset: int, data: Buffer) -> None:
        """Replace bytes offset..offset+len(data) (perhaps beyond the end) by `data`."""
        end = offset + len(data)
        middle = data if len(data) >= BIG and _owned(data) else bytes(data)
        self._cut(offset, min(end, self._size), [middle])
        self._size = max(self._size, end)

    def _cut(self, offset: int, end: int, insert: list[Buffer]) -> None:
        """Drop bytes offset..end (end <= size) and put `insert` in their place."""
        pieces, starts = self._pieces, self._starts
        i = bisect_right(starts, offset) - 1
        j = bisect_right(starts, end - 1) - 1 if end > offset else i
        head = memoryview(pieces[i])[: offset - starts[i]]
        rest = memoryview(pieces[j])[end - starts[j] :]
        new = [p for p in (head, *insert, rest) if len(p)]
        if sum(len(p) for p in new) < BIG:  # keep small neighbours together
            new = [b"".join(new)] if new else []
        # A small remnant is copied, so it does not keep a big buffer alive.
        pieces[i : j + 1] = [p if len(p) >= BIG and _owned(p) else bytes(p) for p in new]
        del head, rest, new  # views of the tail must be gone before it can grow again
        was_tail = self._tail and j == len(starts) - 1
        pos = starts[i]
        del starts[i:]
        for p in pieces[i:]:
            starts.append(pos)
            pos += len(p)
        self._size = pos if not insert else self._size
        if was_tail:
            self._tail = False  # the tail was split or replaced; a new one starts at the next append
