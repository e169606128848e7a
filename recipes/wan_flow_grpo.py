r"""GRPO post-training of Wan-2.1 with video rewards: Flow-GRPO or LongCat-GRPO (DeScore, analytic rewards, yours).

    python recipes/wan_flow_grpo.py --algorithm flow_grpo --pipeline DIR_OR_ID --reward-model DIR_OR_ID_OR_URL \
        --prompts prompts.txt --output-dir out/ --max-steps N
    python recipes/wan_flow_grpo.py --algorithm longcat ... --reward descore:subject=1 descore:dynamics=1
    accelerate launch recipes/wan_flow_grpo.py ...         # many processes: prompts split across them, DDP sync

One step (integrations/grpo.py `GRPOTrainer.step`; formulas and sources in docs/post_training.md "GRPO"):
1. Rollouts: each process takes --prompts-per-step of ITS prompts and samples --group-size videos per prompt.
   flow_grpo: independent initial noise, the SDE on every step with flow_grpo's Wan noise schedule (std growing
   linearly with t), the first T-1 steps trained. longcat: shared initial noise per prompt, ONE critical SDE step
   among the first --critical-steps (clamped to the step count), diffusion term capped at --diffusion-cap.
2. Rewards on the decoded videos: the --reward set (DeScore names and/or analytic:<name>, with weights).
   flow_grpo sums them, then normalises per prompt group; longcat normalises each by the largest group std over
   all processes and sums the advantages. A video without a score carries no signal.
3. --updates-per-rollout optimiser steps: clipped policy loss + beta * KL to the reference (the same transformer with
   its LoRA disabled); longcat re-weights both by its lambdas. DDP all-reduces the gradients.
At the start, every --eval-every steps and at every checkpoint: ODE videos of the fixed evaluation prompts, scored.
Outputs (integrations/post_training.py has the full layout): pytorch_lora_weights.safetensors (diffusers format),
metrics.jsonl (train rows: reward/<name>, train/kl, ...; eval rows: eval/<name>), samples/step-N/ (mp4 +
scores.jsonl), checkpoint-N/, curves.png.
Generation flags default to a tiny pipeline's generation_defaults.json, else to the algorithm's published preset
(flow_grpo: 33x240x416, 20 steps, CFG 4.5; longcat: 16 steps, time shift 12, CFG 4); LoRA: flow_grpo rank 32 /
alpha 64 on attention, longcat 128 / 64 on all linears. Every flag with its meaning and default: --help.
"""

import functools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from descore_plugin.integrations import grpo, wan
from descore_plugin.integrations.post_training import (EvalArguments, RunArguments, TrainArguments, WanPostTraining,
                                                       parse_arguments, pipeline_generation_defaults, recorded_arguments,
                                                       run_main, seed_of)
from descore_plugin.testing.tiny_wan import GENERATION_DEFAULTS_FILE


@dataclass
class GRPOLoopArguments:
    """The GRPO loop."""

    prompts_per_step: int = field(default=2, metadata={"help": "prompts per process per step (our default)"})
    micro_batch_size: int | None = field(default=None, metadata={
        "help": "videos per transformer batch in sampling and training; unset: one update's videos"})
    shift: float | None = field(default=None, metadata={
        "help": "scheduler time (flow) shift; unset: the pipeline's (a real pipeline with longcat: its preset 12)"})


RECIPE_DEFAULTS = dict(learning_rate=1e-4, weight_decay=1e-4, checkpoint_every=50, solver="euler")
HELP_NOTES = {}  # how --algorithm longcat and a tiny pipeline change the defaults --help shows (flow_grpo's preset)
"""flow_grpo's Wan preset and LongCat: learning rate 1e-4; AdamW weight decay 1e-4 (flow_grpo's base config)."""

PRESETS = {
    # flow_grpo config/grpo.py general_ocr_wan2_1 (flow shift: the pipeline's)
    "flow_grpo": dict(generation=dict(num_frames=33, height=240, width=416, num_inference_steps=20, guidance_scale=4.5),
                      shift=None, lora_rank=32, lora_alpha=64.0, lora_targets="attention"),
    # arXiv 2510.22200 app. A.1 (16 steps, time shift 12, CFG 4, LoRA 128 / 64 on all linears); size: flow_grpo's
    "longcat": dict(generation=dict(num_frames=33, height=240, width=416, num_inference_steps=16, guidance_scale=4.0),
                    shift=12.0, lora_rank=128, lora_alpha=64.0, lora_targets="all"),
}


