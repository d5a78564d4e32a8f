"""Memory-efficient LM-head operations: per-token log-probs, entropy, accuracy, fused per-token losses and the
student-teacher divergence of distillation, computed from last hidden states chunk by chunk, never materialising
`(N, V)` logits. Imports only torch and the stdlib."""

from .divergence import ChunkedDivergenceFunction, DivergenceOutput, chunked_divergence, naive_divergence
from .logprobs import (
    TokenStats,
    chunked_token_stats,
    default_chunk_size,
    fused_token_loss,
    logit_transform_from_config,
    naive_token_stats,
)

__all__ = [
    "ChunkedDivergenceFunction",
    "DivergenceOutput",
    "TokenStats",
    "chunked_divergence",
    "chunked_token_stats",
    "default_chunk_size",
    "fused_token_loss",
    "logit_transform_from_config",
    "naive_divergence",
    "naive_token_stats",
]
