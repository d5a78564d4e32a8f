"""Callbacks."""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)


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


class ReportCallback(TrainerCallback):
    """Write a report of the run into `<output_dir>/report/` at each save and at the end of training, and print a
    short summary at the end (see `trl.report`): `log_history.json`, one PNG per key metric (with matplotlib) and,
    for online trainers, `completions.html` with the last sampled completions and their rewards. Only the main
    process writes and prints.

    The completions come from the online trainers' table of the last generation batch (filled when
    `log_completions=True`), read through `trainer`; without a trainer the report has everything else.

    Args:
        trainer (`transformers.Trainer`, *optional*): the trainer whose completions to show; [`attach`] sets it.
        max_completions (`int`, *optional*, defaults to `256`): how many of the newest completions the page keeps.

    Example:
        ```python
        >>> trainer = GRPOTrainer(model, reward_funcs=..., args=GRPOConfig(log_completions=True), train_dataset=...)
        >>> ReportCallback.attach(trainer)  # or `callbacks=[ReportCallback()]` then attach
        >>> trainer.train()  # writes <output_dir>/report/ and prints the summary
        ```
    """

    def __init__(self, trainer=None, max_completions: int = 256):
        self.trainer = trainer
        self.max_completions = max_completions
        self.completions: list[dict] = []  # newest first
        self._last_table_id: int | None = None
        self._start_time: float | None = None

    @classmethod
    def attach(cls, trainer) -> ReportCallback:
        """Bind the `ReportCallback` the trainer already has (given in `callbacks=`) to it, or add one.

        Example:
            ```python
            >>> callback = ReportCallback.attach(trainer)
            ```
        """
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, cls):
                callback.trainer = trainer
                return callback
        callback = cls(trainer)
        trainer.add_callback(callback)
        return callback

    def _collect_completions(self) -> None:
        table = getattr(self.trainer, "_completions_table", None)
        if table is None or id(table) == self._last_table_id:
            return
        from ..report import table_rows

        self._last_table_id = id(table)
        self.completions = (table_rows(table)[::-1] + self.completions)[: self.max_completions]

    def on_train_begin(self, args, state, control, **kwargs):
        import time

        self._start_time = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self._collect_completions()

    def on_log(self, args, state, control, **kwargs):
        self._collect_completions()  # an evaluation's table, too

    def _write(self, args, state) -> dict | None:
        if not state.is_world_process_zero or not args.output_dir:
            return None
        from ..report import write_report

        try:
            return write_report(args.output_dir, state.log_history, self.completions)
        except OSError as error:  # a report is never worth stopping a run for
            logger.warning(f"Could not write the run report into {args.output_dir}: {error}")
            return None

    def on_save(self, args, state, control, **kwargs):
        self._write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        written = self._write(args, state)
        if written is None:
            return
        from ..report import run_summary

        history = state.log_history
        if self._start_time is not None and not any("train_runtime" in entry for entry in history):
            import time

            history = [*history, {"train_runtime": time.time() - self._start_time}]
        summary = run_summary(history, state.global_step, written["folder"])
        if written["note"]:
            summary += f"\n  {written['note']}"
        print(summary)
