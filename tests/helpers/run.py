"""One way to run a command in a test: offline, on one CPU thread, no GPU, the repository importable.

from helpers.run import offline_env, run_python   # tests/ is on sys.path (pytest puts it there)

done = run_python(["recipes/train_rm.py", "--help"])            # this interpreter, captured text, a timeout
done = run_python(["-m", "descore_plugin.cli", "score", ...], umask=0o022, cwd=tmp_path)
env = offline_env(ACCELERATE_USE_CPU="1")                       # for a subprocess.run of your own
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Nothing from the model hub; tiny models are overhead-bound, so one thread is as fast as two and leaves the other
# core to a parallel test; CPU only, whatever the machine has.
OFFLINE = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}


def offline_env(**extra: str) -> dict:
    """This process's environment with OFFLINE and `extra` on top, and the repository on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **OFFLINE, "PYTHONPATH": path, **extra}


def run_command(
    command: list, *, cwd=None, env: dict | None = None, umask: int | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `command` (paths are turned into strings) with `offline_env()` unless `env` is given; output as text."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=offline_env() if env is None else env,
        preexec_fn=preexec,
        timeout=timeout,
    )


def run_python(args: list, **kwargs) -> subprocess.CompletedProcess:
    """`python ARGS` with this interpreter; see `run_command`."""
    return run_command([sys.executable, *args], **kwargs)
