"""The main job of `make demo`, on the built-in tiny default (well within a minute on a 2-core CPU).

    python recipes/demo.py --output-dir outputs/demo

Steps, one function each, run in order by `main`:
1. `step_init_model`: a tiny random DeScore model (Qwen2.5-VL architecture) in DIR/model; kept if already there.
2. `step_write_samples`: a few synthetic sample videos whose defects are known (DIR/samples: mp4s + pairs.jsonl).
3. `step_score`: think, then score each sample from its mp4 file; print the prompt, the CoT, the parsed dimension
   scores and the reward, next to the synthetic world's ground truth.
4. `step_train`: write a small synthetic preference dataset, train stage 1 for a short while (Bradley-Terry + the
   next-token loss on the CoT, CoT masking p 0.5), evaluate on held-out pairs (accuracy with and without ties,
   with the model's own CoT), then score the samples again with the trained model.
5. `step_dpo`: a short Flow-DPO run of a tiny Wan-2.1 pipeline against an analytic reward with a known optimum
   (redness of the frames: the tiny random Wan cannot draw what a prompt asks for, so a DeScore score of its videos
   would mean nothing), printing the mean reward of fresh samples before and after.

The tiny model starts with random weights: until it is trained its CoT is noise and does not parse (the parse
error says why), but every part of the pipeline runs for real: video decoding, the Qwen-VL processor, CoT
generation, the `<Reward>` token continued from the generation's KV cache, the head.
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
    parser.add_argument("--train-steps", type=int, default=400, help="stage-1 steps (0: skip training)")
    parser.add_argument("--train-pairs", type=int, default=300)
    parser.add_argument("--dpo-steps", type=int, default=100, help="Flow-DPO steps (0: skip post-training)")
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


def step_train(model_dir: Path, work_dir: Path, steps: int, num_pairs: int, seed: int = 0) -> Path:
    """Stage 1 on a small synthetic world (two defects: wrong colour and flicker), then held-out accuracy."""
    from descore_plugin.evaluation import evaluate_pairs
    from descore_plugin.trainer import TrainConfig, Trainer

    defects = ("subject", "style")
    train = write_dataset(work_dir / "data_train", num_pairs, seed=seed + 10, defects=defects, progress=False)
    held_out = write_dataset(work_dir / "data_eval", 40, seed=seed + 11, defects=defects, progress=False)
    print(f"\ntraining: stage 1 for {steps} steps on {num_pairs} synthetic pairs (full fine-tune of the tiny model)")
    config = TrainConfig(model=str(model_dir), train_data=str(train), output_dir=str(work_dir / "stage1"),
                         max_steps=steps, batch_size=8, gradient_accumulation_steps=1, learning_rate=1e-3,
                         lora_rank=0, train_embeddings="all", lm_loss_weight=1.0, cot_mask_prob=0.5,
                         save_steps=0, log_with=None, seed=seed)
    Trainer(config, overwrite=True).train()  # the demo's scratch folder: a re-run starts again
    trained = DeScoreReward.from_pretrained(work_dir / "stage1")
    for think in (True, False):
        result = evaluate_pairs(trained, load_pairs(held_out), think=think, batch_size=16, progress=False)
        mode = "with its own CoT" if think else "without CoT    "
        print(f"held-out accuracy {mode}: {result['accuracy_without_ties']:.3f} without ties, "
              f"{result['accuracy_with_ties']:.3f} with ties ({result['num_pairs']} pairs)")
    print(f"curves: {work_dir / 'stage1' / 'curves.png'}")
    return work_dir / "stage1"


def step_dpo(work_dir: Path, steps: int, seed: int = 0):
    """A short Flow-DPO run of a tiny Wan-2.1 (recipes/wan_flow_dpo.py) against the analytic redness reward."""
    import importlib.util

    from descore_plugin import tiny_wan

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
    recipe.main(["--pipeline", str(pipeline), "--reward", "analytic:redness", "--prompts", str(prompts_file),
                 "--output-dir", str(work_dir / "dpo"), "--overwrite", "--max-steps", str(steps), "--learning-rate", "1e-2",
                 "--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "all", "--videos-per-prompt", "8",
                 "--generation-batch-size", "8", "--seed", str(seed)])


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
    if args.train_steps:
        trained = step_train(model_dir, output_dir, args.train_steps, args.train_pairs, seed=args.seed)
        print("\nscoring the samples again with the trained model:")
        step_score(trained, videos, prompts, truths, think=True)
    if args.dpo_steps:
        step_dpo(output_dir, args.dpo_steps, seed=args.seed)
    print(f"\ndemo done in {time.perf_counter() - started:.1f} s (outputs in {output_dir})")


if __name__ == "__main__":
    main()
