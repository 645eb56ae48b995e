"""Atomic orbitals of a structure evaluated on points in space (numpy only, no torch).

An orbital is ``phi(r) = R(r) Y(r_hat)`` with ``R`` a radial shell (Å^-3/2, ``integral R^2 r^2
dr = 1``) and ``Y`` our real spherical harmonics (e3nn order, orthonormal on the sphere), so
every orbital is normalized: ``integral phi^2 d^3r = 1``.  Orbitals of a structure are ordered
as everywhere in ase_slem (atoms, then shells as declared, then m in e3nn order).

Radial shells come in two kinds, both with the interface ``l``, ``cutoff`` (Å), ``zeta``,
``__call__(r)`` and ``norm()``:

* :class:`~ase_slem.io.radial.RadialFunction`: a table on a radial grid (ABACUS ``.orb``,
  SIESTA ``.ion``), interpolated by cubic splines, exactly zero beyond its cutoff;
* :class:`GaussianRadial`: a contracted Gaussian ``r^l sum_k c_k exp(-a_k r^2)`` (PySCF bases),
  cut where its magnitude falls below ``tolerance`` (1e-8) times its maximum.

A :class:`~ase_slem.io.radial.RadialBasis` gathers the shells of each element (in our shell
order, which is the declared order of the :class:`~ase_slem.basis.Basis`); it is turned into a
JSON-ready dict by :func:`radial_basis_to_dict` (and back by :func:`radial_basis_from_dict`),
which is how a model file carries its radial functions.

:func:`evaluate_orbitals` gives the Bloch sums ``chi_mu(r) = sum_T exp(2 pi i k.T)
phi_mu(r - tau_mu - T)`` (just ``phi_mu(r - tau_mu)`` for a molecule or at Gamma the real image
sum) of all orbitals on a set of points; :class:`OrbitalEvaluator` is the engine underneath,
also used by :mod:`ase_slem.density`: it finds the lattice images of the atoms whose orbitals
reach a region and evaluates them there, vectorized over points and images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from itertools import product
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.units import Bohr

from .basis import real_spherical_harmonics, textbook_to_e3nn
from .io.radial import RadialBasis, RadialFunction

__all__ = [
    "GaussianRadial",
    "RadialBasisError",
    "radial_basis_from_pyscf",
    "truncated_radial_basis",
    "radial_basis_to_dict",
    "radial_basis_from_dict",
    "check_radial_basis",
    "real_harmonics",
    "OrbitalEvaluator",
    "evaluate_orbitals",
]

RADIAL_FORMAT = "ase_slem.radial_basis"
RADIAL_FORMAT_VERSION = 1


class RadialBasisError(ValueError):
    """A radial basis that is malformed or does not fit the structure/operator it is used with."""


# ---------------------------------------------------------------------------------------------
# Gaussian radial shells
# ---------------------------------------------------------------------------------------------
def _gaussian_overlap(l: int, a: np.ndarray, c: np.ndarray) -> float:
    """integral (r^l sum_k c_k exp(-a_k r^2))^2 r^2 dr, analytic."""
    from scipy.special import gamma

    s = a[:, None] + a[None, :]
    return float(c @ (gamma(l + 1.5) / (2.0 * s ** (l + 1.5))) @ c)


def _gaussian_cutoff(l: int, a: np.ndarray, c: np.ndarray, tolerance: float) -> float:
    """Radius (Å) beyond which the envelope r^l sum |c_k| exp(-a_k r^2) stays below tolerance * max."""
    amin = float(a.min())
    # the envelope is below any tolerance well before exp(-amin r^2) = tolerance^2 * (tiny)
    rmax = np.sqrt((np.log(1.0 / tolerance) * 2.0 + 50.0) / amin) + 1.0
    r = np.linspace(0.0, rmax, 20001)
    env = r**l * (np.exp(-np.outer(r**2, a)) @ np.abs(c))
    peak = env.max()
    above = np.flatnonzero(env >= tolerance * peak)
    return float(r[min(above[-1] + 1, len(r) - 1)])


@dataclass(frozen=True)
class GaussianRadial:
    """A contracted Gaussian radial shell ``R(r) = r^l sum_k c_k exp(-a_k r^2)``.

    Attributes
    ----------
    l : int
    exponents : (nprim,) float, Å^-2
    coefficients : (nprim,) float, Å^-(l+3/2); normalized so that ``integral R^2 r^2 dr = 1``
    cutoff : float, Å; R is set to 0 at and beyond it
    zeta : int, 1-based index among the element's shells of the same l
    """

    l: int
    exponents: np.ndarray
    coefficients: np.ndarray
    cutoff: float
    zeta: int = 1

    @classmethod
    def from_primitives(
        cls, l: int, exponents: Sequence[float], coefficients: Sequence[float], *,
        tolerance: float = 1e-8, zeta: int = 1,
    ) -> "GaussianRadial":
        """Normalize ``r^l sum_k c_k exp(-a_k r^2)`` (exponents in Å^-2, any scale of c) and
        set its cutoff where the shell's envelope falls below ``tolerance`` times its maximum."""
        a = np.asarray(exponents, dtype=float).ravel()
        c = np.asarray(coefficients, dtype=float).ravel()
        if len(a) == 0 or len(a) != len(c):
            raise RadialBasisError(
                f"a Gaussian shell needs as many exponents as coefficients (got {len(a)} and {len(c)})"
            )
        if np.any(a <= 0) or not np.all(np.isfinite(a)) or not np.all(np.isfinite(c)):
            raise RadialBasisError(f"Gaussian exponents must be finite and positive, got {a.tolist()}")
        norm = _gaussian_overlap(int(l), a, c)
        if not norm > 0:
            raise RadialBasisError("a Gaussian shell with zero norm (all coefficients cancel)")
        c = c / np.sqrt(norm)
        return cls(int(l), a, c, _gaussian_cutoff(int(l), a, c, tolerance), int(zeta))

    def __call__(self, r: np.ndarray) -> np.ndarray:
        """R at radii ``r`` (Å, any shape), Å^-3/2; 0 at and beyond the cutoff."""
        r = np.asarray(r, dtype=float)
        flat = r.reshape(-1)
        out = np.exp(-np.multiply.outer(flat * flat, self.exponents)) @ self.coefficients
        if self.l:
            out *= flat**self.l
        out[flat >= self.cutoff] = 0.0
        return out.reshape(r.shape)

    def norm(self) -> float:
        """``integral R^2 r^2 dr`` (analytic, without the cutoff); 1 for a normalized shell."""
        return _gaussian_overlap(self.l, self.exponents, self.coefficients)


