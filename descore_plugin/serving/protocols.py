"""The endpoints of `descore serve`, one group per client, each with the request and reply shapes that client uses.

    POST /score        native JSON (RemoteReward)                          add_native
    POST /compute      Flow-Factory's RemotePointwiseRewardModel           add_flow_factory
    POST /get_reward   OpenRLHF's --remote_rm_url / --reward.remote_url    add_openrlhf
    POST /             yifan123/reward-server's pickle protocol (flow_grpo) add_reward_server (--allow-pickle)

A video that cannot be scored: /score answers per video (reward null + its error; RemoteReward raises or gives NaN
as asked). The peers' clients cannot handle a missing score (none of OpenRLHF, Flow-Factory or flow_grpo filters
NaN: one NaN poisons its group's advantages), so on their endpoints `--on-bad-video error` (the default) fails the
request with a message naming the file or sample, and `--on-bad-video nan` answers NaN for it instead.
"""

import json
import logging
import math
import pickle

import numpy as np

from descore_plugin.serving.decoding import RequestError, check_video_fps, describe, safe_unpickle

logger = logging.getLogger(__name__)


def _nan_json(content):
    """JSON that may hold NaN (Python's json, requests, httpx and aiohttp read it): "no score" for a failed video."""
    from fastapi.responses import Response

    return Response(json.dumps(content, allow_nan=True), media_type="application/json")


def _failures(results: list, rename=None) -> list[str]:
    errors = [r["error"] for r in results if r.get("error") is not None]
    return [rename(e) for e in errors] if rename else errors


def _bad_input_message(failed: list[str], total: int) -> str:
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    return (
        f"{failed[0]}{more}: {len(failed)} of {total} samples could not be scored, so this request gets no "
        "rewards (--on-bad-video error; the server's --on-bad-video nan answers NaN for them instead)"
    )


