"""A tiny Wan-2.1 that draws the synthetic world, imperfectly: the pieces `recipes/train_world_wan.py` trains.

Everything is a real diffusers / transformers class (AutoencoderKLWan, WanTransformer3DModel, UMT5EncoderModel, the
UniPC flow scheduler Wan-AI ships, a T5Tokenizer), saved as a folder that plain `diffusers.WanPipeline.from_pretrained`
loads. What is this project's choice, and why:

- The world is smaller than the judge's default one (`WORLD`: 9 frames of 32x32, a 10 px shape moving 2 px per
  frame): a Wan-valid size (4k + 1 frames, sides multiples of 16) that two CPU cores can train on.
- The VAE (`world_vae.py`) is a shallower configuration of the real `AutoencoderKLWan`: one downsample that halves
  space and not time (9x32x32 frames -> 9x16x16 latents), base_dim 16, one residual block per level, and the 16
  latent channels the pipeline's `latents_mean` / `latents_std` expect. Wan-2.1's (8x space, 4x time, base_dim 96)
  took 17-28 s per training step here and never got past a blurry background; one that also halved time decoded two
  frames from each latent frame and made smooth motion jitter (docs/vbench_mini.md has the measurements). Without
  temporal compression `WanPipeline` rounds num_frames to num_frames + 1 (`integrations.wan.pipeline_num_frames`
  says which count to ask for).
- The transformer reads the 16x16 latents in 2x2 patches (as Wan-2.1 reads its 8x-compressed latents; here a token
  covers 4x4 pixels): 9 x 8 x 8 = 576 tokens per clip. 4x4 patches (80 tokens over the first VAE's 5 latent
  frames) drew textured noise.
- The text vocabulary has one token per world word (`world_tokenizer`), so a prompt is 9 tokens + `</s>`.
- The generator is imperfect on purpose: its pre-training captions are web-like noisy (`CaptionNoise`: a share of
  clips whose colour, shape, motion or background departs from the caption, flicker, grain and shake), so its samples
  follow prompts only part of the time and post-training has room to improve it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from descore_plugin.testing.synthetic import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, Clip, Scene, WorldConfig
from descore_plugin.utils.args import help_field

logger = logging.getLogger(__name__)

__all__ = [
    "WORLD",
    "WORLD_WORDS",
    "all_scenes",
    "held_out_scenes",
    "training_scenes",
    "world_tokenizer",
    "CaptionNoise",
    "NoisyClip",
    "sample_noisy_clips",
    "GeneratorConfig",
    "build_text_encoder",
    "build_transformer",
    "build_scheduler",
    "build_pipeline",
    "encode_prompts",
    "flow_matching_loss",
    "sample_shifted_t",
    "train_generator",
    "generate_clips",
    "prompt_fidelity",
    "word_use",
]

WORLD = WorldConfig(num_frames=9, height=32, width=32, object_size=10, speed=2)
"""The world the generator draws: 9 frames (4k + 1) of 32x32 pixels, a 10 px shape moving 2 px per frame."""

NUM_HELD_OUT_SCENES = 16
"""Scenes (of the 128 colour x shape x direction x background combinations) never shown in pre-training."""


def all_scenes(world: WorldConfig = WORLD) -> list[Scene]:
    """Every scene of the world, in a fixed order (colour, shape, direction, background)."""
    return [
        Scene(colour, shape, direction, background)
        for colour in world.colours
        for shape in world.shapes
        for direction in world.directions
        for background in world.backgrounds
    ]


def held_out_scenes(world: WorldConfig = WORLD) -> list[Scene]:
    """The scenes the generator never saw captioned in pre-training (fixed: seed 0), for measuring its fidelity on
    prompts it has to compose from words it learnt elsewhere."""
    scenes = all_scenes(world)
    count = min(NUM_HELD_OUT_SCENES, len(scenes) // 8)
    picked = np.random.default_rng(0).permutation(len(scenes))[:count]
    return [scenes[index] for index in sorted(picked)]


def training_scenes(world: WorldConfig = WORLD) -> list[Scene]:
    held = set(held_out_scenes(world))
    return [scene for scene in all_scenes(world) if scene not in held]


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer: one token per world word


def _world_words() -> list[str]:
    words = ["a", "moving", "on", "background"]
    for group in (COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS):
        words.extend(word for word in group if word not in words)
    return words


WORLD_WORDS = _world_words()
"""Every word a world prompt writes ("a red square moving right on a dark background")."""


def world_tokenizer():
    """A T5Tokenizer (Unigram, the kind UMT5 uses) whose vocabulary holds every world word as one piece; single
    letters make any other text tokenizable. Ids: <pad> 0, </s> 1, <unk> 2, as T5."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{word}", -1.0) for word in WORLD_WORDS]  # a whole word beats any split into letters
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,"
    vocab += [("▁", -20.0)] + [(letter, -20.0) for letter in letters]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


