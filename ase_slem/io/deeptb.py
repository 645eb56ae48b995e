"""DeePTB / dftio HDF5 layout: reader and writer.

A DeePTB trajectory folder holds ``nframes`` structures with the same atom count::

    info.json            {"nframes", "natoms" (optional), "pos_type": "cart"|"frac"|"ase", "pbc"}
                         (may also sit in the parent folder, as DeePTB allows)
    atomic_numbers.dat   (natoms,) or (nframes * natoms,)
    positions.dat        (nframes * natoms, 3), Å, Cartesian unless pos_type is "frac"
    cell.dat             (3, 3) or (nframes * 3, 3), rows are lattice vectors, Å
    pbc.dat              optional, (3,) or (1,) 1/0 (written by dftio); else info["pbc"]
    basis.dat            a Python dict literal {'Si': '1s1p'}: shells per element, grouped by l
    hamiltonians.h5      eV;  overlaps.h5;  density_matrices.h5 (or DM.h5)
                         one group per frame ("0", "1", ... or 1-based), one dataset per block
                         named "i_j_Rx_Ry_Rz" (0-based atoms) holding
                         <phi_i(r - tau_i)| O |phi_j(r - tau_j - R)>, usually both triangles

Inside a block, orbitals follow basis.dat's shells and, inside a shell, m = -l..l of the
real spherical harmonics with z polar (DeePTB/dftio order; ``"deeptb"`` in
:mod:`ase_slem.basis`).  The reader converts to our (e3nn) order; the writer converts back.
Units are taken as DeePTB's: H in eV, S and D dimensionless.

Files written by :func:`write` carry an ``"ase_slem"`` entry in info.json with the orbital
convention, units, basis name, and per frame the DFT settings and results (see
:mod:`ase_slem.io.dataset`); the reader restores them.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms

from ..basis import Basis, BasisError
from ..operators import RealSpaceOperator
from .dataset import DatasetError, Frame

__all__ = ["add_operator", "read", "read_frame", "read_frames", "write", "count_frames", "detect", "is_deeptb_folder", "DeePTBFormatError"]

FORMAT_VERSION = 1
OPERATOR_FILES = {
    "hamiltonian": ("hamiltonians.h5",),
    "overlap": ("overlaps.h5",),
    "density_matrix": ("density_matrices.h5", "DM.h5"),
    "hamiltonian_baseline": ("hamiltonian_baselines.h5",),  # H0 of a Δ-learning model (ase_slem.hamiltonian_baseline)
}
UNITS = {"length": "Angstrom", "hamiltonian": "eV", "hamiltonian_baseline": "eV", "overlap": "1", "density_matrix": "1 (spin-summed: Tr(D S) = N_electrons)"}


class DeePTBFormatError(DatasetError):
    """A DeePTB-layout folder with missing or inconsistent files."""


def is_deeptb_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` (or the folder of a file ``path``) is a DeePTB trajectory folder:
    atomic_numbers.dat and one of the operator .h5 files (hamiltonians.h5, overlaps.h5,
    density_matrices.h5, DM.h5)."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if not p.is_dir() or not (p / "atomic_numbers.dat").exists():
        return False
    return any((p / name).exists() for names in OPERATOR_FILES.values() for name in names)


detect = is_deeptb_folder


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def read(path: str | os.PathLike, index: int = 0) -> tuple[Atoms, dict[str, RealSpaceOperator]]:
    """(atoms, {"hamiltonian", "overlap", "density_matrix" where present}) of frame ``index``.

    ``atoms.info`` gets ``basis`` ({element: "1s1p"}), ``source`` ("deeptb") and, for files we
    wrote, ``fermi_level`` (eV) when the frame's results have one.
    """
    frame = read_frame(path, index)
    return frame.atoms, frame.operators


def read_frames(path: str | os.PathLike) -> list[Frame]:
    """Every frame of a DeePTB trajectory folder."""
    return [read_frame(path, i) for i in range(count_frames(path))]


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames of a DeePTB trajectory folder (info.json, else from positions.dat)."""
    folder = _folder(path)
    info = _read_info(folder)
    if "nframes" in info:
        return int(info["nframes"])
    natoms = len(_loadtxt(folder / "atomic_numbers.dat", ndmin=1))
    return len(_loadtxt(folder / "positions.dat", ndmin=2)) // max(natoms, 1)


