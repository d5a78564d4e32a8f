"""Configuration of the CPO trainer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ...losses.cpo import CPO_LENGTH_NORMALISED, validate_cpo_loss_config
from .._preference import _LegacyPreferenceConfig


@dataclass
class CPOConfig(_LegacyPreferenceConfig):
    r"""
    Configuration for [`CPOTrainer`], with the reference's fields and defaults.

    Parameters:
        loss_type (`str`, *optional*, defaults to `"sigmoid"`): `sigmoid`, `hinge`, `ipo` or `simpo`
            (`trl.losses.cpo`). `ipo` and `simpo` compare length-averaged log-probs, the others summed ones.
        beta (`float`, *optional*, defaults to `0.1`): β, the inverse temperature (τ for IPO).
        label_smoothing (`float`, *optional*, defaults to `0.0`): conservative label smoothing ε in [0, 0.5)
            (`sigmoid`, `simpo`).
        cpo_alpha (`float`, *optional*, defaults to `1.0`): weight of the NLL of the chosen completion (CPO's
            behaviour-cloning term); 0 gives pure SimPO.
        simpo_gamma (`float`, *optional*, defaults to `0.5`): SimPO's target reward margin γ (`simpo` only).
        alpha (`float`, *optional*, defaults to `0.0`): AlphaPO's reward shape `(1 − p^{−α})/α`; 0 keeps log p.
        max_length, max_prompt_length, truncation_mode, disable_dropout, padding_value, label_pad_token_id,
        max_completion_length, generate_during_eval, is_encoder_decoder, dataset_num_proc: as [`ORPOConfig`].
    """

    loss_type: str = field(default="sigmoid", metadata={"help": "sigmoid, hinge, ipo or simpo."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing in [0, 0.5)."})
    cpo_alpha: float = field(default=1.0, metadata={"help": "Weight of the NLL of the chosen completion."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO target reward margin."})
    alpha: float = field(default=0.0, metadata={"help": "AlphaPO reward-shape parameter (0: off)."})

    def __post_init__(self):
        validate_cpo_loss_config(self.loss_type, self.beta, self.label_smoothing)
        if self.cpo_alpha < 0:
            raise ValueError(f"cpo_alpha (the NLL weight) must be >= 0; got {self.cpo_alpha}.")
        if self.label_smoothing > 0 and self.loss_type in ("hinge", "ipo"):
            warnings.warn(f"label_smoothing={self.label_smoothing} is ignored by loss_type={self.loss_type!r}.",
                          stacklevel=3)
        if self.simpo_gamma != 0.5 and self.loss_type != "simpo":
            warnings.warn(f"simpo_gamma is only read by loss_type='simpo'; loss_type is {self.loss_type!r}.",
                          stacklevel=3)
        if self.alpha != 0.0 and self.loss_type not in CPO_LENGTH_NORMALISED:
            warnings.warn(f"alpha={self.alpha} (AlphaPO) with loss_type={self.loss_type!r} shapes summed log-probs: "
                          "exp(-alpha * log p) overflows for long completions. AlphaPO is meant with "
                          "loss_type='simpo' (length-averaged log-probs).", stacklevel=3)
        super().__post_init__()
