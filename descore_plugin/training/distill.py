"""Stage 3, distillation (Z-Reward's RISD, our reading): a no-CoT student learns the CoT-conditioned score
distribution of a teacher, averaged over sampled CoTs; a scalar head falls back to the teacher's expected reward."""

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from descore_plugin.data.loader import stream_videos
from descore_plugin.data.pairs import DataError
from descore_plugin.modeling.model import DeScoreReward
from descore_plugin.training.base import LABEL_SIGN, RewardModelTrainer, _mix, _to
from descore_plugin.training.losses import bradley_terry_loss, distillation_loss
from descore_plugin.utils.files import follow_umask

__all__ = ["DistillationTrainer"]


class DistillationTrainer(RewardModelTrainer):
    """`--stage 3`: the teacher's targets for every training video are computed once (and stored in output_dir)."""

    curve_names = ("train/loss", "train/distill_loss", "train/bt_loss", "train/grad_norm")

    def _before_first_step(self, creates_run: bool, resuming: bool):
        self.teacher_targets = self._teacher_targets()

    def loss(self, micro_step: int, batch: dict, rng: np.random.Generator) -> dict:
        return self.distill_loss(batch, rng)

    def distill_loss(self, batch: dict, rng: np.random.Generator) -> dict:
        """Stage 3: the student scores WITHOUT a CoT and matches the teacher's CoT-conditioned score distribution
        (KL(teacher || student), averaged over sampled CoTs); a scalar teacher or student falls back to a squared
        error on the teacher's expected reward."""
        config, model = self.config, self.accelerator.unwrap_model(self.model)
        pairs, videos = batch["pairs"], batch["videos"]
        paths = [p.video_a for p in pairs] + [p.video_b for p in pairs]
        keys = [(path, p.prompt, p.instruction or "") for path, p in zip(paths, pairs * 2)]  # A's then B's
        prompts, instructions = [p.prompt for p in pairs] * 2, [p.instruction for p in pairs] * 2
        batch = model.append_cots(model.encode_prompts(videos, prompts, instructions), [None] * len(videos))
        out = self.model(**_to(batch, self.accelerator.device))
        device = out["rewards"].device
        target = torch.stack([self.teacher_targets[key] for key in keys]).to(device)  # (2n, K) or (2n, 1)
        if "probs" in out and target.shape[-1] > 1:
            loss = distillation_loss(out["logits"], target)
        else:
            expected = target @ model.score_bins if target.shape[-1] > 1 else target[:, 0]
            loss = (out["rewards"] - expected).square().mean()
        logs = {"train/distill_loss": loss.item()}
        if config.distill_bt_weight > 0:
            n = len(pairs)
            signs = torch.tensor([LABEL_SIGN.get(p.label, 0) for p in pairs], device=device)
            decided = signs != 0
            if decided.any():
                r_a, r_b = out["rewards"][:n][decided], out["rewards"][n:][decided]
                s = signs[decided]
                bt = bradley_terry_loss(torch.where(s > 0, r_a, r_b), torch.where(s > 0, r_b, r_a))
                loss = loss + config.distill_bt_weight * bt
                logs["train/bt_loss"] = bt.item()
        logs["train/loss"] = loss.item()
        return {"loss": loss, "logs": logs}

    @torch.no_grad()
    def _teacher_targets(self) -> dict:
        """The teacher's score distribution for every (video, prompt, instruction) of the training pairs, averaged over
        `num_cot_samples` sampled CoTs. Computed once and stored in output_dir (a resumed run reuses the file)."""
        config = self.config
        keys = sorted({(v, p.prompt, p.instruction or "") for p in self.train_pairs for v in (p.video_a, p.video_b)})
        path = self.output_dir / "teacher_targets.safetensors"
        if path.is_file():
            stored = load_file(path)
            if stored["targets"].shape[0] == len(keys):
                return dict(zip(keys, stored["targets"]))
        teacher = DeScoreReward.from_pretrained(config.teacher, device=self.accelerator.device).eval()
        samples, targets = config.num_cot_samples, []
        chunks = stream_videos(
            [path for path, *_ in keys],
            fps=teacher.config.fps,
            num_frames=teacher.config.num_frames,
            chunk_size=8,
            num_workers=config.num_workers,
            prefetch_factor=config.prefetch_factor,
        )
        bar = tqdm(total=len(keys), desc="teacher CoTs", disable=not self.accelerator.is_main_process)
        for start, items in zip(range(0, len(keys), 8), chunks):
            chunk = keys[start : start + 8]
            failed = [item.error for item in items if item.error]
            if failed:
                raise DataError(f"{config.train_data}: {failed[0]}")
            videos = [item.video for item in items for _ in range(samples)]
            prompts = [key[1] for key in chunk for _ in range(samples)]
            instructions = [key[2] or None for key in chunk for _ in range(samples)]  # the official CSV's `problem`
            out = teacher.score(
                videos,
                prompts,
                instructions=instructions,
                think=True,
                batch_size=len(videos),
                do_sample=True,
                temperature=config.teacher_temperature,
                top_k=0,
                top_p=1.0,
                seed=_mix(config.seed, start),
                max_new_tokens=config.teacher_max_new_tokens,
            )
            per_sample = out.bin_probs if out.bin_probs is not None else out.rewards.unsqueeze(-1)  # (c*S, K)
            targets.append(per_sample.view(len(chunk), samples, -1).mean(1))
            bar.update(len(chunk))
        bar.close()
        targets = torch.cat(targets)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_file({"targets": targets.contiguous()}, path)
            follow_umask(path)  # safetensors writes private files
        return dict(zip(keys, targets))
