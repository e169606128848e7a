"""recipes/vbench_mini.py end to end on the tiny Wan: the runs it records are the public recipes' own runs (the
recorded command, run through recipes/wan_flow_dpo.py, writes the very same LoRA), the LoRA loads with diffusers'
own `load_lora_weights`, the figures are fractions with their standard errors, and a run that cannot be run says why
instead of showing numbers."""

import importlib.util
import json
import math
import shlex
import sys
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).parents[1] / "recipes"


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_run(tiny_wan_dir, tmp_path_factory):
    bench = _recipe("vbench_mini")
    out = tmp_path_factory.mktemp("vbench_mini")
    assert (
        bench.main(
            [
                "--output-dir",
                str(out),
                "--pipeline",
                str(tiny_wan_dir),
                "--seeds",
                "0",
                "--runs",
                "base",
                "flow_dpo/truth",
                "flow_dpo/student",
                "--steps",
                "2",
                "--eval-every",
                "1",
                "--train-prompts",
                "2",
                "--held-out-prompts",
                "2",
                "--videos-per-prompt",
                "2",
                "--eval-prompts",
                "2",
                "--baseline-steps",
                "2",
                "--baseline-pairs",
                "4",
            ]
        )
        == 0
    )
    return bench, out, json.loads((out / "results.json").read_text())


