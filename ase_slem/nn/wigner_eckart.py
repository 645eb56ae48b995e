"""Wigner–Eckart map between operator blocks and irreps (paper Eq. 2 and 4).

A shell pair block ``O`` of shape ``(2 l1 + 1, 2 l2 + 1)`` transforms as
``O -> D_l1 O D_l2^T``.  Contracting it with Clebsch–Gordan coefficients gives
irreps ``o_l3`` for ``l3 = |l1 - l2| .. l1 + l2``, all with parity ``(-1)^(l1 + l2)``:

    o_{l3 m3} = sqrt(2 l3 + 1) sum_{m1 m2} C^{l3 m3}_{l1 m1, l2 m2} O_{m1 m2}

With e3nn's ``wigner_3j`` (unit Frobenius norm) the factor ``sqrt(2 l3 + 1)`` makes the
map an orthogonal matrix, so the inverse (Eq. 4) is its transpose and norms are kept.

:class:`BlockIrrepsMap` applies the map to whole atom-pair blocks of a basis at once:
blocks are handled in a padded ``(P, M, M)`` layout (``M`` = largest atom orbital count,
rows/columns past an atom's own count are zero) and converted by one dense product with a
block-diagonal orthogonal matrix plus an index gather chosen by the pair's species.
"""


import math
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .irreps import Irreps


@lru_cache(maxsize=None)
def _cg_matrix_f64(l1: int, l2: int) -> Tensor:
    from e3nn import o3

    rows = []
    for l3 in range(abs(l1 - l2), l1 + l2 + 1):
        c = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)  # (2l1+1, 2l2+1, 2l3+1)
        c = c * math.sqrt(2 * l3 + 1)
        rows.append(c.reshape((2 * l1 + 1) * (2 * l2 + 1), 2 * l3 + 1).t())
    return torch.cat(rows, dim=0).contiguous()


def cg_matrix(l1: int, l2: int, dtype=None) -> Tensor:
    """Orthogonal matrix ``U`` with ``o = U @ O.flatten()`` (rows: (l3, m3), l3 ascending).

    ``O.flatten()`` is row-major, index ``m1 * (2 l2 + 1) + m2``.
    """
    u = _cg_matrix_f64(int(l1), int(l2))
    return u.to(dtype or torch.get_default_dtype()).clone()


def pair_irreps(l1: int, l2: int) -> List[Tuple[int, int]]:
    """The (l3, parity) irreps of a shell pair block."""
    p = (-1) ** (l1 + l2)
    return [(l3, p) for l3 in range(abs(l1 - l2), l1 + l2 + 1)]


def block_to_irreps(block: Tensor, l1: int, l2: int) -> Tensor:
    """``(..., 2l1+1, 2l2+1)`` -> ``(..., (2l1+1)(2l2+1))`` irreps, l3 ascending."""
    u = cg_matrix(l1, l2, block.dtype).to(block.device)
    return block.reshape(*block.shape[:-2], -1) @ u.t()


def irreps_to_block(irr: Tensor, l1: int, l2: int) -> Tensor:
    """Inverse of :func:`block_to_irreps`."""
    u = cg_matrix(l1, l2, irr.dtype).to(irr.device)
    return (irr @ u).reshape(*irr.shape[:-1], 2 * l1 + 1, 2 * l2 + 1)


def _shell_offsets(shells: Sequence[int]) -> List[int]:
    out, o = [], 0
    for l in shells:
        out.append(o)
        o += 2 * l + 1
    return out


