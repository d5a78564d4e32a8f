"""Contrastive Preference Optimization (CPO), https://huggingface.co/papers/2401.08417, with SimPO
(https://huggingface.co/papers/2405.14734) and AlphaPO (https://huggingface.co/papers/2501.03884).

One model and no reference: the loss is the pure preference term of `loss_type` (`trl.losses.cpo`) plus `cpo_alpha`
times the NLL of the chosen completion. Data path, collator, forward and reductions are shared with ORPO
(`trl/experimental/_preference.py`).
"""

from __future__ import annotations

from ...losses.cpo import CPO_LENGTH_NORMALISED, CPOLossParams, cpo_loss
from .._preference import _ReferenceFreePreferenceTrainer
from .cpo_config import CPOConfig


class CPOTrainer(_ReferenceFreePreferenceTrainer):
    """Trainer for CPO / SimPO / AlphaPO. Arguments as [`ORPOTrainer`], with a [`CPOConfig`].

    Logged metrics: `loss`, `nll_loss`, `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
    `rewards/margins`, `logps/chosen`, `logps/rejected` (averages for `ipo`/`simpo`, sums otherwise),
    `logits/chosen`, `logits/rejected`, `entropy`, `num_tokens`.

    Example:
        ```python
        >>> from trl.experimental.cpo import CPOConfig, CPOTrainer
        >>> args = CPOConfig(output_dir="out", loss_type="simpo", cpo_alpha=0.0, beta=2.0)
        >>> trainer = CPOTrainer(model="path/to/model", args=args, train_dataset=prefs)
        >>> trainer.train()
        ```
    """

    _config_class = CPOConfig
    _tag_names = ["trl", "cpo"]
    _name = "CPO"

    def _uses_averages(self) -> bool:
        return self.args.loss_type in CPO_LENGTH_NORMALISED

    def _pair_loss(self, scores: dict):
        a = self.args
        chosen, rejected = scores["averages"] if self._uses_averages() else scores["sums"]
        params = CPOLossParams(beta=a.beta, label_smoothing=a.label_smoothing, simpo_gamma=a.simpo_gamma,
                               alpha=a.alpha)
        losses, metrics = cpo_loss(chosen, rejected, a.loss_type, params)
        return losses, metrics, a.cpo_alpha
