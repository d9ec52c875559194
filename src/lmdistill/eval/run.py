"""`lmdistill eval`: several models on the same inputs, one report.

Every model (the teacher too, when given) gets the same measurements: task quality, perplexity on
held-out text, agreement with the teacher, and cost. Every model is checked before any work starts
(folder, tokenizer, config), so a report never silently misses one.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdistill.data import pad_id as pad_id_of
from lmdistill.errors import UserError
from lmdistill.eval.bits_per_byte import byte_metrics, split_text
from lmdistill.eval.cost import disk_size, peak_memory, prefill_tokens_per_s, weights_folder
from lmdistill.eval.metrics import compression_ratio, generation_agreement, percentile, speedup, text_features
from lmdistill.eval.own_answers import teacher_logprob_of_answers
from lmdistill.eval.preflight import EvalPlan, preflight_eval
from lmdistill.eval.scoring import score_tokens
from lmdistill.eval.speculative import (
    DRAFT_LENGTHS,
    assisted_speedup,
    block_efficiency,
    fixed_length_latency,
    scores_on_own_greedy,
)
from lmdistill.eval.tasks import score_task
from lmdistill.models.generation import ChatGenerator


def find_training_log(path: str | Path) -> Path | None:
    """The latest `checkpoint-*/trainer_state.json` beside or inside a model folder, or None."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "trainer_state.json").is_file():
        return path / "trainer_state.json"
    for folder in (path, path.parent):
        states = [p for p in folder.glob("checkpoint-*/trainer_state.json") if p.is_file()]
        if states:

            def step(p: Path) -> int:
                m = re.search(r"checkpoint-(\d+)$", p.parent.name)
                return int(m.group(1)) if m else -1

            return max(states, key=step)
    return None


