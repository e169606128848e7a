"""Every video of the training data checked before step 1: one bad file must not kill a run at step 9.

`load_pairs` (data.py) checks the pair file itself and that each video path is a file; this module checks that each
DISTINCT video decodes and has enough frames for the model's sampling settings (fps / num_frames), by decoding it
exactly as training will (the trainer passes its video cache as `load`, so nothing is decoded twice). The videos
are decoded in a thread pool (the decoders release the GIL) behind a progress bar.

A bad video is reported with the pair file, the row and the field that name it. Without `skip`, the first one
stops the run (a `DataError`: one line, exit status 2 on the command line). With `skip` (`--skip-bad-rows`),
every row with a bad video is left out and listed, one JSON object per line, in the report file:

    {"data": "pairs.csv", "row": 40, "field": "path_B", "file": "/data/v/clip_17.mp4",
     "reason": "num_frames=8 but the video has only 2 frames; ask for fewer frames."}

`row` is the 1-based data row of a CSV (the header is not counted) or the line of a JSONL file.
"""

import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from descore_plugin.data.pairs import DataError, Pair
from descore_plugin.data.video import VideoInputError
from descore_plugin.utils.files import atomic_write_text

__all__ = [
    "BadRow",
    "find_bad_rows",
    "check_training_videos",
    "write_skipped_rows",
    "sampling_settings",
    "SKIPPED_ROWS_FILE",
]

SKIPPED_ROWS_FILE = "skipped_rows.jsonl"

logger = logging.getLogger(__name__)

_ROW = re.compile(r"(?:row|line) (\d+)$")


@dataclass
class BadRow:
    """A row of a pair file whose video cannot be used."""

    data: str  # the pair file
    row: int | None  # 1-based data row (CSV) or line (JSONL); None when the pair did not come from a file
    field: str  # the column naming the video (video_a, path_B, videos[0], ...)
    file: str  # the video path
    reason: str  # what is wrong with it

    def message(self) -> str:
        where = f"{Path(self.data).name}, row {self.row}" if self.row is not None else self.data
        return f"{where}, field '{self.field}': {self.file}: {self.reason}"


def _video_fields(pair: Pair) -> tuple[str, str]:
    return getattr(pair, "video_fields", None) or ("video_a", "video_b")


def _check_one(path: str, load) -> str | None:
    """None when `load(path)` decodes the video, else the reason (without the path it starts with)."""
    try:
        load(path)
    except (VideoInputError, OSError) as error:
        reason = " ".join(str(error).split())
        for prefix in (f"{path}: ", f"{path} "):
            reason = reason.removeprefix(prefix)
        return reason
    return None


def _quiet_decoders():
    """Keep the decoders' own FFmpeg log lines off the terminal: a bad file is reported once, by us."""
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except (ImportError, AttributeError):
        pass


def find_bad_rows(
    pairs: list[Pair],
    load,
    data: str,
    *,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "checking videos",
) -> list[BadRow]:
    """Decode every distinct video of `pairs` once with `load` (path -> decoded video, raising VideoInputError),
    `workers` at a time, and return one BadRow per (row, field) whose video failed, in file order."""
    paths = list(dict.fromkeys(path for pair in pairs for path in pair.videos))
    workers = workers or min(8, os.cpu_count() or 1, max(1, len(paths)))
    _quiet_decoders()
    reasons = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_check_one, path, load): path for path in paths}
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="video", disable=not progress):
            reason = future.result()
            if reason is not None:
                reasons[futures[future]] = reason
    bad = []
    for pair in pairs:
        match = _ROW.search(pair.origin or "")
        row = int(match.group(1)) if match else None
        for field, path in zip(_video_fields(pair), pair.videos):
            if path in reasons:
                bad.append(BadRow(data=str(data), row=row, field=field, file=path, reason=reasons[path]))
    return bad


def check_training_videos(
    train_pairs: list[Pair],
    eval_pairs: list[Pair] | None,
    load,
    *,
    train_data: str,
    eval_data: str | None = None,
    skip: bool = False,
    report_path=None,
    main_process: bool = True,
    workers: int | None = None,
):
    """Check the videos of the training (and evaluation) pairs before training starts.

    Returns `(train_pairs, eval_pairs, bad_rows)`: without `skip`, a bad video raises DataError naming the first bad
    row's file, row and field and how many rows are bad; with `skip`, the rows with bad videos are left out, a line
    says how many, and `bad_rows` lists them (`write_skipped_rows` writes them to `report_path`, once the output
    folder may be written).
    """
    bad = find_bad_rows(
        train_pairs, load, train_data, workers=workers, progress=main_process, desc="checking training videos"
    )
    if eval_pairs:
        bad += find_bad_rows(
            eval_pairs, load, eval_data, workers=workers, progress=main_process, desc="checking evaluation videos"
        )
    if not bad:
        return train_pairs, eval_pairs, []
    rows = {(b.data, b.row) for b in bad}
    if not skip:
        more = f" ({len(rows)} rows have unusable videos)" if len(rows) > 1 else ""
        raise DataError(
            f"{bad[0].message()}{more}; fix or remove the row, or pass --skip-bad-rows to go on with the "
            "other rows (the skipped ones are then listed in the output folder)"
        )

    def keep(pairs, data):
        bad_files = {b.file for b in bad if b.data == str(data)}
        return [p for p in pairs if not bad_files.intersection(p.videos)]

    train_kept = keep(train_pairs, train_data)
    eval_kept = keep(eval_pairs, eval_data) if eval_pairs else eval_pairs
    if not train_kept:
        raise DataError(
            f"{train_data}: every one of the {len(train_pairs)} rows has an unusable video (first: {bad[0].message()})"
        )
    if eval_pairs and not eval_kept:
        raise DataError(
            f"{eval_data}: every one of the {len(eval_pairs)} evaluation rows has an unusable video "
            f"(first: {next(b for b in bad if b.data == str(eval_data)).message()})"
        )
    if main_process:
        listed = f"; listed in {report_path}" if report_path is not None else ""
        logger.warning(
            f"--skip-bad-rows: left out {len(train_pairs) - len(train_kept)} of {len(train_pairs)} rows of "
            f"{train_data}"
            + (f" and {len(eval_pairs) - len(eval_kept)} of {len(eval_pairs)} of {eval_data}" if eval_pairs else "")
            + f" with unusable videos{listed}"
        )
    return train_kept, eval_kept, bad


def write_skipped_rows(path, bad: list[BadRow]) -> Path:
    """The skipped rows as JSON lines (see the module docstring); an empty file when none was skipped."""
    return atomic_write_text(path, "".join(json.dumps(asdict(b)) + "\n" for b in bad))


def sampling_settings(model) -> tuple | None:
    """`(fps, num_frames)` of a local DeScore checkpoint, read from its config without loading it; None when the
    model is not a local folder with a descore_config.json (a hub id, a plain backbone): known once loaded."""
    from descore_plugin.modeling.model import CONFIG_NAME, DeScoreConfig

    path = Path(str(model)) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        config = DeScoreConfig.from_dict(json.loads(path.read_text()), source=str(path))
    except (OSError, ValueError, TypeError):  # reported properly by the model load itself
        return None
    return config.fps, config.num_frames
