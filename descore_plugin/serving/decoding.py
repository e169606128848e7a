"""Turning the wire forms of a request's videos into `Video`s (with the server's limits and path policy), and the
restricted unpickler of the pickle protocol."""

import base64
import binascii
import io
import math
import pickle
import tempfile
from pathlib import Path

import numpy as np

from descore_plugin.data.video import Video, VideoInputError, load_video

NPY_MAGIC = b"\x93NUMPY"


class RequestError(Exception):
    """A request the server refuses as a whole: HTTP `status` with a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_video_fps(value, name: str):
    """A source frame rate from a request: None or a positive finite number (else 422 naming the field)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RequestError(422, f"{name}: expected the frames' source frame rate, a positive number; got {value!r}")
    return float(value)


def per_video_fps(value, count: int, name: str = "video_fps") -> list:
    """A request's `video_fps`: one number for every video, or a list with one number (or null) per video."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != count:
            raise RequestError(422, f"{name}: a list of {len(value)} frame rates for {count} videos")
        return [
            check_video_fps(v.item() if isinstance(v, np.generic) else v, f"{name}[{i}]") for i, v in enumerate(value)
        ]
    value = value.item() if isinstance(value, np.generic) else value
    return [check_video_fps(value, name)] * count


class VideoDecoder:
    """Turns the wire forms of a video into a `Video`, applying the server's limits and path policy.

    Errors that concern one video (it does not decode, wrong dtype, too few frames) come back as that video's
    error; breaches of the server's limits and forbidden paths raise `RequestError` for the whole request.
    `video_fps` (the source frame rate of uploaded frames: .npy arrays and frame lists) defaults to 16, the rate
    of Wan-2.1 videos, as in-process; a file carries its own rate."""

    def __init__(self, config, fps, num_frames):
        self.config = config
        self.fps, self.num_frames = fps, num_frames
        self.allowed = [Path(p).resolve(strict=True) for p in config.allow_paths]

    def _sample(self, source, name: str, video_fps=None) -> Video:
        return load_video(source, fps=self.fps, num_frames=self.num_frames, video_fps=video_fps, name=name)

    def _check_frames(self, name: str, frames: int, height: int, width: int):
        if frames > self.config.max_frames:
            raise RequestError(
                413,
                f"{name}: {frames} frames; this server takes at most {self.config.max_frames} "
                "frames per video (--max-frames)",
            )
        if height * width > self.config.max_frame_pixels:
            raise RequestError(
                413,
                f"{name}: frames of {height}x{width}; this server takes at most "
                f"{self.config.max_frame_pixels} pixels per frame (--max-frame-pixels)",
            )

    @staticmethod
    def _no_rate_for_files(name: str, video_fps):
        if video_fps is not None:
            raise VideoInputError(
                f"{name}: video_fps is only for uploaded frames (.npy, frame lists); a video file "
                "carries its own frame rate."
            )

    def from_npy(self, raw: bytes, name: str, video_fps=None) -> Video:
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as error:
            raise VideoInputError(f"{name}: not a .npy array ({type(error).__name__}: {error})") from None
        if array.ndim != 4:
            raise VideoInputError(f"{name}: the array has shape {array.shape}; a video is (F, 3, H, W) or (F, H, W, 3)")
        frames, height, width = (array.shape[0], *array.shape[2:]) if array.shape[1] == 3 else array.shape[:3]
        self._check_frames(name, frames, height, width)
        return self._sample(array, name, video_fps)

    def from_mp4(self, raw: bytes, name: str, video_fps=None) -> Video:
        self._no_rate_for_files(name, video_fps)
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

    def from_path(self, path: str, name: str, video_fps=None) -> Video:
        if not self.allowed:
            raise RequestError(
                403,
                f"{name}: server-side paths are disabled; send the video's bytes, or start the "
                "server with --allow-paths DIR",
            )
        resolved = Path(path).resolve()  # follows symlinks and `..` before the check
        if not any(resolved == folder or folder in resolved.parents for folder in self.allowed):
            raise RequestError(403, f"{name}: {path} is outside the folders this server may read (--allow-paths)")
        if not resolved.is_file():
            raise VideoInputError(f"{name} ({path}): file not found.")
        self._no_rate_for_files(f"{name} ({path})", video_fps)
        probed = _probe(str(resolved))
        if probed is not None:
            self._check_frames(name, *probed)
        return self._sample(resolved, name)

    def from_frames(self, frames: list, name: str, video_fps=None) -> Video:
        """A video as a list of encoded frames: base64 strings (Flow-Factory's PNGs) or raw bytes (pickle)."""
        import PIL.Image

        if not isinstance(frames, list) or not frames:
            raise VideoInputError(f"{name}: expected a non-empty list of PNG/JPEG frames (base64 or bytes)")
        if len(frames) > self.config.max_frames:
            self._check_frames(name, len(frames), 0, 0)
        images = []
        for j, item in enumerate(frames):
            raw = bytes(item) if isinstance(item, (bytes, bytearray)) else _b64decode(item, f"{name}[{j}]")
            try:
                image = PIL.Image.open(io.BytesIO(raw), formats=["PNG", "JPEG", "WEBP"])
            except Exception as error:
                raise VideoInputError(f"{name}[{j}]: not a PNG/JPEG/WEBP image ({error})") from None
            self._check_frames(name, len(frames), image.size[1], image.size[0])
            images.append(image)
        try:
            return self._sample(images, name, video_fps)
        except VideoInputError:
            raise
        except Exception as error:  # truncated image data surfaces only when the pixels are read
            raise VideoInputError(f"{name}: cannot decode its frames ({type(error).__name__}: {error})") from None

    def decode(self, spec, name: str, video_fps=None) -> Video:
        """`spec`: {"mp4": b64} | {"npy": b64} | {"path": str} (each may add "video_fps": the source frame rate of
        frames) | raw bytes (mp4 or npy) | a list of frames (bytes or base64) | a str (a server-side path)."""
        if isinstance(spec, (bytes, bytearray)):
            raw = bytes(spec)
            if raw.startswith(NPY_MAGIC):
                return self.from_npy(raw, name, video_fps)
            return self.from_mp4(raw, name, video_fps)
        if isinstance(spec, list):
            return self.from_frames(spec, name, video_fps)
        if isinstance(spec, str):  # a bare string is a server-side path
            return self.from_path(spec, name, video_fps)
        kinds = [key for key in ("mp4", "npy", "path") if isinstance(spec, dict) and key in spec]
        if len(kinds) != 1 or set(spec) - {kinds[0], "video_fps"}:
            raise RequestError(
                422,
                f'{name}: expected one of {{"mp4": base64}}, {{"npy": base64}}, '
                f'{{"path": str}} (with an optional "video_fps"); got {_describe(spec)}',
            )
        kind = kinds[0]
        value = spec[kind]
        if "video_fps" in spec:
            video_fps = check_video_fps(spec["video_fps"], f"{name}.video_fps")
        if not isinstance(value, str):
            raise RequestError(422, f"{name}.{kind}: expected a string, got {type(value).__name__}")
        if kind == "path":
            return self.from_path(value, name, video_fps)
        raw = _b64decode(value, f"{name}.{kind}")
        return self.from_npy(raw, name, video_fps) if kind == "npy" else self.from_mp4(raw, name, video_fps)

    def decode_one(self, spec, name: str, video_fps=None, decode=None):
        """A `Video`, or the error string of this one video; `RequestError` (a breach of the server's rules)
        propagates to refuse the whole request."""
        try:
            return (decode or self.decode)(spec, name, video_fps)
        except RequestError:
            raise
        except VideoInputError as error:
            return str(error)
        except Exception as error:  # a decoder crash is still this one video's problem
            return f"{name}: cannot decode ({type(error).__name__}: {error})"


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


def describe(value) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    return f"a {type(value).__name__}"


_describe = describe


# ---------------------------------------------------------------------- the pickle protocol's unpickler
PLAIN_KINDS = "biufcUS"  # bool, ints, floats, complex, str, bytes: the numpy dtypes a pickle may carry
_ALLOWED = "plain data only (dict, list, tuple, str, bytes, numbers) and numpy arrays of plain dtypes"


def _plain_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.kind not in PLAIN_KINDS:
        raise pickle.UnpicklingError(f"refused a numpy dtype {dtype}: this server unpickles {_ALLOWED}")
    return dtype


class _NdarrayToken:
    """Stands for `numpy.ndarray` inside the unpickler: usable only as `_reconstruct`'s first argument."""


def _reconstruct(subtype, shape, code):
    if subtype is not _NdarrayToken or tuple(shape) != (0,):
        raise pickle.UnpicklingError("refused a numpy reconstruction other than numpy's own empty ndarray")
    return np.ndarray((0,), np.uint8)  # numpy's pickles fill it in with __setstate__ (shape, dtype, data)


def _dtype(obj, align=False, copy=False):
    return _plain_dtype(np.dtype(obj, align, copy))


def _numpy_scalar(dtype, *data):
    from numpy._core.multiarray import scalar

    return scalar(_plain_dtype(dtype), *data)


def _frombuffer(buffer, dtype, shape, order):
    from numpy._core.numeric import _frombuffer as frombuffer

    return frombuffer(buffer, _plain_dtype(dtype), shape, order)


def _latin1(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r}): only latin1")
    return text.encode("latin1")


