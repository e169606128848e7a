"""Pair files: the format descore-plugin reads and writes, and the foreign formats it also reads.

The descore-plugin pair format
------------------------------
One pair of videos of the same text prompt per row, as CSV (header row, then one pair per row) or JSONL (one
JSON object per line). Fields:

| field      | required | meaning                                                                          |
|------------|----------|----------------------------------------------------------------------------------|
| video_a    | yes      | path of video A; a relative path is relative to the pair file's folder           |
| video_b    | yes      | path of video B; same rule                                                       |
| prompt     | yes      | the text prompt both videos were generated from                                  |
| label      | yes      | which video humans preferred: "A", "B", "tie" or "invalid" (kept, never trained) |
| cot_a      | no       | a chain of thought about video A, ending in the `<answer>{json}</answer>` block  |
| cot_b      | no       | the same for video B                                                             |
| scores_a   | stage 2  | ground-truth dimension scores of video A: a JSON object with exactly the keys     |
|            |          | subject, dynamics, camera, environment, style and values 0, 1, 2 or "N/A" (the   |
|            |          | strings "0", "1", "2" too; kept as written, see below)                           |
| scores_b   | stage 2  | the same for video B                                                             |
| slice      | no       | a free tag for slicing accuracy (the synthetic world writes the defect that      |
|            |          | differs, e.g. "subject")                                                         |
| instruction| no       | the judge instruction the pair was annotated with (official CSV `problem`)       |

In CSV an empty cell means "absent"; scores_a / scores_b are JSON text. In JSONL they may be objects or JSON
text. Example JSONL row:

    {"video_a": "videos/0_a.mp4", "video_b": "videos/0_b.mp4", "prompt": "a red square moving right on a dark
     background", "label": "A", "scores_a": {"subject": 2, "dynamics": 2, "camera": 2, "environment": 2,
     "style": 2}, "scores_b": {"subject": 0, ...}, "slice": "subject"}

Formats also read (detected from the columns / keys of each row)
----------------------------------------------------------------
- official DeScore CSV (arXiv 2605.05922 code): `videos` = [path_A, path_B] (JSON or Python-literal list),
  `problem` (kept as `instruction`), `prompt`, `CoT_A`, `CoT_B`, `GSB` in {A, B, same, invalid} (same -> tie).
  Stage-2 rows carry `answer`: JSON, possibly inside `<answer>...</answer>` and/or a ```json fence, with
  `video_1_scores` / `video_2_scores` (-> scores_a / scores_b). The JSON's verdict is kept as `answer_label`
  (what the official stage 2's BT loss reads): its `gsb_result` ("Video 1 is better" or "A" -> A, "Video 2 is
  better" or "B" -> B, anything else -> tie), else a verdict string in the JSON ("... same/equal/tie" -> tie).
  A row without `GSB` takes its label from that verdict.
- VideoAlign training CSV and VideoGen-RewardBench: `path_A`, `path_B`, `prompt`, label column `Overall` in
  {A, B, same} (same -> tie); other columns (VQ, MQ, TA, fps_A, ...) are ignored unless `label_column` (the
  recipes' `--label-column`, e.g. TA) names one of them as the label instead (needed when there is no `Overall`).
- GenAI-Bench video: `left_video`, `right_video`, `prompt`, `vote_type` in {leftvote, rightvote, tievote,
  bothbad_vote}; tievote and bothbad_vote -> tie, as reward-model evaluations on this benchmark do.

Ground-truth values are kept as written ("2" stays a string): the official stage-2 rule reward compares the model's
answer with `==`, so a dataset that writes strings expects strings back. The lenient parser reads both as numbers.
The official `problem` (the full judge instruction of the row, with a `<video>` marker where the video goes) becomes
`Pair.instruction`; training and scoring use it instead of the model's template.

`load_pairs` checks everything up front (labels, JSON, score values, that the video files exist) and raises
`DataError` naming the file, the row (1-based data row; JSONL: line) and the field.
"""

import ast
import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from descore_plugin.modeling.prompt import DIMENSIONS
from descore_plugin.utils.errors import UserError
from descore_plugin.utils.jsonl import read_jsonl

__all__ = ["LABELS", "DataError", "Pair", "load_pairs", "save_pairs"]

