"""Flow-DPO (integrations/flow_dpo.py, recipes/wan_flow_dpo.py) on the tiny real-architecture Wan pipeline."""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from helpers.run import accelerate_cpu, offline_env, run_python
from safetensors.torch import load_file

from descore_plugin.integrations import flow_dpo, wan
from descore_plugin.rewards.contract import ANALYTIC_REWARDS, RewardSet, reward_set
from descore_plugin.testing import tiny_wan
from descore_plugin.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "wan_flow_dpo.py"


def _load_recipe():
    spec = importlib.util.spec_from_file_location("wan_flow_dpo_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_dir(tiny_wan_dir):
    torch.set_num_threads(1)
    return tiny_wan_dir  # conftest's, shared by the post-training tests


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    # 24 distinct prompts built from the tiny tokenizer's corpus.
    adjectives = ["red", "blue", "small", "old"]
    prompts = [f"{a} {c}" for a in adjectives for c in tiny_wan.TINY_CORPUS][:24]
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    return path


def _pairs_batch(pipe, batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = wan.latent_shape(pipe, batch_size, 9, 64, 64)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def _perturb_lora(transformer, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


def test_first_loss_is_ln2_and_reference_is_the_base_model(tiny_dir):
    pipe = wan.load_wan_pipeline(tiny_dir)
    transformer = pipe.transformer
    base = wan.load_wan_pipeline(tiny_dir).transformer  # an independent copy without any adapter
    lora = wan.add_lora(transformer, rank=4, alpha=8, target_modules=wan.WAN_ATTENTION_TARGETS)
    winners, losers = _pairs_batch(pipe)
    embeds = wan.PromptCache(pipe, 32).embed(["a red ball", "a cat"])
    config = flow_dpo.FlowDPOConfig(timestep_shift=flow_dpo.scheduler_shift(pipe.scheduler))

    output = flow_dpo.flow_dpo_step(
        transformer, transformer, winners, losers, embeds, config, torch.Generator().manual_seed(0)
    )
    assert output.loss.item() == pytest.approx(math.log(2), abs=1e-7)  # LoRA B = 0: policy == reference
    assert output.implicit_accuracy == 0.0 and (output.inside == 0).all()
    assert output.mse_w == output.ref_mse_w and output.mse_l == output.ref_mse_l
    output.loss.backward()
    assert all(p.grad is not None for p in lora)
    assert all(p.grad is None for p in transformer.parameters() if not p.requires_grad)

    # With a non-zero adapter the reference (adapter disabled) is still exactly the base transformer.
    _perturb_lora(transformer)
    torch.manual_seed(0)
    x, timesteps = torch.randn_like(winners), torch.tensor([300.0, 800.0])
    with torch.no_grad(), wan.disable_adapter(transformer):
        reference = wan.predict_velocity(transformer, x, timesteps, embeds)
    with torch.no_grad():
        torch.testing.assert_close(reference, wan.predict_velocity(base, x, timesteps, embeds), rtol=0, atol=0)
        assert (wan.predict_velocity(transformer, x, timesteps, embeds) - reference).abs().max() > 1e-4
    perturbed = flow_dpo.flow_dpo_step(
        transformer, transformer, winners, losers, embeds, config, torch.Generator().manual_seed(0)
    )
    assert abs(perturbed.loss.item() - math.log(2)) > 1e-4
    assert perturbed.ref_mse_w == output.ref_mse_w  # same noise and t from the same generator state

    # Winner == loser: shared noise and t make the two error differences identical, whatever the adapter.
    tie = flow_dpo.flow_dpo_step(
        transformer, transformer, winners, winners.clone(), embeds, config, torch.Generator().manual_seed(3)
    )
    assert tie.loss.item() == pytest.approx(math.log(2), abs=1e-7) and (tie.inside == 0).all()


def test_loss_formula_with_per_sample_mean_mse():
    target = torch.zeros(2, 16, 1, 2, 2)
    ones = torch.ones_like(target)
    # winners: policy error 1 per element, reference 4; losers: policy 9 (sample 0) / 1 (sample 1), reference 4.
    loser_policy = torch.stack([3 * ones[0], ones[1]])
    output = flow_dpo.flow_dpo_loss(ones, loser_policy, 2 * ones, 2 * ones, target, target, beta=0.5)
    delta = torch.tensor([(1 - 4) - (9 - 4), (1 - 4) - (1 - 4)], dtype=torch.float32)
    inside = -0.25 * delta  # -beta/2 * delta
    torch.testing.assert_close(output.inside, inside)
    assert output.loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(inside).mean().item(), rel=1e-6)
    assert output.implicit_accuracy == 0.5  # sample 0 prefers the winner, sample 1 is a tie (inside 0)
    assert output.mse_w == 1.0 and output.ref_mse_w == 4.0 and output.mse_l == 5.0

    # --sft-weight w adds w * mean mse_w (the winners' flow-matching loss): here 3 * 1.0 on top of the same DPO loss,
    # and its gradient reaches the winners' prediction only.
    policy_w = ones.clone().requires_grad_(True)
    with_sft = flow_dpo.flow_dpo_loss(policy_w, loser_policy, 2 * ones, 2 * ones, target, target, 0.5, sft_weight=3.0)
    assert with_sft.loss.item() == pytest.approx(output.loss.item() + 3.0, rel=1e-6)
    torch.testing.assert_close(with_sft.inside, output.inside)
    with pytest.raises(flow_dpo.PairStoreError, match="--sft-weight"):
        flow_dpo.FlowDPOConfig(sft_weight=-1.0).check()


def test_timesteps_logit_normal_and_shifted_like_flow_grpo_dpo():
    t = flow_dpo.sample_timesteps(
        20000, flow_dpo.FlowDPOConfig(timestep_schedule="logit_normal"), torch.Generator().manual_seed(0)
    )
    logits = torch.log(t / (1 - t))
    assert 0 < t.min() and t.max() < 1
    assert abs(logits.mean().item()) < 0.03 and abs(logits.std().item() - 1) < 0.03
    # shifted: the same u, then the sigma of a FlowMatchEulerDiscreteScheduler(shift=3) training grid at floor(u N)
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = flow_dpo.FlowDPOConfig(timestep_shift=3.0)
    shifted = flow_dpo.sample_timesteps(5, config, torch.Generator().manual_seed(1))
    u = flow_dpo.sample_timesteps(
        5, flow_dpo.FlowDPOConfig(timestep_schedule="logit_normal"), torch.Generator().manual_seed(1)
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    expected = scheduler.sigmas[(u * 1000).long()]
    torch.testing.assert_close(shifted, expected.float(), rtol=0, atol=1e-6)
    assert shifted.mean() > u.mean()  # shift 3 moves t towards noise
    with pytest.raises(flow_dpo.PairStoreError, match="needs timestep_shift"):
        flow_dpo.sample_timesteps(1, flow_dpo.FlowDPOConfig())


def test_select_pairs():
    scores = [0.2, 0.9, 0.1, 0.5]
    assert flow_dpo.select_pairs(scores) == [(1, 2)]
    assert flow_dpo.select_pairs(scores, "best_worst", margin=0.8) == []
    assert flow_dpo.select_pairs(scores, "margin", margin=0.35) == [(1, 0), (1, 2), (1, 3), (3, 2)]
    assert flow_dpo.select_pairs([0.5, 0.5]) == []  # ties never make a pair
    assert flow_dpo.select_pairs([0.2, float("nan"), 0.1]) == [(0, 2)]  # no score, never in a pair
    assert flow_dpo.select_pairs([float("nan")] * 3) == []
    with pytest.raises(flow_dpo.PairStoreError, match="selection"):
        flow_dpo.select_pairs(scores, "random")


def test_build_pairs_stores_cots_and_resumes(tiny_dir, tmp_path):
    pipe = wan.load_wan_pipeline(tiny_dir)
    generation = tiny_wan.generation_defaults(tiny_dir)
    cache = wan.PromptCache(pipe, generation.max_sequence_length)
    calls = []

    class WithCots:  # a reward that also keeps CoTs, like DeScore's (`last_output`)
        last_output = None

        def __call__(self, videos, prompts):
            calls.append(len(prompts))
            self.last_output = type("Out", (), {"cots": [f"cot {i}" for i in range(len(prompts))]})
            return ANALYTIC_REWARDS["analytic:redness"](videos, prompts)

    rewards = RewardSet(weights={"analytic:redness": 1.0}, rewards=[WithCots()])
    prompts, ids = ["a red ball", "a cat", "a dog"], [0, 1, 2]
    config = flow_dpo.PairConfig(videos_per_prompt=3, generation_batch_size=2)
    store = tmp_path / "pairs"
    records = flow_dpo.build_pairs(
        pipe, pipe.transformer, cache, prompts, ids, rewards, generation, config, store, seed=5, progress=False
    )
    assert calls == [3, 3, 3] and len(records) == 3
    entry = json.loads((store / "000001.json").read_text())
    assert entry["prompt"] == "a cat" and entry["cots"] == ["cot 0", "cot 1", "cot 2"] and len(entry["scores"]) == 3
    latents = load_file(str(store / "000001.safetensors"))["latents"]
    assert latents.shape == (3, 16, 3, 8, 8)
    record = records[1]
    assert record.score_w == max(entry["scores"]) and record.score_l == min(entry["scores"])
    # The stored latents are the sampled videos' latents: decoding the winner gives its score back.
    redness = ANALYTIC_REWARDS["analytic:redness"]
    decoded = wan.decode_latents(pipe, latents[record.index_w : record.index_w + 1])
    assert redness(decoded, ["a cat"])["analytic:redness"].item() == pytest.approx(record.score_w, abs=1e-6)
    assert entry["named_scores"]["analytic:redness"] == entry["scores"]

    (store / "000001.json").unlink()  # as if interrupted before prompt 1 was written
    again = flow_dpo.build_pairs(
        pipe, pipe.transformer, cache, prompts, ids, rewards, generation, config, store, seed=5, progress=False
    )
    assert calls == [3, 3, 3, 3]  # only the missing prompt was generated again
    assert [(r.prompt_id, r.index_w, r.index_l, r.score_w) for r in again] == [
        (r.prompt_id, r.index_w, r.index_l, r.score_w) for r in records
    ]
    winners, losers = flow_dpo.pair_latents(again[1:2])
    torch.testing.assert_close(winners[0], latents[record.index_w], rtol=0, atol=0)
    # a round's latents are read once: its batches come from memory (the store could be gone)
    for path in store.glob("*.safetensors"):
        path.unlink()
    in_memory, _ = again.batch(again[1:2])
    torch.testing.assert_close(in_memory[0], latents[record.index_w], rtol=0, atol=0)
    assert len(again.scores) == 9 and again.scores[3:6] == entry["scores"]


@torch.no_grad()
def test_unparsed_cots_make_pairs_by_default_and_none_with_unparsed_cot_nan(tmp_path):
    """--unparsed-cot on the shipped world Wan and demo judge, whose CoTs on the Wan's videos often break: by default
    the head scores every video (the paper); with nan a video whose CoT did not parse has no score and is in no pair,
    and every other video keeps exactly its score. The flag reaches the reward through the recipe's config."""
    from descore_plugin.integrations.post_training import build_rewards, check_reward_flags, config_from_argv
    from descore_plugin.modeling.prompt import parse_answer

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    pipe = wan.load_wan_pipeline(recipes / "world_wan")
    generation = tiny_wan.generation_defaults(recipes / "world_wan")
    cache = wan.PromptCache(pipe, generation.max_sequence_length)
    prompts = ["a red square moving right on a dark background", "a blue circle moving down on a light background"]
    argv = ["--pipeline", str(recipes / "world_wan"), "--prompts", "p.txt", "--output-dir", str(tmp_path / "run")]
    argv += ["--reward-model", str(recipes / "demo_judge"), "--max-steps", "1"]
    entries = {}
    for mode in ("score", "nan"):
        run = config_from_argv("flow_dpo", argv + ["--unparsed-cot", mode]).run
        assert run.unparsed_cot == mode
        rewards, _ = build_rewards(run, "cpu", torch.float32)
        config = flow_dpo.PairConfig(videos_per_prompt=4, pair_selection="margin")
        store = tmp_path / mode
        records = flow_dpo.build_pairs(
            pipe, pipe.transformer, cache, prompts, [0, 1], rewards, generation, config, store, seed=0, progress=False
        )
        entries[mode] = [json.loads((store / f"{i:06d}.json").read_text()) for i in (0, 1)], records
    (by_default, default_pairs), (with_nan, nan_pairs) = entries["score"], entries["nan"]
    cots = [cot for entry in by_default for cot in entry["cots"]]
    assert cots == [cot for entry in with_nan for cot in entry["cots"]]  # the same videos, the same greedy CoTs
    broken = [parse_answer(cot).error is not None for cot in cots]
    assert 0 < sum(broken) < len(broken)
    scored = [s for entry in by_default for s in entry["scores"]]
    dropped = [s for entry in with_nan for s in entry["scores"]]
    assert all(s is not None and math.isfinite(s) for s in scored)
    for score, kept, is_broken in zip(scored, dropped, broken):
        assert kept is None if is_broken else kept == pytest.approx(score, abs=1e-5)
    in_pairs = {(r.prompt_id, i) for r in nan_pairs for i in (r.index_w, r.index_l)}
    assert in_pairs and not any(broken[prompt * 4 + i] for prompt, i in in_pairs)
    assert any(broken[r.prompt_id * 4 + i] for r in default_pairs for i in (r.index_w, r.index_l))
    with pytest.raises(UserError, match="--unparsed-cot nan: without a CoT"):
        check_reward_flags(config_from_argv("flow_dpo", argv + ["--unparsed-cot", "nan", "--no-think"]).run)


@pytest.mark.slow
def test_recipe_raises_reward_and_saves_a_loadable_lora(tiny_dir, prompts_file, tmp_path):
    """Flow-DPO against `analytic:redness` (optimum: pure red) raises the reward of FRESH samples of the pipeline
    with the saved LoRA over the base pipeline, on noise never used in training (24 prompts x 8 videos, 100 steps)."""
    recipe = _load_recipe()
    out = tmp_path / "run"
    recipe.main(
        [
            "--pipeline",
            str(tiny_dir),
            "--reward",
            "analytic:redness",
            "--prompts",
            str(prompts_file),
            "--output-dir",
            str(out),
            "--max-steps",
            "100",
            "--learning-rate",
            "1e-2",
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--lora-targets",
            "all",
            "--videos-per-prompt",
            "8",
            "--generation-batch-size",
            "8",
            "--eval-prompts",
            "4",
            "--eval-videos-per-prompt",
            "1",
            "--checkpoint-every",
            "100",
            "--seed",
            "0",
        ]
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 100 and train[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert sum(r["train/implicit_accuracy"] for r in train[-10:]) / 10 > 0.9
    assert (out / "curves.png").stat().st_size > 1000 and (out / "pytorch_lora_weights.safetensors").is_file()

    generation = tiny_wan.generation_defaults(tiny_dir)
    fresh_prompts = [line for line in prompts_file.read_text().splitlines()][:16] * 2
    noise = wan.initial_noise(
        pipe := wan.load_wan_pipeline(tiny_dir), 32, generation, generator=torch.Generator().manual_seed(12345)
    )

    def rewards(pipeline):
        videos = torch.cat(
            [
                pipeline(
                    fresh_prompts[i : i + 8],
                    num_frames=9,
                    height=64,
                    width=64,
                    num_inference_steps=6,
                    guidance_scale=5.0,
                    latents=noise[i : i + 8].clone(),
                    max_sequence_length=32,
                    output_type="pt",
                ).frames
                for i in range(0, 32, 8)
            ]
        )
        return ANALYTIC_REWARDS["analytic:redness"](videos, fresh_prompts)["analytic:redness"], videos

    base_rewards, _ = rewards(pipe)
    trained = wan.load_wan_pipeline(tiny_dir)
    trained.load_lora_weights(out)
    trained_rewards, trained_videos = rewards(trained)
    gain = (trained_rewards - base_rewards).mean().item()
    print(
        f"redness of 32 fresh samples: base {base_rewards.mean():.5f} -> trained {trained_rewards.mean():.5f} "
        f"(gain {gain:.5f}, base std {base_rewards.std():.5f})"
    )
    assert gain > 0.003  # about one standard deviation of the base model's samples (0.003)
    assert (trained_rewards > base_rewards).float().mean() >= 0.8  # paired on the same noise

    # The LoRA loaded by diffusers reproduces the trained transformer (checkpoint weights, our sampler).
    own = wan.load_wan_pipeline(tiny_dir)
    wan.add_lora(own.transformer, rank=8, alpha=16)
    wan.load_lora_state_dict(own.transformer, load_file(str(out / "checkpoint-100" / "lora.safetensors")))
    cache = wan.PromptCache(own, 32)
    videos, _ = wan.generate(own, cache, fresh_prompts[:8], generation, latents=noise[:8].clone(), solver="scheduler")
    torch.testing.assert_close(videos, trained_videos[:8], rtol=0, atol=1e-5)


def _small_run(recipe, tiny_dir, prompts_file, out, max_steps, extra=()):
    extra = list(extra)
    reward = ["--reward", "analytic:redness"] if "--reward" not in extra else []
    assert (
        recipe.main(
            [
                "--pipeline",
                str(tiny_dir),
                *reward,
                "--prompts",
                str(prompts_file),
                "--output-dir",
                str(out),
                "--max-steps",
                str(max_steps),
                "--learning-rate",
                "1e-2",
                "--lora-rank",
                "4",
                "--lora-alpha",
                "8",
                "--videos-per-prompt",
                "2",
                "--batch-size",
                "2",
                "--eval-prompts",
                "1",
                "--eval-videos-per-prompt",
                "1",
                "--checkpoint-every",
                "3",
                "--online-every",
                "4",
                *extra,
            ]
        )
        == 0
    )


def test_resume_equals_uninterrupted(tiny_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_wan.TINY_CORPUS[:3]) + "\n")
    recipe = _load_recipe()
    _small_run(recipe, tiny_dir, prompts, tmp_path / "straight", 6)
    _small_run(recipe, tiny_dir, prompts, tmp_path / "resumed", 3)
    _small_run(recipe, tiny_dir, prompts, tmp_path / "resumed", 6, ["--resume"])
    straight = load_file(str(tmp_path / "straight" / "pytorch_lora_weights.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "pytorch_lora_weights.safetensors"))
    assert straight.keys() == resumed.keys() and len(straight) == 32
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], rtol=0, atol=0)

    def train_rows(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows if r["kind"] == "train"]

    assert [r["step"] for r in train_rows("resumed")] == list(range(1, 7))
    assert train_rows("resumed") == train_rows("straight")
    # --online-every 4: round 1 (steps 5-6) trained on pairs regenerated by the policy after step 4.
    assert [r["train/round"] for r in train_rows("straight")] == [0, 0, 0, 0, 1, 1]
    store = next((tmp_path / "resumed" / "cache").glob("pairs-*"))
    assert (store / "round_0001" / "000002.json").is_file()
    assert json.loads((store / "key.json").read_text())["reward"] == ["analytic:redness"]


def test_rerun_is_refused_and_pairs_are_keyed_by_what_made_them(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_wan.TINY_CORPUS[:2]) + "\n")
    recipe = _load_recipe()
    _small_run(recipe, tiny_dir, prompts, tmp_path / "run", 1)
    assert (
        recipe.main(
            [
                "--pipeline",
                str(tiny_dir),
                "--reward",
                "analytic:brightness",
                "--prompts",
                str(prompts),
                "--output-dir",
                str(tmp_path / "run"),
                "--max-steps",
                "1",
            ]
        )
        == 2
    )
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    recorded = json.loads((tmp_path / "run" / "run_args.json").read_text())
    del recorded["unparsed_cot"]  # as a run begun before the flag existed
    (tmp_path / "run" / "run_args.json").write_text(json.dumps(recorded))
    _small_run(recipe, tiny_dir, prompts, tmp_path / "run", 2, ["--resume"])  # --max-steps may change
    assert json.loads((tmp_path / "run" / "run_args.json").read_text())["unparsed_cot"] == "score"  # its default
    with pytest.raises(AssertionError):  # another reward on --resume is refused, naming the flag
        _small_run(recipe, tiny_dir, prompts, tmp_path / "run", 3, ["--resume", "--reward", "analytic:brightness"])
    assert "--reward was ['analytic:redness']" in capsys.readouterr().err
    _small_run(recipe, tiny_dir, prompts, tmp_path / "run", 1, ["--overwrite", "--reward", "analytic:brightness"])
    stores = list((tmp_path / "run" / "cache").glob("pairs-*"))
    assert len(stores) == 1 and json.loads((stores[0] / "key.json").read_text())["reward"] == ["analytic:brightness"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("eval/analytic:redness" not in row for row in rows)  # nothing of the previous run is left


def test_accelerate_two_processes_keep_lora_identical(tiny_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(tiny_wan.TINY_CORPUS[:4]) + "\n")
    out = tmp_path / "ddp"
    command = accelerate_cpu(  # 2 gloo processes; the test helper records each process's weights after every step
        2,
        str(ROOT / "tests" / "ddp_checksums.py"),
        str(tmp_path / "checksums"),
        str(RECIPE),
        "--pipeline",
        str(tiny_dir),
        "--reward",
        "analytic:redness",
        "--prompts",
        str(prompts),
        "--output-dir",
        str(out),
        "--max-steps",
        "3",
        "--learning-rate",
        "1e-2",
        "--lora-rank",
        "4",
        "--lora-alpha",
        "8",
        "--videos-per-prompt",
        "2",
        "--batch-size",
        "1",
        "--eval-prompts",
        "2",
        "--eval-videos-per-prompt",
        "1",
    )
    result = run_python(command, cwd=tmp_path, env=offline_env(ACCELERATE_USE_CPU="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    checksums = {
        rank: [
            json.loads(line)["sha256"]
            for line in (tmp_path / "checksums" / f"rank{rank}.jsonl").read_text().splitlines()
        ]
        for rank in (0, 1)
    }
    assert len(checksums[0]) == 3 and checksums[0] == checksums[1]  # identical LoRA on both ranks after every step
    assert len(set(checksums[0])) == 3  # and the weights did change at every step
    # Prompts were split: rank 0 built pairs for prompts 0-1, rank 1 for 2-3 (all four on disk, each once).
    store = next((out / "cache").glob("pairs-*")) / "round_0000"
    assert sorted(p.name for p in store.glob("*.json")) == [f"{i:06d}.json" for i in range(4)]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_vbench_generates_named_videos_then_explains_missing_vbench(tiny_dir, tmp_path, capsys, monkeypatch):
    import av

    pipe = wan.load_wan_pipeline(tiny_dir)
    torch.manual_seed(0)
    wan.add_lora(pipe.transformer, rank=4, alpha=8)
    _perturb_lora(pipe.transformer, seed=2)
    wan.save_lora_weights(pipe.transformer, tmp_path / "lora")
    prompts = ["a red ball bouncing on a green field", "a cat walking in the snow, close-up shot"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    script = _load_script("eval_vbench")
    argv = [
        "--pipeline",
        str(tiny_dir),
        "--lora",
        str(tmp_path / "lora"),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--output-dir",
        str(tmp_path / "eval"),
        "--videos-per-prompt",
        "2",
        "--vbench-python",
        sys.executable,
    ]
    assert script.main(argv) == script.EXIT_VBENCH_MISSING  # this environment has no vbench (by design)
    captured = capsys.readouterr()
    assert "vbench==0.1.5" in captured.err and "--vbench-python" in captured.err
    assert str(tmp_path / "eval" / "videos" / "base") in captured.err  # says where the videos are

    def frames(path):
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    for model in ("base", "trained"):
        names = sorted(p.name for p in (tmp_path / "eval" / "videos" / model).iterdir())
        assert names == sorted(f"{p}-{i}.mp4" for p in prompts for i in range(2))  # VBench's {prompt}-{i}.mp4
    base = frames(tmp_path / "eval" / "videos" / "base" / f"{prompts[0]}-1.mp4")
    trained = frames(tmp_path / "eval" / "videos" / "trained" / f"{prompts[0]}-1.mp4")
    assert base.shape == trained.shape == (9, 64, 64, 3)
    assert np.abs(base.astype(int) - trained.astype(int)).mean() > 0.5  # the LoRA was applied
    other_seed = frames(tmp_path / "eval" / "videos" / "base" / f"{prompts[0]}-0.mp4")
    assert np.abs(base.astype(int) - other_seed.astype(int)).mean() > 0.5  # seeds differ per index

    assert "--resume" in captured.err  # the rerun it teaches continues the folder
    with pytest.raises(UserError, match="eval already exists; pass --resume to continue it or --overwrite"):
        script.main(argv)  # an existing output folder is never silently reused
    assert script.main(argv + ["--resume"]) == script.EXIT_VBENCH_MISSING  # resumed: nothing generated again
    assert "base: 0 videos generated" in capsys.readouterr().out
    (tmp_path / "eval" / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match="not written by this command"):
        script.main(argv + ["--overwrite"])  # a folder holding something else is not deleted
    (tmp_path / "eval" / "notes.txt").unlink()
    stale = tmp_path / "eval" / "videos" / "base" / f"{prompts[0]}-0.mp4"
    stale.write_bytes(b"stale")
    assert script.main(argv + ["--overwrite"]) == script.EXIT_VBENCH_MISSING
    assert "base: 4 videos generated" in capsys.readouterr().out and stale.stat().st_size > 5  # started again

    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "vbench_cache"))
    missing = script.missing_weights(script.DIMENSIONS)
    assert (
        len(missing) == 7 and missing[0][0] == tmp_path / "vbench_cache" / "dino_model" / "dino_vitbase16_pretrain.pth"
    )
    (tmp_path / "vbench_cache" / "clip_model").mkdir(parents=True)
    (tmp_path / "vbench_cache" / "clip_model" / "ViT-B-32.pt").write_bytes(b"weights")
    assert len(script.missing_weights(["background_consistency", "dynamic_degree"])) == 1
    assert "raft-things.pth" in script.weights_message(script.missing_weights(["dynamic_degree"]), [tmp_path])

    (tmp_path / "bad.txt").write_text("a cat\nred/blue ball\n")
    with pytest.raises(script.VBenchInputError, match="bad.txt, line 2"):
        script.read_prompts(tmp_path / "bad.txt")


def test_bench_dpo_reference_memory_ratio(tmp_path):
    bench = _load_script("bench_post_training")
    out = tmp_path / "bench.json"
    assert bench.main(["--json", str(out), "--only", "dpo_ref_memory_ratio", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    details = result["dpo_ref_memory"]
    assert result["dpo_ref_memory_ratio"] == details["dpo_step_peak_bytes"] / details["flow_matching_step_peak_bytes"]
    assert 1.0 <= result["dpo_ref_memory_ratio"] <= 1.15  # the reference costs no second copy of the weights
    assert details["flow_matching_step_peak_bytes"] > details["resident_bytes"] > 0


def test_uncertainty_drops_pairs_the_reward_model_is_unsure_of():
    scores, std = [0.2, 0.9, 0.1, 0.5], [0.1, 0.3, 0.4, 0.1]
    # best (1) vs worst (2): gap 0.8 against 1.0 * sqrt(0.3^2 + 0.4^2) = 0.5 -> kept; with scale 2 (1.0) -> dropped
    assert flow_dpo.select_pairs(scores, uncertainty=std, uncertainty_scale=1.0) == [(1, 2)]
    assert flow_dpo.select_pairs(scores, uncertainty=std, uncertainty_scale=2.0) == []
    kept = flow_dpo.select_pairs(scores, "margin", uncertainty=std, uncertainty_scale=1.0)
    assert kept == [(1, 0), (1, 2), (1, 3), (3, 0)]  # (3, 2): gap 0.4 < sqrt(0.1^2 + 0.4^2) = 0.41 is dropped
    assert flow_dpo.select_pairs(scores, uncertainty=std, uncertainty_scale=0.0) == [(1, 2)]  # off


def test_distilled_student_with_uncertainty_builds_dpo_pairs(tiny_dir, tmp_path):
    """A distribution-head DeScore (a no-CoT student) as the DPO reward: its uncertainty is stored with the pairs."""
    from descore_plugin import DeScoreReward
    from descore_plugin.testing.tiny import init_tiny

    init_tiny(tmp_path / "student", head="distribution")
    student = DeScoreReward.from_pretrained(tmp_path / "student")
    rewards = reward_set(["descore"], reward_model=student, think=False)
    pipe = wan.load_wan_pipeline(tiny_dir)
    generation = tiny_wan.generation_defaults(tiny_dir)
    cache = wan.PromptCache(pipe, max_sequence_length=generation.max_sequence_length)
    config = flow_dpo.PairConfig(videos_per_prompt=3, uncertainty_scale=1e6)  # an absurd scale drops every pair
    records = flow_dpo.build_pairs(
        pipe, pipe.transformer, cache, ["red cat"], [0], rewards, generation, config, tmp_path / "pairs", progress=False
    )
    stored = json.loads((tmp_path / "pairs" / "000000.json").read_text())
    uncertainty = stored["named_scores"]["descore:uncertainty"]
    assert records.records == [] and len(uncertainty) == 3 and all(u > 0 for u in uncertainty)
    with pytest.raises(flow_dpo.PairStoreError, match="needs a reward that reports descore:uncertainty"):
        flow_dpo.build_pairs(
            pipe,
            pipe.transformer,
            cache,
            ["blue cat"],
            [1],
            reward_set(["analytic:redness"]),
            generation,
            config,
            tmp_path / "pairs2",
            progress=False,
        )
