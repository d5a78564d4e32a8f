"""GMPO: the loss against hand-worked values and a naive float64 reference; the trainer trains on the tiny model."""

import math

import pytest
import torch

from trl.data.tiny import tiny_task_dataset
from trl.losses.gmpo import gmpo_loss
from trl.models.tiny import tiny_tokenizer

from .helpers import changed, logged, params, small_model


def test_gmpo_hand_worked():
    logps = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    old = torch.tensor([[-1.5, -1.1], [-1.5, -1.1], [-0.4, -1.0]])
    adv = torch.tensor([2.0, -1.0, -1.0])
    losses, metrics = gmpo_loss(logps, old, adv, torch.ones(3, 2), 0.4, 0.4)
    # row 0: δ = [0.5, 0.1], A > 0 takes min(δ, clip δ) = [0.4, 0.1]: -2 · e^{0.25}
    # row 1: same δ, A < 0 takes max(δ, clip δ) = [0.5, 0.1] (no clip on the pessimistic side): +1 · e^{0.3}
    # row 2: δ = [-0.6, 0], A < 0: max(-0.6, -0.4) = -0.4, 0 -> e^{-0.2}
    expected = torch.tensor([-2 * math.exp(0.25), math.exp(0.3), math.exp(-0.2)])
    torch.testing.assert_close(losses, expected, rtol=1e-6, atol=1e-6)
    # token flags: row 0 token 0 (high), row 2 token 0 (low) of 6 tokens
    assert float(metrics["clip_ratio/high"]) == pytest.approx(1 / 6)
    assert float(metrics["clip_ratio/low"]) == pytest.approx(1 / 6)
    assert float(metrics["clip_ratio/region"]) == pytest.approx(2 / 6)


def test_gmpo_matches_naive_float64_with_masks_and_kl():
    torch.manual_seed(0)
    logps = (-torch.rand(4, 5, dtype=torch.float64) * 2).requires_grad_()
    old = logps.detach() + 0.5 * torch.randn(4, 5, dtype=torch.float64)
    ref = logps.detach() + 0.3 * torch.randn(4, 5, dtype=torch.float64)
    adv = torch.tensor([1.5, -0.5, 0.7, -2.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    old = torch.where(mask.bool(), old, float("nan"))  # padding holds garbage: it must not leak
    naive = []
    for i in range(4):
        m = mask[i].bool()
        if not m.any():
            naive.append(logps.sum() * 0)
            continue
        d = logps[i][m] - old[i][m]
        c = d.clamp(-0.3, 0.2)
        t = torch.minimum(d, c) if adv[i] > 0 else torch.maximum(d, c)
        k = (ref[i][m] - logps[i][m]).exp() - (ref[i][m] - logps[i][m]) - 1
        naive.append(-adv[i] * t.mean().exp() + 0.05 * k.mean())
    naive = torch.stack(naive)
    (grad,) = torch.autograd.grad(naive.sum(), logps)
    x = logps.detach().float().requires_grad_()
    losses, metrics = gmpo_loss(x, old.float(), adv.float(), mask, 0.3, 0.2, beta=0.05, ref_logps=ref.float())
    losses.sum().backward()
    torch.testing.assert_close(losses.double(), naive.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), grad, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(x.grad).all()
    m = mask.bool()
    k3 = (ref - logps.detach()).exp() - (ref - logps.detach()) - 1
    assert float(metrics["kl"]) == pytest.approx(float(k3[m].mean()), rel=1e-5)  # a mean over the loss tokens only


def test_gmpo_bad_inputs():
    with pytest.raises(ValueError, match=r"needs ref_logps"):
        gmpo_loss(torch.zeros(1, 1), None, torch.ones(1), torch.ones(1, 1), beta=0.1)
    from trl.experimental.gmpo import GMPOConfig

    with pytest.raises(ValueError, match=r"does not support \['entropy_coef'\]"):
        GMPOConfig(output_dir="/tmp/gmpo-bad", entropy_coef=0.1, report_to="none")
    with pytest.raises(ValueError, match=r"does not support \['delta'\]"):
        GMPOConfig(output_dir="/tmp/gmpo-bad", delta=1.5, report_to="none")
    with pytest.warns(UserWarning, match=r"ignores `loss_type='grpo'`"):
        GMPOConfig(output_dir="/tmp/gmpo-bad", loss_type="grpo", report_to="none")
    with pytest.warns(UserWarning, match=r"ignores `importance_sampling_level='sequence'`"):
        GMPOConfig(output_dir="/tmp/gmpo-bad", importance_sampling_level="sequence", report_to="none")


def test_gmpo_trains(tmp_path):
    from trl.experimental.gmpo import GMPOConfig, GMPOTrainer

    def vowels(completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(sum(ch in "aeiou" for ch in text)) for text in texts]

    model = small_model()
    before = params(model)
    args = GMPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, learning_rate=1e-2, logging_steps=1, report_to="none",
                      save_strategy="no", seed=0, gradient_checkpointing=False, guards=False, beta=0.04)
    assert args.epsilon == 0.4 and args.epsilon_high == 0.4
    trainer = GMPOTrainer(model=model, reward_funcs=vowels, args=args,
                          train_dataset=tiny_task_dataset("prompt_only", "train", num_rows=16),
                          processing_class=tiny_tokenizer())
    ref_before = params(trainer.ref_model)
    trainer.train()
    logs = logged(trainer)
    assert logs and all(math.isfinite(log["loss"]) for log in logs)
    expected = {"reward", "entropy", "kl", "clip_ratio/region_mean", "clip_ratio/high_max", "completions/mean_length"}
    assert expected <= set(logs[0]), set(logs[0])
    assert changed(trainer.model, before), "the policy did not move"
    assert not changed(trainer.ref_model, ref_before), "the reference moved"
