"""The SQL helper on a real PostgreSQL: a literal ``?`` or ``%`` is data, not a placeholder."""

from __future__ import annotations

import pytest

from managed_backups.shared.sqldb import SqlDatabase

pytestmark = pytest.mark.integration


def test_literal_question_marks_and_percents(postgres_store_url: str) -> None:
    db = SqlDatabase(postgres_store_url)
    try:
        rows = db.query("SELECT '?', '100%', ? || '?'", ("x",))
        assert [tuple(r) for r in rows] == [("?", "100%", "x?")]
    finally:
        db.close()
