"""KTOTrainer on tiny models: both loss types on unpaired and paired data; the loss against a hand computation;
reference semantics (copy, PEFT, sync, precompute cache); KL pairing. Bad inputs are rows of
tests/bad_inputs/test_kto.py."""

import gc
import math

import pytest
import torch
from transformers import TrainerCallback

from trl import KTOConfig, KTOTrainer
from trl.data.collators import DataCollatorForUnpairedPreference
from trl.data.preference import PreferenceDataOptions
from trl.data.tiny import tiny_task_dataset
from trl.data.unpaired import prepare_unpaired_dataset
from trl.models.tiny import tiny_model, tiny_tokenizer

from .sft_one_step import SMALL, tiny_moe_model

METRICS = {"loss", "kl", "entropy", "num_tokens", "rewards/chosen", "rewards/rejected", "rewards/margins",
           "logps/chosen", "logps/rejected"}


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                  logging_steps=1, report_to="none", save_strategy="no", max_length=64, seed=0,
                  gradient_checkpointing=False)
    values.update(overrides)
    return KTOConfig(**values)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before):
    return [n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])]


def _hand_logps(model, batch):
    """Sum of completion-token log-probs from plain `(B, T, V)` logits: the textbook computation."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = logits.float().log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(-1)


def _hand_kto_loss(logps, ref_logps, kl_logps, ref_kl_logps, labels, beta, w_d, w_u, loss_type):
    h = logps - ref_logps
    if loss_type == "kto":
        z = max(0.0, float((kl_logps - ref_kl_logps).mean()))
        desirable, undesirable = 1 - torch.sigmoid(beta * (h - z)), 1 - torch.sigmoid(beta * (z - h))
    else:
        desirable, undesirable = 1 - torch.sigmoid(beta * h), torch.sigmoid(beta * h)
    return torch.where(labels, w_d * desirable, w_u * undesirable).mean()


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("form", ["unpaired_preference", "standard_preference"])
def test_trains_on_unpaired_and_paired_data(tmp_path, form, loss_type):
    model = tiny_model(seed=0, **SMALL)
    before = _params(model)
    trainer = KTOTrainer(model=model, args=_config(tmp_path, loss_type=loss_type),
                         # 2 pairs unpair to chosen, chosen, rejected, rejected: one batch of 4 holds both labels
                         train_dataset=tiny_task_dataset(form, num_rows=8 if form == "unpaired_preference" else 2),
                         eval_dataset=tiny_task_dataset("unpaired_preference", "test", num_rows=4),
                         processing_class=tiny_tokenizer())
    assert len(trainer.train_dataset) == (8 if form == "unpaired_preference" else 4)  # pairs were unpaired
    ref_before = _params(trainer.ref_model)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert all(math.isfinite(log["loss"]) for log in logs)
    assert METRICS <= set(logs[0]), set(logs[0])
    assert _changed(trainer.model, before), "the policy did not move"
    assert not _changed(trainer.ref_model, ref_before), "the reference moved"
    assert logs[-1]["num_tokens"] > logs[0]["num_tokens"] > 0
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_kl", "eval_rewards/chosen", "eval_rewards/margins"} <= set(metrics), set(metrics)
    assert math.isfinite(metrics["eval_loss"])


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_loss_matches_a_hand_computation(tmp_path, loss_type):
    """Step 0: policy == reference, so every log-ratio and the KL term are 0 and the loss is λ·σ(0) per row. After
    the step, the loss of `compute_loss` equals the KTO formula on log-probs from plain logits."""
    data = tiny_task_dataset("unpaired_preference", num_rows=8)  # labels alternate True, False
    args = _config(tmp_path, loss_type=loss_type, max_steps=1, per_device_train_batch_size=8, desirable_weight=2.0,
                   undesirable_weight=0.5, beta=0.5)
    trainer = KTOTrainer(model=tiny_model(seed=0, **SMALL), args=args, train_dataset=data,
                         processing_class=tiny_tokenizer())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    labels = batch["label"]
    assert labels.tolist() == [True, False] * 4
    logps = _hand_logps(trainer.model, batch)
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx((4 * 2.0 * 0.5 + 4 * 0.5 * 0.5) / 8, rel=1e-6)
    assert first["kl"] == 0.0 and first["rewards/chosen"] == 0.0 and first["rewards/margins"] == 0.0
    # the fused head's sequence log-probs are those of plain logits
    assert first["logps/chosen"] == pytest.approx(float(logps[:8][labels].mean()), rel=1e-5)
    assert first["logps/rejected"] == pytest.approx(float(logps[:8][~labels].mean()), rel=1e-5)

    model = trainer.model.eval()
    policy, ref = _hand_logps(model, batch), _hand_logps(trainer.ref_model, batch)
    if loss_type == "kto":  # the KL completions are the second half of the batch
        assert batch["input_ids"].shape[0] == 16
        expected = _hand_kto_loss(policy[:8], ref[:8], policy[8:], ref[8:], labels, 0.5, 2.0, 0.5, loss_type)
    else:
        assert batch["input_ids"].shape[0] == 8
        expected = _hand_kto_loss(policy, ref, None, None, labels, 0.5, 2.0, 0.5, loss_type)
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_peft_reference_is_the_model_without_adapters(tmp_path):
    peft = pytest.importorskip("peft")
    gc.collect()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = KTOTrainer(model=tiny_model(seed=0, **SMALL), args=_config(tmp_path, learning_rate=5e-2),
                         peft_config=config, train_dataset=tiny_task_dataset("unpaired_preference", num_rows=8),
                         processing_class=tiny_tokenizer())
    assert trainer.ref_model is None
    gc.collect()
    causal_lms = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module) and type(o).__name__ == "Qwen3ForCausalLM"]
    assert len(causal_lms) == 1, "a second model was built"
    base_before = {n: p for n, p in _params(trainer.model).items() if "lora_" not in n}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs[0]["rewards/chosen"] == 0.0 and logs[0]["loss"] == pytest.approx(0.5, rel=1e-6)  # LoRA B starts at 0
    assert logs[-1]["rewards/chosen"] != 0.0
    assert not _changed(trainer.model, base_before), "the base weights (the reference) moved"


def test_sync_ref_model_moves_the_reference(tmp_path):
    ref = tiny_model(seed=1, **SMALL)
    ref_before = _params(ref)
    args = _config(tmp_path, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5)
    trainer = KTOTrainer(model=tiny_model(seed=0, **SMALL), ref_model=ref, args=args,
                         train_dataset=tiny_task_dataset("unpaired_preference", num_rows=8),
                         processing_class=tiny_tokenizer())
    trainer.train()
    assert _changed(ref, ref_before), "the reference was not synced"


def test_precomputed_reference_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_CACHE_DIR", str(tmp_path / "cache"))
    data = tiny_task_dataset("unpaired_preference", num_rows=8)
    args = _config(tmp_path, precompute_ref_log_probs=True, precompute_ref_batch_size=3)
    first = KTOTrainer(model=tiny_model(seed=0, **SMALL), args=args, train_dataset=data,
                       processing_class=tiny_tokenizer())
    assert first.ref_model is None
    assert {"ref_logps", "ref_KL_logps"} <= set(first.train_dataset.column_names)
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.pt"))) == 1
    # the initial policy is the reference: the cached values are its log-probs
    batch = first.data_collator([first.train_dataset[i] for i in range(8)])
    logps = _hand_logps(first.model, batch)
    torch.testing.assert_close(batch["ref_logps"], logps[:8], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(batch["ref_KL_logps"], logps[8:], rtol=1e-5, atol=1e-4)

    def no_reference_pass(self, ref, batch):
        raise AssertionError("the reference pass ran although the cache holds the values")

    monkeypatch.setattr(KTOTrainer, "_ref_scores", no_reference_pass)
    second = KTOTrainer(model=tiny_model(seed=0, **SMALL), args=args, train_dataset=data,
                        processing_class=tiny_tokenizer())
    assert second.ref_model is None
    assert second.train_dataset["ref_KL_logps"] == first.train_dataset["ref_KL_logps"]
    second.train()
    logs = [log for log in second.state.log_history if "loss" in log]
    assert logs[0]["loss"] == pytest.approx(0.5, rel=1e-5) and logs[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert math.isfinite(logs[-1]["loss"])


def test_kl_completion_comes_from_another_prompt(tmp_path):
    tokenizer = tiny_tokenizer()
    options = PreferenceDataOptions(max_length=64)
    unpaired, _ = prepare_unpaired_dataset(tiny_task_dataset("unpaired_preference", num_rows=5), tokenizer, options,
                                           "KTOTrainer")
    completions, kl = unpaired["completion_ids"], unpaired["kl_completion_ids"]
    assert kl == [completions[(i + 1) % 5] for i in range(5)]
    # paired data: chosen rows first, then rejected; rows k and k+3 share a prompt, so the KL completion of a row is
    # the next prompt's completion with the same label, never its own prompt's
    paired, _ = prepare_unpaired_dataset(tiny_task_dataset("preference", num_rows=3), tokenizer, options, "KTOTrainer")
    completions, kl, labels = paired["completion_ids"], paired["kl_completion_ids"], paired["label"]
    assert labels == [True] * 3 + [False] * 3
    assert kl == [completions[(i + 1) % 3 + 3 * (i // 3)] for i in range(6)]
    # the KL sequence of a row is its own prompt followed by the KL completion
    batch = DataCollatorForUnpairedPreference(pad_token_id=0)([unpaired[0]])
    prompt = unpaired[0]["prompt_ids"]
    kl_ids = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
    assert kl_ids == prompt + unpaired[1]["completion_ids"]
    # a completion is the full rendering minus the prompt's, ChatML's "\n" after <|im_end|> included (the reference's)
    assert tokenizer.decode(unpaired[0]["completion_ids"]).endswith("<|im_end|>\n")


def test_moe_aux_loss_is_added_and_logged(tmp_path):
    """Step 1: policy == reference, so the KTO loss is λ·σ(0) = 0.5 per row and the logged loss is 0.5 plus
    coef * aux_loss."""
    trainer = KTOTrainer(model=tiny_moe_model(router_aux_loss_coef=0.01), args=_config(tmp_path),
                         train_dataset=tiny_task_dataset("unpaired_preference", num_rows=8),
                         processing_class=tiny_tokenizer())
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["aux_loss"] > 0
    assert first["loss"] == pytest.approx(0.5 + 0.01 * first["aux_loss"], rel=1e-5)


class _GradCatcher(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_invariance_without_kl_term(tmp_path):
    """The loss is a mean over the rows of the optimiser step: 1x8 and 2x4 give the same gradient (apo_zero_unpaired
    has no per-micro-batch KL estimate, so the equality is exact)."""
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        catcher = _GradCatcher()
        args = _config(tmp_path / f"{batch_size}", loss_type="apo_zero_unpaired", max_steps=1, max_grad_norm=0.0,
                       per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
        trainer = KTOTrainer(model=tiny_model(seed=0, **SMALL), ref_model=tiny_model(seed=1, **SMALL), args=args,
                             train_dataset=tiny_task_dataset("unpaired_preference", num_rows=8),
                             processing_class=tiny_tokenizer(), callbacks=[catcher])
        trainer.train()
        results.append((trainer.state.log_history[0]["loss"], catcher.grads))
    (loss, grads), (loss_ga, grads_ga) = results
    assert loss_ga == pytest.approx(loss, rel=1e-5)
    for name in grads:
        torch.testing.assert_close(grads_ga[name], grads[name], rtol=1e-4, atol=1e-6)
