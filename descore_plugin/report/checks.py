"""Independent checks computed after the fact: `descore report RUN --check NAME` scores the fixed-prompt samples a
run saved (samples/step-N/*.mp4) with a reward the run did not log, so a run that optimised one reward can still be
compared with another (an analytic reward, or a second DeScore judge given with --model). The scores are written to
OUT/check_scores.jsonl next to the page, and the run directory is left untouched."""

from __future__ import annotations

import json
import logging
import math

from descore_plugin.report.inputs import CHECK_SCORES_FILE, ReportInputError

__all__ = ["score_samples", "missing_checks"]

logger = logging.getLogger(__name__)


def missing_checks(run: dict, names) -> list[str]:
    """The names of `names` that no sample (nor eval row) of the run carries: those to compute."""
    logged = {name for sample in run["samples"] for name in sample["scores"]}
    logged |= {key[len("eval/") :] for row in run["evals"] for key in row if key.startswith("eval/")}
    return [name for name in names or [] if name not in logged]


def _frames(path):
    """(F, 3, H, W) float tensor in [0, 1] of a video file, as the post-training loops hand videos to rewards."""
    import av
    import numpy as np
    import torch

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]
    if not frames:
        raise ReportInputError(f"{path}: no video frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


def score_samples(
    run: dict, names: list[str], model=None, device=None, dtype=None, output_dir=None, batch_size: int = 8
) -> None:
    """Score every saved sample video of `run` (`load_run`) with the rewards `names` (reward names of
    descore_plugin.rewards: analytic:brightness, analytic:redness, descore, descore:<dimension>, ...; a descore
    name needs `model`, a DeScore folder, hub id or server URL) and add the scores to the samples in place; a
    sample whose video is missing gets NaN. Writes OUTPUT_DIR/check_scores.jsonl when `output_dir` is given."""
    import torch
    from tqdm.auto import tqdm

    from descore_plugin import rewards as reward_lib
    from descore_plugin.rewards.contract import ANALYTIC_REWARDS

    if not names:
        return
    if not run["samples"]:
        raise ReportInputError(
            f"--check {names[0]}: {run['path']} saved no sample videos (samples/step-N/) to score "
            "after the fact; a check can only be one of the scores its metrics.jsonl logged"
        )
    known = reward_lib.DESCORE_NAMES + tuple(ANALYTIC_REWARDS)
    for name in names:
        if name not in known:
            logged = sorted({n for s in run["samples"] for n in s["scores"]})
            raise ReportInputError(
                f"--check {name}: the run logged no such score ({', '.join(logged)}) and it is not "
                f"a reward to compute on its samples ({', '.join(known)})"
            )
        if name.startswith("descore") and model is None:
            raise ReportInputError(
                f"--check {name}: scoring the run's samples with a DeScore judge needs --model "
                "(its folder, hub id or http://host:port of `descore serve`)"
            )
    rewards = reward_lib.reward_set(
        names, reward_model=model, device=device or "cpu", dtype=dtype, batch_size=batch_size
    )
    samples = [s for s in run["samples"] if s["path"] is not None]
    for sample in run["samples"]:
        sample["scores"].update({name: math.nan for name in names})
    by_path: dict = {}
    for sample in samples:
        by_path.setdefault(sample["path"], []).append(sample)
    paths = list(by_path)
    with tqdm(total=len(paths), desc="scoring saved samples", unit="video") as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            videos = [_frames(path) for path in chunk]
            groups: dict = {}
            for path, video in zip(chunk, videos):  # one batch per frame shape
                groups.setdefault(tuple(video.shape), []).append((path, video))
            for members in groups.values():
                prompts = [by_path[path][0]["prompt"] for path, _ in members]
                scores = rewards(torch.stack([video for _, video in members]), prompts)
                for row, (path, _) in enumerate(members):
                    for sample in by_path[path]:
                        sample["scores"].update({name: float(scores[name][row]) for name in names})
            bar.update(len(chunk))
    if output_dir is not None:
        lines = [
            {
                "step": s["step"],
                "index": s["index"],
                "prompt": s["prompt"],
                "video": str(s["path"]),
                "scores": {name: None if math.isnan(s["scores"][name]) else s["scores"][name] for name in names},
            }
            for s in run["samples"]
        ]
        (output_dir / CHECK_SCORES_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    run["computed_checks"] = list(names)
    logger.info("scored %d saved samples with %s", len(samples), ", ".join(names))
