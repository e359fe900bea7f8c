"""Encryption at rest on a real PostgreSQL and both object stores (local directory, S3 server).

Every backup here is taken through a store sealed for its cluster (what the services use), and
checked by restoring it and comparing with the source, and by reading the bucket as an outsider
would: every object raw, zstd frames decompressed, searched for a value the source holds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import obstore
import pytest
import zstandard

from managed_backups.shared.dataplane.engine import BackupError, BackupRequest, RestoreError
from managed_backups.shared.dataplane.errors import ErrorCode
from managed_backups.shared.dataplane.keys import ClusterKeys, KeyUnavailable, LocalKeyring
from managed_backups.shared.dataplane.manifest import (
    Manifest,
    load_chain,
    manifest_key,
    read_manifest,
)
from managed_backups.shared.dataplane.objectstore import ObjectStore
from managed_backups.shared.dataplane.restore_rows import restore_database
from managed_backups.shared.dataplane.sealing import MAGIC, SealBroken, chains_of, rewrap_chain
from managed_backups.shared.dataplane.sealing import sealed_store as seal
from managed_backups.shared.dataplane.verify import verify_stored
from tests.restore_checks import table_digest

from .conftest import PgServer

pytestmark = pytest.mark.integration

CLUSTER = "enc-cluster"
MARKER = "card-4929-1234-5678-9012"
"""A value the source holds; it must never be readable in an encrypted store."""
DATA = Path(__file__).parent.parent / "data"


@dataclass
class Keys:
    """The platform keyring and one customer keyring, in directories of the test's own."""

    root: Path

    def platform(self, *, create_first: bool = True) -> LocalKeyring:
        return LocalKeyring(
            self.root / "platform",
            label="platform",
            name="platform key",
            create_first=create_first,
        )

    def customer(self, current: str | None) -> LocalKeyring:
        return LocalKeyring(
            self.root / "customer" / CLUSTER,
            label="customer",
            name=f"customer key of cluster {CLUSTER}",
            current=current,
        )

    def new_customer_key(self, name: str) -> Path:
        path = self.root / "customer" / CLUSTER / f"{name}.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
        return path

    def of_cluster(self, customer: str | None = None) -> ClusterKeys:
        platform = self.platform()
        if customer is None:
            return ClusterKeys(CLUSTER, platform, (platform,))
        mine = self.customer(customer)
        return ClusterKeys(CLUSTER, mine, (mine, platform))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def source(pg: PgServer, databases: list[str]) -> str:
    db = pg.create_database("enc")
    databases.append(db)
    with pg.connect(db) as conn:
        conn.execute(
            "CREATE TABLE cards (id int PRIMARY KEY, holder text, number text);"
            f"COMMENT ON TABLE cards IS 'holds {MARKER}';"
            "INSERT INTO cards SELECT g, 'holder ' || g, "
            f"CASE WHEN g % 500 = 0 THEN '{MARKER}' ELSE md5(g::text) END "
            "FROM generate_series(1, 20000) g;"
            f"CREATE TABLE notes (body text); INSERT INTO notes VALUES ('{MARKER}'), ('plain');"
            "CREATE SEQUENCE counter; SELECT setval('counter', 42);"
        )
    return db


def digests(pg: PgServer, db: str) -> dict[str, tuple[int, str]]:
    return {
        "cards": table_digest(pg.url_for(db), "public", "cards"),
        "notes": table_digest(pg.url_for(db), "public", "notes"),
    }


def readable_bytes(raw: ObjectStore) -> Iterator[tuple[str, bytes]]:
    """Every object as an outsider reads it: its bytes, and a zstd frame's content too."""
    for info in raw.list("clusters"):
        data = raw.get(info.key)
        yield info.key, data
        if data[:4] == b"\x28\xb5\x2f\xfd":
            yield info.key, zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)


def holding_marker(raw: ObjectStore) -> list[str]:
    return sorted({key for key, data in readable_bytes(raw) if MARKER.encode() in data})


def snapshot(raw: ObjectStore) -> dict[str, bytes]:
    return {info.key: raw.get(info.key) for info in raw.list("clusters")}


def overwrite(raw: ObjectStore, key: str, data: bytes) -> None:
    """An attacker with write access to the bucket (the store itself never overwrites)."""
    obstore.put(raw._store, key, data)


