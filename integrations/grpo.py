"""GRPO for flow-matching video models on the Wan-2.1 sigma grid: Flow-GRPO and LongCat-GRPO as one family.

Conventions (as in `integrations/wan.py`): x_t = (1 - t) x0 + t eps, the transformer predicts v = eps - x0,
sampling runs from t = 1 to t = 0 on the scheduler's sigma grid, dt = t_next - t < 0.

One step of `WanGRPOTrainer.step`, top to bottom:
  1. sample `group_size` videos per prompt, some sampling steps replaced by SDE steps whose log-probs are kept;
  2. score the decoded videos with the named rewards (`descore_plugin.rewards.contract`);
  3. one advantage per video;
  4. `updates_per_rollout` optimiser steps on the clipped policy loss + beta * KL to the reference
     (the same transformer with its LoRA adapters disabled: no second copy of the weights).

The two algorithms differ in three decisions, each made in ONE function, and in their presets (`PRESETS` in
`integrations/grpo_config.py`: the one place of both algorithms' settings, the algorithm's, the generation's and the
LoRA's):
  shared initial noise      `group_noise`      Flow-GRPO: independent per video; LongCat: shared by a prompt's group
  which steps are SDE steps `sde_masks`        Flow-GRPO: every step, the first T-1 trained; LongCat: one critical step
  how advantages combine    `advantages`       Flow-GRPO: weighted reward sum, per-group z-score, clipped at 5;
                                               LongCat: per reward over the largest group std, then weighted sum
(`group_noise` and `sde_masks` in `integrations/grpo_sampling.py`, `advantages` in `integrations/grpo_advantages.py`;
this module keeps the loss weights, the trainer and the method, and exports every one of these names.)
The per-step math (noise scale, SDE step, log-prob, KL, LongCat's weights, clipped surrogate) is in
`integrations/flow_sde.py`; the formulas and their sources are in docs/post_train.md ("The math").
`WanGRPO` is the method the run loop drives (`recipes/wan_flow_grpo.py`, `recipes/post_train.py flow_grpo|longcat`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from descore_plugin.integrations import wan
from descore_plugin.integrations.flow_sde import (
    clipped_policy_loss,
    gaussian_log_prob,
    longcat_loss_weights,
    mean_kl,
    noise_scale,
    sde_step,
)
from descore_plugin.integrations.grpo_advantages import (
    AdvantageError,
    advantages,
    fill_missing_rewards,
    group_advantages_population,
    max_group_std_advantages,
)
from descore_plugin.integrations.grpo_config import PRESETS, WAN_PRESETS, WanGRPOConfig
from descore_plugin.integrations.grpo_sampling import critical_steps, group_noise, sde_masks
from descore_plugin.integrations.post_training import (
    LoraEMA,
    WanMethod,
    epoch_order,
    is_tiny_pipeline,
    pipeline_generation_defaults,
    seed_of,
)
from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper

# ----------------------------------------------------------------------------------------------------------------
# The SDE-step loss weights (the step itself: `integrations/flow_sde.py`)
# ----------------------------------------------------------------------------------------------------------------


def loss_weights(config: WanGRPOConfig, sigma, sigma_next, scale, sigmas) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_policy, w_KL) of SDE-step terms at times `sigma` -> `sigma_next` with noise scale `scale` (B,):
    uniform 1, 1; lambda LongCat's weights (`longcat_loss_weights`); noise_over_sqrt_dt s_t / sqrt(|dt|), 1 (the
    per-step factor of flow_grpo's Wan trainer)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if config.loss_weighting == "lambda":
        return longcat_loss_weights(sigma, sigma_next, float(sigmas[1]))
    if config.loss_weighting == "noise_over_sqrt_dt":
        dt = torch.as_tensor(sigma_next, dtype=torch.float32) - sigma
        return torch.as_tensor(scale, dtype=torch.float32).cpu().reshape(-1) / torch.sqrt(-dt), torch.ones(())
    return torch.ones(()), torch.ones(())


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """N = prompts x group_size videos, the samples of a prompt next to each other."""

    prompts: list[str]  # (N,)
    trajectory: torch.Tensor  # (N, T + 1, C, F', h, w) float32 latents x at sigma_0 .. sigma_T
    sde_mask: torch.Tensor  # (N, T) bool: the step was an SDE step
    train_mask: torch.Tensor  # (N, T) bool: the step's log-prob is trained
    log_probs: torch.Tensor  # (N, T) float32 log-probs of the SDE steps under the sampling policy (0 elsewhere)
    sigmas: torch.Tensor  # (T + 1,)
    timesteps: torch.Tensor  # (T,)
    videos: torch.Tensor  # (N, F, C, H, W) float32 in [0, 1]


class WanGRPOTrainer:
    """GRPO on one process's prompts (several processes: accelerate/DDP all-reduce the LoRA gradients).

    model: the trained transformer as accelerate prepared it; transformer: the same, unwrapped (sampling, and the
    reference with adapters disabled); rewards: a `descore_plugin.rewards.contract.RewardSet`; micro_batch_size: videos per
    transformer batch in sampling and training (the same in both, so the first update's ratio is exactly 1).
    """

    def __init__(
        self,
        config: WanGRPOConfig,
        accelerator,
        pipe,
        model,
        transformer,
        optimizer,
        prompt_cache,
        generation,
        rewards,
        micro_batch_size: int | None = None,
    ):
        self.config, self.accelerator, self.pipe = config, accelerator, pipe
        self.model, self.transformer, self.optimizer = model, transformer, optimizer
        self.prompt_cache, self.generation, self.rewards = prompt_cache, generation, rewards
        self.micro_batch_size = micro_batch_size
        self.parameters = [p for p in transformer.parameters() if p.requires_grad]
        self.optimizer_steps = 0  # optimiser steps done (the EMA's clock)
        self.ema = None  # a post_training.LoraEMA updated after every optimiser step, when the method keeps one

    def check_batching(self, num_videos: int) -> int:
        """The micro-batch size; raises ValueError unless the videos split evenly into updates and micro-batches."""
        if self.config.noise_level <= 0:
            raise ValueError(
                f"noise_level={self.config.noise_level}: training needs SDE steps with a > 0 (0 is the ODE)"
            )
        updates = self.config.updates_per_rollout
        if updates < 1 or num_videos % updates != 0:
            raise ValueError(
                f"updates_per_rollout={updates}: the {num_videos} videos of a rollout batch (prompts per "
                f"process x group_size {self.config.group_size}) must split evenly into that many updates"
            )
        size = self.micro_batch_size or num_videos // updates
        if (num_videos // updates) % size != 0:
            raise ValueError(f"micro_batch_size={size}: must divide the {num_videos // updates} videos of one update")
        return size

    def step(self, prompts: list[str], generator: torch.Generator, train: bool = True) -> dict[str, float]:
        """One GRPO iteration; returns this process's metrics (reward/<name>, train/*, time/*). train=False: the
        rollouts are sampled and scored, nothing is updated (flow_grpo's first epochs)."""
        micro = self.check_batching(len(prompts) * self.config.group_size)
        started = time.perf_counter()
        rollout = self.sample(prompts, generator, micro)
        sampled = time.perf_counter()
        scores = self.rewards(rollout.videos, rollout.prompts)
        scored = time.perf_counter()
        advantage, stats = advantages(self.config, scores, self.rewards.weights, gather=self.accelerator.gather)
        metrics = {f"train/{key}": value for key, value in stats.items()}
        if train:
            metrics.update({f"train/{key}": value for key, value in self.update(rollout, advantage, micro).items()})
        metrics["train/trained"] = float(train)
        for name, value in scores.items():
            metrics[f"reward/{name}"] = float(torch.nanmean(value.float()))
        metrics["train/advantage_abs_mean"] = float(advantage.abs().mean())
        metrics["train/zero_advantage_fraction"] = float((advantage == 0).float().mean())
        metrics.update(
            {
                "time/sample": sampled - started,
                "time/reward": scored - sampled,
                "time/train": time.perf_counter() - scored,
            }
        )
        return metrics

    def _embeds(self, prompts: list[str]):
        device = self.accelerator.device
        negative = None
        if self.generation.guidance_scale > 1:
            negative = self.prompt_cache.negative(len(prompts)).to(device)
        return self.prompt_cache.embed(prompts).to(device), negative

    @torch.no_grad()
    def sample(self, prompts: list[str], generator: torch.Generator, micro_batch_size: int) -> Rollout:
        """group_size videos per prompt; the SDE steps' samples drawn and their log-probs recorded."""
        config, generation, device = self.config, self.generation, self.accelerator.device
        steps = generation.num_inference_steps
        grid = wan.flow_grid(self.pipe.scheduler, steps, device=device)
        noise = group_noise(config, self.pipe, len(prompts), generation, generator)
        sde, trained = (
            m.repeat_interleave(config.group_size, dim=0) for m in sde_masks(config, steps, len(prompts), generator)
        )
        video_prompts = [p for p in prompts for _ in range(config.group_size)]
        log_probs = torch.zeros(len(video_prompts), steps)
        trajectories, videos = [], []
        self.transformer.eval()
        for start in range(0, len(video_prompts), micro_batch_size):
            rows = slice(start, start + micro_batch_size)
            embeds, negative = self._embeds(video_prompts[rows])
            x = noise[rows].to(device)
            trajectory = [x]
            for i in range(steps):
                velocity = wan.predict_velocity(
                    self.transformer, x, grid.timesteps[i], embeds, negative, generation.guidance_scale
                )
                mask = sde[rows, i].to(device)
                scale = noise_scale(grid.sigmas[i], grid.sigmas, config.noise_schedule, config.noise_level)
                scale = (mask.float() * scale).reshape(-1, *([1] * (x.ndim - 1)))  # 0 = the exact Euler step
                step = sde_step(
                    velocity,
                    x,
                    grid.sigmas[i],
                    grid.sigmas[i + 1],
                    noise_scale=scale,
                    diffusion_cap=config.diffusion_cap,
                    generator=generator,
                )
                if mask.any():
                    log_probs[rows][mask.cpu(), i] = gaussian_log_prob(
                        step.prev_sample[mask], step.mean[mask], step.std[mask]
                    ).cpu()
                x = step.prev_sample
                trajectory.append(x)
            trajectories.append(torch.stack(trajectory, dim=1).cpu())
            videos.append(wan.decode_latents(self.pipe, x).cpu())
        return Rollout(
            prompts=video_prompts,
            trajectory=torch.cat(trajectories),
            sde_mask=sde,
            train_mask=trained,
            log_probs=log_probs,
            sigmas=grid.sigmas.cpu(),
            timesteps=grid.timesteps.cpu(),
            videos=torch.cat(videos),
        )

    def micro_batches(self, rollout: Rollout, micro_batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(rows, steps) of every trained (video, step) term, cut along the sampler's own video chunks, so that the
        transformer sees the batch shapes it saw in sampling and the recomputed log-probs are bit-identical: a chunk
        whose videos each train one step is one micro-batch (each video at its own step); otherwise one micro-batch
        per step, of the chunk's videos trained at that step."""
        n, steps = rollout.train_mask.shape
        terms = []
        for start in range(0, n, micro_batch_size):
            chunk = torch.arange(start, min(start + micro_batch_size, n))
            mask = rollout.train_mask[chunk]
            if mask.sum(dim=1).eq(1).all():
                terms.append((chunk, mask.float().argmax(dim=1)))
                continue
            for step in range(steps):
                rows = chunk[rollout.train_mask[chunk, step]]
                if len(rows):
                    terms.append((rows, torch.full((len(rows),), step, dtype=torch.long)))
        return terms

    def loss(self, rollout: Rollout, rows: torch.Tensor, steps: torch.Tensor, advantage: torch.Tensor):
        """Per-term losses (J,) and statistics of the (video rows[j], step steps[j]) terms:
        w_policy * clipped policy loss + kl_beta * w_KL * KL(mu_theta || mu_ref), the weights 1 (uniform) or
        LongCat's lambdas."""
        config, device = self.config, self.accelerator.device
        x = rollout.trajectory[rows, steps].to(device)
        x_next = rollout.trajectory[rows, steps + 1].to(device)
        sigma, sigma_next = rollout.sigmas[steps], rollout.sigmas[steps + 1]
        timestep = rollout.timesteps[steps].to(device)
        embeds, negative = self._embeds([rollout.prompts[int(r)] for r in rows])
        scale = noise_scale(sigma, rollout.sigmas, config.noise_schedule, config.noise_level).to(device)
        scale = scale.reshape(-1, *([1] * (x.ndim - 1)))
        guidance = self.generation.guidance_scale

        velocity = wan.predict_velocity(self.model, x, timestep, embeds, negative, guidance)
        step = sde_step(
            velocity, x, sigma, sigma_next, noise_scale=scale, diffusion_cap=config.diffusion_cap, prev_sample=x_next
        )
        log_prob = gaussian_log_prob(x_next, step.mean, step.std)
        policy, ratio = clipped_policy_loss(
            log_prob, rollout.log_probs[rows, steps].to(device), advantage[rows].to(device), config.clip_range
        )
        kl = torch.zeros_like(policy)
        if config.kl_beta > 0:
            with torch.no_grad(), wan.disable_adapter(self.transformer):
                ref_velocity = wan.predict_velocity(self.transformer, x, timestep, embeds, negative, guidance)
            ref = sde_step(
                ref_velocity,
                x,
                sigma,
                sigma_next,
                noise_scale=scale,
                diffusion_cap=config.diffusion_cap,
                prev_sample=x_next,
            )
            kl = mean_kl(step.mean, ref.mean, step.std)
        w_policy, w_kl = loss_weights(config, sigma, sigma_next, scale, rollout.sigmas)
        loss = w_policy.to(device) * policy + config.kl_beta * w_kl.to(device) * kl
        stats = {
            "ratio": ratio.detach(),
            "kl": kl.detach(),
            "policy_loss": policy.detach(),
            "loss": loss.detach(),
            "clipped": ((ratio.detach() - 1).abs() > config.clip_range).float(),
        }
        return loss, stats

    def update(self, rollout: Rollout, advantage: torch.Tensor, micro_batch_size: int) -> dict[str, float]:
        """updates_per_rollout optimiser steps; each averages the loss over its terms; gradients accumulate over
        micro-batches without synchronisation and are all-reduced on the update's last backward (every process does
        the same number of backwards), so the LoRA weights stay identical on all processes.
        mask_zero_advantages: the terms of a video with advantage exactly 0 weigh 0 and the mean is over the others
        (they still run, so that every process does the same backwards)."""
        accelerator, config = self.accelerator, self.config
        part = len(rollout.prompts) // config.updates_per_rollout
        terms = self.micro_batches(rollout, micro_batch_size)
        keep = (advantage != 0).float() if config.mask_zero_advantages else torch.ones(advantage.shape)
        collected: dict[str, list[torch.Tensor]] = {}
        first_update_ratios = []
        self.model.train()
        for update in range(config.updates_per_rollout):
            update_terms = [(rows, steps) for rows, steps in terms if int(rows[0]) // part == update]
            count = max(sum(float(keep[rows].sum()) for rows, _ in update_terms), 1.0)
            for index, (rows, steps) in enumerate(update_terms):
                last = index == len(update_terms) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                    loss, stats = self.loss(rollout, rows, steps, advantage)
                    accelerator.backward((loss * keep[rows].to(loss.device)).sum() / count)
                for key, value in stats.items():
                    collected.setdefault(key, []).append(value.float().cpu())
                if update == 0:
                    first_update_ratios.append(stats["ratio"].cpu())
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(self.parameters, config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer_steps += 1
            if self.ema is not None:
                self.ema.update(self.optimizer_steps)
        values = {key: torch.cat(value) for key, value in collected.items()}
        summary = {key: float(value.mean()) for key, value in values.items()}
        summary["ratio_min"], summary["ratio_max"] = float(values["ratio"].min()), float(values["ratio"].max())
        # the first update is on-policy: its ratios must be exactly 1
        summary["first_update_ratio_max_error"] = float((torch.cat(first_update_ratios) - 1).abs().max())
        return summary


# ----------------------------------------------------------------------------------------------------------------
# The method: recipes/wan_flow_grpo.py = recipes/post_train.py flow_grpo | longcat
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class GRPOLoopConfig:
    """The GRPO loop."""

    prompts_per_step: int = _help("prompts per process per step (our default)", default=2)
    micro_batch_size: int | None = _help(
        "videos per transformer batch in sampling and training; unset: one update's videos", default=None
    )
    shift: float | None = _help(
        "scheduler time (flow) shift; unset: the pipeline's (a real pipeline with longcat: its preset 12)", default=None
    )


def _preset_defaults(name: str) -> dict:
    preset = WAN_PRESETS[name]
    return {**preset["generation"], **{key: preset[key] for key in ("lora_rank", "lora_alpha", "lora_targets")}}


class WanGRPO(WanMethod):
    """GRPO post-training of Wan-2.1: Flow-GRPO or LongCat-GRPO (`--algorithm`).

    One step (`WanGRPOTrainer.step`): each process takes --prompts-per-step of ITS prompts and samples --group-size
    videos per prompt (flow_grpo: independent noise, SDE on every step, the first T-1 trained; longcat: shared noise,
    one critical SDE step), scores them with the --reward set, turns the rewards into advantages (flow_grpo: weighted
    sum, per-group z-score; longcat: per reward over the largest group std, then the weighted sum) and takes
    --updates-per-rollout optimiser steps on the clipped policy loss + beta KL to the adapters-off reference.
    flow_grpo's Wan trainer also evaluates and publishes an EMA of the LoRA (--ema), samples without training for its
    first --untrained-steps steps, and leaves zero-advantage videos out of the loss (--mask-zero-advantages).
    Generation and LoRA default to the algorithm's preset (flow_grpo: 33x240x416, 20 steps, CFG 4.5, LoRA 32 / 64 on
    attention; longcat: 16 steps, time shift 12, CFG 4, LoRA 128 / 64 on all linears), a tiny pipeline's own
    generation_defaults.json first.
    """

    name = "GRPO"
    curve_names = ("train/kl", "train/clipped", "train/policy_loss")
    config_classes = (WanGRPOConfig, GRPOLoopConfig)
    defaults = dict(
        learning_rate=1e-4, weight_decay=1e-4, checkpoint_every=50, solver="euler", **_preset_defaults("flow_grpo")
    )
    """flow_grpo's Wan preset and LongCat: learning rate 1e-4; AdamW weight decay 1e-4 (flow_grpo's base config)."""
    help_notes = {
        key: f"--algorithm longcat: {value}"
        for key, value in _preset_defaults("longcat").items()
        if value != _preset_defaults("flow_grpo")[key]
    }
    for _key in WAN_PRESETS["flow_grpo"]["generation"]:
        help_notes[_key] = "; ".join(
            filter(None, [help_notes.get(_key), "a tiny pipeline: its generation_defaults.json"])
        )
    del _key

    @classmethod
    def later_defaults(cls, known) -> dict:
        """LoRA, scheduler shift and generation follow --algorithm (a tiny pipeline keeps its own generation)."""
        preset = WAN_PRESETS[known.algorithm]
        generation = pipeline_generation_defaults(known.pipeline, preset["generation"])
        return {
            **generation,
            "lora_rank": preset["lora_rank"],
            "lora_alpha": preset["lora_alpha"],
            "lora_targets": preset["lora_targets"],
            "shift": None if is_tiny_pipeline(known.pipeline) else preset["shift"],
        }

    def check(self) -> None:
        super().check()
        self.algorithm, self.options = self.config.get(WanGRPOConfig), self.config.get(GRPOLoopConfig)
        self.name = {"flow_grpo": "Flow-GRPO", "longcat": "LongCat-GRPO"}[self.algorithm.algorithm]

    def prepare(self) -> None:
        if self.options.shift is not None:  # the same scheduler with another time shift
            config = self.pipe.scheduler.config
            key = "flow_shift" if "flow_shift" in config else "shift"
            self.pipe.scheduler = type(self.pipe.scheduler).from_config(config, **{key: self.options.shift})
        self.trainer = WanGRPOTrainer(
            self.algorithm,
            self.accelerator,
            self.pipe,
            self.model,
            self.transformer,
            self.optimizer,
            self.prompt_cache,
            self.generation,
            self.rewards,
            self.options.micro_batch_size,
        )
        self.eval_batch_size = self.trainer.check_batching(self.options.prompts_per_step * self.algorithm.group_size)
        if self.algorithm.ema:
            self.ema = LoraEMA(
                self.lora_parameters, self.algorithm.ema_decay, self.algorithm.ema_interval, self.lora_names
            )
            self.trainer.ema = self.ema

    def train_step(self, step: int) -> dict[str, float]:
        prompts = epoch_order(
            [p for _, p in self.my_prompts],
            self.options.prompts_per_step,
            self.run.seed,
            "step_prompts",
            self.rank,
            step,
        )
        generator = torch.Generator().manual_seed(seed_of(self.run.seed, "step", self.rank, step))
        return self.trainer.step(prompts, generator, train=step >= self.algorithm.untrained_steps)

    def extra_state(self) -> dict:
        return {"optimizer_steps": self.trainer.optimizer_steps}

    def load_extra_state(self, state: dict) -> None:
        self.trainer.optimizer_steps = int(state["optimizer_steps"])


__all__ = [  # the family's public names, wherever they live (the settings, advantages and sampling decisions too)
    "PRESETS",
    "WAN_PRESETS",
    "WanGRPOConfig",
    "AdvantageError",
    "advantages",
    "fill_missing_rewards",
    "group_advantages_population",
    "max_group_std_advantages",
    "critical_steps",
    "sde_masks",
    "group_noise",
    "loss_weights",
    "Rollout",
    "WanGRPOTrainer",
    "GRPOLoopConfig",
    "WanGRPO",
]
