"""CPO: Contrastive Preference Optimization, with SimPO and AlphaPO (`CPOConfig`, `CPOTrainer`)."""

from .cpo_config import CPOConfig
from .cpo_trainer import CPOTrainer

__all__ = ["CPOConfig", "CPOTrainer"]
