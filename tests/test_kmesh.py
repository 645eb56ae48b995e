"""Monkhorst–Pack meshes, spglib's irreducible wedge and the mesh tetrahedra (ase_slem.kmesh)."""
from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import kptdensity2monkhorstpack
from ase.dft.kpoints import monkhorst_pack as ase_monkhorst_pack
from ase.neighborlist import neighbor_list

from ase_slem import band_energies
from ase_slem.dos import density_of_states, electron_count_below
from ase_slem.kmesh import KMesh, mesh_tetrahedra, monkhorst_pack
from ase_slem.tightbinding import BondParameters, SlaterKosterParameters, slater_koster_operators


# ---------------------------------------------------------------------------------------------
# a symmetric model: any Slater–Koster (two-centre) operator has the crystal's full symmetry
# ---------------------------------------------------------------------------------------------
HOP = {"ss_sigma": -1.9, "sp_sigma": 1.6, "sd_sigma": -0.9, "pp_sigma": 2.6, "pp_pi": -0.7,
       "pd_sigma": -1.0, "pd_pi": 0.5, "dd_sigma": -0.8, "dd_pi": 0.5, "dd_delta": -0.1}
HOP_REVERSED = {"ps_sigma": -1.4, "ds_sigma": -0.7, "dp_sigma": -0.8, "dp_pi": 0.4}  # for A != B


def spd_model(atoms: Atoms, cutoff: float = 4.2):
    """H, S of an s/p/d Slater–Koster model reaching second neighbours (r0 = bond length)."""
    els = list(dict.fromkeys(atoms.get_chemical_symbols()))
    r0 = float(neighbor_list("d", atoms, 5.0).min())
    onsite = {el: {"s": -5.0 - k, "p": 1.0 + 0.5 * k, "d": 6.0 + k} for k, el in enumerate(els)}
    bonds = {}
    for a, b in combinations_with_replacement(els, 2):
        hop = HOP if a == b else {**HOP, **HOP_REVERSED}
        bonds[(a, b)] = BondParameters(r0=r0, hopping=hop, overlap={k: 0.04 * v for k, v in hop.items()})
    params = SlaterKosterParameters(onsite=onsite, bonds=bonds, cutoff=cutoff, cutoff_width=0.3)
    return slater_koster_operators(atoms, {el: "1s1p1d" for el in els}, params)


def hcp_mg() -> Atoms:
    return bulk("Mg", "hcp", a=3.2, c=5.2)


def as_set(k: np.ndarray) -> set:
    k = np.mod(np.round(np.asarray(k, float), 9), 1.0)
    k[np.isclose(k, 1.0)] = 0.0
    return {tuple(row) for row in np.round(k, 8)}


# ---------------------------------------------------------------------------------------------
# mesh points
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mesh", [(4, 4, 4), (3, 5, 2), (1, 1, 6)])
def test_full_mesh_is_the_monkhorst_pack_mesh(mesh):
    km = monkhorst_pack(bulk("Si"), mesh, symmetry=False)
    assert km.nk == np.prod(mesh) == km.nirr
    assert as_set(km.full_kpts) == as_set(ase_monkhorst_pack(mesh))
    assert np.all(km.full_kpts > -0.5) and np.all(km.full_kpts <= 0.5)
    assert np.allclose(km.weights, 1 / km.nk)


def test_gamma_centred_and_extra_shift():
    km = monkhorst_pack(bulk("Si"), (4, 3, 2), shift="gamma", symmetry=False)
    grid = np.stack(np.meshgrid(np.arange(4) / 4, np.arange(3) / 3, np.arange(2) / 2, indexing="ij"), -1)
    assert as_set(km.full_kpts) == as_set(grid.reshape(-1, 3))
    assert np.allclose(km.offset, 0)
    # shift in mesh steps on top of Monkhorst–Pack: even axes are already half a step off Gamma
    km2 = monkhorst_pack(bulk("Si"), (4, 3, 2), shift=(0.5, 0.5, 0.25), symmetry=False)
    assert np.allclose(km2.offset, [0.0, 0.5, 0.75])
    assert as_set(km2.full_kpts) == as_set((km.grid + km2.offset) / km2.mesh)
    # full-mesh order: first axis fastest, index g1 + n1 (g2 + n2 g3)
    g = km2.grid
    assert np.array_equal(g[:5, 0], [0, 1, 2, 3, 0]) and g[4, 1] == 1


def test_density_matches_ase():
    for atoms in (bulk("Si"), hcp_mg()):
        km = monkhorst_pack(atoms, density=3.0)
        assert np.array_equal(km.mesh, kptdensity2monkhorstpack(atoms, 3.0, even=False))


