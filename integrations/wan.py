"""Wan-2.1 text-to-video through diffusers, for reward post-training.

The diffusers glue a post-training loop needs around `diffusers.WanPipeline`, in the order a loop uses it:

1. `load_wan_pipeline`: the user's checkpoint (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`) or a tiny one
   (`descore_plugin.testing.tiny_wan`), with the VAE kept in float32.
2. `add_lora` / `disable_adapter` / `save_lora_weights`: peft LoRA on the transformer's attention and FFN linears;
   the reference model of DPO / GRPO is the SAME transformer with its adapters disabled (no second weight copy).
3. `PromptCache`: text-encoder outputs computed once per distinct prompt (the UMT5-XXL encoder is 5.7B parameters;
   it never runs inside the training loop).
4. `encode_videos` / `decode_latents`: the VAE plus the latent normalisation that lives in the PIPELINE, not in the
   VAE: encode (z - latents_mean) / latents_std, decode z * latents_std + latents_mean.
5. `flow_grid` / `predict_velocity` / `sample` / `generate`: the scheduler's sigma grid, the CFG velocity, and the
   ODE sampler (GRPO writes its own loop with SDE steps from these pieces).

Conventions (docs/post_train.md, "The math"): x_t = (1 - t) x0 + t eps, t = sigma in [0, 1] (1 = noise),
the transformer predicts v = eps - x0, sampling runs from sigma = 1 to 0. Latents are (B, C=16, F', H/8, W/8) and
normalised; videos are (B, F, C=3, H, W) floats in [0, 1], as `WanPipeline(..., output_type="pt")` returns them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper
from descore_plugin.utils.errors import UserError
from descore_plugin.utils.files import follow_umask

WAN_1_3B_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

# Linear layers of one WanTransformerBlock (diffusers 0.42 module names).
WAN_SELF_ATTENTION_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
WAN_CROSS_ATTENTION_TARGETS = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
WAN_ATTENTION_TARGETS = WAN_SELF_ATTENTION_TARGETS + WAN_CROSS_ATTENTION_TARGETS
WAN_FFN_TARGETS = ("ffn.net.0.proj", "ffn.net.2")
# LongCat-GRPO (arXiv 2510.22200, A.1) adapts self-attn, cross-attn and FFN linears: the default of `add_lora`.
# Flow-DPO (arXiv 2501.13918) adapts q/k/v/o: recipes/wan_flow_dpo.py passes WAN_ATTENTION_TARGETS.
WAN_ALL_LINEAR_TARGETS = WAN_ATTENTION_TARGETS + WAN_FFN_TARGETS


class WanInputError(UserError):
    """A Wan input (pipeline path, video size, prompt list, video tensor) that cannot be used; the message names it."""


# ----------------------------------------------------------------------------------------------------------------
# Generation settings
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class WanGenerationConfig:
    """How videos are generated (pair building, rollouts, evaluation). Defaults: the Wan-2.1 1.3B model card; a tiny
    pipeline from `descore init-tiny-wan` carries its own (`descore_plugin.testing.tiny_wan.generation_defaults`)."""

    num_frames: int = _help("frames of each video; 4k + 1 (the VAE compresses time by 4)", 81)
    height: int = _help("pixels; a multiple of 16 (VAE factor 8 x patch 2)", 480)
    width: int = _help("pixels; a multiple of 16", 832)
    num_inference_steps: int = _help("sampler steps T on the scheduler's sigma grid", 50)
    guidance_scale: float = _help(
        "classifier-free guidance w: v = v_uncond + w (v_cond - v_uncond); <= 1 disables it", 5.0
    )
    max_sequence_length: int = _help("UMT5 text tokens per prompt (padded / truncated)", 512)
    negative_prompt: str = _help("the unconditional prompt of CFG (WanPipeline's default is empty)", "")

    def check(self) -> None:
        check_video_size(self.num_frames, self.height, self.width)
        if self.num_inference_steps < 1:
            raise WanInputError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")


def check_video_size(num_frames: int, height: int, width: int) -> None:
    """Raise WanInputError unless (num_frames, height, width) is a size Wan-2.1 generates without rounding."""
    if num_frames < 1 or (num_frames - 1) % 4 != 0:
        raise WanInputError(
            f"num_frames={num_frames}: Wan needs 4k + 1 frames (the VAE compresses time by 4), e.g. 9, 33 or 81"
        )
    if height % 16 != 0 or width % 16 != 0 or height <= 0 or width <= 0:
        raise WanInputError(
            f"height={height}, width={width}: Wan needs positive multiples of 16 (VAE factor 8 x patch 2)"
        )


# ----------------------------------------------------------------------------------------------------------------
# 1. Pipelines: tiny and real
# ----------------------------------------------------------------------------------------------------------------


def load_wan_pipeline(path_or_id: str | Path = WAN_1_3B_ID, device: str | torch.device = "cpu", dtype=None):
    """Load a WanPipeline from a hub id or a directory; transformer and text encoder in `dtype`, the VAE in float32.

    dtype: torch dtype or None (float32). Use torch.bfloat16 for the real model (fp16 gives broken Wan videos).
    """
    from diffusers import AutoencoderKLWan, WanPipeline

    dtype = dtype or torch.float32
    local = Path(path_or_id)
    if local.exists() and not (local / "model_index.json").is_file():
        raise WanInputError(
            f"{local}: not a diffusers pipeline directory (no model_index.json); write a tiny one with "
            f"`descore init-tiny-wan {local}` or pass a hub id such as {WAN_1_3B_ID}"
        )
    try:
        vae = AutoencoderKLWan.from_pretrained(path_or_id, subfolder="vae", dtype=torch.float32)
        pipe = WanPipeline.from_pretrained(path_or_id, vae=vae, dtype=dtype)
    except OSError as error:
        raise WanInputError(
            f"{path_or_id}: cannot load a WanPipeline ({error}). Pass a local directory written by "
            f"`descore init-tiny-wan DIR`, or a hub id such as {WAN_1_3B_ID} with network access"
        ) from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ----------------------------------------------------------------------------------------------------------------
# 2. LoRA and the reference model
# ----------------------------------------------------------------------------------------------------------------


def add_lora(
    transformer,
    rank: int = 64,
    alpha: float = 128.0,
    target_modules: Sequence[str] = WAN_ALL_LINEAR_TARGETS,
    dropout: float = 0.0,
) -> list[torch.nn.Parameter]:
    """Freeze `transformer` and add a peft LoRA adapter ("default") on `target_modules`; return the LoRA parameters.

    target_modules: module-name suffixes, e.g. WAN_ATTENTION_TARGETS (Flow-DPO's q/k/v/o in self- and cross-attention)
    or WAN_ALL_LINEAR_TARGETS (also the FFN; LongCat-GRPO). rank 64 / alpha 128: the Flow-DPO paper's setting (arXiv 2501.13918).
    The LoRA B matrices start at zero, so the adapted model equals the base model until the first update.
    LoRA parameters are kept in float32 even when the transformer is bf16 (stable optimiser updates).
    """
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            init_lora_weights=True,  # A: Kaiming uniform, B: zeros
            target_modules=list(target_modules),
        )
    )
    lora_parameters = [p for p in transformer.parameters() if p.requires_grad]
    if not lora_parameters:
        raise WanInputError(f"target_modules={list(target_modules)} matched no linear layer of the transformer")
    for parameter in lora_parameters:
        parameter.data = parameter.data.float()
    return lora_parameters


@contextmanager
def disable_adapter(transformer):
    """Context in which `transformer` (the unwrapped model) runs as its base model: the DPO/GRPO reference."""
    transformer.disable_adapters()
    try:
        yield transformer
    finally:
        transformer.enable_adapters()


def lora_state_dict(transformer) -> dict[str, torch.Tensor]:
    """The adapter's tensors in peft naming (`blocks.0.attn1.to_q.lora_A.weight`, ...), detached."""
    from peft import get_peft_model_state_dict

    return {name: tensor.detach() for name, tensor in get_peft_model_state_dict(transformer).items()}


def load_lora_state_dict(transformer, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy tensors written by `lora_state_dict` into the adapter of `transformer` (exactly; raises on a mismatch)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(transformer, state_dict)
    if result.unexpected_keys:
        raise WanInputError(f"LoRA state has keys the transformer lacks: {result.unexpected_keys[:5]}")


def save_lora_weights(transformer, out_dir: str | Path) -> Path:
    """Write the adapter in the diffusers format (`pytorch_lora_weights.safetensors`, keys `transformer.*`, with the
    LoRA config as metadata so alpha/rank survive); `WanPipeline.load_lora_weights(out_dir)` loads it."""
    from diffusers import WanPipeline

    WanPipeline.save_lora_weights(
        out_dir,
        transformer_lora_layers=lora_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    for written in Path(out_dir).glob("pytorch_lora_weights.safetensors"):
        follow_umask(written)  # safetensors writes private files; a reward server or teammate must read it
    return Path(out_dir)


# ----------------------------------------------------------------------------------------------------------------
# 3. Prompt embeddings, computed once
# ----------------------------------------------------------------------------------------------------------------


class PromptCache:
    """UMT5 prompt embeddings (B, max_sequence_length, text_dim), computed once per distinct prompt, exactly as
    `WanPipeline.encode_prompt` computes them (padding positions zeroed), stored on `device` in the transformer dtype.

    Call `cache.embed(prompts)` for the conditional embeddings and `cache.negative(batch_size)` for CFG's
    unconditional ones. After `precompute(all_prompts)` the text encoder can be moved off the accelerator.
    """

    def __init__(self, pipe, max_sequence_length: int = 512, negative_prompt: str = "", device=None, dtype=None):
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self.negative_prompt = negative_prompt
        self.device = torch.device(device) if device is not None else pipe.text_encoder.device
        self.dtype = dtype or pipe.transformer.dtype
        self._embeddings: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def precompute(self, prompts: Iterable[str], batch_size: int = 8, progress: bool = False) -> None:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._embeddings))
        for start in tqdm(range(0, len(missing), batch_size), desc="prompt embeddings", disable=not progress):
            chunk = missing[start : start + batch_size]
            embeds, _ = self.pipe.encode_prompt(
                prompt=chunk,
                do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
                device=self.pipe.text_encoder.device,
            )
            for prompt, embed in zip(chunk, embeds):
                self._embeddings[prompt] = embed.to(self.device, self.dtype)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, L, D) embeddings of `prompts` (computed now for prompts not seen before)."""
        if isinstance(prompts, str):
            raise WanInputError("prompts must be a list of strings, got one string")
        self.precompute(prompts)
        return torch.stack([self._embeddings[p] for p in prompts])

    def negative(self, batch_size: int) -> torch.Tensor:
        """(B, L, D) embeddings of the negative prompt, repeated `batch_size` times."""
        return self.embed([self.negative_prompt]).expand(batch_size, -1, -1)

    def __len__(self) -> int:
        return len(self._embeddings)


# ----------------------------------------------------------------------------------------------------------------
# 4. VAE with the pipeline's latent normalisation
# ----------------------------------------------------------------------------------------------------------------


def _latent_statistics(vae, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents_mean, 1 / latents_std) shaped (1, 16, 1, 1, 1): the pipeline multiplies by 1/std and divides by it,
    and so do we, so that decoded videos match `WanPipeline.__call__` bit for bit."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(device, dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(device, dtype)
    return mean, inverse_std


def pipeline_num_frames(pipe, frames: int) -> int:
    """The `num_frames` to pass `WanPipeline.__call__` for videos of `frames` frames (4k + 1).

    diffusers rounds a count whose `num_frames - 1` its VAE's temporal factor does not divide to
    `num_frames // factor * factor + 1`; with a VAE that does not compress time (factor 1, the world generator of
    recipes/world_wan) that rule fires for every count and adds a frame, so such a pipeline is asked for one frame
    fewer. Wan-2.1 (factor 4) and every 4k + 1 count: `frames` itself. This package's own sampler (post-training
    rollouts, `latent_shape`) makes exactly `frames` frames either way."""
    return frames - 1 if pipe.vae_scale_factor_temporal == 1 and frames > 1 else frames


@contextmanager
def frames_as_asked(pipe):
    """Call `pipe` inside this with `num_frames=pipeline_num_frames(pipe, frames)`: for a VAE that does not compress
    time, WanPipeline warns on every call that it rounds `num_frames` up by one, the rounding that
    `pipeline_num_frames` counts on; the warning is dropped for that VAE only (Wan-2.1's stays as diffusers says it)."""
    if pipe.vae_scale_factor_temporal != 1:
        yield
        return
    wan_logger = logging.getLogger(type(pipe).__module__)

    def drop(record: logging.LogRecord) -> bool:
        return "has to be divisible by 1." not in record.getMessage()

    wan_logger.addFilter(drop)
    try:
        yield
    finally:
        wan_logger.removeFilter(drop)


def latent_shape(pipe, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
    """Shape of the normalised latents of (num_frames, height, width) videos, as `WanPipeline.prepare_latents`."""
    check_video_size(num_frames, height, width)
    temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    channels = pipe.transformer.config.in_channels
    return (batch_size, channels, (num_frames - 1) // temporal + 1, height // spatial, width // spatial)


@torch.no_grad()
def encode_videos(pipe, videos: torch.Tensor, sample_posterior: bool = False, generator=None) -> torch.Tensor:
    """(B, F, C, H, W) floats in [0, 1] -> normalised latents (B, 16, F', H/8, W/8) float32: (z - mean) / std.

    z is the posterior mode unless sample_posterior (then a sample drawn with `generator`).
    """
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise WanInputError(f"videos must be (B, F, 3, H, W) floats in [0, 1], got shape {tuple(videos.shape)}")
    check_video_size(videos.shape[1], videos.shape[3], videos.shape[4])
    vae = pipe.vae
    pixels = (videos.permute(0, 2, 1, 3, 4) * 2.0 - 1.0).to(vae.device, vae.dtype)  # (B, C, F, H, W) in [-1, 1]
    posterior = vae.encode(pixels).latent_dist
    z = posterior.sample(generator) if sample_posterior else posterior.mode()
    mean, inverse_std = _latent_statistics(vae, z.device, z.dtype)
    return ((z - mean) * inverse_std).float()


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents (B, 16, F', h, w) -> videos (B, F, C, H, W) float32 in [0, 1], as `output_type="pt"`."""
    vae = pipe.vae
    latents = latents.to(vae.device, vae.dtype)
    mean, inverse_std = _latent_statistics(vae, latents.device, latents.dtype)
    video = vae.decode(latents / inverse_std + mean, return_dict=False)[0]  # z * std + mean
    return pipe.video_processor.postprocess_video(video, output_type="pt").float()


# ----------------------------------------------------------------------------------------------------------------
# 5. Sigma grid, velocity, sampling loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FlowGrid:
    """The scheduler's sampling grid for N steps."""

    sigmas: torch.Tensor  # (N + 1,) float32, from ~1 down to 0: t of x_t = (1 - t) x0 + t eps
    timesteps: torch.Tensor  # (N,) the values the transformer is conditioned on at each step, as the scheduler gives
    # them (UniPC: int64 floor(sigma * 1000); FlowMatchEuler: float sigma * 1000)

    def __len__(self) -> int:
        return len(self.timesteps)


def flow_grid(scheduler, num_inference_steps: int, device=None) -> FlowGrid:
    """The sigma grid of `scheduler` (any diffusers flow scheduler) for `num_inference_steps`, never hard-coded.

    Computed by the scheduler itself on a copy: its shifts differ per type (FlowMatchEuler shifts its smallest
    sigma twice: 0.0089 with shift 3 and 6 steps; UniPC with flow sigmas once), and the last sigma is 0.
    """
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_inference_steps, device=device)
    sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
    if len(sigmas) != len(scheduler.timesteps) + 1:
        raise WanInputError(f"{type(scheduler).__name__}: expected N + 1 sigmas for N timesteps")
    return FlowGrid(sigmas=sigmas, timesteps=scheduler.timesteps.to(device))


def predict_velocity(
    transformer,
    latents: torch.Tensor,
    timestep,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    attention_kwargs: dict | None = None,
) -> torch.Tensor:
    """Velocity v = eps - x0 predicted at (latents, timestep), with classifier-free guidance when guidance_scale > 1:
    v = v_uncond + w (v_cond - v_uncond) (two forwards, as WanPipeline does). Output in the transformer dtype.

    transformer: the model or its accelerate/DDP wrapper (gradients flow when called outside no_grad).
    timestep: scalar or (B,) transformer timesteps (FlowGrid.timesteps[i], or sigma * num_train_timesteps).
    """
    # The compute dtype of the patch embedding: the first parameter (scale_shift_table) stays float32 in bf16 runs.
    base = transformer.module if hasattr(transformer, "module") else transformer  # DDP wrapper
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    dtype = base.patch_embedding.weight.dtype
    hidden_states = latents.to(dtype)
    timestep = torch.as_tensor(timestep, device=latents.device).expand(latents.shape[0])

    def forward(embeds):
        return transformer(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=embeds,
            attention_kwargs=attention_kwargs,
            return_dict=False,
        )[0]

    velocity = forward(prompt_embeds)
    if guidance_scale > 1.0:
        if negative_prompt_embeds is None:
            raise WanInputError(f"guidance_scale={guidance_scale} > 1 needs negative_prompt_embeds")
        velocity_uncond = forward(negative_prompt_embeds)
        velocity = velocity_uncond + guidance_scale * (velocity - velocity_uncond)
    return velocity


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor):
    """Deterministic flow ODE step x_next = x + (sigma_next - sigma) v (FlowMatchEulerDiscreteScheduler.step)."""
    return latents + (sigma_next - sigma) * velocity


@dataclass
class SampleOutput:
    latents: torch.Tensor  # (B, C, F', h, w) float32 normalised latents at sigma = 0
    grid: FlowGrid
    trajectory: list[torch.Tensor] | None = None  # N + 1 states x_{sigma_0} .. x_{sigma_N} when requested


@torch.no_grad()
def sample(
    transformer,
    scheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 5.0,
    solver: str = "euler",
    return_trajectory: bool = False,
    attention_kwargs: dict | None = None,
    progress: bool = False,
) -> SampleOutput:
    """Integrate the flow ODE from `latents` (initial noise, (B, C, F', h, w)) on the sigma grid of `scheduler`.

    solver="euler": x_next = x + (sigma_next - sigma) v on `flow_grid(scheduler, N)`; equals `WanPipeline.__call__`
        when the pipeline's scheduler is FlowMatchEulerDiscreteScheduler, and is the ODE that GRPO's SDE generalises.
    solver="scheduler": each step is `scheduler.step` (e.g. the shipped UniPC multistep solver); equals
        `WanPipeline.__call__` with that scheduler.
    """
    if solver not in ("euler", "scheduler"):
        raise WanInputError(f"solver must be 'euler' or 'scheduler', got {solver!r}")
    device = latents.device
    stepper = copy.deepcopy(scheduler)
    stepper.set_timesteps(num_inference_steps, device=device)
    stepper.set_begin_index(0)
    grid = flow_grid(scheduler, num_inference_steps, device=device)
    latents = latents.float()
    trajectory = [latents] if return_trajectory else None
    for index in tqdm(range(num_inference_steps), desc="sampling", disable=not progress, leave=False):
        timestep = grid.timesteps[index]
        velocity = predict_velocity(
            transformer, latents, timestep, prompt_embeds, negative_prompt_embeds, guidance_scale, attention_kwargs
        )
        if solver == "euler":
            latents = euler_step(latents, velocity, grid.sigmas[index], grid.sigmas[index + 1]).float()
        else:
            latents = stepper.step(velocity, timestep, latents, return_dict=False)[0].float()
        if return_trajectory:
            trajectory.append(latents)
    return SampleOutput(latents=latents, grid=grid, trajectory=trajectory)


def initial_noise(pipe, batch_size: int, generation: WanGenerationConfig, generator=None, device=None) -> torch.Tensor:
    """Initial latents N(0, I) of shape `latent_shape`, float32, drawn like `WanPipeline.prepare_latents`."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = latent_shape(pipe, batch_size, generation.num_frames, generation.height, generation.width)
    return randn_tensor(shape, generator=generator, device=torch.device(device or "cpu"), dtype=torch.float32)


@torch.no_grad()
def generate(
    pipe,
    prompt_cache: PromptCache,
    prompts: Sequence[str],
    generation: WanGenerationConfig,
    transformer=None,
    generator=None,
    latents: torch.Tensor | None = None,
    solver: str = "euler",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate one video per prompt: returns (videos (B, F, C, H, W) in [0, 1], final latents).

    transformer: defaults to pipe.transformer (pass the unwrapped, possibly LoRA-adapted, model).
    latents: initial noise; drawn from `generator` when None.
    """
    generation.check()
    transformer = transformer if transformer is not None else pipe.transformer
    device = next(transformer.parameters()).device
    if latents is None:
        latents = initial_noise(pipe, len(prompts), generation, generator=generator, device=device)
    prompt_embeds = prompt_cache.embed(prompts).to(device)
    negative_embeds = prompt_cache.negative(len(prompts)).to(device) if generation.guidance_scale > 1.0 else None
    output = sample(
        transformer,
        pipe.scheduler,
        latents.to(device),
        prompt_embeds,
        negative_embeds,
        num_inference_steps=generation.num_inference_steps,
        guidance_scale=generation.guidance_scale,
        solver=solver,
    )
    return decode_latents(pipe, output.latents), output.latents


def __getattr__(name):
    # `GenerationConfig` was this module's name for WanGenerationConfig; it is transformers' name for another thing.
    if name == "GenerationConfig":
        import warnings

        warnings.warn(
            "descore_plugin.integrations.wan.GenerationConfig is now WanGenerationConfig",
            DeprecationWarning,
            stacklevel=2,
        )
        return WanGenerationConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
