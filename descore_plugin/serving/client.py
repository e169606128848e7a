"""Clients of `descore serve`: `RemoteReward`, a drop-in for `DeScoreReward.score`, and the Flow-GRPO factory.

    from descore_plugin import RemoteReward
    rm = RemoteReward("http://rm-node:8000", api_key=os.environ.get("DESCORE_API_KEY"))
    out = rm.score(videos, prompts, think=False)    # the same RewardOutput as DeScoreReward.score

Several servers (one per GPU) are one comma-separated URL or a list: each call's chunks of `batch_size` videos are
sent to them round-robin, concurrently.

Videos travel losslessly: files as their own bytes (the server decodes them exactly as `load_video` does here),
in-memory frames as uint8 .npy arrays (float frames in [0, 1] are rounded to uint8 here exactly as `load_video`
rounds them), so a served reward equals the in-process one.
"""

import base64
import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from descore_plugin.data.video import (
    Video,
    VideoInputError,
    _check_frame_array,
    _check_pil_frames,
    _to_uint8,
    split_videos,
)
from descore_plugin.modeling.model import RewardOutput


class RemoteError(RuntimeError):
    """The server refused a request (HTTP 4xx/5xx) or could not be reached; the message says which and why."""


def _split_urls(url) -> list[str]:
    urls = [u.strip() for u in url.split(",")] if isinstance(url, str) else [str(u).strip() for u in url]
    urls = [u.rstrip("/") for u in urls if u]
    if not urls:
        raise ValueError("RemoteReward: no server URL given")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise ValueError(f"RemoteReward: {u!r} is not an http:// or https:// URL")
    return urls


