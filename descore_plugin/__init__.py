"""descore-plugin: the DeScore video reward model ("Think, then Score", arXiv 2605.05922) for post-training
text-to-video models.

    from descore_plugin import DeScoreReward
    rm = DeScoreReward.from_pretrained("path/or/hub-id")
    out = rm.score(videos, prompts)          # think, then score
    out.rewards, out.cots, out.dimensional_scores
"""

from descore_plugin.modeling.model import DeScoreConfig, DeScoreReward, RewardOutput
from descore_plugin.modeling.prompt import ParsedAnswer, parse_answer
from descore_plugin.serving.client import RemoteReward

__all__ = ["DeScoreConfig", "DeScoreReward", "RewardOutput", "ParsedAnswer", "parse_answer", "RemoteReward"]
__version__ = "0.1.0"
