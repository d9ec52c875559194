"""Proof of issue 14, sized for one busy CPU thread: does distilling Gemma 3 270M across tokenizers
beat CE alone for a shallow SmolLM2-derived student? Held-out bits per byte, 3 seeds.

- Text: the Python language reference shipped with CPython itself (`pydoc_data.topics`, the help()
  topics; English prose with code), so it installs offline with any Python. Paragraphs of the topics
  whose sorted index is a multiple of 5 are held out; training rows are paragraphs of the others.
- Teacher: `gemma3-270m` (base, vocabulary 262,144). Student: SmolLM2-135M (`smollm2-135m`, vocabulary
  49,152) shrunk to `--layers` evenly spaced layers (`lmdistill.models.shrink_model`), the same starting
  weights for every run (`--layers 30`: the pretrained model itself); seeds change the data order.
- Methods, same steps, batch, learning rate and data: CE alone (kd_ratio 0); sequence-level KD
  (`seqkd`, the black-box route: CE alone on the teacher's own text; each training paragraph's first
  `--prefix-words` words, continued greedily by the teacher for `--gen-tokens` of its tokens, with the
  KV cache, batched and left-padded; a base model, so plain text, no chat template; generations are
  cached under ~/.cache/lmdistill/xtok_seqkd/ and copied into the results); ULD
  (distill.cross_tokenizer=uld); byte-aligned (distill.cross_tokenizer=byte_aligned, loss `--loss`).
  Training goes through `DistillTrainer` and `CrossTokenizerStep` exactly as `lmdistill train` does; the
  only shortcut is that the teacher's final hidden states for a training text are computed once and
  reused by later runs (a `TeacherSource` that caches `InProcessTeacher`'s answers; same numbers).
- Measured: held-out bits per byte (`lmdistill.eval.bits_per_byte`) of the student before training,
  after each run, and of the teacher; mean and spread (min..max, sample std) over seeds.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 5 python benchmarks/bench_xtok_quality.py \\
        --json benchmarks/results/xtok_quality.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def paragraphs(held_out: bool) -> list[str]:
    """Prose paragraphs (>= 200 characters, no code-only blocks) of the training or held-out topics."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    chosen = [n for i, n in enumerate(names) if (i % 5 == 0) == held_out]
    out = []
    for name in chosen:
        for para in re.split(r"\n\s*\n", topics[name]):
            para = para.strip()
            if len(para) >= 200 and sum(c.isalpha() for c in para) > 0.6 * len(para):
                out.append(para)
    return out


def prefix_of(text: str, words: int) -> str:
    """The first `words` whitespace-separated words of `text`, with its own spacing and line breaks."""
    m = re.match(rf"\s*(?:\S+\s+){{{words - 1}}}\S+", text)
    return m.group(0) if m else text


