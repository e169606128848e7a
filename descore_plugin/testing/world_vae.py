"""The VAE of the tiny world Wan (`world_wan`): a shallow real `AutoencoderKLWan` trained on CPU to reconstruct
rendered world clips, and the pixel <-> latent helpers the generator phase uses.

Why shallow: Wan-2.1's own configuration (8x space, 4x time, base_dim 96) took 17-28 s per training step on two CPU
cores and never got past a blurry background; see `VaeConfig` for the one this project trains and
docs/vbench_mini.md for what it measured.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from descore_plugin.testing.synthetic import Clip, WorldConfig
from descore_plugin.testing.world_wan import (  # the world and the resumable-state helpers both phases share
    WORLD,
    _bool_text,
    _load_state,
    _other,
    _save_state,
    _warmup_lr,
    all_scenes,
)
from descore_plugin.utils.args import help_field as _help

logger = logging.getLogger(__name__)


def sample_vae_clips(count: int, seed: int = 0, world: WorldConfig = WORLD) -> list[Clip]:
    """Clips covering everything the VAE must reconstruct: every scene, and each defect (wrong colour / shape,
    stutter, jump, reverse, shake, half background, grain, flicker) in about a third of the clips."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes(world)
    clips = []
    for _ in range(count):
        scene = scenes[int(rng.integers(len(scenes)))]
        motion = ["smooth", "smooth", "stutter", "jump", "reverse"][int(rng.integers(5))]
        camera = ["steady", "steady", "slight shake", "shake"][int(rng.integers(4))]
        light = ["steady", "steady", "noise", "flicker"][int(rng.integers(4))]
        second = _other(world.backgrounds, scene.background, rng) if rng.random() < 0.15 else None
        clips.append(
            Clip(
                scene,
                scene.colour,
                scene.shape,
                motion,
                camera,
                scene.background,
                second,
                light,
                int(rng.integers(2**31)),
            )
        )
    return clips


@dataclass
class VaeConfig:
    """The shallow real `AutoencoderKLWan` configuration (see the module docstring for why it is shallow)."""

    base_dim: int = _help("AutoencoderKLWan base_dim (channels of the first level; Wan-2.1: 96)", 16)
    dim_mult: list[int] = _help(
        "channel multiplier per level; len - 1 spatial 2x downsamples (Wan-2.1: 1 2 4 4)", [1, 2]
    )
    temperal_downsample: list[bool] = _help(
        "which downsamples also halve time (diffusers' spelling; Wan-2.1: false true true). false: no temporal "
        "compression, this project's choice: with it (true) 1,200 steps reached 20.5 dB and kept every attribute of "
        "0.11 of the validation clips (colour 0.73); without it 1,500 steps reached 24.8 dB, 0.52 (colour 1.00). "
        "WanPipeline then adds a frame to the num_frames it is given (integrations.wan.pipeline_num_frames)",
        [False],
        check=_bool_text,
    )
    num_res_blocks: int = _help("residual blocks per level (Wan-2.1: 2)", 1)
    z_dim: int = _help("latent channels (16, as the pipeline's latents_mean / latents_std)", 16)
    initial_logvar: float = _help(
        "the posterior log-variance the VAE starts from (quant_conv's log-variance "
        "outputs start constant: weights 0, this bias); -18 (std 1e-4) lets the decoder "
        "see the posterior mean from the first step, where a random start (std ~1) "
        "drowned it: PSNR 17 dB and no shape after 250 steps",
        -18.0,
    )

    def build_kwargs(self) -> dict:
        levels = len(self.dim_mult) - 1
        if len(self.temperal_downsample) != levels:
            raise ValueError(
                f"VaeConfig: temperal_downsample {self.temperal_downsample} needs one entry per "
                f"downsample ({levels} for dim_mult {self.dim_mult})"
            )
        return dict(
            base_dim=self.base_dim,
            z_dim=self.z_dim,
            dim_mult=list(self.dim_mult),
            num_res_blocks=self.num_res_blocks,
            attn_scales=[],
            temperal_downsample=[bool(flag) for flag in self.temperal_downsample],
            scale_factor_temporal=2 ** sum(bool(flag) for flag in self.temperal_downsample),
            scale_factor_spatial=2**levels,
        )


def build_vae(config: VaeConfig | None = None, seed: int = 0):
    from diffusers import AutoencoderKLWan

    config = config or VaeConfig()
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**config.build_kwargs())
    with torch.no_grad():  # quant_conv's outputs are (mu, logvar): start logvar constant
        vae.quant_conv.weight[config.z_dim :].zero_()
        vae.quant_conv.bias[config.z_dim :].fill_(config.initial_logvar)
    return vae


