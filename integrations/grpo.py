"""GRPO for flow-matching video models on the Wan-2.1 sigma grid: Flow-GRPO and LongCat-GRPO as one family.

Conventions (as in `integrations/wan.py`): x_t = (1 - t) x0 + t eps, the transformer predicts v = eps - x0,
sampling runs from t = 1 to t = 0 on the scheduler's sigma grid, dt = t_next - t < 0.

One step of `WanGRPOTrainer.step`, top to bottom:
  1. sample `group_size` videos per prompt, some sampling steps replaced by SDE steps whose log-probs are kept;
  2. score the decoded videos with the named rewards (`descore_plugin.rewards.contract`);
  3. one advantage per video;
  4. `updates_per_rollout` optimiser steps on the clipped policy loss + beta * KL to the reference
     (the same transformer with its LoRA adapters disabled: no second copy of the weights).

The two algorithms differ in three decisions, each made in ONE function, and in their presets (`PRESETS`: the one
place of both algorithms' settings, the algorithm's, the generation's and the LoRA's):
  shared initial noise      `group_noise`      Flow-GRPO: independent per video; LongCat: shared by a prompt's group
  which steps are SDE steps `sde_masks`        Flow-GRPO: every step, the first T-1 trained; LongCat: one critical step
  how advantages combine    `advantages`       Flow-GRPO: weighted reward sum, per-group z-score, clipped at 5;
                                               LongCat: per reward over the largest group std, then weighted sum
The per-step math (noise scale, SDE step, log-prob, KL, LongCat's weights, clipped surrogate) is in
`integrations/flow_sde.py`; the formulas and their sources are in docs/post_training.md ("The math").
`WanGRPO` is the method the run loop drives (`recipes/wan_flow_grpo.py`, `recipes/post_train.py flow_grpo|longcat`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from descore_plugin.integrations import wan
from descore_plugin.integrations.flow_sde import (
    clipped_policy_loss,
    gaussian_log_prob,
    longcat_loss_weights,
    mean_kl,
    noise_scale,
    sde_step,
)
from descore_plugin.integrations.post_training import (
    LoraEMA,
    WanMethod,
    epoch_order,
    is_tiny_pipeline,
    pipeline_generation_defaults,
    seed_of,
)
from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper
from descore_plugin.utils.errors import UserError

# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------

PRESETS = {
    # Flow-GRPO (arXiv 2505.05470) with the settings of flow_grpo's Wan-2.1 trainer and preset
    # (scripts/train_wan2_1.py, config/grpo.py::general_ocr_wan2_1). ema, untrained_steps and mask_zero_advantages
    # are that trainer's, not the paper's: options (off in longcat).
    "flow_grpo": dict(
        shared_noise=False,
        noise_schedule="linear",
        noise_level=1.0,
        critical_steps=None,
        diffusion_cap=None,
        advantage="group",
        adv_clip=5.0,
        loss_weighting="uniform",
        kl_beta=0.004,
        updates_per_rollout=2,
        ema=True,
        untrained_steps=2,
        mask_zero_advantages=True,
    ),
    # LongCat-GRPO (LongCat-Video report, arXiv 2510.22200, sec. 3.3 and app. A.1)
    "longcat": dict(
        shared_noise=True,
        noise_schedule="sqrt",
        noise_level=1.0,
        critical_steps=6,
        diffusion_cap=0.45,
        advantage="max_group_std",
        adv_clip=None,
        loss_weighting="lambda",
        kl_beta=3e-4,
        updates_per_rollout=1,
        ema=False,
        untrained_steps=0,
        mask_zero_advantages=False,
    ),
}
"""Each algorithm's settings of `WanGRPOConfig`; WAN_PRESETS holds its generation, scheduler shift and LoRA."""

WAN_PRESETS = {
    # flow_grpo config/grpo.py general_ocr_wan2_1 (flow shift: the pipeline's)
    "flow_grpo": dict(
        generation=dict(num_frames=33, height=240, width=416, num_inference_steps=20, guidance_scale=4.5),
        shift=None,
        lora_rank=32,
        lora_alpha=64.0,
        lora_targets="attention",
    ),
    # arXiv 2510.22200 app. A.1 (16 steps, time shift 12, CFG 4, LoRA 128 / 64 on all linears); size: flow_grpo's
    "longcat": dict(
        generation=dict(num_frames=33, height=240, width=416, num_inference_steps=16, guidance_scale=4.0),
        shift=12.0,
        lora_rank=128,
        lora_alpha=64.0,
        lora_targets="all",
    ),
}


