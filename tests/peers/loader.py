"""Import the peers' vendored client files as they are, with stand-ins for the imports their request code does not
use (ray's task scheduling, OpenRLHF's logger, Flow-Factory's reward-model base classes). The stand-ins exist only
while a file is imported, so nothing else in the test session sees them."""

import asyncio
import importlib.util
import logging
import sys
import types
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).parent


@contextmanager
def _modules(stubs: dict):
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _load(filename: str, stubs: dict):
    spec = importlib.util.spec_from_file_location(f"peer_{Path(filename).stem}", HERE / filename)
    module = importlib.util.module_from_spec(spec)
    with _modules(stubs):
        spec.loader.exec_module(module)
    return module


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _openrlhf_logging() -> dict:
    utils = _module(
        "openrlhf.utils", logging_utils=_module("openrlhf.utils.logging_utils", init_logger=logging.getLogger)
    )
    return {
        "openrlhf": _module("openrlhf", utils=utils),
        "openrlhf.utils": utils,
        "openrlhf.utils.logging_utils": utils.logging_utils,
    }


class _RayRemote:
    """`ray.remote(f)`: `.remote(...)` runs f here and now (a class: builds the actor in-process)."""

    def __init__(self, target):
        self.target = target

    def remote(self, *args, **kwargs):
        if isinstance(self.target, type):
            return _RayActor(self.target(*args, **kwargs))
        return self.target(*args, **kwargs)


class _RayActor:
    def __init__(self, instance):
        self.instance = instance

    def __getattr__(self, name):
        return _RayRemote(getattr(self.instance, name))


def openrlhf_v0_9_0():
    """openrlhf/utils/remote_rm_utils.py of v0.9.0: `request_api_wrapper`, `RemoteRewardModel` (ray runs in-process)."""
    ray = _module("ray", remote=_RayRemote, get=lambda refs: refs)
    return _load("openrlhf_v0_9_0_remote_rm_utils.py", {"ray": ray, **_openrlhf_logging()})


def openrlhf_v0_11_0():
    """openrlhf/utils/agent.py of v0.11.0: `SingleTurnAgentExecutor` (aiohttp client, one request per sample)."""
    return _load("openrlhf_v0_11_0_agent.py", _openrlhf_logging())


class _RewardModelBase:
    def __init__(self, config, accelerator):
        self.config, self.accelerator, self.device = config, accelerator, "cpu"


class RewardModelOutput:
    def __init__(self, rewards):
        self.rewards = rewards


def flow_factory():
    """src/flow_factory/rewards/my_reward_remote.py: `RemoteRewardClient`, `RemotePointwiseRewardModel`."""
    abc = _module(
        "flow_factory.rewards.abc",
        PointwiseRewardModel=_RewardModelBase,
        GroupwiseRewardModel=_RewardModelBase,
        RewardModelOutput=RewardModelOutput,
    )
    hparams = _module("flow_factory.hparams", RewardArguments=object)
    rewards = _module("flow_factory.rewards", abc=abc)
    accelerate = _module("accelerate", Accelerator=object)  # only a type annotation there
    return _load(
        "flow_factory_my_reward_remote.py",
        {
            "flow_factory": _module("flow_factory", rewards=rewards, hparams=hparams),
            "flow_factory.rewards": rewards,
            "flow_factory.rewards.abc": abc,
            "flow_factory.hparams": hparams,
            "accelerate": accelerate,
        },
    )


def flow_grpo():
    """flow_grpo/rewards.py: the reward-server clients (`unifiedreward_score_remote`, `deqa_score_remote`)."""
    return _load("flow_grpo_rewards.py", {})


@contextmanager
def redirect(prefix: str, url: str):
    """Send what a client posts to `prefix` (its hard-coded server) to `url` instead, by rewriting the URL where
    requests hands a prepared request to its transport (the client's own session, retries and timeouts stay)."""
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send

    def send(self, request, *args, **kwargs):
        if request.url.startswith(prefix):
            request.url = url + request.url[len(prefix) :]
        return original(self, request, *args, **kwargs)

    HTTPAdapter.send = send
    try:
        yield
    finally:
        HTTPAdapter.send = original


def run(coroutine):
    return asyncio.run(coroutine)
