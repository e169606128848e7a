import csv
import json

import pytest

from descore_plugin.data.pairs import DataError, Pair, load_pairs, save_pairs

SCORES_A = {"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 2, "style": 0}
SCORES_B = {"subject": 0, "dynamics": 2, "camera": 2, "environment": 2, "style": 2}


@pytest.fixture
def folder(tmp_path):
    """A data folder with two (empty) video files; load_pairs only checks that they exist."""
    (tmp_path / "videos").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "videos" / name).write_bytes(b"")
    return tmp_path


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("extension", ["jsonl", "csv"])
def test_native_round_trip(folder, extension):
    pairs = [
        Pair(
            video_a=str(folder / "videos" / "a.mp4"),
            video_b=str(folder / "videos" / "b.mp4"),
            prompt="a red square, moving right",
            label="A",
            cot_a='Seen: red.\n<answer>{"x": 1}</answer>',
            cot_b=None,
            scores_a=SCORES_A,
            scores_b=SCORES_B,
            slice="subject",
            instruction="judge this",
        ),
        Pair(str(folder / "videos" / "b.mp4"), str(folder / "videos" / "a.mp4"), "p", "tie"),
        Pair(str(folder / "videos" / "b.mp4"), str(folder / "videos" / "a.mp4"), "p", "invalid"),
    ]
    path = save_pairs(folder / f"pairs.{extension}", pairs)
    assert "videos/a.mp4" in path.read_text() and str(folder) not in path.read_text()  # written relative
    loaded = load_pairs(path)
    row = "line" if extension == "jsonl" else "row"
    assert [pair.origin for pair in loaded] == [f"pairs.{extension}, {row} {i}" for i in (1, 2, 3)]
    for pair in loaded:
        pair.origin = ""
    assert loaded == pairs


def test_official_descore_csv(folder):
    answer = (
        "<answer>```json\n"
        + json.dumps({"video_1_scores": SCORES_A, "video_2_scores": SCORES_B, "verdict": "Video 2 is better"})
        + "\n```</answer>"
    )
    path = write_csv(
        folder / "official.csv",
        ["videos", "problem", "prompt", "CoT_A", "CoT_B", "GSB", "answer"],
        [
            ["['videos/a.mp4', 'videos/b.mp4']", "You are a judge.", "a cat", "cot a", "cot b", "B", answer],
            ['["videos/b.mp4", "videos/a.mp4"]', "You are a judge.", "a dog", "", "", "same", ""],
            ['["videos/b.mp4", "videos/a.mp4"]', "", "a dog", "", "", "invalid", ""],
            ['["videos/b.mp4", "videos/a.mp4"]', "", "a dog", "", "", "", answer],  # label from the verdict
        ],
    )
    first, second, third, fourth = load_pairs(path)
    assert first.video_a == str(folder / "videos" / "a.mp4") and first.video_b == str(folder / "videos" / "b.mp4")
    assert (first.prompt, first.instruction, first.cot_a, first.cot_b, first.label) == (
        "a cat",
        "You are a judge.",
        "cot a",
        "cot b",
        "B",
    )
    assert first.scores_a == SCORES_A and first.scores_b == SCORES_B
    assert second.label == "tie" and second.cot_a is None and second.scores_a is None
    assert third.label == "invalid"
    assert fourth.label == "B" and fourth.scores_b == SCORES_B


def test_official_stage2_jsonl_with_plain_json_answer(folder):
    answer = json.dumps({"video_1_scores": SCORES_A, "video_2_scores": SCORES_B, "result": "Both are the same"})
    path = write_jsonl(
        folder / "rl.jsonl",
        [{"videos": ["videos/a.mp4", "videos/b.mp4"], "problem": "judge", "prompt": "p", "answer": answer}],
    )
    (pair,) = load_pairs(path, require_scores=True)
    assert pair.label == "tie" and pair.scores_a == SCORES_A


def test_videoalign_csv(folder):
    path = write_csv(
        folder / "videogen.csv",
        ["path_A", "path_B", "A_model", "B_model", "prompt", "VQ", "MQ", "TA", "Overall", "fps_A", "num_frames_A"],
        [
            ["videos/a.mp4", "videos/b.mp4", "m1", "m2", "a cat", "A", "B", "same", "A", "8", "16"],
            ["videos/a.mp4", "videos/b.mp4", "m1", "m2", "a cat", "A", "B", "same", "B", "8", "16"],
            ["videos/a.mp4", "videos/b.mp4", "m1", "m2", "a cat", "A", "B", "A", "same", "8", "16"],
        ],
    )
    assert [pair.label for pair in load_pairs(path)] == ["A", "B", "tie"]


