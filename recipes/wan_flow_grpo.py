r"""GRPO post-training of Wan-2.1 with video rewards: Flow-GRPO or LongCat-GRPO (DeScore, analytic rewards, yours).

    python recipes/wan_flow_grpo.py --algorithm flow_grpo --pipeline DIR_OR_ID --reward-model DIR_OR_ID_OR_URL \
        --prompts prompts.txt --output-dir out/ --max-steps N
    python recipes/wan_flow_grpo.py --algorithm longcat ... --reward descore:subject=1 descore:dynamics=1
    accelerate launch recipes/wan_flow_grpo.py ...         # many processes: prompts split across them, DDP sync

The same as `python recipes/post_train.py flow_grpo|longcat ...` (the method: integrations/grpo.py `WanGRPO`;
formulas and sources: docs/post_train.md). One step:
1. Rollouts: each process takes --prompts-per-step of ITS prompts and samples --group-size videos per prompt.
   flow_grpo: independent initial noise, the SDE on every step with flow_grpo's Wan noise schedule (std growing
   linearly with t), the first T-1 steps trained. longcat: shared initial noise per prompt, ONE critical SDE step
   among the first --critical-steps (clamped to the step count), diffusion term capped at --diffusion-cap.
2. Rewards on the decoded videos: the --reward set (DeScore names and/or analytic:<name>, with weights).
   flow_grpo sums them, then normalises per prompt group; longcat normalises each by the largest group std over
   all processes and sums the advantages. A video without a score carries no signal.
3. --updates-per-rollout optimiser steps: clipped policy loss + beta * KL to the reference (the same transformer with
   its LoRA disabled); longcat re-weights both by its lambdas. DDP all-reduces the gradients. flow_grpo's Wan
   trainer's habits are on in its preset: an EMA of the LoRA is evaluated and published (--ema), the first
   --untrained-steps steps only sample, zero-advantage videos leave the loss (--mask-zero-advantages).
At the start, every --eval-every steps, at every checkpoint and at the end: ODE videos of the fixed evaluation
prompts, scored by the --reward set and the --check rewards.
Outputs (integrations/post_training.py has the full layout): pytorch_lora_weights.safetensors (diffusers format),
metrics.jsonl (reward/<name>, train/kl, ...; eval/<name>), samples/step-N/ (mp4 + scores.jsonl), checkpoint-N/,
curves.png.
Generation flags default to a tiny pipeline's generation_defaults.json, else to the algorithm's published preset
(flow_grpo: 33x240x416, 20 steps, CFG 4.5; longcat: 16 steps, time shift 12, CFG 4); LoRA: flow_grpo rank 32 /
alpha 64 on attention, longcat 128 / 64 on all linears. Every flag with its meaning and default: --help.
"""

import functools
import sys

from descore_plugin.integrations.grpo import WanGRPO
from descore_plugin.integrations.post_training import recipe_defaults, recipe_main

METHOD = "flow_grpo"  # --algorithm longcat switches the preset
RECIPE_DEFAULTS = recipe_defaults(METHOD)
later_defaults = WanGRPO.later_defaults
main = functools.partial(recipe_main, METHOD, "wan_flow_grpo.py", __doc__)

if __name__ == "__main__":
    sys.exit(main())
