"""Trainers and their configs (lazy, so importing one trainer does not import the others)."""

import sys

from .._lazy import _LazyModule

_import_structure = {
    "base_config": ["_BaseConfig"],
    "model_config": ["ModelConfig", "get_peft_config", "get_quantization_config"],
    "sft_config": ["SFTConfig"],
    "sft_trainer": ["SFTTrainer"],
    "dpo_config": ["DPOConfig"],
    "dpo_trainer": ["DPOTrainer"],
    "kto_config": ["KTOConfig"],
    "kto_trainer": ["KTOTrainer"],
    "reward_config": ["RewardConfig"],
    "reward_trainer": ["RewardTrainer"],
    "grpo_config": ["GRPOConfig"],
    "grpo_trainer": ["GRPOTrainer"],
    "rloo_config": ["RLOOConfig"],
    "rloo_trainer": ["RLOOTrainer"],
    "distillation_config": ["DistillationConfig"],
    "distillation_trainer": ["DistillationTrainer"],
    "callbacks": [
        "BEMACallback",
        "LogCompletionsCallback",
        "RichProgressCallback",
        "SyncRefModelCallback",
        "WeaveCallback",
    ],
    "fused_head": ["add_fused_lm_head"],
    "utils": ["disable_dropout_in_model"],
}

sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure)
