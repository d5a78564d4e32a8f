"""Odds Ratio Preference Optimization (ORPO), https://huggingface.co/papers/2403.07691.

One model and no reference: the loss is the NLL of the chosen completion plus `beta` (λ) times the odds-ratio term
`−log σ(log(odds_c / odds_r))` on length-averaged log-probs (`trl.losses.orpo`). Data path, collator, forward and
reductions are shared with CPO (`trl/experimental/_preference.py`).
"""

from __future__ import annotations

from ...losses.orpo import orpo_loss
from .._preference import _ReferenceFreePreferenceTrainer
from .orpo_config import ORPOConfig


class ORPOTrainer(_ReferenceFreePreferenceTrainer):
    """Trainer for ORPO.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`): hub id / local folder, or a model object.
        args ([`ORPOConfig`], *optional*): configuration; defaults to `ORPOConfig(output_dir="<model>-ORPO")`.
        data_collator (*optional*): defaults to `DataCollatorForPreference` (`trl.data.collators`).
        train_dataset: preference rows (`prompt`/`chosen`/`rejected`, or `chosen`/`rejected` with an implicit
            prompt), standard or conversational.
        eval_dataset (*optional*): same formats.
        processing_class (*optional*): the tokenizer; loaded from `model` when omitted.
        callbacks, optimizers, compute_metrics: as in `transformers.Trainer` (`compute_metrics` receives the `(N, 2)`
            rewards `β·logp̄` of chosen and rejected, labels 0).
        peft_config (`peft.PeftConfig`, *optional*): train an adapter.

    Logged metrics: `loss`, `nll_loss`, `log_odds_ratio` (mean `log σ(log odds)`), `log_odds_chosen` (mean log
    odds), `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`,
    `logps/rejected` (average token log-probs), `logits/chosen`, `logits/rejected`, `entropy`, `num_tokens`.

    Example:
        ```python
        >>> from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        >>> trainer = ORPOTrainer(model="path/to/model", args=ORPOConfig(output_dir="out"), train_dataset=prefs)
        >>> trainer.train()
        ```
    """

    _config_class = ORPOConfig
    _tag_names = ["trl", "orpo"]
    _name = "ORPO"
    _extra_pair_metrics = {"log_sigmoid": "log_odds_ratio", "log_odds": "log_odds_chosen"}

    def _pair_loss(self, scores: dict):
        chosen, rejected = scores["averages"]
        losses, metrics = orpo_loss(chosen, rejected, beta=self.args.beta)
        return losses, metrics, 1.0  # ORPO always adds the NLL of the chosen completion
