"""Property tests (hypothesis) of command parsing and the domain rules: whatever the input,
each rule either decides within the product's values or refuses with a 4xx and a reason; it
never fails otherwise. (Ids: ``test_ids.py``; names: ``test_names.py``.)"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from managed_backups.contracts import topics
from managed_backups.contracts.commands import ClusterCommand, RestoreCommand
from managed_backups.contracts.enums import (
    BackupStatus,
    BackupType,
    ResourceType,
    RestoreType,
    Role,
    Tier,
)
from managed_backups.services.scheduler.cadence import ScheduleView, backup_type_for, due_slot
from managed_backups.services.scheduler.cluster_commands import HANDLERS
from managed_backups.shared.clock import WallClock
from managed_backups.shared.commands import CommandContext, CommandProcessor, Handled
from managed_backups.shared.domain.backup_lifecycle import (
    backup_expires_at,
    is_listed,
    newest_restorable_chain,
)
from managed_backups.shared.domain.backup_settings import (
    ALLOWED_FREQUENCIES_MINUTES,
    ALLOWED_RETENTION_DAYS,
    BackupSettings,
    SettingsChange,
    backup_retention_follows_the_cluster,
    decide_settings_change,
    initial_settings,
)
from managed_backups.shared.domain.errors import BadValue, Refused
from managed_backups.shared.domain.restore_rules import objects_match_the_restore_type
from managed_backups.shared.eventstore import EventStore
from managed_backups.shared.sqldb import SqlDatabase
from tests.principals import Keys

EXAMPLES = int(os.environ.get("MANAGED_BACKUPS_PROPERTY_EXAMPLES", "100"))
"""Examples per property (``.ci/run``'s fuzz step runs 1000)."""
T0 = datetime(2026, 1, 5, tzinfo=UTC)
ANY_INT = st.integers(min_value=-(2**63), max_value=2**63)
SOME = settings(max_examples=EXAMPLES, deadline=None)


# -- command parsing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processors(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CommandProcessor, CommandProcessor, Keys, str]]:
    store = EventStore(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    clock = WallClock()
    shared = tmp_path_factory.mktemp("properties")
    keys = Keys(store, SqlDatabase(f"sqlite:///{shared / 'shared.sqlite'}"), shared / "keys")
    key = keys.key("acme", "admin", (Role.ORG_ADMIN, ResourceType.ORGANIZATION, "acme"))
    context = CommandContext(store, clock, "test")

    def refuse_restores(command: Any, principal: Any, context: Any) -> Handled:
        raise BadValue("restores are not handled in this test")

    clusters = CommandProcessor(
        topics.CLUSTER_COMMANDS,
        TypeAdapter(ClusterCommand),
        HANDLERS,
        context,
        keys.verifier,
    )
    restores = CommandProcessor(
        topics.RESTORE_COMMANDS,
        TypeAdapter(RestoreCommand),
        {"StartRestore": refuse_restores},
        context,
        keys.verifier,
    )
    yield clusters, restores, keys, key
    store.close()


JSON = st.recursive(
    st.none() | st.booleans() | ANY_INT | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=15), children, max_size=5)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "cluster_id",
        "name",
        "organization",
        "tier",
        "regions",
        "connection_ref",
        "frequency_minutes",
        "retention_days",
        "enabled",
        "restore_id",
        "destination_cluster_id",
        "restore_type",
        "objects",
        "restore_opts",
        "schema_version",
    ]
)
COMMAND_TYPES = st.sampled_from(
    [
        "RegisterCluster",
        "UpdateBackupSettings",
        "ChangeClusterTier",
        "DeleteCluster",
        "StartRestore",
        "Nonsense",
    ]
)


