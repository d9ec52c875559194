"""The run's teacher part when `teachers:` lists several: routes, sources, and the in-process models.

In the order `lmdistill.training.run` asks, every check before any model loads:
1. `route`: each row's teacher (routing.mode route; `lmdistill.teachers.routing`), which the row then
   carries through tokenization and on-policy sampling; a teacher no row and no term needs is never
   opened, connected or loaded (mix: weight 0);
2. `source`: in-process teachers' tokenizers checked against the run's (the student's), except a
   cross-tokenizer teacher's (`teachers[i].cross_tokenizer`, whose rows the data part tokenized by both);
   stores opened and checked against the tokenized data, servers connected and probed;
3. `build_models`: the needed in-process teachers loaded, side by side on one device (their weights
   add up: printed), the student built, every head checked against the shared vocabulary; for each
   cross-tokenizer teacher its `CrossTokenizerStep` (`lmdistill.training.xtok_routed_step`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from lmdistill.config import RunConfig, TeacherEntry
from lmdistill.config_teachers import cross_tokenizer_members
from lmdistill.errors import UserError
from lmdistill.models import check_vocab, count_parameters, head_rows, load_teacher, load_tokenizer
from lmdistill.models.vocab import check_same_tokenizer, real_vocab_size
from lmdistill.teachers.routing import route_rows, routed
from lmdistill.teachers.whitebox import InProcessTeacher, Member, SeveralTeachers
from lmdistill.training.parts.data import RunData


@dataclass
class SeveralTeachersPart:
    """`teachers:` (two or more) and `routing:`; `needed`: the indices a row or term needs (set by
    `route`)."""

    entries: list[TeacherEntry]
    mode: str
    needed: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, cfg: RunConfig) -> SeveralTeachersPart:
        return cls(list(cfg.teachers), cfg.routing.mode)

    def route(self, cfg: RunConfig, train: list[dict], heldout: list[dict] | None, log=print):
        """(train rows, held-out rows), each routed row carrying its teacher; UserError for a row that
        names an unlisted teacher or gets none."""
        ids = [e.id for e in self.entries]
        if self.mode != "route":
            self.needed = {i for i, e in enumerate(self.entries) if self.mode == "select" or e.weight > 0}
            return train, heldout
        train_routes = route_rows(train, ids, cfg.routing, cfg.data.train)
        eval_routes = route_rows(heldout, ids, cfg.routing, cfg.data.eval) if heldout else []
        self.needed = set(train_routes) | set(eval_routes)
        counts = [train_routes.count(i) for i in range(len(ids))]
        log(
            "teachers (routed by row): "
            + ", ".join(
                f"{i} {n} rows" if n else f"{i} no rows (not loaded)"
                for i, n in zip(ids, counts, strict=True)
            )
        )
        return routed(train, train_routes), routed(heldout, eval_routes) if heldout else heldout

    def temperature(self, cfg: RunConfig, entry: TeacherEntry) -> float:
        return entry.temperature or cfg.distill.temperature

    def source(self, cfg: RunConfig, tokenizer, data: RunData) -> SeveralTeachers:
        """The composite source: stores and servers ready, in-process members loaded by `build_models`."""
        vocab = real_vocab_size(tokenizer)
        crossing = cross_tokenizer_members(cfg)
        members = []
        for i, e in enumerate(self.entries):
            t = self.temperature(cfg, e)
            source = None
            if i in self.needed and e.kind == "in_process" and i in crossing:
                pass  # its own tokenizer: its rows were tokenized by both (loaded by build_models)
            elif i in self.needed and e.kind == "in_process":
                check_same_tokenizer(
                    f"teachers[{i}] ({e.id}, {e.name})",
                    e.name,
                    tokenizer,
                    against="the student",
                    hint=(
                        f"several teachers need one tokenizer unless one is declared: set teachers[{i}]."
                        "cross_tokenizer (byte_aligned or uld) to train it as a cross-tokenizer teacher, "
                        "routed by row"
                    ),
                )
            elif i in self.needed and e.kind == "store":
                source = _store(i, e, t, tokenizer, data)
            elif i in self.needed:
                from lmdistill.teachers.whitebox import ServerTeacher

                source = ServerTeacher.connect(
                    e, tokenizer, k=e.server_k, vocab=vocab, k_key=f"teachers[{i}].server_k"
                )
            members.append(
                Member(e.id, source, t, e.weight, needed=i in self.needed, cross_tokenizer=crossing.get(i))
            )
        if any(e.kind != "in_process" for e in self.entries):
            for n, feature in enumerate(data.train):
                feature["example_index"] = n  # a store looks its rows up by it; a server names bad rows by it
        return SeveralTeachers(
            members,
            self.mode,
            temperature=cfg.distill.temperature,
            vocab=vocab,
            chunk_size=cfg.distill.chunk_size,
        )


def _store(i: int, entry: TeacherEntry, temperature: float, tokenizer, data: RunData):
    """teachers[i]'s store as a source, checked against the run before any model loads: a capture over
    the whole data.train, or its own store from a capture with several teachers (its routed rows only,
    which must be the rows this run routes to it)."""
    from lmdistill.capture import TeacherStore
    from lmdistill.capture.reader import RoutedRows
    from lmdistill.teachers.whitebox import StoreTeacher

    store = TeacherStore.open_for(entry.store, entry.id)
    store.check_temperature(temperature)
    if store.routed_for is None:
        store.check_run(tokenizer, data.train, temperature)
        return StoreTeacher(store)
    rows = [n for n, f in enumerate(data.train) if f.get("teacher_index") == i]
    store.check_routes(f"teachers[{i}] ({entry.id})", entry.id, rows, len(data.train))
    store.check_run(tokenizer, [data.train[n] for n in rows], temperature)
    return StoreTeacher(RoutedRows(store, rows))


def build_models(cfg: RunConfig, source: SeveralTeachers, tokenizer, log=print):
    """The needed in-process teachers loaded into `source`'s members, the student built and checked."""
    from lmdistill.training.parts.models import (
        Models,
        _own_student,
        _shrunk_student,
        _student_only,
        _trainable,
    )

    entries = cfg.teachers
    loaded: dict[int, torch.nn.Module] = {}
    for i, (e, m) in enumerate(zip(entries, source.members, strict=True)):
        if e.kind == "in_process" and m.needed and m.source is None:
            loaded[i] = load_teacher(e.name, dtype=e.dtype)
            m.source = InProcessTeacher(loaded[i], e.id)
    if cfg.student.name or cfg.student.shrink_from:
        student = _own_student(cfg)
    elif 0 in loaded:
        student = _shrunk_student(cfg, loaded[0])
    else:
        student = _student_only(cfg)
    student = _trainable(student, cfg)
    vocab = real_vocab_size(tokenizer)
    steps = {}
    for i, model in loaded.items():
        if source.members[i].cross_tokenizer:  # its own vocabulary, checked against its own head
            steps[i] = _cross_step(cfg, i, source.members[i], tokenizer, student, model, log)
            continue
        vocab = check_vocab(
            tokenizer,
            tokenizer,
            model,
            student,
            teacher_name=f"teachers[{i}] {entries[i].id}",
            student_name="student",
        )
    if head_rows(student) < vocab:
        raise UserError(
            f"the student's output head has {head_rows(student)} rows but the vocabulary has {vocab}"
        )
    log(f"student: {count_parameters(student):,} parameters; {describe_budget(entries, source, loaded)}")
    source.vocab = vocab
    xtok = None
    if steps:
        from lmdistill.training.xtok_routed_step import RoutedCrossTokenizerStep

        xtok = RoutedCrossTokenizerStep(steps)
    return Models(None, student, tokenizer, vocab, source, xtok)