def read_training_curves(state_file: Path | None) -> dict[str, list[tuple[float, float]]]:
    """{"loss"|"ce"|"kd": [(step, value), ...]} from a trainer_state.json's log_history; {} if none."""
    if state_file is None:
        return {}
    try:
        history = json.loads(state_file.read_text(encoding="utf-8")).get("log_history", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    curves: dict[str, list[tuple[float, float]]] = {}
    for entry in history:
        if not isinstance(entry, dict) or "step" not in entry:
            continue
        for key in ("loss", "ce", "kd"):
            value = entry.get(key)
            if isinstance(value, (int, float)):
                curves.setdefault(key, []).append((float(entry["step"]), float(value)))
    return curves


def machine_info(device: str) -> dict:
    import transformers

    from lmdistill import __version__

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lmdistill": __version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _fixed_batch(
    features: list[dict], batch_size: int, pad_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The first `batch_size` features, right-padded: the batch every cost measurement uses."""
    rows = features[:batch_size]
    width = max(len(f["input_ids"]) for f in rows)
    ids = [f["input_ids"] + [pad_id] * (width - len(f["input_ids"])) for f in rows]
    mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in rows]
    return ids, mask


def _prompt_features(tokenizer, prompts: list[str], max_length: int) -> list[dict]:
    feats = []
    for p in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_length]
        feats.append({"input_ids": ids})
    return feats


def run_eval(
    models: list[str],
    *,
    teacher: str | None = None,
    teachers: str | None = None,
    tasks: list[str] | None = None,
    text: str | None = None,
    output_dir: str,
    max_examples: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_length: int = 512,
    dtype: str = "float32",
    device: str = "cpu",
    measure_memory: bool = True,
    speculative: bool = False,
    draft_tokens: int = 4,
    fixed_length: int = 32,
    command: str | None = None,
    log: Callable[[str], object] = print,
) -> dict:
    """Evaluate `models` (and `teacher`, when given, as the first column) and write a report.

    Writes `output_dir/report.md`, `results.json` and PNG plots; returns the results dict (the same
    as results.json). See the package docs for what each number means and how it is measured.
    Steps: preflight (every input and model checked), then per model its text metrics, its
    generation and latency and (with `speculative`) its figures as a draft for the teacher, then
    the summary across models (compression, speedup, peak memory).
    speculative: measure every model as a speculative-decoding draft of the teacher: acceptance on
        its own greedy answers and real greedy assisted generation against the teacher alone, with
        `draft_tokens` tokens drafted per target call (needs --teacher and a task).
    fixed_length: tokens generated for the fixed-length latency (time to first token, per-token).
    teachers: a training config with `teachers:` and `routing:`: every model is also scored against
        each teacher on that teacher's held-out rows (data.eval routed like training; a table per
        teacher, `row["teachers"]`; see `lmdistill.eval.several`).
    """
    from lmdistill.eval.report import write_report
    from lmdistill.outputs import check_output_folder

    check_output_folder(output_dir, "eval", "--output-dir")  # before any work: not a file, no other job's

    if speculative and (teacher is None or not tasks):
        raise UserError("--speculative needs --teacher (the target) and at least one --task (the prompts)")
    if draft_tokens < 1:
        raise UserError(f"--draft-tokens must be >= 1, got {draft_tokens}")
    if fixed_length < 2:
        raise UserError(f"--fixed-length must be >= 2, got {fixed_length}")
    if teachers and teacher:
        raise UserError("give --teacher or --teachers, not both (list the reference in --teachers' config)")
    held = None
    if teachers:
        from lmdistill.eval.several import prepare_routed

        held = prepare_routed(teachers)
    plan = preflight_eval(
        models,
        teacher=teacher,
        tasks=list(tasks or []),
        text=text,
        max_examples=max_examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        routed=held is not None,
    )
    arguments = {
        "models": list(models),
        "teacher": teacher,
        "teachers": teachers,
        "tasks": list(tasks or []),
        "text": text,
        "output_dir": str(output_dir),
        "max_examples": max_examples,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "max_length": max_length,
        "dtype": dtype,
        "device": plan.device,
        "speculative": speculative,
        "draft_tokens": draft_tokens,
        "fixed_length": fixed_length,
    }

    rows, memory_jobs = _evaluate_models(
        plan,
        teacher=teacher,
        dtype=dtype,
        max_length=max_length,
        batch_size=batch_size,
        fixed_length=fixed_length,
        speculative=speculative,
        draft_tokens=draft_tokens,
        max_new_tokens=max_new_tokens,
        held=held,
        log=log,
    )
    summarise(rows, teacher=teacher, memory_jobs=memory_jobs if measure_memory else None, log=log)
    results = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "arguments": arguments,
        "machine": machine_info(plan.device),
        "teacher": teacher,
        "tasks": [
            {"name": t.name, "path": t.path, "examples": len(t.items), "kind": t.kind} for t in plan.tasks
        ],
        "text": None if text is None else {"path": text, "max_length": max_length},
        "models": rows,
    }
    if held is not None:
        results["teachers_routed"] = {
            "config": held.path,
            "data": held.data,
            "teachers": [(e.id, e.name) for e in held.entries],
        }
    from lmdistill.outputs import writing

    with writing(f"--output-dir {output_dir}", "--output-dir", Path(output_dir)):  # a full disk: one line
        write_report(results, Path(output_dir))
    log(f"eval: report written to {Path(output_dir) / 'report.md'}")
    return results


def _evaluate_models(
    plan: EvalPlan,
    *,
    teacher: str | None,
    dtype: str,
    max_length: int,
    batch_size: int,
    fixed_length: int,
    speculative: bool,
    draft_tokens: int,
    max_new_tokens: int,
    held=None,
    log,
) -> tuple[list[dict], list[tuple]]:
    """Each model in turn (the teacher first, kept as the reference the others are compared with; every
    other model freed before the next loads): its report column, and its peak-memory job."""
    reference: _Reference | None = None
    rows: list[dict] = []
    pieces = None  # the text cut once for every model's tokenizer: bits per byte count the same bytes
    if plan.text is not None:
        pieces = split_text(plan.text, [spec["tokenizer"] for spec in plan.specs], max_length)
    memory_jobs = []
    for spec, label in zip(plan.specs, plan.labels, strict=True):
        is_teacher = teacher is not None and spec["name"] == teacher
        model = _load(spec, label, dtype, plan.device, is_teacher=is_teacher, log=log)
        row = _new_row(spec, label, model, is_teacher=is_teacher)
        tok = spec["tokenizer"]
        hidden = None
        if plan.text is not None:
            fixed = text_metrics(
                row, model, tok, plan, reference, max_length=max_length, batch_size=batch_size, log=log
            )
            hidden = byte_metrics(row, model, tok, pieces, reference, batch_size=batch_size, log=log)
        else:
            row["notes"].append("perplexity and token agreement skipped: no --text given")
            fixed = _prompt_features(tok, plan.prompts, max_length)
        if held is not None:
            fixed = fixed or [f for rows_i in held.features for f in rows_i]  # no text, no task: these
            row["teachers"] = _routed(held, model, tok, row, batch_size, dtype, plan.device, log)
        ids, mask = prefill_cost(row, model, fixed, batch_size=batch_size, pad_id=pad_id_of(tok))
        memory_jobs.append((spec["path"], dtype, plan.device, ids, mask))
        outputs = None
        if plan.requests:
            outputs = _task_metrics(
                row, model, tok, plan, reference, is_teacher, batch_size, fixed_length, log
            )
            if speculative and not is_teacher and reference is not None:
                draft_metrics(row, model, tok, plan, reference, draft_tokens, max_new_tokens, log=log)
        else:
            row["notes"].append("task quality, generation speed and latency skipped: no --task given")
        rows.append(row)
        if is_teacher:
            reference = _Reference(model, tok, outputs, hidden)
        else:
            del model
            gc.collect()
    del reference
    if held is not None:
        held.close()
    gc.collect()
    return rows, memory_jobs


def _routed(held, model, tok, row, batch_size, dtype, device, log) -> dict | None:
    """The model against each teacher on its own held-out rows (`lmdistill.eval.several`), or a note."""
    from lmdistill.eval.several import routed_scores

    scores = routed_scores(held, model, tok, batch_size=batch_size, device=device, dtype=dtype, log=log)
    if scores is None:
        row["notes"].append("scores against each teacher skipped: the tokenizer differs from the teachers'")
    return scores


def _task_metrics(row, model, tok, plan, reference, is_teacher, batch_size, fixed_length, log) -> list[str]:
    """Task quality, generation speed and latency on the plan's prompts, and the teacher's log-prob of
    the model's own answers; returns the model's answers."""
    outputs = generation_metrics(
        row,
        model,
        tok,
        plan,
        None if reference is None else reference.outputs,
        batch_size=batch_size,
        fixed_length=fixed_length,
        log=log,
    )
    own_answer_metrics(
        row, model if is_teacher else reference, tok, plan, outputs, batch_size=batch_size, log=log
    )
    return outputs


@dataclass
class _Reference:
    """The teacher as the other models are compared with it: model, tokenizer, task outputs (or None)."""

    model: torch.nn.Module
    tokenizer: object
    outputs: list[str] | None
    text_hidden: list | None = None  # its final hidden states per text piece (`byte_metrics`)


def _load(spec: dict, label: str, dtype: str, device: str, *, is_teacher: bool, log) -> torch.nn.Module:
    from lmdistill.models import load_model

    log(f"eval: {label}{' (teacher)' if is_teacher else ''}: loading {spec['path']}")
    try:
        model = load_model(spec["path"], dtype=dtype, device=device, quantized=True)
    except UserError as exc:
        raise UserError(f"model {spec['name']!r} cannot be loaded: {exc}") from exc
    return model.eval()


def _new_row(spec: dict, label: str, model: torch.nn.Module, *, is_teacher: bool) -> dict:
    """A model's column of the report, with what is known before any measurement."""
    from lmdistill.models import count_parameters

    state_file = find_training_log(spec["path"])
    return {
        "label": label,
        "name": spec["name"],
        "path": spec["path"],
        "role": "teacher" if is_teacher else "model",
        "quality": {},
        "perplexity": None,
        "text_tokens": None,
        "bits_per_byte": None,
        "span_agreement": None,
        "agreement": None,
        "generation_agreement": None,
        "own_answers": None,
        "cost": {
            "parameters": count_parameters(model),
            "disk_bytes": disk_size(weights_folder(spec["path"])),
        },
        "compression": None,
        "speedup": None,
        "training_log": str(state_file) if state_file else None,
        "training_curves": read_training_curves(state_file),
        "notes": [],
    }


