"""Wigner–Eckart map: orthogonality, round trip, equivariance; normalisation statistics."""

import pytest
import torch

import e3nn  # noqa: F401  (a core dependency)
from e3nn import o3  # noqa: E402

from ase_slem.nn.normalization import PairNormalization, irreps_statistics  # noqa: E402
from ase_slem.nn.wigner_eckart import (  # noqa: E402
    BlockIrrepsMap,
    block_to_irreps,
    cg_matrix,
    irreps_to_block,
    pair_irreps,
)


@pytest.fixture(autouse=True)
def _f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(1)
    yield
    torch.set_default_dtype(old)


def _d(l, q):
    return o3.Irrep(l, (-1) ** l).D_from_matrix(q)


@pytest.mark.parametrize("l1", range(5))
@pytest.mark.parametrize("l2", range(5))
def test_cg_map_orthogonal_roundtrip_equivariant(l1, l2):
    u = cg_matrix(l1, l2)
    n = (2 * l1 + 1) * (2 * l2 + 1)
    assert u.shape == (n, n)
    assert torch.allclose(u @ u.t(), torch.eye(n), atol=1e-12)
    blk = torch.randn(3, 2 * l1 + 1, 2 * l2 + 1)
    irr = block_to_irreps(blk, l1, l2)
    assert torch.allclose(irreps_to_block(irr, l1, l2), blk, atol=1e-12)
    assert torch.allclose(irr.norm(dim=1), blk.flatten(1).norm(dim=1), atol=1e-12)
    for det in (1, -1):
        q = o3.rand_matrix() * det
        rot = _d(l1, q) @ blk @ _d(l2, q).t()
        d_out = torch.block_diag(*[o3.Irrep(l3, p).D_from_matrix(q) for l3, p in pair_irreps(l1, l2)])
        assert torch.allclose(block_to_irreps(rot, l1, l2), irr @ d_out.t(), atol=1e-11)


def _atom_d(shells, q, m):
    d = torch.zeros(m, m)
    o = 0
    for l in shells:
        d[o : o + 2 * l + 1, o : o + 2 * l + 1] = _d(l, q)
        o += 2 * l + 1
    return d


@pytest.mark.parametrize("basis", [
    {"O": [0, 0, 0, 1, 1, 2], "H": [0, 0, 1]},
    {"A": [0, 1, 2, 3]},
    {"G": [0, 4], "P": [1]},
])
def test_block_map_roundtrip_and_equivariance(basis):
    edge = BlockIrrepsMap(basis)
    node = BlockIrrepsMap(basis, onsite=True)
    ns, m = edge.n_species, edge.max_norb
    mask = edge.orbital_mask
    t = torch.arange(ns * ns)
    si, sj = t // ns, t % ns
    blk = torch.randn(len(t), m, m) * mask[si][:, :, None] * mask[sj][:, None, :]
    irr = edge.to_irreps(blk, t)
    assert torch.allclose(edge.to_blocks(irr, t), blk, atol=1e-12)
    # onsite: symmetric blocks
    s = torch.arange(ns)
    on = torch.randn(ns, m, m) * mask[s][:, :, None] * mask[s][:, None, :]
    on = on + on.transpose(1, 2)
    assert torch.allclose(node.to_blocks(node.to_irreps(on, s), s), on, atol=1e-12)
    # arbitrary irreps give symmetric onsite blocks
    anyirr = torch.randn(ns, node.irreps.dim)
    ob = node.to_blocks(anyirr, s)
    assert torch.allclose(ob, ob.transpose(1, 2))
    # equivariance of the whole-block map
    q = -o3.rand_matrix()
    shells = edge.shells
    rot = torch.stack([_atom_d(shells[a], q, m) @ blk[k] @ _atom_d(shells[b], q, m).t()
                       for k, (a, b) in enumerate(zip(si.tolist(), sj.tolist()))])
    mats = []
    for mul, l, p in edge.irreps.blocks:
        mats += [o3.Irrep(l, p).D_from_matrix(q)] * mul
    d_irr = torch.block_diag(*mats)
    assert torch.allclose(edge.to_irreps(rot, t), irr @ d_irr.t(), atol=1e-11)


def test_pair_normalization_statistics():
    basis = {"O": [0, 0, 1, 2], "H": [0, 1]}
    edge = BlockIrrepsMap(basis)
    ns, m = edge.n_species, edge.max_norb
    n = 400
    t = torch.randint(0, ns * ns, (n,))
    irr = torch.randn(n, edge.irreps.dim) * 0.1
    comp_scalar = torch.tensor([l == 0 and p == 1 for ch, l, p, mm, b in edge.irreps.component_table()])
    irr = irr + 2.0 * comp_scalar
    irr = irr * edge.component_mask[t]
    mu, sigma = irreps_statistics(irr, t, edge.irreps, ns * ns, edge.component_mask)
    used_scalar = edge.component_mask[:, comp_scalar]
    assert torch.allclose(mu[:, : comp_scalar.sum()][used_scalar], torch.tensor(2.0), atol=0.1)
    norm = PairNormalization(edge.irreps, ns * ns)
    norm.set_statistics(mu, sigma)
    z = norm.inverse(irr, t)
    assert torch.allclose(norm(z, t), irr, atol=1e-12)
    used = edge.component_mask[t]
    assert abs(z[used].pow(2).mean().item() - 1.0) < 0.1
