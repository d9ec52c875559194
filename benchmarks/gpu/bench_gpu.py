"""One GPU benchmark at real sizes: lmdistill's KD loss and KD training step against naive, Liger and TRL.

Random weights built from config: teacher shaped like Qwen2.5-1.5B, student like Qwen2.5-0.5B
(vocab 151936, tied heads), bf16, SDPA attention. Nothing is downloaded. Cases, by group:

- loss (8192 tokens, hidden 896 student / 1536 teacher, bf16 inputs, fwd + bwd): lmdistill's
  `chunked_loss` (CE 0.5 + JSD beta 0.5 or forward KL 0.5, chunks 256/1024/2048), the same loss through
  full fp32 logits (`full_logits_loss`, "naive"), Liger's chunked `LigerFusedLinearJSDLoss` (CE 0.5 + JSD
  0.5, torch.compile'd as Liger ships it) and Liger's Triton `LigerFusedLinearJSD` (JSD only, compared
  with our JSD-only loss). Median of CUDA-event times after warm-up; peak = torch.cuda.max_memory_allocated
  after a reset, inputs included (`delta` = peak minus what was allocated before the call).
- loss_compiled: torch.compile on the chunk computation, two ways: (a) the library's per-chunk
  `_chunk_terms` compiled in place (what a one-line change in `lmdistill.chunked` would give), (b) a
  Liger-style fused chunk step (both head matmuls + CE + divergence, `torch.func.grad_and_value`,
  compiled) written here with the library's loss terms.
- train_*: KD training steps, batch 4 x 1024 random tokens, labels on every token, TrainingArguments
  bf16, gradient checkpointing off unless named `_gc`. lmdistill's DistillTrainer vs TRL's GKDTrainer
  (lmbda 0: off-policy, no generation). The divergence is matched to TRL's: GKD's loss is the generalized
  JSD at beta 0.5, temperature 1, with no CE term, so ours runs `LossSpec(jsd, beta 0.5, ce 0, kd 1)`;
  `train_ours_fkl_ce` is lmdistill's default recipe (CE 0.5 + forward KL 0.5). Tokens/s over the steps
  after the first 2; peak = max_memory_allocated over the whole run (weights and optimizer included);
  MFU = tokens/s * (2 N_teacher + 6 N_student) / peak bf16 FLOP/s (N: parameters, tied head counted once).

Each group runs in its own process (a crash, an OOM or a hang loses that group only; a hung group is
killed at its time limit) and each case inside a group in its own try/except. Groups run in priority
order inside a total time budget; whatever does not fit is recorded as skipped. The peers are optional:
a missing `trl` or `liger_kernel` gives "skipped: <package> not installed".

    python benchmarks/gpu/bench_gpu.py --out $OUT/gpu_results.json --log $OUT/cases.log   # GPU, ~4 min
    python benchmarks/gpu/bench_gpu.py --smoke --out /tmp/smoke.json                      # CPU, tiny

`benchmarks/gpu/run_gpu.sh` is the device-machine entry point (offline wheels, checks, then this).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

GIB = 2**30

# Figures measured on one H100 80GB (2026-11-27; torch 2.11, transformers 5.17, trl 1.16.0,
# liger-kernel 0.8.5), quoted from the project's field guide (section 6, "Performance arithmetic"); carried
# here so the script reads nothing outside the repository. Same shapes as the cases below.
ANCHORS = {
    "card": "NVIDIA H100 80GB HBM3",
    "versions": "torch 2.11, transformers 5.17, trl 1.16.0, liger-kernel 0.8.5",
    "trl_gkd_no_gc": {"tokens_per_s": 15200.0, "peak_gib": 50.5},
    "trl_gkd_gc": {"tokens_per_s": 11600.0, "peak_gib": 45.4},
    "naive_jsd_8192": {"ms": 224.8, "peak_gib": 61.1},
    "trl_bf16_jsd_8192": {"ms": 151.2, "peak_gib": 40.2},
    "liger_chunked_jsd_8192": {"ms": 46.5, "peak_gib": 3.3},
}
# Aims from the issue: training >= 2.5x TRL's tokens/s at <= 0.5x its peak; loss <= 1.1x Liger's time and memory.
AIMS = {"train_speed": 2.5, "train_memory": 0.5, "loss_time": 1.1, "loss_memory": 1.1}
PEAK_FLOPS = {"measured_790": 790e12, "dense_spec_989": 989e12}

TEACHER = dict(  # Qwen2.5-1.5B
    hidden_size=1536,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    intermediate_size=8960,
    vocab_size=151936,
)
STUDENT = dict(  # Qwen2.5-0.5B
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
)
SIZES = {
    "full": dict(
        tokens=8192,
        vocab=151936,
        chunks=(1024, 2048),
        batch=4,
        seq=1024,
        steps=12,
        skip=2,
        warmup=2,
        repeats=7,
        teacher=TEACHER,
        student=STUDENT,
    ),
    "smoke": dict(
        tokens=256,
        vocab=1024,
        chunks=(64, 128),
        batch=2,
        seq=64,
        steps=4,
        skip=1,
        warmup=1,
        repeats=2,
        teacher=dict(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            vocab_size=1024,
        ),
        student=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=1024,
        ),
    ),
}

# Groups in priority order: name -> (time limit s, expected s on an H100 (a guess until measured), peers).
# A group starts only if the budget left covers its expected time; it is killed at its limit.
GROUPS = {
    "loss": (120, 40, ()),
    "train_ours_jsd": (120, 35, ()),
    "train_trl_jsd": (150, 45, ("trl",)),
    "loss_liger": (150, 60, ("liger_kernel",)),
    "loss_compiled": (150, 70, ()),
    "train_ours_fkl_ce": (120, 35, ()),
    "train_ours_jsd_compiled": (150, 60, ()),
    "train_trl_jsd_gc": (150, 45, ("trl",)),
    # Run only when named (--only sampler; run_gpu.sh does it in a second call with its own budget), so the
    # groups above keep the default budget to themselves.
    "sampler": (420, 240, ()),
}
SEPARATE = ("sampler",)  # not in the default list of groups


# ----------------------------------------------------------------------------------------------------
# helpers used inside a group's process


class Ctx:
    """What a group needs to know: sizes, device, dtype, where to write its results."""

    def __init__(self, smoke: bool, lines: str):
        import torch

        self.smoke = smoke
        self.sz = SIZES["smoke" if smoke else "full"]
        self.cuda = not smoke
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.float32 if smoke else torch.bfloat16
        self.lines = lines
        self.compile_backend = "aot_eager" if smoke else "inductor"  # CPU smoke: trace only, no codegen

    def emit(self, name: str, **result) -> None:
        row = {"case": name, **result}
        with open(self.lines, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> int:
        import torch

        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak(self) -> int | None:
        import torch

        return torch.cuda.max_memory_allocated() if self.cuda else None

    def free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


class _Skip(Exception):
    """A case that cannot run here (not an error): recorded as skipped with the reason."""


def _case(ctx: Ctx, name: str, fn, *args, **kwargs) -> None:
    """Run one case; its result or its error goes to the results file, never up."""
    t0 = time.perf_counter()
    try:
        result = fn(ctx, *args, **kwargs)
        ctx.emit(name, status="ok", wall_s=round(time.perf_counter() - t0, 2), **result)
    except _Skip as e:
        ctx.emit(name, status="skipped", reason=str(e))
    except Exception as e:  # an OOM or a peer's failure must leave the other cases' numbers
        oom = "out of memory" in str(e).lower()
        ctx.emit(
            name,
            status="oom" if oom else "error",
            error=f"{type(e).__name__}: {str(e)[:600]}",
            wall_s=round(time.perf_counter() - t0, 2),
        )
        traceback.print_exc()
    finally:
        ctx.free()


def _timed(ctx: Ctx, fn) -> dict:
    """Median time (ms) of fn() after warm-up; peak memory over the timed calls (bytes, inputs included)."""
    import torch

    for _ in range(ctx.sz["warmup"]):
        fn()
    base = ctx.reset_peak()
    times = []
    for _ in range(ctx.sz["repeats"]):
        if ctx.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    peak = ctx.peak()
    out = {"ms": round(statistics.median(times), 3), "ms_min": round(min(times), 3)}
    if peak is not None:
        out["peak_gib"] = round(peak / GIB, 3)
        out["delta_gib"] = round((peak - base) / GIB, 3)
    return out


def _loss_inputs(ctx: Ctx):
    """Student/teacher hidden states and heads at the loss benchmark's sizes (fixed seed)."""
    import torch

    sz = ctx.sz
    n, v = sz["tokens"], sz["vocab"]
    hs, ht = sz["student"]["hidden_size"], sz["teacher"]["hidden_size"]
    g = torch.Generator(device=ctx.device).manual_seed(0)  # drawn on the device: seconds less per case

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=ctx.device) * scale).to(ctx.dtype)

    s_w = torch.nn.Parameter(rand(v, hs, scale=0.02))
    t_w = rand(v, ht, scale=0.02)
    s_h = rand(n, hs).requires_grad_()
    t_h = rand(n, ht)
    labels = torch.randint(0, v, (n,), generator=g, device=ctx.device)
    return s_h, s_w, t_h, t_w, labels


