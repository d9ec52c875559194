"""A small soak of `lmdistill serve` (benchmarks/soak_serve.py: 24 requests from 8 clients, twice): every
answer equals the same request alone, nobody starves, the server's memory stays flat, and abandoned
requests are counted. About a minute on a shared 2-core machine (server start-up included)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "soak_serve.py"


@pytest.mark.slow
def test_small_soak_against_a_real_server():
    spec = importlib.util.spec_from_file_location("soak_serve", SCRIPT)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    out = soak.run(24, 8, model=None, abandon=0.15, max_batch=8, threads=1, seed=3, rounds=2)
    assert out["errors"] == [] and out["mismatches"] == []
    assert out["checks"] == dict.fromkeys(out["checks"], True), out["checks"]
    assert out["abandoned_sent"] >= 1 and out["server_stats"]["abandoned"] >= 1
