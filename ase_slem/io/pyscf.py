"""PySCF as a source of operators: molecules (RKS) and crystals (KRKS) in our convention.

Everything returned is in ASE units and our orbital order: H in eV (``ase.units.Hartree`` per
Hartree), S dimensionless, D spin-summed (Tr(D S) = electron count), operators as
:class:`~ase_slem.operators.RealSpaceOperator` with the basis from :meth:`Basis.from_pyscf`.
PySCF is imported inside the functions, so importing this module is cheap.

Molecules: :func:`molecular_operators` runs a restricted Kohn–Sham calculation.  The Hamiltonian
returned is the Fock matrix whose eigenpairs are PySCF's final ``mo_energy``/``mo_coeff``,
H = S C diag(e) C^T S, and D = C diag(n) C^T is built from the same orbitals, so D is exactly the
ground-state density matrix of H (their difference to ``get_fock(dm)`` is the SCF tolerance).

Crystals: PySCF works with Bloch matrices on a k-mesh, X(k) = sum_R exp(i k.R) X(R) (AO pairs
<mu, 0| X |nu, R>, our convention).  :func:`realspace_from_kmesh` inverts the Bloch sum on a
Gamma-centred n1 x n2 x n3 mesh: X(g) = 1/N sum_k exp(-2 pi i k.g) X(k) for g in the
Born–von Karman (BvK) supercell, and each atom-pair block X_ab(g) is given to the lattice vector
R = g + n * L (L integer) that makes the pair distance |tau_b + R.A - tau_a| smallest (the
minimal image); when several images tie (within ``tie_tolerance``), the block is split evenly
among them.  The result reproduces X(k) exactly at the mesh points.  Off the mesh it is exact
only if the true X(R) vanishes beyond half the BvK supercell: Gaussian tails that reach further
are aliased, which is why :func:`periodic_operators` can build the Fock matrix on a denser mesh
(``dense_kmesh``) from the density converged on the SCF mesh -- the same non-self-consistent
construction ``mf.get_bands`` uses (hcore + veff of the converged density at the band k-points).
Block cutoff: blocks whose largest |element| is at most ``drop_below`` (in the operator's unit),
or of atom pairs farther apart than ``max_distance`` (Å), are not stored; the defaults (0, None)
keep every block the transform produces (one per atom pair and BvK vector, plus tied images).
"""
from __future__ import annotations

import time
from itertools import product
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from ..basis import Basis
from ..operators import RealSpaceOperator
from .dataset import Frame

__all__ = [
    "atoms_to_mole",
    "atoms_to_cell",
    "molecular_operators",
    "gamma_centred_mesh",
    "kmesh_to_realspace",
    "realspace_from_kmesh",
    "minimal_image_shifts",
    "run_krks",
    "operators_from_krks",
    "periodic_operators",
]


class PySCFInputError(ValueError):
    """Input that the PySCF interface cannot handle (open shells, shifted meshes ...)."""


# ---------------------------------------------------------------------------------------------
# structures
# ---------------------------------------------------------------------------------------------
def atoms_to_mole(atoms: Atoms, basis: str | dict = "def2-svp", *, charge: int = 0, spin: int = 0,
                  verbose: int = 0, **kwargs):
    """A built PySCF ``Mole`` (spherical AOs) for ``atoms`` (Å)."""
    from pyscf import gto

    if len(atoms) == 0:
        raise PySCFInputError("the structure has no atoms")
    mol = gto.Mole()
    mol.atom = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)]
    mol.unit = "Angstrom"
    mol.basis = basis
    mol.charge = charge
    mol.spin = spin
    mol.cart = False
    mol.verbose = verbose
    for k, v in kwargs.items():
        setattr(mol, k, v)
    return mol.build()


def atoms_to_cell(atoms: Atoms, basis: str | dict = "gth-dzvp-molopt-sr", pseudo: str | dict | None = "gth-pbe",
                  *, ke_cutoff: float | None = None, verbose: int = 0, **kwargs):
    """A built PySCF ``Cell`` for a periodic ``atoms`` (Å); ``ke_cutoff`` in Hartree."""
    from pyscf.pbc import gto

    if not atoms.pbc.all():
        raise PySCFInputError(
            f"periodic_operators needs a structure periodic along all three axes (pbc={atoms.pbc.tolist()}); "
            "use molecular_operators for molecules"
        )
    if abs(atoms.cell.volume) < 1e-6:
        raise PySCFInputError("the structure has no cell (volume 0); set atoms.cell")
    cell = gto.Cell()
    cell.atom = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)]
    cell.a = np.asarray(atoms.cell[:], dtype=float)
    cell.unit = "Angstrom"
    cell.basis = basis
    if pseudo is not None:
        cell.pseudo = pseudo
    if ke_cutoff is not None:
        cell.ke_cutoff = ke_cutoff
    cell.cart = False
    cell.verbose = verbose
    for k, v in kwargs.items():
        setattr(cell, k, v)
    return cell.build()


def _atoms_from_pyscf(mol) -> Atoms:
    """ase.Atoms of a PySCF Mole/Cell (Å)."""
    symbols = [mol.atom_pure_symbol(a) for a in range(mol.natm)]
    pos = mol.atom_coords() * Bohr
    if hasattr(mol, "lattice_vectors"):
        return Atoms(symbols, positions=pos, cell=mol.lattice_vectors() * Bohr, pbc=True)
    return Atoms(symbols, positions=pos, pbc=False)


def _pyscf_version() -> str:
    import pyscf

    return str(pyscf.__version__)


