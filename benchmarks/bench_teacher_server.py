"""A teacher behind a loopback server against the same teacher in process and its offline store.

SmolLM2-135M (the embedded teacher, vocab 49152) over the first --examples chats of
data/smollm2_chatterbot/train.jsonl (max_length 128); the student is the teacher shrunk to 6 layers.
The server is a real `lmdistill serve smollm2-135m --max-logprobs K` in its own process on 127.0.0.1.

(a) First-step loss: the same student and first batch through `DistillTrainer.compute_loss` with the
    teacher from the server (teacher.server, top-K + tail) and from a store captured in process at the
    same K (`lmdistill capture`, raw codec: float16 log-probs), and for reference the full-vocabulary
    loss of the in-process teacher.
(b) Training target tokens/s, in-process teacher against the server teacher (and the store): same
    student, batches and steps; the variants take one optimizer step each in turn, so a busy machine
    slows them alike; the first step of each is a warm-up and is not counted. The machine load
    (`uptime`) is recorded before and after.

    python benchmarks/bench_teacher_server.py [--examples 32 --steps 4 --batch 8 --k 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainingArguments

from lmdistill.capture import TeacherStore, capture, load_capture_config, teacher_topk
from lmdistill.chunked import LossSpec
from lmdistill.config import TeacherConfig
from lmdistill.data import DistillCollator, load_records, pad_id, tokenize_records
from lmdistill.models import load_teacher, load_tokenizer, shrink_model
from lmdistill.models.vocab import real_vocab_size as real_vocab
from lmdistill.teachers.whitebox import InProcessTeacher, ServerTeacher, StoreTeacher
from lmdistill.training.trainer import DistillTrainer

ROOT = Path(__file__).resolve().parent.parent
TEACHER, DATA = "smollm2-135m", ROOT / "data/smollm2_chatterbot/train.jsonl"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, k: int) -> subprocess.Popen:
    """`lmdistill serve` in its own process; returns once /v1/models answers."""
    import httpx

    cmd = [
        sys.executable,
        "-m",
        "lmdistill.cli",
        "serve",
        TEACHER,
        "--port",
        str(port),
        "--max-logprobs",
        str(k),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lmdistill serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.terminate()
    raise RuntimeError("lmdistill serve did not answer within 300 s")


def make_trainer(student, teacher, out: Path, steps: int, spec: LossSpec, pad: int) -> DistillTrainer:
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=6e-4,
        lr_scheduler_type="constant", use_cpu=True, report_to="none", remove_unused_columns=False,
        save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = DistillTrainer(
        model=copy.deepcopy(student),
        teacher=teacher,
        spec=spec,
        args=args,
        data_collator=DistillCollator(pad),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    return trainer


class MemoryRows:
    """Unquantised float32 top-k rows of some examples (`teacher_topk`), served like a store."""

    folder = "memory (float32)"

    def __init__(self, top, k: int, vocab: int):
        self.top, self.offsets, self.k, self.vocab = top, top.offsets, k, vocab

    def rows(self, indices):
        parts = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        cat = lambda a: torch.from_numpy(np.concatenate([a[p] for p in parts]))  # noqa: E731
        return (
            cat(self.top.ids),
            cat(self.top.logprobs),
            cat(self.top.tail),
            [p.stop - p.start for p in parts],
        )


def first_loss(trainer: DistillTrainer, batch: dict) -> dict:
    """The loss the first training step computes, with its CE and KD parts per target token."""
    trainer.model.train()
    trainer._log_sums = {}
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    sums = trainer._log_sums
    trainer._log_sums = {}
    return {
        "loss": loss,
        "ce": sums["ce"] / sums["tokens"],
        "kd": sums["kd"] / sums["tokens"],
        "tokens": sums["tokens"],
    }


def train_interleaved(trainers: dict, features, steps: int, batch: int) -> dict:
    """One optimizer step of each variant in turn (first mover alternating), the same batches for all.

    A step is what Trainer does per batch: collate, `training_step` (forward, teacher scores, chunked
    loss, backward), clip, optimizer and scheduler step. Step 0 is a warm-up and not counted.
    """
    result = {
        name: {"seconds": 0.0, "target_tokens": 0, "input_tokens": 0, "step_s": []} for name in trainers
    }
    for step in range(steps + 1):
        rows = features[step * batch : (step + 1) * batch]
        names = list(trainers) if step % 2 == 0 else list(reversed(trainers))
        for name in names:
            trainer = trainers[name]
            t0 = time.perf_counter()
            inputs = trainer._prepare_inputs(trainer.data_collator(rows))
            tokens = int((inputs["labels"][:, 1:] != -100).sum())
            trainer.training_step(trainer.model, inputs, num_items_in_batch=tokens)
            torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.model.zero_grad()
            dt = time.perf_counter() - t0
            if step:
                r = result[name]
                r["seconds"] += dt
                r["target_tokens"] += tokens
                r["input_tokens"] += int(inputs["attention_mask"].sum())
                r["step_s"].append(round(dt, 2))
        print(
            f"  step {step}: "
            + ", ".join(f"{n} {result[n]['step_s'][-1] if step else '(warm-up)'}" for n in names)
        )
    for r in result.values():
        r["target_tokens_per_s"] = r["target_tokens"] / r["seconds"]
        r["input_tokens_per_s"] = r["input_tokens"] / r["seconds"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=40)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (after 1 warm-up step)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/teacher_server.json"))
    a = ap.parse_args()
    assert a.examples >= (a.steps + 1) * a.batch, "--examples must cover (steps + 1) * batch"
    # --steps 0: the first-step losses only
    torch.manual_seed(0)
    result = {"uptime": {"start": uptime()}, "settings": vars(a)}
    print(f"machine: {result['uptime']['start']}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_teacher_server-"))
    tokenizer = load_tokenizer(TEACHER)
    records = load_records(str(DATA))[: a.examples]
    features, _ = tokenize_records(records, tokenizer, 128, source=str(DATA))
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))

    t0 = time.perf_counter()
    overrides = [f"teacher.name={TEACHER}", f"data.train={data}", "data.max_length=128", f"capture.k={a.k}"]
    overrides += [f"capture.output_dir={tmp / 'store'}", "capture.codec=raw", "capture.device=cpu"]
    capture(load_capture_config(None, overrides))
    store = TeacherStore.open(tmp / "store")
    result["capture_in_process_s"] = round(time.perf_counter() - t0, 1)

    port = free_port()
    server = start_server(port, a.k)
    try:
        teacher = load_teacher(TEACHER)
        student = shrink_model(teacher, num_layers=6).train()
        vocab = real_vocab(tokenizer)
        spec = LossSpec(loss="forward_kl", ce_weight=0.5, kd_weight=0.5, vocab=vocab, chunk_size=256)
        remote = ServerTeacher.connect(
            TeacherConfig(server=f"http://127.0.0.1:{port}/v1", server_concurrency=8),
            tokenizer,
            k=a.k,
            vocab=vocab,
        )
        print(f"server teacher: {remote.name}, mode {remote.mode}")
        pad = pad_id(tokenizer)
        feats = [{**f, "example_index": i} for i, f in enumerate(features)]
        sources = {
            "in-process teacher": InProcessTeacher(teacher, TEACHER),
            f"server (lmdistill serve, k={a.k})": remote,
            f"store (in-process capture, raw, k={a.k})": StoreTeacher(store),
        }
        trainers = {
            n: make_trainer(student, s, tmp / str(i), a.steps + 1, spec, pad)
            for i, (n, s) in enumerate(sources.items())
        }
        batch = DistillCollator(pad)(feats[: a.batch])
        first = {name: first_loss(t, batch) for name, t in trainers.items()}
        # the same top-k computed in process and kept in float32: what the server's rows should equal
        top = teacher_topk(
            teacher, features[: a.batch], k=a.k, temperature=1.0, vocab=vocab, pad_token_id=pad
        )
        exact = make_trainer(student, StoreTeacher(MemoryRows(top, a.k, vocab)), tmp / "exact", 1, spec, pad)
        first[f"in-process top-k, float32 (k={a.k})"] = first_loss(exact, batch)
        names = list(first)
        diff = {
            f"server - {other}": {key: first[names[1]][key] - first[other][key] for key in ("loss", "kd")}
            for other in (names[2], names[3])
        }
        result["first_step"] = {"losses": first, "differences": diff}
        print(json.dumps(result["first_step"], indent=1))
        if a.steps > 0:
            result["uptime"]["before_training"] = uptime()
            result["training"] = train_interleaved(trainers, feats, a.steps, a.batch)
        result["server_stats"] = remote.stats()
    finally:
        server.terminate()
        server.wait(timeout=60)
    result["uptime"]["end"] = uptime()
    training = result.get("training", {})
    base = training.get("in-process teacher", {}).get("target_tokens_per_s", 1.0)
    for name, r in training.items():
        print(
            f"  {name:<42}{r['target_tokens_per_s']:>8.1f} target tokens/s ({r['target_tokens_per_s'] / base:.2f}x)"
        )
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                         "python": platform.python_version()}  # fmt: skip
    print(f"machine: {result['uptime']['end']}")
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
