"""A whole off-policy KD training run: lmdistill's DistillTrainer against TRL's GKDTrainer, on CPU.

What is run, the same way for both: teacher = the embedded SmolLM2-135M-Instruct (30 layers, real
weights, `lmdistill.models.load_teacher`); student = the teacher shrunk to `--student-layers`
evenly spaced layers (`lmdistill.models.shrink_model`, weights copied, same seed); data = the
chat rows of data/smollm2_chatterbot/train.jsonl, tokenized once by `lmdistill.data`
(completion-only labels: the assistant replies are the targets) and batched by
`lmdistill.data.DistillCollator` for both trainers, so both see the same batches in the same
order; float32 (TRL's default bf16 autocast is turned off), AdamW, constant learning rate,
no checkpoints, the same `torch.set_num_threads`.

Loss, the same for both: forward KL(teacher || student) per target token, temperature 1, no CE
term, divided by the number of target tokens in the step (Trainer's `num_items_in_batch`).
- lmdistill: `DistillTrainer` with `LossSpec(loss="forward_kl", ce_weight=0, kd_weight=1)`,
  computed from final hidden states through both heads in chunks of `--chunk` target tokens.
- TRL: `trl.experimental.gkd.GKDTrainer` (TRL 1.x moved it to `trl.experimental`) with
  `lmbda=0` (off-policy: never samples from the student), `seq_kd=False` and `beta=0`, which its
  `generalized_jsd_loss` special-cases as `F.kl_div(student_logp, teacher_logp, log_target=True)`
  = KL(teacher || student), the forward KL (beta=1 is the reverse KL). It computes both models'
  full logits. `GKDConfig.temperature` only affects sampling, which lmbda=0 never does.
  Run twice: without gradient checkpointing (as lmdistill runs) and with it (TRL's default).
The first step's loss (before any update) is compared between the runs.

Measured: each run in its own worker process; all workers are built first (models, data,
trainer), then the driver lets them train one optimizer step each in turn (lmdistill, TRL,
TRL-GC, lmdistill, ...), so a change of load on the shared CPU hits every run alike; a worker
waits, idle, inside a callback at the end of each step. A step is timed from the driver's go to its
end (data, forward, backward, optimizer, the previous step's logging). Tokens/s = all non-pad
tokens (attention_mask sum) of the timed steps / their summed time; target tokens/s likewise. Peak
memory: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs once the models, data
and trainer are built) during training, absolute and as growth over the RSS at that point. The
workers are resident together, so the machine needs the sum of their memory. Load average recorded.

    .venv-bench/bin/python benchmarks/bench_peers_train.py [--steps 6 --warmup 1 --batch 8]
    .venv-bench/bin/python benchmarks/bench_peers_train.py --quick     # tiny random models, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from lmdistill.eval.measure import (
    PeakMemory,
    Worker,
    command_line,
    load_line,
    machine_info,
    reply,
    table,
    versions,
)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
RESULT = "benchmarks/results/peers_train.json"
DATA = "data/smollm2_chatterbot/train.jsonl"
CASES = ("lmdistill", "trl", "trl-gc")
MARK = "@bench "  # starts the worker's JSON lines
PAUSE_S = 1.0  # between steps: the previous worker's OpenMP threads may still spin


def trl_unavailable() -> str | None:
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer  # noqa: F401
    except ImportError as e:
        return f"trl's GKDTrainer does not import here ({e}); run benchmarks/setup_peers.sh, use .venv-bench"
    return None


def _models(a: argparse.Namespace):
    """(tokenizer, teacher, student): the embedded SmolLM2, or with --quick tiny random Llamas of its vocab."""
    import torch

    from lmdistill.models import load_teacher, load_tokenizer, shrink_model

    tok = load_tokenizer("smollm2-135m")
    if a.quick:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        teacher = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    else:
        teacher = load_teacher("smollm2-135m")
    student = shrink_model(teacher, num_layers=a.student_layers)
    return tok, teacher, student.float().requires_grad_(True).train()


def _reply(obj: dict) -> None:
    reply(obj, MARK)  # Trainer prints its logs to stdout too


def _wait_for_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"worker: expected 'go', got {line!r}")


def run_case(case: str, a: argparse.Namespace) -> None:
    """A worker: build one run, then train one step per 'go' from the driver; print JSON lines."""
    import datasets
    import torch
    from transformers import TrainerCallback, TrainingArguments, set_seed

    from lmdistill.data import DistillCollator, load_records, pad_id, tokenize_records
    from lmdistill.models import check_vocab

    if a.threads:
        torch.set_num_threads(a.threads)
    set_seed(0)
    tok, teacher, student = _models(a)
    vocab = check_vocab(tok, tok, teacher, student, teacher_name="smollm2-135m", student_name="shrunk")
    rows = load_records(DATA)[: a.batch * (a.warmup + a.steps)]  # one epoch: every row used once
    features, _ = tokenize_records(rows, tok, a.max_length, source=DATA)
    train = datasets.Dataset.from_list(features)
    collator = DistillCollator(pad_token_id=pad_id(tok))
    out = tempfile.mkdtemp(prefix=f"bench-{case}-")
    common = dict(
        output_dir=out,
        max_steps=a.warmup + a.steps,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=case == "trl-gc",
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    record = {"tokens": {}, "targets": {}, "loss": {}, "seconds": {}}

    def counted(base):
        class Counted(base):
            def compute_loss(self, model, inputs, *args, **kwargs):
                out = super().compute_loss(model, inputs, *args, **kwargs)
                if model.training:
                    step = self.state.global_step + 1
                    record["tokens"][step] = int(inputs["attention_mask"].sum())
                    record["targets"][step] = int((inputs["labels"][:, 1:] != -100).sum())
                    loss = out[0] if isinstance(out, tuple) else out
                    record["loss"][step] = float(loss.detach())
                return out

        return Counted

    class Clock(TrainerCallback):
        """Each step starts on the driver's 'go' and is timed from there to its end, logging included."""

        def on_train_begin(self, args, state, control, **kwargs):
            _wait_for_go()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            record["seconds"][step] = time.perf_counter() - self.t0
            _reply({"step": step, "seconds": record["seconds"][step], "loss": record["loss"].get(step)})
            if step < a.warmup + a.steps:
                _wait_for_go()
                self.t0 = time.perf_counter()

    if case == "lmdistill":
        from lmdistill.chunked import LossSpec
        from lmdistill.training.trainer import DistillTrainer

        spec = LossSpec(
            loss="forward_kl", ce_weight=0.0, kd_weight=1.0, temperature=1.0, vocab=vocab, chunk_size=a.chunk
        )
        trainer = counted(DistillTrainer)(
            model=student,
            teacher=teacher,
            spec=spec,
            args=TrainingArguments(**common),
            train_dataset=train,
            data_collator=collator,
            callbacks=[Clock()],
        )
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        cfg = GKDConfig(**common, lmbda=0.0, beta=0.0, seq_kd=False, temperature=1.0, max_length=a.max_length)
        trainer = counted(GKDTrainer)(
            model=student,
            teacher_model=teacher,
            args=cfg,
            train_dataset=train,
            processing_class=tok,
            data_collator=collator,
            callbacks=[Clock()],
        )
    memory = PeakMemory("cpu")
    memory.start()
    rss_before = memory.base / 2**20
    _reply({"built": case})
    trainer.train()
    peak = rss_before + memory.peak_mb()
    shutil.rmtree(out, ignore_errors=True)
    timed = range(a.warmup + 1, a.warmup + a.steps + 1)
    seconds = sum(record["seconds"][s] for s in timed)
    tokens = sum(record["tokens"][s] for s in timed)
    targets = sum(record["targets"][s] for s in timed)
    _reply(
        {
            "case": case,
            "tokens_per_s": tokens / seconds,
            "target_tokens_per_s": targets / seconds,
            "timed_seconds": seconds,
            "timed_tokens": tokens,
            "timed_target_tokens": targets,
            "s_per_step": seconds / a.steps,
            "step_seconds": [record["seconds"][s] for s in sorted(record["seconds"])],
            "peak_rss_mb": peak,
            "rss_before_train_mb": rss_before,
            "peak_growth_mb": peak - rss_before,
            "first_loss": record["loss"][1],
            "losses": [record["loss"][s] for s in sorted(record["loss"])],
            "tokens_per_step": [record["tokens"][s] for s in sorted(record["tokens"])],
            "gradient_checkpointing": common["gradient_checkpointing"],
            "student_parameters": sum(p.numel() for p in student.parameters()),
            "threads": torch.get_num_threads(),
            **memory_split(rss_before, peak, student),
        }
    )


