"""What a TABLE restore writes: the chosen tables with everything ``pg_dump`` would recreate
for them, and the objects they need that the target lacks, from the backup's own archive.

The source database's schema archive (``pg_dump -Fc``) lists every object as a TOC entry with
its dependencies (:mod:`.archive_toc`). A TABLE restore takes, in the archive's order (which
``pg_dump`` sorted by dependency):

1. the chosen relations: the named tables, the partitions of a partitioned one (at every
   level), named views and sequences, and the sequences the tables own (``serial``, identity);
2. what belongs to them: defaults, constraints, indexes, triggers, rules, policies and the
   row-security flag, extended statistics, partition attachments, ``OWNED BY``; and, for every
   object it creates, its comments, security labels and grants;
3. what they depend on that the target lacks, created from the backup (schemas, types,
   domains, enums, functions their defaults, checks, triggers and policies call, collations,
   extensions...). What the target already has is used as it is, after checking that its
   definition is the backup's: a type, domain or function that differs is refused by name.

Relations it does not restore must be in the target: a foreign key to a table that is
neither restored nor in the target is refused (``skip_missing_foreign_keys``: left out), a
default using a sequence that is neither restored nor in the target is refused
(``skip_missing_sequences``: the default is left out; a request may also name the sequence),
a named view reading a relation missing both ways is refused (``skip_missing_views``: left
out). A partition whose parent is neither restored nor in the target, or an inheritance child
without its parent, is refused with the reason; a partition is attached to a parent the target
has after its own indexes exist (``ATTACH PARTITION`` then attaches them). A relation name
already taken in the target is refused before anything is written.

Owners are kept where the role exists and the restoring role may give objects to it, grants
where the grantee exists; whatever is left out (an owner, a grant, a foreign key, a default,
a view, a tablespace) is listed in the result, never only logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .archive_toc import TocEntry
from .sql import quote_ident

__all__ = ["TableRestore", "TableRestoreRequest", "plan_table_restore"]

RELATIONS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE", "SEQUENCE"})
_TABLE_LIKE = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"})
_OWNED_BY_TAG = frozenset(
    {"CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "RULE", "POLICY", "DEFAULT", "CHECK CONSTRAINT"}
)
"""Entries of a relation whose tag is ``relation name``."""
_OWNED_BY_DEP = frozenset({"INDEX", "STATISTICS", "ROW SECURITY"})
"""Entries of a relation that depend on it alone among relations."""
_FOLLOWERS = frozenset({"COMMENT", "ACL", "SECURITY LABEL"})
_KEY_PARTS = frozenset({"CONSTRAINT", "INDEX", "FK CONSTRAINT", "DEFAULT", "CHECK CONSTRAINT"})
"""Entries that are parts of a relation: a dependency on one is a dependency on it."""
_COMPARED = frozenset({"TYPE", "DOMAIN", "FUNCTION", "PROCEDURE"})
_OWNER_KIND = {
    "TABLE": "TABLE",
    "SEQUENCE": "SEQUENCE",
    "VIEW": "VIEW",
    "MATERIALIZED VIEW": "MATERIALIZED VIEW",
    "FOREIGN TABLE": "FOREIGN TABLE",
    "TYPE": "TYPE",
    "DOMAIN": "DOMAIN",
    "FUNCTION": "FUNCTION",
    "PROCEDURE": "PROCEDURE",
    "AGGREGATE": "AGGREGATE",
    "SCHEMA": "SCHEMA",
    "COLLATION": "COLLATION",
    "CONVERSION": "CONVERSION",
    "TEXT SEARCH DICTIONARY": "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH CONFIGURATION": "TEXT SEARCH CONFIGURATION",
}
_CREATES_RELATION = frozenset({"TABLE", "SEQUENCE", "VIEW", "MATERIALIZED VIEW", "INDEX"})
_FIXED_SETTINGS = (
    "SET check_function_bodies = false",
    "SET xmloption = content",
    "SET client_min_messages = warning",
    "SET row_security = off",
)


class TableRestoreRefused(Exception):
    """Refused before anything is written: ``code`` (``MISSING_DEPENDENCY``,
    ``DEFINITION_CONFLICT``, ``TABLE_EXISTS``, ``NOT_FOUND``) and a message naming what."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TableRestoreRequest:
    tables: Sequence[tuple[str, str]]
    views: Sequence[tuple[str, str]] = ()
    sequences: Sequence[tuple[str, str]] = ()
    skip_missing_foreign_keys: bool = False
    skip_missing_sequences: bool = False
    skip_missing_views: bool = False


