"""One run directory: its arguments, checkpoints, metrics and caches, so that re-runs never mix.

Used by `recipes/train_rm.py` (through the trainer) and both Wan recipes. Layout of a run directory:

    run_args.json        the arguments the run was started with (compared on --resume)
    metrics.jsonl        one JSON object per line, each with "step"; NaN is written as null
    checkpoint-N/        written atomically (a temporary sibling renamed into place); run_state.json holds N
    cache/<kind>-<key>/  generated data (pairs, rollouts) keyed by what produced it; key.json says what

Rules:
- an existing run directory is refused unless --resume (continue it) or --overwrite (delete it and start again);
- --resume compares the saved arguments with the new ones: a change in a flag that cannot apply to a run already
  under way (the model, the LoRA rank, the learning rate, the reward, ...) is refused, naming the flag; the flags
  the recipe lists as changeable (e.g. --max-steps) are taken;
- metrics past the resumed checkpoint are dropped (they belong to steps that will be run again);
- a cache directory's name is a hash of what produced its content, so a change (another reward model, other
  generation settings) gives another directory and nothing is reused across it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from descore_plugin.utils.errors import UserError, checkpoint_hint, set_resume_hint
from descore_plugin.utils.files import atomic_directory

ARGS_FILE = "run_args.json"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "run_state.json"
CACHE_DIR = "cache"
CONTROL_ARGUMENTS = ("resume", "overwrite")
"""Arguments that say how to open the run, not what it is: never saved or compared."""


class RunError(UserError):
    """A run directory that cannot be used as asked; the message names the directory and the flag to pass."""


def flag(name: str) -> str:
    """The command-line flag of an argument name: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def field_defaults(*configs) -> dict:
    """{field name: default} of dataclass instances' fields that have one (`Run.open(defaults=)`)."""
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for config in configs
        for f in dataclasses.fields(config)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def _looks_like_run(path: Path) -> bool:
    return any((path / name).exists() for name in (ARGS_FILE, METRICS_FILE, "args.json")) or any(
        path.glob("checkpoint-*")
    )


