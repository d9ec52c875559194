"""`lmdistill export`: turn a student (model folder, `lmdistill train` output, or LoRA adapter) into a
clean Hugging Face folder for deployment and evaluation.

The folder holds safetensors weights, the tokenizer, the generation config and, when there is one,
the lmdistill config; nothing used only for training (optimizer state, hint projections, ...). It is
written into a temporary sibling and renamed into place, so a half-written export never looks finished.
Every export holds `lmdistill_export.json` (source, dtype, quantisation); `--force` replaces a folder
only when it holds that file, never the working directory, the source or any other folder. An output
that is a symbolic link to a folder writes into that folder (the link stays); a link to nothing is refused.

`--untie-embeddings` writes the LM head as its own tensor (equal to the embedding) with
`tie_word_embeddings: false`: the folder to start the student's vLLM server on for on-policy sampling with
weight reloads, whose in-place reload keeps a tied head's old weights (docs/on_policy.md).

`--quantize int8-dynamic` keeps the float weights (Hugging Face cannot store dynamically quantised
modules) and writes `lmdistill_quantization.json`; `load_exported` applies the quantisation on load.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lmdistill.errors import UserError
from lmdistill.io import atomic_write_json, make_temp_dir, public_tree
from lmdistill.models.loading import DTYPES, resolve_dtype
from lmdistill.models.quantize import (
    QUANTIZATION_FILE,
    quantize_model,
    read_quantization,
)
from lmdistill.models.quantize import check_quantize as _check_quantize
from lmdistill.outputs import check_path, hold_lock, writing

#: Files a training run may leave in or beside a student folder; an export never contains them.
TRAINING_ONLY_FILES = (
    "hint_projections.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "trainer_state.json",
    "training_args.bin",
    "scaler.pt",
)
TRAINING_ONLY_GLOBS = ("rng_state*.pth",)
#: Written into every export (source, dtype, quantisation): how `--force` knows a folder is an export.
EXPORT_MARKER = "lmdistill_export.json"
#: The lmdistill run config (same name as `lmdistill.training.finish.CONFIG_FILE`).
CONFIG_FILE = "lmdistill_config.yaml"
STUDENT_DIR = "student"
ADAPTER_CONFIG = "adapter_config.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

#: Fixed input for `quantization_report` when `export_model` quantises.
DEFAULT_REPORT_TEXTS = (
    "The capital of France is Paris. It is known for the Eiffel Tower and its museums.",
    "Alice has 3 apples and buys 2 more, then eats 1. How many apples does she have left?",
    "Knowledge distillation trains a small student model to imitate the outputs of a large teacher.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
)


def export_model(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str | None = None,
    quantize: str | None = None,
    untie_embeddings: bool = False,
    force: bool = False,
    log=print,
) -> Path:
    """Export SRC (model folder, train output folder, or peft LoRA adapter folder) to OUT; returns OUT.

    `dtype` ("float32", "bfloat16", "float16"; None keeps the stored dtype) casts the weights.
    `quantize="int8-dynamic"` stores float32 weights plus `lmdistill_quantization.json`, and logs the
    speed/quality change of int8 against float on a fixed input (`quantization_report`).
    `untie_embeddings` gives the LM head its own copy of a tied embedding (`untie_embeddings`).
    `force` replaces an existing non-empty OUT.
    """
    target_dtype = _check_dtype(dtype)
    method = _check_quantize(quantize)
    if untie_embeddings and method is not None:
        raise UserError(
            f"--untie-embeddings writes a folder for vLLM, which does not apply lmdistill's --quantize {method}: "
            "drop one of them"
        )
    if method is not None:
        if target_dtype not in (None, torch.float32):
            raise UserError(
                f"--quantize {method} quantises float32 Linear layers and stores float32 weights; "
                f"drop --dtype {dtype} (or use --dtype float32)"
            )
        target_dtype = torch.float32
    kind, model_dir, run_dir = resolve_source(src)
    given = check_path(out, "export: output")
    out = _through_link(given)
    _check_output(out, model_dir, run_dir, force=force)

    if kind == "adapter":
        model, tokenizer = _load_adapter(model_dir, log)
        stored = _base_dtype(model_dir)
        model = model.to(target_dtype or stored)
    else:
        from lmdistill.models import load_model

        model = load_model(str(model_dir), dtype=target_dtype or "auto")
        tokenizer = _load_tokenizer_or_none(model_dir, log)
    model.eval()
    log(f"export: {kind} {model_dir} -> {out} ({_dtype_name(next(model.parameters()).dtype)} weights)")
    if untie_embeddings:
        was_tied = untie(model, str(src))
        log("export: LM head untied from the embedding" if was_tied else "export: LM head already untied")

    what = f"export: output {out}"
    with hold_lock(out.parent / f".{out.name}.lock", what, "export"):
        _check_output(out, model_dir, run_dir, force=force)  # again, now that no other export can write
        dtype_name = _dtype_name(next(model.parameters()).dtype)
        marker = {"source": str(src), "kind": kind, "dtype": dtype_name, "quantize": method}
        if untie_embeddings:
            marker["untied"] = True
        with writing(what, "output folder", out):  # no space, read-only: one line; the temporary folder goes
            _write_export(out, model, tokenizer, model_dir, run_dir, method, marker, log)
    log(f"export: wrote {given}" + (f" (-> {out})" if out != given else ""))
    return given


def _write_export(
    out: Path, model, tokenizer, model_dir: Path, run_dir: Path | None, method, marker: dict, log
) -> None:
    """Save into a temporary sibling, then swap it in for `out` (an earlier export, checked, or nothing)."""
    tmp = make_temp_dir(out)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        config = _find_lmdistill_config(model_dir, run_dir)
        if config is not None:
            shutil.copy2(config, tmp / CONFIG_FILE)
        _drop_training_files(tmp)  # nothing copies them; this is a guard, not the mechanism
        if method is not None:
            (tmp / QUANTIZATION_FILE).write_text(
                json.dumps({"method": method, "modules": "Linear"}, indent=2) + "\n", encoding="utf-8"
            )
            if tokenizer is not None:
                report = quantization_report(tmp, DEFAULT_REPORT_TEXTS)
                log(format_quantization_report(report))
        atomic_write_json(tmp / EXPORT_MARKER, marker)
        public_tree(tmp)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.is_dir():
            os.replace(out, old)  # an earlier export or an empty folder (checked); deleted once replaced
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def untie(model: torch.nn.Module, name: str) -> bool:
    """The LM head its own parameter (a copy of the embedding when they were one tensor) and the config
    `tie_word_embeddings: false`, so that save_pretrained writes both and a loader (vLLM) ties nothing.
    True when they were tied. UserError for a model without an LM head."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or getattr(head, "weight", None) is None or embed is None:
        raise UserError(
            f"export --untie-embeddings: {name} has no LM head to untie (get_output_embeddings() is None); "
            "it is not a causal language model"
        )
    tied = head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr()
    if tied:
        head.weight = torch.nn.Parameter(
            embed.weight.detach().clone(), requires_grad=head.weight.requires_grad
        )
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    return tied


