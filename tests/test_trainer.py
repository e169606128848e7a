"""Reward-model training: losses (exact values), both stages end to end, checkpoints, exact resume, faults."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers.run import run_python

from descore_plugin import DeScoreReward
from descore_plugin.data.pairs import DataError, load_pairs, save_pairs
from descore_plugin.modeling.prompt import format_answer
from descore_plugin.testing.synthetic import write_dataset
from descore_plugin.training.losses import (
    bradley_terry_loss,
    bradley_terry_ties_loss,
    group_advantages_unbiased,
    kl_low_variance,
    rollout_reward,
)
from descore_plugin.training.trainer import TrainConfig, Trainer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "train_rm.py"


# ---------------------------------------------------------------------- losses
def test_bradley_terry_values():
    zero = torch.zeros(3)
    assert bradley_terry_loss(zero, zero).item() == pytest.approx(math.log(2))
    signs = torch.tensor([1, -1, 0])
    per_row = [bradley_terry_ties_loss(zero[:1], zero[:1], signs[i : i + 1]).item() for i in range(3)]
    assert per_row[0] == pytest.approx(math.log(6)) and per_row[1] == pytest.approx(math.log(6))  # -log sigmoid(-ln 5)
    assert per_row[2] == pytest.approx(math.log(1.5))  # 2 ln 6 - ln 24
    d = torch.tensor([0.7])

    def tie(a, b):
        return bradley_terry_ties_loss(a, b, torch.tensor([0])).item()

    assert tie(d, -d) == pytest.approx(tie(-d, d))  # symmetric in d for ties


def test_rollout_reward_terms():
    truth = {"subject": 2, "dynamics": 0, "camera": 2, "environment": 2, "style": "N/A"}
    answer = format_answer({**truth, "dynamics": 1}, 3.0)
    short = rollout_reward("Seen: a red square. " + answer, truth)
    assert short == pytest.approx({"reward": 0.7 * 0.8 + 0.1, "accuracy": 0.8, "format": 1.0, "length": 0.0})
    long = rollout_reward("x" * 1200 + format_answer(truth, 3.0), truth)
    assert long["reward"] == pytest.approx(0.7 + 0.1 + 0.2 * 0.4)
    broken = rollout_reward("no answer at all", truth)
    assert broken["reward"] == 0.0 and broken["format"] == 0.0


def test_group_advantages_and_kl():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    adv = group_advantages_unbiased(rewards)
    torch.testing.assert_close(adv.mean(-1), torch.zeros(2))
    assert torch.equal(adv[1], torch.zeros(3))
    logp = torch.tensor([-1.0, -2.0])
    assert torch.equal(kl_low_variance(logp, logp), torch.zeros(2))
    assert (kl_low_variance(logp, logp + 0.3) > 0).all()


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("world")
    train = write_dataset(root / "train", 12, seed=1, progress=False)
    held_out = write_dataset(root / "eval", 6, seed=2, progress=False)
    return {"train": train, "eval": held_out, "model": tiny_dirs["qwen2_5_vl"]}


def make_config(world, out, **overrides):
    values = dict(
        model=str(world["model"]),
        train_data=str(world["train"]),
        eval_data=str(world["eval"]),
        output_dir=str(out),
        max_steps=4,
        batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        lora_rank=4,
        lora_alpha=8,
        save_steps=2,
        lm_loss_weight=0.5,
        eval_think=False,
        log_with=None,
        seed=3,
        rollout_batch_size=1,
        actor_batch_size=2,
        allow_unparsed_cots=True,
    )  # stage 2: one pair a step
    values.update(overrides)
    return TrainConfig(**values)


def trainable_state(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_kill_and_resume_equals_uninterrupted_run(world, tmp_path, num_workers):
    """Bitwise equal, with the input built in the training process or in 2 loader workers."""
    from descore_plugin.training.loop import Method

    straight = Trainer(make_config(world, tmp_path / "straight", num_workers=num_workers))
    assert isinstance(straight, Method)  # a method of the one run loop, like the post-training methods
    straight.train()
    expected = trainable_state(straight)

    killed = Trainer(make_config(world, tmp_path / "killed", num_workers=num_workers))
    real = killed.stage1_loss

    def killed_in_step_4(pairs, rng):  # the process dies inside step 4, after step 3 was logged, before any save
        if killed.step == 3:
            raise KeyboardInterrupt
        return real(pairs, rng)

    killed.stage1_loss = killed_in_step_4
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-2"]
    from descore_plugin.utils.errors import resume_hint  # what recipes' one Ctrl-C line says

    assert resume_hint().startswith("at step 3; last checkpoint: ") and "checkpoint-2" in resume_hint()
    resumed = Trainer(make_config(world, tmp_path / "killed", num_workers=num_workers), resume=True)
    assert resumed.resumed and resumed.step == 2
    resumed.train()
    got = trainable_state(resumed)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0, msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4]  # the log has no duplicate of the lost step 3

    # Every checkpoint and the final model load with DeScoreReward.from_pretrained and score like the trainer.
    final = DeScoreReward.from_pretrained(tmp_path / "straight")
    checkpoint = DeScoreReward.from_pretrained(tmp_path / "straight" / "checkpoint-4" / "model")
    model = straight.accelerator.unwrap_model(straight.model).eval()
    pairs = load_pairs(world["eval"])
    videos, prompts = [p.video_a for p in pairs], [p.prompt for p in pairs]
    reference = model.score(videos, prompts, think=False).rewards
    torch.testing.assert_close(final.score(videos, prompts, think=False).rewards, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(checkpoint.score(videos, prompts, think=False).rewards, reference, atol=1e-5, rtol=0)
    assert (tmp_path / "straight" / "curves.png").stat().st_size > 1000


def test_stage1_trains_every_trainable_group(world, tmp_path):
    trainer = Trainer(
        make_config(world, tmp_path / "s1", max_steps=2, save_steps=0, train_vision=True, cot_mask_prob=0.0)
    )
    before = trainable_state(trainer)
    groups = {g["name"] for g in trainer.optimizer.param_groups}
    assert groups == {"head", "vision", "embeddings", "other"}
    seen, evaluate = [], trainer.evaluate

    def evaluate_after_the_publish(step=None):  # the final checkpoint and the model are on disk before it runs
        out = tmp_path / "s1"
        seen.append((step, (out / "checkpoint-2" / "model").is_dir(), (out / "adapter").is_dir()))
        return evaluate(step)

    trainer.evaluate = evaluate_after_the_publish
    logs = trainer.train()
    assert seen == [(2, True, True)]  # no evaluation at the start, one at the end
    after = trainable_state(trainer)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert unchanged == [], unchanged
    assert 0.0 <= logs["eval/accuracy_without_ties"] <= 1.0 and logs["train/masked_fraction"] == 0.0


def test_full_fine_tuning_moves_only_the_reward_embedding_row(world, tmp_path):
    """--lora-rank 0: the <Reward> row is the only input embedding row that trains, weight decay included (the
    sharded run is pinned by tests/test_full_state.py)."""
    trainer = Trainer(
        make_config(
            world,
            tmp_path / "full",
            lora_rank=0,
            max_steps=2,
            save_steps=0,
            eval_data=None,
            weight_decay=0.1,
            cot_mask_prob=0.0,
        )
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    weight = model.vlm.get_input_embeddings().weight
    before = weight.detach().clone()
    trainer.train()
    frozen = torch.ones(len(before), dtype=torch.bool)
    frozen[model.reward_token_id] = False
    assert torch.equal(weight[frozen], before[frozen])
    assert not torch.equal(weight[model.reward_token_id], before[model.reward_token_id])
    decay = {g["name"]: g["weight_decay"] for g in trainer.optimizer.param_groups}
    assert decay["embeddings"] == 0.0 and decay["other"] == 0.1  # the reward row's decay is applied by TrainableRow


@pytest.mark.parametrize("stage,lm_loss_weight,trains", [(1, 0.0, False), (1, 0.5, True), (2, 0.0, True)])
def test_output_head_trains_only_where_a_loss_reads_the_logits(world, tmp_path, stage, lm_loss_weight, trains):
    """Full fine-tuning: lm_head gets a gradient only from stage 2's policy or the CoT next-token loss; trainable
    without one, it would sit in the optimizer unused, and DDP refuses parameters that receive no gradient."""
    trainer = Trainer(
        make_config(
            world,
            tmp_path / "head",
            stage=stage,
            lora_rank=0,
            lm_loss_weight=lm_loss_weight,
            max_steps=1,
            batch_size=1,
            num_rollouts=2,
            max_new_tokens=4,
            save_steps=0,
            eval_data=None,
        )
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.vlm.lm_head.weight.requires_grad is trains
    assert model.vlm.model.language_model.layers[0].mlp.up_proj.weight.requires_grad


def test_stage2_first_step_is_on_policy(world, tmp_path, capsys):
    """With LoRA B = 0 the policy IS the reference: ratio exactly 1 and KL exactly 0 on the first step; sampling the
    rollout batch shows a progress bar."""
    trainer = Trainer(
        make_config(
            world,
            tmp_path / "s2",
            stage=2,
            max_steps=1,
            batch_size=1,
            num_rollouts=2,
            max_new_tokens=6,
            kl_coef=0.1,
            save_steps=0,
            eval_data=None,
        )
    )
    assert trainer.config.train_vision is False and trainer.config.weight_decay == 1e-2
    logs = trainer.train()
    assert logs["train/ratio"] == 1.0 and logs["train/kl"] == 0.0
    assert 0.0 <= logs["reward/rollout"] <= 1.0 and math.isfinite(logs["train/bt_loss"])
    err = capsys.readouterr().err
    assert "rollout batch 0: sampling" in err and re.search(r"tokens: .*[1-6]/6 ", err), err[-500:]
    assert DeScoreReward.from_pretrained(tmp_path / "s2").config.lora_rank == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(world, tmp_path, monkeypatch):
    trainer = Trainer(make_config(world, tmp_path / "nan", max_steps=6))
    real = trainer.stage1_loss

    def poisoned(pairs, rng):
        result = real(pairs, rng)
        if trainer.step == 3:
            result["loss"] = result["loss"] * float("nan")
        return result

    monkeypatch.setattr(trainer, "stage1_loss", poisoned)
    with pytest.raises(FloatingPointError, match="step 4: the loss is not finite.*checkpoint-2"):
        trainer.train()
    assert DeScoreReward.from_pretrained(tmp_path / "nan" / "checkpoint-2" / "model") is not None


def test_data_errors_before_training(world, tmp_path):
    pairs = load_pairs(world["train"])
    for p in pairs:
        p.scores_b = None
    save_pairs(tmp_path / "no_truth.jsonl", pairs)
    with pytest.raises(DataError, match=r"no_truth.jsonl.*(line|row) 1.*scores"):
        Trainer(make_config(world, tmp_path / "o", stage=2, batch_size=1, train_data=str(tmp_path / "no_truth.jsonl")))
    for p in pairs:
        p.label = "invalid"
    save_pairs(tmp_path / "invalid.jsonl", pairs)
    with pytest.raises(DataError, match="no usable pairs"):
        Trainer(make_config(world, tmp_path / "o", train_data=str(tmp_path / "invalid.jsonl")))


def test_recipe_command_line(world, tmp_path):
    out = tmp_path / "cli"
    args = [
        RECIPE,
        "--stage",
        "1",
        "--model",
        str(world["model"]),
        "--train-data",
        str(world["train"]),
        "--output-dir",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--gradient-accumulation-steps",
        "1",
        "--lora-rank",
        "0",
        "--learning-rate",
        "1e-5",
        "--save-steps",
        "1",
        "--no-eval-think",
        "--log-with",
        "tensorboard",
    ]
    done = run_python(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"^done: .*\blr=1e-05\b", done.stdout, re.MULTILINE), done.stdout[-500:]  # small values shown
    assert (out / "descore_config.json").is_file() and sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-1",
        "checkpoint-2",
    ]
    assert list((out / "logs").rglob("events.out.tfevents*"))
    again = run_python(args + ["--resume", "--max-steps", "3"])
    assert again.returncode == 0 and "resumed from step 2" in again.stdout, again.stderr[-2000:]


# ---------------------------------------------------------------------- command lines: help, bad values
RECIPES = RECIPE.parent


def recipe_main(name):
    import runpy

    return runpy.run_path(str(RECIPES / name), run_name="recipe")["main"]


@pytest.mark.parametrize("name", ["train_rm.py", "distill_student.py"])
def test_training_recipe_help_describes_every_field(name, capsys):
    import dataclasses
    import runpy

    main = runpy.run_path(str(RECIPES / name), run_name="recipe")["main"]
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        assert flag in text, flag
        help_text = " ".join(spec.metadata["help"].split())
        assert help_text[:40] in text or name == "distill_student.py", (flag, help_text[:40])
    assert "(default: 1000)" in text and "--resume" in text and "--overwrite" in text


def test_eval_recipe_help_describes_every_flag(capsys):
    import runpy

    main = runpy.run_path(str(RECIPES / "eval_rm.py"), run_name="recipe")["main"]
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--model",
        "--output-dir",
        "--no-think",
        "--batch-size",
        "--max-new-tokens",
        "--num-frames",
        "--fps",
        "--device",
        "--dtype",
    ):
        assert flag in text, flag
    assert "(default: 8)" in text


@pytest.mark.parametrize(
    "name, argv",
    [
        ("train_rm.py", ["--model", "m", "--train-data", "d", "--output-dir", "o", "--loss", "foo"]),
        ("train_rm.py", ["--model", "m", "--train-data", "d", "--output-dir", "o", "--max-steps", "ten"]),
        ("train_rm.py", ["--train-data", "d", "--output-dir", "o"]),
        ("distill_student.py", ["--student", "m", "--train-data", "d", "--output-dir", "o", "--num-cot-samples", "x"]),
        ("eval_rm.py", ["pairs.csv", "--model", "m", "--output-dir", "o", "--batch-size", "eight"]),
    ],
)
def test_bad_flag_value_is_one_line_exit_2(name, argv, capsys):
    with pytest.raises(SystemExit) as done:
        recipe_main(name)(argv)
    assert done.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error:"), lines


def test_existing_run_refused_and_resume_checks_flags(world, tmp_path, capsys):
    main = recipe_main("train_rm.py")
    args = [
        "--model",
        str(world["model"]),
        "--train-data",
        str(world["train"]),
        "--output-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--gradient-accumulation-steps",
        "1",
        "--lora-rank",
        "2",
        "--save-steps",
        "0",
        "--log-with",
        "none",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(args + ["--resume", "--learning-rate", "1e-3"]) == 2
    assert "--learning-rate" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


# ---------------------------------------------------------------------- which pairs train and evaluate
@pytest.mark.parametrize("undecided_rows", ["zero_loss", "drop"])
def test_same_file_for_training_and_evaluation_keeps_ties_in_evaluation(tmp_path, tiny_dirs, caplog, undecided_rows):
    """Stage 1 keeps ties and 'invalid' rows as rows of loss 0 (official) or drops them (--undecided-rows drop);
    evaluation keeps every pair either way and reports the official ties-as-errors figure too."""
    from descore_plugin.evaluation.preference import evaluate_pairs

    data = write_dataset(tmp_path / "data", 8, seed=7, tie_rate=0.5, progress=False)
    pairs = load_pairs(data)
    pairs[0].label = "invalid"
    save_pairs(tmp_path / "pairs.jsonl", pairs)
    path = str(tmp_path / "pairs.jsonl")
    ties = sum(p.label == "tie" for p in pairs)
    assert ties > 0
    with caplog.at_level("WARNING"):
        trainer = Trainer(
            TrainConfig(
                model=str(tiny_dirs["qwen2_5_vl"]),
                train_data=path,
                eval_data=path,
                output_dir=str(tmp_path / "out"),
                max_steps=1,
                batch_size=1,
                gradient_accumulation_steps=1,
                lora_rank=2,
                save_steps=0,
                eval_think=False,
                log_with=None,
                undecided_rows=undecided_rows,
            )
        )
    message = caplog.text
    assert "1 labelled 'invalid'" in message and f"{ties} ties (--loss bt has no term" in message
    if undecided_rows == "drop":
        assert f"training on {len(pairs) - 1 - ties} of {len(pairs)} pairs" in message
        assert len(trainer.train_pairs) == len(pairs) - 1 - ties
    else:
        assert f"training on all {len(pairs)} pairs" in message and len(trainer.train_pairs) == len(pairs)
    assert len(trainer.eval_pairs) == len(pairs)  # evaluation keeps every pair; evaluate_pairs counts the invalid one
    logs = trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    expected = evaluate_pairs(model, load_pairs(path), think=False, progress=False)
    assert expected["num_pairs"] == len(pairs) - 1
    assert logs["eval/accuracy_with_ties"] == pytest.approx(expected["accuracy_with_ties"])
    assert logs["eval/accuracy_ties_as_errors"] == pytest.approx(expected["accuracy_ties_as_errors"])
    # the official figure: ties and the invalid row count as errors, so it is at most the decided share
    assert expected["accuracy_ties_as_errors"] <= (len(pairs) - 1 - ties) / len(pairs)


def _stage1_step_gradient(world, tmp_path, undecided_rows, labels):
    """The head's gradient after one stage-1 micro-batch of 2 pairs with the given labels (no masking, no clipping)."""
    pairs = load_pairs(world["train"])[:2]
    for pair, label in zip(pairs, labels):
        pair.label = label
    save_pairs(tmp_path / f"{undecided_rows}.jsonl", pairs)
    trainer = Trainer(
        make_config(
            world,
            tmp_path / f"run-{undecided_rows}",
            train_data=str(tmp_path / f"{undecided_rows}.jsonl"),
            eval_data=None,
            max_steps=1,
            batch_size=len(pairs) if undecided_rows == "zero_loss" else 1,
            cot_mask_prob=0.0,
            lm_loss_weight=0.0,
            undecided_rows=undecided_rows,
            num_workers=0,
        )
    )
    batch = trainer.batch_for(0)
    result = trainer.stage1_loss(batch, None)
    result["loss"].backward()
    head = trainer.accelerator.unwrap_model(trainer.model).head.weight
    return result, head.grad.clone(), batch


