"""The SLEM network (strictly localized equivariant message passing) and its LEM variant.

Features (paper Sec. 3.3; ``hidden`` irreps = ``channels`` copies of every (l, p),
l <= lmax, both parities):

* ``x^{ij}``  two-body-initialised scalar hidden state of directed edge ij ``(E, latent)``
* ``V^{ij}``  tensor hidden state of edge ij ``(E, hidden)``: depends on the
  neighbourhood of i and on r_ij only
* ``n^i``     node features ``(N, hidden)``: depend on the neighbourhood of i only
* ``e^{ij}``  edge features ``(P2, hidden)`` of the bond edges: depend on the
  neighbourhoods of i and j only

Updates per layer (Eq. 12-17): hidden ``V <- conv(n^i || V^{ij})``, ``x <- MLP(x ||
V_0e) u(r)``; node ``n^i <- a n^i + sqrt(1-a^2)/N_avg sum_j w(x^{ij}) conv(n^i ||
V^{ij})``; edge ``e^{ij} <- a e^{ij} + sqrt(1-a^2) w(x^{ij}) conv(n^i || V^{ij} ||
n^j)``.  ``conv`` is the SO(2) convolution (the tensor product with the edge's spherical
harmonics) followed by a gate and an E3 linear layer.  Nothing reads ``V^{jk}`` or
``n^k`` of a neighbour's neighbours, so block (i, j) depends only on atoms within
``r_cut`` of i or of j.  (One deviation from the paper: ``V`` is also updated with the
residual mixing ``a, sqrt(1-a^2)`` used for n and e, which keeps amplitudes steady.)

LEM (``lem=True``): the graph extends to ``r_max > r_cut`` and contributions of
neighbours beyond ``r_cut`` to the node aggregation are damped by ``exp(-lambda (r -
r_cut))`` with a trainable ``lambda > 0`` (semi-local).

Output (``forward``): ``Dict[str, Tensor]`` with, for each predicted operator ``op`` in
``model.operators`` (``"hamiltonian"``, ``"overlap"``, ``"density_matrix"``):

* ``op + "_onsite"``: ``(N, M, M)`` blocks ``(i, i, 0)``
* ``op + "_bond"``: ``(P, M, M)`` blocks of the bonds ``bond_index`` (one triangle)

padded to ``M = model.max_norb``: rows/cols ``>= norb`` of the atom's species are zero;
``model.orbital_mask[species]`` ``(N, M)`` says which are real.  Bond blocks are
symmetrised from both directed edges, ``O_ij = (B(ij) + B(ji)^T) / 2``, so assembling
``(j, i, -R) = O_ij^T`` is consistent with a prediction made from either side and the
result is invariant to atom order.  Units are those of the training targets (eV for H).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .irreps import Irreps
from .layers import MLP, E3Linear, Gate, channel_expand_index
from .normalization import PairNormalization
from .overlap_head import SKOverlapHead
from .radial import BesselBasis, PolynomialEnvelope
from .so2 import SO2Conv
from .wigner import EdgeFrame
from .wigner_eckart import BlockIrrepsMap

OPERATORS = ("hamiltonian", "overlap", "density_matrix")


class ConvBlock(torch.nn.Module):
    """SO(2) convolution -> gate -> E3 linear, with edge weights from the scalar state."""

    def __init__(self, parts: List[Irreps], hidden: Irreps, latent_dim: int, lmax_frame: int):
        super().__init__()
        gate = Gate(hidden)
        irreps_in = Irreps(b for part in parts for b in part.blocks)
        self.conv = SO2Conv(irreps_in, gate.irreps_in, lmax_frame, parts=parts)
        self.gate = gate
        self.lin = E3Linear(hidden, hidden)
        self.edge_w = torch.nn.Linear(latent_dim, irreps_in.num_channels)

    def forward(self, fs: List[Tensor], frame: Tensor, x: Tensor) -> Tensor:
        return self.lin(self.gate(self.conv.forward_parts(fs, frame, self.edge_w(x))))


def edge_runs(n: int, chunk: int) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in runs of at most ``chunk`` (all at once
    when ``chunk`` <= 0; one empty run when ``n`` is 0, so that every output is still built)."""
    step = n if chunk <= 0 else chunk
    if n == 0 or step <= 0:
        return [(0, 0)]
    return [(a, min(a + step, n)) for a in range(0, n, step)]


