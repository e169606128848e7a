"""Every loss and rule-based reward of DeScore training, one function each, with its source.

Conventions: `margin` d = r_chosen - r_rejected (or r_A - r_B for ties); rewards are the head's outputs.
"""

import math

import torch
import torch.nn.functional as F

from .prompt import DIMENSIONS, parse_answer


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Stage 1 and the stage-2 auxiliary loss (DeScore Sec. 3.2): -log sigmoid(r_chosen - r_rejected), mean."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def bradley_terry_ties_loss(r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, k: float = 5.0) -> torch.Tensor:
    """Bradley-Terry with ties (Rao-Kupper, theta = k = 5), as VideoAlign trains (method.md, VideoAlign section).

    labels: +1 = A preferred, -1 = B preferred, 0 = tie. With d = r_chosen - r_rejected:
        non-tie: -log sigmoid(d - ln k)
        tie:     -log sigmoid(d - ln k) - log sigmoid(-d - ln k) - ln(k^2 - 1)   (symmetric in d)
    """
    log_k = math.log(k)
    d = torch.where(labels < 0, r_b - r_a, r_a - r_b)
    non_tie = -F.logsigmoid(d - log_k)
    tie = -F.logsigmoid(d - log_k) - F.logsigmoid(-d - log_k) - math.log(k * k - 1)
    return torch.where(labels == 0, tie, non_tie).mean()


def length_reward(text: str, thresholds=(500, 1000, 1500, 2000), values=(0.0, 0.2, 0.4, 0.6, 1.0)) -> float:
    """Stage-2 length term (official code): a step function of the character count of the response."""
    for threshold, value in zip(thresholds, values):
        if len(text) < threshold:
            return value
    return values[-1]


def rollout_reward(text: str, truth: dict, weights=(0.7, 0.1, 0.2), length_thresholds=(500, 1000, 1500, 2000)) -> dict:
    """Rule-based reward of one stage-2 rollout (DeScore Sec. 3.3, official defaults):
        0.7 * sub-dimension accuracy (fraction of ground-truth dimensions whose predicted value matches exactly)
      + 0.1 * format (1 if the <answer> block holds JSON with `dimensional_scores`)
      + 0.2 * length step (<500 chars: 0, <1000: 0.2, <1500: 0.4, <2000: 0.6, else 1).
    The head's score is not part of it. Returns the total and its three terms."""
    parsed = parse_answer(text)
    predicted = parsed.dimensional_scores or {}
    dims = [d for d in DIMENSIONS if d in truth]
    accuracy = sum(predicted.get(d) == truth[d] for d in dims) / len(dims) if dims else 0.0
    well_formed = 1.0 if parsed.dimensional_scores is not None else 0.0
    length = length_reward(text, length_thresholds)
    w_acc, w_format, w_length = weights
    total = w_acc * accuracy + w_format * well_formed + w_length * length
    return {"reward": total, "accuracy": accuracy, "format": well_formed, "length": length}


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: rewards (G, n) of n rollouts per group -> (r - group mean) / (group std + eps)."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def kl_low_variance(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The "low-variance" KL estimator (k3, Schulman 2020), per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    delta = (ref_logp - logp).clamp(-20, 20)
    return delta.exp() - delta - 1


def grpo_token_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, ref_logp=None,
                    kl_coef: float = 0.0, old_logp=None, clip: float = 0.2) -> dict:
    """GRPO policy loss with token-level aggregation (DAPO style: every token of every rollout weighs the same).

    logp, ref_logp, old_logp, mask: (N, T) per-token log-probs of the sampled tokens; advantages: (N,).
    With a single update per batch old_logp = logp.detach() and the ratio is exactly 1 (the clip is inactive).
    """
    old_logp = logp.detach() if old_logp is None else old_logp
    ratio = (logp - old_logp).exp()
    adv = advantages.unsqueeze(-1)
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    kl = kl_low_variance(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = per_token + kl_coef * kl
    tokens = mask.sum().clamp_min(1)
    return {"loss": (per_token * mask).sum() / tokens, "kl": (kl * mask).sum() / tokens, "ratio": (ratio * mask).sum() / tokens}


# ---------------------------------------------------------------------- score distributions (Z-Reward, our reading)
def pointwise_distribution_loss(logits: torch.Tensor, target_scores: torch.Tensor, bins: torch.Tensor, sigma: float = 0.25) -> torch.Tensor:
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
