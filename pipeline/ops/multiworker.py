"""Start a multi-worker training on this machine: N worker processes, one model.

    python -m pipeline.ops.multiworker --workers 2 [-p params.yaml] [--outputs outputs]

Each worker is a process on 127.0.0.1 with its own free port and its own ``TF_CONFIG``
(the cluster of all N, and its index); it runs the plain train stage (``train.run``) with
``train.strategy: multi_worker``. Worker 0 is the chief: it alone writes the outputs and the
MLflow run; its output goes to this terminal, the others' to log files. When a worker fails,
the others are stopped (they would wait for it in the next all-reduce).

This is for testing the multi-worker path, and for trying it out. On one machine with several
GPUs, MirroredStrategy (``train.strategy: mirrored``) is the better choice: one process, no
gRPC between workers. On a cluster, every node runs ``snackloc train`` with its own
``TF_CONFIG`` (docs/scaling.md, "Multi-worker training").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.paths import OUTPUTS_ROOT
from pipeline.ops import children
from pipeline.ops.servers import log_tail

HOST = "127.0.0.1"


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports that were free a moment ago (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_configs(ports: Sequence[int], host: str = HOST) -> list[str]:
    """The ``TF_CONFIG`` of each worker of a cluster on ``host``: the same cluster, its index."""
    cluster = {"worker": [f"{host}:{port}" for port in ports]}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        for index in range(len(ports))
    ]


def launch(
    command: Sequence[str],
    workers: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> list[int]:
    """Run ``command`` as ``workers`` processes of one cluster; return their exit codes.

    Worker 0 (the chief) writes to this process's stdout/stderr, worker i to
    ``log_dir/worker-i.log``. The first failure (or the timeout) stops the other workers.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ if env is None else env)
    logs = []
    # Each worker in a process group of its own: the first failure, the timeout, Ctrl+C or
    # SIGTERM stops every worker (pipeline/ops/children.py).
    with children.stopped_at_exit([]) as processes:
        try:
            for index, config in enumerate(tf_configs(free_ports(workers))):
                output = None
                if index:
                    output = (log_dir / f"worker-{index}.log").open("w")
                    logs.append(output)
                processes.append(
                    children.spawn(
                        command,
                        env={**base, "TF_CONFIG": config},
                        cwd=cwd,
                        stdout=output,
                        stderr=subprocess.STDOUT if output else None,
                    )
                )
            deadline = None if timeout is None else time.monotonic() + timeout
            while any(p.poll() is None for p in processes):
                failed = any(p.returncode not in (None, 0) for p in processes)
                if failed or (deadline is not None and time.monotonic() > deadline):
                    break
                time.sleep(0.5)
        finally:
            for output in logs:
                output.close()
    return [p.returncode for p in processes]


def run_worker(params_file: Path, outputs: Path) -> None:
    """One worker: the plain train stage, with this process's TF_CONFIG."""
    from pipeline.core.config import load_params
    from pipeline.core.paths import Outputs
    from pipeline.stages import train

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)  # the stage's summaries
    metrics = train.run(load_params(params_file), Outputs(outputs), progress=False)
    print(f"worker done: {json.dumps(metrics)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (>= 1)")
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--outputs", type=Path, default=OUTPUTS_ROOT)
    parser.add_argument("--log-dir", type=Path, help="worker logs [a new temporary folder]")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from pipeline.core import env

    env.configure()
    children.stop_on_sigterm()  # SIGTERM stops the workers too, as Ctrl+C does
    try:
        if args.worker:
            run_worker(args.params, args.outputs)
            return 0
        return start(args.workers, args.params, args.outputs, args.log_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C or SIGTERM: the workers are stopped already
        return 130


def start(workers: int, params_file: Path, outputs: Path, log_dir: Path | None) -> int:
    """Check the params, take the workspace lock, run the workers; 0 when all succeeded."""
    from pipeline.core.config import load_params
    from pipeline.ops.runlock import run_lock

    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    strategy = load_params(params_file).train.strategy
    if strategy != "multi_worker":
        raise UserError(
            f"{params_file}: train.strategy is {strategy!r}, not multi_worker",
            hint="set `train.strategy: multi_worker` (or use a params file that does)",
        )
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="snackloc-workers-"))
    command = [sys.executable, "-m", "pipeline.ops.multiworker", "--worker"]
    command += ["--params", str(params_file), "--outputs", str(outputs)]
    print(f"starting {workers} workers on {HOST}; workers 1.. log to {log_dir}", flush=True)
    with run_lock("train"):
        codes = launch(command, workers, log_dir)
    if all(code == 0 for code in codes):
        return 0
    for index, code in enumerate(codes):
        if index and code:
            log = log_dir / f"worker-{index}.log"
            end = log_tail(log, lines=30)
            print(f"worker {index} exited with {code}; end of {log}:\n{end}", file=sys.stderr)
    # The worker that failed by itself, not one stopped by a signal (negative code).
    return next((code for code in codes if code > 0), 1)


if __name__ == "__main__":
    sys.exit(main())
