"""Streaming input (descore_plugin/data/loader.py): data order, sharding by accelerate, worker == in-process, the
collated inputs equal the model's own encoding, the byte-bounded cache, and bad videos named by file and row."""

import numpy as np
import pytest
import torch
from accelerate.data_loader import prepare_data_loader

from descore_plugin import DeScoreReward
from descore_plugin.data.loader import InputEncoder, PairCollator, PairOrder, VideoCache, pair_loader, stream_videos
from descore_plugin.data.pairs import DataError, load_pairs, save_pairs
from descore_plugin.data.video import load_video
from descore_plugin.testing.synthetic import write_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("stream")
    pairs_path = write_dataset(root / "data", 5, seed=4, progress=False)
    model = DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])
    return {"pairs": load_pairs(pairs_path), "path": pairs_path, "model": model, "root": root}


def make_loader(world, start=0, stop=6, processes=1, workers=0, seed=7, batch_size=2, pairs=None):
    model = world["model"]
    collate = PairCollator(InputEncoder(model), processes, seed, cot_mask_prob=0.5, with_labels=True)
    return pair_loader(
        pairs or world["pairs"],
        fps=model.config.fps,
        num_frames=model.config.num_frames,
        batch_size=batch_size,
        seed=seed,
        start_micro_step=start,
        stop_micro_step=stop,
        num_processes=processes,
        collate=collate,
        num_workers=workers,
    )


def test_pair_order_is_one_permutation_per_epoch():
    order = PairOrder(5, seed=7)
    stream = [order[p] for p in range(15)]
    expected = [int(i) for e in range(3) for i in np.random.default_rng([7, e]).permutation(5)]
    assert stream == expected
    assert order[2] == expected[2]  # going back to an earlier epoch recomputes it


def test_collated_inputs_equal_the_model_encoding(world):
    model = world["model"]
    batch = next(iter(make_loader(world, start=3, stop=4)))
    pairs = batch["pairs"]
    order = PairOrder(len(world["pairs"]), 7)
    assert [p.origin for p in pairs] == [world["pairs"][order[3 * 2 + s]].origin for s in range(2)]
    masked = np.random.default_rng([7, 3, 0]).random(2) < 0.5  # the coin the training step used to draw
    assert batch["micro_step"] == 3 and batch["rank"] == 0 and batch["masked"].tolist() == masked.tolist()
    videos = [load_video(p.video_a, fps=model.config.fps, num_frames=model.config.num_frames) for p in pairs] + [
        load_video(p.video_b, fps=model.config.fps, num_frames=model.config.num_frames) for p in pairs
    ]
    cots = [None if m else p.cot_a for p, m in zip(pairs, masked)] + [
        None if m else p.cot_b for p, m in zip(pairs, masked)
    ]
    expected = model.append_cots(model.encode_prompts(videos, [p.prompt for p in pairs] * 2), cots, with_labels=True)
    assert batch["inputs"].keys() == expected.keys()
    for key in expected:
        assert torch.equal(batch["inputs"][key], expected[key]), key


def test_workers_give_bitwise_the_same_batches(world):
    in_process = list(make_loader(world, workers=0))
    in_workers = list(make_loader(world, workers=2))
    assert len(in_process) == len(in_workers) == 6
    for a, b in zip(in_process, in_workers):
        assert [p.origin for p in a["pairs"]] == [p.origin for p in b["pairs"]]
        for key in a["inputs"]:
            assert torch.equal(a["inputs"][key], b["inputs"][key]), key


def test_accelerate_gives_each_rank_its_shard(world):
    """Rank r of 2 gets global batches g = 2 * micro_step + r: together the ranks visit the one-process stream, and a
    resumed loader (start micro-step 2) continues exactly where the shard was."""
    stream = [b["pairs"] for b in make_loader(world, stop=8)]  # global batches 0..7 of one process

    def origins(pairs):
        return [p.origin for p in pairs]

    for rank in range(2):
        shard = prepare_data_loader(
            make_loader(world, stop=4, processes=2),
            device=torch.device("cpu"),
            num_processes=2,
            process_index=rank,
            put_on_device=False,
        )
        got = list(shard)
        assert [(b["micro_step"], b["rank"]) for b in got] == [(m, rank) for m in range(4)]
        assert [origins(b["pairs"]) for b in got] == [origins(stream[2 * m + rank]) for m in range(4)]
        resumed = prepare_data_loader(
            make_loader(world, start=2, stop=4, processes=2),
            device=torch.device("cpu"),
            num_processes=2,
            process_index=rank,
            put_on_device=False,
        )
        assert [origins(b["pairs"]) for b in resumed] == [origins(b["pairs"]) for b in got[2:]]


