"""Make a student by shrinking the teacher: same architecture, fewer decoder layers.

The student keeps a subset of the teacher's decoder layers (evenly spaced by default, always
including the first and the last) and everything that is not a layer: embeddings, final norm and
output head. Its weights start as exact copies, so distillation starts from a sensible point.

Works for any Hugging Face decoder whose layers sit in one `nn.ModuleList` of length
`config.num_hidden_layers` (`model.layers` for Llama/Qwen/Mistral, `transformer.h` for GPT-2, ...).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from lmdistill.errors import UserError
from lmdistill.models.loading import count_parameters

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Config attributes holding one entry per layer; the student keeps the entries of its layers.
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers", "activation_sparsity_pattern", "layers_block_type")
#: Config attributes holding a list of layer indices; the student keeps (renumbered) kept layers.
LAYER_INDEX_CONFIG_KEYS = ("mlp_only_layers",)
#: Where the chosen teacher layers are recorded in the student's config.
TEACHER_LAYERS_ATTR = "lmdistill_teacher_layers"


def evenly_spaced_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """`num_student_layers` sorted, unique teacher layer indices, evenly spaced, first and last included.

    Rounds `linspace(0, L - 1, n)` half up, e.g. 30 -> 10 gives [0, 3, 6, 10, 13, 16, 19, 23, 26, 29].
    With one student layer, keeps layer 0.
    """
    total, n = int(num_teacher_layers), int(num_student_layers)
    if total <= 0:
        raise UserError(f"the teacher must have at least one layer (got {total})")
    if not 1 <= n <= total:
        raise UserError(f"the student needs between 1 and {total} layers (the teacher's count), got {n}")
    if n == 1:
        return [0]
    # index i -> round(i * (L - 1) / (n - 1)), half up, in exact integer arithmetic
    return [(2 * i * (total - 1) + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted name and the `nn.ModuleList` of the decoder layers (length `num_hidden_layers`)."""
    num = _num_layers(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num and name
    ]
    if not candidates:
        raise UserError(
            f"cannot shrink {type(model).__name__}: no list of {num} decoder layers found in the model"
        )
    # Several lists of the right length (rare): take the one holding the most parameters.
    return max(candidates, key=lambda item: count_parameters(item[1]))


def validate_layers(layers: Sequence[int], num_teacher_layers: int) -> list[int]:
    """Check an explicit list of teacher layers: integers in range, strictly increasing, unique."""
    chosen = list(layers)
    if not chosen:
        raise UserError("the list of teacher layers to keep is empty")
    previous = -1
    for position, index in enumerate(chosen):
        if isinstance(index, bool) or not isinstance(index, int):
            raise UserError(f"layer {index!r} (position {position}) is not an integer")
        if not 0 <= index < num_teacher_layers:
            raise UserError(
                f"layer {index} (position {position}) is out of range: the teacher has layers "
                f"0..{num_teacher_layers - 1}"
            )
        if index <= previous:
            what = "repeated" if index == previous else "not in increasing order"
            raise UserError(f"layer {index} (position {position}) is {what}; list layers sorted and unique")
        previous = index
    return chosen


def shrink_model(
    teacher: PreTrainedModel,
    num_layers: int | None = None,
    layers: Sequence[int] | None = None,
) -> PreTrainedModel:
    """A copy of `teacher` keeping only some decoder layers, ready to train.

    Give `num_layers` (evenly spaced layers are chosen) or an explicit `layers` list of teacher
    indices (or both, if they agree). The student has the teacher's class, dtype and device, a
    deep-copied config with `num_hidden_layers` (and per-layer lists such as `layer_types`) updated,
    weights copied from the chosen layers and from every non-layer module, all parameters
    trainable, and is in train mode. The chosen layers are recorded in
    `student.config.lmdistill_teacher_layers`.
    """
    total = _num_layers(teacher)
    if layers is not None:
        chosen = validate_layers(layers, total)
        if num_layers is not None and num_layers != len(chosen):
            raise UserError(f"num_layers={num_layers} but {len(chosen)} layers were listed: {chosen}")
    elif num_layers is not None:
        chosen = evenly_spaced_layers(total, num_layers)
    else:
        raise UserError("shrink_model needs num_layers or an explicit list of layers")

    prefix, _ = find_decoder_layers(teacher)
    config = _student_config(teacher.config, chosen, total)
    state = _student_state_dict(teacher.state_dict(), prefix, chosen)

    param = next(teacher.parameters())
    with torch.device(param.device):
        student = type(teacher)._from_config(config, dtype=param.dtype)
    _load_strict(student, state)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    student.requires_grad_(True)
    student.train()
    return student


def describe_sizes(teacher: nn.Module, student: nn.Module) -> str:
    """A short printable table of layer and parameter counts, and the student/teacher ratio."""
    rows = []
    for name, model in (("teacher", teacher), ("student", student)):
        rows.append((name, _num_layers(model), count_parameters(model)))
    ratio = rows[1][2] / rows[0][2] if rows[0][2] else float("nan")
    lines = [f"{'':8}{'layers':>8}{'parameters':>14}"]
    lines += [f"{name:8}{n:>8}{_human(p):>14}" for name, n, p in rows]
    lines.append(f"{'ratio':8}{rows[1][1] / max(rows[0][1], 1):>8.2f}{ratio:>13.2f}x")
    return "\n".join(lines)


def _num_layers(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    num = getattr(config, "num_hidden_layers", None)
    if not isinstance(num, int):
        raise UserError(f"cannot shrink {type(model).__name__}: its config has no num_hidden_layers")
    return num


def _student_config(config, chosen: list[int], total: int):
    """Deep-copy the teacher's config with the layer count and per-layer settings of the student."""
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):  # e.g. a GGUF-loaded teacher: weights are plain now
        del config.quantization_config
    config.num_hidden_layers = len(chosen)
    for key in PER_LAYER_CONFIG_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == total:
            setattr(config, key, type(values)(values[i] for i in chosen))
    for key in LAYER_INDEX_CONFIG_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)):
            kept = set(values)
            setattr(config, key, [j for j, i in enumerate(chosen) if i in kept])
    setattr(config, TEACHER_LAYERS_ATTR, list(chosen))
    return config


def _student_state_dict(state: dict[str, torch.Tensor], prefix: str, chosen: list[int]):
    """Keep non-layer entries; keep chosen layers renumbered `<prefix>.<t>.` -> `<prefix>.<s>.`."""
    renumber = {teacher_idx: student_idx for student_idx, teacher_idx in enumerate(chosen)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match is None:
            out[key] = value
        elif int(match.group(1)) in renumber:
            out[f"{prefix}.{renumber[int(match.group(1))]}.{match.group(2)}"] = value
    return out


def _load_strict(student: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state`; any missing or unexpected key (other than a tied weight) is a bug."""
    result = student.load_state_dict(state, strict=False)
    tied = set(_tied_keys(student))
    missing = [k for k in result.missing_keys if k not in tied]
    unexpected = [k for k in result.unexpected_keys if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"shrinking left weights unmatched: missing={missing} unexpected={unexpected}")


def _tied_keys(model: nn.Module) -> list[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys = list(tied.keys()) + list(tied.values()) if isinstance(tied, dict) else list(tied)
    return [k for k in keys if isinstance(k, str)]


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
