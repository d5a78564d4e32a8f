"""Reward modelling: train a sequence classifier with one output to score text, from preference pairs.

Method: the Bradley-Terry pairwise loss of InstructGPT (https://huggingface.co/papers/2203.02155, eq. 1),
−log σ(r_chosen − r_rejected − margin), with the optional margin of Llama 2 (https://huggingface.co/papers/2307.09288,
eq. 2) and the optional reward-centring term of https://huggingface.co/papers/2312.09244 (`trl.losses.reward`).
Deviations from the reference implementation:
- the loss is a mean over the pairs of the whole optimiser step (all accumulation steps and ranks), so gradient
  accumulation does not change the gradient (`trl.losses.reduce`);
- chosen and rejected sequences go through the model in one forward of `2B` rows;
- `min_reward`/`max_reward` are per-micro-batch extremes averaged over the logging window (see `compute_loss`);
- the data path is the one DPO uses (`trl.data.preference`).

Tokens as the reference: each side is the full rendering of prompt + completion (template text after the
end-of-turn token, ChatML's "\\n", included), so the reward is read at that rendering's final token; GRPO scores a
reward model on the same ids (`rewards.scoring.reward_input_ids`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .. import guards
from ..data.collators import RewardDataCollatorForPreference as DataCollatorForPreference
from ..data.formats import check_dataset
from ..data.preference import PreferenceDataOptions, prepare_preference_dataset
from ..losses.reduce import token_weight
from ..losses.reward import bradley_terry_loss
from ..models import loading
from ..models.utils import causal_lm, disable_dropout_in_model
from ..ops.shared_prompt import share_pair_prefixes, sharing_enabled
from .base_trainer import _BaseTrainer, as_config, configure_streaming
from .reward_config import RewardConfig

__all__ = ["DataCollatorForPreference", "RewardTrainer"]

# Pre-tokenised columns of older TRL versions -> the names used here.
LEGACY_COLUMNS = {"chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"}

_MODEL_CARD_USAGE = """
## Quick start

This is a reward model: it maps a text (or a conversation rendered with its chat template) to one scalar score, higher
for preferred answers.

```python
from transformers import pipeline

reward_model = pipeline("text-classification", model="{model}")
conversation = [{{"role": "user", "content": "2+2="}}, {{"role": "assistant", "content": "4"}}]
text = reward_model.tokenizer.apply_chat_template(conversation, tokenize=False)
print(reward_model(text, function_to_apply="none")[0]["score"])
```

## Training procedure

