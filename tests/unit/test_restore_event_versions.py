"""A ``RestoreSucceeded`` recorded before it had ``left_out`` (version 1) still loads, converts
to its wire form and feeds the restore jobs view (``left_out`` empty)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

from managed_backups.shared.domain.restore import Restore
from managed_backups.shared.eventstore import open_event_store, to_wire_event


def test_a_version_1_restore_succeeded_reads_with_nothing_left_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store = open_event_store(url)
    now = datetime.now(UTC)
    restore = Restore(
        restore_id=uuid.uuid4(), cluster_id="c1", restore_type="DATABASE",
        source_cluster_id="c1", source_cluster_name="c1", destination_cluster_name="c1",
        backup_id=uuid.uuid4(), chain_id=uuid.uuid4(), backup_end_time=now, objects=[],
        restore_opts={}, target_database="app", worker="w", lease_until=now, command_id=None,
        at=now, by="admin",
    )  # fmt: skip
    restore.succeed(10, ["database app"], ["a note"], now, "w")
    store.save_all(restore)
    store.close()
    # Rewrite the stored event as version 1 wrote it: no left_out, no class_version.
    with sqlite3.connect(tmp_path / "events.sqlite") as db:
        topic, state = db.execute(
            "SELECT topic, state FROM stored_events WHERE topic LIKE '%RestoreSucceeded'"
        ).fetchone()
        old = json.loads(state)
        del old["left_out"], old["class_version"]
        db.execute(
            "UPDATE stored_events SET state = ? WHERE topic = ?",
            (json.dumps(old, separators=(",", ":")).encode(), topic),
        )
    store = open_event_store(url)
    loaded = store.get_or_none(restore.id, Restore)
    assert loaded is not None and loaded.phase == "SUCCEEDED"
    rows = store.notifications(0, 10)
    wire = to_wire_event(rows[-1].id, store.domain_event(rows[-1]))
    assert wire.type == "RestoreSucceeded" and wire.left_out == []  # type: ignore[union-attr]
    assert wire.restored == ["database app"]  # type: ignore[union-attr]
