"""DeePTB HDF5 reader/writer, the frame dataset, read_operators dispatch, and validation 7a (Si64)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.linalg
from ase import Atoms

from ase_slem import band_energies
from ase_slem.basis import Basis
from ase_slem.io import UnknownFormatError, detect_format, read_operators
from ase_slem.io import dataset, deeptb
from ase_slem.io.dataset import DatasetError, Frame
from ase_slem.io.deeptb import DeePTBFormatError
from ase_slem.operators import NonHermitianError, RealSpaceOperator

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
SI64 = EXTERNAL / "deeptb-si64" / "Si64.0"
needs_si64 = pytest.mark.skipif(
    not SI64.is_dir(), reason=f"external DeePTB Si64 data not found at {SI64} (../shared/data/external beside the repo)"
)


# ---------------------------------------------------------------------------------------------
# validation 7a on the external 64-atom silicon set
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def si64():
    return read_operators(SI64)


def _direct_bloch(file: Path, kpts: np.ndarray, norb_atom: int, norb: int) -> np.ndarray:
    """X(k) by a plain loop over the h5 datasets in the file's own orbital order."""
    out = np.zeros((len(kpts), norb, norb), dtype=complex)
    with h5py.File(file, "r") as f:
        for key, ds in f["0"].items():
            i, j, rx, ry, rz = (int(x) for x in key.split("_"))
            phase = np.exp(2j * np.pi * kpts @ np.array([rx, ry, rz]))
            a, b = i * norb_atom, j * norb_atom
            out[:, a : a + norb_atom, b : b + norb_atom] += phase[:, None, None] * ds[()][None]
    return out


@needs_si64
def test_si64_structure_and_blocks(si64):
    atoms, ops = si64
    H, S = ops["hamiltonian"], ops["overlap"]
    assert len(atoms) == 64 and set(atoms.get_chemical_symbols()) == {"Si"}
    assert atoms.pbc.all()
    np.testing.assert_allclose(np.diag(atoms.cell[:]), 10.887404441833496)
    assert H.norb == S.norb == 256
    assert H.basis == Basis({"Si": "1s1p"}) and atoms.info["basis"] == {"Si": "1s1p"}
    assert "density_matrix" not in ops
    # 9434 stored blocks = both triangles of 4749 canonical ones (64 onsite blocks stored once)
    assert 2 * H.nblocks - 64 == 9434 and 2 * S.nblocks - 64 == 5562


@needs_si64
def test_si64_bands_equal_direct_numpy_evaluation(si64):
    atoms, ops = si64
    kpts = np.load(SI64 / "kpoints.npy")
    ours = band_energies(ops["hamiltonian"], ops["overlap"], kpts)
    hk = _direct_bloch(SI64 / "hamiltonians.h5", kpts, 4, 256)
    sk = _direct_bloch(SI64 / "overlaps.h5", kpts, 4, 256)
    direct = np.stack([scipy.linalg.eigh(h, s, eigvals_only=True) for h, s in zip(hk, sk)])
    np.testing.assert_allclose(ours, direct, rtol=0, atol=1e-6)


@needs_si64
def test_si64_counts_256_electrons_and_gap_at_gamma(si64):
    atoms, ops = si64
    from ase.dft.kpoints import monkhorst_pack

    kpts = monkhorst_pack((2, 2, 2))  # fractional, shifted off Gamma
    e = band_energies(ops["hamiltonian"], ops["overlap"], kpts)
    vbm, cbm = e[:, 127].max(), e[:, 128].min()
    assert cbm > vbm + 0.5  # a global gap above band 128
    mid = 0.5 * (vbm + cbm)
    assert 2 * np.count_nonzero(e < mid) / len(kpts) == 256
    gamma = band_energies(ops["hamiltonian"], ops["overlap"], np.zeros(3))
    assert gamma[128] - gamma[127] == pytest.approx(1.75, abs=0.01)


def _sp_bond_cosines(H: RealSpaceOperator, atoms: Atoms, p_perm=(0, 1, 2), rmax=2.6) -> np.ndarray:
    """cos(angle) between the s-p hopping vector H_{s,p}(i, j, R) and the bond r_ij, per bond."""
    pos, cell = atoms.positions, atoms.cell[:]
    cos = []
    for a, b, R, blk in H.iter_blocks():
        bond = pos[b] + np.asarray(R) @ cell - pos[a]
        d = np.linalg.norm(bond)
        if 0 < d < rmax:
            v = blk[0, 1:4][list(p_perm)]
            cos.append(v @ bond / (np.linalg.norm(v) * d))
    return np.array(cos)


