"""The plumbing every entry point shares: the argument layer (utils/args.py)."""

from dataclasses import dataclass

import pytest

from descore_plugin.utils.args import help_field, parse_config
from descore_plugin.utils.errors import positive_int


@dataclass
class _Arguments:
    pairs: str = help_field("the pair file", positional=True)
    json: str = help_field("where the numbers go", required=True)
    repeats: int = help_field("runs of each path", 9, check=positive_int)
    sizes: list[int] = help_field("model sizes", [1, 2])
    quick: bool = help_field("a short run", False)
    think: bool = help_field("score with a CoT", True)
    mode: str = help_field("how to pair", "best", choices=["best", "all"])

    def __post_init__(self):
        if self.repeats == 7:
            raise ValueError("--repeats 7: choose another number of runs")


def _parse(argv):
    return parse_config(_Arguments, argv, prog="tool.py", description="What it does.\n\n    tool.py PAIRS --json X")


def test_fields_become_flags_with_their_defaults():
    (args,) = _parse(["p.jsonl", "--json", "out.json"])
    assert args == _Arguments("p.jsonl", "out.json", 9, [1, 2], False, True, "best")
    assert _Arguments(json="a").sizes is not _Arguments(json="b").sizes  # a list default is copied per instance
    (args,) = _parse(["p.jsonl", "--json=o", "--repeats", "3", "--sizes", "4", "5", "--quick", "--no-think",
                      "--mode", "all"])
    assert (args.repeats, args.sizes, args.quick, args.think, args.mode) == (3, [4, 5], True, False, "all")
    (args,) = _parse(["p.jsonl", "--json", "o", "--no-quick", "--think", "false"])
    assert (args.quick, args.think) == (False, False)


@pytest.mark.parametrize("argv, message", [
    (["p", "--json", "o", "--repeats", "0"], "tool.py: error: argument --repeats: 0 must be at least 1"),
    (["p"], "tool.py: error: the following arguments are required: --json"),
    (["--json", "o"], "tool.py: error: the following arguments are required: pairs"),
    (["p", "--json", "o", "--bogus", "1"], "tool.py: error: unrecognized arguments: --bogus 1"),
    (["p", "--json", "o", "--repeats", "7"], "tool.py: error: --repeats 7: choose another number of runs"),
    (["p", "--json", "o", "--mode", "some"], "tool.py: error: argument --mode: invalid choice: 'some'"),
])
def test_a_bad_command_line_is_one_line_and_exit_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(message), err
    assert err.rstrip().endswith("(see tool.py --help)")


def test_help_shows_the_description_as_written_and_every_default(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "What it does. tool.py PAIRS --json X" in text
    for entry in ("the pair file (required)", "where the numbers go (required)", "runs of each path (default: 9)",
                  "model sizes (default: [1, 2])", "a short run (default: False)",
                  "the same as --think false (default: not given)"):
        assert entry in text, entry
