"""The configuration of a reward-model training run (stage 1, 2 or 3) and its command line.

`TrainConfig` is every flag of `recipes/train_rm.py` (and `recipes/distill_student.py`): `--stage` picks the trainer
(`descore_plugin.training.trainer.Trainer`), and `resolve` fills each stage's official defaults (STAGE_DEFAULTS)
where a field is left None. `argument_parser` / `parse_train_args` build the command line with transformers'
HfArgumentParser and the one-line error contract.
"""

from dataclasses import dataclass
from typing import Literal

from descore_plugin.utils.args import help_field
from descore_plugin.utils.errors import UserError

__all__ = [
    "TrainConfig",
    "STAGE_DEFAULTS",
    "RM_CHANGEABLE_ON_RESUME",
    "RewardModelRunArguments",
    "argument_parser",
    "parse_train_args",
]

STAGE_DEFAULTS = {
    # stage 1, the official cold start (DeScore Sec. 3.2): LoRA r 64, lr 2e-6 everywhere, 5% warm-up, the vision
    # tower trains, 4 micro-batches a step, no clipping (the official DeepSpeed config sets none)
    1: {
        "learning_rate": 2e-6,
        "weight_decay": 0.0,
        "warmup_ratio": 0.05,
        "lora_rank": 64,
        "train_vision": True,
        "max_grad_norm": 0.0,
        "gradient_accumulation_steps": 4,
    },
    # stage 2, the official dual-objective RL (Sec. 3.3, verl's actor): every LLM weight against a frozen reference,
    # lr 1e-6, weight decay 1e-2, no warm-up, vision frozen, clipping at 1.0; the accumulation follows from the
    # global --actor-batch-size
    2: {
        "learning_rate": 1e-6,
        "weight_decay": 1e-2,
        "warmup_ratio": 0.0,
        "lora_rank": 0,
        "train_vision": False,
        "max_grad_norm": 1.0,
    },
    # stage 3, distillation (ours): the cold start's optimisation settings, clipped at 1.0
    3: {
        "learning_rate": 2e-6,
        "weight_decay": 0.0,
        "warmup_ratio": 0.05,
        "lora_rank": 64,
        "train_vision": True,
        "max_grad_norm": 1.0,
        "gradient_accumulation_steps": 4,
    },
}
"""Each stage's defaults of the fields left None."""


