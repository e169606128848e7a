"""`descore score` over data sets (descore_plugin/scoring.py): folders, globs and tables, one flushed JSON row per
video, error rows naming the file, resume without duplicates, exit statuses 0 / 1 / 2."""

import json
import shutil

import pytest
import torch

from descore_plugin import DeScoreReward
from descore_plugin.cli import main
from descore_plugin.testing.synthetic import write_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dirs):
    root = tmp_path_factory.mktemp("score")
    write_dataset(root / "data", 3, seed=5, progress=False)
    videos = sorted((root / "data" / "videos").glob("*.mp4"))
    (root / "data" / "videos" / "notes.txt").write_text("not a video; a folder input skips it")
    return {"root": root, "videos": videos, "model": str(tiny_dirs["qwen2_5_vl"])}


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(world, *args):
    return main(["score", *map(str, args), "--model", world["model"], "--num-workers", "1", "--batch-size", "2"])


def test_table_with_bad_rows_scores_the_rest(world, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    good = world["videos"][:3]
    table = tmp_path / "table.csv"
    lines = [
        "video,prompt,extra",
        f"{good[0]},a red square,x",
        f"{broken},a blue circle,y",
        "missing.mp4,a red square,",
        f"{good[1]},,",
        f"{good[2]},a green square moving up,z",
    ]
    table.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.jsonl"
    assert run(world, table, "--output", out, "--no-think") == 1  # some rows failed
    rows = rows_of(out)
    assert [r["video"] for r in rows] == [
        str(good[0]),
        str(broken),
        str(tmp_path / "missing.mp4"),
        str(good[1]),
        str(good[2]),
    ]
    assert "broken.mp4" in rows[1]["error"] and "cannot decode" in rows[1]["error"]
    assert "missing.mp4" in rows[2]["error"] and "not found" in rows[2]["error"]
    assert rows[3]["error"] == "table.csv, row 4: empty prompt in column 'prompt'"
    scored = [rows[0], rows[4]]
    assert all("error" not in r and "cot" not in r for r in scored)  # --no-think: no CoT
    model = DeScoreReward.from_pretrained(world["model"])
    expected = model.score(
        [str(good[0]), str(good[2])], ["a red square", "a green square moving up"], think=False
    ).rewards
    torch.testing.assert_close(torch.tensor([r["reward"] for r in scored]), expected, atol=1e-5, rtol=0)
    assert "5 rows, 3 failed" in capsys.readouterr().err


def test_folder_resume_writes_no_row_twice(world, tmp_path):
    folder = tmp_path / "videos"
    shutil.copytree(world["root"] / "data" / "videos", folder)
    out = tmp_path / "all.jsonl"
    assert run(world, folder, "--prompt", "a red square", "--output", out, "--max-new-tokens", "4") == 0
    full = rows_of(out)
    assert [r["video"] for r in full] == sorted(str(p) for p in folder.glob("*.mp4"))  # notes.txt skipped
    assert set(full[0]) == {
        "video",
        "prompt",
        "reward",
        "cot",
        "dimensional_scores",
        "overall_score",
        "parse_error",
        "uncertainty",
    }

    killed = tmp_path / "killed.jsonl"  # a run killed while writing its third row
    text = out.read_text().splitlines(keepends=True)
    killed.write_text(text[0] + text[1] + text[2][:20])
    assert (
        run(world, str(folder / "*.mp4"), "--prompt", "a red square", "--output", killed, "--max-new-tokens", "4") == 2
    )  # an existing output: --resume or --overwrite
    assert (
        run(
            world,
            str(folder / "*.mp4"),
            "--prompt",
            "a red square",
            "--output",
            killed,
            "--max-new-tokens",
            "4",
            "--resume",
        )
        == 0
    )
    resumed = rows_of(killed)
    assert [r["video"] for r in resumed] == [r["video"] for r in full]
    for got, want in zip(resumed, full):
        assert got["cot"] == want["cot"] and got["reward"] == pytest.approx(want["reward"], abs=1e-5)
    before = killed.read_text()
    assert run(world, folder, "--prompt", "a red square", "--output", killed, "--resume") == 0  # nothing left
    assert killed.read_text() == before
    assert run(world, folder, "--prompt", "a red square", "--output", killed, "--overwrite", "--no-think") == 0
    assert len(rows_of(killed)) == len(full) and "cot" not in rows_of(killed)[0]  # scored again from scratch


def test_positional_videos_print_as_before(world, capsys):
    video = world["videos"][0]
    assert run(world, video, "--prompt", "a red square", "--no-think", "--json") == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["video"] == str(video) and record["prompt"] == "a red square" and isinstance(record["reward"], float)
    assert run(world, video, "--prompt", "a red square", "--no-think") == 0
    printed = capsys.readouterr().out
    assert f"== {video}" in printed and "reward: " in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["{table}", "--prompt", "p"], "drop --prompt"),
        (["{tmp}/none-*.mp4", "--prompt", "p"], "matches no file"),
        (["{video}"], "--prompt is required"),
        (["{bad_table}"], "no 'prompt' column"),
    ],
)
def test_usage_errors_exit_2(world, tmp_path, capsys, args, message):
    (tmp_path / "t.jsonl").write_text(json.dumps({"video": str(world["videos"][0]), "prompt": "p"}) + "\n")
    (tmp_path / "bad.csv").write_text("video\nx.mp4\n")
    fill = {
        "table": tmp_path / "t.jsonl",
        "tmp": tmp_path,
        "video": world["videos"][0],
        "bad_table": tmp_path / "bad.csv",
    }
    args = [a.format(**fill) for a in args]
    assert run(world, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("descore score: error:") and message in err[0]


def test_pair_files_of_every_training_format_score_each_video_once(world, tmp_path):
    """VideoAlign CSV, GenAI-Bench JSONL, the official DeScore CSV and ours: the same six videos, each scored once."""
    import csv

    from descore_plugin.data.pairs import load_pairs

    pairs = load_pairs(world["root"] / "data" / "pairs.jsonl")
    duplicate = pairs[0]  # a video in two pairs is still scored once
    files = {}
    with open(tmp_path / "videoalign.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_A", "path_B", "prompt", "VQ", "MQ", "TA", "Overall", "fps_A", "num_frames_A"])
        for p in pairs + [duplicate]:
            w.writerow([p.video_a, p.video_b, p.prompt, "A", "B", "A", {"A": "A", "B": "B"}[p.label], 8, 8])
    files["videoalign"] = tmp_path / "videoalign.csv"
    votes = {"A": "leftvote", "B": "rightvote"}
    files["genai"] = tmp_path / "genai.jsonl"
    files["genai"].write_text(
        "".join(
            json.dumps(
                {"left_video": p.video_a, "right_video": p.video_b, "prompt": p.prompt, "vote_type": votes[p.label]}
            )
            + "\n"
            for p in pairs
        )
    )
    with open(tmp_path / "official.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videos", "problem", "prompt", "CoT_A", "CoT_B", "GSB"])
        for p in pairs:
            w.writerow(
                [
                    json.dumps([p.video_a, p.video_b]),
                    f"Judge <video> for {p.prompt}",
                    p.prompt,
                    p.cot_a,
                    p.cot_b,
                    p.label,
                ]
            )
    files["official"] = tmp_path / "official.csv"
    files["ours"] = world["root"] / "data" / "pairs.jsonl"
    expected_keys = [(v, p.prompt) for p in pairs for v in p.videos]
    instructions = [f"Judge <video> for {p.prompt}" for p in pairs for _ in p.videos]  # the official rows' `problem`
    model = DeScoreReward.from_pretrained(world["model"])
    videos, prompts = [v for v, _ in expected_keys], [p for _, p in expected_keys]
    expected = model.score(videos, prompts, think=False).rewards
    with_problem = model.score(videos, prompts, think=False, instructions=instructions).rewards
    for name, path in files.items():
        out = tmp_path / f"{name}.scores.jsonl"
        assert run(world, path, "--output", out, "--no-think") == 0, name
        rows = rows_of(out)
        assert [(r["video"], r["prompt"]) for r in rows] == expected_keys, name
        assert [r.get("instruction") for r in rows] == (instructions if name == "official" else [None] * 6), name
        want = with_problem if name == "official" else expected  # the official CSV: scored with each row's problem
        torch.testing.assert_close(torch.tensor([r["reward"] for r in rows]), want, atol=1e-5, rtol=0)
    assert not torch.allclose(with_problem, expected, atol=1e-3)  # the instruction changes what the model sees


