"""`descore report`: the reward-hacking flags on runs whose answer is known, input detection and errors, and the
three pages' content. (The pages in a real browser: tests/test_report_browser.py.)"""

import json
import math

import pytest
import report_builders

import descore_plugin.report as report
from descore_plugin.cli import main as cli
from descore_plugin.testing.synthetic import write_dataset

STEPS = [0, 100, 200]


# ------------------------------------------------------------------------------------------- flags on plain data
def test_change_counts_only_beyond_the_standard_error():
    # means: the threshold is min_change
    assert report.change(1.0, 1.3, min_change=0.2).direction == 1
    assert report.change(1.0, 1.1, min_change=0.2).direction == 0
    # per-video values: the threshold is z standard errors of the difference of the means
    same = report.change([0.0, 1.0, 0.0, 1.0], [0.1, 1.1, 0.1, 1.1])  # +0.1, SE = sqrt(2 * (1/3) / 4) = 0.408, z 3
    assert same.delta == pytest.approx(0.1) and same.threshold == pytest.approx(3 * math.sqrt(2 / 12))
    assert same.direction == 0
    assert report.change([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]).direction == -1  # no spread: any change counts
    assert report.change([1.0, math.nan, 1.0], [2.0, 2.0, math.nan]).delta == 1.0  # NaN = no score


def test_dimension_drop_flags_the_hacked_dimension_only():
    total = [0.0, 0.5, 1.0]
    dims = {"descore:style": [2.0, 1.5, 1.0], "descore:subject": [1.5, 1.7, 1.9], "descore:camera": [2.0, 2.0, 2.0]}
    flags = report.dimension_drop_flags(STEPS, total, dims)
    assert [(f.kind, f.series, f.steps) for f in flags] == [("dimension_drop", "descore:style", [100, 200])]
    # clean: every dimension rises with the total
    assert report.dimension_drop_flags(STEPS, total, {"descore:style": [1.0, 1.5, 2.0]}) == []
    # a falling dimension while the total falls too is not reward hacking
    assert report.dimension_drop_flags(STEPS, [1.0, 0.5, 0.0], {"descore:style": [2.0, 1.0, 0.0]}) == []


def test_independent_check_flags_a_flat_or_falling_check():
    total = [0.0, 0.5, 1.0]
    flags = report.independent_check_flags(
        STEPS, total, {"student": [0.5, 0.5, 0.5], "analytic": [0.5, 0.4, 0.2], "second": [0.1, 0.3, 0.6]}
    )
    assert [(f.series, f.steps) for f in flags] == [("student", [100, 200]), ("analytic", [100, 200])]
    # flat reward: nothing to compare
    assert report.independent_check_flags(STEPS, [0.5, 0.5, 0.5], {"student": [0.5, 0.5, 0.5]}) == []
    # min_change: a check rising by less than it counts as flat
    assert report.independent_check_flags(STEPS, total, {"s": [0.5, 0.52, 0.55]}, min_change=0.1)[0].steps == [100, 200]


def test_uncertainty_flags_a_sustained_rise_only():
    assert [f.steps for f in report.uncertainty_flags(STEPS, [0.1, 0.1, 0.4])] == [[200]]
    # a rise the next checkpoint undoes is a blip, not a trend
    assert report.uncertainty_flags([0, 1, 2, 3], [0.1, 0.4, 0.1, 0.1]) == []
    assert [f.steps for f in report.uncertainty_flags([0, 1, 2, 3], [0.1, 0.4, 0.1, 0.5])] == [[3]]
    assert report.uncertainty_flags(STEPS, [0.4, 0.3, 0.1]) == []
    assert report.uncertainty_flags(STEPS, [[0.1, 0.2, 0.1, 0.2], [0.1, 0.2, 0.2, 0.1], [0.2, 0.1, 0.1, 0.2]]) == []


def test_cot_parse_flags_a_sustained_fall_of_the_parsed_share():
    steps = [0, 50, 100]
    # 7 of 8 parse at step 50: -0.125 against 3 SE = 0.375, not a change; 2 of 8 at step 100: -0.75 against 0.49
    flags = report.cot_parse_flags(steps, [[1.0] * 8, [1.0] * 7 + [0.0], [0.0] * 6 + [1.0] * 2])
    assert [(f.kind, f.series, f.steps) for f in flags] == [("cot_parse", "cot_parse_rate", [100])]
    assert "(100% at step 0, 25% at step 100;" in flags[0].message and "--unparsed-cot nan" in flags[0].message
    assert report.cot_parse_flags(steps, [[1.0] * 8, [0.0] * 8, [1.0] * 8]) == []  # undone at the next checkpoint
    assert report.cot_parse_flags(steps, [[0.5] * 8, [1.0] * 8, [1.0] * 8]) == []  # more parse: no flag


