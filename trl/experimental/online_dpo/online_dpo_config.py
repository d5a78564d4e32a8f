"""Configuration of the Online DPO trainer: the online core's fields, two generations per prompt, DPO's loss fields."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from ...trainer.online_config import _OnlineConfig

ONLINE_DPO_LOSSES = ("sigmoid", "ipo")


@dataclass
class OnlineDPOConfig(_OnlineConfig):
    r"""
    Configuration for [`OnlineDPOTrainer`]: the online core's fields (`trl/trainer/online_config.py`) with the
    reference's Online DPO fields and defaults. `per_device_train_batch_size` counts completions (2 per prompt) and
    must be even.

    Parameters:
        beta (`float` or `list[float]`, *optional*, defaults to `0.1`): DPO's β; a list gives one value per epoch
            (the last one for later epochs). After construction `beta` holds the first value and `beta_schedule` the
            list.
        loss_type (`str`, *optional*, defaults to `"sigmoid"`): `"sigmoid"` (DPO) or `"ipo"` (`trl.losses.dpo`), both
            on summed sequence log-ratios (the `ipo` target margin `1/(2β)` is on sums, as in the reference's Online
            DPO, not on the length-normalised log-ratios of `DPOTrainer`'s `ipo`).
        max_new_tokens (`int`, *optional*, defaults to `64`): most tokens generated per completion (sets
            `max_completion_length`).
        max_length (`int`, *optional*, defaults to `512`): accepted for compatibility; prompts are not truncated (a
            prompt that does not fit the model's context with `max_new_tokens` is an error at construction).
        temperature (`float`, *optional*, defaults to `0.9`): sampling temperature.
        missing_eos_penalty (`float`, *optional*): subtracted from the score of a completion that ends without an
            end-of-sequence token (encourages finishing within `max_new_tokens`).
        reward_model_path (`str`, *optional*): a reward model (hub id or folder) used when the trainer gets no
            `reward_funcs` and no `judge`.
        judge (`str`, *optional*): accepted for compatibility; pass a judge object or callable to the trainer instead.
        num_generations (`int`, *optional*, defaults to `2`): must be 2 (a pair per prompt).
        disable_dropout (`bool`, *optional*, defaults to `True`): disable dropout in the policy and reference.
        learning_rate (`float`, *optional*, defaults to `5e-7`).
    """

    _min_num_generations: ClassVar[int] = 2

    learning_rate: float = field(default=5e-7, metadata={"help": "Initial AdamW learning rate."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the policy and reference."})
    num_generations: int | None = field(default=2, metadata={"help": "Completions per prompt: must be 2."})
    beta: float | list[float] = field(default=0.1, metadata={"help": "DPO beta, or one value per epoch."})
    loss_type: str = field(default="sigmoid", metadata={"help": "sigmoid or ipo."})
    max_new_tokens: int = field(default=64, metadata={"help": "Most tokens generated per completion."})
    max_length: int | None = field(default=512, metadata={"help": "Compatibility; prompts are not truncated."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Score penalty of a completion without an end-of-sequence token."}
    )
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model used when none is given."})
    judge: str | None = field(default=None, metadata={"help": "Compatibility; pass a judge to the trainer."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Compatibility; not used."})

    def __post_init__(self):
        if self.loss_type not in ONLINE_DPO_LOSSES:
            raise ValueError(f"Unknown Online DPO loss_type {self.loss_type!r}; allowed: {list(ONLINE_DPO_LOSSES)}.")
        schedule = list(self.beta) if isinstance(self.beta, (list, tuple)) else [self.beta]
        if not schedule or any(not isinstance(b, (int, float)) or not b > 0 for b in schedule):
            raise ValueError(f"`beta` must be a positive number or a non-empty list of them; got {self.beta!r}.")
        self.beta_schedule = [float(b) for b in schedule]
        self.beta = self.beta_schedule[0]
        if self.num_generations != 2:
            raise ValueError(f"Online DPO samples a pair per prompt: `num_generations` must be 2; got "
                             f"{self.num_generations}.")
        if self.per_device_train_batch_size % 2:
            raise ValueError(
                f"`per_device_train_batch_size` counts completions, two per prompt, and must be even (a micro-batch "
                f"holds whole pairs); got {self.per_device_train_batch_size}."
            )
        if self.max_new_tokens is None or self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive integer; got {self.max_new_tokens}.")
        self.max_completion_length = self.max_new_tokens
        if self.judge is not None:
            warnings.warn(f"`judge={self.judge!r}` in the config is ignored: pass a judge object or callable to the "
                          "trainer, `OnlineDPOTrainer(..., judge=my_judge)`.", stacklevel=3)
        if self.dataset_num_proc is not None:
            warnings.warn("`dataset_num_proc` is ignored: prompts are tokenised as they are sampled.", stacklevel=3)
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ValueError(f"`missing_eos_penalty` is subtracted from the score and must be >= 0; got "
                             f"{self.missing_eos_penalty}.")
        super().__post_init__()
