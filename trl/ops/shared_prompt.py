"""One forward for all the completions of a prompt: the prompt's tokens are run once per micro-batch, not once per
completion (docs/design.md §5, the shared-prompt forward).

An online trainer scores `G` completions of each prompt. Laid out the usual way, one left-padded row per completion,
every row runs the prompt again (and the padding to the longest prompt). Here the rows that share a prompt become one
row: the prompt minus its last token, then one segment per completion, each `[last prompt token, completion tokens]`.
A segment attends to the shared prompt and causally to itself, and its positions continue the prompt's, so every
completion token sees exactly the context it sees in its own row: the same log-probs up to float rounding (the
attention sums run over a different layout). The last prompt token is repeated in every segment because its hidden
state predicts the first completion token; repeating it keeps each segment's labels a plain shift of its tokens, so
the fused LM head (`trl/ops/fused_head.py`) scores the row unchanged.

The mask is a dense `(U, 1, T, T)` boolean tensor, which sdpa and eager attention take as it is (eager as an additive
float mask); it supports only models whose layers are all full attention (a sliding window would need its own mask).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..data.conversation import common_prefix_length

# Above this many mask elements (rows x width x width) the padded layout is used instead (see `share_prompts`).
MAX_MASK_ELEMENTS = 1 << 24
# The layout is used only when it runs at least this fraction fewer positions than the padded rows (the dense layers'
# work; at 10%, DPO on the reference CPU shape ran 5% slower shared: the attention over the wider rows ate the saving)
# and at most this many times their attention scores (rows x width^2; a dense mask skips no block, and eager attention
# keeps the scores for the backward pass).
MIN_SAVING = 0.2
MAX_ATTENTION_GROWTH = 2.0


@dataclass
class SharedPromptBatch:
    """A micro-batch in the shared-prompt layout ([`share_prompts`]).

    Args:
        input_ids (`torch.Tensor`): `(U, T)`, one row per distinct prompt, right-padded.
        position_ids (`torch.Tensor`): `(U, T)`: the prompt's positions, then each segment's continuing them.
        attention_mask (`torch.Tensor`): `(U, 1, T, T)` bool, True where a query may attend to a key.
        score_mask (`torch.Tensor`): `(U, T)` 1 on the completion tokens to score.
        row (`torch.Tensor`): `(B,)` the layout row of each completion.
        columns (`torch.Tensor`): `(B, C)` the column, in the `(U, T-1)` next-token space, of each completion token.
        valid (`torch.Tensor`): `(B, C)` bool, True on each completion's tokens (its `completion_mask`).
        ends (`torch.Tensor`): `(B,)` the column of each sequence's last token (its segment's last), where a
            sequence classifier reads its score.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    score_mask: torch.Tensor
    row: torch.Tensor
    columns: torch.Tensor
    valid: torch.Tensor
    ends: torch.Tensor

    def mask_for(self, attn_implementation: str | None, dtype: torch.dtype) -> torch.Tensor:
        """The attention mask as `attn_implementation` takes it: boolean for sdpa, additive (0 / dtype's minimum)
        for eager."""
        if attn_implementation == "eager":
            bias = torch.zeros(self.attention_mask.shape, dtype=dtype, device=self.attention_mask.device)
            return bias.masked_fill_(~self.attention_mask, torch.finfo(dtype).min)
        return self.attention_mask

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """`(U, T-1)` per-position values of the layout -> `(B, C)` per completion token, 0 outside `valid`."""
        picked = values[self.row[:, None], self.columns]
        return picked.masked_fill(~self.valid, 0)