def text_metrics(
    row: dict,
    model: torch.nn.Module,
    tok,
    plan: EvalPlan,
    reference: _Reference | None,
    *,
    max_length: int,
    batch_size: int,
    log,
) -> list[dict]:
    """Perplexity on the held-out text, and top-1 agreement and KL with the teacher (`reference`) when
    the tokenizers match; fills `row`, returns the text's features (the cost measurements' input)."""
    from lmdistill.models import check_vocab, checked_vocab_size
    from lmdistill.models.vocab import describe_vocab_difference

    feats = text_features(plan.text, tok, max_length)
    vocab = checked_vocab_size(tok, model)
    compared = None  # the teacher, when this model's token distributions can be compared with it
    if reference is not None:
        t_tok = reference.tokenizer
        if t_tok.get_vocab() != tok.get_vocab():
            row["notes"].append(
                "token agreement (top-1, KL) skipped: the tokenizer differs from the teacher's "
                f"({describe_vocab_difference(t_tok.get_vocab(), tok.get_vocab())}); "
                "generation agreement still compares the texts"
            )
        else:
            vocab = check_vocab(
                t_tok, tok, reference.model, model, teacher_name=plan.teacher, student_name=row["name"]
            )
            compared = reference.model
    what = "perplexity and agreement with the teacher" if compared is not None else "perplexity"
    log(f"eval: {row['label']}: {what} on {len(feats)} text chunks")
    scores = score_tokens(
        model, feats, vocab=vocab, pad_token_id=pad_id_of(tok), teacher=compared, batch_size=batch_size
    )
    row["perplexity"], row["text_tokens"] = scores.perplexity, scores.tokens
    if compared is not None:
        row["agreement"] = {
            "top1": scores.top1,
            "kl": scores.kl,
            "acceptance": scores.acceptance,
            "tokens_per_target_call": {g: block_efficiency(scores.acceptance, g) for g in DRAFT_LENGTHS},
            "tokens": scores.tokens,
        }
    return feats


