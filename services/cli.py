"""The ``managed-backups`` command line, a typer application (``app``).

up        run the whole system on this machine, in the foreground, on embedded defaults
publish   publish a command to the running system and print its result
service   run one service (what ``up`` and compose.yaml start)
contracts export DIR   write JSON Schemas and the AsyncAPI document
projections rebuild    rebuild the read models from the event store
restore start DEST ... [--follow]   start a restore job and follow it to its end
clusters set-secret ID set the password the executor uses for one cluster (stdin or prompt)
clusters list, backups list|show, settings get|set, backup now|verify, restores list, history
          daily work over the HTTP API (``services/apicli/commands.py``)
orgs, accounts, keys, grants   organizations, service accounts, API keys and role grants, over
          the same API (``services/apicli/access.py``)
broker credentials|setup       the broker's users and ACLs where `up` does not run it (compose)
encryption-key ...     encryption at rest: a cluster's customer key, rotation
                       (``apicli/encryption_key.py``)

Each command is a function with typed, documented parameters; the groups (``contracts``,
``projections``, ``clusters``, ``restore``...) are typer sub-applications. A command's outcome is
its exit code (``typer.Exit``): 0 done, 1 refused by the system, 2 a usage problem (typer's own
for a malformed command line), 3 the system did not answer. Commands that call the API find it
as ``shared/locations.py`` says (``--api-url``, else the URL ``up`` remembered in the data
directory) and name the URL they tried when it does not answer. Tracebacks never show local
variables: a credential or a password may be one of them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from managed_backups.contracts import topics
from managed_backups.services.apicli import access as access_commands
from managed_backups.services.apicli import commands as api_commands
from managed_backups.services.apicli.encryption_key import app as encryption_key_app
from managed_backups.services.broker_cli import broker_app
from managed_backups.services.registry import service_main, service_names
from managed_backups.services.restore.cli import app as restore_app
from managed_backups.shared import locations

if TYPE_CHECKING:
    from managed_backups.shared.settings import Settings

# Each command imports what it uses when it runs (asyncio, the settings model, the broker's
# client, httpx, rich): a command that only calls the API answers without loading the rest.

SERVICES = service_names()

app = typer.Typer(
    name="managed-backups",
    help="Managed PostgreSQL backups: run the system, publish commands, restore.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Plain help and error text: long option names are never cut to fit a panel, and the
    # "Error: ..." line reads the same in a terminal, a pipe and a log.
    rich_markup_mode=None,
)
contracts_app = typer.Typer(help="contract specifications", no_args_is_help=True)
projections_app = typer.Typer(help="read models", no_args_is_help=True)
clusters_app = typer.Typer(help="cluster administration over the HTTP API", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
app.add_typer(restore_app, name="restore")
app.add_typer(projections_app, name="projections")
app.add_typer(clusters_app, name="clusters")
api_commands.register(app, clusters_app)
access_commands.register(app)
app.add_typer(broker_app, name="broker")
app.add_typer(encryption_key_app, name="encryption-key")

DataDir = Annotated[
    Path | None,
    typer.Option(
        help="the data directory (default: MANAGED_BACKUPS_DATA_DIR, else "
        "$XDG_DATA_HOME/managed-backups)"
    ),
]
UpDataDir = Annotated[
    Path | None,
    typer.Option(help="the data directory of `up` (default: $XDG_DATA_HOME/managed-backups)"),
]
"""``up`` and ``publish`` take the data directory from the command line only."""
Credential = Annotated[
    str | None, typer.Option(help="API key (default: the data directory's admin key)")
]


def _settings(data_dir: Path | None, **overrides: Any) -> Settings:
    from managed_backups.shared.settings import Settings

    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir.resolve()
    return Settings(**values)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# -- up -----------------------------------------------------------------------------------------


@app.command("up")
def cmd_up(
    data_dir: UpDataDir = None,
    api_port: Annotated[
        int | None,
        typer.Option(help="the HTTP API's port (default: MANAGED_BACKUPS_API_PORT, else 8080)"),
    ] = None,
    simulated_clock: Annotated[
        bool,
        typer.Option(
            "--simulated-clock",
            help="run every service on one simulated clock (never in production)",
        ),
    ] = False,
) -> None:
    """Run the whole system in the foreground."""
    raise typer.Exit(_up(data_dir, api_port, simulated_clock))


def _fetch_client_tools() -> None:
    """The PostgreSQL client tools of every supported major that has them (14 to 18), cached
    like the Kafka jars: a cluster of any supported version is backed up and restored without
    installing anything. A failure (offline) leaves the tools already installed, and says so."""
    from managed_backups.shared.infra.postgres_binaries import (
        RELEASES,
        BinariesError,
        ensure_binaries,
    )

    print("PostgreSQL client tools (the first start fetches 14 to 18, ~60 MB) ...", flush=True)
    for major, release in RELEASES.items():
        if not release.has_client_tools:
            continue
        try:
            ensure_binaries(major, clients_only=True)
        except BinariesError as exc:
            print(
                f"warning: PostgreSQL {major}'s client tools are not available: {exc}; servers "
                f"of {major} are backed up only with client tools installed otherwise "
                "(MANAGED_BACKUPS_PG_BINDIRS)",
                file=sys.stderr,
                flush=True,
            )


def _up(data_dir_option: Path | None, api_port: int | None, simulated_clock: bool) -> int:
    import asyncio

    from managed_backups.services.registry import broker_users
    from managed_backups.services.runtime import private_sqlite_files
    from managed_backups.shared.broker_access import (
        ADMIN_USER,
        BrokerCredentials,
        KafkaAuth,
        provision,
    )
    from managed_backups.shared.bus import ensure_topics
    from managed_backups.shared.clock import build_clock
    from managed_backups.shared.eventstore import open_event_store
    from managed_backups.shared.identity import Identity
    from managed_backups.shared.infra.kafka import BrokerSecurity, LocalKafka, child_preexec_fn
    from managed_backups.shared.secrets import ensure_private_dir
    from managed_backups.shared.sqldb import SqlDatabase, sqlite_path

    data_dir = data_dir_option.resolve() if data_dir_option else locations.default_data_dir()
    ensure_private_dir(data_dir)
    settings = _settings(data_dir, api_port=api_port, simulated_clock=simulated_clock or None)
    if settings.simulated_clock and settings.production_like():
        print(
            f"refused: the simulated clock is not allowed here ({settings.production_like()})",
            file=sys.stderr,
        )
        return 2
    if not _port_free(settings.api_port):
        print(f"port {settings.api_port} is taken: choose another with --api-port", file=sys.stderr)
        return 2

    _fetch_client_tools()
    kafka: LocalKafka | None = None
    bootstrap = (
        settings.kafka_bootstrap_servers
        if "kafka_bootstrap_servers" in settings.model_fields_set
        else None
    )
    # Our own broker authenticates every client: a user per service, ACLs per topic.
    passwords: dict[str, str] = {}
    admin_auth = settings.kafka_auth()
    if not bootstrap:
        print("starting Kafka (first start fetches its jars, a minute or two) ...", flush=True)
        passwords = BrokerCredentials(data_dir / BrokerCredentials.FILE).ensure(
            list(broker_users())
        )
        kafka = LocalKafka(
            data_dir / "kafka",
            port=_kafka_port(data_dir),
            security=BrokerSecurity(passwords[ADMIN_USER]),
        )
        bootstrap = kafka.start()
        admin_auth = KafkaAuth(ADMIN_USER, passwords[ADMIN_USER], "PLAIN")
    (data_dir / "kafka-bootstrap").write_text(bootstrap + "\n")
    settings = _settings(
        data_dir,
        api_port=api_port,
        kafka_bootstrap_servers=bootstrap,
        simulated_clock=simulated_clock or None,
    )
    # Local development: clusters on this machine are allowed unless the environment says not.
    allow_local = (
        settings.allow_local_clusters
        if "allow_local_clusters" in settings.model_fields_set
        else True
    )
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        asyncio.run(ensure_topics(bootstrap, auth=admin_auth))
        if passwords:
            asyncio.run(
                provision(
                    bootstrap,
                    passwords[ADMIN_USER],
                    {user: (passwords[user], access) for user, access in broker_users().items()},
                )
            )
        store = open_event_store(settings.store_url)
        db = SqlDatabase(settings.store_url)
        if settings.store_url.startswith("sqlite"):
            private_sqlite_files(sqlite_path(settings.store_url))
        clock = build_clock(settings, db)
        identity = Identity(store, db, clock)
        admin_key, created = identity.ensure_admin_key(settings.admin_key_path)
        if identity.retire_legacy_service_key(settings.legacy_service_key_path):
            print("revoked the services' API key of version 0.1: services sign their commands")
        db.close()
        store.close()

        env = {
            **os.environ,
            "MANAGED_BACKUPS_DATA_DIR": str(data_dir),
            "MANAGED_BACKUPS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MANAGED_BACKUPS_API_PORT": str(settings.api_port),
            "MANAGED_BACKUPS_SIMULATED_CLOCK": "true" if settings.simulated_clock else "false",
            "MANAGED_BACKUPS_ALLOW_LOCAL_CLUSTERS": str(allow_local),
        }
        logs = data_dir / "logs"
        logs.mkdir(exist_ok=True)

        def spawn(name: str) -> subprocess.Popen[bytes]:
            # The service logs to name.log, rotated by size; name.out keeps what it prints
            # outside logging (a crash's traceback), appended.
            log = (logs / f"{name}.out").open("ab")
            own = (
                {
                    "MANAGED_BACKUPS_KAFKA_USERNAME": name,
                    "MANAGED_BACKUPS_KAFKA_PASSWORD": passwords[name],
                }
                if passwords
                else {}
            )
            return subprocess.Popen(
                [sys.executable, "-m", "managed_backups.services.cli", "service", name],
                env={**env, **own, "MANAGED_BACKUPS_LOG_FILE": str(logs / f"{name}.log")},
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec_fn(),
                start_new_session=True,
            )

        for name in SERVICES:
            children[name] = spawn(name)
        api = f"http://{settings.api_host}:{settings.api_port}"
        # Every command given this data directory reaches this API (and this broker, above).
        locations.remember_api_url(data_dir, api)
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
        if allow_local:
            print(
                "  warning: clusters on loopback and link-local addresses are allowed (local "
                "development; MANAGED_BACKUPS_ALLOW_LOCAL_CLUSTERS=false refuses them, as "
                "production must)"
            )
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
                        f"(see {logs / (name + '.log')} and {logs / (name + '.out')})",
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
    import httpx

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


@app.command("publish")
def cmd_publish(
    topic: Annotated[
        str,
        typer.Argument(
            metavar="TOPIC", help=f"a command topic: {', '.join(topics.COMMAND_TOPICS)}"
        ),
    ],
    command_json: Annotated[
        str,
        typer.Argument(
            metavar="JSON",
            help="the command, a JSON object (command_id is filled in if absent); the API signs "
            "it for the caller's key",
        ),
    ],
    data_dir: UpDataDir = None,
    credential: Credential = None,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            help="Kafka bootstrap servers (default: those `up` wrote to the data directory)"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the command's result")] = 30.0,
    api_url: api_commands.ApiUrl = None,
) -> None:
    """Publish a command and print its result.

    The API signs the command for the caller's API key (POST /api/v1/command-tokens): what goes
    on the topic carries a token valid for this command only, never the key.
    Exit 0 accepted, 1 rejected, 2 a usage problem, 3 no result within the timeout.
    """
    raise typer.Exit(
        _publish(topic, command_json, data_dir, credential, bootstrap_servers, timeout, api_url)
    )


def _publish(
    topic: str,
    command_json: str,
    data_dir_option: Path | None,
    credential_option: str | None,
    bootstrap_servers: str | None,
    timeout: float,
    api_url: str | None = None,
) -> int:
    from managed_backups.services.apicli.client import Api, CliError

    data_dir = locations.data_dir(data_dir_option)
    bootstrap = locations.bootstrap_servers(bootstrap_servers, data_dir)
    if not bootstrap:
        print(f"no broker: is `managed-backups up --data-dir {data_dir}` running?", file=sys.stderr)
        return 2
    if topic not in topics.COMMAND_TOPICS:
        print(
            f"{topic} is not a command topic; one of: {', '.join(topics.COMMAND_TOPICS)}",
            file=sys.stderr,
        )
        return 2
    try:
        command = json.loads(command_json)
    except json.JSONDecodeError as exc:
        print(f"the command is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(command, dict):
        print("the command must be a JSON object", file=sys.stderr)
        return 2
    command.setdefault("command_id", str(uuid.uuid4()))
    try:
        with Api.connect(api_url, data_dir, credential_option) as api:
            signed = api.call(
                "POST", "/api/v1/command-tokens", body={"topic": topic, "command": command}
            )["command"]
    except CliError as failure:
        print(failure.message, file=sys.stderr)
        return failure.exit_code

    import asyncio

    from managed_backups.services.registry import COMMAND_LINE_USER
    from managed_backups.shared.broker_access import BrokerCredentials
    from managed_backups.shared.gateway import CommandGateway, CommandTimeout
    from managed_backups.shared.settings import Settings

    # `up`'s broker: the command line's own broker user (its passwords are in the data directory).
    auth = Settings().kafka_auth() or BrokerCredentials(data_dir / BrokerCredentials.FILE).auth(
        COMMAND_LINE_USER
    )

    async def main() -> int:
        gateway = CommandGateway(bootstrap, "managed-backups-cli", auth=auth)
        await gateway.start()
        try:
            result = await gateway.request(topic, signed, timeout=timeout)
        except CommandTimeout as exc:
            print(str(exc), file=sys.stderr)
            return 3
        finally:
            await gateway.stop()
        print(result.model_dump_json(indent=2))
        return 0 if result.code < 300 else 1

    return asyncio.run(main())


# -- service ------------------------------------------------------------------------------------


def _known_service(name: str) -> str:
    """Only the registry's names (``services/registry.py`` is the one table of services)."""
    if name not in SERVICES:
        raise typer.BadParameter(f"{name!r} is not a service; one of: {', '.join(SERVICES)}")
    return name


