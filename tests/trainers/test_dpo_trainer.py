"""DPOTrainer on tiny models: every loss type trains; reference semantics; precompute cache; invariance. Bad inputs are
rows of tests/bad_inputs/test_dpo.py."""

import gc
import math

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from trl import DPOConfig, DPOTrainer
from trl.data.tiny import tiny_task_dataset
from trl.losses.dpo import DPO_LOSSES, wpo_pair_weights, wpo_weights
from trl.models.tiny import save_tiny_model, tiny_model, tiny_tokenizer

from .sft_one_step import SMALL, tiny_moe_model

METRICS = {"loss", "entropy", "num_tokens", "mean_token_accuracy", "rewards/chosen", "rewards/rejected",
           "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"}


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                  logging_steps=1, report_to="none", save_strategy="no", max_length=64, seed=0,
                  gradient_checkpointing=False)
    values.update(overrides)
    return DPOConfig(**values)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before):
    return [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_every_loss_type_trains(tmp_path, loss_type):
    model = tiny_model(seed=0, **SMALL)
    before = _params(model)
    trainer = DPOTrainer(model=model, args=_config(tmp_path, loss_type=loss_type),
                         train_dataset=tiny_task_dataset("preference", num_rows=16), processing_class=tiny_tokenizer())
    ref_before = _params(trainer.ref_model)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert all(math.isfinite(log["loss"]) for log in logs)
    assert METRICS <= set(logs[0]), set(logs[0])
    assert _changed(trainer.model, before), "the policy did not move"
    assert not _changed(trainer.ref_model, ref_before), "the reference moved"


def test_first_step_sigmoid_loss_is_log2_and_ref_equals_policy(tmp_path):
    """Before any update the policy is the reference: every log-ratio is 0, so the sigmoid loss is ln 2."""
    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, max_steps=1),
                         train_dataset=tiny_task_dataset("preference", num_rows=4), processing_class=tiny_tokenizer())
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_standard_and_implicit_prompt_data(tmp_path):
    implicit = Dataset.from_list([{"chosen": f"Q{i}: the answer is {i}.", "rejected": f"Q{i}: the answer is {i + 1}."}
                                  for i in range(8)])
    for name, data in (("standard", tiny_task_dataset("standard_preference", num_rows=8)), ("implicit", implicit)):
        trainer = DPOTrainer(model=tiny_model(**SMALL), args=_config(tmp_path / name, max_steps=2),
                             train_dataset=data, processing_class=tiny_tokenizer())
        trainer.train()
        assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_peft_reference_is_the_model_without_adapters(tmp_path):
    """No second model exists: the reference pass disables the adapters of the policy itself."""
    peft = pytest.importorskip("peft")
    gc.collect()
    model = tiny_model(seed=0, **SMALL)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=_config(tmp_path, learning_rate=5e-2), peft_config=config,
                         train_dataset=tiny_task_dataset("preference", num_rows=16), processing_class=tiny_tokenizer())
    assert trainer.ref_model is None
    gc.collect()
    causal_lms = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module) and type(o).__name__ == "Qwen3ForCausalLM"]
    assert len(causal_lms) == 1
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)  # adapters start at zero: policy == reference
    assert logs[-1]["rewards/margins"] != 0.0


def test_explicit_ref_model_stays_frozen_and_sync_moves_it(tmp_path):
    ref = tiny_model(seed=1, **SMALL)
    ref_before = _params(ref)
    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), ref_model=ref, args=_config(tmp_path),
                         train_dataset=tiny_task_dataset("preference", num_rows=16), processing_class=tiny_tokenizer())
    trainer.train()
    assert not _changed(ref, ref_before)
    ref = tiny_model(seed=1, **SMALL)
    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), ref_model=ref,
                         args=_config(tmp_path, sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.5),
                         train_dataset=tiny_task_dataset("preference", num_rows=16), processing_class=tiny_tokenizer())
    trainer.train()
    assert _changed(ref, ref_before), "TR-DPO sync did not update the reference"


def test_ref_model_loaded_again_from_a_path(tmp_path):
    path = save_tiny_model(tmp_path / "tiny", **SMALL)
    trainer = DPOTrainer(model=str(path), args=_config(tmp_path, max_steps=1),
                         train_dataset=tiny_task_dataset("preference", num_rows=4))
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())


