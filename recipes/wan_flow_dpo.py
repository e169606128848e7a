r"""Flow-DPO post-training of Wan-2.1 with video rewards (DeScore, analytic rewards for tests and the demo).

    python recipes/wan_flow_dpo.py --pipeline DIR_OR_ID --reward-model DIR_OR_ID_OR_URL --prompts prompts.txt \
        --output-dir out/ --max-steps N
    python recipes/wan_flow_dpo.py --pipeline tiny-wan/ --reward analytic:redness --prompts p.txt --output-dir out/ \
        --max-steps 10                       # no reward model needed for analytic rewards
    accelerate launch recipes/wan_flow_dpo.py ...          # many processes: prompts split across them, DDP sync

What it does (Flow-DPO, arXiv 2501.13918; docs/post_training.md "Flow-DPO" has the loss and the meaning of --beta):
1. Pairs: --videos-per-prompt videos per prompt from the base model (adapter disabled), scored by the --reward set
   (weighted sum; a video without a score is never in a pair), best vs worst (or every pair over --pair-margin);
   latents, every named score and the CoTs under OUTPUT/cache/pairs-<key>/round_0000, resumable, keyed by what
   produced them (a change of reward or generation settings gives a new store). With --online-every N the current
   policy regenerates the pairs every N steps (round r = step // N).
2. Training: LoRA (rank 64 / alpha 128 on q/k/v/o, as in the paper), the Flow-DPO loss with constant beta, shared
   noise and t for winner and loser (t from the pipeline's shifted schedule by default), reference = the same
   transformer with its adapter disabled.
3. At the start, every --eval-every steps and at every checkpoint: videos of the fixed evaluation prompts, scored.
Outputs (integrations/post_training.py has the full layout): pytorch_lora_weights.safetensors (diffusers format),
metrics.jsonl (train rows: loss, implicit_accuracy, ...; pairs rows: pairs_reward; eval rows: eval/<reward>),
samples/step-N/ (mp4 + scores.jsonl per evaluation), checkpoint-N/, curves.png.
Generation flags default to a tiny pipeline's generation_defaults.json, else to Wan-2.1's model card.
Every flag with its meaning and default: --help.
"""

import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from descore_plugin.integrations import flow_dpo, wan
from descore_plugin.integrations.post_training import (EvalArguments, RunArguments, TrainArguments, WanPostTraining,
                                                       parse_arguments, pipeline_generation_defaults, recorded_arguments,
                                                       run_main, seed_of)


