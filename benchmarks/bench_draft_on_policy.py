"""On-policy draft distillation (DistillSpec) against the off-policy draft recipe, over seeds.

DistillSpec (Zhou et al. 2024) finds that a draft trained on its OWN samples, scored by the target
with TVD, gives the best acceptance: a draft drafts from its own tokens, so that is where it must
agree with the target. Here both drafts start from the same 6-of-30-layer copy of the embedded
teacher (SmolLM2-135M-Instruct) and train the same optimizer steps on the prompts of
data/smollm2_chatterbot/train.jsonl with TVD (configs/draft.yaml's loss and kd_ratio):
- off-policy: on the teacher-written answers of the rows (the draft recipe);
- on-policy: every step on the draft's own samples of the same prompts (GKD lmbda 1, temperature 1),
  scored by the live teacher (the draft recipe with `on_policy.lmbda: 1`).
Measured on held-out prompts (data/smollm2_chatterbot/heldout.jsonl): acceptance alpha = 1 - E[TVD]
on the draft's own greedy continuations, greedy acceptance (top-1 agreement there), expected tokens
per target call at draft length 4 from alpha, and alpha teacher-forced on the held-out answers.
Mean and sample sd over seeds; a gap inside both spreads is a tie.

    python benchmarks/bench_draft_on_policy.py               # 3 seeds (about 20 min here)
    python benchmarks/bench_draft_on_policy.py --quick       # a smoke run

Writes benchmarks/results/draft_on_policy.json (or --json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_quality  # noqa: E402

from lmdistill.data import load_records, pad_id  # noqa: E402
from lmdistill.eval.compare import summarise  # noqa: E402
from lmdistill.eval.quality import Method, PrecomputedTeacher, indexed, train_student  # noqa: E402
from lmdistill.eval.scoring import score_tokens  # noqa: E402
from lmdistill.eval.speculative import block_efficiency, scores_on_own_greedy  # noqa: E402
from lmdistill.io import atomic_write_json  # noqa: E402
from lmdistill.models import check_vocab, load_teacher, load_tokenizer, shrink_model  # noqa: E402
from lmdistill.training.sampling import prompt_features  # noqa: E402

ROOT = HERE.parent
DATA = ROOT / "data" / "smollm2_chatterbot"
TEACHER = "smollm2-135m"
KD = 0.9  # configs/draft.yaml's kd_ratio
GAMMA = 4  # draft length of the tokens-per-call column
METHODS = [
    Method("off-policy TVD (configs/draft.yaml)", "tvd", KD),
    Method("on-policy TVD (DistillSpec, lmbda 1)", "tvd", KD, on_policy={"lmbda": 1.0}),
    # Remedies tried because on-policy lost (issue 25): half the steps on the draft's own samples ...
    Method("on-policy TVD, lmbda 0.5 (mixed)", "tvd", KD, on_policy={"lmbda": 0.5}),
    # ... and on-policy only after off-policy steps: lmbda rises linearly from 0 to 1 over the 40 steps.
    Method(
        "on-policy TVD, lmbda 0 -> 1 (linear)",
        "tvd",
        KD,
        on_policy={"lmbda": 1.0, "schedule": "linear", "ramp_steps": 40},
    ),
]
METRICS = ["alpha_own", "greedy_accept_own", "tokens_per_call", "alpha_heldout"]
HIGHER = dict.fromkeys(METRICS, True)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 steps, 2 seeds, 2 prompts: a smoke run")
    ap.add_argument("--teacher", default=TEACHER, help="target model (short name or folder)")
    ap.add_argument("--draft-layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--prompts", type=int, default=16, help="held-out prompts the drafts continue")
    ap.add_argument("--heldout", type=int, default=24, help="held-out answers scored teacher-forced")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens sampled / continued per prompt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--methods", help="method names separated by ; (default: all; the first must be the off-policy one)"
    )
    ap.add_argument("--data", default=str(DATA), help="folder with train.jsonl and heldout.jsonl")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "draft_on_policy.json"))
    ap.add_argument("--output-dir", default="runs/bench_draft_on_policy", help="trainer scratch")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    if a.quick:
        a.steps, a.batch_size, a.seeds, a.prompts, a.heldout, a.max_new_tokens = 2, 2, "0,1", 2, 2, 8
    names = [m.name for m in METHODS]
    wanted = a.methods.split(";") if a.methods else names
    if set(wanted) - set(names) or wanted[0] != names[0]:
        ap.error(f"--methods: known names are {'; '.join(names)}; {names[0]!r} first (the baseline)")
    a.seed_list = [int(s) for s in a.seeds.split(",")]
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    load_start, started = list(os.getloadavg()), time.time()
    torch.set_num_threads(a.threads)
    tokenizer, teacher = load_tokenizer(a.teacher), load_teacher(a.teacher).eval()
    train_rows = load_records(str(Path(a.data) / "train.jsonl"))
    held_rows = load_records(str(Path(a.data) / "heldout.jsonl"))
    train_f = indexed(prompt_features(train_rows, tokenizer, 256, a.max_new_tokens, source="train"))
    held_f = prompt_features(held_rows[: a.heldout], tokenizer, 256, a.max_new_tokens, source="heldout")
    prompts = [
        tokenizer.apply_chat_template(
            [m for m in row["messages"] if m["role"] != "assistant"],
            tokenize=False,
            add_generation_prompt=True,
        )
        for row in held_rows[: a.prompts]
    ]
    draft0 = shrink_model(teacher, num_layers=a.draft_layers)
    vocab = check_vocab(tokenizer, tokenizer, teacher, draft0)
    precomputed = PrecomputedTeacher(teacher, train_f, pad_id(tokenizer))
    methods = [
        Method(**{**m.__dict__, "on_policy": {**m.on_policy, "max_new_tokens": a.max_new_tokens}})
        if m.on_policy
        else m
        for m in METHODS
        if m.name in (a.methods.split(";") if a.methods else [m.name for m in METHODS])
    ]
    runs = []
    for seed in a.seed_list:
        for method in methods:
            draft, seconds = train_student(
                method, draft0, teacher, tokenizer, vocab, train_f,
                steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=seed,
                output_dir=a.output_dir, precomputed=precomputed,
            )  # fmt: skip
            own = scores_on_own_greedy(
                teacher, draft, tokenizer, prompts, vocab=vocab, max_new_tokens=a.max_new_tokens
            )
            held = score_tokens(draft, held_f, vocab=vocab, pad_token_id=pad_id(tokenizer), teacher=teacher)
            row = {
                "method": method.name,
                "seed": seed,
                "alpha_own": own.acceptance,
                "greedy_accept_own": own.top1,
                "tokens_per_call": block_efficiency(own.acceptance, GAMMA),
                "alpha_heldout": held.acceptance,
                "own_tokens": own.tokens,
                "train_seconds": round(seconds, 1),
            }
            runs.append(row)
            print(row, flush=True)
    results = {
        "benchmark": "on-policy draft distillation (bench_draft_on_policy.py)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_draft_on_policy.py", *a.argv]),
        "machine": bench_quality.machine(),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
        "settings": {
            k: getattr(a, k)
            for k in (
                "teacher",
                "draft_layers",
                "steps",
                "batch_size",
                "lr",
                "prompts",
                "heldout",
                "max_new_tokens",
            )
        }
        | {
            "seeds": a.seed_list,
            "threads": a.threads,
            "draft_length_gamma": GAMMA,
            "train_rows": len(train_f),
        },
        "runs": runs,
        "summary": summarise(runs, METRICS, baseline=METHODS[0].name, higher_is_better=HIGHER),
        "wall_seconds": round(time.time() - started, 1),
    }
    atomic_write_json(a.json, results)
    for name, row in results["summary"].items():
        cells = ", ".join(f"{k} {v['mean']:.3f} ± {v['sd']:.3f} ({v['verdict']})" for k, v in row.items())
        print(f"{name}: {cells}")
    return results


if __name__ == "__main__":
    main()
