"""Load test: the model alone, in process, and behind `snackloc serve` / `mlflow models serve`.

The same N requests (default 1,000), one image each, from C concurrent clients (default 8
threads), against each path, side by side, with each path's throughput as a share of the
model's own batched throughput measured in the same run:

  (0) the model alone: ``Predictor.infer`` on batches of 32 images already resized
      (images/s; the ceiling of every path below);
  (a) in process, ``predict_batch`` on one image already resized per call;
  (b) in process, the `snackloc predict` path per call: JPEG file -> decode/resize -> model;
  (c) `snackloc serve` on 127.0.0.1 (dynamic batching): the JPEG bytes as the request body;
  (d) `mlflow models serve -m MODEL --env-manager local` (registered models only, unless
      ``--no-mlflow``): a JSON body ``{"inputs": [image]}`` of the resized image, and then
      the JPEG itself, base64 in ``{"dataframe_records": [{"image": ...}]}``.

For each: latency p50 / p90 / p99 / max, throughput and the number of errors (an exception
or an HTTP status other than 200). Ten warm-up requests per path are not counted. Images
are real test images of the project (``outputs/dedup/annotations-test.csv``) or, with
``--synthetic``, generated 640×480 photo-like JPEGs.

A detector (``model.task: detect``, or ``--untrained --task detect``) goes through the same
paths: its answers carry ``detections`` (up to ``model.detect.max_detections`` per image).
The untrained one is saved with a score threshold of 0, so that every image lists that
many: the most work and JSON a request can get (with the default 0.05 it lists none: its
class logits start at the focal-loss prior, 0.01).

Usage (~2-4 min on 2 cores):
  .venv/bin/python bench/serve_load.py [--model models:/snackloc@champion | model.keras
      --classes classes.json | --untrained [--task detect]] [--requests 1000] [--clients 8]
      [--workers 1] [--synthetic] [--no-mlflow] [--json results.json]
"""

from __future__ import annotations

import argparse
import base64
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
    # CPU seconds the path used: the serving process (the server, or this process for the
    # in-process paths) and, for servers, the client threads of this process. On a shared
    # machine wall-clock throughput moves with other work; CPU per request does not.
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def server_cpu_ms(self) -> float:
        return self.server_cpu_s * 1000 / self.requests

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (default: this one), all its threads, and of
    its child processes (the workers of a server)."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *(process.children(recursive=True) if pid else [])]:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_load(
    name: str, call: Callable[[int], None], requests: int, clients: int, server: int | None = None
) -> LoadResult:
    """Send ``requests`` calls (``call(i)``) from ``clients`` threads; time each one and
    count the CPU used by this process and by the ``server`` process (a pid) meanwhile."""
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
    own_cpu, server_cpu = cpu_seconds(), cpu_seconds(server) if server else 0.0
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    own_cpu = cpu_seconds() - own_cpu
    server_cpu = cpu_seconds(server) - server_cpu if server else own_cpu
    if errors:
        print(f"  {name}: {len(errors)} errors, first: {errors[0]}", file=sys.stderr)
    p50, p90, p99 = np.percentile(latencies * 1000, [50, 90, 99])
    return LoadResult(
        name, requests, clients, len(errors), seconds, p50, p90, p99, latencies.max() * 1000,
        server_cpu, own_cpu if server else 0.0,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ModelServer:
    """`mlflow models serve` of ``model`` on 127.0.0.1 (local env manager), as a context."""

    def __init__(
        self, model: str, workers: int, log_path: Path, serve_args: list[str] | None = None
    ) -> None:
        self.model, self.workers, self.log_path = model, workers, log_path
        self.serve_args = serve_args  # `snackloc serve` with these arguments, not mlflow
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ModelServer:
        bin_dir = Path(sys.executable).parent
        command = [
            str(bin_dir / "mlflow"), "models", "serve", "-m", self.model,
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port),
            "-w", str(self.workers),
        ]  # fmt: skip
        health = "ping"
        if self.serve_args is not None:
            command = [str(bin_dir / "snackloc"), "serve", "-m", self.model, *self.serve_args]
            command += ["--port", str(self.port)]
            health = "ready"
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
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/{health}", timeout=2):
                    break
            except OSError:
                if time.perf_counter() - started > 300:
                    raise TimeoutError(f"no /{health} in 300 s: see {self.log_path}") from None
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


def http_caller(
    port: int, bodies: list[bytes], path: str = "/invocations", kind: str = "application/json"
) -> Callable[[int], None]:
    """``call(i)``: POST body i (cyclic) to ``path`` on this thread's connection."""
    local = threading.local()

    def call(i: int) -> None:
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            local.connection.request(
                "POST", path, body=bodies[i % len(bodies)], headers={"Content-Type": kind}
            )
            response = local.connection.getresponse()
            payload = response.read()
        except Exception:
            local.connection.close()
            local.connection = None
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
        if b"box" not in payload:
            raise RuntimeError("no box in the answer")

    return call


