"""HTML reports: one self-contained page that shows why a reward moved.

    descore report PATH --output-dir OUT        # writes OUT/index.html (+ OUT/media/*.mp4); open it in a browser

    from descore_plugin.report.page import write_report
    write_report("scores.jsonl", "report/")

PATH is one of three kinds, told apart by what it holds (`detect_kind`):

- a scored set: the JSON lines of `descore score ... --json` or of `descore score INPUT --output OUT.jsonl` (one
  object per video: `video`, `prompt`, `reward`, `cot`, `dimensional_scores`, `uncertainty`, or `error`). The page
  shows each video with its prompt, CoT, dimension scores, reward and uncertainty, sortable and filterable.
- an evaluation: the output directory of `recipes/eval_rm.py` (`accuracy.json` + `pairs_scored.csv`). The page
  shows the accuracy with and without ties, the per-slice table, the histogram of reward margins and every pair the
  model got wrong with both videos and both CoTs side by side.
- a post-training run: the output directory of `recipes/wan_flow_dpo.py` or `recipes/wan_flow_grpo.py`
  (`metrics.jsonl`, and the fixed-prompt samples the run scored at each evaluation: `samples/step-N/` with the mp4s
  and a `scores.jsonl` of per-video named scores, see `load_run`). The page shows the samples of the base model (step 0) and of each
  checkpoint as a grid, the reward and per-dimension curves, and the reward-hacking flags (`hacking_flags`).

The page is static: no server, no network, no CDN; the videos are copied next to it (H.264 yuv420p mp4, which every
browser plays; other files are re-encoded) and the curves are inline SVG.

The hacking flags compare every checkpoint with the base model on the same fixed prompts and noise:
(a) `dimension_drop_flags`: the total reward rises while one dimension's score falls (the reward is being bought
    with a dimension the total under-weights);
(b) `independent_check_flags`: the reward rises while an independent check (a second reward, the no-CoT student,
    an analytic reward) stays flat or falls;
(c) `uncertainty_flags`: the judge's uncertainty rises (the policy drifts where the judge has not seen data);
(d) `phrase_flags`: phrases (word n-grams) that the CoTs of the lowest-scoring samples of a checkpoint use much more
    often than those of the base model's lowest-scoring samples (a new failure the judge keeps describing).
Each compares every checkpoint with the base and lists the checkpoints where the condition holds and still holds at
the next checkpoint (or at the last one). A change counts when it exceeds `z` (default 3: about one false alarm in 700 comparisons of a series that did not
move) standard errors of the difference of the two means (per-video values known) and `min_change` in the series'
own units.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

from descore_plugin.utils.errors import UserError

__all__ = ["ReportInputError", "detect_kind", "load_scored_set", "load_evaluation", "load_run", "Flag", "Change",
           "change", "dimension_drop_flags", "independent_check_flags", "uncertainty_flags", "phrase_flags",
           "low_score_phrases", "hacking_flags", "write_report", "KINDS"]

KINDS = ("scores", "evaluation", "run")
DIMENSION_PREFIX = "descore:"
UNCERTAINTY = "descore:uncertainty"
OVERALL = "descore:overall"
SAMPLE_KEYS = ("step", "video", "prompt")
_RUN_FILES_SKIPPED = ("metrics.jsonl",)


class ReportInputError(UserError):
    """The report's input is not one of the three kinds, or a row of it is malformed (the message says where)."""


# ----------------------------------------------------------------------------------------------------------- input
def detect_kind(path) -> str:
    """"scores" (a JSONL / JSON-lines file), "evaluation" (a directory with accuracy.json and pairs_scored.csv) or
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
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReportInputError(f"{path}, line {number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ReportInputError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append((number, row))
    return rows


def _number(value, where: str, field: str, optional: bool = True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportInputError(f"{where}, field {field!r}: expected a number, got {value!r}")
    return float(value)


def _resolve_video(video: str, base: Path) -> Path | None:
    candidate = Path(video)
    for path in ([candidate] if candidate.is_absolute() else [base / candidate, candidate]):
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
        rows.append({
            "line": number, "video": row["video"], "prompt": row["prompt"], "reward": reward, "cot": cot,
            "dimensional_scores": scores, "overall_score": _number(row.get("overall_score"), where, "overall_score"),
            "uncertainty": _number(row.get("uncertainty"), where, "uncertainty"),
            "parse_error": row.get("parse_error"), "error": row.get("error"),
            "path": _resolve_video(row["video"], path.parent),
        })
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
        missing = {"video_a", "video_b", "prompt", "label", "reward_a", "reward_b", "margin"} - set(reader.fieldnames or [])
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
        items = [(k, v) for k, v in row.items()
                 if k not in ("step", "index", "seed") and isinstance(v, (int, float)) and not isinstance(v, bool)]
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
    - `evals`: the `kind: "eval"` rows of metrics.jsonl (mean reward(s) of fresh samples per step: `eval_reward`,
      or `eval/<name>` per named reward), sorted by step;
    - `samples`: every row of the other JSON-lines files under the directory (the recipes write
      samples/step-N/scores.jsonl) that carries `video` and `prompt` and a `step` (or sits in a folder step-N):
      one fixed-prompt sample: its file, relative to its JSON-lines file; named scores in `scores` ({name: number
      or null}) or as numeric fields; `cot` (or `cots`: {reward name: text}) when the reward wrote one; `index` =
      which fixed prompt and noise; with `path` resolved;
    - `args`: run_args.json or args.json when present."""
    path = Path(path)
    evals = []
    for number, row in _read_json_lines(path / "metrics.jsonl"):
        if row.get("kind") == "eval":
            if "step" not in row:
                raise ReportInputError(f"{path / 'metrics.jsonl'}, line {number}: an eval row without 'step'")
            evals.append(row)
    evals.sort(key=lambda row: row["step"])
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
            samples.append({
                "step": int(step), "video": row["video"], "prompt": row["prompt"],
                "index": row.get("index"), "scores": _sample_scores(row, where), "cot": _sample_cot(row),
                "path": _resolve_video(str(row["video"]), jsonl.parent),
            })
    args = {}
    for name in ("run_args.json", "args.json"):
        if (path / name).is_file():
            args = json.loads((path / name).read_text())
            break
    if not evals and not samples:
        raise ReportInputError(f"{path}: metrics.jsonl has no eval rows and no sample rows were found; nothing to show")
    return {"evals": evals, "samples": samples, "args": args, "path": path}


