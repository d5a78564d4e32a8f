"""SFT per-token losses. Each maps `(N,)` log-probs of the target tokens to `(N,)` per-token losses.

They are elementwise (token i's loss depends only on logp_i), which lets `trl.ops.fused_token_loss` compute their
gradient chunk by chunk during the forward pass. Normalisation happens in `trl.losses.reduce`.
"""

from __future__ import annotations

import torch


def nll_loss(logps: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood: `-log p(y_t)`.

    Example:
        ```python
        >>> nll_loss(torch.log(torch.tensor([0.5, 0.25])))
        tensor([0.6931, 1.3863])
        ```
    """
    return -logps


def dft_loss(logps: torch.Tensor) -> torch.Tensor:
    """Dynamic Fine-Tuning (https://huggingface.co/papers/2508.05629, eq. 9): `-sg(p(y_t)) * log p(y_t)`.

    Each token's NLL is weighted by its own detached probability, which damps the gradient of unlikely tokens.

    Example:
        ```python
        >>> dft_loss(torch.log(torch.tensor([0.5, 0.25])))  # 0.5*0.6931, 0.25*1.3863
        tensor([0.3466, 0.3466])
        ```
    """
    return -logps.detach().exp() * logps


SFT_LOSSES = {"nll": nll_loss, "dft": dft_loss}