# ---------------------------------------------------------------------- native JSON: RemoteReward
def add_native(app, service):
    """POST /score
    in:  {"videos": [{"mp4": b64} | {"npy": b64 uint8 (F,3,H,W)|(F,H,W,3)} | {"path": str}, each with an optional
          "video_fps"], "prompts": str | [str], "think": bool, "cots": [str|null], "max_new_tokens": int,
          "instructions": [str|null], "video_fps": number | [number|null]}   (video_fps: frames' source rate)
    out: {"rewards": [float|null], "errors": [str|null], "cots", "dimensional_scores", "overall_scores",
          "parse_errors" (null for no-think), "uncertainty", "bin_probs" (distribution head only)}"""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    known = {"videos", "prompts", "think", "cots", "max_new_tokens", "instructions", "video_fps"}

    @app.post("/score")
    async def score(request: Request):
        data = await service.read_json(request)
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(422, f"unknown fields {unknown}; known: {', '.join(sorted(known))}")
        specs, prompts = data.get("videos"), data.get("prompts")
        if not isinstance(specs, list) or not specs:
            raise RequestError(422, "videos: expected a non-empty list")
        prompts = [prompts] * len(specs) if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list):
            raise RequestError(422, "prompts: expected a string or a list of strings")
        think = service.think(request, data.get("think"))
        cots, max_new_tokens = data.get("cots"), data.get("max_new_tokens")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise RequestError(422, f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
        if cots is not None:
            if not isinstance(cots, list) or len(cots) != len(specs):
                raise RequestError(422, f"cots: expected a list of {len(specs)} strings (or nulls), one per video")
            if any(c is not None and not isinstance(c, str) for c in cots):
                raise RequestError(422, "cots: every entry must be a string or null")
        instructions = data.get("instructions")
        if instructions is not None and (
            not isinstance(instructions, list)
            or len(instructions) != len(specs)
            or any(i is not None and not isinstance(i, str) for i in instructions)
        ):
            raise RequestError(422, f"instructions: expected a list of {len(specs)} strings (or nulls), one per video")
        video_fps = service.video_fps(request, data.get("video_fps"), len(specs))
        mode = "cots" if cots is not None else ("think" if think else "no-think")
        results = await service.score_videos(
            request, specs, prompts, mode, cots, max_new_tokens, instructions=instructions, video_fps=video_fps
        )
        with_cots = mode != "no-think"
        distribution = service.model.config.head == "distribution"
        return JSONResponse(
            {
                "rewards": [r.get("reward") for r in results],
                "errors": [r["error"] for r in results],
                "cots": [r.get("cot") for r in results] if with_cots else None,
                "dimensional_scores": [r.get("dimensional_scores") for r in results] if with_cots else None,
                "overall_scores": [r.get("overall_score") for r in results] if with_cots else None,
                "parse_errors": [r.get("parse_error") for r in results] if with_cots else None,
                "uncertainty": [r.get("uncertainty") for r in results] if distribution else None,
                "bin_probs": [r.get("bin_probs") for r in results] if distribution else None,
            }
        )


# ---------------------------------------------------------------------- Flow-Factory
def add_flow_factory(app, service):
    """GET {server_url}/health, then POST {server_url}/compute (X-GenGroup/Flow-Factory, my_reward_remote.py)
    in:  {"prompt": [str], "image": null, "video": [[b64 PNG frame, ...], ...], "condition_images": null,
          "condition_videos": null}; never "kwargs" or a frame rate from Flow-Factory itself, so the mode and the
          rate come from the URL prefix (/no-think, /video_fps/R) or the server's default; other clients may add
          "kwargs": {"think": bool} and "video_fps": number | [number].
    out: {"rewards": [float], "error": null, "errors": [null, ...]}; a failed video: {"rewards": null, "error":
          "videos[i]: ..."} with HTTP 200, which Flow-Factory raises as `RuntimeError("Server error: ...")` (a 4xx
          would reach its user only as "Failed to connect", after 3 retries); --on-bad-video nan: NaN for it."""
    from fastapi import Request

    @app.post("/compute")
    async def compute(request: Request):
        data = await service.read_json(request)
        videos, prompts = data.get("video"), data.get("prompt")
        if not videos:
            message = "DeScore scores videos: send 'video' (a list of videos, each a list of base64 frames)" + (
                "; 'image' inputs are not scored" if data.get("image") else ""
            )
            raise RequestError(422, message)
        if not isinstance(videos, list) or not isinstance(prompts, list):
            raise RequestError(422, "video and prompt must be lists")
        kwargs = data.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise RequestError(422, f"kwargs: expected an object, got {describe(kwargs)}")
        think = service.think(request, kwargs.get("think"), "kwargs.think")
        rate = data.get("video_fps", kwargs.get("video_fps"))
        video_fps = service.video_fps(request, rate, len(videos))
        results = await service.score_videos(
            request,
            videos,
            prompts,
            "think" if think else "no-think",
            decode=service.decoder.from_frames,
            video_fps=video_fps,
        )
        failed = _failures(results)
        if failed and service.config.on_bad_video == "error":
            message = _bad_input_message(failed, len(results))
            logger.warning("/compute: %s", message)
            return _nan_json({"rewards": None, "error": message, "errors": [r["error"] for r in results]})
        return _nan_json(
            {
                "rewards": [r.get("reward", math.nan) for r in results],
                "error": None,
                "errors": [r["error"] for r in results],
            }
        )


# ---------------------------------------------------------------------- OpenRLHF
# End-of-turn and end-of-text tokens of the common chat templates: the policy's own one ends its response in
# `query` (OpenRLHF decodes with skip_special_tokens=False), and padding may follow it.
END_OF_TURN = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
    "<end_of_turn>",
    "<eos>",
    "<|end|>",
    "<|END_OF_TURN_TOKEN|>",
    "<｜end▁of▁sentence｜>",
    "<|return|>",
    "<|im_sep|>",
)
PADDING = ("<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>", "<|end_of_text|>", "<|pad|>", "[PAD]")


