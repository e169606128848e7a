"""Stage 2 from real stage-1 checkpoints (LoRA and full), its reference model, and the whole pipeline in sequence."""

import json
import math
import runpy
from pathlib import Path

import pytest
import torch

from descore_plugin import DeScoreReward
from descore_plugin.cli import main as descore_main
from descore_plugin.data.pairs import load_pairs
from descore_plugin.testing.synthetic import write_dataset
from descore_plugin.testing.tiny import init_tiny
from descore_plugin.training.losses import (
    group_advantages_unbiased,
    grpo_policy_loss,
    kl_low_variance,
    ppo_dual_clip_loss,
)
from descore_plugin.training.trainer import TrainConfig, Trainer

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
        config = TrainConfig(
            stage=1,
            model=str(tiny_dirs["qwen2_5_vl"]),
            train_data=str(data),
            output_dir=str(root / name),
            max_steps=2,
            batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=1e-2,
            lora_rank=rank,
            lora_alpha=8,
            save_steps=0,
            log_with=None,
        )
        Trainer(config).train()
        runs[name] = root / name
    assert (runs["lora"] / "adapter").is_dir() and not (runs["full"] / "adapter").exists()
    return {"data": data, **runs}


# ---------------------------------------------------------------------- exact values of the stage-2 loss
def test_ppo_dual_clip_exact():
    """Asymmetric clip [0.8, 1.3] and dual clip 3 on hand-computed tokens (ratios 1, 1.5, 0.5, 5)."""
    log_ratio = torch.log(torch.tensor([1.0, 1.5, 0.5, 5.0]))
    old = torch.full((3, 4), -2.0)
    logp = old + log_ratio
    out = ppo_dual_clip_loss(logp, old, torch.tensor([1.0, -1.0, -2.0]), clip_low=0.2, clip_high=0.3, clip_dual=3.0)
    expected = torch.tensor(
        [
            [-1.0, -1.3, -0.5, -1.3],  # A > 0: max(-A r, -A clip(r)): the gain stops at r = 1.3
            [1.0, 1.5, 0.8, 3.0],  # A < 0: pessimistic bound, then at most -A * 3 (dual clip) at r = 5
            [2.0, 3.0, 1.6, 6.0],
        ]
    )
    torch.testing.assert_close(out["loss"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["ratio"][0], torch.tensor([1.0, 1.5, 0.5, 5.0]), atol=1e-6, rtol=0)
    assert out["clipped"].tolist() == [
        [False, True, False, True],
        [False, False, True, True],
        [False, False, True, True],
    ]


def test_kl_low_variance_exact_and_clamped():
    logp = torch.tensor([-1.0, -1.0, 0.0, -30.0])
    ref = torch.tensor([-1.5, -1.0, -30.0, 0.0])
    expected = torch.tensor([math.exp(-0.5) + 0.5 - 1, 0.0, 10.0, 10.0])  # x clamped to +-20, the result to 10
    torch.testing.assert_close(kl_low_variance(logp, ref), expected, atol=1e-7, rtol=0)


def test_group_advantages_unbiased_std():
    adv = group_advantages_unbiased(torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]) / (1 + 1e-6), atol=1e-7, rtol=0)


def test_grpo_policy_loss_token_mean_over_the_mini_batch():
    """Per-token PPO + kl_coef * KL, summed over the mask, divided by the mini-batch's token count."""
    logp = torch.full((2, 3), -1.0)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    own = grpo_policy_loss(logp, logp, advantages, mask)
    assert own["loss"].item() == pytest.approx(-1 / 3) and own["ratio"].item() == 1.0
    shared = grpo_policy_loss(logp, logp, advantages, mask, ref_logp=logp - 0.5, kl_coef=0.1, num_tokens=6)
    kl = math.exp(-0.5) + 0.5 - 1
    assert shared["loss"].item() == pytest.approx((-1 + 3 * 0.1 * kl) / 6)
    assert shared["kl"].item() == pytest.approx(kl)


