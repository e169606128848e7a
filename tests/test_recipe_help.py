"""Every recipe's `--help` describes every flag: a meaning and its default (or that it is required)."""

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ALL = sorted(p.name for p in RECIPES.glob("*.py"))


def help_text(name: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [str(RECIPES / name), "--help"])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(RECIPES / name), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def flag_entries(text: str) -> dict[str, str]:
    """{flag: its whole help entry} from argparse's option listing."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^ {2}(-{1,2}[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line.strip()
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    entries.pop("-h", None)
    return entries


def test_flag_entries_reader():
    text = (
        "options:\n  -h, --help  show\n  --a A       the a (default: 1)\n  --long-flag LONG_FLAG\n"
        "              what it is\n              (default: None)\n  --bare\n\nafter\n"
    )
    assert flag_entries(text) == {
        "--a": "--a A       the a (default: 1)",
        "--long-flag": "--long-flag LONG_FLAG what it is (default: None)",
        "--bare": "--bare",
    }


@pytest.mark.parametrize("name", ALL)
def test_every_flag_has_a_meaning_and_a_default(name, monkeypatch, capsys):
    entries = flag_entries(help_text(name, monkeypatch, capsys))
    assert entries, f"{name} --help lists no flags"
    missing = []
    for flag, entry in entries.items():
        words = entry.split()
        n = 1  # the flag, then its metavar(s) / choices, then the meaning
        while n < len(words) and (
            words[n - 1].endswith(",") or re.fullmatch(r"[A-Z_\[\]{}.,0-9-]+|\{.*|\[.*|.*[]}]", words[n])
        ):
            n += 1
        meaning = " ".join(words[n:])
        if len(re.sub(r"\((default|required)[^)]*\)", "", meaning).strip()) < 5:
            missing.append(f"{flag}: no meaning")
        if not re.search(r"default|required", entry, re.IGNORECASE):
            missing.append(f"{flag}: no default")
    assert not missing, f"{name} --help: " + "; ".join(missing)


def test_wan_flow_grpo_help_shows_the_defaults_a_run_gets(monkeypatch, capsys, tmp_path):
    """The GRPO recipe's LoRA and generation defaults depend on --algorithm and --pipeline: --help shows flow_grpo's
    (the default algorithm's) values, says how longcat differs, and marks required flags as such."""
    import argparse

    entries = flag_entries(help_text("wan_flow_grpo.py", monkeypatch, capsys))
    assert entries["--num_frames"].endswith("(default: 33)") and entries["--num_inference_steps"].endswith(
        "(default: 20)"
    )
    assert "longcat: 16" in entries["--num_inference_steps"] and "tiny pipeline" in entries["--num_frames"]
    assert "longcat: 128" in entries["--lora_rank"] and entries["--lora_rank"].endswith("(default: 32)")
    assert all(entries[f].endswith("(required)") for f in ("--pipeline", "--prompts", "--output_dir", "--max_steps"))
    recipe = runpy.run_path(str(RECIPES / "wan_flow_grpo.py"), run_name="recipe")
    real_pipeline = argparse.Namespace(algorithm="flow_grpo", pipeline=str(tmp_path))  # no generation_defaults.json
    effective = recipe["later_defaults"](real_pipeline)
    shown = recipe["RECIPE_DEFAULTS"]
    assert {key: effective[key] for key in shown if key in effective} == {
        key: shown[key] for key in shown if key in effective
    }
    assert {"num_frames", "height", "width", "num_inference_steps", "guidance_scale", "lora_rank"} <= set(shown)
