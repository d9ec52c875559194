"""`lmdistill train`: config in, trained student folder out. `lmdistill train` is a thin call to `run`.

Steps: choose the teacher source (`lmdistill.teachers.whitebox`) and check it before any weights load;
build the student (a model of its own, or the teacher shrunk to fewer layers); check that both share a
tokenizer and find the shared real vocabulary; tokenize the data with completion-only labels; train
with `DistillTrainer`; save the student atomically.

The teacher source is one of:
- none, when no term reads the teacher (distill.kd_ratio 0 and no hint terms): CE only, and the
  teacher's weights are loaded only to shrink it into the student, then dropped;
- the teacher model in this process (the default; hint terms need it);
- `distill.teacher_store` (a folder from `lmdistill capture`): checked against the run first (finished,
  same temperature, tokenizer and tokenized data); each training example carries its index into the
  store, which the source looks its rows up by;
- `teacher.server` (an OpenAI-compatible server): probed first (same vocabulary as the student, k
  log-probs per position).
With a store or a server no teacher is in memory.
"""

from __future__ import annotations

import dataclasses
import json
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
from lmdistill.data.fingerprint import features_fingerprint
from lmdistill.errors import UserError
from lmdistill.io import atomic_write_json, make_temp_dir, public_tree
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
from lmdistill.teachers.whitebox import InProcessTeacher, TeacherSource
from lmdistill.training import fsdp
from lmdistill.training.hint_terms import PROJECTIONS_FILE, HintTerms
from lmdistill.training.trainer import DistillTrainer
from lmdistill.training.xtok_step import CrossTokenizerStep, build_step

STUDENT_DIR = "student"
CONFIG_FILE = "lmdistill_config.yaml"
DATA_FINGERPRINT_FILE = "data_fingerprint.json"  # the tokenized training data the run trains on


@dataclass
class Models:
    """What a run trains with: the frozen teacher model (None unless it runs in this process), the
    student, their shared tokenizer and vocab size, and the teacher source the loss asks (None: CE only;
    an `InProcessTeacher` over `teacher` when left None with a teacher given)."""

    teacher: torch.nn.Module | None
    student: torch.nn.Module
    tokenizer: object
    vocab: int
    source: TeacherSource | None = None
    xtok: CrossTokenizerStep | None = None  # a teacher with another tokenizer (distill.cross_tokenizer)

    def __post_init__(self):
        if self.source is None and self.teacher is not None:
            self.source = InProcessTeacher(self.teacher)


def teacher_is_read(cfg: RunConfig) -> bool:
    """Whether any loss term reads the teacher: KD (kd_ratio > 0), a hint term, or on-policy steps."""
    return cfg.distill.kd_ratio > 0 or cfg.hints.enabled or cfg.on_policy.enabled


def check_teacher_settings(cfg: RunConfig) -> None:
    """What the chosen teacher needs, checked before any data is read or weights load (UserError)."""
    if not cfg.student.name and not cfg.teacher.name:
        raise UserError(
            "student.name and teacher.name are both empty: there is no model to build the student from"
        )
    if not teacher_is_read(cfg):
        return
    elsewhere = (
        "distill.teacher_store"
        if cfg.distill.teacher_store
        else "teacher.server"
        if cfg.teacher.server
        else ""
    )
    if elsewhere and cfg.hints.enabled:
        raise UserError(
            f"hint terms (hints.*_weight > 0) need the teacher model's internal states, which {elsewhere} does "
            f"not give: set the hint weights to 0 or drop {elsewhere}"
        )
    if cfg.teacher.server and not cfg.distill.teacher_store:
        from lmdistill.teachers.whitebox import check_server_settings

        check_server_settings(cfg.teacher, cfg.distill.temperature, "distill.temperature")
    if not elsewhere and not cfg.teacher.name:
        raise UserError("teacher.name is empty, but distill.kd_ratio > 0 or a hint term reads the teacher")


