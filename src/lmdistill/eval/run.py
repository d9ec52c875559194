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
from pathlib import Path

import torch

from lmdistill.data import pad_id as pad_id_of
from lmdistill.errors import UserError
from lmdistill.eval.cost import disk_size, peak_memory, prefill_tokens_per_s, weights_folder
from lmdistill.eval.metrics import (
    compression_ratio,
    generation_agreement,
    percentile,
    perplexity,
    read_text,
    real_vocab,
    speedup,
    text_features,
)
from lmdistill.eval.tasks import Task, load_tasks, score_task
from lmdistill.evaluation import compare_to_teacher


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ("org/name") or a short name."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _labels(names: list[str]) -> list[str]:
    """Short column labels: a folder's name (its parent too when two would clash)."""

    def short(n: str, depth: int) -> str:
        parts = Path(n).parts
        return "/".join(parts[-depth:]) if parts else n

    for depth in (1, 2, 3):
        labels = [short(n, depth) for n in names]
        if len(set(labels)) == len(labels):
            return labels
    return names


def preflight(name: str, *, need_chat: bool) -> dict:
    """Resolve a model and load its tokenizer and config; any failure is a UserError naming it."""
    from transformers import AutoConfig

    from lmdistill.models import load_tokenizer, resolve_model_path

    if _looks_like_path(name) and not Path(name).expanduser().exists():
        raise UserError(f"model {name!r}: folder not found")
    try:
        path = resolve_model_path(str(Path(name).expanduser()) if name.startswith("~") else name)
        tokenizer = load_tokenizer(path)
        try:
            AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"no loadable config ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    except UserError as exc:
        raise UserError(f"model {name!r} cannot be loaded: {exc}") from exc
    if Path(path).is_dir():
        if disk_size(path) is None:
            raise UserError(
                f"model {name!r} cannot be loaded: no weight files (*.safetensors, *.bin) in {path}"
            )
        from safetensors import safe_open

        for f in sorted(Path(path).glob("*.safetensors")):
            try:
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            except Exception as exc:
                raise UserError(
                    f"model {name!r} cannot be loaded: unreadable weight file {f}: {exc}"
                ) from exc
    if need_chat and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"model {name!r}: its tokenizer has no chat template, so task prompts cannot be rendered"
        )
    return {"name": name, "path": str(path), "tokenizer": tokenizer}


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
    command: str | None = None,
    log: Callable[[str], object] = print,
) -> dict:
    """Evaluate `models` (and `teacher`, when given, as the first column) and write a report.

    Writes `output_dir/report.md`, `results.json` and PNG plots; returns the results dict (the same
    as results.json). See the package docs for what each number means and how it is measured.
    """
    from lmdistill.eval.report import write_report
    from lmdistill.models import check_vocab, count_parameters, load_model, resolve_device
    from lmdistill.outputs import check_output_folder

    check_output_folder(output_dir, "eval", "--output-dir")  # before any work: not a file, no other job's
    from lmdistill.models.vocab import describe_vocab_difference
    from lmdistill.teachers.local import LocalTeacher
    from lmdistill.teachers.types import Request, Sampling

    tasks = list(tasks or [])
    names: list[str] = []
    for n in ([teacher] if teacher else []) + list(models):
        if n not in names:
            names.append(n)
    if not names:
        raise UserError("no model to evaluate: name at least one MODEL")
    if not tasks and not text:
        raise UserError("nothing to evaluate on: give --task FILE.jsonl and/or --text FILE.txt")
    for label, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise UserError(f"{label} must be at least 1, got {value}")
    if max_examples is not None and max_examples < 1:
        raise UserError(f"max_examples must be at least 1, got {max_examples}")
    device = str(resolve_device(device))

    # ---- check all inputs and every model before any work --------------------------------------
    task_list: list[Task] = load_tasks(tasks, max_examples=max_examples)
    text_str = read_text(text) if text else None
    specs = [preflight(n, need_chat=bool(task_list)) for n in names]
    labels = _labels(names)
    prompts = [item.prompt for task in task_list for item in task.items]
    sampling = Sampling(max_new_tokens=max_new_tokens)
    requests = [Request.chat([{"role": "user", "content": p}], sampling) for p in prompts]
    warmup = [Request.chat([{"role": "user", "content": "Hi"}], Sampling(max_new_tokens=2))]
    arguments = {
        "models": list(models),
        "teacher": teacher,
        "tasks": tasks,
        "text": text,
        "output_dir": str(output_dir),
        "max_examples": max_examples,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "max_length": max_length,
        "dtype": dtype,
        "device": device,
    }

    t_model = t_tok = None
    teacher_outputs: list[str] | None = None
    rows: list[dict] = []
    memory_jobs = []
    for spec, label in zip(specs, labels, strict=True):
        is_teacher = teacher is not None and spec["name"] == teacher
        log(f"eval: {label}{' (teacher)' if is_teacher else ''}: loading {spec['path']}")
        try:
            model = load_model(spec["path"], dtype=dtype, device=device, quantized=True)
        except UserError as exc:
            raise UserError(f"model {spec['name']!r} cannot be loaded: {exc}") from exc
        model.eval()
        tok = spec["tokenizer"]
        pad_id = pad_id_of(tok)
        state_file = find_training_log(spec["path"])
        row: dict = {
            "label": label,
            "name": spec["name"],
            "path": spec["path"],
            "role": "teacher" if is_teacher else "model",
            "quality": {},
            "perplexity": None,
            "text_tokens": None,
            "agreement": None,
            "generation_agreement": None,
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

        # ---- held-out text: perplexity, token agreement, prefill speed ---------------------------
        if text_str is not None:
            feats = text_features(text_str, tok, max_length)
            vocab = real_vocab(tok, model)
            agreement = None
            if teacher is not None and not is_teacher:
                if t_tok.get_vocab() != tok.get_vocab():
                    row["notes"].append(
                        "token agreement (top-1, KL) skipped: the tokenizer differs from the teacher's "
                        f"({describe_vocab_difference(t_tok.get_vocab(), tok.get_vocab())}); "
                        "generation agreement still compares the texts"
                    )
                else:
                    shared = check_vocab(
                        t_tok, tok, t_model, model, teacher_name=teacher, student_name=spec["name"]
                    )
                    log(f"eval: {label}: agreement with the teacher on {len(feats)} text chunks")
                    agreement = compare_to_teacher(
                        model, t_model, feats, vocab=shared, pad_token_id=pad_id, batch_size=batch_size
                    )
                    row["agreement"] = {
                        "top1": agreement.top1,
                        "kl": agreement.kl,
                        "tokens": agreement.tokens,
                    }
            if agreement is not None:
                row["perplexity"], row["text_tokens"] = agreement.perplexity, agreement.tokens
            else:
                log(f"eval: {label}: perplexity on {len(feats)} text chunks")
                row["perplexity"], row["text_tokens"] = perplexity(
                    model, feats, vocab=vocab, pad_token_id=pad_id, batch_size=batch_size
                )
            fixed = feats
        else:
            row["notes"].append("perplexity and token agreement skipped: no --text given")
            fixed = _prompt_features(tok, prompts, max_length)
        ids, mask = _fixed_batch(fixed, batch_size, pad_id)
        row["cost"]["prefill_batch_tokens"] = sum(map(sum, mask))
        row["cost"]["prefill_tokens_per_s"] = prefill_tokens_per_s(
            model, torch.tensor(ids), torch.tensor(mask)
        )
        memory_jobs.append((spec["path"], dtype, device, ids, mask))

        # ---- tasks: quality, generation agreement, generation speed, latency ---------------------
        if requests:
            gen = LocalTeacher(model, tok, name=spec["name"], batch_size=batch_size)
            gen.generate(warmup)
            log(f"eval: {label}: greedy generation on {len(requests)} task prompts")
            start = time.perf_counter()
            responses = gen.generate(requests)
            elapsed = time.perf_counter() - start
            outputs = [r.text for r in responses]
            generated = sum(r.completion_tokens for r in responses)
            row["cost"]["generated_tokens"] = generated
            row["cost"]["generation_tokens_per_s"] = generated / max(elapsed, 1e-9)
            offset = 0
            for task in task_list:
                n = len(task.items)
                row["quality"][task.name] = score_task(task, outputs[offset : offset + n])
                offset += n
            row["outputs"] = outputs
            if is_teacher:
                teacher_outputs = outputs
            elif teacher_outputs is not None:
                row["generation_agreement"] = generation_agreement(outputs, teacher_outputs)
            log(f"eval: {label}: latency, one request at a time")
            latencies = []
            one = LocalTeacher(model, tok, name=spec["name"], batch_size=1)
            for r in requests:
                start = time.perf_counter()
                one.generate([r])
                latencies.append(time.perf_counter() - start)
            row["cost"]["latency_p50_s"] = percentile(latencies, 50)
            row["cost"]["latency_p95_s"] = percentile(latencies, 95)
            row["cost"]["latency_requests"] = len(latencies)
        else:
            row["notes"].append("task quality, generation speed and latency skipped: no --task given")
        rows.append(row)

        if is_teacher:
            t_model, t_tok = model, tok
        else:
            del model
            gc.collect()

    del t_model
    gc.collect()
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

    if measure_memory:
        log(f"eval: peak memory of {len(memory_jobs)} model(s), in a fresh process")
        for row, mem in zip(rows, peak_memory(memory_jobs), strict=True):
            row["cost"]["peak_memory_bytes"] = mem["peak_rss_bytes"]
            row["cost"]["peak_memory_method"] = mem["method"]
            if "peak_gpu_bytes" in mem:
                row["cost"]["peak_gpu_memory_bytes"] = mem["peak_gpu_bytes"]
    else:
        for row in rows:
            row["notes"].append("peak memory not measured (measure_memory=False)")

    results = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "arguments": arguments,
        "machine": machine_info(device),
        "teacher": teacher,
        "tasks": [
            {"name": t.name, "path": t.path, "examples": len(t.items), "kind": t.kind} for t in task_list
        ],
        "text": None if text is None else {"path": text, "max_length": max_length},
        "models": rows,
    }
    write_report(results, Path(output_dir))
    log(f"eval: report written to {Path(output_dir) / 'report.md'}")
    return results
