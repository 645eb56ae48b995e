"""Band structures: k-point paths in the user's cell, band energies, orbital character.

k-points are fractional coordinates of the reciprocal lattice of the *user's* cell
(``atoms.cell``, DESIGN.md), whatever cell the path was designed for.

Paths.  ``method="seekpath"`` takes the crystallographic path of Hinuma et al. (seekpath,
Comp. Mat. Sci. 128, 140 (2017)) for the standardized primitive cell seekpath finds.  seekpath
may rotate, permute and reduce the cell; it reports the rotation ``rotation_matrix`` with
``v_std = rotation_matrix @ v_user`` for any Cartesian vector, so a special point with
Cartesian coordinates k_std (rows, 1/Angstrom incl. 2 pi) in the standardized frame is
``k_std @ rotation_matrix`` in the user's frame and has fractional coordinates
``k_user @ atoms.cell.T / (2 pi)`` in the user's reciprocal basis.  The mapping is checked: the
user's cell vectors must be integer combinations of seekpath's primitive vectors (brought back
to the user's frame).  For a supercell the path is the primitive cell's: the bands appear
folded, the labels keep their primitive-cell meaning.  ``method="ase"`` (and the automatic
fallback for 1D/2D periodicity or when seekpath finds no symmetry) uses ASE's
``Cell.bandpath``, which also works in the user's cell.

Energies in eV.  Plain numpy + seekpath/ASE; no torch.
"""
from __future__ import annotations

import warnings
from typing import Literal, Mapping

import numpy as np
from ase import Atoms
from ase.dft.kpoints import BandPath
from ase.spectrum.band_structure import BandStructure

from .operators import OperatorError, RealSpaceOperator
from .solvers import band_energies, solve_k

__all__ = [
    "BandPathError",
    "band_path",
    "band_structure",
    "band_weights",
    "band_character",
    "fermi_reference",
]


class BandPathError(ValueError):
    """A band path cannot be made for this structure (no cell, not periodic, ...)."""


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
def _check_periodic_cell(atoms: Atoms) -> np.ndarray:
    """Periodic axes of ``atoms`` after checking that a band path makes sense for it."""
    if not isinstance(atoms, Atoms):
        raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        raise BandPathError(
            "the structure is not periodic (atoms.pbc is all False): a band structure needs a "
            "crystal. Set atoms.cell and atoms.pbc, or for a molecule take its levels at Gamma "
            "with band_energies(H, S, [0, 0, 0])"
        )
    cell = atoms.cell[:]
    lengths = np.linalg.norm(cell, axis=1)
    if np.any(lengths[pbc] < 1e-8):
        raise BandPathError(
            f"atoms.pbc={atoms.pbc.tolist()} but the cell has no vector along periodic axis "
            f"{int(np.flatnonzero(pbc & (lengths < 1e-8))[0])}: give the structure a cell"
        )
    if atoms.cell.rank < 3:
        raise BandPathError(
            "the cell is degenerate (zero volume): give every axis a vector, using vacuum along "
            "the non-periodic ones"
        )
    return pbc


def _label(name: str) -> str:
    """seekpath label -> ASE path-string label: GAMMA -> G, X_1 -> X1."""
    return "G" if name.upper() == "GAMMA" else name.replace("_", "")


def _seekpath_special_points(atoms: Atoms, symprec: float) -> tuple[dict[str, np.ndarray], str]:
    """seekpath's special points in the user's fractional reciprocal coordinates, and the path."""
    import seekpath

    structure = (atoms.cell[:], atoms.get_scaled_positions(wrap=True), atoms.numbers)
    with warnings.catch_warnings():  # spglib's notice about its error-handling API, not ours
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="spglib")
        res = seekpath.get_path(structure, with_time_reversal=True, symprec=symprec)
    if "rotation_matrix" not in res:  # pragma: no cover - seekpath >= 2.0 reports it
        raise BandPathError(
            "this seekpath version does not report the rotation of its standardized cell; "
            "upgrade seekpath (>= 2.1) or use method='ase'"
        )
    rot = np.asarray(res["rotation_matrix"], dtype=float)
    user = atoms.cell[:]
    prim_user = np.asarray(res["primitive_lattice"], dtype=float) @ rot
    combo = user @ np.linalg.inv(prim_user)  # user vectors in seekpath's primitive basis
    if np.max(np.abs(combo - np.rint(combo))) > 1e-3:
        raise BandPathError(  # pragma: no cover - would be a seekpath convention change
            "could not map seekpath's standardized cell back to this cell (its primitive vectors "
            "do not build the cell); use method='ase'"
        )
    recip_std = np.asarray(res["reciprocal_primitive_lattice"], dtype=float)  # rows, with 2 pi
    points = {}
    for name, frac in res["point_coords"].items():
        k_user = (np.asarray(frac, dtype=float) @ recip_std) @ rot
        points[_label(name)] = k_user @ user.T / (2 * np.pi)
    sections, last = [], None
    for a, b in res["path"]:
        a, b = _label(a), _label(b)
        if a == last:
            sections[-1] += b
        else:
            sections.append(a + b)
        last = b
    return points, ",".join(sections)


