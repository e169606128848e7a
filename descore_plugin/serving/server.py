"""DeScore as a service (`descore serve`): one model replica behind FastAPI + uvicorn, with micro-batching.

Endpoints (all POST bodies are read with a size limit before parsing):

    GET  /health        liveness (no key needed): {"status": "ok"}
    GET  /info          model settings and batching counters
    POST /score         native JSON: videos (base64 mp4, base64 uint8 .npy, or server paths under --allow-paths),
                        prompts, think / cots -> rewards, CoTs, dimension scores, uncertainty, per-video errors
    POST /compute       Flow-Factory's remote reward: {"prompt": [...], "video": [[base64 PNG frame, ...], ...]}
                        -> {"rewards": [...], "error": null}
    POST /get_reward    OpenRLHF's --remote_rm_url: {"query": [...], "prompts": [...], "labels": [...]}
                        -> {"rewards": [...], "scores": [...], "extra_logs": {...}}
    POST /              yifan123/reward-server's pickle protocol (only with --allow-pickle; no globals unpickled)

Micro-batching: every request's videos are decoded in worker threads, then queued. One scoring thread takes, per
batch, up to `max_batch_size` queued videos of ONE kind (think / no-think / given CoTs, and the same CoT length
limit), waiting at most `max_wait_ms` for company (counted from the later of the oldest video's arrival and the
moment the scorer became free). A batch is scored with
`DeScoreReward.score`, so a served reward is the in-process reward; if a batch fails as a whole, its videos are
re-scored one by one so that one bad video cannot take its batch-mates down.

One process serves one model replica on one device. For several GPUs run one server per device (different ports)
and give the client all the URLs: `RemoteReward("http://node:8000,http://node:8001,...")` spreads each call's
chunks over them, and OpenRLHF takes a comma-separated `--remote_rm_url` list.
"""

import asyncio
import base64
import binascii
import io
import json
import logging
import math
import os
import pickle
import secrets
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from descore_plugin.data.video import Video, VideoInputError, load_video

logger = logging.getLogger("descore_plugin.serving.server")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
NPY_MAGIC = b"\x93NUMPY"


@dataclass
class ServeConfig:
    """Settings of `descore serve` (each is also a command-line flag)."""

    host: str = "127.0.0.1"
    """Address to bind. Anything other than loopback needs `api_key`."""
    port: int = 8000
    """TCP port (0 = any free port)."""
    api_key: str | None = None
    """Shared secret clients send as `Authorization: Bearer KEY` (or `?api_key=KEY` for clients that cannot set
    headers, such as OpenRLHF's and Flow-Factory's). Required for any non-loopback `host`."""
    max_batch_size: int = 8
    """Most videos scored in one forward batch."""
    max_wait_ms: float = 10.0
    """Longest time the oldest queued video waits for batch-mates, counted from when the scorer is free, before
    its batch is scored anyway."""
    allow_paths: tuple = ()
    """Folders whose files requests may name by server-side path (after resolving symlinks and `..`). Empty: no
    server-side paths at all."""
    allow_pickle: bool = False
    """Serve yifan123/reward-server's pickle protocol on `POST /`. Its unpickler refuses every global, so only
    plain containers, strings, bytes and numbers get through."""
    max_request_mb: float = 1536.0
    """Largest request body in MiB (base64 inflates binary by 4/3). Bigger requests get 413."""
    max_videos_per_request: int = 64
    """Most videos in one request (413 beyond)."""
    max_frames: int = 1024
    """Most frames a video may have in its source, before sampling (413 beyond)."""
    max_frame_pixels: int = 3840 * 2160
    """Largest frame area (height x width) of an uploaded video (413 beyond)."""
    max_new_tokens: int | None = None
    """Cap on CoT length for think requests (None = the model's own limit). Requests may ask for fewer."""


