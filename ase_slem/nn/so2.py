"""SO(2) convolution: the tensor product of SLEM done in the edge frame (paper App. D).

The SLEM tensor product of features ``f`` with the edge's spherical harmonics,

    out_{l3} = sum_{l1, l2} w_{l1 l2 l3} (f_{l1} (x) Y_{l2}(r_hat))_{l3},

costs O(l^6) done naively.  Rotated into the frame where the edge lies along e3nn's polar
axis (y), ``Y_{l2}`` only has its ``m = 0`` component, and Clebsch–Gordan coefficients
with ``m2 = 0`` only couple ``m1 = +-m3``.  For every ``m >= 0`` the map is then a linear
map on the ``(+m, -m)`` pairs with the structure

    out_{+m} = W1_m x_{+m} - W2_m x_{-m}
    out_{-m} = W2_m x_{+m} + W1_m x_{-m}        (W2_0 = 0),

which commutes with rotations about the edge axis.  After the map the result is rotated
back.  Cost: O(l^3) per edge and channel pair.

Parity (the O(3) part): a path l1 -> l3 through ``Y_{l2}`` has ``l1 + l2 + l3`` even
(its frame matrix is symmetric in +-m: it feeds ``W1``) or odd (antisymmetric: ``W2``).
Since ``Y_{l2}`` has parity ``(-1)^{l2}``, an input irrep ``(l1, p1)`` may feed output
``(l3, p3)`` through ``W1`` only if ``p1 p3 = (-1)^{l1 + l3}`` and through ``W2`` only if
``p1 p3 = -(-1)^{l1 + l3}``.  Masking the weights this way keeps the convolution exactly
equivariant under rotations *and* reflections.  For each pair (l1, l3) the numbers of
free W1 (``min(l1,l3) + 1``) and W2 (``min(l1,l3)``) weights equal the number of allowed
``l2`` paths, and the correspondence between the two parametrisations is linear and
invertible (see ``tests/test_nn_so2.py``).

Edge-specific weights (paper: ``w~_{c,c',l',m} = w_{c,c',l',m} w^{ij}_{c',l'}``) are one
scalar per edge and input irrep channel, multiplied onto the input.
"""


import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .irreps import Irreps
from .wigner import packed_sizes


