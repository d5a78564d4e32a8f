"""Scoring completions with a list of reward functions: the "score" stage of the online trainers (GRPO, RLOO).

[`RewardScorer`] is built once from the trainer's `reward_funcs` and called once per generation batch. It returns a
[`RewardScores`] record: an `(N, R)` reward matrix (NaN where a function abstained) plus whatever the functions logged.

Three kinds of reward function may be mixed:
- a Python callable, sync or async. Sync callables (and reward models) run in order in the calling thread; async ones
  all run concurrently on one persistent daemon event-loop thread, started before the sync ones so that both overlap.
  It may be given by name (`str`), resolved as the `trl grpo` command resolves `--reward_funcs`: the name of a function
  of `trl.rewards` (e.g. `"think_format_reward"`) or a dotted path `module.function`;
- a reward model given as a Hub id (`org/name`) or local folder (`str`), loaded as `AutoModelForSequenceClassification`
  with `num_labels=1`;
- a sequence-classification `PreTrainedModel`; the reward is `logits[:, 0]` on prompt + completion (the reward
  tokenizer's chat template is applied to conversational data), padded on the right.

Values returned by callables: `None` means "no reward for this completion" and becomes NaN (the function is left out
of that completion's sum). A NaN is left out the same way but is usually a bug (0/0, a NaN model output), so it is
warned about, naming the function and the rows; a batch in which no function gave a usable reward to any completion
and some function returned NaN is an error. `±inf` is rejected, because one infinite reward would turn every advantage
of its group into NaN.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import numbers
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._event_loop import event_loop
from ..data.conversation import is_conversational
from ..models import loading
from ._resolve import accepted_forms, resolve_reward_func

__all__ = ["RewardScorer", "RewardScores"]

# Keyword arguments every reward callable receives; a dataset column may not use these names.
_RESERVED_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


@dataclass
class RewardScores:
    """What one call of [`RewardScorer.score`] produced.

    Args:
        rewards (`torch.Tensor`): `(N, R)` float32 on the CPU, one column per reward function, NaN where a function
            returned `None` (or NaN) for a completion.
        extra_columns (`dict[str, list]`): columns for the completions table, from `log_extra(column, values)`; each list
            has `N` values (a later call for the same column replaces the earlier one).
        metrics (`dict[str, list[float]]`): from `log_metric(name, value)`; every value given during this call.
        nan_count (`int`): rewards that a function returned as NaN (not None) in this call: a bug in the reward,
            warned about by name; the online trainers stop when a generation batch has no usable reward and some NaN.

    Example:
        ```python
        >>> scores = scorer.score(prompts, completions, completion_ids, columns={})
        >>> scores.rewards.shape
        torch.Size([8, 2])
        ```
    """

    rewards: torch.Tensor  # (N, R)
    extra_columns: dict[str, list] = field(default_factory=dict)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    nan_count: int = 0


@dataclass
class _RewardModel:
    """A reward model and the tokenizer that renders its input."""

    model: Any  # PreTrainedModel (sequence classification)
    tokenizer: Any


class RewardScorer:
    """Score completions with a list of reward functions (models and sync/async callables).

    Args:
        reward_funcs (`str`, `PreTrainedModel`, `Callable` or a `list` of them):
            The reward functions. A `str` is, in this order: the name of a function of `trl.rewards` (e.g.
            `"think_format_reward"`); an existing local folder; a dotted path `module.function` to a function
            (imported with the current directory importable); or a Hub id `org/name`. Folders and Hub ids are loaded
            with `AutoModelForSequenceClassification` (`num_labels=1`, `model_init_kwargs`, `trust_remote_code`).
            Models (loaded or given) are put in eval mode and frozen. A callable is called as
            `f(prompts=, completions=, completion_ids=, trainer_state=, log_extra=, log_metric=, **columns)` and must
            return one value per completion: a number, or `None` for "no reward" (a NaN is treated the same, with a
            warning).
        reward_weights (`list[float]`, *optional*):
            One weight per reward function; defaults to all ones.
        reward_processing_classes (`PreTrainedTokenizerBase` or `list`, *optional*):
            The tokenizers of the reward models: a list aligned with `reward_funcs` (entries for callables must be
            `None`; a tokenizer there is ignored with a warning), or a single tokenizer when there is one reward model.
            A missing one is loaded from the model's `_name_or_path`. A missing pad token falls back to eos.
        model_init_kwargs (`dict`, *optional*):
            Passed to `from_pretrained` for reward models given as `str` (e.g. `{"dtype": "bfloat16"}`).
        trust_remote_code (`bool`, *optional*, defaults to `False`): for reward models and tokenizers loaded here.
        device (`str` or `torch.device`, *optional*): where to put the reward models; by default they stay where they
            were loaded. See also [`~RewardScorer.to`].
        trainer_name (`str`, *optional*, defaults to `"GRPOTrainer"`): used in error messages.

    Attributes:
        names (`list[str]`): one per reward function, used in metric keys (`rewards/<name>/mean`): a function's
            `__name__` (through `functools.partial`), a callable object's `__name__` attribute or else its class name, a
            model's last `_name_or_path` part or else its class name. Repeated names keep the first as it is and
            suffix the later ones `_1`, `_2`, ... (skipping names already taken).
        weights (`torch.Tensor`): `(R,)` float32.

    Raises:
        `ValueError`: no reward function; `reward_weights` or `reward_processing_classes` of the wrong length; a
            string that is no built-in reward name, importable dotted path, local folder or Hub id (the message lists
            the built-in names).
        `OSError` / `ValueError`: a Hub id that fails to load (the message adds the built-in names).
        `TypeError`: an element of `reward_funcs` that is not a `str`, a `PreTrainedModel` or a callable.

    Example:
        ```python
        >>> def short(completions, **kwargs):
        ...     return [-float(len(c)) for c in completions]
        >>> scorer = RewardScorer([short, "org/reward-model"], reward_weights=[0.1, 1.0])
        >>> scores = scorer.score(["2+2="], [" 4"], [[19]], columns={})
        >>> scores.rewards.shape, scorer.names
        (torch.Size([1, 2]), ['short', 'reward-model'])
        ```
    """

    def __init__(
        self,
        reward_funcs: Any,
        reward_weights: list[float] | torch.Tensor | None = None,
        reward_processing_classes: Any = None,
        *,
        model_init_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        trainer_name: str = "GRPOTrainer",
    ):
        self.trainer_name = trainer_name
        funcs = _as_list(reward_funcs, trainer_name)
        # names of functions become the functions before anything else looks at them (a string is a model otherwise)
        funcs = [resolve_reward_func(f, f"reward_funcs[{i}]") if isinstance(f, str) else f for i, f in enumerate(funcs)]
        tokenizers = _align_processing_classes(reward_processing_classes, funcs)
        model_init_kwargs = dict(model_init_kwargs or {})

        self._funcs: list[_RewardModel | Callable] = []
        self._is_async: list[bool] = []
        for index, (func, tokenizer) in enumerate(zip(funcs, tokenizers)):
            if _is_pretrained_model(func) or isinstance(func, str):
                self._funcs.append(_reward_model(func, tokenizer, index, model_init_kwargs, trust_remote_code))
                self._is_async.append(False)
            elif isinstance(func, (torch.nn.Module, type)) or not callable(func):
                raise TypeError(
                    f"reward_funcs[{index}] is a {type(func).__name__}; expected a model id (str), a sequence-"
                    "classification PreTrainedModel, or a function (sync or async) returning one reward per completion"
                    + (" (pass an instance, not the class)." if isinstance(func, type) else ".")
                )
            else:
                if tokenizer is not None:
                    warnings.warn(
                        f"reward_processing_classes[{index}] is ignored: reward_funcs[{index}] is a function, not a "
                        "model. Put None there.",
                        stacklevel=2,
                    )
                self._funcs.append(func)
                self._is_async.append(_is_async_callable(func))
        self.names = _unique([_reward_name(f) for f in funcs])
        self.weights = _weights(reward_weights, len(funcs))
        self.device = None
        if device is not None:
            self.to(device)

    def __len__(self) -> int:
        return len(self._funcs)

    @property
    def reward_funcs(self) -> list:
        """One entry per reward function, as users gave them: the model of a reward model, else the callable."""
        return [f.model if isinstance(f, _RewardModel) else f for f in self._funcs]

    @property
    def processing_classes(self) -> list:
        """One entry per reward function: the tokenizer of a reward model (given or loaded with it), None for a
        callable."""
        return [f.tokenizer if isinstance(f, _RewardModel) else None for f in self._funcs]

    def to(self, device: str | torch.device) -> None:
        """Move every reward model to `device` (callables are unaffected)."""
        self.device = torch.device(device)
        for func in self._funcs:
            if isinstance(func, _RewardModel):
                func.model.to(self.device)

    def score(
        self,
        prompts: list,
        completions: list,
        completion_ids: list[list[int]],
        columns: dict[str, list] | None = None,
        trainer_state: Any = None,
    ) -> RewardScores:
        """Score `N` completions with every reward function.

        Args:
            prompts (`list`): `(N,)` the prompt of each completion: text, or a list of messages.
            completions (`list`): `(N,)` text, or a list holding one assistant message.
            completion_ids (`list[list[int]]`): `(N,)` the generated token ids.
            columns (`dict[str, list]`, *optional*): the dataset's other columns, one value per completion; passed to
                callables as keyword arguments.
            trainer_state (`TrainerState`, *optional*): passed to callables as `trainer_state`.

        Returns:
            [`RewardScores`]. Warns once per function that returned NaN (naming it and the first rows), and once if
            some completions got no reward from any function (their advantage will be 0).

        Raises:
            `RuntimeError`: a reward function raised (the original exception is chained).
            `TypeError` / `ValueError`: a function returned something other than one finite number, NaN or `None` per
                completion, or logged a column of the wrong length; inputs of different lengths; a column with a
                reserved name.
            `ValueError`: no function with a non-zero weight gave a usable reward to any completion, and at least one
                of them returned NaN.
        """
        columns = dict(columns or {})
        n = len(prompts)
        _check_inputs(n, completions, completion_ids, columns)
        if n == 0:
            return RewardScores(rewards=torch.empty(0, len(self._funcs)))

        log = _Log(n)
        kwargs = dict(
            prompts=prompts, completions=completions, completion_ids=completion_ids, trainer_state=trainer_state,
            log_extra=log.extra, log_metric=log.metric, **columns,
        )
        results: list[list[float] | None] = [None] * len(self._funcs)
        pending = {}
        try:
            # Async functions are started first, so that they run while the sync functions and the models work.
            for i, is_async in enumerate(self._is_async):
                if is_async:
                    pending[i] = self._start_async(i, kwargs)
            for i, func in enumerate(self._funcs):
                if isinstance(func, _RewardModel):
                    results[i] = _score_with_model(func, prompts, completions, columns)
                elif not self._is_async[i]:
                    results[i] = self._validated(i, self._call_sync(i, kwargs), n)
            for i, future in pending.items():
                results[i] = self._validated(i, self._await(i, future), n)
        finally:
            for future in pending.values():
                future.cancel()  # only those still running after an error elsewhere

        nan_rows = {i: [j for j, value in enumerate(values) if value is not None and math.isnan(value)]
                    for i, values in enumerate(results)}
        nan_rows = {i: rows for i, rows in nan_rows.items() if rows}
        rewards = torch.tensor([[math.nan if value is None else value for value in values] for values in results],
                               dtype=torch.float32).T.contiguous()  # (N, R)
        self._check_nan(rewards, nan_rows)
        unscored = int(torch.isnan(rewards).all(dim=1).sum())
        if unscored:
            warnings.warn(
                f"{unscored} of {n} completions got no reward: every reward function returned None (or NaN) for them, "
                "so their advantage will be 0.",
                stacklevel=2,
            )
        return RewardScores(rewards=rewards, extra_columns=log.columns, metrics=log.metrics,
                            nan_count=sum(len(rows) for rows in nan_rows.values()))

    def _check_nan(self, rewards: torch.Tensor, nan_rows: dict[int, list[int]]) -> None:
        """Name each function that returned NaN, with its rows. (A generation batch with no usable reward at all stops
        the run in the online trainers' guards, which see every process's rewards.)"""
        n = rewards.shape[0]
        for i, rows in nan_rows.items():
            warnings.warn(
                f"{self._describe(i)} returned NaN for {len(rows)} of {n} completions (rows {_first_rows(rows)}); they "
                "get no reward from it, as with None. A NaN usually means a bug in the reward (0/0, log(0), NaN inputs "
                "or a NaN model output); return None to leave a completion unscored on purpose.",
                stacklevel=3,
            )

    # ---- calling the functions -------------------------------------------------------------------------------------

    def _describe(self, i: int) -> str:
        return f"Reward function '{self.names[i]}' (reward_funcs[{i}])"

    def _call_sync(self, i: int, kwargs: dict) -> Any:
        try:
            result = self._funcs[i](**kwargs)
            if inspect.isawaitable(result):  # a sync wrapper that returns a coroutine: wait for it here
                result = asyncio.run_coroutine_threadsafe(_awaited(result), event_loop()).result()
        except Exception as error:
            raise RuntimeError(f"{self._describe(i)} raised {type(error).__name__}: {error}") from error
        return result

    def _start_async(self, i: int, kwargs: dict):
        try:
            coroutine = self._funcs[i](**kwargs)  # a wrong signature fails here, before anything is scheduled
        except Exception as error:
            raise RuntimeError(f"{self._describe(i)} raised {type(error).__name__}: {error}") from error
        return asyncio.run_coroutine_threadsafe(_awaited(coroutine), event_loop())

    def _await(self, i: int, future) -> Any:
        try:
            return future.result()
        except Exception as error:
            raise RuntimeError(f"{self._describe(i)} raised {type(error).__name__}: {error}") from error

    def _validated(self, i: int, result: Any, n: int) -> list[float | None]:
        """`result` as `n` floats or None, or a TypeError/ValueError that names the function."""
        what = self._describe(i)
        if isinstance(result, torch.Tensor) or type(result).__module__ == "numpy":
            if getattr(result, "ndim", None) != 1:
                raise TypeError(
                    f"{what} returned a {type(result).__name__} of shape {tuple(getattr(result, 'shape', ()))}; "
                    f"expected a list (or 1-D tensor/array) with one reward per completion ({n})."
                )
            result = result.detach().cpu().tolist() if isinstance(result, torch.Tensor) else result.tolist()
        if not isinstance(result, (list, tuple)):
            raise TypeError(
                f"{what} returned a {type(result).__name__}; expected a list with one reward (float or None) per "
                f"completion ({n})."
            )
        if len(result) != n:
            raise ValueError(
                f"{what} returned {len(result)} rewards for {n} completions; it must return exactly one value (float or "
                "None) per completion."
            )
        values = []
        for j, value in enumerate(result):
            if value is None:
                values.append(None)
                continue
            value = _as_float(value)
            if value is _NOT_A_NUMBER:
                raise TypeError(
                    f"{what} returned a {type(result[j]).__name__} ({result[j]!r:.80}) for completion {j}; each reward "
                    "must be an int, float, bool or None."
                )
            if math.isinf(value):
                raise ValueError(
                    f"{what} returned {value} for completion {j}; rewards must be finite (an infinite reward makes the "
                    "advantages of its group NaN). Return None to leave a completion unscored."
                )
            values.append(value)
        return values


# ---- construction helpers ---------------------------------------------------------------------------------------------


def _as_list(reward_funcs: Any, trainer_name: str) -> list:
    if reward_funcs is None or (isinstance(reward_funcs, (list, tuple)) and len(reward_funcs) == 0):
        extra = (
            " (`reward_funcs=None` is allowed only with an `environment_factory` whose environments define "
            "get_reward())"
            if trainer_name == "GRPOTrainer"
            else ""
        )
        raise ValueError(
            f"{trainer_name} needs at least one reward function{extra}; got {reward_funcs!r}. Pass a function, a "
            "reward model (or its id), or a list of them as `reward_funcs`."
        )
    return list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]


def _align_processing_classes(reward_processing_classes: Any, funcs: list) -> list:
    if reward_processing_classes is None:
        return [None] * len(funcs)
    if not isinstance(reward_processing_classes, (list, tuple)):
        # One tokenizer for the one reward model. With several, applying it to all would silently score a model whose
        # own tokenizer differs with the wrong ids (the reference raises on the count too).
        models = [i for i, f in enumerate(funcs) if _is_model_spec(f)]
        if len(models) > 1:
            raise ValueError(
                f"`reward_processing_classes` is a single tokenizer but `reward_funcs` has {len(models)} reward models "
                f"(positions {models}); give a list with one entry per reward function (None for functions and for "
                "models whose own tokenizer should be loaded), e.g. `[tok, None]`."
            )
        return [reward_processing_classes if _is_model_spec(f) else None for f in funcs]
    if len(reward_processing_classes) != len(funcs):
        raise ValueError(
            f"`reward_processing_classes` has {len(reward_processing_classes)} entries but `reward_funcs` has "
            f"{len(funcs)}; give one per reward function (None for functions and for models whose tokenizer should be "
            "loaded), or a single tokenizer for every reward model."
        )
    return list(reward_processing_classes)


def _is_pretrained_model(obj: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(obj, PreTrainedModel)


def _is_model_spec(obj: Any) -> bool:
    return isinstance(obj, str) or _is_pretrained_model(obj)


def _reward_model(func, tokenizer, index: int, model_init_kwargs: dict, trust_remote_code: bool) -> _RewardModel:
    revision = None
    if isinstance(func, str):
        kwargs = dict(model_init_kwargs)
        kwargs.setdefault("trust_remote_code", trust_remote_code)
        revision = kwargs.get("revision")
        try:
            model = loading.create_reward_model_from_path(func, **kwargs)
        except (OSError, ValueError) as error:
            if Path(func).expanduser().is_dir():
                raise  # a local folder: its own error says what is wrong with it
            # a Hub id that does not load may be a misspelt reward function name
            raise (ValueError if isinstance(error, ValueError) else loading._builtin_class(error))(
                f"{func!r} (reward_funcs[{index}]) could not be loaded as a reward model ({type(error).__name__}: "
                f"{error}). {accepted_forms()}"
            ) from error
    else:
        model = func
        if model.can_generate():
            raise TypeError(
                f"reward_funcs[{index}] is a generative model ({type(model).__name__}), not a reward model. Load it "
                "with AutoModelForSequenceClassification.from_pretrained(..., num_labels=1), or pass its id/path as a "
                "string."
            )
    if getattr(model.config, "num_labels", 1) != 1:
        warnings.warn(
            f"reward_funcs[{index}] ({type(model).__name__}) has num_labels={model.config.num_labels}; only the first "
            "logit is used as the reward.",
            stacklevel=3,
        )
    model.eval()  # no dropout: the same text always gets the same reward
    model.requires_grad_(False)
    if tokenizer is None:
        source = func if isinstance(func, str) else getattr(model.config, "_name_or_path", None)
        if not source:
            raise ValueError(
                f"reward_funcs[{index}] is a model with no `_name_or_path`, so its tokenizer cannot be loaded; pass it "
                f"in `reward_processing_classes[{index}]`."
            )
        tokenizer = loading.load_processing_class(source, revision, trust_remote_code)
    _ensure_padding(tokenizer, model, index)
    return _RewardModel(model=model, tokenizer=tokenizer)


def _ensure_padding(tokenizer, model, index: int) -> None:
    """Batched scoring needs a pad token in the tokenizer and a pad id in the model, which finds the last real token
    of each row by it. (`loading.prepare_tokenizer` sets the model's pad id only when it differs from eos.)"""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"The tokenizer of reward_funcs[{index}] has neither a pad nor an eos token; set `tokenizer.pad_token`."
            )
        tokenizer.pad_token = tokenizer.eos_token
    text_config = model.config.get_text_config()
    if text_config.pad_token_id is None:
        text_config.pad_token_id = tokenizer.pad_token_id


