"""What think-then-score costs: the tiny DeScore model and a small one, measured in one run.

    python recipes/bench_reward.py --json outputs/bench_reward.json [--threads 1] [--new-tokens 64] [--repeats 9]

Four ratios per model size, after a warm-up. Each path runs `--repeats` times (the end-to-end `score` runs, which
cost 8 generations each at batch 1, half as often), interleaved, the order alternating; each ratio is the median over
repeats of the ratio of the two runs made next to each other, so that a burst of load from other processes on a
shared machine hits both sides of a ratio alike:

- think_overhead_ratio = t(think-then-score) / t(CoT generation alone). Think-then-score is
  `DeScoreReward.generate_and_score`: `generate`, then `<Reward>` appended by continuing the generation's KV cache.
  "Generation alone" is the very same `backbone.generate` call (its arguments are recorded from a real
  `generate_and_score` call) without the reward step. Goal: <= 1.05. As a noise-free cross-check,
  think_overhead_ratio_paired = median over think-then-score runs of (the run's time / the time of the `generate`
  call inside that same run).
- official_over_ours = t(official pipeline) / t(ours). The official DeScore inference (arXiv 2605.05922 code) generates
  the CoT, then runs a second, FULL forward over video + instruction + CoT + `<Reward>`, re-running the vision tower:
  here the same `generate` call, then `model(**model.append_cots(batch, cot_ids))`. Goal: > 1.
- nothink_speedup = t(think=True) / t(think=False): the masked-CoT fast path (instruction + `<Reward>`, one prefill)
  against think-then-score.
- batch8_over_batch1 = videos/s at batch 8 / videos/s at batch 1: `DeScoreReward.score` end to end (frame
  preparation, processor, generation, reward) on the same 8 videos.

Every generation writes exactly `--new-tokens` tokens (`min_new_tokens = max_new_tokens`: the end-of-turn token is
forbidden until then), so all compared paths decode the same number of steps; the script checks it. It also checks
that the official pipeline and ours give the same rewards (the cached `<Reward>` step is exact).

The sizes: "tiny" is `init_tiny`'s default (text hidden 64 x 2 layers, vision 64 x 2; 8 frames of 56x56); "small"
(text hidden 128 x 4 layers, vision 128 x 4, about 1.9M parameters; 16 frames of 112x112) is this script's choice:
more, larger frames and a bigger vision tower, so that re-running the vision tower weighs more, as in real models.
"""

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from descore_plugin import DeScoreReward
from descore_plugin.data.video import load_videos
from descore_plugin.testing.synthetic import WorldConfig, generate_pairs
from descore_plugin.testing.tiny import init_tiny
from descore_plugin.utils.args import help_field, parse_config
from descore_plugin.utils.device import to_device
from descore_plugin.utils.errors import device_name, positive_int

BATCH = 8  # videos per batch for every batched measurement (and the number of videos scored one by one)


