"""The README's five-minute tour, run as written: its `sh` blocks marked `<!-- tour: up -->`
(started in the background, as in a first shell) and `<!-- tour -->` (run in order in one bash,
as in a second shell), in an empty directory, against a real `managed-backups up` and a real
throw-away PostgreSQL. What differs from a reader's machine is only what must: the PostgreSQL
to back up (libpq's `PG*` variables, which the tour reads), the API's port
(`MANAGED_BACKUPS_API_PORT`) and the broker's (a free one, remembered in the data directory).

Then, independently of what the tour printed: the table the restore job wrote holds exactly the
rows of its source, and the console's API (the endpoints the console page calls) shows the
finished restore job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.infra.postgres import LocalPostgres
from tests.integration.up_process import prepare_data_dir, running_up, user_environment

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^<!-- tour(?P<up>: up)? -->\n```sh\n(?P<code>.*?)\n```$", re.M | re.S)


def tour_blocks(readme: str) -> tuple[str, list[str]]:
    """The tour's `up` block and the blocks run after it, in the README's order."""
    up = [m["code"] for m in BLOCK.finditer(readme) if m["up"]]
    steps = [m["code"] for m in BLOCK.finditer(readme) if not m["up"]]
    assert len(up) == 1, "the README's tour must have one ```sh block after <!-- tour: up -->"
    assert steps, "the README's tour has no ```sh block after <!-- tour -->"
    return up[0], steps


def test_tour_blocks_are_found_in_order() -> None:
    readme = "\n".join(
        [
            "<!-- tour: up -->",
            "```sh",
            "managed-backups up",
            "```",
            "text",
            "<!-- tour -->",
            "```sh",
            "one",
            "two",
            "```",
            "```sh",
            "not marked",
            "```",
            "<!-- tour -->",
            "```sh",
            "three",
            "```",
        ]
    )
    assert tour_blocks(readme) == ("managed-backups up", ["one\ntwo", "three"])
    with pytest.raises(AssertionError):
        tour_blocks("<!-- tour -->\n```sh\none\n```")


def rows(url: str, schema: str, table: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(schema, table))
        return conn.execute(query).fetchall()


def test_the_readme_tour_as_written(tmp_path: Path) -> None:
    up_block, steps = tour_blocks(README.read_text())
    with LocalPostgres() as pg:
        reader = tmp_path / "reader"
        api_port = prepare_data_dir(reader / "mb-data")
        path = os.pathsep.join(
            [str(Path(sys.executable).parent), str(pg.bindir), os.environ["PATH"]]
        )
        env = user_environment(
            PATH=path,
            MANAGED_BACKUPS_API_PORT=str(api_port),
            PGHOST="127.0.0.1",
            PGPORT=str(pg.port),
            PGUSER="postgres",
            PGPASSWORD=pg.password,
        )
        with running_up(["bash", "-c", up_block], env, reader, ctrl_c=True) as output:
            assert f"API:    http://127.0.0.1:{api_port}" in output, output
            script = "set -euo pipefail\n" + "\n".join(steps) + "\n"
            tour = subprocess.run(
                ["bash", "-c", script],
                env=env,
                cwd=reader,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert tour.returncode == 0, tour.stdout + tour.stderr

            # What the console shows, from the endpoints it calls.
            api = f"http://127.0.0.1:{api_port}"
            key = (reader / "mb-data" / "admin-api-key").read_text().strip()
            headers = {"Authorization": f"Bearer {key}"}
            page = httpx.get(f"{api}/", timeout=10)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            clusters = httpx.get(f"{api}/api/v1/clusters", headers=headers, timeout=10)
            assert clusters.status_code == 200, clusters.text
            jobs = []
            for cluster in clusters.json()["clusters"]:
                listed = httpx.get(
                    f"{api}/api/v1/clusters/{cluster['id']}/restores", headers=headers, timeout=10
                )
                assert listed.status_code == 200, listed.text
                jobs += listed.json()["restores"]
            tables = [job for job in jobs if job["type"] == "TABLE"]
            assert tables, ("the tour ran no TABLE restore", jobs)
            for job in jobs:
                assert job["status"] == "SUCCESS" and job["phase"] == "Succeeded", job
            for job in tables:
                into = job["restore_opts"].get("into_db") or job["restore_opts"]["new_db_name"]
                for obj in job["objects"]:
                    schema = obj.get("schema") or "public"
                    source = rows(pg.url_for(obj["database"]), schema, obj["table"])
                    assert source, obj
                    assert rows(pg.url_for(into), schema, obj["table"]) == source, (job, obj)
