"""Callbacks: TR-DPO reference syncing, the run report, a rich progress panel, completions logged during training
(locally, to W&B/Comet, or to W&B Weave), and the BEMA weight average."""

from __future__ import annotations

import contextlib
import math
import os
import warnings

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


# ---------------------------------------------------------------- eval prompts and their completions
# (shared by LogCompletionsCallback and WeaveCallback)


def _tokenizer_of(processing_class):
    """The tokenizer inside a processor (itself for a tokenizer)."""
    return getattr(processing_class, "tokenizer", None) or processing_class


def _eval_prompt_ids(trainer, num_prompts: int | None, who: str) -> list[list[int]]:
    """Token ids of the eval set's prompts, ready for generation (the chat template applied with the generation prompt
    for conversational prompts), the first `num_prompts` of them.

    Read from the eval rows as the trainer holds them: a `prompt` column (text or messages), the `prompt_ids` the
    preference and online trainers prepare, or the prompt part (`completion_mask == 0`) of SFT's prompt-completion
    rows.

    Raises:
        `TypeError`: `trainer` is not a trainer, or it has several eval datasets.
        `ValueError`: no eval dataset, or rows with none of those columns.
    """
    if not hasattr(trainer, "eval_dataset") or not hasattr(trainer, "processing_class"):
        raise TypeError(f"{who} needs the trainer (built before the callback, e.g. `{who}(trainer)` then "
                        f"`trainer.add_callback(...)`); got {type(trainer).__name__}.")
    dataset = trainer.eval_dataset
    if dataset is None:
        raise ValueError(f"{who} needs an eval dataset with a `prompt` column; the trainer has none. Pass "
                         "`eval_dataset=` to the trainer.")
    if isinstance(dataset, dict):
        raise TypeError(f"{who} needs one eval dataset; the trainer has several ({sorted(dataset)}). Give the trainer "
                         "a single `eval_dataset`, or make a trainer per dataset.")
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"{who} needs eval prompts; the eval dataset is empty.")
    columns = list(getattr(dataset, "column_names", None) or [])
    if not columns:
        raise ValueError(f"{who} needs an eval dataset with named columns (a `datasets.Dataset`); got "
                         f"{type(dataset).__name__}.")
    if num_prompts is not None:
        dataset = dataset.select(range(min(num_prompts, len(dataset))))
    tokenizer = _tokenizer_of(trainer.processing_class)
    if "prompt" in columns:
        from ..data.prompts import tokenize_prompt

        conversational = isinstance(dataset[0]["prompt"], list)
        # whole rows: per-row chat-template arguments (e.g. `tools`) apply as in training
        return [tokenize_prompt(row, tokenizer, conversational) for row in dataset]
    if "prompt_ids" in columns:
        return [list(ids) for ids in dataset["prompt_ids"]]
    if {"input_ids", "completion_mask"} <= set(columns) and "seq_lengths" not in columns:  # not packed rows
        prompts = []
        for ids, mask in zip(dataset["input_ids"], dataset["completion_mask"]):
            start = next((i for i, m in enumerate(mask) if m), len(ids))
            prompts.append(list(ids[:start]))
        if all(prompts):
            return prompts
    raise ValueError(
        f"{who} needs eval rows with a prompt: a `prompt` column (prompt-completion, preference or prompt-only data, "
        f"not packed); the eval dataset has columns {columns}. Use an eval dataset in one of those formats."
    )