@pytest.mark.parametrize("extension", ["csv", "jsonl"])
def test_genai_bench(folder, extension):
    votes = ["leftvote", "rightvote", "tievote", "bothbad_vote"]
    records = [
        {"prompt": "a cat", "left_video": "videos/a.mp4", "right_video": "videos/b.mp4", "vote_type": vote}
        for vote in votes
    ]
    if extension == "csv":
        path = write_csv(folder / "genai.csv", list(records[0]), [list(record.values()) for record in records])
    else:
        path = write_jsonl(folder / "genai.jsonl", records)
    pairs = load_pairs(path)
    assert [pair.label for pair in pairs] == ["A", "B", "tie", "tie"]
    assert pairs[0].videos == (str(folder / "videos" / "a.mp4"), str(folder / "videos" / "b.mp4"))


def test_relative_paths_resolve_against_the_file_folder_not_the_working_directory(
    folder, tmp_path_factory, monkeypatch
):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    absolute_b = str(folder / "videos" / "b.mp4")
    path = write_jsonl(
        folder / "p.jsonl", [{"video_a": "videos/../videos/a.mp4", "video_b": absolute_b, "prompt": "p", "label": "A"}]
    )
    (pair,) = load_pairs(path)
    assert pair.video_a == str(folder / "videos" / "a.mp4") and pair.video_b == absolute_b


def test_check_videos_false_skips_the_existence_check(folder):
    path = write_jsonl(
        folder / "p.jsonl", [{"video_a": "gone.mp4", "video_b": "videos/b.mp4", "prompt": "p", "label": "B"}]
    )
    assert load_pairs(path, check_videos=False)[0].video_a == str(folder / "gone.mp4")


# ---------------------------------------------------------------------------------------------------------------
# Errors: each names the file, the row and the field


def native(**overrides):
    record = {"video_a": "videos/a.mp4", "video_b": "videos/b.mp4", "prompt": "p", "label": "A"}
    record.update(overrides)
    return {key: value for key, value in record.items() if value is not None}


@pytest.mark.parametrize(
    "records, message",
    [
        ([native(), native(label="C")], r"p.jsonl, line 2, field 'label': 'C' is not one of A, B, tie, invalid"),
        (
            [native(video_b="videos/missing.mp4")],
            r"p.jsonl, line 1, field 'video_b': video file not found: .*missing.mp4 \(relative paths resolve against",
        ),
        ([native(prompt="")], r"line 1, field 'prompt': missing or empty"),
        (
            [native(scores_a={**SCORES_A, "style": 3})],
            r"line 1, field 'scores_a': 'style' = 3 is not one of 0, 1, 2, \"N/A\"",
        ),
        ([native(scores_a="{not json")], r"line 1, field 'scores_a': malformed JSON"),
        ([native(scores_b={"subject": 2})], r"line 1, field 'scores_b': needs exactly the keys .*missing \['dynamics'"),
        ([native(labels="A")], r"line 1: unknown fields \['labels'\]"),
        ([{"a": 1}], r"line 1: cannot tell the format from the fields \['a'\]"),
        (
            [{"videos": ["videos/a.mp4"], "prompt": "p", "GSB": "A"}],
            r"line 1, field 'videos': expected a list of two paths",
        ),
        (
            [{"videos": ["videos/a.mp4", "videos/b.mp4"], "prompt": "p", "GSB": "better"}],
            r"line 1, field 'GSB': 'better' is not one of A, B, same, invalid",
        ),
        (
            [{"videos": ["videos/a.mp4", "videos/b.mp4"], "prompt": "p"}],
            r"line 1, field 'GSB': missing, and no verdict",
        ),
        (
            [
                {
                    "videos": ["videos/a.mp4", "videos/b.mp4"],
                    "prompt": "p",
                    "GSB": "A",
                    "answer": '{"video_1_scores": {}}',
                }
            ],
            r"line 1, field 'answer': the ground-truth JSON has no 'video_2_scores'",
        ),
        (
            [{"path_A": "videos/a.mp4", "path_B": "videos/b.mp4", "prompt": "p", "Overall": "tie"}],
            r"line 1, field 'Overall': 'tie' is not one of A, B, same",
        ),
        (
            [{"left_video": "videos/a.mp4", "right_video": "videos/b.mp4", "prompt": "p", "vote_type": "up"}],
            r"line 1, field 'vote_type': 'up' is not one of leftvote",
        ),
    ],
)
def test_jsonl_errors(folder, records, message):
    path = write_jsonl(folder / "p.jsonl", records)
    with pytest.raises(DataError, match=message):
        load_pairs(path)


