"""The main job of `make demo`: a tiny DeScore judge that works, on a 2-core CPU in a few minutes.

    python recipes/demo.py --output-dir outputs/demo

Steps, one function each, run in order by `main`:
1. `step_judge`: the demo's judge, a tiny Qwen2.5-VL DeScore model trained on the synthetic world and shipped in
   recipes/demo_judge/ (about 2 MB; `python recipes/train_demo_judge.py` trains it again, `--train-judge` here
   trains a fresh one into the output directory instead of using the shipped one).
2. `step_held_out`: held-out pairs of the same world that neither training nor checkpoint selection saw (another
   data seed), scored with the judge's OWN generated CoT: preference accuracy with and without ties, per slice
   (wrong colour, motion, camera shake, flicker), and how often its CoT names the colour and the motion the video
   shows (compared with the annotator's CoT of that video). Written as an evaluation (accuracy.json +
   pairs_scored.csv, the format of recipes/eval_rm.py).
3. `step_score_samples`: think, then score a few sample videos; print each prompt, CoT, dimension scores and reward
   next to the synthetic world's truth, and write them as `descore score --json` rows (scores.jsonl).
4. `step_dpo`: the main job: Flow-DPO (recipes/wan_flow_dpo.py) of the shipped world Wan (recipes/world_wan/, a
   tiny Wan-2.1 that draws the synthetic world imperfectly) with the judge as the reward, thinking first; its
   fixed-prompt evaluations are also scored by world:truth (the world's truth read from the pixels), a check it never
   trains on, which the run report's hacking flags compare the judge's reward with. Prints the world-truth fidelity
   of fresh videos of HELD-OUT prompts (scenes never captioned in pre-training, never post-trained on) before and
   after (recipes/vbench_mini.py measures the same way, over seeds and against baselines).
5. `step_reports`: `descore report` pages of the scored samples, the held-out evaluation and the Flow-DPO run;
   prints the path to open and, last, the held-out figure.
"""

import functools
import json
import os
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from descore_plugin import DeScoreReward, RewardOutput
from descore_plugin.data.pairs import load_pairs
from descore_plugin.modeling.prompt import DIMENSIONS
from descore_plugin.testing.synthetic import overall_score, write_dataset
from descore_plugin.utils.args import help_field, parse_config
from descore_plugin.utils.errors import non_negative_int, positive_int
from descore_plugin.utils.logging import setup_logging

SHIPPED_JUDGE = Path(__file__).resolve().parent / "demo_judge"
DEMO_HELD_OUT_SEED = 7
"""Data seed of the demo's held-out pairs: not the training (1), selection (3) or recipe's held-out (2) seed."""
MAX_NEW_TOKENS = 160


@dataclass
class DemoArguments:
    """What the demo runs; every field is a flag (`--held-out-pairs`)."""

    output_dir: str = help_field("held-out data, results and reports go here", "outputs/demo")
    judge: str = help_field("the judge's checkpoint directory", str(SHIPPED_JUDGE))
    train_judge: bool = help_field(
        "train a fresh judge into OUTPUT_DIR/judge (recipes/train_demo_judge.py, ~35 min on 2 cores)", False
    )
    held_out_pairs: int = help_field("held-out pairs scored with the judge's CoT", 100, check=positive_int)
    num_samples: int = help_field("sample pairs scored and printed (2 videos each)", 6, check=positive_int)
    dpo_steps: int = help_field(
        "Flow-DPO steps (0: skip post-training); 30 keep the demo under 3 minutes on 2 cores (60: 4 min 13 s)",
        30,
        check=non_negative_int,
    )
    dpo_eval_every: int = help_field("fixed-prompt evaluation every N DPO steps", 20, check=positive_int)
    seed: int = help_field("seed of the samples, Flow-DPO and a judge trained with --train-judge", 0)


def parse_args(argv=None) -> DemoArguments:
    (args,) = parse_config(
        DemoArguments,
        argv,
        prog="demo.py",
        description="DeScore demo: a tiny judge that works, scored samples, Flow-DPO, HTML reports",
    )
    return args


def step_judge(judge: str, output_dir: Path, train: bool, seed: int = 0) -> Path:
    """The judge's directory: the shipped one, or a freshly trained one with --train-judge."""
    if train:
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "train_demo_judge", Path(__file__).with_name("train_demo_judge.py")
        )
        recipe = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(recipe)
        recipe.main(
            [
                "--output-dir",
                str(output_dir / "judge"),
                "--work-dir",
                str(output_dir / "judge_training"),
                "--seed",
                str(seed),
            ]
        )
        return output_dir / "judge"
    judge = Path(judge)
    if not (judge / "descore_config.json").is_file():
        raise SystemExit(
            f"demo: no judge in {judge}; train one with `python recipes/train_demo_judge.py` or pass --train-judge"
        )
    record = judge / "judge.json"
    if record.is_file():
        info = json.loads(record.read_text())
        print(
            f"judge: {judge} (trained by {info['recipe']}: stage 1, CoT loss weight "
            f"{info['stage1']['lm_loss_weight']:g}, lr {info['stage1']['learning_rate']:g}, step "
            f"{info['selected_stage1_step']} selected on validation pairs)"
        )
    return judge


