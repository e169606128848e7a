"""Tiny real-architecture DeScore models, built in-process (no hub access).

`init_tiny(out_dir)` writes a Qwen2.5-VL or Qwen3-VL DeScore model with random weights (text hidden 64, 2 layers;
vision hidden 64, depth 2), a byte-level BPE tokenizer trained here on a FIXED corpus checked in as
`tiny_tokenizer_corpus.json` (so token ids, and therefore seeded results, never change), the real transformers processors and a chat template, in the normal checkpoint
format: `DeScoreReward.from_pretrained(out_dir)` loads it exactly like a real checkpoint. Tests, the demo and the
benchmarks use it.
"""

import json
from importlib import resources

import torch

from descore_plugin.utils.files import follow_umask

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# ChatML, as the Qwen-VL instruct models use it (videos as <|vision_start|><|video_pad|><|vision_end|>).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


CORPUS_FILE = "tiny_tokenizer_corpus.json"


def tokenizer_corpus() -> list[str]:
    """The fixed text the tiny tokenizer is trained on, frozen in `tiny_tokenizer_corpus.json` (a JSON list of
    texts: the judge templates and the synthetic world's words as they were when it was written). Frozen so that
    rewording a template or a synthetic CoT never changes a tiny model's token ids, nor the seeded results and the
    learning measurements that depend on them."""
    return json.loads(resources.files("descore_plugin.testing").joinpath(CORPUS_FILE).read_text(encoding="utf-8"))


def build_tokenizer(vocab_size: int = 2000, reward_token: bool = True):
    """A byte-level BPE (the Qwen2 tokenizer class) trained in-process on `tokenizer_corpus()`, plus `<Reward>`
    (unless `reward_token=False`: the tokenizer of a plain Qwen-VL model)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]
    ]  # Qwen2Tokenizer wants tuples
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": SPECIAL_TOKENS[1:] + (["<Reward>"] if reward_token else [])}
    )
    return tokenizer


def build_processor(backbone: str, tokenizer, patch_size: int = 14):
    if backbone == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        kwargs = dict(patch_size=patch_size, temporal_patch_size=2, merge_size=2, cap_pixels_per_frame=False)
        return Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(patch_size=patch_size, temporal_patch_size=2, merge_size=2),
            video_processor=Qwen2VLVideoProcessor(**kwargs),
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
        )
    if backbone == "qwen3_vl":
        from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(patch_size=patch_size, temporal_patch_size=2, merge_size=2),
            video_processor=Qwen3VLVideoProcessor(patch_size=patch_size, temporal_patch_size=2, merge_size=2),
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
        )
    raise ValueError(f"backbone {backbone!r}: expected 'qwen2_5_vl' or 'qwen3_vl'")


def build_backbone(
    backbone: str,
    tokenizer,
    hidden: int = 64,
    layers: int = 2,
    vision_hidden: int = 64,
    vision_depth: int = 2,
    patch_size: int = 14,
    seed: int = 0,
):
    """A randomly initialised Qwen-VL model of the real architecture (4 heads; mrope sections sum to head_dim / 2)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    if backbone == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        half = hidden // 8  # head_dim / 2; split like the real [16, 24, 24]: a quarter temporal, the rest spatial
        temporal = max(1, half // 4)
        section = [temporal, (half - temporal + 1) // 2, (half - temporal) // 2]
        text["rope_parameters"] = dict(rope_type="default", mrope_section=section, rope_theta=10000.0)
        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=4,
            out_hidden_size=hidden,
            patch_size=patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=4 * patch_size,
            fullatt_block_indexes=[vision_depth - 1],
            tokens_per_second=2,
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
        model = Qwen2_5_VLForConditionalGeneration(config)
    elif backbone == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        half = hidden // 8  # interleaved sections like the real [24, 20, 20]: half temporal
        text.update(
            head_dim=hidden // 4,
            rope_parameters=dict(
                rope_type="default",
                mrope_section=[half // 2, half // 4, half - half // 2 - half // 4],
                mrope_interleaved=True,
                rope_theta=10000.0,
            ),
        )
        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=4,
            out_hidden_size=hidden,
            patch_size=patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[vision_depth - 1],
        )
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids)
        model = Qwen3VLForConditionalGeneration(config)
    else:
        raise ValueError(f"backbone {backbone!r}: expected 'qwen2_5_vl' or 'qwen3_vl'")
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    return model.eval()


def init_tiny(
    out_dir,
    backbone: str = "qwen2_5_vl",
    head: str = "scalar",
    seed: int = 0,
    prompt_template: str | None = None,
    **sizes,
):
    """Write a tiny DeScore model to `out_dir` and return it. Defaults fit the synthetic world: 8 frames of 56x56,
    the compact judge prompt, CoTs of up to 256 new tokens.

    prompt_template: the judge instruction (text with "{prompt}", or a path; None = templates/judge_compact.txt).
        A model trained from random weights learns nothing from the instruction's words, and a shorter one makes the
        prompt's own words a larger share of the context: tests/test_learning.py uses a one-line instruction."""
    from descore_plugin.modeling.model import BACKBONE_DIR, DeScoreConfig, DeScoreReward

    tokenizer = build_tokenizer()
    processor = build_processor(backbone, tokenizer)
    vlm = build_backbone(backbone, tokenizer, seed=seed, **sizes)
    template = prompt_template or resources.files("descore_plugin").joinpath("templates/judge_compact.txt").read_text()
    config = DeScoreConfig(
        backbone=BACKBONE_DIR,
        head=head,
        prompt_template=template,
        fps=None,
        num_frames=8,
        max_pixels=56 * 56,
        min_pixels=28 * 28,
        stage1_max_pixels=56 * 56,
        stage1_min_pixels=28 * 28,
        rollout_max_pixels=56 * 56,
        rollout_min_pixels=28 * 28,
        max_new_tokens=256,
        repetition_penalty=1.0,
    )
    torch.manual_seed(seed + 1)
    model = DeScoreReward(config, vlm, processor)
    model.save_pretrained(out_dir, save_backbone=True)
    return model


def init_tiny_backbone(out_dir, backbone: str = "qwen2_5_vl", seed: int = 0, **sizes):
    """Write a tiny PLAIN Qwen2.5-VL / Qwen3-VL checkpoint (no `<Reward>`, no head) with transformers'
    `save_pretrained`: config, weights, tokenizer, processor, the layout of a hub model such as
    Qwen/Qwen3-VL-8B-Instruct. `DeScoreReward.from_pretrained(out_dir)` turns it into a new DeScore model."""
    tokenizer = build_tokenizer(reward_token=False)
    processor = build_processor(backbone, tokenizer)
    vlm = build_backbone(backbone, tokenizer, seed=seed, **sizes)
    vlm.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    follow_umask(out_dir)  # safetensors writes private files
    return vlm
