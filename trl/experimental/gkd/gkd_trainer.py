"""Generalized Knowledge Distillation (GKD), https://huggingface.co/papers/2306.13649.

The loss is the per-token generalized JSD (`beta`) between the student's and the teacher's next-token distributions
on completion tokens, computed chunk by chunk from hidden states (`trl.ops.divergence`) exactly as in
`DistillationTrainer`, which this trainer extends. What GKD adds is where the completions come from: a generation
batch is sampled by the student with probability `lmbda` (on-policy), otherwise it is the dataset's completions, or
with `seq_kd` completions sampled by the teacher. The draw is a function of the seed and the position in the run, so a
resumed run makes the same choices.

Data: `prompt`/`completion` rows (standard or conversational), or `messages` conversations whose last message is the
completion (the reference's format).
"""

from __future__ import annotations

import torch

from ...data.tokenize import end_of_turn_ids, tokenize_sft_example
from ...rollout import Rollout
from ...trainer.base_trainer import as_config
from ...trainer.distillation_trainer import DistillationTrainer
from .gkd_config import GKDConfig


def _messages_to_prompt_completion(dataset):
    """`messages` conversations as `prompt` (all but the last message) and `completion` (the last one)."""
    columns = dataset.column_names or []
    if "messages" not in columns or "prompt" in columns:
        return dataset

    def split(row):
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "assistant":
            raise ValueError(f"GKDTrainer reads the last message of each conversation as the completion; it must be "
                             f"an assistant message, got {messages[-1] if messages else messages!r}.")
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return dataset.map(split, remove_columns=["messages"])


class GKDTrainer(DistillationTrainer):
    """Trainer for GKD.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`): the student.
        teacher_model (`str` or `PreTrainedModel`, *optional*): the teacher (same vocabulary); defaults to
            `args.teacher_model_name_or_path`.
        args ([`GKDConfig`], *optional*): configuration.
        train_dataset: `prompt`/`completion` rows or `messages` conversations (the last message is the completion).
            With `lmbda < 1` and no `seq_kd` the completions are trained on, so they are required.
        eval_dataset, processing_class, callbacks, optimizers, peft_config: as `DistillationTrainer`.
        data_collator, compute_metrics, preprocess_logits_for_metrics, formatting_func: accepted for compatibility
            with the reference, not used (the online core batches rollouts).

    Logged metrics: `loss` (the divergence), `on_policy` (the share of generation batches the student sampled),
    `entropy`, and the online core's `completions/*`, `num_tokens`.

    Example:
        ```python
        >>> from trl.experimental.gkd import GKDConfig, GKDTrainer
        >>> trainer = GKDTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", teacher_model="Qwen/Qwen2.5-7B-Instruct",
        ...                      args=GKDConfig(output_dir="out", lmbda=0.5), train_dataset=conversations)
        >>> trainer.train()
        ```
    """

    _config_class = GKDConfig
    _tag_names = ["trl", "gkd"]
    _name = "GKD"

    def __init__(self, model=None, teacher_model=None, args: GKDConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), preprocess_logits_for_metrics=None, peft_config=None, formatting_func=None):
        if model is None:
            raise ValueError("GKDTrainer needs the student `model` (a hub id, a local folder or a model object).")
        args = as_config(args, GKDConfig, self._default_output_dir(model, self._name))
        if any(x is not None for x in (data_collator, compute_metrics, preprocess_logits_for_metrics, formatting_func)):
            import warnings

            warnings.warn("GKDTrainer ignores `data_collator`, `compute_metrics`, `preprocess_logits_for_metrics` and "
                          "`formatting_func`: the online core batches rollouts itself.", stacklevel=2)
        if train_dataset is not None:
            train_dataset = _messages_to_prompt_completion(train_dataset)
            columns = train_dataset.column_names or []
            if args.lmbda < 1 and not args.seq_kd and "completion" not in columns:
                raise ValueError(
                    f"GKDTrainer with lmbda={args.lmbda} < 1 trains on the dataset's completions part of the time: the "
                    f"train dataset needs a 'completion' column (or 'messages' conversations); got columns {columns}. "
                    "Set lmbda=1 (always on-policy) or seq_kd=True (the teacher writes them) otherwise."
                )
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: _messages_to_prompt_completion(v) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = _messages_to_prompt_completion(eval_dataset)
        super().__init__(model, teacher_model, args, train_dataset, eval_dataset, processing_class, callbacks,
                         optimizers, None, peft_config)
        self._teacher_backend = None
        self._eos_ids = end_of_turn_ids(self.processing_class)

    def _sample(self, rows: list[dict], generator: torch.Generator, mode: str) -> Rollout:
        if mode != "train" or self.toolbox is not None:
            return super()._sample(rows, generator, mode)
        draw = torch.Generator().manual_seed(self.args.seed * 1_000_033 + self._buffer_position)
        on_policy = float(torch.rand((), generator=draw)) < self.args.lmbda
        self._metrics.add("train", "on_policy", float(on_policy))
        if on_policy:
            return super()._sample(rows, generator, mode)
        rollout = self._teacher_rollout(rows, generator) if self.args.seq_kd else self._dataset_rollout(rows)
        rollout.prompts = [row["prompt"] for row in rows]
        rollout.columns = {k: [row[k] for row in rows] for k in rows[0] if k not in ("prompt", "prompt_ids")}
        rollout.completions = self._decode(rollout)
        return rollout

    def _teacher_rollout(self, rows: list[dict], generator: torch.Generator) -> Rollout:
        """Sequence-level KD: the teacher samples the completions."""
        if self._teacher_backend is None:
            from ...generation.transformers_backend import TransformersBackend

            self._teacher_backend = TransformersBackend(self.teacher_model)
        return self._teacher_backend.generate([row["prompt_ids"] for row in rows], 1, self.sampling, generator)

    def _dataset_rollout(self, rows: list[dict]) -> Rollout:
        """The dataset's completions, tokenised as SFT tokenises prompt-completion rows (cut at
        `max_completion_length`)."""
        tokenizer, limit = self.processing_class, self.args.max_completion_length
        prompts, completions, truncated = [], [], []
        for row in rows:
            example = {k: row[k] for k in ("prompt", "completion", "tools", "chat_template_kwargs") if k in row}
            out = tokenize_sft_example(example, tokenizer, kind="prompt_completion",
                                       conversational=isinstance(row["prompt"], list),
                                       eos_token_id=tokenizer.eos_token_id, eos_ids=self._eos_ids)
            ids, mask = out["input_ids"], out["completion_mask"]
            start = mask.index(1) if 1 in mask else len(ids)
            prompts.append(ids[:start])
            completions.append(ids[start:][:limit])
            truncated.append(len(ids) - start > limit)
        return Rollout.from_lists(prompts, completions, pad_token_id=tokenizer.pad_token_id, is_truncated=truncated,
                                  device=self.accelerator.device)
