"""One reader of JSON-lines files (pair files, scored sets, metrics, score tables): one object per line.

    from descore_plugin.utils.jsonl import read_jsonl

    for line_number, row in read_jsonl("scores.jsonl", ReportInputError):
        ...

Blank lines are skipped; a byte-order mark is tolerated (spreadsheet exports write one). A line that is not JSON, or
JSON that is not an object, raises the caller's error class naming the file and the line, so that a user error of
a command line stays one line (`prog: error: scores.jsonl, line 3: malformed JSON (...)`).
"""

import json
from pathlib import Path

from descore_plugin.utils.errors import UserError

__all__ = ["read_jsonl"]


def read_jsonl(path, error: type[Exception] = UserError, *, name: str | None = None) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of `path`, numbered from 1.

    error: the exception class raised for a line that is not a JSON object (a UserError subclass of the caller's
    module); name: how the message names the file (default: the path as given)."""
    path = Path(path)
    name = str(path) if name is None else name
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as decode_error:
                raise error(
                    f"{name}, line {number}: malformed JSON ({decode_error.msg} at char {decode_error.pos})"
                ) from None
            if not isinstance(row, dict):
                raise error(f"{name}, line {number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((number, row))
    return rows
