"""Attention-relation transfer (MiniLMv2): the student's q-q, k-k and v-v self-relations should match
the teacher's.

For a layer's query (key, value) projection output x [B, S, W], split into R "relation heads" of width
W / R, the relation of head r is softmax(x_r x_r^T / sqrt(W / R)) over earlier real tokens. Relations
are [S, S] whatever the widths and head counts, so students and teachers of any shape compare directly.

The projection outputs are captured with forward hooks on the q/k/v (or fused qkv) modules, so this
works with SDPA and flash attention, which never materialise attention weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

import torch
from torch import nn

from lmdistill.errors import UserError
from lmdistill.hints.mapping import pair_key
from lmdistill.losses import forward_kl
from lmdistill.models.shrink import find_decoder_layers

KINDS = ("q", "k", "v")
#: Module names (last dotted component) of separate projections, as in Llama, Qwen, Mistral, Gemma, ...
SEPARATE = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}
#: Module names of fused projections whose output is [q | k | v] along the last axis (Phi-3, GPT-2, MPT).
FUSED = ("qkv_proj", "c_attn", "query_key_value", "Wqkv")

QKVSpec = dict[str, tuple[nn.Module, slice | None]]


def _config(model: nn.Module):
    # DDP/FSDP wrap the model in `.module`; multimodal configs keep the decoder's sizes in a text config.
    while getattr(model, "config", None) is None and hasattr(model, "module"):
        model = model.module
    config = getattr(model, "config", None)
    if config is None:
        raise UserError(f"{type(model).__name__} has no config; relation hints need a Hugging Face model")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def qkv_slices(config) -> dict[str, slice]:
    """Where q, k and v sit in a fused projection's output (and so each one's width), from the config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    return {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}


def _out_width(module: nn.Module) -> int | None:
    # nn.Linear has out_features; GPT-2's Conv1D calls it nf.
    width = getattr(module, "out_features", None) or getattr(module, "nf", None)
    return width if isinstance(width, int) else None


def find_qkv(model: nn.Module, layer: int) -> QKVSpec:
    """The query, key and value projections of decoder layer `layer`, found by module name.

    Returns {"q": (module, slice | None), "k": ..., "v": ...}: the module whose output holds the
    projection, and the slice of its last axis to keep (None: the whole output). Separate `q_proj`,
    `k_proj`, `v_proj` modules are preferred; a fused `qkv_proj` / `c_attn` / `query_key_value` / `Wqkv`
    is split as [q | k | v] with q = num_attention_heads * head_dim and k, v = num_key_value_heads *
    head_dim each (from the config).

    Limitation: fused layouts that interleave q, k and v per head (GPT-NeoX, Bloom, Falcon) are split as if
    contiguous; the relations are then between mixed slices, consistent between two such models but not
    MiniLMv2's q/k/v relations.
    """
    config = _config(model)
    num_layers = config.num_hidden_layers
    if not 0 <= layer < num_layers:
        raise UserError(
            f"{type(model).__name__}: layer {layer} does not exist (it has {num_layers} layers: 0..{num_layers - 1})"
        )
    block = find_decoder_layers(model)[1][layer]
    found: QKVSpec = {}
    fused: nn.Module | None = None
    # named_modules lists modules in registration order: the first match is the self-attention's
    # (a later cross-attention or a LoRA adapter's inner layers are not taken).
    for name, module in block.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in SEPARATE and SEPARATE[last] not in found:
            found[SEPARATE[last]] = (module, None)
        elif last in FUSED and fused is None:
            fused = module
    if len(found) == len(KINDS):
        return found
    if fused is not None:
        slices = qkv_slices(config)
        width = _out_width(fused)
        if width is not None and width != slices["v"].stop:
            raise UserError(
                f"{type(model).__name__}: the fused projection has {width} outputs, not the "
                f"{slices['v'].stop} that q, k and v need from the config; relation hints cannot split it"
            )
        return {kind: (fused, slices[kind]) for kind in KINDS}
    raise UserError(
        f"{type(model).__name__}: no query/key/value projections (q_proj, k_proj, v_proj or a fused "
        f"{', '.join(FUSED)}) found in decoder layer {layer}; relation hints do not support this model"
    )