def test_phrase_flags_find_the_new_failure_and_ignore_prompt_words():
    def cot(light):
        return f'Seen: subject fine: 2; style {light}: 1.\n<answer>{{"overall_score": 1}}</answer>'

    base = [
        (0.1, cot("grainy noise"), "a red square"),
        (0.2, cot("grainy noise"), "a blue circle"),
        (0.9, cot("steady light"), "a green square"),
    ]
    hacked = [
        (0.3, cot("over-exposed washed-out frames"), "a green square"),
        (0.4, cot("over-exposed washed-out frames"), "a yellow circle"),
        (1.2, cot("steady light"), "a red circle"),
    ]
    flags, tables = report.phrase_flags({0: base, 50: hacked}, fraction=2 / 3)
    # the new trigrams chain into one span (with the words next to it that the base never used there either)
    assert [(f.kind, f.series, f.steps) for f in flags] == [
        ("phrases", "fine style over-exposed washed-out frames", [50])
    ]
    top = tables[50][0]
    assert (top["share"], top["base_share"], top["rise"]) == (1.0, 0.0, 1.0)
    # the same complaints on other prompts: no flag (prompt words are masked out of the phrases)
    clean = [
        (0.3, cot("grainy noise"), "a green square"),
        (0.4, cot("grainy noise"), "a yellow circle"),
        (1.2, cot("steady light"), "a red circle"),
    ]
    assert report.phrase_flags({0: base, 50: clean}, fraction=2 / 3)[0] == []
    # the answer block's words never count
    assert not any("overall" in row["phrase"] for row in tables[50])


# ------------------------------------------------------------------------------------------- constructed run dirs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "hacked": report_builders.run(root, hacked=True, videos=False),
        "clean": report_builders.run(root, hacked=False, videos=False),
    }


def test_hacked_run_raises_every_flag_and_the_clean_run_none(runs):
    hacked = report.hacking_flags(report.load_run(runs["hacked"]))
    assert hacked["primary"] == "descore" and hacked["independent"] == ["student"]
    assert hacked["steps"] == list(report_builders.RUN_STEPS)
    fired = {(f.kind, f.series) for f in hacked["flags"]}
    assert ("dimension_drop", "descore:style") in fired
    assert {kind for kind, series in fired if kind == "dimension_drop"} == {"dimension_drop"}
    assert [s for k, s in fired if k == "dimension_drop"] == ["descore:style"]  # the hacked dimension only
    assert ("independent_check", "student") in fired
    assert ("uncertainty", "descore:uncertainty") in fired
    assert ("cot_parse", "cot_parse_rate") in fired  # the washed-out videos' CoTs break
    phrases = [s for k, s in fired if k == "phrases"]
    assert phrases and all("over-exposed" in p or "washed-out" in p for p in phrases), phrases
    clean = report.hacking_flags(report.load_run(runs["clean"]))
    assert clean["flags"] == [], clean["flags"]


def test_naming_the_checks_and_the_reward(runs):
    run = report.load_run(runs["hacked"])
    named = report.hacking_flags(run)
    assert named["independent"] == ["student"]
    only_subject = report.hacking_flags(run, independent=["descore:subject"])
    assert [f.series for f in only_subject["flags"] if f.kind == "independent_check"] == []  # subject rises
    with pytest.raises(report.ReportInputError, match="--check nope: the run has no such score"):
        report.hacking_flags(run, independent=["nope"])
    with pytest.raises(report.ReportInputError, match="--reward 'nope'"):
        report.hacking_flags(run, primary="nope")


def test_metrics_only_run_uses_the_eval_means(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"kind": "eval", "step": s, "eval_reward": r, "eval_reward_std": 0.1} for s, r in ((0, 0.1), (50, 0.4))]
    rows.insert(1, {"kind": "train", "step": 1, "loss": 0.6})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    analysis = report.hacking_flags(report.load_run(run_dir))
    assert analysis["steps"] == [0, 50] and analysis["series"] == {"reward": [0.1, 0.4]} and analysis["flags"] == []
    index = report.write_report(run_dir, tmp_path / "out")
    assert "wrote no sample videos" in index.read_text()


