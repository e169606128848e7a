"""Flow-DPO for Wan-2.1 (Liu et al., "Improving Video Generation with Human Feedback", arXiv 2501.13918).

Two halves, used in this order by recipes/wan_flow_dpo.py (this module exports the names of both):

(a) Pair building (`integrations/flow_dpo_pairs.py`): K videos per prompt, scored by the reward set, turned into
    (winner, loser) pairs (best vs worst, or every pair over a margin), stored per prompt for resumption.

(b) The loss. With x_t = (1 - t) x0 + t eps and the velocity target v = eps - x0 (one eps and one t shared by the
    winner and the loser of a pair), and the per-sample MEAN squared error over all latent elements

        mse(x0) = mean_{c,f,h,w} (v_theta(x_t, t) - v)^2          (ref: the same with the LoRA adapter disabled)
        delta   = (mse_theta(x0_w) - mse_ref(x0_w)) - (mse_theta(x0_l) - mse_ref(x0_l))
        loss    = -log sigmoid(-beta / 2 * delta)                    (arXiv 2501.13918, Flow-DPO, constant beta)

    Our option (FlowDPOConfig.sft_weight, 0 by default): loss += sft_weight * mse_theta(x0_w), the winners' own
    flow-matching loss (DPO + SFT, as RPO adds the chosen answer's NLL): the DPO term alone can fall while winner AND
    loser are denoised worse, which is what a small generator does (docs/post_train.md has the measurement).

    The derivation gives beta_t = beta (1 - t)^2; the paper keeps beta CONSTANT because the time-dependent weight
    reward-hacks, and so do we. Meaning of the default beta = 500 with the MEAN reduction: the loss is ln 2 at the
    start (policy = reference), and falls to -log sigmoid(1) = 0.31 once the policy has lowered the winner's error
    relative to the loser's by delta = -2 / beta = -0.004, i.e. by about 0.2 % of the per-element error itself
    (E v^2 = 2 for v = eps - x0 with unit-variance latents; 2.3 on the tiny pipeline). A SUM over the N latent
    elements would need beta / N for the same behaviour; flow_grpo's image DPO uses the mean with beta 100.
    The paper's beta 500 is used with its own (unpublished) normalisation: treat it as a starting point.
    Timesteps (FlowDPOConfig.timestep_schedule): "shifted" (default, as flow_grpo's DPO trainer): u ~ logit-normal,
    t = the pipeline scheduler's 1000-step training sigma grid, shifted by its flow shift, at index floor(u * 1000);
    "logit_normal": t = u itself (SD3's flow-matching default, no shift). The paper states neither.
    The reference model is the trained transformer itself inside `disable_adapter`: no second copy of the weights.
    Implicit accuracy = fraction of pairs with -beta/2 * delta > 0 (the policy ranks the winner above the loser
    relative to the reference); exactly 0 at the start, where every delta is 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from descore_plugin.integrations.flow_dpo_pairs import (
    PairConfig,
    PairRecord,
    PairRound,
    PairStoreError,
    build_pairs,
    load_pair_store,
    pair_latents,
    prompt_seed,
    select_pairs,
)
from descore_plugin.integrations.post_training import WanMethod, epoch_order, seed_of
from descore_plugin.integrations.wan import disable_adapter, predict_velocity
from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper

# ----------------------------------------------------------------------------------------------------------------
# Configuration (the pairs' own: `PairConfig` in flow_dpo_pairs.py)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FlowDPOConfig:
    """The Flow-DPO loss (the module docstring gives the formula and the meaning of beta)."""

    beta: float = _help("constant KL weight (the paper's 500; with the per-element MEAN squared error)", 500.0)
    timestep_schedule: Literal["shifted", "logit_normal"] = _help(
        "shifted: t from the pipeline scheduler's shifted 1000-step training grid at a logit-normal index (flow_grpo's "
        "DPO); logit_normal: t = sigmoid(logit_mean + logit_std N(0, 1)) without shift (SD3's default)",
        "shifted",
    )
    timestep_shift: float | None = _help(
        "flow shift of the 'shifted' schedule; unset: the pipeline scheduler's (Wan-2.1 480p: 3.0)", None
    )
    logit_mean: float = _help("mean of the logit-normal draw", 0.0)
    logit_std: float = _help("std of the logit-normal draw", 1.0)
    sft_weight: float = _help(
        "weight w of the winners' own flow-matching error added to the loss, loss = DPO + w * mse_theta(x0_w) (0: the "
        "paper's Flow-DPO; > 0: DPO + SFT on the winners, as RPO adds the chosen answer's NLL, so that the policy "
        "cannot separate its pairs by denoising both worse; DPO's pull on mse_w starts at beta / 4)",
        0.0,
    )
    num_train_timesteps: int = _help("transformer timestep = t * num_train_timesteps (the Wan schedulers' scale)", 1000)

    def check(self) -> None:
        if self.sft_weight < 0:
            raise PairStoreError(f"--sft-weight must be >= 0, got {self.sft_weight}")
        if self.timestep_schedule not in ("shifted", "logit_normal"):
            raise PairStoreError(f"--timestep-schedule must be shifted or logit_normal, got {self.timestep_schedule!r}")
        if self.timestep_schedule == "shifted" and not self.timestep_shift:
            raise PairStoreError(
                "timestep_schedule 'shifted' needs timestep_shift (the pipeline scheduler's flow shift)"
            )


def scheduler_shift(scheduler) -> float:
    """The flow shift of a diffusers flow scheduler (UniPC: flow_shift; FlowMatchEuler: shift)."""
    config = scheduler.config
    return float(config["flow_shift"] if "flow_shift" in config else config.get("shift", 1.0))


# ----------------------------------------------------------------------------------------------------------------
# (b) The loss
# ----------------------------------------------------------------------------------------------------------------


def sample_timesteps(batch_size: int, config: FlowDPOConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) float32 t in (0, 1): u ~ logit-normal, then the schedule of `config.timestep_schedule`.

    shifted: the training grid of a flow scheduler with N = num_train_timesteps steps runs s_i = (N - i) / N,
    i = 0..N-1, shifted as shift s / (1 + (shift - 1) s); t = that sigma at index floor(u N) (flow_grpo's DPO trainer:
    `noise_scheduler.timesteps[(u * N).long()]` and its sigma). logit_normal: t = u.
    """
    config.check()
    u = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(batch_size, generator=generator))
    if config.timestep_schedule == "logit_normal":
        return u
    n = config.num_train_timesteps
    base = (n - (u * n).long().clamp(max=n - 1)).float() / n
    shift = config.timestep_shift
    return shift * base / (1 + (shift - 1) * base)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean over every non-batch element of (prediction - target)^2, in float32."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


