"""Gradient reversal (Ganin & Lempitsky): identity forward, -coeff * grad backward."""

from __future__ import annotations

import math

import torch


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    return _GradientReversal.apply(x, coeff)


def grl_coefficient(progress: float, gamma: float = 10.0, max_value: float = 1.0) -> float:
    """DANN's warm-up 2 / (1 + exp(-gamma p)) - 1, from 0 at p = 0 towards ``max_value``.

    p may pass 1 when the warm-up has a fixed horizon shorter than the run (TLlib's
    ``WarmStartGradientReverseLayer``); the coefficient keeps approaching ``max_value``.
    """
    p = max(progress, 0.0)
    return max_value * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
