"""What every black-box recipe shares: the cached teacher, probes and their scoring, student training.

A *probe* is one held-out question asked in one setting ("0-shot", "4-shot", "cot", ...): the same
probes go to the teacher, the student before training and each trained student, so every number in
a recipe's report compares like with like.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmdistill.config import DataConfig, HintConfig, OnPolicyConfig, RunConfig, TeacherConfig
from lmdistill.errors import UserError
from lmdistill.io import atomic_write_jsonl
from lmdistill.teachers.types import Request, Response, Sampling


@dataclass(frozen=True)
class Probe:
    """One evaluation question: `messages` are sent as they are; `example` is what `task.check` scores."""

    setting: str
    task: object  # lmdistill.tasks Task
    example: object  # lmdistill.tasks Example
    messages: tuple[dict, ...]
    max_new_tokens: int
    # How to read the output: "check" (the task's checker) or "label" (the answer after a prefix).
    read: str = "check"


def user_message(text: str) -> tuple[dict, ...]:
    """One user turn, the chat every recipe prompt is sent as."""
    return ({"role": "user", "content": text},)


def probe_requests(probes: list[Probe]) -> list[Request]:
    """Greedy requests for the probes, each with its own token budget."""
    return [Request.chat(list(p.messages), Sampling(max_new_tokens=p.max_new_tokens)) for p in probes]


@dataclass
class DataStats:
    """What generation cost and what the filters did: counts by verdict, requests, tokens."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    requests_sent: int = 0
    requests_cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dropped"] = dict(self.dropped)
        return d


def run_config(cfg, train_path: str, output_dir: str | None = None) -> RunConfig:
    """The `lmdistill train` config of a recipe's student: its student/distill/train sections, its data.

    An api teacher has no weights here: no teacher is named (its config refuses kd_ratio > 0 and
    shrinking), and training loads none since no term reads it.
    """
    teacher = cfg.teacher.name if cfg.teacher.backend == "local" else ""
    return RunConfig(
        teacher=TeacherConfig(name=teacher, dtype=cfg.teacher.dtype),
        student=cfg.student,
        data=DataConfig(train=train_path, max_length=1024),
        distill=cfg.distill,
        hints=cfg.hints,
        on_policy=cfg.on_policy,
        train=dataclasses.replace(cfg.train, output_dir=output_dir or cfg.train.output_dir),
    )


class TeacherSession:
    """The recipe's teacher behind the response cache; `ask` keeps the token and request counts.

    Use as a context manager: the SQLite cache (output_dir/teacher_cache.sqlite) is closed at the end.
    A rerun of a recipe sends no request whose answer is already cached.
    """

    def __init__(self, cfg, output_dir: Path, teacher=None):
        from lmdistill.generate.run import build_teacher
        from lmdistill.teachers.cache import CachedTeacher, ResponseCache

        self.cache = ResponseCache(output_dir / "teacher_cache.sqlite")
        self.raw = teacher or build_teacher(cfg.teacher)
        self.teacher = CachedTeacher(self.raw, self.cache)
        self.stats = DataStats()

    def __enter__(self) -> TeacherSession:
        return self

    def __exit__(self, *exc) -> None:
        self.cache.close()

    def ask(self, requests: list[Request], desc: str) -> list[Response]:
        from lmdistill.generate.run import asker

        usage: Counter = Counter()
        before_hits, before_misses = self.teacher.hits, self.teacher.misses
        out = asker(self.teacher, usage)(requests, desc)
        self.stats.requests_cached += self.teacher.hits - before_hits
        self.stats.requests_sent += self.teacher.misses - before_misses
        self.stats.prompt_tokens += usage["prompt_tokens"]
        self.stats.completion_tokens += usage["completion_tokens"]
        return out

    def answer(self, probes: list[Probe], desc: str = "teacher on held-out") -> list[str]:
        return [r.text for r in self.ask(probe_requests(probes), desc)]

    def file(self, row: dict, verdict: str, kept: list[dict], rejected: list[dict]) -> None:
        """Put a generated row with the kept ones, or count its reason and put it with the rejected."""
        if verdict == "kept":
            kept.append(row)
        else:
            self.stats.dropped[verdict] += 1
            rejected.append(row)


def model_answers(model, tokenizer, probes: list[Probe], *, batch_size: int) -> list[str]:
    """Greedy answers of a local model (a student) to the probes, batched; not cached."""
    from lmdistill.models.generation import ChatGenerator

    runner = ChatGenerator(model, tokenizer, batch_size=batch_size)
    return [r.text for r in runner.generate(probe_requests(probes))]


def score(probes: list[Probe], outputs: list[str], reader=None) -> dict[str, dict]:
    """Per "setting / task": {"correct", "n", "accuracy"}; `reader(probe, output)` -> bool overrides."""
    table: dict[str, dict] = {}
    for probe, out in zip(probes, outputs, strict=True):
        key = f"{probe.setting} / {probe.task.name}"
        ok = reader(probe, out) if reader is not None else probe.task.check(out, probe.example)
        row = table.setdefault(key, {"correct": 0, "n": 0})
        row["correct"] += int(bool(ok))
        row["n"] += 1
    for row in table.values():
        row["accuracy"] = row["correct"] / row["n"]
    return table


def student_before(cfg, log=print):
    """The untrained student the recipe starts from (built exactly as training builds it), and its tokenizer."""
    from lmdistill.training.run import build_models

    run_cfg = run_config(cfg, "unused.jsonl")
    # The student alone: no term reads the teacher, so none loads.
    run_cfg.distill = dataclasses.replace(run_cfg.distill, kd_ratio=0.0)
    run_cfg.hints, run_cfg.on_policy = HintConfig(), OnPolicyConfig()
    models = build_models(run_cfg, log=lambda *_: None)
    models.student.eval()
    return models.student, models.tokenizer


def train_student(cfg, rows: list[dict], name: str, output_dir: Path, log=print) -> Path:
    """Write `rows` to output_dir/data/{name}.jsonl and train a student on them; returns its folder."""
    from lmdistill.training.run import run

    if not rows:
        raise UserError(f"no training rows for {name}: nothing to train on")
    path = output_dir / "data" / f"{name}.jsonl"
    atomic_write_jsonl(path, rows)
    log(f"{name}: training on {len(rows)} rows ({path})")
    start = time.perf_counter()
    student = run(run_config(cfg, str(path), str(output_dir / name)).validate(), log=log)
    log(f"{name}: trained in {time.perf_counter() - start:.0f} s")
    return student


def load_trained(path: Path):
    from lmdistill.models import load_model, load_tokenizer

    return load_model(path).eval(), load_tokenizer(path)
