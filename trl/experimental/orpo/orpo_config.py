"""Configuration of the ORPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._preference import _LegacyPreferenceConfig


@dataclass
class ORPOConfig(_LegacyPreferenceConfig):
    r"""
    Configuration for [`ORPOTrainer`], with the reference's fields and defaults.

    Parameters:
        beta (`float`, *optional*, defaults to `0.1`): λ of the paper, the weight of the odds-ratio term added to the
            NLL of the chosen completion (eq. 6).
        max_length (`int` or `None`, *optional*, defaults to `1024`), max_prompt_length (`int` or `None`, *optional*,
        defaults to `512`), truncation_mode (`str`, *optional*, defaults to `"keep_end"`): truncation (see
            `trl/experimental/_preference.py`).
        disable_dropout (`bool`, *optional*, defaults to `True`), padding_value, label_pad_token_id,
        max_completion_length, generate_during_eval, is_encoder_decoder, dataset_num_proc: as the reference.
    """

    beta: float = field(default=0.1, metadata={"help": "lambda: weight of the odds-ratio term."})

    def __post_init__(self):
        if not self.beta >= 0:
            raise ValueError(f"beta (ORPO's lambda) must be >= 0; got {self.beta}.")
        super().__post_init__()
