"""DeepH HDF5 operator folders: the legacy DeepH-pack layout and the new DeepH-dock layout.

Legacy (DeepH-pack "processed" folders)
---------------------------------------
``hamiltonians.h5``, ``overlaps.h5`` (and ``density_matrixs.h5`` when written): one dataset per
block, named by the text ``"[Rx, Ry, Rz, i, j]"`` with 1-BASED atoms i, j; each a dense
(norb_i, norb_j) float block <i, 0| O |j, R>, H in eV.  Beside them ``lat.dat`` (3x3, lattice
vectors as COLUMNS, Å), ``site_positions.dat`` (3 x natoms, columns = Cartesian positions, Å),
``element.dat`` (atomic numbers), ``orbital_types.dat`` (one line per atom: l of each shell)
and ``info.json`` (``fermi_level`` eV, ``isspinful``).  Orbital m-order inside a shell is the
source code's; for OpenMX (the sample here) it is the ``"openmx"`` convention of
:mod:`ase_slem.basis` (p: x, y, z; d: z2, x2-y2, xy, xz, yz).

New (DeepH-dock, ``docs/key_concepts.md``)
-----------------------------------------
``hamiltonian.h5``, ``overlap.h5``, ``density_matrix.h5`` each with ``atom_pairs`` (N, 5)
rows ``[R1, R2, R3, i, j]`` (0-based atoms, POSCAR order), ``chunk_boundaries`` (N+1),
``chunk_shapes`` (N, 2) and flat ``entries`` (block k = entries[cb[k]:cb[k+1]] reshaped
row-major to chunk_shapes[k]); ``POSCAR`` (Å) and ``info.json`` (``elements_orbital_map``
{element: [l of each shell]}, ``fermi_energy_eV``, ``spinful``).  Orbitals m = -l..l with
textbook real harmonics (no Condon-Shortley sign): the ``"deeph"`` convention.

Both layouts store both triangles; they are checked against each other.  Spinful data
(2n x 2n blocks) are not supported.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from ase import Atoms

from ..basis import Basis
from ..operators import RealSpaceOperator
from ._blocks import ReaderError, operator_from_blocks

LEGACY_FILES = {
    "hamiltonian": ("hamiltonians.h5",),
    "overlap": ("overlaps.h5",),
    "density_matrix": ("density_matrixs.h5", "density_matrices.h5"),
}
NEW_FILES = {
    "hamiltonian": ("hamiltonian.h5",),
    "overlap": ("overlap.h5",),
    "density_matrix": ("density_matrix.h5",),
}
LEGACY_STRUCTURE = ("lat.dat", "site_positions.dat", "element.dat", "orbital_types.dat")
_KEY = re.compile(r"^\s*\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]\s*$")


def _folder(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def layout(path: str | Path) -> str | None:
    """``"legacy"``, ``"new"`` or None for a folder (or a file inside it)."""
    d = _folder(path)
    if not d.is_dir():
        return None
    has = lambda names: any((d / n).is_file() for n in names)  # noqa: E731
    if has([n for v in LEGACY_FILES.values() for n in v]) and has(LEGACY_STRUCTURE):
        return "legacy"
    if has([n for v in NEW_FILES.values() for n in v]) and has(("POSCAR", "info.json")):
        return "new"
    return None


def detect(path: str | Path) -> bool:
    """True for a DeepH folder (or a file in one).

    Rules (in the folder itself): legacy = one of hamiltonians.h5 / overlaps.h5 /
    density_matrixs.h5 together with one of lat.dat / site_positions.dat / element.dat /
    orbital_types.dat (DeePTB folders, which also use hamiltonians.h5, have basis.dat and
    cell.dat instead); new = one of hamiltonian.h5 / overlap.h5 / density_matrix.h5 together
    with POSCAR or info.json.
    """
    return layout(path) is not None


def _load_h5():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is a dependency
        raise ImportError("reading DeepH files needs h5py: pip install h5py") from err
    return h5py


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReaderError(f"{path}: cannot read info.json ({err})") from err


# ---------------------------------------------------------------------------------------------
# legacy
# ---------------------------------------------------------------------------------------------
def _loadtxt(path: Path, what: str, **kwargs) -> np.ndarray:
    if not path.is_file():
        raise ReaderError(f"{path.name} is missing in {path.parent}: it holds the {what}")
    try:
        return np.loadtxt(path, ndmin=2, **kwargs)
    except ValueError as err:
        raise ReaderError(f"{path}: cannot read the {what} ({err})") from err


def read_legacy_structure(folder: str | Path) -> tuple[Atoms, Basis, dict]:
    """Atoms (Å), Basis (shells from orbital_types.dat) and info.json of a legacy folder."""
    d = Path(folder)
    lat = _loadtxt(d / "lat.dat", "lattice vectors (columns, Å)")
    pos = _loadtxt(d / "site_positions.dat", "atomic positions (columns, Å)")
    z = _loadtxt(d / "element.dat", "atomic numbers").astype(int).ravel()
    types_path = d / "orbital_types.dat"
    if not types_path.is_file():
        raise ReaderError(f"orbital_types.dat is missing in {d}: it lists the l of each shell per atom")
    shell_lines = [ln.split() for ln in types_path.read_text().splitlines() if ln.strip()]
    if lat.shape != (3, 3):
        raise ReaderError(f"{d / 'lat.dat'}: expected a 3x3 matrix, got shape {lat.shape}")
    if pos.shape != (3, len(z)):
        raise ReaderError(
            f"{d / 'site_positions.dat'}: expected 3 rows x {len(z)} columns (one per atom of element.dat), "
            f"got shape {pos.shape}"
        )
    if len(shell_lines) != len(z):
        raise ReaderError(
            f"{types_path}: {len(shell_lines)} lines for {len(z)} atoms in element.dat (one line per atom)"
        )
    atoms = Atoms(numbers=z, positions=pos.T, cell=lat.T, pbc=True)
    shells: dict[str, tuple[int, ...]] = {}
    for a, (sym, ls) in enumerate(zip(atoms.get_chemical_symbols(), shell_lines)):
        ls = tuple(int(x) for x in ls)
        if shells.setdefault(sym, ls) != ls:
            raise ReaderError(f"{types_path}: atom {a + 1} ({sym}) has shells {ls}, another {sym} has {shells[sym]}")
    info = _read_json(d / "info.json") if (d / "info.json").is_file() else {}
    return atoms, Basis(shells, name="deeph-legacy"), info


def _read_legacy_blocks(path: Path, natoms: int):
    h5py = _load_h5()
    i, j, R, blocks = [], [], [], []
    try:
        with h5py.File(path, "r") as f:
            for key in f.keys():
                m = _KEY.match(key)
                if m is None:
                    raise ReaderError(f"{path}: dataset name {key!r} is not of the form '[Rx, Ry, Rz, i, j]'")
                rx, ry, rz, a, b = (int(x) for x in m.groups())
                if not (1 <= a <= natoms and 1 <= b <= natoms):
                    raise ReaderError(f"{path}: block {key} refers to atom outside 1..{natoms} (indices are 1-based)")
                data = f[key][()]
                if np.iscomplexobj(data):
                    raise ReaderError(f"{path}: block {key} is complex: spinful/SOC data are not supported")
                i.append(a - 1), j.append(b - 1), R.append((rx, ry, rz)), blocks.append(data)
    except OSError as err:
        raise ReaderError(f"{path}: not a readable HDF5 file ({err})") from err
    return np.array(i), np.array(j), np.array(R).reshape(-1, 3), blocks


def read_legacy(folder: str | Path, convention: str = "openmx") -> tuple[Atoms, dict[str, RealSpaceOperator]]:
    """Read a legacy DeepH-pack folder; ``convention`` is the m-order of the source code."""
    d = _folder(folder)
    atoms, basis, info = read_legacy_structure(d)
    if info.get("isspinful"):
        raise ReaderError(f"{d / 'info.json'}: isspinful is true; spinful DeepH data are not supported")
    ops = {}
    for key, names in LEGACY_FILES.items():
        path = next((d / n for n in names if (d / n).is_file()), None)
        if path is None:
            continue
        i, j, R, blocks = _read_legacy_blocks(path, len(atoms))
        ops[key] = operator_from_blocks(
            atoms.get_chemical_symbols(), basis, convention, i, j, R, blocks, name=key, source=str(path)
        )
    if not ops:
        raise ReaderError(f"{d}: no hamiltonians.h5 / overlaps.h5 / density_matrixs.h5 found")
    if "fermi_level" in info:
        atoms.info["fermi_level"] = float(info["fermi_level"])
    atoms.info["basis"] = basis.as_strings()
    atoms.info["source"] = "deeph-legacy"
    return atoms, ops


# ---------------------------------------------------------------------------------------------
# new
# ---------------------------------------------------------------------------------------------
def read_new_blocks(path: str | Path):
    """(atom_pairs (N, 5) int, blocks list) of one new-layout HDF5 file, checked for consistency."""
    h5py = _load_h5()
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("atom_pairs", "chunk_boundaries", "chunk_shapes", "entries") if k not in f]
            if missing:
                raise ReaderError(f"{path}: datasets {missing} are missing (DeepH-dock layout needs atom_pairs, "
                                  f"chunk_boundaries, chunk_shapes, entries)")
            pairs = np.asarray(f["atom_pairs"][()], dtype=np.int64)
            bounds = np.asarray(f["chunk_boundaries"][()], dtype=np.int64)
            shapes = np.asarray(f["chunk_shapes"][()], dtype=np.int64)
            entries = f["entries"][()]
    except OSError as err:
        raise ReaderError(f"{path}: not a readable HDF5 file ({err})") from err
    n = len(pairs)
    if pairs.shape != (n, 5) or bounds.shape != (n + 1,) or shapes.shape != (n, 2):
        raise ReaderError(
            f"{path}: inconsistent shapes atom_pairs {pairs.shape}, chunk_boundaries {bounds.shape}, "
            f"chunk_shapes {shapes.shape} (expected (N, 5), (N+1,), (N, 2))"
        )
    if np.any(np.diff(bounds) != shapes.prod(axis=1)) or bounds[-1] != len(entries) or bounds[0] != 0:
        raise ReaderError(
            f"{path}: chunk_boundaries do not match chunk_shapes and the {len(entries)} entries "
            f"(truncated or corrupt file)"
        )
    if np.iscomplexobj(entries):
        raise ReaderError(f"{path}: complex entries: spinful/SOC data are not supported")
    blocks = [entries[bounds[k] : bounds[k + 1]].reshape(shapes[k]) for k in range(n)]
    return pairs, blocks


def read_poscar(path: str | Path) -> Atoms:
    """POSCAR -> Atoms (via ase.io), with a clear error when it is absent or unreadable."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"POSCAR is missing in {path.parent}: it holds the structure")
    try:
        atoms = ase.io.read(path, format="vasp")
    except Exception as err:  # ase raises many kinds
        raise ReaderError(f"{path}: cannot read POSCAR ({err})") from err
    atoms.pbc = True
    return atoms