def test_stage1_tie_is_a_zero_row_in_the_mean_or_dropped(world, tmp_path):
    """Official: a tie is a row of loss 0 in the batch mean, so with one decided pair of two the BT loss and its
    gradient are half the decided pair's alone; --undecided-rows drop trains on the decided pair only."""
    kept, grad_kept, batch = _stage1_step_gradient(world, tmp_path, "zero_loss", ["A", "tie"])
    assert [p.label for p in batch["pairs"]] == ["A", "tie"] or [p.label for p in batch["pairs"]] == ["tie", "A"]
    dropped, grad_dropped, batch = _stage1_step_gradient(world, tmp_path, "drop", ["A", "tie"])
    assert [p.label for p in batch["pairs"]] == ["A"]
    assert kept["logs"]["train/decided_fraction"] == 0.5 and dropped["logs"]["train/decided_fraction"] == 1.0
    assert kept["logs"]["train/bt_loss"] == pytest.approx(dropped["logs"]["train/bt_loss"] / 2, rel=1e-5)
    torch.testing.assert_close(grad_kept, grad_dropped / 2, rtol=1e-4, atol=1e-9)


def test_stage1_defaults_clip_nothing_stage2_clips_actor_and_head_separately(world, tmp_path):
    """Official: no clipping in stage 1; stage 2 clips the head's and the actor's gradients each to 1.0."""
    assert TrainConfig(model="m", train_data="d", output_dir="o").resolve().max_grad_norm == 0.0
    stage2 = TrainConfig(model="m", train_data="d", output_dir="o", stage=2).resolve()
    assert stage2.max_grad_norm == 1.0 and stage2.grad_norm_groups == "actor_and_head"
    trainer = Trainer(
        make_config(world, tmp_path / "clip", max_steps=1, eval_data=None, max_grad_norm=1e-6, cot_mask_prob=0.0)
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = trainer.stage1_loss(trainer.batch_for(0), None)
    result["loss"].backward()
    head = [p for p in model.head.parameters()]
    actor = [p for p in model.parameters() if p.requires_grad and all(p is not h for h in head)]

    def norm(params):
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))

    raw_head, raw_actor = norm(head).item(), norm(actor).item()
    logs = trainer._clip_gradients()
    assert logs["train/head_grad_norm"] == pytest.approx(raw_head, rel=1e-5)
    assert logs["train/grad_norm"] == pytest.approx(raw_actor, rel=1e-5)
    assert norm(head).item() == pytest.approx(1e-6, rel=1e-3) and norm(actor).item() == pytest.approx(1e-6, rel=1e-3)
    trainer.config.grad_norm_groups = "joint"  # ours: one norm over both, so the two parts keep their proportion
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(1e6)
    ratio, whole = norm(head).item() / norm(actor).item(), math.hypot(norm(head).item(), norm(actor).item())
    joint = trainer._clip_gradients()
    assert joint["train/grad_norm"] == pytest.approx(whole, rel=1e-4)
    assert norm(head).item() / norm(actor).item() == pytest.approx(ratio, rel=1e-4)
    assert math.hypot(norm(head).item(), norm(actor).item()) == pytest.approx(1e-6, rel=1e-3)