def memory_split(rss_before_mb: float, peak_mb: float, student) -> dict:
    """Peak memory as (the state both tools must hold) + (the rest). The state: everything resident before
    training (both models' weights, the data, the interpreter) plus what the first optimizer step adds and
    keeps, the student's fp32 gradients and AdamW's two moments (12 bytes per trainable parameter). The
    rest is what each tool's step costs on top: activations, logits, the loss and its temporaries."""
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    state = rss_before_mb + 12 * trainable / 2**20
    return {"weights_and_optimizer_mb": state, "rest_mb": peak_mb - state}


def run(a: argparse.Namespace) -> dict:
    cases = [c for c in a.cases.split(",") if c]
    skipped = {}
    why_not = trl_unavailable()
    if why_not:
        skipped = {c: why_not for c in cases if c.startswith("trl")}
        cases = [c for c in cases if c not in skipped]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRL_EXPERIMENTAL_SILENCE="1")
    flags = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch)]
    flags += ["--max-length", str(a.max_length), "--student-layers", str(a.student_layers)]
    flags += ["--chunk", str(a.chunk), "--threads", str(a.threads)] + (["--quick"] if a.quick else [])
    load_before = os.getloadavg()
    workers = {}
    for case in cases:  # all built at once, then trained step by step in turn
        cmd = [sys.executable, os.path.abspath(__file__), "--case", case, *flags]
        workers[case] = Worker(case, cmd, mark=MARK, env=env)
    for w in workers.values():
        w.read()  # built
    for _ in range(a.warmup + a.steps):
        for w in workers.values():
            time.sleep(PAUSE_S)
            w.send("go")  # the step's time
    best = {}
    for case, w in workers.items():
        best[case] = w.read()  # the run's summary
        w.wait()
    load_after = os.getloadavg()
    ratios = {}
    ours = best.get("lmdistill")
    for name, r in best.items():
        if ours and name != "lmdistill":
            ratios[f"lmdistill_over_{name}"] = {
                "tokens_per_s": ours["tokens_per_s"] / r["tokens_per_s"],
                "peak_rss": ours["peak_rss_mb"] / r["peak_rss_mb"],
                "peak_growth": ours["peak_growth_mb"] / r["peak_growth_mb"],
                "rest": ours["rest_mb"] / r["rest_mb"],  # the part the two tools do not share
                "first_loss_rel_diff": abs(ours["first_loss"] - r["first_loss"]) / abs(r["first_loss"]),
            }
    same_batches = len({tuple(r["tokens_per_step"]) for r in best.values()}) <= 1
    return {
        "benchmark": "peers_train",
        "what": "off-policy KD, forward KL per target token, fp32; lmdistill DistillTrainer vs TRL GKDTrainer",
        "teacher": "tiny random Llama (--quick)"
        if a.quick
        else "SmolLM2-135M-Instruct (embedded, 30 layers)",
        "student": f"teacher shrunk to {a.student_layers} layers",
        "rows": best,
        "ratios": ratios,
        "same_batches": same_batches,
        "skipped": skipped,
        "args": {k: v for k, v in vars(a).items() if k != "case"},
        "command": command_line(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": machine_info(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _threads(result: dict) -> str:
    """The torch threads the workers trained with (the parent process's own count says nothing)."""
    rows = result["rows"] if isinstance(result["rows"], list) else list(result["rows"].values())
    counts = sorted({r.get("threads") for r in rows if r.get("threads") is not None})
    return "/".join(map(str, counts)) or str(result["machine"]["torch_threads"])


def report(result: dict) -> None:
    a = result["args"]
    print(
        f"off-policy KD (forward KL), teacher {result['teacher']}, student {result['student']}, batch {a['batch']}, "
        f"max length {a['max_length']}, {a['steps']} timed steps after {a['warmup']}, "
        f"{_threads(result)} threads, fp32"
    )
    columns = [
        ("run", "<"),
        ("tokens/s", ".1f"),
        ("targets/s", ".1f"),
        ("s/step", ".2f"),
        ("peak RSS MB", ".0f"),
        ("growth MB", ".0f"),
        ("first loss", ".6f"),
    ]
    rows = [
        (name, r["tokens_per_s"], r["target_tokens_per_s"], r["s_per_step"], r["peak_rss_mb"],
         r["peak_growth_mb"], r["first_loss"])
        for name, r in result["rows"].items()
    ]  # fmt: skip
    print(table(columns, rows))
    for name, r in result["ratios"].items():
        print(
            f"{name}: tokens/s {r['tokens_per_s']:.2f}x, peak RSS {r['peak_rss']:.2f}x, "
            f"peak growth {r['peak_growth']:.2f}x, the rest (peak less weights and optimizer state) "
            f"{r['rest']:.2f}x, first-step loss rel. diff {r['first_loss_rel_diff']:.1e}"
        )
    print(f"same batches in every run: {result['same_batches']}")
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")
    print(load_line(result["loadavg_before"], result["loadavg_after"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--student-layers", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=256, help="lmdistill's loss chunk (target tokens)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--cases", help=f"comma-separated, of: {', '.join(CASES)} (default all; --quick: the first two)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny random teacher (4 layers, width 64), 2 + 1 steps"
    )
    ap.add_argument("--json", help=f"write the results here (default {RESULT}; --quick: nowhere)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.steps, a.warmup, a.batch, a.student_layers = 2, 1, 4, 2
    if a.cases is None:
        a.cases = ",".join(CASES[:2] if a.quick else CASES)
    unknown = [c for c in a.cases.split(",") if c and c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    if a.case:
        run_case(a.case, a)
        return
    if a.json is None:
        a.json = "" if a.quick else RESULT
    result = run(a)
    report(result)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