def read_new(folder: str | Path, convention: str = "deeph") -> tuple[Atoms, dict[str, RealSpaceOperator]]:
    """Read a new-layout DeepH-dock folder."""
    d = _folder(folder)
    atoms = read_poscar(d / "POSCAR")
    if not (d / "info.json").is_file():
        raise ReaderError(f"info.json is missing in {d}: it holds elements_orbital_map (shells per element)")
    info = _read_json(d / "info.json")
    if info.get("spinful"):
        raise ReaderError(f"{d / 'info.json'}: spinful is true; spinful DeepH data are not supported")
    if "elements_orbital_map" not in info:
        raise ReaderError(f"{d / 'info.json'}: key elements_orbital_map (l of each shell per element) is missing")
    basis = Basis({el: tuple(ls) for el, ls in info["elements_orbital_map"].items()}, name="deeph")
    symbols = atoms.get_chemical_symbols()
    if "atoms_quantity" in info and int(info["atoms_quantity"]) != len(atoms):
        raise ReaderError(f"{d / 'info.json'}: atoms_quantity {info['atoms_quantity']} but POSCAR has {len(atoms)} atoms")
    norb = int(basis.orbital_counts(symbols).sum())
    if "orbits_quantity" in info and int(info["orbits_quantity"]) != norb:
        raise ReaderError(
            f"{d / 'info.json'}: orbits_quantity {info['orbits_quantity']} but elements_orbital_map and POSCAR give {norb}"
        )
    ops, pairs_ref = {}, None
    for key, (name,) in NEW_FILES.items():
        path = d / name
        if not path.is_file():
            continue
        pairs, blocks = read_new_blocks(path)
        if len(pairs) and (pairs[:, 3:].min() < 0 or pairs[:, 3:].max() >= len(atoms)):
            raise ReaderError(f"{path}: atom_pairs refer to atoms outside 0..{len(atoms) - 1} (POSCAR has {len(atoms)})")
        ops[key] = operator_from_blocks(
            symbols, basis, convention, pairs[:, 3], pairs[:, 4], pairs[:, :3], blocks, name=key, source=str(path)
        )
    if not ops:
        raise ReaderError(f"{d}: none of hamiltonian.h5 / overlap.h5 / density_matrix.h5 found")
    if "fermi_energy_eV" in info:
        atoms.info["fermi_level"] = float(info["fermi_energy_eV"])
    atoms.info["basis"] = basis.as_strings()
    atoms.info["source"] = "deeph"
    return atoms, ops


def read(path: str | Path, convention: str | None = None) -> tuple[Atoms, dict[str, RealSpaceOperator]]:
    """Read a DeepH folder of either layout -> (atoms, {"hamiltonian" (eV), "overlap", ...}).

    ``convention`` overrides the orbital convention of the blocks (default ``"openmx"`` for
    legacy folders, which DeepH-pack writes in the source code's order, ``"deeph"`` for new ones).
    """
    kind = layout(path)
    if kind == "legacy":
        return read_legacy(path, convention or "openmx")
    if kind == "new":
        return read_new(path, convention or "deeph")
    raise ReaderError(
        f"{path}: not a DeepH folder: expected orbital_types.dat + hamiltonians.h5/overlaps.h5 (legacy) "
        f"or POSCAR + info.json + hamiltonian.h5/overlap.h5 (DeepH-dock)"
    )
