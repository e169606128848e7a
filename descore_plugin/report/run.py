"""The page of a post-training run: the reward-hacking flags, the curves, and the fixed-prompt samples of the base
model and of each checkpoint as a grid."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from descore_plugin.report.flags import _clean
from descore_plugin.report.html import Media, esc, fmt, page, svg_lines, tiles, video_tag
from descore_plugin.report.inputs import DIMENSION_PREFIX, UNCERTAINTY

__all__ = ["run_page"]


def run_page(run: dict, analysis: dict, media: Media, source: Path) -> str:
    steps, series, primary = analysis["steps"], analysis["series"], analysis["primary"]
    flags = analysis["flags"]
    means = {name: [_mean(v) for v in values] for name, values in series.items()}
    args = run["args"]
    described = ", ".join(f"{k} {args[k]}" for k in ("reward_model", "reward", "max_steps", "learning_rate")
                          if k in args and args[k] is not None)
    first, last = means[primary][0], means[primary][-1]
    summary = tiles([("optimised reward", primary), (f"{primary} at step {steps[0]}", fmt(first, 4)),
                    (f"{primary} at step {steps[-1]}", fmt(last, 4)), ("checkpoints", max(0, len(steps) - 1)),
                    ("hacking flags", len(flags))])
    body = summary + "<h2>Reward-hacking flags</h2>"
    if flags:
        names = {"dimension_drop": "dimension falls while the reward rises",
                 "independent_check": "independent check disagrees", "uncertainty": "uncertainty rises",
                 "phrases": "new phrase in low-scoring CoTs"}
        body += "".join(f'<div class="flag"><b>{esc(names[f.kind])}</b> — {esc(f.message)}</div>' for f in flags)
    else:
        body += ('<div class="ok">No flag: no dimension falls while the reward rises, no independent check disagrees, '
                 'the uncertainty does not rise, and no new phrase dominates the low-scoring CoTs.</div>')
    checked = analysis["independent"]
    body += (f'<p class="muted">Compared with the base model (step {steps[0]}) at each checkpoint. Independent checks: '
             f'{esc(", ".join(checked)) if checked else "none in this run"}.</p>')
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
            body += "".join(f'<tr><td>{esc(r["phrase"])}</td><td class="num">{r["share"]:.0%}</td>'
                            f'<td class="num">{r["base_share"]:.0%}</td></tr>' for r in risen)
            if not risen:
                body += '<tr><td colspan="3" class="muted">no phrase more frequent than in the base</td></tr>'

            body += "</table>"
        body += "</div>"
    return page("Post-training run", f"{source}" + (f" — {described}" if described else ""), body)


def _mean(values):
    if isinstance(values, (int, float)):
        return float(values)
    clean = _clean(values)
    return sum(clean) / len(clean) if clean else math.nan


def _grid(samples: list, steps: list, primary: str, media: Media) -> str:
    keys = list(dict.fromkeys((s["index"] if s["index"] is not None else s["prompt"], s["prompt"])
                              for s in sorted(samples, key=lambda s: (s["step"], str(s["index"])))))
    cell = {(s["index"] if s["index"] is not None else s["prompt"], s["step"]): s for s in samples}
    head = "".join(f"<th>{'base' if i == 0 else 'step ' + str(step)}</th>" for i, step in enumerate(steps))
    repeated = Counter(prompt for _, prompt in keys)
    rows = []
    for key, prompt in keys:
        label = f"{esc(prompt)} <span class=\"muted\">(noise {key})</span>" if repeated[prompt] > 1 else esc(prompt)
        cells = []
        for step in steps:
            sample = cell.get((key, step))
            if sample is None:
                cells.append("<td class=\"muted\">–</td>")
                continue
            score = sample["scores"].get(primary)
            cot = (f'<details><summary class="muted">CoT</summary><div class="cot" style="text-align:left;'
                   f'max-width:260px">{esc(sample["cot"].strip())}</div></details>' if sample["cot"] else "")
            cells.append(f'<td>{video_tag(media.add(sample["path"]), sample["video"])}<div>{esc(primary)} '
                         f'<b>{fmt(score, 3)}</b></div>{cot}</td>')
        rows.append(f'<tr><td style="text-align:left;max-width:180px"><b>{label}</b></td>{"".join(cells)}</tr>')
    return f'<div class="grid"><table><tr><th>prompt</th>{head}</tr>{"".join(rows)}</table></div>'
