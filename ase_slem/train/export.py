"""Export a training checkpoint as a TorchScript model file with its metadata.

The file holds the scripted network (EMA weights by default) wrapped so that ``forward``
takes plain tensors in any float dtype, and ``extra/ase_slem.json`` (see
:mod:`ase_slem.model_file`) with: format version, name, species, basis (shells per element,
the basis name and -- for PySCF Gaussian bases -- the radial functions), cutoffs, units,
orbital convention ("e3nn"), the DFT settings of the training data, the operators, periodic or
molecular, the network settings, parameter count and the validation/test errors.

Radial functions (PySCF Gaussian bases) are stored in the layout of
:func:`ase_slem.orbitals.radial_basis_to_dict` (per element, one entry per shell in the basis'
shell order: l, exponents in 1/Å^2, coefficients of normalized R(r) = r^l sum_k c_k exp(-a_k r^2),
cutoff), so :func:`ase_slem.orbitals.radial_basis_from_dict` turns them back into the
:class:`~ase_slem.io.radial.RadialBasis` that density rendering uses; ``null`` for other bases.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..model_file import FORMAT_VERSION, METADATA_NAME, MODEL_FORMAT, OPERATOR_NAMES, load_model, predict
from .checkpoint import METRIC_OPERATOR, build_model, is_model_file, load_checkpoint, state_from_model_file
from .._files import publish


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that does not reproduce the model."""


class ScriptedSLEM(torch.nn.Module):
    """The network with plain-tensor inputs cast to its own float dtype."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.register_buffer("dtype_probe", torch.zeros(0, dtype=dtype))

    def forward(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor,
                bond_index: Tensor) -> Dict[str, Tensor]:
        dt = self.dtype_probe.dtype
        return self.model(positions.to(dt), species, edge_index, edge_shift.to(dt), bond_index)

    @torch.jit.export
    def node_features(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor) -> Tensor:
        """First pass of the two-pass evaluation of big structures (SLEM.node_features)."""
        dt = self.dtype_probe.dtype
        return self.model.node_features(positions.to(dt), species, edge_index, edge_shift.to(dt))

    @torch.jit.export
    def directed_blocks(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor,
                        bond_edges: Tensor, nodes: Tensor) -> Dict[str, Tensor]:
        """Second pass (SLEM.directed_blocks)."""
        dt = self.dtype_probe.dtype
        return self.model.directed_blocks(positions.to(dt), species, edge_index, edge_shift.to(dt), bond_edges,
                                          nodes.to(dt))


class ScriptedSLEMUnion(torch.nn.Module):
    """Several networks on one graph, each giving some of the operators: e.g. H and S from a
    network trained on H - H0, D from one trained for D (the SLEM paper trains one network per
    operator; one network for all of them shares its features between their losses).

    The outputs, ``node_features`` and ``directed_blocks`` are those of :class:`ScriptedSLEM`;
    the node features of the parts travel side by side, flattened, as ``(1, N, sum of
    layers * width)``."""

    def __init__(self, models: Sequence[torch.nn.Module], operators: Sequence[Sequence[str]],
                 node_shapes: Sequence[Sequence[int]], dtype: torch.dtype):
        super().__init__()
        self.parts = torch.nn.ModuleList(models)
        self.keep: List[List[str]] = [[op + suffix for op in ops for suffix in ("_onsite", "_bond", "_directed")]
                                      for ops in operators]
        self.node_layers: List[int] = [int(s[0]) for s in node_shapes]
        self.node_widths: List[int] = [int(s[1]) for s in node_shapes]
        self.register_buffer("dtype_probe", torch.zeros(0, dtype=dtype))

    def forward(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor,
                bond_index: Tensor) -> Dict[str, Tensor]:
        dt = self.dtype_probe.dtype
        out: Dict[str, Tensor] = {}
        k = 0
        for part in self.parts:
            res = part(positions.to(dt), species, edge_index, edge_shift.to(dt), bond_index)
            for key in self.keep[k]:
                if key in res:
                    out[key] = res[key]
            k += 1
        return out

    @torch.jit.export
    def node_features(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor) -> Tensor:
        dt = self.dtype_probe.dtype
        flat: List[Tensor] = []
        for part in self.parts:
            nodes = part.node_features(positions.to(dt), species, edge_index, edge_shift.to(dt))
            flat.append(nodes.permute(1, 0, 2).reshape(nodes.shape[1], -1))
        return torch.cat(flat, dim=1).unsqueeze(0)

    @torch.jit.export
    def directed_blocks(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor,
                        bond_edges: Tensor, nodes: Tensor) -> Dict[str, Tensor]:
        dt = self.dtype_probe.dtype
        flat = nodes[0].to(dt)
        out: Dict[str, Tensor] = {}
        k = 0
        start = 0
        for part in self.parts:
            layers, width = self.node_layers[k], self.node_widths[k]
            mine = flat[:, start:start + layers * width].reshape(flat.shape[0], layers, width).permute(1, 0, 2)
            res = part.directed_blocks(positions.to(dt), species, edge_index, edge_shift.to(dt), bond_edges,
                                       mine.contiguous())
            for key in self.keep[k]:
                if key in res:
                    out[key] = res[key]
            start += layers * width
            k += 1
        return out


def pyscf_radial_basis(basis_name: str, shells: Dict[str, Sequence[int]]) -> Dict[str, Any]:
    """Radial functions of a PySCF basis set for each element, as
    :func:`ase_slem.orbitals.radial_basis_to_dict` describes them (read back with
    :func:`ase_slem.orbitals.radial_basis_from_dict`).

    ``shells`` (``{symbol: [l ...]}``) is checked against the basis: one radial shell per
    contracted function of each PySCF shell, in PySCF's order (that of :meth:`Basis.from_pyscf`).
    """
    from pyscf import gto

    from ..orbitals import radial_basis_from_pyscf, radial_basis_to_dict

    elements = list(shells)
    n_el = sum(int(gto.charge(el)) for el in elements)
    mol = gto.M(atom=[[el, (4.0 * k, 0.0, 0.0)] for k, el in enumerate(elements)], basis=basis_name,
                unit="Angstrom", spin=n_el % 2, verbose=0)
    radial = radial_basis_from_pyscf(mol)
    for el, ls in shells.items():
        got = [int(f.l) for f in radial.functions[el]]
        if got != [int(l) for l in ls]:
            raise ExportError(
                f"PySCF basis {basis_name!r} gives {el} the shells {got}, but the model was trained with {list(ls)}"
            )
    return radial_basis_to_dict(radial)


def _radial_metadata(dataset: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Radial functions for the metadata, or None when the basis is not a PySCF one."""
    settings = dataset.get("settings", {}) or {}
    name = dataset.get("basis_name") or settings.get("basis") or ""
    if settings.get("code") == "pyscf" and isinstance(name, str) and name:
        return pyscf_radial_basis(name, dataset["basis"])
    return None


