"""One object-store abstraction for every region store, chosen by URL (backed by ``obstore``).

URLs:

- ``file:///abs/dir`` or a plain path: a local directory (created if missing);
- ``s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&allow_http=true``: any
  S3-compatible store. Credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
  (and ``AWS_SESSION_TOKEN``) in the environment, or ``access_key_id`` / ``secret_access_key``
  query parameters; they never appear in :attr:`ObjectStore.url` or ``repr``;
- ``memory://`` : an in-process store (unit tests only).

Write discipline (what makes write-once / object-lock buckets work): objects are never
overwritten. :meth:`ObjectStore.put_if_absent` stores content-addressed chunks (a second put of
the same key is a no-op), :meth:`ObjectStore.put_new` stores manifests and fails if the key
exists. Both use the store's atomic create-if-absent (``If-None-Match: *`` on S3, a
no-replace rename on a local disk).

Encryption at rest sits behind this class: a store *sealed* for a cluster
(:meth:`ObjectStore.sealed_with`, :func:`.sealing.sealed_store`) seals every object it writes
and opens every object it reads through its :class:`Sealer`; the data plane's readers and
writers take it like any other store.

The class is safe to share between threads: obstore's stores are thread-safe and release the
GIL during I/O; the only mutable state here (statistics) is guarded by a lock.
"""

from __future__ import annotations

import builtins
import copy
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError, NotSupportedError
from obstore.store import LocalStore, MemoryStore, S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config

__all__ = [
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "Sealer",
    "open_store",
]

_TRUE = {"1", "true", "yes", "on"}


DELETE_BATCH = 500
"""Keys per delete request (S3's DeleteObjects takes at most 1,000)."""


class ObjectStoreError(Exception):
    """Any failure talking to the object store (the message never contains credentials)."""


class ObjectExists(ObjectStoreError):
    """``put_new`` found the key already present."""


class ObjectNotFound(ObjectStoreError):
    """``get`` found no object at the key."""


class Sealer(Protocol):
    """Encryption at rest behind the store (:class:`.sealing.ClusterSealer`)."""

    overhead: int
    """Bytes a sealed object has beyond its content."""

    def seal(self, key: str, data: bytes | memoryview) -> bytes | memoryview:
        """What is stored at ``key`` for ``data``."""
        ...

    def open(self, key: str, data: bytes) -> bytes:
        """The content of the object stored at ``key`` (authenticated)."""
        ...

    def chunk_name(self, cluster_id: str, chain_id: str, raw: bytes, *, writing: bool) -> str:
        """The name (64 hex digits) of a chunk of raw bytes ``raw`` in the chain."""
        ...


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


@dataclass(slots=True)
class StoreStats:
    puts: int = 0
    put_bytes: int = 0
    skipped_existing: int = 0
    gets: int = 0
    get_bytes: int = 0


def _is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, NotFoundError | FileNotFoundError)


