"""A synthetic video world whose truth is known: short clips of a coloured shape moving on a background.

The world itself (scenes, clips, their ground truth, the table of defects per dimension) is in `testing/clips.py`;
this module renders clips, writes their CoTs and builds pair sets. The CoT writer produces a short annotator-style
chain of thought in the three DeScore stages, whose evidence stage states what is SEEN (the observed colour,
motion, ...), then the exact `<answer>` block.

Everything is seeded: pair i of `sample_pairs(seed=s)` depends only on (s, i). Rendering is vectorised numpy
(about 0.6 ms per clip at the default size on one core: over a thousand clips per second).
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from descore_plugin.data.pairs import Pair, save_pairs
from descore_plugin.data.video import write_video
from descore_plugin.modeling.prompt import DIMENSIONS, format_answer
from descore_plugin.testing.clips import (  # the world's definitions, re-exported (see __all__)
    _EDGE_MARGIN,
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    OPPOSITE,
    SHAPES,
    Clip,
    Scene,
    WorldConfig,
    make_clip,
    overall_score,
)

__all__ = [
    "COLOURS",
    "BACKGROUNDS",
    "SHAPES",
    "DIRECTIONS",
    "WorldConfig",
    "Scene",
    "Clip",
    "PairSpec",
    "SyntheticPairs",
    "overall_score",
    "make_clip",
    "render_clip",
    "render_clips",
    "write_cot",
    "sample_pairs",
    "generate_pairs",
    "write_dataset",
    "vocabulary_texts",
]

# The world's rendering settings
_CAMERA_PAD = 6  # world margin around the frame that a shaking camera can reveal; equals the strongest shake
_NOISE_STD = 18.0  # grainy-noise standard deviation (style 1), in uint8 levels
_FLICKER = (45.0, 80.0)  # range of the per-frame brightness offset (style 0), in uint8 levels, sign alternating


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _background_image(name: str, height: int, width: int) -> np.ndarray:
    top, bottom = (np.asarray(colour, dtype=np.float32) for colour in BACKGROUNDS[name])
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    return np.broadcast_to(top + ramp * (bottom - top), (height, width, 3))  # (H, W, 3)


def _trajectory(clip: Clip, rng: np.random.Generator, world: WorldConfig) -> np.ndarray:
    """Top-left corner of the shape per frame, (T, 2) as (y, x) in frame coordinates."""
    frames, size = world.num_frames, world.object_size
    low = _EDGE_MARGIN
    high = np.array([world.height, world.width]) - size - _EDGE_MARGIN  # largest top-left (y, x)
    if clip.motion == "jump":
        return rng.integers(low, high + 1, size=(frames, 2))
    direction = clip.scene.direction if clip.motion != "reverse" else OPPOSITE[clip.scene.direction]
    step = np.array(DIRECTIONS[direction])  # (dy, dx)
    travel = world.speed * (frames - 1)
    if clip.motion == "stutter" and frames == 2:
        progress = np.array([0, 0])  # two frames cannot stutter: the shape freezes
    elif clip.motion == "stutter":
        # Progress in whole steps: starts at 0, ends at T - 1, never goes back, freezes at least once.
        while True:
            inner = np.sort(rng.integers(1, frames - 1, size=frames - 2))
            progress = np.concatenate([[0], inner, [frames - 1]])
            if len(np.unique(progress)) < frames:
                break
    else:
        progress = np.arange(frames)
    start = np.empty(2, dtype=np.int64)
    for axis in range(2):
        if step[axis] > 0:
            start[axis] = rng.integers(low, high[axis] - travel + 1)
        elif step[axis] < 0:
            start[axis] = rng.integers(low + travel, high[axis] + 1)
        else:
            start[axis] = rng.integers(low, high[axis] + 1)
    return start + progress[:, None] * world.speed * step  # (T, 2)


def _camera_offsets(camera: str, rng: np.random.Generator, frames: int) -> np.ndarray:
    """Per-frame (dy, dx) shift of the camera window, (T, 2) integers in [-_CAMERA_PAD, _CAMERA_PAD]."""
    if camera == "steady":
        return np.zeros((frames, 2), dtype=np.int64)
    low, high = (1, 2) if camera == "slight shake" else (3, _CAMERA_PAD)
    magnitude = rng.integers(low, high + 1, size=(frames, 2))
    return magnitude * rng.choice([-1, 1], size=(frames, 2))


def render_clip(clip: Clip, world: WorldConfig = WorldConfig()) -> np.ndarray:
    """Render one clip as uint8 frames of shape (T, 3, H, W). Deterministic given the clip."""
    rng = np.random.default_rng(clip.seed)
    frames, height, width, size, pad = world.num_frames, world.height, world.width, world.object_size, _CAMERA_PAD
    canvas_h, canvas_w = height + 2 * pad, width + 2 * pad
    background = np.array(_background_image(clip.background, canvas_h, canvas_w))  # (Hc, Wc, 3)
    if clip.second_background is not None:
        second = _background_image(clip.second_background, canvas_h, canvas_w)
        background[:, canvas_w // 2 :] = second[:, canvas_w // 2 :]

    top_left = _trajectory(clip, rng, world) + pad  # (T, 2) in canvas coordinates
    ys = np.arange(canvas_h, dtype=np.float32)[None, :, None]  # (1, Hc, 1)
    xs = np.arange(canvas_w, dtype=np.float32)[None, None, :]  # (1, 1, Wc)
    top = top_left[:, 0, None, None].astype(np.float32)  # (T, 1, 1)
    left = top_left[:, 1, None, None].astype(np.float32)
    if clip.shape == "square":
        mask = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)  # (T, Hc, Wc)
    else:
        centre_y, centre_x, radius = top + (size - 1) / 2, left + (size - 1) / 2, size / 2
        mask = (ys - centre_y) ** 2 + (xs - centre_x) ** 2 <= radius**2
    colour = np.asarray(COLOURS[clip.colour], dtype=np.float32)
    canvas = np.where(mask[..., None], colour, background[None])  # (T, Hc, Wc, 3)

    # The camera sees a (H, W) window of the canvas, shifted per frame when it shakes.
    offsets = _camera_offsets(clip.camera, rng, frames) + pad  # (T, 2)
    rows = offsets[:, 0, None] + np.arange(height)  # (T, H)
    cols = offsets[:, 1, None] + np.arange(width)  # (T, W)
    video = canvas[np.arange(frames)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (T, H, W, 3)

    if clip.light == "noise":
        video = video + rng.normal(0.0, _NOISE_STD, size=video.shape).astype(np.float32)
    elif clip.light == "flicker":
        signs = np.where(np.arange(frames) % 2 == rng.integers(2), 1.0, -1.0)
        offsets_light = signs * rng.uniform(*_FLICKER, size=frames)
        video = video + offsets_light[:, None, None, None].astype(np.float32)
    video = np.clip(np.rint(video), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(video.transpose(0, 3, 1, 2))  # (T, 3, H, W)


def render_clips(clips: list[Clip], world: WorldConfig = WorldConfig()) -> np.ndarray:
    """Render clips into one uint8 array of shape (N, T, 3, H, W)."""
    out = np.empty((len(clips), world.num_frames, 3, world.height, world.width), dtype=np.uint8)
    for index, clip in enumerate(clips):
        out[index] = render_clip(clip, world)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Chain of thought


_MOTION_SEEN = {
    "smooth": "moving {d}",
    "stutter": "moving {d} in stutters",
    "jump": "jumping around",
    "reverse": "moving {o}",
}
_REASON = {
    ("subject", 1): "wrong shape",
    ("subject", 0): "wrong colour",
    ("dynamics", 1): "stutters",
    ("camera", 1): "slight shake",
    ("camera", 0): "strong shake",
    ("environment", 1): "partly wrong background",
    ("environment", 0): "wrong background",
    ("style", 1): "noise",
    ("style", 0): "flicker",
}


def write_cot(clip: Clip) -> str:
    """A short three-stage CoT (expectations, visual evidence with each dimension's verdict, answer block).

    Example (the prompt asks for red, the video shows green):
        Expect: a red square moving right on a dark background, steady camera, steady light.
        Seen: subject a green square, red square asked: 0 wrong colour; dynamics moving right: 2; camera steady
        camera: 2; environment dark background: 2; style steady light: 2.
        <answer>{"dimensional_scores": {"subject": 0, ...}, "overall_score": 2.9}</answer>

    Each verdict follows its evidence within a few tokens, and the subject's puts the colour seen next to the colour
    asked: a 2-layer model learns to write the prompt-alignment verdict itself much sooner than when the verdicts
    sit in a separate analysis line (docs/benchmarks.md has the numbers).
    """
    scene = clip.scene
    motion = _MOTION_SEEN[clip.motion].format(d=scene.direction, o=OPPOSITE[scene.direction])
    if clip.second_background is None:
        background = f"{clip.background} background"
    else:
        background = f"{clip.background} and {clip.second_background} background"
    light = {"steady": "steady light", "noise": "grainy noise", "flicker": "flickering light"}[clip.light]
    camera = {"steady": "steady camera", "slight shake": "slightly shaky camera", "shake": "shaky camera"}[clip.camera]
    scores = clip.scores

    def verdict(name: str) -> str:
        if name == "dynamics" and scores[name] == 0:
            reason = "erratic jumps" if clip.motion == "jump" else "wrong direction"
        else:
            reason = _REASON.get((name, scores[name]))
        return f"{scores[name]}" + (f" {reason}" if reason else "")

    evidence = [
        f"subject a {clip.colour} {clip.shape}, {scene.colour} {scene.shape} asked: {verdict('subject')}",
        f"dynamics {motion}: {verdict('dynamics')}",
        f"camera {camera}: {verdict('camera')}",
        f"environment {background}: {verdict('environment')}",
        f"style {light}: {verdict('style')}",
    ]
    return (
        f"Expect: {scene.prompt}, steady camera, steady light.\n"
        f"Seen: {'; '.join(evidence)}.\n"
        f"{format_answer(scores, clip.overall)}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Pairs


@dataclass(frozen=True)
class PairSpec:
    """Two clips of the same prompt, the label their overall scores imply, and the dimension they differ in."""

    clip_a: Clip
    clip_b: Clip
    label: str  # "A", "B" or "tie" (from the overall scores)
    slice: str  # the one dimension whose defect differs, or "none" for a tie pair with equal truth

    @property
    def prompt(self) -> str:
        return self.clip_a.prompt


def sample_pairs(
    num_pairs: int,
    *,
    seed: int = 0,
    defects: tuple = DIMENSIONS,
    tie_rate: float = 0.0,
    mild_rate: float = 0.0,
    shared_defect_rate: float = 0.0,
    world: WorldConfig = WorldConfig(),
) -> list[PairSpec]:
    """Draw pair descriptions (no rendering). Pair i depends only on (seed, i).

    defects: the dimensions a pair may differ in; each non-tie pair picks one uniformly (its `slice`).
    tie_rate: fraction of pairs with equal truth (two renderings of the same defects): label "tie", slice "none".
    mild_rate: probability that the differing defect is the mild one (score 1) instead of the failure (0).
    shared_defect_rate: per other dimension in `defects`, probability that BOTH clips carry that defect (mild with
        probability mild_rate; the failure itself, e.g. which wrong colour, is drawn per clip), so that "has a
        defect" is not a shortcut for "is worse".
    """
    unknown = [name for name in defects if name not in DIMENSIONS]
    if not defects or unknown:
        raise ValueError(f"defects = {list(defects)} must be a non-empty subset of {list(DIMENSIONS)}")
    for name, rate in (("tie_rate", tie_rate), ("mild_rate", mild_rate), ("shared_defect_rate", shared_defect_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} = {rate} must be in [0, 1]")
    if num_pairs < 1:
        raise ValueError(f"num_pairs = {num_pairs} must be at least 1")
    pairs = []
    for index in range(num_pairs):
        rng = np.random.default_rng([seed, index])
        scene = Scene(
            colour=world.colours[int(rng.integers(len(world.colours)))],
            shape=world.shapes[int(rng.integers(len(world.shapes)))],
            direction=world.directions[int(rng.integers(len(world.directions)))],
            background=world.backgrounds[int(rng.integers(len(world.backgrounds)))],
        )
        is_tie = rng.random() < tie_rate
        differing = None if is_tie else defects[int(rng.integers(len(defects)))]
        shared = {name: 2 for name in DIMENSIONS}
        for name in defects:
            if name != differing and rng.random() < shared_defect_rate:
                shared[name] = 1 if rng.random() < mild_rate else 0
        better, worse = dict(shared), dict(shared)
        if differing is not None:
            worse[differing] = 1 if rng.random() < mild_rate else 0
        first, second = make_clip(scene, better, rng, world), make_clip(scene, worse, rng, world)
        if rng.random() < 0.5:
            first, second = second, first
        if first.overall > second.overall:
            label = "A"
        elif first.overall < second.overall:
            label = "B"
        else:
            label = "tie"
        pairs.append(PairSpec(first, second, label, differing or "none"))
    return pairs


@dataclass
class SyntheticPairs:
    """Rendered pairs in memory (training and tests use these to skip video decoding)."""

    frames_a: np.ndarray  # (N, T, 3, H, W) uint8
    frames_b: np.ndarray  # (N, T, 3, H, W) uint8
    prompts: list[str]
    cots_a: list[str]
    cots_b: list[str]
    labels: list[str]  # "A", "B" or "tie"
    slices: list[str]  # the dimension that differs, or "none"
    scores_a: list[dict]  # ground-truth dimension scores of video A
    scores_b: list[dict]
    overall_a: np.ndarray  # (N,) float32 ground-truth overall scores
    overall_b: np.ndarray
    specs: list[PairSpec] = field(repr=False)

    def __len__(self) -> int:
        return len(self.specs)


def generate_pairs(
    num_pairs: int,
    *,
    seed: int = 0,
    defects: tuple = DIMENSIONS,
    tie_rate: float = 0.0,
    mild_rate: float = 0.0,
    shared_defect_rate: float = 0.0,
    world: WorldConfig = WorldConfig(),
) -> SyntheticPairs:
    """Sample and render pairs in memory; the arguments are those of `sample_pairs`."""
    specs = sample_pairs(
        num_pairs,
        seed=seed,
        defects=defects,
        tie_rate=tie_rate,
        mild_rate=mild_rate,
        shared_defect_rate=shared_defect_rate,
        world=world,
    )
    return SyntheticPairs(
        frames_a=render_clips([spec.clip_a for spec in specs], world),
        frames_b=render_clips([spec.clip_b for spec in specs], world),
        prompts=[spec.prompt for spec in specs],
        cots_a=[write_cot(spec.clip_a) for spec in specs],
        cots_b=[write_cot(spec.clip_b) for spec in specs],
        labels=[spec.label for spec in specs],
        slices=[spec.slice for spec in specs],
        scores_a=[spec.clip_a.scores for spec in specs],
        scores_b=[spec.clip_b.scores for spec in specs],
        overall_a=np.array([spec.clip_a.overall for spec in specs], dtype=np.float32),
        overall_b=np.array([spec.clip_b.overall for spec in specs], dtype=np.float32),
        specs=specs,
    )


TRANSFORM_CHUNK = 256  # clips per call of write_dataset's transform (256 default clips: 7 MB of frames)


def _transformed_clips(clips: list, world: WorldConfig, transform):
    """Yield transform(rendered clips) one clip at a time, rendering and transforming TRANSFORM_CHUNK clips a call."""
    for start in range(0, len(clips), TRANSFORM_CHUNK):
        yield from np.asarray(transform(render_clips(clips[start : start + TRANSFORM_CHUNK], world)), dtype=np.uint8)


def write_dataset(
    out_dir,
    num_pairs: int,
    *,
    seed: int = 0,
    defects: tuple = DIMENSIONS,
    tie_rate: float = 0.0,
    mild_rate: float = 0.0,
    shared_defect_rate: float = 0.0,
    world: WorldConfig = WorldConfig(),
    crf: int = 10,
    write_csv: bool = False,
    progress: bool = True,
    transform=None,
) -> Path:
    """Write a synthetic pair dataset: `videos/NNNNN_a.mp4`, `videos/NNNNN_b.mp4` and `pairs.jsonl` (plus
    `pairs.csv` when write_csv) in the descore-plugin pair format, with CoTs, per-dimension truth (scores_a /
    scores_b, for stage 2) and the slice tag. Returns the path of pairs.jsonl.

    crf: x264 quality of the mp4s; 10 (near-lossless, about 3 KB per default clip) is this project's choice.
    transform: None, or a function from a batch of rendered clips (N, T, 3, H, W) uint8 to what is written instead,
        the same shape and dtype, called on TRANSFORM_CHUNK clips at a time in pair order (a then b);
        recipes/train_demo_judge.py passes the world generator's VAE (the judge then learns on what that generator
        can draw). Labels and CoTs stay those of the rendered clips.
    The other arguments are those of `sample_pairs`.
    """
    out_dir = Path(out_dir)
    specs = sample_pairs(
        num_pairs,
        seed=seed,
        defects=defects,
        tie_rate=tie_rate,
        mild_rate=mild_rate,
        shared_defect_rate=shared_defect_rate,
        world=world,
    )
    width = max(5, len(str(num_pairs - 1)))
    transformed = None
    if transform is not None:  # batched calls (a VAE is slow one clip at a time), a chunk of clips in memory at once
        transformed = _transformed_clips(
            [clip for spec in specs for clip in (spec.clip_a, spec.clip_b)], world, transform
        )
    pairs = []
    for index, spec in enumerate(tqdm(specs, desc="writing synthetic pairs", disable=not progress)):
        paths = []
        for side, clip in (("a", spec.clip_a), ("b", spec.clip_b)):
            path = out_dir / "videos" / f"{index:0{width}d}_{side}.mp4"
            frames = render_clip(clip, world) if transformed is None else next(transformed)
            write_video(path, frames, world.fps, crf=crf)
            paths.append(str(path))
        pairs.append(
            Pair(
                video_a=paths[0],
                video_b=paths[1],
                prompt=spec.prompt,
                label=spec.label,
                cot_a=write_cot(spec.clip_a),
                cot_b=write_cot(spec.clip_b),
                scores_a=spec.clip_a.scores,
                scores_b=spec.clip_b.scores,
                slice=spec.slice,
            )
        )
    jsonl = save_pairs(out_dir / "pairs.jsonl", pairs)
    if write_csv:
        save_pairs(out_dir / "pairs.csv", pairs)
    return jsonl


def vocabulary_texts(world: WorldConfig = WorldConfig()) -> list[str]:
    """Representative texts covering every word the world writes, for training an in-process tokenizer:
    every prompt, a CoT for every defect kind and severity, and the answer block of every truth combination."""
    texts = []
    scenes = [
        Scene(colour, shape, direction, background)
        for colour in world.colours
        for shape in world.shapes
        for direction in world.directions
        for background in world.backgrounds
    ]
    texts.extend(scene.prompt for scene in scenes)
    rng = np.random.default_rng(0)
    clean = {name: 2 for name in DIMENSIONS}
    index = 0
    for name in DIMENSIONS:
        for severity in (2, 1, 0):
            scene = scenes[index % len(scenes)]
            index += 7
            try:
                texts.append(write_cot(make_clip(scene, {**clean, name: severity}, rng, world)))
            except ValueError:  # this world has a single option for the defect (e.g. one shape)
                continue
    for motion in ("jump", "reverse"):  # both dynamics failures, whichever make_clip drew above
        scene = scenes[0]
        clip = Clip(scene, scene.colour, scene.shape, motion, "steady", scene.background, None, "steady", seed=0)
        texts.append(write_cot(clip))
    for combination in range(3 ** len(DIMENSIONS)):
        digits = [(combination // 3**position) % 3 for position in range(len(DIMENSIONS))]
        scores = dict(zip(DIMENSIONS, digits))
        texts.append(format_answer(scores, overall_score(scores)))
    na_scores = {**clean, "camera": "N/A"}
    texts.append(format_answer(na_scores, overall_score(na_scores)))
    return texts