def test_results_layout_and_figures(bench_run):
    bench, out, results = bench_run
    assert list(results["runs"]) == ["base", "flow_dpo/truth", "flow_dpo/student"]
    assert "not_run" not in json.dumps(results["runs"])
    # no --student given: the benchmark distilled one from the judge, on the world's pairs, and post-trained with it
    student = out / "student" / "model"
    assert results["arguments"]["student"] is None and (student / "descore_config.json").is_file()
    assert (out / "student" / "run" / "teacher_targets.safetensors").is_file()  # the thinking judge's scores
    command = results["runs"]["flow_dpo/student"]["seeds"]["0"]["command"]
    assert f"--reward-model {student} --no-think" in command
    assert results["prompts"]["held_out"] and not set(results["prompts"]["held_out"]) & set(results["prompts"]["train"])
    for name in ("base", "flow_dpo/truth", "flow_dpo/student"):
        seed = results["runs"][name]["seeds"]["0"]
        for split in ("train", "held_out"):
            columns = seed[split]["columns"]
            assert columns["num_videos"] == 4
            for column in bench.TABLE_COLUMNS:
                key = column[0].split("/", 1)[1]
                if key in columns:
                    p = columns[key]["mean"]
                    assert 0.0 <= p <= 1.0 and columns[key]["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 4))
            assert math.isfinite(seed[split]["judge_reward"]) and 0.0 <= seed[split]["truth_reward"] <= 1.0
            # the share of the judge's CoTs that parsed, and which ones did
            parsed = [row["judge_parsed"] for row in seed[split]["per_video"]]
            assert len(parsed) == 4 and seed[split]["judge_cot_parse_rate"] == sum(parsed) / 4
            assert seed[split]["diversity"] > 0.0  # different noises, different videos
    run = results["runs"]["flow_dpo/truth"]["seeds"]["0"]
    assert [step for step, _ in run["steps_to_level"]["curve"]] == [0, 1, 2]
    assert Path(run["report"]).is_file() and "flow_dpo/truth" in (out / "results.md").read_text()
    assert "judge_on_base_samples" in results
    # every reward model of the benchmark also ranks the base samples, the no-CoT ones without a CoT
    assert set(results["rewards_on_base_samples"]) == {"judge", "judge_no_cot", "student"}
    base_rows = results["runs"]["base"]["seeds"]["0"]["held_out"]["per_video"]
    assert all(math.isfinite(row[name]) for row in base_rows for name in ("judge", "judge_no_cot", "student"))
    assert "| student |" in (out / "results.md").read_text()
    judged = results["rewards_on_base_samples"]["judge"]
    assert 0 <= judged["judge_parsed_pairs"] <= judged["num_pairs"]
    summary = results["runs"]["base"]["summary"]["held_out/judge_cot_parse_rate"]
    assert summary[0] == results["runs"]["base"]["seeds"]["0"]["held_out"]["judge_cot_parse_rate"]
    # --workers 2 (the default): the run was done by a worker process of the benchmark, which logged it and left its
    # record beside its LoRA
    assert (out / "runs" / "flow_dpo_truth" / "seed-0.log").stat().st_size > 0
    assert json.loads((Path(run["lora"]) / bench.RECORD_FILE).read_text())["lora"] == run["lora"]


def test_a_worker_without_its_baseline_says_why_it_cannot_run():
    bench = _recipe("vbench_mini")
    (args,) = bench.parse_config(bench.BenchArguments, ["--output-dir", "unused", "--one-run", "flow_dpo/student:0"])
    reason = bench.reward_flags("student", args)
    assert isinstance(reason, str) and "no --student given" in reason


def test_a_failing_worker_stops_the_benchmark_naming_its_log(tiny_wan_dir, tmp_path):
    bench = _recipe("vbench_mini")
    missing = tmp_path / "no-such-model"
    argv = ["--output-dir", str(tmp_path / "out"), "--pipeline", str(tiny_wan_dir), "--seeds", "0"]
    small = ["--train-prompts", "1", "--held-out-prompts", "1", "--videos-per-prompt", "1", "--steps", "1"]
    with pytest.raises(SystemExit) as error:
        bench.main(
            argv + small + ["--runs", "flow_dpo/truth", "--flow-dpo-args", f"--reward descore --reward-model {missing}"]
        )
    message = str(error.value)
    assert "run flow_dpo/truth seed 0 failed" in message and "seed-0.log" in message
    assert "no-such-model" in message  # the recipe's own error, from the tail of the worker's log


def test_a_missing_baseline_stops_the_benchmark_before_any_run(tiny_wan_dir, tmp_path):
    bench = _recipe("vbench_mini")
    argv = ["--output-dir", str(tmp_path / "out"), "--pipeline", str(tiny_wan_dir), "--seeds", "0"]
    with pytest.raises(FileNotFoundError, match="no-such-student"):
        bench.main(argv + ["--runs", "flow_dpo/student", "--student", str(tmp_path / "no-such-student")])
    assert not (tmp_path / "out" / "runs").exists()


def test_the_recorded_command_is_the_public_recipe(bench_run, tmp_path):
    """Running the command results.json records with recipes/wan_flow_dpo.py writes the same LoRA, bit for bit."""
    from diffusers import WanPipeline
    from safetensors.torch import load_file

    _, _, results = bench_run
    run = results["runs"]["flow_dpo/truth"]["seeds"]["0"]
    command = shlex.split(run["command"])
    assert command[:3] == ["accelerate", "launch", "recipes/wan_flow_dpo.py"]
    argv = command[3:]
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "again")
    assert _recipe("wan_flow_dpo").main(argv) == 0
    ours, again = (
        load_file(str(Path(folder) / "pytorch_lora_weights.safetensors"))
        for folder in (run["lora"], tmp_path / "again")
    )
    assert ours.keys() == again.keys() and all(torch.equal(ours[k], again[k]) for k in ours)

    pipe = WanPipeline.from_pretrained(results["arguments"]["pipeline"])
    pipe.load_lora_weights(run["lora"])  # diffusers' own loader
    assert any("lora" in name for name, _ in pipe.transformer.named_parameters())