class RequestError(Exception):
    """A request the server refuses as a whole: HTTP `status` with a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ---------------------------------------------------------------------- micro-batching
@dataclass
class _Pending:
    video: Video
    prompt: str
    cot: str | None
    future: asyncio.Future
    queued_at: float
    instruction: str | None = None


class MicroBatcher:
    """Queues videos from concurrent requests and scores them in batches on one scoring thread.

    A batch holds videos of one kind only: the key is ("think" | "no-think" | "cots", max_new_tokens)."""

    def __init__(self, model, max_batch_size: int = 8, max_wait_ms: float = 10.0):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}: must be at least 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms}: must be >= 0")
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queues: dict[tuple, deque] = {}
        self.batch_sizes = Counter()  # batch size -> number of batches scored
        self.videos_scored = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="descore-score")
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._draining = False
        self._free_since = 0.0  # when the scoring thread last became free

    def start(self):
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def drain(self):
        """Shutdown has begun: stop waiting for batch-mates (requests still arriving are accepted)."""
        self._draining = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self):
        """Finish every queued video, then stop."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def submit(self, key: tuple, videos: list, prompts: list, cots: list, instructions: list | None = None) -> list:
        """Queue videos (each with its prompt, CoT and judge instruction, None = the template); returns one future
        per video, resolved with a result dict."""
        if self._closing:
            raise RequestError(503, "the server is shutting down")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        queue = self.queues.setdefault(key, deque())
        instructions = instructions if instructions is not None else [None] * len(videos)
        for video, prompt, cot, instruction in zip(videos, prompts, cots, instructions):
            future = loop.create_future()
            queue.append(_Pending(video, prompt, cot, future, now, instruction))
            futures.append(future)
        self._wakeup.set()
        return futures

    def _oldest_key(self):
        waiting = [(q[0].queued_at, key) for key, q in self.queues.items() if q]
        return min(waiting)[1] if waiting else None

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            key = self._oldest_key()
            if key is None:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queue = self.queues[key]
            # Videos that queued while the previous batch ran get max_wait from the moment the scorer is free:
            # otherwise they would always leave at once, in small batches, under steady load.
            deadline = max(queue[0].queued_at, self._free_since) + self.max_wait
            while len(queue) < self.max_batch_size and not (self._closing or self._draining):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._score, key, batch)
            except BaseException as error:  # never leave a request waiting forever
                results = [{"error": f"scoring failed: {type(error).__name__}: {error}"}] * len(batch)
            self._free_since = time.monotonic()
            self.batch_sizes[len(batch)] += 1
            self.videos_scored += len(batch)
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)

    def _score(self, key, batch: list) -> list[dict]:
        mode, max_new_tokens = key
        try:
            out = self.model.score(
                [item.video for item in batch], [item.prompt for item in batch], think=mode == "think",
                cots=[item.cot for item in batch] if mode == "cots" else None, batch_size=len(batch),
                max_new_tokens=max_new_tokens,
                instructions=[item.instruction for item in batch] if any(item.instruction for item in batch) else None,
            )
        except Exception as error:
            if len(batch) == 1:
                return [{"error": f"{batch[0].video.name}: {type(error).__name__}: {error}"}]
            logger.warning("a batch of %d failed (%s); scoring its videos one by one", len(batch), error)
            return [self._score(key, [item])[0] for item in batch]
        results = []
        for i in range(len(batch)):
            result = {"reward": float(out.rewards[i]), "error": None}
            if out.cots is not None:
                result.update(cot=out.cots[i], dimensional_scores=out.dimensional_scores[i],
                              overall_score=out.overall_scores[i], parse_error=out.parse_errors[i])
            if out.uncertainty is not None:
                result.update(uncertainty=float(out.uncertainty[i]), bin_probs=out.bin_probs[i].tolist())
            results.append(result)
        return results


