"""ABACUS CSR reader on real samples: MoS2 H/S (old layout) reproduces istate.info, Ce f-orbital DM(R),
the new (>= 3.11) layout written from the same data, conventions checked by symmetry, bad input."""
from pathlib import Path
import shutil

import numpy as np
import pytest
from ase.units import Bohr

from ase_slem import band_energies
from ase_slem.io import abacus
from ase_slem.io._blocks import ReaderError

from _convention_checks import odd_m_flip, overlap_alignment, swap_pair, symmetry_residuals, transform_shells

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
pytestmark = pytest.mark.skipif(not EXTERNAL.is_dir(), reason=f"external DFT data folder {EXTERNAL} is absent")

MOS2 = EXTERNAL / "abacus-mos2-monolayer"
CE = EXTERNAL / "abacus-ce-fcc-f"


@pytest.fixture(scope="module")
def mos2():
    return abacus.read(MOS2)


@pytest.fixture(scope="module")
def ce():
    return abacus.read(CE / "201_NO_15_f_pseudopots")


# ---------------------------------------------------------------------------------------------
# MoS2: structure, eigenvalues, conventions
# ---------------------------------------------------------------------------------------------
def test_mos2_structure_from_stru_with_latname(mos2):
    atoms, ops = mos2
    a0 = 5.9716 * Bohr  # LATTICE_CONSTANT (bohr); INPUT latname hexagonal, LATTICE_PARAMETERS 12
    assert atoms.get_chemical_symbols() == ["Mo", "S", "S"]
    np.testing.assert_allclose(atoms.cell[:], a0 * np.array([[1, 0, 0], [-0.5, np.sqrt(3) / 2, 0], [0, 0, 12]]), atol=1e-9)
    np.testing.assert_allclose(atoms.positions[0], a0 * np.array([0.0, 0.57735027, 2.462038339]), atol=1e-6)
    assert atoms.info["basis"] == {"Mo": "4s2p2d1f", "S": "2s2p1d"}
    assert atoms.info["fermi_level"] == pytest.approx(-2.3123356452)
    assert ops["hamiltonian"].norb == 53 and set(ops) == {"hamiltonian", "overlap"}


def test_mos2_reproduces_istate_eigenvalues(mos2):
    atoms, ops = mos2
    k, w = abacus.read_kpoints(MOS2 / "OUT.ABACUS/kpoints")
    ref, occ = abacus.read_istate(MOS2 / "OUT.ABACUS/istate.info")
    assert ref.shape == (3, 23)
    e = band_energies(ops["hamiltonian"], ops["overlap"], k)
    err = np.abs(e[:, :23] - ref).max()
    print(f"ABACUS MoS2: max |E - istate.info| = {err * 1e3:.2e} meV over 3 k x 23 bands")
    assert err < 1e-3
    # 26 electrons below E_F with the IBZ weights (occupations in istate.info are 2 w_k f)
    assert 2 * np.sum(w[:, None] * (e < atoms.info["fermi_level"])) == pytest.approx(26)
    assert np.sum(occ) == pytest.approx(26)


def test_mos2_conventions_by_symmetry_and_overlap_geometry(mos2):
    atoms, ops = mos2
    S, H = ops["overlap"], ops["hamiltonian"]
    res_s, group = symmetry_residuals(atoms, S)
    res_h, _ = symmetry_residuals(atoms, H)
    align = overlap_alignment(atoms, S)
    print(f"ABACUS MoS2 ({group}, {len(res_s)} ops): symmetry |dS| {res_s.max():.1e}, |dH| {res_h.max():.1e} eV; "
          f"s-l overlap alignment max 1-|cos| {max(align.values()):.1e} (l = {sorted(align)})")
    assert len(res_s) == 6  # C3v: S layers not exactly mirror-symmetric in this STRU
    assert res_s.max() < 1e-5 and res_h.max() < 1e-3
    assert set(align) == {1, 2, 3} and max(align.values()) < 1e-8
    # negative controls: each check catches the errors the other cannot
    flipped = transform_shells(S, atoms, 3, odd_m_flip(3))  # odd-m sign of f: C3v-invisible
    assert symmetry_residuals(atoms, flipped)[0].max() < 1e-5
    assert overlap_alignment(atoms, flipped)[3] > 0.1
    swapped = transform_shells(S, atoms, 2, swap_pair(2, 1, 3))  # d order error
    assert symmetry_residuals(atoms, swapped)[0].max() > 0.05


