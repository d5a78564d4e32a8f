"""`create_reference_model`, `truncate_dataset`, `prepare_peft_model` and `get_reward` (see the package docstring)."""

from __future__ import annotations

import torch


def create_reference_model(model: torch.nn.Module, num_shared_layers: int | None = None, pattern: str | None = None):
    """A frozen, eval-mode copy of `model` to use as a reference model (no deprecation warning here: this is the
    path `trl.create_reference_model` points to). Wraps `trl.models.reference.shared_copy`.

    Args:
        model (`torch.nn.Module`): the policy.
        num_shared_layers (`int`, *optional*): share the first this many layers (and the embeddings) with `model`
            instead of copying them; they are frozen in `model` as well.
        pattern (`str`, *optional*): name prefix of a layer with `{layer}` for its index (e.g.
            `"model.layers.{layer}"`), when the layers are not found automatically.

    Returns:
        `torch.nn.Module`: the reference, in eval mode, with no trainable parameter.

    Example:
        ```python
        >>> from trl.experimental.utils import create_reference_model
        >>> ref = create_reference_model(model)
        ```
    """
    from ...models.reference import shared_copy

    return shared_copy(model, num_shared_layers=num_shared_layers, pattern=pattern)


def truncate_dataset(dataset, max_length: int, map_kwargs: dict | None = None):
    """Cut every list column of `dataset` (token ids, masks, labels) to its first `max_length` entries.

    Args:
        dataset (`datasets.Dataset` or `datasets.DatasetDict`): a tokenised dataset.
        max_length (`int`): the maximum length kept.
        map_kwargs (`dict`, *optional*): extra arguments of `Dataset.map` (e.g. `num_proc`, `desc`).

    Returns:
        The dataset of the same type, with list columns truncated and other columns unchanged.

    Raises:
        `ValueError`: `max_length` is not a positive integer.

    Example:
        ```python
        >>> ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "label": [0, 1]})
        >>> truncate_dataset(ds, 2)["input_ids"]
        [[1, 2], [4, 5]]
        ```
    """
    from datasets import DatasetDict, Sequence

    if not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"truncate_dataset: max_length must be a positive integer; got {max_length!r}.")
    if isinstance(dataset, DatasetDict):
        return DatasetDict({k: truncate_dataset(v, max_length, map_kwargs) for k, v in dataset.items()})
    features = dataset.features or {}
    columns = [name for name, feature in features.items() if isinstance(feature, (list, Sequence))]
    if features is None or not features:  # a stream without declared features: look at a row
        first = next(iter(dataset))
        columns = [name for name, value in first.items() if isinstance(value, list)]

    def cut(row):
        return {name: row[name][:max_length] for name in columns}

    return dataset.map(cut, **(map_kwargs or {}))


def prepare_peft_model(model, peft_config, args=None):
    """Wrap `model` with a fresh PEFT adapter as the trainers do (`trl.models.loading.wrap_peft`): quantized models are
    prepared for k-bit training first, and with gradient checkpointing the inputs require gradients so that the
    adapter gets them.

    Args:
        model (`PreTrainedModel`): the base model (not already a `PeftModel`).
        peft_config (`peft.PeftConfig`): e.g. a `LoraConfig`.
        args (`TrainingArguments`, *optional*): read for `gradient_checkpointing` and
            `gradient_checkpointing_kwargs`.

    Returns:
        `peft.PeftModel`.

    Raises:
        `ImportError`: peft is not installed (with the install command). `TypeError` / `ValueError`: as
        `wrap_peft` (not a `PeftConfig`, already a `PeftModel`, an adapter on `lm_head`).

    Example:
        ```python
        >>> from peft import LoraConfig
        >>> model = prepare_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        ```
    """
    from ...models import loading

    checkpointing = bool(getattr(args, "gradient_checkpointing", False)) if args is not None else False
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        try:
            from peft import prepare_model_for_kbit_training
        except ImportError:
            raise ImportError("prepare_peft_model needs peft: `pip install peft`.") from None
        kwargs = getattr(args, "gradient_checkpointing_kwargs", None) or {}
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs=kwargs)
    elif checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings: the checkpointed blocks need an input with grad
    return loading.wrap_peft(model, peft_config)


def get_reward(model, query_responses: torch.Tensor, pad_token_id: int, context_length: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score `query + response` sequences with a sequence-classification (reward) model, at each response's last
    token.

    Args:
        model (`PreTrainedModel`): an `AutoModelForSequenceClassification`-style model with a backbone (its
            `base_model_prefix` attribute) and a `score` head.
        query_responses (`torch.Tensor`): `(B, T)` token ids, right-padded with `pad_token_id`.
        pad_token_id (`int`): the pad id.
        context_length (`int`): length of the query part; the response is what follows it.

    Returns:
        `tuple`: `reward_logits` `(B, T, num_labels)` (the head at every position), `final_scores` `(B, num_labels)`
        squeezed to `(B,)` for one label (the head at the last non-pad token of the response), and
        `sequence_lengths` `(B,)` (index of that token).

    Example:
        ```python
        >>> logits, scores, lengths = get_reward(reward_model, ids, tok.pad_token_id, context_length=prompt_len)
        ```
    """
    attention_mask = query_responses != pad_token_id
    position_ids = attention_mask.cumsum(1) - attention_mask.long()
    backbone = getattr(model, model.base_model_prefix)
    input_ids = torch.masked_fill(query_responses, ~attention_mask, 0)
    output = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      return_dict=True, output_hidden_states=True, use_cache=False)
    reward_logits = model.score(output.hidden_states[-1])
    # the last response token: one before the first pad after the query (the final position when there is none)
    response_pad = query_responses[:, context_length:] == pad_token_id
    first_pad = torch.where(response_pad.any(-1), response_pad.long().argmax(-1),
                            torch.full_like(response_pad[:, 0], response_pad.shape[1], dtype=torch.long))
    sequence_lengths = first_pad - 1 + context_length
    rows = torch.arange(reward_logits.shape[0], device=reward_logits.device)
    final_scores = reward_logits[rows, sequence_lengths].squeeze(-1)
    return reward_logits, final_scores, sequence_lengths
