"""Collect chains of thought (CoTs) for preference pairs with a teacher VLM: what stage 1 trains on.

The paper's cold start trains on pre-collected CoTs (written by Gemini-2.5-Pro / Qwen3-VL-8B, DeScore Sec. 3.2); a
user with only preference pairs (VideoAlign CSV, GenAI-Bench, ...) collects them here. The teacher judges each video
of a pair alone with the judge instruction, in the judge's answer format (`<answer>{"dimensional_scores": {...},
"overall_score": x}</answer>`, descore_plugin.modeling.prompt), and the pair is kept when both CoTs parse and, with
keep="agree" (default), the teacher's verdict (the higher overall score) agrees with the human label.

Teachers:
- `LocalTeacher`: a DeScore checkpoint or any plain Qwen2.5-VL / Qwen3-VL (hub id or folder), batched greedy
  generation with `DeScoreReward.score` (its own judge instruction unless one is given).
- `ChatTeacher`: an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, hosted models): POST
  {base}/v1/chat/completions with one user turn [text, video, text]; the video is the file itself as a
  `video_url` content part with a base64 data URL (the part vLLM accepts for video models such as Qwen-VL), or its
  sampled frames as `image_url` parts (models that take images only). Greedy (temperature 0).

Output (`annotate_pairs`): OUT.jsonl holds the kept pairs in the descore-plugin pair format (cot_a, cot_b and the
teacher's per-dimension scores as scores_a / scores_b, the human label kept), so `recipes/train_rm.py --stage 1`
reads it as it is (and stage 2 reads the scores as ground truth). Every pair that was not kept goes to
OUT.rejected.jsonl with its reason ("parse failure", "disagreement", "error", "invalid label") and the CoTs.
Both files are append-only and flushed per pair: a resumed run skips every pair already in either file, except
teacher errors (a server down, a timeout), which are retried.
"""

import base64
import concurrent.futures
import io
import json
import logging
import mimetypes
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from descore_plugin.data.pairs import Pair
from descore_plugin.modeling.prompt import build_instruction, load_template, parse_answer, video_content
from descore_plugin.utils.errors import UserError

__all__ = [
    "KEEP_MODES",
    "REASONS",
    "AnnotateSummary",
    "LocalTeacher",
    "ChatTeacher",
    "make_teacher",
    "annotate_pairs",
    "rejected_path",
    "teacher_verdict",
]

logger = logging.getLogger(__name__)

KEEP_MODES = ("agree", "all")
REASONS = ("parse failure", "disagreement", "error", "invalid label")
"""Why a pair is not kept: a CoT without a readable `<answer>` block, a teacher verdict against the human label
(keep="agree"), the teacher failed (retried on resume), a pair labelled "invalid" (never sent)."""


class TeacherError(Exception):
    """The teacher could not answer for one video (HTTP error, timeout, undecodable video); the pair is retried on
    resume."""


# ---------------------------------------------------------------------------------------------------------- teachers
class LocalTeacher:
    """A DeScore checkpoint or a plain Qwen2.5-VL / Qwen3-VL, run here: batched greedy CoT generation."""

    def __init__(
        self,
        model,
        *,
        device=None,
        dtype=None,
        prompt_template: str | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 4,
    ):
        from descore_plugin.modeling.model import DeScoreReward

        overrides = {"prompt_template": prompt_template} if prompt_template else {}
        self.model = DeScoreReward.from_pretrained(model, device=device, dtype=dtype, **overrides)
        self.name = str(model)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def describe(self, videos: list[str], prompts: list[str], instructions: list) -> list:
        """One CoT (text) per video, or a TeacherError where the video could not be judged."""
        try:
            out = self.model.score(
                videos,
                prompts,
                think=True,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                instructions=instructions,
            )
            return list(out.cots)
        except UserError as error:  # one bad video in the batch: judge them one by one to find it
            if len(videos) == 1:
                return [TeacherError(str(error))]
            return [result for v, p, i in zip(videos, prompts, instructions) for result in self.describe([v], [p], [i])]