@pytest.mark.parametrize(
    "atoms, mesh, shift, nirr",
    [
        (bulk("Si"), (4, 4, 4), "gamma", 8),  # textbook fcc counts
        (bulk("Si"), (4, 4, 4), (0, 0, 0), 10),
        (bulk("Si"), (8, 8, 8), (0, 0, 0), 60),
        (bulk("Cu", "sc", a=2.5), (6, 6, 6), "gamma", 20),
    ],
)
def test_irreducible_counts(atoms, mesh, shift, nirr):
    km = monkhorst_pack(atoms, mesh, shift=shift)
    assert km.nirr == nirr, km
    assert km.symmetry.startswith("spglib: 48 operations")


def test_map_is_consistent_and_weights_sum_to_one():
    km = monkhorst_pack(hcp_mg(), (6, 6, 4))
    assert np.isclose(km.weights.sum(), 1.0)
    assert np.allclose(km.full_kpts[km.irr_to_full], km.kpts)
    assert np.array_equal(km.full_to_irr[km.irr_to_full], np.arange(km.nirr))
    assert np.allclose(np.bincount(km.full_to_irr) / km.nk, km.weights)
    assert km.to_full(np.arange(km.nirr)).tolist() == km.full_to_irr.tolist()
    with pytest.raises(ValueError, match="irreducible"):
        km.to_full(np.zeros(km.nk + 1))


@pytest.mark.parametrize(
    "atoms, mesh, shift",
    [
        (bulk("Si"), (4, 4, 4), (0, 0, 0)),
        (bulk("Si"), (3, 3, 3), (0.5, 0.5, 0.5)),
        (bulk("Si", cubic=True), (3, 3, 3), "gamma"),
        (bulk("SiC", "zincblende", a=4.36), (4, 4, 4), (0, 0, 0)),
        (hcp_mg(), (5, 5, 3), (0, 0, 0)),
        (hcp_mg(), (4, 4, 2), "gamma"),
    ],
)
def test_symmetry_equivalent_points_have_equal_bands(atoms, mesh, shift):
    """The physics check of the map: E_n(k) = E_n(k_irr) for a model with the crystal's symmetry."""
    H, S = spd_model(atoms)
    km = monkhorst_pack(atoms, mesh, shift=shift)
    assert km.nirr < km.nk / 2  # the symmetry was really used
    e_full = band_energies(H, S, km.full_kpts)
    e_irr = band_energies(H, S, km.kpts)
    assert np.abs(e_full - km.to_full(e_irr)).max() < 1e-9
    # ... and so Brillouin-zone averages from the wedge equal those over the full mesh
    full = monkhorst_pack(atoms, mesh, shift=shift, symmetry=False)
    assert np.allclose(full.full_kpts, km.full_kpts)
    egrid = np.linspace(-12, 16, 300)
    d_irr = density_of_states(e_irr, km.weights, egrid, "gaussian", 0.2)
    d_full = density_of_states(e_full, full.weights, egrid, "gaussian", 0.2)
    assert np.abs(d_irr - d_full).max() < 1e-9
    n_irr = electron_count_below(e_irr, km, egrid[::10], "tetrahedron")
    n_full = electron_count_below(e_full, full, egrid[::10], "tetrahedron")
    assert np.abs(n_irr - n_full).max() < 1e-9


def test_rotation_check_rejects_a_wrong_map():
    from ase_slem.kmesh import _mapping_is_valid, _reduce_with_spglib

    atoms = bulk("Si")
    km = monkhorst_pack(atoms, (4, 4, 4))
    mapping, rotations, _ = _reduce_with_spglib(atoms, km.mesh, km.offset, True, 1e-5)
    assert _mapping_is_valid(mapping, km.grid, km.mesh, km.offset, rotations, True)
    # spglib's map of the unshifted mesh does not describe the shifted one
    gamma_map, _, _ = _reduce_with_spglib(atoms, km.mesh, np.zeros(3), True, 1e-5)
    assert not _mapping_is_valid(gamma_map, km.grid, km.mesh, km.offset, rotations, True)
    # without time reversal k and -k are not related in a crystal without inversion
    zb = bulk("SiC", "zincblende", a=4.36)
    m, rot, _ = _reduce_with_spglib(zb, km.mesh, km.offset, True, 1e-5)
    assert not _mapping_is_valid(m, km.grid, km.mesh, km.offset, rot, False)


def test_low_symmetry_crystal_uses_time_reversal_only():
    atoms = bulk("Si")
    atoms.symbols = "SiGe"  # two equal atoms always have an inversion centre between them
    atoms.positions[1] += [0.05, -0.11, 0.07]
    atoms.cell[0] += [0.13, 0.0, -0.04]
    km = monkhorst_pack(atoms, (4, 4, 4), shift="gamma")
    assert km.symmetry.startswith("spglib: 1 operations + time reversal")
    assert km.nirr == (64 + 8) // 2  # 8 time-reversal invariant points
    H, S = spd_model(atoms)
    assert np.abs(band_energies(H, S, km.full_kpts) - km.to_full(band_energies(H, S, km.kpts))).max() < 1e-9
    km_no_tr = monkhorst_pack(atoms, (4, 4, 4), shift="gamma", time_reversal=False)
    assert km_no_tr.nirr == 64


