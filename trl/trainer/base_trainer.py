"""`_BaseTrainer`: what every trainer shares, as helpers. Nothing here is a hook that a trainer must override; the
one overridable method is `_count_loss_items` (what a micro-batch's loss is averaged over).

- a metrics buffer that averages correctly over gradient accumulation and processes (sums and counts, reduced once
  per logging step), merged into `log()`;
- the loss-token count of a whole optimiser step (`num_items_in_batch`, see `trl.losses.reduce`);
- model and processing-class set-up from a string or an object, PEFT wrapping;
- the reference model of preference trainers (explicit, adapters disabled, a precomputed and cached pass with
  the initial policy, or an independent frozen copy; docs/design.md §6);
- a NaN/inf guard on the logged loss; a model card written with every save.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import checkpoints, guards
from ..losses.reduce import count_loss_tokens
from ..models import loading, reference
from ..models.utils import causal_lm, disable_dropout_in_model
from ..ops.fused_head import add_fused_lm_head
from .callbacks import ReportCallback, SyncRefModelCallback


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


def configure_streaming(args, *datasets) -> None:
    """Streamed (`IterableDataset`) data: each process reads its own shard, so accelerate must not dispatch batches
    from rank 0 (which needs equal batch sizes). `max_steps` is required (checked by `transformers.Trainer`)."""
    from datasets import IterableDataset

    if any(isinstance(d, IterableDataset) for d in datasets) and args.accelerator_config is not None:
        args.accelerator_config.dispatch_batches = False


class _MetricsBuffer:
    """Per-mode running sums and counts. `mean()` reduces them over processes, so a metric is the exact average over
    every item seen since the last log, whatever the accumulation steps and ranks (not a mean of means)."""

    def __init__(self):
        self._sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._derived: dict[str, Callable[[dict[str, float]], float]] = {}
        self._extremes = {"train": {}, "eval": {}}  # key -> (running value, "min" | "max")

    def derive(self, key: str, fn: Callable[[dict[str, float]], float]) -> None:
        """Log `key = fn(means)` at every log, from the window's exact means (e.g. a difference of two means); skipped
        when `fn` needs a metric that the window does not have (KeyError)."""
        self._derived[key] = fn

    def add(self, mode: str, key: str, total: float | torch.Tensor, count: float | torch.Tensor = 1.0) -> None:
        # Tensors stay on their device until `pop_means`: no host sync per micro-step on a GPU.
        if isinstance(total, torch.Tensor):
            total = total.detach().to(torch.float64)
        self._sums[mode][key] = self._sums[mode][key] + total
        self._counts[mode][key] = self._counts[mode][key] + count

    def add_extreme(self, mode: str, key: str, value: float | torch.Tensor, op: str) -> None:
        """Track the minimum (`op="min"`) or maximum (`op="max"`) of `value` over the logging window and processes."""
        value = value.detach().to(torch.float64) if isinstance(value, torch.Tensor) else float(value)
        previous = self._extremes[mode].get(key)
        if previous is not None:
            value = (torch.minimum if op == "min" else torch.maximum)(torch.as_tensor(previous[0]), torch.as_tensor(value))
        self._extremes[mode][key] = (value, op)

    def clear(self, mode: str) -> None:
        self._sums[mode].clear()
        self._counts[mode].clear()
        self._extremes[mode].clear()

    def pop_means(self, mode: str, accelerator) -> dict[str, float]:
        extremes = self._pop_extremes(mode, accelerator)
        keys = sorted(self._sums[mode])
        if not keys:
            return extremes
        device = accelerator.device if accelerator is not None else "cpu"

        def column(values):
            return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])

        values = torch.stack([column(self._sums[mode][k] for k in keys), column(self._counts[mode][k] for k in keys)])
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="sum")
        self._sums[mode].clear()
        self._counts[mode].clear()
        means = {k: (s / c if c else float("nan")) for k, s, c in zip(keys, values[0].tolist(), values[1].tolist())}
        for key, fn in self._derived.items():
            with contextlib.suppress(KeyError):
                means[key] = fn(means)
        means.update(extremes)
        return means

    def _pop_extremes(self, mode: str, accelerator) -> dict[str, float]:
        items = sorted(self._extremes[mode].items())
        self._extremes[mode].clear()
        if not items:
            return {}
        device = accelerator.device if accelerator is not None else "cpu"
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for _, (v, _) in items])
        if accelerator is not None and accelerator.num_processes > 1:
            values = accelerator.gather(values[None]).reshape(-1, len(items))  # (processes, keys)
        else:
            values = values[None]
        return {
            key: float(values[:, i].min() if op == "min" else values[:, i].max()) for i, (key, (_, op)) in enumerate(items)
        }


class _BaseTrainer(Trainer):
    """Base of every trainer. See the module docstring for what it holds."""

    _precomputing_reference = False  # True only during the one-off reference pass of `precompute_ref_log_probs`
    _guards_gradient = True  # the zero-gradient guard (online trainers judge generation batches instead)
    _step_watch: guards.StepWatch | None = None  # set by `train()`
    _watch_gradients = False  # set by `train()`
    _earlier_checkpoints: set[str] = frozenset()  # an earlier run's checkpoints in output_dir (set by `train()`)
    _own_save_total_limit: int | None = None  # save_total_limit, while this run rotates its checkpoints itself

    _tag_names: list[str] = ["trl"]
    _name: str = "Trainer"
    # Our losses are already normalised by the token count of the whole optimiser step (trl.losses.reduce).
    loss_is_scaled_for_ga = True

    _prepare_eval_fn: Callable | None = None  # set by `_prepare_eval_datasets`: how a raw eval dataset is prepared

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # pushed models carry the library and method tags (PreTrainedModel and PeftModel have `add_model_tags`)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    def _init_metrics(self) -> None:
        self._metrics = _MetricsBuffer()
        self._num_tokens = {"train": 0, "eval": 0}  # since the last log, this process
        self._num_tokens_total = {"train": 0.0, "eval": 0.0}  # since the start, all processes

    # ---- model set-up helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _load_model(model, args, quantization_config=None, loader=None):
        """Return a model object: `model` itself, or loaded from a hub id / local folder with `model_init_kwargs` by
        `loader` (`loading.create_model_from_path` by default)."""
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
        return (loader or loading.create_model_from_path)(model, **kwargs)

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

    # ---- dataset preparation -------------------------------------------------------------------------------------

    def _prepare_eval_datasets(self, eval_dataset, prepare: Callable | None):
        """Prepare the eval dataset (or each of a dict of them, named `eval[key]` in messages) with
        `prepare(dataset, name) -> prepared`, and keep `prepare` so that `evaluate(eval_dataset=raw)` prepares a
        dataset given only then the same way (cached by fingerprint, see `_prepared_eval`). `prepare=None`
        (e.g. SFT's `skip_prepare_dataset`) leaves every dataset as it is."""
        self._prepare_eval_fn = prepare
        self._prepared_eval_cache = {}  # key of a raw dataset -> its prepared version
        self._prepared_eval_keys = set()  # keys of the prepared datasets (evaluated as they are)
        if eval_dataset is None or prepare is None:
            return eval_dataset
        if isinstance(eval_dataset, dict):
            return {key: self._prepared_eval(ds, f"eval[{key}]") for key, ds in eval_dataset.items()}
        return self._prepared_eval(eval_dataset, "eval")

    def _prepared_eval(self, dataset, name: str):
        """`dataset` prepared for evaluation: itself when this trainer prepared it, else prepared once per
        fingerprint (a `datasets.Dataset`) or per object (a stream)."""
        key = _dataset_key(dataset)
        if key in self._prepared_eval_keys:
            return dataset
        if key not in self._prepared_eval_cache:
            prepared = self._prepare_eval_fn(dataset, name)
            self._prepared_eval_cache[key] = prepared
            self._prepared_eval_keys.add(_dataset_key(prepared))
        return self._prepared_eval_cache[key]

    # ---- reference model helpers (preference trainers) -----------------------------------------------------------

    def _setup_policy_and_reference(self, model, ref_model, model_id: str | None, args, quantization_config=None,
                                    peft_config=None, need_reference: bool = True):
        """Wrap the policy with `peft_config`, give it the fused LM head, disable dropout, and pick the reference.

        The reference, in this order: `ref_model` when given (frozen); with PEFT, the policy with its adapters
        disabled; with `args.precompute_ref_log_probs`, the initial policy, used once before training; otherwise an
        independent frozen copy (loaded again from `model_id` when the policy was given as a string). Sets
        `self.ref_model` (None for the adapter-disabled and precompute cases) and `self._use_adapters_as_ref`.
        Reads `args.disable_dropout`, `args.sync_ref_model` and `args.precompute_ref_log_probs` (absent = False).
        `need_reference=False` (GRPO with `beta=0`) keeps no reference at all.

        Returns:
            The policy (a `PeftModel` when `peft_config` is given).

        Raises:
            `ValueError`: `ref_model` is the policy object itself; `sync_ref_model` with a PEFT reference.
        """
        if ref_model is not None and ref_model is model:
            raise ValueError(
                "`ref_model` is the policy object itself, so the reference would move with every update. Pass a "
                "separate copy, or leave `ref_model=None` to let the trainer make one."
            )
        peft_input = loading.is_peft_model(model)
        if peft_config is not None:
            model = loading.wrap_peft(model, peft_config)
        use_adapters_as_ref = need_reference and ref_model is None and loading.is_peft_model(model)
        # A PeftModel given as input carries a trained adapter (e.g. after SFT): the reference is that adapter as it
        # is now, kept as a frozen copy named "ref" in the same model (no second model); a fresh adapter (peft_config)
        # starts at zero, so there the reference is the model with its adapters disabled.
        keep_adapter = need_reference and peft_input and ref_model is None
        self._ref_adapter = reference.add_reference_adapter(model) if keep_adapter else None
        if args.sync_ref_model and use_adapters_as_ref:
            raise ValueError("`sync_ref_model=True` needs a separate reference model; it does not work with PEFT.")
        add_fused_lm_head(causal_lm(model))
        if args.disable_dropout:
            disable_dropout_in_model(model)

        precompute = getattr(args, "precompute_ref_log_probs", False)
        if ref_model is None and not use_adapters_as_ref and not precompute and need_reference:
            if model_id is not None:
                ref_model = self._load_model(model_id, args, quantization_config)
            else:
                ref_model = reference.independent_copy(causal_lm(model))
        if ref_model is not None:
            reference.freeze(ref_model)
            add_fused_lm_head(ref_model)
            if args.disable_dropout:
                disable_dropout_in_model(ref_model)
        self.ref_model = ref_model
        self._use_adapters_as_ref = use_adapters_as_ref
        return model

    def _finish_reference_setup(self, score: Callable, columns: tuple[str, ...], **cache_key_parts) -> None:
        """After `Trainer.__init__`: prepare the reference model for the accelerator, add the TR-DPO sync callback, and
        with `precompute_ref_log_probs` add the reference columns to the train and eval datasets (see
        [`_with_ref_logps`]), after which no reference model is kept."""
        if self.ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
        if self.args.sync_ref_model:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        if not getattr(self.args, "precompute_ref_log_probs", False):
            return

        def add(dataset, name):
            return self._with_ref_logps(dataset, name, score, columns, **cache_key_parts)

        self._add_ref_columns = add  # for an eval dataset given only to `evaluate()`

        self.train_dataset = add(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: add(v, f"eval[{k}]") for k, v in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = add(self.eval_dataset, "eval")
        # an explicit reference is dropped here; without one the initial policy is the reference until training starts
        self._ref_dropped = self.ref_model is not None
        self.ref_model = None  # not needed any more: every row carries its reference log-probs

    @contextlib.contextmanager
    def _reference(self):
        """The model that scores the reference, with gradients off: `ref_model`, the policy with its adapters
        disabled, or (precompute, before training) the initial policy."""
        with torch.no_grad():
            if self.ref_model is not None:
                yield self.ref_model
            elif self._ref_adapter is not None:
                with reference.use_adapter(self.accelerator.unwrap_model(self.model), self._ref_adapter):
                    yield self.model
            elif self._use_adapters_as_ref:
                with self.accelerator.unwrap_model(self.model).disable_adapter():
                    yield self.model
            elif self._precomputing_reference:
                yield self.model  # before training, the initial policy is the reference
            else:
                raise ValueError(
                    "This batch has no precomputed reference log-probs and no reference model is kept "
                    "(precompute_ref_log_probs=True): the policy would be compared with itself. Every dataset must "
                    "carry all the reference columns, or turn precompute off."
                )

    def _with_ref_logps(self, dataset, name: str, score: Callable, columns: tuple[str, ...], **cache_key_parts):
        """Add per-row reference columns to `dataset`, from the on-disk cache or one pass over it in order.

        Args:
            dataset (`datasets.Dataset`): the prepared dataset (collated by `self.data_collator`).
            name (`str`): its name, for messages.
            score (`Callable`): `score(ref_model, batch) -> dict[column, (B,) tensor]`.
            columns (`tuple[str, ...]`): the columns `score` returns; a dataset that has all of them is returned
                as it is (values given by the user), one that has only some is an error.
            **cache_key_parts: whatever else the values depend on (truncation, loss options).

        The cache key hashes the reference's weights (adapters excluded), the dataset's fingerprint, the columns,
        `max_length`, the precision and `cache_key_parts`.
        """
        from datasets import Dataset
        from torch.utils.data import DataLoader

        present = [c for c in columns if c in (dataset.column_names or [])]
        if len(present) == len(columns):
            return dataset  # values given by the user
        if present:
            raise ValueError(
                f"The {name} dataset has the reference column(s) {present} but not {sorted(set(columns) - set(present))}; "
                "give all of them, or none (they are then computed)."
            )
        if not isinstance(dataset, Dataset):
            raise ValueError(
                f"`precompute_ref_log_probs=True` needs a `datasets.Dataset` (random access and a fingerprint); the "
                f"{name} dataset is of type {type(dataset).__name__} (a streamed dataset cannot be precomputed). Set "
                "`precompute_ref_log_probs=False` for streamed data, or load the dataset without `streaming=True`."
            )
        source = self.ref_model if self.ref_model is not None else self.model
        key = reference.cache_key(
            model=reference.model_fingerprint(
                self.accelerator.unwrap_model(source), exclude_adapters=self._ref_adapter is None
            ),
            dataset=dataset._fingerprint, columns=list(columns), max_length=self.args.max_length,
            precision=[self.accelerator.mixed_precision, str(next(source.parameters()).dtype)], **cache_key_parts,
        )
        cached = reference.load_cached(key)
        if cached is None:
            batch_size = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
            loader = self.accelerator.prepare(
                DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
            )
            values = {column: [] for column in columns}
            was_training = self.model.training
            self.model.eval()
            self._precomputing_reference = True
            try:
                for batch in loader:
                    # same precision as training: there, autocast comes from accelerate's wrapper of the model
                    with self._reference() as ref, self.accelerator.autocast(), self.compute_loss_context_manager():
                        scores = score(ref, batch)
                    for column in columns:
                        values[column].append(self.accelerator.gather_for_metrics(scores[column]).float().cpu())
            finally:
                self._precomputing_reference = False
                self.model.train(was_training)
            cached = {column: torch.cat(v) for column, v in values.items()}
            if self.accelerator.is_main_process:
                path = reference.save_cached(key, cached)
                print(f"Reference log-probs of the {name} dataset computed and cached in {path}")
        else:
            print(f"Reference log-probs of the {name} dataset loaded from the cache (key {key}).")
        for column in columns:
            dataset = dataset.add_column(column, cached[column].tolist())
        return dataset

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
        # a raw dataset given only now (a string is the name of one of the eval datasets given at construction)
        if eval_dataset is not None and not isinstance(eval_dataset, str) and self._prepare_eval_fn is not None:
            if isinstance(eval_dataset, dict):
                eval_dataset = {k: self._eval_ready(v, f"eval[{k}]") for k, v in eval_dataset.items()}
            else:
                eval_dataset = self._eval_ready(eval_dataset, "eval")
        if isinstance(eval_dataset if eval_dataset is not None else self.eval_dataset, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # calls back once per dataset
        self._metric_prefix = f"{metric_key_prefix}_"  # e.g. "eval_a_" for a dict of eval datasets
        self._reset_eval_metrics()  # each evaluation reports its own numbers
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def _eval_ready(self, dataset, name: str):
        """A dataset given to `evaluate()`, prepared as the constructor would, with its reference columns when they
        are precomputed (possible before training only: afterwards the initial policy is gone)."""
        dataset = self._prepared_eval(dataset, name)
        add_ref = getattr(self, "_add_ref_columns", None)
        if add_ref is not None:
            key = ("ref", _dataset_key(dataset))
            if key not in self._prepared_eval_cache:
                adapters = self._ref_adapter is not None or self._use_adapters_as_ref
                if not adapters and (self.state.global_step > 0 or self._ref_dropped):
                    raise ValueError(
                        f"The {name} dataset given to `evaluate()` has no reference log-probs, and with "
                        "`precompute_ref_log_probs=True` the reference model is no longer kept (it was dropped "
                        "after the constructor's pass, or the initial policy has been trained). Pass it as `eval_dataset` at construction, or turn precompute off."
                    )
                self._prepared_eval_cache[key] = add_ref(dataset, name)
                self._prepared_eval_keys.add(_dataset_key(self._prepared_eval_cache[key]))
            dataset = self._prepared_eval_cache[key]
        return dataset

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        try:
            return super().predict(test_dataset, ignore_keys, metric_key_prefix)
        finally:  # predict() does not log: its metrics must not leak into the next evaluate()
            self._reset_eval_metrics()

    def _reset_eval_metrics(self) -> None:
        self._metrics.clear("eval")
        self._num_tokens["eval"] = 0
        self._num_tokens_total["eval"] = 0.0

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        self._record_eval_loss(loss, inputs)
        return loss, logits, labels

    def _record_eval_loss(self, loss: torch.Tensor | None, inputs: dict) -> None:
        """Keep the batch's loss weighted by its loss items: the logged eval loss is then the exact mean over every
        item of the evaluation, not a mean of batch means (which depends on the batch size and the world size)."""
        count = self._count_loss_items(inputs) if loss is not None else None
        if count:
            self._metrics.add("eval", "loss", loss.detach().to(torch.float64) * count, count)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prefix = getattr(self, "_metric_prefix", "eval_")
        mode = "eval" if any(k.startswith(prefix) for k in logs) else "train"
        metrics = self._metrics.pop_means(mode, self.accelerator)
        metrics["num_tokens"] = self._pop_num_tokens(mode)
        prefix = prefix if mode == "eval" else ""
        logs.update({f"{prefix}{k}": v for k, v in metrics.items()})
        if mode == "train" and "loss" in logs:
            guards.check_finite_loss(logs["loss"], self.state.global_step, guards.policy(self.args))
            if self._step_watch is not None:
                self._step_watch.check(guards.policy(self.args))
        super().log(logs, start_time)

    def _with_aux_loss(self, loss: torch.Tensor, aux_loss: torch.Tensor | None, mode: str,
                       steps: int | None = None) -> torch.Tensor:
        """Add a mixture of experts' load-balancing loss (`router_aux_loss_coef` times the model's per-micro-batch
        mean, averaged over the `steps` micro-batches of the step: the accumulation steps in training by default)
        and log it as `aux_loss`. No-op when the model returned none."""
        if aux_loss is None:
            return loss
        if steps is None:
            steps = self.current_gradient_accumulation_steps if mode == "train" else 1
        self._metrics.add(mode, "aux_loss", aux_loss.detach())
        return loss + self._aux_loss_coef * aux_loss / steps

    def _record_tokens(self, mode: str, inputs: dict) -> None:
        """Add the batch's real tokens to `num_tokens`: padding is never counted. Padded batches say which tokens are
        real in `attention_mask`; packed and padding-free batches have none, and say it in `token_counts` (SFT's
        collator) or `sequence_index` (-1 on padding, the preference collators). Only a batch with none of these (a
        custom collator) is counted whole."""
        if inputs.get("attention_mask") is not None:
            count = inputs["attention_mask"].sum()
        elif inputs.get("token_counts") is not None:
            count = inputs["token_counts"].sum()
        elif inputs.get("sequence_index") is not None:
            count = (inputs["sequence_index"] >= 0).sum()
        else:
            count = inputs["input_ids"].numel()
        self._num_tokens[mode] = self._num_tokens[mode] + count

    def _pop_num_tokens(self, mode: str) -> float:
        """Input tokens seen, over all processes: cumulative over the run in training (continued from the last logged
        value when a run resumes from a checkpoint), per evaluation in eval."""
        if mode == "train" and not self._num_tokens_total["train"]:
            logged = [log["num_tokens"] for log in self.state.log_history if "num_tokens" in log and "loss" in log]
            self._num_tokens_total["train"] = float(logged[-1]) if logged else 0.0
        window = torch.as_tensor(self._num_tokens[mode], dtype=torch.float64, device=self.accelerator.device)
        self._num_tokens[mode] = 0
        if self.accelerator.num_processes > 1:
            window = self.accelerator.reduce(window, reduction="sum")
        self._num_tokens_total[mode] += float(window)
        return self._num_tokens_total[mode]

    def compute_loss_context_manager(self):
        stack = super().compute_loss_context_manager()
        if getattr(self.args, "activation_offloading", False) and self.model.training:
            # tensors saved for backward live in (pinned) host memory until the backward pass needs them; the output
            # head's, small ones and weights stay (`trl.models.helpers.get_act_offloading_ctx_manager`)
            if getattr(self, "_activation_offload", None) is None:
                from ..models.helpers import get_act_offloading_ctx_manager

                self._activation_offload = get_act_offloading_ctx_manager(
                    self.accelerator.unwrap_model(self.model), warn_if_no_head=False
                )
            stack.enter_context(self._activation_offload)
        return stack

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.state.global_step < 3:  # the first steps are checked at once; later ones at every log
            guards.check_finite_loss(float(loss), self.state.global_step + 1, guards.policy(self.args))
        if self._step_watch is not None:  # None outside `train()` (a hand-written loop)
            self._step_watch.record_loss(loss)
        if (self._watch_gradients and not _TRAINER_REPORTS_GRAD_NORM
                and self.accelerator.gradient_state.sync_gradients):
            self._record_gradient(_gradient_abs_sum(model, self.accelerator))
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # transformers>=5 computes the gradient norm of every optimiser step here: the zero-gradient guard reads it
        # (a norm is zero exactly when every gradient is), at no extra cost and with no host sync
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self._watch_gradients and grad_norm is not None:
            self._record_gradient(grad_norm)
        return grad_norm

    def _record_gradient(self, norm) -> None:
        if hasattr(norm, "full_tensor"):  # FSDP2 returns the norm as a DTensor; the flags stay plain tensors
            norm = norm.full_tensor()
        self._step_watch.record_gradient(norm, self.state.global_step + 1, guards.policy(self.args))

    def _start_step_watch(self) -> None:
        """At the start of `train()`: NaN/inf losses and zero-gradient streaks are watched at every optimiser step
        (3 zero-gradient steps in a row with a non-zero loss stop the run; with a zero loss they are warned about).
        Online trainers judge their generation batches instead
        (`_check_rollout_guards`: a generation batch whose groups all share one reward gives a zero gradient for
        several steps and the run still learns), and optimisers that step inside the backward pass (layer-wise,
        LoMo) or DeepSpeed leave no gradient to read."""
        optim = _optim_name(self.args)
        self._step_watch = guards.StepWatch(patience=3)
        self._watch_gradients = self._guards_gradient and not (
            self.is_deepspeed_enabled or "layerwise" in optim or optim in ("lomo", "adalomo")
        )

    def _save_checkpoint(self, model, trial):
        if self._earlier_checkpoints:  # about to be overwritten: this run's now
            self._earlier_checkpoints.discard(f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        with _weights_in_model_format(self.accelerator.unwrap_model(self.model, keep_torch_compile=False)):
            super()._save_checkpoint(model, trial)
        if self.args.should_save:
            if self._own_save_total_limit:
                _rotate_checkpoints(self._get_output_dir(trial), self._own_save_total_limit, self._earlier_checkpoints,
                                    self.state.best_model_checkpoint)
            self.create_model_card()

    _SYNCED_REF_FILE = "synced_ref_model.pt"

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        # With TR-DPO syncing the reference is no longer the initial model: a resumed run needs its current weights.
        if getattr(self.args, "sync_ref_model", False) and getattr(self, "ref_model", None) is not None:
            if self.args.should_save:
                state = {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(self.ref_model).state_dict().items()}
                torch.save(state, os.path.join(output_dir, self._SYNCED_REF_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)  # called on resume by every backend, before training
        path = os.path.join(checkpoint, self._SYNCED_REF_FILE) if checkpoint else None
        if path and os.path.exists(path) and getattr(self, "ref_model", None) is not None:
            state = checkpoints.safe_load(path, checkpoint)
            self.accelerator.unwrap_model(self.ref_model).load_state_dict(state)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        checkpoint = _checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None:  # every file that resuming reads, before anything is restored
            checkpoints.verify_checkpoint(checkpoint, allow=checkpoints.RECORD_TYPES)
        self._earlier_checkpoints = set() if resume_from_checkpoint else self._checkpoints_of_an_earlier_run()
        limit = self.args.save_total_limit
        if self._earlier_checkpoints and limit:
            # transformers' rotation (after each save, and "limit 1 keeps only the best" at the end) would count, and
            # delete, the earlier run's checkpoints: this run rotates its own (`_save_checkpoint`)
            self._own_save_total_limit, self.args.save_total_limit = limit, None
        # transformers aligns the model's special ids with the tokenizer at the start of train(); keep pad == eos out
        # of the model and generation configs (see `loading.restore_pad_ids`), in checkpoints and after training
        self._pad_ids = loading.pad_ids(self.model)
        guards.check_generation_config_pad(self.model)
        if getattr(self.args, "run_report", False) or any(
                isinstance(c, ReportCallback) for c in self.callback_handler.callbacks):
            ReportCallback.attach(self)  # the run report (output_dir/report/) and the end-of-run summary
        self._start_step_watch()
        self._check_optimizer_memory()
        try:
            result = super().train(resume_from_checkpoint, *args, **kwargs)
            best = self.state.best_model_checkpoint
            if self._own_save_total_limit == 1 and best and self.args.should_save:  # transformers' end-of-run rule
                _rotate_checkpoints(self.args.output_dir, 0, self._earlier_checkpoints, best, keep_latest=False)
            return result
        finally:
            loading.restore_pad_ids(self.model, self._pad_ids)
            if self._own_save_total_limit:
                self.args.save_total_limit, self._own_save_total_limit = self._own_save_total_limit, None

    def _checkpoints_of_an_earlier_run(self) -> set[str]:
        """The `checkpoint-*` folders already in `output_dir` when a run starts without resuming: warned about, and
        left out of this run's `save_total_limit` rotation."""
        folders = _checkpoint_folders(self.args.output_dir)
        if folders and self.args.should_save:
            import warnings

            names = sorted(folders, key=_checkpoint_step)
            listed = ", ".join(names[-5:]) + (", ..." if len(names) > 5 else "")
            warnings.warn(
                f"{self.args.output_dir} already holds {len(names)} checkpoint(s) of an earlier run ({listed}) and "
                "this run does not resume from them. They are kept and not counted by `save_total_limit`, but a "
                "checkpoint of this run with the same step number replaces one of them, and "
                f"`resume_from_checkpoint=True` later picks the highest step number ({names[-1]} or a later one of "
                "this run). Use a new `output_dir`, delete them, or pass `resume_from_checkpoint=True` to continue "
                "that run.",
                stacklevel=3,
            )
        return folders

    def _check_optimizer_memory(self) -> None:
        """Pre-flight for one unsharded process with AdamW: do the gradients and optimiser states of the trainable
        parameters fit on each CUDA device that holds some of them (a model may be split over several)?"""
        if (self.accelerator.num_processes > 1 or self.is_deepspeed_enabled or self.is_fsdp_enabled
                or _optim_name(self.args) not in ("adamw_torch", "adamw_torch_fused") or self.optimizer is not None
                or getattr(self, "optimizer_cls_and_kwargs", None) is not None):
            return
        by_device: dict = defaultdict(list)
        for p in self.model.parameters():
            if p.requires_grad and p.device.type in _PREFLIGHT_DEVICE_TYPES:
                by_device[p.device].append(p)
        for device, params in by_device.items():
            guards.check_optimizer_memory(
                sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params), 2,
                _cuda_free_bytes(device), guards.policy(self.args),
            )

    def _save(self, output_dir: str | None = None, state_dict=None):
        if hasattr(self, "_pad_ids"):
            loading.restore_pad_ids(self.model, self._pad_ids)
        super()._save(output_dir, state_dict)

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


def _dataset_key(dataset):
    """What identifies a dataset for the eval-preparation cache: its fingerprint, or the object for a stream."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    return ("fingerprint", fingerprint) if fingerprint is not None else ("object", id(dataset))


def _checkpoint_to_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder `train(resume_from_checkpoint=...)` will read (True: the last one in `output_dir`)."""
    if isinstance(resume_from_checkpoint, (str, os.PathLike)):
        return os.fspath(resume_from_checkpoint)
    if resume_from_checkpoint is True and os.path.isdir(output_dir):
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(output_dir)
    return None


def _checkpoint_folders(folder: str) -> set[str]:
    if not os.path.isdir(folder):
        return set()
    return {name for name in os.listdir(folder)
            if _checkpoint_step(name) is not None and os.path.isdir(os.path.join(folder, name))}


def _checkpoint_step(name: str) -> int | None:
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    step = name[len(prefix):] if name.startswith(prefix) else ""
    return int(step) if step.isdigit() else None


@contextlib.contextmanager
def _weights_in_model_format(model):
    """While a checkpoint is written, save a transformers model's weights under the model's own parameter names.

    `save_pretrained` converts them back to the original checkpoint layout by default (transformers>=5: renamed
    vision-language modules, MoE experts split back into one tensor per expert), and the Trainer's resume reads a
    checkpoint with a plain `load_state_dict`, which then misses those weights and only warns: the resumed run would
    go on from the initial ones. In the model's own names the resume loads every weight, and `from_pretrained` still
    reads the checkpoint. The final `save_model` keeps the original layout. PEFT models save adapters only (their own
    `save_pretrained`), which load as they are.
    """
    from transformers import PreTrainedModel

    save = getattr(model, "save_pretrained", None)
    if not isinstance(model, PreTrainedModel) or "save_original_format" not in inspect.signature(save).parameters:
        yield
        return
    model.save_pretrained = functools.partial(save, save_original_format=False)
    try:
        yield
    finally:
        del model.save_pretrained  # the class's method again


def _rotate_checkpoints(folder: str, limit: int, earlier: set[str], best: str | None, keep_latest: bool = True):
    """Keep this run's `limit` newest checkpoints, its best one and (`keep_latest`) its latest one; never touch the
    folders in `earlier`."""
    import shutil

    own = sorted(_checkpoint_folders(folder) - earlier, key=_checkpoint_step)
    protected = {own[-1]} if own and keep_latest else set()
    if best:
        protected.add(os.path.basename(os.path.normpath(best)))
    removable = [name for name in own if name not in protected]
    for name in removable[: max(0, len(own) - max(limit, len(protected)))]:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _optim_name(args) -> str:
    """`args.optim` as its string value ("adamw_torch_fused"), whether it is an `OptimizerNames` or a string."""
    optim = getattr(args, "optim", "")
    return str(getattr(optim, "value", optim))


# devices whose memory the pre-flight check reads (parameters elsewhere, e.g. offloaded to the CPU, are not counted)
_PREFLIGHT_DEVICE_TYPES = ("cuda",)


def _cuda_free_bytes(device: torch.device) -> int:
    """Memory still available to PyTorch on a CUDA device: free memory plus what its caching allocator holds unused."""
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + cached


# transformers>=5 computes the gradient norm of every optimiser step in `Trainer._get_grad_norm`; older versions only
# when clipping, so there the zero-gradient guard sums the gradients itself
_TRAINER_REPORTS_GRAD_NORM = hasattr(Trainer, "_get_grad_norm")


def _gradient_abs_sum(model, accelerator) -> torch.Tensor:
    """Sum of the absolute gradients of the trainable parameters, over every rank (FSDP shards them)."""
    grads = [_local(p.grad).detach() for p in model.parameters() if p.requires_grad and p.grad is not None]
    total = torch.stack([g.abs().sum(dtype=torch.float32) for g in grads]).sum() if grads else torch.zeros(())
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total.to(accelerator.device), reduction="sum")
    return total


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2, tensor parallelism); any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