@functools.lru_cache(maxsize=1)
def _judge_recipe():
    """recipes/train_demo_judge.py as a module: the demo's world and the CoT-naming check."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_demo_judge", Path(__file__).with_name("train_demo_judge.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def _world():
    recipe = _judge_recipe()
    return recipe.WORLD, recipe.DEFECTS


def cot_names_what_is_seen(cot: str | None, annotator_cot: str) -> dict:
    """Does the judge's CoT name the colour (and shape) and the motion the annotator's CoT of the same video names?"""
    return _judge_recipe().cot_names_what_is_seen(cot, annotator_cot)


def step_held_out(judge: Path, output_dir: Path, num_pairs: int) -> dict:
    """Held-out preference accuracy with the judge's own CoT, and how often the CoT names colour and motion."""
    from descore_plugin.evaluation.preference import evaluate_pairs, write_evaluation

    world, defects = _world()
    pairs = load_pairs(
        write_dataset(
            output_dir / "held_out", num_pairs, seed=DEMO_HELD_OUT_SEED, defects=defects, world=world, progress=False
        )
    )
    model = DeScoreReward.from_pretrained(judge)
    print(f"\nheld-out: {num_pairs} pairs the judge never saw, scored with its own CoT ...")
    result = evaluate_pairs(model, pairs, think=True, batch_size=16, max_new_tokens=MAX_NEW_TOKENS)
    write_evaluation(result, output_dir / "evaluation")
    named = [
        cot_names_what_is_seen(row[f"cot_{side}"], getattr(pair, f"cot_{side}"))
        for row, pair in zip(result["rows"], pairs)
        for side in ("a", "b")
    ]
    result["cot_names_colour"] = sum(n["colour"] for n in named) / len(named)
    result["cot_names_motion"] = sum(n["motion"] for n in named) / len(named)
    slices = ", ".join(
        f"{name} {value:.2f}" for name, value in result["accuracy_without_ties_by_slice"].items() if name != "all"
    )
    print(
        f"held-out accuracy with its own CoT: {result['accuracy_without_ties']:.3f} without ties, "
        f"{result['accuracy_with_ties']:.3f} with ties ({result['num_pairs']} pairs; by slice: {slices})"
    )
    print(
        f"its CoT names the colour and shape seen in {result['cot_names_colour']:.1%} of the videos and the motion "
        f"in {result['cot_names_motion']:.1%}"
    )
    return result


def format_scores(scores: dict) -> str:
    return ", ".join(f"{name} {scores[name]}" for name in DIMENSIONS)


def step_score_samples(judge: Path, output_dir: Path, num_pairs: int, seed: int = 0) -> Path:
    """Think, then score 2 * num_pairs sample videos (held-out world, another seed); print each next to its truth;
    write them as `descore score --json` rows to OUTPUT_DIR/scores.jsonl."""
    world, defects = _world()
    pairs = load_pairs(
        write_dataset(
            output_dir / "samples",
            num_pairs,
            seed=DEMO_HELD_OUT_SEED + 1 + seed,
            defects=defects,
            world=world,
            progress=False,
        )
    )
    videos = [video for pair in pairs for video in pair.videos]
    prompts = [pair.prompt for pair in pairs for _ in range(2)]
    truths = [scores for pair in pairs for scores in (pair.scores_a, pair.scores_b)]
    out = score_and_print(judge, videos, prompts, truths)
    path = output_dir / "scores.jsonl"
    with open(path, "w") as handle:
        for index, (video, prompt) in enumerate(zip(videos, prompts)):
            record = {
                "video": video,
                "prompt": prompt,
                "reward": float(out.rewards[index]),
                "cot": out.cots[index],
                "dimensional_scores": out.dimensional_scores[index],
                "overall_score": out.overall_scores[index],
                "parse_error": out.parse_errors[index],
            }
            if out.uncertainty is not None:
                record["uncertainty"] = float(out.uncertainty[index])
            handle.write(json.dumps(record) + "\n")
    return path


