"""The page of a scored set: one card per video (prompt, video, reward, dimension scores, CoT), sortable and
filterable in the browser."""

from __future__ import annotations

import re
from pathlib import Path

from descore_plugin.report.html import Media, esc, fmt, page, tiles, video_tag

__all__ = ["scores_page"]

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


def _dims_html(scores: dict) -> str:
    if not scores:
        return ""
    chips = []
    for name, value in scores.items():
        level = f" s{int(value)}" if value is not None and float(value).is_integer() and 0 <= value <= 2 else ""
        chips.append(f'<span class="dim{level}">{esc(name)} {fmt(value, 2) if not float(value).is_integer() else int(value)}</span>'
                     if value is not None else f'<span class="dim">{esc(name)} –</span>')
    return '<div class="dims">' + "".join(chips) + "</div>"


def scores_page(rows: list, media: Media, source: Path) -> str:
    dimensions = list(dict.fromkeys(name for row in rows for name in row["dimensional_scores"]))
    keys = ["reward", "uncertainty"] + dimensions
    has_uncertainty = any(row["uncertainty"] is not None for row in rows)
    if not has_uncertainty:
        keys.remove("uncertainty")
    cards = []
    for row in rows:
        data = {"reward": row["reward"], "uncertainty": row["uncertainty"], **row["dimensional_scores"]}
        attributes = " ".join(f'data-{_data_name(k)}="{"" if data.get(k) is None else data[k]}"' for k in keys)
        video = video_tag(media.add(row["path"]), row["video"])
        if row["error"]:
            body = f'<div class="reward" style="color:var(--bad)">error</div><div>{esc(row["error"])}</div>'
        else:
            uncertainty = f' <span class="muted">± {fmt(row["uncertainty"])}</span>' if row["uncertainty"] is not None else ""
            parse = (f'<div class="muted">CoT not parsed: {esc(row["parse_error"])}</div>' if row["parse_error"] else "")
            body = (f'<div class="reward">{fmt(row["reward"], 4)}{uncertainty}</div>'
                    f'{_dims_html(row["dimensional_scores"])}{parse}'
                    + (f'<div class="cot">{esc(row["cot"].strip())}</div>' if row["cot"] else
                       '<div class="muted">scored without a CoT</div>'))
        cards.append(f'<div class="card{" error" if row["error"] else ""}" {attributes}>{video}<div class="meta">'
                     f'<div class="prompt">{esc(row["prompt"])}</div><div class="muted">{esc(row["video"])}</div>'
                     f'{body}</div></div>')
    options = "".join(f'<option value="{_data_key(k)}">{esc(k)}</option>' for k in keys)
    rewards = [row["reward"] for row in rows if row["reward"] is not None and not row["error"]]
    errors = sum(1 for row in rows if row["error"])
    summary = tiles([("videos", len(rows)), ("mean reward", fmt(sum(rewards) / len(rewards), 4) if rewards else "–"),
                    ("min / max", f"{fmt(min(rewards), 2)} / {fmt(max(rewards), 2)}" if rewards else "–"),
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
    body = summary + "<h2>Videos</h2>" + controls + '<div class="cards" id="cards">' + "".join(cards) + "</div>"
    return page("DeScore scores", f"{source} — {len(rows)} videos", body, _SCORES_JS)


def _data_name(key: str) -> str:
    """The HTML data-* attribute name of a sort key (lower case, dashes)."""
    return "k-" + re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def _data_key(key: str) -> str:
    """The dataset property the script reads for `_data_name(key)` (dashes to camelCase, as the DOM does)."""
    return re.sub(r"-([a-z0-9])", lambda m: m.group(1).upper(), _data_name(key))
