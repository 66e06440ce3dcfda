"""The registry round trip through a real `mlflow server` on 127.0.0.1: register versions,
let the gate decide, promote and roll back by hand, and load @champion for prediction."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import pandas as pd
import pytest
from helpers_data import noise_image, write_image
from helpers_env import BIN, free_port, stop, wait_healthy
from helpers_mlflow import new_training_run
from helpers_model import TINY_MODEL, save_tiny_model

from pipeline.core.config import Params, RegisterParams
from pipeline.core.errors import UserError
from pipeline.core.files import write_json
from pipeline.core.paths import Outputs
from pipeline.integrations import registry, tracking
from pipeline.ops import predict, promotion
from pipeline.stages import register

CLASSES = ["apple", "banana", "cake"]
NAME = "tiny"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (sqlite store, served artifacts); yields its URL and the
    tiny model, built while the server starts (both take seconds)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (home / "server.log").open("w")
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "artifacts"),
    ]  # fmt: skip
    # No job runner: it starts a pool of worker processes this registry does not use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        model_files = save_tiny_model(home / "model", CLASSES)
        wait_healthy(f"{url}/health", process)
        yield url, model_files, home / "server.log"
    finally:
        stop(process)
        log.close()


@pytest.fixture
def project(mlflow_server, tmp_path, monkeypatch):
    """Params, stage outputs (tiny model, classes, training run) and a client of the server."""
    url, (model, classes), _ = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    params = Params(model=TINY_MODEL, register=RegisterParams(model_name=NAME))
    outputs = Outputs(tmp_path / "outputs")
    for source, target in ((model, outputs.model), (classes, outputs.classes)):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    client = registry.connect(url)
    new_training_run(client, params, outputs)
    return params, outputs, client


def evaluated(outputs: Outputs, corloc: float, fingerprint: str = "same-test-set") -> None:
    """Write what the evaluate stage would have: metrics and the split fingerprint."""
    model = {
        "images": 10, "accuracy": 0.8, "top3_accuracy": 0.9, "mean_iou": 0.5,
        "median_iou": 0.5, "iou50_rate": 0.5, "iou75_rate": 0.2, "corloc": corloc,
    }  # fmt: skip
    write_json(outputs.eval_metrics, {"test": model, "test_baseline": dict.fromkeys(model, 0.05)})
    write_json(outputs.eval_splits, {"test": {"images": 10, "fingerprint": fingerprint}})


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def history(outputs: Outputs) -> list[dict]:
    return [json.loads(line) for line in outputs.registry_history.read_text().splitlines()]


def test_register_gate_promote_rollback_round_trip(project, tmp_path):
    params, outputs, client = project

    evaluated(outputs, corloc=0.30)
    first = register.run(params, outputs)
    assert first["version"] == "1" and first["aliases"] == ["challenger", "champion"]
    assert first["decision"]["reasons"][-1] == "no champion yet"
    assert json.loads(outputs.registry_record.read_text()) == json.loads(json.dumps(first))

    new_training_run(client, params, outputs)
    evaluated(outputs, corloc=0.25)
    second = register.run(params, outputs)
    assert second["aliases"] == ["challenger"] and champion(client) == "1"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["gate.decision"] == "challenger" and tags["metric.corloc"] == "0.25"
    assert "does not beat champion v1 on corloc: 0.2500 vs 0.3000" in tags["gate.reasons"]
    assert tags["eval_fingerprint"] == "same-test-set" and tags["metric.accuracy"] == "0.8"

    new_training_run(client, params, outputs)
    evaluated(outputs, corloc=0.40)
    assert register.run(params, outputs)["decision"]["promote"]
    assert champion(client) == "3"
    assert client.get_model_version(NAME, "3").tags["previous_champion"] == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"

    back = promotion.rollback(params, outputs, reason="bad in production")
    assert (back["champion_before"], back["champion_after"]) == ("3", "1")
    assert "rolled_back_at" in client.get_model_version(NAME, "3").tags
    assert champion(client) == "1"

    manual = promotion.promote(params, outputs, "2", reason="hand-picked")
    assert manual["champion_after"] == "2" and "hand-picked" in manual["reasons"][0]
    assert client.get_model_version(NAME, "2").tags["previous_champion"] == "1"
    promotion.rollback(params, outputs)
    assert champion(client) == "1"
    with pytest.raises(UserError, match="records no previous champion"):
        promotion.rollback(params, outputs)
    with pytest.raises(UserError, match="has no version '9'"):
        promotion.promote(params, outputs, "9")

    actions = [(r["action"], r["champion_after"]) for r in history(outputs)]
    assert actions == [
        ("register", "1"), ("register", "1"), ("register", "3"),
        ("rollback", "1"), ("promote", "2"), ("rollback", "1"),
    ]  # fmt: skip

    predictor = predict.load_predictor(f"models:/{NAME}@champion")
    assert predictor.classes == CLASSES and predictor.image_size == TINY_MODEL.image_size
    (result,) = predict.predict_images(predictor, [write_image(tmp_path / "x.jpg")])
    assert result.error is None and result.class_name in CLASSES


def test_the_registered_model_answers_image_bytes_as_predict_does(project, tmp_path):
    """What `mlflow models serve` runs: base64 images in, `snackloc predict`'s answers out
    (a bad image gets its error, the others still run); pixel arrays still get the arrays."""
    import mlflow

    params, outputs, client = project
    ensure_champion(params, outputs, client)
    photo = write_image(tmp_path / "photo.jpg", noise_image("photo", size=(96, 64)))
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    encoded = base64.b64encode(photo.read_bytes()).decode()
    broken = base64.b64encode(b"not an image").decode()
    answers = served.predict(pd.DataFrame({"image": [encoded, broken, "%%%"]}))

    local = predict.load_predictor(str(outputs.model), outputs.classes)
    (expected,) = predict.predict_images(local, [photo])
    assert answers[0] == {k: v for k, v in vars(expected).items() if v is not None} | {"image": "0"}
    assert (answers[0]["width"], answers[0]["height"]) == (96, 64)
    assert "not an image" in answers[1]["error"] and "base64" in answers[2]["error"]
    pixels = np.full((2, TINY_MODEL.image_size, TINY_MODEL.image_size, 3), 128.0, "float32")
    arrays = served.predict(pixels)
    assert arrays["class"].shape == (2, len(CLASSES)) and arrays["box"].shape == (2, 4)


def test_a_version_logged_with_the_tensorflow_flavour_still_loads(project):
    """Versions registered before the pyfunc model: predict and the gate still load them."""
    import mlflow

    _, outputs, client = project
    run_id = json.loads(outputs.mlflow_run.read_text())["run_id"]
    model = predict.load_predictor(str(outputs.model), outputs.classes).model
    with tracking.model_logging_run(run_id):
        info = mlflow.tensorflow.log_model(model, name="model", metadata={"classes": CLASSES})
    version = registry.create_version(client, "old-flavour", info, run_id)
    loaded, metadata = registry.load_version(f"models:/old-flavour/{version}")
    assert metadata["classes"] == CLASSES
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]


def test_registering_answers_no_bad_request(mlflow_server, project):
    """A first registration (no model, no champion) and a second one (both exist) make no
    request the server answers 4xx: its log is a reader's, not a list of expected errors."""
    params, outputs, client = project
    log = mlflow_server[2]
    before = len(log.read_text().splitlines())
    evaluated(outputs, corloc=0.30)
    params = params.model_copy(update={"register_": RegisterParams(model_name="fresh")})
    register.run(params, outputs)
    new_training_run(client, params, outputs)
    register.run(params, outputs)
    requests = log.read_text().splitlines()[before:]
    assert any("model-versions/create" in line for line in requests)
    assert not [line for line in requests if re.search(r'" 4\d\d ', line)]
    source = client.get_model_version("fresh", "2").source
    logged = client.get_logged_model(source.removeprefix("models:/"))
    links = json.loads(logged.tags["mlflow.modelVersions"])  # the logged model's page links it
    assert [(link["name"], str(link["version"])) for link in links] == [("fresh", "2")]


