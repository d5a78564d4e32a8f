"""Vision-language data: rows with images, rendered and tokenised by a processor on the fly.

One data path with text (docs/design.md §1): the processor's chat template renders the conversation, and the loss
masks come from the same turn-by-turn rendering as for text (`trl.data.tokenize`), run through the processor so that
every rendering holds the image tokens the processor expands each placeholder into. Those image tokens belong to a
user turn (or to the prompt), so they are never completion or assistant tokens; they are also excluded from the loss
of plain language modelling, where every other token is trained.

The pixel tensors of a batch come from one processor call on the rendered texts of all its rows, so each family's own
batching applies: Qwen2-VL's flattened patches with one `image_grid_thw` row per image, Idefics3's padded tiles with
`pixel_attention_mask`, LLaVA's stacked fixed-size images. That call must give the same token ids as the turn-by-turn
renderings; a processor for which it does not is reported.

`max_length` truncation (keep_start) never cuts an image's tokens: a row whose image tokens reach past `max_length`
is an error at collation that names the row and says how to fix it (raise `max_length`, or shrink the images with
the processor's image-size settings). Dropping such rows silently would remove training data without a word; cutting
them would leave pixel values without their tokens, which the model rejects deep inside its forward.

Text models get the other half of the contract: message content given as a list of blocks
(`[{"type": "text", "text": ...}]`) is joined into a string when the chat template expects strings (and passed
through when it renders lists itself), and an image block with a text tokenizer is a clear error naming the row.
"""

from __future__ import annotations

import copy
import io
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from .collators import IGNORE_INDEX, _check_return_tensors, _pad
from .conversation import _is_message_list, prepare_multimodal_messages

IMAGE_COLUMNS = ("image", "images")
# Processor outputs that are token-aligned (padded with the ids), not image tensors passed through as they are.
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
_CONVERSATION_KEYS = ("messages", "prompt", "completion")


def is_processor(processing_class) -> bool:
    """Whether `processing_class` is a multimodal processor (`transformers.ProcessorMixin`), not a tokenizer.

    Example:
        ```python
        >>> is_processor(tiny_tokenizer()), is_processor(tiny_vlm_processor("llava"))
        (False, True)
        ```
    """
    from transformers import ProcessorMixin

    return isinstance(processing_class, ProcessorMixin)


def image_column(column_names) -> str | None:
    """The dataset's image column (`image` or `images`), or None."""
    return next((c for c in IMAGE_COLUMNS if c in (column_names or ())), None)


# ---- text models: content blocks ------------------------------------------------------------------------------------

_LIST_AWARE: weakref.WeakKeyDictionary[Any, tuple[str, bool]] = weakref.WeakKeyDictionary()
_PROBE_TEXT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
_PROBE_BLOCKS = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]


