"""The run directory (descore_plugin.training.runs): re-runs never mix, --resume refuses changes that cannot apply."""

import json

import pytest

from descore_plugin.training.runs import Run, RunError


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    run = Run.open(out, {"lora_rank": 64, "max_steps": 2})
    run.log({"step": 1, "loss": 0.5})
    with pytest.raises(RunError, match="--resume.*--overwrite"):
        Run.open(out, {"lora_rank": 64, "max_steps": 2})
    again = Run.open(out, {"lora_rank": 8, "max_steps": 2}, overwrite=True)  # a fresh run: old metrics gone
    assert again.metrics() == [] and json.loads((out / "run_args.json").read_text())["lora_rank"] == 8
    with pytest.raises(RunError, match="exclude each other"):
        Run.open(out, {}, resume=True, overwrite=True)


def test_overwrite_never_deletes_a_folder_that_holds_no_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(RunError, match="holds no run"):
        Run.open(tmp_path, {"max_steps": 1}, overwrite=True)
    assert (tmp_path / "thesis.tex").is_file()


def test_resume_refuses_changes_that_cannot_apply_and_takes_those_that_can(tmp_path):
    args = {"lora_rank": 64, "learning_rate": 1e-4, "max_steps": 2, "resume": False}
    Run.open(tmp_path, args)
    with pytest.raises(RunError, match=r"--lora-rank was 64 .* now 8.*Changeable on --resume: --max-steps"):
        Run.open(tmp_path, {**args, "lora_rank": 8}, resume=True, may_change=["max_steps"])
    with pytest.raises(RunError, match="--learning-rate was 0.0001"):
        Run.open(tmp_path, {**args, "learning_rate": 1e-3}, resume=True, may_change=["max_steps"])
    run = Run.open(tmp_path, {**args, "max_steps": 5, "resume": True}, resume=True, may_change=["max_steps"])
    assert run.resumed and json.loads((tmp_path / "run_args.json").read_text())["max_steps"] == 5
    with pytest.raises(RunError, match="no run to continue"):
        Run.open(tmp_path / "empty", args, resume=True)


def test_resume_takes_an_argument_added_since_the_run_began_at_its_default_only(tmp_path):
    """A run begun before the package added a flag (run_args.json lacks it) resumes when the flag is at its default,
    and is refused, naming the flag, when it is not: the run goes on as it began."""
    Run.open(tmp_path, {"lora_rank": 64, "max_steps": 2})
    defaults = {"unparsed_cot": "score", "lora_rank": 16}
    new = {"lora_rank": 64, "max_steps": 2, "unparsed_cot": "score"}
    assert Run.open(tmp_path, new, resume=True, defaults=defaults).resumed
    assert json.loads((tmp_path / "run_args.json").read_text())["unparsed_cot"] == "score"
    (tmp_path / "run_args.json").write_text(json.dumps({"lora_rank": 64, "max_steps": 2}))
    with pytest.raises(RunError, match="--unparsed-cot was 'score' .* now 'nan'"):
        Run.open(tmp_path, {**new, "unparsed_cot": "nan"}, resume=True, defaults=defaults)
    with pytest.raises(RunError, match="--lora-rank was 64"):  # a recorded argument is compared as recorded
        Run.open(tmp_path, {**new, "lora_rank": 16}, resume=True, defaults=defaults)
    with pytest.raises(RunError, match="--unparsed-cot was None"):  # without defaults: refused as before
        Run.open(tmp_path, new, resume=True)


def test_checkpoints_are_atomic_and_resume_drops_later_metrics(tmp_path):
    run = Run.open(tmp_path, {"max_steps": 4})
    for step in (1, 2, 3):
        run.log({"step": step, "loss": float(step), "nan": float("nan")})
        if step < 3:
            run.save_checkpoint(step, lambda d: (d / "weights.txt").write_text("w"), keep_last=1)

    def crash(directory):
        (directory / "half.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # killed while saving: no checkpoint-3 appears
        run.save_checkpoint(3, crash)
    assert [p.name for p in run.checkpoints()] == ["checkpoint-2"]  # keep_last=1 removed checkpoint-1
    assert not (tmp_path / "checkpoint-3").exists()
    assert run.metrics()[0]["nan"] is None  # strict JSON
    resumed = Run.open(tmp_path, {"max_steps": 4}, resume=True)
    assert resumed.resume_step() == 2 and [r["step"] for r in resumed.metrics()] == [1, 2]


def test_caches_are_keyed_by_what_produced_them(tmp_path):
    run = Run.open(tmp_path, {})
    pairs = run.cache_dir("pairs", {"reward_model": "analytic:redness", "num_frames": 9})
    same = run.cache_dir("pairs", {"num_frames": 9, "reward_model": "analytic:redness"})
    other = run.cache_dir("pairs", {"reward_model": "descore-7b", "num_frames": 9})
    assert pairs == same and pairs != other and pairs.name.startswith("pairs-")
    assert json.loads((other / "key.json").read_text())["reward_model"] == "descore-7b"
