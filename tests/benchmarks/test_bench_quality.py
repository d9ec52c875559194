"""benchmarks/bench_quality.py --quick end to end on tiny real models built from config (seconds), the
on-policy rows included; --workers 2 gives the same rows as one process; a failing worker fails the run."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import time
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
    seen = _record(bench, monkeypatch)
    out_json, out_png = tmp_path / "quality.json", tmp_path / "quality.png"
    argv = ["--quick", "--teacher", str(teacher), "--student-layers", "2"]
    argv += ["--json", str(out_json), "--plot", str(out_png), "--output-dir", str(tmp_path / "runs")]
    started = time.time()
    bench.main(argv)
    elapsed = time.time() - started

    results = json.loads(out_json.read_text())
    names = [m.name for m in bench.METHODS]
    assert [r["method"] for r in results["runs"]] == names * 2
    assert list(results["summary"]) == names
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [(m, s) for m, s, _ in seen["students"]]
    _check_run_figures(results["runs"], seen, teacher)
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
    assert results["wall_seconds"] <= round(elapsed, 1) + 0.1  # seconds of this run, not a timestamp
    assert len(results["load_average_start"]) == len(results["load_average_end"]) == 3
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| CE alone |" in results["table"]


def _record(bench, monkeypatch) -> dict:
    """Spies on the benchmark's trained students, held-out features and greedy answers (it runs in
    this process with one worker): the figures of each row are then recomputed from them."""
    seen: dict = {"students": [], "features": [], "answers": []}
    train, scorer, answer_metrics = bench.train_student, bench.HeldoutScorer, bench.answer_metrics

    def train_student(method, *args, **kw):
        student, seconds = train(method, *args, **kw)
        seen["students"].append((method.name, kw["seed"], student))
        return student, seconds

    def heldout_scorer(teacher, features, *args, **kw):
        seen["features"].append(features)
        return scorer(teacher, features, *args, **kw)

    def answers(model, teacher, tokenizer, prompts, teacher_answers, **kw):
        out = answer_metrics(model, teacher, tokenizer, prompts, teacher_answers, **kw)
        seen["answers"].append((model, list(prompts), list(teacher_answers), out["answers"]))
        return out

    monkeypatch.setattr(bench, "train_student", train_student)
    monkeypatch.setattr(bench, "HeldoutScorer", heldout_scorer)
    monkeypatch.setattr(bench, "answer_metrics", answers)
    return seen


def _check_run_figures(runs: list[dict], seen: dict, teacher_dir) -> None:
    """Every row's six figures recomputed in float64 from the trained student it was measured on:
    top-1, KL and perplexity on the teacher's held-out answers, perplexity on the human ones, ROUGE-L
    (word LCS, written here) of its greedy answers against the teacher's, and the teacher's log-prob
    per token of those answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import float64_token_scores

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).double().eval()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    held, human = seen["features"]
    assert len(seen["answers"]) == len(runs) + 1  # each run's answers, then the teacher's own
    for row, (_, _, student), (model, prompts, teacher_answers, answers) in zip(
        runs, seen["students"], seen["answers"], strict=False
    ):
        assert model is student
        student = copy.deepcopy(student).double().eval()
        ppl, top1, kl, _ = float64_token_scores(student, teacher, held, len(tok))
        human_ppl = float64_token_scores(student, teacher, human, len(tok))[0]
        assert row["top1"] == pytest.approx(top1, abs=1e-9), row["method"]
        assert row["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7), row["method"]
        assert row["perplexity"] == pytest.approx(ppl, rel=1e-5), row["method"]
        assert row["human_perplexity"] == pytest.approx(human_ppl, rel=1e-5), row["method"]
        rouge = [_word_lcs_f1(a, t) for a, t in zip(answers, teacher_answers, strict=True)]
        assert row["rouge_l"] == pytest.approx(sum(rouge) / len(rouge), abs=1e-12), row["method"]
        total, count = 0.0, 0
        for prompt, answer in zip(prompts, answers, strict=True):
            chat = [{"role": "user", "content": prompt}]
            p = list(tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
            a = tok(answer, add_special_tokens=False)["input_ids"] if answer else []
            if not a:
                continue
            with torch.no_grad():
                logp = torch.log_softmax(teacher(torch.tensor([p + a])).logits[0].double(), -1)
            total += sum(float(logp[len(p) + j - 1, t]) for j, t in enumerate(a))
            count += len(a)
        assert row["own_logprob"] == pytest.approx(total / count, rel=1e-5), row["method"]


def _word_lcs_f1(a: str, b: str) -> float:
    """ROUGE-L F1 on lower-cased runs of letters and digits, by the textbook LCS table."""
    x, y = re.findall(r"[^\W_]+", a.lower()), re.findall(r"[^\W_]+", b.lower())
    if not x or not y:
        return 0.0
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, u in enumerate(x):
        for j, v in enumerate(y):
            table[i + 1][j + 1] = table[i][j] + 1 if u == v else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(x) + len(y))


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
