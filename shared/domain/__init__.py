"""The domain: aggregates whose events are the append-only history (and audit trail)."""
