"""DeepH readers on real samples: legacy (OpenMX MoTe2) reproduces openmx.out, new layout (SIESTA Si)
reproduces Si.EIG; orbital conventions checked by symmetry and overlap geometry; bad input."""
from pathlib import Path
import json
import re
import shutil

import h5py
import numpy as np
import pytest

from ase_slem import band_energies
from ase_slem.io import deeph, siesta
from ase_slem.io._blocks import ReaderError

from _convention_checks import odd_m_flip, overlap_alignment, swap_pair, symmetry_residuals, transform_shells

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
pytestmark = pytest.mark.skipif(not EXTERNAL.is_dir(), reason=f"external DFT data folder {EXTERNAL} is absent")

MOTE2 = EXTERNAL / "openmx-mote2-monolayer"
LEGACY = MOTE2 / "deeph_legacy"
SI = EXTERNAL / "siesta-si-deeph"
NEW = SI / "deeph_converted"
HARTREE_DEEPH = 27.2113845  # DeepH-pack's Hartree -> eV factor (info.json fermi_level uses it)


def read_openmx_eigenvalues(path):
    """k (fractional, rounded to the 9x9 grid) and eigenvalues (Hartree) of openmx.out's SCF section."""
    text = Path(path).read_text()
    text = text[text.index("Eigenvalues (Hartree) of SCF KS-eq.") :]
    ks, energies = [], []
    for chunk in re.split(r"kloop=\d+", text)[1:]:
        m = re.search(r"k1=\s*(\S+)\s+k2=\s*(\S+)\s+k3=\s*(\S+)", chunk)
        ks.append([float(x) for x in m.groups()])
        vals = []
        for ln in chunk.splitlines()[2:]:
            parts = ln.split()
            if len(parts) == 3 and parts[0].isdigit():
                vals.append(float(parts[1]))
            elif vals:
                break
        energies.append(vals)
    return np.round(np.array(ks) * 9) / 9, np.array(energies)


@pytest.fixture(scope="module")
def mote2():
    return deeph.read(LEGACY)


@pytest.fixture(scope="module")
def si_new():
    return deeph.read(NEW)


# ---------------------------------------------------------------------------------------------
# legacy: OpenMX MoTe2
# ---------------------------------------------------------------------------------------------
def test_legacy_structure(mote2):
    atoms, ops = mote2
    assert atoms.get_chemical_symbols() == ["Te", "Te", "Mo"]
    np.testing.assert_allclose(atoms.cell[0], [1.7828272796542239, -3.0879474294809239, 0.0])  # lat.dat column 0
    np.testing.assert_allclose(atoms.get_scaled_positions()[2], [1 / 3, 2 / 3, 0.25], atol=1e-9)
    assert atoms.info["basis"] == {"Te": "3s2p2d", "Mo": "3s2p2d"}
    assert atoms.info["fermi_level"] == pytest.approx(-0.15410738426307 * HARTREE_DEEPH)
    assert set(ops) == {"hamiltonian", "overlap"} and ops["hamiltonian"].norb == 57


def test_legacy_reproduces_openmx_eigenvalues(mote2):
    atoms, ops = mote2
    k, ref = read_openmx_eigenvalues(MOTE2 / "openmx/openmx.out")
    assert ref.shape == (41, 57)
    e = band_energies(ops["hamiltonian"], ops["overlap"], k)
    err = np.abs(e - ref * HARTREE_DEEPH)
    print(f"DeepH legacy (OpenMX MoTe2): max |E - openmx.out| = {err.max() * 1e3:.3f} meV over 41 k x 57 bands "
          f"(occupied bands {err[:, :23].max() * 1e3:.4f} meV)")
    assert err.max() < 1e-3
    # 46 electrons: the band count below the chemical potential, averaged over the k-points, is 23
    assert np.mean(np.sum(e < atoms.info["fermi_level"], axis=1)) == pytest.approx(23, abs=0.5)


def test_legacy_openmx_convention_by_symmetry_and_overlap_geometry(mote2):
    atoms, ops = mote2
    S, H = ops["overlap"], ops["hamiltonian"]
    res_s, group = symmetry_residuals(atoms, S, symprec=1e-3)
    res_h, _ = symmetry_residuals(atoms, H, symprec=1e-3)
    align = overlap_alignment(atoms, S)
    print(f"DeepH legacy MoTe2 ({group}, {len(res_s)} ops): |dS| {res_s.max():.1e}, |dH| {res_h.max():.1e} eV "
          f"(OpenMX grid breaks symmetry by ~0.01 eV); s-l alignment max 1-|cos| {max(align.values()):.1e}")
    assert group == "P-6m2" and len(res_s) == 12
    assert res_s.max() < 1e-5 and res_h.max() < 0.03
    assert set(align) == {1, 2} and max(align.values()) < 1e-8
    # negative controls: a d-order error breaks the symmetry of S and H far beyond the grid noise
    swapped = transform_shells(S, atoms, 2, swap_pair(2, 0, 1))
    assert symmetry_residuals(atoms, swapped, symprec=1e-3)[0].max() > 0.05
    assert symmetry_residuals(atoms, transform_shells(H, atoms, 2, swap_pair(2, 0, 1)), symprec=1e-3)[0].max() > 0.3
    assert overlap_alignment(atoms, transform_shells(S, atoms, 1, odd_m_flip(1)))[1] > 0.1