def back_up(
    pg: PgServer, store: ObjectStore, backup_id: str, previous: Manifest | None = None
) -> Manifest:
    request = BackupRequest(store, CLUSTER, backup_id)
    if previous is None:
        return pg.adapter().full_backup(request)
    return pg.adapter().incremental_backup(request, previous)


def restored(
    pg: PgServer, databases: list[str], store: ObjectStore, head: Manifest, db: str
) -> dict[str, tuple[int, str]]:
    target = pg.create_database("enc_restored")
    databases.append(target)
    chain = load_chain(store, head)
    restore_database(store, chain, db, pg.dsn_for(target), password=pg.password)
    return digests(pg, target)


def test_an_encrypted_chain_restores_exactly_and_nothing_is_readable_in_the_store(
    pg: PgServer, databases: list[str], store: ObjectStore, keys: Keys, source: str
) -> None:
    sealed = seal(store, keys.of_cluster())
    full = back_up(pg, sealed, "full-1")
    at_full = digests(pg, source)
    with pg.connect(source) as conn:
        conn.execute(f"UPDATE cards SET number = '{MARKER}' WHERE id % 7 = 0")
        conn.execute("DELETE FROM cards WHERE id % 11 = 0")
        conn.execute(
            "INSERT INTO cards SELECT g, 'new', md5(g::text) FROM generate_series(20001, 21000) g"
        )
    inc = back_up(pg, sealed, "inc-1", full)
    at_inc = digests(pg, source)

    assert verify_stored(sealed, CLUSTER, "full-1", "inc-1").ok
    assert restored(pg, databases, sealed, full, source) == at_full
    assert restored(pg, databases, sealed, inc, source) == at_inc

    # The bucket as an outsider sees it: sealed envelopes and the wrapped data key, no value.
    stored = snapshot(store)
    assert holding_marker(store) == []
    data_objects = [k for k in stored if "/keys/" not in k]
    assert len(data_objects) > 4 and all(stored[k].startswith(MAGIC) for k in data_objects)
    [key_object] = [k for k in stored if "/keys/" in k]
    assert json.loads(stored[key_object])["key_id"].startswith("platform-k0001-")

    # The same search finds the value in an unencrypted backup of the same data: it can fail.
    back_up(pg, store, "plain-full")
    assert holding_marker(store) != []


def test_a_tampered_chunk_or_manifest_is_caught_by_verify_and_restore(
    pg: PgServer, databases: list[str], store: ObjectStore, keys: Keys, source: str
) -> None:
    sealed = seal(store, keys.of_cluster())
    full = back_up(pg, sealed, "full-1")
    with pg.connect(source) as conn:
        conn.execute("UPDATE cards SET holder = 'changed' WHERE id % 13 = 0")
    back_up(pg, sealed, "inc-1", full)
    cards = full.database(source).table("public", "cards")
    assert cards is not None
    chunk = cards.data[0]
    chunk_key = f"clusters/{CLUSTER}/chains/full-1/chunks/{chunk.hash[:2]}/{chunk.hash}"
    original = store.get(chunk_key)

    overwrite(store, chunk_key, original[:100] + bytes([original[100] ^ 0x01]) + original[101:])
    report = verify_stored(sealed, CLUSTER, "full-1", "inc-1")
    assert report.corrupt == [chunk_key] and not report.missing
    target = pg.create_database("enc_tampered")
    databases.append(target)
    head = read_manifest(sealed, CLUSTER, "full-1", "inc-1")
    with pytest.raises(RestoreError) as caught:
        restore_database(
            sealed, load_chain(sealed, head), source, pg.dsn_for(target), password=pg.password
        )
    assert caught.value.code is ErrorCode.CHUNK_CORRUPT
    assert "fails authentication" in caught.value.message
    overwrite(store, chunk_key, original)

    # A manifest altered, or another backup's manifest put in its place, fails authentication.
    inc_key = manifest_key(CLUSTER, "full-1", "inc-1")
    full_key = manifest_key(CLUSTER, "full-1", "full-1")
    manifest_bytes = store.get(inc_key)
    for forged in (
        manifest_bytes[:-1] + bytes([manifest_bytes[-1] ^ 0x80]),
        store.get(full_key),
    ):
        overwrite(store, inc_key, forged)
        assert verify_stored(sealed, CLUSTER, "full-1", "inc-1").corrupt == [inc_key]
        with pytest.raises(SealBroken):
            read_manifest(sealed, CLUSTER, "full-1", "inc-1")
    # A manifest stored in plaintext (the chain's own, decrypted) is refused too.
    overwrite(store, inc_key, sealed.get(full_key))
    assert verify_stored(sealed, CLUSTER, "full-1", "inc-1").corrupt == [inc_key]
    overwrite(store, inc_key, manifest_bytes)
    assert verify_stored(sealed, CLUSTER, "full-1", "inc-1").ok