def build_models(cfg: RunConfig, log=print, source=None, tokenizer=None) -> Models:
    """Build the student and, when a term reads it and no `source` stands in for it, load the teacher;
    check the vocabularies; print sizes.

    source: a sparse teacher source already checked against `tokenizer` (the run's tokenizer): a store
    or a server (it has `.vocab`); no teacher is kept, its weights are loaded only to shrink the student.
    tokenizer: the run's tokenizer when the caller has loaded it already (loaded here otherwise).
    """
    if source is not None:
        return _models_for_source(cfg, source, tokenizer, log)
    if tokenizer is None:  # the student's (the teacher's when the student is shrunk from it)
        tokenizer = load_tokenizer(cfg.student.name or cfg.teacher.name)
    if not teacher_is_read(cfg):
        return _student_alone(cfg, tokenizer, log)
    # A student shrunk from a sharded teacher is built on meta only when it is sharded too (DDP needs it whole).
    teacher_meta = from_rank0(cfg.train.fsdp_teacher and (bool(cfg.student.name) or cfg.train.fsdp))
    teacher = load_teacher(cfg.teacher.name, dtype=cfg.teacher.dtype, meta=teacher_meta)
    student_tok = tokenizer
    if cfg.student.name:
        student = load_model(cfg.student.name, dtype=cfg.student.dtype, meta=from_rank0(cfg.train.fsdp))
        teacher_tok = load_tokenizer(cfg.teacher.name)
    else:
        student = _shrunk_student(cfg, teacher)
        teacher_tok = student_tok
    student = _trainable(student, cfg)
    if cfg.distill.cross_tokenizer:  # another tokenizer: each vocabulary checked against its own head
        step = build_step(cfg.distill, student_tok, teacher_tok, student, teacher, log)
        log(describe_sizes(teacher, student))
        source = InProcessTeacher(teacher, cfg.teacher.name)
        return Models(teacher, student, student_tok, step.student_vocab, source, step)
    vocab = check_vocab(
        teacher_tok,
        student_tok,
        teacher,
        student,
        teacher_name=cfg.teacher.name,
        student_name=cfg.student.name or f"{cfg.teacher.name} shrunk",
    )
    log(describe_sizes(teacher, student))
    return Models(teacher, student, student_tok, vocab, InProcessTeacher(teacher, cfg.teacher.name))


def from_rank0(sharded: bool) -> bool:
    """Whether this process builds a model on the meta device and reads none of its weights: the model is
    sharded (train.fsdp / train.fsdp_teacher) and this is not process 0, which alone loads the weights and
    scatters them into every process's shards (`lmdistill.models.sharding.shard_from_rank0`)."""
    return sharded and int(os.environ.get("RANK", "0") or 0) != 0


def _shrunk_student(cfg: RunConfig, teacher) -> torch.nn.Module:
    """The teacher shrunk as cfg.student says; a teacher on the meta device gives a student on meta."""
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


def _student_only(cfg: RunConfig) -> torch.nn.Module:
    """The student, trainable; shrunk from the teacher's weights, which are then dropped (nothing keeps them)."""
    meta = from_rank0(cfg.train.fsdp)
    if cfg.student.name:
        student = load_model(cfg.student.name, dtype=cfg.student.dtype, meta=meta)
    else:
        teacher = load_teacher(cfg.teacher.name, dtype=cfg.teacher.dtype, meta=meta)
        student = _shrunk_student(cfg, teacher)  # on meta too: the student's shapes, no weights
        del teacher  # its layers are copied; no term reads the teacher, so none stays in memory
    return _trainable(student, cfg)


def _student_alone(cfg: RunConfig, tokenizer, log) -> Models:
    """No term reads the teacher (CE only): the student and its tokenizer, no teacher source."""
    student = _student_only(cfg)
    name = cfg.student.name or cfg.teacher.name
    vocab = check_vocab(tokenizer, tokenizer, student, student, teacher_name=name, student_name=name)
    log(
        f"student: {count_parameters(student):,} parameters; no teacher (kd_ratio 0 and no hint terms: CE only)"
    )
    return Models(None, student, tokenizer, vocab)


def _models_for_source(cfg: RunConfig, source, tokenizer, log) -> Models:
    """The student alone; the store or server stands in for the teacher (its vocabulary is the shared one)."""
    student = _student_only(cfg)
    if head_rows(student) < source.vocab:
        raise UserError(
            f"the student's output head has {head_rows(student)} rows but the teacher ({source.name}) "
            f"has a vocabulary of {source.vocab}"
        )
    log(
        f"student: {count_parameters(student):,} parameters; teacher: top-{source.k} log-probs from "
        f"{source.name} (no teacher in memory)"
    )
    return Models(None, student, tokenizer, source.vocab, source)


