"""Group Relative Policy Optimization (GRPO), https://huggingface.co/papers/2402.03300, and its variants (DAPO,
Dr. GRPO, BNPO, GSPO, CISPO, SAPO, LUSPO, VESPO) through `loss_type` and `importance_sampling_level`.

For each prompt `num_generations` completions are sampled; the advantage of each is its reward relative to its group
(`trl.advantages.group_normalized_advantages`), and the policy is trained with a clipped importance-sampling loss
(`trl.losses.policy`). Everything but the advantage and the loss lives in `_OnlineTrainer`.

Deviations from the reference, on purpose: completions are trained on exactly the sampled token ids; the sampling
log-probs of the generation backend serve as the old log-probs when sampling is plain (no second forward pass); the
entropy of the entropy bonus comes from the same chunked LM-head pass as the log-probs (no `(B, T, V)` logits).
"""

from __future__ import annotations

import json
import os
import warnings

import torch

from ..advantages import group_normalized_advantages
from ..losses.policy import POLICY_REDUCTIONS, PolicyLossParams, policy_loss
from ..losses.reduce import reduce_policy_loss
from ..rollout import Rollout
from .grpo_config import GRPOConfig
from .online import _OnlineTrainer

# the adaptive entropy controller's state in a checkpoint, under TRL's name for it (a readable copy: resume
# reads the per-process online state, which holds the same values, and falls back to this file)
ENTROPY_CTRL_FILE = "entropy_ctrl_state.json"