@dataclass
class WanGRPOConfig:
    """The GRPO family. `algorithm` fills every field left at None with its preset (PRESETS); each field means the
    same for both algorithms, so a LongCat run may e.g. use Flow-GRPO's noise schedule."""

    algorithm: Literal["flow_grpo", "longcat"] = _help(
        "preset for the fields left unset: flow_grpo (Flow-GRPO, flow_grpo's Wan trainer) or longcat (LongCat-GRPO)",
        default="flow_grpo",
    )
    group_size: int = _help("videos sampled per prompt (both papers: 4)", default=4)
    shared_noise: bool | None = _help(
        "the videos of a prompt start from the same initial noise (flow_grpo: False; longcat: True)", default=None
    )
    noise_schedule: Literal["linear", "sqrt"] | None = _help(
        "s_t of the SDE step: 'linear' = a (s_min + (s_max - s_min) t) with s_max = sigmas[1], s_min = sigmas[-1] "
        "(flow_grpo's Wan trainer); 'sqrt' = a sqrt(t / (1 - t)) (Flow-GRPO paper, SD3; LongCat). flow_grpo: linear; "
        "longcat: sqrt",
        default=None,
    )
    noise_level: float | None = _help(
        "a, the factor of the noise schedule (flow_grpo Wan: 1 with 'linear'; flow_grpo SD3 uses 0.7 with 'sqrt'; "
        "longcat: 1)",
        default=None,
    )
    sde_window: list[int] | None = _help(
        "START END: SDE steps (trained) are START..END-1. Unset: flow_grpo samples every step with the SDE and trains "
        "the first T-1 (its timestep_fraction 0.99); with --critical-steps one step per prompt instead",
        default=None,
    )
    critical_steps: int | None = _help(
        "T': one SDE step per prompt, drawn uniformly among the first T' steps, Euler elsewhere (longcat: 6, clamped "
        "to the step count with a warning); 0 = off (flow_grpo)",
        default=None,
    )
    diffusion_cap: float | None = _help(
        "tau: the diffusion term s_t sqrt(|dt|) is capped at tau (longcat: 0.45); 0 = off (flow_grpo)", default=None
    )
    advantage: Literal["group", "max_group_std"] | None = _help(
        "group: rewards summed with their weights, then (r - group mean) / (group std + 1e-4) (flow_grpo); "
        "max_group_std: each reward's (r - group mean) / (largest group std on all processes), then the weighted sum "
        "of these advantages (longcat)",
        default=None,
    )
    adv_clip: float | None = _help("advantages clamped to +-adv_clip (flow_grpo: 5); 0 = off (longcat)", default=None)
    loss_weighting: Literal["uniform", "lambda", "noise_over_sqrt_dt"] | None = _help(
        "uniform: policy + beta KL (the Flow-GRPO paper, flow_grpo's SD3 trainer; flow_grpo preset); lambda: "
        "lambda_policy policy + beta lambda_KL KL with lambda_KL = t / (|dt| (1 - t)), lambda_policy = "
        "sqrt(lambda_KL) (longcat); noise_over_sqrt_dt: the policy term times s_t / sqrt(|dt|), as flow_grpo's Wan "
        "trainer does",
        default=None,
    )
    clip_range: float = _help(
        "PPO clip of the probability ratio (flow_grpo Wan: 1e-3; longcat gives none)", default=1e-3
    )
    kl_beta: float | None = _help(
        "weight of the KL to the reference (flow_grpo Wan: 0.004; longcat: 3e-4)", default=None
    )
    updates_per_rollout: int | None = _help(
        "optimiser steps per rollout batch; the videos are split into that many parts, every update after the first "
        "is off-policy (flow_grpo Wan: 2; longcat: 1)",
        default=None,
    )
    max_grad_norm: float = _help("gradient clipping (flow_grpo: 1.0)", default=1.0)
    ema: bool | None = _help(
        "evaluate and publish an EMA of the LoRA weights (flow_grpo's Wan trainer: decay 0.9, updated every 8 "
        "optimiser steps; not in the paper); flow_grpo: True; longcat: False",
        default=None,
    )
    ema_decay: float = _help(
        "the EMA's largest decay d: ema += (1 - min((1 + n) / (10 + n), d)) (w - ema) after "
        "optimiser step n (flow_grpo: 0.9)",
        default=0.9,
    )
    ema_interval: int = _help("the EMA is updated when (n + 1) %% interval == 0 (flow_grpo Wan: 8)", default=8)
    untrained_steps: int | None = _help(
        "the first N steps sample and score rollouts but do not train (flow_grpo's Wan trainer skips its first 2 "
        "epochs; not in the paper); flow_grpo: 2; longcat: 0",
        default=None,
    )
    mask_zero_advantages: bool | None = _help(
        "videos whose advantage is exactly 0 (a group without spread) leave the loss, KL included, and the mean is "
        "over the others (flow_grpo's Wan trainer; not in the paper); flow_grpo: True; longcat: False",
        default=None,
    )

    def __post_init__(self):
        if self.algorithm not in PRESETS:
            raise ValueError(f"--algorithm {self.algorithm!r}: choose one of {', '.join(PRESETS)}")
        for name, value in PRESETS[self.algorithm].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.critical_steps = self.critical_steps or None  # 0 = off
        self.diffusion_cap = self.diffusion_cap or None
        self.adv_clip = self.adv_clip or None
        if self.sde_window is not None:
            self.sde_window = [int(v) for v in self.sde_window]
            if len(self.sde_window) != 2:
                raise ValueError(f"--sde-window {self.sde_window}: give START END")
            if self.critical_steps is not None:
                raise ValueError(
                    "--sde-window and --critical-steps both choose the SDE steps: give one (with "
                    "--algorithm longcat, --critical-steps 0 turns the critical step off)"
                )
        if self.group_size < 2:
            raise ValueError(f"--group-size {self.group_size}: advantages compare the videos of a prompt, need >= 2")


