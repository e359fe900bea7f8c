"""A real single-node Apache Kafka (KRaft, combined broker + controller) without Docker.

The broker runs from the jars that Apache publishes to Maven Central (``kafka_2.13`` plus a
log4j2 backend, see ``kafka-pom.xml`` beside this file). They are fetched once with Maven's
dependency plugin and cached under ``${MANAGED_BACKUPS_CACHE_DIR:-~/.cache/managed-backups}/
kafka-<version>/libs``, so later starts work offline.

Usage::

    with LocalKafka(tmp_path / "kafka") as kafka:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)

Command line::

    python -m managed_backups.shared.infra.kafka fetch                  # pre-fetch the jars (CI)
    python -m managed_backups.shared.infra.kafka run --data-dir DIR     # run a broker in the foreground
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import fcntl
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "DEFAULT_JVM_OPTS",
    "KAFKA_POM",
    "BrokerSecurity",
    "KafkaSetupError",
    "LocalKafka",
    "LocalKafkaError",
    "cache_root",
    "child_preexec_fn",
    "ensure_kafka_jars",
    "free_ports",
    "kafka_version",
    "main",
]

KAFKA_POM = Path(__file__).with_name("kafka-pom.xml")
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
READY_MARKER = "Kafka Server started"
_COMPLETE_MARKER = ".complete"
_MIN_JAVA = 17


class KafkaSetupError(RuntimeError):
    """The jars could not be fetched, or java/mvn are missing."""


class LocalKafkaError(RuntimeError):
    """The broker failed to start or stop."""


# --------------------------------------------------------------------------------------------
# Small process helpers (also used by tests.infra.s3)
# --------------------------------------------------------------------------------------------


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


_PR_SET_PDEATHSIG = 1


def child_preexec_fn() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child get SIGKILL when its parent dies (Linux only).

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, so it is only
    used when called from the main thread; otherwise ``None`` is returned (the atexit hook and
    the child's own process group still clean up on a normal exit).
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def _preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork() and prctl().
        if os.getppid() != parent:
            os._exit(1)

    return _preexec


def _tail(path: Path, lines: int = 50) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


# --------------------------------------------------------------------------------------------
# Jars
# --------------------------------------------------------------------------------------------


def kafka_version(pom: Path = KAFKA_POM) -> str:
    """The Kafka version pinned in ``kafka-pom.xml``."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if match is None:
        raise KafkaSetupError(f"no <kafka.version> property in {pom}")
    return match.group(1)


