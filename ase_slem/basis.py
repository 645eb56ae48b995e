"""Orbital bases: shells per element, the orbital order, and converters to other codes' orders.

Our orbital order inside an atom (fixed by DESIGN.md): shells in the order the basis declares
them ("2s2p1d" = s, s, p, p, d), and inside a shell of angular momentum l the 2l+1 real
spherical harmonics in e3nn's order.  e3nn's real spherical harmonics are the textbook real
harmonics (m = -l..l, no Condon-Shortley phase) written in a frame whose polar axis is y:
l=1 is (x, y, z), l=2 is (xz, xy, 3y^2-r^2, yz, z^2-x^2), and a rotation Q of the structure
acts on an l-block with e3nn's Wigner-D matrix D_l(Q).

Other codes use the textbook harmonics with z as polar axis, each with its own m order and
signs.  A convention is described by, for each l, the position of each of its functions in the
textbook order m = -l..l and a sign; :func:`convention_matrix` turns that into the orthogonal
matrix C with ``phi_ours = C @ phi_theirs``, so operator blocks convert as
``O_ours = C_i @ O_theirs @ C_j.T`` (:meth:`Basis.convert_block`).

This module uses numpy only (no torch): post-processing depends on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

L_LETTERS = "spdfghik"
_SHELL_RE = re.compile(r"(\d*)([spdfghik])", re.IGNORECASE)


class BasisError(ValueError):
    """A basis specification that cannot be understood or does not match a structure."""


def parse_shells(spec: str | Sequence[int]) -> tuple[int, ...]:
    """Angular momenta of the shells of one element, in declared order.

    ``"2s2p1d"`` -> ``(0, 0, 1, 1, 2)``; ``"spd"`` -> ``(0, 1, 2)``; a sequence of ints is
    returned as a tuple.
    """
    if not isinstance(spec, str):
        ls = tuple(int(l) for l in spec)
        if any(l < 0 for l in ls):
            raise BasisError(f"negative angular momentum in shell list {list(spec)}")
        return ls
    s = spec.replace(" ", "")
    pos, ls = 0, []
    for match in _SHELL_RE.finditer(s):
        if match.start() != pos:
            break
        count = int(match.group(1)) if match.group(1) else 1
        ls.extend([L_LETTERS.index(match.group(2).lower())] * count)
        pos = match.end()
    if pos != len(s) or not ls:
        raise BasisError(
            f"cannot parse basis string {spec!r}: expected shells such as '2s2p1d' "
            f"(a count followed by one of {L_LETTERS!r})"
        )
    return tuple(ls)


def shells_to_string(ls: Sequence[int]) -> str:
    """Inverse of :func:`parse_shells` for runs of equal l: ``(0,0,1,1,2)`` -> ``"2s2p1d"``."""
    out, k = [], 0
    while k < len(ls):
        n = 1
        while k + n < len(ls) and ls[k + n] == ls[k]:
            n += 1
        out.append(f"{n}{L_LETTERS[ls[k]]}")
        k += n
    return "".join(out)


def _symbol(z_or_symbol: int | str) -> str:
    if isinstance(z_or_symbol, str):
        if z_or_symbol not in atomic_numbers:
            raise BasisError(f"unknown chemical symbol {z_or_symbol!r}")
        return z_or_symbol
    return chemical_symbols[int(z_or_symbol)]


@dataclass(frozen=True)
class OrbitalLabel:
    """One orbital: the atom it sits on, its element, shell index within the atom, l and m.

    ``m`` is the position within the shell in our (e3nn) order minus l, i.e. -l..l.
    """

    atom: int
    element: str
    shell: int
    l: int
    m: int

    def __str__(self) -> str:
        return f"{self.element}{self.atom}:{self.shell}{L_LETTERS[self.l]}[{self.m:+d}]"


class Basis:
    """Atomic-orbital basis: the shells (their l, in declared order) of each element.

    Parameters
    ----------
    shells:
        element symbol -> basis string (``"2s2p1d"``) or sequence of l.
    name:
        optional name of the basis set (e.g. ``"gth-dzvp-molopt-sr"``), kept as metadata.
    """

    def __init__(self, shells: Mapping[str, str | Sequence[int]], name: str = "") -> None:
        if not shells:
            raise BasisError("a basis needs at least one element")
        self._shells = {_symbol(el): parse_shells(spec) for el, spec in shells.items()}
        self.name = name

    # -- element level -------------------------------------------------------------------------
    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(self._shells)

    def shells(self, element: int | str) -> tuple[int, ...]:
        """l of each shell of ``element`` in declared order."""
        el = _symbol(element)
        if el not in self._shells:
            raise BasisError(
                f"element {el} is not in this basis (it covers {', '.join(self.elements)})"
            )
        return self._shells[el]

    def norb(self, element: int | str) -> int:
        """Number of orbitals of one atom of ``element``."""
        return int(sum(2 * l + 1 for l in self.shells(element)))

    def as_strings(self) -> dict[str, str]:
        """``{"Si": "2s2p1d"}``: the inverse of the constructor, for metadata and files."""
        return {el: shells_to_string(ls) for el, ls in self._shells.items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Basis) and self._shells == other._shells

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"Basis({self.as_strings()!r}{name})"

    # -- structure level -----------------------------------------------------------------------
    def orbital_counts(self, symbols: Iterable[int | str]) -> np.ndarray:
        """Orbitals per atom, shape (natoms,), for atomic numbers or symbols."""
        return np.array([self.norb(s) for s in symbols], dtype=np.int64)

    def orbital_labels(self, symbols: Iterable[int | str]) -> list[OrbitalLabel]:
        """One :class:`OrbitalLabel` per orbital of the structure, in our order."""
        labels = []
        for atom, s in enumerate(symbols):
            el = _symbol(s)
            for ishell, l in enumerate(self.shells(el)):
                labels.extend(OrbitalLabel(atom, el, ishell, l, m) for m in range(-l, l + 1))
        return labels

    def orbital_table(self, symbols: Iterable[int | str]) -> dict[str, np.ndarray]:
        """Orbital labels as arrays (keys atom, shell, l, m, element), each of shape (norb,)."""
        labels = self.orbital_labels(symbols)
        return {
            "atom": np.array([o.atom for o in labels], dtype=np.int64),
            "shell": np.array([o.shell for o in labels], dtype=np.int64),
            "l": np.array([o.l for o in labels], dtype=np.int64),
            "m": np.array([o.m for o in labels], dtype=np.int64),
            "element": np.array([o.element for o in labels]),
        }

    # -- conversion to and from other codes ----------------------------------------------------
    def converter(self, element: int | str, convention: str) -> np.ndarray:
        """Orthogonal (norb, norb) matrix C of one atom with ``phi_ours = C @ phi_theirs``.

        ``convention`` is one of :data:`CONVENTIONS` (e.g. ``"pyscf"``, ``"abacus"``).
        """
        return _atom_converter(self.shells(element), convention)

    def convert_block(
        self,
        block: np.ndarray,
        element_i: int | str,
        element_j: int | str,
        convention: str,
        to: str = "ours",
    ) -> np.ndarray:
        """Convert blocks (..., norb_i, norb_j) between ``convention`` and our order.

        ``to="ours"`` maps a block written in ``convention`` into our order; ``to="theirs"``
        maps one of ours into ``convention``.
        """
        ci, cj = self.converter(element_i, convention), self.converter(element_j, convention)
        if to == "theirs":
            ci, cj = ci.T, cj.T
        elif to != "ours":
            raise ValueError(f"to must be 'ours' or 'theirs', not {to!r}")
        return np.einsum("ab,...bc,dc->...ad", ci, block, cj)

    def structure_converter(self, symbols: Sequence[int | str], convention: str) -> np.ndarray:
        """Block-diagonal (norb, norb) converter of a whole structure (for dense matrices)."""
        from scipy.linalg import block_diag

        return block_diag(*[self.converter(s, convention) for s in symbols])

    # -- construction from other programs ------------------------------------------------------
    @classmethod
    def from_pyscf(cls, mol) -> "Basis":
        """Shells per element of a PySCF ``Mole`` or ``Cell`` (spherical AOs, PySCF's order).

        Each contracted function of a PySCF shell becomes one of our shells, in PySCF's AO
        order, so a PySCF AO matrix converts to ours with ``convention="pyscf"`` alone.
        """
        if getattr(mol, "cart", False):
            raise BasisError("Cartesian Gaussian bases are not supported: build PySCF with cart=False")
        shells: dict[str, list[int]] = {}
        for atom in range(mol.natm):
            el = re.sub(r"[^A-Za-z]", "", mol.atom_pure_symbol(atom))
            ls = []
            for b in mol.atom_shell_ids(atom):
                ls.extend([int(mol.bas_angular(b))] * int(mol.bas_nctr(b)))
            if el in shells and shells[el] != ls:
                raise BasisError(f"atoms of {el} carry different bases; give them distinct labels")
            shells[el] = ls
        name = mol.basis if isinstance(mol.basis, str) else ""
        return cls(shells, name=name)


# ---------------------------------------------------------------------------------------------
# Real spherical harmonics and conventions
# ---------------------------------------------------------------------------------------------
def real_spherical_harmonics(l: int, xyz: np.ndarray) -> np.ndarray:
    """Textbook real spherical harmonics (z polar, m = -l..l, no Condon-Shortley phase).

    ``xyz`` (npts, 3) need not be normalized; returns (npts, 2l+1), orthonormal on the sphere.
    l=1 gives (y, z, x) * sqrt(3/4pi); l=2 gives (xy, yz, 3z^2-r^2, xz, x^2-y^2) up to norms.
    """
    from scipy.special import lpmv, factorial

    xyz = np.asarray(xyz, dtype=float)
    r = np.linalg.norm(xyz, axis=-1)
    cos_t = np.clip(xyz[:, 2] / r, -1.0, 1.0)
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    out = np.empty((len(xyz), 2 * l + 1))
    for m in range(0, l + 1):
        norm = np.sqrt((2 * l + 1) / (4 * np.pi) * factorial(l - m) / factorial(l + m))
        # scipy's lpmv includes the Condon-Shortley phase (-1)^m; remove it.
        p = (-1) ** m * lpmv(m, l, cos_t) * norm
        if m == 0:
            out[:, l] = p
        else:
            out[:, l + m] = np.sqrt(2) * p * np.cos(m * phi)
            out[:, l - m] = np.sqrt(2) * p * np.sin(m * phi)
    return out


@lru_cache(maxsize=None)
def textbook_to_e3nn(l: int) -> np.ndarray:
    """Orthogonal (2l+1, 2l+1) U with ``Y_e3nn(r) = U @ Y_textbook(r)``.

    e3nn's harmonics are the textbook ones evaluated at the cyclically permuted point
    (x, y, z) -> (z, x, y); U is that rotation's matrix on the l-harmonics, fitted exactly.
    """
    rng = np.random.default_rng(1234)
    pts = rng.normal(size=(8 * (2 * l + 1), 3))
    y_text = real_spherical_harmonics(l, pts)
    y_e3nn = real_spherical_harmonics(l, pts[:, [2, 0, 1]])
    u, *_ = np.linalg.lstsq(y_text, y_e3nn, rcond=None)
    u = u.T
    u[np.abs(u) < 1e-12] = 0.0
    return u


@dataclass(frozen=True)
class Convention:
    """How one code orders and signs the real harmonics of each l.

    ``order(l)[k]`` is the textbook m (-l..l) of the code's k-th function of a shell, and
    ``sign(l)[k]`` its sign relative to the textbook harmonic.
    """

    name: str
    order: callable
    sign: callable
    description: str = ""


def _m_textbook(l: int) -> list[int]:
    return list(range(-l, l + 1))


def _m_abacus(l: int) -> list[int]:
    out = [0]
    for m in range(1, l + 1):
        out += [m, -m]
    return out


def _plus(l: int) -> list[int]:
    return [1] * (2 * l + 1)


def _odd_m_flipped(order):
    return lambda l: [-1 if abs(m) % 2 else 1 for m in order(l)]


def _m_pyscf(l: int) -> list[int]:
    return [1, -1, 0] if l == 1 else _m_textbook(l)


_OPENMX_M = {0: [0], 1: [1, -1, 0], 2: [0, 2, -2, 1, -1], 3: [0, 1, -1, 2, -2, 3, -3]}


def _m_openmx(l: int) -> list[int]:
    if l not in _OPENMX_M:
        raise BasisError(f"OpenMX/DeepH-legacy order is known up to f orbitals, not l={l}")
    return _OPENMX_M[l]


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in [
        Convention("ours", lambda l: None, lambda l: None, "e3nn order (identity)"),
        Convention("textbook", _m_textbook, _plus, "m = -l..l, z polar, no Condon-Shortley phase"),
        Convention("pyscf", _m_pyscf, _plus, "PySCF spherical AOs: p as (x, y, z); l>=2 m = -l..l"),
        Convention(
            "abacus",
            _m_abacus,
            _odd_m_flipped(_m_abacus),
            "ABACUS: m = 0, +1, -1, +2, -2, ...; odd |m| carry the Condon-Shortley sign",
        ),
        Convention("deeptb", _m_textbook, _plus, "DeePTB/dftio h5: m = -l..l (ABACUS odd-m signs undone)"),
        Convention(
            "siesta",
            _m_textbook,
            _odd_m_flipped(_m_textbook),
            "SIESTA/sisl: m = -l..l, odd |m| with the Condon-Shortley sign",
        ),
        Convention("deeph", _m_textbook, _plus, "DeepH new format (DeepH-dock): m = -l..l"),
        Convention(
            "openmx",
            _m_openmx,
            _plus,
            "OpenMX / DeepH legacy: p (x, y, z); d (z2, x2-y2, xy, xz, yz); f (z3, xz2, yz2, "
            "z(x2-y2), xyz, x(x2-3y2), y(3x2-y2))",
        ),
    ]
}


def register_convention(name: str, order, sign, description: str = "") -> None:
    """Add a code's convention: ``order(l)`` and ``sign(l)`` as in :class:`Convention`."""
    CONVENTIONS[name] = Convention(name, order, sign, description)
    _atom_converter.cache_clear()
    convention_matrix.cache_clear()


@lru_cache(maxsize=None)
def convention_matrix(l: int, convention: str) -> np.ndarray:
    """(2l+1, 2l+1) orthogonal C with ``phi_ours = C @ phi_convention`` for one shell."""
    if convention not in CONVENTIONS:
        raise BasisError(
            f"unknown orbital convention {convention!r}; known: {', '.join(CONVENTIONS)}"
        )
    if convention == "ours":
        return np.eye(2 * l + 1)
    conv = CONVENTIONS[convention]
    order, sign = conv.order(l), conv.sign(l)
    # P maps the code's functions to textbook ones: phi_textbook[l + m_k] = sign_k * phi_code[k]
    p = np.zeros((2 * l + 1, 2 * l + 1))
    for k, (m, s) in enumerate(zip(order, sign)):
        p[l + m, k] = s
    return textbook_to_e3nn(l) @ p


@lru_cache(maxsize=None)
def _atom_converter(shells: tuple[int, ...], convention: str) -> np.ndarray:
    from scipy.linalg import block_diag

    return block_diag(*[convention_matrix(l, convention) for l in shells])
