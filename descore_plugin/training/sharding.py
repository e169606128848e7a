"""A frozen model next to the trained one under FSDP2: the stage-2 KL reference copy.

accelerate's `prepare` shards a model only together with its optimizer, so a frozen copy would stay whole on every
GPU (4 bytes a parameter: 35 GB for Qwen3-VL-8B). `prepare_frozen` shards it the way accelerate shards the trained
model (the same wrap policy, resharding and mixed-precision settings of the FSDP plugin), and otherwise only moves
it to the device (DDP: a replica per GPU, as the trained model).
"""

import torch

__all__ = ["shard_module", "prepare_frozen"]


def shard_module(module: torch.nn.Module, wrap_policy, **fully_shard_kwargs) -> torch.nn.Module:
    """`torch.distributed.fsdp.fully_shard` on every submodule `wrap_policy` selects (deepest first), then on the
    whole module, as accelerate's FSDP2 preparation does. Needs an initialised process group."""
    from torch.distributed.fsdp import fully_shard

    for submodule in reversed(list(module.modules())):  # modules() is pre-order: reversed, children come first
        if submodule is not module and wrap_policy(submodule):
            fully_shard(submodule, **fully_shard_kwargs)
    fully_shard(module, **fully_shard_kwargs)
    return module


def prepare_frozen(accelerator, module: torch.nn.Module) -> torch.nn.Module:
    """`module` (frozen, eval mode) ready for forward passes on this process: sharded over the processes under
    accelerate's FSDP2, on the device otherwise."""
    module = module.to(accelerator.device)
    if not accelerator.is_fsdp2:
        return module
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin = accelerator.state.fsdp_plugin
    policy = fsdp2_prepare_auto_wrap_policy(plugin, module) or (lambda submodule: False)
    mixed_precision = plugin.mixed_precision_policy
    return shard_module(
        module,
        policy,
        reshard_after_forward=plugin.reshard_after_forward,
        mp_policy=mixed_precision if isinstance(mixed_precision, MixedPrecisionPolicy) else MixedPrecisionPolicy(),
    )