# ---------------------------------------------------------------------------------------------
# Ce: f-orbital density matrix
# ---------------------------------------------------------------------------------------------
def test_ce_density_matrix_format(ce):
    atoms, ops = ce
    assert set(ops) == {"density_matrix"}
    D = ops["density_matrix"]
    assert atoms.info["basis"] == {"Ce": "4s2p2d2f"} and D.norb == 34
    np.testing.assert_allclose(atoms.cell.lengths(), 8.92 * Bohr / np.sqrt(2), rtol=1e-12)
    csr = abacus.read_csr(CE / "201_NO_15_f_pseudopots/refdata-DMR-sparse_SPIN0.csr")
    assert csr.layout == "old" and csr.step == 0 and csr.dim == 34 and len(csr.R) == 93
    dense = csr.dense()
    index = {tuple(r): n for n, r in enumerate(csr.R)}
    asym = max(np.abs(dense[n] - dense[index[tuple(-r)]].T).max() for n, r in enumerate(csr.R))
    assert asym == 0.0  # DM(R) = DM(-R)^T exactly in the file
    trace0 = np.trace(D.block(0, 0, (0, 0, 0)))
    print(f"ABACUS Ce: Tr DM(R=0) = {trace0:.4f} (12 valence electrons; no S(R) to close the count)")
    assert trace0 == pytest.approx(11.2865, abs=1e-3)
    assert np.trace(dense[index[(0, 0, 0)]]) == pytest.approx(trace0, abs=1e-9)  # traces are convention-free


def test_ce_density_matrix_f_convention_by_its_residual_symmetry(ce):
    """DM(R) is built from the 3 IBZ k-points only, so it keeps 4 of the 48 O_h operations
    (E, I, a C2 about [0,1,-1] and the mirror y<->z); those mix f functions, and any wrong f
    order/sign convention breaks them."""
    atoms, ops = ce
    D = ops["density_matrix"]
    res, group = symmetry_residuals(atoms, D)
    kept = np.sort(res)[:5]
    print(f"ABACUS Ce ({group}): residuals of the 5 best operations {np.round(kept, 7)}")
    assert group == "Fm-3m" and np.sum(res < 1e-5) == 4 and kept[4] > 0.1
    for wrong in (odd_m_flip(3), swap_pair(3, 1, 2)):
        assert np.sum(symmetry_residuals(atoms, transform_shells(D, atoms, 3, wrong))[0] < 1e-5) == 2


# ---------------------------------------------------------------------------------------------
# new (>= 3.11) layout and 2.x old layout, written from the samples
# ---------------------------------------------------------------------------------------------
def _wrap(values, per_line, fmt):
    return [" " + " ".join(fmt % v for v in values[k : k + per_line]) for k in range(0, len(values), per_line)]


def write_new_layout(path, csr, cell, what="H", with_spin=True, lattice_name="user_defined_lattice"):
    """Write ``csr`` in the ABACUS >= 3.11 text layout (header as in the external README)."""
    out = [" --- Ionic Step 1 ---", f" # print {what} matrix in real space {what}(R)"]
    if with_spin:
        out += [" 1 # number of spin directions", " 1 # spin index"]
    out += [f" {csr.dim} # number of localized basis", f" {len(csr.R)} # number of Bravais lattice vector R", ""]
    out += [f" {lattice_name}", f" {cell['lat0']:g}"]
    out += [" " + " ".join(f"{x:g}" for x in row) for row in cell["vectors"]]
    out += [" " + " ".join(cell["labels"]), " " + " ".join(str(n) for n in cell["counts"]), " Direct"]
    out += [" " + " ".join(f"{x:.15g}" for x in row) for row in cell["positions"]]
    out += ["", " #" + "-" * 70 + "#", " #" + "CSR Format".center(70) + "#", " #" + "-" * 70 + "#", ""]
    start = 0
    for R, p in zip(csr.R, csr.indptr):
        nnz = int(p[-1])
        out.append(f" {R[0]} {R[1]} {R[2]} {nnz}")
        if nnz:
            out.append(" # CSR values")
            out += _wrap(csr.values[start : start + nnz], 6, "%.8e")
            out.append(" # CSR column indices")
            out += _wrap(csr.indices[start : start + nnz], 16, "%d")
            out.append(" # CSR row pointers")
            out += _wrap(p, 16, "%d")
        start += nnz
    Path(path).write_text("\n".join(out) + "\n")