def test_official_csv_rows_are_scored_with_their_own_problem(world, tmp_path, capsys, monkeypatch):
    """The official CSV's `problem` (its full judge instruction, `<video>` where the video goes) is what reaches the
    model's prompt for that row's videos, not the model's template or --prompt-template; the same video under two
    problems is two rows, and --resume recognises both."""
    import csv

    from descore_plugin.data.pairs import load_pairs

    pairs = load_pairs(world["root"] / "data" / "pairs.jsonl")[:2]
    problems = ["ROW-ONE asks: is <video> a faithful render of the prompt?", "<video> ROW-TWO: rate it 1-5."]
    path = tmp_path / "official.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videos", "problem", "prompt", "CoT_A", "CoT_B", "GSB"])
        for problem in problems:  # both rows: the same two videos and prompt, each row its own problem
            w.writerow([json.dumps([pairs[0].video_a, pairs[0].video_b]), problem, pairs[0].prompt, "", "", "A"])
    seen = []
    chat_text = DeScoreReward.chat_text

    def spy(self, prompt, instruction=None, name="prompt"):
        text = chat_text(self, prompt, instruction, name=name)
        seen.append(text)
        return text

    monkeypatch.setattr(DeScoreReward, "chat_text", spy)
    out = tmp_path / "scores.jsonl"
    template = tmp_path / "template.txt"
    template.write_text("TEMPLATE-TEXT for {prompt}")
    assert run(world, path, "--output", out, "--no-think", "--prompt-template", template) == 0
    rows = rows_of(out)
    videos = [pairs[0].video_a, pairs[0].video_b]
    assert [(r["video"], r["instruction"]) for r in rows] == [(v, p) for p in problems for v in videos]
    assert len(seen) == 4 and not any("TEMPLATE-TEXT" in text for text in seen)
    for problem in problems:  # each row's problem reached the prompt of its two videos, around the video
        before, after = problem.split("<video>")
        assert sum(before.strip() in text and after.strip() in text for text in seen) == 2
    assert rows[0]["reward"] != pytest.approx(rows[2]["reward"], abs=1e-4)  # same video, other problem
    capsys.readouterr()
    assert run(world, path, "--output", out, "--no-think", "--resume") == 0
    assert "4 of 4 videos already scored, 0 to go" in capsys.readouterr().err and len(rows_of(out)) == 4


