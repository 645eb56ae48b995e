"""SIESTA reader on the Si DZP sample: HSX (ifort, is_dp = -1) reproduces Si.EIG and Si.bands, DM gives
8 electrons, sisl as an independent peer, the RHO grid against Rho.grid.nc, record handling, bad input."""
from pathlib import Path
import shutil
import warnings

import numpy as np
import pytest
from ase.units import Bohr

from ase_slem import band_energies
from ase_slem.io import deeph, siesta
from ase_slem.io._blocks import ReaderError

from _convention_checks import overlap_alignment, symmetry_residuals

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
pytestmark = pytest.mark.skipif(not EXTERNAL.is_dir(), reason=f"external DFT data folder {EXTERNAL} is absent")

RUN = EXTERNAL / "siesta-si-deeph/siesta_data"
HSX_BYTES_IS_DP = slice(16, 20)  # record 2 payload: after marker+version+marker and its own marker


@pytest.fixture(scope="module")
def si():
    return siesta.read(RUN)


def write_records(path, records, split=None):
    """Write Fortran sequential records; record index ``split`` as two sub-records (negative marker)."""
    out = bytearray()
    for k, rec in enumerate(records):
        parts = [rec[: len(rec) // 2], rec[len(rec) // 2 :]] if k == split else [rec]
        for n, part in enumerate(parts):
            lead = -len(part) if n < len(parts) - 1 else len(part)
            trail = -len(part) if n > 0 else len(part)
            out += np.int32(lead).tobytes() + part + np.int32(trail).tobytes()
    Path(path).write_bytes(bytes(out))


# ---------------------------------------------------------------------------------------------
# raw file and reproduction of SIESTA's own eigenvalues
# ---------------------------------------------------------------------------------------------
def test_hsx_header_intel_logical():
    raw = (RUN / "Si.HSX").read_bytes()
    assert np.frombuffer(raw[HSX_BYTES_IS_DP], "<i4")[0] == -1  # Intel Fortran .true.
    hsx = siesta.read_hsx(RUN / "Si.HSX")
    assert hsx.version == 2 and hsx.double and hsx.no_u == 26 and hsx.nspin == 1
    assert hsx.nsc.tolist() == [5, 5, 5] and hsx.qtot == pytest.approx(8.0)
    assert hsx.fermi == pytest.approx(-0.30937910, abs=1e-8)
    assert hsx.kcell.tolist() == [[8, 0, 0], [0, 8, 0], [0, 0, 8]]
    assert hsx.labels == ["Si"] and hsx.lasto.tolist() == [13, 26]


def test_structure_and_fermi_level(si):
    atoms, ops = si
    assert atoms.get_chemical_symbols() == ["Si", "Si"]
    np.testing.assert_allclose(atoms.get_scaled_positions()[1], [0.25, 0.25, 0.25], atol=1e-9)
    np.testing.assert_allclose(atoms.cell.lengths(), 5.43 / np.sqrt(2), rtol=1e-8)
    ef, _ = siesta.read_eig(RUN / "Si.EIG")
    assert atoms.info["fermi_level"] == pytest.approx(ef, abs=1e-6)
    assert atoms.info["basis"] == {"Si": "2s2p1d"} and set(ops) == {"hamiltonian", "overlap", "density_matrix"}


def test_reproduces_si_eig(si):
    atoms, ops = si
    _, ref = siesta.read_eig(RUN / "Si.EIG")
    k, w = siesta.read_kp(RUN / "Si.KP", atoms.cell[:])
    assert ref.shape == (296, 1, 26) and w.sum() == pytest.approx(1.0)
    e = band_energies(ops["hamiltonian"], ops["overlap"], np.round(k * 8) / 8)
    err = np.abs(e - ref[:, 0])
    print(f"SIESTA HSX: max |E - Si.EIG| = {err.max() * 1e3:.3f} meV over 296 k x 26 bands "
          f"(lowest 8 bands {err[:, :8].max() * 1e3:.5f} meV)")
    assert err.max() < 1e-3
    assert err[:, :8].max() < 1e-6  # with CODATA Ry (13.60580 would leave ~1e-4 eV at -14 eV)


def test_reproduces_si_bands(si):
    atoms, ops = si
    bands = siesta.read_bands(RUN / "Si.bands")
    k, ticks = siesta.band_lines_kpoints(RUN / "Si.fdf")
    assert len(k) == 121 and [t[0] for t in ticks] == [0, 30, 60, 90, 120]
    assert bands["labels"] == ["L", "Gamma", "X", "U", "Gamma"]
    # SIESTA's path coordinate (1/bohr) follows from the same k-points
    rec = 2 * np.pi * np.linalg.inv(atoms.cell[:]).T
    x = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(k @ rec, axis=0), axis=1))]) * Bohr
    np.testing.assert_allclose(x, bands["x"], atol=2e-6)
    e = band_energies(ops["hamiltonian"], ops["overlap"], k)
    err = np.abs(e - bands["energies"][:, 0]).max()
    print(f"SIESTA HSX: max |E - Si.bands| = {err * 1e3:.3f} meV over 121 k x 26 bands (file has 4 decimals)")
    assert err < 1e-3


