"""Each fatal user error is one `error:` line, also when the stages run as Prefect tasks
(`snackloc pipeline`): Prefect's own console lines do not repeat it."""

from __future__ import annotations

import os

import yaml
from helpers_env import BIN
from helpers_project import sh, tiny_params


def test_a_failing_stage_under_prefect_prints_its_error_once(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    params = tiny_params()
    params["validate"]["max_bad_fraction"] = 0.0  # the synthetic defects are too many now
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("snackloc", "data", "synth", "--out", "data", "--quiet", cwd=tmp_path, env=env)
    done = sh("snackloc", "pipeline", "-q", cwd=tmp_path, env=env, check=False)
    assert done.returncode == 2, done.stderr
    output = done.stdout + done.stderr
    mentions = [line for line in output.splitlines() if "rows" in line and "are bad" in line]
    assert len(mentions) == 1, output
    assert mentions[0].startswith("error: pipeline failed: validate: validation failed:")
    assert "Traceback" not in output
