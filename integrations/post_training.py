"""Post-training Wan-2.1 with rewards: a method is one file on top of this one.

A post-training method (Flow-DPO `flow_dpo.py`, Flow-GRPO / LongCat-GRPO `grpo.py`, DiffusionNFT `nft.py`) is a
subclass of `WanMethod` with its own config dataclass(es), its set-up (`prepare`), one step (`train_step -> metrics`)
and its curve names. Everything else is shared and lives here or in the run loop
(`descore_plugin.training.loop.RunLoop`: run directory, resume, cadence, metrics, curves, Ctrl-C):
the pipeline, the rewards (and `--check` rewards scored only at evaluation), the prompt embeddings, the LoRA and its
optimiser, the evaluation on fixed prompts and noise, the checkpoint state and the final LoRA.

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

import contextlib
import importlib
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from descore_plugin import rewards as reward_lib
from descore_plugin.integrations import wan
from descore_plugin.testing.tiny_wan import GENERATION_DEFAULTS_FILE, generation_defaults
from descore_plugin.training.loop import LoopConfig, RunLoop, RunResult
from descore_plugin.training.runs import RunError
from descore_plugin.utils import errors
from descore_plugin.utils.args import ConfigParser
from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper
from descore_plugin.utils.seeding import STREAMS, epoch_order, seed_of  # noqa: F401 (the methods import them here)

logger = logging.getLogger(__name__)

LORA_STATE = "lora"  # checkpoint-N/lora.safetensors


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
        reward_model=model, think=run.think, device=device, dtype=dtype, max_new_tokens=run.reward_max_new_tokens
    )
    trained = reward_lib.reward_set(specs, **options)
    if not checks:
        return trained, trained
    judged = any(n.startswith("descore") for n in specs)
    extra = [c for c in checks if not (judged and c.startswith("descore"))]  # the judge already returns those names
    callables = trained.rewards + (reward_lib.reward_set(extra, **options).rewards if extra else [])
    return trained, reward_lib.RewardSet({**trained.weights, **{c: 0.0 for c in checks}}, callables)


# ------------------------------------------------------------------------------------------------------ LoRA's EMA
class LoraEMA:
    """An exponential moving average of the LoRA weights, flow_grpo's `EMAModuleWrapper` rule: after optimiser step
    n (1-based), when n % interval == 0, ema += (1 - d) (w - ema) with d = min((1 + n) / (10 + n), decay)."""

    def __init__(self, parameters, decay: float = 0.9, interval: int = 8, names: list[str] | None = None):
        self.parameters = list(parameters)
        self.names = list(names) if names is not None else [f"{i:05d}" for i in range(len(self.parameters))]
        self.decay, self.interval = decay, interval
        self.shadow = [p.detach().clone().float() for p in self.parameters]

    def current_decay(self, step: int) -> float:
        return min((1 + step) / (10 + step), self.decay)

    @torch.no_grad()
    def update(self, step: int) -> None:
        if (step + 1) % self.interval != 0:  # flow_grpo: `(optimization_step + 1) % update_step_interval == 0`
            return
        keep = 1 - self.current_decay(step)
        for shadow, parameter in zip(self.shadow, self.parameters):
            shadow.add_(keep * (parameter.detach().float() - shadow))

    @contextlib.contextmanager
    def applied(self):
        """The LoRA holds the EMA weights inside the block, its own weights again after."""
        saved = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for shadow, parameter in zip(self.shadow, self.parameters):
                parameter.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for value, parameter in zip(saved, self.parameters):
                    parameter.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = [state[name].float().clone() for name in self.names]


# ---------------------------------------------------------------------------------------------------- the method
class WanMethod:
    """The base of a Wan post-training method; implements `descore_plugin.training.loop.Method`.

    A subclass sets `name`, `curve_names`, `config_classes` (its own dataclasses, flags of its recipe), `defaults`
    (its defaults of shared flags, e.g. the learning rate), optionally `help_notes` and `later_defaults`, and
    implements `prepare()` (after the shared set-up) and `train_step(step) -> metrics`. `extra_state()` /
    `load_extra_state()` add to the checkpoint; `self.ema`, when set, is what is evaluated and published.

    Attributes after `setup`: loop, accelerator, device, dtype, pipe, transformer (unwrapped), model (prepared),
    optimizer, lora_parameters, prompts, my_prompts ((prompt id, prompt) of this process), prompt_cache, rewards
    (trained), eval_rewards (+ checks), generation, run, adapter, evaluation, rank.
    """

    name = "post-training"
    curve_names: tuple = ()
    config_classes: tuple = ()
    defaults: dict = {}
    help_notes: dict = {}
    may_change_on_resume: tuple = ()
    eval_batch_size = 4

    def __init__(self, config: PostTrainingConfig):
        self.config = config
        self.run, self.adapter, self.evaluation = config.run, config.adapter, config.evaluation
        self.generation = config.generation
        self.ema: LoraEMA | None = None

    @classmethod
    def later_defaults(cls, known) -> dict:
        """Defaults that depend on other flags (parsed first): here the pipeline's generation settings."""
        return pipeline_generation_defaults(known.pipeline)

    @property
    def arguments(self) -> dict:
        """What run_args.json records and --resume compares: every field except the loop's."""
        recorded = {"method": self.config.method}
        for config in (self.run, self.adapter, self.evaluation, self.generation, *self.config.method_configs):
            recorded.update({f.name: getattr(config, f.name) for f in fields(config)})
        return recorded

    # ------------------------------------------------------------------ set-up
    def setup(self, loop: RunLoop) -> None:
        run, adapter = self.run, self.adapter
        self.loop, self.accelerator = loop, loop.accelerator
        self.device, self.rank = self.accelerator.device, self.accelerator.process_index
        self.dtype = (
            getattr(torch, run.dtype)
            if run.dtype
            else (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        )
        self.rewards, self.eval_rewards = build_rewards(run, self.device, self.dtype)
        self.pipe = wan.load_wan_pipeline(run.pipeline, device=self.device, dtype=self.dtype)
        with self.accelerator.split_between_processes(list(enumerate(self.prompts))) as mine:
            self.my_prompts = list(mine)
        if not self.my_prompts:
            raise RecipeError(
                f"--prompts {run.prompts}: {len(self.prompts)} prompts for {self.accelerator.num_processes} processes"
            )
        self.eval_prompts = self.prompts[: self.evaluation.eval_prompts] * self.evaluation.eval_videos_per_prompt
        # prompt embeddings once (kept on the CPU: 4 MB per prompt for the real model); then the encoder leaves
        self.prompt_cache = wan.PromptCache(
            self.pipe, self.generation.max_sequence_length, self.generation.negative_prompt, device="cpu"
        )
        self.prompt_cache.precompute(
            [p for _, p in self.my_prompts] + self.eval_prompts + [self.generation.negative_prompt],
            progress=self.accelerator.is_main_process,
        )
        self.pipe.text_encoder.to("cpu")
        self.transformer = self.pipe.transformer
        torch.manual_seed(run.seed)  # the LoRA A matrices: the same in every run and on every process
        targets = wan.WAN_ATTENTION_TARGETS if adapter.lora_targets == "attention" else wan.WAN_ALL_LINEAR_TARGETS
        self.lora_parameters = wan.add_lora(
            self.transformer, rank=adapter.lora_rank, alpha=adapter.lora_alpha, target_modules=targets
        )
        self.lora_names = [name for name, p in self.transformer.named_parameters() if p.requires_grad]
        if adapter.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(self.lora_parameters, lr=adapter.learning_rate, weight_decay=adapter.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(self.transformer, optimizer)
        self.prepare()

    def check(self) -> None:
        """Checks of the flags before anything is loaded or written (raise RecipeError naming the flag)."""
        self.generation.check()
        check_reward_flags(self.run)
        self.prompts = read_prompts(self.run.prompts)
        if self.evaluation.eval_prompts < 1 or self.evaluation.eval_videos_per_prompt < 1:
            raise RecipeError("--eval-prompts and --eval-videos-per-prompt must be >= 1")

    def prepare(self) -> None:
        """The method's own set-up, after the shared one."""

    def train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation
    def evaluated_weights(self):
        """The weights that are evaluated and published: the EMA's when the method keeps one."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Fresh videos of the evaluation prompts from fixed noise (the same at every evaluation), scored by every
        reward and check; writes samples/step-N/ (mp4 + scores.jsonl); returns eval/<name>, eval/<name>_std (the
        sample std), eval/num_items."""
        from accelerate.utils import gather_object

        from descore_plugin.data.video import write_video

        self.transformer.eval()
        folder = self.loop.output_dir / "samples" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = self.eval_batch_size
        with (
            self.evaluated_weights(),
            self.accelerator.split_between_processes(list(enumerate(self.eval_prompts))) as jobs,
        ):
            lines = []
            for start in range(0, len(jobs), size):
                chunk = jobs[start : start + size]
                noise = torch.cat(
                    [
                        wan.initial_noise(
                            self.pipe,
                            1,
                            self.generation,
                            generator=torch.Generator().manual_seed(seed_of(self.run.seed, "eval_noise", index)),
                        )
                        for index, _ in chunk
                    ]
                )
                prompts = [prompt for _, prompt in chunk]
                videos, _ = wan.generate(
                    self.pipe,
                    self.prompt_cache,
                    prompts,
                    self.generation,
                    transformer=self.transformer,
                    latents=noise.to(self.device),
                    solver=self.evaluation.solver,
                )
                scores, cots = self.eval_rewards(videos, prompts), self.eval_rewards.last_cots()
                for row, (index, prompt) in enumerate(chunk):
                    write_video(folder / f"{index:03d}.mp4", videos[row], fps=16)
                    lines.append(
                        {
                            "index": index,
                            "prompt": prompt,
                            "video": f"{index:03d}.mp4",
                            "scores": {name: _number(value[row]) for name, value in scores.items()},
                            **({"cot": cots[row]} if cots is not None else {}),
                        }
                    )
        lines = sorted((line for part in gather_object([lines]) for line in part), key=lambda line: line["index"])
        metrics = {"eval/num_items": float(len(lines))}
        for name in self.eval_rewards.names:
            values = np.array([math.nan if line["scores"][name] is None else line["scores"][name] for line in lines])
            count = int(np.isfinite(values).sum())
            metrics[f"eval/{name}"] = float(np.nanmean(values)) if count else math.nan
            # the sample std (ddof 1): eval/<name>_std / sqrt(eval/num_items) is the standard error of the mean
            metrics[f"eval/{name}_std"] = float(np.nanstd(values, ddof=1)) if count > 1 else math.nan
        if self.accelerator.is_main_process:
            (folder / "scores.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        self.transformer.train()
        return metrics

    def reward_metrics(self, scores: dict[str, torch.Tensor]) -> dict[str, float]:
        """reward/<name>: this process's mean of the training samples' rewards (the loop averages the processes)."""
        return {
            f"reward/{name}": float(torch.nanmean(value.float()))
            for name, value in scores.items()
            if name in self.rewards.weights
        }

    # ------------------------------------------------------------------ state and publish
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        state = {
            LORA_STATE: {k: v.contiguous() for k, v in wan.lora_state_dict(self.transformer).items()},
            "optimizer": self.optimizer.state_dict(),
        }
        if self.ema is not None:
            state["lora_ema"] = self.ema.state_dict()
        return {**state, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        wan.load_lora_state_dict(self.transformer, state[LORA_STATE])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["lora_ema"])
        self.load_extra_state(state)

    def save_pretrained(self, directory) -> None:
        """The final LoRA in the diffusers format (the EMA's weights when the method keeps one)."""
        with self.evaluated_weights():
            wan.save_lora_weights(self.transformer, directory)


def _number(value):
    value = None if value is None else float(value)
    return None if value is None or math.isnan(value) else value


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
    "WanMethod",
    "LoraEMA",
    "METHODS",
    "register_method",
    "method_class",
    "config_from_argv",
    "post_train",
    "recipe_main",
    "main",
    "parse_arguments",
    "pipeline_generation_defaults",
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