def resolve_source(src: str | os.PathLike) -> tuple[str, Path, Path | None]:
    """Classify SRC: ("model", folder, None), ("run", run/student, run) or ("adapter", folder, None).

    A short name of an embedded model (e.g. smollm2-135m) resolves to its converted folder.
    """
    from lmdistill.models import resolve_model_path

    path = Path(src)
    if not path.exists():
        resolved = Path(resolve_model_path(str(src)))  # short names; anything else comes back unchanged
        if not resolved.is_dir():
            raise UserError(
                f"export: no such folder: {src} (give a model folder, a train output or an adapter)"
            )
        path = resolved
    if not path.is_dir():
        raise UserError(f"export: {src} is a file; give a model folder, a train output folder or an adapter")
    if (path / ADAPTER_CONFIG).is_file():
        return "adapter", path, None
    if (path / "config.json").is_file():
        return "model", path, None
    if (path / STUDENT_DIR / "config.json").is_file():
        return "run", path / STUDENT_DIR, path
    raise UserError(
        f"export: {src} is not a model folder (no config.json), a train output (no {STUDENT_DIR}/config.json) "
        f"or a LoRA adapter (no {ADAPTER_CONFIG})"
    )


def load_exported(path: str | os.PathLike, *, dtype: str | None = None, device: str = "cpu"):
    """Load an exported folder with `from_pretrained`; quantise it when `lmdistill_quantization.json` is there.

    A quantised model runs on CPU in float32; `dtype` then must be None or float32.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"no model folder at {path} (no config.json)")
    method = read_quantization(path)
    torch_dtype: Any = _check_dtype(dtype) or "auto"
    if method is not None:
        if torch_dtype not in ("auto", torch.float32):
            raise UserError(f"{path} is {method} quantised: it loads in float32, not {dtype}")
        if torch.device(device).type != "cpu":
            raise UserError(f"{path} is {method} quantised: dynamic int8 runs on cpu only, not {device}")
        torch_dtype = torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.eval()
    if method is not None:
        return quantize_model(model, method)
    return model.to(device)


def quantization_report(
    model_dir: str | os.PathLike,
    texts,
    *,
    repeats: int = 3,
    method: str = "int8-dynamic",
    keep_float: tuple[str, ...] = (),
) -> dict:
    """Compare the float32 model in `model_dir` with its int8-dynamic version on `texts` (CPU, batch 1);
    Linear layers named with a `keep_float` suffix stay in float.

    Returns tokens, forward tokens/s for both and the speedup, max/mean absolute logit difference,
    and the top-1 agreement of next-token predictions over all positions.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise UserError("quantization_report needs at least one text")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = [tokenizer(t, return_tensors="pt")["input_ids"] for t in texts]
    inputs = [ids for ids in inputs if ids.shape[1] > 0]
    n_tokens = sum(ids.shape[1] for ids in inputs)
    float_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    float_logits, float_time = _timed_forward(float_model, inputs, repeats)
    int8_model = quantize_model(float_model, method, inplace=False, keep_float=keep_float).eval()
    int8_logits, int8_time = _timed_forward(int8_model, inputs, repeats)
    diff = torch.cat([(a - b).abs().flatten() for a, b in zip(float_logits, int8_logits, strict=True)])
    same = sum(
        int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(float_logits, int8_logits, strict=True)
    )
    return {
        "method": method,
        "keep_float": list(keep_float),
        "texts": len(inputs),
        "tokens": n_tokens,
        "threads": torch.get_num_threads(),
        "float_tokens_per_s": n_tokens / float_time,
        "int8_tokens_per_s": n_tokens / int8_time,
        "speedup": float_time / int8_time,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "top1_agreement": same / n_tokens,
        "float_state_mb": _state_mb(float_model),
        "int8_state_mb": _state_mb(int8_model),
    }


