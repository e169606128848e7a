"""The peers' real clients against a live `descore serve` on 127.0.0.1 (tiny model): OpenRLHF v0.9.0's
remote_rm_utils.py and v0.11.0's agent.py, Flow-Factory's my_reward_remote.py and flow_grpo's reward-server clients,
vendored verbatim in tests/peers/ at pinned commits (see each file's header) and run as they are; only the tokens a
policy would generate and the URL of flow_grpo's hard-coded server are supplied here. Oracle: in-process
`DeScoreReward.score` on the same frames."""

import base64
import io
import json
import math
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import requests
import torch
from conftest import PROMPTS
from peers import loader

from descore_plugin import DeScoreReward
from descore_plugin.serving.server import BackgroundServer, ServeConfig

JUDGE = "<|im_start|>user\nJudge the video, then score it.<|im_end|>\n<|im_start|>assistant\n"
COTS = ["The square is red and moves right.", "No circle is visible.", "The background is white."]


def _video(seed, frames=8, size=32) -> np.ndarray:
    """(F, H, W, 3) uint8."""
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def _npy(frames) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(frames), allow_pickle=False)
    return buffer.getvalue()


def _label(frames, prompt, **extra) -> str:
    return json.dumps({"video": {"npy": base64.b64encode(_npy(frames)).decode()}, "prompt": prompt, **extra})


class Slow:
    """A model replica whose every batch takes `delay` seconds longer: stands for a real model's scoring time."""

    def __init__(self, model, delay):
        self.model, self.delay = model, delay

    def score(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.model.score(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])


@pytest.fixture(scope="module")
def server(model):
    """The default policy (--on-bad-video error), small batches so that big requests go in several."""
    config = ServeConfig(port=0, allow_pickle=True, max_batch_size=2, max_wait_ms=5, max_new_tokens=6)
    with BackgroundServer(model, config) as running:
        yield running


@pytest.fixture(scope="module")
def nan_server(model):
    config = ServeConfig(port=0, allow_pickle=True, max_wait_ms=5, on_bad_video="nan", think=False)
    with BackgroundServer(model, config) as running:
        yield running


def _stats(server):
    return requests.get(f"{server.url}/info", timeout=10).json()


# ---------------------------------------------------------------------- OpenRLHF
def test_openrlhf_v0_9_0_sends_the_rollout_batch_in_one_request(model, server):
    """v0.9.0 posts each URL's whole slice of the rollout batch at once: 40 samples (over the old 64-video limit in
    spirit: any size up to --max-videos-per-request) are scored in micro-batches of 2, never all queued at once."""
    openrlhf = loader.openrlhf_v0_9_0()
    tokenizer = model.tokenizer
    count = 40
    videos = [_video(i) for i in range(count)]
    texts = [PROMPTS[i % 3] for i in range(count)]
    cots = [COTS[i % 3] + f" Sample {i}." for i in range(count)]
    # the experience maker: batch_decode(prompt + response ids + end of turn, skip_special_tokens=False)
    prompt_ids = tokenizer(JUDGE, add_special_tokens=False).input_ids
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    queries = tokenizer.batch_decode(
        [prompt_ids + tokenizer(c, add_special_tokens=False).input_ids + [end] for c in cots], skip_special_tokens=False
    )
    labels = [_label(v, t) for v, t in zip(videos, texts)]
    labels[3] = _label(videos[3], texts[3], video_fps=4)  # a per-sample source frame rate
    before = _stats(server)
    remote = openrlhf.RemoteRewardModel.remote(
        SimpleNamespace(micro_rollout_batch_size=8), [f"{server.url}/get_reward"]
    )
    (reply,) = remote.get_rewards.remote(queries, [JUDGE] * count, labels)
    expected = model.score(videos, texts, cots=cots).rewards
    expected[3] = model.score([videos[3]], [texts[3]], cots=[cots[3]], video_fps=4).rewards[0]
    torch.testing.assert_close(torch.tensor(reply["rewards"]), expected, atol=1e-5, rtol=0)
    assert reply["scores"] == reply["rewards"] and reply["extra_logs"] == {"descore_failed": [0.0] * count}
    after = _stats(server)
    assert after["videos_scored"] - before["videos_scored"] == count
    assert max(int(size) for size in after["batch_sizes"]) <= 2
    assert after["peak_queued"] <= after["window"] < count  # fed to the queue a window at a time
    # two URLs: ceil(40 / 2) each, answers concatenated in order (the second slice is answered from the recent
    # results: nothing is scored twice)
    two = openrlhf.RemoteRewardModel.remote(
        SimpleNamespace(micro_rollout_batch_size=8), [f"{server.url}/get_reward"] * 2
    )
    replies = two.get_rewards.remote(queries, [JUDGE] * count, labels)
    assert [len(r["rewards"]) for r in replies] == [20, 20]
    np.testing.assert_allclose(replies[0]["rewards"] + replies[1]["rewards"], reply["rewards"], atol=1e-6)
    assert _stats(server)["videos_scored"] == after["videos_scored"]


