"""Preference accuracy of a DeScore model on a pair file.

    python recipes/eval_rm.py PAIRS --model DIR_OR_ID --output-dir DIR [--no-think] [--batch-size 8] [--max-new-tokens N]

PAIRS is any pair file `descore_plugin.data.load_pairs` reads: the descore-plugin format (CSV or JSONL), the official
DeScore CSV, VideoAlign / VideoGen-RewardBench (`path_A`, `path_B`, `Overall`) or GenAI-Bench (`left_video`,
`right_video`, `vote_type`; tievote and bothbad_vote count as ties). Video paths resolve relative to the pair file.

Each unique video (file + prompt) is scored once. Writes:
    DIR/accuracy.json      accuracy_with_ties, accuracy_without_ties, num_pairs, num_pairs_without_ties, ... and,
                           when the pairs carry slice tags, accuracy_without_ties_by_slice
    DIR/pairs_scored.csv   per pair: video paths, label, reward_a, reward_b, margin, cot_a, cot_b
"""

import argparse
import sys

import torch

from descore_plugin import DeScoreReward
from descore_plugin.data import load_pairs
from descore_plugin.evaluation import evaluate_pairs, write_evaluation


class Parser(argparse.ArgumentParser):
    """A bad flag or value is one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None):
    parser = Parser(prog="eval_rm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", help="pair file (.csv or .jsonl) in any format descore_plugin.data reads")
    parser.add_argument("--model", required=True, help="DeScore checkpoint directory or hub id")
    parser.add_argument("--output-dir", required=True, help="where accuracy.json and pairs_scored.csv go")
    parser.add_argument("--no-think", action="store_true", help="score without a CoT (the masked-CoT fast path)")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per forward / generate call (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="CoT length limit (default: the model's)")
    parser.add_argument("--num-frames", type=int, default=None, help="override the model's frames per video")
    parser.add_argument("--fps", type=float, default=None,
                        help="override the model's frame SAMPLING rate (frames kept per second of video, not the file's rate)")
    parser.add_argument("--prompt-template", default=None,
                        help="judge instruction file (text with {prompt}, or the official one with [insert prompt here]); "
                             "default: the checkpoint's own")
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else None)
    overrides = {}
    if args.num_frames is not None:
        overrides.update(num_frames=args.num_frames, fps=None)
    if args.fps is not None:
        overrides.update(fps=args.fps, num_frames=None)
    if args.prompt_template is not None:
        overrides.update(prompt_template=args.prompt_template)
    try:
        pairs = load_pairs(args.pairs)
        model = DeScoreReward.from_pretrained(args.model, device=device, dtype=dtype, **overrides)
        result = evaluate_pairs(model, pairs, think=not args.no_think, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"eval_rm: error: {error}", file=sys.stderr)
        return 2
    accuracy_path, csv_path = write_evaluation(result, args.output_dir)
    print(f"{result['num_pairs']} pairs ({result['num_pairs_without_ties']} without ties, "
          f"{result['num_pairs_invalid']} invalid left out), {result['num_videos_scored']} videos scored, "
          f"think={result['think']}")
    without = result["accuracy_without_ties"]
    print(f"accuracy with ties:    {result['accuracy_with_ties']:.4f}")
    print("accuracy without ties: " + ("n/a (every pair is a tie)" if without is None else f"{without:.4f}"))
    for name, value in result.get("accuracy_without_ties_by_slice", {}).items():
        print(f"  slice {name:<14} {value:.4f}")
    print(f"wrote {accuracy_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
