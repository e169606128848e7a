r"""VBench evaluation of a Wan pipeline before and after post-training (the five dimensions the DeScore paper reports).

    python recipes/eval_vbench.py --pipeline DIR_OR_ID --lora OUT_DIR_OF_wan_flow_dpo --prompts vbench_prompts.txt \
        --output-dir eval/ --vbench-python ~/vbench-env/bin/python

1. Generation (this environment): for the base model and for the model with the LoRA, `--videos-per-prompt` videos
   per prompt (VBench standard: 5) named `{prompt}-{i}.mp4` (VBench's naming) in OUTPUT/videos/{base,trained}/.
   Video i of a prompt starts from the same noise for both models (paired comparison). An existing --output-dir
   is refused unless --resume (its videos are kept and only the missing ones generated: an interrupted run, or a
   rerun once VBench is installed) or --overwrite (deleted, then everything generated again).
2. Scoring (VBench's own environment: vbench 0.1.5 pins transformers 4.33.2 and numpy < 2, which cannot live next
   to this package): `VBench(device, full_info, out).evaluate(videos, name, dimension_list, mode)` run by
   --vbench-python in a subprocess, for subject_consistency, background_consistency, aesthetic_quality,
   imaging_quality and dynamic_degree.
3. Table: OUTPUT/vbench_table.md and .json (base, trained, trained - base per dimension).
If vbench cannot be imported by --vbench-python, or its model weights are absent, the videos stay saved and the
script prints exactly what to install or download, then exits with status 3.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from descore_plugin.data.video import write_video
from descore_plugin.integrations import wan
from descore_plugin.integrations.post_training import parse_arguments, pipeline_generation_defaults
from descore_plugin.utils.args import help_field
from descore_plugin.utils.errors import UserError, prepare_output_dir, run_main
from descore_plugin.utils.seeding import seed_of

DIMENSIONS = ["subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality", "dynamic_degree"]
EXIT_VBENCH_MISSING = 3
OUTPUTS = {"videos", "vbench_results", "vbench_table.md", "vbench_table.json"}  # what --output-dir receives

# Files VBench 0.1.5 loads from VBENCH_CACHE_DIR (default ~/.cache/vbench) per dimension, with their sources.
VBENCH_WEIGHTS = {
    "subject_consistency": [
        (
            "dino_model/dino_vitbase16_pretrain.pth",
            "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        ),
        ("dino_model/facebookresearch_dino_main", "git clone https://github.com/facebookresearch/dino (a directory)"),
    ],
    "background_consistency": [
        (
            "clip_model/ViT-B-32.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        ),
    ],
    "aesthetic_quality": [
        (
            "clip_model/ViT-L-14.pt",
            "https://openaipublic.azureedge.net/clip/models/"
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        ),
        (
            "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
            "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
        ),
    ],
    "imaging_quality": [
        (
            "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
            "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth",
        ),
    ],
    "dynamic_degree": [
        (
            "raft_model/models/raft-things.pth",
            "unzip of https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip into raft_model/",
        ),
    ],
}

# Run by --vbench-python: argv[1] is a JSON object with the call's arguments.
VBENCH_DRIVER = """
import json, os, sys
import vbench
from vbench import VBench
job = json.loads(sys.argv[1])
full_info = job["full_info"] or os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
VBench(job["device"], full_info, job["output_dir"]).evaluate(
    videos_path=job["videos"], name=job["name"], dimension_list=job["dimensions"], mode=job["mode"])
