"""User errors and the command-line contract: a mistake in the input is ONE line and exit status 2, a bug a traceback.

Every input error of the package (a pair file, a video, a Wan setting, a flag) derives from `UserError`, a
`ValueError` whose message names the input (file, row, field or flag) and says what to change. A command line
runs its `main` through `run_main`, which prints such an error as `prog: error: message` and returns 2; every
other exception is a bug and keeps its traceback.

    from descore_plugin.utils.errors import ArgumentParser, UserError, run_main

    def main(argv=None) -> int:
        args = ArgumentParser(description=__doc__).parse_args(argv)  # a bad flag: one line, exit 2
        if not Path(args.prompts).is_file():
            raise UserError(f"--prompts {args.prompts}: no such file")
        ...

    if __name__ == "__main__":
        sys.exit(run_main(main, "my_recipe.py"))

Ctrl-C: `run_main` turns a KeyboardInterrupt into one line too, `prog: interrupted; ...`, naming where the work
stands as the running job last said with `set_resume_hint` (e.g. "last checkpoint: out/checkpoint-20; continue with
--resume"), and returns 130 (128 + SIGINT, what a shell reports for a command killed by Ctrl-C).

Output folders: `prepare_output_dir` gives every command the same rule for an existing output (refused unless
--resume continues it or --overwrite replaces it).

The argument types here (`positive_int`, `dtype_name`, `device_name`, ...) check a flag where it enters, so a
bad value is reported by argparse, naming the flag, before anything is loaded.
"""

import argparse
import contextlib
import os
import sys

__all__ = [
    "UserError",
    "ArgumentParser",
    "one_line_errors",
    "run_main",
    "report",
    "one_line",
    "blame",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "dtype_name",
    "device_name",
    "add_device_arguments",
    "DTYPE_ALIASES",
    "USAGE_EXIT_STATUS",
    "INTERRUPTED_EXIT_STATUS",
    "set_resume_hint",
    "resume_hint",
    "checkpoint_hint",
    "interrupted",
    "prepare_output_dir",
]

USAGE_EXIT_STATUS = 2  # what argparse and the shell conventions use for "the command was called wrongly"
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


class UserError(ValueError):
    """An input the user can fix; the message names it (file, row, field or flag) and says what to change."""


# Errors of the file system about a path the user named: reported like a UserError (str() names the path).
_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def one_line(message) -> str:
    """The message on one line: inner line breaks become spaces (a terminal line per error, greppable logs)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip()) or "(no message)"


def run_main(main, prog: str, argv=None) -> int:
    """Run `main(argv)`; a UserError (or a missing / unreadable file) prints `prog: error: ...` on stderr and
    returns 2. Under a multi-process launch (accelerate), other ranks than 0 prefix the line with their rank. The
    package's log messages print as plain lines meanwhile (`utils.logging.setup_logging`)."""
    from descore_plugin.utils.logging import setup_logging

    setup_logging()
    try:
        return main(argv)
    except (UserError, *_FILE_ERRORS) as error:
        return report(error, prog)
    except KeyboardInterrupt:
        pass
    # Out of the except block the interrupted work's frames are released, so its progress bars close (and print)
    # before the one line, which is then the last one.
    import gc

    gc.collect()
    return interrupted(prog)


# ----------------------------------------------------------------------------------------------------------------
# Ctrl-C: one line saying where the work stands, instead of a traceback

_resume_hint: str | None = None


def set_resume_hint(hint: str | None) -> None:
    """What a Ctrl-C from now on should tell the user about continuing (e.g. `checkpoint_hint(path)` right after a
    checkpoint is written, or "rows so far are in OUT.jsonl; run the same command with --resume"). None: nothing
    saved yet."""
    global _resume_hint
    _resume_hint = None if hint is None else one_line(hint)


def resume_hint() -> str | None:
    """The hint last set by `set_resume_hint` (None when the running job has saved nothing to continue from)."""
    return _resume_hint


def checkpoint_hint(checkpoint) -> str:
    """The resume hint of a training run whose newest checkpoint is `checkpoint`."""
    return f"last checkpoint: {checkpoint}; run the same command with --resume to continue from it"


