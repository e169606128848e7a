"""Does think-then-score learn what a discriminative reward model cannot? The DeScore ablation on the synthetic world.

    python recipes/bench_learning.py --output-dir outputs/bench_learning                      # this CPU: ~25 min
    python recipes/bench_learning.py --output-dir OUT --steps 300 --stage2-steps 2 --seeds 0   # a smoke run
    python recipes/bench_learning.py --output-dir OUT --steps 3000 --seeds 0 1 2 --world full  # a GPU box

For each seed: a tiny random Qwen2.5-VL DeScore model (`init_tiny`), a synthetic training set and a held-out set
(`synthetic.write_dataset`), then four trainings with `descore_plugin.training.trainer.Trainer`, full fine-tuning:

| run        | stage-1 training                                              | scored with                          |
|------------|---------------------------------------------------------------|--------------------------------------|
| no_cot     | Bradley-Terry, every CoT masked (the discriminative baseline) | no CoT                               |
| cot        | BT + next-token loss on the CoT, never masked                 | own generated CoT, no CoT, annotator's |
| cot_masked | BT + next-token loss, CoT masked with p 0.5 (one coin a pair) | own generated CoT, no CoT, annotator's |
| stage2     | cot, then stage-2 dual-objective RL                           | own generated CoT                    |

The tiny models get a one-line judge instruction (`--prompt-template`) and the CoT runs a next-token loss weight
of 4 (`--lm-loss-weight`): with the compact instruction and weight 1 the model's own CoT did not get the wrong-colour
pairs within 1,500 steps; with both changes it does by ~800 (docs/benchmarks.md has the measurements).

Every row reports held-out accuracy without and with ties (the eval set holds `--eval-tie-rate` tie pairs), per
defect slice (the pairs whose videos differ in that dimension only: "subject" is the wrong colour, i.e. prompt
misalignment), the parse rate of generated CoTs, the mean rule-based rollout reward (DeScore Sec. 3.3: 0.7
sub-dimensions + 0.1 format + 0.2 length) of `--reward-rollouts` sampled CoTs per held-out video, and the training
time. Writes OUT/bench_learning.json (every number, per seed and averaged) and OUT/learning_curves.png (each
run's metrics.jsonl: held-out accuracy, the subject slice, the losses, stage 2's rollout reward).

The worlds (`--world`): "small" (the default, the world of tests/test_learning.py): four colours, one shape,
direction and background, defects subject (wrong colour), dynamics, camera and style. "two_colours": red or blue,
a 20-pixel square, defects subject and style; here the discriminative baseline DOES learn the colour binding (in
~500 steps; measured with the compact instruction), so it shows where the CoT's advantage ends. "full": every colour, shape,
direction and background of `synthetic.WorldConfig`, defects subject, dynamics and style.
What the tiny model learns on this CPU, and how fast: docs/benchmarks.md.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from descore_plugin.testing.measurements import annotator_cot_accuracy, mean_rollout_reward
from descore_plugin.testing.synthetic import WorldConfig, write_dataset
from descore_plugin.testing.tiny import init_tiny
from descore_plugin.training.trainer import TrainConfig, Trainer
from descore_plugin.utils.args import help_field, parse_config
from descore_plugin.utils.errors import non_negative_int, positive_float, positive_int

WORLDS = {
    "small": dict(
        world=WorldConfig(shapes=("square",), directions=("right",), backgrounds=("dark",)),
        defects=("subject", "dynamics", "camera", "style"),
    ),
    "two_colours": dict(
        world=WorldConfig(
            colours=("red", "blue"), shapes=("square",), directions=("right",), backgrounds=("dark",), object_size=20
        ),
        defects=("subject", "style"),
    ),
    "full": dict(world=WorldConfig(), defects=("subject", "dynamics", "style")),
}
RUNS = ("no_cot", "cot", "cot_masked", "stage2")


@dataclass
class BenchLearningArguments:
    output_dir: str = help_field("datasets, models, JSON and PNG go here", "outputs/bench_learning")
    world: str = help_field("synthetic world (see above)", "small", choices=sorted(WORLDS))
    seeds: list[int] = help_field("one model init, data set and training per seed", [0])
    steps: int = help_field("stage-1 optimizer steps of every run", 1500, check=positive_int)
    stage2_steps: int = help_field("stage-2 optimizer steps", 100, check=non_negative_int)
    runs: list[str] = help_field("which runs (stage2 needs cot)", list(RUNS), choices=RUNS)
    train_pairs: int = help_field("synthetic training pairs per seed", 600, check=positive_int)
    eval_pairs: int = help_field("held-out pairs per seed", 200, check=positive_int)
    eval_tie_rate: float = help_field("fraction of held-out pairs that are ties", 0.1)
    eval_every: int = help_field("held-out evaluation every N steps (curves)", 100, check=positive_int)
    prompt_template: str = help_field(
        "judge instruction of the tiny model (text with {prompt}, or a path); 'compact' = the package's",
        'Judge the video against "{prompt}".\n',
    )
    lm_loss_weight: float = help_field("next-token loss weight of the CoT runs", 4.0)
    warmup_steps: int = help_field("stage-1 lr warm-up (then constant, as officially)", 120, check=non_negative_int)
    batch_size: int = help_field("pairs per step (calibration probe: 16)", 16, check=positive_int)
    learning_rate: float = help_field("stage 1 (calibration probe: 1e-3)", 1e-3, check=positive_float)
    stage2_learning_rate: float = help_field(
        "stage 2 (official 1e-6 is for 8B models; on the tiny model 3e-4 and more drift off)",
        1e-4,
        check=positive_float,
    )
    stage2_batch_size: int = help_field("pairs per stage-2 step", 4, check=positive_int)
    num_rollouts: int = help_field(
        "stage-2 rollouts per video (official 8; 4 was too noisy here)", 8, check=positive_int
    )
    max_new_tokens: int = help_field("CoT length limit (synthetic CoTs: ~112 tokens)", 160, check=positive_int)
    reward_rollouts: int = help_field("sampled CoTs per held-out video for the rollout reward", 4, check=positive_int)
    threads: int | None = help_field("torch.set_num_threads (default: torch's own)", check=positive_int)


def parse_args(argv=None) -> BenchLearningArguments:
    (args,) = parse_config(BenchLearningArguments, argv, prog="bench_learning.py", description=__doc__.split("\n\n")[0])
    return args


def make_world(root: Path, args, seed: int) -> dict:
    """The seed's tiny model and data sets (written once; a rerun reuses them)."""
    spec = WORLDS[args.world]
    paths = {"model": root / "init", "train": root / "train" / "pairs.jsonl", "eval": root / "eval" / "pairs.jsonl"}
    if not (paths["model"] / "descore_config.json").is_file():
        template = None if args.prompt_template == "compact" else args.prompt_template
        init_tiny(paths["model"], seed=seed, prompt_template=template)
    if not paths["train"].is_file():
        write_dataset(
            paths["train"].parent, args.train_pairs, seed=1000 + seed, defects=spec["defects"], world=spec["world"]
        )
    if not paths["eval"].is_file():
        write_dataset(
            paths["eval"].parent,
            args.eval_pairs,
            seed=2000 + seed,
            defects=spec["defects"],
            tie_rate=args.eval_tie_rate,
            world=spec["world"],
        )
    return paths