def test_density_matrix_electron_count(si):
    atoms, ops = si
    n = ops["density_matrix"].trace_product(ops["overlap"])
    print(f"SIESTA DM: Tr(DS) = {n:.8f}")
    assert n == pytest.approx(8.0, abs=1e-6)


def test_siesta_convention_by_symmetry_and_overlap_geometry(si):
    atoms, ops = si
    res = {key: symmetry_residuals(atoms, op)[0].max() for key, op in ops.items()}
    align = overlap_alignment(atoms, ops["overlap"])
    print(f"SIESTA Si (Fd-3m, 48 ops): symmetry residuals {', '.join(f'{k} {v:.1e}' for k, v in res.items())}; "
          f"s-l alignment max 1-|cos| {max(align.values()):.1e}")
    assert res["overlap"] < 1e-5 and res["hamiltonian"] < 1e-4 and res["density_matrix"] < 1e-5
    assert max(align.values()) < 1e-8


def test_agrees_with_deeph_conversion_of_the_same_run(si):
    """Two readers, two conventions ("siesta" odd-m signs vs DeepH-dock's): same operator in our order."""
    _, ops = si
    _, ops2 = deeph.read(EXTERNAL / "siesta-si-deeph/deeph_converted")
    assert ops["overlap"].max_abs_difference(ops2["overlap"]) < 1e-9
    assert ops["hamiltonian"].max_abs_difference(ops2["hamiltonian"]) < 1e-5


def test_sisl_reads_the_same_matrices(tmp_path, si):
    """sisl as a peer: it rejects is_dp = -1, so give it the gfortran form (1) of the same file."""
    import sisl  # the test extra installs it
    atoms, ops = si
    raw = bytearray((RUN / "Si.HSX").read_bytes())
    raw[HSX_BYTES_IS_DP] = np.int32(1).tobytes()
    (tmp_path / "Si.HSX").write_bytes(bytes(raw))
    ours = siesta.read_hsx(tmp_path / "Si.HSX")  # the gfortran logical works for us too
    assert ours.double
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H = sisl.get_sile(str(tmp_path / "Si.HSX")).read_hamiltonian()
        D = sisl.get_sile(str(RUN / "Si.DM")).read_density_matrix(geometry=H.geometry)
    C = ops["hamiltonian"].basis.structure_converter(atoms.get_chemical_symbols(), "siesta")
    k = np.array([[0.125, 0.25, -0.375], [0.5, 0.0, 0.25]])
    ef = atoms.info["fermi_level"]  # sisl shifts H to E_F = 0
    for kk, hk, sk, dk in zip(k, ops["hamiltonian"].bloch(k), ops["overlap"].bloch(k), ops["density_matrix"].bloch(k)):
        hs, ss = H.Hk(kk, format="array"), H.Sk(kk, format="array")
        assert np.abs(C @ (hs + ef * ss) @ C.T - hk).max() < 1e-6
        # ours averages the two stored triangles, which differ at the 1e-9 level in the file
        assert np.abs(C @ ss @ C.T - sk).max() < 1e-8
        assert np.abs(C @ D.Dk(kk, format="array") @ C.T - dk).max() < 1e-8


def test_hsx_version1_and_split_records(tmp_path, si):
    """HSX version 1 (no k-grid record) and a record split into sub-records read the same."""
    records = siesta.fortran_records(RUN / "Si.HSX")
    v1 = [np.int32(1).tobytes()] + records[1:7] + records[8:]  # drop kcell/kdispl
    write_records(tmp_path / "v1.HSX", v1, split=12)
    assert len(siesta.fortran_records(tmp_path / "v1.HSX")) == len(v1)
    hsx = siesta.read_hsx(tmp_path / "v1.HSX")
    assert hsx.version == 1 and hsx.kcell is None
    _, ops = siesta.read(tmp_path / "v1.HSX")
    assert ops["hamiltonian"].max_abs_difference(si[1]["hamiltonian"]) == 0.0