# ---------------------------------------------------------------------- decoding request videos
class VideoDecoder:
    """Turns the wire forms of a video into a `Video`, applying the server's limits and path policy.

    Errors that concern one video (it does not decode, wrong dtype, too few frames) come back as that video's
    error; breaches of the server's limits and forbidden paths raise `RequestError` for the whole request."""

    def __init__(self, config: ServeConfig, fps, num_frames):
        self.config = config
        self.fps, self.num_frames = fps, num_frames
        self.allowed = [Path(p).resolve(strict=True) for p in config.allow_paths]

    def _sample(self, source, name: str) -> Video:
        return load_video(source, fps=self.fps, num_frames=self.num_frames, name=name)

    def _check_frames(self, name: str, frames: int, height: int, width: int):
        if frames > self.config.max_frames:
            raise RequestError(413, f"{name}: {frames} frames; this server takes at most {self.config.max_frames} "
                                    "frames per video (--max-frames)")
        if height * width > self.config.max_frame_pixels:
            raise RequestError(413, f"{name}: frames of {height}x{width}; this server takes at most "
                                    f"{self.config.max_frame_pixels} pixels per frame (--max-frame-pixels)")

    def from_npy(self, raw: bytes, name: str) -> Video:
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as error:
            raise VideoInputError(f"{name}: not a .npy array ({type(error).__name__}: {error})") from None
        if array.ndim != 4:
            raise VideoInputError(f"{name}: the array has shape {array.shape}; a video is (F, 3, H, W) or (F, H, W, 3)")
        frames, height, width = (array.shape[0], *array.shape[2:]) if array.shape[1] == 3 else array.shape[:3]
        self._check_frames(name, frames, height, width)
        return self._sample(array, name)

    def from_mp4(self, raw: bytes, name: str) -> Video:
        with tempfile.NamedTemporaryFile(suffix=".mp4", prefix="descore-serve-") as handle:
            handle.write(raw)
            handle.flush()
            probed = _probe(handle.name)
            if probed is not None:
                self._check_frames(name, *probed)
            try:
                return self._sample(handle.name, name)
            except VideoInputError as error:  # do not show the server's temporary file name
                message = str(error).replace(f" ({handle.name})", "").replace(handle.name, "<uploaded video>")
                raise VideoInputError(message) from None

    def from_path(self, path: str, name: str) -> Video:
        if not self.allowed:
            raise RequestError(403, f"{name}: server-side paths are disabled; send the video's bytes, or start the "
                                    "server with --allow-paths DIR")
        resolved = Path(path).resolve()  # follows symlinks and `..` before the check
        if not any(resolved == folder or folder in resolved.parents for folder in self.allowed):
            raise RequestError(403, f"{name}: {path} is outside the folders this server may read (--allow-paths)")
        if not resolved.is_file():
            raise VideoInputError(f"{name} ({path}): file not found.")
        probed = _probe(str(resolved))
        if probed is not None:
            self._check_frames(name, *probed)
        return self._sample(resolved, name)

    def from_png_frames(self, frames: list, name: str) -> Video:
        import PIL.Image

        if not isinstance(frames, list) or not frames:
            raise VideoInputError(f"{name}: expected a non-empty list of base64 PNG/JPEG frames")
        if len(frames) > self.config.max_frames:
            self._check_frames(name, len(frames), 0, 0)
        images = []
        for j, text in enumerate(frames):
            raw = _b64decode(text, f"{name}[{j}]")
            try:
                image = PIL.Image.open(io.BytesIO(raw), formats=["PNG", "JPEG", "WEBP"])
            except Exception as error:
                raise VideoInputError(f"{name}[{j}]: not a PNG/JPEG/WEBP image ({error})") from None
            self._check_frames(name, len(frames), image.size[1], image.size[0])
            images.append(image)
        try:
            return self._sample(images, name)
        except VideoInputError:
            raise
        except Exception as error:  # truncated image data surfaces only when the pixels are read
            raise VideoInputError(f"{name}: cannot decode its frames ({type(error).__name__}: {error})") from None

    def decode(self, spec, name: str) -> Video:
        """`spec`: {"mp4": b64} | {"npy": b64} | {"path": str} | raw bytes (mp4 or npy, for the pickle protocol)."""
        if isinstance(spec, (bytes, bytearray)):
            raw = bytes(spec)
            return self.from_npy(raw, name) if raw.startswith(NPY_MAGIC) else self.from_mp4(raw, name)
        if isinstance(spec, str):  # a bare string is a server-side path
            return self.from_path(spec, name)
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("mp4", "npy", "path"):
            raise RequestError(422, f"{name}: expected one of {{\"mp4\": base64}}, {{\"npy\": base64}}, "
                                    f"{{\"path\": str}}; got {_describe(spec)}")
        kind, value = next(iter(spec.items()))
        if not isinstance(value, str):
            raise RequestError(422, f"{name}.{kind}: expected a string, got {type(value).__name__}")
        if kind == "path":
            return self.from_path(value, name)
        raw = _b64decode(value, f"{name}.{kind}")
        return self.from_npy(raw, name) if kind == "npy" else self.from_mp4(raw, name)

    def decode_all(self, specs: list, decode=None) -> list:
        """Decode every video; returns a list of `Video` or error strings (one per video)."""
        decode = decode or self.decode
        out = []
        for i, spec in enumerate(specs):
            try:
                out.append(decode(spec, f"videos[{i}]"))
            except RequestError:
                raise
            except VideoInputError as error:
                out.append(str(error))
            except Exception as error:  # a decoder crash is still this one video's problem
                out.append(f"videos[{i}]: cannot decode ({type(error).__name__}: {error})")
        return out


