"""`ServeConfig`: the settings of `descore serve` (each field is a command-line flag), and the bind check."""

import os
from dataclasses import dataclass

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
BAD_VIDEO_POLICIES = ("error", "nan")


@dataclass
class ServeConfig:
    """Settings of `descore serve` (each is also a command-line flag)."""

    host: str = "127.0.0.1"
    """Address to bind. Anything other than loopback needs `api_key`."""
    port: int = 8000
    """TCP port (0 = any free port)."""
    api_key: str | None = None
    """Shared secret. Clients that can set headers send `Authorization: Bearer KEY`; clients that only take a URL
    put it in the URL: `?api_key=KEY` where the client uses the URL as given (OpenRLHF, flow_grpo), or the path
    prefix `/key/KEY` where the client appends paths to a base URL (Flow-Factory: `http://host:8000/key/KEY` keeps
    working with its `/health` and `/compute`). A key in a URL can end up in the client's logs: prefer an SSH tunnel
    to a loopback server where that matters. Required for any non-loopback `host`."""
    think: bool = True
    """Default scoring mode for requests that do not choose one (Flow-Factory's client never does): True = the
    judge writes its CoT first (the paper), False = the masked-CoT fast path. A request chooses with its `think`
    field or the path prefix `/think` or `/no-think` (e.g. `http://host:8000/no-think`)."""
    on_bad_video: str = "error"
    """What `/compute` (Flow-Factory), `/get_reward` (OpenRLHF) and the pickle protocol (flow_grpo) do with a video
    that cannot be scored, or an OpenRLHF sample whose response cannot be located in its query: "error" fails the
    request with a message naming the file or sample (none of these clients can handle a missing score); "nan"
    answers NaN for that sample and names it in "errors" (only for clients that filter NaN). `/score` always
    answers per video (reward null + its error)."""
    max_batch_size: int = 8
    """Most videos scored in one forward batch (per replica)."""
    max_wait_ms: float = 10.0
    """Longest time the oldest queued video waits for batch-mates, counted from when a scorer is free, before
    its batch is scored anyway."""
    dedupe_seconds: float = 600.0
    """Identical videos (same bytes, prompt, mode and settings) already queued are scored once for every request
    that asks; a finished score is kept this long for clients that retry after a timeout (flow_grpo retries POSTs
    up to 1000 times, OpenRLHF 5). 0 = no reuse of finished scores (queued duplicates are still shared)."""
    allow_paths: tuple = ()
    """Folders whose files requests may name by server-side path (after resolving symlinks and `..`). Empty: no
    server-side paths at all."""
    allow_pickle: bool = False
    """Serve yifan123/reward-server's pickle protocol on `POST /`. Its unpickler admits plain containers, strings,
    bytes, numbers and numpy arrays of plain dtypes (flow_grpo pickles its prompts as a numpy array of str); any
    other global, and every object array, is refused with a 400."""
    max_request_mb: float = 1536.0
    """Largest request body in MiB (base64 inflates binary by 4/3). Bigger requests get 413."""
    max_videos_per_request: int = 8192
    """Most videos in one request (413 beyond). OpenRLHF <= 0.9.0 sends its whole rollout batch in one request
    (--rollout_batch_size 1024 x --n_samples_per_prompt, split over its URLs): the default takes 1024 prompts x 8
    samples. A large request is decoded and scored in micro-batches, never held decoded all at once."""
    max_frames: int = 1024
    """Most frames a video may have in its source, before sampling (413 beyond)."""
    max_frame_pixels: int = 3840 * 2160
    """Largest frame area (height x width) of an uploaded video (413 beyond)."""
    max_new_tokens: int | None = None
    """Cap on CoT length for think requests (None = the model's own limit). Requests may ask for fewer."""

    def __post_init__(self):
        if self.on_bad_video not in BAD_VIDEO_POLICIES:
            raise ValueError(f"on_bad_video={self.on_bad_video!r}: choose one of {', '.join(BAD_VIDEO_POLICIES)}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size={self.max_batch_size}: must be at least 1")
        if self.max_wait_ms < 0 or self.dedupe_seconds < 0:
            raise ValueError(f"max_wait_ms={self.max_wait_ms:g} / dedupe_seconds={self.dedupe_seconds:g}: must be >= 0")
        if self.max_videos_per_request < 1:
            raise ValueError(f"max_videos_per_request={self.max_videos_per_request}: must be at least 1")


def check_bind(host: str, api_key: str | None):
    if host not in LOOPBACK_HOSTS and not api_key:
        raise ValueError(
            f"--host {host} exposes the server beyond this machine: pass --api-key KEY (or set "
            "DESCORE_API_KEY); clients then send 'Authorization: Bearer KEY'"
        )


def default_api_key() -> str | None:
    return os.environ.get("DESCORE_API_KEY") or None
