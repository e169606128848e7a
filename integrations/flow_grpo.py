"""The import path flow_grpo users write in their configs: `descore_plugin.integrations.flow_grpo:descore_reward`
(and `:descore_reward_remote`). The adapters themselves live in `integrations/adapters.py`; the GRPO algorithm in
`integrations/grpo.py`."""

from descore_plugin.integrations.adapters import (
    DanceGRPOReward,
    descore_reward_remote,
    flow_grpo_reward,
    trl_descore_reward,
)

descore_reward = flow_grpo_reward  # the name in users' flow_grpo configs: flow_grpo's reward factory

__all__ = ["descore_reward", "descore_reward_remote", "flow_grpo_reward", "DanceGRPOReward", "trl_descore_reward"]
