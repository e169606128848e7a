"""The scoring queue of `descore serve`: micro-batches over one or several model replicas, shared by every request,
with duplicate work merged and abandoned work dropped.

- One queue per kind of video: ("think" | "no-think" | "cots", max_new_tokens). A batch holds one kind only.
- One scoring thread per replica (one replica per device). Each takes, per batch, up to `max_batch_size` queued
  videos of the oldest kind, waiting at most `max_wait_ms` for company (counted from the later of the oldest
  video's arrival and the moment that replica became free). A batch is scored with `DeScoreReward.score`, so a
  served reward is the in-process reward; if a batch fails as a whole, its videos are re-scored one by one so that
  one bad video cannot take its batch-mates down.
- Every queued video carries a digest of its content and settings. A second request for a digest that is queued or
  being scored waits for the same result instead of queueing again; a finished result is kept `dedupe_seconds`
  for clients that retry after a timeout. A request whose client went away `release`s its digests: a queued video
  nobody waits for any more is dropped before it is scored.
"""

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from descore_plugin.serving.decoding import RequestError

logger = logging.getLogger(__name__)

MAX_CACHED = 65536  # finished results kept for retries, at most (a few hundred bytes each)


@dataclass
class _Pending:
    video: object
    prompt: str
    cot: str | None
    future: asyncio.Future
    queued_at: float
    instruction: str | None = None
    digest: str | None = None
    waiters: int = 1
    scoring: bool = field(default=False)