LABELS = ("A", "B", "tie", "invalid")
SCORE_VALUES = (0, 1, 2, "N/A")
SCORE_STRINGS = ("0", "1", "2")  # the official CSV may write the ground truth as strings
FIELDS = ("video_a", "video_b", "prompt", "label", "cot_a", "cot_b", "scores_a", "scores_b", "slice", "instruction")

_OFFICIAL_LABELS = {"A": "A", "B": "B", "same": "tie", "invalid": "invalid"}
_VIDEOALIGN_LABELS = {"A": "A", "B": "B", "same": "tie"}
_GENAI_LABELS = {"leftvote": "A", "rightvote": "B", "tievote": "tie", "bothbad_vote": "tie"}


class DataError(UserError):
    """A pair file that cannot be used; the message names the file, the row and the field."""


@dataclass
class Pair:
    """One labelled pair of videos of the same prompt (see the module docstring for the file format)."""

    video_a: str  # path of video A, resolved against the pair file's folder when it was relative
    video_b: str  # path of video B, resolved the same way
    prompt: str  # the text prompt of both videos
    label: str  # "A", "B", "tie" or "invalid"
    cot_a: str | None = None  # chain of thought about video A ending in the <answer> block, if given
    cot_b: str | None = None  # the same for video B
    scores_a: dict | None = None  # stage-2 ground truth of video A: the five dimensions -> 0 / 1 / 2 / "N/A"
    scores_b: dict | None = None  # the same for video B
    slice: str | None = None  # free tag for sliced accuracy (the synthetic world: the defect that differs)
    instruction: str | None = None  # the judge instruction of the official CSV (`problem`), if given
    origin: str = ""  # where the pair was read from ("pairs.csv, row 3"), for error messages downstream
    video_fields: tuple[str, str] = ("video_a", "video_b")  # the columns that named video_a / video_b in the file
    answer_label: str | None = None  # official stage-2 rows: the verdict in `answer` (its gsb_result), which the
    # official stage 2's auxiliary BT loss reads ("A", "B", or "tie" for anything else: no BT term); None: no verdict

    @property
    def videos(self) -> tuple[str, str]:
        return self.video_a, self.video_b


