"""Held-out evaluation (`descore_plugin.evaluation.preference`, `recipes/eval_rm.py`) on the tiny model and synthetic pairs."""

import csv
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from helpers.run import run_python

from descore_plugin import DeScoreReward
from descore_plugin.data.pairs import Pair, load_pairs
from descore_plugin.evaluation.metrics import accuracy_by_slice, accuracy_with_ties, accuracy_without_ties
from descore_plugin.evaluation.preference import CSV_COLUMNS, evaluate_pairs, write_evaluation
from descore_plugin.testing.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 synthetic pairs (8 videos), written to disk like a real pair file."""
    return write_dataset(tmp_path_factory.mktemp("synthetic"), num_pairs=4, seed=0, progress=False)


@pytest.fixture(scope="module")
def pairs(dataset):
    """The 4 synthetic pairs, plus pairs that reuse their videos:
    - pair 0 again with A and B swapped (same two videos and prompt: nothing new to score);
    - pair 1's videos judged against another prompt, a human tie (two new judgements);
    - pair 3's videos under a third prompt, labelled invalid (left out, so never scored)."""
    loaded = load_pairs(dataset)
    first, second, fourth = loaded[0], loaded[1], loaded[3]
    return loaded + [
        Pair(first.video_b, first.video_a, first.prompt, {"A": "B", "B": "A"}[first.label]),
        Pair(second.video_a, second.video_b, "a yellow circle moving up on a grey background", "tie"),
        Pair(fourth.video_a, fourth.video_b, "a red square moving left on a light background", "invalid"),
    ]


def spy_on_score(model, monkeypatch) -> list:
    """Record the (path, prompt) of every video `model.score` is asked to score (decoded videos carry their path as
    `name`: evaluation streams them through the loader)."""
    calls = []
    original = model.score

    def score(videos, prompts, **kwargs):
        calls.extend((getattr(video, "name", video), prompt) for video, prompt in zip(videos, prompts))
        return original(videos, prompts, **kwargs)

    monkeypatch.setattr(model, "score", score)
    return calls


def test_each_unique_video_is_scored_once_and_margins_are_reward_differences(model, pairs, monkeypatch):
    calls = spy_on_score(model, monkeypatch)
    result = evaluate_pairs(model, pairs, think=False, batch_size=3, progress=False)

    expected = {(p.video_a, p.prompt) for p in pairs[:6]} | {(p.video_b, p.prompt) for p in pairs[:6]}
    assert len(expected) == 10  # 8 synthetic videos + pair 1's two videos under the other prompt
    assert Counter(calls) == Counter(expected)  # each exactly once, the invalid pair's judgements never

    monkeypatch.undo()
    reference = {key: model.score([key[0]], [key[1]], think=False).rewards[0].item() for key in expected}
    kept = pairs[:6]
    assert len(result["rows"]) == len(kept) and len(result["margins"]) == len(kept)
    for pair, row, margin in zip(kept, result["rows"], result["margins"]):
        assert (row["video_a"], row["video_b"], row["prompt"], row["label"]) == (
            pair.video_a,
            pair.video_b,
            pair.prompt,
            pair.label,
        )
        assert row["reward_a"] == pytest.approx(reference[(pair.video_a, pair.prompt)], abs=1e-5)
        assert row["reward_b"] == pytest.approx(reference[(pair.video_b, pair.prompt)], abs=1e-5)
        assert margin == row["margin"] == row["reward_a"] - row["reward_b"]
        assert row["cot_a"] is None and row["cot_b"] is None  # think=False writes no CoT
    # The swapped copy of pair 0 reuses the same two scores: its margin is exactly the negative.
    assert result["margins"][4] == -result["margins"][0]
    # The same files under another prompt are another judgement, with other rewards.
    assert result["rows"][5]["reward_a"] != result["rows"][1]["reward_a"]


def test_accuracies_and_counts(model, pairs):
    result = evaluate_pairs(model, pairs, think=False, progress=False)
    margins, labels = result["margins"], [row["label"] for row in result["rows"]]
    assert labels == [p.label for p in pairs[:6]] and labels[5] == "tie"
    assert result["accuracy_with_ties"] == accuracy_with_ties(margins, labels)
    assert result["accuracy_without_ties"] == accuracy_without_ties(margins, labels)
    assert (result["num_pairs"], result["num_pairs_without_ties"], result["num_pairs_invalid"]) == (6, 5, 1)
    assert result["num_videos_scored"] == 10 and result["think"] is False
    slices = [p.slice or "untagged" for p in pairs[:6]]
    assert result["accuracy_without_ties_by_slice"] == accuracy_by_slice(margins, labels, slices)
    assert "untagged" in result["accuracy_without_ties_by_slice"] and "all" in result["accuracy_without_ties_by_slice"]