def prefill_cost(
    row: dict, model: torch.nn.Module, features: list[dict], *, batch_size: int, pad_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Prefill tokens/s on the fixed batch (the first `batch_size` features); returns that batch
    (ids, mask) for the peak-memory measurement."""
    ids, mask = _fixed_batch(features, batch_size, pad_id)
    row["cost"]["prefill_batch_tokens"] = sum(map(sum, mask))
    row["cost"]["prefill_tokens_per_s"] = prefill_tokens_per_s(model, torch.tensor(ids), torch.tensor(mask))
    return ids, mask


def generation_metrics(
    row: dict,
    model: torch.nn.Module,
    tok,
    plan: EvalPlan,
    teacher_outputs: list[str] | None,
    *,
    batch_size: int,
    fixed_length: int,
    log,
) -> list[str]:
    """Greedy answers to every task prompt: task quality, generation tokens/s, agreement with the
    teacher's answers, then latency one request at a time (as answered, and at a fixed output length
    of `fixed_length` tokens). Fills `row`; returns the answers."""
    label = row["label"]
    gen = ChatGenerator(model, tok, batch_size=batch_size)
    gen.generate(plan.warmup)
    log(f"eval: {label}: greedy generation on {len(plan.requests)} task prompts")
    start = time.perf_counter()
    responses = gen.generate(plan.requests)
    elapsed = time.perf_counter() - start
    outputs = [r.text for r in responses]
    generated = sum(r.completion_tokens for r in responses)
    row["cost"]["generated_tokens"] = generated
    row["cost"]["generation_tokens_per_s"] = generated / max(elapsed, 1e-9)
    offset = 0
    for task in plan.tasks:
        n = len(task.items)
        row["quality"][task.name] = score_task(task, outputs[offset : offset + n])
        offset += n
    row["outputs"] = outputs
    if row["role"] != "teacher" and teacher_outputs is not None:
        row["generation_agreement"] = generation_agreement(outputs, teacher_outputs)
    log(f"eval: {label}: latency, one request at a time")
    latencies = []
    one = ChatGenerator(model, tok, batch_size=1)
    for r in plan.requests:
        start = time.perf_counter()
        one.generate([r])
        latencies.append(time.perf_counter() - start)
    row["cost"]["latency_p50_s"] = percentile(latencies, 50)
    row["cost"]["latency_p95_s"] = percentile(latencies, 95)
    row["cost"]["latency_requests"] = len(latencies)
    # Per request, a model that never stops looks slower than one that answers briefly: the same
    # output length for every model makes the time per token comparable.
    fixed = fixed_length_latency(
        model, tok, chat_prompts(tok, plan.prompts[:FIXED_LENGTH_PROMPTS]), n=fixed_length
    )
    row["cost"]["ttft_s"] = fixed.ttft_s
    row["cost"]["per_token_latency_s"] = fixed.per_token_s
    row["cost"]["fixed_length_tokens"] = fixed.n
    return outputs


def own_answer_metrics(
    row: dict, scorer, tok, plan: EvalPlan, outputs: list[str], *, batch_size: int, log
) -> None:
    """The teacher's log-likelihood per token of this model's own greedy answers (`row["own_answers"]`).
    `scorer`: the teacher model (for the teacher's own row), the `_Reference`, or None (no teacher)."""
    if scorer is None:
        return
    if isinstance(scorer, _Reference):
        if scorer.tokenizer.get_vocab() != tok.get_vocab():
            row["notes"].append(
                "teacher log-likelihood of own answers skipped: the tokenizer differs from the teacher's"
            )
            return
        scorer = scorer.model
    log(f"eval: {row['label']}: the teacher scores its {len(outputs)} greedy answers")
    row["own_answers"] = teacher_logprob_of_answers(
        scorer, tok, chat_prompts(tok, plan.prompts), outputs, batch_size=batch_size
    ).as_dict()


FIXED_LENGTH_PROMPTS = 4  # prompts timed at the fixed output length (medians over them)
DRAFT_PROMPTS = 16  # at most this many task prompts for assisted generation (two generations each)


def chat_prompts(tok, prompts: list[str]) -> list[str]:
    """Each prompt as one user message through the tokenizer's chat template, ready to generate."""
    return [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def draft_metrics(
    row: dict,
    model,
    tok,
    plan: EvalPlan,
    reference: _Reference,
    draft_tokens: int,
    max_new_tokens: int,
    *,
    log,
) -> None:
    """The model as a speculative-decoding draft for the teacher on the task prompts: acceptance on
    its own greedy answers (same tokenizer only) and greedy assisted generation against the teacher
    alone, side by side; universal assisted generation for a draft of another tokenizer, or a note.
    Assisted text that differs from the teacher's own is recorded as a failure."""
    from lmdistill.models import check_vocab

    prompts = chat_prompts(reference.tokenizer, plan.prompts[:DRAFT_PROMPTS])
    same = reference.tokenizer.get_vocab() == tok.get_vocab()
    result: dict = {"draft_tokens": draft_tokens, "prompts": len(prompts), "same_tokenizer": same}
    log(f"eval: {row['label']}: as a draft for the teacher on {len(prompts)} prompts")
    if same:
        vocab = check_vocab(reference.tokenizer, tok, reference.model, model)
        own = scores_on_own_greedy(
            reference.model, model, tok, prompts, vocab=vocab, max_new_tokens=max_new_tokens
        )
        result["own_greedy"] = {"acceptance": own.acceptance, "top1": own.top1, "tokens": own.tokens}
    try:
        speed = assisted_speedup(
            reference.model,
            model,
            reference.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            draft_tokens=draft_tokens,
            draft_tokenizer=None if same else tok,
        )
    except Exception as exc:  # universal assisted generation does not support every pair
        row["notes"].append(
            f"assisted generation with this draft failed in transformers ({type(exc).__name__}: {exc}); "
            "no speedup measured"
        )
    else:
        result["assisted"] = speed.as_dict()
        if speed.identical < speed.prompts:
            row["notes"].append(
                f"FAILED: greedy assisted generation differs from the teacher's own text on "
                f"{speed.prompts - speed.identical} of {speed.prompts} prompts (indices {speed.mismatches})"
            )
        if not same:
            row["notes"].append(
                "assisted generation across tokenizers (transformers' universal assisted generation)"
            )
    row["draft"] = result


def summarise(rows: list[dict], *, teacher: str | None, memory_jobs: list | None, log) -> None:
    """Across models: compression and speedup against the teacher (the first row), and peak memory
    of each model measured in a fresh process (None: not measured)."""
    if teacher is None:
        for row in rows:
            row["notes"].append("agreement, compression and speedup skipped: no --teacher given")
    else:
        t_cost = rows[0]["cost"]
        for row in rows:
            row["compression"] = compression_ratio(t_cost["parameters"], row["cost"]["parameters"])
            row["speedup"] = speedup(
                row["cost"].get("generation_tokens_per_s"), t_cost.get("generation_tokens_per_s")
            )
    if memory_jobs is not None:
        log(f"eval: peak memory of {len(memory_jobs)} model(s), in a fresh process")
        for row, mem in zip(rows, peak_memory(memory_jobs), strict=True):
            row["cost"]["peak_memory_bytes"] = mem["peak_rss_bytes"]
            row["cost"]["peak_memory_method"] = mem["method"]
            if "peak_gpu_bytes" in mem:
                row["cost"]["peak_gpu_memory_bytes"] = mem["peak_gpu_bytes"]
    else:
        for row in rows:
            row["notes"].append("peak memory not measured (measure_memory=False)")
