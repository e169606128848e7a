"""Video inputs for DeScore: decoding, frame sampling, validation and writing.

The reward model calls `load_videos` before it hands frames to the transformers Qwen-VL processors
(with `do_sample_frames=False`: the frames returned here are exactly the frames the model sees).

A video *source* is one of:
    - a path (`str` or `pathlib.Path`) to an mp4 or any container that decord or PyAV can read;
    - a list of PIL images (the frames, all of one size);
    - a numpy array or torch tensor of shape (F, C, H, W) or (F, H, W, C) with C = 3 (RGB), either
      uint8 in [0, 255] or floating point in [0, 1].
A batch of videos is a list of sources, or a (B, F, C, H, W) tensor such as the output of
`WanPipeline(..., output_type="pt")` (float in [0, 1]).

Frame sampling and resizing follow qwen-vl-utils (`smart_nframes`, `fetch_video`, `smart_resize`), which the
official DeScore code uses for every stage:
- sampling by rate: `n = total / source_fps * fps`, clamped to [4, min(768, total)] and rounded down to even
  (Qwen-VL merges every 2 frames into one temporal patch); by count: `n = num_frames`;
- the kept frames are `linspace(0, total - 1, n).round()`: the first AND the last frame are kept;
- each video is resized on its own (`resize_frames`) to a multiple of the vision tokeniser's patch (28 for patch 14,
  32 for patch 16) within a per-frame pixel budget, so its tokens never depend on the other videos of a batch.
transformers' own video sampler uses `arange(0, total, total / n)` (last frame dropped): not used here.
"""

import dataclasses
import math
import os
import re
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from descore_plugin.utils.errors import UserError
from descore_plugin.utils.files import follow_umask

# Wan 2.1 generates video at 16 frames per second; used for in-memory frames when `video_fps` is not given.
DEFAULT_VIDEO_FPS = 16.0
# Qwen-VL merges every 2 consecutive frames into one temporal patch (`temporal_patch_size` in its config).
TEMPORAL_PATCH_SIZE = 2
# qwen-vl-utils' frame-count limits when sampling by rate (FPS_MIN_FRAMES, FPS_MAX_FRAMES).
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
# qwen-vl-utils' per-frame ceiling (VIDEO_MAX_TOKEN_NUM tokens of factor x factor pixels) and its default sequence
# budget for all frames of one video together (MODEL_SEQ_LEN * factor^2 * 0.9); only very long videos meet either.
VIDEO_MAX_TOKENS_PER_FRAME = 768
VIDEO_TOTAL_TOKENS = 128000 * 0.9
# The largest aspect ratio smart_resize accepts (qwen-vl-utils MAX_RATIO).
MAX_ASPECT_RATIO = 200
# Float frames may overshoot [0, 1] by this much (resampling and VAE decoding do that); they are then clamped.
# Not from the paper: chosen to accept rounding noise while rejecting [-1, 1] or [0, 255] floats.
FLOAT_RANGE_TOLERANCE = 1e-3


class VideoInputError(UserError):
    """A video input that cannot be used; the message names the input (`videos[3]` or the file path)."""


@dataclass
class Video:
    """Frames sampled from one video, ready for a Qwen-VL video processor.

    Attributes:
        frames (`torch.Tensor`): uint8 RGB frames of shape (T, 3, H, W); T is even (T >= 2).
        fps (`float`): rate of the SAMPLED frames as qwen-vl-utils and transformers define it,
            `T / total_frames * source_fps`; Qwen2.5-VL's temporal positions use it (`second_per_grid_ts = 2 / fps`).
        source_fps (`float`): native frame rate of the source (read from the container, or `video_fps`).
        name (`str`): how errors and logs refer to this video (`videos[3]`, or the file path).
        indices (`list[int]`): index in the source of each returned frame (Qwen3-VL's time stamps are
            `indices / source_fps`).
        total_frames (`int`): number of frames in the source.
    """

    frames: torch.Tensor
    fps: float
    source_fps: float
    name: str
    indices: list[int]
    total_frames: int = 0

    def metadata(self):
        """The transformers `VideoMetadata` of the sampled frames (what qwen-vl-utils hands the processor)."""
        from transformers.video_utils import VideoMetadata

        return VideoMetadata(total_num_frames=self.total_frames, fps=self.source_fps, frames_indices=list(self.indices))


