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
    (args,) = _parse(
        ["p.jsonl", "--json=o", "--repeats", "3", "--sizes", "4", "5", "--quick", "--no-think", "--mode", "all"]
    )
    assert (args.repeats, args.sizes, args.quick, args.think, args.mode) == (3, [4, 5], True, False, "all")
    (args,) = _parse(["p.jsonl", "--json", "o", "--no-quick", "--think", "false"])
    assert (args.quick, args.think) == (False, False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["p", "--json", "o", "--repeats", "0"], "tool.py: error: argument --repeats: 0 must be at least 1"),
        (["p"], "tool.py: error: the following arguments are required: --json"),
        (["--json", "o"], "tool.py: error: the following arguments are required: pairs"),
        (["p", "--json", "o", "--bogus", "1"], "tool.py: error: unrecognized arguments: --bogus 1"),
        (["p", "--json", "o", "--mode", "some"], "tool.py: error: argument --mode: invalid choice: 'some'"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(message), err
    assert err.rstrip().endswith("(see tool.py --help)")


def test_a_config_check_is_a_user_error_that_run_main_prints_as_one_line(capsys):
    from descore_plugin.utils.errors import UserError, run_main

    with pytest.raises(UserError, match=r"^--repeats 7: choose another number of runs$"):
        _parse(["p", "--json", "o", "--repeats", "7"])
    assert run_main(_parse, "tool.py", ["p", "--json", "o", "--repeats", "7"]) == 2
    assert capsys.readouterr().err == "tool.py: error: --repeats 7: choose another number of runs\n"


def test_help_shows_the_description_as_written_and_every_default(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "What it does. tool.py PAIRS --json X" in text
    for entry in (
        "the pair file (required)",
        "where the numbers go (required)",
        "runs of each path (default: 9)",
        "model sizes (default: [1, 2])",
        "a short run (default: False)",
        "the same as --think false (default: not given)",
    ):
        assert entry in text, entry


# ------------------------------------------------------------------------------------------------ seeding, JSON lines
def test_named_streams_keep_the_numbers_earlier_runs_drew_and_never_share_draws():
    import numpy as np

    from descore_plugin.utils.seeding import STREAMS, epoch_order, seed_of, stream_salt

    # the registered names are the salts the runs used before they had names: the same seeds, bit for bit
    assert seed_of(5, "step", 1, 2) == int(np.random.SeedSequence([5, 7, 1, 2]).generate_state(1)[0])
    assert seed_of(5, "eval_noise", 3, 4) == int(np.random.SeedSequence([5, 17, 3, 4]).generate_state(1)[0])
    # any other name is hashed: stable across processes, and distinct from every registered salt
    assert stream_salt("dpo/noise") == 1717651895 and stream_salt("dpo/noise") not in STREAMS.values()
    seeds = {seed_of(0, stream, 0) for stream in [*STREAMS, "dpo/noise", "nft/noise"]}
    assert len(seeds) == len(STREAMS) + 2
    # epoch_order: a function of the position only (a resumed run draws the same), each epoch a permutation
    items = list("abcdefg")
    draws = [epoch_order(items, 3, 0, "step_prompts", 0, position) for position in range(7)]
    assert draws[4] == epoch_order(items, 3, 0, "step_prompts", 0, 4)
    flat = [item for draw in draws for item in draw]
    assert sorted(flat[:7]) == items and sorted(flat[7:14]) == items


def test_read_jsonl_names_the_file_and_line(tmp_path):
    from descore_plugin.utils.errors import UserError
    from descore_plugin.utils.jsonl import read_jsonl

    class MyError(UserError):
        pass

    path = tmp_path / "rows.jsonl"
    path.write_text('\ufeff{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")  # a byte-order mark, a blank line
    assert read_jsonl(path) == [(1, {"a": 1}), (3, {"a": 2})]
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(MyError, match=r"^rows.jsonl, line 2: malformed JSON \(Expecting value at char 7\)$"):
        read_jsonl(path, MyError, name="rows.jsonl")
    path.write_text("[1, 2]\n")
    with pytest.raises(UserError, match=r"rows.jsonl, line 1: expected a JSON object per line, got list"):
        read_jsonl(path)