def band_path(
    atoms: Atoms,
    npoints: int = 200,
    method: Literal["seekpath", "ase"] = "seekpath",
    *,
    path: str | None = None,
    symprec: float = 1e-3,
) -> BandPath:
    """A k-point path through the Brillouin zone, in fractional coordinates of ``atoms.cell``.

    Parameters
    ----------
    atoms:
        The structure whose cell the k-points refer to (any orientation or cell choice).
    npoints:
        Total number of k-points, distributed over the segments by their length.
    method:
        ``"seekpath"`` (default): the HPKOT path of seekpath, mapped back to this cell (see the
        module docstring); falls back to ASE, with a warning, when seekpath finds no symmetry.
        Structures periodic along only one or two axes always use ASE.  ``"ase"``: ASE's
        ``atoms.cell.bandpath``.
    path:
        With ``method="ase"``, a path string of ASE special points such as ``"GXWKGLUWLK,UX"``.
    symprec:
        Symmetry tolerance (Angstrom) for seekpath/spglib.

    Returns an ``ase.dft.kpoints.BandPath`` whose ``kpts`` (nk, 3) are fractional in the
    user's reciprocal cell, with ``special_points`` and a path string (``","`` marks a jump).
    """
    pbc = _check_periodic_cell(atoms)
    if npoints < 2:
        raise ValueError(f"npoints must be at least 2, got {npoints}")
    if method not in ("seekpath", "ase"):
        raise ValueError(f"method must be 'seekpath' or 'ase', not {method!r}")
    if path is not None and method != "ase":
        raise ValueError("a path string is given in ASE's special-point names: use method='ase' with it")
    if method == "seekpath" and pbc.all():
        import seekpath

        try:
            points, path_string = _seekpath_special_points(atoms, symprec)
        except (seekpath.SymmetryDetectionError, ValueError) as err:
            if isinstance(err, BandPathError):
                raise
            warnings.warn(f"seekpath could not standardize the cell ({err}); using ASE's band path", stacklevel=2)
        else:
            return BandPath(atoms.cell, special_points=points, path=path_string).interpolate(npoints=npoints)
    try:
        ase_path = atoms.cell.bandpath(path=path, npoints=npoints, pbc=pbc)
    except Exception as err:  # ASE raises assorted errors for unsupported cells / paths
        raise BandPathError(f"ASE could not make a band path for this cell: {err}") from err
    # ASE's fractional k-points refer to this cell's basis, but the BandPath carries ASE's
    # standard form of the cell (same metric, other orientation); re-anchor it on atoms.cell so
    # Cartesian k-points are in the user's frame.  The metrics must agree.
    std, own = ase_path.cell[:][pbc], atoms.cell[:][pbc]
    if not np.allclose(std @ std.T, own @ own.T, atol=1e-6):
        raise BandPathError(  # pragma: no cover - would be an ASE convention change
            "ASE's band path does not refer to this cell's basis; use method='seekpath'"
        )
    return BandPath(atoms.cell, kpts=ase_path.kpts, special_points=ase_path.special_points, path=ase_path.path)


# ---------------------------------------------------------------------------------------------
# energies
# ---------------------------------------------------------------------------------------------
def _check_operators(H: RealSpaceOperator, S: RealSpaceOperator, atoms: Atoms) -> None:
    for op in (H, S):
        if not isinstance(op, RealSpaceOperator):
            raise TypeError(f"expected RealSpaceOperator for H and S, got {type(op).__name__}")
        op.check_structure(atoms)
    if not np.array_equal(H.orbital_counts, S.orbital_counts):
        raise OperatorError(f"H ({H.norb} orbitals) and S ({S.norb} orbitals) belong to different bases")
    if not H.periodic:
        raise BandPathError(
            "the Hamiltonian is molecular (built without periodic boundary conditions): only "
            "k = Gamma exists; use band_energies(H, S, [0, 0, 0])"
        )


def _kpoints_of(path, atoms: Atoms | None = None) -> np.ndarray:
    if isinstance(path, BandPath):
        if atoms is not None and not np.allclose(path.cell[:], atoms.cell[:], atol=1e-6):
            raise BandPathError(
                "the band path was made for a different cell than the structure's: make it "
                "with band_path(atoms) for this structure (k-points are fractional in its cell)"
            )
        return np.asarray(path.kpts, dtype=float)
    k = np.asarray(path, dtype=float)
    if k.ndim != 2 or k.shape[1] != 3:
        raise ValueError(f"k-points must be a BandPath or an array (nk, 3); got shape {k.shape}")
    return k


