"""The judge prompt: `parse_answer` (never raises on model output) and `load_template` (loud on bad templates)."""

import json
import random

import pytest

from descore_plugin.modeling.prompt import (
    DIMENSIONS,
    ParsedAnswer,
    default_template,
    format_answer,
    load_template,
    parse_answer,
)

GOOD_SCORES = {"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 2, "style": 0}


def answer(scores=GOOD_SCORES, overall=3.5, **extra) -> str:
    """An <answer> block with any JSON payload (unlike format_answer, it may be malformed on purpose)."""
    payload = {"dimensional_scores": scores, "overall_score": overall, **extra}
    return "<answer>" + json.dumps(payload) + "</answer>"


# ---------------------------------------------------------------------- parse_answer: well-formed answers
def test_well_formed_answer():
    text = "Expect: a red square.\nSeen: a red square.\nAnalysis: fine.\n" + answer()
    assert parse_answer(text) == ParsedAnswer(GOOD_SCORES, 3.5, None)


def test_format_answer_round_trips_and_keeps_dimension_order():
    shuffled = dict(reversed(list(GOOD_SCORES.items())))
    text = format_answer(shuffled, 4.2)
    parsed = parse_answer(text)
    assert parsed == ParsedAnswer(GOOD_SCORES, 4.2, None)
    assert list(parsed.dimensional_scores) == list(DIMENSIONS)
    assert text.index('"subject"') < text.index('"dynamics"') < text.index('"style"')


def test_whitespace_and_text_around_the_json_are_tolerated():
    text = (
        "<answer>\n  Final verdict: "
        + json.dumps({"dimensional_scores": GOOD_SCORES, "overall_score": 2})
        + " \n</answer> bye"
    )
    parsed = parse_answer(text)
    assert parsed == ParsedAnswer(GOOD_SCORES, 2.0, None)
    assert isinstance(parsed.overall_score, float)


@pytest.mark.parametrize("value, expected", [(2, 2), (1, 1), (0, 0), (2.0, 2), (0.0, 0), ("2", 2), (" 1 ", 1)])
def test_numeric_dimension_values_become_ints(value, expected):
    parsed = parse_answer(answer({**GOOD_SCORES, "subject": value}))
    assert parsed.error is None
    assert parsed.dimensional_scores["subject"] == expected and type(parsed.dimensional_scores["subject"]) is int


@pytest.mark.parametrize("value", ["N/A", "n/a", "NA", "na", " N/A ", "n/A"])
def test_not_applicable_variants_normalise_to_N_A(value):
    parsed = parse_answer(answer({**GOOD_SCORES, "camera": value, "style": value}))
    assert parsed.error is None
    assert parsed.dimensional_scores["camera"] == "N/A" and parsed.dimensional_scores["style"] == "N/A"


@pytest.mark.parametrize("overall", [1, 1.0, 5, 5.0, 4.25, "3.5"])
def test_overall_score_inside_the_closed_interval(overall):
    parsed = parse_answer(answer(overall=overall))
    assert parsed.error is None and parsed.overall_score == float(overall)


def test_extra_keys_are_ignored():
    parsed = parse_answer(answer({**GOOD_SCORES, "aesthetics": 2}, verdict="fine"))
    assert parsed == ParsedAnswer(GOOD_SCORES, 3.5, None)


# ---------------------------------------------------------------------- parse_answer: which block counts
def test_several_answer_blocks_the_last_one_counts():
    first = answer({name: 0 for name in DIMENSIONS}, 1.0)
    last = answer(GOOD_SCORES, 3.5)
    assert parse_answer(f"draft {first} on second thought {last}") == ParsedAnswer(GOOD_SCORES, 3.5, None)


def test_the_last_block_counts_even_when_it_is_the_malformed_one():
    parsed = parse_answer(answer() + " then <answer>{broken</answer>")
    assert parsed.dimensional_scores is None and parsed.overall_score is None
    assert parsed.error == "no JSON object after <answer>"


def test_missing_closing_tag_reads_to_the_end():
    text = "Analysis done. " + answer()[: -len("</answer>")]
    assert parse_answer(text) == ParsedAnswer(GOOD_SCORES, 3.5, None)


def test_missing_closing_tag_after_a_closed_block_takes_the_unclosed_last_one():
    closed = answer({name: 0 for name in DIMENSIONS}, 1.0)
    unclosed = answer(GOOD_SCORES, 3.5)[: -len("</answer>")] + "\n"
    assert parse_answer(closed + " revised: " + unclosed) == ParsedAnswer(GOOD_SCORES, 3.5, None)


# ---------------------------------------------------------------------- parse_answer: malformed answers
@pytest.mark.parametrize(
    "text",
    [
        "",
        "The video is great. Overall 5.",
        '{"dimensional_scores": {}, "overall_score": 5}',
        "<answ",
        "</answer>",
        "<ANSWER>{}</ANSWER>",
    ],
)
def test_missing_answer_block(text):
    assert parse_answer(text) == ParsedAnswer(None, None, "no <answer> block")


@pytest.mark.parametrize("body", ["", "   ", "5", "[1, 2]", '"text"', "}{"])
def test_no_json_object_after_the_tag(body):
    assert parse_answer(f"<answer>{body}</answer>") == ParsedAnswer(None, None, "no JSON object after <answer>")


@pytest.mark.parametrize(
    "body",
    [
        '{"dimensional_scores": {"subject": 2,}, "overall_score": 3}',
        "{'dimensional_scores': {}, 'overall_score': 3}",
        '{"dimensional_scores": {"subject": 2}, "overall_score": 3',  # unbalanced, ends with }
        "{not json}",
    ],
)
def test_invalid_json(body):
    parsed = parse_answer(f"<answer>{body}</answer>")
    assert parsed.dimensional_scores is None and parsed.overall_score is None
    assert parsed.error.startswith("invalid JSON after <answer>: ") and " at char " in parsed.error


@pytest.mark.parametrize(
    "payload",
    [
        {"overall_score": 4.0},
        {"dimensional_scores": [2, 2, 2, 2, 2], "overall_score": 4.0},
        {"dimensional_scores": "all good", "overall_score": 4.0},
    ],
)
def test_missing_dimensional_scores_object_keeps_the_overall(payload):
    parsed = parse_answer("<answer>" + json.dumps(payload) + "</answer>")
    assert parsed == ParsedAnswer(None, 4.0, "missing 'dimensional_scores' object")


@pytest.mark.parametrize("missing", DIMENSIONS)
def test_missing_dimension(missing):
    scores = {name: value for name, value in GOOD_SCORES.items() if name != missing}
    parsed = parse_answer(answer(scores))
    assert parsed == ParsedAnswer(None, 3.5, f"dimension '{missing}' is None, expected 0, 1, 2 or \"N/A\"")


@pytest.mark.parametrize("value", [3, -1, 1.5, "yes", "good", "", None, True, False, [2], {"score": 2}, "N / A"])
def test_bad_dimension_value(value):
    parsed = parse_answer(answer({**GOOD_SCORES, "dynamics": value}))
    assert parsed == ParsedAnswer(None, 3.5, f"dimension 'dynamics' is {value!r}, expected 0, 1, 2 or \"N/A\"")


@pytest.mark.parametrize("overall", [0, 0.99, 5.01, 6, -3, 100])
def test_overall_outside_one_to_five_keeps_the_scores_and_reports(overall):
    parsed = parse_answer(answer(overall=overall))
    assert parsed == ParsedAnswer(GOOD_SCORES, float(overall), f"overall_score {float(overall)} outside [1, 5]")


@pytest.mark.parametrize("overall", ["high", "", None, True, [4], {"value": 4}])
def test_non_numeric_overall(overall):
    parsed = parse_answer(answer(overall=overall))
    assert parsed == ParsedAnswer(GOOD_SCORES, None, "missing or non-numeric 'overall_score'")


def test_missing_overall():
    parsed = parse_answer("<answer>" + json.dumps({"dimensional_scores": GOOD_SCORES}) + "</answer>")
    assert parsed == ParsedAnswer(GOOD_SCORES, None, "missing or non-numeric 'overall_score'")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_overall_is_an_error(literal):
    text = '<answer>{"dimensional_scores": ' + json.dumps(GOOD_SCORES) + ', "overall_score": ' + literal + "}</answer>"
    parsed = parse_answer(text)
    assert parsed.dimensional_scores == GOOD_SCORES and parsed.error is not None and "outside [1, 5]" in parsed.error


# ---------------------------------------------------------------------- parse_answer never raises
@pytest.mark.parametrize("value", [None, 3, 2.5, b"<answer>{}</answer>", ["<answer>"], {"overall_score": 4}, object()])
def test_non_text_input_is_an_error_not_an_exception(value):
    parsed = parse_answer(value)
    assert parsed == ParsedAnswer(None, None, f"expected text, got {type(value).__name__}")


GARBAGE = [
    "<answer>",
    "<answer></answer>",
    "<answer><answer><answer>",
    "<answer>{}</answer>",
    "<answer>{{{{}}}}</answer>",
    '<answer>{"dimensional_scores": null, "overall_score": null}</answer>',
    '<answer>{"dimensional_scores": {"subject": NaN}}</answer>',
    '<answer>{"overall_score": "\\ud800"}</answer>',  # a lone surrogate
    '<answer>\x00\x01\x02{"a": 1}\xff</answer>',
    "<answer>{" + '"a": ' * 5000 + "}</answer>",
    '<answer>{"a": ' + "[" * 100_000 + "]" * 100_000 + "}</answer>",  # nesting deeper than the recursion limit
    '<answer>{"overall_score": 1' + "0" * 400 + "}</answer>",  # an int too large for a float
    '<answer>{"overall_score": 1' + "0" * 5000 + "}</answer>",  # past Python's int-parsing digit limit
    '<answer>{"dimensional_scores": ' + json.dumps(GOOD_SCORES) + ', "overall_score": 1e999}</answer>',
    "<answer>" * 10_000,
]


@pytest.mark.parametrize("text", GARBAGE, ids=range(len(GARBAGE)))
def test_never_raises_on_garbage(text):
    parsed = parse_answer(text)
    assert isinstance(parsed, ParsedAnswer) and isinstance(parsed.error, str) and parsed.error


def test_never_raises_on_random_mutations_of_a_valid_answer():
    """Random byte-level damage to a valid CoT: the parser returns either a clean parse or an error, never raises,
    and a result without error always carries all five dimensions and an overall score in [1, 5]."""
    rng = random.Random(0)
    valid = "Seen: a red square. " + answer()
    alphabet = list('{}[]":,<>/ \n0123456789.-eNA' + "answer")
    for _ in range(2000):
        chars = list(valid)
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(len(chars))
            action = rng.random()
            if action < 0.4:
                chars[position] = rng.choice(alphabet)
            elif action < 0.7:
                del chars[position]
            else:
                chars.insert(position, rng.choice(alphabet))
        parsed = parse_answer("".join(chars))
        assert isinstance(parsed, ParsedAnswer)
        if parsed.error is None:
            assert set(parsed.dimensional_scores) == set(DIMENSIONS)
            assert all(value in (0, 1, 2, "N/A") for value in parsed.dimensional_scores.values())
            assert 1.0 <= parsed.overall_score <= 5.0


# ---------------------------------------------------------------------- load_template
def test_none_gives_the_built_in_template():
    template = load_template(None)
    assert template == default_template()
    assert "{prompt}" in template
    instruction = template.format(prompt="a red square moving right")
    assert "a red square moving right" in instruction and "<answer>" in instruction


def test_template_text_is_returned_as_is():
    text = "Judge the video for the prompt: {prompt}\nEnd with <answer>{{json}}</answer>."
    assert load_template(text) == text


def test_template_from_a_file(tmp_path):
    text = "Rate this video against {prompt}.\nAnswer as <answer>{{...}}</answer>.\n"
    path = tmp_path / "judge.txt"
    path.write_text(text)
    assert load_template(str(path)) == text


def test_missing_prompt_field():
    with pytest.raises(ValueError, match=r"has no \{prompt\} field"):
        load_template("Judge the video. End with <answer>{{json}}</answer>.")


def test_file_without_prompt_field(tmp_path):
    path = tmp_path / "judge.txt"
    path.write_text("Judge the video.\n")
    with pytest.raises(ValueError, match=r"has no \{prompt\} field"):
        load_template(str(path))


@pytest.mark.parametrize(
    "template",
    [
        "Judge {prompt} and end with <answer>{json}</answer>",  # an undoubled literal brace pair: unknown field
        "Judge {prompt} {",  # a lone opening brace
        "Judge {prompt} }",  # a lone closing brace
        "Judge {0} for {prompt}",  # a positional field
        "Judge {prompt!z}",  # a bad conversion
    ],
)
def test_stray_braces(template):
    with pytest.raises(ValueError, match=r"must be a str.format string whose only field is \{prompt\}"):
        load_template(template)


# ---------------------------------------------------------------------- the stage-2 rule reward's two readings
TRUTH = {"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 2, "style": 0}
TRUTH_AS_STRINGS = {"subject": "2", "dynamics": "1", "camera": "N/A", "environment": "2", "style": "0"}
WRONG = {"subject": 0, "dynamics": 0, "camera": 0, "environment": 0, "style": 2}


def block(scores, overall=3.5, fence=False, close=True, after=""):
    payload = json.dumps({"dimensional_scores": scores, "overall_score": overall})
    if fence:
        payload = f"```json\n{payload}\n```"
    return f"<answer>\n{payload}{after}\n" + ("</answer>" if close else "")


@pytest.mark.parametrize(
    "text, truth, official, lenient",
    [
        (block(TRUTH), TRUTH, (1.0, 1.0), (1.0, 1.0)),
        (block(TRUTH, fence=True), TRUTH, (1.0, 1.0), (1.0, 1.0)),
        # string digits vs integers: only "N/A" is == on both sides officially; the lenient reading matches all
        (block(TRUTH_AS_STRINGS), TRUTH, (0.2, 1.0), (1.0, 1.0)),
        (block(TRUTH), TRUTH_AS_STRINGS, (0.2, 1.0), (1.0, 1.0)),
        (block(TRUTH_AS_STRINGS), TRUTH_AS_STRINGS, (1.0, 1.0), (1.0, 1.0)),
        # a missing dimension counts as wrong officially; the lenient parser rejects the whole answer
        (block({k: v for k, v in TRUTH.items() if k != "style"}), TRUTH, (0.8, 1.0), (0.0, 0.0)),
        # 1.5 is no score: wrong officially, an invalid answer leniently
        (block({**TRUTH, "subject": 1.5}), TRUTH, (0.8, 1.0), (0.0, 0.0)),
        # no closing tag: no answer officially; the lenient parser reads to the end
        (block(TRUTH, close=False), TRUTH, (0.0, 0.0), (1.0, 1.0)),
        # text after the JSON inside the block: json.loads fails officially
        (block(TRUTH, after=" That is my verdict."), TRUTH, (0.0, 0.0), (1.0, 1.0)),
        # two answer blocks, the first wrong: the official reading takes the first, the lenient one the last
        ("draft " + block(WRONG) + " final " + block(TRUTH), TRUTH, (0.0, 1.0), (1.0, 1.0)),
        # JSON without dimensional_scores, no answer at all, not text
        ('<answer>{"overall_score": 4}</answer>', TRUTH, (0.0, 0.0), (0.0, 0.0)),
        ("I think it is fine.", TRUTH, (0.0, 0.0), (0.0, 0.0)),
        (None, TRUTH, (0.0, 0.0), (0.0, 0.0)),
    ],
)
def test_rule_reward_terms_official_and_lenient(text, truth, official, lenient):
    from descore_plugin.modeling.prompt import answer_agreement
    from descore_plugin.training.losses import rollout_reward

    for parser, (accuracy, form) in (("official", official), ("lenient", lenient)):
        terms = answer_agreement(text, truth, parser)
        assert (terms["accuracy"], terms["format"]) == pytest.approx((accuracy, form)), parser
    if isinstance(text, str):  # the default rollout reward is the official one: 0.7 acc + 0.1 format + 0.2 length
        reward = rollout_reward(text, truth)
        assert reward["reward"] == pytest.approx(0.7 * official[0] + 0.1 * official[1] + 0.2 * reward["length"])


def test_official_parser_returns_the_raw_object():
    from descore_plugin.modeling.prompt import parse_answer_official

    assert parse_answer_official(block(TRUTH_AS_STRINGS, fence=True))["dimensional_scores"]["subject"] == "2"
    assert parse_answer_official("<answer>[1, 2]</answer>") is None  # JSON, but not an object
    assert parse_answer_official("<answer>{bad json}</answer>") is None
    with pytest.raises(ValueError, match="answer parser 'strict'"):
        from descore_plugin.modeling.prompt import answer_agreement

        answer_agreement("x", TRUTH, "strict")
