"""Moved to `trl.ops.fused_head`; this module re-exports it for scripts that import the old path."""

from ..ops.fused_head import (
    CompletionLogps,
    FusedCausalLMOutput,
    FusedHeadRequest,
    add_fused_lm_head,
    completion_logps,
    is_moe,
    router_aux_loss_coef,
)

__all__ = [
    "CompletionLogps",
    "FusedCausalLMOutput",
    "FusedHeadRequest",
    "add_fused_lm_head",
    "completion_logps",
    "is_moe",
    "router_aux_loss_coef",
]
