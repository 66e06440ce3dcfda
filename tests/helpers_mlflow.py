"""Real MLflow services for fault-injection tests: a server that can be killed and started
again on the same port and store, and an HTTP proxy in front of it that fails chosen calls."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpers_env import BIN, free_port, wait_healthy

from pipeline.core.files import write_json
from pipeline.integrations import tracking


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (sqlite store, served artifacts) under ``home``."""

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> MlflowServer:
        command = [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{self.home / 'mlflow.db'}",
            "--artifacts-destination", str(self.home / "artifacts"),
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "server.log").open("a") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.home,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            wait_healthy(f"{self.url}/health", self.process)
        return self

    def kill(self) -> None:
        """SIGKILL the server and its workers: a crash, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FailingProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that answers 503 to the requests
    for which ``fails(method, path)`` is true and forwards everything else."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fails = lambda method, path: False
        self.failed: list[str] = []  # "METHOD path" of each request answered with 503
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                if proxy.fails(self.command, self.path):
                    proxy.failed.append(f"{self.command} {self.path}")
                    self._reply(503, {"Content-Type": "text/plain"}, b"injected failure")
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
                upstream.close()
                self._reply(response.status, kept, payload)

            def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FailingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def new_training_run(client, params, outputs) -> None:
    """A new candidate's training run (register logs a model once per run and file)."""
    run = client.create_run(tracking.setup_experiment(params.mlflow.experiment))
    write_json(outputs.mlflow_run, {"run_id": run.info.run_id})