def _grad_norm(x) -> float:
    return float(x.grad.float().norm()) if x.grad is not None else float("nan")


def _spec(ctx: Ctx, loss: str, chunk: int, ce: float = 0.5, kd: float = 0.5):
    from lmdistill.chunked import LossSpec

    return LossSpec(loss=loss, ce_weight=ce, kd_weight=kd, beta=0.5, vocab=ctx.sz["vocab"], chunk_size=chunk)


def _lmdistill_loss(ctx: Ctx, kind: str, loss: str, chunk: int, ce: float = 0.5, kd: float = 0.5) -> dict:
    """lmdistill's chunked loss (kind "chunked") or the full-logits reference ("naive"), fwd + bwd."""
    from lmdistill.chunked import Head, chunked_loss, full_logits_loss

    s_h, s_w, t_h, t_w, labels = _loss_inputs(ctx)
    spec = _spec(ctx, loss, chunk, ce, kd)
    fn = chunked_loss if kind == "chunked" else full_logits_loss
    box = {}

    def step():
        s_h.grad = s_w.grad = None
        sums = fn(s_h, Head(s_w), labels, spec, t_h, Head(t_w))
        sums.total.backward()
        box["sums"] = sums

    out = _timed(ctx, step)
    n = box["sums"].tokens
    out.update(
        loss_per_token=float(box["sums"].total.detach()) / n,
        grad_h_norm_per_token=_grad_norm(s_h) / n,
        grad_w_norm_per_token=_grad_norm(s_w) / n,
        chunk=chunk if kind == "chunked" else None,
        loss=loss,
        ce_weight=ce,
        kd_weight=kd,
    )
    return out


def _liger_chunked(ctx: Ctx, chunk: int) -> dict:
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except ImportError as e:
        raise _Skip(f"liger_kernel.chunked_loss cannot be imported: {e}") from e

    s_h, s_w, t_h, t_w, labels = _loss_inputs(ctx)
    # Liger's defaults: CE 0.5 + JSD 0.5 (beta 0.5), mean over tokens, torch.compile'd chunk step (GPU).
    mod = LigerFusedLinearJSDLoss(
        weight_hard_loss=0.5, weight_soft_loss=0.5, beta=0.5, chunk_size=chunk, compiled=ctx.cuda
    )
    box = {}

    def step():
        s_h.grad = s_w.grad = None
        loss = mod(s_h, s_w, t_h, t_w, labels)
        loss.backward()
        box["loss"] = loss

    t0 = time.perf_counter()
    out = _timed(ctx, step)
    out.update(
        loss_per_token=float(box["loss"].detach()),
        grad_h_norm_per_token=_grad_norm(s_h),
        grad_w_norm_per_token=_grad_norm(s_w),
        chunk=chunk,
        loss="jsd",
        ce_weight=0.5,
        kd_weight=0.5,
        compiled=ctx.cuda,
        first_calls_s=round(time.perf_counter() - t0, 2),
    )
    return out


def _liger_triton(ctx: Ctx) -> dict:
    if not ctx.cuda:
        raise _Skip("Liger's Triton kernels need a GPU")
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD
    except ImportError as e:
        raise _Skip(f"liger_kernel.transformers cannot be imported: {e}") from e

    s_h, s_w, t_h, t_w, labels = _loss_inputs(ctx)
    mod = LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0)  # JSD only, mean over tokens
    box = {}

    def step():
        s_h.grad = s_w.grad = None
        loss = mod(s_h, s_w, t_h, t_w, labels)
        loss.backward()
        box["loss"] = loss

    out = _timed(ctx, step)
    out.update(
        loss_per_token=float(box["loss"].detach()),
        grad_h_norm_per_token=_grad_norm(s_h),
        grad_w_norm_per_token=_grad_norm(s_w),
        loss="jsd",
        ce_weight=0.0,
        kd_weight=1.0,
    )
    return out


