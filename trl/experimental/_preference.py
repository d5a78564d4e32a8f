"""What ORPO and CPO share: one model, no reference, preference pairs from `trl.data.preference`, the DPO collator and
one fused-head forward of `[chosen; rejected]` giving each completion's summed and averaged log-probs, plus the NLL of
the chosen completions. Each trainer adds only its config fields and a pure loss (`trl.losses.orpo`, `trl.losses.cpo`).

Reductions (invariant to gradient accumulation and data-parallel size, as `trl.losses.reduce` asks): the pair term is
a mean over every pair of the optimiser step, the NLL a mean over every chosen completion token of the step.

Truncation follows the reference's legacy preference trainers: when prompt + longer completion exceeds `max_length`,
the prompt is first cut to `max_prompt_length` (its start kept with `keep_start`, its end with `keep_end`), then both
completions to `max_length − max_prompt_length`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .. import guards
from ..data.collators import DataCollatorForPreference
from ..data.preference import PreferenceDataOptions, prepare_preference_dataset
from ..losses.reduce import token_weight
from ..models import loading
from ..models.utils import causal_lm
from ..ops.fused_head import completion_logps, router_aux_loss_coef
from ..trainer.base_config import _BaseConfig, resolve_pad_to_multiple_of
from ..trainer.base_trainer import _BaseTrainer, as_config, configure_streaming
from ..trainer.sft_config import TRUNCATION_MODES


@dataclass
class _LegacyPreferenceConfig(_BaseConfig):
    r"""Fields shared by [`ORPOConfig`] and [`CPOConfig`] (the reference's defaults).

    Parameters:
        max_length (`int` or `None`, *optional*, defaults to `1024`): most tokens of prompt + completion.
        max_prompt_length (`int` or `None`, *optional*, defaults to `512`): the prompt is cut to this many tokens when
            prompt + the longer completion exceeds `max_length`.
        max_completion_length (`int`, *optional*): accepted for compatibility (encoder-decoder models only there).
        beta (`float`, *optional*, defaults to `0.1`): see the trainer.
        disable_dropout (`bool`, *optional*, defaults to `True`): disable dropout in the model.
        label_pad_token_id (`int`, *optional*, defaults to `-100`): accepted for compatibility; completion tokens are
            selected by the collator's `completion_mask`.
        padding_value (`int`, *optional*): pad id of `input_ids` (defaults to the tokenizer's pad token).
        truncation_mode (`str`, *optional*, defaults to `"keep_end"`): which end of the prompt is kept.
        generate_during_eval (`bool`, *optional*, defaults to `False`): not supported (use `LogCompletionsCallback`).
        is_encoder_decoder (`bool`, *optional*): only decoder-only models are supported; `True` is an error.
        dataset_num_proc (`int`, *optional*): processes for dataset preparation.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "Initial AdamW learning rate."})
    max_length: int | None = field(default=1024, metadata={"help": "Maximum tokens of prompt + completion."})
    max_prompt_length: int | None = field(default=512, metadata={"help": "Maximum prompt tokens when cutting."})
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Maximum completion tokens (compatibility; encoder-decoder only)."}
    )
    beta: float = field(default=0.1, metadata={"help": "beta (see the trainer)."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the model."})
    label_pad_token_id: int = field(default=-100, metadata={"help": "Label padding value (compatibility)."})
    padding_value: int | None = field(default=None, metadata={"help": "Pad id (default: the tokenizer's)."})
    truncation_mode: str = field(default="keep_end", metadata={"help": "keep_end or keep_start (prompt cut)."})
    generate_during_eval: bool = field(default=False, metadata={"help": "Not supported; use LogCompletionsCallback."})
    is_encoder_decoder: bool | None = field(default=None, metadata={"help": "Only decoder-only models are supported."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})

    # no reference model: the shared reference machinery of `_BaseTrainer` reads these
    sync_ref_model: ClassVar[bool] = False
    precompute_ref_log_probs: ClassVar[bool] = False

    def __post_init__(self):
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"Unknown `truncation_mode` {self.truncation_mode!r}; expected one of {TRUNCATION_MODES}.")
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be a positive integer or None; got {value}.")
        if self.max_length is not None and self.max_prompt_length is not None and \
                self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"`max_prompt_length` ({self.max_prompt_length}) must be smaller than `max_length` ({self.max_length}), "
                "or no completion token would be left. Lower `max_prompt_length` or raise `max_length`."
            )
        if self.is_encoder_decoder:
            raise ValueError("is_encoder_decoder=True: only decoder-only (causal LM) models are supported.")
        if self.generate_during_eval:
            raise ValueError(
                "generate_during_eval=True is not supported; add `trl.LogCompletionsCallback` to log generations."
            )
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        if self.label_pad_token_id != -100:
            warnings.warn("`label_pad_token_id` is ignored: completion tokens come from the collator's "
                          "`completion_mask`.", stacklevel=3)
        if self.max_completion_length is not None:  # as the reference, whose decoder-only path never reads it
            warnings.warn(f"`max_completion_length={self.max_completion_length}` is ignored (the reference reads it "
                          "for encoder-decoder models only): completions are cut to `max_length - max_prompt_length` "
                          "when prompt + completion exceeds `max_length`.", stacklevel=3)
        super().__post_init__()


