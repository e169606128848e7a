"""The page of a post-training run: the reward-hacking flags, the curves, and the fixed-prompt samples of the base
model and of each checkpoint as a grid.

Curves do not make noise look like a trend: every evaluated score is drawn with a band of one standard error (of
the mean over the fixed prompts), its axis spans at least `MIN_SPAN_SE` standard errors, scores with a known scale
keep it (the 0-2 rubric of a dimension, 1-5 of the overall score, 0-1 of an accuracy or a rate), losses and other
non-negative training quantities keep zero on the axis, and each chart says its change from the base in standard
errors. Training curves (per step, noisy) are drawn faintly with their rolling mean +- one standard error on top.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from descore_plugin.report.flags import _clean
from descore_plugin.report.html import Media, esc, fmt, page, svg_lines, tiles, video_tag
from descore_plugin.report.inputs import DIMENSION_PREFIX, OVERALL, UNCERTAINTY, training_curves

__all__ = [
    "run_page",
    "reward_model_run_page",
    "is_reward_model_run",
    "standard_errors",
    "axis_range",
    "change_in_se",
    "rolling",
    "MIN_SPAN_SE",
]

MIN_SPAN_SE = 6.0
"""An evaluated score's axis spans at least this many of its largest standard error: a wobble of +-1 SE never fills
the chart."""
_ZERO_BASED = ("loss", "kl", "norm", "clip", "entropy")
_UNIT_RANGE = ("accuracy", "rate", "fraction")


def axis_range(name: str) -> tuple | None:
    """The range an axis always shows for a metric of this name: the rubric of a DeScore dimension (0, 2) or of the
    overall score (1, 5); (0, 1) for accuracies and rates; (0, 0), i.e. zero on the axis, for losses, KL, norms
    and clip fractions; None (the data's own range) otherwise."""
    base = name.rsplit("/", 1)[-1].lower()
    if name == OVERALL:
        return (1.0, 5.0)
    if name.startswith(DIMENSION_PREFIX) and name != UNCERTAINTY:
        return (0.0, 2.0)
    if any(word in base for word in _UNIT_RANGE):
        return (0.0, 1.0)
    if any(word in base for word in _ZERO_BASED) or name == UNCERTAINTY:
        return (0.0, 0.0)
    return None


def _se_range(means: list, errors: list) -> tuple | None:
    """A range centred on the data that spans at least MIN_SPAN_SE of its largest standard error."""
    known = [(m, e) for m, e in zip(means, errors) if math.isfinite(m) and e is not None and math.isfinite(e)]
    if not known:
        return None
    lo, hi = min(m - e for m, e in known), max(m + e for m, e in known)
    span = max(hi - lo, MIN_SPAN_SE * max(e for _, e in known))
    middle = (lo + hi) / 2
    return (middle - span / 2, middle + span / 2)


def standard_errors(run: dict, steps: list, series: dict) -> dict:
    """{name: [standard error of the step's mean, or None]}: from the per-video values of the samples (sample
    standard deviation / sqrt(n)), else from metrics.jsonl: eval/<name>_std / sqrt(eval/num_items) (the run loop),
    or eval_std/<name> / sqrt(num_videos - 1) (older recipes, whose std had ddof 0)."""
    errors = {}
    by_step = {row["step"]: row for row in run["evals"]}
    for name, values in series.items():
        per_step = []
        for step, entry in zip(steps, values):
            if isinstance(entry, list):
                clean = _clean(entry)
                n = len(clean)
                if n < 2:
                    per_step.append(None)
                    continue
                mean = sum(clean) / n
                per_step.append(math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1) / n))
                continue
            row, key = by_step.get(step, {}), "eval_reward" if name == "reward" else f"eval/{name}"
            std, n = row.get(f"{key}_std"), row.get("eval/num_items")
            old_std, old_n = row.get(f"eval_std/{name}"), row.get("num_videos")
            if isinstance(std, (int, float)) and isinstance(n, (int, float)) and n >= 1:
                per_step.append(float(std) / math.sqrt(n))
            elif isinstance(old_std, (int, float)) and isinstance(old_n, (int, float)) and old_n >= 2:
                per_step.append(float(old_std) / math.sqrt(old_n - 1))
            else:
                per_step.append(None)
        errors[name] = per_step
    return errors


