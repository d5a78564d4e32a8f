"""Small helpers shared by trainers, and the tensor helpers that scripts import from `trl.trainer.utils`.

Example:
    ```python
    >>> from trl.trainer.utils import nanstd, pad, selective_log_softmax
    ```
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.utils import disable_dropout_in_model

__all__ = [
    "RepeatSampler",  # noqa: F822 (built on first access, see __getattr__)
    "disable_dropout_in_model",
    "entropy_from_logits",
    "flush_left",
    "flush_right",
    "generate_model_card",
    "nanmax",
    "nanmin",
    "nanstd",
    "pad",
    "print_prompt_completions_sample",
    "selective_log_softmax",
    "shuffle_sequence_dict",
    "split_tensor_dict",
]


# ---------------------------------------------------------------------------------------------------------------------
# Helpers that scripts written for the reference library import from `trl.trainer.utils`. Same names, signatures and
# results; written here on plain torch (the trainers themselves use the fused LM head of `trl.ops`, which never builds
# `(B, T, V)` logits, so these logits-level versions are for user code and tests).
# ---------------------------------------------------------------------------------------------------------------------


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Log-probability of the token `index` under `logits`: `log_softmax(logits, -1).gather(-1, index)`, without
    keeping the full `(..., V)` log-softmax (one row of positions at a time for half precision).

    Args:
        logits (`torch.Tensor`): `(..., V)` logits.
        index (`torch.Tensor`): `(...)` token ids in `[0, V)`.

    Returns:
        `torch.Tensor`: `(...)` log-probabilities, in the dtype of `logits`.

    Example:
        ```python
        >>> selective_log_softmax(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor([-0.6931])
        ```
    """
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        return picked - torch.logsumexp(logits, dim=-1)
    # half precision: logsumexp in float32, one leading row at a time so the float32 copy stays small
    flat, flat_picked = logits.reshape(-1, logits.shape[-1]), picked.reshape(-1)
    norms = [torch.logsumexp(rows.float(), dim=-1) for rows in flat.split(1024)]
    norms = torch.cat(norms) if norms else flat.new_zeros(0, dtype=torch.float32)
    return (flat_picked.float() - norms).to(logits.dtype).reshape(picked.shape)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """Entropy of the softmax of `logits` over the last dimension, computed `chunk_size` positions at a time.

    Args:
        logits (`torch.Tensor`): `(..., V)` logits.
        chunk_size (`int`, *optional*, defaults to `128`): positions per chunk (bounds the `(chunk_size, V)`
            temporaries).

    Returns:
        `torch.Tensor`: `(...)` entropies, in the dtype of `logits`.

    Example:
        ```python
        >>> entropy_from_logits(torch.zeros(1, 4))  # uniform over 4 tokens: log 4
        tensor([1.3863])
        ```
    """
    if chunk_size < 1:
        raise ValueError(f"entropy_from_logits: chunk_size must be >= 1, got {chunk_size}.")
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for chunk in flat.split(chunk_size):
        logps = torch.log_softmax(chunk.float() if chunk.dtype in (torch.float16, torch.bfloat16) else chunk, dim=-1)
        parts.append((-(logps.exp() * logps).sum(-1)).to(logits.dtype))
    out = torch.cat(parts) if parts else flat.new_zeros(0)
    return out.reshape(logits.shape[:-1])


