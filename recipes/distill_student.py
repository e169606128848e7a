r"""Distil a reasoning DeScore teacher into a student that scores WITHOUT a chain of thought (Z-Reward's RISD idea,
arXiv 2606.09076, transferred to video).

    python recipes/distill_student.py --teacher TEACHER --student STUDENT --train-data pairs.jsonl \
        --output-dir student/ --max-steps N [--num-cot-samples 4] [--learning-rate ...] [--batch-size ...]

The teacher scores every training video with `--num-cot-samples` sampled CoTs; its CoT-conditioned score
distributions (distribution head; the expected reward for a scalar head) are averaged and stored in
--output-dir/teacher_targets.safetensors. The student (same backbone or a smaller one, e.g. `descore init-tiny
--head distribution`) learns to match them with think=False: KL(teacher || student). The student lands in
--output-dir and loads with DeScoreReward.from_pretrained; score with `think=False`. Flags are those of
recipes/train_rm.py (TrainConfig), with --student as another name of --model and stage 3 as the default.
"""

import sys
from dataclasses import dataclass

from descore_plugin.training.trainer import TrainConfig, parse_train_args, run_training
from descore_plugin.utils.args import help_field
from descore_plugin.utils.errors import run_main


@dataclass
class DistillConfig(TrainConfig):
    """TrainConfig with the distillation defaults."""

    model: str = help_field(
        "The student checkpoint to start from (also --student).", required=True, aliases=["--student"]
    )
    stage: int = help_field("3: distillation (the reason for this recipe).", 3, choices=[3])
    cot_mask_prob: float = help_field(
        "Unused in distillation (the student never sees a CoT); kept at 1 so that stage-1 tools agree.", 1.0
    )


def main(argv=None) -> int:
    config, run_args = parse_train_args(
        argv, config_class=DistillConfig, description=__doc__, prog="distill_student.py"
    )
    return run_training(config, run_args, "distill_student.py")


if __name__ == "__main__":
    sys.exit(run_main(main, "distill_student.py"))
