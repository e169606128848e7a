"""Teacher vs distilled no-CoT student on the synthetic world, in one run.

    python recipes/bench_distill.py --json outputs/bench_distill.json [--teacher-steps 1500 --distill-steps 600]

1. writes a synthetic train / held-out pair set;
2. trains a tiny DeScore TEACHER with the distribution head: stage 1 with the CoT next-token loss and CoT masking, so
   it writes its own CoTs and scores with them;
3. distils it into a STUDENT (same tiny architecture by default, or `--student-hidden 32` for a smaller one) that
   scores with think=False (recipes/distill_student.py's stage 3);
4. evaluates both on the held-out pairs (accuracy with and without ties; the teacher with its own greedy CoT, the
   student without CoT) and times the scoring of the same videos: `student_speedup` = teacher time / student time.
Goal: the student within 2 points of the teacher at 5x or more speed.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from descore_plugin import DeScoreReward
from descore_plugin.data.pairs import load_pairs
from descore_plugin.evaluation.metrics import accuracy_with_ties, accuracy_without_ties
from descore_plugin.testing.synthetic import write_dataset
from descore_plugin.testing.tiny import init_tiny
from descore_plugin.training.trainer import TrainConfig, Trainer
from descore_plugin.utils.args import help_field, parse_config
from descore_plugin.utils.errors import positive_float, positive_int


def evaluate(model, pairs, think: bool, batch_size: int) -> dict:
    keys = sorted({(v, p.prompt) for p in pairs for v in (p.video_a, p.video_b)})
    videos = [path for path, _ in keys]
    prompts = [prompt for _, prompt in keys]
    model.score(videos[:batch_size], prompts[:batch_size], think=think, batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    out = model.score(videos, prompts, think=think, batch_size=batch_size)
    seconds = time.perf_counter() - start
    reward = dict(zip(keys, out.rewards.tolist()))
    margins = [reward[(p.video_a, p.prompt)] - reward[(p.video_b, p.prompt)] for p in pairs]
    labels = [p.label for p in pairs]
    return {
        "accuracy_with_ties": accuracy_with_ties(margins, labels),
        "accuracy_without_ties": accuracy_without_ties(margins, labels),
        "seconds": seconds,
    }


@dataclass
class BenchDistillArguments:
    json: str = help_field("results file", "outputs/bench_distill.json")
    work_dir: str = help_field("data sets and models go here", "outputs/bench_distill")
    train_pairs: int = help_field("synthetic training pairs", 800, check=positive_int)
    eval_pairs: int = help_field("held-out pairs", 100, check=positive_int)
    defects: list[str] = help_field("dimensions the synthetic pairs differ in", ["subject", "dynamics", "style"])
    teacher_steps: int = help_field("teacher (stage-1) training steps", 1500, check=positive_int)
    distill_steps: int = help_field("student distillation steps", 600, check=positive_int)
    batch_size: int = help_field("pairs per training step", 16, check=positive_int)
    learning_rate: float = help_field("teacher and student", 1e-3, check=positive_float)
    num_cot_samples: int = help_field(
        "teacher CoTs sampled per video for the distillation target", 4, check=positive_int
    )
    student_hidden: int = help_field("64: same size as the teacher; 32: smaller", 64, check=positive_int)
    score_batch_size: int = help_field("videos per scoring call", 16, check=positive_int)
    seed: int = help_field("data, initialisation and training seed", 0)


def main(argv=None):
    (args,) = parse_config(BenchDistillArguments, argv, prog="bench_distill.py", description=__doc__)

    work = Path(args.work_dir)
    train = write_dataset(work / "train", args.train_pairs, seed=args.seed + 1, defects=tuple(args.defects))
    held_out = write_dataset(work / "eval", args.eval_pairs, seed=args.seed + 2, defects=tuple(args.defects))
    init_tiny(work / "teacher_init", head="distribution", seed=args.seed)
    common = dict(
        batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.learning_rate,
        lora_rank=0,
        train_embeddings="all",
        save_steps=0,
        log_with=None,
        seed=args.seed,
    )
    Trainer(
        TrainConfig(
            model=str(work / "teacher_init"),
            train_data=str(train),
            output_dir=str(work / "teacher"),
            max_steps=args.teacher_steps,
            lm_loss_weight=1.0,
            cot_mask_prob=0.5,
            **common,
        ),
        overwrite=True,
    ).train()
    small = {} if args.student_hidden == 64 else dict(hidden=args.student_hidden, vision_hidden=args.student_hidden)
    init_tiny(work / "student_init", head="distribution", seed=args.seed + 1, **small)
    Trainer(
        TrainConfig(
            stage=3,
            model=str(work / "student_init"),
            teacher=str(work / "teacher"),
            train_data=str(train),
            output_dir=str(work / "student"),
            max_steps=args.distill_steps,
            num_cot_samples=args.num_cot_samples,
            **common,
        ),
        overwrite=True,
    ).train()

    pairs = load_pairs(held_out)
    teacher = evaluate(DeScoreReward.from_pretrained(work / "teacher"), pairs, True, args.score_batch_size)
    student = evaluate(DeScoreReward.from_pretrained(work / "student"), pairs, False, args.score_batch_size)
    result = {
        "teacher_accuracy_with_ties": teacher["accuracy_with_ties"],
        "teacher_accuracy_without_ties": teacher["accuracy_without_ties"],
        "student_accuracy_with_ties": student["accuracy_with_ties"],
        "student_accuracy_without_ties": student["accuracy_without_ties"],
        "student_speedup": teacher["seconds"] / student["seconds"],
        "teacher_scoring_seconds": teacher["seconds"],
        "student_scoring_seconds": student["seconds"],
        "settings": asdict(args),
    }
    print(f"{'':10s} {'acc w/o ties':>13s} {'acc w/ ties':>12s} {'scoring s':>10s}")
    for name, row in (("teacher", teacher), ("student", student)):
        print(
            f"{name:10s} {row['accuracy_without_ties']:13.3f} {row['accuracy_with_ties']:12.3f} {row['seconds']:10.2f}"
        )
    print(f"student_speedup = {result['student_speedup']:.1f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
