r"""VBench in miniature: post-train the shipped world Wan with the DeScore judge (and baselines), measured by the
synthetic world's truth on training prompts and on HELD-OUT prompts (scenes never used in pre- or post-training).

    python recipes/vbench_mini.py --output-dir outputs/vbench_mini                 # every run, 3 seeds
    python recipes/vbench_mini.py --output-dir outputs/vbench_mini --quick         # base + Flow-DPO + LongCat, judge
    python recipes/vbench_mini.py --output-dir OUT --seeds 0 --runs base flow_dpo/judge flow_dpo/truth

Runs are named `<method>/<reward>` (methods flow_dpo, longcat, nft; rewards judge = DeScore with its CoT, as the
paper; judge_no_cot = the same judge's masked-CoT path; student = a no-CoT student distilled from the judge
(--student, or distilled here); discriminative = a no-CoT Bradley-Terry judge of the same world pairs
(--discriminative, or trained here); truth = the world:truth reward itself, an upper bound; redness =
analytic:redness, a control that should NOT improve fidelity), plus `base`, the generator as shipped. Each
post-training run is the public recipe's own code, called with the flags a user would give it (in a worker process of
this script, --workers of them at once, or in this process):

    accelerate launch recipes/wan_flow_dpo.py --pipeline recipes/world_wan --reward-model recipes/demo_judge \
        --prompts OUT/prompts/train.txt --output-dir OUT/runs/flow_dpo_judge/seed-0 ...   (`command` in results.json)

Measured per run and seed, on fresh videos of plain `WanPipeline.from_pretrained(PIPELINE)` +
`pipe.load_lora_weights(LORA)` from the same fixed noises for every run (descore_plugin/evaluation/world_truth.py):
the VBench-like columns (subject, colour, dynamics, direction, background, temporal flicker, camera steadiness,
dynamic degree, all as asked) on the training prompts and on the held-out prompts, the judge's reward (think) next
to the world:truth reward of the same videos, sample diversity (mean absolute pixel difference between videos of the
same prompt: a collapse drives it to 0), and steps to reach each level (the run's evaluations of world:truth every
--eval-every steps, a --check the run logs but never trains on).

Writes OUT/results.json, OUT/results.md (mean +- standard error over seeds), OUT/report/<run>/seed-S/index.html
(`descore report` of each run: the base model's and the checkpoints' fixed-prompt sample grids, curves, flags).
A run that cannot be run is listed as "not run" with its reason; nothing is invented.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from descore_plugin.utils.args import help_field, parse_config

ROOT = Path(__file__).resolve().parent
SHIPPED_PIPELINE = ROOT / "world_wan"
SHIPPED_JUDGE = ROOT / "demo_judge"
METHODS = ("flow_dpo", "longcat", "nft")
REWARDS = ("judge", "judge_no_cot", "student", "discriminative", "truth", "redness")
BASELINES = ("student", "discriminative")
"""The rewards that are no-CoT reward models trained for this benchmark (given, or trained here)."""
QUICK_RUNS = ("base", "flow_dpo/judge", "longcat/judge")
RECIPES = {
    "flow_dpo": "recipes/wan_flow_dpo.py",
    "longcat": "recipes/wan_flow_grpo.py --algorithm longcat",
    "nft": "recipes/wan_nft.py",
}
JUDGE_MAX_NEW_TOKENS = 160
"""The judge's CoT cap (the world's CoTs are about 112 tokens)."""
LEVELS = (0.05, 0.10, 0.20)
"""Gains in world:truth (over the run's own step-0 evaluation) whose first step is reported (sample efficiency)."""


@dataclass
class BenchArguments:
    output_dir: str = help_field("results.json, results.md, the runs and their reports go here", required=True)
    seeds: list[int] = help_field("seeds of the post-training runs and of the measurement noises", [0, 1, 2], nargs="+")
    quick: bool = help_field(f"one seed (the first of --seeds), runs {' '.join(QUICK_RUNS)} only, fewer prompts", False)
    runs: list[str] | None = help_field(
        "run names to do (default: all; with --quick: the quick ones), e.g. base flow_dpo/judge nft/truth",
        None,
        nargs="+",
    )
    pipeline: str = help_field("the world generator (a diffusers WanPipeline folder)", str(SHIPPED_PIPELINE))
    judge: str = help_field("the DeScore judge (checkpoint directory)", str(SHIPPED_JUDGE))
    student: str | None = help_field(
        "a no-CoT student distilled from --judge (recipes/distill_student.py output); unset: distilled here "
        "(--baseline-steps on the discriminative baseline's pairs, OUT/student) when a student run is asked for",
        None,
    )
    discriminative: str | None = help_field(
        "a no-CoT Bradley-Terry judge of the world's pairs; unset: trained here "
        "(--baseline-steps, OUT/discriminative) when a discriminative run is asked for",
        None,
    )
    baseline_steps: int = help_field("training steps of the student and the discriminative judge trained here", 600)
    baseline_pairs: int = help_field(
        "world pairs the student and the discriminative judge trained here learn from", 600
    )
    train_prompts: int = help_field("training prompts (scenes of pre-training) post-trained on and measured", 16)
    held_out_prompts: int = help_field("held-out prompts (scenes never captioned in pre-training) measured", 16)
    videos_per_prompt: int = help_field("measured videos per prompt (each from its own fixed noise)", 4)
    steps: int | None = help_field("post-training steps of every run (unset: each method's default here)", None)
    flow_dpo_args: str = help_field(
        "more flags for every flow_dpo run, after this benchmark's own (a later flag wins), in quotes: "
        "--flow-dpo-args '--sft-weight 100'",
        "",
    )
    longcat_args: str = help_field("more flags for every longcat run, as --flow-dpo-args", "")
    nft_args: str = help_field("more flags for every nft run, as --flow-dpo-args", "")
    eval_every: int = help_field(
        "the runs evaluate world:truth on their first --eval-prompts prompts every N steps", 10
    )
    eval_prompts: int = help_field("prompts of each run's own evaluations (steps to level)", 8)
    overwrite: bool = help_field(
        "redo runs whose results exist (default: reuse those made with the same command, prompts and videos per "
        "prompt, so a killed benchmark resumes)",
        False,
    )
    workers: int = help_field(
        "post-training runs done at once, each in its own process (`--one-run`) with one thread, while this process "
        "measures the base (2: the two CPU cores the benchmark is sized for; 1: one after another, in this process)",
        2,
    )
    one_run: str | None = help_field(
        "do only this run, METHOD/REWARD:SEED, and write its record to its run directory (what --workers starts)",
        None,
    )


METHOD_STEPS = {"flow_dpo": 40, "longcat": 20, "nft": 20}
"""Default steps per method (this benchmark's choice, sized for two CPU cores)."""


def method_flags(method: str) -> list[str]:
    """This benchmark's settings of each method for a tiny generator (the recipes' defaults are sized for
    Wan-2.1-1.3B: learning rate 5e-6 and rank 64 barely move a 1M-parameter transformer in 40 steps)."""
    common = ["--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "all"]
    if method == "flow_dpo":
        # Learning rate 2e-4 and every pair over a margin (not only best vs worst): at 1e-3 on one best-worst pair per
        # prompt the policy separates its 16 pairs by raising the error of winner AND loser (mean squared error of
        # both about doubled by step 30) and draws worse videos, even with the world:truth reward itself (held-out
        # world:truth 0.449 -> 0.375, one seed, the 2,500-step generator); at 2e-4 with margin pairs it stays near the
        # base (0.480; the shipped 5,000-step generator: 0.520 -> 0.511). docs/vbench_mini.md has the table.
        return common + [
            "--pair-selection",
            "margin",
            "--learning-rate",
            "2e-4",
            "--videos-per-prompt",
            "8",
            "--generation-batch-size",
            "16",
            "--batch-size",
            "8",
        ]
    if method == "longcat":
        return common + ["--learning-rate", "1e-3", "--group-size", "8", "--prompts-per-step", "2"]
    if method == "nft":
        return common + ["--learning-rate", "1e-3", "--group-size", "8", "--prompts-per-step", "2"]
    raise ValueError(method)


# ----------------------------------------------------------------------------------------------------------------
# Prompts


def prompt_sets(train_count: int, held_out_count: int) -> tuple[list[str], list[str]]:
    """Training prompts (scenes of pre-training, every 8th for a spread of colours, directions, backgrounds) and
    held-out prompts (the scenes the generator never saw captioned)."""
    from descore_plugin.testing import world_wan

    training = world_wan.training_scenes()
    stride = max(1, len(training) // max(1, train_count))
    train = [scene.prompt for scene in training[::stride][:train_count]]
    held_out = [scene.prompt for scene in world_wan.held_out_scenes()[:held_out_count]]
    return train, held_out


# ----------------------------------------------------------------------------------------------------------------
# Measuring a generator (base, or base + LoRA) on fixed noises


def load_generator(pipeline: str, lora: str | None = None):
    """Plain diffusers: WanPipeline.from_pretrained(pipeline) [+ pipe.load_lora_weights(lora)]."""
    from diffusers import WanPipeline

    from descore_plugin.testing.tiny_wan import generation_defaults

    pipe = WanPipeline.from_pretrained(pipeline, dtype=torch.float32)
    if lora is not None:
        pipe.load_lora_weights(lora)
    pipe.set_progress_bar_config(disable=True)
    pipe.bench_generation = generation_defaults(pipeline)  # frames, size, steps, guidance it was trained for
    return pipe


@torch.no_grad()
def sample(
    pipe, prompts: list[str], videos_per_prompt: int, seed: int, batch_size: int = 16, progress: bool = False
) -> torch.Tensor:
    """videos_per_prompt videos per prompt, (N, F, C, H, W) in [0, 1]; video k of prompt i starts from the noise of
    seed (seed, i, k), so every run is measured on the same noises. progress: a bar over the batches."""
    from tqdm.auto import tqdm

    from descore_plugin.integrations.post_training import seed_of
    from descore_plugin.integrations.wan import frames_as_asked, pipeline_num_frames

    generation = pipe.bench_generation
    jobs = [(i, k, prompt) for i, prompt in enumerate(prompts) for k in range(videos_per_prompt)]
    out = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="drawing samples", unit="batch", disable=not progress):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed_of(seed, "vbench_mini", i, k)) for i, k, _ in chunk]
        with frames_as_asked(pipe):
            result = pipe(
                prompt=[p for _, _, p in chunk],
                negative_prompt=[generation.negative_prompt] * len(chunk),
                num_frames=pipeline_num_frames(pipe, generation.num_frames),
                height=generation.height,
                width=generation.width,
                num_inference_steps=generation.num_inference_steps,
                guidance_scale=generation.guidance_scale,
                max_sequence_length=generation.max_sequence_length,
                generator=generators,
                output_type="pt",
            )
        out.append(result.frames.float().clamp(0, 1))
    return torch.cat(out)