def unsupported_reason(model) -> str | None:
    """Why `model` (a causal LM, outside any PEFT wrapper) cannot run the shared-prompt layout, or None when it can:
    the layout needs sdpa or eager attention (which take a dense mask as it is), full attention in every layer, and
    positions that come from `position_ids` alone (no ALiBi)."""
    from ..generation.static_decode import static_cache_supported

    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        return f"its attention implementation is {implementation!r} (the layout needs 'sdpa' or 'eager')"
    config = model.config
    if not type(model).__module__.startswith("transformers.models."):
        # remote code (trust_remote_code) may build its own mask from a 2D one or use ALiBi: not known to take it
        return (f"its modelling code ({type(model).__module__}) is not one of transformers' models, which pass a 4D "
                "mask through as it is")
    if not static_cache_supported(config):
        return "it has sliding-window or linear-attention layers (the layout's mask is full attention)"
    if any(kind != "global" for kind in getattr(config, "attention_layers", None) or ()):
        # GPT-Neo's local layers: not in a cache layout, and a 4D mask passes through with no window applied
        return "it has local-attention layers (the layout's mask is full attention)"
    if config.model_type in ("bloom", "mpt") or getattr(config, "alibi", False):  # MPT and Bloom: always ALiBi
        # ALiBi biases a key by its column in the row, not its position: wrong for every segment after the first
        return "it uses ALiBi position biases (they follow the key's column in the row, not its position)"
    return None


_STRUCTURE_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> unsupported_reason is None


def can_share(model) -> bool:
    """Whether `model` (outside any PEFT wrapper) can score a layout now: its attention implementation, read at every
    call (it can be switched), and [`unsupported_reason`]'s checks of its structure, run once per model. A trainer
    calls it for every model it scores with: the policy, and a separate reference model of another architecture."""
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if model not in _STRUCTURE_CHECKED:
        _STRUCTURE_CHECKED[model] = unsupported_reason(model) is None
    return _STRUCTURE_CHECKED[model]


VLM_REASON = "it is a vision-language model (its image tokens are laid out per row)"
MOE_REASON = "its MoE load-balancing loss counts the tokens of the one-row-per-sequence layout"


def sharing_enabled(model, setting: bool | None, *reasons: str | None) -> bool:
    """A trainer's `share_prompt_forward` decision for `model` (a causal LM or classifier outside any PEFT wrapper).

    Args:
        setting (`bool`, *optional*): the config field: None shares where possible, True requires it, False never.
        reasons (`str`, *optional*): the trainer's own reasons not to share (None where one does not apply), checked
            after [`unsupported_reason`].

    Raises:
        `ValueError`: `setting=True` where the layout cannot apply, naming why.
    """
    if setting is False:
        return False
    reason = unsupported_reason(model) or next((r for r in reasons if r), None)
    if reason is not None and setting:
        raise ValueError(f"`share_prompt_forward=True`, but {type(model).__name__} cannot share the prompt forward: "
                         f"{reason}. Leave `share_prompt_forward` unset (None) to share only where it applies.")
    return reason is None


