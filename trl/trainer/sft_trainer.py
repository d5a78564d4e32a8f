"""Supervised fine-tuning (SFT).

Method: maximise the log-likelihood of the target tokens (all tokens, completion tokens, or assistant turns), or the
DFT variant (https://huggingface.co/papers/2508.05629). Deviations from the reference implementation:
- the loss is normalised by the loss-token count of the whole optimiser step (all accumulation steps and ranks), so it
  does not depend on how a batch is cut (`trl.losses.reduce`);
- logits are never materialised: log-probs come from the last hidden states, chunk by chunk (`trl.ops`);
- padding-free batches and packing work with every attention implementation (sdpa/eager build a block-diagonal mask
  from `position_ids`), not only with flash attention;
- bf16 is on by default only where the hardware supports it;
- runs that would learn nothing are stopped with an explanation (`trl.guards`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from transformers import TrainerCallback, TrainingArguments  # noqa: F401  (TrainingArguments: documented type)

from .. import guards
from ..data import vision
from ..data.collators import DataCollatorForLanguageModeling
from ..data.prepare import SFTDataOptions, prepare_sft_dataset
from ..data.vision import DataCollatorForVisionLanguageModeling  # noqa: F401  (the reference's import location)
from ..losses.reduce import count_loss_tokens, token_weight
from ..losses.sft import SFT_LOSSES
from ..models import loading
from ..models.utils import causal_lm, use_packed_attention
from ..ops.fused_head import FusedHeadRequest, add_fused_lm_head, router_aux_loss_coef
from .base_trainer import _BaseTrainer, as_config, configure_streaming
from .sft_config import SFTConfig


class SFTTrainer(_BaseTrainer):
    """Trainer for supervised fine-tuning of causal language models.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`): a hub id or local folder (loaded with
            `args.model_init_kwargs`, float32 by default), or a model object.
        args (`SFTConfig` or `TrainingArguments`, *optional*): configuration; a `TrainingArguments` is converted.
            Defaults to `SFTConfig(output_dir="<model-name>-SFT")`.
        data_collator (*optional*): defaults to `DataCollatorForLanguageModeling`.
        train_dataset (`Dataset` or `IterableDataset`): language-modelling (`text`/`messages`), prompt-completion
            (standard or conversational), ShareGPT `conversations`, or pre-tokenised (`input_ids`) rows.
        eval_dataset (*optional*): same formats; a dict of datasets is evaluated one by one.
        processing_class (*optional*): the tokenizer; loaded from `model` when omitted.
        compute_loss_func (*optional*): deprecated; when given, the loss comes from full logits of a plain forward.
        compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics: as in
            `transformers.Trainer`.
        quantization_config (`BitsAndBytesConfig`, *optional*): used when `model` is a string.
        peft_config (`peft.PeftConfig`, *optional*): wrap the model with a fresh adapter (e.g. LoRA).
        formatting_func (`Callable[[dict], str]`, *optional*): builds the text of each row.

    Example:
        ```python
        >>> from trl import SFTTrainer
        >>> from trl.data.tiny import tiny_task_dataset
        >>> trainer = SFTTrainer(model="path/to/model", train_dataset=tiny_task_dataset())
        >>> trainer.train()
        ```
    """

    _tag_names = ["trl", "sft"]
    _name = "SFT"

    def __init__(
        self,
        model,
        args: SFTConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
        formatting_func: Callable[[dict], str] | None = None,
    ):
        args = as_config(args, SFTConfig, self._default_output_dir(model, "SFT"))
        if train_dataset is None:
            raise ValueError("SFTTrainer needs a `train_dataset`.")
        if formatting_func is not None and args.completion_only_loss:
            raise ValueError(
                "`formatting_func` turns rows into plain text, so there is no completion to restrict the loss to; "
                "remove `completion_only_loss=True` or the formatting function."
            )
        if args.label_smoothing_factor:
            raise ValueError("`label_smoothing_factor` is not supported by SFTTrainer (deprecated upstream); set it to 0.")
        if compute_loss_func is not None:
            warnings.warn("`compute_loss_func` is deprecated: it needs full logits (an extra, slower forward).",
                          FutureWarning, stacklevel=2)

        model_id = model if isinstance(model, str) else None
        model = self._load_model(model, args, quantization_config)
        if processing_class is None:  # a vision-language model's processor, else its tokenizer
            processing_class = vision.load_processor_for(model, model_id, args)
        processing_class = self._load_processing_class(processing_class, model, model_id, args)
        self._is_vlm = vision.is_processor(processing_class)
        self._model_input_names = vision.model_input_names(causal_lm(model)) if self._is_vlm else None
        if self._is_vlm:
            vision.check_vision_config(args, "SFTTrainer", chat_template_path=args.chat_template_path)
        tokenizer = processing_class.tokenizer if self._is_vlm else processing_class
        if args.chat_template_path is not None:
            model, processing_class, added_tokens = loading.apply_chat_template_path(
                model, processing_class, args.chat_template_path
            )
            if peft_config is not None:
                tied = bool(getattr(model.config, "tie_word_embeddings", False))
                loading.train_new_tokens(peft_config, added_tokens, tied_embeddings=tied)
        if args.pad_token is not None:  # deprecated, still honoured
            tokenizer.pad_token = args.pad_token
        loading.prepare_tokenizer(tokenizer, model, args.eos_token)
        if peft_config is not None:
            model = loading.wrap_peft(model, peft_config)
        add_fused_lm_head(causal_lm(model))
        self._virtual_tokens = _num_virtual_tokens(model)
        if self._virtual_tokens and (args.padding_free or args.packing):
            raise ValueError(
                "PEFT prompt tuning / P-tuning prepends virtual tokens to every sequence, which needs one sequence per "
                "row: turn off `padding_free` and `packing`."
            )
        self._aux_loss_coef = router_aux_loss_coef(causal_lm(model), args.router_aux_loss_coef)

        skip_prepare = bool((args.dataset_kwargs or {}).get("skip_prepare_dataset", False))
        self._dataset_format = None
        if self._is_vlm:  # rendered and processed on the fly by DataCollatorForVisionLanguageModeling
            skip_prepare = True
            if data_collator is None:
                data_collator = vision.vision_sft_collator(processing_class, args, return_token_counts=True)
            train_dataset = vision.with_row_index(train_dataset)  # collation errors name the row
            vision.check_vision_datasets(train_dataset, eval_dataset, data_collator, "SFTTrainer")
        if not skip_prepare:
            train_dataset, self._dataset_format = self._prepare(train_dataset, processing_class, args, formatting_func,
                                                                "train", args.packing, model)

        def prepare_eval(dataset, name):
            return self._prepare(dataset, processing_class, args, formatting_func, name, args.eval_packing, model)[0]

        eval_dataset = self._prepare_eval_datasets(eval_dataset, None if skip_prepare else prepare_eval)
        if data_collator is None:
            data_collator = DataCollatorForLanguageModeling(
                pad_token_id=processing_class.pad_token_id,
                completion_only_loss=args.completion_only_loss is not False,
                padding_free=args.padding_free or (args.packing and _has_varlen_attention(model)),
                pad_to_multiple_of=args.pad_to_multiple_of,
                return_token_counts=True,
            )
        elif args.padding_free:
            raise ValueError("`padding_free=True` needs the default collator; got a custom `data_collator`.")

        if args.packing or args.padding_free:
            use_packed_attention(model, args.packed_attention, args.device)
        configure_streaming(args, train_dataset, eval_dataset)
        if _pop_selective_checkpointing(args):
            callbacks = [*(callbacks or []), _SelectiveCheckpointing()]
        self._loss_fn = SFT_LOSSES[args.loss_type]
        self._init_metrics()
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )

    @staticmethod
    def _prepare(dataset, tokenizer, args, formatting_func, name, packing, model=None):
        options = SFTDataOptions(
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            dataset_text_field=args.dataset_text_field,
            completion_only_loss=args.completion_only_loss,
            assistant_only_loss=args.assistant_only_loss,
            packing=packing,
            packing_strategy=args.packing_strategy,
            shuffle_dataset=args.shuffle_dataset,
            num_proc=args.dataset_num_proc,
            seed=args.seed,
            guards=guards.policy(args),
        )
        return prepare_sft_dataset(dataset, tokenizer, options, formatting_func, name, model)

    # ---- Trainer overrides, in lifecycle order -------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "completion_mask", "assistant_masks", "seq_lengths"]
            if self._is_vlm:  # the collator renders the raw rows
                self._signature_columns += list(vision.RAW_COLUMNS) + [self.args.dataset_text_field]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.compute_loss_func is not None:
            inputs = {k: v for k, v in inputs.items() if k != "token_counts"}  # ours, not a model input
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if model.training else "eval"
        labels = inputs["labels"]
        if mode == "train" and num_items_in_batch is not None:
            weight = token_weight(num_items_in_batch, self._dp_world_size())
        else:  # evaluation: the mean over this batch's tokens
            weight = token_weight(count_loss_tokens(labels).clamp(min=1))
        model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        if self._is_vlm:  # plus the processor's image tensors the model takes (pixel_values, image_grid_thw, ...)
            model_inputs = vision.vision_model_inputs(self._model_input_names, inputs)
        if self._virtual_tokens:  # PEFT prompt tuning / P-tuning prepends virtual tokens, which are never targets
            labels = torch.nn.functional.pad(labels, (self._virtual_tokens, 0), value=-100)
            model_inputs.pop("position_ids", None)  # PEFT numbers the positions itself (it ignores them, warning)
        request = FusedHeadRequest(labels=labels, loss_fn=self._loss_fn, token_weight=weight,
                                   router_aux_loss=self._aux_loss_coef > 0)
        outputs = model(**model_inputs, fused_lm_head=request)
        loss = outputs.loss
        loss = self._with_aux_loss(loss, outputs.aux_loss, mode)

        self._record_tokens(mode, inputs)
        count = outputs.entropy.numel()
        self._metrics.add(mode, "entropy", outputs.entropy.sum(), count)
        self._metrics.add(mode, "mean_token_accuracy", outputs.correct.sum(), count)
        if return_outputs and (self.compute_metrics is not None or self.preprocess_logits_for_metrics is not None):
            with torch.no_grad():  # only `compute_metrics` needs full logits, and pays for a plain forward
                outputs = model(**model_inputs, use_cache=False)
        return (loss, outputs) if return_outputs else loss


def _pop_selective_checkpointing(args) -> bool:
    """Take `selective` out of the checkpointing kwargs (torch's `checkpoint` does not know it) and say whether it was
    asked for; checkpointing becomes non-reentrant, which selective checkpointing needs."""
    selective = False
    for name in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"):
        kwargs = getattr(args, name, None)
        if isinstance(kwargs, dict) and "selective" in kwargs:
            kwargs = dict(kwargs)
            selective = bool(kwargs.pop("selective")) or selective
            if selective:
                kwargs["use_reentrant"] = False
            setattr(args, name, kwargs or None)
    checkpointing = getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    if selective and not checkpointing:
        warnings.warn("`gradient_checkpointing_kwargs={'selective': True}` has no effect with checkpointing off "
                      "(`gradient_checkpointing=False`).", stacklevel=3)
        return False
    return selective


class _SelectiveCheckpointing(TrainerCallback):
    """Selective activation checkpointing (`gradient_checkpointing_kwargs={"selective": True}`): once transformers has
    turned checkpointing on, each decoder layer keeps its matmul and attention outputs and recomputes the rest
    (`trl.models.helpers.enable_selective_activation_checkpointing`)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from ..models.helpers import enable_selective_activation_checkpointing

        enable_selective_activation_checkpointing(model)


def _has_varlen_attention(model) -> bool:
    """Flash attention runs a flat batch as separate sequences (varlen); sdpa/eager pay for the full square."""
    return "flash" in str(getattr(causal_lm(model).config, "_attn_implementation", "") or "")


def _num_virtual_tokens(model) -> int:
    """How many virtual tokens PEFT prepends to every sequence: prompt tuning and P-tuning put them in front of the
    input embeddings (prefix tuning puts them in the attention cache instead, and LoRA adds none)."""
    if not loading.is_peft_model(model):
        return 0
    config = model.active_peft_config
    if not getattr(config, "is_prompt_learning", False) or config.peft_type == "PREFIX_TUNING":
        return 0
    return config.num_virtual_tokens
