"""GRPO post-training of Wan-2.1 with video rewards: Flow-GRPO or LongCat-GRPO (DeScore, analytic rewards, yours).

    python recipes/wan_flow_grpo.py --algorithm flow_grpo --pipeline DIR_OR_ID --reward-model DIR_OR_ID \
        --prompts prompts.txt --output-dir out/ --max-steps N
    python recipes/wan_flow_grpo.py --algorithm longcat ... --reward descore:subject=1 --reward descore:dynamics=1
    accelerate launch recipes/wan_flow_grpo.py ...         # many processes: prompts split across ranks, DDP sync
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/wan_flow_grpo.py ...   # CPU, gloo

One step (formulas and citations in integrations/grpo.py):
1. Rollouts: each process takes --prompts-per-step of ITS prompts and samples --group-size videos per prompt on the
   scheduler's sigma grid. flow_grpo: SDE on every step (or --sde-window), independent initial noise.
   longcat: shared initial noise per prompt, ONE critical SDE step among the first --critical-steps, truncated
   diffusion term tau, Euler elsewhere. Log-probs of the SDE steps are recorded.
2. Rewards on the decoded (B, F, C, H, W) videos in [0, 1]: DeScore (`descore`, `descore:overall`,
   `descore:<dimension>`) and/or `analytic:<name>`, each with a weight. flow_grpo sums them at the reward level and
   normalises per prompt group; longcat normalises each by the largest group std over ALL processes and sums the
   advantages.
3. --updates-per-rollout optimiser steps: clipped policy loss on exp(logp_new - logp_old) plus beta * KL to the
   reference (the same transformer with its LoRA disabled); longcat re-weights both by lambda_policy / lambda_KL.
   Gradients are all-reduced by accelerate's DDP wrapper: the LoRA weights stay identical on every process
   (--weight-checksums records a SHA-256 per process and step to check it).
Every --eval-every steps (and at the start and the end): the mean rewards of fresh ODE samples on fixed noise.
Outputs in --output-dir: the final LoRA in the diffusers format (`pipe.load_lora_weights(DIR)`), metrics.jsonl (one
JSON object per line), curves.png (reward curves), checkpoint-N/ (atomic; --resume continues exactly from the newest).
Size and sampler flags default to the pipeline's generation_defaults.json when it has one (tiny pipelines from
`descore init-tiny-wan`), else to the algorithm's published preset (flow_grpo: 33x240x416, 20 steps, CFG 4.5;
longcat: 16 steps, time shift 12, CFG 4).
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from descore_plugin.integrations import grpo, wan


# Published presets used when the pipeline ships no generation_defaults.json (the real Wan-2.1 checkpoints).
# flow_grpo: config/grpo.py::general_ocr_wan2_1 (240x416x33, 20 steps, CFG 4.5; flow shift: the pipeline's, 3.0).
# longcat: arXiv 2510.22200, A.1 (16 steps, time shift 12, CFG 4); size: flow_grpo's (the report gives none).
PRESETS = {
    "flow_grpo": dict(num_frames=33, height=240, width=416, num_inference_steps=20, guidance_scale=4.5, shift=None,
                      lora_rank=32, lora_alpha=64.0, lora_targets="attention"),
    "longcat": dict(num_frames=33, height=240, width=416, num_inference_steps=16, guidance_scale=4.0, shift=12.0,
                    lora_rank=128, lora_alpha=64.0, lora_targets="all"),
}


class RecipeError(ValueError):
    """A command-line input of this recipe that cannot be used; the message names the flag or the file."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", choices=["flow_grpo", "longcat"], required=True)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--pipeline", required=True, help=f"WanPipeline directory or hub id (e.g. {wan.WAN_1_3B_ID})")
    io.add_argument("--reward-model", required=True,
                    help="DeScore checkpoint directory / hub id, or analytic:<name> (" +
                         ", ".join(sorted(wan.ANALYTIC_REWARDS)) + ")")
    io.add_argument("--reward", action="append", default=None, metavar="NAME[=WEIGHT]",
                    help="a reward and its weight (repeatable): descore, descore:overall, descore:<dimension> "
                         "(subject, dynamics, camera, environment, style) or analytic:<name>. Default: the "
                         "--reward-model itself (descore, or the analytic reward) with weight 1")
    io.add_argument("--no-think", action="store_true", help="DeScore without CoT (only the `descore` reward)")
    io.add_argument("--prompts", required=True, help="text file, one prompt per line (blank lines are an error)")
    io.add_argument("--output-dir", required=True)
    io.add_argument("--resume", action="store_true", help="continue from the newest checkpoint-N in --output-dir")

    gen = parser.add_argument_group("generation (defaults: the pipeline's generation_defaults.json or the preset)")
    gen.add_argument("--num-frames", type=int, default=None, help="4k + 1")
    gen.add_argument("--height", type=int, default=None, help="multiple of 16")
    gen.add_argument("--width", type=int, default=None, help="multiple of 16")
    gen.add_argument("--num-inference-steps", type=int, default=None, help="sampling (and SDE) steps T")
    gen.add_argument("--guidance-scale", type=float, default=None)
    gen.add_argument("--shift", type=float, default=None, help="scheduler time (flow) shift; longcat preset 12")
    gen.add_argument("--max-sequence-length", type=int, default=None, help="UMT5 tokens per prompt")
    gen.add_argument("--negative-prompt", default=None)

    algo = parser.add_argument_group("GRPO (defaults: FlowGRPOConfig / LongCatGRPOConfig in integrations/grpo.py)")
    algo.add_argument("--group-size", type=int, default=4, help="videos per prompt")
    algo.add_argument("--prompts-per-step", type=int, default=2, help="prompts per process per step (our default)")
    algo.add_argument("--noise-level", type=float, default=None, help="a of s_t = a sqrt(t/(1-t)) (0.7 / 1.0)")
    algo.add_argument("--sde-window", type=int, nargs=2, default=None, metavar=("START", "END"),
                      help="flow_grpo: SDE only on steps START..END-1 (default: all steps)")
    algo.add_argument("--critical-steps", type=int, default=None, help="longcat T': critical step among the first T'")
    algo.add_argument("--tau", type=float, default=None, help="longcat truncation of the diffusion term (0.45)")
    algo.add_argument("--clip-range", type=float, default=None, help="PPO ratio clip (1e-3)")
    algo.add_argument("--kl-beta", type=float, default=None, help="KL weight (flow_grpo 0.004, longcat 3e-4)")
    algo.add_argument("--updates-per-rollout", type=int, default=None, help="optimiser steps per rollout batch")
    algo.add_argument("--micro-batch-size", type=int, default=None,
                      help="videos per transformer batch in sampling and training (default: one update's videos)")

    train = parser.add_argument_group("training")
    train.add_argument("--max-steps", type=int, required=True, help="GRPO steps (rollout batch + its updates)")
    train.add_argument("--learning-rate", type=float, default=1e-4, help="flow_grpo Wan preset and LongCat: 1e-4")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW (flow_grpo config/base.py)")
    train.add_argument("--max-grad-norm", type=float, default=1.0)
    train.add_argument("--lora-rank", type=int, default=None, help="flow_grpo Wan 32, longcat 128")
    train.add_argument("--lora-alpha", type=float, default=None, help="64 for both")
    train.add_argument("--lora-targets", choices=["attention", "all"], default=None,
                       help="attention: q/k/v/o of self- and cross-attention (flow_grpo); all: also FFN (longcat)")
    train.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                       help="transformer / text encoder dtype (default: bfloat16 on CUDA, float32 on CPU)")
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument("--seed", type=int, default=0)

    log = parser.add_argument_group("logging and checkpoints")
    log.add_argument("--checkpoint-every", type=int, default=50)
    log.add_argument("--eval-every", type=int, default=0, help="0: evaluate only at the start and the end")
    log.add_argument("--eval-prompts", type=int, default=8, help="the first N prompts are the evaluation prompts")
    log.add_argument("--eval-videos-per-prompt", type=int, default=2)
    log.add_argument("--eval-solver", choices=["euler", "scheduler"], default="euler",
                     help="ODE sampler of the evaluation videos: Euler (the ODE of the SDE) or the pipeline's")
    log.add_argument("--weight-checksums", action="store_true",
                     help="after every step each process appends a SHA-256 of its LoRA weights to "
                          "weight_checksums/rank{R}.jsonl (a check that DDP keeps the ranks identical)")
    args = parser.parse_args(argv)
    if args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    return args




