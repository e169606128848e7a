"""Benchmarks of the post-training recipes, one function per measurement, all written to one JSON file.

    python recipes/bench_post_training.py --json OUT.json                 # every measurement, tiny Wan on the CPU
    python recipes/bench_post_training.py --json OUT.json --only dpo_ref_memory_ratio --pipeline DIR_OR_ID --device cuda

Measurements (keys of the JSON; each function below documents its own):
- dpo_ref_memory_ratio: peak memory of a Flow-DPO step / of a plain flow-matching step on the same batch
  (goal <= 1.15; a separate reference copy of the transformer would give about 2 at scale).
- longcat_over_flowgrpo_step_cost: training time per rollout of LongCat-GRPO (one critical SDE step per video) / of
  Flow-GRPO with SDE on all steps, on the same rollout batch.
- reward_share_think, reward_share_nothink: fraction of a Flow-GRPO step (sampling + reward + training) spent in the
  DeScore reward, with and without the CoT (--reward-model, default: a tiny random DeScore written now).
- reward_gain_per_step: DiffusionNFT, Flow-GRPO, LongCat-GRPO and Flow-DPO on the same budget (the same prompts,
  videos sampled per step, LoRA, learning rate and steps) against analytic:redness: the reward gain of fresh samples
  (published LoRA - base, paired on the same noise) per step, mean and standard error over --gain-seeds seeds.

Memory: on CUDA, torch.cuda.max_memory_allocated (everything resident: weights, optimiser state, activations).
On the CPU, the same quantity is rebuilt as resident bytes (parameters, buffers, optimiser state, batch) plus the
peak of the bytes allocated during the step, read from the torch profiler's memory events ("Total Allocated").
"""

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from descore_plugin.integrations import flow_dpo, wan
from descore_plugin.rewards.contract import reward_set
from descore_plugin.testing import tiny_wan
from descore_plugin.utils.args import ConfigParser, help_field
from descore_plugin.utils.errors import device_name, positive_float, positive_int


@dataclass
class BenchPostTrainingArguments:
    json: str = help_field("output JSON file", required=True)
    only: list[str] | None = help_field("measurements to run (default: all of them)")
    pipeline: str | None = help_field("WanPipeline dir or hub id (default: a tiny one, written now)")
    device: str | None = help_field("cpu or cuda (default: cuda when available)", check=device_name)
    dtype: str | None = help_field(
        "transformer dtype (default: bfloat16 on CUDA, float32 on the CPU)", choices=["float32", "bfloat16"]
    )
    num_frames: int | None = help_field("default: the pipeline's generation defaults", check=positive_int)
    height: int | None = help_field("pixels (default: the pipeline's)", check=positive_int)
    width: int | None = help_field("pixels (default: the pipeline's)", check=positive_int)
    batch_size: int = help_field("pairs per DPO step (2x videos per FM step)", 2, check=positive_int)
    lora_rank: int = help_field("LoRA rank (Flow-DPO's 64)", 64, check=positive_int)
    lora_alpha: float = help_field("LoRA alpha (Flow-DPO's 128)", 128.0, check=positive_float)
    seed: int = help_field("seed of weights, noise and prompts", 0)
    reward_model: str | None = help_field(
        "DeScore dir, hub id or http(s)://host:port for reward_share_* (default: a tiny random one, written now)"
    )
    gain_steps: int = help_field("training steps of each run of reward_gain_per_step", 20, check=positive_int)
    gain_seeds: int = help_field(
        "seeds (0..N-1) of reward_gain_per_step; the standard error is over them", 3, check=positive_int
    )
    gain_methods: list[str] = help_field("methods of reward_gain_per_step", ["nft", "flow_grpo", "longcat", "flow_dpo"])


def parse_args(argv=None) -> BenchPostTrainingArguments:
    parser = ConfigParser(BenchPostTrainingArguments, prog="bench_post_training.py", description=__doc__)
    parser._option_string_actions["--only"].help = f"measurements to run (default: all of {sorted(MEASUREMENTS)})"
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