@torch.no_grad()
def _generate(trainer, prompt_ids: list[list[int]], generation_config=None) -> list[str]:
    """Completions (decoded, without special tokens) of `prompt_ids`, generated in batches of
    `per_device_eval_batch_size`, left-padded, greedy unless `generation_config` says otherwise. The prompts are split
    evenly across processes and the completions gathered, so every process returns all of them, in order."""
    from accelerate.utils import gather_object

    from ..models.helpers import unwrap_model_for_generation

    accelerator = trainer.accelerator
    tokenizer = _tokenizer_of(trainer.processing_class)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch_size = max(1, trainer.args.per_device_eval_batch_size)
    completions: list[str] = []
    # Every process gets as many prompts (the last one repeated to fill up, dropped after gathering): under ZeRO-3 and
    # FSDP each generation step is a collective, so all processes must run the same number of batches.
    with accelerator.split_between_processes(prompt_ids, apply_padding=True) as local:
        model = trainer.model_wrapped if getattr(trainer, "model_wrapped", None) is not None else trainer.model
        with unwrap_model_for_generation(model, accelerator) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            device = next(unwrapped.parameters()).device
            config = _generation_config(unwrapped, generation_config, pad_id, trainer.args)
            try:
                for start in range(0, len(local), batch_size):
                    batch = local[start : start + batch_size]
                    width = max(len(ids) for ids in batch)
                    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)
                    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
                    output = unwrapped.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
                    completions += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            finally:
                unwrapped.train(was_training)
    if accelerator.num_processes > 1:
        completions = gather_object(completions)
    return completions[: len(prompt_ids)]


def _generation_config(model, generation_config, pad_id: int, args):
    """`generation_config` (a copy), or greedy decoding with the model's own stop tokens, up to
    `args.max_completion_length` (or 64) new tokens; the pad id is filled in when missing."""
    import copy

    from transformers import GenerationConfig

    if generation_config is None:
        base = getattr(model, "generation_config", None)
        generation_config = copy.deepcopy(base) if base is not None else GenerationConfig()
        generation_config.do_sample = False
        for name in ("temperature", "top_p", "top_k"):  # sampling settings would only warn under greedy decoding
            setattr(generation_config, name, None)
        generation_config.max_new_tokens = getattr(args, "max_completion_length", None) or 64
        generation_config.max_length = None
    else:
        generation_config = copy.deepcopy(generation_config)
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = pad_id
    return generation_config


def _decode_prompts(trainer, prompt_ids: list[list[int]]) -> list[str]:
    return _tokenizer_of(trainer.processing_class).batch_decode(prompt_ids, skip_special_tokens=False)


def _reporting_to(args, name: str) -> bool:
    report_to = args.report_to if isinstance(args.report_to, list) else [args.report_to]
    return "all" in report_to or name in report_to


class LogCompletionsCallback(TrainerCallback):
    """Every `freq` steps, generate completions for the eval set's prompts and log the table of all of them so far
    (`step`, `prompt`, `completion`): to Weights & Biases and Comet when they are reporters of the run, and always to
    `<output_dir>/completions.csv` (main process), so a run without a tracker has it too.

    Prompts come from the eval rows' `prompt` column (the chat template applied with the generation prompt for
    conversational prompts), or from the prompt token ids the trainer prepared from it. Generation is greedy unless a
    `generation_config` is given, left-padded, and split across processes.

    Args:
        trainer (`transformers.Trainer`): the trainer; it must have an eval dataset with prompts.
        generation_config (`transformers.GenerationConfig`, *optional*): how to generate (default: greedy, up to
            `max_completion_length` or 64 new tokens).
        num_prompts (`int`, *optional*): use the first this many eval prompts (default: all).
        freq (`int`, *optional*): every how many optimiser steps (default: `args.eval_steps`, else `logging_steps`).

    Raises:
        `ValueError`: the trainer has no eval dataset, or its rows carry no prompt.

    Example:
        ```python
        >>> trainer = DPOTrainer(model, args=DPOConfig(eval_strategy="steps", eval_steps=50), train_dataset=train,
        ...                      eval_dataset=test)
        >>> trainer.add_callback(LogCompletionsCallback(trainer, num_prompts=8))
        >>> trainer.train()  # <output_dir>/completions.csv grows every 50 steps
        ```
    """

    def __init__(self, trainer, generation_config=None, num_prompts: int | None = None, freq: int | None = None):
        if num_prompts is not None and num_prompts < 1:
            raise ValueError(f"`num_prompts` must be at least 1 (or None for all); got {num_prompts}.")
        if freq is not None and freq < 1:
            raise ValueError(f"`freq` must be at least 1 (or None for `eval_steps`); got {freq}.")
        self.trainer = trainer
        self.generation_config = generation_config
        self.num_prompts = num_prompts
        self.freq = freq
        self._prompt_ids = _eval_prompt_ids(trainer, num_prompts, "LogCompletionsCallback")
        self._prompts = _decode_prompts(trainer, self._prompt_ids)
        self.table: list[dict] = []  # every row logged so far: {"step", "prompt", "completion"}
        self._last_step = -1

    def _frequency(self, args, state) -> int:
        if self.freq is not None:
            return self.freq
        steps = args.eval_steps if args.eval_steps is not None else args.logging_steps
        if isinstance(steps, float) and steps < 1:  # a ratio of the run's steps
            steps = math.ceil(steps * state.max_steps)
        return max(1, int(steps))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self._frequency(args, state) or state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        completions = _generate(self.trainer, self._prompt_ids, self.generation_config)
        self.table += [{"step": str(state.global_step), "prompt": prompt, "completion": completion}
                       for prompt, completion in zip(self._prompts, completions)]
        if state.is_world_process_zero:
            self._log(args)

    def _log(self, args) -> None:
        import pandas as pd

        frame = pd.DataFrame(self.table, columns=["step", "prompt", "completion"])
        if _reporting_to(args, "wandb"):
            import wandb

            if wandb.run is not None:
                wandb.log({"completions": wandb.Table(dataframe=frame)})
        if _reporting_to(args, "comet_ml"):
            import comet_ml

            experiment = comet_ml.get_running_experiment()
            if experiment is not None:
                experiment.log_table("completions.csv", tabular_data=frame)
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            path = os.path.join(args.output_dir, "completions.csv")
            frame.to_csv(path + ".tmp", index=False)
            os.replace(path + ".tmp", path)  # a reader never sees half a table