@dataclass
class DPOOutput:
    loss: torch.Tensor  # scalar, mean over pairs of -log sigmoid(inside) (+ sft_weight * mean mse_w)
    inside: torch.Tensor  # (B,) -beta/2 * delta, detached
    implicit_accuracy: float  # fraction of pairs with inside > 0
    mse_w: float  # mean policy error on winners (and the reference's below)
    mse_l: float
    ref_mse_w: float
    ref_mse_l: float
    timesteps: torch.Tensor = field(repr=False, default=None)  # (B,) the t used


def flow_dpo_loss(
    policy_w: torch.Tensor,
    policy_l: torch.Tensor,
    reference_w: torch.Tensor,
    reference_l: torch.Tensor,
    target_w: torch.Tensor,
    target_l: torch.Tensor,
    beta: float,
    sft_weight: float = 0.0,
) -> DPOOutput:
    """-log sigmoid(-beta/2 [(mse_w - mse_w_ref) - (mse_l - mse_l_ref)]) with per-sample mean MSE (arXiv 2501.13918,
    Flow-DPO with constant beta), plus sft_weight * mse_w (the winners' flow-matching loss; 0 by default: the paper's
    loss). Inputs: velocity predictions and targets, each (B, C, F', h, w)."""
    mse_w, mse_l = per_sample_mse(policy_w, target_w), per_sample_mse(policy_l, target_l)
    ref_mse_w, ref_mse_l = per_sample_mse(reference_w, target_w), per_sample_mse(reference_l, target_l)
    inside = -0.5 * beta * ((mse_w - ref_mse_w) - (mse_l - ref_mse_l))
    loss = -F.logsigmoid(inside).mean()
    if sft_weight:
        loss = loss + sft_weight * mse_w.mean()
    return DPOOutput(
        loss=loss,
        inside=inside.detach(),
        implicit_accuracy=(inside > 0).float().mean().item(),
        mse_w=mse_w.mean().item(),
        mse_l=mse_l.mean().item(),
        ref_mse_w=ref_mse_w.mean().item(),
        ref_mse_l=ref_mse_l.mean().item(),
    )


