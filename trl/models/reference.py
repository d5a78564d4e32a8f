"""Reference models and cached reference log-probs (docs/design.md §6)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Put `model` in eval mode with no parameter requiring grad."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def independent_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy of `model` (the reference of a full fine-tune given as an object)."""
    return freeze(copy.deepcopy(model))


# Where the decoder layers of common architectures live; `{layer}` is the layer index.
LAYER_PATTERNS = (
    "model.layers.{layer}",
    "model.language_model.layers.{layer}",
    "transformer.h.{layer}",
    "model.decoder.layers.{layer}",
    "gpt_neox.layers.{layer}",
    "transformer.blocks.{layer}",
    "base_model.model.model.layers.{layer}",
)


def shared_copy(model: torch.nn.Module, num_shared_layers: int | None = None, pattern: str | None = None):
    """A frozen, eval-mode copy of `model` whose first `num_shared_layers` layers (and everything before them, such as
    the embeddings) are the policy's own parameters, shared by reference, so they cost no memory twice.

    The shared parameters are frozen in `model` too: a reference must not move, so those layers stop training. The
    layers after them, the final norm and the head are independent copies. Without `num_shared_layers` this is
    [`independent_copy`].

    Args:
        model (`torch.nn.Module`): the policy.
        num_shared_layers (`int`, *optional*): how many leading layers to share (at least 1, fewer than the layers the
            model has).
        pattern (`str`, *optional*): the parameter-name prefix of a layer, with `{layer}` for its index (e.g.
            `"model.layers.{layer}"`); by default the first of `LAYER_PATTERNS` that matches the model.

    Example:
        ```python
        >>> from trl.models.tiny import tiny_model
        >>> policy = tiny_model()
        >>> ref = shared_copy(policy, num_shared_layers=2)
        >>> ref.model.layers[0].mlp.up_proj.weight is policy.model.layers[0].mlp.up_proj.weight
        True
        ```
    """
    if num_shared_layers is None:
        return independent_copy(model)
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # older transformers
        from transformers.integrations import is_deepspeed_zero3_enabled
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "Sharing layers with the reference does not work under DeepSpeed ZeRO-3 (the parameters are sharded and "
            "cannot be deep-copied). Use `num_shared_layers=None` with `prepare_deepspeed`, or ZeRO-1/2."
        )
    names = [name for name, _ in model.named_parameters()]
    if pattern is None:
        pattern = next((p for p in LAYER_PATTERNS if any(n.startswith(p.format(layer=0) + ".") for n in names)), None)
        if pattern is None:
            raise ValueError(
                f"Could not find the layers of {type(model).__name__} (tried {list(LAYER_PATTERNS)}). Pass "
                "`pattern`, the name prefix of a layer with `{layer}` for its index, e.g. 'model.layers.{layer}'."
            )
    if "{layer}" not in pattern:
        raise ValueError(f"`pattern` must contain '{{layer}}' for the layer index; got {pattern!r}.")
    num_layers = 0
    while any(n.startswith(pattern.format(layer=num_layers) + ".") for n in names):
        num_layers += 1
    if not 1 <= num_shared_layers < max(num_layers, 1) or num_layers == 0:
        raise ValueError(
            f"`num_shared_layers` must be between 1 and {num_layers - 1} (the model has {num_layers} layers matching "
            f"{pattern!r}); got {num_shared_layers}. Use `num_shared_layers=None` for an independent copy."
        )
    first_unshared = pattern.format(layer=num_shared_layers) + "."
    cut = next(i for i, n in enumerate(names) if n.startswith(first_unshared))
    shared = {id(param) for name, param in model.named_parameters() if name in set(names[:cut])}

    ref = copy.deepcopy(model)
    # every name of a shared tensor, tied duplicates included (a tied head shares the embeddings it is tied to)
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in shared:
            module_name, _, param_name = name.rpartition(".")
            ref.get_submodule(module_name)._parameters[param_name] = param
            param.requires_grad_(False)
    return freeze(ref)


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 256, exclude_adapters: bool = False) -> str:
    """A short hash that changes when the model's architecture or weights change.

    Hashes the config, every parameter's name, shape and dtype, and a strided sample of its values (plus its sum), so
    it costs a fraction of a forward pass even for large models. With `exclude_adapters`, PEFT adapter weights are left
    out (the reference of a PEFT policy is the model without them; a fresh adapter is random).

    Example:
        ```python
        >>> model_fingerprint(model)
        '3f6c0a1b9e2d4c57'
        ```
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if exclude_adapters and "lora_" in name:
                continue
            name = name.replace(".base_layer", "")
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // samples_per_tensor)
            sample = torch.cat([flat[::step][:samples_per_tensor].float(), flat.float().sum().reshape(1)])
            digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
            digest.update(sample.cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where precomputed reference log-probs are kept: `$TRL_CACHE_DIR`, else `~/.cache/trl`."""
    return Path(os.environ.get("TRL_CACHE_DIR", Path.home() / ".cache" / "trl")) / "ref_logps"


def cache_key(**parts) -> str:
    """Hash of everything the cached values depend on (model and dataset fingerprints, truncation, ...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached(key: str) -> dict[str, torch.Tensor] | None:
    """The cached values of `key`, or None when there are none (or the file cannot be read safely: it is then
    recomputed, with a warning naming it)."""
    from ..checkpoints import CheckpointError, safe_load

    path = cache_dir() / f"{key}.pt"
    if not path.exists():
        return None
    try:
        return safe_load(path)
    except CheckpointError as error:
        warnings.warn(f"Ignoring the cached reference log-probs: {error}", stacklevel=2)
        return None


def save_cached(key: str, values: dict[str, torch.Tensor]) -> Path:
    path = cache_dir() / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(values, tmp)
    tmp.replace(path)  # atomic: a concurrent or interrupted run never reads half a file
    return path


def add_reference_adapter(model, name: str = "ref") -> str:
    """Add a frozen copy of a PeftModel's active adapter under `name`: the reference of a policy whose adapter was
    already trained (e.g. by SFT), without a second model in memory. Returns `name`.

    Example:
        ```python
        >>> add_reference_adapter(peft_model)
        'ref'
        ```
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    active = model.active_adapter
    config = copy.deepcopy(model.peft_config[active])
    config.inference_mode = True
    model.add_adapter(name, config)
    set_peft_model_state_dict(model, get_peft_model_state_dict(model, adapter_name=active), adapter_name=name)
    model.set_adapter(active)  # the trained adapter stays the active, trainable one
    for param_name, param in model.named_parameters():
        if f".{name}." in param_name:
            param.requires_grad_(False)
    return name


@contextlib.contextmanager
def use_adapter(model, name: str):
    """Run `model` with adapter `name` active, then restore the previous adapter and its trainable flags."""
    previous = model.active_adapter
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.set_adapter(name)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for param_name, param in model.named_parameters():
            param.requires_grad_(param_name in trainable)
