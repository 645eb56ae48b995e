"""Edge frames: the rotation that takes e3nn's polar axis (y) onto an edge direction.

For an edge direction ``r_hat`` with e3nn angles ``(alpha, beta)`` (``o3.xyz_to_angles``),
``R = R_y(alpha) R_x(beta)`` maps ``y`` to ``r_hat``.  Its Wigner matrix of degree l is
factorised as

    D_l(R) = Y_l(alpha) K_l Y_l(beta) K_l^T

with ``Y_l(t)`` the rotation about y (in e3nn's real basis it only couples m with -m:
``(Y v)_m = cos(m t) v_m - sin(m t) v_{-m}``) and ``K_l`` the constant Wigner matrix of a
fixed rotation Q with ``Q y = x``, so that ``R_x(b) = Q R_y(b) Q^T``.  :class:`EdgeFrame`
builds ``M_l(beta) = K_l Y_l(beta) K_l^T`` as one GEMM of the (cos m beta, sin m beta) table
with a constant matrix, then applies ``Y_l(alpha)`` row-wise: O(l^3) per edge, done once
per forward pass and shared by every convolution and the overlap head.  Rotating features
is then one batched product per l.  ``to_frame``/``from_frame``/``wigner_d`` are the
element-wise reference construction (tests check both agree with e3nn).

The edge frame is unique up to a rotation about the edge axis; every operation done in the
frame (SO(2) convolution, Slater-Koster blocks) commutes with those, so results do not
depend on that choice.
"""


import math
from typing import List

import torch
from torch import Tensor


def _constant_k(lmax: int, dtype=torch.float64) -> Tensor:
    """K_l = D_l(Q) for all l <= lmax, zero padded to (lmax+1, 2lmax+1, 2lmax+1)."""
    from e3nn import o3

    q = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    n = 2 * lmax + 1
    k = torch.zeros(lmax + 1, n, n, dtype=torch.float64)
    for l in range(lmax + 1):
        k[l, : 2 * l + 1, : 2 * l + 1] = o3.Irrep(l, 1).D_from_matrix(q)
    return k.to(dtype)


def edge_angles(vec: Tensor):
    """e3nn angles (alpha, beta) of edge vectors ``(E, 3)`` (any length > 0).

    ``beta`` uses atan2 (stable near the poles), same values as ``o3.xyz_to_angles``.
    """
    x, y, z = vec[:, 0], vec[:, 1], vec[:, 2]
    alpha = torch.atan2(x, z)
    beta = torch.atan2(torch.sqrt(x * x + z * z), y)
    return alpha, beta


class EdgeFrame(torch.nn.Module):
    """Per-edge Wigner matrices of the rotation taking y onto each edge direction.

    ``EdgeFrame(lmax)(vec)`` returns the packed tensor ``(E, sum_l (2l+1)^2)``: for
    l = 0..lmax the row-major ``D_l(R_edge)``.  Computed once per forward pass and shared
    by every SO(2) convolution (rotating features is then one batched product per l).
    :meth:`tables` gives the cos/sin tables ``(E, 4, 2 lmax + 1)`` (cos(m alpha),
    sin(m alpha), cos(m beta), sin(m beta), m = -lmax..lmax) used to build them.
    """

    b_offsets: List[int]

    lmax: int

    def __init__(self, lmax: int):
        super().__init__()
        self.lmax = int(lmax)
        dt = torch.get_default_dtype()
        k64 = _constant_k(self.lmax, torch.float64)
        self.register_buffer("K", k64.to(dt))
        self.register_buffer("m_values", torch.arange(-self.lmax, self.lmax + 1, dtype=dt))
        # M_l(beta) = K Y(beta) K^T = sum_m cos(m b) P_m - sin(m b) Q_m with
        # P_m[a, b] = K[a, m] K[b, m] and Q_m[a, b] = K[a, m] K[b, flip(m)]: one GEMM per l
        # of the (cos, sin) table with the constant [P; -Q].
        mats: List[Tensor] = []
        self.b_offsets = []
        off = 0
        for l in range(self.lmax + 1):
            n = 2 * l + 1
            k = k64[l, :n, :n]
            pm = torch.einsum("am,bm->mab", k, k).reshape(n, n * n)
            qm = torch.einsum("am,bm->mab", k, k.flip(1)).reshape(n, n * n)
            mats.append(torch.cat([pm, -qm], dim=0).flatten())
            self.b_offsets.append(off)
            off += 2 * n * n * n
        self.register_buffer("B", torch.cat(mats).to(dt))

    def tables(self, vec: Tensor) -> Tensor:
        alpha, beta = edge_angles(vec)
        ma = alpha[:, None] * self.m_values
        mb = beta[:, None] * self.m_values
        return torch.stack([torch.cos(ma), torch.sin(ma), torch.cos(mb), torch.sin(mb)], dim=1)

    def forward(self, vec: Tensor) -> Tensor:
        alpha, beta = edge_angles(vec)
        ma = alpha[:, None] * self.m_values
        mb = beta[:, None] * self.m_values
        ca = torch.cos(ma).unsqueeze(2)
        sa = torch.sin(ma).unsqueeze(2)
        cb = torch.cos(mb)
        sb = torch.sin(mb)
        L = self.lmax
        n_edge = vec.shape[0]
        parts: List[Tensor] = []
        for l in range(L + 1):
            n = 2 * l + 1
            cs = torch.cat([cb[:, L - l : L + l + 1], sb[:, L - l : L + l + 1]], dim=1)
            b = self.B[self.b_offsets[l] : self.b_offsets[l] + 2 * n * n * n].view(2 * n, n * n)
            m = torch.matmul(cs, b).view(n_edge, n, n)  # M_l(beta)
            # D = Y(alpha) M: row a mixes with row flip(a)
            d = ca[:, L - l : L + l + 1] * m - sa[:, L - l : L + l + 1] * m.flip(1)
            parts.append(d.reshape(n_edge, n * n))
        return torch.cat(parts, dim=1)


