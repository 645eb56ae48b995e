"""Model files: load an exported SLEM model and predict operators with it.

A model file (``models/<name>.pt``) is a TorchScript archive written by
:func:`ase_slem.train.export.export_checkpoint`.  Its ``forward(positions, species,
edge_index, edge_shift, bond_index)`` takes the radius graph of a structure as plain tensors
(see :func:`ase_slem.nn.graph.build_graph`) and returns the padded operator blocks
(``"<op>_onsite"`` ``(N, M, M)``, ``"<op>_bond"`` ``(P, M, M)``).  Inside the archive,
``extra/ase_slem.json`` carries the metadata: format version, species and basis (shells and,
for Gaussian bases, radial functions), cutoffs, units, orbital convention, DFT settings,
operators, periodicity, measured errors and parameter count.

This module is the light runtime: torch (``torch.jit.load``), the graph builder and
:class:`~ase_slem.operators.RealSpaceOperator`; no training code, no config files.
:func:`read_metadata` needs neither torch nor the weights.

    model = load_model("models/si_pbe_dzvp.pt")
    ops = predict(model, atoms)          # {"hamiltonian": RealSpaceOperator (eV), "overlap": ..., ...}
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Sequence

import numpy as np

from .basis import Basis, shells_to_string
from .operators import RealSpaceOperator, _encode, _Group

MODEL_FORMAT = "ase_slem-model"
FORMAT_VERSION = 1
METADATA_NAME = "ase_slem.json"
OPERATOR_NAMES = ("hamiltonian", "overlap", "density_matrix")
REQUIRED_METADATA = ("format", "format_version", "species", "basis", "cutoffs", "operators", "dtype",
                     "periodic", "units", "orbital_convention")


class ModelFileError(ValueError):
    """A model file that cannot be used, or a structure/basis the model does not fit."""


# ---------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------
def model_folders() -> list[Path]:
    """Folders searched for model names: those of ``$ASE_SLEM_MODELS`` (``os.pathsep``-separated),
    then the ``models/`` folder beside the package."""
    folders = [Path(d) for d in os.environ.get("ASE_SLEM_MODELS", "").split(os.pathsep) if d]
    folders.append(Path(__file__).resolve().parent.parent / "models")
    return folders


def available_models() -> list[str]:
    """Names (file stems) of the ``.pt`` model files in :func:`model_folders`, sorted, unique."""
    return sorted({f.stem for folder in model_folders() if folder.is_dir() for f in folder.glob("*.pt")})


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A model file from a path, or a shipped model's name (``"si_pbe_dzvp"``).

    Names are looked up as ``<name>.pt`` in :func:`model_folders`; an unknown name raises
    :class:`ModelFileError` listing the models found there.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = p.name if p.suffix == ".pt" else f"{p.name}.pt"
    folders = model_folders()
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    found = available_models()
    listing = f"models found there: {', '.join(found)}" if found else "no models found there"
    raise ModelFileError(
        f"no model file {name_or_path!r}: not a file, and no {name} in "
        f"{', '.join(str(f) for f in folders)} ({listing}); give a path to a .pt model file "
        "or add its folder to $ASE_SLEM_MODELS"
    )


def read_metadata(path: str | os.PathLike) -> Dict[str, Any]:
    """The metadata of a model file, read from the archive without loading the network.

    Raises :class:`ModelFileError` for a missing, corrupt or foreign file, metadata that is
    incomplete, or a format newer than this ase_slem reads.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if n.endswith("/extra/" + METADATA_NAME)]
            if not members:
                has_code = any(n.endswith("/code/") or "/code/" in n for n in zf.namelist())
                what = "a TorchScript archive" if has_code else "a zip/torch archive"
                raise ModelFileError(
                    f"{path} is {what} without ase_slem metadata (extra/{METADATA_NAME}): not an ase_slem "
                    "model file. Training checkpoints must be exported first: ase-slem export CHECKPOINT -o MODEL.pt"
                )
            text = zf.read(members[0]).decode("utf-8")
    except zipfile.BadZipFile:
        raise ModelFileError(
            f"{path} is not an ase_slem model file (not a TorchScript archive; corrupt or truncated?)"
        ) from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the ase_slem metadata is not valid JSON ({exc}); the file is corrupt") from None
    check_metadata(meta, path)
    return meta


