"""What every reward-model trainer shares (DeScore Sec. 3.2-3.3): `RewardModelTrainer` is a `Method` of the one run
loop (`descore_plugin.training.loop.RunLoop`, which owns the run directory, resume, the checkpoint and evaluation
cadence, metric logging, the progress bar, curves and the final publish, as for post-training). This file adds
what a reward model needs: the accelerator with its trackers, the data and its check, the model and its optimizer,
one optimiser step with gradient accumulation and clipping, the divergence guard, the held-out evaluation and the
checkpoint layout (`model/` that loads with from_pretrained, gathered in full under FSDP). A method
(stage1.ColdStartTrainer, stage2.DualObjectiveTrainer, distill.DistillationTrainer) says what one micro-batch's loss
is, which weights train and what else it keeps, through the hooks of the "what a method says" section.

Runs single-process on a CPU and under `accelerate launch` on many GPUs (DDP, DeepSpeed or FSDP from accelerate's
config); there is no hand-written distributed code. Resuming is exact: the data order and every random draw are
functions of (seed, step), and checkpoints hold the trainable weights, optimizer, scheduler and each process's
method state (stage 2: the rollouts of the current rollout batch).

Metrics (docs/training.md, "Logged metrics"): train/... (losses, accuracy on the batch, gradient norms, learning
rate), reward/... (stage 2's rule rewards of the rollouts), eval/... (held-out accuracy, CoT parse rate), time/step.
"""

import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from descore_plugin.data.check import SKIPPED_ROWS_FILE, check_training_videos, sampling_settings, write_skipped_rows
from descore_plugin.data.loader import InputEncoder, PairCollator, PairDataset, PairOrder, VideoCache, pair_loader
from descore_plugin.data.pairs import DataError, load_pairs
from descore_plugin.data.video import load_video
from descore_plugin.evaluation.preference import evaluate_pairs
from descore_plugin.modeling.model import BACKBONE_DIR, DeScoreReward
from descore_plugin.modeling.prompt import parse_answer
from descore_plugin.training.config import RM_CHANGEABLE_ON_RESUME, TrainConfig
from descore_plugin.training.embedding_rows import TrainableRow
from descore_plugin.training.full_state import gather_state, is_sharded, load_state
from descore_plugin.training.loop import LoopConfig, RunLoop
from descore_plugin.training.runs import field_defaults
from descore_plugin.utils.device import to_device as _to  # noqa: F401 (the trainers import it from here)
from descore_plugin.utils.seeding import torch_seed as _mix

__all__ = ["RewardModelTrainer", "merge_adapter", "loop_config", "LABEL_SIGN"]

LABEL_SIGN = {"A": 1, "B": -1, "tie": 0, "invalid": 0}
logger = logging.getLogger(__name__)


