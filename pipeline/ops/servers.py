"""Local Prefect and MLflow servers for one project (`snackloc server`).

Both listen on 127.0.0.1 by default and keep their state in the project:

- Prefect: ``PREFECT_HOME`` (``.prefect/``, set by pipeline/core/env.py); its database is
  ``.prefect/prefect.db`` unless ``PREFECT_API_DATABASE_CONNECTION_URL`` names another one
  (PostgreSQL for a team). Prefect reads that variable itself; it is passed through.
- MLflow: runs and registry in ``mlflow.db``, artifacts in ``mlartifacts/`` — the same store
  the stages write to when no server is set (pipeline/integrations/tracking.py) — unless a
  backend store URI / artifacts destination is given (PostgreSQL, S3: see docs/scheduling.md).

Each server runs in its own process group (its workers included), so stopping it can never
leave a worker behind; stopping means SIGTERM to the group, a bounded wait, then SIGKILL
(pipeline/ops/children.py). Their output goes to log files under ``.snackloc/logs/``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.integrations import tracking
from pipeline.ops import children

LOG_DIR = Path(".snackloc") / "logs"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
STOP_TIMEOUT = children.STOP_TIMEOUT


@dataclass(frozen=True)
class Server:
    """One server process to run: its command line, where it answers and where it logs."""

    name: str
    command: list[str]
    host: str
    port: int
    url: str  # what a user opens in a browser
    health_url: str  # answers 200 once the server is ready
    env: dict[str, str]
    log: Path


@dataclass
class Running:
    """A started server and its process."""

    server: Server
    process: subprocess.Popen


def client_host(host: str) -> str:
    """The address to reach a server bound to ``host`` on this machine (URL-ready)."""
    if host in {"0.0.0.0", "", "::"}:  # a wildcard bind answers on loopback too
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def is_local(host: str) -> bool:
    """Whether ``host`` accepts connections from this machine only."""
    return host in LOCAL_HOSTS or host.startswith("127.")


def hide_password(uri: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``, for printing a URI."""
    # up to the last "@" of the authority: an unescaped "@" in a password stays hidden
    return re.sub(r"(://[^:/@]+):[^/]*@", r"\1:***@", uri)


def prefect_database(env: dict[str, str] | None = None) -> str:
    """Where the Prefect server keeps its state, for printing (password hidden)."""
    env = os.environ if env is None else env
    url = env.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if url:
        return hide_password(url)
    home = Path(env.get("PREFECT_HOME", Path.home() / ".prefect"))
    return f"sqlite:///{home.resolve() / 'prefect.db'}"


def prefect_server(project: Path, host: str, port: int, ui: bool = True) -> Server:
    """`prefect server start` on ``host:port``; state as the environment configures it."""
    url = f"http://{client_host(host)}:{port}"
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        host,
        "--port",
        str(port),
        "--ui" if ui else "--no-ui",
    ]
    # The UI talks to the API named by PREFECT_API_URL when set: make it this server's.
    env = {**os.environ, "PREFECT_API_URL": f"{url}/api"}
    log = project / LOG_DIR / "prefect.log"
    return Server("Prefect", command, host, port, url, f"{url}/api/health", env, log)


def mlflow_server(
    project: Path,
    host: str,
    port: int,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    workers: int = 1,
) -> Server:
    """`mlflow server` on ``host:port`` over the project's store (or the given ones).

    Artifacts are proxied by the server (``mlflow-artifacts:/``), so clients on other
    machines can log them without access to the destination.
    """
    url = f"http://{client_host(host)}:{port}"
    command = [sys.executable, "-m", "mlflow", "server"]
    command += ["--host", host, "--port", str(port), "--workers", str(workers)]
    # Through the environment (mlflow server reads both), so that a database password is
    # not on the command line for every user of the machine to see.
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri or tracking.local_store_uri(project),
        "MLFLOW_ARTIFACTS_DESTINATION": (
            artifacts_destination or tracking.local_artifacts_uri(project)
        ),
    }
    log = project / LOG_DIR / "mlflow.log"
    return Server("MLflow", command, host, port, url, f"{url}/health", env, log)


