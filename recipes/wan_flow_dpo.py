"""Flow-DPO post-training of Wan-2.1 with a video reward (DeScore, or an analytic reward for tests and the demo).

    python recipes/wan_flow_dpo.py --pipeline DIR_OR_ID --reward-model DIR_OR_ID --prompts prompts.txt \
        --output-dir out/ --max-steps N
    accelerate launch recipes/wan_flow_dpo.py ...          # many processes: prompts split across ranks, DDP sync

What it does (Flow-DPO, arXiv 2501.13918; formulas and the meaning of --beta in integrations/flow_dpo.py):
1. Pairs: K videos per prompt from the base model (adapter disabled), scored by the reward, best vs worst (or every
   pair over a margin); latents, scores and CoTs under --output-dir/pairs/round_0000, resumable. With
   --online-every N the current policy regenerates the pairs every N steps (round r = step // N).
2. Training: LoRA (r 64 / alpha 128 on q/k/v/o by default, as in the paper), the Flow-DPO loss with constant beta,
   shared noise and logit-normal t for winner and loser, reference = the same transformer with its adapter disabled.
3. Every --eval-every steps (and at the start and the end), the mean reward of fresh samples on fixed noise.
Outputs in --output-dir: the final LoRA in the diffusers format (`pipe.load_lora_weights(DIR)`), metrics.jsonl
(one JSON object per line), curves.png, checkpoint-N/ (atomic; --resume continues exactly from the newest).
--reward-model accepts `analytic:redness` / `analytic:brightness` (rewards with a known optimum) instead of DeScore.
Size flags (--num-frames, --height, --width, --num-inference-steps, ...) default to the pipeline's
generation_defaults.json when it has one (tiny pipelines from `descore init-tiny-wan`), else Wan-2.1's model card.
"""

import argparse
import functools
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from descore_plugin.integrations import flow_dpo
from descore_plugin.integrations import wan



def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--pipeline", required=True, help=f"WanPipeline directory or hub id (e.g. {wan.WAN_1_3B_ID})")
    io.add_argument("--reward-model", "--reward", dest="reward_model", required=True,
                    help="DeScore checkpoint directory / hub id, or analytic:redness | analytic:brightness")
    io.add_argument("--no-think", action="store_true", help="DeScore without CoT (masked-CoT fast path)")
    io.add_argument("--prompts", required=True, help="text file, one prompt per line (blank lines are an error)")
    io.add_argument("--output-dir", required=True)
    io.add_argument("--resume", action="store_true", help="continue from the newest checkpoint-N in --output-dir")

    gen = parser.add_argument_group("generation (defaults: the pipeline's generation_defaults.json or Wan-2.1's)")
    gen.add_argument("--num-frames", type=int, default=None, help="4k + 1")
    gen.add_argument("--height", type=int, default=None, help="multiple of 16")
    gen.add_argument("--width", type=int, default=None, help="multiple of 16")
    gen.add_argument("--num-inference-steps", type=int, default=None)
    gen.add_argument("--guidance-scale", type=float, default=None)
    gen.add_argument("--max-sequence-length", type=int, default=None, help="UMT5 tokens per prompt")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--solver", choices=["scheduler", "euler"], default="scheduler",
                     help="sampler of pairs and evaluation: the pipeline's scheduler (as pipe() does) or Euler")

    pairs = parser.add_argument_group("pairs")
    pairs.add_argument("--videos-per-prompt", type=int, default=4, help="K videos sampled per prompt")
    pairs.add_argument("--pair-selection", choices=["best_worst", "margin"], default="best_worst")
    pairs.add_argument("--pair-margin", type=float, default=0.0, help="minimum score gap of a pair")
    pairs.add_argument("--generation-batch-size", type=int, default=4, help="videos per sampling batch")
    pairs.add_argument("--uncertainty-scale", type=float, default=0.0,
                       help="distribution-head rewards: drop pairs whose gap is within this many combined score stds")
    pairs.add_argument("--online-every", type=int, default=0,
                       help="regenerate the pairs with the current policy every N steps (0: offline, base-model pairs)")

    train = parser.add_argument_group("training")
    train.add_argument("--max-steps", type=int, required=True)
    train.add_argument("--batch-size", type=int, default=4, help="pairs per process per step")
    train.add_argument("--learning-rate", type=float, default=5e-6, help="paper: 5e-6 (the 1.3B+ models)")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--max-grad-norm", type=float, default=1.0)
    train.add_argument("--beta", type=float, default=500.0, help="constant DPO beta (per-element mean MSE)")
    train.add_argument("--logit-mean", type=float, default=0.0)
    train.add_argument("--logit-std", type=float, default=1.0)
    train.add_argument("--lora-rank", type=int, default=64)
    train.add_argument("--lora-alpha", type=float, default=128.0)
    train.add_argument("--lora-targets", choices=["attention", "all"], default="attention",
                       help="attention: q/k/v/o of self- and cross-attention (paper); all: also the FFN linears")
    train.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                       help="transformer / text encoder dtype (default: bfloat16 on CUDA, float32 on CPU)")
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument("--seed", type=int, default=0)

    log = parser.add_argument_group("logging and checkpoints")
    log.add_argument("--checkpoint-every", type=int, default=100)
    log.add_argument("--eval-every", type=int, default=0, help="0: evaluate only at the start and the end")
    log.add_argument("--eval-prompts", type=int, default=8, help="the first N prompts are the evaluation prompts")
    log.add_argument("--eval-videos-per-prompt", type=int, default=2)
    log.add_argument("--weight-checksums", action="store_true",
                     help="after every step each process appends a SHA-256 of its LoRA weights to "
                          "weight_checksums/rank{R}.jsonl (a check that DDP keeps the ranks identical)")
    args = parser.parse_args(argv)
    if args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    return args




