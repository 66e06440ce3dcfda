"""Scheduled retraining: bring in new data, rerun what changed, promote only a better model.

The ``retrain`` flow, step by step (each a Prefect task with a timeout; retries only where a
retry can help):

1. refresh the data, by ``source``:
   - ``inbox``: a local folder in the snacks layout (``annotations-<split>.csv`` plus the
     images under ``<split>/<folder>/<image_id>.jpg``) is merged into ``data/`` and
     ``dvc add data`` pins the result; the validate stage then checks the new rows like
     any others. A merged inbox is moved to ``.snackloc/inbox-done/<time>/``.
   - ``pull``: ``dvc pull`` (retried: remotes fail transiently);
   - ``none``: only check.
2. decide whether anything changed: ``dvc status --json`` is non-empty, or the data hash in
   ``data.dvc`` differs from the ``data_version`` tag of both the champion and the latest
   registered version (the challenger: data it was trained on has been judged already);
3. nothing changed: finish at once with a "no change" markdown artifact;
4. else every stage in order, each a task running ``dvc repro --single-item <stage>`` in a
   subprocess (the same DVC cache and dvc.lock as a user's ``dvc repro``), then read
   the gate's decision from ``outputs/register/record.json`` and publish a summary
   artifact: data change, metrics vs the champion, decision, MLflow run;
5. optionally (``commit=True``, off by default) ``git commit`` dvc.lock and data.dvc after a
   promotion, so the repository records what produced the champion.

Only one retraining runs per project at a time: the flow holds ``.snackloc/retrain.lock``
(pipeline/ops/runlock.py); a second trigger finishes at once with status ``busy``. (The
stages under ``dvc repro`` take their own ``.snackloc/run.lock``, and DVC locks the repo.)

    python -m flows.retrain --help
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runner import Runner
from prefect.states import Completed, State

from pipeline.core.errors import UserError
from pipeline.core.paths import OUTPUTS_ROOT, Outputs
from pipeline.data.inbox import inbox_has_data, merge_inbox
from pipeline.integrations.registry import CHALLENGER, CHAMPION, METRIC_PREFIX, tag_numbers
from pipeline.ops.runlock import RunLocked, run_lock
from pipeline.stages import STAGES

SOURCES = ("inbox", "pull", "none")
LOCK_NAME = Path(".snackloc") / "retrain.lock"
DONE_DIR = Path(".snackloc") / "inbox-done"
ARTIFACT_KEY = "snackloc-retrain"


def _env() -> dict[str, str]:
    """The environment for DVC: this interpreter's scripts (snackloc, dvc) first on PATH."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run a command; raise RuntimeError with its output tail if it fails."""
    done = subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        tail = (done.stdout[-2000:] + "\n" + done.stderr[-4000:]).strip()
        raise RuntimeError(f"`{' '.join(args)}` failed ({done.returncode}):\n{tail}")
    return done


# ---------------------------------------------------------------- tasks


@task(cache_policy=NO_CACHE, timeout_seconds=1800)
def refresh_data(project: str, source: str, inbox: str | None) -> dict[str, Any]:
    """Bring in new data by ``source``; return what was done."""
    logger = get_run_logger()
    root = Path(project)
    if source == "none":
        logger.info("data source 'none': only checking for changes")
        return {"source": source, "merged": False}
    if source == "pull":
        _run(["dvc", "pull", "-q"], root, timeout=1700)
        logger.info("dvc pull done")
        return {"source": source, "merged": False}
    folder = Path(inbox) if inbox else root / "inbox"
    if not folder.is_absolute():
        folder = root / folder
    if not inbox_has_data(folder):
        logger.info("inbox %s holds no annotation CSVs: nothing to merge", folder)
        return {"source": source, "merged": False, "inbox": str(folder)}
    counts = merge_inbox(folder, root / "data")
    _run(["dvc", "add", "-q", "data"], root, timeout=1700)
    done = root / DONE_DIR / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    done.mkdir(parents=True)
    for entry in list(folder.iterdir()):
        shutil.move(str(entry), done / entry.name)
    logger.info(
        "merged inbox %s: %s rows, %d images, %d conflicts kept as they were (moved to %s)",
        folder,
        counts["rows"],
        counts["images"],
        len(counts["conflicts"]),
        done,
    )
    return {"source": source, "merged": True, "inbox": str(folder), "done": str(done), **counts}


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def registry_state(project: str) -> dict[str, Any]:
    """The champion's and challenger's version, data version and metrics (None if none)."""
    from pipeline.core.config import load_params
    from pipeline.integrations import registry, tracking

    root = Path(project)
    name = load_params(root / "params.yaml").register_.model_name
    aliases = (CHAMPION, CHALLENGER)
    if not tracking.store_exists(root):
        return {"model_name": name, **dict.fromkeys(aliases)}
    uri = tracking.tracking_uri(root)
    found = tracking.retrying(
        "read the registered versions", lambda: registry.alias_versions(uri, name, aliases)
    )
    return {"model_name": name, **found}