class SLEMLayer(torch.nn.Module):
    alpha: float
    beta: float
    n_scalar: int

    def __init__(self, hidden: Irreps, latent_dim: int, mlp_hidden: int, lmax_frame: int,
                 res_alpha: float):
        super().__init__()
        self.alpha = float(res_alpha)
        self.beta = math.sqrt(1.0 - self.alpha**2)
        self.n_scalar = hidden.mul_of(0, 1)
        n_ch = hidden.num_channels
        self.register_buffer("expand", channel_expand_index(hidden))
        # hidden update (Eq. 12-13)
        self.hidden_conv = ConvBlock([hidden, hidden], hidden, latent_dim, lmax_frame)
        self.hidden_ln = torch.nn.LayerNorm(latent_dim)
        self.hidden_w = torch.nn.Linear(latent_dim, n_ch)
        self.x_mlp = MLP([latent_dim + self.n_scalar, mlp_hidden, latent_dim])
        # node update (Eq. 14-15)
        self.node_conv = ConvBlock([hidden, hidden], hidden, latent_dim, lmax_frame)
        self.node_w = torch.nn.Linear(latent_dim, n_ch, bias=False)
        # edge update (Eq. 16-17)
        self.edge_conv = ConvBlock([hidden, hidden, hidden], hidden, latent_dim, lmax_frame)
        self.edge_w = torch.nn.Linear(latent_dim, n_ch, bias=False)

    def forward(self, x: Tensor, v: Tensor, n: Tensor, e: Tensor, frame: Tensor, src: Tensor,
                dst: Tensor, bond_edges: Tensor, envelope: Tensor, damp: Tensor,
                inv_avg: float, chunk: int = 0, n_next: Optional[Tensor] = None):
        """One update of every feature.  ``chunk`` > 0 runs the per-edge work over runs of at
        most ``chunk`` edges (and bond edges), summing the node messages run by run: the same
        numbers, with intermediates small enough to stay in the CPU caches on big structures.
        ``n_next``: this layer's output node features, known already (computed by an earlier
        pass, :meth:`SLEM.node_features`): the node messages are then skipped."""
        agg = torch.zeros_like(n) if n_next is None else n
        xs: List[Tensor] = []
        vs: List[Tensor] = []
        for a, b in edge_runs(src.shape[0], chunk):
            s = src[a:b]
            fr = frame[a:b]
            n_src = n.index_select(0, s)
            xc = x[a:b]
            vc = v[a:b]
            # hidden: V^{ij} from n^i, V^{ij}, r_ij
            vt = self.hidden_conv([n_src, vc], fr, xc)
            vt = vt * self.hidden_w(self.hidden_ln(xc)).index_select(1, self.expand)
            vc = self.alpha * vc + self.beta * vt
            xc = self.x_mlp(torch.cat([xc, vc[:, : self.n_scalar]], dim=1)) * envelope[a:b].unsqueeze(1)
            # node: messages from V^{ij} and n^i only, summed over j in N(i)
            if n_next is None:
                m = self.node_conv([n_src, vc], fr, xc)
                m = m * (self.node_w(xc) * damp[a:b].unsqueeze(1)).index_select(1, self.expand)
                agg.index_add_(0, s, m)
            xs.append(xc)
            vs.append(vc)
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        v = vs[0] if len(vs) == 1 else torch.cat(vs)
        # edge: n^i, V^{ij}, n^j (previous node features) on the bond edges
        es: List[Tensor] = []
        for a, b in edge_runs(bond_edges.shape[0], chunk):
            be = bond_edges[a:b]
            xb = x.index_select(0, be)
            fe = [n.index_select(0, src.index_select(0, be)), v.index_select(0, be),
                  n.index_select(0, dst.index_select(0, be))]
            et = self.edge_conv(fe, frame.index_select(0, be), xb)
            es.append(self.alpha * e[a:b] + self.beta * et * self.edge_w(xb).index_select(1, self.expand))
        e = es[0] if len(es) == 1 else torch.cat(es)
        if n_next is None:
            n = self.alpha * n + self.beta * inv_avg * agg
        else:
            n = n_next
        return x, v, n, e


