"""The table of contents of a ``pg_dump -Fc`` archive, read exactly.

``pg_restore -l`` prints the same entries, but as one line each with the object's schema, name
and owner separated by spaces, which names containing spaces make ambiguous. A TABLE restore
chooses entries by name and follows their dependencies, so it reads the TOC itself: the custom
format's header and TOC are a documented, stable layout (``pg_backup_archiver.c``: ``ReadHead``,
``ReadToc``) of integers (a sign byte, then ``int_size`` bytes, least significant first) and
strings (a length, ``-1`` for NULL, then the bytes). Archive versions 1.12 (PostgreSQL 11) to
1.16 (PostgreSQL 17) are read; the entries' order is the archive's, which ``pg_dump`` sorted so
that every entry comes after what it depends on (``pg_restore`` restores in that order too).
Only the TOC is read, never the data blocks, so the archive's compression does not matter.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["ArchiveError", "TocEntry", "read_toc", "read_toc_from"]

_MAGIC = b"PGDMP"
_SECTIONS = {1: "NONE", 2: "PRE_DATA", 3: "DATA", 4: "POST_DATA"}


class ArchiveError(Exception):
    """The file is not a custom-format archive of a version this reader knows."""


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    """The entry's kind as ``pg_dump`` names it: ``TABLE``, ``FK CONSTRAINT``, ``ACL``..."""
    namespace: str
    """Its schema (``""`` when it has none)."""
    tag: str
    """Its name: a relation's or type's name, ``table constraint`` for a constraint,
    ``name(argument types)`` for a function, ``TABLE name`` for a comment or ACL..."""
    owner: str
    section: str
    """``PRE_DATA``, ``DATA``, ``POST_DATA`` or ``NONE`` (comments, ACLs: they follow their
    object)."""
    defn: str
    """The SQL that creates it (what ``pg_restore`` runs, owner statements aside)."""
    tablespace: str
    tableam: str
    catalog_oid: int
    """The source's ``pg_class`` oid of the catalog holding the object (``pg_class`` is 1259)."""
    oid: int
    """The object's oid in the source database."""
    dependencies: tuple[int, ...]


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.int_size = 4
        self.off_size = 8

    def byte(self) -> int:
        b = self.f.read(1)
        if not b:
            raise ArchiveError("the archive ends inside its table of contents")
        return b[0]

    def int(self) -> int:
        sign = self.byte()
        raw = self.f.read(self.int_size)
        if len(raw) != self.int_size:
            raise ArchiveError("the archive ends inside its table of contents")
        value = int.from_bytes(raw, "little")
        return -value if sign else value

    def str(self) -> str | None:
        length = self.int()
        if length < 0:
            return None
        raw = self.f.read(length)
        if len(raw) != length:
            raise ArchiveError("the archive ends inside its table of contents")
        return raw.decode("utf-8", "surrogateescape")

    def offset(self) -> None:
        self.byte()  # the data state flag
        self.f.read(self.off_size)


def read_toc(path: Path) -> list[TocEntry]:
    """Every TOC entry of the custom-format archive at ``path``, in the archive's order."""
    with path.open("rb") as f:
        return _read(_Reader(f))


def read_toc_from(blocks: Iterable[bytes]) -> list[TocEntry]:
    """The same, from the archive's bytes as they stream: reading stops after the TOC, so
    the data after it (large objects) is never fetched."""
    return _read(_Reader(io.BufferedReader(_Blocks(iter(blocks)))))


class _Blocks(io.RawIOBase):
    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks = blocks
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self.pending:
            block = next(self.blocks, None)
            if block is None:
                return 0
            self.pending = block
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def _read(r: _Reader) -> list[TocEntry]:
    if r.f.read(5) != _MAGIC:
        raise ArchiveError("not a pg_dump custom-format archive")
    version = (r.byte(), r.byte(), r.byte())
    if not (1, 12) <= version[:2] <= (1, 16):
        raise ArchiveError(f"archive version {version[0]}.{version[1]} is not supported")
    r.int_size = r.byte()
    r.off_size = r.byte()
    if r.byte() != 1:  # archCustom
        raise ArchiveError("not a custom-format archive")
    if version[:2] >= (1, 15):
        r.byte()  # compression algorithm
    else:
        r.int()  # compression level
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        r.int()
    r.str()  # database name
    r.str()  # server version
    r.str()  # pg_dump version
    entries = []
    for _ in range(r.int()):
        dump_id = r.int()
        r.int()  # had a data dumper
        catalog_oid = r.str() or "0"
        oid = r.str() or "0"
        tag = r.str() or ""
        desc = r.str() or ""
        section = _SECTIONS.get(r.int(), "NONE")
        defn = r.str() or ""
        r.str()  # drop statement
        r.str()  # COPY statement
        namespace = r.str() or ""
        tablespace = r.str() or ""
        tableam = (r.str() or "") if version[:2] >= (1, 14) else ""
        if version[:2] >= (1, 16):
            r.int()  # relkind
        owner = r.str() or ""
        r.str()  # "false": tables WITH OIDS, gone since PostgreSQL 12
        dependencies = []
        while (dep := r.str()) is not None:
            dependencies.append(int(dep))
        r.offset()  # where the entry's data is (custom format)
        entries.append(
            TocEntry(
                dump_id=dump_id,
                desc=desc,
                namespace=namespace,
                tag=tag,
                owner=owner,
                section=section,
                defn=defn,
                tablespace=tablespace,
                tableam=tableam,
                catalog_oid=int(catalog_oid),
                oid=int(oid),
                dependencies=tuple(dependencies),
            )
        )
    return entries
