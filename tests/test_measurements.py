"""The learning measurements (descore_plugin.testing.measurements): seeded, and they leave the caller's RNG alone."""

import torch

from descore_plugin import DeScoreReward
from descore_plugin.data.pairs import load_pairs
from descore_plugin.data.video import load_video
from descore_plugin.testing.measurements import annotator_cot_accuracy, mean_rollout_reward


def test_rollout_reward_is_seeded_and_keeps_the_global_rng(tiny_dirs, synthetic_world):
    model = DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])
    pairs = load_pairs(synthetic_world(2, seed=0))
    load = lambda path: load_video(path, fps=model.config.fps, num_frames=model.config.num_frames)  # noqa: E731
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = mean_rollout_reward(model, pairs, load=load, rollouts=2, max_new_tokens=4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert mean_rollout_reward(model, pairs, load=load, rollouts=2, max_new_tokens=4, seed=7) == first
    accuracy = annotator_cot_accuracy(model, pairs, load=load)
    assert {"accuracy_with_ties", "accuracy_without_ties"} <= set(accuracy)