def test_without_a_usable_key_a_backup_fails_closed_and_writes_nothing(
    pg: PgServer, store: ObjectStore, keys: Keys, source: str
) -> None:
    # A configured platform key directory that holds no key (a missing mount, say).
    no_platform = keys.platform(create_first=False)
    sealed = seal(store, ClusterKeys(CLUSTER, no_platform, (no_platform,)))
    with pytest.raises(BackupError) as caught:
        back_up(pg, sealed, "full-1")
    assert caught.value.code is ErrorCode.KEY_UNAVAILABLE
    assert "no key file" in caught.value.message
    # A customer key configured whose file is not there.
    with pytest.raises(BackupError) as caught:
        back_up(pg, seal(store, keys.of_cluster(customer="k1")), "full-2")
    assert caught.value.code is ErrorCode.KEY_UNAVAILABLE
    assert "customer key" in caught.value.message and "'k1'" in caught.value.message
    assert snapshot(store) == {}

    # An encrypted chain whose customer key was revoked: its incremental fails, adds nothing.
    keys.new_customer_key("k1")
    sealed = seal(store, keys.of_cluster(customer="k1"))
    full = back_up(pg, sealed, "full-3")
    before = snapshot(store)
    (keys.root / "customer" / CLUSTER / "k1.key").unlink()
    with pytest.raises(BackupError) as caught:
        back_up(pg, seal(store, keys.of_cluster(customer="k1")), "inc-3", full)
    assert caught.value.code is ErrorCode.KEY_UNAVAILABLE
    assert snapshot(store) == before
    assert holding_marker(store) == []


def test_rotation_leaves_every_object_byte_identical_and_old_backups_restorable(
    pg: PgServer, databases: list[str], store: ObjectStore, keys: Keys, source: str
) -> None:
    sealed = seal(store, keys.of_cluster())
    full = back_up(pg, sealed, "full-1")
    at_full = digests(pg, source)
    with pg.connect(source) as conn:
        conn.execute("UPDATE cards SET holder = 'rotated' WHERE id % 5 = 0")
    inc = back_up(pg, sealed, "inc-1", full)
    at_inc = digests(pg, source)
    second = back_up(pg, sealed, "full-2")
    before = snapshot(store)

    # The platform key is rotated, every chain re-wrapped; then the old key is retired.
    new_id = keys.platform().rotate()
    results = [rewrap_chain(store, keys.of_cluster(), c) for c in chains_of(store, CLUSTER)]
    assert sorted(r.chain_id for r in results) == ["full-1", "full-2"]
    assert all(r.added and r.key_id == new_id for r in results)
    after = snapshot(store)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == [
        f"clusters/{CLUSTER}/chains/{c}/keys/{new_id}.json" for c in ("full-1", "full-2")
    ]
    (keys.root / "platform" / "k0001.key").unlink()
    sealed = seal(store, keys.of_cluster())
    assert restored(pg, databases, sealed, inc, source) == at_inc
    assert restored(pg, databases, sealed, full, source) == at_full
    assert verify_stored(sealed, CLUSTER, "full-2", second.backup_id).ok

    # A customer key configured: the chains are re-wrapped by it and open with it alone.
    keys.new_customer_key("k1")
    customer = keys.of_cluster(customer="k1")
    assert all(rewrap_chain(store, customer, c).added for c in chains_of(store, CLUSTER))
    only_customer = ClusterKeys(CLUSTER, keys.customer("k1"), (keys.customer("k1"),))
    assert restored(pg, databases, seal(store, only_customer), inc, source) == at_inc
    assert {k: snapshot(store)[k] for k in before} == before