def load_pairs(
    path,
    *,
    require_scores: bool = False,
    check_videos: bool = True,
    label_column: str | None = None,
    require_labels: bool = True,
) -> list[Pair]:
    """Read and validate a pair file (.csv or .jsonl) in any format of the module docstring.

    require_scores: every row must carry scores_a and scores_b (stage-2 RL needs the per-dimension truth).
    check_videos: every video path must be an existing file.
    label_column: VideoAlign / VideoGen-RewardBench files only: the column holding the label (default `Overall`;
        e.g. `TA`, `VQ` or `MQ` for one aspect, or for a file that has no `Overall`).
    require_labels: False for readers that use only videos, prompts and instructions (`descore score`): a row whose
        label is missing or unreadable (a VideoAlign file without `Overall`, an official row without `GSB` or verdict)
        is read with the label "invalid" (never trained) instead of stopping; everything else is checked as usual.
    Raises DataError naming file, row and field for the first problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pair file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path)
    elif suffix == ".jsonl":
        records = _read_jsonl(path)
    else:
        raise DataError(f"{path}: unsupported extension {path.suffix!r}; pair files are .csv or .jsonl")
    if not records:
        raise DataError(f"{path}: has no data rows")
    pairs = []
    for where, record in records:
        pair = _parse_record(record, where, path.parent, label_column, require_labels)
        if require_scores and (pair.scores_a is None or pair.scores_b is None):
            missing = "scores_a" if pair.scores_a is None else "scores_b"
            raise DataError(
                f"{where}, field '{missing}': missing, but stage-2 training needs per-dimension ground truth for "
                "both videos (descore-plugin: scores_a / scores_b; official CSV: answer with video_1_scores / "
                "video_2_scores)"
            )
        if check_videos:
            for field, video in zip(pair.video_fields, pair.videos):
                if os.path.isdir(video):
                    raise DataError(f"{where}, field '{field}': {video} is a folder, not a video file")
                if not os.path.isfile(video):
                    raise DataError(
                        f"{where}, field '{field}': video file not found: {video} "
                        f"(relative paths resolve against the pair file's folder {path.parent})"
                    )
        pairs.append(pair)
    return pairs


def save_pairs(path, pairs: list[Pair]) -> Path:
    """Write pairs in the descore-plugin format, JSONL or CSV by the extension of `path`.

    Video paths inside the file's folder are written relative to it (the folder can move); others stay absolute.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise DataError(f"{path}: unsupported extension {path.suffix!r}; pair files are .csv or .jsonl")
    if not pairs:
        raise DataError(f"{path}: no pairs to save")
    folder = path.parent.resolve()
    rows = []
    for index, pair in enumerate(pairs):
        if pair.label not in LABELS:
            raise DataError(f"pairs[{index}].label = {pair.label!r} is not one of {', '.join(LABELS)}")
        row = {
            "video_a": _relative_if_inside(pair.video_a, folder),
            "video_b": _relative_if_inside(pair.video_b, folder),
            "prompt": pair.prompt,
            "label": pair.label,
            "cot_a": pair.cot_a,
            "cot_b": pair.cot_b,
            "scores_a": pair.scores_a,
            "scores_b": pair.scores_b,
            "slice": pair.slice,
            "instruction": pair.instruction,
        }
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps({key: value for key, value in row.items() if value is not None}) + "\n")
    else:
        with open(path, "w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _csv_cell(value) for key, value in row.items()})
    return path


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _read_csv(path: Path) -> list[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as file:
        text = file.read()
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(f"{path.name}: header has duplicate columns {duplicates}")
    records = []
    try:
        for row_number, row in enumerate(reader, start=1):
            where = f"{path.name}, row {row_number}"
            if None in row:
                raise DataError(f"{where}: has {len(header) + len(row[None])} fields but the header has {len(header)}")
            missing = [name for name, value in row.items() if value is None]
            if missing:
                raise DataError(f"{where}: has fewer fields than the header; missing {missing}")
            records.append((where, row))
    except csv.Error as error:
        raise DataError(f"{path.name}, row {len(records) + 1}: malformed CSV ({error})") from None
    return records


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    rows = read_jsonl(path, DataError, name=path.name)
    if not rows:
        raise DataError(f"{path}: file is empty")
    return [(f"{path.name}, line {line_number}", record) for line_number, record in rows]


def _parse_record(
    record: dict, where: str, folder: Path, label_column: str | None = None, require_labels: bool = True
) -> Pair:
    videoalign = "path_A" in record or "path_B" in record
    if label_column is not None and not videoalign:
        raise DataError(
            f"{where}: --label-column {label_column} applies to VideoAlign / VideoGen-RewardBench files "
            "(path_A, path_B, ...); this file's format has a fixed label field"
        )
    if "video_a" in record or "video_b" in record:
        parse = _parse_native
    elif "videos" in record:
        parse = _parse_official
    elif videoalign:
        return _parse_videoalign(
            record, where, folder, label_column or "Overall", label_column is None, require_labels=require_labels
        )
    elif "left_video" in record or "right_video" in record:
        parse = _parse_genai
    else:
        parse = None
    if parse is not None:
        return parse(record, where, folder, require_labels=require_labels)
    raise DataError(
        f"{where}: cannot tell the format from the fields {sorted(record)}; expected video_a/video_b "
        "(descore-plugin), videos (official DeScore), path_A/path_B (VideoAlign, VideoGen-RewardBench) "
        "or left_video/right_video (GenAI-Bench)"
    )


def _parse_native(record: dict, where: str, folder: Path, require_labels: bool = True) -> Pair:
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown fields {unknown}; the descore-plugin format has {list(FIELDS)}")
    label = record.get("label") if not require_labels else _required_text(record, "label", where)
    if label not in LABELS:
        if not require_labels:
            label = "invalid"
        else:
            raise DataError(f"{where}, field 'label': {label!r} is not one of {', '.join(LABELS)}")
    return Pair(
        video_a=_video_path(record, "video_a", where, folder),
        video_b=_video_path(record, "video_b", where, folder),
        prompt=_required_text(record, "prompt", where),
        label=label,
        cot_a=_optional_text(record, "cot_a", where),
        cot_b=_optional_text(record, "cot_b", where),
        scores_a=_scores(record.get("scores_a"), f"{where}, field 'scores_a'"),
        scores_b=_scores(record.get("scores_b"), f"{where}, field 'scores_b'"),
        slice=_optional_text(record, "slice", where),
        instruction=_optional_text(record, "instruction", where),
        origin=where,
    )


def _parse_official(record: dict, where: str, folder: Path, require_labels: bool = True) -> Pair:
    videos = record["videos"]
    if isinstance(videos, str):
        try:
            videos = json.loads(videos)
        except json.JSONDecodeError:
            try:
                videos = ast.literal_eval(videos)
            except (ValueError, SyntaxError):
                raise DataError(
                    f"{where}, field 'videos': {videos!r} is not a JSON or Python list [path_A, path_B]"
                ) from None
    if not isinstance(videos, (list, tuple)) or len(videos) != 2 or not all(isinstance(v, str) for v in videos):
        raise DataError(f"{where}, field 'videos': expected a list of two paths [path_A, path_B], got {videos!r}")
    scores_a = scores_b = verdict = None
    answer = record.get("answer")
    if answer not in (None, ""):
        truth = _answer_json(answer, f"{where}, field 'answer'")
        for key in ("video_1_scores", "video_2_scores"):
            if key not in truth:
                raise DataError(
                    f"{where}, field 'answer': the ground-truth JSON has no '{key}' (keys: {sorted(truth)})"
                )
        scores_a = _scores(truth["video_1_scores"], f"{where}, field 'answer', key 'video_1_scores'")
        scores_b = _scores(truth["video_2_scores"], f"{where}, field 'answer', key 'video_2_scores'")
        verdict = _gsb_result(truth) if "gsb_result" in truth else _verdict(truth)
    gsb = record.get("GSB")
    if gsb not in (None, ""):
        if gsb not in _OFFICIAL_LABELS and require_labels:
            raise DataError(f"{where}, field 'GSB': {gsb!r} is not one of {', '.join(_OFFICIAL_LABELS)}")
        label = _OFFICIAL_LABELS.get(gsb, "invalid")
    elif verdict is not None:
        label = verdict
    elif not require_labels:
        label = "invalid"
    else:
        raise DataError(
            f"{where}, field 'GSB': missing, and no verdict ('Video 1 is better', 'Video 2 is better', ... same) "
            "in 'answer' to take the label from"
        )
    return Pair(
        video_a=_resolve(videos[0], f"{where}, field 'videos'", folder),
        video_b=_resolve(videos[1], f"{where}, field 'videos'", folder),
        prompt=_required_text(record, "prompt", where),
        label=label,
        cot_a=_optional_text(record, "CoT_A", where),
        cot_b=_optional_text(record, "CoT_B", where),
        scores_a=scores_a,
        scores_b=scores_b,
        instruction=_optional_text(record, "problem", where),
        origin=where,
        video_fields=("videos[0]", "videos[1]"),
        answer_label=verdict,
    )


def _parse_videoalign(
    record: dict, where: str, folder: Path, column: str = "Overall", default: bool = True, require_labels: bool = True
) -> Pair:
    if not require_labels and record.get(column) not in _VIDEOALIGN_LABELS:
        record = {**record, column: "invalid"}  # read as "invalid" below: the caller does not use labels
    elif column not in record:
        others = [name for name in record if name not in ("path_A", "path_B", "prompt")]
        raise DataError(
            f"{where}: no label column '{column}' (columns: {', '.join(others)}); "
            + (
                "choose the column that holds the A / B / same label with --label-column (e.g. --label-column TA)"
                if default
                else "pass one of those to --label-column"
            )
        )
    label = _required_text(record, column, where)
    if label not in _VIDEOALIGN_LABELS and require_labels:
        raise DataError(f"{where}, field '{column}': {label!r} is not one of {', '.join(_VIDEOALIGN_LABELS)}")
    return Pair(
        video_a=_video_path(record, "path_A", where, folder),
        video_b=_video_path(record, "path_B", where, folder),
        prompt=_required_text(record, "prompt", where),
        label=_VIDEOALIGN_LABELS.get(label, "invalid"),
        origin=where,
        video_fields=("path_A", "path_B"),
    )


def _parse_genai(record: dict, where: str, folder: Path, require_labels: bool = True) -> Pair:
    vote = _required_text(record, "vote_type", where) if require_labels else record.get("vote_type")
    if vote not in _GENAI_LABELS and require_labels:
        raise DataError(f"{where}, field 'vote_type': {vote!r} is not one of {', '.join(_GENAI_LABELS)}")
    return Pair(
        video_a=_video_path(record, "left_video", where, folder),
        video_b=_video_path(record, "right_video", where, folder),
        prompt=_required_text(record, "prompt", where),
        label=_GENAI_LABELS.get(vote, "invalid"),
        origin=where,
        video_fields=("left_video", "right_video"),
    )


def _required_text(record: dict, field: str, where: str) -> str:
    value = record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}, field '{field}': missing or empty")
    if not isinstance(value, str):
        raise DataError(f"{where}, field '{field}': expected text, got {type(value).__name__} {value!r}")
    return value


def _optional_text(record: dict, field: str, where: str) -> str | None:
    value = record.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}, field '{field}': expected text, got {type(value).__name__} {value!r}")
    return value


