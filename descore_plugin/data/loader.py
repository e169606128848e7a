"""Streaming input: decoding, frame sampling and the processor run in `torch.utils.data` worker processes.

Training (stage 1, 2 and 3) reads pairs through one DataLoader:

    order       `PairOrder(num_pairs, seed)`: position p of the endless stream is pair order_e[p mod n], epoch
                e = p // n, order_e = a permutation drawn from (seed, e). One permutation per epoch, computed
                when the stream enters that epoch (not per sample).
    batches     `PairBatchSampler`: global batch g holds positions g*B .. g*B + B - 1. Global batch
                g = micro_step * num_processes + rank, and accelerate's `BatchSamplerShard` hands process r every
                num_processes-th batch starting at r, so `accelerator.prepare(loader)` gives each rank its shard
                and the data order stays a function of (seed, micro_step, rank) on any number of processes and
                workers. The sampler starts at a given micro-step: a resumed run continues where the killed one was.
    items       `PairDataset[(g, pair_index)]`: decodes and samples both videos of the pair (in a worker).
    collate     `PairCollator`: the CoT-masking coin of each pair (drawn from (seed, micro_step, rank), as the
                training step would), the chat template and the real processor (stage 1: the whole teacher-forced
                input, CoTs appended). The training step moves ready tensors to the device and runs the model.

Scoring whole datasets streams the same way: `stream_videos(items, ...)` decodes (video, prompt) items in workers,
chunk by chunk, and yields each video or the error that names its file; `descore score`, evaluation and the
distillation teacher read videos through it, so memory does not grow with the number of videos.

No cache keeps every decoded video. `VideoCache(max_bytes)` is an optional least-recently-used cache of decoded,
sampled frames bounded in BYTES (default 0 = off); each worker process holds its own, so the bound is per process.
"""

import collections
import os
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from descore_plugin.data.pairs import DataError, Pair
from descore_plugin.data.video import Video, load_video
from descore_plugin.modeling.model import DeScoreReward

__all__ = [
    "VideoCache",
    "PairOrder",
    "PairBatchSampler",
    "PairDataset",
    "PairCollator",
    "InputEncoder",
    "pair_loader",
    "stream_videos",
    "VideoItem",
]


class VideoCache:
    """Decode and sample a video file (`load_video`), keeping the most recently used results up to `max_bytes` of
    frames (uint8 T x 3 x H x W, so T*3*H*W bytes a video). `max_bytes=0` keeps nothing: every call decodes."""

    def __init__(self, fps: float | None, num_frames: int | None, max_bytes: int = 0):
        if max_bytes < 0:
            raise ValueError(f"video cache size {max_bytes}: must be >= 0 bytes (0 = no cache)")
        self.fps, self.num_frames, self.max_bytes = fps, num_frames, max_bytes
        self.frames: collections.OrderedDict[str, Video] = collections.OrderedDict()
        self.bytes = 0

    def __call__(self, path: str, name: str | None = None) -> Video:
        if path in self.frames:
            self.frames.move_to_end(path)
            return self.frames[path]
        video = load_video(path, fps=self.fps, num_frames=self.num_frames, name=name)
        size = video.frames.numel() * video.frames.element_size()
        if 0 < size <= self.max_bytes:
            self.frames[path] = video
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self.frames.popitem(last=False)
                self.bytes -= old.frames.numel() * old.frames.element_size()
        return video


class PairOrder:
    """Pair index at each position of the endless training stream: epoch e = p // n visits the pairs in the
    permutation drawn from numpy's generator seeded with [seed, e]. Holds one epoch's permutation at a time."""

    def __init__(self, num_pairs: int, seed: int):
        self.num_pairs, self.seed = num_pairs, seed
        self._epoch, self._order = None, None

    def __getitem__(self, position: int) -> int:
        epoch, index = divmod(position, self.num_pairs)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_pairs)
        return int(self._order[index])


