"""The judge instruction and the parser for its `<answer>` block.

The instruction follows the structure of the DeScore prompt (arXiv 2605.05922, Sec. 3 and the official code):
a video-text alignment judge reasons in three stages (expectations, evidence, dimensional analysis), scores five
dimensions 2 / 1 / 0 / "N/A", gives an overall score in [1, 5] by interval rules, and ends with
`<answer>{"dimensional_scores": {...}, "overall_score": x}</answer>`. The wording is ours. A checkpoint trained with
another prompt wants that prompt back: pass `prompt_template=` (text or a path to a file) to `DeScoreConfig`.
"""

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DIMENSIONS = ("subject", "dynamics", "camera", "environment", "style")
PRIMARY_DIMENSIONS = ("subject", "dynamics")


def default_template() -> str:
    return resources.files("descore_plugin").joinpath("templates/judge_v1.txt").read_text()


# The official inference script's placeholder for the text prompt (its template is filled by plain replacement).
OFFICIAL_PLACEHOLDER = "[insert prompt here]"


def load_template(template: str | None) -> str:
    """`template` is None (the built-in judge prompt), a path to a text file, or the template text itself.

    Two template styles:
    - ours: a `str.format` string with one field, `{prompt}` (literal braces doubled: `{{`);
    - the official one: text holding `[insert prompt here]`, filled by plain replacement (its JSON example keeps
      single braces), usually with a `<video>` marker where the video goes.
    """
    if template is None:
        return default_template()
    if not isinstance(template, (str, Path)):
        raise TypeError(f"prompt template: expected text or a path, got {type(template).__name__}")
    if isinstance(template, Path) or (
        "\n" not in template and "{" not in template and OFFICIAL_PLACEHOLDER not in template
    ):
        path = Path(template)
        if not path.is_file():
            raise FileNotFoundError(
                f"prompt template: {template} is neither a file nor template text with a {{prompt}} field"
            )
        template = path.read_text()
    if "{prompt}" not in template and OFFICIAL_PLACEHOLDER in template:
        return template
    try:
        template.format(prompt="x")
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise ValueError(
            f"prompt template: must be a str.format string whose only field is {{prompt}} (double literal braces), or "
            f"text with the official placeholder {OFFICIAL_PLACEHOLDER}; formatting it failed with {error!r}"
        ) from None
    if "{prompt}" not in template:
        raise ValueError(
            f"prompt template: has no {{prompt}} field (nor {OFFICIAL_PLACEHOLDER}), so the judge would "
            "never see the text prompt"
        )
    return template


def build_instruction(template: str, prompt: str) -> str:
    if "{prompt}" not in template and OFFICIAL_PLACEHOLDER in template:
        return template.replace(OFFICIAL_PLACEHOLDER, prompt)
    return template.format(prompt=prompt)


VIDEO_MARKER = "<video>"


def video_content(instruction: str, name: str = "instruction") -> list[dict]:
    """The user turn's content parts for an instruction: the video goes where the instruction has the `<video>`
    marker (the official data and inference put it inside the text), or first when there is none."""
    parts = instruction.split(VIDEO_MARKER)
    if len(parts) == 1:
        return [{"type": "video"}, {"type": "text", "text": instruction}]
    if len(parts) > 2:
        raise ValueError(
            f"{name}: the instruction holds {VIDEO_MARKER} {len(parts) - 1} times; DeScore judges one video"
        )
    before, after = parts
    return [{"type": "text", "text": before}, {"type": "video"}, {"type": "text", "text": after}]


@dataclass
class ParsedAnswer:
    """What `parse_answer` read from a CoT. `error` is None when the answer block was well formed."""

    dimensional_scores: dict | None
    overall_score: float | None
    error: str | None


_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)


