"""Sending the student's current weights to its vLLM server, through a folder both can read.

- `ReloadSync` (full students): every weight into `sync_dir/step-N/model.safetensors` (`write_untied`),
  then the workers' in-place `reload_weights(weights_path=...)` through vLLM's dev-mode
  `/collective_rpc`, then `/reset_prefix_cache`. Tried on vLLM's CPU build (0.32): a 2-layer SmolLM2
  student reloads in about 0.2 s. Requests keep the served model's name.

  Tied embeddings: vLLM 0.32's in-place reload loads the embedding and puts the LM head's old tensor
  back ("ParallelLMHead: Failed to load weights" in its log), so a server started on a tied student
  samples with a stale head after the first change (found here: the log-prob check failed by 0.27
  nats/token). The server must therefore serve an untied copy of the student (`tie_word_embeddings:
  false`, `lm_head.weight` its own tensor, equal to the embedding): `lmdistill export STUDENT OUT
  --untie-embeddings` (`write_server_folder` here) writes one, and every sync writes both tensors.
- `LoraSync` (LoRA students): the peft adapter alone into `sync_dir/step-N`, loaded under a new name
  (`<model>-<run token>-step-N`) through `/v1/load_lora_adapter`, the previous adapter unloaded; requests then name
  the new adapter. A new name per sync gives the adapter a new LoRA id, so no prefix-cache block computed
  with the previous adapter is reused (vLLM warns that reloading one name in place reuses them).

Each keeps only the folder the server holds now: the previous one is removed after a sync succeeded.
Full weights without a folder, over NCCL through vLLM's RL weight-transfer API (GPU only):
`weight_transfer.TransferSync`.
"""

from __future__ import annotations

import copy
import secrets
import shutil
from pathlib import Path

import torch

from lmdistill.errors import UserError
from lmdistill.models.forward import unwrap
from lmdistill.training.samplers.vllm_client import VllmClient


def write_untied(model: torch.nn.Module, folder: Path) -> None:
    """The model's weights as `folder/model.safetensors`, every name its own tensor (a tied head is
    written as `lm_head.weight` too), and its config.json with tie_word_embeddings false."""
    from safetensors.torch import save_file

    inner = unwrap(model)
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in inner.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(inner.config)
    config.tie_word_embeddings = False
    config.save_pretrained(folder)


def _write(model: torch.nn.Module, folder: Path, how) -> None:
    """`how(model, tmp)` into a folder beside `folder`, then renamed: the server never reads half of one."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    how(model, tmp)
    tmp.rename(folder)


def _save_adapter(model: torch.nn.Module, folder: Path) -> None:
    """The peft adapter alone (adapter_config.json, adapter_model.safetensors); `unwrap` would strip peft."""
    while not hasattr(model, "peft_config") and hasattr(model, "module"):  # DDP and similar wrappers
        model = model.module
    if not hasattr(model, "peft_config"):
        raise UserError("vllm_sampler.sync=lora: the student is not a peft LoRA model (student.lora_r > 0)")
    model.save_pretrained(folder, safe_serialization=True)


def write_server_folder(student: str | Path, out: str | Path) -> Path:
    """A folder to start the student's vLLM server on: `lmdistill export STUDENT OUT --untie-embeddings`
    (the student, a model folder, train output or embedded name, untied, with its tokenizer and
    generation config)."""
    from lmdistill.export import export_model

    return Path(export_model(student, out, untie_embeddings=True, log=lambda _: None))


class ReloadSync:
    """Full weights, reloaded in place. `served` is the model name requests use (never changes)."""

    kind = "reload"
    failure_hint = (
        "A failed full reload leaves vLLM 0.32 without weights (its next request kills its engine): restart the "
        "student's vLLM server, make vllm_sampler.sync_dir readable by it, and resume "
        "(train.resume_from_checkpoint), which syncs again at its first on-policy step"
    )

    def __init__(self, client: VllmClient, sync_dir: Path):
        self.client, self.sync_dir = client, Path(sync_dir)
        self.served = client.model
        self._held: Path | None = None

    def push(self, model: torch.nn.Module, step: int) -> None:
        folder = self.sync_dir / f"step-{step}"
        _write(model, folder, write_untied)
        self.client.reload_weights(str(folder.resolve()))
        self._drop_previous(folder)

    def _drop_previous(self, folder: Path) -> None:
        if self._held is not None and self._held != folder:
            shutil.rmtree(self._held, ignore_errors=True)
        self._held = folder


class LoraSync(ReloadSync):
    """A peft adapter loaded under a new name per sync; `served` is the adapter requests name."""

    kind = "lora"

    def __init__(self, client: VllmClient, sync_dir: Path):
        super().__init__(client, sync_dir)
        self._token = secrets.token_hex(3)  # a resumed run loads step names an earlier process may have used

    def push(self, model: torch.nn.Module, step: int) -> None:
        folder = self.sync_dir / f"step-{step}"
        _write(model, folder, _save_adapter)
        name = f"{self.client.model}-{self._token}-step-{step}"
        self.client.load_adapter(name, str(folder.resolve()))
        previous, self.served = self.served, name
        if previous != self.client.model:
            self.client.unload_adapter(previous)
        self._drop_previous(folder)
