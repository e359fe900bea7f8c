"""The rules the second security probe asked for, one test each: restores fairly scheduled and
bounded per organization and cluster, objects named once, no table restored into a template
(or ``postgres`` by less than a Cluster Admin), on-demand backups kept for the cluster's
retention. The same rules run end to end in ``tests/integration/test_hostile_tenants.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from managed_backups.contracts.enums import RestoreType, Role, Tier
from managed_backups.services.restore.fair import FairSlots
from managed_backups.shared.domain.backup_settings import backup_retention_follows_the_cluster
from managed_backups.shared.domain.errors import Refused
from managed_backups.shared.domain.restore_rules import (
    objects_match_the_restore_type,
    restore_jobs_within_bounds,
    table_restore_not_into_a_template_or_postgres,
)
from managed_backups.shared.security import Grant, Principal
from tests.factories import new_cluster


def refused(call: Any, *args: Any) -> Refused:
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value


async def test_a_freed_slot_goes_to_the_organization_with_the_fewest_jobs_running() -> None:
    """Sixty jobs of one organization queued before one of another: the other's job takes the
    first slot that frees."""
    slots = FairSlots(2)
    started: list[str] = []
    release: dict[str, asyncio.Event] = {}

    async def job(organization: str, name: str) -> None:
        async with slots.slot(organization):
            started.append(name)
            release[name] = asyncio.Event()
            await release[name].wait()

    tasks = [asyncio.create_task(job("greedy", f"g{i}")) for i in range(60)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(job("patient", "p0")))
    while len(started) < 2:
        await asyncio.sleep(0)
    assert started == ["g0", "g1"] and slots.queued("greedy") == 58
    release["g0"].set()
    while len(started) < 3:
        await asyncio.sleep(0)
    assert started[2] == "p0"
    release["g1"].set()
    while len(started) < 4:
        await asyncio.sleep(0)
    assert started[3] == "g2"  # in its own order, once the other organization has its slot
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert slots.busy == 0 and slots.queued() == 0


async def test_a_cancelled_waiter_gives_its_slot_on() -> None:
    slots = FairSlots(1)
    holder = asyncio.Event()

    async def hold() -> None:
        async with slots.slot("a"):
            await holder.wait()

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(hold())
    third = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting.cancel()
    holder.set()
    await asyncio.wait_for(asyncio.gather(first, third), 5)
    assert slots.busy == 0 and slots.queued() == 0


def test_restore_jobs_are_bounded_per_cluster_and_per_organization() -> None:
    cluster = new_cluster("shop", organization="acme")
    restore_jobs_within_bounds(cluster, 4, 10, 4, 10)
    per_cluster = refused(restore_jobs_within_bounds, cluster, 5, 5, 4, 10)
    assert per_cluster.code == 429 and "MAX_RESTORES_PER_CLUSTER=4" in per_cluster.reason
    per_org = refused(restore_jobs_within_bounds, cluster, 1, 11, 4, 10)
    assert per_org.code == 429 and "organization acme" in per_org.reason


def test_a_table_named_twice_is_refused_before_anything_runs() -> None:
    twice = [{"database": "d", "table": "t"}] * 1000
    reason = refused(objects_match_the_restore_type, RestoreType.TABLE, twice, {}).reason
    assert "objects[1] names public.t of database d again (objects[0])" in reason
    implicit = [
        {"database": "d", "table": "t"},
        {"database": "d", "schema": "public", "table": "t"},
    ]
    assert refused(objects_match_the_restore_type, RestoreType.TABLE, implicit, {}).code == 400
    other_schema = [{"database": "d", "table": "t"}, {"database": "d", "schema": "s", "table": "t"}]
    objects_match_the_restore_type(RestoreType.TABLE, other_schema, {})


def principal(role: Role) -> Principal:
    return Principal("someone", "k", (Grant(role, "cluster:shop"),))


@pytest.mark.parametrize("target", ["template0", "template1", "my_template"])
def test_no_table_is_restored_into_a_template(target: str) -> None:
    shop = new_cluster("shop")
    for role in (Role.CLUSTER_OPERATOR, Role.CLUSTER_ADMIN, Role.SYSTEM_ADMIN):
        why = refused(
            table_restore_not_into_a_template_or_postgres,
            principal(role),
            shop,
            target,
            target == "my_template",
        )
        assert why.code == 400 and "template" in why.reason


def test_only_a_cluster_admin_restores_tables_into_postgres() -> None:
    shop = new_cluster("shop")
    rule = table_restore_not_into_a_template_or_postgres
    why = refused(rule, principal(Role.CLUSTER_OPERATOR), shop, "postgres", False)
    assert why.code == 403 and "Cluster Admin" in why.reason
    rule(principal(Role.CLUSTER_ADMIN), shop, "postgres", False)
    rule(principal(Role.CLUSTER_OPERATOR), shop, "orders", False)
    # The role, where it decides: an Organization Admin of the cluster's organization is above
    # a Cluster Admin; an organization's Cluster Operator grant decides over a cluster grant.
    rule(
        Principal("o", "k", (Grant(Role.ORG_ADMIN, f"org:{shop.organization}"),)),
        shop,
        "postgres",
        False,
    )
    operator_in_org = Principal(
        "o",
        "k",
        (
            Grant(Role.CLUSTER_OPERATOR, f"org:{shop.organization}"),
            Grant(Role.CLUSTER_ADMIN, "cluster:shop"),
        ),
    )
    assert refused(rule, operator_in_org, shop, "postgres", False).code == 403


def test_an_on_demand_backup_follows_the_tier_and_settings() -> None:
    rule = backup_retention_follows_the_cluster
    basic = refused(rule, "b", Tier.BASIC, 30, 365)
    assert basic.code == 400 and "BASIC" in basic.reason and "30" in basic.reason
    assert rule("b", Tier.BASIC, 30, None) == 30
    assert rule("b", Tier.BASIC, 30, 30) == 30
    standard = refused(rule, "s", Tier.STANDARD, 7, 365)
    assert "keep backups 7 days" in standard.reason
    assert refused(rule, "s", Tier.STANDARD, 7, 3).code == 400  # not an allowed value at all
    # The slot the schedule recorded keeps the retention it was scheduled with.
    assert rule("s", Tier.STANDARD, 7, 30, scheduled_with=30) == 30
    assert rule("s", Tier.STANDARD, 7, None, scheduled_with=30) == 30


@pytest.mark.parametrize("role", list(Role))
def test_postgres_takes_tables_from_the_roles_that_administer_the_cluster(role: Role) -> None:
    """Every role, granted where the role table grants it (the installation, the organization,
    the cluster): only a Cluster Admin, an Organization Admin and the system administrator
    restore tables into ``postgres``; the Cluster Operator, the only other role that may
    restore, is refused, and so is every role on another organization's cluster."""
    shop = new_cluster("shop", organization="acme")
    scope = {Role.SYSTEM_ADMIN: "*", Role.ORG_ADMIN: "org:acme"}.get(role, "cluster:shop")
    who = Principal("someone", "k", (Grant(role, scope),))
    rule = table_restore_not_into_a_template_or_postgres
    if role in (Role.SYSTEM_ADMIN, Role.ORG_ADMIN, Role.CLUSTER_ADMIN):
        rule(who, shop, "postgres", False)
    else:
        assert refused(rule, who, shop, "postgres", False).code == 403
    elsewhere = new_cluster("elsewhere", organization="globex")
    if role is not Role.SYSTEM_ADMIN:
        assert refused(rule, who, elsewhere, "postgres", False).code == 403
