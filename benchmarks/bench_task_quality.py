"""Which distillation method to use when the student's own answers decide: task accuracy after SFT.

The design of GKD (Agarwal et al. 2024), MiniLLM and DistiLLM, on the embedded models: every method
starts from the SAME student, first fine-tuned (SFT) on the teacher's filtered answers to the
training questions of the tasks, then continues for the same optimizer steps on the same prompts.
Judged by held-out task accuracy of its own greedy answers (0-shot, the task's own checker, prompts
never trained on) and by KL(teacher ‖ student) on the teacher's greedy answers to the held-out prompts.

Why these tasks (chosen before the runs):
- arithmetic:1 — the teacher answers in sentences with its working ("Grace has 4 + 5 = 9 cards"),
  so an answer is many tokens and one wrong token early (a wrong operand) makes it wrong; the checker
  reads the final number against the gold one.
- format_json — a JSON object with given keys and the right values: the student must close the
  structure it opened and copy the values; scored on content (`Task.grade`'s "correct": the values),
  not only the format.
Sentiment (a one-word label) is left out: its answer is one token, so sampling the student's own
answer adds nothing over KD on the teacher's. Instructions judged by ROUGE-L are left out: the
built-in tasks have no reference answers of their own, and ROUGE-L against the teacher's answers
rewards copying the teacher, which the KL column already measures.

Steps: (setup, once, cached under --output-dir/setup) teacher's greedy answers to the training and
held-out questions; kept when right (the checker with the gold answer) and not cut at length; a
student of 10 of the teacher's 30 layers (the first six and last four, as configs/recipes/how_far.yaml)
fine-tuned with CE on the kept answers for --warm-steps. (per method and seed) --steps more optimizer
steps of --batch-size from the warm student, the data order set by the seed; greedy held-out answers;
accuracy by the checker; KL. Mean and sample sd over seeds; a method whose gap to SFT is inside both
spreads is a tie (`lmdistill.eval.compare`). Every run's held-out answers are in the results file, so
the accuracies can be recomputed from them (tests/benchmarks/test_bench_task_quality.py does).

    python benchmarks/bench_task_quality.py --workers 2          # the full table (about 2 h here)
    python benchmarks/bench_task_quality.py --quick              # minutes: 2 seeds, few steps

Writes benchmarks/results/task_quality.json (or --json).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import TrainerCallback

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_quality: the worker machinery and the machine record

import bench_quality  # noqa: E402

from lmdistill.data import pad_id  # noqa: E402
from lmdistill.demo import TEACHER  # noqa: E402
from lmdistill.eval.compare import summarise  # noqa: E402
from lmdistill.eval.quality import (  # noqa: E402
    HeldoutScorer,
    Method,
    PrecomputedTeacher,
    greedy_answers,
    indexed,
    train_student,
)
from lmdistill.generate.modes import response_verdict  # noqa: E402
from lmdistill.io import atomic_write_json  # noqa: E402
from lmdistill.models import check_vocab, load_model, load_teacher, load_tokenizer, shrink_model  # noqa: E402
from lmdistill.models.generation import ChatGenerator  # noqa: E402
from lmdistill.tasks.registry import get_task  # noqa: E402
from lmdistill.teachers.types import Request, Sampling  # noqa: E402
from lmdistill.training.sampling import prompt_features  # noqa: E402

ROOT = HERE.parent
TASKS = ("arithmetic:1", "format_json")
LAYERS = [0, 1, 2, 3, 4, 5, 26, 27, 28, 29]  # of the 30-layer embedded teacher (how_far.yaml's)
KD = 0.5  # kd_ratio of the KD methods' off-policy steps (the how-far recipe's setting)
MAX_LENGTH = 256

#: Baseline first. On-policy steps sample answers as long as the held-out ones (--max-new-tokens) unless
#: the method sets its own max_new_tokens.
METHODS = [
    Method("SFT (CE on the teacher's answers)", kd_ratio=0.0),
    Method("supervised KD (forward KL)", "forward_kl", KD),
    Method("sequence-level KD (fresh teacher samples)", kd_ratio=0.0, on_policy={"seq_kd": True}),
    Method("GKD JSD(0.5), lmbda 0.5", "jsd", KD, beta=0.5, on_policy={"lmbda": 0.5}),
    Method("GKD JSD(0.5), lmbda 1", "jsd", KD, beta=0.5, on_policy={"lmbda": 1.0}),
    Method("GKD reverse KL, lmbda 1", "reverse_kl", KD, on_policy={"lmbda": 1.0}),
    Method(
        "DistiLLM (skew reverse KL 0.1, adaptive, replay)",
        "skew_reverse_kl",
        KD,
        alpha=0.1,
        on_policy={"lmbda": 0.5, "schedule": "adaptive", "adaptive_step": 0.25, "replay_buffer_size": 4},
    ),
    Method(
        "on-policy sampled estimator, lmbda 1",
        "reverse_kl",
        KD,
        on_policy={"lmbda": 1.0, "estimator": "sampled"},
    ),
    # Remedies tried because on-policy lost above (issue 25 names them): a smaller on-policy share, and
    # samples cut shorter than the held-out answers (40 tokens; the teacher's kept answers are 28 tokens on
    # average, 39 at most).
    Method("GKD JSD(0.5), lmbda 0.25", "jsd", KD, beta=0.5, on_policy={"lmbda": 0.25}),
    Method(
        "GKD JSD(0.5), lmbda 0.5, samples cut at 24 tokens",
        "jsd",
        KD,
        beta=0.5,
        on_policy={"lmbda": 0.5, "max_new_tokens": 24},
    ),
]
BASELINE = METHODS[0].name
#: --ablation (the how-far question): from the shrunk student, not the warm one, for --warm-steps: CE
#: alone on the filtered answers against the how-far recipe's logits KD + hidden-state hints.
HINTS = {"hidden_weight": 1.0, "layers": "copied", "metric": "ln_mse"}
ABLATION = [METHODS[0], Method("KD + hints (the how-far recipe)", "forward_kl", KD, hints=HINTS)]
FULL = dict(train_per_task=300, heldout_per_task=50, warm_steps=60, steps=24, batch_size=8, seeds="0,1,2")
FULL.update(max_new_tokens=40, validation=24, student_layers=None)
QUICK = dict(train_per_task=6, heldout_per_task=3, warm_steps=2, steps=2, batch_size=2, seeds="0,1")
QUICK.update(max_new_tokens=8, validation=2, student_layers=2)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="minutes: tiny sizes (for tests and a first look)")
    ap.add_argument("--teacher", default=TEACHER, help="teacher model (short name or folder)")
    ap.add_argument("--student-layers", type=int, help="evenly spaced layers (default: how_far.yaml's 10)")
    for key in ("train_per_task", "heldout_per_task", "warm_steps", "steps", "batch_size", "max_new_tokens"):
        ap.add_argument("--" + key.replace("_", "-"), type=int)
    ap.add_argument("--validation", type=int, help="kept answers held back for the adaptive schedule's loss")
    ap.add_argument(
        "--keep",
        choices=("right", "any"),
        default="right",
        help="which teacher answers train the student: right by the checker and not cut at length (the "
        "experiment), or any non-empty one (tiny untrained models, whose answers are never right: tests)",
    )
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of every continuation")
    ap.add_argument("--warm-lr", type=float, default=5e-4, help="peak learning rate of the SFT warm start")
    ap.add_argument("--seeds", help="comma-separated seeds")
    ap.add_argument("--methods", help="method names separated by ; (default: all; the first must be SFT)")
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="the how-far ablation: CE alone vs KD + hints from the shrunk (not warmed) student for "
        "--warm-steps; writes task_quality_ablation.json by default",
    )
    ap.add_argument(
        "--curve-every",
        type=int,
        help="also score each run's held-out answers every N optimizer steps (and at step 0): accuracy, "
        "repeats, length and KL against steps, in each run's 'curve' (costs one held-out pass per point)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (per worker)")
    ap.add_argument("--workers", type=int, default=1, help="processes the (method, seed) runs are split over")
    ap.add_argument(
        "--reanalyse", metavar="JSON", help="recompute the answer figures of a results file; no runs"
    )
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--part-json", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="results file (default benchmarks/results/task_quality[_ablation].json)")
    ap.add_argument("--output-dir", default="runs/bench_task_quality", help="setup cache and trainer scratch")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in (QUICK if a.quick else FULL).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    stem = "task_quality_ablation" if a.ablation else "task_quality"
    a.json = a.json or str(ROOT / "benchmarks" / "results" / f"{stem}.json")
    table = ABLATION if a.ablation else METHODS
    names = [m.name for m in table]
    wanted = a.methods.split(";") if a.methods else names
    if set(wanted) - set(names) or wanted[0] != BASELINE:
        ap.error(f"--methods: known names are {'; '.join(names)}; {BASELINE!r} first")
    a.method_list = [
        dataclasses.replace(m, on_policy={"max_new_tokens": a.max_new_tokens, **m.on_policy})
        if m.on_policy
        else m
        for m in table
        if m.name in wanted
    ]
    a.seed_list = [int(s) for s in a.seeds.split(",")]
    if a.workers < 1 or a.threads < 1:
        ap.error("--workers and --threads must be at least 1")
    if a.curve_every is not None and a.curve_every < 1:
        ap.error("--curve-every must be at least 1")
    a.workers = min(a.workers, len(a.seed_list) * len(a.method_list))
    return a


# ---- setup: the teacher's answers and the warm student, once --------------------------------------


def _chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def heldout_items(a, tasks=TASKS) -> list[tuple]:
    """(task, example) pairs of the held-out questions, task by task (a.heldout_per_task each, or all
    of a finite task's when it holds fewer)."""
    out = []
    for name in tasks:
        task = get_task(name)
        n = (
            a.heldout_per_task
            if task.pool is None
            else min(a.heldout_per_task, len(task.examples("heldout")))
        )
        out += [(task, ex) for ex in task.examples("heldout", n)]
    return out


def grade(task, answer: str, example) -> bool:
    """Right by the task's checker: the gold content where it is computable (JSON values, the
    number), else the check."""
    g = task.grade(answer, example)
    return bool(g["correct"] if g["correct"] is not None else g["passed"])


def accuracies(items: list[tuple], answers: list[str], tasks=TASKS) -> dict[str, float]:
    """Per task, the share of held-out answers that are right ("acc:<task>"), and their mean over tasks."""
    out = {}
    for name in tasks:
        marks = [grade(t, ans, ex) for (t, ex), ans in zip(items, answers, strict=True) if t.name == name]
        out[f"acc:{name}"] = sum(marks) / len(marks)
    out["acc:mean"] = sum(out[f"acc:{n}"] for n in tasks) / len(tasks)
    return out


def _repeats(text: str, n: int = 4) -> bool:
    """Whether some run of n words occurs twice in `text` (degenerate repetition)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


def answer_stats(items: list[tuple], answers: list[str]) -> dict[str, float]:
    """What the accuracies do not show: the share of JSON answers in the right format whatever their
    values ("json_format"), the share of answers repeating a 4-word run ("repeats"), and the mean
    answer length in characters."""
    json_marks = [
        t.grade(ans, ex)["passed"]
        for (t, ex), ans in zip(items, answers, strict=True)
        if t.name == "format_json"
    ]
    return {
        "json_format": sum(json_marks) / len(json_marks),
        "repeats": sum(map(_repeats, answers)) / len(answers),
        "mean_answer_chars": sum(len(x) for x in answers) / len(answers),
    }


def reanalyse(path: str) -> dict:
    """Every per-run figure that comes from the saved answers (accuracies, answer stats) recomputed
    from them with today's checkers, then the summary and table: a results file gains columns added
    after it was measured without a rerun. Training figures (KL, seconds) are kept as measured."""
    results = json.loads(Path(path).read_text())
    s = results["settings"]
    a = argparse.Namespace(heldout_per_task=s["heldout_per_task"])
    items = heldout_items(a)
    for run in results["runs"]:
        run.update(accuracies(items, run["answers"]), **answer_stats(items, run["answers"]))
    setup = results["setup"]
    setup["teacher"].update(answer_stats(items, setup["teacher_heldout_answers"]))
    setup["warm_student"].update(answer_stats(items, setup["warm_student_answers"]))
    results["summary"] = summarise(
        results["runs"], METRICS, baseline=results["runs"][0]["method"], higher_is_better=HIGHER
    )
    results["table"] = markdown(results)
    results["reanalysed"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(path, results)
    return results


def setup_key(a) -> str:
    keys = ("teacher", "train_per_task", "heldout_per_task", "warm_steps", "batch_size", "max_new_tokens")
    keys += ("validation", "student_layers", "warm_lr", "keep")
    return hashlib.sha256(json.dumps([getattr(a, k) for k in keys]).encode()).hexdigest()[:12]


def teacher_rows(teacher, tokenizer, a, tasks=TASKS) -> tuple[list[dict], dict[str, int], int]:
    """The teacher's greedy answers to a.train_per_task training questions per task (all of a finite
    task's when it holds fewer), kept as chat rows (with their "task") when right by the checker and
    not cut at a.max_new_tokens (a.keep == "any": every non-empty one). Returns (rows, kept per task,
    questions asked)."""
    generator = ChatGenerator(teacher, tokenizer, batch_size=32)
    greedy = Sampling(max_new_tokens=a.max_new_tokens)
    train = []
    for name in tasks:
        task = get_task(name)
        n = a.train_per_task if task.pool is None else min(a.train_per_task, len(task.examples("train")))
        train += [(task, ex) for ex in task.examples("train", n)]
    responses = generator.generate(
        [Request.chat([{"role": "user", "content": t.prompt(e)}], greedy) for t, e in train]
    )
    kept, kept_per_task = [], dict.fromkeys(tasks, 0)
    for (t, e), r in zip(train, responses, strict=True):
        right = response_verdict(r, keep_cut=False) == "kept" and grade(t, r.text, e)
        if right or (a.keep == "any" and r.text.strip()):
            kept.append({**_chat(t.prompt(e), r.text.strip()), "task": t.name})
            kept_per_task[t.name] += 1
    return kept, kept_per_task, len(train)


def prepare(a, log=print) -> Path:
    """The setup folder (made once per setup settings): setup.json (kept training rows, validation rows,
    the teacher's held-out answers and accuracy, the warm student's) and warm_student/ (safetensors)."""
    folder = Path(a.output_dir) / f"setup-{setup_key(a)}"
    if (folder / "setup.json").is_file():
        log(f"setup: reusing {folder}")
        return folder
    started = time.time()
    torch.set_num_threads(max(a.threads, a.workers * a.threads))
    tokenizer, teacher = load_tokenizer(a.teacher), load_teacher(a.teacher).eval()
    kept, kept_per_task, asked = teacher_rows(teacher, tokenizer, a)
    validation, rows = kept[: a.validation], kept[a.validation :]
    items = heldout_items(a)
    prompts = [t.prompt(e) for t, e in items]
    teacher_answers = greedy_answers(teacher, tokenizer, prompts, max_new_tokens=a.max_new_tokens)
    log(f"setup: {len(kept)} of {asked} teacher answers kept; {time.time() - started:.0f} s")
    student0 = shrink_model(teacher, num_layers=a.student_layers, layers=None if a.student_layers else LAYERS)
    vocab = check_vocab(tokenizer, tokenizer, teacher, student0)
    feats = prompt_features(rows, tokenizer, MAX_LENGTH, a.max_new_tokens, source="kept teacher answers")
    warm, seconds = train_student(
        METHODS[0], student0, teacher, tokenizer, vocab, feats,
        steps=a.warm_steps, batch_size=a.batch_size, lr=a.warm_lr, seed=0,
        output_dir=str(Path(a.output_dir) / "warm_scratch"),
    )  # fmt: skip
    warm_answers = greedy_answers(warm, tokenizer, prompts, max_new_tokens=a.max_new_tokens)
    (folder / "warm_student").mkdir(parents=True, exist_ok=True)
    warm.save_pretrained(folder / "warm_student")
    tokenizer.save_pretrained(folder / "warm_student")
    setup = {
        "teacher_answers_asked": asked,
        "kept": len(kept),
        "kept_per_task": kept_per_task,
        "rows": rows,
        "validation": validation,
        "teacher_heldout_answers": teacher_answers,
        "teacher": {**accuracies(items, teacher_answers), **answer_stats(items, teacher_answers)},
        "warm_student": {
            **accuracies(items, warm_answers),
            **answer_stats(items, warm_answers),
            "train_seconds": round(seconds, 1),
        },
        "warm_student_answers": warm_answers,
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_json(folder / "setup.json", setup)
    return folder


# ---- the runs --------------------------------------------------------------------------------------


def run_part(a, jobs: list[int], *, teacher_figures: bool = True, log=print) -> dict:
    """Train and score the runs `jobs` (indices into the seed-major (seed, method) list) from the warm
    student in the setup folder. Returns {"data", "runs": [[index, row], ...], "teacher": None}."""
    torch.set_num_threads(a.threads)
    folder = prepare(a, log)
    setup = json.loads((folder / "setup.json").read_text())
    tokenizer, teacher = load_tokenizer(a.teacher), load_teacher(a.teacher).eval()
    if a.ablation:  # the student every warm start begins from (shrinking copies: the same each time)
        start = shrink_model(
            teacher, num_layers=a.student_layers, layers=None if a.student_layers else LAYERS
        )
    else:
        start = load_model(folder / "warm_student")
    vocab = check_vocab(tokenizer, tokenizer, teacher, start)
    steps = a.warm_steps if a.ablation else a.steps
    lr = a.warm_lr if a.ablation else a.lr
    pad = pad_id(tokenizer)
    train_f = indexed(prompt_features(setup["rows"], tokenizer, MAX_LENGTH, a.max_new_tokens, source="rows"))
    val_f = prompt_features(setup["validation"], tokenizer, MAX_LENGTH, a.max_new_tokens, source="validation")
    precomputed = PrecomputedTeacher(teacher, train_f, pad)
    items = heldout_items(a)
    prompts = [t.prompt(e) for t, e in items]
    held_f = prompt_features(
        [
            _chat(p, ans)
            for p, ans in zip(prompts, setup["teacher_heldout_answers"], strict=True)
            if ans.strip()
        ],
        tokenizer,
        MAX_LENGTH,
        a.max_new_tokens,
        source="held-out teacher answers",
    )
    scorer = HeldoutScorer(teacher, held_f, vocab, pad)
    all_jobs = [(seed, method) for seed in a.seed_list for method in a.method_list]
    done = done_folder(a, folder)
    runs = []
    for index in jobs:
        seed, method = all_jobs[index]
        kept = kept_file(done, dataclasses.asdict(method), seed)
        if kept.is_file():  # finished by an earlier, interrupted run of the same settings
            runs.append([index, json.loads(kept.read_text())])
            log(f"reusing run {index} ({method.name}, seed {seed}) from {kept}")
            continue
        adaptive = method.on_policy.get("schedule") == "adaptive"
        curve = (
            AnswerCurve(a.curve_every, items, prompts, tokenizer, scorer, a.max_new_tokens)
            if a.curve_every
            else None
        )
        student, seconds = train_student(
            method, start, teacher, tokenizer, vocab, train_f,
            steps=steps, batch_size=a.batch_size, lr=lr, seed=seed,
            output_dir=str(Path(a.output_dir) / f"scratch-{os.getpid()}"), precomputed=precomputed,
            eval_features=val_f if adaptive else None, eval_every=max(1, a.steps // 6) if adaptive else None,
            curve=curve,
        )  # fmt: skip
        e0 = time.time()
        answers = greedy_answers(student, tokenizer, prompts, max_new_tokens=a.max_new_tokens)
        row = {
            "method": method.name,
            "seed": seed,
            **accuracies(items, answers),
            **answer_stats(items, answers),
            "kl": scorer.score(student).kl,
            "train_seconds": round(seconds, 1),
            "eval_seconds": round(time.time() - e0, 1),
            "answers": answers,
        }
        if curve is not None:
            row["curve"] = curve.points
        atomic_write_json(kept, row)  # kept at once: a later failure loses only the run it hit
        runs.append([index, row])
        log(json.dumps({k: v for k, v in row.items() if k != "answers"}))
    data = {"train_rows": len(train_f), "validation_rows": len(val_f), "heldout": len(items)}
    return {"setup": {"folder": str(folder)}, "data": data, "runs": runs, "teacher": None}


class AnswerCurve(TrainerCallback):
    """--curve-every: the student's greedy held-out answers every `every` optimizer steps (and at step 0),
    scored as the final ones are (accuracy per task, answer stats, KL), into `points`. The student is put
    in eval mode for the pass and back in train mode after."""

    def __init__(self, every: int, items, prompts, tokenizer, scorer, max_new_tokens: int):
        self.every, self.items, self.prompts, self.tokenizer = every, items, prompts, tokenizer
        self.scorer, self.max_new_tokens = scorer, max_new_tokens
        self.points: list[dict] = []

    def _add(self, step: int, model) -> None:
        model.eval()
        answers = greedy_answers(model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens)
        point = {"step": step, **accuracies(self.items, answers), **answer_stats(self.items, answers)}
        point["kl"] = self.scorer.score(model).kl
        self.points.append(point)
        model.train()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._add(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._add(state.global_step, model)


def done_folder(a, folder: Path) -> Path:
    """Where each finished run's row is kept, per setup and run settings (not the seeds: a run is kept
    by its method and seed, so a benchmark interrupted, or started again with other seeds, trains only
    the runs it lacks)."""
    settings = [a.ablation, a.steps, a.lr] + ([a.curve_every] if a.curve_every else [])
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
    return folder / f"runs-{key}"


def kept_file(done: Path, spec: dict, seed: int) -> Path:
    """The file of one finished run: its method's full settings (`spec`, JSON-able) and its seed."""
    return (
        done / f"{hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]}-seed{seed}.json"
    )


