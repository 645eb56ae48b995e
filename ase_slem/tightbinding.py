"""Hand-built tight-binding operators: Slater-Koster models and two analytic lattices.

These give exact, cheap (H, S) pairs for tests and examples of the post-processing code:
the Slater-Koster blocks rotate exactly with the structure, so rotation and supercell behaviour
of k-space code can be checked against them, and the chain and graphene models have bands in
closed form.

Two-centre integrals (Slater & Koster, Phys. Rev. 94, 1498 (1954)).  For an orbital of angular
momentum l_a on atom i and one of l_b on atom j, with u the unit vector from i to j, the block
is a sum over the bond's |m| channels (sigma, pi, delta)

    E_ab(u) = sum_m V_{ab,m}(r) K_{ab,m}(u),     K_{ab,m}(u)[mu, nu] = <c_m(mu; u), c_m(nu; u)>,

where c_m(mu; u) is the component of orbital mu in the |m| channel of the bond frame.  Orbitals
of l <= 2 are written as orthonormal Cartesian tensors (1; the unit vector e_mu; the symmetric
traceless matrix T_mu), and with P = u u^T, Q = 1 - P:

    sigma:  1,   e.u,      sqrt(3/2) u^T T u
    pi:          Q e,      sqrt(2) Q T u
    delta:                 Q T Q + (u^T T u / 2) Q

This reproduces the classic Slater-Koster table (tested) and rotates exactly.  Hermiticity of
the full operator needs V_{ba,m} = (-1)^(l_a + l_b) V_{ab,m} (e.g. V_ps_sigma = -V_sp_sigma),
which the parameter lookup applies when only one order is given.

Distance dependence of every integral: V(r) = V0 exp(-beta (r / r0 - 1)) f_c(r), with the
smooth switch f_c = 1 below ``cutoff - cutoff_width``, 0 beyond ``cutoff`` and
(1 + cos(pi x)) / 2 in between (x the fraction of the switching interval passed).  Onsite
blocks: diagonal shell energies for H, identity for S.

Blocks are produced in the textbook real-harmonic order and turned into ours (e3nn order) with
:func:`ase_slem.basis.convention_matrix`.  Units: Angstrom and eV; overlaps dimensionless.
No torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from .basis import L_LETTERS, Basis, BasisError, convention_matrix
from .operators import RealSpaceOperator

BOND_NAMES = ("sigma", "pi", "delta")
_KEY_RE = re.compile(r"^([spd]\d*)([spd]\d*)_(sigma|pi|delta)$")


class SlaterKosterError(ValueError):
    """Slater-Koster parameters that are missing, inconsistent or do not fit the basis."""


# ---------------------------------------------------------------------------------------------
# Orbitals as Cartesian tensors and the bond-frame channel components
# ---------------------------------------------------------------------------------------------
def orbital_tensors(l: int) -> np.ndarray:
    """Orthonormal Cartesian tensors of the textbook real harmonics of one shell.

    l = 0: shape (1,) = [1].  l = 1: (3, 3), rows the unit vectors of (y, z, x) (textbook
    m = -1, 0, 1).  l = 2: (5, 3, 3), symmetric traceless matrices of (xy, yz, 3z^2-r^2, xz,
    x^2-y^2), Frobenius-orthonormal, so that Y_2m(r) is proportional to r^T T_m r / r^2 with one
    common constant.
    """
    if l == 0:
        return np.ones(1)
    if l == 1:
        return np.eye(3)[[1, 2, 0]]
    if l == 2:
        t = np.zeros((5, 3, 3))
        x, y, z = 0, 1, 2
        s2 = 1 / np.sqrt(2)
        t[0, x, y] = t[0, y, x] = s2
        t[1, y, z] = t[1, z, y] = s2
        t[2] = np.diag([-1.0, -1.0, 2.0]) / np.sqrt(6)
        t[3, x, z] = t[3, z, x] = s2
        t[4] = np.diag([1.0, -1.0, 0.0]) * s2
        return t
    raise SlaterKosterError(f"Slater-Koster blocks are implemented for s, p and d shells, not l={l}")


def bond_channel_components(l: int, u: np.ndarray) -> list[np.ndarray]:
    """Components of the 2l+1 textbook orbitals of one shell in each |m| channel of bonds u.

    ``u`` (nb, 3) unit vectors.  Returns a list over m = 0..l of arrays (nb, 2l+1, dim_m); the
    channel coupling of two shells is ``einsum('bid,bjd->bij', comp_a[m], comp_b[m])``.
    """
    nb = len(u)
    t = orbital_tensors(l)
    if l == 0:
        return [np.ones((nb, 1, 1))]
    proj = np.eye(3) - u[:, :, None] * u[:, None, :]  # Q = 1 - u u^T, (nb, 3, 3)
    if l == 1:
        sigma = np.einsum("md,bd->bm", t, u)[:, :, None]
        pi = np.einsum("bde,me->bmd", proj, t)
        return [sigma, pi]
    tu = np.einsum("mde,be->bmd", t, u)  # T u, (nb, 5, 3)
    utu = np.einsum("bd,bmd->bm", u, tu)  # u^T T u, (nb, 5)
    sigma = (np.sqrt(1.5) * utu)[:, :, None]
    pi = np.sqrt(2) * np.einsum("bde,bme->bmd", proj, tu)
    qtq = np.einsum("bde,mef,bfg->bmdg", proj, t, proj)
    delta = qtq + 0.5 * utu[:, :, None, None] * proj[:, None]
    return [sigma, pi, delta.reshape(nb, 5, 9)]


def smooth_cutoff(r: np.ndarray, cutoff: float, width: float) -> np.ndarray:
    """1 below ``cutoff - width``, 0 beyond ``cutoff``, (1 + cos(pi x)) / 2 in between (C^1)."""
    r = np.asarray(r, dtype=float)
    if width <= 0:
        return (r < cutoff).astype(float)
    x = np.clip((r - (cutoff - width)) / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------
@dataclass
class BondParameters:
    """Two-centre integrals of one ordered element pair (A, B) at the reference distance ``r0``.

    ``hopping`` (eV) and ``overlap`` (dimensionless) map keys such as ``"ss_sigma"``,
    ``"sp_sigma"``, ``"pp_pi"``, ``"dd_delta"`` to values at ``r0`` (Angstrom).  The first
    letter is the shell on the A atom, the second the shell on the B atom.  A key may name one
    shell of several with the same l by its index, e.g. ``"s2p1_sigma"`` ("s1", "s2" when an
    element has two s shells); plain letters apply to every shell of that l.  Keys of the
    reversed order (``"ps_sigma"``) are derived as (-1)^(l_a + l_b) times the given ones.
    """

    r0: float
    hopping: Mapping[str, float]
    overlap: Mapping[str, float] = field(default_factory=dict)
    beta_hopping: float = 2.0
    beta_overlap: float = 2.0

    def __post_init__(self) -> None:
        for table in (self.hopping, self.overlap):
            for key in table:
                if not _KEY_RE.match(key):
                    raise SlaterKosterError(
                        f"bad Slater-Koster key {key!r}: expected '<shell><shell>_<bond>' such as "
                        f"'sp_sigma', 'pp_pi', 'dd_delta' or 's2p1_sigma'"
                    )
        if self.r0 <= 0:
            raise SlaterKosterError(f"reference distance r0 must be positive, got {self.r0}")


@dataclass
class SlaterKosterParameters:
    """A Slater-Koster model: onsite shell energies, bond integrals per element pair, cutoff.

    ``onsite``: element -> shell name -> energy (eV), e.g. ``{"Si": {"s": -5.0, "p": 1.5}}``;
    shell names are the letter, with an index (``"s1"``, ``"s2"``) when an element has several
    shells of one l (a plain letter then applies to all of them).
    ``bonds``: (A, B) -> :class:`BondParameters` (or a dict of its fields); (B, A) is derived
    from (A, B) when absent.  ``cutoff`` and ``cutoff_width`` in Angstrom.
    """

    onsite: Mapping[str, Mapping[str, float]]
    bonds: Mapping[tuple[str, str], BondParameters]
    cutoff: float
    cutoff_width: float = 0.5

    def __post_init__(self) -> None:
        bonds = {}
        for pair, bp in self.bonds.items():
            key = tuple(pair.split("-")) if isinstance(pair, str) else tuple(pair)
            if len(key) != 2:
                raise SlaterKosterError(f"bond key {pair!r} must be an element pair such as ('Si', 'Si')")
            bonds[key] = bp if isinstance(bp, BondParameters) else BondParameters(**bp)
        self.bonds = bonds
        if not 0 <= self.cutoff_width <= self.cutoff:
            raise SlaterKosterError(
                f"cutoff_width ({self.cutoff_width}) must lie between 0 and the cutoff ({self.cutoff})"
            )

    def default_basis(self) -> Basis:
        """The basis whose shells are the onsite entries (``{"Si": {"s":.., "p":..}}`` -> 1s1p)."""
        shells = {}
        for el, table in self.onsite.items():
            ls = []
            for name in table:
                letter = name[0]
                if letter not in "spd":
                    raise SlaterKosterError(f"onsite shell name {name!r} of {el} is not s, p or d")
                ls.append(L_LETTERS.index(letter))
            shells[el] = ls
        return Basis(shells, name="slater-koster")


def silicon_parameters() -> SlaterKosterParameters:
    """A nearest-neighbour sp3 model of diamond silicon with a non-orthogonal overlap.

    Hand-tuned, qualitative only (not fitted to DFT): 8 bands for the 2-atom cell, a direct gap
    of about 2.3 eV at Gamma between the 4 valence bands (4 electrons per atom) and the
    conduction bands, valence band width about 10 eV, S(k) positive definite (smallest
    eigenvalue about 0.68).
    Reference distance 2.35 A (bulk bond length, a = 5.43 A); interactions end at 3.0 A, well
    before the second neighbours at 3.84 A.
    """
    return SlaterKosterParameters(
        onsite={"Si": {"s": -5.0, "p": 1.5}},
        bonds={
            ("Si", "Si"): BondParameters(
                r0=2.35,
                hopping={"ss_sigma": -2.0, "sp_sigma": 2.2, "pp_sigma": 3.0, "pp_pi": -1.1},
                overlap={"ss_sigma": 0.08, "sp_sigma": -0.10, "pp_sigma": -0.12, "pp_pi": 0.04},
                beta_hopping=2.0,
                beta_overlap=1.5,
            )
        },
        cutoff=3.0,
        cutoff_width=0.4,
    )


def _shell_names(ls: Sequence[int]) -> list[str]:
    """'s', 'p' for single shells of an l; 's1', 's2' when an element has several."""
    counts = {l: ls.count(l) for l in set(ls)}
    seen: dict[int, int] = {}
    names = []
    for l in ls:
        seen[l] = seen.get(l, 0) + 1
        letter = L_LETTERS[l]
        names.append(f"{letter}{seen[l]}" if counts[l] > 1 else letter)
    return names


def _lookup(table: Mapping[str, float], name_a: str, name_b: str, bond: str) -> float | None:
    for key in (f"{name_a}{name_b}_{bond}", f"{name_a[0]}{name_b[0]}_{bond}"):
        if key in table:
            return float(table[key])
    return None


def _integral(params: SlaterKosterParameters, which: str, el_a: str, na: str, la: int,
              el_b: str, nb: str, lb: int, bond: str) -> tuple[float, BondParameters]:
    """V0 of one channel for shell na of el_a (atom i) and shell nb of el_b (atom j)."""
    forward = params.bonds.get((el_a, el_b))
    backward = params.bonds.get((el_b, el_a))
    sign = (-1) ** (la + lb)
    v_fwd = _lookup(getattr(forward, which), na, nb, bond) if forward else None
    v_bwd = _lookup(getattr(backward, which), nb, na, bond) if backward else None
    if v_fwd is not None and v_bwd is not None and not np.isclose(v_fwd, sign * v_bwd, rtol=0, atol=1e-12):
        raise SlaterKosterError(
            f"{which} integrals {na}{nb}_{bond} of {el_a}-{el_b} ({v_fwd}) and {nb}{na}_{bond} of "
            f"{el_b}-{el_a} ({v_bwd}) break Hermiticity: they must satisfy "
            f"V_ba = (-1)^(l_a+l_b) V_ab; give only one of them"
        )
    if v_fwd is not None:
        return v_fwd, forward
    if v_bwd is not None:
        return sign * v_bwd, backward
    if forward is None and backward is None:
        raise SlaterKosterError(
            f"no Slater-Koster parameters for the element pair {el_a}-{el_b}: add bonds[({el_a!r}, {el_b!r})] "
            f"or lower the cutoff so that these atoms do not interact"
        )
    if which == "overlap" and not (forward or backward).overlap:
        return 0.0, forward or backward  # an orthogonal model: no overlap table at all
    raise SlaterKosterError(
        f"missing {which} integral '{na}{nb}_{bond}' (or '{L_LETTERS[la]}{L_LETTERS[lb]}_{bond}') "
        f"for {el_a}-{el_b}; give it explicitly (0.0 is allowed)"
    )


# ---------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------
def _as_basis(basis, params: SlaterKosterParameters) -> Basis:
    if basis is None:
        return params.default_basis()
    if isinstance(basis, Basis):
        return basis
    if isinstance(basis, Mapping):
        return Basis(basis)
    raise BasisError(f"basis must be a Basis or a mapping such as {{'Si': '1s1p'}}, not {type(basis).__name__}")


def slater_koster_blocks(
    atoms: Atoms,
    basis: Basis | Mapping[str, str] | None = None,
    params: SlaterKosterParameters | None = None,
    cutoff: float | None = None,
) -> dict[str, np.ndarray]:
    """Every directed bond's H and S blocks (both i->j and j->i), plus onsite blocks.

    Returns a dict with ``i``, ``j`` (nblocks,), ``R`` (nblocks, 3) and, per block shape, the
    blocks in our orbital order as ``hamiltonian`` / ``overlap``: lists of (norb_i, norb_j)
    arrays in the order of ``i``.  See :func:`slater_koster_operators`.
    """
    params = silicon_parameters() if params is None else params
    if not isinstance(params, SlaterKosterParameters):
        params = SlaterKosterParameters(**params)
    basis = _as_basis(basis, params)
    cutoff = params.cutoff if cutoff is None else float(cutoff)
    width = min(params.cutoff_width, cutoff)
    if len(atoms) == 0:
        raise SlaterKosterError("the structure has no atoms")
    symbols = atoms.get_chemical_symbols()
    for el in set(symbols):
        basis.shells(el)  # raises BasisError naming the element if absent
        for l in basis.shells(el):
            if l > 2:
                raise SlaterKosterError(f"{el} has an l={l} shell; Slater-Koster blocks go up to d (l=2)")
    if any(atoms.pbc) and atoms.cell.rank < int(np.sum(atoms.pbc)):
        raise SlaterKosterError("the structure is periodic but its cell is degenerate (zero volume)")
    ii, jj, dist, vec, shift = neighbor_list("ijdDS", atoms, cutoff)
    if np.any(dist < 1e-6):
        a, b = int(ii[np.argmin(dist)]), int(jj[np.argmin(dist)])
        raise SlaterKosterError(f"atoms {a} and {b} sit on top of each other; remove the duplicate")
    counts = basis.orbital_counts(symbols)
    out_i, out_j, out_R, out_h, out_s = [], [], [], [], []
    # onsite blocks, one element at a time
    sym_arr = np.array(symbols)
    for el in dict.fromkeys(symbols):
        ls = basis.shells(el)
        names = _shell_names(list(ls))
        table = params.onsite.get(el)
        if table is None:
            raise SlaterKosterError(f"no onsite energies for {el}: add params.onsite[{el!r}]")
        eps = []
        for name, l in zip(names, ls):
            value = table.get(name, table.get(name[0]))
            if value is None:
                raise SlaterKosterError(f"missing onsite energy of the {name} shell of {el}")
            eps.extend([float(value)] * (2 * l + 1))
        atoms_el = np.flatnonzero(sym_arr == el)
        out_i.append(atoms_el)
        out_j.append(atoms_el)
        out_R.append(np.zeros((len(atoms_el), 3), np.int64))
        out_h.extend([np.diag(eps)] * len(atoms_el))
        out_s.extend([np.eye(len(eps))] * len(atoms_el))
    # bonds, one element pair at a time, vectorized over bonds
    fc = smooth_cutoff(dist, cutoff, width)
    unit = vec / dist[:, None] if len(dist) else vec
    pair_el = sym_arr[ii], sym_arr[jj]
    for el_a in dict.fromkeys(symbols):
        for el_b in dict.fromkeys(symbols):
            sel = np.flatnonzero((pair_el[0] == el_a) & (pair_el[1] == el_b))
            if len(sel) == 0:
                continue
            hb, sb = _pair_blocks(params, basis, el_a, el_b, unit[sel], dist[sel], fc[sel])
            out_i.append(ii[sel])
            out_j.append(jj[sel])
            out_R.append(shift[sel].astype(np.int64))
            out_h.extend(hb)
            out_s.extend(sb)
    return {
        "i": np.concatenate(out_i),
        "j": np.concatenate(out_j),
        "R": np.concatenate(out_R),
        "hamiltonian": out_h,
        "overlap": out_s,
        "orbital_counts": counts,
        "basis": basis,
    }


def _pair_blocks(params, basis, el_a, el_b, u, r, fc):
    """H and S blocks (nb, norb_a, norb_b) in our order for bonds from el_a atoms to el_b atoms."""
    ls_a, ls_b = basis.shells(el_a), basis.shells(el_b)
    names_a, names_b = _shell_names(list(ls_a)), _shell_names(list(ls_b))
    comps = {l: bond_channel_components(l, u) for l in set(ls_a) | set(ls_b)}
    nb = len(u)
    blocks = {w: np.zeros((nb, basis.norb(el_a), basis.norb(el_b))) for w in ("hopping", "overlap")}
    off_a = np.concatenate([[0], np.cumsum([2 * l + 1 for l in ls_a])])
    off_b = np.concatenate([[0], np.cumsum([2 * l + 1 for l in ls_b])])
    for sa, (la, na) in enumerate(zip(ls_a, names_a)):
        ca = convention_matrix(la, "textbook")
        for sb, (lb, nbn) in enumerate(zip(ls_b, names_b)):
            cb = convention_matrix(lb, "textbook")
            for which in ("hopping", "overlap"):
                acc = np.zeros((nb, 2 * la + 1, 2 * lb + 1))
                for m in range(min(la, lb) + 1):
                    v0, bp = _integral(params, which, el_a, na, la, el_b, nbn, lb, BOND_NAMES[m])
                    if v0 == 0.0:
                        continue
                    beta = bp.beta_hopping if which == "hopping" else bp.beta_overlap
                    radial = v0 * np.exp(-beta * (r / bp.r0 - 1.0)) * fc  # (nb,)
                    coupling = np.einsum("bid,bjd->bij", comps[la][m], comps[lb][m])
                    acc += radial[:, None, None] * coupling
                blocks[which][:, off_a[sa] : off_a[sa + 1], off_b[sb] : off_b[sb + 1]] = np.einsum(
                    "ab,nbc,dc->nad", ca, acc, cb
                )
    return list(blocks["hopping"]), list(blocks["overlap"])


def _canonical(i: np.ndarray, j: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Mask of the stored triangle of RealSpaceOperator: i < j, or i == j with R >= 0 (lex)."""
    lex = (R[:, 0] > 0) | ((R[:, 0] == 0) & ((R[:, 1] > 0) | ((R[:, 1] == 0) & (R[:, 2] >= 0))))
    return (i < j) | ((i == j) & lex)


