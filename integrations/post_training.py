"""What the two Wan recipes (`recipes/wan_flow_dpo.py`, `recipes/wan_flow_grpo.py`) share: their common arguments,
the set-up (run directory, pipeline, rewards, prompt embeddings, LoRA, optimiser, resume), evaluation on fixed
prompts, checkpoints, curves and the final LoRA. Each recipe adds only its algorithm's arguments and its step.

A run directory (`--output-dir`), as `descore_plugin.training.runs` lays it out, plus:

    pytorch_lora_weights.safetensors   the final LoRA in the diffusers format (`pipe.load_lora_weights(DIR)`)
    metrics.jsonl                      rows {"kind": "train" | "eval" | "pairs", "step": N, ...}; eval rows hold
                                       "eval/<reward name>" (mean over the fixed prompts) and "eval_std/<name>"
    samples/step-NNNNNN/               at every evaluation (the start, every --eval-every steps, every checkpoint): the
        VVV.mp4                        fixed-prompt videos (the same prompt and initial noise at every evaluation)
        scores.jsonl                   one line per video: {"index", "prompt", "video": "VVV.mp4",
                                       "scores": {reward name: value or null}, "cot": DeScore's CoT when it
                                       wrote one}
    checkpoint-N/                      lora.safetensors + optimizer.pt (atomic; --resume continues from the newest)
    curves.png                         rewards of the fixed prompts and the recipe's training curves
    cache/                             generated data keyed by what produced it (Flow-DPO's pairs)
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from descore_plugin import rewards as reward_lib
from descore_plugin.utils import errors
from descore_plugin.integrations import wan
from descore_plugin.training.runs import Run, RunError
from descore_plugin.testing.tiny_wan import GENERATION_DEFAULTS_FILE, generation_defaults

LORA_FILE = "lora.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
MAY_CHANGE_ON_RESUME = ("max_steps", "eval_every", "checkpoint_every")
"""Arguments a resumed run may change: they say how long to train and how often to look, not what is trained."""


class RecipeError(errors.UserError):
    """A command-line input of a Wan recipe that cannot be used; the message names the flag or the file."""


def _help(text: str, default=None, **extra):
    return field(default=default, metadata={"help": text, **extra})


@dataclass
class RunArguments:
    """Inputs, outputs and rewards."""

    pipeline: str = _help(f"WanPipeline directory or hub id (e.g. {wan.WAN_1_3B_ID}; a tiny one: descore "
                          f"init-tiny-wan DIR)", default=None, required=True)
    prompts: str = _help("text file, one prompt per line (blank lines are an error); the first --eval-prompts are "
                         "also the evaluation prompts", default=None, required=True)
    output_dir: str = _help("the run directory (refused if it holds a run, unless --resume or --overwrite)",
                            default=None, required=True)
    reward: list[str] | None = _help(
        "NAME[=WEIGHT], repeatable: descore, descore:overall, descore:<subject|dynamics|camera|environment|style>, "
        "analytic:brightness, analytic:redness; unset: descore", action="extend", nargs="+")
    reward_model: str | None = _help("DeScore checkpoint directory, hub id or http(s)://host:port of `descore serve`; "
                                     "needed only by descore rewards")
    think: bool = _help("DeScore writes its CoT before scoring (--no-think: the masked-CoT fast path, only the "
                        "descore reward)", default=True)
    resume: bool = _help("continue the run in --output-dir from its newest checkpoint", default=False)
    overwrite: bool = _help("delete the run in --output-dir and start again", default=False)
    dtype: str | None = _help("transformer / text encoder dtype: float32 or bfloat16 (default: bfloat16 on CUDA, "
                              "float32 elsewhere; fp16 breaks Wan videos)", choices=["float32", "bfloat16"])
    seed: int = _help("seed of the LoRA initialisation, noises, timesteps and prompt order", default=0)


@dataclass
class TrainArguments:
    """The LoRA and its optimiser."""

    max_steps: int = _help("training steps", default=None, required=True)
    learning_rate: float = _help("AdamW learning rate", default=1e-4)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    lora_rank: int | None = _help("LoRA rank")
    lora_alpha: float | None = _help("LoRA alpha (scale alpha / rank)")
    lora_targets: str | None = _help("attention: q/k/v/o of self- and cross-attention; all: also the FFN linears",
                                     choices=["attention", "all"])
    gradient_checkpointing: bool = _help("recompute activations in the backward pass (memory for time)",
                                         default=False)
    checkpoint_every: int = _help("write checkpoint-N every N steps (and at the end)", default=100)


@dataclass
class EvalArguments:
    """Evaluation on fixed prompts and noise."""

    eval_every: int = _help("evaluate every N steps; 0: only at the start and at each checkpoint", default=0)
    eval_prompts: int = _help("the first N prompts of --prompts are the evaluation prompts", default=8)
    eval_videos_per_prompt: int = _help("videos per evaluation prompt (each with its own fixed noise)", default=2)
    solver: str = _help("ODE sampler of the evaluation videos (and of Flow-DPO's pair videos): scheduler (the "
                        "pipeline's, as pipe() does) or euler (the ODE of GRPO's SDE)", default="scheduler",
                        choices=["scheduler", "euler"])


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The recipe's docstring as written, and every flag's default after its help ("required" for a flag without)."""

    def _get_help_string(self, action):
        if action.required:
            return f"{action.help} (required)"
        return super()._get_help_string(action)