def _compiled_terms(ctx: Ctx, loss: str, chunk: int) -> dict:
    """(a) the library's chunk terms (CE + divergence over one chunk's logits) under torch.compile."""
    import torch

    import lmdistill.chunked as ch

    original = ch._chunk_terms
    ch._chunk_terms = torch.compile(original, dynamic=False, backend=ctx.compile_backend)
    try:
        t0 = time.perf_counter()
        out = _lmdistill_loss(ctx, "chunked", loss, chunk)
        out["first_calls_s"] = round(time.perf_counter() - t0, 2)
        out["compiled"] = "chunk terms (lmdistill.chunked._chunk_terms)"
        return out
    finally:
        ch._chunk_terms = original


def _fused_compiled(ctx: Ctx, loss: str, chunk: int) -> dict:
    """(b) a Liger-style chunk step: both head matmuls, fp32 logits, CE + divergence and their gradients
    (torch.func.grad_and_value) compiled as one function; the library's loss terms, the library's sums."""
    import torch
    import torch.nn.functional as F

    from lmdistill.chunked import _chunk_terms

    s_h, s_w, t_h, t_w, labels = _loss_inputs(ctx)
    spec = _spec(ctx, loss, chunk)
    vocab = spec.vocab

    def chunk_total(h, w, lab, th, tw):
        s_logits = F.linear(h, w[:vocab]).float()
        t_logits = F.linear(th, tw[:vocab]).float()
        ce, kd = _chunk_terms(spec, s_logits, lab, t_logits)
        return spec.ce_weight * ce + spec.kd_weight * kd, (ce, kd)

    grad_step = torch.compile(
        torch.func.grad_and_value(chunk_total, argnums=(0, 1), has_aux=True),
        dynamic=False,
        backend=ctx.compile_backend,
    )
    box = {}

    def step():
        s_h.grad = s_w.grad = None
        grad_h = torch.empty_like(s_h)
        grad_w = torch.zeros(s_w.shape, dtype=torch.float32, device=s_w.device)
        total = torch.zeros((), dtype=torch.float32, device=s_w.device)
        h, w = s_h.detach(), s_w.detach()
        for start in range(0, h.shape[0], chunk):
            end = start + chunk
            (gh, gw), (tot, _) = grad_step(h[start:end], w, labels[start:end], t_h[start:end], t_w)
            grad_h[start:end] = gh
            grad_w += gw
            total += tot
        s_h.grad, s_w.grad = grad_h, grad_w.to(s_w.dtype)
        box["total"] = total

    t0 = time.perf_counter()
    out = _timed(ctx, step)
    n = s_h.shape[0]
    out.update(
        loss_per_token=float(box["total"]) / n,
        grad_h_norm_per_token=_grad_norm(s_h) / n,
        grad_w_norm_per_token=_grad_norm(s_w) / n,
        chunk=chunk,
        loss=loss,
        ce_weight=0.5,
        kd_weight=0.5,
        compiled="fused chunk step (matmuls + terms + grads)",
        first_calls_s=round(time.perf_counter() - t0, 2),
    )
    return out


# ----------------------------------------------------------------------------------------------------
# training


