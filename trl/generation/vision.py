"""Sampling and scoring with images for the online trainers (GRPO, RLOO): the vision half of the rollout loop.

A vision row's prompt is rendered by the processor's chat template and processed with the row's images, which
expands every image placeholder into the family's image tokens (`trl.data.vision.render_vision_prompt`). Then:

- **Generation** (`generate_with_images`): each distinct prompt (same ids *and* same images) is prefilled once, with
  its pixel inputs (`pixel_values`, `image_grid_thw`, `pixel_attention_mask`, ...), and its KV cache is repeated for
  its samples; decoding feeds no pixel inputs (the image is in the cache). It always runs over transformers' dynamic
  cache: the static-cache path (`trl/generation/static_decode.py`) does not take pixel inputs. The decode loop itself
  is the text backend's (`trl.generation.transformers_backend._decode`: finished rows leave the batch, sampling
  log-probs are recorded).
- **Image tokens are never sampled**: the logits of every image token (the placeholder, the family's tags around an
  image, `suppressed_token_ids`) are set to `-inf` before sampling, in the prefill and at every step.
- **Scoring** (`vision_completion_logps`): the training forward (and the reference's) re-processes the micro-batch's
  prompts with their images, so each family batches its pixel tensors its own way (Qwen2-VL's flattened patches with
  one `image_grid_thw` row per image, in row order; Idefics3's padded tiles; LLaVA's stacked images), runs the
  backbone once, and takes the log-probs of the completion tokens from the **same masked distribution** as the
  sampler (image tokens' logits pushed to a large negative value), so on-policy ratios are exactly 1 and the sampling
  log-probs equal the training ones.
- **Positions**: models with multimodal rotary positions (Qwen2-VL's `get_rope_index`) get their 3-D positions from
  the model's own function over the whole sequence; a generated token's position is the number of real tokens before
  it plus the prompt's offset (`rope delta`), the same value the full-sequence function gives it. Other models count
  real tokens (left padding), as for text.
"""

from __future__ import annotations

import hashlib
import inspect
import re

import torch

from ..rollout import Rollout
from .base import SamplingConfig
from .transformers_backend import (
    _decode,
    _eval_mode,
    _Forward,
    _input_device,
    _Outputs,
    _seen_tokens,
    _unwrap,
    left_pad,
)

_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
# a large negative logit for the tokens the sampler never draws: exp() of it is exactly 0 in float32, like -inf, but
# it keeps entropies finite (0 * -inf would be NaN)
_SUPPRESSED = -1e9
_IMAGE_TOKEN_NAME = re.compile(r"image|img|vision|video|<row_\d+_col_\d+>", re.IGNORECASE)


def suppressed_token_ids(processor) -> list[int]:
    """The token ids a VLM must never sample: the processor's image (and video) tokens, the tokens its chat template
    writes for an image block (`trl.data.vision.image_block_token_ids`: Qwen2-VL's `<|vision_start|>`...), and every
    added special token named like an image tag (Idefics3's `<fake_token_around_image>`, `<global-img>`,
    `<row_i_col_j>`).

    Example:
        ```python
        >>> processor = tiny_vlm_processor("llava")
        >>> processor.tokenizer.convert_ids_to_tokens(suppressed_token_ids(processor))
        ['<image>']
        ```
    """
    from ..data.vision import image_block_token_ids

    tokenizer = processor.tokenizer
    ids = set(image_block_token_ids(processor))
    for name in ("image_token_id", "video_token_id"):
        value = getattr(processor, name, None)
        if isinstance(value, int):
            ids.add(value)
    keep = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id}
    for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if _IMAGE_TOKEN_NAME.search(str(token)) and token_id not in keep:
            ids.add(int(token_id))
    return sorted(i for i in ids if i is not None and i not in keep)


def image_digest(images: list) -> str:
    """A short content hash of a row's images (PIL), so that rows with the same prompt ids but different images are
    never taken for samples of one prompt."""
    digest = hashlib.sha1()
    for image in images:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()[:12]


def process_prompts(processor, texts: list[str], images: list[list], device) -> dict:
    """One processor call on rendered prompts and their images, left-padded: `input_ids`, `attention_mask`,
    `mm_token_type_ids` (when the processor gives them) and the family's image tensors, on `device`."""
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    options = {"images": images if any(images) else None, "padding": True, "return_tensors": "pt",
               "add_special_tokens": False}
    try:
        try:
            batch = processor(text=texts, return_mm_token_type_ids=True, **options)
        except TypeError:  # a processor without `mm_token_type_ids`
            batch = processor(text=texts, **options)
    finally:
        tokenizer.padding_side = side
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else torch.as_tensor(v).to(device))
            for k, v in batch.items()}


