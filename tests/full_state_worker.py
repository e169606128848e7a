"""Run by tests/test_full_state.py under `torch.distributed.run` (2 CPU processes, gloo): train a tiny DeScore model
sharded with fully_shard (fsdp.yaml's wrap policy) next to an unsharded copy, write a checkpoint with
`descore_plugin.training.full_state.gather_state` as the trainer does, load it into a fresh sharded model with `load_state`,
and report how the restored shards and optimizer state compare with the unsharded copy. Then train with only the
<Reward> embedding row learning (`descore_plugin.training.embedding_rows.TrainableRow`, as full fine-tuning does), sharded and
unsharded, next to the official way (every row steps, then all but the reward row are written back)."""

import copy
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from safetensors.torch import save_file

from descore_plugin import DeScoreReward
from descore_plugin.training.embedding_rows import TrainableRow
from descore_plugin.training.full_state import gather_state, is_sharded, load_state
from descore_plugin.training.sharding import shard_module


def trainable_model(model_dir: str) -> DeScoreReward:
    """Full fine-tuning as the trainer sets it up: language model, lm_head, embeddings and head train, vision frozen."""
    model = DeScoreReward.from_pretrained(model_dir)
    model.requires_grad_(False)
    model.vlm.model.language_model.requires_grad_(True)
    model.vlm.lm_head.requires_grad_(True)
    model.vlm.get_input_embeddings().requires_grad_(True)
    model.head.requires_grad_(True)
    return model.train()


def optimizer_for(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)


def step(model, optimizer, batch):
    loss = model(**batch)["rewards"].float().pow(2).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def shard(model):
    policy = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), model)
    return shard_module(model, policy, reshard_after_forward=True)


