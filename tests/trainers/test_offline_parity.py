"""Documented behaviours of the reference that the offline trainers (SFT, DPO, KTO, Reward) share (issue 10 §2):
`evaluate(eval_dataset=raw)`, model tags, config defaults and CLI flags, and the bugs found side by side."""

import math
import warnings

import pytest
from datasets import Dataset

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer
from trl.data.tiny import tiny_task_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer

from .sft_one_step import SMALL

COMMON = dict(max_steps=1, per_device_train_batch_size=2, per_device_eval_batch_size=2, learning_rate=1e-3,
              report_to="none", save_strategy="no", seed=0, gradient_checkpointing=False)


def _reward_model():
    import torch
    from transformers import AutoModelForSequenceClassification

    from trl.models.tiny import tiny_config

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config("qwen3", num_labels=1, **SMALL))


def _sft(tmp_path, **kw):
    return SFTTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(),
                      args=SFTConfig(output_dir=str(tmp_path), max_length=64, **COMMON, **kw),
                      train_dataset=tiny_task_dataset("prompt_completion", num_rows=4))


def _dpo(tmp_path, **kw):
    return DPOTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(),
                      args=DPOConfig(output_dir=str(tmp_path), max_length=64, **COMMON, **kw),
                      train_dataset=tiny_task_dataset("preference", num_rows=4))


def _kto(tmp_path, **kw):
    return KTOTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(),
                      args=KTOConfig(output_dir=str(tmp_path), max_length=64, **COMMON, **kw),
                      train_dataset=tiny_task_dataset("unpaired_preference", num_rows=4))


def _reward(tmp_path, **kw):
    return RewardTrainer(model=_reward_model(), processing_class=tiny_tokenizer(),
                         args=RewardConfig(output_dir=str(tmp_path), max_length=64, **COMMON, **kw),
                         train_dataset=tiny_task_dataset("preference", num_rows=4))


TRAINERS = {
    "sft": (_sft, "prompt_completion", "sft"),
    "dpo": (_dpo, "preference", "dpo"),
    "kto": (_kto, "unpaired_preference", "kto"),
    "reward": (_reward, "preference", "reward-trainer"),
}


# ---- evaluate(eval_dataset=raw) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_evaluate_prepares_a_raw_dataset_given_only_then(tmp_path, name):
    build, form, _ = TRAINERS[name]
    trainer = build(tmp_path)
    raw = tiny_task_dataset(form, "test", num_rows=4)
    metrics = trainer.evaluate(eval_dataset=raw)
    assert math.isfinite(metrics["eval_loss"])
    # prepared once per fingerprint: a second call reuses the prepared dataset
    cached = dict(trainer._prepared_eval_cache)
    trainer.evaluate(eval_dataset=raw)
    assert trainer._prepared_eval_cache == cached
    # a dict of raw datasets: each under its own prefix
    metrics = trainer.evaluate(eval_dataset={"a": raw, "b": tiny_task_dataset(form, "test", num_rows=2)})
    assert math.isfinite(metrics["eval_a_loss"]) and math.isfinite(metrics["eval_b_loss"])


def test_evaluate_raw_dataset_with_precomputed_reference(tmp_path):
    trainer = _dpo(tmp_path, precompute_ref_log_probs=True)
    metrics = trainer.evaluate(eval_dataset=tiny_task_dataset("preference", "test", num_rows=2))
    assert math.isfinite(metrics["eval_loss"])


# ---- model tags --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_model_carries_the_trainer_tags(tmp_path, name):
    build, _, tag = TRAINERS[name]
    trainer = build(tmp_path)
    assert {"trl", tag} <= set(trainer.model.model_tags or [])


# ---- defaults and CLI --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [SFTConfig, DPOConfig, KTOConfig, RewardConfig])
def test_logging_nan_inf_filter_defaults_to_true(config):
    assert config(output_dir="out").logging_nan_inf_filter is True


