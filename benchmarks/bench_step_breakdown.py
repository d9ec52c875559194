"""Where one KD training step's time goes, on CPU: teacher forward, student forward, the chunked loss,
the backward pass through the student, and the optimizer step.

The step is DistillTrainer's compute_loss taken apart (the same calls, in the same order, outside
the Trainer so each part can be timed): the in-process teacher's `score` (final hidden states, no
logits), the student's `final_hidden`, `lmdistill.chunked.chunked_loss` (CE + forward KL through
both heads in chunks of target tokens; it also computes the gradients with respect to the student's
hidden states and head, so its time includes them), `loss.backward()` (from the hidden states down
through the student), and AdamW's step. Teacher = the embedded SmolLM2-135M-Instruct; student = it
shrunk to 10 layers; data = the first rows of data/smollm2_chatterbot/train.jsonl (completion-only
labels), batch 8, max 256 tokens, float32, 1 thread by default. Medians over the timed steps.

    .venv/bin/python benchmarks/bench_step_breakdown.py [--steps 6 --warmup 1 --threads 1]
    .venv/bin/python benchmarks/bench_step_breakdown.py --quick     # tiny random models, a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from lmdistill.eval.measure import command_line, load_line, machine_info, versions

RESULT = "benchmarks/results/step_breakdown.json"
DATA = "data/smollm2_chatterbot/train.jsonl"
PARTS = ("teacher_forward", "student_forward", "loss", "backward", "optimizer")


def run(a: argparse.Namespace) -> dict:
    import os

    import torch

    from lmdistill.chunked import Head, LossSpec, chunked_loss
    from lmdistill.data import DistillCollator, load_records, pad_id, tokenize_records
    from lmdistill.models import check_vocab, load_teacher, load_tokenizer, shrink_model
    from lmdistill.models.forward import final_hidden
    from lmdistill.teachers.whitebox import InProcessTeacher, TeacherQuery

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tok = load_tokenizer("smollm2-135m")
    if a.quick:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
        teacher_model = LlamaForCausalLM(cfg)
    else:
        teacher_model = load_teacher("smollm2-135m")
    layers = min(a.student_layers, teacher_model.config.num_hidden_layers - 1)
    student = shrink_model(teacher_model, num_layers=layers).float().train().requires_grad_(True)
    vocab = check_vocab(tok, tok, teacher_model, student, teacher_name="teacher", student_name="student")
    teacher = InProcessTeacher(teacher_model)
    spec = LossSpec(loss="forward_kl", ce_weight=0.5, kd_weight=0.5, vocab=vocab, chunk_size=a.chunk)
    rows = load_records(DATA)[: a.batch * (a.warmup + a.steps)]
    features, _ = tokenize_records(rows, tok, a.max_length, source=DATA)
    collate = DistillCollator(pad_token_id=pad_id(tok))
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {p: [] for p in PARTS}
    tokens = []
    for step in range(a.warmup + a.steps):
        batch = collate(features[step * a.batch : (step + 1) * a.batch])
        targets = batch["labels"][:, 1:]
        mask = targets != -100
        query = TeacherQuery.from_batch(batch)
        marks = [time.perf_counter()]
        scores = teacher.score(query)
        marks.append(time.perf_counter())
        hidden = final_hidden(student, batch["input_ids"], batch["attention_mask"])
        marks.append(time.perf_counter())
        sums = chunked_loss(
            hidden[:, :-1][mask], Head.of(student), targets[mask], spec, **scores.loss_inputs()
        )
        loss = sums.total / max(sums.tokens, 1)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if step >= a.warmup:
            for part, t0, t1 in zip(PARTS, marks, marks[1:], strict=False):
                times[part].append(t1 - t0)
            tokens.append(int(batch["attention_mask"].sum()))
    median = {p: statistics.median(v) for p, v in times.items()}
    total = sum(median.values())
    return {
        "benchmark": "step_breakdown",
        "command": command_line(),
        "machine": machine_info(),
        "versions": versions(),
        "load": load_line(load_before, os.getloadavg()),
        "settings": vars(a),
        "tokens_per_step": statistics.median(tokens),
        "median_s": median,
        "share": {p: median[p] / total for p in PARTS},
        "step_s": total,
        "tokens_per_s": statistics.median(tokens) / total,
        "all_s": times,
    }


def report(result: dict) -> None:
    print(f"# one KD step, median of {result['settings']['steps']} ({result['load']})")
    for p in PARTS:
        print(f"{p:16s} {result['median_s'][p] * 1000:9.1f} ms  {result['share'][p] * 100:5.1f}%")
    print(f"{'step':16s} {result['step_s'] * 1000:9.1f} ms  ({result['tokens_per_s']:.0f} tokens/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--student-layers", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help=f"results file (default {RESULT}; none with --quick)")
    a = ap.parse_args()
    result = run(a)
    report(result)
    out = a.out or (None if a.quick else RESULT)
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"written {out}")


if __name__ == "__main__":
    main()
