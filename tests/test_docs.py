"""The documentation's shell commands run as written, on the tiny models: the docs and the code cannot drift apart.

Every command of every ```bash block of README.md and of every docs/*.md page is either RUN here, in order, in one
scratch folder, or listed in NOT_RUNNABLE with the reason. The pages run in the order of pages() (README first, then
the docs pages in the order a reader meets them, then any other page by name), so that a later page finds what an
earlier one wrote: training -> distillation (its teacher) -> post-training, ... Only sizes change, through
SUBSTITUTIONS: model and pipeline names become the tiny ones, step counts and data sizes become small ones.
`python`, `descore` and `accelerate` are this environment's; `recipes/` is the repository's.
"""

import ast
import os
import re
import sys
import time
from pathlib import Path

import pytest
from helpers.run import offline_env, run_command

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The order in which the pages' commands run; a docs page missing here runs after these, by name.
ORDER = [
    "scoring",
    "training",
    "distillation",
    "post_train",
    "serving",
    "scale",
    "reports",
    "differences",
    "benchmarks",
]


def pages() -> list[Path]:
    docs = {page.stem: page for page in (ROOT / "docs").glob("*.md")}
    return [README] + [docs.pop(name) for name in ORDER if name in docs] + [docs[name] for name in sorted(docs)]


def all_commands() -> list[tuple[str, int, str]]:
    """(page, line, command) for every command of every page, in the order they run."""
    return [
        (page.relative_to(ROOT).as_posix(), line, command)
        for page in pages()
        for line, command in bash_commands(page.read_text())
    ]


# A command starting with one of these is not run here, for the reason given.
NOT_RUNNABLE = {
    "make demo": "builds a fresh .venv and installs the pinned packages (network); recipes/demo.py is what it runs",
    "make test": "the whole test suite, this file included",
    "descore serve": "a server that runs until stopped; tests/test_server.py starts it and calls every endpoint",
    "for i in": "one server per GPU on an 8-GPU node",
    "python -m openrlhf": "OpenRLHF's trainer, another project; `...` stands for its own flags",
    "python recipes/wan_flow_grpo.py --reward-model http://rm-node": "needs a running server on another node; `...` "
    "stands for the other flags",
    "accelerate launch --config_file recipes/accelerate/": "the 8-GPU DDP / FSDP configurations need 8 GPUs; "
    "their parsing is tested on CPU",
    "python recipes/vbench_mini.py": "a benchmark of minutes on the shipped world Wan; tests/test_vbench_mini.py runs "
    "it end to end on the tiny Wan",
    "python recipes/bench_": "benchmarks that measure for minutes; tests/test_recipe_help.py runs each one's --help, "
    "tests/test_flow_dpo.py one of bench_post_training's measurements",
}

TINY_MODEL = "tiny-model"  # written by the fixture with `descore init-tiny`: any DeScore checkpoint would do
# (pattern, replacement) applied in order to each command; every pattern must match some runnable command.
SUBSTITUTIONS = [
    (r"\bDIR_OR_ID\b", TINY_MODEL),
    (r"Wan-AI/Wan2\.1-T2V-1\.3B-Diffusers", "tiny-wan/"),
    (r"--num-pairs (2000|200|20)\b", "--num-pairs 4"),
    # stage 1 and stage 2: one step; stage 2 with short rollouts and small groups
    (r"(train_rm\.py --stage 1 .*)--max-steps 1000", r"\1--max-steps 1 --gradient-accumulation-steps 1"),
    (
        r"(train_rm\.py --stage 2 .*)--max-steps 200",
        r"\1--max-steps 1 --rollout-batch-size 1 --actor-batch-size 2 "
        r"--num-rollouts 2 --max-new-tokens 8 --allow-unparsed-cots",
    ),
    (r"(eval_rm\.py .*)--output-dir eval/", r"\1--output-dir eval/ --max-new-tokens 8"),
    (
        r"--max-steps 500 --num-cot-samples 4",
        "--max-steps 1 --num-cot-samples 1 --teacher-max-new-tokens 8 --gradient-accumulation-steps 1",
    ),
    # post-training: one step, two videos a prompt, one evaluation video, the DeScore reward without a CoT
    (
        r"^accelerate launch recipes/",
        "accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no --cpu recipes/",
    ),
    (
        r"(wan_flow_dpo\.py .*)--max-steps 1000",
        r"\1--max-steps 1 --videos-per-prompt 2 --batch-size 1 "
        r"--eval-prompts 1 --eval-videos-per-prompt 1 --no-think",
    ),
    (r"^(descore score (?!.*--no-think).*)$", r"\1 --max-new-tokens 8"),  # CoTs of 8 tokens
    (
        r"(wan_flow_grpo\.py .*)--max-steps 500",
        r"\1--max-steps 1 --group-size 2 --eval-prompts 1 "
        r"--eval-videos-per-prompt 1",
    ),
    (
        r"(wan_nft\.py .*)--max-steps 300",
        r"\1--max-steps 1 --group-size 2 --prompts-per-step 1 --eval-prompts 1 "
        r"--eval-videos-per-prompt 1 --reward-max-new-tokens 8",
    ),
]


