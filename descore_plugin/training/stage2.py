"""Stage 2, dual-objective RL (DeScore Sec. 3.3, the update regime of verl's actor as the official code runs it):
n sampled rollouts per video; GRPO on the CoT with the rule-based reward (0.7 sub-dimensions + 0.1 format + 0.2
length), group-normalised advantages (unbiased std), asymmetric dual-clip PPO ratio, low-variance KL to the
reference; plus the auxiliary Bradley-Terry loss on the head pairing rollout k of video A with rollout k of video B
(weight 5e-3). A rollout batch (--rollout-batch-size pairs, in global terms) is sampled at once, then split into
optimiser steps of --actor-batch-size videos, so the later updates are off-policy and the clip acts. The formulas:
docs/training.md, "Stage 2: the dual-objective loss"."""

import copy
import logging
import shutil

import numpy as np
import torch

from descore_plugin.data.video import load_video
from descore_plugin.modeling.model import DeScoreReward
from descore_plugin.training.base import LABEL_SIGN, RewardModelTrainer, _mix, _to
from descore_plugin.training.config import TrainConfig
from descore_plugin.training.losses import (
    bradley_terry_loss,
    group_advantages_unbiased,
    grpo_policy_loss,
    rollout_reward,
)
from descore_plugin.training.sharding import prepare_frozen
from descore_plugin.utils.errors import UserError

__all__ = ["DualObjectiveTrainer", "stage2_geometry", "expand_rows", "OFFICIAL_PROMPT_TOKENS"]

OFFICIAL_PROMPT_TOKENS = 6200
"""The official stage 2's prompt cap (data.max_prompt_length), which it right-truncates; here a warning only."""
PROBE_PAIRS = 2
"""Stage 2 reads the starting model's CoTs for the videos of this many training pairs before it starts."""
logger = logging.getLogger(__name__)