def off_policy_sequence_mask(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                             mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Off-policy sequence masking (OPSM, DeepSeek-V3.2 technical report): which completions keep their policy term.

    A completion is dropped when its advantage is negative **and** the policy has drifted from the one that sampled
    it by more than `threshold`, measured as the mean over its loss tokens of `old_logps − logps` (a sample estimate
    of `KL(π_old ‖ π_θ)`). Pushing down a stale negative sample mostly adds noise; positive ones are always kept.

    Args:
        logps (`torch.Tensor`): `(B, T)` log-probs under the current policy (used detached).
        old_logps (`torch.Tensor`): `(B, T)` log-probs under the policy that sampled the completions.
        advantages (`torch.Tensor`): `(B,)`.
        mask (`torch.Tensor`): `(B, T)` 1 on loss tokens.
        threshold (`float`): δ, the drift past which a negative-advantage completion is masked.

    Returns:
        `torch.Tensor`: `(B,)` bool, True for the completions whose policy term is kept.

    Example:
        ```python
        >>> logps = torch.tensor([[-2.0, -2.0], [-2.0, -2.0], [-1.0, -1.0]])
        >>> old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])  # rows 0-1 drifted by 1 nat per token
        >>> off_policy_sequence_mask(logps, old, torch.tensor([1.0, -1.0, -1.0]), torch.ones(3, 2), threshold=0.5)
        tensor([ True, False,  True])
        ```
    """
    mask = mask.to(logps.dtype)
    drift = ((old_logps - logps.detach()) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return (advantages >= 0) | (drift <= threshold)


class GRPOTrainer(_OnlineTrainer):
    """Trainer for GRPO and its variants.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`): the policy (a hub id / local folder, or a model object).
        reward_funcs (callable, `str`, `PreTrainedModel`, or a list of them): names of `trl.rewards` functions,
            dotted paths, reward-model ids or folders, or callables `(prompts, completions, **columns)`; each returns
            one float (or None) per completion.
        args ([`GRPOConfig`], *optional*): configuration; defaults to `GRPOConfig(output_dir="<model>-GRPO")`.
        train_dataset (`datasets.Dataset` or `datasets.IterableDataset`, *optional*): prompts in a `prompt` column
            (text or messages); other columns reach the reward functions as keyword arguments. A streaming dataset is
            read in its own order (`shuffle_dataset` does not apply; use `dataset.shuffle(buffer_size=...)`), its
            prompts tokenised on the fly, and needs `max_steps`. May be omitted when an environment owns the data.
        eval_dataset (`Dataset`, `IterableDataset`, or a dict / `DatasetDict` of them, *optional*): prompts whose
            sampled completions are scored at evaluation; a dict is evaluated per entry under `eval_<name>_`.
            Evaluation reports the reward metrics and `eval_loss`, defined as the negative mean total reward (the
            policy loss on fresh samples carries no signal), so `load_best_model_at_end=True` works with the
            default `metric_for_best_model="loss"` and keeps the checkpoint of highest eval reward.
        processing_class (*optional*): the tokenizer (loaded from the model when None; left padding), or a
            vision-language model's processor: then rows hold a conversational `prompt` with `{"type": "image"}`
            blocks and an `image` or `images` column, generation conditions on each row's images, and the reward
            functions receive that column (docs/vision.md; not with `tools`, environments or `rollout_func`).
        reward_processing_classes (*optional*): tokenizers of model-based rewards (loaded from each reward model
            when missing); after construction `trainer.reward_processing_classes` holds one entry per reward
            function (None for callables), aligned with `trainer.reward_funcs`.
        callbacks, optimizers: as in `transformers.Trainer`.
        quantization_config (*optional*): merged into the model-init kwargs when `model` is a string.
        peft_config (`peft.PeftConfig`, *optional*): train a LoRA adapter; with `beta > 0` the reference is the model
            with its adapters disabled.
        rollout_func (*optional*, experimental): `rollout_func(prompts, trainer) -> dict` replaces generation. It is
            given this process's rows of a generation batch (one prompt per completion to produce: each prompt's
            `num_generations` rows, `num_generations_eval` at evaluation, may straddle processes) and returns, one
            entry per row, `prompt_ids`, `completion_ids` and `logprobs` (the sampling log-prob of each completion
            token; None, or vLLM-style candidate lists with `logprob_token_ids`, are accepted), optionally `env_mask`
            (0 on completion tokens the policy did not write, e.g. tool output: they are not trained), and any other
            key as a reward column. Its log-probs are treated as another engine's: old log-probs are recomputed
            when a batch is used off-policy.
        tools (`list[Callable]`, *optional*): sync or async functions with type hints and Google-style docstrings
            that the model may call (docs/agents.md). The prompts must be conversational and the chat template must
            render tool calls; each rollout runs rounds of generation and tool calls (`max_tool_calling_iterations`,
            `tool_timeout`), tool-result tokens stay out of the loss, and the reward functions receive each
            completion as its list of messages (assistant turns with `tool_calls`, and `tool` messages).
        environment_factory (*optional*): a class (or zero-argument callable) building an environment, or a dict
            `{name: factory}` routed by the rows' `environment` column (docs/agents.md). Each rollout gets an
            instance, `reset(**row)` before it (a returned string is appended to the last user message); its public
            methods other than `reset`/`get_reward` are its tools (after `tools`); an optional `get_reward()` is an
            extra reward function of weight 1 named after the class (then `reward_funcs` may be None); the reward
            functions receive `environments=[...]`. Without a `train_dataset` a single factory owns the data:
            `max_steps` is required, `reset()` gets no columns and returns the task, appended to an empty user
            message.

    Example:
        ```python
        >>> from trl import GRPOConfig, GRPOTrainer
        >>> from trl.rewards import think_format_reward
        >>> trainer = GRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=think_format_reward,
        ...                       args=GRPOConfig(output_dir="out"), train_dataset=dataset)
        >>> trainer.train()
        ```
    """

    _config_class = GRPOConfig
    _tag_names = ["trl", "grpo"]
    _name = "GRPO"
    _per_sequence_metrics = ("vespo/phi_seq_mean", "entropy_coef")  # weighted by completions, not tokens

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, reward_processing_classes=None, callbacks=None, optimizers=(None, None),
                 quantization_config=None, peft_config=None, tools=None, rollout_func=None, environment_factory=None):
        if (tools or environment_factory is not None) and rollout_func is not None:
            raise ValueError("GRPOTrainer: give `tools`/`environment_factory` or a `rollout_func`, not both: a "
                             "rollout_func replaces generation, tool calls included.")
        if rollout_func is not None:
            if not callable(rollout_func):
                raise TypeError(f"rollout_func must be callable as rollout_func(prompts, trainer); got "
                                f"{rollout_func!r}.")
            if os.environ.get("TRL_EXPERIMENTAL_SILENCE") != "1":
                warnings.warn("rollout_func is experimental: it replaces generation entirely and its interface may "
                              "change. Set TRL_EXPERIMENTAL_SILENCE=1 to silence this warning.", stacklevel=2)
        super().__init__(model, reward_funcs, args, train_dataset, eval_dataset, processing_class,
                         reward_processing_classes, callbacks, optimizers, quantization_config, peft_config,
                         tools=tools, environment_factory=environment_factory, rollout_func=rollout_func)
        a = self.args
        self._loss_params = PolicyLossParams(
            loss_type=a.loss_type, epsilon_low=a.epsilon, epsilon_high=a.epsilon_high, delta=a.delta, beta=a.beta,
            importance_sampling_level=a.importance_sampling_level, use_bias_correction_kl=a.use_bias_correction_kl,
            sapo_temperature_pos=a.sapo_temperature_pos, sapo_temperature_neg=a.sapo_temperature_neg,
            vespo_k_pos=a.vespo_k_pos, vespo_lambda_pos=a.vespo_lambda_pos, vespo_k_neg=a.vespo_k_neg,
            vespo_lambda_neg=a.vespo_lambda_neg,
        )
        self._reduction = POLICY_REDUCTIONS[a.loss_type]
        self._entropy_coef = a.entropy_coef  # adapted after every step with `use_adaptive_entropy`
        self._entropy_below_target = True  # the adaptive controller's gate, from the last step's entropy
        self._entropy_step = torch.zeros(2, dtype=torch.float64)  # entropy sum and token count of this step

    @property
    def entropy_coef(self) -> float:
        """The entropy bonus coefficient now (adapted after every step with `use_adaptive_entropy`)."""
        return self._entropy_coef

    def _advantages(self, rollout: Rollout, all_rewards: torch.Tensor) -> torch.Tensor:
        return group_normalized_advantages(
            all_rewards, self.reward_scorer.weights.to(all_rewards.device), self.args.num_generations,
            scale_rewards=self.args.scale_rewards, aggregation=self.args.multi_objective_aggregation,
        )

    def _reward_std(self, total_rewards: torch.Tensor, group_std: torch.Tensor) -> torch.Tensor:
        """With `scale_rewards="batch"` the advantages are divided by the whole batch's reward std, so that is the
        `reward_std` logged; otherwise the mean of the groups' stds."""
        if self.args.scale_rewards == "batch" and total_rewards.numel() > 1:
            return total_rewards.std()
        return super()._reward_std(total_rewards, group_std)

    def _loss(self, micro: Rollout, logps, entropy, mask):
        old_logps = self._old_logps_for_loss(micro, logps)
        entropy_mask = None  # the tokens whose policy term is kept (the KL term is never masked)
        if self.args.top_entropy_quantile < 1.0:
            entropy_mask = self._high_entropy_mask(entropy.detach(), mask)
        if self.args.off_policy_mask_threshold is not None:
            keep = off_policy_sequence_mask(logps, old_logps, micro.advantages, mask,
                                            self.args.off_policy_mask_threshold)
            self._metrics.add("train" if self.model.training else "eval", "off_policy_mask/masked_ratio",
                              (~keep).sum().float(), keep.numel())
            keep = keep.unsqueeze(-1).expand_as(mask)
            entropy_mask = keep if entropy_mask is None else entropy_mask & keep
        token_losses, metrics = policy_loss(
            logps, old_logps, micro.advantages, mask, self._loss_params, ref_logps=micro.ref_logps,
            entropy_mask=entropy_mask,
        )
        loss = self._reduce(token_losses, mask, micro, self._reduction)
        if self._entropy_bonus_on:
            # "- coef * mean entropy": a token mean over the whole step, whatever the loss type's normalisation. With
            # top_entropy_quantile < 1 the sum runs over the selected tokens and the count over all loss tokens (the
            # reference's normalisation for dapo); the adaptive controller measures the mean over all loss tokens.
            bonus_mask = mask if entropy_mask is None else mask * entropy_mask
            mean_entropy = self._reduce(entropy, bonus_mask, micro, "token")
            metrics["policy_loss"] = loss.detach()
            loss = loss - self._applied_entropy_coef() * mean_entropy
            metrics["entropy_coef"] = torch.tensor(self._entropy_coef)  # the controller's value (the gate aside)
        if self.args.use_adaptive_entropy:  # kept on the device: reduced once per optimiser step
            step = torch.stack([(entropy.detach() * mask).sum(), mask.sum()]).to(torch.float64)
            self._entropy_step = self._entropy_step.to(step.device) + step
        return loss, metrics

    @property
    def _entropy_bonus_on(self) -> bool:
        return self.args.entropy_coef != 0 or self.args.use_adaptive_entropy

    def _applied_entropy_coef(self) -> float:
        """Skywork-OR1's gate: with the adaptive controller the bonus applies only while the last step's mean
        entropy was at or below the target."""
        if self.args.use_adaptive_entropy and not self._entropy_below_target:
            return 0.0
        return self._entropy_coef

    def _high_entropy_mask(self, entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The top-entropy mask with the threshold taken over the completion tokens of every process."""
        values = entropy[mask.bool()].float()
        if self.accelerator.num_processes > 1:
            padded = self.accelerator.pad_across_processes(values, dim=0, pad_index=float("nan"))
            values = self.accelerator.gather(padded)
            values = values[~torch.isnan(values)]
        if values.numel() == 0:
            return mask.bool()
        threshold = torch.quantile(values, 1.0 - self.args.top_entropy_quantile)
        return (entropy >= threshold) & mask.bool()

    def _reduce(self, token_values, mask, micro: Rollout, mode: str) -> torch.Tensor:
        return reduce_policy_loss(
            token_values, mask, mode, micro.step_counts, self._dp_world_size(), self.args.max_completion_length
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.args.use_adaptive_entropy and self.accelerator.gradient_state.sync_gradients:
            self._adapt_entropy_coef()
        return loss

    def _adapt_entropy_coef(self) -> None:
        """Skywork-OR1's controller, after every optimiser step: raise the coefficient while the step's mean entropy
        is at or below the target, lower it otherwise; the bonus is applied next step only in the first case."""
        totals = self._entropy_step.to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        self._entropy_step = torch.zeros(2, dtype=torch.float64)
        if totals[1] == 0:
            return
        a = self.args
        self._entropy_below_target = float(totals[0] / totals[1]) <= a.entropy_target
        step = a.entropy_coef_delta if self._entropy_below_target else -a.entropy_coef_delta
        self._entropy_coef = min(max(self._entropy_coef + step, a.entropy_coef_min), a.entropy_coef_max)

    def _entropy_ctrl_state(self) -> dict:
        return {"entropy_coef": self._entropy_coef, "entropy_below_target": self._entropy_below_target}

    def _load_entropy_ctrl_state(self, state: dict) -> None:
        self._entropy_coef = float(state.get("entropy_coef", self._entropy_coef))
        self._entropy_below_target = bool(state.get("entropy_below_target", self._entropy_below_target))

    def _online_state(self) -> dict:
        return {**super()._online_state(), **self._entropy_ctrl_state()}

    def _load_online_state(self, state: dict) -> None:
        super()._load_online_state(state)
        self._load_entropy_ctrl_state(state)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.args.use_adaptive_entropy and self.accelerator.is_main_process:
            with open(os.path.join(output_dir, ENTROPY_CTRL_FILE), "w") as f:
                json.dump(self._entropy_ctrl_state(), f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        path = os.path.join(checkpoint, ENTROPY_CTRL_FILE) if checkpoint else None
        if self.args.use_adaptive_entropy and path and os.path.exists(path):
            with open(path) as f:
                self._load_entropy_ctrl_state(json.load(f))
        super()._load_optimizer_and_scheduler(checkpoint)  # the online state, when present, has the same values
