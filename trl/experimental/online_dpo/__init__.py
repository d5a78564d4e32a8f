"""Online DPO (`OnlineDPOConfig`, `OnlineDPOTrainer`): two sampled completions per prompt, ranked by reward functions,
a reward model or a judge, trained with the DPO loss."""

from .online_dpo_config import OnlineDPOConfig
from .online_dpo_trainer import OnlineDPOTrainer

__all__ = ["OnlineDPOConfig", "OnlineDPOTrainer"]
