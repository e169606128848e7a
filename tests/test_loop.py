"""The one run loop (descore_plugin/training/loop.py) with a tiny method: cadence, vocabulary, resume, publish,
Ctrl-C."""

import json
from pathlib import Path

import pytest
import torch

from descore_plugin.training.loop import LoopConfig, Method, RunLoop, load_state, save_state, write_curves
from descore_plugin.utils import errors


class Regression:
    """Least squares on random batches: an optimiser, a data RNG stream, and an evaluation."""

    name = "regression"
    curve_names = ("train/loss",)
    may_change_on_resume = ()

    def __init__(self, lr=0.1, interrupt_at=None):
        self.arguments = {"lr": lr}
        self.lr, self.interrupt_at = lr, interrupt_at
        self.calls = []

    def setup(self, loop):
        self.loop = loop
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.optimizer = torch.optim.Adam([self.weight], lr=self.lr)
        self.generator = torch.Generator().manual_seed(1)
        self.target = torch.tensor([1.0, -2.0, 0.5])

    def train_step(self, step):
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append(("train", step))
        x = torch.randn(8, 3, generator=self.generator)
        loss = ((x @ self.weight - x @ self.target) ** 2).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return {"train/loss": loss.item(), "reward/closeness": -loss.item()}

    def evaluate(self, step):
        self.calls.append(("eval", step))
        published = (Path(self.loop.output_dir) / "weights.pt").is_file()
        error = (self.weight.detach() - self.target).pow(2)
        return {
            "eval/closeness": -error.mean().item(),
            "eval/closeness_std": error.std().item(),
            "eval/num_items": 3.0,
            "eval/published_before": float(published),
        }

    def state_dict(self):
        return {
            "weights": {"weight": self.weight.detach().clone()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state):
        with torch.no_grad():
            self.weight.copy_(state["weights"]["weight"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def save_pretrained(self, directory):
        torch.save(self.weight.detach(), Path(directory) / "weights.pt")


def rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_cadence_vocabulary_curves_and_publish_before_the_final_evaluation(tmp_path):
    method = Regression()
    assert isinstance(method, Method)
    result = RunLoop(
        method, LoopConfig(output_dir=str(tmp_path / "run"), max_steps=5, checkpoint_every=2, eval_every=0)
    ).run()
    assert result.step == 5 and result.metrics["eval/published_before"] == 1.0
    # evaluation at the start, after each checkpoint (2, 4) and at the end, after the publish
    assert [c for c in method.calls if c[0] == "eval"] == [("eval", 0), ("eval", 2), ("eval", 4), ("eval", 5)]
    logged = rows(tmp_path / "run")
    assert [(r["kind"], r["step"]) for r in logged] == [
        ("eval", 0),
        ("train", 1),
        ("train", 2),
        ("eval", 2),
        ("train", 3),
        ("train", 4),
        ("eval", 4),
        ("train", 5),
        ("eval", 5),
    ]
    for row in logged:
        assert all(k in ("kind", "step") or k.startswith(("train/", "eval/", "reward/", "time/")) for k in row)
    assert all("time/step" in r and r["train/loss"] == -r["reward/closeness"] for r in logged if r["kind"] == "train")
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-5",
    ]
    assert (tmp_path / "run" / "checkpoint-5" / "weights.safetensors").is_file()
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_resume_equals_an_uninterrupted_run_and_ctrl_c_is_one_line(tmp_path, capsys):
    straight = Regression()
    RunLoop(straight, LoopConfig(output_dir=str(tmp_path / "a"), max_steps=6, checkpoint_every=2)).run()

    def first(argv):
        RunLoop(
            Regression(interrupt_at=3), LoopConfig(output_dir=str(tmp_path / "b"), max_steps=6, checkpoint_every=2)
        ).run()

    errors.set_resume_hint(None)
    assert errors.run_main(first, "prog") == errors.INTERRUPTED_EXIT_STATUS
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"prog: interrupted; at step 3; last checkpoint: {tmp_path / 'b' / 'checkpoint-2'}; run the same command "
        f"with --resume to continue from it"
    )
    resumed = Regression()
    RunLoop(resumed, LoopConfig(output_dir=str(tmp_path / "b"), max_steps=6, checkpoint_every=2, resume=True)).run()
    assert resumed.calls[0] == ("train", 2)  # the evaluation of step 2 was done before the interrupt
    assert torch.equal(straight.weight, resumed.weight)  # optimizer state and the data stream came back
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "a")) == strip(rows(tmp_path / "b"))