# ----------------------------------------------------------------------------------------------------------------
# Pre-training data: noisy captions


def _bool_text(text: str) -> bool:
    """A command-line boolean (true / false, yes / no, 1 / 0)."""
    import argparse

    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true / false)")


_help = help_field


@dataclass
class CaptionNoise:
    """Shares of pre-training clips that depart from their caption, like web video captions (this project's choice:
    enough that the generator follows a prompt only part of the time). Within one dimension the shares are exclusive
    (a clip is either wrong-coloured or wrong-shaped); across dimensions they are drawn independently. The counts are
    exact: round(share * N) clips of N."""

    wrong_colour: float = _help("share of clips whose shape has another colour than the caption says", 0.3)
    wrong_shape: float = _help("share of clips showing the other shape", 0.1)
    reverse: float = _help("share of clips moving opposite to the caption's direction", 0.2)
    other_direction: float = _help("share of clips moving along the other axis (e.g. up for 'right')", 0.1)
    jump: float = _help("share of clips whose shape jumps around", 0.05)
    stutter: float = _help("share of clips moving in stutters", 0.05)
    wrong_background: float = _help("share of clips on another background", 0.15)
    half_background: float = _help("share of clips whose right half shows another background", 0.05)
    flicker: float = _help("share of clips with flickering light", 0.1)
    grain: float = _help("share of clips with grainy noise", 0.05)
    slight_shake: float = _help("share of clips with a slightly shaking camera", 0.05)
    shake: float = _help("share of clips with a shaking camera", 0.05)

    def check(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"CaptionNoise.{item.name} = {value} must be in [0, 1]")
        groups = {
            "subject": ("wrong_colour", "wrong_shape"),
            "motion": ("reverse", "other_direction", "jump", "stutter"),
            "environment": ("wrong_background", "half_background"),
            "light": ("flicker", "grain"),
            "camera": ("slight_shake", "shake"),
        }
        for group, names in groups.items():
            total = sum(getattr(self, name) for name in names)
            if total > 1.0 + 1e-9:
                raise ValueError(f"CaptionNoise: the {group} shares {names} add up to {total:.3f} > 1")


def _exclusive_assignment(n: int, shares: dict, rng: np.random.Generator) -> list[str | None]:
    """A random permutation of exactly round(share * n) items per key and None for the rest."""
    labels: list[str | None] = []
    for name, share in shares.items():
        labels += [name] * int(round(share * n))
    if len(labels) > n:
        labels = labels[:n]
    labels += [None] * (n - len(labels))
    return [labels[index] for index in rng.permutation(n)]


def _other(options, value, rng):
    choices = [option for option in options if option != value]
    return choices[int(rng.integers(len(choices)))]


_OTHER_AXIS = {"right": ("up", "down"), "left": ("up", "down"), "up": ("left", "right"), "down": ("left", "right")}


@dataclass(frozen=True)
class NoisyClip:
    """A pre-training example: the caption (the scene the text says) and the clip that is rendered (what it shows)."""

    caption: Scene
    clip: Clip

    @property
    def prompt(self) -> str:
        return self.caption.prompt


