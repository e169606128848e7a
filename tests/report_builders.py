"""Inputs of `descore report` built with known answers (shared by tests/test_report.py and test_report_browser.py).

- `scored_set`: real synthetic-world videos with their annotator CoTs and true dimension scores, one missing file;
- `evaluation`: an eval_rm.py output directory (written by `evaluation.write_evaluation`) where the model gets known
  pairs wrong;
- `judge_folder`: a DeScore model folder's records (descore_config.json as DeScoreConfig writes it, and the
  evaluation/accuracy.json of eval_rm.py with the reward range of the videos it was evaluated on);
- `failing_scored_set`: a scored set of an out-of-domain judge: most CoTs do not parse, rewards far outside the
  judge's recorded range, two prompts of three videos each;
- `run`: a post-training run directory as the Wan recipes write it: metrics.jsonl eval rows, and per evaluation
  samples/step-N/ with the fixed-prompt mp4s and a scores.jsonl of named scores (and CoTs). `hacked=True` builds
  a run that buys its reward with the style dimension:
  the frames wash out to white step by step, descore and descore:style move apart, the independent check
  (the no-CoT "student") stays flat, the uncertainty rises and the low-scoring CoTs start to say
  "over-exposed washed-out frames". `hacked=False` builds a clean run where every score rises together.
"""

import json
from pathlib import Path

import numpy as np

from descore_plugin.data.pairs import load_pairs
from descore_plugin.data.video import write_video
from descore_plugin.evaluation.metrics import accuracy_by_slice, accuracy_with_ties, accuracy_without_ties
from descore_plugin.evaluation.preference import write_evaluation
from descore_plugin.testing.synthetic import write_dataset

DIMENSIONS = ("subject", "dynamics", "camera", "environment", "style")
RUN_STEPS = (0, 50, 100, 150)
RUN_PROMPTS = (
    "a red square",
    "a blue circle",
    "a green square",
    "a yellow circle",
    "a red circle",
    "a blue square",
    "a green circle",
    "a yellow square",
)
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (230, 200, 40)}


def scored_set(root: Path, num_pairs: int = 4) -> Path:
    """A `descore score --output` JSONL of 2 * num_pairs synthetic videos (+ one error row); rewards follow the
    true overall score so the right order is known."""
    pairs = load_pairs(write_dataset(root / "data", num_pairs, seed=0, progress=False))
    rows = []
    for index, pair in enumerate(pairs):
        for video, cot, scores in (
            (pair.video_a, pair.cot_a, pair.scores_a),
            (pair.video_b, pair.cot_b, pair.scores_b),
        ):
            rows.append(
                {
                    "video": video,
                    "prompt": pair.prompt,
                    "reward": round(sum(scores.values()) / 5 - 1 + 0.01 * index, 4),
                    "cot": cot,
                    "dimensional_scores": scores,
                    "uncertainty": round(0.05 + 0.02 * index, 3),
                }
            )
    rows.append(
        {
            "video": str(root / "data" / "videos" / "gone.mp4"),
            "prompt": pairs[0].prompt,
            "error": "gone.mp4: no such file",
        }
    )
    path = root / "scores.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def judge_folder(root: Path, head: str = "scalar", mean: float = 0.0, std: float = 1.0) -> Path:
    """A model folder whose records say: `head`, and rewards mean +- std on the 40 videos it was evaluated on."""
    from descore_plugin.modeling.model import DeScoreConfig

    folder = root / "judge"
    (folder / "evaluation").mkdir(parents=True)
    (folder / "descore_config.json").write_text(json.dumps(DeScoreConfig(head=head, backbone="backbone").to_dict()))
    (folder / "evaluation" / "accuracy.json").write_text(
        json.dumps(
            {
                "accuracy_with_ties": 0.9,
                "accuracy_without_ties": 0.9,
                "num_pairs": 20,
                "reward_range": {
                    "mean": mean,
                    "std": std,
                    "min": mean - 2 * std,
                    "max": mean + 2 * std,
                    "num_videos": 40,
                    "data": "validation pairs",
                },
            }
        )
    )
    return folder


