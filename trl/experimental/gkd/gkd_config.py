"""Configuration of the GKD trainer: the distillation config with GKD's `lmbda`, `seq_kd` and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...trainer.distillation_config import DistillationConfig


@dataclass
class GKDConfig(DistillationConfig):
    r"""
    Configuration for [`GKDTrainer`]: the fields of `DistillationConfig` (`trl/trainer/distillation_config.py`:
    teacher loading, generation, logging) with GKD's fields and the reference's defaults.

    Parameters:
        lmbda (`float`, *optional*, defaults to `0.5`): the fraction of generation batches whose completions the
            student samples (on-policy); the others use the dataset's completions (or the teacher's with `seq_kd`).
        beta (`float`, *optional*, defaults to `0.5`): the generalized JSD's interpolation, 0 forward KL, 0.5 JSD,
            1 reverse KL.
        temperature (`float`, *optional*, defaults to `0.9`): sampling temperature; also divides both models' logits.
        max_new_tokens (`int`, *optional*, defaults to `128`): most tokens generated (sets `max_completion_length`,
            which also cuts the dataset's completions).
        seq_kd (`bool`, *optional*, defaults to `False`): sequence-level KD: the off-policy completions are sampled
            by the teacher instead of read from the dataset.
        disable_dropout (`bool`, *optional*, defaults to `True`): disable dropout in the student.
        teacher_model_name_or_path, teacher_model_init_kwargs: as `DistillationConfig`.
    """

    learning_rate: float = field(default=2e-5, metadata={"help": "Initial AdamW learning rate."})
    lmbda: float = field(default=0.5, metadata={"help": "Fraction of on-policy (student-sampled) batches, in [0, 1]."})
    beta: float = field(default=0.5, metadata={"help": "Generalized JSD: 0 forward KL, 0.5 JSD, 1 reverse KL."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature (also divides the logits)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens generated per completion."})
    seq_kd: bool = field(default=False, metadata={"help": "Off-policy completions sampled by the teacher."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the student."})

    def __post_init__(self):
        if not isinstance(self.lmbda, (int, float)) or not 0.0 <= float(self.lmbda) <= 1.0:
            raise ValueError(f"`lmbda` is the fraction of on-policy batches and must be in [0, 1]; got {self.lmbda!r}.")
        if self.max_new_tokens is None or self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive integer; got {self.max_new_tokens}.")
        self.max_completion_length = self.max_new_tokens
        super().__post_init__()