class _GradCatcher(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_step(tmp_path, batch_size, grad_accum, **overrides):
    catcher = _GradCatcher()
    args = _config(tmp_path, max_steps=1, per_device_train_batch_size=batch_size,
                   gradient_accumulation_steps=grad_accum, max_grad_norm=0.0, **overrides)
    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), ref_model=tiny_model(seed=1, **SMALL), args=args,
                         train_dataset=tiny_task_dataset("preference", num_rows=4), processing_class=tiny_tokenizer(),
                         callbacks=[catcher])
    trainer.train()
    return trainer.state.log_history[0]["loss"], catcher.grads


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_gradient_accumulation_invariance(tmp_path, loss_type):
    loss, grads = _one_step(tmp_path / "a", 4, 1, loss_type=loss_type)
    loss_ga, grads_ga = _one_step(tmp_path / "b", 2, 2, loss_type=loss_type)
    loss_ga1, grads_ga1 = _one_step(tmp_path / "c", 1, 4, loss_type=loss_type)
    assert loss_ga == pytest.approx(loss, rel=1e-5) and loss_ga1 == pytest.approx(loss, rel=1e-5)
    for name in grads:
        torch.testing.assert_close(grads_ga[name], grads[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grads_ga1[name], grads[name], rtol=1e-4, atol=1e-6)


def test_precomputed_reference_is_cached_and_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_CACHE_DIR", str(tmp_path / "cache"))
    data = tiny_task_dataset("preference", num_rows=8)
    args = _config(tmp_path, max_steps=1, per_device_train_batch_size=8, max_grad_norm=0.0)
    live = DPOTrainer(model=tiny_model(seed=0, **SMALL), args=args, train_dataset=data,
                      processing_class=tiny_tokenizer())
    live.train()

    args = _config(tmp_path, max_steps=1, per_device_train_batch_size=8, precompute_ref_log_probs=True)
    first = DPOTrainer(model=tiny_model(seed=0, **SMALL), args=args, train_dataset=data,
                       processing_class=tiny_tokenizer())
    assert first.ref_model is None and "ref_chosen_logps" in first.train_dataset.column_names
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.pt"))) == 1

    def no_reference_pass(self):
        raise AssertionError("the reference pass ran although the cache holds the values")

    monkeypatch.setattr(DPOTrainer, "_reference", no_reference_pass)
    second = DPOTrainer(model=tiny_model(seed=0, **SMALL), args=args, train_dataset=data,
                        processing_class=tiny_tokenizer())
    assert second.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]
    second.train()
    assert second.state.log_history[0]["loss"] == pytest.approx(live.state.log_history[0]["loss"], rel=1e-5)

    other = tiny_model(seed=3, **SMALL)  # another model: another key, so the pass must run (and here it fails)
    with pytest.raises(AssertionError, match="reference pass ran"):
        DPOTrainer(model=other, args=args, train_dataset=data, processing_class=tiny_tokenizer())


def test_evaluate_reports_the_loss_and_dpo_metrics(tmp_path):
    """Preference batches have no `labels`: evaluation must still compute the loss. At init the policy is the
    reference, so the sigmoid loss of every pair is ln 2 and every implicit reward is 0."""
    seen = {}

    def compute_metrics(prediction):
        seen["predictions"], seen["labels"] = prediction.predictions, prediction.label_ids
        return {"pairs": len(prediction.predictions)}

    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, per_device_eval_batch_size=3),
                         train_dataset=tiny_task_dataset("preference", num_rows=4),
                         eval_dataset=tiny_task_dataset("preference", "test", num_rows=8),
                         processing_class=tiny_tokenizer())
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(math.log(2), rel=1e-6)
    expected = {f"eval_{key}" for key in METRICS - {"loss"}} | {"eval_logits/chosen", "eval_logits/rejected"}
    assert expected <= set(metrics), set(metrics)
    assert metrics["eval_rewards/accuracies"] == 0.0 and metrics["eval_rewards/margins"] == pytest.approx(0, abs=1e-6)

    trainer.compute_metrics = compute_metrics  # predictions: the (N, 2) implicit rewards, labels: zeros
    metrics = trainer.evaluate()
    assert metrics["eval_pairs"] == 8 and seen["predictions"].shape == (8, 2) and not seen["labels"].any()
    assert metrics["eval_loss"] == pytest.approx(math.log(2), rel=1e-6)


def test_moe_aux_loss_is_added_and_logged(tmp_path):
    """Step 1: policy == reference, so the DPO loss is ln 2 and the logged loss is ln 2 + coef * aux_loss."""
    trainer = DPOTrainer(model=tiny_moe_model(router_aux_loss_coef=0.01), args=_config(tmp_path, max_steps=2),
                         train_dataset=tiny_task_dataset("preference", num_rows=8), processing_class=tiny_tokenizer())
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["aux_loss"] > 0
    assert first["loss"] == pytest.approx(math.log(2) + 0.01 * first["aux_loss"], rel=1e-5)
    assert all(math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)

    off = DPOTrainer(model=tiny_moe_model(), args=_config(tmp_path, max_steps=1, router_aux_loss_coef=0.0),
                     train_dataset=tiny_task_dataset("preference", num_rows=4), processing_class=tiny_tokenizer())
    off.train()
    assert "aux_loss" not in off.state.log_history[0]
    assert off.state.log_history[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)