class PairBatchSampler(Sampler):
    """Global batches `start_batch .. stop_batch - 1` of `batch_size` pairs each, as lists of (global batch, pair
    index). Not sharded itself: accelerate's `BatchSamplerShard` gives process r the batches g with g % N == r
    (start_batch is a multiple of N)."""

    def __init__(self, order: PairOrder, batch_size: int, start_batch: int, stop_batch: int):
        self.order, self.batch_size = order, batch_size
        self.start_batch, self.stop_batch = start_batch, stop_batch
        self.drop_last = True  # every batch is full: accelerate's sharding needs no padding at the end

    def __len__(self):
        return max(0, self.stop_batch - self.start_batch)

    def __iter__(self):
        for g in range(self.start_batch, self.stop_batch):
            yield [(g, self.order[g * self.batch_size + slot]) for slot in range(self.batch_size)]


@dataclass
class PairItem:
    batch: int  # global batch index g
    pair: Pair
    video_a: Video
    video_b: Video


class PairDataset(Dataset):
    """Item (g, i) = pair i with both videos decoded and sampled. A video that cannot be read raises DataError
    naming the pair's file and row, the field and the video file (from the worker process, re-raised by the
    DataLoader in the training process)."""

    def __init__(self, pairs: list[Pair], fps: float | None, num_frames: int | None, cache_bytes: int = 0):
        self.pairs = pairs
        self.videos = VideoCache(fps, num_frames, cache_bytes)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key) -> PairItem:
        g, index = key
        pair = self.pairs[index]
        return PairItem(g, pair, self._load(pair, "video_a"), self._load(pair, "video_b"))

    def _load(self, pair: Pair, field: str) -> Video:
        path = getattr(pair, field)
        try:
            return self.videos(path, name=path)
        except Exception as error:  # decoders raise many types; all of them become one message naming the row
            message = str(error) if path in str(error) else f"{path}: {error}"
            raise DataError(f"{pair.origin or 'pair'}, field '{field}': {message}") from error


class InputEncoder:
    """The input side of a DeScoreReward (processor, judge template, reward token) without its weights, for worker
    processes. Its methods are the model's own `encode_prompts` and `append_cots`, so both build identical tensors."""

    def __init__(self, model):
        self.config, self.processor, self.tokenizer = model.config, model.processor, model.tokenizer
        self.template, self.family, self.reward_token_id = model.template, model.family, model.reward_token_id
        self._end_ids = list(model._eos_ids())

    def _eos_ids(self) -> list:
        return self._end_ids

    encode_prompts = DeScoreReward.encode_prompts
    append_cots = DeScoreReward.append_cots
    chat_text = DeScoreReward.chat_text
    generation_suffix_ids = DeScoreReward.generation_suffix_ids


class PairCollator:
    """Turns PairItems into a training batch:
        {"pairs": [Pair], "videos": [Video] (A's then B's), "masked": bool array (n,), "micro_step", "rank",
         "inputs": teacher-forced model inputs (stage 1 only: `encode=True`)}.
    The masking coin of pair j is rng.random(n)[j] < cot_mask_prob with rng = default_rng([seed, micro_step, rank])
    (one coin per pair: both videos lose their CoT, DeScore Sec. 3.2)."""

    def __init__(
        self,
        encoder: InputEncoder | None,
        num_processes: int,
        seed: int,
        cot_mask_prob: float,
        with_labels: bool = False,
    ):
        self.encoder, self.num_processes, self.seed = encoder, num_processes, seed
        self.cot_mask_prob, self.with_labels = cot_mask_prob, with_labels

    def __call__(self, items: list[PairItem]) -> dict:
        micro_step, rank = divmod(items[0].batch, self.num_processes)
        pairs = [item.pair for item in items]
        rng = np.random.default_rng([self.seed, micro_step, rank])
        masked = rng.random(len(pairs)) < self.cot_mask_prob
        batch = {
            "pairs": pairs,
            "videos": [i.video_a for i in items] + [i.video_b for i in items],
            "masked": masked,
            "micro_step": micro_step,
            "rank": rank,
        }
        if self.encoder is not None:
            cots = [None if m else p.cot_a for p, m in zip(pairs, masked)] + [
                None if m else p.cot_b for p, m in zip(pairs, masked)
            ]
            prompts, instructions = [p.prompt for p in pairs] * 2, [p.instruction for p in pairs] * 2
            encoded = self.encoder.encode_prompts(batch["videos"], prompts, instructions, stage="stage1")
            batch["inputs"] = self.encoder.append_cots(encoded, cots, with_labels=self.with_labels)
        return batch