def read_frame(path: str | os.PathLike, index: int = 0, *, hermiticity_tol: float | None = None) -> Frame:
    """Frame ``index`` of a DeePTB trajectory folder, operators converted to our orbital order.

    ``hermiticity_tol`` bounds |O(i,j,R) - O(j,i,-R)^T| for blocks stored twice (default:
    1e-6 plus a few float rounding units of the largest element).
    """
    folder = _folder(path)
    info = _read_info(folder)
    meta = info.get("ase_slem", {})
    atoms = _read_structure(folder, info, index)
    basis = _read_basis(folder, meta.get("basis_name", ""))
    symbols = atoms.get_chemical_symbols()
    try:
        counts = basis.orbital_counts(symbols)
    except BasisError as exc:
        raise DeePTBFormatError(f"{folder / 'basis.dat'}: {exc}") from None
    convention = meta.get("orbital_convention", "deeptb")
    ops = {}
    for name, files in OPERATOR_FILES.items():
        file = next((folder / f for f in files if (folder / f).exists()), None)
        if file is None:
            continue
        i, j, R, groups = _read_blocks(file, index, counts, basis_file=folder / "basis.dat")
        if not atoms.pbc.any() and len(R) and np.any(R != 0):
            raise DeePTBFormatError(
                f"{file}: blocks with R != 0 for a structure without periodic boundary conditions "
                f"(pbc {atoms.pbc.tolist()}); fix pbc.dat / info.json"
            )
        blocks = _convert_groups(groups, i, j, symbols, basis, convention)
        scale = max((float(np.abs(b).max()) for b, _ in groups.values()), default=0.0)
        eps = max(float(np.finfo(b.dtype).eps) for b, _ in groups.values()) if groups else 0.0
        tol = hermiticity_tol if hermiticity_tol is not None else 1e-6 + 8 * eps * scale
        ops[name] = RealSpaceOperator.from_blocks(
            counts, i, j, R, blocks, periodic=bool(atoms.pbc.any()), hermiticity_tol=tol,
            name=f"{name} ({file.name})", basis=basis, symbols=symbols,
        )
        ops[name].name = name
    if not ops:
        raise DeePTBFormatError(
            f"{folder} has no operator file: expected one of "
            + ", ".join(f for files in OPERATOR_FILES.values() for f in files)
        )
    frames_meta = meta.get("frames", [])
    fmeta = frames_meta[index] if index < len(frames_meta) else {}
    settings = fmeta.get("settings", {"source": "deeptb", "path": str(folder)})
    results = fmeta.get("results", {})
    atoms.info.update({"basis": basis.as_strings(), "source": "deeptb"})
    if results.get("fermi_level") is not None:
        atoms.info["fermi_level"] = float(results["fermi_level"])
    return Frame(atoms, ops, basis, settings, results)


def _folder(path) -> Path:
    p = Path(path)
    if p.is_file():
        p = p.parent
    if not p.is_dir():
        raise DeePTBFormatError(f"{p} is not a folder")
    return p


def _loadtxt(file: Path, ndmin: int) -> np.ndarray:
    if not file.exists():
        raise DeePTBFormatError(f"{file.name} is missing in {file.parent}")
    try:
        return np.loadtxt(file, ndmin=ndmin)
    except ValueError as exc:
        raise DeePTBFormatError(f"{file}: cannot read numbers ({exc})") from None


def _read_info(folder: Path) -> dict:
    for cand in (folder / "info.json", folder.parent / "info.json"):
        if cand.exists():
            try:
                return json.loads(cand.read_text())
            except json.JSONDecodeError as exc:
                raise DeePTBFormatError(f"{cand} is not valid JSON: {exc}") from None
    return {}