"""


class VBenchInputError(UserError):
    """An input of the VBench evaluation (prompt file, prompt text, LoRA directory) that cannot be used."""


@dataclass
class VBenchArguments:
    """What to generate and how to score it (generation settings: wan.WanGenerationConfig's flags)."""

    pipeline: str = help_field(f"WanPipeline directory or hub id ({wan.WAN_1_3B_ID})", required=True)
    prompts: str = help_field("prompt file, one per line (e.g. VBench's all_dimension.txt)", required=True)
    output_dir: str = help_field(
        "videos/, vbench_results/ and vbench_table.{md,json} go here; an existing one needs --resume or --overwrite",
        required=True,
    )
    resume: bool = help_field(
        "continue an existing --output-dir: its videos are kept, only the missing ones are generated", False
    )
    overwrite: bool = help_field("delete an existing --output-dir (one this script wrote) and start again", False)
    lora: str | None = help_field(
        "directory with pytorch_lora_weights.safetensors (the --output-dir of wan_flow_dpo.py / wan_flow_grpo.py)"
    )
    videos_per_prompt: int = help_field("videos per prompt (VBench standard: 5)", 5)
    seed: int = help_field("video i of prompt p starts from noise seeded by (seed, p, i)", 0)
    fps: float = help_field("frame rate written in the mp4 (Wan-2.1: 16)", 16.0)
    batch_size: int = help_field("videos per sampling batch", 4)
    device: str | None = help_field("generation device (unset: cuda when available)")
    dtype: str | None = help_field(
        "transformer dtype (unset: bfloat16 on CUDA, float32 elsewhere)", choices=["float32", "bfloat16"]
    )
    vbench_python: str = help_field(
        "python of the environment where vbench is installed ($VBENCH_PYTHON, else this interpreter)",
        os.environ.get("VBENCH_PYTHON", sys.executable),
    )
    vbench_device: str | None = help_field("device VBench scores on (unset: cuda if available)")
    vbench_mode: str = help_field(
        "custom_input works for any prompt file (the five dimensions ignore prompts); vbench_standard needs the VBench "
        "prompt suite",
        "custom_input",
        choices=["custom_input", "vbench_standard"],
    )
    full_info_json: str | None = help_field("VBench_full_info.json (unset: vbench's own)")
    dimensions: list[str] = help_field(
        "VBench dimensions to score", default_factory=lambda: list(DIMENSIONS), choices=DIMENSIONS
    )
    vbench_download: bool = help_field(
        "let VBench download missing weights itself (needs internet on the scoring machine)", False
    )


def parse_args(argv=None) -> tuple[VBenchArguments, wan.WanGenerationConfig]:
    return parse_arguments(
        (VBenchArguments, wan.WanGenerationConfig),
        argv,
        __doc__,
        {},
        lambda known: pipeline_generation_defaults(known.pipeline),
    )


def read_prompts(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise VBenchInputError(f"{path}: prompt file not found")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    for number, prompt in enumerate(prompts, start=1):
        if not prompt:
            raise VBenchInputError(f"{path}, line {number}: empty prompt")
        if "/" in prompt or len(f"{prompt}-0.mp4".encode()) > 255:
            raise VBenchInputError(
                f"{path}, line {number}: VBench names videos '{{prompt}}-{{i}}.mp4', so a prompt cannot contain '/' "
                f"or exceed 247 bytes"
            )
    if not prompts:
        raise VBenchInputError(f"{path}: no prompts")
    return prompts


def video_seed(seed: int, prompt_index: int, video_index: int) -> int:
    """The initial noise of a prompt's video: the same for the base and the trained model (a paired comparison)."""
    return seed_of(seed, "eval_noise", prompt_index, video_index)


def generate_videos(
    args, generation: wan.WanGenerationConfig, prompts: list[str], lora: str | None, videos_dir: Path
) -> int:
    """Write `{prompt}-{i}.mp4` for every prompt and i; returns the number of videos generated now."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    generation.check()
    jobs = [
        (p, i)
        for p, prompt in enumerate(prompts)
        for i in range(args.videos_per_prompt)
        if not (videos_dir / f"{prompt}-{i}.mp4").is_file()
    ]
    if not jobs:
        return 0
    pipe = wan.load_wan_pipeline(args.pipeline, device=device, dtype=dtype)
    if lora is not None:
        if not (Path(lora) / "pytorch_lora_weights.safetensors").is_file():
            raise VBenchInputError(f"{lora}: no pytorch_lora_weights.safetensors (pass a recipe's --output-dir)")
        pipe.load_lora_weights(lora)
    cache = wan.PromptCache(pipe, generation.max_sequence_length, generation.negative_prompt)
    for start in tqdm(range(0, len(jobs), args.batch_size), desc=f"videos -> {videos_dir}"):
        chunk = jobs[start : start + args.batch_size]
        noise = torch.cat(
            [
                wan.initial_noise(
                    pipe, 1, generation, generator=torch.Generator().manual_seed(video_seed(args.seed, p, i))
                )
                for p, i in chunk
            ]
        )
        videos, _ = wan.generate(
            pipe, cache, [prompts[p] for p, _ in chunk], generation, latents=noise.to(device), solver="scheduler"
        )
        for (p, i), video in zip(chunk, videos.cpu()):
            write_video(videos_dir / f"{prompts[p]}-{i}.mp4", video, fps=args.fps)
    return len(jobs)


def vbench_problem(python: str) -> str | None:
    """None when `python -c 'import vbench'` works, else the reason."""
    try:
        result = subprocess.run([python, "-c", "import vbench"], capture_output=True, text=True, timeout=300)
    except (FileNotFoundError, PermissionError) as error:
        return f"{python}: cannot run ({error})"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return f"{python} -c 'import vbench' failed: {lines[-1] if lines else 'exit ' + str(result.returncode)}"
    return None


def install_message(problem: str, videos: list[Path]) -> str:
    where = ", ".join(str(v) for v in videos)
    return f"""VBench is not available: {problem}.
The generated videos are saved in {where}.
VBench pins transformers 4.33.2 and numpy < 2, so install it in its own environment:
    python3.10 -m venv ~/vbench-env
    ~/vbench-env/bin/pip install torch torchvision      # the build matching your CUDA driver
    ~/vbench-env/bin/pip install vbench==0.1.5 "transformers==4.33.2" "numpy<2" decord
then rerun this command with --resume --vbench-python ~/vbench-env/bin/python (or export VBENCH_PYTHON); the
videos that exist are not generated again."""


def missing_weights(dimensions: list[str]) -> list[tuple[Path, str]]:
    cache_dir = Path(os.environ.get("VBENCH_CACHE_DIR", Path.home() / ".cache" / "vbench"))
    return [
        (cache_dir / relative, source)
        for dimension in dimensions
        for relative, source in VBENCH_WEIGHTS[dimension]
        if not (cache_dir / relative).exists()
    ]


def weights_message(missing: list[tuple[Path, str]], videos: list[Path]) -> str:
    lines = "\n".join(f"    {path}\n        from {source}" for path, source in missing)
    return f"""VBench model weights are missing (VBench 0.1.5 reads them from $VBENCH_CACHE_DIR, default ~/.cache/vbench):
{lines}
Download them to those paths (offline machines) and rerun with --resume, or rerun with --resume --vbench-download
to let VBench fetch them itself (needs internet).
The generated videos are saved in {", ".join(str(v) for v in videos)}."""


def run_vbench(args, videos_dir: Path, name: str, results_dir: Path) -> dict[str, float]:
    device = args.vbench_device or ("cuda" if torch.cuda.is_available() else "cpu")
    job = {
        "device": device,
        "full_info": args.full_info_json,
        "output_dir": str(results_dir),
        "videos": str(videos_dir),
        "name": name,
        "dimensions": args.dimensions,
        "mode": args.vbench_mode,
    }
    subprocess.run([args.vbench_python, "-c", VBENCH_DRIVER, json.dumps(job)], check=True)
    results_file = results_dir / f"{name}_eval_results.json"
    raw = json.loads(results_file.read_text())
    scores = {}
    for dimension in args.dimensions:
        if dimension not in raw:
            raise VBenchInputError(f"{results_file}: no result for {dimension}")
        value = raw[dimension]
        scores[dimension] = float(value[0] if isinstance(value, list) else value)  # [mean, per-video results]
    return scores


def write_table(output_dir: Path, scores: dict[str, dict[str, float]]) -> str:
    models = list(scores)
    header = "| dimension | " + " | ".join(models) + (" | trained - base |" if "trained" in scores else " |")
    rule = "|---" * (len(models) + 1 + ("trained" in scores)) + "|"
    rows = []
    for dimension in next(iter(scores.values())):
        cells = [f"{scores[m][dimension]:.4f}" for m in models]
        if "trained" in scores:
            cells.append(f"{scores['trained'][dimension] - scores['base'][dimension]:+.4f}")
        rows.append(f"| {dimension} | " + " | ".join(cells) + " |")
    table = "\n".join([header, rule, *rows]) + "\n"
    (output_dir / "vbench_table.md").write_text(table)
    (output_dir / "vbench_table.json").write_text(json.dumps(scores, indent=2) + "\n")
    return table


def main(argv=None) -> int:
    args, generation = parse_args(argv)
    prompts = read_prompts(args.prompts)
    output_dir = Path(args.output_dir)
    # What this script writes there: anything else means the folder is the user's, which --overwrite must not delete.
    prepare_output_dir(
        output_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        what=f"--output-dir {output_dir}",
        ours=lambda path: {p.name for p in path.iterdir()} <= OUTPUTS,
    )
    models = {"base": None} | ({"trained": args.lora} if args.lora else {})
    videos = {name: output_dir / "videos" / name for name in models}
    for name, lora in models.items():
        made = generate_videos(args, generation, prompts, lora, videos[name])
        print(f"{name}: {made} videos generated, {len(prompts) * args.videos_per_prompt} in {videos[name]}")

    problem = vbench_problem(args.vbench_python)
    if problem is not None:
        print(install_message(problem, list(videos.values())), file=sys.stderr)
        return EXIT_VBENCH_MISSING
    missing = [] if args.vbench_download else missing_weights(args.dimensions)
    if missing:
        print(weights_message(missing, list(videos.values())), file=sys.stderr)
        return EXIT_VBENCH_MISSING
    scores = {name: run_vbench(args, videos[name], name, output_dir / "vbench_results" / name) for name in models}
    print(write_table(output_dir, scores))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "eval_vbench.py"))