class BlockIrrepsMap(torch.nn.Module):
    """Vectorised Wigner–Eckart map for every atom-pair block of a basis.

    Parameters
    ----------
    basis: ``{symbol: [l of each shell, in declared order]}``; the order of the keys fixes
        the species indices.
    onsite: ``False`` for bonds (ordered species pairs, type ``t = Zi * n_species + Zj``,
        every shell pair is free); ``True`` for onsite blocks (type ``t = Z``): blocks are
        symmetric, only shell pairs ``a <= b`` carry irreps and the block is completed by
        symmetry.

    The irreps vector (``irreps`` attribute, sorted by (l, p)) has one channel per
    (shell-pair type, copy, l3): shell pairs of a given ``(l1, l2)`` are numbered in
    declared order per species pair and copy ``k`` of ``(l1, l2)`` uses the same channels
    for every species pair.  Channels a pair type does not use are ignored (``to_blocks``)
    or returned as zero (``to_irreps``); ``channel_mask[t]`` says which are used.
    """

    n_species: int
    max_norb: int
    dim: int
    onsite: bool

    def __init__(self, basis: Dict[str, Sequence[int]], onsite: bool = False):
        super().__init__()
        self.symbols = list(basis.keys())
        self.shells = [list(int(l) for l in basis[s]) for s in self.symbols]
        self.n_species = len(self.symbols)
        self.norb = [sum(2 * l + 1 for l in sh) for sh in self.shells]
        self.max_norb = max(self.norb)
        self.onsite = bool(onsite)
        if self.onsite:
            type_pairs = [(a, a) for a in range(self.n_species)]
        else:
            type_pairs = [(a, b) for a in range(self.n_species) for b in range(self.n_species)]
        self.type_pairs = type_pairs

        # shell pairs per type, and multiplicity per ordered (l1, l2)
        def shell_pairs(ta: int, tb: int):
            sa, sb = self.shells[ta], self.shells[tb]
            pairs = []
            for a, la in enumerate(sa):
                for b, lb in enumerate(sb):
                    if self.onsite and b < a:
                        continue
                    pairs.append((a, b, la, lb))
            return pairs

        mult: Dict[Tuple[int, int], int] = {}
        for ta, tb in type_pairs:
            cnt: Dict[Tuple[int, int], int] = {}
            for _, _, la, lb in shell_pairs(ta, tb):
                cnt[(la, lb)] = cnt.get((la, lb), 0) + 1
            for k, v in cnt.items():
                mult[k] = max(mult.get(k, 0), v)
        self.pair_types: List[Tuple[int, int, int]] = [
            (l1, l2, mult[(l1, l2)]) for (l1, l2) in sorted(mult)
        ]

        # "sub-block order": for (l1, l2) type, copy k: (2l1+1)(2l2+1) entries
        # irreps in WE order for the same slots: l3 ascending
        sub_offset: Dict[Tuple[int, int, int], int] = {}
        we_list: List[Tuple[int, int]] = []  # (l3, p) for each WE irrep instance, in order
        o = 0
        for l1, l2, m in self.pair_types:
            for k in range(m):
                sub_offset[(l1, l2, k)] = o
                o += (2 * l1 + 1) * (2 * l2 + 1)
                we_list.extend(pair_irreps(l1, l2))
        self.dim = o
        we_irreps = Irreps((1, l3, p) for l3, p in we_list)
        self.irreps = we_irreps.sorted()
        perm = we_irreps.sort_permutation()  # sorted[:, i] = we[:, perm[i]]

        # block-diagonal orthogonal matrix: we_irreps = subblocks @ U_we^T
        u_we = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for (l1, l2, k), off in sub_offset.items():
            n = (2 * l1 + 1) * (2 * l2 + 1)
            u_we[off : off + n, off : off + n] = _cg_matrix_f64(l1, l2)
        # sorted irreps = subblocks @ U^T with U = u_we[perm]
        u = u_we[perm]
        dt = torch.get_default_dtype()
        self.register_buffer("U", u.to(dt))

        # gather tables.  to_blocks: padded block flat index -> sub-block slot (dim = zero)
        mm = self.max_norb * self.max_norb
        to_block_index = torch.full((len(type_pairs), mm), self.dim, dtype=torch.long)
        block_weight = torch.zeros(len(type_pairs), mm, dtype=torch.float64)
        # to_irreps: sub-block slot -> padded block flat index (mm = zero)
        to_sub_index = torch.full((len(type_pairs), self.dim), mm, dtype=torch.long)
        channel_used = torch.zeros(len(type_pairs), self.dim, dtype=torch.bool)
        for t, (ta, tb) in enumerate(type_pairs):
            oa = _shell_offsets(self.shells[ta])
            ob = _shell_offsets(self.shells[tb])
            seen: Dict[Tuple[int, int], int] = {}
            for a, b, la, lb in shell_pairs(ta, tb):
                k = seen.get((la, lb), 0)
                seen[(la, lb)] = k + 1
                off = sub_offset[(la, lb, k)]
                na, nb = 2 * la + 1, 2 * lb + 1
                for i in range(na):
                    for j in range(nb):
                        flat = (oa[a] + i) * self.max_norb + ob[b] + j
                        slot = off + i * nb + j
                        to_block_index[t, flat] = slot
                        block_weight[t, flat] = 0.5 if (self.onsite and a == b) else 1.0
                        to_sub_index[t, slot] = flat
                        channel_used[t, slot] = True
        self.register_buffer("to_block_index", to_block_index)
        self.register_buffer("block_weight", block_weight.to(dt))
        self.register_buffer("to_sub_index", to_sub_index)
        # which sorted-irreps components a type uses
        comp_used = (channel_used.to(torch.float64) @ (u.t().abs() > 0).to(torch.float64)) > 0
        self.register_buffer("component_mask", comp_used)
        # orbital masks (n_species, M)
        omask = torch.zeros(self.n_species, self.max_norb, dtype=torch.bool)
        for s, n in enumerate(self.norb):
            omask[s, :n] = True
        self.register_buffer("orbital_mask", omask)

    # ------------------------------------------------------------------
    def to_blocks(self, irreps: Tensor, pair_type: Tensor) -> Tensor:
        """Irreps ``(P, dim)`` (layout ``self.irreps``) -> padded blocks ``(P, M, M)``."""
        sub = irreps @ self.U  # (P, dim), sub-block order
        sub = torch.cat([sub, sub.new_zeros(sub.shape[0], 1)], dim=1)
        idx = self.to_block_index[pair_type]
        flat = torch.gather(sub, 1, idx)
        if self.onsite:
            flat = flat * self.block_weight[pair_type]
            blk = flat.view(-1, self.max_norb, self.max_norb)
            return blk + blk.transpose(1, 2)
        return flat.view(-1, self.max_norb, self.max_norb)

    def to_irreps(self, blocks: Tensor, pair_type: Tensor) -> Tensor:
        """Padded blocks ``(P, M, M)`` -> irreps ``(P, dim)``; unused channels are 0."""
        flat = blocks.reshape(blocks.shape[0], -1)
        flat = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)
        sub = torch.gather(flat, 1, self.to_sub_index[pair_type])
        return sub @ self.U.t()

    def pair_type(self, species_i: Tensor, species_j: Tensor) -> Tensor:
        if self.onsite:
            return species_i
        return species_i * self.n_species + species_j