# ---------------------------------------------------------------------------------------------
# molecules
# ---------------------------------------------------------------------------------------------
def molecular_operators(
    mol_or_atoms,
    xc: str = "pbe",
    basis: str | dict = "def2-svp",
    *,
    charge: int = 0,
    conv_tol: float = 1e-11,
    grids_level: int | None = None,
    density_fit: bool = False,
    verbose: int = 0,
    return_mf: bool = False,
    scf_options: dict | None = None,
):
    """Restricted Kohn–Sham H (eV), S and spin-summed D of a closed-shell molecule.

    Parameters
    ----------
    mol_or_atoms:
        an ``ase.Atoms`` (positions in Å; ``basis`` and ``charge`` apply) or a built PySCF
        ``Mole`` (its own basis and charge are used).
    xc:
        exchange-correlation functional in PySCF/libxc notation.
    grids_level:
        PySCF DFT grid level (default: PySCF's).
    return_mf:
        also return the converged PySCF ``RKS`` object.
    scf_options:
        attributes set on the SCF object before it runs (e.g. ``{"damp": 0.5, "level_shift": 0.2}``).

    Returns
    -------
    Frame (and the RKS object if ``return_mf``) with ``operators`` ``hamiltonian``, ``overlap``, ``density_matrix`` (R = 0 blocks
    only), ``results`` with ``energy`` (eV), ``orbital_energies`` (eV), ``nelectron``,
    ``converged``, ``homo``/``lumo`` (eV), and the settings used.
    """
    from pyscf import dft

    if isinstance(mol_or_atoms, Atoms):
        atoms = mol_or_atoms
        if atoms.pbc.any():
            raise PySCFInputError(
                "molecular_operators got a periodic structure; use periodic_operators, or set atoms.pbc = False"
            )
        mol = atoms_to_mole(atoms, basis, charge=charge, verbose=verbose)
    else:
        mol = mol_or_atoms
        atoms = _atoms_from_pyscf(mol)
    if mol.spin != 0:
        raise PySCFInputError(
            f"only closed-shell molecules are supported (2S = {mol.spin}); spin-polarized operators are not"
        )
    t0 = time.perf_counter()
    mf = dft.RKS(mol)
    mf.xc = xc
    mf.conv_tol = conv_tol
    mf.verbose = verbose
    if grids_level is not None:
        mf.grids.level = grids_level
    if density_fit:
        mf = mf.density_fit()
    _apply_scf_options(mf, scf_options)
    mf.kernel()
    t_scf = time.perf_counter() - t0

    s = mf.get_ovlp()
    c, e, occ = mf.mo_coeff, mf.mo_energy, mf.mo_occ
    if c.shape[0] != c.shape[1]:
        raise PySCFInputError(
            f"PySCF removed {c.shape[0] - c.shape[1]} linearly dependent basis functions; "
            "the Fock matrix is not defined on the full basis: use a less diffuse basis"
        )
    sc = s @ c
    fock = (sc * e) @ sc.T
    dm = (c * occ) @ c.T

    bas = Basis.from_pyscf(mol)
    ops = _molecular_ops(atoms, bas, {"hamiltonian": fock * Hartree, "overlap": s, "density_matrix": dm})
    nocc = int(np.count_nonzero(occ > 0))
    results = {
        "energy": float(mf.e_tot) * Hartree,
        "converged": bool(mf.converged),
        "nelectron": int(mol.nelectron),
        "orbital_energies": (e * Hartree).tolist(),
        "homo": float(e[nocc - 1] * Hartree) if nocc else None,
        "lumo": float(e[nocc] * Hartree) if nocc < len(e) else None,
        "timings": {"scf": t_scf},
    }
    settings = {
        "code": "pyscf",
        "code_version": _pyscf_version(),
        "method": "RKS",
        "xc": xc,
        "basis": mol.basis if isinstance(mol.basis, str) else repr(mol.basis),
        "pseudo": None,
        "charge": int(mol.charge),
        "conv_tol": conv_tol,
        "grids_level": int(mf.grids.level),
        "density_fit": bool(density_fit),
    }
    frame = Frame(atoms, ops, bas, settings, results)
    return (frame, mf) if return_mf else frame


def _molecular_ops(atoms: Atoms, bas: Basis, mats: dict[str, np.ndarray]) -> dict[str, RealSpaceOperator]:
    symbols = atoms.get_chemical_symbols()
    conv = bas.structure_converter(symbols, "pyscf")
    counts = bas.orbital_counts(symbols)
    return {
        name: RealSpaceOperator.from_dense(
            counts, conv @ m @ conv.T, periodic=False, name=name, basis=bas, symbols=symbols
        )
        for name, m in mats.items()
    }


# ---------------------------------------------------------------------------------------------
# k-mesh <-> real space
# ---------------------------------------------------------------------------------------------
def gamma_centred_mesh(kmesh: Sequence[int]) -> np.ndarray:
    """Fractional k-points of a Gamma-centred n1 x n2 x n3 mesh, (N, 3), first axis fastest."""
    n = _mesh_tuple(kmesh)
    g = np.stack(np.meshgrid(*[np.arange(x) for x in n], indexing="ij"), axis=-1)
    g = g.transpose(2, 1, 0, 3).reshape(-1, 3)  # first axis fastest
    return g / np.asarray(n, dtype=float)


def _mesh_tuple(kmesh) -> tuple[int, int, int]:
    n = tuple(int(x) for x in np.ravel(kmesh))
    if len(n) != 3 or min(n) < 1:
        raise PySCFInputError(f"a k-mesh is three positive integers, got {kmesh!r}")
    return n


