"""The run's trainer, composed of its parts: TrainingArguments from train.*, the models placed by the
launcher, hint terms, the sampler's trainer class and collator, the loss spec and the teacher source."""

from __future__ import annotations

import torch
from transformers import TrainingArguments

from lmdistill.chunked import LossSpec
from lmdistill.config import RunConfig, TrainConfig
from lmdistill.data import DistillCollator, pad_id
from lmdistill.errors import UserError
from lmdistill.training.hint_terms import HintTerms
from lmdistill.training.parts.launcher import choose_launcher
from lmdistill.training.parts.models import Models
from lmdistill.training.parts.sampler import choose_sampler
from lmdistill.training.parts.teacher import teacher_is_read
from lmdistill.training.trainer import DistillTrainer


def training_arguments(t: TrainConfig, *, eval_enabled: bool = False) -> TrainingArguments:
    """TrainingArguments from our TrainConfig; `t.extra` passes any other field through."""
    args = dict(
        output_dir=t.output_dir,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        bf16=t.bf16,
        report_to=t.report_to,
        remove_unused_columns=False,
        eval_strategy="steps" if eval_enabled else "no",
        eval_steps=t.save_steps if eval_enabled else None,
        disable_tqdm=False,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if t.gradient_checkpointing:  # only when asked: the name is deprecated in newer transformers
        args["gradient_checkpointing"] = True
    if t.fsdp:  # Trainer's condition for a model sharded before it; ShardedDistillTrainer saves the optimizer
        args["save_only_model"] = True
    args.update(t.extra)
    try:
        return TrainingArguments(**args)
    except (TypeError, ValueError) as e:  # an unknown key in train.extra, a bad scheduler name, ...
        raise UserError(f"train: transformers.TrainingArguments refused the settings: {e}") from None


def make_trainer(
    cfg: RunConfig, models: Models, train_features, eval_features=None, log=print, store=None, sampler=None
) -> DistillTrainer:
    """The run's trainer: the loss asks `models.source` (none when no term reads the teacher).

    store: a `TeacherStore` to train from (older callers); `build_models(source=StoreTeacher(store))`
    is the same. Features carrying "example_index" are looked up in it. sampler: the run's sampler part,
    already connected (`choose_sampler(cfg).connect(...)`); by default chosen (and connected) here.
    """
    if store is not None and models.source is None:
        from lmdistill.teachers.whitebox import StoreTeacher

        models.source = StoreTeacher(store)
    args = training_arguments(cfg.train, eval_enabled=eval_features is not None)
    launcher, sampler = choose_launcher(cfg), sampler or choose_sampler(cfg)
    launcher.prepare(models, args, log)
    hints = HintTerms(cfg.hints, models.student, models.teacher, log) if cfg.hints.enabled else None
    launcher.after_hints(hints)
    collator = DistillCollator(pad_token_id=pad_id(models.tokenizer))
    if models.xtok is not None:  # both tokenizations of every text
        collator = models.xtok.collator(pad_id(models.tokenizer))
    trainer_class = sampler.trainer_class(launcher.trainer_class())
    return trainer_class(
        model=models.student,
        teacher=models.source if teacher_is_read(cfg) else None,
        hints=hints,
        spec=LossSpec.from_config(cfg.distill, models.vocab),
        max_nonfinite=cfg.distill.max_nonfinite,
        args=args,
        train_dataset=train_features,
        eval_dataset=eval_features,
        data_collator=sampler.collator(collator),
        xtok=models.xtok,
        **sampler.trainer_kwargs(cfg, models),
    )