def truncate_pair(row: dict, max_length: int | None, max_prompt_length: int | None, truncation_mode: str) -> dict:
    """Cut one tokenised pair as the reference's legacy preference trainers do (see the module docstring).

    Example:
        ```python
        >>> truncate_pair({"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5, 6], "rejected_ids": [7]}, 4, 2, "keep_end")
        {'prompt_ids': [2, 3], 'chosen_ids': [4, 5], 'rejected_ids': [7]}
        ```
    """
    prompt, chosen, rejected = row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
    if max_length is None or max_prompt_length is None:
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
    longer = max(len(chosen), len(rejected))
    if len(prompt) + longer > max_length:
        prompt = prompt[:max_prompt_length] if truncation_mode == "keep_start" else prompt[-max_prompt_length:]
    if len(prompt) + longer > max_length:
        keep = max_length - max_prompt_length
        chosen, rejected = chosen[:keep], rejected[:keep]
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


class _ReferenceFreePreferenceTrainer(_BaseTrainer):
    """Base of [`ORPOTrainer`] and [`CPOTrainer`]. Subclasses set `_config_class`, `_name`, `_tag_names` and
    implement `_pair_loss(scores) -> (losses (B,), metrics, nll_weight)`; overridable: `_uses_averages`. See the
    module docstring."""

    _config_class: type = _LegacyPreferenceConfig
    # per-pair values of the loss's metrics logged under another name (ORPO: its log odds), averaged over pairs
    _extra_pair_metrics: dict[str, str] = {}

    def __init__(self, model, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, model_init=None, callbacks=None, optimizers=(None, None),
                 preprocess_logits_for_metrics=None, peft_config=None, compute_metrics=None):
        trainer = type(self).__name__
        args = as_config(args, self._config_class, self._default_output_dir(model, self._name))
        if model_init is not None:
            raise ValueError(f"{trainer} does not support `model_init` (hyper-parameter search); pass `model`.")
        if preprocess_logits_for_metrics is not None:
            warnings.warn(f"{trainer} ignores `preprocess_logits_for_metrics`: no (B, T, V) logits are ever made.",
                          stacklevel=2)
        if train_dataset is None:
            raise ValueError(f"{trainer} needs a `train_dataset` of preference pairs (prompt/chosen/rejected).")
        model_id = model if isinstance(model, str) else None
        model = self._load_model(model, args)
        processing_class = self._load_processing_class(processing_class, model, model_id, args)
        loading.prepare_tokenizer(processing_class, model)
        model = self._setup_policy_and_reference(model, None, model_id, args, peft_config=peft_config,
                                                 need_reference=False)
        self._aux_loss_coef = router_aux_loss_coef(causal_lm(model), args.router_aux_loss_coef)
        # with max_prompt_length a long prompt is cut to fit (`truncate_pair`), never dropped for its length
        cuts_prompts = args.max_prompt_length is not None and args.max_length is not None
        options = PreferenceDataOptions(max_length=None if cuts_prompts else args.max_length,
                                        num_proc=args.dataset_num_proc, guards=guards.policy(args))
        cut = {"max_length": args.max_length, "max_prompt_length": args.max_prompt_length,
               "truncation_mode": args.truncation_mode}

        def prepare(dataset, name):
            dataset = prepare_preference_dataset(dataset, processing_class, options, trainer, name, model)[0]
            return dataset.map(truncate_pair, fn_kwargs=cut)

        train_dataset = prepare(train_dataset, "train")
        eval_dataset = self._prepare_eval_datasets(eval_dataset, prepare)
        if data_collator is None:
            pad = args.padding_value if args.padding_value is not None else processing_class.pad_token_id
            data_collator = DataCollatorForPreference(
                pad_token_id=pad, max_length=args.max_length,
                # after `truncate_pair` every pair fits; without max_prompt_length the collator cuts whole sequences
                truncation_mode="keep_start" if cuts_prompts else args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )
        configure_streaming(args, train_dataset, eval_dataset)
        self._init_metrics()
        self._step_chosen_tokens = None  # chosen completion tokens of the optimiser step (the NLL's normaliser)
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers,
        )

    # ---- Trainer overrides, in lifecycle order -------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids"]

    def _count_loss_items(self, batch: dict) -> int:
        return batch["input_ids"].shape[0] // 2  # the pair term is a mean over pairs

    def _get_num_items_in_batch(self, batch_samples, device):
        """Pairs of the step (the pair term), and on the side the chosen completion tokens (the NLL)."""
        chosen = [b["completion_mask"][: b["completion_mask"].shape[0] // 2, 1:].sum() for b in batch_samples]
        if chosen:
            total = torch.stack(chosen).sum().to(device)
            if self._dp_world_size() > 1:
                total = self.accelerator.reduce(total, reduction="sum")
            self._step_chosen_tokens = total
        return super()._get_num_items_in_batch(batch_samples, device)

    def _scores(self, model, batch: dict) -> dict:
        """One forward of `[chosen; rejected]`: per-completion summed and averaged log-probs, lengths, and the NLL
        numerator / denominator of the chosen completions."""
        scored = completion_logps(model, batch["input_ids"], batch.get("attention_mask"), batch["completion_mask"],
                                  router_aux_loss=self._aux_loss_coef > 0)
        sums, lengths = scored.token_logps.sum(-1), scored.mask.sum(-1)
        averages = sums / lengths.clamp(min=1)
        half = sums.shape[0] // 2
        return {
            "sums": sums.chunk(2), "averages": averages.chunk(2), "lengths": lengths.chunk(2),
            "nll_sum": -sums[:half].sum(), "nll_tokens": lengths[:half].sum(), "outputs": scored.outputs,
            "mask": scored.mask,
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, scores = self._loss(model, inputs, num_items_in_batch)
        return (loss, scores["outputs"]) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the loss, and for `compute_metrics` the `(B, 2)` rewards `[chosen, rejected]` with labels 0."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, scores = self._loss(model, inputs)
        loss = loss.detach()
        self._record_eval_loss(loss, inputs)
        if prediction_loss_only:
            return loss, None, None
        metrics = scores["metrics"]
        logits = torch.stack([metrics["chosen_rewards"], metrics["rejected_rewards"]], dim=1)
        return loss, logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)

    def _loss(self, model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, dict]:
        mode = "train" if model.training else "eval"
        scores = self._scores(model, inputs)
        losses, metrics, nll_weight = self._pair_loss(scores)
        scores["metrics"] = metrics
        if mode == "train" and num_items_in_batch is not None and self._step_chosen_tokens is not None:
            world = self._dp_world_size()
            pair_term = losses.sum() * token_weight(num_items_in_batch, world)
            nll = scores["nll_sum"] * world / self._step_chosen_tokens.clamp(min=1)
        else:
            pair_term = losses.mean()
            nll = scores["nll_sum"] / scores["nll_tokens"].clamp(min=1)
        loss = pair_term + nll_weight * nll if nll_weight else pair_term
        loss = self._with_aux_loss(loss, scores["outputs"].aux_loss, mode)
        self._record(mode, inputs, scores, metrics)
        return loss, scores

    def _record(self, mode: str, inputs: dict, scores: dict, metrics: dict) -> None:
        self._record_tokens(mode, inputs)
        add = self._metrics.add
        outputs = scores["outputs"]
        n_chosen = int(scores["nll_tokens"])
        add(mode, "nll_loss", scores["nll_sum"].detach(), n_chosen)
        add(mode, "entropy", outputs.entropy.sum(), outputs.entropy.numel())
        if getattr(outputs, "mean_logits", None) is not None:
            add(mode, "logits/chosen", outputs.mean_logits[:n_chosen].sum(), n_chosen)
            add(mode, "logits/rejected", outputs.mean_logits[n_chosen:].sum(), outputs.mean_logits.numel() - n_chosen)
        chosen_rewards, rejected_rewards = metrics["chosen_rewards"], metrics["rejected_rewards"]
        b = chosen_rewards.numel()
        add(mode, "rewards/chosen", chosen_rewards.sum(), b)
        add(mode, "rewards/rejected", rejected_rewards.sum(), b)
        add(mode, "rewards/accuracies", (chosen_rewards > rejected_rewards).sum(), b)
        add(mode, "rewards/margins", (chosen_rewards - rejected_rewards).sum(), b)
        chosen, rejected = scores["averages"] if self._uses_averages() else scores["sums"]
        add(mode, "logps/chosen", chosen.detach().sum(), b)
        add(mode, "logps/rejected", rejected.detach().sum(), b)
        for key, values in metrics.items():  # the trainer's own per-pair metrics (ORPO's log odds)
            if key in self._extra_pair_metrics:
                add(mode, self._extra_pair_metrics[key], values.sum(), values.numel())

    def _uses_averages(self) -> bool:
        """Whether the loss compares length-averaged log-probs (logged as `logps/*`) or sums."""
        return True

    def _pair_loss(self, scores: dict):
        raise NotImplementedError  # each trainer's one method
