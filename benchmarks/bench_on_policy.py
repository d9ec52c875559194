"""Proof on the embedded teacher: off-policy KD against on-policy distillation, same steps, several seeds.

Teacher SmolLM2-135M-Instruct; student: 10 of its layers (as configs/logits_kd.yaml), warmed by a
short off-policy KD run (shared by every variant), then `--steps` more optimizer steps per variant
and seed, settings from configs/on_policy.yaml:
    off_policy   KD on the data's (teacher-written) answers, distill.loss forward_kl, kd_ratio 0.9
    on_fkl       lmbda 1, divergence estimator, forward KL on the student's samples
    on_rkl       lmbda 1, divergence estimator, reverse KL
    sampled      lmbda 1, the sampled estimator (teacher log-prob of each sampled token only)
    gkd          lmbda 0.5, divergence estimator, JSD(beta 0.5), forward-KL KD on the other steps
Held-out prompts: chatterbot-corpus conversations whose prompt is not in the training data. Per run:
the teacher's mean log-prob per token of the student's own greedy answers (higher is better),
ROUGE-L of those answers against the teacher's greedy answers, and KL(teacher || student) and top-1
agreement on the teacher's answers. Results go to benchmarks/results/on_policy.json after every run
(so a stopped run keeps what it finished).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_on_policy.py [--steps 8 --seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "on_policy.json"

VARIANTS = {
    "off_policy": ["on_policy.lmbda=0", "distill.loss=forward_kl"],
    "on_fkl": ["on_policy.lmbda=1", "distill.loss=forward_kl"],
    "on_rkl": ["on_policy.lmbda=1", "distill.loss=reverse_kl"],
    "sampled": ["on_policy.lmbda=1", "on_policy.estimator=sampled"],
    "gkd": ["on_policy.lmbda=0.5", "distill.loss=jsd", "distill.beta=0.5"],
}
METRICS = ("teacher_logprob_own", "rouge_l", "kl", "top1", "repeated_bigrams")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per variant and seed")
    p.add_argument("--warm-steps", type=int, default=12, help="off-policy KD steps of the shared warm-up")
    p.add_argument("--warm-batch", type=int, default=8, help="warm-up batch size")
    p.add_argument(
        "--warm-lr", type=float, default=6e-4, help="warm-up learning rate (configs/logits_kd.yaml's)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--heldout", type=int, default=16, help="held-out prompts")
    p.add_argument("--max-new-tokens", type=int, default=24, help="answer length, sampled and greedy")
    p.add_argument("--batch", type=int, default=4, help="prompts per step after the warm-up")
    p.add_argument("--student-layers", type=int, default=10, help="teacher layers the student keeps")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--out", default=str(OUT))
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --out and do only the missing (variant, seed) pairs; the warm start "
        "is rebuilt (deterministic at 1 thread) and must score as recorded",
    )
    p.add_argument(
        "--table", metavar="RESULTS.json", help="print the markdown table of a results file and stop"
    )
    a = p.parse_args()
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from lmdistill.config import load_config
    from lmdistill.data import load_records
    from lmdistill.data.corpus import chatterbot_conversations
    from lmdistill.models import check_vocab, load_teacher, load_tokenizer, shrink_model
    from lmdistill.teachers.whitebox import InProcessTeacher
    from lmdistill.training.run import Models, make_trainer
    from lmdistill.training.sampling import prompt_features

    started = time.time()
    result = {
        "what": __doc__.splitlines()[0],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_start": os.getloadavg(),
        "settings": vars(a),
        "variants": {k: VARIANTS[k] for k in a.variants},
        "runs": [],
    }
    import transformers

    result["versions"]["transformers"] = transformers.__version__

    tok = load_tokenizer("smollm2-135m")
    teacher = load_teacher("smollm2-135m")
    base_student = shrink_model(teacher, num_layers=a.student_layers).float()
    vocab = check_vocab(tok, tok, teacher, base_student, teacher_name="teacher", student_name="student")

    train_rows = load_records(ROOT / "data/smollm2_chatterbot/train.jsonl")
    seen = {r["messages"][0]["content"].strip() for r in train_rows}
    held = [c["prompt"] for c in chatterbot_conversations() if c["prompt"] not in seen]
    held = list(dict.fromkeys(held))
    held = [
        held[round(i * (len(held) - 1) / (a.heldout - 1))] for i in range(a.heldout)
    ]  # spread over categories
    heldout = Heldout(teacher, tok, held, a.max_new_tokens, vocab)
    result["heldout"] = {"prompts": len(held), "teacher_own": heldout.teacher_own}
    print(f"held-out: {len(held)} prompts; teacher on its own answers {heldout.teacher_own}", flush=True)

    def cfg_for(overrides, steps, seed, out, batch, lr):
        return load_config(
            ROOT / "configs/on_policy.yaml",
            [
                *overrides,
                f"on_policy.max_new_tokens={a.max_new_tokens}",
                "on_policy.log_samples_every=0",
                f"train.max_steps={steps}",
                f"train.seed={seed}",
                f"train.learning_rate={lr}",
                f"train.per_device_train_batch_size={batch}",
                f"train.output_dir={out}",
                "train.logging_steps=1",
                "train.warmup_steps=0",
                "data.eval=null",
                "train.extra={save_strategy: 'no', use_cpu: true, disable_tqdm: true}",
            ],
        )

    feats = None

    def train(student, overrides, steps, seed, batch=a.batch, lr=a.lr):
        nonlocal feats
        with tempfile.TemporaryDirectory() as out:
            cfg = cfg_for(overrides, steps, seed, out, batch, lr)
            if feats is None:
                feats = prompt_features(
                    train_rows, tok, cfg.data.max_length, a.max_new_tokens, need_answers=True
                )
            models = Models(teacher, student, tok, vocab, InProcessTeacher(teacher, "smollm2-135m"))
            trainer = make_trainer(cfg, models, feats, log=lambda *_: None)
            t0 = time.time()
            trainer.train()
            wall = time.time() - t0
        logs = [h for h in trainer.state.log_history if "loss" in h]
        timing = {
            k: round(sum(h.get(f"time_{k}_s", 0.0) for h in logs), 2)
            for k in ("sampling", "teacher", "student")
        }
        return {"train_wall_s": round(wall, 1), "time_split_s": timing, "log": logs}

    warm = copy.deepcopy(base_student).train()
    t0 = time.time()
    warm_info = train(warm, VARIANTS["off_policy"], a.warm_steps, 1000, a.warm_batch, a.warm_lr)
    result["warmup"] = {"steps": a.warm_steps, "wall_s": round(time.time() - t0, 1), **heldout.evaluate(warm)}
    done = set()
    if a.resume and Path(a.out).is_file():
        old = json.loads(Path(a.out).read_text())
        same = all(old["warmup"][m] == result["warmup"][m] for m in METRICS if m in old["warmup"])
        if not same:
            raise SystemExit(
                f"the rebuilt warm start differs from {a.out}'s: {result['warmup']} vs {old['warmup']}"
            )
        result["runs"] = old["runs"]
        result["resumed"] = {
            "from": old["date"],
            "runs_kept": len(old["runs"]),
            "wall_s_before": old["total_wall_s"],
        }
        done = {(r["variant"], r["seed"]) for r in old["runs"]}
    result["before_warmup"] = heldout.evaluate(base_student)
    print("before warm-up", result["before_warmup"], "\nafter warm-up", result["warmup"], flush=True)
    del warm_info
    _write(a.out, result)

    for seed in a.seeds:
        for name in a.variants:
            if (name, seed) in done:
                continue
            student = copy.deepcopy(warm).train()
            t0 = time.time()
            info = train(student, VARIANTS[name], a.steps, seed)
            scores = heldout.evaluate(student)
            run = {"variant": name, "seed": seed, **scores, **{k: v for k, v in info.items() if k != "log"}}
            run["wall_s"] = round(time.time() - t0, 1)
            run["losses"] = [
                {
                    k: h[k]
                    for k in ("loss", "kd", "on_policy_kd", "on_policy_reverse_kl", "on_policy_steps")
                    if k in h
                }
                for h in info["log"]
            ]
            result["runs"].append(run)
            result["summary"] = summary(result["runs"])
            result["load_average_end"] = os.getloadavg()
            result["total_wall_s"] = round(time.time() - started, 1)
            _write(a.out, result)
            print(
                f"{name} seed {seed}: {scores} ({run['wall_s']} s, split {info['time_split_s']})", flush=True
            )
    print(json.dumps(result["summary"], indent=1))


class Heldout:
    """Held-out prompts, the teacher's greedy answers to them, and the per-model figures."""

    def __init__(self, teacher, tok, prompts, max_new_tokens, vocab):
        from lmdistill.eval.own_answers import answer_features, teacher_logprob_of_answers
        from lmdistill.models.generation import ChatGenerator
        from lmdistill.teachers.types import Request, Sampling

        self.teacher, self.tok, self.max_new, self.vocab = teacher, tok, max_new_tokens, vocab
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0)
        self.requests = [Request.chat([{"role": "user", "content": p}], sampling) for p in prompts]
        gen = ChatGenerator(teacher, tok, batch_size=len(prompts))
        self.rendered = [gen.prompt_text(r) for r in self.requests]
        self.teacher_answers = [r.text for r in gen.generate(self.requests)]
        self.teacher_feats = answer_features(tok, self.rendered, self.teacher_answers)
        own = teacher_logprob_of_answers(teacher, tok, self.rendered, self.teacher_answers)
        self.teacher_own = round(own.logprob_per_token, 4)

    def evaluate(self, student) -> dict:
        from lmdistill.data import pad_id
        from lmdistill.eval.metrics import generation_agreement
        from lmdistill.eval.own_answers import teacher_logprob_of_answers
        from lmdistill.eval.scoring import score_tokens
        from lmdistill.models.generation import ChatGenerator

        was = student.training
        answers = [
            r.text
            for r in ChatGenerator(student, self.tok, batch_size=len(self.requests)).generate(self.requests)
        ]
        own = teacher_logprob_of_answers(self.teacher, self.tok, self.rendered, answers)
        agree = generation_agreement(answers, self.teacher_answers)
        scores = score_tokens(
            student,
            self.teacher_feats,
            vocab=self.vocab,
            pad_token_id=pad_id(self.tok),
            teacher=self.teacher,
        ).as_dict()
        student.train(was)
        ids = [self.tok(x, add_special_tokens=False)["input_ids"] for x in answers]
        return {
            "teacher_logprob_own": round(own.logprob_per_token, 4),
            "rouge_l": round(agree["rouge_l"], 4),
            "kl": round(scores["kl"], 4),
            "top1": round(scores["top1"], 4),
            "repeated_bigrams": round(repeated_bigrams(ids), 4),
            "answer_example": answers[0],
        }


