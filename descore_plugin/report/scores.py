"""The page of a scored set: what failed first (videos that could not be scored, CoTs that did not parse, a judge out
of its domain), then the videos of each prompt side by side (prompt, video, reward, rank within the prompt,
dimension scores, CoT), sortable and filterable in the browser.

A Bradley-Terry head (the paper's scalar head) learns only reward DIFFERENCES between videos of one prompt: its
rewards have an arbitrary offset and scale, so the page gives no mean reward for it, only differences and ranks
within a prompt. The distribution head's reward is an expected score on the 1-5 rubric, whose mean means something.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from descore_plugin.report.html import Media, esc, fmt, page, tiles, video_tag

__all__ = ["scores_page", "judge_warnings", "prompt_ranks", "PARSE_FAILURE_SHARE", "FAR_SD", "FAR_SHARE"]

PARSE_FAILURE_SHARE = 0.5
"""More than this share of the CoTs not parsing: the judge is flagged as out of its domain."""
FAR_SD = 3.0
FAR_SHARE = 0.25
"""More than FAR_SHARE of the rewards further than FAR_SD standard deviations from the mean reward of the videos the
model was evaluated on (what its folder records): the judge is flagged as out of its domain."""

_SCORES_JS = """
(function () {
  const cards = Array.from(document.querySelectorAll('.card'));
  const groups = Array.from(document.querySelectorAll('.group[data-prompt]'));
  const box = document.getElementById('cards'), flat = document.getElementById('flat');
  const grouped = document.getElementById('group-by-prompt');
  const key = document.getElementById('sort-key'), order = document.getElementById('sort-order');
  const fkey = document.getElementById('filter-key'), fmin = document.getElementById('filter-min');
  const fmax = document.getElementById('filter-max'), text = document.getElementById('filter-text');
  const shown = document.getElementById('shown');
  function value(card, name) { const v = parseFloat(card.dataset[name]); return isNaN(v) ? null : v; }
  function compare(x, y, desc) {
    if (x === null && y === null) return 0; if (x === null) return 1; if (y === null) return -1;
    return desc ? y - x : x - y;
  }
  function apply() {
    const k = key.value, desc = order.value === 'desc', fk = fkey.value;
    const lo = fmin.value === '' ? -Infinity : parseFloat(fmin.value);
    const hi = fmax.value === '' ? Infinity : parseFloat(fmax.value);
    const needle = text.value.trim().toLowerCase();
    cards.sort(function (a, b) { return compare(value(a, k), value(b, k), desc); });
    let count = 0;
    const best = new Map();
    for (const card of cards) {
      const v = value(card, fk);
      const inRange = (lo === -Infinity && hi === Infinity) || (v !== null && v >= lo && v <= hi);
      const matches = !needle || card.textContent.toLowerCase().includes(needle);
      card.style.display = inRange && matches ? '' : 'none';
      if (inRange && matches) {
        count += 1;
        if (!best.has(card.dataset.group)) best.set(card.dataset.group, value(card, k));
      }
      const home = grouped.checked ? document.querySelector('#' + card.dataset.group + ' .row') : flat.querySelector('.row');
      home.appendChild(card);
    }
    flat.style.display = grouped.checked ? 'none' : '';
    groups.sort(function (a, b) {
      const x = best.has(a.id) ? best.get(a.id) : null, y = best.has(b.id) ? best.get(b.id) : null;
      if (!best.has(a.id) || !best.has(b.id)) return best.has(a.id) ? -1 : best.has(b.id) ? 1 : 0;
      return compare(x, y, desc);
    });
    for (const group of groups) {
      group.style.display = grouped.checked && best.has(group.id) ? '' : 'none';
      box.appendChild(group);
    }
    shown.textContent = count + ' of ' + cards.length + ' shown';
  }
  for (const el of [grouped, key, order, fkey, fmin, fmax, text]) {
    el.addEventListener('input', apply); el.addEventListener('change', apply);
  }
  apply();
})();
"""


def judge_warnings(rows: list, record: dict | None) -> list[tuple[str, str]]:
    """What the page flags about a scored set, as (kind, message): "failed" (videos that could not be scored),
    "parse" (CoTs that did not parse), "out_of_domain" (most CoTs do not parse, or many rewards lie far outside the
    range the model folder records: `record` of `load_model_record`)."""
    warnings = []
    failed = [row for row in rows if row["error"]]
    if failed:
        warnings.append(("failed", f"{len(failed)} of {len(rows)} videos could not be scored (the red cards say why)"))
    with_cot = [row for row in rows if not row["error"] and (row["cot"] is not None or row["parse_error"])]
    unparsed = [row for row in with_cot if row["parse_error"]]
    if unparsed:
        warnings.append(
            (
                "parse",
                f"{len(unparsed)} of {len(with_cot)} CoTs did not parse: no dimension scores for "
                f"those videos, and the reward was read after an answer the judge did not write "
                f"in its format",
            )
        )
    if with_cot and len(unparsed) / len(with_cot) > PARSE_FAILURE_SHARE:
        warnings.append(
            (
                "out_of_domain",
                f"the judge is probably out of its domain: {len(unparsed)} of "
                f"{len(with_cot)} of its CoTs do not parse (a judge writes its answer "
                f"format on videos like those it was trained on); do not trust these "
                f"rewards",
            )
        )
    stats = (record or {}).get("reward_range")
    rewards = [
        row["reward"] for row in rows if not row["error"] and row["reward"] is not None and math.isfinite(row["reward"])
    ]
    if stats and stats["std"] > 0 and rewards:
        far = [r for r in rewards if abs(r - stats["mean"]) > FAR_SD * stats["std"]]
        if len(far) / len(rewards) > FAR_SHARE:
            data = f" ({stats['data']})" if stats.get("data") else ""
            warnings.append(
                (
                    "out_of_domain",
                    f"the judge is probably out of its domain: {len(far)} of {len(rewards)} "
                    f"rewards ({min(rewards):.3g} .. {max(rewards):.3g}) lie more than "
                    f"{FAR_SD:g} standard deviations from the mean of the "
                    f"{stats.get('num_videos', '?')} videos it was evaluated on{data}: "
                    f"{stats['mean']:.3g} ± {stats['std']:.3g}",
                )
            )
    return warnings


def prompt_ranks(rows: list) -> dict:
    """{row index: (rank within its prompt (1 = best), scored videos of the prompt, reward - the prompt's best)} for
    the scored rows of prompts with at least two scored videos."""
    by_prompt: dict = {}
    for index, row in enumerate(rows):
        if not row["error"] and row["reward"] is not None and math.isfinite(row["reward"]):
            by_prompt.setdefault(row["prompt"], []).append(index)
    ranks = {}
    for members in by_prompt.values():
        if len(members) < 2:
            continue
        ordered = sorted(members, key=lambda i: -rows[i]["reward"])
        best = rows[ordered[0]]["reward"]
        for rank, index in enumerate(ordered, 1):
            ranks[index] = (rank, len(members), rows[index]["reward"] - best)
    return ranks


def _dims_html(scores: dict) -> str:
    if not scores:
        return ""
    chips = []
    for name, value in scores.items():
        level = f" s{int(value)}" if value is not None and float(value).is_integer() and 0 <= value <= 2 else ""
        chips.append(
            f'<span class="dim{level}">{esc(name)} {fmt(value, 2) if not float(value).is_integer() else int(value)}</span>'
            if value is not None
            else f'<span class="dim">{esc(name)} –</span>'
        )
    return '<div class="dims">' + "".join(chips) + "</div>"


def _card(row: dict, rank, group: str, keys: list, media: Media) -> str:
    data = {
        "reward": row["reward"],
        "uncertainty": row["uncertainty"],
        **row["dimensional_scores"],
        "difference to the prompt's best": rank[2] if rank else None,
    }
    attributes = " ".join(f'data-{_data_name(k)}="{"" if data.get(k) is None else data[k]}"' for k in keys)
    video = video_tag(media.add(row["path"]), row["video"])
    if row["error"]:
        body = f'<div class="reward" style="color:var(--bad)">failed</div><div>{esc(row["error"])}</div>'
    else:
        uncertainty = (
            f' <span class="muted">± {fmt(row["uncertainty"])}</span>' if row["uncertainty"] is not None else ""
        )
        parse = (
            f'<div class="parse-error">CoT not parsed: {esc(row["parse_error"])}</div>' if row["parse_error"] else ""
        )
        place = (
            (
                f'<div class="rank">rank {rank[0]} of {rank[1]}'
                + (f", {fmt(rank[2], 4)} from the best" if rank[0] > 1 else ", the prompt's best")
                + "</div>"
            )
            if rank
            else ""
        )
        body = (
            f'<div class="reward">{fmt(row["reward"], 4)}{uncertainty}</div>{place}'
            f"{_dims_html(row['dimensional_scores'])}{parse}"
            + (
                f'<div class="cot">{esc(row["cot"].strip())}</div>'
                if row["cot"]
                else '<div class="muted">scored without a CoT</div>'
            )
        )
    classes = (
        "card" + (" error" if row["error"] else "") + (" unparsed" if row["parse_error"] and not row["error"] else "")
    )
    return (
        f'<div class="{classes}" data-group="{group}" {attributes}>{video}<div class="meta">'
        f'<div class="prompt card-prompt">{esc(row["prompt"])}</div>'
        f'<div class="muted" title="{esc(row["video"])}">{esc(Path(row["video"]).name)}</div>'
        f"{body}</div></div>"
    )


def _data_folders(rows: list) -> str:
    """The folder(s) the videos come from, for the page's subtitle."""
    folders = list(dict.fromkeys(str(Path(row["video"]).parent) for row in rows))
    return ", ".join(folders[:3]) + (f" and {len(folders) - 3} more folders" if len(folders) > 3 else "")


def scores_page(rows: list, media: Media, source: Path, record: dict | None = None) -> str:
    """The page of a scored set (`load_scored_set` rows); `record`: `load_model_record` of the judge, when known."""
    dimensions = list(dict.fromkeys(name for row in rows for name in row["dimensional_scores"]))
    ranks = prompt_ranks(rows)
    keys = ["reward", "uncertainty"] + (["difference to the prompt's best"] if ranks else []) + dimensions
    if not any(row["uncertainty"] is not None for row in rows):
        keys.remove("uncertainty")
    model = (record or {}).get("name") or next((row["model"] for row in rows if row["model"]), None)
    head = (record or {}).get("head")
    head_known = head is not None
    if head is None:  # only the distribution head writes an uncertainty
        head = "distribution" if any(row["uncertainty"] is not None for row in rows) else "scalar"
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    group_ids = {prompt: f"prompt-{number}" for number, prompt in enumerate(prompts)}
    groups = []
    for prompt in prompts:
        members = [(i, row) for i, row in enumerate(rows) if row["prompt"] == prompt]
        cards = "".join(_card(row, ranks.get(i), group_ids[prompt], keys, media) for i, row in members)
        groups.append(
            f'<div class="group" id="{group_ids[prompt]}" data-prompt="{esc(prompt)}"><div class="prompt">'
            f'{esc(prompt)} <span class="muted">({len(members)} video{"s" if len(members) > 1 else ""})'
            f'</span></div><div class="row">{cards}</div></div>'
        )
    warnings = judge_warnings(rows, record)
    failed = sum(1 for row in rows if row["error"])
    with_cot = sum(1 for row in rows if not row["error"] and (row["cot"] is not None or row["parse_error"]))
    unparsed = sum(1 for row in rows if not row["error"] and row["parse_error"])
    rewards = [row["reward"] for row in rows if not row["error"] and row["reward"] is not None]
    items = [
        ("videos", len(rows)),
        ("prompts", len(prompts)),
        ("videos that failed", failed, failed > 0),
        ("CoTs not parsed", f"{unparsed} of {with_cot}" if with_cot else "no CoTs", unparsed > 0),
    ]
    if head == "distribution" and rewards:
        items.append(("mean score (1-5 rubric)", fmt(sum(rewards) / len(rewards), 3)))
    summary = tiles(items)
    names = {"failed": "videos failed", "parse": "CoTs not parsed", "out_of_domain": "judge out of its domain"}
    body = (
        summary
        + '<div id="warnings">'
        + "".join(
            f'<div class="flag" data-kind="{kind}"><b>{esc(names[kind])}</b> — {esc(message)}</div>'
            for kind, message in warnings
        )
        + "</div>"
    )
    if head == "scalar":
        body += (
            '<div class="note" id="no-mean">No mean reward: '
            + (
                "this judge has"
                if head_known
                else "this judge seems to have (no uncertainty in the rows; name it with --model to be sure)"
            )
            + " a Bradley-Terry head, trained only on reward differences between two videos of one prompt, so "
            "its rewards have an arbitrary offset and scale and their average says nothing. Compare videos of "
            "the same prompt: each card gives its rank within its prompt and its distance from the prompt's "
            "best.</div>"
        )
    if record is None:
        who = "The judge's folder is not at hand" if model else "The judge is not named"
        body += (
            f'<p class="muted">{who} (pass --model DIR to `descore report`): its training range is unknown, so '
            "only CoTs that do not parse can flag it as out of its domain.</p>"
        )
    elif record.get("reward_range") is None:
        body += (
            f'<p class="muted">{esc(record["name"])} records no reward range (MODEL/evaluation/accuracy.json of '
            "recipes/eval_rm.py), so only CoTs that do not parse can flag it as out of its domain.</p>"
        )
    options = "".join(f'<option value="{_data_key(k)}">{esc(k)}</option>' for k in keys)
    controls = (
        '<div class="controls"><label><input type="checkbox" id="group-by-prompt" checked> videos of one prompt '
        'side by side</label><label>sort by</label><select id="sort-key">' + options + "</select>"
        '<select id="sort-order"><option value="desc">highest first</option><option value="asc">lowest first</option>'
        '</select><label>filter</label><select id="filter-key">' + options + "</select>"
        '<input id="filter-min" type="number" step="any" placeholder="min" size="6">'
        '<input id="filter-max" type="number" step="any" placeholder="max" size="6">'
        '<input id="filter-text" type="search" placeholder="search prompt or CoT">'
        '<span class="muted" id="shown"></span></div>'
    )
    body += (
        "<h2>Videos, by prompt</h2>"
        + controls
        + '<div id="cards">'
        + "".join(groups)
        + '<div class="group" id="flat"><div class="row wrap"></div></div></div>'
    )
    subtitle = " — ".join(
        part
        for part in (
            f"{source}",
            f"{len(rows)} videos from {_data_folders(rows)}",
            f"judge: {model}" if model else "judge not named",
        )
        if part
    )
    return page("DeScore scores", subtitle, body, _SCORES_JS)


def _data_name(key: str) -> str:
    """The HTML data-* attribute name of a sort key (lower case, dashes)."""
    return "k-" + re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def _data_key(key: str) -> str:
    """The dataset property the script reads for `_data_name(key)` (dashes to camelCase, as the DOM does)."""
    return re.sub(r"-([a-z0-9])", lambda m: m.group(1).upper(), _data_name(key))
