"""`descore score`: score one video or a whole data set, streaming, resumable, one JSON row per video.

    descore score a.mp4 b.mp4 --prompt "..." [--json]            # rows on stdout, as before
    descore score videos/ --prompt "..." --output scores.jsonl    # a folder (its video files, sorted)
    descore score "videos/**/*.mp4" --prompt "..." --output scores.jsonl
    descore score table.csv --output scores.jsonl                 # CSV / JSONL with `video` and `prompt` columns
    descore score pairs.csv --output scores.jsonl                 # a pair file training reads: each video once
                                                                  # (the official CSV: with its row's `problem`)

Videos are decoded and sampled in DataLoader worker processes (`--num-workers`) a chunk (`--batch-size`) at a time
ahead of the model (descore_plugin.data.loader.stream_videos), so memory does not grow with the number of videos. Each
row is appended to OUT.jsonl and flushed as soon as its chunk is scored:

    {"video", "prompt", "reward", "cot", "dimensional_scores", "overall_score", "parse_error", "uncertainty"}
    {"video", "prompt", "error"}                    a missing or corrupt video, an empty prompt: named, never scored

A pair file's row that carries its own judge instruction (the official DeScore CSV's `problem`, our `instruction`) is
scored with it, as training and evaluation use it (descore_plugin.data.pairs), instead of the model's template or
--prompt-template; its rows then have an "instruction" field too.

An existing OUT.jsonl is refused unless --resume (continue it) or --overwrite (start again), as every command treats
its output. With --resume every (video, prompt, instruction) already in it is skipped, so no row is written twice (a
half-written last line from a killed run is dropped first). To retry failed rows, delete them from the file.
Exit status: 0 every row scored, 1 some row of the output failed (error rows), 2 a usage error (nothing scored).
"""

import csv
import glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from descore_plugin.utils.errors import UserError, prepare_output_dir, set_resume_hint
from descore_plugin.utils.jsonl import read_jsonl

