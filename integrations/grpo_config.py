"""The GRPO family's settings: each algorithm's preset (PRESETS: Flow-GRPO's and LongCat-GRPO's algorithm settings;
WAN_PRESETS: their generation, scheduler shift and LoRA) and `WanGRPOConfig`, whose fields mean the same for both
algorithms. The one place of both algorithms' settings; `integrations/grpo.py` is the trainer that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper

PRESETS = {
    # Flow-GRPO (arXiv 2505.05470) with the settings of flow_grpo's Wan-2.1 trainer and preset
    # (scripts/train_wan2_1.py, config/grpo.py::general_ocr_wan2_1). ema, untrained_steps and mask_zero_advantages
    # are that trainer's, not the paper's: options (off in longcat).
    "flow_grpo": dict(
        shared_noise=False,
        noise_schedule="linear",
        noise_level=1.0,
        critical_steps=None,
        diffusion_cap=None,
        advantage="group",
        adv_clip=5.0,
        loss_weighting="uniform",
        kl_beta=0.004,
        updates_per_rollout=2,
        ema=True,
        untrained_steps=2,
        mask_zero_advantages=True,
    ),
    # LongCat-GRPO (LongCat-Video report, arXiv 2510.22200, sec. 3.3 and app. A.1)
    "longcat": dict(
        shared_noise=True,
        noise_schedule="sqrt",
        noise_level=1.0,
        critical_steps=6,
        diffusion_cap=0.45,
        advantage="max_group_std",
        adv_clip=None,
        loss_weighting="lambda",
        kl_beta=3e-4,
        updates_per_rollout=1,
        ema=False,
        untrained_steps=0,
        mask_zero_advantages=False,
    ),
}
"""Each algorithm's settings of `WanGRPOConfig`; WAN_PRESETS holds its generation, scheduler shift and LoRA."""

WAN_PRESETS = {
    # flow_grpo config/grpo.py general_ocr_wan2_1 (flow shift: the pipeline's)
    "flow_grpo": dict(
        generation=dict(num_frames=33, height=240, width=416, num_inference_steps=20, guidance_scale=4.5),
        shift=None,
        lora_rank=32,
        lora_alpha=64.0,
        lora_targets="attention",
    ),
    # arXiv 2510.22200 app. A.1 (16 steps, time shift 12, CFG 4, LoRA 128 / 64 on all linears); size: flow_grpo's
    "longcat": dict(
        generation=dict(num_frames=33, height=240, width=416, num_inference_steps=16, guidance_scale=4.0),
        shift=12.0,
        lora_rank=128,
        lora_alpha=64.0,
        lora_targets="all",
    ),
}


