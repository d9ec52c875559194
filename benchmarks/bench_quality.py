"""Distillation quality per method, over seeds: what each loss does for the same student.

The embedded teacher (SmolLM2-135M-Instruct) and a student of 10 of its layers, copied; every method
trains the same student on the same human-written chatterbot answers for the same steps, once per
seed (the seed changes the data order). Held-out figures against the teacher's greedy answers to
other prompts: top-1 agreement, KL(teacher ‖ student), perplexity; perplexity on the human answers
to the same prompts; ROUGE-L of the student's greedy answers against the teacher's; the teacher's
log-prob per token of the student's own answers. Mean and sample sd per cell; a method whose gap
to CE alone is inside the two spreads is a tie (`lmdistill.eval.compare`).

The on-policy rows train half their optimizer steps (lmbda 0.5, GKD's mix) on the student's own
samples of the same training rows' prompts (answers of at most --max-new-tokens, temperature 1),
scored by the live teacher; their other steps are the KD steps of the row they are named after.
So every method sees the same prompts; the on-policy rows see only half of the human answers' tokens
and, on the other half of the steps, text the student wrote.

`--workers N` splits the (method, seed) runs over N processes (each with --threads torch threads,
each doing its own setup) and merges the results in the fixed order a single process writes.

    python benchmarks/bench_quality.py                 # the full table (see docs/quality.md for its size)
    python benchmarks/bench_quality.py --quick         # a few minutes: 2 seeds, few steps
    python benchmarks/bench_quality.py --methods "CE alone,forward KL" --seeds 0,1,2
    python benchmarks/bench_quality.py --workers 2 --threads 1   # both cores of a 2-core machine

Writes benchmarks/results/quality.json and docs/img/quality.png (or --json / --plot).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import lmdistill
from lmdistill.config import OnPolicyConfig
from lmdistill.data import pad_id
from lmdistill.demo import TEACHER, chatterbot_data
from lmdistill.eval.compare import summarise
from lmdistill.eval.quality import (
    HeldoutScorer,
    Method,
    PrecomputedTeacher,
    answer_metrics,
    indexed,
    train_student,
)
from lmdistill.io import atomic_write, atomic_write_json
from lmdistill.models import check_vocab, load_teacher, load_tokenizer, shrink_model
from lmdistill.training.on_policy import ON, Schedule
from lmdistill.training.sampling import prompt_features

ROOT = Path(__file__).resolve().parent.parent
KD = 0.5  # kd_ratio of every KD method: loss = 0.5 CE + 0.5 T^2 D (the demo's setting)
HINTS = {"hidden_weight": 1.0, "layers": "copied", "metric": "ln_mse", "relation_weight": 1.0}
#: Half the optimizer steps on the student's own samples (GKD's lmbda 0.5); the samples' length is set
#: to --max-new-tokens in `parse_args` (the held-out answers' length).
GKD = {"lmbda": 0.5}
MAX_LENGTH = 256  # tokens per training example (ChatData.features' default)

#: The methods compared, baseline first.
METHODS = [
    Method("CE alone", kd_ratio=0.0),
    Method("forward KL", "forward_kl", KD),
    Method("forward KL (kd_ratio 0.9)", "forward_kl", 0.9),
    Method("reverse KL", "reverse_kl", KD),
    Method("JSD (beta 0.5)", "jsd", KD, beta=0.5),
    Method("skew forward KL (0.1)", "skew_forward_kl", KD, alpha=0.1),
    Method("skew reverse KL (0.1)", "skew_reverse_kl", KD, alpha=0.1),
    Method("TVD", "tvd", KD),
    Method("forward KL, T=2", "forward_kl", KD, temperature=2.0),
    Method("forward KL + hints", "forward_kl", KD, hints=HINTS),
    Method("on-policy forward KL (lmbda 0.5)", "forward_kl", KD, on_policy=GKD),
    Method("on-policy reverse KL (lmbda 0.5)", "reverse_kl", KD, on_policy=GKD),
]
BASELINE = METHODS[0].name
METRICS = ["top1", "kl", "perplexity", "human_perplexity", "rouge_l", "own_logprob"]
FULL = dict(steps=6, batch_size=4, seeds="0,1,2", heldout_prompts=8, max_new_tokens=40)
QUICK = dict(steps=3, batch_size=2, seeds="0,1", heldout_prompts=4, max_new_tokens=16)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few minutes: fewer steps, seeds and prompts")
    ap.add_argument("--teacher", default=TEACHER, help="teacher model (short name or folder)")
    ap.add_argument("--student-layers", type=int, default=10)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--seeds", help="comma-separated seeds")
    ap.add_argument("--heldout-prompts", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--methods", help="comma-separated method names (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (per worker)")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes the (method, seed) runs are split over, each with --threads threads and its own "
        "setup; results are the same as with 1",
    )
    # A worker: its share of the runs only, written as JSON for the parent to merge (see run_workers).
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--part-json", help=argparse.SUPPRESS)
    ap.add_argument(
        "--skip-generation", action="store_true", help="no greedy answers: no ROUGE-L, no own log-prob"
    )
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "quality.png"))
    ap.add_argument("--output-dir", default="runs/bench_quality", help="trainer scratch folder")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)  # what a worker is started with
    for key, value in (QUICK if a.quick else FULL).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    names = [m.name for m in METHODS]
    a.method_list = METHODS if not a.methods else [m for m in METHODS if m.name in a.methods.split(",")]
    a.method_list = [  # on-policy samples as long as the held-out answers
        dataclasses.replace(m, on_policy={**m.on_policy, "max_new_tokens": a.max_new_tokens})
        if m.on_policy
        else m
        for m in a.method_list
    ]
    unknown = set(a.methods.split(",")) - set(names) if a.methods else set()
    if unknown or not a.method_list or a.method_list[0].name != BASELINE:
        ap.error(f"--methods: known names are {', '.join(names)}; {BASELINE!r} must be among them")
    a.seed_list = [int(s) for s in a.seeds.split(",")]
    if a.workers < 1 or a.threads < 1:
        ap.error("--workers and --threads must be at least 1")
    a.workers = min(a.workers, len(a.seed_list) * len(a.method_list))
    return a


def worker_jobs(seeds: int, methods: int, workers: int) -> list[list[int]]:
    """Per worker, its indices into the (seed, method) runs in the order one process does them
    (seed-major). Dealt out method by method, so each method's seeds, slow methods' included, spread
    over the workers."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    for r, (m, s) in enumerate(itertools.product(range(methods), range(seeds))):
        shares[r % workers].append(s * methods + m)
    return [sorted(x) for x in shares]


