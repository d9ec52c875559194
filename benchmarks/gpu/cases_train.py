"""The KD training cases of bench_gpu.py (groups `train_*`): lmdistill's DistillTrainer against TRL's
GKDTrainer on random Qwen2-shaped models and random tokens; tokens/s after the first steps, peak memory,
MFU."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from gpu_context import GIB, Ctx, _case, _Skip, _spec

PEAK_FLOPS = {"measured_790": 790e12, "dense_spec_989": 989e12}


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


def group_train(ctx: Ctx, name: str) -> None:
    kwargs = {
        "train_ours_jsd": dict(who="ours"),
        "train_ours_fkl_ce": dict(who="ours", loss="forward_kl", ce=0.5),
        "train_ours_jsd_compiled": dict(who="ours", compiled=True),
        "train_trl_jsd": dict(who="trl"),
        "train_trl_jsd_gc": dict(who="trl", gc=True),
    }[name]
    _case(ctx, name, _train, **kwargs)