class ChatTeacher:
    """An OpenAI-compatible chat-completions endpoint (vLLM, SGLang, hosted models)."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        prompt_template: str | None = None,
        max_new_tokens: int = 4096,
        video_as: str = "video",
        num_frames: int = 8,
        concurrency: int = 4,
        timeout: float = 300.0,
        repetition_penalty: float | None = None,
    ):
        if video_as not in ("video", "frames"):
            raise ValueError(
                f"video_as={video_as!r}: expected 'video' (a video_url part) or 'frames' (image_url parts)"
            )
        self.endpoint = chat_endpoint(url)
        self.api_key = api_key
        self.template = load_template(prompt_template)
        self.max_new_tokens = max_new_tokens
        self.video_as = video_as
        self.num_frames = num_frames
        self.concurrency = concurrency
        self.timeout = timeout
        self.repetition_penalty = repetition_penalty
        self.model = model or self._first_model()
        self.name = f"{self.model} at {self.endpoint}"
        self.batch_size = concurrency

    def _post(self, url: str, payload: dict | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")[:300]
            raise TeacherError(f"{url}: HTTP {error.code}: {' '.join(body.split())}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise TeacherError(f"{url}: {getattr(error, 'reason', error)}") from None
        except json.JSONDecodeError:
            raise TeacherError(f"{url}: the answer is not JSON") from None

    def _first_model(self) -> str:
        """The served model's name from GET /v1/models (what vLLM's own examples do when none is given)."""
        url = self.endpoint.rsplit("/chat/completions", 1)[0] + "/models"
        try:
            models = self._post(url, None).get("data") or []
        except TeacherError as error:
            raise UserError(
                f"--teacher {self.endpoint}: cannot list the served models ({error}); pass --teacher-model NAME"
            ) from None
        if not models:
            raise UserError(f"--teacher {self.endpoint}: {url} lists no model; pass --teacher-model NAME")
        return models[0]["id"]

    def request(self, video: str, prompt: str, instruction: str | None) -> dict:
        """The chat-completions request body for one video."""
        text = build_instruction(self.template, prompt) if instruction is None else instruction
        content = []
        for part in video_content(text):
            if part["type"] == "text":
                if part["text"]:
                    content.append({"type": "text", "text": part["text"]})
            elif self.video_as == "video":
                content.append({"type": "video_url", "video_url": {"url": _data_url(video)}})
            else:
                content += [
                    {"type": "image_url", "image_url": {"url": url}} for url in _frame_urls(video, self.num_frames)
                ]
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0,
        }
        if self.repetition_penalty is not None:  # a vLLM / SGLang sampling extra; hosted APIs may refuse it
            payload["repetition_penalty"] = self.repetition_penalty
        return payload

    def _one(self, video: str, prompt: str, instruction: str | None):
        try:
            answer = self._post(self.endpoint, self.request(video, prompt, instruction))
            choice = answer["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TeacherError(f"{self.endpoint}: the answer has no text content")
            return text
        except TeacherError as error:
            return error
        except (KeyError, IndexError, TypeError):
            return TeacherError(f"{self.endpoint}: not a chat-completions answer (no choices[0].message.content)")
        except (UserError, OSError) as error:  # the video could not be read or sampled
            return TeacherError(f"{video}: {error}")

    def describe(self, videos: list[str], prompts: list[str], instructions: list) -> list:
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, videos, prompts, instructions))


def chat_endpoint(url: str) -> str:
    """http://host:port, http://host:port/v1 or the full .../v1/chat/completions -> the chat-completions URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def _data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "video/mp4"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def _frame_urls(path: str, num_frames: int) -> list[str]:
    from PIL import Image

    from descore_plugin.data.video import load_video

    video = load_video(path, num_frames=num_frames)
    urls = []
    for frame in video.frames:  # (3, H, W) uint8
        buffer = io.BytesIO()
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        urls.append(f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}")
    return urls


