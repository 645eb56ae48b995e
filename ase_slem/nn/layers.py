"""Equivariant building blocks on flat irreps tensors: linear, gate, layer norm, MLP.

All modules take and return tensors ``(batch, irreps.dim)`` in the layout described in
:mod:`ase_slem.nn.irreps`; outputs are in the *sorted* layout of their output irreps.
"""

import math
from typing import List, Sequence

import torch
from torch import Tensor

from .irreps import Irreps


class MLP(torch.nn.Module):
    """Plain MLP with SiLU between layers (none after the last)."""

    def __init__(self, sizes: Sequence[int], bias_last: bool = True):
        super().__init__()
        layers: List[torch.nn.Module] = []
        for k in range(len(sizes) - 1):
            last = k == len(sizes) - 2
            layers.append(torch.nn.Linear(sizes[k], sizes[k + 1], bias=(bias_last or not last)))
            if not last:
                layers.append(torch.nn.SiLU())
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class E3Linear(torch.nn.Module):
    """Channel mixing within each (l, p): ``y_{c,l,p} = sum_c' W^{l,p}_{c c'} x_{c',l,p}`` (+ bias on 0e).

    Output is in ``irreps_out.sorted()`` layout; (l, p) absent from the input give zeros.
    """

    g_l: List[int]
    g_in_start: List[int]
    g_in_mul: List[int]
    g_out_mul: List[int]
    g_w_off: List[int]
    g_present: List[bool]

    dim_in: int
    dim_out: int
    use_perm: bool

    def __init__(self, irreps_in: Irreps, irreps_out: Irreps, bias: bool = True):
        super().__init__()
        self.irreps_in = irreps_in
        self.irreps_out = irreps_out.sorted()
        ins = irreps_in.sorted()
        perm = irreps_in.sort_permutation()
        self.use_perm = perm != list(range(irreps_in.dim))
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long))
        self.dim_in = irreps_in.dim
        self.dim_out = self.irreps_out.dim
        in_start = {}
        o = 0
        for mul, l, p in ins.blocks:
            in_start[(l, p)] = (o, mul)
            o += mul * (2 * l + 1)
        self.g_l = []
        self.g_in_start = []
        self.g_in_mul = []
        self.g_out_mul = []
        self.g_w_off = []
        self.g_present = []
        w_off = 0
        inits = []
        bias_size = 0
        for mul, l, p in self.irreps_out.blocks:
            self.g_l.append(l)
            self.g_out_mul.append(mul)
            if (l, p) in in_start:
                s, mi = in_start[(l, p)]
                self.g_in_start.append(s)
                self.g_in_mul.append(mi)
                self.g_present.append(True)
                self.g_w_off.append(w_off)
                inits.append(torch.randn(mi * mul) / math.sqrt(mi))
                w_off += mi * mul
            else:
                self.g_in_start.append(0)
                self.g_in_mul.append(0)
                self.g_present.append(False)
                self.g_w_off.append(w_off)
            if l == 0 and p == 1:
                bias_size = mul
        self.weight = torch.nn.Parameter(torch.cat(inits) if inits else torch.zeros(0))
        self.has_bias = bool(bias and bias_size > 0)
        # 0e is always the first block of a sorted irreps when present
        self.bias_size = bias_size if self.has_bias else 0
        self.bias = torch.nn.Parameter(torch.zeros(self.bias_size))

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self.use_perm:
            x = x.index_select(1, self.perm)
        outs: List[Tensor] = []
        for g in range(len(self.g_l)):
            l = self.g_l[g]
            mo = self.g_out_mul[g]
            if not self.g_present[g]:
                outs.append(x.new_zeros(n, mo * (2 * l + 1)))
                continue
            mi = self.g_in_mul[g]
            s = self.g_in_start[g]
            w = self.weight[self.g_w_off[g] : self.g_w_off[g] + mi * mo].view(mi, mo)
            xb = x[:, s : s + mi * (2 * l + 1)].reshape(n, mi, 2 * l + 1)
            outs.append(torch.einsum("nic,io->noc", xb, w).reshape(n, mo * (2 * l + 1)))
        y = torch.cat(outs, dim=1)
        if self.has_bias:
            y = torch.cat([y[:, : self.bias_size] + self.bias, y[:, self.bias_size :]], dim=1)
        return y