def share_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                  completion_mask: torch.Tensor, max_mask_elements: int = MAX_MASK_ELEMENTS,
                  min_saving: float = MIN_SAVING, max_attention_growth: float = MAX_ATTENTION_GROWTH,
                  ) -> SharedPromptBatch | None:
    """Lay out a micro-batch of completions with one row per distinct prompt.

    Args:
        prompt_ids (`torch.Tensor`): `(B, P)` left-padded prompts.
        prompt_mask (`torch.Tensor`): `(B, P)` 1 on real prompt tokens.
        completion_ids (`torch.Tensor`): `(B, C)` right-padded completions.
        completion_mask (`torch.Tensor`): `(B, C)` 1 on each completion's tokens, a run from its first column.
        max_mask_elements (`int`, *optional*): the largest dense mask to build.
        min_saving (`float`, *optional*): the smallest fraction of the padded rows' positions the layout must save.
        max_attention_growth (`float`, *optional*): the most attention scores the layout may compute, as a multiple
            of the padded rows' (one `(P + C)`-wide causal row per completion).

    Returns:
        [`SharedPromptBatch`], or None when the layout would not pay or cannot express the batch: no two rows share
        a prompt, a completion mask has holes, the mask would exceed `max_mask_elements`, it saves under
        `min_saving` of the positions, or it costs over `max_attention_growth` times the attention.

    Example:
        ```python
        >>> shared = share_prompts(prompt_ids, prompt_mask, completion_ids, completion_mask)
        >>> shared.input_ids.shape  # (distinct prompts, shared width)
        ```
    """
    device = prompt_ids.device
    lengths = completion_mask.sum(-1)
    columns = torch.arange(completion_mask.shape[1], device=device)
    if not torch.equal(completion_mask.bool(), columns < lengths[:, None]):
        return None
    prompts = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
    groups: dict[tuple, list[int]] = {}
    for b, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(b)
    if len(groups) == len(prompts) or any(len(prompt) == 0 for prompt in groups):
        return None
    lengths_list = lengths.tolist()
    widths = [len(prompt) - 1 + sum(1 + lengths_list[b] for b in rows) for prompt, rows in groups.items()]
    width = max(widths)
    padded_width = prompt_ids.shape[1] + completion_ids.shape[1]
    if (len(groups) * width * width > max_mask_elements
            or len(groups) * width > (1 - min_saving) * len(prompts) * padded_width
            or len(groups) * width * width > max_attention_growth * len(prompts) * padded_width * padded_width):
        return None

    num_rows, num_completions = len(groups), len(prompts)
    input_ids = torch.zeros(num_rows, width, dtype=prompt_ids.dtype)
    position_ids = torch.zeros(num_rows, width, dtype=torch.long)
    segment = torch.full((num_rows, width), -1, dtype=torch.long)  # 0: shared prompt, i: completion i, -1: padding
    score_mask = torch.zeros(num_rows, width, dtype=torch.long)
    row = torch.zeros(num_completions, dtype=torch.long)
    start = torch.zeros(num_completions, dtype=torch.long)
    completions = completion_ids.cpu()
    for u, (prompt, rows) in enumerate(groups.items()):
        shared = len(prompt) - 1
        input_ids[u, :shared] = torch.tensor(prompt[:-1], dtype=prompt_ids.dtype)
        position_ids[u, :shared] = torch.arange(shared)
        segment[u, :shared] = 0
        at = shared
        for i, b in enumerate(rows, start=1):
            n = lengths_list[b]
            input_ids[u, at] = prompt[-1]
            input_ids[u, at + 1: at + 1 + n] = completions[b, :n]
            position_ids[u, at: at + 1 + n] = torch.arange(shared, shared + 1 + n)
            segment[u, at: at + 1 + n] = i
            score_mask[u, at + 1: at + 1 + n] = 1
            row[b], start[b] = u, at
            at += 1 + n
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    keys, queries = segment[:, None, :], segment[:, :, None]
    attention_mask = (causal & ((keys == 0) | (keys == queries)))[:, None]  # (U, 1, T, T)
    valid = completion_mask.bool()
    token_columns = (start.to(device)[:, None] + columns).masked_fill(~valid, 0)
    return SharedPromptBatch(
        input_ids=input_ids.to(device), position_ids=position_ids.to(device),
        attention_mask=attention_mask.to(device), score_mask=score_mask.to(device), row=row.to(device),
        columns=token_columns, valid=valid, ends=start.to(device) + lengths,
    )


def split_sequences(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor):
    """`(prompt_ids, prompt_mask, completion_ids, completion_mask)` of right-padded `prompt + completion` sequences
    whose `completion_mask` marks the completion (the preference collators' batches): the prompts left-padded, the
    completions right-padded, as [`share_prompts`] takes them. None when a row is not that layout (left padding, a
    completion mask with holes or prompt tokens after it, as a custom collator may give): splitting it by counts
    would score other tokens than the padded rows do."""
    real, completion = attention_mask.bool(), completion_mask.bool()
    prompt_lengths = (real & ~completion).sum(-1)
    completion_lengths = completion.sum(-1)
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    ends = (prompt_lengths + completion_lengths)[:, None]
    if not (torch.equal(real, columns < ends)
            and torch.equal(completion, (columns >= prompt_lengths[:, None]) & (columns < ends))):
        return None
    return _split_rows(input_ids, prompt_lengths.tolist(), ends.squeeze(1).tolist())