def make_teacher(teacher: str, **options):
    """A ChatTeacher for an http(s) URL, else a LocalTeacher (hub id or folder). `options` go to the one chosen;
    those that apply to the other kind only are dropped."""
    if teacher.startswith(("http://", "https://")):
        keys = (
            "model",
            "api_key",
            "prompt_template",
            "max_new_tokens",
            "video_as",
            "num_frames",
            "concurrency",
            "timeout",
            "repetition_penalty",
        )
        chosen = {k: v for k, v in options.items() if k in keys and v is not None}
        return ChatTeacher(teacher, **chosen)
    keys = ("device", "dtype", "prompt_template", "max_new_tokens", "batch_size")
    return LocalTeacher(teacher, **{k: v for k, v in options.items() if k in keys})


# ------------------------------------------------------------------------------------------------------ annotation
@dataclass
class AnnotateSummary:
    """How many pairs were kept and why the others were not."""

    pairs: int = 0
    already_done: int = 0
    kept: int = 0
    rejected: dict = field(default_factory=lambda: {reason: 0 for reason in REASONS})

    def lines(self) -> list[str]:
        done = f" ({self.already_done} from an earlier run)" if self.already_done else ""
        out = [f"{self.kept} of {self.pairs} pairs kept{done}"]
        out += [f"{count} not kept: {reason}" for reason, count in self.rejected.items() if count]
        return out


def teacher_verdict(overall_a: float, overall_b: float) -> str:
    """The pair verdict of the teacher's two overall scores: "A", "B" or "tie"."""
    return "A" if overall_a > overall_b else "B" if overall_b > overall_a else "tie"


def rejected_path(output) -> Path:
    """OUT.jsonl -> OUT.rejected.jsonl: the pairs that were not kept, with the reason."""
    output = Path(output)
    return output.with_name(output.stem + ".rejected" + (output.suffix or ".jsonl"))