def format_quantization_report(r: dict) -> str:
    return (
        f"{r['method']} vs float32 on {r['tokens']} tokens ({r['threads']} threads): "
        f"forward {r['float_tokens_per_s']:.0f} -> {r['int8_tokens_per_s']:.0f} tokens/s "
        f"(x{r['speedup']:.2f}); weights {r['float_state_mb']:.1f} -> {r['int8_state_mb']:.1f} MB; "
        f"logits |diff| max {r['max_abs_logit_diff']:.4f} mean {r['mean_abs_logit_diff']:.4f}; "
        f"top-1 agreement {r['top1_agreement']:.1%}"
    )


# ---------------------------------------------------------------------------------------------------


def _check_dtype(dtype: str | None) -> torch.dtype | None:
    """The torch dtype a --dtype name asks for; None keeps the stored dtype (None or "auto")."""
    resolved = None if dtype is None else resolve_dtype(dtype)
    return None if resolved == "auto" else resolved


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _through_link(out: Path) -> Path:
    """The folder an output that is a symbolic link points to: the export replaces that folder and the
    link stays as it was. A link to nothing is refused."""
    if not out.is_symlink():
        return out
    target = Path(os.path.realpath(out))
    if not target.exists():
        raise UserError(
            f"export: output {out} is a symbolic link to {os.readlink(out)}, which does not exist; "
            "give a folder, or a link to one"
        )
    return check_path(target, "export: output")


