"""Load tokenizers and causal language models by short name, local folder or Hugging Face hub id.

Every "could not find this model" failure becomes one `UserError` with a readable message, so the CLI
can print it instead of a traceback.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from lmdistill.errors import UserError
from lmdistill.models.embedded import resolve_model_path, short_names
from lmdistill.models.quantize import QUANTIZATION_FILE, apply_quantization

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Accepted dtype names; "auto" keeps the dtype stored with the checkpoint.
DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map a dtype name ("float32", "bfloat16", "float16", "auto"; also fp32/bf16/fp16) to torch's."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPES)}")
    return DTYPES[key]


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """Map "cpu", "cuda", "cuda:N", "mps" or "auto" (cuda if available, else cpu) to a torch device."""
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    return resolved


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a short name, local folder or hub id."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _not_found(name_or_path, path, exc) from exc


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    quantized: bool = False,
    meta: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a causal LM (short name, local folder or hub id) in `dtype` onto `device`.

    quantized: apply the int8 quantisation an exported folder asks for (`lmdistill export
    --quantize`), for inference on CPU; off for training, which needs float Linear layers.
    meta: build the architecture on the meta device from the model's config alone: no weights are
    read and no memory taken (`device` is ignored); for processes that get their FSDP2 shards from
    process 0 (`lmdistill.models.sharding.shard_from_rank0`).
    Extra keyword arguments go to `AutoModelForCausalLM.from_pretrained`.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    path = resolve_model_path(name_or_path)
    if meta:
        return _meta_model(name_or_path, path, torch_dtype)
    target = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(name_or_path, path, exc) from exc
    if quantized and os.path.isfile(os.path.join(path, QUANTIZATION_FILE)):
        if target.type != "cpu":
            raise UserError(f"{path} is int8-dynamic quantised (lmdistill export): it runs on cpu only")
        return apply_quantization(model, path)
    return model.to(target)


def _meta_model(name: str | os.PathLike[str], path: str, dtype: torch.dtype | str) -> PreTrainedModel:
    """The model `from_pretrained(path, dtype=dtype)` would give, built from its config.json on the meta
    device: same classes, shapes, dtypes and ties, no weights ("auto": the dtype its config records)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _not_found(name, path, exc) from exc
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def load_teacher(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    quantized: bool = False,
    meta: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model as a frozen teacher: no parameter requires grad, and it is in eval mode.

    meta: the architecture alone, on the meta device (see `load_model`)."""
    model = load_model(name_or_path, dtype=dtype, device=device, quantized=quantized, meta=meta, **kwargs)
    model.requires_grad_(False)
    model.eval()
    return model


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of unique parameters; tied weights (e.g. embeddings shared with the head) count once."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for param in model.parameters():  # already skips repeated Parameter objects
        if trainable_only and not param.requires_grad:
            continue
        key = (id(param), 0, ()) if param.device.type == "meta" else _storage_key(param)
        if key in seen:
            continue
        seen.add(key)
        total += param.numel()
    if not trainable_only:
        # int8-quantised Linear layers keep their weights in packed buffers, not Parameters
        for module in model.modules():
            if hasattr(module, "_packed_params") and isinstance(getattr(module, "in_features", None), int):
                total += module.in_features * module.out_features
                bias = module.bias() if callable(getattr(module, "bias", None)) else None
                total += 0 if bias is None else bias.numel()
    return total


def _storage_key(param: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    """Identify a tensor by its memory, so distinct Parameters sharing storage count once."""
    return (param.untyped_storage().data_ptr(), param.storage_offset(), tuple(param.shape))


def _not_found(name: str | os.PathLike[str], path: str, exc: BaseException) -> UserError:
    """Turn a loading failure into a UserError; re-raise ValueErrors that are not about finding it."""
    from huggingface_hub.errors import HFValidationError

    if isinstance(exc, ValueError) and not isinstance(exc, HFValidationError) and not os.path.isdir(path):
        raise exc
    reason = "not a valid hub id either" if isinstance(exc, HFValidationError) else _short_reason(exc)
    if os.path.isdir(path):
        return UserError(f"could not load model folder {path}: {reason}")
    return UserError(
        f"model not found: {name} (not a local folder, not a short name [{', '.join(short_names())}], "
        f"and could not be loaded from the Hugging Face hub: {reason})"
    )


def _short_reason(exc: BaseException, limit: int = 400) -> str:
    """The exception's message on one line (every line of it: transformers' messages often end their first
    line with "from one of:" and list the causes below), cut at a word past `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
