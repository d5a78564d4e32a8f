"""Small pieces the pure loss functions share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _up(x: Tensor) -> Tensor:
    """Upcast half precision to float32; leave float32 / float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _smoothed_logistic(margin: Tensor, eps: float) -> Tensor:
    """The logistic loss under labels flipped with probability ε (cross-entropy to [1−ε, ε]): conservative DPO,
    CPO's sigmoid and SimPO."""
    return -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