def _read_structure(folder: Path, info: dict, index: int) -> Atoms:
    numbers = _loadtxt(folder / "atomic_numbers.dat", ndmin=1).astype(np.int64)
    pos = _loadtxt(folder / "positions.dat", ndmin=2)
    if pos.shape[1] != 3:
        raise DeePTBFormatError(f"{folder / 'positions.dat'}: expected 3 columns, found {pos.shape[1]}")
    nframes = int(info.get("nframes", 1))
    natoms = int(info.get("natoms", -1))
    if natoms < 0:
        natoms = len(pos) // nframes if nframes else 0
    if natoms == 0 or len(pos) != nframes * natoms:
        raise DeePTBFormatError(
            f"{folder / 'positions.dat'} has {len(pos)} rows; expected nframes * natoms = {nframes} * {natoms} "
            "(nframes and natoms from info.json)"
        )
    if not 0 <= index < nframes:
        raise DeePTBFormatError(f"frame {index} requested but {folder} holds {nframes} frame(s)")
    if len(numbers) == natoms:
        z = numbers
    elif len(numbers) == natoms * nframes:
        z = numbers[index * natoms : (index + 1) * natoms]
    else:
        raise DeePTBFormatError(
            f"{folder / 'atomic_numbers.dat'} has {len(numbers)} entries; expected natoms = {natoms} "
            f"or nframes * natoms = {nframes * natoms}"
        )
    pbc = _read_pbc(folder, info)
    cell = np.zeros((3, 3))
    if (folder / "cell.dat").exists():
        c = _loadtxt(folder / "cell.dat", ndmin=2)
        if c.shape == (3, 3):
            cell = c
        elif c.shape == (3 * nframes, 3):
            cell = c[3 * index : 3 * index + 3]
        else:
            raise DeePTBFormatError(f"{folder / 'cell.dat'} has shape {c.shape}; expected (3, 3) or ({3 * nframes}, 3)")
    elif pbc.any():
        raise DeePTBFormatError(f"cell.dat is missing in {folder}, but the structure is periodic (pbc {pbc.tolist()})")
    p = pos[index * natoms : (index + 1) * natoms]
    pos_type = info.get("pos_type", "cart")
    if pos_type == "frac":
        p = p @ cell
    elif pos_type not in ("cart", "ase"):
        raise DeePTBFormatError(f"info.json pos_type {pos_type!r} is not one of 'cart', 'frac', 'ase'")
    return Atoms(numbers=z, positions=p, cell=cell, pbc=pbc)


def _read_pbc(folder: Path, info: dict) -> np.ndarray:
    if (folder / "pbc.dat").exists():
        v = _loadtxt(folder / "pbc.dat", ndmin=1)
        if v.size not in (1, 3):
            raise DeePTBFormatError(f"{folder / 'pbc.dat'} has {v.size} values; expected 1 or 3")
        return np.broadcast_to(v.astype(bool), (3,)).copy()
    pbc = info.get("pbc", info.get("AtomicData_options", {}).get("pbc", (folder / "cell.dat").exists()))
    return np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()


def _read_basis(folder: Path, name: str = "") -> Basis:
    file = folder / "basis.dat"
    if not file.exists():
        raise DeePTBFormatError(f"basis.dat is missing in {folder}: it gives the shells per element, e.g. {{'Si': '2s2p1d'}}")
    text = file.read_text().strip()
    try:
        spec = ast.literal_eval(text)
        if not isinstance(spec, dict):
            raise ValueError("not a dict")
        return Basis(spec, name=name)
    except (ValueError, SyntaxError, BasisError) as exc:
        raise DeePTBFormatError(
            f"{file}: cannot read the basis {text[:80]!r} ({exc}); expected a dict like {{'Si': '2s2p1d'}}"
        ) from None


