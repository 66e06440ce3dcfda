"""`snackloc serve`: the model over HTTP (FastAPI on uvicorn), with dynamic batching.

Endpoints:

- ``POST /predict``: images as raw bytes, multipart or JSON (pipeline/ops/http_inputs.py);
  answers ``{"model": ..., "predictions": [...]}``, one object per image in the format of
  `snackloc predict` (class, probability, top-k, box normalized and in pixels; a
  detector's every object in ``detections``: class, score, box normalized and in pixels).
  ``?top_k=N`` sets how many classes are listed; a detector's ``?score_threshold=S`` and
  ``?max_detections=N`` which detections (default: the server's, else the model's own).
- ``GET /health``: the process answers (liveness); ``GET /ready``: the model is loaded and
  warmed up (readiness; 503 while starting or stopping); ``GET /metrics``: Prometheus text.

JPEG decoding runs on a small thread pool and the model on its own thread behind the
micro-batcher (pipeline/ops/batcher.py), so concurrent requests share model calls. A bad
request gets a 4xx with a reason; the server goes on serving.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from pipeline.core.errors import UserError
from pipeline.data.contract import decode_for_model
from pipeline.model.answers import Limits, Predictor, Result, choose_limits, describe_error
from pipeline.ops.batcher import MicroBatcher
from pipeline.ops.http_inputs import BadRequest, Upload, parse

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, decodes and limits requests."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    decode_threads: int = 2
    max_body_mb: float = 20.0
    top_k: int = 3
    score_threshold: float | None = None  # a detector's default; None: the model's own
    max_detections: int | None = None  # a detector's default; None: the model's own


class Metrics:
    """Request counts by status and a latency histogram, as Prometheus text."""

    def __init__(self) -> None:
        self.requests: Counter[int] = Counter()
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        self.requests[status] += 1
        self.latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def text(self, batcher: MicroBatcher) -> str:
        stats, total = batcher.stats, sum(self.requests.values())
        lines = ["# TYPE snackloc_requests_total counter"]
        lines += [f'snackloc_requests_total{{status="{s}"}} {n}' for s, n in self.requests.items()]
        lines.append("# TYPE snackloc_request_seconds histogram")
        lines += [
            f'snackloc_request_seconds_bucket{{le="{b}"}} {n}'
            for b, n in zip(LATENCY_BUCKETS, self.buckets, strict=True)
        ]
        lines += [
            f'snackloc_request_seconds_bucket{{le="+Inf"}} {total}',
            f"snackloc_request_seconds_sum {self.latency_sum:.6f}",
            f"snackloc_request_seconds_count {total}",
            f"snackloc_batches_total {stats.batches}",
            f"snackloc_batch_images_total {stats.images}",
            f"snackloc_batch_failures_total {stats.failures}",
            f"snackloc_model_seconds_total {stats.model_seconds:.6f}",
        ]
        return "\n".join(lines) + "\n"


def create_app(predictor: Predictor, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The FastAPI application serving ``predictor``.

    Long because its routes are functions nested in it, FastAPI's way, sharing its state.
    """
    state = {"ready": False}
    # the server's default limits: a UserError here (before serving) when out of range
    limits = choose_limits(
        predictor.limits, settings.score_threshold, settings.max_detections, predictor.source
    )
    batcher = MicroBatcher(predictor.outputs, settings.max_batch, settings.max_wait_ms)
    decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    metrics = Metrics()
    limit = int(settings.max_body_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        size = predictor.image_size  # trace and warm the model before answering ready
        await batcher.predict([np.zeros((size, size, 3), "float32")])
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()
        decoders.shutdown(wait=False, cancel_futures=True)

    # FastAPI's own OpenTelemetry hooks look up the providers on every request (~0.1 ms of
    # the ~3 ms a request costs on 2 cores): off; /metrics says what the server does.
    telemetry = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(
        title="snackloc", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry=telemetry
    )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        body = {"ready": state["ready"], "model": predictor.source,
                "image_size": predictor.image_size, "classes": predictor.classes}  # fmt: skip
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    @app.get("/metrics")
    async def metrics_text():
        return PlainTextResponse(metrics.text(batcher))

    @app.post("/predict")
    async def predict(
        request: Request,
        top_k: int = settings.top_k,
        score_threshold: float | None = None,
        max_detections: int | None = None,
    ):
        started = time.perf_counter()
        try:
            chosen = request_limits(limits, score_threshold, max_detections, predictor.source)
            body = await read_body(request, limit)
            uploads = parse(request.headers.get("content-type", ""), body, predictor.image_size)
            results = await predict_uploads(uploads, max(1, top_k), chosen)
        except BadRequest as exc:
            metrics.observe(exc.status, time.perf_counter() - started)
            return JSONResponse({"detail": exc.reason}, status_code=exc.status)
        metrics.observe(200, time.perf_counter() - started)
        # plain JSON types already: a JSONResponse skips FastAPI's jsonable_encoder pass
        return JSONResponse({"model": predictor.source, "predictions": results})

    async def predict_uploads(uploads: list[Upload], top_k: int, chosen) -> list[dict]:
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(decoders, decode_upload, u, predictor.image_size)
              for u in uploads)
        )  # fmt: skip
        rows = await batcher.predict([pixels for pixels, _ in decoded])
        answers = []
        for upload, (_, (width, height)), row in zip(uploads, decoded, rows, strict=True):
            result = Result(image=upload.name, width=width, height=height)
            result.fill_outputs(predictor.classes, row, top_k, chosen)
            answers.append(result.to_dict())
        return answers

    return app


def request_limits(
    default: Limits | None, score_threshold: float | None, max_detections: int | None, source: str
) -> Limits | None:
    """A request's detection limits: its query parameters over the server's defaults; a
    422 when out of range or asked of a model that lists no detections."""
    try:
        return choose_limits(default, score_threshold, max_detections, source)
    except UserError as exc:
        raise BadRequest(422, exc.message) from None


def decode_upload(upload: Upload, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixels for the model and the displayed (width, height) of one upload."""
    if upload.pixels is not None:
        return upload.pixels, (size, size)
    try:
        return decode_for_model(io.BytesIO(upload.data or b""), size)
    except Exception as exc:  # whatever Pillow raises for bad bytes
        raise BadRequest(400, f"{upload.name}: {describe_error(exc)}") from None


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {int(declared)} bytes; the limit is {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise BadRequest(413, f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def run(app, host: str, port: int, on_ready=None) -> int:
    """Serve ``app`` until SIGTERM or Ctrl+C; in-flight requests finish first. Returns 0."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=30, server_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    # uvicorn handles both signals (graceful stop) and raises them again once stopped: make
    # that a no-op here, so that a requested stop ends with status 0 rather than 130.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_ready is not None:
            _when_started(server, on_ready)
        server.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if server.started else 1


def _when_started(server, on_ready) -> None:
    """Call ``on_ready`` once uvicorn listens (from its event loop)."""
    original = server.startup

    async def startup(sockets=None) -> None:
        await original(sockets=sockets)
        if server.started:
            on_ready()

    server.startup = startup
