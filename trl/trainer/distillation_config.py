"""Configuration of the on-policy distillation trainer."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base_config import dict_field
from .online_config import _OnlineConfig


@dataclass
class DistillationConfig(_OnlineConfig):
    r"""
    Configuration for [`DistillationTrainer`]. Every field is also a `trl distillation` command-line flag. The data,
    generation, tools and logging fields are those of the online trainers (see [`_OnlineConfig`] in
    `trl/trainer/online_config.py`); the student samples **one** completion per prompt, so
    `per_device_train_batch_size` counts prompts and completions alike. There is no `num_generations` and no `lmbda`
    (distillation here is always on-policy).

    Parameters:
        > Model

        teacher_model_name_or_path (`str`, *optional*): hub id or local folder of the teacher, used when the trainer
            is given no `teacher_model` (required by `trl distillation`).
        teacher_model_revision (`str`, *optional*): revision of a teacher loaded from a string.
        teacher_model_init_kwargs (`dict` or `str`, *optional*): keyword arguments (or a JSON object string) of the
            teacher's `from_pretrained` when it is loaded from a string (e.g. `{"dtype": "bfloat16"}`).
        disable_dropout (`bool`, *optional*, defaults to `False`): disable dropout in the student.

        > Loss

        beta (`float`, *optional*, defaults to `1.0`): which divergence between the student's distribution `p` and
            the teacher's `q` is minimised on every completion token: `0` forward KL `KL(q‖p)`, `1` reverse KL
            `KL(p‖q)` (mode-seeking, the default), and in between the generalized JSD
            `beta·KL(q‖m) + (1 − beta)·KL(p‖m)` with `m = beta·q + (1 − beta)·p` (`0.5` is the JSD); see
            `trl/ops/divergence.py`.
        temperature (`float`, *optional*, defaults to `1.0`): sampling temperature of the student, which also divides
            both models' logits in the loss.

    Example:
        ```python
        >>> from trl import DistillationConfig
        >>> config = DistillationConfig(output_dir="out", per_device_train_batch_size=4, beta=0.5)
        >>> config.beta, config.generation_batch_size
        (0.5, 4)
        ```
    """

    _min_num_generations: ClassVar[int] = 1

    # Model
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of the teacher (when no teacher_model is given)."}
    )
    teacher_model_revision: str | None = field(
        default=None, metadata={"help": "Revision of a teacher loaded from a hub id."}
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs of the teacher (dict or JSON string)."}
    )

    # Loss
    beta: float = field(
        default=1.0,
        metadata={"help": "Divergence: 0 forward KL(teacher||student), 0.5 JSD, 1 reverse KL(student||teacher); "
                          "in between the generalized JSD."},
    )

    # The online trainers' reinforcement-learning fields have no meaning here: fixed, and not arguments.
    num_generations: int | None = field(default=1, init=False, repr=False)
    num_generations_eval: int | None = field(default=None, init=False, repr=False)
    num_iterations: int = field(default=1, init=False, repr=False)
    epsilon: float = field(default=0.2, init=False, repr=False)
    epsilon_high: float | None = field(default=None, init=False, repr=False)
    reward_weights: list[float] | None = field(default=None, init=False, repr=False)
    sync_ref_model: bool = field(default=False, init=False, repr=False)
    ref_model_mixup_alpha: float = field(default=0.6, init=False, repr=False)
    ref_model_sync_steps: int = field(default=512, init=False, repr=False)

    def __post_init__(self):
        if isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real):
            raise TypeError(f"`beta` must be a number in [0, 1] (0: forward KL, 0.5: JSD, 1: reverse KL); got "
                            f"{type(self.beta).__name__} {self.beta!r}.")
        if not 0.0 <= float(self.beta) <= 1.0:
            raise ValueError(
                f"`beta` must be in [0, 1] (0: forward KL, 0.5: JSD, 1: reverse KL); got {self.beta!r}."
            )
        self.beta = float(self.beta)  # a numpy scalar from a sweep script is a valid beta
        if isinstance(self.temperature, numbers.Real) and not self.temperature > 0:  # other types: _OnlineConfig
            raise ValueError(f"`temperature` must be > 0 (it divides the logits); got {self.temperature}.")
        self.teacher_model_init_kwargs = dict_field(self.teacher_model_init_kwargs, "teacher_model_init_kwargs")
        super().__post_init__()
