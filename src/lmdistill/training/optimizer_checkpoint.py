"""A checkpoint's optimizer state in either layout: the sharded `torch.distributed.checkpoint` folder a
`train.fsdp` run writes (`optimizer_fsdp/`), or Trainer's whole optimizer.pt. Both the plain trainer
(resuming a sharded run's checkpoint unsharded) and the sharded one read them; this module sits below
both, so `lmdistill.training.trainer` and `lmdistill.training.fsdp` depend on it and not on each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmdistill.errors import UserError

#: The optimizer's sharded checkpoint inside each checkpoint-N folder.
OPTIMIZER_DIR = "optimizer_fsdp"
SCHEDULER_FILE = "scheduler.pt"
#: Trainer's optimizer file in the checkpoint of an unsharded run (one process, or DDP).
WHOLE_OPTIMIZER_FILE = "optimizer.pt"


def has_sharded_optimizer(checkpoint: str | os.PathLike) -> bool:
    """Whether a checkpoint holds a sharded run's optimizer (`optimizer_fsdp/`) and no whole optimizer.pt."""
    folder = Path(checkpoint)
    return (folder / OPTIMIZER_DIR).is_dir() and not (folder / WHOLE_OPTIMIZER_FILE).is_file()


def load_sharded_optimizer(
    module: torch.nn.Module, optimizer, scheduler, checkpoint: str | os.PathLike
) -> None:
    """The optimizer state of `checkpoint/optimizer_fsdp` into `optimizer` (over `module`'s parameters,
    named as when it was saved), and the scheduler's. `torch.distributed.checkpoint` reads into whatever
    layout `module` has now: FSDP2 shards over any number of processes, or whole tensors in a process
    that is not sharded (one alone, or each of DDP's); it is a collective when a process group is up."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(module, optimizer)}  # the layout to read into
    dcp.load(state, checkpoint_id=Path(checkpoint) / OPTIMIZER_DIR, no_dist=not _distributed())
    set_optimizer_state_dict(module, optimizer, state["optimizer"])
    scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_FILE, weights_only=True))


def load_whole_optimizer(
    module: torch.nn.Module, optimizer, scheduler, checkpoint: str | os.PathLike
) -> None:
    """An unsharded run's optimizer.pt (states keyed by parameter position) into the sharded `optimizer`:
    each position named as in this optimizer (the same parameter groups in the same order, which the
    same student and settings give; shapes checked), then each process keeps its own shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(checkpoint) / WHOLE_OPTIMIZER_FILE
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mapped: not read N times
    names = [group["params"] for group in get_optimizer_state_dict(module, optimizer)["param_groups"]]
    groups = saved.get("param_groups", [])
    if [len(g["params"]) for g in groups] != [len(n) for n in names]:
        raise UserError(
            f"{path}: its parameter groups ({[len(g['params']) for g in groups]} parameters) are not this "
            f"run's ({[len(n) for n in names]}): it was written for another student or other settings"
        )
    params = dict(module.named_parameters())
    state, full = saved.get("state", {}), {"state": {}, "param_groups": []}
    for group, fqns in zip(groups, names, strict=True):
        for position, fqn in zip(group["params"], fqns, strict=True):
            param = params.get(fqn)
            moments = state.get(position, {})
            shape = tuple(param.shape) if param is not None else None  # a DTensor's shape is the whole one
            for value in moments.values():
                if torch.is_tensor(value) and value.dim() > 0 and tuple(value.shape) != shape:
                    raise UserError(
                        f"{path}: the state of {fqn} has shape {tuple(value.shape)}, the parameter {shape}: "
                        "it was written for another student"
                    )
            if moments:
                full["state"][fqn] = moments
        full["param_groups"].append({**group, "params": list(fqns)})
    options = StateDictOptions(full_state_dict=True)  # every process has it whole and keeps its shards
    set_optimizer_state_dict(module, optimizer, full, options=options)
    scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_FILE, weights_only=True))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
