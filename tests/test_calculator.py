"""SLEMCalculator: results = model_file.predict, caching, rotation invariance of bands, ASE's DFT
interface (DOS, Fermi level, occupations), chunked = whole, exact overlap = PySCF, bad input.

The models are tiny untrained SLEMs exported on the fly (no shipped model is needed): silicon
in the gth-dzvp-molopt-sr basis (2s2p1d, periodic, gth-pbe: 4 valence electrons per atom) and
water in sto-3g (molecular, all electron), both predicting H, S and D.  The silicon model is exported in float64 (dtype="float32" casts it
down); a float32 export cast up keeps float32 constants (see SLEMCalculator's dtype).  They
come from the session fixture ``models`` of conftest.py (shared with the command-line tests).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from scipy.spatial.transform import Rotation

from ase_slem import SLEMCalculator
from ase_slem.basis import Basis
from ase_slem.calculator import CalculatorInputError
from ase_slem.model_file import FORMAT_VERSION, METADATA_NAME, ModelFileError, load_model, predict

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

def si_cell(rattle=0.05, seed=3):
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(rattle, seed=seed)
    return atoms


def test_results_are_the_models_predictions_and_cached(models):
    atoms = si_cell()
    calc = SLEMCalculator(str(models["si"]))
    atoms.calc = calc
    ref = predict(load_model(models["si"]), atoms)
    H, S = calc.get_hamiltonian(atoms), calc.get_overlap(atoms)
    assert calc.prediction_count == 1 and "density_matrix" not in calc.results  # one pass for H and S, no D held
    D = calc.get_density_matrix(atoms)
    assert calc.prediction_count == 2  # D on request, by a second pass that leaves H and S alone
    for name, op in (("hamiltonian", H), ("overlap", S), ("density_matrix", D)):
        assert op.nblocks == ref[name].nblocks > 2
        assert op.max_abs_difference(ref[name]) == 0.0
    assert calc.get_hamiltonian() is H and calc.get_overlap(atoms) is S and calc.get_density_matrix() is D
    assert calc.prediction_count == 2
    fresh = SLEMCalculator(str(models["si"]))  # D asked first: all three in one pass
    fresh.get_density_matrix(atoms), fresh.get_hamiltonian(atoms), fresh.get_overlap(atoms)
    assert fresh.prediction_count == 1
    atoms.positions[0, 0] += 0.05
    H2 = calc.get_hamiltonian(atoms)
    assert calc.prediction_count == 3 and H2.max_abs_difference(H) > 1e-4
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    calc.get_overlap(atoms)
    assert calc.prediction_count == 4
    assert calc.get_overlap(atoms).max_abs_difference(predict(load_model(models["si"]), atoms)["overlap"]) == 0.0


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-10)])
def test_rotated_structure_has_identical_bands(models, dtype, tol):
    atoms = si_cell(0.1, seed=7)
    q = Rotation.random(random_state=11).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ q.T
    rotated.cell = atoms.cell[:] @ q.T
    kpts = np.random.default_rng(2).uniform(-0.5, 0.5, (4, 3))
    e = SLEMCalculator(str(models["si"]), dtype=dtype).get_band_energies(kpts, atoms)
    e_rot = SLEMCalculator(str(models["si"]), dtype=dtype).get_band_energies(kpts, rotated)
    assert np.ptp(e) > 0.1
    assert np.abs(e - e_rot).max() < tol


def test_dft_interface_fermi_level_occupations_and_ase_dos(models):
    from ase.dft.dos import DOS

    atoms = si_cell()
    calc = SLEMCalculator(str(models["si"]), kpts=(3, 3, 3))
    atoms.calc = calc
    assert calc.get_number_of_electrons() == 8.0  # gth-pbe: 4 valence electrons per Si
    w = calc.get_k_point_weights()
    nk = len(calc.get_ibz_k_points())
    assert nk == len(w) and abs(w.sum() - 1) < 1e-12 and len(calc.get_bz_k_points()) == 27
    assert calc.get_number_of_spins() == 1 and calc.get_number_of_bands() == 26
    occ = np.array([calc.get_occupation_numbers(k) for k in range(nk)])
    assert abs(np.sum(w[:, None] * occ) - 8.0) < 1e-6
    ef = calc.get_fermi_level()
    e0 = calc.get_eigenvalues(kpt=0, spin=0)
    assert e0.shape == (26,) and np.all(np.diff(e0) >= 0) and e0.min() < ef < e0.max()
    dos = DOS(calc, width=0.1, npts=801)
    assert abs(np.trapezoid(dos.get_dos(), dos.get_energies()) - 2 * 26) < 0.05  # spin-degenerate bands
    tetra = DOS(calc, width=0.0, npts=801)
    assert abs(np.trapezoid(tetra.get_dos(), tetra.get_energies()) - 2 * 26) < 0.5
    assert calc.prediction_count == 1
    calc.set(kpts={"size": (2, 2, 2), "gamma": True})
    assert len(calc.get_bz_k_points()) == 8 and calc.prediction_count == 1


def test_band_structure_along_the_seekpath_path(models):
    atoms = si_cell(0.0)
    calc = SLEMCalculator(str(models["si"]), kpts=(2, 2, 2))
    atoms.calc = calc
    bs = calc.band_structure(npoints=30)
    assert bs.energies.shape == (1, 30, 26)
    assert "G" in bs.path.special_points and np.isfinite(bs.reference)
    assert np.allclose(bs.energies[0], calc.get_band_energies(bs.path.kpts), atol=1e-10)


def test_molecule_levels_and_electron_count(models):
    water = molecule("H2O")
    calc = SLEMCalculator(str(models["water"]))
    water.calc = calc
    assert calc.get_number_of_electrons() == 10.0  # all electron
    e = calc.get_eigenvalues()
    assert e.shape == (7,) and len(calc.get_ibz_k_points()) == 1
    assert abs(calc.get_occupation_numbers().sum() - 10.0) < 1e-6
    assert e[4] < calc.get_fermi_level() < e[5] or np.isclose(e[4], e[5])


def test_chunked_prediction_equals_the_whole(models):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=1)
    whole = SLEMCalculator(str(models["si"]), dtype="float64")
    parts = SLEMCalculator(str(models["si"]), dtype="float64", max_edges=20)
    for get in ("get_hamiltonian", "get_overlap", "get_density_matrix"):
        a, b = getattr(whole, get)(atoms), getattr(parts, get)(atoms)
        assert a.nblocks == b.nblocks and a.max_abs_difference(b) < 1e-12


def test_exact_overlap_cut_at_the_bond_range_keeps_exactly_those_blocks(models):
    atoms = si_cell()
    full = SLEMCalculator(str(models["si"]), overlap="exact").get_overlap(atoms)
    calc = SLEMCalculator(str(models["si"]), overlap="exact", overlap_cutoff="r_bond")
    cut = calc.get_overlap(atoms)
    r_bond = calc.model.r_bond
    cell = atoms.cell.array
    kept = {}
    for i, j, R, blk in full.iter_blocks(both_triangles=False):
        d = np.linalg.norm(atoms.positions[j] + np.asarray(R) @ cell - atoms.positions[i])
        if d < r_bond:
            kept[(i, j, tuple(R))] = blk
    got = {(i, j, tuple(R)): blk for i, j, R, blk in cut.iter_blocks(both_triangles=False)}
    assert got.keys() == kept.keys() and 0 < len(got) < full.nblocks
    assert max(np.abs(got[key] - kept[key]).max() for key in got) == 0
    with pytest.raises(CalculatorInputError, match="overlap_cutoff"):
        SLEMCalculator(str(models["si"]), overlap="exact", overlap_cutoff=-1.0)


def test_exact_overlap_equals_pyscf(models):
    from ase_slem.io.pyscf import atoms_to_cell, atoms_to_mole

    atoms = si_cell()
    calc = SLEMCalculator(str(models["si"]), overlap="exact")
    S = calc.get_overlap(atoms)
    cell = atoms_to_cell(atoms, "gth-dzvp-molopt-sr")
    k = np.array([[0.0, 0.0, 0.0], [0.1, -0.2, 0.3], [0.5, 0.25, 0.0]])
    sk = np.asarray(cell.pbc_intor("int1e_ovlp", hermi=1, kpts=cell.get_abs_kpts(k)))
    conv = Basis.from_pyscf(cell).structure_converter(atoms.get_chemical_symbols(), "pyscf")
    assert np.abs(S.bloch(k) - np.einsum("ab,kbc,dc->kad", conv, sk, conv)).max() < 1e-8
    # the model's H is unchanged; the density integrates to Tr(D S) with the exact S
    assert calc.get_hamiltonian(atoms).max_abs_difference(predict(load_model(models["si"]), atoms)["hamiltonian"]) == 0
    water = molecule("H2O")
    S = SLEMCalculator(str(models["water"]), overlap="exact").get_overlap(water)
    mol = atoms_to_mole(water, "sto-3g")
    conv = Basis.from_pyscf(mol).structure_converter(water.get_chemical_symbols(), "pyscf")
    assert np.abs(S.bloch([0, 0, 0]).real - conv @ mol.intor("int1e_ovlp") @ conv.T).max() < 1e-12


def test_electron_density_integrates_to_tr_ds(models):
    atoms = si_cell()
    calc = SLEMCalculator(str(models["si"]), overlap="exact")
    rho, box = calc.get_electron_density(spacing=0.25, atoms=atoms)
    n = calc.get_density_matrix(atoms).trace_product(calc.get_overlap(atoms))
    assert abs(n) > 0.1
    assert abs(rho.mean() * abs(np.linalg.det(box)) - n) < 2e-3 * abs(n) + 1e-3


def test_energies_and_forces_are_not_predicted(models):
    atoms = si_cell()
    atoms.calc = SLEMCalculator(str(models["si"]))
    with pytest.raises(PropertyNotImplementedError, match="predicts the operators H, S and D.*not total energies"):
        atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError, match="forces"):
        atoms.get_forces()
    with pytest.raises(PropertyNotImplementedError, match="not total energies"):
        atoms.calc.get_property("energy", atoms)


def test_bad_input_is_named(models, tmp_path):
    si = str(models["si"])
    calc = SLEMCalculator(si)
    with pytest.raises(ModelFileError, match=r"knows Si only; the structure contains C\b"):
        calc.get_hamiltonian(bulk("SiC", "zincblende", a=4.36))
    with pytest.raises(CalculatorInputError, match="trained on crystals.*molecule"):
        calc.get_hamiltonian(Atoms("Si2", positions=[[0, 0, 0], [2.3, 0, 0]]))
    with pytest.raises(CalculatorInputError, match="trained on molecules.*periodic"):
        SLEMCalculator(str(models["water"])).get_hamiltonian(
            Atoms("OH2", positions=molecule("H2O").positions, cell=[6, 6, 6], pbc=True))
    close = si_cell(0.0)
    close.positions[1] = close.positions[0] + [0.3, 0, 0]
    with pytest.raises(CalculatorInputError, match=r"atoms 0 and 1 are 0.3 Å apart \(closer than 0.5 Å\)"):
        calc.get_hamiltonian(close)
    with pytest.raises(CalculatorInputError, match="empty"):
        calc.get_hamiltonian(Atoms(cell=np.eye(3) * 5, pbc=True))
    nan = si_cell()
    nan.positions[1, 2] = np.nan
    with pytest.raises(CalculatorInputError, match="atom 1 has a non-finite position"):
        calc.get_hamiltonian(nan)
    model = load_model(si)
    meta = dict(model.metadata, format_version=FORMAT_VERSION + 1)
    torch.jit.save(model.module, str(tmp_path / "new.pt"), _extra_files={METADATA_NAME: json.dumps(meta)})
    with pytest.raises(ModelFileError, match="newer ase_slem format.*upgrade ase_slem"):
        SLEMCalculator(str(tmp_path / "new.pt"))
    with pytest.raises(ModelFileError, match="no model file 'no_such_model'"):
        SLEMCalculator("no_such_model")
    if not torch.cuda.is_available():
        with pytest.raises(CalculatorInputError, match="CUDA is not available.*device='cpu'"):
            SLEMCalculator(si, device="cuda")
    with pytest.raises(CalculatorInputError, match="dtype must be 'float32' or 'float64'"):
        SLEMCalculator(si, dtype="float16")
    with pytest.raises(CalculatorInputError, match="no structure: attach the calculator"):
        calc.get_fermi_level()
    calc.get_hamiltonian(si_cell())
    with pytest.raises(CalculatorInputError, match="needs a k-point mesh: create the calculator with kpts="):
        calc.get_fermi_level()
    with pytest.raises(CalculatorInputError, match="kpts must be"):
        SLEMCalculator(si, kpts=(2.5, 2, 2))
    hs = SLEMCalculator(str(models["si_hs"]), kpts=(2, 2, 2))
    si_cell().calc = hs
    with pytest.raises(CalculatorInputError, match="number of electrons is unknown.*Pass n_electrons="):
        hs.get_fermi_level()
    with pytest.raises(CalculatorInputError, match="carries none"):
        SLEMCalculator(str(models["si_hs"]), overlap="exact")
