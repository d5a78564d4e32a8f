"""Direct Preference Optimization (DPO), https://huggingface.co/papers/2305.18290, and its variants.

The loss compares the policy's and the reference's log-probs of a chosen and a rejected completion (eq. 7); the
variants (IPO, robust, EXO, NCA, BCO, SPPO, AOT, APO, DiscoPOP, MPO combinations, f-divergences, LD-DPO, WPO) are
pure functions in `trl.losses.dpo`. Deviations from the reference implementation:
- the loss is a mean over the pairs of the whole optimiser step (all accumulation steps and ranks), so gradient
  accumulation does not change the gradient (`trl.losses.reduce`);
- log-probs come from the last hidden states chunk by chunk, never from `(B, T, V)` logits (`trl.ops`);
- with `precompute_ref_log_probs` and no explicit `ref_model`, the reference log-probs are those of the initial
  policy, computed before training with the policy itself: no reference model is ever built, and the values are
  cached on disk, keyed by model and dataset fingerprints.

Tokens as the reference: a completion is the full rendering minus the prompt rendering (`trl.data.preference`), so
template text after the end-of-turn token (ChatML's "\\n") is scored.
"""

from __future__ import annotations

import functools

import torch

from .. import guards
from ..data import vision
from ..data.collators import DataCollatorForPreference
from ..data.preference import PreferenceDataOptions, prepare_preference_dataset
from ..data.vision import DataCollatorForVisionPreference
from ..losses.dpo import (
    DPOLossParams,
    PreferenceLogps,
    bco_batch_reward_mean,
    dpo_loss,
    ld_logps,
    wpo_pair_weights,
    wpo_weights,
)
from ..losses.reduce import token_weight
from ..models import loading
from ..models.utils import causal_lm, use_packed_attention
from ..ops.fused_head import completion_logps, router_aux_loss_coef
from ..ops.shared_prompt import (
    MOE_REASON,
    VLM_REASON,
    can_share,
    score_shared,
    share_prompts,
    sharing_enabled,
    split_sequences,
)
from .base_trainer import _BaseTrainer, as_config, configure_streaming
from .dpo_config import DPOConfig

__all__ = ["DPOTrainer", "DataCollatorForPreference", "DataCollatorForVisionPreference"]


_FLAT_KEYS = ("position_ids", "sequence_index", "num_sequences", "max_sequence_length")


