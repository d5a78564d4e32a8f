"""A causal LM forward that returns per-token log-probs (or a fused loss) instead of `(B, T, V)` logits.

`add_fused_lm_head(model)` patches the model's `forward`. Called with `fused_lm_head=FusedHeadRequest(...)` it runs
only the backbone, keeps the hidden states of positions whose (shifted) label is not -100, and projects them through
the LM head chunk by chunk with `trl.ops` (docs/design.md §2). Going through `forward` keeps DDP/FSDP wrappers in
charge, and PEFT models reach the patched method because `PeftModel.forward` calls it with its kwargs.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from .logprobs import chunked_token_stats, fused_token_loss, logit_transform_from_config


@dataclass
class FusedHeadRequest:
    """What the fused head should compute.

    Args:
        labels (`torch.Tensor`): `(B, T)` unshifted labels, -100 where a position is not a target.
        loss_fn (`Callable`, *optional*): elementwise per-token loss of log-probs (e.g. `trl.losses.sft.nll_loss`).
            When given, the output's `loss` is `sum(token_weight * loss_fn(logps))`, with its gradient computed
            during the forward pass; otherwise `logps` carry the gradient.
        token_weight (`float` or `torch.Tensor`, *optional*, defaults to `1.0`): weight of each token's loss.
        temperature (`float`, *optional*, defaults to `1.0`): logits are divided by it.
        router_aux_loss (`bool`, *optional*, defaults to `False`): also return the MoE load-balancing loss.
        with_sum_sq (`bool`, *optional*, defaults to `False`): also return `log_sum_sq_probs` (WPO weighting).
        hidden_only (`bool`, *optional*, defaults to `False`): skip the LM head and return the `(N, H)` last hidden
            states of the target positions as `hidden_states` (for an op that applies the head itself, e.g.
            `trl.ops.divergence.chunked_divergence`).
        logit_bias (`torch.Tensor`, *optional*): `(V,)` added to the logits (to the head's bias), e.g. a large
            negative value on tokens that sampling suppresses (a vision-language model's image tokens).
        head_op (`Callable`, *optional*): an op that applies the LM head itself, called inside the forward as
            `head_op(hidden (N, H), weight, bias)` on the target positions; its result is returned as `head_output`
            (e.g. `trl.ops.divergence.chunked_divergence` against a teacher). Inside the forward, a DDP/FSDP wrapper
            sees the head used, which applying it after a `hidden_only` forward would hide.
    """

    labels: torch.Tensor
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    token_weight: float | torch.Tensor = 1.0
    temperature: float = 1.0
    router_aux_loss: bool = False
    with_sum_sq: bool = False
    hidden_only: bool = False
    logit_bias: torch.Tensor | None = None
    head_op: Callable | None = None


@dataclass
class FusedCausalLMOutput(ModelOutput):
    """Output of a fused-head forward. `logps`, `entropy` and `correct` are `(N,)` over the `N` target positions,
    in row-major order of `label_mask` (`(B, T-1)`, True where `labels[:, 1:] != -100`)."""

    loss: torch.Tensor | None = None
    logps: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None  # (N, H), only with `hidden_only=True`
    head_output: Any = None  # what `head_op` returned


def _fused_forward(self, *args, fused_lm_head: FusedHeadRequest | None = None, **kwargs):
    if fused_lm_head is None:
        return self._trl_original_forward(*args, **kwargs)
    if args:
        raise TypeError("With `fused_lm_head=...`, pass the model inputs as keyword arguments.")
    return _forward_with_fused_head(self, fused_lm_head, **kwargs)


def _forward_with_fused_head(
    self, request: FusedHeadRequest, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
    **kwargs,
):
    kwargs.pop("labels", None)
    backbone = getattr(self, self.base_model_prefix)
    if request.router_aux_loss:
        kwargs["output_router_logits"] = True
    outputs = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
        use_cache=False, **kwargs,
    )
    hidden = outputs.last_hidden_state  # (B, T, H)
    aux_loss = _router_aux_loss(self, outputs, attention_mask) if request.router_aux_loss else None
    targets = request.labels[:, 1:]
    label_mask = targets != -100  # (B, T-1)
    hidden = hidden[:, :-1][label_mask]  # (N, H): only positions that enter the loss
    targets = targets[label_mask]
    if request.hidden_only:
        return FusedCausalLMOutput(hidden_states=hidden, label_mask=label_mask, aux_loss=aux_loss)
    weight, bias = _effective_head(self.get_output_embeddings())
    if request.head_op is not None:
        return FusedCausalLMOutput(head_output=request.head_op(hidden, weight, bias), label_mask=label_mask,
                                   aux_loss=aux_loss)
    if request.logit_bias is not None:
        bias = request.logit_bias if bias is None else bias + request.logit_bias
    options = dict(bias=bias, temperature=request.temperature, with_sum_sq=request.with_sum_sq,
                   **self._trl_logit_transform)
    if request.loss_fn is not None:
        loss, stats = fused_token_loss(hidden, weight, targets, request.loss_fn, request.token_weight, **options)
    else:
        loss, stats = None, chunked_token_stats(hidden, weight, targets, **options)
    return FusedCausalLMOutput(
        loss=loss, logps=stats.logps, entropy=stats.entropy, correct=stats.correct, mean_logits=stats.mean_logits,
        log_sum_sq_probs=stats.log_sum_sq_probs, label_mask=label_mask,
        aux_loss=aux_loss,
    )


def _effective_head(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias that `head` applies, seen through PEFT wrappers: trainable new-token rows
    (`trainable_token_indices`, also when tied to the embeddings) and `modules_to_save` copies."""
    adapter = getattr(head, "token_adapter", None)  # peft TrainableTokensWrapper
    if adapter is not None:
        base = adapter.base_layer
        if adapter.disable_adapters or adapter.merged or not adapter.active_adapters:
            return base.weight, getattr(base, "bias", None)
        return adapter.get_merged_weights(adapter.active_adapters), getattr(base, "bias", None)
    copies = getattr(head, "modules_to_save", None)  # peft ModulesToSaveWrapper
    if copies is not None and hasattr(head, "original_module"):
        module = head.original_module if head.disable_adapters else copies[head.active_adapters[0]]
        return module.weight, getattr(module, "bias", None)
    return head.weight, getattr(head, "bias", None)


def _router_aux_loss(model, outputs, attention_mask) -> torch.Tensor:
    """The architecture's own MoE load-balancing loss (the function its modelling module defines)."""
    import sys

    balance = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    if balance is None or getattr(outputs, "router_logits", None) is None:
        raise ValueError(f"{type(model).__name__} does not return router logits; it has no MoE load-balancing loss.")
    return balance(outputs.router_logits, model.num_experts, model.num_experts_per_tok, attention_mask)


def is_moe(model) -> bool:
    """Whether a causal LM is a mixture of experts with a load-balancing loss (router logits and a coefficient)."""
    return hasattr(model.config, "router_aux_loss_coef") and hasattr(model, "num_experts_per_tok")


def router_aux_loss_coef(model, coef: float | None) -> float:
    """The weight of the MoE load-balancing loss in a trainer's loss (the `router_aux_loss_coef` config field).

    Args:
        model (`PreTrainedModel`): the causal LM (inside any PEFT wrapper).
        coef (`float`, *optional*): the configured weight. `None` means the model config's own
            `router_aux_loss_coef`; `0.0` disables the auxiliary loss.

    Returns:
        `float`: the weight to use; `0.0` for a dense model (when `coef` is unset) or when disabled. When it is
        positive, request `FusedHeadRequest(router_aux_loss=True)` and add `weight * outputs.aux_loss` to the loss.

    Raises:
        `ValueError`: a non-zero `coef` for a model that is not a mixture of experts.

    Example:
        ```python
        >>> router_aux_loss_coef(qwen3_moe_model, None)  # the model config's value
        0.001
        >>> router_aux_loss_coef(qwen3_moe_model, 0.0)  # disabled
        0.0
        >>> router_aux_loss_coef(dense_model, None)
        0.0
        ```
    """
    if not is_moe(model):
        if coef:
            raise ValueError(
                f"`router_aux_loss_coef={coef}` but {type(model).__name__} is not a mixture-of-experts model with a "
                "load-balancing loss. Leave it unset (None)."
            )
        return 0.0
    return float(model.config.router_aux_loss_coef if coef is None else coef)


def _with_fused_parameter(signature: inspect.Signature) -> inspect.Signature:
    params = list(signature.parameters.values())
    fused = inspect.Parameter("fused_lm_head", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    return signature.replace(parameters=[*params[:at], fused, *params[at:]])


def add_fused_lm_head(model: torch.nn.Module) -> torch.nn.Module:
    """Patch a causal LM in place so that `model(..., fused_lm_head=FusedHeadRequest(labels))` never builds logits.

    A call without `fused_lm_head` runs the original forward. Idempotent. The architecture's logit scaling and final
    soft-capping (from its config) are honoured.

    Raises:
        `ValueError`: the model has no output embedding (LM head).

    Example:
        ```python
        >>> model = add_fused_lm_head(tiny_model())
        >>> out = model(input_ids=ids, fused_lm_head=FusedHeadRequest(labels=ids))
        >>> out.logps.shape  # (B * (T - 1),)
        ```
    """
    if getattr(model, "_trl_original_forward", None) is not None:
        return model
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings() is None); expected a causal LM.")
    model._trl_original_forward = model.forward
    model._trl_logit_transform = logit_transform_from_config(model.config)
    # A per-model copy of the function carries the model's own signature (plus `fused_lm_head`): `generate` and
    # `Trainer` inspect `forward` (e.g. for `logits_to_keep`, or to keep dataset columns).
    forward = types.FunctionType(
        _fused_forward.__code__, _fused_forward.__globals__, "forward", _fused_forward.__defaults__,
        _fused_forward.__closure__,
    )
    forward.__kwdefaults__ = dict(_fused_forward.__kwdefaults__)
    forward.__signature__ = _with_fused_parameter(inspect.signature(type(model).forward))
    model.forward = types.MethodType(forward, model)
    return model


@dataclass
class CompletionLogps:
    """Per-token log-probs of the completions of a batch, from one fused-head forward ([`completion_logps`]).

    Args:
        token_logps (`torch.Tensor`): `(B, T-1)` log-prob of each next token, 0 outside the completions.
        mask (`torch.Tensor`): `(B, T-1)` bool, True where the predicted token is a completion token.
        outputs ([`FusedCausalLMOutput`]): the forward's output (`entropy`, `correct`, ... over the `mask` positions).
        log_sum_sq_probs (`torch.Tensor`, *optional*): `(B, T-1)` `log Σ_v π(v)²` at each position, 0 outside the
            completions; only when the forward was asked for it (`with_sum_sq=True`).
    """

    token_logps: torch.Tensor
    mask: torch.Tensor
    outputs: FusedCausalLMOutput
    log_sum_sq_probs: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """`(B,)` completion tokens of each sequence."""
        return self.mask.sum(-1)

    def sums(self) -> torch.Tensor:
        """`(B,)` sequence log-probs: the sum of each completion's token log-probs."""
        return self.token_logps.sum(-1)


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     completion_mask: torch.Tensor, layout: dict | None = None, position_ids: torch.Tensor | None = None,
                     **request) -> CompletionLogps:
    """Score the completions of a batch of `prompt + completion` sequences with one fused-head forward.

    Args:
        model: a causal LM patched by [`add_fused_lm_head`] (possibly wrapped by PEFT, DDP, ...).
        input_ids (`torch.Tensor`): `(B, T)` token ids.
        attention_mask (`torch.Tensor`): `(B, T)` 1 on real tokens.
        completion_mask (`torch.Tensor`): `(B, T)` 1 on the completion tokens to score.
        layout (`dict`, *optional*): for a padding-free batch (one flat row), its `position_ids`, `sequence_index`,
            `num_sequences` and `max_sequence_length` (from `DataCollatorForPreference(padding_free=True)`); the
            result then has one row per sequence, exactly as for the padded batch.
        position_ids (`torch.Tensor`, *optional*): `(B, T)` positions of a padded batch (needed with left padding).
        **request: other [`FusedHeadRequest`] fields (`temperature`, `router_aux_loss`, `with_sum_sq`).

    Example:
        ```python
        >>> scored = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        >>> scored.sums().shape  # (B,)
        ```
    """
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    inputs = {"attention_mask": attention_mask} if layout is None else {"position_ids": layout["position_ids"]}
    if position_ids is not None and layout is None:
        inputs["position_ids"] = position_ids
    outputs = model(input_ids=input_ids, **inputs, fused_lm_head=FusedHeadRequest(labels=labels, **request))
    mask = outputs.label_mask  # (B, T-1); padding-free: (1, L-1)
    if layout is not None:  # scatter the flat row back to one row per sequence: (num_sequences, max_length - 1)
        targets = (slice(None), slice(1, None))
        rows = layout["sequence_index"][targets][mask]
        cols = layout["position_ids"][targets][mask] - 1
        shape = (layout["num_sequences"], max(layout["max_sequence_length"] - 1, 1))
        mask = torch.zeros(shape, dtype=torch.bool, device=mask.device).index_put_((rows, cols), torch.ones_like(rows, dtype=torch.bool))

        def per_position(values: torch.Tensor) -> torch.Tensor:
            return torch.zeros(shape, dtype=values.dtype, device=values.device).index_put((rows, cols), values)
    else:

        def per_position(values: torch.Tensor) -> torch.Tensor:  # (N,) over the mask -> (B, T-1), 0 elsewhere
            return torch.zeros(mask.shape, dtype=values.dtype, device=mask.device).masked_scatter(mask, values)

    sum_sq = outputs.log_sum_sq_probs
    return CompletionLogps(
        token_logps=per_position(outputs.logps), mask=mask, outputs=outputs,
        log_sum_sq_probs=per_position(sum_sq) if sum_sq is not None else None,
    )