def vae_forward(vae, pixels: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
    """Encode and decode (B, 3, F, H, W) pixels in [-1, 1], differentiably. Returns (reconstruction unclamped,
    mu, logvar).

    The same function as `vae.encode` / `vae.decode` (the feature caches of the causal convolutions carry the
    previous frames across calls exactly as in diffusers' chunked loops), in two calls each instead of one per
    chunk: the first frame, then all the others (diffusers encodes chunks of 4 frames and decodes one latent frame
    at a time; any chunk whose length is a multiple of the temporal factor gives the same result).
    """
    encoder_cache = [None] * vae._cached_conv_counts["encoder"]
    first = vae.encoder(pixels[:, :, :1], feat_cache=encoder_cache, feat_idx=[0])
    parts = [first]
    if pixels.shape[2] > 1:
        parts.append(vae.encoder(pixels[:, :, 1:], feat_cache=encoder_cache, feat_idx=[0]))
    moments = vae.quant_conv(torch.cat(parts, dim=2))
    mu, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)  # as DiagonalGaussianDistribution
    z = mu
    if sample:
        noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * noise
    x = vae.post_quant_conv(z)
    decoder_cache = [None] * vae._cached_conv_counts["decoder"]
    out = [vae.decoder(x[:, :, :1], feat_cache=decoder_cache, feat_idx=[0], first_chunk=True)]
    if x.shape[2] > 1:
        out.append(vae.decoder(x[:, :, 1:], feat_cache=decoder_cache, feat_idx=[0]))
    return torch.cat(out, dim=2), mu, logvar


@dataclass
class VaeTrainConfig:
    steps: int = _help("VAE optimiser steps", 1500)
    batch_size: int = _help("clips per VAE step (> 1: torch's batch-1 Conv3d falls back to a slow kernel)", 4)
    learning_rate: float = _help("AdamW peak learning rate of the VAE (after a linear warm-up)", 1e-3)
    lr_schedule: str = _help(
        "after the warm-up: cosine (decays to 0 at --steps; a constant rate plateaued at 19.5 dB by step 650) "
        "or constant",
        "cosine",
        choices=["cosine", "constant"],
    )
    warmup_steps: int = _help("linear warm-up steps of the VAE learning rate", 50)
    grad_clip: float = _help("gradient-norm clipping of the VAE", 1.0)
    kl_weight: float = _help("weight of the KL term (per latent element, against a per-pixel reconstruction)", 1e-6)
    object_weight: float = _help(
        "extra loss weight of the pixels that depart from their row's background (the shape)", 4.0
    )
    train_clips: int = _help("rendered clips the VAE trains on (uint8 in memory)", 3000)
    validation_clips: int = _help("clips that select the kept VAE (best validation PSNR)", 64)
    eval_every: int = _help("validate the VAE (and save its state) every N steps", 100)


def object_weights(pixels: torch.Tensor, object_weight: float) -> torch.Tensor:
    """(B, 1, F, H, W) per-pixel loss weights: 1 + object_weight where a pixel departs from its row's median (the
    shape, about a tenth of the frame, which a plain pixel loss lets the VAE blur into the background)."""
    median = pixels.median(dim=-1, keepdim=True).values  # (B, 3, F, H, 1): the background of each row
    far = (pixels - median).abs().sum(dim=1, keepdim=True) > 0.6  # 0.6 of [-1, 1] = about 75 uint8 levels
    return 1.0 + object_weight * far.float()