def test_an_evaluation_interrupted_after_its_checkpoint_runs_again_on_resume(tmp_path):
    class StopInEval(Regression):
        def evaluate(self, step):
            if step == 2:
                raise KeyboardInterrupt
            return super().evaluate(step)

    with pytest.raises(KeyboardInterrupt):
        RunLoop(StopInEval(), LoopConfig(output_dir=str(tmp_path), max_steps=4, checkpoint_every=2)).run()
    resumed = Regression()
    RunLoop(resumed, LoopConfig(output_dir=str(tmp_path), max_steps=4, checkpoint_every=2, resume=True)).run()
    assert resumed.calls[:2] == [("eval", 2), ("train", 2)]
    assert [(r["kind"], r["step"]) for r in rows(tmp_path)].count(("eval", 2)) == 1


def test_no_evaluation_at_the_start_when_asked_and_no_empty_eval_rows(tmp_path):
    class Quiet(Regression):
        evaluate_at_start = False

        def evaluate(self, step):
            if step < 4:
                self.calls.append(("eval", step))
                return {}
            return super().evaluate(step)

    method = Quiet()
    RunLoop(method, LoopConfig(output_dir=str(tmp_path), max_steps=4, checkpoint_every=2)).run()
    assert [c for c in method.calls if c[0] == "eval"] == [("eval", 2), ("eval", 4)]
    assert [(r["kind"], r["step"]) for r in rows(tmp_path) if r["kind"] == "eval"] == [("eval", 4)]


def test_metric_names_outside_the_vocabulary_are_refused(tmp_path):
    class Flat(Regression):
        def train_step(self, step):
            return {"loss": 1.0}

    with pytest.raises(ValueError, match=r"\['loss'\]: metric names start with one of train/"):
        RunLoop(Flat(), LoopConfig(output_dir=str(tmp_path), max_steps=1)).run()


def test_state_files_split_tensor_dicts_into_safetensors(tmp_path):
    state = {
        "lora": {"a": torch.ones(2)},
        "optimizer": {"state": {}, "lr": 0.1},
        "rng": torch.get_rng_state(),
        "step_counter": 3,
    }
    save_state(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors", "state.pt"]
    loaded = load_state(tmp_path)
    assert torch.equal(loaded["lora"]["a"], torch.ones(2)) and loaded["step_counter"] == 3
    assert torch.equal(loaded["rng"], state["rng"]) and loaded["optimizer"] == {"state": {}, "lr": 0.1}


def test_curves_draw_evaluations_rewards_and_training_curves(tmp_path):
    rows_ = [
        {"kind": "eval", "step": 0, "eval/r": 0.1, "eval/r_std": 0.2, "eval/num_items": 4},
        {"kind": "train", "step": 1, "train/loss": 0.5, "reward/r": 0.2},
        {"kind": "eval", "step": 1, "eval/r": None, "eval/r_std": None, "eval/num_items": 4},
    ]
    assert write_curves(rows_, tmp_path / "c.png", ["train/loss", "train/absent"]).stat().st_size > 1000


def test_hooks_of_the_reward_model_trainers(tmp_path):
    """What the reward-model trainers use: start() before run(), checkpoint_every 0 (only the final checkpoint),
    no evaluation at checkpoints (eval_every alone), per-process state files <name>-<rank>.pt read back on resume,
    and a method's own checkpoint layout (write_checkpoint / read_checkpoint)."""

    class Own(Regression):
        evaluate_at_start = False
        evaluate_at_checkpoints = False

        def process_state(self):
            return {"rollouts": {"drawn": len(self.calls)}}

        def load_process_state(self, state):
            self.restored = state

        def write_checkpoint(self, directory, state):
            torch.save(state, directory / "own.pt")

        def read_checkpoint(self, directory):
            self.load_state_dict(torch.load(directory / "own.pt", weights_only=False))

    method = Own()
    loop = RunLoop(method, LoopConfig(output_dir=str(tmp_path), max_steps=4, checkpoint_every=0, eval_every=2))
    assert loop.start() is loop and method.loop is loop and loop.step == 0  # set up, nothing trained yet
    result = loop.run()
    assert [c for c in method.calls if c[0] == "eval"] == [("eval", 2), ("eval", 4)]
    assert result.train["step"] == 4 and "train/loss" in result.train
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4"]
    files = sorted(p.name for p in (tmp_path / "checkpoint-4").iterdir())
    assert files == ["own.pt", "rollouts-0.pt", "run_state.json"]
    resumed = Own()
    loop = RunLoop(resumed, LoopConfig(output_dir=str(tmp_path), max_steps=5, checkpoint_every=0, resume=True))
    loop.run()
    assert loop.resumed and resumed.restored == {"rollouts": {"drawn": 5}}  # 4 steps and step 2's evaluation
    assert resumed.calls[0] == ("train", 4)  # eval_every 0 now: step 4 is not due again, and it was evaluated
