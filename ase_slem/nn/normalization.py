"""Per species-pair scale and bias of the irreps targets (paper Eq. 3).

``o_{c,l} = sigma^{t}_{c,l} o_hat_{c,l} + mu^{t}_{c,l} delta_{l,0}`` where ``t`` is the
species pair (bonds) or species (onsite).  ``sigma`` and ``mu`` are buffers derived from
dataset statistics with :func:`irreps_statistics`; the network predicts ``o_hat``.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .irreps import Irreps


class PairNormalization(torch.nn.Module):
    """Applies ``sigma[t] * x + mu[t]`` per irrep channel (``mu`` only on 0e channels)."""

    def __init__(self, irreps: Irreps, n_types: int):
        super().__init__()
        self.irreps = irreps
        n_ch = irreps.num_channels
        comp = irreps.component_table()
        self.register_buffer("comp_channel", torch.tensor([r[0] for r in comp], dtype=torch.long))
        scalar = torch.zeros(n_ch, dtype=torch.bool)
        for ch, l, p, _, _ in comp:
            if l == 0 and p == 1:
                scalar[ch] = True
        self.register_buffer("scalar_channel", scalar)
        self.register_buffer("sigma", torch.ones(n_types, n_ch))
        self.register_buffer("mu", torch.zeros(n_types, n_ch))

    def _mu(self, pair_type: Tensor) -> Tensor:
        # the bias only ever acts on 0e channels (anything else would break equivariance)
        mu = self.mu * self.scalar_channel.to(self.mu.dtype)
        return mu.index_select(0, pair_type).index_select(1, self.comp_channel)

    def forward(self, x: Tensor, pair_type: Tensor) -> Tensor:
        sig = self.sigma.index_select(0, pair_type).index_select(1, self.comp_channel)
        return x * sig + self._mu(pair_type)

    def inverse(self, y: Tensor, pair_type: Tensor) -> Tensor:
        """``(y - mu) / sigma``: normalised targets for a loss."""
        sig = self.sigma.index_select(0, pair_type).index_select(1, self.comp_channel)
        return (y - self._mu(pair_type)) / sig

    @torch.jit.unused
    def set_statistics(self, mu: Tensor, sigma: Tensor) -> None:
        with torch.no_grad():
            self.mu.copy_(mu * self.scalar_channel.to(mu.dtype))
            self.sigma.copy_(sigma)


def irreps_statistics(
    values: Tensor,
    pair_type: Tensor,
    irreps: Irreps,
    n_types: int,
    component_mask: Optional[Tensor] = None,
    min_sigma: float = 1e-6,
) -> Tuple[Tensor, Tensor]:
    """Mean (0e channels) and scale (all channels) per type and irrep channel.

    ``values``: ``(P, irreps.dim)`` irreps of target blocks; ``pair_type``: ``(P,)``.
    ``sigma`` is the standard deviation for 0e channels and the root mean square per
    component for the others; channels without data (or below ``min_sigma``) get
    ``sigma = 1`` and ``mu = 0``.  ``component_mask[t]`` (optional, ``(n_types, dim)``)
    marks the components a type actually uses.
    """
    comp = irreps.component_table()
    n_ch = irreps.num_channels
    ch_of = torch.tensor([r[0] for r in comp], dtype=torch.long)
    is_scalar = torch.zeros(n_ch, dtype=torch.bool)
    comps_per_ch = torch.zeros(n_ch)
    for ch, l, p, _, _ in comp:
        is_scalar[ch] = l == 0 and p == 1
        comps_per_ch[ch] += 1
    v = values.detach().to(torch.float64)
    mu = torch.zeros(n_types, n_ch, dtype=torch.float64)
    sigma = torch.ones(n_types, n_ch, dtype=torch.float64)
    for t in range(n_types):
        sel = pair_type == t
        n = int(sel.sum())
        if n == 0:
            continue
        vt = v[sel]
        sq = torch.zeros(n, n_ch, dtype=torch.float64).index_add_(1, ch_of, vt * vt)
        sums = torch.zeros(n, n_ch, dtype=torch.float64).index_add_(1, ch_of, vt)
        mean = sums.mean(0)
        mu[t] = torch.where(is_scalar, mean, torch.zeros_like(mean))
        var = sq.mean(0) / comps_per_ch.to(torch.float64) - torch.where(
            is_scalar, mean * mean, torch.zeros_like(mean)
        )
        s = torch.sqrt(var.clamp(min=0.0))
        used = torch.ones(n_ch, dtype=torch.bool)
        if component_mask is not None:
            used = torch.zeros(n_ch, dtype=torch.bool).index_fill_(
                0, ch_of[component_mask[t]], True
            )
        good = used & (s > min_sigma)
        sigma[t] = torch.where(good, s, torch.ones_like(s))
        mu[t] = torch.where(used, mu[t], torch.zeros_like(mu[t]))
    dt = values.dtype
    return mu.to(dt), sigma.to(dt)