def run_part(a: argparse.Namespace, jobs: list[int], *, teacher_figures: bool, log=print) -> dict:
    """Set up (teacher, data, the teacher's states) and train and score the runs `jobs` (indices into the
    seed-major (seed, method) list); the teacher's own answer figures too when `teacher_figures`.
    Returns {"setup", "data", "runs": [[index, row], ...], "teacher"} (plain JSON)."""
    started = time.time()
    torch.set_num_threads(a.threads)
    tokenizer = load_tokenizer(a.teacher)
    teacher = load_teacher(a.teacher)
    data = chatterbot_data(
        teacher,
        tokenizer,
        train_examples=a.steps * a.batch_size,
        heldout_prompts=a.heldout_prompts,
        max_new_tokens=a.max_new_tokens,
        name=a.teacher,
        human_per_prompt=1,
    )
    _, held_f, human_f = data.features(tokenizer, MAX_LENGTH)
    # The training rows tokenized as ChatData.features does, each also carrying its prompt (the user turn
    # with the generation prompt), which only the on-policy methods read.
    train_f = prompt_features(
        data.train_rows, tokenizer, MAX_LENGTH, a.max_new_tokens, source="train (human answers)"
    )
    student0 = shrink_model(teacher, num_layers=a.student_layers)
    vocab = check_vocab(tokenizer, tokenizer, teacher, student0)
    pad = pad_id(tokenizer)
    train_f = indexed(train_f)
    t0 = time.time()
    precomputed = PrecomputedTeacher(teacher, train_f, pad)
    scorer = HeldoutScorer(teacher, held_f, vocab, pad)
    human = HeldoutScorer(teacher, human_f, vocab, pad)
    setup = {"seconds": round(time.time() - started, 1), "teacher_pass_seconds": round(time.time() - t0, 1)}
    log(f"setup {setup}: train {len(train_f)}, held-out {len(held_f)} teacher / {len(human_f)} human answers")
    all_jobs = [(seed, method) for seed in a.seed_list for method in a.method_list]

    def generation_figures(model) -> dict:
        """ROUGE-L of `model`'s greedy answers against the teacher's, the teacher's log-prob of them."""
        if a.skip_generation:
            return {"rouge_l": None, "own_logprob": None}
        gen = answer_metrics(
            model,
            teacher,
            tokenizer,
            data.held_prompts,
            data.teacher_answers,
            max_new_tokens=a.max_new_tokens,
        )
        return {"rouge_l": gen["rouge_l"], "own_logprob": gen["own_logprob"]}

    runs = []
    for index in jobs:
        seed, method = all_jobs[index]
        student, seconds = train_student(
            method, student0, teacher, tokenizer, vocab, train_f,
            steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=seed,
            output_dir=a.output_dir, precomputed=precomputed,
        )  # fmt: skip
        e0 = time.time()
        s, h = scorer.score(student), human.score(student)
        gen = generation_figures(student)
        row = {
            "method": method.name,
            "seed": seed,
            "top1": s.top1,
            "kl": s.kl,
            "perplexity": s.perplexity,
            "human_perplexity": h.perplexity,
            "rouge_l": gen["rouge_l"],
            "own_logprob": gen["own_logprob"],
            "on_policy_steps": on_policy_steps(method, seed, a.steps),
            "train_seconds": round(seconds, 1),
            "eval_seconds": round(time.time() - e0, 1),
        }
        runs.append([index, row])
        log(json.dumps(row))
    teacher_gen = generation_figures(teacher) if teacher_figures else None
    return {
        "setup": setup,
        "data": {
            "train_examples": len(train_f),
            "heldout_teacher_answers": len(held_f),
            "heldout_teacher_tokens": scorer.teacher_scores().tokens,
            "heldout_human_answers": len(human_f),
        },
        "runs": runs,
        "teacher": teacher_gen,
    }


