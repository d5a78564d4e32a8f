"""OnlineDPOTrainer on the tiny model: trains with reward functions or a judge (finite loss, weights move, reference
frozen, documented metrics); the first loss is DPO's ln 2; pairs stay whole; bad inputs fail at construction."""

import math

import pytest

from trl.data.tiny import tiny_task_dataset
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
from trl.experimental.online_dpo.online_dpo_trainer import judge_reward
from trl.models.tiny import tiny_tokenizer

from .helpers import changed, logged, params, small_model

METRICS = {"objective/kl", "objective/entropy", "objective/non_score_reward", "objective/scores",
           "objective/scores_margin", "objective/rlhf_reward", "rewards/chosen", "rewards/rejected",
           "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "val/contain_eos_token", "beta",
           "completions/mean_length", "reward", "entropy", "num_tokens"}


def vowels(completions, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(sum(ch in "aeiou" for ch in text)) for text in texts]


def _args(tmp_path, **overrides):
    values = {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 8,
              "max_new_tokens": 8, "learning_rate": 1e-2, "logging_steps": 1, "report_to": "none",
              "save_strategy": "no", "seed": 0, "gradient_checkpointing": False, "guards": False}
    values.update(overrides)
    return OnlineDPOConfig(**values)


def _prompts(n=16):
    return tiny_task_dataset("prompt_only", "train", num_rows=n)


