"""Radius graph, layers and radial functions of the SLEM network."""

import numpy as np
import pytest
import torch

from ase import Atoms
from ase.build import bulk, molecule
from e3nn import o3

from ase_slem.nn.graph import build_graph
from ase_slem.nn.irreps import Irreps
from ase_slem.nn.layers import E3Linear, EquivariantLayerNorm, Gate
from ase_slem.nn.radial import BesselBasis, PolynomialEnvelope


@pytest.fixture(autouse=True)
def _f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(2)
    yield
    torch.set_default_dtype(old)


def test_graph_bulk_si():
    atoms = bulk("Si", "diamond", a=5.43)
    g = build_graph(atoms, ["Si"], r_cut=2.5)
    # 4 nearest neighbours (2.35 Å) per atom, both directions
    assert g.edge_index.shape[1] == 8
    vec = g.positions[g.edge_index[1]] + g.edge_shift - g.positions[g.edge_index[0]]
    assert torch.allclose(vec.norm(dim=1), torch.full((8,), 5.43 * np.sqrt(3) / 4))
    assert torch.allclose(g.edge_shift, g.cell_shift.to(torch.float64) @ g.cell)
    fwd, rev = g.bond_index
    assert len(fwd) == 4  # one triangle
    assert torch.equal(g.edge_index[0, rev], g.edge_index[1, fwd])
    assert torch.equal(g.edge_index[1, rev], g.edge_index[0, fwd])
    assert torch.equal(g.cell_shift[rev], -g.cell_shift[fwd])
    i, j, R = g.bonds
    assert np.all((i < j) | ((i == j) & (R[:, 0] > 0)))
    # self images appear once with a larger cutoff
    g2 = build_graph(atoms, ["Si"], r_cut=4.0, r_bond=3.9)
    i, j, R = g2.bonds
    keys = {(a, b, tuple(r)) for a, b, r in zip(i, j, R)}
    assert all((b, a, tuple(-np.array(r))) not in keys for a, b, r in keys)
    d = np.linalg.norm((g2.positions[j] + torch.tensor(R, dtype=torch.float64) @ g2.cell
                        - g2.positions[i]).numpy(), axis=1)
    assert d.max() <= 3.9


def test_graph_molecule_and_errors():
    atoms = molecule("H2O")
    g = build_graph(atoms, ["O", "H"], r_cut=3.0)
    assert g.edge_index.shape[1] == 6 and g.bond_index.shape[1] == 3
    assert torch.all(g.cell_shift == 0)
    with pytest.raises(ValueError, match="not in the model"):
        build_graph(atoms, ["O"], r_cut=3.0)
    bad = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.01]])
    with pytest.raises(ValueError, match="overlapping"):
        build_graph(bad, ["H"], r_cut=3.0)
    with pytest.raises(ValueError, match="cell"):
        build_graph(Atoms("H", pbc=True), ["H"], r_cut=3.0)


def _d(irreps, q):
    mats = []
    for mul, l, p in irreps.blocks:
        mats += [o3.Irrep(l, p).D_from_matrix(q)] * mul
    return torch.block_diag(*mats)


def test_layers_equivariant():
    hidden = Irreps.full(3, 3)
    gate = Gate(hidden)
    lin = E3Linear(Irreps([(2, 1, -1), (3, 0, 1), (1, 2, 1), (2, 0, -1)]), hidden)
    norm = EquivariantLayerNorm(hidden)
    with torch.no_grad():
        lin.bias.normal_()
        norm.bias.normal_()
        norm.weight.normal_()
    q = -o3.rand_matrix()
    x = torch.randn(5, gate.irreps_in.sorted().dim)
    gi = gate.irreps_in.sorted()
    assert torch.allclose(gate(x @ _d(gi, q).t()), gate(x) @ _d(hidden, q).t(), atol=1e-12)
    y = torch.randn(5, lin.irreps_in.dim)
    assert torch.allclose(lin(y @ _d(lin.irreps_in, q).t()), lin(y) @ _d(hidden, q).t(), atol=1e-12)
    z = torch.randn(5, hidden.dim)
    assert torch.allclose(norm(z @ _d(hidden, q).t()), norm(z) @ _d(hidden, q).t(), atol=1e-12)
    # missing (l, p) in the input gives zeros, e.g. 3o
    assert lin(y)[:, -7 * 3 :].abs().max() == 0


def test_radial_and_envelope():
    rc = 4.0
    env = PolynomialEnvelope(rc)
    r = torch.linspace(0.01, 5.0, 200, requires_grad=True)
    u = env(r)
    assert u[0] > 0.99 and torch.all(u[r > rc] == 0)
    # value and slope vanish at the cutoff (u ~ (rc - r)^3)
    r1 = torch.tensor([rc * (1 - 1e-3)], requires_grad=True)
    (du,) = torch.autograd.grad(env(r1).sum(), r1)
    assert env(r1).item() < 1e-6 and abs(du.item()) < 1e-4
    b = BesselBasis(rc, 6)
    assert b(r).shape == (200, 6) and b.k.requires_grad
