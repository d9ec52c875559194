"""Run configuration: one dataclass per concern, each field documented once (its `help`) with its default.

A run is described by a YAML file whose top-level sections are the fields of `RunConfig`, then
optional `section.key=value` overrides from the command line. `lmdistill config` prints every field
with its default and help; this module is the only place where they are written down.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmdistill.errors import UserError


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its help text; mutable defaults are copied per instance."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TeacherConfig:
    name: str = _f("smollm2-135m", "Teacher: a Hugging Face id, a local model folder, or a short name.")
    dtype: str = _f("float32", "Teacher weights dtype: float32, bfloat16, float16 or auto.")


@dataclass
class StudentConfig:
    name: str | None = _f(
        None, "Student: a Hugging Face id or local folder. Empty: build it by shrinking the teacher."
    )
    num_layers: int | None = _f(10, "Shrinking: keep this many teacher layers, evenly spaced.")
    layers: list[int] | None = _f(
        None, "Shrinking: the exact teacher layer indices to copy (overrides num_layers)."
    )
    hidden_size: int | None = _f(
        None,
        "Shrinking narrower: student width (heads follow at the teacher's head_dim); null keeps the teacher's.",
    )
    num_attention_heads: int | None = _f(
        None, "Shrinking narrower: query heads (default hidden_size / head_dim)."
    )
    num_key_value_heads: int | None = _f(
        None, "Shrinking narrower: KV heads (default the largest divisor of the heads <= the teacher's)."
    )
    intermediate_size: int | None = _f(
        None, "Shrinking narrower: MLP width (default scaled with hidden_size)."
    )
    dtype: str = _f("float32", "Student weights dtype (the trained copy): float32, bfloat16, float16.")
    lora_r: int = _f(0, "LoRA rank (needs `pip install lmdistill[lora]`); 0 trains every weight.")
    lora_alpha: int = _f(16, "LoRA scaling alpha.")
    lora_target_modules: str = _f(
        "all-linear", "peft target modules: `all-linear` (not lm_head) or a comma list."
    )


@dataclass
class DataConfig:
    train: str = _f(
        "",
        "Training data: JSONL file, `datasets` folder or hub name; rows hold messages, prompt/completion or text.",
    )
    eval: str | None = _f(None, "Held-out data in the same layouts (optional).")
    max_length: int = _f(512, "Tokens per example; longer examples are cut at the end.")
    max_examples: int | None = _f(None, "Use at most this many training examples (the first ones).")


@dataclass
class DistillConfig:
    loss: str = _f(
        "forward_kl",
        "Divergence D: forward_kl, reverse_kl, jsd, skew_forward_kl, skew_reverse_kl, tvd.",
    )
    kd_ratio: float = _f(0.5, "Loss = (1 - kd_ratio) * CE(labels) + kd_ratio * T^2 * D(teacher, student).")
    temperature: float = _f(1.0, "Softmax temperature T of both distributions in D (CE uses T = 1).")
    beta: float = _f(0.5, "jsd only: weight of the teacher in the mixture, strictly between 0 and 1.")
    alpha: float = _f(0.1, "skew losses only: skew weight in [0, 1].")
    chunk_size: int = _f(
        256,
        "Tokens per chunk through the heads (no full [tokens, vocab] logits); 256 keeps 5x under naive memory at vocab 49152.",
    )
    max_nonfinite: int = _f(
        5, "Stop after this many non-finite micro-batch losses in a row (each is skipped)."
    )


@dataclass
class HintConfig:
    hidden_weight: float = _f(
        0.0, "Weight of hidden-state matching (teacher layer j vs phi(student layer i)); 0 = off."
    )
    layers: str | list[list[int]] = _f(
        "uniform",
        "Layer pairs: uniform, last, first_last, copied (the teacher layers a shrunk student was copied from), "
        "or a list of [student, teacher] pairs; layer i is the output of decoder layer i (0-based).",
    )
    metric: str = _f(
        "mse", "Hidden-state metric H: mse, cosine (1 - cos), ln_mse (mse of layer-normed features)."
    )
    projection: str = _f(
        "linear", "phi where widths differ: linear (learned, trained with the student) or none."
    )
    relation_weight: float = _f(0.0, "Weight of MiniLMv2 q-q/k-k/v-v attention-relation KL; 0 = off.")
    relation_layers: str | list[list[int]] = _f(
        "last", "Layer pairs for relations, same choices as `layers`."
    )
    relation_heads: int = _f(0, "Relation heads R (0 = the largest R <= 12 dividing every q/k/v width).")
    attention_weight: float = _f(
        0.0, "Weight of attention-map KL per head (needs eager attention, set automatically); 0 = off."
    )
    attention_layers: str | list[list[int]] = _f(
        "last", "Layer pairs for attention maps, same choices as `layers`."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.hidden_weight or self.relation_weight or self.attention_weight)


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/distill", "Checkpoints, logs, the resolved config and the final student.")
    max_steps: int = _f(100, "Optimizer steps; <= 0 means train for num_train_epochs.")
    num_train_epochs: float = _f(1.0, "Epochs, used only when max_steps <= 0.")
    per_device_train_batch_size: int = _f(8, "Examples per device per micro-batch.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(5e-5, "Peak learning rate (AdamW).")
    lr_scheduler_type: str = _f("cosine", "transformers scheduler name: cosine, linear, constant, ...")
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    seed: int = _f(42, "Seed for data order, initialisation and sampling.")
    logging_steps: int = _f(10, "Log every N steps.")
    save_steps: int = _f(500, "Checkpoint every N steps.")
    save_total_limit: int | None = _f(2, "Keep at most this many checkpoints.")
    resume_from_checkpoint: str | None = _f(
        None, "Resume: a checkpoint folder, or `latest` for the newest one in output_dir."
    )
    bf16: bool = _f(False, "bf16 mixed precision (GPU).")
    gradient_checkpointing: bool = _f(False, "Recompute student activations in backward to save memory.")
    report_to: str = _f("none", "transformers reporting integrations: none, tensorboard, wandb, ...")
    extra: dict = _f({}, "Any other transformers.TrainingArguments fields, passed through as given.")


@dataclass
class RunConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    hints: HintConfig = field(default_factory=HintConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        """Check values that YAML types cannot; raise UserError naming the key."""
        from lmdistill.losses import LOSSES

        d = self.distill
        if d.loss not in LOSSES:
            raise UserError(f"distill.loss: unknown loss {d.loss!r}; choose one of {', '.join(LOSSES)}")
        if not 0.0 <= d.kd_ratio <= 1.0:
            raise UserError(f"distill.kd_ratio must be in [0, 1], got {d.kd_ratio}")
        if d.temperature <= 0:
            raise UserError(f"distill.temperature must be > 0, got {d.temperature}")
        if d.loss == "jsd" and not 0.0 < d.beta < 1.0:
            raise UserError(
                f"distill.beta must be strictly between 0 and 1 for jsd, got {d.beta} "
                "(at the endpoints use loss: forward_kl or reverse_kl)"
            )
        if not 0.0 <= d.alpha <= 1.0:
            raise UserError(f"distill.alpha must be in [0, 1], got {d.alpha}")
        if d.chunk_size <= 0:
            raise UserError(f"distill.chunk_size must be positive, got {d.chunk_size}")
        h = self.hints
        for key in ("hidden_weight", "relation_weight", "attention_weight"):
            if getattr(h, key) < 0:
                raise UserError(f"hints.{key} must be >= 0, got {getattr(h, key)}")
        if h.projection not in ("linear", "none"):
            raise UserError(f"hints.projection: choose linear or none, got {h.projection!r}")
        if h.relation_heads < 0:
            raise UserError(f"hints.relation_heads must be >= 0, got {h.relation_heads}")
        if self.data.max_length < 2:
            raise UserError(f"data.max_length must be at least 2, got {self.data.max_length}")
        s = self.student
        if s.name is None and s.layers is None and (s.num_layers is None or s.num_layers <= 0):
            raise UserError(
                "student: give student.name, or student.num_layers > 0 / student.layers to shrink"
            )
        if s.lora_r < 0:
            raise UserError(f"student.lora_r must be >= 0, got {s.lora_r}")
        t = self.train
        if t.per_device_train_batch_size <= 0 or t.gradient_accumulation_steps <= 0:
            raise UserError(
                "train.per_device_train_batch_size and gradient_accumulation_steps must be positive"
            )
        return self


SECTIONS: dict[str, type] = typing.get_type_hints(RunConfig)
_HINTS = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` (from YAML) against annotation `tp`; ints are accepted for floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
        if len(options) == 1:
            return _coerce(value, options[0], key)  # raises with the precise message
        names = " or ".join(_type_name(a) for a in args)
        raise UserError(f"{key}: expected {names}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise UserError(f"{key}: expected an integer, got {value!r}")
    if tp is dict and isinstance(value, dict):
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]" if typing.get_args(tp) else "list"
    return getattr(tp, "__name__", str(tp))


def _build(raw: dict, source: str) -> RunConfig:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the config must be a mapping of sections ({', '.join(SECTIONS)})")
    sections = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise UserError(f"{source}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
        values = values or {}
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {section!r} must be a mapping")
        hints = _HINTS[section]
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise UserError(
                    f"{source}: unknown key {section}.{key}; valid keys: {', '.join(sorted(hints))}"
                )
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
        sections[section] = SECTIONS[section](**kwargs)
    return RunConfig(**sections)


def parse_overrides(overrides: list[str]) -> dict:
    """`["distill.kd_ratio=0.3", "student.layers=[0,5,9]"]` -> nested dict; values parsed as YAML."""
    nested: dict[str, dict] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise UserError(f"override {item!r}: expected section.key=value, e.g. distill.kd_ratio=0.3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"override {item!r}: value is not valid YAML ({e})") from None
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults when `path` is None), apply overrides, validate."""
    raw: dict = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: the config must be a mapping of sections ({', '.join(SECTIONS)})")
    for section, values in parse_overrides(list(overrides)).items():
        current = raw.get(section) or {}
        if not isinstance(current, dict):
            raise UserError(f"{source}: section {section!r} must be a mapping")
        raw[section] = {**current, **values}
    return _build(raw, source).validate()


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(config_to_dict(cfg), fh, sort_keys=False)
    os.replace(tmp, path)


def describe_fields() -> str:
    """Every config key with its default and help, for `lmdistill config` and the docs."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            lines.append(f"  {f.name}: {default!r}")
            lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)
