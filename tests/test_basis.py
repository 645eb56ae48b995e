"""Basis strings, orbital labels, converters; PySCF's orbital signs fixed by rotating molecules."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import block_diag
from scipy.spatial.transform import Rotation

from ase_slem.basis import (
    CONVENTIONS,
    Basis,
    BasisError,
    convention_matrix,
    parse_shells,
    real_spherical_harmonics,
    shells_to_string,
    textbook_to_e3nn,
)

import torch
from e3nn import o3


@pytest.fixture
def float64_torch():
    """e3nn builds Wigner matrices in torch's default dtype: use float64 inside a test only."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ---------------------------------------------------------------------------------------------
# strings
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, shells",
    [("2s2p1d", (0, 0, 1, 1, 2)), ("spd", (0, 1, 2)), ("1s1p", (0, 1)), ("2S1P", (0, 0, 1)),
     ("3s2p2d1f1g", (0, 0, 0, 1, 1, 2, 2, 3, 4)), ("1s1p1s", (0, 1, 0)), ([0, 2, 1], (0, 2, 1))],
)
def test_parse_shells(spec, shells):
    assert parse_shells(spec) == shells


@pytest.mark.parametrize("bad", ["", "2x", "s2", "2s 2q", "two s"])
def test_parse_shells_rejects_bad_strings(bad):
    with pytest.raises(BasisError, match="cannot parse basis string"):
        parse_shells(bad)


def test_parse_shells_rejects_negative_l():
    with pytest.raises(BasisError, match="negative angular momentum"):
        parse_shells([0, -1])


@pytest.mark.parametrize("shells", [(0, 0, 1, 1, 2), (0, 1, 0), (3,), (0, 0, 0, 1, 1, 2, 2, 3, 4)])
def test_shells_to_string_round_trip(shells):
    assert parse_shells(shells_to_string(shells)) == shells
    assert shells_to_string((0, 0, 1, 1, 2)) == "2s2p1d"