def change_in_se(steps: list, means: list, errors: list) -> str:
    """ "step A -> step B: +0.123 (4.1 SE)": the change of the mean from the first to the last step, in standard
    errors of the difference of the two means (sqrt(SE_A^2 + SE_B^2))."""
    if len(steps) < 2 or not (math.isfinite(means[0]) and math.isfinite(means[-1])):
        return ""
    delta = means[-1] - means[0]
    text = f"step {steps[0]} -> {steps[-1]}: {delta:+.4g}"
    first, last = errors[0] if errors else None, errors[-1] if errors else None
    if first is None or last is None:
        return text + " (no standard error logged)"
    se = math.sqrt(first**2 + last**2)
    if se <= 1e-9 * (1 + abs(means[0]) + abs(means[-1])):  # rounding noise of equal values, not a spread
        return text + " (no spread: SE 0)"
    return text + f" ({delta / se:+.1f} SE)"


def rolling(values: list, window: int) -> tuple[list, list]:
    """Trailing rolling mean of `values` over `window` entries and its standard error (None below 3 entries)."""
    means, errors = [], []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        mean = sum(chunk) / len(chunk)
        means.append(mean)
        if len(chunk) >= 3:
            errors.append(math.sqrt(sum((v - mean) ** 2 for v in chunk) / (len(chunk) - 1) / len(chunk)))
        else:
            errors.append(None)
    return means, errors


def _score_chart(title: str, name: str, steps: list, means: list, errors: list, y_label: str = "") -> str:
    bands = {name: errors} if any(e is not None for e in errors) else {}
    y_range = axis_range(name) or _se_range(means, errors)
    return svg_lines(
        title,
        steps,
        {name: means},
        bands=bands,
        y_range=y_range,
        y_label=y_label,
        note=change_in_se(steps, means, errors),
    )


_REWARD_MODEL_QUANTITIES = {
    "1": "the Bradley-Terry loss on the head, the CoT next-token loss, the pair accuracy of the batch, the learning "
    "rate and the gradient norm",
    "2": "the GRPO policy loss on the sampled CoTs, their KL to the reference, the probability ratio and clipped "
    "fraction, the auxiliary Bradley-Terry loss on the head",
    "3": "the distillation loss to the score distributions of the teacher and the optional Bradley-Terry term",
}
"""What the train/... curves of a reward-model run are, by the --stage in its run_args.json."""


def _training_caption(run: dict, curves: dict, reward_model: bool) -> str:
    """What the training curves of this kind of run are: those of a reward-model stage, or of post-training."""
    if not reward_model:
        return (
            "train/... are the training quantities (the Flow-DPO loss and implicit accuracy, the GRPO or DiffusionNFT "
            "policy loss and KL, ...), reward/... the rewards of the training samples."
        )
    stage = str(run["args"].get("stage", ""))
    quantities = _REWARD_MODEL_QUANTITIES.get(stage) or "; ".join(
        f"stage {key}: {text}" for key, text in _REWARD_MODEL_QUANTITIES.items()
    )
    caption = f"train/... are the training quantities of the reward model ({quantities}, ...)"
    if any(name.startswith("reward/") for name in curves):
        caption += ", reward/... the rule reward of the CoTs sampled in stage 2 (the total, its accuracy and format)"
    return caption + "."