@app.command("service")
def cmd_service(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME",
            help=f"the service: {', '.join(SERVICES)}",
            callback=_known_service,
            autocompletion=lambda: list(SERVICES),
            show_default=False,
        ),
    ],
    data_dir: DataDir = None,
) -> None:
    """Run one service in the foreground."""
    import asyncio

    from managed_backups.services.runtime import configure_logging, open_runtime, stop_on_signals

    settings = _settings(data_dir)
    configure_logging(name, settings)
    runtime = open_runtime(settings)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await runtime.clock.start()
        try:
            await _service_main(name)(runtime, stop)
        finally:
            await runtime.clock.stop()

    asyncio.run(main())
    runtime.close()


def _service_main(name: str) -> Any:
    try:
        return service_main(name)
    except KeyError as unknown:
        raise SystemExit(str(unknown.args[0])) from None


# -- contracts, projections ---------------------------------------------------------------------


@contracts_app.command("export")
def cmd_contracts_export(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="where to write them (created if missing)")
    ],
) -> None:
    """Write JSON Schemas and the AsyncAPI document."""
    from managed_backups.contracts.export import export

    for path in export(directory):
        print(path)


@projections_app.command("rebuild")
def cmd_projections_rebuild(data_dir: DataDir = None) -> None:
    """Rebuild the read models from the event store (into side tables, then swapped in at
    once: a running system keeps its views meanwhile)."""
    from managed_backups.services.projections.service import rebuild
    from managed_backups.shared.eventstore import open_event_store
    from managed_backups.shared.sqldb import SqlDatabase

    settings = _settings(data_dir)
    store = open_event_store(settings.store_url)
    db = SqlDatabase(settings.store_url)
    started = time.monotonic()
    models = rebuild(store, db)
    took = time.monotonic() - started
    events = models.position()
    print(
        f"rebuilt the read models up to position {events} "
        f"({events / max(took, 1e-9):,.0f} events/s, {took:.1f} s)"
    )
    db.close()
    store.close()