def template_renders_blocks(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders text-block content (`[{"type": "text", "text": "Hi"}]`) exactly
    as the string `"Hi"`. Cached per tokenizer and template."""
    template = getattr(tokenizer, "chat_template", None)
    try:
        cached = _LIST_AWARE.get(tokenizer)
    except TypeError:
        cached = None
    if cached is not None and cached[0] == template:
        return cached[1]
    try:
        as_text = tokenizer.apply_chat_template(_PROBE_TEXT, tokenize=False)
        as_blocks = tokenizer.apply_chat_template(_PROBE_BLOCKS, tokenize=False)
        renders = as_text == as_blocks
    except Exception:  # noqa: BLE001 -- a template that fails on blocks does not render them
        renders = False
    try:
        _LIST_AWARE[tokenizer] = (template, renders)
    except TypeError:
        pass
    return renders


def _block_problem(block) -> str | None:
    if not isinstance(block, dict):
        return f"a content block must be a dict such as {{'type': 'text', 'text': ...}}; got {type(block).__name__}"
    kind = block.get("type")
    if kind == "text":
        return None if isinstance(block.get("text"), str) else "a text block has no 'text' string"
    if kind in ("image", "image_url", "video", "audio"):
        return (f"it holds an {kind!r} block, but the model is trained with a text tokenizer, which cannot see it. "
                "Train a vision-language model with its processor (`processing_class=AutoProcessor.from_pretrained"
                "(...)`), or remove the block")
    return f"a content block has type {kind!r}; a text tokenizer takes only {{'type': 'text', 'text': ...}} blocks"


def text_block_messages(messages: list, tokenizer, *, column: str = "messages", row: int | None = None,
                        name: str = "train") -> list:
    """Messages whose content is a list of text blocks, made renderable by a text tokenizer's chat template.

    When the template renders text blocks as it renders strings (`template_renders_blocks`), the messages are
    returned as they are; otherwise each list content becomes the concatenation of its blocks' texts (with no
    separator, as templates that accept lists do).

    Raises:
        `ValueError`: a block is an image (or another non-text block), or is malformed; the message names the row,
            the message and the fix.

    Example:
        ```python
        >>> text_block_messages([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], tiny_tokenizer())
        [{'role': 'user', 'content': 'Hi'}]
        ```
    """
    if not any(isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages):
        return messages
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for block in content:
                problem = _block_problem(block)
                if problem is not None:
                    where = "" if row is None else f"Row {row} of the {name} dataset: "
                    raise ValueError(f"{where}message {i} of column {column!r}: {problem}.")
    if template_renders_blocks(tokenizer):
        return messages
    return [
        {**m, "content": "".join(block["text"] for block in m["content"])} if isinstance(m.get("content"), list) else m
        for m in messages
    ]


def text_block_row(row: dict, tokenizer, *, row_index: int | None = None, name: str = "train") -> dict:
    """`row` with every conversational column passed through `text_block_messages` (unchanged when none holds
    list content)."""
    out = row
    for key in _CONVERSATION_KEYS + ("chosen", "rejected"):
        value = row.get(key)
        if _is_message_list(value) and any(isinstance(m.get("content"), list) for m in value):
            if out is row:
                out = dict(row)
            out[key] = text_block_messages(value, tokenizer, column=key, row=row_index, name=name)
    return out


def with_text_blocks_rendered(dataset, tokenizer, name: str = "train"):
    """`dataset` with the text-block content of its conversational columns made renderable by a text tokenizer
    (`text_block_row`, row by row, naming a bad row), for the trainers whose data path renders strings (DPO, KTO).
    A dataset whose first row holds no list content is returned as it is: Arrow keeps one type per column, so no
    later row holds any either.

    Example:
        ```python
        >>> with_text_blocks_rendered(Dataset.from_list(rows_with_blocks), tiny_tokenizer())[0]["prompt"]
        [{'role': 'user', 'content': 'Hi'}]
        ```
    """
    if dataset is None or not hasattr(dataset, "map") or isinstance(dataset, dict):
        return dataset
    if image_column(dataset.column_names):  # refused by `trl.data.formats.check_dataset`, with its own message
        return dataset
    first = next(iter(dataset), None)
    if not isinstance(first, dict):
        return dataset
    keys = [k for k in _CONVERSATION_KEYS + ("chosen", "rejected") if _is_message_list(first.get(k))]
    if not any(isinstance(m.get("content"), list) for k in keys for m in first[k]):
        return dataset
    return dataset.map(lambda row, index: {k: v for k, v in text_block_row(row, tokenizer, row_index=index,
                                                                            name=name).items() if k in keys},
                       with_indices=True)


# ---- images ---------------------------------------------------------------------------------------------------------


def load_image(image, *, row: int | None = None):
    """A `PIL.Image.Image` from a PIL image, a local path, raw bytes, or a `datasets` image dict (`bytes`/`path`).

    Raises:
        `ImportError`: Pillow is not installed (`pip install trl[vlm]`).
        `TypeError`: the value is none of the above; the message names the row.
    """
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow is in the vlm and test extras
        raise ImportError("Training on images needs Pillow: `pip install trl[vlm]` (or `pip install pillow`).") \
            from error
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, dict) and (image.get("bytes") is not None or image.get("path")):
        image = image["bytes"] if image.get("bytes") is not None else image["path"]
    if isinstance(image, (bytes, bytearray)):
        return Image.open(io.BytesIO(image))
    if isinstance(image, str):
        return Image.open(image)
    where = "" if row is None else f"row {row}: "
    raise TypeError(
        f"{where}an image must be a PIL image, a local file path, bytes, or a `datasets` Image value; got "
        f"{type(image).__name__}."
    )


def row_images(row: dict, *, row_index: int | None = None) -> list:
    """The images of a row, from its `images` (a list) or `image` (one) column, as PIL images."""
    if "images" in row and row["images"] is not None:
        images = row["images"]
        images = list(images) if isinstance(images, (list, tuple)) else [images]
    elif row.get("image") is not None:
        images = [row["image"]]
    else:
        images = []
    return [load_image(image, row=row_index) for image in images]


# ---- the processor seen as a tokenizer --------------------------------------------------------------------------------


class ProcessorTokenizer:
    """A processor behind the tokenizer interface that `trl.data.tokenize` renders with, for one row's images.

    `apply_chat_template(..., tokenize=True)` renders messages (whose image blocks carry the images) and returns the
    ids with each image placeholder expanded by the processor, un-batched; `__call__(text)` processes plain text with
    the row's images when the text holds the image placeholder. Every other attribute is the inner tokenizer's.
    """

    def __init__(self, processor, images: list | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        # a processor saved without its own template renders with its tokenizer's
        self.chat_template = processor.chat_template or getattr(processor.tokenizer, "chat_template", None)
        self.images = images or []

    def with_images(self, images: list) -> ProcessorTokenizer:
        other = copy.copy(self)
        other.images = images
        return other

    def apply_chat_template(self, messages, tokenize: bool = True, return_dict: bool = False, **kwargs):
        kwargs.setdefault("chat_template", self.chat_template)
        if not tokenize:
            return self.processor.apply_chat_template(messages, tokenize=False, **kwargs)
        out = self.processor.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
        out = {k: (list(v[0]) if k in _TOKEN_KEYS or k == "assistant_masks" else v) for k, v in out.items()}
        return out if return_dict else out["input_ids"]

    def __call__(self, text: str, **kwargs):
        placeholder = getattr(self.processor, "image_token", None)
        images = self.images if placeholder and placeholder in text and self.images else None
        out = self.processor(text=[text], images=[images] if images else None, **kwargs)
        return {k: (list(v[0]) if k in _TOKEN_KEYS else v) for k, v in out.items()}

    def __getattr__(self, name):
        if name in ("processor", "tokenizer"):
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


_BLOCK_TOKENS: weakref.WeakKeyDictionary[Any, frozenset[int]] = weakref.WeakKeyDictionary()


def image_block_token_ids(processor) -> frozenset[int]:
    """The token ids that the chat template writes for an image block, before the processor expands it (Qwen2-VL's
    `<|vision_start|>`, `<|image_pad|>`, `<|vision_end|>`; LLaVA's `<image>`), found by rendering a user turn with and
    without an image block: they mark image tokens together with the processor's `mm_token_type_ids`. Cached."""
    try:
        cached = _BLOCK_TOKENS.get(processor)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    tokenizer = processor.tokenizer
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    without = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    a = tokenizer(processor.apply_chat_template(with_image, tokenize=False), add_special_tokens=False)["input_ids"]
    b = tokenizer(processor.apply_chat_template(without, tokenize=False), add_special_tokens=False)["input_ids"]
    remaining = list(b)
    extra = []
    for token in a:
        if token in remaining:
            remaining.remove(token)
        else:
            extra.append(token)
    special = {tokenizer.eos_token_id, *tokenizer.all_special_ids, *getattr(tokenizer, "added_tokens_decoder", {})}
    ids = frozenset(t for t in extra if t in special) | frozenset(
        t for t in getattr(processor, "image_token_ids", []) or [] if t is not None)
    try:
        _BLOCK_TOKENS[processor] = ids
    except TypeError:
        pass
    return ids


# ---- the collator ---------------------------------------------------------------------------------------------------


def _describe_row(row: dict) -> str:
    for key in ("messages", "prompt"):
        value = row.get(key)
        if _is_message_list(value):
            for message in value:
                content = message.get("content")
                texts = [content] if isinstance(content, str) else [
                    b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]
                text = " ".join(t for t in texts if t)
                if text:
                    return repr(text[:60])
        elif isinstance(value, str):
            return repr(value[:60])
    return repr(str(row.get("text", ""))[:60])


def _row_name(row: dict, position: int) -> str:
    index = row.get("_row_index")
    where = f"row {index}" if index is not None else f"row {position} of the batch"
    return f"{where} ({_describe_row(row)})"


@dataclass
class DataCollatorForVisionLanguageModeling:
    """Collate raw vision-language rows for SFT: render them with the processor's chat template, process their
    images, and build `input_ids`, `attention_mask`, `labels` and the processor's image tensors.

    Rows hold `messages` (conversational language modelling), `prompt` + `completion` (standard or conversational),
    or text (`dataset_text_field`), plus `images` (a list) or `image` (one): PIL images, local paths, bytes or
    `datasets` Image values. Conversational rows may give string content (one `{"type": "image"}` placeholder per
    image is then put at the start of the first user message) or content blocks with `{"type": "image"}`
    placeholders; standard text must hold the processor's image placeholder itself.

    Labels are -100 on padding, on image tokens (the processor's `mm_token_type_ids` and the tokens the chat template
    writes around each image), on the prompt with `completion_only_loss` and outside assistant turns with
    `assistant_only_loss`; the masks come from the turn-by-turn rendering of `trl.data.tokenize`.

    Args:
        processor (`ProcessorMixin`): the model's processor, with a chat template for conversational rows.
        max_length (`int`, *optional*): truncation length (keep_start). A row whose image tokens reach past it is
            an error naming the row (see the module docstring).
        completion_only_loss (`bool`, *optional*): train only on completions of prompt-completion rows; `None`
            means automatic (True for prompt-completion rows).
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.
        dataset_text_field (`str`, *optional*, defaults to `"text"`): the text column of standard rows.
        return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"`.
        assistant_only_loss (`bool`, *optional*, defaults to `False`): train only on assistant turns.
        return_token_counts (`bool`, *optional*, defaults to `False`): also return `token_counts` (real tokens per
            row), as `DataCollatorForLanguageModeling` does.

    The first six fields are in the reference's order, so positional arguments mean the same thing; the others are
    ours and come last.

    Example:
        ```python
        >>> from PIL import Image
        >>> model, processor = tiny_vlm("qwen2_vl")
        >>> collator = DataCollatorForVisionLanguageModeling(processor)
        >>> batch = collator([{"messages": [{"role": "user", "content": "Colour?"},
        ...                                 {"role": "assistant", "content": "red"}],
        ...                    "images": [Image.new("RGB", (28, 28), "red")]}])
        >>> sorted(batch)
        ['attention_mask', 'image_grid_thw', 'input_ids', 'labels', 'mm_token_type_ids', 'pixel_values']
        ```
    """

    processor: Any
    max_length: int | None = None
    completion_only_loss: bool | None = None
    pad_to_multiple_of: int | None = None
    dataset_text_field: str = "text"
    return_tensors: str = "pt"
    assistant_only_loss: bool = False
    return_token_counts: bool = False
    _renderer: Any = field(default=None, init=False, repr=False)
    _eos_ids: Any = field(default=None, init=False, repr=False)

    def __post_init__(self):
        _check_return_tensors(self.return_tensors)
        if not is_processor(self.processor):
            raise TypeError(
                f"DataCollatorForVisionLanguageModeling needs a multimodal processor; got "
                f"{type(self.processor).__name__}. Use `AutoProcessor.from_pretrained(...)`, or "
                "`DataCollatorForLanguageModeling` for text."
            )
        from .tokenize import end_of_turn_ids

        renderer = ProcessorTokenizer(self.processor)
        if self.assistant_only_loss:
            from .prepare import with_training_template

            renderer = with_training_template(renderer)
        self._renderer = renderer
        self._eos_ids = end_of_turn_ids(renderer) if renderer.chat_template else {renderer.eos_token_id}

    def tokenize_row(self, row: dict, position: int = 0) -> dict:
        """Token ids, loss mask and rendered text of one row (the text is what the batch's processor call gets)."""
        from .formats import detect_format
        from .tokenize import tokenize_sft_example

        images = row_images(row, row_index=row.get("_row_index"))
        columns = [k for k in row if not k.startswith("_")]
        fmt = detect_format(columns, row, self.dataset_text_field)
        if fmt.kind not in ("language_modeling", "prompt_completion"):
            raise ValueError(f"{_row_name(row, position)}: SFT takes language-modelling or prompt-completion rows; "
                             f"got {fmt.describe()} (columns {sorted(columns)}).")
        if self.assistant_only_loss and not fmt.conversational:
            raise ValueError(f"{_row_name(row, position)}: `assistant_only_loss=True` needs conversational rows.")
        example = dict(row)
        if fmt.conversational:
            example = self._attach_images(example, fmt.kind, images, position)
        renderer = self._renderer.with_images(images)
        inner = self.processor.tokenizer
        out = tokenize_sft_example(
            example, renderer, kind=fmt.kind, conversational=fmt.conversational, text_field=self.dataset_text_field,
            assistant_only_loss=self.assistant_only_loss, eos_token_id=inner.eos_token_id, eos_ids=self._eos_ids,
        )
        ids = out["input_ids"]
        keep = [1] * len(ids)
        completion_only = self.completion_only_loss is not False and fmt.kind == "prompt_completion"
        if completion_only:
            keep = list(out["completion_mask"])
        if "assistant_masks" in out:
            keep = [a and b for a, b in zip(keep, out["assistant_masks"])]
        if fmt.conversational:
            messages = example["messages"] if fmt.kind == "language_modeling" else None
            if messages is None:
                from .tokenize import _continue_final_message

                prompt, completion = example["prompt"], example["completion"]
                messages = (_continue_final_message(prompt, completion) if prompt[-1]["role"] == "assistant"
                            else prompt + completion)
            text = self.processor.apply_chat_template(messages, tokenize=False, chat_template=renderer.chat_template)
        elif fmt.kind == "prompt_completion":
            text = example["prompt"] + example["completion"]
        else:
            text = example[self.dataset_text_field]
        return {"input_ids": ids, "keep": keep, "text": text, "images": images, "ends_with_eos": not fmt.conversational}

    def _attach_images(self, example: dict, kind: str, images: list, position: int) -> dict:
        key = "messages" if kind == "language_modeling" else "prompt"
        try:
            example[key] = prepare_multimodal_messages(example[key], images)
            if kind == "prompt_completion":
                example["completion"] = prepare_multimodal_messages(example["completion"])
        except (ValueError, TypeError) as error:
            raise ValueError(f"{_row_name(example, position)}: {error}") from error
        return example

    def __call__(self, examples: list[dict], return_tensors: str | None = None) -> dict[str, torch.Tensor]:
        _check_return_tensors(return_tensors or self.return_tensors)
        rows = [self.tokenize_row(e, i) for i, e in enumerate(examples)]
        names = [_row_name(e, i) for i, e in enumerate(examples)]
        ids, image_flags, images = process_rows(self.processor, rows, names, self.max_length)
        labels = [[t if k and not im else IGNORE_INDEX for t, k, im in zip(row_ids, row["keep"], flags)]
                  for row_ids, row, flags in zip(ids, rows, image_flags)]
        out = _pad_batch(ids, self.processor, self.pad_to_multiple_of, images, image_flags)
        out["labels"] = _pad(labels, out["input_ids"].shape[1], IGNORE_INDEX)
        if self.return_token_counts:
            out["token_counts"] = torch.tensor([len(r) for r in ids], dtype=torch.long)
        return out


def process_rows(processor, rows: list[dict], names: list[str], max_length: int | None):
    """Process the rendered texts of tokenised rows (`tokenize_row`'s output) in one processor call, check that it
    gives each row's ids, and truncate to `max_length` (keep_start), never through an image's tokens.

    Returns:
        `(ids, image_flags, batch)`: per row its (truncated) ids and 0/1 flags of its image tokens, and the processor's
        batch (its image tensors batched the family's way).
    """
    texts = [row["text"] for row in rows]
    images = [row["images"] for row in rows] if any(row["images"] for row in rows) else None
    # rendered conversations hold their special tokens; standard text gets them as the turn-by-turn call did
    options = dict(images=images, add_special_tokens=rows[0]["ends_with_eos"], padding=True, return_tensors="pt")
    try:
        batch = processor(text=texts, return_mm_token_type_ids=True, **options)
    except TypeError:  # a processor without `mm_token_type_ids`: the image tokens are its placeholder tokens
        batch = processor(text=texts, **options)
    real = batch["attention_mask"].bool()
    block_tokens = image_block_token_ids(processor)
    eos = processor.tokenizer.eos_token_id
    all_ids, all_flags = [], []
    for i, (row, name) in enumerate(zip(rows, names)):
        row_ids = row["input_ids"]
        processed = batch["input_ids"][i][real[i]].tolist()
        if row["ends_with_eos"] and processed + [eos] == row_ids:
            processed = row_ids
        if processed != row_ids:
            raise ValueError(
                f"{name}: the processor tokenises the rendered row differently in a batch ({len(processed)} tokens) "
                f"than turn by turn ({len(row_ids)} tokens), so its loss mask cannot be placed. Please report this "
                "processor."
            )
        mm = batch["mm_token_type_ids"][i][real[i]].tolist() if "mm_token_type_ids" in batch else []
        mm = mm + [0] * (len(row_ids) - len(mm))
        flags = [int(m != 0 or t in block_tokens) for t, m in zip(row_ids, mm)]
        if max_length is not None and len(row_ids) > max_length:
            last_image = max((p for p, f in enumerate(flags) if f), default=-1)
            if last_image >= max_length:
                raise ValueError(
                    f"{name} has {len(row_ids)} tokens and its image tokens run to position {last_image}, past "
                    f"max_length={max_length}: truncating would cut an image's tokens (its pixel values would have "
                    f"no tokens left). Raise `max_length` to at least {last_image + 1} (better: the longest row's "
                    "length), or shrink the images with the processor's image-size settings (e.g. `max_pixels` / "
                    "`size`)."
                )
            row_ids, flags = row_ids[:max_length], flags[:max_length]
        all_ids.append(row_ids)
        all_flags.append(flags)
    return all_ids, all_flags, batch


def _pad_batch(ids: list[list[int]], processor, pad_to_multiple_of: int | None, batch, image_flags) -> dict:
    """Right-padded `input_ids` and `attention_mask`, the processor's image tensors, and `mm_token_type_ids` (1 on
    image tokens) when the processor returns them."""
    width = max(len(r) for r in ids)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    pad_id = processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else processor.tokenizer.eos_token_id
    out = {"input_ids": _pad(ids, width, pad_id), "attention_mask": _pad([[1] * len(r) for r in ids], width, 0)}
    if "mm_token_type_ids" in batch:
        real = batch["attention_mask"].bool()
        types = [batch["mm_token_type_ids"][i][real[i]].tolist()[: len(r)] for i, r in enumerate(ids)]
        out["mm_token_type_ids"] = _pad(types, width, 0)
    for key, value in batch.items():
        if key not in _TOKEN_KEYS:
            out[key] = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    return out


def _side_rows(collator: DataCollatorForVisionLanguageModeling, example: dict, sides: tuple[str, ...], position: int):
    """The prompt-completion rows `prompt + <side>` of a preference row, tokenised (`tokenize_row`)."""
    from .conversation import extract_prompt

    if "prompt" not in example:  # an implicit prompt: the shared start of chosen and rejected
        example = {**example, **extract_prompt(example)}
    rows = []
    for side in sides:
        row = {k: v for k, v in example.items() if k in ("prompt", "images", "image", "tools", "chat_template_kwargs",
                                                          "_row_index")}
        row["completion"] = example[side]
        rows.append(collator.tokenize_row(row, position))
    return rows


@dataclass
class DataCollatorForVisionPreference:
    """Collate raw vision preference rows (`images`/`image` + `prompt`/`chosen`/`rejected`, or `chosen`/`rejected`
    with an implicit prompt; standard or conversational) into one batch of `2B` sequences: the `B` chosen sequences,
    then the `B` rejected ones, each `prompt + completion` with its images, so a single forward scores both sides.

    Each side is rendered and tokenised as an SFT prompt-completion row (`DataCollatorForVisionLanguageModeling`);
    `completion_mask` marks its completion tokens (never an image token). Truncation to `max_length` (keep_start)
    never cuts an image's tokens: such a row is an error naming it.

    Args:
        processor (`ProcessorMixin`): the model's processor.
        max_length (`int`, *optional*): truncation length of each sequence.
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.
        return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"`.

    Example:
        ```python
        >>> collator = DataCollatorForVisionPreference(processor)
        >>> batch = collator([{"prompt": [{"role": "user", "content": "Colour?"}],
        ...                    "chosen": [{"role": "assistant", "content": "red"}],
        ...                    "rejected": [{"role": "assistant", "content": "blue"}], "images": [red_image]}])
        >>> batch["input_ids"].shape[0]  # chosen, then rejected
        2
        ```
    """

    processor: Any
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    sides: tuple[str, ...] = ("chosen", "rejected")
    _sft: Any = field(default=None, init=False, repr=False)

    def __post_init__(self):
        _check_return_tensors(self.return_tensors)
        self._sft = DataCollatorForVisionLanguageModeling(self.processor, completion_only_loss=True)

    def __call__(self, examples: list[dict], return_tensors: str | None = None) -> dict[str, torch.Tensor]:
        _check_return_tensors(return_tensors or self.return_tensors)
        per_example = [_side_rows(self._sft, e, self.sides, i) for i, e in enumerate(examples)]
        rows = [sides[k] for k in range(len(self.sides)) for sides in per_example]
        names = [f"{_row_name(e, i)}, {side}" for side in self.sides for i, e in enumerate(examples)]
        ids, image_flags, images = process_rows(self.processor, rows, names, self.max_length)
        masks = [[int(bool(k) and not im) for k, im in zip(row["keep"], flags)]
                 for row, flags in zip(rows, image_flags)]
        out = _pad_batch(ids, self.processor, self.pad_to_multiple_of, images, image_flags)
        out["completion_mask"] = _pad(masks, out["input_ids"].shape[1], 0)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                out[key] = torch.tensor([float(e[key]) for e in examples])
        return out


@dataclass
class DataCollatorForVisionUnpairedPreference:
    """Collate raw unpaired vision preference rows (`images`/`image` + `prompt`/`completion`/`label`) for KTO: the `B`
    sequences `prompt + completion`, then, with `kl_completions`, the `B` mismatched sequences `prompt_i +
    completion_{i-1}` (each with row `i`'s images) that estimate KTO's KL term, so a single forward scores both.
    `completion_mask` marks completion tokens (never an image token); `label` is a `(B,)` bool tensor.

    Args:
        processor (`ProcessorMixin`): the model's processor.
        max_length (`int`, *optional*): truncation length of each sequence (never through an image's tokens).
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.
        kl_completions (`bool`, *optional*, defaults to `True`): also emit the mismatched sequences.
        return_tensors (`str`, *optional*, defaults to `"pt"`): only `"pt"`.

    Example:
        ```python
        >>> collator = DataCollatorForVisionUnpairedPreference(processor)
        >>> batch = collator(rows)  # 2B sequences: matched, then mismatched
        ```
    """

    processor: Any
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    kl_completions: bool = True
    return_tensors: str = "pt"
    _sft: Any = field(default=None, init=False, repr=False)

    def __post_init__(self):
        _check_return_tensors(self.return_tensors)
        self._sft = DataCollatorForVisionLanguageModeling(self.processor, completion_only_loss=True)

    def __call__(self, examples: list[dict], return_tensors: str | None = None) -> dict[str, torch.Tensor]:
        _check_return_tensors(return_tensors or self.return_tensors)
        rows = [_side_rows(self._sft, e, ("completion",), i)[0] for i, e in enumerate(examples)]
        names = [_row_name(e, i) for i, e in enumerate(examples)]
        if self.kl_completions:  # prompt i with the completion of row i-1 (row 0 takes the last one)
            shifted = [{**e, "completion": examples[i - 1]["completion"]} for i, e in enumerate(examples)]
            rows += [_side_rows(self._sft, e, ("completion",), i)[0] for i, e in enumerate(shifted)]
            names += [f"{name}, KL completion" for name in names]
        ids, image_flags, images = process_rows(self.processor, rows, names, self.max_length)
        masks = [[int(bool(k) and not im) for k, im in zip(row["keep"], flags)]
                 for row, flags in zip(rows, image_flags)]
        out = _pad_batch(ids, self.processor, self.pad_to_multiple_of, images, image_flags)
        out["completion_mask"] = _pad(masks, out["input_ids"].shape[1], 0)
        out["label"] = torch.tensor([bool(e["label"]) for e in examples])
        return out


def image_inputs(names: set[str] | None, batch: dict) -> dict:
    """The processor's image tensors of a batch that the model's forward takes (everything but the token-aligned
    entries the trainers pass themselves)."""
    skip = {"input_ids", "attention_mask", "completion_mask", "label", "ref_chosen_logps", "ref_rejected_logps",
            "ref_logps", "ref_KL_logps", "position_ids", "token_counts", "labels"}
    return {k: v for k, v in batch.items() if k not in skip and (names is None or k in names)}


RAW_COLUMNS = ("messages", "prompt", "completion", "chosen", "rejected", "label", "image", "images", "tools",
               "chat_template_kwargs", "_row_index")


def check_vision_config(args, trainer: str = "SFTTrainer", chat_template_path: str | None = None) -> None:
    """The settings a vision-language run cannot honour, refused at construction with the fix."""
    if chat_template_path is not None:
        raise ValueError(
            f"{trainer}: `chat_template_path` is not supported with a processor; set the template on the processor "
            "instead (`processor.chat_template = open(path).read()`)."
        )
    if getattr(args, "packing", False):
        raise ValueError(
            f"{trainer}: `packing=True` is not supported for vision-language models: packed rows would mix the image "
            "tokens and pixel values of several rows. Set `packing=False`."
        )
    if getattr(args, "padding_free", False):
        raise ValueError(
            f"{trainer}: `padding_free=True` is not supported for vision-language models (the processor's image "
            "tensors are per row). Set `padding_free=False`."
        )
    if getattr(args, "truncation_mode", "keep_start") == "keep_end":
        raise ValueError(
            f"{trainer}: `truncation_mode='keep_end'` is not supported for vision-language models: it would cut the "
            "start of the sequence, where the images are. Use `truncation_mode='keep_start'`."
        )


def model_input_names(model) -> set[str] | None:
    """The keyword arguments of the model's forward (None when it takes `**kwargs` it does not name)."""
    import inspect

    forward = getattr(model, "_trl_original_forward", None) or model.forward
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return None
    return {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}


def check_vision_preference_config(args, trainer: str) -> None:
    """The preference-trainer settings a vision-language run cannot honour (DPO, KTO), refused with the fix."""
    check_vision_config(args, trainer)
    if getattr(args, "precompute_ref_log_probs", False):
        raise ValueError(
            f"{trainer}: `precompute_ref_log_probs=True` is not supported for vision-language models (the rows are "
            "processed on the fly, with their images, so there is no tokenised dataset to cache reference log-probs "
            "for). Set `precompute_ref_log_probs=False`."
        )


def vision_sft_collator(processor, args, return_token_counts: bool = False) -> DataCollatorForVisionLanguageModeling:
    """The SFT collator of a vision-language run, configured from `SFTConfig`."""
    pad_to_multiple_of = args.pad_to_multiple_of if isinstance(args.pad_to_multiple_of, int) else None
    return DataCollatorForVisionLanguageModeling(
        processor, max_length=args.max_length, completion_only_loss=args.completion_only_loss,
        assistant_only_loss=args.assistant_only_loss, pad_to_multiple_of=pad_to_multiple_of,
        dataset_text_field=args.dataset_text_field, return_token_counts=return_token_counts,
    )


def with_row_index(dataset):
    """`dataset` with a `_row_index` column (0, 1, ...), so that collation errors name the dataset row; for a
    `datasets.Dataset` only (adding a column does not rewrite the images), other datasets are returned as they are."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or "_row_index" in dataset.column_names:
        return dataset
    return dataset.add_column("_row_index", list(range(len(dataset))))


def _first_row(dataset) -> dict:
    for row in dataset:
        return row
    raise ValueError("The dataset is empty: there is nothing to train on.")


def check_vision_datasets(train_dataset, eval_dataset, collator, trainer: str, unpaired: bool = False) -> None:
    """Check the datasets of a vision-language run at construction: each is a `Dataset`/`IterableDataset`, and its
    first row collates (format, images, placeholders, `max_length`), so a bad setup fails now, not at step one.
    `unpaired` (KTO): paired rows are refused (they are unpaired automatically only for text)."""
    from .formats import _check_dataset_type

    datasets = {"train": train_dataset}
    if isinstance(eval_dataset, dict):
        datasets.update({f"eval[{k}]": v for k, v in eval_dataset.items()})
    elif eval_dataset is not None:
        datasets["eval"] = eval_dataset
    for name, dataset in datasets.items():
        _check_dataset_type(dataset, trainer, name)
        if getattr(dataset, "_format_type", None) == "custom":
            continue  # a `with_transform` dataset: its rows are only known through the transform
        row = _first_row(dataset)
        if unpaired and {"chosen", "rejected"} <= set(row):
            raise ValueError(
                f"{trainer} takes unpaired vision rows (prompt/completion/label with images); the {name} dataset is "
                "paired (chosen/rejected). Unpair it first: `trl.data_utils.unpair_preference_dataset(dataset)`."
            )
        try:
            batch = collator([row])
        except (ValueError, TypeError) as error:
            raise type(error)(f"{trainer}: the first row of the {name} dataset cannot be collated: {error}") from error
        labels = batch.get("labels")
        if labels is not None and not (labels[:, 1:] != IGNORE_INDEX).any():
            raise ValueError(
                f"{trainer}: the first row of the {name} dataset has no token to train on (every label is masked: "
                "image tokens, prompt, or cut by max_length). Check `completion_only_loss` / `assistant_only_loss` "
                "and `max_length`."
            )


_NOT_MODEL_INPUTS = ("labels", "token_counts", "completion_mask", "assistant_masks", "seq_lengths")


def vision_model_inputs(names: set[str] | None, inputs: dict) -> dict:
    """The entries of a vision batch that the model's forward takes (`names`, from `model_input_names`; None keeps
    them all): the ids, the attention mask and the processor's image tensors (`pixel_values`, `image_grid_thw`,
    `pixel_attention_mask`, ...); `mm_token_type_ids` only for a model whose forward names it."""
    return {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS and (names is None or k in names)}


def load_processor_for(model, model_id: str | None, args):
    """The processor saved with a vision-language model (one whose config has a `vision_config`), or None for any
    other model, whose tokenizer the trainers load as before (`trl.models.loading.load_processing_class`)."""
    config = getattr(model, "config", None)
    if getattr(config, "vision_config", None) is None:
        return None
    from transformers import AutoProcessor

    from ..models.loading import check_local_path, explain_hub_failure

    source = model_id or getattr(config, "_name_or_path", None)
    if not source:
        raise ValueError("`processing_class` is required when `model` is an object with no `_name_or_path`.")
    revision = (args.model_init_kwargs or {}).get("revision")
    kwargs = {"trust_remote_code": args.trust_remote_code, **({"revision": revision} if revision else {})}
    check_local_path(source, "Model")
    with explain_hub_failure(source, "Model"):
        processor = AutoProcessor.from_pretrained(source, **kwargs)
    if not is_processor(processor):
        raise ValueError(
            f"{type(model).__name__} ({source!r}) is a vision-language model, but its processor could not be loaded: "
            f"AutoProcessor gave a {type(processor).__name__} (a text tokenizer), which would train on text alone. "
            "Check that the folder holds the processor's files (processor_config.json) and that its dependencies are "
            "installed (e.g. torchvision for a processor with a video processor), or pass `processing_class=`."
        )
    return processor


# ---- prompts of the online trainers (GRPO, RLOO) ---------------------------------------------------------------------


def render_vision_prompt(row: dict, processor, chat_template_kwargs: dict | None = None,
                         row_index: int | None = None, name: str = "train") -> tuple[str, list]:
    """`(text, images)` of a vision row's prompt, ready for generation: the conversational `prompt` with one
    `{"type": "image"}` block per image (`prepare_multimodal_messages`: placed at the start of the first user message
    when the content is a string; content blocks keep their own), rendered by the processor's chat template with the
    generation prompt (or continuing a final assistant message), and the row's images as PIL images.

    Raises:
        `ValueError`: the prompt is not a list of messages, or its image blocks and images do not match; the message
            names the row.
    """
    from .tokenize import row_template_kwargs

    where = f"Row {row_index} of the {name} dataset" if row_index is not None else f"A row of the {name} dataset"
    prompt = row.get("prompt")
    if not _is_message_list(prompt):
        raise ValueError(
            f"{where}: a vision prompt must be conversational (a list of messages such as [{{'role': 'user', "
            f"'content': [{{'type': 'image'}}, {{'type': 'text', 'text': ...}}]}}]); got {type(prompt).__name__}. "
            "The processor's chat template places the image tokens."
        )
    images = row_images(row, row_index=row_index)
    try:
        messages = prepare_multimodal_messages(copy.deepcopy(prompt), images)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from error
    kwargs = {**(chat_template_kwargs or {}), **row_template_kwargs(row)}
    template = processor.chat_template or getattr(processor.tokenizer, "chat_template", None)
    if messages[-1].get("role") == "assistant":
        kwargs["continue_final_message"] = True
    else:
        kwargs["add_generation_prompt"] = True
    text = processor.apply_chat_template(messages, tokenize=False, chat_template=template, **kwargs)
    return text, images


def vision_prompt_ids(row: dict, processor, chat_template_kwargs: dict | None = None, row_index: int | None = None,
                      name: str = "train") -> list[int]:
    """The prompt ids of a vision row with every image placeholder expanded by the processor (`render_vision_prompt`,
    then the processor on the text and the row's images)."""
    text, images = render_vision_prompt(row, processor, chat_template_kwargs, row_index, name)
    where = f"Row {row_index} of the {name} dataset" if row_index is not None else f"A row of the {name} dataset"
    try:
        out = processor(text=[text], images=[images] if images else None, add_special_tokens=False)
    except ValueError as error:  # e.g. more placeholders than images
        raise ValueError(f"{where}: the processor refused the prompt and its {len(images)} image(s): {error}") \
            from error
    return [int(t) for t in out["input_ids"][0]]


def prepare_vision_prompt_dataset(dataset, processor, trainer: str, name: str = "train",
                                  chat_template_kwargs: dict | None = None):
    """The prompt dataset of a vision-language online run (GRPO, RLOO): conversational `prompt` rows with an `image`
    or `images` column gain `prompt_ids` (image tokens expanded, `vision_prompt_ids`); every column is kept (the
    reward functions receive the images as the column the dataset names).

    Raises:
        `TypeError` / `ValueError`: not a `datasets.Dataset` (streaming vision prompts are not supported), no
            `prompt` column, a standard (text) prompt, pre-tokenised `prompt_ids`, or a row whose images do not
            match its placeholders (named).
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"{trainer} with a vision-language model needs a `datasets.Dataset` as its {name} dataset (streaming and "
            f"other datasets are not supported with images); got {type(dataset).__name__}."
        )
    columns = list(dataset.column_names)
    if "prompt" not in columns:
        raise ValueError(f"{trainer} expects a 'prompt' column; the {name} dataset has columns {columns}.")
    if "prompt_ids" in columns:
        raise ValueError(
            f"{trainer}: the {name} dataset has a 'prompt_ids' column, but with images the prompt ids come from the "
            "processor (the image tokens it expands). Remove the 'prompt_ids' column."
        )
    if len(dataset) == 0:
        raise ValueError(f"The {name} dataset given to {trainer} is empty.")
    vision_prompt_ids(dataset[0], processor, chat_template_kwargs, 0, name)  # fail now on a bad first row

    def add_ids(row, index):
        return {"prompt_ids": vision_prompt_ids(row, processor, chat_template_kwargs, index, name)}

    return dataset.map(add_ids, with_indices=True, desc=f"Processing {name} vision prompts")
