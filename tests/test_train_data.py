"""Training data: target gathering, batching as a disjoint graph, split, normalization, checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ase_slem.io.dataset import Frame
from ase_slem.operators import RealSpaceOperator
from ase_slem.train.checkpoint import build_model, default_dtype
from ase_slem.train.data import (BasisMismatchError, OperatorNormalizer, TrainingDataError, check_basis_matches,
                                 check_frames, collate, dataset_basis, gather_padded_blocks, make_sample,
                                 split_indices)

from _train_helpers import sk_silicon_frames

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def frames():
    return sk_silicon_frames(3, seed=10)


def samples_of(frames, r_bond=3.0, dtype=torch.float64):
    return [make_sample(f, f"f{k}", ["Si"], 4, 3.0, r_bond, ["hamiltonian", "overlap"], dtype)
            for k, f in enumerate(frames)]


def test_targets_are_the_operator_blocks(frames):
    fr = frames[0]
    s = samples_of([fr])[0]
    H = fr.operators["hamiltonian"]
    on, bd = s.targets["hamiltonian"]
    for a in range(len(fr.atoms)):
        assert np.array_equal(on[a].numpy(), H.block(a, a))
    e = s.bond_index[0]
    R = s.edge_shift[e].numpy() @ np.linalg.inv(fr.atoms.cell.array)
    for k in range(bd.shape[0]):
        i, j = int(s.bond_i[k]), int(s.bond_j[k])
        assert i <= j
        assert np.allclose(bd[k].numpy(), H.block(i, j, tuple(np.rint(R[k]).astype(int))), atol=0)
    # every block of the SK model (cutoff 3 Å) is covered by r_bond = 3 Å
    assert s.uncovered["hamiltonian"] == 0.0 and s.uncovered["overlap"] == 0.0
    assert bd.abs().max() > 0.1


def test_uncovered_blocks_and_absent_blocks(frames):
    fr = frames[0]
    short = samples_of([fr], r_bond=2.2)[0]  # drops the longer of the rattled bonds
    assert short.uncovered["hamiltonian"] > 0.01
    H = fr.operators["hamiltonian"]
    # a block the operator does not hold is a zero target
    blocks, unc = gather_padded_blocks(H, np.array([0]), np.array([0]), np.array([[3, 0, 0]]), 4)
    assert np.all(blocks == 0) and unc > 1.0


def test_collate_is_a_disjoint_union(frames):
    smp = samples_of(frames)
    batch = collate(smp)
    assert batch.n_atoms == [8, 8, 8]
    model = build_model(dict(basis={"Si": [0, 1]}, r_cut=3.0, channels=2, n_layers=1, latent_dim=8,
                             mlp_hidden=8, num_radial=4), "float64")
    out = model(*batch.inputs())
    a0 = b0 = 0
    for s in smp:
        ref = model(*s.inputs())
        n, p = s.positions.shape[0], s.bond_index.shape[1]
        for op in ("hamiltonian", "overlap"):
            assert torch.allclose(out[op + "_onsite"][a0 : a0 + n], ref[op + "_onsite"], atol=1e-12)
            assert torch.allclose(out[op + "_bond"][b0 : b0 + p], ref[op + "_bond"], atol=1e-12)
            assert torch.equal(batch.targets[op][1][b0 : b0 + p], s.targets[op][1])
        a0, b0 = a0 + n, b0 + p
    assert a0 == batch.positions.shape[0] and b0 == batch.bond_index.shape[1]


def test_split_is_fixed_by_seed_disjoint_and_nested():
    a = split_indices(50, [0.8, 0.1, 0.1], seed=3)
    assert a == split_indices(50, [0.8, 0.1, 0.1], seed=3)
    assert a != split_indices(50, [0.8, 0.1, 0.1], seed=4)
    train, val, test = a
    assert (len(train), len(val), len(test)) == (40, 5, 5)
    assert len(set(train) | set(val) | set(test)) == 50
    small = split_indices(50, [0.8, 0.1, 0.1], seed=3, train_fraction=0.2)
    assert small[1:] == (val, test) and small[0] == train[:8]
    assert split_indices(3, [0.8, 0.1, 0.1], seed=0)[0].__len__() == 1  # val and test get one each
    with pytest.raises(TrainingDataError, match="leave no training frame"):
        split_indices(2, [0.0001, 0.5, 0.5], seed=0)


def test_normalizer_statistics(frames):
    smp = samples_of(frames)
    with default_dtype(torch.float64):
        norm = OperatorNormalizer({"Si": [0, 1]})
    norm.fit(smp, "hamiltonian")
    # normalized targets: zero mean on the 0e channels, unit scale (rms) on each used channel
    on = torch.cat([s.targets["hamiltonian"][0] for s in smp])
    sp = torch.cat([s.species for s in smp])
    irr = norm.we_node.to_irreps(on, sp)
    ch = norm.node_channel
    z = (irr - norm.mu_node[sp][:, ch]) / norm.sigma_node[sp][:, ch]
    used = norm.we_node.component_mask[0]
    assert z[:, used].abs().max() < 1e3
    bd = torch.cat([s.targets["hamiltonian"][1] for s in smp])
    t = torch.zeros(bd.shape[0], dtype=torch.long)
    irr = norm.we_edge.to_irreps(bd, t)
    sig = norm.sigma_edge[0][norm.edge_channel]
    mu = norm.mu_edge[0][norm.edge_channel]
    z = (irr - mu) / sig
    used = norm.we_edge.component_mask[0]
    # rms over both bond directions is 1 per channel: check the overall scale
    assert 0.3 < float(z[:, used].square().mean().sqrt()) < 3.0
    assert sig[used].min() > 1e-3


def test_check_frames_names_the_bad_frame(frames):
    names = ["a", "b", "c"]
    bad = sk_silicon_frames(1, seed=20)[0]
    H = bad.operators["hamiltonian"]
    H.groups[0].data[0, 0, 0] = np.nan
    with pytest.raises(TrainingDataError, match=r"frame b: hamiltonian has NaN/inf values \(first in block"):
        check_frames([frames[0], bad, frames[1]], names, ["hamiltonian"])
    with pytest.raises(TrainingDataError, match="frame a has no density_matrix"):
        check_frames(frames, names, ["hamiltonian", "density_matrix"])
    other = sk_silicon_frames(1, seed=21)[0]
    other.settings = dict(other.settings, xc="pbe0")
    with pytest.raises(TrainingDataError, match="frame c was computed with xc = 'pbe0'"):
        check_frames([frames[0], frames[1], other], names, ["hamiltonian"])


def one_orbital_frame(atoms):
    """A frame whose Si carries a single s orbital (basis '1s')."""
    from ase_slem.basis import Basis

    basis = Basis({"Si": "1s"})
    n = len(atoms)
    mat = np.eye(n) + 0.1
    H = RealSpaceOperator.from_dense([1] * n, mat, periodic=True, name="hamiltonian", basis=basis)
    return Frame(atoms, {"hamiltonian": H, "overlap": H}, basis, {"code": "slater-koster"}, {})


def test_basis_checks(frames):
    odd = one_orbital_frame(frames[0].atoms)
    with pytest.raises(BasisMismatchError, match=r"frame y gives Si the shells \[0\], but frame x gives \[0, 1\]"):
        dataset_basis([frames[0], odd], ["x", "y"])
    with pytest.raises(BasisMismatchError, match=r"basis of Si differs: the dataset has 1s \(\[0\]\), the model 1s1p"):
        check_basis_matches({"Si": [0, 1]}, {"Si": [0]})
    with pytest.raises(BasisMismatchError, match="contains C, which the model does not know"):
        check_basis_matches({"Si": [0, 1]}, {"C": [0, 1]})
    assert dataset_basis(frames, ["a", "b", "c"]) == {"Si": [0, 1]}


def test_sigma_power_weights_channels_by_their_spread(frames):
    """sigma_power 0 is the normalized error; 1 is the error in eV over one common scale; 1/2
    lies between (geometric mean of the two)."""
    smp = samples_of(frames)
    with default_dtype(torch.float64):
        norm = OperatorNormalizer({"Si": [0, 1]})
    norm.fit(smp, "hamiltonian")
    s = smp[0]
    on, bd = s.targets["hamiltonian"]
    g = torch.Generator().manual_seed(0)
    p_on = on + 0.01 * torch.randn(on.shape, generator=g, dtype=on.dtype)
    p_bd = bd + 0.01 * torch.randn(bd.shape, generator=g, dtype=bd.dtype)
    si, sj = s.bond_species
    args = (p_on, on, s.species, p_bd, bd, si, sj)
    e0_on, m_on, e0_b, m_b = norm.normalized_errors(*args)
    e1_on, _, e1_b, _ = norm.normalized_errors(*args, sigma_power=1.0)
    eh_on, _, eh_b, _ = norm.normalized_errors(*args, sigma_power=0.5)
    ref = norm.reference_scale()
    # power 1: the plain irreps error in eV divided by the one reference scale
    t = si * norm.n_species + sj
    d_b = norm.we_edge.to_irreps(p_bd - bd, t)
    assert torch.allclose(e1_b * ref, d_b, atol=1e-12)
    assert torch.allclose(e1_on * ref, norm.we_node.to_irreps(p_on - on, s.species), atol=1e-12)
    # channels of different spread are weighted differently at power 1, not at power 0
    sig_b = norm.sigma_edge[0][norm.edge_channel]
    assert torch.allclose(e0_b * sig_b, d_b, atol=1e-12)
    assert float(sig_b[m_b[0]].max() / sig_b[m_b[0]].min()) > 1.5
    assert torch.allclose(eh_b.abs(), (e0_b.abs() * e1_b.abs()).sqrt(), atol=1e-12)
    assert ref > 0 and torch.isclose(ref, torch.cat([norm.sigma_node.flatten(), norm.sigma_edge.flatten()])[
        torch.cat([norm.sigma_node.flatten(), norm.sigma_edge.flatten()]) != 1.0].median())
