"""The pre-flight memory guard and the optimiser-name helper of the base trainer."""

import pytest
import torch

from trl.guards import TrainingWillNotLearnError, check_optimizer_memory
from trl.trainer import base_trainer


def test_optimizer_memory_fits_or_is_reported():
    # 1e9 float32 parameters: 1 gradient + 2 AdamW states = 12e9 bytes = 11.18 GiB
    check_optimizer_memory(10**9, 4 * 10**9, 2, 12 * 10**9, enforce=True)  # exactly fits: nothing
    with pytest.raises(TrainingWillNotLearnError, match=r"need 11\.2 GiB .* 8\.0 GiB free"):
        check_optimizer_memory(10**9, 4 * 10**9, 2, 8 * 2**30, enforce=True)
    with pytest.warns(UserWarning, match="peft_config=LoraConfig"):
        check_optimizer_memory(10**9, 4 * 10**9, 2, 8 * 2**30, enforce=False)


def test_optim_name_reads_the_enum_value():
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="/tmp/unused", optim="galore_adamw_layerwise", use_cpu=True)
    assert base_trainer._optim_name(args) == "galore_adamw_layerwise"
    assert base_trainer._optim_name(TrainingArguments(output_dir="/tmp/unused", use_cpu=True)).startswith("adamw_torch")


def _sft_trainer(tmp_path, **kwargs):
    from datasets import Dataset

    from trl import SFTConfig, SFTTrainer
    from trl.models.tiny import tiny_model, tiny_tokenizer

    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", per_device_train_batch_size=2)
    return SFTTrainer(model=tiny_model(num_hidden_layers=1), args=args, processing_class=tiny_tokenizer(),
                      train_dataset=Dataset.from_dict({"input_ids": [[5, 6, 7, 8]] * 4}), **kwargs)


def test_trainer_checks_optimizer_memory_before_training(tmp_path, monkeypatch):
    trainer = _sft_trainer(tmp_path)
    model = trainer.model
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # the CPU stands in for a CUDA device with room for the gradient and one AdamW state, not two
    monkeypatch.setattr(base_trainer, "_PREFLIGHT_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(base_trainer, "_cuda_free_bytes", lambda device: trainable_bytes * 2)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    with pytest.raises(TrainingWillNotLearnError, match="first optimiser step would run out of memory"):
        trainer.train()
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())  # stopped before any step
    monkeypatch.setattr(base_trainer, "_cuda_free_bytes", lambda device: trainable_bytes * 3)
    trainer.train()


def test_optimizer_memory_is_not_judged_for_another_optimizer(tmp_path, monkeypatch):
    trainer = _sft_trainer(tmp_path, optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}))
    monkeypatch.setattr(base_trainer, "_PREFLIGHT_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(base_trainer, "_cuda_free_bytes", lambda device: 0)
    trainer.train()  # SGD keeps no state: the AdamW estimate does not apply


def test_a_guard_ignored_by_name_only_warns():
    from trl.guards import GUARDS, Policy, check_finite_loss

    ignored = Policy(ignore=frozenset({"finite_loss"}))
    with pytest.warns(UserWarning, match=r"loss is nan at step 7.*'finite_loss' is in ignore_guards"):
        check_finite_loss(float("nan"), 7, ignored)
    # other guards still stop, and the error names both ways out
    with pytest.raises(TrainingWillNotLearnError, match=r"ignore_guards=\['optimizer_memory'\]\` \(this check only\) or "
                                                        r"`guards=False`"):
        check_optimizer_memory(10**9, 4 * 10**9, 2, 8 * 2**30, ignored)
    with pytest.raises(TrainingWillNotLearnError):
        check_finite_loss(float("nan"), 7, Policy())
    with pytest.warns(UserWarning, match="loss is nan"):
        check_finite_loss(float("nan"), 7, Policy(enabled=False))
    assert not Policy(enabled=False) and Policy() and "finite_loss" in GUARDS


def test_ignore_guards_config_field(tmp_path):
    from trl import SFTConfig
    from trl.guards import GUARDS, policy

    args = SFTConfig(output_dir=str(tmp_path), ignore_guards=["finite_loss"], report_to="none")
    assert not policy(args).enforces("finite_loss") and policy(args).enforces("loss_masks")
    assert SFTConfig(output_dir=str(tmp_path), ignore_guards="finite_loss,eos_trained").ignore_guards == [
        "finite_loss", "eos_trained"]
    with pytest.raises(ValueError, match=r"Unknown guard name\(s\) in `ignore_guards`: \['finite'\]\. The guards are: "
                                         r"loss_masks: .*step_loss_tokens: "):
        SFTConfig(output_dir=str(tmp_path), ignore_guards=["finite"])
    help_text = dict((f.name, f) for f in __import__("dataclasses").fields(SFTConfig))["ignore_guards"].metadata["help"]
    assert all(name in help_text for name in GUARDS)
