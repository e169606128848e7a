"""Every loss and rule-based reward of DeScore training, one function each, with its source.

Conventions: `margin` d = r_chosen - r_rejected (or r_A - r_B for ties); rewards are the head's outputs.
"""

import math

import torch
import torch.nn.functional as F

from descore_plugin.modeling.prompt import answer_agreement


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Stage 1 and the stage-2 auxiliary loss (DeScore Sec. 3.2): -log sigmoid(r_chosen - r_rejected), mean.
    mask (0/1 per row): the official cold start's `loss * nontied_mask` before the mean, so a row without a verdict
    is a row of loss 0 that still counts in the mean (the gradient is scaled by the decided fraction)."""
    rows = -F.logsigmoid(r_chosen - r_rejected)
    return rows.mean() if mask is None else (rows * mask).mean()


def bradley_terry_ties_loss(
    r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, k: float = 5.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry with ties (Rao-Kupper, theta = k = 5), as VideoAlign trains
    (its reward-model trainer: Rao and Kupper 1967 with theta = 5).

    labels: +1 = A preferred, -1 = B preferred, 0 = tie. With d = r_chosen - r_rejected:
        non-tie: -log sigmoid(d - ln k)
        tie:     -log sigmoid(d - ln k) - log sigmoid(-d - ln k) - ln(k^2 - 1)   (symmetric in d)
    mask (0/1 per row): rows of loss 0 that count in the mean (rows labelled "invalid"), as `bradley_terry_loss`.
    """
    log_k = math.log(k)
    d = torch.where(labels < 0, r_b - r_a, r_a - r_b)
    non_tie = -F.logsigmoid(d - log_k)
    tie = -F.logsigmoid(d - log_k) - F.logsigmoid(-d - log_k) - math.log(k * k - 1)
    rows = torch.where(labels == 0, tie, non_tie)
    return rows.mean() if mask is None else (rows * mask).mean()


def length_reward(text: str, thresholds=(500, 1000, 1500, 2000), values=(0.0, 0.2, 0.4, 0.6, 1.0)) -> float:
    """Stage-2 length term (official code): a step function of the character count of the response."""
    for threshold, value in zip(thresholds, values):
        if len(text) < threshold:
            return value
    return values[-1]


def rollout_reward(
    text: str, truth: dict, weights=(0.7, 0.1, 0.2), length_thresholds=(500, 1000, 1500, 2000), parser: str = "official"
) -> dict:
    """Rule-based reward of one stage-2 rollout (DeScore Sec. 3.3, official defaults):
        0.7 * sub-dimension accuracy (fraction of ground-truth dimensions whose predicted value is == to the truth;
              a missing one counts as wrong)
      + 0.1 * format (1 if the <answer> JSON has `dimensional_scores`)
      + 0.2 * length step (<500 chars: 0, <1000: 0.2, <1500: 0.4, <2000: 0.6, else 1).
    parser: "official" (first closed <answer> block, exact `==` against the data's values) or "lenient" (ours);
    see `prompt.answer_agreement`. The head's score is not part of it. Returns the total and its three terms."""
    terms = answer_agreement(text, truth, parser)
    length = length_reward(text, length_thresholds)
    w_acc, w_format, w_length = weights
    total = w_acc * terms["accuracy"] + w_format * terms["format"] + w_length * length
    return {"reward": total, "accuracy": terms["accuracy"], "format": terms["format"], "length": length}