def _read_blocks(file: Path, index: int, counts: np.ndarray, basis_file: Path):
    """Index arrays and blocks of one frame, grouped by block shape.

    Returns i, j, R (nblocks,), (nblocks, 3) and ``{(ni, nj): (data (n, ni, nj), positions)}``
    where positions index into i, j, R.
    """
    import h5py

    try:
        fh = h5py.File(file, "r")
    except OSError as exc:
        raise DeePTBFormatError(f"{file} cannot be opened as HDF5: {exc}") from None
    with fh:
        group = fh.get(str(index))
        if group is None and "0" not in fh:
            group = fh.get(str(index + 1))  # DeePTB accepts 1-based frame groups
        if not isinstance(group, h5py.Group):
            raise DeePTBFormatError(f"{file} has no group for frame {index} (groups: {sorted(fh.keys())[:10]})")
        gid = group.id
        names = [n.decode() if isinstance(n, bytes) else n for n in gid]
        try:
            keys = np.array([[int(x) for x in n.split("_")] for n in names], dtype=np.int64).reshape(-1, 5)
        except ValueError:
            bad = next(n for n in names if len(n.split("_")) != 5 or not all(s.lstrip("-").isdigit() for s in n.split("_")))
            raise DeePTBFormatError(f"{file}: dataset name {bad!r} is not of the form 'i_j_Rx_Ry_Rz'") from None
        if keys.size and len(keys[0]) != 5:
            raise DeePTBFormatError(f"{file}: dataset names must be 'i_j_Rx_Ry_Rz'")
        i, j, R = keys[:, 0], keys[:, 1], keys[:, 2:5]
        natoms = len(counts)
        if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= natoms):
            b = int(np.flatnonzero((i < 0) | (j < 0) | (i >= natoms) | (j >= natoms))[0])
            raise DeePTBFormatError(f"{file}: block {names[b]!r} names an atom outside 0..{natoms - 1}")
        expect = np.stack([counts[i], counts[j]], axis=1)
        groups: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for shape in {tuple(x) for x in expect.tolist()}:
            pos = np.flatnonzero((expect[:, 0] == shape[0]) & (expect[:, 1] == shape[1]))
            data = None
            for n, p in enumerate(pos):
                ds = h5py.h5d.open(gid, names[p].encode())
                if ds.shape != shape:
                    raise DeePTBFormatError(
                        f"{file}: block {names[p]!r} has shape {ds.shape}, but {basis_file.name} gives "
                        f"{shape[0]} x {shape[1]} orbitals for atoms {i[p]} and {j[p]}; the basis does not "
                        "match the operator file"
                    )
                if data is None:
                    data = np.empty((len(pos),) + shape, dtype=ds.dtype)
                ds.read(h5py.h5s.ALL, h5py.h5s.ALL, data[n])
            groups[shape] = (data, pos)
    return i, j, R, groups


def _convert_groups(groups, i, j, symbols, basis: Basis, convention: str) -> list[np.ndarray]:
    """Blocks in our order, as a list aligned with i/j (float64)."""
    out: list[np.ndarray | None] = [None] * len(i)
    z = np.asarray(symbols)
    for data, pos in groups.values():
        pair = np.char.add(np.char.add(z[i[pos]], "|"), z[j[pos]])
        for key in np.unique(pair):
            sel = pair == key
            ei, ej = key.split("|")
            conv = basis.convert_block(data[sel].astype(float), ei, ej, convention)
            for p, blk in zip(pos[sel], conv):
                out[p] = blk
    return out


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def write(path: str | os.PathLike, frames: Frame | Sequence[Frame], *, extra_info: dict | None = None) -> Path:
    """Write frames (same atom count and basis) as a DeePTB trajectory folder ``path``.

    ``path`` must not exist or be empty.  Operators are written in DeePTB's orbital order,
    both triangles, float64; structure files in Å.  ``extra_info`` entries (e.g. DeePTB's
    ``AtomicData_options``) are added to info.json.  Not atomic by itself: see
    :func:`ase_slem.io.dataset.write_frame`.
    """
    import h5py

    frames = [frames] if isinstance(frames, Frame) else list(frames)
    if not frames:
        raise DeePTBFormatError("no frames to write")
    folder = Path(path)
    if folder.exists() and any(folder.iterdir()):
        raise DeePTBFormatError(f"{folder} exists and is not empty; write into a new folder")
    basis = frames[0].basis
    natoms = len(frames[0].atoms)
    for n, fr in enumerate(frames):
        if len(fr.atoms) != natoms:
            raise DeePTBFormatError(f"frame {n} has {len(fr.atoms)} atoms, frame 0 has {natoms}: a DeePTB folder needs one atom count")
        if fr.basis != basis:
            raise DeePTBFormatError(f"frame {n} uses basis {fr.basis}, frame 0 uses {basis}: one basis per folder")
        for name, op in fr.operators.items():
            if name not in OPERATOR_FILES:
                raise DeePTBFormatError(f"unknown operator {name!r}; known: {', '.join(OPERATOR_FILES)}")
            op.check_structure(fr.atoms)
    basis_strings = _deeptb_basis_strings(basis)
    folder.mkdir(parents=True, exist_ok=True)

    numbers = np.stack([fr.atoms.numbers for fr in frames])
    same_numbers = bool(np.all(numbers == numbers[0]))
    np.savetxt(folder / "atomic_numbers.dat", numbers[0] if same_numbers else numbers.ravel(), fmt="%d")
    np.savetxt(folder / "positions.dat", np.concatenate([fr.atoms.positions for fr in frames]), fmt="%.17e")
    cells = np.stack([np.asarray(fr.atoms.cell[:], dtype=float) for fr in frames])
    same_cell = bool(np.all(cells == cells[0]))
    np.savetxt(folder / "cell.dat", cells[0] if same_cell else cells.reshape(-1, 3), fmt="%.17e")
    pbcs = np.stack([fr.atoms.pbc for fr in frames])
    if not np.all(pbcs == pbcs[0]):
        raise DeePTBFormatError("frames differ in periodic boundary conditions; a DeePTB folder has one pbc")
    np.savetxt(folder / "pbc.dat", pbcs[0].astype(float), fmt="%.1f")
    (folder / "basis.dat").write_text(repr(basis_strings))
    pbc0 = pbcs[0].tolist()
    info = {
        "nframes": len(frames),
        "natoms": natoms,
        "pos_type": "cart",
        "pbc": pbc0[0] if len(set(pbc0)) == 1 else pbc0,
        "ase_slem": {
            "format_version": FORMAT_VERSION,
            "orbital_convention": "deeptb",
            "units": UNITS,
            "basis": basis_strings,
            "basis_name": basis.name,
            "frames": [{"settings": fr.settings, "results": fr.results} for fr in frames],
        },
    }
    info.update(extra_info or {})
    (folder / "info.json").write_text(json.dumps(info, indent=1, default=_json_default))

    for name, files in OPERATOR_FILES.items():
        present = [name in fr.operators for fr in frames]
        if not any(present):
            continue
        if not all(present):
            raise DeePTBFormatError(f"{name} is present in some frames only; every frame of a folder needs the same operators")
        with h5py.File(folder / files[0], "w") as fh:
            for n, fr in enumerate(frames):
                _write_operator(fh.create_group(str(n)), fr.operators[name], fr.atoms.get_chemical_symbols(), basis)
    return folder