def radial_basis_from_pyscf(mol, *, tolerance: float = 1e-8) -> RadialBasis:
    """Gaussian radial shells of a PySCF ``Mole`` or ``Cell`` (spherical AOs), per element.

    Each contracted function of a PySCF shell becomes one :class:`GaussianRadial`, in PySCF's
    AO order: the shell order of :meth:`ase_slem.basis.Basis.from_pyscf`.  Exponents are
    converted from bohr^-2 to Å^-2 and each contraction is renormalized in Å.
    """
    from pyscf import gto

    if getattr(mol, "cart", False):
        raise RadialBasisError("Cartesian Gaussian bases are not supported: build PySCF with cart=False")
    import re

    functions: dict[str, tuple[GaussianRadial, ...]] = {}
    for atom in range(mol.natm):
        el = re.sub(r"[^A-Za-z]", "", mol.atom_pure_symbol(atom))
        shells: list[GaussianRadial] = []
        seen_l: dict[int, int] = {}
        for b in mol.atom_shell_ids(atom):
            l = int(mol.bas_angular(b))
            a = np.asarray(mol.bas_exp(b), dtype=float)
            # contraction coefficients of normalized primitives -> of raw r^l exp(-a r^2)
            ctr = np.asarray(mol.bas_ctr_coeff(b), dtype=float) * gto.gto_norm(l, a)[:, None]
            for col in ctr.T:
                seen_l[l] = seen_l.get(l, 0) + 1
                shells.append(GaussianRadial.from_primitives(
                    l, a / Bohr**2, col, tolerance=tolerance, zeta=seen_l[l]))
        if el in functions:
            if [s.l for s in functions[el]] != [s.l for s in shells] or not all(
                np.allclose(s.exponents, t.exponents) and np.allclose(s.coefficients, t.coefficients)
                for s, t in zip(functions[el], shells)
            ):
                raise RadialBasisError(f"atoms of {el} carry different bases; give them distinct labels")
            continue
        functions[el] = tuple(shells)
    name = mol.basis if isinstance(mol.basis, str) else ""
    return RadialBasis(functions, source=f"pyscf:{name}" if name else "pyscf")


