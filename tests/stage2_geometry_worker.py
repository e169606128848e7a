"""Run by tests/test_stage2.py under `torch.distributed.run` (1 or 2 CPU processes, gloo): a stage-2 run whose
geometry is given in global terms (--rollout-batch-size pairs, --actor-batch-size videos). Each rank writes, per
micro-step, the pairs it updated on, and per rollout batch the sequences it sampled, to OUT/rank.R.json.

    python -m torch.distributed.run --nproc_per_node N tests/stage2_geometry_worker.py MODEL PAIRS OUT
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from descore_plugin.training.trainer import TrainConfig, Trainer

model, pairs, out = sys.argv[1:4]
config = TrainConfig(
    stage=2,
    model=model,
    train_data=pairs,
    output_dir=str(Path(out) / "run"),
    max_steps=2,
    batch_size=1,
    rollout_batch_size=4,
    actor_batch_size=4,
    num_rollouts=2,
    max_new_tokens=4,
    kl_coef=0.0,
    learning_rate=1e-3,
    save_steps=0,
    log_with=None,
    num_workers=0,
    allow_unparsed_cots=True,
)
trainer = Trainer(config)
updates, rollouts = [], []
stage2_loss, rollout_batch = trainer.stage2_loss, trainer._rollout_batch


def record_update(micro_step, batch):
    updates.append(
        {
            "micro_step": micro_step,
            "step": trainer.step,
            "videos": [p.video_a for p in batch["pairs"]],
            "sequences": len(batch["rows"]),
        }
    )
    return stage2_loss(micro_step, batch)


def record_rollouts(index, inputs=None):
    result = rollout_batch(index, inputs)
    rollouts.append(
        {
            "index": index,
            "sequences": sum(len(m["cot_ids"]) for m in result["micro"]),
            "micro_batches": len(result["micro"]),
        }
    )
    return result


trainer.stage2_loss, trainer._rollout_batch = record_update, record_rollouts
trainer.train()
rank = trainer.accelerator.process_index
(Path(out) / f"rank.{rank}.json").write_text(
    json.dumps(
        {
            "num_processes": trainer.accelerator.num_processes,
            "accumulation": trainer.accumulation,
            "steps_per_rollout": trainer.steps_per_rollout,
            "updates": updates,
            "rollouts": rollouts,
        }
    )
)
if dist.is_initialized():
    dist.barrier()