# ---------------------------------------------------------------- rich progress panel


def _group_metrics(logs: dict) -> dict[str, dict[str, object]]:
    """Split logged values into sections by their prefix before the first `/` (`rewards/...`, `completions/...`);
    values without one go to "metrics", or to "eval" for evaluation values (`eval_loss`). Each section keeps the
    logged order.

    Example:
        ```python
        >>> _group_metrics({"loss": 1.0, "rewards/margins": 0.5, "eval_loss": 2.0, "eval_rewards/chosen": 0.1})
        {'metrics': {'loss': 1.0}, 'rewards': {'margins': 0.5}, 'eval': {'loss': 2.0}, 'eval_rewards': {'chosen': 0.1}}
        ```
    """
    groups: dict[str, dict[str, object]] = {"metrics": {}}
    for key, value in logs.items():
        section, _, name = key.partition("/")
        if name:
            groups.setdefault(section, {})[name] = value
        elif key.startswith("eval_"):
            groups.setdefault("eval", {})[key[len("eval_"):]] = value
        else:
            groups["metrics"][key] = value
    return {k: v for k, v in groups.items() if v}


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class RichProgressCallback(TrainerCallback):
    """A live panel on the main process, drawn with `rich`: a training progress bar, an evaluation progress bar while
    evaluating, and a table of the latest logged values grouped by prefix (`rewards/...`, `completions/...`, the rest
    under "metrics"). The table stays on screen when training ends.

    Remove transformers' own progress bar so that it does not draw as well:
    `trainer.remove_callback(transformers.ProgressCallback)`. The panel is written to `self.console` (a
    `rich.console.Console`, the terminal by default; set it before training to write elsewhere).

    Raises:
        `ImportError`: `rich` is not installed.

    Example:
        ```python
        >>> trainer = SFTTrainer(model, args=SFTConfig(), train_dataset=dataset, callbacks=[RichProgressCallback()])
        >>> trainer.remove_callback(ProgressCallback)  # transformers' tqdm bars
        ```
    """

    def __init__(self):
        from ..import_utils import require

        require("rich", "RichProgressCallback")
        self.console = None
        self._live = None
        self._progress = None
        self._train_task = None
        self._eval_task = None
        self._latest: dict = {}

    def _render(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        table = Table(show_header=True, header_style="bold", expand=False)
        table.add_column("section")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for section, values in _group_metrics(self._latest).items():
            for i, (name, value) in enumerate(values.items()):
                table.add_row(section if i == 0 else "", name, _format_value(value))
        return Panel(Group(self._progress, table), title="training", border_style="blue")

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = self.console or Console()
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=self.console)
        self._train_task = self._progress.add_task("train", total=state.max_steps, completed=state.global_step)
        self._live = Live(self._render(), console=self.console, refresh_per_second=4)
        self._live.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self._live is not None:
            self._progress.update(self._train_task, completed=state.global_step)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self._live is None:
            return
        if self._eval_task is None:
            total = len(eval_dataloader) if eval_dataloader is not None and hasattr(eval_dataloader, "__len__") else None
            self._eval_task = self._progress.add_task("eval", total=total)
        self._progress.advance(self._eval_task)

    def _end_eval(self) -> None:
        if self._eval_task is not None:
            self._progress.remove_task(self._eval_task)
            self._eval_task = None

    def on_evaluate(self, args, state, control, **kwargs):
        if self._live is not None:
            self._end_eval()

    def on_predict(self, args, state, control, **kwargs):
        if self._live is not None:
            self._end_eval()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self._latest.update({k: v for k, v in logs.items() if k != "total_flos"})
        if self._live is not None:
            self._live.update(self._render())

    def on_train_end(self, args, state, control, **kwargs):
        if self._live is None:
            return
        self._progress.update(self._train_task, completed=state.global_step)
        self._live.update(self._render(), refresh=True)
        self._live.stop()
        self._live = None


