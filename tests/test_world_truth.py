"""The world-truth measure (descore_plugin/evaluation/world_truth.py) read back on rendered world clips whose truth
is known, clean and degraded the way a small generator degrades them (blur, colour bleed, low resolution); the
VBench-like columns and the world:truth reward on videos with known defects."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from descore_plugin.evaluation import world_truth
from descore_plugin.modeling.prompt import DIMENSIONS
from descore_plugin.rewards import reward_set
from descore_plugin.rewards.contract import RewardError
from descore_plugin.testing.synthetic import Clip, Scene, WorldConfig, make_clip, render_clip, render_clips

GENERATOR_WORLD = WorldConfig(num_frames=9, height=32, width=32, object_size=10, speed=2)
"""The world recipes/world_wan draws (descore_plugin/testing/world_wan.py: 9 frames of 32x32, a 10 px shape)."""


def random_clips(count: int, seed: int, world: WorldConfig, defect_rate: float = 0.35) -> list[Clip]:
    """Clips of random scenes; each dimension is defective (mild or failure) with probability defect_rate."""
    clips = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        scene = Scene(
            *(
                options[int(rng.integers(len(options)))]
                for options in (world.colours, world.shapes, world.directions, world.backgrounds)
            )
        )
        scores = {name: 2 if rng.random() > defect_rate else int(rng.integers(2)) for name in DIMENSIONS}
        clips.append(make_clip(scene, scores, rng, world))
    return clips


def gaussian_blur(videos: np.ndarray, sigma: float) -> np.ndarray:
    """(N, T, 3, H, W) uint8 -> blurred, edges replicated."""
    x = torch.tensor(videos, dtype=torch.float32)
    radius = int(3 * sigma + 1)
    kernel = torch.exp(-(torch.arange(-radius, radius + 1).float() ** 2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    n, t, c, h, w = x.shape
    y = torch.nn.functional.pad(x.reshape(-1, 1, h, w), (radius,) * 4, mode="replicate")
    y = torch.nn.functional.conv2d(torch.nn.functional.conv2d(y, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return y.reshape(n, t, c, h, w).clamp(0, 255).round().to(torch.uint8).numpy()


def colour_bleed(videos: np.ndarray, amount: float = 0.5) -> np.ndarray:
    """Chroma bleeding: each pixel's colour (not its brightness) mixed with its 7x7 neighbourhood's."""
    x = torch.tensor(videos, dtype=torch.float32)
    n, t, c, h, w = x.shape
    local = torch.nn.functional.avg_pool2d(x.reshape(-1, c, h, w), 7, 1, 3, count_include_pad=False).reshape(x.shape)
    luma, local_luma = x.mean(2, keepdim=True), local.mean(2, keepdim=True)
    y = luma + (1 - amount) * (x - luma) + amount * (local - local_luma)
    return y.clamp(0, 255).round().to(torch.uint8).numpy()


def low_resolution(videos: np.ndarray, factor: int = 2) -> np.ndarray:
    """Averaged down by `factor`, bilinear back up."""
    x = torch.tensor(videos, dtype=torch.float32)
    n, t, c, h, w = x.shape
    y = torch.nn.functional.avg_pool2d(x.reshape(-1, c, h, w), factor)
    y = torch.nn.functional.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    return y.reshape(n, t, c, h, w).clamp(0, 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize(
    "world,variants",
    [
        (GENERATOR_WORLD, ("clean", "blur", "bleed", "low_resolution")),
        (WorldConfig(), ("clean", "blur")),
    ],
    ids=["generator_world", "judge_world"],
)
def test_recovers_every_attribute_of_rendered_clips(world, variants):
    clips = random_clips(120, seed=0, world=world)
    videos = render_clips(clips, world)
    degrade = {
        "clean": lambda v: v,
        "blur": lambda v: gaussian_blur(v, 0.8),
        "bleed": colour_bleed,
        "low_resolution": low_resolution,
    }
    unobservable = sum(bool(world_truth.expected_reading(clip, world)["unobservable"]) for clip in clips)
    assert unobservable < 0.35 * len(clips)  # the validation is not hollowed out by what it excuses
    for variant in variants:
        figures = world_truth.recovery(clips, degrade[variant](videos), world)
        assert figures["every"] >= 0.95, (variant, figures)
        for name in world_truth.ATTRIBUTES:
            assert figures[name] >= 0.95, (variant, name, figures)


def test_clean_clips_read_exactly():
    world = GENERATOR_WORLD
    scene = Scene("blue", "circle", "up", "gradient")
    clean = {name: 2 for name in DIMENSIONS}
    clip = make_clip(scene, clean, np.random.default_rng(0), world)
    reading = world_truth.read_videos(render_clip(clip, world), world)[0]
    assert (reading.colour, reading.shape, reading.direction, reading.motion, reading.dynamic) == (
        "blue",
        "circle",
        "up",
        "smooth",
        True,
    )
    assert (reading.background, reading.second_background, reading.light, reading.camera) == (
        "gradient",
        None,
        "steady",
        "steady",
    )
    assert all(world_truth.as_asked(reading, scene).values())

    flicker = Clip(scene, "red", "square", "reverse", "steady", "dark", "light", "flicker", seed=3)
    reading = world_truth.read_videos(render_clip(flicker, world), world)[0]
    assert (
        reading.colour,
        reading.shape,
        reading.direction,
        reading.background,
        reading.second_background,
        reading.light,
    ) == ("red", "square", "down", "dark", "light", "flicker")
    checks = world_truth.as_asked(reading, scene)
    assert not any(checks[name] for name in ("colour", "shape", "direction", "background", "light", "flicker_free"))


def test_static_and_empty_videos():
    world = GENERATOR_WORLD
    clip = make_clip(
        Scene("green", "square", "right", "grey"), {name: 2 for name in DIMENSIONS}, np.random.default_rng(1), world
    )
    video = render_clip(clip, world)
    static = np.repeat(video[:1], world.num_frames, axis=0)  # the first frame held
    empty = np.broadcast_to(video[:, :, :2, :2].mean(axis=(2, 3), keepdims=True).astype(np.uint8), video.shape)
    moving, frozen, blank = world_truth.read_videos(np.stack([video, static, empty]), world)
    assert moving.dynamic and moving.direction == "right"
    assert (frozen.dynamic, frozen.motion, frozen.direction, frozen.colour) == (False, "static", None, "green")
    assert (blank.dynamic, blank.motion, blank.colour, blank.shape, blank.background) == (
        False,
        "none",
        None,
        None,
        "grey",
    )


def test_columns_and_reward_on_known_defects():
    world = GENERATOR_WORLD
    scene = Scene("yellow", "square", "left", "light")
    clean = {name: 2 for name in DIMENSIONS}
    rng = np.random.default_rng(5)
    clips = [
        make_clip(scene, clean, rng, world),
        make_clip(scene, clean, rng, world),
        make_clip(scene, {**clean, "subject": 0}, rng, world),  # another colour
        make_clip(scene, {**clean, "style": 0}, rng, world),
    ]  # flicker
    videos = torch.tensor(render_clips(clips, world)).float() / 255  # as the pipeline returns them
    prompts = [scene.prompt] * 4
    columns = world_truth.vbench_columns(videos, prompts, world)
    assert columns["num_videos"] == 4
    expected = {
        "subject": 0.75,
        "colour": 0.75,
        "dynamics": 1.0,
        "direction": 1.0,
        "background": 1.0,
        "temporal_flicker": 0.75,
        "camera_steadiness": 1.0,
        "dynamic_degree": 1.0,
        "all_as_asked": 0.5,
    }
    for column, value in expected.items():
        assert columns[column]["mean"] == value, column
        assert columns[column]["stderr"] == pytest.approx(math.sqrt(value * (1 - value) / 4))

    rewards = reward_set(["world:truth"])
    scores = rewards(videos, prompts)["world:truth"]
    checks = len(world_truth.CHECKS)
    assert scores.tolist() == pytest.approx([1.0, 1.0, (checks - 1) / checks, (checks - 1) / checks])
    with pytest.raises(RewardError, match=r"prompts\[1\].*not a world prompt"):
        rewards(videos[:2], [scene.prompt, "a cat on a mat"])
    with pytest.raises(RewardError, match="float video tensor"):
        rewards(["a.mp4"], [scene.prompt])


def test_parse_prompt():
    assert world_truth.parse_prompt("a red circle moving down on a gradient background") == Scene(
        "red", "circle", "down", "gradient"
    )
    with pytest.raises(world_truth.WorldPromptError, match="unknown colour 'purple'"):
        world_truth.parse_prompt("a purple circle moving down on a gradient background")


SHIPPED_WORLD_WAN = Path(__file__).parents[1] / "recipes" / "world_wan"


@pytest.mark.skipif(
    not (SHIPPED_WORLD_WAN / "vae").is_dir(),
    reason="recipes/world_wan/ (the shipped world generator, `make world-wan`) is not in this checkout",
)
@pytest.mark.xfail(
    reason="the shipped world VAE misses its target: 24.8 dB, every attribute kept in 0.50 of these 64 "
    "reconstructions (colour 1.00, direction 0.98, motion 0.95, camera 0.94, light 0.81, shape 0.69; target 0.95): "
    "it blurs a 10-pixel square towards a disc and softens flicker (issue 20, open)",
    strict=False,
)
def test_recovers_the_attributes_through_the_shipped_vae():
    """Rendered clips encoded and decoded by the shipped generator's VAE (plain diffusers AutoencoderKLWan): the
    measure still reads every observable attribute of >= 95% of them; what it reads on generated videos is then
    what the generator drew, not what its decoder smeared."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(SHIPPED_WORLD_WAN / "vae").eval()
    clips = random_clips(64, seed=1, world=GENERATOR_WORLD)
    videos = render_clips(clips, GENERATOR_WORLD)
    with torch.no_grad():
        pixels = torch.tensor(videos).float().div(127.5).sub(1).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W) in [-1, 1]
        decoded = torch.cat(
            [vae.decode(vae.encode(pixels[i : i + 16]).latent_dist.mode()).sample for i in range(0, len(pixels), 16)]
        )
    reconstructions = decoded.permute(0, 2, 1, 3, 4).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    figures = world_truth.recovery(clips, reconstructions, GENERATOR_WORLD)
    assert figures["every"] >= 0.95, figures