@needs_si64
def test_si64_sp_hopping_points_along_the_bond(si64):
    """In our (e3nn, p = x, y, z) order, H_{s,p}(i, j, R) is parallel to r_ij = tau_j + R - tau_i."""
    atoms, ops = si64
    cos = _sp_bond_cosines(ops["hamiltonian"], atoms)
    assert len(cos) == 256  # 4 bonds per atom, both directions
    assert np.abs(cos).min() > 0.99 and np.mean(np.abs(cos)) > 0.999
    assert np.all(np.sign(cos) == np.sign(cos[0]))  # one sign for every bond
    # the same check with p read in DeePTB's own (y, z, x) order, or with R's sign flipped, fails
    assert np.mean(np.abs(_sp_bond_cosines(ops["hamiltonian"], atoms, p_perm=(1, 2, 0)))) < 0.7
    pos, cell = atoms.positions, atoms.cell[:]
    d_plus = [np.linalg.norm(pos[b] + np.asarray(R) @ cell - pos[a]) for a, b, R, _ in ops["overlap"].iter_blocks()]
    d_minus = [np.linalg.norm(pos[b] - np.asarray(R) @ cell - pos[a]) for a, b, R, _ in ops["overlap"].iter_blocks()]
    assert max(d_plus) < 9.0 < max(d_minus)  # +R makes S short-ranged; -R would not


@needs_si64
def test_si64_rewrite_reproduces_the_deeptb_file(tmp_path, si64):
    """Writing our operator back in DeePTB's layout gives the original datasets (convention round trip)."""
    atoms, ops = si64
    frame = Frame(atoms, {"hamiltonian": ops["hamiltonian"]}, ops["hamiltonian"].basis)
    out = deeptb.write(tmp_path / "si64", frame)
    with h5py.File(SI64 / "hamiltonians.h5") as ref, h5py.File(out / "hamiltonians.h5") as new:
        assert set(ref["0"].keys()) == set(new["0"].keys())
        for key in list(ref["0"].keys())[::50]:
            np.testing.assert_allclose(new["0"][key][()], ref["0"][key][()], rtol=0, atol=1e-6)
    assert (out / "basis.dat").read_text() == "{'Si': '1s1p'}"


# ---------------------------------------------------------------------------------------------
# round trips on small synthetic frames (s, p, d, f shells; molecule and crystal)
# ---------------------------------------------------------------------------------------------
def _random_operator(counts, rng, periodic=True, scale=1.0, name="operator", basis=None, symbols=None):
    ii, jj, RR, blocks = [], [], [], []
    shifts = [(0, 0, 0), (1, 0, 0), (0, -1, 1)] if periodic else [(0, 0, 0)]
    for a in range(len(counts)):
        for b in range(a, len(counts)):  # one triangle; the other follows by Hermiticity
            for R in shifts:
                m = rng.normal(size=(counts[a], counts[b])) * scale
                if a == b and R == (0, 0, 0):
                    m = m + m.T
                ii.append(a), jj.append(b), RR.append(R), blocks.append(m)
    return RealSpaceOperator.from_blocks(counts, ii, jj, RR, blocks, periodic=periodic, name=name, basis=basis, symbols=symbols)


def _frame(periodic=True, seed=0, with_dm=True):
    rng = np.random.default_rng(seed)
    basis = Basis({"Ga": "2s2p2d1f", "O": "1s1p1d"}, name="made-up")
    symbols = ["Ga", "O", "O"]
    atoms = Atoms(symbols, positions=rng.random((3, 3)) * 3, cell=np.diag([4.0, 4.5, 5.0]) if periodic else None,
                  pbc=periodic)
    counts = basis.orbital_counts(symbols)
    ops = {"hamiltonian": _random_operator(counts, rng, periodic, 3.0, "hamiltonian", basis, symbols),
           "overlap": _random_operator(counts, rng, periodic, 0.1, "overlap", basis, symbols)}
    if with_dm:
        ops["density_matrix"] = _random_operator(counts, rng, periodic, 0.2, "density_matrix", basis, symbols)
    settings = {"code": "test", "xc": "pbe", "kmesh": [3, 3, 3]}
    results = {"energy": -123.456, "fermi_level": 1.25, "converged": True}
    return Frame(atoms, ops, basis, settings, results)


