"""The accelerate config files under recipes/accelerate/: each parses with `accelerate launch`'s own loading and
selects its plugin (DDP, FSDP2 with one unit per decoder layer / vision block). accelerate selects
FSDP only on accelerator devices, so on a CPU the launch environment and the plugin it builds are checked instead of a
run; torch's fully_shard itself runs on 2 CPU processes (gloo), which shards the frozen stage-2 reference here and
a full fine-tuning step in recipes/bench_data.py."""

import json
from pathlib import Path

import torch
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_multi_gpu_env
from helpers.run import offline_env, run_python, torchrun
from torch.distributed.fsdp import CPUOffloadPolicy

from descore_plugin import DeScoreReward

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"
WORKER = Path(__file__).resolve().parent / "sharding_worker.py"
RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "train_rm.py")


def launch_args(name: str):
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), RECIPE])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_ddp_config_is_plain_data_parallel():
    args, defaults = launch_args("ddp")
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
    assert args.num_processes == 8 and args.mixed_precision == "bf16"
    assert "ACCELERATE_USE_FSDP" not in prepare_multi_gpu_env(args)


def test_fsdp_config_builds_an_fsdp2_plugin_that_wraps_every_layer(tiny_dirs, monkeypatch):
    args, _ = launch_args("fsdp")
    assert args.use_fsdp and not args.use_deepspeed
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.cpu_ram_efficient_loading is True and not isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    assert plugin.transformer_cls_names_to_wrap == ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]
    model = DeScoreReward.from_pretrained(tiny_dirs["qwen3_vl"])
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = sorted({type(m).__name__ for m in model.modules() if policy(m)})
    assert wrapped == ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]
    units = sum(policy(m) for m in model.modules())
    text, vision = model.vlm.config.text_config.num_hidden_layers, model.vlm.config.vision_config.depth
    assert units == text + vision


def test_frozen_reference_is_sharded_over_two_cpu_processes(tiny_dirs, tmp_path):
    """descore_plugin.training.sharding with fsdp.yaml's wrap policy: each of 2 ranks holds half the reference's bytes, one FSDP
    unit per decoder layer and vision block plus the root, and the sharded model scores like the whole one."""
    from descore_plugin.data.video import write_video

    video = tmp_path / "clip.mp4"
    write_video(
        video, (torch.rand(8, 3, 56, 56, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8), fps=8
    )
    args, _ = launch_args("fsdp")
    env = offline_env(**{**prepare_multi_gpu_env(args), "OMP_NUM_THREADS": "1"})  # 2 gloo processes on the CPU
    done = run_python(torchrun(2, WORKER, tiny_dirs["qwen3_vl"], video, tmp_path / "rank"), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank.{r}.json").read_text()) for r in range(2)]
    model = DeScoreReward.from_pretrained(tiny_dirs["qwen3_vl"])
    layers = model.vlm.config.text_config.num_hidden_layers + model.vlm.config.vision_config.depth
    for rank in ranks:
        assert rank["units"] == layers + 1
        assert 0.45 < rank["local_bytes"] / rank["full_bytes"] < 0.55
        assert rank["max_reward_difference"] < 1e-5
    assert sum(r["local_bytes"] for r in ranks) == ranks[0]["full_bytes"]
