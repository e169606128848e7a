"""Whole-model checkpoint state for the trainer, on one process or many (DDP, FSDP2).

Under FSDP2 (`torch.distributed.fsdp.fully_shard`, what accelerate's FSDP plugin applies) each process holds only a
shard of every parameter and of its AdamW state, so a checkpoint written from the main process's own tensors would
hold shards. `gather_state` collects the full tensors on the main process's CPU (a collective: every process calls
it), and `load_state` hands them back to every process's shards (rank 0 reads the files and broadcasts). A model that
is not sharded (one process, DDP) keeps its own tensors and the optimizer's own `state_dict` format.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

__all__ = ["CheckpointState", "is_sharded", "gather_state", "load_state"]


@dataclass
class CheckpointState:
    """What a checkpoint holds of the model and optimizer, on the main process (empty dicts elsewhere under FSDP).
    model: the full state dict of the model (None when the model is not sharded: it saves its own tensors);
    trainable: the full tensors of the parameters that train (trainable.safetensors); optimizer: its state
    (keyed by parameter name when the model is sharded, torch's own format otherwise; `load_state` reads both
    into an unsharded model)."""

    model: dict | None
    trainable: dict
    optimizer: dict


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any parameter of `model` is a DTensor (FSDP2 shards)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps torch's


def gather_state(model: torch.nn.Module, optimizer, main_process: bool = True) -> CheckpointState | None:
    """The model's and optimizer's full state on the main process's CPU. Collective when `model` is sharded (every
    process must call it; the others get empty dicts); otherwise only the main process needs it (None elsewhere)."""
    if not is_sharded(model):
        if not main_process:
            return None
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        return CheckpointState(model=None, trainable=trainable, optimizer=optimizer.state_dict())
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors on rank 0's CPU only
    full = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, _inner(optimizer), options=options)
    trainable = {n: full[n].contiguous() for n, p in model.named_parameters() if p.requires_grad and n in full}
    return CheckpointState(model=full, trainable=trainable, optimizer=optim)


def load_state(model: torch.nn.Module, optimizer, directory: Path) -> None:
    """Load `directory`'s trainable.safetensors and optimizer.pt into `model` and `optimizer` (as `gather_state`
    wrote them). Collective when `model` is sharded: rank 0 reads the files and each process keeps its shards."""
    directory = Path(directory)
    if not is_sharded(model):
        saved = load_file(directory / "trainable.safetensors")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
        optim = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
        if any(isinstance(key, str) for key in optim.get("state", {})):  # written under FSDP: keyed by name
            optim = _numbered(model, _inner(optimizer), optim)
        optimizer.load_state_dict(optim)
        return
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    first = dist.get_rank() == 0
    trainable = load_file(directory / "trainable.safetensors") if first else {}
    optim = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True) if first else {}
    # The names of the parameters with optimizer state, from rank 0 to all (None: numbered, an unsharded run's).
    names = [
        (sorted(optim.get("state", {})) if all(isinstance(k, str) for k in optim.get("state", {})) else None)
        if first
        else None
    ]
    dist.broadcast_object_list(names, src=0)
    if names[0] is None:  # on every process, so that none is left waiting in a collective
        raise ValueError(
            f"{directory / 'optimizer.pt'}: written by an unsharded run (parameters numbered, not "
            f"named); a sharded (FSDP) run resumes only from a checkpoint written under FSDP"
        )
    # Not strict: the file holds only the trainable parameters, and AdamW has no state for a parameter that never
    # got a gradient (e.g. lm_head when the loss reads only the head), as torch's own load_state_dict allows.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, trainable, options=options)
    set_optimizer_state_dict(model, _inner(optimizer), optim, options=options)
    # Loading first initialises every parameter's state with a zero-gradient step: drop it again for the parameters
    # the checkpoint has no state for, so that their first real step counts from 1 as in the uninterrupted run.
    saved, inner = set(names[0]), _inner(optimizer)
    for name, param in model.named_parameters():
        if name not in saved:
            inner.state.pop(param, None)


def _numbered(model: torch.nn.Module, optimizer, optim: dict) -> dict:
    """An optimizer state keyed by parameter name (as written under FSDP) in torch's own format, which numbers the
    parameters in the order of the optimizer's parameter groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    index = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            index[names[id(param)]] = len(index)
    return {
        "state": {index[name]: value for name, value in optim["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]} for group in optim["param_groups"]
        ],
    }
