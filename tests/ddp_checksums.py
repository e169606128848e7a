"""Test helper: run a Wan recipe and append, after every optimiser step, a SHA-256 of this process's trained weights
to OUT_DIR/rank{R}.jsonl, so a test can check that DDP keeps the processes identical.

    accelerate launch ... tests/ddp_checksums.py OUT_DIR recipes/wan_flow_grpo.py RECIPE_ARGS...
"""

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

import torch

out_dir, recipe, *recipe_args = sys.argv[1:]
adamw_step = torch.optim.AdamW.step


def step_and_record(self, *args, **kwargs):
    result = adamw_step(self, *args, **kwargs)
    digest = hashlib.sha256()
    for group in self.param_groups:
        for parameter in group["params"]:
            digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    path = Path(out_dir) / f"rank{os.environ.get('RANK', '0')}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps({"sha256": digest.hexdigest()}) + "\n")
    return result


torch.optim.AdamW.step = step_and_record
sys.argv = [recipe, *recipe_args]
runpy.run_path(recipe, run_name="__main__")