# ----------------------------------------------------------------------------------------------------------- flags
@dataclasses.dataclass
class Flag:
    """One reward-hacking signal: `kind` is "dimension_drop", "independent_check", "uncertainty" or "phrases";
    `series` the score it is about; `steps` the checkpoints where it holds; `message` says it in words."""

    kind: str
    series: str
    steps: list
    message: str


@dataclasses.dataclass
class Change:
    """The change of a series' mean from the base to one checkpoint and the size that counts as a real change."""

    delta: float
    threshold: float

    @property
    def direction(self) -> int:
        """+1 rose, -1 fell, 0 flat (|delta| <= threshold)."""
        if not math.isfinite(self.delta) or abs(self.delta) <= self.threshold:
            return 0
        return 1 if self.delta > 0 else -1


def _clean(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def change(base, later, z: float = 3.0, min_change: float = 0.0) -> Change:
    """Change from `base` to `later`, each a number (a mean) or a list of per-video values (NaN = no score).
    With per-video values the threshold is max(min_change, z * standard error of the difference of the means)."""
    if isinstance(base, (int, float)) and isinstance(later, (int, float)):
        return Change(float(later) - float(base), min_change)
    a, b = _clean(base), _clean(later)
    if not a or not b:
        return Change(math.nan, min_change)
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)

    def variance(xs, mean):
        return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0

    se = math.sqrt(variance(a, mean_a) / len(a) + variance(b, mean_b) / len(b))
    return Change(mean_b - mean_a, max(min_change, z * se))


def _changes(series: list, z: float, min_change: float) -> list[Change]:
    """Change of every checkpoint (index >= 1) from the base (index 0)."""
    return [change(series[0], later, z, min_change) for later in series[1:]]


def _sustained(steps: list, holds: list[bool]) -> list:
    """The checkpoints (steps[1:]) where a condition holds and still holds at the next checkpoint (or is the last):
    a one-checkpoint blip that the next checkpoint undoes is left out as noise."""
    return [steps[i + 1] for i, ok in enumerate(holds) if ok and (i + 1 == len(holds) or holds[i + 1])]


def dimension_drop_flags(steps: list, total: list, dimensions: dict, z: float = 3.0, min_change: float = 0.0) -> list[Flag]:
    """(a) A dimension falling while the total rises. `total` and each `dimensions[name]` hold one entry per step in
    `steps` (steps[0] = the base model): a mean or a list of per-video values."""
    total_changes = _changes(total, z, min_change)
    flags = []
    for name, series in dimensions.items():
        hits = _sustained(steps, [t.direction > 0 and d.direction < 0
                                  for t, d in zip(total_changes, _changes(series, z, min_change))])
        if hits:
            flags.append(Flag("dimension_drop", name, hits,
                              f"{name} falls while the total reward rises (from the base, at step(s) "
                              f"{_steps_text(hits)})"))
    return flags


def independent_check_flags(steps: list, total: list, checks: dict, z: float = 3.0, min_change: float = 0.0) -> list[Flag]:
    """(b) The reward rising while an independent check (a second reward, the no-CoT student, an analytic reward)
    stays flat or falls; same data layout as `dimension_drop_flags`."""
    total_changes = _changes(total, z, min_change)
    flags = []
    for name, series in checks.items():
        hits = _sustained(steps, [t.direction > 0 and c.direction <= 0 and math.isfinite(c.delta)
                                  for t, c in zip(total_changes, _changes(series, z, min_change))])
        if hits:
            flags.append(Flag("independent_check", name, hits,
                              f"the reward rises but the independent check {name} does not (flat or falling at "
                              f"step(s) {_steps_text(hits)})"))
    return flags


def uncertainty_flags(steps: list, uncertainty: list, z: float = 3.0, min_change: float = 0.0,
                      name: str = UNCERTAINTY) -> list[Flag]:
    """(c) The judge's uncertainty rising from the base."""
    hits = _sustained(steps, [c.direction > 0 for c in _changes(uncertainty, z, min_change)])
    if not hits:
        return []
    return [Flag("uncertainty", name, hits, f"the judge's uncertainty rises (at step(s) {_steps_text(hits)})")]


_ANSWER = re.compile(r"<answer>.*?(</answer>|$)", re.S)
_WORD = re.compile(r"[a-z][a-z'-]*")


def _phrases(text: str, sizes=(2, 3), masked: frozenset = frozenset()) -> set[str]:
    """Word n-grams of a CoT, its answer block left out; no n-gram spans a word of `masked` (the prompt's words,
    which differ between prompts and say nothing about what the judge saw)."""
    words = _WORD.findall(_ANSWER.sub(" ", text.lower()))
    found = set()
    for n in sizes:
        for i in range(len(words) - n + 1):
            gram = words[i : i + n]
            if not masked.intersection(gram):
                found.add(" ".join(gram))
    return found


