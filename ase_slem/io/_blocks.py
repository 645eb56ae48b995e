"""Shared by the DFT readers: cut code-ordered matrices into atom blocks in OUR orbital order.

Every reader ends with the same two steps: entries or blocks written in a code's orbital
convention (``"abacus"``, ``"siesta"``, ``"deeph"``, ``"openmx"``; see
:data:`ase_slem.basis.CONVENTIONS`) are grouped into atom-pair blocks <i, 0| O |j, R>, each
block is rotated into our (e3nn) order with the basis converters, and a
:class:`~ase_slem.operators.RealSpaceOperator` is built (which checks that the two triangles
agree).  Vectorized per element pair; numpy only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..basis import Basis
from ..operators import NonHermitianError, RealSpaceOperator


class ReaderError(ValueError):
    """Input files of a DFT code that are missing, truncated or inconsistent."""


def _species_index(symbols: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    names = list(dict.fromkeys(symbols))
    return np.array([names.index(s) for s in symbols], dtype=np.int64), names


def operator_from_blocks(
    symbols: Sequence[str],
    basis: Basis,
    convention: str,
    i: np.ndarray,
    j: np.ndarray,
    R: np.ndarray,
    blocks: Sequence[np.ndarray],
    *,
    scale: float = 1.0,
    name: str = "operator",
    source: str = "",
    hermiticity_tol: float = 1e-5,
) -> RealSpaceOperator:
    """Blocks (R, i, j) in ``convention`` -> RealSpaceOperator in our order, times ``scale``.

    ``blocks[b]`` has shape (norb(symbols[i[b]]), norb(symbols[j[b]])) in the code's order.
    Blocks of both triangles may be given; they must agree (``hermiticity_tol``, in the
    output unit), otherwise a :class:`ReaderError` names ``source``.
    """
    symbols = list(symbols)
    counts = basis.orbital_counts(symbols)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    R = np.asarray(R, dtype=np.int64).reshape(-1, 3)
    spec, names = _species_index(symbols)
    out: list[np.ndarray | None] = [None] * len(i)
    pair = spec[i] * len(names) + spec[j] if len(i) else np.zeros(0, np.int64)
    for key in np.unique(pair):
        sel = np.flatnonzero(pair == key)
        ei, ej = names[key // len(names)], names[key % len(names)]
        shape = (basis.norb(ei), basis.norb(ej))
        bad = [b for b in sel if np.shape(blocks[b]) != shape]
        if bad:
            b = bad[0]
            raise ReaderError(
                f"{source}: block (R={tuple(R[b])}, atoms {i[b]}, {j[b]}) has shape "
                f"{np.shape(blocks[b])}, but the basis {basis.as_strings()} gives {shape}"
            )
        stack = np.stack([np.asarray(blocks[b], dtype=float) for b in sel]) * scale
        conv = basis.convert_block(stack, ei, ej, convention)
        for n, b in enumerate(sel):
            out[b] = conv[n]
    try:
        return RealSpaceOperator.from_blocks(
            counts, i, j, R, out, hermiticity_tol=hermiticity_tol, name=name, basis=basis, symbols=symbols
        )
    except NonHermitianError as err:
        raise ReaderError(f"{source}: {err}") from err


def operator_from_triplets(
    symbols: Sequence[str],
    basis: Basis,
    convention: str,
    R: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    **kwargs,
) -> RealSpaceOperator:
    """Sparse entries O_{row, col}(R) of whole-cell matrices (code order) -> RealSpaceOperator.

    ``R`` (nnz, 3) integer cell shift of the column orbital, ``rows``/``cols`` (nnz,) 0-based
    orbital indices in the code's global order (atom by atom, ``basis`` order within an
    atom).  Entries not given are zero.  Keyword arguments go to :func:`operator_from_blocks`.
    """
    symbols = list(symbols)
    counts = basis.orbital_counts(symbols)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    norb = int(offsets[-1])
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    R = np.asarray(R, dtype=np.int64).reshape(-1, 3)
    values = np.asarray(values, dtype=float)
    source = kwargs.get("source", "")
    if len(rows) and (rows.min() < 0 or cols.min() < 0 or rows.max() >= norb or cols.max() >= norb):
        raise ReaderError(
            f"{source}: orbital index out of range: the structure and basis {basis.as_strings()} "
            f"give {norb} orbitals, the matrix refers to index {max(rows.max(), cols.max())}"
        )
    atom_of = np.repeat(np.arange(len(counts)), counts)
    ai, aj = atom_of[rows], atom_of[cols]
    lo = R.min(axis=0) if len(R) else np.zeros(3, np.int64)
    span = (R.max(axis=0) - lo + 1) if len(R) else np.ones(3, np.int64)
    key = ((ai * len(counts) + aj) * span[0] + (R[:, 0] - lo[0])) * span[1] + (R[:, 1] - lo[1])
    key = key * span[2] + (R[:, 2] - lo[2])
    ukey, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    bi, bj, bR = ai[first], aj[first], R[first]
    blocks = [np.zeros((counts[a], counts[b])) for a, b in zip(bi, bj)]
    # scatter per block shape with one fancy-indexed assignment each
    lr, lc = rows - offsets[ai], cols - offsets[aj]
    shape_key = counts[bi] * (counts.max() + 1) + counts[bj]
    for sk in np.unique(shape_key):
        members = np.flatnonzero(shape_key == sk)
        slot = np.full(len(ukey), -1)
        slot[members] = np.arange(len(members))
        data = np.zeros((len(members), counts[bi[members[0]]], counts[bj[members[0]]]))
        entry = np.flatnonzero(slot[inverse] >= 0)
        data[slot[inverse[entry]], lr[entry], lc[entry]] = values[entry]
        for n, b in enumerate(members):
            blocks[b] = data[n]
    return operator_from_blocks(symbols, basis, convention, bi, bj, bR, blocks, **kwargs)
