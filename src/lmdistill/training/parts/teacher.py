"""The run's teacher part: where the loss's teacher scores come from, chosen once from the config and
checked before any weights load.

- none: no term reads the teacher (distill.kd_ratio 0, no hint terms, no on-policy steps): CE only; the
  teacher's weights are loaded only to shrink it into the student, then dropped;
- in_process: the teacher model in this process (the default; hint terms need it), loaded with the
  student (`lmdistill.training.parts.models`);
- store: `distill.teacher_store` (a folder from `lmdistill capture`): finished and at the run's
  temperature, then checked against the run's tokenizer and tokenized data; each training feature
  carries its index into the store, which the source looks its rows up by;
- server: `teacher.server` (an OpenAI-compatible server): probed (same vocabulary as the student,
  teacher.server_k log-probs per position);
- several: `teachers:` lists two or more, routed by row or mixed per token
  (`lmdistill.training.parts.several`): rows routed before tokenization, each teacher of any kind.
With a store or a server no teacher is in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmdistill.config import RunConfig
from lmdistill.errors import UserError
from lmdistill.teachers.whitebox import TeacherSource
from lmdistill.training.parts.data import RunData
from lmdistill.training.parts.several import SeveralTeachersPart


def teacher_is_read(cfg: RunConfig) -> bool:
    """Whether any loss term reads the teacher: KD (kd_ratio > 0), a hint term, or on-policy steps."""
    return cfg.distill.kd_ratio > 0 or cfg.hints.enabled or cfg.on_policy.enabled


def check_teacher_settings(cfg: RunConfig) -> None:
    """What the chosen teacher needs, checked before any data is read or weights load (UserError)."""
    if not cfg.student.name and not cfg.student.shrink_from and not cfg.teacher.name:
        raise UserError(
            "student.name and teacher.name are both empty: there is no model to build the student from"
        )
    if not teacher_is_read(cfg):
        return
    elsewhere = _stand_in(cfg)
    if elsewhere and cfg.hints.enabled:
        raise UserError(
            f"hint terms (hints.*_weight > 0) need the teacher model's internal states, which {elsewhere} does "
            f"not give: set the hint weights to 0 or drop {elsewhere}"
        )
    if cfg.teacher.server and not cfg.distill.teacher_store:
        from lmdistill.teachers.whitebox import check_server_settings

        check_server_settings(cfg.teacher, cfg.distill.temperature, "distill.temperature")
    for i, entry in enumerate(cfg.teachers if len(cfg.teachers) > 1 else []):
        if entry.server:
            from lmdistill.teachers.whitebox import check_server_settings

            check_server_settings(
                entry, entry.temperature or cfg.distill.temperature, f"teachers[{i}].temperature"
            )
    if not elsewhere and not cfg.teacher.name:
        raise UserError("teacher.name is empty, but distill.kd_ratio > 0 or a hint term reads the teacher")


def _stand_in(cfg: RunConfig) -> str:
    """The setting that stands in for the teacher model ("" when none does)."""
    return (
        "distill.teacher_store"
        if cfg.distill.teacher_store
        else "teacher.server"
        if cfg.teacher.server
        else ""
    )


@dataclass
class TeacherPart:
    """The teacher as the run's config chose it. `kind`: none, in_process, store or server; `store`: the
    opened `TeacherStore` (kind store)."""

    kind: str
    store: object | None = None
    several: SeveralTeachersPart | None = None

    @classmethod
    def choose(cls, cfg: RunConfig) -> TeacherPart:
        """The kind from the config, its settings checked (nothing is read yet)."""
        check_teacher_settings(cfg)
        if not teacher_is_read(cfg):
            return cls("none")
        if len(cfg.teachers) > 1:
            return cls("several", several=SeveralTeachersPart.of(cfg))
        if cfg.distill.teacher_store:
            return cls("store")
        return cls("server") if cfg.teacher.server else cls("in_process")

    def route(self, cfg: RunConfig, train: list[dict], heldout: list[dict] | None, log=print):
        """Several teachers: each row's teacher, carried by the row (UserError for a row that names an
        unlisted teacher or gets none). The rows as they are otherwise."""
        if self.several is None:
            return train, heldout
        return self.several.route(cfg, train, heldout, log)

    def open(self, cfg: RunConfig) -> TeacherPart:
        """A store is opened (finished, the run's temperature) before the tokenizer loads: a store that
        cannot serve the run fails in a second."""
        if self.kind == "store" and self.store is None:
            from lmdistill.capture import TeacherStore

            self.store = TeacherStore.open(cfg.distill.teacher_store)
            self.store.check_temperature(cfg.distill.temperature)
            if self.store.routed_for is not None:
                raise UserError(
                    f"distill.teacher_store {cfg.distill.teacher_store} holds only the rows routed to teacher "
                    f"{self.store.routed_for!r}: train with the teachers: list and routing it was captured with"
                )
        return self

    def source(self, cfg: RunConfig, tokenizer, data: RunData) -> TeacherSource | None:
        """The sparse source standing in for the teacher (a store or a server), checked against the run's
        tokenizer and data; None for none and in_process (whose source `build_models` makes with the
        model). A store's features get their "example_index" here. Several teachers: their composite
        source, whose in-process members `build_models` loads."""
        if self.several is not None:
            return self.several.source(cfg, tokenizer, data)
        if self.kind == "store":
            from lmdistill.teachers.whitebox import StoreTeacher

            self.open(cfg)
            self.store.check_run(tokenizer, data.train, cfg.distill.temperature)
            for i, feature in enumerate(data.train):
                feature["example_index"] = i  # travels with the example through shuffling and resume
            return StoreTeacher(self.store)
        if self.kind == "server":
            from lmdistill.models.vocab import real_vocab_size
            from lmdistill.teachers.whitebox import ServerTeacher

            for i, feature in enumerate(data.train):
                feature["example_index"] = i  # a bad row from the server is named by its training example
            return ServerTeacher.connect(
                cfg.teacher, tokenizer, k=cfg.teacher.server_k, vocab=real_vocab_size(tokenizer)
            )
        return None
