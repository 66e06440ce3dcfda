"""Load test: the registered model over HTTP (`mlflow models serve`) and in process.

The same N requests (default 1,000), one image each, from C concurrent clients (default 8
threads), against three paths, side by side:

  (a) in process, ``predict_batch`` on the image already resized (what a Python caller
      holding the model pays);
  (b) in process, the `snackloc predict` path: JPEG file -> ``load_image_array`` (EXIF,
      RGB, resize) -> ``predict_batch``;
  (c) `mlflow models serve -m MODEL --env-manager local` on 127.0.0.1 (docs/serving.md):
      a JSON body ``{"inputs": [image]}`` per request over a keep-alive connection per
      client, the image already resized as in (a).

For each: latency p50 / p90 / p99 / max, throughput and the number of errors (an exception
or an HTTP status other than 200). Ten warm-up requests per path are not counted. Images
are real test images of the project (``outputs/dedup/annotations-test.csv``).

Usage (~2-4 min on 2 cores; needs a registered model, `dvc repro` or `snackloc register`):
  .venv/bin/python bench/serve_load.py [--model models:/snackloc@champion]
      [--requests 1000] [--clients 8] [--workers 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.core import env  # noqa: E402
from pipeline.data.contract import load_image_array  # noqa: E402
from pipeline.integrations import tracking  # noqa: E402
from pipeline.ops.predict import load_predictor, predict_batch  # noqa: E402

WARMUP = 10


@dataclass
class LoadResult:
    """Figures of one path under load."""

    name: str
    requests: int
    clients: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def run_load(name: str, call: Callable[[int], None], requests: int, clients: int) -> LoadResult:
    """Send ``requests`` calls (``call(i)``) from ``clients`` threads; time each one."""
    for i in range(WARMUP):
        call(i)
    latencies = np.zeros(requests)
    errors: list[str] = []
    counter, lock = itertools.count(), threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(counter)
            if i >= requests:
                return
            started = time.perf_counter()
            try:
                call(i)
            except Exception as exc:  # counted and reported, never fatal to the test
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            latencies[i] = time.perf_counter() - started

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        print(f"  {name}: {len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    p50, p90, p99 = np.percentile(latencies * 1000, [50, 90, 99])
    return LoadResult(
        name, requests, clients, len(errors), seconds, p50, p90, p99, latencies.max() * 1000
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ModelServer:
    """`mlflow models serve` of ``model`` on 127.0.0.1 (local env manager), as a context."""

    def __init__(self, model: str, workers: int, log_path: Path) -> None:
        self.model, self.workers, self.log_path = model, workers, log_path
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ModelServer:
        bin_dir = Path(sys.executable).parent
        command = [
            str(bin_dir / "mlflow"), "models", "serve", "-m", self.model,
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port),
            "-w", str(self.workers),
        ]  # fmt: skip
        # --env-manager local starts `uvicorn` from PATH: the virtualenv's bin must be on it.
        environ = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
        }
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        started = time.perf_counter()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
                    break
            except OSError:
                if time.perf_counter() - started > 300:
                    raise TimeoutError(f"no /ping answer in 300 s: see {self.log_path}") from None
                time.sleep(0.5)
        print(f"  server ready in {time.perf_counter() - started:.0f} s (port {self.port})")
        return self

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def http_caller(port: int, bodies: list[bytes]) -> Callable[[int], None]:
    """``call(i)``: POST body i (cyclic) to /invocations on this thread's connection."""
    local = threading.local()

    def call(i: int) -> None:
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            local.connection.request(
                "POST",
                "/invocations",
                body=bodies[i % len(bodies)],
                headers={"Content-Type": "application/json"},
            )
            response = local.connection.getresponse()
            payload = response.read()
        except Exception:
            local.connection.close()
            local.connection = None
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
        if "box" not in json.loads(payload)["predictions"]:
            raise RuntimeError("no box in the answer")

    return call


def test_images(count: int) -> list[Path]:
    """Real test images of the project (the clean, deduplicated test split)."""
    frame = pd.read_csv(ROOT / "outputs" / "dedup" / "annotations-test.csv")
    frame = frame.drop_duplicates("image_id").head(count)
    return [
        ROOT / "data" / "test" / folder / f"{image_id}.jpg"
        for image_id, folder in zip(frame.image_id, frame.folder, strict=True)
    ]


def table(results: list[LoadResult]) -> str:
    """The figures side by side, one column per path."""
    rows = [
        ("requests / clients", lambda r: f"{r.requests} / {r.clients}"),
        ("errors", lambda r: str(r.errors)),
        ("throughput (req/s)", lambda r: f"{r.throughput:.1f}"),
        ("latency p50 (ms)", lambda r: f"{r.p50_ms:.1f}"),
        ("latency p90 (ms)", lambda r: f"{r.p90_ms:.1f}"),
        ("latency p99 (ms)", lambda r: f"{r.p99_ms:.1f}"),
        ("latency max (ms)", lambda r: f"{r.max_ms:.1f}"),
        ("wall time (s)", lambda r: f"{r.seconds:.1f}"),
    ]
    lines = ["| | " + " | ".join(r.name for r in results) + " |"]
    lines.append("|---" * (len(results) + 1) + "|")
    lines += [f"| {label} | " + " | ".join(f(r) for r in results) + " |" for label, f in rows]
    return "\n".join(lines)


def main() -> None:
    """Run the three paths and print the table (and optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/snackloc@champion")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="`mlflow models serve -w`")
    parser.add_argument("--images", type=int, default=16, help="distinct test images used")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    env.configure(ROOT)
    os.chdir(ROOT)

    predictor = load_predictor(args.model)
    paths = test_images(args.images)
    arrays = [load_image_array(path, predictor.image_size) for path in paths]
    bodies = [json.dumps({"inputs": [a.astype("float32").tolist()]}).encode() for a in arrays]
    print(
        f"{args.model}: {predictor.image_size} px, {len(predictor.classes)} classes; "
        f"{len(paths)} test images, {len(bodies[0]) / 1e3:.0f} kB JSON per request"
    )
    n, c = args.requests, args.clients
    results = [
        run_load(
            "in-process predict_batch",
            lambda i: predict_batch(predictor, [arrays[i % len(arrays)]]),
            n,
            c,
        ),
        run_load(
            "in-process file → predict",
            lambda i: predict_batch(
                predictor, [load_image_array(paths[i % len(paths)], predictor.image_size)]
            ),
            n,
            c,
        ),
    ]
    with ModelServer(args.model, args.workers, ROOT / "outputs" / "serve_load.log") as server:
        results.append(
            run_load(
                f"mlflow models serve (-w {args.workers})", http_caller(server.port, bodies), n, c
            )
        )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
