"""Make a student by shrinking the teacher: same architecture, fewer decoder layers.

The student keeps a subset of the teacher's decoder layers (evenly spaced by default, always
including the first and the last) and everything that is not a layer: embeddings, final norm and
output head. Its weights start as exact copies, so distillation starts from a sensible point.

Works for any Hugging Face decoder whose layers sit in one `nn.ModuleList` of length
`config.num_hidden_layers` (`model.layers` for Llama/Qwen/Mistral, `transformer.h` for GPT-2, ...).

The student can also be narrower (hidden size, attention heads, KV heads, MLP width), for
Llama-like decoders with separate q/k/v and gate/up projections. Its weights are then the teacher's
truncated: every tensor is the leading slice of the teacher's, which keeps whole attention heads
(projections are head-major), the first hidden channels and the first MLP units. The head size is
always the teacher's.
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
#: The width options of `shrink_model`, named as the config attributes they set.
WIDTH_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")


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
        raise UserError(f"{type(model).__name__}: no list of {num} decoder layers found in the model")
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


def narrow_defaults(
    teacher_config,
    hidden_size: int | None = None,
    *,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
) -> dict[str, int]:
    """The student's widths: the given ones, checked, and defaults for the others.

    Returns `hidden_size`, `num_attention_heads`, `num_key_value_heads`, `intermediate_size` and
    `head_dim` (always the teacher's). Defaults: the teacher's hidden size; heads
    `hidden_size // head_dim` (it must divide), or the teacher's heads when the hidden size is the
    teacher's; KV heads the largest divisor of the heads that is at most the teacher's KV heads;
    MLP width the teacher's scaled by `hidden_size / teacher hidden size`, rounded to a multiple of 8
    (and at most the teacher's). Each invalid choice raises a `UserError` saying which and why.
    """
    given = {
        "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "intermediate_size": intermediate_size,
    }
    for key, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise UserError(f"{key} must be a positive integer, got {value!r}")
    teacher = _teacher_widths(teacher_config)
    head_dim = teacher["head_dim"]

    hidden = teacher["hidden_size"] if hidden_size is None else hidden_size
    if hidden > teacher["hidden_size"]:
        raise UserError(
            f"hidden_size={hidden} is larger than the teacher's ({teacher['hidden_size']}); "
            "a student can only be narrower"
        )

    if num_attention_heads is not None:
        heads = num_attention_heads
    elif hidden == teacher["hidden_size"]:
        heads = teacher["num_attention_heads"]
    elif hidden % head_dim:
        raise UserError(
            f"hidden_size={hidden} is not a multiple of the teacher's head size ({head_dim}), so the "
            "number of attention heads cannot be derived; choose a multiple or give num_attention_heads"
        )
    else:
        heads = hidden // head_dim
    if heads > teacher["num_attention_heads"]:
        raise UserError(
            f"num_attention_heads={heads} is more than the teacher's ({teacher['num_attention_heads']})"
            + ("" if num_attention_heads is not None else f" (derived from hidden_size={hidden})")
        )

    if num_key_value_heads is not None:
        kv_heads = num_key_value_heads
    else:
        kv_heads = max(
            d for d in range(1, heads + 1) if heads % d == 0 and d <= teacher["num_key_value_heads"]
        )
    if kv_heads > teacher["num_key_value_heads"]:
        raise UserError(
            f"num_key_value_heads={kv_heads} is more than the teacher's ({teacher['num_key_value_heads']})"
        )
    if heads % kv_heads:
        raise UserError(
            f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}; "
            "each key/value head must serve the same number of query heads"
        )
    if not teacher["has_head_dim"] and hidden != heads * head_dim:
        raise UserError(
            f"{type(teacher_config).__name__} has no head_dim setting: its head size is hidden_size / "
            f"num_attention_heads, which must stay the teacher's {head_dim}, but {hidden} / {heads} "
            f"is not; use hidden_size={heads * head_dim} or num_attention_heads={hidden // head_dim}"
        )

    if intermediate_size is not None:
        intermediate = intermediate_size
    elif hidden == teacher["hidden_size"]:
        intermediate = teacher["intermediate_size"]
    else:  # nearest multiple of 8 (half up) of I * h / H, exact integers; at least 8, at most the teacher's
        scaled = (2 * teacher["intermediate_size"] * hidden + 8 * teacher["hidden_size"]) // (
            16 * teacher["hidden_size"]
        )
        intermediate = min(max(8, 8 * scaled), teacher["intermediate_size"])
    if intermediate > teacher["intermediate_size"]:
        raise UserError(
            f"intermediate_size={intermediate} is larger than the teacher's ({teacher['intermediate_size']})"
        )
    return {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "head_dim": head_dim,
    }


def shrink_model(
    teacher: PreTrainedModel,
    num_layers: int | None = None,
    layers: Sequence[int] | None = None,
    *,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
) -> PreTrainedModel:
    """A copy of `teacher` keeping only some decoder layers, optionally narrower, ready to train.

    Give `num_layers` (evenly spaced layers are chosen) or an explicit `layers` list of teacher
    indices (or both, if they agree). The student has the teacher's class, dtype and device, a
    deep-copied config with `num_hidden_layers` (and per-layer lists such as `layer_types`) updated,
    weights copied from the chosen layers and from every non-layer module, all parameters
    trainable, and is in train mode. The chosen layers are recorded in
    `student.config.lmdistill_teacher_layers`.

    Width options (any of `hidden_size`, `num_attention_heads`, `num_key_value_heads`,
    `intermediate_size`) make the student narrower; the others get the defaults of
    `narrow_defaults`, the head size stays the teacher's, and the sizes are set in the student's
    config. Every student tensor then starts as the leading slice of the teacher's (truncated
    teacher weights). Models whose weights do not split that way (fused q/k/v or gate/up
    projections, e.g. GPT-2 or Phi-3) raise a `UserError`.
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

    widths = None
    if any(v is not None for v in (hidden_size, num_attention_heads, num_key_value_heads, intermediate_size)):
        widths = narrow_defaults(
            teacher.config,
            hidden_size,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            intermediate_size=intermediate_size,
        )

    prefix, _ = find_decoder_layers(teacher)
    config = _student_config(teacher.config, chosen, total)
    if widths is not None:
        _set_widths(config, widths)
    state = _student_state_dict(teacher.state_dict(), prefix, chosen)

    param = next(teacher.parameters())
    with torch.device(param.device):
        student = type(teacher)._from_config(config, dtype=param.dtype)
    if widths is not None:
        state = _truncate_state_dict(state, student, _teacher_widths(teacher.config), widths)
    _load_strict(student, state)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    student.requires_grad_(True)
    student.train()
    return student


def describe_sizes(teacher: nn.Module, student: nn.Module) -> str:
    """A short printable table of layer and parameter counts, and the student/teacher ratio.

    When the hidden sizes differ (a narrowed student), a "hidden" column shows them too.
    """
    rows = []
    for name, model in (("teacher", teacher), ("student", student)):
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        rows.append((name, _num_layers(model), hidden, count_parameters(model)))
    (_, t_layers, t_hidden, t_params), (_, s_layers, s_hidden, s_params) = rows
    show_hidden = isinstance(t_hidden, int) and isinstance(s_hidden, int) and t_hidden != s_hidden
    ratio = s_params / t_params if t_params else float("nan")

    def line(name: str, layers: str, hidden: str, params: str) -> str:
        return f"{name:8}{layers:>8}" + (f"{hidden:>8}" if show_hidden else "") + f"{params:>14}"

    lines = [line("", "layers", "hidden", "parameters")]
    lines += [line(name, str(n), str(h), _human(p)) for name, n, h, p in rows]
    hidden_ratio = f"{s_hidden / t_hidden:.2f}" if show_hidden else ""
    lines.append(line("ratio", f"{s_layers / max(t_layers, 1):.2f}", hidden_ratio, f"{ratio:.2f}x"))
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


def _teacher_widths(config) -> dict:
    """The teacher's sizes that width options change, or a `UserError` if the model has none of them."""
    name = type(config).__name__
    widths = {}
    for key in WIDTH_KEYS:
        value = getattr(config, key, None)
        if key == "num_key_value_heads" and value is None and "num_key_value_heads" in _config_fields(config):
            value = getattr(config, "num_attention_heads", None)  # None means one KV head per query head
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(
                f"cannot make a narrower {name} student: its config has no {key}; width options "
                "(hidden_size, num_attention_heads, num_key_value_heads, intermediate_size) need a "
                "Llama-like decoder with separate query/key/value and MLP projections"
            )
        widths[key] = value
    head_dim = getattr(config, "head_dim", None)
    widths["has_head_dim"] = "head_dim" in _config_fields(config)
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
        head_dim = widths["hidden_size"] // widths["num_attention_heads"]
    widths["head_dim"] = head_dim
    return widths


def _config_fields(config) -> set[str]:
    """The attributes a config really has (its own and those the class maps to another name)."""
    fields = set(vars(config))
    fields |= set(getattr(config, "__dataclass_fields__", {}) or {})
    fields |= set(getattr(config, "attribute_map", {}) or {})
    return fields


def _set_widths(config, widths: dict[str, int]) -> None:
    """Set the student's sizes (and the teacher's head size, where the config has one) and validate."""
    for key in WIDTH_KEYS:
        setattr(config, key, widths[key])
    if "head_dim" in _config_fields(config):
        config.head_dim = widths["head_dim"]
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except Exception as error:  # the config class's own rules (e.g. hidden size % heads)
            raise UserError(
                f"{type(config).__name__} rejects the student's sizes "
                f"({', '.join(f'{k}={widths[k]}' for k in WIDTH_KEYS)}): {error}"
            ) from error


def _truncate_state_dict(
    state: dict[str, torch.Tensor], student: nn.Module, teacher_widths: dict, student_widths: dict
) -> dict[str, torch.Tensor]:
    """Cut every teacher tensor to the student's shape by keeping its leading slice.

    Only dimensions that are one whole width may shrink: the hidden size, the query or key/value
    projection size (heads x head size), the head counts or the MLP width, each going from the
    teacher's to the student's value. Anything else (e.g. a fused q/k/v dimension) is a `UserError`.
    """
    hd = teacher_widths["head_dim"]

    def sizes(w: dict) -> list[int]:
        return [
            w["hidden_size"],
            w["num_attention_heads"] * hd,
            w["num_key_value_heads"] * hd,
            w["num_attention_heads"],
            w["num_key_value_heads"],
            w["intermediate_size"],
        ]

    allowed: dict[int, set[int]] = {}
    for t, s in zip(sizes(teacher_widths), sizes(student_widths), strict=True):
        allowed.setdefault(t, set()).add(s)
    shapes = {key: tuple(value.shape) for key, value in student.state_dict().items()}
    name = type(student).__name__
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        shape = shapes.get(key)
        if shape is None or shape == tuple(value.shape):
            out[key] = value  # same shape, or a key _load_strict reports
            continue
        if len(shape) != value.dim():
            raise UserError(
                f"cannot narrow {name}: {key} has shape {list(value.shape)} in the teacher but {list(shape)} in the student"
            )
        for t, s in zip(value.shape, shape, strict=True):
            if t == s:
                continue
            if s > t:
                raise UserError(
                    f"cannot narrow {name}: {key} would be larger in the student ({list(shape)}) than "
                    f"in the teacher ({list(value.shape)})"
                )
            if s not in allowed.get(t, ()):
                raise UserError(
                    f"cannot narrow {name}: {key} (teacher {list(value.shape)}, student {list(shape)}) "
                    "has a dimension that is not one hidden/heads/MLP width, e.g. fused q/k/v or "
                    "gate/up projections, so truncating it would mix up weights"
                )
        out[key] = value[tuple(slice(0, n) for n in shape)]
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
