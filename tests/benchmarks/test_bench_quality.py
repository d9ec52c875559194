"""benchmarks/bench_quality.py --quick end to end on tiny real models built from config (seconds)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_runs_every_method_and_writes_results(tmp_path, tiny_model_dirs, monkeypatch, one_torch_thread):
    pytest.importorskip("chatterbot_corpus")
    monkeypatch.setenv("LMDISTILL_CACHE", str(tmp_path / "cache"))  # the tiny teacher's answers stay here
    teacher, _ = tiny_model_dirs
    bench = _bench()
    out_json, out_png = tmp_path / "quality.json", tmp_path / "quality.png"
    argv = ["--quick", "--teacher", str(teacher), "--student-layers", "2"]
    argv += ["--json", str(out_json), "--plot", str(out_png), "--output-dir", str(tmp_path / "runs")]
    bench.main(argv)

    results = json.loads(out_json.read_text())
    names = [m.name for m in bench.METHODS]
    assert [r["method"] for r in results["runs"]] == names * 2
    assert list(results["summary"]) == names
    for run in results["runs"]:
        for metric in bench.METRICS:
            assert math.isfinite(run[metric]), (run["method"], metric)
        assert 0.0 <= run["top1"] <= 1.0 and run["kl"] >= 0.0
    assert results["summary"][bench.BASELINE]["kl"]["verdict"] == "baseline"
    for row in list(results["summary"].values())[1:]:
        assert {cell["verdict"] for cell in row.values()} <= {"better", "worse", "tie"}
        assert all(cell["n"] == 2 for cell in row.values())
    assert results["settings"]["train_examples"] == 3 * 2  # --quick: 3 steps of batch 2
    assert results["wall_seconds"] > 0 and "load_average_start" in results
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| CE alone |" in results["table"]


def test_methods_must_include_the_baseline(capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--methods", "forward KL"])
    assert e.value.code == 2
    assert "CE alone" in capsys.readouterr().err
