"""What every page shares: the videos copied next to the page (re-encoded where a browser could not play them), the
style sheet, escaping and number formats, the page frame, tiles, and the inline SVG charts."""

from __future__ import annotations

import hashlib
import html
import math
import re
import shutil
from pathlib import Path

from descore_plugin.report.inputs import ReportInputError

__all__ = ["Media", "page", "esc", "fmt", "video_tag", "tiles", "svg_lines", "svg_histogram", "PALETTE"]


class Media:
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
    import av
    import numpy as np

    from descore_plugin.data.video import write_video

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
.tile.bad { border-color:var(--bad); } .tile.bad .v { color:var(--bad); }
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
.card.unparsed { border-color:var(--warn); }
.group { background:#eef1f5; border-radius:8px; padding:10px 12px; margin-bottom:14px; }
.group .row { display:flex; gap:14px; overflow-x:auto; padding-bottom:4px; }
.group .row.wrap { flex-wrap:wrap; }
.group .card { flex:0 0 380px; }
.group .card-prompt { display:none; }
#flat .card-prompt { display:block; }
.rank { color:var(--muted); font-size:12px; font-weight:600; }
.parse-error { color:var(--warn); font-size:12px; font-weight:600; }
.truth { margin-top:10px; }
.truth table { margin-top:4px; }
.truth tr.differs td { background:#fff4d6; font-weight:600; }
.note { border-left:4px solid var(--accent); background:#f0f5fe; padding:8px 12px; margin:10px 0; border-radius:4px; }
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


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def video_tag(src: str | None, original: str, size: str = "") -> str:
    if src is None:
        return f'<div class="missing">video not found:<br>{esc(original)}</div>'
    # playing in a loop, controls only under the pointer (they would hide a third of a small video)
    return (
        f'<video src="{esc(src)}" autoplay loop muted playsinline preload="auto" title="{esc(original)}" '
        f'onmouseenter="this.controls=true" onmouseleave="this.controls=false"{size}></video>'
    )


def page(title: str, subtitle: str, body: str, script: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<main>{body}<footer>Written by descore report. Static page: the videos are in media/ next to it.</footer>"
        f"</main>{f'<script>{script}</script>' if script else ''}</body></html>\n"
    )


PALETTE = ["#2f6fdf", "#d9632b", "#1f8a4c", "#8e44ad", "#c8372d", "#0f9aa8", "#b26b00", "#5f6b7a", "#d63384"]


def svg_lines(
    title: str,
    steps: list,
    lines: dict,
    width: int = 400,
    height: int = 240,
    y_label: str = "",
    bands: dict | None = None,
    y_range: tuple | None = None,
    note: str = "",
    markers: bool = True,
    thin: dict | None = None,
) -> str:
    """An inline SVG line chart: `lines` = {name: [mean per step]} (NaN gaps are skipped).

    bands: {name: [standard error per step]}: a shaded band of mean +- 1 SE (and the axis holds it);
    y_range: (lo, hi) the axis always shows (e.g. (0, 2) for a 0-2 rubric, (0, 1) for an accuracy); values
        outside widen it; None: the data's own range;
    note: a line under the chart (e.g. the change in standard errors); thin: {name: [values]} drawn as a faint
        line under the others (e.g. per-step values under their rolling mean)."""
    bands, thin = bands or {}, thin or {}
    points = [
        v for values in list(lines.values()) + list(thin.values()) for v in values if v is not None and math.isfinite(v)
    ]
    for name, errors in bands.items():
        for v, e in zip(lines.get(name, []), errors):
            if v is not None and e is not None and math.isfinite(v) and math.isfinite(e):
                points += [v - e, v + e]
    left, right, top, bottom = 52, 12, 28, 40
    if not points or not steps:
        return ""
    lo, hi = min(points), max(points)
    if y_range is not None:
        lo, hi = min(lo, y_range[0]), max(hi, y_range[1])
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    if y_range is None or lo < y_range[0] or hi > y_range[1]:
        pad = (hi - lo) * 0.08
        lo, hi = lo - pad, hi + pad
    x0, x1 = min(steps), max(steps)
    span = (x1 - x0) or 1

    def x(step):
        return left + (step - x0) / span * (width - left - right) if x1 != x0 else (left + width - right) / 2

    def y(value):
        return top + (hi - value) / (hi - lo) * (height - top - bottom)

    extra = 18 * ((len(lines) + 2) // 3) + (16 if note else 0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + extra}"'
        f' role="img" aria-label="{esc(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600" fill="#1d232b">{esc(title)}</text>',
    ]
    # enough decimals that neighbouring ticks differ (a quarter of the range apart), whatever the scale
    decimals = max(0, 1 - math.floor(math.log10((hi - lo) / 4)))
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#e6e9ee"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end" fill="#5f6b7a">'
            f"{value:.{decimals}f}</text>"
        )
    every = max(1, math.ceil(len(steps) / 8))  # at most ~8 step labels, the last one always (its neighbour
    last = len(steps) - 1  # label dropped when the two would touch)
    for i, step in enumerate(steps):
        if i == last or (i % every == 0 and (last - i >= every / 2 or i == 0)):
            parts.append(
                f'<text x="{x(step):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle" '
                f'fill="#5f6b7a">{step}</text>'
            )
    parts.append(
        f'<text x="{(left + width - right) / 2:.1f}" y="{height - bottom + 30}" font-size="11" '
        f'text-anchor="middle" fill="#5f6b7a">step{" — " + esc(y_label) if y_label else ""}</text>'
    )
    for index, (name, values) in enumerate(lines.items()):
        colour = PALETTE[index % len(PALETTE)]
        if name in thin:
            faint = [(x(s), y(v)) for s, v in zip(steps, thin[name]) if v is not None and math.isfinite(v)]
            if len(faint) > 1:
                path = " ".join(f"{'M' if i == 0 else 'L'}{cx:.1f},{cy:.1f}" for i, (cx, cy) in enumerate(faint))
                parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-opacity="0.3" stroke-width="1"/>')
        if name in bands:
            band = [
                (s, v, e)
                for s, v, e in zip(steps, values, bands[name])
                if v is not None and e is not None and math.isfinite(v) and math.isfinite(e)
            ]
            if band:
                upper = [f"{x(s):.1f},{y(v + e):.1f}" for s, v, e in band]
                lower = [f"{x(s):.1f},{y(v - e):.1f}" for s, v, e in reversed(band)]
                if len(band) == 1:  # one point: an error bar
                    s, v, e = band[0]
                    parts.append(
                        f'<line class="se-bar" x1="{x(s):.1f}" x2="{x(s):.1f}" y1="{y(v + e):.1f}" '
                        f'y2="{y(v - e):.1f}" stroke="{colour}" stroke-width="2"/>'
                    )
                else:
                    parts.append(
                        f'<polygon class="se-band" points="{" ".join(upper + lower)}" fill="{colour}" '
                        f'fill-opacity="0.18" stroke="none"/>'
                    )
        coords = [(x(s), y(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(v)]
        if len(coords) > 1:
            path = " ".join(f"{'M' if i == 0 else 'L'}{cx:.1f},{cy:.1f}" for i, (cx, cy) in enumerate(coords))
            parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if markers:
            for cx, cy in coords:
                parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}"/>')
        lx, ly = left + (index % 3) * ((width - left) / 3), height + 4 + 18 * (index // 3)
        parts.append(
            f'<rect x="{lx:.1f}" y="{ly}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14:.1f}" y="{ly + 9}" font-size="11" fill="#1d232b">{esc(name[:28])}</text>'
        )
    if note:
        parts.append(
            f'<text class="note" x="{left}" y="{height + extra - 4}" font-size="11" fill="#39424e">{esc(note)}</text>'
        )
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
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{esc(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600" fill="#1d232b">{esc(title)}</text>',
    ]
    for i in range(bins):
        base = 0
        for index, name in enumerate(groups):
            count = counts[name][i]
            if not count:
                continue
            bar_h = count / peak * plot_h
            y = top + plot_h - (base + count) / peak * plot_h
            parts.append(
                f'<rect x="{left + i * plot_w / bins + 1:.1f}" y="{y:.1f}" width="{plot_w / bins - 2:.1f}" '
                f'height="{bar_h:.1f}" fill="{PALETTE[index % len(PALETTE)]}"><title>{esc(name)}: '
                f"{count}</title></rect>"
            )
            base += count
    if lo < 0 < hi:
        zx = left + (0 - lo) / (hi - lo) * plot_w
        parts.append(
            f'<line x1="{zx:.1f}" x2="{zx:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#1d232b" '
            f'stroke-dasharray="4 3"/>'
        )
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        parts.append(
            f'<text x="{left + i * plot_w / 4:.1f}" y="{top + plot_h + 14}" font-size="10" '
            f'text-anchor="middle" fill="#5f6b7a">{value:.3g}</text>'
        )
    parts.append(f'<text x="{left - 6}" y="{top + 8}" font-size="10" text-anchor="end" fill="#5f6b7a">{peak}</text>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#5f6b7a"/>')
    for index, name in enumerate(groups):
        lx = left + index * 170
        parts.append(
            f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{lx + 14}" y="{height - 5}" font-size="11" fill="#1d232b">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return '<div class="chart">' + "".join(parts) + "</div>"


def tiles(items) -> str:
    """Headline numbers: (label, value) or (label, value, True) for a value that reports a failure (shown in red)."""
    return (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile{" bad" if len(item) > 2 and item[2] else ""}"><div class="v">{esc(item[1])}</div>'
            f'<div class="k">{esc(item[0])}</div></div>'
            for item in items
        )
        + "</div>"
    )
