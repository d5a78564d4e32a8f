"""On-policy distillation: GKD (https://huggingface.co/papers/2306.13649) with only student-generated data (λ = 1).

For each prompt the student samples one completion with the generation backend (at `temperature`); the student and
the teacher are run on prompt + completion, and the loss is the per-token generalized JSD between their full
next-token distributions (`beta`: 0 forward KL, 0.5 JSD, 1 reverse KL; both models' logits divided by `temperature`),
averaged over the completion tokens of the optimiser step. The divergence is computed from the two models' last hidden
states and LM-head weights in chunks (`trl.ops.divergence.chunked_divergence`), never materialising `(B, T, V)`
logits. With `tools`, rollouts are multi-turn (`trl.agents`) and tool-result tokens stay out of the loss.

Generation, batching, the rollout buffer, logging, evaluation and exact resume are the online core's
(`trl/trainer/online.py`); this module adds the teacher and the loss.
"""

from __future__ import annotations

import time

import torch

from ..losses.reduce import reduce_policy_loss
from ..models import loading, reference
from ..models.utils import causal_lm, disable_dropout_in_model
from ..ops.divergence import chunked_divergence
from ..ops.fused_head import FusedHeadRequest, _effective_head, add_fused_lm_head
from ..rollout import Rollout
from .base_trainer import as_config
from .distillation_config import DistillationConfig
from .online import _OnlineTrainer