def loop_config(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> LoopConfig:
    """The run loop's settings of a reward-model run: --save-steps is the checkpoint cadence (0: only the final
    one), --eval-steps the evaluation cadence (0: only the final evaluation), --save-total-limit checkpoints kept."""
    return LoopConfig(
        output_dir=str(config.output_dir),
        max_steps=config.max_steps,
        checkpoint_every=config.save_steps,
        eval_every=config.eval_steps,
        resume=resume,
        overwrite=overwrite,
        keep_last=config.save_total_limit or None,
    )


class RewardModelTrainer:
    """One reward-model training run, a `loop.Method`; subclasses are the methods (see the module docstring).

    `Trainer(config)` leaves it set up: data checked, run directory open, model loaded and prepared, and with
    `resume` the newest checkpoint loaded (`step`, `resumed`); `train()` runs the loop to `max_steps`."""

    evaluate_at_start = False  # the start model's accuracy is what eval_rm.py is for; a run evaluates what it trains
    evaluate_at_checkpoints = False  # --eval-steps alone says when (a CoT per video is slow)
    curve_names = ("train/loss",)
    may_change_on_resume = RM_CHANGEABLE_ON_RESUME

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False):
        """Check the data (before the run directory is opened when that creates it: a data error leaves no run
        behind), open the run directory (`runs.Run`: an existing run needs `resume` or `overwrite`; `resume` refuses
        a changed flag other than RM_CHANGEABLE_ON_RESUME), load the model, and continue from the newest checkpoint
        when `resume` is set."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config = config.resolve()
        self.output_dir = Path(config.output_dir)
        project = ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs"))
        log_with = config.log_with if config.log_with != "none" and _tracker_available(config.log_with) else None
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            log_with=log_with,
            project_config=project,
            step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, on any number of processes
        )
        self.accumulation = self.micro_batches_per_step(self.accelerator.num_processes)
        self.accelerator.gradient_accumulation_steps = self.accumulation
        self.train_pairs = self._load_train(config.train_data)
        # Evaluation sees every pair of its file, ties included (even when it is the training file); evaluate_pairs
        # leaves out only the pairs labelled "invalid", and counts them.
        self.eval_pairs = load_pairs(config.eval_data, label_column=config.label_column) if config.eval_data else None
        # Every distinct video is decoded before the model loads (datacheck.py), with the checkpoint's sampling
        # settings when its config tells them: before the run directory is opened when that creates it (a bad video
        # leaves no run behind), else after the run directory's own checks (a refused re-run decodes nothing).
        self.sampling = sampling_settings(config.model)  # (fps, num_frames), None when known only once loaded
        self.creates_run = not (self.output_dir.is_dir() and any(self.output_dir.iterdir()))
        if self.sampling is not None and self.creates_run:
            self._check_videos(*self.sampling)
        self.loop = RunLoop(self, loop_config(config, resume, overwrite), self.accelerator)
        self.loop.start()  # opens the run directory, calls setup, resumes

    # ------------------------------------------------------------------ the loop's view
    @property
    def name(self) -> str:
        return f"stage {self.config.stage}"

    @property
    def arguments(self) -> dict:
        return _jsonable(self.config)

    @property
    def argument_defaults(self) -> dict:
        """Each config field's default (a field a run began without is taken at it on --resume)."""
        return field_defaults(self.config)

    @property
    def tracker_config(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self.config).items() if isinstance(v, (int, float, str, bool))}

    @property
    def step(self) -> int:
        """Optimiser steps done (during a step: its 0-based index)."""
        return self.loop.step

    @property
    def resumed(self) -> bool:
        return self.loop.resumed

    @property
    def run(self):
        return self.loop.run_dir

    def setup(self, loop: RunLoop) -> None:
        """Called by the loop once the run directory is open: load and prepare the model, optimizer and scheduler."""
        config = self.config
        if self.sampling is not None and not self.creates_run:
            self._check_videos(*self.sampling)
        torch.manual_seed(config.seed)  # the LoRA initialisation draws from the global generator
        model = merge_adapter(DeScoreReward.from_pretrained(config.model))
        if self.sampling != (model.config.fps, model.config.num_frames):  # known only now (e.g. a hub id)
            self._check_videos(model.config.fps, model.config.num_frames)
        self._record_cot_length(model)
        if config.pure_bf16:  # the official stage-2 numerics: no float32 copy anywhere (see TrainConfig.pure_bf16)
            model.to(torch.bfloat16)
        if config.skip_bad_rows and self.accelerator.is_main_process:
            write_skipped_rows(self.output_dir / SKIPPED_ROWS_FILE, self.skipped_rows)
        self.videos = VideoCache(model.config.fps, model.config.num_frames, config.video_cache_bytes)
        self.encoder = InputEncoder(model)  # what the loader's workers need to build the model's inputs
        self._before_training_setup(model)
        self._set_trainable(model)
        if config.gradient_checkpointing:
            model.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW(self._param_groups(model), weight_decay=config.weight_decay)
        warmup = max(1, int(config.warmup_ratio * config.max_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.trainable_row = None  # full fine-tuning: only the <Reward> row of the input embeddings moves
        if config.lora_rank == 0 and config.train_embeddings == "reward_token":
            weight = self.accelerator.unwrap_model(self.model).vlm.get_input_embeddings().weight  # a DTensor if sharded
            self.trainable_row = TrainableRow(weight, model.reward_token_id, self.optimizer.optimizer)
        self._after_prepare()
        self._batches = None  # the loader's iterator, started at the first step this process runs
        resuming = loop.config.resume and loop.run_dir.latest_checkpoint() is not None
        self._before_first_step(self.creates_run, resuming)

    # ------------------------------------------------------------------ what a method says
    requires_scores = False
    """The training pairs need stage-2 ground-truth scores."""
    needs_decided_pairs = False
    """A file whose every pair has no loss term is refused."""
    loader_builds_inputs = False
    """The loader's workers build the model inputs (stage 1); otherwise they decode the videos only."""

    def micro_batches_per_step(self, num_processes: int) -> int:
        """Micro-batches per optimiser step on each process."""
        return self.config.gradient_accumulation_steps

    def labels_without_loss_term(self) -> set:
        """Labels whose pairs carry no loss term (kept as rows of loss 0 or dropped, --undecided-rows)."""
        return {"invalid"}

    def lm_head_trains(self) -> bool:
        """The output head trains in full fine-tuning only where a loss reads the logits: elsewhere it would get no
        gradient, which DDP refuses ("parameters that were not used")."""
        return self.config.lm_loss_weight > 0

    def _record_cot_length(self, model: DeScoreReward):
        """Write into the model's config the CoT length it is trained on (scoring sizes its default limit to it)."""

    def _before_training_setup(self, model: DeScoreReward):
        """Called with the loaded start model before its trainable weights are set (e.g. to copy a reference)."""

    def _after_prepare(self):
        """Called once the model, optimizer and scheduler are prepared."""

    def _before_first_step(self, creates_run: bool, resuming: bool):
        """Called at the end of set-up; `resuming`: the loop will load a checkpoint next."""

    def next_batch(self, micro_step: int, batches) -> dict:
        """This process's batch of `micro_step` from the loader iterator `batches`."""
        return next(batches)

    def loss(self, micro_step: int, batch: dict, rng: np.random.Generator) -> dict:
        """{"loss": tensor, "logs": {name: float}} of one micro-batch."""
        raise NotImplementedError

    def process_state(self) -> dict | None:
        """{name: object} this process keeps across a checkpoint beyond the weights (the loop writes
        checkpoint-N/<name>-<rank>.pt); None: nothing."""
        return None

    def load_process_state(self, state: dict):
        """What `process_state` returned, read back on resume."""

    # ------------------------------------------------------------------ set-up
    def _check_videos(self, fps, num_frames):
        """Decode every distinct video of the training and evaluation pairs as training will (datacheck.py); a bad
        one stops here naming file, row and field, or with --skip-bad-rows its rows are left out and listed."""
        self.train_pairs, self.eval_pairs, self.skipped_rows = check_training_videos(
            self.train_pairs,
            self.eval_pairs,
            lambda path: load_video(path, fps=fps, num_frames=num_frames),
            train_data=self.config.train_data,
            eval_data=self.config.eval_data,
            skip=self.config.skip_bad_rows,
            report_path=self.output_dir / SKIPPED_ROWS_FILE,
            main_process=self.accelerator.is_main_process,
        )

    def _load_train(self, path) -> list:
        """The training pairs. Rows without a decided verdict (ties where the loss has no term for them, rows labelled
        "invalid") stay as rows of loss 0 (--undecided-rows zero_loss, official) or are dropped (drop); what was
        dropped or kept without a loss, and why, is logged."""
        config = self.config
        pairs = load_pairs(path, require_scores=self.requires_scores, label_column=config.label_column)
        no_term = self.labels_without_loss_term()
        undecided = [p for p in pairs if p.label in no_term]
        keep = pairs if config.undecided_rows == "zero_loss" else [p for p in pairs if p.label not in no_term]
        invalid, ties = sum(p.label == "invalid" for p in undecided), sum(p.label == "tie" for p in undecided)
        if not keep or (self.needs_decided_pairs and len(undecided) == len(pairs)):
            raise DataError(
                f"{path}: no usable pairs for training (of {len(pairs)}: {invalid} labelled 'invalid', "
                f"{ties} ties, which --loss bt has no term for; --loss bt_ties trains on ties)"
            )
        if undecided and self.accelerator.is_main_process:
            reasons = " and ".join(
                ([f"{invalid} labelled 'invalid' (no verdict)"] if invalid else [])
                + ([f"{ties} ties (--loss bt has no term for a tie; --loss bt_ties has)"] if ties else [])
            )
            if config.undecided_rows == "drop":
                logger.warning(
                    "training on %d of %d pairs of %s: dropped %s (--undecided-rows drop)",
                    len(keep),
                    len(pairs),
                    path,
                    reasons,
                )
            else:
                logger.warning(
                    "training on all %d pairs of %s: %s stay as rows of loss 0 that count in the batch "
                    "mean, as officially (--undecided-rows drop leaves them out)",
                    len(pairs),
                    path,
                    reasons,
                )
        return keep

    def _set_trainable(self, model: DeScoreReward):
        config = self.config
        model.requires_grad_(False)
        if config.lora_rank > 0:
            model.add_lora(
                config.lora_rank,
                config.lora_alpha,
                config.lora_dropout,
                train_reward_token=config.train_embeddings == "reward_token",
            )
        else:
            model.vlm.model.language_model.requires_grad_(True)
            # The output head learns only where a loss reads the logits (stage 2's policy, the CoT next-token loss):
            # elsewhere it would get no gradient, which DDP refuses ("parameters that were not used").
            model.vlm.lm_head.requires_grad_(self.lm_head_trains())
        embeddings = model.vlm.get_input_embeddings()
        if config.train_embeddings == "all":
            embeddings.requires_grad_(True)
        elif config.lora_rank == 0:
            # Only the <Reward> row learns (official); peft's trainable tokens do this when there is an adapter, and
            # TrainableRow (set up once the model is prepared, sharded or not) without one.
            embeddings.weight.requires_grad_(True)
        model.vlm.model.visual.requires_grad_(bool(config.train_vision))
        model.head.requires_grad_(True)
        model.train()

    def _param_groups(self, model: DeScoreReward) -> list:
        config = self.config
        lr = config.learning_rate
        groups = {"head": [], "vision": [], "embeddings": [], "other": []}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("head."):
                groups["head"].append(param)
            elif ".visual." in name:
                groups["vision"].append(param)
            elif "embed_tokens" in name:
                groups["embeddings"].append(param)
            else:
                groups["other"].append(param)
        rates = {
            "head": config.head_learning_rate,
            "vision": config.vision_learning_rate,
            "embeddings": config.embedding_learning_rate,
            "other": None,
        }
        return [{"params": params, "lr": rates[name] or lr, "name": name} for name, params in groups.items() if params]

    # ------------------------------------------------------------------ data
    def _collator(self) -> PairCollator:
        config = self.config
        encodes = self.loader_builds_inputs  # stage 1 gets its whole input from the workers; 2 and 3 decoded videos
        return PairCollator(
            self.encoder if encodes else None,
            self.accelerator.num_processes,
            config.seed,
            config.cot_mask_prob if encodes else 0.0,
            with_labels=config.lm_loss_weight > 0,
        )

    def train_loader(self, start_micro_step: int):
        """This process's batches from `start_micro_step` to the end of training, prepared by accelerate (each rank
        its shard, tensors on the device). The order is a function of (seed, micro_step, rank) (dataset.py)."""
        config, accelerator = self.config, self.accelerator
        model = accelerator.unwrap_model(self.model)
        loader = pair_loader(
            self.train_pairs,
            fps=model.config.fps,
            num_frames=model.config.num_frames,
            batch_size=config.batch_size,
            seed=config.seed,
            start_micro_step=start_micro_step,
            stop_micro_step=self._last_micro_step(),
            num_processes=accelerator.num_processes,
            collate=self._collator(),
            num_workers=config.num_workers,
            prefetch_factor=config.prefetch_factor,
            cache_bytes=config.video_cache_bytes,
            pin_memory=accelerator.device.type == "cuda",
        )
        return accelerator.prepare(loader)

    def _last_micro_step(self) -> int:
        """Where this process's batches end."""
        return self.config.max_steps * self.accumulation

    def batch_for(self, micro_step: int) -> dict:
        """This process's batch of one micro-step, built in this process (what the loader yields at that step)."""
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        dataset = PairDataset(self.train_pairs, model.config.fps, model.config.num_frames)
        order = PairOrder(len(self.train_pairs), config.seed)
        g = micro_step * self.accelerator.num_processes + self.accelerator.process_index
        return self._collator()(
            [dataset[(g, order[g * config.batch_size + slot])] for slot in range(config.batch_size)]
        )

    # ------------------------------------------------------------------ one step
    def train(self) -> dict:
        """Run the loop from `step` to max_steps: checkpoints, the final checkpoint and publish (the model in
        output_dir itself), then the final evaluation. Returns the last training row's metrics with the final
        evaluation's (train/..., reward/..., time/..., eval/...)."""
        loop, config = self.loop.config, self.config
        loop.max_steps, loop.checkpoint_every, loop.eval_every = config.max_steps, config.save_steps, config.eval_steps
        loop.keep_last = config.save_total_limit or None
        result = self.loop.run()
        return {k: v for row in (result.train, result.metrics) for k, v in row.items() if k not in ("kind", "step")}

    def train_step(self, step: int) -> dict:
        """One optimiser step: `accumulation` micro-batches (each seeded by (seed, micro-step, rank)), gradient
        clipping, the optimizer and the schedule. Returns the step's mean of each micro-batch metric, the gradient
        norms before clipping and the learning rate."""
        config, accelerator = self.config, self.accelerator
        if self._batches is None:
            self._batches = iter(self.train_loader(step * self.accumulation))
        step_logs, clip_logs = [], {}
        for micro in range(self.accumulation):
            micro_step = step * self.accumulation + micro
            # first: starting the loader draws its workers' base seed from torch's RNG
            batch = self.next_batch(micro_step, self._batches)
            torch.manual_seed(_mix(config.seed, micro_step, accelerator.process_index))  # dropout, sampling
            rng = np.random.default_rng([config.seed, micro_step, accelerator.process_index])
            with accelerator.accumulate(self.model):
                result = self.loss(micro_step, batch, rng)
                if not torch.isfinite(result["loss"]):
                    self._diverged(result["logs"])
                accelerator.backward(result["loss"])
                if accelerator.sync_gradients:
                    if self.trainable_row is not None:
                        self.trainable_row.mask_gradient()  # before clipping: the frozen rows count for nothing
                    clip_logs = self._clip_gradients()
                self.optimizer.step()
                if accelerator.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            step_logs.append(result["logs"])
        logs = {key: _mean([entry[key] for entry in step_logs]) for key in step_logs[0]}
        logs.update(clip_logs)
        logs["train/lr"] = self.scheduler.get_last_lr()[0]
        return logs

    def _clip_gradients(self) -> dict:
        """Clip to --max-grad-norm: the head's gradient and the rest's each on its own (official stage 2 under FSDP),
        or one norm over both (--grad-norm-groups joint). Returns the norms before clipping."""
        config, accelerator = self.config, self.accelerator
        if not config.max_grad_norm:
            return {}
        if config.grad_norm_groups == "joint":
            return {
                "train/grad_norm": _float(accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm))
            }
        head = {id(p) for p in accelerator.unwrap_model(self.model).head.parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        actor, head_params = [p for p in trainable if id(p) not in head], [p for p in trainable if id(p) in head]
        logs = {"train/head_grad_norm": _float(accelerator.clip_grad_norm_(head_params, config.max_grad_norm))}
        if actor:
            logs["train/grad_norm"] = _float(accelerator.clip_grad_norm_(actor, config.max_grad_norm))
        return logs

    def _diverged(self, logs: dict):
        last = self.run.latest_checkpoint()
        keep = f"; the last good checkpoint is {last}" if last else "; no checkpoint was written yet"
        raise FloatingPointError(
            f"step {self.step + 1}: the loss is not finite ({logs}); training stopped{keep}. "
            f"Lower the learning rate or check the data, then --resume"
        )

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, step: int | None = None) -> dict:
        """Held-out preference accuracy of the current model (with and without ties, the official ties-as-errors
        figure, per slice), with a progress bar; the CoT parse rate when it thinks (a warning when no CoT parses).
        eval/num_items counts the decided pairs behind eval/accuracy_without_ties, whose eval/..._std is the sample
        std of their 0/1 correctness (std / sqrt(num_items) is its standard error). {} without --eval-data."""
        if not self.eval_pairs:
            return {}
        step = self.step if step is None else step
        model = self.accelerator.unwrap_model(self.model)
        result = evaluate_pairs(
            model,
            self.eval_pairs,
            think=self.config.eval_think,
            batch_size=16,
            max_new_tokens=self.config.eval_max_new_tokens,
            progress=self.accelerator.is_main_process,
            num_workers=self.config.num_workers,
        )
        logs = {
            "eval/accuracy_with_ties": result["accuracy_with_ties"],
            "eval/accuracy_ties_as_errors": result["accuracy_ties_as_errors"],
        }
        decided, accuracy = result["num_pairs_without_ties"], result["accuracy_without_ties"]
        if accuracy is not None:
            logs["eval/accuracy_without_ties"] = accuracy
            logs["eval/num_items"] = float(decided)
            if decided > 1:  # the sample std of n values of 0 and 1 with mean p: sqrt(p (1 - p) n / (n - 1))
                logs["eval/accuracy_without_ties_std"] = math.sqrt(accuracy * (1 - accuracy) * decided / (decided - 1))
        for name, value in result.get("accuracy_without_ties_by_slice", {}).items():
            if name != "all":
                logs[f"eval/accuracy_{name}"] = value
        if self.config.eval_think:
            cots = [cot for row in result["rows"] for cot in (row["cot_a"], row["cot_b"])]
            logs["eval/cot_parse_rate"] = float(np.mean([parse_answer(c).error is None for c in cots]))
            if logs["eval/cot_parse_rate"] == 0 and self.accelerator.is_main_process:
                logger.warning(
                    "step %d: none of the %d CoTs the model wrote for the evaluation pairs parses (no "
                    "<answer> JSON with an overall score): it has not learnt to write the answer format; "
                    "stage 1 teaches it with --lm-loss-weight > 0 and CoTs in the data",
                    step,
                    len(cots),
                )
        return logs

    # ------------------------------------------------------------------ checkpoints (the loop's hooks)
    def state_dict(self) -> dict:
        """The model's trainable weights and optimizer state (under FSDP gathered in full on the main process: a
        collective, every process calls it), the whole model for checkpoint-N/model, and the scheduler."""
        model = self.accelerator.unwrap_model(self.model)
        gathered = gather_state(model, self.optimizer, main_process=self.accelerator.is_main_process)
        return {"gathered": gathered, "scheduler": self.scheduler.state_dict()}

    def write_checkpoint(self, directory: Path, state: dict) -> None:
        """checkpoint-N/: the model in the DeScore format (loads with from_pretrained), trainable.safetensors,
        optimizer.pt, scheduler.pt (the loop adds each process's `process_state`, stage 2: rollouts-<rank>.pt)."""
        gathered, model = state["gathered"], self.accelerator.unwrap_model(self.model)
        model.save_pretrained(directory / "model", state_dict=gathered.model)
        save_file(gathered.trainable, directory / "trainable.safetensors")
        torch.save(gathered.optimizer, directory / "optimizer.pt")
        torch.save(state["scheduler"], directory / "scheduler.pt")

    def read_checkpoint(self, directory: Path) -> None:
        """Load what `write_checkpoint` wrote (collective under FSDP: rank 0 reads, every process keeps its shards)."""
        load_state(self.accelerator.unwrap_model(self.model), self.optimizer, directory)
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", map_location="cpu", weights_only=True))

    def load_state_dict(self, state: dict) -> None:
        """Put back a `state_dict()` of this process (an unsharded model; a sharded one resumes from its files)."""
        model = self.accelerator.unwrap_model(self.model)
        if is_sharded(model):
            raise ValueError("a sharded (FSDP) trainer loads its state from a checkpoint directory (read_checkpoint)")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["gathered"].trainable.items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["gathered"].optimizer)
        self.scheduler.load_state_dict(state["scheduler"])

    def save_pretrained(self, directory: Path) -> None:
        """The final publish: the last checkpoint's model copied to `directory` (output_dir), file by file with
        atomic renames, the config last: a reader sees descore_config.json only once everything else is in place."""
        directory = Path(directory)
        source = self.output_dir / f"checkpoint-{self.step}" / "model"
        entries = sorted(source.iterdir(), key=lambda p: p.name == "descore_config.json")
        for entry in entries:
            target = directory / entry.name
            tmp = directory / f".{entry.name}.tmp"
            if entry.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(entry, tmp)
                if target.exists():
                    shutil.rmtree(target)
            else:
                shutil.copy2(entry, tmp)
            os.replace(tmp, target)


def merge_adapter(model: DeScoreReward) -> DeScoreReward:
    """Fold a loaded LoRA adapter (and its trained `<Reward>` row) into the backbone weights, so that training
    starts from one plain model: a new adapter or full fine-tuning sits on top of it, and "adapter off" or a frozen
    copy is exactly this model. The merged weights exist nowhere else, so the model's backbone now lives in its
    own `backbone/` folder when saved."""
    from peft import PeftModel

    if isinstance(model.backbone, PeftModel):
        model.backbone = model.backbone.merge_and_unload()
        model.config.lora_rank = 0
        model.config.backbone = BACKBONE_DIR
    return model


def _mean(values: list) -> float:
    """Mean over the micro-batches of a step, leaving out NaN (a metric a micro-batch had no rows for)."""
    known = [v for v in values if not math.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def _float(norm) -> float:
    """A gradient norm as a float (a DTensor under FSDP2 is made whole first)."""
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(norm)


def _jsonable(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _tracker_available(name: str) -> bool:
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return False
    return True
