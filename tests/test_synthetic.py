import dataclasses
import itertools
import time

import numpy as np
import pytest

from descore_plugin.data.pairs import load_pairs
from descore_plugin.data.video import load_video
from descore_plugin.modeling.prompt import DIMENSIONS, parse_answer
from descore_plugin.testing.synthetic import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    Scene,
    WorldConfig,
    generate_pairs,
    make_clip,
    overall_score,
    render_clip,
    render_clips,
    sample_pairs,
    vocabulary_texts,
    write_cot,
    write_dataset,
)

CLEAN = {name: 2 for name in DIMENSIONS}
SCENE = Scene("red", "square", "right", "dark")


def clip_with(seed=0, scene=SCENE, world=WorldConfig(), **scores):
    return make_clip(scene, {**CLEAN, **scores}, np.random.default_rng(seed), world)


def shape_pixels(frames, colour):
    """(T, H, W) mask of pixels that have exactly the shape's colour."""
    return (frames == np.asarray(COLOURS[colour], dtype=np.uint8)[None, :, None, None]).all(axis=1)


def top_left(mask):
    """(T, 2) top-left corner (y, x) of the mask in each frame."""
    return np.array([[np.nonzero(frame.any(axis=1))[0][0], np.nonzero(frame.any(axis=0))[0][0]] for frame in mask])


# ---------------------------------------------------------------------------------------------------------------
# Overall score rules


def test_overall_score_bands_follow_the_interval_rules():
    assert overall_score(CLEAN) == 5.0
    assert overall_score({**CLEAN, "style": 0}) == 4.4
    assert overall_score({**CLEAN, "camera": 1, "environment": 0}) == 4.3
    assert overall_score({**CLEAN, "subject": 1}) == 3.9
    assert overall_score({**CLEAN, "subject": 1, "dynamics": 1}) == 3.6
    assert overall_score({**CLEAN, "dynamics": 0}) == 2.9
    assert overall_score({**CLEAN, "dynamics": 0, "subject": 1}) == 2.6
    assert overall_score({name: 0 for name in DIMENSIONS}) == 1.0
    assert overall_score({**CLEAN, "camera": "N/A"}) == 5.0
    for values in itertools.product((0, 1, 2), repeat=5):
        scores = dict(zip(DIMENSIONS, values))
        subject, dynamics = values[0], values[1]
        band = int(overall_score(scores))
        if subject == dynamics == 2:
            assert band == (5 if min(values[2:]) == 2 else 4)
        elif min(subject, dynamics) == 1:
            assert band == 3
        elif max(subject, dynamics) > 0:
            assert band == 2
        else:
            assert band == 1


def test_overall_score_is_monotone_in_every_dimension():
    combos = [dict(zip(DIMENSIONS, values)) for values in itertools.product((0, 1, 2), repeat=5)]
    overall = [overall_score(scores) for scores in combos]
    for (x, sx), (y, sy) in itertools.product(zip(combos, overall), repeat=2):
        if all(x[name] >= y[name] for name in DIMENSIONS):
            assert sx >= sy
            if x != y and sum(x[name] - y[name] for name in DIMENSIONS) == 1:
                assert sx > sy  # a single one-step defect always lowers the score


# ---------------------------------------------------------------------------------------------------------------
# Rendering: what is seen is what the truth says


def test_render_shape_dtype_and_determinism():
    clip = clip_with(seed=3, style=1, camera=0)
    frames = render_clip(clip)
    assert frames.shape == (8, 3, 56, 56) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, render_clip(clip))
    world = WorldConfig(num_frames=4, height=32, width=48, object_size=8, speed=3)
    assert render_clip(make_clip(SCENE, CLEAN, np.random.default_rng(0), world), world).shape == (4, 3, 32, 48)


def test_clean_clip_shows_the_prompted_colour_and_background_only():
    for seed in range(8):
        scene = Scene(
            list(COLOURS)[seed % 4], "square", list(DIRECTIONS)[seed % 4], ("dark", "light", "grey")[seed % 3]
        )
        frames = render_clip(clip_with(seed, scene))
        background = np.asarray(BACKGROUNDS[scene.background][0], dtype=np.uint8)
        is_background = (frames == background[None, :, None, None]).all(axis=1)
        is_shape = shape_pixels(frames, scene.colour)
        assert (is_background | is_shape).all()
        assert (is_shape.sum(axis=(1, 2)) == 14 * 14).all()  # the whole square is in view in every frame


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_smooth_motion_moves_speed_pixels_per_frame_in_the_prompted_direction(direction):
    scene = Scene("blue", "square", direction, "grey")
    corners = top_left(shape_pixels(render_clip(clip_with(1, scene)), "blue"))
    np.testing.assert_array_equal(np.diff(corners, axis=0), np.tile(4 * np.array(DIRECTIONS[direction]), (7, 1)))