def _probe(path: str):
    """(frames, height, width) of a video file from its header, or None when the header does not say."""
    try:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            frames = stream.frames
            if not frames and stream.duration is not None and stream.average_rate:
                frames = math.ceil(float(stream.duration * stream.time_base * stream.average_rate))
            return int(frames or 0), int(stream.codec_context.height), int(stream.codec_context.width)
    except Exception:  # not a readable container: the decoder reports it as this video's error
        return None


def _b64decode(text, name: str) -> bytes:
    if not isinstance(text, str):
        raise VideoInputError(f"{name}: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise VideoInputError(f"{name}: not valid base64 ({error})") from None


def _describe(value) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    return f"a {type(value).__name__}"


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every global (class, function, module attribute) is refused, so a pickle cannot
    construct objects or call anything."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused global {module}.{name}: this server unpickles plain data only "
                                     "(dict, list, str, bytes, numbers)")


def safe_unpickle(data: bytes):
    """`pickle.loads` that admits no globals (see `_NoGlobalsUnpickler`)."""
    return _NoGlobalsUnpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------------- the application
def create_app(model, config: ServeConfig | None = None):
    """The FastAPI application serving `model` (a loaded `DeScoreReward`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    config = config or ServeConfig()
    batcher = MicroBatcher(model, config.max_batch_size, config.max_wait_ms)
    decoder = VideoDecoder(config, model.config.fps, model.config.num_frames)
    limit = int(config.max_request_mb * 1024 * 1024)
    cot_cap = config.max_new_tokens if config.max_new_tokens is not None else model.config.cot_token_limit()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.close()  # uvicorn has already let in-flight requests finish; finish anything still queued

    app = FastAPI(title="DeScore reward server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def _request_error(request, error: RequestError):
        return JSONResponse({"detail": error.message}, status_code=error.status,
                            headers={"WWW-Authenticate": "Bearer"} if error.status == 401 else None)

    def check_key(request):
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        supplied = header[7:].strip() if header[:7].lower() == "bearer " else request.query_params.get("api_key", "")
        if not secrets.compare_digest(supplied.encode(), config.api_key.encode()):
            raise RequestError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'")

    async def read_body(request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body of {int(declared)} bytes; this server takes at most {limit} "
                                    f"(--max-request-mb {config.max_request_mb:g})")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"request body over {limit} bytes (--max-request-mb {config.max_request_mb:g})")
                chunks.append(chunk)
        except ClientDisconnect:
            raise RequestError(400, "the client disconnected before sending the whole body") from None
        return b"".join(chunks)

    async def read_json(request) -> dict:
        check_key(request)
        body = await read_body(request)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise RequestError(400, f"the body is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise RequestError(422, f"the body must be a JSON object, got {_describe(data)}")
        return data

    async def score_videos(specs, prompts, mode, cots=None, max_new_tokens=None, decode=None,
                           instructions=None) -> list[dict]:
        """Decode, queue and await every video; one result dict per video (with "error" set where it failed)."""
        if len(specs) > config.max_videos_per_request:
            raise RequestError(413, f"{len(specs)} videos in one request; this server takes at most "
                                    f"{config.max_videos_per_request} (--max-videos-per-request)")
        if len(prompts) != len(specs):
            raise RequestError(422, f"got {len(specs)} videos but {len(prompts)} prompts: send one prompt per video")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise RequestError(422, f"prompts[{i}]: expected a string, got {type(prompt).__name__}")
        cots = cots if cots is not None else [None] * len(specs)
        instructions = instructions if instructions is not None else [None] * len(specs)
        decoded = await run_in_threadpool(decoder.decode_all, specs, decode)
        results = [{"error": item} if isinstance(item, str) else None for item in decoded]
        good = [i for i, item in enumerate(decoded) if not isinstance(item, str)]
        if good:
            key = (mode, min(max_new_tokens or cot_cap, cot_cap) if mode == "think" else None)
            futures = batcher.submit(key, [decoded[i] for i in good], [prompts[i] for i in good],
                                     [cots[i] for i in good], [instructions[i] for i in good])
            for i, result in zip(good, await asyncio.gather(*futures)):
                results[i] = result
        return results

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info(request: Request):
        check_key(request)
        return {
            "head": model.config.head, "fps": model.config.fps, "num_frames": model.config.num_frames,
            "max_new_tokens": cot_cap, "max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms,
            "videos_scored": batcher.videos_scored,
            "batch_sizes": {str(k): v for k, v in sorted(batcher.batch_sizes.items())},
            "limits": {"max_request_mb": config.max_request_mb, "max_videos_per_request": config.max_videos_per_request,
                       "max_frames": config.max_frames, "max_frame_pixels": config.max_frame_pixels},
        }

    @app.post("/score")
    async def score(request: Request):
        data = await read_json(request)
        unknown = sorted(set(data) - {"videos", "prompts", "think", "cots", "max_new_tokens", "instructions"})
        if unknown:
            raise RequestError(422, f"unknown fields {unknown}; known: videos, prompts, think, cots, max_new_tokens, "
                                    "instructions")
        specs, prompts = data.get("videos"), data.get("prompts")
        if not isinstance(specs, list) or not specs:
            raise RequestError(422, "videos: expected a non-empty list")
        prompts = [prompts] * len(specs) if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list):
            raise RequestError(422, "prompts: expected a string or a list of strings")
        think, cots, max_new_tokens = data.get("think", True), data.get("cots"), data.get("max_new_tokens")
        if not isinstance(think, bool):
            raise RequestError(422, f"think: expected true or false, got {think!r}")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise RequestError(422, f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
        if cots is not None:
            if not isinstance(cots, list) or len(cots) != len(specs):
                raise RequestError(422, f"cots: expected a list of {len(specs)} strings (or nulls), one per video")
            if any(c is not None and not isinstance(c, str) for c in cots):
                raise RequestError(422, "cots: every entry must be a string or null")
        instructions = data.get("instructions")
        if instructions is not None and (not isinstance(instructions, list) or len(instructions) != len(specs)
                                         or any(i is not None and not isinstance(i, str) for i in instructions)):
            raise RequestError(422, f"instructions: expected a list of {len(specs)} strings (or nulls), one per video")
        mode = "cots" if cots is not None else ("think" if think else "no-think")
        results = await score_videos(specs, prompts, mode, cots, max_new_tokens, instructions=instructions)
        with_cots = mode != "no-think"
        response = {
            "rewards": [r.get("reward") for r in results],
            "errors": [r["error"] for r in results],
            "cots": [r.get("cot") for r in results] if with_cots else None,
            "dimensional_scores": [r.get("dimensional_scores") for r in results] if with_cots else None,
            "overall_scores": [r.get("overall_score") for r in results] if with_cots else None,
            "parse_errors": [r.get("parse_error") for r in results] if with_cots else None,
            "uncertainty": [r.get("uncertainty") for r in results] if model.config.head == "distribution" else None,
            "bin_probs": [r.get("bin_probs") for r in results] if model.config.head == "distribution" else None,
        }
        return JSONResponse(response)

    @app.post("/compute")
    async def compute(request: Request):
        """Flow-Factory's remote reward: "video" is a list of videos, each a list of base64 PNG frames."""
        data = await read_json(request)
        videos, prompts = data.get("video"), data.get("prompt")
        if not videos:
            message = ("DeScore scores videos: send 'video' (a list of videos, each a list of base64 frames)"
                       + ("; 'image' inputs are not scored" if data.get("image") else ""))
            raise RequestError(422, message)
        if not isinstance(videos, list) or not isinstance(prompts, list):
            raise RequestError(422, "video and prompt must be lists")
        kwargs = data.get("kwargs") or {}
        think = kwargs.get("think", True) if isinstance(kwargs, dict) else True
        if not isinstance(think, bool):
            raise RequestError(422, f"kwargs.think: expected true or false, got {think!r}")
        results = await score_videos(videos, prompts, "think" if think else "no-think", decode=decoder.from_png_frames)
        # Flow-Factory turns "rewards" into a tensor: a video that failed gets NaN ("no score"), named in "errors".
        return _nan_json({"rewards": [r.get("reward", math.nan) for r in results], "error": None,
                          "errors": [r["error"] for r in results]})

    # OpenRLHF decodes its sequences with skip_special_tokens=False: left padding before the prompt, and the
    # end-of-turn (and right padding) after the response. None of it is CoT text: a CoT's score is read at the
    # `<Reward>` token that stands where the end of turn was written.
    tokenizer = model.tokenizer
    special = {tokenizer.pad_token, tokenizer.eos_token, *(tokenizer.decode([i]) for i in model._eos_ids())}
    end_tokens = tuple(sorted((t for t in special if t), key=len, reverse=True))

    def response_of(query: str, prefix: str) -> str:
        start = query.find(prefix) if prefix else -1
        text = query[start + len(prefix):] if start >= 0 else query
        while not prefix and tokenizer.pad_token and text.startswith(tokenizer.pad_token):
            text = text[len(tokenizer.pad_token):]
        while text.endswith(end_tokens):
            text = text[:-len(next(t for t in end_tokens if text.endswith(t)))]
        return text

    @app.post("/get_reward")
    async def get_reward(request: Request):
        """OpenRLHF's remote reward. The policy writes the CoT: `query` is prompt + response, and each label is
        {"video": <path or {"mp4"|"npy": base64}>, "prompt": <the video's text prompt>} (or that object as a JSON
        string). The reward is DeScore's head reading the response as the CoT (teacher forcing); the padding and
        end-of-turn tokens around it (`response_of`) are not part of the CoT."""
        data = await read_json(request)
        queries, prompts, labels = data.get("query"), data.get("prompts"), data.get("labels")
        if not isinstance(queries, list) or not isinstance(labels, list) or len(labels) != len(queries):
            raise RequestError(422, "query and labels must be lists of equal length; each label holds the video and "
                                    "its text prompt: {\"video\": ..., \"prompt\": ...}")
        if prompts is not None and (not isinstance(prompts, list) or len(prompts) != len(queries)):
            raise RequestError(422, "prompts must be a list as long as query")
        specs, texts, cots = [], [], []
        for i, (query, label) in enumerate(zip(queries, labels)):
            if isinstance(label, str):
                try:
                    label = json.loads(label)
                except ValueError:
                    raise RequestError(422, f"labels[{i}]: not a JSON object: {label[:80]!r}") from None
            if not isinstance(label, dict) or "video" not in label or not isinstance(label.get("prompt"), str):
                raise RequestError(422, f"labels[{i}]: expected {{\"video\": ..., \"prompt\": str}}, got {_describe(label)}")
            if not isinstance(query, str):
                raise RequestError(422, f"query[{i}]: expected a string")
            prefix = prompts[i] if prompts is not None and isinstance(prompts[i], str) else ""
            specs.append(label["video"])
            texts.append(label["prompt"])
            cots.append(response_of(query, prefix))
        results = await score_videos(specs, texts, "cots", cots)
        rewards = [r.get("reward", math.nan) for r in results]
        return _nan_json({"rewards": rewards, "scores": rewards,
                          "extra_logs": {"descore_failed": [float(r["error"] is not None) for r in results]},
                          "errors": [r["error"] for r in results]})

    if config.allow_pickle:
        @app.post("/")
        async def pickle_protocol(request: Request):
            """yifan123/reward-server's protocol: a pickled {"videos": [mp4 or .npy bytes], "prompts": [...],
            "think": bool} in, a pickled {"scores" (also as "outputs"), "cots", "errors"} out. No globals are
            unpickled."""
            check_key(request)
            body = await read_body(request)
            try:
                data = safe_unpickle(body)
            except Exception as error:
                return Response(f"refused: {error}".encode(), status_code=400, media_type="text/plain")
            if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
                return Response(b"expected a pickled dict with 'videos' (list of mp4 or .npy bytes) and 'prompts'",
                                status_code=422, media_type="text/plain")
            think = data.get("think", True)
            prompts = data.get("prompts")
            prompts = [prompts] * len(data["videos"]) if isinstance(prompts, str) else prompts
            if not isinstance(think, bool) or not isinstance(prompts, list):
                return Response(b"'think' must be a bool and 'prompts' a list of strings", status_code=422,
                                media_type="text/plain")
            if not all(isinstance(v, (bytes, bytearray)) for v in data["videos"]):
                return Response(b"every entry of 'videos' must be bytes (an mp4 file or a .npy array)",
                                status_code=422, media_type="text/plain")
            try:
                results = await score_videos(data["videos"], prompts, "think" if think else "no-think")
            except RequestError as error:
                return Response(error.message.encode(), status_code=error.status, media_type="text/plain")
            scores = [r.get("reward", math.nan) for r in results]
            # "outputs": the key reward-server's clients read (flow_grpo: all_scores += response_data["outputs"])
            reply = {"scores": scores, "outputs": scores, "cots": [r.get("cot") for r in results],
                     "errors": [r["error"] for r in results]}
            return Response(pickle.dumps(reply), media_type="application/octet-stream")

    return app


