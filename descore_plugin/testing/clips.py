"""The synthetic world's truth: what a prompt asks for (`Scene`), what one video shows (`Clip`), and the
ground-truth scores of the clip. Rendering, the CoT writer and the pair sets are in `testing/synthetic.py`.

A `Scene` is what the text prompt asks for ("a red square moving right on a dark background"). A `Clip` is what
one video actually shows; each departure from the scene is a defect on one of the five DeScore dimensions:

| dimension   | 2 (no defect)            | 1 (mild, `mild_rate`)             | 0 (failure)                               |
|-------------|--------------------------|-----------------------------------|-------------------------------------------|
| subject     | prompt's colour + shape  | right colour, other shape         | other colour                              |
| dynamics    | smooth, prompt direction | right direction, in stutters      | jumps around, or moves the opposite way   |
| camera      | steady                   | slight shake (1-2 px per frame)   | shake (3-6 px per frame)                  |
| environment | prompt's background      | right half shows another one      | another background                        |
| style       | steady light             | grainy noise                      | flicker (brightness jumps every frame)    |

The overall score follows the interval rules of the judge answer (see `overall_score`). Pairs share a prompt and
differ in one dimension (their `slice`), so accuracy can be sliced per defect: overall accuracy alone hides a reward
model that is blind to the prompt (a colour-blind model still scores ~0.9 overall).
"""

from dataclasses import dataclass

import numpy as np

from descore_plugin.modeling.prompt import DIMENSIONS, PRIMARY_DIMENSIONS

# RGB of each shape colour, and of each background (a gradient runs top to bottom between two colours).
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 210, 40)}
BACKGROUNDS = {
    "dark": ((25, 25, 35), (25, 25, 35)),
    "light": ((225, 225, 215), (225, 225, 215)),
    "grey": ((125, 125, 125), (125, 125, 125)),
    "gradient": ((30, 40, 90), (230, 200, 150)),
}
SHAPES = ("square", "circle")
DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx) per step
OPPOSITE = {"right": "left", "left": "right", "down": "up", "up": "down"}

_EDGE_MARGIN = 2  # pixels kept between the shape and the frame edge

_MOTION_SCORE = {"smooth": 2, "stutter": 1, "jump": 0, "reverse": 0}
_CAMERA_SCORE = {"steady": 2, "slight shake": 1, "shake": 0}
_LIGHT_SCORE = {"steady": 2, "noise": 1, "flicker": 0}


@dataclass(frozen=True)
class WorldConfig:
    """What the clips look like. Every default is this project's choice (sized for tiny CPU models)."""

    num_frames: int = 8  # frames per clip
    height: int = 56  # frame height in pixels (even: H.264 yuv420p)
    width: int = 56  # frame width in pixels (even)
    object_size: int = 14  # side of the square / diameter of the circle, pixels
    speed: int = 4  # pixels per frame of smooth motion
    fps: float = 8.0  # frame rate written into mp4 files (one second per default clip)
    colours: tuple = tuple(COLOURS)  # shape colours prompts may ask for (at least 2 for the subject defect)
    shapes: tuple = SHAPES  # shapes prompts may ask for (at least 2 for the mild subject defect)
    directions: tuple = tuple(DIRECTIONS)  # motion directions prompts may ask for
    backgrounds: tuple = tuple(BACKGROUNDS)  # backgrounds prompts may ask for (at least 2 for environment)

    def __post_init__(self):
        for name, chosen, known in (
            ("colours", self.colours, COLOURS),
            ("shapes", self.shapes, SHAPES),
            ("directions", self.directions, DIRECTIONS),
            ("backgrounds", self.backgrounds, BACKGROUNDS),
        ):
            unknown = [value for value in chosen if value not in known]
            if not chosen or unknown:
                raise ValueError(f"WorldConfig.{name}: {list(chosen)} must be a non-empty subset of {list(known)}")
        if self.num_frames < 2:
            raise ValueError(f"WorldConfig.num_frames = {self.num_frames}: motion needs at least 2 frames")
        travel = self.speed * (self.num_frames - 1)
        room = min(self.height, self.width) - self.object_size - 2 * _EDGE_MARGIN
        if self.speed < 1 or travel > room:
            raise ValueError(
                f"WorldConfig: a {self.object_size} px shape moving {self.speed} px/frame for {self.num_frames} frames "
                f"travels {travel} px but only {room} px fit in {self.height}x{self.width}; lower speed or object_size"
            )


@dataclass(frozen=True)
class Scene:
    """What the prompt asks for."""

    colour: str
    shape: str
    direction: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction} on a {self.background} background"


