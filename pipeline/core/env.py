"""Process-wide defaults that keep every tool offline and its state inside the project.

Values already set in the environment win, so a team can point at real servers
(MLFLOW_TRACKING_URI, PREFECT_API_URL) without code edits.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pipeline",
    # The stages' loggers reach Prefect's API inside a flow run; outside one (a stage run
    # plainly in a process that also imported Prefect) they log locally, without a warning.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # The job-runner pool of `mlflow server/ui` slows its start and stop; nothing here uses it.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # MLflow retries a failing HTTP call 7 times with backoff (~4 min against a stopped
    # server); snackloc retries whole operations itself (pipeline/integrations/tracking.py),
    # so each call gets 2 quick retries and a 30 s read timeout.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")


def tensorflow_log_level() -> str:
    """TensorFlow's C++ log threshold: warnings hidden (2); on a host with no NVIDIA driver
    its errors too (3), since the only ones it prints there are about CUDA it cannot find
    ("failed call to cuInit"), and a real failure reaches Python as an exception anyway."""
    return "2" if NVIDIA_DRIVER.exists() else "3"


def configure(project_root: Path | None = None) -> None:
    """Set the offline defaults and keep Prefect's home inside the project."""
    root = (project_root or Path.cwd()).resolve()
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(root / ".prefect" / "results"))
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", tensorflow_log_level())


# What TensorFlow's C++ runtime prints to stderr while it loads, before any log setting
# applies (absl logging is not initialised yet): notices about CUDA, oneDNN and CPU features.
STARTUP_NOTICES = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^[IW]\d{4} [\d:. ]+\d+ (cudart_stub|cuda_\w+|port|cpu_feature_guard)\.cc:\d+\]"
)


@contextlib.contextmanager
def quiet_native_startup() -> Iterator[None]:
    """Hold back the start-up notices of native libraries loaded inside the block (the
    process's file descriptor 2, where C++ code writes); everything else it wrote to stderr
    is passed on, in order, when the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.writelines(line for line in lines if not STARTUP_NOTICES.search(line))
            sys.stderr.flush()
