"""Parity of the online trainers (GRPO, RLOO) with the reference's surface (issue 10 §2): streaming datasets, a dict
of eval datasets with `eval_loss`, GRPO's sequence-IS warning, off-policy sequence masking and `cast_lm_head_to_fp32`,
`generation_kwargs`, every reference config field, and `reward_processing_classes`."""

import dataclasses
import warnings

import pytest
import torch
from datasets import DatasetDict
from transformers import HfArgumentParser

from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.generation.base import SamplingConfig
from trl.models.tiny import tiny_model, tiny_tokenizer
from trl.trainer.grpo_trainer import off_policy_sequence_mask
from trl.trainer.online import RepeatedGroups, RepeatSampler

from .sft_one_step import SMALL
from .test_grpo_trainer import _config, _prompts, vowels

# the fields of the reference's GRPOConfig beyond TrainingArguments
GRPO_REFERENCE_FIELDS = [
    "model_init_kwargs", "trust_remote_code", "router_aux_loss_coef", "disable_dropout", "cast_lm_head_to_fp32",
    "remove_unused_columns", "num_generations", "num_generations_eval", "max_completion_length",
    "ds3_gather_for_generation", "shuffle_dataset", "pad_to_multiple_of", "generation_batch_size",
    "steps_per_generation", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "generation_kwargs",
    "chat_template_kwargs", "cache_implementation", "use_vllm", "vllm_mode", "vllm_model_impl",
    "vllm_enable_sleep_mode", "vllm_structured_outputs_regex", "vllm_server_base_url", "vllm_server_host",
    "vllm_server_port", "vllm_server_timeout", "vllm_group_port", "vllm_gpu_memory_utilization",
    "vllm_max_model_length", "vllm_tensor_parallel_size", "beta", "num_iterations", "epsilon", "epsilon_high",
    "delta", "sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
    "vespo_lambda_neg", "importance_sampling_level", "reward_weights", "multi_objective_aggregation",
    "scale_rewards", "loss_type", "mask_truncated_completions", "sync_ref_model", "ref_model_mixup_alpha",
    "ref_model_sync_steps", "top_entropy_quantile", "entropy_coef", "use_adaptive_entropy", "entropy_coef_min",
    "entropy_coef_max", "entropy_coef_delta", "entropy_target", "max_tool_calling_iterations",
    "vllm_importance_sampling_correction", "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max",
    "vllm_importance_sampling_clip_min", "off_policy_mask_threshold", "use_bias_correction_kl", "log_completions",
    "log_multimodal", "num_completions_to_print", "log_unique_prompts", "log_completions_hub_repo",
    "use_transformers_continuous_batching", "transformers_continuous_batching_config", "use_transformers_paged",
    "vllm_importance_sampling_cap",
]
# the GRPO fields the reference's RLOOConfig does not have
RLOO_ABSENT = {
    "loss_type", "scale_rewards", "multi_objective_aggregation", "importance_sampling_level", "delta",
    "sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
    "vespo_lambda_neg", "top_entropy_quantile", "entropy_coef", "use_adaptive_entropy", "entropy_coef_min",
    "entropy_coef_max", "entropy_coef_delta", "entropy_target", "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_cap", "off_policy_mask_threshold", "use_bias_correction_kl", "cast_lm_head_to_fp32",
    "log_completions_hub_repo",
}
# values a reference YAML would hold for the fields we parse but do not use (use_vllm stays False)
REFERENCE_VALUES = {
    "vllm_mode": "server", "vllm_model_impl": "transformers", "vllm_enable_sleep_mode": True,
    "vllm_structured_outputs_regex": r"\d+", "vllm_server_base_url": "http://localhost:8000",
    "vllm_server_host": "127.0.0.1", "vllm_server_port": 8001, "vllm_server_timeout": 60.0, "vllm_group_port": 51217,
    "vllm_gpu_memory_utilization": 0.5, "vllm_max_model_length": 2048, "vllm_tensor_parallel_size": 2,
    "log_multimodal": False, "max_tool_calling_iterations": 3,
    "transformers_continuous_batching_config": {"max_memory_percent": 0.5},
}
GRPO_ONLY_VALUES = {
    "vllm_importance_sampling_correction": False, "vllm_importance_sampling_mode": "token_truncate",
    "vllm_importance_sampling_clip_max": 2.0, "vllm_importance_sampling_clip_min": 0.5,
    "off_policy_mask_threshold": 0.5, "cast_lm_head_to_fp32": True,
}