def test_require_scores(folder):
    path = write_jsonl(folder / "p.jsonl", [native(scores_a=SCORES_A, scores_b=SCORES_B), native(scores_a=SCORES_A)])
    assert len(load_pairs(path)) == 2
    with pytest.raises(DataError, match=r"p.jsonl, line 2, field 'scores_b': missing, but stage-2 training needs"):
        load_pairs(path, require_scores=True)


def test_malformed_and_empty_files(folder):
    (folder / "bad.jsonl").write_text(json.dumps(native()) + "\n\n{broken\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 3: malformed JSON"):
        load_pairs(folder / "bad.jsonl")
    (folder / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"list.jsonl, line 1: expected a JSON object per line, got list"):
        load_pairs(folder / "list.jsonl")
    (folder / "extra.csv").write_text(
        "video_a,video_b,prompt,label\nvideos/a.mp4,videos/b.mp4,p,A\nvideos/a.mp4,videos/b.mp4,p,A,oops\n"
    )
    with pytest.raises(DataError, match=r"extra.csv, row 2: has 5 fields but the header has 4"):
        load_pairs(folder / "extra.csv")
    (folder / "short.csv").write_text("video_a,video_b,prompt,label\nvideos/a.mp4,videos/b.mp4\n")
    with pytest.raises(
        DataError, match=r"short.csv, row 1: has fewer fields than the header; missing \['prompt', 'label'\]"
    ):
        load_pairs(folder / "short.csv")
    (folder / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv: file is empty"):
        load_pairs(folder / "empty.csv")
    (folder / "header.csv").write_text("video_a,video_b,prompt,label\n")
    with pytest.raises(DataError, match=r"header.csv: has no data rows"):
        load_pairs(folder / "header.csv")
    (folder / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"blank.jsonl: file is empty"):
        load_pairs(folder / "blank.jsonl")
    (folder / "pairs.txt").write_text("x")
    with pytest.raises(DataError, match=r"unsupported extension '.txt'"):
        load_pairs(folder / "pairs.txt")
    with pytest.raises(DataError, match=r"nope.csv: pair file not found"):
        load_pairs(folder / "nope.csv")
    with pytest.raises(DataError, match=r"official.csv, row 1, field 'videos': .*is not a JSON or Python list"):
        load_pairs(write_csv(folder / "official.csv", ["videos", "prompt", "GSB"], [["[a.mp4, b.mp4", "p", "A"]]))
    assert issubclass(DataError, ValueError)


def test_save_rejects_bad_labels_and_keeps_outside_paths_absolute(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "c.mp4"
    outside.write_bytes(b"")
    with pytest.raises(DataError, match=r"pairs\[0\].label = 'same' is not one of A, B, tie, invalid"):
        save_pairs(folder / "p.jsonl", [Pair(str(outside), str(outside), "p", "same")])
    path = save_pairs(folder / "sub" / "p.jsonl", [Pair(str(outside), str(folder / "videos" / "a.mp4"), "p", "A")])
    record = json.loads(path.read_text())
    assert record["video_a"] == str(outside) and record["video_b"] == str(folder / "videos" / "a.mp4")
    assert load_pairs(path)[0].video_b == str(folder / "videos" / "a.mp4")


def test_official_ground_truth_as_strings_is_read_and_kept_as_written(folder):
    as_strings = {name: (value if value == "N/A" else str(value)) for name, value in SCORES_A.items()}
    answer = "<answer>" + json.dumps({"video_1_scores": as_strings, "video_2_scores": SCORES_B}) + "</answer>"
    path = write_jsonl(
        folder / "rl.jsonl",
        [
            {
                "videos": ["videos/a.mp4", "videos/b.mp4"],
                "problem": "judge <video> well",
                "prompt": "p",
                "GSB": "A",
                "answer": answer,
            }
        ],
    )
    (pair,) = load_pairs(path, require_scores=True)
    assert pair.scores_a == as_strings and pair.scores_b == SCORES_B  # the official reward compares with ==
    assert pair.instruction == "judge <video> well"