def _preset_defaults(name: str) -> dict:
    preset = PRESETS[name]
    return {**preset["generation"], **{key: preset[key] for key in ("lora_rank", "lora_alpha", "lora_targets")}}


RECIPE_DEFAULTS.update(_preset_defaults("flow_grpo"))
HELP_NOTES.update({key: f"--algorithm longcat: {value}" for key, value in _preset_defaults("longcat").items()
                   if value != RECIPE_DEFAULTS[key]})
for _key in PRESETS["flow_grpo"]["generation"]:
    HELP_NOTES[_key] = "; ".join(filter(None, [HELP_NOTES.get(_key), "a tiny pipeline: its generation_defaults.json"]))


def later_defaults(known) -> dict:
    """Defaults that depend on --algorithm and --pipeline: LoRA, and generation (a tiny pipeline's own, or the preset)."""
    preset = PRESETS[known.algorithm]
    generation = pipeline_generation_defaults(known.pipeline, preset["generation"])
    tiny = (Path(known.pipeline) / GENERATION_DEFAULTS_FILE).is_file()
    return {**generation, "lora_rank": preset["lora_rank"], "lora_alpha": preset["lora_alpha"],
            "lora_targets": preset["lora_targets"], "shift": None if tiny else preset["shift"]}


def step_prompts(prompts: list[str], count: int, seed: int, rank: int, step: int) -> list[str]:
    """The prompts of one step on one process: epochs of per-(seed, rank, epoch) permutations of its prompts, a
    function of the step only, so a resumed run sees the same prompts."""
    chosen = []
    for slot in range(step * count, (step + 1) * count):
        epoch, offset = divmod(slot, len(prompts))
        chosen.append(prompts[int(np.random.default_rng([seed, 13, rank, epoch]).permutation(len(prompts))[offset])])
    return chosen


def train(argv=None) -> int:
    run_args, train_args, eval_args, generation, config, loop = parse_arguments(
        (RunArguments, TrainArguments, EvalArguments, wan.GenerationConfig, grpo.GRPOConfig, GRPOLoopArguments),
        argv, __doc__, RECIPE_DEFAULTS, later_defaults, HELP_NOTES)
    s = WanPostTraining(run_args, train_args, eval_args, generation,
                        recorded_arguments(run_args, train_args, eval_args, generation, config, loop),
                        scheduler_shift=loop.shift)
    trainer = grpo.GRPOTrainer(config, s.accelerator, s.pipe, s.model, s.transformer, s.optimizer, s.prompt_cache,
                               generation, s.rewards, loop.micro_batch_size)
    micro_batch_size = trainer.check_batching(loop.prompts_per_step * config.group_size)
    rank, my_prompts = s.accelerator.process_index, [p for _, p in s.my_prompts]

    if s.start_step == 0:
        s.evaluate(0, micro_batch_size)
    for step in s.steps(config.algorithm):
        started = time.perf_counter()
        metrics = trainer.step(step_prompts(my_prompts, loop.prompts_per_step, run_args.seed, rank, step),
                               torch.Generator().manual_seed(seed_of(run_args.seed, 7, rank, step)))
        # train/* and time/* are this process's: average them over the processes
        local = sorted(key for key in metrics if key.startswith(("train/", "time/")) or key == "advantage_abs_mean")
        averaged = s.accelerator.reduce(torch.tensor([metrics[key] for key in local], device=s.device), "mean")
        metrics.update(dict(zip(local, averaged.tolist())))
        s.log({"kind": "train", "step": step + 1, **metrics, "step_seconds": time.perf_counter() - started})
        s.after_step(step + 1, micro_batch_size, {name: metrics[f"reward/{name}"] for name in s.rewards.names[:2]})
    s.finish(["train/kl", "train/clipped"])
    return 0


main = functools.partial(run_main, "wan_flow_grpo.py", train)


if __name__ == "__main__":
    sys.exit(main())