__all__ = ["ScoreItem", "ScoreUsageError", "expand_inputs", "score_rows", "score_command", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg")
"""What a folder given as INPUT contributes (other files in it are ignored)."""
TABLE_SUFFIXES = (".csv", ".jsonl")


class ScoreUsageError(UserError):
    """The command was called wrongly (exit status 2); the message names the input or flag."""


@dataclass
class ScoreItem:
    video: str  # the path as written in the output row
    prompt: str | None
    error: str | None = None  # known before decoding (a table row without a video or prompt)
    instruction: str | None = None  # a pair file row's own judge instruction (official CSV `problem`), if any

    @property
    def key(self) -> tuple:
        """What --resume recognises a scored row by."""
        return self.video, self.prompt, self.instruction

    def row(self, **fields) -> dict:
        """An output row of this item: video, prompt, the instruction when it has one, then `fields`."""
        head = {"video": self.video, "prompt": self.prompt}
        if self.instruction is not None:
            head["instruction"] = self.instruction
        return {**head, **fields}


def expand_inputs(inputs: list[str], prompts) -> list[ScoreItem]:
    """The (video, prompt) items of INPUT...: video files, folders (their files with a VIDEO_SUFFIXES suffix, sorted),
    glob patterns (sorted matches), or a single CSV / JSONL table with `video` and `prompt` columns (relative video
    paths resolve against the table's folder). `prompts`: one text for every video, or a list with one per video."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
    tables = [i for i in inputs if Path(i).suffix.lower() in TABLE_SUFFIXES]
    if tables:
        if len(inputs) != 1:
            raise ScoreUsageError(f"{tables[0]}: a CSV/JSONL table must be the only INPUT (got {len(inputs)} inputs)")
        if prompts:
            raise ScoreUsageError(f"{tables[0]}: the table's `prompt` column gives each video's prompt; drop --prompt")
        return _read_table(Path(tables[0]))
    videos = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise ScoreUsageError(f"{entry}: a folder with no video files ({', '.join(VIDEO_SUFFIXES)})")
            videos += found
        elif not path.exists() and any(c in entry for c in "*?["):
            found = sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
            if not found:
                raise ScoreUsageError(f"{entry}: the pattern matches no file")
            videos += found
        else:
            videos.append(entry)  # a file, or a missing one: scored, or reported in its row
    if not prompts:
        raise ScoreUsageError(
            "--prompt is required: the text the videos were generated from (or give a CSV/JSONL "
            "table with `video` and `prompt` columns)"
        )
    if len(prompts) == 1:
        prompts = prompts * len(videos)
    elif len(prompts) != len(videos):
        raise ScoreUsageError(
            f"{len(prompts)} --prompt flags for {len(videos)} videos: pass one --prompt for all "
            "videos, or exactly one per video (in the order of the videos)"
        )
    items = [ScoreItem(video, prompt) for video, prompt in zip(videos, prompts)]
    for item in items:
        if not item.prompt.strip():
            item.error = "empty prompt: DeScore judges a video against its text prompt"
    return items


def _read_table(path: Path) -> list[ScoreItem]:
    if not path.is_file():
        raise ScoreUsageError(f"{path}: table not found")
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            columns = reader.fieldnames or []
            rows = [(f"{path.name}, row {n}", row) for n, row in enumerate(reader, start=1)]
    else:
        rows = [(f"{path.name}, line {n}", record) for n, record in read_jsonl(path, ScoreUsageError, name=path.name)]
        columns = sorted({key for _, record in rows for key in record})
    if "video" not in columns and rows:
        return _read_pair_file(path)
    missing = [c for c in ("video", "prompt") if c not in columns]
    if missing:
        raise ScoreUsageError(
            f"{path}: no {' and no '.join(repr(c) for c in missing)} column (found {columns}); "
            "a table to score has `video` and `prompt` columns"
        )
    if not rows:
        raise ScoreUsageError(f"{path}: has no data rows")
    items = []
    for where, row in rows:
        video, prompt = str(row.get("video") or "").strip(), row.get("prompt")
        prompt = prompt if isinstance(prompt, str) else None
        if video and not os.path.isabs(video):
            video = str(path.parent / video)
        item = ScoreItem(video, prompt)
        if not video:
            item.error = f"{where}: no video path in column 'video'"
        elif not prompt or not prompt.strip():
            item.error = f"{where}: empty prompt in column 'prompt'"
        items.append(item)
    return items


def _read_pair_file(path: Path) -> list[ScoreItem]:
    """The videos of a pair file in any format training reads (descore-plugin, official DeScore CSV, VideoAlign /
    VideoGen-RewardBench, GenAI-Bench), each (video, prompt, instruction) once, in the order of the file, with the
    row's own judge instruction where it has one (the official CSV's `problem`), as training and evaluation read it.
    A missing video is an error row, as elsewhere. Labels are not needed to score: a file without its label column
    (a VideoAlign CSV with only VQ / MQ / TA) or with an unreadable label is scored all the same."""
    from descore_plugin.data.pairs import load_pairs

    items, seen = [], set()
    for pair in load_pairs(path, check_videos=False, require_labels=False):
        for video in pair.videos:
            item = ScoreItem(video, pair.prompt, instruction=pair.instruction)
            if item.key not in seen:
                seen.add(item.key)
                items.append(item)
    return items


def _done_rows(output: Path) -> tuple[set, int]:
    """(video, prompt, instruction) keys already in `output` and how many of them are error rows. A last line cut by a kill is
    removed from the file."""
    if not output.exists():
        return set(), 0
    data = output.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(output, "r+b") as file:
            file.truncate(len(complete))
    done, failed = set(), 0
    for n, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done.add((row["video"], row["prompt"], row.get("instruction")))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ScoreUsageError(
                f"{output}, line {n}: not a row of `descore score` (JSON with video and prompt); "
                "choose another --output"
            ) from None
        failed += "error" in row
    return done, failed


def score_rows(
    model,
    items: list[ScoreItem],
    *,
    think: bool = True,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    num_workers: int = 2,
    progress: bool | None = True,
):
    """Yield one row (dict) per item, in order, scoring `batch_size` decoded videos per `model.score` call; videos
    are decoded in `num_workers` worker processes ahead of the model. A video that fails is an error row.
    progress: show a progress bar (None: only on a terminal)."""
    from descore_plugin.data.loader import stream_videos

    pending = [item for item in items if item.error is None]
    errors = {id(item): item for item in items if item.error is not None}
    bar = tqdm(total=len(items), unit="video", desc="scoring", disable=None if progress is None else not progress)
    position = 0  # rows of `items` emitted so far

    def emit_until(item_index):
        nonlocal position
        while position < item_index:
            item = items[position]
            position += 1
            bar.update(1)
            yield item.row(error=errors[id(item)].error)

    order = {id(item): i for i, item in enumerate(items)}
    chunks = stream_videos(
        [item.video for item in pending],
        fps=model.config.fps,
        num_frames=model.config.num_frames,
        chunk_size=batch_size,
        num_workers=num_workers,
    )
    for chunk in chunks:
        decoded = [(pending[v.index], v) for v in chunk]
        good = [(item, v.video) for item, v in decoded if v.error is None]
        out = None
        if good:
            instructions = [item.instruction for item, _ in good]  # a pair file row's own (official `problem`)
            out = model.score(
                [video for _, video in good],
                [item.prompt for item, _ in good],
                think=think,
                **({"instructions": instructions} if any(i is not None for i in instructions) else {}),
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
            )
        scored = {id(item): k for k, (item, _) in enumerate(good)}
        for item, video_item in decoded:
            yield from emit_until(order[id(item)])
            position += 1
            bar.update(1)
            if video_item.error is not None:
                yield item.row(error=video_item.error)
                continue
            k = scored[id(item)]
            row = item.row(reward=float(out.rewards[k]))
            if out.cots is not None:
                row.update(
                    cot=out.cots[k],
                    dimensional_scores=out.dimensional_scores[k],
                    overall_score=out.overall_scores[k],
                    parse_error=out.parse_errors[k],
                )
            row["uncertainty"] = float(out.uncertainty[k]) if out.uncertainty is not None else None
            yield row
    yield from emit_until(len(items))
    bar.close()


def _print_row(row: dict, as_json: bool):
    if as_json:
        print(json.dumps(row), flush=True)
        return
    print(f"== {row['video']}")
    if "error" in row:
        print(f"error: {row['error']}", flush=True)
        return
    if row.get("cot") is not None:
        print(f"CoT: {row['cot'].strip()}")
        scores = row["dimensional_scores"]
        print(
            "dimension scores: "
            + (", ".join(f"{k}={v}" for k, v in scores.items()) if scores else f"unparsed ({row['parse_error']})")
        )
    uncertainty = f" ± {row['uncertainty']:.3f}" if row.get("uncertainty") is not None else ""
    print(f"reward: {row['reward']:.4f}{uncertainty}", flush=True)


def score_command(args) -> int:
    """What `descore score` runs (args from its parser: videos, prompt, model, output, json, no_think, batch_size,
    max_new_tokens, num_workers, device, dtype). Returns the exit status: 0 all rows scored, 1 some row failed,
    2 usage error (one line on stderr)."""
    try:
        items = expand_inputs(args.videos, args.prompt)
        if not args.model:
            raise ScoreUsageError(
                "no model: pass --model DIR_OR_ID or set DESCORE_MODEL (try `descore init-tiny tiny/` first)"
            )
        if args.batch_size < 1 or args.num_workers < 0:
            raise ScoreUsageError(
                f"--batch-size {args.batch_size} / --num-workers {args.num_workers}: "
                "need a batch of at least 1 and 0 or more workers"
            )
        output = Path(args.output) if args.output else None
        resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
        if output is not None:
            prepare_output_dir(output, resume=resume, overwrite=overwrite, what=f"--output {args.output}")
        elif resume or overwrite:
            raise ScoreUsageError("--resume / --overwrite apply to an --output file; there is none")
        done, failed = _done_rows(output) if output else (set(), 0)
        todo = [item for item in items if item.key not in done]
        model = _load_model(args) if any(item.error is None for item in todo) else None
    except (ValueError, FileNotFoundError) as error:
        print(f"descore score: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if output is not None and len(todo) < len(items):
        print(
            f"{output}: {len(items) - len(todo)} of {len(items)} videos already scored, {len(todo)} to go",
            file=sys.stderr,
        )
    rows = (
        score_rows(
            model,
            todo,
            think=not args.no_think,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            num_workers=args.num_workers,
            progress=True if output else None,
        )
        if model is not None
        else (item.row(error=item.error) for item in todo)
    )
    if output is None:
        for row in rows:
            failed += "error" in row
            _print_row(row, args.json)
        return 1 if failed else 0
    output.parent.mkdir(parents=True, exist_ok=True)
    set_resume_hint(f"the rows scored so far are in {output}; run the same command with --resume to continue")
    with open(output, "a", encoding="utf-8") as file:
        for row in rows:
            failed += "error" in row
            file.write(json.dumps(row) + "\n")
            file.flush()
    print(f"{output}: {len(items)} rows, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _load_model(args):
    import torch

    from descore_plugin.modeling.model import DeScoreReward

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else None)
    overrides = {"prompt_template": args.prompt_template} if getattr(args, "prompt_template", None) else {}
    return DeScoreReward.from_pretrained(args.model, device=device, dtype=dtype, **overrides)
