"""The review round trip through a real Label Studio server on 127.0.0.1.

Opt-in (marker ``scale``, `make test-scale`). A throwaway venv gets ``label-studio`` (PINS)
with uv; the server starts on a free port of 127.0.0.1 with its error reports, analytics and
version check off. Through its HTTP API, as a person would in its UI: a project is created
with the exported label_config.xml, a local files storage is added for the split (the
export's default image URLs need it), tasks.json is imported, the model's suggestion shows
as a prediction, the suspect's annotation is corrected to it, and the project's JSON export
goes back through `snackloc review apply` and `snackloc data import --format labelstudio`.

Skipped, with the reason, when label-studio cannot be installed (offline).
SNACKLOC_LABEL_STUDIO_VENV=DIR uses a venv that already has it (no install).

Measured on 2 cores shared with other work (noisy, six runs): the install 15-21 s from a
warm uv cache (33 s when it downloaded everything), the server's start 35-58 s (it migrates
a new SQLite database), the round trip 13-25 s; the whole test 82-87 s with the install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers_data import ann, make_dataset
from helpers_env import BIN, ROOT, free_port, stop, wait_healthy
from helpers_venv import throwaway_venv

pytestmark = [pytest.mark.scale, pytest.mark.timeout(900)]

# label-studio 1.23.2 asks for sentry-sdk>=2.16 but passes an option sentry-sdk 3 removed.
PINS = ("label-studio==1.23.2", "sentry-sdk<3")
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the legacy API token of the test user
QUIET = {  # nothing leaves the machine: no error reports, analytics or version check
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "COLLECT_ANALYTICS": "false",
    "LATEST_VERSION_CHECK": "false",
    "CONVERTER_DOWNLOAD_RESOURCES": "false",
    "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory, request):
    """(URL, a project whose data folder it serves files from, its venv): a fresh server,
    stopped afterwards."""
    home = tmp_path_factory.mktemp("label-studio")
    started = time.monotonic()
    venv = throwaway_venv(home / "venv", PINS, "SNACKLOC_LABEL_STUDIO_VENV")
    TIMINGS["install"] = round(time.monotonic() - started, 1)
    files, port = home / "project" / "data", free_port()
    files.mkdir(parents=True)
    env = {
        **os.environ,
        **QUIET,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files),
    }
    args = ["start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    args += ["--data-dir", str(home / "data"), "--username", "reviewer@example.com"]
    args += ["--password", "review-pass", "--user-token", TOKEN, "--enable-legacy-api-token"]
    log = (home / "server.log").open("w")
    started = time.monotonic()
    process = subprocess.Popen(
        [str(venv / "bin" / "label-studio"), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(f"{url}/health", process, timeout=300)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{(home / 'server.log').read_text()[-3000:]}") from None
        TIMINGS["start"] = round(time.monotonic() - started, 1)
        yield url, files.parent, venv
    finally:
        stop(process, timeout=30)
        log.close()
        shutil.rmtree(home / "venv", ignore_errors=True)  # about 800 MB; a reused one is kept
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():  # shown even when the test passed
            print(f"\nLabel Studio timings (s): {json.dumps(TIMINGS)}")


def call(url: str, method: str, path: str, body: Any = None) -> Any:
    """One request to Label Studio's API as the test user; its JSON answer."""
    request = urllib.request.Request(
        url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def write_reviewed_project(root: Path) -> Path:
    """A dataset (val: a cake row boxing an apple, in a folder whose name has a space, and a
    right banana row) and the outputs
    `snackloc review export` reads: the dedup CSV, classes.json and review.csv."""
    rows = [
        ann("a1", "cake", "green apple", ("0.100000", "0.500000", "0.200000", "0.600000")),
        ann("b1", "banana", "banana", ("0.200000", "0.800000", "0.100000", "0.900000")),
    ]
    make_dataset(root / "data", {"val": rows})
    dedup = root / "outputs" / "dedup"
    dedup.mkdir(parents=True)
    frame = pd.read_csv(root / "data" / "annotations-val.csv", dtype=str).assign(row=[0, 1])
    for split in ("train", "val", "test"):
        frame.iloc[: 2 if split == "val" else 0].to_csv(
            dedup / f"annotations-{split}.csv", index=False
        )
    (root / "outputs" / "validate").mkdir()
    classes = {"classes": ["apple", "banana", "cake"]}
    (root / "outputs" / "validate" / "classes.json").write_text(json.dumps(classes))
    suggest = {"suggest_x_min": 0.15, "suggest_x_max": 0.55, "suggest_y_min": 0.25}
    suspects = [
        {"split": "val", "folder": "green apple", "image_id": "a1", "row": 0, "kind": "class",
         "score": 0.02, "suggest_class": "apple", **suggest, "suggest_y_max": 0.65},
        {"split": "val", "folder": "banana", "image_id": "b1", "row": 1, "kind": "box",
         "score": 1.04, "suggest_class": "banana", **suggest, "suggest_y_max": 0.95},
    ]  # fmt: skip
    (root / "outputs" / "review").mkdir()
    pd.DataFrame(suspects).to_csv(root / "outputs" / "review" / "review.csv", index=False)
    (root / "params.yaml").write_text(f"data:\n  root: {root / 'data'}\n")
    return root


def snackloc(*args: str, cwd: Path) -> str:
    """Run the CLI; its output (fails the test on a non-zero exit)."""
    done = subprocess.run([str(BIN / "snackloc"), *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def sdk_errors_there(venv: Path, config: Path, tasks: Path) -> list[str]:
    """helpers_labelstudio.sdk_errors run by the SDK that the server ships (its venv's)."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
        "from helpers_labelstudio import sdk_errors; "
        f"print(json.dumps(sdk_errors(open({str(config)!r}).read(), "
        f"json.load(open({str(tasks)!r})))))"
    )
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout)


def test_a_correction_made_in_label_studio_arrives_in_the_dataset(label_studio):
    url, root, venv = label_studio
    started = time.monotonic()
    write_reviewed_project(root)
    data = root / "data"
    snackloc("review", "export", "--out", "ls", "--top", "5", cwd=root)
    tasks = json.loads((root / "ls" / "tasks.json").read_text())
    config = (root / "ls" / "label_config.xml").read_text()
    # Label Studio's import checks little (a prediction of a class the config lacks passes):
    # its own SDK's LabelInterface, the version the server ships, checks every region.
    assert (
        sdk_errors_there(venv, root / "ls" / "label_config.xml", root / "ls" / "tasks.json") == []
    )

    project = call(url, "POST", "/api/projects", {"title": "review", "label_config": config})
    pid = project["id"]
    storage = {"project": pid, "path": str(data / "val"), "title": "val", "use_blob_urls": True}
    call(url, "POST", "/api/storages/localfiles", storage)
    imported = call(url, "POST", f"/api/projects/{pid}/import", tasks)
    assert (imported["task_count"], imported["prediction_count"]) == (2, 2), imported
    listed = call(url, "GET", f"/api/tasks?project={pid}&fields=all")["tasks"]
    suspect = next(t for t in listed if t["data"]["snackloc_image"] == "val/green apple/a1.jpg")
    (prediction,) = suspect["predictions"]
    assert prediction["model_version"] == "snackloc-review" and prediction["score"] == 0.02
    suggested = prediction["result"][0]
    assert suggested["value"]["rectanglelabels"] == ["apple"]
    assert suspect["data"]["image"] == "/data/local-files/?d=val/green%20apple/a1.jpg"
    image = urllib.request.Request(url + suspect["data"]["image"])
    image.add_header("Authorization", f"Token {TOKEN}")
    with urllib.request.urlopen(image, timeout=30) as response:  # the image shows
        assert response.read() == (data / "val" / "green apple" / "a1.jpg").read_bytes()

    # The reviewer takes the suggestion for the cake row and submits (Update in the UI).
    (annotation,) = suspect["annotations"]
    corrected = [{**suggested, "id": annotation["result"][0]["id"]}]
    call(url, "PATCH", f"/api/annotations/{annotation['id']}", {"result": corrected})
    export = call(url, "GET", f"/api/projects/{pid}/export?exportType=JSON")
    (data / "ls-export.json").write_text(json.dumps(export))  # images beside it, for import

    before = (data / "annotations-val.csv").read_text().splitlines(keepends=True)
    said = snackloc("review", "apply", "data/ls-export.json", "--data", "data", cwd=root)
    assert said.startswith("2 images corrected in data (2 rows replaced by 2)"), said
    fixed = "a1,0.150000,0.550000,0.250000,0.650000,apple,green apple\n"
    assert (data / "annotations-val.csv").read_text() == "".join([before[0], fixed, before[2]])

    snackloc("data", "import", "data/ls-export.json", "-f", "labelstudio", "--out", "new", cwd=root)
    frames = [pd.read_csv(root / "new" / f"annotations-{s}.csv") for s in ("train", "val", "test")]
    boxes = pd.concat(frames)[["class_name", "x_min", "x_max", "y_min", "y_max"]].round(6)
    assert sorted(map(tuple, boxes.to_numpy().tolist())) == [
        ("apple", 0.15, 0.55, 0.25, 0.65),
        ("banana", 0.2, 0.8, 0.1, 0.9),
    ]
    TIMINGS["round trip"] = round(time.monotonic() - started, 1)