def _is_async_callable(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func):
        return False
    return inspect.iscoroutinefunction(type(func).__call__)  # a callable object with `async def __call__`


def _reward_name(func: Any) -> str:
    if isinstance(func, str):
        return Path(func.rstrip("/")).name or func
    if _is_pretrained_model(func):
        path = str(getattr(func.config, "_name_or_path", "") or "").rstrip("/")
        return Path(path).name or type(func).__name__
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) and name else type(func).__name__


def _unique(names: list[str]) -> list[str]:
    taken, out = set(names), []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            k = 1
            while f"{name}_{k}" in taken:
                k += 1
            name = f"{name}_{k}"
            taken.add(name)
        seen.add(name)
        out.append(name)
    return out


def _weights(reward_weights: Any, num_funcs: int) -> torch.Tensor:
    if reward_weights is None:
        return torch.ones(num_funcs, dtype=torch.float32)
    weights = torch.as_tensor(reward_weights, dtype=torch.float32).flatten()
    if len(weights) != num_funcs:
        raise ValueError(
            f"`reward_weights` has {len(weights)} values but there are {num_funcs} reward functions; give one weight "
            "per reward function."
        )
    if not torch.isfinite(weights).all():
        raise ValueError(f"`reward_weights` must be finite; got {weights.tolist()}.")
    return weights


