"""Checkpoints under FSDP2: descore_plugin.training.full_state gathers the shards of the model and of AdamW's state into full
tensors on the main process and hands them back to the shards on resume. Two CPU processes (gloo) shard a tiny
Qwen3-VL with fsdp.yaml's wrap policy (tests/full_state_worker.py) and train it next to an unsharded copy."""

import json
from pathlib import Path

import torch
from accelerate.utils.launch import prepare_multi_gpu_env
from helpers.run import offline_env, run_python, torchrun
from safetensors.torch import load_file
from test_accelerate_configs import launch_args

from descore_plugin import DeScoreReward

WORKER = Path(__file__).resolve().parent / "full_state_worker.py"


def test_fsdp_checkpoint_holds_full_tensors_and_resumes_the_shards(tiny_dirs, tmp_path):
    args, _ = launch_args("fsdp")
    env = offline_env(**{**prepare_multi_gpu_env(args), "OMP_NUM_THREADS": "1"})  # 2 gloo processes on the CPU
    done = run_python(torchrun(2, WORKER, tiny_dirs["qwen3_vl"], tmp_path), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank.{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["sharded"] and rank["empty_off_main"]  # only the main process holds the gathered tensors
        assert rank["trained_difference"] == 0.0  # two sharded steps == two unsharded steps
        assert rank["before_load_difference"] > 1e-3  # the fresh model starts elsewhere ...
        assert rank["restored_difference"] == 0.0  # ... and the checkpoint brings back the trained shards
        assert rank["continued_difference"] == 0.0  # one more step matches: the AdamW moments came back too
        assert rank["restored_steps"] == [2.0] and rank["optimizer_entries"] == 25  # none for untouched lm_head
        assert 0.45 < rank["local_moment_share"] < 0.55  # each rank holds half of the moments
        assert "written by an unsharded run" in rank["refused"]
    # Full fine-tuning: only the <Reward> row of the input embeddings learns, sharded as unsharded.
    assert sorted(rank["row_local_holds_reward"] for rank in ranks) == [False, True]  # one shard holds the row
    for rank in ranks:
        assert rank["row_sharded"] and rank["row_embedding_rows"] > 100
        assert rank["row_frozen_unchanged"] == {"sharded": True, "whole": True}  # bit-identical, weight decay too
        assert min(rank["row_reward_moved"].values()) > 1e-3
        assert rank["row_sharded_vs_whole"] == 0.0  # the same function restricts both
        assert rank["row_whole_vs_official"] == 0.0  # == a plain AdamW step, then every other row restored
        assert rank["row_other_moved"] > 1e-3
        assert rank["row_decay_left_in_group"] == [0.0, 0.1, 0.0, 0.1]  # the matrix's decay is taken over
    main = ranks[0]
    assert main["optimizer_file_names"] and main["optimizer_file_difference"] == 0.0
    assert main["whole_optimizer_entries"] == 25
    assert main["regathered_trainable_equal"] and main["regathered_optimizer_names"]
    assert main["regathered_optimizer_unequal"] == []

    # The files hold full tensors, equal to the unsharded copy's.
    trainable = load_file(tmp_path / "checkpoint" / "trainable.safetensors")
    expected = load_file(tmp_path / "whole_trainable.safetensors")
    assert trainable.keys() == expected.keys() and len(trainable) == 26
    for name, value in expected.items():
        assert torch.equal(trainable[name], value), name
    saved = DeScoreReward.from_pretrained(tmp_path / "checkpoint" / "model")
    whole = DeScoreReward.from_pretrained(tmp_path / "whole")
    start = DeScoreReward.from_pretrained(tiny_dirs["qwen3_vl"])
    saved_state, whole_state = saved.state_dict(), whole.state_dict()
    assert saved_state.keys() == whole_state.keys() == start.state_dict().keys()
    for name, value in whole_state.items():
        assert value.shape == start.state_dict()[name].shape and torch.equal(saved_state[name], value), name
    assert not torch.equal(saved.head.weight, start.head.weight)  # trained, not the start weights
    head, whole_head = (
        load_file(d / "reward_head.safetensors") for d in (tmp_path / "checkpoint" / "model", tmp_path / "whole")
    )
    for key in ("head.weight", "reward_token_embedding"):
        assert torch.equal(head[key], whole_head[key]), key

    # The same checkpoint resumes an unsharded model (one process, DDP): the named optimizer state is renumbered.
    from full_state_worker import optimizer_for, trainable_model

    from descore_plugin.training.full_state import load_state

    model = trainable_model(str(tiny_dirs["qwen3_vl"]))
    optimizer = optimizer_for(model)
    load_state(model, optimizer, tmp_path / "checkpoint")
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach(), expected[name]), name
    named = torch.load(tmp_path / "checkpoint" / "optimizer.pt", weights_only=True)["state"]
    params = dict(model.named_parameters())
    assert len(optimizer.state) == len(named) == 25
    for name, state in named.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[params[name]][key], state[key]), (name, key)