# ---------------------------------------------------------------------------------------------
# Basis, labels, table
# ---------------------------------------------------------------------------------------------
def test_basis_counts_labels_and_table():
    basis = Basis({"O": "2s2p1d", "H": "2s1p"}, name="dzp")
    assert basis.norb("O") == 13 and basis.norb(8) == 13 and basis.norb("H") == 5
    assert basis.as_strings() == {"O": "2s2p1d", "H": "2s1p"}
    np.testing.assert_array_equal(basis.orbital_counts(["O", "H", "H"]), [13, 5, 5])
    labels = basis.orbital_labels(["H", "O"])
    assert len(labels) == 18
    assert str(labels[2]) == "H0:2p[-1]" and str(labels[4]) == "H0:2p[+1]"
    assert (labels[5].atom, labels[5].element, labels[5].l, labels[5].m) == (1, "O", 0, 0)
    table = basis.orbital_table(["H", "O"])
    np.testing.assert_array_equal(table["atom"], [0] * 5 + [1] * 13)
    np.testing.assert_array_equal(table["l"][5:], [0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(table["m"][13:], [-2, -1, 0, 1, 2])
    np.testing.assert_array_equal(table["shell"][5:8], [0, 1, 2])
    assert basis == Basis({"H": [0, 0, 1], "O": "2s2p1d"}) and basis != Basis({"O": "2s2p1d"})


def test_basis_errors():
    with pytest.raises(BasisError, match="unknown chemical symbol 'Xx'"):
        Basis({"Xx": "1s"})
    with pytest.raises(BasisError, match="element C is not in this basis"):
        Basis({"O": "1s"}).norb("C")
    with pytest.raises(BasisError, match="at least one element"):
        Basis({})
    with pytest.raises(BasisError, match="unknown orbital convention 'vasp'"):
        Basis({"O": "1p"}).converter("O", "vasp")
    with pytest.raises(ValueError, match="to must be"):
        Basis({"O": "1p"}).convert_block(np.eye(3), "O", "O", "pyscf", to="mine")


@pytest.mark.parametrize("convention", sorted(set(CONVENTIONS) - {"openmx"}))
@pytest.mark.parametrize("l", range(5))
def test_convention_matrices_are_orthogonal(convention, l):
    c = convention_matrix(l, convention)
    np.testing.assert_allclose(c @ c.T, np.eye(2 * l + 1), atol=1e-12)


def test_convert_block_round_trip():
    basis = Basis({"Fe": "1s1p1d1f", "O": "1s1p"})
    blk = np.random.default_rng(0).normal(size=(2, 16, 4))
    ours = basis.convert_block(blk, "Fe", "O", "abacus")
    np.testing.assert_allclose(basis.convert_block(ours, "Fe", "O", "abacus", to="theirs"), blk, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# spherical harmonics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("l", range(9))
def test_e3nn_harmonics_are_rotated_textbook_harmonics(l, float64_torch):
    pts = np.random.default_rng(l).normal(size=(50, 3))
    e3nn = o3.spherical_harmonics(l, torch.tensor(pts), normalize=True, normalization="integral").numpy()
    ours = real_spherical_harmonics(l, pts) @ textbook_to_e3nn(l).T
    np.testing.assert_allclose(e3nn, ours, atol=1e-10)


def test_textbook_harmonics_low_l_closed_forms():
    pts = np.random.default_rng(1).normal(size=(20, 3))
    x, y, z = (pts / np.linalg.norm(pts, axis=1, keepdims=True)).T
    c1 = np.sqrt(3 / (4 * np.pi))
    np.testing.assert_allclose(real_spherical_harmonics(1, pts), c1 * np.stack([y, z, x], 1), atol=1e-12)
    c2 = np.sqrt(15 / (4 * np.pi))
    y2 = real_spherical_harmonics(2, pts)
    np.testing.assert_allclose(y2[:, 0], c2 * x * y, atol=1e-12)
    np.testing.assert_allclose(y2[:, 4], c2 / 2 * (x**2 - y**2), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# PySCF: the converter is fixed by equivariance under rotations and reflections
# ---------------------------------------------------------------------------------------------
SYMBOLS = ["O", "N", "H"]
POSITIONS = np.array([[0.0, 0.0, 0.0], [1.21, 0.13, -0.05], [-0.4, 1.05, 0.3]])
PYSCF_BASIS = {"O": "cc-pvqz", "N": "cc-pvtz", "H": "cc-pvdz"}  # s..g on O, s..f on N


def _mol(pos):
    from pyscf import gto
    return gto.M(atom=[(s, tuple(p)) for s, p in zip(SYMBOLS, pos)], basis=PYSCF_BASIS, unit="Angstrom", verbose=0)


def _wigner(basis: Basis, q: np.ndarray) -> np.ndarray:
    """Block-diagonal e3nn Wigner-D of the whole molecule for the orthogonal matrix q."""
    qt = torch.tensor(q)
    blocks = [o3.Irrep(l, (-1) ** l).D_from_matrix(qt).numpy() for s in SYMBOLS for l in basis.shells(s)]
    return block_diag(*blocks)


@pytest.fixture(scope="module")
def pyscf_integrals():
    mol = _mol(POSITIONS)
    q = Rotation.random(random_state=7).as_matrix()
    out = {"basis": Basis.from_pyscf(mol), "q": q, "ref": {}, "rot": {}, "refl": {}}
    rotated, reflected = _mol(POSITIONS @ q.T), _mol(-POSITIONS @ q.T)
    for name in ("int1e_ovlp", "int1e_kin", "int1e_nuc"):
        out["ref"][name] = mol.intor(name)
        out["rot"][name] = rotated.intor(name)
        out["refl"][name] = reflected.intor(name)
    return out


def test_from_pyscf_reads_shells_up_to_g(pyscf_integrals):
    basis = pyscf_integrals["basis"]
    assert basis.as_strings() == {"O": "5s4p3d2f1g", "N": "4s3p2d1f", "H": "2s1p"}
    assert basis.name == ""  # a per-element basis dict has no single name
    assert sum(basis.orbital_counts(SYMBOLS)) == _mol(POSITIONS).nao


@pytest.mark.parametrize("integral", ["int1e_ovlp", "int1e_kin", "int1e_nuc"])
@pytest.mark.parametrize("mirror", [False, True])
def test_pyscf_operators_rotate_with_e3nn_wigner_matrices(pyscf_integrals, integral, mirror, float64_torch):
    basis, q = pyscf_integrals["basis"], pyscf_integrals["q"]
    qq = -q if mirror else q  # -q: a rotation times the inversion, det = -1
    conv = basis.structure_converter(SYMBOLS, "pyscf")
    o_ref = conv @ pyscf_integrals["ref"][integral] @ conv.T
    o_rot = conv @ pyscf_integrals["refl" if mirror else "rot"][integral] @ conv.T
    d = _wigner(basis, qq)
    labels = basis.orbital_table(SYMBOLS)
    err = np.abs(o_rot - d @ o_ref @ d.T)
    for l in range(5):  # per angular-momentum pair, so a failure names the l
        sel = labels["l"] == l
        assert err[np.ix_(sel, sel)].max() < 1e-8, f"l={l}"
    assert err.max() < 1e-8


@pytest.mark.parametrize("wrong", ["textbook", "siesta"])
def test_rotation_check_detects_a_wrong_convention(pyscf_integrals, wrong, float64_torch):
    """Reading PySCF's AOs with another code's order (p as y, z, x) or signs (odd m flipped) fails."""
    basis, q = pyscf_integrals["basis"], pyscf_integrals["q"]
    conv = basis.structure_converter(SYMBOLS, wrong)
    o_ref = conv @ pyscf_integrals["ref"]["int1e_ovlp"] @ conv.T
    o_rot = conv @ pyscf_integrals["rot"]["int1e_ovlp"] @ conv.T
    d = _wigner(basis, q)
    assert np.abs(o_rot - d @ o_ref @ d.T).max() > 1e-2


def test_from_pyscf_errors_and_cells():
    from pyscf import gto
    cart = gto.M(atom="O 0 0 0; H 0 0 1", basis="6-31g*", spin=1, cart=True, verbose=0)
    with pytest.raises(BasisError, match="Cartesian"):
        Basis.from_pyscf(cart)
    mixed = gto.M(atom="H 0 0 0; H 0 0 0.74", basis={"H": "sto-3g"}, verbose=0)
    mixed2 = gto.M(atom="H1 0 0 0; H2 0 0 0.74", basis={"H1": "sto-3g", "H2": "cc-pvdz"}, verbose=0)
    assert Basis.from_pyscf(mixed).as_strings() == {"H": "1s"}
    with pytest.raises(BasisError, match="different bases"):
        Basis.from_pyscf(mixed2)
    water = gto.M(atom="O 0 0 0; H 0 0.76 0.59; H 0 -0.76 0.59", basis="def2-svp", verbose=0)
    assert Basis.from_pyscf(water).as_strings() == {"O": "3s2p1d", "H": "2s1p"}
    assert Basis.from_pyscf(water).name == "def2-svp"
    from pyscf.pbc import gto as pbcgto
    cell = pbcgto.M(atom="Si 0 0 0; Si 1.3575 1.3575 1.3575", a=np.eye(3) * 5.43, basis="gth-dzvp-molopt-sr",
                    pseudo="gth-pbe", verbose=0)
    assert Basis.from_pyscf(cell).as_strings() == {"Si": "2s2p1d"}
