"""ABACUS LCAO real-space matrices: H(R), S(R), DM(R) in text CSR, with STRU, INPUT and .orb.

Layouts read
------------
* old (ABACUS <= 3.10): ``data-HR-sparse_SPIN0.csr``, ``data-SR-sparse_SPIN0.csr``,
  ``data-DMR-sparse_SPIN0.csr`` (also with a prefix, e.g. test references
  ``refdata-DMR-...``)::

      STEP: 0                              (from 3.0 on; 2.x files start at the next line)
      Matrix Dimension of H(R): 53
      Matrix number of H(R): 51
      Rx Ry Rz nnz                         one header per R, then if nnz > 0:
      values (nnz) / column indices (nnz, 0-based) / row pointers (dim + 1)

* new (ABACUS >= 3.11): ``hrs1_nao.csr``, ``srs1_nao.csr``, ``dmrs1_nao.csr``: a header
  (``--- Ionic Step n ---``, ``# print ...``, ``n # number of spin directions``, ``n # spin
  index`` (absent in DM files), ``n # number of localized basis``, ``n # number of Bravais
  lattice vector R``), the unit cell (lattice name, lattice constant in Å, three vectors in
  units of it, species labels, counts per species, ``Direct``, positions), a comment box, then
  the same per-R blocks with ``# CSR values`` / ``# CSR column indices`` / ``# CSR row
  pointers`` comment lines and arrays wrapped over several lines.

Both are read as one token stream with '#' lines dropped and arrays taken by count, so line
wrapping does not matter.  Only the first ionic step of a file is read.

Conventions
-----------
Row orbital in the home cell, column orbital translated by +R (lattice-vector units):
X_{mu nu}(R) = <phi_mu(r - tau_mu)| X |phi_nu(r - tau_nu - R)> (checked on the MoS2 sample).
Global orbital order: species (STRU order) -> atoms -> l -> zeta -> m = 0, +1, -1, +2, -2, ...
with the odd-|m| functions of opposite sign to the textbook real harmonics: the ``"abacus"``
convention of :mod:`ase_slem.basis`.  H is in Ry and converted with ABACUS's own constant
(13.605698 eV/Ry); S and DM are dimensionless (nspin = 1 DM already holds the spin factor 2;
for nspin = 2 the two spin files are summed).

Structure: STRU (``LATTICE_CONSTANT`` in bohr, ``LATTICE_VECTORS`` or ``latname`` from
INPUT with ``LATTICE_PARAMETERS``, ``ATOMIC_POSITIONS`` Direct / Cartesian (units of the
lattice constant) / Cartesian_angstrom / Cartesian_au), or the unit cell inside a new-layout
file.  Shells per species from the ``.orb`` files named in ``NUMERICAL_ORBITAL`` (searched in
INPUT's ``orbital_dir``, the run folder, its subfolders and the folders beside it), otherwise
from ``running_*.log``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import Bohr

from ..basis import Basis
from ..operators import RealSpaceOperator
from ._blocks import ReaderError, operator_from_triplets
from .radial import RadialBasis, RadialFileError, read_abacus_orb

RY_TO_EV = 13.605698  # ABACUS source/module_base/constants.h (Ry_to_eV)

OPERATOR_FILES = {
    # key: (old-layout glob for spin s, new-layout name for spin s)
    "hamiltonian": ("*HR-sparse_SPIN{s}.csr", "hrs{s1}_nao.csr"),
    "overlap": ("*SR-sparse_SPIN{s}.csr", "srs{s1}_nao.csr"),
    "density_matrix": ("*DMR-sparse_SPIN{s}.csr", "dmrs{s1}_nao.csr"),
}
_NEW_OVERLAP_ALT = "sr_nao.csr"


# ---------------------------------------------------------------------------------------------
# CSR files
# ---------------------------------------------------------------------------------------------
@dataclass
class CSRMatrices:
    """The matrices X(R) of one ABACUS CSR file, in ABACUS's order and unit.

    Attributes
    ----------
    R : (nR, 3) int, cell shifts (blocks with nnz = 0 included)
    indptr : (nR, dim + 1) int, row pointers per R (0-based, relative to that R's entries)
    indices, values : (nnz_total,) column indices and values, R blocks concatenated
    layout : "old" or "new"
    cell : for the new layout, {"lattice_constant" (Å), "vectors" (3, 3) in its units,
           "labels", "counts", "positions" (natoms, 3) fractional}; None for the old layout
    """

    path: Path
    dim: int
    R: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    layout: str
    step: int | None = None
    nspin: int | None = None
    cell: dict | None = None

    def triplets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(R (nnz, 3), rows (nnz,), cols (nnz,), values (nnz,)) of all entries."""
        nnz = self.indptr[:, -1]
        rows = np.concatenate(
            [np.repeat(np.arange(self.dim), np.diff(p)) for p in self.indptr]
        ) if len(self.R) else np.zeros(0, np.int64)
        return np.repeat(self.R, nnz, axis=0), rows, self.indices, self.values

    def dense(self) -> np.ndarray:
        """Dense (nR, dim, dim) array (small systems only)."""
        out = np.zeros((len(self.R), self.dim, self.dim))
        _, rows, cols, vals = self.triplets()
        which = np.repeat(np.arange(len(self.R)), self.indptr[:, -1])
        out[which, rows, cols] = vals
        return out


def _fail(path, what: str) -> ReaderError:
    return ReaderError(f"{path}: {what}")


def read_csr(path: str | Path) -> CSRMatrices:
    """Read one ABACUS CSR file (old or new layout; detected from its first lines)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ReaderError(f"cannot read ABACUS matrix file {path}: {err}") from err
    lines = text.splitlines()
    head = [ln.strip() for ln in lines[:12] if ln.strip()]
    if not head:
        raise _fail(path, "the file is empty")
    if head[0].startswith("STEP:") or head[0].startswith("Matrix Dimension"):
        return _read_old_csr(path, lines)
    if "Ionic Step" in head[0] or any("number of localized basis" in h for h in head):
        return _read_new_csr(path, lines)
    raise _fail(
        path,
        "not an ABACUS CSR matrix file: expected 'STEP: n' / 'Matrix Dimension of ...' (old layout) "
        "or ' --- Ionic Step n ---' (new layout) at the top",
    )


def _read_old_csr(path: Path, lines: list[str]) -> CSRMatrices:
    k, step = 0, None
    while k < len(lines) and not lines[k].strip():
        k += 1
    if lines[k].strip().startswith("STEP:"):
        step = int(lines[k].split(":")[1])
        k += 1
    try:
        dim = int(lines[k].split(":")[1])
        nR = int(lines[k + 1].split(":")[1])
        if not (lines[k].startswith("Matrix Dimension") and lines[k + 1].startswith("Matrix number")):
            raise ValueError(lines[k])
    except (IndexError, ValueError) as err:
        raise _fail(path, f"cannot read 'Matrix Dimension' / 'Matrix number' header lines ({err})") from err
    tokens = " ".join(lines[k + 2 :]).split()
    return _parse_blocks(path, tokens, dim, nR, "old", step=step)


def _header_int(path, lines, label, required=True):
    for ln in lines:
        if "#" in ln and label in ln.split("#", 1)[1]:
            return int(ln.split("#", 1)[0])
    if required:
        raise _fail(path, f"header line '<n> # {label}' is missing")
    return None


def _read_new_csr(path: Path, lines: list[str]) -> CSRMatrices:
    # first ionic step only
    starts = [n for n, ln in enumerate(lines) if "--- Ionic Step" in ln]
    end = starts[1] if len(starts) > 1 else len(lines)
    section = lines[:end]
    step = None
    if starts:
        m = re.search(r"Ionic Step\s+(\d+)", lines[starts[0]])
        step = int(m.group(1)) if m else None
    try:
        dim = _header_int(path, section[:12], "number of localized basis")
        nR = _header_int(path, section[:12], "number of Bravais lattice vector")
        nspin = _header_int(path, section[:12], "number of spin directions", required=False)
    except ValueError as err:
        raise _fail(path, f"cannot read the header counts ({err})") from err
    # unit cell: the plain lines after the header and before the comment box
    k = max(n for n, ln in enumerate(section[:12]) if "number of Bravais lattice vector" in ln) + 1
    cell_lines = []
    while k < len(section) and not section[k].strip().startswith("#"):
        if section[k].strip():
            cell_lines.append(section[k].split())
        k += 1
    cell = _parse_new_cell(path, cell_lines)
    tokens = " ".join(ln for ln in section[k:] if not ln.strip().startswith("#")).split()
    return _parse_blocks(path, tokens, dim, nR, "new", step=step, nspin=nspin, cell=cell)


def _parse_new_cell(path, rows: list[list[str]]) -> dict | None:
    if not rows:
        return None
    try:
        lat0 = float(rows[1][0])
        vectors = np.array(rows[2:5], dtype=float)
        labels = rows[5]
        counts = [int(c) for c in rows[6]]
        if rows[7][0].lower() != "direct":
            raise ValueError(f"expected 'Direct', found {' '.join(rows[7])!r}")
        positions = np.array([r[:3] for r in rows[8 : 8 + sum(counts)]], dtype=float)
        if positions.shape != (sum(counts), 3) or len(labels) != len(counts):
            raise ValueError("positions or species counts do not match")
    except (IndexError, ValueError) as err:
        raise _fail(path, f"cannot read the unit-cell block after the header ({err})") from err
    return {"lattice_name": rows[0][0], "lattice_constant": lat0, "vectors": vectors,
            "labels": labels, "counts": counts, "positions": positions}


def _parse_blocks(path, tokens, dim, nR, layout, **extra) -> CSRMatrices:
    pos = 0
    Rs, indptrs, idx, vals = [], [], [], []

    def take(n, what, iR):
        nonlocal pos
        if pos + n > len(tokens):
            raise _fail(
                path,
                f"truncated: R block {iR + 1} of {nR} needs {n} {what}, only {len(tokens) - pos} "
                f"numbers are left. Re-copy or re-run ABACUS to get the complete file",
            )
        out = tokens[pos : pos + n]
        pos += n
        return out

    for iR in range(nR):
        head = take(4, "header numbers (Rx Ry Rz nnz)", iR)
        try:
            R = [int(t) for t in head[:3]]
            nnz = int(head[3])
        except ValueError as err:
            raise _fail(path, f"R block {iR + 1}: bad header {' '.join(head)!r}") from err
        if nnz == 0:
            Rs.append(R)
            indptrs.append(np.zeros(dim + 1, np.int64))
            continue
        v = take(nnz, "values", iR)
        if v and v[0].startswith("("):
            raise _fail(path, "complex (re,im) values: non-collinear / spin-orbit (nspin=4) files are not supported")
        try:
            v = np.array(v, dtype=float)
            c = np.array(take(nnz, "column indices", iR), dtype=np.int64)
            p = np.array(take(dim + 1, "row pointers", iR), dtype=np.int64)
        except ValueError as err:
            raise _fail(path, f"R block {iR + 1} (R={R}): non-numeric entry ({err})") from err
        if p[0] != 0 or p[-1] != nnz or np.any(np.diff(p) < 0):
            raise _fail(path, f"R block {iR + 1} (R={R}): row pointers do not run from 0 to nnz={nnz}")
        if c.min() < 0 or c.max() >= dim:
            raise _fail(path, f"R block {iR + 1} (R={R}): column index outside 0..{dim - 1}")
        Rs.append(R)
        indptrs.append(p)
        idx.append(c)
        vals.append(v)
    return CSRMatrices(
        path=Path(path),
        dim=dim,
        R=np.array(Rs, dtype=np.int64).reshape(-1, 3),
        indptr=np.array(indptrs, dtype=np.int64).reshape(-1, dim + 1),
        indices=np.concatenate(idx) if idx else np.zeros(0, np.int64),
        values=np.concatenate(vals) if vals else np.zeros(0),
        layout=layout,
        **extra,
    )


# ---------------------------------------------------------------------------------------------
# INPUT, STRU, log
# ---------------------------------------------------------------------------------------------
def read_input(path: str | Path) -> dict[str, str]:
    """INPUT parameters as strings (keys lower-case); comments after '#' or '//' dropped."""
    params = {}
    for ln in Path(path).read_text().splitlines():
        ln = re.split(r"#|//", ln, maxsplit=1)[0].strip()
        parts = ln.split(None, 1)
        if len(parts) == 2 and parts[0] != "INPUT_PARAMETERS":
            params[parts[0].lower()] = parts[1].strip()
    return params


_STRU_KEYS = (
    "ATOMIC_SPECIES", "NUMERICAL_ORBITAL", "LATTICE_CONSTANT", "LATTICE_VECTORS",
    "LATTICE_PARAMETERS", "ATOMIC_POSITIONS", "NUMERICAL_DESCRIPTOR", "ABFS_ORBITAL",
    "PAW_FILES",
)

_LATNAME_VECTORS = {
    "sc": lambda p: np.eye(3),
    "fcc": lambda p: np.array([[-0.5, 0, 0.5], [0, 0.5, 0.5], [-0.5, 0.5, 0]]),
    "bcc": lambda p: np.array([[0.5, 0.5, 0.5], [-0.5, 0.5, 0.5], [-0.5, -0.5, 0.5]]),
    "hexagonal": lambda p: np.array([[1, 0, 0], [-0.5, np.sqrt(3) / 2, 0], [0, 0, p[0]]]),
}


@dataclass
class Stru:
    """Contents of an ABACUS STRU file (lengths converted to Å)."""

    atoms: Atoms
    species: list[str]
    counts: list[int]
    orbital_files: list[str] = field(default_factory=list)


def read_stru(path: str | Path, latname: str = "none") -> Stru:
    """Read STRU: cell (Å), species, atoms (STRU order = ABACUS orbital order), orbital files.

    ``latname`` is INPUT's lattice name; needed only when STRU has no LATTICE_VECTORS.
    """
    path = Path(path)
    try:
        raw = path.read_text().splitlines()
    except OSError as err:
        raise ReaderError(f"cannot read ABACUS structure file {path}: {err}") from err
    blocks: dict[str, list[list[str]]] = {}
    key = None
    for ln in raw:
        ln = re.split(r"#|//", ln, maxsplit=1)[0].strip()
        if not ln:
            continue
        if ln.split()[0] in _STRU_KEYS:
            key = ln.split()[0]
            blocks[key] = []
        elif key is not None:
            blocks[key].append(ln.split())
    for needed in ("ATOMIC_SPECIES", "LATTICE_CONSTANT", "ATOMIC_POSITIONS"):
        if needed not in blocks:
            raise ReaderError(f"{path}: STRU block {needed} is missing")
    try:
        species = [row[0] for row in blocks["ATOMIC_SPECIES"]]
        lat0 = float(blocks["LATTICE_CONSTANT"][0][0]) * Bohr
        if "LATTICE_VECTORS" in blocks:
            vectors = np.array(blocks["LATTICE_VECTORS"][:3], dtype=float)
        else:
            name = latname.lower()
            if name not in _LATNAME_VECTORS:
                raise ReaderError(
                    f"{path}: no LATTICE_VECTORS and INPUT latname {latname!r} is not one of "
                    f"{sorted(_LATNAME_VECTORS)}; give LATTICE_VECTORS in STRU"
                )
            params = [float(x) for row in blocks.get("LATTICE_PARAMETERS", []) for x in row] or [1.0]
            vectors = _LATNAME_VECTORS[name](params).astype(float)
        cell = vectors * lat0
        rows = blocks["ATOMIC_POSITIONS"]
        kind = rows[0][0].lower()
        symbols, coords, counts = [], [], []
        k = 1
        for sp in species:
            if k >= len(rows) or rows[k][0] != sp:
                found = rows[k][0] if k < len(rows) else "end of block"
                raise ReaderError(f"{path}: ATOMIC_POSITIONS expected species {sp}, found {found!r}")
            n = int(rows[k + 2][0])
            coords.extend([[float(x) for x in r[:3]] for r in rows[k + 3 : k + 3 + n]])
            symbols += [re.sub(r"[^A-Za-z]", "", sp)] * n
            counts.append(n)
            k += 3 + n
        coords = np.array(coords, dtype=float).reshape(-1, 3)
    except (IndexError, ValueError) as err:
        raise ReaderError(f"{path}: malformed STRU ({err})") from err
    if len(coords) != sum(counts):
        raise ReaderError(f"{path}: ATOMIC_POSITIONS holds {len(coords)} positions for {sum(counts)} atoms")
    if kind == "direct":
        atoms = Atoms(symbols, scaled_positions=coords, cell=cell, pbc=True)
    elif kind in ("cartesian", "cartesian_angstrom", "cartesian_au", "cartesian_bohr"):
        unit = {"cartesian": lat0, "cartesian_angstrom": 1.0}.get(kind, Bohr)
        atoms = Atoms(symbols, positions=coords * unit, cell=cell, pbc=True)
    else:
        raise ReaderError(
            f"{path}: ATOMIC_POSITIONS type {rows[0][0]!r} is not supported "
            "(use Direct, Cartesian, Cartesian_angstrom or Cartesian_au)"
        )
    orbitals = [row[0] for row in blocks.get("NUMERICAL_ORBITAL", [])]
    return Stru(atoms=atoms, species=species, counts=counts, orbital_files=orbitals)


def read_log_shells(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Shells per species from ``running_*.log`` ('atom label = X', 'L=l, number of zeta = n')."""
    shells: dict[str, list[int]] = {}
    label = None
    for ln in Path(path).read_text().splitlines():
        m = re.search(r"atom label\s*=\s*(\S+)", ln)
        if m:
            label = m.group(1)
            shells[label] = []
            continue
        m = re.search(r"L=(\d+), number of zeta\s*=\s*(\d+)", ln)
        if m and label is not None:
            shells[label] += [int(m.group(1))] * int(m.group(2))
        if "TOTAL ATOM NUMBER" in ln:
            break
    return {k: tuple(v) for k, v in shells.items()}


def read_fermi_level(path: str | Path) -> float | None:
    """Final Fermi energy (eV) from ``running_*.log`` (``EFERMI = x eV``), or None."""
    matches = re.findall(r"EFERMI\s*=\s*(\S+)\s*eV", Path(path).read_text())
    return float(matches[-1]) if matches else None


def read_kpoints(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """IBZ k-points of OUT.*/kpoints: (direct coordinates (nk, 3), weights (nk,))."""
    lines = Path(path).read_text().splitlines()
    k = next(n for n, ln in enumerate(lines) if "DIRECT_X" in ln and "WEIGHT" in ln)
    rows = []
    for ln in lines[k + 1 :]:
        parts = ln.split()
        if len(parts) != 5:
            break
        rows.append([float(x) for x in parts[1:]])
    arr = np.array(rows)
    return arr[:, :3], arr[:, 3]


def read_istate(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Kohn-Sham eigenvalues of istate.info: (energies (nk, nbands) eV, occupations (nk, nbands))."""
    energies, occupations, current = [], [], None
    for ln in Path(path).read_text().splitlines():
        if ln.strip().startswith("BAND"):
            current = []
            energies.append(current)
            occupations.append([])
            continue
        parts = ln.split()
        if current is not None and len(parts) == 3:
            current.append(float(parts[1]))
            occupations[-1].append(float(parts[2]))
    return np.array(energies), np.array(occupations)


# ---------------------------------------------------------------------------------------------
# folder handling
# ---------------------------------------------------------------------------------------------
def _glob_first(folders, pattern):
    for d in folders:
        hits = sorted(d.glob(pattern))
        if hits:
            return hits[0]
    return None


def _layout_files(folder: Path, key: str) -> list[Path]:
    """Spin files of one operator in ``folder`` (old layout first, then new)."""
    old, new = OPERATOR_FILES[key]
    found = []
    for s in (0, 1):
        hits = sorted(folder.glob(old.format(s=s)))
        if hits:
            found.append(hits[0])
    if found:
        return found
    for s1 in (1, 2):
        p = folder / new.format(s1=s1)
        if p.is_file():
            found.append(p)
    if not found and key == "overlap" and (folder / _NEW_OVERLAP_ALT).is_file():
        found.append(folder / _NEW_OVERLAP_ALT)
    return found


def _matrix_folders(path: Path) -> list[Path]:
    if path.is_file():
        return [path.parent]
    return [path] + sorted(p for p in path.glob("OUT.*") if p.is_dir())


def detect(path: str | Path) -> bool:
    """True if ``path`` is an ABACUS CSR file or a folder (run folder or OUT.*) holding one.

    Rules: a file whose name matches ``*HR-sparse_SPIN*.csr`` / ``*SR-sparse_SPIN*.csr`` /
    ``*DMR-sparse_SPIN*.csr`` / ``hrs*_nao.csr`` / ``srs*_nao.csr`` / ``dmrs*_nao.csr``;
    or a folder with such a file directly inside it or inside an ``OUT.*`` subfolder.
    """
    path = Path(path)
    names = ("*R-sparse_SPIN*.csr", "*rs*_nao.csr", "sr_nao.csr")
    if path.is_file():
        return any(path.match(n) for n in names)
    if not path.is_dir():
        return False
    return any(_glob_first([d], n) is not None for d in _matrix_folders(path) for n in names)


def _run_folder(path: Path) -> Path:
    """The folder holding STRU/INPUT: ``path`` itself, or its parent for OUT.* / a file."""
    base = path.parent if path.is_file() else path
    for marker in ("STRU", "INPUT"):  # OUT.* holds a copy of INPUT but not STRU
        for d in (base, base.parent):
            if (d / marker).is_file():
                return d
    return base


def _find_orbital_file(run: Path, name: str, orbital_dir: str | None) -> Path | None:
    if not name:
        return None
    base = Path(name).name
    candidates = []
    if orbital_dir:
        od = Path(orbital_dir)
        od = od if od.is_absolute() else run / od
        candidates += [od / name, od / base]
    candidates += [run / name, run / base]
    for c in candidates:
        if c.is_file():
            return c
    for pattern_root in (run, run.parent):
        hits = [h for h in sorted(pattern_root.glob(f"*/{base}")) + sorted(pattern_root.glob(f"*/*/{base}")) if h.is_file()]
        if hits:
            return hits[0]
    return None


@dataclass
class AbacusRun:
    """Files of one ABACUS run, resolved by :func:`locate`."""

    run: Path
    matrices: dict[str, list[Path]]
    stru: Path | None
    input: Path | None
    log: Path | None


def locate(path: str | Path) -> AbacusRun:
    """Find STRU, INPUT, running log and the matrix files for a run folder, OUT.* or one file."""
    path = Path(path)
    if not path.exists():
        raise ReaderError(f"{path} does not exist")
    run = _run_folder(path)
    folders = _matrix_folders(path)
    matrices = {}
    if path.is_file():
        key = next(
            (k for k, (old, new) in OPERATOR_FILES.items()
             if path.match(old.format(s="*")) or path.match(new.format(s1="*"))),
            None,
        )
        if key is None and path.name == _NEW_OVERLAP_ALT:
            key = "overlap"
        if key is None:
            raise ReaderError(f"{path}: file name is not one of ABACUS's matrix outputs ({list(OPERATOR_FILES)})")
        matrices[key] = [path]
    else:
        for key in OPERATOR_FILES:
            for d in folders:
                files = _layout_files(d, key)
                if files:
                    matrices[key] = files
                    break
    if not matrices:
        raise ReaderError(
            f"{path}: no ABACUS matrix file found (data-HR-sparse_SPIN0.csr, data-SR-sparse_SPIN0.csr, "
            f"data-DMR-sparse_SPIN0.csr or hrs1_nao.csr / srs1_nao.csr / dmrs1_nao.csr); run ABACUS with "
            f"out_mat_hs2 1 / out_dm1 1"
        )
    stru = run / "STRU" if (run / "STRU").is_file() else None
    inp = run / "INPUT" if (run / "INPUT").is_file() else None
    if inp is not None and stru is None:
        name = read_input(inp).get("stru_file")
        if name and (run / name).is_file():
            stru = run / name
    log = _glob_first([d for d in folders if d.is_dir()] + [run], "running_*.log")
    return AbacusRun(run=run, matrices=matrices, stru=stru, input=inp, log=log)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _structure(run: AbacusRun, csr: CSRMatrices) -> tuple[Atoms, list[str], list[str]]:
    """(atoms, species labels, orbital file names) from STRU, else from a new-layout header."""
    params = read_input(run.input) if run.input else {}
    if run.stru is not None:
        stru = read_stru(run.stru, params.get("latname", "none"))
        return stru.atoms, stru.species, stru.orbital_files
    if csr.cell is not None:
        c = csr.cell
        symbols = [re.sub(r"[^A-Za-z]", "", lab) for lab, n in zip(c["labels"], c["counts"]) for _ in range(n)]
        atoms = Atoms(symbols, scaled_positions=c["positions"], cell=c["vectors"] * c["lattice_constant"], pbc=True)
        return atoms, list(c["labels"]), []
    raise ReaderError(
        f"{run.run}: STRU is missing: the old-layout file {csr.path.name} does not hold the structure. "
        f"Put the run's STRU next to it (or its parent folder)"
    )


def read_radial_basis(path: str | Path) -> RadialBasis:
    """The .orb radial functions of an ABACUS run (per species, in ABACUS shell order)."""
    run = locate(path)
    if run.stru is None:
        raise ReaderError(f"{run.run}: STRU is missing, so the orbital files are unknown")
    params = read_input(run.input) if run.input else {}
    stru = read_stru(run.stru, params.get("latname", "none"))
    functions, files = {}, {}
    for sp, name in zip(stru.species, stru.orbital_files):
        f = _find_orbital_file(run.run, name, params.get("orbital_dir"))
        if f is None:
            raise ReaderError(
                f"orbital file {name} of species {sp} (STRU NUMERICAL_ORBITAL) not found in orbital_dir, "
                f"{run.run} or the folders beside it"
            )
        _, shells = read_abacus_orb(f)
        functions[re.sub(r"[^A-Za-z]", "", sp)] = shells
        files[sp] = str(f)
    if len(functions) < len(stru.species):
        raise ReaderError(f"{run.stru}: NUMERICAL_ORBITAL lists {len(stru.orbital_files)} files for "
                          f"{len(stru.species)} species")
    return RadialBasis(functions, source="abacus", files=files)


def _shells(run: AbacusRun, species: list[str], orbital_files: list[str]) -> dict[str, tuple[int, ...]]:
    params = read_input(run.input) if run.input else {}
    shells: dict[str, tuple[int, ...]] = {}
    missing = []
    for sp, name in zip(species, orbital_files):
        f = _find_orbital_file(run.run, name, params.get("orbital_dir"))
        if f is None:
            missing.append(name)
            continue
        try:
            _, radial = read_abacus_orb(f)
        except RadialFileError as err:
            raise ReaderError(str(err)) from err
        shells[sp] = tuple(s.l for s in radial)
    if len(shells) < len(species) and run.log is not None:
        from_log = read_log_shells(run.log)
        for sp in species:
            if sp not in shells and sp in from_log:
                shells[sp] = from_log[sp]
    lacking = [sp for sp in species if sp not in shells]
    if lacking:
        what = f"orbital file(s) {', '.join(missing)}" if missing else "orbital files (STRU NUMERICAL_ORBITAL)"
        raise ReaderError(
            f"{run.run}: cannot tell the orbital shells of {', '.join(lacking)}: {what} not found "
            f"(looked in INPUT orbital_dir, the run folder and beside it) and no running_*.log lists them"
        )
    return shells


def read(path: str | Path) -> tuple[Atoms, dict[str, RealSpaceOperator]]:
    """Read an ABACUS run folder, its OUT.* folder or one CSR file.

    Returns ``(atoms, ops)`` with ops "hamiltonian" (eV), "overlap", "density_matrix" as
    present, all in our orbital order.  ``atoms.info`` gets ``fermi_level`` (eV, from the
    log, when found), ``basis`` ({element: "4s2p2d1f"}) and ``source`` ("abacus").
    """
    run = locate(path)
    csrs = {key: [read_csr(p) for p in files] for key, files in run.matrices.items()}
    first = next(iter(csrs.values()))[0]
    atoms, species, orbital_files = _structure(run, first)
    if len(orbital_files) not in (0, len(species)):
        raise ReaderError(f"{run.stru}: NUMERICAL_ORBITAL lists {len(orbital_files)} files for {len(species)} species")
    shells = _shells(run, species, orbital_files or [""] * len(species))
    per_element: dict[str, tuple[int, ...]] = {}
    for sp, ls in shells.items():
        el = re.sub(r"[^A-Za-z]", "", sp)
        if per_element.setdefault(el, ls) != ls:
            raise ReaderError(
                f"{run.stru}: species {sp} has shells {ls} but another {el} species has {per_element[el]}; "
                f"one basis per element is supported"
            )
    basis = Basis(per_element, name="abacus")
    symbols = atoms.get_chemical_symbols()
    norb = int(basis.orbital_counts(symbols).sum())
    ops = {}
    for key, files in csrs.items():
        for c in files:
            if c.dim != norb:
                raise ReaderError(
                    f"{c.path}: matrix dimension {c.dim} does not match the structure and basis "
                    f"({len(atoms)} atoms, {basis.as_strings()} -> {norb} orbitals); wrong STRU or .orb files?"
                )
        if key == "hamiltonian" and len(files) > 1:
            raise ReaderError(
                f"{files[1].path}: spin-polarised H(R) (nspin=2) is not supported; read one spin file at a time"
            )
        trip = [c.triplets() for c in files]
        R, rows, cols, vals = (np.concatenate([t[n] for t in trip]) for n in range(4))
        if len(files) > 1:  # spin-summed DM: add duplicate (R, row, col) entries
            R, rows, cols, vals = _sum_duplicates(R, rows, cols, vals)
        ops[key] = operator_from_triplets(
            symbols, basis, "abacus", R, rows, cols, vals,
            scale=RY_TO_EV if key == "hamiltonian" else 1.0,
            name=key, source=str(files[0].path),
        )
    if run.log is not None:
        ef = read_fermi_level(run.log)
        if ef is not None:
            atoms.info["fermi_level"] = ef
    atoms.info["basis"] = basis.as_strings()
    atoms.info["source"] = "abacus"
    return atoms, ops


def _sum_duplicates(R, rows, cols, vals):
    keys = np.stack([R[:, 0], R[:, 1], R[:, 2], rows, cols], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    summed = np.zeros(len(uniq))
    np.add.at(summed, inverse.ravel(), vals)
    return uniq[:, :3], uniq[:, 3], uniq[:, 4], summed