def score_and_print(model_dir: Path, videos: list, prompts: list[str], truths: list | None = None) -> RewardOutput:
    """Score `videos` (paths) against `prompts` with the model in `model_dir` and print, per video, the prompt, the
    CoT, its dimension scores and the reward; `truths` (dimension scores per video) are printed alongside."""
    model = DeScoreReward.from_pretrained(model_dir)
    out = model.score(videos, prompts, think=True, max_new_tokens=MAX_NEW_TOKENS)
    for index, (video, prompt) in enumerate(zip(videos, prompts)):
        print(f"\n== video {index + 1}/{len(videos)}: {video}")
        print(f"prompt:  {prompt}")
        if truths is not None:
            print(f"truth:   {format_scores(truths[index])} (overall {overall_score(truths[index])})")
        cot = out.cots[index].strip() or "(empty)"
        print("CoT:\n" + textwrap.fill(cot, width=100, initial_indent="    ", subsequent_indent="    "))
        if out.parse_errors[index] is None:
            print(f"parsed:  {format_scores(out.dimensional_scores[index])} (overall {out.overall_scores[index]})")
        else:
            print(f"parsed:  no dimension scores ({out.parse_errors[index]})")
        print(f"reward:  {out.rewards[index].item():+.4f}")
    return out


def step_dpo_tiny_wan(
    work_dir: Path, steps: int, eval_every: int = 0, judge: Path | None = None, seed: int = 0
) -> Path:
    """Without the world generator (recipes/world_wan/ not in this checkout): a short Flow-DPO run of a random tiny
    Wan-2.1 (recipes/wan_flow_dpo.py) against the analytic redness reward; its
    fixed-prompt samples are also scored, with weight 0 (checks, not trained on), by analytic:brightness and, when
    `judge` is given, by the DeScore judge (its CoTs land in the samples' scores.jsonl)."""
    import importlib.util

    from descore_plugin.testing import tiny_wan

    pipeline = work_dir / "tiny_wan"
    if not (pipeline / "model_index.json").is_file():
        tiny_wan.write_tiny_wan(pipeline, seed=seed)
    prompts = [f"{a} {c}" for a in ("red", "blue", "small", "old") for c in tiny_wan.TINY_CORPUS][:24]
    prompts_file = work_dir / "wan_prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n")
    spec = importlib.util.spec_from_file_location("wan_flow_dpo", Path(__file__).with_name("wan_flow_dpo.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    print(f"\npost-training: Flow-DPO of a tiny Wan-2.1 for {steps} steps (reward: analytic:redness)")
    run_dir = work_dir / "dpo"
    checks = ["--reward", "analytic:brightness=0"]
    if judge is not None:
        checks += ["--reward", "descore=0", "--reward-model", str(judge)]
    recipe.main(
        [
            "--pipeline",
            str(pipeline),
            "--reward",
            "analytic:redness",
            *checks,
            "--prompts",
            str(prompts_file),
            "--output-dir",
            str(run_dir),
            "--overwrite",
            "--max-steps",
            str(steps),
            "--learning-rate",
            "1e-2",
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--lora-targets",
            "all",
            "--videos-per-prompt",
            "8",
            "--generation-batch-size",
            "8",
            "--eval-every",
            str(eval_every),
            "--seed",
            str(seed),
        ]
    )
    return run_dir


SHIPPED_WORLD_WAN = Path(__file__).resolve().parent / "world_wan"
"""The tiny Wan-2.1 that draws the synthetic world, imperfectly (recipes/train_world_wan.py, `make world-wan`)."""


@functools.lru_cache(maxsize=1)
def _vbench_mini():
    """recipes/vbench_mini.py as a module: the same prompts, sampling and world-truth measurement."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("vbench_mini", Path(__file__).with_name("vbench_mini.py"))
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["vbench_mini"] = recipe  # its dataclasses look their module up
    spec.loader.exec_module(recipe)
    return recipe


def _fidelity_line(columns: dict) -> str:
    names = ("all_as_asked", "colour", "direction", "subject", "background", "camera_steadiness", "dynamic_degree")
    return ", ".join(f"{name} {columns[name]['mean']:.2f}" for name in names)


def step_dpo(
    work_dir: Path,
    steps: int,
    eval_every: int = 0,
    judge: Path | None = None,
    seed: int = 0,
    pipeline: Path = SHIPPED_WORLD_WAN,
    prompts: int = 8,
    held_out_prompts: int = 8,
    videos_per_prompt: int = 2,
) -> Path:
    """Flow-DPO of the shipped world Wan (recipes/world_wan) with the judge as the reward, thinking first (the
    paper's setting), by the public recipe recipes/wan_flow_dpo.py; world:truth (read from the pixels) is a check the
    run logs at every evaluation but never trains on. Prints the world-truth fidelity of fresh videos of HELD-OUT
    prompts (scenes the generator never saw captioned, never post-trained on) before and after."""
    import importlib.util

    if not (Path(pipeline) / "model_index.json").is_file() or judge is None:
        print(
            f"\nno world generator in {pipeline} (`make world-wan` trains it): the post-training step runs on a "
            f"random tiny Wan against analytic:redness instead"
        )
        return step_dpo_tiny_wan(work_dir, steps, eval_every, judge=judge, seed=seed)
    bench = _vbench_mini()
    train, held_out = bench.prompt_sets(prompts, held_out_prompts)
    prompts_file = work_dir / "wan_prompts.txt"
    prompts_file.write_text("\n".join(train) + "\n")
    spec = importlib.util.spec_from_file_location("wan_flow_dpo", Path(__file__).with_name("wan_flow_dpo.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    before = bench.measure(bench.load_generator(str(pipeline)), held_out, videos_per_prompt, seed, None)
    print(
        f"\npost-training: Flow-DPO of the world Wan ({pipeline.name}) for {steps} steps, reward: the judge "
        f"(think, then score)"
    )
    print(f"held-out prompts before: {_fidelity_line(before['columns'])} ({before['columns']['num_videos']} videos)")
    run_dir = work_dir / "dpo"
    options = bench.BenchArguments(
        output_dir=str(work_dir),
        pipeline=str(pipeline),
        judge=str(judge),
        train_prompts=prompts,
        steps=steps,
        eval_every=eval_every or steps,
        eval_prompts=min(4, prompts),
    )
    argv = bench.run_argv("flow_dpo", bench.reward_flags("judge", options), options, prompts_file, run_dir, seed)
    recipe.main(argv)
    after = bench.measure(bench.load_generator(str(pipeline), str(run_dir)), held_out, videos_per_prompt, seed, None)
    print(f"held-out prompts after:  {_fidelity_line(after['columns'])}")
    gain = after["columns"]["all_as_asked"]["mean"] - before["columns"]["all_as_asked"]["mean"]
    print(
        f"world-truth fidelity on held-out prompts (all as asked): {before['columns']['all_as_asked']['mean']:.3f} "
        f"-> {after['columns']['all_as_asked']['mean']:.3f} ({gain:+.3f})"
    )
    (work_dir / "dpo_fidelity.json").write_text(
        json.dumps({"held_out_prompts": held_out, "before": before, "after": after}, indent=2, default=float) + "\n"
    )
    return run_dir


def step_reports(output_dir: Path, sources: dict) -> dict:
    """`descore report` of each of `sources` ({name: path}) into OUTPUT_DIR/report/<name>/index.html; a run's
    optimised reward and its independent checks are those it recorded (run_args.json)."""
    from descore_plugin.report import write_report

    def run_flags(name: str) -> dict:
        if name != "dpo_run":
            return {}
        recorded = json.loads((Path(sources[name]) / "run_args.json").read_text())
        trained = [spec.split("=")[0] for spec in recorded.get("reward") or ["descore"]]
        return {"reward": trained[0], "checks": recorded.get("check") or None}

    pages = {
        name: write_report(path, output_dir / "report" / name, **run_flags(name)) for name, path in sources.items()
    }
    print("\nreports (static pages, open in a browser):")
    for name, page in pages.items():
        print(f"  {name:<11} {page.resolve()}")
    return pages


def main(argv=None):
    args = parse_args(argv)
    setup_logging()  # the library's progress lines (the Flow-DPO run's evaluations, ...) print as they did
    if "OMP_NUM_THREADS" not in os.environ:
        # the tiny models are overhead-bound: one thread runs them as fast as two, and far faster than two threads
        # on a busy machine (measured: 16 videos think-then-score in 2.7 s on one thread, 47 s on two under load)
        torch.set_num_threads(1)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    judge = step_judge(args.judge, output_dir, args.train_judge, seed=args.seed)
    held_out = step_held_out(judge, output_dir, args.held_out_pairs)
    scores = step_score_samples(judge, output_dir, args.num_samples, seed=args.seed)
    sources = {"scores": scores, "evaluation": output_dir / "evaluation"}
    if args.dpo_steps:
        sources["dpo_run"] = step_dpo(output_dir, args.dpo_steps, args.dpo_eval_every, judge=judge, seed=args.seed)
    step_reports(output_dir, sources)
    print(f"\ndemo done in {time.perf_counter() - started:.1f} s (outputs in {output_dir})")
    print(
        f"held-out accuracy of the demo's judge (own CoT, {held_out['num_pairs']} pairs it never saw): "
        f"{held_out['accuracy_without_ties']:.3f}; its CoT names the colour seen in "
        f"{held_out['cot_names_colour']:.0%} of the videos, the motion in {held_out['cot_names_motion']:.0%}"
    )


if __name__ == "__main__":
    main()