@st.composite
def commands(draw: st.DrawFn, keys: Keys, key: str) -> bytes:
    """Command-shaped JSON: a type, an id, fields of any value, and sometimes a token signed
    for it (for one of the two topics), a token of nothing, or an API key where version 0.1
    put it."""
    body: dict[str, Any] = draw(st.dictionaries(FIELDS, JSON, max_size=8))
    body["type"] = draw(COMMAND_TYPES)
    if draw(st.booleans()):
        body["command_id"] = str(uuid4())
    proof = draw(st.sampled_from(["signed", "garbage", "api key", "none"]))
    if proof == "signed" and "command_id" in body:
        topic = draw(st.sampled_from([topics.CLUSTER_COMMANDS, topics.RESTORE_COMMANDS]))
        body = keys.signed(key, topic, body)
    elif proof == "garbage":
        body["token"] = draw(st.text(min_size=1, max_size=60))
    elif proof == "api key":
        body["credential"] = key
    return json.dumps(body).encode()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_message_gets_an_answer_never_a_500(
    processors: tuple[CommandProcessor, CommandProcessor, Keys, str], data: st.DataObject
) -> None:
    clusters, restores, keys, key = processors
    raw = data.draw(st.one_of(st.binary(max_size=200), commands(keys, key)))
    for processor in (clusters, restores):
        processed = processor.process(raw)
        result = processed.result
        assert result.code in (200, 400, 401, 403, 404, 409, 422, 429), result
        if result.code >= 300:
            assert result.reason, result
        if result.code == 422:
            assert processed.dead_letter_error


# -- backup settings ----------------------------------------------------------------------------


@SOME
@given(
    st.sampled_from(list(Tier)),
    st.sampled_from(ALLOWED_FREQUENCIES_MINUTES),
    st.sampled_from(ALLOWED_RETENTION_DAYS),
    st.booleans(),
    st.booleans(),
    st.none() | st.booleans(),
    st.none() | ANY_INT,
    st.none() | ANY_INT,
)
def test_a_settings_change_stays_within_the_tiers_values_or_is_refused_with_them(
    tier: Tier,
    frequency: int,
    retention: int,
    enabled: bool,
    changed_before: bool,
    new_enabled: bool | None,
    new_frequency: int | None,
    new_retention: int | None,
) -> None:
    current = (
        initial_settings(tier)
        if tier is Tier.BASIC
        else BackupSettings(enabled, frequency, retention)
    )
    try:
        decision = decide_settings_change(
            tier, current, changed_before, SettingsChange(new_enabled, new_frequency, new_retention)
        )
    except Refused as refused:
        assert refused.code in (400, 409) and refused.reason
        if new_frequency is not None and new_frequency not in ALLOWED_FREQUENCIES_MINUTES:
            assert tier is Tier.BASIC or "allowed values" in refused.reason
        return
    assert tier is not Tier.BASIC
    chosen = decision.settings
    assert chosen.frequency_minutes in ALLOWED_FREQUENCIES_MINUTES
    assert chosen.retention_days in ALLOWED_RETENTION_DAYS
    if decision.retention_changed:
        assert not changed_before  # retention changes once
    if not chosen.enabled:
        assert not decision.full_backup_required


@SOME
@given(st.sampled_from(list(Tier)), st.sampled_from(ALLOWED_RETENTION_DAYS), st.none() | ANY_INT)
def test_a_backup_is_kept_for_its_clusters_retention(
    tier: Tier, retention: int, requested: int | None
) -> None:
    cluster_retention = 30 if tier is Tier.BASIC else retention
    try:
        kept = backup_retention_follows_the_cluster("c", tier, cluster_retention, requested)
    except Refused as refused:
        assert refused.code == 400 and str(cluster_retention) in refused.reason
        return
    assert kept == cluster_retention


# -- cadence -----------------------------------------------------------------------------------


@SOME
@given(
    st.sampled_from(ALLOWED_FREQUENCIES_MINUTES),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=60 * 24 * 400),
    st.booleans(),
    st.sampled_from(ALLOWED_RETENTION_DAYS),
    st.booleans(),
)
def test_a_due_slot_is_on_the_grid_not_in_the_future_and_after_the_last(
    frequency: int,
    last_k: int,
    minutes_later: int,
    scheduled_before: bool,
    retention: int,
    full_complete: bool,
) -> None:
    step = timedelta(minutes=frequency)
    last_slot = T0 + last_k * step
    view = ScheduleView(
        enabled=True,
        deleted=False,
        frequency_minutes=frequency,
        generation=1,
        generation_start=T0,
        full_backup_required=False,
        last_scheduled={"generation": 1, "slot": last_slot} if scheduled_before else None,
        chain={"slot": T0, "retention_days": retention},
    )
    now = T0 + timedelta(minutes=minutes_later)
    slot = due_slot(view, now)
    if slot is None:
        return
    assert T0 <= slot <= now
    assert (slot - T0) % step == timedelta(0)
    if scheduled_before:
        assert slot > last_slot
    kind = backup_type_for(view, slot, full_complete)
    if kind is BackupType.INCREMENTAL:  # an incremental always has a live, complete full
        assert full_complete
        assert slot + step < T0 + timedelta(days=retention)


