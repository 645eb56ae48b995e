"""Density of states, projected DOS, electron counts, Fermi level and band gaps.

Units and normalization
-----------------------
Energies in eV.  The DOS is in states / eV per unit cell **including the spin degeneracy**:
each band holds :data:`SPIN_DEGENERACY` = 2 electrons (spin-restricted, spinless Hamiltonian),
so the DOS integrates to 2 x (number of bands) and the integrated DOS up to the Fermi level is
the electron count.  k-point weights sum to 1 (a Brillouin-zone average).

Broadening (``method``; ``width`` in eV, x = (e_nk - E) / width):

* ``"gaussian"``: delta -> exp(-x^2) / (width sqrt(pi)) (standard deviation width/sqrt(2); the
  convention of VASP's SIGMA and Quantum ESPRESSO's degauss); occupation erfc(x) / 2.
* ``"fermi-dirac"``: width = k_B T; occupation 1 / (1 + exp(x)).
* ``"methfessel-paxton"``: first order, delta -> exp(-x^2) (3/2 - x^2) / (width sqrt(pi));
  occupation erfc(x)/2 - x exp(-x^2) / (2 sqrt(pi)).  Can give small negative DOS.
* ``"tetrahedron"``: the linear tetrahedron method on the full Monkhorst–Pack mesh
  (Blöchl, Jepsen & Andersen, PRB 49, 16223 (1994); six tetrahedra per mesh cell sharing its
  shortest diagonal, bands connected by energy order).  Integrated DOS and occupied-volume
  corner weights are the exact integrals of the linearly interpolated bands, eqs. (A2)-(A10)
  and (B1)-(B7) of that paper; Blöchl's curvature correction is **not** applied: its corner
  weights sum to zero in each tetrahedron, so it would not change any count or DOS here, only
  k-resolved integrals such as band energies.  The DOS on an energy grid is reported as the
  average of the tetrahedron DOS over each grid point's bin [E_{i-1/2}, E_{i+1/2}] (from
  differences of the exact integrated DOS), so it integrates to exact electron counts and flat
  bands show up as a peak of one bin.  Needs a :class:`~ase_slem.kmesh.KMesh` in place of plain
  weights; energies may be given on its irreducible points (mapped through ``full_to_irr``) or on
  the full mesh.

Projected DOS uses Mulliken weights of each state, w_{nk,mu} = Re(c*_{mu nk} (S(k) c_nk)_mu),
which sum to 1 over the orbitals mu of an S-normalized eigenvector, so the PDOS over any
partition of the orbitals sums to the total DOS.

NaN eigenvalues (basis combinations removed by the solver for a nearly singular overlap) count
as absent states.  Plain numpy/scipy; no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
from scipy.special import erfc, expit

from .kmesh import KMesh, monkhorst_pack

__all__ = [
    "SPIN_DEGENERACY",
    "SMEARING_METHODS",
    "METHODS",
    "BandGap",
    "DOSResult",
    "density_of_states",
    "projected_density_of_states",
    "integrated_dos",
    "electron_count_below",
    "fermi_level",
    "band_gap",
    "mulliken_weights",
    "orbital_groups",
    "state_projections",
    "dos",
]

SPIN_DEGENERACY = 2.0
SMEARING_METHODS = ("gaussian", "fermi-dirac", "methfessel-paxton")
METHODS = SMEARING_METHODS + ("tetrahedron",)
_MAX_BYTES = 1 << 25  # temporaries per chunk (~32 MB)
_SQRT_PI = math.sqrt(math.pi)


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _method(method: str) -> str:
    key = str(method).lower().replace("_", "-")
    key = {"fd": "fermi-dirac", "mp": "methfessel-paxton", "tetra": "tetrahedron", "gauss": "gaussian"}.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown DOS/occupation method {method!r}; choose one of {', '.join(METHODS)}")
    return key


def _width(width: float, method: str) -> float:
    if method == "tetrahedron":
        return float(width) if width is not None else 0.0
    if width is None or not np.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive energy in eV for method {method!r}, got {width!r}")
    return float(width)


def _energies(energies) -> np.ndarray:
    e = np.asarray(energies, dtype=float)
    if e.ndim == 1:
        e = e[None, :]
    if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] == 0:
        raise ValueError(f"energies must have shape (nk, nbands) in eV; got shape {np.shape(energies)}")
    if np.isinf(e).any():
        raise ValueError("energies contain infinity; band energies must be finite (NaN marks an absent state)")
    if np.isnan(e).all():
        raise ValueError("all energies are NaN: there are no states")
    return e


def _weights(weights, nk: int) -> tuple[np.ndarray, KMesh | None]:
    """(weights (nk,), kmesh or None); a KMesh supplies both irreducible and full-mesh weights."""
    if isinstance(weights, KMesh):
        km = weights
        if nk == km.nirr:
            return km.weights, km
        if nk == km.nk:
            return np.full(nk, 1.0 / nk), km
        raise ValueError(
            f"energies are given at {nk} k-points, but the mesh {km!r} has {km.nirr} irreducible "
            f"and {km.nk} full-mesh points"
        )
    w = np.asarray(weights, dtype=float)
    if w.shape != (nk,):
        raise ValueError(f"weights must have shape (nk,) = ({nk},) to match the energies; got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("k-point weights must be finite and non-negative")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"k-point weights must sum to 1 (a Brillouin-zone average); they sum to {w.sum():.8g}. "
            f"Divide them by their sum (e.g. weights / weights.sum())."
        )
    return w, None


def _egrid(egrid) -> np.ndarray:
    g = np.atleast_1d(np.asarray(egrid, dtype=float))
    if g.ndim != 1 or len(g) == 0 or not np.all(np.isfinite(g)):
        raise ValueError("egrid must be a 1D array of finite energies (eV)")
    return g


def _full_mesh_energies(e: np.ndarray, km: KMesh) -> np.ndarray:
    return e[km.full_to_irr] if len(e) == km.nirr and km.nirr != km.nk else e


def _n_electrons(n_electrons, e: np.ndarray) -> float:
    try:
        n = float(n_electrons)
    except (TypeError, ValueError):
        raise ValueError(f"n_electrons must be a number, got {n_electrons!r}") from None
    nmax = SPIN_DEGENERACY * int(np.isfinite(e).sum(axis=1).min())
    if not np.isfinite(n) or n <= 0:
        raise ValueError(f"n_electrons must be positive, got {n_electrons!r}")
    if n > nmax + 1e-9:
        raise ValueError(
            f"n_electrons={n:g} exceeds what the bands can hold: {nmax:g} = 2 x {nmax / 2:g} bands "
            f"(spin-degenerate). Check the electron count (valence electrons only for pseudopotential "
            f"models) or compute more bands."
        )
    return n


# ---------------------------------------------------------------------------------------------
# smearing kernels
# ---------------------------------------------------------------------------------------------
def _delta(x: np.ndarray, method: str) -> np.ndarray:
    """Broadened delta function of x = (e - E) / width, per unit x."""
    if method == "gaussian":
        return np.exp(-x * x) / _SQRT_PI
    if method == "fermi-dirac":
        return 0.25 / np.cosh(np.clip(0.5 * x, -350, 350)) ** 2
    if method == "methfessel-paxton":
        return np.exp(-x * x) * (1.5 - x * x) / _SQRT_PI
    raise AssertionError(method)


def _occupation(x: np.ndarray, method: str) -> np.ndarray:
    """Occupation (0..1 per spin) of a state at x = (e - E) / width."""
    if method == "gaussian":
        return 0.5 * erfc(x)
    if method == "fermi-dirac":
        return expit(-x)
    if method == "methfessel-paxton":
        return 0.5 * erfc(x) - x * np.exp(-x * x) / (2 * _SQRT_PI)
    raise AssertionError(method)


def _smeared(e, w, egrid, method, width, kernel, proj=None) -> np.ndarray:
    """sum_k w_k sum_n p_nk kernel((e_nk - E)/width) for E in egrid -> (ng, nE); NaN states skipped."""
    valid = np.isfinite(e)
    es = e[valid]
    ws = np.broadcast_to(w[:, None], e.shape)[valid]
    ps = np.ones((len(es), 1)) if proj is None else proj[valid]
    coef = ws[:, None] * ps  # (ns, ng)
    out = np.zeros((coef.shape[1], len(egrid)))
    chunk = max(1, _MAX_BYTES // (8 * 3 * len(egrid)))
    for s in range(0, len(es), chunk):
        x = (es[s : s + chunk, None] - egrid[None, :]) / width
        out += coef[s : s + chunk].T @ kernel(x, method)
    return out


# ---------------------------------------------------------------------------------------------
# linear tetrahedron method
# ---------------------------------------------------------------------------------------------
def _region_weights(region: int, E, e1, e2, e3, e4, i21, i31, i41, i32, i42, i43) -> np.ndarray:
    """Corner weights (P, 4) for energies E (P,) inside one region of their tetrahedra.

    Region 1: e1 <= E < e2, 2: e2 <= E < e3, 3: e3 <= E < e4; e1..e4 (P,) the sorted corner
    energies and i21 = 1 / (e2 - e1) etc. (positive wherever the region is not empty).  The four
    weights sum to the fraction of the tetrahedron where the linear band lies below E; each is
    the integral of that corner's linear shape function over the occupied part (Blöchl, Jepsen &
    Andersen 1994, appendix B, without the curvature correction).
    """
    if region == 1:  # a small tetrahedron at corner 1 is occupied
        x = E - e1
        c = 0.25 * x**3 * i21 * i31 * i41
        cx = c * x
        return np.stack([4 * c - cx * (i21 + i31 + i41), cx * i21, cx * i31, cx * i41], axis=1)
    if region == 2:  # the occupied part is a union of three tetrahedra
        a, b, u, v = E - e1, E - e2, e3 - E, e4 - E
        c1 = 0.25 * a * a * i41 * i31
        c2 = 0.25 * a * b * u * i41 * i32 * i31
        c3 = 0.25 * b * b * v * i42 * i32 * i41
        c12, c123 = c1 + c2, c1 + c2 + c3
        return np.stack(
            [
                c1 + c12 * u * i31 + c123 * v * i41,
                c123 + (c2 + c3) * u * i32 + c3 * v * i42,
                c12 * a * i31 + (c2 + c3) * b * i32,
                c123 * a * i41 + c3 * b * i42,
            ],
            axis=1,
        )
    # region 3: all but a small tetrahedron at corner 4 is occupied
    y = e4 - E
    c = 0.25 * y**3 * i41 * i42 * i43
    cy = c * y
    return 0.25 - np.stack([cy * i41, cy * i42, cy * i43, 4 * c - cy * (i41 + i42 + i43)], axis=1)


def _region_count(region: int, E, e1, e2, e3, e4, i21, i31, i41, i32, i42, i43) -> np.ndarray:
    """Sum of the four corner weights of :func:`_region_weights` (occupied fraction), (P,)."""
    if region == 1:
        return (E - e1) ** 3 * (i21 * i31 * i41)
    if region == 2:
        x, d21 = E - e2, e2 - e1
        curv = (e3 - e1 + e4 - e2) * i32 * i42
        return (d21 * d21 + x * (3 * d21 + x * (3 - curv * x))) * (i31 * i41)
    return 1.0 - (e4 - E) ** 3 * (i41 * i42 * i43)


class _Tetrahedra:
    """Linear-tetrahedron integration of bands over tetrahedra (set up once, evaluated often).

    ``es`` (m, 4): corner energies of each (tetrahedron, band), sorted ascending; ``pc``
    (m, 4, ng): a quantity at the same corners to integrate (projections), or None to count
    states; ``volume``: the Brillouin-zone fraction of one tetrahedron.
    """

    def __init__(self, es: np.ndarray, pc: np.ndarray | None, volume: float) -> None:
        self.es = np.ascontiguousarray(es, dtype=float)
        self.pc = pc
        self.ng = 1 if pc is None else pc.shape[-1]
        self.volume = float(volume)
        e1, e2, e3, e4 = (np.ascontiguousarray(c) for c in self.es.T)

        def inv(d):  # a region is only visited where its denominators are positive
            return np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)

        self._cols = (e1, e2, e3, e4, inv(e2 - e1), inv(e3 - e1), inv(e4 - e1), inv(e3 - e2), inv(e4 - e2), inv(e4 - e3))

    @classmethod
    def from_mesh(cls, e: np.ndarray, km: KMesh, proj: np.ndarray | None = None) -> "_Tetrahedra":
        """Bands ``e`` (and projections) on the irreducible or full points of ``km``."""
        ef = _full_mesh_energies(e, km)  # (nk, nb)
        tet = km.tetrahedra()  # (nt, 4)
        ec = np.moveaxis(ef[tet], 2, 1).reshape(-1, 4)  # (nt * nb, 4)
        keep = np.all(np.isfinite(ec), axis=1)  # a tetrahedron with an absent state is dropped
        order = np.argsort(ec[keep], axis=1)
        es = np.take_along_axis(ec[keep], order, axis=1)
        pc = None
        if proj is not None:
            pf = _full_mesh_energies(proj, km)  # (nk, nb, ng)
            pc = np.moveaxis(pf[tet], 2, 1).reshape(-1, 4, proj.shape[-1])[keep]
            pc = np.take_along_axis(pc, order[:, :, None], axis=1)
        return cls(es, pc, 1.0 / len(tet))

    def integrated(self, E: np.ndarray) -> np.ndarray:
        """Integral below each energy of ``E`` (nE,) per spin -> (ng, nE) (states without pc).

        Tetrahedra entirely below an energy count fully through a cumulative sum; only the
        (tetrahedron, energy) pairs with e1 <= E < e4 are evaluated, generated region by region
        so that every formula runs on contiguous arrays.
        """
        E = np.asarray(E, dtype=float)
        order = np.argsort(E, kind="stable")
        Es = E[order]
        nE = len(Es)
        bounds = [np.searchsorted(Es, c, side="left") for c in self._cols[:4]]  # first E >= e_c
        full = np.ones((len(self.es), 1)) if self.pc is None else self.pc.mean(axis=1)  # (m, ng)
        out = np.stack([np.bincount(bounds[3], weights=full[:, g], minlength=nE + 1) for g in range(self.ng)])
        out = np.cumsum(out, axis=1)[:, :nE]
        per_chunk = max(1, _MAX_BYTES // (8 * (24 + 8 * self.ng)))
        for region in (1, 2, 3):
            lo, hi = bounds[region - 1], bounds[region]
            count = hi - lo
            ends = np.cumsum(count)
            start = 0
            while start < len(count):
                stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + per_chunk, "right")))
                n = count[start:stop]
                t = np.repeat(np.arange(start, stop), n)
                if len(t):
                    gi = lo[t] + np.arange(len(t)) - np.repeat(np.cumsum(n) - n, n)
                    args = (Es[gi],) + tuple(c[t] for c in self._cols)
                    if self.pc is None:
                        out[0] += np.bincount(gi, weights=_region_count(region, *args), minlength=nE)
                    else:
                        contrib = np.einsum("pc,pcg->gp", _region_weights(region, *args), self.pc[t])
                        for g in range(self.ng):
                            out[g] += np.bincount(gi, weights=contrib[g], minlength=nE)
                start = stop
        res = np.empty((self.ng, nE))
        res[:, order] = out
        return res * self.volume


def _bin_edges(egrid: np.ndarray) -> np.ndarray:
    if len(egrid) == 1:
        raise ValueError("the tetrahedron DOS needs an energy grid of at least two points")
    if np.any(np.diff(egrid) <= 0):
        raise ValueError("egrid must be strictly increasing for the tetrahedron DOS")
    mid = 0.5 * (egrid[1:] + egrid[:-1])
    return np.concatenate([[egrid[0] - (mid[0] - egrid[0])], mid, [egrid[-1] + (egrid[-1] - mid[-1])]])


# ---------------------------------------------------------------------------------------------
# public: DOS, integrated DOS, electron count
# ---------------------------------------------------------------------------------------------
def _dos_core(energies, weights, egrid, method, width, proj) -> np.ndarray:
    e = _energies(energies)
    method = _method(method)
    width = _width(width, method)
    w, km = _weights(weights, len(e))
    g = _egrid(egrid)
    if method == "tetrahedron":
        if km is None:
            raise ValueError(
                "the tetrahedron method needs the k-point mesh: pass the KMesh from "
                "ase_slem.kmesh.monkhorst_pack in place of the weights"
            )
        edges = _bin_edges(g)
        n = _Tetrahedra.from_mesh(e, km, proj).integrated(edges)
        return SPIN_DEGENERACY * np.diff(n, axis=1) / np.diff(edges)[None, :]
    return SPIN_DEGENERACY * _smeared(e, w, g, method, width, _delta, proj) / width


def density_of_states(
    energies: np.ndarray,
    weights: np.ndarray | KMesh,
    egrid: np.ndarray,
    method: str = "gaussian",
    width: float = 0.05,
) -> np.ndarray:
    """Total DOS (nE,) in states / eV per cell (spin degeneracy 2 included) on ``egrid`` (eV).

    Parameters
    ----------
    energies: (nk, nbands) band energies in eV (NaN = absent state).
    weights: (nk,) k-point weights summing to 1, or a :class:`~ase_slem.kmesh.KMesh` (required
        for ``method="tetrahedron"``; energies then on its irreducible or full points).
    egrid: (nE,) energies at which to evaluate the DOS, eV.
    method, width: broadening, see the module docstring; ``width`` in eV (unused by the
        tetrahedron method).
    """
    return _dos_core(energies, weights, egrid, method, width, None)[0]


def projected_density_of_states(
    energies: np.ndarray,
    weights: np.ndarray | KMesh,
    projections: np.ndarray,
    egrid: np.ndarray,
    method: str = "gaussian",
    width: float = 0.05,
) -> np.ndarray:
    """Projected DOS (ngroups, nE), states / eV per cell, from per-state weights.

    ``projections`` (nk, nbands, ngroups): the weight of each state on each group of orbitals
    (e.g. from :func:`state_projections`); where the weights of a state sum to 1 the PDOS sum to
    the total DOS.
    """
    e = _energies(energies)
    p = np.asarray(projections, dtype=float)
    if p.ndim == 2:
        p = p[:, :, None]
    if p.ndim != 3 or p.shape[:2] != e.shape:
        raise ValueError(
            f"projections must have shape (nk, nbands, ngroups) = {e.shape + ('ngroups',)}; got {np.shape(projections)}"
        )
    return _dos_core(e, weights, egrid, method, width, p)


def _counter(e: np.ndarray, weights, method: str, width: float):
    """Function E (nE,) -> electrons below each E (spin included), set up once for ``e``."""
    w, km = _weights(weights, len(e))
    if method == "tetrahedron":
        if km is None:
            raise ValueError(
                "the tetrahedron method needs the k-point mesh: pass the KMesh from "
                "ase_slem.kmesh.monkhorst_pack in place of the weights"
            )
        tetra = _Tetrahedra.from_mesh(e, km)
        return lambda E: SPIN_DEGENERACY * tetra.integrated(E)[0]
    return lambda E: SPIN_DEGENERACY * _smeared(e, w, E, method, width, _occupation)[0]


def electron_count_below(
    energies: np.ndarray,
    weights: np.ndarray | KMesh,
    energy: float | np.ndarray,
    method: str = "gaussian",
    width: float = 0.05,
) -> float | np.ndarray:
    """Electrons per cell (spin degeneracy 2) in states below ``energy`` (eV; scalar or array).

    With a smearing method each state contributes its occupation at a Fermi level ``energy``;
    with ``"tetrahedron"`` it is the exact integral of the linearly interpolated bands.
    """
    e = _energies(energies)
    method = _method(method)
    width = _width(width, method)
    E = np.asarray(energy, dtype=float)
    flat = np.atleast_1d(E).ravel()
    if not np.all(np.isfinite(flat)):
        raise ValueError("energy must be finite")
    n = _counter(e, weights, method, width)(flat)
    return float(n[0]) if E.ndim == 0 else n.reshape(E.shape)


def integrated_dos(
    energies: np.ndarray,
    weights: np.ndarray | KMesh,
    egrid: np.ndarray,
    method: str = "gaussian",
    width: float = 0.05,
) -> np.ndarray:
    """Integrated DOS N(E) (nE,): electrons per cell below each energy of ``egrid``."""
    return electron_count_below(energies, weights, _egrid(egrid), method, width)


# ---------------------------------------------------------------------------------------------
# gaps and the Fermi level
# ---------------------------------------------------------------------------------------------
class BandGap(NamedTuple):
    """Band edges of a filling of the bands (energies in eV).

    ``k_vbm`` / ``k_cbm`` index the k-points of the energies given.  For a metal — bands that
    overlap, or an odd number of electrons per cell, which leaves a band partly filled —
    ``gap`` is 0.0; for an odd count ``vbm``/``cbm`` are NaN and the k indices -1.
    ``direct_gap`` is min over k of (lowest empty - highest filled band) and ``direct`` says
    whether it equals ``gap`` (within the tolerance of :func:`band_gap`).  With every band filled, ``cbm`` and the gaps
    are NaN.
    """

    vbm: float
    cbm: float
    gap: float
    k_vbm: int
    k_cbm: int
    direct: bool
    direct_gap: float

    @property
    def is_metal(self) -> bool:
        return self.gap == 0.0


def band_gap(energies: np.ndarray, n_electrons: float, *, tol: float = 1e-6) -> BandGap:
    """VBM, CBM and gap for ``n_electrons`` per cell in spin-degenerate bands (nk, nbands), eV.

    Band edges closer than ``tol`` (eV) count as touching (gap 0), so that a degenerate level
    split between the last filled and first empty band by rounding is not reported as a gap.
    """
    e = _energies(energies)
    n = _n_electrons(n_electrons, e)
    nocc = n / SPIN_DEGENERACY
    if abs(nocc - round(nocc)) > 1e-6:
        return BandGap(math.nan, math.nan, 0.0, -1, -1, False, 0.0)
    nocc = int(round(nocc))
    valid = np.isfinite(e)
    vb = e[:, nocc - 1]
    k_vbm = int(np.nanargmax(vb))
    vbm = float(vb[k_vbm])
    if nocc >= e.shape[1] or not valid[:, nocc].any():
        return BandGap(vbm, math.nan, math.nan, k_vbm, -1, False, math.nan)
    cb = np.where(valid[:, nocc], e[:, nocc], np.inf)
    k_cbm = int(np.argmin(cb))
    cbm = float(cb[k_cbm])
    gap = cbm - vbm if cbm - vbm > tol else 0.0
    direct_gap = float(np.min(cb - vb))
    direct_gap = direct_gap if direct_gap > tol else 0.0
    direct = bool(gap > 0 and direct_gap - gap <= tol)
    return BandGap(vbm, cbm, gap, k_vbm, k_cbm, direct, direct_gap)


def fermi_level(
    energies: np.ndarray,
    weights: np.ndarray | KMesh,
    n_electrons: float,
    method: str = "gaussian",
    width: float = 0.05,
    *,
    tol: float = 1e-10,
) -> float:
    """Fermi level (eV) that puts ``n_electrons`` per cell into the bands.

    Insulators (an even electron count filling whole bands, and an empty band above that does not
    overlap the highest filled one on these k-points) get E_F in the middle of the gap,
    whatever the method.  Otherwise E_F solves N(E_F) = n_electrons by bisection to ``tol``
    (eV), with N from :func:`electron_count_below` for ``method`` and ``width``.
    (Methfessel–Paxton counts are not monotonic in E; on a coarse mesh with a small width
    more than one root can exist and bisection returns one of them.)
    """
    e = _energies(energies)
    n = _n_electrons(n_electrons, e)
    method = _method(method)
    width = _width(width, method)
    count = _counter(e, weights, method, width)  # validates the weights
    gap = band_gap(e, n)
    if gap.gap > 0:
        return 0.5 * (gap.vbm + gap.cbm)
    if math.isnan(gap.cbm) and not math.isnan(gap.vbm):  # every band filled
        return gap.vbm

    def excess(E):
        return float(count(np.array([E]))[0]) - n

    pad = 40 * width + 1.0
    lo, hi = float(np.nanmin(e)) - pad, float(np.nanmax(e)) + pad
    if excess(lo) > 0 or excess(hi) < 0:  # pragma: no cover - guarded by _n_electrons
        raise RuntimeError("could not bracket the Fermi level")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if excess(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------
# Mulliken projections
# ---------------------------------------------------------------------------------------------
def mulliken_weights(eigenvectors: np.ndarray, overlap_k: np.ndarray) -> np.ndarray:
    """Mulliken weights w_{mu n} = Re(c*_{mu n} (S c_n)_mu), shape (..., norb, nbands).

    ``eigenvectors`` (..., norb, nbands) with S-orthonormal columns and ``overlap_k``
    (..., norb, norb); the weights of each state sum to 1 over mu.
    """
    c = np.asarray(eigenvectors)
    s = np.asarray(overlap_k)
    if c.ndim < 2 or s.shape[-2:] != (c.shape[-2], c.shape[-2]) or s.shape[:-2] != c.shape[:-2]:
        raise ValueError(
            f"eigenvectors (..., norb, nbands) and overlap (..., norb, norb) do not match: "
            f"{c.shape} and {s.shape}"
        )
    return np.real(np.conj(c) * (s @ c))


def orbital_groups(H, atoms=None, by: str = "element") -> tuple[list[str], np.ndarray]:
    """Partition the orbitals of an operator's structure: (group names, (ngroups, norb) 0/1 matrix).

    ``by``: ``"atom"`` (names "Si0", "Si1", ...; plain "0", "1" without symbols), ``"element"``,
    ``"l"`` ("s", "p", "d", ...), or ``"element-l"`` ("Si-s", "Si-p", ...).  Symbols come from
    ``atoms`` or the operator; ``"l"`` needs the operator's basis (``H.basis``).
    """
    from .basis import L_LETTERS

    symbols = atoms.get_chemical_symbols() if atoms is not None else H.symbols
    atom_of = np.repeat(np.arange(H.natoms), H.orbital_counts)
    key = str(by).lower()
    if key in ("l", "element-l"):
        if H.basis is None or symbols is None:
            raise ValueError(
                f"projection by {by!r} needs the orbital basis: build the operator with basis=Basis(...) "
                f"and give the atoms (or use by='atom' / 'element')"
            )
        table = H.basis.orbital_table(symbols)
        if len(table["l"]) != H.norb:
            raise ValueError(f"the basis gives {len(table['l'])} orbitals for these atoms, the operator {H.norb}")
        letters = np.array([L_LETTERS[l] for l in table["l"]])
        labels = letters if key == "l" else np.char.add(np.char.add(table["element"].astype(str), "-"), letters)
    elif key == "atom":
        labels = np.array([f"{symbols[a]}{a}" if symbols is not None else str(a) for a in atom_of])
    elif key == "element":
        if symbols is None:
            raise ValueError("projection by element needs chemical symbols: pass the atoms")
        labels = np.asarray(symbols)[atom_of]
    else:
        raise ValueError(f"unknown projection {by!r}; choose 'atom', 'element', 'l' or 'element-l'")
    _, first = np.unique(labels, return_index=True)
    names = [str(labels[i]) for i in np.sort(first)]  # order of first appearance
    matrix = (labels[None, :] == np.array(names)[:, None]).astype(float)
    return names, matrix


def state_projections(H, S, kpts, groups: np.ndarray, *, batch: int | None = None, **solver_kwargs):
    """Band energies (nk, nbands) and Mulliken weights per orbital group (nk, nbands, ngroups).

    ``groups`` (ngroups, norb) from :func:`orbital_groups`.  k-points are solved in batches so
    only one batch of eigenvectors is held at a time.
    """
    from .solvers import solve_k

    k = np.asarray(kpts, dtype=float).reshape(-1, 3)
    G = np.asarray(groups, dtype=float)
    if G.ndim != 2 or G.shape[1] != H.norb:
        raise ValueError(f"groups must have shape (ngroups, norb={H.norb}); got {G.shape}")
    if batch is None:
        batch = max(1, int((1 << 27) // max(1, 16 * 3 * H.norb * H.norb)))
    es, ps = [], []
    for s in range(0, len(k), batch):
        kb = k[s : s + batch]
        w, v = solve_k(H, S, kb, eigvals_only=False, **solver_kwargs)
        sk = S.bloch(kb)
        if np.isrealobj(v):
            sk = sk.real
        mw = mulliken_weights(v, sk)  # (nkb, norb, nbands)
        es.append(w)
        ps.append(np.einsum("gm,kmn->kng", G, mw))
    return np.concatenate(es), np.concatenate(ps)


def _symmetrize_atoms(pdos: np.ndarray, G: np.ndarray, H, km: KMesh) -> np.ndarray:
    """Average atom-resolved PDOS over symmetry-equivalent atoms (exact with IBZ sampling)."""
    eq = km.equivalent_atoms
    if len(eq) != H.natoms or np.array_equal(eq, np.arange(H.natoms)):
        return pdos
    atom_of = np.repeat(np.arange(H.natoms), H.orbital_counts)
    group_atom = np.array([atom_of[np.flatnonzero(row)[0]] for row in G])
    cls = eq[group_atom]
    out = np.empty_like(pdos)
    for c in np.unique(cls):
        members = cls == c
        out[members] = pdos[members].mean(axis=0)
    return out


# ---------------------------------------------------------------------------------------------
# high level
# ---------------------------------------------------------------------------------------------
@dataclass
class DOSResult:
    """DOS of one calculation.  Energies in eV, DOS in states / eV per cell (spin included).

    Attributes: ``egrid`` (nE,), ``dos`` (nE,), ``idos`` (nE,) electrons below each energy,
    ``pdos`` {group name: (nE,)}, ``fermi_level`` (eV or None), ``gap`` (:class:`BandGap` or
    None), ``energies`` (nirr, nbands) on ``kmesh.kpts``, ``projections`` (nirr, nbands, ngroups)
    or None, ``method``, ``width``, ``n_electrons``.
    """

    egrid: np.ndarray
    dos: np.ndarray
    idos: np.ndarray
    pdos: dict[str, np.ndarray]
    fermi_level: float | None
    gap: BandGap | None
    energies: np.ndarray
    kmesh: KMesh
    method: str
    width: float
    n_electrons: float | None
    projections: np.ndarray | None = None
    group_names: list[str] = field(default_factory=list)

    def plot(self, ax=None, *, relative_to_fermi: bool = True, show_pdos: bool = True):
        """Plot DOS (and PDOS) with matplotlib; returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        shift = self.fermi_level if (relative_to_fermi and self.fermi_level is not None) else 0.0
        x = self.egrid - shift
        ax.plot(x, self.dos, color="k", lw=1.2, label="total")
        if show_pdos:
            for name, y in self.pdos.items():
                ax.plot(x, y, lw=1.0, label=name)
        if self.fermi_level is not None:
            ax.axvline(self.fermi_level - shift, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("E - E_F (eV)" if shift else "E (eV)")
        ax.set_ylabel("DOS (states / eV / cell)")
        ax.set_xlim(x[0], x[-1])
        ax.legend(frameon=False, fontsize="small")
        return ax


def dos(
    H,
    S,
    atoms,
    mesh: int | Sequence[int] | None = None,
    *,
    density: float | None = None,
    shift="monkhorst-pack",
    symmetry: bool = True,
    method: str = "auto",
    width: float = 0.05,
    egrid: np.ndarray | None = None,
    npts: int = 2001,
    n_electrons: float | None = None,
    density_matrix=None,
    pdos: str | None = "element",
) -> DOSResult:
    """DOS, PDOS, Fermi level and gap of a pair of operators H (eV), S on a k-point mesh.

    Parameters
    ----------
    H, S: :class:`~ase_slem.operators.RealSpaceOperator` of ``atoms``.
    mesh / density / shift / symmetry: the k-point mesh, see :func:`ase_slem.kmesh.monkhorst_pack`;
        default ``density=3.5`` k-points per Å^-1 along periodic axes (Gamma only for molecules).
    method: ``"auto"`` (tetrahedron for periodic structures, gaussian for molecules) or one of
        :data:`METHODS`.
    width: smearing width in eV (smearing methods).
    egrid: energies (eV) for the DOS; default ``npts`` points spanning the bands with a margin.
    n_electrons: electrons per cell; or give ``density_matrix`` and it is Tr(D S).  Without
        either, no Fermi level or gap is computed.
    pdos: ``"element"``, ``"atom"``, ``"l"``, ``"element-l"`` or None.  Atom-resolved PDOS are
        averaged over symmetry-equivalent atoms (exact for the full Brillouin zone).
    """
    H.check_structure(atoms)
    S.check_structure(atoms)
    if not np.array_equal(H.orbital_counts, S.orbital_counts):
        raise ValueError("H and S belong to different structures or bases")
    periodic = bool(np.any(atoms.pbc)) and H.periodic
    if mesh is None and density is None:
        if periodic:
            density = 3.5
        else:
            mesh = 1
    km = monkhorst_pack(atoms, mesh, density=density, shift=shift, symmetry=symmetry)
    if not H.periodic and km.nk > 1:
        raise ValueError(f"{H.name} is molecular (no cell shifts): use mesh=1")
    method = ("tetrahedron" if periodic and km.nk > 1 else "gaussian") if method == "auto" else _method(method)
    if density_matrix is not None and n_electrons is None:
        n_electrons = float(density_matrix.trace_product(S))

    names: list[str] = []
    proj = None
    if pdos is not None:
        names, G = orbital_groups(H, atoms, pdos)
        e, proj = state_projections(H, S, km.kpts, G)
    else:
        from .solvers import band_energies

        e = band_energies(H, S, km.kpts)
    weights = km if method == "tetrahedron" else km.weights

    if egrid is None:
        pad = 1.0 + (0.0 if method == "tetrahedron" else 6 * width)
        egrid = np.linspace(np.nanmin(e) - pad, np.nanmax(e) + pad, int(npts))
    egrid = _egrid(egrid)
    idos = integrated_dos(e, weights, egrid, method, width)
    pd: dict[str, np.ndarray] = {}
    if proj is None:
        total = density_of_states(e, weights, egrid, method, width)
    else:
        p = projected_density_of_states(e, weights, proj, egrid, method, width)
        total = p.sum(axis=0)  # the groups partition the orbitals and Mulliken weights sum to 1
        if str(pdos).lower() == "atom":
            p = _symmetrize_atoms(p, G, H, km)
        pd = {name: p[i] for i, name in enumerate(names)}
    ef = gap = None
    if n_electrons is not None:
        ef = fermi_level(e, weights, n_electrons, method, width)
        gap = band_gap(e, n_electrons)
    return DOSResult(
        egrid=egrid, dos=total, idos=idos, pdos=pd, fermi_level=ef, gap=gap, energies=e, kmesh=km,
        method=method, width=width, n_electrons=n_electrons, projections=proj, group_names=names,
    )