def test_new_layout_reads_back_equal(tmp_path, mos2):
    atoms, ops = mos2
    lat0 = 5.9716 * 0.529177  # ABACUS prints lat0 * BOHR_TO_A
    cell = {"lat0": lat0, "vectors": atoms.cell[:] / lat0, "labels": ["Mo", "S"], "counts": [1, 2],
            "positions": atoms.get_scaled_positions()}
    for key, name in (("HR", "hrs1_nao.csr"), ("SR", "srs1_nao.csr")):
        old = abacus.read_csr(MOS2 / f"OUT.ABACUS/data-{key}-sparse_SPIN0.csr")
        write_new_layout(tmp_path / name, old, cell, what=key[0])
        new = abacus.read_csr(tmp_path / name)
        assert new.layout == "new" and new.nspin == 1 and new.step == 1
        assert new.cell["labels"] == ["Mo", "S"] and new.cell["counts"] == [1, 2]
        np.testing.assert_array_equal(new.R, old.R)
        np.testing.assert_array_equal(new.indptr, old.indptr)
        np.testing.assert_array_equal(new.indices, old.indices)
        np.testing.assert_allclose(new.values, old.values, rtol=1e-12)
    # a folder with only the new files and the log (shells): structure comes from the file header
    shutil.copy(MOS2 / "OUT.ABACUS/running_scf.log", tmp_path / "running_scf.log")
    assert abacus.detect(tmp_path)
    atoms2, ops2 = abacus.read(tmp_path)
    assert atoms2.get_chemical_symbols() == atoms.get_chemical_symbols()
    # ABACUS prints the lattice constant with 6 digits (3.16003 Å)
    np.testing.assert_allclose(atoms2.cell[:], atoms.cell[:], rtol=3e-6, atol=1e-9)
    np.testing.assert_allclose(atoms2.positions, atoms.positions, rtol=3e-6, atol=1e-9)
    assert ops2["hamiltonian"].max_abs_difference(ops["hamiltonian"]) < 1e-12
    assert ops2["overlap"].max_abs_difference(ops["overlap"]) < 1e-12