def _build(ctx: Ctx, shape: dict, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        **shape,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    with torch.device(ctx.device):
        model = AutoModelForCausalLM.from_config(config, dtype=ctx.dtype, attn_implementation="sdpa")
    return model.to(ctx.device)


def _rows(ctx: Ctx) -> list[dict]:
    """Random-token completion rows, labels on every token (batch x steps of them, plus one batch)."""
    import torch

    sz = ctx.sz
    g = torch.Generator().manual_seed(1)
    n_rows = sz["batch"] * (sz["steps"] + 1)
    ids = torch.randint(2, sz["vocab"] - 300, (n_rows, sz["seq"]), generator=g).tolist()
    return [{"input_ids": r, "attention_mask": [1] * len(r), "labels": list(r)} for r in ids]


def _tiny_tokenizer():
    """A processing class for TRL (it needs one); the data is already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def _train(
    ctx: Ctx, who: str, *, loss: str = "jsd", ce: float = 0.0, gc: bool = False, compiled=False
) -> dict:
    import torch
    from transformers import TrainerCallback

    from lmdistill.data.collator import DistillCollator

    sz = ctx.sz
    ctx.reset_peak()
    teacher = _build(ctx, sz["teacher"], seed=1)
    student = _build(ctx, sz["student"], seed=2)
    n_teacher = sum(p.numel() for p in teacher.parameters())  # parameters() counts a tied head once
    n_student = sum(p.numel() for p in student.parameters())
    models_gib = torch.cuda.memory_allocated() / GIB if ctx.cuda else None
    rows = _rows(ctx)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            ctx.sync()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            ctx.sync()
            self.ends.append(time.perf_counter())

    timer = StepTimer()
    out_dir = tempfile.mkdtemp(prefix=f"bench_{who}_")
    common = dict(
        output_dir=out_dir,
        max_steps=sz["steps"],
        per_device_train_batch_size=sz["batch"],
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=sz["steps"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_drop_last=True,
        gradient_checkpointing=gc,
        bf16=ctx.cuda,
        fp16=False,
        use_cpu=not ctx.cuda,
        seed=0,
    )
    collator = DistillCollator(pad_token_id=0)
    chunk = 1024 if ctx.cuda else 64
    if who == "ours":
        from transformers import TrainingArguments

        from lmdistill.training.trainer import DistillTrainer

        spec = _spec(ctx, loss, chunk, ce=ce, kd=1.0 - ce)
        trainer = DistillTrainer(
            model=student,
            teacher=teacher,
            spec=spec,
            args=TrainingArguments(**common),
            train_dataset=rows,
            data_collator=collator,
            callbacks=[timer],
        )
        what = f"lmdistill DistillTrainer, {loss} (CE {ce}, KD {1.0 - ce}), chunk {chunk}"
    else:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        try:
            from datasets import Dataset
            from trl.experimental.gkd import GKDConfig, GKDTrainer
        except ImportError as e:  # trl is there, but not what it imports (datasets, dill, ...)
            raise _Skip(f"{e.name or e} not installed (trl's GKDTrainer needs it): {e}") from e

        args = GKDConfig(**common, lmbda=0.0, beta=0.5, seq_kd=False, max_length=sz["seq"])
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=Dataset.from_list(rows),
            data_collator=collator,
            processing_class=_tiny_tokenizer(),
            callbacks=[timer],
        )
        what = "TRL GKDTrainer, lmbda 0, generalized JSD beta 0.5 (no CE), full logits"
    if compiled:
        import lmdistill.chunked as ch

        ch._chunk_terms = torch.compile(ch._chunk_terms, backend=ctx.compile_backend)
        what += ", chunk terms torch.compile'd"
    result = trainer.train()
    steps = [b - a for a, b in zip([timer.begin, *timer.ends[:-1]], timer.ends, strict=True)]
    timed = steps[sz["skip"] :]
    tokens_per_step = sz["batch"] * sz["seq"]
    tps = tokens_per_step * len(timed) / sum(timed)
    flops_per_token = 2 * n_teacher + 6 * n_student
    peak = ctx.peak()
    out = {
        "what": what,
        "tokens_per_s": round(tps, 1),
        "step_ms_median": round(1000 * statistics.median(timed), 2),
        "steps_timed": len(timed),
        "first_steps_s": [round(s, 3) for s in steps[: sz["skip"]]],
        "tokens_per_step": tokens_per_step,
        "n_teacher": n_teacher,
        "n_student": n_student,
        "flops_per_token": flops_per_token,
        "mfu": {k: round(tps * flops_per_token / v, 4) for k, v in PEAK_FLOPS.items()},
        "train_loss": float(result.training_loss),
        "gradient_checkpointing": gc,
        "optim": str(trainer.args.optim),
    }
    if peak is not None:
        out["peak_gib"] = round(peak / GIB, 3)
        out["models_gib"] = round(models_gib, 3)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    if who == "ours":
        out["nonfinite_skipped"] = trainer.nonfinite_skipped
    return out


# ----------------------------------------------------------------------------------------------------
# sampler: on-policy sampling through vLLM against batched `generate` (issue 23), on the same GPU

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2_CARRIED = Path(__file__).resolve().parent / "wheels" / "smollm2-135m"  # fetch_wheels.sh writes it
# The CPU scripts' settings (benchmarks/bench_vllm_sampler.py, bench_on_policy_samplers.py), full size.
SAMPLER_SIZES = {
    "full": dict(
        layers=None,
        batches=(1, 8, 32),
        max_new_tokens=64,
        repeats=3,
        steps=8,
        batch=8,
        on_policy_expected_s=120,
    ),
    "smoke": dict(
        layers=2, batches=(1, 2), max_new_tokens=8, repeats=1, steps=2, batch=2, on_policy_expected_s=0
    ),
}


def _vllm_python(ctx: Ctx) -> tuple[Path, str]:
    """The python that runs vLLM's server, and its vLLM version; _Skip when there is none.

    LMDISTILL_VLLM_PYTHON if set; else on CPU (smoke) the tests' .venv-vllm (tests/vllm/vllmserver.py),
    on a GPU this very python (a vLLM GPU wheel is too big to carry: the image must have it)."""
    named = os.environ.get("LMDISTILL_VLLM_PYTHON")
    if named:
        python = Path(named)
    elif ctx.smoke:
        from tests.vllm.vllmserver import vllm_python

        try:
            python = vllm_python()
        except AssertionError as e:
            raise _Skip(f"no vLLM CPU venv here: {e}") from None
    else:
        python = Path(sys.executable)
    try:
        probe = subprocess.run(
            [str(python), "-c", "import vllm; print(vllm.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
            env=_server_env(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _Skip(f"no vLLM on this machine: {python} -c 'import vllm' failed: {e}") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise _Skip(
            f"no vLLM on this machine: {python} cannot import vllm ({last[:200]}); "
            "set LMDISTILL_VLLM_PYTHON to a python that has it"
        )
    return python, probe.stdout.strip().splitlines()[-1]


def _server_env() -> dict[str, str]:
    """Extra environment of vLLM's server: dev mode (the reload route), and none of this run's PYTHONPATH
    (run_gpu.sh puts carried wheels there, e.g. another transformers, which vLLM must not pick up)."""
    return {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "PYTHONPATH": ""}


def _smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct's tokenizer (with chat template) and config, without weights: LMDISTILL_SMOLLM2_DIR,
    the folder fetch_wheels.sh carries, or here the embedded model's converted folder."""
    named = os.environ.get("LMDISTILL_SMOLLM2_DIR")
    for folder in [Path(named)] if named else [SMOLLM2_CARRIED]:
        if (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file():
            return folder
    if named:
        raise _Skip(f"LMDISTILL_SMOLLM2_DIR={named} holds no tokenizer.json and config.json")
    try:
        from lmdistill.models.embedded import ensure_embedded

        return ensure_embedded("smollm2-135m", progress=lambda _: None)
    except Exception as e:  # the GPU machine has neither the carried folder nor the embedded package
        raise _Skip(
            f"no SmolLM2 tokenizer: {SMOLLM2_CARRIED} is missing (bash benchmarks/gpu/fetch_wheels.sh, and carry "
            f"benchmarks/gpu/wheels) and the embedded model is not installed ({type(e).__name__}: {e})"
        ) from None


def _sampler_setup(ctx: Ctx, tmp: Path, state: dict) -> dict:
    """vLLM's python, the random SmolLM2-shaped student and teacher saved as folders, the prompts, the vLLM
    server on the student's untied copy started and connected."""
    import shlex

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks.bench_on_policy_samplers import DATA
    from lmdistill.data import load_records
    from lmdistill.models import load_tokenizer
    from lmdistill.training.samplers.vllm_client import VllmClient
    from lmdistill.training.samplers.weight_sync import write_server_folder
    from lmdistill.training.sampling import eos_ids, prompt_features
    from tests.vllm.vllmserver import VllmServer

    sz = state["sz"]
    python, version = _vllm_python(ctx)
    folder = _smollm2_folder()
    tok = load_tokenizer(str(folder))
    config = AutoConfig.from_pretrained(folder)
    if sz["layers"]:
        config.num_hidden_layers = sz["layers"]
    for name, seed in (("teacher", 1), ("student", 2)):  # random weights, float32 folders, tokenizer beside
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
        state[f"{name}_dir"] = tmp / name
    student = model.to(ctx.device, ctx.dtype).eval()
    rows = load_records(DATA)[: max(sz["batches"])]
    prompts = [
        f["prompt_ids"] for f in prompt_features(rows, tok, 256, sz["max_new_tokens"], need_answers=False)
    ]
    served = write_server_folder(tmp / "student", tmp / "served")
    dtype = "float32" if ctx.smoke else "bfloat16"
    args = () if ctx.smoke else ("--gpu-memory-utilization", "0.3", "--max-num-seqs", "64")
    args += tuple(shlex.split(os.environ.get("LMDISTILL_VLLM_ARGS", "")))
    eager = ctx.smoke or os.environ.get("LMDISTILL_VLLM_EAGER") == "1"
    server = VllmServer(
        served,
        "student",
        tmp / "vllm.log",
        args=args,
        kv_gib=1,
        max_model_len=512,
        env=_server_env(),
        python=python,
        cpu=ctx.smoke,
        dtype=dtype,
        enforce_eager=eager,
    )
    server.start()
    state["server"] = server
    with open(ctx.lines + ".servers", "a") as fh:  # the parent stops it if this process is killed
        fh.write(f"{server.proc.pid}\n")
    server.wait(timeout=max(60.0, state["deadline"] - time.monotonic() - 30))
    state.update(
        tok=tok,
        student=student,
        prompts=prompts,
        eos=eos_ids(tok, student),
        client=VllmClient(server.url, "student", 600).connect(tok, "reload"),
    )
    return {
        "vllm_python": str(python),
        "vllm_version": version,
        "vllm_args": " ".join(
            ["--dtype", dtype, *(["--enforce-eager"] if eager else []), "--max-model-len", "512", *args]
        ),
        "vllm_ready_after_s": round(server.ready_after or 0.0, 1),
        "student": f"SmolLM2-135M-Instruct's config, {config.num_hidden_layers} layers, random weights, {ctx.dtype}",
        "tokenizer_from": str(folder),
        "prompts": len(prompts),
    }


def _sampler_tokens(ctx: Ctx, state: dict) -> dict:
    """benchmarks/bench_vllm_sampler.py's measurement, the student on this device."""
    from benchmarks.bench_vllm_sampler import tokens_per_s

    sz = state["sz"]
    results = tokens_per_s(
        state["student"],
        state["tok"],
        state["prompts"],
        state["eos"],
        state["client"],
        list(sz["batches"]),
        sz["max_new_tokens"],
        sz["repeats"],
    )
    ratio = {
        b: _ratio(r["vllm"]["tokens_per_s_median"], r["generate"]["tokens_per_s_median"])
        for b, r in results.items()
    }
    settings = {k: sz[k] for k in ("batches", "max_new_tokens", "repeats")}
    return {"tokens_per_s": results, "vllm_over_generate": ratio, "settings": settings}


def _sampler_sync(ctx: Ctx, state: dict) -> dict:
    from benchmarks.bench_vllm_sampler import time_sync

    return {
        "full_weight_sync_s": round(time_sync(state["client"], state["student"], state["tmp"] / "sync"), 3)
    }


def _sampler_on_policy(ctx: Ctx, state: dict) -> dict:
    """benchmarks/bench_on_policy_samplers.py's two runs (generate, then vLLM with reload sync every step),
    trainer on this device: teacher and student the random folders above."""
    from benchmarks.bench_on_policy_samplers import run_once, write_prompts

    sz = state["sz"]
    a = argparse.Namespace(steps=sz["steps"], batch=sz["batch"], max_new_tokens=sz["max_new_tokens"])
    tmp = state["tmp"] / "on_policy"
    tmp.mkdir()
    data = write_prompts(tmp / "prompts.jsonl", a.batch * a.steps)
    overrides, check = {}, {}
    if ctx.cuda:  # bf16 autocast, the teacher in bf16; vLLM serves bf16, so the sample check gets more room
        overrides = {
            "train": {"extra": {"disable_tqdm": True}, "bf16": True},
            "teacher": {"dtype": "bfloat16"},
        }
        check = {"vllm_sampler": {"check_atol": float(os.environ.get("LMDISTILL_CHECK_ATOL", "0.2"))}}
    out, logs = {}, {"generate": [], "vllm": []}
    for name, url in (("generate", None), ("vllm", state["server"].url)):
        more = {**overrides, **check} if url else overrides  # `config` merges them into its sections
        out[name] = run_once(
            a,
            tmp,
            name,
            state["student_dir"],
            data,
            url,
            log_rows=logs[name],
            teacher=str(state["teacher_dir"]),
            overrides=more,
        )
    g, v = (out[k]["median_after_step_0"] for k in ("generate", "vllm"))
    return {
        "samplers": out,
        "vllm_logprob_diff": [h.get("vllm_logprob_diff") for h in logs["vllm"]],
        "vllm_over_generate": {
            "sampling": _ratio(v["sampling"], g["sampling"]),
            "sampling_sync_check": _ratio(v["sampling"] + v["sync"] + v["check"], g["sampling"]),
            "step_total": _ratio(v["total"], g["total"]),
        },
        "settings": {
            "steps": a.steps,
            "batch": a.batch,
            "max_new_tokens": a.max_new_tokens,
            **overrides,
            **check,
        },
    }


def group_sampler(ctx: Ctx, limit_s: float) -> None:
    """Setup (vLLM's server up), tokens/s at each batch, one sync, then the on-policy split if time is left."""
    sz = SAMPLER_SIZES["smoke" if ctx.smoke else "full"]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_sampler_") as tmp:
        state = {"sz": sz, "tmp": Path(tmp), "deadline": start + limit_s}
        try:
            _case(ctx, "sampler_setup", _sampler_setup, Path(tmp), state)
            if "client" not in state:
                return
            _case(ctx, "sampler_tokens_per_s", _sampler_tokens, state)
            _case(ctx, "sampler_sync", _sampler_sync, state)
            left = state["deadline"] - time.monotonic()
            if left > sz["on_policy_expected_s"]:
                _case(ctx, "sampler_on_policy", _sampler_on_policy, state)
            else:
                ctx.emit("sampler_on_policy", status="skipped", reason=f"time limit ({left:.0f} s left)")
        finally:
            if state.get("server") is not None:
                state["server"].stop()


# ----------------------------------------------------------------------------------------------------
# groups


def group_loss(ctx: Ctx) -> None:
    c1, c2 = ctx.sz["chunks"]
    for loss, tag in (("jsd", "jsd"), ("forward_kl", "fkl")):
        for chunk in (c1, c2):
            _case(ctx, f"loss_ours_{tag}_c{chunk}", _lmdistill_loss, "chunked", loss, chunk)
    _case(ctx, f"loss_ours_jsd_c{c1 // 4}", _lmdistill_loss, "chunked", "jsd", c1 // 4)
    _case(ctx, f"loss_ours_jsd_kdonly_c{c1}", _lmdistill_loss, "chunked", "jsd", c1, 0.0, 1.0)
    # Naive last: it needs the most memory, and an OOM must not cost the cases above.
    _case(ctx, "loss_naive_jsd", _lmdistill_loss, "naive", "jsd", c1)
    _case(ctx, "loss_naive_fkl", _lmdistill_loss, "naive", "forward_kl", c1)


def group_loss_liger(ctx: Ctx) -> None:
    c1, _ = ctx.sz["chunks"]
    _case(ctx, f"loss_liger_chunked_jsd_c{c1}", _liger_chunked, c1)
    _case(ctx, "loss_liger_triton_jsd_kdonly", _liger_triton)


def group_loss_compiled(ctx: Ctx) -> None:
    c1, _ = ctx.sz["chunks"]
    _case(ctx, f"loss_compiled_terms_jsd_c{c1}", _compiled_terms, "jsd", c1)
    _case(ctx, f"loss_compiled_fused_jsd_c{c1}", _fused_compiled, "jsd", c1)


def group_train(ctx: Ctx, name: str) -> None:
    kwargs = {
        "train_ours_jsd": dict(who="ours"),
        "train_ours_fkl_ce": dict(who="ours", loss="forward_kl", ce=0.5),
        "train_ours_jsd_compiled": dict(who="ours", compiled=True),
        "train_trl_jsd": dict(who="trl"),
        "train_trl_jsd_gc": dict(who="trl", gc=True),
    }[name]
    _case(ctx, name, _train, **kwargs)


def run_group(name: str, smoke: bool, lines: str, limit_s: float = 600.0) -> None:
    ctx = Ctx(smoke, lines)
    import torch

    if ctx.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    if name == "loss":
        group_loss(ctx)
    elif name == "loss_liger":
        group_loss_liger(ctx)
    elif name == "loss_compiled":
        group_loss_compiled(ctx)
    elif name == "sampler":
        sys.path.insert(0, str(ROOT))  # benchmarks.bench_*, tests.vllm.vllmserver: the CPU scripts' code
        group_sampler(ctx, limit_s)
    else:
        group_train(ctx, name)


# ----------------------------------------------------------------------------------------------------
# the parent: runs the groups, collects, compares, prints


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "trl", "liger_kernel", "datasets", "accelerate", "triton"):
        try:
            if importlib.util.find_spec(mod) is None:
                out[mod] = None
                continue
        except (ImportError, ValueError):
            out[mod] = None
            continue
        from importlib.metadata import PackageNotFoundError, version

        dist = {"liger_kernel": "liger-kernel"}.get(mod, mod)
        try:
            out[mod] = version(dist)
        except PackageNotFoundError:
            out[mod] = "?"
    return out


def _device_info(smoke: bool) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            name=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(p.total_memory / GIB, 1),
            sms=p.multi_processor_count,
            cuda=torch.version.cuda,
        )
    if smoke:
        info["name"] = f"CPU smoke ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info


def _spawn(name: str, smoke: bool, lines: Path, log, limit: float) -> tuple[str, float]:
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--group", name, "--lines", str(lines)]
    cmd += ["--limit-s", f"{limit:.0f}"]
    if smoke:
        cmd.append("--smoke")
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
    if smoke:  # small ops on a shared CPU: one thread each avoids threads waiting on each other
        env["OMP_NUM_THREADS"] = "1"
    log.write(f"\n===== {name} (limit {limit:.0f} s) =====\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
        status = "ok" if rc == 0 else f"exit {rc}"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group's own process group: it and its compile workers
        proc.wait()
        status = f"killed at its time limit ({limit:.0f} s)"
    _stop_servers(Path(f"{lines}.servers"))
    return status, time.perf_counter() - t0


def _stop_servers(listed: Path) -> None:
    """Servers a group started (vLLM's, in their own process groups, whose ids it wrote to `listed`) and left
    running, because the group was killed: their process groups ended (TERM, then KILL after 30 s)."""
    if not listed.exists():
        return
    for pid in {int(x) for x in listed.read_text().split()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(30):
                time.sleep(1)
                os.killpg(pid, 0)  # ProcessLookupError once the group is gone
            os.killpg(pid, signal.SIGKILL)


def _read_lines(path: Path) -> dict:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                out[row.pop("case")] = row
    return out


def _ratio(a, b):
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def _rel(a, b):
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return abs(a - b) / abs(b)


def summarise(cases: dict, smoke: bool) -> dict:
    """Ratios to the anchors and to the peers of this run; the aims met or not."""
    ok = {k: v for k, v in cases.items() if v.get("status") == "ok"}
    s: dict = {"loss": {}, "train": {}}
    naive = {"jsd": ok.get("loss_naive_jsd"), "forward_kl": ok.get("loss_naive_fkl")}
    liger = next((v for k, v in ok.items() if k.startswith("loss_liger_chunked")), None)
    liger_tr = ok.get("loss_liger_triton_jsd_kdonly")
    for name, r in ok.items():
        if not name.startswith("loss_"):
            continue
        row = {}
        ref = naive.get(r.get("loss")) if r.get("ce_weight") == 0.5 else None
        if ref is not None and name not in ("loss_naive_jsd", "loss_naive_fkl"):
            row["loss_rel_diff_vs_naive"] = _rel(r["loss_per_token"], ref["loss_per_token"])
            row["grad_h_rel_diff_vs_naive"] = _rel(r["grad_h_norm_per_token"], ref["grad_h_norm_per_token"])
        if r.get("loss") == "jsd" and r.get("ce_weight") == 0.5:
            anchor = ANCHORS["liger_chunked_jsd_8192"]
            row["ms_over_liger_anchor"] = _ratio(r["ms"], anchor["ms"])
            row["gib_over_liger_anchor"] = _ratio(r.get("peak_gib"), anchor["peak_gib"])
            if liger is not None:
                row["ms_over_liger_this_run"] = _ratio(r["ms"], liger["ms"])
                row["gib_over_liger_this_run"] = _ratio(r.get("peak_gib"), liger.get("peak_gib"))
        if name.startswith("loss_ours_jsd_kdonly") and liger_tr is not None:
            row["ms_over_liger_triton_this_run"] = _ratio(r["ms"], liger_tr["ms"])
            row["gib_over_liger_triton_this_run"] = _ratio(r.get("peak_gib"), liger_tr.get("peak_gib"))
            row["loss_rel_diff_vs_liger_triton"] = _rel(r["loss_per_token"], liger_tr["loss_per_token"])
        s["loss"][name] = row
    trl = ok.get("train_trl_jsd")
    trl_gc = ok.get("train_trl_jsd_gc")
    for name, r in ok.items():
        if not name.startswith("train_"):
            continue
        anchor = ANCHORS["trl_gkd_gc" if name.endswith("_gc") else "trl_gkd_no_gc"]
        row = {
            "speed_over_trl_anchor": _ratio(r["tokens_per_s"], anchor["tokens_per_s"]),
            "memory_over_trl_anchor": _ratio(r.get("peak_gib"), anchor["peak_gib"]),
        }
        if trl is not None:
            row["speed_over_trl_this_run"] = _ratio(r["tokens_per_s"], trl["tokens_per_s"])
            row["memory_over_trl_this_run"] = _ratio(r.get("peak_gib"), trl.get("peak_gib"))
        if trl_gc is not None:
            row["speed_over_trl_gc_this_run"] = _ratio(r["tokens_per_s"], trl_gc["tokens_per_s"])
            row["memory_over_trl_gc_this_run"] = _ratio(r.get("peak_gib"), trl_gc.get("peak_gib"))
        s["train"][name] = row
    compiled = {}
    for name, r in ok.items():  # torch.compile: speed-up over the same loss and chunk without it
        if name.startswith("loss_compiled_"):
            tag = "jsd" if r["loss"] == "jsd" else "fkl"
            base = ok.get(f"loss_ours_{tag}_c{r['chunk']}")
            if base is not None:
                compiled[name] = {
                    "speedup": _ratio(base["ms"], r["ms"]),
                    "memory_ratio": _ratio(r.get("peak_gib"), base.get("peak_gib")),
                }
    if ok.get("train_ours_jsd_compiled") and ok.get("train_ours_jsd"):
        compiled["train_ours_jsd_compiled"] = {
            "speedup": _ratio(
                ok["train_ours_jsd_compiled"]["tokens_per_s"], ok["train_ours_jsd"]["tokens_per_s"]
            )
        }
    s["compile"] = compiled
    if not smoke:
        aims = {}
        ours = ok.get("train_ours_jsd")
        if ours:
            ref = trl or ANCHORS["trl_gkd_no_gc"]
            aims["train_speed_>=2.5x_trl"] = ours["tokens_per_s"] >= AIMS["train_speed"] * ref["tokens_per_s"]
            aims["train_memory_<=0.5x_trl"] = ours["peak_gib"] <= AIMS["train_memory"] * ref["peak_gib"]
            aims["train_reference"] = "TRL this run" if trl else "TRL anchor (H100, GUIDE)"
        best = min(
            (v for k, v in ok.items() if k.startswith("loss_ours_jsd_c")),
            key=lambda v: v["ms"],
            default=None,
        )
        if best:
            ref = liger or ANCHORS["liger_chunked_jsd_8192"]
            aims["loss_best_ours_jsd_chunk"] = best["chunk"]
            aims["loss_time_<=1.1x_liger"] = best["ms"] <= AIMS["loss_time"] * ref["ms"]
            aims["loss_memory_<=1.1x_liger"] = best["peak_gib"] <= AIMS["loss_memory"] * ref["peak_gib"]
            aims["loss_reference"] = "Liger this run" if liger else "Liger anchor (H100, GUIDE)"
        s["aims"] = aims
    return s


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def print_table(result: dict) -> None:
    cases, summ = result["cases"], result["summary"]
    dev = result["device"].get("name", "?")
    print(f"\n=== lmdistill GPU benchmark on {dev} ({result['versions']}) ===")
    print(f"anchors: {ANCHORS['card']}, {ANCHORS['versions']}")
    sz = result["sizes"]
    dtype = "float32" if result["smoke"] else "bf16"
    if any(n.startswith(("loss_", "train_")) for n in cases):
        _print_loss_train(cases, summ, sz, dtype, result["smoke"])
    if any(n.startswith("sampler") for n in cases):
        _print_sampler(cases)
    if summ.get("compile"):
        print("\ntorch.compile speed-up (x, over the same case uncompiled):", json.dumps(summ["compile"]))
    if summ.get("aims"):
        print("\naims:", json.dumps(summ["aims"]))
    print(f"\ngroups: {json.dumps(result['groups'])}")
    print(f"total {result['wall_s']:.0f} s; results in {result['out']}")


def _print_sampler(cases: dict) -> None:
    print(
        "\nOn-policy sampling: vLLM on this device against batched generate (same student, prompts, settings)"
    )
    for name in ("sampler", "sampler_setup", "sampler_tokens_per_s", "sampler_sync", "sampler_on_policy"):
        r = cases.get(name)
        if r is None:
            continue
        if r.get("status") != "ok":
            print(f"{name:<22}  {r.get('status')}: {r.get('reason') or r.get('error', '')}"[:220])
        elif name == "sampler_setup":
            print(
                f"vLLM {r['vllm_version']} ({r['vllm_args']}), ready after {r['vllm_ready_after_s']} s; {r['student']}"
            )
        elif name == "sampler_tokens_per_s":
            print(f"{'batch':>6}{'generate tok/s':>16}{'vLLM tok/s':>12}{'vLLM/gen':>10}")
            for b, row in r["tokens_per_s"].items():
                g, v = row["generate"]["tokens_per_s_median"], row["vllm"]["tokens_per_s_median"]
                print(f"{b:>6}{g:>16.1f}{v:>12.1f}{_fmt(r['vllm_over_generate'][b], '.2f'):>10}")
        elif name == "sampler_sync":
            print(f"one full-weight sync (safetensors + reload_weights): {r['full_weight_sync_s']} s")
        else:
            print("on-policy step, medians after step 0 (s):")
            for sampler, row in r["samplers"].items():
                med = row["median_after_step_0"]
                parts = ", ".join(f"{k} {med[k]}" for k in (*_PARTS, "total"))
                print(f"  {sampler:<9} {parts}")
                print(f"  {'':<9} all steps {row['steps_total_s']} s; the whole run {row['run_wall_s']} s")
            print(f"  vLLM / generate: {json.dumps(r['vllm_over_generate'])}")


_PARTS = ("sampling", "sync", "check", "teacher", "student")


def _print_loss_train(cases: dict, summ: dict, sz: dict, dtype: str, smoke: bool) -> None:
    print(
        f"\nKD loss fwd+bwd, {sz['tokens']} tokens, V {sz['vocab']}, {dtype} inputs (peak includes the inputs)"
    )
    head = f"{'case':<36}{'ms':>9}{'peak GiB':>10}{'loss/tok':>11}{'vs naive':>10}{'ms/Liger':>10}{'GiB/Liger':>10}"
    print(head + "   (vs Liger: this run, else the anchor 46.5 ms / 3.3 GiB)")
    for name, r in cases.items():
        if not name.startswith("loss_"):
            continue
        if r.get("status") != "ok":
            print(f"{name:<36}  {r.get('status')}: {r.get('reason') or r.get('error', '')}"[:180])
            continue
        s = summ["loss"].get(name, {})
        ms_l = s.get("ms_over_liger_this_run", s.get("ms_over_liger_anchor"))
        gb_l = s.get("gib_over_liger_this_run", s.get("gib_over_liger_anchor"))
        print(
            f"{name:<36}{_fmt(r['ms']):>9}{_fmt(r.get('peak_gib'), '.2f'):>10}"
            f"{_fmt(r['loss_per_token'], '.5f'):>11}{_fmt(s.get('loss_rel_diff_vs_naive'), '.1e'):>10}"
            f"{_fmt(ms_l, '.2f'):>10}{_fmt(gb_l, '.2f'):>10}"
        )
    shapes = "teacher Qwen2.5-1.5B shape -> student Qwen2.5-0.5B shape" if not smoke else "tiny Qwen2"
    print(f"\nKD training, batch {sz['batch']} x {sz['seq']}, {shapes}, {dtype}")
    print(
        f"{'case':<28}{'tok/s':>10}{'peak GiB':>10}{'MFU@790T':>10}{'MFU@989T':>10}{'x TRL':>8}{'mem/TRL':>9}"
    )
    print(
        "   (x TRL, mem/TRL: against TRL GKD of this run where it ran, else the anchor 15.2k tok/s / 50.5 GiB)"
    )
    for name, r in cases.items():
        if not name.startswith("train_"):
            continue
        if r.get("status") != "ok":
            print(f"{name:<28}  {r.get('status')}: {r.get('reason') or r.get('error', '')}"[:180])
            continue
        s = summ["train"].get(name, {})
        sp = s.get("speed_over_trl_this_run", s.get("speed_over_trl_anchor"))
        mem = s.get("memory_over_trl_this_run", s.get("memory_over_trl_anchor"))
        print(
            f"{name:<28}{_fmt(r['tokens_per_s'], '.0f'):>10}{_fmt(r.get('peak_gib'), '.2f'):>10}"
            f"{_fmt(100 * r['mfu']['measured_790'], '.1f') + '%':>10}"
            f"{_fmt(100 * r['mfu']['dense_spec_989'], '.1f') + '%':>10}"
            f"{_fmt(sp, '.2f'):>8}{_fmt(mem, '.2f'):>9}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, float32 (tests the script)")
    ap.add_argument(
        "--out", default=None, help="results JSON (default $OUT/gpu_results.json or ./gpu_results.json)"
    )
    ap.add_argument("--log", default=None, help="the groups' own output (default: beside --out, cases.log)")
    ap.add_argument(
        "--budget-s", type=float, default=240.0, help="total seconds for all groups (default 240)"
    )
    ap.add_argument("--only", default=None, help="comma-separated groups to run: " + ", ".join(GROUPS))
    ap.add_argument("--group", help=argparse.SUPPRESS)
    ap.add_argument("--lines", help=argparse.SUPPRESS)
    ap.add_argument("--limit-s", type=float, default=600.0, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.group:  # inside a group's process
        run_group(a.group, a.smoke, a.lines, a.limit_s)
        return

    t_start = time.perf_counter()
    out = Path(a.out or Path(os.environ.get("OUT", ".")) / "gpu_results.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(a.log) if a.log else out.with_name("cases.log")
    device = _device_info(a.smoke)
    versions = _versions()
    print(f"device: {device}\nversions: {versions}", flush=True)
    if not a.smoke and not device["cuda_available"]:
        sys.exit("bench_gpu: no CUDA device visible to torch; run with --smoke on a CPU machine")
    names = (
        [g for g in GROUPS if g not in SEPARATE]
        if not a.only
        else [g.strip() for g in a.only.split(",") if g.strip()]
    )
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        sys.exit(f"bench_gpu: unknown group(s) {unknown}; choose from {list(GROUPS)}")

    cases: dict = {}
    groups: dict = {}
    deadline = t_start + a.budget_s
    with tempfile.TemporaryDirectory() as tmp, open(log_path, "a") as log:
        for name in names:
            limit, expected, needs = GROUPS[name]
            missing = [p for p in needs if versions.get(p) is None]
            if missing:
                groups[name] = f"skipped: {missing[0].replace('_', '-')} not installed"
                cases[name] = {"status": "skipped", "reason": groups[name][9:]}
                print(f"[{time.perf_counter() - t_start:6.1f} s] {name}: {groups[name]}", flush=True)
                continue
            left = deadline - time.perf_counter()
            if left < (expected if not a.smoke else 0):
                groups[name] = f"skipped: time budget ({left:.0f} s left of {a.budget_s:.0f})"
                cases[name] = {"status": "skipped", "reason": groups[name][9:]}
                print(f"[{time.perf_counter() - t_start:6.1f} s] {name}: {groups[name]}", flush=True)
                continue
            lines = Path(tmp) / f"{name}.jsonl"
            status, took = _spawn(name, a.smoke, lines, log, min(limit, left) if not a.smoke else 600)
            got = _read_lines(lines)
            if not got:
                cases[name] = {
                    "status": "error",
                    "error": f"group produced no result ({status}); see {log_path}",
                }
            cases.update(got)
            groups[name] = f"{status}, {took:.1f} s"
            print(f"[{time.perf_counter() - t_start:6.1f} s] {name}: {groups[name]}", flush=True)
            for case, r in got.items():
                brief = {
                    k: r[k] for k in ("status", "ms", "peak_gib", "tokens_per_s", "error", "reason") if k in r
                }
                print(f"           {case}: {brief}", flush=True)

    result = {
        "device": device,
        "versions": versions,
        "smoke": a.smoke,
        "sizes": {k: v for k, v in SIZES["smoke" if a.smoke else "full"].items()},
        "anchors": ANCHORS,
        "aims": AIMS,
        "peak_flops": PEAK_FLOPS,
        "cases": cases,
        "groups": groups,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "out": str(out),
        "log": str(log_path),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    result["summary"] = summarise(cases, a.smoke)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)


if __name__ == "__main__":
    main()
