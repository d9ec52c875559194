"""Hint-based distillation: the student learns the teacher's intermediate representations.

Pieces, each pure and usable on its own (see the modules for shapes):
- `mapping`: which student layer learns from which teacher layer (`resolve_layer_map`);
- `projections`: phi, the learned maps to the teacher's width (`HintProjections`);
- `metrics`: per-token distances H (`mse`, `cosine`, `ln_mse`);
- `hidden`: the hidden-state hint loss (`hidden_state_loss`);
- `relations`: MiniLMv2 q/k/v self-relation transfer via forward hooks (`QKVCapture`, `relation_loss`);
- `attention_maps`: attention-probability KL for eager attention (`attention_map_kl`).

Layer i is the output of decoder layer i, `outputs.hidden_states[i + 1]`.
"""

from lmdistill.hints.attention_maps import attention_map_kl, layer_attentions
from lmdistill.hints.hidden import hidden_state_loss
from lmdistill.hints.mapping import (
    PROJECTIONS,
    STRATEGIES,
    format_layer_map,
    pair_key,
    projection_kind,
    resolve_layer_map,
    width_of,
)
from lmdistill.hints.metrics import HINT_METRICS, cosine, get_metric, ln_mse, mse
from lmdistill.hints.projections import HintProjections
from lmdistill.hints.relations import (
    QKVCapture,
    default_relation_heads,
    find_qkv,
    relation_kl,
    relation_loss,
)

__all__ = [
    "HINT_METRICS",
    "PROJECTIONS",
    "STRATEGIES",
    "HintProjections",
    "QKVCapture",
    "attention_map_kl",
    "cosine",
    "default_relation_heads",
    "find_qkv",
    "format_layer_map",
    "get_metric",
    "hidden_state_loss",
    "layer_attentions",
    "ln_mse",
    "mse",
    "pair_key",
    "projection_kind",
    "relation_kl",
    "relation_loss",
    "resolve_layer_map",
    "width_of",
]