def fermi_reference(
    H: RealSpaceOperator,
    S: RealSpaceOperator,
    atoms: Atoms,
    n_electrons: float,
    *,
    extra_energies: np.ndarray | None = None,
    density: float = 4.0,
) -> float:
    """Fermi level (eV) from a Gamma-centred k-mesh (``density`` points per 1/Angstrom).

    Uses :func:`ase_slem.dos.fermi_level` (Gaussian smearing 0.05 eV; for an insulator the
    middle of the gap).  For an insulator the band edges are refined with ``extra_energies``
    (e.g. the band energies along the path, (nk, nbands)), so the gap centre is that of the
    mesh and the path together.
    """
    from .dos import band_gap, fermi_level
    from .kmesh import monkhorst_pack

    mesh = monkhorst_pack(atoms, density=density, shift="gamma")
    e_mesh = band_energies(H, S, mesh.kpts)
    ef = fermi_level(e_mesh, mesh, n_electrons)
    if extra_energies is not None:
        gap = band_gap(np.concatenate([e_mesh, np.asarray(extra_energies)]), n_electrons)
        if gap.gap > 0:
            ef = 0.5 * (gap.vbm + gap.cbm)
    return float(ef)


def band_structure(
    H: RealSpaceOperator,
    S: RealSpaceOperator,
    atoms: Atoms,
    path: BandPath | None = None,
    npoints: int = 200,
    reference: Literal["fermi"] | float | None = "fermi",
    n_electrons: float | None = None,
    **solver_kwargs,
) -> BandStructure:
    """Bands of (H, S) along a path: an ``ase.spectrum.band_structure.BandStructure``.

    Parameters
    ----------
    H, S:
        Hamiltonian (eV) and overlap of ``atoms`` (checked: atom count and basis).
    atoms:
        The structure; its cell defines the fractional k-points.
    path:
        An ``ase.dft.kpoints.BandPath`` for this cell, or None for ``band_path(atoms, npoints)``.
    reference:
        ``"fermi"``: the Fermi level for ``n_electrons`` per cell (see :func:`fermi_reference`);
        a number: that energy in eV; None: 0.
    n_electrons:
        Valence electrons per cell (e.g. 8 for the 2-atom silicon cell); needed for "fermi".
    solver_kwargs:
        Passed to :func:`ase_slem.solvers.band_energies` (``driver``, ``overlap_threshold``).

    Returns a BandStructure with energies (1, nk, nbands) in eV (absolute, not shifted) and
    ``reference`` set, so ``bs.plot()`` and :func:`ase_slem.plotting.plot_bands` draw E - E_F.
    """
    _check_operators(H, S, atoms)
    if isinstance(reference, str):
        if reference != "fermi":
            raise ValueError(f"reference must be 'fermi', a number (eV) or None, not {reference!r}")
        if n_electrons is None:
            raise ValueError(
                "reference='fermi' needs n_electrons, the valence electrons per cell (e.g. 8 for "
                "2-atom silicon); or pass reference=None or an energy in eV"
            )
    if path is None:
        path = band_path(atoms, npoints=npoints)
    kpts = _kpoints_of(path, atoms)
    energies = band_energies(H, S, kpts, **solver_kwargs)
    if reference is None:
        ref = 0.0
    elif isinstance(reference, str):
        ref = fermi_reference(H, S, atoms, n_electrons, extra_energies=energies)
    else:
        ref = float(reference)
    return BandStructure(path, energies[None], reference=ref)


# ---------------------------------------------------------------------------------------------
# orbital character (fat bands)
# ---------------------------------------------------------------------------------------------
def band_weights(H: RealSpaceOperator, S: RealSpaceOperator, kpts, **solver_kwargs) -> np.ndarray:
    """Mulliken weight of every orbital in every state: (nk, nbands, norb).

    w[k, n, mu] = Re(c*_{mu n}(k) (S(k) c_n(k))_mu); each state's weights sum to 1.
    ``kpts``: a BandPath or fractional k-points (nk, 3).
    """
    from .dos import mulliken_weights

    k = _kpoints_of(kpts)
    _, v = solve_k(H, S, k, eigvals_only=False, **solver_kwargs)
    sk = S.bloch(k)
    if np.isrealobj(v):
        sk = sk.real
    return np.swapaxes(mulliken_weights(v, sk), 1, 2)


def band_character(
    H: RealSpaceOperator,
    S: RealSpaceOperator,
    kpts,
    atoms: Atoms | None = None,
    by: str = "element-l",
    **solver_kwargs,
) -> dict[str, np.ndarray]:
    """Mulliken weight of orbital groups per state: name -> (nk, nbands), e.g. {"Si-s", "Si-p"}.

    ``by``: ``"element"``, ``"l"``, ``"element-l"`` or ``"atom"`` (see
    :func:`ase_slem.dos.orbital_groups`).  The weights of all groups sum to 1 per state.
    Feed the result to :func:`ase_slem.plotting.plot_bands` as ``weights`` for fat bands.
    """
    from .dos import orbital_groups, state_projections

    if atoms is not None:
        H.check_structure(atoms)
    names, groups = orbital_groups(H, atoms, by)
    k = _kpoints_of(kpts, atoms)
    _, proj = state_projections(H, S, k, groups, **solver_kwargs)
    return {name: proj[:, :, g] for g, name in enumerate(names)}