@dataclass
class BenchRewardArguments:
    json: str = help_field("write the results to this JSON file", required=True)
    threads: int | None = help_field("torch.set_num_threads (default: torch's own)", check=positive_int)
    new_tokens: int = help_field("CoT length: every generation writes exactly this many", 64, check=positive_int)
    repeats: int = help_field("timed runs of each path (medians are reported)", 9, check=positive_int)
    device: str = help_field("cpu or cuda[:i]", "cpu", check=device_name)
    backbone: str = help_field("Qwen-VL family of the small model", "qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    small_hidden: int = help_field("text hidden size of the small model", 128, check=positive_int)
    small_layers: int = help_field("text layers of the small model", 4, check=positive_int)
    small_vision_hidden: int = help_field("vision hidden size of the small model", 128, check=positive_int)
    small_vision_depth: int = help_field("vision blocks of the small model", 4, check=positive_int)
    small_frames: int = help_field("frames per video for the small model", 16, check=positive_int)
    small_side: int = help_field("frame height = width (pixels) for the small model", 112, check=positive_int)


def parse_args(argv=None) -> BenchRewardArguments:
    (args,) = parse_config(BenchRewardArguments, argv, prog="bench_reward.py", description=__doc__.split("\n\n")[0])
    return args


def model_sizes(args) -> dict:
    """name -> (init_tiny size arguments, frames per video, frame side in pixels)."""
    small = dict(
        hidden=args.small_hidden,
        layers=args.small_layers,
        vision_hidden=args.small_vision_hidden,
        vision_depth=args.small_vision_depth,
    )
    return {"tiny": ({}, 8, 56), "small": (small, args.small_frames, args.small_side)}


def build_model(directory: Path, sizes: dict, frames: int, side: int, backbone: str, device: str) -> DeScoreReward:
    """Write a random DeScore model with `init_tiny` and load it back the way users do."""
    init_tiny(directory, backbone=backbone, **sizes)
    return DeScoreReward.from_pretrained(directory, device=device, num_frames=frames, max_pixels=side * side)


def sample_videos(frames: int, side: int) -> tuple[list, list[str]]:
    """BATCH synthetic clips (uint8 (F, 3, H, W) arrays) of BATCH // 2 pairs, and their prompts."""
    pairs = generate_pairs(BATCH // 2, seed=0, world=WorldConfig(num_frames=frames, height=side, width=side))
    videos = list(pairs.frames_a) + list(pairs.frames_b)
    return videos, pairs.prompts * 2


def count_parameters(model: DeScoreReward) -> dict:
    vision = sum(p.numel() for p in model.vlm.model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "vision": vision, "language_and_head": total - vision}


def record_generate_call(model: DeScoreReward, batch: dict, new_tokens: int) -> dict:
    """The keyword arguments `generate_and_score` passes to `backbone.generate`, captured from a real call."""
    recorded = {}
    original = model.backbone.generate

    def spy(**kwargs):
        recorded.update(kwargs)
        return original(**kwargs)

    model.backbone.generate = spy  # an instance attribute shadows the method for this one call
    try:
        model.generate_and_score(batch, new_tokens, min_new_tokens=new_tokens)
    finally:
        del model.backbone.generate
    return recorded


def _timed_call(function, kwargs: dict, seconds: list, device: str):
    start = time.perf_counter()
    result = function(**kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    seconds.append(time.perf_counter() - start)
    return result


def timed(function, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def measure(model: DeScoreReward, videos: list, prompts: list[str], new_tokens: int, repeats: int, device: str) -> dict:
    """Time every path on one batch of 8 videos: median seconds per path and the ratios (see the module docstring)."""
    loaded = load_videos(videos, num_frames=model.config.num_frames)
    batch = to_device(model.encode_prompts(loaded, prompts), device)
    prompt_length = batch["input_ids"].shape[1]
    generate_kwargs = record_generate_call(model, batch, new_tokens)

    def generation_alone():
        return model.backbone.generate(**generate_kwargs)

    inner_generate_seconds = []  # the `generate` part of each think-then-score run

    def think_then_score():
        original = model.backbone.generate
        model.backbone.generate = lambda **kwargs: _timed_call(original, kwargs, inner_generate_seconds, device)
        try:
            return model.generate_and_score(batch, new_tokens, min_new_tokens=new_tokens)
        finally:
            del model.backbone.generate

    def official():
        cot_ids = generation_alone().sequences[:, prompt_length:]  # (B, new_tokens): no row ends early
        return model(**model.append_cots(batch, list(cot_ids)))

    def no_think():
        return model(**model.append_cots(batch, [None] * len(prompts)))

    def score(batch_size):
        return lambda: model.score(
            videos, prompts, think=True, batch_size=batch_size, max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )

    # Same lengths everywhere, and the cached reward equals the official full forward.
    ours, theirs = think_then_score(), official()
    lengths = {len(ids) for ids in ours["cot_ids"]}
    if lengths != {new_tokens}:
        raise RuntimeError(f"CoT lengths {sorted(lengths)}, expected exactly {new_tokens} new tokens per row")
    max_difference = float((ours["rewards"] - theirs["rewards"]).abs().max())
    if max_difference > 1e-4:
        raise RuntimeError(f"cached think-then-score differs from the official full forward by {max_difference:.2e}")

    paths = {"generate": generation_alone, "think": think_then_score, "official": official, "no_think": no_think}
    end_to_end = {"score_batch8": score(BATCH), "score_batch1": score(1)}
    for function in paths.values():  # warm-up (batch-1 shapes: two videos are enough)
        function()
    end_to_end["score_batch8"]()
    model.score(videos[:2], prompts[:2], batch_size=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    times = {name: [] for name in [*paths, *end_to_end]}
    inner_generate_seconds.clear()
    for repeat in range(repeats):
        order = list(paths) if repeat % 2 == 0 else list(paths)[::-1]  # alternate, so that drift cancels
        for name in order:
            times[name].append(timed(paths[name], device))
        if repeat % 2 == 0:
            for name, function in end_to_end.items():
                times[name].append(timed(function, device))
    medians = {name: statistics.median(values) for name, values in times.items()}

    def ratio(numerator: str, denominator: str) -> float:
        return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))

    paired = [total / inner for total, inner in zip(times["think"], inner_generate_seconds)]
    return {
        "seconds": medians,
        "seconds_all": times,
        "prompt_tokens": prompt_length,
        "video_tokens_per_video": int((batch["input_ids"][0] == model.vlm.config.video_token_id).sum()),
        "max_reward_difference_official_vs_ours": max_difference,
        "think_overhead_ratio": ratio("think", "generate"),
        "think_overhead_ratio_paired": statistics.median(paired),
        "official_over_ours": ratio("official", "think"),
        "nothink_speedup": ratio("think", "no_think"),
        "batch8_over_batch1": ratio("score_batch1", "score_batch8"),  # videos/s: (8 / t8) / (8 / t1)
    }


RATIOS = [
    ("think_overhead_ratio", "<= 1.05"),
    ("official_over_ours", "> 1"),
    ("nothink_speedup", ""),
    ("batch8_over_batch1", ""),
]
CROSS_CHECKS = [("think_overhead_ratio_paired", "<= 1.05")]


def print_table(results: dict):
    names = list(results)
    print(f"\n{'':36}" + "".join(f"{name:>14}" for name in names))
    rows = [
        ("parameters (total)", lambda r: f"{r['parameters']['total']:,}"),
        ("parameters (vision tower)", lambda r: f"{r['parameters']['vision']:,}"),
        ("frames x side", lambda r: f"{r['frames']} x {r['side']}"),
        ("prompt tokens (video + text)", lambda r: str(r["prompt_tokens"])),
    ]
    rows += [
        (f"t {name} (ms)", lambda r, name=name: f"{1000 * r['seconds'][name]:.1f}")
        for name in ("generate", "think", "official", "no_think", "score_batch8", "score_batch1")
    ]
    rows += [(f"{name} {goal}".strip(), lambda r, name=name: f"{r[name]:.3f}") for name, goal in RATIOS + CROSS_CHECKS]
    for label, cell in rows:
        print(f"{label:36}" + "".join(f"{cell(results[name]):>14}" for name in names))


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="descore-bench-") as root:
        for name, (sizes, frames, side) in model_sizes(args).items():
            model = build_model(Path(root) / name, sizes, frames, side, args.backbone, args.device)
            videos, prompts = sample_videos(frames, side)
            result = measure(model, videos, prompts, args.new_tokens, args.repeats, args.device)
            results[name] = {
                "parameters": count_parameters(model),
                "sizes": sizes,
                "frames": frames,
                "side": side,
                **result,
            }
            print(f"{name}: " + ", ".join(f"{key} {result[key]:.3f}" for key, _ in RATIOS), flush=True)
            del model
    print_table(results)
    report = {
        # The headline ratios are the small model's (the tiny one is dominated by per-step Python overhead).
        **{key: results["small"][key] for key, _ in RATIOS + CROSS_CHECKS},
        "headline_model": "small",
        "models": results,
        "new_tokens": args.new_tokens,
        "batch_size": BATCH,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "backbone": args.backbone,
        "torch": torch.__version__,
        "wall_seconds": time.perf_counter() - started,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
