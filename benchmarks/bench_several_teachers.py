"""Several teachers, proved on the embedded models: one student from two specialists routed by task.

Setup (once, cached under --output-dir/setup-*): the embedded SmolLM2-135M-Instruct answers the
training questions of three built-in tasks; answers right by the task's checker are kept. Two
specialists are made from it with lmdistill itself, each fine-tuned (CE, all 30 layers) on its own
kept answers of its tasks, rejection-sampling style:
- maths: arithmetic:1;
- language: sentiment and format_json.
Each specialist and the base model are scored on every task's held-out questions, so the table
shows whether each specialist beats the base on its tasks.

Runs: one student (10 of the 30 layers, copied from the base: configs/recipes/how_far.yaml's) trained
by `lmdistill train`'s own `run()` on the union of the kept answers (forward KL, kd_ratio 0.5), the
same steps and data order per seed, from each teacher choice:
- the base model;
- the maths specialist alone; the language specialist alone;
- both, routed by task (`teachers:` + `routing: {by: task}`: arithmetic rows to maths, the others to
  language).
Held-out task accuracy of each student's greedy answers per task and over the union; mean and sample
sd over seeds; a gap to the base-teacher student inside both spreads is a tie.

    python benchmarks/bench_several_teachers.py --workers 2      # 3 seeds (about an hour here)
    python benchmarks/bench_several_teachers.py --quick          # a smoke run

Writes benchmarks/results/several_teachers.json (or --json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_quality  # noqa: E402
import bench_task_quality as tq  # noqa: E402

from lmdistill import yamlconfig  # noqa: E402
from lmdistill.config import RunConfig  # noqa: E402
from lmdistill.eval.compare import summarise  # noqa: E402
from lmdistill.eval.quality import Method, greedy_answers, train_student  # noqa: E402
from lmdistill.io import atomic_write_json  # noqa: E402
from lmdistill.models import load_model, load_teacher, load_tokenizer, shrink_model  # noqa: E402
from lmdistill.training.run import run  # noqa: E402
from lmdistill.training.sampling import prompt_features  # noqa: E402

ROOT = HERE.parent
TASKS = ("arithmetic:1", "sentiment", "format_json")
SPECIALISTS = {"maths": ("arithmetic:1",), "language": ("sentiment", "format_json")}
CHOICES = ("base", "maths", "language", "routed")  # the teacher of each student; "base" is the baseline
FULL = dict(train_per_task=200, heldout_per_task=40, spec_steps=30, steps=24, batch_size=8, seeds="0,1,2")
FULL.update(max_new_tokens=40, student_layers=None)
QUICK = dict(train_per_task=6, heldout_per_task=3, spec_steps=2, steps=2, batch_size=2, seeds="0,1")
QUICK.update(max_new_tokens=8, student_layers=2)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes")
    ap.add_argument("--teacher", default="smollm2-135m", help="the base model (short name or folder)")
    ap.add_argument("--student-layers", type=int, help="evenly spaced layers (default: how_far.yaml's 10)")
    for key in ("train_per_task", "heldout_per_task", "spec_steps", "steps", "batch_size", "max_new_tokens"):
        ap.add_argument("--" + key.replace("_", "-"), type=int)
    ap.add_argument("--spec-lr", type=float, default=1e-4, help="the specialists' fine-tuning learning rate")
    ap.add_argument("--lr", type=float, default=3e-4, help="the students' peak learning rate")
    ap.add_argument("--keep", choices=("right", "any"), default="right", help="as bench_task_quality.py's")
    ap.add_argument("--seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--part-json", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "several_teachers.json"))
    ap.add_argument("--output-dir", default="runs/bench_several_teachers")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in (QUICK if a.quick else FULL).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.seed_list = [int(s) for s in a.seeds.split(",")]
    a.workers = max(1, min(a.workers, len(a.seed_list) * len(CHOICES)))
    return a


def _key(a) -> str:
    keys = ("teacher", "train_per_task", "heldout_per_task", "spec_steps", "batch_size", "max_new_tokens")
    keys += ("student_layers", "spec_lr", "keep")
    return hashlib.sha256(json.dumps([getattr(a, k) for k in keys]).encode()).hexdigest()[:12]


def prepare(a, log=print) -> Path:
    """setup.json (rows, the base's and each specialist's held-out accuracies) and the folders base/,
    maths/, language/ (models + tokenizer) and student0/ (the shrunk start of every student)."""
    folder = Path(a.output_dir) / f"setup-{_key(a)}"
    if (folder / "setup.json").is_file():
        return folder
    started = time.time()
    torch.set_num_threads(max(a.threads, a.workers * a.threads))
    tokenizer, base = load_tokenizer(a.teacher), load_teacher(a.teacher).eval()
    rows, kept_per_task, asked = tq.teacher_rows(base, tokenizer, a, TASKS)
    log(f"setup: {len(rows)} of {asked} teacher answers kept {kept_per_task}")
    items = tq.heldout_items(a, TASKS)
    prompts = [t.prompt(e) for t, e in items]
    scores = {
        "base": tq.accuracies(
            items, greedy_answers(base, tokenizer, prompts, max_new_tokens=a.max_new_tokens), TASKS
        )
    }
    vocab = len(tokenizer)
    for name, tasks in SPECIALISTS.items():
        own = [r for r in rows if r["task"] in tasks]
        feats = prompt_features(own, tokenizer, tq.MAX_LENGTH, a.max_new_tokens, source=f"{name} rows")
        spec, _ = train_student(
            Method(f"{name} specialist (CE)", kd_ratio=0.0), base, base, tokenizer, vocab, feats,
            steps=a.spec_steps, batch_size=a.batch_size, lr=a.spec_lr, seed=0,
            output_dir=str(Path(a.output_dir) / "scratch"),
        )  # fmt: skip
        scores[name] = tq.accuracies(
            items, greedy_answers(spec, tokenizer, prompts, max_new_tokens=a.max_new_tokens), TASKS
        )
        spec.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        log(f"setup: {name} specialist {scores[name]} (base {scores['base']})")
    base.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    layers = None if a.student_layers else tq.LAYERS
    student0 = shrink_model(base, num_layers=a.student_layers, layers=layers)
    student0.save_pretrained(folder / "student0")
    tokenizer.save_pretrained(folder / "student0")
    with (folder / "train.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    setup = {
        "asked": asked,
        "kept_per_task": kept_per_task,
        "scores": scores,
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_json(folder / "setup.json", setup)
    return folder


def run_config(a, folder: Path, choice: str, seed: int, out: Path) -> RunConfig:
    """The `lmdistill train` config of one student: the teacher choice's `teacher:` or routed `teachers:`."""
    raw: dict = {
        "student": {"name": str(folder / "student0")},
        "data": {"train": str(folder / "train.jsonl"), "max_length": tq.MAX_LENGTH},
        "distill": {"loss": "forward_kl", "kd_ratio": tq.KD},
        "train": {
            "output_dir": str(out),
            "overwrite_output_dir": True,
            "max_steps": a.steps,
            "per_device_train_batch_size": a.batch_size,
            "learning_rate": a.lr,
            "lr_scheduler_type": "cosine",
            "warmup_steps": max(1, a.steps // 10),
            "logging_steps": max(1, a.steps // 4),
            "save_steps": 10**6,
            "seed": seed,
            "extra": {"use_cpu": not torch.cuda.is_available(), "disable_tqdm": True},
        },
    }
    if choice == "routed":
        raw["teachers"] = [{"id": name, "name": str(folder / name)} for name in SPECIALISTS]
        rules = {task: name for name, tasks in SPECIALISTS.items() for task in tasks}
        raw["routing"] = {"mode": "route", "by": "task", "rules": rules}
    else:
        raw["teacher"] = {"name": str(folder / choice)}
    return yamlconfig.build(RunConfig, raw, f"bench_several_teachers {choice}").validate()


def run_part(a, jobs: list[int], log=print) -> dict:
    torch.set_num_threads(a.threads)
    folder = prepare(a, log)
    tokenizer = load_tokenizer(folder / "base")
    items = tq.heldout_items(a, TASKS)
    prompts = [t.prompt(e) for t, e in items]
    all_jobs = [(seed, choice) for seed in a.seed_list for choice in CHOICES]
    done = folder / f"runs-{hashlib.sha256(json.dumps([a.steps, a.lr]).encode()).hexdigest()[:12]}"
    runs = []
    for index in jobs:
        seed, choice = all_jobs[index]
        kept = tq.kept_file(done, {"teacher": choice}, seed)
        if kept.is_file():  # finished by an earlier, interrupted run of the same settings
            runs.append([index, json.loads(kept.read_text())])
            log(f"reusing {choice}, seed {seed} from {kept}")
            continue
        out = Path(a.output_dir) / "scratch" / f"{choice}-{seed}-{os.getpid()}"
        t0 = time.time()
        student_dir = run(run_config(a, folder, choice, seed, out), log=lambda *_: None)
        seconds = time.time() - t0
        answers = greedy_answers(
            load_model(student_dir).eval(), tokenizer, prompts, max_new_tokens=a.max_new_tokens
        )
        row = {
            "method": choice,
            "seed": seed,
            **tq.accuracies(items, answers, TASKS),
            "train_seconds": round(seconds, 1),
        }
        runs.append([index, {**row, "answers": answers}])
        atomic_write_json(kept, runs[-1][1])  # kept at once: a later failure loses only the run it hit
        log(json.dumps(row))
    return {"data": {"heldout": len(items)}, "runs": runs}


METRICS = [f"acc:{t}" for t in TASKS] + ["acc:mean"]


def markdown(results: dict) -> str:
    mark = {"better": " ▲", "worse": " ▼", "tie": " =", "baseline": "", "n/a": ""}
    lines = ["| teacher | " + " | ".join(m[4:] for m in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for name, s in results["setup"]["scores"].items():
        lines.append(
            f"| the {name} model itself | " + " | ".join(f"{100 * s[m]:.1f}%" for m in METRICS) + " |"
        )
    for name, row in results["summary"].items():
        cells = [
            f"{100 * row[m]['mean']:.1f}% ± {100 * row[m]['sd']:.1f}{mark[row[m]['verdict']]}"
            for m in METRICS
        ]
        lines.append(f"| student of {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    a = parse_args(argv)
    if a.part:
        i, n = (int(x) for x in a.part.split("/"))
        jobs = bench_quality.worker_jobs(len(a.seed_list), len(CHOICES), n)[i]
        part = run_part(a, jobs, log=lambda line: print(f"[worker {i + 1}/{n}] {line}", flush=True))
        atomic_write_json(a.part_json, part)
        return None
    load_start, started = list(os.getloadavg()), time.time()
    folder = prepare(a)
    total = len(a.seed_list) * len(CHOICES)
    if a.workers == 1:
        parts = [run_part(a, list(range(total)))]
    else:
        parts = bench_quality.run_workers(a, script=Path(__file__))
    runs = bench_quality.merge_runs(parts, total)
    results = {
        "benchmark": "several teachers (bench_several_teachers.py)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_several_teachers.py", *a.argv]),
        "machine": bench_quality.machine(),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
        "settings": {
            k: getattr(a, k)
            for k in ("teacher", "train_per_task", "heldout_per_task", "spec_steps", "spec_lr", "steps")
        }
        | {k: getattr(a, k) for k in ("batch_size", "lr", "max_new_tokens", "keep", "threads", "workers")}
        | {"tasks": list(TASKS), "specialists": SPECIALISTS, "seeds": a.seed_list, "kd_ratio": tq.KD},
        "setup": json.loads((folder / "setup.json").read_text()),
        "runs": runs,
        "summary": summarise(runs, METRICS, baseline="base", higher_is_better=dict.fromkeys(METRICS, True)),
        "wall_seconds": round(time.time() - started, 1),
    }
    results["table"] = markdown(results)
    atomic_write_json(a.json, results)
    print("\n" + results["table"])
    return results


if __name__ == "__main__":
    main()