def diversity(videos: torch.Tensor, videos_per_prompt: int) -> float:
    """Mean absolute pixel difference (in [0, 1]) between the videos of the same prompt, averaged over prompts."""
    if videos_per_prompt < 2:
        return math.nan
    groups = videos.reshape(-1, videos_per_prompt, *videos.shape[1:])
    values = []
    for group in groups:
        for a in range(videos_per_prompt):
            for b in range(a + 1, videos_per_prompt):
                values.append(float((group[a] - group[b]).abs().mean()))
    return float(np.mean(values))


def measure(pipe, prompts: list[str], videos_per_prompt: int, seed: int, judge, no_cot: dict | None = None) -> dict:
    """World-truth columns, the judge's reward and world:truth of the same videos, the share of the judge's CoTs that
    parse (a falling share is how a generator fools this judge: docs/vbench_mini.md), and diversity. `no_cot` (name ->
    DeScoreReward) also scores every video without a CoT, per video only (what `judge_pair_accuracy` ranks)."""
    from descore_plugin.evaluation import world_truth

    videos = sample(pipe, prompts, videos_per_prompt, seed)
    repeated = [p for p in prompts for _ in range(videos_per_prompt)]
    readings = world_truth.read_videos(videos)
    columns = world_truth.vbench_columns(None, repeated, readings=readings)
    checks = [world_truth.as_asked(r, world_truth.parse_prompt(p)) for r, p in zip(readings, repeated)]
    truth = [sum(c[name] for name in world_truth.CHECKS) / len(world_truth.CHECKS) for c in checks]
    out = {"columns": columns, "truth_reward": float(np.mean(truth)), "diversity": diversity(videos, videos_per_prompt)}
    per_video = [{"prompt": p, "checks": c} for p, c in zip(repeated, checks)]
    if judge is not None:
        scored = judge.score(videos, repeated, think=True, batch_size=16, max_new_tokens=JUDGE_MAX_NEW_TOKENS)
        rewards = scored.rewards.float()
        parsed = [error is None for error in scored.parse_errors]  # the CoT's <answer> block parsed
        out["judge_reward"] = float(rewards.mean())
        out["judge_reward_stderr"] = float(rewards.std() / math.sqrt(len(rewards))) if len(rewards) > 1 else math.nan
        out["judge_cot_parse_rate"] = float(np.mean(parsed))
        for row, reward, ok in zip(per_video, rewards.tolist(), parsed):
            row["judge"], row["judge_parsed"] = reward, ok
    for name, model in (no_cot or {}).items():
        for row, reward in zip(per_video, model.score(videos, repeated, think=False, batch_size=16).rewards.tolist()):
            row[name] = reward
    out["per_video"] = per_video
    return out