# ---- scoring helpers --------------------------------------------------------------------------------------------------


def _check_inputs(n: int, completions: list, completion_ids: list, columns: dict) -> None:
    lengths = {"completions": len(completions), "completion_ids": len(completion_ids)}
    lengths.update({f"column {name!r}": len(values) for name, values in columns.items()})
    wrong = {what: length for what, length in lengths.items() if length != n}
    if wrong:
        raise ValueError(f"Every input must have one value per completion ({n} prompts); got lengths {wrong}.")
    reserved = sorted(set(columns) & set(_RESERVED_KWARGS))
    if reserved:
        raise ValueError(
            f"Dataset column(s) {reserved} clash with the arguments every reward function receives "
            f"{list(_RESERVED_KWARGS)}; rename them."
        )


@torch.no_grad()
def _score_with_model(reward_model: _RewardModel, prompts: list, completions: list,
                      columns: dict | None = None) -> list[float]:
    """`logits[:, 0]` of the reward model on prompt + completion, all rows in one right-padded batch.

    Each row is tokenised exactly as `RewardTrainer` tokenises a chosen or rejected side (`reward_input_ids`), so a
    reward model trained here is scored on the same token sequences it was trained on: the full chat rendering (the
    template text after the end-of-turn token included, with the row's own `tools` and `chat_template_kwargs`
    columns when the dataset has them) for conversational rows, `prompt + completion + eos` for text.
    """
    model, tokenizer = reward_model.model, reward_model.tokenizer
    conversational = is_conversational({"prompt": prompts[0], "completion": completions[0]})
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The data is conversational but the tokenizer of reward model {type(model).__name__} has no chat "
            "template; pass one with a template in `reward_processing_classes`."
        )
    options = {k: (columns or {})[k] for k in ("tools", "chat_template_kwargs") if k in (columns or {})}
    rows = [reward_input_ids(tokenizer, p, c, conversational, {k: v[i] for k, v in options.items()})
            for i, (p, c) in enumerate(zip(prompts, completions))]
    width = max(len(ids) for ids in rows)
    # The model finds each row's last real token by its own pad id, which may differ from the tokenizer's.
    pad_id = model.config.get_text_config().pad_token_id
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in rows])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows])
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    return logits[:, 0].float().cpu().tolist()


