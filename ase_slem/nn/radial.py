"""Radial encodings: trainable Bessel basis and polynomial cutoff envelope (paper Eq. 8)."""

import math

import torch
from torch import Tensor


class BesselBasis(torch.nn.Module):
    """``B_n(r) = sqrt(2 / r_max) sin(k_n r) / r`` with trainable ``k_n`` (init ``n pi / r_max``)."""

    r_max: float
    prefactor: float

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True):
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / self.r_max)
        k = math.pi / self.r_max * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.k = torch.nn.Parameter(k)
        else:
            self.register_buffer("k", k)

    def forward(self, r: Tensor) -> Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.k * r) / r


class PolynomialEnvelope(torch.nn.Module):
    """Smooth cutoff ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^{p+1} - p(p+1)/2 x^{p+2}``.

    ``x = r / r_max``; ``u = 0`` for ``x >= 1``; ``u`` and its first two derivatives vanish
    at the cutoff.
    """

    r_max: float
    p: float

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, r: Tensor) -> Tensor:
        p = self.p
        x = r / self.r_max
        u = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0)
        )
        return u * (x < 1.0).to(r.dtype)
