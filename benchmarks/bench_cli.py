"""CLI benchmark: how long each command for daily work takes against a running API, next to
``curl`` asking the API the same thing (what a user would type instead).

Run on demand (not in the test suite)::

    python -m benchmarks.bench_cli [--runs 7]

The API runs in this process (uvicorn on a free port) over views projected from
``tests/history.py``'s scripted history (3 clusters, 30 days), with an administrator key; each
command runs as its own process (``managed-backups ...`` via ``python -m``), ``--runs`` times,
and the median wall time is printed with the ratio to ``curl``'s median for the same request,
and the command's import time (``python -X importtime``, the process's own modules). The target:
every command under 0.5 s. On a machine shared with other work, run it when it is quiet: the
load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from managed_backups.services.api.app import create_app
from managed_backups.services.projections.service import Projector
from managed_backups.services.runtime import open_runtime
from managed_backups.shared.identity import Identity
from managed_backups.shared.settings import Settings
from managed_backups.shared.views import ReadModels
from tests.history import write_history


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def median_seconds(argv: list[str], runs: int, env: dict[str, str]) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of ``argv``'s process: the CPU
    time does not grow when other work shares the machine."""
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append(time.monotonic() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()}")
    return statistics.median(times), statistics.median(cpu)


def import_seconds(argv: list[str], env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, check=False
    )
    total = 0
    for line in done.stderr.decode().splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\S.*)$", line)
        if match and not match.group(3).startswith(" "):
            total += int(match.group(2))
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    curl = shutil.which("curl")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        runtime = open_runtime(Settings(data_dir=Path(tmp) / "data", api_port=port))
        identity = Identity(runtime.store, runtime.db, runtime.clock)
        key, _ = identity.ensure_admin_key(runtime.settings.admin_key_path)
        write_history(runtime.store, clusters=3)
        Projector(runtime.store, ReadModels(runtime.db), batch=5000).catch_up()
        one = runtime.db.query("SELECT backup_id FROM mb_view_backups WHERE status = 'COMPLETE'")
        backup_id = str(one[0][0])
        server = uvicorn.Server(
            uvicorn.Config(create_app(runtime, None), port=port, log_level="error")  # type: ignore[arg-type]
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MANAGED_BACKUPS_")}
        env["MANAGED_BACKUPS_CREDENTIAL"] = key
        cli = [sys.executable, "-m", "managed_backups.services.cli"]
        commands = [
            (["clusters", "list"], "/api/v1/clusters?detail=true"),
            (["backups", "list", "c000"], "/api/v1/clusters/c000/backups"),
            (["backups", "show", backup_id], f"/api/v1/backups/{backup_id}"),
            (["settings", "get", "c000"], "/api/v1/clusters/c000/backups/config"),
            (["restores", "list", "c000"], "/api/v1/clusters/c000/restores"),
            (["history", "c000"], "/api/v1/clusters/c000/events?before=4611686018427387904"),
            (["keys", "list"], "/api/v1/api-keys"),
            (["grants", "list"], "/api/v1/role-grants"),
            (["--help"], None),
        ]
        print(f"load average: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
        print(
            f"{'command':<24} {'wall s':>7} {'CPU s':>6} {'curl wall s':>11} {'ratio':>6} "
            f"{'imports s':>9}"
        )
        for argv, path in commands:
            full = [*cli, *argv, "--api-url", url] if path else [*cli, *argv]
            ours, cpu = median_seconds(full, args.runs, env)
            imports = import_seconds(full[1:], env)
            theirs = ratio = ""
            if path and curl:
                seconds, _ = median_seconds(
                    [curl, "-sf", "-H", f"Authorization: Bearer {key}", f"{url}{path}"],
                    args.runs,
                    env,
                )
                theirs, ratio = f"{seconds:.3f}", f"{ours / seconds:.1f}x"
            name = " ".join(argv).replace(backup_id, "ID")
            print(f"{name:<24} {ours:>7.3f} {cpu:>6.3f} {theirs:>11} {ratio:>6} {imports:>9.3f}")
        server.should_exit = True
        thread.join(10)
        runtime.close()


if __name__ == "__main__":
    main()