def parse_reward_specs(args) -> list[tuple[str, float]]:
    """--reward NAME[=WEIGHT] flags -> [(name, weight)]; default: the --reward-model itself with weight 1."""
    specs = args.reward or [args.reward_model if args.reward_model.startswith("analytic:") else "descore"]
    parsed = []
    for spec in specs:
        name, _, weight = spec.partition("=")
        try:
            parsed.append((name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise RecipeError(f"--reward {spec!r}: the weight after '=' must be a number") from None
    names = [name for name, _ in parsed]
    if len(set(names)) != len(names):
        raise RecipeError(f"--reward: a reward is given twice in {names}")
    return parsed


def build_rewards(args, device, dtype):
    """The (name, weight, fn) rewards of grpo.grpo_iteration: analytic rewards and one shared DeScore model."""
    specs = parse_reward_specs(args)
    descore_specs = [(n, w) for n, w in specs if n == "descore" or n.startswith("descore:")]
    rewards = []
    for name, weight in specs:
        if name.startswith("analytic:"):
            rewards.append((name, weight, wan.analytic_reward(name)))
        elif not (name == "descore" or name.startswith("descore:")):
            raise RecipeError(f"--reward {name!r}: expected descore, descore:<dimension> or analytic:<name>")
    if descore_specs:
        if args.reward_model.startswith("analytic:"):
            raise RecipeError(f"--reward {descore_specs[0][0]}: needs a DeScore model in --reward-model, "
                              f"got {args.reward_model!r}")
        from descore_plugin import DeScoreReward

        model = DeScoreReward.from_pretrained(args.reward_model, device=device, dtype=dtype)
        rewards += grpo.descore_rewards(model, descore_specs, think=not args.no_think)
    order = [name for name, _ in specs]
    return sorted(rewards, key=lambda reward: order.index(reward[0]))


def generation_config(args) -> tuple[wan.GenerationConfig, float | None]:
    """Sizes and sampler settings: flags > the pipeline's generation_defaults.json > the algorithm's preset."""
    preset = PRESETS[args.algorithm]
    has_defaults = (Path(args.pipeline) / wan.GENERATION_DEFAULTS_FILE).is_file()
    generation = wan.generation_defaults(args.pipeline)
    if not has_defaults:
        for name in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale"):
            setattr(generation, name, preset[name])
    for name in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "max_sequence_length",
                 "negative_prompt"):
        if getattr(args, name) is not None:
            setattr(generation, name, getattr(args, name))
    generation.check()
    shift = args.shift if args.shift is not None else (None if has_defaults else preset["shift"])
    return generation, shift


def set_shift(pipe, shift: float) -> None:
    """Replace the pipeline's scheduler by the same one with another time shift (UniPC: flow_shift; Euler: shift)."""
    config = pipe.scheduler.config
    key = "flow_shift" if "flow_shift" in config else "shift"
    pipe.scheduler = type(pipe.scheduler).from_config(config, **{key: shift})


def grpo_config(args):
    """FlowGRPOConfig / LongCatGRPOConfig with the flags that were given; the rest are the published defaults."""
    common = dict(group_size=args.group_size, noise_level=args.noise_level, clip_range=args.clip_range,
                  kl_beta=args.kl_beta, updates_per_rollout=args.updates_per_rollout,
                  max_grad_norm=args.max_grad_norm)
    if args.algorithm == "flow_grpo":
        if args.critical_steps is not None or args.tau is not None:
            raise RecipeError("--critical-steps and --tau belong to --algorithm longcat")
        common["sde_window"] = tuple(args.sde_window) if args.sde_window else None
        config_class = grpo.FlowGRPOConfig
    else:
        if args.sde_window is not None:
            raise RecipeError("--sde-window belongs to --algorithm flow_grpo (longcat has one critical step)")
        common.update(critical_steps=args.critical_steps, diffusion_cap=args.tau)
        config_class = grpo.LongCatGRPOConfig
    return config_class(**{key: value for key, value in common.items() if value is not None})




def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def step_prompts(prompts: list[str], count: int, seed: int, rank: int, step: int) -> list[str]:
    """The prompts of one step on one process: epochs of per-(seed, rank, epoch) permutations of its prompts,
    a function of the step only, so a resumed run sees the same prompts."""
    chosen = []
    for slot in range(step * count, (step + 1) * count):
        epoch, offset = divmod(slot, len(prompts))
        order = np.random.default_rng([seed, 13, rank, epoch]).permutation(len(prompts))
        chosen.append(prompts[int(order[offset])])
    return chosen










def plot_curves(rows: list[dict], reward_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{key: float("nan") if value is None else value for key, value in row.items()} for row in rows]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    figure, axes = plt.subplots(1, len(reward_names) + 1, figsize=(5 * (len(reward_names) + 1), 4), squeeze=False)
    for axis, name in zip(axes[0], reward_names):
        axis.plot([r["step"] for r in train], [r[f"reward/{name}"] for r in train], alpha=0.6, label="rollouts (SDE)")
        axis.plot([r["step"] for r in evals], [r[f"eval/{name}"] for r in evals], "o-", label="fresh ODE samples")
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_ylabel("mean reward")
        axis.legend()
    axis = axes[0][-1]
    axis.plot([r["step"] for r in train], [r["train/kl"] for r in train], label="KL to the reference")
    axis.plot([r["step"] for r in train], [r["train/clipped"] for r in train], label="clipped fraction")
    axis.set_xlabel("step")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed

    args = parse_args(argv)
    accelerator = Accelerator()
    rank = accelerator.process_index
    output_dir = Path(args.output_dir)
    metrics_path = output_dir / "metrics.jsonl"
    device = accelerator.device
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)

    prompts = wan.read_prompts(args.prompts)
    generation, shift = generation_config(args)
    config = grpo_config(args)
    preset = PRESETS[args.algorithm]
    pipe = wan.load_wan_pipeline(args.pipeline, device=device, dtype=dtype)
    if shift is not None:
        set_shift(pipe, shift)
    rewards = build_rewards(args, device, dtype)
    reward_names = [name for name, _, _ in rewards]

    # Prompts split across processes (each process samples whole groups of its own prompts).
    with accelerator.split_between_processes(prompts) as my_prompts:
        my_prompts = list(my_prompts)
    if not my_prompts:
        raise RecipeError(f"{args.prompts}: {len(prompts)} prompts for {accelerator.num_processes} processes")
    eval_prompts = prompts[: args.eval_prompts] * args.eval_videos_per_prompt
    prompt_cache = wan.PromptCache(pipe, generation.max_sequence_length, generation.negative_prompt, device="cpu")
    prompt_cache.precompute(my_prompts + eval_prompts + [generation.negative_prompt],
                            progress=accelerator.is_main_process)
    pipe.text_encoder.to("cpu")

    transformer = pipe.transformer
    set_seed(args.seed)  # the LoRA A matrices are drawn from the global RNG: the same on every rank and every run
    targets = wan.WAN_ATTENTION_TARGETS if (args.lora_targets or preset["lora_targets"]) == "attention" \
        else wan.WAN_ALL_LINEAR_TARGETS
    lora_parameters = wan.add_lora(transformer, rank=args.lora_rank or preset["lora_rank"],
                                   alpha=args.lora_alpha or preset["lora_alpha"], target_modules=targets)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(lora_parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    micro_batch_size = grpo.check_batching(args.prompts_per_step * config.group_size, config, args.micro_batch_size)

    start_step = 0
    if args.resume:
        checkpoint = wan.latest_checkpoint(output_dir)
        if checkpoint is None:
            raise RecipeError(f"--resume: no checkpoint-N directory in {output_dir}")
        start_step = wan.load_checkpoint(checkpoint, transformer, optimizer)
        accelerator.print(f"resumed from {checkpoint} (step {start_step})")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        rows = wan.read_metrics(metrics_path, start_step if args.resume else -1)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (output_dir / "args.json").write_text(json.dumps(vars(args), indent=2))
        if args.weight_checksums and not args.resume:
            shutil.rmtree(output_dir / "weight_checksums", ignore_errors=True)
    accelerator.wait_for_everyone()

    def log(row: dict) -> None:
        # NaN (a reward that scored no video, e.g. no parsable DeScore answer) is written as null: strict JSON
        row = {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}
        if accelerator.is_main_process:
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    def evaluate(step: int) -> None:
        """Mean rewards of fresh ODE samples (fixed noise per evaluation video, the same at every evaluation)."""
        transformer.eval()
        jobs = list(enumerate(eval_prompts))
        with accelerator.split_between_processes(jobs) as my_jobs:
            scores = {name: [] for name in reward_names}
            batch = micro_batch_size
            for start in range(0, len(my_jobs), batch):
                chunk = my_jobs[start : start + batch]
                noise = torch.cat([
                    wan.initial_noise(pipe, 1, generation, generator=torch.Generator().manual_seed(
                        seed_of(args.seed, 17, index)))
                    for index, _ in chunk
                ])
                videos, _ = wan.generate(pipe, prompt_cache, [p for _, p in chunk], generation,
                                         transformer=transformer, latents=noise.to(device), solver=args.eval_solver)
                for name, values in grpo.score_videos(rewards, videos, [p for _, p in chunk]).items():
                    scores[name] += values.tolist()
        gathered = gather_object([scores])
        row = {"kind": "eval", "step": step}
        for name in reward_names:
            values = [v for part in gathered for v in part[name]]
            row[f"eval/{name}"] = float(np.nanmean(values))
            row[f"eval_std/{name}"] = float(np.nanstd(values))
        row["num_videos"] = len(eval_prompts)
        log(row)
        accelerator.print(f"step {step}: fresh samples " +
                          ", ".join(f"{name} = {row[f'eval/{name}']:.5f}" for name in reward_names))

    if start_step == 0:
        evaluate(0)
    progress = tqdm(total=args.max_steps, initial=start_step, desc=args.algorithm,
                    disable=not accelerator.is_main_process)
    for step in range(start_step, args.max_steps):
        generator = torch.Generator().manual_seed(seed_of(args.seed, 7, rank, step))
        started = time.perf_counter()
        metrics = grpo.grpo_iteration(
            accelerator, pipe, model, transformer, optimizer, lora_parameters, prompt_cache,
            step_prompts(my_prompts, args.prompts_per_step, args.seed, rank, step), rewards, generation, config,
            generator, micro_batch_size,
        )
        # train/* and time/* are this process's means: average them over the processes
        local = sorted(key for key in metrics if key.startswith(("train/", "time/")) or key == "advantage_abs_mean")
        averaged = accelerator.reduce(torch.tensor([metrics[key] for key in local], device=device), reduction="mean")
        metrics.update(dict(zip(local, averaged.tolist())))
        log({"kind": "train", "step": step + 1, **metrics, "step_seconds": time.perf_counter() - started})
        if args.weight_checksums:
            path = output_dir / "weight_checksums" / f"rank{rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps({"step": step + 1, "rank": rank, "sha256": wan.lora_checksum(transformer)}) + "\n")
        progress.update(1)
        progress.set_postfix({name: f"{metrics[f'reward/{name}']:.4f}" for name in reward_names[:2]})
        done = step + 1
        if args.eval_every and done % args.eval_every == 0 and done != args.max_steps:
            evaluate(done)
        if done % args.checkpoint_every == 0 or done == args.max_steps:
            if done == args.max_steps:
                evaluate(done)
            if accelerator.is_main_process:
                wan.save_checkpoint(output_dir, done, transformer, optimizer, args)
            accelerator.wait_for_everyone()
    progress.close()

    if accelerator.is_main_process:
        wan.save_lora_weights(transformer, output_dir)
        rows = wan.read_metrics(metrics_path)
        plot_curves(rows, reward_names, output_dir / "curves.png")
        evals = [r for r in rows if r["kind"] == "eval"]
        for name in reward_names:
            first, last = (float("nan") if r[f"eval/{name}"] is None else r[f"eval/{name}"]
                           for r in (evals[0], evals[-1]))
            print(f"{name} of fresh samples: {first:.5f} (step {evals[0]['step']}) -> {last:.5f} "
                  f"(step {evals[-1]['step']})")
        print(f"LoRA in {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
