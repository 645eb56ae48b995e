"""SLEM model: equivariance (rotations and reflections), invariances, Hermiticity,
strict locality, LEM, TorchScript."""

import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn import o3  # a required dependency: a missing e3nn must fail, not skip

from ase_slem.nn.graph import build_graph
from ase_slem.nn.slem import SLEM

OPS = ("hamiltonian", "overlap", "density_matrix")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(3)
    yield
    torch.set_default_dtype(old)


def small_model(basis, r_cut=3.0, channels=2, n_layers=2, **kw):
    kw.setdefault("latent_dim", 8)
    kw.setdefault("mlp_hidden", 8)
    kw.setdefault("num_radial", 4)
    m = SLEM(basis, r_cut=r_cut, channels=channels, n_layers=n_layers, **kw)
    # make the normalisation non-trivial so that it is covered by the checks
    for head in m.heads:
        for norm in (head.norm_node, head.norm_edge):
            norm.sigma.uniform_(0.5, 2.0)
            norm.mu.normal_()
    return m


def run(model, atoms, r_bond=None):
    g, out = model.predict(atoms, r_bond=r_bond)
    return g, out


def blocks_by_key(g, out, op):
    """{(i, j, R): block} for onsite and bonds, unpadded by the orbital mask."""
    i, j, s = g.bonds
    res = {}
    bonds = out[op + "_bond"].detach()
    for k in range(len(i)):
        res[(int(i[k]), int(j[k]), tuple(int(x) for x in s[k]))] = bonds[k]
    for a in range(g.positions.shape[0]):
        res[(a, a, (0, 0, 0))] = out[op + "_onsite"][a].detach()
    return res


def atom_wigner(model, species, q):
    """Padded block-diagonal D(Q) of every atom, (N, M, M)."""
    shells = model.overlap.shells
    m = model.max_norb
    out = torch.zeros(len(species), m, m)
    for a, s in enumerate(species.tolist()):
        o = 0
        for l in shells[s]:
            out[a, o : o + 2 * l + 1, o : o + 2 * l + 1] = o3.Irrep(l, (-1) ** l).D_from_matrix(q)
            o += 2 * l + 1
    return out


def cluster(symbols, seed=0, spread=1.6):
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(len(symbols), 3)) * spread
    # keep atoms apart
    for _ in range(200):
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(pos)) * 10
        if d.min() > 1.0:
            break
        pos = pos * 1.1
    return Atoms(symbols, positions=pos)


def periodic(symbols, seed=0):
    rng = np.random.default_rng(seed)
    cell = np.diag([3.1, 3.4, 3.7]) + rng.normal(scale=0.2, size=(3, 3))
    frac = rng.uniform(size=(len(symbols), 3))
    return Atoms(symbols, scaled_positions=frac, cell=cell, pbc=True)


def check_equivariance(model, atoms, tol=1e-10):
    g, out = run(model, atoms)
    assert g.bond_index.shape[1] > 0
    for det in (1, -1):
        q = torch.tensor(o3.rand_matrix().numpy() * det)
        rot = atoms.copy()
        rot.positions = atoms.positions @ q.numpy().T
        if atoms.pbc.any():
            rot.cell = atoms.cell.array @ q.numpy().T
        g2, out2 = run(model, rot)
        assert torch.equal(g2.edge_index, g.edge_index)
        d = atom_wigner(model, g.species, q)
        i, j = g.bonds[0], g.bonds[1]
        for op in OPS:
            ref_on = d @ out[op + "_onsite"] @ d.transpose(1, 2)
            ref_b = d[i] @ out[op + "_bond"] @ d[j].transpose(1, 2)
            scale = max(out[op + "_bond"].abs().max().item(), 1e-3)
            assert (out2[op + "_onsite"] - ref_on).abs().max().item() < tol * max(scale, 1.0), op
            assert (out2[op + "_bond"] - ref_b).abs().max().item() < tol * max(scale, 1.0), op
            # padding stays zero
            mask = model.orbital_mask[g.species]
            pad = ~(mask[i][:, :, None] & mask[j][:, None, :])
            assert out2[op + "_bond"][pad].abs().max().item() == 0.0 if pad.any() else True


