"""`train.fsdp: true`: the student sharded with FSDP2 across the processes of `torchrun`
(`train.fsdp_teacher: true`: the in-process teacher too). Only process 0 reads a sharded model's
weights; the others build it on the meta device and receive their shards from process 0
(`lmdistill.models.sharding.shard_from_rank0`).

The student is sharded before the Trainer sees it (`lmdistill.models.sharding.shard_from_rank0`) and marked
the way transformers marks a model it sharded itself at load time (`from_pretrained(distributed_config=)`):
Trainer then neither wraps it in DDP nor moves it, defers FSDP2's gradient reduction during gradient
accumulation, and gathers the full weights when it saves a checkpoint's model. transformers does not
checkpoint the optimizer of such a model (it refuses to save one); `ShardedDistillTrainer` does, as a
sharded `torch.distributed.checkpoint` folder (`optimizer_fsdp/`, one file per process, reshardable),
and on resume loads the gathered weights back into the shards. Checkpoints move between process counts:
DCP reshards the optimizer folder on load (into whole tensors for an unsharded run, see
`DistillTrainer._load_optimizer_and_scheduler`), and an unsharded run's optimizer.pt is read into the
shards (`load_whole_optimizer`). The chunked loss reads the head through
`lmdistill.models.sharding.unsharded_head_weight`. This runs on CPU (gloo) and on CUDA (NCCL) alike;
accelerate's FSDP plugin (`train.extra.fsdp`) is refused because it does not run on CPU here and so
cannot be tested (see docs/multi_gpu.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lmdistill.errors import UserError
from lmdistill.models.forward import is_peft
from lmdistill.models.sharding import full_state_dict, load_full_state_dict, shard_from_rank0
from lmdistill.training.optimizer_checkpoint import (
    OPTIMIZER_DIR,
    SCHEDULER_FILE,
    WHOLE_OPTIMIZER_FILE,
    has_sharded_optimizer,
    load_sharded_optimizer,
    load_whole_optimizer,
)
from lmdistill.training.trainer import DistillTrainer


def check_sharding_settings(cfg) -> None:
    """Refuse, before any work, what the sharded paths cannot do (UserError naming the key)."""
    t = cfg.train
    if t.extra.get("fsdp") or t.extra.get("fsdp_config"):
        raise UserError(
            "train.extra.fsdp (accelerate's FSDP plugin) is not supported: it cannot run on CPU, so it is untested "
            "here; use train.fsdp: true (FSDP2 through torchrun; see docs/multi_gpu.md)"
        )
    stage = _deepspeed_stage(t.extra.get("deepspeed"))
    if stage == 3:
        raise UserError(
            "train.extra.deepspeed: ZeRO stage 3 is not supported: the chunked loss would need the output head "
            "gathered (deepspeed.zero.GatheredParameters), which is not implemented because no ZeRO stage could run "
            "under transformers' Trainer on the CPU machines it is tested on; use train.fsdp: true for a sharded "
            "student, or ZeRO stage 1/2"
        )
    if t.fsdp_teacher:
        elsewhere = cfg.distill.teacher_store or cfg.teacher.server
        if elsewhere or not (cfg.distill.kd_ratio > 0 or cfg.hints.enabled):
            raise UserError(
                "train.fsdp_teacher shards the teacher model in this process, but there is none "
                f"({'the teacher is ' + elsewhere if elsewhere else 'no loss term reads the teacher'}): drop it"
            )
        _check_processes("train.fsdp_teacher: true shards the teacher")
    if not t.fsdp:
        return
    if stage is not None:
        raise UserError("train.fsdp and train.extra.deepspeed contradict each other: choose one")
    _check_processes("train.fsdp: true shards the student")


def _check_processes(what: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise UserError(
            f"{what} across processes: launch with `torchrun --nproc_per_node N -m lmdistill.cli train ...` (N >= 2)"
        )


def _deepspeed_stage(value) -> int | None:
    """ZeRO stage of a `train.extra.deepspeed` mapping or JSON file path; None without DeepSpeed."""
    if not value:
        return None
    if isinstance(value, str | os.PathLike):
        try:
            value = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"train.extra.deepspeed: cannot read {value} ({exc.__class__.__name__})"
            ) from None
    stage = (value.get("zero_optimization") or {}).get("stage", 0) if isinstance(value, dict) else 0
    return int(stage) if str(stage).isdigit() else None


def prepare_student(student: torch.nn.Module, args) -> torch.nn.Module:
    """Move the student to this process's device, shard it with FSDP2 and mark it for Trainer.

    `args` (TrainingArguments) must be built with `save_only_model=True` (Trainer's check for models
    sharded at load time); `ShardedDistillTrainer` saves the optimizer itself and turns it back off.
    """
    from transformers.distributed import DistributedConfig

    device = args.device  # initialises torch.distributed for torchrun (gloo on CPU, NCCL on CUDA)
    world = torch.distributed.get_world_size()
    # LoRA: the model inside peft's wrapper is the FSDP2 root; each unit holds its frozen base weights
    # and its trainable adapters, and FSDP2 reduce-scatters only the adapters' gradients. Process 0's
    # weights (adapters included) fill every process's shards; the others built the student on meta.
    base = student.get_base_model() if is_peft(student) else student
    shard_from_rank0(base, device)
    # What `from_pretrained(distributed_config=DistributedConfig(fsdp_size=N))` sets on a model it shards
    # (peft's wrapper forwards these attributes to it).
    base.config.distributed_config = DistributedConfig(fsdp_size=world)
    base._is_distributed_loading_by_transformers = True
    base._is_fsdp_managed_module = True
    return student


def prepare_teacher(teacher: torch.nn.Module, args) -> torch.nn.Module:
    """Move the frozen teacher to this process's device and shard it with FSDP2, as the student.

    Each process then keeps 1/N of its weights; its forward gathers one layer at a time (under no_grad
    nothing is kept for backward), and the root unit (embeddings, norm, head) stays gathered after the
    first forward, which is what the chunked loss reads the teacher's head from. Process 0's weights
    fill the shards; the other processes built the teacher on the meta device (`lmdistill.training.parts.models.from_rank0`).
    """
    return shard_from_rank0(teacher, args.device)


def broadcast_from_rank0(module: torch.nn.Module) -> None:
    """Overwrite `module`'s parameters and buffers with process 0's (a collective; every process calls it)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)


