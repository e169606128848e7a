"""Each framework adapter called exactly as its framework calls it, on the tiny model."""

import numpy as np
import pytest
import torch
from conftest import PROMPTS

from descore_plugin import DeScoreReward
from descore_plugin.data.video import write_video
from descore_plugin.integrations.flow_grpo import DanceGRPOReward, descore_reward, trl_descore_reward
from descore_plugin.modeling.model import RewardOutput


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])


def test_flow_grpo_factory_on_pipeline_tensors(tiny_dirs, sample_videos, monkeypatch):
    # flow_grpo: `reward_fn = factory(device)`, then `scores, info = reward_fn(images, prompts, metadata)` with
    # images the decoded (B, F, C, H, W) float tensor in [0, 1]
    monkeypatch.setenv("DESCORE_MODEL", str(tiny_dirs["qwen2_5_vl"]))
    fn = descore_reward("cpu", think=True, max_new_tokens=6)  # model from $DESCORE_MODEL, as Flow-GRPO configs do
    scores, info = fn(sample_videos, PROMPTS, [{} for _ in PROMPTS])
    direct = DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"]).score(sample_videos, PROMPTS, max_new_tokens=6)
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, direct.rewards.numpy(), atol=1e-5)
    assert info["cots"] == direct.cots and info["descore:subject"].shape == (3,)


def test_flow_grpo_dimension_reward_is_nan_where_the_answer_did_not_parse(model, sample_videos):
    fn = descore_reward("cpu", model=model, think=True, max_new_tokens=4, name="descore:subject")
    scores, info = fn(sample_videos, PROMPTS, [{} for _ in PROMPTS])
    assert np.isnan(scores).all() and all(info["parse_errors"])  # a random tiny model writes no <answer> block
    with pytest.raises(ValueError, match="DESCORE_MODEL"):
        descore_reward("cpu", model=None)
    with pytest.raises(ValueError, match="choose one of"):
        descore_reward("cpu", model=model, name="subject")


def test_dance_grpo_path_scorer(model, tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"{i}.mp4"
        write_video(path, (torch.rand(8, 3, 56, 56) * 255).to(torch.uint8), fps=8)
        paths.append(path)
    scorer = DanceGRPOReward(model=model, think=False)
    scores = scorer(paths, PROMPTS[:2])  # DanceGRPO: the mp4 paths it wrote and their prompts
    expected = model.score([str(p) for p in paths], PROMPTS[:2], think=False).rewards.tolist()
    assert scores == pytest.approx(expected, abs=1e-6) and all(isinstance(s, float) for s in scores)


def test_trl_reward_function_scores_completions_as_cots(model, sample_videos):
    fn = trl_descore_reward(model=model)
    completions = ["The square is red.", [{"role": "assistant", "content": "It moves left."}], ""]
    # TRL: reward_func(prompts=..., completions=..., **every other dataset column)
    rewards = fn(prompts=PROMPTS, completions=completions, video=list(sample_videos), completion_ids=None)
    expected = model.score(sample_videos, PROMPTS, cots=["The square is red.", "It moves left.", ""]).rewards
    assert rewards == pytest.approx(expected.tolist(), abs=1e-6) and all(isinstance(r, float) for r in rewards)
    with pytest.raises(ValueError, match="no 'video' column"):
        fn(prompts=PROMPTS, completions=completions)


def test_trl_reward_called_as_grpo_trainer_calls_it(model, sample_videos):
    """TRL's GRPOTrainer._calculate_rewards: reward_func(prompts=, completions=, completion_ids=, **every other
    dataset column, trainer_state=self.state, log_extra=..., log_metric=...); multimodal conversational prompts
    carry content as typed parts."""
    from transformers import TrainerState

    fn = trl_descore_reward(model=model, prompt_column="caption")
    prompts = [
        [
            {"role": "system", "content": [{"type": "text", "text": "You judge videos."}]},
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe, then judge."}]},
        ]
        for _ in PROMPTS
    ]
    completions = [
        [
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "The square "}, {"type": "text", "text": "is red."}],
            }
        ],
        [{"role": "assistant", "content": "It moves left."}],
        [{"role": "assistant", "content": ""}],
    ]
    rewards = fn(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1, 2], [3], []],
        video=list(sample_videos),
        caption=list(PROMPTS),
        trainer_state=TrainerState(global_step=3),
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: None,
    )
    expected = model.score(sample_videos, PROMPTS, cots=["The square is red.", "It moves left.", ""]).rewards
    assert rewards == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="no 'caption' column"):
        fn(prompts=prompts, completions=completions, video=list(sample_videos), trainer_state=TrainerState())


def test_trl_no_score_is_none(monkeypatch):
    class Unparsed:
        def score(self, videos, prompts, think=True, batch_size=8, **kwargs):
            return RewardOutput(rewards=torch.tensor([1.0, 2.0]), overall_scores=[3.0, None], cots=kwargs["cots"])

    fn = trl_descore_reward(model=Unparsed(), name="descore:overall")
    assert fn(prompts=["a", "b"], completions=["x", "y"], video=["v", "w"]) == [3.0, None]
