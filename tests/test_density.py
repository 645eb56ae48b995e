"""Real-space orbitals and densities: against PySCF (molecule, periodic Bloch orbitals), against
SIESTA's own grid density, internal identities (bands vs D, supercell vs primitive), cube files,
radial-basis metadata, plane slices and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, make_supercell, molecule
from ase.units import Bohr

from ase_slem.basis import Basis, real_spherical_harmonics, textbook_to_e3nn
from ase_slem.density import (
    DensityError,
    density_at_points,
    density_on_plane,
    electron_density,
    orbital_density,
    read_cube,
    supercell_operator,
    write_cube,
)
from ase_slem.io.radial import RadialBasis, RadialFunction
from ase_slem.operators import RealSpaceOperator
from ase_slem.orbitals import (
    GaussianRadial,
    RadialBasisError,
    evaluate_orbitals,
    radial_basis_from_dict,
    radial_basis_from_pyscf,
    radial_basis_to_dict,
    real_harmonics,
    truncated_radial_basis,
)

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
SIESTA_RUN = EXTERNAL / "siesta-si-deeph" / "siesta_data"
needs_siesta = pytest.mark.skipif(
    not SIESTA_RUN.is_dir(), reason=f"external DFT data folder {SIESTA_RUN} is absent"
)


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def water():
    """(atoms, frame, mf): PySCF RKS PBE/def2-SVP water, operators in our convention."""
    from ase_slem.io.pyscf import molecular_operators

    atoms = molecule("H2O")
    frame, mf = molecular_operators(atoms, xc="pbe", basis="def2-svp", conv_tol=1e-10, return_mf=True)
    return atoms, frame, mf


@pytest.fixture(scope="module")
def siesta_si():
    """(atoms, operators, radial basis) of the SIESTA DZP silicon run."""
    if not SIESTA_RUN.is_dir():
        pytest.skip(f"external DFT data folder {SIESTA_RUN} is absent")
    from ase_slem.io import siesta

    atoms, ops = siesta.read(SIESTA_RUN)
    return atoms, ops, siesta.read_radial_basis(SIESTA_RUN)


# ---------------------------------------------------------------------------------------------
# orbitals
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("l", range(5))
def test_real_harmonics_are_the_basis_harmonics(l, rng):
    u = rng.normal(size=(50, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    ref = real_spherical_harmonics(l, u) @ textbook_to_e3nn(l).T
    np.testing.assert_allclose(real_harmonics(l, u), ref, atol=1e-13)


def test_gaussian_orbitals_match_pyscf_per_ao(water, rng):
    atoms, frame, mf = water
    mol = mf.mol
    radial = radial_basis_from_pyscf(mol, tolerance=1e-15)
    for shells in radial.functions.values():
        for s in shells:
            assert s.norm() == pytest.approx(1.0, abs=1e-12)
    pts = rng.normal(size=(400, 3)) * 1.5
    pts[0] = atoms.positions[0]  # exactly on the oxygen nucleus (r = 0)
    ours = evaluate_orbitals(atoms, radial, pts, chunk=97)
    ref = mol.eval_gto("GTOval_sph", pts / Bohr) / Bohr**1.5  # bohr^-3/2 -> Å^-3/2
    conv = Basis.from_pyscf(mol).structure_converter(atoms.get_chemical_symbols(), "pyscf")
    # PySCF screens primitives below ~1e-9 of the peak; otherwise equal to rounding
    np.testing.assert_allclose(ours, ref @ conv.T, atol=1e-9 * np.abs(ref).max())
    # the default cutoff (1e-8 of each shell's peak) changes values by at most ~1e-8 of the peak
    cut = evaluate_orbitals(atoms, radial_basis_from_pyscf(mol), pts)
    assert np.abs(cut - ours).max() <= 2e-8 * np.abs(ref).max()


def test_periodic_bloch_orbitals_match_pyscf(rng):
    from ase_slem.io.pyscf import atoms_to_cell

    atoms = bulk("Si", "diamond", a=5.43)
    cell = atoms_to_cell(atoms, basis="gth-szv")
    radial = radial_basis_from_pyscf(cell)
    conv = Basis.from_pyscf(cell).structure_converter(atoms.get_chemical_symbols(), "pyscf")
    pts = rng.uniform(-3.0, 8.0, size=(300, 3))  # many outside the home cell
    for k in [np.zeros(3), np.array([0.25, -0.125, 0.5])]:
        ref = cell.pbc_eval_gto("GTOval_sph", pts / Bohr, kpts=cell.get_abs_kpts(k)) / Bohr**1.5
        ours = evaluate_orbitals(atoms, radial, pts, kpt=k, chunk=64)
        assert np.iscomplexobj(ours) == bool(k.any())
        # both sides cut lattice sums at ~1e-8 of the orbitals' peaks (PySCF: cell.rcut)
        np.testing.assert_allclose(ours, ref @ conv.T, atol=1e-6 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# molecule
# ---------------------------------------------------------------------------------------------
def test_molecular_density_matches_pyscf_eval_rho(water):
    from pyscf.dft import numint

    atoms, frame, mf = water
    D, S = frame.operators["density_matrix"], frame.operators["overlap"]
    radial = radial_basis_from_pyscf(mf.mol)
    grid = electron_density(D, atoms, radial, spacing=0.15, padding=3.0, tolerance=None)
    rho, box = grid  # the public API's two-tuple
    assert rho.shape == tuple(int(np.ceil(x)) for x in np.diag(box) / 0.15 - 1e-9)
    assert np.allclose(box, np.diag(np.diag(box)))  # orthogonal padded box
    pos = atoms.get_positions()
    assert np.all(grid.origin <= pos.min(0) - 3.0 + 1e-9) and np.all(grid.origin + np.diag(box) >= pos.max(0) + 3.0 - 0.15)
    pts = grid.points().reshape(-1, 3)
    ao = mf.mol.eval_gto("GTOval_sph", pts / Bohr)
    ref = numint.eval_rho(mf.mol, ao, mf.make_rdm1()) / Bohr**3  # e/bohr^3 -> e/Å^3
    diff = np.abs(rho.ravel() - ref)
    print(f"water rho vs PySCF eval_rho: max |diff| {diff.max() * Bohr**3:.2e} e/bohr^3 "
          f"({diff.max() / ref.max():.1e} of the peak {ref.max() * Bohr**3:.1f} e/bohr^3)")
    assert diff.max() <= 1e-8 * ref.max()
    assert diff.max() * Bohr**3 <= 2e-8
    # with orbitals cut at 1e-10 of their peaks instead of 1e-8: equal to 1e-8 e/bohr^3 everywhere
    tight = electron_density(D, atoms, radial_basis_from_pyscf(mf.mol, tolerance=1e-10), spacing=0.15,
                             tolerance=None)
    tight_diff = np.abs(tight.rho.ravel() - ref).max() * Bohr**3
    print(f"  with 1e-10 cutoffs: max |diff| {tight_diff:.2e} e/bohr^3")
    assert tight_diff <= 1e-8
    n_e = rho.mean() * abs(np.linalg.det(box))
    print(f"water: N_e on the grid {n_e:.5f}, Tr(DS) {D.trace_product(S):.10f}")
    assert grid.integral == pytest.approx(n_e)
    assert n_e == pytest.approx(D.trace_product(S), rel=5e-3)
    assert D.trace_product(S) == pytest.approx(10.0, abs=1e-8)
    # the default tolerance (orbitals cut at 1e-6 of their peaks) moves rho by ~1e-7 of its peak
    fast = electron_density(D, atoms, radial, spacing=0.15)
    assert np.abs(fast.rho - rho).max() <= 1e-6 * rho.max()


def test_molecule_in_a_periodic_box_matches_the_molecule(water):
    import pickle

    atoms, frame, mf = water
    D = frame.operators["density_matrix"]
    radial = radial_basis_from_pyscf(mf.mol)
    boxed = atoms.copy()
    boxed.cell = np.diag([13.2, 13.2, 12.0])
    boxed.center()
    boxed.pbc = True
    periodic = electron_density(D, boxed, radial, spacing=0.3, tolerance=None)
    assert periodic.periodic and periodic.rho.shape == (44, 44, 40)
    # the free molecule at the same points (its box and origin differ from the cell grid)
    free = boxed.copy()
    free.pbc = False
    pts = periodic.points().reshape(-1, 3)
    alone = density_at_points(D, free, radial, pts, tolerance=None, chunk=3000)
    # images of the molecule 12 Å away touch it only through 1e-8 tails
    np.testing.assert_allclose(periodic.rho.ravel(), alone, atol=1e-8 * alone.max())
    # and the same for the crystal at points outside its home cell
    far = pts[::97] + boxed.cell.array[0] * 2 - boxed.cell.array[2]
    np.testing.assert_allclose(density_at_points(D, boxed, radial, far, tolerance=None),
                               periodic.rho.ravel()[::97], atol=1e-12 * alone.max())
    again = pickle.loads(pickle.dumps(periodic))
    assert again.periodic and np.array_equal(again.rho, periodic.rho) and np.array_equal(again.origin, periodic.origin)


def test_band_densities_add_up_to_the_density_matrix_density(water):
    atoms, frame, mf = water
    D = frame.operators["density_matrix"]
    radial = radial_basis_from_pyscf(mf.mol)
    conv = Basis.from_pyscf(mf.mol).structure_converter(atoms.get_chemical_symbols(), "pyscf")
    occ = mf.mo_occ > 0
    c_ours = conv @ mf.mo_coeff[:, occ]
    kw = dict(spacing=0.3, padding=2.0)
    bands = orbital_density(c_ours, atoms, radial, **kw)
    total = electron_density(D, atoms, radial, **kw)
    np.testing.assert_allclose(2 * bands.rho, total.rho, atol=1e-10 * total.rho.max())
    one = orbital_density(c_ours[:, -1], atoms, radial, spacing=0.15, padding=4.0)  # the HOMO
    assert one.integral == pytest.approx(1.0, abs=2e-3)


# ---------------------------------------------------------------------------------------------
# periodic: SIESTA silicon
# ---------------------------------------------------------------------------------------------
@needs_siesta
def test_siesta_density_matches_siesta_rho(siesta_si):
    from ase_slem.io.siesta import read_rho

    atoms, ops, radial = siesta_si
    D, S = ops["density_matrix"], ops["overlap"]
    ref, cell = read_rho(SIESTA_RUN / "Si.RHO")
    np.testing.assert_allclose(cell, atoms.cell.array, atol=1e-6)
    grid = electron_density(D, atoms, radial, shape=ref.shape[1:])  # SIESTA's own 36^3 mesh
    assert grid.periodic and np.allclose(grid.box, atoms.cell.array) and not grid.origin.any()
    diff = grid.rho - ref[0]
    l1 = np.abs(diff).sum() / np.abs(ref[0]).sum()
    l2 = np.linalg.norm(diff) / np.linalg.norm(ref[0])
    print(f"SIESTA Si: relative L1 {l1:.2e}, L2 {l2:.2e}, max |diff| {np.abs(diff).max():.2e} e/Å^3 "
          f"(peak {ref.max():.3f}); N_e {grid.integral:.6f}, Tr(DS) {D.trace_product(S):.6f}")
    assert l1 < 1e-4 and l2 < 1e-4
    assert grid.integral == pytest.approx(8.0, rel=5e-3)
    coarse = electron_density(D, atoms, radial, spacing=0.15)
    assert coarse.rho.shape == (26, 26, 26)  # |a_i| = 3.84 Å
    assert coarse.integral == pytest.approx(D.trace_product(S), rel=5e-3)


@needs_siesta
def test_supercell_density_equals_primitive_density(siesta_si):
    atoms, ops, radial = siesta_si
    D, S = ops["density_matrix"], ops["overlap"]
    cubic = make_supercell(atoms, [[-1, 1, 1], [1, -1, 1], [1, 1, -1]])  # conventional 8-atom cell
    Dc, Sc = supercell_operator(D, atoms, cubic), supercell_operator(S, atoms, cubic)
    assert Dc.trace_product(Sc) == pytest.approx(32.0, abs=1e-8)
    prim = electron_density(D, atoms, radial, shape=(18, 18, 18)).rho
    cube = electron_density(Dc, cubic, radial, shape=(36, 36, 36)).rho
    # primitive point (i, j, k) sits at a/36 * (j + k, i + k, i + j) in the cubic cell
    i, j, k = np.meshgrid(*(np.arange(18),) * 3, indexing="ij")
    np.testing.assert_allclose(cube[(j + k) % 36, (i + k) % 36, (i + j) % 36], prim, atol=1e-10)


@needs_siesta
def test_periodic_band_density(siesta_si, rng):
    from ase_slem.solvers import solve_k

    atoms, ops, radial = siesta_si
    H, S = ops["hamiltonian"], ops["overlap"]
    k = np.array([0.25, 0.0, 0.5])
    w, v = solve_k(H, S, k, eigvals_only=False)
    c = v[:, 3]  # top valence band
    grid = orbital_density(c, atoms, radial, kpt=k, spacing=0.15)
    assert grid.integral == pytest.approx(1.0, abs=2e-3)  # c^H S(k) c = 1 -> one electron per cell
    pts = grid.points().reshape(-1, 3)
    sel = rng.choice(len(pts), 300, replace=False)
    psi = evaluate_orbitals(atoms, radial, pts[sel], kpt=k) @ c
    np.testing.assert_allclose(grid.rho.ravel()[sel], np.abs(psi) ** 2, atol=1e-12 * grid.rho.max())
    # the Bloch phase matters: the same coefficients at -k give another function unless real
    other = orbital_density(c, atoms, radial, kpt=-k, spacing=0.3)
    same = orbital_density(c, atoms, radial, kpt=k, spacing=0.3)
    assert np.abs(other.rho - same.rho).max() > 1e-3 * same.rho.max()


# ---------------------------------------------------------------------------------------------
# radial basis metadata
# ---------------------------------------------------------------------------------------------
def test_radial_basis_dict_round_trip_through_json(water, siesta_si, rng):
    _, _, mf = water
    gauss = radial_basis_from_pyscf(mf.mol)
    _, _, table = siesta_si
    mixed = RadialBasis({**gauss.functions, "Si": table.functions["Si"]}, source="mixed")
    back = radial_basis_from_dict(json.loads(json.dumps(radial_basis_to_dict(mixed))))
    assert back.elements == mixed.elements and back.source == "mixed"
    r = rng.uniform(0, 4, size=200)
    for el in mixed.elements:
        assert back.shells(el) == mixed.shells(el)
        for a, b in zip(mixed.functions[el], back.functions[el]):
            assert type(a) is type(b) and a.cutoff == b.cutoff
            np.testing.assert_array_equal(a(r), b(r))
    with pytest.raises(RadialBasisError, match="not a radial basis description"):
        radial_basis_from_dict({"elements": {}})
    bad = radial_basis_to_dict(gauss)
    bad["elements"]["O"][0]["kind"] = "slater"
    with pytest.raises(RadialBasisError, match="unknown radial shell kind 'slater'"):
        radial_basis_from_dict(bad)
    bad = radial_basis_to_dict(gauss)
    del bad["elements"]["H"][1]["exponents"]
    with pytest.raises(RadialBasisError, match="element H shell 1: malformed"):
        radial_basis_from_dict(bad)


def test_truncation_shrinks_cutoffs_and_changes_little(water):
    atoms, frame, mf = water
    full = radial_basis_from_pyscf(mf.mol)
    short = truncated_radial_basis(full, 1e-5)
    for a, b in zip(full.functions["O"], short.functions["O"]):
        assert b.cutoff < a.cutoff
    D = frame.operators["density_matrix"]
    kw = dict(spacing=0.25, padding=2.5, tolerance=None)
    r_full, r_short = electron_density(D, atoms, full, **kw).rho, electron_density(D, atoms, short, **kw).rho
    assert np.abs(r_full - r_short).max() < 1e-4 * r_full.max()
    with pytest.raises(RadialBasisError, match=r"tolerance must lie in \(0, 1\)"):
        truncated_radial_basis(full, 0.0)


# ---------------------------------------------------------------------------------------------
# cube files and planes
# ---------------------------------------------------------------------------------------------
def test_cube_round_trip(tmp_path, water):
    import ase.io
    from ase.io.cube import read_cube as ase_read_cube

    atoms, frame, mf = water
    grid = electron_density(frame.operators["density_matrix"], atoms, radial_basis_from_pyscf(mf.mol),
                            spacing=0.3, padding=2.0)
    path = write_cube(tmp_path / "rho.cube", atoms, grid.rho, grid.box, grid.origin)
    assert [p.name for p in tmp_path.iterdir()] == ["rho.cube"]  # no temporary file left behind
    back = ase.io.read(path, format="cube")
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-5)
    assert back.get_chemical_symbols() == atoms.get_chemical_symbols()
    with open(path) as fh:
        raw = ase_read_cube(fh)
    np.testing.assert_allclose(raw["data"], grid.rho * Bohr**3, rtol=1e-5, atol=1e-12)  # e/bohr^3 in the file
    np.testing.assert_allclose(raw["origin"], grid.origin, atol=1e-5)
    _, again = read_cube(path)
    np.testing.assert_allclose(again.rho, grid.rho, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(again.box, grid.box, atol=1e-5)
    assert again.integral == pytest.approx(grid.integral, rel=1e-5)
    write_cube(path, atoms, grid)  # overwrite, DensityGrid supplies box and origin
    assert [p.name for p in tmp_path.iterdir()] == ["rho.cube"]


def test_plane_slice_hits_grid_values():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    rng = np.random.default_rng(3)
    rho = rng.random((10, 10, 14))
    box = atoms.cell.array
    c_step = box[2, 2] / 14
    sl = density_on_plane(rho, box, "(001)", offset=3 * c_step, origin=np.zeros(3), periodic=True,
                          resolution=box[0, 0] / 10, extent=box[0, 0] * 0.8)
    # u runs along a, v along b (or -b), both through grid points; the plane is z = 3 grid steps
    p = sl.point(sl.u[0], sl.v[0])
    ijk = np.round(np.linalg.solve(box.T, p) * np.array(rho.shape)).astype(int) % np.array(rho.shape)
    assert ijk[2] == 3
    assert sl.values[0, 0] == pytest.approx(rho[tuple(ijk)])
    for a in range(len(sl.u)):
        for b in range(len(sl.v)):
            f = np.linalg.solve(box.T, sl.point(sl.u[a], sl.v[b])) * np.array(rho.shape)
            assert np.allclose(f, np.round(f), atol=1e-9)
            assert sl.values[a, b] == pytest.approx(rho[tuple(np.round(f).astype(int) % np.array(rho.shape))])
    assert sl.values.shape == (9, 9)
    with pytest.raises(DensityError, match="Miller indices, not all zero"):
        density_on_plane(rho, box, "(000)")


def test_plot_density_slice_draws(siesta_si):
    import matplotlib

    matplotlib.use("Agg")
    from ase_slem.density_plot import plot_density_slice

    atoms, ops, radial = siesta_si
    grid = electron_density(ops["density_matrix"], atoms, radial, spacing=0.3)
    ax = plot_density_slice(grid, plane="(110)", atoms=atoms, resolution=0.1)
    assert ax.collections and "plane (110)" in ax.get_title()
    assert any(t.get_text() == "Si" for t in ax.texts)  # Si atoms lie in the (110) plane through 0
    ax2 = plot_density_slice(grid.rho, grid.box, normal=(0, 0, 1), offset=1.0, log=True)
    assert ax2.collections


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_input_is_named(water):
    atoms, frame, mf = water
    D = frame.operators["density_matrix"]
    radial = radial_basis_from_pyscf(mf.mol)
    with pytest.raises(DensityError, match="density matrix has 3 atoms but the structure has 4"):
        electron_density(D, molecule("NH3"), radial)
    other = atoms.copy()
    other.symbols[1] = "F"
    with pytest.raises(DensityError, match="does not match the structure"):
        electron_density(D, other, radial)
    only_h = RadialBasis({"H": radial.functions["H"]})
    with pytest.raises(RadialBasisError, match="no functions for element.*O"):
        electron_density(D, atoms, only_h)
    wrong = RadialBasis({"O": radial.functions["O"][:-1], "H": radial.functions["H"]})
    with pytest.raises(RadialBasisError, match=r"shells l=\[0, 0, 0, 1, 1, 2\] but the radial basis"):
        electron_density(D, atoms, wrong)
    D_nobasis = RealSpaceOperator.from_dense(D.orbital_counts, D.to_sparse().toarray(), periodic=False)
    with pytest.raises(RadialBasisError, match="atom 0 .O. has 14 orbitals in the operator but 9"):
        electron_density(D_nobasis, atoms, wrong)
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(DensityError, match="spacing must be a positive grid spacing"):
            electron_density(D, atoms, radial, spacing=bad)
    with pytest.raises(DensityError, match="shape must be three positive point counts"):
        electron_density(D, atoms, radial, shape=(4, 0, 4))
    with pytest.raises(DensityError, match="D must be a RealSpaceOperator"):
        electron_density(np.eye(24), atoms, radial)
    periodic_D = RealSpaceOperator.from_blocks(D.orbital_counts, [0], [0], [(1, 0, 0)], [np.eye(14)])
    with pytest.raises(DensityError, match="blocks between cell images .* no periodic"):
        electron_density(periodic_D, atoms, radial)
    with pytest.raises(DensityError, match="coefficients have 5 rows but the structure has 24"):
        orbital_density(np.ones(5), atoms, radial)
    with pytest.raises(DensityError, match="only k = Gamma"):
        orbital_density(np.ones(24), atoms, radial, kpt=(0.5, 0, 0))
    slab = atoms.copy()
    slab.pbc = True  # no cell
    with pytest.raises(DensityError, match="full-rank cell"):
        electron_density(D, slab, radial)
    with pytest.raises(ValueError, match=r"points must have shape \(npts, 3\)"):
        evaluate_orbitals(atoms, radial, np.zeros((4, 2)))
    with pytest.raises(DensityError, match=r"points must be a finite \(npts, 3\) array"):
        density_at_points(D, atoms, radial, np.full((2, 3), np.nan))


def test_gaussian_shell_validation():
    with pytest.raises(RadialBasisError, match="as many exponents as coefficients"):
        GaussianRadial.from_primitives(0, [1.0, 2.0], [1.0])
    with pytest.raises(RadialBasisError, match="finite and positive"):
        GaussianRadial.from_primitives(1, [-1.0], [1.0])
    g = GaussianRadial.from_primitives(2, [0.7, 2.0], [1.0, -0.3])
    assert g.norm() == pytest.approx(1.0)
    r = np.linspace(0, g.cutoff * 1.2, 2000)
    vals = np.abs(g(r))
    assert vals[r >= g.cutoff].max() == 0.0
    # cut where the envelope r^l sum |c_k| exp(-a_k r^2) falls to 1e-8 of its peak
    assert 1e-10 * vals.max() < vals[r < g.cutoff][-1] <= 1.5e-8 * vals.max()
    tab = RadialFunction(0, np.linspace(0, 3, 301), np.exp(-np.linspace(0, 3, 301) ** 2), 3.0)
    assert isinstance(truncated_radial_basis(RadialBasis({"X": (tab,)}), 1e-2).functions["X"][0].cutoff, float)