def parse_answer(text: str) -> ParsedAnswer:
    """Read the last `<answer>{json}</answer>` block of a CoT. Never raises: malformed output comes back with
    `error` set to the reason (model output is data, not a bug)."""
    if not isinstance(text, str):
        return ParsedAnswer(None, None, f"expected text, got {type(text).__name__}")
    blocks = _ANSWER.findall(text)
    if not blocks:
        return ParsedAnswer(None, None, "no <answer> block")
    body = blocks[-1].strip()
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return ParsedAnswer(None, None, "no JSON object after <answer>")
    try:
        answer = json.loads(body[start : end + 1])
    except json.JSONDecodeError as error:
        return ParsedAnswer(None, None, f"invalid JSON after <answer>: {error.msg} at char {error.pos}")
    except (ValueError, RecursionError) as error:  # absurd numbers or nesting: still model output, not a bug
        return ParsedAnswer(None, None, f"invalid JSON after <answer>: {type(error).__name__}")
    if not isinstance(answer, dict):
        return ParsedAnswer(None, None, "the <answer> JSON is not an object")
    scores = answer.get("dimensional_scores")
    if not isinstance(scores, dict):
        return ParsedAnswer(None, _overall(answer), "missing 'dimensional_scores' object")
    dims = {}
    for name in DIMENSIONS:
        value = normalize_dimension_score(scores.get(name))
        if value is None:
            return ParsedAnswer(
                None, _overall(answer), f"dimension '{name}' is {scores.get(name)!r}, expected 0, 1, 2 or \"N/A\""
            )
        dims[name] = value
    overall = _overall(answer)
    if overall is None:
        return ParsedAnswer(dims, None, "missing or non-numeric 'overall_score'")
    if not 1.0 <= overall <= 5.0:
        return ParsedAnswer(dims, overall, f"overall_score {overall} outside [1, 5]")
    return ParsedAnswer(dims, overall, None)


def normalize_dimension_score(value):
    """The lenient reading of one dimension score: 0 / 1 / 2 (int, integral float or digit string) -> int,
    "N/A" / "NA" in any case -> "N/A", anything else -> None."""
    if isinstance(value, str) and value.strip().upper() in ("N/A", "NA"):
        return "N/A"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1, 2):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1", "2"):
        return int(value.strip())
    return None


# The official stage-2 reward's reading: the FIRST block, closing tag required, then an optional ```json fence.
_OFFICIAL_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def parse_answer_official(text: str) -> dict | None:
    """The `<answer>` JSON exactly as the official stage-2 rule reward reads it (DeScore Sec. 3.3): the FIRST
    `<answer>...</answer>` block (an unclosed block is no answer), an inner ```json fence stripped, `json.loads` of
    what is left. Returns the object, or None when any step fails. Values are not normalised: "2" stays a string.
    (JSON that is not an object also gives None; the official code would fail on it later.)"""
    if not isinstance(text, str):
        return None
    match = _OFFICIAL_ANSWER.search(text)
    if match is None:
        return None
    content = match.group(1).strip()
    fence = _FENCE.search(content)
    if fence is not None:
        content = fence.group(1).strip()
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


ANSWER_PARSERS = ("official", "lenient")


def answer_agreement(text: str, truth: dict, parser: str = "official") -> dict:
    """The two answer-based terms of the stage-2 rule reward: {"accuracy": fraction of ground-truth dimensions the
    answer matches, "format": 1.0 when the answer holds `dimensional_scores`, else 0.0}.

    parser="official" (the official rule reward): `parse_answer_official`; a dimension matches when the predicted
        value is `==` to the ground truth as written in the data (so "2" != 2; a missing key is wrong); every key of
        `truth` counts; no parsable answer gives 0 for both terms.
    parser="lenient" (ours): `parse_answer` (the last block, closing tag optional, JSON found inside surrounding
        text); both sides read with `normalize_dimension_score`, so "2" == 2; format needs all five dimensions."""
    if parser == "official":
        data = parse_answer_official(text)
        if not data:
            return {"accuracy": 0.0, "format": 0.0}
        predicted = data.get("dimensional_scores", {})
        predicted = predicted if isinstance(predicted, dict) else {}
        matched = sum(key in predicted and predicted[key] == value for key, value in truth.items())
        return {"accuracy": matched / len(truth) if truth else 0.0, "format": float("dimensional_scores" in data)}
    if parser == "lenient":
        predicted = parse_answer(text).dimensional_scores
        dims = [name for name in DIMENSIONS if name in truth]
        matched = sum(
            predicted is not None and predicted[name] == normalize_dimension_score(truth[name]) for name in dims
        )
        return {"accuracy": matched / len(dims) if dims else 0.0, "format": float(predicted is not None)}
    raise ValueError(f"answer parser {parser!r}: expected one of {', '.join(ANSWER_PARSERS)}")


def _overall(answer: dict) -> float | None:
    value = answer.get("overall_score")
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # NaN / inf come back and fail the [1, 5] range check
    except (TypeError, ValueError, OverflowError):
        return None


def format_answer(dimensional_scores: dict, overall_score: float) -> str:
    """The canonical `<answer>` block (the synthetic world and tests write CoTs that end with it)."""
    ordered = {name: dimensional_scores[name] for name in DIMENSIONS}
    payload = json.dumps({"dimensional_scores": ordered, "overall_score": overall_score})
    return f"<answer>{payload}</answer>"
