"""GRPO for flow-matching video models: Flow-GRPO and LongCat-GRPO on the Wan-2.1 sigma grid.

Conventions (as in `integrations/wan.py`): x_t = (1 - t) x0 + t eps, the transformer predicts v = eps - x0,
sampling runs from t = 1 to t = 0 on the scheduler's sigma grid, dt = t_next - t < 0.

Two algorithms share one ODE-to-SDE step and differ in where the SDE runs, how advantages are normalised and
how the loss is weighted:

- Flow-GRPO (Liu et al., arXiv 2505.05470, sec. 4; code: yifan123/flow_grpo): the SDE runs on all
  steps (or a window), every SDE step gives a log-prob, advantages are per prompt group, PPO clip, KL to the
  reference on the SDE means.
- LongCat-GRPO (LongCat-Video tech report, arXiv 2510.22200, sec. 3.3 and app. A.1): one shared initial noise per
  group, a single "critical" SDE step among the first T' steps with a truncated diffusion term, max-group-std
  advantage normalisation, several rewards combined at the advantage level, and lambda re-weighting of the
  policy and KL terms.

The reference policy is always the trained transformer with its LoRA adapters disabled
(`with wan.disable_adapter(transformer):`), never a second copy of the weights.

Choices the papers leave open (each also documented where it is made):
- t = 1: s_t is infinite there; `1 - t` becomes `1 - min(t, sigmas[1])` (flow_grpo's rule, extended to the UniPC
  grid whose first sigma is 1 - 1e-6), in s_t and in LongCat's lambda weights alike.
- PPO clip 1e-3 for both algorithms (flow_grpo's Wan preset; LongCat gives none). With the first update of a
  rollout batch exactly on-policy (ratio 1 bit for bit), the clip acts on the later updates only.
- Log-probs and KLs are MEANS over the latent elements (flow_grpo's reduction, which its beta assumes).

Public API, in the order a loop uses it (recipes/wan_flow_grpo.py is the loop):
  FlowGRPOConfig / LongCatGRPOConfig       the two algorithms' settings (published defaults)
  rollout(...) -> Rollout                  groups of SDE videos with per-step log-probs
  descore_rewards, call_reward, score_videos, combined_advantages     rewards -> one advantage per video
  grpo_loss, training_terms, train_on_rollout                          the clipped, KL-regularised updates
  grpo_iteration(...)                      all of the above for one step on one rank
  sde_step, gaussian_log_prob, mean_kl, longcat_step_kl, longcat_loss_weights, group_advantages,
  max_group_std_advantages, clipped_policy_loss      the formulas, separately testable
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass

import torch

from descore_plugin.integrations import wan
from descore_plugin.prompt import DIMENSIONS

# ----------------------------------------------------------------------------------------------------------------
# The ODE-to-SDE step
# ----------------------------------------------------------------------------------------------------------------


def _per_sample(value, like: torch.Tensor) -> torch.Tensor:
    """A float, 0-d or (B,) tensor of times as a float32 tensor that broadcasts against `like` (B, ...)."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def sde_noise_scale(sigma, noise_level: float, sigma_cap: float) -> torch.Tensor:
    """s_t = a * sqrt(t / (1 - t)) (Flow-GRPO sec. 4 "From ODE to SDE"; LongCat-Video sec. 3.3 with a = 1).

    s_t is infinite at t = 1. flow_grpo (`sd3_sde_with_logprob.py`) replaces the `1 - t` of the first grid point
    t = 1 by `1 - sigmas[1]`. We use `1 - min(t, sigma_cap)` with sigma_cap = `sigmas[1]`, the grid's second
    sigma: the same on FlowMatchEuler grids (first sigma exactly 1), and also right on the UniPC grid Wan ships,
    whose first sigma is 1 - 1e-6 (s_t would be ~700 a there and the first step would blow the sample up).
    Every later step is unchanged. `sigma` is a float or a tensor of times; the result has its shape (float32).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    one_minus = 1.0 - sigma.clamp(max=sigma_cap)
    return noise_level * torch.sqrt(sigma / one_minus)


@dataclass
class SDEStep:
    """One Euler-Maruyama step from x_t to x_{t+dt}.

    prev_sample: (B, ...) the sample at t_next (given, or mean + std * noise);
    mean: (B, ...) the Gaussian mean of x_{t+dt} given x_t, in float32 (this is mu_theta, differentiable);
    std: float32 tensor broadcastable to the sample: s_t * sqrt(-dt), after the LongCat truncation if any;
    noise_scale: float32 tensor, the s_t used in the drift (the truncated one where truncation is active).
    """

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    noise_scale: torch.Tensor


def sde_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma,
    sigma_next,
    *,
    noise_level: float,
    sigma_cap: float,
    diffusion_cap: float | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SDEStep:
    """Euler-Maruyama of dx = [v + s_t^2 / (2t) (x + (1 - t) v)] dt + s_t dW (Flow-GRPO sec. 4, "From ODE to SDE").

    mean = x (1 + s_t^2 dt / (2t)) + v (1 + s_t^2 (1 - t) / (2t)) dt,   std = s_t sqrt(-dt),
    x_next = mean + std * N(0, I). With noise_level 0 the step is x + v dt bit for bit: the deterministic Euler
    (ODE) step of diffusers' FlowMatchEulerDiscreteScheduler.

    diffusion_cap (LongCat-Video app. A.1): the diffusion term is truncated, s_t sqrt(|dt|) -> min(s_t sqrt(|dt|),
    tau), and the drift then uses s_t = tau / sqrt(|dt|) so that mean and std describe the same SDE.

    velocity, sample: (B, ...) tensors; sigma, sigma_next: floats or (B,) tensors of times (sigma_next < sigma);
    noise_level: a, a float or a tensor broadcastable to the sample (per-video levels; 0 gives the Euler step);
    prev_sample: the x_next to evaluate (for the log-prob of a stored trajectory); when None a new one is drawn
    with `generator`. The arithmetic is float32 (bf16 overflows in the mean, as flow_grpo notes).
    """
    velocity = velocity.float()
    sample = sample.float()
    t = _per_sample(sigma, sample)
    t_next = _per_sample(sigma_next, sample)
    dt = t_next - t  # < 0
    s = sde_noise_scale(t, noise_level, sigma_cap).to(sample.device)
    if diffusion_cap is not None:
        s = torch.minimum(s, diffusion_cap / torch.sqrt(-dt))
    std = s * torch.sqrt(-dt)
    mean = sample * (1 + s**2 * dt / (2 * t)) + velocity * (1 + s**2 * (1 - t) / (2 * t)) * dt
    if prev_sample is None:
        # drawn on the generator's device (a CPU generator keeps runs reproducible across devices)
        noise_device = generator.device if generator is not None else sample.device
        noise = torch.randn(sample.shape, generator=generator, device=noise_device).to(sample.device)
        prev_sample = mean + std * noise
    return SDEStep(prev_sample=prev_sample.float(), mean=mean, std=std, noise_scale=s)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I), averaged over the non-batch dims (Flow-GRPO sec. 4, "From ODE to SDE"; the mean over
    dims is flow_grpo's reduction).

    x, mean: (B, ...); std: broadcastable, > 0. Returns (B,) float32. `x` is detached: the gradient flows through
    `mean` only, as in the policy gradient.
    """
    x = x.detach().float()
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL of two Gaussians with the same std: ||mu_theta - mu_ref||^2 / (2 std^2) (Flow-GRPO sec. 4, the KL term).

    The squared norm is AVERAGED over the non-batch dims (flow_grpo's reduction, which its beta 0.004 assumes).
    Returns (B,). For the LongCat step this equals |dt|/2 (s_t (1-t)/(2t) + 1/s_t)^2 ||v_theta - v_ref||^2
    (LongCat-Video app. A.1), see `longcat_step_kl`.
    """
    kl = (mean - ref_mean) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def longcat_step_kl(velocity: torch.Tensor, ref_velocity: torch.Tensor, sigma, sigma_next, noise_scale) -> torch.Tensor:
    """KL of one SDE step in velocity form: |dt|/2 (s_t (1-t)/(2t) + 1/s_t)^2 ||v_theta - v_ref||^2
    (LongCat-Video app. A.1), the norm averaged over the non-batch dims. Returns (B,).

    `noise_scale` is the s_t of the step (the truncated one where truncation is active, `SDEStep.noise_scale`).
    Algebraically identical to `mean_kl` of the two step means; kept as the paper writes it and tested against it.
    """
    velocity = velocity.float()
    t = _per_sample(sigma, velocity)
    dt = _per_sample(sigma_next, velocity) - t
    s = _per_sample(noise_scale, velocity)
    coefficient = (-dt) / 2 * (s * (1 - t) / (2 * t) + 1 / s) ** 2
    kl = coefficient * (velocity - ref_velocity.float()) ** 2
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def longcat_loss_weights(sigma, sigma_next, sigma_cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lambda_policy = sqrt(t / (|dt| (1 - t))) and lambda_KL = t / (|dt| (1 - t)) (LongCat-Video app. A.1).

    They cancel the sqrt(|dt| (1 - t) / t) scale of the log-prob gradient of one SDE step, so that the critical
    step's gradient does not vanish at large t or small dt. On the first step `1 - t` is `1 - min(t, sigma_cap)`,
    exactly as in `sde_noise_scale`. sigma, sigma_next: floats or (B,) tensors. Returns two float32 tensors.
    """
    t = torch.as_tensor(sigma, dtype=torch.float32)
    dt = torch.as_tensor(sigma_next, dtype=torch.float32) - t
    one_minus = 1.0 - t.clamp(max=sigma_cap)
    lambda_kl = t / (-dt * one_minus)
    return torch.sqrt(lambda_kl), lambda_kl


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------


class AdvantageError(ValueError):
    """Rewards that cannot be split into prompt groups, or a reward spec that is not usable."""


def _groups(rewards: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    """(N,) rewards ordered group after group -> (N / group_size, group_size)."""
    if rewards.ndim != 1 or rewards.numel() % group_size != 0:
        raise AdvantageError(
            f"{name}: expected a 1-D tensor of rewards whose length is a multiple of the group size "
            f"{group_size} (all samples of a prompt next to each other), got shape {tuple(rewards.shape)}"
        )
    return rewards.float().reshape(-1, group_size)


def _nan_group_stats(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std (ddof 0, as numpy in flow_grpo) of each row, ignoring NaN. Rows of NaN give 0, 0."""
    valid = ~torch.isnan(groups)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    values = torch.where(valid, groups, torch.zeros_like(groups))
    mean = values.sum(dim=1, keepdim=True) / count
    var = (torch.where(valid, groups - mean, torch.zeros_like(groups)) ** 2).sum(dim=1, keepdim=True) / count
    return mean, var.sqrt()


def fill_missing_rewards(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """NaN rewards (e.g. a DeScore answer that did not parse) -> the mean of their prompt group, so that they carry no
    signal when several rewards are summed at the reward level (Flow-GRPO). A group without any score gets 0.
    Not in either paper: a judge's answer may fail to parse, which is not a score."""
    groups = _groups(rewards, group_size, "rewards")
    mean, _ = _nan_group_stats(groups)
    return torch.where(torch.isnan(groups), mean.expand_as(groups), groups).reshape(-1)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, clip: float = 5.0) -> torch.Tensor:
    """Flow-GRPO per-prompt advantages (r - group mean) / (group std + eps), clamped to [-clip, clip]
    (Flow-GRPO sec. 4 "GRPO on flow matching"; flow_grpo `PerPromptStatTracker`, std with ddof 0, `adv_clip_max` 5).

    rewards: (N,) with the samples of a prompt next to each other; NaN entries get advantage 0. Returns (N,)."""
    groups = _groups(rewards, group_size, "rewards")
    mean, std = _nan_group_stats(groups)
    advantages = ((groups - mean) / (std + eps)).clamp(-clip, clip)
    return torch.nan_to_num(advantages, nan=0.0).reshape(-1)


def max_group_std_advantages(
    rewards: torch.Tensor, group_size: int, gather=None, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """LongCat-GRPO max-group-std normalisation (LongCat-Video sec. 3.3): A = (R - group mean) / sigma_max,
    sigma_max = the largest group std over ALL groups, on all ranks.

    rewards: (N,) this rank's rewards, samples of a prompt next to each other. gather: `accelerator.gather`
    (concatenates a tensor over the ranks) or None on one process. eps (1e-4, not from the paper, as in
    Flow-GRPO) keeps a batch with no spread at all finite. NaN rewards get advantage 0.
    Returns (advantages (N,), sigma_max (0-d))."""
    groups = _groups(rewards, group_size, "rewards")
    mean, std = _nan_group_stats(groups)
    all_stds = std.reshape(-1)
    if gather is not None:
        all_stds = gather(all_stds.contiguous())
    sigma_max = all_stds.max()
    advantages = (groups - mean) / (sigma_max + eps)
    return torch.nan_to_num(advantages, nan=0.0).reshape(-1), sigma_max


# ----------------------------------------------------------------------------------------------------------------
# Policy loss
# ----------------------------------------------------------------------------------------------------------------


def clipped_policy_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per sample: max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = exp(logp_new - logp_old)
    (Flow-GRPO sec. 4, the GRPO objective; flow_grpo `train_sd3.py`). All inputs (B,).
    Returns (loss (B,), ratio (B,))."""
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


# ----------------------------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------------------------


class RewardError(ValueError):
    """A reward function that returned something other than one finite-or-NaN score per video."""


def call_reward(name: str, fn, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Score decoded videos with one reward function and return float32 scores (B,).

    Two signatures are accepted, told apart by the number of positional parameters:
      fn(videos, prompts) -> scores                              (a plain reward function)
      fn(videos, prompts, metadata) -> (scores, info)            (the flow_grpo reward interface)
    videos: (B, F, C, H, W) float in [0, 1]; scores: list, numpy array or tensor of B numbers; NaN means
    "no score for this video" (e.g. a judge answer that did not parse) and carries no signal in the advantages.
    """
    parameters = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(parameters) >= 3:
        result = fn(videos, prompts, [{} for _ in prompts])
        if not (isinstance(result, tuple) and len(result) == 2):
            raise RewardError(
                f"reward {name!r}: takes (videos, prompts, metadata), so it must return (scores, info) like a "
                f"flow_grpo reward; got {type(result).__name__}"
            )
        result = result[0]
    else:
        result = fn(videos, prompts)
    scores = torch.as_tensor(result.detach().cpu() if torch.is_tensor(result) else result, dtype=torch.float32)
    if scores.shape != (len(prompts),):
        raise RewardError(
            f"reward {name!r}: expected {len(prompts)} scores (one per video), got shape {tuple(scores.shape)}"
        )
    if torch.isinf(scores).any():
        row = int(torch.isinf(scores).nonzero()[0])
        raise RewardError(f"reward {name!r}: returned an infinite score for videos[{row}]")
    return scores


def score_videos(rewards, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Run every reward of `rewards` (a list of (name, weight, fn)) on the videos: {name: scores (B,)}."""
    return {name: call_reward(name, fn, videos, prompts) for name, _, fn in rewards}


def combined_advantages(
    rewards, scores: dict[str, torch.Tensor], config, gather=None
) -> tuple[torch.Tensor, dict[str, float]]:
    """One advantage per video from several weighted rewards (N,), plus statistics to log.
    config: FlowGRPOConfig or LongCatGRPOConfig; gather: `accelerator.gather` or None (one process).

    flow_grpo: rewards are combined at the REWARD level, r = sum_k w_k r_k, then per-group advantages
      (flow_grpo `multi_score`: a weighted sum of the reward functions' scores; NaN scores first take their group's
      mean, see `fill_missing_rewards`).
    longcat: rewards are combined at the ADVANTAGE level, A = sum_k w_k A_k, each A_k max-group-std normalised
      over all ranks (LongCat-Video sec. 3.3, multi-reward training).
    """
    group_size, stats = config.group_size, {}
    if config.algorithm == "flow_grpo":
        total = sum(weight * fill_missing_rewards(scores[name], group_size) for name, weight, _ in rewards)
        return group_advantages(total, group_size, clip=config.adv_clip), stats
    advantages = torch.zeros(len(next(iter(scores.values()))))
    for name, weight, _ in rewards:
        advantage, sigma_max = max_group_std_advantages(scores[name], group_size, gather=gather)
        stats[f"sigma_max/{name}"] = float(sigma_max)
        advantages = advantages + weight * advantage
    return advantages, stats


def descore_rewards(
    reward_model, selection, think: bool = True, batch_size: int = 8, max_new_tokens: int | None = None
):
    """DeScore as GRPO rewards: a list of (name, weight, fn), the model run ONCE per batch for all of them.

    reward_model: a `descore_plugin.DeScoreReward`; selection: list of (name, weight) with names
      "descore"            the reward head's score (`RewardOutput.rewards`),
      "descore:overall"    the overall score written in the judge's answer block (1..5; needs think=True),
      "descore:<dim>"      one dimension of the answer block, <dim> in subject, dynamics, camera, environment,
                           style: 2 / 1 / 0, and "N/A" as 2 (nothing asked, nothing failed: the convention of
                           `integrations/flow_grpo.dimension_scores`); needs think=True.
    A video whose answer block did not parse gets NaN for "descore:overall" and the dimensions: no signal in its
    group's advantages, and a long run does not stop on one malformed CoT.
    The decoded (B, F, C, H, W) tensor goes straight to `reward_model.score` (no mp4 round trip);
    max_new_tokens None: the model's own CoT budget (its config).
    """
    known = ("descore", "descore:overall") + tuple(f"descore:{d}" for d in DIMENSIONS)
    for name, _ in selection:
        if name not in known:
            raise RewardError(f"reward {name!r}: unknown DeScore reward; choose from {', '.join(known)}")
        if name != "descore" and not think:
            raise RewardError(f"reward {name!r}: reads the judge's answer block, which exists only with think=True")
    cache = {"videos": None, "prompts": None, "output": None}

    def output_for(videos, prompts):
        # The same batch is asked for by every selected reward: score it once.
        if cache["videos"] is not videos or cache["prompts"] != list(prompts):
            cache["output"] = reward_model.score(
                videos, list(prompts), think=think, batch_size=batch_size, max_new_tokens=max_new_tokens
            )
            cache["videos"], cache["prompts"] = videos, list(prompts)
        return cache["output"]

    def make(name):
        def descore_reward(videos, prompts):
            output = output_for(videos, prompts)
            if name == "descore":
                return output.rewards
            if name == "descore:overall":
                return [math.nan if s is None else float(s) for s in output.overall_scores]
            dimension = name.split(":", 1)[1]
            return [_dimension_value(scores, dimension) for scores in output.dimensional_scores]

        return descore_reward

    return [(name, weight, make(name)) for name, weight in selection]


def _dimension_value(scores: dict | None, dimension: str) -> float:
    if scores is None:
        return math.nan
    value = scores.get(dimension)
    if value is None:
        return math.nan
    return 2.0 if value == "N/A" else float(value)


# ----------------------------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FlowGRPOConfig:
    """Flow-GRPO (arXiv 2505.05470; flow_grpo `config/grpo.py::general_ocr_wan2_1`, the Wan-2.1 preset)."""

    group_size: int = 4  # videos per prompt (Wan preset num_image_per_prompt 4)
    noise_level: float = 0.7  # a in s_t = a sqrt(t / (1 - t)) (flow_grpo default)
    sde_window: tuple[int, int] | None = None  # [start, end) step indices that are SDE steps; None: every step
    clip_range: float = 1e-3  # PPO clip of the ratio (Wan preset 1e-3; the SD3 presets use 1e-4 and 1e-5)
    kl_beta: float = 0.004  # weight of the KL to the reference (adapters disabled) (Wan preset)
    adv_clip: float = 5.0  # advantages clamped to +-adv_clip (flow_grpo adv_clip_max)
    updates_per_rollout: int = 2  # optimiser steps per batch of rollouts; the videos are split in that many parts
    # (the Wan preset: 2 sampling batches, gradient_accumulation_steps 1 -> 2 updates per epoch). Every update after
    # the first is off-policy, which is what the clipped ratio is for.
    max_grad_norm: float = 1.0  # gradient clipping (flow_grpo config/base.py)

    @property
    def algorithm(self) -> str:
        return "flow_grpo"


@dataclass
class LongCatGRPOConfig:
    """LongCat-GRPO (LongCat-Video tech report, arXiv 2510.22200, sec. 3.3 and app. A.1)."""

    group_size: int = 4  # videos per prompt (report: 4)
    noise_level: float = 1.0  # a in s_t = a sqrt(t / (1 - t)) (report: a = 1)
    diffusion_cap: float = 0.45  # tau: s_t sqrt(|dt|) truncated to tau (report: 0.45)
    critical_steps: int = 6  # T': the critical SDE step is drawn uniformly among the first T' steps (report: 6 of 16)
    clip_range: float = 1e-3  # PPO clip of the ratio; the report gives none: Flow-GRPO's Wan value (our choice)
    kl_beta: float = 3e-4  # weight of the (lambda_KL re-weighted) KL term (report: 3e-4)
    updates_per_rollout: int = 1  # optimiser steps per batch of rollouts (report: 64 prompts x 4 videos per update)
    max_grad_norm: float = 1.0  # gradient clipping (not in the report; Flow-GRPO's value)

    @property
    def algorithm(self) -> str:
        return "longcat"


def sde_step_mask(config, num_steps: int, num_prompts: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(num_prompts, num_steps) bool: which sampling steps of each prompt's videos are SDE steps.

    flow_grpo: the steps of `sde_window` (all steps when None) for every prompt (Flow-GRPO sec. 4; the window is
      flow_grpo's `sde_window_range`). longcat: ONE critical step per prompt, uniform among the first
      `critical_steps` steps (LongCat-Video sec. 3.3), shared by the prompt's group; Euler everywhere else.
    """
    mask = torch.zeros(num_prompts, num_steps, dtype=torch.bool)
    if config.algorithm == "flow_grpo":
        start, end = config.sde_window if config.sde_window is not None else (0, num_steps)
        if not 0 <= start < end <= num_steps:
            raise ValueError(f"sde_window={config.sde_window}: needs 0 <= start < end <= {num_steps} (the step count)")
        mask[:, start:end] = True
    else:
        if not 1 <= config.critical_steps <= num_steps:
            raise ValueError(f"critical_steps={config.critical_steps}: needs 1 <= T' <= {num_steps} (the step count)")
        critical = torch.randint(0, config.critical_steps, (num_prompts,), generator=generator)
        mask[torch.arange(num_prompts), critical] = True
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Rollouts
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """N = prompts x group_size videos sampled with SDE steps, the samples of a prompt next to each other."""

    prompts: list[str]  # (N,) the prompt of each video
    trajectory: torch.Tensor  # (N, T + 1, C, F', h, w) float32 states x at sigma_0 .. sigma_T (normalised latents)
    sde_mask: torch.Tensor  # (N, T) bool: step i of video n was an SDE step (its log-prob is trained)
    log_probs: torch.Tensor  # (N, T) float32 log-probs of the SDE steps under the sampling policy (0 elsewhere)
    sigmas: torch.Tensor  # (T + 1,) float32 sigma grid
    timesteps: torch.Tensor  # (T,) transformer timesteps of the grid
    videos: torch.Tensor | None = None  # (N, F, C, H, W) float32 in [0, 1], decoded final latents


def _sde_hook(config, sigma_cap: float, sde_mask: torch.Tensor, log_probs: torch.Tensor, generator):
    """A `wan.sample` hook that replaces the steps marked in `sde_mask` (N, T) by SDE steps with
    `config.noise_level` and writes their log-probs into `log_probs` (N, T). Unmarked videos of a step take the
    exact Euler step inside the same call (noise level 0); a step with no marked video is left to the sampler."""
    diffusion_cap = config.diffusion_cap if config.algorithm == "longcat" else None

    def hook(flow_step):
        rows = sde_mask[:, flow_step.index]
        if not rows.any():
            return None
        latents = flow_step.latents
        levels = rows.float().to(latents.device) * config.noise_level
        step = sde_step(
            flow_step.velocity,
            latents,
            flow_step.sigma,
            flow_step.sigma_next,
            noise_level=levels.reshape(-1, *([1] * (latents.ndim - 1))),
            sigma_cap=sigma_cap,
            diffusion_cap=diffusion_cap,
            generator=generator,
        )
        if config.noise_level > 0:
            rows = rows.to(latents.device)
            log_prob = gaussian_log_prob(step.prev_sample[rows], step.mean[rows], step.std[rows])
            log_probs[rows.cpu(), flow_step.index] = log_prob.cpu()
        return step.prev_sample

    return hook


@torch.no_grad()
def rollout(
    pipe,
    transformer,
    prompt_cache,
    prompts: list[str],
    generation,
    config,
    generator: torch.Generator,
    micro_batch_size: int | None = None,
    decode: bool = True,
) -> Rollout:
    """Sample `config.group_size` videos for each prompt with SDE steps and record the log-probs.

    pipe: the WanPipeline (scheduler, VAE); transformer: the model to sample with (unwrapped, LoRA active);
    prompt_cache: `wan.PromptCache`; generation: `wan.GenerationConfig` (size, steps, CFG);
    micro_batch_size: videos per transformer batch (default: all). The training step must use the same value
    so that the recomputed log-probs are bit-identical (ratio exactly 1 on-policy).
    Initial noise: independent per video (flow_grpo) or shared by the videos of a prompt (LongCat-Video sec. 3.3).
    """
    group = config.group_size
    n = len(prompts) * group
    micro_batch_size = micro_batch_size or n
    device = next(transformer.parameters()).device
    steps = generation.num_inference_steps
    grid = wan.flow_grid(pipe.scheduler, steps, device=device)
    sigma_cap = float(grid.sigmas[1])

    if config.algorithm == "longcat":
        noise = wan.initial_noise(pipe, len(prompts), generation, generator=generator).repeat_interleave(group, dim=0)
    else:
        noise = wan.initial_noise(pipe, n, generation, generator=generator)
    mask = sde_step_mask(config, steps, len(prompts), generator=generator).repeat_interleave(group, dim=0)
    log_probs = torch.zeros(n, steps)
    video_prompts = [p for p in prompts for _ in range(group)]

    trajectories, videos = [], []
    for start in range(0, n, micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        chunk_prompts = video_prompts[rows]
        embeds = prompt_cache.embed(chunk_prompts).to(device)
        negative = prompt_cache.negative(len(chunk_prompts)).to(device) if generation.guidance_scale > 1 else None
        chunk_log_probs = torch.zeros(len(chunk_prompts), steps)
        hook = _sde_hook(config, sigma_cap, mask[rows], chunk_log_probs, generator)
        output = wan.sample(
            transformer,
            pipe.scheduler,
            noise[rows].to(device),
            embeds,
            negative,
            num_inference_steps=steps,
            guidance_scale=generation.guidance_scale,
            solver="euler",
            hook=hook,
            return_trajectory=True,
        )
        log_probs[rows] = chunk_log_probs
        trajectories.append(torch.stack(output.trajectory, dim=1).cpu())
        if decode:
            videos.append(wan.decode_latents(pipe, output.latents).cpu())
    return Rollout(
        prompts=video_prompts,
        trajectory=torch.cat(trajectories),
        sde_mask=mask,
        log_probs=log_probs,
        sigmas=grid.sigmas.cpu(),
        timesteps=grid.timesteps.cpu(),
        videos=torch.cat(videos) if decode else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# The loss of one micro-batch
# ----------------------------------------------------------------------------------------------------------------


def grpo_loss(
    model,
    transformer,
    rollout: Rollout,
    rows: torch.Tensor,
    steps: torch.Tensor,
    advantages: torch.Tensor,
    config,
    prompt_cache,
    guidance_scale: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-term GRPO losses of the (video rows[j], SDE step steps[j]) pairs, (J,), and statistics.

    model: the trained transformer as called for gradients (its DDP/accelerate wrapper under accelerate);
    transformer: the same model unwrapped, run with adapters disabled as the reference.
    flow_grpo term:  clipped policy loss + beta KL(mu_theta || mu_ref)              (Flow-GRPO sec. 4)
    longcat term:    lambda_policy * clipped policy loss + beta lambda_KL * KL      (LongCat-Video app. A.1)
    where the KL of the step is ||mu_theta - mu_ref||^2 / (2 std^2) = |dt|/2 (s(1-t)/(2t) + 1/s)^2 ||dv||^2.
    """
    device = next(transformer.parameters()).device
    x = rollout.trajectory[rows, steps].to(device)
    x_next = rollout.trajectory[rows, steps + 1].to(device)
    sigma, sigma_next = rollout.sigmas[steps], rollout.sigmas[steps + 1]
    timestep = rollout.timesteps[steps].to(device)
    sigma_cap = float(rollout.sigmas[1])
    prompts = [rollout.prompts[int(r)] for r in rows]
    embeds = prompt_cache.embed(prompts).to(device)
    negative = prompt_cache.negative(len(prompts)).to(device) if guidance_scale > 1 else None
    step_kwargs = dict(
        noise_level=config.noise_level,
        sigma_cap=sigma_cap,
        diffusion_cap=config.diffusion_cap if config.algorithm == "longcat" else None,
        prev_sample=x_next,
    )

    velocity = wan.predict_velocity(model, x, timestep, embeds, negative, guidance_scale)
    step = sde_step(velocity, x, sigma, sigma_next, **step_kwargs)
    log_prob = gaussian_log_prob(x_next, step.mean, step.std)
    old_log_prob = rollout.log_probs[rows, steps].to(device)
    policy, ratio = clipped_policy_loss(log_prob, old_log_prob, advantages[rows].to(device), config.clip_range)

    kl = torch.zeros_like(policy)
    if config.kl_beta > 0:
        with torch.no_grad(), wan.disable_adapter(transformer):
            ref_velocity = wan.predict_velocity(transformer, x, timestep, embeds, negative, guidance_scale)
        ref_mean = sde_step(ref_velocity, x, sigma, sigma_next, **step_kwargs).mean
        kl = mean_kl(step.mean, ref_mean, step.std)

    if config.algorithm == "longcat":
        lambda_policy, lambda_kl = longcat_loss_weights(sigma, sigma_next, sigma_cap)
        loss = lambda_policy.to(device) * policy + config.kl_beta * lambda_kl.to(device) * kl
    else:
        loss = policy + config.kl_beta * kl
    stats = {
        "ratio": ratio.detach(),
        "kl": kl.detach(),
        "policy_loss": policy.detach(),
        "clipped": ((ratio.detach() - 1).abs() > config.clip_range).float(),
    }
    return loss, stats


def training_terms(
    rollout: Rollout, config, micro_batch_size: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (rows, steps) micro-batches a rollout is trained on, cut along the rollout's own micro-batches of videos.

    Each SDE step of each video is one term. flow_grpo: one micro-batch per (video chunk, SDE step): the rows are
    the videos the sampler batched at that step. longcat: one micro-batch per video chunk, each video at its own
    critical step. Keeping the sampler's batch shapes makes the recomputed log-probs bit-identical on-policy.
    """
    n, steps = rollout.sde_mask.shape
    micro_batch_size = micro_batch_size or n
    terms = []
    for start in range(0, n, micro_batch_size):
        chunk = torch.arange(start, min(start + micro_batch_size, n))
        mask = rollout.sde_mask[chunk]
        if config.algorithm == "longcat":
            terms.append((chunk, mask.float().argmax(dim=1)))
            continue
        for step in range(steps):
            rows = chunk[mask[:, step]]
            if len(rows):
                terms.append((rows, torch.full((len(rows),), step, dtype=torch.long)))
    return terms


# ----------------------------------------------------------------------------------------------------------------
# One GRPO iteration: rollouts -> rewards -> advantages -> updates
# ----------------------------------------------------------------------------------------------------------------


def check_batching(num_videos: int, config, micro_batch_size: int | None) -> int:
    """The micro-batch size to use; raises ValueError unless videos split evenly into updates and micro-batches
    and the noise level gives a policy with a density (a > 0)."""
    if config.noise_level <= 0:
        raise ValueError(f"noise_level={config.noise_level}: training needs SDE steps with a > 0 (0 is the ODE)")
    updates = config.updates_per_rollout
    if updates < 1 or num_videos % updates != 0:
        raise ValueError(
            f"updates_per_rollout={updates}: the {num_videos} videos of a rollout batch (prompts per rank x "
            f"group_size {config.group_size}) must split evenly into that many updates"
        )
    micro_batch_size = micro_batch_size or num_videos // updates
    if (num_videos // updates) % micro_batch_size != 0:
        raise ValueError(
            f"micro_batch_size={micro_batch_size}: must divide the {num_videos // updates} videos of one update"
        )
    return micro_batch_size


def train_on_rollout(
    accelerator,
    model,
    transformer,
    optimizer,
    parameters,
    rollout: Rollout,
    advantages: torch.Tensor,
    config,
    prompt_cache,
    guidance_scale: float,
    micro_batch_size: int,
) -> dict[str, float]:
    """`config.updates_per_rollout` optimiser steps on one rollout batch; returns mean statistics.

    Each update averages the loss over its (video, SDE step) terms; gradients are accumulated over micro-batches
    without synchronisation and all-reduced by accelerate/DDP on the update's last backward (every rank does the
    same number of backwards), so the LoRA weights stay identical on all ranks.
    """
    terms = training_terms(rollout, config, micro_batch_size)
    part = len(rollout.prompts) // config.updates_per_rollout
    collected: dict[str, list[torch.Tensor]] = {}
    model.train()
    for update in range(config.updates_per_rollout):
        update_terms = [(rows, steps) for rows, steps in terms if int(rows[0]) // part == update]
        count = sum(len(rows) for rows, _ in update_terms)
        for index, (rows, steps) in enumerate(update_terms):
            last = index == len(update_terms) - 1
            context = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with context:
                loss, stats = grpo_loss(
                    model, transformer, rollout, rows, steps, advantages, config, prompt_cache, guidance_scale
                )
                accelerator.backward(loss.sum() / count)
            stats["loss"] = loss.detach()
            for key, value in stats.items():
                collected.setdefault(key, []).append(value.float().cpu())
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    values = {key: torch.cat(value) for key, value in collected.items()}
    summary = {key: float(value.mean()) for key, value in values.items()}
    summary["ratio_min"], summary["ratio_max"] = float(values["ratio"].min()), float(values["ratio"].max())
    # the on-policy part: ratios of the first update's terms, which must be exactly 1
    first = sum(len(rows) for rows, _ in terms if int(rows[0]) // part == 0)
    summary["first_update_ratio_max_error"] = float((values["ratio"][:first] - 1).abs().max())
    return summary


def grpo_iteration(
    accelerator,
    pipe,
    model,
    transformer,
    optimizer,
    parameters,
    prompt_cache,
    prompts: list[str],
    rewards,
    generation,
    config,
    generator: torch.Generator,
    micro_batch_size: int | None = None,
) -> dict[str, float]:
    """One GRPO iteration on this rank's `prompts`: sample groups with SDE steps, score the decoded videos with
    `rewards` (a list of (name, weight, fn)), compute the advantages (per group for flow_grpo; max-group-std over
    all ranks for longcat), and take `config.updates_per_rollout` optimiser steps. Returns metrics for logging;
    the reward means are over ALL ranks (`reward/<name>`), the timings of this rank (`time/...`, seconds)."""
    n = len(prompts) * config.group_size
    micro_batch_size = check_batching(n, config, micro_batch_size)
    started = time.perf_counter()
    model.eval()
    batch = rollout(pipe, transformer, prompt_cache, prompts, generation, config, generator, micro_batch_size)
    sampled = time.perf_counter()
    scores = score_videos(rewards, batch.videos, batch.prompts)
    scored = time.perf_counter()
    advantages, stats = combined_advantages(rewards, scores, config, gather=accelerator.gather)
    summary = train_on_rollout(
        accelerator,
        model,
        transformer,
        optimizer,
        parameters,
        batch,
        advantages,
        config,
        prompt_cache,
        generation.guidance_scale,
        micro_batch_size,
    )
    trained = time.perf_counter()
    metrics = {f"train/{key}": value for key, value in summary.items()}
    metrics.update(stats)
    for name, value in scores.items():
        gathered = accelerator.gather(value.to(accelerator.device))
        metrics[f"reward/{name}"] = float(torch.nanmean(gathered))
    metrics["advantage_abs_mean"] = float(advantages.abs().mean())
    metrics["time/sample"] = sampled - started
    metrics["time/reward"] = scored - sampled
    metrics["time/train"] = trained - scored
    return metrics
