"""DeScore: think, then score (arXiv 2605.05922). The whole reward model, in the order it runs.

    video + judge instruction --(Qwen-VL generates)--> chain of thought (CoT)
    ... + CoT + <Reward> --(last hidden state at <Reward>)--> head --> reward

1. `DeScoreConfig` (config.py): every setting, with the official default and where it comes from.
2. `DeScoreReward`: a Qwen2.5-VL or Qwen3-VL backbone, the learnable `<Reward>` query token, and a bias-free head.
   - `score(videos, prompts, think=True)`: batched greedy CoT generation, then `<Reward>` appended by continuing the
     generation's KV cache (one token step, no re-encoding of video, instruction and CoT).
   - `score(..., think=False)`: the masked-CoT fast path (instruction then `<Reward>`): one prefill.
   - `score(..., cots=[...])`: teacher forcing with CoTs supplied by the caller.
   - `reward(videos, prompts, metadata)`: the Flow-GRPO reward-function signature.
   - `save_pretrained` / `from_pretrained`: our directory format, the official release layout and plain Qwen-VL
     backbones (the loaders are in loading.py).

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

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from descore_plugin.data.video import Video, load_video, resize_frames, split_videos
from descore_plugin.modeling import loading
from descore_plugin.modeling.config import (
    DeScoreConfig,  # noqa: F401 (public: descore_plugin.modeling.model.DeScoreConfig)
)
from descore_plugin.modeling.loading import (  # noqa: F401 (public)
    ADAPTER_DIR,
    BACKBONE_DIR,
    CONFIG_NAME,
    HEAD_NAME,
    SUPPORTED_BACKBONES,
    _load_backbone,
    _parse_dtype,
    quiet_embedding_resize,
    quiet_peft,
)
from descore_plugin.modeling.prompt import build_instruction, load_template, parse_answer, video_content
from descore_plugin.utils.device import to_device


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
        self.reward_token_id = _reward_token_id(
            self.tokenizer, config.reward_token, source=str(checkpoint_dir or "tokenizer")
        )
        if backbone.get_input_embeddings().num_embeddings <= self.reward_token_id:
            with quiet_embedding_resize():  # the official way to add <Reward>; loading.py says why it is quiet
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
            {
                i
                for i in self.tokenizer.convert_tokens_to_ids(special)
                if i is not None and i != self.tokenizer.unk_token_id
            }
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
    def encode_prompts(
        self, videos: list[Video], prompts: list[str], instructions: list | None = None, stage: str = "inference"
    ) -> dict:
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
            raise ValueError(
                f"got {len(prompts)} prompts but {len(instructions)} instructions: pass one (or None) per video"
            )
        min_pixels, max_pixels = self.config.pixel_budget(stage)
        factor = self.processor.video_processor.patch_size * self.processor.video_processor.merge_size
        videos = [resize_frames(v, factor, min_pixels, max_pixels) for v in videos]
        if stage == "rollout":  # the official stage-2 data loader trims the instruction (its prompt template: `| trim`)
            instructions = [None if text is None else text.strip() for text in instructions]
        texts = [
            self.chat_text(prompt, instruction, name=f"prompts[{i}]")
            for i, (prompt, instruction) in enumerate(zip(prompts, instructions))
        ]
        options = (
            {"cap_pixels_per_frame": False} if hasattr(self.processor.video_processor, "cap_pixels_per_frame") else {}
        )
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
            raise ValueError(
                "next-token labels (stage-2 log-probs, the CoT LM loss) need the CoT in the assistant turn, "
                "where it was generated; this model has layout='user' (load it with layout='assistant')"
            )
        rows, types, labels = [], [], []
        end_id = self._eos_ids()[0]
        cut = len(self.generation_suffix_ids) if self.config.layout == "user" else 0
        for i, cot in enumerate(cots):
            keep = batch["attention_mask"][i].bool()
            keep[len(keep) - cut :] = False  # "user" layout: drop the end of the user turn and the assistant header
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

    def forward(
        self,
        input_ids,
        attention_mask,
        mm_token_type_ids,
        pixel_values_videos=None,
        video_grid_thw=None,
        second_per_grid_ts=None,
        labels=None,
        **_,
    ) -> dict:
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
            raise ValueError(
                f"row {row} of the batch holds no {self.config.reward_token!r} token; the head has nothing to read"
            )
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
        generated = out.sequences[:, batch["input_ids"].shape[1] :]  # (B, G)
        is_end = torch.isin(generated, torch.tensor(self._eos_ids(), device=generated.device))
        ended = is_end.any(-1)
        cot_lengths = torch.where(
            ended, is_end.float().argmax(-1).long(), torch.full_like(ended, generated.shape[1], dtype=torch.long)
        )
        return out, generated, cot_lengths, ended

    @torch.no_grad()
    def sample_cots(self, batch: dict, max_new_tokens: int, temperature: float = 1.0, **generation) -> dict:
        """Sampled rollouts (stage 2): {"cot_ids": list of 1-D tensors, "ended": list of bool}."""
        _, generated, lengths, ended = self._generate(
            batch, max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, **generation
        )
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
    def score(
        self,
        videos,
        prompts,
        think: bool = True,
        cots: list | None = None,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        video_fps: float | None = None,
        fps: float | None = None,
        num_frames: int | None = None,
        instructions: list | None = None,
        **generation,
    ) -> RewardOutput:
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
            raise ValueError(
                f"got {len(video_list)} videos but cots={_short(cots)}: pass a list with one CoT (or None) per video"
            )
        if instructions is not None and (isinstance(instructions, str) or len(instructions) != len(video_list)):
            raise ValueError(
                f"got {len(video_list)} videos but instructions={_short(instructions)}: pass a list with one "
                "instruction (or None) per video"
            )
        max_new_tokens = self.config.cot_token_limit() if max_new_tokens is None else max_new_tokens
        instructions = [None] * len(video_list) if instructions is None else list(instructions)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:  # repeatable sampling without touching the caller's random state
                torch.manual_seed(seed)
            return self._score(
                video_list, prompts, instructions, sampling, think, cots, batch_size, max_new_tokens, generation
            )

    def _score(
        self, video_list, prompts, instructions, sampling, think, cots, batch_size, max_new_tokens, generation
    ) -> RewardOutput:
        parts, texts = [], []
        for start in range(0, len(video_list), batch_size):
            chunk = slice(start, start + batch_size)
            decoded = [
                load_video(source, name=f"videos[{start + i}]", **sampling)
                for i, source in enumerate(video_list[chunk])
            ]
            batch = to_device(self.encode_prompts(decoded, prompts[chunk], instructions[chunk]), self.device)
            two_pass = self.config.pixel_budget("cot") != self.config.pixel_budget("inference")
            if cots is None and think and two_pass:
                # The official pipeline: the CoT from its own encoding of the video, then a full scoring pass.
                cot_batch = to_device(
                    self.encode_prompts(decoded, prompts[chunk], instructions[chunk], stage="cot"), self.device
                )
                _, generated, lengths, _ = self._generate(
                    cot_batch, self._cap_new_tokens(max_new_tokens, cot_batch), **generation
                )
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
            raise ValueError(
                f"the prompt takes {batch['input_ids'].shape[1]} tokens of the model's {context}-token context: "
                "nothing is left for a CoT; use fewer frames, fewer pixels or a shorter instruction"
            )
        if max_new_tokens > left:
            warnings.warn(
                f"max_new_tokens={max_new_tokens} exceeds the {left} tokens the model's {context}-token context "
                f"has left after the prompt; generating at most {left}",
                stacklevel=4,
            )
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
        loading.save_model(self, save_directory, save_backbone=save_backbone, state_dict=state_dict)

    @classmethod
    def from_pretrained(cls, path_or_id, device=None, dtype=None, **overrides) -> "DeScoreReward":
        """Load a DeScore model from a directory or hub id: our format (`descore_config.json`), the official release
        layout (LoRA adapter folder + `rm_head.pth`) or a plain Qwen2.5-VL / Qwen3-VL checkpoint (a new model, see
        `from_backbone`). `overrides` replace DeScoreConfig fields (e.g. `num_frames=8`, `max_pixels=...`,
        `backbone=` to point an official adapter at a local base model). The loaders are in loading.py."""
        return loading.load_pretrained(cls, path_or_id, device=device, dtype=dtype, overrides=overrides)

    @classmethod
    def from_backbone(cls, path_or_id, dtype=None, name: str | None = None, **overrides) -> "DeScoreReward":
        """A new DeScore model on a plain Qwen2.5-VL / Qwen3-VL checkpoint (hub id or a folder written by transformers'
        `save_pretrained`), as the official cold start builds it: `<Reward>` added as a special token, the embeddings
        resized with mean resizing, the head drawn from N(0, initializer_range) (loading.new_from_backbone)."""
        return loading.new_from_backbone(cls, path_or_id, dtype=dtype, name=name, overrides=overrides)

    def _load_head(self, weight: torch.Tensor, source):
        if tuple(weight.shape) != tuple(self.head.weight.shape):
            raise ValueError(
                f"{source}: head weight has shape {tuple(weight.shape)}, the model expects {tuple(self.head.weight.shape)} "
                f"(head={self.config.head!r}, hidden size {self.head.in_features})"
            )
        with torch.no_grad():
            self.head.weight.copy_(weight.to(self.head.weight.dtype))

    def _set_reward_row(self, row: torch.Tensor):
        with torch.no_grad():
            embeddings = self.vlm.get_input_embeddings().weight
            embeddings[self.reward_token_id] = row.reshape(-1).to(embeddings.dtype)

    # ------------------------------------------------------------------ LoRA
    def add_lora(
        self,
        rank: int,
        alpha: int | None = None,
        dropout: float | None = None,
        target_modules: str | None = None,
        train_reward_token: bool = True,
    ):
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
        with quiet_peft():
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
        padded[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    return padded, mask


def _reward_token_id(tokenizer, token: str, source: str) -> int:
    matches = [tid for text, tid in tokenizer.get_vocab().items() if text == token]
    if not matches:
        raise ValueError(
            f"{source}: the tokenizer has no {token!r} token; add it as a special token "
            f"(tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})) before training"
        )
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
        raise TypeError(
            f"score() got unexpected argument(s) {unknown}: not DeScore options and not generation settings "
            "(video sampling: fps=, num_frames=, video_fps=)"
        )
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