@dataclass
class TableRestore:
    """The statements, in the order they run in the target's one transaction."""

    settings: list[str] = field(default_factory=list)
    pre_data: list[str] = field(default_factory=list)
    """Before the rows: schemas, types, functions, tables, sequences, comments, owners."""
    post_data: list[str] = field(default_factory=list)
    """After the rows and sequence values: indexes, constraints, triggers, rules, policies."""
    attach: list[str] = field(default_factory=list)
    """Partitions attached to parents the target has (after their own indexes exist)."""
    acl: list[str] = field(default_factory=list)
    tables: list[tuple[str, str]] = field(default_factory=list)
    """Relations created (tables get their rows from the chain when it holds them)."""
    sequences: list[tuple[str, str]] = field(default_factory=list)
    """Sequences created, whose values come from the backup."""
    restored: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def _label(entry: TocEntry) -> str:
    kind = entry.desc.lower()
    return f"{kind} {entry.namespace}.{entry.tag}" if entry.namespace else f"{kind} {entry.tag}"


def _qualified(entry: TocEntry) -> str:
    """The entry's object as SQL (``pg_dump``'s tags are unquoted names)."""
    if entry.desc in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
        name, _, args = entry.tag.partition("(")
        return f"{quote_ident(entry.namespace)}.{quote_ident(name)}({args}"
    if not entry.namespace:
        return quote_ident(entry.tag)
    return f"{quote_ident(entry.namespace)}.{quote_ident(entry.tag)}"


class _Target:
    """What the target database (and the scratch copy of the source schema) holds, asked with
    ``search_path`` empty so that every name prints qualified, as in the archive."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.execute("SELECT pg_catalog.set_config('search_path', '', true)")
        self.roles = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles")}
        self.settable = {
            str(r[0])
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER')"
            )
        }
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = session_user").fetchone()
        self.superuser = bool(row and row[0])
        self.tablespaces = {str(r[0]) for r in conn.execute("SELECT spcname FROM pg_tablespace")}

    def one(self, sql: str, *args: Any) -> Any:
        row = self.conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def relkind(self, schema: str, name: str) -> str | None:
        kind = self.one(
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            schema,
            name,
        )
        return None if kind is None else str(kind)

    def has(self, entry: TocEntry) -> bool | None:
        """Whether the object exists (``None``: a kind this cannot tell)."""
        d = entry.desc
        if d in RELATIONS:
            return self.relkind(entry.namespace, entry.tag) is not None
        if d == "SCHEMA":
            return self.one("SELECT 1 FROM pg_namespace WHERE nspname = %s", entry.tag) is not None
        if d in ("TYPE", "DOMAIN"):
            return self._type_oid(entry) is not None
        if d in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
            return self.one("SELECT to_regprocedure(%s)", _qualified(entry)) is not None
        if d == "EXTENSION":
            return self.one("SELECT 1 FROM pg_extension WHERE extname = %s", entry.tag) is not None
        if d == "COLLATION":
            return (
                self.one(
                    "SELECT 1 FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace"
                    " WHERE n.nspname = %s AND c.collname = %s",
                    entry.namespace,
                    entry.tag,
                )
                is not None
            )
        return None

    def _type_oid(self, entry: TocEntry) -> int | None:
        oid = self.one(
            "SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = %s AND t.typname = %s",
            entry.namespace,
            entry.tag,
        )
        return None if oid is None else int(oid)

    def definition(self, entry: TocEntry) -> str | None:
        """A comparable text of a type's, domain's or function's definition."""
        if entry.desc in ("FUNCTION", "PROCEDURE"):
            value = self.one("SELECT pg_get_functiondef(to_regprocedure(%s))", _qualified(entry))
            return None if value is None else str(value)
        oid = self._type_oid(entry)
        if oid is None:
            return None
        value = self.one(
            "SELECT concat_ws(' | ', t.typtype::text,"
            " format_type(NULLIF(t.typbasetype, 0), NULLIF(t.typtypmod, -1)),"
            " CASE WHEN t.typnotnull THEN 'NOT NULL' END, t.typdefault,"
            " (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) FROM pg_enum e"
            "  WHERE e.enumtypid = t.oid),"
            " (SELECT string_agg(quote_ident(a.attname) || ' ' ||"
            "   format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)"
            "  FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0"
            "  AND NOT a.attisdropped),"
            " (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid),"
            " (SELECT string_agg(pg_get_constraintdef(c.oid), ', ' ORDER BY c.conname)"
            "  FROM pg_constraint c WHERE c.contypid = t.oid))"
            " FROM pg_type t WHERE t.oid = %s",
            oid,
        )
        return None if value is None else str(value)

    def defaults_using(self, table: TocEntry, sequence: TocEntry) -> list[tuple[str, str]]:
        """(column, default expression as pg_dump prints it) of ``table``'s defaults that use
        ``sequence``."""
        rows = self.conn.execute(
            "SELECT a.attname, pg_get_expr(ad.adbin, ad.adrelid) FROM pg_attrdef ad"
            " JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum"
            " JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid"
            " AND d.refclassid = 'pg_class'::regclass"
            " WHERE ad.adrelid = to_regclass(%s) AND d.refobjid = to_regclass(%s)"
            " ORDER BY a.attnum",
            (_qualified(table), _qualified(sequence)),
        ).fetchall()
        return [(str(c), str(e)) for c, e in rows]