@dataclass
class WanGRPOConfig:
    """The GRPO family. `algorithm` fills every field left at None with its preset (PRESETS); each field means the
    same for both algorithms, so a LongCat run may e.g. use Flow-GRPO's noise schedule."""

    algorithm: Literal["flow_grpo", "longcat"] = _help(
        "preset for the fields left unset: flow_grpo (Flow-GRPO, flow_grpo's Wan trainer) or longcat (LongCat-GRPO)",
        default="flow_grpo",
    )
    group_size: int = _help("videos sampled per prompt (both papers: 4)", default=4)
    shared_noise: bool | None = _help(
        "the videos of a prompt start from the same initial noise (flow_grpo: False; longcat: True)", default=None
    )
    noise_schedule: Literal["linear", "sqrt"] | None = _help(
        "s_t of the SDE step: 'linear' = a (s_min + (s_max - s_min) t) with s_max = sigmas[1], s_min = sigmas[-1] "
        "(flow_grpo's Wan trainer); 'sqrt' = a sqrt(t / (1 - t)) (Flow-GRPO paper, SD3; LongCat). flow_grpo: linear; "
        "longcat: sqrt",
        default=None,
    )
    noise_level: float | None = _help(
        "a, the factor of the noise schedule (flow_grpo Wan: 1 with 'linear'; flow_grpo SD3 uses 0.7 with 'sqrt'; "
        "longcat: 1)",
        default=None,
    )
    sde_window: list[int] | None = _help(
        "START END: SDE steps (trained) are START..END-1. Unset: flow_grpo samples every step with the SDE and trains "
        "the first T-1 (its timestep_fraction 0.99); with --critical-steps one step per prompt instead",
        default=None,
    )
    critical_steps: int | None = _help(
        "T': one SDE step per prompt, drawn uniformly among the first T' steps, Euler elsewhere (longcat: 6, clamped "
        "to the step count with a warning); 0 = off (flow_grpo)",
        default=None,
    )
    diffusion_cap: float | None = _help(
        "tau: the diffusion term s_t sqrt(|dt|) is capped at tau (longcat: 0.45); 0 = off (flow_grpo)", default=None
    )
    advantage: Literal["group", "max_group_std"] | None = _help(
        "group: rewards summed with their weights, then (r - group mean) / (group std + 1e-4) (flow_grpo); "
        "max_group_std: each reward's (r - group mean) / (largest group std on all processes), then the weighted sum "
        "of these advantages (longcat)",
        default=None,
    )
    adv_clip: float | None = _help("advantages clamped to +-adv_clip (flow_grpo: 5); 0 = off (longcat)", default=None)
    loss_weighting: Literal["uniform", "lambda", "noise_over_sqrt_dt"] | None = _help(
        "uniform: policy + beta KL (the Flow-GRPO paper, flow_grpo's SD3 trainer; flow_grpo preset); lambda: "
        "lambda_policy policy + beta lambda_KL KL with lambda_KL = t / (|dt| (1 - t)), lambda_policy = "
        "sqrt(lambda_KL) (longcat); noise_over_sqrt_dt: the policy term times s_t / sqrt(|dt|), as flow_grpo's Wan "
        "trainer does",
        default=None,
    )
    clip_range: float = _help(
        "PPO clip of the probability ratio (flow_grpo Wan: 1e-3; longcat gives none)", default=1e-3
    )
    kl_beta: float | None = _help(
        "weight of the KL to the reference (flow_grpo Wan: 0.004; longcat: 3e-4)", default=None
    )
    updates_per_rollout: int | None = _help(
        "optimiser steps per rollout batch; the videos are split into that many parts, every update after the first "
        "is off-policy (flow_grpo Wan: 2; longcat: 1)",
        default=None,
    )
    max_grad_norm: float = _help("gradient clipping (flow_grpo: 1.0)", default=1.0)
    ema: bool | None = _help(
        "evaluate and publish an EMA of the LoRA weights (flow_grpo's Wan trainer: decay 0.9, updated every 8 "
        "optimiser steps; not in the paper); flow_grpo: True; longcat: False",
        default=None,
    )
    ema_decay: float = _help(
        "the EMA's largest decay d: ema += (1 - min((1 + n) / (10 + n), d)) (w - ema) after "
        "optimiser step n (flow_grpo: 0.9)",
        default=0.9,
    )
    ema_interval: int = _help("the EMA is updated when (n + 1) %% interval == 0 (flow_grpo Wan: 8)", default=8)
    untrained_steps: int | None = _help(
        "the first N steps sample and score rollouts but do not train (flow_grpo's Wan trainer skips its first 2 "
        "epochs; not in the paper); flow_grpo: 2; longcat: 0",
        default=None,
    )
    mask_zero_advantages: bool | None = _help(
        "videos whose advantage is exactly 0 (a group without spread) leave the loss, KL included, and the mean is "
        "over the others (flow_grpo's Wan trainer; not in the paper); flow_grpo: True; longcat: False",
        default=None,
    )

    def __post_init__(self):
        if self.algorithm not in PRESETS:
            raise ValueError(f"--algorithm {self.algorithm!r}: choose one of {', '.join(PRESETS)}")
        for name, value in PRESETS[self.algorithm].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.critical_steps = self.critical_steps or None  # 0 = off
        self.diffusion_cap = self.diffusion_cap or None
        self.adv_clip = self.adv_clip or None
        if self.sde_window is not None:
            self.sde_window = [int(v) for v in self.sde_window]
            if len(self.sde_window) != 2:
                raise ValueError(f"--sde-window {self.sde_window}: give START END")
            if self.critical_steps is not None:
                raise ValueError(
                    "--sde-window and --critical-steps both choose the SDE steps: give one (with "
                    "--algorithm longcat, --critical-steps 0 turns the critical step off)"
                )
        if self.group_size < 2:
            raise ValueError(f"--group-size {self.group_size}: advantages compare the videos of a prompt, need >= 2")
