"""Callbacks."""

from __future__ import annotations

import torch
from transformers import TrainerCallback


class SyncRefModelCallback(TrainerCallback):
    """TR-DPO reference syncing (https://huggingface.co/papers/2404.09656): every `args.ref_model_sync_steps`
    optimiser steps, `ref <- alpha * policy + (1 - alpha) * ref` with `alpha = args.ref_model_mixup_alpha`.

    Args:
        ref_model (`torch.nn.Module`): the reference model (same architecture as the policy).
        accelerator (`accelerate.Accelerator`): used to unwrap the policy.

    Example:
        ```python
        >>> trainer.add_callback(SyncRefModelCallback(ref_model=trainer.ref_model, accelerator=trainer.accelerator))
        ```
    """

    def __init__(self, ref_model: torch.nn.Module, accelerator):
        self.ref_model = ref_model
        self.accelerator = accelerator

    @staticmethod
    @torch.no_grad()
    def sync_target_model(model: torch.nn.Module, target_model: torch.nn.Module, alpha: float) -> None:
        for target, source in zip(target_model.parameters(), model.parameters()):
            target.mul_(1.0 - alpha).add_(source.detach().to(target.dtype), alpha=alpha)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step % args.ref_model_sync_steps == 0:
            policy = self.accelerator.unwrap_model(model)
            self.sync_target_model(policy, self.accelerator.unwrap_model(self.ref_model), args.ref_model_mixup_alpha)