def ensure_champion(params: Params, outputs: Outputs, client) -> str:
    """The champion; one is registered first if there is none (when a test runs alone)."""
    if registry.version_by_alias(client, NAME, "champion") is None:
        evaluated(outputs, corloc=0.30)
        register.run(params, outputs)
    return champion(client)


def test_the_same_model_registered_again_reuses_its_version(project):
    params, outputs, client = project
    ensure_champion(params, outputs, client)
    new_training_run(client, params, outputs)
    evaluated(outputs, corloc=0.97)
    first = register.run(params, outputs)
    number = first["version"]
    assert first["decision"]["promote"] and champion(client) == number
    promoted_at = client.get_model_version(NAME, number).tags["promoted_at"]

    # The stage reruns for the same model (new gate params, or new test data): no new version.
    evaluated(outputs, corloc=0.98)
    again = register.run(params, outputs)
    assert again["version"] == number and champion(client) == number
    assert again["decision"]["reasons"] == [
        f"v{number} is already the champion (the same model, registered before)"
    ]
    tags = client.get_model_version(NAME, number).tags
    assert tags["metric.corloc"] == "0.98" and tags["promoted_at"] == promoted_at
    run_id = first["run_id"]
    found = client.search_model_versions(f"name='{NAME}' and run_id='{run_id}'")
    assert [str(v.version) for v in found] == [number]

    # Registered, but the answer was lost before the md5 tag: that version is reused too.
    new_training_run(client, params, outputs)
    evaluated(outputs, corloc=0.10)
    lost = register.run(params, outputs)["version"]
    client.delete_model_version_tag(NAME, lost, registry.MODEL_MD5_TAG)
    assert register.run(params, outputs)["version"] == lost
    assert client.get_model_version(NAME, lost).tags[registry.MODEL_MD5_TAG]
    assert champion(client) == number


