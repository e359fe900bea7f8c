"""Rule: "backup settings per cluster": the tier rules, as one pure decision function.

| tier | enabled switch | frequency | retention |
| BASIC | no (always on) | fixed: 24 hours | fixed: 30 days |
| STANDARD, ADVANCED | yes | 5, 10, 15, 30, 60 (default), 240 or 1440 minutes |
  2, 7, 30 (default), 90 or 365 days |
"""

from __future__ import annotations

from dataclasses import dataclass

from managed_backups.contracts.enums import Tier
from managed_backups.shared.domain.errors import BadValue, Conflict

ALLOWED_FREQUENCIES_MINUTES = (5, 10, 15, 30, 60, 240, 1440)
ALLOWED_RETENTION_DAYS = (2, 7, 30, 90, 365)
DEFAULT_FREQUENCY_MINUTES = 60
DEFAULT_RETENTION_DAYS = 30
BASIC_FREQUENCY_MINUTES = 1440
BASIC_RETENTION_DAYS = 30
RETENTION_ALREADY_SET = (
    "cluster already has a retention policy set, open a support ticket to change it"
)


@dataclass(frozen=True)
class BackupSettings:
    enabled: bool
    frequency_minutes: int
    retention_days: int


@dataclass(frozen=True)
class SettingsChange:
    enabled: bool | None = None
    frequency_minutes: int | None = None
    retention_days: int | None = None


@dataclass(frozen=True)
class SettingsDecision:
    settings: BackupSettings
    retention_changed: bool
    """Whether this change used the cluster's one retention change."""
    full_backup_required: bool
    """A change of frequency or retention, or re-enabling, takes a full backup immediately."""
    changed: bool


def initial_settings(tier: Tier) -> BackupSettings:
    if tier is Tier.BASIC:
        return BackupSettings(True, BASIC_FREQUENCY_MINUTES, BASIC_RETENTION_DAYS)
    return BackupSettings(True, DEFAULT_FREQUENCY_MINUTES, DEFAULT_RETENTION_DAYS)


def _allowed(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values)


def require_allowed_retention(retention_days: int) -> None:
    """Rule: a retention is one of the allowed values, wherever it is given (settings, or a
    backup taken on demand with its own retention)."""
    if retention_days not in ALLOWED_RETENTION_DAYS:
        raise BadValue(
            f"retention_days {retention_days} is not allowed; "
            f"allowed values: {_allowed(ALLOWED_RETENTION_DAYS)}"
        )


def backup_retention_follows_the_cluster(
    cluster_id: str,
    tier: Tier,
    retention_days: int,
    requested: int | None,
    scheduled_with: int | None = None,
) -> int:
    """Rule: a backup, on demand or scheduled, is kept for its cluster's retention: what the
    tier allows and the settings chose (``retention_days``; a BASIC cluster's is always 30
    days), or, for the slot the schedule recorded, the retention it was scheduled with
    (``scheduled_with``: a settings change may come between). Returns the retention to take
    the backup with; any other requested value is refused naming the allowed one."""
    allowed = {retention_days} | ({scheduled_with} if scheduled_with is not None else set())
    if requested is None:
        return scheduled_with if scheduled_with is not None else retention_days
    require_allowed_retention(requested)
    if requested not in allowed:
        why = (
            f"a BASIC cluster's backups are kept {BASIC_RETENTION_DAYS} days"
            if tier is Tier.BASIC
            else f"its backup settings keep backups {retention_days} days; change the "
            "settings to keep them longer"
        )
        raise BadValue(
            f"retention_days {requested} is not allowed for a backup of cluster {cluster_id}: "
            f"{why} (allowed: {_allowed(tuple(sorted(allowed)))})"
        )
    return requested


def decide_settings_change(
    tier: Tier,
    current: BackupSettings,
    retention_already_changed: bool,
    change: SettingsChange,
) -> SettingsDecision:
    """Apply the settings rules to a requested change; raise ``Refused`` with the reason."""
    if tier is Tier.BASIC:
        raise BadValue(
            "backup settings of a BASIC cluster cannot be changed: BASIC clusters take a "
            f"backup every {BASIC_FREQUENCY_MINUTES} minutes kept for {BASIC_RETENTION_DAYS} "
            "days; upgrade the cluster to STANDARD or ADVANCED to configure them"
        )
    if (
        change.frequency_minutes is not None
        and change.frequency_minutes not in ALLOWED_FREQUENCIES_MINUTES
    ):
        raise BadValue(
            f"frequency_minutes {change.frequency_minutes} is not allowed; "
            f"allowed values: {_allowed(ALLOWED_FREQUENCIES_MINUTES)}"
        )
    if change.retention_days is not None:
        require_allowed_retention(change.retention_days)
    enabled = current.enabled if change.enabled is None else change.enabled
    frequency = (
        current.frequency_minutes if change.frequency_minutes is None else change.frequency_minutes
    )
    retention = current.retention_days if change.retention_days is None else change.retention_days
    frequency_changed = frequency != current.frequency_minutes
    retention_changed = retention != current.retention_days
    if not enabled and (frequency_changed or retention_changed):
        raise BadValue(
            "backups are disabled on this cluster: frequency and retention cannot be set "
            "while backups are disabled; enable backups in the same request or first"
        )
    if retention_changed and retention_already_changed:
        raise Conflict(RETENTION_ALREADY_SET)
    re_enabled = enabled and not current.enabled
    settings = BackupSettings(enabled, frequency, retention)
    return SettingsDecision(
        settings=settings,
        retention_changed=retention_changed,
        full_backup_required=enabled and (frequency_changed or retention_changed or re_enabled),
        changed=settings != current,
    )


def settings_after_tier_change(
    previous: Tier, tier: Tier, current: BackupSettings
) -> tuple[BackupSettings, bool]:
    """Rules "upgrade" and "downgrade" of a tier: returns the new settings and whether a full is due.

    Upgrade BASIC → STANDARD/ADVANCED keeps the schedule (now configurable). Downgrade to BASIC
    applies 24 hours / 30 days from then on; a change of frequency or retention takes a full.
    Backups already taken keep the retention they were taken with.
    """
    if tier is Tier.BASIC and previous is not Tier.BASIC:
        basic = BackupSettings(True, BASIC_FREQUENCY_MINUTES, BASIC_RETENTION_DAYS)
        full = (
            current.frequency_minutes != basic.frequency_minutes
            or current.retention_days != basic.retention_days
            or not current.enabled
        )
        return basic, full
    return current, False


@dataclass(frozen=True)
class SettingsChoices:
    configurable: bool
    frequency_minutes: tuple[int, ...]
    retention_days: tuple[int, ...]


def settings_choices(tier: Tier) -> SettingsChoices:
    """What a user may choose for a cluster of ``tier`` (what the console's Settings dialog
    offers): nothing on BASIC, the allowed lists elsewhere."""
    if tier is Tier.BASIC:
        return SettingsChoices(False, (BASIC_FREQUENCY_MINUTES,), (BASIC_RETENTION_DAYS,))
    return SettingsChoices(True, ALLOWED_FREQUENCIES_MINUTES, ALLOWED_RETENTION_DAYS)
