"""RealSpaceOperator: the blocks <phi_i(r - tau_i)| O |phi_j(r - tau_j - R)> of an LCAO operator.

Storage is packed: index arrays ``i``, ``j`` (atoms) and ``R`` (integer cell shifts) for the
blocks of one triangle, with the block values held contiguously per block shape (one
``(n, norb_i, norb_j)`` array per shape, blocks of that shape in a row).  The other triangle is
implied by Hermiticity, O(j, i, -R) = O(i, j, R)^T (real orbitals), and filled in on demand.

Stored triangle ("canonical half"): i < j with any R, and i == j with R >= 0 in lexicographic
order (R = 0 is the onsite block, stored whole).

Bloch sums, sparse export, traces and Mulliken populations are vectorized over blocks and
k-points; nothing loops over blocks in Python.  Plain numpy; no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

# Bits of the integer key that encodes (i, j, R); R components must lie in [-512, 512).
_RBITS = 10
_ROFF = 1 << (_RBITS - 1)


class OperatorError(ValueError):
    """An operator that is malformed or does not fit the structure or operation asked for."""


class NonHermitianError(OperatorError):
    """The two triangles of an operator disagree: O(i, j, R) != O(j, i, -R)^T."""


def as_kpoints(kpts) -> tuple[np.ndarray, bool]:
    """Validate k-points: (nk, 3) or (3,) fractional -> ((nk, 3) float array, was_single)."""
    k = np.asarray(kpts, dtype=float)
    single = k.ndim == 1
    if single:
        k = k[None, :]
    if k.ndim != 2 or k.shape[1] != 3:
        raise ValueError(
            f"k-points must have shape (nk, 3) or (3,) in fractional coordinates of the "
            f"reciprocal cell; got shape {np.shape(kpts)}"
        )
    if not np.all(np.isfinite(k)):
        raise ValueError("k-points contain NaN or infinity")
    return k, single


def _encode(i: np.ndarray, j: np.ndarray, R: np.ndarray, natoms: int) -> np.ndarray:
    R = np.asarray(R, dtype=np.int64)
    if R.size and (R.min() < -_ROFF or R.max() >= _ROFF):
        raise OperatorError(f"cell shifts beyond +-{_ROFF} are not supported")
    r = ((R[:, 0] + _ROFF) << (2 * _RBITS)) | ((R[:, 1] + _ROFF) << _RBITS) | (R[:, 2] + _ROFF)
    return ((i.astype(np.int64) * natoms + j) << (3 * _RBITS)) | r


def _is_upper(i: np.ndarray, j: np.ndarray, R: np.ndarray) -> np.ndarray:
    """True where (i, j, R) is in the canonical half (see module docstring)."""
    lex_pos = (R[:, 0] > 0) | ((R[:, 0] == 0) & ((R[:, 1] > 0) | ((R[:, 1] == 0) & (R[:, 2] >= 0))))
    return (i < j) | ((i == j) & lex_pos)


@dataclass
class _Group:
    """Blocks of one shape: rows ``start:stop`` of the index arrays, values ``data``."""

    ni: int
    nj: int
    start: int
    stop: int
    data: np.ndarray  # (n, ni, nj)


class RealSpaceOperator:
    """A Hermitian LCAO operator in real space, stored as atom-pair blocks for one triangle.

    Build one with :meth:`from_blocks` (any mix of triangles, checked for Hermiticity) or
    :meth:`from_dense`; the constructor itself takes already-canonical packed data.

    Attributes
    ----------
    orbital_counts : (natoms,) int
        Orbitals per atom.
    i, j : (nblocks,) int;  R : (nblocks, 3) int
        Blocks of the stored triangle, grouped by block shape.
    periodic : bool
        False for molecules (only R = 0 is allowed).
    """

    def __init__(
        self,
        orbital_counts: Sequence[int],
        i: np.ndarray,
        j: np.ndarray,
        R: np.ndarray,
        groups: list[_Group],
        *,
        periodic: bool = True,
        name: str = "operator",
        basis=None,
        symbols: Sequence[str] | None = None,
    ) -> None:
        self.orbital_counts = np.asarray(orbital_counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.orbital_counts)]).astype(np.int64)
        self.i = np.asarray(i, dtype=np.int64)
        self.j = np.asarray(j, dtype=np.int64)
        self.R = np.asarray(R, dtype=np.int64).reshape(-1, 3)
        self._groups = groups
        self.periodic = periodic
        self.name = name
        self.basis = basis
        self.symbols = None if symbols is None else [str(s) for s in symbols]
        self._lookup: dict[int, tuple[int, int, bool]] | None = None
        self._bloch_plan: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._coo_cache: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_blocks(
        cls,
        orbital_counts: Sequence[int],
        i: Sequence[int],
        j: Sequence[int],
        R: Sequence[Sequence[int]] | None,
        blocks: Sequence[np.ndarray],
        *,
        periodic: bool = True,
        hermiticity_tol: float = 1e-6,
        name: str = "operator",
        basis=None,
        symbols: Sequence[str] | None = None,
    ) -> "RealSpaceOperator":
        """Build from a list of blocks in any triangle (or both).

        Blocks given in both triangles must agree, O(j, i, -R) = O(i, j, R)^T, to
        ``hermiticity_tol`` (absolute, in the operator's unit); otherwise
        :class:`NonHermitianError` reports the largest asymmetry.  The two are averaged.
        A block given once is completed by Hermiticity.
        """
        counts = np.asarray(orbital_counts, dtype=np.int64)
        natoms = len(counts)
        i = np.asarray(i, dtype=np.int64).ravel()
        j = np.asarray(j, dtype=np.int64).ravel()
        nb = len(i)
        R = np.zeros((nb, 3), np.int64) if R is None else np.asarray(R, dtype=np.int64).reshape(-1, 3)
        if len(j) != nb or len(R) != nb or len(blocks) != nb:
            raise OperatorError(
                f"i, j, R and blocks must have the same length; got {nb}, {len(j)}, {len(R)}, {len(blocks)}"
            )
        if nb and (i.min() < 0 or j.min() < 0 or max(i.max(), j.max()) >= natoms):
            raise OperatorError(f"atom index out of range for a structure of {natoms} atoms")
        if not periodic and np.any(R != 0):
            raise OperatorError("a molecular (non-periodic) operator can only hold R = (0, 0, 0) blocks")
        for b, (a, c, blk) in enumerate(zip(i, j, blocks)):
            if np.shape(blk) != (counts[a], counts[c]):
                raise OperatorError(
                    f"block {b} (atoms {a}, {c}, R={tuple(R[b])}) has shape {np.shape(blk)}, "
                    f"but the basis gives ({counts[a]}, {counts[c]}) orbitals for these atoms"
                )
        upper = _is_upper(i, j, R)
        # bring every block into the canonical half
        ci = np.where(upper, i, j)
        cj = np.where(upper, j, i)
        cR = np.where(upper[:, None], R, -R)
        cblocks = [np.asarray(b, dtype=float) if u else np.asarray(b, dtype=float).T for b, u in zip(blocks, upper)]
        # onsite-type blocks (i == j, R == 0) must themselves be symmetric
        self_image = (i == j) & np.all(R == 0, axis=1)
        worst = (0.0, None)
        for b in np.flatnonzero(self_image):
            asym = float(np.max(np.abs(cblocks[b] - cblocks[b].T), initial=0.0))
            if asym > worst[0]:
                worst = (asym, (int(i[b]), int(j[b]), (0, 0, 0)))
            cblocks[b] = 0.5 * (cblocks[b] + cblocks[b].T)
        keys = _encode(ci, cj, cR, natoms)
        order = np.argsort(keys, kind="stable")
        ukeys, first, counts_k = np.unique(keys[order], return_index=True, return_counts=True)
        keep = order[first]
        merged = [cblocks[b] for b in keep]
        for u in np.flatnonzero(counts_k > 1):
            members = order[first[u] : first[u] + counts_k[u]]
            ref = cblocks[members[0]]
            for m in members[1:]:
                asym = float(np.max(np.abs(cblocks[m] - ref), initial=0.0))
                if asym > worst[0]:
                    worst = (asym, (int(i[m]), int(j[m]), tuple(int(x) for x in R[m])))
            merged[u] = np.mean([cblocks[m] for m in members], axis=0)
        if worst[0] > hermiticity_tol:
            a, c, r = worst[1]
            raise NonHermitianError(
                f"{name} is not Hermitian: block ({a}, {c}, R={r}) differs from the transpose of "
                f"block ({c}, {a}, R={tuple(-x for x in r)}) by up to {worst[0]:.3g} "
                f"(tolerance {hermiticity_tol:g}). Check the orbital order/convention and the R sign."
            )
        return cls._pack(counts, ci[keep], cj[keep], cR[keep], merged, periodic=periodic, name=name,
                         basis=basis, symbols=symbols)

    @classmethod
    def _pack(cls, counts, i, j, R, blocks, **kwargs) -> "RealSpaceOperator":
        """Group canonical blocks by shape into contiguous arrays."""
        ni, nj = counts[i], counts[j]
        shape_key = ni * (counts.max() + 1 if len(counts) else 1) + nj
        order = np.lexsort((_encode(i, j, R, len(counts)), shape_key))
        i, j, R = i[order], j[order], R[order]
        groups = []
        skey = shape_key[order]
        bounds = np.flatnonzero(np.diff(skey)) + 1
        starts = np.concatenate([[0], bounds]).astype(int)
        stops = np.concatenate([bounds, [len(order)]]).astype(int)
        for s, e in zip(starts, stops):
            if e <= s:
                continue
            a, b = int(counts[i[s]]), int(counts[j[s]])
            data = np.stack([blocks[src] for src in order[s:e]]).astype(float, copy=False)
            groups.append(_Group(a, b, int(s), int(e), data))
        return cls(counts, i, j, R, groups, **kwargs)

    @classmethod
    def from_dense(
        cls,
        orbital_counts: Sequence[int],
        matrices: np.ndarray,
        Rs: Sequence[Sequence[int]] | None = None,
        *,
        drop_below: float = 0.0,
        periodic: bool = True,
        hermiticity_tol: float = 1e-6,
        name: str = "operator",
        basis=None,
        symbols: Sequence[str] | None = None,
    ) -> "RealSpaceOperator":
        """Cut dense matrices O(R), shape (nR, norb, norb) (or (norb, norb) for R = 0), into blocks.

        Blocks whose largest |element| is <= ``drop_below`` are dropped.
        """
        counts = np.asarray(orbital_counts, dtype=np.int64)
        mats = np.asarray(matrices, dtype=float)
        if mats.ndim == 2:
            mats = mats[None]
        Rs = np.zeros((1, 3), np.int64) if Rs is None else np.asarray(Rs, dtype=np.int64).reshape(-1, 3)
        norb = int(counts.sum())
        if mats.shape[1:] != (norb, norb) or len(Rs) != len(mats):
            raise OperatorError(
                f"dense matrices have shape {mats.shape} for {len(Rs)} cell shifts, but the basis "
                f"gives {norb} orbitals: expected ({len(Rs)}, {norb}, {norb})"
            )
        offsets = np.concatenate([[0], np.cumsum(counts)])
        natoms = len(counts)
        bi, bj, bR, blocks = [], [], [], []
        # vectorize over atoms that share an orbital count
        classes = {int(n): np.flatnonzero(counts == n) for n in np.unique(counts)}
        for na, atoms_a in classes.items():
            rows = offsets[atoms_a][:, None] + np.arange(na)  # (A, na)
            for nb_, atoms_b in classes.items():
                cols = offsets[atoms_b][:, None] + np.arange(nb_)  # (B, nb)
                sub = mats[:, rows[:, None, :, None], cols[None, :, None, :]]  # (nR, A, B, na, nb)
                mag = np.abs(sub).max(axis=(3, 4))
                r_idx, a_idx, b_idx = np.nonzero(mag > drop_below)
                # both triangles are present in dense matrices; from_blocks checks and merges them
                bi.append(atoms_a[a_idx])
                bj.append(atoms_b[b_idx])
                bR.append(Rs[r_idx])
                blocks.extend(sub[r_idx, a_idx, b_idx])
        return cls.from_blocks(
            counts,
            np.concatenate(bi) if bi else np.zeros(0, np.int64),
            np.concatenate(bj) if bj else np.zeros(0, np.int64),
            np.concatenate(bR) if bR else np.zeros((0, 3), np.int64),
            blocks,
            periodic=periodic,
            hermiticity_tol=hermiticity_tol,
            name=name,
            basis=basis,
            symbols=symbols,
        ) if natoms else cls(counts, [], [], np.zeros((0, 3)), [], periodic=periodic, name=name)

    # ------------------------------------------------------------------------------------------
    # basic properties
    # ------------------------------------------------------------------------------------------
    @property
    def natoms(self) -> int:
        return len(self.orbital_counts)

    @property
    def norb(self) -> int:
        """Orbitals per cell."""
        return int(self.offsets[-1])

    @property
    def nblocks(self) -> int:
        """Blocks in the stored triangle."""
        return len(self.i)

    @property
    def groups(self) -> list[_Group]:
        return self._groups

    @property
    def cell_shifts(self) -> np.ndarray:
        """Distinct R of the full operator (both triangles), shape (nR, 3)."""
        return np.unique(np.concatenate([self.R, -self.R]), axis=0) if self.nblocks else np.zeros((1, 3), np.int64)

    def __repr__(self) -> str:
        return (
            f"RealSpaceOperator({self.name!r}, natoms={self.natoms}, norb={self.norb}, "
            f"blocks={self.nblocks} (one triangle), cell shifts={len(self.cell_shifts)})"
        )

    def check_structure(self, atoms) -> None:
        """Raise :class:`OperatorError` unless this operator fits ``atoms`` (count and basis)."""
        if len(atoms) != self.natoms:
            raise OperatorError(
                f"{self.name} has {self.natoms} atoms but the structure has {len(atoms)}"
            )
        if self.basis is not None:
            from .basis import BasisError

            try:
                expected = self.basis.orbital_counts(atoms.get_chemical_symbols())
            except BasisError as err:
                raise OperatorError(f"{self.name} does not match the structure: {err}") from err
            bad = np.flatnonzero(expected != self.orbital_counts)
            if len(bad):
                a = int(bad[0])
                raise OperatorError(
                    f"{self.name} does not match the structure: atom {a} ({atoms[a].symbol}) has "
                    f"{self.orbital_counts[a]} orbitals in the operator but {expected[a]} in basis {self.basis}"
                )
        if self.symbols is not None and list(atoms.get_chemical_symbols()) != self.symbols:
            raise OperatorError(f"{self.name} was built for elements {self.symbols[:8]}..., not these atoms")

    def _index(self) -> dict[int, tuple[int, int]]:
        if self._lookup is None:
            keys = _encode(self.i, self.j, self.R, self.natoms)
            self._lookup = {}
            for g, grp in enumerate(self._groups):
                for pos, key in enumerate(keys[grp.start : grp.stop]):
                    self._lookup[int(key)] = (g, pos)
        return self._lookup

    def block(self, i: int, j: int, R: Sequence[int] = (0, 0, 0)) -> np.ndarray:
        """<phi_i(r - tau_i)|O|phi_j(r - tau_j - R)>, shape (norb_i, norb_j); zeros if absent."""
        if not (0 <= i < self.natoms and 0 <= j < self.natoms):
            raise IndexError(f"atom index ({i}, {j}) out of range for {self.natoms} atoms")
        R = np.asarray(R, dtype=np.int64).reshape(1, 3)
        ii, jj = np.array([i]), np.array([j])
        upper = bool(_is_upper(ii, jj, R)[0])
        key = int(_encode(ii, jj, R, self.natoms)[0] if upper else _encode(jj, ii, -R, self.natoms)[0])
        hit = self._index().get(key)
        if hit is None:
            return np.zeros((self.orbital_counts[i], self.orbital_counts[j]))
        g, pos = hit
        blk = self._groups[g].data[pos]
        return blk.copy() if upper else blk.T.copy()

    def iter_blocks(self, both_triangles: bool = True) -> Iterator[tuple[int, int, tuple[int, int, int], np.ndarray]]:
        """Yield (i, j, R, block) for every stored block (and its mirror image if asked)."""
        for grp in self._groups:
            for k in range(grp.stop - grp.start):
                a, b, r = int(self.i[grp.start + k]), int(self.j[grp.start + k]), self.R[grp.start + k]
                yield a, b, tuple(int(x) for x in r), grp.data[k]
                if both_triangles and not (a == b and not r.any()):
                    yield b, a, tuple(int(-x) for x in r), grp.data[k].T

    def map_blocks(self, fn, name: str | None = None) -> "RealSpaceOperator":
        """A new operator whose block data are ``fn(data, group)`` per shape group (same sparsity)."""
        groups = [_Group(g.ni, g.nj, g.start, g.stop, np.asarray(fn(g.data, g), dtype=float)) for g in self._groups]
        return RealSpaceOperator(
            self.orbital_counts, self.i, self.j, self.R, groups, periodic=self.periodic,
            name=name or self.name, basis=self.basis, symbols=self.symbols,
        )

    def pair_distances(self, atoms) -> np.ndarray:
        """|tau_j + R . cell - tau_i| (Å) of every stored block, shape (nblocks,)."""
        cell = np.asarray(atoms.cell[:]) if self.periodic else np.zeros((3, 3))
        pos = atoms.positions
        return np.linalg.norm(pos[self.j] + self.R @ cell - pos[self.i], axis=1)

    def within_distance(self, atoms, r_max: float, r_min: float | None = None) -> "RealSpaceOperator":
        """The operator with only the blocks of atom pairs at r_min < d <= r_max (Å) kept (the
        others zero, same sparsity); ``r_min=None`` keeps the onsite blocks (d = 0) too."""
        d = self.pair_distances(atoms)
        keep = ((d <= r_max) & ((d > r_min) if r_min is not None else True)).astype(float)
        return self.map_blocks(lambda data, g: data * keep[g.start:g.stop, None, None])

    def __mul__(self, scalar: float) -> "RealSpaceOperator":
        return self.map_blocks(lambda d, g: d * float(scalar))

    __rmul__ = __mul__

    # ------------------------------------------------------------------------------------------
    # k-space
    # ------------------------------------------------------------------------------------------
    def _plan(self):
        """Per group: start of each atom pair's run of blocks, flat destination index, weights.

        Blocks inside a group are stored sorted by atom pair (then R) by ``_pack``, so the blocks
        of one pair (i, j) at different R form a contiguous run summing into one destination.
        """
        if self._bloch_plan is None:
            plan = []
            n = self.norb
            for grp in self._groups:
                gi, gj = self.i[grp.start : grp.stop], self.j[grp.start : grp.stop]
                pair = gi * self.natoms + gj
                if np.any(np.diff(pair) < 0):  # pragma: no cover - guaranteed by _pack
                    raise AssertionError("blocks of a group must be sorted by atom pair")
                upair, starts = np.unique(pair, return_index=True)
                pi, pj = upair // self.natoms, upair % self.natoms
                rows = self.offsets[pi][:, None, None] + np.arange(grp.ni)[None, :, None]
                cols = self.offsets[pj][:, None, None] + np.arange(grp.nj)[None, None, :]
                flat = (rows * n + cols).reshape(len(upair), -1)
                mirror = (np.swapaxes(cols, 1, 2) * n + np.swapaxes(rows, 1, 2)).reshape(len(upair), -1)
                self_pair = pi == pj
                onsite = (gi == gj) & ~self.R[grp.start : grp.stop].any(axis=1)
                weight = np.where(onsite, 0.5, 1.0)  # onsite blocks are split over T and T^H
                plan.append((starts, flat, mirror, self_pair, weight))
            self._bloch_plan = plan
        return self._bloch_plan

    def bloch(self, kpts, *, max_bytes: int = 1 << 28) -> np.ndarray:
        """O(k) = sum_R exp(2 pi i k.R) O(R): complex (nk, norb, norb), or (norb, norb) for one k.

        ``kpts`` are fractional coordinates of the reciprocal cell, shape (nk, 3) or (3,).
        Vectorized over blocks and k-points: per shape group, the phase-weighted sum over R of
        each atom pair's blocks is one sparse (nk * npairs, nblocks) @ dense (nblocks, ni * nj)
        product.  k-points are batched so that temporaries stay under ``max_bytes``.
        """
        import scipy.sparse as sp

        k, single = as_kpoints(kpts)
        if not self.periodic and np.any(np.abs(k) > 0):
            raise OperatorError(f"{self.name} is molecular (no periodic boundary conditions): only k = Gamma exists")
        n = self.norb
        out = np.zeros((len(k), n * n), dtype=complex)
        plan = self._plan()
        per_k = 16 * max([len(p[0]) * g.ni * g.nj for g, p in zip(self._groups, plan)] + [1])
        batch = max(1, int(max_bytes // per_k))
        for s in range(0, len(k), batch):
            kb = k[s : s + batch]
            nkb = len(kb)
            for grp, (starts, flat, mirror, self_pair, weight) in zip(self._groups, plan):
                nblk = grp.stop - grp.start
                phase = np.exp(2j * np.pi * (kb @ self.R[grp.start : grp.stop].T)) * weight  # (nkb, nblk)
                indptr = np.concatenate([(starts[None, :] + nblk * np.arange(nkb)[:, None]).ravel(), [nkb * nblk]])
                gather = sp.csr_matrix(
                    (phase.ravel(), np.tile(np.arange(nblk), nkb), indptr), shape=(nkb * len(starts), nblk)
                )
                # T(k) summed over R per atom pair: (nkb, npairs, ni, nj); O(k) = T + T^H
                t = (gather @ grp.data.reshape(nblk, -1)).reshape(nkb, len(starts), grp.ni, grp.nj)
                th = np.conj(np.swapaxes(t, 2, 3)).reshape(nkb, len(starts), -1)
                t = t.reshape(nkb, len(starts), -1)
                t[:, self_pair] += th[:, self_pair]
                out[s : s + nkb, flat] = t
                other = ~self_pair
                out[s : s + nkb, mirror[other]] = th[:, other]
        out = out.reshape(len(k), n, n)
        return out[0] if single else out

    def _coo(self) -> tuple[np.ndarray, np.ndarray]:
        if self._coo_cache is None:
            rows, cols = [], []
            for grp in self._groups:
                gi, gj = self.i[grp.start : grp.stop], self.j[grp.start : grp.stop]
                r = self.offsets[gi][:, None, None] + np.arange(grp.ni)[None, :, None]
                c = self.offsets[gj][:, None, None] + np.arange(grp.nj)[None, None, :]
                rows.append(np.broadcast_to(r, (len(gi), grp.ni, grp.nj)).reshape(-1))
                cols.append(np.broadcast_to(c, (len(gi), grp.ni, grp.nj)).reshape(-1))
            self._coo_cache = (
                np.concatenate(rows) if rows else np.zeros(0, np.int64),
                np.concatenate(cols) if cols else np.zeros(0, np.int64),
            )
        return self._coo_cache

    def bloch_sparse(self, kpt):
        """O(k) at one k-point as a scipy.sparse CSR matrix (complex; real at Gamma)."""
        import scipy.sparse as sp

        k, _ = as_kpoints(kpt)
        if len(k) != 1:
            raise ValueError("bloch_sparse takes a single k-point of shape (3,)")
        rows, cols = self._coo()
        vals, weights = [], []
        for grp in self._groups:
            R = self.R[grp.start : grp.stop]
            phase = np.exp(2j * np.pi * (R @ k[0]))
            onsite = (self.i[grp.start : grp.stop] == self.j[grp.start : grp.stop]) & ~R.any(axis=1)
            w = np.where(onsite, 0.5, 1.0) * phase
            vals.append((grp.data * w[:, None, None]).reshape(-1))
        v = np.concatenate(vals) if vals else np.zeros(0, complex)
        if np.allclose(k, np.round(k)) and np.allclose(np.round(k), 0):
            v = v.real
        t = sp.coo_matrix((v, (rows, cols)), shape=(self.norb, self.norb)).tocsr()
        return (t + t.conj().T).tocsr()

    def to_sparse(self, R: Sequence[int] = (0, 0, 0)):
        """O(R) for one cell shift as a real scipy.sparse CSR matrix (norb, norb), both triangles."""
        import scipy.sparse as sp

        R = np.asarray(R, dtype=np.int64).reshape(3)
        rows_all, cols_all = self._coo()
        rows, cols, vals = [], [], []
        pos = 0
        for grp in self._groups:
            size = grp.data.size
            r, c = rows_all[pos : pos + size], cols_all[pos : pos + size]
            pos += size
            gR = self.R[grp.start : grp.stop]
            fwd = np.all(gR == R, axis=1)
            bwd = np.all(gR == -R, axis=1) & ~(
                (self.i[grp.start : grp.stop] == self.j[grp.start : grp.stop]) & ~R.any()
            )
            per_block = grp.ni * grp.nj
            mf = np.repeat(fwd, per_block)
            mb = np.repeat(bwd, per_block)
            d = grp.data.reshape(-1)
            rows += [r[mf], c[mb]]
            cols += [c[mf], r[mb]]
            vals += [d[mf], d[mb]]
        cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
        return sp.coo_matrix(
            (cat(vals, float), (cat(rows, np.int64), cat(cols, np.int64))), shape=(self.norb, self.norb)
        ).tocsr()

    # ------------------------------------------------------------------------------------------
    # products with another operator of the same structure
    # ------------------------------------------------------------------------------------------
    def _aligned(self, other: "RealSpaceOperator"):
        """Yield (group, data_self, data_other) with other's blocks matched to self's (zeros if absent)."""
        if not np.array_equal(self.orbital_counts, other.orbital_counts):
            raise OperatorError(
                f"{self.name} and {other.name} belong to different structures or bases "
                f"({self.natoms} vs {other.natoms} atoms, {self.norb} vs {other.norb} orbitals)"
            )
        okeys = _encode(other.i, other.j, other.R, other.natoms)
        ogroup = np.empty(len(okeys), np.int64)
        opos = np.empty(len(okeys), np.int64)
        for g, grp in enumerate(other._groups):
            ogroup[grp.start : grp.stop] = g
            opos[grp.start : grp.stop] = np.arange(grp.stop - grp.start)
        order = np.argsort(okeys)
        skeys = okeys[order]
        mine = _encode(self.i, self.j, self.R, self.natoms)
        for grp in self._groups:
            k = mine[grp.start : grp.stop]
            loc = np.clip(np.searchsorted(skeys, k), 0, max(len(skeys) - 1, 0))
            found = skeys[loc] == k if len(skeys) else np.zeros(len(k), bool)
            od = np.zeros_like(grp.data)
            if found.any():
                src = order[loc[found]]
                og = other._groups[int(ogroup[src[0]])]  # same shape -> same group for all
                od[found] = og.data[opos[src]]
            yield grp, grp.data, od

    def trace_product(self, other: "RealSpaceOperator") -> float:
        """Tr(A B) per cell = sum_{i j R} A_ij(R) . B_ij(R) (e.g. Tr(D S) = electron count)."""
        total = 0.0
        for grp, a, b in self._aligned(other):
            w = np.where(
                (self.i[grp.start : grp.stop] == self.j[grp.start : grp.stop]) & ~self.R[grp.start : grp.stop].any(axis=1),
                1.0,
                2.0,
            )
            total += float(np.einsum("n,nab,nab->", w, a, b))
        return total

    def mulliken(self, overlap: "RealSpaceOperator") -> np.ndarray:
        """Mulliken gross orbital populations q_mu = sum_{nu R} D_{mu nu}(R) S_{mu nu}(R), (norb,).

        Call on the density matrix with the overlap as argument.  Sum per atom with
        ``np.add.reduceat(q, D.offsets[:-1])``.
        """
        q = np.zeros(self.norb)
        for grp, a, b in self._aligned(overlap):
            gi, gj = self.i[grp.start : grp.stop], self.j[grp.start : grp.stop]
            prod = a * b
            rows = self.offsets[gi][:, None] + np.arange(grp.ni)
            np.add.at(q, rows.ravel(), prod.sum(axis=2).ravel())
            mirror = ~((gi == gj) & ~self.R[grp.start : grp.stop].any(axis=1))
            cols = self.offsets[gj[mirror]][:, None] + np.arange(grp.nj)
            np.add.at(q, cols.ravel(), prod[mirror].sum(axis=1).ravel())
        return q

    def __add__(self, other: "RealSpaceOperator") -> "RealSpaceOperator":
        """A + B over the union of both operators' blocks (a block one of them lacks counts as zero);
        name, basis and symbols are A's."""
        if not isinstance(other, RealSpaceOperator):
            return NotImplemented
        if self.periodic != other.periodic:
            raise OperatorError(f"cannot add the periodic and the molecular operators {self.name} and {other.name}")
        i, j, R, blocks = [], [], [], []
        for grp, a, b in self._aligned(other):
            sl = slice(grp.start, grp.stop)
            i.append(self.i[sl]), j.append(self.j[sl]), R.append(self.R[sl]), blocks.extend(a + b)
        mine = np.sort(_encode(self.i, self.j, self.R, self.natoms))
        for grp in other._groups:
            sl = slice(grp.start, grp.stop)
            keys = _encode(other.i[sl], other.j[sl], other.R[sl], other.natoms)
            loc = np.clip(np.searchsorted(mine, keys), 0, max(len(mine) - 1, 0))
            only = (mine[loc] != keys) if len(mine) else np.ones(len(keys), bool)
            i.append(other.i[sl][only]), j.append(other.j[sl][only]), R.append(other.R[sl][only])
            blocks.extend(grp.data[only])
        return RealSpaceOperator.from_blocks(
            self.orbital_counts, np.concatenate(i), np.concatenate(j), np.concatenate(R), blocks,
            periodic=self.periodic, name=self.name, basis=self.basis, symbols=self.symbols)

    def max_abs_difference(self, other: "RealSpaceOperator") -> float:
        """Largest |A - B| over the blocks of both operators."""
        d1 = max((float(np.abs(a - b).max(initial=0.0)) for _, a, b in self._aligned(other)), default=0.0)
        d2 = max((float(np.abs(a - b).max(initial=0.0)) for _, a, b in other._aligned(self)), default=0.0)
        return max(d1, d2)
