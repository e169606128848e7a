"""What the streaming input and sharding buy: ratios measured in one run, on the tiny DeScore model.

    python recipes/bench_data.py --json outputs/bench_data.json [--work-dir /tmp/bench_data]

Every measurement runs in a fresh subprocess and reads its own peak resident memory (`ru_maxrss`), so no run sees
another's allocations. Loader workers are 0 in the memory runs: all decoding happens in the measured process.

- rss_2000_over_200 = peak RSS of a stage-1 run (LoRA r 8, batch 8 pairs) whose one epoch visits 2,000 distinct
  videos / one that visits 200. Goal <= 1.2: nothing grows with the number of videos (the training process used to
  keep every decoded video).
- steps_workers2_over_workers0 = training steps/s with 2 loader workers / with the input built in the training
  process, 40 steps on the 200-video set (best of 2 interleaved runs each). > 1 where decoding and the processor are
  a noticeable share of a step and there are spare cores. To read it, the JSON also holds
  input_share_of_step_workers0 (seconds of the input pipeline alone / seconds of an in-process step: the most that
  workers can take off a step), cpu_count and load_average_1min.
- score_stream_peak_rss_ratio = peak RSS of `descore score TABLE --output OUT.jsonl --no-think` on 1,000 videos /
  on 100. Goal <= 1.2.
- sharded_over_ddp_param_opt_memory = per-rank bytes of trainable parameters + AdamW states after one full
  fine-tuning step with FSDP2 (`torch.distributed.fsdp.fully_shard` on every decoder layer and vision block, then the
  whole model: what recipes/accelerate/fsdp.yaml asks accelerate for) / with DDP (a full replica per rank), 2
  processes on CPU with gloo. Goal <= 0.6. accelerate itself selects FSDP only on accelerator devices (see
  docs/scale.md), so on CPU the bench calls the same fully_shard directly.
"""

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from descore_plugin.utils.args import ConfigParser, help_field

HERE = Path(__file__).resolve()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def child(argv: list[str], env_extra: dict | None = None, launcher: list[str] | None = None) -> dict:
    """Run this file with `--child ...` in a fresh process; its last stdout line is a JSON result."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env_extra or {}),
    }
    command = (launcher or [sys.executable]) + [str(HERE), "--child", *map(str, argv)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


# ---------------------------------------------------------------------- children
def child_train(model, data, out, steps, workers, batch_size):
    from descore_plugin.training.trainer import TrainConfig, Trainer

    config = TrainConfig(
        model=model,
        train_data=data,
        output_dir=out,
        max_steps=steps,
        batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=1e-4,
        lora_rank=8,
        lora_alpha=16,
        save_steps=0,
        log_with=None,
        num_workers=workers,
        seed=0,
    )
    trainer = Trainer(config, overwrite=True)
    start = time.perf_counter()
    trainer.train()  # the steps, then one final checkpoint of the tiny model
    seconds = time.perf_counter() - start
    return {"peak_rss_mb": peak_rss_mb(), "seconds": seconds, "steps_per_second": steps / seconds}


def child_loader(model_dir, data, steps, workers, batch_size):
    """The stage-1 input alone (decode, sample, processor, CoTs appended) for `steps` batches: its seconds."""
    from descore_plugin import DeScoreReward
    from descore_plugin.data.loader import InputEncoder, PairCollator, pair_loader
    from descore_plugin.data.pairs import load_pairs

    model = DeScoreReward.from_pretrained(model_dir)
    pairs = [p for p in load_pairs(data) if p.label in ("A", "B")]
    collate = PairCollator(InputEncoder(model), 1, seed=0, cot_mask_prob=0.5)
    loader = pair_loader(
        pairs,
        fps=model.config.fps,
        num_frames=model.config.num_frames,
        batch_size=batch_size,
        seed=0,
        start_micro_step=0,
        stop_micro_step=steps,
        num_processes=1,
        collate=collate,
        num_workers=workers,
    )
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    return {"seconds": time.perf_counter() - start, "batches": count}


def child_score(model, table, out):
    from descore_plugin.cli import main

    status = main(
        ["score", table, "--output", out, "--model", model, "--no-think", "--num-workers", "0", "--batch-size", "8"]
    )
    rows = sum(1 for _ in open(out))
    return {"peak_rss_mb": peak_rss_mb(), "status": status, "rows": rows}


def child_shard(model_dir, data, mode):
    """One full fine-tuning step on 2 ranks (gloo), DDP or FSDP2; returns per-rank parameter + optimizer bytes."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from descore_plugin import DeScoreReward
    from descore_plugin.data.loader import InputEncoder, PairCollator, PairDataset, PairOrder
    from descore_plugin.data.pairs import load_pairs
    from descore_plugin.training.losses import bradley_terry_loss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DeScoreReward.from_pretrained(model_dir)
    model.requires_grad_(True).train()
    pairs = [p for p in load_pairs(data) if p.label in ("A", "B")]
    dataset, order = PairDataset(pairs, model.config.fps, model.config.num_frames), PairOrder(len(pairs), 0)
    collate = PairCollator(InputEncoder(model), world, seed=0, cot_mask_prob=0.0, with_labels=True)
    batch = collate([dataset[(rank, order[rank * 2 + slot])] for slot in range(2)])  # global batch g = rank
    if mode == "fsdp":
        layers = set(model.vlm._no_split_modules)  # decoder layers and vision blocks
        for module in model.modules():
            if type(module).__name__ in layers:
                fully_shard(module)
        fully_shard(model)
        wrapped = model
    else:
        wrapped = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-5)
    out = wrapped(**batch["inputs"])
    n = len(batch["pairs"])
    signs = torch.tensor([1.0 if p.label == "A" else -1.0 for p in batch["pairs"]])
    r_a, r_b = out["rewards"][:n], out["rewards"][n:]
    loss = bradley_terry_loss(torch.where(signs > 0, r_a, r_b), torch.where(signs > 0, r_b, r_a)) + out["lm_loss"]
    loss.backward()
    optimizer.step()

    def local_bytes(tensor):
        tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        return tensor.numel() * tensor.element_size()

    params = sum(local_bytes(p) for p in wrapped.parameters() if p.requires_grad)
    states = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    gathered = [None] * world
    dist.all_gather_object(gathered, {"param_bytes": params, "optimizer_bytes": states, "loss": float(loss.detach())})
    dist.destroy_process_group()
    return {"ranks": gathered}


