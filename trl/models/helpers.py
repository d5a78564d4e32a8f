"""Helpers for models that run beside the policy (reference, teacher, reward model) and for generating with a wrapped
policy: the public `trl.models` names that scripts written for the reference library import.

- [`create_reference_model`]: deprecated; a frozen copy of the policy, optionally sharing its first layers
  (implemented by `trl.models.reference.shared_copy`, which `trl.experimental.utils` re-exports).
- [`unwrap_model_for_generation`]: the bare model inside DDP/FSDP/DeepSpeed, with ZeRO-3 parameters gathered.
- [`prepare_deepspeed`] / [`prepare_fsdp`]: a frozen model placed for inference under DeepSpeed or FSDP; without them,
  what the trainers already do for their reference (`accelerator.prepare_model(model, evaluation_mode=True)`, see
  `trl/trainer/base_trainer.py`).
- [`get_act_offloading_ctx_manager`]: keep the activations saved for backward in host memory.
- [`enable_selective_activation_checkpointing`]: recompute a layer's cheap ops in backward, keep its matmul outputs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections.abc import Iterator

import torch

from .reference import freeze, shared_copy

__all__ = [
    "create_reference_model",
    "enable_selective_activation_checkpointing",
    "get_act_offloading_ctx_manager",
    "prepare_deepspeed",
    "prepare_fsdp",
    "unwrap_model_for_generation",
]


def create_reference_model(model: torch.nn.Module, num_shared_layers: int | None = None, pattern: str | None = None):
    """A frozen, eval-mode deep copy of `model` to use as a reference. Deprecated: import it from
    `trl.experimental.utils` (the stable trainers build their own reference; see `trl/trainer/base_trainer.py`).

    Args:
        model (`torch.nn.Module`): the policy.
        num_shared_layers (`int`, *optional*): share the first this many layers (and the embeddings) with `model` by
            reference instead of copying them; they are frozen in `model` as well.
        pattern (`str`, *optional*): the name prefix of a layer with `{layer}` for its index, when the layers are not
            found automatically (e.g. `"model.layers.{layer}"`).

    Returns:
        `torch.nn.Module`: the reference model, in eval mode, with no trainable parameter.

    Example:
        ```python
        >>> from trl.models import create_reference_model
        >>> ref = create_reference_model(model)  # FutureWarning: moved to trl.experimental.utils
        ```
    """
    warnings.warn(
        "`trl.create_reference_model` (and `trl.models.create_reference_model`) is deprecated and will be removed; "
        "import it from `trl.experimental.utils` instead: `from trl.experimental.utils import create_reference_model`.",
        FutureWarning,
        stacklevel=2,
    )
    return shared_copy(model, num_shared_layers=num_shared_layers, pattern=pattern)


def _deepspeed_zero_stage(accelerator) -> int | None:
    """The ZeRO stage when `accelerator` runs DeepSpeed, else None."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None) if accelerator is not None else None
    if plugin is None:
        return None
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


@contextlib.contextmanager
def unwrap_model_for_generation(model: torch.nn.Module, accelerator, gather_deepspeed3_params: bool = True
                                ) -> Iterator[torch.nn.Module]:
    """Yield the bare model inside `model` (DDP, FSDP or a DeepSpeed engine) to call `generate` on.

    Under DeepSpeed ZeRO-3 the parameters are sharded across processes: with `gather_deepspeed3_params=True` (the
    default) they are gathered on every process for the duration of the block, which makes generation fast but needs
    the whole model in each device's memory; with `False` they stay sharded and each layer's forward gathers its own
    (slow, for models that do not fit on one device). Outside ZeRO-3 nothing is gathered or copied. DeepSpeed's
    per-layer hooks stay registered during the block, so a layer may be re-partitioned after its forward and gathered
    again at the next step: correct, though slower than generating with the hooks removed. An FSDP2 model generates
    through its own per-layer all-gathers (transformers' `generate` keeps the processes in step); an FSDP1 wrapper is
    unwrapped to its inner module, which cannot run outside the wrapper: use FSDP2.

    Args:
        model (`torch.nn.Module`): the model as `accelerator.prepare` returned it (or a bare model).
        accelerator (`accelerate.Accelerator`): the accelerator that prepared it.
        gather_deepspeed3_params (`bool`, *optional*, defaults to `True`): gather ZeRO-3 parameters for the block.

    Example:
        ```python
        >>> with unwrap_model_for_generation(trainer.model, trainer.accelerator) as unwrapped:
        ...     output_ids = unwrapped.generate(**inputs, max_new_tokens=32)
        ```
    """
    unwrapped = accelerator.unwrap_model(model)
    if _deepspeed_zero_stage(accelerator) != 3 or not gather_deepspeed3_params:
        yield unwrapped
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield unwrapped


