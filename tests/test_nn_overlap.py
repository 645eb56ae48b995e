"""The Slater–Koster overlap head reproduces real two-centre overlaps (PySCF, def2-SVP)."""

import numpy as np
import pytest
import torch

import pyscf  # noqa: F401  (the dft extra; a missing install fails here, not skips)
from pyscf import gto

from ase_slem.nn.overlap_head import SKOverlapHead
from ase_slem.nn.wigner import EdgeFrame


@pytest.fixture(autouse=True)
def _f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _overlap_block(direction, dist=1.1):
    from ase_slem.basis import Basis

    r = np.asarray(direction, float)
    r = r / np.linalg.norm(r) * dist
    mol = gto.M(atom=[["O", (0, 0, 0)], ["H", tuple(r)]], basis="def2-svp", unit="Angstrom", spin=1)
    basis = Basis.from_pyscf(mol)
    s = mol.intor("int1e_ovlp")
    no = basis.norb("O")
    c = basis.structure_converter(["O", "H"], "pyscf")
    s = c @ s @ c.T  # our orbital order
    return {k: list(basis.shells(k)) for k in ("O", "H")}, s[:no, no:], s[:no, :no], r


def test_overlap_is_diagonal_in_m_along_the_polar_axis_and_rotates():
    shells, s_y, s_oo, _ = _overlap_block([0, 1, 0])
    head = SKOverlapHead(shells, latent_dim=4)
    # along y every shell-pair sub-block is diagonal in m with equal +-m values
    i_off = np.cumsum([0] + [2 * l + 1 for l in shells["O"]])
    j_off = np.cumsum([0] + [2 * l + 1 for l in shells["H"]])
    for a, la in enumerate(shells["O"]):
        for b, lb in enumerate(shells["H"]):
            sub = s_y[i_off[a] : i_off[a] + 2 * la + 1, j_off[b] : j_off[b] + 2 * lb + 1]
            ref = np.zeros_like(sub)
            for m in range(-min(la, lb), min(la, lb) + 1):
                ref[la + m, lb + m] = sub[la + abs(m), lb + abs(m)]
            assert np.allclose(sub, ref, atol=1e-10), (a, b)
    # the head with the SK scalars read off s_y gives the overlap in any direction
    m_pad = head.max_norb
    pad = np.zeros((m_pad, m_pad))
    pad[: s_y.shape[0], : s_y.shape[1]] = s_y
    t = 0 * head.n_species + 1  # (O, H)
    idx = head.frame_index[t].numpy()
    sk = np.zeros(head.n_sk)
    sk[idx[idx < head.n_sk]] = pad.reshape(-1)[idx < head.n_sk]
    with torch.no_grad():
        last = head.mlp.net[-1]
        for p in head.mlp.parameters():
            p.zero_()
        last.bias.copy_(torch.tensor(sk))
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = rng.normal(size=3)
        _, s_ref, _, r = _overlap_block(d)
        frame = EdgeFrame(8)(torch.tensor(r).reshape(1, 3))
        out = head(torch.zeros(1, 4), torch.ones(1), frame, torch.tensor([0]), torch.tensor([1]))
        blk = out[0, : s_ref.shape[0], : s_ref.shape[1]].detach().numpy()
        assert np.allclose(blk, s_ref, atol=1e-10)
    # onsite constants from data reproduce the atomic overlap block
    head.set_onsite({0: torch.tensor(s_oo)})
    on = head.onsite(torch.tensor([0]))[0, : s_oo.shape[0], : s_oo.shape[0]].detach().numpy()
    assert np.allclose(on, s_oo, atol=1e-10)