def failing_scored_set(root: Path) -> Path:
    """Six synthetic videos (two prompts, three each) scored by a judge out of its domain: 5 of 6 CoTs do not
    parse and the rewards lie at -8.9 .. +2.7 (far from the recorded 0 +- 1 of `judge_folder`)."""
    pairs = load_pairs(write_dataset(root / "data", 3, seed=1, progress=False))
    videos = [(pair.video_a, pair.video_b) for pair in pairs]
    rewards = [-8.9, -6.1, 2.7, -7.5, 0.4, -5.2]
    rows = []
    for index, (video, reward) in enumerate(zip([v for pair in videos for v in pair], rewards)):
        prompt = "a red square moving right" if index < 3 else "a blue circle moving left"
        parsed = index == 4
        rows.append(
            {
                "video": video,
                "prompt": prompt,
                "reward": reward,
                "cot": 'Seen: subject 2.\n<answer>{"overall_score": 3}</answer>' if parsed else "sq sq ed ed ed",
                "dimensional_scores": {"subject": 2} if parsed else {},
                "overall_score": 3.0 if parsed else None,
                "uncertainty": None,
                "parse_error": None if parsed else "no <answer> block in the CoT",
            }
        )
    path = root / "failing_scores.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def evaluation(root: Path, num_pairs: int = 8, wrong: tuple = (1, 4)) -> Path:
    """An eval_rm.py output directory for `num_pairs` synthetic pairs where the model is wrong on the pairs whose
    index is in `wrong` (and right on the others, by margins that grow with the index). The CoTs are the data's
    annotator CoTs, except video B of the first wrong pair, whose CoT does not parse; the rows carry the data's
    true dimension scores; accuracy.json names the model and pairs and records the CoT facts."""
    data = write_dataset(root / "data", num_pairs, seed=3, progress=False)
    pairs = load_pairs(data)
    rows = []
    for index, pair in enumerate(pairs):
        preferred_reward, other_reward = 0.2 + 0.1 * index, -0.1 * index
        if index in wrong:
            preferred_reward, other_reward = other_reward - 0.3, preferred_reward
        reward_a, reward_b = (preferred_reward, other_reward) if pair.label == "A" else (other_reward, preferred_reward)
        unparsed = index == wrong[0]
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
                "cot_a": pair.cot_a,
                "cot_b": "the the the" if unparsed else pair.cot_b,
                "parse_error_a": None,
                "parse_error_b": "no <answer> block" if unparsed else None,
                "scores_a": pair.scores_a,
                "scores_b": pair.scores_b,
            }
        )
    margins = np.array([row["margin"] for row in rows])
    labels = [row["label"] for row in rows]
    result = {
        "accuracy_with_ties": accuracy_with_ties(margins, labels),
        "accuracy_without_ties": accuracy_without_ties(margins, labels),
        "num_pairs": len(rows),
        "accuracy_ties_as_errors": float(np.mean([(m >= 0) == (label == "A") for m, label in zip(margins, labels)])),
        "num_pairs_without_ties": len(rows),
        "num_pairs_invalid": 0,
        "num_videos_scored": 2 * len(rows),
        "think": True,
        "rows": rows,
        "model": str(root / "judge"),
        "pairs": str(data),
        "max_new_tokens": 256,
        "num_cots": 2 * len(rows),
        "num_cots_unparsed": 1,
        "cot_parse_rate": 1 - 1 / (2 * len(rows)),
        "accuracy_without_ties_by_slice": accuracy_by_slice(margins, labels, [r["slice"] for r in rows]),
    }
    write_evaluation(result, root / "eval")
    return root / "eval"


