"""The `descore` command.

    descore score VIDEO... --prompt TEXT [--prompt TEXT ...] [--model DIR_OR_ID] [--no-think] [--json]
    descore score INPUT... [--prompt TEXT] --output OUT.jsonl   (folders, globs, CSV/JSONL tables; see scoring.py)
    descore annotate PAIRS --teacher MODEL_OR_URL --output OUT.jsonl [--keep agree|all] [--resume | --overwrite]
    descore init-tiny OUT_DIR [--backbone qwen2_5_vl|qwen3_vl] [--head scalar|distribution] [--prompt-template T]
    descore init OUT_DIR --backbone QWEN_VL_ID_OR_DIR [--head scalar|distribution] [--prompt-template T]
    descore init-tiny-wan OUT_DIR
    descore make-synthetic OUT_DIR [--num-pairs N] [--seed S]
    descore report PATH --output-dir OUT [--overwrite] [--model DIR] [--reward NAME] [--check NAME ...]
    descore serve [--model DIR_OR_ID] [--device D] [--host 127.0.0.1] [--port 8000] [--api-key KEY] ...

Each subcommand is one `_add_<name>(commands)` function (serve's: `add_serve` in cli/serve.py) that declares its
flags and sets `run=` to the function that executes it (`args -> exit status`); `SUBCOMMANDS` lists them in the order `descore --help` shows. A user error
(`descore_plugin.utils.errors.UserError`, a bad flag, a missing file) is one line on stderr and exit status 2.
"""

import os
import sys

from descore_plugin.cli.serve import add_serve
from descore_plugin.utils.errors import (
    ArgumentParser,
    UserError,
    add_device_arguments,
    blame,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)


# ---------------------------------------------------------------------------------------------------------------- score
def _add_score(commands):
    score = commands.add_parser(
        "score",
        help="score videos against a prompt: CoT, dimension scores, reward",
        description="Exit status: 0 every video scored, 1 some row failed, 2 usage error.",
    )
    score.add_argument(
        "videos",
        nargs="+",
        metavar="INPUT",
        help="video files (mp4 or any container decord/PyAV reads), folders, glob patterns, or one "
        "CSV/JSONL table with `video` and `prompt` columns, or one pair file in any format "
        "training reads (descore-plugin, official DeScore, VideoAlign, GenAI-Bench: each video of "
        "each pair scored once)",
    )
    score.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="the text prompt the videos were generated from: once for all videos, or once per video "
        "(repeat it, in the order of the videos)",
    )
    score.add_argument(
        "--output",
        default=None,
        help="append one JSON row per video to this .jsonl as it goes; an existing file is refused "
        "unless --resume (videos already in it are skipped) or --overwrite",
    )
    score.add_argument(
        "--resume", action="store_true", help="continue an existing --output: videos already in it are skipped"
    )
    score.add_argument(
        "--overwrite", action="store_true", help="delete an existing --output and score everything again"
    )
    score.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=2,
        help="processes that decode videos ahead of the model (0: in this process)",
    )
    score.add_argument(
        "--model",
        default=os.environ.get("DESCORE_MODEL"),
        help="DeScore checkpoint directory or hub id (default: $DESCORE_MODEL)",
    )
    score.add_argument("--no-think", action="store_true", help="skip the CoT: the masked-CoT fast path")
    score.add_argument("--json", action="store_true", help="print one JSON object per video")
    score.add_argument(
        "--max-new-tokens", type=positive_int, default=None, help="CoT length limit (default: the model's)"
    )
    score.add_argument("--batch-size", type=positive_int, default=4, help="videos per forward / generate call")
    score.add_argument(
        "--prompt-template",
        default=None,
        help="judge instruction file (text with {prompt}, or the official one with [insert prompt here]); "
        "default: the checkpoint's own",
    )
    add_device_arguments(score)
    score.set_defaults(run=_score)


def _score(args) -> int:
    from descore_plugin.cli.score import score_command

    return score_command(args)


