"""The console in a real browser (Debian's Chromium, headless, driven by Playwright) on a real
stack with real backups (``console_stack.py``): sign-in, each tab, the calendar and the
databases → tables drill-down, a setting changed and a second retention change refused, a TABLE
restore started from the dialog and followed to its end (then compared with the source), a
CLUSTER restore refused on a wrong name, the failed backup's hint, the audit trail, setting a
password, what a Cluster Operator and a Cluster Monitor see, a narrow screen, the API documents;
then the command line for daily work on the same stack.

Every page is checked to load nothing from anywhere but the API. A screenshot of each step is
saved under ``test-output/console/`` (``MANAGED_BACKUPS_TEST_OUTPUT`` moves it).

The tests run in order on one browser page and build on each other (the settings test's change
is what the audit test finds, the restore test's job is what the operator sees).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.infra.browser import launch, output_dir
from tests.infra.postgres import LocalPostgres
from tests.integration.console_stack import (
    BILLING,
    NAMES,
    PROD,
    SANDBOX,
    SHOP,
    STAGING,
    Stack,
    fill_source,
    start_stack,
)
from tests.restore_checks import table_digest

pytestmark = pytest.mark.integration

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def source() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        fill_source(pg)
        yield pg


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, kafka: str, source: LocalPostgres
) -> AsyncIterator[Stack]:
    running = await start_stack(tmp_path_factory.mktemp("console"), kafka, source)
    yield running
    await running.system.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    return output_dir("console")


class Requests:
    """Every URL the browser asked for: the console must reach nothing but its own origin."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.seen: list[str] = []

    def foreign(self) -> list[str]:
        own = urlsplit(self.origin).netloc
        return [u for u in self.seen if urlsplit(u).scheme != "data" and urlsplit(u).netloc != own]


@pytest.fixture(scope="module")
async def browser_page(stack: Stack) -> AsyncIterator[tuple[Page, Requests, list[str]]]:
    requests = Requests(stack.url)
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        page.on("request", lambda r: requests.seen.append(r.url))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: (
                problems.append(f"console {m.type}: {m.text}")
                if m.type == "error"
                and "401" not in m.text
                and "404" not in m.text
                and "409" not in m.text
                else None
            ),
        )
        yield page, requests, problems
        await browser.close()


@pytest.fixture
async def page(
    browser_page: tuple[Page, Requests, list[str]],
) -> AsyncIterator[Page]:
    """The shared page; after each test, nothing was fetched from another origin and no
    script failed."""
    the_page, requests, problems = browser_page
    yield the_page
    assert requests.foreign() == []
    assert problems == []


async def sign_in(page: Page, stack: Stack, key: str) -> None:
    await page.goto(f"{stack.url}/")
    # The page shows the sign-in form, or (a key kept for the browser session) the signed-in
    # view once /me answered: wait for one of the two before deciding.
    sign_out, key_field = page.locator("#sign-out"), page.locator("#api-key")
    await expect(sign_out.or_(key_field).first).to_be_visible()
    if await sign_out.is_visible():
        await page.click("#sign-out")
    await page.fill("#api-key", key)
    await page.click("form.sign-in button[type=submit]")
    await expect(page.locator("#who-name")).to_contain_text("Signed in as")


async def open_cluster(page: Page, stack: Stack, cluster_id: str, tab: str = "backups") -> None:
    await page.goto(f"{stack.url}/#/clusters/{cluster_id}/{tab}")
    await expect(page.locator(f"#tab-{tab}")).to_have_attribute("aria-selected", "true")
    await expect(page.locator(".panel .loading")).to_have_count(0)


