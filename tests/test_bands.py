"""Band paths in the user's cell, band structures, orbital character, and the band/DOS plots."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.spectrum.band_structure import BandStructure  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from ase_slem import OperatorError, band_energies  # noqa: E402
from ase_slem.bands import (  # noqa: E402
    BandPathError,
    band_character,
    band_path,
    band_structure,
    band_weights,
    fermi_reference,
)
from ase_slem.plotting import plot_bands, plot_bands_and_dos, plot_dos, special_point_ticks  # noqa: E402
from ase_slem.tightbinding import graphene_pz, linear_chain, slater_koster_operators  # noqa: E402

NK = 60


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def si_path(si_atoms):
    return band_path(si_atoms, npoints=NK)


@pytest.fixture(scope="module")
def si_bands(si_sk_operators, si_path):
    atoms, H, S = si_sk_operators
    return band_structure(H, S, atoms, si_path, n_electrons=8)


def rotated(atoms: Atoms, Q: np.ndarray) -> Atoms:
    """Cell and positions rotated by Q (Cartesian)."""
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ Q.T, scale_atoms=True)
    return out


def bands_along(atoms: Atoms, npoints: int = NK):
    path = band_path(atoms, npoints=npoints)
    H, S = slater_koster_operators(atoms)
    return path, band_energies(H, S, path.kpts)


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
def test_silicon_path_has_the_fcc_special_points(si_atoms, si_path):
    assert si_path.path == "GXU,KGLWX"
    assert len(si_path.kpts) == NK
    sp = si_path.special_points
    a = 5.43
    # ASE's Cartesian k has no 2 pi: |X| = 1/a, |L| = sqrt(3)/(2a), |K| = 3/(4a) sqrt(2)
    lengths = {name: np.linalg.norm(si_atoms.cell.reciprocal().T @ sp[name]) for name in "GXLK"}
    assert lengths["G"] == 0
    assert lengths["X"] == pytest.approx(1 / a)
    assert lengths["L"] == pytest.approx(np.sqrt(3) / (2 * a))
    assert lengths["K"] == pytest.approx(3 * np.sqrt(2) / (4 * a))
    x, ticks, names = special_point_ticks(si_path)
    assert names == ["Γ", "X", "U|K", "Γ", "L", "W", "X"]
    assert np.all(np.diff(x) >= 0) and len(x) == NK


def test_rotated_silicon_has_identical_bands(si_atoms):
    path0, e0 = bands_along(si_atoms)
    Q = Rotation.random(random_state=42).as_matrix()
    path1, e1 = bands_along(rotated(si_atoms, Q))
    assert path1.path == path0.path
    assert np.max(np.abs(e1 - e0)) < 1e-8


def test_rotated_low_symmetry_cell_maps_the_path_exactly():
    """A triclinic cell has no rotation but inversion to hide a wrong frame: k must rotate with Q."""
    atoms = bulk("Si")
    atoms.set_cell(atoms.cell[:] * [[1.0], [1.02], [0.97]], scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    Q = Rotation.random(random_state=5).as_matrix()
    path0, e0 = bands_along(atoms)
    path1, e1 = bands_along(rotated(atoms, Q))
    k0 = path0.cartesian_kpts() @ Q.T
    k1 = path1.cartesian_kpts()
    assert np.allclose(np.abs(k1), np.abs(k0), atol=1e-10)  # same k up to time reversal
    assert np.max(np.abs(e1 - e0)) < 1e-8


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.repeat((2, 1, 1)),  # supercell
        lambda a: bulk("Si", "diamond", a=5.43, cubic=True),  # conventional 8-atom cell
    ],
    ids=["2x1x1", "cubic"],
)
def test_supercell_bands_contain_the_folded_primitive_bands(si_atoms, make):
    path0, e0 = bands_along(si_atoms)
    big = make(si_atoms)
    path1, e1 = bands_along(big)
    assert np.allclose(path1.cartesian_kpts(), path0.cartesian_kpts(), atol=1e-10)
    assert e1.shape[1] == e0.shape[1] * len(big) // len(si_atoms)
    # every primitive band energy at each k appears in the supercell spectrum at the same k
    miss = np.abs(e0[:, :, None] - e1[:, None, :]).min(axis=2)
    assert miss.max() < 1e-8


def test_non_standard_primitive_basis_gives_the_same_bands(si_atoms):
    """Same lattice, other basis vectors (a unimodular integer change of cell)."""
    path0, e0 = bands_along(si_atoms)
    other = si_atoms.copy()
    M = np.array([[1, 1, 0], [0, 1, 0], [-1, 0, 1]])
    other.set_cell(M @ si_atoms.cell[:], scale_atoms=False)
    other.wrap()
    path1, e1 = bands_along(other)
    assert np.max(np.abs(e1 - e0)) < 1e-8


def test_ase_method_and_low_dimensional_fallbacks(si_atoms):
    p = band_path(si_atoms, npoints=30, method="ase", path="GXL")
    assert p.path == "GXL" and len(p.kpts) == 30
    chain, _, _ = linear_chain()
    pc = band_path(chain, npoints=21)  # 1D periodic: ASE's line path
    assert np.allclose(pc.kpts[:, 1:], 0) and pc.kpts[:, 0].max() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# band structures
# ---------------------------------------------------------------------------------------------
def test_band_structure_is_an_ase_object_referenced_to_midgap(si_sk_operators, si_bands):
    atoms, H, S = si_sk_operators
    bs = si_bands
    assert isinstance(bs, BandStructure)
    assert bs.energies.shape == (1, NK, 8)
    assert np.allclose(bs.energies[0], band_energies(H, S, bs.path.kpts), atol=1e-12)
    vbm, cbm = bs.energies[0, :, 3].max(), bs.energies[0, :, 4].min()
    assert vbm < bs.reference < cbm  # insulator: E_F in the gap (midgap on mesh + path)
    assert bs.reference == pytest.approx(0.5 * (vbm + cbm), abs=1e-9)  # band edges at Gamma, on the path
    assert band_structure(H, S, atoms, bs.path, reference=None).reference == 0.0
    assert band_structure(H, S, atoms, bs.path, reference=1.25).reference == 1.25


def test_graphene_bands_on_the_2d_path_match_the_closed_form():
    e0, t, s = 0.0, -2.7, 0.1
    atoms, H, S = graphene_pz(e0, t, s)
    bs = band_structure(H, S, atoms, npoints=90, reference=None)
    k = bs.path.kpts
    assert np.allclose(k[:, 2], 0)
    f = np.abs(1 + np.exp(2j * np.pi * k[:, 0]) + np.exp(2j * np.pi * k[:, 1]))
    expected = np.sort(np.column_stack([(e0 + t * f) / (1 + s * f), (e0 - t * f) / (1 - s * f)]), axis=1)
    assert np.max(np.abs(bs.energies[0] - expected)) < 1e-10
    K = bs.path.special_points["K"]
    assert np.abs(1 + np.exp(2j * np.pi * K[0]) + np.exp(2j * np.pi * K[1])) < 1e-12  # Dirac point


def test_fermi_level_of_a_half_filled_chain():
    e0 = 0.4
    atoms, H, S = linear_chain(e0=e0, t=-1.0, s=0.1)
    ef = fermi_reference(H, S, atoms, n_electrons=1.0, density=50.0)  # 159 k-points on the line
    assert ef == pytest.approx(e0, abs=0.002)  # k_F = 1/4, E(1/4) = e0


def test_band_weights_and_character(si_sk_operators, si_path):
    atoms, H, S = si_sk_operators
    w = band_weights(H, S, si_path)
    assert w.shape == (NK, 8, 8)
    assert np.allclose(w.sum(axis=2), 1.0, atol=1e-10)
    char = band_character(H, S, si_path, atoms, by="element-l")
    assert list(char) == ["Si-s", "Si-p"]
    assert np.allclose(char["Si-s"] + char["Si-p"], 1.0, atol=1e-10)
    assert np.allclose(char["Si-s"], w[:, :, [0, 4]].sum(axis=2), atol=1e-10)
    gamma = np.flatnonzero(np.all(si_path.kpts == 0, axis=1))[0]
    assert char["Si-s"][gamma, 0] == pytest.approx(1.0, abs=1e-10)  # Gamma_1 valence state is pure s
    assert char["Si-p"][gamma, 1:4] == pytest.approx(1.0, abs=1e-10)  # Gamma_25' is pure p


def test_bad_input_raises_clearly(si_sk_operators, si_path):
    atoms, H, S = si_sk_operators
    molecule = Atoms("H2O", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]])
    with pytest.raises(BandPathError, match="not periodic"):
        band_path(molecule)
    with pytest.raises(BandPathError, match="no vector along periodic axis"):
        band_path(Atoms("Si", pbc=True))
    with pytest.raises(ValueError, match="method must be 'seekpath' or 'ase'"):
        band_path(atoms, method="vasp")
    with pytest.raises(OperatorError, match="has 2 atoms but the structure has 4"):
        band_structure(H, S, atoms.repeat((2, 1, 1)), reference=None)
    carbon = atoms.copy()
    carbon.symbols[0] = "C"
    with pytest.raises(OperatorError, match="does not match the structure"):
        band_structure(H, S, carbon, reference=None)
    with pytest.raises(ValueError, match="needs n_electrons"):
        band_structure(H, S, atoms, si_path)
    strained = atoms.copy()
    strained.set_cell(atoms.cell[:] * 1.01, scale_atoms=True)
    with pytest.raises(BandPathError, match="different cell"):
        band_structure(H, S, strained, si_path, reference=None)
    dimer = Atoms("Si2", positions=[[0, 0, 0], [2.3, 0, 0]])  # no pbc: a molecular operator
    Hm, Sm = slater_koster_operators(dimer)
    with pytest.raises(BandPathError, match="molecular"):
        band_structure(Hm, Sm, Atoms(dimer, cell=[10, 10, 10], pbc=True), reference=None)


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def test_plot_bands_draws_the_band_energies(si_bands, tmp_path):
    png = tmp_path / "bands.png"
    ax = plot_bands(si_bands, emin=-12, emax=6, title="Si (sp3 model)", filename=png)
    assert png.exists() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    x, _, _ = special_point_ticks(si_bands.path)
    e = si_bands.energies[0] - si_bands.reference
    band_lines = ax.lines[:8]
    for n, line in enumerate(band_lines):
        assert np.allclose(line.get_xdata(), x)
        assert np.allclose(line.get_ydata(), e[:, n])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["Γ", "X", "U|K", "Γ", "L", "W", "X"]
    fermi = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(fermi) == 1 and np.allclose(fermi[0].get_ydata(), 0.0)
    assert "eV" in ax.get_ylabel() and "E_" in ax.get_ylabel()
    assert ax.get_ylim() == (-12, 6)


def test_fat_bands_and_dos_plots(si_sk_operators, si_bands, tmp_path):
    from ase_slem.dos import dos

    atoms, H, S = si_sk_operators
    char = band_character(H, S, si_bands.path, atoms, by="l")
    ax = plot_bands(si_bands, weights=char, filename=tmp_path / "fat.png")
    assert len(ax.collections) == 2  # one scatter per orbital group
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["s", "p"]
    sizes = ax.collections[0].get_sizes()
    assert np.allclose(sizes, 30.0 * np.clip(char["s"].ravel(), 0, None))  # default fat_scale

    res = dos(H, S, atoms, mesh=6, method="gaussian", width=0.2, npts=300, pdos="l", n_electrons=8)
    ax = plot_dos(res.egrid, res.dos, res.pdos, reference=si_bands.reference, filename=tmp_path / "dos.png")
    assert np.allclose(ax.lines[0].get_xdata(), res.egrid - si_bands.reference)
    assert np.allclose(ax.lines[0].get_ydata(), res.dos)
    assert (tmp_path / "dos.png").stat().st_size > 5_000
    vax = plot_dos(res.egrid, res.dos, orientation="vertical")
    assert np.allclose(vax.lines[0].get_ydata(), res.egrid) and np.allclose(vax.lines[0].get_xdata(), res.dos)
    fig, (ab, ad) = plot_bands_and_dos(
        si_bands, res.egrid, res.dos, res.pdos, emin=-11, emax=5, weights=char, filename=tmp_path / "both.png",
    )
    assert ab.get_ylim() == ad.get_ylim() == (-11, 5)
    assert (tmp_path / "both.png").stat().st_size > 10_000


def test_plot_arguments_are_checked(si_bands):
    with pytest.raises(ValueError, match="emin .* must be below emax"):
        plot_bands(si_bands, emin=2, emax=-2)
    with pytest.raises(ValueError, match=r"weights\['s'\] has shape \(3, 8\)"):
        plot_bands(si_bands, weights={"s": np.ones((3, 8))})
    with pytest.raises(ValueError, match="labels has 2 entries for 7 special points"):
        plot_bands(si_bands, labels=["A", "B"])
    e = np.linspace(-5, 5, 11)
    with pytest.raises(ValueError, match="orientation must be"):
        plot_dos(e, np.ones(11), orientation="diagonal")
    with pytest.raises(ValueError, match="same length"):
        plot_dos(e, np.ones(10))
    with pytest.raises(ValueError, match=r"pdos\['x'\] has shape"):
        plot_dos(e, np.ones(11), pdos={"x": np.ones(3)})
