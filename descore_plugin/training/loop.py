"""The one run loop of every trainer: a `Method` says what one step, one evaluation and one checkpoint are; the
`RunLoop` does everything around them, the same way for the reward-model trainers and for post-training.

    loop = RunLoop(method, LoopConfig(output_dir="out", max_steps=100), accelerator=None)
    result = loop.run()          # -> RunResult(output_dir, step, metrics of the final evaluation, last train row)

What the loop owns (the method never does these):
- the run directory (`descore_plugin.training.runs.Run`): run_args.json, refused re-runs, --resume / --overwrite;
- resume from the newest atomic checkpoint-N (the method's `state_dict()`, RNG streams included, comes back through
  `load_state_dict`), so a resumed run equals an uninterrupted one;
- the cadence: a checkpoint every `checkpoint_every` steps (0: only at the end) and at the end, an evaluation at the
  start, every `eval_every` steps and at every checkpoint (a method opts out of the first and of the checkpoint ones
  with `evaluate_at_start` / `evaluate_at_checkpoints` False); an evaluation that was due at the step a run resumes
  from and has no row (interrupted after its checkpoint) is run again on resume;
- metrics: the method returns this process's numbers; the loop averages them over the processes (NaN-aware, one
  `accelerator.gather`) and appends one row per step to metrics.jsonl (and to the accelerator's trackers, e.g.
  TensorBoard, when it was made with `log_with`), in ONE vocabulary:
      train/<name>   training quantities (loss, KL, accuracy, gradient norm, ...)
      eval/<name>    evaluation results (eval/<name>_std its spread over the evaluated items)
      reward/<name>  rewards of the training samples
      time/<name>    seconds (time/step is added by the loop)
  each row also holds "kind" ("train" or "eval") and "step" (optimiser steps done);
- the tqdm progress bar, curves.png (`write_curves`), and the end: the last checkpoint, then the final publish
  (`save_pretrained(output_dir)`, e.g. a LoRA in the diffusers format) BEFORE the final evaluation, so a Ctrl-C in
  that evaluation loses nothing;
- Ctrl-C: one line, "interrupted; at step N; last checkpoint: DIR; run the same command with --resume ..." (through
  `descore_plugin.utils.errors.run_main`), no traceback.

Checkpoint files: `state_dict()` is called on EVERY process (a sharded method gathers its full state there); the
main process writes each top-level entry that is a flat {name: tensor} dict as `<entry>.safetensors` and everything
else (optimizer state, RNG states, counters) in `state.pt`; every process reads them back on resume. Optional
method hooks change that:
- `write_checkpoint(directory, state)` (main process, inside the atomic checkpoint directory) and
  `read_checkpoint(directory)` (every process, instead of `load_state_dict`): a method with its own checkpoint
  layout (the reward-model trainers: `model/` that loads with from_pretrained, trainable.safetensors,
  optimizer.pt, scheduler.pt);
- `process_state() -> {name: object} | None` and `load_process_state({name: object})`: what each process keeps on
  its own (stage 2: its share of the current rollout batch), written as checkpoint-N/<name>-<rank>.pt.

`start()` opens the run directory, sets the method up and resumes; `run()` does that when it was not done yet, then
trains: a caller may look at the set-up method (its model, its first batch) before the first step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from descore_plugin.training.runs import Run, checkpoint_step
from descore_plugin.utils import errors
from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper

logger = logging.getLogger(__name__)

VOCABULARY = ("train/", "eval/", "reward/", "time/")
STATE_FILE = "state.pt"
LOOP_MAY_CHANGE = ("max_steps", "eval_every", "checkpoint_every", "keep_last")
"""Loop settings a resumed run may change: how long to train and how often to look, not what is trained."""


@dataclass
class LoopConfig:
    """The run directory and the cadence of a training run."""

    output_dir: str = _help(
        "the run directory (refused if it holds a run, unless --resume or --overwrite)", required=True
    )
    max_steps: int = _help("training steps", required=True)
    checkpoint_every: int = _help("write checkpoint-N every N steps (and at the end; 0: only at the end)", default=100)
    eval_every: int = _help("evaluate every N steps (0: at the start, at checkpoints and at the end only)", default=0)
    resume: bool = _help("continue the run in --output-dir from its newest checkpoint", default=False)
    overwrite: bool = _help("delete the run in --output-dir and start again", default=False)
    keep_last: int | None = _help("keep only the newest N checkpoints (unset: keep all)")

    def check(self) -> None:
        if self.max_steps is None or self.max_steps < 1:
            raise errors.UserError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.checkpoint_every is None or self.checkpoint_every < 0:
            raise errors.UserError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.eval_every < 0:
            raise errors.UserError(f"--eval-every must be >= 0, got {self.eval_every}")


@runtime_checkable
class Method(Protocol):
    """What a trainer is, to the loop. Attributes: `name` (the progress bar's label), `curve_names` (train/... keys
    drawn in curves.png), `arguments` (a dict recorded in run_args.json and compared on --resume),
    `argument_defaults` (optional: their defaults, what an argument a run began without is taken as on --resume),
    `may_change_on_resume` (argument names that may differ on --resume), `evaluate_at_start` (default True: an
    evaluation before the first step), `evaluate_at_checkpoints` (default True: one after every checkpoint) and
    `tracker_config` (scalars for the accelerator's trackers). Optional hooks: `write_checkpoint` /
    `read_checkpoint`, `process_state` / `load_process_state` (see the module docstring)."""

    name: str
    curve_names: Sequence[str]

    def setup(self, loop: RunLoop) -> None: ...  # build models, data, optimiser (the run directory exists)

    def train_step(self, step: int) -> dict[str, float]: ...  # step: 0-based; returns this process's metrics

    def evaluate(self, step: int) -> dict[str, float]: ...  # eval/... metrics (may be empty)

    def state_dict(self) -> dict: ...  # everything resume needs, RNG streams included

    def load_state_dict(self, state: dict) -> None: ...

    def save_pretrained(self, directory: Path) -> None: ...  # the final publish (main process only)


@dataclass
class RunResult:
    output_dir: Path
    step: int
    metrics: dict = field(default_factory=dict)  # the final evaluation's row
    train: dict = field(default_factory=dict)  # the last training row of this run (empty when it trained no step)


def check_vocabulary(metrics: dict, where: str) -> None:
    """Every metric name starts with train/, eval/, reward/ or time/."""
    wrong = [key for key in metrics if not key.startswith(VOCABULARY)]
    if wrong:
        raise ValueError(f"{where} returned {wrong}: metric names start with one of {', '.join(VOCABULARY)}")


class RunLoop:
    """Runs a `Method` (see the module docstring). `accelerator`: an accelerate Accelerator (one is made if None)."""

    def __init__(self, method: Method, config: LoopConfig, accelerator=None):
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator()
        config.check()
        self.method, self.config, self.accelerator = method, config, accelerator
        self.run_dir: Run | None = None
        self.step = 0
        self.progress = None
        self.evaluated: set[int] = set()  # steps with an eval row
        self.resumed = False  # continued from a checkpoint
        self.last_train: dict = {}

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    # ------------------------------------------------------------------ the run
    def start(self) -> RunLoop:
        """Open the run directory, set the method up and resume from the newest checkpoint with --resume."""
        if self.run_dir is not None:
            return self
        method, config, accelerator = self.method, self.config, self.accelerator
        arguments = {
            **getattr(method, "arguments", {}),
            "max_steps": config.max_steps,
            "eval_every": config.eval_every,
            "checkpoint_every": config.checkpoint_every,
        }
        may_change = tuple(getattr(method, "may_change_on_resume", ())) + LOOP_MAY_CHANGE
        self.run_dir = Run.open(
            config.output_dir,
            arguments,
            resume=config.resume,
            overwrite=config.overwrite,
            may_change=may_change,
            main_process=accelerator.is_main_process,
            wait_for_everyone=accelerator.wait_for_everyone,
            defaults=getattr(method, "argument_defaults", None),
        )
        method.setup(self)
        self.step = self._resume() if config.resume else 0
        self.evaluated = {r["step"] for r in self.run_dir.metrics() if r.get("kind") == "eval"}  # read by all
        accelerator.wait_for_everyone()
        return self

    def run(self) -> RunResult:
        self.start()
        method, config, accelerator = self.method, self.config, self.accelerator
        if accelerator.log_with:  # trackers (TensorBoard, W&B, ...): the main process only
            accelerator.init_trackers("descore", config=getattr(method, "tracker_config", None))
        if self.step < config.max_steps and self.step not in self.evaluated and self._due_at_start():
            self._evaluate(self.step)  # the start, or an evaluation interrupted after its checkpoint
        final = {}
        try:
            self._train()
            self.progress.close()
            latest = self.run_dir.latest_checkpoint()
            if latest is None or checkpoint_step(latest) != self.step:
                self._checkpoint()
            if accelerator.is_main_process:
                method.save_pretrained(self.output_dir)  # the final publish, before the final evaluation
            accelerator.wait_for_everyone()
            if self.step not in self.evaluated:
                final = self._evaluate(self.step)
            if accelerator.is_main_process:
                write_curves(self.run_dir.metrics(), self.output_dir / "curves.png", method.curve_names)
        except BaseException as error:  # a Ctrl-C, a diverged loss, ...: the bar ends before the message
            if self.progress is not None:
                self.progress.close()
            if not isinstance(error, KeyboardInterrupt):
                raise
            latest = self.run_dir.latest_checkpoint()
            errors.set_resume_hint(
                f"at step {self.step}; "
                + (
                    errors.checkpoint_hint(latest)
                    if latest
                    else "no checkpoint yet; run the same command with --resume to start again"
                )
            )
            raise
        if accelerator.log_with:
            accelerator.end_training()
        accelerator.wait_for_everyone()
        return RunResult(self.output_dir, self.step, final, self.last_train)

    def _due_at_start(self) -> bool:
        """An evaluation is due before training: at step 0 unless the method opts out; at a resumed checkpoint when
        the cadence evaluates there."""
        method, every = self.method, self.config.eval_every
        if self.step == 0:
            return getattr(method, "evaluate_at_start", True)
        return getattr(method, "evaluate_at_checkpoints", True) or bool(every and self.step % every == 0)

    def _train(self) -> None:
        from tqdm.auto import tqdm

        config = self.config
        self.progress = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc=self.method.name,
            disable=not self.accelerator.is_main_process,
        )
        at_checkpoints = getattr(self.method, "evaluate_at_checkpoints", True)
        while self.step < config.max_steps:
            started = time.perf_counter()
            metrics = self.method.train_step(self.step)
            check_vocabulary(metrics, f"{type(self.method).__name__}.train_step")
            metrics = self.reduce({**metrics, "time/step": time.perf_counter() - started})
            self.step += 1
            self.last_train = {"kind": "train", "step": self.step, **metrics}
            self.log(self.last_train)
            shown = [k for k in self.method.curve_names if k in metrics][:3]
            self.progress.update(1)
            self.progress.set_postfix({k.split("/", 1)[1]: f"{metrics[k]:.4g}" for k in shown}, refresh=False)
            done = self.step
            every = config.checkpoint_every
            checkpoint = done == config.max_steps or bool(every and done % every == 0)
            if checkpoint:
                self._checkpoint()  # before the evaluation: a Ctrl-C in the evaluation loses no training
            scheduled = bool(config.eval_every and done % config.eval_every == 0)
            if done < config.max_steps and ((checkpoint and at_checkpoints) or scheduled):
                self._evaluate(done)

    # ------------------------------------------------------------------ metrics
    def reduce(self, metrics: dict) -> dict:
        """The mean over the processes of every number (NaN-aware: a process without a value does not count)."""
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        if self.accelerator.num_processes == 1 or not keys:
            return {k: float(metrics[k]) for k in keys}
        local = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.device)
        gathered = self.accelerator.gather(local.unsqueeze(0)).reshape(-1, len(keys))
        return dict(zip(keys, torch.nanmean(gathered, dim=0).tolist()))

    def log(self, row: dict) -> None:
        self.run_dir.log(row)
        if self.accelerator.log_with:
            numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
            self.accelerator.log(numbers, step=row["step"])
        if self.accelerator.is_main_process:
            logger.debug("%s", row)

    def _evaluate(self, step: int) -> dict:
        metrics = self.method.evaluate(step) or {}
        check_vocabulary(metrics, f"{type(self.method).__name__}.evaluate")
        row = {"kind": "eval", "step": step, **metrics}
        if metrics:  # a method without evaluation data logs no empty rows
            self.log(row)
        self.evaluated.add(step)
        if metrics and self.accelerator.is_main_process:
            logger.info(
                "step %d: %s",
                step,
                ", ".join(
                    f"{k} = {v:.5g}" for k, v in metrics.items() if isinstance(v, float) and not k.endswith("_std")
                ),
            )
        return row

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        method, accelerator = self.method, self.accelerator
        state = method.state_dict()  # every process: a sharded method gathers here
        own = method.process_state() if hasattr(method, "process_state") else None
        rank = accelerator.process_index

        def write(directory: Path) -> None:
            if hasattr(method, "write_checkpoint"):
                method.write_checkpoint(directory, state)
            else:
                save_state(state, directory)
            for name, value in (own or {}).items():  # the main process's own share, inside the atomic directory
                torch.save(value, directory / f"{name}-{rank}.pt")

        accelerator.wait_for_everyone()
        path = self.run_dir.save_checkpoint(self.step, write, keep_last=self.config.keep_last)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process and own:
            for name, value in own.items():
                torch.save(value, path / f"{name}-{rank}.pt")
        accelerator.wait_for_everyone()

    def _resume(self) -> int:
        method, accelerator = self.method, self.accelerator
        latest = self.run_dir.latest_checkpoint()
        step = self.run_dir.resume_step()
        if latest is not None:
            if hasattr(method, "read_checkpoint"):
                method.read_checkpoint(latest)
            else:
                method.load_state_dict(load_state(latest))
            if hasattr(method, "load_process_state"):
                suffix = f"-{accelerator.process_index}.pt"
                own = {
                    path.name[: -len(suffix)]: torch.load(path, map_location="cpu", weights_only=False)
                    for path in sorted(latest.glob(f"*{suffix}"))
                }
                if own:
                    method.load_process_state(own)
            self.resumed = True
            if accelerator.is_main_process:
                logger.info("resumed from %s (step %d)", latest, checkpoint_step(latest))
        accelerator.wait_for_everyone()
        return step


# ---------------------------------------------------------------------------------------------------- state files
def _is_tensor_dict(value) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())
    )


def save_state(state: dict, directory: Path) -> None:
    """Write a method's state: flat {name: tensor} entries as <entry>.safetensors, the rest in state.pt."""
    from safetensors.torch import save_file

    rest = {}
    for key, value in state.items():
        if _is_tensor_dict(value):
            tensors = {k: v.detach().cpu().contiguous() for k, v in value.items()}
            save_file(tensors, str(directory / f"{key}.safetensors"))
        else:
            rest[key] = value
    torch.save(rest, directory / STATE_FILE)


def load_state(directory: Path) -> dict:
    """The state `save_state` wrote (tensors on the CPU)."""
    from safetensors.torch import load_file

    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    for path in sorted(Path(directory).glob("*.safetensors")):
        state[path.stem] = load_file(str(path))
    return state


# ---------------------------------------------------------------------------------------------------------- curves
def write_curves(rows: list[dict], path: Path, curve_names: Sequence[str] = ()) -> Path:
    """curves.png of a run's metrics rows: one panel per evaluated quantity (eval/<name>, with a band of one
    standard error when eval/<name>_std and eval/num_items are logged, and reward/<name> of the training samples on
    the same axes), then one panel per training curve in `curve_names`. Axes start at the data, never a zoom that
    makes noise look like a trend: the band shows the noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{k: math.nan if v is None else v for k, v in r.items()} for r in rows]
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    names = list(
        dict.fromkeys(
            k[len("eval/") :]
            for r in evals
            for k in r
            if k.startswith("eval/") and not k.endswith("_std") and k != "eval/num_items"
        )
    )
    curves = [k for k in curve_names if any(k in r for r in train)]
    panels = len(names) + len(curves) or 1
    columns = min(panels, 4)
    figure, axes = plt.subplots(
        (panels + columns - 1) // columns,
        columns,
        figsize=(4.5 * columns, 3.5 * ((panels + columns - 1) // columns)),
        squeeze=False,
    )
    flat = list(axes.flat)
    for axis, name in zip(flat, names):
        if any(f"reward/{name}" in r for r in train):
            axis.plot(
                [r["step"] for r in train],
                [r.get(f"reward/{name}", math.nan) for r in train],
                alpha=0.5,
                label="training samples",
            )
        steps = [r["step"] for r in evals]
        mean = [r.get(f"eval/{name}", math.nan) for r in evals]
        axis.plot(steps, mean, "o-", label="evaluation")
        if all(f"eval/{name}_std" in r and "eval/num_items" in r for r in evals):
            se = [r[f"eval/{name}_std"] / math.sqrt(max(r["eval/num_items"], 1)) for r in evals]
            axis.fill_between(
                steps,
                [m - s for m, s in zip(mean, se)],
                [m + s for m, s in zip(mean, se)],
                alpha=0.25,
                label="± 1 standard error",
            )
        axis.set(title=name, xlabel="step")
        axis.legend(fontsize=7)
    for axis, key in zip(flat[len(names) :], curves):
        axis.plot([r["step"] for r in train], [r.get(key, math.nan) for r in train])
        axis.set(title=key, xlabel="step")
    for axis in flat[panels:]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


__all__ = [
    "LoopConfig",
    "Method",
    "RunLoop",
    "RunResult",
    "VOCABULARY",
    "LOOP_MAY_CHANGE",
    "check_vocabulary",
    "save_state",
    "load_state",
    "write_curves",
]