@task(cache_policy=NO_CACHE, timeout_seconds=600)
def detect_change(project: str, registry_before: dict[str, Any]) -> dict[str, Any]:
    """Whether a retraining is due, and why."""
    from pipeline.integrations.tracking import data_version

    root = Path(project)
    status = json.loads(_run(["dvc", "status", "--json"], root, timeout=590).stdout or "{}")
    data = data_version(root / "data.dvc")
    judged = {
        alias: registry_before[alias]["data_version"]
        for alias in (CHAMPION, CHALLENGER)
        if registry_before.get(alias)
    }
    reasons = []
    if status:
        reasons.append(f"dvc status: stages out of date: {', '.join(sorted(status))}")
    if not judged:
        reasons.append("no model registered yet")
    elif data not in judged.values():
        reasons.append(f"data {data} differs from the registered versions' {judged}")
    return {"changed": bool(reasons), "reasons": reasons, "data_version": data, "status": status}


@task(cache_policy=NO_CACHE, timeout_seconds=6 * 3600, task_run_name="{stage}")
def repro_stage(project: str, stage: str) -> bool:
    """`dvc repro --single-item <stage>`: the stage reruns only if its inputs changed (DVC's
    cache and dvc.lock, as a user's `dvc repro`); True when it ran."""
    done = _run(["dvc", "repro", "--single-item", stage], Path(project), timeout=6 * 3600 - 60)
    ran = f"Running stage '{stage}'" in done.stdout
    get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date, not run")
    return ran


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def commit_lineage(project: str, message: str) -> str | None:
    """Commit dvc.lock and data.dvc (only those); return the new commit or None."""
    root = Path(project)
    paths = [p for p in ("dvc.lock", "data.dvc") if (root / p).exists()]
    _run(["git", "add", "--", *paths], root, timeout=60)
    staged = subprocess.run(
        ["git", "diff", "--cached", "--quiet", "--", *paths], cwd=root, timeout=60
    )
    if staged.returncode == 0:
        return None
    _run(["git", "commit", "-q", "-m", message, "--", *paths], root, timeout=60)
    return _run(["git", "rev-parse", "HEAD"], root, timeout=30).stdout.strip()


# ---------------------------------------------------------------- reports


def metric_cell(value: Any) -> str:
    """A metric for the summary table: counts (images) as integers, rates to 4 places."""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.4f}"
    return "—" if value is None else str(value)


def version_label(version: Any) -> str:
    """A registered version as "v3", or "none"."""
    return f"v{version}" if version else "none"


def no_change_markdown(change: dict[str, Any], before: dict[str, Any], refresh: dict) -> str:
    champion = before.get(CHAMPION) or {}
    return "\n".join(
        [
            "# snackloc retrain: no change",
            "",
            f"- data source: `{refresh['source']}`",
            f"- data version: `{change['data_version']}`",
            f"- champion: {version_label(champion.get('version'))} "
            f"(data `{champion.get('data_version', '—')}`)",
            "- `dvc status`: up to date",
            "",
            "Nothing to retrain.",
        ]
    )


