"""`trl.experimental`: incubating trainers and helpers, built on the same cores as the stable trainers.

Importing it warns with `TRLExperimentalWarning` (their interfaces may change between releases) unless the environment
variable `TRL_EXPERIMENTAL_SILENCE=1` is set. Subpackages are imported on first access, so `import trl.experimental`
loads none of them. What is here and what is left out: docs/experimental.md.

Example:
    ```python
    >>> from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    ```
"""

import os
import sys
import warnings

from .._lazy import _LazyModule

SUBPACKAGES = (
    "bema_for_ref_model",
    "cpo",
    "distillation",
    "gkd",
    "gmpo",
    "kto",
    "merge_model_callback",
    "online_dpo",
    "orpo",
    "utils",
)


def _warn_experimental() -> None:
    from ..import_utils import TRLExperimentalWarning, experimental_warnings_silenced

    if experimental_warnings_silenced():  # TRL_EXPERIMENTAL_SILENCE=1 (or true/yes/on), the one check of import_utils
        return

    warnings.warn(
        "You are importing from 'trl.experimental'. Its trainers and helpers may change or be removed in any release, "
        "without a deprecation period. Set the environment variable TRL_EXPERIMENTAL_SILENCE=1 to silence this warning.",
        TRLExperimentalWarning,
        stacklevel=3,
    )


_warn_experimental()

_available = [name for name in SUBPACKAGES if os.path.isdir(os.path.join(os.path.dirname(__file__), name))]
sys.modules[__name__] = _LazyModule(__name__, __file__, {name: [] for name in _available})
