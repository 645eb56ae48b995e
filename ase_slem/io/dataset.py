"""Our training-data format: one folder per frame, each a DeePTB-layout trajectory folder.

A *frame* is one structure with its DFT operators, the basis they are written in, the DFT
settings that produced them and scalar results (:class:`Frame`).  A *dataset* is a folder of
frames::

    dataset/
      frame.000000/          one DeePTB trajectory folder with nframes = 1 (see deeptb.py)
        info.json            DeePTB keys (nframes, natoms, pos_type, pbc) + "ase_slem" metadata
        atomic_numbers.dat   (natoms,)
        positions.dat        (natoms, 3) Cartesian, Å
        cell.dat             (3, 3) rows are lattice vectors, Å (zeros for a molecule)
        pbc.dat              (3,) 1/0
        basis.dat            {'Si': '2s2p1d'}
        hamiltonians.h5      group "0", dataset "i_j_Rx_Ry_Rz" per block, eV
        overlaps.h5          dimensionless
        density_matrices.h5  spin-summed (Tr(D S) = electron count), dimensionless
      frame.000001/
      ...

Blocks are <phi_i(r - tau_i)| O |phi_j(r - tau_j - R)> with 0-based atoms i, j and integer cell
shift R, both triangles stored (DeePTB expects both), float64.  Inside a block orbitals follow
DeePTB's order: shells as basis.dat declares them (grouped by l, increasing l), and inside a
shell m = -l..l of the real spherical harmonics with z as polar axis (no Condon-Shortley phase)
-- the ``"deeptb"`` convention of :mod:`ase_slem.basis`.  Readers convert to our (e3nn) order.
``info.json["ase_slem"]`` records the format version, orbital convention, units, basis name,
the DFT settings and the scalar results.  DeePTB itself can train on such a folder (prefix
``frame``); it ignores the extra keys.

Each frame is written to a hidden temporary folder next to its destination and moved into place
with :func:`os.replace`, so a reader (or a crashed generator) never sees a half-written frame.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..basis import Basis
from ..operators import RealSpaceOperator

FRAME_PREFIX = "frame"
OPERATOR_NAMES = ("hamiltonian", "overlap", "density_matrix")


class DatasetError(ValueError):
    """A dataset folder or frame that cannot be read or written."""


@dataclass
class Frame:
    """One structure with its operators.

    Attributes
    ----------
    atoms : ase.Atoms
        The structure (Å).  ``atoms.pbc`` all False for a molecule.
    operators : dict
        ``"hamiltonian"`` (eV), ``"overlap"``, ``"density_matrix"`` (spin-summed) ->
        :class:`~ase_slem.operators.RealSpaceOperator` in our orbital order; any subset.
    basis : Basis
        Shells per element, in the order the operators use.
    settings : dict
        How the operators were computed (code, version, functional, basis and pseudopotential
        names, k-meshes, cutoffs ...), JSON-serializable.
    results : dict
        Scalar results (total energy in eV, Fermi level in eV, electron count, timings ...),
        JSON-serializable.
    """

    atoms: Any
    operators: dict[str, RealSpaceOperator]
    basis: Basis
    settings: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)


def frame_name(index: int) -> str:
    """Folder name of frame ``index``: ``frame.000042``."""
    return f"{FRAME_PREFIX}.{int(index):06d}"


def write_frame(root: str | os.PathLike, frame: Frame, index: int | None = None, *, overwrite: bool = False) -> Path:
    """Write ``frame`` as ``root/frame.NNNNNN`` atomically and return that path.

    ``index=None`` takes the next free index.  An existing frame folder is an error unless
    ``overwrite``; then it is replaced in one rename (the old one is removed afterwards).
    """
    from . import deeptb

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if index is None:
        existing = [_frame_index(p) for p in root.iterdir()]
        index = max([i for i in existing if i is not None], default=-1) + 1
    dest = root / frame_name(index)
    if dest.exists() and not overwrite:
        raise DatasetError(f"{dest} already exists; pass overwrite=True to replace it or choose another index")
    tmp = root / f".tmp-{dest.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        deeptb.write(tmp, frame)
        if dest.exists():
            trash = root / f".old-{dest.name}-{uuid.uuid4().hex[:8]}"
            os.replace(dest, trash)
            os.replace(tmp, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_frame(path: str | os.PathLike) -> Frame:
    """Read one frame folder (any DeePTB-layout folder; its first frame)."""
    from . import deeptb

    return deeptb.read_frame(path, 0)


def frame_paths(root: str | os.PathLike) -> list[Path]:
    """The frame folders of a dataset, sorted by index (temporary folders are skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    found = sorted((i, p) for p in root.iterdir() if (i := _frame_index(p)) is not None)
    return [p for _, p in found]


def iter_frames(root: str | os.PathLike) -> Iterator[Frame]:
    """Yield the frames of a dataset in index order."""
    for p in frame_paths(root):
        yield read_frame(p)


def _frame_index(p: Path) -> int | None:
    m = re.fullmatch(rf"{FRAME_PREFIX}\.(\d+)", p.name)
    return int(m.group(1)) if (m and p.is_dir()) else None
