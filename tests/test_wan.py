"""Wan-2.1 through diffusers (integrations/wan.py) on the tiny real-architecture pipeline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

from descore_plugin.integrations import wan
from descore_plugin.testing import tiny_wan

PROMPTS = ["a red ball bouncing on a green field", "a cat walking in the snow at night"]


@pytest.fixture(scope="module")
def tiny_dir(tiny_wan_dir):
    torch.set_num_threads(1)
    return tiny_wan_dir  # conftest's (write_tiny_wan(seed=0)), shared by the post-training tests: read only


@pytest.fixture()
def pipe(tiny_dir):
    return wan.load_wan_pipeline(tiny_dir)


def _noise(pipe, generation, batch_size=2, seed=0):
    return wan.initial_noise(pipe, batch_size, generation, generator=torch.Generator().manual_seed(seed))


def test_tiny_wan_loads_with_from_pretrained(tiny_dir):
    pipe = WanPipeline.from_pretrained(tiny_dir)
    assert type(pipe.scheduler) is UniPCMultistepScheduler  # the scheduler type Wan-AI ships
    assert pipe.scheduler.config.prediction_type == "flow_prediction" and pipe.scheduler.config.flow_shift == 3.0
    assert pipe.transformer.config.num_attention_heads == 2 and pipe.transformer.config.attention_head_dim == 12
    assert pipe.transformer.config.text_dim == pipe.text_encoder.config.d_model == 32
    assert pipe.vae.config.z_dim == 16 and pipe.vae.config.base_dim == 3
    ids = pipe.tokenizer("a red ball").input_ids
    assert ids[-1] == pipe.tokenizer.eos_token_id == 1 and pipe.tokenizer.pad_token_id == 0
    assert tiny_wan.generation_defaults(tiny_dir) == tiny_wan.TINY_GENERATION
    assert tiny_wan.generation_defaults(tiny_dir / "missing") == wan.WanGenerationConfig()  # Wan-2.1 model-card values


@pytest.mark.parametrize("solver", ["scheduler", "euler"])
def test_sampler_reproduces_pipeline_call(pipe, solver):
    generation = tiny_wan.TINY_GENERATION
    if solver == "euler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    noise = _noise(pipe, generation)
    expected = pipe(
        PROMPTS,
        num_frames=generation.num_frames,
        height=generation.height,
        width=generation.width,
        num_inference_steps=generation.num_inference_steps,
        guidance_scale=generation.guidance_scale,
        latents=noise.clone(),
        max_sequence_length=generation.max_sequence_length,
        output_type="pt",
    ).frames
    cache = wan.PromptCache(pipe, generation.max_sequence_length)
    videos, latents = wan.generate(pipe, cache, PROMPTS, generation, latents=noise.clone(), solver=solver)
    assert videos.shape == (2, 9, 3, 64, 64) == expected.shape
    assert videos.min() >= 0 and videos.max() <= 1 and videos.std() > 0.01
    torch.testing.assert_close(videos, expected, rtol=0, atol=1e-6)


def test_flow_grids_come_from_the_scheduler(pipe):
    steps = 6
    euler = wan.flow_grid(FlowMatchEulerDiscreteScheduler(shift=3.0), steps)
    shift = lambda s: 3.0 * s / (1 + 2.0 * s)  # noqa: E731  (flow shift, shift 3)
    # FlowMatchEuler: the smallest training sigma shift(1/1000) is shifted AGAIN on the inference grid.
    assert euler.sigmas[-2].item() == pytest.approx(shift(shift(1 / 1000)), rel=1e-5)
    assert euler.sigmas[-2].item() == pytest.approx(0.0089286, rel=1e-4)
    assert euler.sigmas[0].item() == 1.0 and euler.sigmas[-1].item() == 0.0 and len(euler) == steps
    torch.testing.assert_close(euler.timesteps, euler.sigmas[:-1] * 1000)
    unipc = wan.flow_grid(pipe.scheduler, steps)
    expected = shift(torch.linspace(1, 1 / 1000, steps + 1, dtype=torch.float64)[:-1])
    expected[0] -= 1e-6  # UniPC keeps sigma_0 below 1 (log of alpha)
    torch.testing.assert_close(unipc.sigmas[:-1].double(), expected, rtol=1e-6, atol=1e-7)
    assert unipc.sigmas[-1].item() == 0.0
    assert unipc.timesteps.dtype == torch.int64 and unipc.timesteps[1].item() == int(expected[1].item() * 1000)


def test_euler_trajectory_follows_the_sigma_grid(pipe):
    generation = tiny_wan.TINY_GENERATION
    cache = wan.PromptCache(pipe, generation.max_sequence_length)
    noise = _noise(pipe, generation)
    embeds, negative = cache.embed(PROMPTS), cache.negative(2)
    output = wan.sample(
        pipe.transformer,
        pipe.scheduler,
        noise,
        embeds,
        negative,
        generation.num_inference_steps,
        generation.guidance_scale,
        return_trajectory=True,
    )
    grid = wan.flow_grid(pipe.scheduler, generation.num_inference_steps)
    assert output.grid.sigmas.tolist() == grid.sigmas.tolist() and len(output.trajectory) == len(grid) + 1
    with torch.no_grad():
        for i in range(len(grid)):
            velocity = wan.predict_velocity(
                pipe.transformer, output.trajectory[i], grid.timesteps[i], embeds, negative, generation.guidance_scale
            )
            step = wan.euler_step(output.trajectory[i], velocity, grid.sigmas[i], grid.sigmas[i + 1])
            torch.testing.assert_close(step, output.trajectory[i + 1], rtol=0, atol=0)
    with pytest.raises(wan.WanInputError, match="solver must be"):
        wan.sample(pipe.transformer, pipe.scheduler, noise, embeds, solver="heun")


def test_latent_normalisation_matches_the_pipeline(pipe):
    torch.manual_seed(0)
    videos = torch.rand(2, 9, 3, 64, 64)
    latents = wan.encode_videos(pipe, videos)
    assert latents.shape == wan.latent_shape(pipe, 2, 9, 64, 64) == (2, 16, 3, 8, 8)
    raw = pipe.vae.encode(videos.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mode()
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(latents, (raw - mean) / std, rtol=1e-5, atol=1e-6)
    decoded = wan.decode_latents(pipe, latents)
    expected = pipe.vae.decode(latents * std + mean).sample.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(decoded, (expected * 0.5 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)


def test_prompt_cache_encodes_each_prompt_once(pipe):
    calls = []
    pipe.text_encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    cache = wan.PromptCache(pipe, max_sequence_length=32)
    first = cache.embed(PROMPTS)
    second = cache.embed(list(reversed(PROMPTS)))
    negative = cache.negative(3)
    assert calls == [2, 1]  # the two prompts once, then the negative prompt once
    expected, expected_negative = pipe.encode_prompt(PROMPTS, max_sequence_length=32)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second, expected.flip(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(negative, expected_negative[:1].expand(3, -1, -1), rtol=1e-5, atol=1e-6)
    length = len(pipe.tokenizer(PROMPTS[0]).input_ids)
    assert first.shape == (2, 32, 32) and length < 32
    assert (first[0, length:] == 0).all() and (first[0, :length] != 0).any(dim=-1).all()  # padding zeroed


def test_lora_reference_and_diffusers_round_trip(pipe, tiny_dir, tmp_path):
    transformer = pipe.transformer
    torch.manual_seed(0)
    latents, embeds = torch.randn(2, 16, 3, 8, 8), torch.randn(2, 32, 32)
    base = wan.predict_velocity(transformer, latents, 500, embeds).detach()
    lora = wan.add_lora(transformer, rank=4, alpha=8, target_modules=wan.WAN_ATTENTION_TARGETS)
    # 2 blocks x 8 attention linears x (A, B); nothing else trainable.
    assert len(lora) == 32 and all(p.dtype == torch.float32 for p in lora)
    assert sum(p.requires_grad for p in transformer.parameters()) == 32
    torch.testing.assert_close(wan.predict_velocity(transformer, latents, 500, embeds), base, rtol=0, atol=0)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    adapted = wan.predict_velocity(transformer, latents, 500, embeds).detach()
    assert (adapted - base).abs().max() > 1e-3
    with wan.disable_adapter(transformer):
        torch.testing.assert_close(wan.predict_velocity(transformer, latents, 500, embeds), base, rtol=0, atol=0)
    torch.testing.assert_close(wan.predict_velocity(transformer, latents, 500, embeds), adapted, rtol=0, atol=0)

    wan.save_lora_weights(transformer, tmp_path / "lora")
    fresh = wan.load_wan_pipeline(tiny_dir)
    fresh.load_lora_weights(tmp_path / "lora")  # alpha/rank = 2 must survive (metadata), or outputs differ
    torch.testing.assert_close(wan.predict_velocity(fresh.transformer, latents, 500, embeds), adapted)

    state = wan.lora_state_dict(transformer)
    other = wan.load_wan_pipeline(tiny_dir).transformer
    wan.add_lora(other, rank=4, alpha=8, target_modules=wan.WAN_ATTENTION_TARGETS)
    wan.load_lora_state_dict(other, state)
    torch.testing.assert_close(wan.predict_velocity(other, latents, 500, embeds), adapted, rtol=0, atol=0)


def test_default_lora_targets_cover_attention_and_ffn(pipe):
    wan.add_lora(pipe.transformer, rank=2, alpha=2)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in pipe.transformer.named_parameters() if ".lora_A" in name}
    expected = {f"blocks.{b}.{t}" for b in range(2) for t in wan.WAN_ALL_LINEAR_TARGETS}
    assert adapted == expected


def test_teaching_errors(tmp_path):
    with pytest.raises(wan.WanInputError, match="num_frames=10"):
        wan.check_video_size(10, 64, 64)
    with pytest.raises(wan.WanInputError, match="height=60"):
        wan.check_video_size(9, 60, 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(wan.WanInputError, match="init-tiny-wan"):
        wan.load_wan_pipeline(tmp_path / "empty")


def test_reward_cot_cap_and_check_rewards_scored_only_at_evaluation(tiny_dir, tiny_dirs, tmp_path):
    """--reward-max-new-tokens caps DeScore's CoT in a Wan recipe; --check NAME is scored on the evaluation videos
    (eval/NAME, scores.jsonl) and never trained on (no reward/NAME, not in the advantages)."""
    import json

    from transformers import AutoTokenizer

    from descore_plugin.integrations.post_training import WanRunConfig, build_rewards, config_from_argv, post_train

    judge = str(tiny_dirs["qwen2_5_vl"])
    run = WanRunConfig(
        pipeline=str(tiny_dir),
        prompts="p.txt",
        reward=["analytic:redness"],
        reward_model=judge,
        reward_max_new_tokens=3,
        check=["descore", "analytic:brightness"],
    )
    trained, evaluated = build_rewards(run, "cpu", torch.float32)
    assert trained.names == ["analytic:redness"] and len(trained.rewards) == 1
    assert evaluated.names == ["analytic:redness", "descore", "analytic:brightness"]
    assert [r.score_kwargs["max_new_tokens"] for r in evaluated.rewards if hasattr(r, "score_kwargs")] == [3]

    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    result = post_train(
        config_from_argv(
            "flow_grpo",
            [
                "--pipeline",
                str(tiny_dir),
                "--prompts",
                str(tmp_path / "p.txt"),
                "--output-dir",
                str(tmp_path / "run"),
                "--reward",
                "analytic:redness",
                "--check",
                "descore",
                "analytic:brightness",
                "--reward-model",
                judge,
                "--reward-max-new-tokens",
                "3",
                "--max-steps",
                "1",
                "--group-size",
                "2",
                "--prompts-per-step",
                "1",
                "--height",
                "32",
                "--width",
                "32",
                "--eval-prompts",
                "1",
                "--eval-videos-per-prompt",
                "1",
                "--lora-rank",
                "2",
                "--lora-alpha",
                "2",
            ],
        )
    )  # 9 frames: the judge reads 8
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert set(k for k in train[0] if k.startswith("reward/")) == {"reward/analytic:redness"}
    assert {"eval/descore", "eval/analytic:brightness", "eval/analytic:redness"} <= set(result.metrics)
    assert result.metrics["eval/cot_parse_rate"] == 0.0  # 3 new tokens hold no <answer> block
    lines = [
        json.loads(line)
        for line in (result.output_dir / "samples" / "step-000001" / "scores.jsonl").read_text().splitlines()
    ]
    assert {"descore", "analytic:brightness", "analytic:redness"} <= set(lines[0]["scores"])
    tokenizer = AutoTokenizer.from_pretrained(judge)
    assert 0 < len(tokenizer(lines[0]["cot"], add_special_tokens=False).input_ids) <= 4  # 3 new tokens, re-tokenised


def test_a_method_is_one_class_registered_and_run_by_the_generic_entry(tiny_dir, tmp_path, capsys):
    """The protocol a new method implements (config dataclass, prepare, train_step -> metrics, curve names): a
    plain flow-matching step on the base model's own samples, registered and run through post_train.py's entry."""
    import dataclasses
    import json

    from safetensors.torch import load_file

    from descore_plugin.integrations import post_training

    @dataclasses.dataclass
    class SelfDistillConfig:
        """A toy method's own flag."""

        videos_per_step: int = dataclasses.field(default=2, metadata={"help": "videos per step"})

    class SelfDistill(post_training.WanMethod):
        name = "self-distill"
        curve_names = ("train/loss",)
        config_classes = (SelfDistillConfig,)
        defaults = dict(lora_rank=2, lora_alpha=2.0, lora_targets="attention")

        def prepare(self):
            self.own = self.config.get(SelfDistillConfig)

        def train_step(self, step):
            generator = torch.Generator().manual_seed(post_training.seed_of(self.run.seed, "self_distill", step))
            prompts = [p for _, p in self.my_prompts][: self.own.videos_per_step]
            with wan.disable_adapter(self.transformer):
                _, x0 = wan.generate(self.pipe, self.prompt_cache, prompts, self.generation, generator=generator)
            t = torch.rand(len(prompts), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
            velocity = wan.predict_velocity(self.model, x_t, t * 1000, self.prompt_cache.embed(prompts))
            loss = (velocity.float() - (noise - x0)).pow(2).mean()
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad()
            return {"train/loss": loss.item()}

    post_training.register_method("self_distill", SelfDistill)
    try:
        (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
        assert (
            post_training.main(
                [
                    "self_distill",
                    "--pipeline",
                    str(tiny_dir),
                    "--prompts",
                    str(tmp_path / "p.txt"),
                    "--output-dir",
                    str(tmp_path / "run"),
                    "--reward",
                    "analytic:redness",
                    "--max-steps",
                    "2",
                    "--checkpoint-every",
                    "1",
                    "--eval-prompts",
                    "1",
                    "--eval-videos-per-prompt",
                    "1",
                    "--videos-per-step",
                    "1",
                ]
            )
            == 0
        )
    finally:
        del post_training.METHODS["self_distill"]
    assert "LoRA in" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("eval", 0), ("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    assert json.loads((tmp_path / "run" / "run_args.json").read_text())["videos_per_step"] == 1
    published = load_file(str(tmp_path / "run" / "pytorch_lora_weights.safetensors"))
    trained = load_file(str(tmp_path / "run" / "checkpoint-2" / "lora.safetensors"))
    assert all(torch.equal(published[f"transformer.{k}"], v) for k, v in trained.items())
    assert post_training.main(["nothing"]) == 2 and "choose one of flow_dpo" in capsys.readouterr().err