class ObjectStore:
    """A region's object store (see module docstring)."""

    def __init__(self, url: str) -> None:
        self._store: Any
        self.kind: Literal["local", "s3", "memory"]
        self.url = url
        self._lock = threading.Lock()
        self.stats = StoreStats()
        self.sealer: Sealer | None = None
        """Set on a store sealed for a cluster (:meth:`sealed_with`): objects are sealed on
        write and opened on read."""
        self.before_write: Callable[[], None] | None = None
        """Set on a store fenced for a worker (:meth:`fenced_by`): called before every write,
        it raises to refuse the write (the worker lost its lease)."""
        # Some S3-compatible servers lack If-None-Match; then fall back to HEAD + PUT.
        self._conditional_put = True
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
            path = Path(unquote(parts.path) if scheme == "file" else url).expanduser().absolute()
            path.mkdir(parents=True, exist_ok=True)
            self._store = LocalStore(str(path), mkdir=True)
            self.kind = "local"
            self.url = path.as_uri()
        elif scheme == "s3":
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            bucket = parts.netloc
            if not bucket:
                raise ObjectStoreError(f"no bucket in S3 URL {self._redacted(url)!r}")
            prefix = parts.path.strip("/") or None
            config: dict[str, Any] = {}
            key_id = query.get("access_key_id") or os.environ.get("AWS_ACCESS_KEY_ID")
            secret = query.get("secret_access_key") or os.environ.get("AWS_SECRET_ACCESS_KEY")
            token = query.get("session_token") or os.environ.get("AWS_SESSION_TOKEN")
            if key_id and secret:
                config["access_key_id"] = key_id
                config["secret_access_key"] = secret
                if token:
                    config["session_token"] = token
            region = (
                query.get("region")
                or os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
            )
            if region:
                config["region"] = region
            if "endpoint" in query:
                config["endpoint"] = query["endpoint"]
            if query.get("virtual_hosted_style", "").lower() in _TRUE:
                config["virtual_hosted_style_request"] = True
            client_options: dict[str, Any] = {}
            if query.get("allow_http", "").lower() in _TRUE:
                client_options["allow_http"] = True
            try:
                self._store = S3Store(
                    bucket,
                    prefix=prefix,
                    config=cast("S3Config", config),
                    client_options=cast("ClientConfig", client_options),
                )
            except Exception as exc:
                raise ObjectStoreError(
                    f"cannot open S3 store {self._redacted(url)}: {type(exc).__name__}"
                ) from None
            self.kind = "s3"
            self.url = self._redacted(url)
        elif scheme == "memory":
            self._store = MemoryStore()
            self.kind = "memory"
        else:
            raise ObjectStoreError(f"unsupported object store URL scheme {scheme!r}")

    @staticmethod
    def _redacted(url: str) -> str:
        parts = urlsplit(url)
        if not parts.query:
            return url
        kept = [
            item
            for item in parts.query.split("&")
            if item.split("=", 1)[0] not in ("access_key_id", "secret_access_key", "session_token")
        ]
        return parts._replace(query="&".join(kept)).geturl()

    def __repr__(self) -> str:
        sealed = ", sealed" if self.sealer is not None else ""
        return f"ObjectStore({self.url!r}{sealed})"

    def fenced_by(self, before_write: Callable[[], None]) -> ObjectStore:
        """This store (the same connection and statistics) calling ``before_write`` before
        every object it writes: a worker's fence, which raises to refuse a write made after
        the worker lost its lease."""
        view = copy.copy(self)
        view.before_write = before_write
        return view

    def sealed_with(self, sealer: Sealer | None) -> ObjectStore:
        """This store (the same connection and statistics) sealing and opening its objects
        with ``sealer`` (``None``: the raw objects)."""
        view = copy.copy(self)
        view.sealer = sealer
        return view

    def stored_size(self, size: int) -> int:
        """The size of the object that stores ``size`` bytes of content."""
        return size if self.sealer is None else size + self.sealer.overhead

    # ------------------------------------------------------------------ writes
    def put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        """Store ``data`` at ``key`` unless an object is already there.

        Returns ``True`` when this call wrote the object, ``False`` when it already existed (for
        content-addressed keys, that is the same content: a no-op).
        """
        try:
            self._put_create(key, self._sealed(key, data))
        except ObjectExists:
            with self._lock:
                self.stats.skipped_existing += 1
            return False
        return True

    def put_new(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` at ``key``; raise :class:`ObjectExists` if the key is taken."""
        self._put_create(key, self._sealed(key, data))

    def _sealed(self, key: str, data: bytes | memoryview) -> bytes | memoryview:
        return data if self.sealer is None else self.sealer.seal(key, data)

    def _put_create(self, key: str, data: bytes | memoryview) -> None:
        if self.before_write is not None:
            self.before_write()
        if not self._conditional_put and self.exists(key):
            raise ObjectExists(key)
        try:
            obstore.put(
                self._store,
                key,
                data,
                mode="create" if self._conditional_put else "overwrite",
                use_multipart=False,
            )
        except AlreadyExistsError:
            raise ObjectExists(key) from None
        except NotSupportedError:
            if not self._conditional_put:
                raise ObjectStoreError(f"put {key}: not supported by the store") from None
            self._conditional_put = False
            self._put_create(key, data)
            return
        except Exception as exc:
            raise ObjectStoreError(f"put {key} failed: {_describe(exc)}") from None
        with self._lock:
            self.stats.puts += 1
            self.stats.put_bytes += len(data)

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes:
        try:
            data = bytes(obstore.get(self._store, key).bytes())
        except Exception as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(key) from None
            raise ObjectStoreError(f"get {key} failed: {_describe(exc)}") from None
        with self._lock:
            self.stats.gets += 1
            self.stats.get_bytes += len(data)
        return data if self.sealer is None else self.sealer.open(key, data)

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._store, key)
        except Exception as exc:
            if _is_not_found(exc):
                return False
            raise ObjectStoreError(f"head {key} failed: {_describe(exc)}") from None
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with the path ``prefix`` (segment-wise), any order."""
        try:
            for batch in obstore.list(self._store, prefix=prefix.rstrip("/") or None):
                for meta in batch:
                    yield ObjectInfo(
                        key=str(meta["path"]),
                        size=int(meta["size"]),
                        last_modified=meta["last_modified"],
                    )
        except Exception as exc:
            if _is_not_found(exc):
                return
            raise ObjectStoreError(f"list {prefix} failed: {_describe(exc)}") from None

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """The "directories" right under ``prefix`` (one delimited listing), as full prefixes."""
        try:
            listed = obstore.list_with_delimiter(self._store, prefix=prefix.rstrip("/") or None)
        except Exception as exc:
            if _is_not_found(exc):
                return []
            raise ObjectStoreError(f"list {prefix} failed: {_describe(exc)}") from None
        return [str(p) for p in listed["common_prefixes"]]

    # ------------------------------------------------------------------ deletes
    def delete(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` (missing ones are ignored), :data:`DELETE_BATCH` per request;
        returns how many were requested."""
        batch: builtins.list[str] = []
        count = 0
        for key in keys:
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                count += self._delete_batch(batch)
                batch = []
        if batch:
            count += self._delete_batch(batch)
        return count

    def _delete_batch(self, keys: builtins.list[str]) -> int:
        try:
            obstore.delete(self._store, keys)
        except Exception as exc:
            if not _is_not_found(exc):
                raise ObjectStoreError(f"delete failed: {_describe(exc)}") from None
            for key in keys:  # a local store stops at the first missing file
                try:
                    obstore.delete(self._store, key)
                except Exception as inner:
                    if not _is_not_found(inner):
                        raise ObjectStoreError(f"delete {key} failed: {_describe(inner)}") from None
        return len(keys)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (a chain, a cluster); returns the count."""
        if not prefix.strip("/"):
            raise ObjectStoreError("refusing to delete the whole store")
        return self.delete(info.key for info in list(self.list(prefix)))


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]


def open_store(url: str) -> ObjectStore:
    """The :class:`ObjectStore` for ``url`` (see module docstring)."""
    return ObjectStore(url)
