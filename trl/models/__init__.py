"""Model loading, PEFT wrapping, reference models, helpers for frozen and wrapped models, and the bundled tiny models
(lazy submodules)."""

import sys

from .._lazy import _LazyModule

_import_structure = {
    "helpers": [
        "create_reference_model",
        "enable_selective_activation_checkpointing",
        "get_act_offloading_ctx_manager",
        "prepare_deepspeed",
        "prepare_fsdp",
        "unwrap_model_for_generation",
    ],
    "loading": ["create_model_from_path"],
    "reference": [],
    "tiny": ["save_tiny_model", "tiny_config", "tiny_model", "tiny_tokenizer"],
    "utils": ["causal_lm", "disable_dropout_in_model"],
}

sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure)