def slater_koster_operators(
    atoms: Atoms,
    basis: Basis | Mapping[str, str] | None = None,
    params: SlaterKosterParameters | Mapping | None = None,
    cutoff: float | None = None,
) -> tuple[RealSpaceOperator, RealSpaceOperator]:
    """Hamiltonian (eV) and overlap of a Slater-Koster model on ``atoms``.

    Parameters
    ----------
    atoms:
        Structure (Angstrom).  Periodic directions follow ``atoms.pbc``; a molecule gives R = 0
        blocks only.
    basis:
        Shells per element (``{"Si": "1s1p"}``, s, p and d shells), or None for the shells named
        in ``params.onsite``.
    params:
        :class:`SlaterKosterParameters` (or a dict of its fields); default
        :func:`silicon_parameters`.
    cutoff:
        Interaction range in Angstrom (default ``params.cutoff``); integrals are switched off
        smoothly over the last ``params.cutoff_width``.

    Returns (H, S), :class:`RealSpaceOperator` s carrying the basis and the chemical symbols.
    """
    data = slater_koster_blocks(atoms, basis, params, cutoff)
    keep = np.flatnonzero(_canonical(data["i"], data["j"], data["R"]))
    common = dict(
        periodic=bool(np.any(atoms.pbc)),
        basis=data["basis"],
        symbols=atoms.get_chemical_symbols(),
    )
    sel = lambda xs: [xs[k] for k in keep]  # noqa: E731
    H = RealSpaceOperator.from_blocks(
        data["orbital_counts"], data["i"][keep], data["j"][keep], data["R"][keep],
        sel(data["hamiltonian"]), name="hamiltonian", **common,
    )
    S = RealSpaceOperator.from_blocks(
        data["orbital_counts"], data["i"][keep], data["j"][keep], data["R"][keep],
        sel(data["overlap"]), name="overlap", **common,
    )
    return H, S