def build_metadata(state: Dict[str, Any], name: Optional[str] = None, use_ema: bool = True) -> Dict[str, Any]:
    """The ``ase_slem.json`` metadata of a checkpoint's model."""
    from .. import __version__

    args = state["model_args"]
    ds = state.get("dataset", {})
    cfg = state["config"]
    lem = bool(args.get("lem", False))
    r_cut = float(args["r_cut"])
    return {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or cfg.get("name", "model"),
        "description": cfg.get("description", ""),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ase_slem_version": __version__,
        "torch_version": torch.__version__,
        "species": list(args["basis"]),
        "basis": {
            "name": ds.get("basis_name", ""),
            "shells": {k: [int(l) for l in v] for k, v in args["basis"].items()},
            "radial": _radial_metadata(ds),  # ase_slem.orbitals.radial_basis_from_dict reads it
        },
        "orbital_convention": "e3nn",
        "orbital_order": "shells in the order of basis.shells; inside a shell m in e3nn's real spherical "
                         "harmonics order (l=1: x, y, z)",
        "cutoffs": {"r_cut": r_cut, "r_graph": float(args["r_max"]) if lem else r_cut,
                    "r_bond": float(state.get("r_bond", r_cut)), "unit": "Angstrom"},
        "operators": list(args["operators"]),
        "units": {"length": "Angstrom", "hamiltonian": "eV", "overlap": "dimensionless",
                  "density_matrix": "dimensionless, spin-summed (Tr(DS) = electrons)"},
        "periodic": ds.get("periodic", None),
        "dft_settings": ds.get("settings", {}),
        "dtype": state["dtype"],
        "network": {"type": "LEM" if lem else "SLEM", "args": args, "weights": "EMA" if use_ema else "raw",
                    "n_parameters": int(state.get("n_parameters", 0))},
        "training": {"steps": int(state["step"]), "frames": {k: len(v) for k, v in ds.get("split", {}).items()},
                     "split": {k: list(v) for k, v in ds.get("split", {}).items()}, "dataset": ds.get("path"),
                     "config": cfg},
        "metrics": state.get("metrics", {}),
        "hamiltonian_baseline": _baseline_metadata(cfg, ds.get("settings", {})),
        "inputs": "forward(positions (N,3) Angstrom, species (N,) int64 index into 'species', edge_index (2,E) "
                  "int64, edge_shift (E,3) Angstrom = R @ cell, bond_index (2,P) int64) -> {op_onsite (N,M,M), "
                  "op_bond (P,M,M)}; graph from ase_slem.nn.graph.build_graph(atoms, species, r_graph, r_bond)",
    }


