"""`WanMethod`, the base of every Wan post-training method (it implements `descore_plugin.training.loop.Method`):
the shared set-up (pipeline, rewards, prompt embeddings, LoRA and optimiser), the evaluation on fixed prompts and
noise, the checkpoint state and the final LoRA; and `LoraEMA`, the EMA of the LoRA weights a method may evaluate and
publish. A method subclasses `WanMethod` in its own file (`integrations/post_training.py` has the registry).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import fields

import numpy as np
import torch

from descore_plugin.integrations import wan
from descore_plugin.integrations.post_training_config import (
    PostTrainingConfig,
    RecipeError,
    build_rewards,
    check_reward_flags,
    pipeline_generation_defaults,
    read_prompts,
)
from descore_plugin.modeling.prompt import parse_answer
from descore_plugin.training.loop import RunLoop
from descore_plugin.training.runs import field_defaults
from descore_plugin.utils.seeding import seed_of

LORA_STATE = "lora"  # checkpoint-N/lora.safetensors


# ------------------------------------------------------------------------------------------------------ LoRA's EMA
class LoraEMA:
    """An exponential moving average of the LoRA weights, flow_grpo's `EMAModuleWrapper` rule: after optimiser step
    n (1-based), when n % interval == 0, ema += (1 - d) (w - ema) with d = min((1 + n) / (10 + n), decay)."""

    def __init__(self, parameters, decay: float = 0.9, interval: int = 8, names: list[str] | None = None):
        self.parameters = list(parameters)
        self.names = list(names) if names is not None else [f"{i:05d}" for i in range(len(self.parameters))]
        self.decay, self.interval = decay, interval
        self.shadow = [p.detach().clone().float() for p in self.parameters]

    def current_decay(self, step: int) -> float:
        return min((1 + step) / (10 + step), self.decay)

    @torch.no_grad()
    def update(self, step: int) -> None:
        if (step + 1) % self.interval != 0:  # flow_grpo: `(optimization_step + 1) % update_step_interval == 0`
            return
        keep = 1 - self.current_decay(step)
        for shadow, parameter in zip(self.shadow, self.parameters):
            shadow.add_(keep * (parameter.detach().float() - shadow))

    @contextlib.contextmanager
    def applied(self):
        """The LoRA holds the EMA weights inside the block, its own weights again after."""
        saved = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for shadow, parameter in zip(self.shadow, self.parameters):
                parameter.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for value, parameter in zip(saved, self.parameters):
                    parameter.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = [state[name].float().clone() for name in self.names]


# ---------------------------------------------------------------------------------------------------- the method
class WanMethod:
    """The base of a Wan post-training method; implements `descore_plugin.training.loop.Method`.

    A subclass sets `name`, `curve_names`, `config_classes` (its own dataclasses, flags of its recipe), `defaults`
    (its defaults of shared flags, e.g. the learning rate), optionally `help_notes` and `later_defaults`, and
    implements `prepare()` (after the shared set-up) and `train_step(step) -> metrics`. `extra_state()` /
    `load_extra_state()` add to the checkpoint; `self.ema`, when set, is what is evaluated and published.

    Attributes after `setup`: loop, accelerator, device, dtype, pipe, transformer (unwrapped), model (prepared),
    optimizer, lora_parameters, prompts, my_prompts ((prompt id, prompt) of this process), prompt_cache, rewards
    (trained), eval_rewards (+ checks), generation, run, adapter, evaluation, rank.
    """

    name = "post-training"
    curve_names: tuple = ()
    config_classes: tuple = ()
    defaults: dict = {}
    help_notes: dict = {}
    may_change_on_resume: tuple = ()
    eval_batch_size = 4

    def __init__(self, config: PostTrainingConfig):
        self.config = config
        self.run, self.adapter, self.evaluation = config.run, config.adapter, config.evaluation
        self.generation = config.generation
        self.ema: LoraEMA | None = None

    @classmethod
    def later_defaults(cls, known) -> dict:
        """Defaults that depend on other flags (parsed first): here the pipeline's generation settings."""
        return pipeline_generation_defaults(known.pipeline)

    @property
    def arguments(self) -> dict:
        """What run_args.json records and --resume compares: every field except the loop's."""
        recorded = {"method": self.config.method}
        for config in (self.run, self.adapter, self.evaluation, self.generation, *self.config.method_configs):
            recorded.update({f.name: getattr(config, f.name) for f in fields(config)})
        return recorded

    @property
    def argument_defaults(self) -> dict:
        """Each recorded argument's default (an argument a run began without is taken at it on --resume)."""
        return field_defaults(self.run, self.adapter, self.evaluation, self.generation, *self.config.method_configs)

    # ------------------------------------------------------------------ set-up
    def setup(self, loop: RunLoop) -> None:
        run, adapter = self.run, self.adapter
        self.loop, self.accelerator = loop, loop.accelerator
        self.device, self.rank = self.accelerator.device, self.accelerator.process_index
        self.dtype = (
            getattr(torch, run.dtype)
            if run.dtype
            else (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        )
        self.rewards, self.eval_rewards = build_rewards(run, self.device, self.dtype)
        self.pipe = wan.load_wan_pipeline(run.pipeline, device=self.device, dtype=self.dtype)
        with self.accelerator.split_between_processes(list(enumerate(self.prompts))) as mine:
            self.my_prompts = list(mine)
        if not self.my_prompts:
            raise RecipeError(
                f"--prompts {run.prompts}: {len(self.prompts)} prompts for {self.accelerator.num_processes} processes"
            )
        self.eval_prompts = self.prompts[: self.evaluation.eval_prompts] * self.evaluation.eval_videos_per_prompt
        # prompt embeddings once (kept on the CPU: 4 MB per prompt for the real model); then the encoder leaves
        self.prompt_cache = wan.PromptCache(
            self.pipe, self.generation.max_sequence_length, self.generation.negative_prompt, device="cpu"
        )
        self.prompt_cache.precompute(
            [p for _, p in self.my_prompts] + self.eval_prompts + [self.generation.negative_prompt],
            progress=self.accelerator.is_main_process,
        )
        self.pipe.text_encoder.to("cpu")
        self.transformer = self.pipe.transformer
        torch.manual_seed(run.seed)  # the LoRA A matrices: the same in every run and on every process
        targets = wan.WAN_ATTENTION_TARGETS if adapter.lora_targets == "attention" else wan.WAN_ALL_LINEAR_TARGETS
        self.lora_parameters = wan.add_lora(
            self.transformer, rank=adapter.lora_rank, alpha=adapter.lora_alpha, target_modules=targets
        )
        self.lora_names = [name for name, p in self.transformer.named_parameters() if p.requires_grad]
        if adapter.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(self.lora_parameters, lr=adapter.learning_rate, weight_decay=adapter.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(self.transformer, optimizer)
        self.prepare()

    def check(self) -> None:
        """Checks of the flags before anything is loaded or written (raise RecipeError naming the flag)."""
        self.generation.check()
        check_reward_flags(self.run)
        self.prompts = read_prompts(self.run.prompts)
        if self.evaluation.eval_prompts < 1 or self.evaluation.eval_videos_per_prompt < 1:
            raise RecipeError("--eval-prompts and --eval-videos-per-prompt must be >= 1")

    def prepare(self) -> None:
        """The method's own set-up, after the shared one."""

    def train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation
    def evaluated_weights(self):
        """The weights that are evaluated and published: the EMA's when the method keeps one."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Fresh videos of the evaluation prompts from fixed noise (the same at every evaluation), scored by every
        reward and check; writes samples/step-N/ (mp4 + scores.jsonl); returns eval/<name>, eval/<name>_std (the
        sample std), eval/num_items."""
        from accelerate.utils import gather_object

        from descore_plugin.data.video import write_video

        self.transformer.eval()
        folder = self.loop.output_dir / "samples" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = self.eval_batch_size
        with (
            self.evaluated_weights(),
            self.accelerator.split_between_processes(list(enumerate(self.eval_prompts))) as jobs,
        ):
            lines = []
            for start in range(0, len(jobs), size):
                chunk = jobs[start : start + size]
                noise = torch.cat(
                    [
                        wan.initial_noise(
                            self.pipe,
                            1,
                            self.generation,
                            generator=torch.Generator().manual_seed(seed_of(self.run.seed, "eval_noise", index)),
                        )
                        for index, _ in chunk
                    ]
                )
                prompts = [prompt for _, prompt in chunk]
                videos, _ = wan.generate(
                    self.pipe,
                    self.prompt_cache,
                    prompts,
                    self.generation,
                    transformer=self.transformer,
                    latents=noise.to(self.device),
                    solver=self.evaluation.solver,
                )
                scores, cots = self.eval_rewards(videos, prompts), self.eval_rewards.last_cots()
                for row, (index, prompt) in enumerate(chunk):
                    write_video(folder / f"{index:03d}.mp4", videos[row], fps=16)
                    lines.append(
                        {
                            "index": index,
                            "prompt": prompt,
                            "video": f"{index:03d}.mp4",
                            "scores": {name: _number(value[row]) for name, value in scores.items()},
                            **({"cot": cots[row]} if cots is not None else {}),
                        }
                    )
        lines = sorted((line for part in gather_object([lines]) for line in part), key=lambda line: line["index"])
        metrics = {"eval/num_items": float(len(lines))}
        for name in self.eval_rewards.names:
            values = np.array([math.nan if line["scores"][name] is None else line["scores"][name] for line in lines])
            count = int(np.isfinite(values).sum())
            metrics[f"eval/{name}"] = float(np.nanmean(values)) if count else math.nan
            # the sample std (ddof 1): eval/<name>_std / sqrt(eval/num_items) is the standard error of the mean
            metrics[f"eval/{name}_std"] = float(np.nanstd(values, ddof=1)) if count > 1 else math.nan
        cots = [line["cot"] for line in lines if line.get("cot") is not None]
        if cots:  # the share of the judge's CoTs that parse (a broken CoT's head score means little)
            metrics["eval/cot_parse_rate"] = float(np.mean([parse_answer(cot).error is None for cot in cots]))
        if self.accelerator.is_main_process:
            (folder / "scores.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        self.transformer.train()
        return metrics

    def reward_metrics(self, scores: dict[str, torch.Tensor]) -> dict[str, float]:
        """reward/<name>: this process's mean of the training samples' rewards (the loop averages the processes)."""
        return {
            f"reward/{name}": float(torch.nanmean(value.float()))
            for name, value in scores.items()
            if name in self.rewards.weights
        }

    # ------------------------------------------------------------------ state and publish
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        state = {
            LORA_STATE: {k: v.contiguous() for k, v in wan.lora_state_dict(self.transformer).items()},
            "optimizer": self.optimizer.state_dict(),
        }
        if self.ema is not None:
            state["lora_ema"] = self.ema.state_dict()
        return {**state, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        wan.load_lora_state_dict(self.transformer, state[LORA_STATE])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["lora_ema"])
        self.load_extra_state(state)

    def save_pretrained(self, directory) -> None:
        """The final LoRA in the diffusers format (the EMA's weights when the method keeps one)."""
        with self.evaluated_weights():
            wan.save_lora_weights(self.transformer, directory)


def _number(value):
    value = None if value is None else float(value)
    return None if value is None or math.isnan(value) else value