# ---------------------------------------------------------------------------------------------
# new layout: SIESTA Si converted by DeepH-dock
# ---------------------------------------------------------------------------------------------
def test_new_layout_reproduces_siesta_eig(si_new):
    atoms, ops = si_new
    assert atoms.info["basis"] == {"Si": "2s2p1d"} and atoms.info["fermi_level"] == pytest.approx(-4.20931707)
    _, ref = siesta.read_eig(SI / "siesta_data/Si.EIG")
    k, _ = siesta.read_kp(SI / "siesta_data/Si.KP", atoms.cell[:])
    assert np.abs(k * 8 - np.round(k * 8)).max() < 1e-4
    e = band_energies(ops["hamiltonian"], ops["overlap"], np.round(k * 8) / 8)
    err = np.abs(e - ref[:, 0])
    print(f"DeepH new (SIESTA Si): max |E - Si.EIG| = {err.max() * 1e3:.3f} meV over 296 k x 26 bands "
          f"(lowest 8 bands {err[:, :8].max() * 1e3:.5f} meV)")
    assert err.max() < 1e-3


def test_new_layout_deeph_convention_by_symmetry_and_overlap_geometry(si_new):
    atoms, ops = si_new
    res_s, group = symmetry_residuals(atoms, ops["overlap"])
    res_h, _ = symmetry_residuals(atoms, ops["hamiltonian"])
    align = overlap_alignment(atoms, ops["overlap"])
    print(f"DeepH new Si ({group}, {len(res_s)} ops): |dS| {res_s.max():.1e}, |dH| {res_h.max():.1e} eV; "
          f"s-l alignment max 1-|cos| {max(align.values()):.1e}")
    assert group == "Fd-3m" and len(res_s) == 48
    assert res_s.max() < 1e-5 and res_h.max() < 1e-4 and max(align.values()) < 1e-8
    # in a cubic crystal symmetry alone sees an odd-m sign error (C2z does not commute with C3[111])
    assert symmetry_residuals(atoms, transform_shells(ops["overlap"], atoms, 1, odd_m_flip(1)))[0].max() > 0.1


# ---------------------------------------------------------------------------------------------
# detection and bad input
# ---------------------------------------------------------------------------------------------
def test_detect_rules():
    assert deeph.layout(LEGACY) == "legacy" and deeph.layout(NEW) == "new"
    assert deeph.detect(LEGACY / "hamiltonians.h5") and deeph.detect(NEW / "overlap.h5")
    assert not deeph.detect(EXTERNAL / "deeptb-si64/Si64.0")  # DeePTB also writes hamiltonians.h5
    assert not deeph.detect(SI / "siesta_data")
    assert not deeph.detect(EXTERNAL / "abacus-mos2-monolayer")


def _copy(src, dst):
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644)
    return dst


def test_legacy_missing_orbital_types(tmp_path):
    d = _copy(LEGACY, tmp_path / "legacy")
    (d / "orbital_types.dat").unlink()
    assert deeph.detect(d)
    with pytest.raises(ReaderError, match=r"orbital_types\.dat is missing"):
        deeph.read(d)


def test_legacy_inconsistent_positions(tmp_path):
    d = _copy(LEGACY, tmp_path / "legacy")
    rows = (d / "site_positions.dat").read_text().splitlines()
    (d / "site_positions.dat").write_text("\n".join(" ".join(r.split()[:2]) for r in rows) + "\n")
    with pytest.raises(ReaderError, match=r"site_positions\.dat: expected 3 rows x 3 columns"):
        deeph.read(d)


def test_legacy_wrong_basis_for_blocks(tmp_path):
    d = _copy(LEGACY, tmp_path / "legacy")
    (d / "orbital_types.dat").write_text("0  0  0  1  1  2\n" * 3)
    with pytest.raises(ReaderError, match=r"hamiltonians\.h5: block .* has shape \(19, 19\), but the basis"):
        deeph.read(d)


def test_new_missing_poscar(tmp_path):
    d = _copy(NEW, tmp_path / "new")
    (d / "POSCAR").unlink()
    with pytest.raises(ReaderError, match=r"POSCAR is missing"):
        deeph.read(d)


def test_new_truncated_entries(tmp_path):
    d = _copy(NEW, tmp_path / "new")
    with h5py.File(d / "hamiltonian.h5", "r+") as f:
        entries = f["entries"][()]
        del f["entries"]
        f["entries"] = entries[:-100]
    with pytest.raises(ReaderError, match=r"hamiltonian\.h5: chunk_boundaries do not match"):
        deeph.read(d)


def test_new_info_inconsistent_with_structure(tmp_path):
    d = _copy(NEW, tmp_path / "new")
    info = json.loads((d / "info.json").read_text())
    info["elements_orbital_map"]["Si"] = [0, 1, 2]
    info.pop("orbits_quantity")
    (d / "info.json").write_text(json.dumps(info))
    with pytest.raises(ReaderError, match=r"hamiltonian\.h5: block .* has shape \(13, 13\), but the basis"):
        deeph.read(d)
    info["orbits_quantity"] = 26
    (d / "info.json").write_text(json.dumps(info))
    with pytest.raises(ReaderError, match=r"orbits_quantity 26 but elements_orbital_map and POSCAR give 18"):
        deeph.read(d)


def test_not_a_deeph_folder(tmp_path):
    with pytest.raises(ReaderError, match=r"not a DeepH folder"):
        deeph.read(tmp_path)
