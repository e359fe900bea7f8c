"""The topics, exactly, and what each carries."""

from __future__ import annotations

from typing import Final

CLUSTER_COMMANDS: Final = "managed-backups.cluster-commands"
BACKUP_COMMANDS: Final = "managed-backups.backup-commands"
RESTORE_COMMANDS: Final = "managed-backups.restore-commands"
RETENTION_COMMANDS: Final = "managed-backups.retention-commands"
EVENTS: Final = "managed-backups.events"
COMMAND_RESULTS: Final = "managed-backups.command-results"
DEAD_LETTER: Final = "managed-backups.dead-letter"

ALL_TOPICS: Final = (
    CLUSTER_COMMANDS,
    BACKUP_COMMANDS,
    RESTORE_COMMANDS,
    RETENTION_COMMANDS,
    EVENTS,
    COMMAND_RESULTS,
    DEAD_LETTER,
)
COMMAND_TOPICS: Final = (CLUSTER_COMMANDS, BACKUP_COMMANDS, RESTORE_COMMANDS, RETENTION_COMMANDS)
