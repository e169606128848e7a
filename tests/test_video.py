import os
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from descore_plugin.data.video import (
    DEFAULT_VIDEO_FPS,
    VideoInputError,
    load_video,
    load_videos,
    resize_frames,
    sample_frame_indices,
    smart_resize,
    split_videos,
    write_video,
)


def index_clip(num_frames, height=32, width=64):
    """uint8 (F, 3, H, W) clip whose frame i is filled with the value 8 * i, so a frame's mean gives its index."""
    return torch.stack([torch.full((3, height, width), 8 * i, dtype=torch.uint8) for i in range(num_frames)])


def frame_indices(video):
    """Source index of each frame of a `Video` made from `index_clip`, read back from the pixel values."""
    return [round(value / 8) for value in video.frames.float().mean(dim=(1, 2, 3)).tolist()]


@pytest.mark.parametrize(
    "total, source_fps, fps, num_frames, expected_indices",
    [
        # every frame, odd count rounded down to even: 80 frames spread over [0, 80], first and last kept
        (81, 16.0, None, None, torch.linspace(0, 80, 80).round().long().tolist()),
        (8, 16.0, None, None, list(range(8))),
        # fps=2 on 81 frames at 16 fps (a Wan video): 10.125 -> 10 frames, linspace(0, 80, 10).round()
        (81, 16.0, 2.0, None, [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]),
        # fps=3: 15.19 -> 14 frames
        (81, 16.0, 3.0, None, [0, 6, 12, 18, 25, 31, 37, 43, 49, 55, 62, 68, 74, 80]),
        # fewer than 4 frames' worth: at least 4 (qwen-vl-utils FPS_MIN_FRAMES)
        (20, 16.0, 0.1, None, [0, 6, 13, 19]),
        # a rate above the file's: clamped to every frame (even)
        (10, 16.0, 24.0, None, list(range(10))),
        # a 3-frame video: min(768, 3) floored to even = 2 frames
        (3, 16.0, 2.0, None, [0, 2]),
        (81, 16.0, None, 8, [0, 11, 23, 34, 46, 57, 69, 80]),
        (10, 24.0, None, 4, [0, 3, 6, 9]),
        (6, 16.0, None, 6, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_sample_frame_indices_match_qwen_vl_utils(total, source_fps, fps, num_frames, expected_indices):
    from qwen_vl_utils.vision_process import smart_nframes

    indices, sampled_fps = sample_frame_indices(total, source_fps, fps=fps, num_frames=num_frames)
    assert indices == expected_indices
    assert sampled_fps == pytest.approx(len(indices) / total * source_fps, rel=1e-12)  # qwen-vl-utils' sample_fps
    if fps is not None or num_frames is not None:  # qwen-vl-utils itself is the oracle
        request = {"fps": fps} if fps is not None else {"nframes": num_frames}
        count = smart_nframes(request, total_frames=total, video_fps=source_fps)
        assert indices == torch.linspace(0, total - 1, count).round().long().tolist()


@pytest.mark.parametrize("total", [1, 0])
def test_images_and_empty_videos_are_refused(total):
    with pytest.raises(VideoInputError, match="an image, not a video" if total else "no frames"):
        sample_frame_indices(total, 16.0, fps=2.0, name="videos[0]")


@pytest.mark.parametrize(
    "height, width, factor, min_pixels, max_pixels",
    [
        (480, 832, 28, 3136, 200704),
        (480, 832, 32, 3136, 307200),
        (56, 56, 28, 784, 3136),
        (64, 96, 28, 784, 3136),
        (17, 300, 28, 3136, 200704),
        (1080, 1920, 28, 131072, 200704),
        (720, 1280, 32, 3136, 200704),
    ],
)
def test_smart_resize_matches_qwen_vl_utils(height, width, factor, min_pixels, max_pixels):
    from qwen_vl_utils.vision_process import smart_resize as oracle

    size = smart_resize(height, width, factor, min_pixels, max_pixels)
    assert size == oracle(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    assert size[0] % factor == 0 and size[1] % factor == 0 and min_pixels <= size[0] * size[1] <= max_pixels


def test_file_frames_and_sizes_equal_qwen_vl_utils_fetch_video(tmp_path, monkeypatch):
    """A 81-frame 16 fps clip: the same frames, the same size and the same pixels as qwen-vl-utils' fetch_video."""
    from qwen_vl_utils import vision_process

    torch.manual_seed(0)
    path = tmp_path / "wan.mp4"
    write_video(path, torch.randint(0, 256, (81, 3, 48, 80), dtype=torch.uint8), fps=16)
    monkeypatch.setattr(vision_process, "get_video_reader_backend", lambda: "decord")
    for fps, factor, min_pixels, max_pixels in [(2.0, 28, 784, 3136), (2.0, 32, 1024, 2048), (4.0, 28, 3136, 200704)]:
        expected, metadata = vision_process.fetch_video(
            {"video": str(path), "fps": fps, "min_pixels": min_pixels, "max_pixels": max_pixels},
            image_patch_size=factor // 2,
            return_video_metadata=True,
        )
        video = resize_frames(load_video(path, fps=fps, backend="decord"), factor, min_pixels, max_pixels)
        assert video.indices == metadata["frames_indices"]
        assert video.total_frames == metadata["total_num_frames"] and video.source_fps == metadata["fps"]
        assert torch.equal(video.frames, expected.to(torch.uint8))  # bicubic, antialiased, per video


def test_in_memory_sampling_reads_the_right_frames():
    clip = index_clip(20)
    video = load_video(clip, fps=4.0)  # 20 frames at the default 16 fps: 20 / 16 * 4 = 5 -> 4 frames
    assert video.frames.dtype == torch.uint8 and video.frames.shape == (4, 3, 32, 64)
    assert video.indices == [0, 6, 13, 19] and video.total_frames == 20
    assert frame_indices(video) == [0, 6, 13, 19]
    assert video.fps == 4 / 20 * 16.0 and video.source_fps == DEFAULT_VIDEO_FPS == 16.0 and video.name == "video"

    video = load_video(clip, num_frames=6, video_fps=8.0, name="clip")
    assert frame_indices(video) == [0, 4, 8, 11, 15, 19]
    assert video.source_fps == 8.0 and video.fps == pytest.approx(6 / 20 * 8.0) and video.name == "clip"

    video = load_video(index_clip(7))
    assert frame_indices(video) == [0, 1, 2, 4, 5, 6] and video.fps == pytest.approx(6 / 7 * 16.0)


def test_in_memory_layouts_and_dtypes_agree():
    torch.manual_seed(0)
    clip = torch.randint(0, 256, (4, 3, 8, 10), dtype=torch.uint8)
    expected = load_video(clip).frames
    channels_last = clip.permute(0, 2, 3, 1)
    assert torch.equal(load_video(channels_last.numpy()).frames, expected)
    assert torch.equal(load_video(clip.float() / 255).frames, expected)
    assert torch.equal(load_video(channels_last.double().numpy() / 255).frames, expected)
    assert torch.equal(load_video([PIL.Image.fromarray(frame) for frame in channels_last.numpy()]).frames, expected)
    # float values within the 1e-3 tolerance are clamped
    overshoot = torch.tensor([-0.0005, 1.0005]).repeat(2, 3, 1, 1)  # (2, 3, 1, 2)
    assert load_video(overshoot).frames.flatten().tolist() == [0, 255] * 6


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_write_and_load_round_trip(tmp_path, backend):
    path = tmp_path / "clip.mp4"
    write_video(path, index_clip(18), fps=16)
    assert os.listdir(tmp_path) == ["clip.mp4"]  # no temporary file left behind

    video = load_video(path, backend=backend)  # 18 frames -> all 18
    assert video.frames.shape == (18, 3, 32, 64) and video.frames.dtype == torch.uint8
    assert video.fps == 16.0 and video.source_fps == 16.0 and video.name == str(path)
    assert frame_indices(video) == list(range(18))
    assert (video.frames.float() - index_clip(18).float()).abs().max() <= 2  # H.264 at crf 18

    video = load_video(path, fps=4.0, backend=backend)  # 18 / 16 * 4 = 4.5 -> 4 frames: linspace(0, 17, 4)
    assert video.indices == [0, 6, 11, 17] and frame_indices(video) == [0, 6, 11, 17]
    assert video.fps == 4 / 18 * 16.0

    video = load_video(path, num_frames=6, backend=backend, name="videos[0]")
    assert frame_indices(video) == [0, 3, 7, 10, 14, 17] and video.name == "videos[0]"


def test_decord_and_pyav_decode_the_same_frames(tmp_path):
    torch.manual_seed(0)
    clip = torch.randint(0, 256, (9, 3, 32, 64), dtype=torch.uint8)
    path = tmp_path / "noise.mp4"
    write_video(path, clip.permute(0, 2, 3, 1).numpy(), fps=8)  # (T, H, W, C) input
    from_decord = load_video(path, backend="decord")
    from_pyav = load_video(path, backend="pyav")
    assert from_decord.frames.shape == from_pyav.frames.shape == (8, 3, 32, 64)
    assert from_decord.source_fps == from_pyav.source_fps == 8.0
    assert (from_decord.frames.float() - from_pyav.frames.float()).abs().max() <= 2


def test_auto_backend_falls_back_to_pyav(tmp_path):
    # decord 0.6.0 fails on 32x48 frames (it returns 4 channels); "auto" must still give the right frames
    path = tmp_path / "narrow.mp4"
    write_video(path, index_clip(8, height=32, width=48), fps=16)
    video = load_video(path, num_frames=4)
    assert video.frames.shape == (4, 3, 32, 48)
    assert frame_indices(video) == [0, 2, 5, 7]


def test_auto_backend_works_without_decord(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    write_video(path, index_clip(8), fps=16)
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    assert frame_indices(load_video(path, num_frames=4)) == [0, 2, 5, 7]
    with pytest.raises(ImportError):
        load_video(path, backend="decord")


def test_split_videos_batch_tensor():
    torch.manual_seed(0)
    batch = torch.rand(2, 6, 3, 8, 8)  # WanPipeline(output_type="pt"): (B, F, C, H, W) float in [0, 1]
    sources = split_videos(batch)
    assert len(sources) == 2 and torch.equal(sources[1], batch[1])
    videos = load_videos(batch, num_frames=2)
    assert [video.name for video in videos] == ["videos[0]", "videos[1]"]
    assert torch.equal(videos[1].frames, (batch[1, [0, 5]] * 255).round().to(torch.uint8))
    assert len(split_videos(batch.numpy())) == 2
    assert split_videos(("a.mp4", "b.mp4")) == ["a.mp4", "b.mp4"]


@pytest.mark.parametrize(
    "videos, message",
    [
        (torch.rand(6, 3, 8, 8), "Wrap one video in a list"),
        (np.zeros((6, 8, 8, 3), np.uint8), "add the batch dimension"),
        ("clip.mp4", "wrap it in a list"),
        ([], "empty"),
        (torch.rand(3, 8, 8), "5-D"),
    ],
)
def test_split_videos_errors(videos, message):
    with pytest.raises(VideoInputError, match=message):
        split_videos(videos)


def bad_files(tmp_path):
    """Paths to a missing file, a text file named .mp4 and a truncated mp4."""
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video")
    complete = tmp_path / "complete.mp4"
    write_video(complete, index_clip(9), fps=16)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(complete.read_bytes()[:1000])
    return {"missing": tmp_path / "missing.mp4", "text": text, "truncated": truncated}


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
@pytest.mark.parametrize(
    "which, message", [("missing", "file not found"), ("text", "cannot decode"), ("truncated", "cannot decode")]
)
def test_bad_files_are_named(tmp_path, backend, which, message):
    path = bad_files(tmp_path)[which]
    with pytest.raises(VideoInputError, match=message) as error:
        load_videos([index_clip(4), index_clip(4), index_clip(4), path], backend=backend)
    assert "videos[3]" in str(error.value) and str(path) in str(error.value)
    with pytest.raises(VideoInputError) as error:
        load_video(str(path), backend=backend)
    assert str(error.value).startswith(str(path))


def test_a_folder_and_an_image_are_named_for_what_they_are(tmp_path):
    with pytest.raises(VideoInputError, match="videos\\[0\\].*is a folder, not a video file"):
        load_videos([tmp_path])
    image = tmp_path / "still.png"
    PIL.Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(VideoInputError, match="an image, not a video"):
        load_video(image, fps=2.0)


def frames_of_sizes(*sizes):
    return [PIL.Image.new("RGB", size) for size in sizes]


@pytest.mark.parametrize(
    "source, message",
    [
        (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), "no frames"),
        (np.zeros((0, 8, 8, 3), np.uint8), "no frames"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "must be 4-D.*one image"),
        (torch.zeros(1, 2, 3, 8, 8), "must be 4-D.*a batch"),
        (torch.zeros(4, 1, 8, 8), "3 \\(RGB\\) channels"),
        (np.zeros((4, 8, 8, 4), np.uint8), "3 \\(RGB\\) channels"),
        (torch.zeros(4, 3, 8, 8, dtype=torch.int64), "dtype torch.int64"),
        (np.zeros((4, 3, 8, 8), bool), "dtype bool"),
        (torch.full((4, 3, 8, 8), 1.5), "values in \\[1.5, 1.5\\]"),
        (torch.rand(4, 3, 8, 8) * 2 - 1, "must lie in \\[0, 1\\]"),
        (torch.full((4, 3, 8, 8), 255.0), "must lie in \\[0, 1\\]"),
        (torch.tensor([0.5, float("nan")]).repeat(2, 3, 4, 1), "NaN or Inf"),
        (torch.tensor([0.5, float("inf")]).repeat(2, 3, 4, 1), "NaN or Inf"),
        ([], "empty list of frames"),
        (frames_of_sizes((8, 8), (8, 8), (10, 8)), "videos\\[3\\]\\[2\\] has size \\(10, 8\\)"),
        ([PIL.Image.new("RGB", (8, 8)), np.zeros((8, 8, 3))], "videos\\[3\\]\\[1\\] is a ndarray"),
        (PIL.Image.new("RGB", (8, 8)), "single PIL image"),
        (42, "unsupported type int"),
    ],
)
def test_bad_in_memory_videos_are_named(source, message):
    with pytest.raises(VideoInputError, match=message) as error:
        load_videos([index_clip(4), index_clip(4), index_clip(4), source])
    assert str(error.value).startswith("videos[3]")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fps": 2.0, "num_frames": 4}, "not both"),
        ({"num_frames": 3}, "must be even"),
        ({"num_frames": 0}, "must be even"),
        ({"num_frames": 10}, "only 8 frames"),
        ({"fps": 0.0}, "SAMPLING rate"),
        ({"fps": "2"}, "fps='2' is the SAMPLING rate"),
        ({"num_frames": 4.0}, "must be an int"),
    ],
)
def test_bad_sampling_requests_are_named(kwargs, message):
    with pytest.raises(VideoInputError, match=message) as error:
        load_videos([index_clip(8), index_clip(8)], **kwargs)
    assert str(error.value).startswith("videos[0]")


@pytest.mark.parametrize("video_fps", ["16", 0, -8.0, float("nan")])
def test_bad_video_fps_is_named(video_fps):
    with pytest.raises(VideoInputError, match="videos\\[0\\]: video_fps=.*must be a positive number"):
        load_videos([index_clip(8)], video_fps=video_fps)


def test_video_fps_is_refused_for_files(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, index_clip(4), fps=16)
    with pytest.raises(VideoInputError, match="videos\\[0\\].*own frame rate"):
        load_videos([path], video_fps=8.0)


def test_write_video_refuses_odd_sizes_and_leaves_nothing(tmp_path):
    path = tmp_path / "odd.mp4"
    with pytest.raises(VideoInputError, match="even height and width") as error:
        write_video(path, index_clip(4, height=33, width=64), fps=16)
    assert str(path) in str(error.value)
    with pytest.raises(VideoInputError, match="dtype torch.int64"):
        write_video(path, index_clip(4).long(), fps=16)
    assert os.listdir(tmp_path) == []
