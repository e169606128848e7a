"""`descore serve`: every endpoint called the way its peer's client calls it, the safety rules, and a loopback load
test, all against the tiny model on 127.0.0.1 with ephemeral ports. Served rewards are compared with in-process
`DeScoreReward.score` on the same input."""

import base64
import io
import json
import os
import pickle
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import requests
import torch
from conftest import PROMPTS
from helpers.run import free_port, offline_env, run_python, start_python

from descore_plugin import DeScoreReward, RemoteReward
from descore_plugin.data.video import VideoInputError, write_video
from descore_plugin.serving.client import RemoteError, descore_reward_remote
from descore_plugin.serving.server import BackgroundServer, ServeConfig, check_bind, safe_unpickle


def _npy_b64(frames) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(frames), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


def _video(seed, frames=8, height=56, width=56) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(frames, 3, height, width, generator=generator) * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    write_video(allowed / "ok.mp4", _video(1), fps=8)
    write_video(outside / "secret.mp4", _video(2), fps=8)
    (allowed / "link.mp4").symlink_to(outside / "secret.mp4")
    (allowed / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    return {"allowed": allowed, "outside": outside}


@pytest.fixture(scope="module")
def server(model, folders):
    config = ServeConfig(
        port=0,
        allow_paths=(str(folders["allowed"]),),
        allow_pickle=True,
        max_request_mb=2,
        max_frames=64,
        max_videos_per_request=16,
        max_wait_ms=20,
    )
    with BackgroundServer(model, config) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(model):
    with BackgroundServer(model, ServeConfig(port=0, api_key="s3cret")) as running:
        yield running


# ---------------------------------------------------------------------- endpoints
def test_remote_reward_equals_in_process_for_every_video_form(model, server, folders, sample_videos):
    """RemoteReward is DeScoreReward.score over HTTP: batch tensors, uint8 arrays, PIL frames and files."""
    remote = RemoteReward(server.url)
    frames_hwc = _video(3).permute(0, 2, 3, 1).numpy()  # (F, H, W, 3) uint8
    pil = [PIL.Image.fromarray(f) for f in _video(4).permute(0, 2, 3, 1).numpy()]
    videos = [sample_videos[0], frames_hwc, pil, str(folders["allowed"] / "ok.mp4")]
    prompts = PROMPTS + ["a yellow dot"]
    for think in (False, True):
        served = remote.score(videos, prompts, think=think, max_new_tokens=8, batch_size=3)
        local = model.score(videos, prompts, think=think, max_new_tokens=8)
        torch.testing.assert_close(served.rewards, local.rewards, atol=1e-5, rtol=0)
        assert served.cots == local.cots and served.parse_errors == local.parse_errors
        assert served.dimensional_scores == local.dimensional_scores
    cots = ["The square is red.", None, "", "It moves."]
    served = remote.score(videos, prompts, cots=cots)
    torch.testing.assert_close(served.rewards, model.score(videos, prompts, cots=cots).rewards, atol=1e-5, rtol=0)
    assert served.cots == ["The square is red.", "", "", "It moves."]
    # the same RewardOutput fields, in the same types, as in-process
    assert served.rewards.dtype == torch.float32 and served.uncertainty is None
    with pytest.raises(TypeError, match="greedily"):
        remote.score(videos, prompts, do_sample=True)


def test_remote_reward_has_the_in_process_signature(model, server, sample_videos):
    """Every argument of DeScoreReward.score exists on RemoteReward.score; per-video judge instructions are served,
    frame-sampling overrides are refused by name."""
    import inspect

    local_args = set(inspect.signature(DeScoreReward.score).parameters)
    assert local_args <= set(inspect.signature(RemoteReward.score).parameters)
    remote = RemoteReward(server.url)
    instructions = ["Judge how red the video is, against: a red square.", None, "Rate the motion of: a blue circle."]
    for think in (True, False):
        served = remote.score(sample_videos, PROMPTS, think=think, instructions=instructions, max_new_tokens=6)
        local = model.score(sample_videos, PROMPTS, think=think, instructions=instructions, max_new_tokens=6)
        torch.testing.assert_close(served.rewards, local.rewards, atol=1e-5, rtol=0)
        assert served.cots == local.cots
    plain = model.score(sample_videos, PROMPTS, think=False).rewards  # the instructions did reach the model:
    assert abs(served.rewards[0] - plain[0]) > 1e-4 and abs(served.rewards[1] - plain[1]) < 1e-5
    for name in ("fps", "num_frames"):
        with pytest.raises(TypeError, match=name):
            remote.score(sample_videos, PROMPTS, **{name: 8})
    # the source frame rate of in-memory frames is served (8 frames at 2 fps: 8 sampled; at 16 fps: 4)
    frames = [_video(11).numpy(), _video(12).permute(0, 2, 3, 1).numpy()]
    served = remote.score(frames, PROMPTS[:2], think=False, video_fps=2)
    torch.testing.assert_close(
        served.rewards, model.score(frames, PROMPTS[:2], think=False, video_fps=2).rewards, atol=1e-5, rtol=0
    )
    assert (served.rewards - model.score(frames, PROMPTS[:2], think=False).rewards).abs().max() > 1e-4
    bad = requests.post(
        f"{server.url}/score",
        json={"videos": [_npy_b64(_video(1).numpy())], "prompts": ["x"], "instructions": "not a list"},
    )
    assert bad.status_code == 422 and "instructions" in bad.json()["detail"]


def test_remote_reward_names_failed_files_as_in_process(model, server, folders, tmp_path):
    remote = RemoteReward(server.url)
    corrupt = str(folders["allowed"] / "corrupt.mp4")
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(VideoInputError) as local_error:
        model.score([missing], ["x"], think=False)
    with pytest.raises(VideoInputError) as remote_error:
        remote.score([missing], ["x"], think=False)
    assert str(remote_error.value) == str(local_error.value)
    good = str(folders["allowed"] / "ok.mp4")
    with pytest.raises(VideoInputError, match=r"^videos\[1\] \(.*corrupt\.mp4\): cannot decode"):
        remote.score([good, corrupt], ["x", "y"], think=False)
    out = remote.score([good, corrupt, good], ["x", "y", "z"], think=False, on_error="nan", batch_size=2)
    assert torch.isnan(out.rewards[1]) and not torch.isnan(out.rewards[[0, 2]]).any()
    assert out.parse_errors[1].startswith("videos[1] (") and out.parse_errors[0] is None
    torch.testing.assert_close(
        out.rewards[[0, 2]], model.score([good, good], ["x", "z"], think=False).rewards, atol=1e-5, rtol=0
    )


def test_flow_factory_health_and_compute(model, server, sample_videos):
    """Flow-Factory's RemoteRewardClient: GET /health, then POST /compute with videos as lists of base64 PNG
    frames made from (T, C, H, W) tensors the way its client does (clamp, * 255, astype uint8)."""
    session = requests.Session()
    assert session.get(f"{server.url}/health", timeout=5.0).ok

    def frame_b64(frame):
        array = (frame.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype("uint8")
        buffer = io.BytesIO()
        PIL.Image.fromarray(array).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    payload = {
        "prompt": PROMPTS,
        "image": None,
        "video": [[frame_b64(f) for f in v] for v in sample_videos],
        "condition_images": None,
        "condition_videos": None,
        "kwargs": {"think": False},
    }
    response = session.post(f"{server.url}/compute", json=payload, timeout=60.0)
    response.raise_for_status()
    data = response.json()
    assert not data.get("error")
    same_frames = [(v.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype("uint8") for v in sample_videos]
    expected = model.score(same_frames, PROMPTS, think=False).rewards
    torch.testing.assert_close(torch.tensor(data["rewards"], dtype=torch.float32), expected, atol=1e-5, rtol=0)
    # a video that does not decode fails the request, named in "error" (Flow-Factory raises it; --on-bad-video)
    payload["video"][1] = ["bm90IGEgcG5n"]
    data = session.post(f"{server.url}/compute", json=payload, timeout=60.0).json()
    assert data["rewards"] is None and data["error"].startswith("videos[1][0]: not a PNG")
    response = session.post(f"{server.url}/compute", json={"prompt": ["x"], "image": ["..."], "video": None})
    assert response.status_code == 422 and "'image' inputs are not scored" in response.json()["detail"]


def test_openrlhf_get_reward(model, server, folders, sample_videos):
    """OpenRLHF's remote reward call: POST {"query", "prompts", "labels"} JSON to --remote_rm_url; it reads
    "rewards" (and "scores", "extra_logs"). The response after the prompt is the CoT; labels carry the video."""
    judge_prompt = "<|im_start|>user\nJudge the video.<|im_end|>\n<|im_start|>assistant\n"
    cots = ["The square is red and moves right.", "No circle is visible."]
    labels = [
        json.dumps({"video": {"npy": _npy_b64(_video(5).numpy())}, "prompt": PROMPTS[0]}),
        {"video": str(folders["allowed"] / "ok.mp4"), "prompt": PROMPTS[1]},
    ]
    data = {"query": [judge_prompt + c for c in cots], "prompts": [judge_prompt] * 2, "labels": labels}
    response = requests.post(
        f"{server.url}/get_reward", json=data, headers={"Content-Type": "application/json"}, timeout=180
    )
    response.raise_for_status()
    reply = response.json()
    expected = model.score([_video(5), str(folders["allowed"] / "ok.mp4")], PROMPTS[:2], cots=cots).rewards
    torch.testing.assert_close(torch.tensor(reply["rewards"]), expected, atol=1e-5, rtol=0)
    assert reply["scores"] == reply["rewards"] and reply["extra_logs"] == {"descore_failed": [0.0, 0.0]}
    # OpenRLHF builds each query with tokenizer.batch_decode(sequences, skip_special_tokens=False): the left padding
    # of the batch, the prompt, the response and its end-of-turn token, then right padding
    tokenizer = model.tokenizer
    prompt_ids = tokenizer(judge_prompt, add_special_tokens=False).input_ids
    pad, end = tokenizer.pad_token_id, model._eos_ids()[0]
    sequences = [
        [pad] * 2 + prompt_ids + tokenizer(c, add_special_tokens=False).input_ids + [end] + [pad] * 3 for c in cots
    ]
    queries = tokenizer.batch_decode(sequences, skip_special_tokens=False)
    assert queries[0].startswith(tokenizer.pad_token) and queries[0].endswith(tokenizer.pad_token)
    data = {"query": queries, "prompts": [judge_prompt] * 2, "labels": labels}
    reply = requests.post(f"{server.url}/get_reward", json=data, timeout=180).json()
    torch.testing.assert_close(torch.tensor(reply["rewards"]), expected, atol=1e-5, rtol=0)
    bad = requests.post(f"{server.url}/get_reward", json={"query": ["x"], "prompts": ["x"], "labels": ["answer"]})
    assert bad.status_code == 422 and "labels[0]" in bad.json()["detail"]


def test_flow_grpo_remote_factory_matches_in_process_factory(model, server, sample_videos):
    from descore_plugin.integrations.flow_grpo import descore_reward

    remote_fn = descore_reward_remote(server.url, think=False, batch_size=2)
    local_fn = descore_reward("cpu", model=model, think=False)
    scores, info = remote_fn(sample_videos, PROMPTS, [{} for _ in PROMPTS])
    local_scores, _ = local_fn(sample_videos, PROMPTS, [{} for _ in PROMPTS])
    assert isinstance(scores, np.ndarray) and scores.shape == (3,)
    np.testing.assert_allclose(scores, local_scores, atol=1e-5)
    assert info["cots"] is None
    # think=True: the same named scores, CoTs and `name` choice as the in-process factory
    remote_fn = descore_reward_remote(server.url, think=True, max_new_tokens=6, name="descore:overall")
    local_fn = descore_reward("cpu", model=model, think=True, max_new_tokens=6, name="descore:overall")
    (scores, info), (local_scores, local_info) = [
        f(sample_videos, PROMPTS, [{} for _ in PROMPTS]) for f in (remote_fn, local_fn)
    ]
    assert info.keys() == local_info.keys() and info["cots"] == local_info["cots"]
    np.testing.assert_array_equal(np.isnan(scores), np.isnan(local_scores))
    np.testing.assert_allclose(info["descore"], local_info["descore"], atol=1e-5)


def test_reward_contract_loads_a_server_url(model, server, sample_videos):
    rewards = pytest.importorskip("descore_plugin.rewards.contract")  # the post-training reward contract
    scorer = rewards.load_reward_model(server.url)
    assert isinstance(scorer, RemoteReward)
    remote = rewards.descore_reward_function(scorer, think=False)(sample_videos, PROMPTS)
    local = rewards.descore_reward_function(model, think=False)(sample_videos, PROMPTS)
    assert remote.keys() == local.keys()
    torch.testing.assert_close(remote["descore"], local["descore"], atol=1e-5, rtol=0)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


def test_pickle_protocol_plain_data_only(model, server, folders, tmp_path):
    """yifan123/reward-server's client: pickle.dumps a dict, POST it as the body to the root URL, pickle.loads the
    reply. The server's unpickler admits no globals."""
    mp4 = (folders["allowed"] / "ok.mp4").read_bytes()
    buffer = io.BytesIO()
    np.save(buffer, _video(6).numpy(), allow_pickle=False)
    data = {"videos": [mp4, buffer.getvalue()], "prompts": PROMPTS[:2], "think": False}
    response = requests.post(server.url, data=pickle.dumps(data))
    assert response.status_code == 200
    reply = pickle.loads(response.content)
    expected = model.score([str(folders["allowed"] / "ok.mp4"), _video(6)], PROMPTS[:2], think=False).rewards
    np.testing.assert_allclose(reply["scores"], expected.numpy(), atol=1e-5)
    assert reply["errors"] == [None, None] and reply["outputs"] == reply["scores"]  # flow_grpo reads "outputs"

    marker = tmp_path / "pwned"
    for evil, why in (
        ({"videos": [_Evil(str(marker))], "prompts": ["x"]}, b"refused global io.open"),
        ({"videos": [mp4], "prompts": np.array(["x"], dtype=object)}, b"refused a numpy dtype object"),
    ):
        response = requests.post(server.url, data=pickle.dumps(evil))
        assert response.status_code == 400 and why in response.content, response.content
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="refused global io.open"):
        safe_unpickle(pickle.dumps(_Evil(str(marker))))
    assert not marker.exists()


# ---------------------------------------------------------------------- safety
def test_bind_and_api_key(model, keyed_server, sample_videos):
    with pytest.raises(ValueError, match="--api-key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "key")
    check_bind("127.0.0.1", None)
    url = keyed_server.url
    body = {"videos": [{"npy": _npy_b64(_video(7).numpy())}], "prompts": ["x"], "think": False}
    assert requests.get(f"{url}/health").status_code == 200  # liveness needs no key
    assert requests.post(f"{url}/score", json=body).status_code == 401
    wrong = requests.post(f"{url}/score", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    assert requests.post(f"{url}/score", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert requests.post(f"{url}/score?api_key=s3cret", json=body).status_code == 200  # for header-less clients
    assert requests.get(f"{url}/info").status_code == 401
    with pytest.raises(RemoteError, match="HTTP 401"):
        RemoteReward(url).score(sample_videos, PROMPTS, think=False)
    out = RemoteReward(url, api_key="s3cret").score(sample_videos, PROMPTS, think=False)
    torch.testing.assert_close(out.rewards, model.score(sample_videos, PROMPTS, think=False).rewards, atol=1e-5, rtol=0)
    assert requests.post(url, data=pickle.dumps({"videos": []})).status_code in (404, 405)  # pickle is opt-in


def test_size_and_length_limits(server):
    url = f"{server.url}/score"
    too_big = requests.post(url, data=b"x" * (3 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413 and "--max-request-mb" in too_big.json()["detail"]
    long_video = {"videos": [{"npy": _npy_b64(np.zeros((80, 3, 8, 8), np.uint8))}], "prompts": ["x"], "think": False}
    response = requests.post(url, json=long_video)
    assert response.status_code == 413 and response.json()["detail"].startswith("videos[0]: 80 frames")
    many = {"videos": [{"npy": _npy_b64(_video(0).numpy())}] * 17, "prompts": "x", "think": False}
    response = requests.post(url, json=many)
    assert response.status_code == 413 and "--max-videos-per-request" in response.json()["detail"]
    for body, field in (
        ({"videos": [], "prompts": []}, "videos"),
        ({"videos": [{"npy": "AA=="}], "prompts": [1]}, "prompts[0]"),
        ({"videos": [{"zip": "AA=="}], "prompts": ["x"]}, "videos[0]"),
        ({"vids": []}, "unknown fields"),
    ):
        response = requests.post(url, json=body)
        assert response.status_code == 422 and field in response.json()["detail"], response.text
    assert requests.post(url, data=b"{not json").status_code == 400


def test_server_paths_stay_inside_allow_paths(model, server, keyed_server, folders):
    url = f"{server.url}/score"

    def ask(path):
        return requests.post(url, json={"videos": [{"path": str(path)}], "prompts": ["x"], "think": False})

    ok = ask(folders["allowed"] / "ok.mp4")
    assert ok.status_code == 200
    expected = model.score([str(folders["allowed"] / "ok.mp4")], ["x"], think=False).rewards
    assert ok.json()["rewards"][0] == pytest.approx(float(expected[0]), abs=1e-5)
    for escape in (
        folders["outside"] / "secret.mp4",
        folders["allowed"] / ".." / "outside" / "secret.mp4",
        folders["allowed"] / "link.mp4",
        "/etc/passwd",
    ):
        response = ask(escape)
        assert response.status_code == 403 and "outside the folders" in response.json()["detail"], escape
    missing = ask(folders["allowed"] / "nope.mp4").json()
    assert missing["rewards"] == [None] and missing["errors"][0].endswith("file not found.")
    disabled = requests.post(
        f"{keyed_server.url}/score",
        headers={"Authorization": "Bearer s3cret"},
        json={"videos": [{"path": str(folders["allowed"] / "ok.mp4")}], "prompts": ["x"]},
    )
    assert disabled.status_code == 403 and "--allow-paths" in disabled.json()["detail"]


def test_corrupt_video_fails_alone(model, server):
    videos = [
        {"npy": _npy_b64(_video(8).numpy())},
        {"mp4": base64.b64encode(os.urandom(5000)).decode()},
        {"npy": base64.b64encode(b"\x93NUMPYgarbage").decode()},
        {"npy": _npy_b64(np.zeros((8, 3, 56, 56), np.int64))},
        {"npy": _npy_b64(_video(9).numpy())},
    ]
    reply = requests.post(f"{server.url}/score", json={"videos": videos, "prompts": "x", "think": False}).json()
    assert [e is None for e in reply["errors"]] == [True, False, False, False, True]
    assert "videos[1]: cannot decode the file" in reply["errors"][1] and "descore-serve-" not in reply["errors"][1]
    assert "videos[2]: not a .npy array" in reply["errors"][2] and "dtype int64" in reply["errors"][3]
    expected = model.score([_video(8), _video(9)], ["x", "x"], think=False).rewards
    assert [reply["rewards"][0], reply["rewards"][4]] == pytest.approx(expected.tolist(), abs=1e-5)
    assert reply["rewards"][1:4] == [None, None, None]


def test_disconnecting_clients_do_not_disturb_others(model, server):
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"videos": [{"npy": _npy_b64(_video(10).numpy())}], "prompts": ["x"], "think": False}).encode()
    expected = float(model.score([_video(10)], ["x"], think=False).rewards[0])

    def hang_up(partial: bool):
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + (body[: len(body) // 2] if partial else body))
        # closed without reading the reply (or without finishing the body)

    def honest(_):
        return requests.post(f"{server.url}/score", data=body, headers={"Content-Type": "application/json"}).json()

    with ThreadPoolExecutor(8) as pool:
        rude = [pool.submit(hang_up, i % 2 == 0) for i in range(8)]
        replies = list(pool.map(honest, range(12)))
        for future in rude:
            future.result()
    assert all(r["rewards"][0] == pytest.approx(expected, abs=1e-5) for r in replies)
    assert requests.get(f"{server.url}/health").json() == {"status": "ok"}


def test_graceful_shutdown_finishes_queued_requests(model):
    config = ServeConfig(port=0, max_batch_size=64, max_wait_ms=2000)  # requests wait in the queue
    running = BackgroundServer(model, config).start()
    batcher = running.app.state.batcher
    videos = [_video(20 + i) for i in range(6)]

    def send(i):
        body = {"videos": [{"npy": _npy_b64(videos[i].numpy())}], "prompts": ["x"], "think": False}
        return requests.post(f"{running.url}/score", json=body, timeout=30)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(send, i) for i in range(6)]
        deadline = time.monotonic() + 20
        while sum(len(q) for q in batcher.queues.values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(len(q) for q in batcher.queues.values()) == 6
        started = time.monotonic()
        running.stop()  # what SIGTERM does: stop accepting, let in-flight requests finish
        responses = [f.result() for f in futures]
    assert time.monotonic() - started < 2.0  # the queue is flushed at once, not after max_wait_ms
    assert [r.status_code for r in responses] == [200] * 6
    expected = model.score(videos, ["x"] * 6, think=False).rewards
    np.testing.assert_allclose([r.json()["rewards"][0] for r in responses], expected.numpy(), atol=1e-5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{running.url}/health", timeout=2)


def test_cli_serves_the_tiny_model_and_refuses_open_binds():
    command = ["-m", "descore_plugin.cli", "serve"]
    env = offline_env()
    env.pop("DESCORE_MODEL", None)
    env.pop("DESCORE_API_KEY", None)
    refused = run_python(command + ["--host", "0.0.0.0"], env=env, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--api-key" in refused.stderr
    port = free_port()
    # two replicas (one per listed device) behind the one port
    process = start_python(
        command + ["--port", str(port), "--log-level", "warning", "--devices", "cpu,cpu"], env=env, stdout=None
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        out = RemoteReward(f"http://127.0.0.1:{port}").score([_video(0)], ["x"], think=True, max_new_tokens=4)
        assert out.rewards.shape == (1,) and isinstance(out.cots[0], str)
        assert requests.get(f"http://127.0.0.1:{port}/info", timeout=5).json()["replicas"] == ["cpu", "cpu"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal so that the exit status says what stopped it
    assert process.returncode in (0, -signal.SIGTERM) and "Traceback" not in stderr
    assert "serving the built-in tiny model" in stderr


# ---------------------------------------------------------------------- load
def test_load_sixteen_clients(model, server):
    """16 concurrent clients, 256 requests of 1-4 videos of mixed sizes, some corrupt, a few think=True: every
    request answered, every video scored exactly once, each reward equal to in-process `score` of that video alone
    (1e-5), each CoT identical."""
    shapes = [(8, 56, 56), (8, 48, 64), (12, 56, 56), (16, 40, 40), (10, 64, 48)]
    pool_videos = [_video(100 + i, *shapes[i % len(shapes)]) for i in range(15)]
    prompts = ["a red square moving right", "a blue circle", "a green square moving up on a white background"]
    local_no_think = {
        (v, p): float(model.score([pool_videos[v]], [prompts[p]], think=False).rewards[0])
        for v in range(len(pool_videos))
        for p in range(3)
    }
    think_cases = [(v, 0) for v in range(0, 15, 3)]
    local_think = {}
    for v, p in think_cases:
        out = model.score([pool_videos[v]], [prompts[p]], think=True, max_new_tokens=8)
        local_think[(v, p)] = (float(out.rewards[0]), out.cots[0])
    encoded = [_npy_b64(v.numpy()) for v in pool_videos]

    rng = random.Random(0)
    requests_plan = []
    for r in range(256):
        think = r % 16 == 5
        items = []
        for _ in range(rng.randint(1, 4)):
            if think:
                items.append(rng.choice(think_cases))
            elif rng.random() < 0.08:
                items.append(None)  # corrupt
            else:
                items.append((rng.randrange(15), rng.randrange(3)))
        requests_plan.append((r, think, items))
    scored_before = server.app.state.batcher.videos_scored
    merged_before = server.app.state.batcher.duplicates_merged
    session_local = threading.local()

    def send(plan):
        r, think, items = plan
        session = getattr(session_local, "session", None) or requests.Session()
        session_local.session = session
        body = {
            "videos": [
                {"npy": encoded[i[0]]} if i else {"mp4": base64.b64encode(b"junk%d" % r).decode()} for i in items
            ],
            "prompts": [prompts[i[1]] if i else "junk" for i in items],
            "think": think,
            "max_new_tokens": 8,
        }
        return r, session.post(f"{server.url}/score", json=body, timeout=60)

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = dict(pool.map(send, requests_plan))
    elapsed = time.monotonic() - started
    assert sorted(answers) == list(range(256))
    good = 0
    for r, think, items in requests_plan:
        response = answers[r]
        assert response.status_code == 200, response.text
        reply = response.json()
        assert len(reply["rewards"]) == len(items)
        for j, item in enumerate(items):
            if item is None:
                assert reply["rewards"][j] is None and reply["errors"][j].startswith(f"videos[{j}]: cannot decode")
                continue
            good += 1
            assert reply["errors"][j] is None
            if think:
                reward, cot = local_think[item]
                assert reply["cots"][j] == cot
            else:
                reward = local_no_think[item]
            assert reply["rewards"][j] == pytest.approx(reward, abs=1e-5), (r, j, item)
    stats = requests.get(f"{server.url}/info").json()
    # nothing lost, nothing scored twice: every good video was scored or answered by an identical one (queued or
    # recent), and each distinct (video, prompt, mode) was scored at most once
    scored = stats["videos_scored"] - scored_before
    assert scored + stats["duplicates_merged"] - merged_before == good
    distinct = {(think, item) for _, think, items in requests_plan for item in items if item is not None}
    assert scored <= len(distinct)
    assert max(int(size) for size in stats["batch_sizes"]) > 1  # concurrent requests were batched together
    print(
        f"load test: 256 requests, {good} videos ({scored} scored) in {elapsed:.1f} s; batch sizes "
        f"{stats['batch_sizes']}"
    )
