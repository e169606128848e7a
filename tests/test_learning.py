"""Proof that DeScore training learns (issue 3, item 7): the tiny Qwen2.5-VL on the synthetic world, on this CPU.

Full fine-tuning from random weights (--lora-rank 0 --train-embeddings all), AdamW lr 1e-3, 16 pairs a step, as the
calibration probe (calibration.md). Three trainings, shared by the tests (module-scoped fixtures; ~4.2 min in all on
an idle 2-core machine):

- `masked_cot`: stage 1, Bradley-Terry + next-token loss on the CoT, CoTs masked with p 0.5 (one coin a pair);
- `baseline`: stage 1, every CoT masked (--cot-mask-prob 1.0): the discriminative reward model;
- `stage2`: stage 2 from `masked_cot`, 30 steps of dual-objective RL.

The world: one shape, direction and background, four colours, and pairs whose videos differ in exactly one
dimension (the `slice`): subject (the wrong colour: prompt misalignment), dynamics, camera or style (visual defects).

What this budget shows, and what it does not (each test's docstring gives the numbers measured over two seeds;
`recipes/bench_learning.py` runs the long version):
- the visual defects are learnt within a few hundred steps, by the head and in the model's own CoTs, which parse;
- a CoT that states the misalignment (the annotator's) lets the head score the wrong-colour pairs, where the
  discriminative baseline, trained as long, is at chance: the "score" half of think-then-score;
- the model WRITING that CoT itself (copying the prompt's colour, seeing the shown one, comparing them) takes well
  over a thousand steps with this trainer (measured: colour copied at ~600 steps, seen at ~1,000, the comparison
  not yet at 1,500), more than this file can afford; so the wrong-colour slice of the model's own CoT is not
  asserted, and the overall own-CoT accuracy is bounded by it (0.875 if that slice is at chance);
- masked training keeps the no-CoT fast path: >= 0.80 held-out with think=False;
- stage 2 raises the mean reward of sampled rollouts and keeps held-out accuracy.
"""

import numpy as np
import pytest
import torch

from descore_plugin.losses import rollout_reward
from descore_plugin.metrics import accuracy_by_slice
from descore_plugin.synthetic import WorldConfig, write_dataset
from descore_plugin.tiny import init_tiny
from descore_plugin.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.slow

WORLD = WorldConfig(shapes=("square",), directions=("right",), backgrounds=("dark",))
DEFECTS = ("subject", "dynamics", "camera", "style")
VISUAL = ("dynamics", "camera", "style")
STAGE1_STEPS = 400  # the visual defects and parseable CoTs are in place by ~300 steps (two seeds)
STAGE2_STEPS = 30  # lr 1e-4, 4 pairs x 2 videos x 8 rollouts a step (lr >= 3e-4 drifts off; 4 rollouts: noise)
MAX_NEW_TOKENS = 128  # the world's CoTs are ~110 tokens


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    init_tiny(root / "init", seed=0)
    train = write_dataset(root / "train", 600, seed=1, defects=DEFECTS, world=WORLD, progress=False)
    held_out = write_dataset(root / "eval", 200, seed=2, defects=DEFECTS, world=WORLD, progress=False)
    return {"root": root, "model": root / "init", "train": train, "eval": held_out}


def stage1(world, name: str, cot_mask_prob: float, lm_loss_weight: float, eval_think: bool) -> tuple[Trainer, dict]:
    """Train stage 1; returns the trainer and the held-out metrics of its final evaluation (`eval_think` picks
    whether that evaluation scores with the model's own generated CoT or the no-CoT path)."""
    config = TrainConfig(
        model=str(world["model"]), train_data=str(world["train"]), eval_data=str(world["eval"]),
        output_dir=str(world["root"] / name), stage=1, max_steps=STAGE1_STEPS, batch_size=16,
        gradient_accumulation_steps=1, learning_rate=1e-3, lora_rank=0, train_embeddings="all",
        cot_mask_prob=cot_mask_prob, lm_loss_weight=lm_loss_weight, eval_think=eval_think,
        eval_max_new_tokens=MAX_NEW_TOKENS, save_steps=0, seed=0, log_with=None,
    )
    trainer = Trainer(config)
    return trainer, held_out(trainer.train())


