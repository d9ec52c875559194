"""Model-level helpers every driver shares: final hidden states, wrappers, a cheap identity hash.

They live here, below training, capture and evaluation, so every dependency points down.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch


def forward_states(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, attentions: bool = False
):
    """Run a causal LM for its hidden states (and attention maps if asked), not its logits.

    Runs the full model (so DDP/FSDP wrappers see a forward) but asks for the logits of the last
    position only. `out.hidden_states[i + 1]` is decoder layer i's output; `hidden_states[-1]` is the
    input of the head (after the final norm) in transformers 5.
    """
    kwargs = {"output_hidden_states": True, "use_cache": False}
    if attentions:
        kwargs["output_attentions"] = True
    if "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters:
        kwargs["logits_to_keep"] = 1
    return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def final_hidden(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[B, S] ids -> [B, S, H] hidden states that the model's head turns into logits.

    An unwrapped model runs its decoder (`get_decoder()`) alone, so no intermediate layer's states
    are returned and kept; a wrapped one (DDP, peft, FSDP2: its root unit gathers the embeddings in its
    own forward) goes through its own forward.
    """
    plain = unwrap(model) is model and not _is_fsdp2(model)
    decoder = model.get_decoder() if plain and hasattr(model, "get_decoder") else None
    if decoder is not None and decoder is not model:
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return forward_states(model, input_ids, attention_mask).hidden_states[-1]


def _is_fsdp2(model: torch.nn.Module) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def is_peft(model: torch.nn.Module) -> bool:
    """A peft model (adapters around a base model that `get_base_model()` returns)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DDP/FSDP (`.module`) and peft (`get_base_model()`) wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def weights_fingerprint(model) -> str:
    """A short hash of a model's identity: its config, dtype, and (for a local folder) the weight
    files' names, sizes and modification times. Cheap: no weights are read."""
    h = hashlib.sha256()
    h.update(model.config.to_json_string(use_diff=False).encode())
    h.update(str(next(model.parameters()).dtype).encode())
    folder = Path(str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")))
    if folder.is_dir():
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