def test_pair_files_without_a_usable_label_are_scored_all_the_same(world, tmp_path):
    """Scoring needs no label: a VideoAlign CSV without `Overall` (only VQ / MQ / TA), which training refuses without
    --label-column, and GenAI-Bench rows with a vote type outside the benchmark's four are scored like any pair file."""
    import csv

    from descore_plugin.data.pairs import DataError, load_pairs

    pairs = load_pairs(world["root"] / "data" / "pairs.jsonl")
    aspects = tmp_path / "aspects.csv"
    with open(aspects, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path_A", "path_B", "prompt", "VQ", "MQ", "TA"])
        for p in pairs:
            w.writerow([p.video_a, p.video_b, p.prompt, "A", "B", "same"])
    with pytest.raises(DataError, match="--label-column"):  # training still asks which column is the label
        load_pairs(aspects)
    genai = tmp_path / "genai.jsonl"
    genai.write_text(
        "".join(
            json.dumps({"left_video": p.video_a, "right_video": p.video_b, "prompt": p.prompt, "vote_type": vote})
            + "\n"
            for p, vote in zip(pairs, ["leftvote", "skipped", "rightvote"])
        )
    )
    with pytest.raises(DataError, match="vote_type"):
        load_pairs(genai)
    expected = [(v, p.prompt) for p in pairs for v in p.videos]
    for path in (aspects, genai):
        out = tmp_path / f"{path.stem}.scores.jsonl"
        assert run(world, path, "--output", out, "--no-think") == 0
        assert [(r["video"], r["prompt"]) for r in rows_of(out)] == expected
        assert all(isinstance(r["reward"], float) for r in rows_of(out))
