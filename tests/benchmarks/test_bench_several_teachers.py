"""benchmarks/bench_several_teachers.py --quick end to end on tiny real models built from config: two
specialists fine-tuned from the base, a student of each teacher choice (the routed one through
`teachers:` + `routing:`) over 2 seeds; every accuracy recomputed from the saved answers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.benchmarks.test_bench_task_quality import assert_accuracies_recompute

ROOT = Path(__file__).resolve().parents[2]


def test_quick_trains_a_student_per_teacher_choice(tmp_path, tiny_model_dirs, one_torch_thread):
    spec = importlib.util.spec_from_file_location(
        "bench_several", ROOT / "benchmarks" / "bench_several_teachers.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    teacher, _ = tiny_model_dirs
    out = tmp_path / "several.json"
    argv = ["--quick", "--teacher", str(teacher), "--keep", "any", "--json", str(out)]
    results = bench.main([*argv, "--output-dir", str(tmp_path / "runs")])
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [
        (c, s) for s in (0, 1) for c in bench.CHOICES
    ]
    assert set(results["setup"]["scores"]) == {"base", "maths", "language"}
    for run in results["runs"]:
        assert_accuracies_recompute(run, bench.TASKS, per_task=3)
    assert results["summary"]["routed"]["acc:mean"]["n"] == 2
    # the routed student was trained from both specialists, each on its own tasks' rows
    folder = next((tmp_path / "runs").glob("setup-*"))
    kept = sorted(folder.glob("runs-*/*.json"))  # each run kept as it ended, for a restart to reuse
    assert sorted(json.loads(p.read_text())["train_seconds"] for p in kept) == sorted(
        r["train_seconds"] for r in results["runs"]
    )
    routed = bench.run_config(bench.parse_args(argv), folder, "routed", 0, tmp_path / "x")
    assert [t.id for t in routed.teachers] == ["maths", "language"]
    assert routed.routing.rules == {
        "arithmetic:1": "maths",
        "sentiment": "language",
        "format_json": "language",
    }
    assert json.loads(out.read_text())["table"] == results["table"]


def test_one_teacher_choice_is_the_teacher_spelling(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_several", ROOT / "benchmarks" / "bench_several_teachers.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = bench.run_config(bench.parse_args(["--quick"]), tmp_path, "maths", 1, tmp_path / "o")
    assert cfg.teacher.name == str(tmp_path / "maths") and not cfg.teachers
    assert cfg.train.seed == 1