def model_alone(predictor, arrays: list[np.ndarray], images: int, batch: int = 32) -> LoadResult:
    """The model's own batched throughput: ``infer`` on batches of ``batch`` images."""
    stack = np.stack([arrays[i % len(arrays)] for i in range(batch)])
    predictor.infer(stack)  # warm-up
    calls = max(1, images // batch)
    latencies = np.zeros(calls)
    cpu = cpu_seconds()
    started = time.perf_counter()
    for i in range(calls):
        begun = time.perf_counter()
        predictor.infer(stack)
        latencies[i] = time.perf_counter() - begun
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    p50, p90, p99 = np.percentile(latencies * 1000, [50, 90, 99])
    name = f"model alone, batches of {batch}"
    return LoadResult(
        name, calls * batch, 1, 0, seconds, p50, p90, p99, latencies.max() * 1000, cpu
    )


def synthetic_images(count: int, folder: Path) -> list[Path]:
    """640×480 photo-like JPEGs (smooth random colour fields), written once."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i}.jpg"
        if not path.is_file():
            coarse = np.random.default_rng(i).integers(0, 256, (12, 16, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
            image.save(path, quality=90)
        paths.append(path)
    return paths


def untrained_model(folder: Path, task: str = "localize") -> tuple[Path, Path]:
    """The default architecture (params.yaml) for ``task``, untrained: same speed as a
    trained one (a detector saved with its decoder, as the train stage saves it)."""
    from pipeline.core.config import load_params
    from pipeline.model.detect_decode import inference_model
    from pipeline.model.model import build_model

    folder.mkdir(parents=True, exist_ok=True)
    model, classes = folder / "model.keras", folder / "classes.json"
    names = [f"class{i}" for i in range(20)]
    params = load_params(ROOT / "params.yaml").model.model_copy(update={"task": task})
    built = build_model(len(names), params)
    every = params.detect.model_copy(update={"score_threshold": 0.0})  # module docstring
    (inference_model(built, every) if task == "detect" else built).save(model)
    classes.write_text(json.dumps({"classes": names}))
    return model, classes


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
    base = results[0]
    rows = [
        ("requests / clients", lambda r: f"{r.requests} / {r.clients}"),
        ("errors", lambda r: str(r.errors)),
        ("throughput (req/s)", lambda r: f"{r.throughput:.1f}"),
        ("share of the model alone", lambda r: f"{r.throughput / results[0].throughput:.0%}"),
        ("latency p50 (ms)", lambda r: f"{r.p50_ms:.1f}"),
        ("latency p90 (ms)", lambda r: f"{r.p90_ms:.1f}"),
        ("latency p99 (ms)", lambda r: f"{r.p99_ms:.1f}"),
        ("latency max (ms)", lambda r: f"{r.max_ms:.1f}"),
        ("CPU ms per request, serving", lambda r: f"{r.server_cpu_ms:.2f}"),
        ("CPU ms per request, clients", lambda r: f"{r.client_cpu_s * 1000 / r.requests:.2f}"),
        (
            "share of the model alone, by CPU",
            lambda r: f"{base.server_cpu_ms / r.server_cpu_ms:.0%}",
        ),
        ("wall time (s)", lambda r: f"{r.seconds:.1f}"),
    ]
    lines = ["| | " + " | ".join(r.name for r in results) + " |"]
    lines.append("|---" * (len(results) + 1) + "|")
    lines += [f"| {label} | " + " | ".join(f(r) for r in results) + " |" for label, f in rows]
    return "\n".join(lines)


def main() -> None:
    """Run every path and print the table (and optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/snackloc@champion")
    parser.add_argument("--classes", help="class list JSON of a .keras model")
    parser.add_argument("--untrained", action="store_true", help="the default architecture")
    parser.add_argument("--task", choices=["localize", "detect"], default="localize",
                        help="with --untrained: the two heads or the detector")  # fmt: skip
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="`mlflow models serve -w`")
    parser.add_argument("--images", type=int, default=16, help="distinct test images used")
    parser.add_argument("--synthetic", action="store_true", help="640×480 generated JPEGs")
    parser.add_argument("--no-mlflow", action="store_true", help="skip `mlflow models serve`")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    env.configure(ROOT)
    os.chdir(ROOT)
    scratch = ROOT / "outputs" / "serve_load"
    if args.untrained:
        folder = "untrained" if args.task == "localize" else f"untrained-{args.task}"
        model, classes = untrained_model(scratch / folder, args.task)
        args.model, args.classes = str(model), str(classes)
    classes = Path(args.classes) if args.classes else None
    predictor = load_predictor(args.model, classes)
    paths = (
        synthetic_images(args.images, scratch / "images")
        if args.synthetic
        else test_images(args.images)
    )
    arrays = [load_image_array(path, predictor.image_size) for path in paths]
    jpegs = [path.read_bytes() for path in paths]
    print(
        f"{args.model}: {predictor.image_size} px, {len(predictor.classes)} classes; "
        f"{len(paths)} images, {np.mean([len(j) for j in jpegs]) / 1e3:.0f} kB JPEG each"
    )
    n, c = args.requests, args.clients
    results = [
        model_alone(predictor, arrays, n),
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
    serve_args = ["--classes", args.classes] if args.classes else []
    with ModelServer(args.model, 1, scratch / "snackloc-serve.log", serve_args) as server:
        call = http_caller(server.port, jpegs, "/predict", "image/jpeg")
        results.append(run_load("snackloc serve (JPEG)", call, n, c, server.process.pid))
    if not args.no_mlflow and args.model.startswith("models:/"):
        pixels = [json.dumps({"inputs": [a.astype("float32").tolist()]}).encode() for a in arrays]
        records = [
            json.dumps({"dataframe_records": [{"image": base64.b64encode(j).decode()}]}).encode()
            for j in jpegs
        ]
        with ModelServer(args.model, args.workers, scratch / "mlflow-serve.log") as server:
            for kind, bodies in (("pixels", pixels), ("JPEG, base64", records)):
                name = f"mlflow models serve -w {args.workers} ({kind})"
                call = http_caller(server.port, bodies)
                results.append(run_load(name, call, n, c, server.process.pid))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