@dataclass
class _Graph:
    entries: list[TocEntry]
    by_id: dict[int, TocEntry] = field(init=False)
    position: dict[int, int] = field(init=False)
    relation: dict[tuple[str, str], TocEntry] = field(init=False)
    owned: dict[int, list[TocEntry]] = field(init=False)
    """Relation → the entries that belong to it."""
    followers: dict[int, list[TocEntry]] = field(init=False)
    """Object → its comments, security labels and grants."""
    attach_of: dict[int, TocEntry] = field(init=False)
    """Partition → its ``TABLE ATTACH`` entry."""
    parent_of: dict[int, int] = field(init=False)
    children: dict[int, list[int]] = field(init=False)
    owned_sequences: dict[int, list[int]] = field(init=False)
    owner_of: dict[int, int] = field(init=False)
    """Owned sequence → its table."""
    belongs_to: dict[int, int] = field(init=False)
    """Entry → the relation it belongs to."""

    def __post_init__(self) -> None:
        self.by_id = {e.dump_id: e for e in self.entries}
        self.position = {e.dump_id: i for i, e in enumerate(self.entries)}
        self.relation = {(e.namespace, e.tag): e for e in self.entries if e.desc in RELATIONS}
        self.owned, self.followers, self.attach_of = {}, {}, {}
        self.parent_of, self.children, self.owned_sequences, self.owner_of = {}, {}, {}, {}
        self.belongs_to = {}
        for e in self.entries:
            rels = [
                self.by_id[d] for d in dict.fromkeys(e.dependencies) if self._is(d, _TABLE_LIKE)
            ]
            owner: TocEntry | None = None
            if e.desc in _FOLLOWERS and e.dependencies:
                self.followers.setdefault(e.dependencies[0], []).append(e)
                continue
            if e.desc in _OWNED_BY_TAG:
                matching = [
                    r for r in rels if r.namespace == e.namespace and e.tag.startswith(r.tag + " ")
                ]
                owner = max(matching, key=lambda r: len(r.tag), default=None)
            elif e.desc in _OWNED_BY_DEP:
                same = [r for r in rels if r.namespace == e.namespace] or rels
                owner = same[0] if len(same) == 1 else None
                if e.desc == "ROW SECURITY":
                    owner = next((r for r in rels if r.tag == e.tag), owner)
            elif e.desc == "TABLE ATTACH":
                child = next(
                    (r for r in rels if r.tag == e.tag and r.namespace == e.namespace), None
                )
                parent = next((r for r in rels if r is not child), None)
                if child is not None and parent is not None:
                    self.attach_of[child.dump_id] = e
                    self.parent_of[child.dump_id] = parent.dump_id
                    self.children.setdefault(parent.dump_id, []).append(child.dump_id)
                owner = child
            elif e.desc == "INDEX ATTACH":
                # Belongs to the partition (needs the parent's index: a dependency).
                owner = next(
                    (r for r in rels if self.parent_of.get(r.dump_id) in e.dependencies), None
                )
            elif e.desc == "SEQUENCE" and rels:
                owner = rels[0]  # owned by a table (serial or identity column)
                self.owned_sequences.setdefault(owner.dump_id, []).append(e.dump_id)
                self.owner_of[e.dump_id] = owner.dump_id
                continue
            elif e.desc == "SEQUENCE OWNED BY":
                # Belongs to its sequence; the table it names owns the sequence (pg_dump 15
                # records that on the SEQUENCE entry, older versions here).
                owner = next(
                    (self.by_id[d] for d in e.dependencies if self._is(d, {"SEQUENCE"})), None
                )
                if owner is not None and rels and owner.dump_id not in self.owner_of:
                    self.owned_sequences.setdefault(rels[0].dump_id, []).append(owner.dump_id)
                    self.owner_of[owner.dump_id] = rels[0].dump_id
            if owner is not None:
                self.owned.setdefault(owner.dump_id, []).append(e)
                self.belongs_to[e.dump_id] = owner.dump_id

    def _is(self, dump_id: int, descs: Iterable[str]) -> bool:
        entry = self.by_id.get(dump_id)
        return entry is not None and entry.desc in descs