@torch.no_grad()
def teacher_continuations(
    model, tok, prefixes: list[str], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy plain-text continuation of each prefix by a base model: left-padded batches, the KV cache,
    its own tokenizer (with its BOS); returns only the new text (special tokens dropped), one per prefix."""
    side, tok.padding_side = tok.padding_side, "left"
    out_texts: list[str] = []
    try:
        for start in range(0, len(prefixes), batch_size):
            enc = tok(prefixes[start : start + batch_size], return_tensors="pt", padding=True)
            seq = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                use_cache=True,
            )
            new = seq[:, enc["input_ids"].shape[1] :]
            out_texts += tok.batch_decode(new, skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return out_texts


def seqkd_rows(rows: list[dict], args, teacher, t_tok, log) -> tuple[list[dict], dict]:
    """Training rows for sequence-level KD: prefix + the teacher's greedy continuation, from a cache
    file keyed by the teacher, the prefixes and the generation length (computed once, then reused)."""
    from lmdistill.io import atomic_write_json

    prefixes = [prefix_of(r["text"], args.prefix_words) for r in rows]
    key = hashlib.sha256(
        json.dumps(["gemma3-270m", "greedy", args.gen_tokens, prefixes]).encode("utf-8")
    ).hexdigest()[:16]
    path = Path(args.gen_cache).expanduser() / f"{key}.json"
    info = {"cache_file": str(path), "prefix_words": args.prefix_words, "max_new_tokens": args.gen_tokens}
    if path.exists():
        conts = json.loads(path.read_text())["continuations"]
        info["seconds"], info["cached"] = None, True
        log(f"seqkd: {len(conts)} teacher continuations from {path}")
    else:
        start = time.perf_counter()
        conts = teacher_continuations(teacher, t_tok, prefixes, args.gen_tokens)
        info["seconds"], info["cached"] = round(time.perf_counter() - start, 1), False
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"teacher": "gemma3-270m", "prefixes": prefixes, "continuations": conts})
        log(f"seqkd: generated {len(conts)} teacher continuations in {info['seconds']} s -> {path}")
    info["examples"] = [p + c for p, c in zip(prefixes, conts, strict=True)]
    return [{"text": t} for t in info["examples"]], info


class CachedTeacher:
    """`InProcessTeacher` whose answers for a row are remembered by the row's token ids (same numbers:
    right padding never reaches a real row's hidden states)."""

    def __init__(self, inner):
        self.inner, self.name, self.cache = inner, inner.name, {}

    def to(self, device):
        self.inner.to(device)
        return self

    @torch.no_grad()
    def score(self, query):
        from lmdistill.chunked import Head
        from lmdistill.models.forward import final_hidden
        from lmdistill.teachers.whitebox import TeacherScores

        rows = []
        for b in range(query.input_ids.shape[0]):
            n = int(query.attention_mask[b].sum())
            key = tuple(query.input_ids[b, :n].tolist())
            if key not in self.cache:
                ids = query.input_ids[b : b + 1, :n]
                self.cache[key] = final_hidden(self.inner.model, ids, torch.ones_like(ids))[0]
            rows.append(self.cache[key][query.positions[b, :n]])
        return TeacherScores(hidden=torch.cat(rows), head=Head.of(self.inner.model, trainable=False))


def train_one(method: str, seed: int, args, teacher_src, teacher_tok, s_tok, student_dir, rows, log) -> dict:
    from transformers import set_seed

    from lmdistill.chunked import LossSpec
    from lmdistill.config import DistillConfig, TrainConfig
    from lmdistill.data import DistillCollator, pad_id, tokenize_records
    from lmdistill.models import load_model
    from lmdistill.training.run import training_arguments
    from lmdistill.training.trainer import DistillTrainer
    from lmdistill.training.xtok_step import build_step
    from lmdistill.xtok.data import pair_features

    set_seed(seed)
    student = load_model(student_dir).train()
    t = TrainConfig(
        output_dir=str(Path(args.work) / f"{method}-{seed}"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type=args.schedule,
        seed=seed,
        logging_steps=max(1, args.steps // 4),
        save_steps=10**9,
        extra={"use_cpu": True, "disable_tqdm": True, "save_strategy": "no", "dataloader_num_workers": 0},
    )
    if method in ("ce", "seqkd"):  # seqkd: CE alone, on the teacher's generations (rows given)
        distill = DistillConfig(kd_ratio=0.0)
        feats, _ = tokenize_records(rows, s_tok, args.max_length)
        step, teacher, collator = None, None, DistillCollator(pad_token_id=pad_id(s_tok))
        spec = LossSpec.from_config(distill, len(s_tok))
    else:
        distill = DistillConfig(loss=args.loss, kd_ratio=args.kd_ratio, cross_tokenizer=method)
        feats, _ = pair_features(rows, s_tok, teacher_tok, args.max_length)
        step = build_step(distill, s_tok, teacher_tok, student, teacher_src.inner.model, log=log)
        teacher, collator = teacher_src, step.collator(pad_id(s_tok))
        spec = LossSpec.from_config(distill, step.student_vocab)
    trainer = DistillTrainer(
        model=student,
        teacher=teacher,
        spec=spec,
        xtok=step,
        args=training_arguments(t),
        train_dataset=feats,
        data_collator=collator,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = [e for e in trainer.state.log_history if "loss" in e]
    return {"student": student.eval(), "train_seconds": seconds, "log": history}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--methods",
        nargs="+",
        default=["ce", "uld", "byte_aligned"],
        choices=["ce", "seqkd", "uld", "byte_aligned"],
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=32, help="student tokens per training example")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--schedule", default="constant", help="learning-rate schedule (transformers name), no warm-up"
    )
    p.add_argument("--kd-ratio", type=float, default=0.5)
    p.add_argument("--loss", default="forward_kl", help="byte_aligned's divergence on shared tokens")
    p.add_argument("--layers", type=int, default=4, help="student: SmolLM2-135M layers kept (of 30)")
    p.add_argument("--heldout-chars", type=int, default=2000)
    p.add_argument("--eval-length", type=int, default=128, help="tokens per held-out piece")
    p.add_argument(
        "--prefix-words", type=int, default=8, help="seqkd: words of each paragraph given as prompt"
    )
    p.add_argument("--gen-tokens", type=int, default=32, help="seqkd: teacher tokens generated per prompt")
    p.add_argument("--gen-cache", default="~/.cache/lmdistill/xtok_seqkd", help="seqkd: generations cache")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument(
        "--summarise", metavar="JSON", help="only recompute the summary of a results file in place"
    )
    args = p.parse_args()
    if args.summarise:
        from lmdistill.io import atomic_write_json

        result = json.loads(Path(args.summarise).read_text())
        result["summary"] = summarise(result["runs"], result["settings"]["methods"])
        atomic_write_json(args.summarise, result)
        print(json.dumps(result["summary"], indent=2))
        return
    torch.set_num_threads(args.threads)
    log = lambda *a: print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)  # noqa: E731

    from lmdistill.eval.bits_per_byte import bits_per_byte, split_text
    from lmdistill.models import load_teacher, load_tokenizer, shrink_model
    from lmdistill.teachers.whitebox import InProcessTeacher

    wall = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="xtok_quality_")
    args.work = args.work or scratch.name
    n_train = args.steps * args.batch
    rows = [{"text": t} for t in paragraphs(held_out=False)[:n_train]]
    held = ""
    for para in paragraphs(held_out=True):
        if len(held) >= args.heldout_chars:
            break
        held += para + "\n\n"
    s_tok, t_tok = load_tokenizer("smollm2-135m"), load_tokenizer("gemma3-270m")
    pieces = split_text(held, [s_tok, t_tok], args.eval_length)
    log(f"data: {len(rows)} training paragraphs, held-out {len(held.encode())} bytes in {len(pieces)} pieces")

    student_dir = Path(args.work) / "student-init"
    big = load_teacher("smollm2-135m")
    # all 30 layers: the pretrained SmolLM2-135M itself, unshrunk
    small = (
        big.train()
        if args.layers >= big.config.num_hidden_layers
        else shrink_model(big, num_layers=args.layers)
    )
    small.save_pretrained(student_dir)
    s_tok.save_pretrained(student_dir)
    del big
    init_bpb = bits_per_byte(small, s_tok, pieces)[0].as_dict()
    n_layers = small.config.num_hidden_layers
    n_params = sum(p.numel() for p in small.parameters())
    del small
    log(f"student: SmolLM2-135M, {n_layers} of 30 layers, {n_params:,} parameters; bpb {init_bpb}")

    teacher = load_teacher("gemma3-270m").eval()
    teacher_bpb = bits_per_byte(teacher, t_tok, pieces)[0].as_dict()
    log(f"teacher gemma3-270m: bpb {teacher_bpb}")
    teacher_src = CachedTeacher(InProcessTeacher(teacher, "gemma3-270m"))
    rows_of, seqkd_info = {}, None
    if "seqkd" in args.methods:
        rows_of["seqkd"], seqkd_info = seqkd_rows(rows, args, teacher, t_tok, log)

    runs = []
    for seed in args.seeds:
        for method in args.methods:
            m_rows = rows_of.get(method, rows)
            out = train_one(method, seed, args, teacher_src, t_tok, s_tok, student_dir, m_rows, log)
            bpb = bits_per_byte(out["student"], s_tok, pieces)[0].as_dict()
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "bits_per_byte": bpb["bits_per_byte"],
                    "train_seconds": round(out["train_seconds"], 1),
                    "log": out["log"],
                }
            )
            log(
                f"{method} seed {seed}: held-out bpb {bpb['bits_per_byte']:.4f} ({out['train_seconds']:.0f} s)"
            )
            if args.json:  # partial results survive an interrupted run
                _write(args, runs, init_bpb, teacher_bpb, n_params, len(rows), pieces, held, wall, seqkd_info)
    summary = _write(args, runs, init_bpb, teacher_bpb, n_params, len(rows), pieces, held, wall, seqkd_info)
    for method, s in summary.items():
        log(f"{method}: {s}")


