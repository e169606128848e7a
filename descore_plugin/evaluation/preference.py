"""Preference accuracy of a DeScore model on labelled pairs: what `recipes/eval_rm.py` reports and what the trainer
calls for held-out accuracy.

    from descore_plugin.data.pairs import load_pairs
    from descore_plugin.evaluation.preference import evaluate_pairs, write_evaluation
    result = evaluate_pairs(model, load_pairs("pairs.jsonl"), think=True)
    result["accuracy_without_ties"], result["accuracy_with_ties"]
    write_evaluation(result, "eval/")   # eval/accuracy.json + eval/pairs_scored.csv

Each unique video is scored once, however many pairs it appears in. A video is its file AND the prompt it is judged
against (the same file under another prompt is another judgement, with another CoT). The margin of a pair is
m = reward(A) - reward(B); the accuracies are those of `descore_plugin.evaluation.metrics` (without ties: sign agreement on the
pairs humans did not tie; with ties: the "Ties Matter" threshold sweep, arXiv 2305.14324). Pairs labelled
"invalid" are left out (counted in `num_pairs_invalid`), as the benchmarks do.
"""

import csv
import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from descore_plugin.data.pairs import Pair
from descore_plugin.evaluation.metrics import (
    accuracy_by_slice,
    accuracy_ties_as_errors,
    accuracy_with_ties,
    accuracy_without_ties,
)

__all__ = ["evaluate_pairs", "write_evaluation", "SUMMARY_KEYS", "CSV_COLUMNS"]

SUMMARY_KEYS = (
    "accuracy_with_ties",
    "accuracy_without_ties",
    "accuracy_ties_as_errors",
    "num_pairs",
    "num_pairs_without_ties",
    "num_pairs_invalid",
    "num_videos_scored",
    "think",
    "accuracy_without_ties_by_slice",
)
"""What goes into accuracy.json (the by-slice entry only when some pair carries a slice tag)."""
CSV_COLUMNS = (
    "video_a",
    "video_b",
    "prompt",
    "label",
    "slice",
    "reward_a",
    "reward_b",
    "margin",
    "cot_a",
    "cot_b",
    "parse_error_a",
    "parse_error_b",
    "scores_a",
    "scores_b",
)
"""pairs_scored.csv: parse_error_* says why a CoT did not parse (empty when it did, or without a CoT); scores_* is
the data's per-dimension truth of the video as JSON (e.g. the synthetic world's true defects), when the pair file
carries it."""
RUN_FACTS = ("model", "pairs", "max_new_tokens", "cot_parse_rate", "num_cots", "num_cots_unparsed", "reward_range")
"""Also written to accuracy.json when known: which model (`model`) and data (`pairs`; set by the caller), the CoT
length limit used, the parse rate of the CoTs, and the range of the rewards of the scored videos ({"mean", "std",
"min", "max", "num_videos"}: what `descore report` compares other scores of this model with)."""


def _video_key(path: str, prompt: str, instruction: str | None = None) -> tuple[str, str, str | None]:
    """A video is scored once per (file, prompt, instruction): the official CSV's `problem` is the instruction."""
    return os.path.realpath(path), prompt, instruction


def _video_chunks(model, keys: list, batch_size: int, load, num_workers: int):
    """Decoded videos of `keys`, `batch_size` at a time: through `load` when given, else streamed by the loader of
    descore_plugin.data.loader (decoding in `num_workers` processes ahead of the model; a failure names the file)."""
    if load is not None:
        for start in range(0, len(keys), batch_size):
            yield [load(path) for path, *_ in keys[start : start + batch_size]]
        return
    from descore_plugin.data.loader import stream_videos

    for items in stream_videos(
        [path for path, *_ in keys],
        fps=model.config.fps,
        num_frames=model.config.num_frames,
        chunk_size=batch_size,
        num_workers=num_workers,
    ):
        failed = [item.error for item in items if item.error]
        if failed:
            raise ValueError(failed[0])
        yield [item.video for item in items]


def _score_unique_videos(
    model, keys: list, think: bool, batch_size: int, max_new_tokens, progress: bool, load, num_workers: int = 0
) -> dict:
    """{(real path, prompt, instruction): (reward, CoT or None, why the CoT did not parse or None)}, scoring
    `batch_size` videos per `model.score` call."""
    scored = {}
    with tqdm(total=len(keys), desc="scoring videos", unit="video", disable=not progress) as bar:
        chunks = _video_chunks(model, keys, batch_size, load, num_workers)
        for start, videos in zip(range(0, len(keys), batch_size), chunks):
            chunk = keys[start : start + batch_size]
            instructions = [key[2] for key in chunk]  # passed only when some pair carries one (official CSV)
            out = model.score(
                videos,
                [key[1] for key in chunk],
                think=think,
                **({"instructions": instructions} if any(instructions) else {}),
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
            )
            cots = out.cots if out.cots is not None else [None] * len(chunk)
            errors = getattr(out, "parse_errors", None) or [None] * len(chunk)
            for key, reward, cot, error in zip(chunk, out.rewards.tolist(), cots, errors):
                scored[key] = (reward, cot, error if cot is not None else None)
            bar.update(len(chunk))
    return scored


