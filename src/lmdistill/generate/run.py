"""`lmdistill generate CONFIG.yaml`: teacher data, cached, filtered, written with provenance.

Every response is committed to the SQLite cache the moment it arrives, so a killed run loses
nothing and a rerun sends only the missing requests. The output JSONL is written to a temporary
file and renamed at the end: a file named `output` is always complete.

The job (the resolved config) is recorded in `<output>.config.yaml`: a rerun of the same job resumes,
an output written by a different job is refused unless `overwrite: true` (see `lmdistill.outputs`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from tqdm.auto import tqdm

from lmdistill.data import read_jsonl
from lmdistill.errors import UserError
from lmdistill.generate.config import TEACHER_CLIENT_KEYS, GenerateConfig, TeacherBackendConfig
from lmdistill.generate.modes import MODE_FUNCTIONS
from lmdistill.io import atomic_write_json, atomic_write_jsonl
from lmdistill.outputs import Output, check_path
from lmdistill.teachers.cache import CachedTeacher, ResponseCache


def build_teacher(tc: TeacherBackendConfig):
    """The backend a config names: a local HF model or an OpenAI-compatible API."""
    if tc.backend == "local":
        from lmdistill.models import load_model, load_tokenizer
        from lmdistill.teachers.local import LocalTeacher

        model = load_model(tc.name, dtype=tc.dtype, device="auto")
        return LocalTeacher(model, load_tokenizer(tc.name), name=tc.name, batch_size=tc.batch_size)
    from lmdistill.teachers.api import ApiTeacher

    return ApiTeacher(
        tc.name,
        base_url=tc.base_url,
        api_key_env=tc.api_key_env,
        concurrency=tc.concurrency,
        requests_per_minute=tc.requests_per_minute,
        tokens_per_minute=tc.tokens_per_minute,
        max_retries=tc.max_retries,
        timeout=tc.timeout,
    )


def asker(teacher, usage: Counter):
    """`ask(requests, desc)`: responses in request order, with a progress bar (rate, ETA, tokens)."""

    def ask(requests, desc):
        out = [None] * len(requests)
        with tqdm(total=len(requests), desc=desc, unit="req", dynamic_ncols=True) as bar:
            for i, resp in teacher.generate_iter(requests):
                out[i] = resp
                usage["prompt_tokens"] += resp.prompt_tokens
                usage["completion_tokens"] += resp.completion_tokens
                bar.update(1)
                bar.set_postfix(tokens=usage["prompt_tokens"] + usage["completion_tokens"], refresh=False)
        return out

    return ask


#: Settings that do not change what a job writes: a rerun may change them and still resume.
RERUN_MAY_CHANGE = ("overwrite", "cache", *TEACHER_CLIENT_KEYS)


def output_of(cfg: GenerateConfig) -> tuple[Output, dict]:
    """The output file (checked: not a folder, not under a file) and the job recorded beside it."""
    check_path(cfg.cache_path, "cache", folder=False)
    output = Output.file(
        "generate",
        cfg.output,
        "output",
        sidecars=(".rejected.jsonl", ".summary.json"),
        overwrite_hint="set overwrite=true to replace it (answers already received stay in the cache)",
    )
    return output, dataclasses.asdict(cfg)


def run_generate(cfg: GenerateConfig, teacher=None, log=print) -> dict:
    """Generate as `cfg` says (with `teacher` if given, else the configured backend); returns the summary.

    The output is checked before anything is read or sent, and claimed (locked, job recorded in
    `<output>.config.yaml`) once the input rows are read: see `lmdistill.outputs`.
    """
    output, job = output_of(cfg)
    output.check(job, overwrite=cfg.overwrite, ignore=RERUN_MAY_CHANGE)
    rows = read_jsonl(cfg.input)
    if cfg.max_rows is not None:
        rows = rows[: cfg.max_rows]
    if not rows:
        raise UserError(f"{cfg.input}: no input rows")
    with output.claim(job, overwrite=cfg.overwrite, ignore=RERUN_MAY_CHANGE):
        return _generate(cfg, rows, teacher, log)


def _generate(cfg: GenerateConfig, rows: list[dict], teacher, log) -> dict:
    teacher = teacher or build_teacher(cfg.teacher)
    teacher_id = f"{teacher.backend}:{teacher.name}"
    usage: Counter = Counter()
    with ResponseCache(cfg.cache_path) as cache:
        cached = CachedTeacher(teacher, cache)
        kept, rejected = MODE_FUNCTIONS[cfg.mode](cfg, rows, asker(cached, usage), cached, cfg.input)
        hits, sent = cached.hits, cached.misses
    reasons = Counter(r["provenance"]["filter"] for r in rejected)
    summary = {
        "mode": cfg.mode,
        "teacher": teacher_id,
        "input_rows": len(rows),
        "kept": len(kept),
        "dropped": dict(reasons),
        "requests_sent": sent,
        "requests_cached": hits,
        **usage,
    }
    rejected_path = f"{cfg.output}.rejected.jsonl"
    atomic_write_jsonl(rejected_path, rejected)
    log(
        f"{cfg.mode}: kept {len(kept)}, dropped {len(rejected)}"
        + (f" ({', '.join(f'{k} {v}' for k, v in reasons.most_common())})" if reasons else "")
        + f"; requests sent {sent}, from cache {hits}; tokens prompt {usage['prompt_tokens']}, "
        f"completion {usage['completion_tokens']}"
    )
    if not kept:
        raise UserError(
            f"no rows kept ({len(rejected)} dropped: {dict(reasons)}); nothing written to {cfg.output}. "
            f"The dropped rows and their reasons are in {rejected_path}"
        )
    atomic_write_jsonl(cfg.output, kept)
    atomic_write_json(f"{cfg.output}.summary.json", summary)
    log(f"wrote {cfg.output} ({len(kept)} rows), {rejected_path}, {cfg.output}.summary.json")
    return summary