def test_a_revoked_customer_key_makes_restores_fail_clearly(
    pg: PgServer, store: ObjectStore, keys: Keys, source: str
) -> None:
    keys.new_customer_key("k1")
    full = back_up(pg, seal(store, keys.of_cluster(customer="k1")), "full-1")
    (keys.root / "customer" / CLUSTER / "k1.key").unlink()  # the customer revokes it
    sealed = seal(store, keys.of_cluster(customer="k1"))
    with pytest.raises(KeyUnavailable) as caught:
        read_manifest(sealed, CLUSTER, "full-1", full.backup_id)
    message = str(caught.value)
    assert f"chain full-1 of cluster {CLUSTER} is encrypted" in message
    assert f"customer key of cluster {CLUSTER} customer-k1-" in message
    assert "revoked or missing" in message
    with pytest.raises(KeyUnavailable):
        verify_stored(sealed, CLUSTER, "full-1", full.backup_id)


@pytest.mark.parametrize(
    ("fixture", "cluster", "full", "incremental", "database"),
    [
        (
            "legacy-v0/backup-store-v0",
            "legacy-one",
            "11111111-1111-4111-8111-111111111111",
            "22222222-2222-4222-8222-222222222222",
            "app",
        ),
        (
            "manifest-v2/backup-store-v2",
            "v2-cluster",
            "33333333-3333-4333-8333-333333333333",
            "44444444-4444-4444-8444-444444444444",
            "shop",
        ),
    ],
)
def test_unencrypted_chains_from_before_restore_through_a_sealed_store(
    pg: PgServer,
    databases: list[str],
    tmp_path: Path,
    keys: Keys,
    fixture: str,
    cluster: str,
    full: str,
    incremental: str,
    database: str,
) -> None:
    shutil.copytree(DATA / fixture, tmp_path / "store")
    raw = ObjectStore((tmp_path / "store").as_uri())
    platform = keys.platform()
    sealed = seal(raw, ClusterKeys(cluster, platform, (platform,)))
    before = snapshot(raw)
    head = read_manifest(sealed, cluster, full, incremental)
    assert verify_stored(sealed, cluster, full, incremental).ok
    target = pg.create_database("enc_legacy")
    databases.append(target)
    restore_database(
        sealed, load_chain(sealed, head), database, pg.dsn_for(target), password=pg.password
    )
    expected = json.loads((DATA / fixture).with_suffix(".expected.json").read_text())
    with pg.connect(target) as conn:
        if database == "app":
            rows = conn.execute("SELECT * FROM items ORDER BY id").fetchall()
            assert [list(r) for r in rows] == expected["items"]
        else:
            for qualified, digest in expected["tables"].items():
                schema, name = qualified.split(".")
                assert list(table_digest(pg.url_for(target), schema, name)) == digest
    # A rotation finds nothing to wrap in them, and reading wrote nothing.
    assert rewrap_chain(raw, ClusterKeys(cluster, platform, (platform,)), full).key_id is None
    assert snapshot(raw) == before


def test_an_encrypted_chain_written_by_the_first_version_restores_with_the_rotated_key(
    pg: PgServer, databases: list[str], tmp_path: Path
) -> None:
    """``tests/data/encrypted-v1``: the envelope, key objects and keyed names as first written
    stay readable; the key the rotation added opens it alone."""
    fixture = DATA / "encrypted-v1"
    shutil.copytree(fixture / "backup-store", tmp_path / "store")
    shutil.copytree(fixture / "platform-keys", tmp_path / "keys")
    (tmp_path / "keys" / "k0001.key").unlink()  # retired after the rotation
    raw = ObjectStore((tmp_path / "store").as_uri())
    ring = LocalKeyring(tmp_path / "keys", label="platform", name="platform key")
    full, inc = "55555555-5555-4555-8555-555555555555", "66666666-6666-4666-8666-666666666666"
    sealed = seal(raw, ClusterKeys("enc-cluster", ring, (ring,)), encrypted_chains=[full])
    stored = snapshot(raw)
    assert all(v.startswith(MAGIC) for k, v in stored.items() if "/keys/" not in k)
    assert verify_stored(sealed, "enc-cluster", full, inc).ok
    target = pg.create_database("enc_fixture")
    databases.append(target)
    head = read_manifest(sealed, "enc-cluster", full, inc)
    restore_database(
        sealed, load_chain(sealed, head), "shop", pg.dsn_for(target), password=pg.password
    )
    expected = json.loads((fixture / "backup-store.expected.json").read_text())
    for table, digest in expected.items():
        assert list(table_digest(pg.url_for(target), "public", table)) == digest, table
    assert snapshot(raw) == stored