def _partition_tree(graph: _Graph, root: int) -> list[int]:
    out = [root]
    for child in graph.children.get(root, []):
        out += _partition_tree(graph, child)
    return out


def plan_table_restore(
    entries: Sequence[TocEntry],
    request: TableRestoreRequest,
    target_conn: psycopg.Connection[Any],
    scratch_conn: psycopg.Connection[Any],
    database: str,
) -> TableRestore:
    """Choose and order what a TABLE restore runs in ``target_conn``'s database (nothing is
    written here). Raises :class:`TableRestoreRefused` with every problem found."""
    graph = _Graph(list(entries))
    target = _Target(target_conn)
    scratch = _Target(scratch_conn)
    out = TableRestore()

    def find(kinds: frozenset[str], schema: str, name: str, what: str) -> TocEntry:
        entry = graph.relation.get((schema, name))
        if entry is None or entry.desc not in kinds:
            raise TableRestoreRefused("NOT_FOUND", f"{what} {schema}.{name} is not in the backup")
        return entry

    # 1. The relations: named tables with their partitions, views, sequences, owned sequences.
    chosen: dict[int, TocEntry] = {}
    for schema, name in request.tables:
        for rel in _partition_tree(
            graph, find(frozenset({"TABLE"}), schema, name, "table").dump_id
        ):
            chosen[rel] = graph.by_id[rel]
    views = {
        find(frozenset({"VIEW", "MATERIALIZED VIEW"}), s, n, "view").dump_id
        for s, n in request.views
    }
    for view in views:
        chosen[view] = graph.by_id[view]
    for schema, name in request.sequences:
        seq = find(frozenset({"SEQUENCE"}), schema, name, "sequence")
        chosen[seq.dump_id] = seq
    for rel in list(chosen):
        for owned in graph.owned_sequences.get(rel, []):
            chosen[owned] = graph.by_id[owned]

    # 2. What belongs to them.
    included: dict[int, TocEntry] = dict(chosen)
    for rel in chosen:
        for e in graph.owned.get(rel, []):
            included[e.dump_id] = e

    # 3. Their relations and sequences: restored, in the target, refused or left out.
    missing: dict[str, list[str]] = {}
    excluded: set[int] = set()
    deferred: set[int] = set()
    inline_defaults: dict[int, list[tuple[str, str, TocEntry]]] = {}

    def in_target(entry: TocEntry) -> bool:
        return target.has(entry) is True

    def relation_of(entry: TocEntry) -> TocEntry | None:
        owner = graph.belongs_to.get(entry.dump_id)
        return None if owner is None else graph.by_id[owner]

    seen: set[tuple[int, int]] = set()
    changed = True
    while changed:  # a skipped view can make another view's relation missing
        changed = False
        for e in list(included.values()):
            if e.dump_id in excluded:
                continue
            for d in dict.fromkeys(e.dependencies):
                dep = graph.by_id.get(d)
                if dep is not None and dep.desc in _KEY_PARTS:
                    dep = relation_of(dep) or dep
                if dep is None or (e.dump_id, dep.dump_id) in seen:
                    continue
                if dep.dump_id in included and dep.dump_id not in excluded:
                    continue
                seen.add((e.dump_id, dep.dump_id))
                if dep.desc in _TABLE_LIKE:
                    changed |= _relation_dependency(
                        graph, e, dep, request, in_target, missing, excluded, deferred, out
                    )
                elif dep.desc == "SEQUENCE":
                    _sequence_dependency(
                        graph, e, dep, request, in_target, scratch, missing, excluded,
                        inline_defaults, out,
                    )  # fmt: skip
    problems = [f"{what}: {', '.join(names)}" for what, names in missing.items() if names]
    if problems:
        raise TableRestoreRefused("MISSING_DEPENDENCY", "; ".join(problems))
    for dump_id in excluded:
        included.pop(dump_id, None)
        for e in graph.owned.get(dump_id, []):
            included.pop(e.dump_id, None)
    if not any(e.desc in _TABLE_LIKE | {"SEQUENCE"} for e in included.values()):
        raise TableRestoreRefused(
            "MISSING_DEPENDENCY",
            "every view named was skipped (skip_missing_views): nothing left to restore",
        )

    # 4. What they depend on that the target lacks, from the backup; the rest is used as is.
    conflicts: list[str] = []
    work = list(included.values())
    while work:
        e = work.pop()
        for d in e.dependencies:
            dep = graph.by_id.get(d)
            if dep is None or d in included or dep.desc in _TABLE_LIKE | _KEY_PARTS:
                continue
            if dep.desc in ("SEQUENCE", "TABLE ATTACH", "INDEX ATTACH") or dep.section == "DATA":
                continue
            if dep.desc in ("ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE"):
                continue
            exists = target.has(dep)
            if exists:
                if dep.desc in _COMPARED:
                    ours, theirs = scratch.definition(dep), target.definition(dep)
                    if ours != theirs:
                        conflicts.append(
                            f"{_label(dep)} (backup: {ours}; database {database}: {theirs})"
                        )
                        continue
                if dep.desc != "SCHEMA":
                    out.left_out.append(
                        f"{_label(dep)}: database {database} has it (same definition); "
                        "used as it is"
                    )
                continue
            included[d] = dep
            work.append(dep)
    if conflicts:
        raise TableRestoreRefused(
            "DEFINITION_CONFLICT",
            f"database {database} already has, with another definition: {'; '.join(conflicts)}",
        )
    for e in list(included.values()):
        for f in graph.followers.get(e.dump_id, []):
            included[f.dump_id] = f

    # 5. Names the target already uses.
    taken = []
    for e in included.values():
        if e.desc in _CREATES_RELATION or (e.desc == "CONSTRAINT" and "PRIMARY KEY" in e.defn):
            name = e.tag.split(" ", 1)[1] if e.desc == "CONSTRAINT" else e.tag
            if target.relkind(e.namespace, name) is not None:
                taken.append(f"{e.namespace}.{name}")
        elif e.desc == "CONSTRAINT" and " UNIQUE " in f" {e.defn} ":
            name = e.tag.split(" ", 1)[1]
            if target.relkind(e.namespace, name) is not None:
                taken.append(f"{e.namespace}.{name}")
    if taken:
        raise TableRestoreRefused(
            "TABLE_EXISTS",
            f"{', '.join(sorted(set(taken)))} already exist(s) in database {database}",
        )

    # 6. The statements, in the archive's order.
    _render(graph, included, deferred, inline_defaults, target, out)
    return out


