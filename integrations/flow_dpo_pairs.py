"""Flow-DPO's pairs (arXiv 2501.13918): the preference data the loss of `integrations/flow_dpo.py` trains on.

For each prompt, K videos are sampled (base model offline; the current policy when pairs are regenerated online),
scored by a `descore_plugin.rewards.contract.RewardSet` (named rewards with weights; the pair score is the weighted
sum, and a video whose score is NaN, i.e. has no score, is never in a pair), and turned into (winner, loser) pairs:
best vs worst (default) or every pair whose score gap exceeds a margin. The final latents, every named score, the
pairs and the CoTs are written per prompt under a store directory, so an interrupted run resumes by skipping the
prompts already on disk; a round's store is read once (`PairRound`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from descore_plugin.integrations.wan import PromptCache, WanGenerationConfig, generate, initial_noise
from descore_plugin.rewards.contract import RewardSet
from descore_plugin.utils.args import help_field as _help  # the package's one field-help helper
from descore_plugin.utils.errors import UserError
from descore_plugin.utils.files import follow_umask


class PairStoreError(UserError):
    """A pair store on disk (or a reward's output) that cannot be used; the message names the file or the reward."""


@dataclass
class PairConfig:
    """How preference pairs are built from sampled videos."""

    videos_per_prompt: int = _help("K videos sampled per prompt (the paper: several)", 4)
    pair_selection: Literal["best_worst", "margin"] = _help(
        "best_worst: one pair (highest, lowest score) per prompt; margin: every pair whose "
        "score gap exceeds --pair-margin",
        "best_worst",
    )
    pair_margin: float = _help("a pair needs score_w - score_l > margin (ties never make a pair)", 0.0)
    generation_batch_size: int = _help("videos per sampling batch (memory; results do not depend on it)", 4)
    uncertainty_scale: float = _help(
        "with a distribution-head DeScore (descore:uncertainty), a pair also needs a gap > scale * "
        "sqrt(std_w^2 + std_l^2): gaps the reward model is unsure of make no pair (our option; 0 = off)",
        0.0,
    )

    def check(self) -> None:
        if self.pair_selection not in ("best_worst", "margin"):
            raise PairStoreError(f"--pair-selection must be best_worst or margin, got {self.pair_selection!r}")
        if self.videos_per_prompt < 2:
            raise PairStoreError(f"--videos-per-prompt must be >= 2 to make a pair, got {self.videos_per_prompt}")


def select_pairs(
    scores: Sequence[float],
    selection: str = "best_worst",
    margin: float = 0.0,
    uncertainty: Sequence[float] | None = None,
    uncertainty_scale: float = 0.0,
) -> list[tuple[int, int]]:
    """(winner, loser) index pairs from the K scores of one prompt (see PairConfig). A NaN score (no score) is never
    in a pair."""
    scores = [float(s) for s in scores]
    std = [float(u) for u in uncertainty] if uncertainty is not None and uncertainty_scale > 0 else [0.0] * len(scores)
    scored = [i for i in range(len(scores)) if not math.isnan(scores[i])]

    def clear(i: int, j: int) -> bool:
        return scores[i] - scores[j] > margin + uncertainty_scale * math.sqrt(std[i] ** 2 + std[j] ** 2)

    if not scored:
        return []
    if selection == "best_worst":
        best = max(scored, key=lambda i: scores[i])
        worst = min(scored, key=lambda i: scores[i])
        return [(best, worst)] if clear(best, worst) else []
    if selection == "margin":
        return [(i, j) for i in scored for j in scored if clear(i, j)]
    raise PairStoreError(f"pair selection must be 'best_worst' or 'margin', got {selection!r}")


def prompt_seed(seed: int, round_index: int, prompt_id: int) -> int:
    """The generation seed of one prompt's K videos: independent of the number of processes and of resumption."""
    return int(np.random.SeedSequence([seed, round_index, prompt_id]).generate_state(1)[0])


@dataclass
class PairRecord:
    """One (winner, loser) pair whose latents lie in `latents_file` at rows index_w / index_l."""

    prompt_id: int  # line of the prompt in the prompt file (0-based)
    prompt: str
    latents_file: Path  # safetensors with "latents" (K, C, F', h, w) float32 normalised latents
    index_w: int
    index_l: int
    score_w: float
    score_l: float


@dataclass
class PairRound:
    """One round's pairs of some prompts, read from the store ONCE: the records, every video's combined score
    (None: no score), and, in memory, the latents of the videos that are in a pair (nothing is read per step)."""

    records: list[PairRecord]
    scores: list
    latents: dict = field(repr=False, default_factory=dict)  # (prompt_id, video index) -> (C, F', h, w) float32

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def batch(self, records: Sequence[PairRecord]) -> tuple[torch.Tensor, torch.Tensor]:
        """(winners, losers) latents of `records`, each (B, C, F', h, w) float32."""
        return (
            torch.stack([self.latents[(r.prompt_id, r.index_w)] for r in records]),
            torch.stack([self.latents[(r.prompt_id, r.index_l)] for r in records]),
        )


def _atomic_save(write: Callable[[Path], None], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    follow_umask(tmp)  # safetensors writes private files
    os.replace(tmp, path)


@torch.no_grad()
def build_pairs(
    pipe,
    transformer,
    prompt_cache: PromptCache,
    prompts: Sequence[str],
    prompt_ids: Sequence[int],
    rewards: RewardSet,
    generation: WanGenerationConfig,
    config: PairConfig,
    store_dir: str | Path,
    seed: int = 0,
    round_index: int = 0,
    solver: str = "scheduler",
    progress: bool = True,
) -> PairRound:
    """Sample K videos per prompt with `transformer` (as it is: wrap the call in `disable_adapter` for the base
    model), score them with `rewards`, select pairs, and store `{prompt_id:06d}.safetensors` (latents) + `.json`
    (prompt, every named score, the weighted score, pairs, CoTs) in `store_dir`. Prompts whose JSON exists are
    skipped (resumable) and read instead, each file once. The K initial noises of a prompt come from
    `prompt_seed(seed, round_index, prompt_id)`; solver: see `wan.sample`. Returns the round of `prompts`.
    """
    config.check()
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    device = next(transformer.parameters()).device
    made: dict[int, tuple[dict, torch.Tensor]] = {}
    todo = [(pid, p) for pid, p in zip(prompt_ids, prompts) if not (store_dir / f"{pid:06d}.json").is_file()]
    for prompt_id, prompt in tqdm(todo, desc=f"pairs (round {round_index})", disable=not progress):
        generator = torch.Generator().manual_seed(prompt_seed(seed, round_index, prompt_id))
        # all K initial noises drawn up front, so that the videos do not depend on generation_batch_size
        noise = initial_noise(pipe, config.videos_per_prompt, generation, generator=generator)
        videos, latents = [], []
        for start in range(0, config.videos_per_prompt, config.generation_batch_size):
            chunk = noise[start : start + config.generation_batch_size].to(device)
            chunk_videos, chunk_latents = generate(
                pipe,
                prompt_cache,
                [prompt] * len(chunk),
                generation,
                transformer=transformer,
                latents=chunk,
                solver=solver,
            )
            videos.append(chunk_videos)
            latents.append(chunk_latents.float().cpu())
        videos, latents = torch.cat(videos), torch.cat(latents)
        named = rewards(videos, [prompt] * len(videos))
        scores = rewards.combined(named)
        uncertainty = named.get("descore:uncertainty")
        if config.uncertainty_scale > 0 and uncertainty is None:
            raise PairStoreError(
                "--uncertainty-scale > 0 needs a reward that reports descore:uncertainty "
                "(a DeScore model with the distribution head)"
            )
        pairs = select_pairs(
            scores.tolist(),
            config.pair_selection,
            config.pair_margin,
            None if uncertainty is None else uncertainty.tolist(),
            config.uncertainty_scale,
        )
        record = {
            "prompt_id": prompt_id,
            "prompt": prompt,
            "round": round_index,
            "seed": prompt_seed(seed, round_index, prompt_id),
            "scores": [None if math.isnan(v) else v for v in scores.tolist()],
            "named_scores": {
                name: [None if math.isnan(v) else v for v in value.tolist()] for name, value in named.items()
            },
            "pairs": pairs,
            "cots": rewards.last_cots(),
        }
        latents_path = store_dir / f"{prompt_id:06d}.safetensors"
        _atomic_save(lambda p, latents=latents: save_file({"latents": latents.contiguous()}, str(p)), latents_path)
        _atomic_save(
            lambda p, record=record: p.write_text(json.dumps(record) + "\n"), store_dir / f"{prompt_id:06d}.json"
        )
        made[prompt_id] = (record, latents)
    return load_pair_store(store_dir, prompt_ids, made)


def load_pair_store(
    store_dir: str | Path,
    prompt_ids: Sequence[int] | None = None,
    in_memory: dict[int, tuple[dict, torch.Tensor]] | None = None,
) -> PairRound:
    """The pairs stored in `store_dir` (for `prompt_ids`, or all), in prompt order, each JSON and latents file read
    once; `in_memory` {prompt_id: (entry, latents)} holds prompts just generated (not read back)."""
    store_dir = Path(store_dir)
    in_memory = in_memory or {}
    if prompt_ids is None:
        prompt_ids = sorted(int(p.stem) for p in store_dir.glob("[0-9]*.json"))
    records, scores, latents = [], [], {}
    for prompt_id in prompt_ids:
        path = store_dir / f"{prompt_id:06d}.json"
        if prompt_id in in_memory:
            entry, stored = in_memory[prompt_id]
        else:
            if not path.is_file():
                raise PairStoreError(f"{path}: missing; rebuild the pairs of prompt {prompt_id} (run build_pairs)")
            entry, stored = json.loads(path.read_text()), None
        for field_name in ("prompt", "scores", "pairs"):
            if field_name not in entry:
                raise PairStoreError(f"{path}: field {field_name!r} missing")
        scores.extend(entry["scores"])
        if entry["pairs"] and stored is None:
            stored = load_file(str(store_dir / f"{prompt_id:06d}.safetensors"))["latents"]
        for index_w, index_l in entry["pairs"]:
            records.append(
                PairRecord(
                    prompt_id=prompt_id,
                    prompt=entry["prompt"],
                    latents_file=store_dir / f"{prompt_id:06d}.safetensors",
                    index_w=index_w,
                    index_l=index_l,
                    score_w=entry["scores"][index_w],
                    score_l=entry["scores"][index_l],
                )
            )
            for index in (index_w, index_l):
                latents[(prompt_id, index)] = stored[index]
    return PairRound(records, scores, latents)


def pair_latents(records: Sequence[PairRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """(winners, losers) latents, each (B, C, F', h, w) float32, read from the store files (a loop keeps a
    `PairRound` instead, which reads them once)."""
    cache: dict[Path, torch.Tensor] = {}
    winners, losers = [], []
    for record in records:
        if record.latents_file not in cache:
            cache[record.latents_file] = load_file(str(record.latents_file))["latents"]
        latents = cache[record.latents_file]
        winners.append(latents[record.index_w])
        losers.append(latents[record.index_l])
    return torch.stack(winners), torch.stack(losers)
