"""The reward-hacking flags of a post-training run (see the package docstring): every checkpoint is compared with the
base model on the same fixed prompts and noise."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter

from descore_plugin.modeling.prompt import parse_answer
from descore_plugin.report.inputs import DIMENSION_PREFIX, OVERALL, UNCERTAINTY, ReportInputError

__all__ = [
    "Flag",
    "Change",
    "change",
    "dimension_drop_flags",
    "independent_check_flags",
    "uncertainty_flags",
    "cot_parse_flags",
    "phrase_flags",
    "low_score_phrases",
    "run_series",
    "primary_name",
    "hacking_flags",
]


@dataclasses.dataclass
class Flag:
    """One reward-hacking signal: `kind` is "dimension_drop", "independent_check", "uncertainty", "cot_parse" or
    "phrases";
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


def dimension_drop_flags(
    steps: list, total: list, dimensions: dict, z: float = 3.0, min_change: float = 0.0
) -> list[Flag]:
    """(a) A dimension falling while the total rises. `total` and each `dimensions[name]` hold one entry per step in
    `steps` (steps[0] = the base model): a mean or a list of per-video values."""
    total_changes = _changes(total, z, min_change)
    flags = []
    for name, series in dimensions.items():
        hits = _sustained(
            steps, [t.direction > 0 and d.direction < 0 for t, d in zip(total_changes, _changes(series, z, min_change))]
        )
        if hits:
            flags.append(
                Flag(
                    "dimension_drop",
                    name,
                    hits,
                    f"{name} falls while the total reward rises (from the base, at step(s) {_steps_text(hits)})",
                )
            )
    return flags


def independent_check_flags(
    steps: list, total: list, checks: dict, z: float = 3.0, min_change: float = 0.0
) -> list[Flag]:
    """(b) The reward rising while an independent check (a second reward, the no-CoT student, an analytic reward)
    stays flat or falls; same data layout as `dimension_drop_flags`."""
    total_changes = _changes(total, z, min_change)
    flags = []
    for name, series in checks.items():
        hits = _sustained(
            steps,
            [
                t.direction > 0 and c.direction <= 0 and math.isfinite(c.delta)
                for t, c in zip(total_changes, _changes(series, z, min_change))
            ],
        )
        if hits:
            flags.append(
                Flag(
                    "independent_check",
                    name,
                    hits,
                    f"the reward rises but the independent check {name} does not (flat or falling at "
                    f"step(s) {_steps_text(hits)})",
                )
            )
    return flags


def uncertainty_flags(
    steps: list, uncertainty: list, z: float = 3.0, min_change: float = 0.0, name: str = UNCERTAINTY
) -> list[Flag]:
    """(c) The judge's uncertainty rising from the base."""
    hits = _sustained(steps, [c.direction > 0 for c in _changes(uncertainty, z, min_change)])
    if not hits:
        return []
    return [Flag("uncertainty", name, hits, f"the judge's uncertainty rises (at step(s) {_steps_text(hits)})")]


def cot_parse_flags(steps: list, parsed: list, z: float = 3.0, min_change: float = 0.0) -> list[Flag]:
    """(d) Fewer of the judge's CoTs parsing than on the base model's samples. DeScore's head reads the CoT, so the
    score of a CoT that broke can be anything (a generator can be rewarded for breaking the judge's reasoning).
    `parsed`: per step, 1.0 for each CoT whose <answer> block parses, 0.0 for each that does not."""
    hits = _sustained(steps, [c.direction < 0 for c in _changes(parsed, z, min_change)])
    if not hits:
        return []
    share = {step: sum(values) / len(values) for step, values in zip(steps, parsed) if values}
    return [
        Flag(
            "cot_parse",
            "cot_parse_rate",
            hits,
            f"fewer of the judge's CoTs parse than on the base's samples ({share[steps[0]]:.0%} at step {steps[0]}, "
            f"{share[hits[-1]]:.0%} at step {hits[-1]}; at step(s) {_steps_text(hits)}): the head's score of a broken "
            f"CoT means little; look at the videos, and consider training with --unparsed-cot nan",
        )
    ]


def parsed_cots_by_step(samples: list, steps: list) -> list:
    """Per step, 1.0 / 0.0 for each sample's CoT that does / does not parse (samples without a CoT left out)."""
    return [
        [0.0 if parse_answer(s["cot"]).error else 1.0 for s in samples if s["step"] == step and s.get("cot")]
        for step in steps
    ]


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


