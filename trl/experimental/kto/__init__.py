"""Deprecated: KTO is stable (`from trl import KTOConfig, KTOTrainer`). These aliases warn with a FutureWarning when
built."""

from ...trainer.kto_config import KTOConfig as _KTOConfig
from ...trainer.kto_trainer import KTOTrainer as _KTOTrainer
from .._deprecated import alias

KTOConfig = alias(_KTOConfig, "trl.experimental.kto", "trl")
KTOTrainer = alias(_KTOTrainer, "trl.experimental.kto", "trl")

__all__ = ["KTOConfig", "KTOTrainer"]