class Run:
    """An opened run directory (see the module docstring). Construct with `Run.open`."""

    def __init__(self, output_dir: Path, arguments: dict, resumed: bool, main_process: bool):
        self.output_dir = output_dir
        self.arguments = arguments
        self.resumed = resumed
        self.main_process = main_process

    @classmethod
    def open(
        cls,
        output_dir,
        arguments: dict,
        *,
        resume: bool = False,
        overwrite: bool = False,
        may_change: Iterable[str] = (),
        main_process: bool = True,
        wait_for_everyone: Callable[[], None] | None = None,
        defaults: dict | None = None,
    ) -> Run:
        """Check `output_dir` against the rules and record `arguments` (a dict of argument name -> value).

        may_change: argument names that may differ on --resume (e.g. "max_steps", "eval_every").
        defaults: argument name -> default value. On --resume an argument the run's run_args.json does not hold (one
            added to the package after the run began) counts as unchanged at its default: an upgrade does not strand
            a run under way, and a run continues as it began.
        main_process: only the main process deletes and writes; every process checks.
        wait_for_everyone: `accelerator.wait_for_everyone` with several processes: every process checks before the
            main one writes, and all continue once it has.
        """
        output_dir = Path(output_dir)
        arguments = {k: _jsonable(v) for k, v in arguments.items() if k not in CONTROL_ARGUMENTS}
        if resume and overwrite:
            raise RunError("--resume and --overwrite exclude each other: continue the run, or start it again")
        exists = output_dir.is_dir() and any(output_dir.iterdir())
        if resume:
            saved_path = output_dir / ARGS_FILE
            if not saved_path.is_file():
                raise RunError(
                    f"--resume: {output_dir} holds no run to continue (no {ARGS_FILE}); drop --resume to start one"
                )
            saved = json.loads(saved_path.read_text())
            added = {k: _jsonable(v) for k, v in (defaults or {}).items() if k in arguments and k not in saved}
            _check_changes({**added, **saved}, arguments, set(may_change), output_dir)
        elif exists and not overwrite:
            raise RunError(
                f"{output_dir} already holds a run; pass --resume to continue it or --overwrite to delete "
                f"it and start again (or choose another --output-dir)"
            )
        elif exists and overwrite and not _looks_like_run(output_dir):
            raise RunError(
                f"--overwrite: {output_dir} is not empty and holds no run ({ARGS_FILE}, {METRICS_FILE}, "
                f"checkpoint-N); refusing to delete it: choose another --output-dir"
            )
        if wait_for_everyone is not None:
            wait_for_everyone()
        if main_process:
            if exists and overwrite:
                shutil.rmtree(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            tmp = output_dir / f".{ARGS_FILE}.tmp"
            tmp.write_text(json.dumps(arguments, indent=2, sort_keys=True) + "\n")
            tmp.replace(output_dir / ARGS_FILE)
        if wait_for_everyone is not None:
            wait_for_everyone()
        return cls(output_dir, arguments, resume, main_process)

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        """The complete checkpoint-N directories, oldest first."""
        found = [p for p in self.output_dir.glob("checkpoint-*") if p.is_dir() and (p / STATE_FILE).is_file()]
        return sorted(found, key=checkpoint_step)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep_last: int | None = None) -> Path:
        """checkpoint-<step>/ written atomically: `write(tmp_dir)` fills it, then run_state.json is added and the
        directory renamed into place. keep_last: delete the oldest checkpoints beyond that many. Main process only."""
        path = self.output_dir / f"checkpoint-{step}"
        if not self.main_process:
            return path
        with atomic_directory(path) as tmp:
            write(tmp)
            (tmp / STATE_FILE).write_text(json.dumps({"step": step}) + "\n")
        set_resume_hint(checkpoint_hint(path))  # what a Ctrl-C from now on prints (utils.errors.run_main)
        if keep_last:
            for old in self.checkpoints()[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def resume_step(self) -> int:
        """The step of the newest checkpoint (0 when there is none); metrics past it are dropped."""
        latest = self.latest_checkpoint()
        step = checkpoint_step(latest) if latest is not None else 0
        if latest is not None:
            set_resume_hint(checkpoint_hint(latest))
        if self.main_process:
            rows = self.metrics(up_to_step=step)
            self._write_metrics(rows)
        return step

    # ------------------------------------------------------------------ metrics
    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    def log(self, row: dict) -> None:
        """Append one row (must hold "step") to metrics.jsonl; NaN is written as null. Main process only."""
        if "step" not in row:
            raise RunError(f"a metrics row needs a 'step': {sorted(row)}")
        if self.main_process:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(_jsonable(row)) + "\n")

    def metrics(self, up_to_step: int | None = None) -> list[dict]:
        """The rows of metrics.jsonl (those with step <= up_to_step when given)."""
        if not self.metrics_path.is_file():
            return []
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        return [row for row in rows if up_to_step is None or row["step"] <= up_to_step]

    def _write_metrics(self, rows: list[dict]) -> None:
        tmp = self.output_dir / f".{METRICS_FILE}.tmp"
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.replace(self.metrics_path)

    # ------------------------------------------------------------------ caches
    def cache_dir(self, kind: str, key: dict) -> Path:
        """cache/<kind>-<hash of key>/ with key.json: where data produced under `key` (reward model, generation
        settings, seed, ...) lives. Another key gives another directory: nothing is reused across a change."""
        text = json.dumps(_jsonable(key), sort_keys=True)
        path = self.output_dir / CACHE_DIR / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
        if self.main_process:
            path.mkdir(parents=True, exist_ok=True)
            if not (path / "key.json").is_file():
                (path / "key.json").write_text(json.dumps(_jsonable(key), indent=2, sort_keys=True) + "\n")
        return path


def checkpoint_step(path: Path) -> int:
    """N of a checkpoint-N directory."""
    return int(Path(path).name.split("-", 1)[1])


def _check_changes(saved: dict, new: dict, may_change: set[str], output_dir: Path) -> None:
    for name in sorted(set(saved) | set(new)):
        if name in may_change or saved.get(name) == new.get(name):
            continue
        raise RunError(
            f"--resume: {flag(name)} was {saved.get(name)!r} in the run in {output_dir}, now "
            f"{new.get(name)!r}; it cannot change in a run under way. Drop it to continue the run, "
            f"or pass --overwrite (or another --output-dir) to start a new one. Changeable on --resume: "
            f"{', '.join(flag(n) for n in sorted(may_change)) or 'nothing'}"
        )
