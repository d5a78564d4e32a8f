"""Kahneman-Tversky Optimization (KTO), https://huggingface.co/papers/2402.01306, and unpaired APO-zero.

Each row is one completion labelled desirable or undesirable. With `h = log π(y|x) − log π_ref(y|x)` and the reference
point `z` (an estimate of KL(π ‖ π_ref)), the loss of a row is `λ_D (1 − σ(β (h − z)))` if it is desirable and
`λ_U (1 − σ(β (z − h)))` otherwise (eq. 8); the pure functions are in `trl.losses.kto`.

The KL reference point (our design; it differs from the reference implementation). `z` is estimated from mismatched
"KL completions": prompt `x_i` paired with the completion of another row. The reference implementation builds them by
rotating completions within each per-device batch, so the estimate depends on the batch composition and requires
sequential sampling and a per-device batch size above 1. Here the pairing is made once, when the dataset is
prepared: every row gets the completion of a row with a different prompt (`trl.data.unpaired.kl_pairing`; with
distinct prompts, row `(i + 1) mod n`), in a `kl_completion_ids` column. So
- any sampler and any `per_device_train_batch_size` (even 1) work: the pairing no longer constrains them;
- the reference log-probs of KL completions can be precomputed and cached like those of the completions.
Per micro-batch, `z = max(0, mean(log π(y'|x) − log π_ref(y'|x)))` over its KL completions, gathered from all
processes, and detached (as in the paper). Being an estimate per micro-batch, `z` is noisier with smaller micro-batches;
the rest of the loss does not depend on how a step is cut.

Other deviations from the reference implementation:
- one forward scores `[completions; KL completions]`, through the fused LM head (never `(B, T, V)` logits);
- the loss is a mean over the rows of the whole optimiser step (all accumulation steps and ranks), so gradient
  accumulation does not change the gradient (`trl.losses.reduce`);
- the reference is shared with DPO: an explicit `ref_model`, the policy with its adapters disabled (PEFT), the initial
  policy in a precompute pass whose results are cached on disk, or an independent frozen copy.

Tokens as the reference: a completion is the full rendering minus the prompt rendering (`trl.data.unpaired`), so
template text after the end-of-turn token (ChatML's "\\n") is scored.
"""

from __future__ import annotations

import functools

import torch

from .. import guards
from ..data import vision
from ..data.collators import DataCollatorForUnpairedPreference
from ..data.preference import PreferenceDataOptions
from ..data.unpaired import prepare_unpaired_dataset
from ..data.vision import DataCollatorForVisionUnpairedPreference
from ..losses.kto import kto_kl, kto_loss
from ..losses.reduce import token_weight
from ..models import loading
from ..models.utils import causal_lm
from ..ops.fused_head import CompletionLogps, completion_logps, router_aux_loss_coef
from .base_config import resolve_pad_to_multiple_of
from .base_trainer import _BaseTrainer, as_config, configure_streaming
from .kto_config import KTOConfig

__all__ = ["DataCollatorForUnpairedPreference", "DataCollatorForVisionUnpairedPreference", "KTOTrainer"]