def annotate_pairs(
    pairs: list[Pair],
    teacher,
    output,
    *,
    keep: str = "agree",
    progress: bool | None = True,
    batch_pairs: int | None = None,
) -> AnnotateSummary:
    """Ask `teacher` for a CoT on each video of each pair and append the kept pairs to `output` (the descore-plugin
    pair format, with cot_a/cot_b and scores_a/scores_b), the others to `rejected_path(output)`. Pairs already in
    either file are skipped (a teacher error is retried). Returns the summary of this file's pairs."""
    if keep not in KEEP_MODES:
        raise ValueError(f"keep={keep!r}: expected one of {', '.join(KEEP_MODES)}")
    output, rejected = Path(output), rejected_path(output)
    kept = _done_keys(output, output.parent, "kept")
    done = kept | _done_keys(rejected, output.parent, "rejected")
    keys = {_key(p) for p in pairs}
    summary = AnnotateSummary(pairs=len(pairs))
    summary.already_done = sum(_key(p) in done for p in pairs)
    summary.kept = len(kept & keys)
    for reason, count in _rejected_counts(rejected, output.parent, (keys & done) - kept).items():
        summary.rejected[reason] += count
    todo = [p for p in pairs if _key(p) not in done]
    output.parent.mkdir(parents=True, exist_ok=True)
    step = batch_pairs or max(1, (getattr(teacher, "batch_size", 2) + 1) // 2)
    bar = tqdm(
        total=len(pairs),
        initial=len(pairs) - len(todo),
        unit="pair",
        desc="annotating",
        disable=None if progress is None else not progress,
    )
    with open(output, "a", encoding="utf-8") as kept_file, open(rejected, "a", encoding="utf-8") as rejected_file:
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            ask = [p for p in chunk if p.label != "invalid"]
            videos = [v for p in ask for v in p.videos]
            prompts = [p.prompt for p in ask for _ in range(2)]
            instructions = [p.instruction for p in ask for _ in range(2)]
            answers = iter(teacher.describe(videos, prompts, instructions) if ask else [])
            for pair in chunk:
                if pair.label == "invalid":
                    row, reason = (
                        _rejected_row(pair, output.parent, "invalid label", "labelled invalid: never trained"),
                        "invalid label",
                    )
                else:
                    row, reason = _judge(pair, next(answers), next(answers), keep, output.parent)
                if reason is None:
                    kept_file.write(json.dumps(row) + "\n")
                    kept_file.flush()
                    summary.kept += 1
                else:
                    rejected_file.write(json.dumps(row) + "\n")
                    rejected_file.flush()
                    summary.rejected[reason] += 1
                bar.update(1)
    bar.close()
    for line in summary.lines():
        logger.debug(line)
    return summary


def _judge(pair: Pair, answer_a, answer_b, keep: str, folder: Path):
    """(row, None) for a kept pair, (rejected row, reason) otherwise."""
    for side, answer in (("A", answer_a), ("B", answer_b)):
        if isinstance(answer, Exception):
            return _rejected_row(pair, folder, "error", f"video {side}: {answer}"), "error"
    cot_a, cot_b = answer_a.strip(), answer_b.strip()
    parsed_a, parsed_b = parse_answer(cot_a), parse_answer(cot_b)
    for side, parsed in (("A", parsed_a), ("B", parsed_b)):
        if parsed.error is not None:
            row = _rejected_row(pair, folder, "parse failure", f"video {side}: {parsed.error}", cot_a, cot_b)
            return row, "parse failure"
    verdict = teacher_verdict(parsed_a.overall_score, parsed_b.overall_score)
    if keep == "agree" and verdict != pair.label:
        detail = (
            f"teacher says {verdict} (overall {parsed_a.overall_score:g} vs {parsed_b.overall_score:g}), "
            f"label {pair.label}"
        )
        return _rejected_row(pair, folder, "disagreement", detail, cot_a, cot_b), "disagreement"
    row = _pair_row(pair, folder)
    row.update(cot_a=cot_a, cot_b=cot_b, scores_a=parsed_a.dimensional_scores, scores_b=parsed_b.dimensional_scores)
    return {key: value for key, value in row.items() if value is not None}, None


def _pair_row(pair: Pair, folder: Path) -> dict:
    return {
        "video_a": _relative(pair.video_a, folder),
        "video_b": _relative(pair.video_b, folder),
        "prompt": pair.prompt,
        "label": pair.label,
        "slice": pair.slice,
        "instruction": pair.instruction,
    }


def _rejected_row(pair: Pair, folder: Path, reason: str, detail: str, cot_a=None, cot_b=None) -> dict:
    row = {
        **_pair_row(pair, folder),
        "reason": reason,
        "detail": detail,
        "cot_a": cot_a,
        "cot_b": cot_b,
        "origin": pair.origin,
    }
    return {key: value for key, value in row.items() if value is not None}


def _relative(video: str, folder: Path) -> str:
    absolute = Path(video).resolve()
    try:
        return absolute.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(absolute)


def _key(pair: Pair) -> tuple:
    return str(Path(pair.video_a).resolve()), str(Path(pair.video_b).resolve()), pair.prompt


def _rows(path: Path, what: str) -> list[dict]:
    """The complete JSON rows of an append-only file; a last line cut by a kill is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as file:
            file.truncate(len(complete))
    rows = []
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not all(k in row for k in ("video_a", "video_b", "prompt")):
                raise KeyError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f"{path}, line {number}: not a row of `descore annotate` ({what} pairs); choose another --output"
            ) from None
        rows.append(row)
    return rows


def _row_key(row: dict, folder: Path) -> tuple:
    resolve = lambda v: str(Path(v if os.path.isabs(v) else folder / v).resolve())  # noqa: E731
    return resolve(row["video_a"]), resolve(row["video_b"]), row["prompt"]


def _done_keys(path: Path, folder: Path, what: str) -> set:
    """Pairs already decided in `path`; a teacher error is not a decision (retried)."""
    return {_row_key(row, folder) for row in _rows(path, what) if row.get("reason") != "error"}


def _rejected_counts(path: Path, folder: Path, keys: set) -> dict:
    latest = {}
    for row in _rows(path, "rejected"):
        key = _row_key(row, folder)
        if key in keys and row.get("reason") in REASONS:
            latest[key] = row["reason"]
    counts = {reason: 0 for reason in REASONS}
    for reason in latest.values():
        counts[reason] += 1
    return counts