# -- clusters set-secret ------------------------------------------------------------------------


def read_password(stdin: Any = None) -> str:
    """The password from stdin when it is not a terminal (its first line), else a prompt.

    The prompt hides what is typed and asks twice; on a mismatch it says so and asks again.
    """
    stream = stdin or sys.stdin
    if not stream.isatty():
        return str(stream.readline()).rstrip("\r\n")
    password: str = typer.prompt("cluster password", hide_input=True, confirmation_prompt="again")
    return password


@clusters_app.command("set-secret")
def cmd_set_secret(
    cluster_id: Annotated[str, typer.Argument(metavar="ID", help="the cluster's id")],
    data_dir: DataDir = None,
    credential: Credential = None,
    api_url: api_commands.ApiUrl = None,
) -> None:
    """Set the password the executor uses for one cluster (read from stdin or a prompt)."""
    from managed_backups.services.apicli.client import Api, CliError, cluster_path

    try:
        with Api.connect(api_url, data_dir, credential) as api:
            password = read_password()
            if not password:
                print("no password given", file=sys.stderr)
                raise typer.Exit(2)
            api.call(
                "PUT", f"{cluster_path(cluster_id)}/connection-secret", body={"password": password}
            )
    except CliError as failure:
        print(failure.message, file=sys.stderr)
        raise typer.Exit(failure.exit_code) from None
    print(f"the connection secret of cluster {cluster_id} is set")


def main(argv: list[str] | None = None) -> int:
    """Run the command line (``argv``, default ``sys.argv[1:]``) and return its exit code."""
    try:
        app(args=argv, prog_name="managed-backups")
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
