"""A user's first hour on the command lines: user errors as one line and exit status 2 (never a traceback), every
video checked before step 1 (--skip-bad-rows), written files that follow the umask, and the small traps of
`descore score` (several prompts, a directory, an image) and of VideoAlign files (--label-column)."""

import argparse
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import PIL.Image
import pytest
import torch
from helpers.run import run_python

from descore_plugin.data.pairs import DataError, load_pairs
from descore_plugin.data.video import VideoInputError, load_video, write_video
from descore_plugin.utils.errors import UserError, device_name, dtype_name, run_main
from descore_plugin.utils.files import atomic_directory, atomic_write_text, current_umask, follow_umask

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def _run(args, umask=None, cwd=None):
    return run_python(args, umask=umask, cwd=cwd, timeout=300)


def _assert_one_line_user_error(result, *fragments):
    """Exit status 2, no traceback, and stderr's only line is `prog: error: ...` holding every fragment."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny DeScore model, 4 good synthetic pairs and the three bad videos of a real first hour."""
    from descore_plugin.testing.synthetic import write_dataset
    from descore_plugin.testing.tiny import init_tiny

    root = tmp_path_factory.mktemp("first_hour")
    init_tiny(root / "model")
    write_dataset(root / "data", num_pairs=4, seed=3)
    good = [json.loads(line) for line in (root / "data" / "pairs.jsonl").read_text().splitlines()]
    videos = root / "data" / "videos"
    write_video(videos / "two_frames.mp4", (torch.rand(2, 3, 56, 56) * 255).to(torch.uint8), fps=8)
    PIL.Image.fromarray(np.zeros((56, 56, 3), np.uint8)).save(videos / "still.png")
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    return {"root": root, "model": root / "model", "good": good, "videos": videos}


def _pairs_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video_a", "video_b", "prompt", "label"])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row[key] for key in ("video_a", "video_b", "prompt", "label")})
    return path


def _bad_rows_csv(world) -> Path:
    """Rows 1, 2, 4, 6 good; row 3 a 2-frame mp4 (the model samples 8), row 5 an image, row 7 a corrupt file."""
    good = world["good"]
    rows = [
        good[0],
        good[1],
        {**good[2], "video_b": "videos/two_frames.mp4"},
        good[3],
        {**good[0], "video_a": "videos/still.png"},
        good[1],
        {**good[2], "video_b": "videos/corrupt.mp4"},
    ]
    return _pairs_csv(world["root"] / "data" / "with_bad_rows.csv", rows)


