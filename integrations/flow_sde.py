"""The ODE-to-SDE step of flow-matching GRPO and its per-step math: noise scale, Euler-Maruyama step, Gaussian
log-probability, KL to the reference, LongCat's loss weights and the PPO-clipped surrogate.

Pure tensor functions with no configuration: `integrations/grpo.py` chooses between them from its config and runs
them inside its sampler and update. Conventions (as in `integrations/wan.py`): x_t = (1 - t) x0 + t eps, the
transformer predicts v = eps - x0, sampling runs from t = 1 to t = 0, dt = t_next - t < 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _per_sample(value, like: torch.Tensor) -> torch.Tensor:
    """A float, 0-d or (B,) tensor as a float32 tensor that broadcasts against `like` (B, ...)."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def noise_scale(sigma, sigmas: torch.Tensor, schedule: str, noise_level: float) -> torch.Tensor:
    """s_t of the SDE step at time(s) `sigma` on the grid `sigmas` (N + 1,), float32 with the shape of `sigma`.

    linear: a (s_min + (s_max - s_min) t), s_max = sigmas[1], s_min = sigmas[-1] (flow_grpo's Wan trainer; its
        step std s_t sqrt(|dt|) grows linearly with t).
    sqrt:   a sqrt(t / (1 - t)) (Flow-GRPO sec. 4; LongCat-Video sec. 3.3). Infinite at t = 1, so `1 - t` is
        `1 - min(t, sigmas[1])` (flow_grpo's rule; it also covers Wan's UniPC grid whose first sigma is 1 - 1e-6).
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    s_max, s_min = float(sigmas[1]), float(sigmas[-1])
    if schedule == "linear":
        return noise_level * (s_min + (s_max - s_min) * sigma)
    if schedule == "sqrt":
        return noise_level * torch.sqrt(sigma / (1.0 - sigma.clamp(max=s_max)))
    raise ValueError(f"noise_schedule={schedule!r}: choose 'linear' or 'sqrt'")


@dataclass
class SDEStep:
    """One Euler-Maruyama step: prev_sample (B, ...) the sample at t_next; mean (B, ...) its Gaussian mean
    (differentiable, float32); std the step std s_t sqrt(|dt|) (after the cap); noise_scale the s_t used."""

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    noise_scale: torch.Tensor


def sde_step(
    velocity,
    sample,
    sigma,
    sigma_next,
    *,
    noise_scale,
    diffusion_cap: float | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SDEStep:
    """Euler-Maruyama of dx = [v + s_t^2 / (2t) (x + (1 - t) v)] dt + s_t dW (Flow-GRPO sec. 4):

        mean = x (1 + s_t^2 dt / (2t)) + v (1 + s_t^2 (1 - t) / (2t)) dt,   std = s_t sqrt(-dt).

    With s_t = 0 the step is x + v dt bit for bit (diffusers' FlowMatchEulerDiscreteScheduler.step).
    diffusion_cap tau (LongCat-Video app. A.1): std = min(s_t sqrt(|dt|), tau), and the drift uses
    s_t = tau / sqrt(|dt|) where capped, so that mean and std describe one SDE.
    sigma, sigma_next: floats or (B,) tensors; noise_scale: s_t, broadcastable to the sample (0 rows = Euler);
    prev_sample: the x_next to evaluate (a stored trajectory), else drawn with `generator` (on its device).
    Float32 arithmetic (bf16 overflows in the mean).
    """
    velocity, sample = velocity.float(), sample.float()
    t, t_next = _per_sample(sigma, sample), _per_sample(sigma_next, sample)
    dt = t_next - t
    s = torch.as_tensor(noise_scale, dtype=torch.float32, device=sample.device)
    if diffusion_cap is not None:
        s = torch.minimum(s, diffusion_cap / torch.sqrt(-dt))
    std = s * torch.sqrt(-dt)
    mean = sample * (1 + s**2 * dt / (2 * t)) + velocity * (1 + s**2 * (1 - t) / (2 * t)) * dt
    if prev_sample is None:
        noise_device = generator.device if generator is not None else sample.device
        noise = torch.randn(sample.shape, generator=generator, device=noise_device).to(sample.device)
        prev_sample = mean + std * noise
    return SDEStep(prev_sample=prev_sample.float(), mean=mean, std=std, noise_scale=s)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) averaged over the non-batch dims (flow_grpo's reduction). (B,); the gradient flows
    through `mean` only."""
    x = x.detach().float()
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL of two Gaussians with one std, ||mu_theta - mu_ref||^2 / (2 std^2), averaged over the non-batch dims
    (Flow-GRPO sec. 4; the mean is flow_grpo's reduction, which its beta assumes). (B,)."""
    kl = (mean - ref_mean) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def longcat_step_kl(velocity, ref_velocity, sigma, sigma_next, noise_scale) -> torch.Tensor:
    """The same KL in LongCat's velocity form, |dt|/2 (s_t (1-t)/(2t) + 1/s_t)^2 ||v_theta - v_ref||^2
    (LongCat-Video app. A.1); algebraically equal to `mean_kl` of the step means (tested). (B,)."""
    velocity = velocity.float()
    t = _per_sample(sigma, velocity)
    dt = _per_sample(sigma_next, velocity) - t
    s = _per_sample(noise_scale, velocity)
    kl = (-dt) / 2 * (s * (1 - t) / (2 * t) + 1 / s) ** 2 * (velocity - ref_velocity.float()) ** 2
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def longcat_loss_weights(sigma, sigma_next, sigma_cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lambda_policy = sqrt(t / (|dt| (1 - t))), lambda_KL = t / (|dt| (1 - t)) (LongCat-Video app. A.1): they cancel
    the sqrt(|dt| (1 - t) / t) scale of one SDE step's log-prob gradient. `1 - t` is `1 - min(t, sigma_cap)`."""
    t = torch.as_tensor(sigma, dtype=torch.float32)
    dt = torch.as_tensor(sigma_next, dtype=torch.float32) - t
    lambda_kl = t / (-dt * (1.0 - t.clamp(max=sigma_cap)))
    return torch.sqrt(lambda_kl), lambda_kl


def clipped_policy_loss(log_prob, old_log_prob, advantages, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = exp(logp_new - logp_old) (Flow-GRPO sec. 4).
    All (B,); returns (loss, ratio)."""
    ratio = torch.exp(log_prob - old_log_prob.detach())
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(-advantages * ratio, clipped), ratio
