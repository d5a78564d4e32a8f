"""Merge the trained policy with another model at checkpoints (`MergeConfig`, `MergeModelCallback`)."""

from .merge import MERGE_METHODS, MergeConfig, MergeModelCallback, linear_merge, merge_models

__all__ = ["MERGE_METHODS", "MergeConfig", "MergeModelCallback", "linear_merge", "merge_models"]