def open_teacher_store(cfg: RunConfig):
    """The run's `TeacherStore` (None without distill.teacher_store, or when no term reads the teacher):
    finished, same temperature."""
    if not cfg.distill.teacher_store or not teacher_is_read(cfg):
        return None
    from lmdistill.capture import TeacherStore

    check_teacher_settings(cfg)
    store = TeacherStore.open(cfg.distill.teacher_store)
    store.check_temperature(cfg.distill.temperature)
    return store


def open_teacher_server(cfg: RunConfig, tokenizer):
    """The run's `ServerTeacher` (None without teacher.server, or when no term reads the teacher), probed:
    same vocabulary as `tokenizer`, teacher.server_k log-probs per position."""
    if not cfg.teacher.server or not teacher_is_read(cfg):
        return None
    from lmdistill.models.vocab import real_vocab_size as real_vocab
    from lmdistill.teachers.whitebox import ServerTeacher

    check_teacher_settings(cfg)
    return ServerTeacher.connect(cfg.teacher, tokenizer, k=cfg.teacher.server_k, vocab=real_vocab(tokenizer))


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
    if t.fsdp:  # Trainer's condition for a model sharded before it; ShardedDistillTrainer saves the optimizer
        args["save_only_model"] = True
    args.update(t.extra)
    try:
        return TrainingArguments(**args)
    except (TypeError, ValueError) as e:  # an unknown key in train.extra, a bad scheduler name, ...
        raise UserError(f"train: transformers.TrainingArguments refused the settings: {e}") from None


def read_data(path: str, max_examples: int | None = None, validate: bool = True) -> list[dict]:
    records = load_records(path, validate=validate)
    return records[:max_examples] if max_examples is not None else records


