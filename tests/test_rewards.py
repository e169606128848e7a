"""The one reward contract (descore_plugin.rewards.contract): named per-video scores, NaN = no score."""

import math

import pytest
import torch
from conftest import PROMPTS

from descore_plugin import DeScoreReward
from descore_plugin.modeling.model import RewardOutput
from descore_plugin.modeling.prompt import DIMENSIONS
from descore_plugin.rewards.contract import (
    DESCORE_NAMES,
    RewardError,
    brightness,
    call_reward,
    descore_reward_function,
    load_reward_model,
    redness,
    reward_set,
    scores_from_output,
)


class FakeScorer:
    """A scorer with the .score contract whose answers are known: one parsed CoT, one unparsed."""

    def __init__(self):
        self.calls = 0

    def score(self, videos, prompts, think=True, batch_size=8, **kwargs):
        self.calls += 1
        return RewardOutput(
            rewards=torch.tensor([0.5, -1.0]),
            cots=["<answer>...</answer>", "no answer"],
            dimensional_scores=[{"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 0, "style": 2}, None],
            overall_scores=[4.0, None],
            parse_errors=[None, "no <answer> block"],
            uncertainty=torch.tensor([0.1, 0.2]),
        )


def test_descore_names_and_nan_for_unparsed_answers():
    scorer = FakeScorer()
    reward = descore_reward_function(scorer, think=True)
    scores = reward(torch.rand(2, 5, 3, 8, 8), ["a", "b"])
    assert list(scores) == list(DESCORE_NAMES)
    assert scores["descore"].tolist() == [0.5, -1.0] and scores["descore:overall"][0] == 4.0
    assert [scores[f"descore:{d}"][0].item() for d in DIMENSIONS] == [2.0, 1.0, 2.0, 0.0, 2.0]  # N/A counts as 2
    assert all(math.isnan(scores[name][1]) for name in DESCORE_NAMES if name not in ("descore", "descore:uncertainty"))
    assert reward.last_output.cots[1] == "no answer"
    no_cot = scores_from_output(RewardOutput(rewards=torch.tensor([1.0])))
    assert math.isnan(no_cot["descore:overall"][0]) and "descore:uncertainty" not in no_cot


def test_unparsed_cot_is_scored_by_default_and_nan_on_request():
    """unparsed="score" (the paper) keeps the head's score of a CoT that did not parse; "nan" gives it no score, the
    head's uncertainty included; a parsed CoT keeps its score either way, and a no-CoT output has nothing to drop."""
    scored = descore_reward_function(FakeScorer())(torch.rand(2, 5, 3, 8, 8), ["a", "b"])
    dropped = descore_reward_function(FakeScorer(), unparsed="nan")(torch.rand(2, 5, 3, 8, 8), ["a", "b"])
    assert scored["descore"].tolist() == [0.5, -1.0] and scored["descore:uncertainty"].tolist() == pytest.approx(
        [0.1, 0.2]
    )
    assert dropped["descore"][0].item() == 0.5 and math.isnan(dropped["descore"][1])
    assert dropped["descore:uncertainty"][0].item() == pytest.approx(0.1) and math.isnan(
        dropped["descore:uncertainty"][1]
    )
    assert scored["descore:overall"][0] == dropped["descore:overall"][0] == 4.0
    no_cot = RewardOutput(rewards=torch.tensor([1.0, 2.0]))
    assert scores_from_output(no_cot, unparsed="nan")["descore"].tolist() == [1.0, 2.0]
    combined = reward_set(["descore"], reward_model=FakeScorer(), unparsed="nan")
    assert math.isnan(combined.combined(combined(torch.rand(2, 5, 3, 8, 8), ["a", "b"]))[1])
    with pytest.raises(RewardError, match="unparsed='drop': choose from score, nan"):
        descore_reward_function(FakeScorer(), unparsed="drop")


def test_reward_set_runs_the_judge_once_and_combines_with_weights():
    scorer = FakeScorer()
    rewards = reward_set(["descore:subject=2", "analytic:redness=0.5", "descore"], reward_model=scorer)
    videos = torch.zeros(2, 5, 3, 8, 8)
    videos[:, :, 0] = 1.0  # pure red: redness 1
    scores = rewards(videos, ["a", "b"])
    assert scorer.calls == 1 and rewards.names == ["descore:subject", "analytic:redness", "descore"]
    combined = rewards.combined(scores)
    assert combined[0].item() == pytest.approx(2 * 2 + 0.5 * 1 + 0.5) and math.isnan(combined[1])


def test_reward_set_errors_name_the_flag():
    with pytest.raises(RewardError, match="needs a DeScore model: pass --reward-model"):
        reward_set(["descore"])
    with pytest.raises(RewardError, match="unknown reward"):
        reward_set(["analytic:blueness"])
    with pytest.raises(RewardError, match="weight after '=' must be a number"):
        reward_set(["analytic:redness=lots"])
    with pytest.raises(RewardError, match="given twice"):
        reward_set(["analytic:redness", "analytic:redness=2"])
    with pytest.raises(RewardError, match="only with think=True"):
        reward_set(["descore:subject"], reward_model=FakeScorer(), think=False)
    analytic_only = reward_set(["analytic:brightness"])  # no reward model needed
    assert analytic_only(torch.ones(1, 5, 3, 4, 4), ["x"])["analytic:brightness"].tolist() == [1.0]


def test_call_reward_checks_what_a_reward_returns():
    videos, prompts = torch.rand(2, 5, 3, 4, 4), ["a", "b"]
    assert call_reward(lambda v, p: {"mine": [1.0, float("nan")]}, videos, prompts)["mine"].shape == (2,)
    with pytest.raises(RewardError, match="must return a dict"):
        call_reward(lambda v, p: [1.0, 2.0], videos, prompts)
    with pytest.raises(RewardError, match=r"shape \(3,\), expected \(2,\)"):
        call_reward(lambda v, p: {"mine": [1.0, 2.0, 3.0]}, videos, prompts)
    with pytest.raises(RewardError, match=r"infinite for videos\[1\]"):
        call_reward(lambda v, p: {"mine": [1.0, float("inf")]}, videos, prompts)
    mine = reward_set(["mine=3"], extra={"mine": lambda v, p: {"mine": torch.tensor([1.0, 2.0])}})
    assert mine.combined(mine(videos, prompts)).tolist() == [3.0, 6.0]


def test_analytic_rewards_exact_values():
    videos = torch.zeros(1, 2, 3, 2, 2)
    videos[0, :, 0] = 1.0
    videos[0, :, 1] = 0.5
    assert brightness(videos, ["x"])["analytic:brightness"].item() == pytest.approx(0.5)
    assert redness(videos, ["x"])["analytic:redness"].item() == pytest.approx(1 - 0.25)
    with pytest.raises(RewardError, match=r"\(B, F, 3, H, W\)"):
        brightness(["a.mp4"], ["x"])


def test_load_reward_model_local_and_remote(tiny_dirs, sample_videos):
    model = load_reward_model(str(tiny_dirs["qwen2_5_vl"]), device="cpu")
    assert isinstance(model, DeScoreReward)
    scores = descore_reward_function(str(tiny_dirs["qwen2_5_vl"]), think=False)(sample_videos, PROMPTS)
    expected = model.score(sample_videos, PROMPTS, think=False).rewards
    torch.testing.assert_close(scores["descore"], expected, atol=1e-5, rtol=0)
    from descore_plugin.serving.client import RemoteReward

    assert isinstance(load_reward_model("http://127.0.0.1:9", device="cpu"), RemoteReward)