def _inference_deepspeed_config(train_config: dict, model: torch.nn.Module, mixed_precision: str) -> dict:
    """The DeepSpeed config for a frozen model, from the policy's: no optimizer or scheduler; ZeRO-3 kept (with the
    bucket sizes that "auto" would give, from the model's hidden size), any other stage turned into 0 (ZeRO-1/2 shard
    only optimizer state and gradients, which a frozen model has none of); "auto" batch sizes and precisions resolved.

    Example:
        ```python
        >>> _inference_deepspeed_config({"zero_optimization": {"stage": 2}, "optimizer": {}}, model, "bf16")
        {'zero_optimization': {'stage': 0}}
        ```
    """
    config = copy.deepcopy(train_config)
    stage = int(config.get("zero_optimization", {}).get("stage", 0))
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    if stage != 3:
        config["zero_optimization"] = {"stage": 0}
    elif getattr(model, "config", None) is not None:
        hidden = getattr(model.config, "hidden_size", None) or max(getattr(model.config, "hidden_sizes", [0]) or [0])
        zero = config.setdefault("zero_optimization", {})
        if hidden and zero.get("reduce_bucket_size") == "auto":  # "auto" is resolved by transformers only for the policy
            zero["reduce_bucket_size"] = hidden * hidden
            zero["stage3_param_persistence_threshold"] = 10 * hidden
            zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden * hidden)
    if config.get("train_micro_batch_size_per_gpu") == "auto":
        config["train_micro_batch_size_per_gpu"] = 1
    for key in ("train_batch_size", "gradient_accumulation_steps"):
        if config.get(key) == "auto":
            config.pop(key)
    for precision in ("bf16", "fp16"):  # "auto" follows the accelerator's mixed precision, as for the policy
        section = config.get(precision)
        if isinstance(section, dict) and section.get("enabled") == "auto":
            section["enabled"] = mixed_precision == precision
    return config


def prepare_deepspeed(model: torch.nn.Module, accelerator):
    """Place a frozen model (reference, teacher, reward model) for inference next to a DeepSpeed-trained policy.

    The DeepSpeed config of the run is reused without its optimizer and scheduler. Under ZeRO-3 the model is sharded
    like the policy (its parameters are gathered layer by layer in forward); under ZeRO-1/2, which only shard optimizer
    state and gradients that a frozen model does not have, it gets stage 0 (a full copy per process). Without DeepSpeed
    the model is prepared as the trainers prepare their reference: moved to the device, not wrapped.

    Args:
        model (`torch.nn.Module`): the model to prepare.
        accelerator (`accelerate.Accelerator`): the run's accelerator.

    Returns:
        The DeepSpeed inference engine (or the model without DeepSpeed), in eval mode with no trainable parameter.

    Example:
        ```python
        >>> ref_model = prepare_deepspeed(ref_model, trainer.accelerator)
        ```
    """
    stage = _deepspeed_zero_stage(accelerator)
    if stage is None:
        return freeze(accelerator.prepare_model(freeze(model), evaluation_mode=True))
    import deepspeed

    config = _inference_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, model,
                                         accelerator.mixed_precision)
    engine, *_ = deepspeed.initialize(model=freeze(model), config=config)
    engine.eval()
    return engine