def repeated_bigrams(answers: list[list[int]]) -> float:
    """Share of token bigrams that repeat an earlier bigram of the same answer, pooled over answers: 0
    for text that never repeats itself, near 1 for "to to to ..." (a degenerate answer the teacher may
    still find predictable)."""
    seen_total = repeats = 0
    for ids in answers:
        seen = set()
        for pair in itertools.pairwise(ids):
            repeats += pair in seen
            seen.add(pair)
            seen_total += 1
    return repeats / seen_total if seen_total else 0.0


def summary(runs: list[dict]) -> dict:
    """Per variant and metric: mean, sample standard deviation, min, max over seeds."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        rows = [r for r in runs if r["variant"] == name]
        out[name] = {"seeds": len(rows)}
        for m in METRICS:
            v = [r[m] for r in rows if m in r]
            if not v:
                continue
            out[name][m] = {
                "mean": round(statistics.fmean(v), 4),
                "sd": round(statistics.stdev(v), 4) if len(v) > 1 else None,
                "min": min(v),
                "max": max(v),
            }
        out[name]["train_wall_s_mean"] = round(statistics.fmean(r["train_wall_s"] for r in rows), 1)
    return out


def table(result: dict) -> str:
    """Markdown: one row per variant, mean ± sample sd over seeds (and the warm start, the teacher)."""
    names = {
        "teacher_logprob_own": "teacher log-prob of own answers (nats/token, higher better)",
        "rouge_l": "ROUGE-L vs teacher answers",
        "kl": "KL(teacher ‖ student) on teacher text",
        "top1": "top-1 agreement on teacher text",
        "repeated_bigrams": "repeated bigrams in own answers",
    }
    metrics = [m for m in METRICS if any(m in r for r in result["runs"])]
    lines = ["| variant | seeds | " + " | ".join(names[m] for m in metrics) + " |"]
    lines.append("|---" * (len(metrics) + 2) + "|")
    warm = result["warmup"]
    lines.append(
        "| warm start | - | " + " | ".join(f"{warm[m]:.3f}" if m in warm else "-" for m in metrics) + " |"
    )
    for name, s in result["summary"].items():
        cells = []
        for m in metrics:
            v = s[m]
            cells.append(f"{v['mean']:.3f} ± {v['sd']:.3f}" if v["sd"] is not None else f"{v['mean']:.3f}")
        lines.append(f"| {name} | {s['seeds']} | " + " | ".join(cells) + " |")
    lines.append(f"| teacher | - | {result['heldout']['teacher_own']:.3f} |" + " |" * (len(metrics) - 1))
    return "\n".join(lines)


def _write(path, result) -> None:
    from lmdistill.io import atomic_write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(path), result)


if __name__ == "__main__":
    main()