def _model():
    return tiny_model(seed=0, **SMALL)


# ---- 5. every reference config field parses -------------------------------------------------------------------


@pytest.mark.parametrize("config_cls", [GRPOConfig, RLOOConfig])
def test_every_reference_field_exists(config_cls):
    names = {f.name for f in dataclasses.fields(config_cls)}
    expected = GRPO_REFERENCE_FIELDS if config_cls is GRPOConfig else [
        n for n in GRPO_REFERENCE_FIELDS if n not in RLOO_ABSENT]
    assert [n for n in expected if n not in names] == []


@pytest.mark.parametrize("config_cls", [GRPOConfig, RLOOConfig])
def test_reference_yaml_values_load(tmp_path, config_cls):
    values = {**REFERENCE_VALUES, **(GRPO_ONLY_VALUES if config_cls is GRPOConfig else {})}
    (config,) = HfArgumentParser(config_cls).parse_dict(
        {"output_dir": str(tmp_path), "per_device_train_batch_size": 4, "num_generations": 2, **values})
    for name, value in values.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize("field,hint", [("use_vllm", "vLLM"), ("use_transformers_paged", "not supported"),
                                        ("use_transformers_continuous_batching", "not supported")])
def test_fields_needing_a_missing_backend_raise_only_when_set(tmp_path, field, hint):
    with pytest.raises(ValueError, match=hint):
        GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, **{field: True})
    GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, **{field: False})


# ---- 3. GRPO: sequence-IS warning, off-policy mask, cast_lm_head_to_fp32 --------------------------------------------


@pytest.mark.parametrize("loss_type", ["bnpo", "dapo", "dr_grpo", "cispo"])
def test_sequence_level_is_with_length_weighted_loss_warns(tmp_path, loss_type):
    kwargs = {"output_dir": str(tmp_path), "per_device_train_batch_size": 4, "num_generations": 2}
    with pytest.warns(UserWarning, match="sequence"):
        GRPOConfig(importance_sampling_level="sequence", loss_type=loss_type, epsilon_high=5.0, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GRPOConfig(importance_sampling_level="sequence", loss_type="grpo", **kwargs)
        GRPOConfig(importance_sampling_level="token", loss_type=loss_type,
                   epsilon_high=5.0 if loss_type == "cispo" else None, **kwargs)


def test_cast_lm_head_to_fp32_is_accepted(tmp_path):
    config = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                        cast_lm_head_to_fp32=True)
    assert config.cast_lm_head_to_fp32 is True


