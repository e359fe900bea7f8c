"""The ``managed-backups`` command line.

up        run the whole system on this machine, in the foreground, on embedded defaults
publish   publish a command to the running system and print its result
service   run one service (what ``up`` and compose.yaml start)
contracts export DIR   write JSON Schemas and the AsyncAPI document
projections rebuild    drop the read models and rebuild them from the event store
restore start DEST ... [--follow]   start a restore job and follow it to its end
clusters set-secret ID set the password the executor uses for one cluster (stdin or prompt)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from managed_backups.contracts import topics
from managed_backups.services.registry import service_main, service_names
from managed_backups.shared.settings import Settings, default_data_dir

SERVICES = service_names()


def _settings(data_dir: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = Path(data_dir).resolve()
    return Settings(**values)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# -- service ------------------------------------------------------------------------------------


def cmd_service(args: argparse.Namespace) -> int:
    from managed_backups.services.runtime import configure_logging, open_runtime, stop_on_signals

    settings = _settings(args.data_dir)
    configure_logging(args.name, settings.log_level)
    runtime = open_runtime(settings)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await runtime.clock.start()
        try:
            await _service_main(args.name)(runtime, stop)
        finally:
            await runtime.clock.stop()

    asyncio.run(main())
    runtime.close()
    return 0


def _service_main(name: str) -> Any:
    try:
        return service_main(name)
    except KeyError as unknown:
        raise SystemExit(str(unknown.args[0])) from None


# -- up -----------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from managed_backups.services.runtime import private_sqlite_files
    from managed_backups.shared.bus import ensure_topics
    from managed_backups.shared.clock import build_clock
    from managed_backups.shared.eventstore import open_event_store
    from managed_backups.shared.infra.kafka import LocalKafka, child_preexec_fn
    from managed_backups.shared.secrets import ensure_private_dir
    from managed_backups.shared.security import ensure_key_file
    from managed_backups.shared.sqldb import SqlDatabase, sqlite_path

    data_dir = Path(args.data_dir).resolve() if args.data_dir else default_data_dir()
    ensure_private_dir(data_dir)
    settings = _settings(
        str(data_dir), api_port=args.api_port, simulated_clock=args.simulated_clock or None
    )
    if settings.simulated_clock and settings.production_like():
        print(
            f"refused: the simulated clock is not allowed here ({settings.production_like()})",
            file=sys.stderr,
        )
        return 2
    if not _port_free(settings.api_port):
        print(f"port {settings.api_port} is taken: choose another with --api-port", file=sys.stderr)
        return 2

    kafka: LocalKafka | None = None
    bootstrap = (
        settings.kafka_bootstrap_servers
        if "kafka_bootstrap_servers" in settings.model_fields_set
        else None
    )
    if not bootstrap:
        print("starting Kafka (first start fetches its jars, a minute or two) ...", flush=True)
        kafka = LocalKafka(data_dir / "kafka", port=_kafka_port(data_dir))
        bootstrap = kafka.start()
    (data_dir / "kafka-bootstrap").write_text(bootstrap + "\n")
    settings = _settings(
        str(data_dir),
        api_port=args.api_port,
        kafka_bootstrap_servers=bootstrap,
        simulated_clock=args.simulated_clock or None,
    )
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        asyncio.run(ensure_topics(bootstrap))
        store = open_event_store(settings.store_url)
        db = SqlDatabase(settings.store_url)
        if settings.store_url.startswith("sqlite"):
            private_sqlite_files(sqlite_path(settings.store_url))
        clock = build_clock(settings, db)
        admin_key, created = ensure_key_file(store, settings.admin_key_path, clock, "admin")
        service_key, _ = ensure_key_file(store, data_dir / "service-api-key", clock, "services")
        db.close()
        store.close()

        env = {
            **os.environ,
            "MANAGED_BACKUPS_DATA_DIR": str(data_dir),
            "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MANAGED_BACKUPS_API_PORT": str(settings.api_port),
            "MANAGED_BACKUPS_SIMULATED_CLOCK": "true" if settings.simulated_clock else "false",
            "MANAGED_BACKUPS_SERVICE_CREDENTIAL": service_key,
        }
        logs = data_dir / "logs"
        logs.mkdir(exist_ok=True)

        def spawn(name: str) -> subprocess.Popen[bytes]:
            log = (logs / f"{name}.log").open("ab")
            return subprocess.Popen(
                [sys.executable, "-m", "managed_backups.services.cli", "service", name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec_fn(),
                start_new_session=True,
            )

        for name in SERVICES:
            children[name] = spawn(name)
        api = f"http://{settings.api_host}:{settings.api_port}"
        _wait_http(f"{api}/healthz", children, timeout=60)
        print(f"managed-backups is up (data directory {data_dir})")
        print(f"  API:    {api}")
        print(f"  Kafka:  {bootstrap}")
        print(f"  store:  {settings.store_url}")
        print(
            f"  clock:  {'simulated (POST /admin/clock to advance)' if settings.simulated_clock else 'wall'}"
        )
        print(f"  logs:   {logs}")
        note = "created" if created else "kept"
        print(f"  administrator API key ({note}, also in {settings.admin_key_path}):")
        print(f"    {admin_key}")
        print("Ctrl-C stops everything.", flush=True)

        stopping = False

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        restarts: dict[str, list[float]] = {}
        while not stopping:
            time.sleep(0.5)
            for name, proc in list(children.items()):
                if proc.poll() is not None and not stopping:
                    recent = [t for t in restarts.get(name, []) if time.monotonic() - t < 60]
                    print(
                        f"service {name} exited with {proc.returncode}; restarting "
                        f"(see {logs / (name + '.log')})",
                        flush=True,
                    )
                    if len(recent) >= 5:
                        print(f"service {name} keeps failing; stopping", file=sys.stderr)
                        stopping = True
                        break
                    restarts[name] = [*recent, time.monotonic()]
                    children[name] = spawn(name)
        print("stopping ...", flush=True)
        return 0
    finally:
        _stop_children(children)
        if kafka is not None:
            kafka.stop()
        print("stopped", flush=True)


def _kafka_port(data_dir: Path) -> int | None:
    """Keep the broker's port across restarts of ``up`` (9092 if free the first time)."""
    remembered = data_dir / "kafka-bootstrap"
    if remembered.exists():
        port = int(remembered.read_text().strip().rsplit(":", 1)[1])
        if _port_free(port):
            return port
    return 9092 if _port_free(9092) and _port_free(9093) else None


