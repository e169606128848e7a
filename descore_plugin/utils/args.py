"""One argument layer for every command line: config dataclasses whose field help is the flag's `--help`.

A command's settings are dataclasses, each field declared with `help_field` (its help text, its default); transformers'
`HfArgumentParser` turns every field into a flag (`--max-steps` and `--max_steps`), and `parse_config` parses a
command line into the dataclasses with the package's command-line contract: a bad flag or value is ONE line,
`prog: error: ... (see prog --help)`, and exit status 2.

    @dataclass
    class BenchArguments:
        json: str = help_field("write every number to this JSON file", required=True)
        repeats: int = help_field("runs of each path (the median is reported)", 9, check=positive_int)
        pairs: str = help_field("pair file to read", positional=True)

    (arguments,) = parse_config(BenchArguments, argv, prog="bench.py", description=__doc__)

`--help` prints the description as written and after every flag's help its default, or "(required)". Beyond
HfArgumentParser: `check=` validates a value where it enters (an `errors.positive_int`-style function, reported as
`argument --flag: ...`), `positional=True` makes a field a positional argument, every bool flag also has a hidden
`--no-<flag>`, a dataclass's own check (`__post_init__` raising ValueError) becomes a `UserError` (which
`errors.run_main` prints as one line, exit status 2), and an unknown flag is reported by name instead of raising.
"""

import argparse
import copy
import dataclasses
import re
from dataclasses import dataclass
from types import MappingProxyType

from transformers import HfArgumentParser

from descore_plugin.utils.errors import (
    DEVICE_HELP,
    DTYPE_HELP,
    USAGE_EXIT_STATUS,
    UserError,
    device_name,
    dtype_name,
    one_line,
)

__all__ = ["help_field", "HelpFormatter", "ConfigParser", "parse_config", "DeviceArguments"]


def help_field(
    help: str,
    default=None,
    *,
    default_factory=None,
    required: bool = False,
    check=None,
    positional: bool = False,
    **argparse_kwargs,
) -> dataclasses.Field:
    """A dataclass field that is a documented flag.

    help: the flag's meaning (its default is added by the help formatter). default: the value when the flag is not
    given (a list, dict or set is copied for each instance). required: the flag must be given on a command line
    (the dataclass's own default is then None).
    check: a function str -> value that validates the flag's text (raise argparse.ArgumentTypeError to refuse it).
    positional: a positional argument instead of a flag. argparse_kwargs: passed on to `add_argument` (`choices`,
    `metavar`, `nargs`, `aliases`)."""
    help = re.sub(r"(?<!%)%(?![(%])", "%%", help)  # a literal "1%" in the text, not an argparse placeholder
    metadata = {"help": help, **argparse_kwargs}
    if check is not None:
        metadata["check"] = check
    if positional:
        metadata["positional"] = True
    if required:  # argparse enforces it; the dataclass default None keeps fields in any order
        return dataclasses.field(default=None, metadata={**metadata, "required": True})
    if default_factory is None and isinstance(default, (list, dict, set)):
        default_factory = lambda value=default: copy.deepcopy(value)  # noqa: E731 (a default per instance)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and after every flag's help its default, or "(required)" for one without."""

    def _get_help_string(self, action):
        if action.required:
            return f"{action.help} (required)"
        if isinstance(action, argparse._StoreFalseAction) or re.search(r"\(default\b|\bdefault:", action.help or ""):
            return action.help  # `--no-<flag>` (its "default" False would mislead), or a default told in words
        return super()._get_help_string(action)


class ConfigParser(HfArgumentParser):
    """transformers' HfArgumentParser over dataclasses, with the additions listed in the module docstring."""

    def __init__(self, dataclass_types, prog: str | None = None, description: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        types = list(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        super().__init__(types, prog=prog, description=description, **kwargs)
        existing = set(self._option_string_actions)
        for dtype in types:
            for spec in dataclasses.fields(dtype):
                negative = "--no-" + spec.name.replace("_", "-")
                if spec.init and spec.type in (bool, "bool") and negative not in existing:
                    self.add_argument(negative, dest=spec.name, action="store_false", help=argparse.SUPPRESS)

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field) -> None:
        """HfArgumentParser's way of adding `field`, after taking out the metadata keys that are ours."""
        metadata = dict(field.metadata)
        check, positional = metadata.pop("check", None), metadata.pop("positional", False)
        if positional:  # required, unless its metadata gives argparse an nargs that allows none
            kwargs = {key: value for key, value in metadata.items() if key not in ("aliases", "required")}
            kwargs.setdefault("type", check or field.type)
            if "nargs" in kwargs and field.default is not dataclasses.MISSING:
                kwargs["default"] = field.default
            parser.add_argument(field.name, **kwargs)
            return
        plain = copy.copy(field)
        plain.metadata = MappingProxyType(metadata)
        before = len(parser._actions)
        HfArgumentParser._parse_dataclass_field(parser, plain)
        if check is not None:
            parser._actions[before].type = check
        if len(parser._actions) > before + 1:  # the `--no-<flag>` HfArgumentParser adds to a bool that defaults to True
            parser._actions[-1].help = f"the same as --{field.name.replace('_', '-')} false (default: not given)"

    def error(self, message):
        # "argument --batch_size/--batch-size: ..." names the flag once, as it is written: "argument --batch-size: ..."
        message = re.sub(
            r"--(\w+)/--([\w-]+)", lambda m: f"--{m[2]}" if m[1].replace("_", "-") == m[2] else m[0], str(message)
        )
        self.exit(USAGE_EXIT_STATUS, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

    def parse_args_into_dataclasses(self, args=None, **kwargs) -> tuple:
        kwargs.setdefault("look_for_args_file", False)  # no hidden `<script>.args` file read
        kwargs["return_remaining_strings"] = True
        try:
            *outputs, remaining = super().parse_args_into_dataclasses(args, **kwargs)
        except UserError:
            raise
        except ValueError as error:  # a dataclass's own check (__post_init__), which names the flag
            raise UserError(str(error)) from None  # errors.run_main prints it as one line, exit status 2
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        return tuple(outputs)


def parse_config(
    dataclass_types, argv=None, *, prog: str | None = None, description: str | None = None, defaults: dict | None = None
) -> tuple:
    """Parse `argv` (default: sys.argv[1:]) into instances of `dataclass_types` (one class or a list), in order.

    defaults: {field name: value} shown in --help and used when the flag is not given (a script's own defaults
    for fields of a shared dataclass)."""
    parser = ConfigParser(dataclass_types, prog=prog, description=description)
    if defaults:
        parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(argv)


@dataclass
class DeviceArguments:
    """`--device` and `--dtype` of every command that loads a reward model, checked where they enter."""

    device: str | None = help_field(DEVICE_HELP, check=device_name)
    dtype: str | None = help_field(DTYPE_HELP, check=dtype_name)