def _video_path(record: dict, field: str, where: str, folder: Path) -> str:
    return _resolve(_required_text(record, field, where), f"{where}, field '{field}'", folder)


def _resolve(video: str, where: str, folder: Path) -> str:
    if not video.strip():
        raise DataError(f"{where}: empty video path")
    video = os.path.expanduser(video)
    return video if os.path.isabs(video) else os.path.normpath(os.path.join(folder, video))


def _scores(value, where: str) -> dict | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: malformed JSON ({error.msg} at char {error.pos})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object over {', '.join(DIMENSIONS)}, got {value!r}")
    if set(value) != set(DIMENSIONS):
        missing = [name for name in DIMENSIONS if name not in value]
        unknown = sorted(set(value) - set(DIMENSIONS))
        raise DataError(
            f"{where}: needs exactly the keys {', '.join(DIMENSIONS)} (missing {missing}, unknown {unknown})"
        )
    scores = {}
    for name in DIMENSIONS:
        score = value[name]
        if isinstance(score, bool) or not (score in SCORE_VALUES or score in SCORE_STRINGS):
            raise DataError(
                f'{where}: \'{name}\' = {score!r} is not one of 0, 1, 2, "N/A" (or the strings "0", "1", "2")'
            )
        # Kept as written: the official rule reward compares with `==`, so "2" and 2 are different ground truths.
        scores[name] = int(score) if isinstance(score, float) else score
    return scores