class KTOTrainer(_BaseTrainer):
    """Trainer for Kahneman-Tversky Optimization (KTO) and unpaired APO-zero.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`): hub id / local folder, or a model object.
        ref_model (`PreTrainedModel`, *optional*): the reference. When omitted: with PEFT, the policy with its
            adapters disabled; with `precompute_ref_log_probs`, the initial policy (used once, before training);
            otherwise an independent frozen copy of the policy (loaded again from `model` when it is a string).
        args ([`KTOConfig`], *optional*): configuration; defaults to `KTOConfig(output_dir="<model-name>-KTO")`.
        data_collator (*optional*): defaults to [`~trl.data.collators.DataCollatorForUnpairedPreference`].
        train_dataset: unpaired preference rows (`prompt`/`completion`/`label`), standard or conversational, or
            pre-tokenised `prompt_ids`/`completion_ids`/`label`. Paired preference data (`prompt`/`chosen`/`rejected`,
            or `chosen`/`rejected` with an implicit prompt) is unpaired automatically. Optional `tools` and
            `chat_template_kwargs` columns are used when rendering conversations.
        eval_dataset (*optional*): same formats; a dict of datasets is evaluated one by one.
        processing_class (*optional*): the tokenizer; loaded from `model` when omitted.
        compute_metrics, callbacks, optimizers: as in `transformers.Trainer`.
        quantization_config (*optional*): used when `model` is a string.
        peft_config (`peft.PeftConfig`, *optional*): train a fresh adapter; the reference is the model without it.

    The per-device batch size is not constrained by the KL term (see the module docstring). Logged metrics: `kl`,
    `entropy`, `num_tokens`, `logits/chosen`, `logits/rejected` (when the fused head reports mean logits),
    `rewards/chosen`, `rewards/rejected`, `rewards/margins`, `logps/chosen`, `logps/rejected`, and `aux_loss` for a
    mixture of experts whose load-balancing loss is on (`router_aux_loss_coef`); "chosen" means desirable rows and
    "rejected" undesirable ones, each averaged over the rows of that side in the logging window.

    Example:
        ```python
        >>> from trl import KTOConfig, KTOTrainer
        >>> from trl.data.tiny import tiny_task_dataset
        >>> trainer = KTOTrainer(model="path/to/sft-model", args=KTOConfig(output_dir="out"),
        ...                      train_dataset=tiny_task_dataset("unpaired_preference"))
        >>> trainer.train()
        ```
    """

    _tag_names = ["trl", "kto"]
    _name = "KTO"

    def __init__(
        self,
        model,
        ref_model=None,
        args: KTOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        args = as_config(args, KTOConfig, self._default_output_dir(model, "KTO"))
        if train_dataset is None:
            raise ValueError("KTOTrainer needs a `train_dataset` of completions labelled desirable or undesirable.")
        model_id = model if isinstance(model, str) else None
        model = self._load_model(model, args, quantization_config)
        if processing_class is None:  # a vision-language model's processor, else its tokenizer
            processing_class = vision.load_processor_for(model, model_id, args)
        processing_class = self._load_processing_class(processing_class, model, model_id, args)
        self._is_vlm = vision.is_processor(processing_class)  # rows rendered on the fly (trl.data.vision)
        if self._is_vlm:
            vision.check_vision_preference_config(args, "KTOTrainer")
        loading.prepare_tokenizer(processing_class.tokenizer if self._is_vlm else processing_class, model)
        self._model_input_names = vision.model_input_names(causal_lm(model)) if self._is_vlm else None
        # The reference: an explicit model, the adapter-free policy, the initial policy (precompute) or a copy.
        model = self._setup_policy_and_reference(model, ref_model, model_id, args, quantization_config, peft_config)
        self._aux_loss_coef = router_aux_loss_coef(causal_lm(model), args.router_aux_loss_coef)  # policy only

        self._with_kl = args.loss_type == "kto"  # apo_zero_unpaired has no KL term: no KL completions to score
        self._ref_columns = ("ref_logps", "ref_KL_logps") if self._with_kl else ("ref_logps",)
        options = PreferenceDataOptions(
            max_length=args.max_length, num_proc=args.dataset_num_proc, guards=guards.policy(args)
        )

        def prepare(dataset, name):
            return prepare_unpaired_dataset(dataset, processing_class, options, "KTOTrainer", name, self._with_kl,
                                            model)[0]

        if self._is_vlm:  # KL completions: the completion of the previous row of the batch, as the reference
            data_collator = data_collator or DataCollatorForVisionUnpairedPreference(
                processing_class, args.max_length, args.pad_to_multiple_of, kl_completions=self._with_kl)
            vision.check_vision_datasets(train_dataset, eval_dataset, data_collator, "KTOTrainer", unpaired=True)
            prepare = None
        else:
            train_dataset = prepare(train_dataset, "train")
        eval_dataset = self._prepare_eval_datasets(eval_dataset, prepare)
        if data_collator is None:
            data_collator = DataCollatorForUnpairedPreference(
                pad_token_id=processing_class.pad_token_id, max_length=args.max_length,
                pad_to_multiple_of=args.pad_to_multiple_of, kl_completions=self._with_kl,
            )

        configure_streaming(args, train_dataset, eval_dataset)
        self._init_metrics()
        # The margin of the logging window's means (not a mean of per-batch margins, which one-sided batches lack).
        self._metrics.derive("rewards/margins", lambda means: means["rewards/chosen"] - means["rewards/rejected"])
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers,
        )
        # Evaluation computes the loss only for batches that carry every label column: ours is the row label.
        self.label_names = ["label"]
        self._finish_reference_setup(self._ref_scores, self._ref_columns)

    # ---- log-probs -----------------------------------------------------------------------------------------------

    def _completion_logps(
        self, model, batch: dict, **request
    ) -> tuple[torch.Tensor, torch.Tensor | None, CompletionLogps]:
        """One forward over `[completions; KL completions]`: `(B,)` completion log-probs, `(B,)` KL-completion
        log-probs (None without the KL term) and the per-token scores. `request`: other [`FusedHeadRequest`] fields
        (the policy asks for the MoE aux loss)."""
        b = batch["label"].shape[0]
        if self._with_kl and not self._is_vlm and torch.is_grad_enabled():
            # The KL term is detached (`_kl_estimate`): its completions get a forward without autograd, so the backward
            # pass covers the B completions only instead of all 2B rows (measured in benchmarks/README.md, KTO).
            scored = completion_logps(model, *self._rows(batch, slice(0, b)), **request)
            with torch.no_grad():
                kl_scored = completion_logps(model, *self._rows(batch, slice(b, None)))
            return scored.sums(), kl_scored.sums(), scored
        if self._is_vlm:  # the processor's image tensors go with the ids
            model = functools.partial(model, **vision.image_inputs(self._model_input_names, batch))
        scored = completion_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], **request
        )
        sums = scored.sums()
        return sums[:b], (sums[b:] if self._with_kl else None), scored

    def _rows(self, batch: dict, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`input_ids`, `attention_mask`, `completion_mask` of the sequences `rows`, without the padding columns only
        the other sequences of the batch needed (the collator right-pads; `pad_to_multiple_of` is kept)."""
        mask = batch["attention_mask"][rows]
        width = max(int(mask.sum(-1).max()), 1) if mask.numel() else 1
        multiple = resolve_pad_to_multiple_of(self.args.pad_to_multiple_of) or 1
        width = min(-(-width // multiple) * multiple, mask.shape[1])
        if bool(mask[:, width:].any()):  # not right-padded (a custom collator): keep every column
            width = mask.shape[1]
        return batch["input_ids"][rows, :width], mask[:, :width], batch["completion_mask"][rows, :width]

    def _ref_scores(self, ref, batch: dict) -> dict[str, torch.Tensor]:
        """The reference columns of one batch (the precompute pass, `_with_ref_logps`)."""
        logps, kl_logps, _ = self._completion_logps(ref, batch)
        return dict(zip(self._ref_columns, (logps, kl_logps)))

    def _kl_estimate(self, kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
        """KTO's reference point over the KL completions of this micro-batch on every process, detached."""
        with torch.no_grad():
            pairs = torch.stack([kl_logps.float(), ref_kl_logps.float()], dim=1)  # (B, 2)
            if self.accelerator.num_processes > 1:
                pairs = self.accelerator.gather_for_metrics(pairs)  # (W*B, 2)
            return kto_kl(pairs[:, 0], pairs[:, 1])

    # ---- Trainer overrides, in lifecycle order -------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "completion_ids", "kl_completion_ids", "label", *self._ref_columns]
            if self._is_vlm:  # the collator renders the raw rows
                self._signature_columns += list(vision.RAW_COLUMNS)

    def _count_loss_items(self, batch: dict) -> int:
        return batch["label"].shape[0]  # the loss is a mean over rows

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        logps, kl_logps, scored = self._completion_logps(model, inputs, router_aux_loss=self._aux_loss_coef > 0)
        if all(column in inputs for column in self._ref_columns):
            ref_logps, ref_kl_logps = inputs["ref_logps"], inputs.get("ref_KL_logps")
        else:
            with self._reference() as ref:
                ref_logps, ref_kl_logps, _ = self._completion_logps(ref, inputs)
        kl = self._kl_estimate(kl_logps, ref_kl_logps) if self._with_kl else None
        losses, metrics = kto_loss(
            logps, ref_logps, inputs["label"], kl, beta=self.args.beta, desirable_weight=self.args.desirable_weight,
            undesirable_weight=self.args.undesirable_weight, loss_type=self.args.loss_type,
        )
        if mode == "train" and num_items_in_batch is not None:
            loss = losses.sum() * token_weight(num_items_in_batch, self._dp_world_size())
        else:
            loss = losses.mean()
        loss = self._with_aux_loss(loss, scored.outputs.aux_loss, mode)
        self._record(mode, inputs, scored, metrics)
        return (loss, scored.outputs) if return_outputs else loss

    def _record(self, mode: str, inputs: dict, scored: CompletionLogps, metrics: dict) -> None:
        labels = inputs["label"]
        b = labels.shape[0]
        self._record_tokens(mode, {"attention_mask": inputs["attention_mask"][:b]})  # KL sequences are not data
        outputs, lengths = scored.outputs, scored.lengths[:b]
        n = int(lengths.sum())  # tokens of the completions; those of the KL completions follow them
        self._metrics.add(mode, "entropy", outputs.entropy[:n].sum(), n)
        mean_logits = getattr(outputs, "mean_logits", None)
        if mean_logits is not None:
            desirable = torch.repeat_interleave(labels.bool(), lengths)  # (n,) the label of each token's row
            mean_logits = mean_logits[:n].detach()
            for key, rows in (("logits/chosen", desirable), ("logits/rejected", ~desirable)):
                if rows.any():
                    self._metrics.add(mode, key, mean_logits[rows].sum(), int(rows.sum()))
        for side in ("chosen", "rejected"):
            count = float(metrics[f"count/{side}"])
            if count:  # a side absent from this micro-batch adds nothing (not a 0 or a NaN)
                self._metrics.add(mode, f"rewards/{side}", metrics[f"rewards/{side}_sum"], count)
                self._metrics.add(mode, f"logps/{side}", metrics[f"logps/{side}_sum"], count)
        self._metrics.add(mode, "kl", metrics["kl"])
