r"""DiffusionNFT post-training of Wan-2.1 with video rewards (DeScore, analytic rewards for tests and the demo).

    python recipes/wan_nft.py --pipeline DIR_OR_ID --reward-model DIR_OR_ID_OR_URL --prompts prompts.txt \
        --output-dir out/ --max-steps N
    accelerate launch recipes/wan_nft.py ...               # many processes: prompts split across them, DDP sync

The same as `python recipes/post_train.py nft ...` (the method: integrations/nft.py `DiffusionNFT`; arXiv
2509.16117, with the settings of its Wan trainer). One step: --group-size videos per prompt from the OLD adapter
with a deterministic solver (dpm2), rewards -> group advantages (over the std of all the step's rewards) -> an
optimality weight r in [0, 1]; the loss pulls the implicit positive policy v+ = beta v + (1 - beta) v_old towards
the clean samples with weight r and the implicit negative one v- = (1 + beta) v_old - beta v with weight 1 - r
(each error over its own detached mean: adaptive weights), plus kl_beta mean (v - v_ref)^2 to the adapters-off
reference; one optimiser step, then old <- d old + (1 - d) new. An EMA of the LoRA is evaluated and published.
At the start, every --eval-every steps, at every checkpoint and at the end: videos of the fixed evaluation prompts,
scored by the --reward set and the --check rewards.
Outputs (integrations/post_training.py has the full layout): pytorch_lora_weights.safetensors (diffusers format),
metrics.jsonl (train/policy_loss, train/kl, train/old_decay, reward/<name>; eval/<name>), samples/step-N/,
checkpoint-N/ (lora, lora_old, lora_ema), curves.png.
Generation flags default to a tiny pipeline's generation_defaults.json, else to the official Wan NFT sampling
(6 steps, CFG 2.5) on Wan-2.1's model card size. Every flag with its meaning and default: --help.
"""

import functools
import sys

from descore_plugin.integrations.post_training import recipe_defaults, recipe_main

METHOD = "nft"
RECIPE_DEFAULTS = recipe_defaults(METHOD)
main = functools.partial(recipe_main, METHOD, "wan_nft.py", __doc__)

if __name__ == "__main__":
    sys.exit(main())