def test_only_ties_and_only_invalid(model, pairs):
    ties = [Pair(p.video_a, p.video_b, p.prompt, "tie") for p in pairs[:2]]
    result = evaluate_pairs(model, ties, think=False, progress=False)
    assert result["accuracy_without_ties"] is None and result["num_pairs_without_ties"] == 0
    assert "accuracy_without_ties_by_slice" not in result
    invalid = [Pair(p.video_a, p.video_b, p.prompt, "invalid") for p in pairs[:2]]
    with pytest.raises(ValueError, match="all 2 pairs are labelled 'invalid'"):
        evaluate_pairs(model, invalid, think=False, progress=False)


def test_evaluation_restores_training_mode(model, pairs):
    model.train()
    try:
        evaluate_pairs(model, pairs[:1], think=False, progress=False)
        assert model.training and model.backbone.training
    finally:
        model.eval()


def test_write_evaluation(model, pairs, tmp_path):
    result = evaluate_pairs(model, pairs, think=False, progress=False)
    accuracy_path, csv_path = write_evaluation(result, tmp_path / "eval")
    summary = json.loads(accuracy_path.read_text())
    assert {"accuracy_with_ties", "accuracy_without_ties", "num_pairs", "num_pairs_without_ties"} <= set(summary)
    assert summary["accuracy_with_ties"] == result["accuracy_with_ties"]
    assert summary["accuracy_without_ties_by_slice"] == result["accuracy_without_ties_by_slice"]
    assert "margins" not in summary and "rows" not in summary
    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6 and tuple(rows[0]) == CSV_COLUMNS
    for row, expected in zip(rows, result["rows"]):
        assert float(row["margin"]) == expected["margin"]  # csv writes repr(float): exact round trip
        assert float(row["reward_a"]) - float(row["reward_b"]) == pytest.approx(float(row["margin"]), abs=1e-12)
        assert row["cot_a"] == row["cot_b"] == ""
        assert row["label"] == expected["label"]


def test_recipe_on_a_genai_bench_file_with_think(dataset, tiny_dirs, tmp_path):
    """GenAI-Bench columns (vote_type; tievote and bothbad_vote are ties), relative paths, think=True."""
    pairs = load_pairs(dataset)
    folder = Path(dataset).parent
    rows = [
        {
            "left_video": os.path.relpath(pairs[0].video_a, folder),
            "right_video": os.path.relpath(pairs[0].video_b, folder),
            "prompt": pairs[0].prompt,
            "vote_type": "leftvote",
        },
        {
            "left_video": os.path.relpath(pairs[0].video_b, folder),
            "right_video": os.path.relpath(pairs[0].video_a, folder),
            "prompt": pairs[0].prompt,
            "vote_type": "rightvote",
        },
        {
            "left_video": os.path.relpath(pairs[1].video_a, folder),
            "right_video": os.path.relpath(pairs[1].video_b, folder),
            "prompt": pairs[1].prompt,
            "vote_type": "bothbad_vote",
        },
    ]
    genai = folder / "genai.csv"
    with open(genai, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "eval"
    run = run_python(
        [
            ROOT / "recipes" / "eval_rm.py",
            str(genai),
            "--model",
            str(tiny_dirs["qwen2_5_vl"]),
            "--output-dir",
            str(out),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "2",
        ]
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "accuracy.json").read_text())
    assert (summary["num_pairs"], summary["num_pairs_without_ties"], summary["num_videos_scored"]) == (3, 2, 4)
    assert summary["think"] is True and "accuracy_without_ties_by_slice" not in summary
    with open(out / "pairs_scored.csv", newline="") as file:
        scored = list(csv.DictReader(file))
    assert [row["label"] for row in scored] == ["A", "B", "tie"]
    # Row 1 is row 0 mirrored: the same two judgements (rewards and CoTs), scored once.
    assert (scored[1]["reward_a"], scored[1]["cot_a"]) == (scored[0]["reward_b"], scored[0]["cot_b"])
    assert float(scored[1]["margin"]) == -float(scored[0]["margin"])
    # The labels agree with the margins: the two mirrored non-tie pairs are both right or both wrong.
    assert summary["accuracy_without_ties"] in (0.0, 1.0)


def test_recipe_reports_a_bad_pair_file(tiny_dirs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"video_a": "a.mp4", "video_b": "b.mp4", "prompt": "x", "label": "C"}) + "\n")
    run = run_python(
        [
            ROOT / "recipes" / "eval_rm.py",
            str(bad),
            "--model",
            str(tiny_dirs["qwen2_5_vl"]),
            "--output-dir",
            str(tmp_path / "eval"),
            "--no-think",
        ]
    )
    assert run.returncode == 2 and "bad.jsonl, line 1, field 'label'" in run.stderr
    assert not (tmp_path / "eval").exists()
