"""SFT losses and the reduction, against hand-worked values."""

import math

import pytest
import torch

from trl.losses.reduce import count_loss_tokens, token_mean, token_weight
from trl.losses.sft import SFT_LOSSES, dft_loss, nll_loss


def test_nll_hand_values():
    # p = 0.5 -> -ln 0.5 = 0.693147; p = 0.25 -> 1.386294
    logps = torch.log(torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(nll_loss(logps), torch.tensor([0.693147, 1.386294]), rtol=1e-5, atol=1e-6)


def test_dft_hand_values_and_gradient():
    # loss = -sg(p) * log p: values 0.5*0.693147 = 0.346574 and 0.25*1.386294 = 0.346574;
    # d/dlogp = -sg(p): -0.5 and -0.25 (the weight is not differentiated)
    logps = torch.log(torch.tensor([0.5, 0.25])).requires_grad_()
    loss = dft_loss(logps)
    torch.testing.assert_close(loss, torch.tensor([0.346574, 0.346574]), rtol=1e-5, atol=1e-6)
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([-0.5, -0.25]), rtol=1e-5, atol=1e-6)


def test_registry():
    assert SFT_LOSSES == {"nll": nll_loss, "dft": dft_loss}


def test_count_loss_tokens_skips_position_zero():
    labels = torch.tensor([[7, 8, -100, 9], [-100, -100, 3, -100]])
    assert int(count_loss_tokens(labels)) == 3  # targets are labels[:, 1:]: 8, 9 and 3


def test_token_weight_and_empty_step():
    assert token_weight(8, world_size=2) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no token that enters the loss"):
        token_weight(0)


def test_token_mean_hand_value():
    # (1 + 3 + 5) over a step of 6 tokens on one rank = 1.5
    losses = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert token_mean(losses, mask, num_items_in_batch=6).item() == pytest.approx(1.5)


def test_micro_batches_and_ranks_sum_to_the_full_batch_mean():
    """Cut 4 rows of unequal length into 2 micro-batches x 2 simulated DP ranks: with counts over the whole step
    (and DDP's gradient averaging undone by the world size), the pieces add up to the full-batch token mean; dividing
    each micro-batch by its own count does not."""
    torch.manual_seed(0)
    losses = torch.rand(4, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    full = (losses * mask).sum() / mask.sum()
    n_step = int(mask.sum())
    world = 2
    pieces = [token_mean(losses[i : i + 1], mask[i : i + 1], n_step, world) for i in range(4)]
    # rank r holds rows r and r + 2; DDP averages the ranks' accumulated values
    per_rank = [pieces[r] + pieces[r + 2] for r in range(world)]
    assert (sum(per_rank) / world).item() == pytest.approx(full.item(), rel=1e-6)
    naive = sum((losses[i] * mask[i]).sum() / mask[i].sum() for i in range(4)) / 4
    assert not math.isclose(naive.item(), full.item(), rel_tol=1e-3)