# ----------------------------------------------------------------------------------------------------------------
# The SDE-step loss weights (the step itself: `integrations/flow_sde.py`)
# ----------------------------------------------------------------------------------------------------------------


def loss_weights(config: WanGRPOConfig, sigma, sigma_next, scale, sigmas) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_policy, w_KL) of SDE-step terms at times `sigma` -> `sigma_next` with noise scale `scale` (B,):
    uniform 1, 1; lambda LongCat's weights (`longcat_loss_weights`); noise_over_sqrt_dt s_t / sqrt(|dt|), 1 (the
    per-step factor of flow_grpo's Wan trainer)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if config.loss_weighting == "lambda":
        return longcat_loss_weights(sigma, sigma_next, float(sigmas[1]))
    if config.loss_weighting == "noise_over_sqrt_dt":
        dt = torch.as_tensor(sigma_next, dtype=torch.float32) - sigma
        return torch.as_tensor(scale, dtype=torch.float32).cpu().reshape(-1) / torch.sqrt(-dt), torch.ones(())
    return torch.ones(()), torch.ones(())


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Where the SDE runs
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """N = prompts x group_size videos, the samples of a prompt next to each other."""

    prompts: list[str]  # (N,)
    trajectory: torch.Tensor  # (N, T + 1, C, F', h, w) float32 latents x at sigma_0 .. sigma_T
    sde_mask: torch.Tensor  # (N, T) bool: the step was an SDE step
    train_mask: torch.Tensor  # (N, T) bool: the step's log-prob is trained
    log_probs: torch.Tensor  # (N, T) float32 log-probs of the SDE steps under the sampling policy (0 elsewhere)
    sigmas: torch.Tensor  # (T + 1,)
    timesteps: torch.Tensor  # (T,)
    videos: torch.Tensor  # (N, F, C, H, W) float32 in [0, 1]


