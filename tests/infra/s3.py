"""A local S3-compatible object store for tests and development: moto's server.

By default the server runs as a child process (``python -m moto.server``), which keeps its state
apart from any ``moto.mock_aws`` used elsewhere in the same interpreter (``mock_aws`` resets every
in-process backend) and keeps its request handling off this process's GIL.
``LocalS3(in_process=True)`` uses ``moto.server.ThreadedMotoServer`` in a thread instead.

Any access key / secret is accepted; use "test"/"test" and region ``us-east-1`` with path-style
requests (``allow_http``), e.g. ``obstore.store.S3Store(bucket, endpoint=url, ...)``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from managed_backups.shared.infra.kafka import child_preexec_fn, free_ports

__all__ = ["DEFAULT_REGION", "LocalS3", "LocalS3Error", "create_bucket", "s3_store_url"]

DEFAULT_REGION = "us-east-1"
ACCESS_KEY_ID = "test"
SECRET_ACCESS_KEY = "test"


def s3_store_url(
    endpoint: str,
    bucket: str,
    prefix: str = "backups",
    access_key_id: str = ACCESS_KEY_ID,
    secret_access_key: str = SECRET_ACCESS_KEY,
) -> str:
    """The data plane's object store URL of ``bucket``/``prefix`` on the endpoint."""
    return (
        f"s3://{bucket}/{prefix}?endpoint={endpoint}&region={DEFAULT_REGION}&allow_http=true"
        f"&access_key_id={access_key_id}&secret_access_key={secret_access_key}"
    )


class LocalS3Error(RuntimeError):
    """The local S3 server failed to start or a request to it failed."""


def create_bucket(endpoint_url: str, name: str, timeout: float = 30) -> None:
    """Create bucket ``name`` on an S3-compatible endpoint that accepts unsigned requests (moto).

    Succeeds if the bucket already exists and is ours.
    """
    req = urllib.request.Request(f"{endpoint_url.rstrip('/')}/{name}", method="PUT", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code == 409 and "BucketAlreadyOwnedByYou" in body:
            return
        raise LocalS3Error(f"creating bucket {name!r} failed: HTTP {exc.code}: {body}") from exc


class LocalS3:
    """moto's S3-compatible server on a free ``127.0.0.1`` port."""

    def __init__(
        self, port: int | None = None, *, in_process: bool = False, log_file: Path | None = None
    ) -> None:
        self.port = port
        self.in_process = in_process
        self.log_file = log_file
        self.region = DEFAULT_REGION
        self.access_key_id = ACCESS_KEY_ID
        self.secret_access_key = SECRET_ACCESS_KEY
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread_server: Any = None  # moto.server.ThreadedMotoServer (untyped)
        self._own_log = False

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise LocalS3Error("LocalS3 has no port yet: call start() first")
        return f"http://127.0.0.1:{self.port}"

    def is_running(self) -> bool:
        if self.in_process:
            return self._thread_server is not None
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> str:
        """Start the server and return its endpoint URL (``http://127.0.0.1:PORT``)."""
        if self.is_running():
            raise LocalS3Error("LocalS3 is already running")
        if self.in_process:
            from moto.server import ThreadedMotoServer

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port or 0, verbose=False)
            server.start()
            self._thread_server = server
            self.port = int(server.get_host_and_port()[1])
            self._wait_ready(time.monotonic() + timeout)
            return self.endpoint_url

        if self.port is None:
            self.port = free_ports(1)[0]
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="local-s3-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
            self._own_log = True
        env = dict(os.environ)
        env.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        env.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        env.setdefault("AWS_DEFAULT_REGION", DEFAULT_REGION)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=child_preexec_fn(),
            )
        try:
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self.endpoint_url

    def stop(self, timeout: float = 10) -> None:
        if self._thread_server is not None:
            server, self._thread_server = self._thread_server, None
            server.stop()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._own_log and self.log_file is not None:
            with contextlib.suppress(OSError):
                self.log_file.unlink()
            self.log_file = None
            self._own_log = False

    def create_bucket(self, name: str) -> None:
        create_bucket(self.endpoint_url, name)

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

    def _wait_ready(self, deadline: float) -> None:
        url = f"{self.endpoint_url}/moto-api/"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise LocalS3Error(
                    f"moto server exited with code {self._proc.returncode}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    resp.read()
                return
            except (urllib.error.URLError, OSError) as exc:
                last = exc
                time.sleep(0.1)
        raise LocalS3Error(
            f"moto server at {self.endpoint_url} not ready in time ({last}):\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 50) -> str:
        if self.log_file is None:
            return ""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
