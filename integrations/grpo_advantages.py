"""GRPO advantages: one per video from the named rewards of a prompt's group (HOW ADVANTAGES COMBINE, the third of
the GRPO family's decisions). Flow-GRPO: the weighted reward sum, then per-group z-scores clipped at 5; LongCat-GRPO:
each reward over its largest group std on all processes, then the weighted sum. DiffusionNFT's advantages
(`integrations/nft.py`) reuse `fill_missing_rewards`.
"""

from __future__ import annotations

import torch

from descore_plugin.integrations.grpo_config import WanGRPOConfig
from descore_plugin.utils.errors import UserError


class AdvantageError(UserError):
    """Rewards that cannot be split into prompt groups."""


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.ndim != 1 or rewards.numel() % group_size != 0:
        raise AdvantageError(
            f"expected a 1-D tensor of rewards whose length is a multiple of the group size "
            f"{group_size} (the samples of a prompt next to each other), got {tuple(rewards.shape)}"
        )
    return rewards.float().reshape(-1, group_size)


def _nan_group_stats(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std (ddof 0, numpy's, as flow_grpo) of each row ignoring NaN; all-NaN rows give 0, 0."""
    valid = ~torch.isnan(groups)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    mean = torch.where(valid, groups, 0.0).sum(dim=1, keepdim=True) / count
    var = (torch.where(valid, groups - mean, 0.0) ** 2).sum(dim=1, keepdim=True) / count
    return mean, var.sqrt()


def fill_missing_rewards(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """NaN (no score) -> the mean of the prompt's group, so it carries no signal in a weighted sum; all-NaN -> 0."""
    groups = _groups(rewards, group_size)
    mean, _ = _nan_group_stats(groups)
    return torch.where(torch.isnan(groups), mean.expand_as(groups), groups).reshape(-1)


def group_advantages_population(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, clip: float | None = 5.0):
    """(r - group mean) / (group std + eps), clamped to +-clip (Flow-GRPO sec. 4; flow_grpo PerPromptStatTracker).
    NaN rewards get 0. (N,)."""
    groups = _groups(rewards, group_size)
    mean, std = _nan_group_stats(groups)
    advantages = (groups - mean) / (std + eps)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return torch.nan_to_num(advantages, nan=0.0).reshape(-1)


def max_group_std_advantages(rewards: torch.Tensor, group_size: int, gather=None, eps: float = 1e-4):
    """(r - group mean) / (sigma_max + eps), sigma_max = the largest group std over all groups on all processes
    (LongCat-Video sec. 3.3; eps keeps a batch without spread finite). gather: `accelerator.gather` or None.
    NaN rewards get 0. Returns (advantages (N,), sigma_max)."""
    groups = _groups(rewards, group_size)
    mean, std = _nan_group_stats(groups)
    stds = std.reshape(-1)
    sigma_max = (gather(stds.contiguous()) if gather is not None else stds).max()
    return torch.nan_to_num((groups - mean) / (sigma_max + eps), nan=0.0).reshape(-1), sigma_max


def advantages(config: WanGRPOConfig, scores: dict[str, torch.Tensor], weights: dict[str, float], gather=None):
    """One advantage per video from the weighted named rewards, and statistics to log. HOW ADVANTAGES COMBINE.

    group (Flow-GRPO; flow_grpo `multi_score`): r = sum_k w_k r_k with NaN first taking its group's mean, then
        per-group z-scores clamped at adv_clip.
    max_group_std (LongCat-Video sec. 3.3): A = sum_k w_k A_k, each A_k normalised by its largest group std on all
        processes, NaN giving A_k = 0; clamped at adv_clip when set.
    """
    size, stats = config.group_size, {}
    if config.advantage == "group":
        total = sum(w * fill_missing_rewards(scores[name].cpu(), size) for name, w in weights.items())
        return group_advantages_population(total, size, clip=config.adv_clip), stats
    total = 0
    for name, weight in weights.items():
        advantage, sigma_max = max_group_std_advantages(scores[name].cpu(), size, gather=gather)
        stats[f"sigma_max/{name}"] = float(sigma_max)
        total = total + weight * advantage
    if config.adv_clip is not None:
        total = total.clamp(-config.adv_clip, config.adv_clip)
    return total, stats