def summary_markdown(
    change: dict, refresh: dict, before: dict, record: dict, commit: str | None
) -> str:
    decision = record.get("decision", {})
    metric = decision.get("metric")
    champion = before.get(CHAMPION) or {}
    old, new = (
        champion.get("metrics", {}),
        tag_numbers(record.get("tags", {}), METRIC_PREFIX),
    )
    promoted = record.get("champion_after") == record.get("version")
    lines = [
        f"# snackloc retrain: v{record.get('version')} "
        + ("promoted to @champion" if promoted else "kept as @challenger"),
        "",
        "## Data",
        f"- source: `{refresh['source']}`"
        + (
            f", merged rows {refresh.get('rows')}, {refresh.get('images')} images"
            if refresh.get("merged")
            else ""
        ),
        f"- data version: `{change['data_version']}`",
        *[f"- {reason}" for reason in change["reasons"]],
        "",
        f"## Metrics (gate metric: `{metric}`)",
        "",
        f"| metric | candidate {version_label(record.get('version'))} "
        f"| champion {version_label(champion.get('version'))} |",
        "|---|---|---|",
        *[
            f"| {k} | {metric_cell(v)} | {metric_cell(old.get(k))} |"
            for k, v in sorted(new.items())
        ],
        "",
        "## Decision",
        f"- @champion before: {version_label(record.get('champion_before'))}, "
        f"after: {version_label(record.get('champion_after'))}",
        *[f"- {reason}" for reason in record.get("reasons", [])],
        "",
        f"MLflow run `{record.get('run_id')}` in `{record.get('tracking_uri')}`; "
        f"model `{record.get('model_uri')}`.",
    ]
    if commit:
        lines.append(f"\nCommitted dvc.lock and data.dvc as `{commit}`.")
    return "\n".join(lines)


# ---------------------------------------------------------------- the flow


# The name of a retraining's final state, by outcome: `prefect deployment run --watch`, the
# flow run list and its page show it ("Flow run finished successfully in 'Promoted'.").
OUTCOMES = {"no-change": "No change", "promoted": "Promoted", "kept": "Kept", "busy": "Busy"}


def outcome_state(result: dict[str, Any]) -> State:
    """The flow run's final state: Completed, named by the outcome, with a one-line message;
    its result is ``result`` (what calling the flow returns)."""
    status = result["status"]
    if status == "busy":
        message = "another retraining is running: this trigger did nothing"
    elif status == "no-change":
        message = f"data {result['data_version']} already judged: nothing to retrain"
    else:
        after = "is @champion" if status == "promoted" else "stays @challenger"
        before, now = (version_label(result[key]) for key in ("champion_before", "champion_after"))
        message = f"v{result['version']} {after}; @champion {before} -> {now}"
    return Completed(name=OUTCOMES[status], message=message, data=result)


@flow(name="snackloc-retrain", log_prints=True)
def retrain(
    project: str = ".",
    source: str = "none",
    inbox: str | None = None,
    commit: bool = False,
) -> State:
    """Retrain when the data changed; the gate decides whether the new model is champion.

    The run ends in a Completed state named by the outcome (``OUTCOMES``): "Busy" (another
    retraining holds the lock), "No change", "Promoted" or "Kept". Calling the flow returns
    its result, a dict whose ``status`` is ``busy``, ``no-change``, ``promoted`` or ``kept``.
    """
    logger = get_run_logger()
    if source not in SOURCES:
        raise UserError(f"unknown data source {source!r}; expected one of {SOURCES}")
    root = Path(project).resolve()
    try:
        with run_lock("retrain", path=root / LOCK_NAME):
            return outcome_state(_retrain_locked(str(root), source, inbox, commit))
    except RunLocked:
        logger.warning("another retraining is running in %s: this trigger exits", root)
        create_markdown_artifact(
            f"# snackloc retrain: skipped\n\nAnother retraining holds `{root / LOCK_NAME}`.",
            key=ARTIFACT_KEY,
            description="snackloc retrain summary",
        )
        return outcome_state({"status": "busy"})


