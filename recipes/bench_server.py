"""Benchmark `descore serve`: micro-batching against no batching, and the server against in-process scoring.

    python recipes/bench_server.py --json outputs/bench_server.json [--model DIR] [--clients 8]

For no-think and for think requests, starts two real `descore serve` processes on 127.0.0.1 on the same model: one
with --max-batch-size 8 (micro-batching), one with --max-batch-size 1. They take turns for `--rounds` rounds; in each
turn `--clients` threads each send `--requests` requests of one video (uint8 .npy, pre-encoded, so the clients
measure the server) and wait for each answer.

Reports (JSON), under "no_think" and "think":
    batched / unbatched: throughput (videos per second) and p50 / p99 request latency (ms)
    batched_over_unbatched: throughput with micro-batching / throughput with batches of 1
    inprocess_videos_per_s: `DeScoreReward.score` on the same videos in this process, batch size 8
    server_over_inprocess: server throughput (micro-batching) / in-process throughput
    server_cpu_ms_per_video, server_cpu_unbatched_over_batched: the server process's CPU time per video (Linux),
        a measure of batching's saving that other load on the machine does not distort
and, at the top level, those of think requests, the default mode (batched_over_unbatched, p50/p99_latency_ms,
server_over_inprocess). On the tiny model a no-think video costs about as much as the HTTP and JSON handling of its
request, which batching cannot share, so no-think gains less there than on a real model.
Without --model the tiny model is written to a temporary folder and all three use it.
"""

import base64
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from descore_plugin.utils.args import help_field, parse_config
from descore_plugin.utils.errors import device_name, positive_float, positive_int


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(model_dir, max_batch_size, max_wait_ms, device):
    port = _free_port()
    # --dedupe-seconds 0 and a distinct prompt per request (`_run_clients`): every request is scored, none is
    # answered from an identical earlier one
    command = [
        sys.executable,
        "-m",
        "descore_plugin.cli",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch_size),
        "--max-wait-ms",
        str(max_wait_ms),
        "--log-level",
        "warning",
        "--dedupe-seconds",
        "0",
    ]
    if device:
        command += ["--device", device]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`{' '.join(command)}` exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server on port {port} did not start within 300 s")


def _process_cpu_seconds(pid) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere): unlike wall time, not inflated by other
    programs sharing the machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _run_clients(url, bodies, clients, requests_per_client, pid=None):
    """Each client sends its requests one after another; returns (videos per second, latencies in s, server CPU
    seconds per video)."""
    import httpx

    latencies, lock = [], threading.Lock()

    def client(index):
        with httpx.Client(timeout=600) as session:
            mine = []
            for r in range(requests_per_client):
                body = bodies[(index * requests_per_client + r) % len(bodies)]
                body = body.replace(UNIQUE, b"%d" % next(_request_numbers))  # no two requests alike
                started = time.perf_counter()
                response = session.post(f"{url}/score", content=body, headers={"Content-Type": "application/json"})
                response.raise_for_status()
                if response.json()["errors"][0] is not None:
                    raise RuntimeError(response.json()["errors"][0])
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    cpu_before = _process_cpu_seconds(pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    total = clients * requests_per_client
    return total / elapsed, latencies, (_process_cpu_seconds(pid) - cpu_before) / total


UNIQUE = b"@REQUEST@"
_request_numbers = itertools.count()


def _body(video, prompt, think, max_new_tokens) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, video.numpy(), allow_pickle=False)
    body = {
        "videos": [{"npy": base64.b64encode(buffer.getvalue()).decode()}],
        "prompts": [prompt + " " + UNIQUE.decode()],
        "think": think,
        "max_new_tokens": max_new_tokens,
    }
    return json.dumps(body).encode()


def _inprocess(model, videos, prompt, think, args) -> float:
    """Videos per second of `DeScoreReward.score` on the same stream of videos, in batches of max_batch_size."""
    total = args.clients * args.requests
    stream = [videos[i % len(videos)] for i in range(total)]
    model.score(stream[:8], [prompt] * 8, think=think, max_new_tokens=args.max_new_tokens)  # warm-up
    started = time.perf_counter()
    for start in range(0, total, args.max_batch_size):
        chunk = stream[start : start + args.max_batch_size]
        model.score(
            chunk,
            [prompt] * len(chunk),
            think=think,
            batch_size=args.max_batch_size,
            max_new_tokens=args.max_new_tokens,
        )
    return total / (time.perf_counter() - started)


def _warm_up(url, bodies):
    """The first requests pay for lazy imports and allocator growth: not measured."""
    import httpx

    with httpx.Client(timeout=600) as session:
        for body in bodies[:4]:
            body = body.replace(UNIQUE, b"%d" % next(_request_numbers))
            session.post(f"{url}/score", content=body, headers={"Content-Type": "application/json"}).raise_for_status()


