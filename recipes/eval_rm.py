"""Preference accuracy of a DeScore model on a pair file.

    python recipes/eval_rm.py PAIRS --model DIR_OR_ID --output-dir DIR [--no-think] [--batch-size 8] [--max-new-tokens N]
                                 [--overwrite]

PAIRS is any pair file `descore_plugin.data.pairs.load_pairs` reads: the descore-plugin format (CSV or JSONL), the official
DeScore CSV, VideoAlign / VideoGen-RewardBench (`path_A`, `path_B`, `Overall`) or GenAI-Bench (`left_video`,
`right_video`, `vote_type`; tievote and bothbad_vote count as ties); `--label-column TA` picks another VideoAlign
label column. Video paths resolve relative to the pair file. Every distinct video is decoded before scoring starts;
a bad one stops the run naming its row and field (`--skip-bad-rows` leaves such pairs out and lists them in
DIR/skipped_rows.jsonl).

Each unique video (file + prompt) is scored once, with a progress bar. An existing DIR is refused unless
--overwrite (as training refuses an existing run). Writes:
    DIR/accuracy.json      accuracy_with_ties, accuracy_without_ties, accuracy_ties_as_errors (the official cold
                           start's figure), num_pairs, num_pairs_without_ties, ..., accuracy_without_ties_by_slice
                           when the pairs carry slice tags; which model and pairs, max_new_tokens (the CoT limit
                           used), cot_parse_rate, and reward_range (mean, std, min, max of the videos' rewards)
    DIR/pairs_scored.csv   per pair: video paths, label, reward_a, reward_b, margin, cot_a, cot_b, why a CoT did not
                           parse, and the data's per-dimension truth (scores_a, scores_b) when the pairs carry it

`descore report DIR --output-dir PAGE` shows it. Evaluated on held-out data of the model's own domain and written to
MODEL/evaluation (`--output-dir MODEL/evaluation`), its reward_range is what `descore report SCORES --model MODEL`
compares other scores of that model with, to flag a judge used out of its domain.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from descore_plugin import DeScoreReward
from descore_plugin.cli import default_device_and_dtype
from descore_plugin.data.check import SKIPPED_ROWS_FILE, check_training_videos, write_skipped_rows
from descore_plugin.data.pairs import load_pairs
from descore_plugin.data.video import load_video
from descore_plugin.evaluation.preference import evaluate_pairs, write_evaluation
from descore_plugin.utils.args import DeviceArguments, help_field, parse_config
from descore_plugin.utils.errors import blame, positive_float, positive_int, prepare_output_dir, run_main


@dataclass
class EvalArguments:
    """Every field is a flag (`--max-new-tokens`), PAIRS the positional argument."""

    pairs: str = help_field("pair file (.csv or .jsonl) in any format descore_plugin.data.pairs reads", positional=True)
    model: str = help_field("DeScore checkpoint directory or hub id", required=True)
    output_dir: str = help_field(
        "where accuracy.json and pairs_scored.csv go (refused if it exists, unless --overwrite)", required=True
    )
    overwrite: bool = help_field("replace an existing evaluation in --output-dir (off: refuse)", False)
    no_think: bool = help_field("score without a CoT (the masked-CoT fast path)", False)
    batch_size: int = help_field("videos per forward / generate call", 8, check=positive_int)
    max_new_tokens: int | None = help_field(
        "CoT length limit in tokens (default: the model's, sized to the CoTs it "
        "was trained on; recorded in accuracy.json)",
        check=positive_int,
    )
    num_frames: int | None = help_field(
        "override the model's frames per video (default: the model's)", check=positive_int
    )
    fps: float | None = help_field(
        "override the model's frame SAMPLING rate (frames kept per second of video, not the "
        "file's rate; default: the model's)",
        check=positive_float,
    )
    prompt_template: str | None = help_field(
        "judge instruction file (text with {prompt}, or the official one with "
        "[insert prompt here]); default: the checkpoint's own"
    )
    label_column: str | None = help_field(
        "VideoAlign / VideoGen-RewardBench files: the label column (default: Overall; e.g. TA)"
    )
    skip_bad_rows: bool = help_field(
        "leave out the pairs whose videos do not decode (listed in "
        "OUTPUT_DIR/skipped_rows.jsonl) instead of stopping before scoring",
        False,
    )


def parse_args(argv=None) -> EvalArguments:
    """The command line as one object: EvalArguments' fields and DeviceArguments' (device, dtype)."""
    arguments, device = parse_config([EvalArguments, DeviceArguments], argv, prog="eval_rm.py", description=__doc__)
    arguments.device, arguments.dtype = device.device, device.dtype
    return arguments


def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = default_device_and_dtype(args.device, args.dtype)
    overrides = {}
    if args.num_frames is not None:
        overrides.update(num_frames=args.num_frames, fps=None)
    if args.fps is not None:
        overrides.update(fps=args.fps, num_frames=None)
    if args.prompt_template is not None:
        overrides.update(prompt_template=args.prompt_template)
    prepare_output_dir(
        args.output_dir,
        resume=None,
        overwrite=args.overwrite,
        what=f"--output-dir {args.output_dir}",
        ours=lambda path: (path / "accuracy.json").is_file() or (path / SKIPPED_ROWS_FILE).is_file(),
    )
    pairs = load_pairs(args.pairs, label_column=args.label_column)
    with blame(f"--model {args.model}"):
        model = DeScoreReward.from_pretrained(args.model, device=device, dtype=dtype, **overrides)

    # Every distinct video decoded once up front (and let go: memory stays bounded), so that a bad one stops the
    # run before any scoring, naming its row and field.
    def check(path):
        load_video(path, fps=model.config.fps, num_frames=model.config.num_frames)

    report = Path(args.output_dir) / SKIPPED_ROWS_FILE
    pairs, _, skipped = check_training_videos(
        pairs, None, check, train_data=args.pairs, skip=args.skip_bad_rows, report_path=report
    )
    if args.skip_bad_rows:
        write_skipped_rows(report, skipped)
    result = evaluate_pairs(
        model, pairs, think=not args.no_think, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    result.update(model=args.model, pairs=args.pairs)
    accuracy_path, csv_path = write_evaluation(result, args.output_dir)
    print(
        f"{result['num_pairs']} pairs ({result['num_pairs_without_ties']} without ties, "
        f"{result['num_pairs_invalid']} invalid left out), {result['num_videos_scored']} videos scored, "
        f"think={result['think']}"
    )
    without = result["accuracy_without_ties"]
    print(f"accuracy with ties:    {result['accuracy_with_ties']:.4f}")
    print("accuracy without ties: " + ("n/a (every pair is a tie)" if without is None else f"{without:.4f}"))
    for name, value in result.get("accuracy_without_ties_by_slice", {}).items():
        print(f"  slice {name:<14} {value:.4f}")
    if result.get("cot_parse_rate") is not None:
        print(
            f"CoTs parsed: {result['num_cots'] - result['num_cots_unparsed']} of {result['num_cots']} "
            f"(max_new_tokens {result['max_new_tokens']})"
        )
    print(f"wrote {accuracy_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "eval_rm.py"))