def _wait_http(url: str, children: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in children.items():
            if proc.poll() is not None:
                raise SystemExit(f"service {name} exited during start-up ({proc.returncode})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API did not answer on {url} within {timeout:.0f} s")


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 20
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- publish ------------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    from managed_backups.shared.gateway import CommandGateway, CommandTimeout

    data_dir = Path(args.data_dir).resolve() if args.data_dir else default_data_dir()
    configured = Settings()
    bootstrap = args.bootstrap_servers or (
        configured.kafka_bootstrap_servers
        if "kafka_bootstrap_servers" in configured.model_fields_set
        else None
    )
    if not bootstrap and (data_dir / "kafka-bootstrap").exists():
        bootstrap = (data_dir / "kafka-bootstrap").read_text().strip()
    if not bootstrap:
        print(f"no broker: is `managed-backups up --data-dir {data_dir}` running?", file=sys.stderr)
        return 2
    if args.topic not in topics.COMMAND_TOPICS:
        print(
            f"{args.topic} is not a command topic; one of: {', '.join(topics.COMMAND_TOPICS)}",
            file=sys.stderr,
        )
        return 2
    try:
        command = json.loads(args.json)
    except json.JSONDecodeError as exc:
        print(f"the command is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(command, dict):
        print("the command must be a JSON object", file=sys.stderr)
        return 2
    command.setdefault("command_id", str(uuid.uuid4()))
    if "credential" not in command:
        credential = args.credential or configured.credential
        key_file = data_dir / "admin-api-key"
        if not credential and key_file.exists():
            credential = key_file.read_text().strip()
        if not credential:
            print(
                f"no credential: pass --credential or run `up` with --data-dir {data_dir}",
                file=sys.stderr,
            )
            return 2
        command["credential"] = credential

    async def main() -> int:
        gateway = CommandGateway(bootstrap, "managed-backups-cli")
        await gateway.start()
        try:
            result = await gateway.request(args.topic, command, timeout=args.timeout)
        except CommandTimeout as exc:
            print(str(exc), file=sys.stderr)
            return 3
        finally:
            await gateway.stop()
        print(result.model_dump_json(indent=2))
        return 0 if result.code < 300 else 1

    return asyncio.run(main())


# -- contracts, projections ---------------------------------------------------------------------


def cmd_contracts_export(args: argparse.Namespace) -> int:
    from managed_backups.contracts.export import export

    for path in export(Path(args.directory)):
        print(path)
    return 0


def cmd_projections_rebuild(args: argparse.Namespace) -> int:
    from managed_backups.services.projections.service import rebuild
    from managed_backups.shared.eventstore import open_event_store
    from managed_backups.shared.sqldb import SqlDatabase

    settings = _settings(args.data_dir)
    store = open_event_store(settings.store_url)
    db = SqlDatabase(settings.store_url)
    models = rebuild(store, db)
    print(f"rebuilt the read models up to position {models.position()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="managed-backups",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole system in the foreground")
    up.add_argument("--data-dir")
    up.add_argument("--api-port", type=int)
    up.add_argument(
        "--simulated-clock",
        action="store_true",
        help="run every service on one simulated clock (never in production)",
    )
    up.set_defaults(func=cmd_up)

    publish = sub.add_parser("publish", help="publish a command and print its result")
    publish.add_argument("topic")
    publish.add_argument("json")
    publish.add_argument("--data-dir")
    publish.add_argument("--credential", help="API key (default: the data directory's admin key)")
    publish.add_argument("--bootstrap-servers")
    publish.add_argument("--timeout", type=float, default=30.0)
    publish.set_defaults(func=cmd_publish)

    service = sub.add_parser("service", help="run one service in the foreground")
    service.add_argument("name", choices=SERVICES)
    service.add_argument("--data-dir")
    service.set_defaults(func=cmd_service)

    contracts = sub.add_parser("contracts", help="contract specifications")
    contracts_sub = contracts.add_subparsers(dest="contracts_command", required=True)
    export = contracts_sub.add_parser("export", help="write JSON Schemas and the AsyncAPI document")
    export.add_argument("directory")
    export.set_defaults(func=cmd_contracts_export)

    from managed_backups.services.restore.cli import add_parser as add_restore_parser

    add_restore_parser(sub)

    projections = sub.add_parser("projections", help="read models")
    projections_sub = projections.add_subparsers(dest="projections_command", required=True)
    rebuild = projections_sub.add_parser("rebuild", help="drop and rebuild from the event store")
    rebuild.add_argument("--data-dir")
    rebuild.set_defaults(func=cmd_projections_rebuild)
    add_clusters_commands(sub)
    return parser


# -- clusters set-secret ------------------------------------------------------------------------


def add_clusters_commands(sub: Any) -> None:
    clusters = sub.add_parser("clusters", help="cluster administration over the HTTP API")
    clusters_sub = clusters.add_subparsers(dest="clusters_command", required=True)
    secret = clusters_sub.add_parser(
        "set-secret",
        help="set the password the executor uses for one cluster (read from stdin or a prompt)",
    )
    secret.add_argument("cluster_id")
    secret.add_argument("--data-dir")
    secret.add_argument("--credential", help="API key (default: the data directory's admin key)")
    secret.add_argument("--api-url", help="default: http://API_HOST:API_PORT from the settings")
    secret.set_defaults(func=cmd_set_secret)


def read_password(stdin: Any = None) -> str:
    """The password from stdin when it is not a terminal (its first line), else a prompt."""
    import getpass

    stream = stdin or sys.stdin
    if not stream.isatty():
        return str(stream.readline()).rstrip("\r\n")
    first = getpass.getpass("cluster password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def cmd_set_secret(args: argparse.Namespace) -> int:
    settings = _settings(args.data_dir)
    credential = args.credential or settings.credential
    if not credential and settings.admin_key_path.exists():
        credential = settings.admin_key_path.read_text().strip()
    if not credential:
        print("no credential: pass --credential or --data-dir", file=sys.stderr)
        return 2
    try:
        password = read_password()
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not password:
        print("no password given", file=sys.stderr)
        return 2
    url = args.api_url or f"http://{settings.api_host}:{settings.api_port}"
    try:
        response = httpx.put(
            f"{url.rstrip('/')}/api/v1/clusters/{args.cluster_id}/connection-secret",
            json={"password": password},
            headers={"Authorization": f"Bearer {credential}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        print(f"cannot reach the API at {url}: {exc}", file=sys.stderr)
        return 3
    if response.status_code >= 300:
        print(f"refused ({response.status_code}): {response.text}", file=sys.stderr)
        return 1
    print(f"the connection secret of cluster {args.cluster_id} is set")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