def judge_pair_accuracy(per_video: list[dict], reward: str = "judge") -> dict:
    """A reward model's preference accuracy (`reward`: the key of its scores in `per_video`, the judge's by default) on
    pairs of the generator's own samples of the same prompt whose world-truth labels differ in colour (one shows the
    asked colour, the other not) or in motion (one moves the asked way smoothly, the other not), the other of the two
    agreeing; the video as asked should get the higher reward. Where the rows say whether the judge's CoT parsed
    (`judge_parsed`), the accuracy is also given on the pairs whose two CoTs both parsed (`judge_parsed_*`)."""
    slices = {"colour": lambda c: c["colour"], "motion": lambda c: c["direction"] and c["smooth"]}
    right = {name: [] for name in slices}
    both_parsed = []  # right or wrong, on the pairs of any slice whose two judge CoTs parsed
    know_parse = all("judge_parsed" in row for row in per_video)
    by_prompt: dict[str, list[dict]] = {}
    for row in per_video:
        by_prompt.setdefault(row["prompt"], []).append(row)
    for rows in by_prompt.values():
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                first, second = rows[a], rows[b]
                for name, asked in slices.items():
                    other = next(f for n, f in slices.items() if n != name)
                    if asked(first["checks"]) == asked(second["checks"]) or other(first["checks"]) != other(
                        second["checks"]
                    ):
                        continue
                    better, worse = (first, second) if asked(first["checks"]) else (second, first)
                    right[name].append(better[reward] > worse[reward])
                    if know_parse and better["judge_parsed"] and worse["judge_parsed"]:
                        both_parsed.append(right[name][-1])
    every = right["colour"] + right["motion"]
    out = {"num_pairs": len(every), "accuracy": float(np.mean(every)) if every else math.nan}
    for name, values in right.items():
        out[f"{name}_pairs"] = len(values)
        out[f"{name}_accuracy"] = float(np.mean(values)) if values else math.nan
    if know_parse:
        out["judge_parsed_pairs"] = len(both_parsed)
        out["judge_parsed_accuracy"] = float(np.mean(both_parsed)) if both_parsed else math.nan
    return out


