"""`lmdistill demo`: the main job on the embedded default, end to end on a laptop CPU.

SmolLM2-135M-Instruct (30 layers) answers real chat prompts from chatterbot-corpus; a student with a
third of its layers, initialised from it, learns from those answers twice at equal steps: once with
logits KD (CE + forward KL to the teacher's distribution), once with CE only. A before/after table on
held-out prompts reports top-1 agreement with the teacher, KL to it and perplexity.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lmdistill.config import DistillConfig, RunConfig, TrainConfig
from lmdistill.data import chatterbot_conversations, pad_id, split_train_heldout, tokenize_records
from lmdistill.eval.scoring import score_tokens
from lmdistill.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from lmdistill.models import (
    cache_dir,
    check_vocab,
    describe_sizes,
    load_teacher,
    load_tokenizer,
    shrink_model,
)
from lmdistill.teachers.cache import CachedTeacher, ResponseCache
from lmdistill.teachers.local import LocalTeacher
from lmdistill.teachers.types import Request, Sampling
from lmdistill.training.run import Models, make_trainer, save_student

TEACHER = "smollm2-135m"


@dataclass
class DemoConfig:
    """The demo's knobs; defaults finish in under 10 minutes on 2 CPU cores."""

    output_dir: str = "runs/demo"
    steps: int | None = None  # optimizer steps per training run (default 40; --fast: 4)
    fast: bool = False  # smoke test: few prompts, few steps
    train_prompts: int = 224
    heldout_prompts: int = 40
    max_new_tokens: int = 40
    student_layers: int = 10
    batch_size: int = 8
    learning_rate: float = 6e-4
    kd_ratio: float = 0.9
    seed: int = 0

    def resolved(self) -> DemoConfig:
        c = copy.copy(self)
        if c.fast:
            c.train_prompts, c.heldout_prompts, c.max_new_tokens = 16, 8, 16
        if c.steps is None:
            c.steps = 4 if c.fast else 40
        return c


def teacher_responses(teacher, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 32):
    """Greedy teacher answers through the response cache (a rerun generates only what is missing).

    Returns a list of dicts {prompt, response, finished} in the order of `prompts`; `finished` is False
    where the answer was cut at max_new_tokens.
    """
    local = LocalTeacher(teacher, tokenizer, name=TEACHER, batch_size=batch_size)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    requests = [Request.chat([{"role": "user", "content": p}], sampling) for p in prompts]
    answers = [None] * len(requests)
    with ResponseCache(cache_dir() / "demo" / "responses.sqlite") as cache:
        cached = CachedTeacher(local, cache)
        with tqdm(total=len(requests), desc="teacher answers", unit="prompt") as bar:
            for i, response in cached.generate_iter(requests):
                answers[i] = response
                bar.update(1)
    return [
        {"prompt": p, "response": a.text, "finished": a.finish_reason == "stop"}
        for p, a in zip(prompts, answers, strict=True)
    ]


def _as_messages(rows):
    return [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["response"]},
            ]
        }
        for r in rows
    ]


def _table(rows: list[tuple[str, dict]]) -> str:
    lines = [
        "| model | top-1 agreement with teacher | KL(teacher ‖ model) nats/token | perplexity |",
        "|---|---:|---:|---:|",
    ]
    for name, m in rows:
        lines.append(f"| {name} | {m['top1']:.1%} | {m['kl']:.3f} | {m['perplexity']:.2f} |")
    return "\n".join(lines)