def _leave_ctrl_c_to_the_main_process(worker_id: int) -> None:
    """DataLoader worker start: leave Ctrl-C to the main process, which turns it into one `interrupted` line and shuts
    its workers down.

    - A terminal's Ctrl-C reaches the whole process group: a worker hit in the middle of a decoder's `__del__` would
      print an "Exception ignored ... KeyboardInterrupt" traceback and carry on, so workers ignore SIGINT.
    - A worker hands each batch's tensors over by file descriptor, from a background thread of
      `multiprocessing.resource_sharer`; a main process interrupted mid-handshake drops the connection, and that
      thread prints the `ConnectionResetError` through `sys.excepthook`. A broken connection to the main process is
      the main process's to report, so workers keep quiet about it.
    """
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = sys.excepthook

    def quiet_about_a_dropped_main_process(kind, value, traceback):
        if not issubclass(kind, (ConnectionError, EOFError)):
            report(kind, value, traceback)

    sys.excepthook = quiet_about_a_dropped_main_process


def pair_loader(
    pairs: list[Pair],
    *,
    fps,
    num_frames,
    batch_size: int,
    seed: int,
    start_micro_step: int,
    stop_micro_step: int,
    num_processes: int,
    collate: PairCollator,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    cache_bytes: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The training DataLoader for micro-steps [start, stop) of every process (prepare it with accelerate to shard)."""
    sampler = PairBatchSampler(
        PairOrder(len(pairs), seed), batch_size, start_micro_step * num_processes, stop_micro_step * num_processes
    )
    return DataLoader(
        PairDataset(pairs, fps, num_frames, cache_bytes),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None,
        pin_memory=pin_memory,
        worker_init_fn=_leave_ctrl_c_to_the_main_process,
    )


# ---------------------------------------------------------------------- scoring streams
@dataclass
class VideoItem:
    index: int  # position in the caller's list
    source: object  # the path (or in-memory video) as the caller gave it
    video: Video | None  # decoded and sampled, None when it failed
    error: str | None  # why it failed, naming the file


class _VideoList(Dataset):
    def __init__(self, sources: list, fps, num_frames, cache_bytes: int):
        self.sources = sources
        self.videos = VideoCache(fps, num_frames, cache_bytes)

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, index) -> VideoItem:
        source = self.sources[index]
        is_path = isinstance(source, (str, os.PathLike))
        name = str(source) if is_path else f"videos[{index}]"
        try:
            video = (
                self.videos(str(source), name=name)
                if is_path
                else load_video(source, fps=self.videos.fps, num_frames=self.videos.num_frames, name=name)
            )
            return VideoItem(index, source, video, None)
        except Exception as error:  # a corrupt or missing file is a row's error, not the end of the stream
            message = str(error)
            return VideoItem(index, source, None, message if name in message else f"{name}: {message}")


def _items(batch):
    return batch


def stream_videos(
    sources: list,
    *,
    fps,
    num_frames,
    chunk_size: int,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    cache_bytes: int = 0,
):
    """Yield lists of `VideoItem` (up to chunk_size, in order) for `sources` (paths or in-memory videos), decoded in
    `num_workers` worker processes ahead of the consumer. Failures are returned as items with `error`, never
    raised, so that a caller can report them per video and go on."""
    if not sources:
        return
    loader = DataLoader(
        _VideoList(list(sources), fps, num_frames, cache_bytes),
        batch_size=chunk_size,
        shuffle=False,
        collate_fn=_items,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None,
        worker_init_fn=_leave_ctrl_c_to_the_main_process,
    )
    yield from loader