class QKVCapture:
    """Context manager recording the q/k/v projection outputs of some decoder layers during forwards.

        with QKVCapture(model, [1, 3]) as cap:
            model(input_ids=..., attention_mask=...)
        cap.outputs[3]["q"]  # [B, S, W_q], the last forward's

    Outputs are references to what the hooks see (slices of a fused output are views), not copies; for
    the student they carry the autograd graph. Hooks are removed on exit, even on an exception; the
    outputs stay readable until `clear()`. The object can be entered again for the next step.

    With gradient checkpointing, use the non-reentrant kind: reentrant checkpointing runs the first
    forward without grad, so captured student tensors would carry no gradient.
    """

    def __init__(self, model: nn.Module, layers: Iterable[int], kinds: Sequence[str] = KINDS) -> None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; choose among {KINDS}")
        self.layers = sorted(set(layers))
        self.kinds = tuple(kinds)
        # Look the modules up now, so an unsupported model fails before any forward.
        self.specs = {layer: find_qkv(model, layer) for layer in self.layers}
        self.outputs: dict[int, dict[str, torch.Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, layer: int, wanted: list[tuple[str, slice | None]]):
        def hook(module: nn.Module, args: tuple, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            store = self.outputs.setdefault(layer, {})
            for kind, part in wanted:
                store[kind] = out if part is None else out[..., part]

        return hook

    def __enter__(self) -> QKVCapture:
        try:
            for layer, spec in self.specs.items():
                # A fused module serves several kinds: one hook per module, storing each kind's slice.
                by_module: dict[int, tuple[nn.Module, list[tuple[str, slice | None]]]] = {}
                for kind in self.kinds:
                    module, part = spec[kind]
                    by_module.setdefault(id(module), (module, []))[1].append((kind, part))
                for module, wanted in by_module.values():
                    self._handles.append(module.register_forward_hook(self._hook(layer, wanted)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this capture registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def clear(self) -> None:
        """Drop the stored outputs (and with them the graph they keep alive) before the next step."""
        self.outputs = {}


def default_relation_heads(widths: Iterable[int], max_heads: int = 12) -> int:
    """The largest R <= max_heads dividing every width (1 always does): [576, 192, 384, 128] -> 8."""
    widths = list(widths)
    return max(r for r in range(1, max_heads + 1) if all(w % r == 0 for w in widths))


def _allowed_keys(attention_mask: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """bool [B, S, S]: query i may attend key j <= i when j is a real token (all are, without a mask)."""
    seq = mask.shape[1]
    device = mask.device
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    real = torch.ones_like(mask, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    real = real[:, None, :]
    # The diagonal is always allowed: a padding query then still has one key, so its softmax row is finite
    # (an all -inf row would put NaN into the gradient even though the row is never counted).
    diagonal = torch.eye(seq, dtype=torch.bool, device=device)
    return causal & (real | diagonal)


def _relation_logits(x: torch.Tensor, heads: int, allowed: torch.Tensor) -> torch.Tensor:
    """[B, S, W] -> masked relation logits [B, R, S, S] (-inf where a key is not allowed)."""
    batch, seq, width = x.shape
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} relation heads")
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    head_width = width // heads
    x = x.reshape(batch, seq, heads, head_width).transpose(1, 2)  # [B, R, S, W/R]
    scores = x @ x.transpose(-1, -2) / math.sqrt(head_width)
    return scores.masked_fill(~allowed[:, None], float("-inf"))


def relation_kl(
    student_x: torch.Tensor,
    teacher_x: torch.Tensor,
    num_relation_heads: int,
    attention_mask: torch.Tensor | None,
    mask: torch.Tensor,
) -> torch.Tensor:
    """KL(teacher relation ‖ student relation), summed over counted query rows, averaged over relation heads.

    Args:
        student_x: [B, S, W_s]; teacher_x: [B, S, W_t] (detached here). Both widths must be divisible by
            `num_relation_heads`.
        attention_mask: [B, S], 1 for real tokens: padding keys get no relation weight (None: no padding).
        mask: bool [B, S], the query rows that count.

    Returns a float32 (or wider) scalar. Memory: [B, R, S, S] relation logits per model.
    """
    if student_x.shape[:2] != mask.shape or teacher_x.shape[:2] != mask.shape:
        raise ValueError(
            f"relation_kl: inputs {tuple(student_x.shape)} (student) and {tuple(teacher_x.shape)} (teacher) "
            f"do not match the mask {tuple(mask.shape)} in [batch, seq]"
        )
    allowed = _allowed_keys(attention_mask, mask)
    s_logits = _relation_logits(student_x, num_relation_heads, allowed)
    t_logits = _relation_logits(teacher_x.detach(), num_relation_heads, allowed)
    rows = mask.bool()[:, None, :].expand(-1, num_relation_heads, -1)  # [B, R, S]
    # forward_kl zeroes terms where the teacher's relation is 0 (the -inf keys, shared by both models).
    # Mean over relation heads (as MiniLMv2): R is chosen from the widths, so a sum would make the
    # weight of this term depend on the models.
    return forward_kl(s_logits, t_logits, mask=rows, reduction="none").sum() / num_relation_heads


def _outputs(capture) -> Mapping[int, Mapping[str, torch.Tensor]]:
    return getattr(capture, "outputs", capture)


def relation_loss(
    student_cap: QKVCapture | Mapping[int, Mapping[str, torch.Tensor]],
    teacher_cap: QKVCapture | Mapping[int, Mapping[str, torch.Tensor]],
    pairs: Sequence[tuple[int, int]],
    num_relation_heads: int,
    attention_mask: torch.Tensor | None,
    mask: torch.Tensor,
    kinds: Sequence[str] = KINDS,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Relation KL over layer pairs and kinds (q-q, k-k, v-v), averaged over len(pairs) * len(kinds).

    Captures are `QKVCapture`s (or their `outputs` dicts) after both models ran on the same batch.
    attention_mask [B, S] (1 = real token), mask bool [B, S] (query rows that count).

    Returns (total, parts): total is a scalar summed over counted rows (divide by the token count);
    parts maps "s3_t9_q" to each term's detached sum.
    """
    if len(pairs) == 0 or len(kinds) == 0:
        raise ValueError("relation_loss needs at least one layer pair and one kind")
    student_out, teacher_out = _outputs(student_cap), _outputs(teacher_cap)
    parts: dict[str, torch.Tensor] = {}
    total: torch.Tensor | None = None
    for s, t in pairs:
        for kind in kinds:
            try:
                sx, tx = student_out[s][kind], teacher_out[t][kind]
            except KeyError:
                raise ValueError(
                    f"no captured {kind!r} for pair [{s}, {t}]: run both models inside QKVCapture contexts "
                    "that include these layers and kinds"
                ) from None
            term = relation_kl(sx, tx, num_relation_heads, attention_mask, mask)
            parts[f"{pair_key(s, t)}_{kind}"] = term.detach()
            total = term if total is None else total + term
    return total / (len(pairs) * len(kinds)), parts