def _training_section(run: dict, reward_model: bool = False) -> str:
    """The training curves of a post-training run or, with `reward_model`, of a reward-model run."""
    curves = training_curves(run)
    if not curves:
        return (
            '<h2>Training curves</h2><div class="muted">metrics.jsonl holds no training rows (train/..., '
            "reward/..., time/...).</div>"
        )
    timing = {name: values for name, values in curves.items() if name.startswith("time/")}
    charts = []
    ordered = sorted(
        (n for n in curves if not n.startswith("time/")),
        key=lambda n: (not n.startswith("train/"), "loss" not in n, "accuracy" not in n, n),
    )
    for name in ordered:
        points = curves[name]
        steps, values = [s for s, _ in points], [v for _, v in points]
        window = max(1, round(len(values) / 10)) if len(values) >= 20 else 1
        if window > 1:
            means, errors = rolling(values, window)
            chart = svg_lines(
                name,
                steps,
                {name: means},
                bands={name: errors},
                thin={name: values},
                markers=False,
                y_range=axis_range(name),
                note=f"rolling mean of {window} steps +- 1 SE; faint: each step",
            )
        else:
            chart = svg_lines(name, steps, {name: values}, y_range=axis_range(name), note="each step")
        charts.append(chart)
    html = (
        f'<h2>Training curves</h2><p class="muted">{esc(_training_caption(run, curves, reward_model))}</p>'
        '<div class="charts" id="training-curves">' + "".join(charts) + "</div>"
    )
    if timing:
        html += (
            "<table><tr><th>time per step</th><th>mean seconds</th></tr>"
            + "".join(
                f'<tr><td>{esc(name)}</td><td class="num">{sum(v for _, v in points) / len(points):.3g}</td></tr>'
                for name, points in timing.items()
            )
            + "</table>"
        )
    return html


