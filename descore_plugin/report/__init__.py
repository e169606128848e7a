"""HTML reports: one self-contained page that shows why a reward moved.

    descore report PATH --output-dir OUT        # writes OUT/index.html (+ OUT/media/*.mp4); open it in a browser

    from descore_plugin.report import write_report
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
(d) `cot_parse_flags`: fewer of the judge's CoTs parse than on the base's samples (DeScore's head reads the CoT,
    so the score of a broken one can be anything: the generator may be rewarded for breaking the judge's reasoning);
(e) `phrase_flags`: phrases (word n-grams) that the CoTs of the lowest-scoring samples of a checkpoint use much more
    often than those of the base model's lowest-scoring samples (a new failure the judge keeps describing).
Each compares every checkpoint with the base and lists the checkpoints where the condition holds and still holds at
the next checkpoint (or at the last one). A change counts when it exceeds `z` (default 3: about one false alarm in 700 comparisons of a series that did not
move) standard errors of the difference of the two means (per-video values known) and `min_change` in the series'
own units.
"""

from __future__ import annotations

from pathlib import Path

from descore_plugin.report.checks import missing_checks, score_samples
from descore_plugin.report.evaluation import evaluation_page
from descore_plugin.report.flags import (
    Change,
    Flag,
    change,
    cot_parse_flags,
    dimension_drop_flags,
    hacking_flags,
    independent_check_flags,
    low_score_phrases,
    phrase_flags,
    primary_name,
    run_series,
    uncertainty_flags,
)
from descore_plugin.report.html import Media, svg_histogram, svg_lines
from descore_plugin.report.inputs import (
    KINDS,
    ReportInputError,
    detect_kind,
    load_evaluation,
    load_model_record,
    load_run,
    load_scored_set,
    training_curves,
)
from descore_plugin.report.run import is_reward_model_run, reward_model_run_page, run_page
from descore_plugin.report.scores import judge_warnings, prompt_ranks, scores_page

__all__ = [
    "ReportInputError",
    "detect_kind",
    "load_scored_set",
    "load_evaluation",
    "load_run",
    "Flag",
    "Change",
    "change",
    "dimension_drop_flags",
    "independent_check_flags",
    "uncertainty_flags",
    "cot_parse_flags",
    "phrase_flags",
    "low_score_phrases",
    "hacking_flags",
    "run_series",
    "primary_name",
    "svg_lines",
    "svg_histogram",
    "judge_warnings",
    "prompt_ranks",
    "load_model_record",
    "score_samples",
    "training_curves",
    "write_report",
    "KINDS",
]


def write_report(
    path,
    output_dir,
    kind: str | None = None,
    reward: str | None = None,
    checks=None,
    z: float = 3.0,
    min_change: float = 0.0,
    model=None,
    device=None,
    dtype=None,
) -> Path:
    """Write OUTPUT_DIR/index.html for `path` (kind detected unless given) and return its path. `reward` and
    `checks`: for a run, the optimised reward and the independent checks (see `hacking_flags`). `model`: the
    DeScore model that scored a scored set (named on the page; the range its folder records flags out-of-domain
    scores), or the judge of a run's `checks` that the run did not log: those are computed on its saved samples
    (`checks.score_samples`, on `device` / `dtype`)."""
    path, output_dir = Path(path), Path(output_dir)
    kind = kind or detect_kind(path)
    if kind not in KINDS:
        raise ReportInputError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    media = Media(output_dir)
    if kind == "scores":
        rows = load_scored_set(path)
        named = next((row["model"] for row in rows if row["model"]), None)  # a `model` field of the rows
        record = (
            load_model_record(model)
            if model is not None
            else load_model_record(named)
            if named and (Path(named) / "descore_config.json").is_file()
            else None
        )
        page = scores_page(rows, media, path, record)
    elif kind == "evaluation":
        page = evaluation_page(load_evaluation(path), media, path)
    else:
        run = load_run(path)
        if is_reward_model_run(run):  # recipes/train_rm.py: held-out accuracy, no samples to hack
            page = reward_model_run_page(run, path)
        else:
            missing = missing_checks(run, checks)
            score_samples(run, missing, model=model, device=device, dtype=dtype, output_dir=output_dir)
            page = run_page(run, hacking_flags(run, reward, checks, z=z, min_change=min_change), media, path)
    index = output_dir / "index.html"
    tmp = output_dir / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index
