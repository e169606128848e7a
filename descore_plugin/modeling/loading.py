"""DeScore checkpoints: loading our directory format, the official release layout and plain Qwen-VL backbones, and
writing ours (`save_model`, what `DeScoreReward.save_pretrained` runs).

    load_pretrained(cls, path_or_id, ...)   what `DeScoreReward.from_pretrained` runs: tells the three apart
    new_from_backbone(cls, path_or_id, ...) `DeScoreReward.from_backbone`: a new model on a plain Qwen-VL checkpoint
    load_ours / load_official               the two checkpoint layouts

The scoring path itself (`DeScoreReward` in model.py) does not depend on where the weights came from. Two library
messages that every load used to print are silenced here, because they describe what is intended:
- transformers' "The new embeddings will be initialized from a multivariate normal distribution ..." when the
  embeddings grow by the `<Reward>` row: the official cold start adds the token that way (mean resizing), and a
  checkpoint then overwrites the row with its trained value;
- the FutureWarning "`is_gradient_checkpointing` is deprecated" that peft triggers on every adapter load (it reads
  the deprecated property of transformers 5), even for inference.
"""

import contextlib
import copy
import json
import logging
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from descore_plugin.modeling.config import DeScoreConfig
from descore_plugin.utils.files import atomic_directory

SUPPORTED_BACKBONES = ("qwen2_5_vl", "qwen3_vl")
CONFIG_NAME = "descore_config.json"
HEAD_NAME = "reward_head.safetensors"
ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def quiet_embedding_resize():
    """Inside: transformers' note on initialising new embedding rows from a multivariate normal is not printed (see
    the module docstring: it is the intended, official initialisation of the `<Reward>` row)."""
    drop = _DropMessage("initialized from a multivariate normal")
    loggers = [logging.getLogger("transformers.modeling_utils")]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@contextlib.contextmanager