# ------------------------------------------------------------------------------------------- input kinds and errors
def test_detect_kind_and_a_clear_error_otherwise(tmp_path, runs):
    assert report.detect_kind(runs["clean"]) == "run"
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "accuracy.json").write_text("{}")
    (tmp_path / "eval" / "pairs_scored.csv").write_text("video_a\n")
    assert report.detect_kind(tmp_path / "eval") == "evaluation"
    (tmp_path / "s.jsonl").write_text("{}\n")
    assert report.detect_kind(tmp_path / "s.jsonl") == "scores"
    (tmp_path / "empty").mkdir()
    with pytest.raises(report.ReportInputError, match="not something `descore report` reads"):
        report.detect_kind(tmp_path / "empty")
    with pytest.raises(report.ReportInputError, match="no such file"):
        report.detect_kind(tmp_path / "nope")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"video": "v.mp4", "prompt": "p"}', "line 1: a row needs 'reward'"),
        ('{"video": "v.mp4", "prompt": "p", "reward": "high"}', "line 1, field 'reward': expected a number"),
        ('{"prompt": "p", "reward": 1}', "line 1: field 'video' is missing"),
        (
            '{"video": "v.mp4", "prompt": "p", "reward": 1, "dimensional_scores": {"style": "x"}}',
            "field 'dimensional_scores.style'",
        ),
        ("not json", "line 1: malformed JSON"),
    ],
)
def test_bad_scored_rows_are_named(tmp_path, line, message):
    path = tmp_path / "s.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(report.ReportInputError, match=message):
        report.load_scored_set(path)