class DPOTrainer(_BaseTrainer):
    """Trainer for Direct Preference Optimization and its variants.

    Args:
        model (`str`, `PreTrainedModel` or `PeftModel`): hub id / local folder, or a model object.
        ref_model (`PreTrainedModel`, *optional*): the reference. When omitted: with PEFT, the policy with its
            adapters disabled; with `precompute_ref_log_probs`, the initial policy (used once, before training);
            otherwise an independent frozen copy of the policy (loaded again from `model` when it is a string).
        args (`DPOConfig`, *optional*): configuration; defaults to `DPOConfig(output_dir="<model-name>-DPO")`.
        data_collator (*optional*): defaults to `DataCollatorForPreference`.
        train_dataset: preference rows (`prompt`/`chosen`/`rejected`, or `chosen`/`rejected` with an implicit
            prompt), standard or conversational, or pre-tokenised `prompt_ids`/`chosen_ids`/`rejected_ids`.
        eval_dataset (*optional*): same formats; a dict of datasets is evaluated one by one.
        processing_class (*optional*): the tokenizer; loaded from `model` when omitted.
        compute_metrics (`Callable[[EvalPrediction], dict]`, *optional*):
            Receives `predictions` of shape `(N, 2)` (the implicit rewards `β·(log π − log π_ref)` of the chosen and
            rejected completion of each pair) and `label_ids` of zeros (the chosen side, column 0, is preferred).
        callbacks, optimizers: as in `transformers.Trainer`.
        quantization_config (*optional*): used when `model` is a string.
        peft_config (`peft.PeftConfig`, *optional*): train a fresh adapter; the reference is the model without it.

    Logged metrics (train, and with an `eval_` prefix in evaluation): `loss`, `entropy`, `num_tokens`,
    `mean_token_accuracy` (chosen), `logits/chosen`, `logits/rejected`, `rewards/chosen`, `rewards/rejected`,
    `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`, and `aux_loss` for a mixture of experts
    whose load-balancing loss is on (`router_aux_loss_coef`).

    Example:
        ```python
        >>> from trl import DPOConfig, DPOTrainer
        >>> trainer = DPOTrainer(model="path/to/sft-model", args=DPOConfig(output_dir="out"), train_dataset=prefs)
        >>> trainer.train()
        ```
    """

    _tag_names = ["trl", "dpo"]
    _name = "DPO"

    def __init__(
        self,
        model,
        ref_model=None,
        args: DPOConfig | None = None,
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
        args = as_config(args, DPOConfig, self._default_output_dir(model, "DPO"))
        if train_dataset is None:
            raise ValueError("DPOTrainer needs a `train_dataset` of preference pairs.")
        model_id = model if isinstance(model, str) else None
        model = self._load_model(model, args, quantization_config)
        if processing_class is None:  # a vision-language model's processor, else its tokenizer
            processing_class = vision.load_processor_for(model, model_id, args)
        processing_class = self._load_processing_class(processing_class, model, model_id, args)
        self._is_vlm = vision.is_processor(processing_class)
        if self._is_vlm:
            vision.check_vision_preference_config(args, "DPOTrainer")
        loading.prepare_tokenizer(processing_class.tokenizer if self._is_vlm else processing_class, model)
        self._model_input_names = vision.model_input_names(causal_lm(model)) if self._is_vlm else None
        # The reference: an explicit model, the adapter-free policy, the initial policy (precompute) or a copy.
        model = self._setup_policy_and_reference(model, ref_model, model_id, args, quantization_config, peft_config)
        # The MoE load-balancing loss (policy only); with WPO, the aligned weights need log Σ_v π(v)² per token.
        self._aux_loss_coef = router_aux_loss_coef(causal_lm(model), args.router_aux_loss_coef)
        self._policy_request = {"router_aux_loss": self._aux_loss_coef > 0, "with_sum_sq": args.use_weighting}
        self._share_prompts = sharing_enabled(
            causal_lm(model), args.share_prompt_forward, VLM_REASON if self._is_vlm else None,
            MOE_REASON if self._aux_loss_coef > 0 else None,
            "`padding_free=True` already lays the batch out as one flat row" if args.padding_free else None,
        )

        options = PreferenceDataOptions(
            max_length=args.max_length, num_proc=args.dataset_num_proc, guards=guards.policy(args)
        )
        def prepare(dataset, name):
            return prepare_preference_dataset(dataset, processing_class, options, "DPOTrainer", name, model)[0]

        if self._is_vlm:  # rendered and processed on the fly by DataCollatorForVisionPreference
            data_collator = data_collator or DataCollatorForVisionPreference(
                processing_class, max_length=args.max_length, pad_to_multiple_of=args.pad_to_multiple_of)
            train_dataset = vision.with_row_index(train_dataset)  # collation errors name the row
            vision.check_vision_datasets(train_dataset, eval_dataset, data_collator, "DPOTrainer")
            prepare = None
        else:
            train_dataset = prepare(train_dataset, "train")
        eval_dataset = self._prepare_eval_datasets(eval_dataset, prepare)
        if data_collator is None:
            data_collator = DataCollatorForPreference(
                pad_token_id=processing_class.pad_token_id, max_length=args.max_length,
                truncation_mode=args.truncation_mode, pad_to_multiple_of=args.pad_to_multiple_of,
                padding_free=args.padding_free,
            )

        if args.padding_free:
            for scorer in (model, self.ref_model):  # the reference scores the same flat rows
                if scorer is not None:
                    use_packed_attention(scorer, args.packed_attention, args.device)
        configure_streaming(args, train_dataset, eval_dataset)
        self._loss_params = DPOLossParams(
            beta=args.beta, label_smoothing=args.label_smoothing, f_divergence_type=args.f_divergence_type,
            f_alpha_divergence_coef=args.f_alpha_divergence_coef, discopop_tau=args.discopop_tau,
        )
        self._bco_rewards = [0.0, 0]  # running sum and count of implicit rewards (BCO's delta)
        self._init_metrics()
        super().__init__(
            model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers,
        )
        self._finish_reference_setup(
            self._ref_scores, ("ref_chosen_logps", "ref_rejected_logps"), truncation_mode=args.truncation_mode,
            ld_alpha=args.ld_alpha,
        )

    # ---- reference log-probs ------------------------------------------------------------------------------------

    def _ref_scores(self, ref, batch: dict) -> dict[str, torch.Tensor]:
        """The reference columns of one batch (the precompute pass, `_with_ref_logps`)."""
        logps = self._sequence_logps(ref, batch, layout=self._pair_layout(batch))
        return {"ref_chosen_logps": logps["chosen"], "ref_rejected_logps": logps["rejected"]}

    # ---- Trainer overrides, in lifecycle order -------------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                "prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps"
            ]
            if self._is_vlm:  # the collator renders the raw rows
                self._signature_columns += list(vision.RAW_COLUMNS)

    def _count_loss_items(self, batch: dict) -> int:
        return batch.get("num_sequences", batch["input_ids"].shape[0]) // 2  # the loss is a mean over pairs

    def _sequence_logps(self, model, batch: dict, layout=None, **request) -> dict[str, torch.Tensor]:
        """Forward `[chosen; rejected]` once and sum each completion's token log-probs. `layout`: the batch's
        shared-prompt layout ([`_pair_layout`]), used when `model` can take it. `request`: other [`FusedHeadRequest`]
        fields (the policy asks for the MoE aux loss and the WPO statistics)."""
        scored = None
        if layout is not None:  # one row per prompt (trl/ops/shared_prompt.py), scored as one per sequence
            lm = causal_lm(self.accelerator.unwrap_model(model))
            if can_share(lm):  # the policy, and a separate reference model
                scored = score_shared(model, lm, layout, **request)
        if scored is None:  # one padded row per sequence (or the collator's flat row)
            layout = {k: batch[k] for k in _FLAT_KEYS} if "sequence_index" in batch else None
            if self._is_vlm:  # the processor's image tensors go with the ids
                model = functools.partial(model, **vision.image_inputs(self._model_input_names, batch))
            scored = completion_logps(
                model, batch["input_ids"], batch.get("attention_mask"), batch["completion_mask"], layout, **request
            )
        token_logps, mask, lengths, outputs = scored.token_logps, scored.mask, scored.lengths, scored.outputs
        if self.args.ld_alpha is not None:
            half = mask.shape[0] // 2
            shared = torch.minimum(lengths[:half], lengths[half:]).repeat(2)
            sequence = ld_logps(token_logps, mask, shared, self.args.ld_alpha)
        else:
            sequence = token_logps.sum(-1)
        chosen, rejected = sequence.chunk(2)
        return {"chosen": chosen, "rejected": rejected, "lengths": lengths, "token_logps": token_logps,
                "mask": mask, "log_sum_sq_probs": scored.log_sum_sq_probs, "outputs": outputs}

    def _pair_layout(self, batch: dict):
        """The batch's shared-prompt layout, built once for the policy and the reference forward, or None where it
        does not apply (sharing off, a flat padding-free batch, a batch not in the collator's layout, prompts that
        differ, a layout that would not pay)."""
        if not self._share_prompts or "sequence_index" in batch or "attention_mask" not in batch:
            return None
        parts = split_sequences(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        return None if parts is None else share_prompts(*parts)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, policy, _ = self._loss(model, inputs, num_items_in_batch)
        return (loss, policy["outputs"]) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation step: the loss (preference batches have no `labels`, on which `Trainer.prediction_step` would
        wait before computing one), and for `compute_metrics` the `(B, 2)` implicit rewards `[chosen, rejected]` with
        labels of zeros (the preferred column), as in [`RewardTrainer`]."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, _, metrics = self._loss(model, inputs)
        loss = loss.detach()
        self._record_eval_loss(loss, inputs)
        if prediction_loss_only:
            return loss, None, None
        logits = torch.stack([metrics["chosen_rewards"], metrics["rejected_rewards"]], dim=1).detach()
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return loss, logits, labels

    def _loss(self, model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, dict, dict]:
        """Forward, the pure DPO loss, metrics: returns the reduced loss, the policy's scores and the loss metrics."""
        mode = "train" if model.training else "eval"
        layout = self._pair_layout(inputs)
        policy = self._sequence_logps(model, inputs, layout=layout, **self._policy_request)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            with self._reference() as ref:
                ref_logps = self._sequence_logps(ref, inputs, layout=layout)
            ref_chosen, ref_rejected = ref_logps["chosen"], ref_logps["rejected"]
        chosen_lengths, rejected_lengths = policy["lengths"].chunk(2)
        pairs = PreferenceLogps(
            chosen_logps=policy["chosen"], rejected_logps=policy["rejected"], ref_chosen_logps=ref_chosen,
            ref_rejected_logps=ref_rejected, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
        )
        if "bco_pair" in self.args.loss_type:
            pairs.bco_delta = self._bco_delta(pairs, mode)
        losses, metrics = dpo_loss(pairs, self.args.loss_type, self.args.loss_weights, self._loss_params)
        if self.args.use_weighting:  # aligned WPO weights (§3 of the paper): on-policy pairs weigh about 1
            weights = wpo_weights(policy["token_logps"], policy["mask"], policy["log_sum_sq_probs"]).chunk(2)
            losses = losses * wpo_pair_weights(*weights)
        if mode == "train" and num_items_in_batch is not None:
            loss = losses.sum() * token_weight(num_items_in_batch, self._dp_world_size())
        else:
            loss = losses.mean()
        loss = self._with_aux_loss(loss, policy["outputs"].aux_loss, mode)
        self._record(mode, inputs, policy, metrics)
        return loss, policy, metrics

    def _bco_delta(self, pairs: PreferenceLogps, mode: str) -> torch.Tensor:
        """BCO's delta: the running mean of every implicit reward seen in training so far."""
        if mode == "train":  # every rank folds in every rank's rewards, so all use the same delta
            n = 2 * pairs.chosen_logps.shape[0]
            batch = torch.stack([bco_batch_reward_mean(pairs, self.args.beta).detach().double() * n,
                                 torch.tensor(float(n), dtype=torch.float64, device=pairs.chosen_logps.device)])
            if self.accelerator.num_processes > 1:
                batch = self.accelerator.reduce(batch, reduction="sum")
            total, count = batch.tolist()
            self._bco_rewards = [self._bco_rewards[0] + total, self._bco_rewards[1] + count]
        total, count = self._bco_rewards
        return torch.tensor(total / count if count else 0.0, device=pairs.chosen_logps.device)

    def _record(self, mode: str, inputs: dict, policy: dict, metrics: dict) -> None:
        self._record_tokens(mode, inputs)
        outputs, mask = policy["outputs"], policy["mask"]
        half = mask.shape[0] // 2
        n_chosen = int(mask[:half].sum())
        self._metrics.add(mode, "entropy", outputs.entropy.sum(), outputs.entropy.numel())
        self._metrics.add(mode, "mean_token_accuracy", outputs.correct[:n_chosen].sum(), n_chosen)
        if getattr(outputs, "mean_logits", None) is not None:
            self._metrics.add(mode, "logits/chosen", outputs.mean_logits[:n_chosen].sum(), n_chosen)
            self._metrics.add(mode, "logits/rejected", outputs.mean_logits[n_chosen:].sum(),
                              outputs.mean_logits.numel() - n_chosen)
        chosen_rewards, rejected_rewards = metrics["chosen_rewards"], metrics["rejected_rewards"]
        b = chosen_rewards.numel()
        self._metrics.add(mode, "rewards/chosen", chosen_rewards.sum(), b)
        self._metrics.add(mode, "rewards/rejected", rejected_rewards.sum(), b)
        self._metrics.add(mode, "rewards/accuracies", (chosen_rewards > rejected_rewards).sum(), b)
        self._metrics.add(mode, "rewards/margins", (chosen_rewards - rejected_rewards).sum(), b)
        self._metrics.add(mode, "logps/chosen", policy["chosen"].detach().sum(), b)
        self._metrics.add(mode, "logps/rejected", policy["rejected"].detach().sum(), b)
