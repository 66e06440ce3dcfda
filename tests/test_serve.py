"""`snackloc serve`: HTTP answers, dynamic batching, bad requests, and a clean stop.

One real uvicorn server on 127.0.0.1 (in a thread of the test process, with a tiny model)
serves every HTTP case; one `snackloc serve` process checks the command and SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import io
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers_data import noise_image, write_image
from helpers_env import BIN, free_port
from helpers_model import save_tiny_detector, save_tiny_model
from helpers_processes import Command

from pipeline.ops import batcher, predict

CLASSES = ["apple", "banana", "cake"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), CLASSES)


@pytest.fixture(scope="module")
def server(tiny):
    """(port, predictor) of a server with a 1 MB body limit, for the whole module."""
    from pipeline.ops import serve

    predictor = predict.load_predictor(str(tiny[0]), tiny[1])
    with running(
        serve.create_app(predictor, serve.ServeSettings(max_body_mb=1, max_wait_ms=20))
    ) as port:
        yield port, predictor


@pytest.fixture(scope="module")
def detector_server(tmp_path_factory):
    """(port, predictor) of a tiny detector's server listing at most 5 detections by default
    (the model itself lists 8)."""
    from pipeline.ops import serve

    model, classes = save_tiny_detector(tmp_path_factory.mktemp("detector"), CLASSES, 8)
    predictor = predict.load_predictor(str(model), classes)
    with running(serve.create_app(predictor, serve.ServeSettings(max_detections=5))) as port:
        yield port, predictor


@contextlib.contextmanager
def running(app):
    """Serve ``app`` on a free port in a thread; yields the port."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    uv_server = uvicorn.Server(config)
    thread = threading.Thread(target=uv_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        uv_server.should_exit = True
        thread.join(30)


def call(port: int, method: str, path: str, body: bytes = b"", content_type: str = ""):
    """(status, parsed JSON or text) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": content_type} if content_type else {}
    connection.request(method, path, body=body or None, headers=headers)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    kind = response.getheader("content-type", "")
    return response.status, json.loads(payload) if "json" in kind else payload.decode()


def jpeg(seed: str, size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    noise_image(seed, size).save(buffer, "JPEG")
    return buffer.getvalue()


def test_every_input_form_gets_the_answer_of_snackloc_predict(server, tmp_path):
    port, predictor = server
    photo = write_image(tmp_path / "p.jpg", noise_image("p", (80, 60)))
    (expected,) = predict.predict_images(predictor, [photo], top_k=2)
    data = photo.read_bytes()
    boundary = "XyZ"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    forms = [
        (data, "image/jpeg"),
        (multipart, f"multipart/form-data; boundary={boundary}"),
        (json.dumps({"image": base64.b64encode(data).decode()}).encode(), "application/json"),
        (json.dumps({"images": [base64.b64encode(data).decode()]}).encode(), "application/json"),
    ]
    for body, kind in forms:
        status, answer = call(port, "POST", "/predict?top_k=2", body, kind)
        assert status == 200, (kind, answer)
        (got,) = answer["predictions"]
        assert got["class_name"] == expected.class_name, kind
        assert got["box_pixels"] == expected.box_pixels and len(got["top"]) == 2, kind
        assert (got["width"], got["height"]) == (80, 60) and "detections" not in got
        np.testing.assert_allclose(got["box"], expected.box, atol=1e-4)
    size = predictor.image_size
    pixels = np.asarray(noise_image("q", (size, size)), dtype="float32")
    body = json.dumps({"inputs": [pixels.tolist(), pixels.tolist()]}).encode()
    status, answer = call(port, "POST", "/predict", body, "application/json")
    assert status == 200 and len(answer["predictions"]) == 2
    assert answer["predictions"][0]["width"] == size


def test_a_detector_answers_every_object_within_the_requests_limits(
    detector_server, server, tmp_path
):
    port, predictor = detector_server
    photo = write_image(tmp_path / "p.jpg", noise_image("p", (80, 60)))
    (everything,) = predict.predict_images(predictor, [photo])  # the model's own: 8
    scores = [d["score"] for d in everything.detections]
    assert len(scores) == 8 and scores[1] - scores[2] > 1e-3

    def detections(query: str = "") -> list[dict]:
        status, answer = call(port, "POST", f"/predict{query}", photo.read_bytes(), "image/jpeg")
        assert status == 200, answer
        (got,) = answer["predictions"]
        assert set(got) >= {"class_name", "probability", "top", "box", "box_pixels"}
        return got["detections"]

    def same(got: list[dict], expected: list[dict]) -> None:
        assert [(d["class_name"], d["box_pixels"]) for d in got] == [
            (d["class_name"], d["box_pixels"]) for d in expected
        ]
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in expected],
                                   atol=1e-3)  # fmt: skip

    same(detections(), everything.detections[:5])  # the server's default maximum
    same(detections("?max_detections=8"), everything.detections)
    same(detections(f"?score_threshold={(scores[1] + scores[2]) / 2}"), everything.detections[:2])
    same(detections("?score_threshold=0.01&max_detections=1"), everything.detections[:1])
    for query, reason in [("?score_threshold=1.5", "from 0 to 1"),
                          ("?max_detections=0", "1 or more")]:  # fmt: skip
        status, answer = call(port, "POST", f"/predict{query}", photo.read_bytes(), "image/jpeg")
        assert status == 422 and reason in answer["detail"], answer
    status, answer = call(server[0], "POST", "/predict?max_detections=3", jpeg("x"), "image/jpeg")
    assert status == 422 and "answers one box per image" in answer["detail"], answer


def test_concurrent_requests_share_model_calls(server):
    port, _ = server
    bodies = [jpeg(str(i)) for i in range(8)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda i: call(port, "POST", "/predict", bodies[i % 8], "image/png"), range(48)
            )
        )
    assert all(status == 200 for status, _ in answers)
    # the same image always gets the same answer, whatever batch it was in
    by_body = {}
    for i, (_, answer) in enumerate(answers):
        box = answer["predictions"][0]["box"]
        by_body.setdefault(i % 8, box)
        np.testing.assert_allclose(box, by_body[i % 8], atol=1e-4)
    _, text = call(port, "GET", "/metrics")
    numbers = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[0] != "#")
    assert int(numbers["snackloc_batches_total"]) < int(numbers["snackloc_batch_images_total"])
    assert 'snackloc_requests_total{status="200"}' in numbers


@pytest.mark.parametrize(
    ("body", "kind", "status", "reason"),
    [
        (b"hello, not an image", "image/jpeg", 400, "not an image"),
        (jpeg("t")[:300], "image/jpeg", 400, "truncated"),
        (b"\xff" * (2 * 1024 * 1024), "image/jpeg", 413, "limit"),
        (b'{"image": ', "application/json", 400, "not valid JSON"),
        (b'{"picture": "x"}', "application/json", 422, "no image in the JSON"),
        (b'{"image": "%%%"}', "application/json", 400, "not valid base64"),
        (b'{"inputs": [[1, 2, 3]]}', "application/json", 422, "expected shape"),
        (b"a=1", "application/x-www-form-urlencoded", 415, "unsupported Content-Type"),
        (b"", "image/jpeg", 400, "empty body"),
    ],
    ids=["text", "truncated", "50MB", "json", "keys", "base64", "shape", "form", "empty"],
)
def test_bad_requests_get_a_4xx_with_a_reason_and_the_server_goes_on(
    server, body, kind, status, reason
):
    port, _ = server
    got, answer = call(port, "POST", "/predict", body, kind)
    assert got == status and reason.lower() in answer["detail"].lower(), answer
    assert call(port, "POST", "/predict", jpeg("ok"), "image/jpeg")[0] == 200
    assert call(port, "GET", "/ready")[1]["ready"] is True


def test_batcher_routes_each_row_to_its_caller_and_bounds_batches():
    sizes = []

    def infer(batch):
        sizes.append(len(batch))
        return {"class": batch[:, :2] * 2, "box": batch[:, :4]}  # rows that name their input

    async def main():
        micro = batcher.MicroBatcher(infer, max_batch=4, max_wait_ms=50)
        micro.start()
        calls = [micro.predict([np.full(4, float(i)), np.full(4, i + 0.5)]) for i in range(7)]
        answers = await asyncio.gather(*calls)
        await micro.stop()
        return answers, micro.stats

    answers, stats = asyncio.run(main())
    for i, rows in enumerate(answers):
        assert [float(row["box"][0]) for row in rows] == [i, i + 0.5]
    assert max(sizes) <= 4 and sum(sizes) == 14 and len(sizes) < 14
    assert stats.images == 14 and stats.batches == len(sizes)


def test_serve_command_answers_then_stops_cleanly_on_sigterm(tiny, tmp_path):
    model, classes = tiny
    port = free_port()
    args = [str(BIN / "snackloc"), "serve", "-m", str(model), "--classes", str(classes)]
    command = Command([*args, "--port", str(port)], cwd=tmp_path, env=dict(os.environ))
    try:
        command.wait_for("Ctrl+C stops it", timeout=240)
        assert f"http://127.0.0.1:{port}" in command.output
        status, answer = call(port, "POST", "/predict", jpeg("cli"), "image/jpeg")
        assert status == 200 and answer["predictions"][0]["class_name"] in CLASSES
    finally:
        command.process.send_signal(signal.SIGTERM)
        code = command.process.wait(60)
    assert code == 0, command.output
    assert "Traceback" not in command.output