def worker_main(a) -> None:
    i, n = (int(x) for x in a.part.split("/"))
    jobs = bench_quality.worker_jobs(len(a.seed_list), len(a.method_list), n)[i]
    part = run_part(a, jobs, log=lambda line: print(f"[worker {i + 1}/{n}] {line}", flush=True))
    atomic_write_json(a.part_json, part)


METRICS = [f"acc:{n}" for n in TASKS] + ["acc:mean", "kl", "json_format", "repeats", "mean_answer_chars"]
HIGHER = {**dict.fromkeys(METRICS, True), "kl": False, "repeats": False}


def markdown(results: dict) -> str:
    cols = [f"acc:{n}" for n in TASKS] + ["acc:mean", "json_format", "repeats", "kl"]
    mark = {"better": " ▲", "worse": " ▼", "tie": " =", "baseline": "", "n/a": ""}
    names = {"json_format": "JSON format", "repeats": "answers repeating", "kl": "KL(teacher ‖ student)"}
    head = ["held-out " + c[4:] if c.startswith("acc:") else names[c] for c in cols]
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    s = results["setup"]
    refs = [("teacher", s["teacher"])]
    if not results["settings"]["start"].startswith("the shrunk"):
        refs.append(("warm student (start of every run)", s["warm_student"]))
    for label, ref in refs:
        shares = " | ".join(f"{100 * ref[c]:.1f}%" if c in ref else "" for c in cols[:-1])
        lines.append(f"| {label} | {shares} | |")
    for name, row in results["summary"].items():
        cells = []
        for c in cols:
            x = row[c]
            if c != "kl":
                cells.append(f"{100 * x['mean']:.1f}% ± {100 * x['sd']:.1f}{mark[x['verdict']]}")
            else:
                cells.append(f"{x['mean']:.3f} ± {x['sd']:.3f}{mark[x['verdict']]}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_markdown(results: dict) -> str:
    """Held-out arithmetic accuracy / answers repeating / KL at each curve point: one row per step, one
    column per method, means over seeds."""
    runs = results["runs"]
    names = list(dict.fromkeys(r["method"] for r in runs))
    steps = sorted({p["step"] for r in runs for p in r.get("curve", [])})
    lines = ["| step | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for step in steps:
        cells = []
        for name in names:
            pts = [p for r in runs if r["method"] == name for p in r.get("curve", []) if p["step"] == step]
            if not pts:
                cells.append("")
                continue
            mean = {k: sum(p[k] for p in pts) / len(pts) for k in ("acc:arithmetic:1", "repeats", "kl")}
            cells.append(
                f"{100 * mean['acc:arithmetic:1']:.0f}% / {100 * mean['repeats']:.0f}% / {mean['kl']:.2f}"
            )
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    a = parse_args(argv)
    if a.part:
        worker_main(a)
        return None
    if a.reanalyse:
        results = reanalyse(a.reanalyse)
        print(results["table"])
        return results
    load_start = list(os.getloadavg())
    started = time.time()
    folder = prepare(a)  # once, before the workers, which read it
    total = len(a.seed_list) * len(a.method_list)
    if a.workers == 1:
        parts = [run_part(a, list(range(total)))]
    else:
        parts = bench_quality.run_workers(a, script=Path(__file__))
    runs = bench_quality.merge_runs(parts, total)
    setup = json.loads((folder / "setup.json").read_text())
    results = {
        "benchmark": "task quality after SFT (bench_task_quality.py)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_task_quality.py", *a.argv]),
        "machine": bench_quality.machine(),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
        "settings": {
            "teacher": a.teacher,
            "tasks": list(TASKS),
            "start": "the shrunk student (--ablation)" if a.ablation else "the warm (SFT) student",
            **{k: getattr(a, k) for k in ("train_per_task", "heldout_per_task", "warm_steps", "steps")},
            **{
                k: getattr(a, k)
                for k in ("batch_size", "lr", "warm_lr", "max_new_tokens", "validation", "keep")
            },
            "student_layers": a.student_layers or LAYERS,
            "seeds": a.seed_list,
            **parts[0]["data"],
            "threads": a.threads,
            "workers": a.workers,
            "methods": [dataclasses.asdict(m) for m in a.method_list],
        },
        "setup": {k: v for k, v in setup.items() if k not in ("rows", "validation")},
        "runs": runs,
        "summary": summarise(runs, METRICS, baseline=BASELINE, higher_is_better=HIGHER),
        "wall_seconds": round(time.time() - started, 1),
    }
    results["table"] = markdown(results)
    if a.curve_every:
        results["curves"] = curves_markdown(results)
    atomic_write_json(a.json, results)
    print("\n" + results["table"])
    print(f"\nwall {results['wall_seconds']} s; results {a.json}")
    return results


if __name__ == "__main__":
    main()