def describe_shards(role: str, model: torch.nn.Module) -> str:
    """One line: how many of the model's parameters this process holds."""
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
    world = torch.distributed.get_world_size()
    return (
        f"{role} sharded with FSDP2 across {world} processes: {local:,} of {total:,} parameters in this one"
    )


class ShardedDistillTrainer(DistillTrainer):
    """`DistillTrainer` for a student sharded by `prepare_student`: checkpoints the optimizer too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.args.save_only_model = False  # this class writes and reads the optimizer state itself

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        # Each process writes its own shards of the AdamW moments (a collective).
        state = {"optimizer": get_optimizer_state_dict(self._optimized(), self.optimizer)}
        dcp.save(state, checkpoint_id=Path(output_dir) / OPTIMIZER_DIR)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_FILE)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The sharded optimizer folder, resharded to this run's processes by DCP; or the whole
        optimizer.pt of an unsharded run (1 process, or DDP), each process keeping its shards of it."""
        if checkpoint is None:
            return
        if has_sharded_optimizer(checkpoint):
            load_sharded_optimizer(self._optimized(), self.optimizer, self.lr_scheduler, checkpoint)
        elif (Path(checkpoint) / WHOLE_OPTIMIZER_FILE).is_file():
            load_whole_optimizer(self._optimized(), self.optimizer, self.lr_scheduler, checkpoint)
        else:
            raise UserError(
                f"{checkpoint}: no optimizer state ({OPTIMIZER_DIR}/ or {WHOLE_OPTIMIZER_FILE}) to resume from"
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The checkpoint's gathered model.safetensors, read by process 0 and scattered into the shards."""
        from safetensors.torch import load_file

        state = {}
        peft = is_peft(self.model)
        if self.args.process_index == 0:
            name = "adapter_model.safetensors" if peft else "model.safetensors"
            saved = load_file(str(Path(resume_from_checkpoint) / name))
            state = _adapter_names(self.model, saved) if peft else _with_tied_aliases(self.model, saved)
        # LoRA: only the adapters are in the checkpoint; the frozen base is already in place.
        load_full_state_dict(self.model, state, strict=not peft)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """LoRA: the adapters gathered and saved by process 0 (peft cannot save sharded tensors)."""
        if not is_peft(self.model):
            return super()._save(output_dir, state_dict)
        state = full_state_dict(self.model)  # a collective: every process gathers
        if self.args.should_save:
            self.model.save_pretrained(output_dir, state_dict=state, is_main_process=True)


def _with_tied_aliases(model: torch.nn.Module, state: dict) -> dict:
    """Add the names a tied parameter also goes by (lm_head.weight for a tied embedding): safetensors
    files keep one name per tensor, the full-state-dict loader wants all of them."""
    for aliases in _aliases(model):
        present = [n for n in aliases if n in state]
        for n in aliases:
            if present and n not in state:
                state[n] = state[present[0]]
    return state


def _adapter_names(model: torch.nn.Module, saved: dict) -> dict:
    """peft's saved adapter names (`...lora_A.weight`) -> the model's (`...lora_A.default.weight`)."""
    names = {}
    for name in model.state_dict():
        for adapter in model.peft_config:
            short = name.replace(f".{adapter}.", ".")
            if short != name and short in saved:
                names[name] = saved[short]
    return names


def _merged_lora(model: torch.nn.Module, state: dict) -> dict:
    """The gathered state of a peft LoRA model -> plain weights: W + scaling * B @ A per adapted Linear,
    under the base model's own names (what `merge_and_unload` gives, done on the gathered tensors)."""
    from peft.tuners.lora import LoraLayer

    state = dict(state)
    for prefix, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        key = f"{prefix}.base_layer.weight"
        weight = state[key].float()
        for adapter in module.active_adapters:
            if module.use_dora.get(adapter):
                raise UserError("train.fsdp with DoRA adapters is not supported")
            a = state.pop(f"{prefix}.lora_A.{adapter}.weight").float()
            b = state.pop(f"{prefix}.lora_B.{adapter}.weight").float()
            delta = (b @ a) * module.scaling[adapter]
            weight = weight + (delta.T if module.fan_in_fan_out else delta)
        state[f"{prefix}.weight"] = weight.to(state.pop(key).dtype)
        if f"{prefix}.base_layer.bias" in state:
            state[f"{prefix}.bias"] = state.pop(f"{prefix}.base_layer.bias")
    return {k.removeprefix("base_model.model."): v for k, v in state.items()}


def _aliases(model: torch.nn.Module) -> list[list[str]]:
    """The names of each parameter, the one `named_parameters()` gives first."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return list(names.values())


def gather_student(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained student's full weights on process 0 ({} elsewhere), for `save_student` (a collective);
    a LoRA student's adapters merged into them, under the base model's names (save them through
    `saveable(model)`).

    Afterwards the model no longer carries its DistributedConfig, so `save_pretrained` with this state
    dict writes on process 0 alone instead of gathering again.
    """
    state = full_state_dict(model)
    model.config.distributed_config = None
    if is_peft(model) and state:  # merged into plain weights on process 0 (the others hold nothing)
        state, model = _merged_lora(model, state), model.get_base_model()
    # The gather copies a tied weight once per name; one tensor under both names lets save_pretrained
    # see the tie and store it once, as it does for an unsharded model.
    for aliases in _aliases(model):
        for name in aliases[1:]:
            if aliases[0] in state and name in state:
                state[name] = state[aliases[0]]
    return state


def saveable(model: torch.nn.Module) -> torch.nn.Module:
    """The model `gather_student`'s weights are saved through: the base model inside peft's wrapper."""
    return model.get_base_model() if is_peft(model) else model