def _forward_names(module) -> set[str]:
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()


def image_kwargs(module, batch: dict) -> dict:
    """The processor's image tensors of `batch` that `module`'s forward takes (`mm_token_type_ids` only where named)."""
    names = _forward_names(module)
    return {k: v for k, v in batch.items()
            if k not in ("input_ids", "attention_mask", "token_type_ids") and k in names}


def _rope_index(model):
    """The model's multimodal rotary position function (`get_rope_index`), or None for 1-D positions."""
    for owner in (model, getattr(model, getattr(model, "base_model_prefix", ""), None)):
        function = getattr(owner, "get_rope_index", None)
        if callable(function):
            return function
    return None


def position_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: dict) -> torch.Tensor:
    """Positions of a left-padded batch: the model's 3-D multimodal positions (`(3, B, T)`) when it has them, else
    `(B, T)` counts of real tokens."""
    rope_index = _rope_index(model)
    if rope_index is not None and "image_grid_thw" in batch:
        mm = batch.get("mm_token_type_ids")
        kwargs = {"image_grid_thw": batch["image_grid_thw"], "attention_mask": attention_mask}
        if mm is not None:
            kwargs["mm_token_type_ids"] = mm
        positions, _ = rope_index(input_ids, **kwargs)
        return positions
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _right_align(values: torch.Tensor, width: int) -> torch.Tensor:
    """`values` `(B, T)` left-padded with zeros (or cut on the left) to `width` columns."""
    if values.shape[1] >= width:
        return values[:, values.shape[1] - width:]
    return torch.nn.functional.pad(values, (width - values.shape[1], 0))


def _check_ids(batch: dict, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
    width = prompt_ids.shape[1]
    ids = _right_align(batch["input_ids"] * batch["attention_mask"], width)
    if not torch.equal(ids, prompt_ids * prompt_mask):
        raise RuntimeError("The processor gave other prompt ids than those the completions were sampled from; the "
                           "images of the rows no longer match their prompts.")


def generate_with_images(model, processor, prompt_ids: list[list[int]], texts: list[str], images: list[list],
                         counts: list[int], sampling: SamplingConfig, suppress: list[int],
                         generator: torch.Generator | None = None) -> Rollout:
    """Sample `counts[i]` completions of each distinct prompt `i` (its ids, rendered text and images), prefilling
    each prompt once with its pixel inputs. Rows come prompt-major (`sum(counts)` rows).

    Returns:
        [`Rollout`] with `prompt_ids`, `prompt_mask`, `completion_ids`, `completion_mask`, `is_truncated` and
        `sampling_logps` (under the distribution with image tokens suppressed).
    """
    model = _unwrap(model)
    device = _input_device(model)
    batch = process_prompts(processor, texts, images, device)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prompts, prompt_mask = left_pad(prompt_ids, sampling.pad_token_id, device)
    _check_ids(batch, prompts, prompt_mask)
    num_rows, max_new = sum(counts), sampling.max_completion_length
    out = _Outputs(
        ids=torch.full((num_rows, max_new), sampling.pad_token_id, dtype=torch.long, device=device),
        logps=torch.zeros(num_rows, max_new, dtype=torch.float32, device=device),
        lengths=torch.zeros(num_rows, dtype=torch.long, device=device),
        ended=torch.zeros(num_rows, dtype=torch.bool, device=device),
    )
    suppress_ids = torch.tensor(suppress, dtype=torch.long, device=device)
    with torch.no_grad(), _eval_mode(model):
        step = _MaskedForward(model, suppress_ids)
        positions = position_ids(_lm(model), ids, mask, batch)
        logits = step.prefill_images(ids, mask, positions, image_kwargs(_lm(model), batch))
        if positions.dim() == 3:  # next position = real tokens so far + the prompt's multimodal offset
            offset = positions.amax(dim=(0, 2)) + 1 - mask.sum(-1)
        else:
            offset = torch.zeros(len(ids), dtype=torch.long, device=device)
        expand = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)], dtype=torch.long, device=device)
        logits = logits[expand]
        step.reindex(expand)
        prefix = mask.shape[1]
        attention = torch.zeros(num_rows, prefix + max_new, dtype=mask.dtype, device=device)
        attention[:, :prefix] = mask[expand]
        next_positions = (mask.sum(-1) + offset)[expand]
        seen = _seen_tokens([prompt_ids[i] for i in expand.tolist()], logits.shape[-1], sampling, device)
        row_ids = torch.arange(num_rows, device=device)
        _decode(step, logits, attention, prefix, next_positions, seen, row_ids, sampling, generator, out, None)
    width = max(int(out.lengths.max()), 1)
    return Rollout(
        prompt_ids=prompts[expand], prompt_mask=prompt_mask[expand],
        completion_ids=out.ids[:, :width].contiguous(),
        completion_mask=(torch.arange(width, device=device) < out.lengths[:, None]).long(),
        is_truncated=~out.ended, sampling_logps=out.logps[:, :width].contiguous(),
    )