# -- retention ---------------------------------------------------------------------------------

STATUSES = st.sampled_from([s.value for s in BackupStatus])
TIMES = st.none() | st.integers(min_value=-100, max_value=100).map(lambda d: T0 + timedelta(days=d))


@SOME
@given(STATUSES, TIMES, st.booleans(), st.none() | STATUSES, TIMES, st.booleans(), TIMES)
def test_nothing_expired_or_unrestorable_is_listed(
    status: str,
    expires_at: datetime | None,
    is_full: bool,
    full_status: str | None,
    full_expires_at: datetime | None,
    kept: bool,
    deleted_until: datetime | None,
) -> None:
    listed = is_listed(
        status,
        expires_at,
        is_full,
        full_status,
        full_expires_at,
        T0,
        kept=kept,
        deleted_until=deleted_until,
    )
    if not listed:
        return
    assert status in (BackupStatus.COMPLETE.value, BackupStatus.IN_PROGRESS.value)
    own_status, own_expiry = (status, expires_at) if is_full else (full_status, full_expires_at)
    assert is_full or own_status == BackupStatus.COMPLETE.value
    if deleted_until is not None:
        assert deleted_until > T0
    elif not kept:
        assert own_expiry is None or own_expiry > T0


@SOME
@given(st.lists(st.tuples(st.text(max_size=5), STATUSES, TIMES), max_size=8))
def test_the_kept_chain_is_the_newest_complete_full(
    fulls: list[tuple[str, str, datetime | None]],
) -> None:
    kept = newest_restorable_chain(fulls)
    complete = [(d, c) for c, s, d in fulls if s == BackupStatus.COMPLETE.value and d is not None]
    if not complete:
        assert kept is None
        return
    newest = max(d for d, _ in complete)
    assert kept in {c for d, c in complete if d == newest}


@SOME
@given(TIMES.filter(lambda t: t is not None), st.sampled_from(ALLOWED_RETENTION_DAYS))
def test_a_longer_retention_never_expires_earlier(data_from: datetime, retention: int) -> None:
    for longer in ALLOWED_RETENTION_DAYS:
        if longer >= retention:
            assert backup_expires_at(data_from, longer) >= backup_expires_at(data_from, retention)


# -- restore rules -----------------------------------------------------------------------------

NAMES = st.sampled_from(["d", "e", "public", "s", "t", "u"]) | st.text(min_size=1, max_size=5)
OBJECTS = st.lists(
    st.fixed_dictionaries(
        {"database": NAMES},
        optional={"schema": NAMES, "table": NAMES},
    ),
    max_size=6,
)
OPTIONS = st.fixed_dictionaries({}, optional={"new_db_name": NAMES, "into_db": NAMES})


@SOME
@given(st.sampled_from(list(RestoreType)), OBJECTS, OPTIONS)
def test_objects_match_their_restore_type_or_are_refused_with_a_reason(
    restore_type: RestoreType, objects: list[dict[str, Any]], opts: dict[str, Any]
) -> None:
    try:
        objects_match_the_restore_type(restore_type, objects, opts)
    except BadValue as refused:
        assert refused.code == 400 and refused.reason
        return
    assert not (opts.get("new_db_name") and opts.get("into_db"))
    if restore_type is RestoreType.CLUSTER:
        assert objects == [] and not opts
    elif restore_type is RestoreType.DATABASE:
        assert len(objects) == 1 and "table" not in objects[0]
    else:
        assert objects and all("table" in o for o in objects)
        assert len({o["database"] for o in objects}) == 1
        keys = [(o.get("schema") or "public", o["table"]) for o in objects]
        assert len(set(keys)) == len(keys)