class MicroBatcher:
    """Queues videos from concurrent requests and scores them in batches, one scoring thread per model replica.

    models: one `DeScoreReward` or a list of replicas (same weights, one per device); they share the queue."""

    def __init__(self, models, max_batch_size: int = 8, max_wait_ms: float = 10.0, dedupe_seconds: float = 0.0):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}: must be at least 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms}: must be >= 0")
        self.models = list(models) if isinstance(models, (list, tuple)) else [models]
        self.model = self.models[0]
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.dedupe_seconds = dedupe_seconds
        self.queues: dict[tuple, deque] = {}
        self.batch_sizes = Counter()  # batch size -> number of batches scored
        self.videos_scored = 0
        self.replica_videos = [0] * len(self.models)  # videos scored by each replica
        self.videos_dropped = 0  # queued videos dropped because every request that wanted them was gone
        self.duplicates_merged = 0  # videos answered by a queued or recent identical one instead of being scored
        self.peak_queued = 0  # most videos queued at once (large requests are fed in by windows)
        self.inflight: dict[str, _Pending] = {}  # digest -> the queued or scoring item
        self.recent: OrderedDict = OrderedDict()  # digest -> (finished at, result)
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"descore-score-{i}") for i in range(len(self.models))
        ]
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._draining = False

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def start(self):
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(i)) for i in range(len(self.models))]

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
        if self._tasks:
            await asyncio.gather(*self._tasks)
        for executor in self._executors:
            executor.shutdown(wait=True)

    # ------------------------------------------------------------------ requests' side
    def cached(self, digest: str | None):
        """The kept result of an identical finished video, or None."""
        if digest is None or digest not in self.recent:
            return None
        finished, result = self.recent[digest]
        if time.monotonic() - finished > self.dedupe_seconds:
            del self.recent[digest]
            return None
        self.recent.move_to_end(digest)
        self.duplicates_merged += 1
        return result

    def join(self, digest: str | None):
        """The future of an identical queued or scoring video (now also awaited by the caller), or None."""
        item = self.inflight.get(digest) if digest is not None else None
        if item is None or item.future.done():
            return None
        item.waiters += 1
        self.duplicates_merged += 1
        return item.future

    def submit(
        self,
        key: tuple,
        videos: list,
        prompts: list,
        cots: list,
        instructions: list | None = None,
        digests: list | None = None,
    ) -> list:
        """Queue videos (each with its prompt, CoT, judge instruction (None = the template) and content digest);
        returns one future per video, resolved with a result dict. A digest already queued is joined instead."""
        if self._closing:
            raise RequestError(503, "the server is shutting down")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        queue = self.queues.setdefault(key, deque())
        instructions = instructions if instructions is not None else [None] * len(videos)
        digests = digests if digests is not None else [None] * len(videos)
        for video, prompt, cot, instruction, digest in zip(videos, prompts, cots, instructions, digests):
            joined = self.join(digest)
            if joined is not None:
                futures.append(joined)
                continue
            item = _Pending(video, prompt, cot, loop.create_future(), now, instruction, digest)
            queue.append(item)
            if digest is not None:
                self.inflight[digest] = item
            futures.append(item.future)
        self.peak_queued = max(self.peak_queued, self.queued)
        self._wakeup.set()
        return futures

    def release(self, digests: list):
        """The request that awaited these digests is gone: a queued video nobody else awaits is dropped."""
        for digest in digests:
            item = self.inflight.get(digest)
            if item is None or item.future.done():
                continue
            item.waiters -= 1
            if item.waiters <= 0 and not item.scoring:
                item.future.cancel()  # the scoring loop skips cancelled items
                del self.inflight[digest]
                self.videos_dropped += 1

    # ------------------------------------------------------------------ scoring side
    def _oldest_key(self):
        for queue in self.queues.values():
            while queue and queue[0].future.done():  # dropped while queued
                queue.popleft()
        waiting = [(q[0].queued_at, key) for key, q in self.queues.items() if q]
        return min(waiting)[1] if waiting else None

    async def _run(self, replica: int):
        loop = asyncio.get_running_loop()
        free_since = 0.0
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
            deadline = max(queue[0].queued_at, free_since) + self.max_wait
            while len(queue) < self.max_batch_size and not (self._closing or self._draining):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = []
            while queue and len(batch) < self.max_batch_size:
                item = queue.popleft()
                if not item.future.done():
                    item.scoring = True
                    batch.append(item)
            if not batch:
                continue
            if len(self.models) > 1:
                self._wakeup.set()  # another replica may take what is left
            try:
                results = await loop.run_in_executor(self._executors[replica], self._score, replica, key, batch)
            except BaseException as error:  # never leave a request waiting forever
                results = [{"error": f"scoring failed: {type(error).__name__}: {error}"}] * len(batch)
            free_since = time.monotonic()
            self.batch_sizes[len(batch)] += 1
            self.videos_scored += len(batch)
            self.replica_videos[replica] += len(batch)
            for item, result in zip(batch, results):
                self._finish(item, result)

    def _finish(self, item: _Pending, result: dict):
        if item.digest is not None:
            if self.inflight.get(item.digest) is item:
                del self.inflight[item.digest]
            if self.dedupe_seconds > 0 and result.get("error") is None:  # a failure may be transient: not kept
                self.recent[item.digest] = (time.monotonic(), result)
                self.recent.move_to_end(item.digest)
                while len(self.recent) > MAX_CACHED:
                    self.recent.popitem(last=False)
        if not item.future.done():
            item.future.set_result(result)

    def _score(self, replica: int, key, batch: list) -> list[dict]:
        mode, max_new_tokens = key
        model = self.models[replica]
        try:
            out = model.score(
                [item.video for item in batch],
                [item.prompt for item in batch],
                think=mode == "think",
                cots=[item.cot for item in batch] if mode == "cots" else None,
                batch_size=len(batch),
                max_new_tokens=max_new_tokens,
                instructions=[item.instruction for item in batch] if any(item.instruction for item in batch) else None,
            )
        except Exception as error:
            if len(batch) == 1:
                return [{"error": f"{batch[0].video.name}: {type(error).__name__}: {error}"}]
            logger.warning("a batch of %d failed (%s); scoring its videos one by one", len(batch), error)
            return [self._score(replica, key, [item])[0] for item in batch]
        results = []
        for i in range(len(batch)):
            result = {"reward": float(out.rewards[i]), "error": None}
            if out.cots is not None:
                result.update(
                    cot=out.cots[i],
                    dimensional_scores=out.dimensional_scores[i],
                    overall_score=out.overall_scores[i],
                    parse_error=out.parse_errors[i],
                )
            if out.uncertainty is not None:
                result.update(uncertainty=float(out.uncertainty[i]), bin_probs=out.bin_probs[i].tolist())
            results.append(result)
        return results