def test_rho_grid_density():
    rho, cell = siesta.read_rho(RUN / "Si.RHO")
    assert rho.shape == (1, 36, 36, 36)
    n = rho.sum() * abs(np.linalg.det(cell)) / rho[0].size
    print(f"SIESTA Si.RHO: integral {n:.7f} electrons, max {rho.max():.4f} e/Å^3")
    assert n == pytest.approx(8.0, abs=1e-5)
    np.testing.assert_allclose(cell, 5.43 / 2 * (1 - np.eye(3)), atol=1e-6)
    # the same grid in SIESTA's NetCDF file (bohr^-3, axes spin, z, y, x): checks units and axis order
    from scipy.io import netcdf_file

    with netcdf_file(RUN / "Rho.grid.nc", "r", mmap=False) as f:
        grid = f.variables["gridfunc"][:].copy()
    np.testing.assert_allclose(rho * Bohr**3, grid.transpose(0, 3, 2, 1), atol=1e-7)
    # diamond Si has inversion through the bond centre (1/8, 1/8, 1/8) of the grid: 36/8 is not an
    # integer, so use the symmetric point 0 <-> (1/4,1/4,1/4) mapping x -> 1/4 - x
    idx = (9 - np.arange(36)) % 36
    np.testing.assert_allclose(rho[0], rho[0][np.ix_(idx, idx, idx)], atol=2e-3 * rho.max())


def test_radial_basis_of_the_run():
    rb = siesta.read_radial_basis(RUN)
    assert rb.basis() == siesta.structure(siesta.read_hsx(RUN / "Si.HSX"))[1]
    assert [f.zeta for f in rb.functions["Si"]] == [1, 2, 1, 2, 1]


# ---------------------------------------------------------------------------------------------
# detection and bad input
# ---------------------------------------------------------------------------------------------
def test_detect_rules():
    assert siesta.detect(RUN) and siesta.detect(RUN / "Si.HSX")
    assert not siesta.detect(RUN / "Si.DM")
    assert not siesta.detect(EXTERNAL / "siesta-si-deeph/deeph_converted")
    assert not siesta.detect(EXTERNAL / "abacus-mos2-monolayer")


def test_truncated_hsx_is_named(tmp_path):
    raw = (RUN / "Si.HSX").read_bytes()
    (tmp_path / "Si.HSX").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ReaderError, match=r"Si\.HSX: record \d+ announces \d+ bytes .* truncated"):
        siesta.read(tmp_path)


def test_hsx_missing_records_is_named(tmp_path):
    records = siesta.fortran_records(RUN / "Si.HSX")
    write_records(tmp_path / "Si.HSX", records[:20])
    with pytest.raises(ReaderError, match=r"Si\.HSX: ends after 20 records, before the listh row 12 record"):
        siesta.read(tmp_path)


def test_density_matrix_of_another_run(tmp_path):
    shutil.copy(RUN / "Si.HSX", tmp_path / "Si.HSX")
    records = siesta.fortran_records(RUN / "Si.DM")
    head = np.frombuffer(records[0], "<i4").copy()
    head[2:5] = 3  # a DM written with a 3x3x3 supercell
    write_records(tmp_path / "Si.DM", [head.tobytes()] + records[1:])
    with pytest.raises(ReaderError, match=r"Si\.DM: supercell \[3, 3, 3\] differs from the HSX's \[5, 5, 5\]"):
        siesta.read(tmp_path)


def test_truncated_rho_is_named(tmp_path):
    records = siesta.fortran_records(RUN / "Si.RHO")
    write_records(tmp_path / "Si.RHO", records[:-5])
    with pytest.raises(ReaderError, match=r"Si\.RHO: 1291 grid records for 1 x 36 x 36 lines"):
        siesta.read_rho(tmp_path / "Si.RHO")


def test_folder_without_hsx(tmp_path):
    shutil.copy(RUN / "Si.DM", tmp_path / "Si.DM")
    with pytest.raises(ReaderError, match=r"no \*\.HSX file"):
        siesta.read(tmp_path)