@dataclass
class TrainConfig:
    """One training run: every field is a command-line flag of recipes/train_rm.py (`max_steps` is `--max-steps`).
    Defaults are the official ones (DeScore's released training code) unless the help says "ours"; a field left
    None takes its stage's default (see `resolve`)."""

    # --- what to train, on what ---
    model: str = help_field(
        "Checkpoint directory or hub id to start from: `descore init-tiny`, a stage-1 run (LoRA or full), or any "
        "DeScore checkpoint. An adapter it holds is merged into the backbone first.",
        required=True,
    )
    train_data: str = help_field(
        "Pair file (CSV / JSONL: our format, the official DeScore CSV or VideoAlign columns; see data.py).",
        required=True,
    )
    output_dir: str = help_field(
        "Run directory: the final model (loads with DeScoreReward.from_pretrained), checkpoint-N/, metrics.jsonl, "
        "curves.png. An existing run is refused unless --resume or --overwrite.",
        required=True,
    )
    eval_data: str | None = help_field(
        "Held-out pair file for accuracy during and after training; every pair counts (ties too).",
    )
    label_column: str | None = help_field(
        "VideoAlign / VideoGen-RewardBench files: the column holding the A / B / same label (default Overall; e.g. "
        "TA for text alignment, or for a file without Overall).",
    )
    skip_bad_rows: bool = help_field(
        "Every distinct video is decoded before step 1, and a row whose video fails (corrupt, an image, too few "
        "frames) stops the run naming file, row and field. With this flag such rows are left out instead and "
        "listed in --output-dir/skipped_rows.jsonl.",
        False,
    )
    stage: int = help_field(
        "1: cold start (Bradley-Terry), 2: dual-objective RL, 3: distil --teacher into a no-CoT student.",
        1,
        choices=[1, 2, 3],
    )

    # --- optimisation ---
    max_steps: int = help_field(
        "Optimiser steps (official stage 1: 4 epochs of ~22k pairs at an effective batch of 4).",
        1000,
    )
    batch_size: int = help_field(
        "Pairs per process per micro-batch (official: 1). In stage 2 each pair gives 2 x num_rollouts sequences.",
        1,
    )
    gradient_accumulation_steps: int | None = help_field(
        "Stages 1 and 3: micro-batches per optimiser step (None: 4, official stage 1). Stage 2 derives it from the "
        "global --actor-batch-size: (actor_batch_size / 2) pairs / (--batch-size x processes); a value given for "
        "stage 2 is ignored with a warning.",
    )
    learning_rate: float | None = help_field("None: stage 1 2e-6 (all groups), stage 2 1e-6 (official).")
    head_learning_rate: float | None = help_field("Learning rate of the head (None: --learning-rate).")
    vision_learning_rate: float | None = help_field(
        "Learning rate of the vision tower when it trains (None: --learning-rate).",
    )
    embedding_learning_rate: float | None = help_field(
        "Learning rate of the trainable embedding rows (None: --learning-rate).",
    )
    weight_decay: float | None = help_field(
        "AdamW weight decay. None: stage 1 0 (not set officially, so the AdamW default of transformers' Trainer), "
        "stage 2 1e-2 (official).",
    )
    warmup_ratio: float | None = help_field(
        "Linear warm-up over this fraction of max_steps, then constant. None: stage 1 0.05, stage 2 0 (official).",
    )
    max_grad_norm: float | None = help_field(
        "Gradient clipping norm (0 = off). None: stage 1 0 (official: its DeepSpeed config sets no clipping and "
        "accelerate does not clip under DeepSpeed), stage 2 1.0 (official), stage 3 1.0 (ours).",
    )
    grad_norm_groups: Literal["actor_and_head", "joint"] = help_field(
        "What --max-grad-norm bounds: actor_and_head (official stage 2, under FSDP: the head's gradient and the "
        "rest's are each clipped to the bound on their own); joint: one norm over every trainable weight (ours).",
        "actor_and_head",
    )
    pure_bf16: bool = help_field(
        "Reproduction mode: weights, gradients and AdamW states in bfloat16, as the official stage-2 actor and head "
        "(no float32 master copy). At lr 1e-6 most updates then round away (docs/training.md gives the measured "
        "share). Off: float32 weights (with --mixed-precision bf16 on GPUs).",
        False,
    )
    mixed_precision: str = help_field(
        "accelerate mixed precision: bf16 on GPUs (official), no on CPUs.",
        "no",
        choices=["no", "fp16", "bf16"],
    )
    gradient_checkpointing: bool = help_field(
        "Recompute activations in backward (official on GPUs: on; saves memory, costs time).",
        False,
    )

    # --- what trains ---
    lora_rank: int | None = help_field(
        "None: the stage's official choice. Stage 1: 64 (LoRA on every LLM linear). Stage 2: 0 = every LLM weight "
        "trains against a frozen reference copy (official; a second model copy in memory); > 0 in stage 2 is our "
        "memory-saving option: a fresh adapter on the merged stage-1 model, reference = adapter off. 0 in stage "
        "1: full fine-tuning.",
    )
    lora_alpha: int = help_field("LoRA alpha (official 128).", 128)
    lora_dropout: float = help_field("LoRA dropout (official 0.05).", 0.05)
    train_vision: bool | None = help_field(
        "Vision tower trainable. None: stage 1 yes, stage 2 no (official).",
        nargs="?",
        const=True,
    )
    train_embeddings: Literal["reward_token", "all"] | None = help_field(
        "Input-embedding rows that train. reward_token: only the <Reward> row; all: every row. None: stage 1 "
        "reward_token (official cold start); stage 2 all with --lora-rank 0 (official: the stage-2 actor trains "
        "every row and the output head) and reward_token with a stage-2 adapter (the adapter-off reference must "
        "stay the start model).",
    )

    # --- stage 1 ---
    loss: Literal["bt", "bt_ties"] = help_field(
        "bt: Bradley-Terry, no term for a tie (official); bt_ties: Rao-Kupper ties with k = --ties-k (VideoAlign).",
        "bt",
    )
    undecided_rows: Literal["zero_loss", "drop"] = help_field(
        "Rows without a decided verdict (ties under --loss bt in stage 1, rows labelled 'invalid'). zero_loss "
        "(official): they stay in the data as rows of loss 0 that count in the batch mean and the epoch, so the BT "
        "gradient is scaled by the decided fraction (in stage 2 their rollouts still train the policy); drop (ours): "
        "they are left out of training.",
        "zero_loss",
    )
    ties_k: float = help_field("Rao-Kupper tie parameter of --loss bt_ties (VideoAlign 5).", 5.0)
    cot_mask_prob: float = help_field("Probability that a PAIR loses both CoTs (official, hard-coded 0.5).", 0.5)
    lm_loss_weight: float = help_field(
        "Weight of the next-token loss on the CoT text (official 0; > 0 teaches the model to write the CoT: a tiny "
        "model from random weights learnt the prompt-alignment verdict with 4, not with 1, tests/test_learning.py).",
        0.0,
    )

    # --- distribution head (model head "distribution"; Z-Reward, arXiv 2606.09076, our reading) ---
    distribution_loss_weight: float = help_field(
        "Weight of the cross-entropy to a Gaussian-smoothed one-hot at the overall score of the pair's CoT answer "
        "(where it parses). Ours.",
        1.0,
    )
    score_gap_loss_weight: float = help_field(
        "Weight of (E[s_A] - E[s_B] - (s_A - s_B))^2 on each pair whose CoTs give both scores. Ours.",
        0.1,
    )
    distribution_sigma: float = help_field("Width (score units) of the smoothed target distribution. Ours.", 0.25)

    # --- stage 3: distillation of a CoT teacher into a no-CoT student (Z-Reward RISD, our reading) ---
    teacher: str | None = help_field(
        "Stage 3: teacher checkpoint (scores WITH CoT); the student is --model and learns to score without one.",
    )
    num_cot_samples: int = help_field(
        "Stage 3: sampled teacher CoTs per video; their CoT-conditioned score distributions are averaged. Ours.",
        4,
    )
    teacher_temperature: float = help_field(
        "Stage 3: sampling temperature of the teacher's CoTs (ours: 1.0 gives tiny teachers off-distribution CoTs).",
        0.7,
    )
    teacher_max_new_tokens: int | None = help_field(
        "Stage 3: teacher CoT length limit (None: the teacher's max_new_tokens).",
    )
    distill_bt_weight: float = help_field(
        "Stage 3: weight of a Bradley-Terry term on the pair labels added to the distillation loss (0: pure).",
        0.0,
    )

    # --- stage 2 ---
    num_rollouts: int = help_field("Stage 2: sampled CoTs per video, one GRPO group (official 8).", 8)
    rollout_temperature: float = help_field("Stage 2: sampling temperature (official 1.0).", 1.0)
    rollout_repetition_penalty: float = help_field(
        "Stage 2: repetition penalty while sampling rollouts (official 1.0: the log-probs the loss uses must be those "
        "of the distribution that sampled; scoring keeps the model's own, 1.05 officially).",
        1.0,
    )
    max_new_tokens: int | None = help_field(
        "Stage 2: rollout length limit (None: the model's CoT limit, official 4096; a model that records the CoT "
        "length it was trained on gets twice that).",
    )
    rollout_batch_size: int = help_field(
        "Stage 2: video PAIRS per rollout batch over all processes (official 128: 256 videos x --num-rollouts 8 = "
        "2,048 sequences). Their rollouts are sampled at once with their old log-probs, then 2 x rollout_batch_size "
        "/ --actor-batch-size optimiser steps follow (official 32), the later ones off-policy.",
        128,
    )
    actor_batch_size: int = help_field(
        "Stage 2: VIDEOS per optimiser step over all processes (official actor global batch 8: 4 pairs, 8 x 8 = 64 "
        "sequences). Even; divides 2 x --rollout-batch-size; actor_batch_size / 2 is a multiple of --batch-size x "
        "processes.",
        8,
    )
    clip_ratio_low: float = help_field("Stage 2: PPO ratio clipped below at 1 - this (official 0.2).", 0.2)
    clip_ratio_high: float = help_field(
        "Stage 2: PPO ratio clipped above at 1 + this (official 0.3, asymmetric as in DAPO).",
        0.3,
    )
    clip_ratio_dual: float = help_field(
        "Stage 2: dual-clip bound c: for negative advantages the loss is at most -A * c (official 3.0).",
        3.0,
    )
    kl_coef: float = help_field(
        "Stage 2: weight of the low-variance KL to the reference, per token (official 1e-5; 0 = no reference).",
        1e-5,
    )
    bt_weight: float = help_field(
        "Stage 2: weight of the auxiliary Bradley-Terry loss on the head, added per micro-batch (official 5e-3).",
        5e-3,
    )
    bt_label: Literal["answer", "label"] = help_field(
        "Stage 2: the verdict the auxiliary BT loss reads. answer (official): `gsb_result` in the row's ground-truth "
        "`answer` JSON ('Video 1 is better' or 'A', 'Video 2 is better' or 'B'; anything else: no BT term), the "
        "pair's label where the row has no such JSON; label: the pair's label (the GSB column) always.",
        "answer",
    )
    allow_unparsed_cots: bool = help_field(
        "Stage 2 first has the starting model write CoTs for a few training videos and refuses to start when none "
        "holds a readable <answer> (every rule reward would be 0: nothing to learn). This flag starts anyway.",
        False,
    )
    rule_parser: Literal["official", "lenient"] = help_field(
        "Stage 2: how the rollout reward reads a CoT's <answer>. official: the first closed <answer> block, its JSON "
        'compared by exact equality ("2" != 2); lenient: our scoring parser (tolerant of fences, string digits).',
        "official",
    )
    reward_weights: list[float] = help_field(
        "Stage 2: weights of sub-dimension accuracy, format and length in the rollout reward (official).",
        [0.7, 0.1, 0.2],
    )
    length_thresholds: list[int] = help_field(
        "Stage 2: character counts of the length reward's steps (official).",
        [500, 1000, 1500, 2000],
    )

    # --- input pipeline (descore_plugin/data/loader.py) ---
    num_workers: int = help_field(
        "DataLoader worker processes that decode the videos, sample frames and run the processor ahead of the "
        "training step (0: all of it in the training process). Ours.",
        2,
    )
    prefetch_factor: int = help_field("Batches each worker prepares ahead of the step.", 2)
    video_cache_bytes: int = help_field(
        "Keep up to this many bytes of decoded, sampled frames per process, least recently used dropped first (0: "
        "decode every time). Each worker holds its own cache.",
        0,
    )

    # --- evaluation, checkpoints, logging ---
    eval_steps: int = help_field(
        "Evaluate every N steps (0: only at the end), after that step's checkpoint is written.",
        0,
    )
    eval_think: bool = help_field("Evaluate with generated CoTs (--no-eval-think: the no-CoT fast path).", True)
    eval_max_new_tokens: int | None = help_field("CoT length limit during evaluation (None: the model's).")
    save_steps: int = help_field("Write checkpoint-N every N steps (0: only the final one).", 500)
    save_total_limit: int = help_field("Keep this many checkpoint-N folders (oldest go first).", 2)
    seed: int = help_field("Seed of the data order, LoRA initialisation, masking and sampling.", 0)
    log_with: str = help_field(
        "accelerate tracker (tensorboard, wandb, ...) or none; metrics.jsonl and curves.png are always written.",
        "tensorboard",
    )

    def resolve(self) -> "TrainConfig":
        """Fill the stage's defaults (STAGE_DEFAULTS) where a field is None, and check the values."""
        if self.stage not in STAGE_DEFAULTS:
            raise UserError(f"--stage {self.stage}: expected 1 (cold start), 2 (RL) or 3 (distillation)")
        if self.stage == 3 and not self.teacher:
            raise UserError("--stage 3 (distillation) needs --teacher DIR_OR_ID")
        for name, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.train_embeddings is None:  # official stage 2 trains every row; an adapter's reference needs them fixed
            self.train_embeddings = "all" if self.stage == 2 and self.lora_rank == 0 else "reward_token"
        if self.stage == 2 and self.lora_rank > 0 and self.train_embeddings == "all":
            raise UserError(
                "--train-embeddings all with a stage-2 adapter (--lora-rank > 0): the KL reference is the "
                "model with the adapter off, and rows trained outside the adapter would move it too; use "
                "--lora-rank 0 (official) or --train-embeddings reward_token"
            )
        if self.log_with is None or self.log_with.lower() == "none":
            self.log_with = "none"
        if self.loss not in ("bt", "bt_ties"):
            raise UserError(f"--loss {self.loss!r}: expected 'bt' or 'bt_ties'")
        if self.train_embeddings not in ("reward_token", "all"):
            raise UserError(f"--train-embeddings {self.train_embeddings!r}: expected 'reward_token' or 'all'")
        for name, allowed in (
            ("undecided_rows", ("zero_loss", "drop")),
            ("bt_label", ("answer", "label")),
            ("grad_norm_groups", ("actor_and_head", "joint")),
        ):
            if getattr(self, name) not in allowed:
                raise UserError(
                    f"--{name.replace('_', '-')} {getattr(self, name)!r}: expected "
                    f"{' or '.join(repr(a) for a in allowed)}"
                )
        if self.rule_parser not in ("official", "lenient"):
            raise UserError(f"--rule-parser {self.rule_parser!r}: expected 'official' or 'lenient'")
        if not 0.0 <= self.cot_mask_prob <= 1.0:
            raise UserError(f"--cot-mask-prob {self.cot_mask_prob}: must be in [0, 1]")
        if self.stage == 2 and self.num_rollouts < 2:
            raise UserError(
                f"--num-rollouts {self.num_rollouts}: GRPO needs at least 2 rollouts per video "
                "(the advantage is relative to the group)"
            )
        for name in (
            "batch_size",
            "gradient_accumulation_steps",
            "max_steps",
            "rollout_batch_size",
            "actor_batch_size",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.stage == 2 and (self.actor_batch_size % 2 or (2 * self.rollout_batch_size) % self.actor_batch_size):
            raise UserError(
                f"--actor-batch-size {self.actor_batch_size}: counts videos, so it must be even (a pair's "
                f"two videos update together) and divide the {2 * self.rollout_batch_size} videos of "
                f"--rollout-batch-size {self.rollout_batch_size} pairs"
            )
        if len(self.reward_weights) != 3:
            raise UserError(f"--reward-weights {self.reward_weights}: give 3 numbers (accuracy, format, length)")
        for name in ("model", "train_data", "output_dir"):
            if not getattr(self, name):
                raise UserError(f"--{name.replace('_', '-')} is required")
        return self


RM_CHANGEABLE_ON_RESUME = (
    "max_steps",
    "eval_data",
    "eval_steps",
    "eval_think",
    "eval_max_new_tokens",
    "save_steps",
    "save_total_limit",
    "log_with",
    "num_workers",
    "prefetch_factor",
    "video_cache_bytes",
    "allow_unparsed_cots",
)
"""Flags a resumed run may change: how long it runs and how it is watched, not what it trains."""


@dataclass
class RewardModelRunArguments:
    """How to open the run directory (not part of what the run is, so never compared on --resume)."""

    resume: bool = help_field(
        "Continue the run in --output-dir from its newest checkpoint (exactly: same data order and random draws). "
        f"Only {', '.join('--' + n.replace('_', '-') for n in RM_CHANGEABLE_ON_RESUME)} may differ from the saved run.",
        False,
    )
    overwrite: bool = help_field("Delete the run in --output-dir and start again.", False)


def argument_parser(config_class=TrainConfig, description: str = "", prog: str | None = None):
    """The package's argument layer (`utils.args.ConfigParser`, on transformers' HfArgumentParser) over a TrainConfig
    (sub)class and RewardModelRunArguments: every field is a flag (`--max-steps` and `--max_steps`) with its help text
    and default; a bool field also gets `--no-<flag>`. A bad value is one line on stderr and exit status 2."""
    from descore_plugin.utils.args import ConfigParser

    return ConfigParser([config_class, RewardModelRunArguments], prog=prog, description=description)


def parse_train_args(argv=None, config_class=TrainConfig, description: str = "", prog: str | None = None):
    """(config, run arguments) from the command line; see `argument_parser`."""
    parser = argument_parser(config_class, description, prog)
    config, run_args = parser.parse_args_into_dataclasses(args=argv)
    return config, run_args