def run_page(run: dict, analysis: dict, media: Media, source: Path) -> str:
    steps, series, primary = analysis["steps"], analysis["series"], analysis["primary"]
    flags = analysis["flags"]
    means = {name: [_mean(v) for v in values] for name, values in series.items()}
    errors = standard_errors(run, steps, series)
    args = run["args"]
    described = ", ".join(
        f"{k} {args[k]}"
        for k in ("reward_model", "reward", "max_steps", "learning_rate")
        if k in args and args[k] is not None
    )
    first, last = means[primary][0], means[primary][-1]
    se_first, se_last = errors[primary][0], errors[primary][-1]
    moved = change_in_se(steps, means[primary], errors[primary]).partition(": ")[2] or "–"
    summary = tiles(
        [
            ("optimised reward", primary),
            (f"at step {steps[0]} (base)", fmt(first, 4) + (f" ± {fmt(se_first, 3)}" if se_first else "")),
            (f"at step {steps[-1]}", fmt(last, 4) + (f" ± {fmt(se_last, 3)}" if se_last else "")),
            ("change", moved),
            ("checkpoints", max(0, len(steps) - 1)),
            ("hacking flags", len(flags), bool(flags)),
        ]
    )
    body = summary + "<h2>Reward-hacking flags</h2>"
    if flags:
        names = {
            "dimension_drop": "dimension falls while the reward rises",
            "independent_check": "independent check disagrees",
            "uncertainty": "uncertainty rises",
            "cot_parse": "the judge's CoTs break more often",
            "phrases": "new phrase in low-scoring CoTs",
        }
        body += "".join(f'<div class="flag"><b>{esc(names[f.kind])}</b> — {esc(f.message)}</div>' for f in flags)
    else:
        body += (
            '<div class="ok">No flag: no dimension falls while the reward rises, no independent check disagrees, '
            "the uncertainty does not rise, the judge's CoTs parse as often as on the base's samples, and no new "
            "phrase dominates the low-scoring CoTs.</div>"
        )
    checked = analysis["independent"]
    computed = run.get("computed_checks") or []
    if checked:
        body += (
            f'<p class="muted" id="checks">Compared with the base model (step {steps[0]}) at each checkpoint. '
            f"Independent checks: {esc(', '.join(checked))}"
            + (
                f" ({esc(', '.join(computed))} scored now by descore report on the saved samples, see "
                f"check_scores.jsonl)"
                if computed
                else ""
            )
            + ".</p>"
        )
    else:
        body += (
            '<div class="note" id="checks">No independent check: nothing tells whether the optimised reward '
            "rose because the videos got better. Name one: `descore report RUN --check analytic:brightness` (or "
            "--check descore... with --model DIR, a second judge) scores the saved samples now; the Wan recipes "
            "take --check NAME at training time.</div>"
        )
    charts = [
        _score_chart(
            f"{primary} (optimised)",
            primary,
            steps,
            means[primary],
            errors[primary],
            y_label="mean of the fixed prompts ± 1 SE",
        )
    ]
    for name in analysis["dimensions"]:  # the 0-2 rubric, one chart each: their bands would overlap
        charts.append(
            _score_chart(f"dimension {name[len(DIMENSION_PREFIX) :]}", name, steps, means[name], errors[name])
        )
    for name in checked:  # one chart each: the checks have their own scales
        charts.append(_score_chart(f"{name} (independent check)", name, steps, means[name], errors[name]))
    if UNCERTAINTY in means:
        charts.append(_score_chart("judge uncertainty", UNCERTAINTY, steps, means[UNCERTAINTY], errors[UNCERTAINTY]))
    body += (
        '<h2>Evaluation curves</h2><p class="muted">Mean over the fixed prompts at each evaluation, the band '
        "± 1 standard error; scores with a known scale keep it, the others span at least "
        f"{MIN_SPAN_SE:g} standard errors; under each chart, the change from the base in standard errors "
        '(about 3 or more is a real change).</p><div class="charts" id="eval-curves">' + "".join(charts) + "</div>"
    )
    body += _training_section(run)
    samples = run["samples"]
    if samples:
        body += "<h2>Fixed-prompt samples: base model and checkpoints</h2>" + _grid(samples, steps, primary, media)
    else:
        body += (
            '<h2>Fixed-prompt samples</h2><div class="muted">This run wrote no sample videos (only the mean '
            "rewards in metrics.jsonl), so there is no grid and no CoT phrases.</div>"
        )
    if analysis["phrases"]:
        body += '<h2>Phrases of the low-scoring CoTs, against the base model\'s</h2><div class="charts">'
        for step, table in analysis["phrases"].items():
            body += (
                f'<table><tr><th colspan="3">step {step}</th></tr><tr><th>phrase</th><th>share</th><th>base</th></tr>'
            )
            risen = [r for r in table if r["rise"] > 0][:6]
            body += "".join(
                f'<tr><td>{esc(r["phrase"])}</td><td class="num">{r["share"]:.0%}</td>'
                f'<td class="num">{r["base_share"]:.0%}</td></tr>'
                for r in risen
            )
            if not risen:
                body += '<tr><td colspan="3" class="muted">no phrase more frequent than in the base</td></tr>'
            body += "</table>"
        body += "</div>"
    return page("Post-training run", f"{source}" + (f" — {described}" if described else ""), body)


def is_reward_model_run(run: dict) -> bool:
    """A run of recipes/train_rm.py (its run_args.json names --stage and --train-data), or one whose evaluations are
    held-out preference accuracies (eval/accuracy_...): no generated samples, no reward to hack."""
    if "stage" in run["args"] and "train_data" in run["args"]:
        return True
    return any(key.startswith("eval/accuracy_") for row in run["evals"] for key in row)


REWARD_MODEL_HEADLINE = "accuracy_without_ties"


