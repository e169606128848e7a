"""`descore serve`: its flags (the settings of `descore_plugin.serving.config.ServeConfig` plus the model, its devices
and uvicorn's log level) and the command that builds the replicas and serves them (docs/serving.md).

    descore serve [--model DIR_OR_ID] [--device D | --devices D1,D2] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
"""

import argparse
import os
import sys

from descore_plugin.utils.errors import UserError, add_device_arguments, blame


def add_serve(commands):
    serve = commands.add_parser("serve", help="serve the reward model over HTTP (micro-batched; see docs/serving.md)")
    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve)


def add_serve_arguments(parser):
    from descore_plugin.serving.server import ServeConfig, default_api_key

    defaults = ServeConfig()
    parser.add_argument(
        "--model",
        default=os.environ.get("DESCORE_MODEL"),
        help="DeScore checkpoint directory or hub id (default: $DESCORE_MODEL, else the built-in tiny "
        "random model, for trying the protocol)",
    )
    add_device_arguments(parser, device_help="the device of a single replica, e.g. cuda:3 (default: cuda if available)")
    parser.add_argument(
        "--devices",
        default=None,
        metavar="D1,D2,...",
        help="one model replica per device behind this one port and one queue, e.g. "
        "cuda:0,cuda:1,cuda:2,cuda:3 (clients that send everything to one URL still use every "
        "GPU); replaces --device",
    )
    parser.add_argument(
        "--think",
        action=argparse.BooleanOptionalAction,
        default=defaults.think,
        help="scoring mode of requests that do not choose one (Flow-Factory never does): --no-think = "
        "the masked-CoT fast path; a client may also pick with the URL prefix /think or "
        "/no-think (default: think)",
    )
    parser.add_argument(
        "--on-bad-video",
        choices=["error", "nan"],
        default=defaults.on_bad_video,
        help="a video that cannot be scored (or an OpenRLHF response that cannot be located) on "
        "/compute, /get_reward and the pickle protocol: error = fail the request naming it "
        "(their clients cannot handle a missing score), nan = NaN for it (default: %(default)s)",
    )
    parser.add_argument(
        "--dedupe-seconds",
        type=float,
        default=defaults.dedupe_seconds,
        help="keep finished scores this long so that a client's retry of an identical video is not "
        "scored again; 0 = off (queued duplicates are always shared) (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default=defaults.host, help="address to bind; non-loopback needs --api-key (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=defaults.port, help="TCP port (0 = any free port) (default: %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        default=default_api_key(),
        help="key clients must send (default: $DESCORE_API_KEY): header 'Authorization: Bearer KEY', "
        "or in the URL as ?api_key=KEY (OpenRLHF, flow_grpo) or the path prefix /key/KEY "
        "(Flow-Factory); required off loopback",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults.max_batch_size,
        help="most videos scored in one batch (default: %(default)s)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help="longest wait of the oldest queued video for batch-mates (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-paths",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder whose files requests may name by server path (repeatable; default: none)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="serve yifan123/reward-server's pickle protocol on POST / (no globals unpickled)",
    )
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=defaults.max_request_mb,
        help="largest request body, MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--max-videos-per-request",
        type=int,
        default=defaults.max_videos_per_request,
        help="most videos in one request (default: %(default)s)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=defaults.max_frames,
        help="most source frames per video, before sampling (default: %(default)s)",
    )
    parser.add_argument(
        "--max-frame-pixels",
        type=int,
        default=defaults.max_frame_pixels,
        help="largest uploaded frame area (height x width) (default: %(default)s)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on CoT length (default: the model's)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default: %(default)s)",
    )


def run_serve(args):
    import tempfile

    import torch

    from descore_plugin.modeling.model import DeScoreReward
    from descore_plugin.serving.server import ServeConfig, check_bind, serve

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("descore serve needs fastapi and uvicorn: pip install 'descore-plugin[serve]'") from None
    for folder in args.allow_paths:
        if not os.path.isdir(folder):
            raise UserError(f"--allow-paths {folder}: not a directory")
    try:
        config = ServeConfig(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            allow_paths=tuple(args.allow_paths),
            allow_pickle=args.allow_pickle,
            max_request_mb=args.max_request_mb,
            max_videos_per_request=args.max_videos_per_request,
            max_frames=args.max_frames,
            max_frame_pixels=args.max_frame_pixels,
            max_new_tokens=args.max_new_tokens,
            think=args.think,
            on_bad_video=args.on_bad_video,
            dedupe_seconds=args.dedupe_seconds,
        )
    except ValueError as error:  # its message names the setting
        raise UserError(f"--{str(error).split('=')[0].replace('_', '-')}: {error}") from None
    try:
        check_bind(config.host, config.api_key)
    except ValueError as error:  # its message names --host and --api-key
        raise UserError(str(error)) from None
    if config.max_batch_size < 1 or config.max_wait_ms < 0:
        raise UserError(
            f"--max-batch-size {config.max_batch_size} / --max-wait-ms {config.max_wait_ms:g}: "
            "need a batch size >= 1 and a wait >= 0"
        )
    if args.devices is not None:
        if args.device is not None:
            raise UserError("--device and --devices: give one of them (--devices cuda:0,cuda:1 for several replicas)")
        from descore_plugin.utils.errors import device_name

        try:
            devices = [device_name(d.strip()) for d in args.devices.split(",") if d.strip()]
        except argparse.ArgumentTypeError as error:
            raise UserError(f"--devices: {error}") from None
        if not devices:
            raise UserError(f"--devices {args.devices!r}: expected devices separated by commas, e.g. cuda:0,cuda:1")
    else:
        devices = [args.device or ("cuda" if torch.cuda.is_available() else "cpu")]
    device = ",".join(devices)
    dtype = args.dtype or ("bfloat16" if devices[0].startswith("cuda") else None)
    if args.model:
        with blame(f"--model {args.model}"):
            model = [DeScoreReward.from_pretrained(args.model, device=d, dtype=dtype) for d in devices]
        print(f"descore serve: serving {args.model} on {device}", file=sys.stderr)
    else:
        from descore_plugin.testing.tiny import init_tiny

        with tempfile.TemporaryDirectory(prefix="descore-tiny-") as folder:
            init_tiny(folder)
            model = [DeScoreReward.from_pretrained(folder, device=d, dtype=dtype) for d in devices]
        print(
            "descore serve: no --model given: serving the built-in tiny model (random weights, for trying the "
            "protocol; pass --model DIR_OR_ID for a real one)",
            file=sys.stderr,
        )
    print(
        f"descore serve: http://{config.host}:{config.port} (batches of up to {config.max_batch_size} videos, "
        f"{config.max_wait_ms:g} ms wait)",
        file=sys.stderr,
        flush=True,
    )
    serve(model, config, log_level=args.log_level)
    return 0
