"""DeScore: think, then score (arXiv 2605.05922). The whole reward model, in the order it runs.

    video + judge instruction --(Qwen-VL generates)--> chain of thought (CoT)
    ... + CoT + <Reward> --(last hidden state at <Reward>)--> head --> reward

1. `DeScoreConfig`: every setting, with the official default and where it comes from.
2. `DeScoreReward`: a Qwen2.5-VL or Qwen3-VL backbone, the learnable `<Reward>` query token, and a bias-free head.
   - `score(videos, prompts, think=True)`: batched greedy CoT generation, then `<Reward>` appended by continuing the
     generation's KV cache (one token step, no re-encoding of video, instruction and CoT).
   - `score(..., think=False)`: the masked-CoT fast path (instruction then `<Reward>`): one prefill.
   - `score(..., cots=[...])`: teacher forcing with CoTs supplied by the caller.
   - `reward(videos, prompts, metadata)`: the Flow-GRPO reward-function signature.
   - `save_pretrained` / `from_pretrained`: our directory format, and the official release layout.

Sequence layout. Every path builds the same tokens for a row:
    <|im_start|>user\n [video tokens] instruction <|im_end|>\n<|im_start|>assistant\n  CoT  <Reward>
i.e. the CoT sits in the assistant turn and `<Reward>` follows its last token, as in the official stage-2 rollouts
("the <Reward> id is inserted before the final token of the generated answer", so the end-of-turn token is not
part of the CoT). The official stage-1 code and inference instead put the CoT inside the user turn; we use one
layout for training and inference so that the cached path scores exactly what training taught. Official checkpoints
are scored in their own layout (`DeScoreConfig.layout = "user"`):
    <|im_start|>user\n instruction-before [video tokens] instruction-after CoT <Reward>
The instruction may place the video with a `<video>` marker (official data and inference do); otherwise the video
comes first. A plain Qwen2.5-VL / Qwen3-VL checkpoint loads as a new DeScore model (`from_backbone`).
"""

import copy
import dataclasses
import json
import math
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from descore_plugin.utils.files import atomic_directory
from descore_plugin.modeling.prompt import build_instruction, load_template, parse_answer, video_content
from descore_plugin.data.video import Video, load_video, resize_frames, split_videos

SUPPORTED_BACKBONES = ("qwen2_5_vl", "qwen3_vl")
CONFIG_NAME = "descore_config.json"
HEAD_NAME = "reward_head.safetensors"
ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"


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
    """Bin centres of the distribution head: the 1-5 rubric in half points (Z-Reward's 9-level scale)."""
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
        positive = ["max_pixels", "min_pixels", "stage1_max_pixels", "stage1_min_pixels", "rollout_max_pixels",
                    "rollout_min_pixels", "max_new_tokens", "repetition_penalty"]
        optional = ("fps", "num_frames", "cot_min_pixels", "cot_max_pixels", "trained_cot_tokens")
        for name in positive + [n for n in optional if getattr(self, n) is not None]:
            if not getattr(self, name) > 0:
                raise ValueError(f"DeScoreConfig.{name} = {getattr(self, name)!r}: must be positive")
        for stage in ("", "stage1_", "rollout_", "cot_"):
            if None not in (getattr(self, f"{stage}min_pixels"), getattr(self, f"{stage}max_pixels")) and \
                    getattr(self, f"{stage}min_pixels") > getattr(self, f"{stage}max_pixels"):
                raise ValueError(f"DeScoreConfig.{stage}min_pixels = {getattr(self, f'{stage}min_pixels')} is larger than "
                                 f"{stage}max_pixels = {getattr(self, f'{stage}max_pixels')}")
        if self.layout not in ("assistant", "user"):
            raise ValueError(f"DeScoreConfig.layout = {self.layout!r}: expected 'assistant' or 'user'")
        if self.head not in ("scalar", "distribution"):
            raise ValueError(f"DeScoreConfig.head = {self.head!r}: expected 'scalar' or 'distribution'")
        self.score_bins = tuple(float(b) for b in self.score_bins)
        if self.fps is not None and self.num_frames is not None:
            raise ValueError(f"DeScoreConfig: fps={self.fps} and num_frames={self.num_frames} are both set; "
                             "sample by rate (fps) or by count (num_frames), not both")

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


@dataclass
class RewardOutput:
    """What `DeScoreReward.score` returns, one entry per video."""

    rewards: torch.Tensor
    """float32 [B]: the head's reward (expectation over bins for the distribution head). Only differences between
    rewards mean something for a Bradley-Terry-trained head."""
    cots: list | None = None
    """The CoT text per video (generated or supplied), None for think=False."""
    dimensional_scores: list | None = None
    """Parsed per-dimension scores from each CoT's <answer> block (dict, or None where it did not parse)."""
    overall_scores: list | None = None
    """Parsed overall score (float or None) per CoT."""
    parse_errors: list | None = None
    """None where the CoT's <answer> block parsed, else the reason."""
    uncertainty: torch.Tensor | None = None
    """float32 [B] standard deviation of the score distribution (distribution head only)."""
    bin_probs: torch.Tensor | None = None
    """float32 [B, num_bins] score distribution (distribution head only)."""