def test_equivariance_spdf_two_species():
    model = small_model({"C": [0, 1, 2, 3], "H": [0, 1]}, r_cut=3.2)
    check_equivariance(model, cluster(["C", "H", "C", "H", "C"], seed=1))


def test_equivariance_spdf_periodic():
    model = small_model({"C": [0, 1, 2, 3]}, r_cut=2.6, n_layers=1)
    check_equivariance(model, periodic(["C", "C"], seed=2))


def test_equivariance_g_orbitals():
    model = small_model({"Hf": [0, 4], "O": [0]}, r_cut=3.2, channels=1, n_layers=1)
    check_equivariance(model, cluster(["Hf", "O", "Hf", "O"], seed=4))


def test_translation_and_permutation_invariance():
    model = small_model({"C": [0, 1, 2], "H": [0, 1]}, r_cut=2.8)
    atoms = periodic(["C", "H", "C", "H"], seed=5)
    g, out = run(model, atoms)
    shifted = atoms.copy()
    shifted.positions += np.array([0.37, -1.1, 2.3])
    g2, out2 = run(model, shifted)
    assert torch.equal(g.edge_index, g2.edge_index) and torch.equal(g.cell_shift, g2.cell_shift)
    for op in OPS:
        for key in ("_onsite", "_bond"):
            assert torch.allclose(out[op + key], out2[op + key], atol=1e-11)
    perm = np.array([2, 0, 3, 1])
    permuted = atoms[perm]
    g3, out3 = run(model, permuted)
    inv = np.argsort(perm)  # new index of old atom
    for op in OPS:
        ref = blocks_by_key(g, out, op)
        new = blocks_by_key(g3, out3, op)
        assert len(ref) == len(new)
        for (i, j, s), blk in ref.items():
            key = (int(inv[i]), int(inv[j]), s)
            if key in new:
                other = new[key]
            else:
                other = new[(int(inv[j]), int(inv[i]), tuple(-x for x in s))].t()
            assert torch.allclose(blk, other, atol=1e-11), (op, i, j, s)


def test_hermiticity_both_directions():
    model = small_model({"C": [0, 1, 2], "H": [0, 1]}, r_cut=2.8)
    atoms = periodic(["C", "H", "C"], seed=6)
    g = build_graph(atoms, model.symbols, model.r_cut)
    # ask for every directed edge: both (i, j, R) and (j, i, -R) are predicted
    rev = {}
    e = g.edge_index
    s = g.cell_shift
    for k in range(e.shape[1]):
        rev[(int(e[0, k]), int(e[1, k]), tuple(s[k].tolist()))] = k
    r = [rev[(int(e[1, k]), int(e[0, k]), tuple((-s[k]).tolist()))] for k in range(e.shape[1])]
    both = torch.stack([torch.arange(e.shape[1]), torch.tensor(r)])
    out = model(g.positions, g.species, g.edge_index, g.edge_shift, both)
    for op in OPS:
        b = out[op + "_bond"]
        assert torch.allclose(b[both[1]], b.transpose(1, 2), atol=1e-13)
        o = out[op + "_onsite"]
        assert torch.allclose(o, o.transpose(1, 2), atol=1e-13)
    # the triangle used by default agrees with the full prediction
    out_tri = model(g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index)
    for op in OPS:
        assert torch.allclose(out_tri[op + "_bond"], out[op + "_bond"][g.bond_index[0]], atol=1e-13)


def _chain(x4=6.0, y4=0.0, x3=4.0):
    pos = [[0.0, 0.0, 0.0], [2.0, 0.3, 0.0], [x3, 0.0, 0.4], [x4, y4, 0.0]]
    return Atoms(["C", "H", "C", "H"], positions=pos)