class DistillationTrainer(_OnlineTrainer):
    """Trainer for on-policy distillation of a teacher into a student that shares its vocabulary.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`): the student (a hub id / local folder, or a model object).
        teacher_model (`str` or `PreTrainedModel`, *optional*): the teacher; a string is loaded with
            `args.teacher_model_init_kwargs` and `args.teacher_model_revision`. When None,
            `args.teacher_model_name_or_path` is loaded. It is frozen and kept in eval mode, and its LM head must have
            as many rows (vocabulary entries) as the student's.
        args ([`DistillationConfig`], *optional*): configuration; defaults to
            `DistillationConfig(output_dir="<model>-Distillation")`.
        train_dataset (`datasets.Dataset` or `datasets.IterableDataset`): prompts in a `prompt` column, text or
            conversational (a streaming dataset needs `max_steps`).
        eval_dataset (`Dataset`, or a dict of them, *optional*): prompts whose student completions are scored at
            evaluation; `eval_loss` is the divergence to the teacher on them.
        processing_class (*optional*): the tokenizer (loaded from the student when None; left padding). The teacher
            reads the same token ids.
        callbacks, optimizers: as in `transformers.Trainer`.
        quantization_config (*optional*): merged into the student's model-init kwargs when `model` is a string (the
            teacher is not quantized).
        peft_config (`peft.PeftConfig`, *optional*): train a LoRA adapter on the student.
        tools (`list[Callable]`, *optional*): functions the student may call (docs/agents.md); rollouts are then
            multi-turn and tool-result tokens are not in the loss.

    Example:
        ```python
        >>> from trl import DistillationConfig, DistillationTrainer
        >>> trainer = DistillationTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", teacher_model="Qwen/Qwen2.5-7B-Instruct",
        ...                               args=DistillationConfig(output_dir="out", beta=0.5), train_dataset=dataset)
        >>> trainer.train()
        ```
    """

    _config_class = DistillationConfig
    _tag_names = ["trl", "distillation"]
    _name = "Distillation"
    _scores_rewards = False

    def __init__(self, model, teacher_model=None, args: DistillationConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, optimizers=(None, None),
                 quantization_config=None, peft_config=None, tools=None):
        args = as_config(args, DistillationConfig, self._default_output_dir(model, self._name))
        if teacher_model is not None and teacher_model is model:
            raise ValueError("`teacher_model` is the student object itself: the student would be distilled into "
                             "itself and both would move. Pass a separate teacher.")
        self._check_teacher_is_separate(model, teacher_model)
        teacher = self._load_teacher(teacher_model, args)
        self._teacher_to_check = teacher  # read by _check_prompts_fit while the base prepares the datasets
        super().__init__(model, None, args, train_dataset, eval_dataset, processing_class, None, callbacks, optimizers,
                         quantization_config, peft_config, tools=tools)
        student_vocab = causal_lm(self.model).get_output_embeddings().weight.shape[0]
        teacher_vocab = teacher.get_output_embeddings().weight.shape[0]
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"The teacher's vocabulary ({teacher_vocab} LM-head rows, {type(teacher).__name__}) differs from the "
                f"student's ({student_vocab}): on-policy distillation compares the two next-token distributions over "
                "one vocabulary. Use a teacher from the student's model family (same tokenizer), or resize one "
                "model's embeddings to the other's size."
            )
        self.teacher_model = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        self.teacher_model.eval()

    # ---- construction helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _uses_reference(args) -> bool:
        return False  # `beta` chooses the divergence here; the teacher is not a reference policy

    def _check_prompts_fit(self, model, dataset, args) -> None:
        """Every prompt plus `max_completion_length` must fit the student's context and the teacher's: the teacher
        reads the same tokens, and past its context it would score them silently (rotary positions) or fail inside
        its forward (learned positions)."""
        super()._check_prompts_fit(model, dataset, args)
        teacher = getattr(self, "_teacher_to_check", None)
        if teacher is None:
            return
        try:
            super()._check_prompts_fit(teacher, dataset, args)
        except ValueError as error:
            raise ValueError(f"The teacher ({type(teacher).__name__}) has a shorter context than the student: {error}"
                             ) from None

    @staticmethod
    def _check_teacher_is_separate(model, teacher_model) -> None:
        """A teacher whose weights are the student's (e.g. the base model that a PEFT student wraps: the adapters are
        injected into its modules) scores every completion as the student does: the divergence is 0 and nothing is
        learned."""
        if not isinstance(teacher_model, torch.nn.Module) or not isinstance(model, torch.nn.Module):
            return
        student = {id(p) for p in model.parameters()}
        shared = [name for name, p in teacher_model.named_parameters() if id(p) in student]
        if shared:
            raise ValueError(
                f"`teacher_model` shares {len(shared)} parameters with the student (e.g. {shared[0]!r}): it is the "
                "student's own model (a PEFT student wraps its base model, and the adapters are injected into the "
                "base's modules), so the divergence would be 0 and nothing would be learned. Load the teacher as a "
                "separate model (e.g. `AutoModelForCausalLM.from_pretrained(...)` again, or `copy.deepcopy` before "
                "wrapping the student)."
            )

    @staticmethod
    def _load_teacher(teacher_model, args: DistillationConfig):
        """The teacher as a frozen, eval-mode model with the fused LM head."""
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher_model is None:
            raise ValueError(
                "DistillationTrainer needs a teacher: pass `teacher_model` (a hub id, a local folder or a model) or set "
                "`teacher_model_name_or_path` in the DistillationConfig."
            )
        if isinstance(teacher_model, str):
            kwargs = dict(args.teacher_model_init_kwargs or {})
            kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            if args.teacher_model_revision is not None:
                kwargs.setdefault("revision", args.teacher_model_revision)
            teacher_model = loading.create_model_from_path(teacher_model, **kwargs)
        else:
            ignored = [name for name in ("teacher_model_init_kwargs", "teacher_model_revision",
                                         "teacher_model_name_or_path") if getattr(args, name)]
            if ignored:
                import warnings

                warnings.warn(f"{', '.join(f'`{name}`' for name in ignored)} of the DistillationConfig "
                              f"{'is' if len(ignored) == 1 else 'are'} ignored: `teacher_model` is already a model "
                              f"({type(teacher_model).__name__}).", stacklevel=3)
        if loading.is_peft_model(teacher_model):
            teacher_model = teacher_model.merge_and_unload()
        if not hasattr(teacher_model, "get_output_embeddings") or teacher_model.get_output_embeddings() is None:
            raise ValueError(f"`teacher_model` must be a causal LM with an LM head; got {type(teacher_model).__name__}.")
        reference.freeze(teacher_model)
        add_fused_lm_head(teacher_model)
        disable_dropout_in_model(teacher_model)
        return teacher_model

    # ---- the rollout: the student samples one completion per prompt ----------------------------------------------

    def _make_rollout(self, rows: list[dict]) -> Rollout:
        self._step_started = started = time.perf_counter()
        rollout = self._sample(rows, self._generator, mode="train")
        self._metrics.add("train", "timing/generate", time.perf_counter() - started)
        self._record_completion_metrics(rollout, "train")
        self._num_tokens["train"] += int(rollout.prompt_mask.sum() + rollout.completion_mask.sum())
        self._remember_completions(rollout)
        return rollout

    # ---- loss ---------------------------------------------------------------------------------------------------

    def _divergence(self, model, micro: Rollout, aux_loss: bool = False):
        """`(B, C)` per-token divergence to the teacher and student entropy over the completion tokens, the `(B, C)`
        loss mask, and the MoE load-balancing loss (None unless `aux_loss`)."""
        prompt_width = micro.prompt_ids.shape[1]
        input_ids = torch.cat([micro.prompt_ids, micro.completion_ids], dim=1)
        attention_mask = torch.cat([micro.prompt_mask, micro.completion_mask], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        mask = self._loss_mask(micro)  # tool-result tokens (and, if asked, truncated completions) left out
        labels = input_ids.masked_fill(torch.cat([torch.zeros_like(micro.prompt_mask), mask], dim=1) == 0, -100)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        with torch.no_grad():
            teacher = self.teacher_model(**inputs, fused_lm_head=FusedHeadRequest(labels=labels, hidden_only=True))
        student_lm = causal_lm(self.accelerator.unwrap_model(model))
        teacher_lm = self.accelerator.unwrap_model(self.teacher_model)
        teacher_weight, teacher_bias = _effective_head(teacher_lm.get_output_embeddings())

        def divergence(hidden, student_weight, student_bias):
            return chunked_divergence(
                hidden, student_weight, teacher.hidden_states.to(hidden.device), teacher_weight.to(student_weight.device),
                beta=self.args.beta, temperature=self.sampling.temperature, student_bias=student_bias,
                teacher_bias=teacher_bias.to(student_weight.device) if teacher_bias is not None else None,
                student_transform=student_lm._trl_logit_transform, teacher_transform=teacher_lm._trl_logit_transform,
            )

        # the student's head is applied inside its forward (`head_op`), so a DDP wrapper sees it used
        student = model(**inputs, fused_lm_head=FusedHeadRequest(labels=labels, head_op=divergence,
                                                                 router_aux_loss=aux_loss))
        out = student.head_output
        label_mask = student.label_mask  # (B, T-1): the positions that predict a loss token

        def per_token(values):  # (N,) -> (B, C), 0 outside the loss tokens
            full = torch.zeros(label_mask.shape, dtype=values.dtype, device=values.device)
            return full.masked_scatter(label_mask, values)[:, prompt_width - 1 :]

        return per_token(out.divergence), per_token(out.entropy), mask, student.aux_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("DistillationTrainer does not return model outputs from compute_loss.")
        micro = inputs.to(self.accelerator.device)
        divergence, entropy, mask, aux_loss = self._divergence(model, micro, aux_loss=self._aux_loss_coef > 0)
        # a token mean over the whole optimiser step (all micro-batches and processes): trl.losses.reduce
        loss = reduce_policy_loss(divergence, mask, "token", micro.step_counts, self._dp_world_size(),
                                  self.args.max_completion_length)
        mode = "train" if self.model.training else "eval"
        loss = self._with_aux_loss(loss, aux_loss, mode, steps=micro.step_counts.micro_batches)
        self._metrics.add(mode, "entropy", (entropy * mask).sum(), mask.sum())
        return loss

    # ---- evaluation: the divergence to the teacher on fresh student completions ---------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Sample one completion per eval prompt and record its lengths and its divergence to the teacher, whose
        token mean over the eval set is `eval_loss`."""
        rollout = self._sample(inputs, getattr(self, "_eval_generator", None) or self._generator, mode="eval")
        rollout = rollout.to(self.accelerator.device)
        self._record_completion_metrics(rollout, "eval")
        with torch.no_grad(), self.compute_loss_context_manager():
            divergence, entropy, mask, _ = self._divergence(model, rollout)
        self._metrics.add("eval", "loss", (divergence * mask).sum(), mask.sum())
        self._metrics.add("eval", "entropy", (entropy * mask).sum(), mask.sum())
        return None, None, None

    # ---- logging ------------------------------------------------------------------------------------------------

    def _remember_completions(self, rollout: Rollout, scores=None, advantages=None) -> None:
        """The generation batch's prompts and completions, for `log_completions` (no rewards here)."""
        if not self.args.log_completions:
            return
        from accelerate.utils import gather_object

        def text(value):
            return value if isinstance(value, str) else (value[-1]["content"] if value else "")

        prompts = gather_object([text(p) for p in rollout.prompts])
        self._completions_table = {
            "step": [self.state.global_step] * len(prompts), "prompt": prompts,
            "completion": gather_object([text(c) for c in rollout.completions]),
        }
