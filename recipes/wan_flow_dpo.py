r"""Flow-DPO post-training of Wan-2.1 with video rewards (DeScore, analytic rewards for tests and the demo).

    python recipes/wan_flow_dpo.py --pipeline DIR_OR_ID --reward-model DIR_OR_ID_OR_URL --prompts prompts.txt \
        --output-dir out/ --max-steps N
    python recipes/wan_flow_dpo.py --pipeline tiny-wan/ --reward analytic:redness --prompts p.txt --output-dir out/ \
        --max-steps 10                       # no reward model needed for analytic rewards
    accelerate launch recipes/wan_flow_dpo.py ...          # many processes: prompts split across them, DDP sync

The same as `python recipes/post_train.py flow_dpo ...` (the method: integrations/flow_dpo.py `FlowDPO`; the loss
and the meaning of --beta: docs/post_train.md).
1. Pairs: --videos-per-prompt videos per prompt from the base model (adapter disabled), scored by the --reward set
   (weighted sum; a video without a score is never in a pair), best vs worst (or every pair over --pair-margin);
   latents, every named score and the CoTs under OUTPUT/cache/pairs-<key>/round_0000, resumable, keyed by what
   produced them. With --online-every N the current policy regenerates the pairs every N steps (round r = step // N).
2. Training: LoRA (rank 64 / alpha 128 on q/k/v/o, as in the paper), the Flow-DPO loss with constant beta, shared
   noise and t for winner and loser (t from the pipeline's shifted schedule by default), reference = the same
   transformer with its adapter disabled.
3. At the start, every --eval-every steps, at every checkpoint and at the end: videos of the fixed evaluation
   prompts, scored by the --reward set and the --check rewards.
Outputs (integrations/post_training.py has the full layout): pytorch_lora_weights.safetensors (diffusers format),
metrics.jsonl (train/loss, train/implicit_accuracy, ...; reward/<name> of each round's videos; eval/<name>),
samples/step-N/ (mp4 + scores.jsonl per evaluation), checkpoint-N/, curves.png.
Generation flags default to a tiny pipeline's generation_defaults.json, else to Wan-2.1's model card.
Every flag with its meaning and default: --help.
"""

import functools
import sys

from descore_plugin.integrations.post_training import recipe_defaults, recipe_main

METHOD = "flow_dpo"
RECIPE_DEFAULTS = recipe_defaults(METHOD)
main = functools.partial(recipe_main, METHOD, "wan_flow_dpo.py", __doc__)

if __name__ == "__main__":
    sys.exit(main())