def _split_rows(input_ids: torch.Tensor, splits: list[int], ends: list[int]):
    """Row `b` of `input_ids` cut into `[:splits[b]]`, a left-padded prompt, and `[splits[b]:ends[b]]`, a right-padded
    completion: `(prompt_ids, prompt_mask, completion_ids, completion_mask)` as [`share_prompts`] takes them."""
    rows = input_ids.shape[0]
    prompt_width = max(splits)
    completion_width = max(max(end - split for split, end in zip(splits, ends)), 1)
    prompt_ids = input_ids.new_zeros(rows, prompt_width)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = input_ids.new_zeros(rows, completion_width)
    completion_mask = torch.zeros_like(completion_ids)
    for b, (split, end) in enumerate(zip(splits, ends)):
        prompt_ids[b, prompt_width - split:] = input_ids[b, :split]
        prompt_mask[b, prompt_width - split:] = 1
        completion_ids[b, : end - split] = input_ids[b, split:end]
        completion_mask[b, : end - split] = 1
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def scored_in_rows(shared: SharedPromptBatch, scored):
    """A fused-head forward over a shared layout (`trl.ops.fused_head.completion_logps` on `shared`'s rows) as if it
    had scored one row per completion: a `CompletionLogps` whose `(B, C)` token log-probs and mask are the
    completions' own, and whose flat outputs (entropy, correctness, mean logits) follow that mask in row-major order."""
    from .fused_head import CompletionLogps, FusedCausalLMOutput

    def per_completion(values):
        if values is None:
            return None
        spread = torch.zeros(scored.mask.shape, dtype=values.dtype, device=values.device)
        return shared.gather(spread.masked_scatter(scored.mask, values))

    mask = shared.valid
    outputs = scored.outputs
    token_logps = shared.gather(scored.token_logps)
    flat = {}
    for name in ("entropy", "correct", "mean_logits", "log_sum_sq_probs"):
        values = per_completion(getattr(outputs, name, None))
        flat[name] = None if values is None else values[mask]
    rearranged = FusedCausalLMOutput(loss=outputs.loss, logps=token_logps[mask], label_mask=mask,
                                     aux_loss=outputs.aux_loss, **flat)
    sum_sq = None if scored.log_sum_sq_probs is None else shared.gather(scored.log_sum_sq_probs)
    return CompletionLogps(token_logps=token_logps, mask=mask, outputs=rearranged, log_sum_sq_probs=sum_sq)


def score_shared(model, lm, shared: SharedPromptBatch, **request):
    """`trl.ops.fused_head.completion_logps` over `shared`'s rows, returned as if it had scored one row per
    completion ([`scored_in_rows`]). `model` is what the forward goes through (DDP, PEFT wrappers); `lm` the causal
    LM inside it, whose attention implementation and dtype choose the mask's form. `request`: other
    `FusedHeadRequest` fields."""
    from .fused_head import completion_logps

    mask = shared.mask_for(lm.config._attn_implementation, lm.dtype)
    scored = completion_logps(model, shared.input_ids, mask, shared.score_mask, position_ids=shared.position_ids,
                              **request)
    return scored_in_rows(shared, scored)


def share_pair_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, **limits) -> SharedPromptBatch | None:
    """[`share_prompts`] for a batch of `2B` right-padded sequences, the `B` chosen then the `B` rejected ones (the
    preference collators' layout): the shared prefix of a pair is the longest common prefix of its two sequences
    (the prompt, whether the dataset names it or not), and each sequence's score is read at `ends`.

    Returns None where [`share_prompts`] does (including when a pair shares no token), and for a batch that is not
    right-padded (a custom collator's).
    """
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if len(input_ids) % 2 or not torch.equal(attention_mask.bool(), columns < attention_mask.sum(-1, keepdim=True)):
        return None
    lengths = attention_mask.sum(-1).tolist()
    rows = input_ids.cpu().tolist()
    pairs = len(rows) // 2
    prefixes = [common_prefix_length(rows[b][: lengths[b]], rows[b + pairs][: lengths[b + pairs]])
                for b in range(pairs)]
    if min(prefixes, default=0) == 0:
        return None
    return share_prompts(*_split_rows(input_ids, prefixes * 2, lengths), **limits)


__all__ = ["MAX_ATTENTION_GROWTH", "MAX_MASK_ELEMENTS", "MIN_SAVING", "SharedPromptBatch", "can_share", "score_shared",
           "scored_in_rows", "share_pair_prefixes", "share_prompts", "sharing_enabled", "split_sequences",
           "unsupported_reason"]