def on_policy_steps(method: Method, seed: int, steps: int) -> int | None:
    """How many of the run's optimizer steps trained on the student's own samples: the trainer's own
    draw (`Schedule.kind`, a function of seed and step); None for an off-policy method."""
    if not method.on_policy:
        return None
    schedule = Schedule(OnPolicyConfig(**method.on_policy), seed)
    return sum(schedule.kind(step) == ON for step in range(steps))


def run_workers(a: argparse.Namespace, log=print, script: Path = Path(__file__)) -> list[dict]:
    """`run_part` in `a.workers` processes, each `script` (this one by default) again with --part I/N (its share, from
    `worker_jobs`) and --part-json; returns their parts in worker order. Workers print their progress
    here; each one's stderr is passed on when it ends. The first worker to fail stops the others and
    the run: RuntimeError with its exit code and the end of its stderr."""
    n = a.workers
    src = str(Path(lmdistill.__file__).resolve().parents[1])  # the lmdistill this process runs
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else "")}
    env["OMP_NUM_THREADS"] = str(a.threads)
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        procs: list[tuple[subprocess.Popen, Path]] = []
        # `kill PID` of this process raises SystemExit here, so the `finally` below stops the workers too
        on_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_quality: terminated"))
        try:
            for i in range(n):
                part, err = Path(tmp) / f"part{i}.json", Path(tmp) / f"part{i}.stderr"
                cmd = [sys.executable, str(script.resolve()), *a.argv]
                cmd += ["--workers", "1", "--part", f"{i}/{n}", "--part-json", str(part)]
                with err.open("w") as stderr:  # the child holds its own handle
                    procs.append((subprocess.Popen(cmd, env=env, stderr=stderr), part))
            log(f"{n} workers started, {a.threads} torch thread(s) each")
            running = set(range(n))
            while running:
                for i in sorted(running):
                    code = procs[i][0].poll()
                    if code is None:
                        continue
                    running.discard(i)
                    text = (Path(tmp) / f"part{i}.stderr").read_text(errors="replace")
                    sys.stderr.write(text)
                    if code != 0:
                        tail = "\n".join(text.strip().splitlines()[-20:])
                        raise RuntimeError(
                            f"{script.stem} worker {i + 1} of {n} failed (exit {code}):\n{tail}"
                        )
                time.sleep(0.2)
            return [json.loads(part.read_text()) for _, part in procs]
        finally:
            signal.signal(signal.SIGTERM, on_term)
            for proc, _ in procs:  # after a failure, Ctrl-C or kill: no worker is left running
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()


def merge_runs(parts: list[dict], total: int) -> list[dict]:
    """The parts' [index, row] runs as one list in index order (what one process writes); each index
    0..total-1 exactly once (ValueError otherwise)."""
    indexed_rows = sorted(((i, row) for p in parts for i, row in p["runs"]), key=lambda x: x[0])
    if [i for i, _ in indexed_rows] != list(range(total)):
        raise ValueError(f"the workers' runs do not cover each of the {total} runs once")
    return [row for _, row in indexed_rows]