class ResponseLocator:
    """Cuts the policy's response (the CoT to score) out of OpenRLHF's `query` = decode(prompt + response ids).

    The response starts right after the first verbatim occurrence of the sample's prompt and ends at the first
    end-of-turn token (any of `END_OF_TURN` or the scoring tokenizer's own); trailing padding is dropped. A sample
    whose prompt is not a verbatim part of its query (e.g. truncated by the trainer) has no locatable response: it
    is reported, never scored whole."""

    def __init__(self, tokenizer=None, eos_ids=()):
        own = set()
        if tokenizer is not None:
            own = {tokenizer.eos_token, *(tokenizer.decode([i]) for i in eos_ids)}
        self.ends = tuple(sorted({t for t in (*END_OF_TURN, *own) if t}, key=len, reverse=True))
        pads = {*PADDING, getattr(tokenizer, "pad_token", None)} if tokenizer is not None else set(PADDING)
        self.pads = tuple(sorted({t for t in pads if t}, key=len, reverse=True))

    def __call__(self, query: str, prompt) -> tuple[str | None, str | None]:
        """(response, None), or (None, why it cannot be located)."""
        if not isinstance(prompt, str) or not prompt:
            return None, "no prompt came with this sample, so its response cannot be told apart from the prompt"
        start = query.find(prompt)
        if start < 0:
            return None, (
                "its prompt is not a verbatim part of its query (truncated by the trainer, or decoded "
                "differently), so its response cannot be located"
            )
        response = query[start + len(prompt) :]
        stops = [i for i in (response.find(t) for t in self.ends) if i >= 0]
        if stops:
            response = response[: min(stops)]
        while response.endswith(self.pads):
            response = response[: -len(next(t for t in self.pads if response.endswith(t)))]
        return response, None


def add_openrlhf(app, service):
    """POST {--remote_rm_url} (v0.9.0 and earlier: one request per URL with its whole slice of the rollout batch;
    v0.9.1 and later, flag --reward.remote_url from v0.10.2: one request per sample, to the first URL)
    in:  {"query": [decode(prompt + response)], "prompts": [str], "labels": [label]}, each label
          {"video": <path | {"mp4"|"npy": b64}>, "prompt": <the video's text prompt>, "video_fps": <optional>} or
          that object as a JSON string; the response (see ResponseLocator) is the CoT DeScore's head reads.
    out: {"rewards": [float], "scores": [float], "extra_logs": {"descore_failed": [0.|1.]}, "errors": [...]};
          a sample that cannot be scored: HTTP 422 naming it (OpenRLHF retries, then stops the step / leaves that
          sample without a reward), or with --on-bad-video nan, NaN and descore_failed 1 for it."""
    from fastapi import Request

    locate = ResponseLocator(service.model.tokenizer, service.model._eos_ids())

    @app.post("/get_reward")
    async def get_reward(request: Request):
        data = await service.read_json(request)
        queries, prompts, labels = data.get("query"), data.get("prompts"), data.get("labels")
        if not isinstance(queries, list) or not isinstance(labels, list) or len(labels) != len(queries):
            raise RequestError(
                422,
                "query and labels must be lists of equal length; each label holds the video and "
                'its text prompt: {"video": ..., "prompt": ...}',
            )
        if prompts is not None and (not isinstance(prompts, list) or len(prompts) != len(queries)):
            raise RequestError(422, "prompts must be a list as long as query")
        count = len(queries)
        default_fps = service.video_fps(request, data.get("video_fps"), count)
        specs, texts, cots, rates, located, results = [], [], [], [], [], [None] * count
        for i, (query, label) in enumerate(zip(queries, labels)):
            if isinstance(label, str):
                try:
                    label = json.loads(label)
                except ValueError:
                    raise RequestError(422, f"labels[{i}]: not a JSON object: {label[:80]!r}") from None
            if not isinstance(label, dict) or "video" not in label or not isinstance(label.get("prompt"), str):
                raise RequestError(422, f'labels[{i}]: expected {{"video": ..., "prompt": str}}, got {describe(label)}')
            if not isinstance(query, str):
                raise RequestError(422, f"query[{i}]: expected a string")
            response, why = locate(query, prompts[i] if prompts is not None else None)
            if response is None:
                results[i] = {"error": f"query[{i}]: {why}"}
                continue
            rate = label.get("video_fps")
            located.append(i)
            specs.append(label["video"])
            texts.append(label["prompt"])
            cots.append(response)
            rates.append(check_video_fps(rate, f"labels[{i}].video_fps") if rate is not None else default_fps[i])
        if specs:
            scored = await service.score_videos(request, specs, texts, "cots", cots, video_fps=rates)
            for i, j, result in zip(located, range(len(located)), scored):
                if result.get("error") is not None:  # name the sample as OpenRLHF knows it
                    result = dict(
                        result,
                        error=f"labels[{i}].video" + result["error"][len(f"videos[{j}]") :]
                        if result["error"].startswith(f"videos[{j}]")
                        else result["error"],
                    )
                results[i] = result
        failed = _failures(results)
        if failed and service.config.on_bad_video == "error":
            message = _bad_input_message(failed, count)
            logger.warning("/get_reward: %s", message)
            raise RequestError(422, message)
        rewards = [r.get("reward", math.nan) for r in results]
        return _nan_json(
            {
                "rewards": rewards,
                "scores": rewards,
                "extra_logs": {"descore_failed": [float(r["error"] is not None) for r in results]},
                "errors": [r["error"] for r in results],
            }
        )