def parse_arguments(dataclass_types, argv, description: str, recipe_defaults: dict, later_defaults=None,
                    help_notes: dict[str, str] | None = None):
    """Parse the recipe's dataclasses with transformers' HfArgumentParser (`--help` lists every field's help and
    default). recipe_defaults: this recipe's defaults of shared fields (the ones --help shows); later_defaults(namespace)
    -> defaults that depend on other flags (e.g. the pipeline's own generation settings), applied before the final
    parse; help_notes: {field: text} added to a field's help (e.g. how such a later default differs)."""
    from transformers import HfArgumentParser

    parser = errors.one_line_errors(
        HfArgumentParser(dataclass_types, description=description, formatter_class=_HelpFormatter))
    parser.set_defaults(**recipe_defaults)
    for action in parser._actions:
        if action.dest in (help_notes or {}):
            action.help = f"{action.help}; {help_notes[action.dest]}"
    if later_defaults is not None:
        known, _ = parser.parse_known_args(argv)
        parser.set_defaults(**later_defaults(known))
    try:
        return parser.parse_args_into_dataclasses(argv)
    except ValueError as error:  # a config's own check (__post_init__), which names the flag
        raise RecipeError(str(error)) from None


def run_main(name: str, train, argv=None) -> int:
    """Run a recipe's `train(argv)`: a user error (a flag, a file, a run directory) is one line on stderr and exit
    status 2, without a traceback; bugs keep theirs."""
    return errors.run_main(train, name, argv)  # RecipeError, RunError, RewardError, PairStoreError, ... are UserErrors


def pipeline_generation_defaults(pipeline: str, preset: dict | None = None) -> dict:
    """Generation defaults: a tiny pipeline's generation_defaults.json, else `preset`, else Wan-2.1's model card."""
    if (Path(pipeline) / GENERATION_DEFAULTS_FILE).is_file() or preset is None:
        return asdict(generation_defaults(pipeline))
    return {**asdict(wan.GenerationConfig()), **preset}


