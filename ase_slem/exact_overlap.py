"""Exact two-centre overlap integrals S(R) of a Gaussian basis, with PySCF.

For a model whose metadata carries Gaussian radial functions (PySCF bases, see
:mod:`ase_slem.train.export`), the overlap needs no network: S_ab(R) = <phi_a(r - tau_a)|
phi_b(r - tau_b - R)> is an analytic integral.  This module computes it block by block in real
space -- no k-mesh, so no aliasing -- for every atom pair (i, j, R) closer than the sum of the two
atoms' orbital cutoffs (where their radial envelopes fall below ``tolerance`` of the peak,
1e-8 by default, so neglected blocks are below ~1e-8).

How: the pairs come from ``ase.neighborlist.neighbor_list`` with per-atom cutoffs; centre atoms
are taken in chunks, and for each chunk one PySCF ``gto.intor_cross('int1e_ovlp', A, B)`` gives
the overlaps between the chunk's atoms (A) and all lattice images its pairs reach (B).  Blocks
are gathered per element pair, converted from PySCF's orbital order to ours (``convention="pyscf"``) and packed
into a :class:`~ase_slem.operators.RealSpaceOperator` (one triangle).  Memory is bounded by the
chunk (``chunk`` centre atoms).

Units: positions Å; the overlap is dimensionless.  Needs PySCF; no torch.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import Bohr

from .basis import Basis
from .io.radial import RadialBasis
from .operators import RealSpaceOperator, _is_upper
from .orbitals import GaussianRadial, truncated_radial_basis

__all__ = ["ExactOverlapError", "pyscf_basis_from_radial", "exact_overlap"]


class ExactOverlapError(ValueError):
    """The basis cannot be integrated exactly (not Gaussian) or the structure does not fit it."""


def pyscf_basis_from_radial(radial: RadialBasis) -> dict[str, list]:
    """PySCF basis input ``{symbol: [[l, [a, c], ...], ...]}`` (bohr units) of Gaussian shells.

    One PySCF shell per radial shell, in the radial basis' order, so PySCF's AO order is ours up
    to the m order inside each shell (the ``"pyscf"`` convention of :mod:`ase_slem.basis`).
    Coefficients refer to normalized primitives, as PySCF expects (it renormalizes the
    contraction; the Å -> bohr factor r^l is common to all primitives of a shell).
    """
    from pyscf import gto

    out: dict[str, list] = {}
    for el, shells in radial.functions.items():
        entries = []
        for k, s in enumerate(shells):
            if not isinstance(s, GaussianRadial):
                raise ExactOverlapError(
                    f"shell {k} of {el} is a tabulated radial function, not a Gaussian: exact overlaps "
                    "need a Gaussian (PySCF) basis; use overlap='model'"
                )
            a = np.asarray(s.exponents, dtype=float) * Bohr**2  # Å^-2 -> bohr^-2
            c = np.asarray(s.coefficients, dtype=float) / gto.gto_norm(s.l, a)
            entries.append([int(s.l)] + [[float(x), float(y)] for x, y in zip(a, c)])
        out[el] = entries
    return out


def _mole(symbols, positions: np.ndarray, basis: Mapping[str, list]):
    """A built PySCF Mole (Å positions) used only for one-electron integrals."""
    from pyscf import gto

    nelec = sum(atomic_numbers[s] for s in symbols)
    return gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, positions)], basis=dict(basis), unit="Angstrom",
                 spin=nelec % 2, cart=False, verbose=0)


def exact_overlap(
    atoms: Atoms,
    radial: RadialBasis,
    *,
    tolerance: float = 1e-8,
    drop_below: float = 0.0,
    chunk: int = 16,
    basis: Basis | None = None,
    r_max: float | None = None,
) -> RealSpaceOperator:
    """Exact overlap S(R) of ``atoms`` in the Gaussian basis ``radial``, in our orbital order.

    Parameters
    ----------
    atoms:
        the structure (Å); periodic along its ``pbc`` axes (cell needed there), else a molecule.
    radial:
        Gaussian radial shells per element (e.g. ``radial_basis_from_dict(meta["basis"]["radial"])``
        or :func:`ase_slem.orbitals.radial_basis_from_pyscf`).
    tolerance:
        an atom's orbitals are taken to end where their envelopes fall below ``tolerance`` of the
        peak; pairs farther apart than the sum of the two radii are not stored.
    drop_below:
        blocks whose largest |element| is at most this are not stored.
    chunk:
        centre atoms per PySCF call (bounds memory).
    basis:
        the :class:`Basis` to attach to the operator (default: the radial basis' own).
    r_max:
        if given (Å), pairs farther apart are not stored either: the range of a model's
        predicted H (its ``r_bond``), so that S has the same blocks as H.  Diffuse bases reach
        much farther (gth-dzvp silicon at ``tolerance`` 1e-8: five times the blocks of 10 Å),
        and the cut costs little (silicon: see the model card's 10 Å floor).

    Returns a :class:`RealSpaceOperator` (``periodic`` if any axis is) named ``"overlap"``.
    """
    from ase.neighborlist import neighbor_list
    from pyscf import gto

    symbols = atoms.get_chemical_symbols()
    missing = sorted(set(symbols) - set(radial.functions))
    if missing:
        raise ExactOverlapError(
            f"the basis has no functions for {', '.join(missing)} (it covers {', '.join(radial.elements)})"
        )
    if len(atoms) == 0:
        raise ExactOverlapError("the structure has no atoms")
    cut = truncated_radial_basis(radial, tolerance) if tolerance is not None else radial
    pyscf_basis = pyscf_basis_from_radial(radial)  # integrals with the full Gaussians
    bas = basis if basis is not None else radial.basis()
    counts = bas.orbital_counts(symbols)
    conv = {el: bas.converter(el, "pyscf") for el in set(symbols)}
    periodic = bool(np.any(atoms.pbc))
    radius = np.array([cut.cutoff(s) for s in symbols])
    if r_max is None:
        i, j, S = neighbor_list("ijS", atoms, radius, self_interaction=True)
    else:
        if r_max <= 0:
            raise ExactOverlapError(f"r_max must be a positive distance in Å, got {r_max}")
        i, j, S, d = neighbor_list("ijSd", atoms, float(min(r_max, 2 * radius.max())), self_interaction=True)
        near = d < radius[i] + radius[j]
        i, j, S = i[near], j[near], S[near]
    keep = _is_upper(i, j, S)
    i, j, S = i[keep], j[keep], S[keep]
    order = np.lexsort((j, i))
    i, j, S = i[order], j[order], S[order].astype(np.int64)
    pos = atoms.positions
    cell = np.asarray(atoms.cell[:], dtype=float)
    syms = np.array(symbols)

    bi, bj, bR, blocks = [], [], [], []
    for start in range(0, len(atoms), max(int(chunk), 1)):
        centres = np.arange(start, min(start + chunk, len(atoms)))
        sel = np.flatnonzero((i >= centres[0]) & (i <= centres[-1]))
        if not len(sel):
            continue
        # the lattice images these pairs reach, each once
        partners, inverse = np.unique(np.column_stack([j[sel], S[sel]]), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        mol_a = _mole(syms[centres], pos[centres], pyscf_basis)
        mol_b = _mole(syms[partners[:, 0]], pos[partners[:, 0]] + partners[:, 1:] @ cell, pyscf_basis)
        s_ab = gto.intor_cross("int1e_ovlp", mol_a, mol_b)
        off_a = np.concatenate([[0], np.cumsum(counts[centres])])[i[sel] - centres[0]]
        off_b = np.concatenate([[0], np.cumsum(counts[partners[:, 0]])])[inverse]
        # one gather and one basis rotation per element pair
        pair_key = np.char.add(np.char.add(syms[i[sel]], "|"), syms[j[sel]])
        for key in np.unique(pair_key):
            g = np.flatnonzero(pair_key == key)
            el_i, el_j = key.split("|")
            na, nb = counts[i[sel[g[0]]]], counts[j[sel[g[0]]]]
            rows = off_a[g][:, None, None] + np.arange(na)[None, :, None]
            cols = off_b[g][:, None, None] + np.arange(nb)[None, None, :]
            blk = conv[el_i] @ s_ab[rows, cols] @ conv[el_j].T
            if drop_below:
                big = np.abs(blk).max(axis=(1, 2)) > drop_below
                blk, g = blk[big], g[big]
            blocks.extend(blk)
            bi.append(i[sel[g]])
            bj.append(j[sel[g]])
            bR.append(S[sel[g]])
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape, np.int64)  # noqa: E731
    # blocks are already in the canonical triangle, and onsite blocks are symmetric integrals
    return RealSpaceOperator._pack(counts, cat(bi, 0), cat(bj, 0), cat(bR, (0, 3)), blocks, periodic=periodic,
                                   name="overlap", basis=bas, symbols=symbols)