def _baseline_metadata(cfg: Dict[str, Any], settings: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The Hamiltonian baseline the network's H is added to (None: the network predicts H)."""
    kind = cfg.get("model", {}).get("hamiltonian_baseline")
    if kind is None:
        return None
    from ..hamiltonian_baseline import baseline_settings

    return baseline_settings(kind, settings["xc"], settings["basis"], settings.get("grids_level"))


def _test_structure(symbols: Sequence[str], r_bond: float, periodic: bool):
    """A small structure with a few bonds of every species, for the export self-check."""
    from ase import Atoms

    d = min(0.6 * r_bond, 2.2)
    syms = [symbols[k % len(symbols)] for k in range(4)]
    pos = np.array([[0, 0, 0], [d, 0.1, 0], [0.2, d, 0.3], [d * 0.9, d * 1.1, 0.2 - d * 0.4]])
    if periodic is True:
        return Atoms(syms, positions=pos, cell=np.diag([3 * d, 3 * d, 3 * d]), pbc=True)
    return Atoms(syms, positions=pos)


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, use_ema: bool = True,
                      name: Optional[str] = None, check: bool = True,
                      recommended_overlap: Optional[str] = None) -> Path:
    """Write the model of ``checkpoint`` as a TorchScript model file at ``output``.

    ``use_ema``: export the averaged weights (as validated) rather than the raw ones.
    ``recommended_overlap``: ``"exact"`` or ``"model"``, what ``SLEMCalculator(overlap="auto")``
    uses for this model (recorded in the metadata; default: not recorded, i.e. the model's).
    ``check``: load the written file with :func:`ase_slem.model_file.load_model` and compare
    its prediction on a small structure with the eager network before putting it in place.
    """
    if is_model_file(checkpoint):
        return reexport_model_file(checkpoint, output, check=check, recommended_overlap=recommended_overlap)
    state = load_checkpoint(checkpoint)
    model = _network(state, use_ema)
    meta = build_metadata(state, name=name, use_ema=use_ema)
    if recommended_overlap is not None:
        _check_recommended_overlap(recommended_overlap, meta)
        meta["recommended_overlap"] = recommended_overlap
    return export_model(model, output, meta, check=check)


def _check_recommended_overlap(value: str, meta: Dict[str, Any]) -> None:
    if value not in ("model", "exact"):
        raise ExportError(f"recommended_overlap must be 'model' or 'exact', not {value!r}")
    if value == "exact" and not meta["basis"]["radial"]:
        raise ExportError("recommended_overlap='exact' needs a Gaussian basis with radial functions in the checkpoint")


def reexport_model_file(path: str | os.PathLike, output: str | os.PathLike, *, check: bool = True,
                        recommended_overlap: Optional[str] = None) -> Path:
    """Write the network of an exported model file again with this ase_slem's code (same
    weights and metadata, version fields updated), e.g. to pick up a faster runtime."""
    from .. import __version__

    state = state_from_model_file(path)
    model = _network(state)
    meta = dict(state["metadata"], ase_slem_version=__version__, torch_version=torch.__version__)
    if recommended_overlap is not None:
        meta["recommended_overlap"] = recommended_overlap
    return export_model(model, output, meta, check=check)


