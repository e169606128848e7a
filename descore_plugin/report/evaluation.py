"""The page of an evaluation (recipes/eval_rm.py's output directory): the accuracies, the per-slice table, the
histogram of reward margins and every pair the model got wrong, both videos and both CoTs side by side."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from descore_plugin.report.html import Media, esc, fmt, page, svg_histogram, tiles, video_tag

__all__ = ["evaluation_page"]


def evaluation_page(evaluation: dict, media: Media, source: Path) -> str:
    rows = evaluation["rows"]
    wrong = [row for row in rows if row["correct"] is False]
    without = evaluation.get("accuracy_without_ties")
    summary = tiles([
        ("accuracy without ties", fmt(without) if without is not None else "n/a (all ties)"),
        ("accuracy with ties", fmt(evaluation["accuracy_with_ties"])),
        ("pairs", f'{evaluation["num_pairs"]} ({evaluation.get("num_pairs_without_ties", "?")} without ties)'),
        ("scored with", "own CoT" if evaluation.get("think") else "no CoT"),
        ("wrong pairs", len(wrong)),
    ])
    body = summary
    slices = evaluation.get("accuracy_without_ties_by_slice") or {}
    if slices:
        counts = Counter(row.get("slice") or "untagged" for row in rows if row["correct"] is not None)
        body += "<h2>Accuracy by slice (without ties)</h2><table><tr><th>slice</th><th>accuracy</th><th>pairs</th></tr>"
        for name, value in slices.items():
            count = sum(counts.values()) if name == "all" else counts.get(name, "")
            body += f'<tr><td>{esc(name)}</td><td class="num">{fmt(value)}</td><td class="num">{count}</td></tr>'
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
                f'{video_tag(media.add(row[f"path_{side}"]), row[f"video_{side}"])}<div class="meta">'
                f'<div class="muted">video {side.upper()}: {esc(row[f"video_{side}"])}</div>'
                f'<div class="reward">{fmt(row[f"reward_{side}"], 4)}</div>'
                + (f'<div class="cot">{esc(cot.strip())}</div>' if cot else '<div class="muted">no CoT</div>')
                + "</div></div>")
        body += (f'<div class="pair"><div class="prompt">{esc(row["prompt"])}</div><div class="muted">human choice '
                 f'{esc(row["label"])}, slice {esc(row.get("slice") or "–")}, margin A - B = {fmt(row["margin"], 4)}'
                 f'</div><div class="sides">{"".join(sides)}</div></div>')
    return page("DeScore evaluation", str(source), body)
