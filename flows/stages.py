"""Prefect flows over the pipeline stages.

Each stage is a Prefect task: a thin wrapper that loads params.yaml and calls the stage's
plain ``run`` function in ``pipeline/``. ``stage_flow`` runs one stage (what `dvc repro`
starts, through `snackloc <stage>`); ``pipeline_flow`` runs them all in order.

    python -m flows.stages            # every stage in one flow run (no DVC caching)
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FailedRun
from prefect.states import Failed

from pipeline.core.config import load_params
from pipeline.core.errors import UserError
from pipeline.core.paths import Outputs

# Full disk, quota or file-size limit, read-only or forbidden folder: the user's to fix.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
STAGES: tuple[str, ...] = ("validate", "dedup", "train", "evaluate", "register")
# Stages that talk to a tracking server retry: a blip of the network should not fail a run.
RETRIES = {"register": 2}


def _retry_on_exceptions(task, task_run, state) -> bool:
    """Retry crashes and service errors, never a user mistake (returned as a Failed state).

    A returned Failed state reads back as FailedRun, a raised exception as itself.
    """
    try:
        outcome = state.result(raise_on_failure=False)
    except Exception:
        return True
    return isinstance(outcome, Exception) and not isinstance(outcome, FailedRun)


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs failed states with exc_info even when there is no exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


logging.getLogger("prefect.task_runs").addFilter(_NoEmptyTraceback())
# Stages log their summaries at INFO on "pipeline.*". Prefect gives that logger its handlers
# (PREFECT_LOGGING_EXTRA_LOGGERS) but not a level, so it would inherit the root's WARNING.
logging.getLogger("pipeline").setLevel(logging.INFO)


def _with_retries(stage: str):
    return run_stage.with_options(
        retries=RETRIES.get(stage, 0),
        retry_delay_seconds=5,
        retry_condition_fn=_retry_on_exceptions,
    )


def _summary_markdown(stage: str, result: dict[str, Any]) -> str:
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
    nested = {k: v for k, v in result.items() if isinstance(v, dict)}
    lines = [f"# snackloc {stage}", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in numbers.items()]
    for key, value in nested.items():
        lines += ["", f"**{key}**", "", "```json", json.dumps(value, indent=1)[:4000], "```"]
    return "\n".join(lines)


@task(cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(
    stage: str,
    params_file: str = "params.yaml",
    outputs_root: str = "outputs",
    progress: bool = True,
) -> dict[str, Any]:
    """Run one stage's plain function and publish its summary as a Prefect artifact."""
    logger = get_run_logger()
    params = load_params(Path(params_file))
    module = importlib.import_module(f"pipeline.stages.{stage}")
    try:
        result = module.run(params, Outputs(Path(outputs_root)), progress=progress)
    except UserError as exc:
        # A user mistake: say it once, clearly, without a traceback.
        logger.error("%s failed: %s", stage, exc)
        return Failed(message=str(exc))
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise  # network and other errors: Prefect retries where configured
        message = f"cannot write {exc.filename or 'an output'}: {exc.strerror}"
        logger.error("%s failed: %s (earlier outputs are intact)", stage, message)
        return Failed(message=message)
    create_markdown_artifact(
        # A stage may write its own summary (evaluate does); else a generic one.
        result.get("markdown") or _summary_markdown(stage, result),
        key=f"snackloc-{stage}",
        description=f"snackloc {stage} summary",
    )
    return result


@flow(name="snackloc-stage", flow_run_name="{stage}", log_prints=True)
def stage_flow(
    stage: str,
    params_file: str = "params.yaml",
    outputs_root: str = "outputs",
    progress: bool = True,
):
    """One pipeline stage as a flow run (started by `snackloc <stage>` and `dvc repro`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    state = _with_retries(stage)(stage, params_file, outputs_root, progress, return_state=True)
    # Surface the stage's own message rather than Prefect's "1/1 states failed".
    return Failed(message=state.message) if state.is_failed() else state


@flow(name="snackloc-pipeline", log_prints=True)
def pipeline_flow(
    params_file: str = "params.yaml", outputs_root: str = "outputs", progress: bool = True
):
    """Every stage in order; stops at the first failure."""
    for stage in STAGES:
        state = _with_retries(stage)(stage, params_file, outputs_root, progress, return_state=True)
        if state.is_failed():
            return Failed(message=f"{stage}: {state.message}")
    return state


if __name__ == "__main__":
    from pipeline.core import env

    env.configure()
    pipeline_flow()