class GatedBranch(torch.nn.Module):
    """``E3Linear -> Gate -> E3Linear`` from ``hidden`` to ``irreps_out`` through ``width``
    channels per (l, p); the last linear layer starts at zero, so adding the branch to a
    trained head leaves its output unchanged until training moves it."""

    def __init__(self, hidden: Irreps, irreps_out: Irreps, width: int):
        super().__init__()
        wide = Irreps.full(hidden.lmax, width)
        self.gate = Gate(wide)
        self.lin_in = E3Linear(hidden, self.gate.irreps_in)
        self.lin_out = E3Linear(wide, irreps_out)
        with torch.no_grad():
            self.lin_out.weight.zero_()
            self.lin_out.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin_out(self.gate(self.lin_in(x)))


class OperatorHead(torch.nn.Module):
    """Node/edge features -> normalised irreps -> scale/bias (Eq. 3) -> blocks (Eq. 4).

    The irreps come from a linear map of the ``channels`` hidden copies of each (l, p), which
    bounds their rank: a 3s2p1d pair needs 14 0e and 16 1o irreps, more than 8 channels can
    span.  ``head_channels > 0`` adds a gated branch of that width (:class:`GatedBranch`)
    whose output varies with the structure beyond that linear span."""

    n_species: int

    def __init__(self, basis: Dict[str, Sequence[int]], hidden: Irreps, head_channels: int = 0):
        super().__init__()
        self.we_node = BlockIrrepsMap(basis, onsite=True)
        self.we_edge = BlockIrrepsMap(basis, onsite=False)
        self.n_species = self.we_edge.n_species
        self.lin_node = E3Linear(hidden, self.we_node.irreps)
        self.lin_edge = E3Linear(hidden, self.we_edge.irreps)
        # zero or one branch each (a ModuleList keeps the model scriptable and old files loadable)
        width = [int(head_channels)] if head_channels > 0 else []
        self.branch_node = torch.nn.ModuleList([GatedBranch(hidden, self.we_node.irreps, w) for w in width])
        self.branch_edge = torch.nn.ModuleList([GatedBranch(hidden, self.we_edge.irreps, w) for w in width])
        self.norm_node = PairNormalization(self.we_node.irreps, self.n_species)
        self.norm_edge = PairNormalization(self.we_edge.irreps, self.n_species**2)

    @torch.jit.unused
    def rank_bound(self, channels: int) -> List[Tuple[str, int]]:
        """``(irrep, irreps needed)`` for each (l, p) of which a linear head needs more irreps
        than the ``channels`` hidden copies it maps from (empty: no bound)."""
        out: List[Tuple[str, int]] = []
        for mul, l, p in self.we_edge.irreps.sorted().blocks:
            need = max(mul, self.we_node.irreps.mul_of(l, p))
            if need > channels:
                out.append((f"{l}{'e' if p == 1 else 'o'}", need))
        return out

    def directed(self, n: Tensor, e: Tensor, species: Tensor, species_i: Tensor,
                 species_j: Tensor):
        """Onsite blocks (N, M, M) and the block B(ij) (E_b, M, M) of each directed bond edge."""
        a = self.lin_node(n)
        for branch in self.branch_node:
            a = a + branch(n)
        b = self.lin_edge(e)
        for branch in self.branch_edge:
            b = b + branch(e)
        onsite = self.we_node.to_blocks(self.norm_node(a, species), species)
        t = species_i * self.n_species + species_j
        return onsite, self.we_edge.to_blocks(self.norm_edge(b, t), t)

    def forward(self, n: Tensor, e: Tensor, species: Tensor, species_i: Tensor,
                species_j: Tensor):
        """Onsite blocks and bond blocks O_ij = (B(ij) + B(ji)^T) / 2; the bond edges ``e``
        hold the forward edges of every bond, then the reverse ones."""
        onsite, blk = self.directed(n, e, species, species_i, species_j)
        p = blk.shape[0] // 2
        bonds = 0.5 * (blk[:p] + blk[p:].transpose(1, 2))
        return onsite, bonds