def reward_input_ids(tokenizer, prompt: Any, completion: Any, conversational: bool,
                     template_options: dict | None = None) -> list[int]:
    """The token ids a reward model scores for one prompt + completion: the sequence `RewardTrainer` trains on (its
    dataset preparation tokenises each side with the same `tokenize_sft_example` call). `template_options` holds the
    row's `tools` and `chat_template_kwargs` columns, as a dataset row would.

    Example:
        ```python
        >>> tok.decode(reward_input_ids(tok, [{"role": "user", "content": "Hi"}], "Hello", conversational=True))
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n'
        ```
    """
    from ..data.tokenize import end_of_turn_ids, tokenize_sft_example

    if conversational:
        example = {"prompt": _messages(prompt), "completion": _messages(completion, "assistant"),
                   **(template_options or {})}
    else:
        example = {"prompt": prompt, "completion": completion}
    out = tokenize_sft_example(example, tokenizer, kind="prompt_completion", conversational=conversational,
                               eos_token_id=tokenizer.eos_token_id, eos_ids=end_of_turn_ids(tokenizer))
    return list(out["input_ids"])


def _first_rows(rows: list[int], limit: int = 5) -> str:
    """`[0, 1, 2, 3, 4, ...]`: the first `limit` row indices, and an ellipsis when there are more."""
    return "[" + ", ".join([str(row) for row in rows[:limit]] + (["..."] if len(rows) > limit else [])) + "]"


