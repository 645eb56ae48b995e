"""SO(2) convolution: equivalence with a Clebsch–Gordan product, equivariance, frames."""

import math

import pytest
import torch

import e3nn  # a core dependency
from e3nn import o3  # noqa: E402

from ase_slem.nn.irreps import Irreps  # noqa: E402
from ase_slem.nn.so2 import SO2Conv  # noqa: E402
from ase_slem.nn.wigner import EdgeFrame, from_frame, sh_from_wigner, to_frame, unpack_wigner, wigner_d  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def _irrep_D(irreps: Irreps, q: torch.Tensor) -> torch.Tensor:
    mats = []
    for mul, l, p in irreps.blocks:
        d = o3.Irrep(l, p).D_from_matrix(q)
        mats += [d] * mul
    return torch.block_diag(*mats)


def test_frames_match_e3nn():
    lmax = 8
    vec = torch.randn(7, 3)
    vec[0] = torch.tensor([0.0, 2.0, 0.0])  # on the polar axis
    vec[1] = torch.tensor([0.0, -1.0, 0.0])
    ds = unpack_wigner(EdgeFrame(lmax)(vec), lmax)
    a, b = o3.xyz_to_angles(vec)
    for l in range(lmax + 1):
        ref = o3.wigner_D(l, a, b, torch.zeros_like(a))
        assert torch.allclose(ds[l], ref, atol=1e-12)
        y = o3.spherical_harmonics(l, vec, normalize=True, normalization="component")
        assert torch.allclose(sh_from_wigner(ds[l], l), y, atol=1e-12)
    # the element-wise reference construction agrees
    fr = EdgeFrame(lmax)
    t = fr.tables(vec)
    for l in (1, 4, 8):
        assert torch.allclose(wigner_d(t, fr.K, l, lmax), ds[l], atol=1e-12)
        x = torch.randn(7, 3, 2 * l + 1)
        assert torch.allclose(from_frame(to_frame(x, t, fr.K, l, lmax), t, fr.K, l, lmax), x, atol=1e-12)
        assert torch.allclose(to_frame(x, t, fr.K, l, lmax), x @ ds[l], atol=1e-12)


def _frame_matrix(l1: int, l2: int, l3: int) -> torch.Tensor:
    """(2l3+1, 2l1+1) matrix of x -> (x (x) Y_l2(y_hat))_l3 with e3nn's wigner_3j."""
    c = o3.wigner_3j(l1, l2, l3)  # (m1, m2, m3)
    y = torch.zeros(2 * l2 + 1)
    y[l2] = math.sqrt(2 * l2 + 1)  # Y_l2 along the polar axis (component norm.)
    return torch.einsum("abc,b->ca", c, y)


@pytest.mark.parametrize("l1,p1,l3,p3", [(0, 1, 2, 1), (1, -1, 1, -1), (1, -1, 1, 1), (2, 1, 3, -1),
                                         (3, -1, 2, 1), (2, 1, 2, -1), (4, 1, 4, 1), (3, 1, 4, -1)])
def test_so2_equals_cg_product(l1, p1, l3, p3):
    """SO(2) conv with weights mapped from per-l2 path weights == explicit CG product.

    Mapping: A = sum_l2 w_l2 M_l2 with M_l2[m3, m1] = sqrt(2l2+1) C[m1, 0, m3];
    W1_m = A[+m, +m], W2_m = A[-m, +m] (W1_0 = A[0, 0]).
    """
    allowed = [l2 for l2 in range(abs(l1 - l3), l1 + l3 + 1) if p1 * (-1) ** l2 == p3]
    w_path = torch.randn(len(allowed))
    a = sum(w * _frame_matrix(l1, l2, l3) for w, l2 in zip(w_path, allowed))
    # structure of A: SO(2) form, zero elsewhere
    for m3 in range(-l3, l3 + 1):
        for m1 in range(-l1, l1 + 1):
            if abs(m1) != abs(m3):
                assert abs(a[l3 + m3, l1 + m1]) < 1e-12
    for m in range(1, min(l1, l3) + 1):
        assert torch.isclose(a[l3 + m, l1 + m], a[l3 - m, l1 - m], atol=1e-12)
        assert torch.isclose(a[l3 + m, l1 - m], -a[l3 - m, l1 + m], atol=1e-12)

    conv = SO2Conv(Irreps([(1, l1, p1)]), Irreps([(1, l3, p3)]))
    with torch.no_grad():
        conv.weight.zero_()
        for m in range(min(l1, l3) + 1):
            w1, w2 = conv.weights(m)
            w1[0, 0] = a[l3 + m, l1 + m]
            if m > 0:
                w2[0, 0] = a[l3 - m, l1 + m]
    n = 6
    vec = torch.randn(n, 3)
    x = torch.randn(n, 2 * l1 + 1)
    frame = EdgeFrame(conv.lmax_frame)(vec)
    out = conv(x, frame, None)
    ref = 0
    for w, l2 in zip(w_path, allowed):
        y = o3.spherical_harmonics(l2, vec, normalize=True, normalization="component")
        ref = ref + w * torch.einsum("abc,na,nb->nc", o3.wigner_3j(l1, l2, l3), x, y)
    assert torch.allclose(out, ref, atol=1e-12)
    # masked (forbidden-parity) weights really are zero in effect
    n_free = sum(1 for m in range(min(l1, l3) + 1) for _ in ((0,) if m == 0 else (0, 1)))
    assert n_free == 2 * min(l1, l3) + 1


