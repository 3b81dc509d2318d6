"""Projection MLPs: pooled feature [B, F] -> embedding [B, out_dim] (not normalised).

The embedding only feeds the sample-sample contrast; the classifier (the class
centers) reads the pooled feature, not this output (docs/method.md#projection-heads).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

__all__ = ["PaCoProjection", "GPaCoProjection"]


class PaCoProjection(nn.Sequential):
    """PaCo's head: Linear(in, hidden) - BatchNorm1d - ReLU - Linear(hidden, out).

    ``hidden_dim`` defaults to ``in_dim`` (2048->2048->128 on ResNet-50, 64->64->32 on CIFAR).
    """

    def __init__(self, in_dim: int, hidden_dim: Optional[int] = None, out_dim: int = 128) -> None:
        hidden = hidden_dim or in_dim
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:  # [B, in_dim] -> [B, out_dim]
        return super().forward(x)


class GPaCoProjection(nn.Sequential):
    """GPaCo's head: Linear - ReLU - Linear - ReLU - Linear, no BatchNorm.

    ``hidden_dim`` defaults to ``in_dim`` (2048->2048->2048->128 on ResNet-50).
    """

    def __init__(self, in_dim: int, hidden_dim: Optional[int] = None, out_dim: int = 128) -> None:
        hidden = hidden_dim or in_dim
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:  # [B, in_dim] -> [B, out_dim]
        return super().forward(x)
