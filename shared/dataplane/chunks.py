"""Content-addressed chunks: content-defined chunking (FastCDC), zstd, SHA-256.

A byte *stream* (a COPY, an archive) is cut into content-defined chunks with ``fastcdc``; each
chunk is named by the SHA-256 of its raw bytes, compressed with ``zstandard`` (level 1 or 3,
whichever compresses the stream's sample chunks better, unless a fixed level is given) and
stored once
under ``clusters/{cluster}/chains/{chain}/chunks/{hh}/{sha256}``. Because the name is the
content's hash, a chunk that is already in the chain (same key range of a table, same schema
archive) costs nothing: a later backup only references it.

Memory is bounded whatever the stream's length. :meth:`ChunkStore.write_stream` keeps:

- at most ``window`` (default 4 MiB, at least four maximal chunks) of not-yet-cut bytes, plus
  the block being added (a COPY row or a 1 MiB pipe read) and one joined copy while cutting;
- at most ``max_inflight`` chunks being hashed, compressed and uploaded by the shared pool
  (hashlib and zstandard release the GIL, so the pool uses both cores).

Peak per stream is therefore about ``2 * (window + block) + 2 * max_inflight * max_size``
(about 20 MiB with the defaults). The peaks are measured in :class:`StreamStats` so tests can
check them.

Reading streams a chunk list back in order (:meth:`ChunkStore.iter_chunks`), with a bounded
read-ahead, verifying every chunk's size and hash before handing it out: a missing object
raises :class:`ChunkMissing`, a damaged one :class:`ChunkCorrupt`.

On a store sealed for a cluster (:mod:`.sealing`), each compressed chunk is stored sealed under
the chain's data key and named by a keyed hash (HMAC-SHA256 under a key derived from the data
key) instead of its SHA-256; a chunk that fails authentication is :class:`ChunkCorrupt`.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import fastcdc
import zstandard

from .manifest import ChunkRef, chunk_key
from .objectstore import ObjectNotFound, ObjectStore
from .sealing import SealBroken

__all__ = [
    "ADAPTIVE_LEVELS",
    "DATA_CHUNKING",
    "KEY_CHUNKING",
    "PACK_CHUNKING",
    "CancelFlag",
    "ChunkCorrupt",
    "ChunkError",
    "ChunkMissing",
    "ChunkStore",
    "ChunkingParams",
    "StreamCancelled",
    "StreamResult",
    "StreamStats",
]


class ChunkError(Exception):
    """A chunk could not be read back intact."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{message}: {key}")
        self.key = key


class ChunkMissing(ChunkError):
    def __init__(self, key: str) -> None:
        super().__init__(key, "chunk missing")


class ChunkCorrupt(ChunkError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, f"chunk corrupt ({reason})")
        self.reason = reason


class StreamCancelled(Exception):
    """The writer's cancel flag was set."""