class DualObjectiveTrainer(RewardModelTrainer):
    """`--stage 2`. State beyond the weights: the current rollout batch (`self.rollouts`, saved per process)."""

    requires_scores = True
    curve_names = (
        "train/loss",
        "reward/rollout",
        "train/kl",
        "train/policy_loss",
        "train/bt_loss",
        "train/clip_fraction",
        "train/ratio",
        "reward/rollout_format",
    )

    def micro_batches_per_step(self, num_processes: int) -> int:
        self.accumulation, self.steps_per_rollout = stage2_geometry(self.config, num_processes)
        return self.accumulation

    def lm_head_trains(self) -> bool:
        return True  # the policy loss reads the logits

    def _record_cot_length(self, model: DeScoreReward):
        """Stage 2's rollout limit: the start model's CoT limit (sized to what it was trained on) unless given; it is
        also the CoT length recorded in the saved model's config."""
        limit = getattr(model.config, "cot_token_limit", None)
        self.rollout_tokens = self.config.max_new_tokens or (limit() if limit else model.config.max_new_tokens)
        if hasattr(model.config, "trained_cot_tokens"):
            model.config.trained_cot_tokens = self.rollout_tokens

    def _before_training_setup(self, model: DeScoreReward):
        self.reference = None
        self.rollouts = None  # the current rollout batch (see _rollout_batch)
        self._inputs = None  # this process's processed micro-batches of the current rollout batch
        self._warned_prompt_cap = False
        if self.config.lora_rank == 0 and self.config.kl_coef > 0:
            # Full fine-tuning has no adapter to switch off: the KL reference is a frozen copy of the start model.
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def _after_prepare(self):
        if self.reference is not None:  # sharded like the policy under FSDP2 (accelerate shards only with an optimizer)
            self.reference = prepare_frozen(self.accelerator, self.reference)

    def _before_first_step(self, creates_run: bool, resuming: bool):
        if not resuming and not self.config.allow_unparsed_cots:
            self._check_starting_cots(self.accelerator.unwrap_model(self.model), creates_run)

    def _last_micro_step(self) -> int:
        """Where this process's batches end: max_steps rounded up to a whole rollout batch (its rollouts are sampled
        at once, and a resumed run may go on to more steps)."""
        steps = -(-self.config.max_steps // self.steps_per_rollout) * self.steps_per_rollout
        return steps * self.accumulation

    def next_batch(self, micro_step: int, batches) -> dict:
        return self._stage2_batch(micro_step, batches)

    def loss(self, micro_step: int, batch: dict, rng: np.random.Generator) -> dict:
        return self.stage2_loss(micro_step, batch)

    def process_state(self) -> dict | None:
        """This process's share of the current rollout batch (checkpoint-N/rollouts-<rank>.pt), so that a resumed run
        makes the same off-policy updates."""
        return None if self.rollouts is None else {"rollouts": self.rollouts}

    def load_process_state(self, state: dict):
        self.rollouts = state.get("rollouts")

    def stage2_inputs(self, batch: dict) -> dict:
        """A stage-2 micro-batch processed once for its rollouts AND its update (DeScore Sec. 3.3), each video once:
        `prompt` is the processed batch of its videos (CPU tensors, videos A then B), `rows` the video of each
        sequence (video i's rollout j is sequence i * num_rollouts + j; `expand_rows(prompt, rows)` is the batch of
        the sequences), with its pairs and ground truths. The processor and the stored rollout batch see each video
        once, not num_rollouts times."""
        model, k = self.accelerator.unwrap_model(self.model), self.config.num_rollouts
        pairs, videos = batch["pairs"], batch["videos"]
        prompts, instructions = [p.prompt for p in pairs] * 2, [p.instruction for p in pairs] * 2
        rows = [i for i in range(len(videos)) for _ in range(k)]
        prompt = model.encode_prompts(videos, prompts, instructions, stage="rollout")
        longest = int(prompt["attention_mask"].sum(-1).max())
        if longest > OFFICIAL_PROMPT_TOKENS and not self._warned_prompt_cap:
            self._warned_prompt_cap = True
            logger.warning(
                "stage 2: a prompt of %d tokens (video and instruction) is longer than the %d tokens the "
                "official stage 2 keeps (it right-truncates); here every prompt is kept whole",
                longest,
                OFFICIAL_PROMPT_TOKENS,
            )
        return {
            "pairs": pairs,
            "prompt": prompt,
            "rows": rows,
            "truths": [p.scores_a for p in pairs] + [p.scores_b for p in pairs],
        }

    def _stage2_batch(self, micro_step: int, batches) -> dict:
        """This process's processed batch of `micro_step`. At the first micro-step of a rollout batch (or the first
        after a resume) the rest of that rollout batch comes from the loader at once and its rollouts are sampled;
        the update steps then reuse the same processed inputs (each video decoded and processed once)."""
        per_batch = self.steps_per_rollout * self.accumulation
        index = micro_step // per_batch
        if self._inputs is None or self._inputs["index"] != index:
            from tqdm.auto import tqdm

            steps = range(micro_step, (index + 1) * per_batch)
            bar = tqdm(
                steps,
                desc=f"rollout batch {index}: reading videos",
                unit="micro-batch",
                leave=False,
                disable=not self.accelerator.is_main_process or len(steps) < 2,
            )
            self._inputs = {"index": index, "batches": {m: self.stage2_inputs(next(batches)) for m in bar}}
        if self.rollouts is None or self.rollouts["index"] != index:
            self.rollouts = self._rollout_batch(index, self._inputs["batches"])
        return self._inputs["batches"].pop(micro_step)

    @torch.no_grad()
    def _rollout_batch(self, index: int, inputs: dict | None = None) -> dict:
        """Rollout batch `index` (steps_per_rollout x accumulation micro-batches on this process): the CoTs the
        current policy samples, their rule rewards and group advantages, and the per-token log-probs of the sampling
        policy ("old") and of the reference, all computed once, before any update on them (as verl does).
        inputs: micro-step -> `stage2_inputs`, those already processed; others are built here."""
        from tqdm.auto import tqdm

        config, model = self.config, self.accelerator.unwrap_model(self.model)
        per_batch = self.steps_per_rollout * self.accumulation
        micros = []
        model.eval()
        shown = self.accelerator.is_main_process
        # Sampling a rollout batch is the long part of stage 2: one bar counts its micro-batches, one the tokens of
        # the micro-batch being sampled (a CoT of thousands of tokens takes minutes on a CPU).
        bar = tqdm(total=per_batch, desc=f"rollout batch {index}: sampling", unit="micro-batch", disable=not shown)
        tokens = tqdm(total=self.rollout_tokens, desc="tokens", unit="token", leave=False, disable=not shown)
        for micro_step in range(index * per_batch, (index + 1) * per_batch):
            torch.manual_seed(_mix(config.seed, micro_step, self.accelerator.process_index, 1))
            entry = (inputs or {}).get(micro_step) or self.stage2_inputs(self.batch_for(micro_step))
            rows, truths = entry["rows"], entry["truths"]
            batch = expand_rows(_to(entry["prompt"], self.accelerator.device), rows)
            tokens.reset()
            rollouts = model.sample_cots(
                batch,
                self.rollout_tokens,
                temperature=config.rollout_temperature,
                repetition_penalty=config.rollout_repetition_penalty,
                streamer=TokenProgress(tokens) if shown else None,  # draws nothing: the samples are unchanged
            )
            texts = model.tokenizer.batch_decode(rollouts["cot_ids"], skip_special_tokens=True)
            scored = [
                rollout_reward(t, truths[i], config.reward_weights, config.length_thresholds, config.rule_parser)
                for t, i in zip(texts, rows)
            ]
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
            micros.append(
                {
                    "cot_ids": [c.cpu() for c in rollouts["cot_ids"]],
                    "ended": rollouts["ended"],
                    "advantages": group_advantages_unbiased(rewards).view(-1),
                    "rewards": rewards.view(-1),
                    "old_logp": old["token_logprobs"].cpu(),
                    "ref_logp": ref,
                    "tokens": int(old["label_mask"].sum()),
                    "accuracy": torch.tensor([s["accuracy"] for s in scored]),
                    "format": torch.tensor([s["format"] for s in scored]),
                }
            )
            bar.update(1)
        tokens.close()
        bar.close()
        model.train()
        # Token counts per mini-batch over all processes: each micro-batch's policy loss is a share of that mean.
        accumulation = self.accumulation
        local = torch.tensor(
            [
                sum(m["tokens"] for m in micros[j * accumulation : (j + 1) * accumulation])
                for j in range(self.steps_per_rollout)
            ],
            device=self.accelerator.device,
        )
        mini_tokens = self.accelerator.reduce(local, reduction="sum").cpu()
        best = torch.stack([m["rewards"].max() for m in micros]).max().to(self.accelerator.device)
        if self.accelerator.reduce(best, reduction="max").item() == 0 and self.accelerator.is_main_process:
            logger.warning(
                "stage 2, rollout batch %d: every rollout's rule reward is 0 (no readable <answer>, under "
                "500 characters): the policy has nothing to learn from this batch; a starting model that "
                "writes the answer format is needed (stage 1 with --lm-loss-weight > 0)",
                index,
            )
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
        prompt = expand_rows(_to(batch["prompt"], self.accelerator.device), batch["rows"])
        full = model.append_cots(prompt, micro["cot_ids"], with_labels=True, ended=micro["ended"])
        out = self.model(**full)
        device = out["rewards"].device
        ref = micro["ref_logp"].to(device) if micro["ref_logp"] is not None else None
        # Token mean over the whole mini-batch on all processes; x num_processes undoes the gradient averaging of DDP.
        num_tokens = self.rollouts["mini_tokens"][position // accumulation].clamp_min(1).item()
        policy = grpo_policy_loss(
            out["token_logprobs"],
            micro["old_logp"].to(device),
            micro["advantages"].to(device),
            out["label_mask"].float(),
            ref,
            config.kl_coef,
            config.clip_ratio_low,
            config.clip_ratio_high,
            config.clip_ratio_dual,
            num_tokens=num_tokens / self.accelerator.num_processes,
        )

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
        logs = {
            "train/loss": loss.item(),
            "train/policy_loss": policy["loss"].item(),
            "train/kl": policy["kl"].item(),
            "train/ratio": policy["ratio"].item(),
            "train/clip_fraction": policy["clip_fraction"].item(),
            "train/bt_loss": bt.item(),
            "reward/rollout": micro["rewards"].mean().item(),  # the rule reward (Sec. 3.3) of the sampled CoTs
            "reward/rollout_accuracy": micro["accuracy"].mean().item(),
            "reward/rollout_format": micro["format"].mean().item(),
        }
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
        videos = [
            load_video(path, fps=model.config.fps, num_frames=model.config.num_frames)
            for p in pairs
            for path in p.videos
        ]
        prompts, instructions = (
            [p.prompt for p in pairs for _ in p.videos],
            [p.instruction for p in pairs for _ in p.videos],
        )
        model.eval()
        out = model.score(
            videos,
            prompts,
            think=True,
            batch_size=len(videos),
            max_new_tokens=self.rollout_tokens,
            **({"instructions": instructions} if any(instructions) else {}),
        )
        model.train()
        truths = [s for p in pairs for s in (p.scores_a, p.scores_b)]
        readable = [
            rollout_reward(cot, truth, parser=config.rule_parser)["format"] for cot, truth in zip(out.cots, truths)
        ]
        if any(readable):
            logger.info(
                "stage 2: the starting model's CoTs hold a readable <answer> for %d of %d probe videos",
                int(sum(readable)),
                len(readable),
            )
            return
        if creates_run and self.accelerator.is_main_process:
            shutil.rmtree(self.output_dir, ignore_errors=True)
        example = " ".join(out.cots[0].split())[:60]
        raise UserError(
            f"--stage 2: the starting model {config.model} wrote no readable <answer> JSON in its CoTs "
            f"for the first {len(readable)} training videos (e.g. {example!r}), so no rollout would earn "
            f"the accuracy or format reward and stage 2 would learn next to nothing; train stage 1 with "
            f"the CoT loss first (--lm-loss-weight > 0, docs/training.md), or pass --allow-unparsed-cots"
        )


class TokenProgress:
    """A transformers streamer that moves a progress bar by one per generated token (its first `put` is the
    prompt)."""

    def __init__(self, bar):
        self.bar, self.prompt_seen = bar, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.bar.update(1)
        self.prompt_seen = True

    def end(self) -> None:
        self.bar.refresh()


PER_VIDEO_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts")
"""Entries of a processed prompt batch with one row per video; pixel_values_videos holds each video's patches."""


def expand_rows(batch: dict, rows: list[int]) -> dict:
    """The processed batch of one row per video (`encode_prompts`) as the batch of sequences `rows` (row r is video
    rows[r]'s), on the batch's device: exactly what encoding each sequence's video again would give (the padding
    length is the longest video's either way), without running the processor or storing the copies."""
    index = torch.tensor(rows, device=batch["input_ids"].device)
    unknown = set(batch) - set(PER_VIDEO_KEYS) - {"pixel_values_videos"}
    if unknown:
        raise ValueError(f"expand_rows: the processed batch holds {sorted(unknown)}, which it does not know to repeat")
    out = {key: batch[key].index_select(0, index) for key in PER_VIDEO_KEYS if key in batch}
    if "pixel_values_videos" in batch:
        patches = batch["video_grid_thw"].prod(-1).tolist()  # patches of each video, in order
        chunks = batch["pixel_values_videos"].split(patches)
        out["pixel_values_videos"] = torch.cat([chunks[i] for i in rows])
    return out


def stage2_geometry(config: TrainConfig, num_processes: int) -> tuple[int, int]:
    """(micro-batches per optimiser step on each process, optimiser steps per rollout batch). Stage 2 counts in
    global terms, as the official verl config does (DeScore Sec. 3.3): a rollout batch of `rollout_batch_size` pairs
    (2 x that many videos, each with num_rollouts sequences), optimiser steps of `actor_batch_size` videos; the same
    global batches on any number of processes."""
    pairs_per_step, per_micro = config.actor_batch_size // 2, config.batch_size * num_processes
    if pairs_per_step % per_micro:
        raise UserError(
            f"--actor-batch-size {config.actor_batch_size} ({pairs_per_step} pairs per optimiser step) is "
            f"not a multiple of --batch-size {config.batch_size} x {num_processes} process(es): lower "
            f"--batch-size or raise --actor-batch-size"
        )
    accumulation = pairs_per_step // per_micro
    if config.gradient_accumulation_steps is not None and config.gradient_accumulation_steps != accumulation:
        logger.warning(
            "--gradient-accumulation-steps %d does not apply to stage 2: an optimiser step holds "
            "--actor-batch-size %d videos, i.e. %d micro-batch(es) of --batch-size %d pair(s) on each of %d "
            "process(es)",
            config.gradient_accumulation_steps,
            config.actor_batch_size,
            accumulation,
            config.batch_size,
            num_processes,
        )
    return accumulation, 2 * config.rollout_batch_size // config.actor_batch_size


def _bt_label(pair, source: str) -> str:
    """The verdict the stage-2 BT term reads: the answer JSON's (official) where the row has one, else the label."""
    return pair.answer_label if source == "answer" and pair.answer_label is not None else pair.label
