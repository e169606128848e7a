"""One way to run a command in a test: offline, on one CPU thread, no GPU, the repository importable.

from helpers.run import offline_env, run_python   # tests/ is on sys.path (pytest puts it there)

done = run_python(["recipes/train_rm.py", "--help"])            # this interpreter, captured text, a timeout
done = run_python(["-m", "descore_plugin.cli", "score", ...], umask=0o022, cwd=tmp_path)
done = run_python(accelerate_cpu(2, "recipes/wan_nft.py", ...), env=offline_env(ACCELERATE_USE_CPU="1"))
done = run_python(torchrun(2, "tests/full_state_worker.py", ...))  # 2 gloo processes on a free port
process = start_python(["-m", "descore_plugin.cli", "serve", ...])  # a server or a run to interrupt: a Popen
"""

import os
import socket
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


def start_python(args: list, *, cwd=None, env: dict | None = None, **popen) -> subprocess.Popen:
    """Start `python ARGS` (this interpreter) in the background with `offline_env()` unless `env` is given; text
    pipes for stdout and stderr unless `popen` says otherwise (e.g. start_new_session=True, stdout=None)."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(
        [sys.executable, *map(str, args)], cwd=cwd, env=offline_env() if env is None else env, text=True, **options
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_cpu(processes: int, *args) -> list:
    """The arguments of `python -m accelerate.commands.launch` with `processes` CPU processes on one machine, one
    thread each. With ACCELERATE_USE_CPU=1 in the environment, the torchrun launcher selects gloo DDP (accelerate's
    MULTI_CPU); the `--cpu` flag would go through mpirun instead, which needs a hostfile."""
    return [
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        *args,
    ]


def torchrun(processes: int, *args) -> list:
    """The arguments of `python -m torch.distributed.run` with `processes` processes on a free port."""
    return ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port()), *args]
