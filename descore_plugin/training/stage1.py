"""Stage 1, the discriminative cold start (DeScore Sec. 3.2): Bradley-Terry on the head with the CoTs teacher-forced,
random CoT masking (one coin per pair, p 0.5), an optional next-token loss on the CoT (weight 0 officially), and for
the distribution head the pointwise and score-gap supervision of Z-Reward's GDSO (our reading)."""

import numpy as np
import torch

from descore_plugin.modeling.model import DeScoreReward
from descore_plugin.modeling.prompt import parse_answer
from descore_plugin.training.base import LABEL_SIGN, RewardModelTrainer, _to
from descore_plugin.training.losses import (
    bradley_terry_loss,
    bradley_terry_ties_loss,
    pointwise_distribution_loss,
    score_gap_loss,
)

__all__ = ["ColdStartTrainer"]


class ColdStartTrainer(RewardModelTrainer):
    """`--stage 1`: the loader's workers build each pair's inputs (CoTs appended unless the pair's masking coin fell)."""

    needs_decided_pairs = True
    loader_builds_inputs = True
    curve_names = ("train/loss", "train/bt_loss", "train/accuracy", "train/lm_loss", "train/grad_norm")

    def labels_without_loss_term(self) -> set:
        return {"invalid"} | ({"tie"} if self.config.loss == "bt" else set())

    def _record_cot_length(self, model: DeScoreReward):
        """The longest CoT of the training pairs, in tokens, goes into the model's config (scoring sizes its default
        CoT limit to it)."""
        if not hasattr(model.config, "trained_cot_tokens"):
            return
        cots = [cot for p in self.train_pairs for cot in (p.cot_a, p.cot_b) if cot]
        if cots:
            model.config.trained_cot_tokens = max(len(ids) for ids in model.tokenizer(cots)["input_ids"])

    def loss(self, micro_step: int, batch: dict, rng: np.random.Generator) -> dict:
        return self.stage1_loss(batch, rng)

    def stage1_loss(self, batch: dict, rng: np.random.Generator) -> dict:
        """batch: from the loader, inputs ready (CoTs appended unless the pair's masking coin fell, dataset.py)."""
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        pairs, masked = batch["pairs"], batch["masked"]
        out = self.model(**_to(batch["inputs"], self.accelerator.device))
        n = len(pairs)
        r_a, r_b = out["rewards"][:n], out["rewards"][n:]
        signs = torch.tensor([LABEL_SIGN[p.label] for p in pairs], device=r_a.device)
        decided = (signs != 0).float()
        # Rows without a term (ties under bt, "invalid") are rows of loss 0 in the mean (DeScore Sec. 3.2, official).
        if config.loss == "bt_ties":
            valid = torch.tensor([p.label != "invalid" for p in pairs], device=r_a.device).float()
            bt = bradley_terry_ties_loss(r_a, r_b, signs, k=config.ties_k, mask=valid)
        else:
            chosen, rejected = torch.where(signs > 0, r_a, r_b), torch.where(signs > 0, r_b, r_a)
            bt = bradley_terry_loss(chosen, rejected, mask=decided)
        loss = bt
        correct = ((r_a - r_b) * signs > 0).float()
        logs = {
            "train/bt_loss": bt.item(),
            "train/masked_fraction": float(masked.mean()),
            "train/decided_fraction": decided.mean().item(),
            "train/accuracy": (correct.sum() / decided.sum()).item() if decided.any() else float("nan"),
        }
        if config.lm_loss_weight > 0:
            loss = loss + config.lm_loss_weight * out["lm_loss"]
            logs["train/lm_loss"] = out["lm_loss"].item()
        if model.config.head == "distribution":
            loss = loss + self._distribution_losses(model, out, pairs, logs)
        logs["train/loss"] = loss.item()
        return {"loss": loss, "logs": logs}

    def _distribution_losses(self, model, out, pairs, logs) -> torch.Tensor:
        """Z-Reward-style direct supervision of the score distribution, where the pair's CoTs give overall scores
        (annotator CoTs end in an <answer> with overall_score): pointwise on each video, score gap on each pair."""
        config, n = self.config, len(pairs)
        device = out["rewards"].device
        targets = torch.tensor(
            [_overall(p.cot_a) for p in pairs] + [_overall(p.cot_b) for p in pairs], dtype=torch.float32, device=device
        )  # (2n,), NaN where unknown
        known = ~targets.isnan()
        total = torch.zeros((), device=device)
        if known.any():
            pointwise = pointwise_distribution_loss(
                out["logits"][known], targets[known], model.score_bins, config.distribution_sigma
            )
            total = total + config.distribution_loss_weight * pointwise
            logs["train/distribution_loss"] = pointwise.item()
        both = known[:n] & known[n:]
        if both.any():
            gap = score_gap_loss(out["rewards"][:n][both], out["rewards"][n:][both], (targets[:n] - targets[n:])[both])
            total = total + config.score_gap_loss_weight * gap
            logs["train/score_gap_loss"] = gap.item()
        return total


def _overall(cot) -> float:
    """The overall score of a CoT's <answer> block, NaN when there is none."""
    score = parse_answer(cot).overall_score if cot else None
    return float("nan") if score is None else score