Trained on preference pairs with the Bradley-Terry loss −log σ(r_chosen − r_rejected − margin)
([InstructGPT](https://huggingface.co/papers/2203.02155)).
"""


class RewardTrainer(_BaseTrainer):
    """Trainer for outcome reward models (a sequence classifier with one output) on preference pairs.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`):
            A hub id or local folder, loaded with `AutoModelForSequenceClassification` and `num_labels=1` (plus
            `args.model_init_kwargs`, float32 by default); starting from a causal LM adds a fresh `score` head. Or a
            sequence-classification model object with `config.num_labels == 1`.
        args (`RewardConfig` or `TrainingArguments`, *optional*):
            Configuration; a `TrainingArguments` is converted. Defaults to `RewardConfig(output_dir="<model>-Reward")`.
        data_collator (*optional*):
            Defaults to `DataCollatorForPreference` (`2B` rows: the chosen sequences, then the rejected ones).
        train_dataset (`Dataset` or `IterableDataset`):
            Preference pairs: `chosen`/`rejected` with an implicit prompt (recommended) or `prompt`/`chosen`/`rejected`
            (the prompt is prepended to each side), standard or conversational; or pre-tokenised `chosen_ids`/
            `rejected_ids` (full sequences, optionally with `prompt_ids` prepended). An optional `margin` column asks
            for a reward gap per pair. Pairs longer than `args.max_length` on either side are filtered out.
        eval_dataset (*optional*): same formats; a dict of datasets is evaluated one by one.
        processing_class (`PreTrainedTokenizerBase`, *optional*): the tokenizer; loaded from `model` when omitted.
        compute_metrics (`Callable[[EvalPrediction], dict]`, *optional*):
            Receives `predictions` of shape `(N, 2)` (the chosen and rejected rewards of each pair) and `label_ids` of
            zeros (the chosen side, column 0, is the preferred one).
        callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics: as in `transformers.Trainer`.
        quantization_config (`BitsAndBytesConfig`, *optional*): used when `model` is a string.
        peft_config (`peft.PeftConfig`, *optional*):
            Wrap the model with a fresh adapter. Use `task_type="SEQ_CLS"` (or `modules_to_save=["score"]`) so that the
            new `score` head is trained; a warning says so otherwise.

    Example:
        ```python
        >>> from trl import RewardConfig, RewardTrainer
        >>> from trl.data.tiny import tiny_task_dataset
        >>> trainer = RewardTrainer(
        ...     model="path/to/sft-model",
        ...     args=RewardConfig(output_dir="sft-model-Reward", max_length=512),
        ...     train_dataset=tiny_task_dataset("preference"),
        ... )
        >>> trainer.train()
        ```
    """

    _tag_names = ["trl", "reward-trainer"]
    _name = "Reward"

    def __init__(
        self,
        model,
        args: RewardConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
    ):
        args = as_config(args, RewardConfig, self._default_output_dir(model, "Reward"))
        if train_dataset is None:
            raise ValueError("RewardTrainer needs a `train_dataset` of preference pairs.")
        model_id = model if isinstance(model, str) else None
        model = self._load_model(model, args, quantization_config, loader=loading.create_reward_model_from_path)
        _check_single_output(model)
        processing_class = self._load_processing_class(processing_class, model, model_id, args)
        if args.chat_template_path is not None:
            model, processing_class, added_tokens = loading.apply_chat_template_path(
                model, processing_class, args.chat_template_path
            )
            if peft_config is not None:
                # a reward model has a score head, no LM head to add
                loading.train_new_tokens(peft_config, added_tokens, tied_embeddings=True)
        if args.pad_token is not None:
            processing_class.pad_token = args.pad_token
        loading.prepare_tokenizer(processing_class, model, args.eos_token)
        # The classifier reads the reward at the last token that is not padding, which it finds by the pad id.
        model.config.pad_token_id = processing_class.pad_token_id
        model.config.get_text_config().pad_token_id = processing_class.pad_token_id
        if peft_config is not None:
            model = loading.wrap_peft(model, peft_config)
            _warn_if_score_frozen(model)
        if args.disable_dropout:
            disable_dropout_in_model(model)
        head = getattr(causal_lm(model), "score", None)
        self._share_prompts = sharing_enabled(
            causal_lm(model), args.share_prompt_forward,
            None if isinstance(head, torch.nn.Module) else "it has no `score` head (the layout reads it per position)",
        )

        train_dataset = self._prepare(train_dataset, processing_class, args, "train", model)
        eval_dataset = self._prepare_eval_datasets(
            eval_dataset, lambda dataset, name: self._prepare(dataset, processing_class, args, name, model)
        )
        if data_collator is None:  # no truncation: pairs longer than max_length were filtered out
            data_collator = DataCollatorForPreference(
                pad_token_id=processing_class.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of
            )

        configure_streaming(args, train_dataset, eval_dataset)
        self._init_metrics()
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )

    @staticmethod
    def _prepare(dataset, tokenizer, args: RewardConfig, name: str, model=None):
        """Token ids of every pair (`prompt_ids`, `chosen_ids`, `rejected_ids`, optional `margin`), too-long pairs
        dropped."""
        check_dataset(dataset, "RewardTrainer", name, model, tokenizer)  # before the legacy columns are read
        dataset = _rename_legacy_columns(dataset, name)
        # max_length=None: the preference path would reject prompts of max_length tokens; here whole pairs are
        # filtered by their full length instead.
        options = PreferenceDataOptions(
            max_length=None, num_proc=args.dataset_num_proc, guards=guards.policy(args)
        )
        dataset, _ = prepare_preference_dataset(dataset, tokenizer, options, "RewardTrainer", name, model)
        return filter_long_pairs(dataset, args.max_length, name)

    # ---- Trainer overrides, in lifecycle order -------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "margin"]

    def _count_loss_items(self, batch: dict) -> int:
        return batch["input_ids"].shape[0] // 2  # the loss is a mean over pairs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Score the `2B` sequences in one forward, then the Bradley-Terry loss averaged over the pairs of the step.

        Metrics (each an exact sum and count, so the logged value is the mean over every pair, micro-batch and process
        since the last log): `accuracy` (fraction of pairs with `r_chosen > r_rejected`), `margin` (mean
        `r_chosen − r_rejected`), `mean_reward` (over both sides), `num_tokens`. `min_reward` and `max_reward` are the
        extremes of each micro-batch (on each process), averaged over the micro-batches of the logging window: a
        smoothed range, not the window's single smallest/largest reward.
        """
        mode = "train" if model.training else "eval"
        rewards = self._shared_rewards(model, inputs) if self._share_prompts else None
        if rewards is None:  # one padded row per sequence
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            rewards = outputs.logits.squeeze(-1)  # (2B,)
        chosen_rewards, rejected_rewards = rewards.chunk(2)
        losses, metrics = bradley_terry_loss(
            chosen_rewards, rejected_rewards, inputs.get("margin"), self.args.center_rewards_coefficient
        )
        if mode == "train" and num_items_in_batch is not None:
            loss = losses.sum() * token_weight(num_items_in_batch, self._dp_world_size())
        else:  # evaluation: the mean over this batch's pairs
            loss = losses.mean()

        self._record_tokens(mode, inputs)
        pairs = chosen_rewards.shape[0]
        self._metrics.add(mode, "accuracy", metrics["accuracy"] * pairs, pairs)
        self._metrics.add(mode, "margin", metrics["margin"] * pairs, pairs)
        self._metrics.add(mode, "mean_reward", metrics["mean_reward"] * 2 * pairs, 2 * pairs)
        self._metrics.add(mode, "min_reward", metrics["min_reward"])
        self._metrics.add(mode, "max_reward", metrics["max_reward"])
        if return_outputs:
            return loss, {"rewards_chosen": chosen_rewards, "rewards_rejected": rejected_rewards}
        return loss

    def _shared_rewards(self, model, inputs) -> torch.Tensor | None:
        """`(2B,)` rewards from one row per pair, the common prefix run once (`trl/ops/shared_prompt.py`), or None
        where the layout does not apply. The score head runs inside the model's forward (a DDP/FSDP wrapper sees it
        used); a hook reads its per-position output at each sequence's last token."""
        shared = share_pair_prefixes(inputs["input_ids"], inputs["attention_mask"])
        if shared is None:
            return None
        lm = causal_lm(self.accelerator.unwrap_model(model))
        captured = []
        handle = lm.score.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            model(input_ids=shared.input_ids, attention_mask=shared.mask_for(lm.config._attn_implementation, lm.dtype),
                  position_ids=shared.position_ids, use_cache=False)
        finally:
            handle.remove()
        scores = captured[-1] if captured else None
        if scores is None or tuple(scores.shape[:2]) != tuple(shared.input_ids.shape):
            # a head applied to pooled states, not per position: this model scores pairs in padded rows from now on
            warnings.warn(f"{type(lm).__name__}'s score head does not run per position (output "
                          f"{None if scores is None else tuple(scores.shape)}); scoring pairs in padded rows instead "
                          "(`share_prompt_forward=False` skips the attempt).", stacklevel=2)
            self._share_prompts = False
            return None
        return scores[shared.row, shared.ends, 0]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation step: the loss, and for `compute_metrics` the `(B, 2)` rewards `[chosen, rejected]` with labels
        of zeros (the preferred column)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        self._record_eval_loss(loss, inputs)
        if prediction_loss_only:
            return loss, None, None
        logits = torch.stack([rewards["rewards_chosen"], rewards["rewards_rejected"]], dim=1).detach()
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return loss, logits, labels

    def create_model_card(self, output_dir: str | None = None, **kwargs) -> None:
        """Write `README.md`: the common card plus how to score text with the reward model."""
        super().create_model_card(output_dir=output_dir, **kwargs)
        output_dir = output_dir or self.args.output_dir
        card = Path(output_dir, "README.md")
        card.write_text(card.read_text() + _MODEL_CARD_USAGE.format(model=output_dir))


def _check_single_output(model) -> None:
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels != 1:
        raise ValueError(
            f"A reward model has one output (config.num_labels == 1); {type(model).__name__} has num_labels="
            f"{num_labels}. Load it with `AutoModelForSequenceClassification.from_pretrained(..., num_labels=1)`, or "
            "pass the model id as a string and the trainer will."
        )


def _warn_if_score_frozen(model) -> None:
    """A causal-LM checkpoint gets a randomly initialised `score` head; an adapter that leaves it frozen trains the
    backbone towards a random projection."""
    score = [p for name, p in model.named_parameters() if ".score." in f".{name}"]
    if score and not any(p.requires_grad for p in score):
        warnings.warn(
            "The PEFT adapter leaves the `score` head frozen, so the randomly initialised reward head is never "
            "trained. Use `LoraConfig(task_type='SEQ_CLS', ...)` or add 'score' to `modules_to_save`.",
            stacklevel=3,
        )


def _rename_legacy_columns(dataset, name: str):
    columns = dataset.column_names or list(next(iter(dataset)).keys())
    legacy = {old: new for old, new in LEGACY_COLUMNS.items() if old in columns and new not in columns}
    if legacy:
        warnings.warn(
            f"The {name} dataset uses the legacy column names {sorted(legacy)}; they are renamed to "
            f"{[legacy[k] for k in sorted(legacy)]}. Rename them in the dataset to silence this warning.",
            FutureWarning, stacklevel=4,
        )
        dataset = dataset.rename_columns(legacy)
    return dataset


def _fits(row: dict, max_length: int) -> bool:
    prompt = len(row["prompt_ids"])
    return prompt + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= max_length


def filter_long_pairs(dataset, max_length: int | None, name: str = "train"):
    """Drop the pairs whose full chosen or rejected sequence (prompt + completion) exceeds `max_length` tokens.

    A reward is read at the last token, so a truncated sequence would be scored without its end; such pairs are
    removed instead, and their number is reported in one warning. An `IterableDataset` is filtered lazily (uncounted).

    Raises:
        `ValueError`: every pair is too long.

    Example:
        ```python
        >>> pairs = Dataset.from_list([
        ...     {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3, 4]},
        ...     {"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3, 4, 5, 6]},  # 5 tokens: dropped
        ... ])
        >>> len(filter_long_pairs(pairs, max_length=4))  # warns: filtered out 1 of 2 train pairs
        1
        ```
    """
    from datasets import Dataset

    if max_length is None:
        return dataset
    if not isinstance(dataset, Dataset):
        return dataset.filter(_fits, fn_kwargs={"max_length": max_length})
    prompts, chosen, rejected = dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected)]
    keep = [i for i, length in enumerate(lengths) if length <= max_length]
    dropped = len(lengths) - len(keep)
    if not keep:
        raise ValueError(
            f"All {len(lengths)} {name} pairs are longer than max_length={max_length} tokens (the shortest has "
            f"{min(lengths)} tokens), so nothing is left to train on. Raise `max_length` (or set it to None)."
        )
    if dropped:
        warnings.warn(
            f"Filtered out {dropped} of {len(lengths)} {name} pairs whose prompt + chosen or prompt + rejected is "
            f"longer than max_length={max_length} tokens (the longest has {max(lengths)}); raise `max_length` to keep "
            "them.",
            stacklevel=3,
        )
        dataset = dataset.select(keep)
    return dataset