class Gate(torch.nn.Module):
    """Gated nonlinearity.

    Input layout: ``(irreps + n_gates x 0e).sorted()`` where ``irreps`` is sorted and
    ``n_gates`` is its number of l > 0 channels, i.e. the 0e block holds first the
    ``irreps`` scalars, then the gates.  Output layout: ``irreps``.
    0e scalars go through SiLU, 0o through tanh (odd, keeps parity), every l > 0 channel
    is multiplied by the sigmoid of its gate.
    """

    n_even: int
    n_odd: int
    n_gates: int
    dim_in: int

    def __init__(self, irreps: Irreps):
        super().__init__()
        irreps = irreps.sorted()
        self.irreps_out = irreps
        self.n_even = irreps.mul_of(0, 1)
        self.n_odd = irreps.mul_of(0, -1)
        gated = Irreps(b for b in irreps.blocks if b[1] > 0)
        self.n_gates = gated.num_channels
        self.irreps_in = irreps + Irreps([(self.n_gates, 0, 1)])
        self.dim_in = self.irreps_in.dim
        self.register_buffer(
            "gate_index", torch.tensor([r[0] for r in gated.component_table()], dtype=torch.long)
        )

    def forward(self, x: Tensor) -> Tensor:
        ne, no, ng = self.n_even, self.n_odd, self.n_gates
        parts: List[Tensor] = [torch.nn.functional.silu(x[:, :ne])]
        gates = torch.sigmoid(x[:, ne : ne + ng])
        s = ne + ng
        if no > 0:
            parts.append(torch.tanh(x[:, s : s + no]))
        s = s + no
        if ng > 0:
            parts.append(x[:, s:] * gates.index_select(1, self.gate_index))
        return torch.cat(parts, dim=1)


class EquivariantLayerNorm(torch.nn.Module):
    """Layer norm per (l, p) block of a sorted irreps tensor.

    0e: centre over channels and divide by the standard deviation; other irreps: divide by
    the root mean square norm per component over channels.  Then a learnable scale per
    channel (and bias on 0e).
    """

    b_l: List[int]
    b_p: List[int]
    b_mul: List[int]

    eps: float

    def __init__(self, irreps: Irreps, eps: float = 1e-8):
        super().__init__()
        self.irreps = irreps.sorted()
        self.eps = float(eps)
        self.b_l = []
        self.b_p = []
        self.b_mul = []
        for mul, l, p in self.irreps.blocks:
            self.b_l.append(l)
            self.b_p.append(p)
            self.b_mul.append(mul)
        self.weight = torch.nn.Parameter(torch.ones(self.irreps.num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(self.irreps.mul_of(0, 1)))

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        outs: List[Tensor] = []
        s = 0
        c = 0
        for b in range(len(self.b_l)):
            l = self.b_l[b]
            mul = self.b_mul[b]
            d = 2 * l + 1
            xb = x[:, s : s + mul * d].reshape(n, mul, d)
            w = self.weight[c : c + mul].view(1, mul, 1)
            if l == 0 and self.b_p[b] == 1:
                xb = xb - xb.mean(dim=1, keepdim=True)
                xb = xb / torch.sqrt(xb.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
                xb = xb * w + self.bias.view(1, mul, 1)
            else:
                xb = xb / torch.sqrt(xb.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps) * w
            outs.append(xb.reshape(n, mul * d))
            s += mul * d
            c += mul
        return torch.cat(outs, dim=1)


def channel_expand_index(irreps: Irreps) -> Tensor:
    """Index ``(dim,)`` mapping each component to its channel (for per-channel scalars)."""
    return torch.tensor([r[0] for r in irreps.component_table()], dtype=torch.long)
