"""DiffusionNFT for Wan-2.1 (Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
arXiv 2509.16117, ICLR 2026; settings of its Wan trainer, `scripts/train_nft_wan.py` with `config/wan_nft.py`).

Reinforcement on the FORWARD process: no log-likelihood, no SDE sampler. One step (`DiffusionNFT.train_step`):

1. Sample: --group-size videos per prompt from the OLD policy (a second LoRA adapter, "old") with a deterministic
   solver (the Wan config: "dpm2", DPM-Solver++ 2M on the flow sigmas, 6 steps, CFG 2.5); keep only the clean
   latents x0 and the rewards.
2. Advantages: the weighted reward sum (a NaN takes its group's mean), A = (r - group mean) / (std of ALL rewards on
   all processes + 1e-4) (the stat tracker with `global_std`), clipped to +-adv_clip_max, mapped to an optimality
   weight r_opt = clamp((A / adv_clip_max) / 2 + 0.5, 0, 1) (sec. 3: r = 1 optimal, 0 not).
3. Loss, at --train-timesteps of the sampler's T timesteps (a random order per video), each with FRESH noise:
   x_t = (1 - t) x0 + t eps;  with v the trained prediction and v_old the old adapter's (no gradient),

       v+ = beta v + (1 - beta) v_old            (the implicit positive policy, sec. 3.2)
       v- = (1 + beta) v_old - beta v            (the implicit negative policy)
       L+ = mean (x_t - t v+ - x0)^2 / sg(mean |x_t - t v+ - x0|),   L- likewise with v-   (adaptive weights)
       loss = mean_videos adv_clip_max (r_opt L+ + (1 - r_opt) L-) / beta + kl_beta mean (v - v_ref)^2

   with v_ref the adapters-off reference (the KL-like term of the official code). The training forward is
   conditional only (CFG-free, sec. 3.3). One optimiser step per step, gradients averaged over every (video, t).
4. The old adapter follows the trained one: old <- d old + (1 - d) new after each step, d = `old_decay(n)` of the
   optimiser steps n done (decay_type 1: min(0.001 n, 0.5); type 2: 0 until n = 75, then 0.0075 per step up to
   0.999; type 0: 0, the old adapter IS the trained one).
An EMA of the trained LoRA (decay 0.9, every step; the official `train.ema`) is what is evaluated and published.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import torch

from descore_plugin.integrations import wan
from descore_plugin.integrations.grpo_advantages import fill_missing_rewards
from descore_plugin.integrations.post_training import LoraEMA, RecipeError, WanMethod, epoch_order, seed_of
from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper

OLD_ADAPTER = "old"


@dataclass
class NFTConfig:
    """DiffusionNFT (defaults: the official Wan config, config/wan_nft.py over config/base.py)."""

    group_size: int = _help("videos sampled per prompt (official Wan: 12)", 12)
    prompts_per_step: int = _help("prompts per process per step (our default)", 2)
    nft_beta: float = _help(
        "beta of the implicit policies v+ = beta v + (1 - beta) v_old, v- = (1 + beta) v_old - "
        "beta v (official Wan: 1.0)",
        1.0,
    )
    adv_clip_max: float = _help("advantages clipped to +-adv_clip_max before the map to [0, 1] (official: 5)", 5.0)
    kl_beta: float = _help("weight of mean (v - v_ref)^2 to the adapters-off reference (official Wan: 1e-4)", 1e-4)
    decay_type: int = _help(
        "the old adapter's decay schedule: 0 (d = 0), 1 (min(0.001 n, 0.5); official Wan), 2 (0 "
        "until 75 steps, then +0.0075 per step up to 0.999)",
        1,
    )
    timestep_fraction: float = _help(
        "train on int(T x fraction) of the sampler's T timesteps per video (official: 0.99, i.e. T - 1 of them)", 0.99
    )
    sample_solver: str = _help(
        "deterministic sampler of the training videos: dpm2 (DPM-Solver++ 2M on the flow "
        "sigmas, official Wan), scheduler (the pipeline's own), euler",
        "dpm2",
    )
    global_std: bool = _help(
        "normalise by the std of all rewards of the step (official); False: each group's own std", True
    )
    ema: bool = _help(
        "evaluate and publish an EMA of the trained LoRA (official train.ema: decay 0.9, every step)", True
    )
    ema_decay: float = _help("the EMA's largest decay (official: 0.9)", 0.9)
    max_grad_norm: float = _help("gradient clipping (official: 1.0)", 1.0)
    micro_batch_size: int | None = _help("videos per training forward; unset: all of the step's videos", None)

    def check(self) -> None:
        if self.group_size < 2:
            raise RecipeError(f"--group-size {self.group_size}: advantages compare the videos of a prompt, need >= 2")
        if not 0 < self.nft_beta:
            raise RecipeError(f"--nft-beta must be > 0, got {self.nft_beta}")
        if self.decay_type not in (0, 1, 2):
            raise RecipeError(f"--decay-type must be 0, 1 or 2, got {self.decay_type}")
        if self.sample_solver not in ("dpm2", "scheduler", "euler"):
            raise RecipeError(f"--sample-solver must be dpm2, scheduler or euler, got {self.sample_solver!r}")
        if not 0 < self.timestep_fraction <= 1:
            raise RecipeError(f"--timestep-fraction must be in (0, 1], got {self.timestep_fraction}")


# ----------------------------------------------------------------------------------------------------------------
# The math
# ----------------------------------------------------------------------------------------------------------------


def old_decay(step: int, decay_type: int = 1) -> float:
    """d of the old adapter's update after `step` optimiser steps (the official `return_decay`)."""
    flat, rate, cap = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}[decay_type]
    return 0.0 if step < flat else min((step - flat) * rate, cap)