def test_strict_locality():
    """Block (0, 1) depends only on atoms within r_cut of atom 0 or atom 1.

    Chain 0 - 1 - 2 - 3 with r_cut = 2.5: atom 3 is a neighbour of 2, which is a neighbour
    of 1, but is farther than r_cut from 0 and 1.
    """
    model = small_model({"C": [0, 1, 2], "H": [0, 1]}, r_cut=2.5, n_layers=3)

    def block01(atoms):
        g, out = run(model, atoms)
        i, j, _ = g.bonds
        k = int(np.nonzero((i == 0) & (j == 1))[0][0])
        return {op: out[op + "_bond"][k] for op in OPS}, {op: out[op + "_onsite"][0] for op in OPS}

    ref, ref_on = block01(_chain())
    far, far_on = block01(_chain(x4=5.9, y4=0.8))  # atom 3 moves, stays far from 0 and 1
    near, _ = block01(_chain(x3=3.8))  # atom 2 (neighbour of 1) moves
    for op in OPS:
        assert torch.equal(ref[op], far[op]), op
        assert torch.equal(ref_on[op], far_on[op]), op
    for op in ("hamiltonian", "density_matrix"):
        assert (ref[op] - near[op]).abs().max() > 1e-6, op
    # the overlap is two-centre: it must not see atom 2 either
    assert torch.equal(ref["overlap"], near["overlap"])


def test_lem_semilocal_and_equivariant():
    model = small_model({"C": [0, 1, 2], "H": [0, 1]}, r_cut=2.5, lem=True, r_max=4.5)
    g, out = run(model, _chain(), r_bond=2.5)
    g2, out2 = run(model, _chain(x4=5.9, y4=0.8), r_bond=2.5)
    i, j, _ = g.bonds
    k = int(np.nonzero((i == 0) & (j == 1))[0][0])
    # atom 3 is within r_max of atom 1: its influence is damped but not cut
    assert (out["hamiltonian_bond"][k] - out2["hamiltonian_bond"][k]).abs().max() > 0
    assert all(np.linalg.norm(g.positions[j_] - g.positions[i_]) <= 2.5 + 1e-9
               for i_, j_ in zip(i, j))
    check_equivariance(model, cluster(["C", "H", "C"], seed=7))


def test_torchscript_matches_eager():
    model = small_model({"Si": [0, 0, 1, 1, 2]}, r_cut=2.6, n_layers=1)
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=1)
    g, out = run(model, atoms)
    scripted = torch.jit.script(model)
    out2 = scripted(g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index)
    assert set(out) == set(out2)
    for k in out:
        assert torch.allclose(out[k], out2[k], atol=1e-12), k


def test_edge_chunks_give_the_same_blocks_eager_and_scripted():
    """edge_chunk splits each layer's per-edge work into runs (a cache bound for big cells);
    the node sums and every block must not change."""
    from ase.build import bulk

    model = small_model({"Si": [0, 0, 1, 1, 2]}, r_cut=3.9, n_layers=2)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=2)
    g, whole = run(model, atoms)
    n_edge, n_bond = g.edge_index.shape[1], g.bond_index.shape[1]
    scripted = torch.jit.script(model)
    for chunk in (1, 7, n_edge - 1, 2 * n_edge):
        model.edge_chunk = chunk
        _, eager = run(model, atoms)
        scripted.edge_chunk = chunk
        script = scripted(g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index)
        for k in whole:
            assert torch.allclose(whole[k], eager[k], atol=1e-12), (k, chunk)
            assert torch.allclose(whole[k], script[k], atol=1e-12), (k, chunk)
    assert n_edge > 7 and 2 * n_bond > 7  # several runs of edges and of bond edges were used


def test_float32_default():
    torch.set_default_dtype(torch.float32)
    model = SLEM({"C": [0, 1]}, r_cut=3.0, channels=2, n_layers=1, latent_dim=8, mlp_hidden=8)
    g, out = model.predict(cluster(["C", "C", "C"], seed=8))
    assert all(v.dtype == torch.float32 for v in out.values())