def make_reward(spec: str, think: bool, device, dtype):
    """`analytic:<name>` -> an analytic reward; otherwise a DeScore model's `reward` (scores, info with CoTs)."""
    if spec.startswith("analytic:"):
        return wan.analytic_reward(spec)
    from descore_plugin import DeScoreReward

    model = DeScoreReward.from_pretrained(spec, device=device, dtype=dtype)
    return functools.partial(model.reward, think=think)


def generation_config(args) -> wan.GenerationConfig:
    generation = wan.generation_defaults(args.pipeline)
    for name in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "max_sequence_length",
                 "negative_prompt"):
        if getattr(args, name) is not None:
            setattr(generation, name, getattr(args, name))
    generation.check()
    return generation




def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Noise and t of one step on one process: a function of (seed, rank, step) only, so resuming is exact."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 7, rank, step]).generate_state(1)[0]))


def eval_seed(seed: int, index: int) -> int:
    """Initial noise of evaluation video `index`: the same at every evaluation, unrelated to the pairs' seeds."""
    return int(np.random.SeedSequence([seed, 13, index]).generate_state(1)[0])


def batch_indices(num_pairs: int, batch_size: int, seed: int, rank: int, round_index: int, position: int) -> list[int]:
    """Pairs of the `position`-th step of a round: epochs of per-(seed, rank, round, epoch) permutations."""
    indices = []
    for slot in range(position * batch_size, (position + 1) * batch_size):
        epoch, offset = divmod(slot, num_pairs)
        order = np.random.default_rng([seed, 11, rank, round_index, epoch]).permutation(num_pairs)
        indices.append(int(order[offset]))
    return indices










