"""benchmarks/bench_task_quality.py --quick end to end on tiny real models built from config: every
method, 2 seeds, in 2 worker processes; each run's accuracies recomputed from its saved answers by
the tasks' checkers, independently of the benchmark's own scoring; and the checkers' verdicts on
hand-made answers, near misses included."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lmdistill.tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[2]


def assert_accuracies_recompute(run: dict, tasks, per_task: int) -> None:
    """Each "acc:<task>" of a results row equals the share of its saved answers that the task's own
    checker passes, on held-out questions rebuilt here from the task registry, not by the benchmark."""
    items = [(get_task(n), ex) for n in tasks for ex in get_task(n).examples("heldout", per_task)]
    assert len(run["answers"]) == len(items)
    for name in tasks:
        marks = []
        for (task, ex), answer in zip(items, run["answers"], strict=True):
            if task.name == name:
                g = task.grade(answer, ex)
                marks.append(g["correct"] if g["correct"] is not None else g["passed"])
        assert run[f"acc:{name}"] == sum(marks) / per_task


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_task_quality", ROOT / "benchmarks" / "bench_task_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_runs_every_method_and_the_answers_recompute_the_table(
    tmp_path, tiny_model_dirs, one_torch_thread
):
    teacher, _ = tiny_model_dirs
    bench = _bench()
    out = tmp_path / "task_quality.json"
    argv = ["--quick", "--teacher", str(teacher), "--keep", "any", "--workers", "2"]
    argv += ["--json", str(out), "--output-dir", str(tmp_path / "runs")]
    bench.main(argv)
    results = json.loads(out.read_text())

    names = [m.name for m in bench.METHODS]
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [(m, s) for s in (0, 1) for m in names]
    assert list(results["summary"]) == names
    for run in results["runs"]:
        assert_accuracies_recompute(run, ("arithmetic:1", "format_json"), per_task=3)
        assert run["kl"] > 0  # a 2-layer student of a different 4-layer model: never the teacher
    # Each method's cell is the mean of its seeds' runs.
    for name in names:
        accs = [r["acc:mean"] for r in results["runs"] if r["method"] == name]
        assert results["summary"][name]["acc:mean"]["mean"] == pytest.approx(sum(accs) / 2)
    assert results["summary"][bench.BASELINE]["kl"]["verdict"] == "baseline"
    setup = results["setup"]
    assert setup["teacher_answers_asked"] == 12  # --quick: 6 training questions per task
    assert results["settings"]["train_rows"] == setup["kept"] - 2  # 2 held back for validation
    assert "| SFT (CE on the teacher's answers) |" in results["table"]
    # --reanalyse recomputes the answer figures from the saved answers: the same figures again
    again = bench.main(["--reanalyse", str(out)])
    assert [{k: r[k] for k in bench.METRICS} for r in again["runs"]] == [
        {k: r[k] for k in bench.METRICS} for r in results["runs"]
    ]
    assert again["table"] == results["table"]
    # Each finished run is kept as it ends; the same command again trains only what is missing (here
    # nothing: a kept row, marked, comes back as it was kept).
    kept = sorted(next((tmp_path / "runs").glob("setup-*")).glob("runs-*/*.json"))
    assert len(kept) == len(results["runs"])
    row = json.loads(kept[0].read_text())
    kept[0].write_text(json.dumps({**row, "kl": 123.0}))
    again = bench.main(argv)["runs"]
    assert [r["kl"] for r in again if (r["method"], r["seed"]) == (row["method"], row["seed"])] == [123.0]
    kept[0].write_text(json.dumps(row))
    # another seed list reuses the runs it shares: seed 1 alone comes back from the kept files
    only = bench.main([*argv, "--seeds", "1"])["runs"]
    assert only == [r for r in results["runs"] if r["seed"] == 1]


def _near_misses() -> list[tuple[str, str, bool]]:
    """(task, answer, right?) for the first held-out question of each task, written by hand around its gold."""
    arith = get_task("arithmetic:1").examples("heldout", 1)[0]
    gold = int(arith.answer)
    js = get_task("format_json").examples("heldout", 1)[0]
    ref = json.loads(js.answer)
    wrong = {**ref, next(iter(ref)): "not the value"}
    return [
        ("arithmetic:1", f"She has {gold} now.", True),
        ("arithmetic:1", f"First a step, then {gold}.\n#### {gold}", True),
        ("arithmetic:1", f"She has {gold + 1} now.", False),  # off by one
        ("arithmetic:1", f"She had {gold} before; now she has {gold + 2}.", False),  # gold, not as the answer
        ("format_json", json.dumps(ref), True),
        ("format_json", "Here it is: " + json.dumps(ref), True),
        ("format_json", json.dumps(wrong), False),  # the format right, one value wrong
        ("format_json", json.dumps(ref)[:-1], False),  # not closed
    ]


@pytest.mark.parametrize(("task", "answer", "right"), _near_misses())
def test_the_checker_on_hand_made_answers(task, answer, right):
    t = get_task(task)
    ex = t.examples("heldout", 1)[0]
    assert _bench().grade(t, answer, ex) is right


def test_ablation_starts_from_the_shrunk_student(tmp_path, tiny_model_dirs, one_torch_thread):
    """--ablation: CE alone against KD + hints for the warm-up's steps from the shrunk student; CE alone
    at seed 0 is then the warm start itself, so their held-out answers are the same."""
    teacher, _ = tiny_model_dirs
    bench = _bench()
    out = tmp_path / "ablation.json"
    argv = ["--quick", "--ablation", "--teacher", str(teacher), "--keep", "any"]
    results = bench.main([*argv, "--json", str(out), "--output-dir", str(tmp_path / "runs")])
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [
        (m.name, s) for s in (0, 1) for m in bench.ABLATION
    ]
    assert results["settings"]["start"] == "the shrunk student (--ablation)"
    assert results["runs"][0]["answers"] == results["setup"]["warm_student_answers"]
    assert "warm student" not in results["table"]


def test_curve_points_score_the_student_at_those_steps(tmp_path, tiny_model_dirs, one_torch_thread):
    """--curve-every 1: a point at step 0 and after each optimizer step; the step-0 point scores the
    warm student (its answers are the setup's), the last point the finished student (the run's own
    accuracy and KL)."""
    teacher, _ = tiny_model_dirs
    bench = _bench()
    out = tmp_path / "curves.json"
    argv = ["--quick", "--teacher", str(teacher), "--keep", "any", "--seeds", "0", "--curve-every", "1"]
    argv += ["--methods", "SFT (CE on the teacher's answers);GKD JSD(0.5), lmbda 1"]
    argv += ["--json", str(out), "--output-dir", str(tmp_path / "runs")]
    bench.main(argv)
    results = json.loads(out.read_text())
    warm = results["setup"]["warm_student"]
    for run in results["runs"]:
        steps = [p["step"] for p in run["curve"]]
        assert steps == [0, 1, 2]  # --quick: 2 steps
        first, last = run["curve"][0], run["curve"][-1]
        assert first["acc:mean"] == warm["acc:mean"]
        assert last["acc:mean"] == run["acc:mean"] and last["kl"] == pytest.approx(run["kl"], rel=1e-6)
    assert results["curves"].count("\n") == 2 + 3 - 1  # header, rule, one row per step
