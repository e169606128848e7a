"""Training a DeScore reward model: `Trainer(config)` builds the trainer of `config.stage` (what
`recipes/train_rm.py --stage N` runs), `run_training` is the recipes' entry point.

    stage 1  stage1.ColdStartTrainer       discriminative cold start (DeScore Sec. 3.2)
    stage 2  stage2.DualObjectiveTrainer   dual-objective RL (Sec. 3.3)
    stage 3  distill.DistillationTrainer   a no-CoT student of a CoT teacher (Z-Reward's RISD, our reading)

Each is a `base.RewardModelTrainer`, a method of the one run loop (`loop.RunLoop`, shared with post-training);
every flag is a field of `config.TrainConfig`.
"""

import logging

from descore_plugin.training.base import RewardModelTrainer, merge_adapter
from descore_plugin.training.config import (
    RM_CHANGEABLE_ON_RESUME,
    STAGE_DEFAULTS,
    RewardModelRunArguments,
    TrainConfig,
    argument_parser,
    parse_train_args,
)
from descore_plugin.training.distill import DistillationTrainer
from descore_plugin.training.stage1 import ColdStartTrainer
from descore_plugin.training.stage2 import DualObjectiveTrainer, stage2_geometry
from descore_plugin.utils.errors import UserError, report

__all__ = [
    "Trainer",
    "TRAINERS",
    "run_training",
    "TrainConfig",
    "RewardModelRunArguments",
    "argument_parser",
    "parse_train_args",
    "RewardModelTrainer",
    "ColdStartTrainer",
    "DualObjectiveTrainer",
    "DistillationTrainer",
    "merge_adapter",
    "stage2_geometry",
    "RM_CHANGEABLE_ON_RESUME",
    "STAGE_DEFAULTS",
]

logger = logging.getLogger(__name__)

TRAINERS = {1: ColdStartTrainer, 2: DualObjectiveTrainer, 3: DistillationTrainer}
"""The trainer of each --stage."""


def Trainer(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> RewardModelTrainer:  # noqa: N802
    """The trainer of `config.stage` (see TRAINERS), constructed: the run directory is open, data and model are
    loaded, and with `resume` it continues from the newest checkpoint (`.step` is then its step)."""
    if config.stage not in TRAINERS:
        raise UserError(f"--stage {config.stage}: expected 1 (cold start), 2 (RL) or 3 (distillation)")
    return TRAINERS[config.stage](config, resume=resume, overwrite=overwrite)


def run_training(config: TrainConfig, run_args: RewardModelRunArguments, name: str) -> int:
    """What the recipes run: errors in the input are short messages (exit 2), a diverged run exits 1."""
    try:
        trainer = Trainer(config, resume=run_args.resume, overwrite=run_args.overwrite)
    except (ValueError, FileNotFoundError) as error:  # UserErrors, and the loaders' errors about a flag's file
        return report(error, name)
    if trainer.resumed:
        logger.info("resumed from step %d", trainer.step)
    try:
        result = trainer.train()
    except FloatingPointError as error:
        logger.error("%s: %s", name, error)
        return 1
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))  # train/lr 2e-6 shows
    logger.info("done: %s\nmodel: %s", summary, config.output_dir)
    return 0