def _messages(value: Any, role: str = "user") -> list[dict]:
    """A message list as is; a plain string (e.g. a text completion next to a conversational prompt) as one message."""
    return list(value) if isinstance(value, (list, tuple)) else [{"role": role, "content": value}]


_NOT_A_NUMBER = object()


def _as_float(value: Any) -> Any:
    """An allowed (not None) reward value as a float, or `_NOT_A_NUMBER`."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.is_complex():
            return _NOT_A_NUMBER
        return float(value.item())
    if isinstance(value, (bool, numbers.Real)):  # numbers.Real includes numpy floats and ints
        return float(value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:  # e.g. numpy.bool, a 0-d array
        value = value.item()
        if isinstance(value, (bool, numbers.Real)):
            return float(value)
    return _NOT_A_NUMBER


class _Log:
    """`log_extra` and `log_metric` for one `score` call. Async functions call them from the event-loop thread."""

    def __init__(self, n: int):
        self.n = n
        self.columns: dict[str, list] = {}
        self.metrics: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def extra(self, column: str, values: list) -> None:
        values = list(values)
        if len(values) != self.n:
            raise ValueError(f"log_extra({column!r}, ...) got {len(values)} values for {self.n} completions; give one per "
                             "completion.")
        with self._lock:
            self.columns[str(column)] = values

    def metric(self, name: str, value: float) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"log_metric({name!r}, ...) needs a number; got {type(value).__name__}.") from None
        with self._lock:
            self.metrics.setdefault(str(name), []).append(value)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
