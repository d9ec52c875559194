"""benchmarks/gpu/bench_gpu.py's `sampler` group where no vLLM imports: recorded as skipped with the reason,
the results file written, nothing else run (seconds). The group's full path (vLLM's CPU build from
.venv-vllm, about a minute) is the manual smoke in benchmarks/gpu/README.md; on a GPU it has not run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sampler_group_without_vllm_is_skipped_cleanly(tmp_path):
    out = tmp_path / "sampler.json"
    env = {
        **os.environ,
        "LMDISTILL_VLLM_PYTHON": "/bin/false",  # a "python" that cannot import vllm
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, str(ROOT / "benchmarks/gpu/bench_gpu.py"), "--smoke", "--only", "sampler"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert list(result["cases"]) == ["sampler_setup"]
    setup = result["cases"]["sampler_setup"]
    assert setup["status"] == "skipped" and setup["reason"].startswith("no vLLM on this machine"), setup
    assert result["groups"]["sampler"].startswith("ok")
    assert "skipped: no vLLM on this machine" in done.stdout