def _relation_dependency(
    graph: _Graph,
    e: TocEntry,
    dep: TocEntry,
    request: TableRestoreRequest,
    in_target: Any,
    missing: dict[str, list[str]],
    excluded: set[int],
    deferred: set[int],
    out: TableRestore,
) -> bool:
    """``e`` (restored) depends on relation ``dep`` (not restored). Returns whether a view was
    newly skipped."""
    if e.desc == "INDEX ATTACH":
        excluded.add(e.dump_id)  # ATTACH PARTITION attaches the partition's indexes
        return False
    if e.desc == "TABLE ATTACH":
        if in_target(dep):
            deferred.add(e.dump_id)
        else:
            missing.setdefault("partitions without their parent", []).append(
                f"{e.namespace}.{e.tag} is a partition of {dep.namespace}.{dep.tag}, which is "
                "neither restored nor in the target (restore the parent: it brings its partitions)"
            )
        return False
    if e.desc == "TABLE" and e.dump_id in graph.attach_of:
        return False  # a partition: its TABLE ATTACH decides
    if in_target(dep):
        return False
    if e.desc == "FK CONSTRAINT":
        table, name = e.tag.split(" ", 1) if " " in e.tag else (e.tag, e.tag)
        owner = graph.belongs_to.get(e.dump_id)
        if owner is not None:
            rel = graph.by_id[owner]
            table, name = rel.tag, e.tag[len(rel.tag) + 1 :]
        text = f"{e.namespace}.{table}.{name} references {dep.namespace}.{dep.tag}"
        if request.skip_missing_foreign_keys:
            excluded.add(e.dump_id)
            out.left_out.append(
                f"foreign key {text}: neither restored nor in the target "
                "(skip_missing_foreign_keys)"
            )
        else:
            missing.setdefault(
                "foreign key(s) to tables not restored (restore them too, or set "
                "skip_missing_foreign_keys)",
                [],
            ).append(text)
        return False
    if e.desc == "TABLE":
        missing.setdefault("inheritance children without their parent", []).append(
            f"{e.namespace}.{e.tag} inherits from {dep.namespace}.{dep.tag}, which is neither "
            "restored nor in the target (restore the parent too)"
        )
        return False
    if e.desc in ("VIEW", "MATERIALIZED VIEW"):
        text = f"view {e.namespace}.{e.tag} reads relations not restored: {dep.namespace}.{dep.tag}"
        if request.skip_missing_views:
            if e.dump_id not in excluded:
                excluded.add(e.dump_id)
                out.left_out.append(f"{text} (skip_missing_views)")
                return True
            return False
        missing.setdefault("views", []).append(
            f"{text} (restore them too, or set skip_missing_views)"
        )
        return False
    missing.setdefault("relations used but neither restored nor in the target", []).append(
        f"{_label(e)} uses {dep.namespace}.{dep.tag}"
    )
    return False