def summarise(runs: list[dict], methods: list[str]) -> dict:
    """Per method: mean, min, max, sample std of held-out bits per byte over seeds; and, paired by seed,
    the difference from CE alone (negative: better than CE)."""
    by = {(r["method"], r["seed"]): r["bits_per_byte"] for r in runs}
    summary = {}
    for method in methods:
        values = [v for (m, _), v in by.items() if m == method]
        if not values:
            continue
        s = {
            "mean": statistics.fmean(values),
            "min": min(values),
            "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "seeds": len(values),
        }
        diffs = [v - by[("ce", seed)] for (m, seed), v in by.items() if m == method and ("ce", seed) in by]
        if method != "ce" and diffs:
            s["minus_ce_same_seed"] = {"mean": statistics.fmean(diffs), "min": min(diffs), "max": max(diffs)}
        summary[method] = s
    return summary


def _write(args, runs, init_bpb, teacher_bpb, n_params, n_rows, pieces, held, wall, seqkd_info=None) -> dict:
    import transformers

    summary = summarise(runs, args.methods)
    result = {
        "what": f"held-out bits per byte of a SmolLM2-135M student ({args.layers} of 30 layers) taught by gemma3-270m",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("json", "work", "summarise", "gen_cache")
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "data": {
            "source": "pydoc_data.topics (CPython's help() topics, shipped with Python)",
            "train_paragraphs": n_rows,
            "heldout_bytes": len(held.encode("utf-8")),
            "heldout_pieces": len(pieces),
        },
        "seqkd_generations": seqkd_info,
        "student_parameters": n_params,
        "student_before_training": init_bpb,
        "teacher": teacher_bpb,
        "summary": summary,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    from lmdistill.io import atomic_write_json

    atomic_write_json(args.json, result) if args.json else None
    return summary


if __name__ == "__main__":
    main()