def _retrain_locked(project: str, source: str, inbox: str | None, commit: bool) -> dict:
    logger = get_run_logger()
    refresh = refresh_data.with_options(retries=2 if source == "pull" else 0)(
        project, source, inbox
    )
    before = registry_state(project)
    change = detect_change(project, before)
    if not change["changed"]:
        logger.info("no change: data %s already judged", change["data_version"])
        create_markdown_artifact(
            no_change_markdown(change, before, refresh),
            key=ARTIFACT_KEY,
            description="snackloc retrain summary",
        )
        return {"status": "no-change", "data_version": change["data_version"]}
    logger.info("retraining: %s", "; ".join(change["reasons"]))
    for stage in STAGES:  # in order, each a task: the flow run shows every stage
        repro_stage(project, stage.name)
    record = json.loads(Outputs(Path(project) / OUTPUTS_ROOT).registry_record.read_text())
    promoted = record.get("champion_after") == record.get("version")
    commit_id = None
    if commit and promoted:
        commit_id = commit_lineage(
            project, f"retrain: {record['model_name']} v{record['version']} is @champion"
        )
    create_markdown_artifact(
        summary_markdown(change, refresh, before, record, commit_id),
        key=ARTIFACT_KEY,
        description="snackloc retrain summary",
    )
    return {
        "status": "promoted" if promoted else "kept",
        "version": record.get("version"),
        "champion_before": record.get("champion_before"),
        "champion_after": record.get("champion_after"),
        "reasons": change["reasons"],
        "commit": commit_id,
    }


# ---------------------------------------------------------------- serving on a schedule


class _Runner(Runner):
    """Prefect's runner, stopped by SIGTERM from its own loop.

    Prefect 3.8.8's SIGTERM handler calls the runner's async ``stop`` from the signal
    handler without awaiting it, so the flow runs are never stopped. Here the handler only
    sets ``stop_requested`` (the same event that ``children.defer_sigterm`` set before the
    runner installed its handler); ``serve`` sees it and awaits ``astop``: the runner
    cancels its flow runs (their processes end), then stops polling and returns.
    """

    def __init__(self, *args: Any, stop_requested: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_requested = stop_requested

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        self.stop_requested.set()


async def _run_until_stopped(runner: _Runner, poll: float = 0.2) -> None:
    """Run ``runner`` until it returns or a stop is requested, then stop it."""
    if runner.stop_requested.is_set():  # before anything was served
        return
    started = asyncio.ensure_future(runner.start())
    while not started.done():
        if runner.stop_requested.is_set() and runner.started:
            runner._logger.info("SIGTERM received: stopping the flow runs, then the runner")
            await runner.astop()
            break
        await asyncio.wait({started}, timeout=poll)
    await started


class _QueuedOnce(logging.Filter):
    """The runner logs "N scheduled runs skipped (at capacity)" at every poll (~10 s) while a
    trigger waits for the running retraining: let it through when N changes, or once in
    ``every`` seconds."""

    def __init__(self, every: float = 600.0) -> None:
        super().__init__()
        self.every, self.last, self.when = every, None, -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        if "skipped (at capacity)" not in str(record.msg):
            return True
        now = time.monotonic()
        if record.args == self.last and now - self.when < self.every:
            return False
        self.last, self.when = record.args, now
        return True


def serve(
    name: str, cron: str, parameters: dict[str, Any], stop_requested: threading.Event
) -> None:
    """Serve ``retrain`` as deployment ``name`` on a ``cron`` schedule until
    ``stop_requested`` is set (SIGTERM through ``children.defer_sigterm``) or Ctrl+C; the
    schedule stays active on the server.

    One retraining at a time in this runner: a trigger that arrives while one runs waits
    for it (``limit=1``, quietly). A deployment concurrency limit would do the same on the
    server, but then the runner logs every poll of the queued run as an aborted submission.
    """
    logging.getLogger("prefect.runner").addFilter(_QueuedOnce())
    runner = _Runner(name=name, pause_on_shutdown=False, limit=1, stop_requested=stop_requested)
    runner.add_flow(retrain, name=name, cron=cron, parameters=parameters)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_until_stopped(runner))


if __name__ == "__main__":
    import argparse

    from pipeline.core import env

    parser = argparse.ArgumentParser(description="Run one retraining now.")
    parser.add_argument("--project", default=".")
    parser.add_argument("--source", choices=SOURCES, default="none")
    parser.add_argument("--inbox", default=None)
    parser.add_argument("--commit", action="store_true")
    args = parser.parse_args()
    env.configure(Path(args.project))
    print(json.dumps(retrain(args.project, args.source, args.inbox, args.commit), indent=1))