def resolve_pipeline(args, workdir: Path) -> str:
    """--pipeline, or a tiny Wan pipeline written into `workdir`."""
    if args.pipeline:
        return args.pipeline
    return str(tiny_wan.write_tiny_wan(workdir / "tiny_wan", seed=args.seed))


def device_and_dtype(args) -> tuple[torch.device, torch.dtype]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def generation_for(args, pipeline: str) -> wan.WanGenerationConfig:
    generation = tiny_wan.generation_defaults(pipeline)
    for name in ("num_frames", "height", "width"):
        if getattr(args, name) is not None:
            setattr(generation, name, getattr(args, name))
    generation.check()
    return generation


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def resident_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer, *tensors: torch.Tensor) -> int:
    """Bytes held before a step: parameters, buffers, optimiser state and the batch (what CUDA would count)."""
    states = [value for state in optimizer.state.values() for value in state.values()]
    return _tensor_bytes(list(module.parameters()) + list(module.buffers()) + states + list(tensors))


def cpu_step_peak_bytes(step) -> int:
    """Peak of the bytes allocated while `step()` runs on the CPU (torch profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace_path))
        events = json.loads(trace_path.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0] + totals)


def peak_memory_bytes(step, device: torch.device, resident: int) -> int:
    """Peak memory of `step()` including what is resident (`resident` is only used on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return resident + cpu_step_peak_bytes(step)


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------


def measure_dpo_ref_memory_ratio(args, workdir: Path) -> dict:
    """Peak memory of one Flow-DPO training step (policy forward + backward on winners and losers, reference =
    the same transformer with its LoRA disabled, no gradient) over one plain flow-matching step (forward + backward)
    on the same 2B latents, both followed by the AdamW update; LoRA r/alpha on q/k/v/o as in the paper.
    Each step runs once untimed first so that the optimiser state exists in both measurements."""
    pipeline = resolve_pipeline(args, workdir)
    device, dtype = device_and_dtype(args)
    generation = generation_for(args, pipeline)
    pipe = wan.load_wan_pipeline(pipeline, device=device, dtype=dtype)
    transformer = pipe.transformer
    cache = wan.PromptCache(pipe, generation.max_sequence_length, device=device)
    prompts = [tiny_wan.TINY_CORPUS[i % len(tiny_wan.TINY_CORPUS)] for i in range(args.batch_size)]
    prompt_embeds = cache.embed(prompts)
    pipe.text_encoder.to("cpu")
    torch.manual_seed(args.seed)
    lora = wan.add_lora(
        transformer, rank=args.lora_rank, alpha=args.lora_alpha, target_modules=wan.WAN_ATTENTION_TARGETS
    )
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    config = flow_dpo.FlowDPOConfig(timestep_shift=flow_dpo.scheduler_shift(pipe.scheduler))
    generator = torch.Generator().manual_seed(args.seed)
    shape = wan.latent_shape(pipe, args.batch_size, generation.num_frames, generation.height, generation.width)
    winners = torch.randn(shape, generator=generator).to(device)
    losers = torch.randn(shape, generator=generator).to(device)
    both, both_embeds = torch.cat([winners, losers]), torch.cat([prompt_embeds, prompt_embeds])

    def dpo_step():
        output = flow_dpo.flow_dpo_step(
            transformer, transformer, winners, losers, prompt_embeds, config, torch.Generator().manual_seed(1)
        )
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def flow_matching_step():
        loss = flow_dpo.flow_matching_step(transformer, both, both_embeds, config, torch.Generator().manual_seed(1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    dpo_step()
    flow_matching_step()
    resident = resident_bytes(transformer, optimizer, winners, losers, prompt_embeds)
    fm_peak = peak_memory_bytes(flow_matching_step, device, resident)
    dpo_peak = peak_memory_bytes(dpo_step, device, resident)
    return {
        "dpo_ref_memory_ratio": dpo_peak / fm_peak,
        "dpo_ref_memory": {
            "dpo_step_peak_bytes": dpo_peak,
            "flow_matching_step_peak_bytes": fm_peak,
            "resident_bytes": resident,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "pipeline": args.pipeline or "tiny (descore init-tiny-wan)",
            "latent_shape": list(shape),
            "pairs_per_step": args.batch_size,
            "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha, "targets": "q/k/v/o self+cross"},
            "transformer_parameters": sum(p.numel() for p in transformer.parameters()),
        },
    }


def _grpo_step_seconds(args, workdir: Path, config, rewards_for, iterations: int = 3) -> dict:
    """Median seconds of the phases of `grpo.WanGRPOTrainer.step` (time/sample, time/reward, time/train) over
    `iterations` steps after one warm-up step: 2 prompts x config.group_size videos, the pipeline's generation
    defaults (tiny: 9 x 64 x 64, 6 steps, CFG 5), LoRA --lora-rank/--lora-alpha on every linear, one process.
    rewards_for(device, dtype) returns the RewardSet."""
    import statistics

    from accelerate import Accelerator

    from descore_plugin.integrations import grpo

    pipeline = resolve_pipeline(args, workdir)
    device, dtype = device_and_dtype(args)
    generation = generation_for(args, pipeline)
    pipe = wan.load_wan_pipeline(pipeline, device=device, dtype=dtype)
    cache = wan.PromptCache(pipe, generation.max_sequence_length, device="cpu")
    prompts = tiny_wan.TINY_CORPUS[:2]
    cache.precompute(prompts + [generation.negative_prompt])
    transformer = pipe.transformer
    torch.manual_seed(args.seed)
    lora = wan.add_lora(transformer, rank=args.lora_rank, alpha=args.lora_alpha)
    accelerator = Accelerator(cpu=device.type == "cpu")
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    rewards = rewards_for(device, dtype)
    generator = torch.Generator().manual_seed(args.seed)
    trainer = grpo.WanGRPOTrainer(config, accelerator, pipe, model, transformer, optimizer, cache, generation, rewards)
    runs = [trainer.step(prompts, generator) for _ in range(iterations + 1)][1:]
    phases = {key: statistics.median(run[f"time/{key}"] for run in runs) for key in ("sample", "reward", "train")}
    phases["videos_per_step"] = len(prompts) * config.group_size
    phases["num_inference_steps"] = generation.num_inference_steps
    phases["latent_shape"] = list(
        wan.latent_shape(pipe, 1, generation.num_frames, generation.height, generation.width)
    )[1:]
    phases["device"] = str(device)
    return phases


def measure_longcat_over_flowgrpo_step_cost(args, workdir: Path) -> dict:
    """Training seconds per rollout (the loss, backward and optimiser part of a GRPO step, divided by the videos)
    of LongCat-GRPO over Flow-GRPO with SDE on ALL steps, each with its published defaults (flow_grpo: one term per
    SDE step, 2 updates; longcat: one critical-step term, 1 update; both with the reference forward for the KL),
    same rollout batch and grid. Sampling is the same T-step loop for both and is reported apart (not in the ratio).
    Expected near 1 / T: LongCat trains one step of the T that Flow-GRPO trains."""
    from descore_plugin.integrations import grpo

    def analytic(device, dtype):
        return reward_set(["analytic:redness"])

    flow = _grpo_step_seconds(args, workdir, grpo.WanGRPOConfig("flow_grpo"), analytic)
    longcat = _grpo_step_seconds(args, workdir, grpo.WanGRPOConfig("longcat"), analytic)
    per_rollout = lambda phases: phases["train"] / phases["videos_per_step"]  # noqa: E731
    return {
        "longcat_over_flowgrpo_step_cost": per_rollout(longcat) / per_rollout(flow),
        "longcat_over_flowgrpo": {
            "flow_grpo_seconds": flow,
            "longcat_seconds": longcat,
            "whole_step_ratio": sum(longcat[k] for k in ("sample", "reward", "train"))
            / sum(flow[k] for k in ("sample", "reward", "train")),
            "pipeline": args.pipeline or "tiny (descore init-tiny-wan)",
        },
    }


def _reward_share(args, workdir: Path, think: bool) -> dict:
    from descore_plugin.integrations import grpo
    from descore_plugin.testing.tiny import init_tiny

    model_dir = args.reward_model
    if model_dir is None:
        model_dir = workdir / "tiny_descore"
        if not model_dir.is_dir():
            init_tiny(model_dir, seed=args.seed)

    def descore(device, dtype):
        return reward_set(["descore"], reward_model=str(model_dir), think=think, device=device, dtype=dtype)

    phases = _grpo_step_seconds(args, workdir, grpo.WanGRPOConfig("flow_grpo"), descore, iterations=2)
    share = phases["reward"] / (phases["sample"] + phases["reward"] + phases["train"])
    key = "reward_share_think" if think else "reward_share_nothink"
    return {
        key: share,
        key.replace("reward_share", "reward_share_detail"): {
            **phases,
            "reward_model": str(args.reward_model or "tiny random DeScore (descore init-tiny)"),
        },
    }


def measure_reward_share_think(args, workdir: Path) -> dict:
    """Fraction of one Flow-GRPO step (sampling + DeScore reward + training) spent in the reward, DeScore WITH the CoT
    (generation of up to the model's max_new_tokens, then the <Reward> head), on the decoded tensors."""
    return _reward_share(args, workdir, think=True)


def measure_reward_share_nothink(args, workdir: Path) -> dict:
    """Same as reward_share_think with DeScore's no-CoT fast path (one forward per video batch)."""
    return _reward_share(args, workdir, think=False)


GAIN_FLAGS = {
    # the same budget for every method: 4 prompts x 8 videos sampled per step (Flow-DPO: its pairs regenerated by
    # the policy every step, best vs worst of 8), LoRA rank 4 / alpha 4 on every linear, AdamW lr 1e-2, 5x16x16 videos.
    # Each method's own loss settings are its defaults; the EMA (GRPO, NFT) is off and no step goes untrained, so the
    # published LoRA is the trained one and the gain measures the updates.
    "nft": ["--group-size", "8", "--prompts-per-step", "4", "--no-ema"],
    "flow_grpo": ["--group-size", "8", "--prompts-per-step", "4", "--ema", "false", "--untrained-steps", "0"],
    "longcat": ["--group-size", "8", "--prompts-per-step", "4", "--critical-steps", "3"],
    "flow_dpo": [
        "--videos-per-prompt",
        "8",
        "--generation-batch-size",
        "8",
        "--online-every",
        "1",
        "--batch-size",
        "4",
    ],
}


def _fresh_redness(pipeline: str, lora_dir, seed: int) -> torch.Tensor:
    """analytic:redness of 32 fresh videos (the 4 prompts x 8) on noise never used in training; base model when
    lora_dir is None."""
    pipe = wan.load_wan_pipeline(pipeline)
    generation = tiny_wan.generation_defaults(pipeline)
    generation.num_frames, generation.height, generation.width = 5, 16, 16
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    prompts = list(tiny_wan.TINY_CORPUS[:4]) * 8
    videos, _ = wan.generate(
        pipe,
        wan.PromptCache(pipe, generation.max_sequence_length),
        prompts,
        generation,
        generator=torch.Generator().manual_seed(1000 + seed),
    )
    return reward_set(["analytic:redness"])(videos, prompts)["analytic:redness"]


def measure_reward_gain_per_step(args, workdir: Path) -> dict:
    """Reward gain per step of each method on the same budget (GAIN_FLAGS), tiny Wan on the CPU: for each seed, a
    run of --gain-steps steps through `post_train` (the recipes' own code), then the mean analytic:redness of 32
    fresh videos with the published LoRA minus the base model's on the same noise. Reported per method: the gain per
    step (mean and standard error over seeds), the gain in base-sample standard deviations, the fraction of the
    paired videos that improved, and seconds per step. The ratio nft / flow_grpo is the headline."""
    import statistics
    import time

    from descore_plugin.integrations.post_training import config_from_argv, post_train

    pipeline = resolve_pipeline(args, workdir)
    prompts = workdir / "gain_prompts.txt"
    prompts.write_text("\n".join(tiny_wan.TINY_CORPUS[:4]) + "\n")
    results = {}
    for method in args.gain_methods:
        runs = []
        for seed in range(args.gain_seeds):
            out = workdir / f"gain-{method}-{seed}"
            argv = [
                "--pipeline",
                pipeline,
                "--prompts",
                str(prompts),
                "--output-dir",
                str(out),
                "--reward",
                "analytic:redness",
                "--max-steps",
                str(args.gain_steps),
                "--checkpoint-every",
                str(args.gain_steps),
                "--num-frames",
                "5",
                "--height",
                "16",
                "--width",
                "16",
                "--eval-prompts",
                "1",
                "--eval-videos-per-prompt",
                "1",
                "--lora-rank",
                "4",
                "--lora-alpha",
                "4",
                "--lora-targets",
                "all",
                "--learning-rate",
                "1e-2",
                "--seed",
                str(seed),
                *GAIN_FLAGS[method],
            ]
            started = time.perf_counter()
            post_train(config_from_argv(method, argv))
            seconds = time.perf_counter() - started
            base, trained = _fresh_redness(pipeline, None, seed), _fresh_redness(pipeline, out, seed)
            gain = trained - base
            runs.append(
                {
                    "seed": seed,
                    "gain": float(gain.mean()),
                    "gain_over_base_std": float(gain.mean() / base.std()),
                    "fraction_improved": float((gain > 0).float().mean()),
                    "seconds_per_step": seconds / args.gain_steps,
                }
            )
            print(f"{method} seed {seed}: {runs[-1]}", flush=True)
        gains = [r["gain"] / args.gain_steps for r in runs]
        se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
        results[method] = {
            "gain_per_step": statistics.mean(gains),
            "gain_per_step_se": se,
            "gain_over_base_std": statistics.mean(r["gain_over_base_std"] for r in runs),
            "fraction_improved": statistics.mean(r["fraction_improved"] for r in runs),
            "seconds_per_step": statistics.mean(r["seconds_per_step"] for r in runs),
            "runs": runs,
        }
    ratio = (
        results["nft"]["gain_per_step"] / results["flow_grpo"]["gain_per_step"]
        if {"nft", "flow_grpo"} <= set(results)
        else float("nan")
    )
    return {
        "reward_gain_per_step": ratio,
        "reward_gain_per_step_detail": {
            "methods": results,
            "steps": args.gain_steps,
            "seeds": list(range(args.gain_seeds)),
            "budget": "4 prompts x 8 videos per step, LoRA r4/a4 all linears, AdamW lr 1e-2, 5x16x16, analytic:redness",
            "headline": "nft gain per step / flow_grpo gain per step",
        },
    }


MEASUREMENTS = {
    "dpo_ref_memory_ratio": measure_dpo_ref_memory_ratio,
    "longcat_over_flowgrpo_step_cost": measure_longcat_over_flowgrpo_step_cost,
    "reward_share_think": measure_reward_share_think,
    "reward_share_nothink": measure_reward_share_nothink,
    "reward_gain_per_step": measure_reward_gain_per_step,
}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    names = args.only if args.only else list(MEASUREMENTS)
    unknown = [name for name in names if name not in MEASUREMENTS]
    if unknown:
        raise SystemExit(f"--only: unknown measurement(s) {unknown}; choose from {sorted(MEASUREMENTS)}")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            results.update(MEASUREMENTS[name](args, Path(workdir)))
            print(f"{name}: {results[name]:.4f}" if isinstance(results.get(name), float) else name, flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
