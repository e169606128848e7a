"""One trainable row of an embedding matrix: the `<Reward>` row in full fine-tuning (without an adapter).

The official training lets every row take its AdamW step and then writes the start values back into every row but
the reward row. `TrainableRow` gets the same rows without a second copy of the matrix: the gradient of every other
row is zeroed before clipping and the optimizer step (their AdamW moments stay zero, so the step moves them by
nothing), and AdamW's decoupled weight decay, which would move them even with a zero gradient, is taken off the
matrix's parameter group and applied to the reward row alone, just before the step, with the group's learning rate.

It works on a plain parameter and on FSDP2's (`fully_shard`) DTensor parameter sharded on dim 0 alike: the global
row is mapped to this process's shard by the shard's global offset, and only the local gradient is touched (the
reward row lives on one process; the others zero their whole shard's gradient). A tensor gradient hook would not
do: FSDP2 replaces the parameter when it shards, and writes the reduced gradient to the shard directly.

Without gradient clipping the rows equal the official ones bit for bit. With it, the norm here leaves out the frozen
rows' gradients (as peft's trainable tokens do), where the official step clips with them in.
"""

import torch

__all__ = ["TrainableRow", "local_rows"]


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the local tensor, the global index of its first row) of a plain tensor or of a DTensor sharded on dim 0 (or
    replicated). Another sharding is refused: the rows would not be whole on one process."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(param, DTensor):
        return param, 0
    if any(not isinstance(p, Replicate) and not (isinstance(p, Shard) and p.dim == 0) for p in param.placements):
        raise ValueError(f"an embedding matrix sharded as {param.placements}: only a dim-0 sharding keeps rows whole")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return param.to_local(), int(offset[0])


class TrainableRow:
    """Restrict training of `weight` (an embedding matrix, plain or FSDP2-sharded on dim 0) to global row `row`.

    Call `mask_gradient()` once the gradient of an optimizer step is complete and before it is clipped. Built with
    the `optimizer` that holds `weight` (the torch optimizer itself, not a wrapper), it takes over the weight decay
    of `weight`'s parameter group: the group's decay is set to 0 and the reward row is decayed by
    (1 - lr * weight_decay) right before each step, as AdamW would (AdamW's decay does not depend on the gradient).
    """

    def __init__(self, weight: torch.Tensor, row: int, optimizer: torch.optim.Optimizer | None = None):
        if not 0 <= row < weight.shape[0]:
            raise ValueError(f"trainable row {row} is outside the embedding matrix ({weight.shape[0]} rows)")
        self.weight, self.row = weight, row
        self.optimizer, self.weight_decay = optimizer, 0.0
        if optimizer is not None:
            self.weight_decay = float(self._group().get("weight_decay", 0.0))
            self._group()["weight_decay"] = 0.0
            optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: self._decay())

    def _group(self) -> dict:
        """The optimizer's parameter group of the matrix, looked up each time (loading an optimizer state replaces
        the group dictionaries)."""
        groups = [g for g in self.optimizer.param_groups if any(p is self.weight for p in g["params"])]
        if len(groups) != 1:
            raise ValueError("the optimizer does not hold the embedding matrix (or holds it twice)")
        if len(groups[0]["params"]) != 1:
            raise ValueError("the embedding matrix needs a parameter group of its own (its decay is taken over)")
        return groups[0]

    def _local_row(self, tensor: torch.Tensor):
        """(the local tensor, the reward row's index in it, or None when another process holds it)."""
        local, offset = local_rows(tensor)
        index = self.row - offset
        return local, index if 0 <= index < local.shape[0] else None

    @torch.no_grad()
    def mask_gradient(self):
        """Zero the gradient of every row of this process's shard but the reward row."""
        if self.weight.grad is None:
            return
        local, index = self._local_row(self.weight.grad)
        if index is None:
            local.zero_()
        else:
            local[:index].zero_()
            local[index + 1 :].zero_()

    @torch.no_grad()
    def _decay(self):
        if not self.weight_decay or self.weight.grad is None:  # AdamW skips a parameter without a gradient
            return
        group = self._group()
        group["weight_decay"] = 0.0  # a loaded optimizer state may bring the decay back
        local, index = self._local_row(self.weight)
        if index is not None:
            local[index].mul_(1 - group["lr"] * self.weight_decay)