def held_out(logs: dict) -> dict:
    return {key: value for key, value in logs.items() if key.startswith("eval_")}


def evaluate(trainer: Trainer, think: bool) -> dict:
    trainer.config.eval_think = think
    return trainer.evaluate()


def annotator_cot_accuracy(trainer: Trainer) -> dict:
    """Held-out accuracy per slice when the head reads the annotator's CoT (teacher forcing)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    pairs = trainer.eval_pairs
    videos = [trainer.videos(p.video_a) for p in pairs] + [trainer.videos(p.video_b) for p in pairs]
    cots = [p.cot_a for p in pairs] + [p.cot_b for p in pairs]
    rewards = model.score(videos, [p.prompt for p in pairs] * 2, cots=cots, batch_size=16).rewards
    n = len(pairs)
    return accuracy_by_slice((rewards[:n] - rewards[n:]).numpy(), [p.label for p in pairs], [p.slice for p in pairs])


@torch.no_grad()
def mean_rollout_reward(trainer: Trainer, rollouts: int = 4, seed: int = 0) -> float:
    """Mean rule-based reward (DeScore Sec. 3.3) of `rollouts` CoTs sampled at temperature 1 for each held-out
    video, against its per-dimension truth. The seed fixes the sampling noise, so two models are compared on the
    same random draws."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    truth = {}
    for pair in trainer.eval_pairs:
        truth[(pair.video_a, pair.prompt)] = pair.scores_a
        truth[(pair.video_b, pair.prompt)] = pair.scores_b
    keys = sorted(truth)[:96]
    torch.manual_seed(seed)
    rewards = []
    for start in range(0, len(keys), 16):
        rows = [key for key in keys[start:start + 16] for _ in range(rollouts)]
        batch = model.encode_prompts([trainer.videos(path) for path, _ in rows], [prompt for _, prompt in rows])
        cot_ids = model.sample_cots(batch, MAX_NEW_TOKENS, temperature=1.0)["cot_ids"]
        texts = model.tokenizer.batch_decode(cot_ids, skip_special_tokens=True)
        rewards += [rollout_reward(text, truth[key])["reward"] for text, key in zip(texts, rows)]
    return float(np.mean(rewards))


@pytest.fixture(scope="module")
def masked_cot(world):
    trainer, own_cot = stage1(world, "masked_cot", cot_mask_prob=0.5, lm_loss_weight=1.0, eval_think=True)
    return {
        "own_cot": own_cot,
        "no_cot": evaluate(trainer, think=False),
        "annotator_cot": annotator_cot_accuracy(trainer),
        "rollout_reward": mean_rollout_reward(trainer),
    }


@pytest.fixture(scope="module")
def baseline(world):
    _, no_cot = stage1(world, "no_cot", cot_mask_prob=1.0, lm_loss_weight=0.0, eval_think=False)
    return {"no_cot": no_cot}


@pytest.fixture(scope="module")
def stage2(world, masked_cot):
    config = TrainConfig(
        model=str(world["root"] / "masked_cot"), train_data=str(world["train"]), eval_data=str(world["eval"]),
        output_dir=str(world["root"] / "stage2"), stage=2, max_steps=STAGE2_STEPS, batch_size=4,
        gradient_accumulation_steps=1, learning_rate=1e-4, lora_rank=0, train_embeddings="all", num_rollouts=8,
        max_new_tokens=MAX_NEW_TOKENS, eval_max_new_tokens=MAX_NEW_TOKENS, save_steps=0, seed=0, log_with=None,
    )
    trainer = Trainer(config)
    logs = trainer.train()  # ends with the held-out evaluation, scored with the model's own CoT
    return {"own_cot": held_out(logs), "rollout_reward": mean_rollout_reward(trainer), "kl": logs["kl"]}


