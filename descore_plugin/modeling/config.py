"""`DeScoreConfig`: every setting of a DeScore reward model, with the official default and where it comes from.

Saved as `descore_config.json` next to the weights; `DeScoreReward` (model.py) reads it.
"""

import dataclasses
import typing
from dataclasses import dataclass


@dataclass
class DeScoreConfig:
    """Everything that defines a DeScore reward model. Saved as `descore_config.json` next to the weights."""

    # --- architecture ---
    backbone: str = "Qwen/Qwen3-VL-8B-Instruct"
    """Hub id or path of the Qwen-VL backbone (paper: Qwen3-VL-8B-Instruct). A relative path is resolved against
    the checkpoint directory (`backbone/` holds the weights of fully fine-tuned or tiny models)."""
    reward_token: str = "<Reward>"
    """The learnable query token appended after the CoT (official: literally `<Reward>`)."""
    head: str = "scalar"
    """"scalar": Linear(hidden, 1, bias=False) (the paper). "distribution": Linear(hidden, num_bins, bias=False),
    softmax over score bins, reward = expectation, uncertainty = std (Z-Reward, arXiv 2606.09076; our option)."""
    score_bins: tuple = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    """Bin centres of the distribution head: DeScore's 1-5 overall score in half points, 9 levels. Our choice: the
    DeScore rubric writes its overall score as 1.00-5.00, and Z-Reward's distributions are over its own image rubric."""
    head_dtype: str = "float32"
    """The head runs in float32 on the (possibly bf16) hidden state; our choice, for stable small reward gaps."""

    # --- LoRA (official stage 1: r 64 / alpha 128 / dropout 0.05 on all LLM linears) ---
    lora_rank: int = 0
    """0 = no adapter (full model or frozen backbone); > 0 adds a peft LoRA on the language model."""
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    """Regex over module names: every linear layer of the LLM, not lm_head, head, embeddings or vision tower."""

    # --- prompt and sequence layout ---
    layout: str = "assistant"
    """Where the CoT and `<Reward>` sit. "assistant" (ours, the official stage-2 rollout layout): the CoT is the
    assistant's answer and `<Reward>` follows its last token. "user" (the official stage-1 and inference layout): the
    CoT and `<Reward>` end the user turn after the instruction, with no assistant header; official checkpoints load
    with it. The CoT itself is always generated after the assistant header."""
    prompt_template: str | None = None
    """Judge instruction: None = the built-in one, else the template text ({prompt} field). Saved with the model,
    because a checkpoint trained with one prompt wants that prompt back."""

    # --- video (official: qwen-vl-utils sampling at fps 2; per-frame pixel budgets per stage) ---
    fps: float | None = 2.0
    """SAMPLING rate in frames per second of video time, not the file's own frame rate (VideoAlign users confuse
    the two): n = total / source_fps * fps frames, clamped to [4, min(768, total)], even. Ignored when `num_frames`
    is set."""
    num_frames: int | None = None
    """Fixed number of frames per video instead of `fps` sampling (set one of the two; overriding one at load time
    clears the other)."""
    max_pixels: int = 448 * 448
    """Largest frame area after resizing, scoring (official inference: 200,704 = 448 x 448). Per frame, fixed per
    video: a video's tokens never depend on its batch mates."""
    min_pixels: int = 3136
    """Smallest frame area after resizing, scoring (official inference: 3,136)."""
    stage1_max_pixels: int = 448 * 448
    """Largest frame area in stage-1 training (official cold start: 200,704)."""
    stage1_min_pixels: int = 128 * 32 * 32
    """Smallest frame area in stage-1 training. The official cold start leaves it at qwen-vl-utils' default of 128
    tokens of 32 x 32 pixels (131,072) for Qwen3-VL's patch 16."""
    rollout_max_pixels: int = 307200
    """Largest frame area in stage-2 RL, rollouts and updates alike (official: 307,200)."""
    rollout_min_pixels: int = 3136
    """Smallest frame area in stage-2 RL (official: 3,136)."""
    cot_max_pixels: int | None = None
    """Largest frame area for generating the CoT at scoring time, when it differs from `max_pixels`. None (ours): one
    encoding serves generation and scoring, and the score continues the generation's cache. The official inference
    generates the CoT from qwen-vl-utils' default budget (128..768 tokens of 32 x 32 pixels per frame for Qwen3-VL)
    and scores in a second full pass at min_pixels..max_pixels; official checkpoints load with that."""
    cot_min_pixels: int | None = None
    """Smallest frame area for generating the CoT (see `cot_max_pixels`); None = `min_pixels`."""

    # --- generation of the CoT (official: greedy, repetition penalty 1.05, up to 4096 tokens) ---
    max_new_tokens: int = 4096
    """Upper bound on the CoT length in tokens (official inference: 4,096). Scoring's default limit is
    `cot_token_limit()`: sized to `trained_cot_tokens` when it is known, this bound otherwise."""
    trained_cot_tokens: int | None = None
    """The longest CoT, in tokens, the model was trained to write (training records it when it saves the model);
    None = unknown (a new or official model). A model that never learnt to stop would otherwise run to 4,096
    tokens per video, minutes on a CPU, before its score."""
    repetition_penalty: float = 1.05

    def __post_init__(self):
        if isinstance(self.score_bins, list):  # JSON has no tuples
            self.score_bins = tuple(self.score_bins)
        for field in dataclasses.fields(self):  # types are checked where they enter, naming the field
            value, allowed = getattr(self, field.name), typing.get_args(field.type) or (field.type,)
            accepted = allowed + ((int,) if float in allowed else ())
            if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, accepted):
                names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
                raise TypeError(f"DeScoreConfig.{field.name} = {value!r}: expected {names}")
        positive = [
            "max_pixels",
            "min_pixels",
            "stage1_max_pixels",
            "stage1_min_pixels",
            "rollout_max_pixels",
            "rollout_min_pixels",
            "max_new_tokens",
            "repetition_penalty",
        ]
        optional = ("fps", "num_frames", "cot_min_pixels", "cot_max_pixels", "trained_cot_tokens")
        for name in positive + [n for n in optional if getattr(self, n) is not None]:
            if not getattr(self, name) > 0:
                raise ValueError(f"DeScoreConfig.{name} = {getattr(self, name)!r}: must be positive")
        for stage in ("", "stage1_", "rollout_", "cot_"):
            if None not in (getattr(self, f"{stage}min_pixels"), getattr(self, f"{stage}max_pixels")) and getattr(
                self, f"{stage}min_pixels"
            ) > getattr(self, f"{stage}max_pixels"):
                raise ValueError(
                    f"DeScoreConfig.{stage}min_pixels = {getattr(self, f'{stage}min_pixels')} is larger than "
                    f"{stage}max_pixels = {getattr(self, f'{stage}max_pixels')}"
                )
        if self.layout not in ("assistant", "user"):
            raise ValueError(f"DeScoreConfig.layout = {self.layout!r}: expected 'assistant' or 'user'")
        if self.head not in ("scalar", "distribution"):
            raise ValueError(f"DeScoreConfig.head = {self.head!r}: expected 'scalar' or 'distribution'")
        self.score_bins = tuple(float(b) for b in self.score_bins)
        if self.fps is not None and self.num_frames is not None:
            raise ValueError(
                f"DeScoreConfig: fps={self.fps} and num_frames={self.num_frames} are both set; "
                "sample by rate (fps) or by count (num_frames), not both"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def cot_token_limit(self) -> int:
        """The default CoT length limit of scoring: twice the longest trained CoT (room for a longer answer, but a
        model that does not stop is cut within a few seconds), at most `max_new_tokens`; `max_new_tokens` (official
        4,096) when the trained length is unknown."""
        if self.trained_cot_tokens is None:
            return self.max_new_tokens
        return min(self.max_new_tokens, 2 * self.trained_cot_tokens)

    def pixel_budget(self, stage: str = "inference") -> tuple[int, int]:
        """(min_pixels, max_pixels) per frame for "inference" (scoring, evaluation, distillation), "stage1" or
        "rollout" (stage-2 RL)."""
        budgets = {
            "inference": (self.min_pixels, self.max_pixels),
            "stage1": (self.stage1_min_pixels, self.stage1_max_pixels),
            "rollout": (self.rollout_min_pixels, self.rollout_max_pixels),
            "cot": (self.cot_min_pixels or self.min_pixels, self.cot_max_pixels or self.max_pixels),
        }
        if stage not in budgets:
            raise ValueError(f"pixel budget stage {stage!r}: expected one of {', '.join(budgets)}")
        return budgets[stage]

    @classmethod
    def from_dict(cls, values: dict, source: str = "config", overrides: dict | None = None) -> "DeScoreConfig":
        overrides = overrides or {}
        values = {**values, **overrides}
        if "fps" in overrides and "num_frames" not in overrides:
            values["num_frames"] = None  # sampling by rate now: the checkpoint's frame count no longer applies
        if "num_frames" in overrides and "fps" not in overrides:
            values["fps"] = None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown DeScoreConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)