async def test_sign_in_refuses_a_wrong_key_then_shows_the_clusters(
    page: Page, stack: Stack, shots: Path
) -> None:
    await page.goto(f"{stack.url}/")
    await expect(page.locator("h1")).to_have_text("Sign in")
    await page.fill("#api-key", "mbk_nope_nope")
    await page.click("form.sign-in button[type=submit]")
    await expect(page.locator(".sign-in [role=alert]")).to_contain_text(
        "unknown, revoked, expired or wrong"
    )
    await page.screenshot(path=shots / "00-sign-in-refused.png")
    await page.fill("#api-key", stack.admin_key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#who-name")).to_have_text("Signed in as admin (administrator)")
    assert stack.admin_key not in page.url
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(4)
    billing = rows.filter(has_text=NAMES[BILLING])
    await expect(billing.locator(".mark-failed")).to_contain_text("Last backup failed")
    await expect(billing).to_contain_text("AUTHENTICATION_FAILED")
    prod = rows.filter(has_text=NAMES[PROD])
    await expect(prod).to_contain_text("ADVANCED")
    await expect(prod).to_contain_text("KiB")  # stored size
    await expect(prod).to_contain_text(" → ")  # the recoverability window
    await page.screenshot(path=shots / "01-clusters.png", full_page=True)


async def test_backups_tab_calendar_and_the_databases_tables_drill_down(
    page: Page, stack: Stack, shots: Path
) -> None:
    await page.click(f"text={NAMES[PROD]}")
    await expect(page.locator("#tab-backups")).to_have_attribute("aria-selected", "true")
    rows = page.locator(".backups-list tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("Incremental")
    await expect(rows.nth(1)).to_contain_text("Full")
    await expect(rows.nth(0)).to_contain_text("29 days")  # expires in, 30-day retention
    marked = page.locator(".calendar .day.has")
    await expect(marked).to_have_count(1)
    await expect(marked).to_contain_text("2")
    await page.screenshot(path=shots / "02-backups.png", full_page=True)
    await marked.click()
    await expect(page.locator(".backups-list h2")).to_contain_text("Backups of ")
    await expect(rows).to_have_count(2)
    await expect(page.locator(".calendar .day.selected")).to_have_count(1)
    # An empty day says so.
    unmarked = page.locator(".calendar .day:not(.has)").first
    await unmarked.click()
    await expect(page.locator(".backups-list .empty")).to_contain_text("No backups from")
    await page.click("text=Show all days")
    await expect(rows).to_have_count(2)

    await rows.nth(0).locator("a.count").click()
    databases = page.locator(".panel tbody tr")
    await expect(page.locator(".panel h2")).to_have_text("Databases")
    await expect(databases).to_have_count(2)  # postgres has no tables: not listed
    await expect(databases.filter(has_text=SHOP).locator("a.count")).to_have_text("3")
    await page.screenshot(path=shots / "03-databases.png", full_page=True)
    await databases.filter(has_text=SHOP).locator("a.count").click()
    await expect(page.locator(".panel h2")).to_have_text(f"Tables of {SHOP}")
    tables = page.locator(".panel tbody tr")
    await expect(tables).to_have_count(3)
    orders = tables.filter(has_text="orders")
    rows_at_incremental = stack.at_incremental["orders"][0]
    await expect(orders).to_contain_text(f"{rows_at_incremental:,}")
    await expect(tables.filter(has_text="changes")).to_contain_text("audit")
    await page.screenshot(path=shots / "04-tables.png", full_page=True)


async def test_settings_change_then_a_second_retention_change_is_refused(
    page: Page, stack: Stack, shots: Path
) -> None:
    await open_cluster(page, stack, PROD)
    settings = page.get_by_role("button", name="Settings")
    await settings.focus()
    await page.keyboard.press("Enter")  # a dialog opened from the keyboard...
    dialog = page.locator("dialog[open]")
    await expect(dialog.locator("h2")).to_have_text("Backup Settings")
    await expect(dialog).to_contain_text("takes a full backup right away")
    await expect(dialog).to_contain_text("Retention can be changed once")
    await page.keyboard.press("Escape")  # ...closes with Escape, focus back on its button
    await expect(page.locator("dialog")).to_have_count(0)
    await expect(settings).to_be_focused()

    await settings.click()
    await dialog.locator("select[name=frequency_minutes]").select_option("240")
    await dialog.locator("select[name=retention_days]").select_option("7")
    await page.screenshot(path=shots / "05-settings.png")
    await dialog.get_by_role("button", name="Save").click()
    await expect(page.locator("dialog")).to_have_count(0)
    await expect(page.locator("#toast")).to_contain_text("Backup settings saved")
    await expect(page.locator(".cluster-head")).to_contain_text("every 4 hours, kept 7 days")

    await settings.click()
    await expect(dialog).to_contain_text("already been changed once")
    await dialog.locator("select[name=retention_days]").select_option("90")
    await dialog.get_by_role("button", name="Save").click()
    refusal = dialog.locator("[role=alert]")
    await expect(refusal).to_contain_text(
        "cluster already has a retention policy set, open a support ticket to change it"
    )
    await page.screenshot(path=shots / "06-settings-refused.png")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(page.locator(".cluster-head")).to_contain_text("kept 7 days")

    # A BASIC cluster's settings are shown, read-only, with why.
    await open_cluster(page, stack, SANDBOX)
    await page.get_by_role("button", name="Settings").click()
    await expect(dialog).to_contain_text("BASIC clusters take a backup every 24 hours")
    await expect(dialog.locator("select[name=retention_days]")).to_be_disabled()
    await expect(dialog.get_by_role("button", name="Save")).to_have_count(0)
    await page.keyboard.press("Escape")


async def test_a_table_restore_from_the_dialog_runs_to_its_end_and_restores_exactly(
    page: Page, stack: Stack, shots: Path
) -> None:
    await page.goto(f"{stack.url}/#/clusters/{PROD}/backups/{stack.incremental_id}/{SHOP}")
    await page.get_by_role("button", name="Restore table public.orders").click()
    dialog = page.locator("dialog[open]")
    await expect(dialog.locator("h2")).to_have_text("Restore table")
    destinations = dialog.locator("select[name=destination] option")
    await expect(destinations).to_have_count(2)  # itself and the other ADVANCED cluster
    await expect(dialog.locator("select[name=destination]")).to_have_value(PROD)
    await expect(dialog).to_contain_text("Leave out a foreign key whose referenced table")
    await dialog.get_by_label("A new database").check()
    await dialog.locator("input[name=new_db_name]").fill("orders check")
    await dialog.get_by_label("Skip missing foreign keys").check()
    await page.screenshot(path=shots / "07-restore-table-dialog.png")
    await dialog.get_by_role("button", name="Restore").click()
    # Starting it switches to Restore Jobs, where the job runs to its end.
    await expect(page.locator("#tab-restores")).to_have_attribute("aria-selected", "true")
    job = page.locator(".panel tbody tr").first
    await expect(job).to_contain_text("orders check")
    await expect(job).to_contain_text("Table")
    await expect(job.locator(".badge")).to_have_text("Succeeded", timeout=120_000)
    await expect(job).to_contain_text("100.0%")
    await page.screenshot(path=shots / "08-restore-jobs.png", full_page=True)
    assert (
        table_digest(stack.pg.url_for("orders check"), "public", "orders")
        == (stack.at_incremental["orders"])
    )


def databases(pg: LocalPostgres) -> set[str]:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


async def test_a_cluster_restore_warns_and_is_refused_on_a_wrong_name(
    page: Page, stack: Stack, shots: Path
) -> None:
    assert stack.system.http is not None
    before = (await stack.system.http.get(f"/api/v1/clusters/{STAGING}/restores")).json()
    on_server = databases(stack.pg)
    await open_cluster(page, stack, PROD)
    await page.locator(".backups-list tbody tr").nth(1).get_by_role("button").click()
    dialog = page.locator("dialog[open]")
    await expect(dialog.locator("h2")).to_have_text("Restore cluster")
    await expect(dialog.locator(".danger")).to_contain_text(
        "completely erases all data in the destination cluster"
    )
    await dialog.locator("select[name=destination]").select_option(STAGING)
    await expect(dialog.get_by_label("Skip localities check")).to_be_visible()
    await dialog.get_by_role("button", name="Continue").click()
    await expect(dialog).to_contain_text(f"Type the destination cluster's name, {NAMES[STAGING]}")
    await dialog.locator("input[name=confirm]").fill(NAMES[PROD])  # the wrong cluster
    await dialog.get_by_role("button", name="Restore").click()
    await expect(dialog.locator("[role=alert]")).to_contain_text("nothing was restored")
    await page.screenshot(path=shots / "09-cluster-restore-refused.png")
    await page.keyboard.press("Escape")
    await expect(page.locator("dialog")).to_have_count(0)
    after = (await stack.system.http.get(f"/api/v1/clusters/{STAGING}/restores")).json()
    assert after == before and databases(stack.pg) == on_server


async def test_incomplete_backups_give_the_hint_and_the_password_is_set_from_the_console(
    page: Page, stack: Stack, shots: Path
) -> None:
    await open_cluster(page, stack, BILLING, "incomplete")
    row = page.locator(".panel tbody tr").first
    await expect(row).to_contain_text("Failed")
    await expect(row.locator(".error-code")).to_have_text("AUTHENTICATION_FAILED")
    await expect(row).to_contain_text(f"managed-backups clusters set-secret {BILLING}")
    await expect(page.locator(".cluster-head .warning")).to_contain_text("The last backup failed")
    await page.screenshot(path=shots / "10-incomplete-backups.png", full_page=True)

    await page.get_by_role("button", name="Set password").click()
    dialog = page.locator("dialog[open]")
    await dialog.get_by_label("Password", exact=True).fill(stack.pg.password)
    await dialog.get_by_label("Password again").fill(stack.pg.password + "x")
    await dialog.get_by_role("button", name="Set password").click()
    await expect(dialog.locator("[role=alert]")).to_contain_text("the two passwords differ")
    await dialog.get_by_label("Password again").fill(stack.pg.password)
    await dialog.get_by_role("button", name="Set password").click()
    await expect(page.locator("#toast")).to_contain_text("password of Billing is set")
    # With its password the cluster backs up: a backup taken now from the console completes.
    await page.get_by_role("button", name="Back up now").click()
    await page.locator("dialog[open]").get_by_role("button", name="Start backup").click()
    await expect(page.locator("#tab-backups")).to_have_attribute("aria-selected", "true")
    row = page.locator(".backups-list tbody tr").first
    await expect(row.locator(".badge")).to_have_text("Complete", timeout=90_000)
    await expect(row).to_contain_text("Full")
    await page.screenshot(path=shots / "11-backup-after-password.png", full_page=True)
    await open_cluster(page, stack, BILLING, "audit")
    secret = page.locator(".panel tbody tr").filter(has_text="ConnectionSecretSet")
    await expect(secret).to_contain_text("admin")
    assert stack.pg.password not in await page.content()


async def test_the_audit_trail_shows_every_event_with_who_did_it(
    page: Page, stack: Stack, shots: Path
) -> None:
    await open_cluster(page, stack, PROD, "audit")
    rows = page.locator(".panel tbody tr")
    await expect(rows.filter(has_text="ClusterRegistered")).to_have_count(1)
    settings = rows.filter(has_text="BackupSettingsUpdated")
    await expect(settings).to_have_count(1)
    await expect(settings).to_contain_text("admin")
    await expect(settings).to_contain_text("retention_days: 7")
    await expect(rows.filter(has_text="RestoreSucceeded")).to_have_count(1)
    positions = [int(p) for p in await rows.locator("td.num").all_inner_texts()]
    assert positions == sorted(positions)
    await page.screenshot(path=shots / "12-audit-trail.png", full_page=True)


async def test_an_operator_may_restore_but_not_change_settings_and_a_monitor_sees_nothing(
    page: Page, stack: Stack, shots: Path
) -> None:
    await sign_in(page, stack, stack.operator_key)
    await expect(page.locator("#who-name")).to_contain_text("Signed in as acme/olivia-")
    await expect(page.locator("#who-roles")).to_have_text(f"Cluster Operator on cluster {PROD}")
    await expect(page.locator("tbody tr")).to_have_count(1)  # only its cluster
    await open_cluster(page, stack, PROD)
    await expect(page.get_by_role("button", name="Settings")).to_have_count(0)
    await expect(page.get_by_role("button", name="Set password")).to_have_count(0)
    await expect(page.get_by_role("button", name="Back up now")).to_have_count(0)
    await expect(page.locator(".backups-list td.actions button")).to_have_count(2)
    await page.screenshot(path=shots / "13-operator.png", full_page=True)

    await sign_in(page, stack, stack.monitor_key)
    await expect(page.locator("#who-roles")).to_have_text("Cluster Monitor on organization acme")
    await expect(page.locator(".state.empty")).to_contain_text("No clusters to show")
    await page.screenshot(path=shots / "14-monitor.png", full_page=True)
    await page.goto(f"{stack.url}/#/clusters/{PROD}/backups")
    await expect(page.locator(".state.error")).to_contain_text(f"cluster {PROD} is not registered")
    await expect(page.get_by_role("button", name=re.compile("Restore|Settings"))).to_have_count(0)


async def test_a_narrow_screen(page: Page, stack: Stack, shots: Path) -> None:
    await sign_in(page, stack, stack.admin_key)
    await page.set_viewport_size({"width": 390, "height": 844})
    try:
        await expect(page.locator("tbody tr")).to_have_count(4)
        await page.screenshot(path=shots / "15-narrow-clusters.png", full_page=True)
        await open_cluster(page, stack, PROD)
        await expect(page.locator(".backups-list tbody tr")).to_have_count(2)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # wide tables scroll inside their frame, not the page
        await page.screenshot(path=shots / "16-narrow-backups.png", full_page=True)
    finally:
        await page.set_viewport_size({"width": 1280, "height": 900})


async def test_the_api_documents_load_from_the_api_alone(
    page: Page, stack: Stack, shots: Path
) -> None:
    await page.goto(f"{stack.url}/docs")
    await expect(page.locator(".swagger-ui .title")).to_contain_text("managed-backups")
    await expect(page.locator(".opblock-summary-path").first).to_be_visible()
    await page.screenshot(path=shots / "17-docs.png")
    assert stack.system.http is not None
    document = (await stack.system.http.get("/asyncapi")).json()
    assert document["asyncapi"].startswith("3.")
    assert "managed-backups.restore-commands" in {
        c["address"] for c in document["channels"].values()
    }


def cli(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    """``managed-backups ARGV`` in its own process, as a user runs it, with the admin's key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANAGED_BACKUPS_")}
    env["MANAGED_BACKUPS_CREDENTIAL"] = stack.admin_key
    return subprocess.run(
        [sys.executable, "-m", "managed_backups.services.cli", *argv, "--api-url", stack.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


async def test_the_cli_for_daily_work_on_the_same_stack(stack: Stack) -> None:
    """The commands a user types instead of the console, on the real backups above."""

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return cli(stack, *argv)

    listed = await asyncio.to_thread(run, "clusters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    clusters = {c["id"]: c for c in json.loads(listed.stdout)["clusters"]}
    assert clusters[PROD]["recoverability"]["restorable_backups"] == 2
    table = await asyncio.to_thread(run, "clusters", "list")
    assert PROD in table.stdout and "Recoverability window" in table.stdout

    day = clusters[PROD]["recoverability"]["newest_restorable"][:10]
    backups = await asyncio.to_thread(run, "backups", "list", PROD, "--date", day, "--json")
    assert [b["id"] for b in json.loads(backups.stdout)["backups"]] == [
        str(stack.incremental_id),
        str(stack.full_id),
    ]
    shown = await asyncio.to_thread(run, "backups", "show", str(stack.incremental_id))
    assert shown.returncode == 0, shown.stderr
    orders = next(line for line in shown.stdout.splitlines() if " orders " in f" {line} ")
    assert SHOP in orders and f"{stack.at_incremental['orders'][0]:,}" in orders

    verified = await asyncio.to_thread(run, "backup", "verify", str(stack.full_id))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK at" in verified.stdout and "0 missing or corrupt" in verified.stdout

    taken = await asyncio.to_thread(
        run, "backup", "now", PROD, "--type", "INCREMENTAL", "--wait", "--json"
    )
    assert taken.returncode == 0, taken.stderr
    backup = json.loads(taken.stdout)
    assert backup["status"] == "COMPLETE" and backup["chain_id"] == str(stack.full_id)

    settings = await asyncio.to_thread(run, "settings", "get", PROD, "--json")
    assert json.loads(settings.stdout)["retention_days"] == 7  # set in the console above
    refused = await asyncio.to_thread(run, "settings", "set", PROD, "--retention", "365")
    assert refused.returncode == 1
    assert "cluster already has a retention policy set" in refused.stderr

    restores = await asyncio.to_thread(run, "restores", "list", PROD, "--json")
    assert json.loads(restores.stdout)["restores"][0]["status"] == "SUCCESS"
    history = await asyncio.to_thread(run, "history", PROD, "--json", "--limit", "500")
    kinds = [e["type"] for e in json.loads(history.stdout)["events"]]
    assert "BackupVerified" in kinds and "BackupCompleted" in kinds
    assert kinds[-1] == "CommandHandled"  # the refused retention change, in the trail too

    unknown = await asyncio.to_thread(run, "backups", "list", "no-such-cluster")
    assert unknown.returncode == 1
    assert unknown.stderr == "refused (404): cluster no-such-cluster is not registered\n"