def evaluate_pairs(
    model,
    pairs: list[Pair],
    think: bool = True,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    progress: bool = True,
    load=None,
    num_workers: int = 0,
) -> dict:
    """Score every unique video of `pairs` once with `model` (a DeScoreReward) and compute preference accuracy.

    think: score with the model's own generated CoT (think, then score); False = the masked-CoT fast path.
    max_new_tokens: CoT length limit (None: the model's `config.max_new_tokens`).
    load: maps a video path to what `model.score` takes; None (default): videos stream through the loader of
        descore_plugin.data.loader, decoded in `num_workers` worker processes (0: in this process).

    Returns a dict with:
        accuracy_with_ties, accuracy_without_ties (None when every pair is a human tie), accuracy_ties_as_errors
        (the official cold start's figure, a compatibility number: ties and invalid rows count as errors; see
        `metrics.accuracy_ties_as_errors`), num_pairs (pairs scored,
        ties included), num_pairs_without_ties, num_pairs_invalid (left out), num_videos_scored, think;
        accuracy_without_ties_by_slice ({"all": ..., slice tag: ...}, untagged pairs as "untagged"; only when some
        pair carries a slice tag and some pair is not a tie);
        margins (float64 array, reward_a - reward_b per scored pair); rows (one dict per scored pair, CSV_COLUMNS).
    """
    kept = [pair for pair in pairs if pair.label != "invalid"]
    if not kept:
        raise ValueError(f"all {len(pairs)} pairs are labelled 'invalid': there is nothing to evaluate")
    keys = list(
        dict.fromkeys(  # unique, in order of first appearance
            _video_key(path, pair.prompt, pair.instruction) for pair in kept for path in (pair.video_a, pair.video_b)
        )
    )
    was_training = model.training
    model.eval()
    try:
        scored = _score_unique_videos(model, keys, think, batch_size, max_new_tokens, progress, load, num_workers)
    finally:
        model.train(was_training)

    rows = []
    for pair in kept:
        reward_a, cot_a, error_a = scored[_video_key(pair.video_a, pair.prompt, pair.instruction)]
        reward_b, cot_b, error_b = scored[_video_key(pair.video_b, pair.prompt, pair.instruction)]
        rows.append(
            {
                "video_a": pair.video_a,
                "video_b": pair.video_b,
                "prompt": pair.prompt,
                "label": pair.label,
                "slice": pair.slice,
                "reward_a": reward_a,
                "reward_b": reward_b,
                "margin": reward_a - reward_b,
                "cot_a": cot_a,
                "cot_b": cot_b,
                "parse_error_a": error_a,
                "parse_error_b": error_b,
                "scores_a": pair.scores_a,
                "scores_b": pair.scores_b,
            }
        )
    margins = np.array([row["margin"] for row in rows], dtype=np.float64)
    labels = [row["label"] for row in rows]
    num_without_ties = sum(label != "tie" for label in labels)
    result = {
        "accuracy_with_ties": accuracy_with_ties(margins, labels),
        "accuracy_without_ties": accuracy_without_ties(margins, labels) if num_without_ties else None,
        # The official cold start's figure (ties and "invalid" rows count as errors): for comparison with its logs.
        "accuracy_ties_as_errors": accuracy_ties_as_errors(margins, labels, num_invalid=len(pairs) - len(kept)),
        "num_pairs": len(rows),
        "num_pairs_without_ties": num_without_ties,
        "num_pairs_invalid": len(pairs) - len(kept),
        "num_videos_scored": len(keys),
        "think": think,
    }
    if num_without_ties and any(pair.slice is not None for pair in kept):
        slices = [pair.slice if pair.slice is not None else "untagged" for pair in kept]
        result["accuracy_without_ties_by_slice"] = accuracy_by_slice(margins, labels, slices)
    result["margins"] = margins
    result["rows"] = rows
    result.update(_scoring_facts(model, scored, think, max_new_tokens))
    return result


def _scoring_facts(model, scored: dict, think: bool, max_new_tokens) -> dict:
    """The CoT limit the scoring used, the CoT parse rate and the reward range of the scored videos (RUN_FACTS)."""
    rewards = np.array([reward for reward, _, _ in scored.values()], dtype=np.float64)
    rewards = rewards[np.isfinite(rewards)]
    facts = {
        "reward_range": {
            "mean": float(rewards.mean()),
            "std": float(rewards.std(ddof=1)) if len(rewards) > 1 else 0.0,
            "min": float(rewards.min()),
            "max": float(rewards.max()),
            "num_videos": int(len(rewards)),
        }
        if len(rewards)
        else None
    }
    if think:
        config = getattr(model, "config", None)
        limit = getattr(config, "cot_token_limit", None)
        facts["max_new_tokens"] = (
            max_new_tokens
            if max_new_tokens is not None
            else limit()
            if callable(limit)
            else getattr(config, "max_new_tokens", None)
        )
        cots = [(cot, error) for _, cot, error in scored.values() if cot is not None]
        facts["num_cots"] = len(cots)
        facts["num_cots_unparsed"] = sum(error is not None for _, error in cots)
        facts["cot_parse_rate"] = 1 - facts["num_cots_unparsed"] / len(cots) if cots else None
    return facts


def write_evaluation(result: dict, output_dir) -> tuple[Path, Path]:
    """Write `accuracy.json` (the SUMMARY_KEYS of `result`) and `pairs_scored.csv` (one row per scored pair, with
    rewards, margin and CoTs; an empty cell where there is no CoT) into `output_dir`. Returns both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accuracy_path = output_dir / "accuracy.json"
    summary = {key: result[key] for key in SUMMARY_KEYS + RUN_FACTS if key in result}
    accuracy_path.write_text(json.dumps(summary, indent=2) + "\n")
    csv_path = output_dir / "pairs_scored.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in result["rows"]:
            writer.writerow(
                {
                    key: ""
                    if row.get(key) is None
                    else json.dumps(row[key])
                    if isinstance(row[key], dict)
                    else row[key]
                    for key in CSV_COLUMNS
                }
            )
    return accuracy_path, csv_path
