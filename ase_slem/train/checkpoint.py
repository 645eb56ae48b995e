"""Training checkpoints: one file with everything an exact resume needs, written atomically.

A checkpoint is a ``torch.save`` dict (readable with ``torch.load(..., weights_only=True)``:
only tensors and plain Python values) with

* ``format`` / ``version``: ``"ase_slem-checkpoint"`` and :data:`CHECKPOINT_VERSION`
* ``config``: the training config (``Config.to_dict()``)
* ``model_args``: keyword arguments of :class:`~ase_slem.nn.slem.SLEM` (basis, sizes,
  ``avg_num_neighbors`` ...), ``r_bond`` and ``dtype``
* ``model``, ``ema``, ``optimizer``, ``schedule``, ``normalizers``: state dicts
* ``rng``: torch, numpy and Python random states
* ``step`` (optimizer updates done), ``best_train_loss``, ``best_val_loss``
* ``dataset``: basis name, DFT settings, periodicity and the frame names of each split
* ``metrics``: the latest validation (and, at the end, test) MAEs

The file is written to a temporary name in the same folder, flushed to disk and renamed over
the old one (``os.replace``), so a crash never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._files import publish

CHECKPOINT_FORMAT = "ase_slem-checkpoint"
CHECKPOINT_VERSION = 1
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, corrupt, other format or version)."""


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Temporarily set torch's default dtype (the network builds its constants in it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(model_args: Dict[str, Any], dtype: str = "float32"):
    """A :class:`~ase_slem.nn.slem.SLEM` from its keyword arguments, built in ``dtype``."""
    from ..nn.slem import SLEM

    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    with default_dtype(DTYPES[dtype]):
        try:
            return SLEM(**model_args)
        except TypeError as exc:
            raise CheckpointError(
                f"the model settings {sorted(model_args)} are not understood by this version of ase_slem ({exc})"
            ) from None


def rng_state() -> Dict[str, Any]:
    """torch, numpy and Python random states as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: str | os.PathLike, state: Dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(state, format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a checkpoint, checking that it is one of ours and of a version we understand."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable ase_slem checkpoint ({first[:200]}); "
            "it may be corrupt or a model file (model files are used by SLEMCalculator, not resumed)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ase_slem training checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    version = state.get("version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} has no valid checkpoint version")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer ase_slem (checkpoint format {version}; this one reads "
            f"up to {CHECKPOINT_VERSION}); upgrade ase_slem"
        )
    if version < CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has the old checkpoint format {version}, which this ase_slem (format "
            f"{CHECKPOINT_VERSION}) cannot resume; retrain, or export it with the ase_slem that wrote it"
        )
    missing = [k for k in ("config", "model_args", "model", "step", "dtype") if k not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}")
    return state


def is_model_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is an exported model file (a TorchScript archive with ase_slem metadata)."""
    from ..model_file import ModelFileError, read_metadata

    try:
        read_metadata(path)
    except ModelFileError:
        return False
    return True


# the metadata's metrics that belong to an operator other than their name says
METRIC_OPERATOR = {"bands": "hamiltonian", "electrons": "density_matrix"}


def split_operators(text: str) -> Tuple[str, Optional[List[str]]]:
    """``'PATH:op,op'`` -> ``(PATH, [op, op])``; a bare ``PATH`` -> ``(PATH, None)``.

    The suffix names operators (``hamiltonian``, ``overlap``, ``density_matrix``): in
    ``ase-slem export`` the ones to take from a network, in ``train.init_from`` the network of a
    joined model file to start from.  A colon followed by anything else is part of the path."""
    from ..model_file import OPERATOR_NAMES

    path, sep, ops = str(text).rpartition(":")
    names = [o.strip() for o in ops.split(",")] if sep else []
    if not sep or not path or any(o not in OPERATOR_NAMES for o in names):
        return str(text), None
    return path, names


def state_from_model_file(path: str | os.PathLike, operators: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The parts of a checkpoint that an exported model file still holds, for fine-tuning
    (``train.init_from: models/<name>.pt``) or for joining networks (``ase-slem export``):
    ``config``, ``model_args``, ``dtype``, ``r_bond``, ``model`` (the exported -- usually EMA --
    weights as a state dict of :class:`~ase_slem.nn.slem.SLEM`), ``dataset`` (the split by frame
    name), ``step`` and ``metadata`` (the file's metadata, as a one-network file's).

    A file that joins several networks (``ase-slem export A:ops B:ops``) holds each of them whole:
    ``operators`` picks the one that gives them (``["hamiltonian"]``: the network of H), and the
    metadata becomes that network's alone (its operators, settings, training record and metrics).

    Optimizer, EMA history and loss normalizers are not in a model file: ``ema`` and
    ``normalizers`` are None, and training refits the normalizers on the training split.
    Raises :class:`CheckpointError` when the file lacks what fine-tuning needs, or joins networks
    and ``operators`` does not name the operators of one of them."""
    from ..model_file import read_metadata

    meta = read_metadata(path)
    net, training = meta.get("network", {}), meta.get("training", {})
    prefix = "model."
    if net.get("parts"):
        k, part = _pick_part(path, net["parts"], operators)
        net, training, prefix = part["network"], part.get("training", {}), f"parts.{k}."
        given = list(part["operators"])
        metrics = {split: {key: v for key, v in values.items() if METRIC_OPERATOR.get(key, key) in given}
                   for split, values in (meta.get("metrics") or {}).items()}
        meta = dict(meta, operators=given, network=net, training=training, metrics=metrics,
                    hamiltonian_baseline=part.get("hamiltonian_baseline"))
        meta.pop("recommended_overlap", None)
    elif operators and any(op not in meta.get("operators", []) for op in operators):
        raise CheckpointError(f"{path} does not predict {', '.join(operators)} "
                              f"(it predicts {', '.join(meta.get('operators', []))})")
    if "args" not in net or "config" not in training or not training.get("split"):
        raise CheckpointError(
            f"{path}: the metadata lacks the network settings, training config or split that fine-tuning "
            "needs (a model file exported by an older ase_slem, or not from a training run)")
    scripted = torch.jit.load(str(path), map_location="cpu")
    weights = {k[len(prefix):]: v for k, v in scripted.state_dict().items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"{path}: no weights under '{prefix}' in the TorchScript archive (a damaged file?)")
    return {
        "config": training["config"], "model_args": net["args"], "dtype": meta["dtype"],
        "r_bond": float(meta["cutoffs"]["r_bond"]), "model": weights, "ema": None, "normalizers": None,
        "dataset": {"split": {k: list(v) for k, v in training["split"].items()}, "path": training.get("dataset")},
        "step": int(training.get("steps", 0)), "metadata": meta,
    }


def _pick_part(path, parts: Sequence[Dict[str, Any]], operators: Optional[Sequence[str]]) -> Tuple[int, Dict[str, Any]]:
    """(index, entry) of the network of a joined file that gives every one of ``operators``."""
    listed = "; ".join(f"network {k} gives {', '.join(p.get('operators', []))}" for k, p in enumerate(parts))
    if not operators:
        raise CheckpointError(f"{path} joins {len(parts)} networks ({listed}); name the one to take by an operator "
                              f"it gives, e.g. {path}:{parts[0]['operators'][0]}")
    for k, part in enumerate(parts):
        if all(op in part.get("operators", []) for op in operators):
            return k, part
    raise CheckpointError(f"{path}: no one of its networks gives {', '.join(operators)} ({listed})")
