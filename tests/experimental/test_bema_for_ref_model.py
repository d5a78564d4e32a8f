"""bema_for_ref_model: the DPO reference takes the policy's BEMA weights from the callback."""

import math

import pytest
import torch

from trl import DPOConfig
from trl.data.tiny import tiny_task_dataset
from trl.experimental.bema_for_ref_model import BEMACallback, DPOTrainer
from trl.models.tiny import tiny_tokenizer

from .helpers import changed, common_args, logged, params, small_model


def _args(tmp_path, **overrides):
    return DPOConfig(**common_args(tmp_path, max_length=64, **overrides))


def test_reference_follows_bema(tmp_path):
    bema = BEMACallback(update_freq=1, update_ref_model=True, ref_model_update_freq=2)
    model = small_model()
    before = params(model)
    trainer = DPOTrainer(model=model, args=_args(tmp_path, max_steps=4), train_dataset=tiny_task_dataset("preference", num_rows=16),
                         processing_class=tiny_tokenizer(), callbacks=[bema])
    ref_before = params(trainer.ref_model)
    trainer.train()
    logs = logged(trainer)
    assert all(math.isfinite(log["loss"]) for log in logs)
    assert changed(trainer.model, before)
    assert bema.ref_model_updates == 2  # steps 2 and 4
    assert changed(trainer.ref_model, ref_before), "the reference did not take the BEMA weights"
    weights = bema.bema_state_dict()
    for name, p in trainer.ref_model.named_parameters():
        torch.testing.assert_close(p.detach(), weights[name].to(p.dtype), rtol=0, atol=0)
    # the BEMA weights are not the policy's (an average with a bias correction), so the reference is its own model
    assert any(not torch.equal(p.detach(), q.detach())
               for p, q in zip(trainer.ref_model.parameters(), trainer.model.parameters()))


def test_without_update_ref_model_the_reference_is_frozen(tmp_path):
    trainer = DPOTrainer(model=small_model(), args=_args(tmp_path, max_steps=2),
                         train_dataset=tiny_task_dataset("preference", num_rows=8), processing_class=tiny_tokenizer(),
                         callbacks=[BEMACallback(update_freq=1)])
    ref_before = params(trainer.ref_model)
    trainer.train()
    assert not changed(trainer.ref_model, ref_before)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"ref_model_update_freq` must be at least 1; got 0"):
        BEMACallback(ref_model_update_freq=0)
    with pytest.raises(ValueError, match=r"needs a separate reference model"):
        DPOTrainer(model=small_model(), args=_args(tmp_path, precompute_ref_log_probs=True),
                   train_dataset=tiny_task_dataset("preference", num_rows=8), processing_class=tiny_tokenizer(),
                   callbacks=[BEMACallback(update_ref_model=True)])


def test_update_ref_model_with_the_stable_dpo_trainer_is_refused(tmp_path):
    """The stable DPOTrainer passes no `ref_model` to callbacks: the reference would silently never follow BEMA."""
    import trl

    trainer = trl.DPOTrainer(model=small_model(), args=_args(tmp_path, max_steps=1),
                             train_dataset=tiny_task_dataset("preference", num_rows=8), processing_class=tiny_tokenizer(),
                             callbacks=[BEMACallback(update_freq=1, update_ref_model=True, ref_model_update_freq=1)])
    with pytest.raises(ValueError, match=r"got no `ref_model` from the trainer.*bema_for_ref_model.DPOTrainer"):
        trainer.train()