_ANSWER_BLOCK = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def _answer_json(answer, where: str) -> dict:
    if isinstance(answer, dict):
        return answer
    if not isinstance(answer, str):
        raise DataError(f"{where}: expected JSON text, got {type(answer).__name__}")
    text = answer
    block = _ANSWER_BLOCK.search(text)
    if block:
        text = block.group(1)
    fence = _FENCE.search(text)
    if fence:
        text = fence.group(1)
    try:
        truth = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: malformed JSON ({error.msg} at char {error.pos})") from None
    if not isinstance(truth, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(truth).__name__}")
    return truth


def _gsb_result(truth: dict) -> str:
    """The pair verdict as the official stage 2 reads it from the ground-truth JSON: its `gsb_result`, exactly
    "Video 1 is better" or "A" -> A, "Video 2 is better" or "B" -> B; anything else (a tie, a typo) -> "tie", which
    the official auxiliary BT loss skips."""
    value = truth.get("gsb_result")
    return {"Video 1 is better": "A", "A": "A", "Video 2 is better": "B", "B": "B"}.get(value, "tie")


def _verdict(truth: dict) -> str | None:
    for value in truth.values():
        if not isinstance(value, str):
            continue
        text = value.lower()
        if re.search(r"video\s*1\s+is\s+better", text):
            return "A"
        if re.search(r"video\s*2\s+is\s+better", text):
            return "B"
        if re.search(r"\b(same|equal|equally|tie)\b", text):
            return "tie"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _relative_if_inside(video: str, folder: Path) -> str:
    absolute = Path(video).resolve()
    try:
        return absolute.relative_to(folder).as_posix()
    except ValueError:
        return str(absolute)


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value)
    return value