def default_device_and_dtype(device: str | None, dtype: str | None) -> tuple[str, str | None]:
    """--device / --dtype left out: cuda with bfloat16 when torch sees a GPU, else cpu with float32."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else None)
    return device, dtype


def _replace_own_output(out_dir, ours) -> None:
    """The rule of the commands that write a model or a data set from scratch (init, init-tiny, init-tiny-wan,
    make-synthetic): what the same command wrote before is replaced (it can be written again), a folder it did not
    write is refused, never deleted (`utils.errors.prepare_output_dir`)."""
    from pathlib import Path

    from descore_plugin.utils.errors import prepare_output_dir

    path = Path(out_dir)
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not ours(path)):
        raise UserError(
            f"OUT_DIR {out_dir}: already exists and was not written by this command; refusing to replace "
            "it: choose another OUT_DIR"
        )
    prepare_output_dir(path, resume=None, overwrite=True, what=f"OUT_DIR {out_dir}")


# ------------------------------------------------------------------------------------------------------------- annotate
def _add_annotate(commands):
    annotate = commands.add_parser(
        "annotate",
        help="collect CoTs for preference pairs with a teacher VLM (what stage 1 trains on)",
        description="Asks a teacher for a CoT on each video of each pair in the judge's answer format and writes the "
        "kept pairs (CoTs + the teacher's dimension scores, the human label) to OUT.jsonl, a pair file "
        "recipes/train_rm.py reads; the others go to OUT.rejected.jsonl with the reason. "
        "Exit status: 0 done (a summary of what was kept and why on stderr), 1 some teacher call failed "
        "(rerun with --resume to retry them), 2 usage error.",
    )
    annotate.add_argument(
        "pairs",
        metavar="PAIRS",
        help="pair file in any format training reads (descore-plugin CSV/JSONL, VideoAlign CSV, "
        "GenAI-Bench, official DeScore CSV)",
    )
    annotate.add_argument(
        "--teacher",
        required=True,
        metavar="MODEL_OR_URL",
        help="a DeScore checkpoint or plain Qwen2.5-VL / Qwen3-VL (hub id or folder), run here; or "
        "the base URL of an OpenAI-compatible chat-completions server (vLLM, SGLang, a hosted "
        "model), e.g. http://127.0.0.1:8000/v1",
    )
    annotate.add_argument("--output", required=True, metavar="OUT.jsonl", help="where the kept pairs go (JSONL)")
    annotate.add_argument(
        "--keep",
        choices=["agree", "all"],
        default="agree",
        help="agree: only pairs whose teacher verdict (higher overall score) matches the human "
        "label; all: every pair whose two CoTs parse (default: %(default)s)",
    )
    annotate.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT.jsonl: pairs already in it or in OUT.rejected.jsonl are skipped, teacher errors retried",
    )
    annotate.add_argument("--overwrite", action="store_true", help="delete OUT.jsonl and OUT.rejected.jsonl first")
    annotate.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="CoT length limit (default: a local teacher's own, see `descore score`; 4096 for a URL)",
    )
    annotate.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="videos per generate call (local teacher) or requests in flight (URL) (default: %(default)s)",
    )
    annotate.add_argument(
        "--prompt-template",
        default=None,
        help="judge instruction (text with {prompt} or a file); default: a local teacher's own, "
        "the package's judge prompt for a URL",
    )
    annotate.add_argument(
        "--label-column",
        default=None,
        help="VideoAlign / VideoGen-RewardBench files: the label column (default Overall)",
    )
    annotate.add_argument(
        "--teacher-model",
        default=None,
        help="URL teacher: the served model's name (default: the first of GET /v1/models)",
    )
    annotate.add_argument(
        "--api-key", default=os.environ.get("OPENAI_API_KEY"), help="URL teacher: Bearer key (default: $OPENAI_API_KEY)"
    )
    annotate.add_argument(
        "--video-as",
        choices=["video", "frames"],
        default="video",
        help="URL teacher: send each video as a video_url data URL (vLLM / SGLang video models) or "
        "as --num-frames sampled frames in image_url parts (image-only models) "
        "(default: %(default)s)",
    )
    annotate.add_argument(
        "--num-frames",
        type=positive_int,
        default=8,
        help="URL teacher with --video-as frames: frames per video (default: %(default)s)",
    )
    annotate.add_argument(
        "--timeout",
        type=positive_float,
        default=300.0,
        help="URL teacher: seconds to wait for one answer (default: %(default)s)",
    )
    add_device_arguments(annotate)
    annotate.set_defaults(run=_annotate)


def _annotate(args) -> int:
    from descore_plugin.data.annotate import annotate_pairs, make_teacher, rejected_path
    from descore_plugin.data.pairs import load_pairs
    from descore_plugin.utils.errors import prepare_output_dir, set_resume_hint

    output = os.path.abspath(args.output)
    if not output.endswith(".jsonl"):
        raise UserError(f"--output {args.output}: the kept pairs are written as JSON lines; name a .jsonl file")
    pairs = load_pairs(args.pairs, label_column=args.label_column)
    rejected = rejected_path(output)
    if not os.path.exists(output) and os.path.exists(rejected):
        output_to_check = rejected
    else:
        output_to_check = output
    resuming = prepare_output_dir(
        output_to_check, resume=args.resume, overwrite=args.overwrite, what=f"--output {args.output}"
    )
    if args.overwrite and os.path.exists(rejected):
        os.remove(rejected)
    local = not args.teacher.startswith(("http://", "https://"))
    device, dtype = default_device_and_dtype(args.device, args.dtype) if local else (None, None)
    with blame(f"--teacher {args.teacher}"):
        teacher = make_teacher(
            args.teacher,
            device=device,
            dtype=dtype,
            prompt_template=args.prompt_template,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            model=args.teacher_model,
            api_key=args.api_key,
            video_as=args.video_as,
            num_frames=args.num_frames,
            concurrency=args.batch_size,
            timeout=args.timeout,
        )
    print(
        f"descore annotate: {len(pairs)} pairs of {args.pairs}, teacher {teacher.name}"
        + (" (resuming)" if resuming else ""),
        file=sys.stderr,
    )
    set_resume_hint(f"the pairs annotated so far are in {output}; run the same command with --resume to continue")
    summary = annotate_pairs(pairs, teacher, output, keep=args.keep, progress=True)
    for line in summary.lines():
        print(f"descore annotate: {line}", file=sys.stderr)
    print(f"descore annotate: kept pairs in {output}, the others (with the reason) in {rejected}", file=sys.stderr)
    if summary.rejected["error"]:
        print(
            f"descore annotate: {summary.rejected['error']} pairs failed at the teacher; rerun with --resume to retry "
            "them",
            file=sys.stderr,
        )
        return 1
    return 0


# ----------------------------------------------------------------------------------------------------------------- init
def _add_init(commands):
    init = commands.add_parser(
        "init",
        help="make a new DeScore model on a plain Qwen2.5-VL / Qwen3-VL checkpoint",
        description="Adds <Reward>, resizes the embeddings, initialises the head as the official "
        "cold start does; OUT_DIR refers to the backbone (no copy of its weights).",
    )
    init.add_argument("out_dir")
    init.add_argument(
        "--backbone",
        required=True,
        help="hub id (e.g. Qwen/Qwen3-VL-8B-Instruct) or folder written by transformers' save_pretrained",
    )
    init.add_argument("--head", choices=["scalar", "distribution"], default="scalar")
    init.add_argument("--seed", type=int, default=0, help="seeds the head's initialisation")
    init.add_argument(
        "--prompt-template",
        default=None,
        help="judge instruction, text with {prompt} or a file (default: the package's judge prompt)",
    )
    init.set_defaults(run=_init)


def _init(args) -> int:
    import torch

    from descore_plugin.modeling.model import DeScoreReward

    _replace_own_output(args.out_dir, _is_descore_model)
    torch.manual_seed(args.seed)
    with blame(f"--backbone {args.backbone}"):
        model = DeScoreReward.from_backbone(args.backbone, head=args.head, prompt_template=args.prompt_template)
    model.save_pretrained(args.out_dir, save_backbone=False)
    print(f"wrote a new DeScore model ({args.head} head) on {model.config.backbone} to {args.out_dir}")
    return 0


# ------------------------------------------------------------------------------------------------------------ init-tiny
def _add_init_tiny(commands):
    tiny = commands.add_parser("init-tiny", help="write a tiny random DeScore model (tests, demo)")
    tiny.add_argument("out_dir")
    tiny.add_argument("--backbone", choices=["qwen2_5_vl", "qwen3_vl"], default="qwen2_5_vl")
    tiny.add_argument("--head", choices=["scalar", "distribution"], default="scalar")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--prompt-template",
        default=None,
        help="judge instruction, text with {prompt} or a file (default: the package's compact one)",
    )
    tiny.add_argument(
        "--plain",
        action="store_true",
        help="write a plain Qwen-VL checkpoint instead (no <Reward>, no head), as `descore init` takes it",
    )
    tiny.set_defaults(run=_init_tiny)


def _is_descore_model(path) -> bool:
    return (path / "descore_config.json").is_file()


def _init_tiny(args) -> int:
    _replace_own_output(args.out_dir, lambda path: _is_descore_model(path) or (path / "config.json").is_file())
    if args.plain:
        from descore_plugin.testing.tiny import init_tiny_backbone

        init_tiny_backbone(args.out_dir, backbone=args.backbone, seed=args.seed)
        print(f"wrote a tiny plain {args.backbone} checkpoint (no <Reward>, no head) to {args.out_dir}")
        return 0
    from descore_plugin.testing.tiny import init_tiny

    init_tiny(
        args.out_dir, backbone=args.backbone, head=args.head, seed=args.seed, prompt_template=args.prompt_template
    )
    print(f"wrote a tiny {args.backbone} DeScore model ({args.head} head) to {args.out_dir}")
    return 0


# -------------------------------------------------------------------------------------------------------- init-tiny-wan
def _add_init_tiny_wan(commands):
    wan = commands.add_parser("init-tiny-wan", help="write a tiny random Wan-2.1 pipeline (tests, demo)")
    wan.add_argument("out_dir")
    wan.add_argument("--seed", type=int, default=0)
    wan.set_defaults(run=_init_tiny_wan)


def _init_tiny_wan(args) -> int:
    from descore_plugin.testing.tiny_wan import write_tiny_wan

    _replace_own_output(args.out_dir, lambda path: (path / "model_index.json").is_file())

    write_tiny_wan(args.out_dir, seed=args.seed)
    print(f"wrote a tiny Wan-2.1 pipeline to {args.out_dir}")
    return 0


# ------------------------------------------------------------------------------------------------------- make-synthetic
def _add_make_synthetic(commands):
    synth = commands.add_parser("make-synthetic", help="write a synthetic preference dataset (videos + pairs.jsonl)")
    synth.add_argument("out_dir")
    synth.add_argument("--num-pairs", type=positive_int, default=200)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--world",
        choices=["full", "demo"],
        default="full",
        help="full: four colours, two shapes, four directions, four backgrounds, pairs differing in any "
        "of the five dimensions; demo: the world the shipped demo judge (recipes/demo_judge) was "
        "trained on: one square moving right on a dark background in four colours, pairs "
        "differing in colour, motion, camera shake or flicker (default: %(default)s)",
    )
    synth.add_argument(
        "--format",
        choices=["descore", "videoalign"],
        default="descore",
        help="descore: pairs.jsonl with CoTs and dimension scores; videoalign: pairs.csv in VideoAlign's "
        "columns (path_A, path_B, prompt, Overall): labels only, no CoTs, as most preference data "
        "comes (default: %(default)s)",
    )
    synth.set_defaults(run=_make_synthetic)


# The world of the shipped demo judge (recipes/train_demo_judge.py: WORLD, DEFECTS).
DEMO_WORLD = {"shapes": ("square",), "directions": ("right",), "backgrounds": ("dark",)}
DEMO_DEFECTS = ("subject", "dynamics", "camera", "style")


def _make_synthetic(args) -> int:
    from descore_plugin.testing.synthetic import DIMENSIONS, WorldConfig, write_dataset

    _replace_own_output(args.out_dir, lambda path: (path / "pairs.jsonl").is_file() or (path / "pairs.csv").is_file())
    world = WorldConfig(**DEMO_WORLD) if args.world == "demo" else WorldConfig()
    defects = DEMO_DEFECTS if args.world == "demo" else DIMENSIONS
    path = write_dataset(args.out_dir, num_pairs=args.num_pairs, seed=args.seed, world=world, defects=defects)
    if args.format == "videoalign":
        path = _write_videoalign_csv(path)
    print(f"wrote {args.num_pairs} synthetic pairs to {path}")
    return 0


def _write_videoalign_csv(jsonl) -> str:
    """pairs.jsonl -> pairs.csv in VideoAlign's training columns (labels only; the JSONL with CoTs is removed)."""
    import csv
    from pathlib import Path

    from descore_plugin.data.pairs import load_pairs

    jsonl = Path(jsonl)
    out = jsonl.with_name("pairs.csv")
    labels = {"A": "A", "B": "B", "tie": "same"}
    with open(out, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["path_A", "path_B", "prompt", "Overall"])
        for pair in load_pairs(jsonl):
            writer.writerow(
                [
                    os.path.relpath(pair.video_a, out.parent),
                    os.path.relpath(pair.video_b, out.parent),
                    pair.prompt,
                    labels[pair.label],
                ]
            )
    jsonl.unlink()
    return str(out)


