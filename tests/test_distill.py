"""Score distributions and distillation of a CoT teacher into a no-CoT student (Z-Reward's ideas)."""

from pathlib import Path

import pytest
import torch
from helpers.run import run_python
from safetensors.torch import load_file

from descore_plugin import DeScoreReward
from descore_plugin.testing.synthetic import write_dataset
from descore_plugin.testing.tiny import init_tiny
from descore_plugin.training.losses import distillation_loss, pointwise_distribution_loss, score_gap_loss
from descore_plugin.training.trainer import TrainConfig, Trainer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "distill_student.py"


def test_distribution_losses_exact():
    bins = torch.tensor([1.0, 2.0, 3.0])
    teacher = torch.tensor([[0.2, 0.5, 0.3]])
    assert distillation_loss(teacher.log(), teacher).item() == pytest.approx(0.0, abs=1e-6)  # KL(p || p) = 0
    assert distillation_loss(torch.zeros(1, 3), teacher).item() > 0
    # A sharp target at a bin centre: the loss is the -log prob of that bin.
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    expected = -logits.log_softmax(-1)[0, 1]
    assert pointwise_distribution_loss(logits, torch.tensor([2.0]), bins, sigma=0.01).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    assert score_gap_loss(torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([1.0])).item() == 0.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = write_dataset(root / "data", 6, seed=4, progress=False)
    init_tiny(root / "teacher", head="distribution", seed=1)
    init_tiny(root / "student", head="distribution", seed=2, hidden=32, layers=1, vision_hidden=32, vision_depth=1)
    return root, data


def test_stage1_trains_the_distribution_head(setup, tmp_path):
    root, data = setup
    config = TrainConfig(
        model=str(root / "teacher"),
        train_data=str(data),
        output_dir=str(tmp_path / "s1"),
        max_steps=3,
        batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        lora_rank=0,
        save_steps=0,
        cot_mask_prob=0.0,
        log_with=None,
    )
    logs = Trainer(config).train()
    assert {"train/distribution_loss", "train/score_gap_loss", "train/bt_loss"} <= set(logs)
    assert DeScoreReward.from_pretrained(tmp_path / "s1").config.head == "distribution"


def test_student_learns_the_teacher_distribution_without_cot(setup, tmp_path):
    root, data = setup
    config = TrainConfig(
        stage=3,
        model=str(root / "student"),
        teacher=str(root / "teacher"),
        train_data=str(data),
        output_dir=str(tmp_path / "student"),
        max_steps=40,
        batch_size=3,
        gradient_accumulation_steps=1,
        learning_rate=3e-3,
        lora_rank=0,
        train_embeddings="all",
        num_cot_samples=2,
        teacher_max_new_tokens=6,
        save_steps=20,
        log_with=None,
    )
    trainer = Trainer(config)
    targets = load_file(tmp_path / "student" / "teacher_targets.safetensors")["targets"]
    assert targets.shape == (12, 9)  # 6 pairs x 2 videos, 9 score bins
    torch.testing.assert_close(targets.sum(-1), torch.ones(12))
    first = trainer.distill_loss(trainer.batch_for(0), None)["logs"]["train/distill_loss"]
    logs = trainer.train()
    assert logs["train/distill_loss"] < 0.5 * first, (first, logs["train/distill_loss"])
    student = DeScoreReward.from_pretrained(tmp_path / "student")
    out = student.score(
        [p for p in []] or [str(x) for x in sorted((root / "data" / "videos").glob("*.mp4"))[:2]],
        ["a red square"] * 2,
        think=False,
    )
    assert out.uncertainty is not None and out.cots is None


def test_distill_recipe_command_line(setup, tmp_path):
    root, data = setup
    args = [
        RECIPE,
        "--teacher",
        str(root / "teacher"),
        "--student",
        str(root / "student"),
        "--train-data",
        str(data),
        "--output-dir",
        str(tmp_path / "cli"),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--gradient-accumulation-steps",
        "1",
        "--num-cot-samples",
        "2",
        "--teacher-max-new-tokens",
        "4",
        "--learning-rate",
        "1e-3",
        "--seed",
        "1",
        "--lora-rank",
        "0",
        "--log-with",
        "none",
    ]
    done = run_python(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert DeScoreReward.from_pretrained(tmp_path / "cli").vlm.config.text_config.hidden_size == 32
    missing = run_python(args[:1] + args[3:])  # no --teacher
    assert missing.returncode == 2 and "needs --teacher" in missing.stderr
