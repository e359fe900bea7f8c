"""What a backup reads of a database's locale, and how a restore creates the copy, on every
PostgreSQL major from 13 to 18 (the catalog's columns differ; the destination may not hold
every property): the SQL, checked without a server of each version."""

from __future__ import annotations

import pytest

from managed_backups.shared.dataplane.manifest import (
    DatabaseBackup,
    DatabaseLocale,
    DatabaseProperties,
)
from managed_backups.shared.dataplane.postgres_catalog import locale_sql
from managed_backups.shared.dataplane.restore_plan import PlanError, create_database_sql
from tests.factories import database_backup

VERSIONS = [130016, 140013, 150008, 160004, 170002, 180000]


def database(locale: DatabaseLocale | None, tablespace: str | None = None) -> DatabaseBackup:
    properties = DatabaseProperties(
        owner="o", acl=None, connection_limit=-1, comment=None, settings=[], tablespace=tablespace
    )
    return database_backup(locale=locale, properties=properties, ctype="C.UTF-8")


@pytest.mark.parametrize("version", VERSIONS)
def test_the_locale_query_names_the_columns_each_version_has(version: int) -> None:
    sql = locale_sql(version)
    assert ("datlocprovider" in sql) == (version >= 150000)
    assert ("daticulocale" in sql) == (150000 <= version < 170000)
    assert ("datlocale" in sql) == (version >= 170000)
    assert ("daticurules" in sql) == (version >= 160000)
    assert ("datcollversion" in sql) == (version >= 150000)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_libc_database_and_one_recorded_before_version_4_are_created_libc(version: int) -> None:
    for locale in (None, DatabaseLocale(provider="libc", collation_version="2.36")):
        sql, notes = create_database_sql("copy", database(locale), version, {"pg_default"})
        assert sql.startswith("CREATE DATABASE \"copy\" TEMPLATE template0 ENCODING 'UTF8'")
        assert "LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'" in sql
        # Explicit from 15: a template0 of an ICU cluster would otherwise make it ICU.
        assert ("LOCALE_PROVIDER 'libc'" in sql) == (version >= 150000)
        assert "ICU" not in sql and "COLLATION_VERSION" not in sql and notes == []


@pytest.mark.parametrize("version", VERSIONS)
def test_an_icu_database_is_created_icu_or_refused_by_name(version: int) -> None:
    icu = DatabaseLocale(provider="icu", locale="en-u-kn-true", collation_version="153.120")
    if version < 150000:
        with pytest.raises(PlanError) as refused:
            create_database_sql("copy", database(icu), version, ())
        assert refused.value.code == "UNSUPPORTED"
        assert "database shop uses the ICU locale provider (locale 'en-u-kn-true')" in (
            refused.value.message
        )
        return
    sql, _ = create_database_sql("copy", database(icu), version, ())
    assert "LOCALE_PROVIDER 'icu' ICU_LOCALE 'en-u-kn-true'" in sql
    rules = icu.model_copy(update={"icu_rules": "&a < g"})
    if version < 160000:
        with pytest.raises(PlanError, match=r"ICU rules \('&a < g'\).*needs 16"):
            create_database_sql("copy", database(rules), version, ())
    else:
        sql, _ = create_database_sql("copy", database(rules), version, ())
        assert sql.endswith("ICU_RULES '&a < g'")


@pytest.mark.parametrize("version", VERSIONS)
def test_a_builtin_provider_database_needs_17(version: int) -> None:
    builtin = DatabaseLocale(provider="builtin", locale="C.UTF-8")
    if version < 170000:
        with pytest.raises(PlanError, match=r"builtin locale provider.*needs 17"):
            create_database_sql("copy", database(builtin), version, ())
        return
    sql, _ = create_database_sql("copy", database(builtin), version, ())
    assert "LOCALE_PROVIDER 'builtin' BUILTIN_LOCALE 'C.UTF-8'" in sql


def test_the_tablespace_is_used_when_the_destination_has_it_and_said_otherwise() -> None:
    db = database(None, tablespace="fast ssd")
    sql, notes = create_database_sql("copy", db, 150008, {"pg_default", "fast ssd"})
    assert sql.endswith('TABLESPACE "fast ssd"') and notes == []
    sql, notes = create_database_sql("copy", db, 150008, {"pg_default"})
    assert "TABLESPACE" not in sql
    assert notes == [
        "database shop: created in the default tablespace (tablespace fast ssd does not exist"
        " on the destination)"
    ]
    sql, notes = create_database_sql("copy", database(None, "pg_default"), 150008, ())
    assert "TABLESPACE" not in sql and notes == []
