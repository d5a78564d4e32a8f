"""`DataCollatorForChatML` and `DPODataCollatorWithPadding`, the reference's legacy collators."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _pad(rows: list[list], value, side: str, dtype=None) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = []
    for row in rows:
        fill = [value] * (width - len(row))
        out.append(fill + list(row) if side == "left" else list(row) + fill)
    return torch.tensor(out, dtype=dtype)


@dataclass
class DPODataCollatorWithPadding:
    """Pad already tokenised preference features: every key ending in `_input_ids`, `_attention_mask`, `_labels` or
    `_pixel_values` becomes a padded tensor (keys holding `prompt` are left-padded, the others right-padded; input ids
    with `pad_token_id`, labels with `label_pad_token_id`, masks with 0); keys ending in `_logps` become tensors; other
    keys stay lists.

    Args:
        pad_token_id (`int`, *optional*, defaults to `0`): pad id of input ids.
        label_pad_token_id (`int`, *optional*, defaults to `-100`): pad value of labels.
        is_encoder_decoder (`bool`, *optional*, defaults to `False`): accepted; padding is the same here.

    Example:
        ```python
        >>> collator = DPODataCollatorWithPadding(pad_token_id=0)
        >>> collator([{"prompt_input_ids": [1, 2]}, {"prompt_input_ids": [3]}])["prompt_input_ids"].tolist()
        [[1, 2], [0, 3]]
        ```
    """

    pad_token_id: int = 0
    label_pad_token_id: int = -100
    is_encoder_decoder: bool | None = False

    def __call__(self, features: list[dict]) -> dict:
        batch = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if key.endswith(("_input_ids", "_attention_mask", "_labels", "_pixel_values")):
                if key.endswith("_input_ids"):
                    pad = self.pad_token_id
                elif key.endswith("_labels"):
                    pad = self.label_pad_token_id
                else:
                    pad = 0
                side = "left" if "prompt" in key else "right"
                if key.endswith("_pixel_values"):  # images of one shape: stacked
                    batch[key] = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values])
                else:
                    batch[key] = _pad(values, pad, side, dtype=torch.long)
            elif key.endswith("_logps"):
                batch[key] = torch.tensor(values)
            else:
                batch[key] = values
        return batch


@dataclass
class DataCollatorForChatML:
    """Collate conversations (a `messages` list per example) for generation-time training: the last message is the
    completion. Returns left-padded `input_ids`, `attention_mask` and `labels` (`ignore_index` on the prompt and on
    padding) of the whole conversation, and the left-padded `prompts` / `prompt_attention_mask` (the conversation
    without its last message, with the generation prompt). Tokens come from the shared data path
    (`trl.data.tokenize.tokenize_sft_example`), so the completion mask is exact for any prefix-preserving template.

    Args:
        tokenizer: a tokenizer with a chat template.
        ignore_index (`int`, *optional*, defaults to `-100`): label of positions without a loss.
        max_length (`int`, *optional*): keep at most this many tokens of each conversation (from the start).
        messages_key (`str`, *optional*, defaults to `"messages"`): the column holding the conversation.

    Raises:
        `ValueError`: an example has no `messages_key`, or its conversation has fewer than two messages.

    Example:
        ```python
        >>> collator = DataCollatorForChatML(tokenizer)
        >>> batch = collator([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
        >>> sorted(batch)
        ['attention_mask', 'input_ids', 'labels', 'prompt_attention_mask', 'prompts']
        ```
    """

    tokenizer: object
    ignore_index: int = -100
    max_length: int | None = None
    messages_key: str = "messages"
    _eos_ids: set = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if getattr(self.tokenizer, "pad_token_id", None) is None:
            raise ValueError("DataCollatorForChatML needs a tokenizer with a pad token (set tokenizer.pad_token).")
        from ...data.tokenize import end_of_turn_ids

        self._eos_ids = end_of_turn_ids(self.tokenizer)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        from ...data.tokenize import tokenize_sft_example

        ids, labels, prompts = [], [], []
        for i, example in enumerate(examples):
            messages = example.get(self.messages_key)
            if not isinstance(messages, list) or len(messages) < 2:
                raise ValueError(
                    f"DataCollatorForChatML: example {i} needs a {self.messages_key!r} list of at least two messages "
                    f"(a prompt and the completion); got {messages!r}."
                )
            row = {"prompt": messages[:-1], "completion": messages[-1:]}
            row.update({k: example[k] for k in ("tools", "chat_template_kwargs") if k in example})
            out = tokenize_sft_example(row, self.tokenizer, kind="prompt_completion", conversational=True,
                                       eos_token_id=self.tokenizer.eos_token_id, eos_ids=self._eos_ids)
            sequence, mask = out["input_ids"], out["completion_mask"]
            if self.max_length is not None:
                sequence, mask = sequence[: self.max_length], mask[: self.max_length]
            ids.append(sequence)
            labels.append([t if m else self.ignore_index for t, m in zip(sequence, mask)])
            start = mask.index(1) if 1 in mask else len(out["completion_mask"])
            prompts.append(out["input_ids"][:start])
        pad = self.tokenizer.pad_token_id
        input_ids = _pad(ids, pad, "left", torch.long)
        prompt_ids = _pad(prompts, pad, "left", torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": _pad([[1] * len(r) for r in ids], 0, "left", torch.long),
            "labels": _pad(labels, self.ignore_index, "left", torch.long),
            "prompts": prompt_ids,
            "prompt_attention_mask": _pad([[1] * len(r) for r in prompts], 0, "left", torch.long),
        }
