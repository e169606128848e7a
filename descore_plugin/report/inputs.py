"""Reading what `descore report` shows: the three kinds of input, told apart by what they hold (`detect_kind`), each
checked row by row so that a malformed one is named (file, line, field)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from descore_plugin.utils.errors import UserError
from descore_plugin.utils.jsonl import read_jsonl

__all__ = [
    "ReportInputError",
    "detect_kind",
    "load_scored_set",
    "load_evaluation",
    "load_run",
    "load_model_record",
    "training_curves",
    "KINDS",
]

KINDS = ("scores", "evaluation", "run")
DIMENSION_PREFIX = "descore:"
UNCERTAINTY = "descore:uncertainty"
OVERALL = "descore:overall"
SAMPLE_KEYS = ("step", "video", "prompt")
CHECK_SCORES_FILE = "check_scores.jsonl"
"""Written next to a run's page: the scores of `descore report --check NAME` rewards computed after the fact."""
_RUN_FILES_SKIPPED = ("metrics.jsonl", CHECK_SCORES_FILE)
VOCABULARY = ("train/", "eval/", "reward/", "time/")
"""The metric names of the run loop (descore_plugin.training.loop); older runs wrote flat names (loss, eval_reward)."""


class ReportInputError(UserError):
    """The report's input is not one of the three kinds, or a row of it is malformed (the message says where)."""


def detect_kind(path) -> str:
    """ "scores" (a JSONL / JSON-lines file), "evaluation" (a directory with accuracy.json and pairs_scored.csv) or
    "run" (a directory with metrics.jsonl); anything else raises ReportInputError saying what each kind holds."""
    path = Path(path)
    if not path.exists():
        raise ReportInputError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix in (".jsonl", ".json", ".txt", ".ndjson") or _looks_like_json_lines(path):
            return "scores"
    elif (path / "accuracy.json").is_file() and (path / "pairs_scored.csv").is_file():
        return "evaluation"
    elif (path / "metrics.jsonl").is_file():
        return "run"
    raise ReportInputError(
        f"{path}: not something `descore report` reads. Expected a scored set (the JSON lines of `descore score "
        f"--json` or `descore score --output OUT.jsonl`), an evaluation directory (recipes/eval_rm.py: accuracy.json "
        f"and pairs_scored.csv) or a post-training run directory (recipes/wan_flow_dpo.py / wan_flow_grpo.py: "
        f"metrics.jsonl)"
    )


