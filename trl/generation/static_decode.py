"""The static-shape decode of the transformers backend (`trl/generation/transformers_backend.py`, docs/design.md §5).

After the shared prompt prefill (a dynamic cache, one row per distinct prompt), the prompt caches are copied into a
pre-allocated `transformers.StaticCache` of `rows` x `length` slots, `rows` and `length` rounded up to buckets, and
every decode step feeds `(rows, 1)` tokens with a `(rows, length)` attention mask and `(rows, 1)` positions that are
tensors updated in place. Shapes only change when finished rows are compacted into a smaller bucket, so the step can
be compiled with `torch.compile(dynamic=False)` into one graph per bucket. Sampling stays on the device; the host
reads the number of rows still alive once every `sync_every` steps (every step on CPU, where reading it is free and
dropping finished rows at once is what pays, see `_COMPACT_FRACTION` in `transformers_backend.py`).

Buckets: eagerly, a bucket is the exact number of rows (the cache is re-allocated at each compaction, which costs the
same copy as re-indexing a dynamic cache). Compiled, rows round up to a power of two and the cache length to a
multiple of `LENGTH_BUCKET`, so a run compiles at most `log2(max rows) + 1` graphs per length bucket; each bucket's
cache is allocated once and reused by later calls (pooled per backend).

Models whose cache is not plain full attention (sliding-window or linear-attention layers) decode on the dynamic path.
"""

from __future__ import annotations

import time
import warnings

import torch

# Cache lengths (prompt + completion slots) round up to a multiple of this when compiled, bounding the graph count.
LENGTH_BUCKET = 64
# Pass sdpa models a ready (R, 1, 1, L) boolean mask (see `_step`); False builds it through transformers each step.
_MASK_4D = True
# Steps between two reads of the alive count when compiled on CUDA (each read is a host sync).
_CUDA_SYNC_EVERY = 8


def static_cache_supported(config) -> bool:
    """Whether `config`'s model gets a cache of plain full-attention `StaticLayer`s (no sliding window, no linear
    attention), which the static decode copies rows into and out of."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    try:
        cache = StaticCache(config=config, max_cache_len=8)
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError):  # a config it cannot build
        return False
    return bool(cache.layers) and all(type(layer) is StaticLayer for layer in cache.layers)


def _step(model, cache_arg: str, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache,
          sdpa: bool = False):
    """One decode step: `(R,)` tokens, `(R, L)` mask, `(R,)` positions -> `(R, V)` float32 logits. With `sdpa`, the
    mask goes in as the `(R, 1, 1, L)` boolean mask that sdpa takes (True: attend), which transformers passes through
    as it is instead of building it at every step: one query per row, and slots after it are not filled yet (masked),
    so the padding mask is the whole mask."""
    if sdpa:
        mask = mask[:, None, None, :].bool()
    outputs = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None], use_cache=True,
                    **{cache_arg: cache})
    return outputs.logits[:, -1].float()


class StaticDecoder:
    """The decode step over a static cache, eager or compiled, with its pool of caches (compiled only).

    Args:
        compiled (`bool`): compile the decode step with `torch.compile(dynamic=False)`.
        cuda_graphs (`bool`, *optional*, defaults to `False`): compile with `mode="reduce-overhead"` (CUDA graphs:
            one launch a step instead of one per kernel; the caches are static addresses, pooled per bucket). If
            compiling fails, the step falls back to eager decoding with a warning, keeping the bucket layout.

    Attributes:
        compile_seconds (`float`): wall time of the steps that compiled a graph (first call of each bucket).
        graphs (`set[tuple[int, int]]`): the `(rows, length)` buckets decoded so far.
    """

    def __init__(self, compiled: bool, cuda_graphs: bool = False):
        self.compiled = compiled
        mode = "reduce-overhead" if cuda_graphs else None
        self._step = torch.compile(_step, dynamic=False, mode=mode) if compiled else _step
        self._pool: dict[tuple[int, int], object] = {}
        self.compile_seconds = 0.0
        self.graphs: set[tuple[int, int]] = set()

    def rows_bucket(self, n: int) -> int:
        return 1 << (n - 1).bit_length() if self.compiled else n

    def length_bucket(self, n: int) -> int:
        return -(-n // LENGTH_BUCKET) * LENGTH_BUCKET if self.compiled else n

    def sync_every(self, device: torch.device) -> int:
        return _CUDA_SYNC_EVERY if device.type == "cuda" else 1

    def cache(self, config, rows: int, length: int, like: torch.Tensor, heads: int, head_dim: int, value_dim: int):
        """A static cache of `rows` x `length` slots (from the pool when compiled: stale slots are overwritten by
        `fill` or masked)."""
        from transformers import StaticCache

        key = (rows, length)
        cache = self._pool.get(key) if self.compiled else None
        if cache is None:
            cache = StaticCache(config=config, max_cache_len=length)
            for layer in cache.layers:
                layer.lazy_initialization(like.new_empty(rows, heads, 0, head_dim),
                                          like.new_empty(rows, heads, 0, value_dim))
            if self.compiled:
                self._pool[key] = cache
        return cache

    def step(self, model, cache_arg: str, tokens, mask, positions, cache, config=None) -> torch.Tensor:
        key = (tokens.shape[0], mask.shape[1])
        sdpa = _MASK_4D and getattr(config, "_attn_implementation", None) == "sdpa"
        if key in self.graphs or not self.compiled:
            self.graphs.add(key)
            return self._step(model, cache_arg, tokens, mask, positions, cache, sdpa)
        started = time.perf_counter()
        # one graph per bucket: allow more than dynamo's default 8 for this function (buckets bound the count)
        try:
            with torch._dynamo.config.patch(recompile_limit=64):
                logits = self._step(model, cache_arg, tokens, mask, positions, cache, sdpa)
        except RuntimeError as error:  # dynamo/inductor failures are RuntimeErrors; eager raises again if it is not one
            warnings.warn(f"Compiling the decode step failed ({type(error).__name__}: {str(error)[:300]}); decoding "
                          "eagerly from now on. Set `generation_compile=False` to skip the attempt.", stacklevel=2)
            self._step = _step
            logits = _step(model, cache_arg, tokens, mask, positions, cache, sdpa)
        self.compile_seconds += time.perf_counter() - started
        self.graphs.add(key)
        return logits


def fill(cache, source_layers, index: torch.Tensor, columns: int) -> None:
    """Copy rows `index` of `source_layers` (`[(keys, values)]`, `(N, H, >= columns, D)`) into the first
    `len(index)` rows and `columns` slots of `cache`, and set its write position to `columns`."""
    for layer, (keys, values) in zip(cache.layers, source_layers):
        layer.keys[: len(index), :, :columns].copy_(keys.index_select(0, index)[:, :, :columns])
        layer.values[: len(index), :, :columns].copy_(values.index_select(0, index)[:, :, :columns])
        layer.cumulative_length.fill_(columns)


__all__ = ["LENGTH_BUCKET", "StaticDecoder", "fill", "static_cache_supported"]