def _low_cots(samples: list, fraction: float) -> list[tuple[str, frozenset]]:
    """(CoT, masked prompt words) of the lowest-scoring `fraction` (at least one) of `samples`: (score, CoT) or
    (score, CoT, prompt) tuples."""
    kept = sorted((s for s in samples if s[1] and math.isfinite(s[0])), key=lambda item: item[0])
    kept = kept[: max(1, math.ceil(fraction * len(kept)))] if kept else []
    return [(s[1], frozenset(_WORD.findall(s[2].lower())) if len(s) > 2 and s[2] else frozenset()) for s in kept]


def low_score_phrases(base: list, checkpoint: list, fraction: float = 1 / 3, sizes=(2, 3), top: int = 8) -> list[dict]:
    """Phrases of the low-scoring CoTs of a checkpoint against the base's: `base` and `checkpoint` are lists of
    (score, CoT) or (score, CoT, prompt) (the prompt's words are left out of the phrases). Each: {"phrase",
    "share" (of the checkpoint's low CoTs using it), "base_share", "rise"}, the `top` by rise then share, leaving out
    a phrase inside a longer listed one with the same share."""
    low_base, low_ckpt = _low_cots(base, fraction), _low_cots(checkpoint, fraction)
    if not low_ckpt:
        return []
    count_ckpt = Counter(p for cot, masked in low_ckpt for p in _phrases(cot, sizes, masked))
    count_base = Counter(p for cot, masked in low_base for p in _phrases(cot, sizes, masked))
    rows = []
    for phrase, count in count_ckpt.items():
        share = count / len(low_ckpt)
        base_share = count_base[phrase] / len(low_base) if low_base else 0.0
        rows.append({"phrase": phrase, "share": share, "base_share": base_share, "rise": share - base_share})
    rows.sort(key=lambda r: (-r["rise"], -r["share"], -len(r["phrase"]), r["phrase"]))
    kept = []
    for row in rows:
        if any(row["phrase"] in other["phrase"] and abs(row["share"] - other["share"]) < 1e-9 for other in kept):
            continue
        kept.append(row)
        if len(kept) == top:
            break
    return kept


def phrase_flags(per_step: dict, fraction: float = 1 / 3, min_rise: float = 0.5, sizes=(2, 3)) -> tuple[list[Flag], dict]:
    """(d) For every checkpoint, the phrases of its low-scoring CoTs against the base's (the smallest step of
    `per_step`, a {step: [(score, CoT) or (score, CoT, prompt), ...]}); flags each phrase whose share rises by at least `min_rise`.
    Returns (flags, {step: low_score_phrases table})."""
    steps = sorted(per_step)
    if len(steps) < 2:
        return [], {}
    base = per_step[steps[0]]
    tables, risen = {}, {}
    for step in steps[1:]:
        tables[step] = low_score_phrases(base, per_step[step], fraction, sizes)
        for row in tables[step]:
            if row["rise"] >= min_rise:
                risen.setdefault(row["phrase"], []).append(step)
    # one flag per phrase: overlapping n-grams flagged at the same steps merge into one span ("a b c" + "b c d" ->
    # "a b c d"), and a phrase inside a longer flagged one at the same steps is left out
    by_steps = {}
    for phrase, hits in risen.items():
        by_steps.setdefault(tuple(hits), []).append(phrase.split())
    flags = []
    for hits, grams in by_steps.items():
        for words in _merge_overlapping(grams):
            phrase = " ".join(words)
            flags.append(Flag("phrases", phrase, list(hits), f"low-scoring CoTs say \"{phrase}\" far more often than "
                              f"the base's (step(s) {_steps_text(list(hits))})"))
    flags.sort(key=lambda f: (f.steps, f.series))
    return flags, tables


def _merge_overlapping(grams: list[list[str]]) -> list[list[str]]:
    """Chain word n-grams where one's tail is the next one's head (all but one word of the shorter one), drop
    contained ones."""
    spans = [list(g) for g in grams]
    merged = True
    while merged:
        merged = False
        for i, a in enumerate(spans):
            for j, b in enumerate(spans):
                k = min(len(a), len(b)) - 1  # overlap of all but one word of the shorter n-gram
                if i != j and k >= 1 and a[len(a) - k:] == b[:k]:
                    spans[i] = a + b[k:]
                    del spans[j]
                    merged = True
                    break
            if merged:
                break
    text = [" ".join(s) for s in spans]
    return [s for s, t in zip(spans, text) if not any(t != u and f" {t} " in f" {u} " for u in text)]


def _steps_text(steps: list) -> str:
    return ", ".join(str(s) for s in steps)


def _series_by_step(samples: list, steps: list, name: str) -> list:
    return [[s["scores"].get(name, math.nan) for s in samples if s["step"] == step] for step in steps]


def run_series(run: dict) -> tuple[list, dict]:
    """(steps, {name: per-step entries}) of a run: per-video values from its samples when it has them (the names
    of their scores), else the means of its metrics.jsonl eval rows (`eval_reward` -> "reward", `eval/<n>` -> n)."""
    if run["samples"]:
        steps = sorted({s["step"] for s in run["samples"]})
        names = list(dict.fromkeys(name for s in run["samples"] for name in s["scores"]))
        return steps, {name: _series_by_step(run["samples"], steps, name) for name in names}
    steps = [row["step"] for row in run["evals"]]
    names = []
    for row in run["evals"]:
        for key in row:
            if (key == "eval_reward" or key.startswith("eval/")) and not key.endswith("_std") and key not in names:
                names.append(key)
    series = {}
    for key in names:
        label = "reward" if key == "eval_reward" else key[len("eval/"):]
        series[label] = [row.get(key, math.nan) for row in run["evals"]]
    return steps, series