def _looks_like_json_lines(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline().strip()
        return first.startswith("{")
    except (OSError, UnicodeDecodeError):
        return False


def _read_json_lines(path: Path) -> list[tuple[int, dict]]:
    return read_jsonl(path, ReportInputError)


def _number(value, where: str, field: str, optional: bool = True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportInputError(f"{where}, field {field!r}: expected a number, got {value!r}")
    return float(value)


def _resolve_video(video: str, base: Path) -> Path | None:
    candidate = Path(video)
    for path in [candidate] if candidate.is_absolute() else [base / candidate, candidate]:
        if path.is_file():
            return path.resolve()
    return None


def load_scored_set(path) -> list[dict]:
    """The rows of a scored set, checked: each has `video` and `prompt` (text) and either `reward` (a number) or
    `error` (text); `cot` (text), `dimensional_scores` ({name: number}), `uncertainty` (a number) are optional.
    Adds `path` (the resolved video file or None when it is not found) and `line`."""
    path = Path(path)
    rows = []
    for number, row in _read_json_lines(path):
        where = f"{path}, line {number}"
        for field in ("video", "prompt"):
            if not isinstance(row.get(field), str):
                raise ReportInputError(f"{where}: field {field!r} is missing or not text (got {row.get(field)!r})")
        if row.get("error") is None:
            if "reward" not in row:
                raise ReportInputError(f"{where}: a row needs 'reward' (a scored video) or 'error' (a failed one)")
            reward = _number(row["reward"], where, "reward", optional=False)
        else:
            reward = _number(row.get("reward"), where, "reward")
        scores = row.get("dimensional_scores") or {}
        if not isinstance(scores, dict):
            raise ReportInputError(f"{where}, field 'dimensional_scores': expected an object, got {scores!r}")
        scores = {str(name): _number(value, where, f"dimensional_scores.{name}") for name, value in scores.items()}
        cot = row.get("cot")
        if cot is not None and not isinstance(cot, str):
            raise ReportInputError(f"{where}, field 'cot': expected text, got {cot!r}")
        rows.append(
            {
                "line": number,
                "video": row["video"],
                "prompt": row["prompt"],
                "reward": reward,
                "cot": cot,
                "dimensional_scores": scores,
                "overall_score": _number(row.get("overall_score"), where, "overall_score"),
                "uncertainty": _number(row.get("uncertainty"), where, "uncertainty"),
                "parse_error": row.get("parse_error"),
                "error": row.get("error"),
                "model": row.get("model") if isinstance(row.get("model"), str) else None,
                "path": _resolve_video(row["video"], path.parent),
            }
        )
    if not rows:
        raise ReportInputError(f"{path}: no rows (expected one JSON object per scored video)")
    return rows


def load_evaluation(path) -> dict:
    """accuracy.json (as written) plus `rows`: pairs_scored.csv with numbers parsed, `correct` (None for a human
    tie) and the resolved video files `path_a` / `path_b` (None when not found)."""
    path = Path(path)
    try:
        summary = json.loads((path / "accuracy.json").read_text())
    except json.JSONDecodeError as error:
        raise ReportInputError(f"{path / 'accuracy.json'}: not JSON ({error.msg})") from None
    for key in ("accuracy_with_ties", "num_pairs"):
        if key not in summary:
            raise ReportInputError(f"{path / 'accuracy.json'}: no {key!r} (is this recipes/eval_rm.py output?)")
    rows = []
    with open(path / "pairs_scored.csv", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"video_a", "video_b", "prompt", "label", "reward_a", "reward_b", "margin"} - set(
            reader.fieldnames or []
        )
        if missing:
            raise ReportInputError(f"{path / 'pairs_scored.csv'}: missing column(s) {', '.join(sorted(missing))}")
        for number, row in enumerate(reader, 2):
            where = f"{path / 'pairs_scored.csv'}, row {number}"
            parsed = {key: row.get(key) or None for key in row}
            for key in ("reward_a", "reward_b", "margin"):
                try:
                    parsed[key] = float(row[key])
                except (TypeError, ValueError):
                    raise ReportInputError(f"{where}, column {key!r}: expected a number, got {row[key]!r}") from None
            label = row["label"]
            if label in ("A", "B"):
                parsed["correct"] = (parsed["margin"] > 0) == (label == "A") and parsed["margin"] != 0
            else:
                parsed["correct"] = None
            for side in ("a", "b"):  # the data's per-dimension truth, as JSON (eval_rm.py writes it when known)
                text = parsed.get(f"scores_{side}")
                if text is not None:
                    try:
                        parsed[f"scores_{side}"] = json.loads(text)
                    except json.JSONDecodeError:
                        raise ReportInputError(
                            f"{where}, column 'scores_{side}': expected a JSON object of dimension scores, got {text!r}"
                        ) from None
            parsed["path_a"] = _resolve_video(row["video_a"], path)
            parsed["path_b"] = _resolve_video(row["video_b"], path)
            rows.append(parsed)
    return {**summary, "rows": rows}


def _sample_scores(row: dict, where: str) -> dict:
    """Named per-video scores of a sample row: its `scores` object, or else its numeric top-level fields."""
    if "scores" in row:
        if not isinstance(row["scores"], dict):
            raise ReportInputError(f"{where}, field 'scores': expected an object of named scores")
        items = row["scores"].items()
    else:
        items = [
            (k, v)
            for k, v in row.items()
            if k not in ("step", "index", "seed") and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
    scores = {}
    for name, value in items:
        if value is None:
            scores[name] = math.nan
        else:
            scores[name] = _number(value, where, f"scores.{name}")
    return scores


def _sample_cot(row: dict) -> str | None:
    for key in ("cot", "descore:cot"):
        if isinstance(row.get(key), str):
            return row[key]
    cots = row.get("cots")
    if isinstance(cots, dict):
        texts = [value for value in cots.values() if isinstance(value, str)]
        return texts[0] if texts else None
    return None


def _folder_step(folder: Path) -> int | None:
    """N of a folder named step-N or step_N (the recipes' samples/step-000100/), else None."""
    match = re.fullmatch(r"step[-_](\d+)", folder.name)
    return int(match.group(1)) if match else None


def load_run(path) -> dict:
    """A post-training run directory:
    - `evals`: its evaluation rows of metrics.jsonl, sorted by step: `kind: "eval"` rows, or rows holding `eval/...`
      metrics (mean reward(s) of fresh samples per step: `eval/<name>`, with `eval/<name>_std` and
      `eval/num_items` when logged; older runs: `eval_reward`, `eval_std/<name>`, `num_videos`);
    - `train`: its training rows (`kind: "train"`, or rows of `train/...`, `reward/...`, `time/...` metrics), each
      metric under its vocabulary name (`training_curves`: the old flat names, e.g. `loss`, become `train/loss`);
    - `samples`: every row of the other JSON-lines files under the directory (the recipes write
      samples/step-N/scores.jsonl) that carries `video` and `prompt` and a `step` (or sits in a folder step-N):
      one fixed-prompt sample: its file, relative to its JSON-lines file; named scores in `scores` ({name: number
      or null}) or as numeric fields; `cot` (or `cots`: {reward name: text}) when the reward wrote one; `index` =
      which fixed prompt and noise; with `path` resolved;
    - `args`: run_args.json or args.json when present."""
    path = Path(path)
    evals, train = [], []
    for number, row in _read_json_lines(path / "metrics.jsonl"):
        kind = row.get("kind")
        if kind is None and not any(key.startswith(VOCABULARY) for key in row):
            kind, row = _legacy_reward_model_row(row)
        if kind is None:
            kind = (
                "eval"
                if any(key.startswith("eval/") for key in row)
                else "train"
                if any(key.startswith(VOCABULARY) for key in row)
                else None
            )
        if kind in ("eval", "train") and "step" not in row:
            raise ReportInputError(f"{path / 'metrics.jsonl'}, line {number}: a {kind} row without 'step'")
        if kind == "eval":
            evals.append(row)
        elif kind == "train":
            train.append(row)
    evals.sort(key=lambda row: row["step"])
    train.sort(key=lambda row: row["step"])
    samples = []
    for jsonl in sorted(path.rglob("*.jsonl")):
        if jsonl.name in _RUN_FILES_SKIPPED or "weight_checksums" in jsonl.parts or "cache" in jsonl.parts:
            continue
        folder_step = _folder_step(jsonl.parent)
        rows = _read_json_lines(jsonl)
        if not rows or not all(key in rows[0][1] for key in ("video", "prompt")):
            continue
        if "step" not in rows[0][1] and folder_step is None:
            continue
        for number, row in rows:
            where = f"{jsonl}, line {number}"
            for key in ("video", "prompt"):
                if key not in row:
                    raise ReportInputError(f"{where}: a sample row needs 'video' and 'prompt'; {key!r} is missing")
            step = row.get("step", folder_step)
            if step is None:
                raise ReportInputError(f"{where}: no 'step' (and the folder is not named step-N)")
            samples.append(
                {
                    "step": int(step),
                    "video": row["video"],
                    "prompt": row["prompt"],
                    "index": row.get("index"),
                    "scores": _sample_scores(row, where),
                    "cot": _sample_cot(row),
                    "path": _resolve_video(str(row["video"]), jsonl.parent),
                }
            )
    args = {}
    for name in ("run_args.json", "args.json"):
        if (path / name).is_file():
            args = json.loads((path / name).read_text())
            break
    if not evals and not samples:
        raise ReportInputError(f"{path}: metrics.jsonl has no eval rows and no sample rows were found; nothing to show")
    return {"evals": evals, "train": train, "samples": samples, "args": args, "path": path}


_FLAT_TRAIN_KEYS = ("kind", "step", "epoch", "final", "round")
_LEGACY_EVAL_PREFIXES = ("eval_accuracy", "eval_cot_parse_rate")


def _legacy_reward_model_row(row: dict) -> tuple[str | None, dict]:
    """A row of a reward-model run written before the run loop's vocabulary: an evaluation holds
    eval_accuracy_* / eval_cot_parse_rate (read as eval/accuracy_*, eval/cot_parse_rate), a training step holds
    `loss` (its flat names become train/... in `training_curves`). Other rows are left as they are."""
    if any(key.startswith(_LEGACY_EVAL_PREFIXES) for key in row):
        renamed = {
            ("eval/" + key[len("eval_") :] if key.startswith(_LEGACY_EVAL_PREFIXES) else key): value
            for key, value in row.items()
        }
        return "eval", renamed
    if "loss" in row and "eval_reward" not in row:
        return "train", row
    return None, row


def training_curves(run: dict) -> dict:
    """{vocabulary name: [(step, value), ...]} of a run's training rows: `train/...`, `reward/...` and `time/...`
    as logged; an older run's flat numbers (`loss`, `implicit_accuracy`, `policy_loss`, `kl`, ...) as `train/<name>`.
    None / NaN values are left out."""
    curves: dict = {}
    for row in run["train"]:
        for key, value in row.items():
            if key in _FLAT_TRAIN_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = key if key.startswith(VOCABULARY) else f"train/{key}"
            if name.startswith("eval/") or not math.isfinite(value):
                continue
            curves.setdefault(name, []).append((row["step"], float(value)))
    return curves


def load_model_record(model) -> dict | None:
    """What a DeScore model folder records about its judge, read without loading weights: {"name", "head"
    ("scalar", "distribution" or None when unknown), "trained_cot_tokens", "reward_range" (None or {"mean", "std",
    "min", "max", "num_videos", "data"}: the rewards it gave the videos it was evaluated on), "range_source" (the
    file)}. The range comes from MODEL/evaluation/accuracy.json (recipes/eval_rm.py --output-dir MODEL/evaluation,
    or the trainer's final evaluation written there) or MODEL/reward_range.json. None for no model; a hub id or a
    server URL is only named."""
    if model is None:
        return None
    folder = Path(str(model))
    record = {"name": str(model), "head": None, "trained_cot_tokens": None, "reward_range": None, "range_source": None}
    if not folder.is_dir():
        return record
    config_path = folder / "descore_config.json"
    if not config_path.is_file():
        raise ReportInputError(f"--model {model}: no descore_config.json in that folder (is it a DeScore model?)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ReportInputError(f"{config_path}: not JSON ({error.msg})") from None
    record.update(head=config.get("head", "scalar"), trained_cot_tokens=config.get("trained_cot_tokens"))
    sources = ((folder / "evaluation" / "accuracy.json", "reward_range"), (folder / "reward_range.json", None))
    for source, key in sources:
        if source.is_file():
            try:
                data = json.loads(source.read_text())
            except json.JSONDecodeError as error:
                raise ReportInputError(f"{source}: not JSON ({error.msg})") from None
            found = data.get(key) if key else data
            if isinstance(found, dict) and all(isinstance(found.get(k), (int, float)) for k in ("mean", "std")):
                record.update(reward_range=found, range_source=str(source))
                break
    return record
