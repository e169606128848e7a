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

The argument types here (`positive_int`, `dtype_name`, `device_name`, ...) check a flag where it enters, so a
bad value is reported by argparse, naming the flag, before anything is loaded.
"""

import argparse
import contextlib
import os
import sys

__all__ = ["UserError", "ArgumentParser", "one_line_errors", "run_main", "report", "one_line", "blame", "positive_int", "non_negative_int",
           "positive_float", "dtype_name", "device_name", "add_device_arguments", "DTYPE_ALIASES", "USAGE_EXIT_STATUS"]

USAGE_EXIT_STATUS = 2  # what argparse and the shell conventions use for "the command was called wrongly"


class UserError(ValueError):
    """An input the user can fix; the message names it (file, row, field or flag) and says what to change."""


# Errors of the file system about a path the user named: reported like a UserError (str() names the path).
_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def one_line(message) -> str:
    """The message on one line: inner line breaks become spaces (a terminal line per error, greppable logs)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip()) or "(no message)"


def run_main(main, prog: str, argv=None) -> int:
    """Run `main(argv)`; a UserError (or a missing / unreadable file) prints `prog: error: ...` on stderr and
    returns 2. Under a multi-process launch (accelerate), other ranks than 0 prefix the line with their rank."""
    try:
        return main(argv)
    except (UserError, *_FILE_ERRORS) as error:
        return report(error, prog)


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
        USAGE_EXIT_STATUS, f"{parser.prog}: error: {one_line(message)} (see {parser.prog} --help)\n")
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
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16",
}


def dtype_name(text: str) -> str:
    """`fp16` / `bf16` / `fp32` / `float16` / `torch.bfloat16` ... -> "float16" | "bfloat16" | "float32"."""
    key = str(text).strip().lower().removeprefix("torch.")
    if key not in DTYPE_ALIASES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a dtype; use float32 (fp32), bfloat16 (bf16) or float16 (fp16)")
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
                "use --device cpu, or leave --device out to pick cuda only when there is one")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {count} CUDA device(s), numbered 0..{count - 1}")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text}: the MPS backend is not available here; use --device cpu")
    return text


def add_device_arguments(parser: argparse.ArgumentParser,
                         device_help: str = "e.g. cuda, cuda:1, cpu (default: cuda if available)") -> None:
    """`--device` and `--dtype`, checked where they enter, for every command that loads a reward model."""
    parser.add_argument("--device", type=device_name, default=None, help=device_help)
    parser.add_argument("--dtype", type=dtype_name, default=None,
                        help="float32 / bfloat16 / float16 (or fp32 / bf16 / fp16; default: float32 on CPU, "
                             "bfloat16 on CUDA)")