def packed_sizes(lmax: int) -> List[int]:
    return [(2 * l + 1) * (2 * l + 1) for l in range(lmax + 1)]


def unpack_wigner(packed: Tensor, lmax: int) -> List[Tensor]:
    """Split the packed ``(E, sum (2l+1)^2)`` tensor into ``[D_0, ..., D_lmax]`` (E, 2l+1, 2l+1)."""
    n = packed.shape[0]
    parts = torch.split(packed, packed_sizes(lmax), dim=1)
    out: List[Tensor] = []
    for l in range(lmax + 1):
        out.append(parts[l].view(n, 2 * l + 1, 2 * l + 1))
    return out


def _tables(frame: Tensor, l: int, lmax: int):
    lo = lmax - l
    hi = lmax + l + 1
    t = frame[:, :, lo:hi]
    # shape (E, 1, 2l+1) so that they broadcast over channels
    return t[:, 0:1], t[:, 1:2], t[:, 2:3], t[:, 3:4]


def to_frame(x: Tensor, frame: Tensor, k: Tensor, l: int, lmax: int) -> Tensor:
    """D_l^T x for ``x`` of shape ``(E, mul, 2l+1)``: features in the edge frame."""
    if l == 0:
        return x
    ca, sa, cb, sb = _tables(frame, l, lmax)
    kl = k[l, : 2 * l + 1, : 2 * l + 1]
    v = ca * x + sa * x.flip(-1)  # Y(-alpha)
    v = torch.matmul(v, kl)  # K^T
    v = cb * v + sb * v.flip(-1)  # Y(-beta)
    return torch.matmul(v, kl.t())  # K


def from_frame(x: Tensor, frame: Tensor, k: Tensor, l: int, lmax: int) -> Tensor:
    """D_l x for ``x`` of shape ``(E, mul, 2l+1)``: back from the edge frame."""
    if l == 0:
        return x
    ca, sa, cb, sb = _tables(frame, l, lmax)
    kl = k[l, : 2 * l + 1, : 2 * l + 1]
    v = torch.matmul(x, kl)  # K^T
    v = cb * v - sb * v.flip(-1)  # Y(beta)
    v = torch.matmul(v, kl.t())  # K
    return ca * v - sa * v.flip(-1)  # Y(alpha)


def wigner_d(frame: Tensor, k: Tensor, l: int, lmax: int) -> Tensor:
    """Dense per-edge Wigner matrices D_l(R_edge), shape ``(E, 2l+1, 2l+1)``, from tables."""
    n = 2 * l + 1
    eye = torch.eye(n, dtype=frame.dtype, device=frame.device).expand(frame.shape[0], n, n)
    # rows of the result are D e_k, i.e. columns of D
    return from_frame(eye, frame, k, l, lmax).transpose(1, 2)


def sh_from_wigner(d: Tensor, l: int) -> Tensor:
    """Spherical harmonics Y_l(r_hat) (e3nn 'component' normalisation) = sqrt(2l+1) D_l[:, :, m=0].

    Used by tests to cross-check the frames against ``e3nn.o3.spherical_harmonics``.
    """
    return math.sqrt(2 * l + 1) * d[:, :, l]