def reward_model_run_page(run: dict, source: Path) -> str:
    """The page of a reward-model run: what it trained on what, the held-out accuracy at each evaluation (the
    headline without ties, with its standard error where logged: eval/<name>_std / sqrt(eval/num_items)), the CoT
    parse rate (flagged when under half), every evaluated slice and the training curves."""
    args, evals = run["args"], run["evals"]
    steps = [row["step"] for row in evals]
    names = list(
        dict.fromkeys(
            key[len("eval/") :]
            for row in evals
            for key in row
            if key.startswith("eval/") and not key.endswith("_std") and key != "eval/num_items"
        )
    )
    names.sort(key=lambda name: (name != REWARD_MODEL_HEADLINE, name != "cot_parse_rate", name))
    series = {name: [_number(row.get(f"eval/{name}")) for row in evals] for name in names}
    errors = standard_errors(run, steps, series)
    described = ", ".join(
        f"{k.replace('_', ' ')} {args[k]}" for k in ("stage", "model", "max_steps", "learning_rate") if args.get(k)
    )
    items = [("training data", args.get("train_data") or "–"), ("held-out data", args.get("eval_data") or "–")]
    body = ""
    if names:
        headline = names[0]
        last, se = series[headline][-1], errors[headline][-1]
        value = fmt(last, 3) + (f" ± {fmt(se, 3)}" if se else "")
        items.append((f"held-out {headline.replace('_', ' ')} at step {steps[-1]}", value))
        parse = series.get("cot_parse_rate")
        if parse:
            items.append(("CoTs that parse", f"{parse[-1]:.0%}", not parse[-1] >= 0.5))
            if not parse[-1] >= 0.5:
                body += (
                    f'<div class="flag"><b>CoTs do not parse</b> — at step {steps[-1]} {parse[-1]:.0%} of the CoTs '
                    "the model wrote for the held-out videos end in a readable &lt;answer&gt;: it has not learnt the "
                    "answer format (stage 1 teaches it with --lm-loss-weight &gt; 0 and CoTs in the data).</div>"
                )
        charts = [
            _score_chart(name.replace("_", " "), name, steps, series[name], errors[name], y_label="held-out pairs")
            for name in names
        ]
        body += (
            '<h2>Evaluation curves</h2><p class="muted">Held-out preference accuracy at each evaluation (the band ± 1 '
            "standard error where logged); accuracies and rates keep their 0-1 scale; under each chart, the change "
            'from the first evaluation in standard errors.</p><div class="charts" id="eval-curves">'
            + "".join(charts)
            + "</div>"
        )
    body = tiles(items) + body + _training_section(run, reward_model=True)
    return page("Reward-model run", f"{source}" + (f" — {described}" if described else ""), body)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _mean(values):
    if isinstance(values, (int, float)):
        return float(values)
    clean = _clean(values)
    return sum(clean) / len(clean) if clean else math.nan


def _grid(samples: list, steps: list, primary: str, media: Media) -> str:
    keys = list(
        dict.fromkeys(
            (s["index"] if s["index"] is not None else s["prompt"], s["prompt"])
            for s in sorted(samples, key=lambda s: (s["step"], str(s["index"])))
        )
    )
    cell = {(s["index"] if s["index"] is not None else s["prompt"], s["step"]): s for s in samples}
    head = "".join(f"<th>{'base' if i == 0 else 'step ' + str(step)}</th>" for i, step in enumerate(steps))
    repeated = Counter(prompt for _, prompt in keys)
    rows = []
    for key, prompt in keys:
        label = f'{esc(prompt)} <span class="muted">(noise {key})</span>' if repeated[prompt] > 1 else esc(prompt)
        cells = []
        for step in steps:
            sample = cell.get((key, step))
            if sample is None:
                cells.append('<td class="muted">–</td>')
                continue
            score = sample["scores"].get(primary)
            cot = (
                f'<details><summary class="muted">CoT</summary><div class="cot" style="text-align:left;'
                f'max-width:260px">{esc(sample["cot"].strip())}</div></details>'
                if sample["cot"]
                else ""
            )
            cells.append(
                f"<td>{video_tag(media.add(sample['path']), sample['video'])}<div>{esc(primary)} "
                f"<b>{fmt(score, 3)}</b></div>{cot}</td>"
            )
        rows.append(f'<tr><td style="text-align:left;max-width:180px"><b>{label}</b></td>{"".join(cells)}</tr>')
    return f'<div class="grid"><table><tr><th>prompt</th>{head}</tr>{"".join(rows)}</table></div>'