def _strip_comment(line: str) -> str:
    """The line without a shell comment (a # outside quotes, at the start or after a space)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def bash_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) for each command of each ```bash block: continuation lines joined, comments dropped,
    a `for ... done` loop kept as one command."""
    commands = []
    for block in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
        first_line = text[: block.start()].count("\n") + 2
        pending, start, loop = "", None, False
        for offset, raw in enumerate(block.group(1).splitlines()):
            line = _strip_comment(raw)
            if not line.strip() and not pending:
                continue
            start = first_line + offset if not pending else start
            loop = loop or line.lstrip().startswith("for ")
            joined = line[:-1].rstrip() + " " if line.endswith("\\") else line.strip()
            pending = (pending + joined) if line.endswith("\\") else (pending + joined + ("\n" if loop else ""))
            if line.endswith("\\") or (loop and line.strip() != "done"):
                continue
            commands.append((start, " ".join(pending.split()) if not loop else pending.strip()))
            pending, loop = "", False
    return commands


def _reason(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUNNABLE.items() if command.startswith(prefix)), None)


def _substitute(command: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    return command


def test_every_command_is_run_or_listed_and_every_rule_is_used():
    found = all_commands()
    commands = [command for _, _, command in found]
    assert len(commands) >= 10, commands
    assert {page for page, _, _ in found} >= {"README.md", "docs/training.md", "docs/post_train.md"}
    unused = [prefix for prefix in NOT_RUNNABLE if not any(c.startswith(prefix) for c in commands)]
    assert not unused, f"NOT_RUNNABLE entries that match no command of the docs (remove them): {unused}"
    runnable = [c for c in commands if _reason(c) is None]
    stale = [p for p, _ in SUBSTITUTIONS if not any(re.search(p, c) for c in runnable)]
    assert not stale, f"SUBSTITUTIONS that match no runnable command of the docs (remove them): {stale}"
    dots = [f"{page}:{line}" for page, line, c in found if _reason(c) is None and "..." in c]
    assert not dots, f"a command with `...` cannot run: list it in NOT_RUNNABLE ({dots})"


def test_every_package_says_what_it_owns():
    """The tree explains itself: every package's __init__ docstring says what it holds, and the README keeps no
    hand-written layout index that would go stale."""
    for init in [*(ROOT / "descore_plugin").glob("*/__init__.py"), ROOT / "integrations" / "__init__.py"]:
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 5, f"{init.relative_to(ROOT)} has no docstring saying what it holds"
    assert not re.findall(r"^- `descore_plugin/\w+`", README.read_text(), re.M)


def test_doc_commands_run_on_the_tiny_models(tmp_path):
    """Every runnable command of the docs, in order, with only sizes changed; each must exit 0."""
    from descore_plugin.testing.tiny import init_tiny

    init_tiny(tmp_path / TINY_MODEL)
    (tmp_path / "prompts.txt").write_text("a red square moving right\na blue circle moving up\n")
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    tools = tmp_path / ".bin"  # `python`, `descore` and `accelerate` of this interpreter
    tools.mkdir()
    for name, module in (
        ("python", None),
        ("descore", "descore_plugin.cli"),
        ("accelerate", "accelerate.commands.accelerate_cli"),
    ):
        (tools / name).write_text(f'#!/bin/sh\nexec {sys.executable} {"-m " + module if module else ""} "$@"\n')
        (tools / name).chmod(0o755)
    env = offline_env(PATH=f"{tools}{os.pathsep}{os.environ['PATH']}")
    ran, seconds = [], {}
    for page, line, command in all_commands():
        if _reason(command) is not None:
            continue
        command = _substitute(command)
        started = time.perf_counter()
        done = run_command(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, timeout=600)
        seconds[f"{page}:{line}"] = time.perf_counter() - started
        assert done.returncode == 0, f"{page}:{line}: `{command}` exited {done.returncode}:\n{done.stderr[-3000:]}"
        ran.append(command)
    # where the time goes (shown with `pytest -s`): a page whose commands cost minutes wants smaller substitutions
    by_page = {}
    for where, spent in seconds.items():
        by_page[where.split(":")[0]] = by_page.get(where.split(":")[0], 0.0) + spent
    print("\ndocs commands, seconds per page:", {page: round(spent) for page, spent in by_page.items()})
    print("slowest:", sorted(((round(s), w) for w, s in seconds.items()), reverse=True)[:8])
    assert any("train_rm.py --stage 2" in c for c in ran) and any("wan_flow_grpo.py" in c for c in ran)
    assert (tmp_path / "runs" / "stage2" / "descore_config.json").is_file()
    assert (tmp_path / "eval" / "accuracy.json").is_file()
    assert (tmp_path / "runs" / "student" / "descore_config.json").is_file()
    assert (tmp_path / "runs" / "dpo" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "runs" / "grpo" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "runs" / "rm" / "descore_config.json").is_file()  # the README's quick starts
    assert (tmp_path / "runs" / "wan-dpo" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "report-dpo" / "index.html").is_file()
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) >= 8  # 4 pairs, 8 videos (+ later blocks')
    if any(c.startswith("descore report") for c in ran):
        assert (tmp_path / "report" / "index.html").is_file()


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "```bash\na --x 1 \\\n    --y 2   # note\n# only a comment\nb 'q # not a comment'\n```\n",
            [(2, "a --x 1 --y 2"), (5, "b 'q # not a comment'")],
        ),
        ("```bash\nfor i in 0 1; do\n  echo $i &\ndone\n```\n", [(2, "for i in 0 1; do\necho $i &\ndone")]),
    ],
)
def test_command_extraction(text, expected):
    assert bash_commands(text) == expected