def encode_video(source, name: str) -> dict:
    """One video as the /score request carries it: {"mp4": base64 file bytes} for a path, {"npy": base64 uint8
    (F, 3, H, W) array} for frames. Errors name the video as `load_video` does."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = f"{name} ({path})"
        if not path.is_file():
            raise VideoInputError(f"{label}: file not found.")
        return {"mp4": base64.b64encode(path.read_bytes()).decode("ascii")}
    if isinstance(source, Video):
        raise VideoInputError(f"{name} is an already-sampled Video; send its source (path or frames) to a server")
    if isinstance(source, (list, tuple)):
        images = _check_pil_frames(source, name)
        frames = np.stack([np.asarray(image.convert("RGB")) for image in images])  # (F, H, W, 3)
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        frames = _to_uint8(_check_frame_array(source, name)).numpy()  # (F, 3, H, W), rounded like load_video
    else:
        raise VideoInputError(
            f"{name} has unsupported type {type(source).__name__}; pass a path, a list of PIL "
            "images, or an array/tensor of shape (F, 3, H, W) or (F, H, W, 3)."
        )
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames), allow_pickle=False)
    return {"npy": base64.b64encode(buffer.getvalue()).decode("ascii")}


class RemoteReward:
    """A DeScore reward model served by `descore serve`, with `DeScoreReward.score`'s signature and output.

    url: "http://host:port", several comma-separated, or a list (one server per GPU).
    api_key: the server's --api-key (sent as `Authorization: Bearer KEY`); default $DESCORE_API_KEY.
    timeout: seconds to wait for one request (a think request on a long CoT takes a while).
    """

    def __init__(self, url, api_key: str | None = None, timeout: float = 600.0, max_concurrency: int | None = None):
        try:
            import httpx
        except ImportError:
            raise ImportError("RemoteReward needs httpx: pip install 'descore-plugin[serve]'") from None

        self.urls = _split_urls(url)
        api_key = api_key if api_key is not None else os.environ.get("DESCORE_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers, timeout=timeout, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
        )
        self.max_concurrency = max_concurrency or 2 * len(self.urls)

    def __repr__(self):
        return f"RemoteReward({','.join(self.urls)!r})"

    def close(self):
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def health(self) -> bool:
        """True when every server answers GET /health."""
        try:
            return all(self._client.get(f"{u}/health", timeout=5.0).status_code == 200 for u in self.urls)
        except Exception:
            return False

    def info(self) -> list[dict]:
        return [self._get_json(f"{u}/info") for u in self.urls]

    def _get_json(self, url):
        import httpx

        try:
            response = self._client.get(url)
        except httpx.HTTPError as error:
            raise RemoteError(f"{url}: {type(error).__name__}: {error}") from None
        return self._check(url, response).json()

    @staticmethod
    def _check(url, response):
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except Exception:
                detail = response.text
            raise RemoteError(f"{url}: HTTP {response.status_code}: {detail}")
        return response

    def _post(self, url, payload):
        import httpx

        try:
            response = self._client.post(url, json=payload)
        except httpx.HTTPError as error:
            raise RemoteError(f"{url}: {type(error).__name__}: {error}") from None
        return self._check(url, response).json()

    def score(
        self,
        videos,
        prompts,
        think: bool = True,
        cots: list | None = None,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        video_fps: float | None = None,
        fps: float | None = None,
        num_frames: int | None = None,
        instructions: list | None = None,
        on_error: str = "raise",
        **generation,
    ) -> RewardOutput:
        """Score videos on the server(s); same arguments and `RewardOutput` as `DeScoreReward.score`.

        batch_size: videos per request (the server batches requests together on its own).
        seed: accepted for signature compatibility; the server decodes greedily, so there is nothing to seed.
        instructions: per video, a full judge instruction replacing the template, as in-process.
        video_fps: the source frame rate of in-memory frames (default 16, Wan-2.1's), as in-process; sent with
            the frames. Files carry their own rate (passing it with a file fails that video, as in-process).
        fps / num_frames: not served (the server samples frames with its model's settings); passing one raises.
        on_error: "raise" (as in-process: the first failed video raises, named as locally) or "nan" (a failed video
            gets reward NaN, and its reason in `parse_errors`).
        generation: sampling options are not served (the server generates greedily); passing any raises."""
        if generation:
            raise TypeError(
                f"RemoteReward.score: {sorted(generation)} not supported: the server generates CoTs "
                "greedily (the official setting); score in-process to sample"
            )
        overrides = [name for name, value in (("fps", fps), ("num_frames", num_frames)) if value is not None]
        if overrides:
            raise TypeError(
                f"RemoteReward.score: {overrides} not served: the server samples frames with its model's "
                "settings (serve a model configured so, or score in-process)"
            )
        if on_error not in ("raise", "nan"):
            raise ValueError(f"on_error={on_error!r}: choose 'raise' or 'nan'")
        sources = split_videos(videos)
        prompts = [prompts] * len(sources) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(sources):
            raise ValueError(f"got {len(sources)} videos but {len(prompts)} prompts: pass one prompt per video")
        if cots is not None and len(cots) != len(sources):
            raise ValueError(f"got {len(sources)} videos but {len(cots)} cots: pass one CoT (or None) per video")
        if instructions is not None and (isinstance(instructions, str) or len(instructions) != len(sources)):
            raise ValueError(
                f"got {len(sources)} videos but {len(instructions)} instructions: pass a list with one "
                "instruction (or None) per video"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        names = [str(s) if isinstance(s, (str, Path)) else None for s in sources]
        encoded = [encode_video(source, f"videos[{i}]") for i, source in enumerate(sources)]
        starts = list(range(0, len(sources), batch_size))

        def send(k, start):
            stop = start + batch_size
            payload = {"videos": encoded[start:stop], "prompts": prompts[start:stop], "think": bool(think)}
            if cots is not None:
                payload["cots"] = list(cots[start:stop])
            if max_new_tokens is not None:
                payload["max_new_tokens"] = int(max_new_tokens)
            if instructions is not None:
                payload["instructions"] = list(instructions[start:stop])
            if video_fps is not None:
                payload["video_fps"] = float(video_fps)
            return self._post(f"{self.urls[k % len(self.urls)]}/score", payload)

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(starts))) as pool:
            replies = list(pool.map(send, range(len(starts)), starts))
        return self._assemble(replies, starts, names, on_error)

    @staticmethod
    def _assemble(replies, starts, names, on_error) -> RewardOutput:
        def gather(key):
            if replies[0].get(key) is None:
                return None
            return [value for reply in replies for value in reply[key]]

        errors = []
        for start, reply in zip(starts, replies):
            for j, error in enumerate(reply["errors"]):
                if error is not None:  # the server names videos by their place in its request: rename them here
                    prefix, i = f"videos[{j}]", start + j
                    label = f"videos[{i}]" + (f" ({names[i]})" if names[i] else "")
                    error = label + error[len(prefix) :] if error.startswith(prefix) else f"{label}: {error}"
                errors.append(error)
        failed = [e for e in errors if e is not None]
        if failed and on_error == "raise":
            raise VideoInputError(
                failed[0] + (f" (and {len(failed) - 1} more failed videos)" if len(failed) > 1 else "")
            )
        rewards = torch.tensor([math.nan if r is None else r for r in gather("rewards")], dtype=torch.float32)
        out = RewardOutput(rewards=rewards)
        cots = gather("cots")
        if cots is not None:
            out.cots = cots
            out.dimensional_scores = gather("dimensional_scores")
            out.overall_scores = gather("overall_scores")
            out.parse_errors = [e if e is not None else p for e, p in zip(errors, gather("parse_errors"))]
        elif failed:
            out.parse_errors = errors
        uncertainty = gather("uncertainty")
        if uncertainty is not None:
            out.uncertainty = torch.tensor([math.nan if u is None else u for u in uncertainty], dtype=torch.float32)
            width = next((len(p) for p in gather("bin_probs") if p is not None), 0)
            out.bin_probs = torch.tensor(
                [p if p is not None else [math.nan] * width for p in gather("bin_probs")], dtype=torch.float32
            )
        return out

    def reward(self, videos, prompts, metadata=None, think: bool = True, **kwargs):
        """The Flow-GRPO signature, as `DeScoreReward.reward`."""
        out = self.score(videos, prompts, think=think, **kwargs)
        info = {
            "cots": out.cots,
            "dimensional_scores": out.dimensional_scores,
            "overall_scores": out.overall_scores,
            "parse_errors": out.parse_errors,
        }
        if out.uncertainty is not None:
            info["uncertainty"] = out.uncertainty.tolist()
        return out.rewards.tolist(), info


def descore_reward_remote(
    url,
    think: bool = True,
    batch_size: int = 8,
    api_key: str | None = None,
    max_new_tokens: int | None = None,
    on_error: str = "nan",
    timeout: float = 600.0,
    name: str = "descore",
):
    """Flow-GRPO reward factory for a served DeScore: `fn(images, prompts, metadata) -> (scores, info)`, the
    in-process factory (`integrations.flow_grpo.descore_reward`) over a `RemoteReward`: the same `name` choice and
    the same `info` (every named score, the CoTs, the parse errors). `images`, the (B, F, C, H, W) float tensor in
    [0, 1] the Wan pipeline decodes, is sent as uint8 arrays. A video the server could not score gets NaN
    (on_error="nan"; "raise" stops instead)."""
    from descore_plugin.integrations.flow_grpo import descore_reward

    client = RemoteReward(url, api_key=api_key, timeout=timeout)
    return descore_reward(
        None,
        model=client,
        think=think,
        batch_size=batch_size,
        name=name,
        max_new_tokens=max_new_tokens,
        on_error=on_error,
    )
