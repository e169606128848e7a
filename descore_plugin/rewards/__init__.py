"""The reward contract of post-training: named per-video scores from a judge or an analytic reward."""

from descore_plugin.rewards.contract import (  # noqa: F401
    RewardError,
    load_reward_model,
    scores_from_output,
    DeScoreRewardFunction,
    descore_reward_function,
    brightness,
    redness,
    call_reward,
    parse_reward_spec,
    RewardSet,
    check_rewards,
    reward_set,
    DESCORE_NAMES,
)
