"""Checks that stop a run which would learn nothing, and say how to fix it (docs/design.md §4).

Each check either raises `TrainingWillNotLearnError` (when the config's `guards` is on, the default) or warns. The
messages say what was found, in numbers, and what to change. Each guard has a name ([`GUARDS`]): the config's
`ignore_guards` turns single guards into warnings, `guards=False` all of them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

# name -> what the guard stops (the names `ignore_guards` accepts)
GUARDS = {
    "loss_masks": "rows with no token that enters the loss (SFT)",
    "truncation": "most rows lose every trained token to truncation at max_length (SFT)",
    "eos_trained": "no row trains the end-of-turn token (SFT)",
    "identical_pairs": "preference pairs with identical chosen and rejected completions (DPO, reward)",
    "prompts_fit": "most rows have a prompt that fills max_length (DPO, KTO)",
    "finite_loss": "a NaN/inf training loss",
    "gradient_flows": "an exactly zero gradient with a non-zero loss for several steps",
    "optimizer_memory": "gradients and optimiser states that cannot fit in the device's free memory",
    "no_reward": "a generation batch in which every reward is NaN/None (online trainers)",
    "no_signal": "generation batches in a row with no group that teaches anything (online trainers)",
    "step_loss_tokens": "an optimiser step with no completion token in the loss (online trainers)",
}


class TrainingWillNotLearnError(ValueError):
    """Raised when a run, as configured, would silently learn nothing or learn the wrong thing."""


@dataclass(frozen=True)
class Policy:
    """Which guards stop the run: all of them when `enabled` (the config's `guards`), except those named in `ignore`
    (the config's `ignore_guards`), which only warn. Truthy as `enabled`, so it stands wherever a bool did.

    Example:
        ```python
        >>> policy = Policy(ignore=frozenset({"prompts_fit"}))
        >>> policy.enforces("prompts_fit"), policy.enforces("finite_loss")
        (False, True)
        ```
    """

    enabled: bool = True
    ignore: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return self.enabled

    def enforces(self, name: str | None) -> bool:
        return self.enabled and name not in self.ignore


def policy(args) -> Policy:
    """The guard policy of a trainer config (`guards`, `ignore_guards`; either may be absent)."""
    return Policy(bool(getattr(args, "guards", True)), frozenset(getattr(args, "ignore_guards", None) or ()))


def check_guard_names(names) -> None:
    """Every name must be one of [`GUARDS`]; the error lists them."""
    unknown = [name for name in names or () if name not in GUARDS]
    if unknown:
        listed = "; ".join(f"{name}: {what}" for name, what in GUARDS.items())
        raise ValueError(f"Unknown guard name(s) in `ignore_guards`: {unknown}. The guards are: {listed}.")


def report(problem: str, fix: str, enforce: bool | Policy, name: str | None = None) -> None:
    """Raise or warn with `problem` and `fix`, plus how to opt out. `enforce` is a bool or a [`Policy`], which is
    asked about the guard `name` (one of [`GUARDS`])."""
    message = f"{problem} {fix}"
    stop = enforce.enforces(name) if isinstance(enforce, Policy) else bool(enforce)
    if stop:
        opt_out = f"set `ignore_guards=[{name!r}]` (this check only) or `guards=False`" if name else "set `guards=False`"
        raise TrainingWillNotLearnError(f"{message} (To train anyway, {opt_out}.)")
    if name and isinstance(enforce, Policy) and enforce.enabled:
        message += f" (Only a warning: {name!r} is in ignore_guards.)"
    warnings.warn(message, stacklevel=3)


def check_loss_masks(name: str, n_rows: int, empty_rows: list[int], enforce: bool) -> None:
    """Rows whose loss mask is empty before any truncation: nothing in them would be trained.

    Example:
        ```python
        >>> check_loss_masks("train", 10, [3], enforce=False)  # warns: 1 of 10 rows
        ```
    """
    if not empty_rows:
        return
    report(
        f"{len(empty_rows)} of {n_rows} {name} rows have no token that enters the loss (e.g. rows {empty_rows[:5]}): "
        "an empty completion, no assistant turn, or a mask that covers nothing.",
        "Fix or filter those rows, or check completion_only_loss / assistant_only_loss. With guards=False they are "
        "dropped.",
        enforce,
        "loss_masks",
    )


def _drop_or_stop(affected: int, n_rows: int, problem: str, fix: str, dropped: str, enforce, name: str) -> None:
    """The rule for rows a limit leaves with nothing to learn from: when some are, they are dropped with the warning
    `dropped` (the reference drops them silently); when most are (more than half), the limit is wrong for this data
    and the run stops ([`report`]: a warning with `guards=False` or `name` in `ignore_guards`)."""
    if 2 * affected > n_rows:
        report(problem, fix, enforce, name)
    else:
        warnings.warn(dropped, stacklevel=4)


def check_truncation(name: str, n_rows: int, cut_rows: list[int], longest_prompt: int, max_length: int, enforce: bool):
    """Rows whose every loss token lies beyond `max_length` (typically a prompt longer than the limit): dropped with a
    warning when some are, the run stopped when most are (`_drop_or_stop`). The caller drops them."""
    if not cut_rows:
        return
    cut = (f"{len(cut_rows)} of {n_rows} {name} rows lose every trained token to truncation at max_length={max_length} "
           f"(e.g. rows {cut_rows[:5]}; the longest prompt has {longest_prompt} tokens)")
    _drop_or_stop(
        len(cut_rows), n_rows, f"{cut}.",
        f"Raise max_length above {longest_prompt}, or filter those rows. With guards=False they are dropped.",
        f"{cut}: they are dropped. Raise max_length above {longest_prompt} to keep them.", enforce, "truncation",
    )


def check_eos_trained(name: str, n_rows: int, rows_without_eos: int, eos_token: str, enforce: bool) -> None:
    """No row trains the end-of-turn token: the model would never learn to stop."""
    if n_rows and rows_without_eos == n_rows:
        report(
            f"None of the {n_rows} {name} rows trains the end-of-turn token {eos_token!r} (it is masked out or cut off "
            "by truncation), so the model would never learn to stop generating.",
            "Use a chat template whose assistant turn ends with the eos token (or set SFTConfig.eos_token to the "
            "template's end-of-turn token), or raise max_length.",
            enforce,
            "eos_trained",
        )


def check_generation_config_pad(model) -> None:
    """Warn when the model's generation config already has pad == eos (it would be saved with the checkpoint)."""
    config = getattr(model, "generation_config", None)
    if config is None or config.pad_token_id is None:
        return
    eos = config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if config.pad_token_id in eos:
        warnings.warn(
            f"The model's generation_config has pad_token_id == eos_token_id ({config.pad_token_id}); checkpoints saved "
            "from this run keep it, and some evaluation stacks then drop or mis-handle the eos token. Set "
            "`model.generation_config.pad_token_id` to a dedicated pad token (or None) before training.",
            stacklevel=3,
        )


def check_finite_loss(loss: float, step: int, enforce: bool, since_last_log: bool = False) -> None:
    """Stop at a NaN/inf loss instead of training on garbage."""
    if not math.isfinite(loss):
        what = (f"A training loss was NaN or inf between the last log and step {step}." if since_last_log
                else f"The training loss is {loss} at step {step}.")
        report(
            what,
            "Lower the learning rate, check the data for empty or corrupt rows, or train in float32 / bf16 instead "
            "of fp16.",
            enforce,
            "finite_loss",
        )


def check_gradient_flows(zero_steps: int, patience: int, enforce: bool, step: int | None = None) -> None:
    """`zero_steps` optimiser steps in a row (`patience` or more) had an exactly zero gradient while the loss was not
    zero: the weights cannot move, though there is something to learn."""
    if zero_steps < patience:
        return
    where = f" (up to step {step})" if step is not None else ""
    report(
        f"The gradient was exactly zero for {zero_steps} optimiser steps in a row{where} while the loss was not, so "
        "the weights do not move.",
        "Check that the trainable parameters are part of the loss (adapters attached, nothing frozen by mistake) "
        "and that some tokens enter the loss; a gradient that collapses to zero later in a run usually means the "
        "learning rate is too high (the model saturated): lower it.",
        enforce,
        "gradient_flows",
    )


def check_loss_settled(zero_steps: int, patience: int, step: int | None = None) -> None:
    """`zero_steps` optimiser steps in a row had a loss and a gradient that are both exactly zero: those batches have
    nothing left to learn (a margin loss whose margins are met). A warning, never a stop: later batches may still
    teach."""
    if zero_steps < patience:
        return
    where = f" (up to step {step})" if step is not None else ""
    warnings.warn(
        f"The loss and its gradient were exactly zero for {zero_steps} optimiser steps in a row{where}: those batches "
        "have nothing left to learn (e.g. a hinge or margin loss whose margins are all met). If the loss should not "
        "be zero, check the loss options and that some tokens enter the loss.",
        stacklevel=3,
    )


class StepWatch:
    """Watches every optimiser step for a NaN/inf loss and for an exactly zero gradient, without a host sync per step:
    the flags are kept as tensors on the device and read by [`check`] when the trainer logs (which syncs anyway). The
    first `patience` steps are checked at once, so a run that is broken from the start stops before its first log.

    A zero gradient with a non-zero loss (`patience` steps in a row) stops the run: nothing moves though there is
    something to learn. A zero gradient with a zero loss is a warning: the batches are already learned.

    Example:
        ```python
        >>> watch = StepWatch(patience=3)
        >>> for step in range(1, 4):
        ...     watch.record_loss(torch.tensor(2.3))
        ...     watch.record_gradient(torch.tensor(0.0), step, enforce=False)  # warns at step 3
        ```
    """

    def __init__(self, patience: int = 3):
        self.patience = patience
        self._loss_nonzero = None  # some micro-batch of the current optimiser step had a non-zero loss
        self._nonfinite = None  # a NaN/inf loss since the last check
        # optimiser steps in a row with a zero gradient (non-zero / zero loss), and the longest since the last check
        self._streaks = {"stuck": None, "settled": None}
        self._longest = {"stuck": None, "settled": None}
        self._step = 0

    def record_loss(self, loss: torch.Tensor) -> None:
        loss = loss.detach()
        bad = ~torch.isfinite(loss).all()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        nonzero = (loss != 0).any()
        self._loss_nonzero = nonzero if self._loss_nonzero is None else self._loss_nonzero | nonzero

    def record_gradient(self, norm: torch.Tensor | float, step: int, enforce: bool) -> None:
        zero = torch.as_tensor(norm).detach() == 0
        # a step whose loss was not seen counts as one with a loss (the stricter reading)
        loss_nonzero = self._loss_nonzero if self._loss_nonzero is not None else torch.ones_like(zero)
        self._loss_nonzero = None
        loss_nonzero = loss_nonzero.to(zero.device)
        for key, hit in (("stuck", zero & loss_nonzero), ("settled", zero & ~loss_nonzero)):
            streak = self._streaks[key]
            streak = hit.long() if streak is None else (streak + 1) * hit
            longest = self._longest[key]
            self._streaks[key] = streak
            self._longest[key] = streak if longest is None else torch.maximum(longest, streak)
        self._step = step
        if step <= self.patience:
            self.check(enforce)

    def check(self, enforce: bool) -> None:
        """Read the flags (one host sync) and stop, or warn, on a NaN/inf loss or `patience` zero-gradient steps."""
        if self._nonfinite is not None:
            nonfinite, self._nonfinite = bool(self._nonfinite), None
            if nonfinite:
                check_finite_loss(float("nan"), self._step, enforce, since_last_log=True)
        if self._longest["stuck"] is not None:
            longest = {key: int(value) for key, value in self._longest.items()}
            self._longest = dict(self._streaks)  # a streak that goes on is counted again at the next check
            check_gradient_flows(longest["stuck"], self.patience, enforce, self._step)
            check_loss_settled(longest["settled"], self.patience, self._step)


def check_optimizer_memory(trainable: int, trainable_bytes: int, states: int, free_bytes: int, enforce: bool) -> None:
    """Pre-flight: the gradients and optimiser states of the trainable parameters must fit in the accelerator's free
    memory (the weights are already there), or the first optimiser step runs out of memory.

    Args:
        trainable (`int`): number of trainable parameters.
        trainable_bytes (`int`): their size in bytes (a gradient, and each optimiser state, is as large).
        states (`int`): optimiser states per parameter (2 for AdamW).
        free_bytes (`int`): free memory of the device.

    Example:
        ```python
        >>> check_optimizer_memory(10**9, 4 * 10**9, 2, 8 * 2**30, enforce=False)  # warns: 11.2 GiB needed, 8.0 free
        ```
    """
    need = trainable_bytes * (1 + states)
    if need <= free_bytes:
        return
    report(
        f"The gradients and optimiser states of the {trainable / 1e6:,.1f}M trainable parameters need "
        f"{need / 2**30:.1f} GiB (1 gradient + {states} optimiser states, each the size of the parameters) but the "
        f"device has {free_bytes / 2**30:.1f} GiB free with the model loaded, so the first optimiser step would run "
        "out of memory (activations come on top).",
        "Train fewer parameters (peft_config=LoraConfig(...)), use an 8-bit or factored optimiser (optim="
        "'adamw_bnb_8bit' / 'adafactor'), or shard the states over several devices (FSDP, DeepSpeed ZeRO).",
        enforce,
        "optimizer_memory",
    )


def check_prompts_fit(
    name: str, prompts: list[list[int]], max_length: int | None, enforce: bool | Policy, verb: str
) -> list[int]:
    """Rows whose prompt alone fills `max_length`: no completion token would be left to `verb` (compare, score).

    As for SFT rows cut to nothing: when some rows are affected they are dropped with a warning (the reference drops
    them silently); when most are (more than half), `max_length` is wrong for this data and the run stops (a warning
    with `guards=False` or `"prompts_fit"` in `ignore_guards`). Returns those rows, for the caller to drop.

    Example:
        ```python
        >>> check_prompts_fit("train", [[1] * 9, [1] * 3, [1] * 4], 8, enforce=True, verb="compare")  # warns: 1 of 3
        [0]
        ```
    """
    if max_length is None:
        return []
    no_room = [i for i, p in enumerate(prompts) if len(p) >= max_length]
    if not no_room:
        return []
    longest = max(len(prompts[i]) for i in no_room)
    problem = (
        f"{len(no_room)} of {len(prompts)} {name} rows have a prompt of at least max_length={max_length} tokens "
        f"(e.g. rows {no_room[:5]}, longest {longest}): no completion token would be left to {verb}."
    )
    _drop_or_stop(len(no_room), len(prompts), problem,
                  "Raise max_length or shorten/filter those prompts. With guards=False they are dropped.",
                  f"{problem} They are dropped; raise max_length above {longest} to keep them.", enforce, "prompts_fit")
    return no_room