@dataclass
class DPOArguments:
    """The Flow-DPO loop."""

    batch_size: int = field(default=4, metadata={"help": "pairs per process per step"})
    online_every: int = field(default=0, metadata={"help": "regenerate the pairs with the current policy every N "
                                                           "steps (0: offline, the base model's pairs)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})


RECIPE_DEFAULTS = dict(learning_rate=5e-6, lora_rank=64, lora_alpha=128.0, lora_targets="attention",
                       checkpoint_every=100, solver="scheduler")
"""Flow-DPO paper: learning rate 5e-6 (1.3B+ models), LoRA rank 64 / alpha 128 on the attention projections."""


def batch_indices(num_pairs: int, batch_size: int, seed: int, rank: int, round_index: int, position: int) -> list[int]:
    """Pairs of the `position`-th step of a round: epochs of per-(seed, rank, round, epoch) permutations."""
    indices = []
    for slot in range(position * batch_size, (position + 1) * batch_size):
        epoch, offset = divmod(slot, num_pairs)
        indices.append(int(np.random.default_rng([seed, 11, rank, round_index, epoch]).permutation(num_pairs)[offset]))
    return indices


def train(argv=None) -> int:
    run_args, train_args, eval_args, generation, pair_config, dpo_config, dpo_args = parse_arguments(
        (RunArguments, TrainArguments, EvalArguments, wan.GenerationConfig, flow_dpo.PairConfig,
         flow_dpo.FlowDPOConfig, DPOArguments), argv, __doc__, RECIPE_DEFAULTS,
        lambda known: pipeline_generation_defaults(known.pipeline))
    pair_config.check()
    s = WanPostTraining(run_args, train_args, eval_args, generation,
                        recorded_arguments(run_args, train_args, eval_args, generation, pair_config, dpo_config,
                                           dpo_args))
    if dpo_config.timestep_shift is None:
        dpo_config.timestep_shift = flow_dpo.scheduler_shift(s.pipe.scheduler)
    dpo_config.check()
    rank, accelerator = s.accelerator.process_index, s.accelerator
    my_ids, my_prompts = [i for i, _ in s.my_prompts], [p for _, p in s.my_prompts]
    store_root = s.run.cache_dir("pairs", {
        "pipeline": run_args.pipeline, "reward": run_args.reward, "reward_model": run_args.reward_model,
        "think": run_args.think, "generation": asdict(generation), "pairs": asdict(pair_config),
        "seed": run_args.seed, "solver": eval_args.solver, "online_every": dpo_args.online_every})
    logged_rounds = {r["round"] for r in s.run.metrics() if r["kind"] == "pairs"}

    def pairs_for_round(round_index: int) -> list[flow_dpo.PairRecord]:
        store = store_root / f"round_{round_index:04d}"
        s.transformer.eval()
        build = dict(rewards=s.rewards, generation=generation, config=pair_config, store_dir=store,
                     seed=run_args.seed, round_index=round_index, solver=eval_args.solver,
                     progress=accelerator.is_main_process)
        if round_index == 0:  # the base model's videos (exactly the base model, even after a resume)
            with wan.disable_adapter(s.transformer):
                records = flow_dpo.build_pairs(s.pipe, s.transformer, s.prompt_cache, my_prompts, my_ids, **build)
        else:
            records = flow_dpo.build_pairs(s.pipe, s.transformer, s.prompt_cache, my_prompts, my_ids, **build)
        s.transformer.train()
        accelerator.wait_for_everyone()
        if not records:
            raise flow_dpo.PairStoreError(
                f"{store}: no pair on process {rank} (all scores of its {len(my_prompts)} prompts tie, differ by <= "
                f"--pair-margin {pair_config.pair_margin} or are missing); use more prompts or --videos-per-prompt")
        from accelerate.utils import gather_object

        scores = [v for i in my_ids for v in json.loads((store / f"{i:06d}.json").read_text())["scores"]]
        mean = float(np.nanmean([np.nan if v is None else v for v in scores]))
        gathered = gather_object([[mean, len(records)]])
        if round_index not in logged_rounds:  # a resumed run inside this round has its row already
            logged_rounds.add(round_index)
            s.log({"kind": "pairs", "step": round_index * dpo_args.online_every, "round": round_index,
                   "pairs_reward": float(np.mean([g[0] for g in gathered])),
                   "num_pairs": int(sum(g[1] for g in gathered))})
        return records

    if s.start_step == 0:
        s.evaluate(0, pair_config.generation_batch_size)
    round_index, records = None, None
    for step in s.steps("Flow-DPO"):
        wanted = step // dpo_args.online_every if dpo_args.online_every else 0
        if wanted != round_index:
            round_index, records = wanted, pairs_for_round(wanted)
        position = step - round_index * dpo_args.online_every
        batch = [records[i] for i in batch_indices(len(records), dpo_args.batch_size, run_args.seed, rank,
                                                   round_index, position)]
        winners, losers = flow_dpo.pair_latents(batch)
        started = time.perf_counter()
        output = flow_dpo.flow_dpo_step(
            s.model, s.transformer, winners.to(s.device), losers.to(s.device),
            s.prompt_cache.embed([r.prompt for r in batch]).to(s.device), dpo_config,
            generator=torch.Generator().manual_seed(seed_of(run_args.seed, 7, rank, step)))
        accelerator.backward(output.loss)
        grad_norm = accelerator.clip_grad_norm_(s.lora_parameters, dpo_args.max_grad_norm)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        names = ["loss", "implicit_accuracy", "mse_w", "mse_l", "ref_mse_w", "ref_mse_l", "inside", "pair_gap"]
        values = torch.tensor([output.loss.item(), output.implicit_accuracy, output.mse_w, output.mse_l,
                               output.ref_mse_w, output.ref_mse_l, output.inside.mean().item(),
                               float(np.mean([r.score_w - r.score_l for r in batch]))], device=s.device)
        values = accelerator.reduce(values, reduction="mean").tolist()
        s.log({"kind": "train", "step": step + 1, "round": round_index, **dict(zip(names, values)),
               "grad_norm": float(grad_norm), "step_seconds": time.perf_counter() - started})
        s.after_step(step + 1, pair_config.generation_batch_size, {"loss": values[0], "acc": values[1]})
    s.finish(["loss", "implicit_accuracy"])
    return 0


main = functools.partial(run_main, "wan_flow_dpo.py", train)


if __name__ == "__main__":
    sys.exit(main())
