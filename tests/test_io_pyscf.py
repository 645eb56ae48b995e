"""PySCF extraction: molecular H/S/D, inverse Bloch transform, periodic KRKS operators (validation 7b)."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.units import Hartree

import pyscf  # noqa: F401  (the dft extra; a missing install fails here, not skips)

from ase_slem import band_energies  # noqa: E402
from ase_slem.basis import Basis  # noqa: E402
from ase_slem.io.pyscf import (  # noqa: E402
    PySCFInputError,
    atoms_to_cell,
    gamma_centred_mesh,
    kmesh_to_realspace,
    molecular_operators,
    operators_from_krks,
    periodic_operators,
    realspace_from_kmesh,
)
from ase_slem.solvers import generalized_eigh  # noqa: E402


# ---------------------------------------------------------------------------------------------
# molecules
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def water():
    atoms = molecule("H2O")
    atoms.rattle(0.02, seed=3)
    return molecular_operators(atoms, "pbe", "def2-svp", return_mf=True)


def test_molecular_eigenvalues_equal_pyscf_mo_energy(water):
    frame, mf = water
    H, S = frame.operators["hamiltonian"], frame.operators["overlap"]
    assert not H.periodic and H.norb == mf.mol.nao == 24
    assert np.all(H.R == 0)
    w = generalized_eigh(H.bloch(np.zeros(3)).real, S.bloch(np.zeros(3)).real, eigvals_only=True)
    np.testing.assert_allclose(w, mf.mo_energy * Hartree, rtol=0, atol=1e-6)


def test_molecular_hamiltonian_is_the_converged_fock_matrix(water):
    frame, mf = water
    conv = frame.basis.structure_converter(frame.atoms.get_chemical_symbols(), "pyscf")
    fock = conv @ mf.get_fock() @ conv.T * Hartree
    h = frame.operators["hamiltonian"].bloch(np.zeros(3)).real
    # equal up to the SCF convergence of the density (conv_tol 1e-11 Ha in energy)
    assert np.abs(h - fock).max() < 1e-3
    assert np.abs(h).max() > 10.0  # a real Fock matrix, not zeros


def test_molecular_density_matrix_counts_electrons(water):
    frame, mf = water
    D, S = frame.operators["density_matrix"], frame.operators["overlap"]
    assert D.trace_product(S) == pytest.approx(10.0, abs=1e-9)
    assert frame.results["nelectron"] == 10
    assert frame.results["energy"] == pytest.approx(mf.e_tot * Hartree)
    q = D.mulliken(S)
    per_atom = np.add.reduceat(q, D.offsets[:-1])
    assert per_atom[0] > 8.0  # oxygen pulls charge from the hydrogens
    assert frame.settings["xc"] == "pbe" and frame.settings["basis"] == "def2-svp"


def test_molecular_operators_from_a_pyscf_mole():
    from pyscf import gto

    mol = gto.M(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g", unit="Angstrom", verbose=0)
    frame = molecular_operators(mol, "pbe")
    assert frame.atoms.get_chemical_symbols() == ["H", "H"]
    np.testing.assert_allclose(frame.atoms.positions[1], [0, 0, 0.74], atol=1e-12)
    assert frame.operators["density_matrix"].trace_product(frame.operators["overlap"]) == pytest.approx(2.0)


def test_molecular_operators_rejects_open_shells_and_crystals():
    with pytest.raises(PySCFInputError, match="closed-shell"):
        from pyscf import gto

        molecular_operators(gto.M(atom="O 0 0 0; H 0 0 0.97", basis="sto-3g", spin=1, verbose=0))
    with pytest.raises(PySCFInputError, match="periodic structure"):
        molecular_operators(bulk("Si"))


# ---------------------------------------------------------------------------------------------
# inverse Bloch transform on a synthetic tight-binding model
# ---------------------------------------------------------------------------------------------
def _chain_atoms():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.9, 0.1, 0.0]], cell=[[2.0, 0, 0], [0, 6, 0], [0, 0, 6]], pbc=True)
    return atoms


@pytest.mark.parametrize("unwrap", [0, 2])
def test_realspace_from_kmesh_recovers_short_range_model_exactly(unwrap):
    """Exact for any operator whose range fits in half the BvK supercell, also for atoms lying
    ``unwrap`` cells outside the unit cell (blocks then sit at R shifted by -unwrap)."""
    from ase_slem.operators import RealSpaceOperator

    atoms = _chain_atoms()
    atoms.positions[1, 0] += unwrap * atoms.cell[0, 0]
    rng = np.random.default_rng(0)
    counts = [2, 2]
    # range well inside half of a 5-cell BvK supercell: the transform must be exact everywhere
    blocks, ii, jj, RR = [], [], [], []
    u = -unwrap
    for a, b, R in [(0, 0, (0, 0, 0)), (1, 1, (0, 0, 0)), (0, 1, (u, 0, 0)), (0, 1, (u - 1, 0, 0)), (0, 0, (1, 0, 0))]:
        m = rng.normal(size=(2, 2))
        blocks.append(m + m.T if (a == b and not any(R)) else m)
        ii.append(a), jj.append(b), RR.append(R)
    ref = RealSpaceOperator.from_blocks(counts, ii, jj, RR, blocks)
    kf = gamma_centred_mesh((5, 1, 1))
    got = realspace_from_kmesh(atoms, counts, kf[::-1], ref.bloch(kf[::-1]))
    assert got.max_abs_difference(ref) < 1e-12
    off = np.random.default_rng(1).random((4, 3))
    np.testing.assert_allclose(got.bloch(off), ref.bloch(off), atol=1e-12)


def test_realspace_from_kmesh_distance_cutoff():
    atoms = _chain_atoms()
    kf = gamma_centred_mesh((5, 1, 1))
    rng = np.random.default_rng(2)
    m = rng.normal(size=(5, 4, 4)) + 1j * rng.normal(size=(5, 4, 4))
    mats = m + np.conj(np.swapaxes(m, 1, 2))
    mats = 0.5 * (mats + np.conj(mats[[0, 4, 3, 2, 1]]))  # X(-k) = conj(X(k))
    full = realspace_from_kmesh(atoms, [2, 2], kf, mats)
    cut = realspace_from_kmesh(atoms, [2, 2], kf, mats, max_distance=2.1)
    pos, cell = atoms.positions, atoms.cell[:]
    dist = [np.linalg.norm(pos[b] + np.asarray(R) @ cell - pos[a]) for a, b, R, _ in cut.iter_blocks()]
    assert max(dist) <= 2.1 and cut.nblocks < full.nblocks
    for a, b, R, blk in cut.iter_blocks():
        np.testing.assert_allclose(blk, full.block(a, b, R))


def test_realspace_from_kmesh_splits_ties_evenly():
    from ase_slem.operators import RealSpaceOperator

    atoms = Atoms("H", positions=[[0, 0, 0]], cell=np.diag([2.0, 6, 6]), pbc=True)
    onsite = np.array([[1.0]])
    hop = np.array([[0.5]])
    # a 2-point mesh cannot tell R = +1 from R = -1: each gets half of their sum
    ref = RealSpaceOperator.from_blocks([1], [0, 0], [0, 0], [(0, 0, 0), (1, 0, 0)], [onsite, hop])
    kf = gamma_centred_mesh((2, 1, 1))
    got = realspace_from_kmesh(atoms, [1], kf, ref.bloch(kf))
    assert got.block(0, 0, (1, 0, 0))[0, 0] == pytest.approx(0.5)  # 0.5 (R=+1) + 0.5 (R=-1), halved
    assert got.block(0, 0, (-1, 0, 0))[0, 0] == pytest.approx(0.5)
    np.testing.assert_allclose(got.bloch(kf), ref.bloch(kf), atol=1e-14)


def test_realspace_from_kmesh_errors():
    atoms = _chain_atoms()
    kf = gamma_centred_mesh((3, 1, 1))
    mats = np.tile(np.eye(4), (3, 1, 1)).astype(complex)
    with pytest.raises(PySCFInputError, match="Gamma-centred"):
        realspace_from_kmesh(atoms, [2, 2], kf + 0.1, mats)
    with pytest.raises(PySCFInputError, match="full Gamma-centred"):
        realspace_from_kmesh(atoms, [2, 2], kf[:2], mats[:2], kmesh=(3, 1, 1))
    with pytest.raises(PySCFInputError, match="expected"):
        realspace_from_kmesh(atoms, [2, 2], kf, mats[:, :3, :3])
    bad = mats.copy()
    bad[1, 0, 1] = 1j  # X(-k) != conj(X(k))
    with pytest.raises(PySCFInputError, match="imaginary part"):
        realspace_from_kmesh(atoms, [2, 2], kf, bad)


# ---------------------------------------------------------------------------------------------
# crystals (validation 7b): minimal basis, small mesh, low cutoff -> seconds
# ---------------------------------------------------------------------------------------------
SI_FAST = dict(xc="pbe", basis="gth-szv", pseudo="gth-pade", kmesh=(2, 2, 2), density_fit=False, ke_cutoff=25)


@pytest.fixture(scope="module")
def silicon():
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.03, seed=1)
    frame, mf = periodic_operators(atoms, return_mf=True, **SI_FAST)
    return atoms, frame, mf


def test_periodic_operators_reproduce_pyscf_eigenvalues_on_the_mesh(silicon):
    atoms, frame, mf = silicon
    H, S = frame.operators["hamiltonian"], frame.operators["overlap"]
    assert H.norb == 8 and H.basis == Basis({"Si": "1s1p"})
    kf = mf.cell.get_scaled_kpts(mf.kpts)
    e = band_energies(H, S, kf)
    np.testing.assert_allclose(e, np.asarray(mf.mo_energy) * Hartree, rtol=0, atol=1e-6)
    assert frame.results["converged"]
    assert frame.results["gap"] > 0.3
    # an insulator: band 4 stays below band 5 at every mesh point, by the global gap
    nb = frame.results["nelectron"] // 2
    assert frame.results["band_overlap"] == pytest.approx(e[:, nb - 1].max() - e[:, nb].min(), abs=1e-9)
    assert frame.results["band_overlap"] == pytest.approx(-frame.results["gap"], abs=1e-9)


def test_periodic_density_matrix_counts_electrons_on_the_mesh(silicon):
    atoms, frame, mf = silicon
    D, S = frame.operators["density_matrix"], frame.operators["overlap"]
    kf = mf.cell.get_scaled_kpts(mf.kpts)
    ne = np.einsum("kab,kba->", D.bloch(kf), S.bloch(kf)).real / len(kf)
    assert ne == pytest.approx(8.0, abs=1e-9)


def test_kmesh_to_realspace_of_pyscf_overlap_has_our_R_sign(silicon):
    """S(0, 1, R) from the transform equals <phi_0(r - tau_0)|phi_1(r - tau_1 - R)> computed directly."""
    from pyscf import gto

    atoms, frame, mf = silicon
    cell = mf.cell
    kd = cell.make_kpts((4, 4, 4))
    S = kmesh_to_realspace(cell, kd, cell.pbc_intor("int1e_ovlp", hermi=1, kpts=kd))
    bas = Basis.from_pyscf(cell)
    c1 = bas.converter("Si", "pyscf")
    lat = cell.lattice_vectors()
    nearest = [R for R in [(0, 0, 0), (-1, 0, 0), (0, -1, 0), (0, 0, -1)]]
    for R in nearest:
        shifted = cell.set_geom_(cell.atom_coords() + np.asarray(R) @ lat, unit="Bohr", inplace=False)
        direct = gto.intor_cross("int1e_ovlp", cell, shifted)[:4, 4:]  # atom 0 home, atom 1 shifted
        direct = c1 @ direct @ c1.T
        assert np.abs(direct).max() > 0.05  # a nearest-neighbour pair
        np.testing.assert_allclose(S.block(0, 1, R), direct, atol=2e-5)
        # the opposite shift is a distant pair: the test tells R from -R
        assert np.abs(S.block(0, 1, tuple(-x for x in R)) - direct).max() > 0.05 or R == (0, 0, 0)


def test_dense_mesh_fock_matches_get_bands(silicon):
    atoms, frame, mf = silicon
    full = operators_from_krks(mf, atoms, dense_kmesh=(3, 3, 3), time_reversal=False)
    H, S = full.operators["hamiltonian"], full.operators["overlap"]
    kf = gamma_centred_mesh((3, 3, 3))
    ref = np.asarray(mf.get_bands(mf.cell.get_abs_kpts(kf))[0]) * Hartree
    np.testing.assert_allclose(band_energies(H, S, kf), ref, rtol=0, atol=1e-6)
    D = full.operators["density_matrix"]
    ne = np.einsum("kab,kba->", D.bloch(kf), S.bloch(kf)).real / len(kf)
    assert ne == pytest.approx(8.0, abs=1e-9)
    assert full.settings["dense_kmesh"] == [3, 3, 3] and full.settings["kmesh"] == [2, 2, 2]
    # time-reversal halving: PySCF's F(-k) = conj(F(k)) to ~1e-9 Ha at this cutoff (its GTH
    # pseudopotential on the FFT grid breaks it at 5e-8 Ha for ke_cutoff = 20 Ha)
    half = operators_from_krks(mf, atoms, dense_kmesh=(3, 3, 3), time_reversal=True)
    assert half.operators["hamiltonian"].max_abs_difference(H) < 1e-6
    e_half = band_energies(half.operators["hamiltonian"], half.operators["overlap"], kf)
    np.testing.assert_allclose(e_half, ref, rtol=0, atol=1e-6)


def test_smeared_scf_density_is_pyscfs():
    """With Fermi-Dirac smearing the operators are rebuilt on the SCF mesh (so that D(-k) =
    conj(D(k)) holds exactly): their D holds fractional occupations, the same electrons, the band
    energy of PySCF's own occupations, and PySCF's occupations are Fermi functions at the
    chemical potential reported."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.03, seed=1)
    frame, mf = periodic_operators(atoms, return_mf=True, smearing=0.4, **SI_FAST)
    occ, e = np.concatenate(mf.mo_occ), np.concatenate(mf.mo_energy)
    assert np.any((occ > 1e-4) & (occ < 2 - 1e-4))                 # the smearing is felt
    assert frame.settings["dense_kmesh"] == [2, 2, 2] and frame.settings["smearing"] == 0.4
    kf = gamma_centred_mesh((2, 2, 2))
    D, S, H = (frame.operators[n] for n in ("density_matrix", "overlap", "hamiltonian"))
    ne = np.einsum("kab,kba->", D.bloch(kf), S.bloch(kf)).real / len(kf)
    assert ne == pytest.approx(8.0, abs=1e-8)
    band_energy = np.einsum("kab,kba->", D.bloch(kf), H.bloch(kf)).real / len(kf)
    assert band_energy == pytest.approx(float(occ @ e) * Hartree / len(kf), abs=1e-5)
    mu = frame.results["fermi_level"] / Hartree
    np.testing.assert_allclose(occ, 2.0 / (1.0 + np.exp((e - mu) / (0.4 / Hartree))), atol=1e-6)
    # without smearing the density rebuilt from the same SCF is the integer (aufbau) one
    plain = operators_from_krks(mf, atoms, dense_kmesh=(2, 2, 2))
    assert plain.operators["density_matrix"].max_abs_difference(D) > 1e-4