def full_params(model) -> dict:
    """Every parameter as a full tensor (a collective on sharded models)."""
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()
    }


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def named_optimizer_state(model, optimizer) -> dict:
    """{parameter name: {exp_avg, exp_avg_sq, step}} of an unsharded model's optimizer."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: s for p, s in optimizer.state.items()}


def row_optimizer(model):
    """AdamW with weight decay, the input embedding matrix in a group of its own (as the trainer's groups)."""
    embeddings = model.vlm.get_input_embeddings().weight
    others = [p for p in model.parameters() if p.requires_grad and p is not embeddings]
    return torch.optim.AdamW([{"params": [embeddings]}, {"params": others}], lr=1e-2, weight_decay=0.1)


def embedding_name(model) -> str:
    weight = model.vlm.get_input_embeddings().weight
    return next(n for n, p in model.named_parameters() if p is weight)


def one_row_training(model_dir: str, batch: dict, reward_id: int) -> dict:
    """Three steps with only the reward row of the input embeddings learning: sharded and unsharded with
    TrainableRow, and unsharded the official way (a plain step, then every other row restored)."""
    start = trainable_model(model_dir)
    whole, official = copy.deepcopy(start), copy.deepcopy(start)
    model = shard(copy.deepcopy(start))
    runs = []
    for m in (whole, model):
        optimizer = row_optimizer(m)
        runs.append((m, optimizer, TrainableRow(m.vlm.get_input_embeddings().weight, reward_id, optimizer)))
    official_optimizer = row_optimizer(official)
    start_rows = start.vlm.get_input_embeddings().weight.detach().clone()
    frozen = torch.ones(start_rows.shape[0], dtype=torch.bool)
    frozen[reward_id] = False
    _, local_index = runs[1][2]._local_row(model.vlm.get_input_embeddings().weight)
    for _ in range(3):
        for m, optimizer, row in runs:
            m(**batch)["rewards"].float().pow(2).sum().backward()
            row.mask_gradient()
            optimizer.step()
            optimizer.zero_grad()
        official(**batch)["rewards"].float().pow(2).sum().backward()
        official_optimizer.step()
        official_optimizer.zero_grad()
        with torch.no_grad():
            official.vlm.get_input_embeddings().weight[frozen] = start_rows[frozen]
    embeddings = {name: full_params(m)[embedding_name(m)] for name, m in (("sharded", model), ("whole", whole))}
    return {
        "row_sharded": is_sharded(model),
        "row_local_holds_reward": local_index is not None,
        "row_embedding_rows": start_rows.shape[0],
        "row_embedding_name": embedding_name(start),
        "row_frozen_unchanged": {n: bool(torch.equal(e[frozen], start_rows[frozen])) for n, e in embeddings.items()},
        "row_reward_moved": {
            n: float((e[reward_id] - start_rows[reward_id]).abs().max()) for n, e in embeddings.items()
        },
        "row_sharded_vs_whole": max_difference(full_params(model), full_params(whole)),
        "row_whole_vs_official": max_difference(full_params(whole), full_params(official)),
        "row_other_moved": max_difference(full_params(whole), full_params(start)),
        "row_decay_left_in_group": [g["weight_decay"] for _, o, _ in runs for g in o.param_groups],
    }


def main(model_dir: str, out: str):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = Path(out)
    torch.manual_seed(0)
    tokenizer = DeScoreReward.from_pretrained(model_dir).processor.tokenizer
    reward_id = tokenizer.convert_tokens_to_ids("<Reward>")
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    ids[:, -1] = reward_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids)}

    whole = trainable_model(model_dir)
    whole_optimizer = optimizer_for(whole)
    model = shard(copy.deepcopy(whole))
    optimizer = optimizer_for(model)
    for _ in range(2):  # both ranks see the same batch, so the averaged gradient is the unsharded one
        step(whole, whole_optimizer, batch)
        step(model, optimizer, batch)
    trained_difference = max_difference(full_params(model), full_params(whole))

    state = gather_state(model, optimizer, main_process=rank == 0)
    checkpoint = out / "checkpoint"
    if rank == 0:
        model.save_pretrained(checkpoint / "model", state_dict=state.model)
        save_file(state.trainable, checkpoint / "trainable.safetensors")
        torch.save(state.optimizer, checkpoint / "optimizer.pt")
        whole.save_pretrained(out / "whole")
        save_file(
            {n: p.detach().contiguous() for n, p in whole.named_parameters() if p.requires_grad},
            out / "whole_trainable.safetensors",
        )
        saved_optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
        expected = named_optimizer_state(whole, whole_optimizer)
        optimizer_file_difference = max(
            float((saved_optimizer[n][k] - s[k]).abs().max())
            for n, s in expected.items()
            for k in ("exp_avg", "exp_avg_sq", "step")
        )
        optimizer_file_names = sorted(saved_optimizer) == sorted(expected)
    dist.barrier()

    fresh = shard(trainable_model(model_dir))  # the start weights: the checkpoint has to bring the trained ones
    fresh_optimizer = optimizer_for(fresh)
    before = max_difference(full_params(fresh), full_params(whole))
    load_state(fresh, fresh_optimizer, checkpoint)
    restored_difference = max_difference(full_params(fresh), full_params(whole))
    local_state = {n: s for n, s in fresh_optimizer.state.items()}
    restored_steps = sorted({float(s["step"]) for s in local_state.values()})
    local_numel = sum(s["exp_avg"].to_local().numel() for s in local_state.values())
    full_numel = sum(s["exp_avg"].numel() for s in local_state.values())
    regathered = gather_state(fresh, fresh_optimizer, main_process=rank == 0)  # before the step below moves it
    regathered_report = {}
    if rank == 0:
        regathered_report = dict(
            regathered_trainable_equal=all(
                torch.equal(regathered.trainable[n], state.trainable[n]) for n in state.trainable
            ),
            regathered_optimizer_names=sorted(regathered.optimizer["state"]) == sorted(state.optimizer["state"]),
            regathered_optimizer_unequal=[
                f"{n}:{k}"
                for n in state.optimizer["state"]
                for k in ("exp_avg", "exp_avg_sq", "step")
                if not torch.equal(regathered.optimizer["state"][n][k], state.optimizer["state"][n][k])
            ],
        )
    step(whole, whole_optimizer, batch)  # one more step on each: equal only if the AdamW moments came back
    step(fresh, fresh_optimizer, batch)
    continued_difference = max_difference(full_params(fresh), full_params(whole))
    result = {
        "rank": rank,
        "sharded": is_sharded(model),
        "trained_difference": trained_difference,
        "before_load_difference": before,
        "restored_difference": restored_difference,
        "continued_difference": continued_difference,
        "restored_steps": restored_steps,
        "optimizer_entries": len(local_state),
        "local_moment_share": local_numel / full_numel,
        "empty_off_main": rank == 0 or (not state.model and not state.trainable and not state.optimizer),
    }
    result.update(regathered_report)
    if rank == 0:
        result.update(
            optimizer_file_difference=optimizer_file_difference,
            optimizer_file_names=optimizer_file_names,
            whole_optimizer_entries=len(named_optimizer_state(whole, whole_optimizer)),
        )
    numbered = out / "numbered"  # an unsharded run's checkpoint: refused on every process, none left waiting
    if rank == 0:
        numbered.mkdir()
        shutil.copy(checkpoint / "trainable.safetensors", numbered)
        torch.save(whole_optimizer.state_dict(), numbered / "optimizer.pt")
    dist.barrier()
    try:
        load_state(fresh, fresh_optimizer, numbered)
        result["refused"] = None
    except ValueError as error:
        result["refused"] = str(error)
    result.update(one_row_training(model_dir, batch, reward_id))
    (out / f"rank.{rank}.json").write_text(json.dumps(result))
    # Every rank reaches the end before any tears its process group down (the usual teardown): without it, a rank
    # was seen to abort in about 1 run of 15 ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