def _check_output(out: Path, model_dir: Path, run_dir: Path | None, *, force: bool) -> None:
    """OUT may be new, an empty folder, or (with --force) an earlier export: never the working directory,
    the source, a folder holding either, or any other folder (`--force` replaces an export, nothing else)."""
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(
            f"export: output {out} is or contains the working directory; give a new folder, e.g. {out / 'export'}"
        )
    for source in filter(None, (model_dir, run_dir)):
        s = source.resolve()
        if resolved == s or resolved in s.parents:
            raise UserError(f"export: output {out} would replace the source {source}; choose another folder")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not (out / EXPORT_MARKER).is_file():
        raise UserError(
            f"export: output folder {out} is not empty and is not a previous export (no {EXPORT_MARKER}); "
            "choose a new or empty folder (--force replaces only an earlier export)"
        )
    if not force:
        raise UserError(f"export: output folder {out} holds an earlier export; use --force to replace it")


def _load_tokenizer_or_none(folder: Path, log):
    from lmdistill.models import load_tokenizer

    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        log(f"export: warning: no tokenizer in {folder}; the exported folder will have none")
        return None
    return load_tokenizer(str(folder))


def _adapter_base(adapter_dir: Path) -> str:
    try:
        spec = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = spec["base_model_name_or_path"]
    except (ValueError, KeyError, TypeError):
        base = None
    if not base:
        raise UserError(f"export: {adapter_dir / ADAPTER_CONFIG} does not name its base model")
    return str(base)


def _base_dtype(adapter_dir: Path) -> torch.dtype:
    """The dtype the adapter's base model is stored in (float32 when it does not say)."""
    from transformers import AutoConfig

    from lmdistill.models import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(_adapter_base(adapter_dir)))
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = DTYPES.get(stored)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def _load_adapter(adapter_dir: Path, log):
    """Load the base model named in adapter_config.json in float32, apply the adapter, merge it."""
    try:
        from peft import PeftModel
    except ImportError:
        raise UserError("exporting a LoRA adapter needs peft: pip install 'lmdistill[lora]'") from None
    from lmdistill.models import load_model

    base_name = _adapter_base(adapter_dir)
    base = load_model(base_name, dtype="float32")
    log(f"export: merging LoRA adapter {adapter_dir} into {base_name}")
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tokenizer = _load_tokenizer_or_none(adapter_dir, lambda _msg: None)
    if tokenizer is None:
        from lmdistill.models import resolve_model_path

        tokenizer = _load_tokenizer_or_none(Path(resolve_model_path(base_name)), log)
    return model, tokenizer


def _find_lmdistill_config(model_dir: Path, run_dir: Path | None) -> Path | None:
    for folder in filter(None, (model_dir, run_dir)):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    return None


def _drop_training_files(folder: Path) -> None:
    for name in TRAINING_ONLY_FILES:
        (folder / name).unlink(missing_ok=True)
    for pattern in TRAINING_ONLY_GLOBS:
        for path in folder.glob(pattern):
            path.unlink()


@torch.inference_mode()
def _timed_forward(model, inputs: list[torch.Tensor], repeats: int) -> tuple[list[torch.Tensor], float]:
    """Logits for each input and the median wall time of one pass over all inputs (after a warm-up)."""
    logits = [model(input_ids=ids, use_cache=False).logits[0].float() for ids in inputs]
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for ids in inputs:
            model(input_ids=ids, use_cache=False)
        times.append(time.perf_counter() - start)
    return logits, statistics.median(times)


def _state_mb(model) -> float:
    """Size of the model's state dict as torch.save writes it (int8 packed weights included)."""
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 2**20