def test_annotate_writes_a_rendered_clips_reading_as_that_clips_own_cot():
    """The annotator of generated videos: where every attribute of a rendered clip is read right, the reading written
    down is exactly the CoT and the scores the world's annotator gave that clip."""
    from descore_plugin.testing.synthetic import write_cot

    clips = random_clips(60, seed=5, world=GENERATOR_WORLD)
    readings = world_truth.read_videos(render_clips(clips, GENERATOR_WORLD), GENERATOR_WORLD)
    fields = ("colour", "shape", "direction", "motion", "background", "second_background", "light", "camera")
    compared = set()
    for clip, reading in zip(clips, readings):
        expected = world_truth.expected_reading(clip, GENERATOR_WORLD)
        if expected["unobservable"] or any(getattr(reading, name) != expected[name] for name in fields):
            continue
        assert world_truth.annotate(reading, clip.prompt) == (write_cot(clip), clip.scores), clip
        compared.add(clip.motion)
    assert compared == {"smooth", "stutter", "jump", "reverse"}  # every kind of motion was written down


def test_annotate_names_what_the_world_cot_has_no_clip_for():
    prompt = "a red square moving right on a dark background"
    steady = dict(background="dark", second_background=None, light="steady", camera="steady")
    sideways = world_truth.Reading("red", "square", "up", "smooth", True, **steady)
    cot, scores = world_truth.annotate(sideways, prompt)
    assert "dynamics moving up: 0 wrong direction;" in cot and scores["dynamics"] == 0 and scores["subject"] == 2
    still = world_truth.Reading("red", "square", None, "static", False, **steady)
    cot, scores = world_truth.annotate(still, prompt)
    assert "dynamics jumping around: 0 erratic jumps;" in cot and scores["dynamics"] == 0
    assert world_truth.annotate(world_truth.Reading(None, None, None, "none", False, **steady), prompt) is None
    with pytest.raises(world_truth.WorldPromptError):
        world_truth.annotate(sideways, "a red square")
