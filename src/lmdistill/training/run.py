"""The logits-KD recipe: config in, trained student folder out. `lmdistill train` is a thin call to `run`.

Steps: load the teacher (frozen); build the student (a model of its own, or the teacher shrunk to
fewer layers); check that both share a tokenizer and find the shared real vocabulary; tokenize the
data with completion-only labels; train with `DistillTrainer`; save the student atomically.

With `distill.teacher_store` (a folder from `lmdistill capture`) no teacher runs: the store is checked
against the run first (finished, same temperature, tokenizer and tokenized data), each training example
carries its index into the store, and the collator adds the stored top-k rows to each batch. The
teacher's weights are loaded only to shrink it into the student, and dropped before training.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import TrainingArguments, set_seed

from lmdistill.chunked import LossSpec
from lmdistill.config import RunConfig, TrainConfig, save_config
from lmdistill.data import DistillCollator, load_records, pad_id, tokenize_records
from lmdistill.errors import UserError
from lmdistill.io import make_temp_dir, public_tree
from lmdistill.models import (
    check_vocab,
    count_parameters,
    describe_sizes,
    head_rows,
    load_model,
    load_teacher,
    load_tokenizer,
    resolve_dtype,
    shrink_model,
)
from lmdistill.outputs import Output, differences, is_primary
from lmdistill.training.hint_terms import PROJECTIONS_FILE, HintTerms
from lmdistill.training.trainer import DistillTrainer

STUDENT_DIR = "student"
CONFIG_FILE = "lmdistill_config.yaml"


@dataclass
class Models:
    """What a run trains with: the frozen teacher (None from a teacher store), the student, their shared
    tokenizer and vocab size."""

    teacher: torch.nn.Module | None
    student: torch.nn.Module
    tokenizer: object
    vocab: int


def build_models(cfg: RunConfig, log=print, store=None, tokenizer=None) -> Models:
    """Load the teacher, build the student, check the vocabularies; print sizes.

    With `store` (a `TeacherStore` already checked against `tokenizer`, the run's tokenizer), no teacher
    is kept: its weights are loaded only when the student is shrunk from it.
    """
    if store is not None:
        return _models_for_store(cfg, store, tokenizer, log)
    teacher_tok = load_tokenizer(cfg.teacher.name)
    teacher = load_teacher(cfg.teacher.name, dtype=cfg.teacher.dtype)
    if cfg.student.name:
        student = load_model(cfg.student.name, dtype=cfg.student.dtype)
        student_tok = load_tokenizer(cfg.student.name)
    else:
        student = _shrunk_student(cfg, teacher)
        student_tok = teacher_tok
    student = _trainable(student, cfg)
    vocab = check_vocab(
        teacher_tok,
        student_tok,
        teacher,
        student,
        teacher_name=cfg.teacher.name,
        student_name=cfg.student.name or f"{cfg.teacher.name} shrunk",
    )
    log(describe_sizes(teacher, student))
    return Models(teacher, student, student_tok, vocab)


def _shrunk_student(cfg: RunConfig, teacher) -> torch.nn.Module:
    s = cfg.student
    student = shrink_model(
        teacher,
        num_layers=None if s.layers else s.num_layers,
        layers=s.layers,
        hidden_size=s.hidden_size,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        intermediate_size=s.intermediate_size,
    )
    return student.to(resolve_dtype(s.dtype) if s.dtype != "auto" else teacher.dtype)


def _trainable(student, cfg: RunConfig) -> torch.nn.Module:
    student.requires_grad_(True).train()
    return add_lora(student, cfg.student) if cfg.student.lora_r else student


def _models_for_store(cfg: RunConfig, store, tokenizer, log) -> Models:
    """The student alone; the store stands in for the teacher (its vocabulary is the shared one)."""
    if cfg.student.name:
        student = load_model(cfg.student.name, dtype=cfg.student.dtype)
    else:
        teacher = load_teacher(cfg.teacher.name, dtype=cfg.teacher.dtype)
        student = _shrunk_student(cfg, teacher)
        del teacher  # its layers are copied; training reads the store, so no teacher stays in memory
    student = _trainable(student, cfg)
    if head_rows(student) < store.vocab:
        raise UserError(
            f"the student's output head has {head_rows(student)} rows but teacher store {store.folder} "
            f"has a vocabulary of {store.vocab}"
        )
    log(
        f"student: {count_parameters(student):,} parameters; teacher: top-{store.k} log-probs from "
        f"{store.folder} (no teacher in memory)"
    )
    return Models(None, student, tokenizer, store.vocab)


def open_teacher_store(cfg: RunConfig):
    """The run's `TeacherStore` (None without distill.teacher_store): finished, same temperature, no hints."""
    if not cfg.distill.teacher_store:
        return None
    from lmdistill.capture import TeacherStore

    if cfg.hints.enabled:
        raise UserError(
            "hint terms (hints.*_weight > 0) need the live teacher's internal states, which a teacher store "
            "does not hold: set the hint weights to 0 or drop distill.teacher_store"
        )
    store = TeacherStore.open(cfg.distill.teacher_store)
    store.check_temperature(cfg.distill.temperature)
    return store


def add_lora(student, s) -> torch.nn.Module:
    """Wrap the student in peft LoRA adapters; the head stays a plain Linear (chunked KD reads it)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("student.lora_r > 0 needs peft: pip install 'lmdistill[lora]'") from None
    targets = s.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(student, config)


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
    args.update(t.extra)
    try:
        return TrainingArguments(**args)
    except (TypeError, ValueError) as e:  # an unknown key in train.extra, a bad scheduler name, ...
        raise UserError(f"train: transformers.TrainingArguments refused the settings: {e}") from None


def read_data(path: str, max_examples: int | None = None) -> list[dict]:
    records = load_records(path)
    return records[:max_examples] if max_examples is not None else records


def save_student(model, tokenizer, out_dir: str | os.PathLike, config: RunConfig | None = None) -> Path:
    """save_pretrained into a temporary sibling, then rename: a half-written folder never looks finished.

    With `config`, the run's resolved config goes inside the folder too, so it always describes that model.
    """
    out = Path(out_dir)
    tmp = make_temp_dir(out)  # the umask's mode, not mkdtemp's private 0700
    if hasattr(model, "merge_and_unload"):  # LoRA: ship one ordinary model folder
        model = model.merge_and_unload()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if config is not None:
            save_config(config, tmp / CONFIG_FILE)
        public_tree(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def make_trainer(
    cfg: RunConfig, models: Models, train_features, eval_features=None, log=print, store=None
) -> DistillTrainer:
    """The run's trainer; with `store`, features carrying "example_index" get its rows in each batch."""
    hints = HintTerms(cfg.hints, models.student, models.teacher, log) if cfg.hints.enabled else None
    return DistillTrainer(
        model=models.student,
        teacher=models.teacher if cfg.distill.kd_ratio > 0 or hints else None,
        hints=hints,
        spec=LossSpec.from_config(cfg.distill, models.vocab),
        max_nonfinite=cfg.distill.max_nonfinite,
        args=training_arguments(cfg.train, eval_enabled=eval_features is not None),
        train_dataset=train_features,
        eval_dataset=eval_features,
        data_collator=DistillCollator(pad_token_id=pad_id(models.tokenizer), teacher_store=store),
    )


def resolve_checkpoint(value: str | None, output_dir: str, *, needs: tuple[str, ...] = ()) -> str | None:
    """`latest` -> the newest complete checkpoint-N in output_dir (a UserError if there is none); a path
    is checked.

    Complete means Trainer wrote its `trainer_state.json` (its last file) and every file in `needs`
    is there: a run killed while saving leaves a folder that is skipped, not resumed from.
    """
    if value is None:
        return None
    if value == "latest":
        complete = []
        for folder in Path(output_dir).glob("checkpoint-*"):
            step = folder.name.removeprefix("checkpoint-")
            files = ("trainer_state.json", *needs)
            if step.isdigit() and all((folder / name).is_file() for name in files):
                complete.append((int(step), folder))
        if not complete:
            raise UserError(
                f"train.resume_from_checkpoint=latest: no checkpoint to resume from in {output_dir} (no complete "
                f"checkpoint-N folder with {', '.join(('trainer_state.json', *needs))}); drop the setting to "
                "start a new run"
            )
        return str(max(complete)[1])
    if not Path(value).is_dir():
        raise UserError(f"train.resume_from_checkpoint: no checkpoint folder at {value}")
    return value


def run(cfg: RunConfig, log=print) -> Path:
    """Train a student as `cfg` says; returns the saved student folder (output_dir/student).

    Nothing is written until every input is checked: the output folder (not a file, not another run's),
    the checkpoint to resume from, the data (read and tokenized before any model loads) and the models.
    The folder is then locked for the run and its config recorded (`lmdistill.outputs`).
    """
    if not cfg.data.train:
        raise UserError("data.train is empty: give a JSONL file, a datasets folder or a hub name")
    out = Path(cfg.train.output_dir)
    output, job, ignore = check_output(cfg)
    set_seed(cfg.train.seed)
    # Data is read and tokenized before any model is loaded: a bad file fails in a second, not after a minute.
    train_rows = read_data(cfg.data.train, cfg.data.max_examples)
    eval_rows = read_data(cfg.data.eval) if cfg.data.eval else None
    store = open_teacher_store(cfg)
    n = cfg.data.max_length
    tokenizer = load_tokenizer(cfg.student.name or cfg.teacher.name)  # the one build_models trains with
    train, _ = tokenize_records(train_rows, tokenizer, n, source=cfg.data.train)
    evalf = tokenize_records(eval_rows, tokenizer, n, source=cfg.data.eval)[0] if eval_rows else None
    if store is not None:  # the store is checked against the run before any weights are loaded
        store.check_run(tokenizer, train, cfg.distill.temperature)
        for i, feature in enumerate(train):
            feature["example_index"] = i  # travels with the example through shuffling and resume
    models = build_models(cfg, log, store=store, tokenizer=tokenizer)
    log(f"data: {len(train)} training examples" + (f", {len(evalf)} held out" if evalf else ""))
    trainer = make_trainer(cfg, models, train, evalf, log, store=store)
    needs = (PROJECTIONS_FILE,) if trainer.hints is not None and trainer.hints.projections is not None else ()
    resume = resolve_checkpoint(cfg.train.resume_from_checkpoint, cfg.train.output_dir, needs=needs)
    overwrite = cfg.train.overwrite_output_dir
    with output.claim(job, overwrite=overwrite, ignore=ignore, primary=is_primary()):
        trainer.train(resume_from_checkpoint=resume)
        if trainer.is_world_process_zero():
            if evalf and models.teacher is not None:
                report_agreement(trainer.model, models, evalf, out / "eval.json", log)
            elif evalf:
                log(
                    "held-out agreement with the teacher needs the live teacher: skipped (distill.teacher_store)"
                )
            path = save_student(trainer.model, models.tokenizer, out / STUDENT_DIR, cfg)
            log(f"student saved to {path}")
            if trainer.hints is not None and trainer.hints.projections is not None:
                trainer.hints.save(out)  # training-only: kept apart from the student folder
                log(f"hint projections saved to {out / PROJECTIONS_FILE}")
    return out / STUDENT_DIR


#: Settings that may change between a run and its rerun in the same folder without making it another run.
RERUN_MAY_CHANGE = (
    "train.resume_from_checkpoint",
    "train.overwrite_output_dir",
    "train.logging_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.report_to",
)
#: ... and, when resuming, how long it trains.
RESUME_MAY_CHANGE = ("train.max_steps", "train.num_train_epochs")


def check_output(cfg: RunConfig) -> tuple[Output, dict, tuple[str, ...]]:
    """Check train.output_dir and the checkpoint to resume from, before any work (read-only).

    Returns the folder, the job recorded in it (the resolved config) and the settings a rerun may change.
    """
    t = cfg.train
    job = dataclasses.asdict(cfg)
    resuming = t.resume_from_checkpoint is not None
    ignore = RERUN_MAY_CHANGE + (RESUME_MAY_CHANGE if resuming else ())
    output = Output.folder(
        "train",
        t.output_dir,
        "train.output_dir",
        products=("checkpoint-*", STUDENT_DIR, "eval.json", PROJECTIONS_FILE),
        resume_hint="resume it with train.resume_from_checkpoint=latest and its settings",
        overwrite_hint="set train.overwrite_output_dir=true to replace it",
    )
    if resuming and t.overwrite_output_dir:
        raise UserError(
            "train.resume_from_checkpoint and train.overwrite_output_dir=true contradict each other: "
            "resume the run, or replace it"
        )
    if resuming:
        checkpoint = resolve_checkpoint(t.resume_from_checkpoint, t.output_dir)
        run_dir = Path(checkpoint).parent
        recorded = run_dir / CONFIG_FILE
        if recorded.is_file():
            try:
                old = yaml.safe_load(recorded.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise UserError(f"{recorded}: cannot be read ({exc.__class__.__name__})") from None
            diff = differences(old, job, ignore)
            if diff:
                raise UserError(
                    f"train.resume_from_checkpoint: {checkpoint} belongs to a run with other settings "
                    f"({'; '.join(diff[:4])}); resume with that run's settings (see {recorded}), or drop "
                    "train.resume_from_checkpoint to start a new run in another train.output_dir"
                )
    output.check(job, overwrite=t.overwrite_output_dir, ignore=ignore)
    return output, job, ignore


def report_agreement(student, models: Models, features, path: Path, log=print) -> dict:
    """Held-out top-1 agreement, KL to the teacher and perplexity; printed and written to `path`."""
    from lmdistill.eval.scoring import score_tokens
    from lmdistill.io import atomic_write_json

    result = score_tokens(
        student, features, vocab=models.vocab, pad_token_id=pad_id(models.tokenizer), teacher=models.teacher
    ).as_dict()
    atomic_write_json(path, result)
    log(
        f"held-out ({result['tokens']} target tokens): top-1 agreement with teacher {result['top1']:.1%}, "
        f"KL(teacher || student) {result['kl']:.3f} nats/token, perplexity {result['perplexity']:.2f}"
    )
    return result
