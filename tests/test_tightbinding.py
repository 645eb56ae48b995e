"""Slater-Koster and analytic tight-binding models: tables, rotations, Hermiticity, closed forms."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from ase_slem import RealSpaceOperator, band_energies
from ase_slem.basis import BasisError, convention_matrix, real_spherical_harmonics, textbook_to_e3nn
from ase_slem.solvers import generalized_eigh
from ase_slem.tightbinding import (
    BondParameters,
    SlaterKosterError,
    SlaterKosterParameters,
    graphene_pz,
    linear_chain,
    orbital_tensors,
    silicon_parameters,
    slater_koster_blocks,
    slater_koster_operators,
    smooth_cutoff,
)

SPD_KEYS = [
    "ss_sigma", "sp_sigma", "pp_sigma", "pp_pi", "sd_sigma", "pd_sigma", "pd_pi",
    "dd_sigma", "dd_pi", "dd_delta",
]


def spd_parameters(rng, r0=2.3, cutoff=4.0, elements=("Si",)) -> SlaterKosterParameters:
    """Random s, p, d parameters for every pair of ``elements`` (derived reverse orders)."""
    onsite = {el: {"s": rng.normal(), "p": rng.normal(), "d": rng.normal()} for el in elements}
    bonds = {}
    for a in elements:
        for b in elements:
            if (b, a) in bonds:
                continue
            keys = SPD_KEYS + (["ps_sigma", "ds_sigma", "dp_sigma", "dp_pi"] if a != b else [])
            bonds[(a, b)] = BondParameters(
                r0=r0,
                hopping={k: rng.normal() for k in keys},
                overlap={k: 0.05 * rng.normal() for k in keys},
                beta_hopping=1.7,
                beta_overlap=1.3,
            )
    return SlaterKosterParameters(onsite=onsite, bonds=bonds, cutoff=cutoff, cutoff_width=0.5)


def wigner_ours(l: int, Q: np.ndarray) -> np.ndarray:
    """D with Y_ours(Q r) = D Y_ours(r) (our e3nn order), for any orthogonal Q."""
    pts = np.random.default_rng(7).normal(size=(40, 3))
    u = textbook_to_e3nn(l)
    y = real_spherical_harmonics(l, pts) @ u.T
    yq = real_spherical_harmonics(l, pts @ Q.T) @ u.T
    d, *_ = np.linalg.lstsq(y, yq, rcond=None)
    return d.T


def atom_wigner(ls, Q):
    from scipy.linalg import block_diag

    return block_diag(*[wigner_ours(l, Q) for l in ls])


# ---------------------------------------------------------------------------------------------
def test_orbital_tensors_are_the_textbook_real_harmonics(rng):
    pts = rng.normal(size=(30, 3))
    rhat = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    for l in (1, 2):
        t = orbital_tensors(l)
        poly = rhat @ t.T if l == 1 else np.einsum("pa,mab,pb->pm", rhat, t, rhat)
        ratio = real_spherical_harmonics(l, pts) / poly
        assert np.allclose(ratio, ratio.flat[0], rtol=1e-12), f"l={l} tensors are not Y_l up to one constant"
        flat = t.reshape(len(t), -1)
        assert np.allclose(flat @ flat.T, np.eye(2 * l + 1), atol=1e-14)


def test_blocks_match_the_slater_koster_table(rng):
    params = spd_parameters(rng, r0=2.3)
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    atoms = Atoms("Si2", positions=[[0, 0, 0], 2.3 * u])  # at r0: V(r) = V0
    data = slater_koster_blocks(atoms, {"Si": "1s1p1d"}, params)
    k = np.flatnonzero((data["i"] == 0) & (data["j"] == 1))[0]
    cb = [convention_matrix(l, "textbook") for l in (0, 1, 2)]
    from scipy.linalg import block_diag

    c = block_diag(*cb)
    E = c.T @ data["hamiltonian"][k] @ c  # textbook order: s | y z x | xy yz z2 xz x2-y2
    V = params.bonds[("Si", "Si")].hopping
    l, m, n = u
    s, y, z, x = 0, 1, 2, 3
    xy, yz, z2, xz, x2y2 = 4, 5, 6, 7, 8
    r3 = np.sqrt(3)
    table = {
        (s, s): V["ss_sigma"],
        (s, x): l * V["sp_sigma"],
        (x, s): -l * V["sp_sigma"],
        (x, x): l**2 * V["pp_sigma"] + (1 - l**2) * V["pp_pi"],
        (x, y): l * m * (V["pp_sigma"] - V["pp_pi"]),
        (x, z): l * n * (V["pp_sigma"] - V["pp_pi"]),
        (s, xy): r3 * l * m * V["sd_sigma"],
        (s, z2): (n**2 - (l**2 + m**2) / 2) * V["sd_sigma"],
        (s, x2y2): r3 / 2 * (l**2 - m**2) * V["sd_sigma"],
        (x, xy): r3 * l**2 * m * V["pd_sigma"] + m * (1 - 2 * l**2) * V["pd_pi"],
        (x, yz): r3 * l * m * n * V["pd_sigma"] - 2 * l * m * n * V["pd_pi"],
        (z, z2): n * (n**2 - (l**2 + m**2) / 2) * V["pd_sigma"] + r3 * n * (l**2 + m**2) * V["pd_pi"],
        (x, x2y2): r3 / 2 * l * (l**2 - m**2) * V["pd_sigma"] + l * (1 - l**2 + m**2) * V["pd_pi"],
        (xy, xy): 3 * l**2 * m**2 * V["dd_sigma"] + (l**2 + m**2 - 4 * l**2 * m**2) * V["dd_pi"]
        + (n**2 + l**2 * m**2) * V["dd_delta"],
        (xy, yz): 3 * l * m**2 * n * V["dd_sigma"] + l * n * (1 - 4 * m**2) * V["dd_pi"]
        + l * n * (m**2 - 1) * V["dd_delta"],
        (z2, z2): (n**2 - (l**2 + m**2) / 2) ** 2 * V["dd_sigma"] + 3 * n**2 * (l**2 + m**2) * V["dd_pi"]
        + 0.75 * (l**2 + m**2) ** 2 * V["dd_delta"],
        (x2y2, x2y2): 0.75 * (l**2 - m**2) ** 2 * V["dd_sigma"] + (l**2 + m**2 - (l**2 - m**2) ** 2) * V["dd_pi"]
        + (n**2 + (l**2 - m**2) ** 2 / 4) * V["dd_delta"],
    }
    for (a, b), expected in table.items():
        assert E[a, b] == pytest.approx(expected, abs=1e-12), (a, b)


@pytest.mark.parametrize("proper", [True, False])
def test_blocks_rotate_with_the_structure(rng, proper):
    params = spd_parameters(rng, elements=("Si", "C"), cutoff=3.2)
    atoms = bulk("SiC", "zincblende", a=4.36)
    atoms.rattle(0.05, seed=3)
    basis = {"Si": "1s1p1d", "C": "1s1p"}
    H, S = slater_koster_operators(atoms, basis, params)
    Q = Rotation.random(random_state=11).as_matrix()
    if not proper:
        Q = Q @ np.diag([1.0, 1.0, -1.0])  # rotation times reflection
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell[:] @ Q.T, scale_atoms=True)
    Hr, Sr = slater_koster_operators(rotated, basis, params)
    assert Hr.nblocks == H.nblocks and H.nblocks > 10
    D = {el: atom_wigner({"Si": (0, 1, 2), "C": (0, 1)}[el], Q) for el in ("Si", "C")}
    sym = atoms.get_chemical_symbols()
    worst = 0.0
    for op, opr in ((H, Hr), (S, Sr)):
        for i, j, R, blk in op.iter_blocks():
            expected = D[sym[i]] @ blk @ D[sym[j]].T
            worst = max(worst, np.abs(opr.block(i, j, R) - expected).max())
    assert worst < 1e-10


def test_directed_blocks_are_hermitian_also_between_elements(rng):
    params = spd_parameters(rng, elements=("Si", "C"), cutoff=3.2)
    atoms = bulk("SiC", "zincblende", a=4.36)
    atoms.rattle(0.05, seed=5)
    basis = {"Si": "1s1p1d", "C": "1s1p"}
    data = slater_koster_blocks(atoms, basis, params)
    for which in ("hamiltonian", "overlap"):
        both = RealSpaceOperator.from_blocks(  # both directions given: checked against each other
            data["orbital_counts"], data["i"], data["j"], data["R"], data[which], hermiticity_tol=1e-12
        )
        op = slater_koster_operators(atoms, basis, params)[0 if which == "hamiltonian" else 1]
        assert both.max_abs_difference(op) < 1e-13
    H, S = slater_koster_operators(atoms, basis, params)
    hk = H.bloch(rng.random((3, 3)))
    assert np.allclose(hk, np.conj(np.swapaxes(hk, 1, 2)), atol=1e-13)


def test_linear_chain_matches_closed_form():
    e0, t, s = 0.3, -1.2, 0.15
    atoms, H, S = linear_chain(e0, t, s, a=2.1)
    H.check_structure(atoms)
    k1 = np.linspace(-0.5, 0.5, 41)
    kpts = np.column_stack([k1, np.zeros_like(k1), np.zeros_like(k1)])
    c = np.cos(2 * np.pi * k1)
    expected = (e0 + 2 * t * c) / (1 + 2 * s * c)
    assert np.max(np.abs(band_energies(H, S, kpts)[:, 0] - expected)) < 1e-10


def graphene_closed_form(kpts, e0, t, s):
    f = np.abs(1 + np.exp(2j * np.pi * kpts[:, 0]) + np.exp(2j * np.pi * kpts[:, 1]))
    return np.sort(np.column_stack([(e0 + t * f) / (1 + s * f), (e0 - t * f) / (1 - s * f)]), axis=1)


def test_graphene_pz_matches_closed_form(rng):
    e0, t, s = -0.4, -2.7, 0.11
    atoms, H, S = graphene_pz(e0, t, s)
    kpts = np.column_stack([rng.random((60, 2)) - 0.5, np.zeros(60)])
    kpts[:3, :2] = [[0, 0], [1 / 3, 2 / 3], [0.5, 0]]  # Gamma, K (f = 0: Dirac point), M
    e = band_energies(H, S, kpts)
    assert np.max(np.abs(e - graphene_closed_form(kpts, e0, t, s))) < 1e-10
    assert e[1, 1] - e[1, 0] < 1e-10  # bands touch at K


def test_slater_koster_p_graphene_has_the_analytic_pz_bands(rng):
    """The p_z sub-block of an sp Slater-Koster graphene is the pp_pi model (orbital z is index 2)."""
    ref_atoms, _, _ = graphene_pz()
    t, s = -2.6, 0.09
    params = SlaterKosterParameters(
        onsite={"C": {"s": -8.0, "p": 0.0}},
        bonds={("C", "C"): BondParameters(
            r0=2.46 / np.sqrt(3),
            hopping={"ss_sigma": -5.0, "sp_sigma": 5.5, "pp_sigma": 6.0, "pp_pi": t},
            overlap={"ss_sigma": 0.2, "sp_sigma": -0.2, "pp_sigma": -0.3, "pp_pi": s},
        )},
        cutoff=1.8,
        cutoff_width=0.2,
    )
    H, S = slater_koster_operators(ref_atoms, None, params)
    kpts = np.column_stack([rng.random((20, 2)), np.zeros(20)])
    pz = np.array([3, 7])  # atom orbitals: s, x, y, z -> z is 1 + 2
    others = np.setdiff1d(np.arange(8), pz)
    hk, sk = H.bloch(kpts), S.bloch(kpts)
    assert np.abs(hk[:, pz][:, :, others]).max() < 1e-13  # sigma-pi decoupling of a planar sheet
    e = generalized_eigh(hk[:, pz][:, :, pz], sk[:, pz][:, :, pz], eigvals_only=True)
    assert np.max(np.abs(e - graphene_closed_form(kpts, 0.0, t, s))) < 1e-10


def test_default_silicon_model_is_an_insulator_with_positive_overlap(si_sk_operators):
    atoms, H, S = si_sk_operators
    assert H.norb == 8 and H.basis.as_strings() == {"Si": "1s1p"}
    mesh = np.stack(np.meshgrid(*[np.arange(6) / 6] * 3, indexing="ij"), -1).reshape(-1, 3)
    e = band_energies(H, S, mesh)
    gap = e[:, 4].min() - e[:, 3].max()  # 8 electrons per cell fill 4 bands
    assert 1.5 < gap < 3.0
    assert np.linalg.eigvalsh(S.bloch(mesh)).min() > 0.5
    assert H.block(0, 0).diagonal() == pytest.approx([-5.0, 1.5, 1.5, 1.5])
    assert np.allclose(S.block(1, 1), np.eye(4))


def test_smooth_cutoff_switches_off_continuously():
    r = np.array([1.0, 2.6, 2.8, 3.0, 3.5])
    fc = smooth_cutoff(r, 3.0, 0.4)
    assert fc[0] == 1.0 and fc[1] == 1.0 and fc[3] == 0.0 and fc[4] == 0.0
    assert fc[2] == pytest.approx(0.5)
    assert smooth_cutoff(np.array([3.0 - 1e-7]), 3.0, 0.4)[0] < 1e-12
    # stretching a bond through the cutoff: block magnitude goes to zero continuously
    mags = []
    for d in (2.95, 2.999, 3.001):
        atoms = Atoms("Si2", positions=[[0, 0, 0], [d, 0, 0]])
        H, _ = slater_koster_operators(atoms)
        mags.append(np.abs(H.block(0, 1)).max())
    assert mags[0] > mags[1] > 0 and mags[1] < 1e-4 and mags[2] == 0.0


def test_bad_parameters_and_bases_raise_clearly(rng, si_atoms):
    params = silicon_parameters()
    with pytest.raises(SlaterKosterError, match=r"missing onsite energy of the d shell of Si"):
        slater_koster_operators(si_atoms, {"Si": "1s1p1d"}, params)
    with_d = silicon_parameters()
    with_d.onsite["Si"]["d"] = 8.0
    with pytest.raises(SlaterKosterError, match=r"missing hopping integral 'sd_sigma'"):
        slater_koster_operators(si_atoms, {"Si": "1s1p1d"}, with_d)
    with pytest.raises(BasisError, match="element Si is not in this basis"):
        slater_koster_operators(si_atoms, {"C": "1s1p"}, params)
    sic = bulk("SiC", "zincblende", a=4.36)
    with pytest.raises(SlaterKosterError, match="no onsite energies for C"):
        slater_koster_operators(sic, {"Si": "1s1p", "C": "1s1p"}, params)
    with pytest.raises(SlaterKosterError, match=r"l=3 shell"):
        slater_koster_operators(si_atoms, {"Si": "1s1f"}, params)
    with pytest.raises(SlaterKosterError, match="bad Slater-Koster key 'sp_sgma'"):
        BondParameters(r0=2.0, hopping={"sp_sgma": 1.0})
    bad = silicon_parameters()
    bad.bonds[("Si", "Si")].hopping["ps_sigma"] = 2.2  # must be -sp_sigma for one element
    with pytest.raises(SlaterKosterError, match="break Hermiticity"):
        slater_koster_operators(si_atoms, None, bad)
    twin = Atoms("Si2", positions=[[0, 0, 0], [0, 0, 0]])
    with pytest.raises(SlaterKosterError, match="sit on top of each other"):
        slater_koster_operators(twin)
    with pytest.raises(SlaterKosterError, match="below 1/2"):
        linear_chain(s=0.6)
