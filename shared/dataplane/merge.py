"""Rebuilding one table from its history, a block at a time: the newest version of each key,
once, without parsing the rows nothing touched.

A table at backup ``B_k`` is its *base* (the newest entry of the chain that stores it whole:
``FULL`` or ``WHOLE``), upserted with every later ``DELTA``'s changed rows, minus the keys
absent from ``B_k``'s key set (see :mod:`.restore_rows`). Every stream is in the key order the
backup read it in (:func:`~.sql.order_by`), which :func:`~.sql.key_parser` reproduces.

The base is by far the largest stream, and most of it is untouched: it is read in blocks of
whole lines (a chunk each), and a block goes through as it is when no delta key falls in its
key range and the key set keeps every key of it, which is decided from its first and last
lines only (a ``RANGES`` key set: one live range holds both; a ``KEYS`` key set: as many live
keys between them as the block has lines, since a live key that no delta names is a base
key). Otherwise the block is cut, without splitting it into lines, at each delta key and at
each end of a live range, found by a search over its byte offsets (a key parsed per probe;
for an integer key, interpolation and bisection in turn): the pieces between cuts are passed
through as they are, the base line a delta key replaces is left out, the delta's line is put
in its place, and the pieces the key set does not keep are dropped. The deltas (the changed
rows: small) are merged line by line, the newest version of each key winning.

Why it is exact: every stream and every probe uses the same order, keys are compared parsed
(never as text of another form), and each key is emitted at most once, from the newest
backup that holds it, only if the key set holds it. Memory: one base block, one delta line per
delta, the key set's current range or the live keys of one block.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

Key = tuple[Any, ...]
KeyFunction = Callable[[bytes], Key]

__all__ = ["Block", "Key", "KeyFunction", "KeyList", "LiveKeys", "RangeSet", "merge_history"]

_OUT_BLOCK = 256 << 10


class CorruptStream(ValueError):
    """A stream does not end with a whole line."""


def line_blocks(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """``blocks`` re-cut into blocks of whole lines (each ends with a newline)."""
    carry = b""
    for block in blocks:
        data = carry + block if carry else block
        cut = data.rfind(b"\n") + 1
        if cut == len(data):
            carry = b""
            if data:
                yield data
            continue
        if cut:
            yield data[:cut]
        carry = data[cut:]
    if carry:
        raise CorruptStream("row stream does not end with a newline")


def lines_of(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines (without their newline) of a stream."""
    for block in line_blocks(blocks):
        lines = block.split(b"\n")
        lines.pop()
        yield from lines