def test_broken_motion_kinds():
    seen = set()
    for seed in range(12):
        clip = clip_with(seed, dynamics=0)
        seen.add(clip.motion)
        steps = np.diff(top_left(shape_pixels(render_clip(clip), "red")), axis=0)
        if clip.motion == "reverse":
            np.testing.assert_array_equal(steps, np.tile([0, -4], (7, 1)))
        else:
            assert not (steps == steps[0]).all()  # jumping is not a steady motion
        stutter = clip_with(seed, dynamics=1)
        steps = np.diff(top_left(shape_pixels(render_clip(stutter), "red")), axis=0)
        assert (steps[:, 0] == 0).all() and (steps[:, 1] >= 0).all() and (steps[:, 1] % 4 == 0).all()
        assert (steps[:, 1] == 0).any() and steps[:, 1].sum() == 28  # freezes, yet covers the full path
    assert seen == {"jump", "reverse"}


@pytest.mark.parametrize("camera, low, high", [(1, 1, 2), (0, 3, 6)])
def test_shaky_camera_shifts_the_whole_frame(camera, low, high):
    scene = Scene("green", "circle", "down", "gradient")
    shaky = clip_with(4, scene, camera=camera)
    steady = dataclasses.replace(shaky, camera="steady")
    shaky_frames, steady_frames = render_clip(shaky), render_clip(steady)
    for t in range(8):
        shifts = []
        for dy, dx in itertools.product(range(-6, 7), repeat=2):
            a = shaky_frames[t][:, max(0, -dy) : 56 - max(0, dy), max(0, -dx) : 56 - max(0, dx)]
            b = steady_frames[t][:, max(0, dy) : 56 + min(0, dy), max(0, dx) : 56 + min(0, dx)]
            if np.array_equal(a, b):
                shifts.append((dy, dx))
        assert (0, 0) not in shifts
        assert any(low <= abs(dy) <= high and low <= abs(dx) <= high for dy, dx in shifts)


def test_wrong_and_partly_wrong_background():
    solid = WorldConfig(backgrounds=("dark", "light", "grey"))  # uniform colours: every pixel is known
    wrong = clip_with(5, world=solid, environment=0)
    assert wrong.background != "dark" and wrong.scores["environment"] == 0
    frames = render_clip(wrong)
    np.testing.assert_array_equal(frames[:, :, 0, 0], np.tile(BACKGROUNDS[wrong.background][0], (8, 1)))
    partly = clip_with(5, world=solid, environment=1)
    frames = render_clip(partly)
    assert partly.background == "dark" and partly.second_background not in (None, "dark")
    np.testing.assert_array_equal(frames[:, :, 0, 0], np.tile(BACKGROUNDS["dark"][0], (8, 1)))
    np.testing.assert_array_equal(frames[:, :, 0, 55], np.tile(BACKGROUNDS[partly.second_background][0], (8, 1)))


def test_flicker_and_noise():
    scene = Scene("yellow", "square", "up", "grey")  # mid-grey: no clipping for the brightness offsets
    clean_frames = render_clip(clip_with(6, scene)).astype(np.float64)
    flicker = render_clip(dataclasses.replace(clip_with(6, scene), light="flicker")).astype(np.float64)
    offset = (flicker - clean_frames)[:, :, 0, 0].mean(axis=1)  # one background pixel, per frame
    assert ((np.abs(offset) >= 44.5) & (np.abs(offset) <= 80.5)).all()
    assert (np.sign(offset[1:]) != np.sign(offset[:-1])).all()  # a brightness jump at every frame
    noise = render_clip(dataclasses.replace(clip_with(6, scene), light="noise")).astype(np.float64)
    assert 15 < (noise - clean_frames).std() < 21


