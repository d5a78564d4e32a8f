"""`_OnlineTrainer`: the rollout loop shared by GRPO and RLOO (generate -> score -> advantages -> buffer -> loss).

How a run is cut (see `_OnlineConfig` for the fields):
- The sampler ([`RepeatSampler`]) yields each prompt `num_generations` times in a row, a whole generation batch at a
  time, and repeats that generation batch `steps_per_generation × num_iterations` times, so that the Trainer's
  step count (one dataloader batch per micro-step) is right. A streaming (`IterableDataset`) train or eval set gets
  the same layout from [`RepeatedGroups`] as it is read, its prompts tokenised on the fly (`max_steps` required).
- Evaluation samples `num_generations_eval` completions per eval prompt and reports their reward metrics and
  `eval_loss = −(mean total reward)`; a dict of eval datasets is evaluated one by one, under `eval_<name>_`.
- `get_batch_samples` (called once per optimiser step for its accumulated micro-batches) turns the first copy of a
  generation batch into a [`Rollout`] and splits it into `steps_per_generation` micro-batches kept in a buffer; the
  next copies are served from the buffer. Counting the loss tokens of the step there, after generation, is what
  lets the losses normalise by the whole step (`trl.losses.reduce`).
- A [`Rollout`] is the only thing passed between the stages.

Subclasses provide `_advantages(rollout)` and `_loss(micro, logps, entropy, mask)` (and their config class); this
base holds everything else. Overridable methods: those two, `_loss_mask`, `_needs_old_logps_for_rewards` (RLOO's
KL penalty) and `_reward_std` (GRPO's `scale_rewards="batch"`); `_per_sequence_metrics` names the loss metrics that
are means over completions.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import Sampler

from .. import checkpoints, guards
from ..agents.environments import ENVIRONMENT_COLUMN, EnvironmentPool, append_to_prompt
from ..agents.multi_turn import check_tool_prompts, check_tool_turns, multi_turn_rollout, tool_turn_end_ids
from ..agents.rollouts import cut_mid_call
from ..agents.tools import Toolbox, tool_metrics
from ..chat_template_utils import get_training_chat_template, is_chat_template_prefix_preserving
from ..data.prompts import first_rows, prepare_prompt_dataset, tokenize_prompt
from ..data.tokenize import end_of_turn_ids
from ..data.vision import load_processor_for
from ..generation.base import SamplingConfig
from ..generation.rollout_func import generate_rows, rollout_from_func_output
from ..generation.transformers_backend import TransformersBackend
from ..generation.vision import VISION_KEYS, VisionRollouts
from ..models import loading
from ..models.utils import causal_lm
from ..ops.fused_head import completion_logps, router_aux_loss_coef
from ..ops.shared_prompt import MOE_REASON, VLM_REASON, can_share, score_shared, share_prompts, sharing_enabled
from ..rewards.scoring import RewardScorer
from ..rollout import Rollout, StepCounts
from ..template_families import tool_call_family
from .base_trainer import _BaseTrainer, as_config, configure_streaming

_STATE_FILE = "online_state_{rank}.pt"
# the share of truncated completions or of zero-variance groups above which a generation batch mostly teaches nothing
_MOSTLY = 0.9
# loss metrics (means over a micro-batch's tokens) under their documented names, and the extremes logged beside them
_METRIC_NAMES = {
    "clip_ratio/low": "clip_ratio/low_mean", "clip_ratio/high": "clip_ratio/high_mean",
    "clip_ratio/region": "clip_ratio/region_mean",
}
_EXTREMES = {"clip_ratio/low": ("clip_ratio/low_min", "min"), "clip_ratio/high": ("clip_ratio/high_max", "max")}


class RepeatSampler(Sampler[int]):
    """Indices of prompts in whole generation batches: each prompt `num_generations` times in a row, each generation
    batch of `prompts_per_batch` prompts repeated `repeat_count` times (once per micro-step that consumes it).

    Example:
        ```python
        >>> list(RepeatSampler(4, num_generations=2, prompts_per_batch=2, repeat_count=2, shuffle=False))
        [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
        ```
    """

    def __init__(self, num_rows: int, num_generations: int, prompts_per_batch: int, repeat_count: int = 1,
                 shuffle: bool = True, seed: int = 0, keep_last: bool = False):
        self.num_rows, self.num_generations, self.prompts_per_batch = num_rows, num_generations, prompts_per_batch
        self.repeat_count, self.shuffle, self.seed, self.epoch = repeat_count, shuffle, seed, 0
        self.keep_last = keep_last  # keep a last, partial batch of prompts (evaluation)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = list(range(self.num_rows))
        end = len(order) if self.keep_last else len(order) - self.prompts_per_batch + 1
        for start in range(0, end, self.prompts_per_batch):
            chunk = order[start : start + self.prompts_per_batch]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.num_generations

    def __len__(self) -> int:
        rows = self.num_rows if self.keep_last else self.num_rows // self.prompts_per_batch * self.prompts_per_batch
        return rows * self.num_generations * self.repeat_count


class RepeatedGroups(torch.utils.data.IterableDataset):
    """[`RepeatSampler`]'s layout for a streaming dataset: rows of `dataset` read in chunks of `prompts_per_batch`,
    each chunk yielded `repeat_count` times with each row `num_generations` times in a row, so that a generation
    batch holds whole groups (a last, partial chunk is dropped unless `keep_last`). The stream's own order is kept
    (shuffle it with `dataset.shuffle(buffer_size=...)`).

    Example:
        ```python
        >>> list(RepeatedGroups(["a", "b", "c"], num_generations=2, prompts_per_batch=2, repeat_count=2))
        ['a', 'a', 'b', 'b', 'a', 'a', 'b', 'b']
        ```
    """

    def __init__(self, dataset, num_generations: int, prompts_per_batch: int, repeat_count: int = 1,
                 keep_last: bool = False):
        self.dataset, self.num_generations, self.prompts_per_batch = dataset, num_generations, prompts_per_batch
        self.repeat_count, self.keep_last = repeat_count, keep_last

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        chunk = []
        for row in self.dataset:
            chunk.append(row)
            if len(chunk) == self.prompts_per_batch:
                yield from self._groups(chunk)
                chunk = []
        if chunk and self.keep_last:
            yield from self._groups(chunk)

    def _groups(self, chunk):
        for _ in range(self.repeat_count):
            for row in chunk:
                for _ in range(self.num_generations):
                    yield row


def _is_streaming(dataset) -> bool:
    from datasets import IterableDataset

    return isinstance(dataset, IterableDataset)


def _columns(dataset) -> list[str]:
    if _is_streaming(dataset):
        head = first_rows(dataset, 1)
        return list(head[0]) if head else []
    return list(dataset.column_names)


def _column(dataset, name: str) -> list:
    return [row[name] for row in first_rows(dataset)] if _is_streaming(dataset) else dataset[name]


def batch_plan(args, num_processes: int, off_policy: bool) -> str:
    """One paragraph saying how prompts become completions, micro-batches and optimiser steps (batch sizes in online
    RL count completions, which is the usual source of confusion).

    Example:
        ```python
        >>> print(batch_plan(GRPOConfig(output_dir="o", per_device_train_batch_size=8, num_generations=4), 1, False))
        Batch plan: each generation batch samples 2 prompts x 4 completions = 8 completions (8 per process, ...
        ```
    """
    prompts = args.generation_batch_size // args.num_generations
    per_process = args.generation_batch_size // num_processes
    steps = args.steps_per_generation * args.num_iterations / args.gradient_accumulation_steps
    return (
        f"Batch plan: each generation batch samples {prompts} prompts x {args.num_generations} completions = "
        f"{args.generation_batch_size} completions ({per_process} per process, {num_processes} process(es)), split "
        f"into {args.steps_per_generation} micro-batch(es) of {args.per_device_train_batch_size} per process, used "
        f"{args.num_iterations} time(s): {steps:g} optimiser step(s) per generation batch "
        f"(gradient_accumulation_steps={args.gradient_accumulation_steps}); "
        + ("old log-probs are kept because the policy moves before a micro-batch is used." if off_policy
           else "every micro-batch is on-policy (no old log-probs needed).")
    )


def _message_text(message: dict) -> str:
    """The text of a message whose content is a string or a list of `{"type": "text", "text": ...}` parts."""
    content = message.get("content", "")
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content or ""


def _identity(rows: list[dict]) -> list[dict]:
    return rows


class _OnlineTrainer(_BaseTrainer):
    """Base of [`GRPOTrainer`] and [`RLOOTrainer`]; see the module docstring."""

    _config_class = None  # set by subclasses
    _sequence_level_metrics = False  # True when the loss metrics are fractions of sequences (RLOO)
    _per_sequence_metrics: tuple[str, ...] = ()  # loss metrics that are means over completions (GRPO's VESPO φ)
    _guards_gradient = False  # the rollout guards judge whole generation batches instead
    _scores_rewards = True  # False: no reward functions (`reward_scorer` is None; DistillationTrainer)

    def __init__(self, model, reward_funcs, args=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 reward_processing_classes=None, callbacks=None, optimizers=(None, None), quantization_config=None,
                 peft_config=None, tools=None, environment_factory=None, rollout_func=None):
        args = as_config(args, self._config_class, self._default_output_dir(model, self._name))
        # replaces generation when given (GRPOTrainer checks it); its output becomes a Rollout in `_sample`
        self.rollout_func = rollout_func
        self._environment_owned = train_dataset is None
        if train_dataset is None:
            train_dataset = self._environment_owned_rows(environment_factory, args)
        model_id = model if isinstance(model, str) else None
        model = self._load_model(model, args, quantization_config)
        if processing_class is None:  # a vision-language model loads its processor (None for a text model)
            processing_class = load_processor_for(model, model_id, args)
        processing_class = self._load_processing_class(processing_class, model, model_id, args)
        # a vision-language model: its processor renders and processes the prompts with their images; the rest of
        # the loop works with its tokenizer (trl/generation/vision.py, docs/vision.md)
        self._vision, saved_class = None, processing_class
        tokenizer = getattr(processing_class, "tokenizer", None)
        if tokenizer is not None and tokenizer is not processing_class:
            VisionRollouts.check_supported(
                type(self).__name__, tools=tools, environment_factory=environment_factory, args=args,
                rollout_func=rollout_func,
                scores_rewards=self._scores_rewards)
            self._vision = VisionRollouts(processing_class, type(self).__name__, args.chat_template_kwargs)
            processing_class = tokenizer
        loading.prepare_tokenizer(processing_class, model)
        processing_class.padding_side = "left"
        # environments: one instance per rollout, its methods as tools (docs/agents.md)
        self.environments = EnvironmentPool(environment_factory, tools) if environment_factory is not None else None
        self._saved_chat_template = None  # the template saved with the model when a training template is swapped in
        self.toolbox, processing_class = self._tool_setup(tools, processing_class, self.environments)
        # a tool output of more characters than this cannot fit a completion even in the longest tokens, so cutting
        # it there changes nothing but the time spent rendering and tokenizing it (docs/agents.md)
        self._max_tool_output_chars = args.max_completion_length * max(
            [1, *map(len, processing_class.get_vocab())]) if self.toolbox is not None else None
        self._episodes = None  # the environments of the generation batch being scored
        # with tools, the prompts are rendered with their schemas (and so are the tool turns of the rollouts); with
        # environments they are rendered again per rollout, after reset, with the rollout's own tools
        self._template_kwargs = args.chat_template_kwargs
        if self.toolbox is not None:
            self._template_kwargs = {**(args.chat_template_kwargs or {}), "tools": self.toolbox.schemas}
        model = self._setup_policy_and_reference(
            model, None, model_id, args, quantization_config, peft_config, need_reference=self._uses_reference(args)
        )
        self._streaming = _is_streaming(train_dataset)
        if self._streaming and (args.max_steps is None or args.max_steps <= 0):
            raise ValueError(
                f"{type(self).__name__} got a streaming train dataset (`IterableDataset`), which has no length: set "
                f"`max_steps` (a positive number of optimiser steps; got {args.max_steps})."
            )
        if self._vision is not None:
            train_dataset, conversational = self._vision.prepare(train_dataset, "train"), True
        else:
            train_dataset, conversational = prepare_prompt_dataset(
                train_dataset, processing_class, type(self).__name__, "train", self._template_kwargs, model=model
            )
        if self.toolbox is not None and not conversational:
            raise ValueError(
                f"{type(self).__name__} with `tools` needs conversational prompts (lists of messages): tool calls and "
                "their results are turns of a conversation. Give the 'prompt' column as "
                "[{'role': 'user', 'content': ...}]."
            )
        # a streaming dataset is checked on its first rows only (reading it all would consume the stream)
        if self.toolbox is not None:
            check_tool_prompts(_column(train_dataset, "prompt"))
        if self.environments is not None:
            columns = [c for c in _columns(train_dataset) if c != "prompt_ids"]
            routes = _column(train_dataset, ENVIRONMENT_COLUMN) if ENVIRONMENT_COLUMN in columns else None
            # environment-owned data: reset() gets no columns (the placeholder prompts are not passed)
            self.environments.check_dataset([] if self._environment_owned else columns, routes)
            reward_funcs = self._with_environment_rewards(reward_funcs)
        if self._streaming:  # the first rows only: the stream is read once, during training
            self._check_prompts_fit(causal_lm(model), {"prompt_ids": _column(train_dataset, "prompt_ids")}, args)
        else:
            self._check_prompts_fit(causal_lm(model), train_dataset, args)
            self._check_enough_prompts(train_dataset, args)
        if eval_dataset is not None:
            eval_dataset = self._prepare_eval_datasets(eval_dataset, processing_class, model)
        if self._scores_rewards:
            reward_weights = args.reward_weights
            if self.environments is not None:  # each environment reward has weight 1 and no tokenizer
                extra = len(self.environments.reward_funcs)
                if reward_weights is not None:
                    reward_weights = [*reward_weights, *[1.0] * extra]
                if isinstance(reward_processing_classes, (list, tuple)):
                    reward_processing_classes = [*reward_processing_classes, *[None] * extra]
            self.reward_scorer = RewardScorer(
                reward_funcs, reward_weights, reward_processing_classes, model_init_kwargs=args.model_init_kwargs,
                trust_remote_code=args.trust_remote_code, trainer_name=type(self).__name__,
            )
            # what callbacks read (the reference's attribute names): one entry per reward function, the tokenizer of
            # each reward model (given or auto-loaded) and None for callables
            self.reward_funcs = self.reward_scorer.reward_funcs
            self.reward_processing_classes = self.reward_scorer.processing_classes
        else:  # the completions are scored otherwise (DistillationTrainer: by a teacher's distributions)
            self.reward_scorer, self.reward_funcs, self.reward_processing_classes = None, [], []
        evals = eval_dataset.values() if isinstance(eval_dataset, Mapping) else [eval_dataset]
        configure_streaming(args, train_dataset, *evals)
        super().__init__(
            model=model, args=args, data_collator=_identity, train_dataset=train_dataset, eval_dataset=eval_dataset,
            # the processor of a vision-language model; else the tokenizer (a copy with a training template for tools)
            processing_class=saved_class if self._vision else processing_class, callbacks=callbacks,
            optimizers=optimizers,
        )
        self._init_metrics()
        self._finish_reference_setup(score=None, columns=())
        if self.reward_scorer is not None:
            self.reward_scorer.to(self.accelerator.device)
        self.backend = TransformersBackend(self.model, cache_implementation=args.cache_implementation,
                                           compile=args.generation_compile)
        generation_eos = getattr(causal_lm(model).generation_config, "eos_token_id", None)
        generation_eos = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
        self.sampling = SamplingConfig(
            eos_token_ids=tuple(sorted(end_of_turn_ids(self._vision.renderer if self._vision else processing_class)
                                       | set(generation_eos) | self._tool_end_ids)),
            pad_token_id=processing_class.pad_token_id, **args.sampling_overrides(),
        ).with_overrides(args.generation_kwargs)
        self._generator = torch.Generator(device=self.accelerator.device)
        self._generator.manual_seed(args.seed + self.accelerator.process_index)
        cycle = args.steps_per_generation * args.num_iterations
        # The policy that generated a micro-batch has moved when an optimiser step falls between generation and use.
        self._off_policy = cycle > args.gradient_accumulation_steps or args.gradient_accumulation_steps % cycle != 0
        self._buffer: list[Rollout] = []
        self._buffer_position = 0  # micro-batches served since the start of training
        self._guard_counts = {"no_signal": 0, "truncated": 0, "zero_std": 0, "mostly_truncated": 0,
                              "mostly_zero_std": 0}
        self._completions_table: dict | None = None  # the last generation batch, for `log_completions`
        self._step_started = None
        self.model_accepts_loss_kwargs = False
        self._aux_loss_coef = router_aux_loss_coef(causal_lm(model), args.router_aux_loss_coef)
        self._share_prompts = sharing_enabled(causal_lm(model), args.share_prompt_forward,
                                              VLM_REASON if self._vision is not None else None,
                                              MOE_REASON if self._aux_loss_coef > 0 else None)
        if self.accelerator.is_main_process and not args.disable_tqdm:
            print(batch_plan(args, self.accelerator.num_processes, self._off_policy))

    # ---- construction helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _uses_reference(args) -> bool:
        return args.beta != 0.0

    def _environment_owned_rows(self, environment_factory, args):
        """Without a `train_dataset`, an `environment_factory` owns the data: placeholder rows with an empty user
        message, to which each environment's `reset()` output (the task) is appended. `max_steps` bounds the run."""
        name = type(self).__name__
        if environment_factory is None:
            takes_environments = "environment_factory" in inspect.signature(type(self).__init__).parameters
            raise ValueError(f"{name} needs a `train_dataset` of prompts (a 'prompt' column)" + (
                "; it may be omitted only when an `environment_factory` owns the data (its reset() returns the "
                "prompt)." if takes_environments else "."))
        if isinstance(environment_factory, Mapping):
            raise ValueError(
                f"{name} got a dict of environments {list(environment_factory)} and no `train_dataset`: the rows of a "
                f"dataset choose the environment (an '{ENVIRONMENT_COLUMN}' column). Give a train_dataset, or a single "
                "factory that owns the data."
            )
        if args.max_steps is None or args.max_steps <= 0:
            raise ValueError(
                f"{name} got no `train_dataset`, so the environment owns the data and an epoch has no length: set "
                f"`max_steps` (a positive number of optimiser steps; got {args.max_steps})."
            )
        from datasets import Dataset

        rows = max(1, args.generation_batch_size // args.num_generations)
        return Dataset.from_dict({"prompt": [[{"role": "user", "content": ""}] for _ in range(rows)]})

    def _tool_setup(self, tools, tokenizer, environments):
        """`(toolbox, tokenizer)`: the [`Toolbox`] of `tools` (checked: type hints, docstrings; docs/agents.md), None
        without tools or environments (which are checked by [`EnvironmentPool`]), and the tokenizer to render with.
        When there is anything to call, the chat template must write tool calls in a format we parse
        (`trl.template_families.tool_call_family`, which sets `self._tool_family`) and append tool turns without
        rewriting earlier ones; a template that rewrites them (e.g. Qwen3's, which drops earlier turns' reasoning)
        is replaced, on a shallow copy of the tokenizer, by its family's training template
        (`trl.chat_template_utils.get_training_chat_template`), with a warning; the model is saved with the original
        template."""
        self._tool_family, self._tool_end_ids = None, set()
        if not tools and environments is None:
            return None, tokenizer
        toolbox = environments.tools if environments is not None else Toolbox(tools)
        if not self._all_tool_names(toolbox, environments):  # environments without methods: nothing to call
            return toolbox, tokenizer
        self._tool_family = tool_call_family(tokenizer)
        no_training_template = None  # why no training template could be made, when one was needed
        if not is_chat_template_prefix_preserving(tokenizer):
            original = tokenizer.chat_template
            try:
                template = get_training_chat_template(processing_class=tokenizer)
            except ValueError as error:
                # rollouts only append turns after the prompt: the template serves as it is if it appends the tool
                # turns without rewriting the completion's turns (check_tool_turns, below)
                template, no_training_template = None, error
            if template is not None:
                tokenizer = copy.copy(tokenizer)
                tokenizer.chat_template, self._saved_chat_template = template, original
                warnings.warn(
                    f"The chat template ({self._tool_family.name} family) rewrites earlier turns when a turn is added, "
                    "so tool results could not be appended to the generated tokens; rollouts are rendered with its "
                    "training template (trl.chat_template_utils.get_training_chat_template), which renders every "
                    "turn as the original does when it is the latest one (earlier assistant turns keep, e.g., their "
                    "reasoning). The model is saved with the original template.", stacklevel=3,
                )
        self._tool_end_ids = tool_turn_end_ids(tokenizer)  # e.g. GPT-OSS's <|call|>: sampling stops there too
        try:
            # with the tools' schemas, as rollouts render (a template may need them, e.g. Command R+'s tool_use)
            check_tool_turns(tokenizer, end_of_turn_ids(tokenizer) | self._tool_end_ids, {"tools": toolbox.schemas})
        except ValueError as error:
            if no_training_template is None:
                raise
            raise ValueError(
                "The chat template rewrites earlier turns when a turn is added, so tool results cannot be appended "
                "to the generated tokens, and no training template can stand in for it. Give the tokenizer a "
                f"template that renders earlier turns the same way whatever follows. ({error} {no_training_template})"
            ) from error
        return toolbox, tokenizer

    def _with_environment_rewards(self, reward_funcs) -> list:
        """`reward_funcs` (None allowed) followed by the environments' `get_reward`, weight 1 each."""
        funcs = [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [
            reward_funcs]
        return funcs + self.environments.reward_funcs

    @staticmethod
    def _check_prompts_fit(model, dataset, args) -> None:
        """Every prompt plus `max_completion_length` must fit the model's context."""
        context = getattr(model.config, "max_position_embeddings", None)
        if context is None:
            return
        limit = context - args.max_completion_length
        lengths = [len(ids) for ids in dataset["prompt_ids"]]
        too_long = [i for i, n in enumerate(lengths) if n > limit]
        if too_long:
            raise ValueError(
                f"{len(too_long)} of {len(lengths)} prompts (e.g. rows {too_long[:5]}, longest {max(lengths)} tokens) "
                f"leave no room for max_completion_length={args.max_completion_length} in the model's context of "
                f"{context} tokens. Lower max_completion_length, or filter/shorten prompts to at most {limit} tokens."
            )

    def _prepare_eval_datasets(self, eval_dataset, processing_class, model):
        """The eval dataset(s) with `prompt_ids`: one dataset (map-style or streaming), or a dict / `DatasetDict` of
        them, each prepared on its own (each is evaluated under its own prefix, `eval_<name>_...`)."""
        if isinstance(eval_dataset, Mapping):
            return {name: self._prepare_eval_datasets(d, processing_class, model) for name, d in eval_dataset.items()}
        if self._vision is not None:
            return self._vision.prepare(eval_dataset, "eval")
        eval_dataset, _ = prepare_prompt_dataset(
            eval_dataset, processing_class, type(self).__name__, "eval", self._template_kwargs, model=model
        )
        if self.toolbox is not None:
            check_tool_prompts(_column(eval_dataset, "prompt"))
        if self.environments is not None:
            columns = [c for c in _columns(eval_dataset) if c != "prompt_ids"]
            routes = _column(eval_dataset, ENVIRONMENT_COLUMN) if ENVIRONMENT_COLUMN in columns else None
            self.environments.check_dataset(columns, routes)
        return eval_dataset

    @staticmethod
    def _check_enough_prompts(dataset, args) -> None:
        prompts_per_batch = args.generation_batch_size // args.num_generations
        if len(dataset) < prompts_per_batch:
            raise ValueError(
                f"The train dataset has {len(dataset)} prompts but one generation batch needs {prompts_per_batch} "
                f"(generation_batch_size {args.generation_batch_size} / num_generations {args.num_generations}). "
                "Add prompts or lower per_device_train_batch_size / steps_per_generation."
            )

    # ---- data ---------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None) -> Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return RepeatSampler(
            len(dataset), self.args.num_generations, self.args.generation_batch_size // self.args.num_generations,
            repeat_count=self.args.steps_per_generation * self.args.num_iterations,
            shuffle=self.args.shuffle_dataset, seed=self.args.seed,
        )

    def _set_signature_columns_if_needed(self):
        # with remove_unused_columns=True only the prompt survives (the reward functions then get no extra columns)
        if self._signature_columns is None:
            self._signature_columns = ["prompt", "prompt_ids"]
            if self._vision is not None:  # generation needs the images
                self._signature_columns += ["image", "images", "_vision_row"]

    def get_train_dataloader(self):
        # one dataloader batch = this process's share of a generation batch (it is consumed as one micro-step)
        dataset = self.train_dataset
        if _is_streaming(dataset):  # the sampler's layout, built while the stream is read
            dataset = RepeatedGroups(
                dataset, self.args.num_generations, self.args.generation_batch_size // self.args.num_generations,
                repeat_count=self.args.steps_per_generation * self.args.num_iterations,
            )
        return self._get_dataloader(
            dataset=dataset, description="Training",
            batch_size=self.args.per_device_train_batch_size * self.args.steps_per_generation,
            sampler_fn=self._get_train_sampler, is_training=True,
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Serve the micro-batches of one optimiser step from the rollout buffer, generating when it is used up, and
        attach the step's loss-token and sequence counts to each (the normalisers of `trl.losses.reduce`)."""
        batches = []
        for _ in range(num_batches):
            try:
                rows = next(epoch_iterator)
            except StopIteration:
                break
            batches.append(self._next_micro_batch(rows))
        if batches:
            tokens = sum(self._loss_mask(b).sum() for b in batches)
            sequences = torch.tensor(sum(len(b) for b in batches), device=tokens.device)
            counts = torch.stack([tokens.to(torch.float64), sequences.to(torch.float64)])
            if self._dp_world_size() > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            step_counts = StepCounts(tokens=counts[0], sequences=counts[1], micro_batches=len(batches))
            for batch in batches:
                batch.step_counts = step_counts
            self._check_step_has_loss_tokens(step_counts)
        return batches, None

    def _next_micro_batch(self, rows: list[dict]) -> Rollout:
        spg = self.args.steps_per_generation
        if self._buffer_position % (spg * self.args.num_iterations) == 0:
            rollout = self._make_rollout(rows)
            order = torch.randperm(len(rollout), generator=torch.Generator().manual_seed(self._shuffle_seed()))
            rollout = rollout.select(order)
            size = self.args.per_device_train_batch_size
            self._buffer = [rollout.select(slice(i * size, (i + 1) * size)).trim() for i in range(spg)]
        micro = self._buffer[self._buffer_position % spg]
        self._buffer_position += 1
        return micro

    def _shuffle_seed(self) -> int:
        return self.args.seed * 1_000_003 + self._buffer_position

    # ---- the rollout: generate -> (old / reference log-probs) -> score -> advantages ------------------------------

    def _make_rollout(self, rows: list[dict]) -> Rollout:
        self._step_started = time.perf_counter()
        started = time.perf_counter()
        rollout = self._sample(rows, self._generator, mode="train")
        generated = time.perf_counter()
        try:
            rollout.old_logps = self._old_logps(rollout)
            if self._uses_reference(self.args):
                rollout.ref_logps = self._score_logps(rollout, reference=True)
            scored_logps = time.perf_counter()
            scores = self._score(rollout)
        finally:  # the environments go back to the pool even when scoring raises
            self._release_environments(rollout)
        all_rewards = self.accelerator.gather(rollout.rewards)  # (N_all, R): groups may straddle processes
        advantages = self._advantages(rollout, all_rewards)
        rank, local = self.accelerator.process_index, len(rollout)
        rollout.advantages = advantages[rank * local : (rank + 1) * local]
        scored = time.perf_counter()
        self._record_rollout_metrics(rollout, all_rewards, scores)
        timing = {"generate": generated - started, "logps": scored_logps - generated, "score": scored - scored_logps}
        for key, seconds in timing.items():
            self._metrics.add("train", f"timing/{key}", seconds)
        self._remember_completions(rollout, scores, advantages)
        self._check_rollout_guards(rollout, all_rewards, scores.nan_count)
        return rollout

    def _sample(self, rows: list[dict], generator: torch.Generator, mode: str) -> Rollout:
        """One completion per row, with what the reward functions read: prompts, completions, dataset columns (and
        the extra fields of a `rollout_func`). With tools, a multi-turn rollout whose completions are messages."""
        prompts = [row["prompt"] for row in rows]
        columns = {k: [row[k] for row in rows] for k in rows[0] if k not in ("prompt", "prompt_ids")}
        if self.toolbox is not None:
            rollout = self._tool_rollout(rows, generator, mode)
            rollout.columns = {**columns, **rollout.columns}
            return rollout
        if self._vision is not None:  # sampled with the rows' images (trl/generation/vision.py)
            self.backend.sync_weights(self.model)
            rollout = self._vision.generate(self.backend.model, rows, self.sampling, generator)
            columns = {**{k: v for k, v in columns.items() if k != "_vision_row"}, **rollout.columns}
        elif self.rollout_func is None:
            rollout = self._generate([row["prompt_ids"] for row in rows], generator)
        else:
            self.backend.sync_weights(self.model)
            rollout, extra = rollout_from_func_output(
                self.rollout_func(prompts, self), len(rows), self.sampling, self.accelerator.device
            )
            columns.update(extra)
        rollout.prompts, rollout.columns = prompts, columns
        rollout.completions = self._decode(rollout)
        return rollout

    def _score(self, rollout: Rollout):
        """Run the reward functions; sets `rollout.rewards` and returns the scorer's `RewardScores`."""
        columns = {k: v for k, v in rollout.columns.items() if k not in VISION_KEYS}  # the trainer's own
        scores = self.reward_scorer.score(
            rollout.prompts, rollout.completions, self._completion_id_lists(rollout), columns,
            trainer_state=self.state,
        )
        rollout.rewards = scores.rewards.to(self.accelerator.device)
        return scores

    def _tool_rollout(self, rows: list[dict], generator, mode: str) -> Rollout:
        """Multi-turn rollouts with the tools (`trl.agents.multi_turn`); logs `tools/call_frequency` and
        `tools/failure_frequency` over every process's rollouts. With environments, each row gets an environment
        `reset` with its columns, whose output is appended to the prompt, and the prompt is rendered with the
        rollout's own tools; the reward functions get `environments=` (released by `_release_environments`)."""
        prompts = [row["prompt"] for row in rows]
        prompt_ids, columns = [row["prompt_ids"] for row in rows], {}
        toolboxes, template_kwargs = self.toolbox, self._template_kwargs
        if self.environments is not None:
            placeholder = self._environment_owned and mode == "train"  # the rows carry no data: reset() gets none
            self._episodes = self.environments.acquire(
                [{} if placeholder else {k: v for k, v in row.items() if k != "prompt_ids"} for row in rows]
            )
            prompts = [append_to_prompt(p, e.observation) for p, e in zip(prompts, self._episodes)]
            toolboxes = [e.toolbox for e in self._episodes]
            template_kwargs = [{**(self.args.chat_template_kwargs or {}), "tools": e.toolbox.schemas}
                               for e in self._episodes]
            prompt_ids = [tokenize_prompt({"prompt": p}, self.processing_class, True, kwargs)
                          for p, kwargs in zip(prompts, template_kwargs)]
            columns["environments"] = [e.environment for e in self._episodes]
        try:
            self._check_rendered_prompts_fit(prompt_ids)
            result = multi_turn_rollout(
                lambda ids, max_new_tokens: self._generate(ids, generator, max_new_tokens), prompt_ids, prompts,
                self.processing_class, toolboxes, max_completion_length=self.args.max_completion_length,
                eos_token_ids=self.sampling.eos_token_ids, pad_token_id=self.sampling.pad_token_id,
                max_iterations=self.args.max_tool_calling_iterations, timeout=self.args.tool_timeout,
                template_kwargs=template_kwargs, continuation=self.backend.continuation(),
                max_output_chars=self._max_tool_output_chars,
            )
            cut = [float(c) for c in cut_mid_call(result.completions, result.rollout.is_truncated.tolist(),
                                                  self._tool_family)]
            counts = torch.tensor([result.num_calls, result.num_failures, cut], device=self.accelerator.device).T
            counts = self.accelerator.gather(counts).tolist()  # (N_all, 3)
            calls, failures, cut = ([int(row[k]) for row in counts] for k in range(3))
            for key, value in tool_metrics(calls, failures).items():
                self._metrics.add(mode, key, value)
            self._metrics.add(mode, "tools/truncated_call_frequency", sum(cut) / len(cut))
            if mode == "train" and self._tool_family is not None:
                self._check_tool_guards(sum(calls), sum(cut), len(cut))
        except BaseException:
            if self._episodes is not None:  # an error mid-rollout: the environments go back to the pool
                self.environments.release(self._episodes)
                self._episodes = None
            raise
        rollout = result.rollout
        rollout.prompts, rollout.completions, rollout.columns = prompts, result.completions, columns
        return rollout

    def _check_rendered_prompts_fit(self, prompt_ids: list[list[int]]) -> None:
        """Prompts rendered at step time (with an environment's reset output and tools) are checked against the
        model's context: one that fills it is an error (nothing can be generated); one that leaves less than
        `max_completion_length` is warned about (its completion may run past the context the model was trained on)."""
        context = getattr(causal_lm(self.model).config, "max_position_embeddings", None)
        if context is None:
            return
        lengths = [len(ids) for ids in prompt_ids]
        where = "once rendered with the environment's reset() output and tools"
        if full := [i for i, n in enumerate(lengths) if n >= context]:
            raise ValueError(
                f"{len(full)} of {len(lengths)} prompts of this generation batch (e.g. rows {full[:5]}, longest "
                f"{max(lengths)} tokens {where}) fill the model's context of {context} tokens, so nothing can be "
                "generated. Make reset() return less text or shorten the prompts."
            )
        limit = context - self.args.max_completion_length
        if long := [i for i, n in enumerate(lengths) if n > limit]:
            warnings.warn(
                f"{len(long)} of {len(lengths)} prompts of this generation batch (e.g. rows {long[:5]}, longest "
                f"{max(lengths)} tokens {where}) leave less than max_completion_length="
                f"{self.args.max_completion_length} tokens of the model's context of {context}: their completions "
                f"may run past it. Make reset() return less text, lower max_completion_length, or keep prompts to "
                f"{limit} tokens.", stacklevel=2,
            )

    def _check_tool_guards(self, num_calls: int, num_cut: int, num_rollouts: int) -> None:
        """Tools are given but no rollout called one for `guard_patience` generation batches in a row (the model
        does not know the format: warned); rollouts cut by `max_completion_length` in the middle of a tool call or
        with a tool turn that did not fit (warned when it starts, and again every `guard_patience` batches)."""
        patience = self.args.guard_patience
        self._guard_counts["no_tool_calls"] = 0 if num_calls else self._guard_counts.get("no_tool_calls", 0) + 1
        self._guard_counts["cut_calls"] = self._guard_counts.get("cut_calls", 0) + 1 if num_cut else 0
        if self._guard_counts["no_tool_calls"] == patience:
            warnings.warn(
                f"Tools are given ({', '.join(self._tool_names())}) but no rollout of the last {patience} generation "
                "batches called one (`tools/call_frequency` 0): the model may not know the chat template's "
                "tool-call format. Start from a model that calls tools (e.g. SFT on a few tool-call transcripts), "
                "show the format in the system prompt, or check that the chat template renders the tools.",
                stacklevel=2,
            )
        if num_cut and self._guard_counts["cut_calls"] % patience == 1 % patience:
            warnings.warn(
                f"{num_cut} of {num_rollouts} rollouts of this generation batch were cut by max_completion_length="
                f"{self.args.max_completion_length} in the middle of a tool call, or their tool results did not fit "
                "(`tools/truncated_call_frequency`): they end without an answer. Raise max_completion_length or "
                "lower max_tool_calling_iterations.", stacklevel=2,
            )

    def _tool_names(self) -> list[str]:
        return self._all_tool_names(self.toolbox, self.environments)

    @staticmethod
    def _all_tool_names(toolbox, environments) -> list[str]:
        """Every tool a rollout may be offered: the standalone tools and every environment's methods."""
        if environments is not None:
            return environments.tool_names
        return toolbox.names if toolbox is not None else []

    def _release_environments(self, rollout: Rollout) -> None:
        """Give a scored generation batch's environments back to the pool (they are not kept in the buffer, which
        a checkpoint stores)."""
        if self._episodes is not None:
            self.environments.release(self._episodes)
            self._episodes = None
            rollout.columns.pop("environments", None)

    def _generate(self, prompt_ids: list[list[int]], generator: torch.Generator,
                  max_new_tokens: int | None = None) -> Rollout:
        """Generate one completion per row (at most `max_new_tokens`, default `max_completion_length`), prefilling
        each run of identical prompts once."""
        sampling = self.sampling
        if max_new_tokens is not None:
            sampling = dataclasses.replace(sampling, max_completion_length=max_new_tokens)
        self.backend.sync_weights(self.model)
        return generate_rows(self.backend, prompt_ids, sampling, generator)  # trl/generation/rollout_func.py

    def _decode(self, rollout: Rollout) -> list:
        """Completions as the rewards see them: text for text prompts, one assistant message for conversational ones.
        A prefilled final assistant message (continued by generation) moves from the prompt into the completion, so
        that prompt + completion holds it once."""
        texts = self.processing_class.batch_decode(self._completion_id_lists(rollout), skip_special_tokens=True)
        completions, prompts = [], []
        for prompt, text in zip(rollout.prompts, texts):
            if not isinstance(prompt, list):
                prompts.append(prompt)
                completions.append(text)
                continue
            prefill = ""
            if prompt and prompt[-1].get("role") == "assistant":
                prefill, prompt = _message_text(prompt[-1]), prompt[:-1]
            prompts.append(prompt)
            completions.append([{"role": "assistant", "content": prefill + text}])
        rollout.prompts = prompts
        return completions

    @staticmethod
    def _completion_id_lists(rollout: Rollout) -> list[list[int]]:
        lengths = rollout.completion_lengths.tolist()
        return [ids[:n] for ids, n in zip(rollout.completion_ids.tolist(), lengths)]

    def _old_logps(self, rollout: Rollout) -> torch.Tensor | None:
        """Log-probs of the generating policy, only when a micro-batch is used after the policy moved (or RLOO needs
        them for its KL penalty). Plain sampling in fp32 returns exactly these log-probs from generation, so no extra
        forward pass is run; otherwise (filtered sampling, mixed precision) they are recomputed."""
        if not (self._off_policy or self._needs_old_logps_for_rewards()):
            return None
        fp32 = not (self.args.bf16 or self.args.fp16) and next(self.model.parameters()).dtype == torch.float32
        exact = self.rollout_func is None  # a rollout_func's log-probs come from its own engine
        if self.sampling.plain and fp32 and exact and rollout.sampling_logps is not None:
            return rollout.sampling_logps
        return self._score_logps(rollout, reference=False)

    def _needs_old_logps_for_rewards(self) -> bool:
        return False

    def _score_logps(self, rollout: Rollout, reference: bool) -> torch.Tensor:
        """`(N, C)` completion log-probs under the policy or the reference, without gradients, in micro-batches."""
        size = self.args.per_device_train_batch_size
        values = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rollout), size):
                part = rollout.select(slice(start, start + size))
                with torch.no_grad(), self.compute_loss_context_manager():
                    if reference:
                        with self._reference() as ref:
                            values.append(self._forward_logps(ref, part)[0])
                    else:
                        values.append(self._forward_logps(self.model, part)[0])
        finally:
            self.model.train(was_training)
        return torch.cat(values).float()

    def _forward_logps(self, model, micro: Rollout, aux_loss: bool = False):
        """`(B, C)` log-probs and entropies of the completion tokens, from one fused-head forward (no logits), and the
        MoE load-balancing loss when `aux_loss=True` (else None)."""
        if self._vision is not None:  # with each row's images, image tokens suppressed as in sampling
            logps, entropy = self._vision.completion_logps(model, micro, self.sampling.temperature)
            return logps, entropy, None
        shared = self._shared_layout(model, micro) if self._share_prompts and not aux_loss else None
        if shared is not None:  # one row per distinct prompt (trl/ops/shared_prompt.py), scored as one per completion
            lm = causal_lm(self.accelerator.unwrap_model(model))
            scored = score_shared(model, lm, shared, temperature=self.sampling.temperature)
            completion_start = 0
        else:
            input_ids = torch.cat([micro.prompt_ids, micro.completion_ids], dim=1)
            attention_mask = torch.cat([micro.prompt_mask, micro.completion_mask], dim=1)
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            loss_positions = torch.cat([torch.zeros_like(micro.prompt_mask), micro.completion_mask], dim=1)
            scored = completion_logps(
                model, input_ids, attention_mask, loss_positions, position_ids=position_ids,
                temperature=self.sampling.temperature, router_aux_loss=aux_loss,
            )
            completion_start = micro.prompt_ids.shape[1] - 1
        entropy = torch.zeros(scored.mask.shape, dtype=scored.outputs.entropy.dtype, device=scored.mask.device)
        entropy = entropy.masked_scatter(scored.mask, scored.outputs.entropy)
        logps, entropy = scored.token_logps[:, completion_start:], entropy[:, completion_start:]
        return logps, entropy, scored.outputs.aux_loss

    def _shared_layout(self, model, micro: Rollout):
        """The shared-prompt layout of a micro-batch, or None where it does not apply (no two completions of one
        prompt, a reference model that cannot share (other attention, sliding windows, ALiBi), a mask too large)."""
        if not can_share(causal_lm(self.accelerator.unwrap_model(model))):
            return None
        return share_prompts(micro.prompt_ids, micro.prompt_mask, micro.completion_ids, micro.completion_mask)

    # ---- metrics, guards, completions table ---------------------------------------------------------------------

    def _record_rollout_metrics(self, rollout: Rollout, all_rewards: torch.Tensor, scores, mode: str = "train") -> None:
        """Completion lengths and rewards of a generation batch (`all_rewards`: gathered over processes); the group
        statistics (`reward_std`, `frac_reward_zero_std`) in training only, where batches hold whole groups."""
        from ..advantages import group_reward_stats

        def add(key, total, count=1.0):
            self._metrics.add(mode, key, total, count)

        self._record_completion_metrics(rollout, mode)
        for i, name in enumerate(self.reward_scorer.names):
            column = all_rewards[:, i]
            valid = column[~torch.isnan(column)]
            if valid.numel():
                add(f"rewards/{name}/mean", valid.sum(), valid.numel())
                add(f"rewards/{name}/std", valid.std() if valid.numel() > 1 else valid.new_zeros(()))
        total = self._total_rewards(all_rewards)
        add("reward", total.sum(), total.numel())
        for name, values in scores.metrics.items():
            for value in values:
                add(name, float(value))
        if mode != "train":
            return
        group_std, zero_std = group_reward_stats(total, self.args.num_generations)
        add("reward_std", self._reward_std(total, group_std))
        add("frac_reward_zero_std", zero_std.float().mean())
        self._num_tokens["train"] += int(rollout.prompt_mask.sum() + rollout.completion_mask.sum())

    def _reward_std(self, total_rewards: torch.Tensor, group_std: torch.Tensor) -> torch.Tensor:
        """The `reward_std` metric of a generation batch: the mean over its groups of the total rewards' std
        (`group_std`, one per group). GRPO overrides it to follow `scale_rewards`."""
        return group_std.mean()

    def _record_completion_metrics(self, rollout: Rollout, mode: str = "train") -> None:
        """`completions/*`: lengths of a generation batch's completions over every process (tool-result tokens not
        counted) and the share cut by `max_completion_length`."""

        def add(key, total, count=1.0):
            self._metrics.add(mode, key, total, count)

        def add_extreme(key, value, op):
            self._metrics.add_extreme(mode, key, value, op)

        lengths = self.accelerator.gather(rollout.generated_lengths.float())  # tool-result tokens not counted
        truncated = self.accelerator.gather(rollout.is_truncated.float())
        terminated = lengths[truncated == 0]
        add("completions/mean_length", lengths.sum(), lengths.numel())
        add("completions/clipped_ratio", truncated.sum(), truncated.numel())
        add_extreme("completions/min_length", lengths.min(), "min")
        add_extreme("completions/max_length", lengths.max(), "max")
        if terminated.numel():
            add("completions/mean_terminated_length", terminated.sum(), terminated.numel())
            add_extreme("completions/min_terminated_length", terminated.min(), "min")
            add_extreme("completions/max_terminated_length", terminated.max(), "max")

    def _total_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """`(N,)` weighted sum of the reward functions, NaN (None) excluded."""
        return torch.nansum(rewards * self.reward_scorer.weights.to(rewards.device), dim=1)

    def _check_rollout_guards(self, rollout: Rollout, all_rewards: torch.Tensor, nan_count: int = 0) -> None:
        """Judge each generation batch (`all_rewards`: gathered over processes) and count streaks of bad ones.

        - No gradient signal left, `guard_patience` batches in a row, stops the run (a warning with guards=False): no
          group of completions both differs in reward and has a token in the loss (every group got one reward, or
          every loss token is masked, e.g. all truncated with `mask_truncated_completions=True`).
        - Every completion truncated while the batch still teaches (e.g. a length reward, or a small model that never
          ends its answers) is warned about at every batch from the `guard_patience`-th of the streak on: the run
          learns, but the rewards judge unfinished answers.
        - 90% or more of the completions truncated, or of the groups with one reward, is warned about once, when the
          streak reaches `guard_patience` batches.
        - A batch with no usable reward at all, where some function returned NaN (`nan_count` on this process: a bug
          in the reward, not a deliberate None), stops the run at once.
        """
        from ..advantages import group_reward_stats

        g, patience, enforce = self.args.num_generations, self.args.guard_patience, guards.policy(self.args)
        weighted = self.reward_scorer.weights.to(all_rewards.device) != 0
        nans = int(self.accelerator.gather(torch.tensor([nan_count], device=self.accelerator.device)).sum())
        if nans and bool(torch.isnan(all_rewards[:, weighted]).all()):
            guards.report(
                f"No completion of this generation batch got a usable reward: every reward with a non-zero weight is "
                f"NaN or None ({nans} NaN; the warnings above name the functions and rows), so nothing can be learned.",
                "A NaN usually comes from a bug in the reward (0/0, log(0), NaN inputs or a NaN model output): fix it, "
                "and return None only for completions that should stay unscored.",
                enforce,
                "no_reward",
            )
        truncated = float(self.accelerator.gather(rollout.is_truncated.float()).mean())
        _, zero_std_groups = group_reward_stats(self._total_rewards(all_rewards), g)  # (N_all / G,)
        zero_std = float(zero_std_groups.float().mean())
        has_tokens = self.accelerator.gather((self._loss_mask(rollout).sum(-1) > 0).long()).bool()  # (N_all,)
        # groups hold consecutive rows (and may straddle processes), as in the gathered rewards
        teaching = has_tokens.view(-1, g).any(-1) & ~zero_std_groups.to(has_tokens.device)
        streaks = {"no_signal": not bool(teaching.any()), "truncated": truncated == 1, "zero_std": zero_std == 1,
                   "mostly_truncated": truncated >= _MOSTLY, "mostly_zero_std": zero_std >= _MOSTLY}
        for key, bad in streaks.items():
            self._guard_counts[key] = self._guard_counts.get(key, 0) + 1 if bad else 0
        length = f"max_completion_length={self.args.max_completion_length}"
        length_fix = (
            "Raise max_completion_length, start from a model that ends its answers (e.g. after SFT), or check that "
            f"the eos ids {list(self.sampling.eos_token_ids)} are the ones the model emits."
        )
        reward_fix = "Use a reward with partial credit, easier prompts, more num_generations or a higher temperature."
        if self._guard_counts["no_signal"] == patience:
            masked = getattr(self.args, "mask_truncated_completions", False)
            if zero_std == 1:
                problem = (f"In each of the last {patience} generation batches every group of {g} completions got the "
                           "same reward, so every advantage is 0 and nothing is learned.")
                fix = reward_fix
            elif not bool(has_tokens.any()):
                problem = (f"In each of the last {patience} generation batches no completion token enters the loss"
                           + (f": every completion hit {length} and mask_truncated_completions=True leaves truncated "
                              "completions out of the loss, so nothing is learned." if masked and truncated == 1
                              else ", so nothing is learned."))
                fix = f"{length_fix} Or turn mask_truncated_completions off."
            else:
                problem = (f"In each of the last {patience} generation batches no group of {g} completions has both "
                           "different rewards and a token in the loss"
                           + (" (truncated completions are masked by mask_truncated_completions=True)" if masked else "")
                           + ", so nothing is learned.")
                fix = f"{length_fix} {reward_fix}"
            guards.report(problem, f"{fix} guards=False only warns.", enforce, "no_signal")
            return
        if self._guard_counts["truncated"] >= patience:
            # the run still learns, so it goes on; it is said at every batch, since the rewards judge unfinished answers
            warnings.warn(
                f"Every completion of the last {self._guard_counts['truncated']} generation batches hit {length} "
                "without an end-of-sequence token: the rewards judge unfinished answers and the model is never shown "
                "how to stop. The rewards still vary and the loss has tokens, so training goes on (this warning "
                f"repeats at every generation batch while it lasts). {length_fix}", stacklevel=2,
            )
        elif self._guard_counts["mostly_truncated"] == patience:
            warnings.warn(
                f"At least {_MOSTLY:.0%} of the completions in each of the last {patience} generation batches "
                f"({truncated:.0%} in the last) hit {length}: the rewards mostly judge unfinished answers. "
                f"{length_fix}", stacklevel=2,
            )
        if self._guard_counts["mostly_zero_std"] == patience and zero_std < 1:
            warnings.warn(
                f"In the last {patience} generation batches at least {_MOSTLY:.0%} of the groups of "
                f"{g} completions got one reward each (last batch: {zero_std:.0%}; "
                "`frac_reward_zero_std`): their advantages are 0, so most of each batch teaches nothing. "
                f"{reward_fix}", stacklevel=2,
            )

    def _check_step_has_loss_tokens(self, counts: StepCounts) -> None:
        if int(counts.tokens) == 0:  # one host sync per optimiser step (generation already synchronises)
            guards.report(
                "No completion token of this optimiser step enters the loss"
                + (" (every completion was truncated and mask_truncated_completions=True)."
                   if getattr(self.args, "mask_truncated_completions", False) else "."),
                "Raise max_completion_length or turn mask_truncated_completions off. With guards=False such a step has "
                "a zero loss (the optimiser still steps: weight decay and momentum apply).",
                guards.policy(self.args),
                "step_loss_tokens",
            )

    def _remember_completions(self, rollout: Rollout, scores, advantages: torch.Tensor) -> None:
        if not self.args.log_completions:
            return
        from accelerate.utils import gather_object

        def text(value):
            return value if isinstance(value, str) else (_message_text(value[-1]) if value else "")

        table = {
            "step": [self.state.global_step] * len(advantages),
            "prompt": gather_object([text(p) for p in rollout.prompts]),
            "completion": gather_object([text(c) for c in rollout.completions]),
        }
        if "_vision_image" in rollout.columns:  # which image each completion answered: dataset row (content hash)
            table["image"] = gather_object(list(rollout.columns["_vision_image"]))
        all_rewards = self.accelerator.gather(rollout.rewards).cpu()
        for i, name in enumerate(self.reward_scorer.names):
            table[name] = all_rewards[:, i].tolist()
        for column, values in scores.extra_columns.items():
            table[column] = gather_object([str(v) for v in values])
        table["advantage"] = advantages.cpu().tolist()
        self._completions_table = table

    def _log_completions(self) -> None:
        table, self._completions_table = self._completions_table, None
        if table is None or not self.accelerator.is_main_process:
            return
        import pandas as pd

        frame = pd.DataFrame(table)
        folder = os.path.join(self.args.output_dir, "completions")
        os.makedirs(folder, exist_ok=True)
        frame.to_parquet(os.path.join(folder, f"completions_{self.state.global_step:05d}.parquet"))
        shown = frame.drop_duplicates("prompt") if self.args.log_unique_prompts else frame
        if self.args.num_completions_to_print is not None:
            shown = shown.head(self.args.num_completions_to_print)
        _print_table(shown, self.state.global_step)

    # ---- loss ---------------------------------------------------------------------------------------------------

    def _old_logps_for_loss(self, micro: Rollout, logps: torch.Tensor) -> torch.Tensor:
        """The old log-probs of a micro-batch's ratio: the generating policy's when it has moved since, else the
        detached current log-probs (an on-policy ratio is then exactly 1, even when `old_logps` were kept for RLOO's
        KL penalty)."""
        return micro.old_logps if self._off_policy and micro.old_logps is not None else logps.detach()

    def _loss_mask(self, micro: Rollout) -> torch.Tensor:
        """`(B, C)` completion tokens that enter the loss (truncated completions left out with
        `mask_truncated_completions`)."""
        mask = micro.completion_mask
        if micro.tool_mask is not None:  # tokens a rollout_func's environment wrote are not trained
            mask = mask * micro.tool_mask.to(mask.dtype)
        if self.args.mask_truncated_completions:
            mask = mask * (~micro.is_truncated).unsqueeze(-1).to(mask.dtype)
        return mask

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError(f"{type(self).__name__} does not return model outputs from compute_loss.")
        micro = inputs.to(self.accelerator.device) if isinstance(inputs, Rollout) else inputs
        logps, entropy, aux_loss = self._forward_logps(model, micro, aux_loss=self._aux_loss_coef > 0)
        mask = self._loss_mask(micro)
        loss, metrics = self._loss(micro, logps, entropy, mask)
        tokens, sequences = mask.sum(), mask.any(-1).sum()
        mode = "train" if self.model.training else "eval"
        loss = self._with_aux_loss(loss, aux_loss, mode, steps=micro.step_counts.micro_batches)
        self._metrics.add(mode, "entropy", (entropy * mask).sum(), tokens)
        for key, value in metrics.items():
            if key == "policy_loss":  # a share of the step's loss, like `loss`: one count per optimiser step
                self._metrics.add(mode, key, value, 1.0 / micro.step_counts.micro_batches)
                continue
            weight = sequences if key in self._per_sequence_metrics or self._sequence_level_metrics else tokens
            self._metrics.add(mode, _METRIC_NAMES.get(key, key), value * weight, weight)
            if key in _EXTREMES:
                name, op = _EXTREMES[key]
                self._metrics.add_extreme(mode, name, value, op)
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._step_started is not None and self.accelerator.gradient_state.sync_gradients:
            self._metrics.add("train", "step_time", time.perf_counter() - self._step_started)
            self._step_started = time.perf_counter()
        return loss

    def floating_point_ops(self, inputs) -> int:
        if isinstance(inputs, Rollout):
            tokens = int(inputs.prompt_mask.sum() + inputs.completion_mask.sum())
            return 6 * tokens * sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return 0

    def _track_num_input_tokens(self, inputs) -> None:
        return None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if self.args.log_completions and "loss" in logs:
            self._log_completions()

    # ---- evaluation: sample completions of the eval prompts and report their rewards ----------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        # evaluation samples from its own generator, so the training run does not depend on `eval_steps`
        self._eval_generator = torch.Generator(device=self.accelerator.device)
        self._eval_generator.manual_seed(self.args.seed + 7919 + self.accelerator.process_index)
        prepared = getattr(eval_dataset, "column_names", None) and "prompt_ids" in eval_dataset.column_names
        if eval_dataset is not None and not isinstance(eval_dataset, str) and not prepared:  # raw, given only now
            eval_dataset = self._prepare_eval_datasets(eval_dataset, self.processing_class, self.model)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Sample completions of the eval prompts (each row already repeated `num_generations_eval` times by the
        sampler) and record their rewards and lengths.

        The reported `eval_loss` is the **negative mean total reward** (the weighted sum of the reward functions, as
        `reward`) of the eval completions: a policy-gradient loss on fresh samples is zero in expectation and says
        nothing about progress, while a lower `eval_loss` meaning a higher reward lets `load_best_model_at_end=True`
        work with the default `metric_for_best_model="loss"`."""
        rollout = self._sample(inputs, getattr(self, "_eval_generator", None) or self._generator, mode="eval")
        try:
            scores = self._score(rollout)
        finally:
            self._release_environments(rollout)
        all_rewards = self.accelerator.gather(rollout.rewards)
        self._record_rollout_metrics(rollout, all_rewards, scores, mode="eval")
        total = self._total_rewards(all_rewards)
        self._metrics.add("eval", "loss", -total.sum(), total.numel())
        return None, None, None

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        n = self.args.num_generations_eval or self.args.num_generations
        prompts = max(1, self.args.per_device_eval_batch_size * self.accelerator.num_processes // n)

        def sampler(d):  # every prompt n times in a row; the last, partial batch of prompts is kept
            return RepeatSampler(len(d), n, prompts, shuffle=False, keep_last=True)

        if _is_streaming(dataset):
            dataset = RepeatedGroups(dataset, n, prompts, keep_last=True)

        return self._get_dataloader(
            dataset=dataset, description="Evaluation", batch_size=self.args.per_device_eval_batch_size,
            sampler_fn=sampler, is_training=False,
        )

    # ---- checkpoint and resume (docs/design.md §7) -------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Save with the tokenizer's own chat template, not the training template rollouts were rendered with."""
        if self._saved_chat_template is None:
            return super()._save(output_dir, state_dict)
        swapped, self.processing_class.chat_template = self.processing_class.chat_template, self._saved_chat_template
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.processing_class.chat_template = swapped

    def _online_state(self) -> dict:
        # plain values only (tensors, numbers, strings, lists, dicts): read back with weights_only=True
        return {
            # a vision dataset's images as lossless PNG bytes (checkpoints.images_to_plain)
            "buffer": [checkpoints.images_to_plain(dataclasses.replace(b.to("cpu"), step_counts=None).as_dict())
                       for b in self._buffer],
            "buffer_position": self._buffer_position,
            "generator": self._generator.get_state(),
            "guard_counts": dict(self._guard_counts),
        }

    def _load_online_state(self, state: dict) -> None:
        # checkpoints written before the buffer was stored as plain dicts hold `Rollout` records
        self._buffer = [(b if isinstance(b, Rollout) else Rollout(**checkpoints.plain_to_images(b)))
                        .to(self.accelerator.device) for b in state["buffer"]]
        self._buffer_position = state["buffer_position"]
        self._generator.set_state(state["generator"])
        self._guard_counts = dict(state["guard_counts"])

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        path = os.path.join(output_dir, _STATE_FILE.format(rank=self.accelerator.process_index))
        state = self._online_state()
        if unsafe := checkpoints.find_unsafe(state):
            warnings.warn(
                f"The rollout buffer holds a value that a checkpoint cannot store safely ({unsafe}; only tensors, "
                f"numbers, strings and lists/dicts of them are stored), so {path} is not written: a run resumed from "
                "this checkpoint starts a fresh generation batch and does not repeat the uninterrupted run exactly. "
                "Convert that dataset column to plain values to keep resumes exact.",
                stacklevel=2,
            )
            if os.path.exists(path):  # a reused checkpoint folder: never restore another run's buffer
                os.remove(path)
            return
        torch.save(state, path)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # called on resume by every backend (DeepSpeed too), before the first batch of the resumed run is drawn
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, _STATE_FILE.format(rank=self.accelerator.process_index))
        if os.path.exists(path):
            self._load_online_state(checkpoints.safe_load(path, checkpoint, allow=checkpoints.RECORD_TYPES))
        else:
            warnings.warn(
                f"{path} is missing: the rollout buffer and sampling generator start afresh, so the resumed run will "
                "not repeat the uninterrupted one exactly.",
                stacklevel=2,
            )


def _print_table(frame, step: int) -> None:
    """Print sampled completions with their rewards (rich when installed, plain text otherwise)."""
    def cut(value, width=120):
        value = str(value).replace("\n", "\\n")
        return value if len(value) <= width else value[: width - 1] + "…"

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"--- completions at step {step} ---")
        print(frame.drop(columns=["step"]).to_string(index=False, max_colwidth=80))
        return
    table = Table(title=f"Completions at step {step}", show_lines=False)
    columns = [c for c in frame.columns if c != "step"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for _, row in frame.iterrows():
        table.add_row(*[cut(f"{row[c]:.3f}" if isinstance(row[c], float) and not math.isnan(row[c]) else row[c])
                        for c in columns])
    Console().print(table)
