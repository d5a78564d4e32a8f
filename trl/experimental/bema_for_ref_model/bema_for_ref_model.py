"""DPO with a reference that follows the policy's bias-corrected EMA (BEMA, https://huggingface.co/papers/2508.00180).

`BEMACallback` is the stable callback (`trl.trainer.callbacks.BEMACallback`: the average is computed there) with one
addition: with `update_ref_model=True` it copies the current BEMA weights into the trainer's reference model every
`ref_model_update_freq` steps from step `ref_model_update_after` on. `DPOTrainer` is the stable DPO trainer whose
callback events also carry `ref_model`, which is how the callback reaches the reference.
"""

from __future__ import annotations

from transformers.trainer_callback import CallbackHandler

from ...trainer.callbacks import BEMACallback as _BEMACallback
from ...trainer.dpo_trainer import DPOTrainer as _DPOTrainer


class BEMACallback(_BEMACallback):
    """[`trl.BEMACallback`] that can also drive the reference model of [`DPOTrainer`] below.

    Args:
        update_ref_model (`bool`, *optional*, defaults to `False`): copy the BEMA weights into `ref_model`.
        ref_model_update_freq (`int`, *optional*, defaults to `400`): steps between two copies.
        ref_model_update_after (`int`, *optional*, defaults to `0`): no copy before this step.
        **kwargs: the arguments of [`trl.BEMACallback`] (`update_freq`, `ema_power`, `bias_power`, `lag`,
            `update_after`, `multiplier`, `min_ema_multiplier`, `device`).

    Example:
        ```python
        >>> from trl.experimental.bema_for_ref_model import BEMACallback, DPOTrainer
        >>> bema = BEMACallback(update_ref_model=True, update_freq=50, ref_model_update_freq=200)
        >>> trainer = DPOTrainer(model, args=config, train_dataset=prefs, callbacks=[bema])
        ```
    """

    def __init__(self, update_freq: int = 400, ema_power: float = 0.5, bias_power: float = 0.2, lag: int = 10,
                 update_after: int = 0, multiplier: float = 1.0, min_ema_multiplier: float = 0.0, device: str = "cpu",
                 update_ref_model: bool = False, ref_model_update_freq: int = 400, ref_model_update_after: int = 0):
        super().__init__(update_freq=update_freq, ema_power=ema_power, bias_power=bias_power, lag=lag,
                         update_after=update_after, multiplier=multiplier, min_ema_multiplier=min_ema_multiplier,
                         device=device)
        if ref_model_update_freq < 1:
            raise ValueError(f"`ref_model_update_freq` must be at least 1; got {ref_model_update_freq}.")
        if ref_model_update_after < 0:
            raise ValueError(f"`ref_model_update_after` must be 0 or more; got {ref_model_update_after}.")
        self.update_ref_model = update_ref_model
        self.ref_model_update_freq = ref_model_update_freq
        self.ref_model_update_after = ref_model_update_after
        self.ref_model_updates = 0  # how many times the reference took the BEMA weights

    def on_train_begin(self, args, state, control, model=None, ref_model=None, **kwargs):
        if self.update_ref_model and ref_model is None:  # the stable trainers pass no `ref_model` to callbacks
            raise ValueError(
                "BEMACallback(update_ref_model=True) got no `ref_model` from the trainer, so the reference would never "
                "be updated. Use `trl.experimental.bema_for_ref_model.DPOTrainer` (its callbacks receive `ref_model`) "
                "with a separate reference model."
            )
        super().on_train_begin(args, state, control, model=model, **kwargs)

    def on_step_end(self, args, state, control, model=None, ref_model=None, **kwargs):
        super().on_step_end(args, state, control, model=model, **kwargs)
        step = state.global_step
        if (self.update_ref_model and ref_model is not None and step >= self.ref_model_update_after
                and step % self.ref_model_update_freq == 0 and self.apply_to(ref_model)):
            self.ref_model_updates += 1


class _CallbackHandlerWithRefModel(CallbackHandler):
    """The trainer's callback handler, adding `ref_model` to every event's keyword arguments."""

    def __init__(self, handler: CallbackHandler, trainer):
        self.__dict__.update(handler.__dict__)
        self._trainer = trainer

    def call_event(self, event, args, state, control, **kwargs):
        return super().call_event(event, args, state, control, ref_model=self._trainer.ref_model, **kwargs)


class DPOTrainer(_DPOTrainer):
    """[`trl.DPOTrainer`] whose callbacks receive `ref_model`, so that [`BEMACallback`] with `update_ref_model=True`
    can move the reference. Arguments as the stable trainer.

    Raises:
        `ValueError`: a `BEMACallback(update_ref_model=True)` without a separate reference model (PEFT, where the
            reference is the policy without adapters, or `precompute_ref_log_probs`, where it is gone).
    """

    _tag_names = ["trl", "dpo", "bema"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        drives_ref = any(isinstance(c, BEMACallback) and c.update_ref_model for c in self.callback_handler.callbacks)
        if drives_ref and self.ref_model is None:
            raise ValueError(
                "BEMACallback(update_ref_model=True) needs a separate reference model to update; this DPOTrainer has "
                "none (PEFT uses the policy without its adapters; precompute_ref_log_probs drops it). Turn those off "
                "or pass a `ref_model`."
            )
        self.callback_handler = _CallbackHandlerWithRefModel(self.callback_handler, self)