def sample_frame_indices(
    total_frames: int,
    source_fps: float,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    name: str = "video",
) -> tuple[list[int], float]:
    """Choose which frames of a video to keep, as qwen-vl-utils does (see the module docstring).

    Args:
        total_frames (`int`): number of frames in the source (at least 2).
        source_fps (`float`): native frame rate of the source.
        fps (`float`, *optional*): SAMPLING rate (frames to keep per second of video time); the count is
            `total_frames / source_fps * fps` clamped to [4, min(768, total_frames)], rounded down to even.
        num_frames (`int`, *optional*): fixed, even number of frames to keep (at most `total_frames`).
        name (`str`): names the video in errors.

    With neither `fps` nor `num_frames` every frame is kept, rounded down to an even count (an odd-length
    video is spread over one frame fewer, first and last kept).

    Returns:
        `(indices, sampled_fps)`: `linspace(0, total_frames - 1, n).round()` and `n / total_frames * source_fps`.
    """
    if fps is not None and num_frames is not None:
        raise VideoInputError(f"{name}: pass either `fps` (a sampling rate) or `num_frames` (a count), not both.")
    if total_frames < TEMPORAL_PATCH_SIZE:
        what = "no frames" if total_frames < 1 else "only 1 frame (an image, not a video)"
        raise VideoInputError(f"{name}: has {what}; DeScore scores videos of at least {TEMPORAL_PATCH_SIZE} frames.")

    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int):
            raise VideoInputError(f"{name}: num_frames={num_frames!r} must be an int.")
        if num_frames < TEMPORAL_PATCH_SIZE or num_frames % TEMPORAL_PATCH_SIZE != 0:
            raise VideoInputError(
                f"{name}: num_frames={num_frames} must be even and >= 2 (Qwen-VL groups frames in pairs)."
            )
        if num_frames > total_frames:
            raise VideoInputError(
                f"{name}: num_frames={num_frames} but the video has only {total_frames} frames; ask for fewer frames."
            )
        num = num_frames
    elif fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise VideoInputError(
                f"{name}: fps={fps!r} is the SAMPLING rate (frames to keep per second of video) and must be a "
                "positive number."
            )
        # qwen-vl-utils smart_nframes: clamp to [4, min(768, total)] (both rounded to even), then floor to even.
        low = math.ceil(FPS_MIN_FRAMES / TEMPORAL_PATCH_SIZE) * TEMPORAL_PATCH_SIZE
        high = math.floor(min(FPS_MAX_FRAMES, total_frames) / TEMPORAL_PATCH_SIZE) * TEMPORAL_PATCH_SIZE
        wanted = total_frames / source_fps * fps
        num = min(min(max(wanted, low), high), total_frames)
        num = math.floor(num / TEMPORAL_PATCH_SIZE) * TEMPORAL_PATCH_SIZE
    else:
        num = total_frames - total_frames % TEMPORAL_PATCH_SIZE

    indices = torch.linspace(0, total_frames - 1, num).round().long().tolist()
    return indices, num / total_frames * source_fps


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, name: str = "video"):
    """qwen-vl-utils `smart_resize`: the frame size nearest to (height, width) whose sides are multiples of `factor`
    and whose area lies in [min_pixels, max_pixels], keeping the aspect ratio. Returns (height, width)."""
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels={max_pixels} is smaller than min_pixels={min_pixels}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise VideoInputError(
            f"{name}: frames of {height}x{width} have an aspect ratio above {MAX_ASPECT_RATIO}, which Qwen-VL cannot take."
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_max_pixels(num_frames: int, factor: int, min_pixels: int, max_pixels: int) -> int:
    """The per-frame pixel ceiling qwen-vl-utils' `fetch_video` applies: the requested `max_pixels`, but at most
    768 tokens per frame and at most a 2/num_frames share of its sequence budget, and never below 1.05 x min_pixels."""
    ceiling = max(
        min(
            VIDEO_MAX_TOKENS_PER_FRAME * factor * factor,
            VIDEO_TOTAL_TOKENS * factor * factor / num_frames * TEMPORAL_PATCH_SIZE,
        ),
        int(min_pixels * 1.05),
    )
    return min(max_pixels, ceiling)


def resize_frames(video: "Video", factor: int, min_pixels: int, max_pixels: int) -> "Video":
    """Resize one video's frames as qwen-vl-utils does (smart_resize, then bicubic with antialiasing on the uint8
    frames). The budget is per frame and depends on this video alone. Returns a new `Video`."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    count, _, height, width = video.frames.shape
    size = smart_resize(
        height, width, factor, min_pixels, frame_max_pixels(count, factor, min_pixels, max_pixels), name=video.name
    )
    frames = video.frames
    if size != (height, width):
        frames = resize(frames, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    return dataclasses.replace(video, frames=frames)


def load_video(
    source,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    video_fps: float | None = None,
    name: str | None = None,
    backend: str = "auto",
) -> Video:
    """Decode, validate and sample one video.

    NOTE: `fps` is the SAMPLING rate, i.e. how many frames to keep per second of video time (fps=2 keeps
    about one frame every 0.5 s). It is NOT the frame rate of the file: that one is read from the container
    (or given by `video_fps` for in-memory frames). Passing the file's own rate as `fps` keeps every frame.

    Args:
        source: a path, a list of PIL images, or a uint8 / float-in-[0, 1] array or tensor of shape
            (F, 3, H, W) or (F, H, W, 3). A shape with 3 in both places is read as (F, 3, H, W).
        fps (`float`, *optional*): sampling rate, see above. The frame count is
            `F / source_fps * fps` clamped to [4, min(768, F)] and rounded down to even (qwen-vl-utils).
        num_frames (`int`, *optional*): keep exactly this many frames (even, at most F) instead.
            With neither `fps` nor `num_frames`, every frame is kept (rounded down to an even count).
        video_fps (`float`, *optional*): native frame rate of IN-MEMORY frames; defaults to 16.0, the rate of
            Wan 2.1 videos. Files carry their own rate, so it must not be given with a path.
        name (`str`, *optional*): how errors refer to this video, e.g. `"videos[3]"`. Defaults to the path,
            or `"video"` for in-memory frames.
        backend (`str`): `"auto"` tries decord, then PyAV when decord is missing or fails on the file;
            `"decord"` or `"pyav"` uses only that one. Ignored for in-memory frames.

    Frame indices follow qwen-vl-utils: `linspace(0, F - 1, num).round()` (first and last frame kept).

    Returns:
        `Video` with `frames` of shape (T, 3, H, W), uint8 RGB, T even.
    """
    if isinstance(source, Video):  # already decoded and sampled (e.g. a training-time cache): used as it is
        return source
    if isinstance(source, (str, Path)):
        if video_fps is not None:
            raise VideoInputError(
                f"{name or source}: video_fps is only for in-memory frames; a file carries its own frame rate."
            )
        return _load_file(Path(source), fps=fps, num_frames=num_frames, name=name, backend=backend)

    name = name or "video"
    if video_fps is not None and (
        isinstance(video_fps, bool)
        or not isinstance(video_fps, (int, float))
        or not math.isfinite(video_fps)
        or video_fps <= 0
    ):
        raise VideoInputError(
            f"{name}: video_fps={video_fps!r} (the frame rate of in-memory frames) must be a positive number."
        )
    source_fps = float(video_fps) if video_fps is not None else DEFAULT_VIDEO_FPS
    if isinstance(source, (list, tuple)):
        images = _check_pil_frames(source, name)
        total_frames = len(images)
        indices, sampled_fps = sample_frame_indices(len(images), source_fps, fps=fps, num_frames=num_frames, name=name)
        # Only the sampled frames are converted.
        frames = np.stack([np.asarray(images[i].convert("RGB")) for i in indices])  # (T, H, W, 3)
        frames = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        all_frames = _check_frame_array(source, name)  # (F, 3, H, W), uint8 or float in [0, 1]
        total_frames = all_frames.shape[0]
        indices, sampled_fps = sample_frame_indices(
            all_frames.shape[0], source_fps, fps=fps, num_frames=num_frames, name=name
        )
        frames = _to_uint8(all_frames[indices])
    elif isinstance(source, PIL.Image.Image):
        raise VideoInputError(f"{name} is a single PIL image; a video is a list of PIL frames, e.g. [image].")
    else:
        raise VideoInputError(
            f"{name} has unsupported type {type(source).__name__}; pass a path, a list of PIL images, "
            "or an array/tensor of shape (F, 3, H, W) or (F, H, W, 3)."
        )
    return Video(
        frames=frames, fps=sampled_fps, source_fps=source_fps, name=name, indices=indices, total_frames=total_frames
    )


def split_videos(videos) -> list:
    """Split a batch of videos into a list of single-video sources.

    Args:
        videos: a list or tuple of sources (see `load_video`), or a 5-D tensor/array (B, F, C, H, W), e.g.
            the float [0, 1] output of `WanPipeline(..., output_type="pt")`, which becomes B sources of
            shape (F, C, H, W).

    Returns:
        `list` of sources.
    """
    if isinstance(videos, (list, tuple)):
        if len(videos) == 0:
            raise VideoInputError("videos is an empty list; pass at least one video.")
        return list(videos)
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 5:
            return [video for video in videos]
        if videos.ndim == 4:
            raise VideoInputError(
                f"videos is a 4-D {type(videos).__name__} of shape {tuple(videos.shape)}: one video or a batch of "
                "images? Wrap one video in a list ([video]) or add the batch dimension (video[None])."
            )
        raise VideoInputError(f"videos has shape {tuple(videos.shape)}; a batch tensor must be 5-D (B, F, C, H, W).")
    if isinstance(videos, (str, Path)):
        raise VideoInputError(f"videos is a single path ({videos}); wrap it in a list: [path].")
    raise VideoInputError(
        f"videos has unsupported type {type(videos).__name__}; pass a list of videos or a (B, F, C, H, W) tensor."
    )


def load_videos(videos, **kwargs) -> list[Video]:
    """Split a batch (see `split_videos`) and load each video, named `videos[i]` in errors.

    Keyword arguments are passed to `load_video` (`fps`, `num_frames`, `video_fps`, `backend`).

    Returns:
        `list[Video]`, one per video; frame counts may differ between videos.
    """
    return [load_video(source, name=f"videos[{i}]", **kwargs) for i, source in enumerate(split_videos(videos))]


def write_video(path, frames, fps: float, *, crf: int = 18) -> None:
    """Write frames to an mp4 file (H.264 via PyAV's libx264, yuv420p), atomically.

    The video is written to a temporary file in the same folder, then moved into place with `os.replace`, so
    readers never see a half-written file. The container is always mp4, whatever the file's suffix.

    Args:
        path (`str` or `Path`): output file; missing parent folders are created.
        frames: uint8 array/tensor of shape (T, 3, H, W) or (T, H, W, 3) (float in [0, 1] is accepted too).
            H and W must be even (yuv420p subsamples colour by 2); this function does not pad or crop.
        fps (`float`): frame rate stored in the file.
        crf (`int`): x264 constant rate factor (0 = lossless, 23 = x264 default). 18 (visually lossless) is a
            choice of this package, not from the paper.
    """
    path = Path(path)
    frames = _to_uint8(_check_frame_array(frames, str(path)))  # (T, 3, H, W)
    _, _, height, width = frames.shape
    if height % 2 or width % 2:
        raise VideoInputError(
            f"{path}: frames are {height}x{width}; H.264 yuv420p needs an even height and width. Crop or pad them."
        )
    if fps <= 0:
        raise VideoInputError(f"{path}: fps={fps} must be positive.")
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    file_descriptor, temporary_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(file_descriptor)
    try:
        with av.open(temporary_path, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames.permute(0, 2, 3, 1).numpy():  # (H, W, 3)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder
                container.mux(packet)
        follow_umask(temporary_path)  # mkstemp made it private; a published video is readable as the umask says
        os.replace(temporary_path, path)
    except BaseException:
        os.remove(temporary_path)
        raise


def _check_frame_array(frames, name: str) -> torch.Tensor:
    """Validate an in-memory video and return it as a CPU tensor (F, 3, H, W), uint8 or float in [0, 1]."""
    if isinstance(frames, np.ndarray):
        if not (frames.dtype == np.uint8 or frames.dtype.kind == "f"):
            raise VideoInputError(
                f"{name} has dtype {frames.dtype}; pass uint8 in [0, 255] or float in [0, 1] "
                "(e.g. frames.astype(np.uint8))."
            )
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    elif isinstance(frames, torch.Tensor):
        if not (frames.dtype == torch.uint8 or frames.is_floating_point()):
            raise VideoInputError(
                f"{name} has dtype {frames.dtype}; pass uint8 in [0, 255] or float in [0, 1] "
                "(e.g. frames.to(torch.uint8))."
            )
        frames = frames.detach().cpu()
    else:
        raise VideoInputError(f"{name} has type {type(frames).__name__}; expected a numpy array or torch tensor.")

    if frames.ndim != 4:
        hint = {3: " (one image? add a frame dimension)", 5: " (a batch? use load_videos)"}.get(frames.ndim, "")
        raise VideoInputError(
            f"{name} has shape {tuple(frames.shape)}; a video must be 4-D (F, 3, H, W) or (F, H, W, 3){hint}."
        )
    if frames.shape[1] == 3:
        pass
    elif frames.shape[-1] == 3:
        frames = frames.permute(0, 3, 1, 2)
    else:
        raise VideoInputError(
            f"{name} has shape {tuple(frames.shape)}; frames must have 3 (RGB) channels, as (F, 3, H, W) or "
            "(F, H, W, 3). Repeat a grayscale channel or drop an alpha channel first."
        )
    if frames.numel() == 0:
        raise VideoInputError(f"{name} has no frames (shape {tuple(frames.shape)}).")

    if frames.is_floating_point():
        if not torch.isfinite(frames).all():
            raise VideoInputError(f"{name} contains NaN or Inf pixel values.")
        low, high = frames.min().item(), frames.max().item()
        if low < -FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
            raise VideoInputError(
                f"{name} is float with values in [{low:.3g}, {high:.3g}]; float frames must lie in [0, 1] "
                "(from [-1, 1] use (x + 1) / 2; for 0-255 values use uint8)."
            )
    return frames


def _to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) uint8 or float in [0, 1] -> contiguous uint8 (T, 3, H, W), rounding to nearest."""
    if frames.dtype == torch.uint8:
        return frames.contiguous()
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def _check_pil_frames(images, name: str) -> list[PIL.Image.Image]:
    """Validate a list of PIL frames: non-empty, all PIL images, all one size (any mode; converted to RGB)."""
    if len(images) == 0:
        raise VideoInputError(f"{name} is an empty list of frames; a video needs at least one frame.")
    for index, image in enumerate(images):
        if not isinstance(image, PIL.Image.Image):
            raise VideoInputError(
                f"{name}[{index}] is a {type(image).__name__}; a list video must hold only PIL images."
            )
        if image.size != images[0].size:
            raise VideoInputError(
                f"{name}[{index}] has size {image.size} but {name}[0] has size {images[0].size}; "
                "all frames of a video must have one size."
            )
    return list(images)


def _load_file(path: Path, *, fps, num_frames, name, backend: str) -> Video:
    """Decode the sampled frames of a video file with decord, falling back to PyAV (backend="auto")."""
    name = name if name is not None else str(path)
    label = name if name == str(path) else f"{name} ({path})"
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend={backend!r}; choose 'auto', 'decord' or 'pyav'.")
    if path.is_dir():
        raise VideoInputError(f"{label}: is a folder, not a video file; pass the video files in it.")
    if not path.is_file():
        raise VideoInputError(f"{label}: file not found.")

    failures = []
    decoders = {
        "auto": [_decode_with_decord, _decode_with_pyav],
        "decord": [_decode_with_decord],
        "pyav": [_decode_with_pyav],
    }[backend]
    for decode in decoders:
        try:
            frames, indices, sampled_fps, source_fps, total_frames = decode(
                path, fps=fps, num_frames=num_frames, name=label
            )
        except VideoInputError:  # a sampling request this video cannot satisfy: not a decoder failure
            raise
        except ImportError:  # a backend asked for by name must be installed; "auto" moves on without it
            if backend != "auto":
                raise
            failures.append(f"{decode.__name__.removeprefix('_decode_with_')}: not installed")
            continue
        except Exception as error:  # any decoder failure moves on to the next decoder
            # First line only, without decord's "[12:00:00] /src/video_reader.cc:151: " prefix.
            message = re.sub(r"^\[[\d:]+\] \S+: ", "", (str(error).strip() or "?").splitlines()[0])[:200]
            failures.append(f"{decode.__name__.removeprefix('_decode_with_')}: {type(error).__name__}: {message}")
            continue
        frames = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
        return Video(
            frames=frames, fps=sampled_fps, source_fps=source_fps, name=name, indices=indices, total_frames=total_frames
        )
    raise VideoInputError(
        f"{label}: cannot decode the file (not a video, or corrupt or truncated). " + "; ".join(failures)
    )


def _decode_with_decord(path: Path, *, fps, num_frames, name):
    """Returns (frames (T, H, W, 3) uint8 numpy, indices, sampled fps, source fps, total frames); raises on failure."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    total_frames, source_fps = len(reader), float(reader.get_avg_fps())
    if total_frames == 0:
        raise RuntimeError("decord found no frames")
    indices, sampled_fps = sample_frame_indices(total_frames, source_fps, fps=fps, num_frames=num_frames, name=name)
    frames = reader.get_batch(indices).asnumpy()  # decodes only the requested frames
    # decord 0.6.0 returns 4-channel frames or fails for some frame sizes (e.g. 32x48); treat that as a failure.
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise RuntimeError(f"decord returned frames of shape {frames.shape}")
    return frames, indices, sampled_fps, source_fps, total_frames


def _decode_with_pyav(path: Path, *, fps, num_frames, name):
    """Returns (frames (T, H, W, 3) uint8 numpy, indices, sampled fps, source fps, total frames); raises on failure.

    Decodes the stream in order up to the last needed frame and converts only the sampled frames to RGB.
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise RuntimeError("the file has no video stream")
        stream = container.streams.video[0]
        source_fps = float(stream.average_rate or stream.guessed_rate)
        total_frames = stream.frames
        if total_frames == 0:  # some containers (webm, mkv) do not store the count: count the packets
            total_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
    if total_frames == 0:
        raise RuntimeError("PyAV found no frames")
    indices, sampled_fps = sample_frame_indices(total_frames, source_fps, fps=fps, num_frames=num_frames, name=name)

    wanted, decoded = set(indices), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                decoded[index] = frame.to_ndarray(format="rgb24")  # (H, W, 3)
            if index == indices[-1]:
                break
    if len(decoded) < len(wanted):
        raise RuntimeError(f"the stream ended before frame {indices[-1]} of {total_frames} (truncated file?)")
    return np.stack([decoded[i] for i in indices]), indices, sampled_fps, source_fps, total_frames