@pytest.mark.parametrize("periodic", [True, False])
def test_frame_round_trip(tmp_path, periodic):
    frame = _frame(periodic)
    path = dataset.write_frame(tmp_path / "data", frame)
    assert path.name == "frame.000000"
    assert detect_format(path) == "deeptb"
    back = dataset.read_frame(path)
    assert back.basis == frame.basis and back.basis.name == "made-up"
    np.testing.assert_array_equal(back.atoms.numbers, frame.atoms.numbers)
    np.testing.assert_array_equal(back.atoms.positions, frame.atoms.positions)
    np.testing.assert_array_equal(back.atoms.cell[:], frame.atoms.cell[:])
    assert list(back.atoms.pbc) == [periodic] * 3
    assert back.settings == frame.settings and back.results == frame.results
    assert set(back.operators) == {"hamiltonian", "overlap", "density_matrix"}
    for name, op in frame.operators.items():
        assert back.operators[name].periodic == periodic
        assert back.operators[name].max_abs_difference(op) < 1e-12  # d/f converters are not pure permutations
    atoms, ops = read_operators(path)
    assert atoms.info["fermi_level"] == 1.25 and atoms.info["source"] == "deeptb"
    info = json.loads((path / "info.json").read_text())
    assert info["ase_slem"]["orbital_convention"] == "deeptb" and info["ase_slem"]["units"]["hamiltonian"] == "eV"


def test_write_converts_to_deeptb_order(tmp_path):
    """A p-block stored in our (x, y, z) order lands in the file as DeePTB's (y, z, x)."""
    basis = Basis({"H": "1p"})
    atoms = Atoms("H", positions=[[0, 0, 0]], pbc=False)
    onsite = np.diag([1.0, 2.0, 3.0])  # x, y, z energies
    H = RealSpaceOperator.from_blocks([3], [0], [0], None, [onsite], periodic=False, basis=basis)
    out = deeptb.write(tmp_path / "p", Frame(atoms, {"hamiltonian": H}, basis))
    with h5py.File(out / "hamiltonians.h5") as f:
        np.testing.assert_allclose(np.diag(f["0"]["0_0_0_0_0"][()]), [2.0, 3.0, 1.0])


def test_multi_frame_folder_and_frame_index(tmp_path):
    frames = [_frame(seed=s) for s in range(3)]
    for f in frames[1:]:
        f.atoms.numbers = frames[0].atoms.numbers  # same elements, different positions
    out = deeptb.write(tmp_path / "traj", frames)
    assert deeptb.count_frames(out) == 3
    atoms, ops = read_operators(out, index=2)
    np.testing.assert_array_equal(atoms.positions, frames[2].atoms.positions)
    assert ops["overlap"].max_abs_difference(frames[2].operators["overlap"]) < 1e-12
    assert len(deeptb.read_frames(out)) == 3
    with pytest.raises(DeePTBFormatError, match="frame 3 requested but .* holds 3"):
        deeptb.read_frame(out, 3)


def test_dataset_indices_overwrite_and_iteration(tmp_path):
    root = tmp_path / "data"
    a, b = _frame(seed=1), _frame(seed=2)
    dataset.write_frame(root, a)
    dataset.write_frame(root, b)
    assert [p.name for p in dataset.frame_paths(root)] == ["frame.000000", "frame.000001"]
    with pytest.raises(DatasetError, match="already exists"):
        dataset.write_frame(root, b, index=0)
    dataset.write_frame(root, b, index=0, overwrite=True)
    got = list(dataset.iter_frames(root))
    assert got[0].operators["hamiltonian"].max_abs_difference(b.operators["hamiltonian"]) < 1e-12
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    with pytest.raises(UnknownFormatError, match="dataset .*2 frame folders"):
        read_operators(root)