def test_so2_equivariance_rotations_and_reflections():
    irr_in = Irreps([(3, 0, 1), (2, 0, -1), (2, 1, -1), (2, 1, 1), (2, 2, 1), (1, 3, -1), (1, 4, 1),
                     (2, 2, -1)])  # deliberately unsorted
    irr_out = Irreps.full(5, 2)
    conv = SO2Conv(irr_in, irr_out)
    n = 5
    vec = torch.randn(n, 3)
    x = torch.randn(n, irr_in.dim)
    ew = torch.randn(n, irr_in.num_channels)
    fr = EdgeFrame(conv.lmax_frame)
    y = conv(x, fr(vec), ew)
    for det in (1, -1):
        q = o3.rand_matrix() * det
        y2 = conv(x @ _irrep_D(irr_in, q).t(), fr(vec @ q.t()), ew)
        assert torch.allclose(y2, y @ _irrep_D(conv.irreps_out, q).t(), atol=1e-10)


def test_so2_scriptable():
    conv = SO2Conv(Irreps.full(2, 2), Irreps.full(3, 2))
    scripted = torch.jit.script(conv)
    vec = torch.randn(4, 3)
    x = torch.randn(4, conv.irreps_in.dim)
    fr = EdgeFrame(conv.lmax_frame)(vec)
    assert torch.allclose(scripted(x, fr, None), conv(x, fr, None), atol=1e-12)


def test_edge_weights_act_per_input_channel():
    irr_in = Irreps([(2, 1, -1), (1, 0, 1), (2, 1, 1), (1, 2, -1), (3, 0, -1)])  # unsorted
    conv = SO2Conv(irr_in, Irreps.full(2, 2))
    n = 4
    vec = torch.randn(n, 3)
    x = torch.randn(n, irr_in.dim)
    ew = torch.randn(n, irr_in.num_channels)
    ch = torch.tensor([r[0] for r in irr_in.component_table()])
    frame = EdgeFrame(conv.lmax_frame)(vec)
    assert torch.allclose(conv(x, frame, ew), conv(x * ew[:, ch], frame, None), atol=1e-12)


def test_multi_part_input_equals_concatenation():
    a = Irreps([(2, 0, 1), (1, 1, -1), (2, 2, 1)])
    b = Irreps([(1, 0, -1), (2, 1, 1), (1, 1, -1), (1, 3, -1)])
    conv = SO2Conv(a + b, Irreps.full(3, 2), parts=[a, b])
    ref = SO2Conv(a + b, Irreps.full(3, 2))
    n = 5
    vec = torch.randn(n, 3)
    xa, xb = torch.randn(n, a.dim), torch.randn(n, b.dim)
    ew = torch.randn(n, a.num_channels + b.num_channels)
    frame = EdgeFrame(conv.lmax_frame)(vec)
    y = conv.forward_parts([xa, xb], frame, ew)
    assert torch.allclose(y, conv(torch.cat([xa, xb], 1), frame, ew), atol=1e-12)
    q = -o3.rand_matrix()
    frame_rot = EdgeFrame(conv.lmax_frame)(vec @ q.t())
    y2 = conv.forward_parts([xa @ _irrep_D(a, q).t(), xb @ _irrep_D(b, q).t()], frame_rot, ew)
    assert torch.allclose(y2, y @ _irrep_D(conv.irreps_out, q).t(), atol=1e-10)
    assert conv.weight.numel() == ref.weight.numel()