def visual_accuracy(held_out: dict) -> float:
    """The lowest held-out accuracy over the visual-defect slices."""
    return min(held_out[f"eval_accuracy_{name}"] for name in VISUAL)


def test_own_cot_parses_and_scores_the_visual_defects(masked_cot):
    """(a), as far as this budget reaches: scoring with its OWN generated CoT, the model gets the visual-defect
    pairs right and its CoTs parse. Measured at 400 steps over two seeds: parse rate 1.00 / 0.88, visual slices
    >= 0.96, overall 0.85 / 0.86 (the wrong-colour slice, at chance, needs a longer run: module docstring)."""
    own = masked_cot["own_cot"]
    assert own["eval_cot_parse_rate"] >= 0.8, own
    assert visual_accuracy(own) >= 0.9, own
    assert own["eval_accuracy_without_ties"] >= 0.8, own


def test_annotator_cot_beats_the_discriminative_baseline_on_prompt_alignment(masked_cot, baseline):
    """(b), the scoring half: with a CoT that states the wrong colour, the head ranks the misaligned video lower;
    the discriminative baseline, trained as many steps (400) on the same pairs, cannot tell yet. Measured over two
    seeds: 1.00 against 0.49 / 0.47 on the wrong-colour pairs. (In this simple world the baseline does learn the
    colour binding later: 0.91 at 1,500 steps in recipes/bench_learning.py.)"""
    with_cot = masked_cot["annotator_cot"]["subject"]
    without = baseline["no_cot"]["eval_accuracy_subject"]
    assert with_cot >= 0.95, masked_cot["annotator_cot"]
    assert with_cot - without >= 0.20, (with_cot, baseline["no_cot"])
    assert visual_accuracy(baseline["no_cot"]) >= 0.8, baseline["no_cot"]  # the baseline learnt what it can


def test_masked_training_keeps_the_no_cot_path(masked_cot):
    """(c): trained with random CoT masking (p 0.5) and CoT supervision, the no-CoT fast path scores >= 0.80 held
    out (measured 0.86 / 0.86 over two seeds, visual slices >= 0.98). NB a colour-blind model scores up to 0.875 on
    this world (three of four slices are visual), which is why (b) asserts the wrong-colour slice on its own."""
    no_cot = masked_cot["no_cot"]
    assert no_cot["eval_accuracy_without_ties"] >= 0.80, no_cot
    assert visual_accuracy(no_cot) >= 0.9, no_cot


def test_stage2_raises_rollout_reward_and_keeps_accuracy(masked_cot, stage2):
    """(d): 30 steps of stage 2 raise the mean rule-based reward of rollouts sampled at temperature 1 on held-out
    videos (same videos, same sampling seed, before and after) and keep held-out accuracy with the model's own CoT
    within 2 points or above. Measured over two seeds: reward 0.415 -> 0.446 and 0.399 -> 0.464, accuracy +0.5 and
    +1.5 points. With 4 rollouts a video instead of 8 the reward change was within the noise (+0.042 / -0.021)."""
    assert stage2["kl"] > 0, stage2  # the policy moved away from the reference
    before, after = masked_cot["rollout_reward"], stage2["rollout_reward"]
    assert after > before, (before, after)
    accuracy_before = masked_cot["own_cot"]["eval_accuracy_without_ties"]
    accuracy_after = stage2["own_cot"]["eval_accuracy_without_ties"]
    assert accuracy_after >= accuracy_before - 0.02, (masked_cot["own_cot"], stage2["own_cot"])
    assert stage2["own_cot"]["eval_cot_parse_rate"] >= 0.8, stage2["own_cot"]
