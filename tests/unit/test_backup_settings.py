"""Rule "backup settings per cluster", rule by rule (pure domain, no I/O)."""

from __future__ import annotations

import pytest

from managed_backups.contracts.enums import Tier
from managed_backups.shared.domain.backup_settings import (
    ALLOWED_FREQUENCIES_MINUTES,
    ALLOWED_RETENTION_DAYS,
    RETENTION_ALREADY_SET,
    BackupSettings,
    SettingsChange,
    decide_settings_change,
    initial_settings,
    settings_after_tier_change,
)
from managed_backups.shared.domain.errors import BadValue, Conflict

DEFAULT = BackupSettings(True, 60, 30)


def test_defaults_per_tier() -> None:
    assert initial_settings(Tier.BASIC) == BackupSettings(True, 1440, 30)
    assert initial_settings(Tier.STANDARD) == DEFAULT
    assert initial_settings(Tier.ADVANCED) == DEFAULT


@pytest.mark.parametrize("frequency", ALLOWED_FREQUENCIES_MINUTES)
def test_every_allowed_frequency_is_accepted_and_takes_a_full(frequency: int) -> None:
    decision = decide_settings_change(
        Tier.STANDARD, DEFAULT, False, SettingsChange(frequency_minutes=frequency)
    )
    assert decision.settings.frequency_minutes == frequency
    assert decision.full_backup_required is (frequency != 60)
    assert decision.retention_changed is False


@pytest.mark.parametrize("frequency", [0, 1, 20, 45, 120, 1441, -5])
def test_other_frequencies_are_refused_naming_the_allowed_values(frequency: int) -> None:
    with pytest.raises(BadValue) as refused:
        decide_settings_change(
            Tier.ADVANCED, DEFAULT, False, SettingsChange(frequency_minutes=frequency)
        )
    assert refused.value.code == 400
    assert "allowed values: 5, 10, 15, 30, 60, 240, 1440" in refused.value.reason


@pytest.mark.parametrize("retention", [1, 3, 14, 60, 180, 366])
def test_other_retentions_are_refused(retention: int) -> None:
    with pytest.raises(BadValue) as refused:
        decide_settings_change(
            Tier.STANDARD, DEFAULT, False, SettingsChange(retention_days=retention)
        )
    assert "allowed values: 2, 7, 30, 90, 365" in refused.value.reason


@pytest.mark.parametrize("retention", ALLOWED_RETENTION_DAYS)
def test_retention_changes_once_then_is_refused_with_the_anchor_text(retention: int) -> None:
    first = decide_settings_change(
        Tier.STANDARD, DEFAULT, False, SettingsChange(retention_days=retention)
    )
    assert first.retention_changed is (retention != 30)
    if retention == 30:
        return
    with pytest.raises(Conflict) as refused:
        decide_settings_change(
            Tier.STANDARD,
            first.settings,
            True,
            SettingsChange(retention_days=365 if retention != 365 else 2),
        )
    assert refused.value.code == 409
    assert refused.value.reason == RETENTION_ALREADY_SET
    # Restating the current retention is not a change, so it is allowed.
    same = decide_settings_change(
        Tier.STANDARD, first.settings, True, SettingsChange(retention_days=retention)
    )
    assert not same.changed


def test_basic_refuses_any_change() -> None:
    for change in (
        SettingsChange(enabled=False),
        SettingsChange(frequency_minutes=1440),
        SettingsChange(retention_days=30),
    ):
        with pytest.raises(BadValue) as refused:
            decide_settings_change(Tier.BASIC, BackupSettings(True, 1440, 30), False, change)
        assert "BASIC" in refused.value.reason


def test_disabled_clusters_refuse_frequency_and_retention() -> None:
    disabled = BackupSettings(False, 60, 30)
    with pytest.raises(BadValue) as refused:
        decide_settings_change(Tier.STANDARD, disabled, False, SettingsChange(frequency_minutes=30))
    assert "disabled" in refused.value.reason
    # Enabling in the same request is fine, and takes a full.
    decision = decide_settings_change(
        Tier.STANDARD, disabled, False, SettingsChange(enabled=True, frequency_minutes=30)
    )
    assert decision.settings == BackupSettings(True, 30, 30) and decision.full_backup_required


def test_disabling_takes_no_backup() -> None:
    decision = decide_settings_change(Tier.STANDARD, DEFAULT, False, SettingsChange(enabled=False))
    assert decision.settings.enabled is False and decision.full_backup_required is False


def test_upgrade_keeps_the_schedule_downgrade_applies_basic() -> None:
    assert settings_after_tier_change(
        Tier.BASIC, Tier.STANDARD, BackupSettings(True, 1440, 30)
    ) == (BackupSettings(True, 1440, 30), False)
    assert settings_after_tier_change(Tier.STANDARD, Tier.BASIC, BackupSettings(True, 60, 90)) == (
        BackupSettings(True, 1440, 30),
        True,
    )
    assert settings_after_tier_change(Tier.STANDARD, Tier.ADVANCED, BackupSettings(True, 5, 7)) == (
        BackupSettings(True, 5, 7),
        False,
    )
