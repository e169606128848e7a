"""What every Wan post-training method shares before it runs: the shared configs (`WanRunConfig` inputs and rewards,
`AdapterConfig` the LoRA and its optimiser, `EvalConfig`, and `PostTrainingConfig`, which holds them with the method's
own), and the inputs they name, checked before anything is loaded: the prompt file, the pipeline's generation
defaults, the trained and check rewards. `integrations/post_training.py` exports every name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from descore_plugin import rewards as reward_lib
from descore_plugin.integrations import wan
from descore_plugin.testing.tiny_wan import GENERATION_DEFAULTS_FILE, generation_defaults
from descore_plugin.training.loop import LoopConfig
from descore_plugin.utils import errors
from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper


class RecipeError(errors.UserError):
    """A command-line input of a Wan recipe that cannot be used; the message names the flag or the file."""


# ---------------------------------------------------------------------------------------------------------- configs
@dataclass
class WanRunConfig:
    """Inputs and rewards."""

    pipeline: str = _help(
        f"WanPipeline directory or hub id (e.g. {wan.WAN_1_3B_ID}; a tiny one: descore init-tiny-wan DIR)",
        required=True,
    )
    prompts: str = _help(
        "text file, one prompt per line (blank lines are an error); the first --eval-prompts are "
        "also the evaluation prompts",
        required=True,
    )
    reward: list[str] | None = _help(
        "NAME[=WEIGHT], repeatable: descore, descore:overall, descore:<subject|dynamics|camera|environment|style>, "
        "analytic:brightness, analytic:redness; unset: descore",
        action="extend",
        nargs="+",
    )
    reward_model: str | None = _help(
        "DeScore checkpoint directory, hub id or http(s)://host:port of `descore serve`; "
        "needed only by descore rewards (trained or --check)"
    )
    think: bool = _help(
        "DeScore writes its CoT before scoring (--no-think: the masked-CoT fast path, only the descore reward)",
        default=True,
    )
    unparsed_cot: str = _help(
        "the descore reward of a video whose CoT's <answer> block did not parse: score (the paper: the head scores "
        "every CoT) or nan (no score: Flow-DPO makes no pair of it, GRPO and DiffusionNFT give it advantage 0)",
        default="score",
        choices=list(reward_lib.UNPARSED_CHOICES),
    )
    reward_max_new_tokens: int | None = _help(
        "cap on the length of DeScore's CoT, in tokens (unset: the reward model's own limit); a small cap keeps a "
        "tiny or CPU judge from stalling a step"
    )
    check: list[str] | None = _help(
        "NAME, repeatable: an independent check reward, scored on the evaluation videos (eval/NAME, "
        "samples/step-N/scores.jsonl) but never trained on; e.g. --check analytic:brightness, or a descore name "
        "when you train on another reward",
        action="extend",
        nargs="+",
    )
    dtype: str | None = _help(
        "transformer / text encoder dtype: float32 or bfloat16 (default: bfloat16 on CUDA, "
        "float32 elsewhere; fp16 breaks Wan videos)",
        choices=["float32", "bfloat16"],
    )
    seed: int = _help("seed of the LoRA initialisation, noises, timesteps and prompt order", default=0)


@dataclass
class AdapterConfig:
    """The LoRA and its optimiser."""

    learning_rate: float = _help("AdamW learning rate", default=1e-4)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    lora_rank: int | None = _help("LoRA rank")
    lora_alpha: float | None = _help("LoRA alpha (scale alpha / rank)")
    lora_targets: str | None = _help(
        "attention: q/k/v/o of self- and cross-attention; all: also the FFN linears", choices=["attention", "all"]
    )
    gradient_checkpointing: bool = _help("recompute activations in the backward pass (memory for time)", default=False)


@dataclass
class EvalConfig:
    """Evaluation on fixed prompts and noise."""

    eval_prompts: int = _help("the first N prompts of --prompts are the evaluation prompts", default=8)
    eval_videos_per_prompt: int = _help("videos per evaluation prompt (each with its own fixed noise)", default=2)
    solver: str = _help(
        "ODE sampler of the evaluation videos (and of Flow-DPO's pair videos): scheduler (the "
        "pipeline's, as pipe() does) or euler (the ODE of GRPO's SDE)",
        default="scheduler",
        choices=["scheduler", "euler"],
    )


@dataclass
class PostTrainingConfig:
    """Everything one post-training run needs: the shared configs and the method's own (`method_configs`)."""

    method: str
    run: WanRunConfig
    loop: LoopConfig
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    generation: wan.WanGenerationConfig = field(default_factory=wan.WanGenerationConfig)
    method_configs: tuple = ()

    def get(self, cls):
        """The method config of class `cls` (a default one when none was given)."""
        found = [c for c in self.method_configs if isinstance(c, cls)]
        return found[0] if found else cls()