def test_new_layout_density_matrix_variant(tmp_path, ce):
    """The DM variant: no spin lines, lattice name 'none' (as in upstream dmrs1_nao.csr)."""
    atoms, ops = ce
    old = abacus.read_csr(CE / "201_NO_15_f_pseudopots/refdata-DMR-sparse_SPIN0.csr")
    cell = {"lat0": 4.72026, "vectors": [[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], "labels": ["Ce"],
            "counts": [1], "positions": [[0, 0, 0]]}
    write_new_layout(tmp_path / "dmrs1_nao.csr", old, cell, what="density", with_spin=False, lattice_name="none")
    for f in ("STRU", "INPUT"):
        shutil.copy(CE / "201_NO_15_f_pseudopots" / f, tmp_path / f)
    shutil.copytree(CE / "PP_ORB", tmp_path / "PP_ORB")  # found beside STRU (orbital_dir ../../PP_ORB is not)
    new = abacus.read_csr(tmp_path / "dmrs1_nao.csr")
    assert new.nspin is None and new.cell["lattice_name"] == "none"
    _, ops2 = abacus.read(tmp_path)
    assert ops2["density_matrix"].max_abs_difference(ops["density_matrix"]) < 1e-12


def test_abacus2_layout_without_step_line(tmp_path, mos2):
    run = tmp_path / "run"
    shutil.copytree(MOS2, run, ignore=shutil.ignore_patterns("istate.info", "running_scf.log"))
    for name in ("data-HR-sparse_SPIN0.csr", "data-SR-sparse_SPIN0.csr"):
        f = run / "OUT.ABACUS" / name
        f.chmod(0o644)
        text = f.read_text()
        f.write_text(text[text.index("\n") + 1 :])  # drop "STEP: 0"
    csr = abacus.read_csr(run / "OUT.ABACUS/data-HR-sparse_SPIN0.csr")
    assert csr.step is None and csr.layout == "old"
    _, ops = abacus.read(run / "OUT.ABACUS")  # the OUT folder: STRU found in its parent
    assert ops["hamiltonian"].max_abs_difference(mos2[1]["hamiltonian"]) == 0.0


# ---------------------------------------------------------------------------------------------
# detection and bad input
# ---------------------------------------------------------------------------------------------
def test_detect_rules():
    assert abacus.detect(MOS2) and abacus.detect(MOS2 / "OUT.ABACUS")
    assert abacus.detect(MOS2 / "OUT.ABACUS/data-SR-sparse_SPIN0.csr")
    assert abacus.detect(CE / "201_NO_15_f_pseudopots")
    assert not abacus.detect(EXTERNAL / "siesta-si-deeph/siesta_data")
    assert not abacus.detect(EXTERNAL / "openmx-mote2-monolayer/deeph_legacy")
    assert not abacus.detect(MOS2 / "STRU")


@pytest.fixture
def mos2_copy(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(MOS2, run)
    for p in run.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return run


def test_missing_stru_is_named(tmp_path):
    out = tmp_path / "OUT.ABACUS"
    shutil.copytree(MOS2 / "OUT.ABACUS", out)
    with pytest.raises(ReaderError, match=r"STRU is missing"):
        abacus.read(out)


def test_truncated_matrix_file_is_named(mos2_copy):
    f = mos2_copy / "OUT.ABACUS/data-HR-sparse_SPIN0.csr"
    text = f.read_text()
    f.write_text(text[: len(text) // 2])
    with pytest.raises(ReaderError, match=r"data-HR-sparse_SPIN0\.csr: truncated: R block \d+ of 51"):
        abacus.read(mos2_copy)


def test_missing_orbital_files_without_log(mos2_copy):
    shutil.rmtree(mos2_copy / "orbitals")
    (mos2_copy / "OUT.ABACUS/running_scf.log").unlink()
    with pytest.raises(ReaderError, match=r"Mo_gga_8au_100Ry_4s2p2d1f\.orb.*not found"):
        abacus.read(mos2_copy)
    # the log alone is enough to know the shells
    shutil.copy(MOS2 / "OUT.ABACUS/running_scf.log", mos2_copy / "OUT.ABACUS/running_scf.log")
    atoms, _ = abacus.read(mos2_copy)
    assert atoms.info["basis"] == {"Mo": "4s2p2d1f", "S": "2s2p1d"}


def test_structure_inconsistent_with_matrix(mos2_copy):
    stru = mos2_copy / "STRU"
    text = stru.read_text().replace("2\n0.500000000   0.288675130   1.974192764 0 0 0\n",
                                    "3\n0.500000000   0.288675130   1.974192764 0 0 0\n0.1 0.1 0.1 0 0 0\n")
    stru.write_text(text)
    with pytest.raises(ReaderError, match=r"matrix dimension 53 does not match .* 66 orbitals"):
        abacus.read(mos2_copy)


def test_not_an_abacus_folder(tmp_path):
    with pytest.raises(ReaderError, match=r"no ABACUS matrix file found"):
        abacus.read(tmp_path)
    bad = tmp_path / "data-HR-sparse_SPIN0.csr"
    bad.write_text("hello world\n")
    with pytest.raises(ReaderError, match=r"not an ABACUS CSR matrix file"):
        abacus.read_csr(bad)