class CancelFlag(Protocol):
    """Anything with ``is_set()`` (a ``threading.Event``, or several combined)."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChunkingParams:
    min_size: int
    avg_size: int
    max_size: int

    @property
    def window(self) -> int:
        return max(4 * self.max_size, 4 << 20)


#: Table rows and archives: large chunks compress well and keep object counts low; an
#: incremental does not depend on small chunks (it stores changed rows, not a re-chunked table).
DATA_CHUNKING = ChunkingParams(min_size=128 << 10, avg_size=512 << 10, max_size=2 << 20)
#: Key sets: an insert/delete rewrites one chunk, so smaller chunks keep unchanged ranges shared.
KEY_CHUNKING = ChunkingParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)


#: Small tables (up to 1 MiB of heap) packed into shared chunks (see
#: ``postgres_streams.SmallTables``): small enough that a restore of one table reads little
#: besides it (at most 512 KiB on either side), large enough to compress well and to store
#: thousands of small tables in a few objects per megabyte.
PACK_CHUNKING = ChunkingParams(min_size=32 << 10, avg_size=128 << 10, max_size=512 << 10)


#: zstd levels tried on a stream's sample chunks (the first, then every ``RESAMPLE_EVERY``th);
#: the smallest output sets the level for the following chunks. Level 1 beats 3 on
#: high-entropy text (hashes, ids: fewer poor short matches), 3 beats 1 on natural text.
ADAPTIVE_LEVELS: tuple[int, ...] = (1, 3)
RESAMPLE_EVERY = 32


@dataclass(slots=True)
class StreamStats:
    """Peaks observed by ``write_stream`` (for tests and metrics)."""

    peak_buffered: int = 0
    peak_inflight: int = 0


@dataclass(slots=True)
class StreamResult:
    chunks: list[ChunkRef]
    size: int
    stats: StreamStats = field(default_factory=StreamStats)


class ChunkStore:
    """The chunks of one chain in one object store. Thread-safe; close() when done."""

    def __init__(
        self,
        store: ObjectStore,
        cluster_id: str,
        chain_id: str,
        *,
        level: int | None = None,
        known: Mapping[str, int] | None = None,
        workers: int = 4,
        max_inflight: int = 4,
    ) -> None:
        self.store = store
        self.cluster_id = cluster_id
        self.chain_id = chain_id
        self.level = level
        """Fixed zstd level, or ``None``: adaptive (see :data:`ADAPTIVE_LEVELS`)."""
        self.max_inflight = max(1, max_inflight)
        self._known: dict[str, int] = dict(known or {})
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="chunks")
        self.new_chunks = 0
        self.new_stored_bytes = 0
        self.reused_chunks = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def key(self, digest: str) -> str:
        return chunk_key(self.cluster_id, self.chain_id, digest)

    def name(self, raw: bytes, *, writing: bool) -> str:
        """A chunk's name: its SHA-256, or on a sealed store the chain's keyed hash of it."""
        sealer = self.store.sealer
        if sealer is None:
            return hashlib.sha256(raw).hexdigest()
        return sealer.chunk_name(self.cluster_id, self.chain_id, raw, writing=writing)

    def open_for_writing(self) -> None:
        """Make the chain ready for writing before any data is read: on a sealed store this
        creates a new chain's data key, and raises ``KeyUnavailable`` when the cluster has no
        usable key (nothing written)."""
        self.name(b"", writing=True)

    # ------------------------------------------------------------------ writing
    def _compress(self, raw: bytes, level: int) -> bytes:
        comps: dict[int, zstandard.ZstdCompressor] | None = getattr(self._local, "comps", None)
        if comps is None:
            comps = self._local.comps = {}
        comp = comps.get(level)
        if comp is None:
            comp = comps[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
        return comp.compress(raw)

    def _pick_level(self, raw: bytes) -> tuple[int, bytes]:
        """Compress a sample chunk at every adaptive level; the smallest output wins."""
        best: tuple[int, bytes] | None = None
        for level in ADAPTIVE_LEVELS:
            data = self._compress(raw, level)
            if best is None or len(data) < len(best[1]):
                best = (level, data)
        assert best is not None
        return best

    def store_chunk(
        self, raw: bytes, level: int | None = None, compressed: bytes | None = None
    ) -> ChunkRef:
        """Hash, compress and store one chunk unless the chain already holds it."""
        digest = self.name(raw, writing=True)
        with self._lock:
            stored = self._known.get(digest)
            if stored is not None:
                self.reused_chunks += 1
        if stored is not None:
            return ChunkRef(hash=digest, size=len(raw), stored=stored)
        if compressed is not None:
            data = compressed
        else:
            data = self._compress(raw, level or self.level or ADAPTIVE_LEVELS[-1])
        wrote = self.store.put_if_absent(self.key(digest), data)
        stored = self.store.stored_size(len(data))
        with self._lock:
            self._known[digest] = stored
            if wrote:
                self.new_chunks += 1
                self.new_stored_bytes += stored
            else:
                self.reused_chunks += 1
        return ChunkRef(hash=digest, size=len(raw), stored=stored)

    def write_stream(
        self,
        blocks: Iterable[bytes | bytearray | memoryview],
        params: ChunkingParams = DATA_CHUNKING,
        *,
        cancel: CancelFlag | None = None,
    ) -> StreamResult:
        """Chunk and store a stream of byte blocks; return its ordered chunk list.

        Raises ``objectstore.ObjectStoreError`` if a chunk cannot be stored and :class:`StreamCancelled`
        when ``cancel`` is set; chunks already stored stay (partial objects, see verify).
        """
        window = params.window
        pending: list[bytes] = []
        pending_len = 0
        inflight: deque[Future[ChunkRef]] = deque()
        refs: list[ChunkRef] = []
        stats = StreamStats()
        total = 0
        level = self.level
        count = 0

        def submit(raw: bytes) -> None:
            nonlocal level, count
            while len(inflight) >= self.max_inflight:
                refs.append(inflight.popleft().result())
            compressed = None
            if self.level is None and count % RESAMPLE_EVERY == 0:
                level, compressed = self._pick_level(raw)
            count += 1
            inflight.append(self._pool.submit(self.store_chunk, raw, level, compressed))
            stats.peak_inflight = max(stats.peak_inflight, len(inflight))

        def cut(final: bool) -> None:
            nonlocal pending, pending_len
            buf = pending[0] if len(pending) == 1 else b"".join(pending)
            pending = []
            size = len(buf)
            consumed = 0
            for chunk in fastcdc.fastcdc(
                buf,
                min_size=params.min_size,
                avg_size=params.avg_size,
                max_size=params.max_size,
            ):
                if not final and chunk.offset + params.max_size > size:
                    break  # this cut point could still move with more data
                submit(buf[chunk.offset : chunk.offset + chunk.length])
                consumed = chunk.offset + chunk.length
            if consumed < size:
                pending = [buf[consumed:]]
            pending_len = size - consumed

        try:
            for block in blocks:
                if cancel is not None and cancel.is_set():
                    raise StreamCancelled()
                if not block:
                    continue
                data = block if isinstance(block, bytes) else bytes(block)
                pending.append(data)
                pending_len += len(data)
                total += len(data)
                if pending_len > stats.peak_buffered:
                    stats.peak_buffered = pending_len
                if pending_len >= window:
                    cut(final=False)
            if pending_len:
                cut(final=True)
            while inflight:
                refs.append(inflight.popleft().result())
        except BaseException:
            for fut in inflight:
                fut.cancel()
            for fut in inflight:
                if not fut.cancelled():
                    with contextlib.suppress(Exception):
                        fut.result()
            raise
        return StreamResult(chunks=refs, size=total, stats=stats)

    # ------------------------------------------------------------------ reading
    def read_chunk(self, ref: ChunkRef) -> bytes:
        """The raw bytes of ``ref``, verified (size and hash; on a sealed store, authenticated)."""
        key = self.key(ref.hash)
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            raise ChunkMissing(key) from None
        except SealBroken as exc:
            raise ChunkCorrupt(key, exc.reason) from None
        try:
            raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=ref.size)
        except zstandard.ZstdError as exc:
            raise ChunkCorrupt(key, f"zstd: {exc}") from None
        if len(raw) != ref.size:
            raise ChunkCorrupt(key, f"size {len(raw)} != {ref.size}")
        if self.name(raw, writing=False) != ref.hash:
            kind = "sha256" if self.store.sealer is None else "name (keyed hash)"
            raise ChunkCorrupt(key, f"{kind} mismatch")
        return raw

    def iter_chunks(self, refs: Sequence[ChunkRef], *, prefetch: int = 4) -> Iterator[bytes]:
        """Yield the raw bytes of ``refs`` in order, reading up to ``prefetch`` ahead."""
        if not refs:
            return
        ahead: deque[Future[bytes]] = deque()
        it = iter(refs)
        try:
            for ref in it:
                ahead.append(self._pool.submit(self.read_chunk, ref))
                if len(ahead) >= max(1, prefetch):
                    break
            while ahead:
                data = ahead.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    ahead.append(self._pool.submit(self.read_chunk, nxt))
                yield data
        finally:
            for fut in ahead:
                fut.cancel()
