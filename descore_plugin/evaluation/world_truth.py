"""The synthetic world's truth read back from pixels alone: what a generated video of the world shows.

The synthetic world (`descore_plugin.testing.synthetic`) renders a coloured square or circle moving on one of four
backgrounds; a prompt names the colour, shape, direction and background. A generator that learnt the world draws it
imperfectly (blur, colour bleed, low resolution, VAE artefacts), so nothing here assumes exact pixel values:

- background: per frame, a straight line in the row index per colour channel (every world background is a vertical
  ramp; the uniform ones have slope 0), fitted to the left and the right border columns with a trimmed least-squares
  fit (the object never covers most of a border); two sides that differ are a split background, whose boundary
  column is found per frame. Its name is the nearest world background (median over frames).
- object: pixels whose (3x3-smoothed) colour is at least half the frame's largest distance from the background
  (half-maximum: the true edge of a blurred shape), if that largest distance is clearly above the background's noise.
- colour: the median colour of the mask's core, matched to the world palette allowing a mix with the background
  (colour bleed desaturates a small shape towards its surroundings).
- shape: the mask against a square and a disc of the same area and centroid (intersection over union).
- motion: a straight-line fit of the centroid track (after removing camera shifts the background shows): the
  direction is the fit's dominant axis and sign; smoothness from the per-frame steps along it (a stutter freezes and
  doubles steps) and from the residuals (a jumping object leaves the line); dynamic when it travels at all.
- light: flicker = frame-to-frame jumps of the background's brightness that a camera shift does not explain; grain =
  the background's pixel noise around its fit.
- camera: shifts of the background where it has structure (the ramp of the gradient, a split boundary), and the
  object's sideways wobble across its own direction of travel (a steady camera leaves a straight track).

`read_videos` returns one `Reading` per video; `as_asked` compares a reading with a prompt's `Scene`;
`vbench_columns` gives VBench-like fractions with standard errors for a set of videos and prompts, and
`truth_scores` the per-video share of attributes as asked (the `world:truth` reward, descore_plugin.rewards.world);
`annotate` writes a reading down as the world's CoT and scores (an annotator of generated videos).
Validated in tests/test_world_truth.py on rendered clips with known defects, blurred, colour-bled and downscaled.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from descore_plugin.testing.clips import BACKGROUNDS, COLOURS, DIRECTIONS, OPPOSITE, Scene, WorldConfig

__all__ = [
    "ReaderConfig",
    "Reading",
    "read_video",
    "read_videos",
    "parse_prompt",
    "as_asked",
    "expected_reading",
    "COLUMNS",
    "CHECKS",
    "vbench_columns",
    "truth_scores",
    "WorldPromptError",
]

PROMPT = re.compile(r"^\s*an? (\w+) (\w+) moving (\w+) on an? (\w+) background\s*$")
"""The world's prompt: `Scene.prompt`, "a red square moving right on a dark background"."""

CHECKS = ("colour", "shape", "direction", "smooth", "background", "light", "camera")
"""The attributes a prompt asks for, each checked by `as_asked`; `truth_scores` is the share of them as asked.
(The world's prompts ask for a steady camera and steady light implicitly: its annotators expect them.)"""

COLUMNS = (
    "subject",
    "colour",
    "dynamics",
    "direction",
    "background",
    "temporal_flicker",
    "camera_steadiness",
    "dynamic_degree",
    "all_as_asked",
)
"""VBench-like columns of `vbench_columns`: the fraction of videos where
subject = colour and shape as asked; colour = colour as asked; dynamics = direction as asked and smooth;
direction = moving the asked way; background = as asked (no second background); temporal_flicker = no flicker;
camera_steadiness = steady camera; dynamic_degree = the object moves; all_as_asked = every one of CHECKS."""


class WorldPromptError(ValueError):
    """A prompt that is not a prompt of the synthetic world."""