def test_method_args_reach_the_recipe_after_the_benchmarks_own_flags(tmp_path):
    """--flow-dpo-args goes to every flow_dpo run, after the benchmark's settings, so that a flag given twice takes the
    user's value: here the learning rate, and --sft-weight (the DPO + SFT option of integrations/flow_dpo.py)."""
    from descore_plugin.integrations.flow_dpo import FlowDPOConfig
    from descore_plugin.integrations.post_training import config_from_argv
    from descore_plugin.utils.args import parse_config

    bench = _recipe("vbench_mini")
    (args,) = parse_config(
        bench.BenchArguments,
        ["--output-dir", str(tmp_path), "--flow-dpo-args", "--sft-weight 50 --learning-rate 1e-5"],
    )
    argv = bench.run_argv("flow_dpo", ["--reward", "world:truth"], args, tmp_path / "p.txt", tmp_path / "run", 0)
    assert argv[-4:] == ["--sft-weight", "50", "--learning-rate", "1e-5"]
    config = config_from_argv("flow_dpo", argv)
    assert config.get(FlowDPOConfig).sft_weight == 50.0
    assert config.adapter.learning_rate == 1e-5  # the benchmark's own 2e-4 came earlier: the user's value wins
    longcat = bench.run_argv("longcat", ["--reward", "world:truth"], args, tmp_path / "p.txt", tmp_path / "run", 0)
    assert "--sft-weight" not in longcat


def test_pair_accuracy_ranks_pairs_that_differ_in_one_of_colour_or_motion_within_a_prompt():
    bench = _recipe("vbench_mini")

    def video(prompt, colour, motion, judge, other, parsed=True):
        checks = {"colour": colour, "direction": motion, "smooth": motion}
        return {"prompt": prompt, "checks": checks, "judge": judge, "other": other, "judge_parsed": parsed}

    rows = [
        video("a", True, True, 1.0, 0.0),
        video("a", False, True, 0.0, 1.0),  # against the first: a colour pair
        video("a", True, False, 0.5, 0.5, parsed=False),  # against the first: a motion pair, one CoT broken;
        # against the second: both differ, no pair
        video("b", False, True, 9.0, 9.0),  # another prompt: paired with none of the above
    ]
    judge, other = bench.judge_pair_accuracy(rows), bench.judge_pair_accuracy(rows, "other")
    assert judge == {
        "num_pairs": 2,
        "accuracy": 1.0,
        "colour_pairs": 1,
        "colour_accuracy": 1.0,
        "motion_pairs": 1,
        "motion_accuracy": 1.0,
        "judge_parsed_pairs": 1,  # the colour pair: both its CoTs parsed
        "judge_parsed_accuracy": 1.0,
    }
    assert (other["num_pairs"], other["accuracy"], other["colour_accuracy"], other["motion_accuracy"]) == (2, 0, 0, 0)
    assert (other["judge_parsed_pairs"], other["judge_parsed_accuracy"]) == (1, 0.0)
    # rows that do not say whether the judge's CoT parsed (a no-CoT measure): no split
    for row in rows:
        del row["judge_parsed"]
    assert "judge_parsed_pairs" not in bench.judge_pair_accuracy(rows)


def test_the_table_gives_mean_and_standard_error_over_seeds_and_the_steps_each_seed_took():
    bench = _recipe("vbench_mini")

    def seed(all_as_asked, first_step):
        split = {"columns": {"num_videos": 4, "all_as_asked": {"mean": all_as_asked, "stderr": 0.0}}}
        out = {"train": split, "held_out": split}
        if first_step is not None:
            out["steps_to_level"] = {"first_step": first_step}
        return out

    run = {"seeds": {"0": seed(0.1, {"+0.05": 10, "+0.10": None}), "1": seed(0.3, None)}}
    run["summary"] = bench.summarise(run)
    row = next(line for line in bench.markdown({"runs": {"flow_dpo/judge": run}}).splitlines() if "flow_dpo" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:3] == ["flow_dpo/judge", "2", "0.200 ± 0.100"]  # std 0.141 (ddof 1) / sqrt(2)
    assert cells[-1] == "10/never, -"  # seed 0 reached +0.05 at step 10 and never +0.10; seed 1 has no curve