def test_wpo_uses_the_aligned_weights(tmp_path, monkeypatch):
    """`use_weighting=True` weighs each pair by the aligned WPO weight, p(y_t) / Σ_v p(v)² per token, computed here
    from the full `(B, T, V)` logits of a plain forward."""
    import trl.trainer.dpo_trainer as dpo_module

    used = []

    def spy(chosen_weights, rejected_weights):
        used.append(wpo_pair_weights(chosen_weights, rejected_weights))
        return used[-1]

    monkeypatch.setattr(dpo_module, "wpo_pair_weights", spy)
    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, use_weighting=True),
                         train_dataset=tiny_task_dataset("preference", num_rows=4), processing_class=tiny_tokenizer())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = logits.float().log_softmax(-1)  # (2B, T-1, V)
    token_logps = logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    log_sum_sq_probs = torch.logsumexp(2 * logps, dim=-1)  # log Σ_v p(v)²
    mask = batch["completion_mask"][:, 1:].bool()
    expected = wpo_pair_weights(*wpo_weights(token_logps, mask, log_sum_sq_probs).chunk(2))
    unaligned = wpo_pair_weights(*wpo_weights(token_logps, mask).chunk(2))
    assert len(used) == 1
    torch.testing.assert_close(used[0], expected, rtol=1e-5, atol=1e-6)
    assert (expected < 1).any() and not torch.allclose(expected, unaligned)  # the check can tell them apart
    # policy == reference: every pair's sigmoid loss is ln 2, weighted by its WPO weight
    assert float(loss) == pytest.approx(math.log(2) * float(expected.mean()), rel=1e-5)


@pytest.mark.parametrize("ld_alpha", [None, 0.5])
def test_padding_free_equals_padded(tmp_path, ld_alpha):
    """One flat row per batch (sequences separated by position_ids) gives the padded loss and gradient."""
    loss, grads = _one_step(tmp_path / "padded", 4, 1, ld_alpha=ld_alpha)
    loss_flat, grads_flat = _one_step(tmp_path / "flat", 4, 1, ld_alpha=ld_alpha, padding_free=True)
    assert loss_flat == pytest.approx(loss, rel=1e-5)
    for name in grads:
        torch.testing.assert_close(grads_flat[name], grads[name], rtol=1e-4, atol=1e-6)


def test_num_tokens_counts_no_padding(tmp_path):
    """Padded and padding-free batches (this one padded to a multiple of 64) log the same real-token count."""
    counts = {}
    for name, extra in {"padded": {}, "flat": {"padding_free": True, "pad_to_multiple_of": 64}}.items():
        args = _config(tmp_path / name, max_steps=1, per_device_train_batch_size=4, **extra)
        trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), ref_model=tiny_model(seed=1, **SMALL), args=args,
                             train_dataset=tiny_task_dataset("preference", num_rows=4),
                             processing_class=tiny_tokenizer())
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.train()
        counts[name] = trainer.state.log_history[0]["num_tokens"]
        if name == "padded":
            real = int(batch["attention_mask"].sum())
        else:
            assert batch["input_ids"].numel() > real  # the flat row does end in padding
    assert counts == {"padded": real, "flat": real}


def test_precompute_runs_at_the_training_precision(tmp_path, monkeypatch):
    """Under bf16 autocast the cached reference equals the policy at step 0, so the first rewards are exactly 0."""
    monkeypatch.setenv("TRL_CACHE_DIR", str(tmp_path / "cache"))
    args = _config(tmp_path, max_steps=1, per_device_train_batch_size=8, precompute_ref_log_probs=True, bf16=True,
                   use_cpu=True)
    trainer = DPOTrainer(model=tiny_model(seed=0, **SMALL), args=args, processing_class=tiny_tokenizer(),
                         train_dataset=tiny_task_dataset("preference", num_rows=8))
    trainer.train()
    assert trainer.state.log_history[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-7)


def test_peft_model_input_keeps_its_adapter_as_the_reference(tmp_path):
    """A PeftModel with a trained adapter (e.g. after SFT): the reference is a frozen copy of that adapter, in the same
    model; so at step 0 the policy equals the reference (loss ln 2, rewards 0), and the copy never moves."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(tiny_model(**SMALL), config)
    before = _params(model)
    trainer = DPOTrainer(model=model, args=_config(tmp_path, max_steps=2, learning_rate=1e-2),
                         train_dataset=tiny_task_dataset("preference", num_rows=8), processing_class=tiny_tokenizer())
    assert trainer.ref_model is None and trainer._ref_adapter == "ref"
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6) and first["rewards/chosen"] == pytest.approx(0, abs=1e-7)
    ref = {n: p for n, p in trainer.model.named_parameters() if ".ref." in n}
    assert ref and all(not p.requires_grad for p in ref.values())
    assert all(torch.equal(p, before[n.replace(".ref.", ".default.")]) for n, p in ref.items())
    assert any("lora" in n and ".default." in n for n in _changed(trainer.model, before))
