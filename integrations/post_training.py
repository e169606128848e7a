"""Post-training Wan-2.1 with rewards: a method is one file on top of this one.

A post-training method (Flow-DPO `flow_dpo.py`, Flow-GRPO / LongCat-GRPO `grpo.py`, DiffusionNFT `nft.py`) is a
subclass of `WanMethod` with its own config dataclass(es), its set-up (`prepare`), one step (`train_step -> metrics`)
and its curve names. Everything else is shared and lives here or in the run loop
(`descore_plugin.training.loop.RunLoop`: run directory, resume, cadence, metrics, curves, Ctrl-C):
the pipeline, the rewards (and `--check` rewards scored only at evaluation), the prompt embeddings, the LoRA and its
optimiser, the evaluation on fixed prompts and noise, the checkpoint state and the final LoRA.
This module is the registry and the entry points (parse a method's flags, run it); the shared configs and inputs are
in `post_training_config.py`, `WanMethod` and `LoraEMA` in `post_training_method.py`; every name is exported here.

Entry points:
    python recipes/post_train.py METHOD --pipeline ... --prompts ... --output-dir ... --max-steps N
    python recipes/wan_flow_dpo.py ...            # = post_train.py flow_dpo (and wan_flow_grpo.py, wan_nft.py)
    from descore_plugin.integrations.post_training import config_from_argv, post_train
    result = post_train(config_from_argv("nft", ["--pipeline", ..., "--reward-model", "runs/rm", ...]))
    result.output_dir, result.metrics      # the run directory and the final evaluation's eval/... numbers

METHODS names the registered methods; `register_method(name, cls, **defaults)` adds one.

A run directory (`descore_plugin.training.runs` lays it out), plus:

    pytorch_lora_weights.safetensors   the final LoRA in the diffusers format (`pipe.load_lora_weights(DIR)`)
    metrics.jsonl                      train rows (train/..., reward/<name>, time/...) and eval rows:
                                       eval/<name> (mean over the fixed prompts' videos), eval/<name>_std,
                                       eval/num_items
    samples/step-NNNNNN/               at every evaluation (the start, every --eval-every steps, every checkpoint, the
        VVV.mp4                        end): the fixed-prompt videos (the same prompt and initial noise every time)
        scores.jsonl                   one line per video: {"index", "prompt", "video": "VVV.mp4",
                                       "scores": {reward name: value or null}, "cot": DeScore's CoT when it wrote one}
    checkpoint-N/                      lora.safetensors (+ a method's other adapters), state.pt (optimizer, ...)
    curves.png                         the evaluated rewards (± 1 standard error) and the method's training curves
    cache/                             generated data keyed by what produced it (Flow-DPO's pairs)
"""

from __future__ import annotations

import importlib
import json
import sys

from descore_plugin.integrations.post_training_config import (
    SHARED_CONFIGS,
    AdapterConfig,
    EvalConfig,
    PostTrainingConfig,
    RecipeError,
    WanRunConfig,
    build_rewards,
    check_reward_flags,
    is_tiny_pipeline,
    pipeline_generation_defaults,
    read_prompts,
)
from descore_plugin.integrations.post_training_method import LORA_STATE, LoraEMA, WanMethod
from descore_plugin.training.loop import LoopConfig, RunLoop, RunResult
from descore_plugin.training.runs import RunError
from descore_plugin.utils import errors
from descore_plugin.utils.args import ConfigParser
from descore_plugin.utils.seeding import STREAMS, epoch_order, seed_of

# ---------------------------------------------------------------------------------------------------- the registry
METHODS: dict[str, tuple[str, str, dict]] = {
    "flow_dpo": ("descore_plugin.integrations.flow_dpo", "FlowDPO", {}),
    "flow_grpo": ("descore_plugin.integrations.grpo", "WanGRPO", {"algorithm": "flow_grpo"}),
    "longcat": ("descore_plugin.integrations.grpo", "WanGRPO", {"algorithm": "longcat"}),
    "nft": ("descore_plugin.integrations.nft", "DiffusionNFT", {}),
}
"""name -> (module, class, defaults of its flags): the methods `post_train.py METHOD` knows."""


def register_method(name: str, cls: type, **defaults) -> None:
    """Make a WanMethod subclass (e.g. your own one-file method) available as `post_train.py NAME`."""
    METHODS[name] = (cls.__module__, cls.__qualname__, defaults)
    _CLASSES[name] = cls


_CLASSES: dict[str, type] = {}


def method_class(name: str) -> tuple[type, dict]:
    if name not in METHODS:
        raise RecipeError(f"method {name!r}: choose one of {', '.join(METHODS)}")
    module, attribute, defaults = METHODS[name]
    cls = _CLASSES.get(name) or getattr(importlib.import_module(module), attribute)
    return cls, defaults