def cache_root() -> Path:
    """``$MANAGED_BACKUPS_CACHE_DIR`` or ``~/.cache/managed-backups``."""
    env = os.environ.get("MANAGED_BACKUPS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "managed-backups"


def _java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise KafkaSetupError(
            "java was not found on PATH (nor in $JAVA_HOME): Kafka needs Java "
            f"{_MIN_JAVA} or newer (Debian: apt-get install openjdk-17-jre-headless)"
        )
    return java


@functools.cache
def _check_java_version(java: str) -> None:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaSetupError(f"cannot run {java} -version: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return  # unknown format: let the broker itself complain
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x"
        major = int(match.group(2))
    if major < _MIN_JAVA:
        raise KafkaSetupError(f"{java} is Java {major}; Kafka needs Java {_MIN_JAVA} or newer")


def ensure_kafka_jars(cache_dir: Path | None = None) -> Path:
    """Return the directory holding the broker's jars, fetching them with Maven if needed.

    Idempotent and safe to call from concurrent processes (a file lock serialises fetches).
    ``cache_dir`` defaults to :func:`cache_root`; the jars land in
    ``<cache_dir>/kafka-<version>/libs``.
    """
    _check_java_version(_java_executable())  # clear error if java is missing or too old
    version = kafka_version()
    base = (cache_dir if cache_dir is not None else cache_root()) / f"kafka-{version}"
    libs = base / "libs"
    if (libs / _COMPLETE_MARKER).is_file():
        return libs
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / _COMPLETE_MARKER).is_file():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaSetupError(
                f"Kafka {version} jars are not cached in {libs} and mvn was not found on PATH "
                "(Debian: apt-get install maven)"
            )
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=base))
        try:
            cmd = [
                mvn,
                "-B",
                "-q",
                "-f",
                str(KAFKA_POM),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ]
            # The pom lives in the (possibly read-only) package dir: run from the cache dir so
            # Maven writes nothing next to it.
            proc = subprocess.run(
                cmd,
                cwd=base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
                raise KafkaSetupError(
                    f"fetching Kafka {version} jars failed (exit {proc.returncode}): "
                    f"{' '.join(cmd)}\n{output}"
                )
            if not list(staging.glob("kafka_2.13-*.jar")):
                raise KafkaSetupError(f"Maven ran but no kafka_2.13 jar landed in {staging}")
            (staging / _COMPLETE_MARKER).write_text(version + "\n")
            if libs.exists():
                shutil.rmtree(libs)
            staging.rename(libs)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return libs


# --------------------------------------------------------------------------------------------
# Broker
# --------------------------------------------------------------------------------------------

_LOG4J2_PROPERTIES = """\
status = warn
name = local-kafka
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.netty.name = io.netty
logger.netty.level = WARN
logger.zk.name = org.apache.zookeeper
logger.zk.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""

DEFAULT_JVM_OPTS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:MaxDirectMemorySize=256m",
    "-Djava.awt.headless=true",
    "-Dlog4j2.disable.jmx=true",
    "-Dlog4j2.shutdownHookEnabled=false",
    "-Dlog4j2.formatMsgNoLookups=true",
]

# Every live broker, killed on interpreter exit if its owner forgot to stop it.
_LIVE: weakref.WeakSet[LocalKafka] = weakref.WeakSet()


def _cleanup_live() -> None:
    for kafka in list(_LIVE):
        with contextlib.suppress(Exception):
            kafka.stop(timeout=10)


atexit.register(_cleanup_live)


SCRAM_MECHANISM = "SCRAM-SHA-256"


@dataclass(frozen=True)
class BrokerSecurity:
    """The broker authenticates every client and authorizes every request.

    - the client listener takes SASL/SCRAM-SHA-256 (the clients' users and their ACLs are
      created on the running broker by the administrator:
      :mod:`managed_backups.shared.broker_access`) and PLAIN for ``admin`` alone, defined here
      in the broker's own configuration so the administrator can always log in;
    - the controller listener takes PLAIN for ``admin`` (KRaft cannot use SCRAM there);
    - ``StandardAuthorizer``, ``admin`` the only super user: everyone else gets what an ACL
      grants, and nothing without one.

    The administrator's password is in ``server.properties`` (mode 0600), never on a command
    line (another local user could read a process's arguments)."""

    admin_password: str

    def _plain(self, server: bool = True) -> str:
        admin = self.admin_password
        if any(c in admin for c in '"\\;\n'):
            raise ValueError("the broker's admin password has quotes, backslashes or semicolons")
        users = f' user_admin="{admin}"' if server else ""
        return (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="{admin}"{users};'
        )

    def jaas_file(self) -> str:
        """The same logins as a JAAS file, for a broker configured by environment variables
        (compose: ``KAFKA_OPTS=-Djava.security.auth.login.config=FILE``)."""
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return (
            f"sasl_plaintext.KafkaServer {{\n  {self._plain()}\n  {scram}\n}};\n"
            f"controller.KafkaServer {{\n  {self._plain()}\n}};\n"
        )

    def admin_client_properties(self) -> str:
        """Kafka's own tools (a health check) logging in as the administrator."""
        return (
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n"
            f"sasl.jaas.config={self._plain(server=False)}\n"
        )

    def config(self, port: int, controller_port: int) -> dict[str, str]:
        plain = self._plain()
        listeners = f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
        return {
            "listeners": listeners,
            "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": (
                "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            ),
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": f"{SCRAM_MECHANISM},PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": plain,
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:admin",
            "allow.everyone.if.no.acl.found": "false",
            "auto.create.topics.enable": "false",
        }


def _random_cluster_id() -> str:
    """Same shape as ``kafka-storage random-uuid``: base64url of 16 random bytes, no padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class LocalKafka:
    """One Kafka node (broker + controller) running as a child process.

    ``data_dir`` holds the config, the formatted log dir and (by default) the log file; reusing
    it keeps topics and committed offsets. Ports are picked on the first :meth:`start` unless
    given, then kept for :meth:`restart` and later starts.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        log_file: Path | None = None,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        #: SASL, ACLs and SCRAM users (None: a plaintext broker that lets anyone do anything).
        self.security = security
        self.port = port
        self.controller_port = controller_port
        self.log_file = (
            Path(log_file).absolute() if log_file is not None else self.data_dir / "kafka.log"
        )
        self.log_dir = self.data_dir / "kafka-logs"
        self.config_file = self.data_dir / "server.properties"
        self.log4j_file = self.data_dir / "log4j2.properties"
        #: Extra/overriding ``server.properties`` entries, applied on the next start.
        self.extra_config: dict[str, str] = {}
        #: JVM options of the broker (heap 512 MiB, serial GC, C1 only: fastest start here).
        self.jvm_opts: list[str] = list(DEFAULT_JVM_OPTS)
        self._proc: subprocess.Popen[bytes] | None = None
        self._libs: Path | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT``; the port is known once :meth:`start` was called (or given)."""
        if self.port is None:
            raise LocalKafkaError("LocalKafka has no port yet: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> str:
        """Start the broker and wait until it is ready; return the bootstrap servers."""
        if self.is_running():
            raise LocalKafkaError(f"Kafka is already running (pid {self.pid})")
        deadline = time.monotonic() + timeout
        if self._libs is None:
            self._libs = ensure_kafka_jars()
        java = _java_executable()
        if self.port is None or self.controller_port is None:
            taken = {p for p in (self.port, self.controller_port) if p is not None}
            picked = [p for p in free_ports(3) if p not in taken]
            if self.port is None:
                self.port = picked.pop(0)
            if self.controller_port is None:
                self.controller_port = picked.pop(0)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.log_dir / "meta.properties").is_file():
            self._format(java, deadline)

        with self.log_file.open("ab") as log:
            log.write(f"\n=== LocalKafka start {time.strftime('%F %T')} ===\n".encode())
            log.flush()
            offset = log.tell()
            cmd = [
                java,
                *self.jvm_opts,
                f"-Dlog4j2.configurationFile={self.log4j_file}",
                f"-Dkafka.logs.dir={self.data_dir}",
                "-cp",
                f"{self._libs}/*",
                "kafka.Kafka",
                str(self.config_file),
            ]
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=child_preexec_fn(),
            )
        _LIVE.add(self)
        try:
            self._wait_ready(offset, deadline, timeout)
        except BaseException:
            self.kill()
            raise
        return self.bootstrap_servers

    def stop(self, timeout: float = 30) -> None:
        """Graceful stop: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=30)
        self._reap()

    def kill(self) -> None:
        """Crash the broker (SIGKILL), e.g. to test recovery; data already written stays."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait(timeout=30)
        self._reap()

    def restart(self, timeout: float = 120) -> str:
        """Graceful stop then start again on the same ports and data."""
        self.stop()
        return self.start(timeout=timeout)

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                os.killpg(proc.pid, signal.SIGKILL)

    # -- internals --------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # Make sure nothing else of its process group lingers (once: the id may be reused).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        _LIVE.discard(self)

    def _config(self) -> dict[str, str]:
        assert self.port is not None and self.controller_port is not None
        conf = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "4",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.replica.fetchers": "1",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "group.coordinator.threads": "1",
            "share.coordinator.threads": "1",
            "broker.heartbeat.interval.ms": "500",
            # After a crash (kill()) the restarted broker must wait for its old registration
            # to expire before it can register again: 9 s by default.
            "broker.session.timeout.ms": "3000",
        }
        if self.security is not None:
            conf.update(self.security.config(self.port, self.controller_port))
        conf.update(self.extra_config)
        return conf

    def _write_config(self) -> None:
        text = "".join(f"{k}={v}\n" for k, v in self._config().items())
        # Readable by this user only: with ``security`` it holds the administrator's password.
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.config_file.chmod(0o600)
        self.log4j_file.write_text(_LOG4J2_PROPERTIES)

    def _format(self, java: str, deadline: float) -> None:
        assert self._libs is not None
        cmd = [
            java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            f"{self._libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _random_cluster_id(),
            "-c",
            str(self.config_file),
            "--ignore-formatted",
        ]
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
                cwd=self.data_dir,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(f"formatting {self.log_dir} timed out") from exc
        with self.log_file.open("a") as log:
            log.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise LocalKafkaError(
                f"formatting {self.log_dir} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )

    def _wait_ready(self, offset: int, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        with self.log_file.open("rb") as log:
            log.seek(offset)
            pending = b""
            while True:
                chunk = log.read()
                if chunk:
                    pending += chunk
                    if READY_MARKER.encode() in pending:
                        return
                    pending = pending[-len(READY_MARKER) :]
                    continue
                assert self._proc is not None
                code = self._proc.poll()
                if code is not None:
                    self._reap()
                    raise LocalKafkaError(
                        f"Kafka exited with code {code} before it was ready; last log lines "
                        f"of {self.log_file}:\n{_tail(self.log_file)}"
                    )
                if time.monotonic() >= deadline:
                    raise LocalKafkaError(
                        f"Kafka was not ready within {timeout:.0f}s; last log lines of "
                        f"{self.log_file}:\n{_tail(self.log_file)}"
                    )
                time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m managed_backups.shared.infra.kafka", description=__doc__
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch and cache the Kafka jars")
    fetch.add_argument("--cache-dir", type=Path, default=None)
    run = sub.add_parser("run", help="run a single-node Kafka in the foreground")
    run.add_argument("--data-dir", type=Path, required=True)
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--controller-port", type=int, default=None)
    run.add_argument("--log-file", type=Path, default=None)
    run.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)

    if args.command == "fetch":
        started = time.monotonic()
        try:
            libs = ensure_kafka_jars(args.cache_dir)
        except KafkaSetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        count = len(list(libs.glob("*.jar")))
        print(
            f"Kafka {kafka_version()}: {count} jars in {libs} ({time.monotonic() - started:.1f}s)"
        )
        return 0

    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    kafka = LocalKafka(args.data_dir, args.port, args.controller_port, args.log_file)
    started = time.monotonic()
    try:
        servers = kafka.start(timeout=args.timeout)
    except (KafkaSetupError, LocalKafkaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(servers, flush=True)
    print(
        f"Kafka ready in {time.monotonic() - started:.1f}s (pid {kafka.pid}, log "
        f"{kafka.log_file}); Ctrl-C or SIGTERM stops it",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop_requested.wait(0.5):
            if not kafka.is_running():
                print("error: Kafka exited unexpectedly", file=sys.stderr)
                print(_tail(kafka.log_file), file=sys.stderr)
                return 1
    finally:
        kafka.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
