"""Shared pieces of the experimental trainers' tests."""

import torch

from trl.models.tiny import tiny_model

# the tests' small tiny model (tests/trainers/sft_one_step.py uses the same shape)
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32}


def small_model(seed: int = 0):
    return tiny_model(seed=seed, **SMALL)


def params(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, before: dict) -> list[str]:
    return [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]


def logged(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "loss" in log]


def common_args(tmp_path, **overrides) -> dict:
    values = {"output_dir": str(tmp_path / "out"), "max_steps": 3, "per_device_train_batch_size": 4,
              "learning_rate": 1e-3, "logging_steps": 1, "report_to": "none", "save_strategy": "no", "seed": 0,
              "gradient_checkpointing": False}
    values.update(overrides)
    return values
