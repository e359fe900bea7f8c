"""Is a Docker engine actually usable here?"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.parse

__all__ = ["docker_available"]

_DEFAULT_SOCKET = "/var/run/docker.sock"


def _ping(sock: socket.socket) -> bool:
    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    data = b""
    while len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]


def _ping_docker_host(docker_host: str, timeout: float) -> bool:
    url = urllib.parse.urlparse(docker_host)
    try:
        if url.scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(url.path)
                return _ping(sock)
        if url.scheme in ("tcp", "http") and url.hostname:
            if os.environ.get("DOCKER_TLS_VERIFY"):
                return False  # TLS engines: leave it to the docker CLI check
            with socket.create_connection((url.hostname, url.port or 2375), timeout) as sock:
                sock.settimeout(timeout)
                return _ping(sock)
    except OSError:
        return False
    return False


def docker_available(timeout: float = 5.0) -> bool:
    """True only when a Docker engine answers (its API ``/_ping``, or ``docker info`` exits 0).

    Looks at ``$DOCKER_HOST`` (unix or plain tcp) or the default socket first, then at the
    ``docker`` CLI, each bounded by ``timeout`` seconds. A CLI without an engine is False.
    """
    docker_host = os.environ.get("DOCKER_HOST") or f"unix://{_DEFAULT_SOCKET}"
    if _ping_docker_host(docker_host, timeout):
        return True
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())
