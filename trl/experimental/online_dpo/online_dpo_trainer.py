"""Online DPO, https://huggingface.co/papers/2402.04792: DPO on pairs sampled from the current policy.

Each prompt gets two completions from the generation backend (the online core, `_OnlineTrainer`); reward functions,
a reward model or a pairwise judge pick the better one, and the policy is trained with the DPO loss of
`trl.losses.dpo` (`sigmoid` or `ipo`) against a frozen reference (by default the initial policy), on summed sequence
log-ratios for both losses (as the reference's Online DPO: its `ipo` is not length-normalised, unlike `DPOTrainer`'s).
What differs from GRPO is only the "advantage" (which completion of a pair is chosen), the loss, and that
micro-batches hold whole pairs.
"""

from __future__ import annotations

import torch

from ...losses.dpo import DPOLossParams, PreferenceLogps, dpo_loss
from ...losses.reduce import sequence_mean_loss
from ...models import reference
from ...models.utils import disable_dropout_in_model
from ...ops.fused_head import add_fused_lm_head
from ...trainer.online import _OnlineTrainer
from .online_dpo_config import OnlineDPOConfig


def _text(completion) -> str:
    return completion if isinstance(completion, str) else (completion[-1]["content"] if completion else "")


def judge_reward(judge):
    """A reward function from a pairwise judge: `judge(prompts, [[a, b], ...]) -> [0 or 1, ...]` (or an object with a
    `judge` method of that signature, as the reference's `BasePairwiseJudge`) gives 1.0 to the completion it prefers
    and 0.0 to the other. Completions come in consecutive pairs of the same prompt.

    Example:
        ```python
        >>> shorter = judge_reward(lambda prompts, pairs: [int(len(b) < len(a)) for a, b in pairs])
        >>> shorter(prompts=["p", "p"], completions=["long answer", "short"])
        [0.0, 1.0]
        ```
    """
    call = judge.judge if hasattr(judge, "judge") else judge
    if not callable(call):
        raise TypeError(f"`judge` must be callable as judge(prompts, completion_pairs) or have a `judge` method; got "
                        f"{type(judge).__name__}.")

    def judge_reward_fn(prompts, completions, **kwargs):
        if len(completions) % 2:
            raise ValueError(f"The judge scores pairs; got {len(completions)} completions.")
        pairs = [[_text(completions[i]), _text(completions[i + 1])] for i in range(0, len(completions), 2)]
        prompt_texts = [_text(p) for p in prompts[::2]]
        picks = list(call(prompt_texts, pairs))
        if len(picks) != len(pairs) or any(p not in (0, 1) for p in picks):
            raise ValueError(f"The judge must return 0 or 1 (the index of the better completion) for each of the "
                             f"{len(pairs)} pairs; got {picks!r}.")
        return [float(v) for p in picks for v in ((1.0, 0.0) if p == 0 else (0.0, 1.0))]

    judge_reward_fn.__name__ = "judge"
    return judge_reward_fn


