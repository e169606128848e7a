"""One seeding helper: named random streams, so that every draw of a run is a function of (seed, stream, position).

A run that is killed and resumed, or split over another number of processes' worth of positions, draws exactly
what an uninterrupted run draws, and two streams never share draws:

    from descore_plugin.utils.seeding import seed_of, epoch_order

    generator = torch.Generator().manual_seed(seed_of(run_seed, "step", rank, step))      # a step's noise
    prompts = epoch_order(prompts, 4, run_seed, "step_prompts", rank, step)             # a step's prompts

A stream is named, never a bare number: the name's salt is its entry in STREAMS (the numbers earlier runs used, so
that their seeded results are unchanged), or for any other name a stable hash of the name.
"""

import hashlib

import numpy as np

__all__ = ["STREAMS", "stream_salt", "seed_of", "epoch_order", "torch_seed"]

STREAMS = {
    "step": 7,  # post-training: the sampling and training noise of a step (per rank)
    "pair_batches": 11,  # Flow-DPO: which stored pairs a step trains on
    "step_prompts": 13,  # GRPO / DiffusionNFT: which prompts a step samples
    "eval_noise": 17,  # the fixed initial noise of the evaluation videos (Wan recipes, eval_vbench.py)
    "nft": 19,  # DiffusionNFT: the noise of a step
}
"""Streams whose salts predate the names: kept, so that the runs and tests seeded with them draw the same."""


def stream_salt(stream: str) -> int:
    """The number that separates `stream` from every other stream: its STREAMS entry, else a hash of its name."""
    if stream in STREAMS:
        return STREAMS[stream]
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=4).digest(), "little")


def seed_of(seed: int, stream: str, *parts: int) -> int:
    """A 32-bit seed that is a function of (seed, stream, parts) only: runs resume exactly on any number of
    processes, and two streams never share draws."""
    return int(np.random.SeedSequence([int(seed), stream_salt(stream), *(int(p) for p in parts)]).generate_state(1)[0])


def epoch_order(items: list, count: int, seed: int, stream: str, rank: int, position: int, *parts: int) -> list:
    """The `position`-th draw of `count` items: epochs of permutations seeded by (seed, stream, rank, parts, epoch),
    a function of the position only, so a resumed run draws the same."""
    chosen = []
    for slot in range(position * count, (position + 1) * count):
        epoch, offset = divmod(slot, len(items))
        order = np.random.default_rng([seed, stream_salt(stream), rank, *parts, epoch]).permutation(len(items))
        chosen.append(items[int(order[offset])])
    return chosen


def torch_seed(*values: int) -> int:
    """A 62-bit seed for `torch.manual_seed` that is a function of `values` only (seed, micro-step, rank, ...): the
    reward-model trainers' per-step seed of dropout and CoT sampling. Its own formula, not `seed_of`'s, because the
    trainers' seeded results (and the learning tests' measured accuracies) were drawn with it."""
    return int(np.random.default_rng([int(value) for value in values]).integers(2**62))
