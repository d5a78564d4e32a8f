"""GRPOTrainer and RLOOTrainer on tiny random models: a few CPU steps each; the policy moves, the reference does not,
the documented metrics are logged; resume, invariance to how a generation batch is cut. Bad inputs are rows of
tests/bad_inputs/test_grpo.py."""

import asyncio
import json
import math

import pytest
import torch
from datasets import Dataset

from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer

from .sft_one_step import SMALL, _GradCatcher, run_two_ranks

GENERATION_METRICS = {
    "completions/mean_length", "completions/min_length", "completions/max_length", "completions/clipped_ratio",
    "reward", "reward_std", "frac_reward_zero_std", "num_tokens", "step_time", "entropy",
}
CLIP_METRICS = {
    "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "clip_ratio/low_min", "clip_ratio/high_max"
}


def vowels(completions, **kwargs):
    """Varies between completions of a random model (so advantages are not all zero)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(sum(ch in "aeiou" for ch in text)) for text in texts]


def unique_ids(completion_ids, **kwargs):
    return [len(set(ids)) / max(len(ids), 1) for ids in completion_ids]


async def async_length(completions, **kwargs):
    await asyncio.sleep(0.01)
    return [float(len(c[-1]["content"])) / 10 for c in completions]


def _config(tmp_path, cls=GRPOConfig, **overrides):
    values = {
        "output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4,
        "max_completion_length": 8, "learning_rate": 1e-2, "logging_steps": 1, "report_to": "none",
        "save_strategy": "no", "seed": 0, "gradient_checkpointing": False, "guards": False,
    }
    values.update(overrides)
    return cls(**values)


def _prompts(num_rows=16, form="prompt_only"):
    return tiny_task_dataset(form, "train", num_rows=num_rows)


def _trainer(tmp_path, cls=GRPOTrainer, config_cls=GRPOConfig, reward_funcs=vowels, dataset=None, **overrides):
    return cls(model=tiny_model(seed=0, **SMALL), reward_funcs=reward_funcs,
               args=_config(tmp_path, config_cls, **overrides), train_dataset=dataset or _prompts(),
               processing_class=tiny_tokenizer())


def _never_ending(trainer):
    """No token ends a completion, so every completion is truncated (a random model may emit the real eos)."""
    import dataclasses

    trainer.sampling = dataclasses.replace(trainer.sampling, eos_token_ids=(-1,))
    return trainer


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moved(before, model):
    return any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def _logged(trainer):
    return [log for log in trainer.state.log_history if "loss" in log]


# ---- GRPO ------------------------------------------------------------------------------------------------------


def test_grpo_trains_and_logs_the_documented_metrics(tmp_path):
    trainer = _trainer(tmp_path)
    before = _params(trainer.model)
    trainer.train()
    logs = _logged(trainer)
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    assert _moved(before, trainer.model)
    assert GENERATION_METRICS | CLIP_METRICS | {"rewards/vowels/mean", "rewards/vowels/std"} <= set(logs[0])
    assert logs[-1]["num_tokens"] > logs[0]["num_tokens"] > 0
    assert trainer.ref_model is None  # beta = 0: no reference model is loaded


def test_grpo_standard_text_prompts(tmp_path):
    rows = [{"prompt": f"reverse: {' '.join('abcdefgh'[i:i + 3])}\nanswer:"} for i in range(6)] * 2
    trainer = _trainer(tmp_path, dataset=Dataset.from_list(rows))
    trainer.train()
    assert isinstance(trainer._completions_table, type(None))
    assert _logged(trainer)


def test_grpo_beta_keeps_the_reference_frozen_and_logs_kl(tmp_path):
    trainer = _trainer(tmp_path, beta=0.1)
    ref_before = _params(trainer.ref_model)
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)
    assert not _moved(ref_before, trainer.ref_model)
    logs = _logged(trainer)
    assert "kl" in logs[-1] and math.isfinite(logs[-1]["kl"]) and logs[-1]["kl"] >= 0


def test_multiple_sync_and_async_rewards_with_weights(tmp_path):
    seen = {}

    def with_columns(completions, answer, trainer_state, log_metric, **kwargs):
        seen["answer"], seen["step"] = answer, trainer_state.global_step
        log_metric("custom/answers", float(len(answer)))
        return [None if i == 0 else 1.0 for i in range(len(completions))]

    trainer = _trainer(tmp_path, reward_funcs=[vowels, async_length, unique_ids, with_columns],
                       reward_weights=[1.0, 0.5, 2.0, 1.0])
    trainer.train()
    log = _logged(trainer)[0]
    for name in ("vowels", "async_length", "unique_ids", "with_columns"):
        assert f"rewards/{name}/mean" in log
    assert log["rewards/with_columns/mean"] == 1.0  # the None (row 0) is left out of the mean
    assert log["custom/answers"] == 8.0 and len(seen["answer"]) == 8


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"])
def test_every_loss_type_trains(tmp_path, loss_type):
    level = "sequence" if loss_type == "luspo" else "token"
    trainer = _trainer(tmp_path, loss_type=loss_type, importance_sampling_level=level, max_steps=1,
                       num_iterations=2, epsilon_high=5.0 if loss_type == "cispo" else None)
    before = _params(trainer.model)
    trainer.train()
    assert all(math.isfinite(log["loss"]) for log in _logged(trainer))
    assert _moved(before, trainer.model)


def test_num_iterations_reuses_the_buffer_with_old_logps(tmp_path):
    trainer = _trainer(tmp_path, num_iterations=2, max_steps=4)
    generated = []
    original = trainer._make_rollout
    trainer._make_rollout = lambda rows: generated.append(len(rows)) or original(rows)
    trainer.train()
    assert generated == [8, 8]  # 4 optimiser steps, each generation batch used twice
    assert trainer._off_policy
    logs = _logged(trainer)
    assert all(math.isfinite(log["loss"]) for log in logs)
    # the second pass over a generation batch is off-policy: its ratio is no longer 1 everywhere
    assert trainer._buffer[0].old_logps is not None


def test_sequence_level_importance_sampling(tmp_path):
    trainer = _trainer(tmp_path, importance_sampling_level="sequence", num_iterations=2, max_steps=2)
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)


def test_top_entropy_quantile(tmp_path):
    # (mask_truncated_completions on all-truncated completions is a row of tests/bad_inputs/test_grpo.py)
    trainer = _trainer(tmp_path, top_entropy_quantile=0.2, max_steps=1)
    trainer.train()
    assert _logged(trainer)


def test_lora_with_beta_uses_the_model_without_adapters_as_reference(tmp_path):
    from peft import LoraConfig

    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels,
                          args=_config(tmp_path, beta=0.1, learning_rate=1e-1), train_dataset=_prompts(),
                          processing_class=tiny_tokenizer(),
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None and trainer._use_adapters_as_ref
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora" not in n}
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert all(torch.equal(base[n], p) for n, p in trainer.model.named_parameters() if n in base)
    assert any(not torch.equal(lora[n], p) for n, p in trainer.model.named_parameters() if n in lora)
    assert "kl" in _logged(trainer)[-1]


def test_log_completions_prints_and_writes_parquet(tmp_path, capsys):
    import pandas as pd

    trainer = _trainer(tmp_path, log_completions=True, num_completions_to_print=3, max_steps=1)
    trainer.train()
    files = sorted((tmp_path / "out" / "completions").glob("completions_*.parquet"))
    assert len(files) == 1
    frame = pd.read_parquet(files[0])
    assert {"prompt", "completion", "vowels", "advantage"} <= set(frame.columns) and len(frame) == 8
    assert "Completions at step 1" in capsys.readouterr().out


def test_evaluation_reports_rewards(tmp_path):
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels,
                          args=_config(tmp_path, per_device_eval_batch_size=4, max_steps=1),
                          train_dataset=_prompts(), eval_dataset=_prompts(4), processing_class=tiny_tokenizer())
    metrics = trainer.evaluate()
    assert {"eval_reward", "eval_rewards/vowels/mean", "eval_completions/mean_length"} <= set(metrics)


# ---- invariance and resume -----------------------------------------------------------------------------------------


def test_gradient_is_the_same_however_the_generation_batch_is_cut(tmp_path):
    """8 completions as 1 micro-batch of 8 or 2 accumulated micro-batches of 4: same generation batch, same loss
    normalisation over the step (trl.losses.reduce), so the same gradient."""
    grads = []
    for batch_size, accumulation in ((8, 1), (4, 2), (2, 4)):
        catcher = _GradCatcher()
        trainer = GRPOTrainer(
            model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, train_dataset=_prompts(),
            args=_config(tmp_path / str(batch_size), per_device_train_batch_size=batch_size,
                         gradient_accumulation_steps=accumulation, max_steps=1, max_grad_norm=0.0, beta=0.05),
            processing_class=tiny_tokenizer(), callbacks=[catcher],
        )
        trainer.train()
        grads.append(catcher.grads)
    for other in grads[1:]:
        for name, grad in grads[0].items():
            torch.testing.assert_close(other[name], grad, rtol=1e-4, atol=1e-6)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    """Stop after step 1 (in the middle of a generation batch used for two steps) and resume: steps 2 and 3 log the
    same losses and rewards as the run that was never stopped (buffer, generator and RNG states are saved)."""
    def run(output, resume=None, max_steps=3):
        trainer = GRPOTrainer(
            model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, train_dataset=_prompts(),
            args=_config(tmp_path, output_dir=str(tmp_path / output), max_steps=max_steps, per_device_train_batch_size=4,
                         steps_per_generation=2, save_strategy="steps", save_steps=1),
            processing_class=tiny_tokenizer(),
        )
        trainer.train(resume_from_checkpoint=resume)
        return {log["step"]: (log["loss"], log.get("reward")) for log in _logged(trainer)}

    full = run("full")
    resumed = run("full", resume=str(tmp_path / "full" / "checkpoint-1"))
    for step in (2, 3):
        assert resumed[step][0] == pytest.approx(full[step][0], rel=1e-5, abs=1e-7)
        if full[step][1] is not None:
            assert resumed[step][1] == pytest.approx(full[step][1], rel=1e-6)


# ---- rollout_func ------------------------------------------------------------------------------------------------


def _scripted_rollout_func(calls):
    """A `rollout_func` that 'generates' fixed completions: 3 policy tokens, 2 tool tokens (env_mask 0), then eos for
    even rows and a cut-off completion for odd rows; a `source` column for the rewards."""
    def rollout_func(prompts, trainer):
        calls.append(len(prompts))
        tokenizer = trainer.processing_class
        eos = tokenizer.eos_token_id
        rows = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [], "source": []}
        for i, prompt in enumerate(prompts):
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            rows["prompt_ids"].append(tokenizer(text)["input_ids"])
            ids = [10 + i % 5, 20, 30, 40, 41] + ([eos] if i % 2 == 0 else [50])
            rows["completion_ids"].append(ids)
            rows["logprobs"].append([-1.0] * len(ids))
            rows["env_mask"].append([1, 1, 1, 0, 0, 1])
            rows["source"].append(f"row{i}")
        return rows
    return rollout_func


def test_rollout_func_replaces_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    calls, seen = [], []

    def reward(completions, completion_ids, source, **kwargs):
        seen.append((source, completion_ids))
        return [float(ids[0]) for ids in completion_ids]  # differs within groups

    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=reward, train_dataset=_prompts(),
                          args=_config(tmp_path, max_steps=2), processing_class=tiny_tokenizer(),
                          rollout_func=_scripted_rollout_func(calls))
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)
    assert calls == [8, 8]  # one generation batch of 8 completions per step
    assert seen[0][0] == [f"row{i}" for i in range(8)] and seen[0][1][1][-1] == 50
    logs = _logged(trainer)
    assert all(math.isfinite(log["loss"]) for log in logs)
    # lengths count the policy's tokens only: 6 completion ids, of which 2 the environment wrote (env_mask 0)
    assert logs[0]["completions/mean_length"] == 4.0 and logs[0]["completions/clipped_ratio"] == 0.5
    # the loss mask leaves out the tool tokens (and, with mask_truncated_completions, the cut-off rows)
    rollout = trainer._buffer[0]
    assert trainer._loss_mask(rollout).sum(-1).tolist() == [4] * 8
    trainer.args.mask_truncated_completions = True
    assert rollout.is_truncated.sum() == 4  # the odd rows (the buffer is shuffled)
    assert trainer._loss_mask(rollout).sum(-1).tolist() == [0 if cut else 4 for cut in rollout.is_truncated.tolist()]


def test_rollout_func_log_probs_are_not_reused_as_old_log_probs(tmp_path, monkeypatch):
    # the engine's log-probs (-1.0 here) are not the policy's: off-policy batches get recomputed old log-probs
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=unique_ids, train_dataset=_prompts(),
                          args=_config(tmp_path, max_steps=1, num_iterations=2), processing_class=tiny_tokenizer(),
                          rollout_func=_scripted_rollout_func([]))
    trainer.train()
    old = trainer._buffer[0].old_logps
    assert old is not None and not torch.equal(old[:, :6], torch.full_like(old[:, :6], -1.0))


@pytest.mark.parametrize(("output", "match"), [
    ({"prompt_ids": [[1]] * 8, "completion_ids": [[2]] * 8}, "must return a dict with"),
    ({"prompt_ids": [[1]] * 8, "completion_ids": [[2]] * 8, "logprobs": 0.0}, "'logprobs' for 0.0 rows"),
    ({"prompt_ids": [[1]] * 8, "completion_ids": [[2]] * 7, "logprobs": [[0.0]] * 7}, "'completion_ids' for 7 rows"),
    ({"prompt_ids": [[1]] * 8, "completion_ids": [[2, 3]] * 8, "logprobs": [[0.0]] * 8}, "2 completion ids but 1"),
    ({"prompt_ids": [[1]] * 8, "completion_ids": [[2]] * 8, "logprobs": [[0.0]] * 8, "score": 1.0}, "'score'"),
])
def test_rollout_func_bad_output_is_reported(tmp_path, monkeypatch, output, match):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, train_dataset=_prompts(),
                          args=_config(tmp_path, max_steps=1), processing_class=tiny_tokenizer(),
                          rollout_func=lambda prompts, trainer: output)
    with pytest.raises(ValueError, match=match):
        trainer.train()


def test_rollout_func_output_forms():
    # tensor ids, vLLM-style candidate log-probs with their token ids, None log-probs on tool tokens
    from trl.generation.base import SamplingConfig
    from trl.generation.rollout_func import rollout_from_func_output

    sampling = SamplingConfig(max_completion_length=8, eos_token_ids=(2,), pad_token_id=0)
    out = {
        "prompt_ids": [torch.tensor([5, 6]), [7]],
        "completion_ids": [torch.tensor([9, 10, 2]), [11, 12]],
        "logprobs": [[[-0.5, -2.0], [-3.0, -0.1], -0.2], [None, [-0.7]]],
        "logprob_token_ids": [[[9, 4], [4, 10], [2]], [[11], [12]]],
        "env_mask": [[1, 0, 1], [0, 1]],
        "tag": ["a", "b"],
    }
    rollout, extra = rollout_from_func_output(out, 2, sampling, "cpu")
    assert rollout.prompt_ids.tolist() == [[5, 6], [0, 7]] and rollout.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert rollout.completion_ids.tolist() == [[9, 10, 2], [11, 12, 0]]
    assert rollout.is_truncated.tolist() == [False, True]
    torch.testing.assert_close(rollout.sampling_logps, torch.tensor([[-0.5, -0.1, -0.2], [0.0, -0.7, 0.0]]))
    assert rollout.tool_mask.tolist() == [[1, 0, 1], [0, 1, 0]] and extra == {"tag": ["a", "b"]}
    for bad, match in (({**out, "prompt_ids": [[], [7]]}, "empty 'prompt_ids' for rows \\[0\\]"),
                       ({**out, "env_mask": [[1, 2, 1], [0, 1]]}, "'env_mask' must hold 0"),
                       ({**out, "logprobs": [["x", -1.0, -1.0], [-1.0, -1.0]]}, "'logprobs' of row 0 holds 'x'")):
        with pytest.raises(ValueError, match=match):
            rollout_from_func_output(bad, 2, sampling, "cpu")


def test_rollout_func_warns_that_it_is_experimental(tmp_path, monkeypatch):
    monkeypatch.delenv("TRL_EXPERIMENTAL_SILENCE", raising=False)

    def make(**kwargs):
        return GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, train_dataset=_prompts(),
                           args=_config(tmp_path), processing_class=tiny_tokenizer(), **kwargs)

    with pytest.warns(UserWarning, match="rollout_func is experimental"):
        make(rollout_func=_scripted_rollout_func([]))
    with pytest.raises(TypeError, match=r"tools\[0\] \(len\) has the positional-only argument"):
        make(tools=[len])  # tools are checked at construction (tests/trainers/test_grpo_tools.py)
    with pytest.raises(TypeError, match="callable"):
        make(rollout_func="generate.py")


# ---- RLOO --------------------------------------------------------------------------------------------------------


def test_rloo_trains_with_kl_penalty_and_frozen_reference(tmp_path):
    trainer = _trainer(tmp_path, cls=RLOOTrainer, config_cls=RLOOConfig, num_generations=2)
    assert trainer.args.beta == 0.05 and trainer.ref_model is not None
    ref_before, before = _params(trainer.ref_model), _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model) and not _moved(ref_before, trainer.ref_model)
    log = _logged(trainer)[-1]
    assert GENERATION_METRICS | CLIP_METRICS | {"kl", "rewards/vowels/mean"} <= set(log)
    assert math.isfinite(log["loss"])


def test_rloo_normalized_advantages_reward_clip_and_iterations(tmp_path):
    trainer = _trainer(tmp_path, cls=RLOOTrainer, config_cls=RLOOConfig, num_generations=4, beta=0.0,
                       normalize_advantages=True, reward_clip_range=(0.0, 2.0), num_iterations=2, max_steps=2)
    assert trainer.ref_model is None
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)


def test_entropy_bonus_and_adaptive_coefficient(tmp_path):
    trainer = _trainer(tmp_path, entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=100.0,
                       entropy_coef_delta=0.005, max_steps=2)
    before = _params(trainer.model)
    trainer.train()
    assert _moved(before, trainer.model)
    logs = _logged(trainer)
    assert {"policy_loss", "entropy_coef"} <= set(logs[0])
    # the entropy (~6 nats for a random model) is under the target, so the coefficient rose by delta at each step
    assert logs[0]["entropy_coef"] == pytest.approx(0.01) and trainer.entropy_coef == pytest.approx(0.02)
    assert trainer._online_state()["entropy_coef"] == pytest.approx(0.02)


def test_adaptive_entropy_state_is_saved_as_entropy_ctrl_state_json(tmp_path):
    # TRL's checkpoint file name: written at each save, and read on resume even without the per-process online state
    kwargs = dict(entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=100.0, entropy_coef_delta=0.005,
                  save_strategy="steps", save_steps=1, output_dir=str(tmp_path / "run"))
    _trainer(tmp_path, max_steps=2, **kwargs).train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    state = json.loads((checkpoint / "entropy_ctrl_state.json").read_text())
    assert state == {"entropy_coef": pytest.approx(0.015), "entropy_below_target": True}
    (checkpoint / "online_state_0.pt").unlink()
    resumed = _trainer(tmp_path, max_steps=2, **kwargs)
    with pytest.warns(UserWarning, match="online_state_0.pt is missing"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert _logged(resumed)[-1]["entropy_coef"] == pytest.approx(0.015)
    assert resumed.entropy_coef == pytest.approx(0.02)


def test_entropy_bonus_changes_the_gradient(tmp_path):
    grads = []
    for coef in (0.0, 0.5):
        catcher = _GradCatcher()
        trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, train_dataset=_prompts(),
                              args=_config(tmp_path / str(coef), max_steps=1, entropy_coef=coef, max_grad_norm=0.0),
                              processing_class=tiny_tokenizer(), callbacks=[catcher])
        trainer.train()
        grads.append(catcher.grads)
    name = next(n for n in grads[0] if "lm_head" in n or "embed" in n)
    assert not torch.allclose(grads[0][name], grads[1][name])


def test_prefilled_assistant_prompt_is_continued_and_rewards_see_the_whole_answer(tmp_path):
    seen, seen_prompts = [], []

    def record(prompts, completions, **kwargs):
        seen.extend(c[0]["content"] for c in completions)
        seen_prompts.extend(prompts)
        return vowels(completions)

    rows = [{"prompt": [{"role": "user", "content": "sort: c a b"}, {"role": "assistant", "content": "a b"}]}] * 4
    trainer = _trainer(tmp_path, reward_funcs=record, dataset=Dataset.from_list(rows), max_steps=1)
    ids = trainer.train_dataset[0]["prompt_ids"]
    tokenizer = trainer.processing_class
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\na b")  # continued, not closed
    trainer.train()
    assert seen and all(text.startswith("a b") for text in seen)
    # the prefill moved from the prompt into the completion: prompt + completion holds it once
    assert all(p == [{"role": "user", "content": "sort: c a b"}] for p in seen_prompts)


def test_remove_unused_columns_keeps_the_prompt(tmp_path):
    trainer = _trainer(tmp_path, remove_unused_columns=True, max_steps=1)
    trainer.train()
    assert _logged(trainer)


def test_num_generations_eval_and_eval_batch_counts_completions(tmp_path):
    with pytest.raises(ValueError, match="whole groups of num_generations_eval=3"):
        _config(tmp_path, per_device_eval_batch_size=8, num_generations_eval=3, eval_strategy="steps")
    # without evaluation the eval batch is not checked (16 generations do not fit the default eval batch of 8)
    assert _config(tmp_path, num_generations=16, per_device_train_batch_size=16).num_generations == 16
    trainer = GRPOTrainer(model=tiny_model(seed=0, **SMALL), reward_funcs=vowels,
                          args=_config(tmp_path, per_device_eval_batch_size=4, num_generations_eval=2, max_steps=1),
                          train_dataset=_prompts(), eval_dataset=_prompts(3), processing_class=tiny_tokenizer())
    batches = list(trainer.get_eval_dataloader())
    assert [len(b) for b in batches] == [4, 2]  # 3 prompts x 2 completions, 4 completions per batch
    state = trainer._generator.get_state()
    trainer.evaluate()
    assert torch.equal(trainer._generator.get_state(), state)  # evaluation does not move the training sampler


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_two_ddp_ranks_equal_one_process(tmp_path, kind):
    """One group of 8 completions split 4 + 4 over two gloo processes (advantages need the whole group: rewards are
    gathered) gives the loss, metrics and gradients of one process holding all 8."""
    from .online_one_step import one_step

    log, grads, _ = one_step(tmp_path / "single", kind, batch_size=8, grad_accum=1)
    out = tmp_path / "ddp.pt"
    run_two_ranks("online_one_step.py", str(out), kind, "4", "1")
    saved = torch.load(out)
    assert saved["world_size"] == 2
    for key in ("loss", "reward", "reward_std", "kl", "entropy", "completions/mean_length"):
        assert saved["log"][key] == pytest.approx(log[key], rel=1e-5, abs=1e-6), key
    for name, grad in grads.items():
        torch.testing.assert_close(saved["grads"][name], grad, rtol=1e-4, atol=1e-6)


def test_reward_funcs_by_name_resolve_as_in_the_cli(tmp_path):
    from trl.rewards import think_format_reward

    trainer = _trainer(tmp_path, reward_funcs=["think_format_reward", vowels], max_steps=1)
    assert trainer.reward_scorer._funcs[0] is think_format_reward
    trainer.train()
    assert "rewards/think_format_reward/mean" in _logged(trainer)[0]


def test_sequence_classification_model_as_reward(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from trl.models.tiny import tiny_config

    config = tiny_config(num_labels=1, **SMALL)
    config.pad_token_id = 3
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_config(config)
    trainer = GRPOTrainer(
        model=tiny_model(seed=0, **SMALL), reward_funcs=[reward_model, vowels], args=_config(tmp_path, max_steps=1),
        train_dataset=_prompts(), processing_class=tiny_tokenizer(), reward_processing_classes=[tiny_tokenizer(), None])
    trainer.train()
    log = _logged(trainer)[0]
    name = trainer.reward_scorer.names[0]
    assert f"rewards/{name}/mean" in log and math.isfinite(log[f"rewards/{name}/mean"])


def test_sync_ref_model_mixes_the_policy_into_the_reference(tmp_path):
    trainer = _trainer(tmp_path, beta=0.1, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5)
    ref_before = _params(trainer.ref_model)
    trainer.train()
    assert _moved(ref_before, trainer.ref_model)


def test_trimmed_micro_batches_score_like_untrimmed(tmp_path):
    """A micro-batch drops the padding columns none of its rows use; its completion log-probs do not change."""
    trainer = _trainer(tmp_path)
    rows = [trainer.train_dataset[i] for i in range(4) for _ in range(2)]
    rollout = trainer._generate([row["prompt_ids"] for row in rows], trainer._generator)
    micro = rollout.select([0, 1, 6])
    trimmed = micro.trim()
    assert trimmed.prompt_ids.shape[1] <= micro.prompt_ids.shape[1]
    assert trimmed.prompt_mask.sum() == micro.prompt_mask.sum()
    assert trimmed.completion_mask.sum() == micro.completion_mask.sum()
    with torch.no_grad():
        full, _, _ = trainer._forward_logps(trainer.model, micro)
        cut, _, _ = trainer._forward_logps(trainer.model, trimmed)
    width = trimmed.completion_ids.shape[1]
    mask = micro.completion_mask[:, :width].bool()
    torch.testing.assert_close(cut[mask], full[:, :width][mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trimmed.sampling_logps, micro.sampling_logps[:, :width])


def test_resume_with_reference_sync_restores_the_synced_reference(tmp_path):
    """With TR-DPO syncing the reference moves during training; a resumed run continues from its saved weights."""
    def run(resume=None):
        trainer = GRPOTrainer(
            model=tiny_model(seed=0, **SMALL), reward_funcs=vowels, train_dataset=_prompts(),
            args=_config(tmp_path, output_dir=str(tmp_path / "run"), max_steps=3, beta=0.1, sync_ref_model=True,
                         ref_model_sync_steps=1, ref_model_mixup_alpha=0.5, save_strategy="steps", save_steps=1),
            processing_class=tiny_tokenizer(),
        )
        trainer.train(resume_from_checkpoint=resume)
        logs = {log["step"]: (log["loss"], log["kl"]) for log in _logged(trainer)}
        return logs, _params(trainer.ref_model)

    full, ref_full = run()
    resumed, ref_resumed = run(resume=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed[3][1] == pytest.approx(full[3][1], rel=1e-5, abs=1e-8)  # the KL to the synced reference
    assert resumed[3][0] == pytest.approx(full[3][0], rel=1e-5, abs=1e-7)
    for name, value in ref_full.items():
        torch.testing.assert_close(ref_resumed[name], value)


def test_moe_aux_loss_is_added_and_logged(tmp_path):
    """A mixture of experts with `router_aux_loss_coef`: the load-balancing loss is added to the policy loss (averaged
    over the micro-batches of the step) and logged as `aux_loss`; with the coefficient 0 it is neither."""
    from .sft_one_step import tiny_moe_model

    losses = {}
    for coef in (0.0, 0.5):
        trainer = GRPOTrainer(model=tiny_moe_model(seed=0), reward_funcs=vowels, processing_class=tiny_tokenizer(),
                              args=_config(tmp_path / str(coef), max_steps=1, router_aux_loss_coef=coef),
                              train_dataset=_prompts())
        trainer.train()
        log = next(entry for entry in trainer.state.log_history if "loss" in entry)
        assert ("aux_loss" in log) == (coef > 0)
        losses[coef] = log
    assert losses[0.5]["aux_loss"] > 0
    # same seed, same samples: the step's loss differs by exactly coef * aux_loss
    assert losses[0.5]["loss"] == pytest.approx(losses[0.0]["loss"] + 0.5 * losses[0.5]["aux_loss"], rel=1e-4, abs=1e-6)