def test_cli_writes_the_page_and_fails_in_one_line(tmp_path, runs, capsys):
    assert cli(["report", str(runs["hacked"]), "--output-dir", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Reward-hacking flags" in page and "descore:style falls while the total reward rises" in page
    assert "wrote " in capsys.readouterr().out
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01")
    assert cli(["report", str(tmp_path / "junk.bin"), "--output-dir", str(tmp_path / "out2")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("descore report: error:") and error.count("\n") == 1 and "junk.bin" in error


# ------------------------------------------------------------------------------------------- page content
def test_scored_set_page(tmp_path):
    source = report_builders.scored_set(tmp_path, num_pairs=2)
    index = report.write_report(source, tmp_path / "out")
    page = index.read_text()
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    assert page.count('<div class="card" ') + page.count('<div class="card error" ') == len(rows)
    assert page.count("<video ") == len(rows) - 1 and "video not found" in page  # the error row's file is gone
    assert len(list((tmp_path / "out" / "media").glob("*.mp4"))) == len(rows) - 1
    for row in rows[:-1]:
        assert f'data-k-reward="{row["reward"]}"' in page and json.dumps(row["prompt"])[1:-1] in page
    assert 'data-k-style="' in page and '<option value="kStyle">style</option>' in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_evaluation_page_shows_the_wrong_pairs(tmp_path):
    source = report_builders.evaluation(tmp_path, num_pairs=6, wrong=(1, 4))
    page = report.write_report(source, tmp_path / "out").read_text()
    summary = json.loads((source / "accuracy.json").read_text())
    assert summary["accuracy_without_ties"] == pytest.approx(4 / 6)
    assert "Pairs the model got wrong (2)" in page and page.count('<div class="pair">') == 2
    assert page.count("<video ") == 4 and "Accuracy by slice" in page and "<svg" in page
    evaluation = report.load_evaluation(source)
    wrong = [row for row in evaluation["rows"] if row["correct"] is False]
    for row in wrong:  # both CoTs of each wrong pair are on the page, and the data's truth
        assert row["cot_a"].split("\n")[1][:60] in page.replace("&#x27;", "'").replace("&quot;", '"')
        differing = [name for name in row["scores_a"] if row["scores_a"][name] != row["scores_b"][name]]
        assert differing == [row["slice"]]  # the synthetic world: a pair differs in the defect of its slice
        said = ", ".join(f"{n}: A {row['scores_a'][n]}, B {row['scores_b'][n]}" for n in differing)
        assert f"the videos differ in {said}" in page
    assert page.count("<table><tr><th>dimension</th>") == 2 and "CoT not parsed: no &lt;answer&gt; block" in page
    assert "official figure (ties as errors)" in page and "11 of 12 (92%)" in page  # 6 pairs, one CoT unparsed
    assert f"pairs: {source.parent / 'data' / 'pairs.jsonl'}" in page and f"model: {source.parent / 'judge'}" in page


def test_eval_rm_writes_the_cots_the_report_shows(tmp_path, tiny_dirs, capsys):
    """eval_rm.py's output (a real tiny model, its own CoTs) is an evaluation the report reads, and names the model,
    the data, the CoT limit, the parse rate and the reward range; the synthetic pairs' truth is in the CSV. An
    existing output folder is refused unless --overwrite."""
    import csv
    import importlib.util
    from pathlib import Path

    pairs = write_dataset(tmp_path / "data", 2, seed=5, progress=False)
    spec = importlib.util.spec_from_file_location("eval_rm", Path(__file__).parents[1] / "recipes" / "eval_rm.py")
    eval_rm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_rm)
    argv = [
        str(pairs),
        "--model",
        str(tiny_dirs["qwen2_5_vl"]),
        "--output-dir",
        str(tmp_path / "eval"),
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
    ]
    assert eval_rm.main(argv) == 0
    evaluation = report.load_evaluation(tmp_path / "eval")
    assert len(evaluation["rows"]) == 2 and all(row["cot_a"] and row["cot_b"] for row in evaluation["rows"])
    assert evaluation["model"] == str(tiny_dirs["qwen2_5_vl"]) and evaluation["pairs"] == str(pairs)
    assert evaluation["max_new_tokens"] == 8 and evaluation["num_cots"] == 4
    with open(tmp_path / "eval" / "pairs_scored.csv", newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    unparsed = sum(bool(row[f"parse_error_{side}"]) for row in csv_rows for side in "ab")
    assert evaluation["num_cots_unparsed"] == unparsed and evaluation["cot_parse_rate"] == pytest.approx(
        1 - unparsed / 4
    )
    rewards = [float(row[f"reward_{side}"]) for row in csv_rows for side in "ab"]
    assert evaluation["reward_range"]["num_videos"] == 4
    assert evaluation["reward_range"]["mean"] == pytest.approx(sum(rewards) / 4)
    assert evaluation["reward_range"]["min"] == pytest.approx(min(rewards))
    from descore_plugin.data.pairs import load_pairs

    truth = load_pairs(pairs)
    assert [row["scores_a"] for row in evaluation["rows"]] == [pair.scores_a for pair in truth]
    assert report.detect_kind(tmp_path / "eval") == "evaluation"
    page = report.write_report(tmp_path / "eval", tmp_path / "out").read_text()
    assert "Truth</b> (from the data)" in page or not any(row["correct"] is False for row in evaluation["rows"])
    assert f"model: {tiny_dirs['qwen2_5_vl']}" in page and "max_new_tokens" in page
    # the model folder's record: evaluated into MODEL/evaluation, its range is what a scores page compares with
    record = report.load_model_record(tiny_dirs["qwen2_5_vl"])
    assert record["head"] == "scalar"
    capsys.readouterr()
    assert eval_rm.run_main(eval_rm.main, "eval_rm.py", argv) == 2  # the output exists
    error = capsys.readouterr().err
    assert "already exists" in error and "--overwrite" in error and error.count("\n") == 1
    assert eval_rm.main(argv + ["--overwrite"]) == 0


# ------------------------------------------------------------------------------------------- the demo's judge
def test_shipped_demo_judge_names_the_colour_and_motion(tmp_path):
    """The judge `make demo` ships (recipes/demo_judge/) still loads with this code and, on wrong-colour pairs of
    its world that it never saw, writes CoTs that parse and name the colour and motion each video shows, and prefers
    the right video of every pair (the demo measures the full held-out figure)."""
    import importlib.util
    from pathlib import Path

    from descore_plugin import DeScoreReward
    from descore_plugin.data.pairs import load_pairs

    recipes = Path(__file__).parents[1] / "recipes"
    spec = importlib.util.spec_from_file_location("demo", recipes / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    world, _ = demo._world()
    pairs = load_pairs(
        write_dataset(tmp_path, 4, seed=demo.DEMO_HELD_OUT_SEED, defects=("subject",), world=world, progress=False)
    )
    judge = DeScoreReward.from_pretrained(demo.SHIPPED_JUDGE)
    videos = [video for pair in pairs for video in pair.videos]
    out = judge.score(videos, [pair.prompt for pair in pairs for _ in range(2)], max_new_tokens=demo.MAX_NEW_TOKENS)
    annotator = [cot for pair in pairs for cot in (pair.cot_a, pair.cot_b)]
    named = [demo.cot_names_what_is_seen(cot, truth) for cot, truth in zip(out.cots, annotator)]
    # measured: all 8 CoTs name both (the demo measures 100% colour, 92% motion on 200 videos)
    assert sum(n["colour"] for n in named) >= 7 and sum(n["motion"] for n in named) >= 7, list(zip(out.cots, annotator))
    assert all(error is None for error in out.parse_errors), out.parse_errors
    margins = (out.rewards[0::2] - out.rewards[1::2]).tolist()
    assert all((m > 0) == (pair.label == "A") for m, pair in zip(margins, pairs)), (margins, [p.label for p in pairs])


@pytest.mark.parametrize("values", [[0.55204, 0.55105, 0.55108, 0.55115], [-7.4, -7.6, -7.3, -6.9], [120.0, 480.0]])
def test_chart_tick_labels_differ_at_any_scale(values):
    """Neighbouring y ticks are a quarter of the range apart: their labels never print the same number."""
    import re

    svg = report.svg_lines("t", list(range(len(values))), {"r": values})
    labels = re.findall(r'text-anchor="end" fill="#5f6b7a">([^<]+)</text>', svg)
    assert len(labels) == 5 and len(set(labels)) == 5, labels


# ------------------------------------------------------------------------------------------- the scores page's flags
def test_judge_warnings_and_ranks(tmp_path):
    rows = report.load_scored_set(report_builders.failing_scored_set(tmp_path))
    judge = report.load_model_record(report_builders.judge_folder(tmp_path))
    assert judge["head"] == "scalar" and judge["reward_range"]["num_videos"] == 40
    warnings = report.judge_warnings(rows, judge)
    assert [kind for kind, _ in warnings] == ["parse", "out_of_domain", "out_of_domain"]
    assert "5 of 6 CoTs did not parse" in warnings[0][1] and "4 of 6 rewards" in warnings[2][1]  # |r| > 3: 4 of 6
    # without the record only the parse failures can tell; a judge evaluated on rewards like these is in range
    assert [kind for kind, _ in report.judge_warnings(rows, None)] == ["parse", "out_of_domain"]
    wide = report.load_model_record(report_builders.judge_folder(tmp_path / "wide", mean=-4.0, std=4.0))
    assert [kind for kind, _ in report.judge_warnings(rows, wide)] == ["parse", "out_of_domain"]
    clean = report.load_scored_set(report_builders.scored_set(tmp_path / "clean", num_pairs=2))
    assert [kind for kind, _ in report.judge_warnings(clean, judge)] == ["failed"]  # its one missing video
    # ranks within a prompt: rewards -8.9, -6.1, 2.7 | -7.5, 0.4, -5.2
    ranks = report.prompt_ranks(rows)
    assert (
        ranks[2] == (1, 3, 0.0) and ranks[1] == (2, 3, pytest.approx(-8.8)) and ranks[0] == (3, 3, pytest.approx(-11.6))
    )
    assert ranks[4] == (1, 3, 0.0) and ranks[3] == (3, 3, pytest.approx(-7.9))


def test_scores_page_names_the_judge_and_shows_no_mean_for_a_bt_head(tmp_path):
    source = report_builders.failing_scored_set(tmp_path)
    page = report.write_report(source, tmp_path / "out", model=report_builders.judge_folder(tmp_path)).read_text()
    assert "No mean reward" in page and "mean reward</div>" not in page and "judge: " in page
    distribution = report_builders.judge_folder(tmp_path / "d", head="distribution")
    page = report.write_report(source, tmp_path / "out_d", model=distribution).read_text()
    assert "No mean reward" not in page and "mean score (1-5 rubric)" in page
    with pytest.raises(report.ReportInputError, match="no descore_config.json"):
        report.write_report(source, tmp_path / "out_x", model=tmp_path)


def test_real_tiny_judge_scores_then_the_page_counts_its_parse_errors(tmp_path, tiny_dirs):
    """End to end: `descore score` with a tiny random judge (whose CoTs do not parse), then `descore report
    --model`: the page counts exactly the rows whose CoT did not parse, never "0 errors"."""
    data = write_dataset(tmp_path / "data", 2, seed=4, progress=False)
    scores = tmp_path / "scores.jsonl"
    code = cli(
        [
            "score",
            str(data.parent / "videos"),
            "--prompt",
            "a red square moving right",
            "--model",
            str(tiny_dirs["qwen2_5_vl"]),
            "--max-new-tokens",
            "6",
            "--device",
            "cpu",
            "--output",
            str(scores),
        ]
    )
    assert code in (0, 1)
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    unparsed = sum(1 for row in rows if row.get("parse_error") and not row.get("error"))
    assert unparsed == len(rows) == 4  # six tokens of a random model are no answer block
    assert (
        cli(["report", str(scores), "--output-dir", str(tmp_path / "out"), "--model", str(tiny_dirs["qwen2_5_vl"])])
        == 0
    )
    page = (tmp_path / "out" / "index.html").read_text()
    assert f'<div class="v">{unparsed} of {len(rows)}</div><div class="k">CoTs not parsed</div>' in page
    assert 'data-kind="out_of_domain"' in page and "records no reward range" in page


def test_report_refuses_an_existing_output_folder(tmp_path, runs, capsys):
    out = tmp_path / "out"
    assert cli(["report", str(runs["clean"]), "--output-dir", str(out)]) == 0
    assert cli(["report", str(runs["clean"]), "--output-dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert "already exists" in error and "--overwrite" in error and error.count("\n") == 1
    assert cli(["report", str(runs["clean"]), "--output-dir", str(out), "--overwrite"]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert cli(["report", str(runs["clean"]), "--output-dir", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------- the run page
class _PairLoss:
    """A tiny Flow-DPO-shaped method for the real run loop: a logistic loss on pairs, its implicit accuracy, and an
    evaluation of a reward over 8 fixed items with its spread, in the loop's metric vocabulary."""

    name, curve_names, may_change_on_resume = "pairs", ("train/loss", "train/implicit_accuracy"), ()
    arguments = {"reward": ["toy"]}

    def setup(self, loop):
        import torch

        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.optimizer = torch.optim.SGD([self.weight], lr=0.5)
        self.generator = torch.Generator().manual_seed(0)
        self.items = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))

    def train_step(self, step):
        import torch

        delta = torch.randn(16, 2, generator=self.generator) + torch.tensor([1.0, 0.5])
        inside = delta @ self.weight
        loss = -torch.nn.functional.logsigmoid(inside).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return {
            "train/loss": loss.item(),
            "train/implicit_accuracy": (inside > 0).float().mean().item(),
            "reward/toy": inside.mean().item(),
        }

    def evaluate(self, step):
        values = (self.items @ self.weight.detach()).numpy()
        return {"eval/toy": float(values.mean()), "eval/toy_std": float(values.std()), "eval/num_items": 8.0}

    def state_dict(self):
        return {
            "weights": {"weight": self.weight.detach().clone()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state):
        self.weight.data.copy_(state["weights"]["weight"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def save_pretrained(self, directory):
        pass


def test_run_page_reads_the_run_loops_vocabulary(tmp_path):
    """A real RunLoop run (train/..., reward/..., time/..., eval/<name> with eval/<name>_std and eval/num_items):
    the report's series, standard errors (std / sqrt(n)) and training curves come from those names."""
    from descore_plugin.training.loop import LoopConfig, RunLoop

    RunLoop(_PairLoss(), LoopConfig(output_dir=str(tmp_path / "run"), max_steps=30, checkpoint_every=10)).run()
    run = report.load_run(tmp_path / "run")
    evals = run["evals"]
    analysis = report.hacking_flags(run)
    assert analysis["primary"] == "toy" and analysis["steps"] == [row["step"] for row in evals] and len(evals) >= 4
    from descore_plugin.report.run import standard_errors

    errors = standard_errors(run, analysis["steps"], analysis["series"])["toy"]
    assert errors == [pytest.approx(row["eval/toy_std"] / math.sqrt(8)) for row in evals]
    curves = report.training_curves(run)
    assert {"train/loss", "train/implicit_accuracy", "reward/toy", "time/step"} <= set(curves)
    assert len(curves["train/loss"]) == 30
    page = report.write_report(tmp_path / "run", tmp_path / "out").read_text()
    for name in ("train/loss", "train/implicit_accuracy", "reward/toy"):
        assert f'aria-label="{name}"' in page
    assert 'class="se-band"' in page and "rolling mean of 3 steps" in page and "<td>time/step</td>" in page
    assert 'id="checks"' in page and "No independent check" in page  # and it says how to get one
    assert "the Flow-DPO loss and implicit accuracy" in page and "of the reward model" not in page  # its caption


def test_older_flat_names_and_rows_without_kind(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [
        {"kind": "eval", "step": 0, "eval/r": 0.1, "eval_std/r": 0.2, "num_videos": 5},
        {"kind": "train", "step": 1, "loss": 0.7, "implicit_accuracy": 0.5},
        {"step": 2, "train/loss": 0.6, "time/step": 1.5},
        {"step": 2, "eval/r": 0.4, "eval/r_std": 0.3, "eval/num_items": 9},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = report.load_run(run_dir)
    assert [r["step"] for r in run["evals"]] == [0, 2] and len(run["train"]) == 2
    assert report.training_curves(run) == {
        "train/loss": [(1, 0.7), (2, 0.6)],
        "train/implicit_accuracy": [(1, 0.5)],
        "time/step": [(2, 1.5)],
    }
    from descore_plugin.report.run import axis_range, change_in_se, standard_errors

    steps, series = report.run_series(run)
    assert series == {"r": [0.1, 0.4]}
    # the old recipes' std had ddof 0: SE = std / sqrt(n - 1); the loop's: std / sqrt(n)
    assert standard_errors(run, steps, series)["r"] == [pytest.approx(0.2 / 2), pytest.approx(0.3 / 3)]
    assert change_in_se(steps, [0.1, 0.4], [0.1, 0.1]) == f"step 0 -> 2: +0.3 ({0.3 / math.sqrt(0.02):+.1f} SE)"
    assert axis_range("descore:style") == (0.0, 2.0) and axis_range("train/implicit_accuracy") == (0.0, 1.0)
    assert axis_range("train/loss") == (0.0, 0.0) and axis_range("descore") is None


def test_check_scores_the_saved_samples_after_the_fact(tmp_path):
    """`--check analytic:brightness` on runs that never logged it: the saved mp4s are scored (their mean pixel
    value, as the analytic reward defines it), written next to the page, and the flags use them: the clean run's
    reward rises while the brightness of its videos stays flat -> flagged; the hacked run washes its videos out
    -> by the last checkpoint its brightness has risen with the reward -> not flagged there."""
    clean = report_builders.run(tmp_path, hacked=False)
    index = report.write_report(clean, tmp_path / "out", checks=["analytic:brightness"])
    lines = [json.loads(line) for line in (tmp_path / "out" / "check_scores.jsonl").read_text().splitlines()]
    assert len(lines) == len(report_builders.RUN_STEPS) * len(report_builders.RUN_PROMPTS)
    first = next(line for line in lines if line["step"] == 0 and line["index"] == 0)
    truth = report_builders._frames(report_builders.RUN_PROMPTS[0], 0.0, 0).mean() / 255  # before H.264
    assert first["scores"]["analytic:brightness"] == pytest.approx(truth, abs=0.01)
    page = index.read_text()
    assert "independent check analytic:brightness does not" in page and "scored now by descore report" in page
    hacked = report_builders.run(tmp_path, hacked=True)
    run = report.load_run(hacked)
    report.score_samples(run, ["analytic:brightness"])
    analysis = report.hacking_flags(run, independent=["analytic:brightness"])
    brightness = analysis["series"]["analytic:brightness"]
    assert report.change(brightness[0], brightness[-1]).direction == 1
    assert not [
        f for f in analysis["flags"] if f.kind == "independent_check" and report_builders.RUN_STEPS[-1] in f.steps
    ]
    with pytest.raises(report.ReportInputError, match="--check descore:overall: .* needs --model"):
        report.write_report(clean, tmp_path / "out2", checks=["descore:overall"])
    with pytest.raises(report.ReportInputError, match="--check nonsense: the run logged no such score"):
        report.write_report(clean, tmp_path / "out3", checks=["nonsense"])
    # the command line: refused before, scored now
    assert cli(["report", str(clean), "--output-dir", str(tmp_path / "cli"), "--check", "analytic:redness"]) == 0
    assert (tmp_path / "cli" / "check_scores.jsonl").is_file()
    assert "analytic:redness (independent check)" in (tmp_path / "cli" / "index.html").read_text()


def test_the_trained_rewards_come_from_run_args(runs):
    """run_args.json's --reward names the optimised reward, and a trained reward is never an independent check."""
    run = report.load_run(runs["hacked"])
    run["args"] = {"reward": ["student=1.0"]}
    analysis = report.hacking_flags(run)
    assert analysis["primary"] == "student" and analysis["independent"] == ["descore"]
    run["args"] = {"reward": ["descore=1", "student=0.5"]}
    analysis = report.hacking_flags(run)
    assert analysis["primary"] == "descore" and analysis["independent"] == []
    assert report.hacking_flags(run, primary="student")["primary"] == "student"  # --reward wins


def test_a_model_named_in_the_rows_is_read_like_model(tmp_path):
    """Rows that carry `model` (a DeScore folder) get its record without --model; --model wins."""
    source = report_builders.failing_scored_set(tmp_path)
    judge = report_builders.judge_folder(tmp_path)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    source.write_text("".join(json.dumps({**row, "model": str(judge)}) + "\n" for row in rows))
    page = report.write_report(source, tmp_path / "out").read_text()
    assert "40 videos it was evaluated on" in page and f"judge: {judge}" in page
    source.write_text("".join(json.dumps({**row, "model": "org/some-hub-judge"}) + "\n" for row in rows))
    page = report.write_report(source, tmp_path / "out2").read_text()
    assert "judge: org/some-hub-judge" in page and "40 videos it was evaluated on" not in page
    assert "folder is not at hand" in page


@pytest.mark.parametrize("flat", [False, True])
def test_reward_model_run_page_reads_the_loop_vocabulary_and_old_flat_rows(tmp_path, flat):
    """A recipes/train_rm.py run folder: held-out accuracy with its standard error (std / sqrt(num_items)), the
    CoT parse rate flagged under half, the training curves; a run written before the vocabulary (flat names,
    "final": 1) renders the same numbers."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_args.json").write_text(json.dumps({"stage": 1, "train_data": "t.jsonl", "eval_data": "e.jsonl"}))
    if flat:
        rows = [
            {"step": 1, "loss": 0.7, "bt_loss": 0.7, "lr": 1e-3},
            {"step": 2, "loss": 0.5, "bt_loss": 0.5, "lr": 1e-3},
            {"step": 2, "eval_accuracy_without_ties": 0.75, "eval_cot_parse_rate": 0.25, "final": 1},
        ]
    else:
        rows = [
            {"kind": "train", "step": 1, "train/loss": 0.7, "train/lr": 1e-3, "time/step": 1.0},
            {"kind": "train", "step": 2, "train/loss": 0.5, "train/lr": 1e-3, "time/step": 1.0},
            {
                "kind": "eval",
                "step": 2,
                "eval/accuracy_without_ties": 0.75,
                "eval/accuracy_without_ties_std": 0.5,
                "eval/num_items": 16.0,
                "eval/cot_parse_rate": 0.25,
            },
        ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = report.load_run(run)
    assert [r["step"] for r in loaded["evals"]] == [2] and len(loaded["train"]) == 2
    assert report.training_curves(loaded)["train/loss"] == [(1, 0.7), (2, 0.5)]
    html = report.write_report(run, tmp_path / "out").read_text()
    assert "Reward-model run" in html and "Reward-hacking flags" not in html
    assert ("0.750 ± 0.125" in html) is not flat  # 0.5 / sqrt(16); the flat rows logged no spread
    assert "0.750" in html and "CoTs do not parse" in html and "25%" in html
    # the training curves' caption names the stage's quantities, not post-training's
    assert "the Bradley-Terry loss on the head, the CoT next-token loss" in html
    assert "Flow-DPO" not in html and "GRPO" not in html and "rule reward" not in html
    if not flat:  # stage 2: its GRPO quantities and the rule reward of its rollouts
        (run / "run_args.json").write_text(json.dumps({"stage": 2, "train_data": "t.jsonl"}))
        with open(run / "metrics.jsonl", "a") as rows_file:
            rows_file.write(json.dumps({"kind": "train", "step": 3, "train/policy_loss": 0.1, "reward/rollout": 0.5}))
        html = report.write_report(run, tmp_path / "out2").read_text()
        assert "the GRPO policy loss on the sampled CoTs" in html and "rule reward of the CoTs sampled" in html
        assert "Flow-DPO" not in html and "the CoT next-token loss" not in html
