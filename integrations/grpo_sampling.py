"""GRPO sampling decisions: which sampling steps are SDE steps (flow_grpo: every step, the first T-1 trained, or a
window; LongCat-GRPO: one critical step per prompt among the first T') and whether a prompt's group starts from one
shared initial noise (LongCat) or independent ones (Flow-GRPO). The SDE step itself is `integrations/flow_sde.py`.
"""

from __future__ import annotations

import warnings

import torch

from descore_plugin.integrations import wan
from descore_plugin.integrations.grpo_config import WanGRPOConfig


def critical_steps(config: WanGRPOConfig, num_steps: int) -> int | None:
    """T' clamped to the step count, with a warning (LongCat's default 6 with 4 sampling steps is 4)."""
    if config.critical_steps is None:
        return None
    if config.critical_steps > num_steps:
        warnings.warn(
            f"--critical-steps {config.critical_steps} > --num-inference-steps {num_steps}: using "
            f"{num_steps} (pass --critical-steps to choose)",
            stacklevel=3,
        )
        return num_steps
    return config.critical_steps


def sde_masks(config: WanGRPOConfig, num_steps: int, num_prompts: int, generator=None):
    """(sde, trained), each (num_prompts, num_steps) bool. WHICH STEPS ARE SDE STEPS, and which are trained.

    critical_steps T' (LongCat-Video sec. 3.3): one SDE step per prompt, uniform among the first T', shared by the
        prompt's group; Euler elsewhere; that step is trained.
    sde_window [start, end): SDE and trained on those steps (flow_grpo's sde_window_range).
    neither (flow_grpo's Wan trainer): SDE on every step; the first T-1 trained (timestep_fraction 0.99).
    """
    sde = torch.zeros(num_prompts, num_steps, dtype=torch.bool)
    window = critical_steps(config, num_steps)
    if window is not None:
        sde[torch.arange(num_prompts), torch.randint(0, window, (num_prompts,), generator=generator)] = True
        return sde, sde
    if config.sde_window is not None:
        start, end = config.sde_window
        if not 0 <= start < end <= num_steps:
            raise ValueError(f"sde_window={config.sde_window}: needs 0 <= start < end <= {num_steps} (the step count)")
        sde[:, start:end] = True
        return sde, sde
    sde[:] = True
    trained = sde.clone()
    trained[:, max(1, int(num_steps * 0.99)) :] = False
    return sde, trained


def group_noise(config: WanGRPOConfig, pipe, num_prompts: int, generation, generator) -> torch.Tensor:
    """Initial latents of the group_size videos of each prompt, group after group. SHARED INITIAL NOISE or not."""
    if config.shared_noise:
        noise = wan.initial_noise(pipe, num_prompts, generation, generator=generator)
        return noise.repeat_interleave(config.group_size, dim=0)
    return wan.initial_noise(pipe, num_prompts * config.group_size, generation, generator=generator)