SHARED_CONFIGS = (WanRunConfig, LoopConfig, AdapterConfig, EvalConfig, wan.WanGenerationConfig)


# ------------------------------------------------------------------------------------------------------- prompts
def read_prompts(path) -> list[str]:
    """A prompt file: one prompt per line; trailing blank lines are ignored, a blank line inside is an error."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"--prompts {path}: file not found (one prompt per line)")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise RecipeError(f"--prompts {path}, line {number}: empty prompt")
    if not lines:
        raise RecipeError(f"--prompts {path}: no prompts")
    return [line.strip() for line in lines]


def pipeline_generation_defaults(pipeline: str, preset: dict | None = None) -> dict:
    """Generation defaults: a tiny pipeline's generation_defaults.json, else `preset`, else Wan-2.1's model card."""
    if (Path(pipeline) / GENERATION_DEFAULTS_FILE).is_file() or preset is None:
        return asdict(generation_defaults(pipeline))
    return {**asdict(wan.WanGenerationConfig()), **preset}


def is_tiny_pipeline(pipeline: str) -> bool:
    return (Path(pipeline) / GENERATION_DEFAULTS_FILE).is_file()


# ---------------------------------------------------------------------------------------------------------- rewards
def check_reward_flags(run: WanRunConfig) -> None:
    """--reward and --check, validated before anything is loaded."""
    specs, checks = run.reward or ["descore"], run.check or []
    trained = reward_lib.check_rewards(specs, run.reward_model, run.think)
    if run.unparsed_cot == "nan" and not run.think:
        raise RecipeError("--unparsed-cot nan: without a CoT (--no-think) nothing is parsed; drop one of the two")
    if checks:
        if any("=" in c for c in checks):
            raise RecipeError(f"--check {checks}: a check has no weight (it is never trained on); give NAME only")
        reward_lib.check_rewards(checks, run.reward_model, run.think)
        both = [c for c in checks if c in trained]
        if both:
            raise RecipeError(f"--check {both[0]}: also a trained --reward; a check must be independent of training")


def build_rewards(run: WanRunConfig, device, dtype) -> tuple[reward_lib.RewardSet, reward_lib.RewardSet]:
    """(trained, evaluated): the --reward set, and the same plus the --check rewards (weight 0, never combined).
    One DeScore model serves both."""
    specs, checks = run.reward or ["descore"], run.check or []
    model = run.reward_model
    if model is not None and any(n.startswith("descore") for n in specs + checks) and isinstance(model, str):
        model = reward_lib.load_reward_model(model, device=device, dtype=dtype)
    options = dict(
        reward_model=model,
        think=run.think,
        device=device,
        dtype=dtype,
        max_new_tokens=run.reward_max_new_tokens,
        unparsed=run.unparsed_cot,
    )
    trained = reward_lib.reward_set(specs, **options)
    if not checks:
        return trained, trained
    judged = any(n.startswith("descore") for n in specs)
    extra = [c for c in checks if not (judged and c.startswith("descore"))]  # the judge already returns those names
    callables = trained.rewards + (reward_lib.reward_set(extra, **options).rewards if extra else [])
    return trained, reward_lib.RewardSet({**trained.weights, **{c: 0.0 for c in checks}}, callables)
