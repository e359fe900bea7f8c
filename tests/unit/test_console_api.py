"""What the console reads beyond the Cloud API's fields, over views built from real events: who
the caller is, what it may do on each cluster, the calendar's days, one backup by id, the
clusters a backup may be restored into, the audit trail's last page; and the console's files
and the API documents, served from the package with nothing from another origin."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from managed_backups.contracts.enums import ResourceType, Role
from managed_backups.services.api.console import WEB
from managed_backups.services.projections.service import Projector
from managed_backups.services.runtime import Runtime, open_runtime
from managed_backups.shared.settings import Settings
from managed_backups.shared.views import ReadModels
from tests.factories import AT, new_backup, new_cluster
from tests.principals import Keys
from tests.unit.api_client import api_client

DAY2 = AT + timedelta(days=1, hours=3)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = open_runtime(Settings(data_dir=tmp_path / "data"))
    keys = Keys(runtime.store, runtime.db, tmp_path / "keys", runtime.clock)
    key = keys.admin_key(runtime.settings.admin_key_path)
    prod = new_cluster("prod", tier="ADVANCED", regions=("us-east-1", "eu-west-1"))
    other = new_cluster("other", tier="ADVANCED")
    old = new_cluster("old", tier="ADVANCED", version="14")
    standard = new_cluster("std")
    foreign = new_cluster("foreign", tier="ADVANCED", organization="globex")
    basic = new_cluster("basic", tier="BASIC")
    full = new_backup("prod", region="us-east-1", at=AT)
    full.complete(
        as_of_time=AT,
        size_bytes=100,
        database_count=1,
        catalog=[],
        manifest_key="m",
        expires_at=AT + timedelta(days=3650),
        at=AT,
        by="test",
    )
    second = new_backup("prod", region="us-east-1", at=DAY2)
    second.complete(
        as_of_time=DAY2,
        size_bytes=50,
        database_count=1,
        catalog=[],
        manifest_key="m2",
        expires_at=DAY2 + timedelta(days=3650),
        at=DAY2,
        by="test",
    )
    failed = new_backup("std", region="us-east-1", at=DAY2)
    failed.fail("AUTHENTICATION_FAILED", "no password (set it)", "connect", DAY2, "test")
    runtime.store.save_all(prod, other, old, standard, foreign, basic, full, second, failed)
    Projector(runtime.store, ReadModels(runtime.db)).catch_up()
    async with api_client(runtime, key) as client:
        client.backup_ids = (str(full.backup_id), str(second.backup_id))  # type: ignore[attr-defined]
        client.keys = keys  # type: ignore[attr-defined]
        yield client, runtime
    runtime.close()


def key_for(client: httpx.AsyncClient, role: Role, scope: str) -> dict[str, str]:
    """A key of a new service account of acme holding ``role`` at ``scope`` (``org:<id>`` or
    ``cluster:<id>``), granted through identity as the API grants."""
    keys: Keys = client.keys  # type: ignore[attr-defined]
    kind, _, resource = scope.partition(":")
    resource_type = ResourceType.ORGANIZATION if kind == "org" else ResourceType.CLUSTER
    name = f"{role.value.lower().replace('_', '-')}-{kind}-{resource}"
    return {"Authorization": f"Bearer {keys.key('acme', name, (role, resource_type, resource))}"}


async def test_me_names_the_caller_in_identitys_terms_and_the_system_time(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    me = (await client.get("/api/v1/me")).json()
    assert me["name"] == "admin" and me["administrator"] is True
    assert me["organization"] is None and me["service_account"]["name"] == "admin"
    assert me["grants"] == [
        {"role_name": "SYSTEM_ADMIN", "resource_type": "INSTALLATION", "resource_id": "*"}
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", me["now"])
    headers = key_for(client, Role.CLUSTER_OPERATOR, "cluster:prod")
    operator = (await client.get("/api/v1/me", headers=headers)).json()
    assert operator["administrator"] is False
    assert operator["name"] == "acme/cluster-operator-cluster-prod"
    assert operator["organization"] == "acme"
    assert operator["service_account"]["organization"] == "acme"
    assert operator["key_id"] and operator["key_id"] in headers["Authorization"]
    assert operator["grants"] == [
        {"role_name": "CLUSTER_OPERATOR", "resource_type": "CLUSTER", "resource_id": "prod"}
    ]
    anonymous = await client.get("/api/v1/me", headers={"Authorization": "Bearer mbk_x_y"})
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("role", "scope", "actions"),
    [
        (
            Role.ORG_ADMIN,
            "org:acme",
            ["view_backups", "change_backup_settings", "restore", "take_backup", "manage_clusters"],
        ),
        (
            Role.CLUSTER_ADMIN,
            "cluster:prod",
            ["view_backups", "change_backup_settings", "restore", "take_backup"],
        ),
        (Role.CLUSTER_OPERATOR, "cluster:prod", ["view_backups", "restore"]),
    ],
)
async def test_a_cluster_says_what_the_caller_may_do_on_it(
    api: tuple[httpx.AsyncClient, Runtime], role: Role, scope: str, actions: list[str]
) -> None:
    client, _ = api
    headers = key_for(client, role, scope)
    detail = (await client.get("/api/v1/clusters/prod", headers=headers)).json()
    assert detail["actions"] == actions
    listed = (await client.get("/api/v1/clusters?detail=true", headers=headers)).json()
    assert {c["id"]: c["actions"] for c in listed["clusters"]}["prod"] == actions
    monitor = key_for(client, Role.CLUSTER_MONITOR, "org:acme")
    assert (await client.get("/api/v1/clusters?detail=true", headers=monitor)).json() == {
        "clusters": []
    }
    assert (await client.get("/api/v1/clusters/prod", headers=monitor)).status_code == 404


async def test_cluster_detail_has_its_last_backup_and_the_settings_its_tier_allows(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    std = (await client.get("/api/v1/clusters/std")).json()
    assert std["last_backup"]["status"] == "FAILED"
    assert std["last_backup"]["error"] == {
        "code": "AUTHENTICATION_FAILED",
        "message": "no password (set it)",
    }
    assert std["settings_choices"] == {
        "configurable": True,
        "frequency_minutes": [5, 10, 15, 30, 60, 240, 1440],
        "retention_days": [2, 7, 30, 90, 365],
    }
    basic = (await client.get("/api/v1/clusters/basic")).json()
    assert basic["last_backup"] is None
    assert basic["settings_choices"] == {
        "configurable": False,
        "frequency_minutes": [1440],
        "retention_days": [30],
    }
    prod = (await client.get("/api/v1/clusters/prod")).json()
    assert prod["last_backup"]["status"] == "COMPLETE"
    assert prod["last_backup"]["at"] == "2026-03-02T03:00:00.000000Z"


async def test_the_calendar_days_and_one_backup_by_id(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    first, second = client.backup_ids  # type: ignore[attr-defined]
    days = await client.get(
        "/api/v1/clusters/prod/backups/days",
        params={"start_time": "2026-03-01T00:00:00Z", "end_time": "2026-04-01T00:00:00Z"},
    )
    assert days.json() == {
        "days": [{"date": "2026-03-01", "backups": 1}, {"date": "2026-03-02", "backups": 1}]
    }
    march_2 = await client.get(
        "/api/v1/clusters/prod/backups/days", params={"start_time": "2026-03-02T00:00:00Z"}
    )
    assert march_2.json() == {"days": [{"date": "2026-03-02", "backups": 1}]}
    one = (await client.get(f"/api/v1/clusters/prod/backups/{second}")).json()
    assert one["id"] == second and one["status"] == "COMPLETE" and one["size_bytes"] == 50
    assert one["verification"] is None and one["cluster_id"] == "prod"
    assert (await client.get(f"/api/v1/backups/{first}")).json()["cluster_id"] == "prod"
    elsewhere = key_for(client, Role.CLUSTER_ADMIN, "cluster:std")
    hidden = await client.get(f"/api/v1/backups/{first}", headers=elsewhere)
    assert hidden.status_code == 404 and hidden.json()["message"] == f"backup {first} is not known"
    bad = await client.get("/api/v1/clusters/prod/backups/not-a-uuid")
    assert bad.status_code == 400


async def test_restore_destinations_follow_the_restore_rules(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api

    async def destinations(cluster: str, headers: dict[str, str] | None = None) -> list[str]:
        answer = await client.get(
            f"/api/v1/clusters/{cluster}/restore-destinations", headers=headers or {}
        )
        assert answer.status_code == 200, answer.text
        return [c["id"] for c in answer.json()["clusters"]]

    # ADVANCED: itself and the ADVANCED clusters of its organization, not an older major.
    assert await destinations("prod") == ["prod", "other"]
    # STANDARD and BASIC: only themselves.
    assert await destinations("std") == ["std"]
    assert await destinations("basic") == ["basic"]
    # The restore right on both: an operator of prod alone may restore into prod only.
    operator = key_for(client, Role.CLUSTER_OPERATOR, "cluster:prod")
    assert await destinations("prod", operator) == ["prod"]


async def test_the_audit_trail_opens_on_its_last_page(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    every = (await client.get("/api/v1/clusters/prod/events")).json()["events"]
    assert len(every) >= 3
    last = (
        await client.get("/api/v1/clusters/prod/events", params={"before": 2**62, "limit": 2})
    ).json()["events"]
    assert [e["position"] for e in last] == [e["position"] for e in every[-2:]]
    earlier = (
        await client.get(
            "/api/v1/clusters/prod/events", params={"before": last[0]["position"], "limit": 1}
        )
    ).json()["events"]
    assert [e["position"] for e in earlier] == [every[-3]["position"]]


async def test_the_console_and_its_files_come_from_the_package_with_a_strict_policy(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    page = await client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    referenced = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert referenced and all(r.startswith("/") and not r.startswith("//") for r in referenced)
    for path in [r for r in referenced if r.startswith("/console/")]:
        asset = await client.get(path)
        assert asset.status_code == 200, path
        assert asset.headers["content-security-policy"] == policy
    for file in WEB.iterdir():
        text = file.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "http://" not in text and "https://" not in text, file.name
        for module in re.findall(r'from "([^"]+)"', text):
            assert module.startswith("./") and (WEB / module[2:]).exists(), (file.name, module)


async def test_the_documents_are_served_without_a_cdn(
    api: tuple[httpx.AsyncClient, Runtime],
) -> None:
    client, _ = api
    for path in ("/docs", "/redoc"):
        page = await client.get(path)
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href|url)\s*[=:]\s*["\']([^"\']+)["\']', page.text)
        assert urls, path
        for url in urls:
            assert url.startswith("/"), (path, url)
            if url.startswith("/docs-assets/") or url.startswith("/console/"):
                assert (await client.get(url)).status_code == 200, url
        assert "fonts.googleapis" not in page.text and "cdn." not in page.text
    document = (await client.get("/asyncapi")).json()
    assert document["asyncapi"] == "3.0.0"
    assert {c["address"] for c in document["channels"].values()} >= {
        "managed-backups.cluster-commands",
        "managed-backups.events",
    }
