"""Numerical radial functions of LCAO bases: ABACUS ``.orb`` and SIESTA ``.ion`` files.

An atomic orbital is ``phi(r) = R(r) Y_lm(r_hat)``.  A :class:`RadialFunction` holds R on a
radial grid in ASE units: r in Å, R in Å^(-3/2), normalized so that
``integral R(r)^2 r^2 dr = 1`` (the files are in bohr; the readers convert).

* ABACUS ``.orb``: a header (element, cutoff, counts per l), ``Mesh``/``dr``, then for each
  shell a ``Type L N`` line followed by ``Mesh`` values of R(r) itself on r = 0, dr, 2dr, ...
  (bohr).  Shells come l by l, zeta by zeta: the order of ABACUS's orbital index.
* SIESTA ``.ion``: after the ``<preamble>`` block, symbol, label, Z, valence charge, mass,
  self energy, ``lmax, number of nl orbitals``, then per orbital a line ``l n zeta
  is_polarized population`` and a line ``npts delta cutoff`` followed by ``npts`` pairs
  ``r  R(r)/r^l`` (bohr).  SIESTA stores R divided by r^l; the reader multiplies it back.
  The orbitals come in SIESTA's orbital order (the order of ``Si.ORB_INDX``).

A :class:`RadialBasis` gathers the shells of several elements, in each code's orbital order,
which is also the shell order of the :class:`~ase_slem.basis.Basis` the readers build.
numpy/scipy only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from ase.units import Bohr

from ..basis import Basis


class RadialFileError(ValueError):
    """An orbital file (.orb / .ion) that cannot be read."""


@dataclass(frozen=True)
class RadialFunction:
    """One radial shell R(r) of angular momentum ``l``.

    Attributes
    ----------
    l : int
    r : (npts,) float, Å, ascending from 0
    values : (npts,) float, Å^(-3/2); ``integral values^2 r^2 dr = 1``
    cutoff : float, Å; R(r) = 0 beyond it
    zeta : int, 1-based zeta index within (element, l[, n])
    n : int or None, principal quantum number when the file states it (SIESTA)
    """

    l: int
    r: np.ndarray
    values: np.ndarray
    cutoff: float
    zeta: int = 1
    n: int | None = None
    _spline: object = field(default=None, init=False, repr=False, compare=False)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        """R at radii ``r`` (Å, any shape) by cubic interpolation; 0 at and beyond the cutoff."""
        from scipy.interpolate import CubicSpline

        r = np.asarray(r, dtype=float)
        if self._spline is None:
            object.__setattr__(self, "_spline", CubicSpline(self.r, self.values))
        spline = self._spline
        out = spline(np.clip(r, 0.0, self.r[-1]))
        return np.where(r < min(self.cutoff, self.r[-1]), out, 0.0)

    def norm(self) -> float:
        """``integral R^2 r^2 dr`` on the stored grid (trapezoid); 1 for a normalized shell."""
        return float(np.trapezoid(self.values**2 * self.r**2, self.r))


@dataclass
class RadialBasis:
    """Radial shells per element, in the code's orbital order.

    ``functions["Si"][k]`` is shell k of silicon; its l's are the shells of :meth:`basis`.
    """

    functions: dict[str, tuple[RadialFunction, ...]]
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(self.functions)

    def shells(self, element: str) -> tuple[int, ...]:
        """l of each shell of ``element``."""
        return tuple(f.l for f in self.functions[element])

    def basis(self) -> Basis:
        """The :class:`Basis` (shell l's per element) these radial functions define."""
        return Basis({el: self.shells(el) for el in self.functions}, name=self.source)

    def cutoff(self, element: str) -> float:
        """Largest orbital cutoff of ``element`` (Å)."""
        return max(f.cutoff for f in self.functions[element])


# ---------------------------------------------------------------------------------------------
# ABACUS .orb
# ---------------------------------------------------------------------------------------------
def read_abacus_orb(path: str | Path) -> tuple[str, tuple[RadialFunction, ...]]:
    """Read an ABACUS numerical orbital file: ``(element, shells)`` in ABACUS orbital order.

    The header counts (``Number of Sorbital-->`` ...) are checked against the ``Type L N``
    blocks actually present, and every block must hold ``Mesh`` values.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise RadialFileError(f"cannot read ABACUS orbital file {path}: {err}") from err
    head = {}
    for key, pattern in [
        ("element", r"Element\s+(\S+)"),
        ("rcut", r"Radius Cutoff\(a\.u\.\)\s+(\S+)"),
        ("mesh", r"\bMesh\s+(\d+)"),
        ("dr", r"\bdr\s+(\S+)"),
    ]:
        m = re.search(pattern, text)
        if m is None:
            raise RadialFileError(
                f"{path} is not an ABACUS .orb file: no '{pattern.split(chr(92))[0]}' line in its header"
            )
        head[key] = m.group(1)
    counts = {
        "SPDFGHIK".index(m.group(1)): int(m.group(2))
        for m in re.finditer(r"Number of ([SPDFGHIK])orbital-->\s+(\d+)", text)
    }
    npts, dr, rcut = int(head["mesh"]), float(head["dr"]), float(head["rcut"])
    # split at the "Type L N" headers; each body starts with "T L N" then the values
    parts = re.split(r"^\s*Type\s+L\s+N\s*$", text, flags=re.MULTILINE)[1:]
    if not parts:
        raise RadialFileError(f"{path}: no 'Type L N' radial-function blocks found")
    r_bohr = np.arange(npts) * dr
    shells = []
    for k, part in enumerate(parts):
        tokens = part.split()
        try:
            _, l, zeta = (int(t) for t in tokens[:3])
            values = np.array(tokens[3 : 3 + npts], dtype=float)
        except ValueError as err:
            raise RadialFileError(f"{path}: radial block {k} is malformed ({err})") from err
        if len(values) != npts:
            raise RadialFileError(
                f"{path}: radial block {k} (L={l}, N={zeta}) has {len(values)} values, the header "
                f"says Mesh {npts}; the file is truncated"
            )
        shells.append(
            RadialFunction(
                l=l,
                r=r_bohr * Bohr,
                values=values * Bohr**-1.5,
                cutoff=rcut * Bohr,
                zeta=zeta + 1,
            )
        )
    found = {l: sum(1 for s in shells if s.l == l) for l in {s.l for s in shells}}
    expected = {l: n for l, n in counts.items() if n}
    if counts and found != expected:
        raise RadialFileError(
            f"{path}: the header announces shells per l {expected} but the file holds {found}"
        )
    order = sorted(range(len(shells)), key=lambda k: (shells[k].l, shells[k].zeta))
    if order != list(range(len(shells))):
        raise RadialFileError(f"{path}: radial blocks are not in ABACUS order (l ascending, then zeta)")
    return head["element"], tuple(shells)


# ---------------------------------------------------------------------------------------------
# SIESTA .ion
# ---------------------------------------------------------------------------------------------
_ION_ORBITAL = re.compile(r"#orbital l, n, z, is_polarized, population")


def read_siesta_ion(path: str | Path) -> tuple[str, tuple[RadialFunction, ...]]:
    """Read the basis orbitals (PAOs) of a SIESTA ``.ion`` file: ``(label, shells)``.

    Only the ``# PAOs`` section is read (KB projectors, Vna, local charge and core density
    are skipped).  Returns the species label (second line after the preamble).
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise RadialFileError(f"cannot read SIESTA ion file {path}: {err}") from err
    try:
        start = next(k for k, ln in enumerate(lines) if ln.strip().startswith("</preamble>")) + 1
    except StopIteration:
        start = 0
    body = [ln for ln in lines[start:]]
    if len(body) < 8 or "# Symbol" not in body[0]:
        raise RadialFileError(f"{path} is not a SIESTA .ion file: no '# Symbol' line after the preamble")
    label = body[1].split("#")[0].strip()
    try:
        n_nl = int(body[6].split("#")[0].split()[1])
    except (IndexError, ValueError) as err:
        raise RadialFileError(f"{path}: cannot read 'Lmax for basis, no. of nl orbitals' ({err})") from err
    shells = []
    k = 0
    while k < len(body) and len(shells) < n_nl:
        if _ION_ORBITAL.search(body[k]):
            try:
                l, n, zeta = (int(t) for t in body[k].split("#")[0].split()[:3])
                npts_s, _delta, cutoff = body[k + 1].split("#")[0].split()[:3]
                npts = int(npts_s)
                table = np.array([ln.split()[:2] for ln in body[k + 2 : k + 2 + npts]], dtype=float)
            except (IndexError, ValueError) as err:
                raise RadialFileError(f"{path}: orbital block at line {start + k + 1} is malformed ({err})") from err
            if table.shape != (npts, 2):
                raise RadialFileError(
                    f"{path}: orbital l={l} n={n} zeta={zeta} has {len(table)} grid points, "
                    f"{npts} announced; the file is truncated"
                )
            r, f = table[:, 0], table[:, 1]
            shells.append(
                RadialFunction(
                    l=l,
                    r=r * Bohr,
                    values=f * r**l * Bohr**-1.5,
                    cutoff=float(cutoff) * Bohr,
                    zeta=zeta,
                    n=n,
                )
            )
            k += 2 + npts
        else:
            k += 1
    if len(shells) != n_nl:
        raise RadialFileError(f"{path}: {n_nl} basis orbitals announced, {len(shells)} found")
    return label, tuple(shells)


# ---------------------------------------------------------------------------------------------
def radial_basis_from_files(
    files: Mapping[str, str | Path] | Iterable[str | Path], source: str = ""
) -> RadialBasis:
    """Read several .orb/.ion files into one :class:`RadialBasis`.

    ``files`` is either ``{element: path}`` (the element given overrides the file's label)
    or a list of paths (elements taken from the files).
    """
    items: Sequence[tuple[str | None, Path]]
    if isinstance(files, Mapping):
        items = [(el, Path(p)) for el, p in files.items()]
    else:
        items = [(None, Path(p)) for p in files]
    functions, names = {}, {}
    for el, p in items:
        reader = read_siesta_ion if p.suffix.lower() == ".ion" else read_abacus_orb
        label, shells = reader(p)
        key = el or label
        functions[key] = shells
        names[key] = str(p)
    return RadialBasis(functions, source=source, files=names)