def test_video_cache_is_bounded_in_bytes(world):
    pairs = world["pairs"]
    one = load_video(pairs[0].video_a, num_frames=4)
    size = one.frames.numel()  # uint8: one byte a value
    cache = VideoCache(None, 4, max_bytes=2 * size + size // 2)
    paths = [pairs[0].video_a, pairs[0].video_b, pairs[1].video_a]
    for path in paths:
        cache(path)
    assert list(cache.frames) == paths[1:] and cache.bytes == 2 * size  # the least recently used went first
    cache(paths[1])  # a hit moves it to the back
    cache(paths[0])
    assert list(cache.frames) == [paths[1], paths[0]]
    assert torch.equal(cache(paths[0]).frames, one.frames)
    off = VideoCache(None, 4)
    off(paths[0])
    assert off.bytes == 0 and not off.frames
    with pytest.raises(ValueError, match="-1"):
        VideoCache(None, 4, max_bytes=-1)


def test_bad_video_in_a_worker_names_file_and_row(world, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    pairs = load_pairs(world["path"])
    pairs[2].video_b = str(broken)
    save_pairs(tmp_path / "pairs.jsonl", pairs)
    bad = load_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 3, field 'video_b': .*broken.mp4.*cannot decode"):
        for _ in make_loader(world, pairs=bad, workers=1, batch_size=5, stop=1):
            pass


def test_stream_videos_reports_failures_per_video(world, tmp_path):
    paths = [world["pairs"][0].video_a, str(tmp_path / "missing.mp4"), world["pairs"][0].video_b]
    chunks = list(stream_videos(paths, fps=None, num_frames=4, chunk_size=2, num_workers=1))
    items = [item for chunk in chunks for item in chunk]
    assert [len(c) for c in chunks] == [2, 1] and [item.index for item in items] == [0, 1, 2]
    assert items[0].video.frames.shape[0] == 4 and items[2].error is None
    assert items[1].video is None and "missing.mp4" in items[1].error and "not found" in items[1].error


def test_score_decodes_chunk_by_chunk(world, monkeypatch):
    """DeScoreReward.score decodes a chunk's videos only when that chunk is encoded: one chunk of frames at a time."""
    import descore_plugin.modeling.model as model_module

    model, events = world["model"], []
    real_load, real_encode = model_module.load_video, model.encode_prompts
    monkeypatch.setattr(
        model_module, "load_video", lambda source, **kw: events.append("decode") or real_load(source, **kw)
    )
    monkeypatch.setattr(
        model, "encode_prompts", lambda *args, **kw: events.append("encode") or real_encode(*args, **kw)
    )
    paths = [p.video_a for p in world["pairs"][:3]]
    streamed = model.score(paths, ["a red square"] * 3, think=False, batch_size=2).rewards
    assert events == ["decode", "decode", "encode", "decode", "encode"]
    monkeypatch.undo()
    whole = model.score(paths, ["a red square"] * 3, think=False, batch_size=3).rewards
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)


def test_workers_leave_ctrl_c_and_dropped_connections_to_the_main_process():
    """A worker ignores SIGINT and stays quiet about a connection the main process dropped (the fd hand-over thread of
    `multiprocessing.resource_sharer` reports through `sys.excepthook`), but still reports any other error."""
    import subprocess
    import sys

    script = """
import signal, sys
from descore_plugin.data.loader import _leave_ctrl_c_to_the_main_process
_leave_ctrl_c_to_the_main_process(0)
assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
for error in (ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "Broken pipe"), EOFError()):
    sys.excepthook(type(error), error, None)
error = ValueError("a real worker error")
sys.excepthook(type(error), error, None)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ValueError: a real worker error" in result.stderr
    for quiet in ("ConnectionResetError", "BrokenPipeError", "EOFError"):
        assert quiet not in result.stderr, result.stderr