def nft_advantages(
    rewards: torch.Tensor, group_size: int, global_std: bool = True, gather=None, eps: float = 1e-4
) -> torch.Tensor:
    """(r - group mean) / (std + eps) with the population std of every reward of the step on all processes
    (global_std, the official tracker's setting) or of the group. rewards (N,), groups next to each other; NaN ->
    the group's mean first (no signal)."""
    filled = fill_missing_rewards(rewards.float(), group_size)
    groups = filled.reshape(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    if global_std:
        everything = gather(filled.contiguous()) if gather is not None else filled
        std = everything.double().std(unbiased=False).float()
    else:
        std = groups.std(dim=1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def optimality_weight(advantages: torch.Tensor, adv_clip_max: float = 5.0) -> torch.Tensor:
    """r = clamp((clip(A, +-adv_clip_max) / adv_clip_max) / 2 + 0.5, 0, 1): 1 for the best, 0 for the worst."""
    clipped = advantages.clamp(-adv_clip_max, adv_clip_max)
    return (clipped / adv_clip_max / 2.0 + 0.5).clamp(0.0, 1.0)


@dataclass
class NFTLoss:
    loss: torch.Tensor  # scalar: policy + kl_beta kl
    policy: torch.Tensor  # scalar
    kl: torch.Tensor  # scalar mean (v - v_ref)^2 (0 without a reference)
    positive: torch.Tensor  # (B,) L+
    negative: torch.Tensor  # (B,) L-


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def _adaptive_error(x0_prediction: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """mean (x0_pred - x0)^2 / sg(mean |x0_pred - x0|), per video (the weight clipped below at 1e-5)."""
    error = x0_prediction - x0
    weight = error.detach().double().abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clamp(min=1e-5)
    return _mean(error**2 / weight.to(error.dtype))


def nft_loss(
    velocity, old_velocity, x_t, x0, t, r, beta: float, adv_clip_max: float, ref_velocity=None, kl_beta: float = 0.0
) -> NFTLoss:
    """The DiffusionNFT loss (arXiv 2509.16117 sec. 3.2; the module docstring). velocity: the trained prediction
    (with gradient); old_velocity: the old adapter's; x_t, x0 (B, ...); t, r (B,). float32 arithmetic."""
    velocity, old_velocity = velocity.float(), old_velocity.detach().float()
    x_t, x0 = x_t.float(), x0.float()
    t = t.float().reshape(-1, *([1] * (x0.ndim - 1)))
    positive = _adaptive_error(x_t - t * (beta * velocity + (1 - beta) * old_velocity), x0)
    negative = _adaptive_error(x_t - t * ((1 + beta) * old_velocity - beta * velocity), x0)
    policy = (adv_clip_max * (r * positive / beta + (1 - r) * negative / beta)).mean()
    kl = torch.zeros((), device=velocity.device)
    if ref_velocity is not None:
        kl = _mean((velocity - ref_velocity.detach().float()) ** 2).mean()
    return NFTLoss(policy + kl_beta * kl, policy, kl, positive.detach(), negative.detach())


# ----------------------------------------------------------------------------------------------------------------
# The old adapter
# ----------------------------------------------------------------------------------------------------------------


def add_old_adapter(transformer) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """A second LoRA adapter "old", a copy of "default" (same config, same values, float32, no gradient); the
    default adapter stays active. Returns (default parameters, old parameters), aligned."""
    import warnings

    with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        transformer.add_adapter(copy.deepcopy(transformer.peft_config["default"]), adapter_name=OLD_ADAPTER)
    transformer.set_adapter("default")
    named = dict(transformer.named_parameters())
    default = [(n, p) for n, p in named.items() if ".lora_" in n and ".default." in n]
    old = [named[n.replace(".default.", f".{OLD_ADAPTER}.")] for n, _ in default]
    with torch.no_grad():
        for (_, source), target in zip(default, old):
            target.data = source.detach().clone().float()
            target.requires_grad_(False)
    return [p for _, p in default], old


def old_velocity(transformer, *args, **kwargs) -> torch.Tensor:
    """The old adapter's velocity (no gradient); the default adapter is active again afterwards."""
    transformer.set_adapter(OLD_ADAPTER)
    try:
        with torch.no_grad():
            return wan.predict_velocity(transformer, *args, **kwargs)
    finally:
        transformer.set_adapter("default")


@torch.no_grad()
def update_old(old: list[torch.Tensor], new: list[torch.Tensor], decay: float) -> None:
    """old <- decay old + (1 - decay) new (the official update after each epoch)."""
    for target, source in zip(old, new):
        target.copy_(target * decay + source.detach().float() * (1.0 - decay))


def dpm2_scheduler(scheduler):
    """The official Wan sampler "dpm2": diffusers' DPM-Solver++ (2M) on the flow sigmas of `scheduler` (its shift)."""
    from diffusers import DPMSolverMultistepScheduler

    config = scheduler.config
    shift = float(config["flow_shift"] if "flow_shift" in config else config.get("shift", 1.0))
    return DPMSolverMultistepScheduler(
        num_train_timesteps=config.get("num_train_timesteps", 1000),
        solver_order=2,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        algorithm_type="dpmsolver++",
        lower_order_final=True,
    )


# ----------------------------------------------------------------------------------------------------------------
# The method: recipes/wan_nft.py = recipes/post_train.py nft
# ----------------------------------------------------------------------------------------------------------------


class DiffusionNFT(WanMethod):
    """DiffusionNFT post-training of Wan-2.1 (arXiv 2509.16117; the module docstring has the algorithm)."""

    name = "DiffusionNFT"
    curve_names = ("train/policy_loss", "train/kl", "train/old_decay")
    config_classes = (NFTConfig,)
    defaults = dict(
        learning_rate=3e-4,
        weight_decay=1e-4,
        lora_rank=32,
        lora_alpha=64.0,
        lora_targets="attention",
        checkpoint_every=50,
        solver="scheduler",
    )
    """Official base config: AdamW lr 3e-4, weight decay 1e-4; the Wan trainer's LoRA r 32 / alpha 64 on q/k/v/o."""
    help_notes = {
        "num_inference_steps": "official Wan NFT: 6 sampling steps (eval 15)",
        "guidance_scale": "official Wan NFT: 2.5 when sampling (the training forward is CFG-free)",
    }

    @classmethod
    def later_defaults(cls, known) -> dict:
        """The official Wan config's sampling (6 steps, CFG 2.5) on a real pipeline; a tiny one keeps its own."""
        from descore_plugin.integrations.post_training import is_tiny_pipeline, pipeline_generation_defaults

        preset = None if is_tiny_pipeline(known.pipeline) else dict(num_inference_steps=6, guidance_scale=2.5)
        return pipeline_generation_defaults(known.pipeline, preset)

    def check(self) -> None:
        super().check()
        self.nft = self.config.get(NFTConfig)
        self.nft.check()

    def prepare(self) -> None:
        nft = self.nft
        self.default_parameters, self.old_parameters = add_old_adapter(self.transformer)
        self.sampler = dpm2_scheduler(self.pipe.scheduler) if nft.sample_solver == "dpm2" else self.pipe.scheduler
        self.optimizer_steps = 0
        videos = nft.prompts_per_step * nft.group_size
        self.micro_batch_size = nft.micro_batch_size or videos
        if videos % self.micro_batch_size:
            raise RecipeError(f"--micro-batch-size {self.micro_batch_size} must divide the {videos} videos of a step")
        self.eval_batch_size = self.micro_batch_size
        if nft.ema:
            self.ema = LoraEMA(self.lora_parameters, nft.ema_decay, interval=1, names=self.lora_names)

    @torch.no_grad()
    def sample(self, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        """group_size clean latents per prompt from the OLD adapter with the deterministic solver, (N, C, F', h, w)."""
        size, nft, device = self.micro_batch_size, self.nft, self.device
        video_prompts = [p for p in prompts for _ in range(nft.group_size)]
        noise = wan.initial_noise(self.pipe, len(video_prompts), self.generation, generator=generator)
        latents = []
        self.transformer.eval()
        self.transformer.set_adapter(OLD_ADAPTER)
        try:
            for start in range(0, len(video_prompts), size):
                chunk = video_prompts[start : start + size]
                negative = (
                    self.prompt_cache.negative(len(chunk)).to(device) if self.generation.guidance_scale > 1 else None
                )
                output = wan.sample(
                    self.transformer,
                    self.sampler,
                    noise[start : start + size].to(device),
                    self.prompt_cache.embed(chunk).to(device),
                    negative,
                    self.generation.num_inference_steps,
                    self.generation.guidance_scale,
                    solver="euler" if nft.sample_solver == "euler" else "scheduler",
                )
                latents.append(output.latents.float())
        finally:
            self.transformer.set_adapter("default")
        return torch.cat(latents)

    def train_step(self, step: int) -> dict[str, float]:
        nft, device = self.nft, self.device
        started = time.perf_counter()
        prompts = epoch_order(
            [p for _, p in self.my_prompts], nft.prompts_per_step, self.run.seed, "step_prompts", self.rank, step
        )
        generator = torch.Generator().manual_seed(seed_of(self.run.seed, "nft", self.rank, step))
        x0 = self.sample(prompts, generator)
        video_prompts = [p for p in prompts for _ in range(nft.group_size)]
        sampled = time.perf_counter()
        videos = torch.cat(
            [
                wan.decode_latents(self.pipe, x0[i : i + self.micro_batch_size])
                for i in range(0, len(x0), self.micro_batch_size)
            ]
        )
        scores = self.rewards(videos, video_prompts)
        scored = time.perf_counter()
        advantages = nft_advantages(
            self.rewards.combined(scores),
            nft.group_size,
            nft.global_std,
            lambda x: self.accelerator.gather(x.to(device)).cpu(),
        )
        r = optimality_weight(advantages, nft.adv_clip_max)
        summary = self.update(x0, video_prompts, r, generator)
        return {
            **summary,
            **self.reward_metrics(scores),
            "train/advantage_abs_mean": float(advantages.abs().mean()),
            "train/optimality_mean": float(r.mean()),
            "time/sample": sampled - started,
            "time/reward": scored - sampled,
            "time/train": time.perf_counter() - scored,
        }

    def update(self, x0: torch.Tensor, prompts: list[str], r: torch.Tensor, generator) -> dict[str, float]:
        """One optimiser step over every (video, training timestep) term, then the old adapter's update."""
        nft, device, size = self.nft, self.device, self.micro_batch_size
        grid = wan.flow_grid(self.sampler, self.generation.num_inference_steps)
        steps = len(grid.timesteps)
        kept = max(1, int(steps * nft.timestep_fraction))
        order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(len(x0))])[:, :kept]
        terms = [(start, j) for start in range(0, len(x0), size) for j in range(kept)]
        stats = {"policy_loss": 0.0, "kl": 0.0, "positive": 0.0, "negative": 0.0}
        self.model.train()
        for index, (start, j) in enumerate(terms):
            rows = slice(start, start + size)
            timestep = grid.timesteps.float()[order[rows, j]]
            t = (timestep / 1000.0).to(device)
            clean = x0[rows].to(device)
            noise = torch.randn(clean.shape, generator=generator).to(device)
            x_t = (1 - t.view(-1, 1, 1, 1, 1)) * clean + t.view(-1, 1, 1, 1, 1) * noise
            embeds = self.prompt_cache.embed(prompts[rows]).to(device)
            timestep = timestep.to(device)
            old = old_velocity(self.transformer, x_t, timestep, embeds)
            reference = None
            if nft.kl_beta > 0:
                with torch.no_grad(), wan.disable_adapter(self.transformer):
                    reference = wan.predict_velocity(self.transformer, x_t, timestep, embeds)
            last = index == len(terms) - 1
            with self.accelerator.no_sync(self.model) if not last else contextlib.nullcontext():
                velocity = wan.predict_velocity(self.model, x_t, timestep, embeds)
                output = nft_loss(
                    velocity,
                    old,
                    x_t,
                    clean,
                    t,
                    r[rows].to(device),
                    nft.nft_beta,
                    nft.adv_clip_max,
                    reference,
                    nft.kl_beta,
                )
                self.accelerator.backward(output.loss / len(terms))
            for key, value in (
                ("policy_loss", output.policy),
                ("kl", output.kl),
                ("positive", output.positive.mean()),
                ("negative", output.negative.mean()),
            ):
                stats[key] += float(value.detach()) / len(terms)
        grad_norm = (
            self.accelerator.clip_grad_norm_(self.lora_parameters, nft.max_grad_norm)
            if nft.max_grad_norm
            else torch.zeros(())
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        decay = old_decay(self.optimizer_steps, nft.decay_type)
        update_old(self.old_parameters, self.default_parameters, decay)
        if self.ema is not None:
            self.ema.update(self.optimizer_steps)
        return {f"train/{key}": value for key, value in stats.items()} | {
            "train/grad_norm": float(grad_norm),
            "train/old_decay": decay,
        }

    def extra_state(self) -> dict:
        names = [n.replace(".default.", ".") for n in self.lora_names]
        return {
            "lora_old": {n: p.detach().clone() for n, p in zip(names, self.old_parameters)},
            "optimizer_steps": self.optimizer_steps,
        }

    def load_extra_state(self, state: dict) -> None:
        names = [n.replace(".default.", ".") for n in self.lora_names]
        with torch.no_grad():
            for name, parameter in zip(names, self.old_parameters):
                parameter.copy_(state["lora_old"][name])
        self.optimizer_steps = int(state["optimizer_steps"])