# ---------------------------------------------------------------------------------------------
# Analytic models
# ---------------------------------------------------------------------------------------------
def linear_chain(
    e0: float = 0.0, t: float = -1.0, s: float = 0.1, a: float = 2.0, vacuum: float = 10.0
) -> tuple[Atoms, RealSpaceOperator, RealSpaceOperator]:
    """A chain of H atoms along x (spacing ``a`` A), one s orbital each, nearest-neighbour only.

    Built with :func:`slater_koster_operators` (ss_sigma hopping ``t`` eV, overlap ``s``, onsite
    ``e0`` eV at r0 = a), so that E(k) = (e0 + 2 t cos 2 pi k) / (1 + 2 s cos 2 pi k), k the
    fractional coordinate along the chain.  Needs |s| < 1/2 for a positive overlap.
    """
    if abs(s) >= 0.5:
        raise SlaterKosterError(f"|s| must be below 1/2 for a positive definite overlap, got s={s}")
    atoms = Atoms("H", positions=[[0.0, 0.0, 0.0]], cell=[a, vacuum, vacuum], pbc=[True, False, False])
    params = SlaterKosterParameters(
        onsite={"H": {"s": e0}},
        bonds={("H", "H"): BondParameters(r0=a, hopping={"ss_sigma": t}, overlap={"ss_sigma": s})},
        cutoff=1.5 * a,
        cutoff_width=0.25 * a,
    )
    H, S = slater_koster_operators(atoms, {"H": "1s"}, params)
    return atoms, H, S


