"""Availability checks for optional packages, and the experimental-feature warning.

Each `is_<package>_available()` answers from `importlib.util.find_spec` (nothing is imported, so asking is cheap even
for packages such as deepspeed or vllm whose import takes seconds or initialises CUDA) and, where a minimum version
applies, from the installed distribution's metadata. Answers are cached for the life of the process.

Code that needs an optional package asks here first, then imports it inside the function that uses it, and raises
an `ImportError` carrying the install hint of [`require`] when it is missing.

Example:
    ```python
    >>> from trl.import_utils import is_rich_available, require
    >>> is_rich_available()
    True
    >>> require("mergekit", "merging models")
    Traceback (most recent call last):
    ...
    ImportError: merging models needs the `mergekit` package, which is not installed: `pip install mergekit`.
    ```
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import re
import warnings

__all__ = [
    "TRLExperimentalWarning",
    "is_aiohttp_available",
    "is_bitsandbytes_available",
    "is_comet_available",
    "is_deepspeed_available",
    "is_flash_attn_available",
    "is_harbor_available",
    "is_jmespath_available",
    "is_kernels_available",
    "is_latex2sympy2_extended_available",
    "is_liger_kernel_available",
    "is_llm_blender_available",
    "is_math_verify_available",
    "is_matplotlib_available",
    "is_mergekit_available",
    "is_openenv_available",
    "is_openreward_available",
    "is_package_available",
    "is_peft_available",
    "is_requests_available",
    "is_rich_available",
    "is_unsloth_available",
    "is_vllm_available",
    "is_wandb_available",
    "is_weave_available",
    "package_version",
    "require",
    "suppress_experimental_warning",
]


class TRLExperimentalWarning(UserWarning):
    """Warning for features of `trl.experimental` (and experimental options of stable trainers), whose API may change
    without a deprecation cycle. Silence it with `TRL_EXPERIMENTAL_SILENCE=1` or [`suppress_experimental_warning`].

    Example:
        ```python
        >>> import warnings
        >>> warnings.warn("`rollout_func` is experimental.", TRLExperimentalWarning, stacklevel=2)
        ```
    """


def experimental_warnings_silenced() -> bool:
    """Whether `TRL_EXPERIMENTAL_SILENCE` is set to a true value (`1`, `true`, `yes`, `on`)."""
    return os.environ.get("TRL_EXPERIMENTAL_SILENCE", "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def suppress_experimental_warning():
    """Within the block, [`TRLExperimentalWarning`]s are not shown (other warnings are).

    Example:
        ```python
        >>> with suppress_experimental_warning():
        ...     from trl.experimental.orpo import ORPOTrainer
        ```
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        yield