def seed_of(*parts: int) -> int:
    """A 32-bit seed that is a function of its parts only (runs resume exactly, on any number of processes)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


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


class WanPostTraining:
    """The set-up and the shared parts of a Wan post-training run on this process.

    Attributes a recipe uses: accelerator, device, run (descore_plugin.training.runs.Run), pipe, generation, prompt_cache,
    prompts, my_prompts (this process's (prompt id, prompt) pairs), rewards (RewardSet), transformer (unwrapped),
    model (accelerate-prepared), optimizer, lora_parameters, start_step.
    """

    def __init__(self, args: RunArguments, train: TrainArguments, evaluation: EvalArguments,
                 generation: wan.GenerationConfig, recorded: dict, scheduler_shift: float | None = None):
        from accelerate import Accelerator

        self.args, self.train_args, self.eval_args, self.generation = args, train, evaluation, generation
        generation.check()
        if train.max_steps < 1:
            raise RecipeError(f"--max-steps must be >= 1, got {train.max_steps}")
        self.accelerator = accelerator = Accelerator()
        self.device = device = accelerator.device
        self.dtype = getattr(torch, args.dtype) if args.dtype else (
            torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.prompts = read_prompts(args.prompts)
        reward_lib.check_rewards(args.reward or ["descore"], args.reward_model, args.think)  # before the run exists
        self.run = Run.open(args.output_dir, recorded, resume=args.resume, overwrite=args.overwrite,
                            may_change=MAY_CHANGE_ON_RESUME, main_process=accelerator.is_main_process,
                            wait_for_everyone=accelerator.wait_for_everyone)
        self.rewards = reward_lib.reward_set(args.reward or ["descore"], reward_model=args.reward_model,
                                             think=args.think, device=device, dtype=self.dtype)
        self.pipe = wan.load_wan_pipeline(args.pipeline, device=device, dtype=self.dtype)
        if scheduler_shift is not None:  # the same scheduler with another time shift
            config = self.pipe.scheduler.config
            key = "flow_shift" if "flow_shift" in config else "shift"
            self.pipe.scheduler = type(self.pipe.scheduler).from_config(config, **{key: scheduler_shift})

        with accelerator.split_between_processes(list(enumerate(self.prompts))) as mine:
            self.my_prompts = list(mine)
        if not self.my_prompts:
            raise RecipeError(f"--prompts {args.prompts}: {len(self.prompts)} prompts for "
                              f"{accelerator.num_processes} processes")
        self.eval_prompts = self.prompts[: evaluation.eval_prompts] * evaluation.eval_videos_per_prompt
        # prompt embeddings once (kept on the CPU: 4 MB per prompt for the real model); then the encoder leaves
        self.prompt_cache = wan.PromptCache(self.pipe, generation.max_sequence_length, generation.negative_prompt,
                                            device="cpu")
        self.prompt_cache.precompute([p for _, p in self.my_prompts] + self.eval_prompts + [generation.negative_prompt],
                                     progress=accelerator.is_main_process)
        self.pipe.text_encoder.to("cpu")

        self.transformer = self.pipe.transformer
        torch.manual_seed(args.seed)  # the LoRA A matrices: the same in every run and on every process
        targets = wan.WAN_ATTENTION_TARGETS if train.lora_targets == "attention" else wan.WAN_ALL_LINEAR_TARGETS
        self.lora_parameters = wan.add_lora(self.transformer, rank=train.lora_rank, alpha=train.lora_alpha,
                                            target_modules=targets)
        if train.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(self.lora_parameters, lr=train.learning_rate, weight_decay=train.weight_decay)
        self.model, self.optimizer = accelerator.prepare(self.transformer, optimizer)
        self.start_step = self._resume() if args.resume else 0

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> int:
        from safetensors.torch import load_file

        checkpoint = self.run.latest_checkpoint()
        if checkpoint is None:
            return self.run.resume_step()
        wan.load_lora_state_dict(self.transformer, load_file(str(checkpoint / LORA_FILE)))
        self.optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_FILE, weights_only=True))
        step = self.run.resume_step()
        self.accelerator.wait_for_everyone()
        self.accelerator.print(f"resumed from {checkpoint} (step {step})")
        return step

    def _save_checkpoint(self, step: int) -> None:
        from safetensors.torch import save_file

        def write(directory: Path) -> None:
            state = {k: v.contiguous() for k, v in wan.lora_state_dict(self.transformer).items()}
            save_file(state, str(directory / LORA_FILE))
            torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)

        self.run.save_checkpoint(step, write)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ logging and evaluation
    def log(self, row: dict) -> None:
        self.run.log(row)

    @torch.no_grad()
    def evaluate(self, step: int, batch_size: int) -> dict:
        """Fresh videos of the evaluation prompts from fixed noise (the same at every evaluation), scored by every
        reward; writes samples/step-N/ (mp4 + scores.jsonl) and an eval row of metrics.jsonl."""
        from accelerate.utils import gather_object

        from descore_plugin.data.video import write_video

        self.transformer.eval()
        folder = self.run.output_dir / "samples" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        with self.accelerator.split_between_processes(list(enumerate(self.eval_prompts))) as jobs:
            lines = []
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                noise = torch.cat([wan.initial_noise(self.pipe, 1, self.generation,
                                                     generator=torch.Generator().manual_seed(seed_of(self.args.seed,
                                                                                                     17, index)))
                                   for index, _ in chunk])
                prompts = [prompt for _, prompt in chunk]
                videos, _ = wan.generate(self.pipe, self.prompt_cache, prompts, self.generation,
                                         transformer=self.transformer, latents=noise.to(self.device),
                                         solver=self.eval_args.solver)
                scores, cots = self.rewards(videos, prompts), self.rewards.last_cots()
                for row, (index, prompt) in enumerate(chunk):
                    write_video(folder / f"{index:03d}.mp4", videos[row], fps=16)
                    lines.append({"index": index, "prompt": prompt, "video": f"{index:03d}.mp4",
                                  "scores": {name: _number(value[row]) for name, value in scores.items()},
                                  **({"cot": cots[row]} if cots is not None else {})})
        lines = sorted((line for part in gather_object([lines]) for line in part), key=lambda line: line["index"])
        row = {"kind": "eval", "step": step, "num_videos": len(lines)}
        for name in self.rewards.names:
            values = np.array([math.nan if l["scores"][name] is None else l["scores"][name] for l in lines])
            row[f"eval/{name}"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            row[f"eval_std/{name}"] = float(np.nanstd(values)) if np.isfinite(values).any() else math.nan
        if self.accelerator.is_main_process:
            (folder / "scores.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        self.log(row)
        self.accelerator.print(f"step {step}: fixed prompts " +
                               ", ".join(f"{name} = {row[f'eval/{name}']:.5f}" for name in self.rewards.names))
        return row

    def steps(self, desc: str):
        """The step indices still to run (from the resumed step), with a progress bar."""
        from tqdm.auto import tqdm

        self.progress = tqdm(total=self.train_args.max_steps, initial=self.start_step, desc=desc,
                             disable=not self.accelerator.is_main_process)
        yield from range(self.start_step, self.train_args.max_steps)
        self.progress.close()

    def after_step(self, done: int, eval_batch_size: int, postfix: dict) -> None:
        """The cadence after a training step: progress, evaluation, checkpoint (and both at the end)."""
        self.progress.update(1)
        self.progress.set_postfix({key: f"{value:.4f}" for key, value in postfix.items()})
        checkpoint = done == self.train_args.max_steps or done % self.train_args.checkpoint_every == 0
        if checkpoint or (self.eval_args.eval_every and done % self.eval_args.eval_every == 0):
            self.evaluate(done, eval_batch_size)  # every checkpoint has its fixed-prompt samples
        if checkpoint:
            self._save_checkpoint(done)

    def finish(self, train_curves: list[str]) -> None:
        """The final LoRA (diffusers format), curves.png and a one-line summary per reward."""
        if self.accelerator.is_main_process:
            wan.save_lora_weights(self.transformer, self.run.output_dir)
            rows = self.run.metrics()
            plot_curves(rows, self.rewards.names, train_curves, self.run.output_dir / "curves.png")
            evals = [r for r in rows if r["kind"] == "eval"]
            for name in self.rewards.names:
                first, last = (_number(r.get(f"eval/{name}")) for r in (evals[0], evals[-1]))
                print(f"{name} of the fixed prompts: {first} (step {evals[0]['step']}) -> {last} "
                      f"(step {evals[-1]['step']})")
            print(f"LoRA in {self.run.output_dir}")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def _number(value):
    value = None if value is None else float(value)
    return None if value is None or math.isnan(value) else value


def plot_curves(rows: list[dict], reward_names: list[str], train_keys: list[str], path: Path) -> None:
    """One panel per reward (the fixed prompts' mean, and the training videos' where logged as reward/<name>), and
    one panel of the recipe's training curves (`train_keys` of the train rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{key: math.nan if value is None else value for key, value in row.items()} for row in rows]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    figure, axes = plt.subplots(1, len(reward_names) + 1, figsize=(5 * (len(reward_names) + 1), 4), squeeze=False)
    for axis, name in zip(axes[0], reward_names):
        if any(f"reward/{name}" in r for r in train):
            axis.plot([r["step"] for r in train], [r.get(f"reward/{name}", math.nan) for r in train], alpha=0.6,
                      label="training videos")
        axis.plot([r["step"] for r in evals], [r[f"eval/{name}"] for r in evals], "o-", label="fixed prompts")
        axis.set(title=name, xlabel="step", ylabel="mean reward")
        axis.legend()
    axis = axes[0][-1]
    for key in train_keys:
        axis.plot([r["step"] for r in train], [r.get(key, math.nan) for r in train], label=key)
    axis.set_xlabel("step")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def recorded_arguments(*configs) -> dict:
    """The arguments a run directory records (and compares on --resume): every field of the parsed dataclasses."""
    recorded = {}
    for config in configs:
        recorded.update({f.name: getattr(config, f.name) for f in fields(config)})
    return recorded


__all__ = ["RunArguments", "TrainArguments", "EvalArguments", "WanPostTraining", "RecipeError", "RunError",
           "parse_arguments", "run_main", "pipeline_generation_defaults", "read_prompts", "recorded_arguments", "seed_of",
           "plot_curves"]
