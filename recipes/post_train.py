r"""Post-train Wan-2.1 with one of the registered methods: `python recipes/post_train.py METHOD [flags]`.

    python recipes/post_train.py nft --pipeline DIR_OR_ID --reward-model DIR_OR_ID_OR_URL --prompts prompts.txt \
        --output-dir out/ --max-steps N
    python recipes/post_train.py METHOD --help               # that method's flags, meanings and defaults
    accelerate launch recipes/post_train.py flow_dpo ...     # many processes: prompts split across them, DDP sync

METHOD: flow_dpo (Flow-DPO), flow_grpo (Flow-GRPO), longcat (LongCat-GRPO), nft (DiffusionNFT), or one you added
with `descore_plugin.integrations.post_training.register_method`. `recipes/wan_flow_dpo.py`, `wan_flow_grpo.py`
and `wan_nft.py` are this command with the method fixed.
"""

import sys

from descore_plugin.integrations.post_training import main

if __name__ == "__main__":
    sys.exit(main())
