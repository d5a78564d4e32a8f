"""Deprecated: on-policy distillation is stable (`from trl import DistillationConfig, DistillationTrainer`). These
aliases warn with a FutureWarning when built."""

from ...trainer.distillation_config import DistillationConfig as _DistillationConfig
from ...trainer.distillation_trainer import DistillationTrainer as _DistillationTrainer
from .._deprecated import alias

DistillationConfig = alias(_DistillationConfig, "trl.experimental.distillation", "trl")
DistillationTrainer = alias(_DistillationTrainer, "trl.experimental.distillation", "trl")

__all__ = ["DistillationConfig", "DistillationTrainer"]