# ---------------------------------------------------------------------- driver
def write_table(path: Path, videos: list[Path], prompt: str):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["video", "prompt"])
        writer.writerows([str(v), prompt] for v in videos)


@dataclass
class BenchDataArguments:
    json: str | None = help_field("the JSON file the ratios are written to (required to measure; default: none)")
    work_dir: str = help_field("data, models and runs go here", "outputs/bench_data_work")
    child: list[str] | None = help_field(argparse.SUPPRESS)  # a measured subprocess: KIND ARGS... (internal)


def main(argv=None) -> int:
    parser = ConfigParser(BenchDataArguments, prog="bench_data.py", description=__doc__)
    (args,) = parser.parse_args_into_dataclasses(argv)
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        if kind == "train":
            result = child_train(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]), int(rest[5]))
        elif kind == "score":
            result = child_score(*rest)
        elif kind == "loader":
            result = child_loader(rest[0], rest[1], int(rest[2]), int(rest[3]), int(rest[4]))
        else:
            result = child_shard(*rest)
        if kind != "shard" or int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result), flush=True)
        return 0

    if not args.json:
        parser.error("--json OUT is required")
    from descore_plugin.testing.synthetic import write_dataset
    from descore_plugin.testing.tiny import init_tiny

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny"
    shutil.rmtree(model, ignore_errors=True)  # always today's tiny model (its settings change with the package)
    init_tiny(model)
    sets = {}
    for videos in (200, 2000):
        folder = work / f"data_{videos}"
        if not (folder / "pairs.jsonl").is_file():
            print(f"writing {videos} synthetic videos ...", flush=True)
            write_dataset(folder, videos // 2, seed=videos, progress=False)
        sets[videos] = folder / "pairs.jsonl"

    results = {}
    batch = 8
    runs = {}
    for videos in (200, 2000):
        steps = -(-videos // (2 * batch))  # one epoch: every video once
        print(f"stage 1 over {videos} videos ({steps} steps) ...", flush=True)
        runs[videos] = child(["train", model, sets[videos], work / f"run_{videos}", steps, 0, batch])
    results["rss_2000_over_200"] = runs[2000]["peak_rss_mb"] / runs[200]["peak_rss_mb"]
    results["peak_rss_mb_200_videos"], results["peak_rss_mb_2000_videos"] = (
        runs[200]["peak_rss_mb"],
        runs[2000]["peak_rss_mb"],
    )

    speed = {}
    for workers in (0, 2, 0, 2):  # interleaved, so that load from other processes hits both alike
        print(f"40 steps with {workers} loader workers ...", flush=True)
        speed.setdefault(workers, []).append(
            child(["train", model, sets[200], work / f"speed_{workers}", 40, workers, batch])["steps_per_second"]
        )
    results["steps_per_second_workers0"], results["steps_per_second_workers2"] = max(speed[0]), max(speed[2])
    results["steps_workers2_over_workers0"] = max(speed[2]) / max(speed[0])
    # Why: the share of an in-process step that building the input takes, and how busy the machine was.
    loader_seconds = min(child(["loader", model, sets[200], 40, 0, batch])["seconds"] for _ in range(2))
    results["input_share_of_step_workers0"] = loader_seconds * max(speed[0]) / 40
    results["cpu_count"], results["load_average_1min"] = os.cpu_count(), os.getloadavg()[0]

    all_videos = sorted((work / "data_2000" / "videos").glob("*.mp4"))
    scores = {}
    for count in (100, 1000):
        table = work / f"score_{count}.csv"
        write_table(table, all_videos[:count], "a red square moving right")
        out = work / f"score_{count}.jsonl"
        out.unlink(missing_ok=True)
        print(f"descore score over {count} videos ...", flush=True)
        scores[count] = child(["score", model, table, out])
        assert scores[count]["status"] == 0 and scores[count]["rows"] == count, scores[count]
    results["score_stream_peak_rss_ratio"] = scores[1000]["peak_rss_mb"] / scores[100]["peak_rss_mb"]
    results["score_peak_rss_mb_100"], results["score_peak_rss_mb_1000"] = (
        scores[100]["peak_rss_mb"],
        scores[1000]["peak_rss_mb"],
    )

    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    memory = {}
    for mode in ("ddp", "fsdp"):
        print(f"one full fine-tuning step, 2 CPU ranks, {mode} ...", flush=True)
        memory[mode] = child(["shard", model, sets[200], mode], launcher=launcher)["ranks"]
    per_rank = {mode: max(r["param_bytes"] + r["optimizer_bytes"] for r in ranks) for mode, ranks in memory.items()}
    results["sharded_over_ddp_param_opt_memory"] = per_rank["fsdp"] / per_rank["ddp"]
    results["param_opt_bytes_per_rank"] = per_rank
    results["losses_ddp_fsdp"] = [[r["loss"] for r in memory[mode]] for mode in ("ddp", "fsdp")]

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
