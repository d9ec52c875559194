"""benchmarks/bench_draft_on_policy.py --quick end to end on tiny real models built from config: both
drafts, 2 seeds; the tokens-per-call column recomputed from each run's alpha by the closed form."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_trains_both_drafts_over_seeds(tmp_path, tiny_model_dirs, one_torch_thread):
    spec = importlib.util.spec_from_file_location(
        "bench_draft", ROOT / "benchmarks" / "bench_draft_on_policy.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    teacher, _ = tiny_model_dirs
    out = tmp_path / "d.json"
    argv = ["--quick", "--teacher", str(teacher), "--draft-layers", "2", "--json", str(out)]
    results = bench.main([*argv, "--output-dir", str(tmp_path / "runs")])
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [
        (m.name, s) for s in (0, 1) for m in bench.METHODS
    ]
    for r in results["runs"]:
        a = r["alpha_own"]
        assert 0 < a < 1 and r["own_tokens"] > 0
        assert r["tokens_per_call"] == pytest.approx(sum(a**i for i in range(bench.GAMMA + 1)))
    on = results["summary"][bench.METHODS[1].name]["alpha_own"]
    assert on["n"] == 2 and on["verdict"] in {"better", "worse", "tie"}
    assert out.is_file()