def _summary(runs) -> dict:
    """Median throughput over the rounds; latency percentiles over every request of every round."""
    ms = np.concatenate([np.array(latencies) for _, latencies, _ in runs]) * 1000
    return {
        "videos_per_s": round(float(np.median([throughput for throughput, _, _ in runs])), 2),
        "p50_latency_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_latency_ms": round(float(np.percentile(ms, 99)), 2),
        "requests": len(ms),
        "server_cpu_ms_per_video": round(float(np.median([cpu for _, _, cpu in runs])) * 1000, 3),
    }


@dataclass
class BenchServerArguments:
    json: str = help_field("where to write the results (JSON)", required=True)
    model: str | None = help_field("checkpoint directory (default: the tiny model, written here)")
    device: str | None = help_field(
        "device of the servers and the in-process model (default: cuda if available, else cpu)", check=device_name
    )
    clients: int = help_field("concurrent clients", 8, check=positive_int)
    requests: int = help_field("requests per client and round (one video each)", 16, check=positive_int)
    rounds: int = help_field("turns each server takes (the ratio is their median)", 5, check=positive_int)
    max_batch_size: int = help_field("the micro-batching server's batch limit", 8, check=positive_int)
    max_wait_ms: float = help_field("the micro-batching server's wait", 10.0, check=positive_float)
    max_new_tokens: int = help_field("CoT length limit of the think requests", 16, check=positive_int)
    frames: int = help_field("frames per video", 8, check=positive_int)
    size: int = help_field("frame height and width", 56, check=positive_int)


def main(argv=None):
    (args,) = parse_config(BenchServerArguments, argv, prog="bench_server.py", description=__doc__)

    from descore_plugin.modeling.model import DeScoreReward

    with tempfile.TemporaryDirectory(prefix="bench-server-") as scratch:
        model_dir = args.model
        if model_dir is None:
            from descore_plugin.testing.tiny import init_tiny

            model_dir = Path(scratch) / "tiny"
            init_tiny(model_dir)
        generator = torch.Generator().manual_seed(0)
        videos = [
            (torch.rand(args.frames, 3, args.size, args.size, generator=generator) * 255).to(torch.uint8)
            for _ in range(32)
        ]
        prompt = "a red square moving right"

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = DeScoreReward.from_pretrained(
            model_dir, device=device, dtype="bfloat16" if device.startswith("cuda") else None
        )
        report = {
            "clients": args.clients,
            "requests_per_client_per_round": args.requests,
            "rounds": args.rounds,
            "videos_per_request": 1,
            "video": f"{args.frames}x3x{args.size}x{args.size} uint8",
            "device": device,
            "model": str(args.model or "built-in tiny"),
            "cpu_threads": torch.get_num_threads(),
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
        }
        for think in (False, True):
            mode = "think" if think else "no_think"
            bodies = [_body(video, prompt, think, args.max_new_tokens) for video in videos]
            # Both servers stay up and take turns, round after round, so that a change in the machine's load hits
            # both alike; the reported ratio is the median of the per-round ratios.
            servers = {
                label: _start_server(model_dir, batch, args.max_wait_ms if batch > 1 else 0, args.device)
                for label, batch in (("batched", args.max_batch_size), ("unbatched", 1))
            }
            rounds = {"batched": [], "unbatched": []}
            try:
                for _, url in servers.values():
                    _warm_up(url, bodies)
                for _ in range(args.rounds):
                    for label, (process, url) in servers.items():
                        rounds[label].append(_run_clients(url, bodies, args.clients, args.requests, process.pid))
                import httpx

                batch_sizes = {
                    label: httpx.get(f"{url}/info").json()["batch_sizes"] for label, (_, url) in servers.items()
                }
            finally:
                for process, _ in servers.values():
                    process.terminate()
                    process.wait(60)
            results = {label: {**_summary(runs), "batch_sizes": batch_sizes[label]} for label, runs in rounds.items()}
            ratios = [b[0] / u[0] for b, u in zip(rounds["batched"], rounds["unbatched"])]
            inprocess = _inprocess(model, videos, prompt, think, args)
            report[mode] = {
                **results,
                "batched_over_unbatched_per_round": [round(r, 3) for r in ratios],
                "batched_over_unbatched": round(float(np.median(ratios)), 3),
                "server_cpu_unbatched_over_batched": round(
                    results["unbatched"]["server_cpu_ms_per_video"] / results["batched"]["server_cpu_ms_per_video"], 3
                ),
                "inprocess_videos_per_s": round(inprocess, 2),
                "server_over_inprocess": round(results["batched"]["videos_per_s"] / inprocess, 3),
            }
            print(f"{mode}: {json.dumps(report[mode])}", flush=True)
            if think:  # the top-level figures are those of think requests, the default (as in DeScoreReward.score)
                for key in ("batched_over_unbatched", "server_over_inprocess"):
                    report[key] = report[mode][key]
                report["p50_latency_ms"] = results["batched"]["p50_latency_ms"]
                report["p99_latency_ms"] = results["batched"]["p99_latency_ms"]

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