class DeScoreReward(nn.Module):
    """The DeScore reward model: Qwen-VL backbone + `<Reward>` query token + regression head."""

    def __init__(self, config: DeScoreConfig, backbone: nn.Module, processor, checkpoint_dir: Path | None = None):
        super().__init__()
        self.config = config
        self.processor = processor
        self.tokenizer = processor.tokenizer
        family = backbone.config.model_type
        if family not in SUPPORTED_BACKBONES:
            raise ValueError(
                f"backbone {config.backbone!r} is a {family!r} model; DeScore supports {', '.join(SUPPORTED_BACKBONES)}"
            )
        self.family = family
        self.reward_token_id = _reward_token_id(self.tokenizer, config.reward_token, source=str(checkpoint_dir or "tokenizer"))
        if backbone.get_input_embeddings().num_embeddings <= self.reward_token_id:
            backbone.resize_token_embeddings(len(self.tokenizer))  # new rows at the mean of the others
        self.backbone = backbone
        hidden = backbone.config.get_text_config().hidden_size
        out_features = 1 if config.head == "scalar" else len(config.score_bins)
        self.head = nn.Linear(hidden, out_features, bias=False, dtype=getattr(torch, config.head_dtype))
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden))
        self.register_buffer("score_bins", torch.tensor(config.score_bins, dtype=torch.float32), persistent=False)
        self.template = load_template(config.prompt_template)
        # Tokens the CoT must never contain: vision placeholders and the reward token break the next forward.
        special = [processor.video_token, "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", config.reward_token]
        self.suppressed_token_ids = sorted(
            {i for i in self.tokenizer.convert_tokens_to_ids(special) if i is not None and i != self.tokenizer.unk_token_id}
        )
        if self.tokenizer.pad_token_id is not None and self.tokenizer.pad_token_id not in self._eos_ids():
            self.suppressed_token_ids.append(self.tokenizer.pad_token_id)

    # ------------------------------------------------------------------ parts of the backbone
    @property
    def vlm(self):
        """The Qwen*VLForConditionalGeneration module (inside the peft wrapper when there is one)."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    @property
    def device(self):
        return self.head.weight.device

    def _eos_ids(self) -> list:
        eos = self.vlm.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return [i for i in eos if i is not None] or [self.tokenizer.eos_token_id]

    # ------------------------------------------------------------------ inputs
    def encode_prompts(self, videos: list[Video], prompts: list[str], instructions: list | None = None,
                       stage: str = "inference") -> dict:
        """Chat-template the instruction around each video and run the real processor. Left padding, so that the
        batch can go straight into `generate`.

        instructions: per row, a full judge instruction that replaces the template (the official CSV's `problem`
            column); None = the model's template filled with the row's prompt. A `<video>` marker in the
            instruction places the video there; without one the video comes first.
        stage: which per-frame pixel budget applies ("inference", "stage1" or "rollout", see `DeScoreConfig`).
            Each video is resized on its own (qwen-vl-utils), then the processor is told not to resize, so a video's
            tokens are the same alone and in any batch."""
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts: pass one prompt per video")
        instructions = [None] * len(prompts) if instructions is None else list(instructions)
        if len(instructions) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(instructions)} instructions: pass one (or None) per video")
        min_pixels, max_pixels = self.config.pixel_budget(stage)
        factor = self.processor.video_processor.patch_size * self.processor.video_processor.merge_size
        videos = [resize_frames(v, factor, min_pixels, max_pixels) for v in videos]
        if stage == "rollout":  # the official stage-2 data loader trims the instruction (its prompt template: `| trim`)
            instructions = [None if text is None else text.strip() for text in instructions]
        texts = [self.chat_text(prompt, instruction, name=f"prompts[{i}]")
                 for i, (prompt, instruction) in enumerate(zip(prompts, instructions))]
        options = {"cap_pixels_per_frame": False} if hasattr(self.processor.video_processor, "cap_pixels_per_frame") else {}
        batch = self.processor(
            text=texts,
            videos=[v.frames for v in videos],
            video_metadata=[v.metadata() for v in videos],
            do_sample_frames=False,
            do_resize=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            **options,
        )
        return dict(batch)

    def chat_text(self, prompt: str, instruction: str | None = None, name: str = "prompt") -> str:
        """The chat-templated generation prompt of one row: one user turn [text, video, text], then the assistant
        header."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{name} is empty: DeScore judges a video against its text prompt")
        text = build_instruction(self.template, prompt) if instruction is None else instruction
        messages = [{"role": "user", "content": video_content(text, name)}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def append_cots(self, batch: dict, cots: list, with_labels: bool = False, ended: list | None = None) -> dict:
        """Teacher forcing: each row becomes [its prompt tokens, its CoT tokens, <Reward>], re-collated with left
        padding so that `<Reward>` is the last column of every row. With layout="user" the prompt loses its
        generation suffix (end of the user turn, assistant header): [user turn ..., instruction, CoT, <Reward>]. A CoT is text or a 1-D tensor of token ids;
        `None` or "" = no CoT (the masked-CoT layout).

        with_labels: also return `labels` aligned with `input_ids` (-100 = not supervised): the CoT tokens, and at
        the `<Reward>` column the end-of-turn token, because that is what the policy wrote (or must learn to write)
        after the CoT. `ended[i]` False (a rollout cut at max_new_tokens) leaves that end token unsupervised."""
        if with_labels and self.config.layout == "user":
            raise ValueError("next-token labels (stage-2 log-probs, the CoT LM loss) need the CoT in the assistant turn, "
                             "where it was generated; this model has layout='user' (load it with layout='assistant')")
        rows, types, labels = [], [], []
        end_id = self._eos_ids()[0]
        cut = len(self.generation_suffix_ids) if self.config.layout == "user" else 0
        for i, cot in enumerate(cots):
            keep = batch["attention_mask"][i].bool()
            keep[len(keep) - cut:] = False  # "user" layout: drop the end of the user turn and the assistant header
            prompt_ids = batch["input_ids"][i][keep]
            if isinstance(cot, torch.Tensor):  # token ids (e.g. a generated CoT), used as they are
                cot_ids = cot.to(prompt_ids.device)
            else:
                cot_ids = self.tokenizer(cot or "", add_special_tokens=False, return_tensors="pt").input_ids[0]
            cot_ids = cot_ids.to(prompt_ids.device)
            if (cot_ids == self.reward_token_id).any():
                raise ValueError(f"cots[{i}] contains the reward token {self.config.reward_token!r}; remove it")
            reward = torch.tensor([self.reward_token_id], device=prompt_ids.device)
            rows.append(torch.cat([prompt_ids, cot_ids, reward]))
            text_types = torch.zeros(len(cot_ids) + 1, dtype=batch["mm_token_type_ids"].dtype, device=prompt_ids.device)
            types.append(torch.cat([batch["mm_token_type_ids"][i][keep], text_types]))
            has_cot = len(cot_ids) > 0
            end_label = end_id if has_cot and (ended is None or ended[i]) else -100
            ignore = torch.full_like(prompt_ids, -100)
            labels.append(torch.cat([ignore, cot_ids, torch.tensor([end_label], device=prompt_ids.device)]))
        out = dict(batch)
        if with_labels:
            out["labels"], _ = left_pad(labels, -100)
        out["input_ids"], out["attention_mask"] = left_pad(rows, self.tokenizer.pad_token_id)
        out["mm_token_type_ids"], _ = left_pad(types, 0)
        return out

    # ------------------------------------------------------------------ the head
    def head_outputs(self, hidden: torch.Tensor) -> dict:
        """hidden: (B, H) state at `<Reward>` -> {"rewards": (B,)} (+ distribution for the distribution head)."""
        logits = self.head(hidden.to(self.head.weight.dtype))  # (B, 1) or (B, K)
        if self.config.head == "scalar":
            return {"rewards": logits[:, 0].float(), "logits": logits}
        probs = logits.float().softmax(-1)  # (B, K)
        mean = probs @ self.score_bins
        var = probs @ self.score_bins.square() - mean.square()
        return {"rewards": mean, "logits": logits, "probs": probs, "uncertainty": var.clamp_min(0).sqrt()}

    def forward(self, input_ids, attention_mask, mm_token_type_ids, pixel_values_videos=None, video_grid_thw=None,
                second_per_grid_ts=None, labels=None, **_) -> dict:
        """Full (uncached) forward over rows that contain `<Reward>`. The head reads the last hidden state at the
        reward token; if a row holds it more than once the positions are averaged (official inference).

        labels (B, L), from `append_cots(..., with_labels=True)`: also returns `token_logprobs` (B, L) = log p of
        labels[:, j] given the tokens before j (0 where unsupervised), `label_mask` and the mean NLL `lm_loss`.
        Because attention is causal, the log-probs of the CoT are those of the sequence WITHOUT `<Reward>`: one
        forward serves both the policy term and the head (the official stage 2 runs two).
        Returns {"rewards": (B,), ...}."""
        hidden = self.vlm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            **({"second_per_grid_ts": second_per_grid_ts} if second_per_grid_ts is not None else {}),
            use_cache=False,
        ).last_hidden_state  # (B, L, H)
        is_reward = (input_ids == self.reward_token_id) & attention_mask.bool()  # (B, L)
        counts = is_reward.sum(-1)
        if (counts == 0).any():
            row = int((counts == 0).nonzero()[0])
            raise ValueError(f"row {row} of the batch holds no {self.config.reward_token!r} token; the head has nothing to read")
        pooled = (hidden * is_reward.unsqueeze(-1)).sum(1) / counts.unsqueeze(-1).to(hidden.dtype)  # (B, H)
        out = self.head_outputs(pooled)
        if labels is not None:
            targets = labels[:, 1:]  # (B, L-1): the token each position predicts
            mask = targets != -100
            logits = self.vlm.lm_head(hidden[:, :-1][mask])  # (N, V), supervised positions only
            picked = logits.float().log_softmax(-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)  # (N,)
            token_logprobs = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device)
            token_logprobs[mask] = picked
            out["token_logprobs"] = F.pad(token_logprobs, (1, 0))  # (B, L), aligned with labels
            out["label_mask"] = F.pad(mask, (1, 0))
            out["lm_loss"] = -picked.mean() if picked.numel() else hidden.sum() * 0
        return out

    # ------------------------------------------------------------------ think, then score
    def _generate(self, batch: dict, max_new_tokens: int, do_sample=False, **generation):
        """Run `generate` on a left-padded prompt batch. Returns the output (with its KV cache), the generated ids
        (B, G), each row's CoT length (up to, excluding, its first end token) and whether the row ended."""
        generation.setdefault("repetition_penalty", self.config.repetition_penalty)
        out = self.backbone.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            suppress_tokens=self.suppressed_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self._eos_ids(),
            return_dict_in_generate=True,
            use_cache=True,
            **generation,
        )
        generated = out.sequences[:, batch["input_ids"].shape[1]:]  # (B, G)
        is_end = torch.isin(generated, torch.tensor(self._eos_ids(), device=generated.device))
        ended = is_end.any(-1)
        cot_lengths = torch.where(ended, is_end.float().argmax(-1).long(), torch.full_like(ended, generated.shape[1], dtype=torch.long))
        return out, generated, cot_lengths, ended

    @torch.no_grad()
    def sample_cots(self, batch: dict, max_new_tokens: int, temperature: float = 1.0, **generation) -> dict:
        """Sampled rollouts (stage 2): {"cot_ids": list of 1-D tensors, "ended": list of bool}."""
        _, generated, lengths, ended = self._generate(batch, max_new_tokens, do_sample=True, temperature=temperature,
                                                       top_k=0, top_p=1.0, **generation)
        return {"cot_ids": [generated[i, : lengths[i]] for i in range(len(lengths))], "ended": ended.tolist()}

    @torch.no_grad()
    def generate_and_score(self, batch: dict, max_new_tokens: int, do_sample=False, **generation) -> dict:
        """Generate the CoT, then append `<Reward>` by continuing the generation's KV cache.

        The cache from `generate` holds len(sequences) - 1 tokens (the last sampled token was never fed). Rows of a
        left-padded batch end at different steps: a finished row has its end-of-turn token and padding in the
        cache. The continuation feeds two columns [last token, <Reward>] with an attention mask that hides, per
        row, everything after its own CoT, and explicit rope positions (position = count of attended tokens - 1 +
        the rope offset the video left, `rope_deltas`; transformers needs them given explicitly after a cache;
        docs/scoring.md, "Scoring by continuing the KV cache").

        layout="user": the scoring sequence lacks the generation suffix (end of the user turn, assistant header), so
        the cache is cut back to the end of the instruction and [CoT, <Reward>] is fed from there: a prefill of the
        CoT, still without re-encoding the video or the instruction."""
        out, generated, cot_lengths, _ = self._generate(batch, max_new_tokens, do_sample=do_sample, **generation)
        # `rope_deltas` is state the model keeps between calls; read it right after the generation that set it.
        rope_deltas = self.vlm.model.rope_deltas.clone()
        cache = out.past_key_values
        batch_size, num_generated = generated.shape
        cot_ids = [generated[i, : cot_lengths[i]] for i in range(batch_size)]
        if self.config.layout == "user":
            result = self._score_in_user_turn(batch, cache, cot_ids, rope_deltas)
            result["cot_ids"] = cot_ids
            return result
        steps = torch.arange(num_generated, device=generated.device)
        in_cot = steps.unsqueeze(0) < cot_lengths.unsqueeze(1)  # (B, G)

        # Continuation columns: [last generated token, <Reward>]. The last token is fed only where it belongs to
        # the CoT (rows that hit max_new_tokens); elsewhere it is end/padding and masked out.
        last = generated[:, -1:]
        reward = torch.full_like(last, self.reward_token_id)
        new_tokens = torch.cat([last, reward], dim=1)  # (B, 2)
        attention_mask = torch.cat(
            [batch["attention_mask"], in_cot[:, :-1].long(), in_cot[:, -1:].long(), torch.ones_like(last)], dim=1
        )  # (B, prompt + G - 1 cached + 2 new)
        positions = (attention_mask.cumsum(-1) - 1)[:, -2:] + rope_deltas  # (B, 2)
        position_ids = positions.unsqueeze(0).expand(3, -1, -1)  # (3, B, 2): temporal, height, width
        hidden = self.vlm.model(
            input_ids=new_tokens,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state[:, -1]  # (B, H) at <Reward>
        result = self.head_outputs(hidden)
        result["cot_ids"] = cot_ids
        return result

    def _score_in_user_turn(self, batch: dict, cache, cot_ids: list, rope_deltas: torch.Tensor) -> dict:
        """Continue a generation's cache in the official inference layout: drop the cached generation suffix, feed
        each row's [CoT, <Reward>] (right-padded to the longest), read the head at each row's own `<Reward>`."""
        prefix = batch["input_ids"].shape[1] - len(self.generation_suffix_ids)
        cache.crop(prefix - cache.get_seq_length())  # negative: the number of trailing positions to drop
        lengths = [len(ids) for ids in cot_ids]
        width = max(lengths) + 1
        device = batch["input_ids"].device
        new_tokens = torch.full((len(cot_ids), width), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        new_mask = torch.zeros_like(new_tokens)
        for i, ids in enumerate(cot_ids):
            new_tokens[i, : lengths[i]] = ids
            new_tokens[i, lengths[i]] = self.reward_token_id
            new_mask[i, : lengths[i] + 1] = 1
        attention_mask = torch.cat([batch["attention_mask"][:, :prefix], new_mask], dim=1)
        positions = (attention_mask.cumsum(-1) - 1)[:, -width:] + rope_deltas  # (B, width)
        hidden = self.vlm.model(
            input_ids=new_tokens,
            attention_mask=attention_mask,
            position_ids=positions.unsqueeze(0).expand(3, -1, -1),  # (3, B, width): temporal, height, width
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state  # (B, width, H)
        at_reward = hidden[torch.arange(len(cot_ids), device=device), torch.tensor(lengths, device=device)]  # (B, H)
        return self.head_outputs(at_reward)

    @property
    def generation_suffix_ids(self) -> list:
        """Token ids the chat template puts after the user's content when asking for an answer (end of the user
        turn, then the assistant header): the generation prompt minus the scoring prefix of layout="user"."""
        if not hasattr(self, "_generation_suffix_ids"):
            marker = "\u2063DESCORE\u2063"
            messages = [{"role": "user", "content": [{"type": "text", "text": marker}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            suffix = text.split(marker, 1)[1]
            self._generation_suffix_ids = self.tokenizer(suffix, add_special_tokens=False).input_ids
        return self._generation_suffix_ids

    # ------------------------------------------------------------------ public scoring API
    @torch.no_grad()
    def score(self, videos, prompts, think: bool = True, cots: list | None = None, batch_size: int = 8,
              max_new_tokens: int | None = None, seed: int | None = None, video_fps: float | None = None,
              fps: float | None = None, num_frames: int | None = None, instructions: list | None = None,
              **generation) -> RewardOutput:
        """Score videos against their prompts.

        videos: a list of paths, lists of PIL frames or (F, C, H, W) / (F, H, W, C) arrays, or the (B, F, C, H, W)
            float tensor in [0, 1] that `WanPipeline(..., output_type="pt")` returns.
        think: generate a CoT first (greedy by default, as officially), then score; False = masked-CoT fast path.
        cots: score with these CoTs instead of generating (teacher forcing); `think` is then irrelevant.
        max_new_tokens: CoT length limit (default `config.cot_token_limit()`: sized to the CoTs the model was trained
            on, else the official 4,096), capped at the context the model has left.
        video_fps: the frame rate of in-memory frames (default 16, Wan-2.1's); files carry their own.
        fps / num_frames: this call's SAMPLING rate or frame count instead of the config's (set at most one).
        instructions: per video, a full judge instruction replacing the template (e.g. the official CSV's `problem`).
        generation: passed to `generate` (do_sample=True, temperature, top_p, ...), only where a CoT is generated;
            `seed` makes sampling repeatable. An argument `generate` does not know is refused by name.
        """
        _check_flag(think, "think")
        _check_positive_int(batch_size, "batch_size")
        if max_new_tokens is not None:
            _check_positive_int(max_new_tokens, "max_new_tokens")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"score(): seed={seed!r} must be an int")
        if fps is not None and num_frames is not None:
            raise ValueError(f"score(): fps={fps} and num_frames={num_frames}: sample by rate or by count, not both")
        if fps is None and num_frames is None:
            fps, num_frames = self.config.fps, self.config.num_frames
        generating = cots is None and think
        _check_generation_kwargs(generation, generating)
        sampling = {"fps": fps, "num_frames": num_frames, "video_fps": video_fps}
        video_list = split_videos(videos)  # decoded chunk by chunk in _score: memory holds one chunk of frames
        prompts = [prompts] * len(video_list) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(video_list):
            raise ValueError(f"got {len(video_list)} videos but {len(prompts)} prompts: pass one prompt per video")
        if cots is not None and (isinstance(cots, str) or len(cots) != len(video_list)):
            raise ValueError(f"got {len(video_list)} videos but cots={_short(cots)}: pass a list with one CoT (or None) per video")
        if instructions is not None and (isinstance(instructions, str) or len(instructions) != len(video_list)):
            raise ValueError(f"got {len(video_list)} videos but instructions={_short(instructions)}: pass a list with one "
                             "instruction (or None) per video")
        max_new_tokens = self.config.cot_token_limit() if max_new_tokens is None else max_new_tokens
        instructions = [None] * len(video_list) if instructions is None else list(instructions)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:  # repeatable sampling without touching the caller's random state
                torch.manual_seed(seed)
            return self._score(video_list, prompts, instructions, sampling, think, cots, batch_size, max_new_tokens, generation)

    def _score(self, video_list, prompts, instructions, sampling, think, cots, batch_size, max_new_tokens,
               generation) -> RewardOutput:
        parts, texts = [], []
        for start in range(0, len(video_list), batch_size):
            chunk = slice(start, start + batch_size)
            decoded = [load_video(source, name=f"videos[{start + i}]", **sampling)
                       for i, source in enumerate(video_list[chunk])]
            batch = _to_device(self.encode_prompts(decoded, prompts[chunk], instructions[chunk]), self.device)
            two_pass = self.config.pixel_budget("cot") != self.config.pixel_budget("inference")
            if cots is None and think and two_pass:
                # The official pipeline: the CoT from its own encoding of the video, then a full scoring pass.
                cot_batch = _to_device(self.encode_prompts(decoded, prompts[chunk], instructions[chunk], stage="cot"),
                                       self.device)
                _, generated, lengths, _ = self._generate(cot_batch, self._cap_new_tokens(max_new_tokens, cot_batch),
                                                          **generation)
                cot_ids = [generated[i, : lengths[i]] for i in range(len(lengths))]
                result = self(**self.append_cots(batch, cot_ids))
                texts += self.tokenizer.batch_decode(cot_ids, skip_special_tokens=True)
            elif cots is None and think:
                result = self.generate_and_score(batch, self._cap_new_tokens(max_new_tokens, batch), **generation)
                texts += self.tokenizer.batch_decode(result.pop("cot_ids"), skip_special_tokens=True)
            else:
                chunk_cots = cots[chunk] if cots is not None else [None] * len(video_list[chunk])
                result = self(**self.append_cots(batch, chunk_cots))
                if cots is not None:
                    texts += [c or "" for c in chunk_cots]
            parts.append(result)
        rewards = torch.cat([p["rewards"] for p in parts]).float().cpu()
        output = RewardOutput(rewards=rewards)
        if self.config.head == "distribution":
            output.uncertainty = torch.cat([p["uncertainty"] for p in parts]).float().cpu()
            output.bin_probs = torch.cat([p["probs"] for p in parts]).float().cpu()
        if texts:
            parsed = [parse_answer(t) for t in texts]
            output.cots = texts
            output.dimensional_scores = [p.dimensional_scores for p in parsed]
            output.overall_scores = [p.overall_score for p in parsed]
            output.parse_errors = [p.error for p in parsed]
        return output

    def _cap_new_tokens(self, max_new_tokens: int, batch: dict) -> int:
        """At most the context the backbone has left after the prompt and the `<Reward>` token, with a warning."""
        context = self.vlm.config.get_text_config().max_position_embeddings
        left = context - batch["input_ids"].shape[1] - 1
        if left < 1:
            raise ValueError(f"the prompt takes {batch['input_ids'].shape[1]} tokens of the model's {context}-token context: "
                             "nothing is left for a CoT; use fewer frames, fewer pixels or a shorter instruction")
        if max_new_tokens > left:
            warnings.warn(f"max_new_tokens={max_new_tokens} exceeds the {left} tokens the model's {context}-token context "
                          f"has left after the prompt; generating at most {left}", stacklevel=4)
            return left
        return max_new_tokens

    def reward(self, videos, prompts, metadata=None, think: bool = True, **kwargs):
        """The reward-function signature of Flow-GRPO: `fn(images, prompts, metadata) -> (scores, info)`.
        `scores` is a list of floats; `info` holds the CoTs, the parsed dimension scores and overall scores."""
        out = self.score(videos, prompts, think=think, **kwargs)
        info = {
            "cots": out.cots,
            "dimensional_scores": out.dimensional_scores,
            "overall_scores": out.overall_scores,
            "parse_errors": out.parse_errors,
        }
        if out.uncertainty is not None:
            info["uncertainty"] = out.uncertainty.tolist()
        return out.rewards.tolist(), info

    # ------------------------------------------------------------------ save / load
    def reward_token_embedding(self) -> torch.Tensor:
        ids = torch.tensor([self.reward_token_id], device=self.device)
        return self.backbone.get_input_embeddings()(ids).detach()  # (1, H), the adapter's row if peft trains it

    def save_pretrained(self, save_directory, save_backbone: bool | None = None, state_dict: dict | None = None):
        """Write `descore_config.json`, `reward_head.safetensors` (head weight + `<Reward>` embedding row), the peft
        adapter (`adapter/`), the processor, and `backbone/` when the backbone's weights are not elsewhere (full
        fine-tuning or a tiny random model). Atomic: the directory appears complete or not at all.
        state_dict: the model's full state to write instead of its own tensors (keys as `self.state_dict()`), e.g.
        gathered from FSDP shards by `full_state.gather_state`."""
        config = copy.deepcopy(self.config)
        config.prompt_template = self.template
        if save_backbone is None:
            save_backbone = config.lora_rank == 0 and any(p.requires_grad for p in self.vlm.parameters()) or config.backbone == BACKBONE_DIR
        with atomic_directory(save_directory) as tmp:
            if state_dict is None:
                head, row = self.head.weight, self.reward_token_embedding()
            else:
                head, row = state_dict["head.weight"], self._reward_token_embedding_from(state_dict)
            tensors = {
                "head.weight": head.detach().float().cpu().contiguous(),
                "reward_token_embedding": row.float().cpu().contiguous(),
            }
            save_file(tensors, tmp / HEAD_NAME, metadata={"format": "pt", "reward_token": config.reward_token})
            if hasattr(self.backbone, "peft_config"):
                backbone_state = None if state_dict is None else _substate(self, state_dict, self.backbone)
                self.backbone.save_pretrained(tmp / ADAPTER_DIR, state_dict=backbone_state)
            if save_backbone:
                vlm_state = None if state_dict is None else _substate(self, state_dict, self.vlm)
                self.vlm.save_pretrained(tmp / BACKBONE_DIR, state_dict=self._backbone_state_dict(vlm_state))
                config.backbone = BACKBONE_DIR
            self.processor.save_pretrained(tmp)
            (tmp / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2))

    def _reward_token_embedding_from(self, state_dict: dict) -> torch.Tensor:
        """`reward_token_embedding()` computed from a full state dict instead of the module's own tensors."""
        embeddings = self.backbone.get_input_embeddings()
        ids = torch.tensor([self.reward_token_id])
        weights = _substate(self, state_dict, embeddings)
        return torch.func.functional_call(embeddings, weights, (ids,), strict=False).detach()

    def _backbone_state_dict(self, vlm_state: dict | None = None) -> dict:
        """The backbone's own weights (from `vlm_state` when given), without peft's adapter tensors and wrapper
        prefixes."""
        state = {}
        for key, value in (self.vlm.state_dict() if vlm_state is None else vlm_state).items():
            if "lora_" in key or "trainable_tokens_" in key:
                continue
            state[key.replace(".token_adapter.base_layer", "").replace(".base_layer", "")] = value
        return state

    @classmethod
    def from_pretrained(cls, path_or_id, device=None, dtype=None, **overrides) -> "DeScoreReward":
        """Load a DeScore model from a directory or hub id: our format (`descore_config.json`) or the official
        release layout (LoRA adapter folder + `rm_head.pth`). `overrides` replace DeScoreConfig fields
        (e.g. `num_frames=8`, `max_pixels=...`, `backbone=` to point an official adapter at a local base model)."""
        directory = _resolve(path_or_id)
        dtype = _parse_dtype(dtype)
        if (directory / CONFIG_NAME).is_file():
            model = cls._load_ours(directory, dtype, overrides)
        elif (directory / "rm_head.pth").is_file():
            model = cls._load_official(directory, dtype, overrides)
        elif _backbone_type(directory) in SUPPORTED_BACKBONES:
            model = cls.from_backbone(directory, dtype=dtype, name=str(path_or_id), **overrides)
        else:
            found = _backbone_type(directory)
            raise FileNotFoundError(
                f"{directory}: not a DeScore checkpoint (no {CONFIG_NAME}, no rm_head.pth of the official release) "
                + (f"and its config.json describes a {found!r} model, not one of {', '.join(SUPPORTED_BACKBONES)}" if found
                   else "and not a Qwen2.5-VL / Qwen3-VL checkpoint (no config.json)")
            )
        model.eval()
        return model.to(device) if device is not None else model

    @classmethod
    def from_backbone(cls, path_or_id, dtype=None, name: str | None = None, **overrides) -> "DeScoreReward":
        """A new DeScore model on a plain Qwen2.5-VL / Qwen3-VL checkpoint (hub id or a folder written by transformers'
        `save_pretrained`: config, weights, tokenizer, processor), as the official cold start builds it: `<Reward>` is
        added to the tokenizer as a special token, the embeddings are resized to the tokenizer (`mean_resizing`, so a
        new row starts at the mean of the others; Qwen's padded vocabularies already have a row for it, which is kept
        as it is), and the head is drawn from N(0, initializer_range) as transformers initialises a weight missing
        from a checkpoint. `save_pretrained` then writes a DeScore checkpoint that refers to the backbone by `name`."""
        directory = _resolve(path_or_id)
        local = Path(str(path_or_id)).exists()
        name = str(Path(path_or_id).resolve()) if local and name is None else str(name or path_or_id)
        if local and not Path(name).is_absolute():
            name = str(Path(name).resolve())
        config = DeScoreConfig.from_dict({"backbone": name}, source=str(directory), overrides=overrides)
        processor = _load_processor(directory)
        if config.reward_token not in processor.tokenizer.get_vocab():
            processor.tokenizer.add_special_tokens({"additional_special_tokens": [config.reward_token]},
                                                   replace_extra_special_tokens=False)
        backbone = _load_backbone(directory, _parse_dtype(dtype))
        model = cls(config, backbone, processor, checkpoint_dir=directory)
        std = backbone.config.get_text_config().initializer_range
        with torch.no_grad():
            model.head.weight.normal_(mean=0.0, std=std)
        return model

    @classmethod
    def _load_ours(cls, directory: Path, dtype, overrides) -> "DeScoreReward":
        values = json.loads((directory / CONFIG_NAME).read_text())
        config = DeScoreConfig.from_dict(values, source=str(directory / CONFIG_NAME), overrides=overrides)
        processor = _load_processor(directory)
        backbone = _load_backbone(_relative(directory, config.backbone), dtype)
        model = cls(config, backbone, processor, checkpoint_dir=directory)
        head_file = directory / HEAD_NAME
        if not head_file.is_file():
            raise FileNotFoundError(f"{directory}: no {HEAD_NAME}; a DeScore checkpoint needs the head weights")
        tensors = load_file(head_file)
        for key in ("head.weight", "reward_token_embedding"):
            if key not in tensors:
                raise KeyError(f"{head_file}: missing tensor {key!r}")
        model._set_reward_row(tensors["reward_token_embedding"])
        model._load_head(tensors["head.weight"], head_file)
        if (directory / ADAPTER_DIR).is_dir():
            from peft import PeftModel

            model.backbone = PeftModel.from_pretrained(model.backbone, directory / ADAPTER_DIR)
        return model

    @classmethod
    def _load_official(cls, directory: Path, dtype, overrides) -> "DeScoreReward":
        """Official DeScore release: a peft LoRA adapter folder + `rm_head.pth` (key `rm_head.weight` or
        `base_model.model.rm_head.weight`), special token `<Reward>`. Read with weights_only=True (no unpickling of
        arbitrary objects). Scored in the official inference layout (layout="user")."""
        adapter_dir = directory if (directory / "adapter_config.json").is_file() else next(
            (p.parent for p in sorted(directory.glob("*/adapter_config.json"))), None
        )
        if adapter_dir is None and "backbone" not in overrides:
            raise FileNotFoundError(f"{directory}: has rm_head.pth but no LoRA adapter (adapter_config.json) and no backbone= override")
        base = overrides.pop("backbone", None)
        if base is None:
            base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        if "prompt_template" not in overrides:
            warnings.warn(f"{directory}: an official DeScore checkpoint, scored here with the package's own judge instruction; "
                          "it was trained with the official one: pass prompt_template= (a file holding the instruction "
                          "of the official inference script, see docs/scoring.md)", stacklevel=3)
        official = {"backbone": base, "reward_token": "<Reward>", "layout": "user"}
        config = DeScoreConfig.from_dict(official, source=str(directory), overrides=overrides)
        has_tokenizer = any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        processor = _load_processor(directory if has_tokenizer else _relative(directory, base))
        if config.reward_token not in processor.tokenizer.get_vocab():
            processor.tokenizer.add_special_tokens({"additional_special_tokens": [config.reward_token]})
        backbone = _load_backbone(_relative(directory, base), dtype)
        model = cls(config, backbone, processor, checkpoint_dir=directory)
        factor = processor.video_processor.patch_size * processor.video_processor.merge_size
        if "cot_min_pixels" not in overrides and "cot_max_pixels" not in overrides:
            # The official inference generates the CoT from qwen-vl-utils' default video budget.
            config.cot_min_pixels, config.cot_max_pixels = 128 * factor * factor, 768 * factor * factor
        state = torch.load(directory / "rm_head.pth", map_location="cpu", weights_only=True)
        key = next((k for k in ("rm_head.weight", "base_model.model.rm_head.weight") if k in state), None)
        if key is None:
            raise KeyError(f"{directory / 'rm_head.pth'}: expected key 'rm_head.weight' or 'base_model.model.rm_head.weight', found {sorted(state)}")
        model._load_head(state[key], directory / "rm_head.pth")
        if adapter_dir is not None:
            from peft import PeftModel

            model.backbone = PeftModel.from_pretrained(model.backbone, adapter_dir)
        return model

    def _load_head(self, weight: torch.Tensor, source):
        if tuple(weight.shape) != tuple(self.head.weight.shape):
            raise ValueError(f"{source}: head weight has shape {tuple(weight.shape)}, the model expects {tuple(self.head.weight.shape)} "
                             f"(head={self.config.head!r}, hidden size {self.head.in_features})")
        with torch.no_grad():
            self.head.weight.copy_(weight.to(self.head.weight.dtype))

    def _set_reward_row(self, row: torch.Tensor):
        with torch.no_grad():
            embeddings = self.vlm.get_input_embeddings().weight
            embeddings[self.reward_token_id] = row.reshape(-1).to(embeddings.dtype)

    # ------------------------------------------------------------------ LoRA
    def add_lora(self, rank: int, alpha: int | None = None, dropout: float | None = None, target_modules: str | None = None,
                 train_reward_token: bool = True):
        """Wrap the backbone in a peft LoRA on the language model's linears (official: r 64, alpha 128, dropout 0.05).
        `train_reward_token` makes only the `<Reward>` embedding row trainable (peft `trainable_token_indices`)."""
        from peft import LoraConfig, get_peft_model

        self.config.lora_rank = rank
        self.config.lora_alpha = alpha if alpha is not None else self.config.lora_alpha
        self.config.lora_dropout = dropout if dropout is not None else self.config.lora_dropout
        self.config.lora_target_modules = target_modules or self.config.lora_target_modules
        lora = LoraConfig(
            r=rank,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=self.config.lora_target_modules,
            trainable_token_indices={"embed_tokens": [self.reward_token_id]} if train_reward_token else None,
        )
        self.backbone = get_peft_model(self.backbone, lora)
        self.train(self.training)  # new dropout modules start in training mode; keep the model's mode
        return self


# ---------------------------------------------------------------------- helpers
def left_pad(rows: list, pad_value: int):
    """Left-pad 1-D tensors to a (B, L) batch; returns (padded, attention_mask)."""
    length = max(len(r) for r in rows)
    padded = torch.full((len(rows), length), pad_value, dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros((len(rows), length), dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        padded[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    return padded, mask


def _reward_token_id(tokenizer, token: str, source: str) -> int:
    matches = [tid for text, tid in tokenizer.get_vocab().items() if text == token]
    if not matches:
        raise ValueError(f"{source}: the tokenizer has no {token!r} token; add it as a special token "
                         f"(tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})) before training")
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"{source}: {token!r} tokenizes into {len(ids)} pieces {ids}; it must be one special token")
    if tokenizer.get_added_vocab().get(token) is not None:
        duplicates = [t for t in tokenizer.get_added_vocab() if t.strip() == token and t != token]
        if duplicates:
            raise ValueError(f"{source}: the tokenizer holds {token!r} more than once ({duplicates}); keep one")
    return matches[0]


# Arguments of `generate` that are not GenerationConfig fields but may be passed through `score(**generation)`.
_GENERATE_ARGUMENTS = {"logits_processor", "stopping_criteria", "streamer", "generation_config"}


def _check_generation_kwargs(generation: dict, generating: bool):
    """Refuse, by name, an argument `generate` would not use, or one given where no CoT is generated."""
    from transformers import GenerationConfig

    known = set(GenerationConfig().to_dict()) | _GENERATE_ARGUMENTS
    unknown = sorted(set(generation) - known)
    if unknown:
        raise TypeError(f"score() got unexpected argument(s) {unknown}: not DeScore options and not generation settings "
                        "(video sampling: fps=, num_frames=, video_fps=)")
    if generation and not generating:
        raise ValueError(f"score(): {sorted(generation)} only apply when a CoT is generated (think=True, cots=None)")


def _check_flag(value, name: str):
    if not isinstance(value, bool):
        raise TypeError(f"score(): {name}={value!r} must be True or False")


def _check_positive_int(value, name: str):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"score(): {name}={value!r} must be a positive int")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def _parse_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(_DTYPES)} or a torch.dtype")


def _backbone_type(directory: Path) -> str | None:
    """The `model_type` of a transformers checkpoint folder, None when it has no config.json."""
    config = directory / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        return None


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _resolve(path_or_id) -> Path:
    path = Path(path_or_id)
    if path.exists():
        return path
    if str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") != 1:
        raise FileNotFoundError(f"{path_or_id}: no such directory (and not a hub id of the form owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id)))
    except Exception as error:  # offline, missing repo, no access: say which
        raise FileNotFoundError(f"{path_or_id}: not a local directory, and downloading it from the hub failed: {error}") from None


def _relative(directory: Path, path: str) -> str:
    candidate = directory / path
    return str(candidate) if candidate.exists() else path


def _load_processor(path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def _load_backbone(path, dtype):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_BACKBONES:
        raise ValueError(f"backbone {path!r} is a {config.model_type!r} model; DeScore supports {', '.join(SUPPORTED_BACKBONES)}")
    return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32)


def _substate(root: nn.Module, state_dict: dict, module: nn.Module) -> dict:
    """The entries of `root`'s state dict that belong to its submodule `module`, keyed relative to it."""
    prefix = next(name for name, sub in root.named_modules() if sub is module)
    prefix = f"{prefix}." if prefix else ""
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
