"""Moved to `trl.rewards.scoring`; this module re-exports it for scripts that import the old path."""

from ..rewards.scoring import RewardScorer, RewardScores, _RewardModel, reward_input_ids  # noqa: F401

__all__ = ["RewardScorer", "RewardScores", "reward_input_ids"]
