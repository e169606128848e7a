"""Pairs of the world generator's OWN samples, annotated by the world's truth: training data for a judge of that
generator, as a team would have its generator's videos described and rated by annotators.

    python recipes/annotate_world_samples.py --output-dir OUT
    python recipes/train_rm.py --model recipes/demo_judge --train-data OUT/pairs.jsonl --output-dir JUDGE \\
        --max-steps 400 --batch-size 16 --gradient-accumulation-steps 1 --learning-rate 3e-4 --warmup-ratio 0.075 \\
        --lora-rank 0 --train-embeddings all --cot-mask-prob 0 --lm-loss-weight 4 --max-grad-norm 1 \\
        --undecided-rows drop

The generator (`--pipeline`, recipes/world_wan by default) draws `--videos-per-prompt` samples of each of its
training scenes from noises of `--seed` (the benchmark, recipes/vbench_mini.py, measures on other noises: 0, 1, 2).
The world-truth measure reads each sample and `world_truth.annotate` writes the reading down as the annotator's CoT
and dimension scores; every two samples of the same prompt whose overall scores differ make a pair, the better one
winning (samples where the measure finds no object are left out). `--world-pairs` rendered world pairs, the data the
demo judge first learnt on (recipes/train_demo_judge.py's training seed), are mixed in so that the judge does not
forget the clean clips. The second command is the fine-tuning measured in docs/vbench_mini.md ("The judge on this
generator's videos"): run on this recipe's default output, it gave a judge that ranks the benchmark's 800 pairs of
base samples 0.761, against the shipped judge's 0.674.

Writes OUT/pairs.jsonl (the descore-plugin pair format, loadable by every trainer), OUT/videos/ (the samples, mp4),
OUT/world/ (the rendered pairs) and OUT/annotation.json (what was drawn, read and paired).
"""

import importlib.util
import itertools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from descore_plugin.utils.args import help_field, parse_config
from descore_plugin.utils.errors import non_negative_int, positive_int

ROOT = Path(__file__).resolve().parent


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass
class AnnotateArguments:
    output_dir: str = help_field("pairs.jsonl, videos/, world/ and annotation.json go here", required=True)
    pipeline: str = help_field("the world generator (a diffusers WanPipeline folder)", str(ROOT / "world_wan"))
    videos_per_prompt: int = help_field("samples drawn of each training scene", 8, check=positive_int)
    prompts: int | None = help_field("the first N training scenes only (default: all 112)", None, check=positive_int)
    seed: int = help_field("noise seed of the samples (keep it off the benchmark's seeds 0, 1, 2)", 1000)
    world_pairs: int = help_field(
        "rendered world pairs mixed in (the demo judge's own training data; 0: the samples' pairs only)",
        1000,
        check=non_negative_int,
    )


def annotated_pairs(prompts: list[str], videos: torch.Tensor, paths: list[str], per_prompt: int) -> tuple[list, int]:
    """The pairs of samples of the same prompt whose annotations' overall scores differ, and how many samples had
    no object to describe. videos: (N, F, C, H, W) in [0, 1], per_prompt consecutive samples a prompt."""
    from descore_plugin.data.pairs import Pair
    from descore_plugin.evaluation import world_truth
    from descore_plugin.testing.clips import overall_score

    repeated = [prompt for prompt in prompts for _ in range(per_prompt)]
    notes = [world_truth.annotate(r, p) for r, p in zip(world_truth.read_videos(videos), repeated)]
    pairs = []
    for start in range(0, len(repeated), per_prompt):
        for a, b in itertools.combinations(range(start, start + per_prompt), 2):
            if notes[a] is None or notes[b] is None:
                continue
            (cot_a, scores_a), (cot_b, scores_b) = notes[a], notes[b]
            overall_a, overall_b = overall_score(scores_a), overall_score(scores_b)
            if overall_a == overall_b:
                continue
            pairs.append(
                Pair(
                    video_a=paths[a],
                    video_b=paths[b],
                    prompt=repeated[a],
                    label="A" if overall_a > overall_b else "B",
                    cot_a=cot_a,
                    cot_b=cot_b,
                    scores_a=scores_a,
                    scores_b=scores_b,
                    slice="generator",
                )
            )
    return pairs, sum(note is None for note in notes)


def main(argv=None) -> int:
    (args,) = parse_config(AnnotateArguments, argv, prog="annotate_world_samples.py", description=__doc__)
    from descore_plugin.data.pairs import load_pairs, save_pairs
    from descore_plugin.data.video import write_video
    from descore_plugin.testing import world_wan
    from descore_plugin.testing.synthetic import write_dataset
    from descore_plugin.utils.files import atomic_write_text

    bench, judge_recipe = _recipe("vbench_mini"), _recipe("train_demo_judge")
    out = Path(args.output_dir)
    prompts = [scene.prompt for scene in world_wan.training_scenes()][: args.prompts]
    pipe = bench.load_generator(args.pipeline)
    print(f"drawing {args.videos_per_prompt} samples of each of {len(prompts)} training scenes (seed {args.seed}) ...")
    videos = bench.sample(pipe, prompts, args.videos_per_prompt, args.seed, progress=True)
    frames = videos.mul(255).round().to(torch.uint8).numpy()
    paths = []
    for index, clip in enumerate(frames):
        path = out / "videos" / f"{index:05d}.mp4"
        write_video(path, clip, judge_recipe.GENERATOR_WORLD.fps, crf=10)  # as the world's own clips are written
        paths.append(str(path.resolve()))
    pairs, unread = annotated_pairs(prompts, videos, paths, args.videos_per_prompt)
    sample_pairs = len(pairs)
    if args.world_pairs:
        world_file = write_dataset(
            out / "world",
            args.world_pairs,
            seed=judge_recipe.TRAIN_SEED,
            defects=judge_recipe.DEFECTS,
            world=judge_recipe.GENERATOR_WORLD,
            progress=False,
        )
        pairs += load_pairs(world_file)  # their video paths come back resolved
    save_pairs(out / "pairs.jsonl", pairs)
    summary = {
        **asdict(args),
        "prompts": len(prompts),
        "samples": len(paths),
        "samples_without_an_object": unread,
        "sample_pairs": sample_pairs,
        "world_pairs": args.world_pairs,
    }
    atomic_write_text(out / "annotation.json", json.dumps(summary, indent=2) + "\n")
    print(
        f"{summary['sample_pairs']} pairs of {len(paths)} samples ({unread} with no object to describe) + "
        f"{args.world_pairs} world pairs: {out / 'pairs.jsonl'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
