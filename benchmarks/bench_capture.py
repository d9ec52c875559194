"""Offline teacher knowledge on the real embedded teacher: bytes per token, loss gap, training speed.

SmolLM2-135M-Instruct (vocab 49152) over data/smollm2_chatterbot/train.jsonl (256 chats, max_length 256):
(a) bytes per target token of the raw and compact codecs at k = 64 and 128 (dense fp16 logits: 2 V);
(b) forward KL (T = 1) of a fixed student (the teacher shrunk to 10 layers) to the teacher, computed
    from each store against the live teacher on the same tokens, plus the unquantised top-k (float32,
    in memory) to separate the coarsening to k + 1 buckets from the codec's rounding;
(c) DistillTrainer target tokens/s from the store against the live teacher: same student, batches and
    steps; the two variants take one optimizer step each in turn, so a busy machine slows them alike;
    the first step of each is a warm-up and is not counted.

The teacher runs once: its final hidden states at the target tokens serve both the live KL and the
capture's own top-k code (`topk_rows`, what `lmdistill capture` runs per batch) for k = 128; k = 64 is
cut from it exactly (the top 64 of the top 128, the tail gaining the other 64). Stores are written with
the capture's shard writer and read back through `TeacherStore`, as training reads them.

    python benchmarks/bench_capture.py [--examples 256 --steps 6 --batch 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainingArguments

from lmdistill.capture import TeacherStore, TopK, tokenizer_hash
from lmdistill.capture.codec import FORMAT, storage
from lmdistill.capture.run import topk_rows
from lmdistill.capture.store import data_hashes, shard_ranges, write_manifest, write_shard
from lmdistill.chunked import Head, LossSpec, SparseTeacher, chunked_loss
from lmdistill.data import DistillCollator, load_records, pad_id, tokenize_records
from lmdistill.models import load_teacher, load_tokenizer, shrink_model
from lmdistill.models.forward import final_hidden
from lmdistill.teachers.whitebox import StoreTeacher
from lmdistill.training.trainer import DistillTrainer

ROOT = Path(__file__).resolve().parent.parent
TEACHER, DATA, VOCAB = "smollm2-135m", ROOT / "data/smollm2_chatterbot/train.jsonl", 49152


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


def cut(top: TopK, k: int) -> TopK:
    """The top k of a top-K capture (values sorted descending): exact, the tail absorbs the rest."""
    rest = np.logaddexp.reduce(top.logprobs[:, k:].astype(np.float64), axis=1)
    tail = np.logaddexp(top.tail.astype(np.float64), rest).astype(np.float32)
    return TopK(top.ids[:, :k].copy(), top.logprobs[:, :k].copy(), tail, top.counts)


def write_store(folder: Path, top: TopK, features, tokenizer, codec: str, shard_size: int) -> float:
    """A complete store from an in-memory capture, written as `capture` writes it; returns encode seconds."""
    k = top.ids.shape[1]
    whole, parts = data_hashes(features, shard_size)
    settings = {
        "format": FORMAT, "teacher": TEACHER, "teacher_dtype": "float32", "teacher_hash": "bench",
        "tokenizer_hash": tokenizer_hash(tokenizer), "data_hash": whole, "data_source": str(DATA),
        "max_examples": None, "examples": len(features), "max_length": 256, "k": k, "temperature": 1.0,
        "vocab": VOCAB, "codec": codec, "dtypes": storage(codec, VOCAB), "shard_size": shard_size,
    }  # fmt: skip
    folder.mkdir(parents=True)
    offsets, records, t0 = top.offsets, [], time.perf_counter()
    for s, (a, b) in enumerate(shard_ranges(len(features), shard_size)):
        rows = slice(int(offsets[a]), int(offsets[b]))
        part = TopK(top.ids[rows], top.logprobs[rows], top.tail[rows], top.counts[a:b])
        records.append(write_shard(folder, s, a, part, settings, parts[s]))
    seconds = time.perf_counter() - t0
    write_manifest(folder, settings, records, complete=True)
    return seconds


@torch.no_grad()
def target_hidden(model, features, pad: int, batch: int = 8) -> torch.Tensor:
    """[N, H] final hidden states at every target position, in the store's (row-major) order.

    Batches are formed longest first (less padding), then each example's rows are put back in place.
    """
    collate, parts = DistillCollator(pad_token_id=pad), [None] * len(features)
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    for i in range(0, len(order), batch):
        members = order[i : i + batch]
        b = collate([features[j] for j in members])
        mask = b["labels"][:, 1:] != -100
        hidden = final_hidden(model, b["input_ids"], b["attention_mask"])[:, :-1][mask]
        for j, rows in zip(members, hidden.split(mask.sum(1).tolist()), strict=True):
            parts[j] = rows
    return torch.cat(parts)


def kd_per_token(s_hidden, s_head, labels, **teacher) -> float:
    spec = LossSpec(loss="forward_kl", ce_weight=0.0, kd_weight=1.0, temperature=1.0, vocab=VOCAB)
    with torch.no_grad():
        sums = chunked_loss(s_hidden, s_head, labels, spec, **teacher)
    return sums.kd.item() / sums.tokens


def make_trainer(student, teacher, store, features, tokenizer, out: Path, steps: int) -> DistillTrainer:
    """A DistillTrainer (the run's loss, collator and optimizer) on its own copy of the student."""
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=6e-4,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        remove_unused_columns=False, lr_scheduler_type="constant",
    )  # fmt: skip
    trainer = DistillTrainer(
        model=copy.deepcopy(student).train(),
        teacher=StoreTeacher(store) if store is not None else teacher,
        spec=LossSpec(loss="forward_kl", ce_weight=0.1, kd_weight=0.9, vocab=VOCAB),
        args=args,
        train_dataset=features,
        data_collator=DistillCollator(pad_token_id=pad_id(tokenizer)),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    return trainer


def train_interleaved(trainers: dict, features, steps: int, batch: int) -> dict:
    """One optimizer step of each variant in turn (first mover alternating), same batches for all.

    A step is what Trainer does per batch: collate, `training_step` (forward, teacher scores or store rows,
    chunked loss, backward), clip, optimizer and scheduler step. Step 0 is a warm-up and not counted.
    """
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0)).tolist()
    result = {name: {"seconds": 0.0, "tokens": 0, "losses": [], "step_s": []} for name in trainers}
    for step in range(steps + 1):
        rows = [features[i] for i in order[step * batch : (step + 1) * batch]]
        names = list(trainers) if step % 2 == 0 else list(reversed(trainers))
        for name in names:
            trainer, r = trainers[name], result[name]
            t0 = time.perf_counter()
            inputs = trainer.data_collator(rows)
            tokens = int((inputs["labels"][:, 1:] != -100).sum())
            loss = trainer.training_step(trainer.model, inputs, num_items_in_batch=tokens)
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.model.zero_grad()
            dt = time.perf_counter() - t0
            r["losses"].append(round(loss.item(), 4))
            if step:
                r["seconds"] += dt
                r["tokens"] += tokens
                r["step_s"].append(round(dt, 2))
        print(
            f"  step {step}: "
            + ", ".join(f"{n} {result[n]['losses'][-1]:.3f}" for n in trainers)
            + f" (load {load()})"
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run (after 1 warm-up step)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/capture.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    result: dict = {"args": vars(a), "load": {"start": load()}}
    print(f"machine load at start: {load()}")
    tokenizer, teacher = load_tokenizer(TEACHER), load_teacher(TEACHER)
    features, _ = tokenize_records(load_records(DATA)[: a.examples], tokenizer, 256, source=str(DATA))
    n_input = sum(len(f["input_ids"]) for f in features)

    pad = pad_id(tokenizer)
    t0 = time.perf_counter()
    t_hidden = target_hidden(teacher, features, pad)  # [N, 576]
    t_head = Head.of(teacher, trainable=False)
    rows128 = topk_rows(t_head, t_hidden, k=128, temperature=1.0, vocab=VOCAB)
    capture_s = time.perf_counter() - t0
    counts = np.array([sum(x != -100 for x in f["labels"][1:]) for f in features], dtype=np.int64)
    top128 = TopK(*(x.numpy() for x in rows128), counts=counts)
    n = int(counts.sum())
    result["capture"] = {"target_tokens": n, "input_tokens": n_input, "seconds": capture_s,
                         "target_tokens_per_s": n / capture_s, "input_tokens_per_s": n_input / capture_s}  # fmt: skip
    print(
        f"teacher top-128 over {len(features)} examples: {n} target tokens ({n_input} input) in {capture_s:.1f} s"
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench_capture_"))
    stores, sizes = {}, []
    for k in (64, 128):
        top = top128 if k == 128 else cut(top128, k)
        for codec in ("raw", "compact"):
            folder = tmp / f"{codec}-{k}"
            enc = write_store(folder, top, features, tokenizer, codec, shard_size=256)
            store = TeacherStore.open(folder)
            t1 = time.perf_counter()
            rows = store.rows(list(range(len(features))))
            dec = time.perf_counter() - t1
            size = json.loads((folder / "manifest.json").read_text())["bytes"]
            stores[(codec, k)] = (store, rows)
            sizes.append({"codec": codec, "k": k, "bytes": size, "bytes_per_token": size / n,
                          "encode_s": enc, "decode_s": dec})  # fmt: skip
    result["sizes"] = sizes
    result["dense_fp16_bytes_per_token"] = 2 * VOCAB

    student = shrink_model(teacher, num_layers=10).eval()
    s_hidden = target_hidden(student, features, pad)
    labels = torch.cat(
        [torch.tensor(f["labels"][1:])[torch.tensor(f["labels"][1:]) != -100] for f in features]
    )
    s_head = Head.of(student)
    live = kd_per_token(s_hidden, s_head, labels, t_hidden=t_hidden, t_head=t_head)
    gaps = []
    for k in (64, 128):
        top = top128 if k == 128 else cut(top128, k)
        exact = SparseTeacher(*(torch.from_numpy(x) for x in (top.ids, top.logprobs, top.tail)))
        variants = [("float32 (no codec)", exact)]
        variants += [(codec, SparseTeacher(*stores[(codec, k)][1][:3])) for codec in ("raw", "compact")]
        for name, sparse in variants:
            kd = kd_per_token(s_hidden, s_head, labels, t_sparse=sparse)
            gaps.append({"k": k, "source": name, "kd": kd, "gap": kd - live, "rel_gap": (kd - live) / live})
    result["kd"] = {"live": live, "tokens": len(labels), "stores": gaps}
    result["load"]["after_capture_and_kd"] = load()
    print(f"machine load before training: {load()}")

    feats = [{**f, "example_index": i} for i, f in enumerate(features)]  # the index travels with the example
    trainers = {
        "live teacher": make_trainer(student, teacher, None, feats, tokenizer, tmp / "live", a.steps + 1),
        "store compact k=64": make_trainer(
            student, None, stores[("compact", 64)][0], feats, tokenizer, tmp / "s", a.steps + 1
        ),
    }
    runs = train_interleaved(trainers, feats, a.steps, a.batch)
    speed = {name: r["tokens"] / r["seconds"] for name, r in runs.items()}
    result["training"] = {"runs": runs, "target_tokens_per_s": speed,
                          "speedup": {n: v / speed["live teacher"] for n, v in speed.items()}}  # fmt: skip
    result["load"]["end"] = load()
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                         "transformers": __import__("transformers").__version__, "python": platform.python_version()}  # fmt: skip
    report(result)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


def report(r: dict) -> None:
    n = r["capture"]["target_tokens"]
    print(
        f"\n(a) bytes per target token ({n} target tokens; dense fp16 logits: {r['dense_fp16_bytes_per_token']})"
    )
    print(f"{'codec':<10}{'k':>5}{'bytes/token':>14}{'bytes/entry':>13}{'encode s':>10}{'decode s':>10}")
    for s in r["sizes"]:
        print(f"{s['codec']:<10}{s['k']:>5}{s['bytes_per_token']:>14.1f}{s['bytes_per_token'] / s['k']:>13.2f}"
              f"{s['encode_s']:>10.2f}{s['decode_s']:>10.2f}")  # fmt: skip
    print(f"\n(b) forward KL of the 10-layer student, nats/token: live teacher {r['kd']['live']:.4f}")
    print(f"{'k':>5}  {'teacher from':<20}{'KL':>10}{'gap':>10}{'rel. gap':>10}")
    for g in r["kd"]["stores"]:
        print(f"{g['k']:>5}  {g['source']:<20}{g['kd']:>10.4f}{g['gap']:>+10.4f}{g['rel_gap']:>+10.2%}")
    print("\n(c) DistillTrainer, target tokens/s (batch, steps as given; warm-up step excluded)")
    for name, v in r["training"]["target_tokens_per_s"].items():
        print(f"  {name:<22}{v:>8.1f}  ({r['training']['speedup'][name]:.2f}x)")
    print(f"machine load: {r['load']}")


if __name__ == "__main__":
    main()