def _cross_step(cfg: RunConfig, i: int, member: Member, tokenizer, student, model, log):
    """teachers[i]'s `CrossTokenizerStep`: the one-teacher step at its method and its T_i."""
    from lmdistill.training.xtok_step import build_step

    distill = dataclasses.replace(
        cfg.distill, cross_tokenizer=member.cross_tokenizer, temperature=member.temperature
    )
    name = cfg.teachers[i].name
    return build_step(
        distill,
        tokenizer,
        load_tokenizer(name),
        student,
        model,
        log=lambda m: log(f"teachers[{i}] {member.id}: {m}"),
    )


def describe_budget(entries, source: SeveralTeachers, loaded: dict[int, torch.nn.Module]) -> str:
    """The in-process teachers' weights, which share one device: each teacher's parameters x bytes per
    parameter, and their sum (activations come on top, one teacher's at a time)."""
    parts, total = [], 0
    for i, model in loaded.items():
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        total += size
        parts.append(f"{entries[i].id} {count_parameters(model):,} parameters = {size / 2**20:,.1f} MiB")
    apart = [
        f"{m.id} ({entries[i].kind})"
        for i, m in enumerate(source.members)
        if m.source is not None and i not in loaded
    ]
    text = f"teachers in this process: {' + '.join(parts) or 'none'}"
    text += f" = {total / 2**20:,.1f} MiB of weights on one device" if len(parts) > 1 else ""
    return text + (f"; elsewhere: {', '.join(apart)}" if apart else "")