def _engine(tokenizer, response_ids):
    """vLLM's engine as the agent uses it: generate(prompt ids, params) -> .outputs[0].token_ids."""

    class Engine:
        async def generate(self, prompt_token_ids, params, multi_modal_data=None):
            output = SimpleNamespace(token_ids=list(response_ids), finish_reason="stop", logprobs=None)
            return SimpleNamespace(outputs=[output])

    return Engine()


def _execute(agent, tokenizer, cot, label, end, max_length=4096, prompt=JUDGE):
    ids = tokenizer(cot, add_special_tokens=False).input_ids + [end]
    params = SimpleNamespace(max_tokens=len(ids), logprobs=None)
    return loader.run(agent.execute(prompt, label, params, max_length, tokenizer, _engine(tokenizer, ids)))


def test_openrlhf_agent_cuts_the_response_at_any_templates_end_of_turn(model, server, nan_server, tiny_dirs):
    """v0.9.1+ (agent.py): one request per sample, query = decode(prompt + response ids) with the policy's own
    end-of-turn token. Qwen's <|im_end|> and Llama-3's <|eot_id|> both end the CoT; a prompt the trainer truncated
    is not a verbatim part of its query, so that sample is reported, never scored whole."""
    from transformers import AutoTokenizer

    agent = loader.openrlhf_v0_11_0()
    qwen = model.tokenizer
    llama = AutoTokenizer.from_pretrained(tiny_dirs["qwen2_5_vl"])  # the same vocabulary + Llama-3's end of turn
    llama.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    frames = _video(50)
    executor = agent.SingleTurnAgentExecutor(
        remote_rm_url=[f"{server.url}/get_reward", f"{nan_server.url}/get_reward"]
    )  # all to the first URL
    for tokenizer, end_token in ((qwen, "<|im_end|>"), (llama, "<|eot_id|>")):
        end = tokenizer.convert_tokens_to_ids(end_token)
        output = _execute(executor, tokenizer, COTS[0], _label(frames, PROMPTS[0]), end)
        query = tokenizer.decode(output["observation_tokens"], skip_special_tokens=False)
        assert query.endswith(end_token)
        expected = float(model.score([frames], [PROMPTS[0]], cots=[COTS[0]]).rewards[0])
        assert output["reward"] == pytest.approx([expected], abs=1e-5), end_token
        with_end = float(model.score([frames], [PROMPTS[0]], cots=[COTS[0] + end_token]).rewards[0])
        assert abs(with_end - expected) > 1e-4  # the end token left in would have changed the reward
    # a truncated prompt (max_length leaves room for 12 prompt tokens): reported per sample, never scored whole
    end = qwen.convert_tokens_to_ids("<|im_end|>")
    nan_executor = agent.SingleTurnAgentExecutor(remote_rm_url=f"{nan_server.url}/get_reward")
    output = _execute(nan_executor, qwen, COTS[1], _label(frames, PROMPTS[1]), end, max_length=12 + 9)
    assert math.isnan(output["reward"][0]) and output["extra_logs"] == {"descore_failed": [1.0]}
    direct = requests.post(
        f"{nan_server.url}/get_reward",
        timeout=10,
        json={
            "query": [qwen.decode(output["observation_tokens"], skip_special_tokens=False)],
            "prompts": [JUDGE],
            "labels": [_label(frames, PROMPTS[1])],
        },
    ).json()
    assert direct["errors"][0].startswith("query[0]: its prompt is not a verbatim part of its query")
    # under --on-bad-video error the request fails (422, naming the sample): the agent leaves reward None
    before = _stats(server)["videos_scored"]
    output = _execute(executor, qwen, COTS[1], _label(frames, PROMPTS[1]), end, max_length=12 + 9)
    assert output["reward"] is None and _stats(server)["videos_scored"] == before