def run_demo(config: DemoConfig | None = None, log=print) -> dict:
    """Run the demo; returns the results dict also written to output_dir/results.json."""
    c = (config or DemoConfig()).resolved()
    out = Path(c.output_dir)
    started = time.time()
    torch.manual_seed(c.seed)

    log(f"[1/5] teacher: {TEACHER} (SmolLM2-135M-Instruct)")
    tokenizer = load_tokenizer(TEACHER)
    teacher = load_teacher(TEACHER)

    log("[2/5] data: chatterbot-corpus prompts, answered by the teacher (greedy)")
    convs = chatterbot_conversations()
    prompts = list(dict.fromkeys(cv["prompt"] for cv in convs))
    train_p, held_p = split_train_heldout(prompts, heldout_fraction=0.2, seed=c.seed)
    train_p, held_p = train_p[: c.train_prompts], held_p[: c.heldout_prompts]
    answers = teacher_responses(teacher, tokenizer, train_p + held_p, max_new_tokens=c.max_new_tokens)
    # Answers cut at max_new_tokens are kept: they are real teacher text, and KD learns from every token.
    kept = [a for a in answers if a["response"]]
    cut = sum(not a["finished"] for a in kept)
    train_rows = _as_messages(a for a in kept if a["prompt"] in set(train_p))
    held_rows = _as_messages(a for a in kept if a["prompt"] in set(held_p))
    atomic_write_jsonl(out / "data" / "train.jsonl", train_rows)
    atomic_write_jsonl(out / "data" / "heldout.jsonl", held_rows)
    log(
        f"      {len(answers)} answers ({cut} cut at {c.max_new_tokens} tokens, {len(answers) - len(kept)} "
        f"empty and dropped); train {len(train_rows)}, held-out {len(held_rows)}"
    )
    train_f, _ = tokenize_records(train_rows, tokenizer, 256, source="demo train")
    held_f, _ = tokenize_records(held_rows, tokenizer, 256, source="demo held-out")

    log(f"[3/5] student: {c.student_layers} of the teacher's 30 layers, copied")
    student0 = shrink_model(teacher, num_layers=c.student_layers)
    vocab = check_vocab(tokenizer, tokenizer, teacher, student0)
    log(describe_sizes(teacher, student0))
    pad = pad_id(tokenizer)

    def evaluate(model) -> dict:
        return score_tokens(model, held_f, vocab=vocab, pad_token_id=pad, teacher=teacher).as_dict()

    results: dict = {"models": {}, "config": c.__dict__}
    results["models"]["teacher"] = evaluate(teacher)
    results["models"]["student before training"] = evaluate(student0)

    runs = {"KD (CE + forward KL)": c.kd_ratio, "CE only (no KD)": 0.0}
    for i, (name, kd_ratio) in enumerate(runs.items()):
        log(f"[{4 + i}/5] train {name}: {c.steps} steps, batch {c.batch_size}")
        student = copy.deepcopy(student0).train()
        cfg = RunConfig(
            distill=DistillConfig(loss="forward_kl", kd_ratio=kd_ratio),
            train=TrainConfig(
                output_dir=str(out / ("kd" if kd_ratio else "ce")),
                max_steps=c.steps,
                per_device_train_batch_size=c.batch_size,
                learning_rate=c.learning_rate,
                lr_scheduler_type="cosine",
                warmup_steps=max(1, c.steps // 10),
                logging_steps=max(1, c.steps // 4),
                save_steps=10**9,
                seed=c.seed,
                extra={"use_cpu": not torch.cuda.is_available(), "save_strategy": "no"},
            ),
        )
        t0 = time.time()
        trainer = make_trainer(cfg, Models(teacher, student, tokenizer, vocab), train_f)
        trainer.train()
        seconds = time.time() - t0
        results["models"][f"student, {name}"] = {**evaluate(student), "train_seconds": round(seconds, 1)}
        if kd_ratio:
            save_student(student, tokenizer, out / "student")

    table = _table(list(results["models"].items()))
    results["seconds"] = round(time.time() - started, 1)
    report = (
        f"# lmdistill demo\n\nTeacher SmolLM2-135M-Instruct (30 layers) -> student with {c.student_layers} "
        f"layers; {c.steps} steps of batch {c.batch_size} each; held-out: {len(held_f)} teacher answers, "
        f"{results['models']['teacher']['tokens']} target tokens.\n\n{table}\n\n"
        f"Total time {results['seconds']} s. Student folder: {out / 'student'}\n"
    )
    atomic_write_text(out / "report.md", report)
    atomic_write_json(out / "results.json", results)
    log("\n" + table)
    log(
        f"\nstudent (KD) saved to {out / 'student'}; report {out / 'report.md'}; {results['seconds']} s in all"
    )
    return results
