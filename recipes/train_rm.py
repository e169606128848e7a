"""Train a DeScore reward model: stage 1 (cold start) or stage 2 (dual-objective RL).

    python recipes/train_rm.py --stage 1 --model DIR_OR_ID --train-data pairs.jsonl --output-dir out/ --max-steps N
    accelerate launch recipes/train_rm.py ...            # many GPUs: DDP / DeepSpeed / FSDP from accelerate config

Every flag is a field of `descore_plugin.trainer.TrainConfig` (its docstrings give the official defaults).
The final model is written to --output-dir itself (DeScoreReward.from_pretrained(DIR) loads it); checkpoints go to
--output-dir/checkpoint-N; --resume continues exactly from the newest one.
"""

import argparse
import dataclasses
import sys

from descore_plugin.trainer import TrainConfig, Trainer


def parse_args(argv=None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        if field.type in ("bool", bool) or isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif field.name in ("reward_weights", "length_thresholds"):
            parser.add_argument(flag, type=float, nargs="+", default=default)
        elif field.name == "train_vision":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float}.get(str(field.type).split(" ")[0].replace("|", "").strip(), None)
            if isinstance(default, int) and not isinstance(default, bool):
                kind = int
            elif isinstance(default, float) or "float" in str(field.type):
                kind = float
            elif "int" in str(field.type):
                kind = int
            parser.add_argument(flag, type=kind or str, default=default)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["reward_weights"] = tuple(values["reward_weights"])
    values["length_thresholds"] = tuple(int(v) for v in values["length_thresholds"])
    return TrainConfig(**values), args


def main(argv=None) -> int:
    config, args = parse_args(argv)
    try:
        trainer = Trainer(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"train_rm.py: error: {error}", file=sys.stderr)
        return 2
    if args.resume and trainer.resume():
        print(f"resumed from step {trainer.step}")
    try:
        result = trainer.train()
    except FloatingPointError as error:
        print(f"train_rm.py: {error}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float))
    print(f"done: {summary}\nmodel: {config.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