def test_a_failure_while_moving_the_alias_keeps_the_old_champion(project, monkeypatch):
    params, outputs, client = project
    before = ensure_champion(params, outputs, client)
    real = type(client).set_registered_model_alias

    def flaky(self, name, alias, version):
        if alias == "champion":
            raise ConnectionError("tracking server went away")
        return real(self, name, alias, version)

    monkeypatch.setattr(type(client), "set_registered_model_alias", flaky)
    monkeypatch.setattr(tracking, "FIRST_DELAY", 0.01)
    evaluated(outputs, corloc=0.99)
    with pytest.raises(tracking.TrackingUnavailable, match="move the aliases"):
        register.run(params, outputs)  # retried, then a clear error
    monkeypatch.undo()
    assert champion(client) == before
    newest = client.get_model_version_by_alias(NAME, "challenger")
    assert newest.tags["gate.decision"] == "champion"  # decided, but never half-applied


def test_a_champion_scored_on_other_test_data_is_rescored(project, tmp_path):
    params, outputs, client = project
    ensure_champion(params, outputs, client)
    data = tmp_path / "data"
    rows = []
    for i, cls in enumerate(CLASSES * 2):
        write_image(data / "test" / cls / f"img{i}.jpg")
        rows.append((f"img{i}", 0.1, 0.9, 0.1, 0.9, cls, cls))
    columns = ["image_id", "x_min", "x_max", "y_min", "y_max", "class_name", "folder"]
    outputs.dedup_dir.mkdir(parents=True)
    pd.DataFrame(rows, columns=columns).to_csv(outputs.deduped("test"), index=False)
    params = params.model_copy(update={"data": params.data.model_copy(update={"root": data})})

    evaluated(outputs, corloc=0.95, fingerprint="new-test-set")
    record = register.run(params, outputs)
    reason = record["decision"]["reasons"][-1]
    assert "other test data; re-scored on the current split" in reason
    assert record["decision"]["promote"] and champion(client) == record["version"]


@pytest.mark.slow  # ~35 s on a busy 2-core machine: the server process imports TensorFlow
def test_mlflow_models_serve_answers_a_request(project, tmp_path):
    """docs/serving.md: `mlflow models serve` of @champion, one request on 127.0.0.1."""
    params, outputs, client = project
    ensure_champion(params, outputs, client)
    port = free_port()
    command = [
        str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    # The local env manager starts `uvicorn` from PATH: the virtualenv's bin must be on it.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/ping", process)
        pixels = np.full((1, TINY_MODEL.image_size, TINY_MODEL.image_size, 3), 128.0)
        predictions = invoke(port, {"inputs": pixels.tolist()})
        photo = base64.b64encode(write_image(tmp_path / "photo.jpg").read_bytes()).decode()
        (answer,) = invoke(port, {"dataframe_records": [{"image": photo}]})
    finally:
        stop(process)
        log.close()
    assert np.asarray(predictions["class"]).shape == (1, len(CLASSES))
    assert np.asarray(predictions["box"]).shape == (1, 4)
    assert answer["class_name"] in CLASSES and len(answer["box_pixels"]) == 4


def invoke(port: int, body: dict):
    """The predictions of one `POST /invocations` with a JSON body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def test_connecting_to_one_store_leaves_the_next_project_its_own(tmp_path, monkeypatch):
    """MLflow exports the URI it is pointed at; a second project in the same process (and
    its stage subprocesses) must still get its own store, not the first one's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the first project: here
    tracking.setup_experiment("first")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = tmp_path / "second"
    assert tracking.tracking_uri(second) == tracking.local_store_uri(second)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the user's own choice
    registry.connect(tracking.local_store_uri(tmp_path))
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