def test_trains_with_reward_functions(tmp_path):
    model = small_model()
    before = params(model)
    trainer = OnlineDPOTrainer(model=model, reward_funcs=vowels, args=_args(tmp_path, missing_eos_penalty=1.0),
                               train_dataset=_prompts(), processing_class=tiny_tokenizer())
    ref_before = params(trainer.ref_model)
    trainer.train()
    logs = logged(trainer)
    assert logs and all(math.isfinite(log["loss"]) for log in logs)
    assert METRICS <= set(logs[0]), METRICS - set(logs[0])
    # before the first update the policy is the reference: every implicit reward is 0 and the loss is ln 2
    assert logs[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert logs[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert logs[0]["objective/scores_margin"] >= 0  # the chosen completion never scores lower
    assert changed(trainer.model, before), "the policy did not move"
    assert not changed(trainer.ref_model, ref_before), "the reference moved"
    assert logs[-1]["rewards/margins"] > 0  # after an update, the policy prefers what it was shown as chosen


def test_micro_batches_hold_whole_pairs(tmp_path):
    trainer = OnlineDPOTrainer(model=small_model(), reward_funcs=vowels,
                               args=_args(tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=4),
                               train_dataset=_prompts(), processing_class=tiny_tokenizer())
    batches, _ = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 2, trainer.accelerator.device)
    for micro in batches:
        assert micro.prompts[0::2] == micro.prompts[1::2]
        assert (micro.advantages.view(-1, 2).sum(-1) == 0).all()  # one chosen (+1), one rejected (-1) per pair


def test_trains_with_a_judge_and_an_explicit_reference(tmp_path):
    calls = []

    class Shorter:
        def judge(self, prompts, completions):
            calls.append(len(completions))
            return [int(len(b) < len(a)) for a, b in completions]

    ref = small_model(seed=1)
    ref_before = params(ref)
    trainer = OnlineDPOTrainer(model=small_model(), ref_model=ref, judge=Shorter(), args=_args(tmp_path, beta=[0.1, 0.2]),
                               train_dataset=_prompts(), processing_class=tiny_tokenizer())
    trainer.train()
    logs = logged(trainer)
    assert calls and all(math.isfinite(log["loss"]) for log in logs)
    assert logs[0]["beta"] == pytest.approx(0.1)
    assert trainer.accelerator.unwrap_model(trainer.ref_model) is ref and not changed(ref, ref_before)


def test_ignored_compatibility_fields_warn(tmp_path):
    with pytest.warns(UserWarning, match=r"judge='pair_rm'` in the config is ignored.*OnlineDPOTrainer"):
        _args(tmp_path, judge="pair_rm")
    with pytest.warns(UserWarning, match=r"dataset_num_proc` is ignored"):
        _args(tmp_path, dataset_num_proc=2)


def test_judge_reward():
    fn = judge_reward(lambda prompts, pairs: [int(len(b) < len(a)) for a, b in pairs])
    assert fn(prompts=["p", "p", "q", "q"], completions=["long answer", "s", "a", "bb"]) == [0.0, 1.0, 1.0, 0.0]
    bad = judge_reward(lambda prompts, pairs: [2])
    with pytest.raises(ValueError, match=r"0 or 1"):
        bad(prompts=["p", "p"], completions=["a", "b"])
    with pytest.raises(TypeError, match=r"judge"):
        judge_reward(42)


def test_bad_inputs(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"num_generations` must be 2; got 4"):
        _args(tmp_path, num_generations=4)
    with pytest.raises(ValueError, match=r"must be even.*got 3"):
        _args(tmp_path, per_device_train_batch_size=3)
    with pytest.raises(ValueError, match=r"Unknown Online DPO loss_type 'hinge'"):
        _args(tmp_path, loss_type="hinge")
    with pytest.raises(ValueError, match=r"`beta` must be a positive number"):
        _args(tmp_path, beta=[0.1, -1.0])
    with pytest.raises(ValueError, match=r"needs `reward_funcs`.*judge"):
        OnlineDPOTrainer(model=small_model(), args=_args(tmp_path), train_dataset=_prompts(), processing_class=tok)
    with pytest.raises(ValueError, match=r"not both"):
        OnlineDPOTrainer(model=small_model(), reward_funcs=vowels, judge=lambda p, c: [0], args=_args(tmp_path),
                         train_dataset=_prompts(), processing_class=tok)
    from datasets import Dataset

    with pytest.raises(ValueError, match=r"prompt"):
        OnlineDPOTrainer(model=small_model(), reward_funcs=vowels, args=_args(tmp_path),
                         train_dataset=Dataset.from_list([{"question": "hi"}] * 8), processing_class=tok)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    """Stop after step 1 (in the middle of a generation batch used for two steps) and resume: steps 2 and 3 log the
    same losses as the run that was never stopped."""
    def run(resume=None):
        trainer = OnlineDPOTrainer(
            model=small_model(), reward_funcs=vowels, train_dataset=_prompts(), processing_class=tiny_tokenizer(),
            args=_args(tmp_path, max_steps=3, per_device_train_batch_size=4, steps_per_generation=2,
                       save_strategy="steps", save_steps=1),
        )
        trainer.train(resume_from_checkpoint=resume)
        return {log["step"]: (log["loss"], log["rewards/margins"]) for log in logged(trainer)}

    full = run()
    resumed = run(resume=str(tmp_path / "out" / "checkpoint-1"))
    for step in (2, 3):
        assert resumed[step][0] == pytest.approx(full[step][0], rel=1e-5, abs=1e-7)
        assert resumed[step][1] == pytest.approx(full[step][1], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_on_summed_log_ratios_as_the_reference(tmp_path, loss_type):
    """Both losses compare summed sequence log-ratios (the reference's Online DPO; its `ipo` is not length-normalised,
    unlike DPOTrainer's). Two pairs of unequal lengths; pair 0's second completion is the chosen one."""
    import types

    import torch

    from trl.rollout import StepCounts

    trainer = OnlineDPOTrainer(model=small_model(), reward_funcs=vowels, args=_args(tmp_path, loss_type=loss_type),
                               train_dataset=_prompts(), processing_class=tiny_tokenizer())
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.float32)
    logps = torch.tensor([[-1.0, -2.0, 9.0, 9.0], [-0.5, -0.5, -0.5, -0.5], [-1.0, -1.0, -1.0, 9.0],
                          [-4.0, 9.0, 9.0, 9.0]])  # 9.0 on padding: must not count
    ref = torch.tensor([[-1.5, -1.5, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0], [-0.5, -0.5, -0.5, 0.0],
                        [-3.0, 0.0, 0.0, 0.0]])
    micro = types.SimpleNamespace(ref_logps=ref, advantages=torch.tensor([-1.0, 1.0, 1.0, -1.0]),
                                  step_counts=StepCounts(tokens=mask.sum(), sequences=torch.tensor(4.0)))
    loss, _ = trainer._loss(micro, logps, torch.zeros_like(logps), mask)
    # h = Σ log π − Σ log π_ref: rows [0, 2, -1.5, -1]; chosen rows 1 and 2, rejected rows 0 and 3
    z = torch.tensor([2.0 - 0.0, -1.5 - (-1.0)], dtype=torch.float64)
    beta = 0.1
    naive = -torch.nn.functional.logsigmoid(beta * z) if loss_type == "sigmoid" else (z - 1 / (2 * beta)) ** 2
    assert float(loss) == pytest.approx(float(naive.mean()), rel=1e-6)
