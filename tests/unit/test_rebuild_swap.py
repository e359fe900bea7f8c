"""A rebuild leaves the views readable until it swaps the rebuilt ones in, and a batch read
before another writer moved the views applies nothing (so a projector and a rebuild, or two
projectors, never apply an event twice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from managed_backups.services.projections.handlers import ViewProjection
from managed_backups.services.projections.service import Projector, rebuild
from managed_backups.shared.eventstore import open_event_store
from managed_backups.shared.sqldb import SqlDatabase
from managed_backups.shared.views import ReadModels
from tests.history import write_history


def test_the_views_stay_readable_while_a_rebuild_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    write_history(store, clusters=2, days=3)
    live = ReadModels(db)
    Projector(store, live).catch_up()
    before = live.dump()
    seen_during: list[dict[str, list[object]]] = []
    apply_batch = ViewProjection.apply_batch

    def watched(self: ViewProjection, *args: Any, **kwargs: Any) -> Any:
        seen_during.append(ReadModels(db).dump())  # what a reader sees meanwhile
        return apply_batch(self, *args, **kwargs)

    monkeypatch.setattr(ViewProjection, "apply_batch", watched)
    rebuilt = rebuild(store, db)
    assert seen_during and all(seen == before for seen in seen_during)
    assert rebuilt.dump() == before
    assert not db.table_exists("mb_view_rebuild_clusters")  # the side tables became the views


def test_a_batch_read_before_another_writer_moved_the_views_applies_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store, db = open_event_store(url), SqlDatabase(url)
    write_history(store, clusters=1, days=2)
    first, second = Projector(store, ReadModels(db)), Projector(store, ReadModels(db))
    after = first.views.position()
    _, events = first.read(after)  # read, then another writer applies the same batch
    assert second.catch_up_once() == len(events)
    stored = db.query("SELECT stored_bytes, expired_count FROM mb_view_retention")
    assert first.projection.apply_batch(events, after=after) is False
    assert db.query("SELECT stored_bytes, expired_count FROM mb_view_retention") == stored
    assert first.catch_up_once() == 0  # nothing left: it reads where the views are now
    assert ReadModels(db).position() == store.max_position()