def mlflow_ui(project: Path, host: str, port: int, store_uri: str) -> Server:
    """`mlflow ui` on ``host:port`` over a store (the project's sqlite store by default),
    artifacts read from the project's folder beside it."""
    url = f"http://{client_host(host)}:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri]
    command += ["--host", host, "--port", str(port)]
    if store_uri.startswith("sqlite"):
        command += ["--default-artifact-root", tracking.local_artifacts_uri(project)]
    log = project / LOG_DIR / "mlflow-ui.log"
    return Server("MLflow UI", command, host, port, url, f"{url}/health", dict(os.environ), log)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another program listens on: its health check would answer for ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as the servers themselves bind: connections lingering in TIME_WAIT do not count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port}: {exc.strerror}",
                hint="another server may be running there; pick another port "
                "(--prefect-port / --mlflow-port)",
            ) from None


def start(server: Server) -> Running:
    """Start a server in its own process group, its output appended to its log file."""
    server.log.parent.mkdir(parents=True, exist_ok=True)
    with server.log.open("ab") as log:
        process = children.spawn(server.command, env=server.env, stdout=log, stderr=log)
    return Running(server, process)


def is_healthy(url: str) -> bool:
    """Whether ``url`` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def exited(running: list[Running]) -> Running | None:
    """The first server whose process has exited, if any."""
    return next((r for r in running if r.process.poll() is not None), None)


def wait_until_healthy(running: list[Running], timeout: float, stop: threading.Event) -> None:
    """Return once every server answers its health check.

    Raises UserError if one exits or ``timeout`` passes; returns early when ``stop`` is set.
    """
    deadline = time.monotonic() + timeout
    waiting = list(running)
    while waiting and not stop.is_set():
        dead = exited(running)
        if dead is not None:
            raise UserError(
                f"the {dead.server.name} server exited with {dead.process.returncode} "
                f"while starting; its log ({dead.server.log}) ends with:\n"
                + log_tail(dead.server.log)
            )
        waiting = [r for r in waiting if not is_healthy(r.server.health_url)]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(r.server.name for r in waiting)
            raise UserError(
                f"{names} not healthy after {timeout:.0f} s",
                hint=f"see the logs in {waiting[0].server.log.parent}; "
                "a loaded machine may need a longer --timeout",
            )
        if waiting:
            stop.wait(0.5)


def stop(running: list[Running], timeout: float = STOP_TIMEOUT) -> dict[str, int]:
    """SIGTERM every server's process group, wait up to ``timeout``, SIGKILL what is left.

    Returns each server's exit status (negative: the signal that ended it).
    """
    codes = children.stop([item.process for item in running], timeout)
    return {item.server.name: code for item, code in zip(running, codes, strict=True)}


def serve(
    servers: list[Server],
    on_ready: Callable[[list[Running]], None],
    timeout: float = 180.0,
) -> int:
    """Run ``servers`` until SIGTERM/SIGINT or until one of them exits; stop all of them.

    Calls ``on_ready`` once all answer their health checks. Returns 0 after a signal, 1 when
    a server exited by itself (its log tail is in the UserError raised while starting, or
    printed to stderr later). Installs SIGTERM/SIGINT handlers (call from the main thread).
    """
    for server in servers:
        check_port_free(server.host, server.port)
    stopping = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stopping.set())
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    running: list[Running] = []
    try:
        for server in servers:
            running.append(start(server))
        wait_until_healthy(running, timeout, stopping)
        if not stopping.is_set():
            on_ready(running)
        while not stopping.wait(0.5):
            dead = exited(running)
            if dead is not None:
                print(
                    f"error: the {dead.server.name} server exited with "
                    f"{dead.process.returncode}; its log ({dead.server.log}) ends with:\n"
                    + log_tail(dead.server.log),
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        stop(running)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
