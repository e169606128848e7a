"""The main job of `make demo`, on the built-in tiny default (well within a minute on a 2-core CPU).

    python recipes/demo.py --output-dir outputs/demo

Steps, one function each, run in order by `main`:
1. `step_init_model`: a tiny random DeScore model (Qwen2.5-VL architecture) in DIR/model; kept if already there.
2. `step_write_samples`: a few synthetic sample videos whose defects are known (DIR/samples: mp4s + pairs.jsonl).
3. `step_score`: think, then score each sample from its mp4 file; print the prompt, the CoT, the parsed dimension
   scores and the reward, next to the synthetic world's ground truth.

The tiny model has random weights: until it is trained its CoT is noise and does not parse (the parse error says
why), but every part of the pipeline runs for real: video decoding, the Qwen-VL processor, CoT generation, the
`<Reward>` token continued from the generation's KV cache, the head.
"""

import argparse
import textwrap
import time
from pathlib import Path

from descore_plugin import DeScoreReward, RewardOutput
from descore_plugin.data import load_pairs
from descore_plugin.prompt import DIMENSIONS
from descore_plugin.synthetic import overall_score, write_dataset
from descore_plugin.tiny import init_tiny


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="DeScore demo on the built-in tiny default")
    parser.add_argument("--output-dir", default="outputs/demo", help="model, samples and results go here")
    parser.add_argument("--num-pairs", type=int, default=2, help="synthetic sample pairs to score (2 videos each)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="CoT length limit; demo's choice, short because the untrained CoT is noise")
    parser.add_argument("--backbone", choices=["qwen2_5_vl", "qwen3_vl"], default="qwen2_5_vl")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def step_init_model(model_dir: Path, backbone: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Write a tiny random DeScore model to `model_dir`, unless a checkpoint is already there."""
    if (model_dir / "descore_config.json").is_file():
        print(f"model: using the existing tiny model in {model_dir}")
    else:
        init_tiny(model_dir, backbone=backbone, seed=seed)
        print(f"model: wrote a tiny random {backbone} DeScore model to {model_dir}")
    return model_dir


def step_write_samples(samples_dir: Path, num_pairs: int = 2, seed: int = 0) -> list:
    """Write `num_pairs` synthetic pairs (each pair: one prompt, two clips differing in one defect) and return them
    as `descore_plugin.data.Pair`s (video paths, prompt, label, annotator CoTs, per-dimension truth)."""
    pairs_file = write_dataset(samples_dir, num_pairs=num_pairs, seed=seed, progress=False)
    pairs = load_pairs(pairs_file)
    print(f"samples: wrote {2 * len(pairs)} synthetic videos and {pairs_file}")
    return pairs


def format_scores(scores: dict) -> str:
    return ", ".join(f"{name} {scores[name]}" for name in DIMENSIONS)


def step_score(model_dir: Path, videos: list, prompts: list[str], truths: list | None = None, think: bool = True,
               max_new_tokens: int | None = None) -> RewardOutput:
    """Score `videos` (paths) against `prompts` with the model in `model_dir` and print, per video, the prompt, the
    CoT, its dimension scores and the reward; `truths` (dimension scores per video) are printed alongside."""
    model = DeScoreReward.from_pretrained(model_dir)
    out = model.score(videos, prompts, think=think, max_new_tokens=max_new_tokens)
    for index, (video, prompt) in enumerate(zip(videos, prompts)):
        print(f"\n== video {index + 1}/{len(videos)}: {video}")
        print(f"prompt:  {prompt}")
        if truths is not None:
            print(f"truth:   {format_scores(truths[index])} (overall {overall_score(truths[index])})")
        if out.cots is not None:
            cot = out.cots[index].strip() or "(empty)"
            print("CoT:\n" + textwrap.fill(cot, width=100, initial_indent="    ", subsequent_indent="    "))
            if out.parse_errors[index] is None:
                print(f"parsed:  {format_scores(out.dimensional_scores[index])} (overall {out.overall_scores[index]})")
            else:
                print(f"parsed:  no dimension scores ({out.parse_errors[index]})")
        print(f"reward:  {out.rewards[index].item():+.4f}")
    return out


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    started = time.perf_counter()
    model_dir = step_init_model(output_dir / "model", backbone=args.backbone, seed=args.seed)
    pairs = step_write_samples(output_dir / "samples", num_pairs=args.num_pairs, seed=args.seed)
    videos = [video for pair in pairs for video in pair.videos]
    prompts = [pair.prompt for pair in pairs for _ in range(2)]
    truths = [scores for pair in pairs for scores in (pair.scores_a, pair.scores_b)]
    step_score(model_dir, videos, prompts, truths, think=True, max_new_tokens=args.max_new_tokens)
    print(f"\ndemo done in {time.perf_counter() - started:.1f} s (outputs in {output_dir})")


if __name__ == "__main__":
    main()
