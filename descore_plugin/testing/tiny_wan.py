"""A tiny real-architecture Wan-2.1 pipeline for tests and the demo (`descore init-tiny-wan DIR`).

Random weights, real diffusers classes (WanTransformer3DModel, AutoencoderKLWan, UMT5 text encoder, the UniPC
scheduler Wan-AI ships), sized to run a video in about 0.1 s on one CPU core. `write_tiny_wan` also writes
`generation_defaults.json` next to it, which the recipes read (`generation_defaults`) so that they run at the tiny
size without size flags.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from descore_plugin.integrations.wan import WanGenerationConfig
from descore_plugin.utils.files import follow_umask

GENERATION_DEFAULTS_FILE = "generation_defaults.json"

# 9 frames of 64x64 in 6 steps, ~0.1 s per video with CFG on one CPU core; not from any paper: chosen so that tests
# and the demo run in seconds.
TINY_GENERATION = WanGenerationConfig(
    num_frames=9, height=64, width=64, num_inference_steps=6, guidance_scale=5.0, max_sequence_length=32
)


def generation_defaults(path_or_id: str | Path) -> WanGenerationConfig:
    """Generation settings for a pipeline: those written next to a tiny pipeline by `write_tiny_wan`, else Wan's."""
    path = Path(path_or_id) / GENERATION_DEFAULTS_FILE
    if path.is_file():
        return WanGenerationConfig(**json.loads(path.read_text()))
    return WanGenerationConfig()


@dataclass
class TinyWanConfig:
    """Sizes of the tiny real-architecture Wan pipeline (not from any paper: the smallest that run the real code)."""

    num_attention_heads: int = 2  # transformer heads
    attention_head_dim: int = 12  # >= 12 so the 3-D rotary split (t, h, w) gets non-empty parts
    num_layers: int = 2  # transformer blocks
    ffn_dim: int = 64  # transformer FFN width
    vae_base_dim: int = 3  # AutoencoderKLWan channel base (real: 96)
    z_dim: int = 16  # latent channels; must stay 16 because latents_mean/latents_std have 16 entries
    text_d_model: int = 32  # UMT5 width = the transformer's text_dim
    text_layers: int = 2  # UMT5 encoder layers
    text_heads: int = 4  # UMT5 heads (d_kv = d_model / heads)
    vocab_size: int = 400  # target size of the Unigram vocabulary trained on TINY_CORPUS
    flow_shift: float = 3.0  # scheduler flow shift, as shipped for Wan-2.1 at 480p
    generation: WanGenerationConfig = field(default_factory=lambda: copy.deepcopy(TINY_GENERATION))


# Fixed corpus for the tiny tokenizer: words of typical text-to-video prompts (VBench-like subjects and scenes).
TINY_CORPUS = [
    "a red ball bouncing on a green field in the sun",
    "a cat walking slowly in the snow at night",
    "a dog running along the beach at sunset",
    "a car driving through a busy city street in the rain",
    "a person dancing in a bright room with white walls",
    "a bird flying over the blue ocean, camera panning left",
    "a horse galloping across a wide meadow, close-up shot",
    "an astronaut riding a bicycle on the moon, cinematic lighting",
    "a panda eating bamboo in a quiet forest",
    "a boat sailing on a calm lake surrounded by mountains",
    "fireworks exploding in the dark sky over a river",
    "a chef cooking pasta in a small kitchen, zoom in",
    "a train passing a yellow flower field in spring",
    "waves crashing on black rocks, slow motion",
    "a child flying a kite in the park on a windy day",
    "a teddy bear playing the drums, high quality, 4k",
    "an old man reading a book under a tree",
    "a butterfly landing on a purple flower, macro shot",
    "a robot walking down a neon street at night",
    "clouds moving over a snowy mountain peak, time-lapse",
]


def _tiny_tokenizer(vocab_size: int):
    """A T5Tokenizer over a Unigram model trained in-process on TINY_CORPUS (ids: <pad> 0, </s> 1, <unk> 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer=trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]]
    if [piece for piece, _ in vocab[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(f"the tiny Unigram vocabulary must start with <pad>, </s>, <unk>; got {vocab[:3]}")
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_tiny_wan(config: TinyWanConfig | None = None, seed: int = 0):
    """A tiny WanPipeline with random weights (each component built after torch.manual_seed(seed))."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    config = config or TinyWanConfig()
    tokenizer = _tiny_tokenizer(config.vocab_size)
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=config.text_d_model,
            d_kv=config.text_d_model // config.text_heads,
            d_ff=2 * config.text_d_model,
            num_layers=config.text_layers,
            num_heads=config.text_heads,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim,
        in_channels=config.z_dim,
        out_channels=config.z_dim,
        text_dim=config.text_d_model,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=config.vae_base_dim, z_dim=config.z_dim)
    # The scheduler type and settings Wan-AI ships for Wan-2.1 T2V (UniPC, flow prediction, flow sigmas).
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=config.flow_shift, num_train_timesteps=1000
    )
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )


def write_tiny_wan(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny real-architecture Wan pipeline that `WanPipeline.from_pretrained(out_dir)` loads.

    Also writes `generation_defaults.json` (TINY_GENERATION) read by `generation_defaults`, so that the recipes run at
    the tiny size (9 frames, 64x64, 6 steps) without size flags.
    """
    out_dir = Path(out_dir)
    config = TinyWanConfig()
    pipe = build_tiny_wan(config, seed=seed)
    pipe.save_pretrained(out_dir)
    (out_dir / GENERATION_DEFAULTS_FILE).write_text(json.dumps(asdict(config.generation), indent=2) + "\n")
    follow_umask(out_dir)  # safetensors writes private files
    return out_dir
