"""The `trl` command's scripts and their shared parts (lazy, so that `import trl.scripts` stays fast)."""

import sys

from .._lazy import _LazyModule

_import_structure = {
    "utils": [
        "DatasetConfig",
        "DatasetMixtureConfig",
        "ScriptArguments",
        "TrlParser",
        "get_dataset",
        "init_zero_verbose",
        "load_dataset_from_name",
    ],
}

sys.modules[__name__] = _LazyModule(__name__, __file__, _import_structure)