class Block:
    """A block of whole lines, searched by key over its byte offsets (never split)."""

    __slots__ = ("data", "key")

    def __init__(self, data: bytes, key: KeyFunction) -> None:
        self.data = data
        self.key = key

    def key_at(self, start: int) -> Key:
        """The key of the line starting at byte ``start``."""
        return self.key(self.data[start : self.data.index(b"\n", start)])

    def key_before(self, end: int) -> Key:
        """The key of the line ending (with its newline) at byte ``end``."""
        return self.key(self.data[self.data.rfind(b"\n", 0, end - 1) + 1 : end - 1])

    def lines(self, a: int, b: int) -> int:
        return self.data.count(b"\n", a, b)

    def search(
        self,
        k: Key,
        lo: int,
        hi: int,
        *,
        after: bool = False,
        below: Key | None = None,
        above: Key | None = None,
    ) -> int:
        """The start of the first line in ``[lo, hi)`` (both line starts) whose key is at or
        after ``k`` (after it, with ``after``), or ``hi``. A probe at a byte offset reads the
        line around it. For a single integer key a probe is placed by interpolation between the
        keys known to bound the range (``below`` the line at ``lo``, ``above`` the line before
        ``hi``, then those the probes saw), which finds a dense key in a few probes; one that
        did not halve the range is followed by one that does, which bounds the worst case to
        twice a bisection."""
        data, key = self.data, self.key
        target = k[0] if len(k) == 1 and type(k[0]) is int else None
        low = below[0] if target is not None and below is not None else None
        high = above[0] if target is not None and above is not None else None
        interpolate = True
        while lo < hi:
            mid = (lo + hi) // 2
            width = hi - lo
            if interpolate and low is not None and high is not None and high > low:
                assert target is not None
                mid = min(max(lo + (target - low) * width // (high - low), lo), hi - 1)
            start = max(data.rfind(b"\n", lo, mid) + 1, lo)
            end = data.index(b"\n", start)
            found = key(data[start:end])
            if found < k or (after and found == k):
                lo = end + 1
                low = found[0] if target is not None else None
            else:
                hi = start
                high = found[0] if target is not None else None
            # Interpolation that did not halve the range: the next probe halves it.
            interpolate = not interpolate or 2 * (hi - lo) <= width
        return lo


class LiveKeys:
    """The key set of the newest backup, asked in ascending key order only."""

    def live(self, key: Key) -> bool:
        raise NotImplementedError

    def covers(self, first: Key, last: Key, lines: int) -> bool:
        """Whether every base key from ``first`` to ``last`` (``lines`` of them, with no delta
        key between them) is live."""
        raise NotImplementedError

    def spans(self, block: Block, a: int, b: int) -> Iterator[tuple[int, int]]:
        """The byte ranges of ``block[a:b]`` (whole base lines, no delta key among them) whose
        keys are live."""
        raise NotImplementedError


class RangeSet(LiveKeys):
    """A ``RANGES`` key set (a single integer key): ``lo<TAB>hi`` lines, ascending."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self.lo = 0
        self.hi: int | None = None
        self.done = False

    def _reach(self, k: int) -> bool:
        """Advance to the first range with ``hi >= k``; False when there is none."""
        while self.hi is None or self.hi < k:
            line = next(self._lines, None)
            if line is None:
                self.done = True
                return False
            lo, _tab, hi = line.partition(b"\t")
            self.lo, self.hi = int(lo), int(hi)
        return True

    def live(self, key: Key) -> bool:
        k: int = key[0]
        return not self.done and self._reach(k) and self.lo <= k

    def covers(self, first: Key, last: Key, lines: int) -> bool:
        lo: int = first[0]
        hi: int = last[0]
        if self.done or not self._reach(lo):
            return False
        assert self.hi is not None
        return self.lo <= lo and hi <= self.hi

    def spans(self, block: Block, a: int, b: int) -> Iterator[tuple[int, int]]:
        while a < b and not self.done:
            k: int = block.key_at(a)[0]
            if not self._reach(k):
                return
            assert self.hi is not None
            if k < self.lo:  # deleted keys, up to the range's start
                a = block.search((self.lo,), a, b, below=(k,))
                continue
            last = block.key_before(b)
            if last[0] <= self.hi:
                yield a, b
                return
            j = block.search((self.hi,), a, b, after=True, below=(k,), above=last)
            yield a, j
            a = j


class KeyList(LiveKeys):
    """A ``KEYS`` key set: the live keys, ascending. Keys read ahead (to count those of a
    block) wait in a buffer of at most one block's lines."""

    def __init__(self, keys: Iterator[Key]) -> None:
        self._keys = keys
        self._ahead: deque[Key] = deque()

    def _peek(self, index: int = 0) -> Key | None:
        while len(self._ahead) <= index:
            key = next(self._keys, None)
            if key is None:
                return None
            self._ahead.append(key)
        return self._ahead[index]

    def _skip_below(self, key: Key) -> Key | None:
        while (current := self._peek()) is not None and current < key:
            self._ahead.popleft()
        return current

    def live(self, key: Key) -> bool:
        if self._skip_below(key) == key:
            self._ahead.popleft()
            return True
        return False

    def covers(self, first: Key, last: Key, lines: int) -> bool:
        # Live keys between two base keys with no delta key between them are base keys: as
        # many as there are lines means all of them.
        self._skip_below(first)
        count = 0
        while count <= lines and (current := self._peek(count)) is not None and current <= last:
            count += 1
        if count != lines:
            return False
        for _ in range(count):
            self._ahead.popleft()
        return True

    def spans(self, block: Block, a: int, b: int) -> Iterator[tuple[int, int]]:
        if self.covers(block.key_at(a), block.key_before(b), block.lines(a, b)):
            yield a, b
            return
        data = block.data
        start = None
        i = a
        while i < b:
            end = data.index(b"\n", i) + 1
            if self.live(block.key(data[i : end - 1])):
                if start is None:
                    start = i
            elif start is not None:
                yield start, i
                start = None
            i = end
        if start is not None:
            yield start, b


class _Out:
    """Output pieces gathered into blocks of about ``_OUT_BLOCK`` bytes."""

    def __init__(self) -> None:
        self.pieces: list[bytes | memoryview] = []
        self.size = 0

    def add(self, piece: bytes | memoryview) -> Iterator[bytes]:
        if len(piece) >= _OUT_BLOCK:
            yield from self.flush()
            yield piece if isinstance(piece, bytes) else bytes(piece)
            return
        self.pieces.append(piece)
        self.size += len(piece)
        if self.size >= _OUT_BLOCK:
            yield from self.flush()

    def flush(self) -> Iterator[bytes]:
        if self.pieces:
            yield b"".join(self.pieces)
            self.pieces = []
            self.size = 0


def newest_per_key(
    deltas: Sequence[Iterable[bytes]], key: KeyFunction
) -> Iterator[tuple[Key, bytes]]:
    """The deltas' rows merged in key order, one per key: the newest delta's (``heapq.merge``
    is stable, so of equal keys the last comes from the newest stream)."""
    streams = [((key(line), line) for line in lines_of(d)) for d in deltas]
    pending: tuple[Key, bytes] | None = None
    for item in heapq.merge(*streams, key=lambda item: item[0]):
        if pending is not None and item[0] != pending[0]:
            yield pending
        pending = item
    if pending is not None:
        yield pending


def merge_history(
    base: Iterable[bytes],
    deltas: Sequence[Iterable[bytes]],
    live: LiveKeys,
    key: KeyFunction,
) -> Iterator[bytes]:
    """The table rebuilt from its ``base`` stream and its ``deltas`` (oldest first), keeping
    the keys ``live`` holds: COPY text blocks of whole lines, in key order (see the module
    docstring). Raises :class:`CorruptStream` on a stream cut mid-line."""
    out = _Out()
    changed = newest_per_key(deltas, key)
    pending = next(changed, None)
    for data in line_blocks(base):
        block = Block(data, key)
        end = len(data)
        last = block.key_before(end)
        untouched = pending is None or pending[0] > last
        if untouched and live.covers(block.key_at(0), last, block.lines(0, end)):
            yield from out.add(data)
            continue
        view = memoryview(data)
        pos = 0
        floor: Key | None = None
        while pending is not None and pending[0] <= last:
            k, line = pending
            i = block.search(k, pos, end, below=floor, above=last)
            floor = k
            if pos < i:
                for a, b in live.spans(block, pos, i):
                    yield from out.add(view[a:b])
            if i < end and block.key_at(i) == k:
                i = data.index(b"\n", i) + 1  # the base's version of the key: replaced
            if live.live(k):
                yield from out.add(line + b"\n")
            pos = i
            pending = next(changed, None)
        if pos < end:
            for a, b in live.spans(block, pos, end):
                yield from out.add(view[a:b])
    while pending is not None:
        if live.live(pending[0]):
            yield from out.add(pending[1] + b"\n")
        pending = next(changed, None)
    yield from out.flush()
