"""DeScore in the post-training frameworks people already run: thin wrappers over `descore_plugin.rewards.contract`.

Each adapter calls a reward of the contract `reward(videos, prompts) -> {name: (B,) scores}` (NaN = no score) and
reshapes its answer into what its framework expects:

- Flow-GRPO (yifan123/flow_grpo): a factory `flow_grpo_reward(device, ...)` returns `fn(images, prompts, metadata)
  -> (scores, info)`; for Wan `images` is the decoded (B, F, C, H, W) float tensor in [0, 1] (no mp4 round trip).
  Users' flow_grpo configs name it `descore_plugin.integrations.flow_grpo:descore_reward` (that path stays).
- DanceGRPO-style loops write mp4 files and call `reward(video_paths, prompts) -> list[float]`.
- TRL's GRPOTrainer calls `reward_func(prompts, completions, **dataset_columns) -> list[float | None]`.

`model` is a checkpoint directory, hub id or `http(s)://host:port` of a `descore serve` server (default:
$DESCORE_MODEL), or a loaded DeScoreReward / RemoteReward.
"""

import os

import numpy as np

from descore_plugin import rewards


def _reward(model, device, dtype, think: bool, batch_size: int, **score_kwargs) -> rewards.DeScoreRewardFunction:
    model = model if model is not None else os.environ.get("DESCORE_MODEL")
    if not model:
        raise ValueError(
            "no DeScore model: pass model='DIR_OR_ID_OR_URL' or set the DESCORE_MODEL environment variable"
        )
    return rewards.descore_reward_function(
        model, think=think, batch_size=batch_size, device=device, dtype=dtype, **score_kwargs
    )


def flow_grpo_reward(
    device, model=None, think: bool = True, batch_size: int = 8, dtype=None, name: str = "descore", **score_kwargs
):
    """Flow-GRPO reward factory: `fn(images, prompts, metadata) -> (scores (B,) float32 numpy, info)`.

    name: which named score is the reward ("descore", "descore:overall", "descore:<dimension>"; see
        `descore_plugin.rewards.contract`); NaN where the judge's answer did not parse. info: every named score (numpy) and
        the CoTs (`info["cots"]`) and parse errors.
    """
    if name not in rewards.DESCORE_NAMES:
        raise ValueError(f"name={name!r}: choose one of {', '.join(rewards.DESCORE_NAMES)}")
    reward = _reward(model, device, dtype, think, batch_size, **score_kwargs)

    def fn(images, prompts, metadata=None):
        scores = reward(images, list(prompts))
        info = {key: value.numpy() for key, value in scores.items()}
        info["cots"], info["parse_errors"] = reward.last_output.cots, reward.last_output.parse_errors
        return scores[name].numpy(), info

    return fn


class DanceGRPOReward:
    """Path-based scorer for DanceGRPO-style code: `reward(video_paths, prompts) -> list[float]` (NaN = no score)."""

    def __init__(
        self,
        model=None,
        device="cpu",
        think: bool = True,
        batch_size: int = 8,
        dtype=None,
        name: str = "descore",
        **score_kwargs,
    ):
        self.reward = _reward(model, device, dtype, think, batch_size, **score_kwargs)
        self.name = name

    def __call__(self, video_paths, prompts) -> list[float]:
        return self.reward([str(p) for p in video_paths], list(prompts))[self.name].tolist()


def _message_text(item) -> str:
    """A TRL prompt or completion as text: a string as it is; a conversation ([{"role", "content"}, ...]) as its
    last message, whose content is a string or a list of parts ({"type": "text", "text": ...}; others skipped)."""
    if isinstance(item, str):
        return item
    content = item[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def trl_descore_reward(
    model=None,
    device="cpu",
    video_column: str = "video",
    dtype=None,
    name: str = "descore",
    prompt_column: str | None = None,
):
    """A TRL GRPOTrainer reward function: `fn(prompts, completions, **columns) -> list[float | None]`.

    TRL's GRPO trains a text policy; here the policy is the judge itself: each completion is a CoT about the video in
    the dataset column `video_column`, scored with that CoT (teacher forcing). Conversational prompts and
    completions ([{"role": ..., "content": ...}], content as text or as a list of typed parts) are accepted. The
    video's text prompt is the dataset column `prompt_column` when given, else the (last message of the) prompt.
    TRL's other keyword arguments (completion_ids, trainer_state, log_extra, log_metric, further columns) are
    ignored. A NaN score becomes None (TRL's "no reward").
    """
    reward = _reward(model, device, dtype, True, 8)

    def descore_cot_reward(prompts, completions, **columns) -> list[float | None]:
        for column in (video_column, prompt_column):
            if column is not None and column not in columns:
                raise ValueError(f"trl_descore_reward: the dataset has no {column!r} column (got {sorted(columns)})")
        texts = [_message_text(c) for c in completions]
        plain = list(columns[prompt_column]) if prompt_column else [_message_text(p) for p in prompts]
        scores = reward(list(columns[video_column]), plain, cots=texts)[name]
        return [None if np.isnan(s) else float(s) for s in scores.tolist()]

    return descore_cot_reward


# A DeScore served by `descore serve`, with the same factory signature: fn(images, prompts, metadata) -> (scores, info).
from descore_plugin.serving.client import descore_reward_remote  # noqa: E402,F401