# ----------------------------------------------------------------------------------------------------------------
# Post-training runs: the public recipes' code


def reward_flags(reward: str, args: BenchArguments) -> list[str] | str:
    """The --reward flags of a run, or the reason it cannot run."""
    if reward == "judge":
        return [
            "--reward",
            "descore",
            "--reward-model",
            args.judge,
            "--reward-max-new-tokens",
            str(JUDGE_MAX_NEW_TOKENS),
        ]
    if reward == "judge_no_cot":
        return ["--reward", "descore", "--reward-model", args.judge, "--no-think"]
    if reward in ("student", "discriminative"):
        model = getattr(args, reward)
        if not model:
            what = "student distilled from the judge" if reward == "student" else "BT judge of the world's pairs"
            return f"no --{reward} given (a no-CoT {what}); a run without --one-run trains one"
        return ["--reward", "descore", "--reward-model", model, "--no-think"]
    if reward == "truth":
        return ["--reward", "world:truth"]
    if reward == "redness":
        return ["--reward", "analytic:redness"]
    raise ValueError(reward)


def train_discriminative(output_dir: Path, steps: int = 600, train_pairs: int = 600, seed: int = 0) -> Path:
    """The VideoAlign-style baseline: the judge's tiny architecture trained as a plain Bradley-Terry reward model,
    without any CoT (every CoT masked, no next-token loss), on pairs of the world the generator draws (its size,
    shapes, directions, backgrounds; one dimension differing per pair), with the demo judge's optimiser settings.
    Returns the model directory (score it with think=False)."""
    return _train_no_cot_judge(output_dir, steps, train_pairs, seed, stage=1)


def train_student(
    output_dir: Path, teacher: str, steps: int = 600, train_pairs: int = 600, seed: int = 0, num_cot_samples: int = 2
) -> Path:
    """The distilled no-CoT student (Z-Reward's RISD, stage 3 of recipes/distill_student.py): the judge's tiny
    architecture, from the same initialisation and on the same world pairs as the discriminative baseline, learns to
    give WITHOUT a CoT the score the teacher (the judge) gives with `num_cot_samples` sampled CoTs of its own. The two
    baselines differ only in their targets: the pairs' labels, or the thinking teacher's scores. Returns the model
    directory (score it with think=False)."""
    return _train_no_cot_judge(
        output_dir,
        steps,
        train_pairs,
        seed,
        stage=3,
        teacher=teacher,
        num_cot_samples=num_cot_samples,
        teacher_max_new_tokens=JUDGE_MAX_NEW_TOKENS,
    )