def test_failed_write_leaves_no_partial_frame(tmp_path, monkeypatch):
    root = tmp_path / "data"
    frame = _frame()

    def broken_write_operator(group, op, symbols, basis):
        group.create_dataset("0_0_0_0_0", data=np.zeros((1, 1)))
        raise RuntimeError("disk full")

    monkeypatch.setattr(deeptb, "_write_operator", broken_write_operator)
    with pytest.raises(RuntimeError, match="disk full"):
        dataset.write_frame(root, frame)
    assert list(root.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def written(tmp_path):
    return deeptb.write(tmp_path / "f", _frame(with_dm=False))


def test_error_block_shape_does_not_match_basis(written):
    (written / "basis.dat").write_text("{'Ga': '1s1p', 'O': '1s1p1d'}")
    with pytest.raises(DeePTBFormatError, match=r"block '0_0_[-_0-9]+' has shape \(25, 25\), but basis.dat gives 4 x 4"):
        deeptb.read(written)


def test_error_missing_files(written):
    os.remove(written / "basis.dat")
    with pytest.raises(DeePTBFormatError, match="basis.dat is missing"):
        deeptb.read(written)


def test_error_missing_positions(written):
    os.remove(written / "positions.dat")
    with pytest.raises(DeePTBFormatError, match="positions.dat is missing"):
        deeptb.read(written)


def test_error_unreadable_basis(written):
    (written / "basis.dat").write_text("Ga: 2s2p")
    with pytest.raises(DeePTBFormatError, match="cannot read the basis"):
        deeptb.read(written)
    (written / "basis.dat").write_text("{'Ga': '2x', 'O': '1s1p1d'}")
    with pytest.raises(DeePTBFormatError, match="cannot parse basis string"):
        deeptb.read(written)


def test_error_element_missing_from_basis(written):
    (written / "basis.dat").write_text("{'Ga': '2s2p2d1f'}")
    with pytest.raises(DeePTBFormatError, match="basis.dat: element O is not in this basis"):
        deeptb.read(written)


def test_error_inconsistent_positions(written):
    info = json.loads((written / "info.json").read_text())
    info["nframes"] = 2
    (written / "info.json").write_text(json.dumps(info))
    with pytest.raises(DeePTBFormatError, match="positions.dat has 3 rows; expected nframes"):
        deeptb.read(written)


def test_error_non_hermitian_file(written):
    with h5py.File(written / "overlaps.h5", "a") as f:
        ds = f["0"]["0_1_1_0_0"]
        ds[0, 0] = ds[0, 0] + 0.5
    with pytest.raises(NonHermitianError, match="overlap .* is not Hermitian"):
        deeptb.read(written)


def test_error_bad_dataset_name(written):
    with h5py.File(written / "hamiltonians.h5", "a") as f:
        f["0"]["0_1_x"] = np.zeros((23, 4))
    with pytest.raises(DeePTBFormatError, match="'0_1_x' is not of the form"):
        deeptb.read(written)


def test_error_no_operator_files(written):
    for name in ("hamiltonians.h5", "overlaps.h5"):
        os.remove(written / name)
    assert not deeptb.is_deeptb_folder(written)
    with pytest.raises(DeePTBFormatError, match="has no operator file"):
        deeptb.read(written)
    with pytest.raises(UnknownFormatError, match="Recognised layouts"):
        read_operators(written)


def test_write_errors(tmp_path):
    frame = _frame()
    deeptb.write(tmp_path / "x", frame)
    with pytest.raises(DeePTBFormatError, match="not empty"):
        deeptb.write(tmp_path / "x", frame)
    odd = Basis({"Ga": "1p1s", "O": "1s1p1d"})
    bad = Frame(frame.atoms, {}, odd)
    with pytest.raises(DeePTBFormatError, match="not grouped by increasing l"):
        deeptb.write(tmp_path / "y", bad)
    other = _frame(seed=3)
    other.atoms = other.atoms[:2]
    with pytest.raises(DeePTBFormatError, match="frame 1 has 2 atoms"):
        deeptb.write(tmp_path / "z", [frame, other])


def test_read_operators_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_operators(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownFormatError, match="not in a recognised operator layout"):
        read_operators(tmp_path / "empty")
    with pytest.raises(UnknownFormatError, match="unknown format 'vasp'"):
        read_operators(tmp_path / "empty", format="vasp")


@needs_si64
def test_read_operators_points_to_subfolders():
    with pytest.raises(UnknownFormatError, match=r"subfolders \(Si64.0\)"):
        read_operators(SI64.parent)
