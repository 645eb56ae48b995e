"""Radius graph with periodic cell shifts, in the form the SLEM network consumes.

Edge ``e = (i, j, R)`` stands for the pair ``<phi_i(r - tau_i)| . |phi_j(r - tau_j - R)>``
with ``R`` an integer cell shift; its vector is ``r_ij = tau_j + R @ cell - tau_i``.
The edge list is *directed and complete*: every neighbour pair within ``r_cut`` appears in
both directions, ``(i, j, R)`` and ``(j, i, -R)`` (the network needs every neighbour of
every atom).  Operator blocks are predicted for one triangle of *bonds* (``|r_ij| <=
r_bond``): ``i < j``, or ``i == j`` with ``R`` lexicographically positive; the onsite
blocks ``(i, i, 0)`` come from the node features.  ``bond_index[0]`` indexes the bond's
edge and ``bond_index[1]`` its reverse edge.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class AtomGraph:
    """Inputs of :class:`~ase_slem.nn.slem.SLEM` for one structure (torch tensors).

    positions (N, 3) Å; species (N,) index into the model's species list;
    edge_index (2, E); cell_shift (E, 3) integer R; edge_shift (E, 3) Å (``R @ cell``);
    bond_index (2, P) edge ids of each bond and of its reverse.
    """

    positions: Tensor
    species: Tensor
    edge_index: Tensor
    cell_shift: Tensor
    edge_shift: Tensor
    bond_index: Tensor
    cell: Tensor
    pbc: Tensor

    @property
    def bonds(self):
        """(i, j, R) of every predicted bond block as numpy arrays."""
        e = self.bond_index[0]
        return (
            self.edge_index[0, e].numpy(),
            self.edge_index[1, e].numpy(),
            self.cell_shift[e].numpy(),
        )

    def to(self, dtype: torch.dtype) -> "AtomGraph":
        return AtomGraph(
            self.positions.to(dtype), self.species, self.edge_index, self.cell_shift,
            self.edge_shift.to(dtype), self.bond_index, self.cell.to(dtype), self.pbc,
        )


def species_indices(symbols: Sequence[str], model_symbols: Sequence[str]) -> np.ndarray:
    lookup: Dict[str, int] = {s: k for k, s in enumerate(model_symbols)}
    missing = sorted({s for s in symbols if s not in lookup})
    if missing:
        raise ValueError(
            f"element(s) {', '.join(missing)} not in the model's basis "
            f"({', '.join(model_symbols)}); use a model trained for these elements"
        )
    return np.array([lookup[s] for s in symbols], dtype=np.int64)


def build_graph(
    atoms,
    model_symbols: Sequence[str],
    r_cut: float,
    r_bond: Optional[float] = None,
    dtype: Optional[torch.dtype] = None,
    min_distance: float = 0.1,
) -> AtomGraph:
    """Build the directed radius graph of an ``ase.Atoms``.

    ``r_cut``: neighbour cutoff of the network (Å); ``r_bond`` (<= r_cut, default r_cut):
    cutoff of the predicted bond blocks.  Raises ``ValueError`` for unknown elements,
    atoms closer than ``min_distance`` Å, or a periodic direction with a degenerate cell.
    """
    from ase.neighborlist import primitive_neighbor_list

    dtype = dtype or torch.get_default_dtype()
    r_bond = float(r_cut if r_bond is None else r_bond)
    if r_bond > r_cut + 1e-12:
        raise ValueError(f"r_bond ({r_bond}) must not exceed r_cut ({r_cut})")
    species = species_indices(atoms.get_chemical_symbols(), model_symbols)
    pos = np.asarray(atoms.get_positions(), dtype=np.float64)
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    cell = np.asarray(atoms.get_cell(), dtype=np.float64)
    if pbc.any():
        lengths = np.linalg.norm(cell, axis=1)
        if np.any(lengths[pbc] < 1e-8) or abs(np.linalg.det(cell)) < 1e-8:
            raise ValueError("periodic structure without a proper cell: set atoms.cell or pbc=False")
    i, j, S, d = primitive_neighbor_list(
        "ijSd", pbc, cell, pos, float(r_cut), self_interaction=False
    )
    if len(d) and d.min() < min_distance:
        k = int(np.argmin(d))
        raise ValueError(
            f"atoms {i[k]} and {j[k]} are {d[k]:.3g} Å apart (< {min_distance} Å): "
            "overlapping atoms, check the structure"
        )
    # deterministic order: by i, j, shift
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    i, j, S, d = i[order], j[order], S[order], d[order]
    n_edge = len(i)

    # reverse edges: the edge (j, i, -S) of each (i, j, S).  The edges are sorted by (i, j, S);
    # sorted by their reversed keys (j, i, -S) instead they run through the same set of keys,
    # so the t-th edge of that order is the reverse of edge t.
    by_reverse = np.lexsort((-S[:, 2], -S[:, 1], -S[:, 0], i, j)) if n_edge else np.zeros(0, np.int64)
    rev = np.empty(n_edge, dtype=np.int64)
    rev[by_reverse] = np.arange(n_edge)
    if n_edge and not (np.array_equal(i[rev], j) and np.array_equal(j[rev], i) and np.array_equal(S[rev], -S)):
        raise ValueError("neighbour list is not symmetric (an edge without its reverse); report this structure")

    def lex_positive(s):
        return (s[:, 0] > 0) | ((s[:, 0] == 0) & ((s[:, 1] > 0) | ((s[:, 1] == 0) & (s[:, 2] > 0))))

    upper = (i < j) | ((i == j) & lex_positive(S)) if n_edge else np.zeros(0, dtype=bool)
    is_bond = upper & (d <= r_bond)
    fwd = np.nonzero(is_bond)[0]
    bond_index = np.stack([fwd, rev[fwd]]) if n_edge else np.zeros((2, 0), dtype=np.int64)

    shift = S.astype(np.float64) @ cell if n_edge else np.zeros((0, 3))
    return AtomGraph(
        positions=torch.tensor(pos, dtype=dtype),
        species=torch.tensor(species, dtype=torch.long),
        edge_index=torch.tensor(np.stack([i, j]).reshape(2, -1), dtype=torch.long),
        cell_shift=torch.tensor(S.reshape(-1, 3), dtype=torch.long),
        edge_shift=torch.tensor(shift.reshape(-1, 3), dtype=dtype),
        bond_index=torch.tensor(bond_index.reshape(2, -1), dtype=torch.long),
        cell=torch.tensor(cell, dtype=dtype),
        pbc=torch.tensor(pbc),
    )
