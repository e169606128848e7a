"""The one reward contract of post-training: a reward is a callable

    reward(videos, prompts) -> dict[str, Tensor]

videos: what the scorer accepts; in the post-training loops the (B, F, C, H, W) float tensor in [0, 1] that
    `WanPipeline(..., output_type="pt")` returns (a DeScore model also takes paths and frame lists);
prompts: B strings; returns named per-video scores, each a (B,) float32 tensor on the CPU. NaN means "no score for
this video" (a judge answer that did not parse, a dimension the judge did not write): it is never a number to learn
from. Names:

    descore               the reward head's score (`RewardOutput.rewards`)
    descore:overall       the overall score (1..5) written in the judge's <answer> block (think=True only)
    descore:<dimension>   one dimension of the <answer> block, <dimension> in subject, dynamics, camera,
                          environment, style: 2 / 1 / 0, "N/A" counted as 2 (nothing asked, nothing failed)
    descore:uncertainty   the std of the score distribution (distribution head only)
    analytic:brightness   mean pixel value, optimum 1 (a white video)          (tests, the demo: a known optimum)
    analytic:redness      mean of R - (G + B) / 2, optimum 1 (pure red)
    world:truth           the share of a synthetic-world prompt's attributes the video shows, in [0, 1]
                          (descore_plugin.rewards.world: read from the pixels; an upper bound for a judge)

One call of a DeScore reward runs the judge ONCE and returns all its names; the loops pick the names they train
on with `RewardSet` (a list of NAME[=WEIGHT]). A user's own reward is any callable of this shape.

The head scores every CoT, parsed or not (the official inference does). `unparsed="nan"` (`--unparsed-cot nan` in
the Wan recipes) gives `descore` (and `descore:uncertainty`) NaN for a video whose CoT's <answer> block did not parse:
a deliberate difference, for a generator whose videos break the judge's reasoning and are scored high for it
(docs/differences.md).

NaN policy (the same in every loop): a NaN score carries no signal. Flow-DPO never makes a pair from a video whose
combined score is NaN; GRPO gives it advantage 0 for that reward (Flow-GRPO: the video takes its group's mean
before the weighted sum; LongCat: its per-reward advantage is 0). An infinite score is an error.

The framework adapters (`integrations/flow_grpo.py`: flow_grpo's reward factory, DanceGRPO's path scorer, TRL's
reward function) are thin wrappers over `descore_reward_function` (named apart from flow_grpo's factory
`integrations.flow_grpo.descore_reward(device, model=...)`, the name flow_grpo configs import).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from descore_plugin.modeling.prompt import DIMENSIONS
from descore_plugin.utils.errors import UserError

Reward = Callable[[object, Sequence[str]], "dict[str, torch.Tensor]"]

DESCORE_NAMES = ("descore", "descore:overall") + tuple(f"descore:{d}" for d in DIMENSIONS) + ("descore:uncertainty",)
"""Every name a DeScore reward returns (descore:uncertainty only with the distribution head)."""


class RewardError(UserError):
    """A reward spec that cannot be used, or a reward that returned something other than named per-video scores."""


# ----------------------------------------------------------------------------------------------------------------
# DeScore
# ----------------------------------------------------------------------------------------------------------------


def load_reward_model(spec: str, device="cpu", dtype=None):
    """The scorer behind a `--reward-model` value: a DeScoreReward from a checkpoint directory or hub id, or a
    `descore_plugin.serving.client.RemoteReward` when `spec` is a server address (http:// or https://).

    dtype: torch dtype or None (bfloat16 on CUDA, float32 elsewhere); unused for a server.
    """
    spec = str(spec)
    if spec.startswith(("http://", "https://")):
        from descore_plugin.serving.client import RemoteReward

        return RemoteReward(spec)
    from descore_plugin.modeling.model import DeScoreReward

    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return DeScoreReward.from_pretrained(spec, device=device, dtype=dtype)


def _dimension_value(scores: dict | None, dimension: str) -> float:
    value = None if scores is None else scores.get(dimension)
    if value is None:
        return math.nan
    return 2.0 if value == "N/A" else float(value)


UNPARSED_CHOICES = ("score", "nan")
"""What the head's score is for a video whose CoT did not parse: score (the head's number, as the official inference
gives it) or nan (no score)."""


def scores_from_output(output, unparsed: str = "score") -> dict[str, torch.Tensor]:
    """A RewardOutput -> the named scores of the contract (see the module docstring).

    unparsed: "score" keeps the head's score of a CoT whose <answer> block did not parse (the paper); "nan" makes
    `descore` and `descore:uncertainty` NaN there (no CoT, as with think=False, is never "unparsed").
    """
    if unparsed not in UNPARSED_CHOICES:
        raise RewardError(f"unparsed={unparsed!r}: choose from {', '.join(UNPARSED_CHOICES)}")
    rewards = output.rewards.detach().float().cpu().reshape(-1).clone()
    count = len(rewards)
    broken = torch.tensor([error is not None for error in (output.parse_errors or [None] * count)], dtype=torch.bool)
    if unparsed == "nan":
        rewards[broken] = math.nan
    scores = {"descore": rewards}
    overall = output.overall_scores or [None] * count
    scores["descore:overall"] = torch.tensor([math.nan if s is None else float(s) for s in overall])
    dimensional = output.dimensional_scores or [None] * count
    for dimension in DIMENSIONS:
        scores[f"descore:{dimension}"] = torch.tensor([_dimension_value(s, dimension) for s in dimensional])
    if output.uncertainty is not None:
        uncertainty = output.uncertainty.detach().float().cpu().reshape(-1).clone()
        if unparsed == "nan":
            uncertainty[broken] = math.nan
        scores["descore:uncertainty"] = uncertainty
    return {name: value.float() for name, value in scores.items()}


class DeScoreRewardFunction:
    """DeScore in the reward contract: `fn(videos, prompts) -> {"descore": ..., "descore:overall": ..., ...}`.

    `last_output` is the RewardOutput of the latest call (CoTs, parse errors), for loops that store the CoTs.
    unparsed: "score" (the paper) or "nan", see `scores_from_output`.
    """

    def __init__(
        self,
        scorer,
        think: bool = True,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        unparsed: str = "score",
        **score_kwargs,
    ):
        if not hasattr(scorer, "score"):
            raise RewardError(
                f"descore_reward_function: {type(scorer).__name__} has no .score(videos, prompts, think=...)"
            )
        if unparsed not in UNPARSED_CHOICES:
            raise RewardError(f"unparsed={unparsed!r}: choose from {', '.join(UNPARSED_CHOICES)}")
        self.scorer, self.think, self.batch_size, self.unparsed = scorer, think, batch_size, unparsed
        self.score_kwargs = dict(score_kwargs, max_new_tokens=max_new_tokens) if max_new_tokens else score_kwargs
        self.last_output = None

    def __call__(self, videos, prompts: Sequence[str], **score_kwargs) -> dict[str, torch.Tensor]:
        """score_kwargs: passed to `.score` for this call only (e.g. cots=[...] to score given CoTs)."""
        self.last_output = self.scorer.score(
            videos, list(prompts), think=self.think, batch_size=self.batch_size, **{**self.score_kwargs, **score_kwargs}
        )
        return scores_from_output(self.last_output, unparsed=self.unparsed)


def descore_reward_function(
    model_or_scorer,
    think: bool = True,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    device="cpu",
    dtype=None,
    unparsed: str = "score",
    **score_kwargs,
) -> DeScoreRewardFunction:
    """DeScore as a reward of the contract.

    model_or_scorer: anything with `.score(videos, prompts, think=...) -> RewardOutput` (a DeScoreReward, a
        RemoteReward), or a `--reward-model` value (checkpoint directory, hub id, http(s):// server address)
        loaded with `load_reward_model(spec, device, dtype)`.
    think: generate the CoT first (the paper); False = the masked-CoT fast path (only `descore` is then a number).
    unparsed: "score" (the paper: the head scores every CoT) or "nan" (no `descore` where the CoT did not parse).
    """
    scorer = model_or_scorer
    if isinstance(scorer, (str, bytes)) or hasattr(scorer, "__fspath__"):
        scorer = load_reward_model(str(scorer), device=device, dtype=dtype)
    return DeScoreRewardFunction(
        scorer, think=think, batch_size=batch_size, max_new_tokens=max_new_tokens, unparsed=unparsed, **score_kwargs
    )


# ----------------------------------------------------------------------------------------------------------------
# Analytic rewards with a known optimum (tests and the demo; the real reward is DeScore)
# ----------------------------------------------------------------------------------------------------------------


def _video_tensor(videos) -> torch.Tensor:
    if not torch.is_tensor(videos) or videos.ndim != 5 or videos.shape[2] != 3:
        shape = tuple(videos.shape) if torch.is_tensor(videos) else type(videos).__name__
        raise RewardError(f"analytic rewards take the (B, F, 3, H, W) float video tensor in [0, 1], got {shape}")
    return videos.detach().float().cpu()


def brightness(videos, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """analytic:brightness = the mean pixel value of each video, in [0, 1]."""
    return {"analytic:brightness": _video_tensor(videos).mean(dim=(1, 2, 3, 4))}


def redness(videos, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """analytic:redness = the mean of R - (G + B) / 2 over all pixels and frames, in [-1, 1]."""
    videos = _video_tensor(videos)
    return {"analytic:redness": (videos[:, :, 0] - 0.5 * (videos[:, :, 1] + videos[:, :, 2])).mean(dim=(1, 2, 3))}


def world_truth(videos, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """world:truth (descore_plugin.rewards.world): the share of the world prompt's attributes the video shows."""
    from descore_plugin.rewards.world import world_truth as measure

    return measure(videos, prompts)


ANALYTIC_REWARDS: dict[str, Reward] = {
    "analytic:brightness": brightness,
    "analytic:redness": redness,
    "world:truth": world_truth,
}


# ----------------------------------------------------------------------------------------------------------------
# Calling rewards, and the weighted set a loop trains on
# ----------------------------------------------------------------------------------------------------------------


def call_reward(reward: Reward, videos, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Call a reward and check its answer: a dict of (B,) float tensors (lists and arrays are converted), no inf."""
    label = getattr(reward, "__name__", type(reward).__name__)
    result = reward(videos, list(prompts))
    if not isinstance(result, dict):
        raise RewardError(f"reward {label}: must return a dict of named per-video scores, got {type(result).__name__}")
    checked = {}
    for name, value in result.items():
        value = torch.as_tensor(value.detach().cpu() if torch.is_tensor(value) else value, dtype=torch.float32)
        if value.shape != (len(prompts),):
            raise RewardError(
                f"reward {label}: {name!r} has shape {tuple(value.shape)}, expected ({len(prompts)},) "
                f"(one score per video)"
            )
        if torch.isinf(value).any():
            row = int(torch.isinf(value).nonzero()[0])
            raise RewardError(f"reward {label}: {name!r} is infinite for videos[{row}] (NaN means no score)")
        checked[name] = value
    return checked


def parse_reward_spec(spec: str, known: Sequence[str] = DESCORE_NAMES + tuple(ANALYTIC_REWARDS)) -> tuple[str, float]:
    """ "NAME[=WEIGHT]" -> (name, weight); the weight defaults to 1; NAME must be one of `known`."""
    name, _, weight = str(spec).partition("=")
    name = name.strip()
    try:
        value = float(weight) if weight.strip() else 1.0
    except ValueError:
        raise RewardError(f"--reward {spec!r}: the weight after '=' must be a number") from None
    if name not in known:
        raise RewardError(f"--reward {spec!r}: unknown reward; choose from {', '.join(known)}")
    return name, value


@dataclass
class RewardSet:
    """The named rewards a loop trains on, each with a weight, and the reward callables that produce them.

    weights: {name: weight} in the order given; rewards: the callables, each called once per batch (a DeScore
    reward gives all its names in one judge run).
    """

    weights: dict[str, float]
    rewards: list[Reward]

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def __call__(self, videos, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """All the named scores of the set's rewards (also names that carry no weight, e.g. for logging)."""
        scores = {}
        for reward in self.rewards:
            scores.update(call_reward(reward, videos, prompts))
        missing = [name for name in self.weights if name not in scores]
        if missing:
            raise RewardError(f"rewards {missing}: no reward of the set returned them (got {sorted(scores)})")
        return scores

    def last_cots(self) -> list | None:
        """The CoTs of the latest DeScore call of the set (None without a DeScore reward or with think=False)."""
        for reward in self.rewards:
            output = getattr(reward, "last_output", None)
            if output is not None:
                return output.cots
        return None

    def combined(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum_k w_k r_k per video; NaN where any weighted reward is NaN (no score, no signal)."""
        return sum(weight * scores[name] for name, weight in self.weights.items())


def check_rewards(
    specs: Sequence[str], reward_model=None, think: bool = True, extra: dict[str, Reward] | None = None
) -> dict[str, float]:
    """Validate `--reward NAME[=WEIGHT]` flags without loading anything: {name: weight}, in order."""
    known = DESCORE_NAMES + tuple(ANALYTIC_REWARDS) + tuple(extra or {})
    weights = {}
    for spec in specs:
        name, value = parse_reward_spec(spec, known)
        if name in weights:
            raise RewardError(f"--reward: {name!r} is given twice")
        weights[name] = value
    if not weights:
        raise RewardError("--reward: no reward given (e.g. --reward descore or --reward analytic:redness)")
    judged = [name for name in weights if name.startswith("descore")]
    if judged and reward_model is None:
        raise RewardError(
            f"--reward {judged[0]}: needs a DeScore model: pass --reward-model DIR, hub id or http://host:port"
        )
    answer = [name for name in judged if name not in ("descore", "descore:uncertainty")]
    if answer and not think:
        raise RewardError(
            f"--reward {answer[0]}: reads the judge's <answer> block, which exists only with "
            f"think=True (drop --no-think)"
        )
    return weights


def reward_set(
    specs: Sequence[str],
    reward_model=None,
    think: bool = True,
    device="cpu",
    dtype=None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    extra: dict[str, Reward] | None = None,
    unparsed: str = "score",
) -> RewardSet:
    """Build the rewards of `--reward NAME[=WEIGHT]` flags (repeatable); see `check_rewards`.

    reward_model: a `--reward-model` value or a loaded scorer; needed only when a `descore*` reward is asked for.
    extra: your own rewards {name: callable returning {name: scores}}; their names may be used in `specs`.
    unparsed: the judge's score where its CoT did not parse, "score" or "nan" (see `scores_from_output`).
    """
    extra = dict(extra or {})
    weights = check_rewards(specs, reward_model, think, extra)
    rewards: list[Reward] = []
    if any(name.startswith("descore") for name in weights):
        rewards.append(
            descore_reward_function(
                reward_model,
                think=think,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                unparsed=unparsed,
            )
        )
    rewards += [ANALYTIC_REWARDS[name] for name in weights if name in ANALYTIC_REWARDS]
    rewards += [extra[name] for name in weights if name in extra]
    return RewardSet(weights=weights, rewards=rewards)
