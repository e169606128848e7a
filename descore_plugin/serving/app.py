"""The FastAPI application of `descore serve`: URL prefixes, authentication, body limits, and the path every
protocol's videos take (digest, reuse, decode, queue, await) while watching for the client to go away.

The endpoints themselves, one group per peer, are in `protocols.py`; the queue and replicas in `batching.py`.

URL prefixes, for clients that only take a base URL (they append `/health`, `/compute`, ... to it, or post to it as
is): before the endpoint, in any order, each at most once:

    /key/KEY          the API key (Flow-Factory cannot send a header or a query string)
    /think, /no-think the scoring mode of requests that do not choose one (Flow-Factory never does)
    /video_fps/R      the source frame rate of uploaded frames of requests that do not give one

e.g. `http://host:8000/key/KEY/no-think` + `/compute` = `http://host:8000/key/KEY/no-think/compute`.
"""

import asyncio
import hashlib
import json
import logging
import os
import secrets
from contextlib import asynccontextmanager
from urllib.parse import unquote

from descore_plugin.serving.batching import MicroBatcher
from descore_plugin.serving.config import ServeConfig
from descore_plugin.serving.decoding import RequestError, VideoDecoder, check_video_fps, describe, per_video_fps

logger = logging.getLogger(__name__)

PREFIX_SCOPE = "descore.prefix"  # where the prefix middleware leaves what it read


class ClientGone(RequestError):
    """The client disconnected (or timed out) before its answer was ready; its queued videos were dropped."""

    def __init__(self):
        super().__init__(499, "the client closed the connection before the answer was ready")


