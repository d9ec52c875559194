"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for a Hugging Face causal LM: shard it, read its head
whole for the chunked loss, gather its full weights to save.

Layout (`shard_model`): each decoder layer is its own FSDP unit; the root unit holds the rest - the
input embeddings, the final norm and the output head (one parameter when they are tied, as in
SmolLM2, so one copy is gathered and one gradient accumulates both uses). Every parameter is a
`DTensor` sharded on dim 0 across the processes; a unit's parameters are all-gathered just before
its forward and backward, and its gradients reduce-scattered after its backward (mean over
processes, in place of DDP's all-reduce).

Why the chunked loss works with it: the loss multiplies the final hidden states by the head weight
outside the model's forward. After the root's forward FSDP2 keeps the root unit unsharded (it would be
all-gathered again at once for backward), so the head's module attribute is the plain, whole weight,
and the gradient the loss computes for it accumulates on that unsharded parameter; FSDP2's root
post-backward then reduce-scatters it with the embedding's own gradient. `unsharded_head_weight`
gathers it explicitly when the root was set to reshard after forward, or when an evaluation forward
left it sharded. Checked against one process in tests/training/test_fsdp.py.

Every function here that gathers is a collective: all processes must call it together.
"""

from __future__ import annotations

import torch

from lmdistill.errors import UserError


def _fsdp():
    from torch.distributed.fsdp import FSDPModule, fully_shard

    return FSDPModule, fully_shard


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks, found by the model's own `_no_split_modules` class names (any HF decoder)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise UserError(
            f"train.fsdp: cannot find the decoder layers of {type(model).__name__} (no _no_split_modules); "
            "FSDP2 needs one unit per layer"
        )
    return layers


def shard_model(model: torch.nn.Module, device: torch.device | None = None) -> torch.nn.Module:
    """Apply FSDP2 in place: one unit per decoder layer, then the root (embeddings, norm, head).

    Every process must hold the same full weights first (same seed / same checkpoint): each keeps its
    own dim-0 slice; or the model is on the meta device and `device` names where its shards will live
    (`shard_from_rank0` fills them). torch.distributed must be initialised (torchrun); gloo on CPU, NCCL
    on CUDA.
    """
    from torch.distributed.device_mesh import init_device_mesh

    _, fully_shard = _fsdp()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),), mesh_dim_names=("fsdp",))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    # The root's reshard_after_forward is left to FSDP2's default for the root: not resharded after
    # forward, since backward would gather it again at once; the chunked loss reads the head then.
    fully_shard(model, mesh=mesh)
    return model


def shard_from_rank0(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Shard `model` with FSDP2 onto `device`, its weights coming from process 0 alone (a collective).

    Process 0 passes the model with its real weights (on the CPU); the others pass the same architecture
    built on the meta device (`lmdistill.models.loading.load_model(meta=True)`: no weights read, no memory
    taken). Afterwards every process holds only its shards on `device`: process 0's whole tensors (on the
    CPU) are dropped when loading ends, and the others never hold more than the one tensor being broadcast.

    Steps (what torchtune and torchtitan do): every process turns the model to meta (process 0 keeps its
    state dict), applies `fully_shard` (cheap on meta), allocates its shards on `device` (`to_empty`),
    and `set_model_state_dict(full_state_dict, broadcast_from_rank0)` broadcasts each tensor from process
    0 while every process keeps its slice. Buffers that are not in the state dict (the rotary
    embedding's `inv_freq`: `to_empty` leaves them uninitialised) are sent from process 0 as they are
    there, so every process computes with exactly process 0's values. Tied parameters stay one
    parameter throughout (meta conversion and `to_empty` swap tensors in place).
    """
    rank = torch.distributed.get_rank()
    full: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    if rank == 0:
        full = model.state_dict()  # every name of a tied weight, as the full-state-dict loader wants
        extra = {n: b.detach().clone() for n, b in model.named_buffers() if n not in full}
    _to_meta(model)  # process 0's weights now live only in `full`
    shard_model(model, device)
    model.to_empty(device=device)
    sent = [extra]
    torch.distributed.broadcast_object_list(sent, src=0, device=_object_device(device))
    for name, value in sent[0].items():
        module_name, _, leaf = name.rpartition(".")
        model.get_submodule(module_name)._buffers[leaf] = value.to(device)  # keeps its persistence flag
    load_full_state_dict(model, full, strict=True)
    return model


def _to_meta(model: torch.nn.Module) -> None:
    """Move every parameter and buffer to the meta device, keeping tied parameters one parameter.

    `Module.to("meta")` gives each module a new Parameter when the tensor type changes (CPU -> meta), so
    a tied head and embedding would come out as two; each group of names is bound to one again.
    """
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    model.to("meta")
    for names in groups.values():
        first = model.get_parameter(names[0])
        for name in names[1:]:
            module_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(module_name), leaf, first)


def _object_device(device: torch.device) -> torch.device | None:
    """Where `broadcast_object_list` stages its bytes: the GPU for NCCL, the CPU for gloo."""
    return device if torch.device(device).type == "cuda" else None


def _owner(model: torch.nn.Module, head: torch.nn.Module):
    """The FSDP2 unit whose parameter group holds `head.weight` (the head's own or a tied embedding's)."""
    fsdp_module, _ = _fsdp()
    try:
        for module in model.modules():
            if not isinstance(module, fsdp_module):
                continue
            group = module._get_fsdp_state()._fsdp_param_group  # FSDP2 has no public param -> unit lookup
            for fsdp_param in group.fsdp_params if group is not None else ():
                info = fsdp_param._module_info
                owners = [info.module, *info.shared_modules]
                names = [info.param_name, *info.shared_param_names]
                if any(m is head and n == "weight" for m, n in zip(owners, names, strict=True)):
                    return module
    except AttributeError:  # FSDP2's internals moved (checked on torch 2.13): the root holds the head here
        pass
    return model if isinstance(model, fsdp_module) else None


def unsharded_head_weight(model: torch.nn.Module, head: torch.nn.Linear) -> torch.Tensor:
    """`head.weight` whole: [vocab, hidden]. Under FSDP2, all-gathers the owning unit if it is sharded now.

    The unit stays unsharded until FSDP2 reshards it after its backward (or its next forward), so the
    gradient the chunked loss gives this tensor is reduce-scattered by FSDP2 like the unit's own.
    """
    from torch.distributed.tensor import DTensor

    weight = head.weight
    if not isinstance(weight, DTensor):
        return weight
    owner = _owner(model, head)
    if owner is not None:
        owner.unshard()
        weight = head.weight
    if isinstance(weight, DTensor):
        raise UserError(
            "the output head's weight is sharded and no FSDP2 unit of the model owns it, so the chunked loss "
            "cannot gather it; shard the student with train.fsdp (lmdistill.models.sharding.shard_model)"
        )
    return weight


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict as CPU tensors on process 0, {} on the others (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def load_full_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True
) -> None:
    """Load a full state dict held by process 0 (others pass {}) into the sharded `model` (a collective).

    strict=False: `state` may hold only some of the model's tensors (LoRA adapters); the rest stay.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    set_model_state_dict(model, state, options=options)