def test_openrlhf_agent_uses_every_replica_behind_the_first_url(model, tiny_dirs):
    """OpenRLHF >= 0.9.1 sends every sample to the first URL: `--devices a,b` serves two replicas behind it."""
    agent = loader.openrlhf_v0_11_0()
    second = DeScoreReward.from_pretrained(tiny_dirs["qwen2_5_vl"])
    tokenizer = model.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    count = 8
    frames = [_video(60 + i) for i in range(count)]
    expected = model.score(frames, [PROMPTS[0]] * count, cots=[COTS[2]] * count).rewards
    config = ServeConfig(port=0, max_batch_size=2, max_wait_ms=5)
    with BackgroundServer([Slow(model, 0.3), Slow(second, 0.3)], config) as running:
        executor = agent.SingleTurnAgentExecutor(remote_rm_url=f"{running.url}/get_reward")

        async def all_samples():
            import asyncio

            ids = tokenizer(COTS[2], add_special_tokens=False).input_ids + [end]
            params = SimpleNamespace(max_tokens=len(ids), logprobs=None)
            return await asyncio.gather(
                *[
                    executor.execute(JUDGE, _label(f, PROMPTS[0]), params, 4096, tokenizer, _engine(tokenizer, ids))
                    for f in frames
                ]
            )

        outputs = loader.run(all_samples())
        stats = _stats(running)
    torch.testing.assert_close(torch.tensor([o["reward"][0] for o in outputs]), expected, atol=1e-5, rtol=0)
    assert stats["replicas"] == ["cpu", "cpu"] and sum(stats["replica_videos"]) == count
    assert min(stats["replica_videos"]) > 0, stats["replica_videos"]


# ---------------------------------------------------------------------- Flow-Factory
def _flow_factory(url, timeout=60.0):
    flow_factory = loader.flow_factory()
    config = SimpleNamespace(server_url=url, timeout=timeout, retry_attempts=3)
    return flow_factory.RemotePointwiseRewardModel(config, accelerator=None)


def test_flow_factory_chooses_mode_rate_and_key_by_its_base_url(model, server):
    """Flow-Factory only sets `server_url` (it appends /health and /compute, sends no kwargs, no fps, no headers):
    the URL prefixes /no-think, /video_fps/R and /key/KEY carry what it cannot send."""
    videos = [_video(70 + i) for i in range(3)]
    pil = [[PIL.Image.fromarray(frame) for frame in v] for v in videos]
    no_think = _flow_factory(server.url + "/no-think")(prompt=PROMPTS, video=pil).rewards
    torch.testing.assert_close(no_think, model.score(videos, PROMPTS, think=False).rewards, atol=1e-5, rtol=0)
    think = _flow_factory(server.url)(prompt=PROMPTS, video=pil).rewards  # the server's default: think
    expected = model.score(videos, PROMPTS, think=True, max_new_tokens=6).rewards
    torch.testing.assert_close(think, expected, atol=1e-5, rtol=0)
    assert (think - no_think).abs().max() > 1e-4
    slow_rate = _flow_factory(server.url + "/video_fps/4/no-think")(prompt=PROMPTS, video=pil).rewards
    expected = model.score(videos, PROMPTS, think=False, video_fps=4).rewards
    torch.testing.assert_close(slow_rate, expected, atol=1e-5, rtol=0)
    assert (slow_rate - no_think).abs().max() > 1e-4
    # authentication: the key in a path prefix works; a query string breaks Flow-Factory's appended paths
    config = ServeConfig(port=0, api_key="s3cret", think=False)
    with BackgroundServer(model, config) as keyed:
        rewards = _flow_factory(f"{keyed.url}/key/s3cret")(prompt=PROMPTS, video=pil).rewards
        torch.testing.assert_close(rewards, no_think, atol=1e-6, rtol=0)
        with pytest.raises(RuntimeError, match="Cannot connect"):
            _flow_factory(f"{keyed.url}?api_key=s3cret")
        with pytest.raises(RuntimeError, match="401"):
            _flow_factory(keyed.url, timeout=5)(prompt=PROMPTS, video=pil)


