"""`lmdistill capture` configuration: the teacher and data sections of a training config, plus `capture`.

The same `teacher` and `data` keys as `lmdistill train` (data.eval is not captured), so a training
config's sections can be copied as they are; every field is documented once, here or in
`lmdistill.config`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from lmdistill import yamlconfig
from lmdistill.capture.codec import CODECS
from lmdistill.config import DataConfig, RoutingConfig, TeacherConfig, TeacherEntry, check_teacher_list
from lmdistill.errors import UserError
from lmdistill.yamlconfig import setting


@dataclass
class CaptureOptions:
    output_dir: str = setting("runs/capture", "The store folder: shards, their records and manifest.json.")
    k: int = setting(64, "Teacher tokens kept per target position (the k most likely).")
    temperature: float = setting(
        1.0, "Softmax temperature T of the stored log-probs; training must use distill.temperature = T."
    )
    codec: str = setting(
        "compact",
        "compact (sorted id gaps + 1/16-nat uint8 log-probs, lzma: about 1.9 bytes per entry) or raw "
        "(uint16 ids + float16 log-probs, 4 bytes per entry, nothing to decode).",
    )
    shard_size: int = setting(256, "Examples per shard file (the unit of resume and of the reader's cache).")
    batch_size: int = setting(8, "Examples per teacher forward.")
    chunk_size: int = setting(
        256, "Target tokens per chunk through the teacher's head (no [tokens, vocab] at once)."
    )
    device: str = setting(
        "auto", "cpu, cuda, cuda:N or auto (under torchrun: cuda:LOCAL_RANK when CUDA is there)."
    )
    overwrite: bool = setting(
        False, "Delete a store in output_dir captured with other settings, and start again."
    )


@dataclass
class CaptureConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    teachers: list[TeacherEntry] = setting(
        [],
        "Several teachers (the `teachers:` of a training config): the rows are routed as training routes "
        "them (routing:), and each teacher's rows are captured into its own store, capture.output_dir/ID "
        "(a teacher no row routes to gets none). A list of one is `teacher:`. See docs/teachers.md.",
    )
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def validate(self) -> CaptureConfig:
        """Check values that YAML types cannot; raise UserError naming the key."""
        c, d = self.capture, self.data
        if self.teachers:
            _check_teachers(self)
        if not d.train:
            raise UserError("data.train is empty: give a JSONL file, a datasets folder or a hub name")
        if c.k < 1:
            raise UserError(f"capture.k must be at least 1, got {c.k}")
        if not (math.isfinite(c.temperature) and c.temperature > 0):
            raise UserError(f"capture.temperature must be a finite number > 0, got {c.temperature}")
        if c.codec not in CODECS:
            raise UserError(f"capture.codec: choose {' or '.join(CODECS)}, got {c.codec!r}")
        for key in ("shard_size", "batch_size", "chunk_size"):
            if getattr(c, key) < 1:
                raise UserError(f"capture.{key} must be at least 1, got {getattr(c, key)}")
        if d.max_length < 2:
            raise UserError(f"data.max_length must be at least 2, got {d.max_length}")
        if d.max_examples is not None and d.max_examples < 1:
            raise UserError(f"data.max_examples must be at least 1 (or null for all), got {d.max_examples}")
        return self


def _check_teachers(cfg: CaptureConfig) -> None:
    """`teachers:` for a capture: a list training could route with, each teacher a model or a server."""
    check_teacher_list(cfg.teachers, cfg.routing)
    if cfg.routing.mode != "route" and len(cfg.teachers) > 1:
        raise UserError(
            f"routing.mode={cfg.routing.mode}: capture stores one teacher's top-k per row, and a mixture of "
            "top-k lists is not exact; capture with routing.mode=route, or train mix/select in process"
        )
    for i, e in enumerate(cfg.teachers):
        if e.store:
            raise UserError(
                f"teachers[{i}] ({e.id}) is a store: capture needs the model (name) or a server to score with"
            )
        if e.cross_tokenizer:
            raise UserError(
                f"teachers[{i}] ({e.id}) is a cross-tokenizer teacher (cross_tokenizer: {e.cross_tokenizer}): "
                "a store holds top-k over the student's vocabulary, and its rows need its hidden states on its "
                "own tokens; train with it in this process (lmdistill train) instead of capturing it"
            )
    if cfg.teacher.server:
        raise UserError("give teachers: or teacher.server, not both: put the server in its teachers entry")


def load_capture_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> CaptureConfig:
    """Read a capture config (or defaults when `path` is None), apply `section.key=value` overrides, validate."""
    return yamlconfig.load(CaptureConfig, path, overrides).validate()
