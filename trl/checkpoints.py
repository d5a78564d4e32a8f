"""Reading checkpoints without running code, and with errors that name the file.

Everything the trainers write into a checkpoint is tensors, numbers, strings and containers of them (safetensors,
JSON, or `torch.save` of such values), so everything is read back with `torch.load(..., weights_only=True)`: a pickle
that names any other Python object (a class, a function such as `os.system`) is refused instead of executed.
[`verify_checkpoint`] reads every file that resuming loads before training starts, so a corrupt, truncated or
tampered file stops the run with its name instead of failing half-way through the restore with an unpickler message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .rollout import Rollout, StepCounts


# records of ours that checkpoints written by earlier versions hold (online trainers' rollout buffer); plain
# dataclasses of tensors and values, which the restricted unpickler can rebuild without running code
RECORD_TYPES = (Rollout, StepCounts)


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated, or holds something other than plain data."""


# What resuming reads: transformers' model, optimizer, scheduler, scaler, RNG and trainer-state files, and ours
# (`online_state_<rank>.pt`, `synced_ref_model.pt`). Other files (`training_args.bin`, DeepSpeed/FSDP sub-folders,
# a user's own files) are not read on resume and are left alone.
_TORCH_FILES = re.compile(
    r"^(optimizer|scheduler|scaler|synced_ref_model|online_state_\d+|rng_state(_\d+)?)\.(pt|pth)$"
    r"|^(pytorch_model|adapter_model)(-\d+-of-\d+)?\.bin$"
)
_JSON_FILES = ("trainer_state.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _allowed_globals(extra: tuple = ()):
    """The objects a checkpoint may name besides tensors and plain values: numpy arrays and dtypes (RNG states, as
    transformers allows them) and our own data records in `extra`."""
    try:
        from transformers.trainer_pt_utils import safe_globals

        numpy_context = safe_globals()
    except ImportError:  # older transformers: no numpy allowlist needed
        numpy_context = contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(numpy_context)
    if extra:
        stack.enter_context(torch.serialization.safe_globals(list(extra)))
    return stack


def safe_load(path: str | os.PathLike, checkpoint: str | os.PathLike | None = None, allow: tuple = (),
              mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with a [`CheckpointError`] that names the file (and the
    checkpoint folder) when it is corrupt or names a Python object that is not plain data.

    Args:
        path (`str` or `os.PathLike`): the file.
        checkpoint (`str` or `os.PathLike`, *optional*): the checkpoint folder it belongs to, for the message.
        allow (`tuple`, *optional*): classes of ours that the file may hold besides plain data (older checkpoints
            stored dataclass records).
        mmap (`bool`, *optional*, defaults to `False`): map the tensors instead of reading them (a cheap check).

    Example:
        ```python
        >>> state = safe_load("out/checkpoint-10/online_state_0.pt", "out/checkpoint-10")
        ```
    """
    import pickle

    where = f"{path}" + (f" (checkpoint {checkpoint})" if checkpoint else "")
    try:
        with _allowed_globals(allow):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as error:
                if not mmap or "_use_new_zipfile_serialization" not in str(error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f"the Python object {found.group(1)}" if found else "a Python object that is not plain data"
        raise CheckpointError(
            f"Refusing to load {where}: it names {what}, and loading it could run code. The files this library and "
            "transformers write hold only tensors and plain values, so this file was not written by them or was "
            "tampered with. "
            + ("Delete it (or the whole checkpoint) and resume from a checkpoint you trust." if checkpoint
               else "Delete it.")
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"Cannot read {where}: the file is corrupt or truncated ({_first_line(error)}). "
            + ("Resume from another checkpoint, or delete this one." if checkpoint else "Delete it.")
        ) from None


def verify_checkpoint(checkpoint: str | os.PathLike, allow: tuple = ()) -> None:
    """Read every file that resuming from `checkpoint` loads (without reading the tensors' data) and raise a
    [`CheckpointError`] naming the first one that is corrupt, truncated or not plain data.

    Example:
        ```python
        >>> verify_checkpoint("out/checkpoint-500")
        ```
    """
    folder = Path(checkpoint)
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix == ".safetensors":
            _verify_safetensors(path, folder)
        elif _TORCH_FILES.match(path.name):
            safe_load(path, folder, allow=allow, mmap=True)
        elif path.name in _JSON_FILES:
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as error:
                raise CheckpointError(
                    f"Cannot read {path} (checkpoint {folder}): it is not valid JSON ({_first_line(error)}). Resume "
                    "from another checkpoint, or delete this one."
                ) from None


_PLAIN = (str, int, float, bool, complex, bytes, type(None), torch.Tensor)


def find_unsafe(value: Any, where: str = "state") -> str | None:
    """Where `value` holds something `weights_only` loading refuses (anything but tensors, plain values and lists,
    tuples, sets and dicts of them), e.g. `"state['buffer'][0]['columns']['date'][3]: datetime"`; None when nothing.

    Example:
        ```python
        >>> find_unsafe({"a": [1, 2.0, "x"]}) is None
        True
        ```
    """
    if isinstance(value, _PLAIN) and (type(value) in _PLAIN or isinstance(value, torch.Tensor)):
        return None
    if type(value) in (list, tuple, set):
        items = enumerate(value)
    elif type(value) is dict:
        items = value.items()
    else:
        return f"{where}: {type(value).__module__}.{type(value).__qualname__}"
    for key, item in items:
        found = find_unsafe(item, f"{where}[{key!r}]")
        if found:
            return found
    return None


def _verify_safetensors(path: Path, folder: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:  # checks the header against the file's size
            handle.keys()
    except Exception as error:  # safetensors raises its own error type (SafetensorError) or OSError
        raise CheckpointError(
            f"Cannot read {path} (checkpoint {folder}): the file is corrupt or truncated ({_first_line(error)}). "
            "Resume from another checkpoint, or delete this one."
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
