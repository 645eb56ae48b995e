"""Monkhorst–Pack k-point meshes, their irreducible wedge (spglib), and the mesh's tetrahedra.

k-points are fractional coordinates of the reciprocal lattice of the structure's own cell
(DESIGN.md), with the reciprocal basis b_i defined by a_i . b_j = delta_ij (no 2 pi).

Mesh convention.  Along axis i with n_i points the mesh is k_i = (g_i + o_i) / n_i for integer
g_i, where the offset o_i (in units of one mesh step, in [0, 1)) is

* ``shift="gamma"``: o_i = 0, a Gamma-centred mesh;
* ``shift=(s1, s2, s3)`` (default (0, 0, 0)): the Monkhorst–Pack points, o_i = 1/2 for even
  n_i and 0 for odd n_i (as VASP's "Monkhorst-Pack" mode and ``ase.dft.kpoints.monkhorst_pack``),
  plus an extra shift s_i in mesh steps (VASP's optional shift line).

Each point is reported in (-1/2, 1/2] per axis.  The full mesh is ordered with the first axis
running fastest, full index ``g1 + n1 * (g2 + n2 * g3)`` with g_i in [0, n_i) — the order spglib
uses for its grid, so spglib's full->irreducible map applies directly.

Symmetry.  With ``symmetry=True`` spglib's ``get_ir_reciprocal_mesh`` reduces the mesh with the
crystal's point group and time reversal (k and -k have the same energies for a spinless
Hamiltonian of real orbitals).  spglib describes grid points by integer addresses a with
k = (a + is_shift / 2) / n, so only offsets of 0 or 1/2 step can be reduced.  The map it returns
is checked against the rotations before it is used: every mesh point must be the image of its
representative under one operation (or minus one).  When spglib cannot be used — a shift of
another size, an axis that is not periodic, spglib failing, or the check failing — the mesh is
reduced by time reversal alone where the offset allows it, otherwise kept whole; ``KMesh.symmetry``
says which happened and why.

Plain numpy; no loops over k-points.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import permutations
from typing import Sequence

import numpy as np

__all__ = ["KMesh", "monkhorst_pack", "mesh_tetrahedra"]


@dataclass(frozen=True, eq=False)
class KMesh:
    """A uniform k-point mesh and its irreducible points.

    Attributes
    ----------
    mesh : (3,) int
        Points per reciprocal axis.
    offset : (3,) float
        Offset of the mesh from Gamma, in mesh steps, each in [0, 1).
    kpts : (nirr, 3) float
        Irreducible k-points, fractional (reciprocal basis of the structure's cell).
    weights : (nirr,) float
        Their weights, summing to 1 (the fraction of the full mesh each represents).
    full_kpts : (nk, 3) float
        All mesh points, first axis fastest, each component in (-1/2, 1/2].
    full_to_irr : (nk,) int
        Index into ``kpts`` of the irreducible point equivalent to each mesh point.
    irr_to_full : (nirr,) int
        Index into ``full_kpts`` of each irreducible point.
    cell : (3, 3) float
        The structure's cell (Å), rows are lattice vectors; fixes the reciprocal metric.
    equivalent_atoms : (natoms,) int
        For each atom the lowest index of an atom equivalent to it under the symmetry used
        (``arange(natoms)`` when no spatial symmetry was used).  Needed to resolve
        atom-projected quantities from the irreducible wedge.
    symmetry : str
        What reduced the mesh: e.g. "spglib: 48 operations + time reversal",
        "time reversal only (axis 2 is not periodic)", "none (symmetry=False)".
    """

    mesh: np.ndarray
    offset: np.ndarray
    kpts: np.ndarray
    weights: np.ndarray
    full_kpts: np.ndarray
    full_to_irr: np.ndarray
    irr_to_full: np.ndarray
    cell: np.ndarray
    equivalent_atoms: np.ndarray
    symmetry: str = field(default="none")

    @property
    def nk(self) -> int:
        """Points in the full mesh."""
        return int(np.prod(self.mesh))

    @property
    def nirr(self) -> int:
        """Irreducible points."""
        return len(self.kpts)

    @property
    def grid(self) -> np.ndarray:
        """Integer grid coordinates g (nk, 3), g_i in [0, n_i), of the full mesh (first axis fastest)."""
        return _grid(self.mesh)

    def to_full(self, values: np.ndarray) -> np.ndarray:
        """Expand per-irreducible-point values (nirr, ...) to the full mesh (nk, ...)."""
        values = np.asarray(values)
        if values.shape[:1] != (self.nirr,):
            raise ValueError(
                f"values have leading dimension {values.shape[:1]}, but this mesh has {self.nirr} "
                f"irreducible k-points"
            )
        return values[self.full_to_irr]

    def tetrahedra(self) -> np.ndarray:
        """Corner indices (6 * nk, 4) into the full mesh; see :func:`mesh_tetrahedra`."""
        return mesh_tetrahedra(self.mesh, self.cell)

    def __repr__(self) -> str:
        m = "x".join(str(int(n)) for n in self.mesh)
        return f"KMesh({m}, offset={tuple(float(o) for o in self.offset)}, nirr={self.nirr}, symmetry={self.symmetry!r})"


def _grid(mesh: np.ndarray) -> np.ndarray:
    """(nk, 3) integer grid coordinates, first axis fastest (spglib's order)."""
    n1, n2, n3 = (int(n) for n in mesh)
    g3, g2, g1 = np.meshgrid(np.arange(n3), np.arange(n2), np.arange(n1), indexing="ij")
    return np.stack([g1.ravel(), g2.ravel(), g3.ravel()], axis=1).astype(np.int64)


def _grid_index(g: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """Full-mesh index of integer grid coordinates (any integers; wrapped periodically)."""
    g = np.mod(g, mesh)
    return g[..., 0] + mesh[0] * (g[..., 1] + mesh[1] * g[..., 2])


def _wrap(k: np.ndarray) -> np.ndarray:
    """Fractional coordinates into (-1/2, 1/2]."""
    return k - np.ceil(k - 0.5)


def _resolve_mesh(atoms, mesh, density) -> np.ndarray:
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if (mesh is None) == (density is None):
        raise ValueError(
            "give exactly one of mesh=(n1, n2, n3) (points per reciprocal axis) or density= "
            "(k-points per Å^-1 along each reciprocal vector, e.g. density=3.5)"
        )
    if density is not None:
        from ase.calculators.calculator import kptdensity2monkhorstpack

        if not np.isfinite(density) or density <= 0:
            raise ValueError(f"density must be a positive number of k-points per Å^-1, got {density!r}")
        if pbc.any() and abs(np.linalg.det(atoms.cell[:])) < 1e-12:
            raise ValueError("density= needs a structure with a 3D cell (atoms.cell is degenerate)")
        return np.maximum(kptdensity2monkhorstpack(atoms, kptdensity=float(density), even=False), 1).astype(np.int64)
    if np.ndim(mesh) == 0:
        n = int(mesh)
        if n != mesh or n < 1:
            raise ValueError(f"mesh must be a positive integer or three of them, got {mesh!r}")
        return np.where(pbc, n, 1).astype(np.int64)
    m = np.asarray(mesh)
    if m.shape != (3,) or not np.all(np.equal(np.mod(m, 1), 0)) or np.any(m < 1):
        raise ValueError(f"mesh must be three positive integers (n1, n2, n3), got {mesh!r}")
    m = m.astype(np.int64)
    bad = np.flatnonzero(~pbc & (m > 1))
    if len(bad):
        raise ValueError(
            f"mesh {tuple(int(x) for x in m)} has {int(m[bad[0]])} points along axis {int(bad[0])}, "
            f"which is not periodic (atoms.pbc={tuple(bool(p) for p in pbc)}); use 1 there"
        )
    return m


def _resolve_offset(mesh: np.ndarray, shift, pbc: np.ndarray) -> np.ndarray:
    if isinstance(shift, str):
        key = shift.lower().replace("_", "-")
        if key == "gamma":
            off = np.zeros(3)
        elif key in ("monkhorst-pack", "mp"):
            off = 0.5 * (mesh % 2 == 0)
        else:
            raise ValueError(f"shift must be 'gamma', 'monkhorst-pack' or three numbers (mesh steps), got {shift!r}")
    else:
        s = np.asarray(shift, dtype=float)
        if s.shape != (3,) or not np.all(np.isfinite(s)):
            raise ValueError(f"shift must be three numbers in units of one mesh step, or 'gamma'; got {shift!r}")
        off = 0.5 * (mesh % 2 == 0) + s
    off = np.mod(off, 1.0)
    off[np.isclose(off, 1.0, atol=1e-12) | np.isclose(off, 0.0, atol=1e-12)] = 0.0
    bad = np.flatnonzero(~pbc & (off != 0))
    if len(bad):
        raise ValueError(
            f"axis {int(bad[0])} is not periodic, so its only k-point is 0; a shift along it makes no sense"
        )
    return off


def _spglib_cell(atoms):
    return (np.asarray(atoms.cell[:], float), atoms.get_scaled_positions(wrap=True), atoms.numbers)


def _reduce_with_spglib(atoms, mesh, offset, time_reversal, symprec):
    """(full_to_irr_fullindex (nk,), rotations, equivalent_atoms) or a string saying why not."""
    import spglib

    is_shift = np.rint(2 * offset).astype(np.intc)
    cell = _spglib_cell(atoms)
    try:
        with warnings.catch_warnings():
            # spglib 2.5+ warns about its legacy return-None error handling on every call; we
            # handle both that and exceptions, and leave its global switch alone
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = spglib.get_symmetry(cell, symprec=symprec)
            result = spglib.get_ir_reciprocal_mesh(
                mesh.astype(np.intc), cell, is_shift=is_shift, is_time_reversal=time_reversal, symprec=symprec
            )
    except Exception as exc:  # spglib raises SpglibError or others on odd cells
        return f"spglib failed: {exc}"
    if dataset is None or result is None:
        return "spglib found no symmetry"
    mapping, address = result
    address = np.asarray(address, dtype=np.int64)
    if not np.array_equal(_grid_index(address, mesh), np.arange(len(address))):
        return "spglib's grid order differs from the expected one"
    rotations = np.unique(np.asarray(dataset["rotations"], dtype=np.int64), axis=0)
    return np.asarray(mapping, dtype=np.int64), rotations, np.asarray(dataset["equivalent_atoms"], dtype=np.int64)


def _mapping_is_valid(mapping, grid, mesh, offset, rotations, time_reversal) -> bool:
    """Every point is R^T k_rep (or -R^T k_rep) modulo a reciprocal lattice vector."""
    k = (grid + offset) / mesh
    k_rep = k[mapping]
    found = np.zeros(len(k), dtype=bool)
    signs = (1.0, -1.0) if time_reversal else (1.0,)
    for rot in rotations:  # at most 48 operations; vectorized over k
        image = k_rep @ rot  # (R^T k) as a row vector is k @ R
        for sign in signs:
            d = sign * image - k
            found |= np.all(np.abs(d - np.rint(d)) < 1e-8, axis=1)
    return bool(found.all())


def _time_reversal_map(grid, mesh, offset) -> np.ndarray:
    """Map each point to the lower of (its index, index of -k); offsets must be 0 or 1/2."""
    minus = _grid_index(-grid - np.rint(2 * offset).astype(np.int64), mesh)
    return np.minimum(np.arange(len(grid)), minus)


def monkhorst_pack(
    atoms,
    mesh: int | Sequence[int] | None = None,
    *,
    density: float | None = None,
    shift: str | Sequence[float] = (0.0, 0.0, 0.0),
    symmetry: bool = True,
    time_reversal: bool = True,
    symprec: float = 1e-5,
) -> KMesh:
    """A Monkhorst–Pack (or Gamma-centred) mesh of ``atoms`` and its irreducible points.

    Parameters
    ----------
    atoms:
        ``ase.Atoms``; its cell fixes the reciprocal basis, its ``pbc`` the periodic axes
        (non-periodic axes get one point, k = 0).
    mesh:
        Points per reciprocal axis (n1, n2, n3), or one integer n for n along every periodic
        axis.  Exclusive with ``density``.
    density:
        k-points per Å^-1 along each reciprocal vector (n_i = ceil(2 pi |b_i| density), as
        ``ase.calculators.calculator.kptdensity2monkhorstpack`` with ``even=False``).
    shift:
        ``"gamma"`` for a Gamma-centred mesh; otherwise three numbers, in mesh steps, added to
        the Monkhorst–Pack points (which already sit half a step off Gamma for even n).
    symmetry:
        Reduce the mesh with spglib (point group + time reversal).  ``False`` keeps the whole
        mesh with equal weights.
    time_reversal:
        Also identify k with -k (true for any spinless Hamiltonian of real orbitals).
    symprec:
        spglib's tolerance on positions (Å).

    Returns
    -------
    :class:`KMesh` with irreducible points, weights (sum 1), the full mesh and the full ->
    irreducible map.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    m = _resolve_mesh(atoms, mesh, density)
    offset = _resolve_offset(m, shift, pbc)
    grid = _grid(m)
    nk = len(grid)
    natoms = len(atoms)
    equivalent = np.arange(natoms, dtype=np.int64)
    half_step = np.all(np.isclose(2 * offset, np.rint(2 * offset)))

    mapping = None
    if not symmetry:
        how = "none (symmetry=False)"
        mapping = np.arange(nk)
    else:
        if not pbc.all():
            why = f"axis {int(np.flatnonzero(~pbc)[0])} is not periodic"
        elif not half_step:
            why = "the mesh offset is not 0 or 1/2 step, which spglib cannot reduce"
        elif natoms == 0:
            why = "no atoms"
        else:
            res = _reduce_with_spglib(atoms, m, offset, time_reversal, symprec)
            if isinstance(res, str):
                why = res
            elif not _mapping_is_valid(res[0], grid, m, offset, res[1], time_reversal):
                why = "spglib's irreducible map failed the check against the rotations"
            else:
                mapping, rotations, equivalent = res
                how = f"spglib: {len(rotations)} operations" + (" + time reversal" if time_reversal else "")
        if mapping is None:
            if time_reversal and half_step:
                mapping = _time_reversal_map(grid, m, offset)
                how = f"time reversal only ({why})"
            else:
                mapping = np.arange(nk)
                how = f"none ({why})"

    irr_to_full, full_to_irr, counts = np.unique(mapping, return_inverse=True, return_counts=True)
    full_kpts = _wrap((grid + offset) / m)
    return KMesh(
        mesh=m,
        offset=offset,
        kpts=full_kpts[irr_to_full],
        weights=counts / nk,
        full_kpts=full_kpts,
        full_to_irr=full_to_irr.astype(np.int64),
        irr_to_full=irr_to_full.astype(np.int64),
        cell=np.asarray(atoms.cell[:], dtype=float).copy(),
        equivalent_atoms=equivalent,
        symmetry=how,
    )


# ---------------------------------------------------------------------------------------------
# tetrahedra
# ---------------------------------------------------------------------------------------------
def _reciprocal_steps(mesh: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Cartesian mesh-step vectors b_i / n_i (3, 3); axes without a usable cell get unit length."""
    cell = np.asarray(cell, dtype=float)
    if abs(np.linalg.det(cell)) > 1e-12:
        recip = np.linalg.inv(cell).T
    else:  # molecule or partial cell: any metric gives a valid split, pick the identity
        recip = np.eye(3)
    return recip / np.asarray(mesh, dtype=float)[:, None]


def mesh_tetrahedra(mesh: Sequence[int], cell: np.ndarray | None = None) -> np.ndarray:
    """Split a periodic mesh into tetrahedra: (6 * nk, 4) indices into the full mesh.

    Each mesh cell (the parallelepiped spanned by one step along every reciprocal axis from a
    mesh point) is cut into six tetrahedra of equal volume sharing its shortest body diagonal
    (in Cartesian reciprocal space from ``cell``; Blöchl, Jepsen & Andersen, PRB 49, 16223
    (1994)).  Every tetrahedron holds 1 / (6 nk) of the Brillouin zone.  Indices follow the
    full-mesh order of :class:`KMesh` (first axis fastest, periodic wrap-around).  Axes with one
    point are allowed: the tetrahedra then reduce to the triangles / segments of a 2D / 1D mesh.
    """
    m = np.asarray(mesh, dtype=np.int64)
    if m.shape != (3,) or np.any(m < 1):
        raise ValueError(f"mesh must be three positive integers, got {mesh!r}")
    steps = _reciprocal_steps(m, np.eye(3) if cell is None else cell)
    # the four body diagonals start at corners (0,0,0), (1,0,0), (0,1,0), (0,0,1)
    starts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.int64)
    diag = (1 - 2 * starts) @ steps
    start = starts[int(np.argmin(np.linalg.norm(diag, axis=1)))]
    # corners of the 6 tetrahedra: walk from `start` to the opposite corner one axis at a time
    corners = []
    for perm in permutations(range(3)):
        c = start.copy()
        path = [c.copy()]
        for ax in perm:
            c[ax] ^= 1
            path.append(c.copy())
        corners.append(path)
    corners = np.array(corners)  # (6, 4, 3)
    base = _grid(m)  # (nk, 3)
    g = base[:, None, None, :] + corners[None]  # (nk, 6, 4, 3)
    return _grid_index(g, m).reshape(-1, 4)