def vae_loss(vae, pixels: torch.Tensor, config: VaeTrainConfig, generator=None):
    """Weighted L1 + MSE reconstruction of a posterior sample (`object_weights`, means over pixels) + kl_weight x
    the mean KL to N(0, I) per latent element."""
    reconstruction, mu, logvar = vae_forward(vae, pixels, generator=generator)
    weights = object_weights(pixels, config.object_weight) if config.object_weight else torch.ones_like(pixels[:, :1])
    error = reconstruction - pixels
    l1 = (error.abs() * weights).mean()
    mse = (error.pow(2) * weights).mean()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return l1 + mse + config.kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def to_pixels(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, 3, H, W) -> float (B, 3, T, H, W) in [-1, 1], the VAE's input layout."""
    frames = torch.as_tensor(frames)
    return frames.permute(0, 2, 1, 3, 4).float().div(127.5).sub(1.0)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float (B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, 3, H, W)."""
    frames = ((pixels.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 1, 3, 4).contiguous().numpy()


def psnr(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all uint8 values (peak 255)."""
    mse = np.mean((original.astype(np.float64) - reconstruction.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """uint8 clips (B, T, 3, H, W) through the VAE (posterior mode), back as uint8."""
    out = []
    for start in range(0, len(frames), batch_size):
        reconstruction, _, _ = vae_forward(vae, to_pixels(frames[start : start + batch_size]), sample=False)
        out.append(to_uint8(reconstruction))
    return np.concatenate(out)


@torch.no_grad()
def encode_clips(vae, frames: np.ndarray, batch_size: int = 16) -> torch.Tensor:
    """Posterior means (B, z, F, h, w) of uint8 clips, un-normalised."""
    out = []
    for start in range(0, len(frames), batch_size):
        _, mu, _ = vae_forward(vae, to_pixels(frames[start : start + batch_size]), sample=False)
        out.append(mu)
    return torch.cat(out)


def set_latent_statistics(vae, latents: torch.Tensor) -> tuple[list, list]:
    """Write the per-channel mean and std of un-normalised latents (B, z, F, h, w) into the VAE config, where
    WanPipeline reads them to normalise: (z - latents_mean) / latents_std is what the transformer sees."""
    mean = latents.transpose(0, 1).flatten(1).mean(dim=1)
    std = latents.transpose(0, 1).flatten(1).std(dim=1).clamp(min=1e-4)
    mean_list, std_list = [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]
    vae.register_to_config(latents_mean=mean_list, latents_std=std_list)
    return mean_list, std_list


def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape)
    std = torch.tensor(vae.config.latents_std).view(shape)
    return (latents - mean) / std


def _vae_lr(step: int, config: VaeTrainConfig) -> float:
    rate = _warmup_lr(step, config.learning_rate, config.warmup_steps)
    if config.lr_schedule == "cosine" and step >= config.warmup_steps:
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        rate = config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return rate


def train_vae(
    vae,
    train_frames: np.ndarray,
    validation_frames: np.ndarray,
    config: VaeTrainConfig,
    state_dir: str | Path,
    seed: int = 0,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Train `vae` on uint8 clips (N, T, 3, H, W); keep the weights of the best validation PSNR (loaded into `vae`
    at the end). Batch i and its posterior noise depend only on (seed, i), and the state (weights, optimiser, best
    weights, history) is saved atomically to `state_dir` every `eval_every` steps, so a resumed run equals an
    uninterrupted one. `stop_after`: stop (with the state saved) after that many steps of this call (tests).
    Returns the history {"step": [...], "psnr": [...], "best_step", "best_psnr", "seconds"}."""
    import time

    from tqdm.auto import tqdm

    state_dir = Path(state_dir)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
    history = {"step": [], "psnr": [], "loss": [], "best_step": 0, "best_psnr": -1.0, "seconds": 0.0}
    best_state, start = None, 0
    state = _load_state(state_dir) if resume else None
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best_state, start = state["history"], state["best"], state["step"]
        logger.info("VAE: resumed at step %d (best PSNR %.2f dB)", start, history["best_psnr"])
    vae.train()
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    began, losses = time.time(), []
    bar = tqdm(range(start, end), desc="VAE", disable=not progress, initial=start, total=config.steps)
    for step in bar:
        rng = np.random.default_rng([seed, step])
        batch = to_pixels(train_frames[rng.choice(len(train_frames), config.batch_size, replace=False)])
        for group in optimizer.param_groups:
            group["lr"] = _vae_lr(step, config)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        loss, parts = vae_loss(vae, batch, config, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        done = step + 1
        if done % config.eval_every == 0 or done == end:
            vae.eval()
            value = psnr(validation_frames, reconstruct(vae, validation_frames))
            vae.train()
            history["step"].append(done)
            history["psnr"].append(round(value, 3))
            history["loss"].append(round(float(np.mean(losses)), 5))
            losses = []
            if value > history["best_psnr"]:
                history["best_psnr"], history["best_step"] = round(value, 3), done
                best_state = {name: tensor.detach().clone() for name, tensor in vae.state_dict().items()}
            history["seconds"] = round(history["seconds"] + time.time() - began, 1)
            began = time.time()
            bar.set_postfix(psnr=f"{value:.2f}", best=f"{history['best_psnr']:.2f}")
            logger.info(
                "VAE step %d: validation PSNR %.2f dB (best %.2f at %d)",
                done,
                value,
                history["best_psnr"],
                history["best_step"],
            )
            _save_state(
                state_dir,
                {
                    "model": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "best": best_state,
                    "step": done,
                },
            )
    if best_state is not None and end == config.steps:
        vae.load_state_dict(best_state)
    vae.eval()
    return history
