"""SIESTA binary and text outputs: HSX (H, S), DM, RHO, EIG, KP, bands and .ion radial functions.

Read with numpy alone (no sisl).  SIESTA writes Fortran sequential unformatted files: every
record is framed by 4-byte length markers.  Records longer than 2^31 - 9 bytes are split
into sub-records whose leading marker is negative when more follow (gfortran and ifort both
do this); :func:`fortran_records` joins them.

HSX (versions 1 and 2; SIESTA >= 4.1)
-------------------------------------
1 ``version``; 2 ``is_dp`` (a Fortran logical: gfortran writes 1, Intel Fortran writes -1 for
.true. -- any non-zero value means double precision; sisl 0.20 rejects -1); 3 ``na_u, no_u,
nspin, nspecies, nsc(3)``; 4 ``ucell(3,3)`` (bohr, rows = lattice vectors), ``Ef`` (Ry),
``qtot``, ``temp`` (Ry); 5 ``isc_off(3, prod(nsc))``, ``xa(3, na_u)`` (bohr), ``isa(na_u)``,
``lasto(na_u)``; 6 per species ``label*20, zval, no``; 7 one record per species with
``(n, l, zeta)`` of each of its orbitals; 8 (version 2 only) ``kcell(3,3)`` int, ``kdispl(3)``;
9 ``numh(no_u)``; 10 one record per row, ``listh`` (1-based supercell columns: column
``c`` is orbital ``(c-1) % no_u`` of image ``(c-1) // no_u``, whose cell shift is
``isc_off[image]``); 11 per spin, per row: H (Ry); 12 per row: S.

Conventions: element (R, mu, nu) = <mu, home cell| X |nu, cell R>; H absolute in Ry
(converted to eV with :data:`RY_TO_EV`); SIESTA orbitals per atom: shells in (n, l, zeta)
order as in record 7, m = -l..l with the Condon-Shortley sign on odd m: the ``"siesta"``
convention of :mod:`ase_slem.basis`.

DM: record ``no_u, nspin, nsc(3)`` (older files: ``no_u, nspin``), ``numd(no_u)``, one
``listd`` record per row, then per spin one record per row of DM values (float64); the
supercell columns use the same image order as HSX (``isc_off``).  Spin-summed for nspin = 2.

RHO: record ``cell(3,3)`` (bohr), record ``nx, ny, nz, nspin``, then per spin, per z, per y one
record of ``nx`` values (float32, or float64 for GRID_DP builds), electrons/bohr^3.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import Bohr

from ..basis import Basis
from ..operators import RealSpaceOperator
from ._blocks import ReaderError, operator_from_triplets
from .radial import RadialBasis, read_siesta_ion

# SIESTA 5 units (CODATA 2018): 1 Ry = 13.605693122994 eV.  Measured on the Si sample: this
# constant reproduces Si.EIG; the older 13.60580 shifts deep levels by ~1e-4 eV.
RY_TO_EV = 13.605693122994


# ---------------------------------------------------------------------------------------------
# Fortran records
# ---------------------------------------------------------------------------------------------
def fortran_records(path: str | Path) -> list[bytes]:
    """All records of a Fortran sequential unformatted file (4-byte markers, sub-records joined)."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as err:
        raise ReaderError(f"cannot read {path}: {err}") from err
    records, pos, parts = [], 0, []
    while pos < len(buf):
        if pos + 4 > len(buf):
            raise ReaderError(f"{path}: truncated Fortran record marker at byte {pos}")
        lead = int(np.frombuffer(buf, "<i4", 1, pos)[0])
        n = abs(lead)
        if pos + 8 + n > len(buf):
            raise ReaderError(
                f"{path}: record {len(records) + 1} announces {n} bytes but the file ends after "
                f"{len(buf) - pos - 4}: the file is truncated"
            )
        trail = int(np.frombuffer(buf, "<i4", 1, pos + 4 + n)[0])
        if abs(trail) != n:
            raise ReaderError(
                f"{path}: record {len(records) + 1} has mismatched length markers ({lead}, {trail}); "
                f"not a Fortran unformatted file written on this byte order, or corrupt"
            )
        parts.append(buf[pos + 4 : pos + 4 + n])
        pos += 8 + n
        if lead >= 0:
            records.append(b"".join(parts))
            parts = []
    if parts:
        raise ReaderError(f"{path}: the last record is split and its final part is missing (truncated)")
    return records


