"""The synthetic world's truth as a reward of the post-training contract (an upper bound for a learnt judge).

    world:truth   the share of what a world prompt asks for that the video shows, in [0, 1]: colour, shape,
                  direction, smooth motion, background, steady light, steady camera (`world_truth.CHECKS`),
                  read from the pixels by `descore_plugin.evaluation.world_truth`

It knows nothing a judge could not see: it reads the video's pixels and the prompt's words, exactly as a perfect
judge of this world would. It is registered next to the analytic rewards (`--reward world:truth`); it takes the
(B, F, C, H, W) float video tensor in [0, 1] and prompts of the world ("a red square moving right on a dark
background"); any other prompt is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from descore_plugin.evaluation import world_truth as measure
from descore_plugin.rewards.contract import RewardError

NAME = "world:truth"


def world_truth(videos, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """world:truth = per video, the share of `world_truth.CHECKS` the video shows as its prompt asks, (B,) float32."""
    if not torch.is_tensor(videos) or videos.ndim != 5 or videos.shape[2] != 3:
        shape = tuple(videos.shape) if torch.is_tensor(videos) else type(videos).__name__
        raise RewardError(f"{NAME} takes the (B, F, 3, H, W) float video tensor in [0, 1], got {shape}")
    try:
        return {NAME: measure.truth_scores(videos.detach().float().cpu().clamp(0, 1), list(prompts))}
    except measure.WorldPromptError as error:
        raise RewardError(f"{NAME}: {error}") from None
