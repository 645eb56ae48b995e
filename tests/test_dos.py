"""DOS, PDOS, integrated DOS, Fermi level and gaps (ase_slem.dos) against analytic models."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from ase import Atoms
from ase.build import bulk

from ase_slem import Basis, RealSpaceOperator, band_energies
from ase_slem.dos import (
    band_gap,
    density_of_states,
    dos,
    electron_count_below,
    fermi_level,
    integrated_dos,
    mulliken_weights,
    orbital_groups,
    projected_density_of_states,
    state_projections,
)
from ase_slem.kmesh import monkhorst_pack
from ase_slem.tightbinding import (
    BondParameters,
    SlaterKosterParameters,
    graphene_pz,
    silicon_parameters,
    slater_koster_operators,
)


# ---------------------------------------------------------------------------------------------
# analytic models built block by block
# ---------------------------------------------------------------------------------------------
def chain(eps=0.3, t=-1.0, s=0.0, a=2.0):
    """One s orbital per cell along x: E(k) = (eps + 2t cos 2pi k) / (1 + 2s cos 2pi k)."""
    atoms = Atoms("H", cell=[a, 10.0, 10.0], pbc=[True, False, False])
    R = [(0, 0, 0), (1, 0, 0)]
    H = RealSpaceOperator.from_blocks([1], [0, 0], [0, 0], R, [np.array([[eps]]), np.array([[t]])], name="H")
    S = RealSpaceOperator.from_blocks([1], [0, 0], [0, 0], R, [np.array([[1.0]]), np.array([[s]])], name="S")
    return atoms, H, S


def ab_chain(delta=1.3, t=-0.8):
    """Two sites, onsite -+delta/2, equal hoppings: E = +-sqrt(delta^2/4 + 4 t^2 cos^2(pi k))."""
    atoms = Atoms("HLi", positions=[[0, 0, 0], [1.0, 0, 0]], cell=[2.0, 10.0, 10.0], pbc=[True, False, False])
    blocks = [np.array([[-delta / 2]]), np.array([[delta / 2]]), np.array([[t]]), np.array([[t]])]
    i, j, R = [0, 1, 0, 1], [0, 1, 1, 0], [(0, 0, 0), (0, 0, 0), (0, 0, 0), (1, 0, 0)]
    basis = Basis({"H": "s", "Li": "s"})
    H = RealSpaceOperator.from_blocks([1, 1], i, j, R, blocks, name="H", basis=basis, symbols=["H", "Li"])
    S = RealSpaceOperator.from_blocks([1, 1], [0, 1], [0, 1], None, [np.eye(1)] * 2, name="S", basis=basis,
                                      symbols=["H", "Li"])
    return atoms, H, S


def simple_cubic(t=-1.0):
    """s band E = 2t (cos 2pi k1 + cos 2pi k2 + cos 2pi k3)."""
    atoms = Atoms("H", cell=np.eye(3) * 2.0, pbc=True)
    R = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0)]
    H = RealSpaceOperator.from_blocks([1], [0] * 4, [0] * 4, R, [np.array([[t]])] * 3 + [np.zeros((1, 1))])
    S = RealSpaceOperator.from_blocks([1], [0], [0], None, [np.eye(1)])
    return atoms, H, S


def silicon():
    """Diamond Si with the sp3 Slater–Koster model of ase_slem.tightbinding (8 electrons, a gap)."""
    atoms = bulk("Si", "diamond", a=5.43)
    return (atoms, *slater_koster_operators(atoms))


def silicon_carbide():
    """Zincblende SiC, sp model: two elements, no inversion."""
    atoms = bulk("SiC", "zincblende", a=4.36)
    hop = {"ss_sigma": -1.9, "sp_sigma": 1.7, "ps_sigma": -2.1, "pp_sigma": 2.9, "pp_pi": -1.0}
    params = SlaterKosterParameters(
        onsite={"Si": {"s": -4.0, "p": 1.5}, "C": {"s": -7.0, "p": 0.0}},
        bonds={("Si", "C"): BondParameters(r0=1.89, hopping=hop, overlap={k: 0.04 * v for k, v in hop.items()})},
        cutoff=2.5,
        cutoff_width=0.3,
    )
    return (atoms, *slater_koster_operators(atoms, params=params))


def simple_cubic_exact_count(E: np.ndarray, t=-1.0, m=600) -> np.ndarray:
    """Electrons below E of the simple cubic band: kz integrated analytically, kx, ky on a fine grid."""
    c = np.cos(2 * np.pi * (np.arange(m) + 0.5) / m)
    cxy = (c[:, None] + c[None, :]).ravel()
    # 2t(cx + cy + cz) < E  with t < 0  <=>  cz > -(E / (2|t|) + cx + cy)... (t = -1: cz > -E/2 - cxy)
    lim = np.clip(-E[:, None] / (2 * abs(t)) - cxy[None, :], -1, 1)
    return 2 * (np.arccos(lim) / np.pi).mean(axis=1)


# ---------------------------------------------------------------------------------------------
# normalization
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, width", [("gaussian", 0.1), ("fermi-dirac", 0.03), ("methfessel-paxton", 0.1)])
def test_smeared_dos_integrates_to_two_states_per_band(method, width):
    atoms, H, S = ab_chain()
    km = monkhorst_pack(atoms, (12, 1, 1))
    e = band_energies(H, S, km.kpts)
    egrid = np.linspace(-4, 4, 8001)
    d = density_of_states(e, km.weights, egrid, method, width)
    assert np.trapezoid(d, egrid) == pytest.approx(2 * e.shape[1], abs=2e-4)
    n = integrated_dos(e, km.weights, egrid, method, width)
    assert n[0] == pytest.approx(0, abs=1e-6) and n[-1] == pytest.approx(4, abs=1e-6)
    # the integrated DOS is the running integral of the DOS
    run = np.concatenate([[0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(egrid))])
    assert np.abs(run - n).max() < 1e-4


def test_tetrahedron_dos_conserves_states_exactly():
    atoms, H, S = silicon()
    km = monkhorst_pack(atoms, 4)
    e = band_energies(H, S, km.kpts)
    egrid = np.linspace(e.min() - 1, e.max() + 1, 700)
    d = density_of_states(e, km, egrid, "tetrahedron")
    de = egrid[1] - egrid[0]
    assert d.sum() * de == pytest.approx(2 * 8, abs=1e-10)
    assert np.all(d >= -1e-12)
    # the bins of the DOS are differences of the exact integrated DOS on the bin edges
    edges = np.concatenate([[egrid[0] - de / 2], egrid + de / 2])
    n = integrated_dos(e, km, edges, "tetrahedron")
    assert np.allclose(np.cumsum(d) * de, n[1:], atol=1e-10)


# ---------------------------------------------------------------------------------------------
# tetrahedron method against analytic densities of states
# ---------------------------------------------------------------------------------------------
def test_tetrahedron_1d_cosine_band_matches_analytic_dos():
    atoms, H, S = chain(eps=0.0, t=-1.0)
    km = monkhorst_pack(atoms, (960, 1, 1))
    e = band_energies(H, S, km.kpts)
    egrid = np.linspace(-1.6, 1.6, 161)
    d = density_of_states(e, km, egrid, "tetrahedron")
    exact = 2 / (np.pi * np.sqrt(4 - egrid**2))
    # linear bands give a DOS constant on each k-segment: relative ripple ~ 1 / n
    assert np.abs(d / exact - 1).max() < 3e-3
    n = electron_count_below(e, km, egrid, "tetrahedron")
    assert np.abs(n - 2 * np.arccos(-egrid / 2) / np.pi).max() < 1e-4


def test_tetrahedron_simple_cubic_counts_converge_to_exact():
    atoms, H, S = simple_cubic()
    E = np.linspace(-5.5, 5.5, 23)
    exact = simple_cubic_exact_count(E)
    errors = []
    for n in (6, 12):
        km = monkhorst_pack(atoms, n)
        e = band_energies(H, S, km.kpts)
        errors.append(np.abs(electron_count_below(e, km, E, "tetrahedron") - exact).max())
    assert errors[1] < 0.02  # largest at the van Hove singularity E = 2|t|
    assert errors[1] < errors[0] / 3.5  # second order in the mesh spacing


def test_tetrahedron_in_2d_graphene_dirac_cone():
    """A 2D mesh (one point along the vacuum axis): tetrahedra reduce to triangles."""
    atoms, H, S = graphene_pz(e0=0.0, t=-2.7, s=0.0)
    km = monkhorst_pack(atoms, 60, shift="gamma")  # contains K = (1/3, 2/3)
    assert tuple(km.mesh) == (60, 60, 1)
    e = band_energies(H, S, km.kpts)
    E = np.array([0.6, 1.2, 2.0])
    # reference: states of the upper band between the Dirac point and E on a very fine grid
    m = 1500
    k = (np.arange(m) + 0.5) / m
    absf = np.abs(1 + np.exp(2j * np.pi * k)[:, None] + np.exp(2j * np.pi * k)[None, :]).ravel()
    ref = np.array([2 * np.mean(2.7 * absf < x) for x in E])
    n = electron_count_below(e, km, E, "tetrahedron") - 2
    assert np.abs(n / ref - 1).max() < 0.03
    assert n[1] / n[0] == pytest.approx(4, rel=0.1)  # DOS linear in E at a Dirac cone
    # half filling puts E_F at the Dirac point e0, with or without overlap
    atoms, H, S = graphene_pz(e0=0.4, t=-2.7, s=0.1)
    e = band_energies(H, S, km.kpts)
    assert band_gap(e, 2).gap == 0.0
    assert fermi_level(e, km, 2, "tetrahedron") == pytest.approx(0.4, abs=1e-6)
    assert fermi_level(e, km.weights, 2, "gaussian", 0.05) == pytest.approx(0.4, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# gaps and Fermi levels
# ---------------------------------------------------------------------------------------------
def test_two_band_insulator_gap_and_fermi_level():
    delta = 1.3
    atoms, H, S = ab_chain(delta=delta, t=-0.8)
    km = monkhorst_pack(atoms, (8, 1, 1), shift="gamma", symmetry=False)
    e = band_energies(H, S, km.kpts)
    g = band_gap(e, 2)
    k_half = int(np.flatnonzero(np.isclose(km.kpts[:, 0], 0.5))[0])
    assert g.gap == pytest.approx(delta, abs=1e-12)
    assert g.vbm == pytest.approx(-delta / 2, abs=1e-12) and g.cbm == pytest.approx(delta / 2, abs=1e-12)
    assert g.direct and g.k_vbm == g.k_cbm == k_half and g.direct_gap == pytest.approx(delta)
    assert not g.is_metal
    for method in ("gaussian", "fermi-dirac", "tetrahedron"):
        ef = fermi_level(e, km, 2, method, 0.05)
        assert ef == pytest.approx(0.0, abs=1e-12)  # mid-gap
    assert electron_count_below(e, km, 0.0, "tetrahedron") == pytest.approx(2.0, abs=1e-10)


def test_indirect_gap():
    # two decoupled chains: valence band maximum at Gamma, conduction band minimum at k = 1/2
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 5, 0]], cell=[2.0, 10.0, 10.0], pbc=[True, False, False])
    R = [(0, 0, 0), (0, 0, 0), (1, 0, 0), (1, 0, 0)]
    H = RealSpaceOperator.from_blocks([1, 1], [0, 1, 0, 1], [0, 1, 0, 1], R,
                                      [np.array([[v]]) for v in (-2.0, 2.0, 0.5, 0.3)])
    S = RealSpaceOperator.from_blocks([1, 1], [0, 1], [0, 1], None, [np.eye(1)] * 2)
    km = monkhorst_pack(atoms, (6, 1, 1), shift="gamma")
    e = band_energies(H, S, km.kpts)
    g = band_gap(e, 2)
    assert np.isclose(km.kpts[g.k_vbm, 0], 0) and np.isclose(abs(km.kpts[g.k_cbm, 0]), 0.5)
    assert g.vbm == pytest.approx(-2 + 1.0) and g.cbm == pytest.approx(2 - 0.6)
    assert g.gap == pytest.approx(2.4) and not g.direct
    assert g.direct_gap == pytest.approx(4 - 2 * 0.2)


def test_metals_report_no_gap():
    atoms, H, S = chain()
    km = monkhorst_pack(atoms, (10, 1, 1))
    e = band_energies(H, S, km.kpts)
    g = band_gap(e, 1)  # one electron: half-filled band
    assert g.gap == 0.0 and g.is_metal and np.isnan(g.vbm) and g.k_vbm == -1
    atoms, H, S = silicon()
    e = band_energies(H, S, monkhorst_pack(atoms, 8, shift="gamma").kpts)
    g = band_gap(e, 4)  # two electrons per atom: bands 2 and 3 overlap
    assert g.gap == 0.0 and g.cbm < g.vbm - 0.1 and not g.direct
    # a degenerate level split between filled and empty bands by rounding is no gap: with these
    # onsite energies the top of the valence band at Gamma is a p triplet that holds 8 + 4 electrons
    params = silicon_parameters()
    params.onsite = {"Si": {"s": -5.0, "p": 8.0}}
    H, S = slater_koster_operators(atoms, params=params)
    e = band_energies(H, S, monkhorst_pack(atoms, 8, shift="gamma").kpts)
    g = band_gap(e, 8)
    assert abs(g.cbm - g.vbm) < 1e-9 and g.gap == 0.0 and g.k_vbm == g.k_cbm == 0


def test_fermi_level_of_half_filled_chain_is_analytic():
    eps = 0.3
    # with overlap the band is asymmetric, but half filling still puts E_F at E(k = 1/4) = eps
    atoms, H, S = chain(eps=eps, t=-1.0, s=0.15)
    km = monkhorst_pack(atoms, (16, 1, 1), shift="gamma")
    e = band_energies(H, S, km.kpts)
    assert fermi_level(e, km, 1.0, "tetrahedron") == pytest.approx(eps, abs=1e-9)
    fine = monkhorst_pack(atoms, (2000, 1, 1))
    ef = band_energies(H, S, fine.kpts)
    for method in ("gaussian", "fermi-dirac", "methfessel-paxton"):
        assert fermi_level(ef, fine.weights, 1.0, method, 0.02) == pytest.approx(eps, abs=2e-3)
    # without overlap the band is particle-hole symmetric about eps: any symmetric smearing is exact
    atoms, H, S = chain(eps=eps, t=-1.0, s=0.0)
    e = band_energies(H, S, km.kpts)
    assert fermi_level(e, km.weights, 1.0, "gaussian", 0.2) == pytest.approx(eps, abs=1e-8)


def test_integrated_dos_up_to_fermi_level_is_the_electron_count():
    # metal: simple cubic band partly filled
    atoms, H, S = simple_cubic()
    km = monkhorst_pack(atoms, 12)
    e = band_energies(H, S, km.kpts)
    n_el = 0.6
    exact_ef = brentq(lambda x: simple_cubic_exact_count(np.array([x]))[0] - n_el, -6, 0)
    ef_t = fermi_level(e, km, n_el, "tetrahedron")
    assert integrated_dos(e, km, [ef_t], "tetrahedron")[0] == pytest.approx(n_el, abs=1e-8)
    ef_g = fermi_level(e, km.weights, n_el, "gaussian", 0.1)
    egrid = np.linspace(-8, ef_g, 4001)
    assert np.trapezoid(density_of_states(e, km.weights, egrid, "gaussian", 0.1), egrid) == pytest.approx(n_el, abs=1e-4)
    assert abs(ef_t - exact_ef) < 0.04 and abs(ef_g - exact_ef) < 0.04
    # insulator: tetrahedron count at E_F exact
    atoms, H, S = silicon()
    km = monkhorst_pack(atoms, 4)
    e = band_energies(H, S, km.kpts)
    ef = fermi_level(e, km, 8, "tetrahedron")
    assert electron_count_below(e, km, ef, "tetrahedron") == pytest.approx(8.0, abs=1e-6)


def test_absent_states_do_not_count():
    atoms, H, S = ab_chain()
    km = monkhorst_pack(atoms, (8, 1, 1))
    e = band_energies(H, S, km.kpts)
    e[:, 1] = np.nan  # as the solver reports basis combinations removed for a singular overlap
    egrid = np.linspace(-4, 4, 2001)
    assert np.trapezoid(density_of_states(e, km.weights, egrid, "gaussian", 0.1), egrid) == pytest.approx(2, abs=1e-6)
    assert electron_count_below(e, km, 10.0, "tetrahedron") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="exceeds what the bands can hold"):
        fermi_level(e, km.weights, 3, "gaussian")


# ---------------------------------------------------------------------------------------------
# projected DOS
# ---------------------------------------------------------------------------------------------
def test_mulliken_weights_sum_to_one():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 6, 6)) + 1j * rng.normal(size=(2, 6, 6))
    s = np.eye(6) + 0.05 * (a + np.conj(np.swapaxes(a, 1, 2)))
    h = a + np.conj(np.swapaxes(a, 1, 2))
    from ase_slem.solvers import generalized_eigh

    _, c = generalized_eigh(h, s)
    w = mulliken_weights(c, s)
    assert np.allclose(w.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="do not match"):
        mulliken_weights(c, s[:, :5, :5])


@pytest.mark.parametrize("method", ["gaussian", "tetrahedron"])
@pytest.mark.parametrize("by", ["element", "l", "atom", "element-l"])
def test_pdos_sums_to_dos_and_to_orbital_counts(method, by):
    atoms, H, S = silicon_carbide()
    km = monkhorst_pack(atoms, 3)
    names, G = orbital_groups(H, atoms, by)
    e, p = state_projections(H, S, km.kpts, G)
    weights = km if method == "tetrahedron" else km.weights
    egrid = np.linspace(e.min() - 2, e.max() + 2, 1500)
    pd = projected_density_of_states(e, weights, p, egrid, method, 0.1)
    total = density_of_states(e, weights, egrid, method, 0.1)
    assert pd.shape == (len(names), len(egrid))
    assert np.abs(pd.sum(axis=0) - total).max() < 1e-9 * max(1, total.max())
    # completeness: each group holds 2 x its orbital count over the whole spectrum
    de = egrid[1] - egrid[0]
    assert np.allclose(pd.sum(axis=1) * de, 2 * G.sum(axis=1), atol=1e-6)
    expected = {"element": ["Si", "C"], "l": ["s", "p"], "atom": ["Si0", "C1"],
                "element-l": ["Si-s", "Si-p", "C-s", "C-p"]}[by]
    assert names == expected


def test_atom_pdos_from_the_wedge_equals_the_full_mesh():
    """Equivalent atoms exchange weight under symmetry; dos() averages them, which is exact."""
    atoms, H, S = silicon()
    egrid = np.linspace(-14, 10, 400)
    kw = dict(mesh=4, method="gaussian", width=0.2, egrid=egrid, n_electrons=8, pdos="atom")
    irr = dos(H, S, atoms, **kw)
    full = dos(H, S, atoms, symmetry=False, **kw)
    assert irr.kmesh.nirr < full.kmesh.nirr
    for name in ("Si0", "Si1"):
        assert np.abs(irr.pdos[name] - full.pdos[name]).max() < 1e-9
    assert np.abs(irr.dos - full.dos).max() < 1e-9
    assert irr.fermi_level == pytest.approx(full.fermi_level, abs=1e-9)


def test_tetrahedron_corner_weights_against_sampling():
    """Blöchl's corner weights: the integral of each corner's linear shape function over the
    part of a tetrahedron where the linear band is below E, estimated by uniform sampling."""
    from ase_slem.dos import _Tetrahedra

    rng = np.random.default_rng(7)
    es = np.sort(rng.normal(size=(6, 4)), axis=1)
    es[3, 1] = es[3, 0]  # degenerate corners are allowed
    es[4, 2:] = es[4, 3]
    corners = np.broadcast_to(np.eye(4), (6, 4, 4))  # projection g = "corner g"
    lam = rng.dirichlet(np.ones(4), size=200_000)  # uniform points, barycentric coordinates
    E = np.linspace(-2.5, 2.5, 11)
    for t in range(len(es)):
        got = _Tetrahedra(es[t : t + 1], corners[t : t + 1], 1.0).integrated(E)  # (4, nE)
        band = lam @ es[t]
        ref = np.stack([(lam[:, c, None] * (band[:, None] < E)).mean(axis=0) for c in range(4)])
        assert np.abs(got - ref).max() < 4e-3
        count = _Tetrahedra(es[t : t + 1], None, 1.0).integrated(E)[0]
        assert np.allclose(count, got.sum(axis=0), atol=1e-12)


def test_tetrahedron_pdos_uses_corner_weights():
    """A k-dependent projection: tetrahedron PDOS counts converge to the fine-mesh sum."""
    atoms, H, S = ab_chain(delta=0.4, t=-1.0)
    names, G = orbital_groups(H, atoms, "atom")
    E = np.array([-1.5, -1.0, -0.5, 0.5, 1.5])
    fine = monkhorst_pack(atoms, (20000, 1, 1), symmetry=False)
    ef, pf = state_projections(H, S, fine.kpts, G)
    ref = np.array([[2 * np.sum(fine.weights[:, None] * pf[:, :, g] * (ef < x)) for x in E] for g in range(2)])
    km = monkhorst_pack(atoms, (24, 1, 1))
    e, p = state_projections(H, S, km.kpts, G)
    # integrated PDOS at E: the binned PDOS summed over bins whose upper edges are the E
    egrid = -3.0 + 0.005 * np.arange(1200) + 0.0025  # bins [-3 + 0.005 i, -3 + 0.005 (i + 1)]
    pd = projected_density_of_states(e, km, p, egrid, "tetrahedron")
    edges = egrid + 0.0025  # upper bin edges
    cum = np.cumsum(pd, axis=1) * 0.005
    at = np.searchsorted(edges, E - 1e-9)
    assert np.allclose(edges[at], E)
    assert np.abs(cum[:, at] - ref).max() < 2e-3
    # a projection constant over each tetrahedron (mean of its corners) is visibly worse
    assert np.abs(cum[:, at] - ref).max() < 0.2 * np.abs(ref.sum(axis=0) / 2 - ref).max()


# ---------------------------------------------------------------------------------------------
# high level
# ---------------------------------------------------------------------------------------------
def test_dos_of_silicon_model():
    atoms, H, S = silicon()
    res = dos(H, S, atoms, mesh=6, n_electrons=8, pdos="l")
    assert res.method == "tetrahedron" and res.kmesh.nirr < res.kmesh.nk
    ef = res.fermi_level
    assert res.gap.gap > 1.0 and res.gap.vbm < ef < res.gap.cbm
    assert ef == pytest.approx(0.5 * (res.gap.vbm + res.gap.cbm))
    assert np.interp(ef, res.egrid, res.idos) == pytest.approx(8.0, abs=1e-6)
    assert set(res.pdos) == {"s", "p"}
    assert np.abs(res.pdos["s"] + res.pdos["p"] - res.dos).max() < 1e-9
    in_gap = (res.egrid > res.gap.vbm + 0.05) & (res.egrid < res.gap.cbm - 0.05)
    assert np.all(res.dos[in_gap] == 0)
    # the gap from the irreducible wedge equals the one on the full mesh
    full = band_energies(H, S, res.kmesh.full_kpts)
    assert band_gap(full, 8).gap == pytest.approx(res.gap.gap, abs=1e-12)


def test_dos_of_a_molecule_with_density_matrix():
    t, s = -3.0, 0.25
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]])
    basis = Basis({"H": "s"})
    kw = dict(periodic=False, basis=basis, symbols=["H", "H"])
    H = RealSpaceOperator.from_dense([1, 1], np.array([[0.0, t], [t, 0.0]]), name="H", **kw)
    S = RealSpaceOperator.from_dense([1, 1], np.array([[1.0, s], [s, 1.0]]), name="S", **kw)
    c = np.array([1.0, 1.0]) / np.sqrt(2 * (1 + s))  # bonding orbital, S-normalized
    D = RealSpaceOperator.from_dense([1, 1], 2 * np.outer(c, c), name="D", **kw)
    res = dos(H, S, atoms, density_matrix=D, pdos="atom", width=0.1)
    assert res.method == "gaussian" and res.kmesh.nk == 1
    assert res.n_electrons == pytest.approx(2.0)
    assert res.gap.vbm == pytest.approx(t / (1 + s)) and res.gap.cbm == pytest.approx(-t / (1 - s))
    assert res.fermi_level == pytest.approx(0.5 * (t / (1 + s) - t / (1 - s)))
    assert np.allclose(res.pdos["H0"], res.pdos["H1"]) and np.allclose(res.pdos["H0"] * 2, res.dos)


def test_dos_result_plots():
    import matplotlib

    matplotlib.use("Agg")
    atoms, H, S = ab_chain()
    res = dos(H, S, atoms, mesh=(8, 1, 1), n_electrons=2, pdos="element")
    ax = res.plot()
    assert len(ax.lines) == 1 + 2 + 1  # total, two elements, Fermi level


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_input_is_explained():
    atoms, H, S = ab_chain()
    km = monkhorst_pack(atoms, (4, 1, 1), symmetry=False)
    e = band_energies(H, S, km.kpts)
    g = np.linspace(-3, 3, 11)
    with pytest.raises(ValueError, match="sum to 1"):
        density_of_states(e, np.ones(4), g)
    with pytest.raises(ValueError, match=r"shape \(nk,\) = \(4,\)"):
        density_of_states(e, np.ones(3) / 3, g)
    with pytest.raises(ValueError, match="non-negative"):
        density_of_states(e, np.array([0.5, 0.5, 0.5, -0.5]), g)
    with pytest.raises(ValueError, match=r"shape \(nk, nbands\)"):
        density_of_states(np.zeros((2, 2, 2)), np.ones(2) / 2, g)
    with pytest.raises(ValueError, match="unknown DOS/occupation method"):
        density_of_states(e, km.weights, g, method="hat")
    with pytest.raises(ValueError, match="width must be a positive"):
        density_of_states(e, km.weights, g, width=0.0)
    with pytest.raises(ValueError, match="needs the k-point mesh"):
        density_of_states(e, km.weights, g, method="tetrahedron")
    with pytest.raises(ValueError, match="strictly increasing"):
        density_of_states(e, km, g[::-1], method="tetrahedron")
    with pytest.raises(ValueError, match="irreducible"):
        density_of_states(e[:3], km, g, method="tetrahedron")
    with pytest.raises(ValueError, match="exceeds what the bands can hold"):
        fermi_level(e, km.weights, 5)
    with pytest.raises(ValueError, match="must be positive"):
        fermi_level(e, km.weights, -1)
    with pytest.raises(ValueError, match="must be positive"):
        band_gap(e, 0)
    with pytest.raises(ValueError, match=r"projections must have shape"):
        projected_density_of_states(e, km.weights, np.ones((4, 3, 1)), g)
    with pytest.raises(ValueError, match="unknown projection"):
        orbital_groups(H, atoms, "spin")
    bare = RealSpaceOperator.from_blocks([1, 1], [0, 1], [0, 1], None, [np.eye(1)] * 2)
    with pytest.raises(ValueError, match="needs the orbital basis"):
        orbital_groups(bare, atoms, "l")