def stage1_config(args, paths: dict, out: Path, seed: int, run: str) -> TrainConfig:
    masked = {"no_cot": 1.0, "cot": 0.0, "cot_masked": 0.5}[run]
    return TrainConfig(
        model=str(paths["model"]),
        train_data=str(paths["train"]),
        eval_data=str(paths["eval"]),
        output_dir=str(out),
        stage=1,
        max_steps=args.steps,
        warmup_ratio=args.warmup_steps / args.steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.learning_rate,
        lora_rank=0,
        train_embeddings="all",
        cot_mask_prob=masked,
        lm_loss_weight=0.0 if run == "no_cot" else args.lm_loss_weight,
        eval_steps=args.eval_every,
        eval_think=run != "no_cot",
        eval_max_new_tokens=args.max_new_tokens,
        save_steps=0,
        seed=seed,
        log_with=None,
        max_grad_norm=1.0,
        undecided_rows="drop",  # the regime docs/benchmarks.md's numbers were measured with
    )


def stage2_config(args, paths: dict, start: Path, out: Path, seed: int) -> TrainConfig:
    return TrainConfig(
        model=str(start),
        train_data=str(paths["train"]),
        eval_data=str(paths["eval"]),
        output_dir=str(out),
        stage=2,
        max_steps=args.stage2_steps,
        batch_size=args.stage2_batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.stage2_learning_rate,
        lora_rank=0,
        train_embeddings="all",
        num_rollouts=args.num_rollouts,
        max_new_tokens=args.max_new_tokens,
        eval_steps=max(1, args.stage2_steps // 4),
        rollout_batch_size=args.stage2_batch_size,
        actor_batch_size=2 * args.stage2_batch_size,  # one update a batch
        grad_norm_groups="joint",
        eval_think=True,
        eval_max_new_tokens=args.max_new_tokens,
        save_steps=0,
        seed=seed,
        log_with=None,
    )


def unwrap(trainer: Trainer):
    return trainer.accelerator.unwrap_model(trainer.model)


def rollout_reward_of(trainer: Trainer, args, seed: int) -> float:
    return mean_rollout_reward(
        unwrap(trainer),
        trainer.eval_pairs,
        trainer.videos,
        rollouts=args.reward_rollouts,
        max_new_tokens=args.max_new_tokens,
        seed=seed,
    )


def evaluate(trainer: Trainer, think: bool) -> dict:
    trainer.config.eval_think = think
    return {key.replace("eval/", ""): value for key, value in trainer.evaluate().items()}


def run_seed(args, seed: int) -> dict:
    root = Path(args.output_dir) / f"seed-{seed}"
    paths = make_world(root, args, seed)
    results = {}
    for run in [r for r in RUNS if r in args.runs and r != "stage2"]:
        out = root / run
        trainer = Trainer(stage1_config(args, paths, out, seed, run), overwrite=True)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        rows = {"no_cot": evaluate(trainer, think=False)}
        if run != "no_cot":
            rows["own_cot"] = evaluate(trainer, think=True)
            rows["own_cot"]["rollout_reward"] = rollout_reward_of(trainer, args, seed)
            rows["annotator_cot"] = annotator_cot_accuracy(unwrap(trainer), trainer.eval_pairs, trainer.videos)
        results[run] = {"seconds": seconds, "metrics": str(out / "metrics.jsonl"), "scored": rows}
        print(f"seed {seed} {run}: {seconds:.0f} s, " + json.dumps(rows), flush=True)
    if "stage2" in args.runs and "cot" in results:
        out = root / "stage2"
        trainer = Trainer(stage2_config(args, paths, root / "cot", out, seed), overwrite=True)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        rows = {"own_cot": evaluate(trainer, think=True)}
        rows["own_cot"]["rollout_reward"] = rollout_reward_of(trainer, args, seed)
        results["stage2"] = {"seconds": seconds, "metrics": str(out / "metrics.jsonl"), "scored": rows}
        print(f"seed {seed} stage2: {seconds:.0f} s, " + json.dumps(rows), flush=True)
    return results


COLUMNS = [
    ("accuracy_without_ties", "acc"),
    ("accuracy_with_ties", "acc+ties"),
    ("accuracy_subject", "subject"),
    ("accuracy_style", "style"),
    ("accuracy_dynamics", "dynamics"),
    ("accuracy_camera", "camera"),
    ("cot_parse_rate", "parse"),
    ("rollout_reward", "rollout R"),
]


def summarise(per_seed: dict) -> list[dict]:
    """One row per (run, scoring mode): mean and min/max over seeds of every column, and the training time."""
    rows = []
    for run in RUNS:
        for mode in ("no_cot", "own_cot", "annotator_cot"):
            found = [
                seed_results[run]
                for seed_results in per_seed.values()
                if run in seed_results and mode in seed_results[run]["scored"]
            ]
            if not found:
                continue
            row = {
                "run": run,
                "scored_with": mode,
                "seeds": len(found),
                "seconds": float(np.mean([r["seconds"] for r in found])),
            }
            for key, _ in COLUMNS:
                values = [r["scored"][mode][key] for r in found if key in r["scored"][mode]]
                if values:
                    row[key] = {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}
            rows.append(row)
    return rows


def print_table(rows: list[dict]):
    present = [(key, title) for key, title in COLUMNS if any(key in row for row in rows)]
    width = 17 if any(row["seeds"] > 1 for row in rows) else 9
    header = (
        f"{'run':<11} {'scored with':<13} " + " ".join(f"{title:>{width}}" for _, title in present) + f" {'train s':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for key, _ in present:
            if key not in row:
                cells.append(f"{'-':>{width}}")
            elif row["seeds"] > 1:  # mean (min-max over seeds)
                cells.append(f"{row[key]['mean']:.3f} ({row[key]['min']:.2f}-{row[key]['max']:.2f})".rjust(width))
            else:
                cells.append(f"{row[key]['mean']:>{width}.3f}")
        print(f"{row['run']:<11} {row['scored_with']:<13} " + " ".join(cells) + f" {row['seconds']:>8.0f}")


SMOOTHED = ("train/bt_loss", "train/lm_loss", "reward/rollout")


def plot(per_seed: dict, png: Path):
    """Learning curves from every run's metrics.jsonl, one colour per run, one line per seed (the per-step training
    values as a running mean over 1/25 of the run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("eval/accuracy_without_ties", "held-out accuracy (no ties)"),
        ("eval/accuracy_subject", "held-out: wrong-colour pairs"),
        ("train/bt_loss", "Bradley-Terry loss"),
        ("train/lm_loss", "CoT next-token loss"),
        ("reward/rollout", "stage-2 rollout reward (training batches)"),
        ("eval/cot_parse_rate", "generated CoTs that parse"),
    ]
    colours = dict(zip(RUNS, ("tab:grey", "tab:blue", "tab:green", "tab:red")))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, title) in zip(axes.flat, panels):
        for seed, seed_results in per_seed.items():
            for run, result in seed_results.items():
                records = [json.loads(line) for line in Path(result["metrics"]).read_text().splitlines()]
                points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
                if run == "stage2":  # stage 2 continues after stage 1: plot it from cot's last step
                    points = [(stage1_last_step(per_seed) + step, value) for step, value in points]
                if key in SMOOTHED and len(points) > 20:  # per-step training values: running mean
                    window = max(2, len(points) // 25)
                    values = np.convolve([v for _, v in points], np.ones(window) / window, mode="valid")
                    points = list(zip([step for step, _ in points][window - 1 :], values))
                if points:
                    ax.plot(*zip(*points), color=colours[run], alpha=0.8, label=run if seed == min(per_seed) else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def stage1_last_step(per_seed: dict) -> int:
    """The stage-1 step count (the last logged step of cot), where the stage-2 curve starts."""
    for seed_results in per_seed.values():
        if "cot" in seed_results:
            records = [json.loads(line) for line in Path(seed_results["cot"]["metrics"]).read_text().splitlines()]
            return max(r["step"] for r in records)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {seed: run_seed(args, seed) for seed in args.seeds}
    rows = summarise(per_seed)
    print_table(rows)
    (out / "bench_learning.json").write_text(
        json.dumps({"args": asdict(args), "summary": rows, "per_seed": per_seed}, indent=2)
    )
    plot(per_seed, out / "learning_curves.png")
    print(f"wrote {out / 'bench_learning.json'} and {out / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
