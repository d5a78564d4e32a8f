"""Memory-efficient LM-head operations: per-token log-probs, entropy, accuracy and fused per-token losses computed
from last hidden states chunk by chunk, never materialising `(N, V)` logits. Imports only torch and the stdlib."""

from .logprobs import (
    TokenStats,
    chunked_token_stats,
    default_chunk_size,
    fused_token_loss,
    logit_transform_from_config,
    naive_token_stats,
)

__all__ = [
    "TokenStats",
    "chunked_token_stats",
    "default_chunk_size",
    "fused_token_loss",
    "logit_transform_from_config",
    "naive_token_stats",
]