def _train_no_cot_judge(output_dir: Path, steps: int, train_pairs: int, seed: int, **stage_flags) -> Path:
    from descore_plugin.testing import world_wan
    from descore_plugin.testing.synthetic import write_dataset
    from descore_plugin.testing.tiny import init_tiny
    from descore_plugin.training.trainer import TrainConfig, Trainer

    model = output_dir / "model"
    if (model / "descore_config.json").is_file():
        print(f"  already trained: {model}")
        return model
    judge_recipe = _judge_recipe()
    init_tiny(output_dir / "init", seed=seed, prompt_template=judge_recipe.TEMPLATE)
    data = write_dataset(
        output_dir / "train",
        train_pairs,
        seed=judge_recipe.TRAIN_SEED,
        defects=judge_recipe.DEFECTS,
        world=world_wan.WORLD,
        progress=False,
    )
    Trainer(
        TrainConfig(
            model=str(output_dir / "init"),
            train_data=str(data),
            output_dir=str(output_dir / "run"),
            max_steps=steps,
            warmup_ratio=min(1.0, 120 / steps),
            batch_size=16,
            learning_rate=1e-3,
            lora_rank=0,
            train_embeddings="all",
            cot_mask_prob=1.0,
            lm_loss_weight=0.0,
            save_steps=steps,
            seed=seed,
            log_with=None,
            **stage_flags,
        )
    ).train()
    import shutil

    shutil.copytree(output_dir / "run" / f"checkpoint-{steps}" / "model", model)
    return model


def _judge_recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_demo_judge", ROOT / "train_demo_judge.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo_judge"] = module
    spec.loader.exec_module(module)
    return module


def run_argv(
    method: str, reward_args: list[str], args: BenchArguments, prompts_file: Path, run_dir: Path, seed: int
) -> list[str]:
    steps = args.steps or METHOD_STEPS[method]
    # world:truth every evaluation (steps to level), a check never trained on; the truth run trains on it and logs it
    check = [] if "world:truth" in reward_args else ["--check", "world:truth"]
    return [
        "--pipeline",
        args.pipeline,
        "--prompts",
        str(prompts_file),
        "--output-dir",
        str(run_dir),
        "--overwrite",
        "--max-steps",
        str(steps),
        "--eval-every",
        str(args.eval_every),
        "--checkpoint-every",
        str(steps),
        "--eval-prompts",
        str(min(args.eval_prompts, args.train_prompts)),
        "--eval-videos-per-prompt",
        "1",
        "--seed",
        str(seed),
        *check,
        *reward_args,
        *method_flags(method),
        *shlex.split(getattr(args, f"{method}_args")),
    ]


def recorded_command(method: str, argv: list[str]) -> str:
    """The public command a run is recorded as (and compared by, when a benchmark resumes)."""
    return f"accelerate launch {RECIPES[method]} {shlex.join(argv)}"


def reusable(record: dict | None, command: str | None, train: list[str], held_out: list[str], per_prompt: int) -> bool:
    """Whether a finished run's record (or the base's, command None) measured what this benchmark would measure now:
    the same recipe command (steps, flags, seed, folders) and the same prompts with `per_prompt` videos each. A rerun
    with other settings into the same --output-dir (say `--quick` first, then the full benchmark) redoes what changed
    instead of showing old figures under new settings."""
    if not record or (command is not None and record.get("command") != command):
        return False
    for split, prompts in (("train", train), ("held_out", held_out)):
        asked = [prompt for prompt in prompts for _ in range(per_prompt)]
        if [row["prompt"] for row in record.get(split, {}).get("per_video", [])] != asked:
            return False
    return True


def read_record(run_dir: Path) -> dict | None:
    """The record a finished run wrote beside its LoRA (what a benchmark killed before collecting it resumes from)."""
    path = run_dir / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() and (run_dir / LORA_FILE).is_file() else None


def post_train_run(method: str, argv: list[str]):
    """The recipe's own entry: `post_train(config_from_argv(METHOD, argv))`, what recipes/wan_*.py run."""
    from descore_plugin.integrations.post_training import config_from_argv, post_train

    return post_train(config_from_argv(method, argv, prog=RECIPES[method].split()[0]))


