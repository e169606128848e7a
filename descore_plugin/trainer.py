"""Training DeScore: stage 1 (discriminative cold start) and stage 2 (dual-objective RL), DeScore Sec. 3.2-3.3.

    stage 1: Bradley-Terry on the head, CoTs teacher-forced, random CoT masking (one coin per pair, p 0.5),
             optional next-token loss on the CoT (weight 0 officially).
    stage 2: n sampled rollouts per video; GRPO on the CoT with the rule-based reward (0.7 sub-dimensions +
             0.1 format + 0.2 length), group-normalised advantages, token-level aggregation, low-variance KL to
             the reference (adapters disabled); plus the auxiliary Bradley-Terry loss on the head that pairs
             rollout k of video A with rollout k of video B (weight 5e-3); one backward.

Runs single-process on a CPU and under `accelerate launch` on many GPUs (DDP, DeepSpeed or FSDP from accelerate's
config); there is no hand-written distributed code. Resuming is exact: the data order and every random draw are
functions of (seed, step), and checkpoints hold the trainable weights, optimizer and scheduler.
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .checkpoint import atomic_directory
from .data import DataError, load_pairs
from .dataset import InputEncoder, PairCollator, PairDataset, PairOrder, VideoCache, pair_loader, stream_videos
from .evaluation import evaluate_pairs
from .losses import (bradley_terry_loss, bradley_terry_ties_loss, distillation_loss, group_advantages, grpo_token_loss,
                     pointwise_distribution_loss, rollout_reward, score_gap_loss)
from .model import BACKBONE_DIR, DeScoreReward
from .prompt import parse_answer

LABEL_SIGN = {"A": 1, "B": -1, "tie": 0}


@dataclass
class TrainConfig:
    """One training run. Defaults are the official ones (method.md) unless the comment says otherwise; a field
    left None takes its stage's official default (see `resolve`)."""

    # --- what to train, on what ---
    model: str = ""
    """Checkpoint directory or hub id to start from (a DeScore checkpoint: `descore init-tiny` or a stage-1 run)."""
    train_data: str = ""
    """Pair file (CSV / JSONL, our format, the official DeScore CSV or VideoAlign columns); see data.py."""
    output_dir: str = ""
    """The final model is written here (loads with DeScoreReward.from_pretrained); checkpoints in checkpoint-N/."""
    eval_data: str | None = None
    """Held-out pair file for accuracy during and after training."""
    stage: int = 1
    """1: cold start (Bradley-Terry), 2: dual-objective RL, 3: distil `teacher` into a no-CoT student."""

    # --- optimisation ---
    max_steps: int = 1000
    """Optimizer steps (official stage 1: 4 epochs of ~22k pairs at an effective batch of 4)."""
    batch_size: int = 1
    """Pairs per process per micro-step (official: 1, with gradient accumulation 4)."""
    gradient_accumulation_steps: int = 4
    learning_rate: float | None = None
    """Stage 1: 2e-6 (all groups); stage 2: 1e-6."""
    head_learning_rate: float | None = None
    """Learning rate of the head (None: learning_rate)."""
    vision_learning_rate: float | None = None
    """Learning rate of the vision tower when it trains (None: learning_rate)."""
    embedding_learning_rate: float | None = None
    """Learning rate of the trainable embedding rows (None: learning_rate)."""
    weight_decay: float | None = None
    """Stage 1: 0 (not set officially, so the AdamW default of transformers' Trainer); stage 2: 1e-2."""
    warmup_ratio: float = 0.05
    """Constant schedule after a linear warm-up over this fraction of max_steps (official)."""
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    """"bf16" on GPUs (official); "no" on CPUs."""
    gradient_checkpointing: bool = False

    # --- what trains ---
    lora_rank: int | None = None
    """None: the stage's official choice. Stage 1: 64 (a LoRA on every LLM linear). Stage 2: 0, i.e. every LLM
    weight trains against a frozen reference copy (official; twice the model memory). > 0 in stage 2 is our
    memory-saving option: the stage-1 model (its adapter merged) is the reference, reached by switching the new
    adapter off. 0 in stage 1: full fine-tuning. A starting checkpoint's own adapter is always merged first."""
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    train_vision: bool | None = None
    """Vision tower trainable: stage 1 yes (official), stage 2 no."""
    train_embeddings: str = "reward_token"
    """"reward_token": only the <Reward> row trains (official); "all": every row (tiny models from scratch)."""

    # --- stage 1 ---
    loss: str = "bt"
    """"bt": Bradley-Terry, ties dropped (official); "bt_ties": Rao-Kupper ties (VideoAlign), k = ties_k."""
    ties_k: float = 5.0
    cot_mask_prob: float = 0.5
    """Probability that a PAIR loses both CoTs (official, hard-coded 0.5)."""
    lm_loss_weight: float = 0.0
    """Weight of the next-token loss on the CoT text (official 0; > 0 teaches the model to write the CoT; a tiny model
    from random weights learnt to write the prompt-alignment verdict with 4 and not with 1, tests/test_learning.py)."""

    # --- distribution head (config.head == "distribution"; Z-Reward, arXiv 2606.09076, our reading) ---
    distribution_loss_weight: float = 1.0
    """Pointwise supervision of the score distribution: cross-entropy to a Gaussian-smoothed one-hot at the
    overall score of the pair's CoT answer (where it parses). Our default."""
    score_gap_loss_weight: float = 0.1
    """Pairwise supervision of score gaps: (E[s_A] - E[s_B] - (s_A - s_B))^2. Our default."""
    distribution_sigma: float = 0.25
    """Width (score units) of the smoothed target distribution. Our default."""

    # --- stage 3: distillation of a CoT teacher into a no-CoT student (Z-Reward RISD, our reading) ---
    teacher: str | None = None
    """Teacher checkpoint (scores WITH CoT). The student is `model` and learns to score with think=False."""
    num_cot_samples: int = 4
    """Sampled teacher CoTs per video; the teacher's CoT-conditioned score distributions are averaged over them."""
    teacher_temperature: float = 0.7
    """Sampling temperature of the teacher's CoTs (our default: 1.0 gives tiny teachers off-distribution CoTs)."""
    teacher_max_new_tokens: int | None = None
    distill_bt_weight: float = 0.0
    """Optional Bradley-Terry on the pair labels added to the distillation loss (0: pure distillation)."""

    # --- stage 2 ---
    num_rollouts: int = 8
    rollout_temperature: float = 1.0
    max_new_tokens: int | None = None
    """Rollout length limit (None: the model's max_new_tokens)."""
    kl_coef: float = 1e-5
    bt_weight: float = 5e-3
    reward_weights: tuple = (0.7, 0.1, 0.2)
    """Weights of sub-dimension accuracy, format and length in the rollout reward (official)."""
    length_thresholds: tuple = (500, 1000, 1500, 2000)
    """Character counts of the length steps (official)."""

    # --- input pipeline (descore_plugin/dataset.py) ---
    num_workers: int = 2
    """DataLoader worker processes that decode the videos, sample frames and run the processor ahead of the training
    step (0: all of it in the training process). Our default."""
    prefetch_factor: int = 2
    """Batches each worker prepares ahead of the step."""
    video_cache_bytes: int = 0
    """Keep up to this many bytes of decoded, sampled frames per process, least recently used dropped first
    (0: decode every time; the default). Each worker holds its own cache."""

    # --- evaluation, checkpoints, logging ---
    eval_steps: int = 0
    """Evaluate every N steps (0: only at the end)."""
    eval_think: bool = True
    """Evaluate with generated CoTs (True) or the no-CoT fast path."""
    eval_max_new_tokens: int | None = None
    save_steps: int = 500
    save_total_limit: int = 2
    """Keep this many checkpoint-N folders (the oldest go first)."""
    seed: int = 0
    log_with: str | None = "tensorboard"
    """accelerate tracker ("tensorboard", "wandb", ...) or None; metrics.jsonl and curves.png are always written."""

    def resolve(self) -> "TrainConfig":
        """Fill the stage-dependent defaults and check the values."""
        stage1 = self.stage != 2  # the cold start's defaults also serve distillation
        if self.stage not in (1, 2, 3):
            raise ValueError(f"--stage {self.stage}: expected 1 (cold start), 2 (RL) or 3 (distillation)")
        if self.stage == 3 and not self.teacher:
            raise ValueError("--stage 3 (distillation) needs --teacher DIR_OR_ID")
        if self.learning_rate is None:
            self.learning_rate = 2e-6 if stage1 else 1e-6
        if self.weight_decay is None:
            self.weight_decay = 0.0 if stage1 else 1e-2
        if self.lora_rank is None:
            self.lora_rank = 64 if stage1 else 0
        if self.train_vision is None:
            self.train_vision = stage1
        if self.loss not in ("bt", "bt_ties"):
            raise ValueError(f"--loss {self.loss!r}: expected 'bt' or 'bt_ties'")
        if self.train_embeddings not in ("reward_token", "all"):
            raise ValueError(f"--train-embeddings {self.train_embeddings!r}: expected 'reward_token' or 'all'")
        if not 0.0 <= self.cot_mask_prob <= 1.0:
            raise ValueError(f"--cot-mask-prob {self.cot_mask_prob}: must be in [0, 1]")
        for name in ("model", "train_data", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} is required")
        return self