# ---------------------------------------------------------------------- yifan123/reward-server (flow_grpo)
def _text(status: int, message: str):
    from fastapi.responses import Response

    return Response(message.encode(), status_code=status, media_type="text/plain; charset=utf-8")


def add_reward_server(app, service):
    """POST / (reward-server's protocol; flow_grpo's clients post to the URL as given and pickle.loads the reply)
    in:  pickle of {"videos": [mp4 bytes | .npy bytes | [JPEG/PNG bytes per frame]], "prompts": [str] | numpy array
          of str (flow_grpo's `np.array_split(prompts, k)[i]`), "think": bool (optional), "video_fps": number |
          [number] (optional)}; numpy arrays of plain dtypes are admitted, every other global and object array is
          refused (400, text).
    out: pickle of {"outputs" (what flow_grpo reads), "scores", "cots", "errors"}; a refused request: a one-line
          text body with a 4xx status (flow_grpo's client prints the body, then fails to unpickle it; it retries
          only on 500, which this endpoint never answers for a bad request). A failed video: 422 naming it, or NaN
          with --on-bad-video nan."""
    from fastapi import Request
    from fastapi.responses import Response

    @app.post("/")
    async def pickle_protocol(request: Request):
        try:
            service.check_key(request)
            body = await service.read_body(request)
        except RequestError as error:
            return _text(error.status, error.message)
        try:
            data = safe_unpickle(body)
        except Exception as error:
            return _text(400, f"refused: {error}")
        if isinstance(data, dict) and "images" in data and "videos" not in data:
            return _text(
                422,
                "DeScore scores videos, not images: send 'videos' (per video: mp4 bytes, .npy bytes, or "
                "a list of JPEG/PNG frame bytes) instead of 'images'",
            )
        if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
            return _text(
                422,
                "expected a pickled dict with 'videos' (per video: mp4 bytes, .npy bytes, or a list of "
                f"JPEG/PNG frame bytes) and 'prompts'; got {describe(data)}",
            )
        videos, prompts = data["videos"], data.get("prompts")
        if isinstance(prompts, np.ndarray):
            prompts = prompts.tolist() if prompts.dtype.kind in "US" else None
        prompts = [prompts] * len(videos) if isinstance(prompts, str) else prompts
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            return _text(422, "'prompts' must be a string, a list of strings or a numpy array of str")
        if not all(isinstance(v, (bytes, bytearray)) or (isinstance(v, list) and v) for v in videos):
            return _text(
                422,
                "every entry of 'videos' must be bytes (an mp4 file or a .npy array) or a non-empty list "
                "of JPEG/PNG frame bytes",
            )
        try:
            think = service.think(request, data.get("think"))
            video_fps = service.video_fps(request, data.get("video_fps"), len(videos))
            results = await service.score_videos(
                request, videos, list(prompts), "think" if think else "no-think", video_fps=video_fps
            )
        except RequestError as error:
            return _text(error.status, error.message)
        failed = _failures(results)
        if failed and service.config.on_bad_video == "error":
            message = _bad_input_message(failed, len(results))
            logger.warning("POST /: %s", message)
            return _text(422, message)
        scores = [r.get("reward", math.nan) for r in results]
        reply = {
            "outputs": scores,
            "scores": scores,
            "cots": [r.get("cot") for r in results],
            "errors": [r["error"] for r in results],
        }
        return Response(pickle.dumps(reply), media_type="application/octet-stream")