def _sequence_dependency(
    graph: _Graph,
    e: TocEntry,
    seq: TocEntry,
    request: TableRestoreRequest,
    in_target: Any,
    scratch: _Target,
    missing: dict[str, list[str]],
    excluded: set[int],
    inline_defaults: dict[int, list[tuple[str, str, TocEntry]]],
    out: TableRestore,
) -> None:
    """``e`` (restored) uses sequence ``seq`` (not restored): kept when the target has it."""
    if in_target(seq):
        return
    if e.desc == "DEFAULT":
        owner = graph.belongs_to.get(e.dump_id)
        uses = [(e.tag.split(" ", 1)[-1], "")]
        table = graph.by_id[owner] if owner is not None else e
    elif e.desc == "TABLE":
        uses = scratch.defaults_using(e, seq)
        table = e
    else:
        missing.setdefault("sequences used but neither restored nor in the target", []).append(
            f"{_label(e)} uses {seq.namespace}.{seq.tag}"
        )
        return
    for column, expr in uses:
        text = f"{table.namespace}.{table.tag}.{column} uses {seq.namespace}.{seq.tag}"
        if not request.skip_missing_sequences:
            missing.setdefault(
                "default(s) using sequences not restored (name the sequences too, or set "
                "skip_missing_sequences)",
                [],
            ).append(text)
            continue
        out.left_out.append(
            f"default of {table.namespace}.{table.tag}.{column} (uses sequence "
            f"{seq.namespace}.{seq.tag}, neither restored nor in the target; "
            "skip_missing_sequences)"
        )
        if e.desc == "DEFAULT":
            excluded.add(e.dump_id)
        else:
            inline_defaults.setdefault(e.dump_id, []).append((column, expr, seq))