def add_operator(path: str | os.PathLike, name: str, op: RealSpaceOperator) -> Path:
    """Add (or replace) operator ``name`` of a one-frame folder ``path``, atomically.

    The file is written beside its destination under a temporary name and renamed into place,
    so a reader never sees half of it.  The operator must fit the folder's structure and basis.
    """
    import h5py

    if name not in OPERATOR_FILES:
        raise DeePTBFormatError(f"unknown operator {name!r}; known: {', '.join(OPERATOR_FILES)}")
    folder = _folder(path)
    info = _read_info(folder)
    atoms = _read_structure(folder, info, 0)  # structure and basis only: the other operators stay on disk
    basis = _read_basis(folder, info.get("ase_slem", {}).get("basis_name", ""))
    op.check_structure(atoms)
    dest = folder / OPERATOR_FILES[name][0]
    tmp = folder / f".tmp-{dest.name}-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as fh:
            _write_operator(fh.create_group("0"), op, atoms.get_chemical_symbols(), basis)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _deeptb_basis_strings(basis: Basis) -> dict[str, str]:
    out = {}
    for el in basis.elements:
        ls = basis.shells(el)
        if list(ls) != sorted(ls):
            raise DeePTBFormatError(
                f"basis of {el} has shells {ls} not grouped by increasing l; DeePTB's basis.dat cannot "
                "describe that order"
            )
        out[el] = basis.as_strings()[el]
    return out


def _write_operator(group, op: RealSpaceOperator, symbols: list[str], basis: Basis) -> None:
    """Both triangles of ``op`` as 'i_j_Rx_Ry_Rz' datasets in DeePTB's order."""
    z = np.asarray(symbols)
    for grp in op.groups:
        gi, gj = op.i[grp.start : grp.stop], op.j[grp.start : grp.stop]
        gR = op.R[grp.start : grp.stop]
        pair = np.char.add(np.char.add(z[gi], "|"), z[gj])
        data = np.empty_like(grp.data)
        for key in np.unique(pair):
            sel = pair == key
            ei, ej = key.split("|")
            data[sel] = basis.convert_block(grp.data[sel], ei, ej, "deeptb", to="theirs")
        for a, b, r, blk in zip(gi.tolist(), gj.tolist(), gR.tolist(), data):
            group.create_dataset(f"{a}_{b}_{r[0]}_{r[1]}_{r[2]}", data=blk)
            if not (a == b and r == [0, 0, 0]):
                group.create_dataset(f"{b}_{a}_{-r[0]}_{-r[1]}_{-r[2]}", data=np.ascontiguousarray(blk.T))


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON-serializable")
