"""Draft models for speculative decoding: distilled against undistilled, at several depths.

For each depth, the embedded teacher (SmolLM2-135M-Instruct, 30 layers) is shrunk to that many
evenly spaced layers (the undistilled draft), and the same copy is distilled with
`configs/draft.yaml` (TVD, off-policy on the teacher's answers). Each draft is then measured
against the teacher on the held-out answers and prompts of data/smollm2_chatterbot:
- acceptance alpha = 1 - E[TVD(teacher, draft)], teacher-forced on the held-out answers, and on the
  draft's own greedy continuations of the held-out prompts; greedy acceptance = top-1 agreement;
- expected tokens per target call at draft lengths 1..8 from alpha;
- real greedy assisted generation (transformers, `assistant_model=draft`) against the teacher alone,
  interleaved prompt by prompt in one run, with the check that the text is identical.

    python benchmarks/bench_drafts.py [--depths 4 6 10] [--steps 40] [--prompts 8] [--quick]

Writes benchmarks/results/drafts.json and docs/img/drafts.png (speedup against draft size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from lmdistill.config import load_config
from lmdistill.data import load_records, pad_id, tokenize_records
from lmdistill.eval.scoring import score_tokens
from lmdistill.eval.speculative import assisted_speedup, block_efficiency, scores_on_own_greedy
from lmdistill.models import (
    check_vocab,
    count_parameters,
    load_model,
    load_teacher,
    load_tokenizer,
    shrink_model,
)
from lmdistill.training.run import run

ROOT = Path(__file__).parent.parent
TEACHER = "smollm2-135m"
HELDOUT = ROOT / "data" / "smollm2_chatterbot" / "heldout.jsonl"


def prompts_of(rows: list[dict], tokenizer, n: int) -> list[str]:
    """The held-out conversations up to the assistant's turn, as the chat template writes them."""
    out = []
    for row in rows[:n]:
        user = [m for m in row["messages"] if m["role"] != "assistant"]
        out.append(tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True))
    return out


def measure(name, draft, teacher, tokenizer, features, prompts, vocab, a) -> dict:
    t0 = time.time()
    scores = score_tokens(draft, features, vocab=vocab, pad_token_id=pad_id(tokenizer), teacher=teacher)
    own = scores_on_own_greedy(
        teacher, draft, tokenizer, prompts, vocab=vocab, max_new_tokens=a.max_new_tokens
    )
    own_alpha = own.acceptance
    speed = assisted_speedup(
        teacher, draft, tokenizer, prompts, max_new_tokens=a.max_new_tokens, draft_tokens=a.draft_tokens
    )
    row = {
        "draft": name,
        "layers": draft.config.num_hidden_layers,
        "parameters": count_parameters(draft),
        "alpha_teacher_forced": scores.acceptance,
        "alpha_own_greedy": own_alpha,
        "own_greedy_tokens": own.tokens,
        "greedy_acceptance_top1": scores.top1,
        "greedy_acceptance_top1_own": own.top1,
        "kl": scores.kl,
        "heldout_tokens": scores.tokens,
        "tokens_per_target_call": {g: block_efficiency(scores.acceptance, g) for g in range(1, 9)},
        "assisted": speed.as_dict(),
        "seconds": round(time.time() - t0, 1),
    }
    print(
        f"{name}: alpha {scores.acceptance:.3f} (own greedy {own_alpha:.3f}), top-1 {scores.top1:.3f}; "
        f"assisted {speed.assisted_tokens_per_s:.1f} vs target {speed.target_tokens_per_s:.1f} tokens/s "
        f"= x{speed.speedup:.2f}; identical {speed.identical}/{speed.prompts}",
        flush=True,
    )
    return row


def plot(rows: list[dict], path: Path, threads: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("undistilled", "o"), ("distilled", "s")):
        pts = sorted(
            (r["parameters"] / 1e6, r["assisted"]["speedup"]) for r in rows if r["draft"].startswith(kind)
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=marker, label=kind)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("draft parameters (M)")
    ax.set_ylabel("greedy assisted speedup vs teacher alone")
    ax.set_title(f"Drafts of SmolLM2-135M-Instruct, CPU, {threads} torch thread(s)")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 6, 10])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=24, help="held-out answers scored teacher-forced")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)"
    )
    ap.add_argument("--quick", action="store_true", help="2 steps, 2 prompts, one depth: a smoke run")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "drafts.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "drafts.png"))
    a = ap.parse_args()
    if a.quick:
        a.depths, a.steps, a.prompts, a.heldout, a.max_new_tokens = [4], 2, 2, 4, 8
    torch.set_num_threads(a.threads)
    start = time.time()
    teacher = load_teacher(TEACHER).eval()
    tokenizer = load_tokenizer(TEACHER)
    vocab = check_vocab(tokenizer, tokenizer, teacher, teacher)
    rows_in = load_records(str(HELDOUT))
    features, _ = tokenize_records(rows_in[: a.heldout], tokenizer, 256, source=str(HELDOUT))
    prompts = prompts_of(rows_in, tokenizer, a.prompts)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_drafts-") as tmp:
        for depth in a.depths:
            plain = shrink_model(teacher, num_layers=depth).eval()
            rows.append(
                measure(f"undistilled-{depth}", plain, teacher, tokenizer, features, prompts, vocab, a)
            )
            del plain
            t0 = time.time()
            cfg = load_config(
                ROOT / "configs" / "draft.yaml",
                [
                    f"student.num_layers={depth}",
                    f"train.max_steps={a.steps}",
                    f"train.output_dir={tmp}/d{depth}",
                    "train.save_steps=100000",
                    "data.eval=",
                ],
            )
            student_dir = run(cfg, log=lambda *_: None)
            train_s = time.time() - t0
            draft = load_model(str(student_dir)).eval()
            row = measure(f"distilled-{depth}", draft, teacher, tokenizer, features, prompts, vocab, a)
            row["train_seconds"] = round(train_s, 1)
            rows.append(row)
            del draft
    result = {
        "command": "python benchmarks/bench_drafts.py " + " ".join(os.sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": a.threads,
            "load_average_at_end": os.getloadavg(),
            "torch": torch.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
        "settings": {k: v for k, v in vars(a).items() if k not in ("json", "plot")},
        "seconds": round(time.time() - start),
        "rows": rows,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, Path(a.plot), a.threads)
    print(f"wrote {a.json} and {a.plot}")


def replot(json_path: str, png_path: str) -> None:
    """Redraw the plot from a results file (no measurement)."""
    result = json.loads(Path(json_path).read_text())
    plot(result["rows"], Path(png_path), result["machine"]["torch_threads"])


if __name__ == "__main__":
    main()