# ---------------------------------------------------------------------------------------------------- arguments
def parse_arguments(
    dataclass_types,
    argv,
    description: str,
    recipe_defaults: dict,
    later_defaults=None,
    help_notes: dict[str, str] | None = None,
    prog: str | None = None,
):
    """Parse dataclasses with the package's argument layer (`utils.args`: transformers' HfArgumentParser, every
    field's help and default in `--help`, a bad flag or a config's own check one line and exit 2).
    recipe_defaults: defaults of shared fields (the ones --help shows); later_defaults(namespace) -> defaults that
    depend on other flags, applied before the final parse; help_notes: {field: text} added to a field's help."""
    parser = ConfigParser(list(dataclass_types), prog=prog, description=description)
    parser.set_defaults(**recipe_defaults)
    for action in parser._actions:
        if action.dest in (help_notes or {}):
            action.help = f"{action.help}; {help_notes[action.dest]}"
    if later_defaults is not None:
        known, _ = parser.parse_known_args(argv)
        parser.set_defaults(**later_defaults(known))
    return parser.parse_args_into_dataclasses(argv)


def recipe_defaults(name: str) -> dict:
    """The defaults a method's recipe shows in --help (its own and those of its registry entry)."""
    cls, defaults = method_class(name)
    return {**cls.defaults, **defaults}


def config_from_argv(
    name: str, argv=None, description: str | None = None, prog: str | None = None
) -> PostTrainingConfig:
    """The PostTrainingConfig of `METHOD`'s flags (as `post_train.py METHOD` parses them)."""
    cls, _ = method_class(name)
    parsed = parse_arguments(
        SHARED_CONFIGS + tuple(cls.config_classes),
        argv,
        description or cls.__doc__,
        recipe_defaults(name),
        cls.later_defaults,
        cls.help_notes,
        prog=prog,
    )
    run, loop, adapter, evaluation, generation, *own = parsed
    return PostTrainingConfig(name, run, loop, adapter, evaluation, generation, tuple(own))


def post_train(config: PostTrainingConfig, accelerator=None) -> RunResult:
    """Run one post-training method in this process: returns the run directory, the step reached and the final
    evaluation's metrics (eval/<reward>, eval/<check>, eval/<name>_std, eval/num_items)."""
    cls, _ = method_class(config.method)
    method = cls(config)
    config.loop.check()
    method.check()  # every flag is checked before the run directory exists
    return RunLoop(method, config.loop, accelerator).run()


def recipe_main(name: str, prog: str, description: str | None = None, argv=None) -> int:
    """A recipe's main: parse METHOD's flags, run, print a summary; a user error is one line and exit 2."""

    def train(argv) -> int:
        # errors.run_main shows the package's log lines (utils.logging.setup_logging)
        result = post_train(config_from_argv(name, argv, description, prog))
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return 0
        rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
        evals = [row for row in rows if row.get("kind") == "eval"]
        for key in [k for k in evals[-1] if k.startswith("eval/") and not k.endswith("_std") and k != "eval/num_items"]:
            print(
                f"{key[5:]} of the fixed prompts: {evals[0].get(key)} (step {evals[0]['step']}) -> "
                f"{evals[-1].get(key)} (step {evals[-1]['step']})"
            )
        print(f"LoRA in {result.output_dir}")
        return 0

    return errors.run_main(train, prog, argv)


def main(argv=None) -> int:
    """`post_train.py METHOD [flags]`: METHOD is one of METHODS; `post_train.py METHOD --help` lists its flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        f"post_train.py METHOD [flags]: METHOD is one of {', '.join(METHODS)}; `post_train.py METHOD --help` "
        f"lists its own flags too. The flags every method shares:"
    )
    if argv[:1] in (["-h"], ["--help"]):
        parse_arguments(SHARED_CONFIGS, ["--help"], usage, {}, prog="post_train.py METHOD")  # exits 0
    if not argv or argv[0] not in METHODS:
        what = f"method {argv[0]!r}: " if argv else "no METHOD; "
        print(f"post_train.py: error: {what}choose one of {', '.join(METHODS)}", file=sys.stderr)
        return errors.USAGE_EXIT_STATUS
    return recipe_main(argv[0], f"post_train.py {argv[0]}", None, argv[1:])


__all__ = [
    "WanRunConfig",
    "AdapterConfig",
    "EvalConfig",
    "LoopConfig",
    "PostTrainingConfig",
    "SHARED_CONFIGS",
    "WanMethod",
    "LoraEMA",
    "LORA_STATE",
    "METHODS",
    "register_method",
    "method_class",
    "recipe_defaults",
    "config_from_argv",
    "post_train",
    "recipe_main",
    "main",
    "parse_arguments",
    "pipeline_generation_defaults",
    "is_tiny_pipeline",
    "read_prompts",
    "seed_of",
    "epoch_order",
    "STREAMS",
    "build_rewards",
    "check_reward_flags",
    "RecipeError",
    "RunError",
    "RunResult",
]

if __name__ == "__main__":
    sys.exit(main())
