"""The page of an evaluation (recipes/eval_rm.py's output directory): which model and data, how it was scored (own
CoT or not, the CoT length limit, how many CoTs parsed), the accuracies (the official compatibility figure too,
where recorded), the per-slice table, the histogram of reward margins and every pair the model got wrong, both
videos and both CoTs side by side, with the data's truth per dimension (e.g. the synthetic world's true defects)
next to what the judge's CoT said."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from descore_plugin.modeling.prompt import parse_answer
from descore_plugin.report.html import Media, esc, fmt, page, svg_histogram, tiles, video_tag

__all__ = ["evaluation_page", "truth_table"]

PARSE_WARNING_RATE = 0.5
"""Below this CoT parse rate the page warns that the accuracy is not that of a judge writing its answer format."""


def truth_table(row: dict) -> str:
    """The data's per-dimension truth of a pair (scores_a / scores_b) next to what each CoT's answer block says; the
    dimensions where the truth differs are marked. Empty when the data carries no truth."""
    truth_a, truth_b = row.get("scores_a"), row.get("scores_b")
    if not isinstance(truth_a, dict) or not isinstance(truth_b, dict):
        return ""
    judged = {}
    for side in ("a", "b"):
        cot = row.get(f"cot_{side}")
        judged[side] = (parse_answer(cot).dimensional_scores or {}) if cot else {}
    names = list(dict.fromkeys(list(truth_a) + list(truth_b)))
    differing = [name for name in names if truth_a.get(name) != truth_b.get(name)]
    lines = []
    for name in names:
        mark = ' class="differs"' if name in differing else ""
        lines.append(
            f'<tr{mark}><td>{esc(name)}</td><td class="num">{esc(truth_a.get(name, "–"))}</td>'
            f'<td class="num">{esc(truth_b.get(name, "–"))}</td><td class="num">'
            f'{esc(judged["a"].get(name, "–"))}</td><td class="num">{esc(judged["b"].get(name, "–"))}'
            "</td></tr>"
        )
    said = ", ".join(f"{name}: A {truth_a.get(name, '–')}, B {truth_b.get(name, '–')}" for name in differing)
    return (
        '<div class="truth"><div><b>Truth</b> (from the data): '
        + (f"the videos differ in {esc(said)}" if differing else "the videos have the same scores")
        + "</div><table><tr><th>dimension</th><th>truth A</th><th>truth B</th><th>judge A</th><th>judge B</th></tr>"
        + "".join(lines)
        + "</table></div>"
    )


def evaluation_page(evaluation: dict, media: Media, source: Path) -> str:
    rows = evaluation["rows"]
    wrong = [row for row in rows if row["correct"] is False]
    without = evaluation.get("accuracy_without_ties")
    think = evaluation.get("think")
    items = [
        ("accuracy without ties", fmt(without) if without is not None else "n/a (all ties)"),
        ("accuracy with ties", fmt(evaluation["accuracy_with_ties"])),
    ]
    if evaluation.get("accuracy_ties_as_errors") is not None:
        items.append(("official figure (ties as errors)", fmt(evaluation["accuracy_ties_as_errors"])))
    items += [
        ("pairs", f"{evaluation['num_pairs']} ({evaluation.get('num_pairs_without_ties', '?')} without ties)"),
        ("scored with", "own CoT" if think else "no CoT"),
    ]
    rate, cots, unparsed = (evaluation.get(k) for k in ("cot_parse_rate", "num_cots", "num_cots_unparsed"))
    if think:
        items.append(("max_new_tokens", evaluation.get("max_new_tokens") or "not recorded"))
        items.append(
            (
                "CoTs parsed",
                f"{cots - unparsed} of {cots} ({rate:.0%})" if rate is not None and cots else "not recorded",
                bool(unparsed),
            )
        )
    items.append(("wrong pairs", len(wrong)))
    body = tiles(items)
    if think and rate is not None and rate < PARSE_WARNING_RATE:
        body += (
            f'<div class="flag" data-kind="parse"><b>CoTs not parsed</b> — only {rate:.0%} of the CoTs parse: '
            f"the "
            f"judge mostly does not write its answer format here (out of its domain, or not taught to write it, "
            f"or cut by max_new_tokens {evaluation.get('max_new_tokens')}), so these accuracies are not those of "
            f"a judge that thinks</div>"
        )
    if any(isinstance(row.get("scores_a"), dict) for row in wrong):
        body += (
            '<p class="muted">Each wrong pair below shows the truth the data carries (per-dimension scores) '
            "next to what the judge's CoT said.</p>"
        )
    slices = evaluation.get("accuracy_without_ties_by_slice") or {}
    if slices:
        counts = Counter(row.get("slice") or "untagged" for row in rows if row["correct"] is not None)
        body += "<h2>Accuracy by slice (without ties)</h2><table><tr><th>slice</th><th>accuracy</th><th>pairs</th></tr>"
        for name, value in slices.items():
            count = sum(counts.values()) if name == "all" else counts.get(name, "")
            body += f'<tr><td>{esc(name)}</td><td class="num">{fmt(value)}</td><td class="num">{count}</td></tr>'
        body += "</table>"
    groups = {
        "right": [r["margin"] if r["label"] == "A" else -r["margin"] for r in rows if r["correct"] is True],
        "wrong": [r["margin"] if r["label"] == "A" else -r["margin"] for r in rows if r["correct"] is False],
    }
    ties = [abs(r["margin"]) for r in rows if r["correct"] is None]
    if ties:
        groups["human tie (|margin|)"] = ties
    body += "<h2>Reward margins</h2>" + svg_histogram(
        "reward(preferred) - reward(other); right of 0 = the model agrees", groups
    )
    body += f"<h2>Pairs the model got wrong ({len(wrong)})</h2>"
    if not wrong:
        body += '<div class="ok">The model ranks every non-tie pair the way humans did.</div>'
    for row in sorted(wrong, key=lambda r: abs(r["margin"]), reverse=True):
        sides = []
        for side in ("a", "b"):
            cot, error = row.get(f"cot_{side}"), row.get(f"parse_error_{side}")
            sides.append(
                f'<div class="side{" preferred" if row["label"] == side.upper() else ""}">'
                f'{video_tag(media.add(row[f"path_{side}"]), row[f"video_{side}"])}<div class="meta">'
                f'<div class="muted">video {side.upper()}: {esc(row[f"video_{side}"])}</div>'
                f'<div class="reward">{fmt(row[f"reward_{side}"], 4)}</div>'
                + (f'<div class="parse-error">CoT not parsed: {esc(error)}</div>' if error else "")
                + (f'<div class="cot">{esc(cot.strip())}</div>' if cot else '<div class="muted">no CoT</div>')
                + "</div></div>"
            )
        body += (
            f'<div class="pair"><div class="prompt">{esc(row["prompt"])}</div><div class="muted">human choice '
            f"{esc(row['label'])}, slice {esc(row.get('slice') or '–')}, margin A - B = {fmt(row['margin'], 4)}"
            f'</div><div class="sides">{"".join(sides)}</div>{truth_table(row)}</div>'
        )
    named = [
        f"model: {evaluation['model']}" if evaluation.get("model") else "model not recorded",
        f"pairs: {evaluation['pairs']}" if evaluation.get("pairs") else "pairs not recorded",
    ]
    return page("DeScore evaluation", " — ".join([str(source)] + named), body)