def _mesh_size(kfrac: np.ndarray) -> tuple[tuple[int, int, int], bool]:
    """Points per axis of a uniform mesh (distinct k_i mod 1) and whether it misses Gamma."""
    k = np.round(np.asarray(kfrac, dtype=float) % 1.0, 8) % 1.0
    n = tuple(len(np.unique(col)) for col in k.T)
    return n, not bool(np.any(np.all(np.abs(k) < 1e-8, axis=1)))


def _grid_indices(kfrac: np.ndarray, kmesh=None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Mesh size and integer grid index (N, 3) of each fractional k of a Gamma-centred mesh."""
    k = np.asarray(kfrac, dtype=float)
    if k.ndim != 2 or k.shape[1] != 3:
        raise PySCFInputError(f"k-points must have shape (nk, 3), got {k.shape}")
    if kmesh is None:
        n = []
        for col in (k % 1.0).T:
            col = np.where(col > 1 - 1e-8, 0.0, col)
            pos = col[col > 1e-8]
            n.append(int(round(1.0 / pos.min())) if len(pos) else 1)
        n = tuple(n)
    else:
        n = _mesh_tuple(kmesh)
    scaled = k * np.asarray(n)
    idx = np.round(scaled)
    if np.abs(scaled - idx).max() > 1e-6:
        raise PySCFInputError(
            f"the k-points are not a Gamma-centred {n[0]}x{n[1]}x{n[2]} mesh (a shifted mesh cannot "
            "be inverted onto integer cell shifts); use a Gamma-centred mesh such as gamma_centred_mesh(n)"
        )
    idx = (idx.astype(np.int64) % np.asarray(n))
    flat = idx[:, 0] + n[0] * (idx[:, 1] + n[1] * idx[:, 2])
    if len(k) != int(np.prod(n)) or len(np.unique(flat)) != len(k):
        raise PySCFInputError(
            f"{len(k)} k-points do not cover a full Gamma-centred {n[0]}x{n[1]}x{n[2]} mesh exactly once "
            f"({int(np.prod(n))} points expected); an inverse Bloch transform needs the whole mesh"
        )
    return n, idx


def realspace_from_kmesh(
    atoms: Atoms,
    orbital_counts: Sequence[int],
    kpts: np.ndarray,
    mats_k: np.ndarray,
    *,
    kmesh: Sequence[int] | None = None,
    drop_below: float = 0.0,
    max_distance: float | None = None,
    tie_tolerance: float = 1e-5,
    hermiticity_tol: float = 1e-6,
    name: str = "operator",
    basis: Basis | None = None,
) -> RealSpaceOperator:
    """Inverse Bloch transform of X(k) on a full Gamma-centred mesh into minimal-image X(R).

    Parameters
    ----------
    atoms:
        the periodic structure (Å); its cell and positions define the minimal images.
    orbital_counts:
        orbitals per atom, (natoms,), in the row order of ``mats_k``.
    kpts:
        (N, 3) fractional k-points covering a Gamma-centred mesh once each (any order).
    mats_k:
        (N, norb, norb) complex X(k) = sum_R exp(2 pi i k.R) X(R), Hermitian, with
        X(-k) = conj(X(k)) (real orbitals).
    kmesh:
        the mesh size, if it cannot be read off ``kpts`` (it usually can).
    drop_below:
        blocks whose largest |element| is at most this are not stored (unit of X).
    max_distance:
        blocks of atom pairs farther apart than this (Å) are not stored (default: keep all).
    tie_tolerance:
        images whose pair distances differ by less than this (Å) share a block equally.

    Returns a :class:`RealSpaceOperator` with X(k) reproduced exactly at the mesh points.
    """
    counts = np.asarray(orbital_counts, dtype=np.int64)
    mats = np.asarray(mats_k)
    norb = int(counts.sum())
    if mats.ndim != 3 or mats.shape[1:] != (norb, norb) or len(mats) != len(kpts):
        raise PySCFInputError(
            f"k-space matrices have shape {mats.shape}; expected ({len(kpts)}, {norb}, {norb}) for "
            f"{len(kpts)} k-points and {norb} orbitals"
        )
    if len(counts) != len(atoms):
        raise PySCFInputError(f"orbital_counts has {len(counts)} entries for {len(atoms)} atoms")
    n, idx = _grid_indices(kpts, kmesh)
    nvec = np.asarray(n)
    grid = np.zeros(n + (norb, norb), dtype=complex)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = mats
    xg = np.fft.fftn(grid, axes=(0, 1, 2)) / len(kpts)  # X(g) = 1/N sum_k e^{-2 pi i k.g} X(k)
    scale = max(float(np.abs(xg).max()), 1e-300)
    imag = float(np.abs(xg.imag).max())
    if imag > 1e-6 * scale + 1e-12:
        raise PySCFInputError(
            f"{name}: the inverse Bloch transform has an imaginary part up to {imag:.3g} (largest "
            f"element {scale:.3g}); X(-k) must equal conj(X(k)) -- check the mesh is complete and the "
            "matrices Hermitian"
        )
    xg = xg.real.reshape(-1, norb, norb)  # C order over (g1, g2, g3), as minimal_image_shifts
    ia, ib, ig, shifts, weight, dist = minimal_image_shifts(atoms, n, tie_tolerance=tie_tolerance)
    if max_distance is not None:
        near = dist <= max_distance
        ia, ib, ig, shifts, weight = ia[near], ib[near], ig[near], shifts[near], weight[near]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    bi, bj, bR, blocks = [], [], [], []
    for na in np.unique(counts):
        for nb in np.unique(counts):
            sel = np.flatnonzero((counts[ia] == na) & (counts[ib] == nb))
            if not len(sel):
                continue
            rows = offsets[ia[sel]][:, None, None] + np.arange(na)[None, :, None]
            cols = offsets[ib[sel]][:, None, None] + np.arange(nb)[None, None, :]
            sub = xg[ig[sel][:, None, None], rows, cols] * weight[sel][:, None, None]  # (M, na, nb)
            keep = np.abs(sub).max(axis=(1, 2), initial=0.0) > drop_below
            bi.append(ia[sel][keep])
            bj.append(ib[sel][keep])
            bR.append(shifts[sel][keep])
            blocks.extend(sub[keep])
    return RealSpaceOperator.from_blocks(
        counts,
        np.concatenate(bi),
        np.concatenate(bj),
        np.concatenate(bR),
        blocks,
        periodic=True,
        hermiticity_tol=hermiticity_tol,
        name=name,
        basis=basis,
        symbols=atoms.get_chemical_symbols(),
    )


def minimal_image_shifts(atoms: Atoms, kmesh: Sequence[int], *, tie_tolerance: float = 1e-5, search: int = 2):
    """Minimal images of every atom pair and Born–von Karman vector of an n1 x n2 x n3 supercell.

    For atoms a, b and each g (0 <= g_i < n_i, in the order of a C-ordered meshgrid over
    (g1, g2, g3)), the cell shifts R = g + n * L (L integer) with the smallest pair distance
    |tau_b + R.A - tau_a|; all R within ``tie_tolerance`` (Å) of the smallest are returned,
    each with weight 1 / (number of ties).  L is searched within ``search`` of the image
    nearest the wrapped displacement, which covers reduced and moderately skewed cells
    (positions may lie outside the cell).

    Returns ``a, b, g_index, R (M, 3), weight (M,), distance (M,)`` (Å).
    """
    nvec = np.asarray(_mesh_tuple(kmesh))
    lattice = np.asarray(atoms.cell[:], dtype=float)
    frac = np.linalg.solve(lattice.T, atoms.positions.T).T  # unwrapped fractional positions
    g = np.stack(np.meshgrid(*[np.arange(x) for x in nvec], indexing="ij"), axis=-1).reshape(-1, 3)
    cands = np.array(list(product(range(-search, search + 1), repeat=3)))
    out = []
    for a in range(len(atoms)):  # one atom at a time bounds the memory; vectorized over b, g, L
        dfrac = frac - frac[a]  # (B, 3)
        base = np.round((-dfrac[:, None, :] - g[None]) / nvec)  # (B, N, 3): image nearest a
        shifts = g[None, :, None, :] + nvec * (base[:, :, None, :] + cands[None, None])  # (B, N, C, 3)
        dist = np.linalg.norm((dfrac[:, None, None, :] + shifts) @ lattice, axis=-1)  # (B, N, C)
        tied = dist <= dist.min(axis=-1, keepdims=True) + tie_tolerance
        weight = 1.0 / tied.sum(axis=-1)
        ib, ig, ic = np.nonzero(tied)
        out.append((np.full(len(ib), a), ib, ig, shifts[ib, ig, ic].astype(np.int64), weight[ib, ig], dist[ib, ig, ic]))
    return tuple(np.concatenate(x) for x in zip(*out))


def kmesh_to_realspace(cell, kpts: np.ndarray, mats_k: np.ndarray, *, unit: float = 1.0,
                       drop_below: float = 0.0, max_distance: float | None = None,
                       name: str = "operator") -> RealSpaceOperator:
    """PySCF k-space AO matrices on a Gamma-centred mesh -> :class:`RealSpaceOperator` in our order.

    ``cell`` is a built PySCF ``Cell``; ``kpts`` (N, 3) are PySCF's absolute k-points (1/bohr,
    as ``cell.make_kpts`` gives); ``mats_k`` (N, nao, nao) in PySCF's AO order, e.g.
    ``mf.get_fock()`` or ``mf.get_ovlp()``.  Values are multiplied by ``unit`` (pass
    ``ase.units.Hartree`` for Fock matrices to get eV).  See :func:`realspace_from_kmesh`.
    """
    atoms = _atoms_from_pyscf(cell)
    bas = Basis.from_pyscf(cell)
    symbols = atoms.get_chemical_symbols()
    conv = bas.structure_converter(symbols, "pyscf")
    mats = np.asarray(mats_k)
    if mats.ndim == 3 and mats.shape[1:] == (conv.shape[0],) * 2:
        mats = (conv @ mats @ conv.T) * unit  # a three-operand einsum here took minutes for 8-atom cells
    kfrac = cell.get_scaled_kpts(np.asarray(kpts).reshape(-1, 3))
    return realspace_from_kmesh(
        atoms, bas.orbital_counts(symbols), kfrac, mats, drop_below=drop_below, max_distance=max_distance,
        name=name, basis=bas
    )


def _time_reversal_split(n: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For the mesh of :func:`gamma_centred_mesh`: representatives under k -> -k, and for every
    point the index of its representative and whether it is the conjugate partner."""
    nvec = np.asarray(n)
    g = np.round(gamma_centred_mesh(n) * nvec).astype(np.int64)
    flat = g[:, 0] + n[0] * (g[:, 1] + n[1] * g[:, 2])
    gm = (-g) % nvec
    flat_m = gm[:, 0] + n[0] * (gm[:, 1] + n[1] * gm[:, 2])
    rep = np.minimum(flat, flat_m)
    reps = np.unique(rep)
    where = np.searchsorted(reps, rep)
    conj = flat != rep
    return reps, np.stack([where, conj.astype(np.int64)], axis=1)