def test_isolated_atom_and_no_bonds():
    model = small_model({"C": [0, 1, 2]}, r_cut=2.0)
    g, out = model.predict(Atoms(["C", "C"], positions=[[0, 0, 0], [0, 0, 5.0]]))
    assert out["hamiltonian_bond"].shape == (0, model.max_norb, model.max_norb)
    assert out["hamiltonian_onsite"].shape == (2, model.max_norb, model.max_norb)
    assert torch.allclose(out["overlap_onsite"][0][:9, :9], torch.eye(9))


def test_outputs_to_operators():
    from ase_slem import operators as ops_mod
    from ase_slem.nn.slem import outputs_to_operators

    model = small_model({"C": [0, 1, 2], "H": [0, 1]}, r_cut=2.8, n_layers=1)
    atoms = periodic(["C", "H", "C"], seed=9)
    g, out = model.predict(atoms)
    ops = outputs_to_operators(model, g, out, atoms)
    assert set(ops) == set(OPS)
    h = ops["hamiltonian"]
    assert isinstance(h, ops_mod.RealSpaceOperator)
    i, j, R = g.bonds
    k = 0
    ni, nj = h.orbital_counts[i[k]], h.orbital_counts[j[k]]
    assert np.allclose(h.block(int(i[k]), int(j[k]), tuple(R[k])),
                       out["hamiltonian_bond"][k, :ni, :nj].detach().numpy())
    assert np.allclose(h.block(int(j[k]), int(i[k]), tuple(-R[k])),
                       out["hamiltonian_bond"][k, :ni, :nj].detach().numpy().T)


def test_gated_head_branch_is_equivariant_scriptable_and_lifts_the_rank_bound():
    """head_channels adds E3Linear -> Gate -> E3Linear beside each head's linear map; with
    the branch switched on (non-zero output weights) the blocks stay equivariant under
    rotations and reflections, TorchScript agrees, and the onsite 0e irreps of a 3s2p1d atom
    (10 of them from 2 hidden 0e channels) are no longer confined to a 2-dim affine subspace."""
    basis = {"O": [0, 0, 0, 1, 1, 2], "H": [0, 0, 1]}

    def switched_on(**kw):
        m = small_model(basis, r_cut=3.2, **kw)
        for head in m.heads:
            for branch in [*head.branch_node, *head.branch_edge]:
                assert float(branch.lin_out.weight.detach().abs().max()) == 0.0  # a new branch starts at zero
                with torch.no_grad():
                    branch.lin_out.weight.normal_()
                    branch.lin_out.bias.normal_()
        return m

    model = switched_on(head_channels=3)
    check_equivariance(model, cluster(["O", "H", "H", "O", "H"], seed=5))
    g, out = run(model, cluster(["O", "H", "O", "H", "O", "H", "O"], seed=6))
    scripted = torch.jit.script(model)
    out2 = scripted(g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index)
    for k in out:
        assert torch.allclose(out[k], out2[k], atol=1e-12), k
    # rank of the O onsite 0e irreps of H over many water-like clusters, without and with the branch
    ranks = []
    for m in (small_model(basis, r_cut=3.2, n_layers=1), switched_on(head_channels=4, n_layers=1)):
        we = m.heads[0].we_node
        n0e = we.irreps.mul_of(0, 1)
        rows = []
        for seed in range(40):
            g, out = run(m, cluster(["O", "H", "H"], seed=100 + seed, spread=1.2))
            irr = we.to_irreps(out["hamiltonian_onsite"], g.species)
            rows.append(irr[g.species == 0, :n0e])
        a = torch.cat(rows).detach()
        ranks.append(int(torch.linalg.matrix_rank(a - a.mean(0), rtol=1e-9)))
    assert n0e == 10 and ranks[0] <= 2 < ranks[1], ranks
    # the bound a training run reports: 3s2p1d pairs need 14 0e and 16 1o irreps
    bound = dict(model.heads[0].rank_bound(8))
    assert bound["0e"] == 14 and bound["1o"] == 16 and model.heads[0].rank_bound(16) == []
