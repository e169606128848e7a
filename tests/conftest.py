import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from descore_plugin.testing.tiny import init_tiny

BACKBONES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One tiny random DeScore checkpoint per backbone family, written once per session."""
    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for family in BACKBONES:
        dirs[family] = root / family
        init_tiny(dirs[family], backbone=family)
    return dirs


@pytest.fixture(scope="session")
def sample_videos():
    """Three random (F, C, H, W) float videos in [0, 1], batched like WanPipeline(output_type="pt")."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, 8, 3, 56, 56, generator=generator)


PROMPTS = ["a red square moving right", "a blue circle", "a green square moving up on a white background"]