def _lm(model):
    from ..models.utils import causal_lm

    return causal_lm(_unwrap(model))


def _masked(logits: torch.Tensor, suppress_ids: torch.Tensor) -> torch.Tensor:
    if suppress_ids.numel():
        logits = logits.index_fill(-1, suppress_ids, float("-inf"))
    return logits


class _MaskedForward(_Forward):
    """The text backend's model calls (`transformers_backend._Forward`) with a prefill that takes pixel inputs, and
    logits whose image tokens are `-inf`."""

    def __init__(self, model, suppress_ids: torch.Tensor):
        super().__init__(model)
        self.suppress_ids = suppress_ids

    def prefill_images(self, ids, mask, positions, images: dict) -> torch.Tensor:
        logits = self._call(ids, mask, positions, **({"logits_to_keep": 1} if self.keep_arg else {}), **images)
        return _masked(logits, self.suppress_ids)

    def decode(self, tokens, attention_mask, positions) -> torch.Tensor:
        return _masked(super().decode(tokens, attention_mask, positions), self.suppress_ids)


def vision_completion_logps(model, processor, micro: Rollout, texts: list[str], images: list[list],
                            suppress: list[int], temperature: float = 1.0):
    """`(B, C)` log-probs and entropies of a micro-batch's completion tokens under `model` with each row's images
    (the backbone once, then the LM head on the completion positions only, `chunk` rows of logits at a time), from
    the distribution the sampler draws from (image tokens suppressed).

    Raises:
        `NotImplementedError`: a model whose logits are soft-capped (the suppression could not be expressed as a bias).
    """
    from ..ops.fused_head import FusedHeadRequest, _effective_head

    lm = _lm(model)
    device = micro.prompt_ids.device
    batch = process_prompts(processor, texts, images, device)
    _check_ids(batch, micro.prompt_ids, micro.prompt_mask)
    prompt_width = micro.prompt_ids.shape[1]
    input_ids = torch.cat([micro.prompt_ids, micro.completion_ids], dim=1)
    attention_mask = torch.cat([micro.prompt_mask, micro.completion_mask], dim=1)
    full = dict(batch)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in batch:
            prompt_part = _right_align(batch[key], prompt_width)
            full[key] = torch.cat([prompt_part, torch.zeros_like(micro.completion_ids, dtype=prompt_part.dtype)], 1)
    positions = position_ids(lm, input_ids, attention_mask, full)
    backbone = getattr(lm, lm.base_model_prefix)
    targets_mask = micro.completion_mask.bool()
    transform = dict(getattr(lm, "_trl_logit_transform", {}) or {})
    if transform.get("softcap") is not None:
        raise NotImplementedError(
            f"{type(lm).__name__} soft-caps its logits; image-token suppression in the training forward of a "
            "vision-language model is not supported for such models."
        )
    weight = _effective_head(lm.get_output_embeddings())[0]
    # exp() of the suppressed logits is 0 in any float dtype; kept finite (entropies stay finite) and representable
    floor = max(_SUPPRESSED, torch.finfo(weight.dtype).min / 4)
    suppress_bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    if suppress:
        suppress_bias[torch.tensor(suppress, device=weight.device)] = floor
    labels = torch.cat([torch.full_like(micro.prompt_ids, -100), micro.completion_ids.masked_fill(~targets_mask, -100)],
                       dim=1)
    # one fused-head forward through `model` itself, so that a DDP/FSDP wrapper synchronises the gradients (the head
    # included); the suppression is a logit bias, as in sampling
    request = FusedHeadRequest(labels=labels, temperature=temperature, logit_bias=suppress_bias)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, fused_lm_head=request,
                    **image_kwargs(backbone, full))
    logps = torch.zeros(targets_mask.shape, dtype=outputs.logps.dtype, device=device).masked_scatter(
        targets_mask, outputs.logps)
    entropy = torch.zeros(targets_mask.shape, dtype=outputs.entropy.dtype, device=device).masked_scatter(
        targets_mask, outputs.entropy)
    return logps, entropy


VISION_KEYS = ("_vision_text", "_vision_image")  # rollout columns the trainer keeps for itself (not reward kwargs)


