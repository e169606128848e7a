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
ALLOWED_VALUES = (0, 1, 2, "N/A")


def default_template() -> str:
    return resources.files("descore_plugin").joinpath("templates/judge_v1.txt").read_text()


def load_template(template: str | None) -> str:
    """`template` is None (the built-in judge prompt), a path to a text file, or the template text itself.

    The template is a `str.format` string with one field, `{prompt}` (literal braces doubled: `{{`).
    """
    if template is None:
        return default_template()
    if isinstance(template, Path) or ("\n" not in template and "{" not in template):  # a file path
        path = Path(template)
        if not path.is_file():
            raise FileNotFoundError(f"prompt template: {template} is neither a file nor template text with a {{prompt}} field")
        template = path.read_text()
    try:
        template.format(prompt="x")
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        raise ValueError(
            f"prompt template: must be a str.format string whose only field is {{prompt}} (double literal braces); "
            f"formatting it failed with {error!r}"
        ) from None
    if "{prompt}" not in template:
        raise ValueError("prompt template: has no {prompt} field, so the judge would never see the text prompt")
    return template


def build_instruction(template: str, prompt: str) -> str:
    return template.format(prompt=prompt)


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
        value = scores.get(name)
        if isinstance(value, str) and value.strip().upper() in ("N/A", "NA"):
            value = "N/A"
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1, 2):
            value = int(value)
        elif isinstance(value, str) and value.strip() in ("0", "1", "2"):
            value = int(value.strip())
        else:
            return ParsedAnswer(None, _overall(answer), f"dimension '{name}' is {value!r}, expected 0, 1, 2 or \"N/A\"")
        dims[name] = value
    overall = _overall(answer)
    if overall is None:
        return ParsedAnswer(dims, None, "missing or non-numeric 'overall_score'")
    if not 1.0 <= overall <= 5.0:
        return ParsedAnswer(dims, overall, f"overall_score {overall} outside [1, 5]")
    return ParsedAnswer(dims, overall, None)


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
