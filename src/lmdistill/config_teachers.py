"""The teacher sections of a run's configuration: `teacher:` (one teacher), `teachers:` (several, each a
`TeacherEntry`) and `routing:`, with the checks of the list and `resolve_teachers`, which turns a list
of one into the one-teacher spelling. Part of `lmdistill.config` (which re-exports every name here);
each field documented once (its `help`) with its default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmdistill.errors import UserError
from lmdistill.yamlconfig import setting

if TYPE_CHECKING:
    from lmdistill.config import RunConfig


@dataclass
class TeacherConfig:
    name: str = setting("smollm2-135m", "Teacher: a Hugging Face id, a local model folder, or a short name.")
    dtype: str = setting("float32", "Teacher weights dtype: float32, bfloat16, float16 or auto.")
    server: str | None = setting(
        None,
        "URL of an OpenAI-compatible server that scores token sequences for the loss instead of a teacher in "
        "this process (vLLM: `vllm serve MODEL --max-logprobs K`, or `lmdistill serve`), e.g. "
        "http://127.0.0.1:8000/v1. The KD term is then the top-k + tail divergence, at distill.temperature 1; "
        "teacher.name only names the tokenizer (and the model a student is shrunk from). See docs/teacher_server.md.",
    )
    server_model: str | None = setting(
        None, "Model name sent to teacher.server; null: the one model its /v1/models lists."
    )
    server_k: int = setting(
        20,
        "Training from teacher.server: top-k log-probs per target token (vLLM returns at most 20 unless "
        "started with --max-logprobs K). `lmdistill capture` uses capture.k.",
    )
    server_api_key_env: str | None = setting(
        None, "Environment variable holding teacher.server's API key; null: none is sent (a local server)."
    )
    server_concurrency: int = setting(8, "teacher.server: requests in flight at most (one per sequence).")
    server_requests_per_minute: float | None = setting(
        None, "teacher.server: client-side request rate limit; null: none."
    )
    server_tokens_per_minute: float | None = setting(
        None, "teacher.server: client-side token rate limit (prompt tokens); null: none."
    )
    server_timeout: float = setting(120.0, "teacher.server: seconds per HTTP request.")
    server_max_retries: int = setting(
        5,
        "teacher.server: retries per request on 429 (after its Retry-After), 5xx, timeouts and lost connections.",
    )


@dataclass
class TeacherEntry(TeacherConfig):
    """One teacher of `teachers:`: the keys of `teacher:` (name, dtype, server, server_*) plus these."""

    id: str = setting("", "What rows and routing rules call this teacher (unique in the list), e.g. maths.")
    store: str | None = setting(
        None,
        "A folder from `lmdistill capture` with this teacher: a capture over the whole data.train, or this "
        "teacher's store from a capture with `teachers:` (capture.output_dir/ID, holding only its routed rows; "
        "the capture.output_dir itself names it too). Its rows are read from there (top-k = the store's "
        "capture.k). Else `server` (top-k = server_k), else `name` in this process.",
    )
    weight: float = setting(
        1.0, "routing.mode mix: this teacher's weight w_i in the mixture (>= 0; the weights must sum to > 0)."
    )
    temperature: float | None = setting(
        None,
        "This teacher's T_i (null: distill.temperature). route: its rows' KD term at T_i for both sides (with "
        "T_i^2); mix / select: its distribution softmax(z_i / T_i) enters the target, the student at "
        "distill.temperature. A store must have been captured at it; a server needs 1.",
    )
    cross_tokenizer: str | None = setting(
        None,
        "This teacher tokenizes differently from the student: byte_aligned or uld, the method of its rows' "
        "cross-tokenizer term (as distill.cross_tokenizer for one teacher; the distill.xtok_* settings apply); "
        "null: distill.cross_tokenizer, else its tokenizer must be the student's. Its rows are tokenized by "
        "both; it needs routing.mode route, the model in this process and no on-policy steps. See "
        "docs/teachers.md.",
    )

    @property
    def kind(self) -> str:
        """store, server or in_process."""
        return "store" if self.store else "server" if self.server else "in_process"


#: routing.mode values.
ROUTING_MODES = ("route", "mix", "select")
#: distill.cross_tokenizer and teachers[i].cross_tokenizer values.
CROSS_TOKENIZER_METHODS = ("byte_aligned", "uld")


def cross_tokenizer_members(cfg: RunConfig) -> dict[int, str]:
    """{index in `teachers:`: method} of the listed teachers that tokenize differently from the student
    (teachers[i].cross_tokenizer, else distill.cross_tokenizer); empty without several teachers."""
    if len(cfg.teachers) < 2:
        return {}
    methods = {i: e.cross_tokenizer or cfg.distill.cross_tokenizer for i, e in enumerate(cfg.teachers)}
    return {i: m for i, m in methods.items() if m}


@dataclass
class RoutingConfig:
    mode: str = setting(
        "route",
        "With several `teachers:`: route (each row scored by one teacher, see field/by/rules/default), mix "
        "(the target is the mixture sum_i w_i p_i of every teacher, per token) or select (per token, the "
        "teacher with the highest probability on the row's actual next token). mix and select need every "
        "teacher in this process. See docs/teachers.md.",
    )
    field: str = setting("teacher", "route: the row key that names its teacher's id (it wins over rules).")
    by: str | None = setting(
        None, "route: the row key whose value `rules` maps to a teacher id (e.g. task or tag); null: none."
    )
    rules: dict = setting({}, "route: {value of the row's `by` key: teacher id}, e.g. {arithmetic: maths}.")
    default: str | None = setting(
        None, "route: the teacher id of rows that name none and match no rule; null: such a row is refused."
    )


def check_teachers(cfg: RunConfig) -> None:
    """`teachers:` and `routing:` checked before anything is read (UserError naming the key)."""
    entries = cfg.teachers
    if not entries:
        return
    check_teacher_list(entries, cfg.routing)
    if cfg.teacher.server or cfg.distill.teacher_store:
        raise UserError(
            "give teachers: or teacher.server / distill.teacher_store, not both: put the server or store in "
            "its teachers entry"
        )
    if cfg.on_policy.enabled and any(e.kind == "store" for e in entries):
        raise UserError(
            "on_policy: a teachers entry with a store holds scores of the data's fixed sequences and cannot "
            "score the student's new samples: use a teacher in this process or a server"
        )
    if len(entries) > 1:
        _check_several(cfg)


def check_teacher_list(entries: list[TeacherEntry], r: RoutingConfig) -> None:
    """The list itself and its routing (training and `lmdistill capture` alike): unique ids, weights,
    temperatures, and routes only to listed teachers. UserError naming the key."""
    if r.mode not in ROUTING_MODES:
        raise UserError(f"routing.mode: unknown mode {r.mode!r}; choose one of {', '.join(ROUTING_MODES)}")
    ids = []
    for i, e in enumerate(entries):
        key = f"teachers[{i}]"
        if not e.id or not isinstance(e.id, str):
            raise UserError(f"{key}.id is empty: give each teacher an id that rows and rules can name")
        if e.id in ids:
            raise UserError(f"{key}.id: {e.id!r} is given twice; each teacher needs its own id")
        ids.append(e.id)
        if e.store and e.server:
            raise UserError(f"{key} ({e.id}): give store or server, not both")
        if not (math.isfinite(e.weight) and e.weight >= 0):
            raise UserError(f"{key}.weight must be a finite number >= 0, got {e.weight}")
        if e.temperature is not None and not (math.isfinite(e.temperature) and e.temperature > 0):
            raise UserError(f"{key}.temperature must be a finite number > 0 (or null), got {e.temperature}")
        if e.cross_tokenizer is not None and e.cross_tokenizer not in CROSS_TOKENIZER_METHODS:
            raise UserError(
                f"{key}.cross_tokenizer: unknown method {e.cross_tokenizer!r}; choose "
                f"{' or '.join(CROSS_TOKENIZER_METHODS)} (or null when it tokenizes as the student does)"
            )
    total = sum(e.weight for e in entries)
    if not total > 0:
        raise UserError(
            f"teachers: the weights sum to {total}; they must sum to a positive number (each >= 0)"
        )
    listed = ", ".join(ids)
    if r.default is not None and r.default not in ids:
        raise UserError(f"routing.default: {r.default!r} is not a listed teacher (teachers: {listed})")
    for value, target in r.rules.items():
        if target not in ids:
            raise UserError(
                f"routing.rules: {r.by or 'the row'} {value!r} routes to {target!r}, which is not a listed "
                f"teacher (teachers: {listed})"
            )
    if r.rules and not r.by:
        raise UserError("routing.rules needs routing.by: the row key whose value they map (e.g. task)")


def _check_several(cfg: RunConfig) -> None:
    """What several teachers cannot do yet, refused by name."""
    entries, mode = cfg.teachers, cfg.routing.mode
    apart = [e for e in entries if e.kind != "in_process"]
    if mode != "route" and apart:
        raise UserError(
            f"routing.mode={mode} needs every teacher in this process, but {apart[0].id!r} is a {apart[0].kind} "
            "(stores and servers give top-k over different token ids, whose mixture is not exact): use "
            "routing.mode=route or load it by name"
        )
    refused = (
        (cfg.hints.enabled, "hint terms (hints.*_weight > 0), which read one teacher's internal states"),
        (cfg.train.fsdp_teacher, "train.fsdp_teacher"),
        (cfg.on_policy.seq_kd, "on_policy.seq_kd (which teacher would sample?)"),
    )
    for on, what in refused:
        if on:
            raise UserError(
                f"several teachers with {what} are not supported yet: list one teacher or drop it"
            )
    _check_cross_tokenizer_members(cfg)


def _check_cross_tokenizer_members(cfg: RunConfig) -> None:
    """What a teacher with another tokenizer among several needs: routing by row (its distributions live
    over another vocabulary), the model in this process, the KD term on, no on-policy steps."""
    members = cross_tokenizer_members(cfg)
    if not members:
        return
    i, method = next(iter(members.items()))
    e = cfg.teachers[i]
    what = f"teachers[{i}] ({e.id}) is a cross-tokenizer teacher (cross_tokenizer: {method}"
    what += ")" if e.cross_tokenizer else ", from distill.cross_tokenizer)"
    if cfg.routing.mode != "route":
        raise UserError(
            f"routing.mode={cfg.routing.mode} with a cross-tokenizer teacher: {what}, and its distributions "
            "live over another vocabulary, so they cannot be mixed or compared per token with the others' "
            "(only routing.mode=route takes it: its rows are scored by it alone)"
        )
    apart = next(((j, cfg.teachers[j]) for j in members if cfg.teachers[j].kind != "in_process"), None)
    if apart is not None:
        j, a = apart
        raise UserError(
            f"teachers[{j}] ({a.id}) is a cross-tokenizer teacher with a {a.kind}: the cross-tokenizer term "
            f"needs the teacher model in this process (its hidden states on its own tokens); drop its {a.kind}"
        )
    if cfg.on_policy.enabled:
        raise UserError(
            f"on_policy with a cross-tokenizer teacher is not supported yet: {what}, and it would have to "
            "score the student's samples in its own tokenization; drop on_policy or that teacher"
        )
    if cfg.distill.kd_ratio == 0:
        raise UserError(
            f"{what} but distill.kd_ratio is 0, so no teacher is read: set distill.kd_ratio > 0 or drop "
            "cross_tokenizer"
        )


def resolve_teachers(cfg: RunConfig) -> RunConfig:
    """The config a run trains with. A `teachers:` list of one entry is the `teacher:` spelling (moved
    there: the same run, the same losses, bit for bit); with several, the first entry's name and dtype
    stand for teacher.name / teacher.dtype (the run's tokenizer, the model a student is shrunk from)."""
    import dataclasses

    if not cfg.teachers:
        return cfg
    first = cfg.teachers[0]
    own = {f.name: getattr(first, f.name) for f in dataclasses.fields(TeacherConfig)}
    if len(cfg.teachers) == 1:
        distill = dataclasses.replace(
            cfg.distill,
            teacher_store=first.store,
            temperature=first.temperature or cfg.distill.temperature,
            cross_tokenizer=first.cross_tokenizer or cfg.distill.cross_tokenizer,
        )
        one = dataclasses.replace(
            cfg, teacher=TeacherConfig(**own), distill=distill, teachers=[], routing=RoutingConfig()
        )
        return one.validate()  # the one-teacher spelling's own checks (a server at T 1, ...)
    teacher = dataclasses.replace(cfg.teacher, name=first.name, dtype=first.dtype)
    return dataclasses.replace(cfg, teacher=teacher)
