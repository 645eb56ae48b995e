"""Checks of orbital order/sign conventions on real operators (used by the tests/test_io_* files).

Two independent physical checks of an operator already converted to our (e3nn) order:

* space-group covariance: for every operation g = (W, t) of the crystal (spglib), with
  Cartesian rotation Q and atom map i -> g(i), i.e. W x_i + t = x_{g(i)} + L_i,
      O(g(i), g(j), W R + L_j - L_i) = D(Q) O(i, j, R) D(Q)^T,
  D the block-diagonal e3nn Wigner matrices Irrep(l, (-1)^l).D_from_matrix(Q) of the shells.
  A wrong m-order or sign for some l breaks it -- unless the error commutes with every
  operation (e.g. flipping all odd-m signs is the rotation C2z, which commutes with D3h/C3v).
* two-centre covariance of the overlap: an s orbital of atom i against an l shell of atom j
  at separation d gives a row S[s, shell] = f(|d|) Y_l(d_hat) (real spherical harmonics in
  e3nn order).  This catches what symmetry cannot (odd-m signs in hexagonal layers).

Both use e3nn (torch) and spglib only here, in the tests, independent of ase_slem.basis.
"""
from __future__ import annotations

import warnings

import numpy as np
import spglib
import torch
from e3nn import o3
from scipy.linalg import block_diag

from ase_slem import RealSpaceOperator


def wigner_atom(shells, Q: np.ndarray) -> np.ndarray:
    q = torch.tensor(np.asarray(Q), dtype=torch.float64)
    per_l = {l: o3.Irrep(l, (-1) ** l).D_from_matrix(q).numpy() for l in set(shells)}
    return block_diag(*[per_l[l] for l in shells])


def symmetry_operations(atoms, symprec: float = 1e-4):
    """[(W (3,3) int, Q (3,3) Cartesian, atom map g (natoms,), lattice shifts L (natoms, 3))]."""
    frac = atoms.get_scaled_positions()
    with warnings.catch_warnings():  # spglib 2.x deprecation notice about its error handling
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = spglib.get_symmetry_dataset((atoms.cell[:], frac, atoms.numbers), symprec=symprec)
    A = np.array(atoms.cell[:])
    out = []
    for W, t in zip(ds.rotations, ds.translations):
        new = frac @ W.T + t
        diff = new[:, None, :] - frac[None, :, :]
        match = np.all(np.abs(diff - np.round(diff)) < 10 * symprec, axis=2)
        assert np.all(match.sum(axis=1) == 1)
        g = match.argmax(axis=1)
        out.append((W, A.T @ W @ np.linalg.inv(A.T), g, np.round(new - frac[g]).astype(int)))
    return out, ds.international


def symmetry_residuals(atoms, op: RealSpaceOperator, symprec: float = 1e-4) -> tuple[np.ndarray, str]:
    """Largest |O(g i, g j, g R) - D O(i, j, R) D^T| for each operation, and the space group."""
    ops, group = symmetry_operations(atoms, symprec)
    shells = [op.basis.shells(s) for s in atoms.get_chemical_symbols()]
    blocks = list(op.iter_blocks())
    res = []
    for W, Q, g, L in ops:
        per_element = {s: wigner_atom(s, Q) for s in set(shells)}
        D = [per_element[s] for s in shells]
        worst = 0.0
        for i, j, R, b in blocks:
            R2 = W @ np.asarray(R) + L[j] - L[i]
            worst = max(worst, float(np.abs(op.block(g[i], g[j], R2) - D[i] @ b @ D[j].T).max()))
        res.append(worst)
    return np.array(res), group


def overlap_alignment(atoms, S: RealSpaceOperator, min_norm: float = 1e-3) -> dict[int, float]:
    """Per l >= 1: largest 1 - |cos| between rows S[s, l-shell] and Y_l(d) over all pairs."""
    symbols = atoms.get_chemical_symbols()
    A, pos = np.array(atoms.cell[:]), atoms.positions
    worst: dict[int, float] = {}
    for i, j, R, b in S.iter_blocks():
        d = pos[j] + np.asarray(R) @ A - pos[i]
        if np.linalg.norm(d) < 1e-6:
            continue
        si, sj = S.basis.shells(symbols[i]), S.basis.shells(symbols[j])
        oi = np.concatenate([[0], np.cumsum([2 * l + 1 for l in si])])
        oj = np.concatenate([[0], np.cumsum([2 * l + 1 for l in sj])])
        for a in (k for k, l in enumerate(si) if l == 0):
            for c, l in enumerate(sj):
                row = b[oi[a], oj[c] : oj[c + 1]]
                if l == 0 or np.linalg.norm(row) < min_norm:
                    continue
                y = o3.spherical_harmonics(l, torch.tensor(d), normalize=True).numpy()
                cos = abs(row @ y) / np.linalg.norm(row) / np.linalg.norm(y)
                worst[l] = max(worst.get(l, 0.0), 1.0 - cos)
    return worst


def transform_shells(op: RealSpaceOperator, atoms, l: int, T: np.ndarray) -> RealSpaceOperator:
    """The operator with every l-shell rotated by the (2l+1)^2 matrix T (a deliberate error)."""
    symbols = atoms.get_chemical_symbols()
    mats = {}
    for el in set(symbols):
        mats[el] = block_diag(*[T if s == l else np.eye(2 * s + 1) for s in op.basis.shells(el)])
    i, j, R, blocks = zip(*((a, b, r, mats[symbols[a]] @ blk @ mats[symbols[b]].T)
                            for a, b, r, blk in op.iter_blocks(both_triangles=False)))
    return RealSpaceOperator.from_blocks(op.orbital_counts, i, j, R, blocks, basis=op.basis, symbols=op.symbols)


def odd_m_flip(l: int) -> np.ndarray:
    """In e3nn order: the C2 rotation about the textbook z axis (= flipping odd-m functions)."""
    q = torch.tensor(np.diag([-1.0, -1.0, 1.0]), dtype=torch.float64)
    return o3.Irrep(l, 1).D_from_matrix(q).numpy()


def swap_pair(l: int, a: int = 0, b: int = 1) -> np.ndarray:
    """Permutation exchanging two functions of an l shell."""
    p = np.eye(2 * l + 1)
    p[[a, b]] = p[[b, a]]
    return p
