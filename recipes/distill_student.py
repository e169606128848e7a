"""Distil a reasoning DeScore teacher into a student that scores WITHOUT a chain of thought (Z-Reward's RISD idea,
arXiv 2606.09076, transferred to video).

    python recipes/distill_student.py --teacher TEACHER --student STUDENT --train-data pairs.jsonl \
        --output-dir student/ --max-steps N [--num-cot-samples 4] [--learning-rate ...] [--batch-size ...]

The teacher scores every training video with `--num-cot-samples` sampled CoTs; its CoT-conditioned score
distributions (distribution head; the expected reward for a scalar head) are averaged and stored in
--output-dir/teacher_targets.safetensors. The student (same backbone or a smaller one, e.g. `descore init-tiny
--head distribution`) learns to match them with think=False: KL(teacher || student). The student lands in
--output-dir and loads with DeScoreReward.from_pretrained; score with `think=False`. Flags are those of
recipes/train_rm.py (TrainConfig) with --student as the name of --model.
"""

import sys

from descore_plugin.trainer import parse_train_args, run_training


def main(argv=None) -> int:
    config, args = parse_train_args(argv, description=__doc__, defaults={"stage": 3, "cot_mask_prob": 1.0},
                                    aliases={"--student": "model"})
    return run_training(config, args.resume, "distill_student.py")


if __name__ == "__main__":
    sys.exit(main())
