"""Real-space electron density from a density matrix D(R) and the basis' radial functions.

    rho(r) = sum_{T} sum_{i j R} D_ij(R) phi_i(r - tau_i - T) phi_j(r - tau_j - R - T)

(``D_ij(R)`` the spin-summed blocks <i, 0|D|j, R> of a
:class:`~ase_slem.operators.RealSpaceOperator`, phi our orbitals of
:mod:`ase_slem.orbitals`), on a regular grid, in electrons/Å^3.  Periodic structures are
sampled over their cell (``box = atoms.cell``, grid points at fractional ``(a/nx, b/ny, c/nz)``,
origin 0); molecules over an orthogonal box padded around the atoms (``origin`` returned with
the grid).  The grid mean times the box volume is the electron count: for a complete D it equals
``Tr(D S)`` up to the grid quadrature error (<< 0.5 % at 0.15 Å for pseudopotential bases).

How it is computed: the grid is cut into compact boxes of about ``chunk`` points; per box the
lattice images of the atoms whose orbitals reach the box are found, their orbital values form a
dense matrix Phi (npts, n_local_orbitals), the density-matrix blocks between those images are
gathered into M (n_local, n_local) with ``M[(a,T),(b,T')] = D_ab(T' - T)`` (absent blocks are
zero), and ``rho = rowsum((Phi @ M) * Phi)``: one BLAS product per box, memory bounded by the
box.  :func:`orbital_density` does the same with a Bloch eigenvector:
``psi(r) = sum_T exp(2 pi i k.T) sum_mu c_mu phi_mu(r - tau_mu - T)``.  The work per point
grows like the sixth power of the orbital cutoff, so orbitals are cut where they fall below
``tolerance`` (default 1e-6) of their peak: this matters for Gaussian bases, whose 1e-8 tails
reach 8 Å in silicon (gth-dzvp), and changes the density by ~1e-7 of its peak.

Cube files (:func:`write_cube`) hold the data per bohr^3 (electrons/bohr^3 for densities: what
VESTA, VMD and Gaussian's cubegen expect) with lengths in bohr, as the format requires; ASE's
own ``ase.io.write(..., format="cube", data=...)`` writes the numbers as given, so this module
converts from per Å^3 before writing (:func:`read_cube` converts back).

numpy/scipy only (no torch); plotting is in :mod:`ase_slem.density_plot`.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.units import Bohr

from ._files import publish
from .io.radial import RadialBasis
from .operators import OperatorError, RealSpaceOperator
from .orbitals import (
    OrbitalEvaluator,
    _margin_outside_cell,
    _spatial_order,
    check_radial_basis,
    truncated_radial_basis,
)

__all__ = [
    "DensityGrid",
    "supercell_operator",
    "DensityError",
    "density_grid_geometry",
    "grid_points",
    "electron_density",
    "density_at_points",
    "orbital_density",
    "density_on_plane",
    "PlaneSlice",
    "write_cube",
    "read_cube",
]

DEFAULT_CHUNK = 1024
DEFAULT_TOLERANCE = 1e-6
TILE_IMAGES = 12


class DensityError(ValueError):
    """Input to a density calculation that cannot be used (grid, structure, coefficients)."""


class DensityGrid(tuple):
    """``(rho, box)`` that also carries ``origin`` (Å) and ``periodic``.

    Unpacks as the two-tuple of the public API (``rho, box = electron_density(...)``).

    Attributes
    ----------
    rho : (nx, ny, nz) float, per Å^3 (electrons/Å^3 for :func:`electron_density`)
    box : (3, 3) Å, rows = the three edges of the sampled parallelepiped
    origin : (3,) Å, position of grid point (0, 0, 0)
    periodic : bool, True when the grid is one period of a crystal (``box`` = cell)
    """

    def __new__(cls, rho: np.ndarray, box: np.ndarray, origin: np.ndarray, periodic: bool):
        obj = super().__new__(cls, (rho, box))
        obj.origin = np.asarray(origin, dtype=float)
        obj.periodic = bool(periodic)
        return obj

    def __reduce__(self):
        return (DensityGrid, (self[0], self[1], self.origin, self.periodic))

    @property
    def rho(self) -> np.ndarray:
        return self[0]

    @property
    def box(self) -> np.ndarray:
        return self[1]

    @property
    def volume(self) -> float:
        """|det(box)| in Å^3."""
        return float(abs(np.linalg.det(self.box)))

    @property
    def integral(self) -> float:
        """``rho.mean() * volume``: the electron count for an electron density."""
        return float(self.rho.mean() * self.volume)

    def points(self) -> np.ndarray:
        """Cartesian positions of all grid points, (nx, ny, nz, 3) Å."""
        return grid_points(self.box, self.rho.shape, self.origin)


# ---------------------------------------------------------------------------------------------
# grid geometry
# ---------------------------------------------------------------------------------------------
def density_grid_geometry(
    atoms: Atoms, spacing: float = 0.15, padding: float = 3.0, shape: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int], bool]:
    """(box (3, 3) Å, origin (3,) Å, shape, periodic) of the grid for ``atoms``.

    Periodic (any pbc): box = atoms.cell, origin 0, ``n_i = ceil(|a_i| / spacing)`` points
    along lattice vector i (spacing <= the one asked for).  Molecule (no pbc): an orthogonal box
    around the atoms with ``padding`` Å on every side, ``n_i = ceil(L_i / spacing)`` and the box
    grown to ``n_i * spacing`` (centered), so the spacing is exact.  ``shape`` overrides the
    point counts (e.g. to match another code's mesh).
    """
    try:
        spacing = float(spacing)
    except (TypeError, ValueError) as err:
        raise DensityError(f"spacing must be a number of Å, got {spacing!r}") from err
    if not (np.isfinite(spacing) and spacing > 0):
        raise DensityError(f"spacing must be a positive grid spacing in Å (e.g. 0.15), got {spacing}")
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise DensityError(f"shape must be three positive point counts (nx, ny, nz), got {shape}")
    if len(atoms) == 0:
        raise DensityError("the structure has no atoms")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        box = np.asarray(atoms.cell.array, dtype=float)
        if abs(np.linalg.det(box)) < 1e-9:
            raise DensityError(
                "a periodic structure needs a full-rank cell to span the grid; set atoms.cell "
                "(with vacuum along non-periodic directions) or atoms.pbc = False for a molecule"
            )
        n = shape or tuple(max(1, int(np.ceil(np.linalg.norm(a) / spacing - 1e-9))) for a in box)
        return box, np.zeros(3), n, True
    if not (np.isfinite(padding) and padding >= 0):
        raise DensityError(f"padding must be a non-negative number of Å, got {padding}")
    pos = atoms.get_positions()
    lo, hi = pos.min(axis=0) - padding, pos.max(axis=0) + padding
    span = np.maximum(hi - lo, spacing)
    if shape is None:
        n = tuple(int(x) for x in np.ceil(span / spacing - 1e-9))
        lengths = np.array(n) * spacing
    else:
        n, lengths = shape, span
    origin = 0.5 * (lo + hi) - 0.5 * lengths
    return np.diag(lengths), origin, n, False


def grid_points(box: np.ndarray, shape: Sequence[int], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Cartesian grid points ``origin + (a/nx) box[0] + (b/ny) box[1] + (c/nz) box[2]``, (nx, ny, nz, 3)."""
    box = np.asarray(box, dtype=float)
    f = [np.arange(n) / n for n in shape]
    return (np.asarray(origin, dtype=float)
            + f[0][:, None, None, None] * box[0] + f[1][None, :, None, None] * box[1]
            + f[2][None, None, :, None] * box[2])


def _box_blocks(shape: tuple[int, int, int], box: np.ndarray, chunk: int):
    """Yield (i0, i1, j0, j1, k0, k1) index ranges of compact sub-boxes of about ``chunk`` points."""
    steps = np.linalg.norm(box, axis=1) / np.array(shape)
    side = (chunk * np.prod(steps)) ** (1.0 / 3.0)
    b = np.clip(np.round(side / steps).astype(int), 1, np.array(shape))
    for i0 in range(0, shape[0], b[0]):
        for j0 in range(0, shape[1], b[1]):
            for k0 in range(0, shape[2], b[2]):
                yield i0, min(i0 + b[0], shape[0]), j0, min(j0 + b[1], shape[1]), k0, min(k0 + b[2], shape[2])


def _block_points(box, shape, origin, rng):
    """Points of one sub-box (C order), its center and bounding radius."""
    i0, i1, j0, j1, k0, k1 = rng
    f = [np.arange(a, b) / n for a, b, n in zip((i0, j0, k0), (i1, j1, k1), shape)]
    pts = (origin + f[0][:, None, None, None] * box[0] + f[1][None, :, None, None] * box[1]
           + f[2][None, None, :, None] * box[2]).reshape(-1, 3)
    corners = np.array([[a, b, c] for a in (f[0][0], f[0][-1]) for b in (f[1][0], f[1][-1])
                        for c in (f[2][0], f[2][-1])]) @ box + origin
    center = corners.mean(axis=0)
    radius = float(np.linalg.norm(corners - center, axis=1).max())
    return pts, center, radius


# ---------------------------------------------------------------------------------------------
# density-matrix block lookup
# ---------------------------------------------------------------------------------------------
@dataclass
class _BlockTable:
    """All blocks of an operator (both triangles), padded to (nmax, nmax), sorted by key."""

    keys: np.ndarray  # (nfull,) sorted
    data: np.ndarray  # (nfull, nmax, nmax)
    rmax: int
    natoms: int

    @classmethod
    def build(cls, op: RealSpaceOperator, nmax: int) -> "_BlockTable":
        rmax = int(np.abs(op.R).max(initial=0))
        keys, datas = [], []
        for grp in op.groups:
            gi, gj, gR = op.i[grp.start:grp.stop], op.j[grp.start:grp.stop], op.R[grp.start:grp.stop]
            pad = np.zeros((len(gi), nmax, nmax))
            pad[:, : grp.ni, : grp.nj] = grp.data
            keys.append(cls._encode(gi, gj, gR, op.natoms, rmax))
            datas.append(pad)
            mirror = ~((gi == gj) & ~gR.any(axis=1))
            keys.append(cls._encode(gj[mirror], gi[mirror], -gR[mirror], op.natoms, rmax))
            datas.append(np.ascontiguousarray(pad[mirror].transpose(0, 2, 1)))
        if keys:
            k = np.concatenate(keys)
            d = np.concatenate(datas)
        else:
            k, d = np.zeros(0, np.int64), np.zeros((0, nmax, nmax))
        order = np.argsort(k)
        return cls(k[order], d[order], rmax, op.natoms)

    @staticmethod
    def _encode(i, j, R, natoms, rmax):
        w = 2 * rmax + 1
        r = ((R[..., 0] + rmax) * w + (R[..., 1] + rmax)) * w + (R[..., 2] + rmax)
        return (i.astype(np.int64) * natoms + j) * w**3 + r

    def lookup(self, i: np.ndarray, j: np.ndarray, R: np.ndarray) -> np.ndarray:
        """Row of each (i, j, R) in ``data``, or -1 where the operator has no such block."""
        inside = np.all(np.abs(R) <= self.rmax, axis=-1)
        key = self._encode(i, j, np.clip(R, -self.rmax, self.rmax), self.natoms, self.rmax)
        if len(self.keys) == 0:
            return np.full(key.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(self.keys, key), 0, len(self.keys) - 1)
        return np.where(inside & (self.keys[pos] == key), pos, -1)


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _check_operator(D: RealSpaceOperator, atoms: Atoms, radial: RadialBasis) -> None:
    if not isinstance(D, RealSpaceOperator):
        raise DensityError(
            f"D must be a RealSpaceOperator (the density matrix), got {type(D).__name__}; build one with "
            "RealSpaceOperator.from_dense/from_blocks or read it with ase_slem.io.read_operators"
        )
    if len(atoms) != D.natoms:
        raise DensityError(
            f"the density matrix has {D.natoms} atoms but the structure has {len(atoms)}: "
            "pass the structure the density matrix was computed for"
        )
    try:
        D.check_structure(atoms)
    except OperatorError as err:
        raise DensityError(str(err)) from err
    if not np.asarray(atoms.pbc).any() and np.any(D.R != 0):
        raise DensityError(
            "the density matrix has blocks between cell images (R != 0) but the structure has no periodic "
            "boundary conditions: set atoms.pbc (and the cell) as in the calculation that produced D"
        )
    check_radial_basis(radial, atoms, D.orbital_counts, D.basis)


def _evaluator(atoms: Atoms, radial: RadialBasis, tolerance: float | None) -> OrbitalEvaluator:
    """Orbital images that reach the home cell (our grid points never leave it)."""
    if tolerance is not None:
        radial = truncated_radial_basis(radial, tolerance)
    return OrbitalEvaluator.for_structure(atoms, radial, margin=1e-6)


def _banded_quadratic_form(phi: np.ndarray, m: np.ndarray, col_start: np.ndarray, nonzero: np.ndarray,
                           tile: int | None = None) -> np.ndarray:
    """``rowsum((phi @ m) * phi)`` for symmetric ``m`` made of image blocks, skipping zero tiles.
    ``m`` is overwritten (scratch).

    Images (column groups ``col_start[k]:col_start[k+1]``) are taken ``tile`` at a time; with
    m symmetric, rho = sum_I rowsum(phi_I * (phi_I m_II + 2 sum_{J>I} phi_J m_JI)), and for
    each tile I only the column range up to the last tile J holding a non-zero block is used
    (``nonzero`` (n, n) marks the blocks present): about half the work of the full product,
    less when D's blocks are short-ranged compared to the box of images.
    """
    n = len(col_start) - 1
    tile = TILE_IMAGES if tile is None else tile
    starts = np.arange(0, n, tile)
    stops = np.minimum(starts + tile, n)
    any_per_tile = np.logical_or.reduceat(nonzero, starts, axis=0)  # (ntiles, n)
    out = np.zeros(phi.shape[0])
    for t, (s, e) in enumerate(zip(starts, stops)):
        hits = np.flatnonzero(any_per_tile[t, s:])
        if len(hits) == 0:
            continue
        last = max(int(hits[-1]) + s + 1, e)
        c0, c1, c2 = col_start[s], col_start[e], col_start[last]
        m[c1:c2, c0:c1] *= 2.0  # m is a scratch copy: columns c0:c1 serve tile t only
        out += np.einsum("pa,pa->p", phi[:, c0:c2] @ m[c0:c2, c0:c1], phi[:, c0:c1])
    return out


# ---------------------------------------------------------------------------------------------
# electron density
# ---------------------------------------------------------------------------------------------
def _density_of_chunk(ev: OrbitalEvaluator, table: "_BlockTable", pts: np.ndarray, center: np.ndarray,
                      radius: float) -> np.ndarray:
    """rho at the points (npts, 3) of one compact chunk (inside the ball (center, radius))."""
    nmax = ev.norb_max
    imgs = ev.images_near(center, radius)
    if len(imgs) == 0:
        return np.zeros(len(pts))
    imgs, phi = ev.values(pts, imgs, drop_untouched=True)  # (npts, nimg, nmax)
    if len(imgs) == 0:
        return np.zeros(len(pts))
    # order the images along their widest spread: D's blocks then gather near the diagonal
    centers = ev.image_center[imgs]
    order = np.argsort(centers[:, np.argmax(np.ptp(centers, axis=0))], kind="stable")
    imgs, phi = imgs[order], phi[:, order]
    a, T = ev.image_atom[imgs], ev.image_shift[imgs]
    n = len(imgs)
    rows = table.lookup(a[:, None], a[None, :], T[None, :, :] - T[:, None, :])  # (n, n)
    ia, ib = np.nonzero(rows >= 0)
    m = np.zeros((n, nmax, n, nmax))
    m[ia, :, ib, :] = table.data[rows[ia, ib]]
    m = m.reshape(n * nmax, n * nmax)
    phi = phi.reshape(len(pts), n * nmax)
    valid = (np.arange(nmax)[None, :] < ev.atom_norb[a][:, None]).ravel()
    if not valid.all():
        m, phi = m[np.ix_(valid, valid)], phi[:, valid]
    col_start = np.concatenate([[0], np.cumsum(ev.atom_norb[a])])
    return _banded_quadratic_form(phi, m, col_start, rows >= 0)


def density_at_points(
    D: RealSpaceOperator,
    atoms: Atoms,
    radial: RadialBasis,
    points: np.ndarray,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Electron density (e/Å^3) of ``D`` at arbitrary ``points`` (npts, 3) Å, e.g. a line
    profile along a bond.  Same sum and arguments as :func:`electron_density`; points may lie
    anywhere (for crystals the lattice sum covers them wherever they are)."""
    _check_operator(D, atoms, radial)
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
        raise DensityError(f"points must be a finite (npts, 3) array in Å, got shape {points.shape}")
    if int(chunk) < 1:
        raise DensityError(f"chunk must be a positive number of points, got {chunk}")
    if tolerance is not None:
        radial = truncated_radial_basis(radial, tolerance)
    ev = OrbitalEvaluator.for_structure(atoms, radial, margin=_margin_outside_cell(atoms, points) + 1e-6)
    table = _BlockTable.build(D, ev.norb_max)
    out = np.zeros(len(points))
    order = _spatial_order(points, int(chunk))
    for s in range(0, len(points), int(chunk)):
        idx = order[s : s + int(chunk)]
        pts = points[idx]
        center = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
        radius = float(np.linalg.norm(pts - center, axis=1).max())
        out[idx] = _density_of_chunk(ev, table, pts, center, radius)
    return out



def electron_density(
    D: RealSpaceOperator,
    atoms: Atoms,
    radial: RadialBasis,
    spacing: float = 0.15,
    padding: float = 3.0,
    *,
    shape: Sequence[int] | None = None,
    tolerance: float | None = DEFAULT_TOLERANCE,
    chunk: int = DEFAULT_CHUNK,
) -> DensityGrid:
    """Electron density of density matrix ``D`` on a regular grid, electrons/Å^3.

    Parameters
    ----------
    D:
        spin-summed density matrix (blocks <i,0|D|j,R>, our orbital order), e.g. from
        ``calc.get_density_matrix(atoms)`` or ``ase_slem.io.read_operators``.
    atoms:
        the structure of D (Å).  Any pbc: one period over ``atoms.cell``; no pbc: a box.
    radial:
        radial functions of D's basis (:class:`~ase_slem.io.radial.RadialBasis`), e.g.
        :func:`ase_slem.orbitals.radial_basis_from_pyscf`, ``ase_slem.io.siesta.read_radial_basis``
        or :func:`ase_slem.orbitals.radial_basis_from_dict` of a model's metadata.
    spacing:
        grid spacing, Å (upper bound along each cell vector for periodic structures).
    padding:
        vacuum around a molecule's atoms, Å (ignored for periodic structures).
    shape:
        explicit grid point counts (nx, ny, nz), overriding ``spacing``.
    tolerance:
        orbitals are dropped where their radial envelope stays below ``tolerance`` times its
        peak (:func:`~ase_slem.orbitals.truncated_radial_basis`; cutoffs only shrink).  The
        default 1e-6 changes rho by ~1e-7 of its peak (measured on gth-dzvp silicon) and halves
        the time for long Gaussian tails; ``None`` keeps the radial basis' own cutoffs (1e-8 for
        :func:`~ase_slem.orbitals.radial_basis_from_pyscf`) for comparisons at that level.
    chunk:
        points per sub-box (bounds memory: about ``chunk * n_local_orbitals * 16`` bytes).

    Returns
    -------
    DensityGrid ``(rho (nx, ny, nz) e/Å^3, box (3, 3) Å)`` with ``.origin`` (Å) and
    ``.periodic``; ``rho.mean() * |det(box)|`` is the electron count.
    """
    box, origin, shape, periodic = density_grid_geometry(atoms, spacing, padding, shape)
    _check_operator(D, atoms, radial)
    if int(chunk) < 1:
        raise DensityError(f"chunk must be a positive number of grid points, got {chunk}")
    ev = _evaluator(atoms, radial, tolerance)
    table = _BlockTable.build(D, ev.norb_max)
    rho = np.zeros(shape)
    for rng in _box_blocks(shape, box, int(chunk)):
        pts, center, radius = _block_points(box, shape, origin, rng)
        i0, i1, j0, j1, k0, k1 = rng
        rho[i0:i1, j0:j1, k0:k1] = _density_of_chunk(ev, table, pts, center, radius).reshape(
            i1 - i0, j1 - j0, k1 - k0)
    return DensityGrid(rho, box, origin, periodic)


# ---------------------------------------------------------------------------------------------
# one band
# ---------------------------------------------------------------------------------------------
def orbital_density(
    coefficients: np.ndarray,
    atoms: Atoms,
    radial: RadialBasis,
    kpt: Sequence[float] = (0.0, 0.0, 0.0),
    spacing: float = 0.15,
    padding: float = 3.0,
    *,
    shape: Sequence[int] | None = None,
    tolerance: float | None = DEFAULT_TOLERANCE,
    chunk: int = DEFAULT_CHUNK,
) -> DensityGrid:
    """|psi_nk(r)|^2 of a Bloch eigenvector on the grid of :func:`electron_density`, 1/Å^3.

    ``psi(r) = sum_T exp(2 pi i k.T) sum_mu c_mu phi_mu(r - tau_mu - T)`` with ``kpt``
    fractional (reciprocal cell, as everywhere in ase_slem) and ``coefficients`` (norb,) in our
    orbital order: one column of the eigenvectors of ``solve_k(H, S, kpt, eigvals_only=False)``
    (normalized ``c^H S(k) c = 1``, so |psi|^2 integrates to 1 over the cell).  A matrix
    (norb, nb) gives the sum of its columns' densities (e.g. a degenerate set).  Multiply by the
    occupation (2 for a filled spin-degenerate band) for electrons/Å^3.  Other arguments as in
    :func:`electron_density`.
    """
    box, origin, shape, periodic = density_grid_geometry(atoms, spacing, padding, shape)
    c = np.asarray(coefficients)
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2:
        raise DensityError(f"coefficients must have shape (norb,) or (norb, nbands), got {np.shape(coefficients)}")
    k = np.asarray(kpt, dtype=float)
    if k.shape != (3,) or not np.all(np.isfinite(k)):
        raise DensityError(f"kpt must be 3 finite fractional coordinates, got {kpt!r}")
    if not periodic and np.any(k != 0):
        raise DensityError("a molecule (no periodic boundary conditions) has only k = Gamma")
    check_radial_basis(radial, atoms)
    if int(chunk) < 1:
        raise DensityError(f"chunk must be a positive number of grid points, got {chunk}")
    ev = _evaluator(atoms, radial, tolerance)
    offs = ev.offsets
    if c.shape[0] != offs[-1]:
        raise DensityError(
            f"coefficients have {c.shape[0]} rows but the structure has {int(offs[-1])} orbitals in this "
            "radial basis: pass eigenvectors of this structure's H and S (columns = bands)"
        )
    nmax, nb = ev.norb_max, c.shape[1]
    # padded coefficients per atom: (natoms, nmax, nb)
    cpad = np.zeros((len(atoms), nmax, nb), dtype=complex)
    for n in np.unique(ev.atom_norb):
        sel = np.flatnonzero(ev.atom_norb == n)
        cpad[sel, :n] = c[offs[sel][:, None] + np.arange(n)[None, :]]
    rho = np.zeros(shape)
    for rng in _box_blocks(shape, box, int(chunk)):
        pts, center, radius = _block_points(box, shape, origin, rng)
        imgs = ev.images_near(center, radius)
        if len(imgs) == 0:
            continue
        imgs, phi = ev.values(pts, imgs, drop_untouched=True)
        phase = np.exp(2j * np.pi * (ev.image_shift[imgs] @ k))
        coef = (cpad[ev.image_atom[imgs]] * phase[:, None, None]).reshape(-1, nb)
        psi = phi.reshape(len(pts), -1) @ coef  # (npts, nb)
        i0, i1, j0, j1, k0, k1 = rng
        rho[i0:i1, j0:j1, k0:k1] = (np.abs(psi) ** 2).sum(axis=1).reshape(i1 - i0, j1 - j0, k1 - k0)
    return DensityGrid(rho, box, origin, periodic)


# ---------------------------------------------------------------------------------------------
# supercells
# ---------------------------------------------------------------------------------------------
def supercell_operator(
    op: RealSpaceOperator, atoms: Atoms, supercell: Atoms, *, tolerance: float = 1e-4
) -> RealSpaceOperator:
    """The operator of a periodic structure written for one of its supercells.

    ``supercell`` (e.g. ``atoms.repeat((2, 2, 2))`` or a conventional cell) must consist of
    lattice translates of ``atoms``' sites (within ``tolerance`` Å).  Every block
    <i, 0|O|j, R> of ``op`` is given to each supercell atom a on site i, as the block
    <a, 0|O|b, R'> where b is the supercell atom on site j and R' the supercell shift that place
    b's image at the same point.  Used to render a crystal's density over a larger box, and in
    tests and benchmarks (a 64-atom silicon D from the 2-atom one).
    """
    if not (np.asarray(atoms.pbc).all() and np.asarray(supercell.pbc).all()):
        raise DensityError("supercell_operator needs two fully periodic structures")
    if len(atoms) != op.natoms:
        raise DensityError(f"the operator has {op.natoms} atoms but the structure has {len(atoms)}")
    cp, cs = np.asarray(atoms.cell.array), np.asarray(supercell.cell.array)
    inv_p, inv_s = np.linalg.inv(cp), np.linalg.inv(cs)
    pp, ps = atoms.get_positions(), supercell.get_positions()
    # site of each supercell atom: (ps - pp) in primitive lattice coordinates must be integer
    f = (ps[:, None, :] - pp[None, :, :]) @ inv_p  # (ns, np, 3)
    err = np.linalg.norm((f - np.round(f)) @ cp, axis=2)
    match = err < tolerance
    if not np.all(match.sum(axis=1) == 1):
        bad = int(np.flatnonzero(match.sum(axis=1) != 1)[0])
        raise DensityError(f"supercell atom {bad} is not a lattice translate of exactly one site of the structure")
    site = np.argmax(match, axis=1)
    if supercell.get_chemical_symbols() != [atoms.get_chemical_symbols()[s] for s in site]:
        raise DensityError("supercell atoms and the sites they sit on have different elements")
    # key of a point: its site and its position modulo the supercell lattice
    def key(site_idx, pos):
        w = pos @ inv_s
        w = np.round((w - np.floor(w + 1e-9)) * 1e6).astype(np.int64) % 1000000
        return ((site_idx * 1000000 + w[:, 0]) * 1000000 + w[:, 1]) * 1000000 + w[:, 2]

    skeys = key(site, ps)
    order = np.argsort(skeys)
    # all blocks of op, both triangles
    bi, bj, bR, blocks = [], [], [], []
    for a, b, R, blk in op.iter_blocks(both_triangles=True):
        bi.append(a), bj.append(b), bR.append(R), blocks.append(blk)
    bi, bj, bR = np.array(bi), np.array(bj), np.array(bR, dtype=np.int64).reshape(-1, 3)
    out_i, out_j, out_R, out_blk = [], [], [], []
    for s in range(len(atoms)):
        mine = np.flatnonzero(site == s)  # supercell atoms on site s
        sel = np.flatnonzero(bi == s)  # blocks starting on site s
        if len(mine) == 0 or len(sel) == 0:
            continue
        disp = pp[bj[sel]] + bR[sel] @ cp - pp[s]  # (nsel, 3) from site s to the partner image
        target = ps[mine][:, None, :] + disp[None, :, :]  # (nmine, nsel, 3)
        tk = key(np.broadcast_to(bj[sel], (len(mine), len(sel))).ravel(), target.reshape(-1, 3))
        loc = np.clip(np.searchsorted(skeys[order], tk), 0, len(order) - 1)
        if not np.all(skeys[order][loc] == tk):
            raise DensityError("a block partner does not land on a supercell atom: is supercell a supercell of atoms?")
        b = order[loc]
        Rs = np.round((target.reshape(-1, 3) - ps[b]) @ inv_s).astype(np.int64)
        out_i.append(np.repeat(mine, len(sel)))
        out_j.append(b)
        out_R.append(Rs)
        out_blk.extend(blocks[k] for _ in mine for k in sel)
    return RealSpaceOperator.from_blocks(
        op.orbital_counts[site], np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_R), out_blk,
        periodic=True, name=op.name, basis=op.basis, symbols=supercell.get_chemical_symbols(),
    )


# ---------------------------------------------------------------------------------------------
# planes
# ---------------------------------------------------------------------------------------------
@dataclass
class PlaneSlice:
    """Values of a grid function on a plane.

    values (nu, nv); u (nu,), v (nv,) in-plane coordinates (Å) along ``e1``, ``e2`` from
    ``center``; ``normal`` unit vector; point (u, v) is ``center + u e1 + v e2``.
    """

    values: np.ndarray
    u: np.ndarray
    v: np.ndarray
    center: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    normal: np.ndarray

    def point(self, u: float, v: float) -> np.ndarray:
        return self.center + u * self.e1 + v * self.e2


def _parse_plane(plane, box: np.ndarray) -> np.ndarray:
    """Cartesian normal of a Miller plane '(110)' / (1, 1, 0) relative to ``box``'s lattice."""
    if isinstance(plane, str):
        s = plane.strip().strip("()[]{}").replace(",", " ")
        try:
            hkl = [int(x) for x in s.split()] if " " in s.strip() else [
                int(t) for t in __import__("re").findall(r"-?\d", s)
            ]
        except ValueError as err:
            raise DensityError(f"cannot read Miller indices from {plane!r}; write e.g. '(110)' or '(1 -1 0)'") from err
    else:
        hkl = [int(x) for x in np.asarray(plane).ravel()]
    if len(hkl) != 3 or not any(hkl):
        raise DensityError(f"a plane needs three Miller indices, not all zero; got {plane!r}")
    recip = np.linalg.inv(box).T  # rows b_i with a_i . b_j = delta_ij
    return np.asarray(hkl, dtype=float) @ recip


def density_on_plane(
    rho: np.ndarray,
    box: np.ndarray | None = None,
    plane="(110)",
    *,
    normal: Sequence[float] | None = None,
    offset: float = 0.0,
    origin: Sequence[float] | None = None,
    periodic: bool | None = None,
    extent: float | tuple[float, float] | None = None,
    resolution: float = 0.05,
    order: int = 1,
) -> PlaneSlice:
    """Interpolate a grid function onto the plane ``{p : p . n_hat = offset}`` (Cartesian, Å;
    ``offset=0`` passes through the Cartesian origin, e.g. through an atom at 0).

    ``rho`` is an (nx, ny, nz) array with its ``box`` (or a :class:`DensityGrid`, whose box,
    origin and periodicity are used).  The plane is given by Miller indices ``plane`` relative
    to the box's lattice (``"(110)"``, ``(1, -1, 0)``) or by a Cartesian ``normal``.  The window
    is centered on the box center's projection, ``extent`` Å wide (default: covers the box),
    sampled every ``resolution`` Å, with periodic wrap-around for periodic grids (zero outside a
    molecule's box).  Interpolation order 1 (trilinear) or 3 (cubic spline).
    """
    from scipy.ndimage import map_coordinates

    if isinstance(rho, DensityGrid):
        box = rho.box if box is None else box
        origin = rho.origin if origin is None else origin
        periodic = rho.periodic if periodic is None else periodic
        rho = rho.rho
    rho = np.asarray(rho, dtype=float)
    if rho.ndim != 3:
        raise DensityError(f"rho must be a 3-D grid (nx, ny, nz), got shape {rho.shape}")
    if box is None:
        raise DensityError("give the grid's box (3x3 Å) along with rho")
    box = np.asarray(box, dtype=float)
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
    periodic = True if periodic is None else periodic
    if not resolution > 0:
        raise DensityError(f"resolution must be a positive step in Å, got {resolution}")
    nvec = np.asarray(normal, dtype=float) if normal is not None else _parse_plane(plane, box)
    if nvec.shape != (3,) or not np.linalg.norm(nvec) > 0:
        raise DensityError(f"normal must be a non-zero 3-vector, got {normal!r}")
    nhat = nvec / np.linalg.norm(nvec)
    # in-plane axes: the box edge most perpendicular to the normal, projected; then n x e1
    cands = np.concatenate([box, box[[0, 1, 2]] - box[[1, 2, 0]], box[[0, 1, 2]] + box[[1, 2, 0]]])
    proj = cands - np.outer(cands @ nhat, nhat)
    lens = np.linalg.norm(proj, axis=1)
    best = int(np.argmax(lens / np.linalg.norm(cands, axis=1) - 1e-9 * np.arange(len(cands))))
    e1 = proj[best] / lens[best]
    e2 = np.cross(nhat, e1)
    box_center = origin + 0.5 * box.sum(axis=0)
    center = box_center + (offset - box_center @ nhat) * nhat
    if extent is None:
        corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]) @ box + origin - center
        ext_u = 2 * np.abs(corners @ e1).max()
        ext_v = 2 * np.abs(corners @ e2).max()
    elif np.ndim(extent) == 0:
        ext_u = ext_v = float(extent)
    else:
        ext_u, ext_v = (float(x) for x in extent)
    u = np.arange(-ext_u / 2, ext_u / 2 + 1e-9, resolution)
    v = np.arange(-ext_v / 2, ext_v / 2 + 1e-9, resolution)
    pts = center + u[:, None, None] * e1 + v[None, :, None] * e2
    frac = np.linalg.solve(box.T, (pts - origin).reshape(-1, 3).T)  # (3, npts)
    idx = frac * np.array(rho.shape)[:, None]
    if periodic:
        vals = map_coordinates(rho, idx, order=order, mode="grid-wrap")
    else:
        vals = map_coordinates(rho, idx, order=order, mode="constant", cval=0.0)
    return PlaneSlice(vals.reshape(len(u), len(v)), u, v, center, e1, e2, nhat)