def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    pairs = [r for r in rows if r["kind"] == "pairs"]
    figure, (loss_axis, reward_axis) = plt.subplots(1, 2, figsize=(11, 4))
    loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], label="Flow-DPO loss")
    loss_axis.plot([r["step"] for r in train], [r["implicit_accuracy"] for r in train], label="implicit accuracy",
                   alpha=0.6)
    loss_axis.axhline(math.log(2), color="grey", linestyle=":", label="ln 2")
    loss_axis.set_xlabel("step")
    loss_axis.legend()
    reward_axis.plot([r["step"] for r in evals], [r["eval_reward"] for r in evals], "o-", label="fresh samples")
    reward_axis.plot([r["step"] for r in pairs], [r["pairs_reward"] for r in pairs], "s--", label="pair videos")
    reward_axis.set_xlabel("step")
    reward_axis.set_ylabel("mean reward")
    reward_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    args = parse_args(argv)
    accelerator = Accelerator()
    rank = accelerator.process_index
    output_dir = Path(args.output_dir)
    metrics_path = output_dir / "metrics.jsonl"
    device = accelerator.device
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)

    prompts = wan.read_prompts(args.prompts)
    generation = generation_config(args)
    pipe = wan.load_wan_pipeline(args.pipeline, device=device, dtype=dtype)
    reward_fn = make_reward(args.reward_model, think=not args.no_think, device=device, dtype=dtype)
    pair_config = flow_dpo.PairConfig(
        videos_per_prompt=args.videos_per_prompt, selection=args.pair_selection, margin=args.pair_margin,
        batch_size=args.generation_batch_size, uncertainty_scale=args.uncertainty_scale,
    )
    pair_config.check()
    dpo_config = flow_dpo.FlowDPOConfig(beta=args.beta, logit_mean=args.logit_mean, logit_std=args.logit_std)

    # Prompt embeddings once (kept on the CPU: 4 MB per prompt for the real model), then the encoder leaves the GPU.
    prompt_cache = wan.PromptCache(pipe, generation.max_sequence_length, generation.negative_prompt, device="cpu")
    with accelerator.split_between_processes(list(enumerate(prompts))) as mine:
        my_ids, my_prompts = [i for i, _ in mine], [p for _, p in mine]
    eval_prompts = prompts[: args.eval_prompts] * args.eval_videos_per_prompt
    prompt_cache.precompute(my_prompts + eval_prompts + [generation.negative_prompt], progress=accelerator.is_main_process)
    pipe.text_encoder.to("cpu")

    transformer = pipe.transformer
    targets = wan.WAN_ATTENTION_TARGETS if args.lora_targets == "attention" else wan.WAN_ALL_LINEAR_TARGETS
    torch.manual_seed(args.seed)  # the LoRA A initialisation: the same in every run (and on every rank)
    lora_parameters = wan.add_lora(transformer, rank=args.lora_rank, alpha=args.lora_alpha, target_modules=targets)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(lora_parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer = accelerator.prepare(transformer, optimizer)

    start_step = 0
    if args.resume:
        checkpoint = wan.latest_checkpoint(output_dir)
        if checkpoint is None:
            raise flow_dpo.PairStoreError(f"--resume: no checkpoint-N directory in {output_dir}")
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
    logged_rounds = {r["round"] for r in wan.read_metrics(metrics_path) if r["kind"] == "pairs"}

    def log(row: dict) -> None:
        if accelerator.is_main_process:
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    def evaluate(step: int) -> None:
        """Mean reward of fresh samples (fixed noise per evaluation video, the same at every evaluation)."""
        jobs = list(enumerate(eval_prompts))
        with accelerator.split_between_processes(jobs) as my_jobs:
            scores = []
            for start in range(0, len(my_jobs), args.generation_batch_size):
                chunk = my_jobs[start : start + args.generation_batch_size]
                noise = torch.cat([
                    wan.initial_noise(pipe, 1, generation, generator=torch.Generator().manual_seed(
                        eval_seed(args.seed, index)))
                    for index, _ in chunk
                ])
                videos, _ = wan.generate(pipe, prompt_cache, [p for _, p in chunk], generation,
                                         transformer=transformer, latents=noise.to(device), solver=args.solver)
                scores += flow_dpo.call_reward(reward_fn, videos, [p for _, p in chunk])[0].tolist()
        scores = [s for part in gather_object([scores]) for s in part]
        mean = float(np.mean(scores))
        log({"kind": "eval", "step": step, "eval_reward": mean, "eval_reward_std": float(np.std(scores)),
             "num_videos": len(scores)})
        accelerator.print(f"step {step}: mean reward of {len(scores)} fresh samples = {mean:.5f}")

    def pairs_for_round(round_index: int) -> list[flow_dpo.PairRecord]:
        store = output_dir / "pairs" / f"round_{round_index:04d}"
        transformer.eval()
        if round_index == 0:  # the base model's videos (exactly the base model even after a resume)
            with wan.disable_adapter(transformer):
                records = flow_dpo.build_pairs(pipe, transformer, prompt_cache, my_prompts, my_ids, reward_fn,
                                               generation, pair_config, store, seed=args.seed,
                                               round_index=0, solver=args.solver,
                                               progress=accelerator.is_main_process)
        else:
            records = flow_dpo.build_pairs(pipe, transformer, prompt_cache, my_prompts, my_ids, reward_fn,
                                           generation, pair_config, store, seed=args.seed,
                                           round_index=round_index, solver=args.solver,
                                           progress=accelerator.is_main_process)
        transformer.train()
        accelerator.wait_for_everyone()
        if not records:
            raise flow_dpo.PairStoreError(
                f"{store}: no pair on process {rank} (all K scores of its {len(my_prompts)} prompts tie or differ by "
                f"<= --pair-margin {args.pair_margin}); use more prompts, more --videos-per-prompt or a smaller margin"
            )
        entries = [json.loads((store / f"{i:06d}.json").read_text()) for i in my_ids]
        mean_score = float(np.mean([s for e in entries for s in e["scores"]]))
        gathered = gather_object([[mean_score, len(records)]])
        if round_index in logged_rounds:  # resumed inside this round: its row is already in metrics.jsonl
            return records
        logged_rounds.add(round_index)
        step = round_index * args.online_every if args.online_every else 0
        log({"kind": "pairs", "step": step, "round": round_index, "pairs_reward": float(np.mean([g[0] for g in gathered])),
             "num_pairs": int(sum(g[1] for g in gathered))})
        return records

    if start_step == 0:
        evaluate(0)
    round_index, records = None, None
    progress = tqdm(total=args.max_steps, initial=start_step, desc="Flow-DPO", disable=not accelerator.is_main_process)
    for step in range(start_step, args.max_steps):
        wanted_round = step // args.online_every if args.online_every else 0
        if wanted_round != round_index:
            round_index, records = wanted_round, pairs_for_round(wanted_round)
        round_start = round_index * args.online_every if args.online_every else 0
        batch = [records[i] for i in batch_indices(len(records), args.batch_size, args.seed, rank, round_index,
                                                   step - round_start)]
        winners, losers = flow_dpo.pair_latents(batch)
        prompt_embeds = prompt_cache.embed([r.prompt for r in batch]).to(device)
        started = time.perf_counter()
        output = flow_dpo.flow_dpo_step(model, transformer, winners.to(device), losers.to(device), prompt_embeds,
                                        dpo_config, generator=step_generator(args.seed, rank, step))
        accelerator.backward(output.loss)
        grad_norm = accelerator.clip_grad_norm_(lora_parameters, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        values = torch.tensor([output.loss.item(), output.implicit_accuracy, output.mse_w, output.mse_l,
                               output.ref_mse_w, output.ref_mse_l, output.inside.mean().item(),
                               float(np.mean([r.score_w - r.score_l for r in batch]))], device=device)
        values = accelerator.reduce(values, reduction="mean").tolist()
        names = ["loss", "implicit_accuracy", "mse_w", "mse_l", "ref_mse_w", "ref_mse_l", "inside", "pair_gap"]
        log({"kind": "train", "step": step + 1, "round": round_index, **dict(zip(names, values)),
             "grad_norm": float(grad_norm), "step_seconds": time.perf_counter() - started})
        if args.weight_checksums:
            path = output_dir / "weight_checksums" / f"rank{rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps({"step": step + 1, "rank": rank, "sha256": wan.lora_checksum(transformer)}) + "\n")
        progress.update(1)
        progress.set_postfix(loss=f"{values[0]:.4f}", acc=f"{values[1]:.2f}")
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
        plot_curves(rows, output_dir / "curves.png")
        evals = [r for r in rows if r["kind"] == "eval"]
        print(f"reward of fresh samples: {evals[0]['eval_reward']:.5f} (step {evals[0]['step']}) -> "
              f"{evals[-1]['eval_reward']:.5f} (step {evals[-1]['step']}); LoRA in {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
