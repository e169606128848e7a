"""One device mover for model inputs: the tensors of a batch go to the device, everything else stays as it is."""

import torch

__all__ = ["to_device"]


def to_device(batch: dict, device) -> dict:
    """A copy of `batch` (a processor's output, a collated training batch) whose tensor values are on `device`; other
    values (lists of strings, None, numbers) are kept as they are."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