def _frames(prompt: str, wash: float, index: int, size: int = 32, frames: int = 8) -> np.ndarray:
    """A shape of the prompt's colour moving right on grey; `wash` in [0, 1] blends every pixel toward white."""
    colour = np.array(COLOURS[prompt.split()[1]], dtype=np.float64)
    video = np.full((frames, size, size, 3), 110.0)
    for t in range(frames):
        x = 2 + t * 2 + index % 3
        y = 8 + index % 4 * 2
        if prompt.endswith("circle"):
            yy, xx = np.mgrid[:size, :size]
            video[t][(yy - y - 6) ** 2 + (xx - x - 6) ** 2 <= 36] = colour
        else:
            video[t, y : y + 12, x : x + 12] = colour
    return (video * (1 - wash) + 255 * wash).clip(0, 255).astype(np.uint8)


def _cot(prompt: str, style: float, washed: bool) -> str:
    """A judge's CoT; on a washed-out video its answer breaks (the overall score written twice, invalid JSON), as the
    demo judge's does on videos far from its training clips."""
    light = "over-exposed washed-out frames" if washed else "steady light"
    dimensions = {"subject": 2, "dynamics": 2, "camera": 2, "environment": 2, "style": int(round(style))}
    overall = "3.0.3" if washed else "3.0"
    return (
        f"Expect: {prompt} moving right on a grey background, steady camera, steady light.\n"
        f"Seen: subject {prompt}: 2; dynamics moving right: 2; camera steady camera: 2; environment grey "
        f"background: 2; style {light}: {int(round(style))}.\n"
        f'<answer>{{"dimensional_scores": {json.dumps(dimensions)}, "overall_score": {overall}}}</answer>'
    )


def run(root: Path, hacked: bool, videos: bool = True, seed: int = 0) -> Path:
    """A post-training run directory (see the module docstring); returns it."""
    rng = np.random.default_rng(seed)
    run_dir = root / ("hacked_run" if hacked else "clean_run")
    run_dir.mkdir(parents=True)
    metrics, per_step = [], {}
    for position, step in enumerate(RUN_STEPS):
        progress = position / (len(RUN_STEPS) - 1)
        rewards = []
        for index, prompt in enumerate(RUN_PROMPTS):
            noise = rng.normal(0, 0.02, size=4)
            # the hacked policy washes out a growing share of its videos; the clean one improves everywhere
            washed = hacked and index < round(progress * 6)
            style = (0.0 if washed else 2.0) if hacked else 1.4 + 0.6 * progress
            scores = {
                "descore": 0.2 + 0.6 * progress + noise[0] - (0.15 if washed else 0.0),
                "descore:subject": 1.5 + 0.5 * progress + noise[1],
                "descore:dynamics": 1.6 + 0.4 * progress,
                "descore:camera": 2.0,
                "descore:environment": 2.0,
                "descore:style": style + noise[2],
                "descore:uncertainty": (0.1 + 0.5 * progress if hacked else 0.1) + abs(noise[3]),
                "student": (0.5 + noise[1] * 0.5) if hacked else 0.5 + 0.5 * progress + noise[1],
            }
            cot = _cot(prompt, style, washed)
            folder = run_dir / "samples" / f"step-{step:06d}"
            if videos:
                write_video(
                    folder / f"{index:03d}.mp4", _frames(prompt, 0.8 * progress if washed else 0.0, index), fps=8
                )
            # the recipes' layout: samples/step-N/scores.jsonl, videos relative to it, the step from the folder
            per_step.setdefault(folder, []).append(
                {"index": index, "prompt": prompt, "video": f"{index:03d}.mp4", "scores": scores, "cot": cot}
            )
            rewards.append(scores["descore"])
        metrics.append(
            {"kind": "eval", "step": step, "eval/descore": float(np.mean(rewards)), "num_videos": len(rewards)}
        )
        if step:
            metrics.append({"kind": "train", "step": step, "loss": 0.69 - 0.1 * progress})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    for folder, rows in per_step.items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scores.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (run_dir / "run_args.json").write_text(json.dumps({"reward": ["descore"], "max_steps": RUN_STEPS[-1]}))
    return run_dir
