"""`snackloc pipeline`: every stage as a Prefect task of one flow run, in pipeline order.

Prefect wraps the stages from the outside: each task calls the same plain function that
`dvc repro` runs through `snackloc <stage>` (``pipeline.stages.run_stage``), so a flow run
shows every stage with its state, logs and summary artifact, and the stage code knows
nothing of Prefect. There is no DVC caching here: every stage runs. The scheduled retraining
(flows/retrain.py) goes through `dvc repro` instead, one task per stage as well.

    python -m flows.stages [--params params.yaml] [--outputs outputs]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging.handlers import PrefectConsoleHandler
from prefect.states import Failed

from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.core.paths import OUTPUTS_ROOT, Outputs
from pipeline.ops import children
from pipeline.stages import STAGES, run_stage


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs failed states with exc_info even when there is no exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


class _ReportedOnce(logging.Filter):
    """A stage's user error is printed once, as the command's `error:` line. Prefect repeats
    its message in console lines of its own (the failed task's state, twice, and the flow
    run's final state): those stay in the run's logs on the server, off the terminal."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(message in text for message in self.messages)


REPORTED_ONCE = _ReportedOnce()


def report_once(message: str) -> None:
    """Keep Prefect's console lines from repeating ``message`` (its first line, as far as a
    state's repr shows it); the command that runs the flow prints it."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and REPORTED_ONCE not in handler.filters:
            handler.addFilter(REPORTED_ONCE)
    REPORTED_ONCE.messages.append(message.splitlines()[0][:60])


logging.getLogger("prefect.task_runs").addFilter(_NoEmptyTraceback())
# Stages log their summaries at INFO on "pipeline.*". Prefect gives that logger its handlers
# (PREFECT_LOGGING_EXTRA_LOGGERS) but not a level, so it would inherit the root's WARNING.
logging.getLogger("pipeline").setLevel(logging.INFO)


def summary_markdown(stage: str, result: dict[str, Any]) -> str:
    """A generic artifact for a stage that writes no summary of its own: its numbers."""
    numbers = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
    nested = {k: v for k, v in result.items() if isinstance(v, dict)}
    lines = [f"# snackloc {stage}", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in numbers.items()]
    for key, value in nested.items():
        lines += ["", f"**{key}**", "", "```json", json.dumps(value, indent=1)[:4000], "```"]
    return "\n".join(lines)


@task(cache_policy=NO_CACHE, task_run_name="{stage}")
def stage_task(
    stage: str, params: Params, outputs_root: str = str(OUTPUTS_ROOT), progress: bool = True
) -> dict[str, Any]:
    """One stage's plain function; its summary becomes a Prefect artifact.

    A user mistake (bad data, a missing input, a refused write) ends the task as Failed with
    the stage's own message and no traceback, printed once by `snackloc pipeline` (the
    run's logs on the server keep Prefect's lines about it); anything else is raised as it
    is.
    """
    try:
        result = run_stage(stage, params, Outputs(Path(outputs_root)), progress=progress)
    except UserError as exc:
        report_once(str(exc))
        return Failed(message=str(exc))
    create_markdown_artifact(
        result.get("markdown") or summary_markdown(stage, result),
        key=f"snackloc-{stage}",
        description=f"snackloc {stage} summary",
    )
    return result


@flow(name="snackloc-pipeline", log_prints=True)
def pipeline_flow(params: Params, outputs_root: str = str(OUTPUTS_ROOT), progress: bool = True):
    """Every stage in order, each a task; stops at the first failure, or at the next stage
    after a SIGTERM that a library swallowed (pipeline/ops/children.py)."""
    children.stop_on_sigterm()  # over Prefect's own handler, which keeps no record
    state = None
    for stage in STAGES:
        children.raise_if_terminated()
        state = stage_task(stage.name, params, outputs_root, progress, return_state=True)
        if state.is_failed():
            return Failed(message=f"{stage.name}: {state.message}")
    return state


if __name__ == "__main__":
    import argparse

    from pipeline.core import env
    from pipeline.core.config import load_params

    parser = argparse.ArgumentParser(description="Run every stage in one Prefect flow run.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--outputs", default=str(OUTPUTS_ROOT))
    args = parser.parse_args()
    env.configure()
    pipeline_flow(load_params(args.params), args.outputs)
