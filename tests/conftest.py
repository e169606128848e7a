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


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    """A tiny real-architecture Wan-2.1 pipeline (`write_tiny_wan(seed=0)`), written once per session: read it, never
    write into it (copy it first)."""
    from descore_plugin.testing.tiny_wan import write_tiny_wan

    return write_tiny_wan(tmp_path_factory.mktemp("tiny_wan"), seed=0)


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory):
    """A factory of synthetic pair sets: `synthetic_world(num_pairs, seed, **write_dataset_kwargs)` returns the
    pairs.jsonl of a folder written once per session for those arguments (videos in its videos/). Read only: a test
    that changes the files writes its own set with `write_dataset`."""
    from descore_plugin.testing.synthetic import write_dataset

    root, made = tmp_path_factory.mktemp("synthetic"), {}

    def make(num_pairs: int, seed: int = 0, **kwargs):
        key = (num_pairs, seed, *sorted((name, repr(value)) for name, value in kwargs.items()))
        if key not in made:
            made[key] = write_dataset(root / f"world{len(made)}", num_pairs, seed=seed, progress=False, **kwargs)
        return made[key]

    return make
