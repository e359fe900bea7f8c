"""A schema-driven fuzz of the HTTP API (schemathesis, from the API's own OpenAPI document),
against the whole system: every service in its own process on a real broker, the API over
real HTTP. Three callers send every generated request: anonymous, a tenant's operator (one
cluster) and the administrator. Whatever is sent, the answer is never a 5xx, every refusal is
a 4xx with the one error body ``{"code", "message"}`` naming the reason, and no service
crashes.

Run by ``.ci/run`` in its own step (``pytest -q tests/fuzz``), not by ``pytest -q``: its budget
is ``MANAGED_BACKUPS_FUZZ_EXAMPLES`` valid and as many invalid requests per operation, each
sent by every caller (default 10; ``.ci/run`` sends 25).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from managed_backups.contracts import topics
from managed_backups.contracts.enums import Role
from managed_backups.services.registry import service_names
from tests.conftest import fresh_database
from tests.integration.test_restore import free_port

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MANAGED_BACKUPS_FUZZ_EXAMPLES", "10"))
CALLERS = ("anonymous", "operator", "admin")


@dataclass
class Running:
    url: str
    keys: dict[str, str]
    clusters: list[str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: Path = Path()


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, kafka: str, postgres_server: str
) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("fuzz")
    store_url = fresh_database(postgres_server)  # as in production: PostgreSQL refuses more
    data, logs = tmp / "data", tmp / "logs"
    logs.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "MANAGED_BACKUPS_DATA_DIR": str(data),
        "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "MANAGED_BACKUPS_EVENT_STORE_URL": store_url,
        "MANAGED_BACKUPS_API_PORT": str(port),
        "MANAGED_BACKUPS_ALLOW_LOCAL_CLUSTERS": "true",
    }
    cli = [sys.executable, "-m", "managed_backups.services.cli"]
    processes = {
        name: subprocess.Popen(
            [*cli, "service", name],
            env={**env, "MANAGED_BACKUPS_LOG_FILE": str(logs / f"{name}.log")},
            stdout=(logs / f"{name}.out").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for name in service_names()
    }
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            for name, process in processes.items():
                assert process.poll() is None, (logs / f"{name}.out").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.3)
        admin = (data / "admin-api-key").read_text().strip()
        clusters = [f"fuzz-{uuid4().hex[:6]}" for _ in range(2)]
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        created = api.post("/api/v1/organizations", json={"id": "fuzzers", "name": "Fuzzers"})
        assert created.status_code == 200, created.text
        for cluster_id in clusters:
            command = {
                "type": "RegisterCluster",
                "cluster_id": cluster_id,
                "name": cluster_id,
                "organization": "fuzzers",
                "tier": "ADVANCED",
                "regions": ["us-east-1"],
                "database_version": "15",
                "connection_ref": "postgresql://backup@127.0.0.1:1/postgres",
            }
            # As a user publishes: the API signs the command for the key, the CLI puts it on
            # the topic.
            published = subprocess.run(
                [
                    *cli,
                    "publish",
                    topics.CLUSTER_COMMANDS,
                    json.dumps(command),
                    "--api-url",
                    url,
                    "--bootstrap-servers",
                    kafka,
                ],
                env={**env, "MANAGED_BACKUPS_CREDENTIAL": admin},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert published.returncode == 0, published.stdout + published.stderr
        # The tenant's operator: an account of the organization with Cluster Operator on the
        # first cluster, and its key, made through the API as an administrator makes them.
        account = api.post(
            "/api/v1/service-accounts", json={"name": "fuzz-operator", "organization": "fuzzers"}
        )
        assert account.status_code == 200, account.text
        granted = api.post(
            "/api/v1/role-grants",
            json={
                "service_account_id": account.json()["id"],
                "role_name": Role.CLUSTER_OPERATOR.value,
                "resource_type": "CLUSTER",
                "resource_id": clusters[0],
            },
        )
        assert granted.status_code == 200, granted.text
        key = api.post(
            "/api/v1/api-keys",
            json={"name": "fuzz-operator", "service_account_id": account.json()["id"]},
        )
        assert key.status_code == 200, key.text
        operator = key.json()["secret"]
        api.close()
        yield Running(url, {"admin": admin, "operator": operator}, clusters, processes, logs)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


@schemathesis.check
def refusal_has_a_reason(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx is the API's one error body, its code the status, a reason in its message."""
    if 400 <= response.status_code < 500:
        try:
            body = json.loads(response.content)
        except ValueError:
            raise AssertionError(f"{response.status_code} without a JSON body") from None
        assert isinstance(body, dict) and body.get("code") == response.status_code, body
        assert isinstance(body.get("message"), str) and body["message"].strip(), body
    return None


def fuzz(operation: Any, running: Running) -> None:
    """``EXAMPLES`` requests valid by the document and as many invalid ones, each sent by every
    caller (hypothesis shrinks a failure to its smallest request)."""
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @settings(
        max_examples=2 * EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def send(case: Any) -> None:
        if "cluster_id" in (case.path_parameters or {}) and hash(str(case.path_parameters)) % 3:
            case.path_parameters["cluster_id"] = running.clusters[0]  # mostly a real cluster
        generated = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        for caller in CALLERS:
            headers = dict(generated)
            if caller != "anonymous":
                headers["Authorization"] = f"Bearer {running.keys[caller]}"
            case.headers = headers
            case.call_and_validate(
                base_url=running.url,
                headers=headers,
                checks=[not_a_server_error, refusal_has_a_reason],
                timeout=60,
            )

    send()


def test_no_request_gets_a_5xx_and_every_refusal_says_why(running: Running) -> None:
    schema = schemathesis.openapi.from_url(f"{running.url}/openapi.json")
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 10
    for operation in operations:
        try:
            fuzz(operation, running)
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_no_service_crashed(running: Running) -> None:
    for name, process in running.processes.items():
        assert process.poll() is None, (running.logs / f"{name}.out").read_text()[-3000:]
    assert httpx.get(f"{running.url}/healthz", timeout=5).status_code == 200