def test_subject_defects():
    wrong_colour = clip_with(7, subject=0)
    assert wrong_colour.colour != "red" and wrong_colour.shape == "square"
    assert shape_pixels(render_clip(wrong_colour), wrong_colour.colour).sum() == 8 * 14 * 14
    assert shape_pixels(render_clip(wrong_colour), "red").sum() == 0
    wrong_shape = clip_with(7, subject=1)
    assert wrong_shape.colour == "red" and wrong_shape.shape == "circle" and wrong_shape.scores["subject"] == 1
    assert 120 < shape_pixels(render_clip(wrong_shape), "red")[0].sum() < 14 * 14  # a disc, not a square


# ---------------------------------------------------------------------------------------------------------------
# CoT


def test_cot_states_what_is_seen_and_its_answer_parses_to_the_truth():
    clip = clip_with(8, subject=0)
    cot = write_cot(clip)
    expectation, evidence, answer = cot.split("\n")
    assert expectation == "Expect: a red square moving right on a dark background, steady camera, steady light."
    assert evidence == (
        f"Seen: subject a {clip.colour} square, red square asked: 0 wrong colour; dynamics moving right: 2; "
        "camera steady camera: 2; environment dark background: 2; style steady light: 2."
    )
    assert answer == (
        '<answer>{"dimensional_scores": {"subject": 0, "dynamics": 2, "camera": 2, "environment": 2, "style": 2}, '
        '"overall_score": 2.9}</answer>'
    )
    batch = generate_pairs(200, seed=1, tie_rate=0.1, mild_rate=0.5, shared_defect_rate=0.5)
    for cot, scores, overall in zip(
        batch.cots_a + batch.cots_b, batch.scores_a + batch.scores_b, [*batch.overall_a, *batch.overall_b]
    ):
        parsed = parse_answer(cot)
        assert (
            parsed.error is None
            and parsed.dimensional_scores == scores
            and parsed.overall_score == pytest.approx(overall)
        )
        assert len(cot.split("<answer>")[0].split()) < 60


# ---------------------------------------------------------------------------------------------------------------
# Pairs


def test_pairs_are_seeded_and_prefix_stable():
    assert sample_pairs(5, seed=3) == sample_pairs(12, seed=3)[:5]
    assert sample_pairs(5, seed=3) != sample_pairs(5, seed=4)
    first, second = generate_pairs(6, seed=2), generate_pairs(6, seed=2)
    np.testing.assert_array_equal(first.frames_a, second.frames_a)
    np.testing.assert_array_equal(first.frames_b, second.frames_b)
    assert first.cots_a == second.cots_a and first.labels == second.labels


def test_pairs_differ_in_their_slice_only_and_labels_follow_the_overall_score():
    specs = sample_pairs(600, seed=0, tie_rate=0.2, mild_rate=0.3, shared_defect_rate=0.3)
    for spec in specs:
        a, b = spec.clip_a.scores, spec.clip_b.scores
        assert spec.clip_a.prompt == spec.clip_b.prompt
        differing = [name for name in DIMENSIONS if a[name] != b[name]]
        if spec.slice == "none":
            assert differing == [] and spec.label == "tie"
        else:
            assert differing == [spec.slice]
            assert spec.label == ("A" if spec.clip_a.overall > spec.clip_b.overall else "B")
    labels = [spec.label for spec in specs]
    assert 0.12 < labels.count("tie") / 600 < 0.28
    assert abs(labels.count("A") - labels.count("B")) < 80
    assert {spec.slice for spec in specs} == {*DIMENSIONS, "none"}
    values = {value for spec in specs for value in spec.clip_a.scores.values()}
    assert values == {0, 1, 2}


def test_defect_selection_and_failure_only_default():
    specs = sample_pairs(200, seed=1, defects=("subject", "style"))
    assert {spec.slice for spec in specs} == {"subject", "style"}
    for spec in specs:
        for clip in (spec.clip_a, spec.clip_b):
            assert set(clip.scores.values()) <= {0, 2}
            assert clip.scores["dynamics"] == clip.scores["camera"] == clip.scores["environment"] == 2