@dataclass(frozen=True)
class ReaderConfig:
    """Thresholds of the reader, in uint8 levels and pixels; this project's choices, set on rendered clips and
    checked on blurred, colour-bled and downscaled ones (tests/test_world_truth.py)."""

    border: int = 2  # border columns each side that the background is fitted on
    min_contrast: float = 40.0  # a frame holds an object when its largest colour distance from the background is above
    noise_contrast: float = 5.0  # ... and above this many times the background's noise level
    grain: float = 3.0  # background noise std above which the light is "noise" (grainy)
    flicker: float = 15.0  # median frame-to-frame brightness jump above which the light "flickers"
    slight_shake: float = 0.55  # camera jitter (px, rms) above which the camera shakes slightly
    shake: float = 2.6  # camera jitter (px, rms) above which it shakes
    dynamic: float = 2.0  # travel (px) of the fitted track above which the object moves
    jump: float = 0.38  # residual rms of the track over its travel above which the object jumps around
    stutter: float = 0.6  # a step below (1 - stutter) or above (1 + stutter) times the mean step is a stutter
    min_slope: float = 0.8  # |background slope| (levels per row) above which the gradient shows vertical shifts


@dataclass
class Reading:
    """What one video shows, read from its pixels (None: not visible, e.g. no object in any frame)."""

    colour: str | None
    shape: str | None
    direction: str | None  # the way the object travels (None when it does not move)
    motion: str  # "smooth", "stutter", "jump", "static" or "none" (no object)
    dynamic: bool  # the object moves
    background: str  # the background (its left part when split)
    second_background: str | None  # the right part's background when the frame is split in two
    light: str  # "steady", "noise" or "flicker"
    camera: str  # "steady", "slight shake" or "shake"
    features: dict = field(default_factory=dict, repr=False)  # the measured quantities behind the reading

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def _frames_uint8_scale(videos) -> np.ndarray:
    """Videos -> float32 (B, T, H, W, 3) in uint8 levels. Accepts the pipeline's (B, F, C, H, W) float tensor in
    [0, 1], uint8 arrays (B, T, 3, H, W) as `render_clips` writes, or one video without the batch dimension."""
    if torch.is_tensor(videos):
        array = videos.detach().float().cpu().numpy()
        scale = 255.0
    else:
        array = np.asarray(videos)
        scale = 1.0 if array.dtype == np.uint8 else 255.0
        array = array.astype(np.float32)
    if array.ndim == 4:
        array = array[None]
    if array.ndim != 5 or array.shape[2] != 3:
        raise ValueError(f"videos of shape {tuple(array.shape)}: expected (B, T, 3, H, W) (or (T, 3, H, W))")
    if array.shape[1] < 2:
        raise ValueError(f"videos of {array.shape[1]} frame(s): reading motion needs at least 2")
    return np.ascontiguousarray(array.transpose(0, 1, 3, 4, 2) * scale)


def _box3(frames: np.ndarray) -> np.ndarray:
    """3x3 box filter of (T, H, W, C), edges replicated."""
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = frames.shape[1:3]
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:])[:, :height, :width] / 9.0


# ----------------------------------------------------------------------------------------------------------------
# Background