class VisionRollouts:
    """What an online trainer (GRPO, RLOO) does differently for a vision-language model, in one place: it prepares
    the prompt datasets (`trl.data.vision.prepare_vision_prompt_dataset`), samples with the images
    (`generate_with_images`, one prefill per distinct prompt and images) and scores completions with them
    (`vision_completion_logps`).

    Args:
        processor (`ProcessorMixin`): the model's processor (its chat template renders the prompts).
        trainer (`str`): the trainer's name, for messages.
        chat_template_kwargs (`dict`, *optional*): extra arguments of the chat template.
    """

    def __init__(self, processor, trainer: str, chat_template_kwargs: dict | None = None):
        self.processor, self.trainer, self.chat_template_kwargs = processor, trainer, chat_template_kwargs
        self.suppress = suppressed_token_ids(processor)

    @property
    def renderer(self):
        """The processor behind the tokenizer interface (`trl.data.vision.ProcessorTokenizer`): its chat template
        tells the end-of-turn ids that stop sampling."""
        from ..data.vision import ProcessorTokenizer

        return ProcessorTokenizer(self.processor)

    @staticmethod
    def check_supported(trainer: str, *, tools=None, environment_factory=None, rollout_func=None,
                        scores_rewards: bool = True, args=None) -> None:
        """Refuse, at construction, what the online trainers do not support with images (with the fix)."""
        unsupported = []
        if not scores_rewards:
            unsupported.append(f"{trainer} (only GRPO and RLOO train vision-language models online)")
        if tools:
            unsupported.append("`tools`")
        if environment_factory is not None:
            unsupported.append("`environment_factory`")
        if rollout_func is not None:
            unsupported.append("`rollout_func`")
        if args is not None and getattr(args, "use_vllm", False):
            unsupported.append("`use_vllm=True`")
        if args is not None and getattr(args, "use_transformers_continuous_batching", False):
            unsupported.append("`use_transformers_continuous_batching=True`")
        if unsupported:
            raise ValueError(
                f"{trainer} got a multimodal processor: vision-language models are supported by GRPO and RLOO with "
                f"the built-in generation only, not with {', '.join(unsupported)}. Remove it, or train a text model "
                "with its tokenizer."
            )

    def prepare(self, dataset, name: str = "train"):
        from ..data.vision import image_column, prepare_vision_prompt_dataset

        columns = getattr(dataset, "column_names", None) or []
        if image_column(columns) is None:
            raise ValueError(
                f"{self.trainer} got a multimodal processor but the {name} dataset has no 'image' or 'images' column "
                f"(columns {list(columns)}). Add the images, or train the text model with its tokenizer."
            )
        dataset = prepare_vision_prompt_dataset(dataset, self.processor, self.trainer, name,
                                                self.chat_template_kwargs)
        if "_vision_row" not in dataset.column_names:
            dataset = dataset.add_column("_vision_row", list(range(len(dataset))))
        return dataset

    def generate(self, model, rows: list[dict], sampling: SamplingConfig, generator=None) -> Rollout:
        """One completion per row (rows of one prompt come in runs, as the sampler yields them), with the rows'
        images; the rollout's columns hold each row's rendered prompt and an image label (`VISION_KEYS`)."""
        from ..data.vision import render_vision_prompt

        rendered = [render_vision_prompt(row, self.processor, self.chat_template_kwargs, row.get("_vision_row"))
                    for row in rows]
        keys = [(tuple(row["prompt_ids"]), image_digest(images)) for row, (_, images) in zip(rows, rendered)]
        starts, counts = [], []
        for i, key in enumerate(keys):
            if counts and keys[starts[-1]] == key:
                counts[-1] += 1
            else:
                starts.append(i)
                counts.append(1)
        rollout = generate_with_images(
            model, self.processor, [rows[s]["prompt_ids"] for s in starts], [rendered[s][0] for s in starts],
            [rendered[s][1] for s in starts], counts, sampling, self.suppress, generator,
        )
        rollout.columns = {
            "_vision_text": [text for text, _ in rendered],
            "_vision_image": [f"row {row.get('_vision_row')} ({key[1]})" for row, key in zip(rows, keys)],
        }
        return rollout

    def completion_logps(self, model, micro: Rollout, temperature: float = 1.0):
        """`(B, C)` log-probs and entropies of a micro-batch's completions with its rows' images."""
        from ..data.vision import image_column, row_images

        column = image_column(list(micro.columns))
        images = [row_images({column: value}) for value in micro.columns[column]] if column else [[]] * len(micro)
        return vision_completion_logps(model, self.processor, micro, micro.columns["_vision_text"], images,
                                       self.suppress, temperature)
