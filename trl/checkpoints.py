"""Reading checkpoints without running code, and with errors that name the file.

Everything the trainers write into a checkpoint is tensors, numbers, strings and containers of them (safetensors,
JSON, or `torch.save` of such values), so everything is read back with `torch.load(..., weights_only=True)`: a pickle
that names any other Python object (a class, a function such as `os.system`) is refused instead of executed.
[`verify_checkpoint`] reads every file that resuming loads before training starts, so a corrupt, truncated or
tampered file stops the run with its name instead of failing half-way through the restore with an unpickler message.
"""

from __future__ import annotations

import contextlib
import io
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


# What resuming reads: transformers' model, optimizer, scheduler, scaler, RNG and trainer-state files, accelerate's
# FSDP files (per-rank `.bin` files, and sub-folders in torch's distributed-checkpoint format, whose `.metadata` torch
# reads with plain `pickle`), and ours (`online_state_<rank>.pt`, `synced_ref_model.pt`). `training_args.bin` and a
# user's own files are not read on resume and are left alone. DeepSpeed reads its `global_step*` folders with its own
# loader, which this module does not check: resume DeepSpeed runs only from checkpoints you trust.
_TORCH_FILES = re.compile(
    r"^(optimizer|scheduler|scaler|synced_ref_model|online_state_\d+|rng_state(_\d+)?)\.(pt|pth)$"
    r"|^(pytorch_model|adapter_model)(-\d+-of-\d+)?\.bin$"
    r"|^(pytorch_model_fsdp|optimizer)(_\d+)?(_rank\d+)?\.bin$"
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


def safe_load(path: str | os.PathLike | io.BytesIO, checkpoint: str | os.PathLike | None = None, allow: tuple = (),
              mmap: bool = False, name: str | None = None) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with a [`CheckpointError`] that names the file (and the
    checkpoint folder) when it is corrupt or names a Python object that is not plain data.

    Args:
        path (`str`, `os.PathLike` or `io.BytesIO`): the file (or bytes read from one).
        checkpoint (`str` or `os.PathLike`, *optional*): the checkpoint folder it belongs to, for the message.
        allow (`tuple`, *optional*): classes of ours that the file may hold besides plain data (older checkpoints
            stored dataclass records).
        mmap (`bool`, *optional*, defaults to `False`): map the tensors instead of reading them (a cheap check).
        name (`str`, *optional*): what to call `path` in messages (defaults to the path).

    Example:
        ```python
        >>> state = safe_load("out/checkpoint-10/online_state_0.pt", "out/checkpoint-10")
        ```
    """
    import pickle

    where = (name or f"{path}") + (f" (checkpoint {checkpoint})" if checkpoint else "")
    try:
        with _allowed_globals(allow):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as error:
                if not mmap or "_use_new_zipfile_serialization" not in str(error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except pickle.UnpicklingError as error:
        raise _refused(where, error, checkpoint) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise _corrupt(where, error, checkpoint) from None


def _refused(where: str, error: BaseException, checkpoint) -> CheckpointError:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    what = f"the Python object {found.group(1)}" if found else "a Python object that is not plain data"
    return CheckpointError(
        f"Refusing to load {where}: it names {what}, and loading it could run code. The files this library, "
        "transformers and accelerate write hold only tensors and plain values, so this file was not written by them "
        "or was tampered with. "
        + ("Delete it (or the whole checkpoint) and resume from a checkpoint you trust." if checkpoint
           else "Delete it.")
    )


def _corrupt(where: str, error: BaseException, checkpoint) -> CheckpointError:
    return CheckpointError(
        f"Cannot read {where}: the file is corrupt or truncated ({_first_line(error)}). "
        + ("Resume from another checkpoint, or delete this one." if checkpoint else "Delete it.")
    )


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
        elif path.is_dir() and (path / ".metadata").is_file():
            _verify_distributed_checkpoint(path, folder)


class _Refused(Exception):
    """A pickle names a global outside the allowed ones."""


def _load_distributed_metadata(file) -> Any:
    """Unpickle the `.metadata` of a torch distributed checkpoint (FSDP's sharded state dicts) allowing only what such
    a file holds: the dataclasses and enums of `torch.distributed.checkpoint`, `torch.Size`, dtypes, layouts and
    paths. Any other global (a function such as `os.system`) raises `_Refused` instead of running."""
    import dataclasses
    import enum
    import importlib
    import pathlib
    import pickle

    def allowed(module: str, found: Any) -> bool:
        if isinstance(found, type) and module.startswith("torch.distributed.checkpoint"):
            return dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)
        return (found is torch.Size or isinstance(found, (torch.dtype, torch.layout))
                or found is getattr(torch.serialization, "_get_layout", None)
                or (isinstance(found, type) and issubclass(found, pathlib.PurePath)))

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            found = getattr(importlib.import_module(module), name, None) if module.startswith(("torch", "pathlib")) \
                else None
            if not allowed(module, found):
                raise _Refused(f"Unsupported global: GLOBAL {module}.{name}")
            return found

    return Restricted(file).load()


def _verify_distributed_checkpoint(path: Path, folder: Path) -> None:
    """A torch distributed-checkpoint folder: its `.metadata` (which torch reads with plain `pickle`) and each
    non-tensor value stored in its shards (which torch reads with `weights_only=False`) must hold plain data only."""
    metadata_file = path / ".metadata"
    try:
        with open(metadata_file, "rb") as handle:
            metadata = _load_distributed_metadata(handle)
    except _Refused as error:
        raise _refused(f"{metadata_file} (checkpoint {folder})", error, folder) from None
    except Exception as error:  # a truncated or garbled pickle raises many types
        raise _corrupt(f"{metadata_file} (checkpoint {folder})", error, folder) from None
    kinds = getattr(metadata, "state_dict_metadata", {})
    for index, info in getattr(metadata, "storage_data", {}).items():
        if type(kinds.get(getattr(index, "fqn", None))).__name__ != "BytesStorageMetadata":
            continue  # tensors are raw bytes
        if getattr(info, "transform_descriptors", None):
            continue  # stored through a transform (e.g. compressed): only torch's own reader can decode it
        shard = path / info.relative_path
        with open(shard, "rb") as handle:
            handle.seek(info.offset)
            data = handle.read(info.length)
        safe_load(io.BytesIO(data), folder, name=f"{shard} (value {index.fqn!r})")


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


_IMAGE_KEY = "_trl_png_image"  # a PIL image stored as plain data: {_IMAGE_KEY: PNG bytes}


def images_to_plain(value: Any) -> Any:
    """`value` with every PIL image (a dataset's image column in a rollout buffer) replaced by its lossless PNG bytes
    in a one-key dict, so that the state can be saved and read back with `weights_only=True` (no code runs when the
    bytes are decoded: Pillow only parses the PNG). Images PNG cannot hold losslessly (e.g. CMYK) are left as they are.

    Example:
        ```python
        >>> plain = images_to_plain({"image": [Image.new("RGB", (2, 2))]})
        >>> plain_to_images(plain)["image"][0].size
        (2, 2)
        ```
    """
    if type(value).__module__.startswith("PIL.") and hasattr(value, "save") and getattr(value, "mode", None) in (
        "1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"
    ):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {_IMAGE_KEY: buffer.getvalue()}
    if type(value) in (list, tuple):
        return type(value)(images_to_plain(item) for item in value)
    if type(value) is dict:
        return {key: images_to_plain(item) for key, item in value.items()}
    return value


def plain_to_images(value: Any) -> Any:
    """The inverse of [`images_to_plain`]: PNG-bytes dicts become PIL images again."""
    if type(value) is dict and set(value) == {_IMAGE_KEY} and isinstance(value[_IMAGE_KEY], bytes):
        from PIL import Image

        with Image.open(io.BytesIO(value[_IMAGE_KEY])) as image:
            image.load()
            return image.copy()
    if type(value) in (list, tuple):
        return type(value)(plain_to_images(item) for item in value)
    if type(value) is dict:
        return {key: plain_to_images(item) for key, item in value.items()}
    return value


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