def run_all(a: argparse.Namespace, log=print) -> dict:
    """Train and score every (method, seed), in `a.workers` processes; returns the results dict (not
    yet written), the same for any number of workers but for timings."""
    started = time.time()
    total = len(a.seed_list) * len(a.method_list)
    if a.workers == 1:
        parts = [run_part(a, list(range(total)), teacher_figures=True, log=log)]
    else:
        parts = run_workers(a, log)
    if any(p["data"] != parts[0]["data"] for p in parts):
        raise RuntimeError(f"the workers set up different data: {[p['data'] for p in parts]}")
    runs = merge_runs(parts, total)
    teacher_gen = next(p["teacher"] for p in parts if p["teacher"] is not None)
    setup = parts[0]["setup"]
    if len(parts) > 1:
        setup = {**setup, "per_worker": [p["setup"] for p in parts]}
    return {
        "benchmark": "quality",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "load_average_start": a.load_start,
        "load_average_end": list(os.getloadavg()),
        "settings": {
            "teacher": a.teacher,
            "student_layers": a.student_layers,
            "steps": a.steps,
            "batch_size": a.batch_size,
            "lr": a.lr,
            "seeds": a.seed_list,
            **parts[0]["data"],
            "max_new_tokens": a.max_new_tokens,
            "threads": a.threads,
            "workers": a.workers,
            "methods": [dataclasses.asdict(m) for m in a.method_list],
        },
        "teacher": teacher_gen,
        "setup": setup,
        "runs": runs,
        "summary": summarise(runs, METRICS, baseline=BASELINE),
        "wall_seconds": round(time.time() - started, 1),
    }


def machine() -> dict:
    import transformers

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


LABELS = {
    "top1": "top-1 agreement",
    "kl": "KL(teacher ‖ student)",
    "perplexity": "perplexity (teacher text)",
    "human_perplexity": "perplexity (human text)",
    "rouge_l": "ROUGE-L vs teacher",
    "own_logprob": "teacher log-prob of own answers",
}
MARK = {"better": " ▲", "worse": " ▼", "tie": " =", "baseline": "", "n/a": ""}


def markdown(results: dict) -> str:
    """The table: mean ± sd per cell; ▲/▼ better/worse than CE alone beyond the spreads, = a tie."""
    cols = METRICS
    lines = ["| method | " + " | ".join(LABELS[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in results["summary"].items():
        cells = []
        for c in cols:
            x = row[c]
            if "mean" not in x:
                cells.append("n/a")
            elif c == "top1":
                cells.append(f"{100 * x['mean']:.1f}% ± {100 * x['sd']:.1f}{MARK[x['verdict']]}")
            else:
                cells.append(f"{x['mean']:.3f} ± {x['sd']:.3f}{MARK[x['verdict']]}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    """Bars with ± sd for four metrics, one bar per method; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summary = results["summary"]
    names = list(summary)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    colours = {
        "baseline": "grey",
        "better": "tab:green",
        "worse": "tab:red",
        "tie": "tab:blue",
        "n/a": "white",
    }
    for ax, metric in zip(axes.flat, ["top1", "kl", "rouge_l", "own_logprob"], strict=True):
        cells = [summary[n][metric] for n in names]
        if any("mean" not in c for c in cells):
            cells = [c if "mean" in c else {"mean": 0.0, "sd": 0.0, "verdict": "n/a"} for c in cells]
        scale = 100 if metric == "top1" else 1
        ax.barh(
            range(len(names)),
            [scale * c["mean"] for c in cells],
            xerr=[scale * c["sd"] for c in cells],
            color=[colours[c["verdict"]] for c in cells],
            capsize=3,
        )
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        better = "higher" if metric != "kl" else "lower"
        ax.set_title(f"{LABELS[metric]}{' (%)' if metric == 'top1' else ''}, {better} is better", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    s = results["settings"]
    fig.suptitle(
        f"{s['student_layers']}-layer student of SmolLM2-135M-Instruct, {s['steps']} steps x {s['batch_size']}, "
        f"{len(s['seeds'])} seeds; mean ± sd; green/red: better/worse than CE alone beyond the spreads, "
        "blue: tie",
        fontsize=8,
    )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return True


def main(argv=None) -> dict | None:
    a = parse_args(argv)
    if a.part:  # a worker of run_workers: its share, as JSON, and nothing else
        i, n = (int(x) for x in a.part.split("/"))
        jobs = worker_jobs(len(a.seed_list), len(a.method_list), n)[i]
        a.output_dir = str(Path(a.output_dir) / f"worker{i}")  # trainer scratch of its own
        part = run_part(
            a,
            jobs,
            teacher_figures=i == 0,
            log=lambda line: print(f"[worker {i + 1}/{n}] {line}", flush=True),
        )
        atomic_write_json(a.part_json, part)
        return None
    a.load_start = list(os.getloadavg())
    results = run_all(a)
    table = markdown(results)
    results["table"] = table
    atomic_write_json(a.json, results)
    plotted = plot(results, Path(a.plot))
    print("\n" + table)
    print(f"\nwall {results['wall_seconds']} s; results {a.json}" + (f"; plot {a.plot}" if plotted else ""))
    return results


if __name__ == "__main__":
    main()