def truncated_radial_basis(radial: RadialBasis, tolerance: float) -> RadialBasis:
    """A copy of ``radial`` whose shells stop where |R| (Gaussian: its envelope) falls below
    ``tolerance`` times the shell's maximum for good; cutoffs only ever shrink.

    Long Gaussian tails cost time in :func:`ase_slem.density.electron_density` (the work per
    grid point grows like cutoff^6): 1e-8 keeps orbitals exact to 1e-8 of their peak,
    1e-6 is plenty for pictures and electron counts.
    """
    if not (np.isfinite(tolerance) and 0 < tolerance < 1):
        raise RadialBasisError(f"tolerance must lie in (0, 1), got {tolerance}")
    out = {}
    for el, shells in radial.functions.items():
        new = []
        for s in shells:
            if isinstance(s, GaussianRadial):
                cut = min(s.cutoff, _gaussian_cutoff(s.l, s.exponents, s.coefficients, tolerance))
                new.append(GaussianRadial(s.l, s.exponents, s.coefficients, cut, s.zeta))
            elif isinstance(s, RadialFunction):
                mag = np.abs(s.values)
                above = np.flatnonzero(mag >= tolerance * mag.max())
                cut = min(s.cutoff, float(s.r[min(above[-1] + 1, len(s.r) - 1)])) if len(above) else s.cutoff
                new.append(RadialFunction(s.l, s.r, s.values, cut, s.zeta, s.n))
            else:
                raise RadialBasisError(f"cannot truncate a radial shell of type {type(s).__name__}")
        out[el] = tuple(new)
    return RadialBasis(out, source=radial.source, files=dict(radial.files))


# ---------------------------------------------------------------------------------------------
# serialization
# ---------------------------------------------------------------------------------------------
def _shell_to_dict(shell) -> dict[str, Any]:
    if isinstance(shell, GaussianRadial):
        return {
            "kind": "gaussian", "l": int(shell.l), "zeta": int(shell.zeta), "cutoff": float(shell.cutoff),
            "exponents": [float(x) for x in shell.exponents],
            "coefficients": [float(x) for x in shell.coefficients],
        }
    if isinstance(shell, RadialFunction):
        return {
            "kind": "table", "l": int(shell.l), "zeta": int(shell.zeta), "cutoff": float(shell.cutoff),
            "n": None if shell.n is None else int(shell.n),
            "r": [float(x) for x in shell.r], "values": [float(x) for x in shell.values],
        }
    raise RadialBasisError(f"cannot serialize a radial shell of type {type(shell).__name__}")


def _shell_from_dict(d: Mapping[str, Any], where: str):
    try:
        kind, l, cutoff = d["kind"], int(d["l"]), float(d["cutoff"])
        if kind == "gaussian":
            a = np.asarray(d["exponents"], dtype=float)
            c = np.asarray(d["coefficients"], dtype=float)
            if a.ndim != 1 or a.shape != c.shape or len(a) == 0:
                raise RadialBasisError(f"{where}: exponents and coefficients must be equal-length lists")
            return GaussianRadial(l, a, c, cutoff, int(d.get("zeta", 1)))
        if kind == "table":
            r = np.asarray(d["r"], dtype=float)
            v = np.asarray(d["values"], dtype=float)
            if r.ndim != 1 or r.shape != v.shape or len(r) < 4 or np.any(np.diff(r) <= 0):
                raise RadialBasisError(
                    f"{where}: a table needs equal-length 'r' (ascending, >= 4 points) and 'values'"
                )
            n = d.get("n")
            return RadialFunction(l, r, v, cutoff, int(d.get("zeta", 1)), None if n is None else int(n))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, RadialBasisError):
            raise
        raise RadialBasisError(f"{where}: malformed radial shell ({type(err).__name__}: {err})") from err
    raise RadialBasisError(f"{where}: unknown radial shell kind {kind!r} (expected 'gaussian' or 'table')")


def radial_basis_to_dict(radial: RadialBasis) -> dict[str, Any]:
    """A JSON-ready description of a radial basis: per element, per shell, Gaussian or table.

    ``{"format": "ase_slem.radial_basis", "version": 1, "source": ..., "units": {...},
    "elements": {"Si": [{"kind": "table", "l": 0, "zeta": 1, "cutoff": 2.85, "r": [...],
    "values": [...]}, ...], "O": [{"kind": "gaussian", "l": 0, "exponents": [...],
    "coefficients": [...], "cutoff": ...}, ...]}}``.  Lengths in Å.
    """
    return {
        "format": RADIAL_FORMAT,
        "version": RADIAL_FORMAT_VERSION,
        "source": radial.source,
        "units": {"r": "Angstrom", "values": "Angstrom^-3/2", "exponents": "Angstrom^-2",
                  "cutoff": "Angstrom"},
        "elements": {el: [_shell_to_dict(s) for s in shells] for el, shells in radial.functions.items()},
    }


