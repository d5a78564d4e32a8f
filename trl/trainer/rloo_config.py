"""Configuration of the RLOO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from .online_config import _OnlineConfig


@dataclass
class RLOOConfig(_OnlineConfig):
    r"""
    Configuration for [`RLOOTrainer`]. Every field is also a `trl rloo` command-line flag. The data, generation,
    reward, reference and logging fields are described in [`_OnlineConfig`]; `per_device_train_batch_size` counts
    completions.

    Parameters:
        num_generations (`int`, *optional*, defaults to `2`): completions per prompt (the leave-one-out baseline of
            each is the mean reward of the others).
        beta (`float`, *optional*, defaults to `0.05`): weight of the KL penalty subtracted from the reward,
            `β·Σ_t (log π_old − log π_ref)`; 0 loads no reference model.
        normalize_advantages (`bool`, *optional*, defaults to `False`): normalise advantages over the batch.
        reward_clip_range (`tuple[float, float]`, *optional*): clip the combined reward to this range.

    Example:
        ```python
        >>> from trl import RLOOConfig
        >>> config = RLOOConfig(output_dir="out", per_device_train_batch_size=4)
        >>> config.num_generations, config.beta
        (2, 0.05)
        ```
    """

    num_generations: int | None = field(default=2, metadata={"help": "Completions sampled per prompt (>= 2)."})
    beta: float = field(default=0.05, metadata={"help": "KL penalty weight in the reward; 0 loads no reference."})
    normalize_advantages: bool = field(default=False, metadata={"help": "Normalise advantages over the batch."})
    reward_clip_range: list[float] | None = field(
        default=None, metadata={"help": "Clip the combined reward to (min, max)."}
    )

    def __post_init__(self):
        if self.reward_clip_range is not None:
            values = list(self.reward_clip_range)
            if len(values) != 2 or values[0] > values[1]:
                raise ValueError(f"`reward_clip_range` must be (min, max) with min <= max; got {self.reward_clip_range}.")
            self.reward_clip_range = (float(values[0]), float(values[1]))
        super().__post_init__()