def _load_part(path: str | os.PathLike, use_ema: bool,
               operators: Optional[Sequence[str]] = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """(eager network, its metadata) of a checkpoint or a model file (of a joined file: the
    network that gives ``operators``)."""
    if is_model_file(path):
        state = state_from_model_file(path, operators)
        return _network(state), state["metadata"]
    state = load_checkpoint(path)
    return _network(state, use_ema), build_metadata(state, use_ema=use_ema)


def _network(state: Dict[str, Any], use_ema: bool = False) -> torch.nn.Module:
    """The eager network of a checkpoint (or of :func:`state_from_model_file`'s state), with
    its moving-average weights when ``use_ema`` and the state has them."""
    model = build_model(state["model_args"], state["dtype"])
    model.load_state_dict(state["model"])
    if use_ema and state.get("ema"):
        with torch.no_grad():
            for p, s in zip(model.parameters(), state["ema"]["shadow"]):
                p.copy_(s)
    return model


# what the parts of a union must share, as (metadata key path, what it is)
_SHARED = ((("species",), "species"), (("basis", "shells"), "basis shells"), (("basis", "name"), "basis name"),
           (("cutoffs",), "cutoffs"), (("periodic",), "periodic or molecular"), (("dft_settings",), "DFT settings"),
           (("dtype",), "dtype"), (("training", "split", "val"), "validation frames"),
           (("training", "split", "test"), "test frames"))


def _dig(meta: Dict[str, Any], keys: Sequence[str]):
    for k in keys:
        meta = meta.get(k) if isinstance(meta, dict) else None
    return meta


def export_union(parts: Sequence[Tuple[str | os.PathLike, Sequence[str]]], output: str | os.PathLike, *,
                 use_ema: bool = True, name: Optional[str] = None, check: bool = True,
                 recommended_overlap: Optional[str] = None) -> Path:
    """One model file from several networks, each giving the operators listed with it:
    ``parts = [("runs/h/checkpoints/last.pt", ["hamiltonian", "overlap"]), ("models/d.pt",
    ["density_matrix"])]`` (checkpoints or model files; of a file that already joins networks,
    the one that gives the operators listed, so a network can be swapped out of a joined file).

    The parts must share species, basis, cutoffs, DFT settings, dtype and the validation and
    test frames (so the stored errors stay held-out); each operator comes from one part.  The
    metadata's metrics of an operator are those of the part that gives it (the band errors
    follow H, the electron count D); ``network.parts`` lists every part with its settings and
    training record.  Such a file cannot be fine-tuned: fine-tune a part and export again.
    """
    if not parts:
        raise ExportError("no networks given")
    paths = [str(path) for path, _ in parts]
    takes = [[str(op) for op in ops] for _, ops in parts]
    models, metas = zip(*(_load_part(path, use_ema, ops) for path, ops in zip(paths, takes)))
    for meta, ops, path in zip(metas, takes, paths):
        if not ops:
            raise ExportError(f"{path}: name the operators to take from it (it predicts {', '.join(meta['operators'])})")
        missing = [op for op in ops if op not in meta["operators"]]
        if missing:
            raise ExportError(f"{path} does not predict {', '.join(missing)} (it predicts {', '.join(meta['operators'])})")
        for keys, what in _SHARED:
            if _dig(meta, keys) != _dig(metas[0], keys):
                raise ExportError(f"{path} and {paths[0]} differ in their {what} ({_dig(meta, keys)!r} against "
                                  f"{_dig(metas[0], keys)!r}); the networks of one model file must share them")
    taken = [op for ops in takes for op in ops]
    twice = sorted({op for op in taken if taken.count(op) > 1})
    if twice:
        raise ExportError(f"{', '.join(twice)} is taken from more than one network; take each operator from one")
    source = {op: k for k, ops in enumerate(takes) for op in ops}
    first = metas[0]
    from .. import __version__

    meta = dict(first, name=name or first["name"], operators=[op for op in OPERATOR_NAMES if op in source],
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                ase_slem_version=__version__, torch_version=torch.__version__)
    h_part = metas[source["hamiltonian"]] if "hamiltonian" in source else {}
    meta["hamiltonian_baseline"] = h_part.get("hamiltonian_baseline")
    meta["network"] = {
        "type": first["network"]["type"], "weights": first["network"].get("weights"),
        "n_parameters": int(sum(m["network"].get("n_parameters", 0) for m in metas)),
        "parts": [{"operators": ops, "source": path, "network": m["network"], "training": m.get("training", {}),
                   "hamiltonian_baseline": m.get("hamiltonian_baseline")} for m, ops, path in zip(metas, takes, paths)],
    }
    meta["training"] = {k: v for k, v in first.get("training", {}).items() if k in ("frames", "split", "dataset")}
    meta["metrics"] = {}
    for split in {s for m in metas for s in (m.get("metrics") or {})}:
        merged = {}
        for key in {k for m in metas for k in (m.get("metrics") or {}).get(split, {})}:
            k = source.get(METRIC_OPERATOR.get(key, key))
            if k is not None and key in (metas[k].get("metrics") or {}).get(split, {}):
                merged[key] = metas[k]["metrics"][split][key]
        meta["metrics"][split] = merged
    meta.pop("recommended_overlap", None)
    if recommended_overlap is not None:
        _check_recommended_overlap(recommended_overlap, meta)
        meta["recommended_overlap"] = recommended_overlap
    for model in models:
        model.eval()
    # node features of a SLEM: (n_layers + 1, N, hidden_irreps.dim)
    shapes = [(len(m.layers) + 1, m.hidden_irreps.dim) for m in models]
    wrapper = ScriptedSLEMUnion(models, takes, shapes, next(models[0].parameters()).dtype)
    return _write_scripted(wrapper, output, meta, list(zip(models, takes)), check)


def untrained_metadata(model: torch.nn.Module, name: str = "untrained", r_bond: Optional[float] = None,
                       periodic: Optional[bool] = None) -> Dict[str, Any]:
    """Metadata for a network that has not been trained (benchmarks, tests)."""
    dtype = next(model.parameters()).dtype
    state = {
        "model_args": model.config, "config": {"name": name}, "dtype": str(dtype).replace("torch.", ""),
        "step": 0, "r_bond": float(model.r_cut if r_bond is None else r_bond),
        "dataset": {"basis": model.config["basis"], "periodic": periodic, "settings": {}},
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    return build_metadata(state, name=name, use_ema=False)


def export_model(model: torch.nn.Module, output: str | os.PathLike, metadata: Dict[str, Any],
                 check: bool = True) -> Path:
    """Script ``model`` (a :class:`~ase_slem.nn.slem.SLEM`) and write it with ``metadata``.

    The file appears at ``output`` only when complete (and, with ``check``, verified).
    """
    dtype = next(model.parameters()).dtype
    model.eval()
    return _write_scripted(ScriptedSLEM(model, dtype), output, metadata, [(model, list(metadata["operators"]))], check)


def _write_scripted(wrapper: torch.nn.Module, output: str | os.PathLike, metadata: Dict[str, Any],
                    parts: Sequence[Tuple[torch.nn.Module, Sequence[str]]], check: bool) -> Path:
    """Script ``wrapper``, save it with ``metadata`` under a temporary name, check it against
    the eager networks ``parts`` (each with the operators it gives) and move it to ``output``."""
    try:
        scripted = torch.jit.script(wrapper)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"TorchScript compilation of the network failed: {str(exc).splitlines()[0]}") from None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.jit.save(scripted, tmp, _extra_files={METADATA_NAME: json.dumps(metadata, indent=1, default=str)})
        if check:
            _self_check(Path(tmp), parts, metadata)
        publish(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def _self_check(path: Path, parts: Sequence[Tuple[torch.nn.Module, Sequence[str]]], meta: Dict[str, Any]) -> None:
    from ..nn.graph import build_graph

    loaded = load_model(path)
    atoms = _test_structure(meta["species"], meta["cutoffs"]["r_bond"], meta["periodic"])
    g = build_graph(atoms, meta["species"], meta["cutoffs"]["r_graph"], r_bond=meta["cutoffs"]["r_bond"],
                    dtype=loaded.torch_dtype)
    ops = predict(loaded, atoms, baseline=False)
    for model, given in parts:
        with torch.no_grad():
            ref = model(g.positions, g.species, g.edge_index, g.edge_shift, g.bond_index)
        if not all(math.isfinite(float(v.abs().sum())) for v in ref.values()):
            raise ExportError("the network produces non-finite values; the checkpoint is broken")
        for op in given:
            o = ops[op]
            scale = max(float(ref[op + "_onsite"].abs().max()), 1e-12)
            for a in range(len(atoms)):
                n = o.orbital_counts[a]
                diff = np.abs(o.block(a, a) - ref[op + "_onsite"][a, :n, :n].double().numpy()).max()
                if not diff <= 1e-4 * scale + 1e-6:
                    raise ExportError(f"exported model differs from the network for {op} (by {diff:.3g}); export aborted")