def group_advantages_unbiased(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages (DeScore Sec. 3.3 as the official verl code computes them): rewards (G, n) of n rollouts per
    group -> (r - group mean) / (group std + eps), with torch's default UNBIASED std (divides by n - 1)."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True)
    return (rewards - mean) / (std + eps)


def kl_low_variance(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The "low-variance" KL estimator (k3, Schulman 2020) with verl's clamps, per token:
    x = clamp(ref - logp, -20, 20); clamp(exp(x) - x - 1, -10, 10)."""
    delta = (ref_logp - logp).clamp(-20, 20)
    return (delta.exp() - delta - 1).clamp(-10, 10)


def ppo_dual_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    clip_dual: float = 3.0,
) -> dict:
    """Per-token PPO policy loss with an asymmetric clip and dual clip (verl's "default" policy loss, as the official
    stage 2 runs it). logp, old_logp: (N, T); advantages: (N,). With log r = logp - old_logp:
        ratio = exp(clamp(log r, -20, 20)),  clipped = exp(clamp(log r, ln(1 - clip_low), ln(1 + clip_high)))
        L_hi = max(-A * ratio, -A * clipped)          (the usual pessimistic PPO bound)
        L = min(L_hi, -A * clip_dual) where A < 0, else L_hi   (dual clip: a bad token's loss is bounded)
    Returns {"loss": (N, T), "ratio": (N, T), "clipped": (N, T) bool where the clip or dual clip decided}."""
    log_ratio = logp - old_logp
    ratio = log_ratio.clamp(-20.0, 20.0).exp()
    clipped = log_ratio.clamp(math.log(1 - clip_low), math.log(1 + clip_high)).exp()
    adv = advantages.unsqueeze(-1)
    unclipped_loss, clipped_loss = -adv * ratio, -adv * clipped
    upper = torch.maximum(unclipped_loss, clipped_loss)
    dual = torch.minimum(upper, -adv * clip_dual)
    loss = torch.where(adv < 0, dual, upper)
    return {"loss": loss, "ratio": ratio, "clipped": loss != unclipped_loss}


def grpo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    clip_dual: float = 3.0,
    num_tokens: float | None = None,
) -> dict:
    """Stage-2 policy loss with token-level aggregation (DAPO style, as officially): the per-token dual-clip PPO loss
    plus kl_coef x the low-variance KL to the reference, summed over the supervised tokens of `mask` (N, T) and
    divided by `num_tokens` (the token count of the whole mini-batch when this is one of its micro-batches; default:
    this batch's own). Also returns token means of the KL, the ratio and the clipped fraction (for logging)."""
    ppo = ppo_dual_clip_loss(logp, old_logp, advantages, clip_low, clip_high, clip_dual)
    kl = kl_low_variance(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = ppo["loss"] + kl_coef * kl
    own = mask.sum().clamp_min(1)
    num_tokens = own if num_tokens is None else num_tokens
    return {
        "loss": (per_token * mask).sum() / num_tokens,
        "kl": (kl * mask).sum() / own,
        "ratio": (ppo["ratio"] * mask).sum() / own,
        "clip_fraction": (ppo["clipped"].float() * mask).sum() / own,
    }


# ---------------------------------------------------------------------- score distributions (Z-Reward, our reading)
def pointwise_distribution_loss(
    logits: torch.Tensor, target_scores: torch.Tensor, bins: torch.Tensor, sigma: float = 0.25
) -> torch.Tensor:
    """Direct pointwise supervision of the score distribution (Z-Reward GDSO, arXiv 2606.09076; exact formula not
    published, this is our reading): cross-entropy between the predicted bin distribution and a Gaussian-smoothed
    one-hot at the labelled score (std `sigma`, in score units). logits (B, K), target_scores (B,), bins (K,)."""
    target = torch.exp(-0.5 * ((bins.unsqueeze(0) - target_scores.unsqueeze(1)) / sigma) ** 2)
    target = target / target.sum(-1, keepdim=True)
    return -(target * logits.float().log_softmax(-1)).sum(-1).mean()


def score_gap_loss(mean_a: torch.Tensor, mean_b: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """Pairwise supervision of score gaps (GDSO-style, our reading): the expected-score difference of a pair should
    equal the labelled score difference. Squared error, mean over pairs."""
    return ((mean_a - mean_b) - gap).square().mean()


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Reasoning-internalised score distillation (Z-Reward RISD, our reading): KL(teacher || student) between the
    teacher's CoT-conditioned score distribution (averaged over sampled CoTs) and the student's no-CoT one."""
    log_student = student_logits.float().log_softmax(-1)
    return (teacher_probs * (teacher_probs.clamp_min(1e-12).log() - log_student)).sum(-1).mean()