def primary_name(names: list, primary: str | None = None) -> str:
    """The reward the run optimised: `primary` when given, else "descore", else the first name."""
    if primary is not None:
        if primary not in names:
            raise ReportInputError(f"--reward {primary!r}: the run has no such score (it has {', '.join(names)})")
        return primary
    return "descore" if "descore" in names else names[0]


def hacking_flags(run: dict, primary: str | None = None, independent=None, z: float = 3.0, min_change: float = 0.0,
                  phrase_fraction: float = 1 / 3, phrase_min_rise: float = 0.5) -> dict:
    """All four flags of a loaded run (`load_run`). `primary`: the optimised reward (default: "descore" or the first
    score); `independent`: names of the independent checks (default: every score that is not the primary, not one
    of its `descore:` sub-scores and not the uncertainty). Returns {"steps", "series", "primary", "independent",
    "dimensions", "flags": [Flag], "phrases": {step: table}}."""
    steps, series = run_series(run)
    if not series:
        raise ReportInputError(f"{run['path']}: the run has no named scores to check")
    primary = primary_name(list(series), primary)
    dimensions = {n: v for n, v in series.items()
                  if n.startswith(DIMENSION_PREFIX) and n not in (UNCERTAINTY, OVERALL) and n != primary}
    if independent is None:
        independent = [n for n in series if n != primary and not n.startswith(DIMENSION_PREFIX) and n != UNCERTAINTY]
    else:
        unknown = [n for n in independent if n not in series]
        if unknown:
            raise ReportInputError(f"--check {', '.join(unknown)}: the run has no such score (it has {', '.join(series)})")
    flags = []
    if len(steps) >= 2:
        flags += dimension_drop_flags(steps, series[primary], dimensions, z, min_change)
        flags += independent_check_flags(steps, series[primary], {n: series[n] for n in independent}, z, min_change)
        if UNCERTAINTY in series:
            flags += uncertainty_flags(steps, series[UNCERTAINTY], z, min_change)
    per_step = {}
    for sample in run["samples"]:
        if sample["cot"]:
            per_step.setdefault(sample["step"], []).append(
                (sample["scores"].get(primary, math.nan), sample["cot"], sample["prompt"]))
    phrase_hits, tables = phrase_flags(per_step, phrase_fraction, phrase_min_rise) if per_step else ([], {})
    return {"steps": steps, "series": series, "primary": primary, "independent": list(independent),
            "dimensions": list(dimensions), "flags": flags + phrase_hits, "phrases": tables}


# ----------------------------------------------------------------------------------------------------------- media
class _Media:
    """Copies videos into OUT/media/ (one copy per source file), re-encoding what browsers may not play."""

    def __init__(self, output_dir: Path):
        self.dir = output_dir / "media"
        self.copied: dict[Path, str] = {}

    def add(self, path: Path | None) -> str | None:
        if path is None:
            return None
        if path in self.copied:
            return self.copied[path]
        self.dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        name = f"{digest}_{re.sub(r'[^A-Za-z0-9._-]', '_', path.stem)[:40]}.mp4"
        target = self.dir / name
        if _browser_playable(path):
            shutil.copyfile(path, target)
        else:
            _reencode(path, target)
        self.copied[path] = f"media/{name}"
        return self.copied[path]


def _browser_playable(path: Path) -> bool:
    """An mp4 with H.264 video in yuv420p (what Chromium and Firefox play everywhere)."""
    import av

    if path.suffix.lower() != ".mp4":
        return False
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return stream.codec_context.name == "h264" and stream.codec_context.format.name == "yuv420p"
    except Exception:  # noqa: BLE001 - anything PyAV cannot read is re-encoded (and fails there with the reason)
        return False