class SLEM(torch.nn.Module):
    """SLEM / LEM model predicting H, S and D blocks of an LCAO basis.

    Parameters
    ----------
    basis: ``{symbol: [l of each shell]}`` (e.g. ``{"Si": [0, 0, 1, 1, 2]}``); key order
        fixes the species index expected in ``forward``.
    r_cut: locality cutoff (Å): neighbours of an atom; SLEM's graph cutoff.
    channels: multiplicity of every hidden (l, p).
    lmax: hidden l_max (default ``2 * max shell l``, the largest l3 of the blocks).
    n_layers, num_radial, latent_dim, mlp_hidden: sizes.
    avg_num_neighbors: ``N_avg`` of Eq. 10 and 15 (set from data, e.g. with
        :func:`average_num_neighbors`).
    res_alpha: the ``alpha`` of the residual updates (Eq. 15, 17).
    operators: subset of ``("hamiltonian", "overlap", "density_matrix")``.
    lem: LEM variant; then ``r_max`` (> r_cut) is the graph cutoff and contributions from
        beyond ``r_cut`` are damped by a trainable exponential.
    head_channels: width of the gated branch of each operator head (0: linear heads only,
        see :class:`OperatorHead`).
    """

    symbols: List[str]
    operators: List[str]
    head_names: List[str]

    n_species: int
    max_norb: int
    lmax: int
    r_cut: float
    r_max: float
    lem: bool
    inv_avg: float
    inv_sqrt_avg: float
    predict_overlap: bool
    edge_chunk: int

    def __init__(
        self,
        basis: Dict[str, Sequence[int]],
        r_cut: float,
        channels: int = 16,
        lmax: Optional[int] = None,
        n_layers: int = 2,
        num_radial: int = 8,
        latent_dim: int = 64,
        mlp_hidden: int = 64,
        avg_num_neighbors: float = 10.0,
        res_alpha: float = 0.5,
        operators: Sequence[str] = OPERATORS,
        lem: bool = False,
        r_max: Optional[float] = None,
        lem_decay: float = 1.0,
        envelope_p: int = 6,
        head_channels: int = 0,
    ):
        super().__init__()
        for op in operators:
            if op not in OPERATORS:
                raise ValueError(f"unknown operator {op!r}; choose from {OPERATORS}")
        self.config = dict(
            basis={k: [int(l) for l in v] for k, v in basis.items()}, r_cut=float(r_cut),
            channels=channels, lmax=lmax, n_layers=n_layers, num_radial=num_radial,
            latent_dim=latent_dim, mlp_hidden=mlp_hidden,
            avg_num_neighbors=float(avg_num_neighbors), res_alpha=res_alpha,
            operators=list(operators), lem=lem, r_max=r_max, lem_decay=lem_decay,
            envelope_p=envelope_p, head_channels=int(head_channels),
        )
        self.symbols = list(basis.keys())
        self.n_species = len(self.symbols)
        shells = [[int(l) for l in basis[s]] for s in self.symbols]
        lmax_basis = max(max(s) for s in shells)
        self.lmax = int(lmax if lmax is not None else 2 * lmax_basis)
        self.r_cut = float(r_cut)
        self.lem = bool(lem)
        if self.lem:
            if r_max is None or r_max <= r_cut:
                raise ValueError("LEM needs r_max > r_cut (graph cutoff beyond the locality radius)")
            self.r_max = float(r_max)
        else:
            if r_max is not None and abs(r_max - r_cut) > 1e-12:
                raise ValueError("SLEM is strictly local: r_max must equal r_cut (or use lem=True)")
            self.r_max = self.r_cut
        self.inv_avg = 1.0 / float(avg_num_neighbors)
        self.inv_sqrt_avg = 1.0 / math.sqrt(float(avg_num_neighbors))
        self.operators = list(operators)
        self.predict_overlap = "overlap" in self.operators
        self.head_names = [op for op in self.operators if op != "overlap"]
        # runtime setting, not a hyper-parameter: > 0 runs each layer's per-edge work in runs of
        # this many edges (same result; faster on big structures, whose full-size intermediates
        # outgrow the CPU caches).  Set on a loaded model file by ase_slem.model_file.run_network.
        self.edge_chunk = 0

        hidden = Irreps.full(self.lmax, channels)
        self.hidden_irreps = hidden
        self.frame = EdgeFrame(self.lmax)
        from e3nn import o3

        self.sh = o3.SphericalHarmonics(o3.Irreps.spherical_harmonics(self.lmax), True, "component")
        self.radial = BesselBasis(self.r_max, num_radial)
        self.envelope = PolynomialEnvelope(self.r_max, envelope_p)
        self.lem_lambda = torch.nn.Parameter(
            torch.tensor(math.log(math.expm1(lem_decay)), dtype=torch.get_default_dtype())
        )

        # initial features (Eq. 8-10)
        self.two_body = MLP([2 * self.n_species + num_radial, mlp_hidden, latent_dim])
        self.init_ln = torch.nn.LayerNorm(latent_dim)
        n_nat = channels * (self.lmax + 1)
        self.init_v_w = torch.nn.Linear(latent_dim, n_nat)
        self.init_e_w = torch.nn.Linear(latent_dim, n_nat, bias=False)
        self.init_node = E3Linear(hidden, hidden)
        # component -> (natural-parity channel l * channels + copy, or the zero slot) and
        # component -> spherical-harmonics index l^2 + l + m
        nat_idx: List[int] = []
        sh_idx: List[int] = []
        for mul, l, p in hidden.blocks:
            for c in range(mul):
                for m in range(-l, l + 1):
                    nat_idx.append(l * channels + c if p == (-1) ** l else n_nat)
                    sh_idx.append(l * l + l + m)
        self.register_buffer("nat_index", torch.tensor(nat_idx, dtype=torch.long))
        self.register_buffer("sh_index", torch.tensor(sh_idx, dtype=torch.long))

        self.layers = torch.nn.ModuleList(
            [SLEMLayer(hidden, latent_dim, mlp_hidden, self.lmax, res_alpha) for _ in range(n_layers)]
        )
        self.heads = torch.nn.ModuleList([OperatorHead(basis, hidden, head_channels) for _ in self.head_names])
        self.overlap = SKOverlapHead(basis, latent_dim, (mlp_hidden,), self.lmax)
        self.max_norb = self.overlap.max_norb
        self.register_buffer("orbital_mask", self.heads[0].we_node.orbital_mask.clone()
                             if len(self.heads) else BlockIrrepsMap(basis).orbital_mask.clone())

    # ------------------------------------------------------------------
    def _natural(self, w: Tensor, y: Tensor) -> Tensor:
        """Per-channel weights times Y_l, placed in the natural-parity irreps of hidden."""
        w = torch.cat([w, w.new_zeros(w.shape[0], 1)], dim=1)
        return w.index_select(1, self.nat_index) * y.index_select(1, self.sh_index)

    def _initial(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor,
                 with_nodes: bool = True):
        """Edge geometry and the initial features (Eq. 8-10): (frame, u, damp, species of i and
        j per edge, x0, V, e of every edge, n); ``with_nodes=False`` skips the node aggregation
        (n is then an empty ``(0, hidden)`` tensor: the caller has the node features already)."""
        src = edge_index[0]
        dst = edge_index[1]
        vec = positions.index_select(0, dst) + edge_shift - positions.index_select(0, src)
        r = torch.linalg.norm(vec, dim=1)
        frame = self.frame(vec)
        y = self.sh(vec)
        u = self.envelope(r)
        if self.lem:
            lam = torch.nn.functional.softplus(self.lem_lambda)
            damp = torch.exp(-lam * torch.clamp(r - self.r_cut, min=0.0))
        else:
            damp = torch.ones_like(r)
        sp_i = species.index_select(0, src)
        sp_j = species.index_select(0, dst)
        onehot_i = torch.nn.functional.one_hot(sp_i, self.n_species).to(positions.dtype)
        onehot_j = torch.nn.functional.one_hot(sp_j, self.n_species).to(positions.dtype)
        x0 = self.two_body(torch.cat([onehot_i, onehot_j, self.radial(r)], dim=1)) * u.unsqueeze(1)
        v = self._natural(self.init_v_w(self.init_ln(x0)), y)
        e_all = self._natural(self.init_e_w(x0), y)
        if not with_nodes:
            return frame, u, damp, sp_i, sp_j, x0, v, e_all, e_all[:0]
        agg = torch.zeros(positions.shape[0], e_all.shape[1], dtype=e_all.dtype,
                          device=e_all.device).index_add_(0, src, e_all * damp.unsqueeze(1))
        n = self.init_node(agg * self.inv_sqrt_avg)
        return frame, u, damp, sp_i, sp_j, x0, v, e_all, n

    def forward(
        self,
        positions: Tensor,
        species: Tensor,
        edge_index: Tensor,
        edge_shift: Tensor,
        bond_index: Tensor,
    ) -> Dict[str, Tensor]:
        src = edge_index[0]
        dst = edge_index[1]
        frame, u, damp, sp_i, sp_j, x0, v, e_all, n = self._initial(positions, species, edge_index, edge_shift)
        bond_edges = torch.cat([bond_index[0], bond_index[1]])
        out: Dict[str, Tensor] = {}
        sp_bi = sp_i.index_select(0, bond_edges)
        sp_bj = sp_j.index_select(0, bond_edges)
        n_bond = bond_index.shape[1]
        if self.predict_overlap:
            s_blk = self.overlap(x0.index_select(0, bond_edges), u.index_select(0, bond_edges),
                                 frame.index_select(0, bond_edges), sp_bi, sp_bj)
            out["overlap_onsite"] = self.overlap.onsite(species)
            out["overlap_bond"] = 0.5 * (s_blk[:n_bond] + s_blk[n_bond:].transpose(1, 2))
        if len(self.head_names) == 0:
            return out

        e = e_all.index_select(0, bond_edges)
        x = x0
        for layer in self.layers:
            x, v, n, e = layer(x, v, n, e, frame, src, dst, bond_edges, u, damp, self.inv_avg, self.edge_chunk)
        k = 0
        for head in self.heads:
            onsite, bonds = head(n, e, species, sp_bi, sp_bj)
            name = self.head_names[k]
            out[name + "_onsite"] = onsite
            out[name + "_bond"] = bonds
            k += 1
        return out

    # ------------------------------------------------------------------
    # two-pass evaluation of big structures (ase_slem.model_file.run_network): node features
    # depend only on the edges leaving their atom, so a first pass over pieces of the structure
    # (each with the edges leaving its atoms) gives every atom's node features; a second pass
    # over the same pieces gives the blocks of the bond edges leaving them, reading the node
    # features of their far ends from the first pass.  No piece needs a halo of neighbours.
    @torch.jit.export
    def node_features(self, positions: Tensor, species: Tensor, edge_index: Tensor,
                      edge_shift: Tensor) -> Tensor:
        """Node features before each layer and after the last, ``(n_layers + 1, N, hidden)``.

        Right for the atoms all of whose edges are in ``edge_index`` (the others' rows miss
        messages)."""
        src = edge_index[0]
        dst = edge_index[1]
        frame, u, damp, sp_i, sp_j, x0, v, e_all, n = self._initial(positions, species, edge_index, edge_shift)
        no_bonds = torch.zeros(0, dtype=src.dtype, device=src.device)
        e = e_all[:0]
        x = x0
        ns: List[Tensor] = [n]
        for layer in self.layers:
            x, v, n, e = layer(x, v, n, e, frame, src, dst, no_bonds, u, damp, self.inv_avg, self.edge_chunk)
            ns.append(n)
        return torch.stack(ns)

    @torch.jit.export
    def directed_blocks(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor,
                        bond_edges: Tensor, nodes: Tensor) -> Dict[str, Tensor]:
        """Blocks from known node features ``nodes`` (:meth:`node_features` of every atom of
        the graph): ``op + "_onsite"`` (N, M, M) and ``op + "_directed"`` (len(bond_edges),
        M, M), the block B(ij) of each directed edge in ``bond_edges`` (indices into
        ``edge_index``), of which a bond's block is ``O_ij = (B(ij) + B(ji)^T) / 2``.

        Right for the atoms all of whose edges are in ``edge_index`` and for the bond edges
        leaving them."""
        src = edge_index[0]
        dst = edge_index[1]
        frame, u, damp, sp_i, sp_j, x0, v, e_all, n = self._initial(positions, species, edge_index, edge_shift,
                                                                    False)
        out: Dict[str, Tensor] = {}
        sp_bi = sp_i.index_select(0, bond_edges)
        sp_bj = sp_j.index_select(0, bond_edges)
        if self.predict_overlap:
            out["overlap_onsite"] = self.overlap.onsite(species)
            out["overlap_directed"] = self.overlap(x0.index_select(0, bond_edges), u.index_select(0, bond_edges),
                                                   frame.index_select(0, bond_edges), sp_bi, sp_bj)
        if len(self.head_names) == 0:
            return out
        e = e_all.index_select(0, bond_edges)
        x = x0
        n = nodes[0]
        k = 0
        for layer in self.layers:
            x, v, n, e = layer(x, v, n, e, frame, src, dst, bond_edges, u, damp, self.inv_avg, self.edge_chunk,
                               nodes[k + 1])
            k += 1
        k = 0
        for head in self.heads:
            onsite, blk = head.directed(n, e, species, sp_bi, sp_bj)
            name = self.head_names[k]
            out[name + "_onsite"] = onsite
            out[name + "_directed"] = blk
            k += 1
        return out

    # ------------------------------------------------------------------
    @torch.jit.unused
    def head(self, operator: str) -> OperatorHead:
        return self.heads[self.head_names.index(operator)]

    @torch.jit.unused
    def predict(self, atoms, r_bond: Optional[float] = None):
        """Convenience: build the graph of ``atoms`` and run the model.

        Returns ``(graph, outputs)`` (see :func:`ase_slem.nn.graph.build_graph`).
        """
        from .graph import build_graph

        dtype = next(self.parameters()).dtype
        g = build_graph(atoms, self.symbols, self.r_max,
                        r_bond=self.r_cut if r_bond is None else r_bond, dtype=dtype)
        out = self(g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index)
        return g, out