class Trainer:
    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.config = config.resolve()
        self.output_dir = Path(config.output_dir)
        project = ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs"))
        log_with = config.log_with if config.log_with and _tracker_available(config.log_with) else None
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=log_with,
            project_config=project,
            step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, on any number of processes
        )
        self.train_pairs = self._load(config.train_data, stage2=config.stage == 2)
        self.eval_pairs = self._load(config.eval_data, stage2=False) if config.eval_data else None

        torch.manual_seed(config.seed)  # the LoRA initialisation draws from the global generator
        model = merge_adapter(DeScoreReward.from_pretrained(config.model))
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
        if self.reference is not None:
            self.reference.to(self.accelerator.device)
        self.step = 0
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.teacher_targets = self._teacher_targets() if config.stage == 3 else None

    # ------------------------------------------------------------------ set-up
    def _load(self, path, stage2: bool):
        pairs = load_pairs(path, require_scores=stage2)
        keep = [p for p in pairs if p.label != "invalid"]
        if self.config.stage == 1 and self.config.loss == "bt" and path == self.config.train_data:
            keep = [p for p in keep if p.label != "tie"]  # official cold start drops ties
        if not keep:
            raise DataError(f"{path}: no usable pairs (all {len(pairs)} are invalid or ties dropped by --loss bt)")
        return keep

    def _set_trainable(self, model: DeScoreReward):
        config = self.config
        model.requires_grad_(False)
        if config.lora_rank > 0:
            model.add_lora(config.lora_rank, config.lora_alpha, config.lora_dropout,
                           train_reward_token=config.train_embeddings == "reward_token")
        else:
            model.vlm.model.language_model.requires_grad_(True)
            model.vlm.lm_head.requires_grad_(True)
        embeddings = model.vlm.get_input_embeddings()
        if config.train_embeddings == "all":
            embeddings.requires_grad_(True)
        elif config.lora_rank == 0:
            # Only the <Reward> row learns (official); peft's trainable tokens do this when there is an adapter.
            embeddings.weight.requires_grad_(True)
            row = torch.zeros(embeddings.weight.shape[0], 1)
            row[model.reward_token_id] = 1
            embeddings.weight.register_hook(lambda grad: grad * row.to(grad))
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
                             stop_micro_step=config.max_steps * config.gradient_accumulation_steps,
                             num_processes=accelerator.num_processes, collate=self._collator(),
                             num_workers=config.num_workers, prefetch_factor=config.prefetch_factor,
                             cache_bytes=config.video_cache_bytes, pin_memory=accelerator.device.type == "cuda")
        return accelerator.prepare(loader)

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
        if config.loss == "bt_ties":
            bt = bradley_terry_ties_loss(r_a, r_b, signs, k=config.ties_k)
        else:
            chosen, rejected = torch.where(signs > 0, r_a, r_b), torch.where(signs > 0, r_b, r_a)
            bt = bradley_terry_loss(chosen, rejected)
        loss = bt
        logs = {"bt_loss": bt.item(), "train_accuracy": ((r_a - r_b) * signs > 0).float().mean().item(),
                "masked_fraction": float(masked.mean())}
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
        keys = [(p.video_a, p.prompt) for p in pairs] + [(p.video_b, p.prompt) for p in pairs]
        prompts = [p.prompt for p in pairs] * 2
        batch = model.append_cots(model.encode_prompts(videos, prompts), [None] * len(videos))
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
        """The teacher's score distribution for every (video, prompt) of the training pairs, averaged over
        `num_cot_samples` sampled CoTs. Computed once and stored in output_dir (a resumed run reuses the file)."""
        config = self.config
        keys = sorted({(v, p.prompt) for p in self.train_pairs for v in (p.video_a, p.video_b)})
        path = self.output_dir / "teacher_targets.safetensors"
        if path.is_file():
            stored = load_file(path)
            if stored["targets"].shape[0] == len(keys):
                return dict(zip(keys, stored["targets"]))
        teacher = DeScoreReward.from_pretrained(config.teacher, device=self.accelerator.device).eval()
        samples, targets = config.num_cot_samples, []
        chunks = stream_videos([path for path, _ in keys], fps=teacher.config.fps, num_frames=teacher.config.num_frames,
                               chunk_size=8, num_workers=config.num_workers, prefetch_factor=config.prefetch_factor)
        bar = tqdm(total=len(keys), desc="teacher CoTs", disable=not self.accelerator.is_main_process)
        for start, items in zip(range(0, len(keys), 8), chunks):
            chunk = keys[start : start + 8]
            failed = [item.error for item in items if item.error]
            if failed:
                raise DataError(f"{config.train_data}: {failed[0]}")
            videos = [item.video for item in items for _ in range(samples)]
            prompts = [prompt for _, prompt in chunk for _ in range(samples)]
            out = teacher.score(videos, prompts, think=True, batch_size=len(videos), do_sample=True,
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
        return dict(zip(keys, targets))

    def stage2_loss(self, batch: dict, rng: np.random.Generator) -> dict:
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        k = config.num_rollouts
        pairs, videos = batch["pairs"], batch["videos"]
        truths = [p.scores_a for p in pairs] + [p.scores_b for p in pairs]
        prompts = [p.prompt for p in pairs] * 2
        rows = [i for i in range(len(videos)) for _ in range(k)]  # rollout j of video i is row i * k + j
        batch = _to(model.encode_prompts([videos[i] for i in rows], [prompts[i] for i in rows]), self.accelerator.device)

        model.eval()
        with torch.no_grad():
            rollouts = model.sample_cots(batch, config.max_new_tokens or model.config.max_new_tokens,
                                         temperature=config.rollout_temperature)
        model.train()
        texts = model.tokenizer.batch_decode(rollouts["cot_ids"], skip_special_tokens=True)
        scored = [rollout_reward(t, truths[i], config.reward_weights, config.length_thresholds) for t, i in zip(texts, rows)]
        rewards = torch.tensor([s["reward"] for s in scored], device=self.accelerator.device).view(-1, k)  # (2n, k)
        advantages = group_advantages(rewards).view(-1)

        full = _to(model.append_cots(batch, rollouts["cot_ids"], with_labels=True, ended=rollouts["ended"]), self.accelerator.device)
        out = self.model(**full)
        ref_logp = None
        if config.kl_coef > 0:
            with torch.no_grad():
                if self.reference is not None:
                    ref_logp = self.reference(**full)["token_logprobs"]
                else:
                    with model.backbone.disable_adapter():
                        ref_logp = model(**full)["token_logprobs"]
        policy = grpo_token_loss(out["token_logprobs"], advantages, out["label_mask"].float(), ref_logp, config.kl_coef)

        # Auxiliary BT on the head: rollout j of video A against rollout j of video B, ties skipped.
        n = len(pairs)
        head = out["rewards"].view(2 * n, k)
        signs = torch.tensor([LABEL_SIGN[p.label] for p in pairs], device=head.device)
        decided = signs != 0
        bt = torch.zeros((), device=head.device)
        if decided.any():
            r_a, r_b = head[:n][decided], head[n:][decided]  # (m, k)
            s = signs[decided].unsqueeze(-1)
            bt = bradley_terry_loss(torch.where(s > 0, r_a, r_b).reshape(-1), torch.where(s > 0, r_b, r_a).reshape(-1))
        loss = policy["loss"] + config.bt_weight * bt
        logs = {"loss": loss.item(), "policy_loss": policy["loss"].item(), "kl": policy["kl"].item(),
                "ratio": policy["ratio"].item(), "bt_loss": bt.item(), "rollout_reward": rewards.mean().item(),
                "rollout_accuracy": float(np.mean([s["accuracy"] for s in scored])),
                "rollout_format": float(np.mean([s["format"] for s in scored]))}
        return {"loss": loss, "logs": logs}

    # ------------------------------------------------------------------ loop
    def train(self, stop_after: int | None = None) -> dict:
        """Run to max_steps (resuming from the newest checkpoint if there is one and `resume` was asked).
        `stop_after` ends the run after that many steps without a final save, as a kill would (tests)."""
        config, accelerator = self.config, self.accelerator
        accelerator.init_trackers("descore", config={k: v for k, v in dataclasses.asdict(config).items()
                                                     if isinstance(v, (int, float, str, bool))})
        loss_fn = {1: self.stage1_loss, 2: self.stage2_loss, 3: self.distill_loss}[config.stage]
        bar = tqdm(total=config.max_steps, initial=self.step, desc=f"stage {config.stage}",
                   disable=not accelerator.is_main_process)
        last_logs = {}
        batches = iter(self.train_loader(self.step * config.gradient_accumulation_steps))
        while self.step < config.max_steps:
            step_logs = []
            for micro in range(config.gradient_accumulation_steps):
                micro_step = self.step * config.gradient_accumulation_steps + micro
                batch = next(batches)  # first: starting the loader draws its workers' base seed from torch's RNG
                torch.manual_seed(_mix(config.seed, micro_step, accelerator.process_index))  # dropout, sampling
                rng = np.random.default_rng([config.seed, micro_step, accelerator.process_index])
                with accelerator.accumulate(self.model):
                    result = loss_fn(batch, rng)
                    if not torch.isfinite(result["loss"]):
                        self._diverged(result["logs"])
                    accelerator.backward(result["loss"])
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                    self.optimizer.step()
                    if accelerator.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                step_logs.append(result["logs"])
            self.step += 1
            last_logs = {key: float(np.mean([l[key] for l in step_logs])) for key in step_logs[0]}
            last_logs["lr"] = self.scheduler.get_last_lr()[0]
            if config.eval_steps and self.step % config.eval_steps == 0 and self.eval_pairs:
                last_logs.update(self.evaluate())
            self._log(last_logs)
            bar.update(1)
            bar.set_postfix(loss=f"{last_logs['loss']:.4f}")
            if stop_after is not None and self.step >= stop_after:
                bar.close()
                return last_logs
            if config.save_steps and self.step % config.save_steps == 0 and self.step < config.max_steps:
                self.save_checkpoint()
        bar.close()
        final = self.evaluate() if self.eval_pairs else {}
        if final:
            self._log({**final, "final": 1})
        self.save_checkpoint()
        self._publish_final()
        if accelerator.is_main_process:
            plot_curves(self.metrics_path, self.output_dir / "curves.png")
        accelerator.end_training()
        return {**last_logs, **final}

    def _diverged(self, logs: dict):
        last = sorted(self.output_dir.glob("checkpoint-*"), key=_checkpoint_step)
        keep = f"; the last good checkpoint is {last[-1]}" if last else "; no checkpoint was written yet"
        raise FloatingPointError(f"step {self.step + 1}: the loss is not finite ({logs}); training stopped{keep}. "
                                 f"Lower the learning rate or check the data, then --resume")

    def _log(self, logs: dict):
        self.accelerator.log(logs, step=self.step)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps({"step": self.step, **logs}) + "\n")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out preference accuracy (with and without ties, and per slice) of the current model."""
        model = self.accelerator.unwrap_model(self.model)
        result = evaluate_pairs(model, self.eval_pairs, think=self.config.eval_think, batch_size=16,
                                max_new_tokens=self.config.eval_max_new_tokens, progress=False,
                                num_workers=self.config.num_workers)
        logs = {"eval_accuracy_with_ties": result["accuracy_with_ties"]}
        if result["accuracy_without_ties"] is not None:
            logs["eval_accuracy_without_ties"] = result["accuracy_without_ties"]
        for name, value in result.get("accuracy_without_ties_by_slice", {}).items():
            if name != "all":
                logs[f"eval_accuracy_{name}"] = value
        if self.config.eval_think:
            cots = [cot for row in result["rows"] for cot in (row["cot_a"], row["cot_b"])]
            logs["eval_cot_parse_rate"] = float(np.mean([parse_answer(c).error is None for c in cots]))
        return logs

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self):
        """checkpoint-N/: the model in the DeScore format (loads with from_pretrained), the trainable weights,
        optimizer and scheduler state, and the step. Written atomically; older ones beyond the limit removed."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(self.model)
            with atomic_directory(self.output_dir / f"checkpoint-{self.step}") as tmp:
                model.save_pretrained(tmp / "model")
                trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
                save_file(trainable, tmp / "trainable.safetensors")
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                (tmp / "trainer_state.json").write_text(json.dumps({"step": self.step, "config": _jsonable(self.config)}))
            checkpoints = sorted(self.output_dir.glob("checkpoint-*"), key=_checkpoint_step)
            for old in checkpoints[: max(0, len(checkpoints) - self.config.save_total_limit)]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint in output_dir. Returns False when there is none."""
        checkpoints = sorted(self.output_dir.glob("checkpoint-*"), key=_checkpoint_step)
        if not checkpoints:
            return False
        latest = checkpoints[-1]
        model = self.accelerator.unwrap_model(self.model)
        saved = load_file(latest / "trainable.safetensors")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location="cpu", weights_only=True))
        self.scheduler.load_state_dict(torch.load(latest / "scheduler.pt", map_location="cpu", weights_only=True))
        self.step = json.loads((latest / "trainer_state.json").read_text())["step"]
        if self.accelerator.is_main_process and self.metrics_path.exists():  # drop log lines past the checkpoint
            lines = [l for l in self.metrics_path.read_text().splitlines() if json.loads(l)["step"] <= self.step]
            self.metrics_path.write_text("".join(l + "\n" for l in lines))
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


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _overall(cot) -> float:
    """The overall score of a CoT's <answer> block, NaN when there is none."""
    score = parse_answer(cot).overall_score if cot else None
    return float("nan") if score is None else score