_GLOBALS = {
    "ndarray": _NdarrayToken,
    "_reconstruct": _reconstruct,
    "dtype": _dtype,
    "scalar": _numpy_scalar,
    "_frombuffer": _frombuffer,
}
_NUMPY_MODULES = {
    "numpy",
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
}
# (module, name) -> what the pickle gets: numpy's own reconstruction helpers (numpy 1.x and 2.x module names, pickle
# protocols 2-5), each wrapped to refuse object dtypes and any class but ndarray.
_SAFE = {
    (module, name): _GLOBALS[name]
    for module in _NUMPY_MODULES
    for name in _GLOBALS
    if (name in ("ndarray", "dtype")) == (module == "numpy")
}
_SAFE[("_codecs", "encode")] = _latin1  # how protocol 2 carries bytes


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays of plain dtypes: every other global (class, function, module attribute)
    is refused, so a pickle cannot construct objects or call anything."""

    def find_class(self, module, name):
        try:
            return _SAFE[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: this server unpickles {_ALLOWED}") from None


def _check_plain(value, depth: int = 0):
    if depth > 64:
        raise pickle.UnpicklingError("refused: containers nested more than 64 deep")
    if isinstance(value, (np.ndarray, np.generic)):
        _plain_dtype(value.dtype)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, depth + 1)
            _check_plain(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _check_plain(item, depth + 1)


def safe_unpickle(data: bytes):
    """`pickle.loads` that admits plain data and numpy arrays of plain dtypes only (see `_PlainUnpickler`)."""
    value = _PlainUnpickler(io.BytesIO(data)).load()
    _check_plain(value)
    return value
