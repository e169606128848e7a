"""DiffusionNFT (integrations/nft.py, recipes/wan_nft.py): exact values on hand-computed numbers, the old adapter,
resume equal to an uninterrupted run, and a proof of effect against an analytic reward with a known optimum."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.run import accelerate_cpu, offline_env, run_python
from safetensors.torch import load_file

from descore_plugin.integrations import nft, wan
from descore_plugin.integrations.post_training import config_from_argv, post_train
from descore_plugin.rewards.contract import ANALYTIC_REWARDS
from descore_plugin.testing import tiny_wan

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "wan_nft.py"
PROMPTS = tiny_wan.TINY_CORPUS[:4]


# ---------------------------------------------------------------- the math on numbers


def test_loss_on_a_tiny_example_by_hand():
    # one video of two latent elements: x0 = [1, -1], x_t = [0.5, 0.5] at t = 0.5; v = [0, 2], v_old = [1, 1]
    x0, x_t, t = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([0.5])
    v, v_old, v_ref = torch.tensor([[0.0, 2.0]], requires_grad=True), torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2)
    out = nft.nft_loss(
        v, v_old, x_t, x0, t, torch.tensor([0.75]), beta=1.0, adv_clip_max=5.0, ref_velocity=v_ref, kl_beta=0.1
    )
    # beta 1: v+ = v = [0, 2] -> x0+ = [0.5, -0.5], error [-0.5, 0.5]: L+ = mean(0.25) / mean|.| 0.5 = 0.5
    #         v- = 2 v_old - v = [2, 0] -> x0- = [-0.5, 0.5], error [-1.5, 1.5]: L- = 2.25 / 1.5 = 1.5
    # policy = 5 (0.75 x 0.5 + 0.25 x 1.5) / 1 = 3.75;  kl = mean([0, 4]) = 2;  loss = 3.75 + 0.1 x 2 = 3.95
    assert out.positive.tolist() == [0.5] and out.negative.tolist() == [1.5]
    assert out.policy.item() == pytest.approx(3.75) and out.kl.item() == 2.0
    assert out.loss.item() == pytest.approx(3.95)
    # the gradient (the adaptive weights are constants): dL+/dv = (2 e+ / 2) (-t) / w+ = [0.5, -0.5];
    # dL-/dv = (2 e- / 2) (+t) / w- = [-0.5, 0.5]; policy: 5 (0.75 dL+ + 0.25 dL-) = [1.25, -1.25]; kl: 0.1 v = [0, 0.2]
    out.loss.backward()
    torch.testing.assert_close(v.grad, torch.tensor([[1.25, -1.05]]))

    # beta 0.5: v+ = 0.5 v + 0.5 v_old = [0.5, 1.5] -> x0+ = [0.25, -0.25], error [-0.75, 0.75]: L+ = 0.5625 / 0.75
    #           v- = 1.5 v_old - 0.5 v = [1.5, 0.5] -> x0- = [-0.25, 0.25], error [-1.25, 1.25]: L- = 1.5625 / 1.25
    half = nft.nft_loss(v.detach(), v_old, x_t, x0, t, torch.tensor([1.0]), beta=0.5, adv_clip_max=5.0)
    assert half.positive.item() == pytest.approx(0.75) and half.negative.item() == pytest.approx(1.25)
    assert half.policy.item() == pytest.approx(5 * 0.75 / 0.5) and half.kl.item() == 0.0


def test_advantages_and_the_optimality_weight_by_hand():
    # groups [1, 2, 3, 6] and [0, 0, 0, 4]: means 3 and 1; all eight rewards: mean 2, population std sqrt(3.5)
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
    std = math.sqrt(((rewards - 2) ** 2).mean().item())
    expected = [(r - m) / (std + 1e-4) for r, m in zip(rewards.tolist(), [3.0] * 4 + [1.0] * 4)]
    torch.testing.assert_close(nft.nft_advantages(rewards, 4), torch.tensor(expected))
    own = nft.nft_advantages(rewards, 4, global_std=False)  # each group's population std: sqrt(3.5) and sqrt(3)
    assert own[3].item() == pytest.approx(3 / (math.sqrt(3.5) + 1e-4)) and own[7].item() == pytest.approx(
        3 / (math.sqrt(3) + 1e-4)
    )
    # a NaN takes its group's mean: no signal
    with_nan = nft.nft_advantages(torch.tensor([1.0, float("nan"), 3.0, 2.0]), 4)
    assert with_nan[1].item() == 0.0 and torch.isfinite(with_nan).all()
    # r = clamp((clip(A, +-5) / 5) / 2 + 0.5, 0, 1)
    weights = nft.optimality_weight(torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0]), adv_clip_max=5.0)
    assert weights.tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_old_adapter_decay_schedules_and_update():
    assert [nft.old_decay(n, 1) for n in (0, 1, 100, 499, 500, 10_000)] == pytest.approx(
        [0, 0.001, 0.1, 0.499, 0.5, 0.5]
    )
    assert [nft.old_decay(n, 2) for n in (0, 74, 75, 76, 100, 208, 300)] == pytest.approx(
        [0, 0, 0, 0.0075, 0.1875, 0.9975, 0.999]
    )
    assert [nft.old_decay(n, 0) for n in (0, 50, 5000)] == [0.0, 0.0, 0.0]
    old, new = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -2.0])]
    nft.update_old(old, new, 0.25)  # old <- 0.25 old + 0.75 new
    assert old[0].tolist() == [2.5, -1.0]


def test_loss_pulls_toward_the_good_sample_and_away_from_the_bad():
    """With v_old fixed, one gradient step on v lowers the x0 error of an r = 1 sample and raises it for r = 0."""
    generator = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(2, 8, generator=generator), torch.randn(2, 8, generator=generator), torch.full((2,), 0.6)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
    v_old = noise - x0 + 0.3 * torch.randn(2, 8, generator=generator)  # the old policy's imperfect velocity
    v = v_old.clone().requires_grad_(True)
    nft.nft_loss(v, v_old, x_t, x0, t, torch.tensor([1.0, 0.0]), beta=1.0, adv_clip_max=5.0).loss.backward()
    stepped = v.detach() - 0.01 * v.grad
    error = lambda velocity: (x_t - t[:, None] * velocity - x0).pow(2).mean(dim=1)  # noqa: E731
    before, after = error(v_old), error(stepped)
    assert after[0] < before[0] and after[1] > before[1]


# ---------------------------------------------------------------- the tiny Wan


@pytest.fixture(scope="module")
def tiny_dir(tiny_wan_dir):
    torch.set_num_threads(1)
    return tiny_wan_dir  # conftest's (write_tiny_wan(seed=0)), shared by the post-training tests: read only


def argv(tiny_dir, tmp_path, output, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return [
        "--pipeline",
        str(tiny_dir),
        "--reward",
        "analytic:redness",
        "--prompts",
        str(prompts),
        "--output-dir",
        str(tmp_path / output),
        "--num-frames",
        "5",
        "--height",
        "16",
        "--width",
        "16",
        "--lora-rank",
        "4",
        "--lora-alpha",
        "4",
        "--eval-prompts",
        "1",
        "--eval-videos-per-prompt",
        "1",
        "--seed",
        "0",
        *extra,
    ]


def test_old_adapter_is_a_copy_and_is_what_samples(tiny_dir):
    pipe = wan.load_wan_pipeline(tiny_dir)
    transformer = pipe.transformer
    torch.manual_seed(0)
    wan.add_lora(transformer, rank=4, alpha=4.0)
    default, old = nft.add_old_adapter(transformer)
    assert len(default) == len(old) > 0 and all(torch.equal(a, b) for a, b in zip(default, old))
    assert all(p.requires_grad for p in default) and not any(p.requires_grad for p in old)
    with torch.no_grad():  # move the trained adapter; the old one keeps predicting the base model (B = 0)
        for parameter in default:
            parameter.add_(0.05 * torch.randn_like(parameter))
    x = torch.randn(1, 16, 2, 2, 2)
    embeds = wan.PromptCache(pipe, 32).embed(PROMPTS[:1])
    with torch.no_grad():
        trained = wan.predict_velocity(transformer, x, torch.tensor([500.0]), embeds)
        with wan.disable_adapter(transformer):
            base = wan.predict_velocity(transformer, x, torch.tensor([500.0]), embeds)
    previous = nft.old_velocity(transformer, x, torch.tensor([500.0]), embeds)
    torch.testing.assert_close(previous, base, rtol=0, atol=0)
    assert (trained - base).abs().max() > 1e-4
    assert all(p.requires_grad for p in default)  # the default adapter is active and trainable again
    names = {n for n, _ in transformer.named_parameters()}
    state = wan.lora_state_dict(transformer)  # what is saved: the default adapter only
    assert len(state) == len(default) and not any(".old." in n for n in state) and any(".old." in n for n in names)


def test_recipe_resume_equals_uninterrupted_and_publishes_the_ema(tiny_dir, tmp_path):
    flags = ("--checkpoint-every", "2", "--group-size", "2", "--prompts-per-step", "2", "--learning-rate", "1e-2")
    full = post_train(config_from_argv("nft", argv(tiny_dir, tmp_path, "full", "--max-steps", "3", *flags)))
    post_train(config_from_argv("nft", argv(tiny_dir, tmp_path, "resumed", "--max-steps", "2", *flags)))
    resumed = post_train(
        config_from_argv("nft", argv(tiny_dir, tmp_path, "resumed", "--max-steps", "3", "--resume", *flags))
    )
    assert full.step == resumed.step == 3 and "eval/analytic:redness" in resumed.metrics
    for name in ("lora", "lora_old", "lora_ema"):
        a, b = (load_file(str(run.output_dir / "checkpoint-3" / f"{name}.safetensors")) for run in (full, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def train_rows(run):
        rows = [json.loads(line) for line in (run.output_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows if r["kind"] == "train"]

    assert train_rows(full) == train_rows(resumed) and [r["train/old_decay"] for r in train_rows(full)] == [
        0.001,
        0.002,
        0.003,
    ]
    # the old adapter after 3 steps is the EMA d_n old + (1 - d_n) new of the trained one: not the trained one
    lora, old = (load_file(str(full.output_dir / "checkpoint-3" / f"{n}.safetensors")) for n in ("lora", "lora_old"))
    assert any(not torch.equal(lora[k], old[k]) for k in lora)
    published = load_file(str(full.output_dir / "pytorch_lora_weights.safetensors"))
    ema = load_file(str(full.output_dir / "checkpoint-3" / "lora_ema.safetensors"))
    for key in lora:  # the published LoRA is the EMA of the trained weights
        assert torch.equal(published[f"transformer.{key}"], ema[key.replace(".weight", ".default.weight")])


@pytest.mark.slow
def test_nft_raises_the_reward_of_fresh_samples(tiny_dir, tmp_path):
    """DiffusionNFT against analytic:redness (optimum: pure red), 20 steps of 4 prompts x 8 videos (a third of the
    GRPO tests' 60): the published LoRA raises the reward of fresh samples on noise never used in training.
    Measured (seeds 0, 1): see docs/benchmarks.md."""
    result = post_train(
        config_from_argv(
            "nft",
            argv(
                tiny_dir,
                tmp_path,
                "run",
                "--max-steps",
                "20",
                "--group-size",
                "8",
                "--prompts-per-step",
                "4",
                "--learning-rate",
                "1e-2",
                "--checkpoint-every",
                "20",
            ),
        )
    )
    pipe = wan.load_wan_pipeline(tiny_dir)
    generation = tiny_wan.generation_defaults(tiny_dir)
    generation.num_frames, generation.height, generation.width = 5, 16, 16
    cache = wan.PromptCache(pipe, generation.max_sequence_length)
    prompts = list(PROMPTS) * 8

    def fresh():
        videos, _ = wan.generate(pipe, cache, prompts, generation, generator=torch.Generator().manual_seed(1000))
        return ANALYTIC_REWARDS["analytic:redness"](videos, prompts)["analytic:redness"]

    base = fresh()
    pipe.load_lora_weights(str(result.output_dir))
    gain = fresh() - base
    assert gain.mean() > 0.8 * base.std(), (gain.mean(), base.std())
    assert (gain > 0).float().mean() >= 0.85


def test_two_processes_keep_identical_lora_weights(tiny_dir, tmp_path):
    """accelerate launch with 2 gloo processes: the old adapter switches on the unwrapped model, gradients sync
    through DDP; both processes hold the same LoRA after every optimiser step, and it changes at each."""
    command = accelerate_cpu(
        2,
        str(ROOT / "tests" / "ddp_checksums.py"),
        str(tmp_path / "ck"),
        str(RECIPE),
        *argv(
            tiny_dir,
            tmp_path,
            "ddp",
            "--max-steps",
            "2",
            "--group-size",
            "2",
            "--prompts-per-step",
            "1",
            "--eval-prompts",
            "2",
            "--learning-rate",
            "1e-2",
        ),
    )
    result = run_python(command, env=offline_env(ACCELERATE_USE_CPU="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [
        [json.loads(line)["sha256"] for line in (tmp_path / "ck" / f"rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    ]
    assert len(ranks[0]) == 2 and ranks[0] == ranks[1] and len(set(ranks[0])) == 2
    assert result.stdout.count("LoRA in") == 1  # the summary is the main process's


def test_recipe_flags_and_one_line_errors(tiny_dir, tmp_path):
    base = argv(tiny_dir, tmp_path, "o", "--max-steps", "1")
    bad = run_python([RECIPE, *base, "--decay-type", "3"], timeout=300)
    assert (
        bad.returncode == 2
        and bad.stderr.strip().splitlines()[-1] == "wan_nft.py: error: --decay-type must be 0, 1 or 2, got 3"
    )
    both = run_python([RECIPE, *base, "--check", "analytic:redness"], timeout=300)
    assert both.returncode == 2 and "--check analytic:redness: also a trained --reward" in both.stderr
    assert not (tmp_path / "o").exists()  # refused before the run directory exists