def quiet_peft():
    """Inside: peft's read of transformers' deprecated `is_gradient_checkpointing` warns no more (module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_pretrained(cls, path_or_id, device=None, dtype=None, overrides: dict | None = None):
    """Load a DeScore model from a directory or hub id: our format (`descore_config.json`) or the official
    release layout (LoRA adapter folder + `rm_head.pth`). `overrides` replace DeScoreConfig fields
    (e.g. `num_frames=8`, `max_pixels=...`, `backbone=` to point an official adapter at a local base model)."""
    directory = _resolve(path_or_id)
    dtype = _parse_dtype(dtype)
    if (directory / CONFIG_NAME).is_file():
        model = load_ours(cls, directory, dtype, overrides)
    elif (directory / "rm_head.pth").is_file():
        model = load_official(cls, directory, dtype, overrides)
    elif _backbone_type(directory) in SUPPORTED_BACKBONES:
        model = new_from_backbone(cls, directory, dtype=dtype, name=str(path_or_id), overrides=overrides)
    else:
        found = _backbone_type(directory)
        raise FileNotFoundError(
            f"{directory}: not a DeScore checkpoint (no {CONFIG_NAME}, no rm_head.pth of the official release) "
            + (
                f"and its config.json describes a {found!r} model, not one of {', '.join(SUPPORTED_BACKBONES)}"
                if found
                else "and not a Qwen2.5-VL / Qwen3-VL checkpoint (no config.json)"
            )
        )
    model.eval()
    return model.to(device) if device is not None else model


def new_from_backbone(cls, path_or_id, dtype=None, name: str | None = None, overrides: dict | None = None):
    """A new DeScore model on a plain Qwen2.5-VL / Qwen3-VL checkpoint (hub id or a folder written by transformers'
    `save_pretrained`: config, weights, tokenizer, processor), as the official cold start builds it: `<Reward>` is
    added to the tokenizer as a special token, the embeddings are resized to the tokenizer (`mean_resizing`, so a
    new row starts at the mean of the others; Qwen's padded vocabularies already have a row for it, which is kept
    as it is), and the head is drawn from N(0, initializer_range) as transformers initialises a weight missing
    from a checkpoint. `save_pretrained` then writes a DeScore checkpoint that refers to the backbone by `name`."""
    directory = _resolve(path_or_id)
    local = Path(str(path_or_id)).exists()
    name = str(Path(path_or_id).resolve()) if local and name is None else str(name or path_or_id)
    if local and not Path(name).is_absolute():
        name = str(Path(name).resolve())
    config = DeScoreConfig.from_dict({"backbone": name}, source=str(directory), overrides=overrides)
    processor = _load_processor(directory)
    if config.reward_token not in processor.tokenizer.get_vocab():
        processor.tokenizer.add_special_tokens(
            {"additional_special_tokens": [config.reward_token]}, replace_extra_special_tokens=False
        )
    backbone = _load_backbone(directory, _parse_dtype(dtype))
    model = cls(config, backbone, processor, checkpoint_dir=directory)
    std = backbone.config.get_text_config().initializer_range
    with torch.no_grad():
        model.head.weight.normal_(mean=0.0, std=std)
    return model


def load_ours(cls, directory: Path, dtype, overrides: dict):
    """Our format: descore_config.json, reward_head.safetensors, the processor, and the backbone (a `backbone/`
    folder, or the base it names) with the peft adapter in `adapter/` when there is one."""
    values = json.loads((directory / CONFIG_NAME).read_text())
    config = DeScoreConfig.from_dict(values, source=str(directory / CONFIG_NAME), overrides=overrides)
    processor = _load_processor(directory)
    backbone = _load_backbone(_relative(directory, config.backbone), dtype)
    model = cls(config, backbone, processor, checkpoint_dir=directory)
    head_file = directory / HEAD_NAME
    if not head_file.is_file():
        raise FileNotFoundError(f"{directory}: no {HEAD_NAME}; a DeScore checkpoint needs the head weights")
    tensors = load_file(head_file)
    for key in ("head.weight", "reward_token_embedding"):
        if key not in tensors:
            raise KeyError(f"{head_file}: missing tensor {key!r}")
    model._set_reward_row(tensors["reward_token_embedding"])
    model._load_head(tensors["head.weight"], head_file)
    if (directory / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        with quiet_peft():
            model.backbone = PeftModel.from_pretrained(model.backbone, directory / ADAPTER_DIR)
    return model


def load_official(cls, directory: Path, dtype, overrides: dict):
    """Official DeScore release: a peft LoRA adapter folder + `rm_head.pth` (key `rm_head.weight` or
    `base_model.model.rm_head.weight`), special token `<Reward>`. Read with weights_only=True (no unpickling of
    arbitrary objects). Scored in the official inference layout (layout="user")."""
    adapter_dir = (
        directory
        if (directory / "adapter_config.json").is_file()
        else next((p.parent for p in sorted(directory.glob("*/adapter_config.json"))), None)
    )
    if adapter_dir is None and "backbone" not in overrides:
        raise FileNotFoundError(
            f"{directory}: has rm_head.pth but no LoRA adapter (adapter_config.json) and no backbone= override"
        )
    base = overrides.pop("backbone", None)
    if base is None:
        base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    if "prompt_template" not in overrides:
        warnings.warn(
            f"{directory}: an official DeScore checkpoint, scored here with the package's own judge instruction; "
            "it was trained with the official one: pass prompt_template= (a file holding the instruction "
            "of the official inference script, see docs/scoring.md)",
            stacklevel=3,
        )
    official = {"backbone": base, "reward_token": "<Reward>", "layout": "user"}
    config = DeScoreConfig.from_dict(official, source=str(directory), overrides=overrides)
    has_tokenizer = any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    processor = _load_processor(directory if has_tokenizer else _relative(directory, base))
    if config.reward_token not in processor.tokenizer.get_vocab():
        processor.tokenizer.add_special_tokens({"additional_special_tokens": [config.reward_token]})
    backbone = _load_backbone(_relative(directory, base), dtype)
    model = cls(config, backbone, processor, checkpoint_dir=directory)
    factor = processor.video_processor.patch_size * processor.video_processor.merge_size
    if "cot_min_pixels" not in overrides and "cot_max_pixels" not in overrides:
        # The official inference generates the CoT from qwen-vl-utils' default video budget.
        config.cot_min_pixels, config.cot_max_pixels = 128 * factor * factor, 768 * factor * factor
    state = torch.load(directory / "rm_head.pth", map_location="cpu", weights_only=True)
    key = next((k for k in ("rm_head.weight", "base_model.model.rm_head.weight") if k in state), None)
    if key is None:
        raise KeyError(
            f"{directory / 'rm_head.pth'}: expected key 'rm_head.weight' or 'base_model.model.rm_head.weight', found {sorted(state)}"
        )
    model._load_head(state[key], directory / "rm_head.pth")
    if adapter_dir is not None:
        from peft import PeftModel

        with quiet_peft():
            model.backbone = PeftModel.from_pretrained(model.backbone, adapter_dir)
    return model


def save_model(model, save_directory, save_backbone: bool | None = None, state_dict: dict | None = None):
    """What `DeScoreReward.save_pretrained` runs (see its docstring)."""
    config = copy.deepcopy(model.config)
    config.prompt_template = model.template
    if save_backbone is None:
        save_backbone = (
            config.lora_rank == 0
            and any(p.requires_grad for p in model.vlm.parameters())
            or config.backbone == BACKBONE_DIR
        )
    with atomic_directory(save_directory) as tmp:
        if state_dict is None:
            head, row = model.head.weight, model.reward_token_embedding()
        else:
            head, row = state_dict["head.weight"], _reward_token_embedding_from(model, state_dict)
        tensors = {
            "head.weight": head.detach().float().cpu().contiguous(),
            "reward_token_embedding": row.float().cpu().contiguous(),
        }
        save_file(tensors, tmp / HEAD_NAME, metadata={"format": "pt", "reward_token": config.reward_token})
        if hasattr(model.backbone, "peft_config"):
            backbone_state = None if state_dict is None else _substate(model, state_dict, model.backbone)
            model.backbone.save_pretrained(tmp / ADAPTER_DIR, state_dict=backbone_state)
        if save_backbone:
            vlm_state = None if state_dict is None else _substate(model, state_dict, model.vlm)
            model.vlm.save_pretrained(tmp / BACKBONE_DIR, state_dict=_backbone_state_dict(model, vlm_state))
            config.backbone = BACKBONE_DIR
        model.processor.save_pretrained(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2))


def _reward_token_embedding_from(model, state_dict: dict) -> torch.Tensor:
    """`reward_token_embedding()` computed from a full state dict instead of the module's own tensors."""
    embeddings = model.backbone.get_input_embeddings()
    ids = torch.tensor([model.reward_token_id])
    weights = _substate(model, state_dict, embeddings)
    return torch.func.functional_call(embeddings, weights, (ids,), strict=False).detach()


