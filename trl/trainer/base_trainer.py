"""`_BaseTrainer`: what every trainer shares, as helpers. Nothing here is a hook that a trainer must override; the
one overridable method is `_count_loss_items` (what a micro-batch's loss is averaged over).

- a metrics buffer that averages correctly over gradient accumulation and processes (sums and counts, reduced once
  per logging step), merged into `log()`;
- the loss-token count of a whole optimiser step (`num_items_in_batch`, see `trl.losses.reduce`);
- model and processing-class set-up from a string or an object, PEFT wrapping;
- a NaN/inf guard on the logged loss; a model card written with every save.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer

from .. import guards
from ..losses.reduce import count_loss_tokens
from ..models import loading


def as_config(args, config_class, default_output_dir: str):
    """`args` as a `config_class`: None -> defaults with `default_output_dir`; a plain `TrainingArguments` (or another
    config) is converted field by field.

    Example:
        ```python
        >>> as_config(None, SFTConfig, "model-SFT").output_dir
        'model-SFT'
        ```
    """
    import dataclasses

    from transformers import TrainingArguments

    if args is None:
        return config_class(output_dir=default_output_dir)
    if isinstance(args, config_class):
        return args
    if isinstance(args, TrainingArguments):
        names = {f.name for f in dataclasses.fields(config_class) if f.init}
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in names}
        return config_class(**values)
    raise TypeError(f"`args` must be a {config_class.__name__} or TrainingArguments; got {type(args).__name__}.")


class _MetricsBuffer:
    """Per-mode running sums and counts. `mean()` reduces them over processes, so a metric is the exact average over
    every item seen since the last log, whatever the accumulation steps and ranks (not a mean of means)."""

    def __init__(self):
        self._sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts = {"train": defaultdict(float), "eval": defaultdict(float)}

    def add(self, mode: str, key: str, total: float | torch.Tensor, count: float | torch.Tensor = 1.0) -> None:
        self._sums[mode][key] += float(total)
        self._counts[mode][key] += float(count)

    def pop_means(self, mode: str, accelerator) -> dict[str, float]:
        keys = sorted(self._sums[mode])
        if not keys:
            return {}
        device = accelerator.device if accelerator is not None else "cpu"
        values = torch.tensor(
            [[self._sums[mode][k] for k in keys], [self._counts[mode][k] for k in keys]], dtype=torch.float64,
            device=device,
        )
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="sum")
        self._sums[mode].clear()
        self._counts[mode].clear()
        return {k: (s / c if c else float("nan")) for k, s, c in zip(keys, values[0].tolist(), values[1].tolist())}


class _BaseTrainer(Trainer):
    """Base of every trainer. See the module docstring for what it holds."""

    _tag_names: list[str] = ["trl"]
    _name: str = "Trainer"
    # Our losses are already normalised by the token count of the whole optimiser step (trl.losses.reduce).
    loss_is_scaled_for_ga = True

    def _init_metrics(self) -> None:
        self._metrics = _MetricsBuffer()
        self._num_tokens = {"train": 0, "eval": 0}  # since the last log, this process
        self._num_tokens_total = {"train": 0.0, "eval": 0.0}  # since the start, all processes

    # ---- model set-up helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _load_model(model, args, quantization_config=None):
        """Return a model object: `model` itself, or loaded from a hub id / local folder with `model_init_kwargs`."""
        if not isinstance(model, str):
            loading.warn_if_quantization_ignored(quantization_config, model)
            if args.model_init_kwargs:
                import warnings

                warnings.warn("`model_init_kwargs` is ignored because `model` is already instantiated.", stacklevel=3)
            return model
        kwargs = dict(args.model_init_kwargs or {})
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        if quantization_config is not None:
            if "quantization_config" in kwargs:
                raise ValueError("`quantization_config` was given both as an argument and in `model_init_kwargs`.")
            kwargs["quantization_config"] = quantization_config
        return loading.create_model_from_path(model, **kwargs)

    @staticmethod
    def _load_processing_class(processing_class, model, model_id: str | None, args):
        """`processing_class` itself, or the tokenizer saved with the model (same revision)."""
        if processing_class is not None:
            return processing_class
        revision = (args.model_init_kwargs or {}).get("revision")
        source = model_id or getattr(model.config, "_name_or_path", None)
        if not source:
            raise ValueError("`processing_class` is required when `model` is an object with no `_name_or_path`.")
        return loading.load_processing_class(source, revision, args.trust_remote_code)

    @staticmethod
    def _default_output_dir(model, suffix: str) -> str:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
        return f"{Path(str(name).rstrip('/')).name or 'model'}-{suffix}"

    # ---- Trainer overrides --------------------------------------------------------------------------------------

    def _count_loss_items(self, batch: dict) -> torch.Tensor | int | None:
        """What the loss of one micro-batch is averaged over (overridable): loss tokens by default; pairs or
        sequences for sequence-level losses. `None` when the batch carries no loss items."""
        return count_loss_tokens(batch["labels"]) if "labels" in batch else None

    def _get_num_items_in_batch(self, batch_samples, device):
        """Loss items in the whole optimiser step: every accumulated micro-batch, summed over processes."""
        counts = [self._count_loss_items(batch) for batch in batch_samples]
        if not counts or any(c is None for c in counts):
            return None
        count = sum(counts)
        count = torch.as_tensor(count, device=device)
        if self._dp_world_size() > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return count

    def _dp_world_size(self) -> int:
        """Ranks whose loss tokens share one normaliser: all of them, unless `average_tokens_across_devices=False`
        asks for each rank's own token mean (then DDP averages the per-rank means)."""
        return self.accelerator.num_processes if self.args.average_tokens_across_devices else 1

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if isinstance(eval_dataset if eval_dataset is not None else self.eval_dataset, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # calls back once per dataset
        self._metric_prefix = f"{metric_key_prefix}_"  # e.g. "eval_a_" for a dict of eval datasets
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prefix = getattr(self, "_metric_prefix", "eval_")
        mode = "eval" if any(k.startswith(prefix) for k in logs) else "train"
        metrics = self._metrics.pop_means(mode, self.accelerator)
        metrics["num_tokens"] = self._pop_num_tokens(mode)
        prefix = prefix if mode == "eval" else ""
        logs.update({f"{prefix}{k}": v for k, v in metrics.items()})
        if mode == "train" and "loss" in logs:
            guards.check_finite_loss(logs["loss"], self.state.global_step, getattr(self.args, "guards", True))
        super().log(logs, start_time)

    def _record_tokens(self, mode: str, inputs: dict) -> None:
        mask = inputs.get("attention_mask")
        self._num_tokens[mode] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()

    def _pop_num_tokens(self, mode: str) -> float:
        """Cumulative count of input tokens seen in `mode`, over all processes."""
        window = torch.tensor(float(self._num_tokens[mode]), device=self.accelerator.device)
        self._num_tokens[mode] = 0
        if self.accelerator.num_processes > 1:
            window = self.accelerator.reduce(window, reduction="sum")
        self._num_tokens_total[mode] += float(window)
        return self._num_tokens_total[mode]

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.state.global_step < 3:  # the first steps are checked at once; later ones at every log
            guards.check_finite_loss(float(loss), self.state.global_step + 1, getattr(self.args, "guards", True))
        return loss

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            self.create_model_card()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if self.args.should_save and not _internal_call:
            self.create_model_card(output_dir=output_dir)

    def create_model_card(self, output_dir: str | None = None, **_) -> None:
        """Write `README.md` (model card) into `output_dir`: base model, method, framework versions."""
        import transformers

        from .. import __version__

        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        base = getattr(getattr(model, "config", None), "_name_or_path", None) or "a model"
        tags = ", ".join(self._tag_names)
        card = (
            f"---\nlibrary_name: transformers\ntags: [{tags}]\n---\n\n# Model card\n\n"
            f"This model is a fine-tuned version of {base}, trained with {self._name} from the `trl` library.\n\n"
            "## Framework versions\n\n"
            f"- trl: {__version__}\n- transformers: {transformers.__version__}\n- torch: {torch.__version__}\n"
        )
        os.makedirs(output_dir, exist_ok=True)
        Path(output_dir, "README.md").write_text(card)