def _line(y: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of values (N, 3) = a + b * y, in closed form."""
    y_mean, v_mean = y.mean(), values.mean(axis=0)
    centred = y - y_mean
    spread = float(centred @ centred)
    slope = (centred @ (values - v_mean)) / spread if spread > 0 else np.zeros(values.shape[1], np.float32)
    return v_mean - slope * y_mean, slope


def _fit_line(y: np.ndarray, values: np.ndarray, keep: float = 0.6) -> tuple[np.ndarray, np.ndarray, float]:
    """Trimmed least squares of values (N, 3) = a + b * y: fit, keep the `keep` share with the smallest residuals,
    refit (twice). Returns (a, b, robust noise std of the kept residuals)."""
    intercept, slope = _line(y, values)
    count, kept = max(2, int(keep * len(y))), np.arange(len(y))
    for _ in range(2 if count < len(y) else 0):
        residual = np.abs(values - intercept - slope * y[:, None]).sum(axis=1)
        kept = np.argpartition(residual, count - 1)[:count]
        intercept, slope = _line(y[kept], values[kept])
    errors = values[kept] - intercept - slope * y[kept, None]
    noise = float(1.4826 * np.median(np.abs(errors - np.median(errors, axis=0)))) if len(errors) else 0.0
    return intercept, slope, noise


def _template(name: str, height: int) -> np.ndarray:
    """The visible rows (H, 3) of a world background: the ramp of a canvas with the camera margin of the world."""
    pad = 6  # synthetic._CAMERA_PAD: the canvas is taller than the frame by this margin each side
    top, bottom = (np.asarray(colour, dtype=np.float32) for colour in BACKGROUNDS[name])
    ramp = (np.arange(height, dtype=np.float32) + pad) / (height + 2 * pad - 1)
    return top + ramp[:, None] * (bottom - top)


def _nearest_background(line: np.ndarray, names: Sequence[str]) -> str:
    """The world background whose rows are nearest the fitted rows (H, 3)."""
    height = len(line)
    distances = [np.linalg.norm(line - _template(name, height), axis=1).mean() for name in names]
    return names[int(np.argmin(distances))]


def _steady(per_frame: np.ndarray) -> np.ndarray:
    """The level without flicker: the middle of the medians of the even and of the odd frames (flicker alternates
    its sign every frame, so the two medians sit either side of the steady level; without flicker they agree)."""
    return (np.median(per_frame[0::2], axis=0) + np.median(per_frame[1::2], axis=0)) / 2


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (T, H, W) by a (2r+1)^2 square."""
    out = mask.copy()
    for _ in range(radius):
        padded = np.pad(out, ((0, 0), (1, 1), (1, 1)))
        out = (
            padded[:, :-2, 1:-1]
            | padded[:, 2:, 1:-1]
            | padded[:, 1:-1, :-2]
            | padded[:, 1:-1, 2:]
            | padded[:, :-2, :-2]
            | padded[:, :-2, 2:]
            | padded[:, 2:, :-2]
            | padded[:, 2:, 2:]
            | out
        )
    return out


def _fit_frames(frames: np.ndarray, select: np.ndarray, keep: float) -> tuple[list, list]:
    """Per frame, the trimmed line fit of the selected pixels' colours against their row: [(a, b)], [noise]."""
    rows = np.broadcast_to(np.arange(frames.shape[1], dtype=np.float32)[:, None], frames.shape[1:3])
    lines, noises = [], []
    for t in range(frames.shape[0]):
        a, b, noise = _fit_line(rows[select[t]], frames[t][select[t]], keep)
        lines.append((a, b))
        noises.append(noise)
    return lines, noises


def _background(
    frames: np.ndarray,
    config: ReaderConfig,
    names: Sequence[str],
    first: dict | None = None,
    exclude: np.ndarray | None = None,
) -> dict:
    """Per-frame background model (T, H, W, 3), its names, brightness offsets and the shifts it shows.

    First pass (`first` None): lines fitted to the border columns. Second pass: refitted on every pixel away from
    the object mask `exclude` found with the first pass (and from the split boundary), which is far less noisy."""
    frames_count, height, width, _ = frames.shape
    rows = np.arange(height, dtype=np.float32)
    columns = np.arange(width)
    if first is None:
        k = max(1, min(config.border, width // 8))
        left_select = np.broadcast_to(columns < k, frames.shape[:3])
        right_select = np.broadcast_to(columns >= width - k, frames.shape[:3])
        lines_left, noise_left = _fit_frames(frames, left_select, 0.6)
        lines_right, noise_right = _fit_frames(frames, right_select, 0.6)
        noises = noise_left + noise_right
        left = np.stack([a[None] + b[None] * rows[:, None] for a, b in lines_left])  # (T, H, 3)
        right = np.stack([a[None] + b[None] * rows[:, None] for a, b in lines_right])
        left_name = _nearest_background(_steady(left), names)
        right_name = _nearest_background(_steady(right), names)
        split = left_name != right_name
        boundary = np.full(frames_count, np.nan)
        if split:
            for t in range(frames_count):
                # the boundary column most pixels agree with: closer to the left line before it, the right after
                closer_left = (
                    np.linalg.norm(frames[t] - left[t][:, None], axis=2)
                    < np.linalg.norm(frames[t] - right[t][:, None], axis=2)
                ).mean(axis=0)  # (W,)
                before = np.concatenate([[0.0], np.cumsum(1 - closer_left)])
                after = np.concatenate([np.cumsum(closer_left[::-1])[::-1], [0.0]])
                boundary[t] = int(np.argmin(before + after))
        else:
            both = left_select | right_select
            lines_left, noises = _fit_frames(frames, both, 0.6)
            lines_right = lines_left
    else:
        split, boundary = first["second_background"] is not None, first["boundary"]
        keep = ~_dilate(exclude, 2)
        if split:
            cut = boundary[:, None, None]
            lines_left, noise_left = _fit_frames(frames, keep & (columns[None, None] < cut - 1), 0.8)
            lines_right, noise_right = _fit_frames(frames, keep & (columns[None, None] > cut + 1), 0.8)
            noises = noise_left + noise_right
        else:
            lines_left, noises = _fit_frames(frames, keep, 0.8)
            lines_right = lines_left
        left = np.stack([a[None] + b[None] * rows[:, None] for a, b in lines_left])
        right = np.stack([a[None] + b[None] * rows[:, None] for a, b in lines_right])
        left_name = _nearest_background(_steady(left), names)
        right_name = _nearest_background(_steady(right), names) if split else left_name
    model = np.empty_like(frames)
    for t in range(frames_count):
        a_left, b_left = lines_left[t]
        a_right, b_right = lines_right[t]
        line_left = a_left[None] + b_left[None] * rows[:, None]  # (H, 3)
        line_right = a_right[None] + b_right[None] * rows[:, None]
        cut = boundary[t] if split else width
        model[t] = np.where(columns[None, :, None] < cut, line_left[:, None], line_right[:, None])
    # brightness offset per frame (flicker) and the vertical shift a ramp shows (camera): level change
    # a_t - a_ref = slope * dy_t + offset_t * (1, 1, 1), solved per frame where the slope is large enough
    # (the level at the middle row, where the slope's own error does not enter)
    intercepts = np.stack([a + b * (height - 1) / 2 for a, b in lines_left])  # (T, 3)
    slope = np.median(np.stack([b for _, b in lines_left]), axis=0)  # (3,) levels per row
    delta = intercepts - np.median(intercepts, axis=0)
    shift_y = None
    if np.linalg.norm(slope) >= config.min_slope:
        design = np.stack([slope, np.ones(3)], axis=1)  # (3, 2)
        solution = np.linalg.lstsq(design, delta.T, rcond=None)[0]  # (2, T)
        shift_y, offset = solution[0], solution[1]
    else:
        offset = delta.mean(axis=1)
    shift_x = -(boundary - np.median(boundary)) if split else None
    return {
        "model": model,
        "background": left_name,
        "second_background": right_name if split else None,
        "boundary": boundary,
        "offset": offset,
        "shift_y": shift_y,
        "shift_x": shift_x,
        "noise": float(np.median(noises)),
    }


# ----------------------------------------------------------------------------------------------------------------
# Object


def _opened(mask: np.ndarray) -> np.ndarray:
    """(H, W) mask without lines 1-2 px wide (e.g. along a split background's boundary); unchanged if that empties
    it."""
    opened = _dilate(~_dilate(~mask[None], 1), 1)[0]
    return opened if opened.any() else mask


def _object(frames: np.ndarray, background: dict, config: ReaderConfig) -> dict:
    """Per-frame mask, centroid, area and shape evidence of the object."""
    model = background["model"]
    distance = np.linalg.norm(frames - model, axis=3)  # (T, H, W)
    smoothed = np.linalg.norm(_box3(frames) - model, axis=3)  # the peak, without single noisy pixels
    frames_count, height, width = distance.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    floor = max(config.min_contrast, config.noise_contrast * background["noise"])
    centroids, areas, shape_votes, core_pixels, core_backgrounds = [], [], [], [], []
    masks = np.zeros(distance.shape, dtype=bool)
    for t in range(frames_count):
        peak = float(smoothed[t].max())
        if peak < floor:
            centroids.append(None)
            continue
        mask = _opened(distance[t] >= 0.5 * peak)  # half maximum: the edge of a blurred shape
        # the centroid from a lower level: a shape straddling two backgrounds stands out less from one of them
        wide = masks[t] = _opened(distance[t] >= max(floor, 0.3 * peak)) | mask
        area = float(mask.sum())
        cy, cx = float(ys[wide].mean()), float(xs[wide].mean())
        centroids.append((cy, cx))
        areas.append(area)
        core = smoothed[t] >= 0.75 * peak
        core_pixels.append(frames[t][core] - background["offset"][t])
        core_backgrounds.append(model[t][core] - background["offset"][t])
        touches = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        if not touches and area >= 4:
            half = math.sqrt(area) / 2
            square = (np.abs(ys - cy) <= half) & (np.abs(xs - cx) <= half)
            disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= area / math.pi
            iou_square = (mask & square).sum() / max(1, (mask | square).sum())
            iou_disc = (mask & disc).sum() / max(1, (mask | disc).sum())
            shape_votes.append(float(iou_square - iou_disc))
    return {
        "centroids": centroids,
        "areas": areas,
        "masks": masks,
        "shape_votes": shape_votes,
        "core": np.concatenate(core_pixels) if core_pixels else np.zeros((0, 3), np.float32),
        "core_background": np.concatenate(core_backgrounds) if core_backgrounds else np.zeros((0, 3), np.float32),
    }


def _nearest_colour(pixel: np.ndarray, background: np.ndarray, names: Sequence[str]) -> str:
    """The palette colour c for which background + lambda (c - background), lambda in [0.35, 1], is nearest `pixel`
    (colour bleed mixes a small shape with its surroundings)."""
    best, best_distance = names[0], math.inf
    for name in names:
        target = np.asarray(COLOURS[name], dtype=np.float32)
        direction = target - background
        norm = float(direction @ direction)
        mix = 1.0 if norm == 0 else float(np.clip((pixel - background) @ direction / norm, 0.35, 1.0))
        distance = float(np.linalg.norm(background + mix * direction - pixel))
        if distance < best_distance:
            best, best_distance = name, distance
    return best


# ----------------------------------------------------------------------------------------------------------------
# Reading one video


def read_video(frames: np.ndarray, world: WorldConfig | None = None, config: ReaderConfig = ReaderConfig()) -> Reading:
    """Read one video, (T, H, W, 3) float in uint8 levels (`read_videos` converts the usual layouts)."""
    colours = tuple(world.colours) if world is not None else tuple(COLOURS)
    shapes = tuple(world.shapes) if world is not None else ("square", "circle")
    backgrounds = tuple(world.backgrounds) if world is not None else tuple(BACKGROUNDS)
    frames_count = frames.shape[0]
    background = _background(frames, config, backgrounds)
    found = _object(frames, background, config)
    background = _background(frames, config, backgrounds, first=background, exclude=found["masks"])
    found = _object(frames, background, config)
    features = {"background_noise": background["noise"]}

    # light: brightness jumps between consecutive frames, and grain around the background's fit
    jumps = np.abs(np.diff(background["offset"]))
    features["flicker_jump"] = float(np.median(jumps))
    if features["flicker_jump"] > config.flicker:
        light = "flicker"
    elif background["noise"] > config.grain:
        light = "noise"
    else:
        light = "steady"

    # object: colour and shape
    present = [t for t, c in enumerate(found["centroids"]) if c is not None]
    colour = shape = None
    if present:
        colour = _nearest_colour(np.median(found["core"], axis=0), np.median(found["core_background"], axis=0), colours)
        if len(shapes) == 1:
            shape = shapes[0]
        elif found["shape_votes"]:
            vote = float(np.mean(found["shape_votes"]))
            features["shape_vote"] = vote
            shape = "square" if vote > 0 else "circle"
            shape = shape if shape in shapes else shapes[0]

    # camera shifts the background shows (relative to the median frame), per axis; None where it has no structure
    shifts = {0: background["shift_y"], 1: background["shift_x"]}
    jitters = [float(np.sqrt(np.mean((s - np.mean(s)) ** 2))) for s in shifts.values() if s is not None]

    direction, motion, dynamic = None, "none", False
    if len(present) >= 2:
        track = np.array([found["centroids"][t] for t in present], dtype=np.float64)  # (N, 2) as (y, x)
        for axis, shift in shifts.items():
            if shift is not None:
                track[:, axis] += shift[present]  # the object's position in the world, not in the frame
        times = np.array(present, dtype=np.float64)
        design = np.stack([np.ones_like(times), times], axis=1)
        coef = np.linalg.lstsq(design, track, rcond=None)[0]  # (2, 2): intercept, velocity per axis
        velocity = coef[1]
        residual = track - design @ coef
        travel = float(np.linalg.norm(velocity) * (frames_count - 1))
        residual_rms = float(np.sqrt(np.mean(np.sum(residual**2, axis=1))))
        axis = int(np.argmax(np.abs(velocity)))
        sign = float(np.sign(velocity[axis])) or 1.0
        steps = np.diff(track[:, axis]) * sign / np.diff(times)
        sideways = float(np.sqrt(np.mean(residual[:, 1 - axis] ** 2)))
        features.update(
            travel=travel,
            residual_rms=residual_rms,
            sideways_rms=sideways,
            velocity=velocity.tolist(),
            steps=steps.tolist(),
        )
        dynamic = travel >= config.dynamic or residual_rms >= config.dynamic
        if not dynamic:
            motion = "static"
        elif residual_rms > config.jump * travel:
            motion = "jump"
        else:
            direction = {(0, 1.0): "down", (0, -1.0): "up", (1, 1.0): "right", (1, -1.0): "left"}[(axis, sign)]
            if shifts[1 - axis] is None:  # the background cannot show this axis: the track's sideways wobble does
                jitters.append(sideways)
            mean_step = travel / (frames_count - 1)
            uneven = steps.min() < (1 - config.stutter) * mean_step or steps.max() > (1 + config.stutter) * mean_step
            # a shaking camera also makes uneven steps along an axis the background cannot show: a stutter is only
            # read where the camera is seen to be steady, or its shifts along the motion are removed
            shaking = max(jitters, default=0.0) >= config.slight_shake
            motion = "stutter" if uneven and (shifts[axis] is not None or not shaking) else "smooth"
    elif len(present) == 1:
        motion = "static"

    jitter = max(jitters, default=0.0)
    features["camera_jitter"] = jitter
    camera = "shake" if jitter >= config.shake else "slight shake" if jitter >= config.slight_shake else "steady"
    return Reading(
        colour=colour,
        shape=shape,
        direction=direction,
        motion=motion,
        dynamic=dynamic,
        background=background["background"],
        second_background=background["second_background"],
        light=light,
        camera=camera,
        features=features,
    )


def read_videos(videos, world: WorldConfig | None = None, config: ReaderConfig = ReaderConfig()) -> list[Reading]:
    """Read every video: the pipeline's (B, F, C, H, W) float tensor in [0, 1], a uint8 array (B, T, 3, H, W) as
    `render_clips` writes, or one video (T, 3, H, W). `world` restricts the names to the world's palette."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # A frame without an object (a generator draws those) leaves empty slices; the reading says "none" there.
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return [read_video(video, world, config) for video in _frames_uint8_scale(videos)]


ATTRIBUTES = ("colour", "shape", "direction", "motion", "background", "second_background", "light", "camera")
"""What `recovery` checks per clip: everything a rendered clip's truth says (`expected_reading`)."""


def recovery(clips, videos, world: WorldConfig = WorldConfig(), config: ReaderConfig = ReaderConfig()) -> dict:
    """How well the pixels of `videos` (the renderings of `clips`, or what a VAE or a codec made of them) keep each
    clip's truth: per attribute of ATTRIBUTES, the share of clips read right over the clips whose pixels can tell it
    (`expected_reading`'s "unobservable" are skipped), and under "every" the share of clips with every such
    attribute right. The validation of this measure, and of a VAE that must not smear what it is asked to keep."""
    readings = read_videos(videos, world, config)
    if len(readings) != len(clips):
        raise ValueError(f"recovery: {len(clips)} clips but {len(readings)} videos")
    right = {name: [] for name in ATTRIBUTES}
    every = []
    for clip, reading in zip(clips, readings):
        expected = expected_reading(clip, world)
        ok = True
        for name in ATTRIBUTES:
            if name in expected["unobservable"]:
                continue
            right[name].append(getattr(reading, name) == expected[name])
            ok &= right[name][-1]
        every.append(ok)
    return {"every": float(np.mean(every)), **{name: float(np.mean(values)) for name, values in right.items()}}


# ----------------------------------------------------------------------------------------------------------------
# Against the prompt


def parse_prompt(prompt: str) -> Scene:
    """A world prompt ("a red square moving right on a dark background") -> its Scene."""
    match = PROMPT.match(prompt)
    if match is None:
        raise WorldPromptError(
            f'prompt {prompt!r} is not a world prompt ("a <colour> <shape> moving <direction> on '
            f'a <background> background")'
        )
    colour, shape, direction, background = match.groups()
    for what, value, known in (
        ("colour", colour, COLOURS),
        ("shape", shape, ("square", "circle")),
        ("direction", direction, DIRECTIONS),
        ("background", background, BACKGROUNDS),
    ):
        if value not in known:
            raise WorldPromptError(f"prompt {prompt!r}: unknown {what} {value!r} (the world has {', '.join(known)})")
    return Scene(colour, shape, direction, background)


def as_asked(reading: Reading, scene: Scene) -> dict[str, bool]:
    """Each of CHECKS (and dynamic): does the video show what the prompt asks for?"""
    return {
        "colour": reading.colour == scene.colour,
        "shape": reading.shape == scene.shape,
        "direction": reading.dynamic and reading.direction == scene.direction,
        "smooth": reading.motion == "smooth",
        "background": reading.background == scene.background and reading.second_background is None,
        "light": reading.light == "steady",
        "camera": reading.camera == "steady",
        "dynamic": reading.dynamic,
        "flicker_free": reading.light != "flicker",
    }


def annotate(reading: Reading, prompt: str) -> tuple[str, dict] | None:
    """A reading written down as an annotator of the world describes a video: the world's CoT (`synthetic.write_cot`
    of the clip the reading describes, the format the judge learns) and its dimension scores (0 / 1 / 2); None where
    no object was found (nothing to describe). What a rendered clip cannot show is mapped to the nearest words the
    world's CoT has: a track the way the prompt asks is "moving <dir>" (smooth) or "in stutters", an erratic one
    "jumping around"; a track another way is a dynamics failure named as seen ("moving up"); an object that does not
    travel is a dynamics failure too, written "jumping around" (the world's CoT has no words for standing still).
    On a rendered clip whose every attribute is read right it gives exactly the clip's own CoT and scores (a test)."""
    from descore_plugin.testing.clips import Clip
    from descore_plugin.testing.synthetic import write_cot

    scene = parse_prompt(prompt)
    if reading.colour is None or reading.shape is None:
        return None
    seen = None  # a direction of travel that is neither the asked one nor its opposite
    if not reading.dynamic or reading.direction is None:
        motion = "jump"
    elif reading.direction == scene.direction:
        motion = reading.motion if reading.motion in ("smooth", "stutter") else "jump"
    else:
        motion = "reverse"
        seen = None if reading.direction == OPPOSITE[scene.direction] else reading.direction
    clip = Clip(
        scene,
        reading.colour,
        reading.shape,
        motion,
        reading.camera,
        reading.background,
        reading.second_background,
        reading.light,
        seed=0,
    )
    cot = write_cot(clip)
    if seen is not None:
        cot = cot.replace(f"dynamics moving {OPPOSITE[scene.direction]}:", f"dynamics moving {seen}:", 1)
    return cot, clip.scores


def expected_reading(clip, world: WorldConfig = WorldConfig()) -> dict:
    """What `read_video` should read from a rendered `synthetic.Clip` of `world` (the validation's truth), and under
    "unobservable" the attributes its pixels cannot tell. On a background without structure (uniform, not split) a
    camera shift moves only the object, so (1) the shake of a camera filming a shape that jumps around is invisible;
    (2) under a camera that shakes along the direction of travel, a stutter and a smooth motion draw the same kind of
    track; (3) when the whole travel is shorter than four strong shakes (3-6 px a frame: the world's 9x32x32 clips
    travel 16 px), a jumping shape and a shape moving under a strongly shaking camera do too."""
    direction = {
        "smooth": clip.scene.direction,
        "stutter": clip.scene.direction,
        "jump": None,
        "reverse": OPPOSITE[clip.scene.direction],
    }[clip.motion]
    vertical = "gradient" in (clip.background, clip.second_background)  # a ramp shows vertical shifts
    horizontal = clip.second_background is not None  # a split shows horizontal shifts
    unobservable = set()
    if not (vertical or horizontal):
        if clip.motion == "jump" and clip.camera != "steady":
            unobservable.add("camera")
        if world.speed * (world.num_frames - 1) < 4 * 6 and (clip.motion == "jump" or clip.camera == "shake"):
            unobservable.update(("camera", "motion", "direction"))
    along_visible = vertical if DIRECTIONS[clip.scene.direction][0] else horizontal
    if clip.camera != "steady" and clip.motion in ("smooth", "stutter", "reverse") and not along_visible:
        unobservable.add("motion")
    return {
        "colour": clip.colour,
        "shape": clip.shape,
        "direction": direction,
        "motion": {"reverse": "smooth"}.get(clip.motion, clip.motion),
        "background": clip.background,
        "second_background": clip.second_background,
        "light": clip.light,
        "camera": clip.camera,
        "unobservable": tuple(sorted(unobservable)),
    }


def _checks(readings: Sequence[Reading], prompts: Sequence[str]) -> list[dict]:
    if len(readings) != len(prompts):
        raise ValueError(f"{len(readings)} videos but {len(prompts)} prompts")
    rows = []
    for index, (reading, prompt) in enumerate(zip(readings, prompts)):
        try:
            scene = parse_prompt(prompt)
        except WorldPromptError as error:
            raise WorldPromptError(f"prompts[{index}]: {error}") from None
        rows.append(as_asked(reading, scene))
    return rows


def truth_scores(
    videos, prompts: Sequence[str], world: WorldConfig | None = None, config: ReaderConfig = ReaderConfig()
) -> torch.Tensor:
    """Per video, the share of CHECKS the video shows as its prompt asks, (B,) float32 in [0, 1]."""
    rows = _checks(read_videos(videos, world, config), prompts)
    return torch.tensor([sum(row[name] for name in CHECKS) / len(CHECKS) for row in rows], dtype=torch.float32)


def column_values(checks: dict) -> dict[str, bool]:
    """One video's as_asked checks -> its COLUMNS."""
    return {
        "subject": checks["colour"] and checks["shape"],
        "colour": checks["colour"],
        "dynamics": checks["direction"] and checks["smooth"],
        "direction": checks["direction"],
        "background": checks["background"],
        "temporal_flicker": checks["flicker_free"],
        "camera_steadiness": checks["camera"],
        "dynamic_degree": checks["dynamic"],
        "all_as_asked": all(checks[name] for name in CHECKS),
    }


def vbench_columns(
    videos,
    prompts: Sequence[str],
    world: WorldConfig | None = None,
    config: ReaderConfig = ReaderConfig(),
    readings: Sequence[Reading] | None = None,
) -> dict:
    """VBench-like columns (COLUMNS) of a set of videos and their prompts: {column: {"mean", "stderr"}} plus
    "num_videos"; the standard error of a fraction p over n videos is sqrt(p (1 - p) / n).
    readings: already read videos (then `videos` is not read again)."""
    readings = list(readings) if readings is not None else read_videos(videos, world, config)
    values = [column_values(checks) for checks in _checks(readings, prompts)]
    count = len(values)
    if count == 0:
        raise ValueError("vbench_columns: no videos")
    out = {"num_videos": count}
    for column in COLUMNS:
        p = sum(v[column] for v in values) / count
        out[column] = {"mean": p, "stderr": math.sqrt(p * (1 - p) / count)}
    return out