# ------------------------------------------------------------------------------------------- user errors: one line, 2
def test_user_errors_are_one_line_with_exit_status_2(world, tmp_path):
    """Each command line's classic mistake, as a subprocess: exit 2, one line naming the flag, no traceback."""
    from descore_plugin.testing.tiny_wan import write_tiny_wan

    write_tiny_wan(tmp_path / "wan")
    (tmp_path / "prompts.txt").write_text("a red square\na blue circle\n")
    video = sorted(world["videos"].glob("0*_a.mp4"))[0]
    wan_args = [
        "--pipeline",
        tmp_path / "wan",
        "--reward-model",
        "analytic:redness",
        "--prompts",
        tmp_path / "prompts.txt",
        "--output-dir",
        tmp_path / "out",
        "--max-steps",
        "1",
    ]
    train = [
        "--model",
        world["model"],
        "--train-data",
        world["root"] / "data" / "pairs.jsonl",
        "--output-dir",
        tmp_path / "rm",
    ]
    cases = {
        "device": (
            [
                "-m",
                "descore_plugin.cli",
                "score",
                video,
                "--prompt",
                "p",
                "--model",
                world["model"],
                "--device",
                "cuda",
            ],
            ["descore score: error: argument --device", "no CUDA GPU", "--device cpu"],
        ),
        "dpo_frames": ([RECIPES / "wan_flow_dpo.py", *wan_args, "--num-frames", "8"], ["wan_flow_dpo.py", "4k + 1"]),
        "grpo_dtype": (
            [RECIPES / "wan_flow_grpo.py", *wan_args, "--dtype", "fp17"],
            ["wan_flow_grpo.py", "argument --dtype", "invalid choice: 'fp17'"],
        ),
        "train_batch": ([RECIPES / "train_rm.py", *train, "--batch-size", "0"], ["train_rm.py", "--batch-size 0"]),
        "distill": ([RECIPES / "distill_student.py", *train, "--max-steps", "1"], ["distill_student.py", "--teacher"]),
        "eval_batch": (
            [
                RECIPES / "eval_rm.py",
                world["root"] / "data" / "pairs.jsonl",
                "--model",
                world["model"],
                "--output-dir",
                tmp_path / "ev",
                "--batch-size",
                "0",
            ],
            ["eval_rm.py", "argument --batch-size"],
        ),
    }
    if torch.cuda.is_available():  # the GPU-less case cannot be produced here
        del cases["device"]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(cases, pool.map(lambda case: _run(case[0]), cases.values())))
    for name, (_, fragments) in cases.items():
        _assert_one_line_user_error(results[name], *fragments)
    assert not (tmp_path / "out").exists() and not (tmp_path / "rm").exists()  # nothing started


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--dtype", "fp17"], ["descore score: error: argument --dtype", "bfloat16 (bf16)"]),
        (["--batch-size", "0"], ["argument --batch-size: 0 must be at least 1"]),
        (["--max-new-tokens", "-3"], ["argument --max-new-tokens"]),
        (["--prompt", "q"], ["2 --prompt flags for 1 videos"]),
        (["--model", "/no/such/model"], ["/no/such/model: no such directory"]),
    ],
)
def test_score_user_errors_in_process(world, capsys, flags, fragments):
    """The same contract, cheaply in-process: `descore score` user errors exit 2 with one line."""
    from descore_plugin import cli

    video = str(sorted(world["videos"].glob("0*_a.mp4"))[0])
    argv = ["score", video, "--prompt", "p", "--model", str(world["model"]), *flags]
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # argparse's own exit
        status = exit.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_argument_types_accept_the_usual_names():
    assert [dtype_name(n) for n in ("fp16", "FP16", "half", "float16", "torch.float16")] == ["float16"] * 5
    assert [dtype_name(n) for n in ("bf16", "bfloat16")] == ["bfloat16"] * 2
    assert [dtype_name(n) for n in ("fp32", "float32", "float")] == ["float32"] * 3
    with pytest.raises(argparse.ArgumentTypeError, match="not a dtype"):
        dtype_name("int8")
    assert device_name("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="not a torch device"):
        device_name("gpu")


def test_run_main_keeps_tracebacks_for_bugs(capsys):
    """A UserError is one line and 2; any other exception (a bug) propagates with its traceback."""

    def user(argv):
        raise UserError("--prompts p.txt: line 2 is empty;\n  remove it")

    def bug(argv):
        raise ZeroDivisionError("a bug")

    assert run_main(user, "tool") == 2
    assert capsys.readouterr().err == "tool: error: --prompts p.txt: line 2 is empty; remove it\n"
    with pytest.raises(ZeroDivisionError):
        run_main(bug, "tool")
    assert issubclass(DataError, UserError) and issubclass(VideoInputError, UserError)


# --------------------------------------------------------------------------------- every video checked before step 1
def test_bad_videos_stop_training_before_step_1_naming_row_and_field(world, tmp_path):
    csv_path = _bad_rows_csv(world)
    out = tmp_path / "run"
    base = [
        RECIPES / "train_rm.py",
        "--model",
        world["model"],
        "--train-data",
        csv_path,
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--gradient-accumulation-steps",
        "1",
        "--lora-rank",
        "0",
        "--save-steps",
        "0",
        "--log-with",
        "none",
    ]
    failed = _run([*base, "--output-dir", out])
    line = _assert_one_line_user_error(
        failed,
        "with_bad_rows.csv, row 3, field 'video_b'",
        "two_frames.mp4",
        "only 2 frames",
        "(3 rows have unusable videos)",
        "--skip-bad-rows",
    )
    assert "step" not in line
    assert not out.exists()  # checked before the run directory is opened: the fixed data starts a fresh run

    # --skip-bad-rows: trains on rows 1, 2, 4, 6 and lists 3, 5, 7; run under umask 022 (item: readable outputs).
    done = _run([*base, "--output-dir", out, "--skip-bad-rows"], umask=0o022)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"left out 3 of 7 rows of {csv_path}" in done.stderr
    skipped = [json.loads(line) for line in (out / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(s["row"], s["field"], Path(s["file"]).name) for s in skipped] == [
        (3, "video_b", "two_frames.mp4"),
        (5, "video_a", "still.png"),
        (7, "video_b", "corrupt.mp4"),
    ]
    assert all(s["data"] == str(csv_path) for s in skipped)
    assert "only 2 frames" in skipped[0]["reason"]
    assert "an image, not a video" in skipped[1]["reason"]
    assert "cannot decode" in skipped[2]["reason"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    _assert_tree_modes(out, 0o644, 0o755)


def test_label_column_and_directory_errors(world, tmp_path):
    """VideoAlign files choose their label column; a folder where a video belongs is called a folder."""
    good = world["good"][0]
    folder = world["root"] / "data"
    header = "path_A,path_B,prompt,VQ,TA\n"
    (folder / "align.csv").write_text(header + f"{good['video_a']},{good['video_b']},a prompt,B,A\n")
    with pytest.raises(
        DataError,
        match=r"align.csv, row 1: no label column 'Overall' \(columns: VQ, TA\); "
        r"choose .* --label-column",
    ):
        load_pairs(folder / "align.csv")
    assert load_pairs(folder / "align.csv", label_column="TA")[0].label == "A"
    assert load_pairs(folder / "align.csv", label_column="VQ")[0].label == "B"
    with pytest.raises(DataError, match="no label column 'MQ'.*pass one of those to --label-column"):
        load_pairs(folder / "align.csv", label_column="MQ")
    with pytest.raises(DataError, match="--label-column TA applies to VideoAlign"):
        load_pairs(folder / "pairs.jsonl", label_column="TA")
    (folder / "dir.csv").write_text(header + f"{good['video_a']},videos,a prompt,B,A\n")
    with pytest.raises(DataError, match=r"row 1, field 'path_B': .*videos is a folder, not a video file"):
        load_pairs(folder / "dir.csv", label_column="TA")


def test_videos_that_are_folders_or_images_say_so(world):
    with pytest.raises(VideoInputError, match="is a folder, not a video file"):
        load_video(world["videos"])
    with pytest.raises(VideoInputError, match=r"an image, not a video"):
        load_video(world["videos"] / "still.png", num_frames=8)


def test_score_takes_one_prompt_per_video(world, capsys):
    from descore_plugin import cli

    videos = sorted(str(p) for p in world["videos"].glob("0000[01]_a.mp4"))
    assert (
        cli.main(
            [
                "score",
                *videos,
                "--prompt",
                "first",
                "--prompt",
                "second",
                "--model",
                str(world["model"]),
                "--no-think",
                "--json",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["video"], r["prompt"]) for r in records] == [(videos[0], "first"), (videos[1], "second")]


# ------------------------------------------------------------------------------------------------ files follow umask
def _assert_tree_modes(root: Path, file_mode: int, dir_mode: int):
    entries = list(root.rglob("*"))
    wrong = [
        (str(p.relative_to(root)), oct(stat.S_IMODE(p.stat().st_mode)))
        for p in entries
        if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) != (dir_mode if p.is_dir() else file_mode)
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, mask):
    """Models, checkpoints, videos: files 0o666 & ~umask, folders 0o777 & ~umask, although they pass through
    private temporary files (mkstemp, mkdtemp, safetensors)."""
    from safetensors.torch import save_file

    from descore_plugin.testing.tiny import init_tiny, init_tiny_backbone
    from descore_plugin.testing.tiny_wan import write_tiny_wan

    old = os.umask(mask)
    try:
        with atomic_directory(tmp_path / "ckpt") as tmp:
            save_file({"w": torch.zeros(2)}, tmp / "weights.safetensors")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "state.json").write_text("{}")
        atomic_write_text(tmp_path / "text" / "note.txt", "hello")
        write_video(tmp_path / "videos" / "clip.mp4", torch.zeros(2, 3, 16, 16, dtype=torch.uint8), fps=8)
        init_tiny(tmp_path / "model")
        if mask == 0o022:
            init_tiny_backbone(tmp_path / "plain")
            write_tiny_wan(tmp_path / "wan")
    finally:
        os.umask(old)
    _assert_tree_modes(tmp_path, 0o666 & ~mask, 0o777 & ~mask)
    # follow_umask keeps an executable file executable.
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o700)
    assert stat.S_IMODE(follow_umask(script).stat().st_mode) == 0o777 & ~current_umask()


def test_eval_rm_checks_every_video_before_scoring(world, tmp_path, capsys):
    """eval_rm.py: a bad video stops the run before any scoring (one line, 2); --skip-bad-rows scores the rest."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_rm", RECIPES / "eval_rm.py")
    eval_rm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_rm)
    argv = [
        str(_bad_rows_csv(world)),
        "--model",
        str(world["model"]),
        "--output-dir",
        str(tmp_path / "ev"),
        "--no-think",
    ]
    assert run_main(eval_rm.main, "eval_rm.py", argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("eval_rm.py: error: with_bad_rows.csv, row 3, field 'video_b'") and "3 rows" in err, err
    assert not (tmp_path / "ev" / "accuracy.json").exists()
    assert run_main(eval_rm.main, "eval_rm.py", [*argv, "--skip-bad-rows"]) == 0
    accuracy = json.loads((tmp_path / "ev" / "accuracy.json").read_text())
    assert accuracy["num_pairs"] == 4  # rows 1, 2, 4, 6
    skipped = [json.loads(line) for line in (tmp_path / "ev" / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(s["row"], s["field"]) for s in skipped] == [(3, "video_b"), (5, "video_a"), (7, "video_b")]


# ------------------------------------------------------------------------------------ Ctrl-C: one line, not a traceback
def _interrupt_when(command: list, ready, cwd) -> CompletedProcess:
    """Start `command`, wait until `ready()` holds (at most 4 minutes), then press Ctrl-C: SIGINT to its whole process
    group, as a terminal does (data-loader workers included)."""
    import signal
    import time

    from helpers.run import start_python

    # A shell running a command in the background (`nohup make test &`) starts it with SIGINT ignored, and children
    # inherit that; a terminal's foreground command has the default handler, which is what Ctrl-C is tested against.
    process = start_python(
        command, cwd=cwd, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    )
    try:
        deadline = time.time() + 240
        while not ready() and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert ready(), "the command never reached the point to interrupt"
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return CompletedProcess(process.args, process.returncode, out, err)


def _assert_one_interrupted_line(result, prog: str, *fragments) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith(f"{prog}: interrupted; "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def test_ctrl_c_on_score_names_the_output_and_resume(world, tmp_path):
    out = tmp_path / "scores.jsonl"
    command = [
        "-m",
        "descore_plugin.cli",
        "score",
        world["root"] / "data" / "videos",
        "--prompt",
        "a red square",
        "--model",
        world["model"],
        "--output",
        out,
        "--max-new-tokens",
        "400",
        "--batch-size",
        "1",
        "--num-workers",
        "1",
    ]
    result = _interrupt_when(command, lambda: out.is_file() and out.read_text().count("\n") >= 1, tmp_path)
    _assert_one_interrupted_line(result, "descore score", str(out), "--resume")
    rows = out.read_text().splitlines()
    assert rows and all(json.loads(row)["video"] for row in rows)  # complete rows only, kept for --resume


def test_ctrl_c_on_training_names_the_last_checkpoint(world, tmp_path):
    out = tmp_path / "run"
    command = [
        RECIPES / "train_rm.py",
        "--stage",
        "1",
        "--model",
        world["model"],
        "--train-data",
        world["root"] / "data" / "pairs.jsonl",
        "--output-dir",
        out,
        "--max-steps",
        "100000",
        "--save-steps",
        "1",
        "--save-total-limit",
        "2",
        "--gradient-accumulation-steps",
        "1",
    ]
    result = _interrupt_when(
        command, lambda: any((out / f"checkpoint-{n}" / "run_state.json").is_file() for n in (2, 3, 4, 5)), tmp_path
    )
    line = _assert_one_interrupted_line(result, "train_rm.py", "last checkpoint: ", "--resume")
    named = Path(line.split("last checkpoint: ", 1)[1].split(";", 1)[0])
    assert named.parent == out and (named / "run_state.json").is_file()
    newest = max(
        (p for p in out.glob("checkpoint-*") if (p / "run_state.json").is_file()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    assert named == newest


# ----------------------------------------------------------------------- long work shows a progress bar, never a stall
def test_every_evaluation_and_scoring_run_shows_a_progress_bar(world, tmp_path, capsys):
    """The work that can take minutes on a CPU draws a tqdm bar on stderr: eval_rm.py and `descore score --output` on
    a pair file (in videos), `descore annotate` (in pairs), and a training run's final evaluation."""
    import importlib.util

    from descore_plugin.cli import main

    def recipe(name):
        spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    pairs, model = str(world["root"] / "data" / "pairs.jsonl"), str(world["model"])
    capsys.readouterr()
    eval_argv = [pairs, "--model", model, "--output-dir", str(tmp_path / "ev"), "--max-new-tokens", "4"]
    assert recipe("eval_rm").main(eval_argv) == 0
    assert "scoring videos: 100%" in capsys.readouterr().err.replace("\r", "\n")  # 4 pairs: 8 videos
    out = tmp_path / "scores.jsonl"
    assert main(["score", pairs, "--model", model, "--output", str(out), "--no-think", "--num-workers", "0"]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "scoring: 100%" in err and "8/8" in err
    annotated = str(tmp_path / "cots.jsonl")
    assert main(["annotate", pairs, "--teacher", model, "--output", annotated, "--max-new-tokens", "4"]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "annotating: 100%" in err and "4/4" in err  # a random tiny teacher: counted, none kept
    train_argv = [
        *("--stage", "1", "--model", model, "--train-data", pairs, "--eval-data", pairs),
        *("--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--gradient-accumulation-steps", "1"),
        *("--eval-max-new-tokens", "4", "--log-with", "none", "--lora-rank", "2"),
    ]
    assert recipe("train_rm").main(train_argv) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    assert err.count("scoring videos:   0%") == 1 and "scoring videos: 100%" in err, err[-3000:]  # the final one
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if row["kind"] == "eval"] == [1]  # the evaluation it drew the bar for