class WanGRPOTrainer:
    """GRPO on one process's prompts (several processes: accelerate/DDP all-reduce the LoRA gradients).

    model: the trained transformer as accelerate prepared it; transformer: the same, unwrapped (sampling, and the
    reference with adapters disabled); rewards: a `descore_plugin.rewards.contract.RewardSet`; micro_batch_size: videos per
    transformer batch in sampling and training (the same in both, so the first update's ratio is exactly 1).
    """

    def __init__(
        self,
        config: WanGRPOConfig,
        accelerator,
        pipe,
        model,
        transformer,
        optimizer,
        prompt_cache,
        generation,
        rewards,
        micro_batch_size: int | None = None,
    ):
        self.config, self.accelerator, self.pipe = config, accelerator, pipe
        self.model, self.transformer, self.optimizer = model, transformer, optimizer
        self.prompt_cache, self.generation, self.rewards = prompt_cache, generation, rewards
        self.micro_batch_size = micro_batch_size
        self.parameters = [p for p in transformer.parameters() if p.requires_grad]
        self.optimizer_steps = 0  # optimiser steps done (the EMA's clock)
        self.ema = None  # a post_training.LoraEMA updated after every optimiser step, when the method keeps one

    def check_batching(self, num_videos: int) -> int:
        """The micro-batch size; raises ValueError unless the videos split evenly into updates and micro-batches."""
        if self.config.noise_level <= 0:
            raise ValueError(
                f"noise_level={self.config.noise_level}: training needs SDE steps with a > 0 (0 is the ODE)"
            )
        updates = self.config.updates_per_rollout
        if updates < 1 or num_videos % updates != 0:
            raise ValueError(
                f"updates_per_rollout={updates}: the {num_videos} videos of a rollout batch (prompts per "
                f"process x group_size {self.config.group_size}) must split evenly into that many updates"
            )
        size = self.micro_batch_size or num_videos // updates
        if (num_videos // updates) % size != 0:
            raise ValueError(f"micro_batch_size={size}: must divide the {num_videos // updates} videos of one update")
        return size

    def step(self, prompts: list[str], generator: torch.Generator, train: bool = True) -> dict[str, float]:
        """One GRPO iteration; returns this process's metrics (reward/<name>, train/*, time/*). train=False: the
        rollouts are sampled and scored, nothing is updated (flow_grpo's first epochs)."""
        micro = self.check_batching(len(prompts) * self.config.group_size)
        started = time.perf_counter()
        rollout = self.sample(prompts, generator, micro)
        sampled = time.perf_counter()
        scores = self.rewards(rollout.videos, rollout.prompts)
        scored = time.perf_counter()
        advantage, stats = advantages(self.config, scores, self.rewards.weights, gather=self.accelerator.gather)
        metrics = {f"train/{key}": value for key, value in stats.items()}
        if train:
            metrics.update({f"train/{key}": value for key, value in self.update(rollout, advantage, micro).items()})
        metrics["train/trained"] = float(train)
        for name, value in scores.items():
            metrics[f"reward/{name}"] = float(torch.nanmean(value.float()))
        metrics["train/advantage_abs_mean"] = float(advantage.abs().mean())
        metrics["train/zero_advantage_fraction"] = float((advantage == 0).float().mean())
        metrics.update(
            {
                "time/sample": sampled - started,
                "time/reward": scored - sampled,
                "time/train": time.perf_counter() - scored,
            }
        )
        return metrics

    def _embeds(self, prompts: list[str]):
        device = self.accelerator.device
        negative = None
        if self.generation.guidance_scale > 1:
            negative = self.prompt_cache.negative(len(prompts)).to(device)
        return self.prompt_cache.embed(prompts).to(device), negative

    @torch.no_grad()
    def sample(self, prompts: list[str], generator: torch.Generator, micro_batch_size: int) -> Rollout:
        """group_size videos per prompt; the SDE steps' samples drawn and their log-probs recorded."""
        config, generation, device = self.config, self.generation, self.accelerator.device
        steps = generation.num_inference_steps
        grid = wan.flow_grid(self.pipe.scheduler, steps, device=device)
        noise = group_noise(config, self.pipe, len(prompts), generation, generator)
        sde, trained = (
            m.repeat_interleave(config.group_size, dim=0) for m in sde_masks(config, steps, len(prompts), generator)
        )
        video_prompts = [p for p in prompts for _ in range(config.group_size)]
        log_probs = torch.zeros(len(video_prompts), steps)
        trajectories, videos = [], []
        self.transformer.eval()
        for start in range(0, len(video_prompts), micro_batch_size):
            rows = slice(start, start + micro_batch_size)
            embeds, negative = self._embeds(video_prompts[rows])
            x = noise[rows].to(device)
            trajectory = [x]
            for i in range(steps):
                velocity = wan.predict_velocity(
                    self.transformer, x, grid.timesteps[i], embeds, negative, generation.guidance_scale
                )
                mask = sde[rows, i].to(device)
                scale = noise_scale(grid.sigmas[i], grid.sigmas, config.noise_schedule, config.noise_level)
                scale = (mask.float() * scale).reshape(-1, *([1] * (x.ndim - 1)))  # 0 = the exact Euler step
                step = sde_step(
                    velocity,
                    x,
                    grid.sigmas[i],
                    grid.sigmas[i + 1],
                    noise_scale=scale,
                    diffusion_cap=config.diffusion_cap,
                    generator=generator,
                )
                if mask.any():
                    log_probs[rows][mask.cpu(), i] = gaussian_log_prob(
                        step.prev_sample[mask], step.mean[mask], step.std[mask]
                    ).cpu()
                x = step.prev_sample
                trajectory.append(x)
            trajectories.append(torch.stack(trajectory, dim=1).cpu())
            videos.append(wan.decode_latents(self.pipe, x).cpu())
        return Rollout(
            prompts=video_prompts,
            trajectory=torch.cat(trajectories),
            sde_mask=sde,
            train_mask=trained,
            log_probs=log_probs,
            sigmas=grid.sigmas.cpu(),
            timesteps=grid.timesteps.cpu(),
            videos=torch.cat(videos),
        )

    def micro_batches(self, rollout: Rollout, micro_batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(rows, steps) of every trained (video, step) term, cut along the sampler's own video chunks, so that the
        transformer sees the batch shapes it saw in sampling and the recomputed log-probs are bit-identical: a chunk
        whose videos each train one step is one micro-batch (each video at its own step); otherwise one micro-batch
        per step, of the chunk's videos trained at that step."""
        n, steps = rollout.train_mask.shape
        terms = []
        for start in range(0, n, micro_batch_size):
            chunk = torch.arange(start, min(start + micro_batch_size, n))
            mask = rollout.train_mask[chunk]
            if mask.sum(dim=1).eq(1).all():
                terms.append((chunk, mask.float().argmax(dim=1)))
                continue
            for step in range(steps):
                rows = chunk[rollout.train_mask[chunk, step]]
                if len(rows):
                    terms.append((rows, torch.full((len(rows),), step, dtype=torch.long)))
        return terms

    def loss(self, rollout: Rollout, rows: torch.Tensor, steps: torch.Tensor, advantage: torch.Tensor):
        """Per-term losses (J,) and statistics of the (video rows[j], step steps[j]) terms:
        w_policy * clipped policy loss + kl_beta * w_KL * KL(mu_theta || mu_ref), the weights 1 (uniform) or
        LongCat's lambdas."""
        config, device = self.config, self.accelerator.device
        x = rollout.trajectory[rows, steps].to(device)
        x_next = rollout.trajectory[rows, steps + 1].to(device)
        sigma, sigma_next = rollout.sigmas[steps], rollout.sigmas[steps + 1]
        timestep = rollout.timesteps[steps].to(device)
        embeds, negative = self._embeds([rollout.prompts[int(r)] for r in rows])
        scale = noise_scale(sigma, rollout.sigmas, config.noise_schedule, config.noise_level).to(device)
        scale = scale.reshape(-1, *([1] * (x.ndim - 1)))
        guidance = self.generation.guidance_scale

        velocity = wan.predict_velocity(self.model, x, timestep, embeds, negative, guidance)
        step = sde_step(
            velocity, x, sigma, sigma_next, noise_scale=scale, diffusion_cap=config.diffusion_cap, prev_sample=x_next
        )
        log_prob = gaussian_log_prob(x_next, step.mean, step.std)
        policy, ratio = clipped_policy_loss(
            log_prob, rollout.log_probs[rows, steps].to(device), advantage[rows].to(device), config.clip_range
        )
        kl = torch.zeros_like(policy)
        if config.kl_beta > 0:
            with torch.no_grad(), wan.disable_adapter(self.transformer):
                ref_velocity = wan.predict_velocity(self.transformer, x, timestep, embeds, negative, guidance)
            ref = sde_step(
                ref_velocity,
                x,
                sigma,
                sigma_next,
                noise_scale=scale,
                diffusion_cap=config.diffusion_cap,
                prev_sample=x_next,
            )
            kl = mean_kl(step.mean, ref.mean, step.std)
        w_policy, w_kl = loss_weights(config, sigma, sigma_next, scale, rollout.sigmas)
        loss = w_policy.to(device) * policy + config.kl_beta * w_kl.to(device) * kl
        stats = {
            "ratio": ratio.detach(),
            "kl": kl.detach(),
            "policy_loss": policy.detach(),
            "loss": loss.detach(),
            "clipped": ((ratio.detach() - 1).abs() > config.clip_range).float(),
        }
        return loss, stats

    def update(self, rollout: Rollout, advantage: torch.Tensor, micro_batch_size: int) -> dict[str, float]:
        """updates_per_rollout optimiser steps; each averages the loss over its terms; gradients accumulate over
        micro-batches without synchronisation and are all-reduced on the update's last backward (every process does
        the same number of backwards), so the LoRA weights stay identical on all processes.
        mask_zero_advantages: the terms of a video with advantage exactly 0 weigh 0 and the mean is over the others
        (they still run, so that every process does the same backwards)."""
        accelerator, config = self.accelerator, self.config
        part = len(rollout.prompts) // config.updates_per_rollout
        terms = self.micro_batches(rollout, micro_batch_size)
        keep = (advantage != 0).float() if config.mask_zero_advantages else torch.ones(advantage.shape)
        collected: dict[str, list[torch.Tensor]] = {}
        first_update_ratios = []
        self.model.train()
        for update in range(config.updates_per_rollout):
            update_terms = [(rows, steps) for rows, steps in terms if int(rows[0]) // part == update]
            count = max(sum(float(keep[rows].sum()) for rows, _ in update_terms), 1.0)
            for index, (rows, steps) in enumerate(update_terms):
                last = index == len(update_terms) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                    loss, stats = self.loss(rollout, rows, steps, advantage)
                    accelerator.backward((loss * keep[rows].to(loss.device)).sum() / count)
                for key, value in stats.items():
                    collected.setdefault(key, []).append(value.float().cpu())
                if update == 0:
                    first_update_ratios.append(stats["ratio"].cpu())
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(self.parameters, config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer_steps += 1
            if self.ema is not None:
                self.ema.update(self.optimizer_steps)
        values = {key: torch.cat(value) for key, value in collected.items()}
        summary = {key: float(value.mean()) for key, value in values.items()}
        summary["ratio_min"], summary["ratio_max"] = float(values["ratio"].min()), float(values["ratio"].max())
        # the first update is on-policy: its ratios must be exactly 1
        summary["first_update_ratio_max_error"] = float((torch.cat(first_update_ratios) - 1).abs().max())
        return summary


# ----------------------------------------------------------------------------------------------------------------
# The method: recipes/wan_flow_grpo.py = recipes/post_train.py flow_grpo | longcat
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class GRPOLoopConfig:
    """The GRPO loop."""

    prompts_per_step: int = _help("prompts per process per step (our default)", default=2)
    micro_batch_size: int | None = _help(
        "videos per transformer batch in sampling and training; unset: one update's videos", default=None
    )
    shift: float | None = _help(
        "scheduler time (flow) shift; unset: the pipeline's (a real pipeline with longcat: its preset 12)", default=None
    )


def _preset_defaults(name: str) -> dict:
    preset = WAN_PRESETS[name]
    return {**preset["generation"], **{key: preset[key] for key in ("lora_rank", "lora_alpha", "lora_targets")}}


class WanGRPO(WanMethod):
    """GRPO post-training of Wan-2.1: Flow-GRPO or LongCat-GRPO (`--algorithm`).

    One step (`WanGRPOTrainer.step`): each process takes --prompts-per-step of ITS prompts and samples --group-size
    videos per prompt (flow_grpo: independent noise, SDE on every step, the first T-1 trained; longcat: shared noise,
    one critical SDE step), scores them with the --reward set, turns the rewards into advantages (flow_grpo: weighted
    sum, per-group z-score; longcat: per reward over the largest group std, then the weighted sum) and takes
    --updates-per-rollout optimiser steps on the clipped policy loss + beta KL to the adapters-off reference.
    flow_grpo's Wan trainer also evaluates and publishes an EMA of the LoRA (--ema), samples without training for its
    first --untrained-steps steps, and leaves zero-advantage videos out of the loss (--mask-zero-advantages).
    Generation and LoRA default to the algorithm's preset (flow_grpo: 33x240x416, 20 steps, CFG 4.5, LoRA 32 / 64 on
    attention; longcat: 16 steps, time shift 12, CFG 4, LoRA 128 / 64 on all linears), a tiny pipeline's own
    generation_defaults.json first.
    """

    name = "GRPO"
    curve_names = ("train/kl", "train/clipped", "train/policy_loss")
    config_classes = (WanGRPOConfig, GRPOLoopConfig)
    defaults = dict(
        learning_rate=1e-4, weight_decay=1e-4, checkpoint_every=50, solver="euler", **_preset_defaults("flow_grpo")
    )
    """flow_grpo's Wan preset and LongCat: learning rate 1e-4; AdamW weight decay 1e-4 (flow_grpo's base config)."""
    help_notes = {
        key: f"--algorithm longcat: {value}"
        for key, value in _preset_defaults("longcat").items()
        if value != _preset_defaults("flow_grpo")[key]
    }
    for _key in WAN_PRESETS["flow_grpo"]["generation"]:
        help_notes[_key] = "; ".join(
            filter(None, [help_notes.get(_key), "a tiny pipeline: its generation_defaults.json"])
        )
    del _key

    @classmethod
    def later_defaults(cls, known) -> dict:
        """LoRA, scheduler shift and generation follow --algorithm (a tiny pipeline keeps its own generation)."""
        preset = WAN_PRESETS[known.algorithm]
        generation = pipeline_generation_defaults(known.pipeline, preset["generation"])
        return {
            **generation,
            "lora_rank": preset["lora_rank"],
            "lora_alpha": preset["lora_alpha"],
            "lora_targets": preset["lora_targets"],
            "shift": None if is_tiny_pipeline(known.pipeline) else preset["shift"],
        }

    def check(self) -> None:
        super().check()
        self.algorithm, self.options = self.config.get(WanGRPOConfig), self.config.get(GRPOLoopConfig)
        self.name = {"flow_grpo": "Flow-GRPO", "longcat": "LongCat-GRPO"}[self.algorithm.algorithm]

    def prepare(self) -> None:
        if self.options.shift is not None:  # the same scheduler with another time shift
            config = self.pipe.scheduler.config
            key = "flow_shift" if "flow_shift" in config else "shift"
            self.pipe.scheduler = type(self.pipe.scheduler).from_config(config, **{key: self.options.shift})
        self.trainer = WanGRPOTrainer(
            self.algorithm,
            self.accelerator,
            self.pipe,
            self.model,
            self.transformer,
            self.optimizer,
            self.prompt_cache,
            self.generation,
            self.rewards,
            self.options.micro_batch_size,
        )
        self.eval_batch_size = self.trainer.check_batching(self.options.prompts_per_step * self.algorithm.group_size)
        if self.algorithm.ema:
            self.ema = LoraEMA(
                self.lora_parameters, self.algorithm.ema_decay, self.algorithm.ema_interval, self.lora_names
            )
            self.trainer.ema = self.ema

    def train_step(self, step: int) -> dict[str, float]:
        prompts = epoch_order(
            [p for _, p in self.my_prompts],
            self.options.prompts_per_step,
            self.run.seed,
            "step_prompts",
            self.rank,
            step,
        )
        generator = torch.Generator().manual_seed(seed_of(self.run.seed, "step", self.rank, step))
        return self.trainer.step(prompts, generator, train=step >= self.algorithm.untrained_steps)

    def extra_state(self) -> dict:
        return {"optimizer_steps": self.trainer.optimizer_steps}

    def load_extra_state(self, state: dict) -> None:
        self.trainer.optimizer_steps = int(state["optimizer_steps"])