class _Cursor:
    """Sequential access to records with clear errors."""

    def __init__(self, path: Path, records: list[bytes]):
        self.path, self.records, self.k = path, records, 0

    def next(self, what: str) -> bytes:
        if self.k >= len(self.records):
            raise ReaderError(
                f"{self.path}: ends after {len(self.records)} records, before the {what} record: "
                f"the file is truncated"
            )
        rec = self.records[self.k]
        self.k += 1
        return rec

    def array(self, what: str, dtype, count: int | None = None) -> np.ndarray:
        rec = self.next(what)
        size = np.dtype(dtype).itemsize
        if len(rec) % size or (count is not None and len(rec) != count * size):
            raise ReaderError(
                f"{self.path}: {what} record has {len(rec)} bytes, expected "
                f"{'a multiple of ' + str(size) if count is None else count * size}"
            )
        return np.frombuffer(rec, dtype)


# ---------------------------------------------------------------------------------------------
# HSX
# ---------------------------------------------------------------------------------------------
@dataclass
class HSX:
    """Raw contents of an HSX file (SIESTA units: bohr, Ry)."""

    version: int
    double: bool
    no_u: int
    nspin: int
    nsc: np.ndarray
    cell: np.ndarray  # (3, 3) bohr, rows = lattice vectors
    fermi: float  # Ry
    qtot: float
    temp: float  # Ry
    isc_off: np.ndarray  # (n_images, 3)
    xa: np.ndarray  # (na_u, 3) bohr
    isa: np.ndarray  # (na_u,) 1-based species
    lasto: np.ndarray  # (na_u,) cumulative last orbital
    labels: list[str]
    zval: np.ndarray
    orbitals: list[np.ndarray]  # per species (no, 3): n, l, zeta
    numh: np.ndarray  # (no_u,)
    listh: np.ndarray  # (nnz,) 1-based supercell columns, rows concatenated
    H: np.ndarray  # (nspin, nnz) Ry
    S: np.ndarray  # (nnz,)
    kcell: np.ndarray | None = None
    kdispl: np.ndarray | None = None

    def triplets(self, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(R (nnz, 3), rows (nnz,), cols in the unit cell (nnz,)) of the stored entries."""
        cols = self.listh if cols is None else cols
        rows = np.repeat(np.arange(self.no_u), self.numh)
        image = (cols - 1) // self.no_u
        if image.max(initial=0) >= len(self.isc_off):
            raise ReaderError(f"column index beyond the {len(self.isc_off)} supercell images")
        return self.isc_off[image], rows, (cols - 1) % self.no_u


def read_hsx(path: str | Path) -> HSX:
    """Read a SIESTA HSX file (versions 1 and 2, single or double precision)."""
    path = Path(path)
    cur = _Cursor(path, fortran_records(path))
    version = int(cur.array("version", "<i4")[0])
    if version not in (1, 2):
        raise ReaderError(
            f"{path}: HSX version {version} is not supported (versions 1 and 2, SIESTA >= 4.1, are); "
            f"re-run with a recent SIESTA or convert with sisl"
        )
    is_dp = int(cur.array("precision flag (is_dp)", "<i4")[0])
    double = is_dp != 0  # Fortran .true. is 1 (gfortran) or -1 (Intel)
    dims = cur.array("dimensions", "<i4", 7)
    na_u, no_u, nspin, nspecies = (int(x) for x in dims[:4])
    nsc = dims[4:7].astype(np.int64)
    cellrec = cur.array("cell", "<f8", 12)
    cell, (ef, qtot, temp) = cellrec[:9].reshape(3, 3), cellrec[9:]
    rec = cur.next("supercell offsets / positions")
    nimg = int(np.prod(nsc))
    expected = 12 * nimg + 24 * na_u + 8 * na_u
    if len(rec) != expected:
        raise ReaderError(f"{path}: geometry record has {len(rec)} bytes, expected {expected} for {na_u} atoms, nsc {nsc.tolist()}")
    isc_off = np.frombuffer(rec, "<i4", 3 * nimg).reshape(nimg, 3).astype(np.int64)
    xa = np.frombuffer(rec, "<f8", 3 * na_u, 12 * nimg).reshape(na_u, 3)
    isa = np.frombuffer(rec, "<i4", na_u, 12 * nimg + 24 * na_u).astype(np.int64)
    lasto = np.frombuffer(rec, "<i4", na_u, 12 * nimg + 28 * na_u).astype(np.int64)
    rec = cur.next("species")
    if len(rec) != 32 * nspecies:
        raise ReaderError(f"{path}: species record has {len(rec)} bytes, expected {32 * nspecies}")
    labels, zval, nos = [], [], []
    for s in range(nspecies):
        chunk = rec[32 * s : 32 * (s + 1)]
        labels.append(chunk[:20].decode("ascii", "replace").strip())
        zval.append(float(np.frombuffer(chunk, "<f8", 1, 20)[0]))
        nos.append(int(np.frombuffer(chunk, "<i4", 1, 28)[0]))
    orbitals = [cur.array(f"orbitals of species {labels[s]}", "<i4", 3 * nos[s]).reshape(-1, 3) for s in range(nspecies)]
    kcell = kdispl = None
    if version == 2:
        rec = cur.next("k-grid")
        kcell = np.frombuffer(rec, "<i4", 9).reshape(3, 3)
        kdispl = np.frombuffer(rec, "<f8", 3, 36)
    numh = cur.array("numh", "<i4", no_u).astype(np.int64)
    nnz = int(numh.sum())
    listh = np.concatenate([cur.array(f"listh row {r + 1}", "<i4", numh[r]) for r in range(no_u)]).astype(np.int64)
    fdt = "<f8" if double else "<f4"
    H = np.stack([
        np.concatenate([cur.array(f"H spin {s + 1} row {r + 1}", fdt, numh[r]) for r in range(no_u)])
        for s in range(nspin)
    ]).astype(float)
    S = np.concatenate([cur.array(f"S row {r + 1}", fdt, numh[r]) for r in range(no_u)]).astype(float)
    if lasto[-1] != no_u or H.shape[1] != nnz:
        raise ReaderError(f"{path}: orbital counts are inconsistent (lasto ends at {lasto[-1]}, no_u = {no_u})")
    return HSX(version, double, no_u, nspin, nsc, cell, float(ef), float(qtot), float(temp), isc_off, xa, isa,
               lasto, labels, np.array(zval), orbitals, numh, listh, H, S, kcell, kdispl)


@dataclass
class DM:
    """Raw SIESTA density matrix: columns in the supercell numbering, values (nspin, nnz)."""

    no_u: int
    nspin: int
    nsc: np.ndarray | None
    numd: np.ndarray
    listd: np.ndarray
    values: np.ndarray


def read_dm(path: str | Path) -> DM:
    """Read a SIESTA ``.DM`` file (with or without the nsc header)."""
    path = Path(path)
    cur = _Cursor(path, fortran_records(path))
    head = cur.array("header", "<i4")
    if len(head) not in (2, 5):
        raise ReaderError(f"{path}: DM header has {len(head)} integers (expected no_u, nspin[, nsc(3)])")
    no_u, nspin = int(head[0]), int(head[1])
    nsc = head[2:5].astype(np.int64) if len(head) == 5 else None
    numd = cur.array("numd", "<i4", no_u).astype(np.int64)
    listd = np.concatenate([cur.array(f"listd row {r + 1}", "<i4", numd[r]) for r in range(no_u)]).astype(np.int64)
    values = np.stack([
        np.concatenate([cur.array(f"DM spin {s + 1} row {r + 1}", "<f8", numd[r]) for r in range(no_u)])
        for s in range(nspin)
    ])
    return DM(no_u, nspin, nsc, numd, listd, values)


# ---------------------------------------------------------------------------------------------
# structure, basis, operators
# ---------------------------------------------------------------------------------------------
def _element(label: str, zval: float | None = None) -> str:
    sym = re.match(r"[A-Z][a-z]?", label.strip().capitalize())
    if sym and sym.group(0) in atomic_numbers:
        return sym.group(0)
    raise ReaderError(f"cannot tell the element of SIESTA species label {label!r}")


def shells_from_orbitals(orbitals: np.ndarray, where: str = "") -> tuple[int, ...]:
    """Group SIESTA's per-orbital (n, l, zeta) rows into shells; l of each shell."""
    ls, k = [], 0
    while k < len(orbitals):
        n, l, z = (int(x) for x in orbitals[k])
        block = orbitals[k : k + 2 * l + 1]
        if len(block) != 2 * l + 1 or np.any(block != orbitals[k]):
            raise ReaderError(f"{where}: orbitals {k + 1}..{k + 2 * l + 1} do not form one n={n} l={l} zeta={z} shell")
        ls.append(l)
        k += 2 * l + 1
    return tuple(ls)


def structure(hsx: HSX) -> tuple[Atoms, Basis]:
    """Atoms (Å) and Basis (shells per element) of an HSX file."""
    elements = [_element(lab) for lab in hsx.labels]
    shells: dict[str, tuple[int, ...]] = {}
    for el, lab, orbs in zip(elements, hsx.labels, hsx.orbitals):
        ls = shells_from_orbitals(orbs, where=f"species {lab}")
        if shells.setdefault(el, ls) != ls:
            raise ReaderError(f"species {lab} ({el}) has shells {ls} but another {el} species has {shells[el]}; "
                              "species of one element with different bases are not supported")
    symbols = [elements[s - 1] for s in hsx.isa]
    atoms = Atoms(symbols, positions=hsx.xa * Bohr, cell=hsx.cell * Bohr, pbc=True)
    basis = Basis(shells, name="siesta")
    counts = np.diff(np.concatenate([[0], hsx.lasto]))
    if not np.array_equal(counts, basis.orbital_counts(symbols)):
        raise ReaderError("orbitals per atom (lasto) do not match the species' orbital lists")
    return atoms, basis


def _locate_hsx(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise ReaderError(f"{path} does not exist")
    hits = sorted(path.glob("*.HSX"))
    if not hits:
        raise ReaderError(f"{path}: no *.HSX file: run SIESTA with SaveHS true (HSX written by SIESTA >= 4.1)")
    if len(hits) > 1:
        raise ReaderError(f"{path}: several HSX files ({', '.join(h.name for h in hits)}); pass one of them")
    return hits[0]


def detect(path: str | Path) -> bool:
    """True for a ``*.HSX`` file or a folder holding exactly one (SIESTA run folder)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".HSX"
    return path.is_dir() and len(list(path.glob("*.HSX"))) == 1


def read(path: str | Path) -> tuple[Atoms, dict[str, RealSpaceOperator]]:
    """Read a SIESTA run folder (or its ``.HSX``): H (eV), S and, if ``<label>.DM`` exists, DM.

    ``atoms.info``: ``fermi_level`` (eV, from the HSX), ``basis``, ``source`` ("siesta").
    """
    hsx_path = _locate_hsx(Path(path))
    hsx = read_hsx(hsx_path)
    if hsx.nspin != 1:
        raise ReaderError(f"{hsx_path}: nspin = {hsx.nspin}; only spin-unpolarised SIESTA runs are supported")
    atoms, basis = structure(hsx)
    symbols = atoms.get_chemical_symbols()
    R, rows, cols = hsx.triplets()
    src = str(hsx_path)
    ops = {
        "hamiltonian": operator_from_triplets(symbols, basis, "siesta", R, rows, cols, hsx.H[0],
                                              scale=RY_TO_EV, name="hamiltonian", source=src),
        "overlap": operator_from_triplets(symbols, basis, "siesta", R, rows, cols, hsx.S, name="overlap", source=src),
    }
    dm_path = hsx_path.with_suffix(".DM")
    if dm_path.is_file():
        dm = read_dm(dm_path)
        if dm.no_u != hsx.no_u:
            raise ReaderError(f"{dm_path}: {dm.no_u} orbitals, the HSX has {hsx.no_u}: files of different runs?")
        if dm.nsc is not None and not np.array_equal(dm.nsc, hsx.nsc):
            raise ReaderError(f"{dm_path}: supercell {dm.nsc.tolist()} differs from the HSX's {hsx.nsc.tolist()}")
        Rd, rd, cd = hsx.triplets(dm.listd) if dm.nsc is not None else (
            np.zeros((len(dm.listd), 3), np.int64), np.repeat(np.arange(dm.no_u), dm.numd), dm.listd - 1)
        if dm.nsc is None and dm.listd.max(initial=0) > dm.no_u:
            raise ReaderError(f"{dm_path}: old DM file without supercell sizes but with supercell columns; cannot map them")
        ops["density_matrix"] = operator_from_triplets(
            symbols, basis, "siesta", Rd, rd, cd, dm.values.sum(axis=0), name="density_matrix", source=str(dm_path)
        )
    atoms.info["fermi_level"] = hsx.fermi * RY_TO_EV
    atoms.info["basis"] = basis.as_strings()
    atoms.info["source"] = "siesta"
    return atoms, ops


def read_radial_basis(path: str | Path) -> RadialBasis:
    """Radial functions from the ``<species label>.ion`` files beside the HSX."""
    hsx_path = _locate_hsx(Path(path))
    hsx = read_hsx(hsx_path)
    functions, files = {}, {}
    for lab, orbs in zip(hsx.labels, hsx.orbitals):
        ion = hsx_path.parent / f"{lab}.ion"
        if not ion.is_file():
            raise ReaderError(f"{ion.name} is missing in {hsx_path.parent}: it holds the radial functions of {lab}")
        _, shells = read_siesta_ion(ion)
        expected = shells_from_orbitals(orbs, where=f"species {lab}")
        if tuple(s.l for s in shells) != expected:
            raise ReaderError(f"{ion}: shells {[s.l for s in shells]} differ from the HSX's {list(expected)}")
        functions[_element(lab)] = shells
        files[lab] = str(ion)
    return RadialBasis(functions, source="siesta", files=files)


# ---------------------------------------------------------------------------------------------
# reference outputs and the grid density
# ---------------------------------------------------------------------------------------------
def read_eig(path: str | Path) -> tuple[float, np.ndarray]:
    """``<label>.EIG``: (E_F eV, eigenvalues (nk, nspin, nbands) eV, absolute)."""
    tok = Path(path).read_text().split()
    try:
        ef = float(tok[0])
        nb, ns, nk = (int(x) for x in tok[1:4])
        vals = np.array(tok[4:], dtype=float)
    except (IndexError, ValueError) as err:
        raise ReaderError(f"{path}: malformed EIG file ({err})") from err
    if vals.size != nk * (1 + ns * nb):
        raise ReaderError(f"{path}: {vals.size} numbers for {nk} k-points x {ns} spins x {nb} bands: truncated")
    return ef, vals.reshape(nk, 1 + ns * nb)[:, 1:].reshape(nk, ns, nb)


def read_kp(path: str | Path, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``<label>.KP``: (k fractional (nk, 3), weights).  ``cell`` rows = lattice vectors in Å.

    The file holds Cartesian k in 1/bohr; fractional k = k_cart . a_i / (2 pi).
    """
    lines = Path(path).read_text().split("\n")
    nk = int(lines[0])
    arr = np.array([ln.split()[1:5] for ln in lines[1 : 1 + nk]], dtype=float)
    k_cart = arr[:, :3] / Bohr  # 1/Å
    return k_cart @ np.asarray(cell).T / (2 * np.pi), arr[:, 3]


def read_bands(path: str | Path) -> dict:
    """``<label>.bands``: {"fermi" eV, "x" (nk,) path coordinate (1/bohr), "energies" (nk, nspin, nb) eV,
    "ticks" (n,), "labels" [str]}."""
    lines = Path(path).read_text().splitlines()
    ef = float(lines[0].split()[0])
    nb, ns, nk = (int(x) for x in lines[3].split()[:3])
    per_k = 1 + nb * ns
    tok, k = [], 4
    while len(tok) < nk * per_k:
        if k >= len(lines):
            raise ReaderError(f"{path}: fewer energies than {nk} k-points x {nb} bands: truncated")
        tok += lines[k].split()
        k += 1
    data = np.array(tok[: nk * per_k], dtype=float).reshape(nk, per_k)
    nlab = int(lines[k].split()[0]) if k < len(lines) and lines[k].strip() else 0
    ticks, labels = [], []
    for ln in lines[k + 1 : k + 1 + nlab]:
        parts = ln.split(None, 1)
        ticks.append(float(parts[0]))
        labels.append(parts[1].strip().strip("'").strip())
    return {"fermi": ef, "x": data[:, 0], "energies": data[:, 1:].reshape(nk, ns, nb),
            "ticks": np.array(ticks), "labels": labels}


def band_lines_kpoints(fdf: str | Path) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """k-points of an fdf ``%block BandLines`` (``BandLinesScale ReciprocalLatticeVectors``).

    Returns fractional k (nk, 3) exactly as SIESTA samples the path (each line's count of
    points ends at its own k, the first line is one point), and [(index, label)] ticks.
    """
    text = Path(fdf).read_text()
    scale = re.search(r"^\s*BandLinesScale\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    if scale is None or scale.group(1).lower() != "reciprocallatticevectors":
        raise ReaderError(f"{fdf}: only 'BandLinesScale ReciprocalLatticeVectors' band lines are supported")
    block = re.search(r"%block\s+BandLines(.*?)%endblock\s+BandLines", text, flags=re.S | re.IGNORECASE)
    if block is None:
        raise ReaderError(f"{fdf}: no %block BandLines")
    kpts, ticks, prev = [], [], None
    for ln in block.group(1).splitlines():
        parts = ln.split("#")[0].split()
        if len(parts) < 4:
            continue
        n, k = int(parts[0]), np.array(parts[1:4], dtype=float)
        label = parts[4] if len(parts) > 4 else ""
        if prev is None:
            kpts += [k] * n
        else:
            kpts += [prev + (k - prev) * t / n for t in range(1, n + 1)]
        ticks.append((len(kpts) - 1, label))
        prev = k
    return np.array(kpts), ticks


def read_rho(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """SIESTA grid density (``.RHO``, ``.DRHO``, ``.TOCH``...): (rho, cell).

    Returns ``rho`` of shape (nspin, nx, ny, nz) in electrons/Å^3 (x fastest in the file;
    point (a, b, c) sits at fractional (a/nx, b/ny, c/nz)), and ``cell`` (3, 3) Å, rows =
    lattice vectors.  The electron count is ``rho.sum() * |det(cell)| / (nx ny nz)``.
    """
    path = Path(path)
    cur = _Cursor(path, fortran_records(path))
    cell = cur.array("cell", "<f8", 9).reshape(3, 3) * Bohr
    nx, ny, nz, nspin = (int(x) for x in cur.array("grid size", "<i4", 4))
    nlines = nspin * nz * ny
    remaining = len(cur.records) - cur.k
    if remaining != nlines:
        raise ReaderError(f"{path}: {remaining} grid records for {nspin} x {nz} x {ny} lines: truncated or not a RHO file")
    size = len(cur.records[cur.k])
    if size not in (4 * nx, 8 * nx):
        raise ReaderError(f"{path}: grid line of {size} bytes for nx = {nx}")
    dtype = "<f4" if size == 4 * nx else "<f8"
    data = np.frombuffer(b"".join(cur.records[cur.k :]), dtype).astype(float)
    rho = data.reshape(nspin, nz, ny, nx).transpose(0, 3, 2, 1) / Bohr**3
    return np.ascontiguousarray(rho), cell