def average_num_neighbors(graphs) -> float:
    """Mean number of directed edges per atom over a list of :class:`AtomGraph`."""
    n_edge = sum(int(g.edge_index.shape[1]) for g in graphs)
    n_atom = sum(int(g.positions.shape[0]) for g in graphs)
    return n_edge / max(n_atom, 1)


def outputs_to_operators(model: "SLEM", graph, outputs: Dict[str, Tensor], atoms=None):
    """Turn the padded model outputs into ``{operator: RealSpaceOperator}``.

    ``graph``: the :class:`~ase_slem.nn.graph.AtomGraph` the outputs were predicted for.
    Blocks are cut to each atom's orbital count; onsite blocks become ``(i, i, 0)``.
    """
    import numpy as np

    from ..operators import RealSpaceOperator

    species = graph.species.numpy()
    mask = model.orbital_mask.cpu().numpy()
    counts = mask.sum(1)[species]
    bi, bj, bR = graph.bonds
    natoms = len(species)
    periodic = bool(graph.pbc.any().item()) if atoms is None else bool(np.any(atoms.pbc))
    symbols = [model.symbols[s] for s in species]
    ops = {}
    for op in model.operators:
        on = outputs[op + "_onsite"].detach().cpu().numpy()
        bd = outputs[op + "_bond"].detach().cpu().numpy()
        blocks = [on[a, : counts[a], : counts[a]] for a in range(natoms)]
        blocks += [bd[k, : counts[bi[k]], : counts[bj[k]]] for k in range(len(bi))]
        i = np.concatenate([np.arange(natoms), bi]).astype(np.int64)
        j = np.concatenate([np.arange(natoms), bj]).astype(np.int64)
        R = np.concatenate([np.zeros((natoms, 3), np.int64), np.asarray(bR, np.int64).reshape(-1, 3)])
        ops[op] = RealSpaceOperator.from_blocks(counts, i, j, R, blocks, periodic=periodic, name=op,
                                                symbols=symbols)
    return ops