def stage2_config(stage1, start, out, **overrides):
    values = dict(
        stage=2,
        model=str(stage1[start]),
        train_data=str(stage1["data"]),
        output_dir=str(out),
        max_steps=1,
        batch_size=1,
        num_rollouts=2,
        max_new_tokens=6,
        kl_coef=0.1,
        rollout_batch_size=1,
        actor_batch_size=2,
        learning_rate=1e-3,
        save_steps=0,
        log_with=None,
        allow_unparsed_cots=True,
    )
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
    assert logs["train/ratio"] == 1.0 and logs["train/kl"] == 0.0  # the policy starts AT the reference
    trained = DeScoreReward.from_pretrained(tmp_path / "s2")
    assert (tmp_path / "s2" / "backbone").is_dir()  # the merged / fine-tuned weights are saved, not only an adapter
    assert trained.config.lora_rank == (0 if lora_rank is None else 4)
    after = trained.score(videos, prompts, think=False).rewards
    assert not torch.allclose(after, expected, atol=1e-6)  # it trained, and the result loads
    if lora_rank is None:  # the frozen reference did not move
        torch.testing.assert_close(
            trainer.reference.score(videos, prompts, think=False).rewards, expected, atol=1e-5, rtol=0
        )


def test_pipeline_stage1_stage2_eval_distill_score(tmp_path, capsys):
    """The README's sequence with default flags apart from sizes: stage 1 (LoRA) -> stage 2 -> eval_rm -> distill
    -> descore score, each step reading what the previous one wrote."""
    data = write_dataset(tmp_path / "data", 6, seed=6, progress=False)
    init_tiny(tmp_path / "M")
    small = ["--batch-size", "1", "--gradient-accumulation-steps", "1", "--log-with", "none", "--save-steps", "0"]
    train = recipe("train_rm.py")
    assert (
        train(
            [
                "--stage",
                "1",
                "--model",
                str(tmp_path / "M"),
                "--train-data",
                str(data),
                "--output-dir",
                str(tmp_path / "s1"),
                "--max-steps",
                "2",
                "--lora-rank",
                "4",
                *small,
            ]
        )
        == 0
    )
    assert (
        train(
            [
                "--stage",
                "2",
                "--model",
                str(tmp_path / "s1"),
                "--train-data",
                str(data),
                "--output-dir",
                str(tmp_path / "s2"),
                "--max-steps",
                "1",
                "--num-rollouts",
                "2",
                "--max-new-tokens",
                "8",
                "--rollout-batch-size",
                "1",
                "--actor-batch-size",
                "2",
                "--allow-unparsed-cots",
                *small,
            ]
        )
        == 0
    )
    assert (
        recipe("eval_rm.py")(
            [
                str(data),
                "--model",
                str(tmp_path / "s2"),
                "--output-dir",
                str(tmp_path / "eval"),
                "--max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    accuracy = json.loads((tmp_path / "eval" / "accuracy.json").read_text())
    assert accuracy["num_pairs"] == 6
    assert (
        recipe("distill_student.py")(
            [
                "--teacher",
                str(tmp_path / "s2"),
                "--student",
                str(tmp_path / "M"),
                "--train-data",
                str(data),
                "--output-dir",
                str(tmp_path / "student"),
                "--max-steps",
                "1",
                "--num-cot-samples",
                "1",
                "--teacher-max-new-tokens",
                "4",
                *small,
            ]
        )
        == 0
    )
    video = str(sorted((tmp_path / "data" / "videos").glob("*.mp4"))[0])
    capsys.readouterr()
    assert (
        descore_main(
            ["score", video, "--prompt", "a red square", "--model", str(tmp_path / "student"), "--no-think", "--json"]
        )
        == 0
    )
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(record["reward"], float)


def test_rollout_batch_gives_off_policy_updates_and_resumes_exactly(stage1, tmp_path):
    """Two mini-batches per rollout batch: rollouts are sampled once (without the repetition penalty), the second
    step is off-policy (ratio != 1); a run killed after step 1 resumes from the saved rollouts to the same weights."""
    settings = dict(rollout_batch_size=2, max_steps=2, save_steps=1, kl_coef=0.1, learning_rate=5e-2)
    straight = Trainer(stage2_config(stage1, "full", tmp_path / "straight", **settings))
    model = straight.accelerator.unwrap_model(straight.model)
    model.config.repetition_penalty = 1.3  # the scoring setting; rollouts must not inherit it
    calls = []
    sample = model.sample_cots
    model.sample_cots = lambda *args, **kwargs: calls.append(kwargs) or sample(*args, **kwargs)
    straight.train()
    assert len(calls) == 2 and all(c["repetition_penalty"] == 1.0 for c in calls)  # 2 micro-batches, one sampling
    logs = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert logs[0]["train/ratio"] == 1.0 and logs[1]["train/ratio"] != 1.0

    killed = Trainer(stage2_config(stage1, "full", tmp_path / "killed", **{**settings, "max_steps": 1}))
    killed.train()
    resumed = Trainer(stage2_config(stage1, "full", tmp_path / "killed", **settings), resume=True)
    assert resumed.step == 1 and resumed.rollouts is not None and resumed.rollouts["index"] == 0
    resumed.train()
    expected = {n: p for n, p in straight.accelerator.unwrap_model(straight.model).named_parameters()}
    for name, param in resumed.accelerator.unwrap_model(resumed.model).named_parameters():
        torch.testing.assert_close(param, expected[name], atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_each_video_is_processed_once_and_its_rows_equal_encoding_every_rollout(stage1, tiny_dirs, family):
    """Stage 2 runs the processor on each video of a micro-batch once and repeats its rows per rollout
    (`expand_rows`): bit-identical to processing every rollout's copy of the video (the former inputs), while the
    stored rollout batch holds 1/num_rollouts of the pixels."""
    from descore_plugin.data.video import load_video
    from descore_plugin.training.stage2 import expand_rows

    model = DeScoreReward.from_pretrained(tiny_dirs[family])
    pairs = load_pairs(stage1["data"])[:2]
    videos = [load_video(v, fps=model.config.fps, num_frames=model.config.num_frames) for p in pairs for v in p.videos]
    prompts = [p.prompt for p in pairs for _ in p.videos]
    rows = [i for i in range(len(videos)) for _ in range(3)]
    once = model.encode_prompts(videos, prompts, stage="rollout")
    every = model.encode_prompts([videos[i] for i in rows], [prompts[i] for i in rows], stage="rollout")
    expanded = expand_rows(once, rows)
    assert sorted(expanded) == sorted(every)
    for key in every:
        assert torch.equal(expanded[key], every[key]), key
    assert every["pixel_values_videos"].numel() == 3 * once["pixel_values_videos"].numel()


def test_stage2_reduction_token_mean_over_mini_batch_bt_per_micro_batch(stage1, tmp_path):
    """Two micro-batches of one mini-batch, before any update (ratio 1, KL 0, so the per-token loss is -A): their
    policy terms add up to the token mean over the MINI-batch, each micro-batch carries its own mean BT term, and
    the loss handed to accelerate is scaled back up by the accumulation count (accelerate divides by it)."""
    trainer = Trainer(
        stage2_config(stage1, "full", tmp_path / "r", actor_batch_size=4, rollout_batch_size=2, bt_weight=0.5)
    )
    assert trainer.accumulation == 2 and trainer.steps_per_rollout == 1
    trainer.rollouts = trainer._rollout_batch(0)
    micros = trainer.rollouts["micro"]
    for i, m in enumerate(micros):  # known, unequal advantages (a random tiny model's rule rewards are all 0)
        m["advantages"] = torch.linspace(-1.0, 1.5, len(m["cot_ids"])) * (i + 1)
    results = [trainer.stage2_loss(step, trainer.stage2_inputs(trainer.batch_for(step))) for step in (0, 1)]
    assert trainer.rollouts["micro"] is micros  # the same rollout batch served both micro-batches
    tokens = [torch.tensor([len(c) + int(e) for c, e in zip(m["cot_ids"], m["ended"])]) for m in micros]
    total = sum(int(t.sum()) for t in tokens)
    assert int(trainer.rollouts["mini_tokens"][0]) == total == sum(m["tokens"] for m in micros)
    for m, t, result in zip(micros, tokens, results):
        logs = result["logs"]
        expected = -float((m["advantages"] * t).sum()) / total
        assert expected != 0 and logs["train/policy_loss"] == pytest.approx(expected, abs=1e-6)
        assert logs["train/loss"] == pytest.approx(logs["train/policy_loss"] + 0.5 * logs["train/bt_loss"], abs=1e-6)
        assert result["loss"].item() == pytest.approx(2 * logs["train/loss"], abs=1e-6)


def test_rollout_reward_official_parser_by_default_lenient_as_option():
    """The stage-2 rule reward reads answers officially unless --rule-parser lenient: string digits never equal the
    integer ground truth, and an unclosed block is no answer."""
    from descore_plugin.training.losses import rollout_reward

    truth = {"subject": 2, "dynamics": 1, "camera": 2, "environment": 2, "style": "N/A"}
    strings = (
        '<answer>{"dimensional_scores": {"subject": "2", "dynamics": "1", "camera": 2, "environment": 2, '
        '"style": "N/A"}, "overall_score": 4.0}</answer>'
    )
    assert TrainConfig(model="m", train_data="d", output_dir="o", stage=2).resolve().rule_parser == "official"
    official, lenient = rollout_reward(strings, truth), rollout_reward(strings, truth, parser="lenient")
    assert official == pytest.approx({"reward": 0.7 * 0.6 + 0.1, "accuracy": 0.6, "format": 1.0, "length": 0.0})
    assert lenient == pytest.approx({"reward": 0.7 + 0.1, "accuracy": 1.0, "format": 1.0, "length": 0.0})
    unclosed = strings.replace("</answer>", "")
    assert rollout_reward(unclosed, truth)["format"] == 0.0


# ---------------------------------------------------------------------- batch geometry, global on any process count
GEOMETRY_WORKER = Path(__file__).resolve().parent / "stage2_geometry_worker.py"


def _geometry_run(model, pairs, out, processes: int) -> list[dict]:
    from helpers.run import offline_env, run_python, torchrun

    command = torchrun(processes, GEOMETRY_WORKER, model, pairs, out)
    done = run_python(command, env=offline_env(ACCELERATE_USE_CPU="true"))
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank.{r}.json").read_text()) for r in range(processes)]


def test_stage2_geometry_is_global_on_one_and_two_processes(stage1, tmp_path):
    """--rollout-batch-size 4 pairs and --actor-batch-size 4 videos: every rollout batch holds 4 pairs x 2 videos x
    2 rollouts = 16 sequences and gives 2 optimiser steps of 2 pairs (8 sequences), on 1 process (2 micro-batches a
    step) and on 2 (1 each) alike; the steps update on the same pairs. (Official: 128 pairs x 2 x 8 = 2,048
    sequences, 32 steps of 8 videos x 8 rollouts = 64.)"""
    runs = {n: _geometry_run(stage1["full"], stage1["data"], tmp_path / f"p{n}", n) for n in (1, 2)}
    for n, ranks in runs.items():
        assert all(r["num_processes"] == n and r["steps_per_rollout"] == 2 for r in ranks)
        assert all(r["accumulation"] == 2 // n for r in ranks)
        # sequences per rollout batch, summed over processes: 16, sampled once for its 2 steps
        per_batch = {}
        for rank in ranks:
            for batch in rank["rollouts"]:
                per_batch[batch["index"]] = per_batch.get(batch["index"], 0) + batch["sequences"]
        assert per_batch == {0: 16}
        assert all(len(rank["rollouts"]) == 1 for rank in ranks)  # sampled once per rollout batch, not per step
    steps = {n: {} for n in runs}
    for n, ranks in runs.items():
        for rank in ranks:
            for update in rank["updates"]:
                entry = steps[n].setdefault(update["step"], {"videos": [], "sequences": 0})
                entry["videos"] += update["videos"]
                entry["sequences"] += update["sequences"]
    assert sorted(steps[1]) == sorted(steps[2]) == [0, 1]
    for step in range(2):
        assert steps[1][step]["sequences"] == steps[2][step]["sequences"] == 8  # 2 pairs x 2 videos x 2 rollouts
        assert sorted(steps[1][step]["videos"]) == sorted(steps[2][step]["videos"])  # the same global batch


def test_stage2_geometry_errors_name_the_flags():
    from descore_plugin.training.stage2 import stage2_geometry
    from descore_plugin.utils.errors import UserError

    config = TrainConfig(model="m", train_data="d", output_dir="o", stage=2).resolve()
    assert stage2_geometry(config, 1) == (4, 32)  # official: 4 pairs a step, 32 steps per rollout batch of 128 pairs
    with pytest.raises(UserError, match="--actor-batch-size 8 .*--batch-size 1 x 8 process"):
        stage2_geometry(config, 8)
    with pytest.raises(UserError, match="--actor-batch-size 7"):
        TrainConfig(model="m", train_data="d", output_dir="o", stage=2, actor_batch_size=7).resolve()


# ---------------------------------------------------------------------- what trains, and which verdict the BT term reads
def _official_rows(pairs, gsb, gsb_result):
    """The pairs as official stage-2 JSONL rows: `videos`, `prompt`, `GSB` and the ground-truth `answer` JSON."""
    rows = []
    for pair, column, verdict in zip(pairs, gsb, gsb_result):
        answer = {"video_1_scores": pair.scores_a, "video_2_scores": pair.scores_b, "gsb_result": verdict}
        rows.append(
            {
                "videos": [pair.video_a, pair.video_b],
                "prompt": pair.prompt,
                "GSB": column,
                "answer": f"<answer>{json.dumps(answer)}</answer>",
            }
        )
    return rows


def test_stage2_bt_label_from_gsb_result_by_default_gsb_column_as_option(stage1, tmp_path, monkeypatch):
    """Official: the auxiliary BT term reads `gsb_result` in the answer JSON ("Video 1 is better" or "A", "Video 2 is
    better" or "B"), not the GSB column; --bt-label label reads the column."""
    from descore_plugin.training import stage2 as trainer_module

    pairs = load_pairs(stage1["data"])[:1]
    path = tmp_path / "official.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _official_rows(pairs, ["A"], ["B"])))
    loaded = load_pairs(path, require_scores=True)[0]
    assert loaded.label == "A" and loaded.answer_label == "B"
    for written, expected in (("Video 1 is better", "A"), ("A", "A"), ("Video 2 is better", "B"), ("same", "tie")):
        path.write_text(json.dumps(_official_rows(pairs, [""], [written])[0]) + "\n")
        assert load_pairs(path, require_scores=True)[0].answer_label == expected, written
        assert load_pairs(path, require_scores=True)[0].label == expected  # no GSB: the label is that verdict too
    path.write_text("".join(json.dumps(row) + "\n" for row in _official_rows(pairs, ["A"], ["B"])))

    trainer = Trainer(stage2_config(stage1, "full", tmp_path / "bt", train_data=str(path), bt_weight=1.0))
    assert trainer.config.bt_label == "answer"
    seen = []
    real = trainer_module.bradley_terry_loss
    monkeypatch.setattr(
        trainer_module,
        "bradley_terry_loss",
        lambda chosen, rejected, *a: seen.append((chosen.detach(), rejected.detach())) or real(chosen, rejected),
    )
    batch = trainer.stage2_inputs(trainer.batch_for(0))
    trainer.rollouts = trainer._rollout_batch(0)
    trainer.stage2_loss(0, batch)
    trainer.config.bt_label = "label"
    trainer.stage2_loss(0, batch)
    (answer_chosen, answer_rejected), (label_chosen, label_rejected) = seen
    torch.testing.assert_close(answer_chosen, label_rejected)  # answer says B, the GSB column says A
    torch.testing.assert_close(answer_rejected, label_chosen)
    assert not torch.equal(answer_chosen, answer_rejected)


@pytest.mark.parametrize("rows", ["all", "reward_token"])
def test_stage2_full_fine_tuning_trains_every_embedding_row_by_default(stage1, tmp_path, rows):
    """Official stage 2 (full fine-tuning): every input-embedding row and the output head train (no restore of the
    other rows); --train-embeddings reward_token keeps every row but <Reward> as it was."""
    overrides = {} if rows == "all" else {"train_embeddings": "reward_token"}
    trainer = Trainer(stage2_config(stage1, "full", tmp_path / rows, learning_rate=1e-2, **overrides))
    assert trainer.config.train_embeddings == rows
    model = trainer.accelerator.unwrap_model(trainer.model)
    weight = model.vlm.get_input_embeddings().weight
    before = weight.detach().clone()
    head_before = model.vlm.lm_head.weight.detach().clone()
    trainer.train()
    others = torch.ones(len(before), dtype=torch.bool)
    others[model.reward_token_id] = False
    moved = (weight.detach() != before).any(-1)
    assert model.vlm.lm_head.weight.requires_grad and not torch.equal(model.vlm.lm_head.weight.detach(), head_before)
    if rows == "all":
        assert trainer.trainable_row is None and moved[others].sum() > 10  # the rows of the tokens it saw
    else:
        assert trainer.trainable_row is not None and not moved[others].any() and moved[model.reward_token_id]


def rounded_away_share(trainer) -> float:
    """One optimiser step of `trainer`: the share of the weight elements AdamW moved (a non-zero first moment) whose
    stored value did not change, i.e. whose update rounded away in the weights' dtype."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    trainer.config.max_steps = 1
    trainer.train()
    stepped = unchanged = 0
    for param, old in zip(params, before):
        state = trainer.optimizer.optimizer.state.get(param, {})
        if "exp_avg" not in state:
            continue
        moved = state["exp_avg"] != 0
        stepped += int(moved.sum())
        unchanged += int((moved & (param.detach() == old)).sum())
    return unchanged / stepped


@pytest.mark.parametrize("pure_bf16", [False, True])
def test_pure_bf16_rounds_most_updates_away_at_the_official_learning_rate(stage1, tmp_path, pure_bf16):
    """--pure-bf16 (the official stage-2 numerics: bf16 weights and AdamW states, no float32 copy): at lr 1e-6 most
    weight updates round away; the default float32 weights take every one."""
    trainer = Trainer(stage2_config(stage1, "full", tmp_path / str(pure_bf16), learning_rate=1e-6, pure_bf16=pure_bf16))
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.head.weight.dtype == (torch.bfloat16 if pure_bf16 else torch.float32)
    share = rounded_away_share(trainer)
    print(f"pure_bf16={pure_bf16}: {share:.4f} of the stepped weight elements unchanged after one step at lr 1e-6")
    if pure_bf16:
        assert share > 0.9
    else:
        assert share < 0.01


# ---------------------------------------------------------------------- a start that cannot learn is refused
def test_stage2_refuses_a_start_whose_cots_do_not_parse(stage1, tmp_path, capsys):
    """A random tiny model writes no <answer>: stage 2 stops before step 1 with one line naming the way out, and
    leaves no run directory behind; --allow-unparsed-cots starts anyway."""
    main = recipe("train_rm.py")
    out = tmp_path / "refused"
    argv = [
        "--stage",
        "2",
        "--model",
        str(stage1["full"]),
        "--train-data",
        str(stage1["data"]),
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--rollout-batch-size",
        "1",
        "--actor-batch-size",
        "2",
        "--num-rollouts",
        "2",
        "--max-new-tokens",
        "6",
        "--log-with",
        "none",
        "--save-steps",
        "0",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err  # after the progress bars of loading: one error line, no traceback
    lines = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("train_rm.py: error: --stage 2: the starting model"), lines
    assert "--allow-unparsed-cots" in lines[0] and "--lm-loss-weight" in lines[0]
    assert not out.exists()
    assert main(argv + ["--allow-unparsed-cots"]) == 0


def test_stage2_starts_from_a_judge_that_writes_its_answer(tmp_path, caplog):
    """The shipped demo judge writes readable answers: stage 2 starts without the escape flag, and records the CoT
    length it trains on (its rollout limit) in the model it saves."""
    demo = runpy.run_path(str(RECIPES / "train_demo_judge.py"), run_name="recipe")
    data = write_dataset(tmp_path / "data", 4, seed=3, defects=demo["DEFECTS"], world=demo["WORLD"], progress=False)
    config = TrainConfig(
        stage=2,
        model=str(RECIPES / "demo_judge"),
        train_data=str(data),
        output_dir=str(tmp_path / "s2"),
        max_steps=1,
        batch_size=1,
        rollout_batch_size=1,
        actor_batch_size=2,
        num_rollouts=2,
        max_new_tokens=demo["MAX_NEW_TOKENS"],
        save_steps=0,
        log_with=None,
        learning_rate=1e-6,
    )
    with caplog.at_level("INFO"):
        trainer = Trainer(config)
    assert "readable <answer> for" in caplog.text
    trainer.train()
    assert DeScoreReward.from_pretrained(tmp_path / "s2").config.trained_cot_tokens == demo["MAX_NEW_TOKENS"]


def test_stage1_records_the_longest_training_cot(stage1, tiny_dirs, tmp_path):
    """The saved stage-1 model's config holds the longest CoT of its training pairs, in tokens: scoring sizes its
    default CoT limit to it (twice that), instead of the 4,096-token bound."""
    pairs = load_pairs(stage1["data"])
    model = DeScoreReward.from_pretrained(stage1["full"])
    cots = [c for p in pairs for c in (p.cot_a, p.cot_b) if c]
    longest = max(len(model.tokenizer(c)["input_ids"]) for c in cots)
    assert model.config.trained_cot_tokens == longest > 0
    assert model.config.cot_token_limit() == min(model.config.max_new_tokens, 2 * longest)


def test_runs_that_cannot_learn_are_flagged(stage1, tmp_path, caplog):
    """A random tiny model: stage 2 warns that every rollout's rule reward is 0, and an evaluation whose CoTs never
    parse says so (stage 1 and 2 alike)."""
    with caplog.at_level("WARNING"):
        Trainer(stage2_config(stage1, "full", tmp_path / "s2")).train()
    assert "every rollout's rule reward is 0" in caplog.text
    caplog.clear()
    config = TrainConfig(
        stage=1,
        model=str(stage1["full"]),
        train_data=str(stage1["data"]),
        eval_data=str(stage1["data"]),
        output_dir=str(tmp_path / "s1"),
        max_steps=1,
        batch_size=1,
        gradient_accumulation_steps=1,
        lora_rank=2,
        save_steps=0,
        eval_max_new_tokens=4,
        log_with=None,
    )
    with caplog.at_level("WARNING"):
        logs = Trainer(config).train()
    assert logs["eval/cot_parse_rate"] == 0.0 and "none of the 12 CoTs the model wrote" in caplog.text
