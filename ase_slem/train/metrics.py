"""Mean absolute errors of predicted operator blocks, per block type.

Block types are ``onsite X`` (the (i, i, 0) blocks of element X) and ``hopping X-Y`` (every
other block between elements X and Y; X-Y and Y-X are one type, the blocks being transposes
of each other).  Errors are averaged over the real matrix elements of the blocks (the padding
of the network's ``(M, M)`` layout is left out).  The Hamiltonian is reported in meV, overlap
and density matrix (dimensionless) as they are.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor

#: unit and factor applied to the operators' native unit (eV for H)
UNITS = {"hamiltonian": ("meV", 1000.0), "overlap": ("1", 1.0), "density_matrix": ("1", 1.0),
         "bands": ("meV", 1000.0),  # bands: the band-energy term of the loss (train.band_weight)
         "electrons": ("1", 1.0)}  # electrons: mean |Tr(D_pred S) - Tr(D S)| per frame (train.electron_weight)


def block_type_names(symbols: Sequence[str]) -> list[str]:
    """``["onsite Si", "hopping Si-Si"]`` for every species and unordered species pair."""
    names = [f"onsite {s}" for s in symbols]
    names += [f"hopping {a}-{b}" for k, a in enumerate(symbols) for b in symbols[k:]]
    return names


class MAEAccumulator:
    """Sums of |error| and element counts per operator and block type, over many batches.

    ``symbols``: the model's species order; ``orbital_mask`` ``(n_species, M)`` bool.
    """

    def __init__(self, symbols: Sequence[str], orbital_mask: Tensor):
        self.symbols = list(symbols)
        self.ns = len(self.symbols)
        self.mask = orbital_mask.bool().cpu()
        self.names = block_type_names(self.symbols)
        # hopping type index of an ordered species pair (a, b)
        idx = torch.zeros(self.ns, self.ns, dtype=torch.long)
        for a in range(self.ns):
            for b in range(self.ns):
                lo, hi = min(a, b), max(a, b)
                idx[a, b] = self.names.index(f"hopping {self.symbols[lo]}-{self.symbols[hi]}")
        self.hop_index = idx
        self.sums: Dict[str, Tensor] = {}
        self.counts: Dict[str, Tensor] = {}

    def add(self, op: str, pred_onsite: Tensor, tgt_onsite: Tensor, species: Tensor,
            pred_bond: Tensor, tgt_bond: Tensor, species_i: Tensor, species_j: Tensor) -> None:
        """Accumulate one batch: onsite ``(N, M, M)`` with ``species`` ``(N,)``, bonds
        ``(P, M, M)`` with the species of their two atoms."""
        nt = len(self.names)
        s = self.sums.setdefault(op, torch.zeros(nt, dtype=torch.float64))
        c = self.counts.setdefault(op, torch.zeros(nt, dtype=torch.float64))
        species, species_i, species_j = species.cpu(), species_i.cpu(), species_j.cpu()
        m_on = self.mask[species]
        w_on = (m_on[:, :, None] & m_on[:, None, :]).to(torch.float64)
        err_on = ((pred_onsite.detach().cpu() - tgt_onsite.cpu()).abs().to(torch.float64) * w_on).sum((1, 2))
        s.index_add_(0, species, err_on)
        c.index_add_(0, species, w_on.sum((1, 2)))
        if pred_bond.shape[0]:
            w_b = (self.mask[species_i][:, :, None] & self.mask[species_j][:, None, :]).to(torch.float64)
            err_b = ((pred_bond.detach().cpu() - tgt_bond.cpu()).abs().to(torch.float64) * w_b).sum((1, 2))
            t = self.hop_index[species_i, species_j]
            s.index_add_(0, t, err_b)
            c.index_add_(0, t, w_b.sum((1, 2)))

    def result(self) -> Dict[str, Dict[str, float]]:
        """``{op: {"unit": ..., "all": mae, "onsite Si": mae, ...}}`` (types without data left out)."""
        out: Dict[str, Dict[str, float]] = {}
        for op, s in self.sums.items():
            unit, factor = UNITS[op]
            c = self.counts[op]
            res: Dict[str, float] = {"unit": unit}  # type: ignore[dict-item]
            res["all"] = float(s.sum() / c.sum()) * factor if c.sum() > 0 else float("nan")
            for k, name in enumerate(self.names):
                if c[k] > 0:
                    res[name] = float(s[k] / c[k]) * factor
            out[op] = res
        return out


def format_metrics(metrics: Dict[str, Dict[str, float]], title: str = "") -> str:
    """Plain-text table of :meth:`MAEAccumulator.result`: one line per operator and type."""
    lines = [title] if title else []
    for op, res in metrics.items():
        unit = res.get("unit", "")
        cells = [f"{k} {v:.4g}" for k, v in res.items() if k != "unit"]
        lines.append(f"  {op} MAE [{unit}]: " + ", ".join(cells))
    return "\n".join(lines)