def steps_to_level(run_dir: Path) -> dict:
    """From the run's evaluations of world:truth: its step-0 value and the first step reaching +each of LEVELS."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = sorted(
        (row["step"], row["eval/world:truth"])
        for row in rows
        if row.get("kind") == "eval" and row.get("eval/world:truth") is not None
    )
    if not evals:
        return {}
    start = evals[0][1]
    reached = {}
    for level in LEVELS:
        hits = [step for step, value in evals if value >= start + level - 1e-9]
        reached[f"+{level:.2f}"] = hits[0] if hits else None
    return {"start": start, "curve": evals, "first_step": reached}


# ----------------------------------------------------------------------------------------------------------------
# Summaries


def mean_stderr(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return float(values[0]), math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))


def summarise(run: dict) -> dict:
    """Mean and standard error over seeds of each figure of a run."""
    seeds = [s for s in run["seeds"].values() if "held_out" in s]
    if not seeds:
        return {}
    summary = {}
    for split in ("train", "held_out"):
        for column in seeds[0][split]["columns"]:
            if column == "num_videos":
                continue
            summary[f"{split}/{column}"] = mean_stderr([s[split]["columns"][column]["mean"] for s in seeds])
        for key in ("truth_reward", "judge_reward", "judge_cot_parse_rate", "diversity"):
            summary[f"{split}/{key}"] = mean_stderr([s[split].get(key, math.nan) for s in seeds])
    return summary


def fmt(pair) -> str:
    mean, stderr = pair
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if math.isnan(stderr) else f"{mean:.3f} ± {stderr:.3f}"


TABLE_COLUMNS = [
    ("held_out/all_as_asked", "held-out all as asked"),
    ("held_out/colour", "colour"),
    ("held_out/direction", "direction"),
    ("held_out/subject", "subject"),
    ("held_out/dynamics", "dynamics"),
    ("held_out/background", "background"),
    ("held_out/temporal_flicker", "flicker-free"),
    ("held_out/camera_steadiness", "camera steady"),
    ("held_out/dynamic_degree", "dynamic degree"),
    ("train/all_as_asked", "train all as asked"),
    ("held_out/judge_reward", "judge reward (held-out)"),
    ("held_out/judge_cot_parse_rate", "judge CoTs parsed"),
    ("held_out/truth_reward", "world:truth"),
    ("held_out/diversity", "diversity"),
]


def markdown(results: dict) -> str:
    lines = [
        "| run | seeds | " + " | ".join(title for _, title in TABLE_COLUMNS) + " | steps to +0.05 / +0.10 |",
        "|---" * (len(TABLE_COLUMNS) + 3) + "|",
    ]
    for name, run in results["runs"].items():
        if "not_run" in run:
            lines.append(f"| {name} | not run: {run['not_run']} |" + " |" * (len(TABLE_COLUMNS) + 1))
            continue
        summary = run.get("summary", {})
        steps = []
        for seed in run["seeds"].values():
            first = seed.get("steps_to_level", {}).get("first_step", {})
            reached = [first.get(level) for level in ("+0.05", "+0.10")]
            steps.append("/".join("never" if step is None else str(step) for step in reached) if first else "-")
        lines.append(
            f"| {name} | {len(run['seeds'])} | "
            + " | ".join(fmt(summary.get(key, (math.nan, math.nan))) for key, _ in TABLE_COLUMNS)
            + f" | {', '.join(steps)} |"
        )
    ranked = results.get("rewards_on_base_samples")
    if ranked:
        lines += [
            "",
            "Reward models on pairs of the base generator's samples of the same prompt that differ in colour or "
            "motion (the sample as asked should win):",
            "",
            "| reward model | pairs | accuracy | colour pairs | colour | motion pairs | motion | "
            "pairs whose judge CoTs both parse | accuracy on them |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, f in ranked.items():
            lines.append(
                f"| {name} | {f['num_pairs']} | {fmt((f['accuracy'], math.nan))} | {f['colour_pairs']} | "
                f"{fmt((f['colour_accuracy'], math.nan))} | {f['motion_pairs']} | {fmt((f['motion_accuracy'], math.nan))} | "
                f"{f.get('judge_parsed_pairs', '-')} | {fmt((f.get('judge_parsed_accuracy', math.nan), math.nan))} |"
            )
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict) -> None:
    from descore_plugin.utils.files import atomic_write_text

    for run in results["runs"].values():
        if "seeds" in run:
            run["summary"] = summarise(run)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=float) + "\n")
    atomic_write_text(out / "results.md", markdown(results))


# ----------------------------------------------------------------------------------------------------------------


def planned_runs(args: BenchArguments) -> list[str]:
    if args.runs:
        known = {"base"} | {f"{m}/{r}" for m in METHODS for r in REWARDS}
        unknown = [name for name in args.runs if name not in known]
        if unknown:
            raise SystemExit(
                f"vbench_mini.py: error: --runs {unknown[0]}: not a run (base or METHOD/REWARD with "
                f"METHOD in {', '.join(METHODS)}, REWARD in {', '.join(REWARDS)})"
            )
        return ["base"] + [name for name in args.runs if name != "base"]
    if args.quick:
        return list(QUICK_RUNS)
    return ["base"] + [f"{m}/{r}" for m in METHODS for r in REWARDS]


def run_dir_of(out: Path, name: str, seed: int) -> Path:
    """Where run NAME (METHOD/REWARD) of SEED writes its LoRA: OUT/runs/<method>_<reward>/seed-S."""
    return out / "runs" / name.replace("/", "_") / f"seed-{seed}"


RECORD_FILE = "vbench_record.json"
"""A run's record, written beside its LoRA when it finishes (the parent collects it into results.json)."""
LORA_FILE = "pytorch_lora_weights.safetensors"