def _noised(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, v) with x_t = (1 - t) x0 + t eps and v = eps - x0 (rectified flow)."""
    t = t.view(-1, *([1] * (latents.ndim - 1)))
    return (1.0 - t) * latents + t * noise, noise - latents


def flow_dpo_step(
    model,
    transformer,
    winners: torch.Tensor,
    losers: torch.Tensor,
    prompt_embeds: torch.Tensor,
    config: FlowDPOConfig,
    generator: torch.Generator | None = None,
) -> DPOOutput:
    """The Flow-DPO loss of a batch of pairs (call `.loss.backward()` / `accelerator.backward` on it).

    model: the trained transformer as called for gradients (the accelerate/DDP wrapper, or the module itself);
    transformer: the unwrapped module, whose adapter is disabled for the reference forward.
    winners, losers: (B, C, F', h, w) clean latents x0; prompt_embeds: (B, L, D).
    Noise and t are drawn on the CPU from `generator` (identical on every device) and shared by winner and loser.
    The reference runs first, without gradients, so its activations are freed before the policy forward.
    """
    device = winners.device
    batch_size = winners.shape[0]
    noise = torch.randn(winners.shape, generator=generator).to(device)
    t = sample_timesteps(batch_size, config, generator).to(device)
    x_w, target_w = _noised(winners.float(), noise, t)
    x_l, target_l = _noised(losers.float(), noise, t)
    hidden_states = torch.cat([x_w, x_l])  # (2B, C, F', h, w): winner and loser in one forward
    timesteps = torch.cat([t, t]) * config.num_train_timesteps
    embeds = torch.cat([prompt_embeds, prompt_embeds])
    with torch.no_grad(), disable_adapter(transformer):
        reference = predict_velocity(transformer, hidden_states, timesteps, embeds)
    policy = predict_velocity(model, hidden_states, timesteps, embeds)
    output = flow_dpo_loss(
        policy[:batch_size],
        policy[batch_size:],
        reference[:batch_size],
        reference[batch_size:],
        target_w,
        target_l,
        config.beta,
        config.sft_weight,
    )
    output.timesteps = t.detach().cpu()
    return output


def flow_matching_step(
    model,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    config: FlowDPOConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Plain flow-matching (SFT) loss mean ||v_theta(x_t) - (eps - x0)||^2 on a batch of clean latents: the baseline
    that recipes/bench_post_training.py compares a DPO step's memory with (same batch, same shapes)."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    t = sample_timesteps(latents.shape[0], config, generator).to(latents.device)
    x_t, target = _noised(latents.float(), noise, t)
    prediction = predict_velocity(model, x_t, t * config.num_train_timesteps, prompt_embeds)
    return per_sample_mse(prediction, target).mean()


# ----------------------------------------------------------------------------------------------------------------
# (c) The method: recipes/wan_flow_dpo.py = recipes/post_train.py flow_dpo
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DPOLoopConfig:
    """The Flow-DPO loop."""

    batch_size: int = _help("pairs per process per step", 4)
    online_every: int = _help(
        "regenerate the pairs with the current policy every N steps (0: offline, the base model's pairs)", 0
    )
    max_grad_norm: float = _help("gradient clipping", 1.0)


class FlowDPO(WanMethod):
    """Flow-DPO post-training of Wan-2.1 (arXiv 2501.13918; the module docstring has the loss and beta).

    Pairs: --videos-per-prompt videos per prompt from the base model (adapter disabled), scored by the --reward set,
    best vs worst (or every pair over --pair-margin); stored under OUTPUT/cache/pairs-<key>/round_NNNN (resumable,
    keyed by what produced them) and read once per round. With --online-every N the current policy regenerates them
    every N steps (round r = step // N). Training: LoRA (rank 64 / alpha 128 on q/k/v/o, as in the paper), the loss
    with constant beta, shared noise and t for winner and loser, reference = the same transformer with its adapter
    disabled. Logged: train/loss, train/implicit_accuracy, train/mse_*, train/pair_gap, train/grad_norm; at the
    first step of a round reward/<name> (the round's videos) and train/pairs_per_process.
    """

    name = "Flow-DPO"
    curve_names = ("train/loss", "train/implicit_accuracy")
    config_classes = (PairConfig, FlowDPOConfig, DPOLoopConfig)
    defaults = dict(
        learning_rate=5e-6,
        lora_rank=64,
        lora_alpha=128.0,
        lora_targets="attention",
        checkpoint_every=100,
        solver="scheduler",
    )
    """Flow-DPO paper: learning rate 5e-6 (1.3B+ models), LoRA rank 64 / alpha 128 on the attention projections."""

    def check(self) -> None:
        super().check()
        self.pairs, self.dpo, self.options = (self.config.get(c) for c in self.config_classes)
        self.pairs.check()

    def prepare(self) -> None:
        self.eval_batch_size = self.pairs.generation_batch_size
        if self.dpo.timestep_shift is None:
            self.dpo.timestep_shift = scheduler_shift(self.pipe.scheduler)
        self.dpo.check()
        run = self.run
        self.store_root = self.loop.run_dir.cache_dir(
            "pairs",
            {
                "pipeline": run.pipeline,
                "reward": run.reward,
                "reward_model": run.reward_model,
                "think": run.think,
                "generation": asdict(self.generation),
                "pairs": asdict(self.pairs),
                "seed": run.seed,
                "solver": self.evaluation.solver,
                "online_every": self.options.online_every,
            },
        )
        self.round_index, self.round = None, None

    def _build_round(self, round_index: int) -> PairRound:
        store = self.store_root / f"round_{round_index:04d}"
        ids, prompts = [i for i, _ in self.my_prompts], [p for _, p in self.my_prompts]
        self.transformer.eval()
        build = dict(
            rewards=self.rewards,
            generation=self.generation,
            config=self.pairs,
            store_dir=store,
            seed=self.run.seed,
            round_index=round_index,
            solver=self.evaluation.solver,
            progress=self.accelerator.is_main_process,
        )
        if round_index == 0:  # the base model's videos (exactly the base model, even after a resume)
            with disable_adapter(self.transformer):
                pairs = build_pairs(self.pipe, self.transformer, self.prompt_cache, prompts, ids, **build)
        else:
            pairs = build_pairs(self.pipe, self.transformer, self.prompt_cache, prompts, ids, **build)
        self.transformer.train()
        self.accelerator.wait_for_everyone()
        if not pairs.records:
            raise PairStoreError(
                f"{store}: no pair on process {self.rank} (all scores of its {len(prompts)} prompts tie, differ by <= "
                f"--pair-margin {self.pairs.pair_margin} or are missing); use more prompts or --videos-per-prompt"
            )
        return pairs

    def train_step(self, step: int) -> dict[str, float]:
        every = self.options.online_every
        wanted = step // every if every else 0
        metrics = {}
        if wanted != self.round_index:
            self.round_index, self.round = wanted, self._build_round(wanted)
            if step == wanted * every:  # the round's first step (a run resumed inside a round logged it already)
                scores = [math.nan if v is None else v for v in self.round.scores]
                metrics["reward/" + "+".join(self.rewards.names)] = float(np.nanmean(scores))
                metrics["train/pairs_per_process"] = float(len(self.round))
        position = step - self.round_index * every
        batch = epoch_order(
            self.round.records,
            self.options.batch_size,
            self.run.seed,
            "pair_batches",
            self.rank,
            position,
            self.round_index,
        )
        winners, losers = self.round.batch(batch)
        output = flow_dpo_step(
            self.model,
            self.transformer,
            winners.to(self.device),
            losers.to(self.device),
            self.prompt_cache.embed([r.prompt for r in batch]).to(self.device),
            self.dpo,
            generator=torch.Generator().manual_seed(seed_of(self.run.seed, "step", self.rank, step)),
        )
        self.accelerator.backward(output.loss)
        grad_norm = self.accelerator.clip_grad_norm_(self.lora_parameters, self.options.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            **metrics,
            "train/loss": output.loss.item(),
            "train/implicit_accuracy": output.implicit_accuracy,
            "train/mse_w": output.mse_w,
            "train/mse_l": output.mse_l,
            "train/ref_mse_w": output.ref_mse_w,
            "train/ref_mse_l": output.ref_mse_l,
            "train/inside": output.inside.mean().item(),
            "train/pair_gap": float(np.mean([r.score_w - r.score_l for r in batch])),
            "train/grad_norm": float(grad_norm),
            "train/round": float(self.round_index),
        }


__all__ = [  # the method's public names, the pairs' (flow_dpo_pairs.py) included
    "PairStoreError",
    "PairConfig",
    "PairRecord",
    "PairRound",
    "select_pairs",
    "prompt_seed",
    "build_pairs",
    "load_pair_store",
    "pair_latents",
    "FlowDPOConfig",
    "scheduler_shift",
    "sample_timesteps",
    "per_sample_mse",
    "DPOOutput",
    "flow_dpo_loss",
    "flow_dpo_step",
    "flow_matching_step",
    "DPOLoopConfig",
    "FlowDPO",
]
