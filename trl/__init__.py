"""Post-training for foundation models with TRL's public API: SFT, preference optimisation and online RL."""

import sys
from importlib.metadata import PackageNotFoundError, version

from ._lazy import _LazyModule

try:
    __version__ = version("trl")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+local"

_import_structure = {
    # submodules reachable as attributes (`trl.models.tiny`, `trl.ops`, ...)
    "data": [],
    "import_utils": [],
    "guards": [],
    "losses": [],
    "models": ["create_reference_model"],
    "ops": [],
    "rewards": [],
    "advantages": [],
    "generation": [],
    "rollout": [],
    "data_utils": [
        "apply_chat_template",
        "extract_prompt",
        "is_conversational",
        "is_conversational_from_value",
        "maybe_apply_chat_template",
        "maybe_convert_to_chatml",
        "maybe_extract_prompt",
        "maybe_unpair_preference_dataset",
        "pack_dataset",
        "prepare_multimodal_messages",
        "unpair_preference_dataset",
    ],
    "chat_template_utils": [
        "add_response_schema",
        "clone_chat_template",
        "get_training_chat_template",
        "supports_tool_calling",
    ],
    "scripts": ["DatasetMixtureConfig", "ScriptArguments", "TrlParser", "get_dataset", "init_zero_verbose"],
    "trainer": [
        "DistillationConfig",
        "DistillationTrainer",
        "DPOConfig",
        "DPOTrainer",
        "GRPOConfig",
        "GRPOTrainer",
        "KTOConfig",
        "KTOTrainer",
        "ModelConfig",
        "RewardConfig",
        "RewardTrainer",
        "RLOOConfig",
        "RLOOTrainer",
        "SFTConfig",
        "SFTTrainer",
        "SyncRefModelCallback",
        "BEMACallback",
        "LogCompletionsCallback",
        "RichProgressCallback",
        "WeaveCallback",
        "get_peft_config",
        "get_quantization_config",
    ],
}

sys.modules[__name__] = _LazyModule(
    __name__, __file__, _import_structure, extra_objects={"__version__": __version__}
)
