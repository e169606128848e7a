"""DeScore as a service (`descore serve`): FastAPI + uvicorn, micro-batched over one or several model replicas.

Endpoints (all POST bodies are read with a size limit before parsing; the shapes of each are in `protocols.py`):

    GET  /health        liveness (no key needed): {"status": "ok"}
    GET  /info          model settings, limits and counters (videos scored per replica, dropped, merged)
    POST /score         native JSON (RemoteReward): videos, prompts, think / cots -> rewards, CoTs, scores, errors
    POST /compute       Flow-Factory's remote reward: {"prompt": [...], "video": [[base64 PNG frame, ...], ...]}
    POST /get_reward    OpenRLHF's remote reward: {"query": [...], "prompts": [...], "labels": [...]}
    POST /              yifan123/reward-server's pickle protocol, flow_grpo's clients (only with --allow-pickle)

URL prefixes /key/KEY, /think | /no-think and /video_fps/R serve clients that only take a base URL (`app.py`).

Where things are: `config.py` (ServeConfig: every flag), `app.py` (the application, prefixes, authentication,
the request path: digest, decode, queue, await, drop on disconnect), `batching.py` (the queue, the replicas,
duplicate merging), `decoding.py` (wire forms of a video, the restricted unpickler), `protocols.py` (one group
of endpoints per client). This module runs it: `serve` in the foreground, `BackgroundServer` in a thread.

Several GPUs: `descore serve --devices cuda:0,cuda:1,...` loads one replica per device behind one port and one
queue, so a client that sends everything to one URL (OpenRLHF >= 0.9.1) still uses every GPU.
"""

import threading
import time

from descore_plugin.serving.app import Service, create_app
from descore_plugin.serving.batching import MicroBatcher
from descore_plugin.serving.config import LOOPBACK_HOSTS, ServeConfig, check_bind, default_api_key
from descore_plugin.serving.decoding import NPY_MAGIC, RequestError, VideoDecoder, safe_unpickle

__all__ = [
    "BackgroundServer",
    "LOOPBACK_HOSTS",
    "MicroBatcher",
    "NPY_MAGIC",
    "RequestError",
    "ServeConfig",
    "Service",
    "VideoDecoder",
    "check_bind",
    "create_app",
    "default_api_key",
    "safe_unpickle",
    "serve",
]


# ---------------------------------------------------------------------- running it
def _uvicorn_server(app, config: ServeConfig, log_level: str):
    """A uvicorn server that, when shutdown begins (SIGINT/SIGTERM), tells the batcher to stop waiting for
    batch-mates; uvicorn then lets in-flight requests finish before the application's shutdown."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            app.state.batcher.drain()
            await super().shutdown(sockets=sockets)

    return Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=None,
        )
    )


def serve(model, config: ServeConfig, log_level: str = "info"):
    """Run the server in the foreground until SIGINT/SIGTERM; queued requests are finished before it exits.

    model: a loaded `DeScoreReward`, or a list of replicas (one per device) sharing one queue."""
    check_bind(config.host, config.api_key)
    _uvicorn_server(create_app(model, config), config, log_level).run()


class BackgroundServer:
    """Serve `model` from a background thread of this process (notebooks, tests, benchmarks):

        with BackgroundServer(model, ServeConfig(port=0)) as server:
            RemoteReward(server.url).score(videos, prompts)

    Leaving the block shuts down gracefully (queued requests finish)."""

    def __init__(self, model, config: ServeConfig | None = None, log_level: str = "warning"):
        self.config = config or ServeConfig(port=0)
        check_bind(self.config.host, self.config.api_key)
        self.app = create_app(model, self.config)
        self.server = _uvicorn_server(self.app, self.config, log_level)
        self.thread = threading.Thread(target=self.server.run, name="descore-serve", daemon=True)
        self.url = None

    def start(self, timeout: float = 60.0):
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        self.url = f"http://{host}:{port}"
        return self

    def stop(self, timeout: float = 60.0):
        self.server.should_exit = True  # the path SIGTERM takes: stop accepting, finish in-flight requests
        self.thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