# ---------------------------------------------------------------------------------------------
# crystals
# ---------------------------------------------------------------------------------------------
def run_krks(
    atoms: Atoms,
    xc: str = "pbe",
    basis: str | dict = "gth-dzvp-molopt-sr",
    pseudo: str | dict | None = "gth-pbe",
    kmesh: Sequence[int] = (3, 3, 3),
    *,
    density_fit: bool = True,
    ke_cutoff: float | None = None,
    conv_tol: float = 1e-9,
    kpoint_symmetry: bool | str = False,
    mesh_shift: bool = False,
    verbose: int = 0,
    scf_options: dict | None = None,
    smearing: float | None = None,
    multigrid: bool = False,
):
    """Converged PySCF KRKS mean-field object on a ``kmesh`` (see :func:`periodic_operators`).

    ``smearing`` (eV): Fermi-Dirac occupations of that width (PySCF's ``smearing_``) instead of
    integer ones, for structures the functional makes (semi)metallic.

    The mesh is Gamma-centred, or with ``mesh_shift`` a Monkhorst–Pack mesh (half a step off
    Gamma along even axes), which converges the density faster for a given number of points;
    operators then need a (Gamma-centred) ``dense_kmesh`` in :func:`operators_from_krks`.
    ``kpoint_symmetry`` runs the SCF on the irreducible k-points only (PySCF's k-point
    symmetry-adapted KRKS): ``"time_reversal"`` keeps one of each pair k, -k (260 of 512 points
    on an 8x8x8 mesh; any structure has it; a strained two-atom silicon cell's frame took 443 s
    against 556 s, as PySCF still builds the density from every k, with the same operators to
    1e-6 meV: ``benchmarks/pyscf_scf_speed.py``), ``True`` or
    ``"space_group"`` the crystal's space group as well.  PySCF enlarges the FFT grid to one the
    space group maps onto itself, which for a strained, nearly symmetric cell can be enormous
    (a 17^3 grid became 898x1595x765 for such a silicon cell): use ``"time_reversal"`` there.

    ``multigrid`` builds J and Vxc with PySCF's multigrid integration (``MultiGridNumInt``;
    FFT density fitting, pseudopotentials, LDA/GGA) instead of on the one uniform grid.
    Measured on a strained two-atom silicon cell (gth-dzvp-molopt-sr, 20 Ha, 8x8x8 mesh,
    ``benchmarks/pyscf_scf_speed.py``): with time reversal the frame took 132 s against 556 s
    for every k on the uniform grid; its bands are 0.095 meV (mean; at most 0.47 meV) from the
    uniform grid's, H elements at most 1.9 meV.
    """
    from pyscf.pbc import dft

    n = _mesh_tuple(kmesh)
    shift = np.array([0.5 / x if (mesh_shift and x % 2 == 0) else 0.0 for x in n])
    mode = _kpoint_symmetry_mode(kpoint_symmetry)
    if mode == "space_group":
        cell = atoms_to_cell(atoms, basis, pseudo, ke_cutoff=ke_cutoff, verbose=verbose,
                             space_group_symmetry=True, symmorphic=False)
        kpts = cell.make_kpts(n, with_gamma_point=not mesh_shift, space_group_symmetry=True,
                              time_reversal_symmetry=True)
    elif mode == "time_reversal":
        if mesh_shift:
            raise PySCFInputError("kpoint_symmetry='time_reversal' needs a Gamma-centred SCF mesh (mesh_shift=False)")
        cell = atoms_to_cell(atoms, basis, pseudo, ke_cutoff=ke_cutoff, verbose=verbose)
        kpts = cell.make_kpts(n, with_gamma_point=True, space_group_symmetry=False, time_reversal_symmetry=True)
    else:
        cell = atoms_to_cell(atoms, basis, pseudo, ke_cutoff=ke_cutoff, verbose=verbose)
        kpts = cell.get_abs_kpts(gamma_centred_mesh(n) + shift)
    mf = dft.KRKS(cell, kpts)
    mf.xc = xc
    mf.conv_tol = conv_tol
    mf.verbose = verbose
    if multigrid:
        if density_fit:
            raise PySCFInputError("multigrid integrates on FFT grids: use it with density_fit=False")
        from pyscf.pbc.dft.multigrid import MultiGridNumInt

        mf._numint = MultiGridNumInt(cell)
    if density_fit:
        mf = mf.density_fit()
    if smearing:
        from pyscf.pbc.scf.addons import smearing_

        mf = smearing_(mf, sigma=float(smearing) / Hartree, method="fermi")
    _apply_scf_options(mf, scf_options)
    mf.kernel()
    return mf


