"""Train a DeScore reward model: stage 1 (cold start) or stage 2 (dual-objective RL).

    python recipes/train_rm.py --stage 1 --model DIR_OR_ID --train-data pairs.jsonl --output-dir out/ --max-steps N
    accelerate launch recipes/train_rm.py ...            # many GPUs: DDP / DeepSpeed / FSDP from accelerate config

Every flag is a field of `descore_plugin.training.config.TrainConfig` (--help lists each with its meaning and default);
--stage picks the trainer (descore_plugin.training.trainer.TRAINERS: stage1, stage2, distill).
The final model is written to --output-dir itself (DeScoreReward.from_pretrained(DIR) loads it); checkpoints go to
--output-dir/checkpoint-N; --resume continues exactly from the newest one, --overwrite starts the run again.
The run loop is the one post-training uses (descore_plugin.training.loop): metrics.jsonl (train/..., reward/...,
eval/..., time/...: docs/training.md, "Logged metrics") and curves.png; `descore report OUT --output-dir PAGE` draws it.
"""

import sys

from descore_plugin.training.trainer import parse_train_args, run_training
from descore_plugin.utils.errors import run_main


def main(argv=None) -> int:
    config, run_args = parse_train_args(argv, description=__doc__, prog="train_rm.py")
    return run_training(config, run_args, "train_rm.py")


if __name__ == "__main__":
    sys.exit(run_main(main, "train_rm.py"))
