"""Overlap head: Slater–Koster two-centre parametrisation (paper Eq. 5-7).

In the frame where the bond lies along e3nn's polar axis (y), the overlap of two real
orbitals of angular momenta l1 and l2 is diagonal in m and depends only on |m|:

    S'_{m1 m2} = s_{l1 l2 |m1|}(Z_i, Z_j, r) delta_{m1 m2}.

(Rotations about the bond commute with S', which fixes a 2x2 form [[a, -b], [b, a]] on
(+m, -m); mirror planes containing the bond, under which real orbitals of parity (-1)^l
transform, force b = 0.)  The scalars come from an MLP on the two-body hidden scalar
``x^{ij,0}``; the block is built in the bond frame and rotated back,
``S = D_i S' D_j^T`` with D_i the block-diagonal Wigner matrix of atom i's shells.

Onsite blocks are constants per species: one learnable number per pair of shells with the
same l (times the identity in m); they are initialised to the identity and can be set
from data with :meth:`SKOverlapHead.set_onsite`.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from .layers import MLP


def _offsets(shells: Sequence[int]) -> List[int]:
    out, o = [], 0
    for l in shells:
        out.append(o)
        o += 2 * l + 1
    return out


class SKOverlapHead(torch.nn.Module):
    n_species: int
    max_norb: int
    n_sk: int
    lmax_frame: int
    lmax_basis: int

    def __init__(
        self,
        basis: Dict[str, Sequence[int]],
        latent_dim: int,
        hidden: Sequence[int] = (64,),
        lmax_frame: int = -1,
    ):
        super().__init__()
        self.symbols = list(basis.keys())
        shells = [[int(l) for l in basis[s]] for s in self.symbols]
        self.shells = shells
        self.n_species = len(shells)
        norb = [sum(2 * l + 1 for l in sh) for sh in shells]
        self.max_norb = max(norb)
        self.lmax_basis = max(max(sh) for sh in shells)
        self.lmax_frame = int(lmax_frame) if lmax_frame >= 0 else self.lmax_basis
        M = self.max_norb
        ns = self.n_species

        # SK slots: (l1, l2, copy k, |m|)
        mult: Dict[Tuple[int, int], int] = {}
        for a in range(ns):
            for b in range(ns):
                cnt: Dict[Tuple[int, int], int] = {}
                for la in shells[a]:
                    for lb in shells[b]:
                        cnt[(la, lb)] = cnt.get((la, lb), 0) + 1
                for k, v in cnt.items():
                    mult[k] = max(mult.get(k, 0), v)
        slot: Dict[Tuple[int, int, int, int], int] = {}
        for (l1, l2) in sorted(mult):
            for k in range(mult[(l1, l2)]):
                for m in range(min(l1, l2) + 1):
                    slot[(l1, l2, k, m)] = len(slot)
        self.n_sk = len(slot)
        self.mlp = MLP([latent_dim] + list(hidden) + [self.n_sk])

        frame_index = torch.full((ns * ns, M * M), self.n_sk, dtype=torch.long)
        for a in range(ns):
            for b in range(ns):
                t = a * ns + b
                oa, ob = _offsets(shells[a]), _offsets(shells[b])
                seen: Dict[Tuple[int, int], int] = {}
                for ia, la in enumerate(shells[a]):
                    for ib, lb in enumerate(shells[b]):
                        k = seen.get((la, lb), 0)
                        seen[(la, lb)] = k + 1
                        for m in range(-min(la, lb), min(la, lb) + 1):
                            flat = (oa[ia] + la + m) * M + ob[ib] + lb + m
                            frame_index[t, flat] = slot[(la, lb, k, abs(m))]
        self.register_buffer("frame_index", frame_index)

        # block-diagonal Wigner matrix of a species from the concatenated D_l's
        d_off, o = [], 0
        for l in range(self.lmax_basis + 1):
            d_off.append(o)
            o += (2 * l + 1) ** 2
        self.d_size = o
        rot_index = torch.full((ns, M * M), o, dtype=torch.long)
        for a in range(ns):
            oa = _offsets(shells[a])
            for ia, la in enumerate(shells[a]):
                n = 2 * la + 1
                for i in range(n):
                    for j in range(n):
                        rot_index[a, (oa[ia] + i) * M + oa[ia] + j] = d_off[la] + i * n + j
        self.register_buffer("rot_index", rot_index)

        # onsite constants
        onsite_slots: List[Tuple[int, int, int]] = []
        onsite_index = torch.full((ns, M * M), 0, dtype=torch.long)
        init: List[float] = [0.0]  # slot 0 = structural zero
        for a in range(ns):
            oa = _offsets(shells[a])
            for ia, la in enumerate(shells[a]):
                for ib, lb in enumerate(shells[a]):
                    if la != lb or ib < ia:
                        continue
                    s = len(init)
                    init.append(1.0 if ia == ib else 0.0)
                    onsite_slots.append((a, ia, ib))
                    for m in range(2 * la + 1):
                        onsite_index[a, (oa[ia] + m) * M + oa[ib] + m] = s
                        onsite_index[a, (oa[ib] + m) * M + oa[ia] + m] = s
        self.onsite_slots = onsite_slots
        self.register_buffer("onsite_index", onsite_index)
        self.onsite_values = torch.nn.Parameter(torch.tensor(init, dtype=torch.get_default_dtype()))
        self.register_buffer(
            "onsite_structural", (torch.arange(len(init)) > 0).to(torch.get_default_dtype())
        )

    def forward(
        self,
        x0: Tensor,
        envelope: Tensor,
        frame: Tensor,
        species_i: Tensor,
        species_j: Tensor,
    ) -> Tensor:
        """Bond blocks ``(E, M, M)`` for edges with two-body scalars ``x0`` ``(E, latent)``.

        ``frame``: packed Wigner matrices of the edges (:class:`~ase_slem.nn.wigner.EdgeFrame`).
        """
        n = x0.shape[0]
        M = self.max_norb
        sk = self.mlp(x0) * envelope.unsqueeze(1)
        sk = torch.cat([sk, sk.new_zeros(n, 1)], dim=1)
        t = species_i * self.n_species + species_j
        sp = torch.gather(sk, 1, self.frame_index.index_select(0, t)).view(n, M, M)
        # packed Wigner matrices start with D_0, D_1, ... in the layout of rot_index
        dcat = torch.cat([frame[:, : self.d_size], x0.new_zeros(n, 1)], dim=1)
        di = torch.gather(dcat, 1, self.rot_index.index_select(0, species_i)).view(n, M, M)
        dj = torch.gather(dcat, 1, self.rot_index.index_select(0, species_j)).view(n, M, M)
        return torch.bmm(torch.bmm(di, sp), dj.transpose(1, 2))

    def onsite(self, species: Tensor) -> Tensor:
        """Onsite blocks ``(N, M, M)``."""
        vals = self.onsite_values * self.onsite_structural
        idx = self.onsite_index.index_select(0, species)
        return vals[idx].view(-1, self.max_norb, self.max_norb)

    @torch.jit.unused
    def set_onsite(self, blocks: Dict[int, Tensor]) -> None:
        """Set the onsite constants from reference blocks ``{species_index: (norb, norb)}``.

        Each shell-pair value is the mean of the diagonal of the corresponding sub-block.
        """
        with torch.no_grad():
            for s, (a, ia, ib) in enumerate(self.onsite_slots, start=1):
                if a not in blocks:
                    continue
                blk = torch.as_tensor(blocks[a])
                oa = _offsets(self.shells[a])
                la = self.shells[a][ia]
                sub = blk[oa[ia] : oa[ia] + 2 * la + 1, oa[ib] : oa[ib] + 2 * la + 1]
                self.onsite_values[s] = torch.diagonal(sub).mean().to(self.onsite_values.dtype)