def _backbone_state_dict(model, vlm_state: dict | None = None) -> dict:
    """The backbone's own weights (from `vlm_state` when given), without peft's adapter tensors and wrapper
    prefixes."""
    state = {}
    for key, value in (model.vlm.state_dict() if vlm_state is None else vlm_state).items():
        if "lora_" in key or "trainable_tokens_" in key:
            continue
        state[key.replace(".token_adapter.base_layer", "").replace(".base_layer", "")] = value
    return state


def _substate(root: nn.Module, state_dict: dict, module: nn.Module) -> dict:
    """The entries of `root`'s state dict that belong to its submodule `module`, keyed relative to it."""
    prefix = next(name for name, sub in root.named_modules() if sub is module)
    prefix = f"{prefix}." if prefix else ""
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


# ---------------------------------------------------------------------- helpers
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _parse_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(_DTYPES)} or a torch.dtype")


def _backbone_type(directory: Path) -> str | None:
    """The `model_type` of a transformers checkpoint folder, None when it has no config.json."""
    config = directory / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        return None


def _resolve(path_or_id) -> Path:
    path = Path(path_or_id)
    if path.exists():
        return path
    if str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") != 1:
        raise FileNotFoundError(f"{path_or_id}: no such directory (and not a hub id of the form owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id)))
    except Exception as error:  # offline, missing repo, no access: say which
        raise FileNotFoundError(
            f"{path_or_id}: not a local directory, and downloading it from the hub failed: {error}"
        ) from None


def _relative(directory: Path, path: str) -> str:
    candidate = directory / path
    return str(candidate) if candidate.exists() else path


def _load_processor(path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def _load_backbone(path, dtype):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_BACKBONES:
        raise ValueError(
            f"backbone {path!r} is a {config.model_type!r} model; DeScore supports {', '.join(SUPPORTED_BACKBONES)}"
        )
    return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32)