def test_a_rerun_reuses_a_finished_run_only_if_it_was_run_as_asked_now(tiny_wan_dir, tmp_path):
    """Resuming: a run that finished is not redone, even when the benchmark was killed before it wrote results.json
    (the record beside the LoRA is enough); a run measured with other settings (here fewer videos per prompt) is."""
    bench = _recipe("vbench_mini")
    out = tmp_path / "out"
    argv = ["--output-dir", str(out), "--pipeline", str(tiny_wan_dir), "--seeds", "0", "--runs", "flow_dpo/truth"]
    argv += ["--steps", "1", "--train-prompts", "1", "--held-out-prompts", "1", "--eval-prompts", "1", "--workers", "1"]
    lora = out / "runs" / "flow_dpo_truth" / "seed-0" / bench.LORA_FILE

    assert bench.main(argv + ["--videos-per-prompt", "1"]) == 0
    written = lora.stat().st_mtime_ns
    results = json.loads((out / "results.json").read_text())
    record = results["runs"].pop("flow_dpo/truth")["seeds"]["0"]
    (out / "results.json").write_text(json.dumps(results))  # as if killed after the run, before collecting it

    assert bench.main(argv + ["--videos-per-prompt", "1"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert lora.stat().st_mtime_ns == written  # not post-trained again
    assert again["runs"]["flow_dpo/truth"]["seeds"]["0"] == json.loads(json.dumps(record))
    assert again["runs"]["base"] == results["runs"]["base"]
    # a base scored by another judge (its marked score would survive a reuse) is measured again
    again["arguments"]["judge"] = "another-judge"
    again["runs"]["base"]["seeds"]["0"]["held_out"]["per_video"][0]["judge"] = 999.0
    (out / "results.json").write_text(json.dumps(again))
    assert bench.main(argv + ["--videos-per-prompt", "1"]) == 0
    rescored = json.loads((out / "results.json").read_text())
    assert rescored["runs"]["base"]["seeds"]["0"]["held_out"]["per_video"][0]["judge"] != 999.0
    assert lora.stat().st_mtime_ns == written  # the run names its judge in its command: still reused

    assert bench.main(argv + ["--videos-per-prompt", "2"]) == 0
    changed = json.loads((out / "results.json").read_text())
    assert lora.stat().st_mtime_ns != written  # the run's figures were of 1 video a prompt: redone
    for name in ("base", "flow_dpo/truth"):
        assert changed["runs"][name]["seeds"]["0"]["held_out"]["columns"]["num_videos"] == 2, name


def test_annotated_samples_of_the_world_generator_are_pairs_a_trainer_reads(tmp_path, capsys):
    """recipes/annotate_world_samples.py on the shipped world generator: its samples, read by the world-truth measure
    and written down by `world_truth.annotate`, make pairs whose CoTs parse to the scores that decide the label,
    with the rendered world pairs mixed in; the file loads as every trainer loads pairs."""
    from descore_plugin.data.pairs import load_pairs
    from descore_plugin.modeling.prompt import parse_answer
    from descore_plugin.testing.clips import overall_score

    recipe = _recipe("annotate_world_samples")
    out = tmp_path / "annotated"
    argv = ["--output-dir", str(out), "--prompts", "3", "--videos-per-prompt", "3", "--world-pairs", "2"]
    assert recipe.main(argv) == 0
    assert "drawing samples: 100%" in capsys.readouterr().err.replace("\r", "\n")  # minutes at the default sizes
    summary = json.loads((out / "annotation.json").read_text())
    assert (summary["prompts"], summary["samples"], summary["world_pairs"]) == (3, 9, 2)
    pairs = load_pairs(out / "pairs.jsonl")
    samples = [pair for pair in pairs if pair.slice == "generator"]
    assert len(samples) == summary["sample_pairs"] > 0 and len(pairs) == len(samples) + 2
    for pair in samples:
        assert Path(pair.video_a).is_file() and Path(pair.video_b).is_file()
        assert Path(pair.video_a).parent == out / "videos"
        for cot, scores in ((pair.cot_a, pair.scores_a), (pair.cot_b, pair.scores_b)):
            answer = parse_answer(cot)
            assert answer.error is None and answer.dimensional_scores == scores
            assert cot.startswith(f"Expect: {pair.prompt}, ")
        overall_a, overall_b = overall_score(pair.scores_a), overall_score(pair.scores_b)
        assert overall_a != overall_b and pair.label == ("A" if overall_a > overall_b else "B")
    from descore_plugin.testing import world_wan

    assert {pair.prompt for pair in samples} <= {scene.prompt for scene in world_wan.training_scenes()[:3]}