def _reencode(source: Path, target: Path) -> None:
    import numpy as np

    from descore_plugin.data.video import write_video

    import av

    frames, fps = [], 8.0
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        if stream.average_rate:
            fps = float(stream.average_rate)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ReportInputError(f"{source}: no video frames")
    array = np.stack(frames)
    array = array[:, : array.shape[1] // 2 * 2, : array.shape[2] // 2 * 2]
    write_video(target, array, fps=fps)


# ----------------------------------------------------------------------------------------------------------- html
_CSS = """
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d232b; --muted:#5f6b7a; --line:#dde2e8; --accent:#2f6fdf;
        --bad:#c8372d; --good:#1f8a4c; --warn:#b26b00; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
header { background:#1d2733; color:#fff; padding:18px 28px; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header p { margin:4px 0 0; color:#b9c4d0; font-size:13px; }
main { padding:20px 28px 40px; max-width:1400px; }
h2 { font-size:16px; margin:26px 0 10px; }
.tiles { display:flex; gap:12px; flex-wrap:wrap; }
.tile { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 16px; min-width:150px; }
.tile .v { font-size:24px; font-weight:650; }
.tile .k { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; background:var(--card); border:1px solid var(--line); }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#eef1f5; font-weight:600; font-size:12px; color:#39424e; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
.controls { display:flex; gap:10px; align-items:center; flex-wrap:wrap; background:var(--card); border:1px solid var(--line);
            border-radius:8px; padding:10px 12px; margin-bottom:14px; }
.controls label { color:var(--muted); font-size:12px; }
.controls select, .controls input { font:inherit; padding:3px 6px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(330px, 1fr)); gap:14px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px; display:flex; gap:12px; }
.card.error { border-color:var(--bad); }
video { width:168px; height:168px; background:#000; border-radius:4px; image-rendering:pixelated; flex:none; object-fit:contain; }
.meta { min-width:0; flex:1; overflow-wrap:anywhere; }
.prompt { font-weight:600; margin-bottom:4px; }
.reward { font-size:18px; font-weight:650; }
.muted { color:var(--muted); font-size:12px; }
.dims { display:flex; flex-wrap:wrap; gap:4px; margin:6px 0; }
.dim { background:#eef1f5; border-radius:10px; padding:1px 8px; font-size:12px; }
.dim.s0 { background:#f9dcd9; } .dim.s1 { background:#fbeccc; } .dim.s2 { background:#d8f0df; }
.cot { white-space:pre-wrap; font:12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; background:#f3f5f8;
       border-radius:4px; padding:6px 8px; max-height:170px; overflow:auto; margin:6px 0 0; }
.pair { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px; margin-bottom:14px; }
.pair .sides { display:grid; grid-template-columns:1fr 1fr; gap:14px; }
.side { display:flex; gap:10px; }
.side.preferred .reward::after { content:"  human choice"; font-size:11px; color:var(--good); font-weight:600; }
.flag { border-left:4px solid var(--bad); background:#fff4f3; padding:8px 12px; margin:6px 0; border-radius:4px; }
.flag b { color:var(--bad); }
.ok { border-left:4px solid var(--good); background:#f1faf4; padding:8px 12px; border-radius:4px; }
.grid { overflow-x:auto; }
.grid table td { text-align:center; }
.grid video { width:128px; height:128px; }
.charts { display:flex; flex-wrap:wrap; gap:14px; }
.chart { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px; }
.missing { width:168px; height:168px; display:flex; align-items:center; justify-content:center; text-align:center;
           background:#eee; color:var(--muted); font-size:12px; border-radius:4px; flex:none; padding:8px; }
footer { color:var(--muted); font-size:12px; margin-top:30px; }
"""

_SCORES_JS = """
(function () {
  const cards = Array.from(document.querySelectorAll('.card'));
  const box = document.getElementById('cards');
  const key = document.getElementById('sort-key'), order = document.getElementById('sort-order');
  const fkey = document.getElementById('filter-key'), fmin = document.getElementById('filter-min');
  const fmax = document.getElementById('filter-max'), text = document.getElementById('filter-text');
  const shown = document.getElementById('shown');
  function value(card, name) { const v = parseFloat(card.dataset[name]); return isNaN(v) ? null : v; }
  function apply() {
    const k = key.value, desc = order.value === 'desc', fk = fkey.value;
    const lo = fmin.value === '' ? -Infinity : parseFloat(fmin.value);
    const hi = fmax.value === '' ? Infinity : parseFloat(fmax.value);
    const needle = text.value.trim().toLowerCase();
    cards.sort(function (a, b) {
      const x = value(a, k), y = value(b, k);
      if (x === null && y === null) return 0; if (x === null) return 1; if (y === null) return -1;
      return desc ? y - x : x - y;
    });
    let count = 0;
    for (const card of cards) {
      const v = value(card, fk);
      const inRange = (lo === -Infinity && hi === Infinity) || (v !== null && v >= lo && v <= hi);
      const matches = !needle || card.textContent.toLowerCase().includes(needle);
      card.style.display = inRange && matches ? '' : 'none';
      if (inRange && matches) count += 1;
      box.appendChild(card);
    }
    shown.textContent = count + ' of ' + cards.length + ' shown';
  }
  for (const el of [key, order, fkey, fmin, fmax, text]) {
    el.addEventListener('input', apply); el.addEventListener('change', apply);
  }
  apply();
})();
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _video_tag(src: str | None, original: str, size: str = "") -> str:
    if src is None:
        return f'<div class="missing">video not found:<br>{_esc(original)}</div>'
    # playing in a loop, controls only under the pointer (they would hide a third of a small video)
    return (f'<video src="{_esc(src)}" autoplay loop muted playsinline preload="auto" title="{_esc(original)}" '
            f'onmouseenter="this.controls=true" onmouseleave="this.controls=false"{size}></video>')


def _page(title: str, subtitle: str, body: str, script: str = "") -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(title)}</title>"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<style>{_CSS}</style></head><body><header><h1>{_esc(title)}</h1><p>{_esc(subtitle)}</p></header>"
        f"<main>{body}<footer>Written by descore report. Static page: the videos are in media/ next to it.</footer>"
        f"</main>{f'<script>{script}</script>' if script else ''}</body></html>\n"
    )


_PALETTE = ["#2f6fdf", "#d9632b", "#1f8a4c", "#8e44ad", "#c8372d", "#0f9aa8", "#b26b00", "#5f6b7a", "#d63384"]


def svg_lines(title: str, steps: list, lines: dict, width: int = 420, height: int = 240, y_label: str = "") -> str:
    """An inline SVG line chart: `lines` = {name: [mean per step]} (NaN gaps are skipped)."""
    points = [v for values in lines.values() for v in values if v is not None and math.isfinite(v)]
    left, right, top, bottom = 52, 12, 28, 40
    if not points or not steps:
        return ""
    lo, hi = min(points), max(points)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    x0, x1 = min(steps), max(steps)
    span = (x1 - x0) or 1

    def x(step):
        return left + (step - x0) / span * (width - left - right) if x1 != x0 else (left + width - right) / 2

    def y(value):
        return top + (hi - value) / (hi - lo) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18 * ((len(lines) + 2) // 3)}"'
             f' role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="600" fill="#1d232b">{_esc(title)}</text>']
    # enough decimals that neighbouring ticks differ (a quarter of the range apart), whatever the scale
    decimals = max(0, 1 - math.floor(math.log10((hi - lo) / 4)))
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#e6e9ee"/>')
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end" fill="#5f6b7a">'
                     f'{value:.{decimals}f}</text>')
    for step in steps:
        parts.append(f'<text x="{x(step):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle" '
                     f'fill="#5f6b7a">{step}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - bottom + 30}" font-size="11" '
                 f'text-anchor="middle" fill="#5f6b7a">step{" — " + _esc(y_label) if y_label else ""}</text>')
    for index, (name, values) in enumerate(lines.items()):
        colour = _PALETTE[index % len(_PALETTE)]
        coords = [(x(s), y(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(v)]
        if len(coords) > 1:
            path = " ".join(f"{'M' if i == 0 else 'L'}{cx:.1f},{cy:.1f}" for i, (cx, cy) in enumerate(coords))
            parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for cx, cy in coords:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}"/>')
        lx, ly = left + (index % 3) * ((width - left) / 3), height + 4 + 18 * (index // 3)
        parts.append(f'<rect x="{lx:.1f}" y="{ly}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{lx + 14:.1f}" y="{ly + 9}" font-size="11" fill="#1d232b">{_esc(name[:28])}</text>')
    parts.append("</svg>")
    return '<div class="chart">' + "".join(parts) + "</div>"


def svg_histogram(title: str, groups: dict, bins: int = 20, width: int = 560, height: int = 260) -> str:
    """An inline SVG histogram of values in `groups` ({name: values}), stacked per bin."""
    values = [v for vs in groups.values() for v in vs if math.isfinite(v)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    width_bin = (hi - lo) / bins
    counts = {name: [0] * bins for name in groups}
    for name, vs in groups.items():
        for v in vs:
            if math.isfinite(v):
                counts[name][min(bins - 1, int((v - lo) / width_bin))] += 1
    peak = max(sum(counts[n][i] for n in groups) for i in range(bins)) or 1
    left, right, top, bottom = 40, 12, 28, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="600" fill="#1d232b">{_esc(title)}</text>']
    for i in range(bins):
        base = 0
        for index, name in enumerate(groups):
            count = counts[name][i]
            if not count:
                continue
            bar_h = count / peak * plot_h
            y = top + plot_h - (base + count) / peak * plot_h
            parts.append(f'<rect x="{left + i * plot_w / bins + 1:.1f}" y="{y:.1f}" width="{plot_w / bins - 2:.1f}" '
                         f'height="{bar_h:.1f}" fill="{_PALETTE[index % len(_PALETTE)]}"><title>{_esc(name)}: '
                         f'{count}</title></rect>')
            base += count
    if lo < 0 < hi:
        zx = left + (0 - lo) / (hi - lo) * plot_w
        parts.append(f'<line x1="{zx:.1f}" x2="{zx:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#1d232b" '
                     f'stroke-dasharray="4 3"/>')
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        parts.append(f'<text x="{left + i * plot_w / 4:.1f}" y="{top + plot_h + 14}" font-size="10" '
                     f'text-anchor="middle" fill="#5f6b7a">{value:.3g}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + 8}" font-size="10" text-anchor="end" fill="#5f6b7a">{peak}</text>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#5f6b7a"/>')
    for index, name in enumerate(groups):
        lx = left + index * 170
        parts.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{_PALETTE[index % len(_PALETTE)]}"/>'
                     f'<text x="{lx + 14}" y="{height - 5}" font-size="11" fill="#1d232b">{_esc(name)}</text>')
    parts.append("</svg>")
    return '<div class="chart">' + "".join(parts) + "</div>"


def _dims_html(scores: dict) -> str:
    if not scores:
        return ""
    chips = []
    for name, value in scores.items():
        level = f" s{int(value)}" if value is not None and float(value).is_integer() and 0 <= value <= 2 else ""
        chips.append(f'<span class="dim{level}">{_esc(name)} {_fmt(value, 2) if not float(value).is_integer() else int(value)}</span>'
                     if value is not None else f'<span class="dim">{_esc(name)} –</span>')
    return '<div class="dims">' + "".join(chips) + "</div>"


def _scores_page(rows: list, media: _Media, source: Path) -> str:
    dimensions = list(dict.fromkeys(name for row in rows for name in row["dimensional_scores"]))
    keys = ["reward", "uncertainty"] + dimensions
    has_uncertainty = any(row["uncertainty"] is not None for row in rows)
    if not has_uncertainty:
        keys.remove("uncertainty")
    cards = []
    for row in rows:
        data = {"reward": row["reward"], "uncertainty": row["uncertainty"], **row["dimensional_scores"]}
        attributes = " ".join(f'data-{_data_name(k)}="{"" if data.get(k) is None else data[k]}"' for k in keys)
        video = _video_tag(media.add(row["path"]), row["video"])
        if row["error"]:
            body = f'<div class="reward" style="color:var(--bad)">error</div><div>{_esc(row["error"])}</div>'
        else:
            uncertainty = f' <span class="muted">± {_fmt(row["uncertainty"])}</span>' if row["uncertainty"] is not None else ""
            parse = (f'<div class="muted">CoT not parsed: {_esc(row["parse_error"])}</div>' if row["parse_error"] else "")
            body = (f'<div class="reward">{_fmt(row["reward"], 4)}{uncertainty}</div>'
                    f'{_dims_html(row["dimensional_scores"])}{parse}'
                    + (f'<div class="cot">{_esc(row["cot"].strip())}</div>' if row["cot"] else
                       '<div class="muted">scored without a CoT</div>'))
        cards.append(f'<div class="card{" error" if row["error"] else ""}" {attributes}>{video}<div class="meta">'
                     f'<div class="prompt">{_esc(row["prompt"])}</div><div class="muted">{_esc(row["video"])}</div>'
                     f'{body}</div></div>')
    options = "".join(f'<option value="{_data_key(k)}">{_esc(k)}</option>' for k in keys)
    rewards = [row["reward"] for row in rows if row["reward"] is not None and not row["error"]]
    errors = sum(1 for row in rows if row["error"])
    tiles = _tiles([("videos", len(rows)), ("mean reward", _fmt(sum(rewards) / len(rewards), 4) if rewards else "–"),
                    ("min / max", f"{_fmt(min(rewards), 2)} / {_fmt(max(rewards), 2)}" if rewards else "–"),
                    ("errors", errors)])
    controls = (
        '<div class="controls"><label>sort by</label><select id="sort-key">' + options + '</select>'
        '<select id="sort-order"><option value="desc">highest first</option><option value="asc">lowest first</option>'
        '</select><label>filter</label><select id="filter-key">' + options + '</select>'
        '<input id="filter-min" type="number" step="any" placeholder="min" size="6">'
        '<input id="filter-max" type="number" step="any" placeholder="max" size="6">'
        '<input id="filter-text" type="search" placeholder="search prompt or CoT">'
        '<span class="muted" id="shown"></span></div>'
    )
    body = tiles + "<h2>Videos</h2>" + controls + '<div class="cards" id="cards">' + "".join(cards) + "</div>"
    return _page("DeScore scores", f"{source} — {len(rows)} videos", body, _SCORES_JS)


def _data_name(key: str) -> str:
    """The HTML data-* attribute name of a sort key (lower case, dashes)."""
    return "k-" + re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def _data_key(key: str) -> str:
    """The dataset property the script reads for `_data_name(key)` (dashes to camelCase, as the DOM does)."""
    return re.sub(r"-([a-z0-9])", lambda m: m.group(1).upper(), _data_name(key))


def _tiles(items) -> str:
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="v">{_esc(v)}</div><div class="k">{_esc(k)}</div></div>' for k, v in items
    ) + "</div>"


def _evaluation_page(evaluation: dict, media: _Media, source: Path) -> str:
    rows = evaluation["rows"]
    wrong = [row for row in rows if row["correct"] is False]
    without = evaluation.get("accuracy_without_ties")
    tiles = _tiles([
        ("accuracy without ties", _fmt(without) if without is not None else "n/a (all ties)"),
        ("accuracy with ties", _fmt(evaluation["accuracy_with_ties"])),
        ("pairs", f'{evaluation["num_pairs"]} ({evaluation.get("num_pairs_without_ties", "?")} without ties)'),
        ("scored with", "own CoT" if evaluation.get("think") else "no CoT"),
        ("wrong pairs", len(wrong)),
    ])
    body = tiles
    slices = evaluation.get("accuracy_without_ties_by_slice") or {}
    if slices:
        counts = Counter(row.get("slice") or "untagged" for row in rows if row["correct"] is not None)
        body += "<h2>Accuracy by slice (without ties)</h2><table><tr><th>slice</th><th>accuracy</th><th>pairs</th></tr>"
        for name, value in slices.items():
            count = sum(counts.values()) if name == "all" else counts.get(name, "")
            body += f'<tr><td>{_esc(name)}</td><td class="num">{_fmt(value)}</td><td class="num">{count}</td></tr>'
        body += "</table>"
    groups = {"right": [r["margin"] if r["label"] == "A" else -r["margin"] for r in rows if r["correct"] is True],
              "wrong": [r["margin"] if r["label"] == "A" else -r["margin"] for r in rows if r["correct"] is False]}
    ties = [abs(r["margin"]) for r in rows if r["correct"] is None]
    if ties:
        groups["human tie (|margin|)"] = ties
    body += "<h2>Reward margins</h2>" + svg_histogram(
        "reward(preferred) - reward(other); right of 0 = the model agrees", groups)
    body += f"<h2>Pairs the model got wrong ({len(wrong)})</h2>"
    if not wrong:
        body += '<div class="ok">The model ranks every non-tie pair the way humans did.</div>'
    for row in sorted(wrong, key=lambda r: abs(r["margin"]), reverse=True):
        sides = []
        for side in ("a", "b"):
            cot = row.get(f"cot_{side}")
            sides.append(
                f'<div class="side{" preferred" if row["label"] == side.upper() else ""}">'
                f'{_video_tag(media.add(row[f"path_{side}"]), row[f"video_{side}"])}<div class="meta">'
                f'<div class="muted">video {side.upper()}: {_esc(row[f"video_{side}"])}</div>'
                f'<div class="reward">{_fmt(row[f"reward_{side}"], 4)}</div>'
                + (f'<div class="cot">{_esc(cot.strip())}</div>' if cot else '<div class="muted">no CoT</div>')
                + "</div></div>")
        body += (f'<div class="pair"><div class="prompt">{_esc(row["prompt"])}</div><div class="muted">human choice '
                 f'{_esc(row["label"])}, slice {_esc(row.get("slice") or "–")}, margin A - B = {_fmt(row["margin"], 4)}'
                 f'</div><div class="sides">{"".join(sides)}</div></div>')
    return _page("DeScore evaluation", str(source), body)


def _run_page(run: dict, analysis: dict, media: _Media, source: Path) -> str:
    steps, series, primary = analysis["steps"], analysis["series"], analysis["primary"]
    flags = analysis["flags"]
    means = {name: [_mean(v) for v in values] for name, values in series.items()}
    args = run["args"]
    described = ", ".join(f"{k} {args[k]}" for k in ("reward_model", "reward", "max_steps", "learning_rate")
                          if k in args and args[k] is not None)
    first, last = means[primary][0], means[primary][-1]
    tiles = _tiles([("optimised reward", primary), (f"{primary} at step {steps[0]}", _fmt(first, 4)),
                    (f"{primary} at step {steps[-1]}", _fmt(last, 4)), ("checkpoints", max(0, len(steps) - 1)),
                    ("hacking flags", len(flags))])
    body = tiles + "<h2>Reward-hacking flags</h2>"
    if flags:
        names = {"dimension_drop": "dimension falls while the reward rises",
                 "independent_check": "independent check disagrees", "uncertainty": "uncertainty rises",
                 "phrases": "new phrase in low-scoring CoTs"}
        body += "".join(f'<div class="flag"><b>{_esc(names[f.kind])}</b> — {_esc(f.message)}</div>' for f in flags)
    else:
        body += ('<div class="ok">No flag: no dimension falls while the reward rises, no independent check disagrees, '
                 'the uncertainty does not rise, and no new phrase dominates the low-scoring CoTs.</div>')
    checked = analysis["independent"]
    body += (f'<p class="muted">Compared with the base model (step {steps[0]}) at each checkpoint. Independent checks: '
             f'{_esc(", ".join(checked)) if checked else "none in this run"}.</p>')
    charts = [svg_lines(f"{primary} (optimised)", steps, {primary: means[primary]}, y_label="mean of fixed-prompt samples")]
    if analysis["dimensions"]:
        charts.append(svg_lines("per-dimension scores", steps,
                                {n[len(DIMENSION_PREFIX):]: means[n] for n in analysis["dimensions"]}))
    for name in checked:  # one chart each: the checks have their own scales
        charts.append(svg_lines(f"{name} (independent check)", steps, {name: means[name]}))
    if UNCERTAINTY in means:
        charts.append(svg_lines("judge uncertainty", steps, {"uncertainty": means[UNCERTAINTY]}))
    body += "<h2>Curves</h2><div class=\"charts\">" + "".join(charts) + "</div>"
    samples = run["samples"]
    if samples:
        body += "<h2>Fixed-prompt samples: base model and checkpoints</h2>" + _grid(samples, steps, primary, media)
    else:
        body += ('<h2>Fixed-prompt samples</h2><div class="muted">This run wrote no sample videos (only the mean '
                 'rewards in metrics.jsonl), so there is no grid and no CoT phrases.</div>')
    if analysis["phrases"]:
        body += "<h2>Phrases of the low-scoring CoTs, against the base model's</h2><div class=\"charts\">"
        for step, table in analysis["phrases"].items():
            body += (f'<table><tr><th colspan="3">step {step}</th></tr><tr><th>phrase</th><th>share</th>'
                     f'<th>base</th></tr>')
            risen = [r for r in table if r["rise"] > 0][:6]
            body += "".join(f'<tr><td>{_esc(r["phrase"])}</td><td class="num">{r["share"]:.0%}</td>'
                            f'<td class="num">{r["base_share"]:.0%}</td></tr>' for r in risen)
            if not risen:
                body += '<tr><td colspan="3" class="muted">no phrase more frequent than in the base</td></tr>'

            body += "</table>"
        body += "</div>"
    return _page("Post-training run", f"{source}" + (f" — {described}" if described else ""), body)


def _mean(values):
    if isinstance(values, (int, float)):
        return float(values)
    clean = _clean(values)
    return sum(clean) / len(clean) if clean else math.nan


def _grid(samples: list, steps: list, primary: str, media: _Media) -> str:
    keys = list(dict.fromkeys((s["index"] if s["index"] is not None else s["prompt"], s["prompt"])
                              for s in sorted(samples, key=lambda s: (s["step"], str(s["index"])))))
    cell = {(s["index"] if s["index"] is not None else s["prompt"], s["step"]): s for s in samples}
    head = "".join(f"<th>{'base' if i == 0 else 'step ' + str(step)}</th>" for i, step in enumerate(steps))
    repeated = Counter(prompt for _, prompt in keys)
    rows = []
    for key, prompt in keys:
        label = f"{_esc(prompt)} <span class=\"muted\">(noise {key})</span>" if repeated[prompt] > 1 else _esc(prompt)
        cells = []
        for step in steps:
            sample = cell.get((key, step))
            if sample is None:
                cells.append("<td class=\"muted\">–</td>")
                continue
            score = sample["scores"].get(primary)
            cot = (f'<details><summary class="muted">CoT</summary><div class="cot" style="text-align:left;'
                   f'max-width:260px">{_esc(sample["cot"].strip())}</div></details>' if sample["cot"] else "")
            cells.append(f'<td>{_video_tag(media.add(sample["path"]), sample["video"])}<div>{_esc(primary)} '
                         f'<b>{_fmt(score, 3)}</b></div>{cot}</td>')
        rows.append(f'<tr><td style="text-align:left;max-width:180px"><b>{label}</b></td>{"".join(cells)}</tr>')
    return f'<div class="grid"><table><tr><th>prompt</th>{head}</tr>{"".join(rows)}</table></div>'


def write_report(path, output_dir, kind: str | None = None, reward: str | None = None, checks=None,
                 z: float = 3.0, min_change: float = 0.0) -> Path:
    """Write OUTPUT_DIR/index.html for `path` (kind detected unless given) and return its path. `reward` and
    `checks`: for a run, the optimised reward and the independent checks (see `hacking_flags`)."""
    path, output_dir = Path(path), Path(output_dir)
    kind = kind or detect_kind(path)
    if kind not in KINDS:
        raise ReportInputError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    media = _Media(output_dir)
    if kind == "scores":
        page = _scores_page(load_scored_set(path), media, path)
    elif kind == "evaluation":
        page = _evaluation_page(load_evaluation(path), media, path)
    else:
        run = load_run(path)
        page = _run_page(run, hacking_flags(run, reward, checks, z=z, min_change=min_change), media, path)
    index = output_dir / "index.html"
    tmp = output_dir / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index