def test_in_memory_batch_matches_the_specs():
    batch = generate_pairs(10, seed=5, mild_rate=0.5)
    assert batch.frames_a.shape == (10, 8, 3, 56, 56) and batch.frames_a.dtype == np.uint8
    assert len(batch) == 10
    for index, spec in enumerate(batch.specs):
        np.testing.assert_array_equal(batch.frames_b[index], render_clip(spec.clip_b))
        assert batch.prompts[index] == spec.prompt and batch.slices[index] == spec.slice
        assert batch.overall_a[index] == np.float32(spec.clip_a.overall)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"defects = \['subjekt'\]"):
        sample_pairs(2, defects=("subjekt",))
    with pytest.raises(ValueError, match="tie_rate = 1.5"):
        sample_pairs(2, tie_rate=1.5)
    with pytest.raises(ValueError, match="only one shape"):
        sample_pairs(50, defects=("subject",), mild_rate=1.0, world=WorldConfig(shapes=("square",)))
    with pytest.raises(ValueError, match="travels 70 px"):
        WorldConfig(speed=10)
    with pytest.raises(ValueError, match=r"WorldConfig.colours"):
        WorldConfig(colours=("purple",))


def test_rendering_is_fast():
    clips = [spec.clip_a for spec in sample_pairs(1000, seed=0, mild_rate=0.3, shared_defect_rate=0.3)]
    start = time.perf_counter()
    render_clips(clips)
    assert time.perf_counter() - start < 10.0  # ~0.6 s alone on one core; generous for a shared machine


# ---------------------------------------------------------------------------------------------------------------
# Files and vocabulary


def test_write_dataset_round_trips_through_the_pair_format(tmp_path):
    jsonl = write_dataset(tmp_path / "world", 6, seed=9, tie_rate=0.3, mild_rate=0.3, write_csv=True, progress=False)
    assert jsonl == tmp_path / "world" / "pairs.jsonl"
    pairs = load_pairs(jsonl, require_scores=True)
    assert pairs == [
        dataclasses.replace(pair, origin=pairs[i].origin)
        for i, pair in enumerate(load_pairs(tmp_path / "world" / "pairs.csv"))
    ]
    specs = sample_pairs(6, seed=9, tie_rate=0.3, mild_rate=0.3)
    for pair, spec in zip(pairs, specs):
        assert pair.label == spec.label and pair.slice == spec.slice and pair.prompt == spec.prompt
        assert pair.scores_a == spec.clip_a.scores and pair.cot_b == write_cot(spec.clip_b)
        decoded = load_video(pair.video_a).frames.numpy().astype(np.int64)
        assert np.abs(decoded - render_clip(spec.clip_a)).mean() < 6  # near-lossless mp4
    assert '"video_a": "videos/00000_a.mp4"' in jsonl.read_text()  # relative: the folder can move


def test_write_dataset_writes_what_the_transform_makes_of_the_rendered_clips(tmp_path, monkeypatch):
    """`transform` (the judge recipe's VAE pass) gets the rendered clips in batches of TRANSFORM_CHUNK, in pair
    order (a then b), and the videos written are its output; the labels and CoTs stay those of the rendered clips."""
    from descore_plugin.testing import synthetic

    seen = []

    def negative(frames):
        seen.append(frames.shape)
        return 255 - frames

    monkeypatch.setattr(synthetic, "TRANSFORM_CHUNK", 4)
    jsonl = write_dataset(tmp_path / "neg", 3, seed=4, progress=False, transform=negative)
    clip_shape = render_clip(sample_pairs(1, seed=4)[0].clip_a).shape
    assert seen == [(4, *clip_shape), (2, *clip_shape)]  # six clips, four at a time
    for pair, spec in zip(load_pairs(jsonl, require_scores=True), sample_pairs(3, seed=4)):
        assert pair.cot_a == write_cot(spec.clip_a) and pair.label == spec.label
        for path, clip in ((pair.video_a, spec.clip_a), (pair.video_b, spec.clip_b)):
            decoded = load_video(path).frames.numpy().astype(np.int64)
            assert np.abs(decoded - (255 - render_clip(clip).astype(np.int64))).mean() < 6


def test_vocabulary_covers_every_word_the_world_writes():
    vocabulary = {word for text in vocabulary_texts() for word in text.split()}
    batch = generate_pairs(300, seed=11, tie_rate=0.1, mild_rate=0.5, shared_defect_rate=0.5)
    for text in batch.prompts + batch.cots_a + batch.cots_b:
        missing = [word for word in text.split() if word not in vocabulary]
        assert missing == [], (missing, text)