# ---------------------------------------------------------------- BEMA


def _full_named_parameters(model) -> dict[str, torch.Tensor]:
    """Every floating-point parameter of `model` (unwrapped from DDP, DeepSpeed or FSDP), whole and detached, copied to
    the CPU in float32. Under DeepSpeed ZeRO-3 and FSDP the shards are gathered first."""
    from accelerate.utils import extract_model_from_parallel

    unwrapped = extract_model_from_parallel(model)
    params = list(unwrapped.named_parameters(remove_duplicate=False))  # tied weights under each of their names
    if any(hasattr(p, "ds_id") for _, p in params):  # DeepSpeed ZeRO-3: partitioned parameters
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            return _copy_params(params)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # torch without distributed
        FullyShardedDataParallel = None
    if FullyShardedDataParallel is not None and isinstance(model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            return _copy_params(model.named_parameters(remove_duplicate=False))
    return _copy_params(unwrapped.named_parameters(remove_duplicate=False))


def _copy_params(named) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in named:
        if not param.is_floating_point():
            continue
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):  # FSDP2 DTensor
            tensor = tensor.full_tensor()
        out[name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")] = (
            tensor.to("cpu", torch.float32, copy=True))
    return out


class BEMACallback(TrainerCallback):
    """Bias-corrected exponential moving average (BEMA, https://huggingface.co/papers/2508.00180) of the weights,
    kept on a CPU copy and saved to `<output_dir>/bema` when training ends.

    With `theta_0` the weights when averaging starts (step `update_after`) and `t` the steps since then, every
    `update_freq` steps:

        beta_t  = max((rho + gamma * t) ** -kappa, min_ema_multiplier)      # EMA weight of the current weights
        alpha_t = (rho + gamma * t) ** -eta                                  # bias-correction weight
        EMA_t   = (1 - beta_t) * EMA_prev + beta_t * theta_t                 # EMA_0 = theta_0
        BEMA_t  = alpha_t * (theta_t - theta_0) + EMA_t

    where `rho = lag`, `gamma = multiplier`, `kappa = ema_power`, `eta = bias_power`. The EMA alone lags behind the
    weights; the correction term `alpha_t (theta_t - theta_0)` removes that lag early in training and fades as
    `alpha_t` decays.

    The averaged weights are read with [`bema_state_dict`] and copied into another model with [`apply_to`] (the
    experimental `bema_for_ref_model` DPO uses this to make its reference follow BEMA). Parameters are gathered from
    DDP, DeepSpeed ZeRO-3 and FSDP wrappers before averaging; every process keeps the same average, and the main
    process saves it. The state is not checkpointed: a resumed run starts averaging again from the resumed weights.

    Args:
        update_freq (`int`, *optional*, defaults to `400`): update the average every this many optimiser steps.
        ema_power (`float`, *optional*, defaults to `0.5`): `kappa`, the decay power of the EMA weight.
        bias_power (`float`, *optional*, defaults to `0.2`): `eta`, the decay power of the bias correction.
        lag (`int`, *optional*, defaults to `10`): `rho`, the offset that keeps both weights below 1 at the start.
        update_after (`int`, *optional*, defaults to `0`): the step at which `theta_0` is taken (burn-in).
        multiplier (`float`, *optional*, defaults to `1.0`): `gamma`, how fast `t` counts.
        min_ema_multiplier (`float`, *optional*, defaults to `0.0`): the lowest EMA weight `beta_t`.
        device (`str`, *optional*, defaults to `"cpu"`): where the copies (`theta_0`, the EMA and BEMA) live.

    Example:
        ```python
        >>> bema = BEMACallback(update_freq=100)
        >>> trainer = SFTTrainer(model, args=config, train_dataset=dataset, callbacks=[bema])
        >>> trainer.train()  # also writes <output_dir>/bema, loadable with from_pretrained
        >>> bema.apply_to(other_model)  # copy the averaged weights into a model of the same architecture
        ```
    """

    def __init__(self, update_freq: int = 400, ema_power: float = 0.5, bias_power: float = 0.2, lag: int = 10,
                 update_after: int = 0, multiplier: float = 1.0, min_ema_multiplier: float = 0.0, device: str = "cpu"):
        if update_freq < 1:
            raise ValueError(f"`update_freq` must be at least 1; got {update_freq}.")
        if update_after < 0:
            raise ValueError(f"`update_after` must be 0 or more; got {update_after}.")
        if lag <= 0 or multiplier < 0:
            raise ValueError(f"`lag` must be positive and `multiplier` non-negative (so that lag + multiplier * t > 0); "
                             f"got lag={lag}, multiplier={multiplier}.")
        if not 0.0 <= min_ema_multiplier <= 1.0:
            raise ValueError(f"`min_ema_multiplier` must be in [0, 1]; got {min_ema_multiplier}.")
        if ema_power < 0 or bias_power < 0:  # a negative power makes beta_t / alpha_t grow above 1 with t
            raise ValueError(f"`ema_power` and `bias_power` must be >= 0 (0 turns the EMA, resp. the decay of the bias "
                             f"correction, off); got ema_power={ema_power}, bias_power={bias_power}.")
        self.update_freq = update_freq
        self.ema_power = ema_power
        self.bias_power = bias_power
        self.lag = lag
        self.update_after = update_after
        self.multiplier = multiplier
        self.min_ema_multiplier = min_ema_multiplier
        self.device = torch.device(device)
        self._theta0: dict[str, torch.Tensor] | None = None
        self._ema: dict[str, torch.Tensor] | None = None
        self._bema: dict[str, torch.Tensor] | None = None
        self._start_step: int | None = None
        self.num_updates = 0  # averaging updates since the snapshot of theta_0

    # -- the schedule
    def ema_beta(self, t: int) -> float:
        """`beta_t = max((lag + multiplier * t) ** -ema_power, min_ema_multiplier)`."""
        return max((self.lag + self.multiplier * t) ** -self.ema_power, self.min_ema_multiplier)

    def bias_alpha(self, t: int) -> float:
        """`alpha_t = (lag + multiplier * t) ** -bias_power`."""
        return (self.lag + self.multiplier * t) ** -self.bias_power

    # -- the state
    def _snapshot(self, model, step: int) -> None:
        params = {k: v.to(self.device) for k, v in _full_named_parameters(model).items()}
        self._theta0 = params
        self._ema = {k: v.clone() for k, v in params.items()}
        self._bema = {k: v.clone() for k, v in params.items()}
        self._start_step = step
        self.num_updates = 0

    @torch.no_grad()
    def _update(self, model, t: int) -> None:
        beta, alpha = self.ema_beta(t), self.bias_alpha(t)
        for name, theta in _full_named_parameters(model).items():
            theta = theta.to(self.device)
            ema = self._ema[name]
            ema.mul_(1.0 - beta).add_(theta, alpha=beta)
            torch.add(ema, theta - self._theta0[name], alpha=alpha, out=self._bema[name])
        self.num_updates += 1

    def bema_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The current BEMA weights by parameter name (float32, on `device`; tied weights under each of their names),
        or `None` before averaging has started (step `update_after`). The tensors are the callback's own: copy them
        before changing them.

        Example:
            ```python
            >>> weights = bema.bema_state_dict()
            >>> sorted(weights)[:1]
            ['lm_head.weight']
            ```
        """
        return self._bema

    @torch.no_grad()
    def apply_to(self, model: torch.nn.Module) -> bool:
        """Copy the current BEMA weights into `model` (same architecture; DDP/DeepSpeed wrappers are unwrapped, ZeRO-3
        parameters gathered and re-partitioned), casting to its dtypes and devices. Returns False (and changes nothing)
        before averaging has started.

        Example:
            ```python
            >>> bema.apply_to(trainer.ref_model)
            True
            ```
        """
        if self._bema is None:
            return False
        from accelerate.utils import extract_model_from_parallel

        target = extract_model_from_parallel(model)
        params = list(target.named_parameters(remove_duplicate=False))
        missing = [name for name, p in params if name not in self._bema and p.is_floating_point()]
        if missing:
            raise ValueError(f"`model` has parameters that the BEMA weights do not: {missing[:5]}. Apply them to a model "
                             "of the architecture that was trained.")
        context = contextlib.nullcontext()
        if any(hasattr(p, "ds_id") for _, p in params):
            import deepspeed

            context = deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0)
        with context:
            for name, param in params:
                if param.is_floating_point():
                    param.copy_(self._bema[name].to(param.device, param.dtype))
        return True

    # -- the trainer events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step >= self.update_after:
            self._snapshot(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if model is None or step < self.update_after:
            return
        if self._theta0 is None:
            self._snapshot(model, step)
            return
        t = step - self._start_step
        if t > 0 and t % self.update_freq == 0:
            self._update(model, t)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self._bema is None or model is None or not state.is_world_process_zero or not args.output_dir:
            return
        if self.num_updates == 0:  # e.g. a run shorter than the default update_freq=400: the "average" is theta_0
            warnings.warn(
                f"BEMACallback made no averaging update: training ran {state.global_step - self._start_step} steps "
                f"after theta_0 was taken (step {self._start_step}) and updates come every update_freq="
                f"{self.update_freq} steps, so {os.path.join(args.output_dir, 'bema')} holds the weights of step "
                f"{self._start_step}. Lower `update_freq` (or `update_after`) for a run this short.", stacklevel=2)
        from accelerate.utils import extract_model_from_parallel

        unwrapped = extract_model_from_parallel(model)
        folder = os.path.join(args.output_dir, "bema")
        dtypes = {name: p.dtype for name, p in unwrapped.named_parameters(remove_duplicate=False)}
        state_dict = {name: value for name, value in unwrapped.state_dict().items() if name not in self._bema}
        state_dict.update({name: value.to("cpu", dtypes.get(name, value.dtype)) for name, value in self._bema.items()})
        unwrapped.save_pretrained(folder, state_dict=state_dict)
        if processing_class is not None:
            processing_class.save_pretrained(folder)
        logger.info(f"BEMA weights saved to {folder}")


# ---------------------------------------------------------------- W&B Weave


def _weave_client(weave):
    """The Weave client already initialised in this process, or None."""
    get_client = getattr(weave, "get_client", None)
    if get_client is None:
        try:
            from weave.trace.context.weave_client_context import get_weave_client as get_client
        except ImportError:
            return None
    try:
        return get_client()
    except Exception:  # noqa: BLE001 -- no client yet: some weave versions raise instead of returning None
        return None


class WeaveCallback(TrainerCallback):
    """At each evaluation, generate completions for the eval prompts and log them to W&B Weave with its
    `EvaluationLogger`, one evaluation per call named after the step.

    - Without `scorers` (tracing mode): each prompt and completion is logged as a prediction, for browsing.
    - With `scorers` (evaluation mode): each `scorer(prompt, completion) -> float` is also logged per prediction, and
      the evaluation's summary holds each scorer's mean.

    Weave is reached through the client already initialised in the process, else `weave.init(project_name)`, else the
    project of the active wandb run; with none of them, logging is skipped with a warning. Only the main process logs
    (generation is split across processes).

    Args:
        trainer (`transformers.Trainer`): the trainer; it must have an eval dataset with prompts.
        project_name (`str`, *optional*): the Weave project to initialise when no client exists.
        scorers (`dict[str, Callable[[str, str], float]]`, *optional*): named scoring functions of
            `(prompt, completion)`.
        generation_config (`transformers.GenerationConfig`, *optional*): how to generate (default: greedy).
        num_prompts (`int`, *optional*): use the first this many eval prompts (default: all).
        dataset_name (`str`, *optional*, defaults to `"eval_dataset"`): the dataset name shown in Weave.
        model_name (`str`, *optional*): the model name shown in Weave (default: the model's `name_or_path`).

    Raises:
        `ImportError`: `weave` is not installed.
        `ValueError`: no eval dataset with prompts.
        `TypeError`: a scorer that is not callable.

    Example:
        ```python
        >>> def is_short(prompt, completion):
        ...     return float(len(completion) < 50)
        >>> trainer.add_callback(WeaveCallback(trainer, project_name="my-team/my-project", scorers={"short": is_short}))
        ```
    """

    def __init__(self, trainer, project_name: str | None = None, scorers: dict | None = None, generation_config=None,
                 num_prompts: int | None = None, dataset_name: str = "eval_dataset", model_name: str | None = None):
        from ..import_utils import require

        require("weave", "WeaveCallback")
        if num_prompts is not None and num_prompts < 1:
            raise ValueError(f"`num_prompts` must be at least 1 (or None for all); got {num_prompts}.")
        scorers = dict(scorers or {})
        for name, scorer in scorers.items():
            if not callable(scorer):
                raise TypeError(f"Scorer {name!r} must be a callable `(prompt, completion) -> float`; got "
                                 f"{type(scorer).__name__}.")
        self.trainer = trainer
        self.project_name = project_name
        self.scorers = scorers
        self.generation_config = generation_config
        self.num_prompts = num_prompts
        self.dataset_name = dataset_name
        if model_name is None:
            config = getattr(getattr(trainer, "model", None), "config", None)
            model_name = getattr(config, "_name_or_path", None) or "model"
        self.model_name = model_name
        self._prompt_ids = _eval_prompt_ids(trainer, num_prompts, "WeaveCallback")
        self._prompts = _decode_prompts(trainer, self._prompt_ids)
        self._client = None
        self._warned = False

    def _connect(self):
        import weave

        if self._client is None:
            self._client = _weave_client(weave)
        if self._client is None:
            project = self.project_name
            if project is None and _reporting_to(self.trainer.args, "wandb"):
                import wandb

                if wandb.run is not None:
                    project = f"{wandb.run.entity}/{wandb.run.project}" if wandb.run.entity else wandb.run.project
            if project is not None:
                self._client = weave.init(project)
        if self._client is None and not self._warned:
            self._warned = True
            logger.warning("WeaveCallback: no Weave client, `project_name` or active wandb run, so nothing is logged "
                           "to Weave. Pass `project_name=` or call `weave.init(...)` before training.")
        return self._client

    def on_train_begin(self, args, state, control, **kwargs):
        if args.eval_strategy == "no" and state.is_world_process_zero:
            warnings.warn("WeaveCallback logs at each evaluation, and eval_strategy='no' runs none during training: "
                          "set `eval_strategy='steps'` (with `eval_steps`) or 'epoch', or call `trainer.evaluate()`.",
                          stacklevel=2)

    def on_evaluate(self, args, state, control, **kwargs):
        completions = _generate(self.trainer, self._prompt_ids, self.generation_config)
        if not state.is_world_process_zero or self._connect() is None:
            return
        from weave import EvaluationLogger

        evaluation = EvaluationLogger(model=self.model_name, dataset=self.dataset_name)
        totals = dict.fromkeys(self.scorers, 0.0)
        for prompt, completion in zip(self._prompts, completions):
            prediction = evaluation.log_prediction(inputs={"prompt": prompt}, output=completion)
            for name, scorer in self.scorers.items():
                score = scorer(prompt, completion)
                totals[name] += float(score)
                prediction.log_score(scorer=name, score=score)
            prediction.finish()
        summary = {"step": state.global_step, "num_predictions": len(completions)}
        if self.scorers and completions:
            summary.update({f"{name}/mean": total / len(completions) for name, total in totals.items()})
        evaluation.log_summary(summary)
