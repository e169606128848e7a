"""Stage 2 from real stage-1 checkpoints (LoRA and full), its reference model, and the whole pipeline in sequence."""

import json
import runpy
from pathlib import Path

import pytest
import torch

from descore_plugin import DeScoreReward
from descore_plugin.cli import main as descore_main
from descore_plugin.data import load_pairs
from descore_plugin.synthetic import write_dataset
from descore_plugin.tiny import init_tiny
from descore_plugin.trainer import TrainConfig, Trainer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe(name):
    return runpy.run_path(str(RECIPES / name), run_name="recipe")["main"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, tiny_dirs):
    """One LoRA and one fully fine-tuned stage-1 checkpoint, each trained for two steps (so the adapter is not 0)."""
    root = tmp_path_factory.mktemp("stage1")
    data = write_dataset(root / "data", 6, seed=5, progress=False)
    runs = {}
    for name, rank in (("lora", 4), ("full", 0)):
        config = TrainConfig(stage=1, model=str(tiny_dirs["qwen2_5_vl"]), train_data=str(data),
                             output_dir=str(root / name), max_steps=2, batch_size=2, gradient_accumulation_steps=1,
                             learning_rate=1e-2, lora_rank=rank, lora_alpha=8, save_steps=0, log_with=None)
        Trainer(config).train()
        runs[name] = root / name
    assert (runs["lora"] / "adapter").is_dir() and not (runs["full"] / "adapter").exists()
    return {"data": data, **runs}


def stage2_config(stage1, start, out, **overrides):
    values = dict(stage=2, model=str(stage1[start]), train_data=str(stage1["data"]), output_dir=str(out), max_steps=1,
                  batch_size=1, gradient_accumulation_steps=1, num_rollouts=2, max_new_tokens=6, kl_coef=0.1,
                  learning_rate=1e-3, save_steps=0, log_with=None)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("start", ["lora", "full"])
@pytest.mark.parametrize("lora_rank", [None, 4], ids=["full-ft-default", "lora-option"])
def test_stage2_from_stage1_checkpoint(stage1, start, lora_rank, tmp_path):
    """The KL reference is exactly the stage-1 model: a frozen copy by default, the new adapter switched off with
    --lora-rank. Default stage 2 trains every LLM weight and no vision weight."""
    config = stage2_config(stage1, start, tmp_path / "s2", **({} if lora_rank is None else {"lora_rank": lora_rank}))
    trainer = Trainer(config)
    model = trainer.accelerator.unwrap_model(trainer.model)
    pairs = load_pairs(stage1["data"])
    videos, prompts = [p.video_a for p in pairs[:3]], [p.prompt for p in pairs[:3]]
    expected = DeScoreReward.from_pretrained(stage1[start]).score(videos, prompts, think=False).rewards

    if lora_rank is None:
        assert trainer.config.lora_rank == 0 and trainer.reference is not None
        assert not any(p.requires_grad for p in trainer.reference.parameters())
        reference = trainer.reference.score(videos, prompts, think=False).rewards
        language = [p.requires_grad for n, p in model.vlm.model.language_model.named_parameters()]
        assert all(language) and not any(p.requires_grad for p in model.vlm.model.visual.parameters())
    else:
        assert trainer.reference is None and model.config.lora_rank == 4
        model.eval()
        with model.backbone.disable_adapter():
            reference = model.score(videos, prompts, think=False).rewards
        model.train()
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=0)

    logs = trainer.train()
    assert logs["ratio"] == 1.0 and logs["kl"] == 0.0  # the policy starts AT the reference
    trained = DeScoreReward.from_pretrained(tmp_path / "s2")
    assert (tmp_path / "s2" / "backbone").is_dir()  # the merged / fine-tuned weights are saved, not only an adapter
    assert trained.config.lora_rank == (0 if lora_rank is None else 4)
    after = trained.score(videos, prompts, think=False).rewards
    assert not torch.allclose(after, expected, atol=1e-6)  # it trained, and the result loads
    if lora_rank is None:  # the frozen reference did not move
        torch.testing.assert_close(trainer.reference.score(videos, prompts, think=False).rewards, expected,
                                   atol=1e-5, rtol=0)


def test_pipeline_stage1_stage2_eval_distill_score(tmp_path, capsys):
    """The README's sequence with default flags apart from sizes: stage 1 (LoRA) -> stage 2 -> eval_rm -> distill
    -> descore score, each step reading what the previous one wrote."""
    data = write_dataset(tmp_path / "data", 6, seed=6, progress=False)
    init_tiny(tmp_path / "M")
    small = ["--batch-size", "1", "--gradient-accumulation-steps", "1", "--log-with", "none", "--save-steps", "0"]
    train = recipe("train_rm.py")
    assert train(["--stage", "1", "--model", str(tmp_path / "M"), "--train-data", str(data), "--output-dir",
                  str(tmp_path / "s1"), "--max-steps", "2", "--lora-rank", "4", *small]) == 0
    assert train(["--stage", "2", "--model", str(tmp_path / "s1"), "--train-data", str(data), "--output-dir",
                  str(tmp_path / "s2"), "--max-steps", "1", "--num-rollouts", "2", "--max-new-tokens", "8", *small]) == 0
    assert recipe("eval_rm.py")([str(data), "--model", str(tmp_path / "s2"), "--output-dir", str(tmp_path / "eval"),
                                 "--max-new-tokens", "8"]) == 0
    accuracy = json.loads((tmp_path / "eval" / "accuracy.json").read_text())
    assert accuracy["num_pairs"] == 6
    assert recipe("distill_student.py")(["--teacher", str(tmp_path / "s2"), "--student", str(tmp_path / "M"),
                                         "--train-data", str(data), "--output-dir", str(tmp_path / "student"),
                                         "--max-steps", "1", "--num-cot-samples", "1", "--teacher-max-new-tokens", "4",
                                         *small]) == 0
    video = str(sorted((tmp_path / "data" / "videos").glob("*.mp4"))[0])
    capsys.readouterr()
    assert descore_main(["score", video, "--prompt", "a red square", "--model", str(tmp_path / "student"),
                         "--no-think", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(record["reward"], float)