# ---------------------------------------------------------------------------------------------
# cube files
# ---------------------------------------------------------------------------------------------
def write_cube(
    path: str | os.PathLike,
    atoms: Atoms,
    rho: np.ndarray,
    box: np.ndarray | None = None,
    origin: Sequence[float] | None = None,
    *,
    comment: str | None = None,
) -> Path:
    """Write a Gaussian cube file atomically (temporary file + ``os.replace``).

    ``rho`` is per Å^3 (e/Å^3 for densities) on the grid ``box`` (3, 3) Å from ``origin`` (Å;
    a :class:`DensityGrid` may be passed as ``rho`` and supplies both).  The file holds
    per-bohr^3 values (e/bohr^3: what VESTA/VMD expect) and bohr lengths, via ASE's cube
    writer.  Returns the path written.
    """
    from ase.io.cube import write_cube as ase_write_cube

    if isinstance(rho, DensityGrid):
        box = rho.box if box is None else box
        origin = rho.origin if origin is None else origin
        rho = rho.rho
    rho = np.asarray(rho, dtype=float)
    if rho.ndim != 3:
        raise DensityError(f"rho must be a 3-D grid (nx, ny, nz), got shape {rho.shape}")
    box = np.asarray(atoms.cell.array if box is None else box, dtype=float)
    if box.shape != (3, 3) or abs(np.linalg.det(box)) < 1e-12:
        raise DensityError("box must be a full-rank (3, 3) array of grid edge vectors in Å")
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
    grid_atoms = atoms.copy()
    grid_atoms.cell = box  # ASE takes the voxel vectors from the cell: cell[i] / n_i
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as fh:
            ase_write_cube(fh, grid_atoms, data=rho * Bohr**3, origin=origin,
                           comment=comment or "ase_slem density, values per bohr^3")
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_cube(path: str | os.PathLike) -> tuple[Atoms, DensityGrid]:
    """Read a cube file written by :func:`write_cube` (or any cube): (atoms, DensityGrid per Å^3)."""
    from ase.io.cube import read_cube as ase_read_cube

    with open(path) as fh:
        d = ase_read_cube(fh)
    data = np.asarray(d["data"], dtype=float) / Bohr**3
    box = np.asarray(d["atoms"].cell.array, dtype=float)
    spacing = np.asarray(d.get("spacing", box / np.array(data.shape)[:, None]))
    box = spacing * np.array(data.shape)[:, None]
    return d["atoms"], DensityGrid(data, box, d["origin"], bool(np.asarray(d["atoms"].pbc).any()))