def sample_noisy_clips(
    scenes: list[Scene], noise: CaptionNoise, seed: int = 0, world: WorldConfig = WORLD
) -> list[NoisyClip]:
    """One example per caption scene, whose clip departs from the caption by `noise` (exact shares; which clips,
    and the replacement colour / direction / background, drawn with `seed`)."""
    noise.check()
    rng = np.random.default_rng(seed)
    n = len(scenes)
    subject = _exclusive_assignment(n, {"colour": noise.wrong_colour, "shape": noise.wrong_shape}, rng)
    motion = _exclusive_assignment(
        n, {"reverse": noise.reverse, "other": noise.other_direction, "jump": noise.jump, "stutter": noise.stutter}, rng
    )
    environment = _exclusive_assignment(n, {"wrong": noise.wrong_background, "half": noise.half_background}, rng)
    light = _exclusive_assignment(n, {"flicker": noise.flicker, "noise": noise.grain}, rng)
    camera = _exclusive_assignment(n, {"slight shake": noise.slight_shake, "shake": noise.shake}, rng)
    examples = []
    for index, caption in enumerate(scenes):
        colour = _other(world.colours, caption.colour, rng) if subject[index] == "colour" else caption.colour
        shape = _other(world.shapes, caption.shape, rng) if subject[index] == "shape" else caption.shape
        direction, kind = caption.direction, motion[index]
        if kind == "other":
            direction = _OTHER_AXIS[caption.direction][int(rng.integers(2))]
        shown_motion = "smooth" if kind in (None, "other") else kind
        background, second = caption.background, None
        if environment[index] == "wrong":
            background = _other(world.backgrounds, caption.background, rng)
        elif environment[index] == "half":
            second = _other(world.backgrounds, caption.background, rng)
        # The clip's own scene carries the direction it is rendered along (the caption's, or the other axis).
        shown = Scene(caption.colour, caption.shape, direction, caption.background)
        clip = Clip(
            shown,
            colour,
            shape,
            shown_motion,
            camera[index] or "steady",
            background,
            second,
            light[index] or "steady",
            int(rng.integers(2**31)),
        )
        examples.append(NoisyClip(caption, clip))
    return examples


# ----------------------------------------------------------------------------------------------------------------
# Resumable training loops (shared by the VAE and the generator phases)


def _save_state(path: Path, state: dict) -> None:
    from descore_plugin.utils.files import atomic_directory

    with atomic_directory(path) as tmp:
        torch.save(state, Path(tmp) / "state.pt")


def _load_state(path: Path) -> dict | None:
    file = Path(path) / "state.pt"
    return torch.load(file, weights_only=False) if file.is_file() else None