def _nan_json(content) -> "Response":
    """JSON that may hold NaN (Python's json, requests and httpx read it): "no score" for a failed video."""
    from fastapi.responses import Response

    return Response(json.dumps(content, allow_nan=True), media_type="application/json")


# ---------------------------------------------------------------------- running it
def check_bind(host: str, api_key: str | None):
    if host not in LOOPBACK_HOSTS and not api_key:
        raise ValueError(f"--host {host} exposes the server beyond this machine: pass --api-key KEY (or set "
                         "DESCORE_API_KEY); clients then send 'Authorization: Bearer KEY'")


def _uvicorn_server(app, config: ServeConfig, log_level: str):
    """A uvicorn server that, when shutdown begins (SIGINT/SIGTERM), tells the batcher to stop waiting for
    batch-mates; uvicorn then lets in-flight requests finish before the application's shutdown."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            app.state.batcher.drain()
            await super().shutdown(sockets=sockets)

    return Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, access_log=False,
                                 lifespan="on", timeout_graceful_shutdown=None))


def serve(model, config: ServeConfig, log_level: str = "info"):
    """Run the server in the foreground until SIGINT/SIGTERM; queued requests are finished before it exits."""
    check_bind(config.host, config.api_key)
    _uvicorn_server(create_app(model, config), config, log_level).run()


class BackgroundServer:
    """Serve `model` from a background thread of this process (notebooks, tests, benchmarks):

        with BackgroundServer(model, ServeConfig(port=0)) as server:
            RemoteReward(server.url).score(videos, prompts)

    Leaving the block shuts down gracefully (queued requests finish)."""

    def __init__(self, model, config: ServeConfig | None = None, log_level: str = "warning"):
        self.config = config or ServeConfig(port=0)
        check_bind(self.config.host, self.config.api_key)
        self.app = create_app(model, self.config)
        self.server = _uvicorn_server(self.app, self.config, log_level)
        self.thread = threading.Thread(target=self.server.run, name="descore-serve", daemon=True)
        self.url = None

    def start(self, timeout: float = 60.0):
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        self.url = f"http://{host}:{port}"
        return self

    def stop(self, timeout: float = 60.0):
        self.server.should_exit = True  # the path SIGTERM takes: stop accepting, finish in-flight requests
        self.thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def default_api_key() -> str | None:
    return os.environ.get("DESCORE_API_KEY") or None
