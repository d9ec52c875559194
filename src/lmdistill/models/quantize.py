"""Dynamic int8 quantisation of a model's Linear layers, as an exported folder asks for it.

`lmdistill export --quantize int8-dynamic` keeps float weights (Hugging Face cannot store dynamically
quantised modules) and writes `lmdistill_quantization.json` beside them; the loader (`load_model(...,
quantized=True)`) and `lmdistill.export.load_exported` read that file and quantise on load. The
machinery lives here, below both, so the loader never reaches up into the export command.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from lmdistill.errors import UserError

#: Written next to the weights when the folder should be quantised on load.
QUANTIZATION_FILE = "lmdistill_quantization.json"
QUANTIZE_METHODS = ("int8-dynamic",)


def check_quantize(quantize: str | None) -> str | None:
    """`quantize` unchanged when it is None or a known method; otherwise a UserError naming the known ones."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE_METHODS:
        raise UserError(f"unknown quantisation {quantize!r}; use one of: {', '.join(QUANTIZE_METHODS)}")
    return quantize


def read_quantization(path: str | os.PathLike) -> str | None:
    """The quantisation method recorded in a folder's `lmdistill_quantization.json`, or None."""
    file = Path(path) / QUANTIZATION_FILE
    if not file.is_file():
        return None
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
        method = spec["method"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{file}: not a valid quantisation file ({exc})") from None
    if method not in QUANTIZE_METHODS or spec.get("modules", "Linear") != "Linear":
        raise UserError(f"{file}: unsupported quantisation {spec}; this lmdistill knows {QUANTIZE_METHODS}")
    return method


def apply_quantization(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Quantise `model` as its folder's `lmdistill_quantization.json` says (unchanged when there is none)."""
    method = read_quantization(path)
    return model if method is None else quantize_model(model.float().cpu().eval(), method)


def quantize_model(
    model: torch.nn.Module,
    method: str = "int8-dynamic",
    *,
    inplace: bool = True,
    keep_float: tuple[str, ...] = (),
) -> torch.nn.Module:
    """Dynamic int8 quantisation of every nn.Linear: int8 weights (one scale per output channel),
    activations quantised on the fly per batch; runs on CPU. `keep_float`: Linear layers whose
    qualified name ends with one of these suffixes stay in float (e.g. ("down_proj",))."""
    check_quantize(method)
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # torch 2.13 announces on every call that torch.ao.quantization and quantised tensors are deprecated
    # (successor: torchao); the call itself works, so keep the output readable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        # per-channel int8 weights: same speed and size as per-tensor, smaller logit error on real models
        spec: dict = {torch.nn.Linear: per_channel_dynamic_qconfig}
        if keep_float:
            spec = {
                name: per_channel_dynamic_qconfig
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and not name.endswith(tuple(keep_float))
            }
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=inplace)
