"""Band-energy (orbital-energy) term of the training loss.

Element-wise errors of a few meV in H add up over the hundreds of neighbours a Bloch sum
collects, and they are amplified in the directions where S(k) is nearly singular (for
gth-dzvp silicon its smallest eigenvalue is ~5e-3), so a model with a small block MAE can
still miss bands by tens of meV.  This term trains what users look at: the eigenvalues of
``(H_pred(k), S_DFT(k))`` against those of ``(H_DFT(k), S_DFT(k))`` for the occupied bands
and ``extra`` empty ones, at random k-points of each periodic frame (Gamma for molecules).

The reference eigenvalues come from the frame's full DFT operators (every stored block, not
only those within r_bond), the overlap is the DFT one (the band loss trains H, not S), and
the eigenproblem is solved in float64 through a Cholesky factor of S(k), with
``torch.linalg.eigvalsh`` (whose gradient needs no eigenvalue gaps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..operators import RealSpaceOperator


@dataclass
class BandReference:
    """What one frame needs for the band term.

    hamiltonian, overlap: the frame's DFT operators (eV, 1).
    orbitals: (norb,) positions of the real orbitals in the padded (atom, M) layout, row-major.
    n_bands: bands compared (occupied + extra), counted from the lowest.
    periodic: k-points are drawn at random when true; Gamma only otherwise.
    skip: the lowest ``skip`` bands are left out (core levels of all-electron bases, whose
        errors of a few hundred meV on levels at -270 eV would otherwise dominate the term).
    """

    hamiltonian: RealSpaceOperator
    overlap: RealSpaceOperator
    orbitals: Tensor
    n_bands: int
    periodic: bool
    skip: int = 0


def band_reference(frame, orbital_mask: Tensor, species: Tensor, extra: int, skip: int = 0) -> BandReference:
    """The :class:`BandReference` of a frame (``orbital_mask`` (n_species, M) of the model,
    ``species`` (N,) the frame's species indices); bands ``skip .. n_occ + extra - 1``."""
    mask = orbital_mask.index_select(0, species).reshape(-1)
    orbitals = torch.nonzero(mask).reshape(-1)
    nel = frame.results.get("nelectron")
    if nel is None:
        raise ValueError("band loss: the frame records no electron count (results['nelectron'])")
    n_occ = int(round(float(nel))) // 2
    n_bands = min(n_occ + extra, int(orbitals.numel()))
    if not 0 <= skip < n_bands:
        raise ValueError(f"band loss: cannot leave out the lowest {skip} of the {n_bands} compared bands")
    return BandReference(frame.operators["hamiltonian"], frame.operators["overlap"], orbitals, n_bands,
                         bool(np.any(frame.atoms.pbc)), skip)


def bloch_blocks(onsite: Tensor, bonds: Tensor, bond_i: Tensor, bond_j: Tensor, bond_shift: Tensor,
                 kpts: Tensor, orbitals: Tensor) -> Tensor:
    """O(k) from padded blocks, differentiable.

    onsite (N, M, M), bonds (P, M, M): blocks <i,0|O|j,R> of one triangle (i < j, or i == j
    with R lexicographically positive); bond_i, bond_j (P,); bond_shift (P, 3) integer cell
    shifts R; kpts (K, 3) fractional; orbitals (norb,) real orbitals in the padded layout.
    Returns (K, norb, norb) complex128: O(k) = sum_R exp(2 pi i k.R) O(R), Hermitian.
    """
    n, m = onsite.shape[0], onsite.shape[1]
    kk = kpts.shape[0]
    phase = torch.exp(2j * torch.pi * (kpts.to(torch.float64) @ bond_shift.to(torch.float64).T))  # (K, P)
    t = torch.zeros(kk, n, n, m, m, dtype=torch.complex128)
    vals = phase[:, :, None, None] * bonds.to(torch.complex128)[None]  # (K, P, M, M)
    t = t.index_put((torch.arange(kk)[:, None], bond_i[None, :], bond_j[None, :]), vals, accumulate=True)
    diag = torch.arange(n)[None, :]
    half_on = 0.5 * onsite.to(torch.complex128)[None].expand(kk, n, m, m)
    t = t.index_put((torch.arange(kk)[:, None], diag, diag), half_on, accumulate=True)
    t = t.permute(0, 1, 3, 2, 4).reshape(kk, n * m, n * m)
    t = t + t.conj().transpose(1, 2)
    return t.index_select(1, orbitals).index_select(2, orbitals)


def _orthogonalized(h: Tensor, chol: Tensor) -> Tensor:
    """L^-1 H L^-H for the Cholesky factor L of S: (K, n, n) Hermitian, same eigenvalues as (H, S)."""
    a = torch.linalg.solve_triangular(chol, h, upper=False)
    a = torch.linalg.solve_triangular(chol, a.conj().transpose(-1, -2), upper=False)
    return 0.5 * (a + a.conj().transpose(-1, -2))


def generalized_eigvalsh(h: Tensor, s: Tensor) -> Tensor:
    """Eigenvalues of H x = e S x for a batch (K, n, n) of Hermitian H and positive S."""
    return torch.linalg.eigvalsh(_orthogonalized(h, torch.linalg.cholesky(s)))


def random_kpoints(n: int, periodic: bool, rng: np.random.Generator, gamma: bool = False) -> np.ndarray:
    """``n`` uniform fractional k-points (periodic) or Gamma (molecules), shape (n or 1, 3).
    With ``gamma``, the first of the ``n`` is Gamma (the same random numbers are drawn)."""
    if not periodic:
        return np.zeros((1, 3))
    k = rng.uniform(-0.5, 0.5, (n, 3))
    if gamma:
        k[0] = 0.0
    return k


def band_terms(ref: BandReference, onsite: Tensor, bonds: Tensor, bond_i: Tensor, bond_j: Tensor,
               bond_shift: Tensor, kpts: np.ndarray, mixing: bool = False,
               degenerate: float = 1e-3) -> Tuple[Tensor, Optional[Tensor]]:
    """(|e_pred - e_DFT| (eV) of the compared bands at ``kpts``, shape (K, n_bands - skip);
    with ``mixing``, the couplings |<psi_a|H_pred(k)|psi_b>| (eV) between the DFT Bloch states
    a < b of the compared bands whose DFT energies differ by more than ``degenerate`` eV, flat,
    else None).  Both differentiable in the predicted H blocks.

    The couplings vanish when the predicted H(k), restricted to the DFT states of the compared
    bands, is diagonal in them: the band term checks the energies of those states, this one
    that the predicted H does not mix them (the states themselves, their characters and the
    density they give).  Pairs within a degenerate level are left out (any rotation of
    degenerate states is as good)."""
    k = torch.as_tensor(kpts, dtype=torch.float64)
    s_k = torch.as_tensor(ref.overlap.bloch(kpts).reshape(len(kpts), ref.overlap.norb, -1))
    h_ref = torch.as_tensor(ref.hamiltonian.bloch(kpts).reshape(len(kpts), ref.hamiltonian.norb, -1))
    chol = torch.linalg.cholesky(s_k)
    sel = slice(ref.skip, ref.n_bands)
    with torch.no_grad():
        a_ref = _orthogonalized(h_ref, chol)
        if mixing:
            e_ref, vec_ref = torch.linalg.eigh(a_ref)
            vec_ref = vec_ref[:, :, sel]
        else:
            e_ref = torch.linalg.eigvalsh(a_ref)
        e_ref = e_ref[:, sel]
    a = _orthogonalized(bloch_blocks(onsite, bonds, bond_i, bond_j, bond_shift, k, ref.orbitals), chol)
    err = (torch.linalg.eigvalsh(a)[:, sel] - e_ref).abs()
    if not mixing:
        return err, None
    m = vec_ref.conj().transpose(1, 2) @ a @ vec_ref  # (K, nb, nb): H_pred in the DFT states
    nb = m.shape[1]
    upper = torch.triu(torch.ones(nb, nb, dtype=torch.bool), diagonal=1)
    gap = (e_ref[:, :, None] - e_ref[:, None, :]).abs()
    keep = upper[None] & (gap > degenerate)
    return err, m.abs()[keep]


def band_errors(ref: BandReference, onsite: Tensor, bonds: Tensor, bond_i: Tensor, bond_j: Tensor,
                bond_shift: Tensor, kpts: np.ndarray) -> Tensor:
    """|e_pred - e_DFT| (eV) of the compared bands at ``kpts``: (K, n_bands - skip), differentiable
    in the predicted H blocks."""
    return band_terms(ref, onsite, bonds, bond_i, bond_j, bond_shift, kpts)[0]


def batch_band_terms(refs: Sequence[BandReference], outputs, batch, nk: int,
                     rng: Optional[np.random.Generator], mixing: bool = False,
                     gamma: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """(mean |band error| (eV), mean |coupling| of the DFT states (eV) or None) over the frames
    of a (collated) batch (see :func:`band_terms`).

    ``batch`` carries ``n_atoms`` and ``n_bonds`` per frame (frames are consecutive in the
    collated tensors); ``rng`` draws the k-points (None: a fixed seed, for validation);
    ``gamma`` makes Gamma one of each periodic frame's ``nk`` k-points.  When the batch carries a
    Hamiltonian baseline H0 (``batch.baseline``), the outputs are H - H0 and H0 is added back.
    """
    rng = rng if rng is not None else np.random.default_rng(12345)
    onsite, bonds = outputs["hamiltonian_onsite"], outputs["hamiltonian_bond"]
    if batch.baseline is not None:  # the network predicts H - H0
        onsite, bonds = onsite + batch.baseline[0], bonds + batch.baseline[1]
    errs: List[Tensor] = []
    mixes: List[Tensor] = []
    a0 = b0 = 0
    for ref, na, nb in zip(refs, batch.n_atoms, batch.n_bonds):
        k = random_kpoints(nk, ref.periodic, rng, gamma)
        err, mix = band_terms(ref, onsite[a0:a0 + na], bonds[b0:b0 + nb], batch.bond_i[b0:b0 + nb] - a0,
                              batch.bond_j[b0:b0 + nb] - a0, batch.bond_shift[b0:b0 + nb], k, mixing)
        errs.append(err.reshape(-1))
        if mix is not None:
            mixes.append(mix)
        a0 += na
        b0 += nb
    band = torch.cat(errs).mean()
    if not mixing:
        return band, None
    mix_all = torch.cat(mixes) if mixes else band.new_zeros(0)
    return band, (mix_all.mean() if mix_all.numel() else band.new_zeros(()))