def prepare_fsdp(model: torch.nn.Module, accelerator):
    """Shard a frozen model (reference, teacher, reward model) with the run's FSDP settings, so that it does not cost a
    full copy per process next to an FSDP-trained policy. FSDP2 (`fully_shard`) and FSDP1 are both handled; without
    FSDP the model is prepared as the trainers prepare their reference (moved to the device, not wrapped).

    Args:
        model (`torch.nn.Module`): the model to prepare.
        accelerator (`accelerate.Accelerator`): the run's accelerator.

    Returns:
        The sharded model (or the model without FSDP), in eval mode with no trainable parameter.

    Example:
        ```python
        >>> teacher = prepare_fsdp(teacher, trainer.accelerator)
        ```
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        return freeze(accelerator.prepare_model(freeze(model), evaluation_mode=True))
    freeze(model)
    if getattr(plugin, "fsdp_version", 1) == 2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return freeze(fsdp2_prepare_model(accelerator, model))
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        return freeze(model)
    plugin.set_auto_wrap_policy(model)
    wrapped = FullyShardedDataParallel(
        model,
        sharding_strategy=plugin.sharding_strategy,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states,
        backward_prefetch=plugin.backward_prefetch,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=accelerator.device,
    )
    return freeze(wrapped)


# ---------------------------------------------------------------- activation memory


class _ActivationOffload(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensors hooks that move each tensor saved for backward of at least `min_offload_size` bytes to host
    memory, and back to its device when backward needs it. Tensors saved while the output head runs stay where they
    are: the head's logits are large and used straight away by the loss, so copying them out and back only costs time.
    Parameters are never copied (they stay alive anyway)."""

    def __init__(self, model: torch.nn.Module, use_pin_memory: bool, min_offload_size: int, warn_if_no_head: bool):
        self._paused = 0
        self._handles = []
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None:
            def pause(*_):
                self._paused += 1

            def resume(*_):
                self._paused -= 1

            self._handles = [head.register_forward_pre_hook(pause), head.register_forward_hook(resume)]
        elif warn_if_no_head:
            warnings.warn(
                f"{type(model).__name__} has no output embeddings (`get_output_embeddings()`), so the activations of "
                "its output head are offloaded too; that is correct but slower.",
                stacklevel=3,
            )
        pin = use_pin_memory and torch.cuda.is_available()
        self._model = model
        self._parameter_storages: set[int] = set()

        def pack(tensor: torch.Tensor):
            if not self._should_offload(tensor, min_offload_size):
                return tensor
            host = torch.empty(tensor.shape, dtype=tensor.dtype, layout=tensor.layout, pin_memory=pin)
            host.copy_(tensor, non_blocking=pin)
            return (tensor.device, host)

        def unpack(packed):
            if isinstance(packed, torch.Tensor):
                return packed
            device, host = packed
            return host.to(device, non_blocking=pin)

        super().__init__(pack, unpack)

    # tensors on these devices already live in host memory
    _host_device_types = ("cpu",)

    def _should_offload(self, tensor: torch.Tensor, min_offload_size: int) -> bool:
        return not (
            self._paused
            or tensor.device.type in self._host_device_types
            or tensor.numel() * tensor.element_size() < min_offload_size
            # a weight (or a view of one, such as the transpose a linear layer saves) stays alive anyway
            or tensor.untyped_storage().data_ptr() in self._parameter_storages
        )

    def __enter__(self):
        # read at each entry: FSDP and DeepSpeed swap parameter storages between steps
        self._parameter_storages = {p.untyped_storage().data_ptr() for p in self._model.parameters()}
        return super().__enter__()

    def remove(self) -> None:
        """Remove the hooks on the output head (the context manager itself can be entered again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def get_act_offloading_ctx_manager(model: torch.nn.Module, use_pin_memory: bool = True, use_streams: bool = True,
                                   min_offload_size: int = 1024, max_fwd_stash_size: int = 5,
                                   warn_if_no_head: bool = True):
    """A context manager under which the activations that autograd saves for backward live in host memory.

    Wrap the forward (and loss) of a training step in it: tensors of at least `min_offload_size` bytes are copied to
    the CPU when saved (into pinned memory on CUDA, so the copy is asynchronous) and brought back when backward uses
    them. The output head is skipped (see `_ActivationOffload`). This trades device memory for host-device traffic.

    Args:
        model (`torch.nn.Module`): the model (its output head is found with `get_output_embeddings()`).
        use_pin_memory (`bool`, *optional*, defaults to `True`): stage copies in pinned host memory (CUDA only).
        use_streams (`bool`, *optional*, defaults to `True`): accepted for compatibility; copies run on the current
            stream (non-blocking from pinned memory), there is no separate copy stream.
        min_offload_size (`int`, *optional*, defaults to `1024`): tensors smaller than this many bytes stay.
        max_fwd_stash_size (`int`, *optional*, defaults to `5`): accepted for compatibility; unused without streams.
        warn_if_no_head (`bool`, *optional*, defaults to `True`): warn when the model has no output head to skip.

    Example:
        ```python
        >>> with get_act_offloading_ctx_manager(model):
        ...     loss = model(**batch).loss
        >>> loss.backward()
        ```
    """
    del use_streams, max_fwd_stash_size  # see the docstring
    return _ActivationOffload(model, use_pin_memory, min_offload_size, warn_if_no_head)


# Ops whose outputs are worth keeping: recomputing them costs a matmul. Everything else in a layer (norms,
# activations, elementwise) is recomputed in backward.
_SAVE_OPS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu", "_flash_attention_forward", "_efficient_attention_forward")


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that transformers marks for gradient checkpointing (its decoder layers)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_selective_activation_checkpointing(model: torch.nn.Module, ops_to_save: tuple[str, ...] | None = None
                                              ) -> int:
    """Checkpoint every decoder layer of `model` selectively: in backward, the layer's cheap ops (norms, activations,
    elementwise) are recomputed while the outputs of its matmuls and attention (`ops_to_save`) are kept from forward.
    Memory lands between full checkpointing and none, for a fraction of full checkpointing's recompute.

    Each layer checkpoints through transformers' own mechanism (`GradientCheckpointingLayer`), given
    `torch.utils.checkpoint.checkpoint(use_reentrant=False)` with a `create_selective_checkpoint_contexts` policy; it
    applies in training mode with gradients on. Call it after `model.gradient_checkpointing_enable()` (if at all), which
    would otherwise replace the checkpoint function with a full one.

    Args:
        model (`torch.nn.Module`): a transformers model (its layers are the `GradientCheckpointingLayer`s).
        ops_to_save (`tuple[str, ...]`, *optional*): names of `torch.ops.aten` ops whose outputs are kept; by default
            the matmuls and attention kernels.

    Returns:
        `int`: the number of layers wrapped.

    Example:
        ```python
        >>> enable_selective_activation_checkpointing(model)
        4
        ```
    """
    from torch.utils import checkpoint as torch_checkpoint

    aten = torch.ops.aten
    save = {getattr(aten, name).default for name in (ops_to_save or _SAVE_OPS) if hasattr(aten, name)}

    def policy(ctx, op, *args, **kwargs):
        policies = torch_checkpoint.CheckpointPolicy
        return policies.MUST_SAVE if op in save else policies.PREFER_RECOMPUTE

    layers = _decoder_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no decoder layers that transformers marks for checkpointing "
            "(`GradientCheckpointingLayer`); selective activation checkpointing needs them."
        )
    # transformers' own checkpointing of a layer calls `_gradient_checkpointing_func` (while training, with gradients
    # on), turning the layer's KV cache off and keeping module hooks outside the checkpoint: give it a selective one
    def contexts():
        return torch_checkpoint.create_selective_checkpoint_contexts(policy)

    checkpoint_fn = functools.partial(torch_checkpoint.checkpoint, use_reentrant=False, context_fn=contexts)
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = checkpoint_fn
    return len(layers)
