"""The reward contract of post-training: named per-video scores from a judge, an analytic reward or the synthetic
world's truth (`world:truth`)."""

from descore_plugin.rewards.contract import (  # noqa: F401
    DESCORE_NAMES,
    UNPARSED_CHOICES,
    DeScoreRewardFunction,
    RewardError,
    RewardSet,
    brightness,
    call_reward,
    check_rewards,
    descore_reward_function,
    load_reward_model,
    parse_reward_spec,
    redness,
    reward_set,
    scores_from_output,
)
