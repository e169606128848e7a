"""Train the tiny Wan-2.1 that draws the synthetic world, imperfectly (recipes/world_wan/, `make world-wan`).

    python recipes/train_world_wan.py                                  # both phases, writes recipes/world_wan/
    python recipes/train_world_wan.py --phase vae                      # the VAE only (into --work-dir)
    python recipes/train_world_wan.py --phase transformer --resume     # the generator, continuing a killed run

Phase `vae`: a shallow real AutoencoderKLWan (one 2x spatial level and no temporal compression instead of Wan-2.1's
8x space and 4x time; 16 latent channels) learns to reconstruct rendered world clips (every scene, every defect); the weights of the best validation PSNR are
kept and its latent mean / std (what WanPipeline normalises with) measured on the training clips.
Phase `transformer`: a WanTransformer3DModel and a UMT5 encoder learn prompt -> clip jointly with flow matching on
latents encoded once by that VAE, from pre-training clips whose captions are web-like noisy (--wrong-colour,
--reverse, ...: a share of clips whose colour, shape, motion or background departs from the caption, flicker,
grain and shake), so that the generator follows prompts only part of the time, with classifier-free guidance
learnt through caption dropout. Its fidelity (the asked colour / direction / shape / background, read from the
pixels of samples of held-out scenes never captioned in pre-training) is measured during training and at the end.

The result is a diffusers folder that plain `diffusers.WanPipeline.from_pretrained(DIR)` loads, with
`generation_defaults.json` (frames, size, steps, guidance it was trained for), `training.json` (settings and
measurements) and a README.md model card. Runs are resumable (`--resume`): each phase saves its state atomically in
--work-dir every evaluation, and batch i depends only on (--seed, i), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from descore_plugin.evaluation import world_truth
from descore_plugin.testing import world_vae as wv
from descore_plugin.testing import world_wan as ww
from descore_plugin.testing.synthetic import render_clips
from descore_plugin.testing.tiny_wan import GENERATION_DEFAULTS_FILE
from descore_plugin.utils.args import help_field, parse_config
from descore_plugin.utils.files import atomic_directory, atomic_write_text

SHIPPED = Path(__file__).resolve().parent / "world_wan"


@dataclass
class RecipeArguments:
    output_dir: str = help_field("where the diffusers folder is written (replaced atomically)", str(SHIPPED))
    work_dir: str = help_field(
        "training states, the VAE between phases and the cached latents", "outputs/world_wan_work"
    )
    phase: str = help_field(
        "vae, transformer (needs the VAE in --work-dir), all, or measure (measure the folder in "
        "--output-dir again at --guidance-scale / --num-inference-steps and record them there: "
        "the guidance tunes its fidelity without retraining)",
        "all",
        choices=["vae", "transformer", "all", "measure"],
    )
    resume: bool = help_field("continue each phase from its last state in --work-dir", False)
    seed: int = help_field("seed of the data, the initial weights and every batch", 0)
    num_inference_steps: int = help_field("sampler steps recorded in generation_defaults.json and used to measure", 10)
    guidance_scale: float = help_field("CFG scale recorded in generation_defaults.json and used to measure", 3.0)
    final_eval_samples: int = help_field(
        "held-out samples of the final fidelity measurement (128: a standard error of at most 0.044)", 128
    )
    progress: bool = help_field("tqdm progress bars", True)


def parse_args(argv=None):
    return parse_config(
        [
            RecipeArguments,
            wv.VaeConfig,
            wv.VaeTrainConfig,
            ww.GeneratorConfig,
            ww.GeneratorTrainConfig,
            ww.CaptionNoise,
        ],
        argv,
        prog="train_world_wan.py",
        description=__doc__,
    )


def vae_phase(args: RecipeArguments, vae_config: wv.VaeConfig, train: wv.VaeTrainConfig) -> dict:
    work = Path(args.work_dir)
    began = time.time()
    train_clips = wv.sample_vae_clips(train.train_clips, seed=args.seed * 10 + 1)
    validation_clips = wv.sample_vae_clips(train.validation_clips, seed=args.seed * 10 + 2)
    train_frames, validation_frames = render_clips(train_clips, ww.WORLD), render_clips(validation_clips, ww.WORLD)
    vae = wv.build_vae(vae_config, seed=args.seed)
    history = wv.train_vae(
        vae,
        train_frames,
        validation_frames,
        train,
        work / "vae_state",
        seed=args.seed,
        resume=args.resume,
        progress=args.progress,
    )
    reconstruction = wv.reconstruct(vae, validation_frames)
    kept = world_truth.recovery(validation_clips, reconstruction, ww.WORLD)  # the measure vbench_mini reads with
    mean, std = wv.set_latent_statistics(vae, wv.encode_clips(vae, train_frames[:256]))
    with atomic_directory(work / "vae") as tmp:
        vae.save_pretrained(tmp)
    report = {
        "history": history,
        "validation_psnr": round(wv.psnr(validation_frames, reconstruction), 3),
        "recovery": kept,
        "recovery_clips": len(validation_clips),
        "seconds": round(time.time() - began, 1),
        "parameters": sum(p.numel() for p in vae.parameters()),
    }
    atomic_write_text(work / "vae_report.json", json.dumps(report, indent=2) + "\n")
    print(
        f"VAE: validation PSNR {report['validation_psnr']:.2f} dB, every attribute kept in {kept['every']:.2f} of the clips {kept}"
    )
    return report


def pretraining_data(args: RecipeArguments, vae, train: ww.GeneratorTrainConfig, noise: ww.CaptionNoise):
    """Noisy-caption clips of the training scenes, encoded ONCE by the VAE (cached in --work-dir)."""
    cache = Path(args.work_dir) / "latents.pt"
    scenes = ww.training_scenes()
    rng = np.random.default_rng([args.seed, 7])
    captions = [scenes[int(i)] for i in rng.integers(len(scenes), size=train.gen_clips)]
    examples = ww.sample_noisy_clips(captions, noise, seed=args.seed)
    prompts = [example.prompt for example in examples]
    key = {
        "clips": train.gen_clips,
        "seed": args.seed,
        "noise": asdict(noise),
        "vae": [list(vae.config.latents_mean), list(vae.config.latents_std)],
    }  # latents of THIS VAE only
    if cache.is_file():
        stored = torch.load(cache, weights_only=False)
        if stored["key"] == key:
            return stored["latents"], prompts
    frames = render_clips([example.clip for example in examples], ww.WORLD)  # uint8
    latents = wv.normalise_latents(vae, wv.encode_clips(vae, frames)).to(torch.float16)
    with atomic_directory(Path(args.work_dir) / "latents") as tmp:
        torch.save({"key": key, "latents": latents}, Path(tmp) / "latents.pt")
    (Path(args.work_dir) / "latents" / "latents.pt").replace(cache)
    return latents, prompts


def measure(pipe, args: RecipeArguments, count: int, seed: int) -> dict:
    held_out = ww.held_out_scenes()
    scenes = [held_out[i % len(held_out)] for i in range(count)]
    frames = ww.generate_clips(
        pipe, [scene.prompt for scene in scenes], args.num_inference_steps, args.guidance_scale, seed=seed
    )
    return ww.prompt_fidelity(frames, scenes)


def transformer_phase(
    args, generator_config: ww.GeneratorConfig, train: ww.GeneratorTrainConfig, noise: ww.CaptionNoise
) -> dict:
    from diffusers import AutoencoderKLWan

    work = Path(args.work_dir)
    if not (work / "vae" / "config.json").is_file():
        raise SystemExit(f"train_world_wan.py: error: no trained VAE in {work / 'vae'}; run --phase vae first")
    began = time.time()
    vae = AutoencoderKLWan.from_pretrained(work / "vae").eval()
    latents, prompts = pretraining_data(args, vae, train, noise)
    tokenizer = ww.world_tokenizer()
    pipe = ww.build_pipeline(
        tokenizer,
        ww.build_text_encoder(tokenizer, generator_config, seed=args.seed),
        vae,
        ww.build_transformer(generator_config, seed=args.seed),
        ww.build_scheduler(generator_config),
    )
    history = ww.train_generator(
        pipe,
        latents,
        prompts,
        train,
        generator_config,
        work / "generator_state",
        seed=args.seed,
        resume=args.resume,
        progress=args.progress,
        evaluate=lambda p: measure(p, args, train.gen_eval_samples, seed=1),
    )
    final = measure(pipe, args, args.final_eval_samples, seed=2)
    print(f"generator: held-out fidelity {final}")
    return {"pipe": pipe, "history": history, "held_out_fidelity": final, "seconds": round(time.time() - began, 1)}


def write_folder(args, pipe, configs: dict, vae_report: dict, generator_report: dict) -> Path:
    from descore_plugin.testing.world_wan import write_model_card

    generation = {
        "num_frames": ww.WORLD.num_frames,
        "height": ww.WORLD.height,
        "width": ww.WORLD.width,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "max_sequence_length": configs["generator"]["max_sequence_length"],
        "negative_prompt": "",
    }
    record = {
        "recipe": "recipes/train_world_wan.py",
        "world": asdict(ww.WORLD),
        "settings": configs,
        "vae": vae_report,
        "generator": {k: v for k, v in generator_report.items() if k != "pipe"},
    }
    with atomic_directory(args.output_dir) as tmp:
        pipe.save_pretrained(tmp)
        (Path(tmp) / GENERATION_DEFAULTS_FILE).write_text(json.dumps(generation, indent=2) + "\n")
        (Path(tmp) / "training.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        (Path(tmp) / "README.md").write_text(write_model_card(record, generation))
    return Path(args.output_dir)


def remeasure(args) -> Path:
    """Measure the written folder again at --guidance-scale / --num-inference-steps and record them in it."""
    from diffusers import WanPipeline

    from descore_plugin.testing.world_wan import write_model_card

    out = Path(args.output_dir)
    record = json.loads((out / "training.json").read_text())
    pipe = WanPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    fidelity = measure(pipe, args, args.final_eval_samples, seed=2)
    print(f"generator: held-out fidelity {fidelity} (guidance {args.guidance_scale}, {args.num_inference_steps} steps)")
    generation = json.loads((out / GENERATION_DEFAULTS_FILE).read_text())
    generation.update(num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale)
    record["generator"]["held_out_fidelity"] = fidelity
    record["settings"]["recipe"].update(
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        final_eval_samples=args.final_eval_samples,
    )
    record.setdefault("remeasured", []).append(
        {"guidance_scale": args.guidance_scale, "num_inference_steps": args.num_inference_steps, **fidelity}
    )
    atomic_write_text(out / GENERATION_DEFAULTS_FILE, json.dumps(generation, indent=2) + "\n")
    atomic_write_text(out / "training.json", json.dumps(record, indent=2, default=str) + "\n")
    atomic_write_text(out / "README.md", write_model_card(record, generation))
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args, vae_config, vae_train, generator_config, generator_train, noise = parse_args(argv)
    torch.manual_seed(args.seed)
    work = Path(args.work_dir)
    configs = {
        "recipe": asdict(args),
        "vae": asdict(vae_config),
        "vae_train": asdict(vae_train),
        "generator": asdict(generator_config),
        "generator_train": asdict(generator_train),
        "caption_noise": asdict(noise),
    }
    if args.phase in ("vae", "all"):
        vae_phase(args, vae_config, vae_train)
    if args.phase == "measure":
        out = remeasure(args)
        print(f"measured {out} again")
    if args.phase in ("transformer", "all"):
        vae_report = json.loads((work / "vae_report.json").read_text())
        generator_report = transformer_phase(args, generator_config, generator_train, noise)
        out = write_folder(args, generator_report["pipe"], configs, vae_report, generator_report)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