_ACL_ROLE = re.compile(r'(?:\bTO|\bFROM) (PUBLIC|"(?:[^"]|"")+"|[^\s;]+)(?: WITH GRANT OPTION)?;$')
_SESSION_AUTH = re.compile(r'^SET SESSION AUTHORIZATION ("(?:[^"]|"")+"|[^\s;]+);$')


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def _render(
    graph: _Graph,
    included: dict[int, TocEntry],
    deferred: set[int],
    inline_defaults: dict[int, list[tuple[str, str, TocEntry]]],
    target: _Target,
    out: TableRestore,
) -> None:
    ordered = sorted(included.values(), key=lambda e: graph.position[e.dump_id])
    for e in graph.entries:
        if e.desc in ("ENCODING", "STDSTRINGS", "SEARCHPATH") and e.defn.strip():
            out.settings.append(e.defn)
    out.settings += list(_FIXED_SETTINGS)
    phase = out.pre_data
    for e in ordered:
        if e.section == "POST_DATA":
            phase = out.post_data
        if e.desc == "ACL":
            out.acl += _acl_statements(e, target, out)
            continue
        sql = e.defn
        for column, expr, seq in inline_defaults.get(e.dump_id, []):
            if sql.count(f" DEFAULT {expr}") != 1:
                raise TableRestoreRefused(
                    "MISSING_DEPENDENCY",
                    f"the default of {e.namespace}.{e.tag}.{column} uses sequence "
                    f"{seq.namespace}.{seq.tag}, which is not restored, and cannot be left out",
                )
            sql = sql.replace(f" DEFAULT {expr}", "", 1)
        statements = []
        if e.desc in _TABLE_LIKE | {"SEQUENCE"} and e.section == "PRE_DATA":
            if e.tableam:
                statements.append(f"SET default_table_access_method = {quote_ident(e.tableam)}")
            space = e.tablespace if e.tablespace in target.tablespaces else ""
            if e.tablespace and not space:
                out.left_out.append(
                    f"tablespace {e.tablespace} of {_label(e)}: not in the target cluster "
                    "(in the default tablespace)"
                )
            empty = "''"
            statements.append(f"SET default_tablespace = {quote_ident(space) if space else empty}")
        if sql.strip():
            statements.append(sql)
        statements += _owner_statement(e, target, out)
        target_list = out.attach if e.dump_id in deferred else phase
        target_list += statements
        if e.desc in _TABLE_LIKE:
            out.tables.append((e.namespace, e.tag))
        if e.desc == "SEQUENCE":
            out.sequences.append((e.namespace, e.tag))
        if e.desc in _OWNER_KIND or e.desc == "EXTENSION":
            out.restored.append(_label(e))


def _owner_statement(e: TocEntry, target: _Target, out: TableRestore) -> list[str]:
    kind = _OWNER_KIND.get(e.desc)
    if kind is None or not e.owner:
        return []
    if e.owner not in target.roles:
        out.left_out.append(
            f"owner {e.owner} of {_label(e)}: the role does not exist (owned by the restoring role)"
        )
        return []
    if e.owner not in target.settable:
        out.left_out.append(
            f"owner {e.owner} of {_label(e)}: the restoring role may not give objects to it "
            "(owned by the restoring role)"
        )
        return []
    return [f"ALTER {kind} {_qualified(e)} OWNER TO {quote_ident(e.owner)}"]


def _acl_statements(e: TocEntry, target: _Target, out: TableRestore) -> list[str]:
    """The entry's GRANT/REVOKE lines whose roles exist; the others are listed as left out."""
    kept: list[str] = []
    skipping_grantor = False
    for line in e.defn.splitlines():
        statement = line.strip()
        if not statement:
            continue
        auth = _SESSION_AUTH.match(statement)
        if auth:
            grantor = _unquote(auth.group(1))
            skipping_grantor = not (target.superuser and grantor in target.roles)
            if skipping_grantor:
                out.left_out.append(
                    f"grantor {grantor} of grants on {e.tag.lower()}: "
                    "they are made by the restoring role"
                )
                continue
        if statement == "RESET SESSION AUTHORIZATION;" and skipping_grantor:
            skipping_grantor = False
            continue
        role = _ACL_ROLE.search(statement)
        grantee = _unquote(role.group(1)) if role else None
        if grantee is not None and grantee != "PUBLIC" and grantee not in target.roles:
            out.left_out.append(f"{statement} (role {grantee} does not exist)")
            continue
        kept.append(statement)
    return kept