def save_student(
    model,
    tokenizer,
    out_dir: str | os.PathLike,
    config: RunConfig | None = None,
    state_dict: dict | None = None,
) -> Path:
    """save_pretrained into a temporary sibling, then rename: a half-written folder never looks finished.

    With `config`, the run's resolved config goes inside the folder too, so it always describes that model.
    state_dict: the full weights when `model` is sharded (`lmdistill.training.fsdp.gather_student`).
    """
    out = Path(out_dir)
    tmp = make_temp_dir(out)  # the umask's mode, not mkdtemp's private 0700
    if hasattr(model, "merge_and_unload"):  # LoRA: ship one ordinary model folder
        model = model.merge_and_unload()
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
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
    """The run's trainer: the loss asks `models.source` (none when no term reads the teacher).

    store: a `TeacherStore` to train from (older callers); `build_models(source=StoreTeacher(store))`
    is the same. Features carrying "example_index" are looked up in it.
    """
    if store is not None and models.source is None:
        from lmdistill.teachers.whitebox import StoreTeacher

        models.source = StoreTeacher(store)
    args = training_arguments(cfg.train, eval_enabled=eval_features is not None)
    trainer_class = DistillTrainer
    if cfg.train.fsdp:
        models.student = fsdp.prepare_student(models.student, args)
        trainer_class = fsdp.ShardedDistillTrainer
        log(fsdp.describe_shards("student", models.student))
    if cfg.train.fsdp_teacher and models.teacher is not None:
        fsdp.prepare_teacher(models.teacher, args)
        log(fsdp.describe_shards("teacher", models.teacher))
    hints = HintTerms(cfg.hints, models.student, models.teacher, log) if cfg.hints.enabled else None
    if (cfg.train.fsdp or cfg.train.fsdp_teacher) and hints is not None and hints.projections is not None:
        # Process 0 built its models on the CPU (a shrunk student's init draws random numbers), the others
        # on meta (which draws none): their RNGs may differ here, and so would projections with a random
        # init (a student wider than the teacher). Process 0's are the ones one process would have.
        fsdp.broadcast_from_rank0(hints.projections)
    extra, collator = {}, DistillCollator(pad_token_id=pad_id(models.tokenizer))
    if models.xtok is not None:
        collator = models.xtok.collator(pad_id(models.tokenizer))
    if cfg.on_policy.enabled:  # batches may come from the student's (or teacher's) samples
        from lmdistill.training.on_policy import OnPolicyTrainer
        from lmdistill.training.sampling import PromptCollator

        trainer_class, collator = OnPolicyTrainer, PromptCollator(collator)
        extra = dict(
            on_policy=cfg.on_policy,
            tokenizer=models.tokenizer,
            max_length=cfg.data.max_length,
            teacher_model=models.teacher,
        )
    return trainer_class(
        model=models.student,
        teacher=models.source if teacher_is_read(cfg) else None,
        hints=hints,
        spec=LossSpec.from_config(cfg.distill, models.vocab),
        max_nonfinite=cfg.distill.max_nonfinite,
        args=args,
        train_dataset=train_features,
        eval_dataset=eval_features,
        data_collator=collator,
        xtok=models.xtok,
        **extra,
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


def checkpoint_step(checkpoint: str | os.PathLike) -> int | None:
    """The optimizer steps a checkpoint holds (its trainer_state.json's global_step); None without one."""
    path = Path(checkpoint) / "trainer_state.json"
    try:
        step = json.loads(path.read_text(encoding="utf-8"))["global_step"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    return int(step)


def _max_steps(t: TrainConfig) -> int:
    """The run's last step as TrainingArguments will see it (train.extra may set it); <= 0: from epochs."""
    return int(t.extra.get("max_steps", t.max_steps))


def finished_run(cfg: RunConfig) -> str | None:
    """A resume of a run that is finished (its checkpoint at train.max_steps, its student saved): the
    one line to log instead of training, else None. (Trainer would train one step past the last and
    save checkpoint-(N+1) when the last step is not at an epoch's end.)"""
    t = cfg.train
    if t.resume_from_checkpoint is None or _max_steps(t) <= 0:
        return None
    checkpoint = resolve_checkpoint(t.resume_from_checkpoint, t.output_dir)
    step = checkpoint_step(checkpoint)
    if step is None or step < _max_steps(t) or not (Path(t.output_dir) / STUDENT_DIR).is_dir():
        return None  # more steps to train, or the run stopped before saving its student: saved from it
    return (
        f"train: {checkpoint} is at step {step} = train.max_steps: the run is finished and its student "
        "saved; nothing trained, nothing written (raise train.max_steps to train further)"
    )


def tokenize_train(cfg: RunConfig, rows: list[dict], tokenizer) -> list[dict]:
    """Training features; with on-policy steps each also carries its prompt (`prompt_features`)."""
    o = cfg.on_policy
    if not o.enabled:
        return tokenize_records(rows, tokenizer, cfg.data.max_length, source=cfg.data.train)[0]
    from lmdistill.training.sampling import prompt_features

    always_generated = o.seq_kd or (o.schedule == "constant" and o.lmbda == 1.0)
    return prompt_features(
        rows,
        tokenizer,
        cfg.data.max_length,
        o.max_new_tokens,
        source=cfg.data.train,
        need_answers=not always_generated,
    )


def run(cfg: RunConfig, log=print) -> Path:
    """Train a student as `cfg` says; returns the saved student folder (output_dir/student).

    Nothing is written until every input is checked: the teacher settings, the output folder (not a
    file, not another run's), the checkpoint to resume from, the data (read and tokenized before any
    model loads), a teacher store or server (checked against the run's tokenizer and data) and the
    models. The folder is then locked for the run and its config recorded (`lmdistill.outputs`).
    """
    if not cfg.data.train:
        raise UserError("data.train is empty: give a JSONL file, a datasets folder or a hub name")
    check_teacher_settings(cfg)
    fsdp.check_sharding_settings(cfg)
    out = Path(cfg.train.output_dir)
    output, job, ignore = check_output(cfg)
    done = finished_run(cfg)
    if done:  # before any model loads: nothing is read further and nothing written
        log(done)
        return out / STUDENT_DIR
    set_seed(cfg.train.seed)
    # Data is read and tokenized before any model is loaded: a bad file fails in a second, not after a minute.
    # On-policy rows may be prompts alone: `tokenize_train` checks them itself.
    train_rows = read_data(cfg.data.train, cfg.data.max_examples, validate=not cfg.on_policy.enabled)
    eval_rows = read_data(cfg.data.eval) if cfg.data.eval else None
    store = open_teacher_store(cfg)
    n = cfg.data.max_length
    tokenizer = load_tokenizer(cfg.student.name or cfg.teacher.name)  # the one build_models trains with
    if cfg.distill.cross_tokenizer:  # both tokenizations of every text, aligned (lmdistill.xtok.data)
        from lmdistill.xtok.data import pair_features

        teacher_tok = load_tokenizer(cfg.teacher.name)
        train, _ = pair_features(train_rows, tokenizer, teacher_tok, n, source=cfg.data.train)
        evalf = (
            pair_features(eval_rows, tokenizer, teacher_tok, n, source=cfg.data.eval)[0]
            if eval_rows
            else None
        )
    else:
        train = tokenize_train(cfg, train_rows, tokenizer)
        evalf = tokenize_records(eval_rows, tokenizer, n, source=cfg.data.eval)[0] if eval_rows else None
    fingerprint = features_fingerprint(train)
    check_data_unchanged(cfg, fingerprint, log)
    source = None
    if store is not None:  # the store is checked against the run before any weights are loaded
        from lmdistill.teachers.whitebox import StoreTeacher

        store.check_run(tokenizer, train, cfg.distill.temperature)
        for i, feature in enumerate(train):
            feature["example_index"] = i  # travels with the example through shuffling and resume
        source = StoreTeacher(store)
    elif cfg.teacher.server and teacher_is_read(cfg):
        source = open_teacher_server(cfg, tokenizer)  # probed: vocabulary and log-prob count
    models = build_models(cfg, log, source=source, tokenizer=tokenizer)
    log(f"data: {len(train)} training examples" + (f", {len(evalf)} held out" if evalf else ""))
    trainer = make_trainer(cfg, models, train, evalf, log)
    needs = (PROJECTIONS_FILE,) if trainer.hints is not None and trainer.hints.projections is not None else ()
    resume = resolve_checkpoint(cfg.train.resume_from_checkpoint, cfg.train.output_dir, needs=needs)
    overwrite = cfg.train.overwrite_output_dir
    with output.claim(job, overwrite=overwrite, ignore=ignore, primary=is_primary()):
        if is_primary():
            atomic_write_json(
                out / DATA_FINGERPRINT_FILE,
                {"train": fingerprint, "examples": len(train), "source": cfg.data.train},
            )
        trainer.train(resume_from_checkpoint=resume)
        if trainer.resumed_finished:  # the steps to train came from the data (train.max_steps <= 0)
            done = (out / STUDENT_DIR).is_dir()
            log(
                f"train: {resume} is at step {trainer.state.global_step}, the run's last: nothing trained; "
                + ("the student is saved already, nothing written" if done else "saving the student from it")
            )
            if done:
                return out / STUDENT_DIR
        state = fsdp.gather_student(trainer.model) if cfg.train.fsdp else None  # every process takes part
        if trainer.is_world_process_zero():
            if state is not None:  # sharded: save the gathered weights, then score the saved, whole student
                path = save_student(
                    fsdp.saveable(trainer.model), models.tokenizer, out / STUDENT_DIR, cfg, state_dict=state
                )
                log(f"student saved to {path}")
            if evalf and models.xtok is not None:
                log(
                    "held-out token agreement compares one vocabulary: skipped for a teacher with another "
                    "tokenizer; `lmdistill eval --text` reports bits per byte and byte-aligned agreement"
                )
            elif evalf and cfg.train.fsdp_teacher:
                log(
                    "held-out agreement with the teacher needs it whole in one process: skipped (train.fsdp_teacher)"
                )
            elif evalf and models.teacher is not None:
                student = trainer.model if state is None else _reload(path, models.teacher)
                report_agreement(student, models, evalf, out / "eval.json", log)
            elif evalf and models.source is not None:
                log(
                    "held-out agreement with the teacher needs the teacher in this process: "
                    f"skipped ({models.source.name})"
                )
            if state is None:
                path = save_student(trainer.model, models.tokenizer, out / STUDENT_DIR, cfg)
                log(f"student saved to {path}")
            if trainer.hints is not None and trainer.hints.projections is not None:
                trainer.hints.save(out)  # training-only: kept apart from the student folder
                log(f"hint projections saved to {out / PROJECTIONS_FILE}")
    return out / STUDENT_DIR


def check_data_unchanged(cfg: RunConfig, fingerprint: str, log=print) -> None:
    """On resume, the tokenized training data must be the data the run recorded: a resume skips the first
    global_step x batch examples of what it is given, so other data means training on other rows with no
    word. UserError, or a warning with train.resume_with_changed_data; nothing to compare for a run that
    recorded no fingerprint (written by an older lmdistill)."""
    t = cfg.train
    if t.resume_from_checkpoint is None:
        return
    path = Path(t.output_dir) / DATA_FINGERPRINT_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log(f"train: {path} not found (a run from an older lmdistill): the data cannot be compared")
        return
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    before = recorded.get("train") if isinstance(recorded, dict) else None
    if before == fingerprint:
        return
    what = (
        f"the training data differs from the data {t.output_dir} was trained on ({cfg.data.train}: "
        f"{recorded.get('examples', '?') if isinstance(recorded, dict) else '?'} examples then, now another "
        f"tokenized content)"
    )
    if t.resume_with_changed_data:
        log(f"train: warning: {what}; resuming anyway (train.resume_with_changed_data=true)")
        return
    raise UserError(
        f"train.resume_from_checkpoint: {what}; a resume would skip and train other rows than the run did. "
        "Restore the data, or set train.resume_with_changed_data=true to resume on the new data"
    )


def _reload(path: Path, teacher: torch.nn.Module) -> torch.nn.Module:
    """The saved student folder as one whole model, on the teacher's device (process 0 scores it alone)."""
    return load_model(str(path)).to(next(teacher.parameters()).device).eval()


#: Settings that may change between a run and its rerun in the same folder without making it another run.
RERUN_MAY_CHANGE = (
    "train.resume_from_checkpoint",
    "train.resume_with_changed_data",
    "train.overwrite_output_dir",
    "train.logging_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.report_to",
)
#: ... and, when resuming, how long it trains, and how each step's batch is split (so a run may resume
#: with another number of processes, sharded or not, when the global batch stays the same: checked).
RESUME_MAY_CHANGE = (
    "train.max_steps",
    "train.num_train_epochs",
    "train.per_device_train_batch_size",
    "train.gradient_accumulation_steps",
    "train.fsdp",
    "train.fsdp_teacher",
)


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
        step = checkpoint_step(checkpoint)
        if step is not None and 0 < _max_steps(t) < step:
            raise UserError(
                f"train.max_steps={_max_steps(t)} is below the step of {checkpoint} ({step}): a resume cannot "
                "train backwards; raise train.max_steps, or resume an earlier checkpoint"
            )
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
            _check_global_batch(checkpoint, (old.get("train") if isinstance(old, dict) else None) or {}, t)
    output.check(job, overwrite=t.overwrite_output_dir, ignore=ignore)
    return output, job, ignore


def checkpoint_processes(checkpoint: str | os.PathLike) -> int | None:
    """How many processes wrote a checkpoint: Trainer saves one RNG file per process (rng_state_<rank>.pth),
    or rng_state.pth in a single one; None when there is none."""
    folder = Path(checkpoint)
    ranks = list(folder.glob("rng_state_*.pth"))
    return len(ranks) if ranks else 1 if (folder / "rng_state.pth").is_file() else None


def _check_global_batch(checkpoint: str, old: dict, t: TrainConfig) -> None:
    """A resume may change the number of processes and how each step's batch is split among them, not
    the global batch: the resumed run skips global_step x that many examples, and its learning rate
    schedule and optimizer state were tuned to it. UserError naming both layouts otherwise."""
    then = checkpoint_processes(checkpoint)
    now = int(os.environ.get("WORLD_SIZE", "1") or 1)
    try:
        per_device, accumulate = (
            int(old["per_device_train_batch_size"]),
            int(old["gradient_accumulation_steps"]),
        )
    except (KeyError, TypeError, ValueError):
        return  # recorded by an lmdistill without these settings: nothing to compare
    if then is None:
        return
    before = then * per_device * accumulate
    after = now * t.per_device_train_batch_size * t.gradient_accumulation_steps
    if before != after:
        raise UserError(
            f"train.resume_from_checkpoint: {checkpoint} was written by {then} process(es) x "
            f"{per_device} examples x {accumulate} accumulated = {before} examples per step; this run has {now} "
            f"x {t.per_device_train_batch_size} x {t.gradient_accumulation_steps} = {after}: keep {before} "
            "(train.per_device_train_batch_size x train.gradient_accumulation_steps x processes)"
        )


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