def _parse_version(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: `"0.18.6.post1"` -> `(0, 18, 6)`, `"1.2rc1"` -> `(1, 2)`."""
    numbers = []
    for part in text.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


@functools.cache
def package_version(distribution: str) -> str | None:
    """The installed version of `distribution` (its pip name), or `None` when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def is_package_available(module: str, distribution: str | None = None, min_version: str | None = None) -> bool:
    """Whether `module` can be imported, and (with `min_version`) the installed `distribution` is at least that version.

    Args:
        module (`str`): the import name, e.g. `"math_verify"`.
        distribution (`str`, *optional*): the pip name, when it differs from the import name (`"math-verify"`); used
            only for the version check.
        min_version (`str`, *optional*): the lowest acceptable version, e.g. `"0.5.2"`.

    Example:
        ```python
        >>> is_package_available("peft", min_version="0.13.0")
        True
        ```
    """
    try:
        if importlib.util.find_spec(module) is None:
            return False
    except (ImportError, ValueError):  # a parent package that is missing or broken, or a `__spec__` of None
        return False
    if min_version is None:
        return True
    installed = package_version(distribution or module)
    if installed is None:  # importable but with no metadata (e.g. a source checkout on the path): trust it
        return True
    return _parse_version(installed) >= _parse_version(min_version)


# Minimum versions are those of the extras in pyproject.toml; a lower version is reported as unavailable.
def is_aiohttp_available() -> bool:
    return is_package_available("aiohttp")


def is_bitsandbytes_available() -> bool:
    return is_package_available("bitsandbytes", min_version="0.45.1")


def is_comet_available() -> bool:
    return is_package_available("comet_ml")


def is_deepspeed_available() -> bool:
    return is_package_available("deepspeed", min_version="0.18.6")


def is_flash_attn_available() -> bool:
    return is_package_available("flash_attn", "flash-attn")


def is_harbor_available() -> bool:
    return is_package_available("harbor", min_version="0.13")


def is_jmespath_available() -> bool:
    return is_package_available("jmespath")


def is_kernels_available() -> bool:
    return is_package_available("kernels")


def is_latex2sympy2_extended_available() -> bool:
    return is_package_available("latex2sympy2_extended", "latex2sympy2-extended")


def is_liger_kernel_available() -> bool:
    return is_package_available("liger_kernel", "liger-kernel", min_version="0.8.2")


def is_llm_blender_available() -> bool:
    return is_package_available("llm_blender", "llm-blender")


def is_math_verify_available() -> bool:
    return is_package_available("math_verify", "math-verify", min_version="0.5.2")


def is_matplotlib_available() -> bool:
    return is_package_available("matplotlib")


def is_mergekit_available() -> bool:
    return is_package_available("mergekit")


def is_openenv_available() -> bool:
    return is_package_available("openenv", "openenv-core")


def is_openreward_available() -> bool:
    return is_package_available("openreward", min_version="0.1.109")


def is_peft_available() -> bool:
    return is_package_available("peft", min_version="0.13.0")


def is_requests_available() -> bool:
    return is_package_available("requests")


def is_rich_available() -> bool:
    return is_package_available("rich")


def is_unsloth_available() -> bool:
    return is_package_available("unsloth")


_VLLM_SUPPORTED = ("0.22", "0.31")


@functools.cache
def is_vllm_available() -> bool:
    """Whether vllm is installed. A version outside the supported range (0.22 to 0.31) is still reported as available,
    with a warning (once), since a newer vllm often works."""
    if not is_package_available("vllm"):
        return False
    installed = package_version("vllm")
    if installed is not None:
        low, high = (_parse_version(v) for v in _VLLM_SUPPORTED)
        if not low <= _parse_version(installed)[:2] <= high:
            warnings.warn(
                f"vllm {installed} is installed; this library is tested with vllm {_VLLM_SUPPORTED[0]} to "
                f"{_VLLM_SUPPORTED[1]}. If generation fails, install a supported version: "
                f'`pip install "vllm>={_VLLM_SUPPORTED[0]},<={_VLLM_SUPPORTED[1]}"`.',
                stacklevel=2,
            )
    return True


def is_wandb_available() -> bool:
    return is_package_available("wandb")


def is_weave_available() -> bool:
    return is_package_available("weave")


# import name -> the install command of `require`'s message (an extra of this package where pyproject.toml has one)
_INSTALL_HINTS = {
    "rich": "pip install rich` (or `pip install trl[rich]`",
    "peft": "pip install peft` (or `pip install trl[peft]`",
    "weave": "pip install weave` (or `pip install trl[weave]`",
    "math_verify": "pip install math-verify` (or `pip install trl[math-verify]`",
    "matplotlib": "pip install matplotlib` (or `pip install trl[report]`",
    "openenv": "pip install openenv-core` (or `pip install trl[openenv]`",
    "deepspeed": 'pip install "deepspeed>=0.18.6"',
    "liger_kernel": 'pip install "liger-kernel>=0.8.2"',
    "bitsandbytes": 'pip install "bitsandbytes>=0.45.1"',
    "vllm": 'pip install "vllm>=0.22,<=0.31"',
    "comet": "pip install comet-ml",
    "flash_attn": "pip install flash-attn",
    "llm_blender": "pip install llm-blender",
    "latex2sympy2_extended": "pip install latex2sympy2-extended",
    "openreward": 'pip install "openreward>=0.1.109"',
}


def require(package: str, purpose: str) -> None:
    """Raise an `ImportError` with an install hint when `package` (an import name known to this module, such as
    `"rich"` or `"weave"`) is not available.

    Args:
        package (`str`): the import name; `is_<package>_available` must exist here.
        purpose (`str`): what needs it, at the start of the message (e.g. `"RichProgressCallback"`).

    Example:
        ```python
        >>> require("rich", "RichProgressCallback")  # returns None when rich is installed
        ```
    """
    check = globals().get(f"is_{package}_available")
    if check is None:
        raise ValueError(f"No availability check for {package!r}; expected one of {sorted(_checks())}.")
    if check():
        return
    hint = _INSTALL_HINTS.get(package, f"pip install {package.replace('_', '-')}")
    raise ImportError(f"{purpose} needs the `{package}` package, which is not installed: `{hint}`.")


def _checks() -> list[str]:
    return [name[3:-10] for name in globals() if name.startswith("is_") and name.endswith("_available")
            and name != "is_package_available"]
