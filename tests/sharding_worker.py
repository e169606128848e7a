"""Run by tests/test_accelerate_configs.py under `torch.distributed.run` (2 CPU processes, gloo): shard a frozen tiny
DeScore model with `descore_plugin.training.sharding.shard_module` and the wrap policy of recipes/accelerate/fsdp.yaml (read
from the FSDP_* environment that `accelerate launch` sets), and report per-rank parameter bytes and rewards."""

import copy
import json
import sys

import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

from descore_plugin import DeScoreReward
from descore_plugin.training.sharding import shard_module


def main(model_dir: str, video: str, out: str):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    reference = DeScoreReward.from_pretrained(model_dir).eval().requires_grad_(False)
    whole = copy.deepcopy(reference)
    expected = whole.score([video], ["a red square moving right"], think=False).rewards
    plugin = FullyShardedDataParallelPlugin()
    policy = fsdp2_prepare_auto_wrap_policy(plugin, reference)
    shard_module(reference, policy, reshard_after_forward=plugin.reshard_after_forward)
    got = reference.score([video], ["a red square moving right"], think=False).rewards
    local = sum(p.to_local().numel() * p.element_size() for p in reference.parameters())
    full = sum(p.numel() * p.element_size() for p in whole.parameters())
    units = sum(1 for m in reference.modules() if type(m).__name__.startswith("FSDP"))
    result = {
        "rank": rank,
        "local_bytes": local,
        "full_bytes": full,
        "units": units,
        "max_reward_difference": float((got - expected).abs().max()),
    }
    with open(f"{out}.{rank}.json", "w") as handle:
        json.dump(result, handle)
    # Every rank reaches the end before any tears its process group down (the usual teardown): without it, a rank
    # was seen to abort in about 1 run of 15 ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