def graphene_pz(
    e0: float = 0.0, t: float = -2.7, s: float = 0.1, a: float = 2.46, vacuum: float = 15.0
) -> tuple[Atoms, RealSpaceOperator, RealSpaceOperator]:
    """Graphene with one p_z orbital per atom, nearest-neighbour hopping ``t`` (eV) and overlap ``s``.

    Cell a1 = a (1, 0, 0), a2 = a (1/2, sqrt(3)/2, 0), c = ``vacuum``; atoms at fractional
    (0, 0, 0) and (1/3, 1/3, 0), so each A atom sees B atoms at R = 0, -a1, -a2 and
    E+-(k) = (e0 +- t |f(k)|) / (1 +- s |f(k)|), f(k) = 1 + exp(2 pi i k1) + exp(2 pi i k2).

    The p_z orbital is the only orbital of its atom and is even under every in-plane operation
    that matters here, so it is carried as a one-orbital shell: the basis is ``{"C": "1s"}``
    (our Basis has no single-m shells).  Use :func:`slater_koster_operators` with a p basis for
    the full sp model.
    """
    cell = a * np.array([[1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0], [0.0, 0.0, vacuum / a]])
    atoms = Atoms("C2", scaled_positions=[[0, 0, 0.5], [1 / 3, 1 / 3, 0.5]], cell=cell, pbc=[True, True, False])
    d = a / np.sqrt(3)
    ii, jj, dist, shift = neighbor_list("ijdS", atoms, 0.5 * (d + a))  # first shell only
    if not np.allclose(dist, d):  # pragma: no cover - geometry is fixed above
        raise AssertionError("graphene neighbour shell is not the bond length")
    onsite_i = np.arange(2)
    i = np.concatenate([onsite_i, ii])
    j = np.concatenate([onsite_i, jj])
    R = np.concatenate([np.zeros((2, 3), np.int64), shift]).astype(np.int64)
    keep = _canonical(i, j, R)
    n_on = 2
    h_vals = np.concatenate([[e0] * n_on, [t] * len(ii)])[keep]
    s_vals = np.concatenate([[1.0] * n_on, [s] * len(ii)])[keep]
    common = dict(basis=Basis({"C": "1s"}, name="graphene p_z"), symbols=["C", "C"])
    H = RealSpaceOperator.from_blocks([1, 1], i[keep], j[keep], R[keep], h_vals[:, None, None], name="hamiltonian", **common)
    S = RealSpaceOperator.from_blocks([1, 1], i[keep], j[keep], R[keep], s_vals[:, None, None], name="overlap", **common)
    return atoms, H, S
