"""Training DeScore: stage 1 (discriminative cold start) and stage 2 (dual-objective RL), DeScore Sec. 3.2-3.3.

    stage 1: Bradley-Terry on the head, CoTs teacher-forced, random CoT masking (one coin per pair, p 0.5),
             optional next-token loss on the CoT (weight 0 officially).
    stage 2: n sampled rollouts per video (the rollout batch); GRPO on the CoT with the rule-based reward (0.7
             sub-dimensions + 0.1 format + 0.2 length), group-normalised advantages, asymmetric dual-clip PPO
             ratio, low-variance KL to the reference; plus the auxiliary Bradley-Terry loss on the head that pairs
             rollout k of video A with rollout k of video B (weight 5e-3). The rollout batch is split into
             mini-batches with one optimiser step each, so the later updates are off-policy and the clip acts.
    stage 3: a no-CoT student learns the CoT-conditioned score distribution of a teacher.
The stage-2 loss with its formulas: docs/training.md, "Stage 2: the dual-objective loss".

Runs single-process on a CPU and under `accelerate launch` on many GPUs (DDP, DeepSpeed or FSDP from accelerate's
config); there is no hand-written distributed code. Resuming is exact: the data order and every random draw are
functions of (seed, step), and checkpoints hold the trainable weights, optimizer, scheduler and the rollouts of the
current rollout batch.
"""

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from descore_plugin.utils.files import follow_umask
from descore_plugin.data.pairs import DataError, load_pairs
from descore_plugin.data.check import SKIPPED_ROWS_FILE, check_training_videos, sampling_settings, write_skipped_rows
from descore_plugin.data.loader import InputEncoder, PairCollator, PairDataset, PairOrder, VideoCache, pair_loader, stream_videos
from descore_plugin.utils.errors import UserError, one_line_errors, report
from descore_plugin.evaluation.preference import evaluate_pairs
from descore_plugin.training.embedding_rows import TrainableRow
from descore_plugin.training.full_state import gather_state, load_state
from descore_plugin.training.losses import (bradley_terry_loss, bradley_terry_ties_loss, distillation_loss, group_advantages_unbiased,
                     grpo_policy_loss, pointwise_distribution_loss, rollout_reward, score_gap_loss)
from descore_plugin.modeling.model import BACKBONE_DIR, DeScoreReward
from descore_plugin.modeling.prompt import parse_answer
from descore_plugin.data.video import load_video
from descore_plugin.training.runs import Run
from descore_plugin.training.sharding import prepare_frozen

