"""benchmarks/bench_quality.py --quick end to end on tiny real models built from config (seconds), the
on-policy rows included; --workers 2 gives the same rows as one process; a failing worker fails the run."""

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
    on_policy = [r for r in results["runs"] if r["method"].startswith("on-policy")]
    assert len(on_policy) == 2 * 2
    # seeds 0 and 1 draw 1 and 2 of their 3 steps on-policy (lmbda 0.5): the rows did sample
    assert [r["on_policy_steps"] for r in on_policy] == [1, 1, 2, 2]
    assert all(r["on_policy_steps"] is None for r in results["runs"] if r not in on_policy)
    # the student's samples are as long as the held-out answers (--quick: 16 tokens)
    assert {m["on_policy"].get("max_new_tokens") for m in results["settings"]["methods"]} == {None, 16}
    assert results["wall_seconds"] > 0 and "load_average_start" in results
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| CE alone |" in results["table"]


def test_methods_must_include_the_baseline(capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--methods", "forward KL"])
    assert e.value.code == 2
    assert "CE alone" in capsys.readouterr().err


def _quick(bench, tmp_path, teacher, name: str, *extra: str) -> dict:
    argv = ["--quick", "--teacher", str(teacher), "--student-layers", "2", "--methods", SOME, *extra]
    argv += ["--json", str(tmp_path / f"{name}.json"), "--plot", str(tmp_path / f"{name}.png")]
    argv += ["--output-dir", str(tmp_path / name)]
    bench.main(argv)
    return json.loads((tmp_path / f"{name}.json").read_text())


SOME = "CE alone,forward KL,on-policy forward KL (lmbda 0.5)"
TIMINGS = ("train_seconds", "eval_seconds")


def test_two_workers_give_the_rows_of_one(tmp_path, tiny_model_dirs, monkeypatch, one_torch_thread):
    pytest.importorskip("chatterbot_corpus")
    monkeypatch.setenv("LMDISTILL_CACHE", str(tmp_path / "cache"))
    teacher, _ = tiny_model_dirs
    bench = _bench()
    one = _quick(bench, tmp_path, teacher, "one")
    two = _quick(bench, tmp_path, teacher, "two", "--workers", "2")
    assert two["settings"]["workers"] == 2 and len(two["setup"]["per_worker"]) == 2
    strip = lambda runs: [{k: v for k, v in r.items() if k not in TIMINGS} for r in runs]  # noqa: E731
    assert [(r["method"], r["seed"]) for r in two["runs"]] == [(r["method"], r["seed"]) for r in one["runs"]]
    # CPU, one thread per process, the same seeds: the same numbers, not merely close ones
    assert strip(two["runs"]) == strip(one["runs"])
    assert two["summary"] == one["summary"] and two["teacher"] == one["teacher"]
    assert {k: v for k, v in two["settings"].items() if k != "workers"} == {
        k: v for k, v in one["settings"].items() if k != "workers"
    }


def test_a_failing_worker_fails_the_run_with_its_error(tmp_path):
    bench = _bench()
    argv = ["--quick", "--teacher", str(tmp_path / "no-such-model"), "--workers", "2"]
    argv += ["--json", str(tmp_path / "q.json"), "--plot", str(tmp_path / "q.png")]
    with pytest.raises(RuntimeError, match=r"worker \d of 2 failed \(exit [12]\)") as e:
        bench.main(argv)
    assert "no-such-model" in str(e.value)
    assert not (tmp_path / "q.json").exists()


def test_worker_jobs_deal_every_run_once_and_spread_each_method():
    bench = _bench()
    shares = bench.worker_jobs(seeds=3, methods=4, workers=2)
    assert sorted(i for s in shares for i in s) == list(range(12))
    assert shares == [[0, 2, 5, 7, 8, 10], [1, 3, 4, 6, 9, 11]]  # index = seed * 4 + method
    # each method's 3 seeds are on both workers (2 + 1)
    for m in range(4):
        assert {w for w, s in enumerate(shares) for i in s if i % 4 == m} == {0, 1}
    assert bench.worker_jobs(seeds=1, methods=2, workers=2) == [[0], [1]]


def test_merge_runs_orders_by_index_and_refuses_gaps():
    bench = _bench()
    parts = [{"runs": [[2, {"r": 2}], [0, {"r": 0}]]}, {"runs": [[1, {"r": 1}]]}]
    assert bench.merge_runs(parts, 3) == [{"r": 0}, {"r": 1}, {"r": 2}]
    with pytest.raises(ValueError, match="once"):
        bench.merge_runs(parts, 4)
    with pytest.raises(ValueError, match="once"):
        bench.merge_runs([*parts, {"runs": [[1, {"r": 1}]]}], 3)


def test_killing_the_run_stops_its_workers(tmp_path, tiny_model_dirs):
    pytest.importorskip("chatterbot_corpus")
    import os
    import signal
    import subprocess
    import sys
    import time

    teacher, _ = tiny_model_dirs
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_quality.py"),
        "--quick",
        "--teacher",
        str(teacher),
    ]
    cmd += ["--student-layers", "2", "--workers", "2", "--output-dir", str(tmp_path / "runs")]
    cmd += ["--json", str(tmp_path / "q.json"), "--plot", str(tmp_path / "q.png")]
    env = {**os.environ, "LMDISTILL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT / "src")}
    env["PYTHONUNBUFFERED"] = "1"
    parent = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        while "workers started" not in parent.stdout.readline():
            assert parent.poll() is None, "the run ended before its workers started"
        children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
        assert len(children) == 2
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) != 0
        time.sleep(0.5)
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)
        assert not (tmp_path / "q.json").exists()
    finally:
        if parent.poll() is None:
            parent.kill()