def test_fallbacks_slab_molecule_and_odd_shift():
    slab = Atoms("C2", positions=[[0, 0, 5], [1.42, 0, 5]], cell=[[2.46, 0, 0], [-1.23, 2.13, 0], [0, 0, 12]],
                 pbc=[True, True, False])
    km = monkhorst_pack(slab, 6)
    assert tuple(km.mesh) == (6, 6, 1)
    assert km.symmetry.startswith("time reversal only (axis 2 is not periodic")
    assert np.allclose(km.full_kpts[:, 2], 0)
    assert np.isclose(km.weights.sum(), 1.0)
    assert as_set(km.to_full(km.kpts) * [1, 1, 0]) <= as_set(km.full_kpts) | as_set(-km.full_kpts)
    mol = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    kmol = monkhorst_pack(mol, 1)
    assert kmol.nk == 1 and np.allclose(kmol.kpts, 0) and np.allclose(kmol.weights, 1)
    odd = monkhorst_pack(bulk("Si"), (4, 4, 4), shift=(0.25, 0, 0))
    assert odd.symmetry.startswith("none (the mesh offset") and odd.nirr == 64
    nosym = monkhorst_pack(bulk("Si"), (4, 4, 4), symmetry=False)
    assert nosym.symmetry == "none (symmetry=False)" and nosym.nirr == 64


def test_bad_input():
    si = bulk("Si")
    with pytest.raises(ValueError, match="exactly one of mesh"):
        monkhorst_pack(si)
    with pytest.raises(ValueError, match="exactly one of mesh"):
        monkhorst_pack(si, (2, 2, 2), density=3.0)
    with pytest.raises(ValueError, match="three positive integers"):
        monkhorst_pack(si, (2, 0, 2))
    with pytest.raises(ValueError, match="three positive integers"):
        monkhorst_pack(si, (2, 2.5, 2))
    with pytest.raises(ValueError, match="positive number of k-points"):
        monkhorst_pack(si, density=-1.0)
    with pytest.raises(ValueError, match="shift must be"):
        monkhorst_pack(si, 2, shift="centered")
    with pytest.raises(ValueError, match="shift must be"):
        monkhorst_pack(si, 2, shift=(0.5, 0.5))
    slab = Atoms("H", cell=[3, 3, 10], pbc=[True, True, False])
    with pytest.raises(ValueError, match="axis 2, which is not periodic"):
        monkhorst_pack(slab, (4, 4, 4))
    with pytest.raises(ValueError, match="not periodic"):
        monkhorst_pack(slab, (4, 4, 1), shift=(0, 0, 0.5))


# ---------------------------------------------------------------------------------------------
# tetrahedra
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("atoms, mesh", [(bulk("Si"), (3, 4, 5)), (hcp_mg(), (4, 4, 3)), (bulk("Fe"), (2, 2, 2))])
def test_tetrahedra_tile_the_zone_with_equal_volumes(atoms, mesh):
    km = monkhorst_pack(atoms, mesh, symmetry=False)
    tet = km.tetrahedra()
    assert tet.shape == (6 * km.nk, 4)
    recip = np.linalg.inv(atoms.cell[:]).T
    # unwrap each tetrahedron's corners next to its first corner, in Cartesian coordinates
    g = km.grid[tet].astype(float)  # (nt, 4, 3)
    d = g[:, 1:] - g[:, :1]
    d -= np.rint(d / km.mesh) * km.mesh
    vec = (d / km.mesh) @ recip  # (nt, 3, 3)
    vol = np.abs(np.linalg.det(vec)) / 6
    vbz = abs(np.linalg.det(recip))
    assert np.allclose(vol, vbz / (6 * km.nk))
    # the shared diagonal (first -> last corner) is the shortest of the cell's four diagonals
    steps = recip / km.mesh[:, None]
    diags = [np.linalg.norm(np.array(s) @ steps) for s in ([1, 1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, -1])]
    assert np.isclose(np.linalg.norm(vec[0, 2]), min(diags))
    # every mesh point is a corner of 24 tetrahedra (4 corners x 6 per cell, shared by 8 cells)
    assert np.all(np.bincount(tet.ravel(), minlength=km.nk) == 24)


def test_mesh_tetrahedra_bad_mesh():
    with pytest.raises(ValueError, match="three positive integers"):
        mesh_tetrahedra((2, 2))
    assert isinstance(monkhorst_pack(bulk("Si"), 2), KMesh)