def test_off_policy_sequence_mask_on_a_hand_built_micro_batch():
    # four completions, two loss tokens each (row 3 has one); old - new log-prob per token:
    # row 0: 1.0 (drifted), A>0 -> kept; row 1: 1.0 (drifted), A<0 -> masked;
    # row 2: 0.25 (close), A<0 -> kept; row 3: 0.9 on its only loss token (the padded token's 5.0 is ignored) -> masked
    old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    new = torch.tensor([[-2.0, -2.0], [-2.0, -2.0], [-1.5, -1.0], [-1.9, -6.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    advantages = torch.tensor([1.0, -1.0, -1.0, -0.5])
    keep = off_policy_sequence_mask(new, old, advantages, mask, threshold=0.5)
    assert keep.tolist() == [True, False, True, False]
    assert off_policy_sequence_mask(new, old, advantages, mask, threshold=1.0).tolist() == [True, True, True, True]
    assert off_policy_sequence_mask(new, old, advantages, mask, threshold=0.1).tolist() == [True, False, False, False]


def test_off_policy_mask_drops_the_policy_term_of_masked_sequences(tmp_path):
    trainer = GRPOTrainer(model=_model(), reward_funcs=vowels, processing_class=tiny_tokenizer(),
                          train_dataset=_prompts(), args=_config(tmp_path, off_policy_mask_threshold=0.1,
                                                                 loss_type="grpo"))
    from trl.rollout import Rollout, StepCounts

    micro = Rollout(
        prompt_ids=torch.tensor([[5, 6], [5, 6]]), prompt_mask=torch.ones(2, 2, dtype=torch.long),
        completion_ids=torch.tensor([[7, 8], [7, 8]]), completion_mask=torch.ones(2, 2, dtype=torch.long),
        is_truncated=torch.tensor([False, False]),
    )
    micro.advantages = torch.tensor([1.0, -1.0])
    micro.step_counts = StepCounts(tokens=torch.tensor(4.0), sequences=torch.tensor(2.0), micro_batches=1)
    micro.old_logps = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    trainer._off_policy = True
    logps = torch.tensor([[-2.0, -2.0], [-2.0, -2.0]], requires_grad=True)
    mask = torch.ones(2, 2)
    loss, _ = trainer._loss(micro, logps, torch.zeros(2, 2), mask)
    loss.backward()
    assert logps.grad[0].abs().sum() > 0 and logps.grad[1].abs().sum() == 0  # row 1: negative and drifted


# ---- 4. generation_kwargs ------------------------------------------------------------------------------------------


def _sampling():
    return SamplingConfig(max_completion_length=8, eos_token_ids=(1,), pad_token_id=0)


def test_generation_kwargs_sampling_keys_pass_through():
    sampling = _sampling().with_overrides({"top_k": 5, "top_p": 0.9, "min_p": 0.1, "temperature": 0.7,
                                           "repetition_penalty": 1.1, "do_sample": True, "num_beams": 1})
    assert (sampling.top_k, sampling.top_p, sampling.min_p, sampling.temperature) == (5, 0.9, 0.1, 0.7)


@pytest.mark.parametrize("key,value", [("num_beams", 4), ("early_stopping", True), ("length_penalty", 2.0)])
def test_generation_kwargs_beam_search_explains(key, value):
    with pytest.raises(ValueError, match="beam search does not apply to RL sampling") as error:
        _sampling().with_overrides({key: value})
    assert "top_p" in str(error.value) and "do_sample" in str(error.value)


def test_generation_kwargs_unknown_key_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="cannot honour.*'foo'.*temperature"):
        _sampling().with_overrides({"foo": 1})


def test_generation_kwargs_reach_the_trainer(tmp_path):
    trainer = GRPOTrainer(model=_model(), reward_funcs=vowels, processing_class=tiny_tokenizer(),
                          train_dataset=_prompts(), args=_config(tmp_path, generation_kwargs={"top_k": 3}))
    assert trainer.sampling.top_k == 3


# ---- 6. reward_processing_classes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("trainer_cls,config_cls", [(GRPOTrainer, GRPOConfig), (RLOOTrainer, RLOOConfig)])
def test_reward_processing_classes_attribute(tmp_path, trainer_cls, config_cls):
    trainer = trainer_cls(model=_model(), reward_funcs=[vowels, vowels], processing_class=tiny_tokenizer(),
                          train_dataset=_prompts(), args=_config(tmp_path, config_cls))
    assert trainer.reward_processing_classes == [None, None]
    assert trainer.reward_funcs == [vowels, vowels]


def test_reward_processing_classes_hold_the_reward_models_tokenizer(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from trl.models.tiny import tiny_config

    config = tiny_config(num_labels=1, **SMALL)
    config.pad_token_id = 3
    reward_model = AutoModelForSequenceClassification.from_config(config)
    reward_tokenizer = tiny_tokenizer()
    trainer = GRPOTrainer(model=_model(), reward_funcs=[vowels, reward_model], processing_class=tiny_tokenizer(),
                          train_dataset=_prompts(), args=_config(tmp_path),
                          reward_processing_classes=[None, reward_tokenizer])
    assert trainer.reward_processing_classes == [None, reward_tokenizer]
    assert trainer.reward_funcs[1] is reward_model


# ---- 2. a dict of eval datasets, eval_loss ---------------------------------------------------------------------------


def test_eval_dict_prefixes_and_eval_loss(tmp_path):
    evals = DatasetDict({"a": _prompts(4), "b": _prompts(6)})
    trainer = GRPOTrainer(model=_model(), reward_funcs=vowels, processing_class=tiny_tokenizer(),
                          train_dataset=_prompts(), eval_dataset=evals,
                          args=_config(tmp_path, per_device_eval_batch_size=4))
    metrics = trainer.evaluate()
    for name in ("a", "b"):
        assert f"eval_{name}_reward" in metrics and f"eval_{name}_loss" in metrics
        assert metrics[f"eval_{name}_loss"] == pytest.approx(-metrics[f"eval_{name}_reward"])
    assert not any(k.startswith("eval_reward") for k in metrics)


@pytest.mark.parametrize("trainer_cls,config_cls", [(GRPOTrainer, GRPOConfig), (RLOOTrainer, RLOOConfig)])
def test_load_best_model_at_end_with_the_default_metric(tmp_path, trainer_cls, config_cls):
    args = _config(tmp_path, config_cls, per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=1,
                   save_strategy="steps", save_steps=1, load_best_model_at_end=True, num_generations=2)
    trainer = trainer_cls(model=_model(), reward_funcs=vowels, processing_class=tiny_tokenizer(),
                          train_dataset=_prompts(), eval_dataset=_prompts(4), args=args)
    trainer.train()
    assert trainer.state.best_metric is not None
    assert any("eval_loss" in log for log in trainer.state.log_history)


# ---- 1. streaming datasets ------------------------------------------------------------------------------------------


def test_repeated_groups_matches_the_repeat_sampler():
    rows = list(range(7))
    for prompts, repeat, keep_last in [(2, 3, False), (3, 1, True), (2, 2, True)]:
        expected = list(RepeatSampler(7, 2, prompts, repeat_count=repeat, shuffle=False, keep_last=keep_last))
        assert list(RepeatedGroups(rows, 2, prompts, repeat_count=repeat, keep_last=keep_last)) == expected


def test_streaming_train_and_eval(tmp_path):
    seen = []

    def recording(prompts, completions, **kwargs):
        seen.append(list(prompts))
        return vowels(completions)

    train = _prompts(16).to_iterable_dataset()
    trainer = GRPOTrainer(model=_model(), reward_funcs=recording, processing_class=tiny_tokenizer(),
                          train_dataset=train, eval_dataset=_prompts(4).to_iterable_dataset(),
                          args=_config(tmp_path, per_device_eval_batch_size=4, steps_per_generation=2))
    trainer.train()
    assert len([log for log in trainer.state.log_history if "loss" in log]) == 2
    for prompts in seen:  # whole groups of num_generations=4 identical prompts, in the stream's order
        assert all(prompts[i] == prompts[i - i % 4] for i in range(len(prompts)))
    first = [row["prompt"] for row in _prompts(16)]
    assert seen[0][::4] == first[:4]
    metrics = trainer.evaluate()
    assert "eval_reward" in metrics and "eval_loss" in metrics
    metrics = trainer.evaluate(eval_dataset=_prompts(2).to_iterable_dataset())
    assert "eval_reward" in metrics


def test_streaming_train_needs_max_steps(tmp_path):
    with pytest.raises(ValueError, match="max_steps"):
        GRPOTrainer(model=_model(), reward_funcs=vowels, processing_class=tiny_tokenizer(),
                    train_dataset=_prompts().to_iterable_dataset(), args=_config(tmp_path, max_steps=-1))