KPOINT_SYMMETRY_MODES = ("time_reversal", "space_group")


def _kpoint_symmetry_mode(value) -> str | None:
    """None, "time_reversal" or "space_group" from the ``kpoint_symmetry`` argument."""
    if value is None or value is False:
        return None
    if value is True:
        return "space_group"
    if value in KPOINT_SYMMETRY_MODES:
        return value
    raise PySCFInputError(f"kpoint_symmetry must be False, True, 'time_reversal' or 'space_group', got {value!r}")


def _apply_scf_options(mf, options: dict | None) -> None:
    for key, value in (options or {}).items():
        if not hasattr(mf, key):
            raise PySCFInputError(f"unknown SCF option {key!r} for {type(mf).__name__}")
        setattr(mf, key, value)


def periodic_operators(
    atoms: Atoms,
    xc: str = "pbe",
    basis: str | dict = "gth-dzvp-molopt-sr",
    pseudo: str | dict | None = "gth-pbe",
    kmesh: Sequence[int] = (3, 3, 3),
    *,
    dense_kmesh: Sequence[int] | None = None,
    density_fit: bool = True,
    ke_cutoff: float | None = None,
    conv_tol: float = 1e-9,
    kpoint_symmetry: bool | str = False,
    mesh_shift: bool = False,
    time_reversal: bool = True,
    drop_below: float = 0.0,
    max_distance: float | None = None,
    verbose: int = 0,
    return_mf: bool = False,
    scf_options: dict | None = None,
    smearing: float | None = None,
    multigrid: bool = False,
):
    """Kohn–Sham H(R) (eV), S(R), D(R) of a crystal from a PySCF KRKS calculation.

    Parameters
    ----------
    atoms:
        periodic structure (Å), pbc on all axes.
    xc, basis, pseudo:
        functional, Gaussian basis and pseudopotential in PySCF notation (``pseudo=None`` for
        all-electron).
    kmesh:
        Gamma-centred SCF mesh.
    dense_kmesh:
        if given, the Fock matrix is rebuilt on this Gamma-centred mesh from the density
        converged on ``kmesh``; see :func:`operators_from_krks`.  Without it the operators are
        exact only at the SCF mesh points.  Measured for 2-atom Si with gth-dzvp-molopt-sr
        (10 random k, 8 lowest bands, vs ``get_bands`` of the same SCF): SCF-mesh 4x4x4 alone
        21 meV mean / 170 meV max off the mesh (3x3x3: S(k) not even positive definite);
        dense 5x5x5 0.2 / 1.2 meV; dense 6x6x6 0.001 / 0.006 meV.
    density_fit:
        Gaussian density fitting (GDF) instead of PySCF's default FFT density fitting.
    ke_cutoff:
        plane-wave kinetic-energy cutoff of the real-space grid (Hartree); default PySCF's.
    kpoint_symmetry, mesh_shift:
        SCF on the irreducible k-points only; Monkhorst–Pack instead of Gamma-centred SCF
        mesh (needs ``dense_kmesh``); see :func:`run_krks`.
    time_reversal, drop_below, max_distance:
        see :func:`operators_from_krks`.
    return_mf:
        also return the PySCF mean-field object (for reference band calculations).
    scf_options:
        attributes set on the SCF object (damping, level shift ...), see :func:`run_krks`.
    smearing:
        Fermi-Dirac width (eV) of the occupations, in the SCF and on ``dense_kmesh``; None for
        integer (insulator) occupations.
    multigrid:
        J and Vxc by PySCF's multigrid integration, see :func:`run_krks`.

    Returns
    -------
    :class:`~ase_slem.io.dataset.Frame` (and the mean-field object if ``return_mf``).
    """
    if mesh_shift and dense_kmesh is None and any(x % 2 == 0 for x in _mesh_tuple(kmesh)):
        raise PySCFInputError(
            "the SCF mesh is shifted off Gamma; real-space operators need a Gamma-centred mesh: "
            "pass dense_kmesh (e.g. (6, 6, 6))"
        )
    t0 = time.perf_counter()
    mf = run_krks(atoms, xc, basis, pseudo, kmesh, density_fit=density_fit, ke_cutoff=ke_cutoff,
                  conv_tol=conv_tol, kpoint_symmetry=kpoint_symmetry, mesh_shift=mesh_shift, verbose=verbose,
                  scf_options=scf_options, smearing=smearing, multigrid=multigrid)
    t_scf = time.perf_counter() - t0
    frame = operators_from_krks(mf, atoms, dense_kmesh=dense_kmesh, time_reversal=time_reversal,
                                drop_below=drop_below, max_distance=max_distance, smearing=smearing)
    frame.results["timings"] = {"scf": t_scf, **frame.results["timings"]}
    return (frame, mf) if return_mf else frame