def pad(
    tensors: list[torch.Tensor],
    padding_value: int = 0,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """Stack tensors of different shapes into one, padding every dimension to the largest size.

    Args:
        tensors (`list[torch.Tensor]`): tensors with the same number of dimensions.
        padding_value (`int`, *optional*, defaults to `0`): fill value.
        padding_side (`str`, *optional*, defaults to `"right"`): `"right"` or `"left"` (the first dimension; the others
            are padded on the right).
        pad_to_multiple_of (`int`, *optional*): round the first dimension up to a multiple of this.

    Returns:
        `torch.Tensor`: `(len(tensors), *max_shape)`, with the dtype and device of the first tensor.

    Example:
        ```python
        >>> pad([torch.tensor([1, 2, 3]), torch.tensor([4])], padding_side="left")
        tensor([[1, 2, 3],
                [0, 0, 4]])
        ```
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"pad: padding_side must be 'right' or 'left', got {padding_side!r}.")
    if not tensors:
        raise ValueError("pad: got no tensors.")
    if len({t.dim() for t in tensors}) != 1:
        raise ValueError(f"pad: every tensor needs the same number of dimensions; got {[t.dim() for t in tensors]}.")
    shape = [max(sizes) for sizes in zip(*(t.shape for t in tensors))]
    if pad_to_multiple_of and shape:
        shape[0] = -(-shape[0] // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(tensors), *shape), padding_value, dtype=tensors[0].dtype, device=tensors[0].device)
    for i, t in enumerate(tensors):
        if not shape:  # 0-d tensors
            out[i] = t
            continue
        first = slice(shape[0] - t.shape[0], shape[0]) if padding_side == "left" else slice(0, t.shape[0])
        out[i][(first, *(slice(0, s) for s in t.shape[1:]))] = t
    return out


def _flush(mask: torch.Tensor, tensors: tuple[torch.Tensor, ...], left: bool):
    if mask.dim() != 2 or any(t.shape[:2] != mask.shape for t in tensors):
        raise ValueError("flush_left/flush_right: `mask` must be 2-D and every tensor must start with its shape.")
    width = mask.shape[1]
    nonzero = mask != 0
    if left:  # roll each row left so that its first non-zero column comes first
        shift = nonzero.int().argmax(dim=1)
    else:  # roll each row right so that its last non-zero column comes last
        last = width - 1 - nonzero.flip(1).int().argmax(dim=1)
        shift = last - (width - 1)
    cols = (torch.arange(width, device=mask.device).unsqueeze(0) + shift.unsqueeze(1)) % width  # (B, T)

    def roll(t):
        index = cols.reshape(*cols.shape, *([1] * (t.dim() - 2))).expand_as(t)
        return t.gather(1, index)

    rolled_mask, rolled = roll(mask), [roll(t) for t in tensors]
    used = (rolled_mask != 0).any(dim=0)  # columns that hold data in some row
    if left:
        keep = slice(0, int(used.nonzero().max()) + 1 if used.any() else 0)
    else:
        keep = slice(int(used.nonzero().min()) if used.any() else width, width)
    rolled_mask, rolled = rolled_mask[:, keep], [t[:, keep] for t in rolled]
    return (rolled_mask, *rolled) if tensors else rolled_mask


def flush_left(mask: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Move each row's data to the left edge and drop the columns left empty on the right.

    Each row of `mask` holds one contiguous run of non-zero values (e.g. a left-padded prompt followed by a
    right-padded completion); the row and the same row of every tensor are rolled so that the run starts at column 0,
    then the trailing columns that are zero in every row of the rolled mask are removed.

    Args:
        mask (`torch.Tensor`): `(B, T)` mask.
        *tensors (`torch.Tensor`): `(B, T, ...)` tensors moved along with it.

    Returns:
        The flushed mask, or `(mask, *tensors)` when tensors are given.

    Example:
        ```python
        >>> flush_left(torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]]))
        tensor([[1, 1],
                [1, 0]])
        ```
    """
    return _flush(mask, tensors, left=True)


def flush_right(mask: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Mirror of [`flush_left`]: move each row's data to the right edge and drop the columns left empty on the left.

    Example:
        ```python
        >>> flush_right(torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]]))
        tensor([[1, 1],
                [0, 1]])
        ```
    """
    return _flush(mask, tensors, left=False)


def nanmin(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum over the values of `tensor` that are not NaN; NaN when every value is NaN (or there is none).

    Example:
        ```python
        >>> nanmin(torch.tensor([float("nan"), 2.0, 1.0]))
        tensor(1.)
        ```
    """
    values = tensor[~torch.isnan(tensor)]
    return values.min() if values.numel() else torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)


def nanmax(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over the values of `tensor` that are not NaN; NaN when every value is NaN (or there is none).

    Example:
        ```python
        >>> nanmax(torch.tensor([float("nan"), 2.0, 1.0]))
        tensor(2.)
        ```
    """
    values = tensor[~torch.isnan(tensor)]
    return values.max() if values.numel() else torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)


def nanstd(tensor: torch.Tensor) -> torch.Tensor:
    """Standard deviation (with Bessel's correction, as `torch.std`) over the values of `tensor` that are not NaN;
    NaN when fewer than two values are left.

    Example:
        ```python
        >>> nanstd(torch.tensor([1.0, float("nan"), 3.0]))
        tensor(1.4142)
        ```
    """
    values = tensor[~torch.isnan(tensor)]
    if values.numel() < 2:
        return torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)
    return values.std()


def split_tensor_dict(tensor_dict: dict[str, Any], num_chunks: int) -> list[dict[str, Any]]:
    """Split every batched value of `tensor_dict` along its first dimension into `num_chunks` equal chunks.

    Tensors with a batch dimension and lists are sliced; 0-d tensors (scalars) are kept whole in every chunk, and
    `None` stays `None`. With a batch size that `num_chunks` does not divide, the remainder rows are dropped, as in the
    reference.

    Example:
        ```python
        >>> chunks = split_tensor_dict({"x": torch.arange(4), "s": torch.tensor(7), "m": None}, 2)
        >>> chunks[1]["x"], chunks[1]["s"], chunks[1]["m"]
        (tensor([2, 3]), tensor(7), None)
        ```
    """
    if num_chunks < 1:
        raise ValueError(f"split_tensor_dict: num_chunks must be >= 1, got {num_chunks}.")
    batched = [v for v in tensor_dict.values() if _batched(v)]
    if not batched:
        raise ValueError("split_tensor_dict: no value has a batch dimension to split.")
    size = len(batched[0]) // num_chunks
    return [
        {k: (v[i * size : (i + 1) * size] if _batched(v) else v) for k, v in tensor_dict.items()}
        for i in range(num_chunks)
    ]


def _batched(value: Any) -> bool:
    return isinstance(value, list) or (isinstance(value, torch.Tensor) and value.dim() > 0)


def shuffle_sequence_dict(seq_dict: dict[str, Any]) -> dict[str, Any]:
    """Shuffle every batched value of `seq_dict` (tensors along their first dimension, and lists) with one random
    permutation (from torch's global generator), so the rows stay aligned. 0-d tensors and `None` are kept as they are.

    Example:
        ```python
        >>> out = shuffle_sequence_dict({"x": torch.arange(3), "y": ["a", "b", "c"]})
        >>> [out["y"][i] for i in range(3)] == [["a", "b", "c"][int(i)] for i in out["x"]]
        True
        ```
    """
    batched = [v for v in seq_dict.values() if _batched(v)]
    if not batched:
        return dict(seq_dict)
    permutation = torch.randperm(len(batched[0]))

    def permute(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value[permutation.to(value.device)]
        if isinstance(value, list):
            return [value[i] for i in permutation.tolist()]
        return value

    return {k: permute(v) for k, v in seq_dict.items()}


def print_prompt_completions_sample(
    prompts: list,
    completions: list,
    rewards: dict[str, list[float]],
    advantages: list[float],
    step: int,
    num_samples: int | None = None,
) -> None:
    """Print a table of prompts, completions, their rewards (one column per reward function) and advantages, as the
    online trainers do at each logging step (rich when installed, plain text otherwise).

    Args:
        prompts (`list`): prompts (strings or messages).
        completions (`list`): completions, one per prompt.
        rewards (`dict[str, list[float]]`): reward name to one value per completion.
        advantages (`list[float]`): one advantage per completion.
        step (`int`): the training step, in the title.
        num_samples (`int`, *optional*): print this many rows drawn at random (all rows when `None` or larger).

    Example:
        ```python
        >>> print_prompt_completions_sample(["2+2="], [" 4"], {"accuracy": [1.0]}, [0.5], step=10)
        ```
    """
    import random

    import pandas as pd

    from .online import _print_table

    rows = list(range(len(prompts)))
    if num_samples is not None and num_samples < len(rows):
        rows = sorted(random.sample(rows, max(num_samples, 0)))
    frame = {"step": [step] * len(rows), "Prompt": [prompts[i] for i in rows],
             "Completion": [completions[i] for i in rows]}
    for name, values in rewards.items():
        frame[name] = [float(values[i]) for i in rows]
    frame["Advantage"] = [float(advantages[i]) for i in rows]
    _print_table(pd.DataFrame(frame), step)


def generate_model_card(
    base_model: str | None,
    model_name: str,
    hub_model_id: str,
    dataset_name: str | None,
    tags: list[str],
    wandb_url: str | None,
    trainer_name: str,
    trainer_citation: str | None = None,
    template_file: str | None = None,
    paper_title: str | None = None,
    paper_id: str | None = None,
    comet_url: str | None = None,
):
    """Build a `huggingface_hub.ModelCard` for a model trained with this library: metadata (base model, datasets,
    tags, `library_name: transformers`), a quick-start snippet, the training method and its citation, run links and
    framework versions. Nothing is sent anywhere; call `card.save(path)` or `card.push_to_hub(...)` yourself.

    Args:
        base_model (`str`, *optional*): the model fine-tuned.
        model_name (`str`): the name of the trained model.
        hub_model_id (`str`): the Hub id the snippet loads.
        dataset_name (`str`, *optional*): the training dataset.
        tags (`list[str]`): metadata tags.
        wandb_url (`str`, *optional*): link to the Weights & Biases run.
        trainer_name (`str`): e.g. `"DPO"`.
        trainer_citation (`str`, *optional*): BibTeX of the method.
        template_file (`str`, *optional*): a Jinja template (as `ModelCard.from_template`) instead of ours; it receives
            every argument as a variable.
        paper_title (`str`, *optional*), paper_id (`str`, *optional*): the method's paper (its Hub papers id).
        comet_url (`str`, *optional*): link to the Comet experiment.

    Returns:
        `huggingface_hub.ModelCard`.

    Example:
        ```python
        >>> card = generate_model_card("Qwen/Qwen3-0.6B", "my-model", "me/my-model", None, ["trl"], None, "SFT")
        >>> card.data.base_model
        'Qwen/Qwen3-0.6B'
        ```
    """
    import platform

    import transformers
    from huggingface_hub import ModelCard, ModelCardData

    from .. import __version__

    data = ModelCardData(
        base_model=base_model, datasets=dataset_name, library_name="transformers", model_name=model_name, tags=list(tags),
    )
    values = {
        "base_model": base_model, "model_name": model_name, "hub_model_id": hub_model_id,
        "dataset_name": dataset_name, "tags": list(tags), "wandb_url": wandb_url, "comet_url": comet_url,
        "trainer_name": trainer_name, "trainer_citation": trainer_citation, "paper_title": paper_title,
        "paper_id": paper_id, "trl_version": __version__, "transformers_version": transformers.__version__,
        "pytorch_version": torch.__version__, "python_version": platform.python_version(),
    }
    if template_file is not None:
        return ModelCard.from_template(data, template_path=template_file, **values)
    lines = [f"# Model Card for {model_name}", ""]
    base = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a base model"
    on_data = f" on the [{dataset_name}](https://huggingface.co/datasets/{dataset_name}) dataset" if dataset_name else ""
    lines += [f"This model is a fine-tuned version of {base}{on_data}, trained with the `trl` library.", "",
              "## Quick start", "", "```python", "from transformers import pipeline", "",
              f'generator = pipeline("text-generation", model="{hub_model_id}")',
              ('print(generator([{"role": "user", "content": "Hello!"}], max_new_tokens=128, return_full_text=False)'
               '[0]["generated_text"])'), "```", "", "## Training procedure", ""]
    method = f"This model was trained with {trainer_name}"
    if paper_title and paper_id:
        method += f", a method introduced in [{paper_title}](https://huggingface.co/papers/{paper_id})"
    lines += [method + ".", ""]
    for label, url in (("Weights & Biases run", wandb_url), ("Comet experiment", comet_url)):
        if url:
            lines += [f"- {label}: {url}"]
    lines += ["", "### Framework versions", "", f"- TRL: {__version__}", f"- Transformers: {transformers.__version__}",
              f"- PyTorch: {torch.__version__}", f"- Python: {platform.python_version()}", ""]
    if trainer_citation:
        lines += ["## Citations", "", f"Cite {trainer_name} as:", "", "```bibtex", trainer_citation.strip(), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _repeat_sampler_class():
    """`RepeatSampler` with the reference's constructor, over the online trainers' sampler (`trl.trainer.online`).
    Built on first access: `online` imports the trainer base, which imports this module."""
    from .online import RepeatSampler as _OnlineRepeatSampler

    class RepeatSampler(_OnlineRepeatSampler):
        """Sampler that yields each index `mini_repeat_count` times in a row, in chunks of `batch_size` indices, each
        chunk repeated `repeat_count` times; a last chunk smaller than `batch_size` is dropped.

        The reference's constructor over the online trainers' sampler ([`trl.trainer.online.RepeatSampler`]).

        Args:
            data_source (`Sized` or `int`): the dataset (only its length is used), or the number of rows.
            mini_repeat_count (`int`): consecutive repeats of each index (`num_generations`).
            batch_size (`int`, *optional*, defaults to `1`): distinct indices per chunk.
            repeat_count (`int`, *optional*, defaults to `1`): repeats of each chunk.
            shuffle (`bool`, *optional*, defaults to `True`): draw the indices in a random order.
            seed (`int`, *optional*): seed of that order (random when `None`); each epoch (`set_epoch`) reshuffles.

        Example:
            ```python
            >>> list(RepeatSampler(["a", "b", "c", "d"], mini_repeat_count=2, batch_size=2, repeat_count=2,
            ...                    shuffle=False))
            [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
            ```
        """

        def __init__(self, data_source, mini_repeat_count: int, batch_size: int = 1, repeat_count: int = 1,
                     shuffle: bool = True, seed: int | None = None):
            num_rows = data_source if isinstance(data_source, int) else len(data_source)
            if seed is None:
                seed = torch.Generator().seed() % (2**31)
            super().__init__(num_rows, mini_repeat_count, batch_size, repeat_count, shuffle=shuffle, seed=seed)
            self.data_source, self.mini_repeat_count, self.batch_size = data_source, mini_repeat_count, batch_size

    RepeatSampler.__qualname__, RepeatSampler.__module__ = "RepeatSampler", __name__
    return RepeatSampler


def __getattr__(name: str):
    if name == "RepeatSampler":
        cls = _repeat_sampler_class()
        globals()["RepeatSampler"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