def phrase_flags(
    per_step: dict, fraction: float = 1 / 3, min_rise: float = 0.5, sizes=(2, 3)
) -> tuple[list[Flag], dict]:
    """(e) For every checkpoint, the phrases of its low-scoring CoTs against the base's (the smallest step of
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
            flags.append(
                Flag(
                    "phrases",
                    phrase,
                    list(hits),
                    f'low-scoring CoTs say "{phrase}" far more often than '
                    f"the base's (step(s) {_steps_text(list(hits))})",
                )
            )
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
                if i != j and k >= 1 and a[len(a) - k :] == b[:k]:
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
            if (
                (key == "eval_reward" or key.startswith("eval/"))
                and not key.endswith("_std")
                and key not in ("eval/num_items", "eval/cot_parse_rate")  # counts, not scores
                and key not in names
            ):
                names.append(key)
    series = {}
    for key in names:
        label = "reward" if key == "eval_reward" else key[len("eval/") :]
        series[label] = [row.get(key, math.nan) for row in run["evals"]]
    return steps, series


def primary_name(names: list, primary: str | None = None) -> str:
    """The reward the run optimised: `primary` when given, else "descore", else the first name."""
    if primary is not None:
        if primary not in names:
            raise ReportInputError(f"--reward {primary!r}: the run has no such score (it has {', '.join(names)})")
        return primary
    return "descore" if "descore" in names else names[0]


def hacking_flags(
    run: dict,
    primary: str | None = None,
    independent=None,
    z: float = 3.0,
    min_change: float = 0.0,
    phrase_fraction: float = 1 / 3,
    phrase_min_rise: float = 0.5,
) -> dict:
    """All five flags of a loaded run (`load_run`). `primary`: the optimised reward (default: the first --reward of
    its run_args.json, else "descore", else the first score); `independent`: names of the independent checks
    (default: every score that is not a trained reward, not a `descore:` sub-score and not the uncertainty).
    Returns {"steps", "series", "primary", "independent", "dimensions", "flags": [Flag], "phrases": {step: table}}."""
    steps, series = run_series(run)
    if not series:
        raise ReportInputError(f"{run['path']}: the run has no named scores to check")
    # the rewards the run trained on (run_args.json: --reward NAME[=WEIGHT] ...); never an independent check
    trained = [str(spec).partition("=")[0].strip() for spec in (run.get("args") or {}).get("reward") or []]
    if primary is None and trained and trained[0] in series:
        primary = trained[0]
    primary = primary_name(list(series), primary)
    dimensions = {
        n: v
        for n, v in series.items()
        if n.startswith(DIMENSION_PREFIX) and n not in (UNCERTAINTY, OVERALL) and n != primary
    }
    if independent is None:
        independent = [
            n
            for n in series
            if n != primary and n not in trained and not n.startswith(DIMENSION_PREFIX) and n != UNCERTAINTY
        ]
    else:
        unknown = [n for n in independent if n not in series]
        if unknown:
            raise ReportInputError(
                f"--check {', '.join(unknown)}: the run has no such score (it has {', '.join(series)})"
            )
    flags = []
    if len(steps) >= 2:
        flags += dimension_drop_flags(steps, series[primary], dimensions, z, min_change)
        flags += independent_check_flags(steps, series[primary], {n: series[n] for n in independent}, z, min_change)
        if UNCERTAINTY in series:
            flags += uncertainty_flags(steps, series[UNCERTAINTY], z, min_change)
        parsed = parsed_cots_by_step(run["samples"], steps)
        if parsed[0]:
            flags += cot_parse_flags(steps, parsed, z, min_change)
    per_step = {}
    for sample in run["samples"]:
        if sample["cot"]:
            per_step.setdefault(sample["step"], []).append(
                (sample["scores"].get(primary, math.nan), sample["cot"], sample["prompt"])
            )
    phrase_hits, tables = phrase_flags(per_step, phrase_fraction, phrase_min_rise) if per_step else ([], {})
    return {
        "steps": steps,
        "series": series,
        "primary": primary,
        "independent": list(independent),
        "dimensions": list(dimensions),
        "flags": flags + phrase_hits,
        "phrases": tables,
    }