class SO2Conv(torch.nn.Module):
    """Equivariant edge-frame linear map ``irreps_in -> irreps_out.sorted()``.

    ``forward(x, frame, edge_weight)``: ``x`` ``(E, irreps_in.dim)`` in any block order,
    ``frame`` the packed Wigner matrices from :class:`~ase_slem.nn.wigner.EdgeFrame`
    (built with ``lmax = lmax_frame``), ``edge_weight`` ``(E, irreps_in.num_channels)`` or ``None``.  Returns
    ``(E, irreps_out.sorted().dim)``.
    """

    frame_sizes: List[int]
    w_sizes: List[int]
    m_sizes: List[int]
    in_sizes: List[int]
    out_sizes: List[int]
    part_sizes: List[List[int]]
    l_part: List[List[int]]
    n_parts: int

    lmax_frame: int
    lmax: int
    dim_in: int
    dim_out: int
    use_perm_in: bool

    def __init__(self, irreps_in: Irreps, irreps_out: Irreps, lmax_frame: Optional[int] = None,
                 parts: Optional[List[Irreps]] = None):
        super().__init__()
        if parts is not None:
            if Irreps(b for part in parts for b in part.blocks) != irreps_in:
                raise ValueError("irreps_in must be the concatenation of parts")
            for part in parts:
                if part.sort_permutation() != list(range(part.dim)):
                    raise ValueError("every part must be sorted (Irreps.sorted())")
        else:
            parts = [irreps_in]
        self.irreps_in = irreps_in
        self.irreps_out = irreps_out.sorted()
        outs = self.irreps_out
        # internal input layout: the blocks of irreps_in reordered by (l, part, e before o)
        blk_part = [k for k, part in enumerate(parts) for _ in part.blocks]
        order = sorted(range(len(irreps_in.blocks)),
                       key=lambda b: (irreps_in.blocks[b][1], blk_part[b], -irreps_in.blocks[b][2], b))
        ins = Irreps(irreps_in.blocks[b] for b in order)
        self.lmax = max(ins.lmax, outs.lmax)
        self.lmax_frame = int(lmax_frame if lmax_frame is not None else self.lmax)
        if self.lmax_frame < self.lmax:
            raise ValueError("lmax_frame must be >= the largest l of the convolution")
        self.dim_in = irreps_in.dim
        self.dim_out = outs.dim
        dt = torch.get_default_dtype()
        self.frame_sizes = packed_sizes(self.lmax_frame)

        offs = irreps_in.offsets()
        ch_offs = []
        c = 0
        for mul, l, p in irreps_in.blocks:
            ch_offs.append(c)
            c += mul
        perm: List[int] = []
        ch_perm: List[int] = []
        for b in order:
            mul, l, p = irreps_in.blocks[b]
            perm.extend(range(offs[b], offs[b] + mul * (2 * l + 1)))
            ch_perm.extend(range(ch_offs[b], ch_offs[b] + mul))
        self.n_parts = len(parts)
        self.use_perm_in = perm != list(range(self.dim_in))
        self.register_buffer("perm_in", torch.tensor(perm, dtype=torch.long))
        # internal channel k is channel ch_perm[k] of irreps_in (for the edge weights)
        self.register_buffer("in_channel_perm", torch.tensor(ch_perm, dtype=torch.long))

        # rotation blocks: in the internal layout all irreps of one l are contiguous
        def rot_blocks(irr: Irreps):
            ls, starts, muls = [], [], []
            o = 0
            for l in range(irr.lmax + 1):
                mul = sum(m for m, ll, _ in irr.blocks if ll == l)
                if mul > 0:
                    ls.append(l)
                    starts.append(o)
                    muls.append(mul)
                    o += mul * (2 * l + 1)
            return ls, starts, muls

        # multi-part inputs: per part, its l blocks; per internal l block, which parts feed it
        self.part_sizes: List[List[int]] = []
        part_l: List[List[int]] = []
        for part in parts:
            ls, _, muls = rot_blocks(part)
            self.part_sizes.append([m * (2 * l + 1) for l, m in zip(ls, muls)])
            part_l.append(ls)
        self.in_ls, self.in_starts, self.in_muls = rot_blocks(ins)
        self.out_ls, self.out_starts, self.out_muls = rot_blocks(outs)
        self.l_part: List[List[int]] = []  # per internal l block: [part, block-in-part, ...]
        for l in self.in_ls:
            row: List[int] = []
            for k, ls in enumerate(part_l):
                if l in ls:
                    row += [k, ls.index(l)]
            self.l_part.append(row)

        # channels (sorted layouts) with their component offsets
        def channels(irr: Irreps):
            rows = []
            o = 0
            for mul, l, p in irr.blocks:
                for _ in range(mul):
                    rows.append((l, p, o))
                    o += 2 * l + 1
            return rows

        cin, cout = channels(ins), channels(outs)
        mmax = min(ins.lmax, outs.lmax)
        self.mmax = mmax
        in_index: List[int] = []
        out_pos: List[int] = []
        n_in: List[int] = []
        n_out: List[int] = []
        w_offsets: List[int] = []
        masks_sym: List[Tensor] = []
        masks_anti: List[Tensor] = []
        init: List[Tensor] = []
        w_off = 0
        for m in range(mmax + 1):
            ci = [c for c in cin if c[0] >= m]
            co = [c for c in cout if c[0] >= m]
            n_in.append(len(ci))
            n_out.append(len(co))
            in_index += [o + l + m for l, _, o in ci]
            out_pos += [o + l + m for l, _, o in co]
            if m > 0:
                in_index += [o + l - m for l, _, o in ci]
                out_pos += [o + l - m for l, _, o in co]
            sym = torch.tensor(
                [[pa * pb * (-1) ** (la + lb) == 1 for lb, pb, _ in co] for la, pa, _ in ci],
                dtype=torch.bool,
            ).reshape(len(ci), len(co))
            anti = (~sym) if m > 0 else torch.zeros_like(sym)
            masks_sym.append(sym.flatten())
            masks_anti.append(anti.flatten())
            fan_in = (sym.sum(0) + anti.sum(0)).clamp(min=1).to(torch.float64)
            std = 1.0 / torch.sqrt(fan_in)
            w1 = torch.randn(len(ci), len(co), dtype=torch.float64) * std * sym
            w2 = torch.randn(len(ci), len(co), dtype=torch.float64) * std * anti
            init += [w1.flatten(), w2.flatten()]
            w_offsets.append(w_off)
            w_off += 2 * len(ci) * len(co)
        self.n_in = n_in
        self.n_out = n_out
        self.w_offsets = w_offsets
        self.w_sizes = []
        self.m_sizes = []
        for m in range(mmax + 1):
            self.w_sizes += [n_in[m] * n_out[m], n_in[m] * n_out[m]]
            self.m_sizes.append(n_in[m] if m == 0 else 2 * n_in[m])
        self.in_sizes = [mu * (2 * l + 1) for l, mu in zip(self.in_ls, self.in_muls)]
        self.out_sizes = [mu * (2 * l + 1) for l, mu in zip(self.out_ls, self.out_muls)]
        self.register_buffer("in_m_index", torch.tensor(in_index, dtype=torch.long))
        # output: sorted layout position -> m-major position (zero slot for components
        # with |m| > mmax, which the frame map cannot produce)
        inv = [len(out_pos)] * outs.dim
        for k, pos in enumerate(out_pos):
            inv[pos] = k
        self.register_buffer("out_index", torch.tensor(inv, dtype=torch.long))
        self.needs_zero_slot = len(out_pos) < outs.dim
        mask = torch.cat([torch.cat([s, a]) for s, a in zip(masks_sym, masks_anti)])
        self.register_buffer("weight_mask", mask.to(dt))
        self.weight = torch.nn.Parameter(torch.cat(init).to(dt))

    # -- helpers (python side) ----------------------------------------------
    def weights(self, m: int) -> Tuple[Tensor, Tensor]:
        """Views ``(W1_m, W2_m)`` of shape ``(n_in(m), n_out(m))`` into the parameter.

        Rows/columns follow the channel order of the *sorted* input/output irreps,
        restricted to channels with ``l >= m``.
        """
        ni, no, off = self.n_in[m], self.n_out[m], self.w_offsets[m]
        w1 = self.weight[off : off + ni * no].view(ni, no)
        w2 = self.weight[off + ni * no : off + 2 * ni * no].view(ni, no)
        return w1, w2

    # -----------------------------------------------------------------------
    def forward(self, x: Tensor, frame: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        n_edge = x.shape[0]
        if self.use_perm_in:
            x = x.index_select(1, self.perm_in)
        blocks = torch.split(x, self.in_sizes, dim=1)
        return self._conv(blocks, frame, edge_weight, n_edge)

    def forward_parts(self, xs: List[Tensor], frame: Tensor,
                      edge_weight: Optional[Tensor] = None) -> Tensor:
        """Same as ``forward(torch.cat(xs, 1), ...)`` for a module built with ``parts``,
        without materialising the concatenation in irreps_in order."""
        n_edge = xs[0].shape[0]
        split: List[List[Tensor]] = []
        for k in range(self.n_parts):
            split.append(list(torch.split(xs[k], self.part_sizes[k], dim=1)))
        blocks: List[Tensor] = []
        for i in range(len(self.in_ls)):
            l = self.in_ls[i]
            row = self.l_part[i]
            pieces: List[Tensor] = []
            for q in range(len(row) // 2):
                k = row[2 * q]
                b = row[2 * q + 1]
                mul = self.part_sizes[k][b] // (2 * l + 1)
                pieces.append(split[k][b].reshape(n_edge, mul, 2 * l + 1))
            blk = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
            blocks.append(blk.reshape(n_edge, self.in_sizes[i]))
        return self._conv(blocks, frame, edge_weight, n_edge)

    def _conv(self, blocks: List[Tensor], frame: Tensor, edge_weight: Optional[Tensor],
              n_edge: int) -> Tensor:
        # Slicing is done with torch.split everywhere: its backward is a single cat,
        # whereas every basic slice would allocate and zero a full-size gradient.
        ews: List[Tensor] = []
        if edge_weight is not None:
            # per-channel scalars commute with rotations: applied per l block below
            ews = torch.split(edge_weight.index_select(1, self.in_channel_perm), self.in_muls, dim=1)
        # rotate into the edge frame: rows x_c -> x_c D (= (D^T x_c)^T)
        wig = torch.split(frame, self.frame_sizes, dim=1)
        parts: List[Tensor] = []
        for i in range(len(self.in_ls)):
            l = self.in_ls[i]
            mul = self.in_muls[i]
            blk = blocks[i].reshape(n_edge, mul, 2 * l + 1)
            if edge_weight is not None:
                blk = blk * ews[i].unsqueeze(2)
            if l > 0:
                blk = torch.bmm(blk, wig[l].view(n_edge, 2 * l + 1, 2 * l + 1))
            parts.append(blk.reshape(n_edge, mul * (2 * l + 1)))
        x = torch.cat(parts, dim=1).index_select(1, self.in_m_index)
        # SO(2) linear map per m.  For m > 0 it is the complex product (W1 + i W2)(x+ + i x-).
        w = torch.split(self.weight * self.weight_mask, self.w_sizes)
        xs = torch.split(x, self.m_sizes, dim=1)
        outs: List[Tensor] = []
        for m in range(self.mmax + 1):
            ni = self.n_in[m]
            no = self.n_out[m]
            w1 = w[2 * m].view(ni, no)
            if m == 0:
                outs.append(torch.matmul(xs[0], w1))
            else:
                w2 = w[2 * m + 1].view(ni, no)
                # [x+, x-] @ [[W1, W2], [-W2, W1]] = [W1 x+ - W2 x-, W2 x+ + W1 x-]: one
                # GEMM on the contiguous (+m, -m) block (a 3-GEMM complex product saves
                # flops but its extra element-wise passes cost as much on CPU)
                big = torch.cat([torch.cat([w1, w2], 1), torch.cat([-w2, w1], 1)], 0)
                outs.append(torch.matmul(xs[m], big))
        if self.needs_zero_slot:
            outs.append(x.new_zeros(n_edge, 1))
        y = torch.cat(outs, dim=1).index_select(1, self.out_index)
        # rotate back
        parts = []
        blocks = torch.split(y, self.out_sizes, dim=1)
        for i in range(len(self.out_ls)):
            l = self.out_ls[i]
            mul = self.out_muls[i]
            if l == 0:
                parts.append(blocks[i])
                continue
            blk = blocks[i].reshape(n_edge, mul, 2 * l + 1)
            d = wig[l].view(n_edge, 2 * l + 1, 2 * l + 1)
            parts.append(torch.bmm(blk, d.transpose(1, 2)).reshape(n_edge, mul * (2 * l + 1)))
        return torch.cat(parts, dim=1)