# --------------------------------------------------------------------------------------------------------------- report
def _add_report(commands):
    report = commands.add_parser(
        "report", help="write OUT/index.html: an HTML page of a scored set, an evaluation or a post-training run"
    )
    report.add_argument(
        "path",
        help="`descore score --json` / `--output` JSON lines, a recipes/eval_rm.py output "
        "directory, or a wan_flow_dpo.py / wan_flow_grpo.py run directory",
    )
    report.add_argument(
        "--output-dir",
        required=True,
        help="where index.html and media/ (the videos) go (refused if it exists, unless --overwrite)",
    )
    report.add_argument(
        "--overwrite", action="store_true", help="replace an existing report in --output-dir (default: refuse)"
    )
    report.add_argument(
        "--model",
        default=None,
        help="scored sets: the DeScore model that scored them (named on the page; the reward range "
        "its folder records flags out-of-domain scores); runs: the judge a --check descore... "
        "uses",
    )
    report.add_argument(
        "--reward",
        default=None,
        help="run reports: the optimised reward's score name (default: descore, else the first)",
    )
    report.add_argument(
        "--check",
        action="append",
        default=None,
        help="run reports: an independent check (repeat): a score the run logged, or a reward "
        "computed now on the run's saved samples (analytic:brightness, analytic:redness, "
        "descore... with --model) (default: every other logged reward)",
    )
    add_device_arguments(report, device_help="device of a --check descore judge (default: cuda if available)")
    report.set_defaults(run=_report)


def _report(args) -> int:
    from descore_plugin.report import write_report
    from descore_plugin.utils.errors import prepare_output_dir

    prepare_output_dir(
        args.output_dir,
        resume=None,
        overwrite=args.overwrite,
        what=f"--output-dir {args.output_dir}",
        ours=lambda path: (path / "index.html").is_file(),
    )
    index = write_report(
        args.path,
        args.output_dir,
        reward=args.reward,
        checks=args.check,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
    )
    print(f"wrote {index} (open it in a browser)")
    return 0


# ----------------------------------------------------------------------------------------------------------------- main
SUBCOMMANDS = [
    _add_score,
    _add_annotate,
    _add_init,
    _add_init_tiny,
    _add_init_tiny_wan,
    _add_make_synthetic,
    _add_report,
    add_serve,
]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="descore", description="DeScore: think, then score (video reward model)")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def main(argv=None) -> int:
    """`descore ...`: a user error is one line `descore <command>: error: ...` and exit status 2."""
    args = build_parser().parse_args(argv)
    return run_main(lambda _: args.run(args), f"descore {args.command}")


if __name__ == "__main__":
    sys.exit(main())