def interrupted(prog: str) -> int:
    """Print the one line of a Ctrl-C (`prog: interrupted; <resume hint>`, on stderr) and return 130."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    where = f"[rank {rank}] " if world != "1" and rank != "0" else ""
    print(
        f"{where}{prog}: interrupted; {_resume_hint or 'nothing was saved to continue from'}",
        file=sys.stderr,
        flush=True,
    )
    return INTERRUPTED_EXIT_STATUS


# ----------------------------------------------------------------------------------------------------------------
# Output folders: one rule for every command


def prepare_output_dir(
    path, *, resume: bool | None = False, overwrite: bool = False, what: str = "--output-dir", ours=None
) -> bool:
    """Apply the rule for an existing output (a folder, or a file such as OUT.jsonl): refused unless `resume`
    (continue it: returns True) or `overwrite` (delete it and start again). A missing or empty folder is simply
    used. Returns whether there is something to continue.

    resume: None for a command that cannot continue a previous output (its message then offers --overwrite only).
    what: how the user named the output, e.g. "--output-dir runs/eval" or "OUT_DIR".
    ours: a callable path -> bool saying the existing output was written by this command; --overwrite refuses to
        delete anything else (a folder of the user's that was named by mistake)."""
    import shutil
    from pathlib import Path

    path = Path(path)
    if resume and overwrite:
        raise UserError(f"{what}: --resume and --overwrite exclude each other: continue it, or start again")
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if path.exists() and not path.is_dir() and not path.is_file():
        raise UserError(f"{what}: {path} is neither a file nor a folder")
    if not exists:
        if resume:
            raise UserError(f"{what}: --resume, but {path} holds nothing to continue; drop --resume to start")
        return False
    if resume:
        return True
    if not overwrite:
        how = (
            "pass --overwrite to replace it"
            if resume is None
            else "pass --resume to continue it or --overwrite to replace it"
        )
        raise UserError(f"{what}: {path} already exists; {how} (or choose another output)")
    if ours is not None and not ours(path):
        raise UserError(
            f"{what}: --overwrite, but {path} was not written by this command; refusing to delete it: "
            "choose another output"
        )
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return False


def report(error: BaseException, prog: str) -> int:
    """Print `error` as the one line of a user error (`prog: error: ...`, on stderr) and return exit status 2."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    where = f"[rank {rank}] " if world != "1" and rank != "0" else ""
    print(f"{where}{prog}: error: {one_line(error)}", file=sys.stderr)
    return USAGE_EXIT_STATUS


@contextlib.contextmanager
def blame(what: str):
    """Inside the block, a ValueError or KeyError is about the input `what` names (e.g. "--model runs/s1", given
    by the user) and becomes a UserError naming it. Use it only around a call whose input the user chose."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise UserError(f"{what}: {one_line(message)}") from error


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad command line is one line (the usage stays available through --help)."""

    def error(self, message):
        self.exit(USAGE_EXIT_STATUS, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The same one-line error for a parser built elsewhere (e.g. transformers' HfArgumentParser); returns it."""
    parser.error = lambda message: parser.exit(
        USAGE_EXIT_STATUS, f"{parser.prog}: error: {one_line(message)} (see {parser.prog} --help)\n"
    )
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Argument types: argparse reports their ArgumentTypeError as "argument --flag: <message>"


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive, finite number")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


# Names people use for the three floating-point types, mapped to torch's attribute names.
DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "f32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "f16": "float16",
}


def dtype_name(text: str) -> str:
    """`fp16` / `bf16` / `fp32` / `float16` / `torch.bfloat16` ... -> "float16" | "bfloat16" | "float32"."""
    key = str(text).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a dtype; use float32 (fp32), bfloat16 (bf16) or float16 (fp16)"
        )
    return DTYPE_ALIASES[key]


def device_name(text: str) -> str:
    """A torch device that exists on this machine (`cpu`, `cuda`, `cuda:1`, `mps`), checked before any loading."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text}: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False); "
                "use --device cpu, or leave --device out to pick cuda only when there is one"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {count} CUDA device(s), numbered 0..{count - 1}"
            )
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text}: the MPS backend is not available here; use --device cpu")
    return text


DEVICE_HELP = "e.g. cuda, cuda:1, cpu (default: cuda if available)"
DTYPE_HELP = "float32 / bfloat16 / float16 (or fp32 / bf16 / fp16; default: float32 on CPU, bfloat16 on CUDA)"


def add_device_arguments(parser: argparse.ArgumentParser, device_help: str = DEVICE_HELP) -> None:
    """`--device` and `--dtype`, checked where they enter, for every command that loads a reward model (a dataclass
    command line: `utils.args.DeviceArguments`)."""
    parser.add_argument("--device", type=device_name, default=None, help=device_help)
    parser.add_argument("--dtype", type=dtype_name, default=None, help=DTYPE_HELP)