class _Workers:
    """Runs (name, seed) jobs in `--workers` child processes of this script (`--one-run NAME:SEED`, one thread each),
    at most that many at once; each child's output goes to OUT/runs/<run>/seed-S.log."""

    def __init__(self, argv, args: BenchArguments, out: Path):
        self.base_argv = list(argv if argv is not None else sys.argv[1:])
        for baseline in BASELINES:  # trained by the parent when not given
            if getattr(args, baseline):
                self.base_argv += [f"--{baseline}", getattr(args, baseline)]
        self.size, self.out = args.workers, out
        self.pending: list = []
        self.running: dict = {}

    def start(self, jobs: list) -> None:
        self.pending = list(jobs)
        self._fill()

    def _fill(self) -> None:
        import subprocess

        while self.pending and len(self.running) < self.size:
            name, seed = self.pending.pop(0)
            log = run_dir_of(self.out, name, seed).with_suffix(".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            handle = log.open("w")
            command = [sys.executable, str(Path(__file__).resolve()), *self.base_argv, "--one-run", f"{name}:{seed}"]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
            print(f"{name} seed {seed}: started in its own process (log: {log})", flush=True)
            self.running[process] = (name, seed, log, handle)

    def results(self):
        """Yields (name, seed, record) as the children finish; a failed child stops the benchmark naming its log."""
        while self.running:
            for process in list(self.running):
                if process.poll() is None:
                    continue
                name, seed, log, handle = self.running.pop(process)
                handle.close()
                if process.returncode != 0:
                    self.stop()
                    tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
                    raise SystemExit(f"vbench_mini.py: error: run {name} seed {seed} failed (log: {log}):\n{tail}")
                yield name, seed, json.loads((run_dir_of(self.out, name, seed) / RECORD_FILE).read_text())
                self._fill()
            time.sleep(0.5)

    def stop(self) -> None:
        for process in self.running:
            process.kill()
        self.pending = []


def main(argv=None) -> int:
    (args,) = parse_config(BenchArguments, argv, prog="vbench_mini.py", description=__doc__)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # the tiny models are overhead-bound: one thread is as fast, faster on a busy machine
    from descore_plugin import DeScoreReward
    from descore_plugin.report import write_report
    from descore_plugin.utils.files import atomic_write_text

    started = time.time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds[:1] if args.quick else args.seeds
    if args.quick:
        args.train_prompts, args.held_out_prompts = min(args.train_prompts, 8), min(args.held_out_prompts, 8)
        args.videos_per_prompt = min(args.videos_per_prompt, 4)
    train, held_out = prompt_sets(args.train_prompts, args.held_out_prompts)
    prompts_file = out / "prompts" / "train.txt"
    if not args.one_run:  # a worker reads the files its parent wrote
        (out / "prompts").mkdir(exist_ok=True)
        atomic_write_text(prompts_file, "\n".join(train) + "\n")
        atomic_write_text(out / "prompts" / "held_out.txt", "\n".join(held_out) + "\n")
    judge = DeScoreReward.from_pretrained(args.judge)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    results = {
        "benchmark": "recipes/vbench_mini.py",
        "arguments": asdict(args),
        "seeds": seeds,
        "prompts": {"train": train, "held_out": held_out},
        "runs": {},
    }

    def measure_both(pipe, seed, no_cot=None):
        return {
            "train": measure(pipe, train, args.videos_per_prompt, seed, judge, no_cot),
            "held_out": measure(pipe, held_out, args.videos_per_prompt, seed, judge, no_cot),
        }

    def post_train_and_measure(name: str, seed: int) -> dict:
        method, reward = name.split("/")
        run_dir = run_dir_of(out, name, seed)
        argv_run = run_argv(method, reward_flags(reward, args), args, prompts_file, run_dir, seed)
        began = time.time()
        print(f"\n{name} seed {seed}: {recorded_command(method, argv_run)}", flush=True)
        post_train_run(method, argv_run)
        seconds = time.time() - began
        pipe = load_generator(args.pipeline, str(run_dir))
        record = {
            **measure_both(pipe, seed),
            "lora": str(run_dir),
            "train_seconds": seconds,
            "steps_to_level": steps_to_level(run_dir),
            "command": recorded_command(method, argv_run),
        }
        trained = {
            "judge": "descore",
            "judge_no_cot": "descore",
            "student": "descore",
            "discriminative": "descore",
            "truth": "world:truth",
            "redness": "analytic:redness",
        }[reward]
        checks = None if trained == "world:truth" else ["world:truth"]
        record["report"] = str(
            write_report(run_dir, out / "report" / f"{method}_{reward}" / f"seed-{seed}", reward=trained, checks=checks)
        )
        atomic_write_text(run_dir / RECORD_FILE, json.dumps(record, default=float) + "\n")
        return record

    if args.one_run:  # a worker: one run, its record written beside its LoRA for the parent to collect
        name, _, seed = args.one_run.rpartition(":")
        post_train_and_measure(name, int(seed))
        return 0

    jobs = []  # (name, seed) post-training runs to do
    for name in planned_runs(args):
        entry = results["runs"].setdefault(name, {"seeds": {}})
        if name == "base":
            continue
        method, reward = name.split("/")
        if reward == "discriminative" and not args.discriminative:
            print("training the discriminative baseline (no-CoT Bradley-Terry judge of the world's pairs) ...")
            args.discriminative = str(
                train_discriminative(out / "discriminative", args.baseline_steps, args.baseline_pairs)
            )
        if reward == "student" and not args.student:
            print("distilling the judge into the no-CoT student (its score with a CoT, learnt without one) ...")
            args.student = str(train_student(out / "student", args.judge, args.baseline_steps, args.baseline_pairs))
        flags = reward_flags(reward, args)
        if isinstance(flags, str):
            results["runs"][name] = {"not_run": flags}
            continue
        for seed in seeds:
            run_dir = run_dir_of(out, name, seed)
            command = recorded_command(method, run_argv(method, flags, args, prompts_file, run_dir, seed))
            candidates = (previous.get("runs", {}).get(name, {}).get("seeds", {}).get(str(seed)), read_record(run_dir))
            old = next((r for r in candidates if reusable(r, command, train, held_out, args.videos_per_prompt)), None)
            if old and not args.overwrite and (run_dir / LORA_FILE).is_file():
                entry["seeds"][str(seed)] = old
            else:
                jobs.append((name, seed))

    def finish(name: str, seed: int, record: dict) -> None:
        results["runs"][name]["seeds"][str(seed)] = record
        held_out = record["held_out"]
        print(
            f"{name} seed {seed}: held-out all as asked {held_out['columns']['all_as_asked']['mean']:.3f}, "
            f"judge CoTs parsed {held_out['judge_cot_parse_rate']:.2f}, in {record['train_seconds']:.0f} s of "
            "post-training"
        )
        write_results(out, results)

    # the base samples are also ranked by every no-CoT reward model of this benchmark (loaded before any run starts:
    # a wrong --student or --discriminative stops here): which of them tell the generator's videos apart
    no_cot = {"judge_no_cot": judge}
    no_cot.update(
        {name: DeScoreReward.from_pretrained(getattr(args, name)) for name in BASELINES if getattr(args, name)}
    )

    workers = _Workers(argv, args, out) if args.workers > 1 and jobs else None
    if workers is not None:
        workers.start(jobs)  # while this process measures the base
    if "base" in results["runs"]:
        entry = results["runs"]["base"]
        pipe = load_generator(args.pipeline)
        for seed in seeds:
            old = previous.get("runs", {}).get("base", {}).get("seeds", {}).get(str(seed))
            same_judge = previous.get("arguments", {}).get("judge") == args.judge  # the base's judge scores
            ranked = same_judge and reusable(old, None, train, held_out, args.videos_per_prompt)
            ranked = ranked and all(
                name in row for row in old["held_out"]["per_video"] for name in (*no_cot, "judge_parsed")
            )
            entry["seeds"][str(seed)] = old if ranked and not args.overwrite else measure_both(pipe, seed, no_cot)
            print(
                f"base seed {seed}: held-out all as asked "
                f"{entry['seeds'][str(seed)]['held_out']['columns']['all_as_asked']['mean']:.3f}"
            )
        samples = [
            row
            for seed in seeds
            for split in ("train", "held_out")
            for row in entry["seeds"][str(seed)][split]["per_video"]
        ]
        results["judge_on_base_samples"] = judge_pair_accuracy(samples)
        results["rewards_on_base_samples"] = {name: judge_pair_accuracy(samples, name) for name in ("judge", *no_cot)}
        print("reward models on pairs of the base generator's samples that differ in colour or motion:")
        for name, figures in results["rewards_on_base_samples"].items():
            print(
                f"  {name}: {figures['accuracy']:.3f} of {figures['num_pairs']} pairs "
                f"(colour {figures['colour_accuracy']:.3f}, motion {figures['motion_accuracy']:.3f}; "
                f"{figures['judge_parsed_accuracy']:.3f} of the {figures['judge_parsed_pairs']} whose judge CoTs both parse)"
            )
        write_results(out, results)
    if workers is not None:
        try:
            for name, seed, record in workers.results():
                finish(name, seed, record)
        finally:
            workers.stop()
    else:
        for name, seed in jobs:
            finish(name, seed, post_train_and_measure(name, seed))
    results["wall_seconds"] = time.time() - started
    write_results(out, results)
    print("\n" + markdown(results))
    print(f"vbench_mini done in {results['wall_seconds']:.0f} s: {out / 'results.json'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