def _mix(*values) -> int:
    return int(np.random.default_rng(list(values)).integers(2**62))


def _checkpoint_step(path: Path) -> int:
    suffix = path.name.split("-")[-1]
    return int(suffix) if suffix.isdigit() else -1


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


def parse_train_args(argv=None, description: str = "", defaults: dict | None = None, aliases: dict | None = None):
    """Command-line flags for every TrainConfig field (`--max-steps` for max_steps, ...), plus `--resume`.
    `defaults` override field defaults (a recipe's own); `aliases` add flag names (`{"--student": "model"}`)."""
    defaults, aliases = defaults or {}, aliases or {}
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(TrainConfig):
        flags = ["--" + field.name.replace("_", "-")] + [a for a, name in aliases.items() if name == field.name]
        default = defaults.get(field.name, field.default)
        kind = str(field.type)
        if "bool" in kind:
            parser.add_argument(*flags, dest=field.name, action=argparse.BooleanOptionalAction, default=default)
        elif "tuple" in kind:
            parser.add_argument(*flags, dest=field.name, type=float, nargs="+", default=default)
        else:
            convert = float if "float" in kind else int if "int" in kind else _text_or_none
            parser.add_argument(*flags, dest=field.name, type=convert, default=default)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["reward_weights"] = tuple(values["reward_weights"])
    values["length_thresholds"] = tuple(int(v) for v in values["length_thresholds"])
    return TrainConfig(**values), args


def _text_or_none(value: str):
    return None if value.lower() == "none" else value


def run_training(config: TrainConfig, resume: bool, name: str) -> int:
    """What the recipes run: errors in the input are short messages (exit 2), a diverged run exits 1."""
    try:
        trainer = Trainer(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    if resume and trainer.resume():
        print(f"resumed from step {trainer.step}")
    try:
        result = trainer.train()
    except FloatingPointError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float))
    print(f"done: {summary}\nmodel: {config.output_dir}")
    return 0
