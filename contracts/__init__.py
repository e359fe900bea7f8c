"""Wire contracts of managed-backups: commands, events, results, topics (pydantic v2)."""