def _warmup_lr(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


# ----------------------------------------------------------------------------------------------------------------
# Generator: UMT5 text encoder + Wan transformer, flow matching on the VAE's latents


@dataclass
class GeneratorConfig:
    """Sizes of the text encoder and the transformer (this project's choice: the smallest that learnt the world's
    colours and directions on two CPU cores) and the scheduler's flow shift."""

    num_layers: int = _help("WanTransformer3DModel blocks (Wan-2.1 1.3B: 30)", 4)
    num_attention_heads: int = _help("transformer heads (1.3B: 12)", 4)
    attention_head_dim: int = _help("transformer head width (1.3B: 128; >= 12 for the 3-D rope split)", 32)
    ffn_dim: int = _help("transformer FFN width (1.3B: 8960)", 256)
    patch_size: list[int] = _help(
        "transformer patch (t, h, w) over latents (Wan-2.1: 1 2 2); 1 4 4 (80 tokens a clip) left each token's 256 "
        "outputs to a 128-wide hidden state and drew textured noise after 1,500 steps",
        [1, 2, 2],
    )
    text_d_model: int = _help("UMT5 encoder width = the transformer's text_dim (UMT5-XXL: 4096)", 64)
    text_layers: int = _help("UMT5 encoder layers", 2)
    text_heads: int = _help("UMT5 heads", 4)
    flow_shift: float = _help(
        "flow shift of the UniPC scheduler and of the training timesteps (Wan-2.1 480p: 3.0)", 3.0
    )
    max_sequence_length: int = _help("text tokens per prompt (a world prompt is 9 words + </s>)", 16)


def build_text_encoder(tokenizer, config: GeneratorConfig, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=config.text_d_model,
            d_kv=config.text_d_model // config.text_heads,
            d_ff=2 * config.text_d_model,
            num_layers=config.text_layers,
            num_heads=config.text_heads,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=config.max_sequence_length,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def build_transformer(config: GeneratorConfig, z_dim: int = 16, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=tuple(config.patch_size),
        num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim,
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=config.text_d_model,
        freq_dim=64,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    )


def build_scheduler(config: GeneratorConfig):
    """The scheduler type and settings Wan-AI ships for Wan-2.1 T2V: UniPC, flow prediction, flow sigmas."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=config.flow_shift, num_train_timesteps=1000
    )


def build_pipeline(tokenizer, text_encoder, vae, transformer, scheduler):
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode_prompts(text_encoder, tokenizer, prompts: list[str], max_sequence_length: int) -> torch.Tensor:
    """(B, L, D) UMT5 embeddings exactly as `WanPipeline._get_t5_prompt_embeds` computes them (positions after the
    prompt zeroed), but differentiable, so the text encoder trains with the transformer."""
    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    hidden = text_encoder(inputs.input_ids, inputs.attention_mask).last_hidden_state
    return hidden * inputs.attention_mask[:, :, None].to(hidden.dtype)


def sample_shifted_t(batch_size: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) t in (0, 1): u ~ logit-normal(0, 1) (SD3, arXiv 2403.03206, 3.1), then Wan's flow shift
    t = shift u / (1 + (shift - 1) u), the shift its scheduler samples with."""
    u = torch.sigmoid(torch.randn(batch_size, generator=generator))
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(
    transformer,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    shift: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rectified-flow loss: x_t = (1 - t) x0 + t eps, the transformer predicts v = eps - x0 (the convention of
    integrations/wan.py), timestep = 1000 t; mean squared error."""
    t = sample_shifted_t(latents.shape[0], shift, generator)
    noise = torch.randn(latents.shape, generator=generator)
    view = t.view(-1, 1, 1, 1, 1)
    noisy = (1 - view) * latents + view * noise
    prediction = transformer(
        hidden_states=noisy, timestep=t * 1000, encoder_hidden_states=prompt_embeds, return_dict=False
    )[0]
    return (prediction.float() - (noise - latents)).pow(2).mean()


@dataclass
class GeneratorTrainConfig:
    gen_steps: int = _help("generator (transformer + text encoder) optimiser steps", 5000)
    gen_batch_size: int = _help("latent clips per generator step", 16)
    gen_learning_rate: float = _help("AdamW learning rate of the transformer and text encoder", 1e-3)
    gen_warmup_steps: int = _help("linear warm-up steps of the generator learning rate", 20)
    gen_grad_clip: float = _help("gradient-norm clipping of the generator", 1.0)
    caption_dropout: float = _help("share of captions replaced by the empty prompt (classifier-free guidance)", 0.1)
    gen_clips: int = _help("pre-training clips (noisy captions; encoded once by the VAE)", 1600)
    gen_eval_every: int = _help("measure held-out fidelity (and save the state) every N generator steps", 500)
    gen_eval_samples: int = _help("held-out samples per fidelity measurement", 16)


def train_generator(
    pipe,
    latents: torch.Tensor,
    prompts: list[str],
    config: GeneratorTrainConfig,
    generator_config: GeneratorConfig,
    state_dir: str | Path,
    seed: int = 0,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    evaluate=None,
) -> dict:
    """Train `pipe.transformer` and `pipe.text_encoder` jointly with flow matching on normalised latents
    (N, 16, F, h, w) captioned by `prompts`. Batch i, its caption dropout, t and noise depend only on (seed, i);
    the state is saved atomically to `state_dir` every `gen_eval_every` steps (resume equals an uninterrupted
    run). `evaluate(pipe) -> dict`, when given, is called at each save and its result kept in the history."""
    import time

    from tqdm.auto import tqdm

    state_dir = Path(state_dir)
    modules = torch.nn.ModuleDict({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder})
    optimizer = torch.optim.AdamW(modules.parameters(), lr=config.gen_learning_rate, weight_decay=0.0)
    history = {"step": [], "loss": [], "eval": [], "seconds": 0.0}
    start = 0
    state = _load_state(state_dir) if resume else None
    if state is not None:
        modules.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["step"]
        logger.info("generator: resumed at step %d", start)
    modules.train()
    end = config.gen_steps if stop_after is None else min(config.gen_steps, start + stop_after)
    began, losses = time.time(), []
    bar = tqdm(range(start, end), desc="generator", disable=not progress, initial=start, total=config.gen_steps)
    for step in bar:
        rng = np.random.default_rng([seed, step])
        index = rng.choice(len(latents), config.gen_batch_size, replace=False)
        batch_prompts = ["" if rng.random() < config.caption_dropout else prompts[i] for i in index]
        for group in optimizer.param_groups:
            group["lr"] = _warmup_lr(step, config.gen_learning_rate, config.gen_warmup_steps)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        embeds = encode_prompts(pipe.text_encoder, pipe.tokenizer, batch_prompts, generator_config.max_sequence_length)
        loss = flow_matching_loss(
            pipe.transformer, latents[index].float(), embeds, generator_config.flow_shift, generator
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), config.gen_grad_clip)
        optimizer.step()
        losses.append(loss.item())
        done = step + 1
        if done % config.gen_eval_every == 0 or done == end:
            history["step"].append(done)
            history["loss"].append(round(float(np.mean(losses)), 5))
            losses = []
            if evaluate is not None:
                modules.eval()
                result = evaluate(pipe)
                modules.train()
                history["eval"].append({"step": done, **result})
                bar.set_postfix({key: f"{value:.2f}" for key, value in result.items() if isinstance(value, float)})
                logger.info("generator step %d: loss %.4f, %s", done, history["loss"][-1], result)
            history["seconds"] = round(history["seconds"] + time.time() - began, 1)
            began = time.time()
            _save_state(
                state_dir,
                {"model": modules.state_dict(), "optimizer": optimizer.state_dict(), "history": history, "step": done},
            )
    modules.eval()
    return history


@torch.no_grad()
def generate_clips(
    pipe,
    prompts: list[str],
    num_inference_steps: int,
    guidance_scale: float,
    seed: int = 0,
    batch_size: int = 16,
    world: WorldConfig = WORLD,
    max_sequence_length: int = 16,
) -> np.ndarray:
    """uint8 clips (N, T, 3, H, W) drawn by `pipe` (the real `WanPipeline.__call__`) for `prompts`, with the prompt
    length the generator was trained at (GeneratorConfig.max_sequence_length; WanPipeline's default, 512, pads 10 world tokens with 500 zero vectors
    that the cross-attention then attends to: samples the generator never learnt to draw)."""
    from descore_plugin.integrations.wan import frames_as_asked, pipeline_num_frames

    out = []
    for start in range(0, len(prompts), batch_size):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        with frames_as_asked(pipe):
            video = pipe(
                prompt=prompts[start : start + batch_size],
                num_frames=pipeline_num_frames(pipe, world.num_frames),
                height=world.height,
                width=world.width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                output_type="pt",
                max_sequence_length=max_sequence_length,
            ).frames  # (B, F, C, H, W) in [0, 1]
        out.append((video.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    return np.concatenate(out)


def prompt_fidelity(frames: np.ndarray, scenes: list[Scene]) -> dict:
    """The world-truth columns (`evaluation.world_truth.vbench_columns`: subject, colour, dynamics, direction,
    background, ..., all_as_asked) of generated clips against the scenes their prompts asked for, as fractions."""
    from descore_plugin.evaluation import world_truth

    columns = world_truth.vbench_columns(frames, [scene.prompt for scene in scenes], WORLD)
    return {name: round(value["mean"], 4) for name, value in columns.items() if name != "num_videos"}


@torch.no_grad()
def word_use(
    pipe,
    scenes: list[Scene],
    timesteps: tuple[float, ...] = (0.95, 0.85, 0.7),
    seed: int = 0,
    world: WorldConfig = WORLD,
    max_sequence_length: int = 16,
) -> dict:
    """Does the generator's denoiser use each word of the prompt? Renders every scene as asked (smooth, steady),
    encodes it with `pipe.vae`, noises it to each t (the same noise for every prompt) and returns the
    flow-matching loss of `flow_matching_loss` with the true prompt, with the direction word swapped for its
    opposite, with the colour word swapped for another, and with the empty prompt:
    {t: {"true": ..., "direction": ..., "colour": ..., "empty": ...}}. A word the denoiser uses raises the loss when
    it is swapped; a word it ignores leaves the loss where it was."""
    from descore_plugin.testing.clips import OPPOSITE
    from descore_plugin.testing.synthetic import render_clips
    from descore_plugin.testing.world_vae import encode_clips, normalise_latents

    rng = np.random.default_rng(seed)
    clips = [
        Clip(s, s.colour, s.shape, "smooth", "steady", s.background, None, "steady", int(rng.integers(2**31)))
        for s in scenes
    ]
    latents = normalise_latents(pipe.vae, encode_clips(pipe.vae, render_clips(clips, world))).float()
    other_colour = {c: world.colours[(world.colours.index(c) + 1) % len(world.colours)] for c in world.colours}
    prompts = {
        "true": [s.prompt for s in scenes],
        "direction": [Scene(s.colour, s.shape, OPPOSITE[s.direction], s.background).prompt for s in scenes],
        "colour": [Scene(other_colour[s.colour], s.shape, s.direction, s.background).prompt for s in scenes],
        "empty": [""] * len(scenes),
    }
    embeds = {k: encode_prompts(pipe.text_encoder, pipe.tokenizer, v, max_sequence_length) for k, v in prompts.items()}
    result = {}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
        noisy = (1 - t) * latents + t * noise
        timestep = torch.full((len(scenes),), t * 1000)
        result[t] = {}
        for name, embed in embeds.items():
            prediction = pipe.transformer(
                hidden_states=noisy, timestep=timestep, encoder_hidden_states=embed, return_dict=False
            )[0]
            result[t][name] = round((prediction.float() - (noise - latents)).pow(2).mean().item(), 5)
    return result


def write_model_card(record: dict, generation: dict) -> str:
    """The README.md of the shipped folder: what the model is, how it was trained, what was measured."""
    vae, gen = record["vae"], record["generator"]
    settings = record["settings"]
    fidelity = gen.get("held_out_fidelity", {})
    agreement = vae.get("recovery", {})
    noise = settings["caption_noise"]
    lines = [
        "# world_wan: a tiny Wan-2.1 that draws the synthetic world, imperfectly",
        "",
        "Real diffusers / transformers classes (`AutoencoderKLWan`, `WanTransformer3DModel`, `UMT5EncoderModel`, "
        "`UniPCMultistepScheduler`, a word-level `T5Tokenizer`), trained from scratch on the synthetic world of "
        "`descore_plugin.testing.synthetic` by `recipes/train_world_wan.py` (`make world-wan`). Load it with plain "
        "diffusers:",
        "",
        "```python",
        "from diffusers import WanPipeline",
        "",
        'pipe = WanPipeline.from_pretrained("recipes/world_wan")',
        "video = pipe(",
        '    "a red square moving right on a dark background",',
        (
            f"    num_frames={generation['num_frames']},"
            if any(settings["vae"]["temperal_downsample"])
            else f"    num_frames={generation['num_frames'] - 1},  # diffusers adds one: the VAE does not compress time"
        ),
        f"    height={generation['height']},",
        f"    width={generation['width']},",
        f"    num_inference_steps={generation['num_inference_steps']},",
        f"    guidance_scale={generation['guidance_scale']},",
        f"    max_sequence_length={generation['max_sequence_length']},  # the prompt length it was trained at",
        '    output_type="pt",',
        ").frames",
        "```",
        "",
        "`generation_defaults.json` records the size, steps and guidance it was trained and measured for; "
        "`training.json` every setting and measurement.",
        "",
        "## How it was trained",
        "",
        f"- World: {generation['num_frames']} frames of {generation['height']}x{generation['width']} pixels, "
        f"a {record['world']['object_size']} px square or circle moving {record['world']['speed']} px per frame.",
        f"- VAE: `AutoencoderKLWan` with base_dim {settings['vae']['base_dim']}, dim_mult {settings['vae']['dim_mult']}, "
        f"temperal_downsample {settings['vae']['temperal_downsample']} (spatial factor "
        f"{2 ** (len(settings['vae']['dim_mult']) - 1)}, temporal factor "
        f"{2 ** sum(bool(v) for v in settings['vae']['temperal_downsample'])}), z_dim 16, {vae.get('parameters')} "
        f"parameters; a shallower configuration than Wan-2.1's (8x space, 4x time), which did not train on two "
        f"CPU cores (`descore_plugin/testing/world_vae.py`). {settings['vae_train']['steps']} steps of {settings['vae_train']['batch_size']} clips, AdamW lr "
        f"{settings['vae_train']['learning_rate']}, weighted L1 + MSE + KL {settings['vae_train']['kl_weight']}; "
        f"the checkpoint of the best validation PSNR is kept (step {vae['history'].get('best_step')}). "
        f"`latents_mean` / `latents_std` are measured on its training latents.",
        f"- Generator: `WanTransformer3DModel` ({settings['generator']['num_layers']} layers, "
        f"{settings['generator']['num_attention_heads']} heads x {settings['generator']['attention_head_dim']}, "
        f"patch {settings['generator']['patch_size']}) and a {settings['generator']['text_layers']}-layer UMT5 "
        f"encoder (width {settings['generator']['text_d_model']}) trained jointly with flow matching (v = eps - x0, "
        f"logit-normal t with the scheduler's flow shift {settings['generator']['flow_shift']}) for "
        f"{settings['generator_train']['gen_steps']} steps of {settings['generator_train']['gen_batch_size']} "
        f"latent clips, caption dropout {settings['generator_train']['caption_dropout']} for classifier-free "
        f"guidance.",
        f"- Imperfect on purpose: its {settings['generator_train']['gen_clips']} pre-training clips have web-like "
        f"noisy captions: "
        + ", ".join(f"{name.replace('_', ' ')} {value:.0%}" for name, value in noise.items())
        + " of the clips. The "
        f"{len(held_out_scenes())} held-out scenes (colour x shape x direction x background combinations) never "
        f"appear in its captions.",
        "",
        "## Measured",
        "",
        f"- VAE reconstructions of {vae.get('recovery_clips', 64)} rendered clips with known defects: validation "
        f"PSNR {vae.get('validation_psnr')} dB; share of clips whose every attribute the world-truth measure still "
        f"reads right (`world_truth.recovery`): "
        + ", ".join(f"{name} {value:.2f}" for name, value in agreement.items())
        + ".",
        f"- Generator on held-out prompts ({settings['recipe']['final_eval_samples']} samples, "
        f"{generation['num_inference_steps']} steps, guidance {generation['guidance_scale']}): the asked "
        + ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in fidelity.items())
        + ".",
        f"- Training time: VAE {vae.get('seconds')} s, generator "
        f"{gen.get('history', {}).get('seconds') or gen.get('seconds')} s of training, summed over resumed runs "
        f"(a 2-core CPU shared with other jobs).",
        "",
        "## Targets",
        "",
        f"- VAE: every attribute kept in >= 0.95 of reconstructions: "
        f"{'met' if agreement.get('every', 0) >= 0.95 else 'MISSED'} ({agreement.get('every', 0):.2f}).",
        f"- Generator: the asked colour in 30-85% of held-out samples: "
        f"{'met' if 0.3 <= fidelity.get('colour', 0) <= 0.85 else 'MISSED'} ({fidelity.get('colour', 0):.2f}); "
        f"the asked direction in 30-85%: "
        f"{'met' if 0.3 <= fidelity.get('direction', 0) <= 0.85 else 'MISSED'} ({fidelity.get('direction', 0):.2f}).",
        "",
        "What it is not: a real Wan-2.1 checkpoint. It is a miniature with the same classes, for showing a judge "
        "improve a generator where the truth of every prompt is known.",
        "",
    ]
    return "\n".join(lines)
