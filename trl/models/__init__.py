"""Model loading, PEFT wrapping, reference models and the bundled tiny models (lazy submodules)."""

import sys

from .._lazy import _LazyModule

_import_structure = {
    "loading": ["create_model_from_path"],
    "reference": [],
    "tiny": ["save_tiny_model", "tiny_config", "tiny_model", "tiny_tokenizer"],
    "utils": ["causal_lm", "disable_dropout_in_model"],
}

sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure)
