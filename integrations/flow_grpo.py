"""DeScore as a reward function for the post-training loops people already run.

Flow-GRPO (yifan123/flow_grpo) builds rewards from factories `f(device)` and calls the result as
`fn(images, prompts, metadata) -> (scores, info)`; for Wan, `images` is the (B, F, C, H, W) float tensor in [0, 1]
that the pipeline decodes. Register DeScore in its reward dict and it is called on those tensors directly (no mp4
round trip):

    from descore_plugin.integrations.flow_grpo import descore_reward
    reward_fn = descore_reward("cuda", model="path/or/hub-id", think=True)
    scores, info = reward_fn(videos, prompts, metadata)   # info: CoTs, per-dimension scores, overall scores

DanceGRPO-style loops write mp4 files and call a path-based scorer; TRL's GRPOTrainer calls reward functions with
prompts, completions and dataset columns. Both adapters are below; all three are thin functions over
`DeScoreReward.score`.
"""

import os

import numpy as np
import torch

from descore_plugin.model import DeScoreReward


def _load(model, device, dtype) -> DeScoreReward:
    if isinstance(model, DeScoreReward):
        return model
    model = model or os.environ.get("DESCORE_MODEL")
    if not model:
        raise ValueError("descore_reward: no model: pass model='DIR_OR_ID' or set the DESCORE_MODEL environment variable")
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return DeScoreReward.from_pretrained(model, device=device, dtype=dtype)


def descore_reward(device, model=None, think: bool = True, batch_size: int = 8, dtype=None, dimension: str | None = None,
                   **score_kwargs):
    """Flow-GRPO reward factory. Returns `fn(images, prompts, metadata) -> (scores, info)`.

    model: a checkpoint directory or hub id (default: $DESCORE_MODEL), or a loaded DeScoreReward.
    think: generate the CoT first (True, the paper) or use the no-CoT fast path.
    dimension: return one parsed CoT dimension ("subject", "dynamics", ...) as the score instead of the head's
        reward (LongCat combines rewards per dimension); a CoT whose answer does not parse raises, naming the row.
    """
    reward_model = _load(model, device, dtype)

    def fn(images, prompts, metadata=None):
        out = reward_model.score(images, list(prompts), think=think, batch_size=batch_size, **score_kwargs)
        info = {"cots": out.cots, "dimensional_scores": out.dimensional_scores, "overall_scores": out.overall_scores,
                "parse_errors": out.parse_errors, "descore": out.rewards.numpy()}
        if out.uncertainty is not None:
            info["uncertainty"] = out.uncertainty.numpy()
        if dimension is None:
            return out.rewards.numpy(), info
        return np.array(dimension_scores(out, dimension), dtype=np.float32), info

    return fn


def dimension_scores(out, dimension: str) -> list[float]:
    """One parsed dimension per video from a RewardOutput ("N/A" counts as 2: nothing asked, nothing failed)."""
    if out.dimensional_scores is None:
        raise ValueError(f"dimension {dimension!r} needs CoTs: score with think=True")
    values = []
    for row, (scores, error) in enumerate(zip(out.dimensional_scores, out.parse_errors)):
        if scores is None:
            raise ValueError(f"videos[{row}]: the CoT's answer did not parse ({error}); no {dimension!r} score")
        value = scores[dimension]
        values.append(2.0 if value == "N/A" else float(value))
    return values


class DanceGRPOReward:
    """Path-based scorer for DanceGRPO-style code, which writes mp4 files and calls `reward(video_paths, prompts)`."""

    def __init__(self, model=None, device="cpu", think: bool = True, batch_size: int = 8, dtype=None, **score_kwargs):
        self.model = _load(model, device, dtype)
        self.think, self.batch_size, self.score_kwargs = think, batch_size, score_kwargs

    def __call__(self, video_paths, prompts) -> list[float]:
        out = self.model.score(list(video_paths), list(prompts), think=self.think, batch_size=self.batch_size,
                               **self.score_kwargs)
        return out.rewards.tolist()


def trl_descore_reward(model=None, device="cpu", video_column: str = "video", dtype=None):
    """A TRL GRPOTrainer reward function: `fn(prompts, completions, **columns) -> list[float]`.

    TRL's GRPO trains a text policy; here the policy is the judge itself: each completion is a CoT about the video in
    the dataset column `video_column`, and the reward is DeScore's head score with that CoT (teacher forcing).
    Conversational completions ([{"role": "assistant", "content": ...}]) are accepted too."""
    reward_model = _load(model, device, dtype)

    def descore_cot_reward(prompts, completions, **columns) -> list[float]:
        if video_column not in columns:
            raise ValueError(f"trl_descore_reward: the dataset has no {video_column!r} column (got {sorted(columns)})")
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        plain = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        return reward_model.score(list(columns[video_column]), plain, cots=texts).rewards.tolist()

    return descore_cot_reward
