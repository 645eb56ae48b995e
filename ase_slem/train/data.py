"""Frames -> network inputs and normalized targets; batching; split; dataset statistics.

A :class:`Sample` is one frame turned into the tensors :class:`~ase_slem.nn.slem.SLEM`
consumes (its radius graph) and the target blocks of every learned operator in the network's
padded layout: onsite ``(N, M, M)`` and bonds ``(P, M, M)`` for the graph's bonds (one
triangle, ``|r_ij| <= r_bond``), ``M`` the largest orbital count of an atom, padding zero.
Blocks the data does not have (dropped by the DFT extraction) are zero targets; blocks the data
has beyond ``r_bond`` are not predicted (their largest element is kept in
``Sample.uncovered`` so that the cutoff can be judged).

:func:`collate` joins samples into one disjoint graph (atom and edge indices offset).
:class:`OperatorNormalizer` holds the per species / species-pair scale of the irreps of each
operator (paper Eq. 3, from the training set) and gives the normalized errors the loss is
made of; the same statistics go into the network's normalization layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ase.data import atomic_numbers
from torch import Tensor

from ..io.dataset import Frame
from ..nn.graph import build_graph
from ..nn.normalization import irreps_statistics
from ..nn.wigner_eckart import BlockIrrepsMap
from ..operators import RealSpaceOperator

# the DFT settings that must agree between frames of one training set
SETTINGS_THAT_MUST_AGREE = ("code", "method", "xc", "basis", "pseudo")


class TrainingDataError(ValueError):
    """Frames that cannot be trained on (missing operators, NaN values, mixed bases ...)."""


class BasisMismatchError(TrainingDataError):
    """The basis of a dataset differs from the one a model was built for."""


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def dataset_basis(frames: Sequence[Frame], names: Sequence[str]) -> Dict[str, List[int]]:
    """``{symbol: [l of each shell]}`` shared by all frames, elements sorted by atomic number.

    Raises :class:`BasisMismatchError` when two frames give an element different shells.
    """
    shells: Dict[str, List[int]] = {}
    first: Dict[str, str] = {}
    for fr, name in zip(frames, names):
        for el in sorted(set(fr.atoms.get_chemical_symbols())):
            ls = [int(l) for l in fr.basis.shells(el)]
            if el in shells and shells[el] != ls:
                raise BasisMismatchError(
                    f"frame {name} gives {el} the shells {ls}, but frame {first[el]} gives {shells[el]}: "
                    "all frames of a training set must use one basis"
                )
            shells.setdefault(el, ls)
            first.setdefault(el, name)
    return {el: shells[el] for el in sorted(shells, key=lambda s: atomic_numbers[s])}


def check_basis_matches(model_basis: Dict[str, Sequence[int]], data_basis: Dict[str, Sequence[int]],
                        what: str = "the dataset") -> None:
    """Raise :class:`BasisMismatchError` unless every element of ``data_basis`` is in the model
    with the same shells (same l, same order)."""
    from ..basis import shells_to_string

    for el, ls in data_basis.items():
        if el not in model_basis:
            raise BasisMismatchError(
                f"{what} contains {el}, which the model does not know (model elements: "
                f"{', '.join(model_basis)}); train a new model on this data"
            )
        if [int(l) for l in model_basis[el]] != [int(l) for l in ls]:
            raise BasisMismatchError(
                f"basis of {el} differs: {what} has {shells_to_string(ls)} ({list(ls)}), the model "
                f"{shells_to_string(model_basis[el])} ({list(model_basis[el])}); the data must be "
                "computed in the model's basis"
            )


def check_frames(frames: Sequence[Frame], names: Sequence[str], operators: Sequence[str]) -> None:
    """Every frame has the operators, finite positions and blocks, and DFT settings that agree."""
    if not frames:
        raise TrainingDataError("no frames to train on")
    ref_settings = {k: frames[0].settings.get(k) for k in SETTINGS_THAT_MUST_AGREE}
    for fr, name in zip(frames, names):
        missing = [op for op in operators if op not in fr.operators]
        if missing:
            raise TrainingDataError(
                f"frame {name} has no {', '.join(missing)} (it has {', '.join(fr.operators) or 'none'}); "
                "remove it from data.operators or regenerate the frame"
            )
        if not np.all(np.isfinite(fr.atoms.positions)):
            raise TrainingDataError(f"frame {name} has non-finite atom positions")
        for op in operators:
            for grp in fr.operators[op].groups:
                bad = ~np.isfinite(grp.data)
                if bad.any():
                    k = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
                    o = fr.operators[op]
                    a, b, R = int(o.i[grp.start + k]), int(o.j[grp.start + k]), tuple(int(x) for x in o.R[grp.start + k])
                    raise TrainingDataError(
                        f"frame {name}: {op} has NaN/inf values (first in block ({a}, {b}, R={R})); "
                        "fix or drop this frame"
                    )
        for k, v in ref_settings.items():
            if fr.settings.get(k) != v:
                raise TrainingDataError(
                    f"frame {name} was computed with {k} = {fr.settings.get(k)!r} but frame {names[0]} with "
                    f"{v!r}: one model learns one set of DFT settings"
                )


def split_indices(n: int, split: Sequence[float], seed: int, train_fraction: float = 1.0
                  ) -> Tuple[List[int], List[int], List[int]]:
    """Random train/validation/test frame indices, fixed by ``seed``.

    Counts are ``round(fraction * n)`` for validation and test (at least 1 each when their
    fraction is positive and frames remain) and the training set gets ``split[0]`` of the
    frames, at least one.  ``train_fraction`` keeps the leading part of the shuffled training
    list, so smaller fractions give nested subsets and validation/test do not change.
    """
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_val = int(round(split[1] * n))
    n_test = int(round(split[2] * n))
    if split[1] > 0 and n_val == 0 and n >= 3:
        n_val = 1
    if split[2] > 0 and n_test == 0 and n >= 3:
        n_test = 1
    n_train = min(int(round(split[0] * n)), n - n_val - n_test)
    if n_train < 1:
        raise TrainingDataError(
            f"{n} frame(s) leave no training frame with split {list(split)}: add frames or change data.split"
        )
    val = perm[:n_val]
    test = perm[n_val : n_val + n_test]
    train = perm[n_val + n_test : n_val + n_test + n_train]
    keep = max(1, int(round(train_fraction * len(train))))
    return train[:keep], val, test


def listed_names(names: Sequence[str], most: int = 5) -> str:
    """Frame names for an error message: the first ``most``, then " ..." if there are more."""
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")


def held_out_indices(names: Sequence[str], held_out: dict, train_fraction: float = 1.0
                     ) -> Tuple[List[int], List[int], List[int]]:
    """Train/validation/test indices of ``names`` with the frames ``held_out`` names
    (``{"val": [...], "test": [...]}``) as validation and test and the others, in order, as
    training frames (the leading ``train_fraction`` of them)."""
    where = {nm: k for k, nm in enumerate(names)}
    missing = [nm for part in ("val", "test") for nm in held_out[part] if nm not in where]
    if missing:
        raise TrainingDataError(
            f"data.held_out names frames the dataset does not have: {listed_names(missing)} "
            "(generate them, or drop them from data.held_out)")
    val = [where[nm] for nm in held_out["val"]]
    test = [where[nm] for nm in held_out["test"]]
    taken = set(val) | set(test)
    train = [k for k in range(len(names)) if k not in taken]
    if not train:
        raise TrainingDataError("data.held_out holds out every frame; none is left to train on")
    keep = max(1, int(round(train_fraction * len(train))))
    return train[:keep], val, test


# ---------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One frame (or, after :func:`collate`, several) as network inputs and padded targets.

    positions (N, 3) Å; species (N,) model species index; edge_index (2, E); edge_shift
    (E, 3) Å; bond_index (2, P) edge ids of each bond and its reverse; bond_i, bond_j (P,)
    the bond's atoms; bond_shift (P, 3) their integer cell shifts R; targets: operator -> (onsite (N, M, M), bonds (P, M, M)) in the
    operator's unit (eV for H); uncovered: operator -> largest |element| of the data's blocks
    that are not predicted (beyond r_bond); n_atoms, n_bonds: atoms and bonds of each frame
    in a batch (frames are consecutive); band_refs: each frame's
    :class:`~.band_loss.BandReference` when the band loss is on; baseline: (onsite (N, M, M),
    bonds (P, M, M)) blocks of the Hamiltonian baseline H0 (eV) when the model learns H - H0
    (``targets["hamiltonian"]`` then holds H - H0), else None.
    """

    name: str
    positions: Tensor
    species: Tensor
    edge_index: Tensor
    edge_shift: Tensor
    bond_index: Tensor
    bond_i: Tensor
    bond_j: Tensor
    targets: Dict[str, Tuple[Tensor, Tensor]]
    uncovered: Dict[str, float]
    n_atoms: List[int]
    bond_shift: Tensor = None  # type: ignore[assignment]
    n_bonds: List[int] = field(default_factory=list)
    band_refs: List = field(default_factory=list)
    baseline: Optional[Tuple[Tensor, Tensor]] = None

    @property
    def bond_species(self) -> Tuple[Tensor, Tensor]:
        return self.species.index_select(0, self.bond_i), self.species.index_select(0, self.bond_j)

    def inputs(self) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The five tensors of ``SLEM.forward``."""
        return self.positions, self.species, self.edge_index, self.edge_shift, self.bond_index


def _block_keys(i: np.ndarray, j: np.ndarray, R: np.ndarray, natoms: int) -> np.ndarray:
    """One int64 per (i, j, R); R components in [-512, 512)."""
    R = np.asarray(R, dtype=np.int64).reshape(-1, 3) + 512
    if R.size and (R.min() < 0 or R.max() >= 1024):
        raise TrainingDataError("cell shifts beyond +-512 cells are not supported")
    pair = np.asarray(i, dtype=np.int64) * natoms + np.asarray(j, dtype=np.int64)
    return ((pair * 1024 + R[:, 0]) * 1024 + R[:, 1]) * 1024 + R[:, 2]


def gather_padded_blocks(op: RealSpaceOperator, i: np.ndarray, j: np.ndarray, R: np.ndarray,
                         max_norb: int) -> Tuple[np.ndarray, float]:
    """Blocks (i, j, R) of ``op`` in the stored triangle as a padded ``(P, M, M)`` array.

    Absent blocks are zero.  Also returns the largest |element| of ``op``'s blocks that were
    not asked for (0 when every stored block was used).
    """
    natoms = op.natoms
    out = np.zeros((len(i), max_norb, max_norb))
    query = _block_keys(i, j, R, natoms)
    order = np.argsort(query)
    sq = query[order]
    uncovered = 0.0
    for grp in op.groups:
        keys = _block_keys(op.i[grp.start:grp.stop], op.j[grp.start:grp.stop], op.R[grp.start:grp.stop], natoms)
        loc = np.clip(np.searchsorted(sq, keys), 0, max(len(sq) - 1, 0))
        found = (sq[loc] == keys) if len(sq) else np.zeros(len(keys), bool)
        if found.any():
            out[order[loc[found]], : grp.ni, : grp.nj] = grp.data[found]
        if (~found).any():
            uncovered = max(uncovered, float(np.abs(grp.data[~found]).max()))
    return out, uncovered


def padded_orbital_mask(orbital_counts: Sequence[int], max_norb: int) -> Tensor:
    """``(n_species, max_norb)`` bool: which rows/columns of a padded block are real orbitals
    of each species (``orbital_counts`` in the model's species order)."""
    counts = torch.as_tensor(list(orbital_counts))
    return torch.arange(max_norb)[None, :] < counts[:, None]


def make_sample(frame: Frame, name: str, symbols: Sequence[str], max_norb: int, r_graph: float,
                r_bond: float, operators: Sequence[str], dtype: torch.dtype, baseline: bool = False) -> Sample:
    """Build the graph of ``frame.atoms`` and gather its target blocks.

    ``baseline``: the Hamiltonian target is H - H0 with H0 the frame's ``hamiltonian_baseline``,
    whose blocks the sample keeps (``Sample.baseline``)."""
    atoms = frame.atoms
    try:
        g = build_graph(atoms, symbols, r_graph, r_bond=r_bond, dtype=torch.float64)
    except ValueError as exc:
        raise TrainingDataError(f"frame {name}: {exc}") from None
    n = len(atoms)
    bi, bj, bR = g.bonds
    onsite_idx = np.arange(n)
    targets: Dict[str, Tuple[Tensor, Tensor]] = {}
    uncovered: Dict[str, float] = {}
    i = np.concatenate([onsite_idx, bi])
    j = np.concatenate([onsite_idx, bj])
    R = np.concatenate([np.zeros((n, 3), np.int64), np.asarray(bR, np.int64).reshape(-1, 3)])
    h0 = None
    if baseline:
        if "hamiltonian_baseline" not in frame.operators:
            raise TrainingDataError(f"frame {name} has no Hamiltonian baseline (model.hamiltonian_baseline is set): "
                                    "add it with scripts/add_hamiltonian_baseline.py DATASET")
        h0, _ = gather_padded_blocks(frame.operators["hamiltonian_baseline"], i, j, R, max_norb)
    for op in operators:
        o = frame.operators[op]
        if o.natoms != n:
            raise TrainingDataError(f"frame {name}: {op} has {o.natoms} atoms, the structure {n}")
        blocks, unc = gather_padded_blocks(o, i, j, R, max_norb)
        if op == "hamiltonian" and h0 is not None:
            blocks = blocks - h0
        targets[op] = (torch.tensor(blocks[:n], dtype=dtype), torch.tensor(blocks[n:], dtype=dtype))
        uncovered[op] = unc
    e = g.bond_index[0]
    return Sample(
        name=name,
        positions=g.positions.to(dtype),
        species=g.species,
        edge_index=g.edge_index,
        edge_shift=g.edge_shift.to(dtype),
        bond_index=g.bond_index,
        bond_i=g.edge_index[0].index_select(0, e),
        bond_j=g.edge_index[1].index_select(0, e),
        targets=targets,
        uncovered=uncovered,
        n_atoms=[n],
        bond_shift=torch.as_tensor(np.asarray(bR, np.int64).reshape(-1, 3)),
        n_bonds=[len(bi)],
        baseline=None if h0 is None else (torch.tensor(h0[:n], dtype=dtype), torch.tensor(h0[n:], dtype=dtype)),
    )


def collate(samples: Sequence[Sample]) -> Sample:
    """Several samples as one disjoint graph (indices offset; targets concatenated)."""
    if len(samples) == 1:
        return samples[0]
    atom_off = np.cumsum([0] + [s.positions.shape[0] for s in samples[:-1]])
    edge_off = np.cumsum([0] + [s.edge_index.shape[1] for s in samples[:-1]])
    ops = list(samples[0].targets)
    return Sample(
        name="+".join(s.name for s in samples),
        positions=torch.cat([s.positions for s in samples]),
        species=torch.cat([s.species for s in samples]),
        edge_index=torch.cat([s.edge_index + int(a) for s, a in zip(samples, atom_off)], dim=1),
        edge_shift=torch.cat([s.edge_shift for s in samples]),
        bond_index=torch.cat([s.bond_index + int(e) for s, e in zip(samples, edge_off)], dim=1),
        bond_i=torch.cat([s.bond_i + int(a) for s, a in zip(samples, atom_off)]),
        bond_j=torch.cat([s.bond_j + int(a) for s, a in zip(samples, atom_off)]),
        targets={op: (torch.cat([s.targets[op][0] for s in samples]),
                      torch.cat([s.targets[op][1] for s in samples])) for op in ops},
        uncovered={op: max(s.uncovered[op] for s in samples) for op in ops},
        n_atoms=[n for s in samples for n in s.n_atoms],
        bond_shift=torch.cat([s.bond_shift for s in samples]),
        n_bonds=[n for s in samples for n in s.n_bonds],
        band_refs=[r for s in samples for r in s.band_refs],
        baseline=None if samples[0].baseline is None else (
            torch.cat([s.baseline[0] for s in samples]), torch.cat([s.baseline[1] for s in samples])),
    )


def average_neighbors(samples: Sequence[Sample]) -> float:
    """Directed edges per atom over the samples (the network's N_avg)."""
    n_edge = sum(int(s.edge_index.shape[1]) for s in samples)
    n_atom = sum(int(s.positions.shape[0]) for s in samples)
    return max(n_edge / max(n_atom, 1), 1.0)


# ---------------------------------------------------------------------------------------------
# normalization
# ---------------------------------------------------------------------------------------------
class OperatorNormalizer(torch.nn.Module):
    """Per-type irreps scale of one operator's blocks and the normalized errors of the loss.

    ``mu``/``sigma`` buffers (onsite: per species, ``(n_species, n_channels)``; bonds: per
    ordered species pair ``t = Zi * n_species + Zj``) follow paper Eq. 3 and come from
    :meth:`fit` (scales below 1e-3 of the operator's largest are raised to that floor); the normalized error of a block is ``(irreps(pred) - irreps(target)) /
    sigma``, over the irreps components the pair type actually has.
    """

    def __init__(self, basis: Dict[str, Sequence[int]]):
        super().__init__()
        self.we_node = BlockIrrepsMap(basis, onsite=True)
        self.we_edge = BlockIrrepsMap(basis, onsite=False)
        self.n_species = self.we_edge.n_species
        n_node = self.we_node.irreps.num_channels
        n_edge = self.we_edge.irreps.num_channels
        dt = torch.get_default_dtype()
        self.register_buffer("mu_node", torch.zeros(self.n_species, n_node, dtype=dt))
        self.register_buffer("sigma_node", torch.ones(self.n_species, n_node, dtype=dt))
        self.register_buffer("mu_edge", torch.zeros(self.n_species**2, n_edge, dtype=dt))
        self.register_buffer("sigma_edge", torch.ones(self.n_species**2, n_edge, dtype=dt))
        node_ch = [r[0] for r in self.we_node.irreps.component_table()]
        edge_ch = [r[0] for r in self.we_edge.irreps.component_table()]
        self.register_buffer("node_channel", torch.tensor(node_ch, dtype=torch.long))
        self.register_buffer("edge_channel", torch.tensor(edge_ch, dtype=torch.long))

    @torch.no_grad()
    def fit(self, samples: Sequence[Sample], op: str) -> None:
        """Statistics of ``op`` over ``samples`` (bonds counted in both directions)."""
        ns = self.n_species
        on = torch.cat([s.targets[op][0] for s in samples]).to(self.mu_node.dtype)
        sp = torch.cat([s.species for s in samples])
        irr = self.we_node.to_irreps(on, sp)
        mu, sig = irreps_statistics(irr, sp, self.we_node.irreps, ns, self.we_node.component_mask)
        self.mu_node.copy_(mu)
        self.sigma_node.copy_(_floor(sig))
        bd = torch.cat([s.targets[op][1] for s in samples]).to(self.mu_edge.dtype)
        si = torch.cat([s.bond_species[0] for s in samples])
        sj = torch.cat([s.bond_species[1] for s in samples])
        blocks = torch.cat([bd, bd.transpose(1, 2)])
        t = torch.cat([si * ns + sj, sj * ns + si])
        irr = self.we_edge.to_irreps(blocks, t)
        mu, sig = irreps_statistics(irr, t, self.we_edge.irreps, ns * ns, self.we_edge.component_mask)
        self.mu_edge.copy_(mu)
        self.sigma_edge.copy_(_floor(sig))

    def reference_scale(self) -> Tensor:
        """Median of the fitted channel scales (onsite and bond together), a scalar."""
        sig = torch.cat([self.sigma_node.flatten(), self.sigma_edge.flatten()])
        fitted = sig[sig != 1.0]
        return fitted.median() if fitted.numel() else torch.ones((), dtype=sig.dtype)

    def normalized_errors(self, pred_onsite: Tensor, tgt_onsite: Tensor, species: Tensor,
                          pred_bond: Tensor, tgt_bond: Tensor, species_i: Tensor, species_j: Tensor,
                          sigma_power: float = 0.0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(onsite error ``(N, d_node)``, onsite mask, bond error ``(P, d_edge)``, bond mask).

        ``sigma_power`` p weights each channel's error by ``(sigma / median sigma)**p``: 0 is
        the normalized error of Eq. 3, 1 the error in the operator's units over one common scale
        (so channels of large spread, such as core-valence hoppings, count as much as their
        size in eV)."""
        d_on = self.we_node.to_irreps(pred_onsite - tgt_onsite, species)
        s_on = self.sigma_node.index_select(0, species).index_select(1, self.node_channel)
        m_on = self.we_node.component_mask.index_select(0, species)
        t = species_i * self.n_species + species_j
        d_b = self.we_edge.to_irreps(pred_bond - tgt_bond, t)
        s_b = self.sigma_edge.index_select(0, t).index_select(1, self.edge_channel)
        if sigma_power != 0.0:
            ref = self.reference_scale()
            s_on = s_on.pow(1.0 - sigma_power) * ref.pow(sigma_power)
            s_b = s_b.pow(1.0 - sigma_power) * ref.pow(sigma_power)
        e_on = d_on / s_on
        e_b = d_b / s_b
        m_b = self.we_edge.component_mask.index_select(0, t)
        return e_on, m_on, e_b, m_b


def _floor(sigma: Tensor, relative: float = 1e-3) -> Tensor:
    """Scales of nearly constant channels raised to ``relative`` times the largest fitted
    scale, so that rounding noise of a constant does not dominate the loss."""
    fitted = sigma != 1.0
    if not bool(fitted.any()):
        return sigma
    floor = relative * float(sigma[fitted].max())
    return torch.where(fitted, sigma.clamp(min=floor), sigma)


def normalized_loss_terms(normalizer: OperatorNormalizer, outputs: Dict[str, Tensor], batch: Sample,
                          op: str, onsite_weight: float = 1.0, sigma_power: float = 0.0
                          ) -> Tuple[Tensor, Tensor]:
    """(MAE, MSE) of the normalized irreps errors of ``op`` over onsite and bond blocks.

    ``sigma_power``: see :meth:`OperatorNormalizer.normalized_errors`.

    ``onsite_weight``: weight of an onsite component relative to a bond component (a crystal
    with a 10 Å cutoff has ~100 bonds per atom, so its onsite blocks are ~1 % of the terms).
    """
    si, sj = batch.bond_species
    tgt_on, tgt_b = batch.targets[op]
    e_on, m_on, e_b, m_b = normalizer.normalized_errors(
        outputs[op + "_onsite"], tgt_on, batch.species, outputs[op + "_bond"], tgt_b, si, sj,
        sigma_power)
    w_on = onsite_weight * m_on.to(e_on.dtype)
    w_b = m_b.to(e_b.dtype)
    count = w_on.sum() + w_b.sum()
    count = torch.clamp(count, min=1.0)
    mae = ((e_on.abs() * w_on).sum() + (e_b.abs() * w_b).sum()) / count
    mse = ((e_on.square() * w_on).sum() + (e_b.square() * w_b).sum()) / count
    return mae, mse


def onsite_overlap_means(samples: Sequence[Sample], n_species: int) -> Dict[int, Tensor]:
    """Mean onsite overlap block per species index (for the SK head's onsite constants)."""
    on = torch.cat([s.targets["overlap"][0] for s in samples])
    sp = torch.cat([s.species for s in samples])
    return {a: on[sp == a].mean(0) for a in range(n_species) if bool((sp == a).any())}