def check_metadata(meta: Dict[str, Any], path: str | os.PathLike = "model file") -> None:
    """Raise :class:`ModelFileError` unless ``meta`` is complete and of a format we read."""
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not an ase_slem model file (metadata format is not '{MODEL_FORMAT}')")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{path}: metadata has no integer format_version; the file is corrupt")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"this model file was written by a newer ase_slem format {version} (this ase_slem reads "
            f"format {FORMAT_VERSION}); upgrade ase_slem to use {path}"
        )
    if version < 1:
        raise ModelFileError(f"{path}: unknown model file format {version}")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: metadata lacks {', '.join(missing)}; the file is corrupt or incomplete")
    bad_ops = [o for o in meta["operators"] if o not in OPERATOR_NAMES]
    if bad_ops:
        raise ModelFileError(f"{path}: unknown operator(s) {bad_ops} in the metadata")


# ---------------------------------------------------------------------------------------------
# the loaded model
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model file in memory: the TorchScript ``module`` and its ``metadata``."""

    path: Path
    module: Any
    metadata: Dict[str, Any]
    _basis: Optional[Basis] = field(default=None, repr=False)

    @property
    def symbols(self) -> list:
        """Species in the order the network's ``species`` index uses."""
        return list(self.metadata["species"])

    @property
    def shells(self) -> Dict[str, list]:
        """``{symbol: [l of each shell]}``."""
        return {k: [int(l) for l in v] for k, v in self.metadata["basis"]["shells"].items()}

    @property
    def basis(self) -> Basis:
        if self._basis is None:
            self._basis = Basis(self.shells, name=self.metadata["basis"].get("name", ""))
        return self._basis

    @property
    def operators(self) -> list:
        return list(self.metadata["operators"])

    @property
    def r_cut(self) -> float:
        return float(self.metadata["cutoffs"]["r_cut"])

    @property
    def r_graph(self) -> float:
        """Neighbour cutoff of the graph (r_cut for SLEM, r_max for LEM), Å."""
        return float(self.metadata["cutoffs"]["r_graph"])

    @property
    def r_bond(self) -> float:
        return float(self.metadata["cutoffs"]["r_bond"])

    @property
    def periodic(self) -> bool:
        return bool(self.metadata["periodic"] is True)

    @property
    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "float64": torch.float64}[self.metadata["dtype"]]

    @property
    def orbital_counts(self) -> Dict[str, int]:
        return {el: sum(2 * l + 1 for l in ls) for el, ls in self.shells.items()}

    @property
    def max_norb(self) -> int:
        return max(self.orbital_counts.values())

    def __repr__(self) -> str:
        m = self.metadata
        return (f"LoadedModel({m.get('name', self.path.stem)!r}, species={self.symbols}, "
                f"basis={ {k: shells_to_string(v) for k, v in self.shells.items()} }, "
                f"operators={self.operators}, r_cut={self.r_cut})")


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Load a model file (a path or a shipped model's name) with ``torch.jit.load``.

    The metadata is checked first (format version, completeness), so a file from a newer
    ase_slem fails with a message saying so rather than with a TorchScript error.
    """
    import torch

    path = resolve_model_path(path)
    meta = read_metadata(path)
    extra = {METADATA_NAME: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: the TorchScript network cannot be loaded ({first[:200]}); the file is corrupt "
                             "or needs a newer torch") from None
    module.eval()
    return LoadedModel(path, module, meta)


def check_elements(model: LoadedModel, symbols: Sequence[str]) -> None:
    """Raise :class:`ModelFileError` naming the elements the model was not trained for."""
    known = set(model.symbols)
    missing = sorted({s for s in symbols if s not in known})
    if missing:
        raise ModelFileError(
            f"the model {model.metadata.get('name', model.path.stem)!r} knows {', '.join(model.symbols)} only; "
            f"the structure contains {', '.join(missing)}. Use a model trained for these elements"
        )


def check_basis(model: LoadedModel, basis: Basis | Dict[str, Any]) -> None:
    """Raise :class:`ModelFileError` unless ``basis`` (of some data) equals the model's basis
    for every element both have, and covers no element the model lacks."""
    b = basis if isinstance(basis, Basis) else Basis(basis)
    for el in b.elements:
        if el not in model.shells:
            raise ModelFileError(f"the basis has {el}, which the model does not know ({', '.join(model.symbols)})")
        if list(b.shells(el)) != model.shells[el]:
            raise ModelFileError(
                f"basis of {el} differs: the data has {shells_to_string(b.shells(el))}, the model "
                f"{shells_to_string(model.shells[el])} ({model.basis.name or 'unnamed basis'}); compare like with like"
            )


# ---------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------
def _centre_order(atoms, r: float) -> np.ndarray:
    """Atom order that keeps spatial neighbours together (slabs of width ~r), for chunking."""
    if atoms.pbc.any():
        pos = atoms.get_scaled_positions(wrap=True) @ atoms.cell.array
    else:
        pos = atoms.positions
    cells = np.floor((pos - pos.min(axis=0)) / max(r, 1e-3)).astype(np.int64)
    return np.lexsort((cells[:, 0], cells[:, 1], cells[:, 2]))


def _plan_chunks(centres: np.ndarray, n_atoms: int, src: np.ndarray, dst: np.ndarray, bond_edge: np.ndarray,
                 max_edges: int) -> list:
    """Split ``centres`` into runs whose subgraphs (edges leaving the centres and their bond
    partners) hold at most ``max_edges`` edges (a single centre may exceed it)."""
    deg = np.bincount(src, minlength=n_atoms)
    bond_i = src[bond_edge]
    bond_j = dst[bond_edge]
    out, todo = [], [centres]
    while todo:
        c = todo.pop()
        is_c = np.zeros(n_atoms, bool)
        is_c[c] = True
        need = is_c.copy()
        need[bond_j[is_c[bond_i]]] = True
        if deg[need].sum() <= max_edges or len(c) == 1:
            out.append(c)
        else:
            half = len(c) // 2
            todo += [c[half:], c[:half]]
    return out


EDGE_CHUNK = 1024  # edges per run inside each layer (run_network's default; benchmarks/bench_model.py)
# Largest graph (edges) run in one network call; bigger ones go in two passes over pieces of at
# most this many edges.  On 1728-atom Si (328k edges, 1 thread): 20k-edge pieces as fast as the
# whole graph at once (both ~200 us/edge) and peak memory 1.5 GB instead of 4.5 GB.
MAX_EDGES = 20_000


def set_edge_chunk(model: LoadedModel, edge_chunk: int) -> bool:
    """Let the network run each layer's per-edge work in runs of ``edge_chunk`` edges (0: all
    at once).  The result is the same; on big structures it is faster, because the
    intermediates of one run stay in the CPU caches (``benchmarks/bench_model.py``).  Returns
    False for model files exported before the setting existed (they run unchunked)."""
    parts = getattr(model.module, "parts", None)  # a union of networks (train.export.ScriptedSLEMUnion)
    nets = list(parts.children()) if parts is not None else [getattr(model.module, "model", None)]
    if any(net is None or not hasattr(net, "edge_chunk") for net in nets):
        return False
    for net in nets:
        net.edge_chunk = int(edge_chunk)
    return True


def run_network(model: LoadedModel, graph, max_edges: int = MAX_EDGES,
                order_atoms=None, edge_chunk: int = EDGE_CHUNK,
                operators: Optional[Sequence[str]] = None) -> Dict[str, tuple]:
    """Run the network on ``graph`` (an :class:`~ase_slem.nn.graph.AtomGraph`); a graph of more
    than ``max_edges`` edges is split into pieces of atoms (consecutive in ``order_atoms``,
    which should keep neighbours together) holding at most ``max_edges`` edges each, a memory
    bound; each layer works through runs of ``edge_chunk`` edges (a cache bound,
    :func:`set_edge_chunk`).

    Exact for SLEM and LEM, because a node's features depend only on the edges leaving it, and
    a bond (i, j) only on those leaving i or j.  Pieces are evaluated in two passes (model
    files exported with ``node_features``): the first gives every atom's node features from
    the edges leaving the piece's atoms, the second the blocks of the bonds leaving them,
    reading their far ends' node features from the first.  The cost is that of the whole graph
    plus one more run of the hidden-state updates, whatever the number of pieces.  (Older
    model files carry each piece's bond partners with it instead: several times the work.)

    Returns ``{op: (onsite (N, M, M), bonds (P, M, M))}`` for the model's operators (or
    ``operators``) as numpy arrays of the model's precision (float32 for the shipped models:
    widening the network's float32 output to float64 adds no digits and doubles the memory
    of the largest structures).
    """
    import torch

    dt = model.torch_dtype
    pos = graph.positions.to(dt)
    shift = graph.edge_shift.to(dt)
    species = graph.species
    ei = graph.edge_index
    bidx = graph.bond_index
    n, n_edge, n_bond = pos.shape[0], ei.shape[1], bidx.shape[1]
    set_edge_chunk(model, edge_chunk)
    m = model.max_norb
    ops = list(model.operators if operators is None else operators)
    np_dtype = np.float32 if dt == torch.float32 else np.float64
    if n_edge <= max_edges:
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            out = model.module(pos, species, ei, shift, bidx)
        return {op: (out[op + "_onsite"].numpy().astype(np_dtype, copy=False),
                     out[op + "_bond"].numpy().astype(np_dtype, copy=False)) for op in ops}

    src, dst = ei[0].numpy(), ei[1].numpy()
    centres_all = np.arange(n) if order_atoms is None else np.asarray(order_atoms)
    res = {op: (np.zeros((n, m, m), np_dtype), np.zeros((n_bond, m, m), np_dtype)) for op in ops}
    if not hasattr(model.module, "node_features"):
        _run_with_bond_partners(model, pos, species, ei, shift, bidx, centres_all, max_edges, ops, res)
        return res

    pieces = _atom_runs(centres_all, np.bincount(src, minlength=n), max_edges)
    subs = [_piece_graph(piece, n, src, dst) for piece in pieces]  # O(E) in all, used by both passes
    bond_fwd, bond_rev = bidx[0].numpy(), bidx[1].numpy()
    fwd_src, rev_src = src[bond_fwd], src[bond_rev]
    table = None
    # optimized_execution(False): TorchScript's profiling executor would re-specialize the graph
    # for the shapes of every new piece (seconds each time) for no steady-state gain here
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        for piece, sub in zip(pieces, subs):  # pass 1: node features of every atom
            nodes = model.module.node_features(pos.index_select(0, sub.atoms), species.index_select(0, sub.atoms),
                                               sub.edge_index, shift.index_select(0, sub.edges))
            if table is None:
                table = torch.zeros((nodes.shape[0], n, nodes.shape[2]), dtype=nodes.dtype)
            table[:, torch.from_numpy(piece)] = nodes[:, torch.from_numpy(sub.local_atom[piece])]
        for piece, sub in zip(pieces, subs):  # pass 2: blocks of the bond edges leaving the piece
            fwd = np.flatnonzero(sub.is_member[fwd_src])
            rev = np.flatnonzero(sub.is_member[rev_src])
            edges = torch.from_numpy(sub.local_edges(np.concatenate([bond_fwd[fwd], bond_rev[rev]])))
            out = model.module.directed_blocks(pos.index_select(0, sub.atoms), species.index_select(0, sub.atoms),
                                               sub.edge_index, shift.index_select(0, sub.edges), edges,
                                               table.index_select(1, sub.atoms))
            rows = sub.local_atom[piece]
            for op in ops:
                res[op][0][piece] = out[op + "_onsite"].numpy()[rows]
                blk = out[op + "_directed"].numpy()
                res[op][1][fwd] += 0.5 * blk[: len(fwd)]
                res[op][1][rev] += 0.5 * np.swapaxes(blk[len(fwd):], 1, 2)
    return res


def _atom_runs(order: np.ndarray, degree: np.ndarray, max_edges: int) -> list:
    """``order`` cut into consecutive runs whose atoms have at most ``max_edges`` edges in all
    (a run holds at least one atom)."""
    total = np.cumsum(degree[order])
    runs, start, base = [], 0, 0
    while start < len(order):
        stop = max(int(np.searchsorted(total, base + max_edges, side="right")), start + 1)
        runs.append(order[start:stop])
        base = int(total[stop - 1])
        start = stop
    return runs


class _PieceGraph(NamedTuple):
    is_member: np.ndarray   # (N,) bool: atom in the piece
    edges: Any              # (E_p,) torch long: the edges leaving the piece (global indices, ascending)
    atoms: Any              # (N_p,) torch long: the piece and its edges' far ends (global indices)
    local_atom: np.ndarray  # (N,) global -> local atom index (-1 outside)
    edge_index: Any         # (2, E_p) torch long, local atom indices

    def local_edges(self, edges: np.ndarray) -> np.ndarray:
        """Local indices of global ``edges``, which must leave the piece."""
        return np.searchsorted(self.edges.numpy(), edges)


def _piece_graph(piece: np.ndarray, n: int, src: np.ndarray, dst: np.ndarray) -> _PieceGraph:
    """The subgraph of the edges leaving the atoms of ``piece``."""
    import torch

    member = np.zeros(n, bool)
    member[piece] = True
    esel = np.flatnonzero(member[src])
    keep = member.copy()
    keep[dst[esel]] = True
    atoms_sel = np.flatnonzero(keep)
    local_atom = np.full(n, -1, np.int64)
    local_atom[atoms_sel] = np.arange(len(atoms_sel))
    sub_ei = torch.from_numpy(np.stack([local_atom[src[esel]], local_atom[dst[esel]]]))
    return _PieceGraph(member, torch.from_numpy(esel), torch.from_numpy(atoms_sel), local_atom, sub_ei)


def _run_with_bond_partners(model, pos, species, ei, shift, bidx, centres_all, max_edges, ops, res) -> None:
    """Pieces for model files without ``node_features``: each carries the edges leaving its
    atoms and their bond partners, so that one network call gives its blocks (fills ``res``)."""
    import torch

    n = pos.shape[0]
    src, dst = ei[0].numpy(), ei[1].numpy()
    bond_edge = bidx[0].numpy()
    bond_i = src[bond_edge]
    for centres in _plan_chunks(centres_all, n, src, dst, bond_edge, max_edges):
        is_c = np.zeros(n, bool)
        is_c[centres] = True
        bsel = np.flatnonzero(is_c[bond_i])
        need = is_c.copy()
        need[dst[bond_edge[bsel]]] = True
        sub = _piece_graph(np.flatnonzero(need), n, src, dst)  # edges leaving centres and partners
        sub_b = torch.from_numpy(sub.local_edges(bidx[:, bsel].numpy()).reshape(2, -1))
        with torch.inference_mode():
            out = model.module(pos.index_select(0, sub.atoms), species.index_select(0, sub.atoms), sub.edge_index,
                               shift.index_select(0, sub.edges), sub_b)
        rows = sub.local_atom[centres]
        for op in ops:
            res[op][0][centres] = out[op + "_onsite"].numpy()[rows]
            res[op][1][bsel] = out[op + "_bond"].numpy()


def blocks_to_operators(outputs: Dict[str, tuple], species: np.ndarray, norb_species: np.ndarray,
                        bond_i: np.ndarray, bond_j: np.ndarray, bond_R: np.ndarray, *, periodic: bool,
                        basis: Optional[Basis] = None, symbols: Optional[Sequence[str]] = None,
                        release: bool = False) -> Dict[str, RealSpaceOperator]:
    """Padded onsite/bond blocks -> :class:`RealSpaceOperator` per operator, vectorized.

    ``outputs``: ``{op: (onsite (N, M, M), bonds (P, M, M))}``; bonds must be in the stored
    triangle (i < j, or i == j with R > 0 lexicographically), as the graph gives them.
    Blocks are cut to each atom's orbital count and grouped by shape with one gather per
    shape; they keep the arrays' precision.  ``release=True`` pops each operator from
    ``outputs`` once its blocks are packed, so that on big structures the padded arrays of
    one operator are freed before the next is packed.
    """
    species = np.asarray(species, np.int64)
    counts = np.asarray(norb_species, np.int64)[species]
    n = len(species)
    i = np.concatenate([np.arange(n), np.asarray(bond_i, np.int64)])
    j = np.concatenate([np.arange(n), np.asarray(bond_j, np.int64)])
    R = np.concatenate([np.zeros((n, 3), np.int64), np.asarray(bond_R, np.int64).reshape(-1, 3)])
    ni, nj = counts[i], counts[j]
    mmax = int(counts.max()) + 1 if n else 1
    shape_key = ni * mmax + nj
    order = np.lexsort((_encode(i, j, R, n), shape_key))
    i, j, R, skey = i[order], j[order], R[order], shape_key[order]
    bounds = np.flatnonzero(np.diff(skey)) + 1
    starts = np.concatenate([[0], bounds]).astype(int)
    stops = np.concatenate([bounds, [len(order)]]).astype(int)
    result = {}
    for op in list(outputs):
        onsite, bonds = outputs.pop(op) if release else outputs[op]
        groups = []
        for s, e in zip(starts, stops):
            if e <= s:
                continue
            a, b = int(ni[order[s]]), int(nj[order[s]])
            rows = order[s:e]
            is_on = rows < n
            data = np.empty((e - s, a, b), np.result_type(onsite, bonds))
            data[is_on] = onsite[rows[is_on], :a, :b]
            data[~is_on] = bonds[rows[~is_on] - n, :a, :b]
            groups.append(_Group(a, b, int(s), int(e), data))
        del onsite, bonds
        result[op] = RealSpaceOperator(counts, i, j, R, groups, periodic=periodic, name=op, basis=basis,
                                       symbols=symbols)
    return result


def predict(model: LoadedModel, atoms, *, operators: Optional[Sequence[str]] = None,
            max_edges: int = MAX_EDGES, baseline: bool = True) -> Dict[str, RealSpaceOperator]:
    """Operators of ``atoms`` predicted by ``model``: ``{"hamiltonian": H (eV), "overlap": S,
    "density_matrix": D (spin-summed)}`` (those the model predicts, or ``operators``).

    A model trained on H - H0 (``metadata["hamiltonian_baseline"]``, see
    :mod:`ase_slem.hamiltonian_baseline`) gets H0 added to its H (needs PySCF); ``baseline=False``
    returns the network's H - H0 as it is.

    The graph is built with the model's cutoffs; large structures are evaluated in chunks of
    at most ``max_edges`` graph edges (memory stays bounded; results are the same).
    Raises :class:`ModelFileError` for elements the model does not know, and ``ValueError``
    (from the graph builder) for overlapping atoms or a periodic structure without a cell.
    """
    from .nn.graph import build_graph

    ops = list(model.operators if operators is None else operators)
    unknown = [o for o in ops if o not in model.operators]
    if unknown:
        raise ModelFileError(f"the model predicts {', '.join(model.operators)}, not {', '.join(unknown)}")
    symbols = atoms.get_chemical_symbols()
    check_elements(model, symbols)
    if len(atoms) == 0:
        raise ModelFileError("the structure has no atoms")
    g = build_graph(atoms, model.symbols, model.r_graph, r_bond=model.r_bond, dtype=model.torch_dtype)
    order = _centre_order(atoms, model.r_graph)
    raw = run_network(model, g, max_edges=max_edges, order_atoms=order, operators=ops)
    bi, bj, bR = g.bonds
    norb = np.array([model.orbital_counts[s] for s in model.symbols])
    periodic = bool(np.any(atoms.pbc))
    result = blocks_to_operators(raw, g.species.numpy(), norb, bi, bj, bR,
                                 periodic=periodic, basis=model.basis, symbols=symbols, release=True)
    settings = model.metadata.get("hamiltonian_baseline")
    if baseline and settings and "hamiltonian" in result:
        from .hamiltonian_baseline import hamiltonian_baseline

        result["hamiltonian"] = result["hamiltonian"] + hamiltonian_baseline(atoms, settings)
    return result