LABEL_SIGN = {"A": 1, "B": -1, "tie": 0, "invalid": 0}
OFFICIAL_PROMPT_TOKENS = 6200
"""The official stage 2's prompt cap (data.max_prompt_length), which it right-truncates; here a warning only."""
PROBE_PAIRS = 2
"""Stage 2 reads the starting model's CoTs for the videos of this many training pairs before it starts."""
logger = logging.getLogger(__name__)


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """One training run: every field is a command-line flag of recipes/train_rm.py (`max_steps` is `--max-steps`).
    Defaults are the official ones (DeScore's released training code) unless the help says "ours"; a field left
    None takes its stage's default (see `resolve`)."""

    # --- what to train, on what ---
    model: str = field(default="", metadata=_help(
        "Checkpoint directory or hub id to start from: `descore init-tiny`, a stage-1 run (LoRA or full), or any "
        "DeScore checkpoint. An adapter it holds is merged into the backbone first.", required=True))
    train_data: str = field(default="", metadata=_help(
        "Pair file (CSV / JSONL: our format, the official DeScore CSV or VideoAlign columns; see data.py).",
        required=True))
    output_dir: str = field(default="", metadata=_help(
        "Run directory: the final model (loads with DeScoreReward.from_pretrained), checkpoint-N/, metrics.jsonl, "
        "curves.png. An existing run is refused unless --resume or --overwrite.", required=True))
    eval_data: str | None = field(default=None, metadata=_help(
        "Held-out pair file for accuracy during and after training; every pair counts (ties too)."))
    label_column: str | None = field(default=None, metadata=_help(
        "VideoAlign / VideoGen-RewardBench files: the column holding the A / B / same label (default Overall; e.g. "
        "TA for text alignment, or for a file without Overall)."))
    skip_bad_rows: bool = field(default=False, metadata=_help(
        "Every distinct video is decoded before step 1, and a row whose video fails (corrupt, an image, too few "
        "frames) stops the run naming file, row and field. With this flag such rows are left out instead and "
        "listed in --output-dir/skipped_rows.jsonl."))
    stage: int = field(default=1, metadata=_help(
        "1: cold start (Bradley-Terry), 2: dual-objective RL, 3: distil --teacher into a no-CoT student.",
        choices=[1, 2, 3]))

    # --- optimisation ---
    max_steps: int = field(default=1000, metadata=_help(
        "Optimiser steps (official stage 1: 4 epochs of ~22k pairs at an effective batch of 4)."))
    batch_size: int = field(default=1, metadata=_help(
        "Pairs per process per micro-batch (official: 1). In stage 2 each pair gives 2 x num_rollouts sequences."))
    gradient_accumulation_steps: int | None = field(default=None, metadata=_help(
        "Stages 1 and 3: micro-batches per optimiser step (None: 4, official stage 1). Stage 2 derives it from the "
        "global --actor-batch-size: (actor_batch_size / 2) pairs / (--batch-size x processes); a value given for "
        "stage 2 is ignored with a warning."))
    learning_rate: float | None = field(default=None, metadata=_help(
        "None: stage 1 2e-6 (all groups), stage 2 1e-6 (official)."))
    head_learning_rate: float | None = field(default=None, metadata=_help(
        "Learning rate of the head (None: --learning-rate)."))
    vision_learning_rate: float | None = field(default=None, metadata=_help(
        "Learning rate of the vision tower when it trains (None: --learning-rate)."))
    embedding_learning_rate: float | None = field(default=None, metadata=_help(
        "Learning rate of the trainable embedding rows (None: --learning-rate)."))
    weight_decay: float | None = field(default=None, metadata=_help(
        "AdamW weight decay. None: stage 1 0 (not set officially, so the AdamW default of transformers' Trainer), "
        "stage 2 1e-2 (official)."))
    warmup_ratio: float | None = field(default=None, metadata=_help(
        "Linear warm-up over this fraction of max_steps, then constant. None: stage 1 0.05, stage 2 0 (official)."))
    max_grad_norm: float | None = field(default=None, metadata=_help(
        "Gradient clipping norm (0 = off). None: stage 1 and 3 0 (official stage 1 clips nothing: its DeepSpeed "
        "config sets no clipping and accelerate does not clip under DeepSpeed), stage 2 1.0 (official)."))
    grad_norm_groups: Literal["actor_and_head", "joint"] = field(default="actor_and_head", metadata=_help(
        "What --max-grad-norm bounds: actor_and_head (official stage 2, under FSDP: the head's gradient and the "
        "rest's are each clipped to the bound on their own); joint: one norm over every trainable weight (ours)."))
    pure_bf16: bool = field(default=False, metadata=_help(
        "Reproduction mode: weights, gradients and AdamW states in bfloat16, as the official stage-2 actor and head "
        "(no float32 master copy). At lr 1e-6 most updates then round away (docs/training.md gives the measured "
        "share). Off: float32 weights (with --mixed-precision bf16 on GPUs)."))
    mixed_precision: str = field(default="no", metadata=_help(
        "accelerate mixed precision: bf16 on GPUs (official), no on CPUs.", choices=["no", "fp16", "bf16"]))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute activations in backward (official on GPUs: on; saves memory, costs time)."))

    # --- what trains ---
    lora_rank: int | None = field(default=None, metadata=_help(
        "None: the stage's official choice. Stage 1: 64 (LoRA on every LLM linear). Stage 2: 0 = every LLM weight "
        "trains against a frozen reference copy (official; a second model copy in memory); > 0 in stage 2 is our "
        "memory-saving option: a fresh adapter on the merged stage-1 model, reference = adapter off. 0 in stage "
        "1: full fine-tuning."))
    lora_alpha: int = field(default=128, metadata=_help("LoRA alpha (official 128)."))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout (official 0.05)."))
    train_vision: bool | None = field(default=None, metadata=_help(
        "Vision tower trainable. None: stage 1 yes, stage 2 no (official).", nargs="?", const=True))
    train_embeddings: Literal["reward_token", "all"] | None = field(default=None, metadata=_help(
        "Input-embedding rows that train. reward_token: only the <Reward> row; all: every row. None: stage 1 "
        "reward_token (official cold start); stage 2 all with --lora-rank 0 (official: the stage-2 actor trains "
        "every row and the output head) and reward_token with a stage-2 adapter (the adapter-off reference must "
        "stay the start model)."))

    # --- stage 1 ---
    loss: Literal["bt", "bt_ties"] = field(default="bt", metadata=_help(
        "bt: Bradley-Terry, no term for a tie (official); bt_ties: Rao-Kupper ties with k = --ties-k (VideoAlign)."))
    undecided_rows: Literal["zero_loss", "drop"] = field(default="zero_loss", metadata=_help(
        "Rows without a decided verdict (ties under --loss bt in stage 1, rows labelled 'invalid'). zero_loss "
        "(official): they stay in the data as rows of loss 0 that count in the batch mean and the epoch, so the BT "
        "gradient is scaled by the decided fraction (in stage 2 their rollouts still train the policy); drop (ours): "
        "they are left out of training."))
    ties_k: float = field(default=5.0, metadata=_help("Rao-Kupper tie parameter of --loss bt_ties (VideoAlign 5)."))
    cot_mask_prob: float = field(default=0.5, metadata=_help(
        "Probability that a PAIR loses both CoTs (official, hard-coded 0.5)."))
    lm_loss_weight: float = field(default=0.0, metadata=_help(
        "Weight of the next-token loss on the CoT text (official 0; > 0 teaches the model to write the CoT: a tiny "
        "model from random weights learnt the prompt-alignment verdict with 4, not with 1, tests/test_learning.py)."))

    # --- distribution head (model head "distribution"; Z-Reward, arXiv 2606.09076, our reading) ---
    distribution_loss_weight: float = field(default=1.0, metadata=_help(
        "Weight of the cross-entropy to a Gaussian-smoothed one-hot at the overall score of the pair's CoT answer "
        "(where it parses). Ours."))
    score_gap_loss_weight: float = field(default=0.1, metadata=_help(
        "Weight of (E[s_A] - E[s_B] - (s_A - s_B))^2 on each pair whose CoTs give both scores. Ours."))
    distribution_sigma: float = field(default=0.25, metadata=_help(
        "Width (score units) of the smoothed target distribution. Ours."))

    # --- stage 3: distillation of a CoT teacher into a no-CoT student (Z-Reward RISD, our reading) ---
    teacher: str | None = field(default=None, metadata=_help(
        "Stage 3: teacher checkpoint (scores WITH CoT); the student is --model and learns to score without one."))
    num_cot_samples: int = field(default=4, metadata=_help(
        "Stage 3: sampled teacher CoTs per video; their CoT-conditioned score distributions are averaged. Ours."))
    teacher_temperature: float = field(default=0.7, metadata=_help(
        "Stage 3: sampling temperature of the teacher's CoTs (ours: 1.0 gives tiny teachers off-distribution CoTs)."))
    teacher_max_new_tokens: int | None = field(default=None, metadata=_help(
        "Stage 3: teacher CoT length limit (None: the teacher's max_new_tokens)."))
    distill_bt_weight: float = field(default=0.0, metadata=_help(
        "Stage 3: weight of a Bradley-Terry term on the pair labels added to the distillation loss (0: pure)."))

    # --- stage 2 ---
    num_rollouts: int = field(default=8, metadata=_help("Stage 2: sampled CoTs per video, one GRPO group (official 8)."))
    rollout_temperature: float = field(default=1.0, metadata=_help("Stage 2: sampling temperature (official 1.0)."))
    rollout_repetition_penalty: float = field(default=1.0, metadata=_help(
        "Stage 2: repetition penalty while sampling rollouts (official 1.0: the log-probs the loss uses must be those "
        "of the distribution that sampled; scoring keeps the model's own, 1.05 officially)."))
    max_new_tokens: int | None = field(default=None, metadata=_help(
        "Stage 2: rollout length limit (None: the model's CoT limit, official 4096; a model that records the CoT "
        "length it was trained on gets twice that)."))
    rollout_batch_size: int = field(default=128, metadata=_help(
        "Stage 2: video PAIRS per rollout batch over all processes (official 128: 256 videos x --num-rollouts 8 = "
        "2,048 sequences). Their rollouts are sampled at once with their old log-probs, then 2 x rollout_batch_size "
        "/ --actor-batch-size optimiser steps follow (official 32), the later ones off-policy."))
    actor_batch_size: int = field(default=8, metadata=_help(
        "Stage 2: VIDEOS per optimiser step over all processes (official actor global batch 8: 4 pairs, 8 x 8 = 64 "
        "sequences). Even; divides 2 x --rollout-batch-size; actor_batch_size / 2 is a multiple of --batch-size x "
        "processes."))
    clip_ratio_low: float = field(default=0.2, metadata=_help(
        "Stage 2: PPO ratio clipped below at 1 - this (official 0.2)."))
    clip_ratio_high: float = field(default=0.3, metadata=_help(
        "Stage 2: PPO ratio clipped above at 1 + this (official 0.3, asymmetric as in DAPO)."))
    clip_ratio_dual: float = field(default=3.0, metadata=_help(
        "Stage 2: dual-clip bound c: for negative advantages the loss is at most -A * c (official 3.0)."))
    kl_coef: float = field(default=1e-5, metadata=_help(
        "Stage 2: weight of the low-variance KL to the reference, per token (official 1e-5; 0 = no reference)."))
    bt_weight: float = field(default=5e-3, metadata=_help(
        "Stage 2: weight of the auxiliary Bradley-Terry loss on the head, added per micro-batch (official 5e-3)."))
    bt_label: Literal["answer", "label"] = field(default="answer", metadata=_help(
        "Stage 2: the verdict the auxiliary BT loss reads. answer (official): `gsb_result` in the row's ground-truth "
        "`answer` JSON ('Video 1 is better' or 'A', 'Video 2 is better' or 'B'; anything else: no BT term), the "
        "pair's label where the row has no such JSON; label: the pair's label (the GSB column) always."))
    allow_unparsed_cots: bool = field(default=False, metadata=_help(
        "Stage 2 first has the starting model write CoTs for a few training videos and refuses to start when none "
        "holds a readable <answer> (every rule reward would be 0: nothing to learn). This flag starts anyway."))
    rule_parser: Literal["official", "lenient"] = field(default="official", metadata=_help(
        "Stage 2: how the rollout reward reads a CoT's <answer>. official: the first closed <answer> block, its JSON "
        "compared by exact equality (\"2\" != 2); lenient: our scoring parser (tolerant of fences, string digits)."))
    reward_weights: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2], metadata=_help(
        "Stage 2: weights of sub-dimension accuracy, format and length in the rollout reward (official)."))
    length_thresholds: list[int] = field(default_factory=lambda: [500, 1000, 1500, 2000], metadata=_help(
        "Stage 2: character counts of the length reward's steps (official)."))

    # --- input pipeline (descore_plugin/dataset.py) ---
    num_workers: int = field(default=2, metadata=_help(
        "DataLoader worker processes that decode the videos, sample frames and run the processor ahead of the "
        "training step (0: all of it in the training process). Ours."))
    prefetch_factor: int = field(default=2, metadata=_help("Batches each worker prepares ahead of the step."))
    video_cache_bytes: int = field(default=0, metadata=_help(
        "Keep up to this many bytes of decoded, sampled frames per process, least recently used dropped first (0: "
        "decode every time). Each worker holds its own cache."))

    # --- evaluation, checkpoints, logging ---
    eval_steps: int = field(default=0, metadata=_help(
        "Evaluate every N steps (0: only at the end), after that step's checkpoint is written."))
    eval_think: bool = field(default=True, metadata=_help(
        "Evaluate with generated CoTs (--no-eval-think: the no-CoT fast path)."))
    eval_max_new_tokens: int | None = field(default=None, metadata=_help(
        "CoT length limit during evaluation (None: the model's)."))
    save_steps: int = field(default=500, metadata=_help("Write checkpoint-N every N steps (0: only the final one)."))
    save_total_limit: int = field(default=2, metadata=_help("Keep this many checkpoint-N folders (oldest go first)."))
    seed: int = field(default=0, metadata=_help("Seed of the data order, LoRA initialisation, masking and sampling."))
    log_with: str = field(default="tensorboard", metadata=_help(
        "accelerate tracker (tensorboard, wandb, ...) or none; metrics.jsonl and curves.png are always written."))

    def resolve(self) -> "TrainConfig":
        """Fill the stage-dependent defaults and check the values."""
        stage1 = self.stage != 2  # the cold start's defaults also serve distillation
        if self.stage not in (1, 2, 3):
            raise UserError(f"--stage {self.stage}: expected 1 (cold start), 2 (RL) or 3 (distillation)")
        if self.stage == 3 and not self.teacher:
            raise UserError("--stage 3 (distillation) needs --teacher DIR_OR_ID")
        if self.learning_rate is None:
            self.learning_rate = 2e-6 if stage1 else 1e-6
        if self.weight_decay is None:
            self.weight_decay = 0.0 if stage1 else 1e-2
        if self.warmup_ratio is None:
            self.warmup_ratio = 0.05 if stage1 else 0.0
        if self.lora_rank is None:
            self.lora_rank = 64 if stage1 else 0
        if self.train_vision is None:
            self.train_vision = stage1
        if self.max_grad_norm is None:
            self.max_grad_norm = 0.0 if stage1 else 1.0
        if self.train_embeddings is None:
            self.train_embeddings = "all" if self.stage == 2 and self.lora_rank == 0 else "reward_token"
        if self.stage == 2 and self.lora_rank > 0 and self.train_embeddings == "all":
            raise UserError("--train-embeddings all with a stage-2 adapter (--lora-rank > 0): the KL reference is the "
                            "model with the adapter off, and rows trained outside the adapter would move it too; use "
                            "--lora-rank 0 (official) or --train-embeddings reward_token")
        if self.gradient_accumulation_steps is None and self.stage != 2:  # stage 2 derives it (Trainer.accumulation)
            self.gradient_accumulation_steps = 4
        if self.log_with is None or self.log_with.lower() == "none":
            self.log_with = "none"
        if self.loss not in ("bt", "bt_ties"):
            raise UserError(f"--loss {self.loss!r}: expected 'bt' or 'bt_ties'")
        if self.train_embeddings not in ("reward_token", "all"):
            raise UserError(f"--train-embeddings {self.train_embeddings!r}: expected 'reward_token' or 'all'")
        for name, allowed in (("undecided_rows", ("zero_loss", "drop")), ("bt_label", ("answer", "label")),
                              ("grad_norm_groups", ("actor_and_head", "joint"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: expected "
                                f"{' or '.join(repr(a) for a in allowed)}")
        if self.rule_parser not in ("official", "lenient"):
            raise UserError(f"--rule-parser {self.rule_parser!r}: expected 'official' or 'lenient'")
        if not 0.0 <= self.cot_mask_prob <= 1.0:
            raise UserError(f"--cot-mask-prob {self.cot_mask_prob}: must be in [0, 1]")
        if self.stage == 2 and self.num_rollouts < 2:
            raise UserError(f"--num-rollouts {self.num_rollouts}: GRPO needs at least 2 rollouts per video "
                             "(the advantage is relative to the group)")
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "rollout_batch_size", "actor_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.stage == 2 and (self.actor_batch_size % 2 or (2 * self.rollout_batch_size) % self.actor_batch_size):
            raise UserError(f"--actor-batch-size {self.actor_batch_size}: counts videos, so it must be even (a pair's "
                            f"two videos update together) and divide the {2 * self.rollout_batch_size} videos of "
                            f"--rollout-batch-size {self.rollout_batch_size} pairs")
        if len(self.reward_weights) != 3:
            raise UserError(f"--reward-weights {self.reward_weights}: give 3 numbers (accuracy, format, length)")
        for name in ("model", "train_data", "output_dir"):
            if not getattr(self, name):
                raise UserError(f"--{name.replace('_', '-')} is required")
        return self


MAY_CHANGE_ON_RESUME = ("max_steps", "eval_data", "eval_steps", "eval_think", "eval_max_new_tokens", "save_steps",
                        "save_total_limit", "log_with", "num_workers", "prefetch_factor", "video_cache_bytes")
"""Flags a resumed run may change: how long it runs and how it is watched, not what it trains."""


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False):
        """Open the run directory (`runs.Run`: an existing run needs `resume` or `overwrite`; `resume` refuses a
        changed flag other than MAY_CHANGE_ON_RESUME), load data and model, and continue from the newest
        checkpoint when `resume` is set (`self.step` is then its step)."""
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
        self.accumulation, self.steps_per_rollout = _geometry(config, self.accelerator.num_processes)
        self.accelerator.gradient_accumulation_steps = self.accumulation
        self.train_pairs = self._load_train(config.train_data)
        # Evaluation sees every pair of its file, ties included (even when it is the training file); evaluate_pairs
        # leaves out only the pairs labelled "invalid", and counts them.
        self.eval_pairs = load_pairs(config.eval_data, label_column=config.label_column) if config.eval_data else None
        # Every distinct video is decoded before the model loads (datacheck.py), with the checkpoint's sampling
        # settings when its config tells them: before the run directory is opened when that creates it (a bad video
        # leaves no run behind), else after the run directory's own checks (a refused re-run decodes nothing).
        sampling = sampling_settings(config.model)  # (fps, num_frames), None when known only once loaded
        creates_run = not (self.output_dir.is_dir() and any(self.output_dir.iterdir()))
        if sampling is not None and creates_run:
            self._check_videos(*sampling)

        # Opened once the data checked out (a data error leaves no run behind), before the slow model load.
        self.run = Run.open(self.output_dir, _jsonable(config), resume=resume, overwrite=overwrite,
                            may_change=MAY_CHANGE_ON_RESUME, main_process=self.accelerator.is_main_process,
                            wait_for_everyone=self.accelerator.wait_for_everyone)
        if sampling is not None and not creates_run:
            self._check_videos(*sampling)
        torch.manual_seed(config.seed)  # the LoRA initialisation draws from the global generator
        model = merge_adapter(DeScoreReward.from_pretrained(config.model))
        if sampling != (model.config.fps, model.config.num_frames):  # known only now (e.g. a hub id)
            self._check_videos(model.config.fps, model.config.num_frames)
        # Stage 2's rollout limit: the start model's CoT limit (sized to what it was trained on) unless given.
        limit = getattr(model.config, "cot_token_limit", None)
        self.rollout_tokens = config.max_new_tokens or (limit() if limit else model.config.max_new_tokens)
        self._record_cot_length(model)
        if config.pure_bf16:  # the official stage-2 numerics: no float32 copy anywhere (see TrainConfig.pure_bf16)
            model.to(torch.bfloat16)
        if config.skip_bad_rows and self.accelerator.is_main_process:
            write_skipped_rows(self.output_dir / SKIPPED_ROWS_FILE, self.skipped_rows)
        self.videos = VideoCache(model.config.fps, model.config.num_frames, config.video_cache_bytes)
        self.encoder = InputEncoder(model)  # what the loader's workers need to build the model's inputs
        self.reference = None
        if config.stage == 2 and config.lora_rank == 0 and config.kl_coef > 0:
            # Full fine-tuning has no adapter to switch off: the KL reference is a frozen copy of the start model.
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
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
        if self.reference is not None:  # sharded like the policy under FSDP2 (accelerate shards only with an optimizer)
            self.reference = prepare_frozen(self.accelerator, self.reference)
        self.step = 0
        self.rollouts = None  # stage 2: the current rollout batch (see _rollout_batch)
        self._inputs = None  # stage 2: this process's processed micro-batches of the current rollout batch
        self._warned_prompt_cap = False
        self.resumed = resume and self._resume()
        if config.stage == 2 and not self.resumed and not config.allow_unparsed_cots:
            self._check_starting_cots(self.accelerator.unwrap_model(self.model), creates_run)
        self.teacher_targets = self._teacher_targets() if config.stage == 3 else None

    # ------------------------------------------------------------------ set-up
    def _check_videos(self, fps, num_frames):
        """Decode every distinct video of the training and evaluation pairs as training will (datacheck.py); a bad
        one stops here naming file, row and field, or with --skip-bad-rows its rows are left out and listed."""
        self.train_pairs, self.eval_pairs, self.skipped_rows = check_training_videos(
            self.train_pairs, self.eval_pairs, lambda path: load_video(path, fps=fps, num_frames=num_frames),
            train_data=self.config.train_data, eval_data=self.config.eval_data, skip=self.config.skip_bad_rows,
            report_path=self.output_dir / SKIPPED_ROWS_FILE, main_process=self.accelerator.is_main_process)

    def _record_cot_length(self, model: DeScoreReward):
        """Write into the model's config the CoT length, in tokens, this run trains it on (what scoring then sizes
        its default CoT limit to): stage 1 the longest CoT of the training pairs, stage 2 the rollout limit. The
        distillation student writes no CoT and keeps its value."""
        if not hasattr(model.config, "trained_cot_tokens") or self.config.stage == 3:
            return
        if self.config.stage == 2:
            model.config.trained_cot_tokens = self.rollout_tokens
            return
        cots = [cot for p in self.train_pairs for cot in (p.cot_a, p.cot_b) if cot]
        if cots:
            model.config.trained_cot_tokens = max(len(ids) for ids in model.tokenizer(cots)["input_ids"])

    def _load_train(self, path) -> list:
        """The training pairs. Rows without a decided verdict (ties where the loss has no term for them, rows labelled
        "invalid") stay as rows of loss 0 (--undecided-rows zero_loss, official) or are dropped (drop); what was
        dropped or kept without a loss, and why, is logged."""
        config = self.config
        pairs = load_pairs(path, require_scores=config.stage == 2, label_column=config.label_column)
        no_term = {"invalid"} | ({"tie"} if config.stage == 1 and config.loss == "bt" else set())
        undecided = [p for p in pairs if p.label in no_term]
        keep = pairs if config.undecided_rows == "zero_loss" else [p for p in pairs if p.label not in no_term]
        invalid, ties = sum(p.label == "invalid" for p in undecided), sum(p.label == "tie" for p in undecided)
        if not keep or (config.stage == 1 and len(undecided) == len(pairs)):
            raise DataError(f"{path}: no usable pairs for training (of {len(pairs)}: {invalid} labelled 'invalid', "
                            f"{ties} ties, which --loss bt has no term for; --loss bt_ties trains on ties)")
        if undecided and self.accelerator.is_main_process:
            reasons = " and ".join(([f"{invalid} labelled 'invalid' (no verdict)"] if invalid else []) +
                                   ([f"{ties} ties (--loss bt has no term for a tie; --loss bt_ties has)"] if ties else []))
            if config.undecided_rows == "drop":
                logger.warning("training on %d of %d pairs of %s: dropped %s (--undecided-rows drop)", len(keep),
                               len(pairs), path, reasons)
            else:
                logger.warning("training on all %d pairs of %s: %s stay as rows of loss 0 that count in the batch "
                               "mean, as officially (--undecided-rows drop leaves them out)", len(pairs), path, reasons)
        return keep

    def _set_trainable(self, model: DeScoreReward):
        config = self.config
        model.requires_grad_(False)
        if config.lora_rank > 0:
            model.add_lora(config.lora_rank, config.lora_alpha, config.lora_dropout,
                           train_reward_token=config.train_embeddings == "reward_token")
        else:
            model.vlm.model.language_model.requires_grad_(True)
            # The output head learns only where a loss reads the logits (stage 2's policy, the CoT next-token loss):
            # elsewhere it would get no gradient, which DDP refuses ("parameters that were not used").
            model.vlm.lm_head.requires_grad_(config.stage == 2 or config.lm_loss_weight > 0)
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
        rates = {"head": config.head_learning_rate, "vision": config.vision_learning_rate,
                 "embeddings": config.embedding_learning_rate, "other": None}
        return [{"params": params, "lr": rates[name] or lr, "name": name} for name, params in groups.items() if params]

    # ------------------------------------------------------------------ data
    def _collator(self) -> PairCollator:
        config = self.config
        stage1 = config.stage == 1  # stage 1 gets its whole input from the workers; stages 2 and 3 decoded videos
        return PairCollator(self.encoder if stage1 else None, self.accelerator.num_processes, config.seed,
                            config.cot_mask_prob if stage1 else 0.0, with_labels=config.lm_loss_weight > 0)

    def train_loader(self, start_micro_step: int):
        """This process's batches from `start_micro_step` to the end of training, prepared by accelerate (each rank
        its shard, tensors on the device). The order is a function of (seed, micro_step, rank) (dataset.py)."""
        config, accelerator = self.config, self.accelerator
        model = accelerator.unwrap_model(self.model)
        loader = pair_loader(self.train_pairs, fps=model.config.fps, num_frames=model.config.num_frames,
                             batch_size=config.batch_size, seed=config.seed, start_micro_step=start_micro_step,
                             stop_micro_step=self._last_micro_step(),
                             num_processes=accelerator.num_processes, collate=self._collator(),
                             num_workers=config.num_workers, prefetch_factor=config.prefetch_factor,
                             cache_bytes=config.video_cache_bytes, pin_memory=accelerator.device.type == "cuda")
        return accelerator.prepare(loader)

    def _last_micro_step(self) -> int:
        """Where this process's batches end: max_steps, rounded up in stage 2 to a whole rollout batch (its rollouts
        are sampled at once, and a resumed run may go on to more steps)."""
        steps = self.config.max_steps
        if self.config.stage == 2:
            steps = -(-steps // self.steps_per_rollout) * self.steps_per_rollout
        return steps * self.accumulation

    def batch_for(self, micro_step: int) -> dict:
        """This process's batch of one micro-step, built in this process (what the loader yields at that step)."""
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        dataset = PairDataset(self.train_pairs, model.config.fps, model.config.num_frames)
        order = PairOrder(len(self.train_pairs), config.seed)
        g = micro_step * self.accelerator.num_processes + self.accelerator.process_index
        return self._collator()([dataset[(g, order[g * config.batch_size + slot])] for slot in range(config.batch_size)])

    # ------------------------------------------------------------------ losses
    def stage1_loss(self, batch: dict, rng: np.random.Generator) -> dict:
        """batch: from the loader, inputs ready (CoTs appended unless the pair's masking coin fell, dataset.py)."""
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        pairs, masked = batch["pairs"], batch["masked"]
        out = self.model(**_to(batch["inputs"], self.accelerator.device))
        n = len(pairs)
        r_a, r_b = out["rewards"][:n], out["rewards"][n:]
        signs = torch.tensor([LABEL_SIGN[p.label] for p in pairs], device=r_a.device)
        decided = (signs != 0).float()
        # Rows without a term (ties under bt, "invalid") are rows of loss 0 in the mean (DeScore Sec. 3.2, official).
        if config.loss == "bt_ties":
            valid = torch.tensor([p.label != "invalid" for p in pairs], device=r_a.device).float()
            bt = bradley_terry_ties_loss(r_a, r_b, signs, k=config.ties_k, mask=valid)
        else:
            chosen, rejected = torch.where(signs > 0, r_a, r_b), torch.where(signs > 0, r_b, r_a)
            bt = bradley_terry_loss(chosen, rejected, mask=decided)
        loss = bt
        correct = ((r_a - r_b) * signs > 0).float()
        logs = {"bt_loss": bt.item(), "masked_fraction": float(masked.mean()), "decided_fraction": decided.mean().item(),
                "train_accuracy": (correct.sum() / decided.sum()).item() if decided.any() else float("nan")}
        if config.lm_loss_weight > 0:
            loss = loss + config.lm_loss_weight * out["lm_loss"]
            logs["lm_loss"] = out["lm_loss"].item()
        if model.config.head == "distribution":
            loss = loss + self._distribution_losses(model, out, pairs, logs)
        logs["loss"] = loss.item()
        return {"loss": loss, "logs": logs}

    def _distribution_losses(self, model, out, pairs, logs) -> torch.Tensor:
        """Z-Reward-style direct supervision of the score distribution, where the pair's CoTs give overall scores
        (annotator CoTs end in an <answer> with overall_score): pointwise on each video, score gap on each pair."""
        config, n = self.config, len(pairs)
        device = out["rewards"].device
        targets = torch.tensor([_overall(p.cot_a) for p in pairs] + [_overall(p.cot_b) for p in pairs],
                               dtype=torch.float32, device=device)  # (2n,), NaN where unknown
        known = ~targets.isnan()
        total = torch.zeros((), device=device)
        if known.any():
            pointwise = pointwise_distribution_loss(out["logits"][known], targets[known], model.score_bins,
                                                    config.distribution_sigma)
            total = total + config.distribution_loss_weight * pointwise
            logs["distribution_loss"] = pointwise.item()
        both = known[:n] & known[n:]
        if both.any():
            gap = score_gap_loss(out["rewards"][:n][both], out["rewards"][n:][both], (targets[:n] - targets[n:])[both])
            total = total + config.score_gap_loss_weight * gap
            logs["score_gap_loss"] = gap.item()
        return total

    def distill_loss(self, batch: dict, rng: np.random.Generator) -> dict:
        """Stage 3: the student scores WITHOUT a CoT and matches the teacher's CoT-conditioned score distribution
        (KL(teacher || student), averaged over sampled CoTs); a scalar teacher or student falls back to a squared
        error on the teacher's expected reward."""
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        pairs, videos = batch["pairs"], batch["videos"]
        paths = [p.video_a for p in pairs] + [p.video_b for p in pairs]
        keys = [(path, p.prompt, p.instruction or "") for path, p in zip(paths, pairs * 2)]  # A's then B's
        prompts, instructions = [p.prompt for p in pairs] * 2, [p.instruction for p in pairs] * 2
        batch = model.append_cots(model.encode_prompts(videos, prompts, instructions), [None] * len(videos))
        out = self.model(**_to(batch, self.accelerator.device))
        device = out["rewards"].device
        target = torch.stack([self.teacher_targets[key] for key in keys]).to(device)  # (2n, K) or (2n, 1)
        if "probs" in out and target.shape[-1] > 1:
            loss = distillation_loss(out["logits"], target)
        else:
            expected = target @ model.score_bins if target.shape[-1] > 1 else target[:, 0]
            loss = (out["rewards"] - expected).square().mean()
        logs = {"distill_loss": loss.item()}
        if config.distill_bt_weight > 0:
            n = len(pairs)
            signs = torch.tensor([LABEL_SIGN.get(p.label, 0) for p in pairs], device=device)
            decided = signs != 0
            if decided.any():
                r_a, r_b = out["rewards"][:n][decided], out["rewards"][n:][decided]
                s = signs[decided]
                bt = bradley_terry_loss(torch.where(s > 0, r_a, r_b), torch.where(s > 0, r_b, r_a))
                loss = loss + config.distill_bt_weight * bt
                logs["bt_loss"] = bt.item()
        logs["loss"] = loss.item()
        return {"loss": loss, "logs": logs}

    @torch.no_grad()
    def _teacher_targets(self) -> dict:
        """The teacher's score distribution for every (video, prompt, instruction) of the training pairs, averaged over
        `num_cot_samples` sampled CoTs. Computed once and stored in output_dir (a resumed run reuses the file)."""
        config = self.config
        keys = sorted({(v, p.prompt, p.instruction or "") for p in self.train_pairs for v in (p.video_a, p.video_b)})
        path = self.output_dir / "teacher_targets.safetensors"
        if path.is_file():
            stored = load_file(path)
            if stored["targets"].shape[0] == len(keys):
                return dict(zip(keys, stored["targets"]))
        teacher = DeScoreReward.from_pretrained(config.teacher, device=self.accelerator.device).eval()
        samples, targets = config.num_cot_samples, []
        chunks = stream_videos([path for path, *_ in keys], fps=teacher.config.fps, num_frames=teacher.config.num_frames,
                               chunk_size=8, num_workers=config.num_workers, prefetch_factor=config.prefetch_factor)
        bar = tqdm(total=len(keys), desc="teacher CoTs", disable=not self.accelerator.is_main_process)
        for start, items in zip(range(0, len(keys), 8), chunks):
            chunk = keys[start : start + 8]
            failed = [item.error for item in items if item.error]
            if failed:
                raise DataError(f"{config.train_data}: {failed[0]}")
            videos = [item.video for item in items for _ in range(samples)]
            prompts = [key[1] for key in chunk for _ in range(samples)]
            instructions = [key[2] or None for key in chunk for _ in range(samples)]  # the official CSV's `problem`
            out = teacher.score(videos, prompts, instructions=instructions, think=True, batch_size=len(videos), do_sample=True,
                                temperature=config.teacher_temperature, top_k=0, top_p=1.0,
                                seed=_mix(config.seed, start), max_new_tokens=config.teacher_max_new_tokens)
            per_sample = out.bin_probs if out.bin_probs is not None else out.rewards.unsqueeze(-1)  # (c*S, K)
            targets.append(per_sample.view(len(chunk), samples, -1).mean(1))
            bar.update(len(chunk))
        bar.close()
        targets = torch.cat(targets)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_file({"targets": targets.contiguous()}, path)
            follow_umask(path)  # safetensors writes private files
        return dict(zip(keys, targets))

    # ------------------------------------------------------------------ stage 2
    def stage2_inputs(self, batch: dict) -> dict:
        """A stage-2 micro-batch processed once for its rollouts AND its update (DeScore Sec. 3.3): the prompt batch
        (CPU tensors; video i's rollout j is row i * num_rollouts + j, videos A then B), its pairs and ground truths."""
        model, k = self.accelerator.unwrap_model(self.model), self.config.num_rollouts
        pairs, videos = batch["pairs"], batch["videos"]
        prompts, instructions = [p.prompt for p in pairs] * 2, [p.instruction for p in pairs] * 2
        rows = [i for i in range(len(videos)) for _ in range(k)]
        prompt = model.encode_prompts([videos[i] for i in rows], [prompts[i] for i in rows],
                                      [instructions[i] for i in rows], stage="rollout")
        longest = int(prompt["attention_mask"].sum(-1).max())
        if longest > OFFICIAL_PROMPT_TOKENS and not self._warned_prompt_cap:
            self._warned_prompt_cap = True
            logger.warning("stage 2: a prompt of %d tokens (video and instruction) is longer than the %d tokens the "
                           "official stage 2 keeps (it right-truncates); here every prompt is kept whole", longest,
                           OFFICIAL_PROMPT_TOKENS)
        return {"pairs": pairs, "prompt": prompt, "rows": rows,
                "truths": [p.scores_a for p in pairs] + [p.scores_b for p in pairs]}

    def _stage2_batch(self, micro_step: int, batches) -> dict:
        """This process's processed batch of `micro_step`. At the first micro-step of a rollout batch (or the first
        after a resume) the rest of that rollout batch comes from the loader at once and its rollouts are sampled;
        the update steps then reuse the same processed inputs (each video decoded and processed once)."""
        per_batch = self.steps_per_rollout * self.accumulation
        index = micro_step // per_batch
        if self._inputs is None or self._inputs["index"] != index:
            self._inputs = {"index": index, "batches": {m: self.stage2_inputs(next(batches))
                                                        for m in range(micro_step, (index + 1) * per_batch)}}
        if self.rollouts is None or self.rollouts["index"] != index:
            self.rollouts = self._rollout_batch(index, self._inputs["batches"])
        return self._inputs["batches"].pop(micro_step)

    @torch.no_grad()
    def _rollout_batch(self, index: int, inputs: dict | None = None) -> dict:
        """Rollout batch `index` (steps_per_rollout x accumulation micro-batches on this process): the CoTs the
        current policy samples, their rule rewards and group advantages, and the per-token log-probs of the sampling
        policy ("old") and of the reference, all computed once, before any update on them (as verl does).
        inputs: micro-step -> `stage2_inputs`, those already processed; others are built here."""
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        per_batch = self.steps_per_rollout * self.accumulation
        micros = []
        model.eval()
        for micro_step in range(index * per_batch, (index + 1) * per_batch):
            torch.manual_seed(_mix(config.seed, micro_step, self.accelerator.process_index, 1))
            entry = (inputs or {}).get(micro_step) or self.stage2_inputs(self.batch_for(micro_step))
            batch, rows, truths = _to(entry["prompt"], self.accelerator.device), entry["rows"], entry["truths"]
            rollouts = model.sample_cots(batch, self.rollout_tokens, temperature=config.rollout_temperature,
                                         repetition_penalty=config.rollout_repetition_penalty)
            texts = model.tokenizer.batch_decode(rollouts["cot_ids"], skip_special_tokens=True)
            scored = [rollout_reward(t, truths[i], config.reward_weights, config.length_thresholds, config.rule_parser)
                      for t, i in zip(texts, rows)]
            rewards = torch.tensor([s["reward"] for s in scored]).view(-1, config.num_rollouts)  # (2n, k)
            full = model.append_cots(batch, rollouts["cot_ids"], with_labels=True, ended=rollouts["ended"])
            old = model(**full)
            ref = None
            if config.kl_coef > 0:
                if self.reference is not None:
                    ref = self.reference(**full)["token_logprobs"].cpu()
                else:
                    with model.backbone.disable_adapter():
                        ref = model(**full)["token_logprobs"].cpu()
            micros.append({"cot_ids": [c.cpu() for c in rollouts["cot_ids"]], "ended": rollouts["ended"],
                           "advantages": group_advantages_unbiased(rewards).view(-1), "rewards": rewards.view(-1),
                           "old_logp": old["token_logprobs"].cpu(), "ref_logp": ref,
                           "tokens": int(old["label_mask"].sum()),
                           "accuracy": torch.tensor([s["accuracy"] for s in scored]),
                           "format": torch.tensor([s["format"] for s in scored])})
        model.train()
        # Token counts per mini-batch over all processes: each micro-batch's policy loss is a share of that mean.
        accumulation = self.accumulation
        local = torch.tensor([sum(m["tokens"] for m in micros[j * accumulation:(j + 1) * accumulation])
                              for j in range(self.steps_per_rollout)], device=self.accelerator.device)
        mini_tokens = self.accelerator.reduce(local, reduction="sum").cpu()
        best = torch.stack([m["rewards"].max() for m in micros]).max().to(self.accelerator.device)
        if self.accelerator.reduce(best, reduction="max").item() == 0 and self.accelerator.is_main_process:
            logger.warning("stage 2, rollout batch %d: every rollout's rule reward is 0 (no readable <answer>, under "
                           "500 characters): the policy has nothing to learn from this batch; a starting model that "
                           "writes the answer format is needed (stage 1 with --lm-loss-weight > 0)", index)
        return {"index": index, "micro": micros, "mini_tokens": mini_tokens}

    def stage2_loss(self, micro_step: int, batch: dict) -> dict:
        """One micro-batch of a stage-2 update (batch: `stage2_inputs`): the dual-clip GRPO loss against the
        rollout-time log-probs, and the auxiliary Bradley-Terry loss on the head pairing rollout j of video A with
        rollout j of video B, chosen and rejected by the verdict of --bt-label (DeScore Sec. 3.3)."""
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        accumulation = self.accumulation
        per_batch = self.steps_per_rollout * accumulation
        if self.rollouts is None or self.rollouts["index"] != micro_step // per_batch:
            self.rollouts = self._rollout_batch(micro_step // per_batch)
        position = micro_step % per_batch
        micro = self.rollouts["micro"][position]
        pairs = batch["pairs"]
        full = _to(model.append_cots(batch["prompt"], micro["cot_ids"], with_labels=True, ended=micro["ended"]),
                   self.accelerator.device)
        out = self.model(**full)
        device = out["rewards"].device
        ref = micro["ref_logp"].to(device) if micro["ref_logp"] is not None else None
        # Token mean over the whole mini-batch on all processes; x num_processes undoes the gradient averaging of DDP.
        num_tokens = self.rollouts["mini_tokens"][position // accumulation].clamp_min(1).item()
        policy = grpo_policy_loss(out["token_logprobs"], micro["old_logp"].to(device), micro["advantages"].to(device),
                                  out["label_mask"].float(), ref, config.kl_coef, config.clip_ratio_low,
                                  config.clip_ratio_high, config.clip_ratio_dual,
                                  num_tokens=num_tokens / self.accelerator.num_processes)

        n, k = len(pairs), config.num_rollouts
        head = out["rewards"].view(2 * n, k)
        signs = torch.tensor([LABEL_SIGN[_bt_label(p, config.bt_label)] for p in pairs], device=device)
        decided = signs != 0
        bt = torch.zeros((), device=device)  # an all-tie micro-batch has no BT term
        if decided.any():
            r_a, r_b = head[:n][decided], head[n:][decided]  # (m, k)
            s = signs[decided].unsqueeze(-1)
            bt = bradley_terry_loss(torch.where(s > 0, r_a, r_b).reshape(-1), torch.where(s > 0, r_b, r_a).reshape(-1))
        loss = policy["loss"] + config.bt_weight * bt
        logs = {"loss": loss.item(), "policy_loss": policy["loss"].item(), "kl": policy["kl"].item(),
                "ratio": policy["ratio"].item(), "clip_fraction": policy["clip_fraction"].item(),
                "bt_loss": bt.item(), "rollout_reward": micro["rewards"].mean().item(),
                "rollout_accuracy": micro["accuracy"].mean().item(), "rollout_format": micro["format"].mean().item()}
        # accelerate divides each micro-batch's loss by the accumulation count; the official loss SUMS micro-batches
        # (the policy term is already a share of the mini-batch mean, and the BT term counts once per micro-batch).
        return {"loss": loss * accumulation, "logs": logs}

    @torch.no_grad()
    def _check_starting_cots(self, model: DeScoreReward, creates_run: bool):
        """Stage 2 learns from rule rewards read from the CoT's <answer>: a starting model that writes none gives
        every rollout a reward without its accuracy and format terms. Its greedy CoTs for the first training videos
        are read with --rule-parser; none readable stops here (the run directory, if this made it, goes too)."""
        config = self.config
        pairs = self.train_pairs[:PROBE_PAIRS]
        videos = [load_video(path, fps=model.config.fps, num_frames=model.config.num_frames)
                  for p in pairs for path in p.videos]
        prompts, instructions = [p.prompt for p in pairs for _ in p.videos], [p.instruction for p in pairs for _ in p.videos]
        model.eval()
        out = model.score(videos, prompts, think=True, batch_size=len(videos), max_new_tokens=self.rollout_tokens,
                          **({"instructions": instructions} if any(instructions) else {}))
        model.train()
        truths = [s for p in pairs for s in (p.scores_a, p.scores_b)]
        readable = [rollout_reward(cot, truth, parser=config.rule_parser)["format"] for cot, truth in zip(out.cots, truths)]
        if any(readable):
            logger.info("stage 2: the starting model's CoTs hold a readable <answer> for %d of %d probe videos",
                        int(sum(readable)), len(readable))
            return
        if creates_run and self.accelerator.is_main_process:
            shutil.rmtree(self.output_dir, ignore_errors=True)
        example = " ".join(out.cots[0].split())[:60]
        raise UserError(f"--stage 2: the starting model {config.model} wrote no readable <answer> JSON in its CoTs "
                        f"for the first {len(readable)} training videos (e.g. {example!r}), so no rollout would earn "
                        f"the accuracy or format reward and stage 2 would learn next to nothing; train stage 1 with "
                        f"the CoT loss first (--lm-loss-weight > 0, docs/training.md), or pass --allow-unparsed-cots")

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        """Run from self.step to max_steps, write the final checkpoint and publish the model, then evaluate it."""
        config, accelerator = self.config, self.accelerator
        accelerator.init_trackers("descore", config={k: v for k, v in dataclasses.asdict(config).items()
                                                     if isinstance(v, (int, float, str, bool))})
        loss_fn = {1: self.stage1_loss, 3: self.distill_loss}.get(config.stage)
        bar = tqdm(total=config.max_steps, initial=self.step, desc=f"stage {config.stage}",
                   disable=not accelerator.is_main_process)
        last_logs = {}
        batches = iter(self.train_loader(self.step * self.accumulation))
        while self.step < config.max_steps:
            step_logs = []
            for micro in range(self.accumulation):
                micro_step = self.step * self.accumulation + micro
                # first: starting the loader draws its workers' base seed from torch's RNG
                batch = self._stage2_batch(micro_step, batches) if config.stage == 2 else next(batches)
                torch.manual_seed(_mix(config.seed, micro_step, accelerator.process_index))  # dropout, sampling
                rng = np.random.default_rng([config.seed, micro_step, accelerator.process_index])
                with accelerator.accumulate(self.model):
                    if config.stage == 2:
                        result = self.stage2_loss(micro_step, batch)
                    else:
                        result = loss_fn(batch, rng)
                    if not torch.isfinite(result["loss"]):
                        self._diverged(result["logs"])
                    accelerator.backward(result["loss"])
                    clip_logs = {}
                    if accelerator.sync_gradients:
                        if self.trainable_row is not None:
                            self.trainable_row.mask_gradient()  # before clipping: the frozen rows count for nothing
                        clip_logs = self._clip_gradients()
                    self.optimizer.step()
                    if accelerator.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                step_logs.append(result["logs"])
            self.step += 1
            last_logs = {key: _mean([l[key] for l in step_logs]) for key in step_logs[0]}
            last_logs.update(clip_logs)
            last_logs["lr"] = self.scheduler.get_last_lr()[0]
            self._log(last_logs)
            bar.update(1)
            bar.set_postfix(loss=f"{last_logs['loss']:.4f}")
            if config.save_steps and self.step % config.save_steps == 0 and self.step < config.max_steps:
                self.save_checkpoint()
            if config.eval_steps and self.step % config.eval_steps == 0 and self.eval_pairs and \
                    self.step < config.max_steps:
                evaluation = self.evaluate()
                self._log(evaluation)
                last_logs.update(evaluation)
        bar.close()
        # The model is safe on disk before the final evaluation, which can be long (a CoT per video).
        self.save_checkpoint()
        self._publish_final()
        final = self.evaluate() if self.eval_pairs else {}
        if final:
            self._log({**final, "final": 1})
        if accelerator.is_main_process:
            plot_curves(self.run.metrics_path, self.output_dir / "curves.png")
        accelerator.end_training()
        return {**last_logs, **final}

    def _clip_gradients(self) -> dict:
        """Clip to --max-grad-norm: the head's gradient and the rest's each on its own (official stage 2 under FSDP),
        or one norm over both (--grad-norm-groups joint). Returns the norms before clipping."""
        config, accelerator = self.config, self.accelerator
        if not config.max_grad_norm:
            return {}
        if config.grad_norm_groups == "joint":
            return {"grad_norm": _float(accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm))}
        head = {id(p) for p in accelerator.unwrap_model(self.model).head.parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        actor, head_params = [p for p in trainable if id(p) not in head], [p for p in trainable if id(p) in head]
        logs = {"head_grad_norm": _float(accelerator.clip_grad_norm_(head_params, config.max_grad_norm))}
        if actor:
            logs["grad_norm"] = _float(accelerator.clip_grad_norm_(actor, config.max_grad_norm))
        return logs

    def _diverged(self, logs: dict):
        last = self.run.latest_checkpoint()
        keep = f"; the last good checkpoint is {last}" if last else "; no checkpoint was written yet"
        raise FloatingPointError(f"step {self.step + 1}: the loss is not finite ({logs}); training stopped{keep}. "
                                 f"Lower the learning rate or check the data, then --resume")

    def _log(self, logs: dict):
        self.accelerator.log(logs, step=self.step)
        self.run.log({"step": self.step, **logs})

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out preference accuracy (with and without ties, the official ties-as-errors figure, per slice) of the
        current model, with a progress bar; the CoT parse rate when it thinks (a warning when no CoT parses)."""
        model = self.accelerator.unwrap_model(self.model)
        result = evaluate_pairs(model, self.eval_pairs, think=self.config.eval_think, batch_size=16,
                                max_new_tokens=self.config.eval_max_new_tokens,
                                progress=self.accelerator.is_main_process, num_workers=self.config.num_workers)
        logs = {"eval_accuracy_with_ties": result["accuracy_with_ties"],
                "eval_accuracy_ties_as_errors": result["accuracy_ties_as_errors"]}
        if result["accuracy_without_ties"] is not None:
            logs["eval_accuracy_without_ties"] = result["accuracy_without_ties"]
        for name, value in result.get("accuracy_without_ties_by_slice", {}).items():
            if name != "all":
                logs[f"eval_accuracy_{name}"] = value
        if self.config.eval_think:
            cots = [cot for row in result["rows"] for cot in (row["cot_a"], row["cot_b"])]
            logs["eval_cot_parse_rate"] = float(np.mean([parse_answer(c).error is None for c in cots]))
            if logs["eval_cot_parse_rate"] == 0 and self.accelerator.is_main_process:
                logger.warning("step %d: none of the %d CoTs the model wrote for the evaluation pairs parses (no "
                               "<answer> JSON with an overall score): it has not learnt to write the answer format; "
                               "stage 1 teaches it with --lm-loss-weight > 0 and CoTs in the data", self.step, len(cots))
        return logs

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self):
        """checkpoint-N/: the model in the DeScore format (loads with from_pretrained), the trainable weights,
        optimizer and scheduler state, and in stage 2 the current rollout batch (one file per process, so that a
        resumed run makes the same off-policy updates). Written atomically; older ones beyond the limit removed."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        model = accelerator.unwrap_model(self.model)
        # Under FSDP every process holds shards: gathered (collectively) into full tensors on the main process.
        state = gather_state(model, self.optimizer, main_process=accelerator.is_main_process)

        def write(tmp: Path):
            model.save_pretrained(tmp / "model", state_dict=state.model)
            save_file(state.trainable, tmp / "trainable.safetensors")
            torch.save(state.optimizer, tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.rollouts is not None:
                torch.save(self.rollouts, tmp / "rollouts-0.pt")

        path = self.run.save_checkpoint(self.step, write, keep_last=self.config.save_total_limit)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process and self.rollouts is not None:
            torch.save(self.rollouts, path / f"rollouts-{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()

    def _resume(self) -> bool:
        """Load the newest checkpoint of the run (metrics past it are dropped). False when there is none."""
        self.step = self.run.resume_step()
        latest = self.run.latest_checkpoint()
        if latest is None:
            return False
        load_state(self.accelerator.unwrap_model(self.model), self.optimizer, latest)  # collective under FSDP
        self.scheduler.load_state_dict(torch.load(latest / "scheduler.pt", map_location="cpu", weights_only=True))
        rollouts = latest / f"rollouts-{self.accelerator.process_index}.pt"
        if rollouts.is_file():
            self.rollouts = torch.load(rollouts, map_location="cpu", weights_only=True)
        return True

    def _publish_final(self):
        """Copy the last checkpoint's model to output_dir itself, file by file with atomic renames, the config
        last: a reader sees descore_config.json only once everything else is in place."""
        if not self.accelerator.is_main_process:
            return
        source = self.output_dir / f"checkpoint-{self.step}" / "model"
        entries = sorted(source.iterdir(), key=lambda p: p.name == "descore_config.json")
        for entry in entries:
            target = self.output_dir / entry.name
            tmp = self.output_dir / f".{entry.name}.tmp"
            if entry.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(entry, tmp)
                if target.exists():
                    shutil.rmtree(target)
            else:
                shutil.copy2(entry, tmp)
            os.replace(tmp, target)


# ---------------------------------------------------------------------- helpers
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


def _geometry(config: TrainConfig, num_processes: int) -> tuple[int, int]:
    """(micro-batches per optimiser step on each process, optimiser steps per rollout batch). Stage 2 counts in
    global terms, as the official verl config does (DeScore Sec. 3.3): a rollout batch of `rollout_batch_size` pairs
    (2 x that many videos, each with num_rollouts sequences), optimiser steps of `actor_batch_size` videos; the same
    global batches on any number of processes. Stages 1 and 3: gradient_accumulation_steps per process."""
    if config.stage != 2:
        return config.gradient_accumulation_steps, 1
    pairs_per_step, per_micro = config.actor_batch_size // 2, config.batch_size * num_processes
    if pairs_per_step % per_micro:
        raise UserError(f"--actor-batch-size {config.actor_batch_size} ({pairs_per_step} pairs per optimiser step) is "
                        f"not a multiple of --batch-size {config.batch_size} x {num_processes} process(es): lower "
                        f"--batch-size or raise --actor-batch-size")
    accumulation = pairs_per_step // per_micro
    if config.gradient_accumulation_steps is not None and config.gradient_accumulation_steps != accumulation:
        logger.warning("--gradient-accumulation-steps %d does not apply to stage 2: an optimiser step holds "
                       "--actor-batch-size %d videos, i.e. %d micro-batch(es) of --batch-size %d pair(s) on each of %d "
                       "process(es)", config.gradient_accumulation_steps, config.actor_batch_size, accumulation,
                       config.batch_size, num_processes)
    return accumulation, 2 * config.rollout_batch_size // config.actor_batch_size


def _bt_label(pair, source: str) -> str:
    """The verdict the stage-2 BT term reads: the answer JSON's (official) where the row has one, else the label."""
    return pair.answer_label if source == "answer" and pair.answer_label is not None else pair.label


def _mean(values: list) -> float:
    """Mean over the micro-batches of a step, leaving out NaN (a metric a micro-batch had no rows for)."""
    known = [v for v in values if not math.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def _float(norm) -> float:
    """A gradient norm as a float (a DTensor under FSDP2 is made whole first)."""
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(norm)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _overall(cot) -> float:
    """The overall score of a CoT's <answer> block, NaN when there is none."""
    score = parse_answer(cot).overall_score if cot else None
    return float("nan") if score is None else score


def _mix(*values) -> int:
    return int(np.random.default_rng(list(values)).integers(2**62))


def _jsonable(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _tracker_available(name: str) -> bool:
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return False
    return True


def plot_curves(metrics_path: Path, png_path: Path):
    """A PNG of every logged curve (loss, accuracy, rollout reward, ...) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines()] if Path(metrics_path).exists() else []
    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k not in ("step", "final", "lr")]
    if not keys:
        return
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


@dataclass
class RunArguments:
    """How to open the run directory (not part of what the run is, so never compared on --resume)."""

    resume: bool = field(default=False, metadata=_help(
        "Continue the run in --output-dir from its newest checkpoint (exactly: same data order and random draws). "
        f"Only {', '.join('--' + n.replace('_', '-') for n in MAY_CHANGE_ON_RESUME)} may differ from the saved run."))
    overwrite: bool = field(default=False, metadata=_help("Delete the run in --output-dir and start again."))


def argument_parser(config_class=TrainConfig, description: str = "", prog: str | None = None):
    """transformers' HfArgumentParser over a TrainConfig (sub)class and RunArguments: every field is a flag
    (`--max-steps` and `--max_steps`) with its help text and default; a bool field also gets `--no-<flag>`.
    A bad value is one line on stderr and exit status 2."""
    import argparse

    from transformers import HfArgumentParser

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass  # the recipe's docstring as written, and "(default: ...)" after every flag's help

    parser = one_line_errors(HfArgumentParser((config_class, RunArguments), prog=prog, description=description,
                                              formatter_class=Formatter))
    existing = set(parser._option_string_actions)
    for spec in dataclasses.fields(config_class):
        negative = "--no-" + spec.name.replace("_", "-")
        if "bool" in str(spec.type) and negative not in existing:
            parser.add_argument(negative, dest=spec.name, action="store_false", help=argparse.SUPPRESS)
    return parser


def parse_train_args(argv=None, config_class=TrainConfig, description: str = "", prog: str | None = None):
    """(config, run arguments) from the command line; see `argument_parser`."""
    parser = argument_parser(config_class, description, prog)
    config, run_args = parser.parse_args_into_dataclasses(args=argv)
    return config, run_args


def run_training(config: TrainConfig, run_args: RunArguments, name: str) -> int:
    """What the recipes run: errors in the input are short messages (exit 2), a diverged run exits 1."""
    try:
        trainer = Trainer(config, resume=run_args.resume, overwrite=run_args.overwrite)
    except (ValueError, FileNotFoundError) as error:  # UserErrors, and the loaders' errors about a flag's file
        return report(error, name)
    if trainer.resumed:
        logger.info("resumed from step %d", trainer.step)
    try:
        result = trainer.train()
    except FloatingPointError as error:
        logger.error("%s: %s", name, error)
        return 1
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))  # lr 2e-6 stays visible
    logger.info("done: %s\nmodel: %s", summary, config.output_dir)
    return 0
