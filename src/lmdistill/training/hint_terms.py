"""What hint-based KD adds to a training step, resolved once from a `HintConfig` and two models.

`HintTerms` holds the resolved layer pairs, the learned projections phi, and computes three sums
over the step's target positions (the same positions, and so the same token count, as the logits
loss): hidden-state matching, MiniLMv2 q/k/v relations, attention-map KL. Each is weighted by its
own config weight; the trainer divides by the target-token count like every other term.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmdistill.config import HintConfig
from lmdistill.errors import UserError
from lmdistill.hints import (
    HintProjections,
    QKVCapture,
    attention_map_kl,
    default_relation_heads,
    format_layer_map,
    hidden_state_loss,
    layer_attentions,
    relation_loss,
    resolve_layer_map,
)
from lmdistill.hints.relations import qkv_slices
from lmdistill.io import atomic_write

PROJECTIONS_FILE = "hint_projections.safetensors"


def _qkv_widths(config) -> list[int]:
    return [sl.stop - sl.start for sl in qkv_slices(config).values()]


class HintTerms:
    """Resolved hint settings for one (student, teacher) pair; see the module docstring."""

    def __init__(self, cfg: HintConfig, student: torch.nn.Module, teacher: torch.nn.Module, log=print):
        self.cfg = cfg
        s_cfg, t_cfg = student.config, teacher.config
        n_s, n_t = s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
        copied = getattr(s_cfg, "lmdistill_teacher_layers", None)

        def resolve(strategy, weight):
            return resolve_layer_map(strategy, n_s, n_t, copied_layers=copied) if weight else []

        self.pairs = resolve(cfg.layers, cfg.hidden_weight)
        self.relation_pairs = resolve(cfg.relation_layers, cfg.relation_weight)
        self.attention_pairs = resolve(cfg.attention_layers, cfg.attention_weight)
        self.projections = None
        if self.pairs:
            self.projections = HintProjections(
                self.pairs, s_cfg.hidden_size, t_cfg.hidden_size, cfg.projection
            )
            self.projections.to(next(student.parameters()).device)
            log("hidden-state hints (" + cfg.metric + "):")
            log(format_layer_map(self.pairs, s_cfg.hidden_size, t_cfg.hidden_size, cfg.projection))
        self.relation_heads = 0
        if self.relation_pairs:
            self.relation_heads = cfg.relation_heads or default_relation_heads(
                _qkv_widths(s_cfg) + _qkv_widths(t_cfg)
            )
            log(
                f"attention relations (q-q, k-k, v-v; {self.relation_heads} relation heads): {self.relation_pairs}"
            )
        self._models = (student, teacher)
        self._restore_attention: list[tuple[torch.nn.Module, str]] = []
        if self.attention_pairs:
            for model in self._models:
                if not hasattr(model, "set_attn_implementation"):
                    raise UserError(
                        f"{type(model).__name__} cannot switch to eager attention for attention maps"
                    )
            log(f"attention maps (KL per head, eager attention): {self.attention_pairs}")

    def activate(self) -> None:
        """Switch both models to eager attention when attention maps are needed (see `restore`)."""
        if not self.attention_pairs or self._restore_attention:
            return
        for model in self._models:
            previous = getattr(model.config, "_attn_implementation", None)
            if previous and previous != "eager":
                self._restore_attention.append((model, previous))
            model.set_attn_implementation("eager")

    def restore(self) -> None:
        """Put back the attention implementation each model had before attention-map hints."""
        for model, previous in self._restore_attention:
            model.set_attn_implementation(previous)
        self._restore_attention = []

    @property
    def needs_attentions(self) -> bool:
        return bool(self.attention_pairs)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.projections.parameters()) if self.projections is not None else []

    def capture(self, model: torch.nn.Module, side: str):
        """Forward hooks on q/k/v of the relation layers (removed on exit), or a no-op."""
        if not self.relation_pairs:
            return contextlib.nullcontext(None)
        layers = sorted({p[0] if side == "student" else p[1] for p in self.relation_pairs})
        return QKVCapture(model, layers)

    def sums(self, s_out, t_out, s_cap, t_cap, attention_mask, positions) -> dict[str, torch.Tensor]:
        """Unweighted sums over the counted positions ([B, S] bool), one scalar per enabled term."""
        out = {}
        if self.pairs:
            out["hidden"], _ = hidden_state_loss(
                s_out.hidden_states,
                t_out.hidden_states,
                self.pairs,
                self.projections,
                self.cfg.metric,
                positions,
            )
        if self.relation_pairs:
            out["relation"], _ = relation_loss(
                s_cap, t_cap, self.relation_pairs, self.relation_heads, attention_mask, positions
            )
        if self.attention_pairs:
            kls = [
                attention_map_kl(layer_attentions(s_out, s), layer_attentions(t_out, t), positions)
                for s, t in self.attention_pairs
            ]
            out["attention"] = torch.stack(kls).mean()
        return out

    def weights(self) -> dict[str, float]:
        c = self.cfg
        return {"hidden": c.hidden_weight, "relation": c.relation_weight, "attention": c.attention_weight}

    def save(self, folder: str | Path) -> None:
        """The projections' weights, apart from the student (they are not part of the exported model)."""
        if self.projections is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
            atomic_write(Path(folder) / PROJECTIONS_FILE, lambda tmp: save_file(state, tmp))

    def load(self, folder: str | Path) -> None:
        if self.projections is None:
            return
        path = Path(folder) / PROJECTIONS_FILE
        if not path.is_file():
            raise UserError(
                f"{folder} holds no {PROJECTIONS_FILE}: it was not written by a run with these hints"
            )
        state = load_file(str(path))
        try:
            self.projections.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{path}: projections do not match this run's hint layers ({e})") from None