def test_no_gradient_checkpointing_flag_parses():
    from trl import TrlParser

    (args,) = TrlParser(SFTConfig).parse_args_and_config(["--output_dir", "out", "--no_gradient_checkpointing"])
    assert not (getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing)
    (args,) = TrlParser(SFTConfig).parse_args_and_config(["--output_dir", "out"])
    assert getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    (args,) = TrlParser(SFTConfig).parse_args_and_config(["--output_dir", "out", "--gradient_checkpointing", "false"])
    assert not (getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing)


# ---- bugs --------------------------------------------------------------------------------------------------------

def _peft_prompt_config(kind):
    from peft import PromptEncoderConfig, PromptTuningConfig, TaskType

    if kind == "prompt_tuning":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4, encoder_hidden_size=32)


@pytest.mark.parametrize("kind", ["prompt_tuning", "p_tuning"])
def test_sft_trains_with_peft_prompt_learning(tmp_path, kind):
    """The virtual tokens PEFT prepends are never targets: the labels are padded in front by their number."""
    trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(),
                         args=SFTConfig(output_dir=str(tmp_path), max_length=64, logging_steps=1,
                                        **{**COMMON, "max_steps": 2}),
                         train_dataset=tiny_task_dataset("prompt_completion", num_rows=4),
                         peft_config=_peft_prompt_config(kind))
    assert trainer._virtual_tokens == 4
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(not p.detach().equal(before[n]) for n, p in trainer.model.named_parameters() if n in before)


def test_formatting_func_output_decides_the_format(tmp_path):
    """Rows with `chosen`/`rejected` formatted into text are language modelling, not rejected as preference data."""
    rows = Dataset.from_list([{"prompt": f"say {i}", "chosen": f" {i} {i}", "rejected": " no"} for i in range(4)])
    trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(),
                         args=SFTConfig(output_dir=str(tmp_path), max_length=64, **COMMON),
                         train_dataset=rows, formatting_func=lambda row: row["prompt"] + row["chosen"])
    assert trainer._dataset_format.kind == "language_modeling"
    assert trainer.train_dataset.column_names == ["input_ids"]
    trainer.train()


def test_stop_token_check_returns_false_for_a_template_that_raises():
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('this template refuses every conversation') }}"
    assert is_chat_template_stop_token_trained(tokenizer) is False
    tokenizer.chat_template = "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}"
    assert is_chat_template_stop_token_trained(tokenizer) is False


@pytest.mark.parametrize("trainer_cls", ["dpo", "kto"])
def test_precompute_with_a_streamed_dataset_is_a_value_error(tmp_path, trainer_cls):
    form = "preference" if trainer_cls == "dpo" else "unpaired_preference"
    stream = tiny_task_dataset(form, num_rows=4).to_iterable_dataset()
    config_cls, trainer_type = (DPOConfig, DPOTrainer) if trainer_cls == "dpo" else (KTOConfig, KTOTrainer)
    with pytest.raises(ValueError, match=r"precompute_ref_log_probs=True` needs a `datasets.Dataset`.*streamed"):
        trainer_type(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(),
                     args=config_cls(output_dir=str(tmp_path), max_length=64, precompute_ref_log_probs=True,
                                     **{**COMMON, "max_steps": 2}),
                     train_dataset=stream)


def test_a_few_rows_cut_to_nothing_are_dropped_with_a_warning(tmp_path):
    long = {"prompt": "sort: " + " ".join("qwertyuiopasdfghjklzxcvbnm") + "\nanswer:", "completion": " a"}
    rows = tiny_task_dataset("prompt_completion", num_rows=3).to_list() + [long]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = SFTTrainer(model=tiny_model(seed=0, **SMALL), processing_class=tiny_tokenizer(),
                             args=SFTConfig(output_dir=str(tmp_path), max_length=24, **COMMON),
                             train_dataset=Dataset.from_list(rows))
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("1 of 4 train rows lose every trained token to truncation at max_length=24") and
               "they are dropped" in m for m in messages), messages
    assert len(trainer.train_dataset) == 3
