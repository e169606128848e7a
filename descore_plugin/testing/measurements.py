"""Measurements of what a DeScore model has learned, for the learning tests (tests/test_learning.py) and their
benchmark (recipes/bench_learning.py): not part of the scoring API (`descore_plugin.evaluation.preference` is).

- `annotator_cot_accuracy`: held-out accuracy when the head reads the annotator's CoT (teacher forcing).
- `mean_rollout_reward`: the mean rule-based stage-2 reward of sampled CoTs, on fixed sampling noise.
"""

import numpy as np

from descore_plugin.data.pairs import Pair
from descore_plugin.evaluation.metrics import accuracy_by_slice, accuracy_with_ties
from descore_plugin.utils.device import to_device

__all__ = ["annotator_cot_accuracy", "mean_rollout_reward"]


def annotator_cot_accuracy(model, pairs: list[Pair], load, batch_size: int = 16) -> dict:
    """Held-out accuracy when the head reads each pair's annotator CoT (teacher forcing): what the model would score
    if it wrote that CoT itself. Returns accuracy_with_ties, accuracy_without_ties and accuracy_<slice> per slice tag.
    `load` maps a video path to what `model.score` takes."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        videos = [load(p.video_a) for p in pairs] + [load(p.video_b) for p in pairs]
        cots = [p.cot_a for p in pairs] + [p.cot_b for p in pairs]
        rewards = model.score(videos, [p.prompt for p in pairs] * 2, cots=cots, batch_size=batch_size).rewards
    model.train(was_training)
    n = len(pairs)
    margins, labels = (rewards[:n] - rewards[n:]).numpy(), [p.label for p in pairs]
    slices = accuracy_by_slice(margins, labels, [p.slice or "none" for p in pairs])
    out = {"accuracy_with_ties": accuracy_with_ties(margins, labels), "accuracy_without_ties": slices.pop("all")}
    out.update({f"accuracy_{name}": value for name, value in slices.items()})
    return out


def mean_rollout_reward(
    model,
    pairs: list[Pair],
    load,
    rollouts: int = 4,
    max_new_tokens: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
) -> float:
    """Mean rule-based reward (DeScore Sec. 3.3, `losses.rollout_reward` against each video's per-dimension truth) of
    `rollouts` CoTs sampled at temperature 1 for every unique video of `pairs` (the first `limit` in sorted order),
    as stage 2 samples them. `seed` fixes the sampling noise, so two models compare on the same random draws; the
    caller's global random state is restored afterwards."""
    import torch

    from descore_plugin.training.losses import rollout_reward

    truth = {}
    for pair in pairs:
        truth[(pair.video_a, pair.prompt)] = pair.scores_a
        truth[(pair.video_b, pair.prompt)] = pair.scores_b
    keys = sorted(truth)[:limit]
    was_training = model.training
    model.eval()
    rewards = []
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        for start in range(0, len(keys), batch_size):
            rows = [key for key in keys[start : start + batch_size] for _ in range(rollouts)]
            batch = model.encode_prompts([load(path) for path, _ in rows], [prompt for _, prompt in rows])
            batch = to_device(batch, model.device)
            cot_ids = model.sample_cots(batch, max_new_tokens or model.config.max_new_tokens, temperature=1.0)[
                "cot_ids"
            ]
            texts = model.tokenizer.batch_decode(cot_ids, skip_special_tokens=True)
            rewards += [rollout_reward(text, truth[key])["reward"] for text, key in zip(texts, rows)]
    model.train(was_training)
    return float(np.mean(rewards))