def test_flow_factory_bad_video_fails_loudly_or_is_nan_by_policy(model, server, nan_server):
    videos = [_video(80), _video(81, frames=1), _video(82)]  # one frame: an image, not a video
    pil = [[PIL.Image.fromarray(frame) for frame in v] for v in videos]
    with pytest.raises(RuntimeError, match=r"Server error: videos\[1\]: has only 1 frame"):
        _flow_factory(server.url + "/no-think")(prompt=PROMPTS, video=pil)
    rewards = _flow_factory(nan_server.url)(prompt=PROMPTS, video=pil).rewards  # nan_server: --no-think
    assert torch.isnan(rewards[1])
    expected = model.score([videos[0], videos[2]], [PROMPTS[0], PROMPTS[2]], think=False).rewards
    torch.testing.assert_close(rewards[[0, 2]], expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- flow_grpo (reward-server's pickle protocol)
FLOW_GRPO_URL = "http://10.82.120.15:18085"  # unifiedreward_score_remote's hard-coded server


def test_flow_grpo_client_numpy_prompts_pass_and_refusals_are_readable(model, server, capsys):
    """unifiedreward_score_remote pickles `np.array_split(prompts, k)[i]`, a numpy array of str: admitted. It sends
    images, which DeScore does not score: a one-line 422 text that its client prints before failing to unpickle."""
    flow_grpo = loader.flow_grpo()
    images = torch.rand(2, 3, 32, 32)
    with loader.redirect(FLOW_GRPO_URL, server.url):
        with pytest.raises(pickle.UnpicklingError):
            flow_grpo.unifiedreward_score_remote("cpu")(images, PROMPTS[:2], [{}, {}])
    printed = capsys.readouterr().out
    assert "<Response [422]>" in printed and "DeScore scores videos, not images" in printed
    # the same request shape with videos (the adaptation a Wan user makes): numpy prompts, its session and retries
    from requests.adapters import HTTPAdapter, Retry

    session = requests.Session()
    session.mount(
        "http://",
        HTTPAdapter(max_retries=Retry(total=3, backoff_factor=1, status_forcelist=[500], allowed_methods=False)),
    )
    videos = [_video(90), _video(91)]
    prompts = np.array_split(np.array(PROMPTS[:2]), 1)[0]
    assert isinstance(prompts, np.ndarray) and prompts.dtype.kind == "U"
    body = {
        "videos": [_npy(videos[0]), [_jpeg(f) for f in videos[1]]],
        "prompts": prompts,
        "think": False,
        "video_fps": [4, None],
    }
    response = session.post(server.url, data=pickle.dumps(body), timeout=120)
    outputs = pickle.loads(response.content)["outputs"]
    frames_1 = np.stack([np.asarray(PIL.Image.open(io.BytesIO(_jpeg(f)))) for f in videos[1]])
    expected = [
        float(model.score([videos[0]], [PROMPTS[0]], think=False, video_fps=4).rewards[0]),
        float(model.score([frames_1], [PROMPTS[1]], think=False).rewards[0]),
    ]
    np.testing.assert_allclose(outputs, expected, atol=1e-5)


def _jpeg(frame) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(frame).save(buffer, format="JPEG")
    return buffer.getvalue()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


def test_pickle_refusals_and_bad_video_policy(model, server, nan_server, tmp_path):
    marker = tmp_path / "pwned"
    good, bad = _npy(_video(95)), _npy(_video(96, frames=1))
    cases = [
        ({"videos": [_Evil(str(marker))], "prompts": ["x"]}, 400, "refused global io.open"),
        ({"videos": [good], "prompts": np.array([object()], dtype=object)}, 400, "refused"),
        (
            {"videos": [good], "prompts": np.array(["x"]), "extra": np.array([1, None], dtype=object)},
            400,
            "refused a numpy dtype object",
        ),
        ({"videos": [good, bad], "prompts": np.array(["x", "y"])}, 422, "videos[1]: has only 1 frame"),
    ]
    for body, status, message in cases:
        response = requests.post(server.url, data=pickle.dumps(body), timeout=60)
        assert response.status_code == status and message in response.text, response.text
    assert not marker.exists()
    reply = pickle.loads(requests.post(nan_server.url, data=pickle.dumps(cases[-1][0]), timeout=60).content)
    assert math.isnan(reply["outputs"][1]) and reply["errors"][1].startswith("videos[1]")
    assert reply["outputs"][0] == pytest.approx(
        float(model.score([_video(95)], ["x"], think=False).rewards[0]), abs=1e-5
    )


# ---------------------------------------------------------------------- work for nobody
def test_retry_storm_scores_each_video_once_and_gone_clients_are_dropped(model):
    """flow_grpo's client retries POSTs on read timeouts (Retry(total=1000), timeout 120 s). Here 4 clients send
    the same 6 videos with a timeout shorter than the scoring takes and up to 6 tries each: every video is scored
    once, every client ends with the in-process rewards. A client that gives up has its queued videos dropped."""
    from requests.adapters import HTTPAdapter, Retry

    videos = [_video(100 + i) for i in range(6)]
    expected = model.score(videos, ["x"] * 6, think=False).rewards.numpy()
    config = ServeConfig(port=0, allow_pickle=True, max_batch_size=2, max_wait_ms=5, think=False)
    body = pickle.dumps({"videos": [_npy(v) for v in videos], "prompts": ["x"] * 6})
    with BackgroundServer(Slow(model, 0.25), config) as running:

        def client(_):
            session = requests.Session()
            session.mount(
                "http://",
                HTTPAdapter(
                    max_retries=Retry(total=6, backoff_factor=0, status_forcelist=[500], allowed_methods=False)
                ),
            )
            return pickle.loads(session.post(running.url, data=body, timeout=0.6).content)["outputs"]

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(client, range(4)))
        for outputs in answers:
            np.testing.assert_allclose(outputs, expected, atol=1e-5)
        stats = _stats(running)
        assert stats["videos_scored"] == 6, stats  # 4 clients x up to 6 tries x 6 videos, scored once each
        # a client that gives up: 8 new videos take ~1 s; it leaves after 0.3 s and does not retry
        dropped_before = stats["videos_dropped"]
        others = pickle.dumps({"videos": [_npy(_video(200 + i)) for i in range(8)], "prompts": ["y"] * 8})
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(running.url, data=others, timeout=0.3)
        deadline = time.monotonic() + 10
        while _stats(running)["queued"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        stats = _stats(running)
    scored = stats["videos_scored"] - 6
    dropped = stats["videos_dropped"] - dropped_before
    assert scored + dropped == 8 and dropped >= 4, stats


def test_prefixes_and_per_video_rates_on_score(model, server):
    """/score takes video_fps per video (inside the video's object) and per request; a file refuses one."""
    frames = _video(110)
    spec = {"npy": base64.b64encode(_npy(frames)).decode()}
    reply = requests.post(
        f"{server.url}/no-think/score",
        timeout=60,
        json={"videos": [dict(spec, video_fps=4), spec], "prompts": ["x", "x"]},
    ).json()
    expected = [
        float(model.score([frames], ["x"], think=False, video_fps=4).rewards[0]),
        float(model.score([frames], ["x"], think=False).rewards[0]),
    ]
    assert reply["rewards"] == pytest.approx(expected, abs=1e-5) and reply["cots"] is None
    for bad, field in (
        ({"npy": spec["npy"], "video_fps": -1}, "videos[0].video_fps"),
        ({"npy": spec["npy"], "fps": 4}, "videos[0]"),
    ):
        response = requests.post(f"{server.url}/score", json={"videos": [bad], "prompts": ["x"]}, timeout=60)
        assert response.status_code == 422 and field in response.json()["detail"]
    response = requests.post(f"{server.url}/video_fps/abc/score", json={"videos": [spec], "prompts": ["x"]})
    assert response.status_code == 422 and "/video_fps/abc" in response.json()["detail"]
    assert requests.get(f"{server.url}/think/key/anything/health", timeout=5).json() == {"status": "ok"}


@pytest.mark.parametrize(
    "template, end",
    [
        ("<|im_start|>user\nJudge.<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        ("<start_of_turn>model\n", "<end_of_turn>"),
        ("<|assistant|>\n", "<|end|>"),
        ("[INST] Judge. [/INST]", "</s>"),
        ("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
    ],
)
def test_response_locator_knows_the_common_end_of_turn_tokens(template, end):
    from descore_plugin.serving.protocols import ResponseLocator

    locate = ResponseLocator()
    cot = "The square is red. <answer>{}</answer>"
    for padding in ("", "<pad><pad>", "<|endoftext|>"):
        assert locate(padding + template + cot + end + padding, template) == (cot, None)
    assert locate(template + cot, template) == (cot, None)  # cut by the length limit: no end token
    response, why = locate(template[3:] + cot + end, template)  # a prompt truncated from the left
    assert response is None and "not a verbatim part" in why
    assert locate(template + cot + end, None)[0] is None