def operators_from_krks(
    mf,
    atoms: Atoms | None = None,
    *,
    dense_kmesh: Sequence[int] | None = None,
    time_reversal: bool = True,
    drop_below: float = 0.0,
    max_distance: float | None = None,
    smearing: float | None = None,
) -> Frame:
    """H(R) (eV), S(R), D(R) from a converged PySCF KRKS object on a Gamma-centred mesh.

    Without ``dense_kmesh`` the operators come from the SCF mesh itself: H(k) = S C diag(e) C^H S
    (the Fock matrix whose eigenpairs are ``mo_energy``/``mo_coeff``), S(k), D(k) =
    ``mf.make_rdm1()``.  With ``dense_kmesh`` the Fock matrix is rebuilt on that Gamma-centred
    mesh from the converged density (hcore + J + Vxc at those k, non-self-consistent, as
    ``mf.get_bands`` does) and diagonalized there; D on the dense mesh is the ground-state
    (aufbau: the lowest nelectron * nk / 2 states of the whole mesh doubly occupied) density
    matrix of that H (with ``smearing``, eV: Fermi-Dirac occupations of that width, the
    chemical potential fixed by the electron count, as in a smeared SCF; a smeared SCF's
    operators are always rebuilt, on the SCF mesh when no ``dense_kmesh`` is given).  A
    denser mesh pushes the aliasing of the Gaussian tails out; it costs a Fock build per
    k-point.  With ``time_reversal`` F is built at one of each pair k, -k only and
    F(-k) = conj(F(k)).  ``drop_below`` and ``max_distance`` are the block cutoffs of
    :func:`realspace_from_kmesh`.

    ``results`` holds ``energy`` (eV), ``converged``, ``nelectron``, ``fermi_level`` (mid-gap
    for insulators, eV), ``homo``/``lumo``/``gap`` (eV, on the mesh used for H),
    ``band_overlap`` (eV: the top of band nelectron/2 minus the bottom of the band above it,
    over that mesh; positive means the structure is a (semi)metal there, which an insulator's
    integer occupations on a coarse SCF mesh do not converge) and ``timings`` (s per stage).
    """
    cell = mf.cell
    if atoms is None:
        atoms = _atoms_from_pyscf(cell)
    timings = {}
    nelec = int(cell.nelectron)
    kobj = mf.kpts if hasattr(mf.kpts, "kpts_ibz") else None  # k-point symmetry (IBZ only)
    kpts_full = kobj.kpts if kobj is not None else np.asarray(mf.kpts)
    n_scf, scf_shifted = _mesh_size(cell.get_scaled_kpts(kpts_full))
    mu = None  # chemical potential of smeared occupations (Hartree)
    if smearing and dense_kmesh is None and not scf_shifted:
        # Fermi occupations turn the ~1e-9 Ha differences between PySCF's e(k) and e(-k) into
        # ~1e-6 differences between D(k) and conj(D(-k)); rebuilt with time reversal they are exact
        dense_kmesh = n_scf
    t0 = time.perf_counter()
    if dense_kmesh is None:
        if scf_shifted:
            raise PySCFInputError(
                "the SCF mesh is shifted off Gamma; real-space operators need a Gamma-centred mesh: "
                "pass dense_kmesh (e.g. (6, 6, 6))"
            )
        n_used = n_scf
        kf_used = cell.get_scaled_kpts(kpts_full)
        s_k = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=kpts_full))
        if kobj is None:
            c_k, e_k, d_k = mf.mo_coeff, mf.mo_energy, mf.make_rdm1()
        else:
            c_k = kobj.transform_mo_coeff(mf.mo_coeff)
            e_k = kobj.transform_mo_energy(mf.mo_energy)
            d_k = kobj.transform_dm(mf.make_rdm1())
        c_k, e_k, d_k = [np.asarray(c) for c in c_k], np.asarray(e_k), np.asarray(d_k)
        if any(c.shape[0] != c.shape[1] for c in c_k):
            raise PySCFInputError("PySCF removed linearly dependent functions; the Fock matrix is not defined on the full basis")
        f_k = np.stack([(s @ c * e) @ (s @ c).conj().T for s, c, e in zip(s_k, c_k, e_k)])
    else:
        n_used = _mesh_tuple(dense_kmesh)
        kf_used = gamma_centred_mesh(n_used)
        if time_reversal:
            reps, where = _time_reversal_split(n_used)
        else:
            reps = np.arange(len(kf_used))
            where = np.stack([reps, np.zeros_like(reps)], axis=1)
        kd = cell.get_abs_kpts(kf_used[reps])
        dm = mf.make_rdm1()
        f_rep = np.asarray(mf.get_hcore(cell, kd)) + np.asarray(mf.get_veff(cell, dm, kpts=mf.kpts, kpts_band=kd))
        s_rep = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=kd))
        timings["dense_fock"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        f_rep = 0.5 * (f_rep + np.conj(np.swapaxes(f_rep, 1, 2)))
        e_rep, c_rep = _eigh_batch(f_rep, s_rep)
        conj = where[:, 1].astype(bool)

        def unfold(x):
            return np.where(conj[:, None, None], np.conj(x[where[:, 0]]), x[where[:, 0]])

        e_k = e_rep[where[:, 0]]
        f_k, s_k, c_k = unfold(f_rep), unfold(s_rep), unfold(c_rep)
        if smearing:
            occ, mu = _fermi_occupations(e_k, nelec, smearing / Hartree)
        else:
            occ = _aufbau_occupations(e_k, nelec)
        d_k = np.einsum("kan,kn,kbn->kab", c_k, occ, np.conj(c_k))
    bas = Basis.from_pyscf(cell)
    symbols = atoms.get_chemical_symbols()
    conv = bas.structure_converter(symbols, "pyscf")
    counts = bas.orbital_counts(symbols)
    ops = {}
    for name, mats, unit in (("hamiltonian", f_k, Hartree), ("overlap", s_k, 1.0), ("density_matrix", d_k, 1.0)):
        ours = (conv @ mats @ conv.T) * unit  # (the einsum it replaces: 92 s per operator, 216 k, 104 orbitals)
        ops[name] = realspace_from_kmesh(
            atoms, counts, kf_used, ours, kmesh=n_used, drop_below=drop_below, max_distance=max_distance,
            name=name, basis=bas
        )
    timings["transform"] = time.perf_counter() - t0

    e_ev = np.asarray(e_k) * Hartree
    nocc_total = nelec * len(e_ev) // 2
    flat = np.sort(e_ev.ravel())
    homo = float(flat[nocc_total - 1])
    lumo = float(flat[nocc_total]) if nocc_total < flat.size else None
    nband = nelec // 2  # bands an insulator fills at every k
    overlap = (float(e_ev[:, nband - 1].max() - e_ev[:, nband].min())
               if nelec % 2 == 0 and 0 < nband < e_ev.shape[1] else None)
    results = {
        "energy": float(mf.e_tot) * Hartree,
        "converged": bool(mf.converged),
        "nelectron": nelec,
        "homo": homo,
        "lumo": lumo,
        "gap": None if lumo is None else lumo - homo,
        "fermi_level": (float(mu * Hartree) if mu is not None
                        else homo if lumo is None else 0.5 * (homo + lumo)),
        "band_overlap": overlap,
        "timings": timings,
    }
    basis, pseudo = cell.basis, cell.pseudo
    settings = {
        "code": "pyscf",
        "code_version": _pyscf_version(),
        "method": "KRKS",
        "xc": mf.xc,
        "basis": basis if isinstance(basis, str) else repr(basis),
        "pseudo": pseudo if (pseudo is None or isinstance(pseudo, str)) else repr(pseudo),
        "kmesh": list(n_scf),
        "kpoint_symmetry": (False if kobj is None
                            else "space_group" if getattr(cell, "space_group_symmetry", False) else "time_reversal"),
        "kmesh_shifted": scf_shifted,
        "dense_kmesh": None if dense_kmesh is None else list(n_used),
        "density_fit": type(mf.with_df).__name__ != "FFTDF",
        "ke_cutoff": None if getattr(cell, "ke_cutoff", None) is None else float(cell.ke_cutoff),
        "fft_mesh": [int(x) for x in cell.mesh],
        "xc_integration": "multigrid" if "MultiGrid" in type(mf._numint).__name__ else "uniform_grid",
        "conv_tol": float(mf.conv_tol),
        "smearing": None if not smearing else float(smearing),
        "block_cutoff": drop_below,
        "max_distance": max_distance,
        "realspace": "minimal image in the Born-von Karman supercell of the mesh used, ties split evenly",
    }
    return Frame(atoms.copy(), ops, bas, settings, results)


def _eigh_batch(f: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Generalized eigenpairs per k of Hermitian (nk, n, n) pairs (Hartree), ascending."""
    from scipy.linalg import eigh

    out = [eigh(a, b) for a, b in zip(f, s)]
    return np.stack([w for w, _ in out]), np.stack([v for _, v in out])


def _aufbau_occupations(e_k: np.ndarray, nelectron: int, degeneracy_tol: float = 1e-6) -> np.ndarray:
    """Occupations (nk, nbands): 2 for the nelectron * nk / 2 lowest states over the whole mesh.

    States within ``degeneracy_tol`` (Hartree) of the highest occupied one share the electrons
    left for them evenly, so degenerate partners (k and -k, or a degenerate level at one k) are
    occupied alike and D(-k) = conj(D(k)) holds even when the gap closes on the mesh.
    """
    nk = e_k.shape[0]
    total = nelectron * nk
    if total % 2:
        raise PySCFInputError("an odd number of electrons per mesh cannot fill doubly occupied states")
    flat = np.sort(e_k.ravel(), kind="stable")
    n_states = total // 2
    e_last = flat[n_states - 1]
    occ = np.where(e_k < e_last - degeneracy_tol, 2.0, 0.0)
    shell = np.abs(e_k - e_last) <= degeneracy_tol
    left = total - occ.sum()
    occ[shell] = left / shell.sum()
    return occ


def _fermi_occupations(e_k: np.ndarray, nelectron: int, sigma: float) -> tuple[np.ndarray, float]:
    """Fermi-Dirac occupations (nk, nbands), 0..2, of width ``sigma`` (energy unit of ``e_k``)
    holding nelectron * nk electrons over the mesh, and their chemical potential."""
    from scipy.optimize import brentq
    from scipy.special import expit

    total = nelectron * e_k.shape[0]

    def excess(mu: float) -> float:
        return float(2.0 * expit(-(e_k - mu) / sigma).sum() - total)

    lo, hi = float(e_k.min()) - 50 * sigma, float(e_k.max()) + 50 * sigma
    mu = brentq(excess, lo, hi, xtol=1e-14 * max(1.0, abs(hi)), maxiter=500)
    return 2.0 * expit(-(e_k - mu) / sigma), mu


# ---------------------------------------------------------------------------------------------
# molecular equilibrium geometry and Hessian (for normal-mode sampling of training sets)
# ---------------------------------------------------------------------------------------------
def molecular_minimum(atoms: Atoms, xc: str = "pbe", basis: str | dict = "def2-svp", *, fmax: float = 0.005,
                      steps: int = 200, charge: int = 0) -> tuple[Atoms, np.ndarray]:
    """RKS equilibrium geometry and its Cartesian Hessian.

    The geometry is relaxed with ASE's BFGS on PySCF analytic RKS forces until the largest
    force is below ``fmax`` (eV/Å); then PySCF's analytic RKS Hessian is evaluated there.

    Returns
    -------
    ``(atoms_min, hessian)`` with the Hessian (3N, 3N) in eV/Å^2 (atom-major, x/y/z inner).
    """
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS
    from pyscf import dft

    def build(a):
        mf = dft.RKS(atoms_to_mole(a, basis, charge=charge))
        mf.xc = xc
        mf.conv_tol = 1e-11
        mf.verbose = 0
        return mf

    class _Forces(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            mf = build(self.atoms)
            e = mf.kernel()
            g = mf.nuc_grad_method().kernel()
            self.results = {"energy": e * Hartree, "forces": -np.asarray(g) * Hartree / Bohr}

    work = atoms.copy()
    work.calc = _Forces()
    opt = BFGS(work, logfile=None)
    if not opt.run(fmax=fmax, steps=steps):
        raise RuntimeError(f"geometry optimization did not reach fmax={fmax} eV/Å in {steps} steps")
    relaxed = Atoms(work.get_chemical_symbols(), positions=work.positions)
    mf = build(relaxed)
    mf.kernel()
    h = np.asarray(mf.Hessian().kernel())  # (N, N, 3, 3) Hartree/Bohr^2
    n = len(relaxed)
    hess = h.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n) * Hartree / Bohr ** 2
    return relaxed, 0.5 * (hess + hess.T)