def test_periodic_operators_needs_a_crystal():
    with pytest.raises(PySCFInputError, match="periodic"):
        periodic_operators(molecule("H2O"), **SI_FAST)


@pytest.mark.slow
def test_kpoint_symmetry_scf_gives_the_same_operators():
    """SCF on the irreducible wedge (diamond point group + time reversal) unfolds to the full mesh."""
    atoms = bulk("Si", "diamond", a=5.43)
    sym, mf_sym = periodic_operators(atoms, kpoint_symmetry=True, return_mf=True, **SI_FAST)
    assert mf_sym.kpts.nkpts_ibz < mf_sym.kpts.nkpts == 8 and sym.settings["kpoint_symmetry"]
    plain = periodic_operators(atoms, **SI_FAST)
    # S is exact either way; H and D agree to the SCF convergence (conv_tol 1e-9 Ha)
    tolerance = {"overlap": 1e-10, "hamiltonian": 2e-3, "density_matrix": 1e-4}
    for name, tol in tolerance.items():
        assert sym.operators[name].max_abs_difference(plain.operators[name]) < tol, name
    kf = gamma_centred_mesh((2, 2, 2))
    e = band_energies(sym.operators["hamiltonian"], sym.operators["overlap"], kf)
    np.testing.assert_allclose(e, band_energies(plain.operators["hamiltonian"], plain.operators["overlap"], kf), atol=2e-3)
    # the dense-mesh Fock from the irreducible density equals get_bands
    dense_sym = operators_from_krks(mf_sym, atoms, dense_kmesh=(3, 3, 3))
    kf = gamma_centred_mesh((3, 3, 3))[:4]
    ref = np.asarray(mf_sym.get_bands(mf_sym.cell.get_abs_kpts(kf))[0]) * Hartree
    e = band_energies(dense_sym.operators["hamiltonian"], dense_sym.operators["overlap"], kf)
    np.testing.assert_allclose(e, ref, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_time_reversal_scf_of_a_rattled_cell_gives_the_same_operators():
    """A rattled cell has no space group but keeps k -> -k: the SCF on one of each pair (14 of 27
    points of a 3x3x3 mesh; all 8 of a 2x2x2 mesh are their own partners) with smearing gives the
    full-mesh operators; a bad mode is named.  PySCF's multigrid J and Vxc give the same bands."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=3)
    mesh3 = {**SI_FAST, "kmesh": (3, 3, 3)}
    half, mf = periodic_operators(atoms, kpoint_symmetry="time_reversal", smearing=0.4, return_mf=True, **mesh3)
    assert mf.kpts.nkpts_ibz == 14 and mf.kpts.nkpts == 27 and half.settings["kpoint_symmetry"] == "time_reversal"
    assert half.settings["fft_mesh"] == [int(x) for x in atoms_to_cell(atoms, "gth-szv", "gth-pade", ke_cutoff=25).mesh]
    full = periodic_operators(atoms, smearing=0.4, **mesh3)
    assert full.settings["kpoint_symmetry"] is False
    tolerance = {"overlap": 1e-10, "hamiltonian": 1e-4, "density_matrix": 1e-6}
    for name, tol in tolerance.items():
        assert half.operators[name].max_abs_difference(full.operators[name]) < tol, name
    with pytest.raises(PySCFInputError, match="kpoint_symmetry must be"):
        periodic_operators(atoms, kpoint_symmetry="inversion", **SI_FAST)
    # multigrid J and Vxc: other numerics, the same bands to a fraction of a meV
    grid = periodic_operators(atoms, kpoint_symmetry="time_reversal", smearing=0.4, multigrid=True, **mesh3)
    assert grid.settings["xc_integration"] == "multigrid" and full.settings["xc_integration"] == "uniform_grid"
    kf = np.random.default_rng(0).random((6, 3))
    e_grid = band_energies(grid.operators["hamiltonian"], grid.operators["overlap"], kf)
    e_full = band_energies(full.operators["hamiltonian"], full.operators["overlap"], kf)
    assert 0 < np.abs(e_grid - e_full).max() < 1e-3
    with pytest.raises(PySCFInputError, match="multigrid integrates on FFT grids"):
        periodic_operators(atoms, multigrid=True, **{**SI_FAST, "density_fit": True})


def test_pyscf_frame_round_trips_through_the_dataset(tmp_path, silicon):
    from ase_slem.io import dataset, read_operators

    atoms, frame, mf = silicon
    path = dataset.write_frame(tmp_path / "si", frame)
    back = dataset.read_frame(path)
    assert back.settings["basis"] == "gth-szv" and back.settings["kmesh"] == [2, 2, 2]
    assert back.results["nelectron"] == 8 and back.basis == frame.basis
    _, ops = read_operators(path)
    for name, op in frame.operators.items():
        assert ops[name].max_abs_difference(op) < 1e-12


def test_shifted_scf_mesh_needs_and_feeds_a_dense_mesh():
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.03, seed=2)
    with pytest.raises(PySCFInputError, match="shifted off Gamma.*dense_kmesh"):
        periodic_operators(atoms, mesh_shift=True, **SI_FAST)


def test_shifted_scf_mesh_dense_operators_match_get_bands():
    from ase_slem.io.pyscf import run_krks

    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.03, seed=2)
    kw = {k: v for k, v in SI_FAST.items() if k not in ("xc", "basis", "pseudo", "kmesh")}
    mf = run_krks(atoms, "pbe", "gth-szv", "gth-pade", (2, 2, 2), mesh_shift=True, **kw)
    assert np.allclose(mf.cell.get_scaled_kpts(mf.kpts)[0], 0.25)
    frame = operators_from_krks(mf, atoms, dense_kmesh=(3, 3, 3))
    assert frame.settings["kmesh_shifted"] and frame.settings["kmesh"] == [2, 2, 2]
    kf = gamma_centred_mesh((3, 3, 3))[:4]
    ref = np.asarray(mf.get_bands(mf.cell.get_abs_kpts(kf))[0]) * Hartree
    e = band_energies(frame.operators["hamiltonian"], frame.operators["overlap"], kf)
    np.testing.assert_allclose(e, ref, rtol=0, atol=1e-6)