class OnlineDPOTrainer(_OnlineTrainer):
    """Trainer for Online DPO.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`): the policy.
        ref_model (`PreTrainedModel`, *optional*): the reference; by default a frozen copy of the initial policy (with
            PEFT, the policy without its adapters).
        reward_funcs (*optional*): reward functions or reward models, as [`GRPOTrainer`]'s; the pair's completion with
            the higher total reward is chosen (the first on a tie). Defaults to `args.reward_model_path`.
        judge (*optional*): a pairwise judge, `judge(prompts, [[a, b], ...]) -> [index of the better, ...]`, or an
            object with such a `judge` method; used instead of rewards.
        args ([`OnlineDPOConfig`], *optional*), train_dataset (prompt-only rows, a `prompt` column), eval_dataset,
        processing_class, reward_processing_classes, peft_config, callbacks, optimizers: as [`GRPOTrainer`].
        data_collator, compute_metrics, preprocess_logits_for_metrics: accepted for compatibility, not used (the
            online core batches rollouts itself).

    Logged metrics: `objective/kl` (mean over completions of `Σ_t log π − log π_ref`), `objective/entropy` (mean
    `−Σ_t log π`), `objective/non_score_reward` (`−β·kl`), `objective/scores`, `objective/scores_margin` (chosen −
    rejected score), `objective/rlhf_reward` (scores + non-score reward), `rewards/chosen`, `rewards/rejected`,
    `rewards/accuracies`, `rewards/margins` (implicit DPO rewards), `logps/chosen`, `logps/rejected`,
    `val/contain_eos_token`, `beta`, plus the online core's generation and reward metrics.

    Example:
        ```python
        >>> from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
        >>> trainer = OnlineDPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=my_reward,
        ...                            args=OnlineDPOConfig(output_dir="out"), train_dataset=prompts)
        >>> trainer.train()
        ```
    """

    _config_class = OnlineDPOConfig
    _tag_names = ["trl", "online-dpo"]
    _name = "OnlineDPO"

    def __init__(self, model, ref_model=None, reward_funcs=None, judge=None, args: OnlineDPOConfig | None = None,
                 data_collator=None, train_dataset=None, eval_dataset=None, processing_class=None,
                 reward_processing_classes=None, peft_config=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), preprocess_logits_for_metrics=None):
        if ref_model is not None and ref_model is model:
            raise ValueError("`ref_model` is the policy object itself; pass a separate copy or leave it None.")
        if judge is not None and reward_funcs is not None:
            raise ValueError("Give OnlineDPOTrainer `reward_funcs` or a `judge`, not both.")
        if judge is not None:
            reward_funcs = judge_reward(judge)
        elif reward_funcs is None:
            path = getattr(args, "reward_model_path", None)
            if path is None:
                raise ValueError("OnlineDPOTrainer needs `reward_funcs` (functions or reward models), a `judge`, or "
                                 "`args.reward_model_path` to rank the two completions of each prompt.")
            reward_funcs = path
        if data_collator is not None or compute_metrics is not None or preprocess_logits_for_metrics is not None:
            import warnings

            warnings.warn("OnlineDPOTrainer ignores `data_collator`, `compute_metrics` and "
                          "`preprocess_logits_for_metrics`: the online core batches rollouts itself.", stacklevel=2)
        super().__init__(model, reward_funcs, args, train_dataset, eval_dataset, processing_class,
                         reward_processing_classes, callbacks, optimizers, None, peft_config)
        if ref_model is not None:  # replaces the copy of the initial policy made by the core
            reference.freeze(ref_model)
            add_fused_lm_head(ref_model)
            if self.args.disable_dropout:
                disable_dropout_in_model(ref_model)
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._metrics.derive("objective/rlhf_reward",
                             lambda m: m["objective/scores"] + m["objective/non_score_reward"])

    def _current_beta(self) -> float:
        schedule = self.args.beta_schedule
        return schedule[min(int(self.state.epoch or 0), len(schedule) - 1)]

    # ---- the rollout: which completion of each pair is chosen ------------------------------------------------------

    def _next_micro_batch(self, rows):
        """As the core, but the generation batch is shuffled by whole pairs, so every micro-batch holds both
        completions of each of its prompts."""
        spg = self.args.steps_per_generation
        if self._buffer_position % (spg * self.args.num_iterations) == 0:
            rollout = self._make_rollout(rows)
            generator = torch.Generator().manual_seed(self._shuffle_seed())
            pairs = torch.randperm(len(rollout) // 2, generator=generator)
            rollout = rollout.select(torch.stack([2 * pairs, 2 * pairs + 1], dim=1).reshape(-1))
            size = self.args.per_device_train_batch_size
            self._buffer = [rollout.select(slice(i * size, (i + 1) * size)).trim() for i in range(spg)]
        micro = self._buffer[self._buffer_position % spg]
        self._buffer_position += 1
        return micro

    def _advantages(self, rollout, all_rewards: torch.Tensor) -> torch.Tensor:
        """`(N_all,)` +1 for the chosen completion of each pair, −1 for the rejected one (the higher score wins, the
        first on a tie); the score is the weighted reward minus `missing_eos_penalty` for an unfinished completion."""
        scores = self._total_rewards(all_rewards)
        if self.args.missing_eos_penalty is not None:
            truncated = self.accelerator.gather(rollout.is_truncated.float()).to(scores.device)
            scores = scores - self.args.missing_eos_penalty * truncated
        pairs = scores.view(-1, 2)
        first_wins = pairs[:, 0] >= pairs[:, 1]
        chosen = torch.where(first_wins, pairs[:, 0], pairs[:, 1])
        rejected = torch.where(first_wins, pairs[:, 1], pairs[:, 0])
        self._metrics.add("train", "objective/scores", scores.sum(), scores.numel())
        self._metrics.add("train", "objective/scores_margin", (chosen - rejected).sum(), chosen.numel())
        eos = 1.0 - self.accelerator.gather(rollout.is_truncated.float())
        self._metrics.add("train", "val/contain_eos_token", eos.sum(), eos.numel())
        signs = torch.stack([first_wins, ~first_wins], dim=1).reshape(-1).float() * 2 - 1
        return signs.to(all_rewards.device)

    # ---- loss ---------------------------------------------------------------------------------------------------

    def _loss(self, micro, logps, entropy, mask):
        mode = "train" if self.model.training else "eval"
        beta = self._current_beta()
        mask = mask.to(logps.dtype)
        sums = (logps * mask).sum(-1)  # (B,) sequence log-probs, rows in pairs (2k, 2k+1)
        ref_sums = (micro.ref_logps * mask).sum(-1)
        # Online DPO compares summed log-ratios for both losses, as the reference's Online DPO does: its `ipo` target
        # margin 1/(2β) applies to sums, not to the length-normalised log-ratios of `DPOTrainer`'s `ipo`. Lengths of 1
        # make `trl.losses.dpo`'s normalisation a no-op.
        lengths = torch.ones_like(sums)
        first_chosen = micro.advantages.view(-1, 2)[:, 0] > 0

        def side(values, chosen: bool):
            pairs = values.view(-1, 2)
            return torch.where(first_chosen == chosen, pairs[:, 0], pairs[:, 1])

        batch = PreferenceLogps(
            chosen_logps=side(sums, True), rejected_logps=side(sums, False), ref_chosen_logps=side(ref_sums, True),
            ref_rejected_logps=side(ref_sums, False), chosen_lengths=side(lengths, True),
            rejected_lengths=side(lengths, False),
        )
        losses, metrics = dpo_loss(batch, [self.args.loss_type], None, DPOLossParams(beta=beta))
        # a mean over every pair of the optimiser step (the step's sequences count 2 per pair)
        loss = 2 * sequence_mean_loss(losses, micro.step_counts, self._dp_world_size())
        self._record(mode, batch, metrics, sums, ref_sums, beta)
        return loss, {}

    def _record(self, mode, batch, metrics, sums, ref_sums, beta) -> None:
        add = self._metrics.add
        b, n = batch.chosen_logps.numel(), sums.numel()
        kl = (sums - ref_sums).detach()
        add(mode, "objective/kl", kl.sum(), n)
        add(mode, "objective/entropy", -sums.detach().sum(), n)
        add(mode, "objective/non_score_reward", -beta * kl.sum(), n)
        chosen, rejected = metrics["chosen_rewards"], metrics["rejected_rewards"]
        add(mode, "rewards/chosen", chosen.sum(), b)
        add(mode, "rewards/rejected", rejected.sum(), b)
        add(mode, "rewards/accuracies", (chosen > rejected).sum(), b)
        add(mode, "rewards/margins", (chosen - rejected).sum(), b)
        add(mode, "logps/chosen", batch.chosen_logps.detach().sum(), b)
        add(mode, "logps/rejected", batch.rejected_logps.detach().sum(), b)
        add(mode, "beta", beta)