class PrefixMiddleware:
    """Reads the URL prefixes (see the module docstring) off the path before routing."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            parts = scope["path"].split("/")[1:]
            options, i = {}, 0
            while i < len(parts):
                part = parts[i]
                if part in ("think", "no-think") and "think" not in options:
                    options["think"], i = part == "think", i + 1
                elif part in ("key", "video_fps") and i + 1 < len(parts) and part not in options:
                    options[part], i = unquote(parts[i + 1]), i + 2
                else:
                    break
            if i:
                path = "/" + "/".join(parts[i:])
                scope = dict(scope, path=path, raw_path=path.encode())
            scope[PREFIX_SCOPE] = options
        await self.app(scope, receive, send)


def prefix_options(request) -> dict:
    return request.scope.get(PREFIX_SCOPE, {})


async def _wait_disconnect(request):
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Service:
    """What every protocol's endpoint shares: the config, the batcher, the decoder and the request path."""

    def __init__(self, models, config: ServeConfig):
        self.models = list(models) if isinstance(models, (list, tuple)) else [models]
        self.model = self.models[0]
        self.config = config
        self.batcher = MicroBatcher(self.models, config.max_batch_size, config.max_wait_ms, config.dedupe_seconds)
        self.decoder = VideoDecoder(config, self.model.config.fps, self.model.config.num_frames)
        self.limit = int(config.max_request_mb * 1024 * 1024)
        self.cot_cap = config.max_new_tokens if config.max_new_tokens is not None else self.model.config.max_new_tokens
        # a request's videos are decoded and queued a window at a time: a 1024-video request never sits decoded
        self.window = max(16, 4 * config.max_batch_size * len(self.models))

    # ------------------------------------------------------------------ reading requests
    def check_key(self, request):
        if self.config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            supplied = header[7:].strip()
        else:
            supplied = prefix_options(request).get("key") or request.query_params.get("api_key", "")
        if not secrets.compare_digest(supplied.encode(), self.config.api_key.encode()):
            raise RequestError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY', or put "
                "it in the URL (?api_key=KEY, or the path prefix /key/KEY)",
            )

    async def read_body(self, request) -> bytes:
        from starlette.requests import ClientDisconnect

        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise RequestError(
                413,
                f"request body of {int(declared)} bytes; this server takes at most {self.limit} "
                f"(--max-request-mb {self.config.max_request_mb:g})",
            )
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.limit:
                    raise RequestError(
                        413, f"request body over {self.limit} bytes (--max-request-mb {self.config.max_request_mb:g})"
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            raise RequestError(400, "the client disconnected before sending the whole body") from None
        return b"".join(chunks)

    async def read_json(self, request) -> dict:
        self.check_key(request)
        body = await self.read_body(request)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise RequestError(400, f"the body is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise RequestError(422, f"the body must be a JSON object, got {describe(data)}")
        return data

    def think(self, request, value=None, field: str = "think") -> bool:
        """The request's scoring mode: its own field, else the URL prefix, else the server's --think default."""
        if value is None:
            value = prefix_options(request).get("think", self.config.think)
        if not isinstance(value, bool):
            raise RequestError(422, f"{field}: expected true or false, got {value!r}")
        return value

    def video_fps(self, request, value, count: int, field: str = "video_fps") -> list:
        """Per video, the source frame rate of uploaded frames: the request's field (one number or a list), else
        the URL prefix /video_fps/R, else None (16, Wan-2.1's rate, as in-process)."""
        if value is None and "video_fps" in prefix_options(request):
            text = prefix_options(request)["video_fps"]
            try:
                value = float(text)
            except ValueError:
                raise RequestError(422, f"URL prefix /video_fps/{text}: not a number") from None
            return [check_video_fps(value, "the URL prefix /video_fps")] * count
        return per_video_fps(value, count, field)

    # ------------------------------------------------------------------ scoring
    def _digest(self, spec, prompt, cot, instruction, video_fps, key) -> str | None:
        """A digest of everything the score of one video depends on; None when it cannot be told (an unreadable
        server-side path: it then fails on its own)."""
        h = hashlib.sha256(json.dumps([key, prompt, cot, instruction, video_fps]).encode())

        def add(value):
            if isinstance(value, (bytes, bytearray)):
                h.update(b"b%d:" % len(value) + bytes(value))
            elif isinstance(value, str):
                raw = value.encode()
                h.update(b"s%d:" % len(raw) + raw)
            elif isinstance(value, list):
                h.update(b"l%d:" % len(value))
                for item in value:
                    add(item)
            elif isinstance(value, dict):
                for name in sorted(value):
                    add(str(name))
                    add(value[name] if not isinstance(value[name], (int, float)) else repr(value[name]))
            else:
                h.update(repr(value).encode())

        path = spec if isinstance(spec, str) else spec.get("path") if isinstance(spec, dict) else None
        if isinstance(path, str):  # a server-side file: its identity is its name, size and modification time
            try:
                stat = os.stat(path)
            except OSError:
                return None
            add([path, str(stat.st_size), str(stat.st_mtime_ns)])
        add(spec)
        return h.hexdigest()

    async def score_videos(
        self,
        request,
        specs,
        prompts,
        mode,
        cots=None,
        max_new_tokens=None,
        decode=None,
        instructions=None,
        video_fps=None,
    ) -> list[dict]:
        """Score every video of a request; one result dict per video (with "error" set where it failed).

        The videos go half a window at a time: digests (an identical video queued or recently scored is reused),
        decoding, queueing; the next half is decoded only when this request has at most half a window of videos
        waiting, so at most `window` of its videos are ever held decoded. If the client goes away, its videos that
        nobody else awaits are dropped from the queue."""
        from starlette.concurrency import run_in_threadpool

        config, batcher = self.config, self.batcher
        count = len(specs)
        if count > config.max_videos_per_request:
            raise RequestError(
                413,
                f"{count} videos in one request; this server takes at most "
                f"{config.max_videos_per_request} (--max-videos-per-request)",
            )
        if len(prompts) != count:
            raise RequestError(422, f"got {count} videos but {len(prompts)} prompts: send one prompt per video")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise RequestError(422, f"prompts[{i}]: expected a string, got {type(prompt).__name__}")
        prompts = [str(p) for p in prompts]  # numpy.str_ from a pickled array becomes a plain str
        cots = cots if cots is not None else [None] * count
        instructions = instructions if instructions is not None else [None] * count
        video_fps = video_fps if video_fps is not None else [None] * count
        key = (mode, min(max_new_tokens or self.cot_cap, self.cot_cap) if mode == "think" else None)
        results: list = [None] * count
        futures: dict = {}
        held: list = []  # digests this request awaits
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            step = max(1, self.window // 2)  # decode the next half-window while the queue holds the previous one
            for start in range(0, count, step):
                rows = range(start, min(count, start + step))
                digests = await run_in_threadpool(
                    lambda rows=rows: [
                        self._digest(specs[i], prompts[i], cots[i], instructions[i], video_fps[i], key) for i in rows
                    ]
                )
                todo = []
                for i, digest in zip(rows, digests):
                    if (hit := batcher.cached(digest)) is not None:
                        results[i] = hit
                    elif (joined := batcher.join(digest)) is not None:
                        futures[i] = joined
                        held.append(digest)
                    else:
                        todo.append((i, digest))
                decoded = await run_in_threadpool(
                    lambda todo=todo: [
                        self.decoder.decode_one(specs[i], f"videos[{i}]", video_fps[i], decode) for i, _ in todo
                    ]
                )
                good = []
                for (i, digest), video in zip(todo, decoded):
                    if isinstance(video, str):
                        results[i] = {"error": video}
                    else:
                        good.append((i, digest, video))
                if good:
                    queued = batcher.submit(
                        key,
                        [v for _, _, v in good],
                        [prompts[i] for i, _, _ in good],
                        [cots[i] for i, _, _ in good],
                        [instructions[i] for i, _, _ in good],
                        [d for _, d, _ in good],
                    )
                    for (i, digest, _), future in zip(good, queued):
                        futures[i] = future
                        if digest is not None:
                            held.append(digest)
                more = start + step < count
                await self._wait(list(futures.values()), watcher, self.window - step if more else 0)
        except BaseException:
            batcher.release(held)
            raise
        finally:
            watcher.cancel()
        for i, future in futures.items():
            results[i] = future.result()
        return results

    @staticmethod
    async def _wait(futures: list, watcher, at_most: int):
        """Until at most `at_most` of `futures` are unfinished; ClientGone if the client disconnects first."""
        while True:
            pending = [f for f in futures if not f.done()]
            if len(pending) <= at_most:
                return
            done, _ = await asyncio.wait([*pending, watcher], return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                raise ClientGone()


def create_app(model, config: ServeConfig | None = None):
    """The FastAPI application serving `model`: a loaded `DeScoreReward`, or a list of replicas of it (one per
    device) that share one queue behind one port."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from descore_plugin.serving import protocols

    config = config or ServeConfig()
    service = Service(model, config)
    batcher = service.batcher

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.close()  # uvicorn has already let in-flight requests finish; finish anything still queued

    app = FastAPI(title="DeScore reward server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(PrefixMiddleware)
    app.state.batcher = batcher
    app.state.service = service

    @app.exception_handler(RequestError)
    async def _request_error(request, error: RequestError):
        if isinstance(error, ClientGone):
            logger.info("a client went away; %s", error.message)
        else:  # some clients show only the status (Flow-Factory, OpenRLHF): the reason is in the server's log too
            logger.warning("%s %s: %d %s", request.method, request.url.path, error.status, error.message)
        return JSONResponse(
            {"detail": error.message, "error": error.message},
            status_code=error.status,
            headers={"WWW-Authenticate": "Bearer"} if error.status == 401 else None,
        )

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info(request: Request):
        service.check_key(request)
        return {
            "head": service.model.config.head,
            "fps": service.model.config.fps,
            "num_frames": service.model.config.num_frames,
            "max_new_tokens": service.cot_cap,
            "think": config.think,
            "on_bad_video": config.on_bad_video,
            "replicas": [str(getattr(m, "device", "cpu")) for m in service.models],
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
            "window": service.window,
            "videos_scored": batcher.videos_scored,
            "replica_videos": batcher.replica_videos,
            "videos_dropped": batcher.videos_dropped,
            "duplicates_merged": batcher.duplicates_merged,
            "peak_queued": batcher.peak_queued,
            "queued": batcher.queued,
            "batch_sizes": {str(k): v for k, v in sorted(batcher.batch_sizes.items())},
            "limits": {
                "max_request_mb": config.max_request_mb,
                "max_videos_per_request": config.max_videos_per_request,
                "max_frames": config.max_frames,
                "max_frame_pixels": config.max_frame_pixels,
                "dedupe_seconds": config.dedupe_seconds,
            },
        }

    protocols.add_native(app, service)
    protocols.add_flow_factory(app, service)
    protocols.add_openrlhf(app, service)
    if config.allow_pickle:
        protocols.add_reward_server(app, service)
    return app