def radial_basis_from_dict(d: Mapping[str, Any]) -> RadialBasis:
    """Inverse of :func:`radial_basis_to_dict` (checks the format tag and every shell)."""
    if not isinstance(d, Mapping) or d.get("format") != RADIAL_FORMAT:
        raise RadialBasisError(
            f"not a radial basis description: expected a dict with format {RADIAL_FORMAT!r} "
            "(made by ase_slem.orbitals.radial_basis_to_dict)"
        )
    if int(d.get("version", 0)) > RADIAL_FORMAT_VERSION:
        raise RadialBasisError(
            f"radial basis format version {d.get('version')} is newer than this ase_slem reads "
            f"({RADIAL_FORMAT_VERSION}): upgrade ase_slem"
        )
    elements = d.get("elements")
    if not isinstance(elements, Mapping) or not elements:
        raise RadialBasisError("radial basis description has no 'elements'")
    functions = {
        str(el): tuple(_shell_from_dict(s, f"element {el} shell {k}") for k, s in enumerate(shells))
        for el, shells in elements.items()
    }
    return RadialBasis(functions, source=str(d.get("source", "")))


# ---------------------------------------------------------------------------------------------
# harmonics
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _harmonic_polynomial(l: int) -> tuple[np.ndarray, np.ndarray]:
    """(powers (nmono, 3), coefficients (nmono, 2l+1)): our Y_l(u) = sum_k coef_k u^powers_k.

    r^l Y_lm is a homogeneous polynomial of degree l, so on the unit sphere our harmonics are
    exact combinations of the degree-l monomials; the combination is fitted once (exact to
    rounding) from :func:`ase_slem.basis.real_spherical_harmonics` and ``textbook_to_e3nn``.
    """
    powers = np.array([(a, b, l - a - b) for a in range(l, -1, -1) for b in range(l - a, -1, -1)], dtype=np.int64)
    rng = np.random.default_rng(7 + l)
    u = rng.normal(size=(6 * len(powers) + 8, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y = real_spherical_harmonics(l, u) @ textbook_to_e3nn(l).T
    mono = np.prod(u[:, None, :] ** powers[None, :, :], axis=2)
    coef, *_ = np.linalg.lstsq(mono, y, rcond=None)
    coef[np.abs(coef) < 1e-13] = 0.0
    return powers, coef


def real_harmonics(l: int, unit: np.ndarray) -> np.ndarray:
    """Our real spherical harmonics of degree ``l`` at unit vectors ``unit`` (n, 3) -> (n, 2l+1).

    Equal to ``real_spherical_harmonics(l, unit) @ textbook_to_e3nn(l).T`` (orthonormal on the
    sphere, e3nn order), evaluated as polynomials (fast, and defined for any input vector:
    the caller passes unit vectors).
    """
    unit = np.asarray(unit, dtype=float)
    if l == 0:
        return np.full((len(unit), 1), 0.5 / np.sqrt(np.pi))
    powers, coef = _harmonic_polynomial(l)
    pw = [np.ones((len(unit), 3))]
    for _ in range(l):
        pw.append(pw[-1] * unit)
    mono = np.stack([pw[a][:, 0] * pw[b][:, 1] * pw[c][:, 2] for a, b, c in powers], axis=1)
    return mono @ coef


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def check_radial_basis(radial: RadialBasis, atoms: Atoms, orbital_counts=None, basis=None) -> None:
    """Raise :class:`RadialBasisError` unless ``radial`` covers every element of ``atoms`` and
    matches the orbitals of an operator (``orbital_counts`` per atom and/or its ``basis``)."""
    if not isinstance(radial, RadialBasis):
        raise RadialBasisError(
            f"expected an ase_slem.io.radial.RadialBasis, got {type(radial).__name__}: build one with "
            "radial_basis_from_pyscf, ase_slem.io.siesta.read_radial_basis, radial_basis_from_files "
            "or radial_basis_from_dict"
        )
    symbols = atoms.get_chemical_symbols()
    missing = sorted(set(symbols) - set(radial.functions))
    if missing:
        raise RadialBasisError(
            f"the radial basis has no functions for element(s) {', '.join(missing)} (it covers "
            f"{', '.join(radial.elements) or 'nothing'}); give radial functions for every element of the structure"
        )
    for el in set(symbols):
        for k, s in enumerate(radial.functions[el]):
            if not (np.isfinite(s.cutoff) and s.cutoff > 0):
                raise RadialBasisError(f"element {el} shell {k}: cutoff must be a positive number of Å, got {s.cutoff}")
    if basis is not None:
        for el in set(symbols):
            try:
                want = tuple(basis.shells(el))
            except ValueError:
                continue
            have = radial.shells(el)
            if want != have:
                raise RadialBasisError(
                    f"element {el}: the operator's basis has shells l={list(want)} but the radial basis has "
                    f"l={list(have)}; use the radial functions of the basis the operator was computed in"
                )
    if orbital_counts is not None:
        counts = np.asarray(orbital_counts)
        if len(counts) != len(symbols):
            raise RadialBasisError(
                f"the operator has {len(counts)} atoms but the structure has {len(symbols)}"
            )
        per_el = {el: sum(2 * l + 1 for l in radial.shells(el)) for el in set(symbols)}
        expected = np.array([per_el[s] for s in symbols])
        bad = np.flatnonzero(expected != counts)
        if len(bad):
            a = int(bad[0])
            raise RadialBasisError(
                f"atom {a} ({symbols[a]}) has {counts[a]} orbitals in the operator but {expected[a]} in the "
                f"radial basis (shells l={list(radial.shells(symbols[a]))}); the operator and the radial "
                "functions must come from the same basis"
            )


# ---------------------------------------------------------------------------------------------
# evaluation engine
# ---------------------------------------------------------------------------------------------
class _TableSpline:
    """Fast evaluation of a tabulated shell: the cubic spline of ``RadialFunction.__call__``.

    Same spline (scipy ``CubicSpline`` of the table), evaluated by Horner's rule with the
    interval found by division on uniform grids (ABACUS, SIESTA) instead of a search.
    """

    def __init__(self, shell: RadialFunction):
        from scipy.interpolate import CubicSpline

        spline = CubicSpline(shell.r, shell.values)
        self.x = np.asarray(spline.x, dtype=float)
        self.c = np.ascontiguousarray(spline.c.T)  # (nint, 4), highest power first
        steps = np.diff(self.x)
        self.uniform = bool(np.allclose(steps, steps[0], rtol=1e-10, atol=0.0))
        self.h = float(steps[0])
        self.stop = float(min(shell.cutoff, self.x[-1]))

    def __call__(self, r: np.ndarray) -> np.ndarray:
        r = np.clip(np.asarray(r, dtype=float), 0.0, self.x[-1])
        if self.uniform:
            k = np.minimum((r * (1.0 / self.h)).astype(np.int64), len(self.c) - 1)
        else:
            k = np.clip(np.searchsorted(self.x, r, side="right") - 1, 0, len(self.c) - 1)
        t = r - self.x[k]
        c = self.c[k]
        out = ((c[:, 0] * t + c[:, 1]) * t + c[:, 2]) * t + c[:, 3]
        out[r >= self.stop] = 0.0
        return out


def _fast_radial(shell):
    """A callable r -> R(r) equal to ``shell(r)``, as fast as the shell kind allows."""
    if isinstance(shell, RadialFunction):
        return _TableSpline(shell)
    return shell


@dataclass
class _Element:
    """Precomputed shell data of one element."""

    shells: tuple
    ls: tuple[int, ...]
    offsets: np.ndarray  # start column of each shell inside the atom's orbitals
    norb: int
    cutoff: float
    _gauss: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        # angular part of every orbital as one polynomial map: monomials of degree <= lmax
        # (including r=0 direction handling by the caller) -> (norb,) harmonics
        lmax = max(self.ls)
        powers = [(a, b, l - a - b) for l in range(lmax + 1) for a in range(l, -1, -1) for b in range(l - a, -1, -1)]
        index = {p: k for k, p in enumerate(powers)}
        ang = np.zeros((len(powers), self.norb))
        for l, off in zip(self.ls, self.offsets):
            if l == 0:
                ang[index[(0, 0, 0)], off] = 0.5 / np.sqrt(np.pi)
                continue
            pw, coef = _harmonic_polynomial(l)
            for row, p in zip(coef, pw):
                ang[index[tuple(int(x) for x in p)], off : off + 2 * l + 1] = row
        self._powers = np.array(powers, dtype=np.int64)
        self._angular = ang
        self._orbital_shell = np.repeat(np.arange(len(self.ls)), [2 * l + 1 for l in self.ls])
        self._lmax = lmax
        # Gaussian shells of one element usually share exponents (e.g. gth-dzvp): evaluate each
        # distinct exp(-a r^2) once and combine with a coefficient matrix
        g = [k for k, sh in enumerate(self.shells) if isinstance(sh, GaussianRadial)]
        if g:
            expo = np.unique(np.concatenate([self.shells[k].exponents for k in g]))
            coef = np.zeros((len(expo), len(g)))
            for col, k in enumerate(g):
                np.add.at(coef[:, col], np.searchsorted(expo, self.shells[k].exponents), self.shells[k].coefficients)
            self._gauss = (np.array(g), expo, coef)

    def orbitals(self, r: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """All orbitals of the element at distances ``r`` (n,) along unit vectors (n, 3): (n, norb)."""
        xyz = np.ascontiguousarray(unit.T)  # (3, n): contiguous x, y, z
        pw = [np.ones_like(xyz), xyz]
        for _ in range(2, self._lmax + 1):
            pw.append(pw[-1] * xyz)
        mono = np.empty((len(self._powers), len(r)))
        for k, (a, b, c) in enumerate(self._powers):
            np.multiply(pw[a][0], pw[b][1], out=mono[k])
            mono[k] *= pw[c][2]
        return (mono.T @ self._angular) * self.radial(r)[:, self._orbital_shell]

    def radial(self, r: np.ndarray) -> np.ndarray:
        """R of every shell at radii ``r`` (n,): (n, nshells), zero beyond each shell's cutoff."""
        out = np.empty((len(r), len(self.shells)))
        done = set()
        if self._gauss is not None:
            idx, expo, coef = self._gauss
            vals = np.exp(-np.multiply.outer(r * r, expo)) @ coef
            for col, k in enumerate(idx):
                sh = self.shells[k]
                v = vals[:, col] * r**sh.l if sh.l else vals[:, col]
                v[r >= sh.cutoff] = 0.0
                out[:, k] = v
                done.add(int(k))
        for k, sh in enumerate(self.shells):
            if k not in done:
                out[:, k] = sh(r)
        return out


@dataclass
class OrbitalEvaluator:
    """Orbitals of one structure: the lattice images that can reach the grid, and their values.

    Build with :meth:`for_structure`.  ``images`` are the candidate (atom, cell shift T) pairs:
    every atom for a molecule, and for periodic directions the images whose orbitals can reach
    the home cell (fractional coordinates in [0, 1) of the periodic axes).

    Attributes
    ----------
    atoms : Atoms
    image_atom : (nimg,) int;  image_shift : (nimg, 3) int;  image_center : (nimg, 3) Å
    image_cutoff : (nimg,) Å, largest orbital cutoff of the image's element
    norb_max : int, largest orbital count of one atom (padded layouts use it)
    """

    atoms: Atoms
    elements: dict[str, _Element]
    atom_element: list[str]
    atom_norb: np.ndarray
    image_atom: np.ndarray
    image_shift: np.ndarray
    image_center: np.ndarray
    image_cutoff: np.ndarray
    norb_max: int
    _element_of_atom: np.ndarray = field(default=None, repr=False)

    @classmethod
    def for_structure(cls, atoms: Atoms, radial: RadialBasis, *, margin: float = 0.0) -> "OrbitalEvaluator":
        """Precompute shells per element and the candidate images of ``atoms``.

        ``margin`` (Å) widens the region reached beyond the home cell (used when points lie
        outside it).  Periodic directions are those of ``atoms.pbc``; for them the cell must be
        full rank.
        """
        check_radial_basis(radial, atoms)
        symbols = atoms.get_chemical_symbols()
        elements = {}
        for el in dict.fromkeys(symbols):
            shells = tuple(radial.functions[el])
            ls = tuple(int(s.l) for s in shells)
            sizes = np.array([2 * l + 1 for l in ls], dtype=np.int64)
            elements[el] = _Element(
                tuple(_fast_radial(sh) for sh in shells), ls, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
                int(sizes.sum()), float(max(s.cutoff for s in shells)),
            )
        atom_norb = np.array([elements[s].norb for s in symbols], dtype=np.int64)
        atom_cut = np.array([elements[s].cutoff for s in symbols])
        pos = atoms.get_positions()
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any():
            cell = np.asarray(atoms.cell.array, dtype=float)
            if abs(np.linalg.det(cell)) < 1e-9:
                raise RadialBasisError(
                    "a periodic structure needs a full-rank cell (three lattice vectors) to place orbital images"
                )
            frac = np.linalg.solve(cell.T, pos.T).T  # (natoms, 3)
            heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)  # distance between lattice planes
            reach = (atom_cut[:, None] + margin) / heights[None, :]  # fractional reach per atom and axis
            lo = np.where(pbc, np.floor(-reach - frac), 0).astype(np.int64)
            hi = np.where(pbc, np.ceil(1.0 + reach - frac), 0).astype(np.int64)
            ranges = [np.arange(lo[:, d].min(), hi[:, d].max() + 1) for d in range(3)]
            shifts = np.array(list(product(*ranges)), dtype=np.int64).reshape(-1, 3)
            f_img = frac[:, None, :] + shifts[None, :, :]  # (natoms, nT, 3)
            ok = np.all((f_img >= -reach[:, None, :] - 1e-9) & (f_img <= 1.0 + reach[:, None, :] + 1e-9), axis=2)
            ia, it = np.nonzero(ok)
            image_atom, image_shift = ia.astype(np.int64), shifts[it]
            image_center = pos[image_atom] + image_shift @ cell
        else:
            image_atom = np.arange(len(atoms), dtype=np.int64)
            image_shift = np.zeros((len(atoms), 3), dtype=np.int64)
            image_center = pos.copy()
        names = list(elements)
        elem_idx = np.array([names.index(s) for s in symbols], dtype=np.int64)
        return cls(
            atoms, elements, symbols, atom_norb, image_atom, image_shift, image_center,
            atom_cut[image_atom], int(atom_norb.max()) if len(atom_norb) else 0, elem_idx,
        )

    @property
    def offsets(self) -> np.ndarray:
        """First orbital of each atom in the structure's orbital order, (natoms + 1,)."""
        return np.concatenate([[0], np.cumsum(self.atom_norb)]).astype(np.int64)

    def images_near(self, center: np.ndarray, radius: float) -> np.ndarray:
        """Indices of the candidate images whose orbitals reach the ball (center, radius Å)."""
        d = np.linalg.norm(self.image_center - np.asarray(center)[None, :], axis=1)
        return np.flatnonzero(d < self.image_cutoff + radius)

    def values(self, points: np.ndarray, images: np.ndarray, *, drop_untouched: bool = False):
        """Orbital values of ``images`` at ``points`` (npts, 3) Å, padded layout.

        Returns (npts, nimages, norb_max) in Å^-3/2: entry [p, a, mu] is orbital mu of image
        ``images[a]`` at point p (columns past the atom's orbital count are 0).  With
        ``drop_untouched``, images whose orbitals reach none of the points are left out and
        ``(kept_images, values)`` is returned.
        """
        points = np.asarray(points, dtype=float)
        images = np.asarray(images, dtype=np.int64)
        npts, nimg = len(points), len(images)
        img_elem = self._element_of_atom[self.image_atom[images]]
        groups = []
        keep = np.zeros(nimg, dtype=bool)
        for e, el in enumerate(self.elements.values()):
            cols = np.flatnonzero(img_elem == e)
            if len(cols) == 0 or npts == 0:
                continue
            d = points[:, None, :] - self.image_center[images[cols]][None, :, :]  # (npts, nE, 3)
            r2 = np.einsum("pai,pai->pa", d, d)
            inside = r2 < el.cutoff**2
            keep[cols[inside.any(axis=0)]] = True
            groups.append((el, cols, d, r2, inside))
        if drop_untouched:
            new_index = np.cumsum(keep) - 1
            images = images[keep]
        else:
            new_index = np.arange(nimg)
        out = np.zeros((npts, len(images), self.norb_max))
        for el, cols, d, r2, inside in groups:
            p_idx, a_idx = np.nonzero(inside)
            if len(p_idx) == 0:
                continue
            dv = d[p_idx, a_idx]
            r = np.sqrt(r2[p_idx, a_idx])
            safe = np.where(r > 0, r, 1.0)
            unit = dv / safe[:, None]
            unit[r == 0] = (0.0, 0.0, 1.0)  # any direction: only l = 0 is non-zero at r = 0
            out[p_idx, new_index[cols[a_idx]], : el.norb] = el.orbitals(r, unit)
        return (images, out) if drop_untouched else out

    def bloch_values(self, points: np.ndarray, kpt=None) -> np.ndarray:
        """Bloch sums of all orbitals at ``points``: (npts, norb), complex unless k is None/Gamma.

        chi_mu(r) = sum_T exp(2 pi i k.T) phi_mu(r - tau_mu - T) over the candidate images.
        """
        points = np.asarray(points, dtype=float)
        offs = self.offsets
        norb = int(offs[-1])
        gamma = kpt is None or np.allclose(np.asarray(kpt, dtype=float), 0.0)
        out = np.zeros((len(points), norb), dtype=float if gamma else complex)
        if len(points) == 0:
            return out
        center = points.mean(axis=0)
        radius = float(np.linalg.norm(points - center, axis=1).max())
        imgs = self.images_near(center, radius)
        vals = self.values(points, imgs)  # (npts, nimg, nmax)
        if not gamma:
            phase = np.exp(2j * np.pi * (self.image_shift[imgs] @ np.asarray(kpt, dtype=float)))
            vals = vals * phase[None, :, None]
        atom = self.image_atom[imgs]  # non-decreasing: candidates are grouped by atom
        uniq, starts = np.unique(atom, return_index=True)
        summed = np.add.reduceat(vals, starts, axis=1)  # (npts, nuniq, nmax): sum over images
        for n in np.unique(self.atom_norb[uniq]):
            sel = np.flatnonzero(self.atom_norb[uniq] == n)
            cols = (offs[uniq[sel]][:, None] + np.arange(n)[None, :]).ravel()
            out[:, cols] = summed[:, sel, :n].reshape(len(points), -1)
        return out


def evaluate_orbitals(
    atoms: Atoms,
    radial: RadialBasis,
    points: np.ndarray,
    kpt: Sequence[float] | None = None,
    *,
    chunk: int = 1024,
) -> np.ndarray:
    """All orbitals of ``atoms`` at ``points`` (npts, 3) in Å, in our orbital order.

    Returns (npts, norb) in Å^-3/2: ``phi_mu(r - tau_mu)`` for a molecule (no pbc), and for a
    periodic structure the Bloch sums ``sum_T exp(2 pi i k.T) phi_mu(r - tau_mu - T)`` over all
    lattice images whose orbitals reach the point (real at Gamma / ``kpt=None``; ``kpt`` in
    fractional coordinates of the reciprocal cell, as everywhere in ase_slem).  Points are
    processed ``chunk`` at a time (spatially sorted), so memory stays bounded.
    """
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (npts, 3) in Å, got {points.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of points, got {chunk}")
    if kpt is not None:
        k = np.asarray(kpt, dtype=float)
        if k.shape != (3,):
            raise ValueError(f"kpt must be 3 fractional coordinates, got shape {k.shape}")
        if not np.asarray(atoms.pbc).any() and np.any(k != 0):
            raise ValueError("a molecule (no periodic boundary conditions) has only k = Gamma")
    ev = OrbitalEvaluator.for_structure(atoms, radial, margin=_margin_outside_cell(atoms, points) + 1e-6)
    order = _spatial_order(points, chunk)
    out = None
    for s in range(0, len(points), chunk):
        idx = order[s : s + chunk]
        vals = ev.bloch_values(points[idx], kpt)
        if out is None:
            out = np.zeros((len(points), vals.shape[1]), dtype=vals.dtype)
        out[idx] = vals
    if out is None:
        return np.zeros((0, int(ev.offsets[-1])))
    return out


def _margin_outside_cell(atoms: Atoms, points: np.ndarray) -> float:
    """How far (Å) points reach beyond the home cell along periodic axes (0 for molecules)."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any() or len(points) == 0:
        return 0.0
    cell = np.asarray(atoms.cell.array, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-9:
        return 0.0  # for_structure reports the missing cell
    frac = np.linalg.solve(cell.T, points.T).T
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    beyond = np.maximum(-frac, frac - 1.0).clip(min=0.0) * heights
    return float(beyond[:, pbc].max(initial=0.0))


def _spatial_order(points: np.ndarray, chunk: int) -> np.ndarray:
    """An order of the points in which consecutive chunks are compact (sorted cubes of ~chunk points)."""
    if len(points) <= chunk:
        return np.arange(len(points))
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    ncells = max(1, len(points) // chunk)
    side = (np.prod(span) / ncells) ** (1 / 3)
    cell = np.floor((points - lo) / max(side, 1e-9)).astype(np.int64)
    return np.lexsort((cell[:, 2], cell[:, 1], cell[:, 0]))