@dataclass(frozen=True)
class Clip:
    """What one video shows, next to the scene its prompt asks for; `seed` draws the nuisances (start position,
    shake offsets, noise) so that `render_clip` is a pure function of the clip."""

    scene: Scene
    colour: str  # colour shown
    shape: str  # shape shown
    motion: str  # "smooth", "stutter", "jump" or "reverse"
    camera: str  # "steady", "slight shake" or "shake"
    background: str  # background shown (the left half, when `second_background` is set)
    second_background: str | None  # mild environment defect: the right half shows this background
    light: str  # "steady", "noise" or "flicker"
    seed: int

    @property
    def prompt(self) -> str:
        return self.scene.prompt

    @property
    def scores(self) -> dict:
        """Ground-truth dimension scores (2 / 1 / 0), in DIMENSIONS order."""
        if self.colour != self.scene.colour:
            subject = 0
        elif self.shape != self.scene.shape:
            subject = 1
        else:
            subject = 2
        if self.background != self.scene.background:
            environment = 0
        elif self.second_background is not None:
            environment = 1
        else:
            environment = 2
        return {
            "subject": subject,
            "dynamics": _MOTION_SCORE[self.motion],
            "camera": _CAMERA_SCORE[self.camera],
            "environment": environment,
            "style": _LIGHT_SCORE[self.light],
        }

    @property
    def overall(self) -> float:
        return overall_score(self.scores)


def overall_score(scores: dict) -> float:
    """Overall score in [1, 5] from dimension scores, following the DeScore interval rules (arXiv 2605.05922,
    judge prompt): 5 = both primaries 2 and no flaws; 4.x = flaws only in secondary dimensions; 3.x = a primary
    is 1; 2.x = a primary is 0; 1.x = both primaries 0.

    The decimals are this project's rule (the paper leaves them to the judge): + 0.1 per secondary point (camera,
    environment, style; "N/A" counts as 2), + 0.3 when the other primary is perfect in the 3.x and 2.x bands. So
    every single-dimension defect lowers the score strictly, and a video that is better or equal in every
    dimension never scores lower.
    """
    first, second = (scores[name] for name in PRIMARY_DIMENSIONS)
    first, second = (2 if value == "N/A" else value for value in (first, second))
    secondary_names = [name for name in DIMENSIONS if name not in PRIMARY_DIMENSIONS]
    secondary = sum(2 if scores[name] == "N/A" else scores[name] for name in secondary_names)
    worst, best = min(first, second), max(first, second)
    if worst == 2:
        return 5.0 if secondary == 6 else round(4.0 + 0.1 * secondary, 2)
    if worst == 1:
        return round(3.0 + 0.3 * (best == 2) + 0.1 * secondary, 2)
    if best > 0:
        return round(2.0 + 0.3 * (best == 2) + 0.1 * secondary, 2)
    return round(1.0 + 0.1 * secondary, 2)


def make_clip(scene: Scene, scores: dict, rng: np.random.Generator, world: WorldConfig = WorldConfig()) -> Clip:
    """A clip of `scene` whose ground truth is `scores` (dimension -> 2 / 1 / 0); `rng` picks the failure kinds
    (which wrong colour, jump or reverse, ...) and the clip's nuisance seed."""
    for name in DIMENSIONS:
        if scores.get(name) not in (0, 1, 2):
            raise ValueError(f"scores['{name}'] = {scores.get(name)!r}: synthetic clips take 2, 1 or 0 per dimension")

    def other(options, value, what):
        choices = [option for option in options if option != value]
        if not choices:
            raise ValueError(f"WorldConfig has only one {what} ({value!r}), so the defect needs another one")
        return choices[int(rng.integers(len(choices)))]

    colour, shape = scene.colour, scene.shape
    if scores["subject"] == 0:
        colour = other(world.colours, scene.colour, "colour")
    elif scores["subject"] == 1:
        shape = other(world.shapes, scene.shape, "shape")
    motion = {2: "smooth", 1: "stutter", 0: ("jump", "reverse")[int(rng.integers(2))]}[scores["dynamics"]]
    camera = {2: "steady", 1: "slight shake", 0: "shake"}[scores["camera"]]
    background, second_background = scene.background, None
    if scores["environment"] == 0:
        background = other(world.backgrounds, scene.background, "background")
    elif scores["environment"] == 1:
        second_background = other(world.backgrounds, scene.background, "background")
    light = {2: "steady", 1: "noise", 0: "flicker"}[scores["style"]]
    return Clip(scene, colour, shape, motion, camera, background, second_background, light, int(rng.integers(2**31)))
