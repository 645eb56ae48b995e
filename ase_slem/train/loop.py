"""The training loop: normalized-block loss, AdamW with warmup + schedule, EMA, clipping,
metrics CSV, atomic checkpoints and exact resume.

Loss of a batch: ``sum_op w_op (mae_weight * MAE + mse_weight * MSE)`` of the normalized
irreps errors of the operator's onsite and bond blocks (:class:`~.data.OperatorNormalizer`).

Steps count optimizer updates.  The state "after s updates" is checkpointed only once the
training loss of those parameters has been computed and found sane (finite and below
``divergence_factor`` times the lowest loss so far), so the checkpoint left behind by a
diverging run is always a good one.  Batches are a function of (seed, epoch, position in the
epoch), and everything else that changes during training (weights, AdamW moments, schedule,
EMA, RNG states, lowest losses) is in the checkpoint, so N straight steps and N/2 + resume +
N/2 give the same parameters.

Files in ``config.output``: ``checkpoints/last.pt`` (latest good state), ``checkpoints/
best.pt`` (lowest validation loss), ``metrics.csv`` (one row per step and per validation),
``metrics.json`` (final validation and test MAEs), ``train.log``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..io.dataset import Frame, frame_paths, read_frame
from .checkpoint import (DTYPES, CheckpointError, build_model, default_dtype, is_model_file, load_checkpoint,
                         rng_state, save_checkpoint, set_rng_state, split_operators, state_from_model_file)
from .config import RESUMABLE_CHANGES, Config, ConfigError, config_differences, load_config
from .data import (OperatorNormalizer, Sample, TrainingDataError, average_neighbors, check_basis_matches,
                   check_frames, collate, dataset_basis, make_sample, normalized_loss_terms,
                   onsite_overlap_means, padded_orbital_mask, split_indices, held_out_indices, listed_names)
from .band_loss import band_reference, batch_band_terms
from .electron_count import electron_count_errors
from .metrics import MAEAccumulator, UNITS, block_type_names, format_metrics


class TrainingDiverged(RuntimeError):
    """The loss (or gradient) became non-finite or exploded; the message names the step and
    the last good checkpoint."""


@dataclass
class TrainResult:
    """What a finished :func:`train` call produced."""

    checkpoint: Path
    best_checkpoint: Path
    metrics_csv: Path
    step: int
    validation: Dict[str, Dict[str, float]]
    test: Dict[str, Dict[str, float]]


# ---------------------------------------------------------------------------------------------
# schedule and EMA
# ---------------------------------------------------------------------------------------------
class LRSchedule:
    """Linear warmup, then cosine decay to ``min_lr``, reduce-on-plateau, or constant.

    ``lr_at(s)`` is the learning rate of update ``s + 1`` (``s`` updates done).
    """

    def __init__(self, kind: str, lr: float, steps: int, warmup: int, min_lr: float,
                 factor: float = 0.5, patience: int = 5):
        self.kind, self.lr, self.steps, self.warmup, self.min_lr = kind, lr, steps, warmup, min_lr
        self.factor, self.patience = factor, patience
        self.scale, self.best, self.bad = 1.0, math.inf, 0

    def lr_at(self, s: int) -> float:
        warm = min(1.0, (s + 1) / self.warmup) if self.warmup > 0 else 1.0
        if self.kind == "cosine":
            span = max(1, self.steps - self.warmup)
            x = min(1.0, max(0, s - self.warmup) / span)
            base = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * x))
        elif self.kind == "plateau":
            base = max(self.min_lr, self.lr * self.scale)
        else:
            base = self.lr
        return base * warm

    def apply(self, optimizer: torch.optim.Optimizer, s: int) -> float:
        lr = self.lr_at(s)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr

    def validation(self, loss: float) -> None:
        """Reduce-on-plateau bookkeeping (no effect for the other schedules)."""
        if self.kind != "plateau":
            return
        if loss < self.best * (1 - 1e-4):
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.scale *= self.factor
                self.bad = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad = float(state["scale"]), float(state["best"]), int(state["bad"])


class EMA:
    """Exponential moving average of the parameters, decay ``min(decay, (1+n)/(10+n))``."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.n = 0

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for s, p in zip(self.shadow, self.params):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    @contextlib.contextmanager
    def applied(self):
        """Temporarily put the averaged weights into the model."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"shadow": [s.clone() for s in self.shadow], "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"]):
                s.copy_(v)
        self.n = int(state["n"])

    def averaged_state_dict(self, model: torch.nn.Module) -> dict:
        """``model.state_dict()`` with the averaged parameters."""
        with self.applied():
            return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def load_frames(path: str | os.PathLike, max_frames: Optional[int] = None, exclude: Sequence[str] = ()):
    """Frames of a dataset folder and their folder names (``exclude``: folder names to skip)."""
    paths = frame_paths(path)
    unknown = sorted(set(exclude) - {p.name for p in paths})
    if unknown:
        raise TrainingDataError(f"data.exclude names frames that {path} does not hold: {', '.join(unknown)}")
    paths = [p for p in paths if p.name not in set(exclude)]
    if max_frames is not None:
        paths = paths[:max_frames]
    if not paths:
        raise TrainingDataError(f"dataset folder {path} holds no frame.NNNNNN folders")
    return [read_frame(p) for p in paths], [p.name for p in paths]


def extra_terms(t) -> List[str]:
    """Names of the loss terms beside the operators' that ``t`` (the train section) turns on:
    "bands" (MAE of the compared band energies) and "electrons" (mean |Tr(D_pred S) - Tr(D S)|
    per frame), in the order of their metrics columns."""
    return [name for name, weight in (("bands", t.band_weight), ("electrons", t.electron_weight)) if weight > 0]


def _loss(model_out, batch: Sample, normalizers, weights: Dict[str, float], t,
          rng: Optional[np.random.Generator] = None) -> tuple:
    """(total loss, {operator: term}, {extra term: value}).  The extra terms, present when
    their weight is on: "bands", the band MAE (eV), and "electrons", the mean
    |Tr(D_pred S) - Tr(D S)| per frame (electrons).  ``rng`` draws the band term's k-points
    (None: fixed ones, as in validation)."""
    total = 0.0
    parts = {}
    extra: Dict[str, torch.Tensor] = {}
    for op, norm in normalizers.items():
        mae, mse = normalized_loss_terms(norm, model_out, batch, op, t.onsite_weight, t.sigma_power)
        term = t.mae_weight * mae + t.mse_weight * mse
        parts[op] = term
        total = total + weights.get(op, 1.0) * term
    if t.band_weight > 0 and batch.band_refs:
        band, mixing = batch_band_terms(batch.band_refs, model_out, batch, t.band_kpoints, rng,
                                        t.band_mixing_weight > 0, t.band_gamma)
        total = total + t.band_weight * band
        extra["bands"] = band
        if mixing is not None:
            total = total + t.band_mixing_weight * mixing
    if t.electron_weight > 0:
        electrons = electron_count_errors(model_out, batch).abs().mean()
        total = total + t.electron_weight * electrons
        extra["electrons"] = electrons
    return total, parts, extra


def _forward(model, batch: Sample):
    return model(*batch.inputs())


def epoch_entries(samples: Sequence[Sample], repeat_by_size: bool) -> np.ndarray:
    """Indices into ``samples`` that one training epoch visits (in an order shuffled per epoch).

    Each frame once, or with ``repeat_by_size`` round(atoms / smallest frame's atoms) times,
    so that a cell's blocks weigh in the per-frame-mean loss by their number.
    """
    if not repeat_by_size or not samples:
        return np.arange(len(samples))
    atoms = np.array([sum(s.n_atoms) for s in samples])
    times = np.maximum(np.rint(atoms / atoms.min()).astype(int), 1)
    return np.repeat(np.arange(len(samples)), times)


def evaluate(model, samples: Sequence[Sample], normalizers, weights, t, symbols, batch_size: int = 1):
    """(mean loss over frames, per-block-type MAE dict) of ``samples`` with the current weights."""
    acc = MAEAccumulator(symbols, model.orbital_mask)
    losses = []
    extras: Dict[str, List[float]] = {}
    with torch.no_grad():
        for k in range(0, len(samples), batch_size):
            batch = collate(samples[k : k + batch_size])
            out = _forward(model, batch)
            loss, _, extra = _loss(out, batch, normalizers, weights, t)
            losses.append(float(loss) * len(batch.n_atoms))
            for name, value in extra.items():
                extras.setdefault(name, []).append(float(value) * len(batch.n_atoms))
            si, sj = batch.bond_species
            for op in normalizers:
                acc.add(op, out[op + "_onsite"], batch.targets[op][0], batch.species,
                        out[op + "_bond"], batch.targets[op][1], si, sj)
    n = max(len(samples), 1)
    result = acc.result()
    for name, values in extras.items():
        unit, factor = UNITS[name]
        result[name] = {"all": factor * sum(values) / n, "unit": unit}
    return (sum(losses) / n if samples else math.nan), result


class MetricsCSV:
    """``metrics.csv``: a fixed header (operators x block types), one row per event."""

    def __init__(self, path: Path, operators: Sequence[str], symbols: Sequence[str], extras: Sequence[str] = ()):
        """``extras``: the extra loss terms that are on (:func:`extra_terms`), one column each."""
        self.path = path
        self.mae_keys = [(op, name) for op in operators for name in ["all"] + block_type_names(symbols)]
        self.mae_keys += [(name, "all") for name in extras]
        self.header = (["step", "epoch", "split", "lr", "loss", "grad_norm", "time_s"]
                       + [f"loss {op}" for op in operators]
                       + [f"mae {op} {name} [{UNITS[op][0]}]" for op, name in self.mae_keys])

    def start(self, keep_up_to: Optional[int]) -> None:
        """New file, or (resume) keep the rows of steps <= ``keep_up_to``."""
        rows = []
        if keep_up_to is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.reader(fh)][1:]
            # the history up to the checkpoint; its end-of-run test rows belong to a finished run
            rows = [r for r in rows if r and (int(r[0]) < keep_up_to or (int(r[0]) == keep_up_to and r[2] != "test"))]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".metrics.", suffix=".csv")
        with os.fdopen(fd, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self.header)
            w.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, step: int, epoch: int, split: str, lr: float, loss: float, grad_norm=None,
              elapsed: float = 0.0, op_loss: Optional[Dict[str, float]] = None,
              mae: Optional[Dict[str, Dict[str, float]]] = None) -> None:
        op_loss = op_loss or {}
        mae = mae or {}
        ops = [k.split(" ", 1)[1] for k in self.header if k.startswith("loss ")]
        row = [step, epoch, split, f"{lr:.6g}", f"{loss:.6g}",
               "" if grad_norm is None else f"{grad_norm:.6g}", f"{elapsed:.3f}"]
        row += ["" if op not in op_loss else f"{op_loss[op]:.6g}" for op in ops]
        row += ["" if name not in mae.get(op, {}) else f"{mae[op][name]:.6g}" for op, name in self.mae_keys]
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow(row)


def _json_clean(x):
    return json.loads(json.dumps(x, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@dataclass
class _Data:
    """Frames turned into samples, split, with what the checkpoint records about them."""

    operators: List[str]
    symbols: List[str]
    basis: Dict[str, List[int]]
    r_bond: float
    train: List[Sample]
    val: List[Sample]
    test: List[Sample]
    info: Dict


def _resume_state(cfg: Config, resume: bool, last_path: Path) -> Optional[dict]:
    """The checkpoint to continue from (checked against the config), or None for a new run."""
    if not resume:
        if last_path.exists():
            raise ConfigError(f"{cfg.output} already holds a training run ({last_path}); resume it with "
                              "--resume or choose another output")
        return None
    if not last_path.exists():
        raise TrainingDataError(f"nothing to resume: {last_path} does not exist (train without --resume first)")
    state = load_checkpoint(last_path)
    diffs = [d for d in config_differences(state["config"], cfg.to_dict()) if d[0] not in RESUMABLE_CHANGES]
    if diffs:
        listed = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diffs)
        raise ConfigError(
            f"cannot resume {last_path} with a different config ({listed}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change. Start a new run in another output folder"
        )
    if int(state["step"]) > cfg.train.steps:
        raise ConfigError(f"{last_path} is at step {state['step']}, beyond train.steps = {cfg.train.steps}; "
                          "raise train.steps to resume")
    return state


def _prepare_data(cfg: Config, frames, frame_names, state: Optional[dict], say,
                  init: Optional[dict] = None) -> _Data:
    """Read/check the frames, split them and build their samples.

    With ``init`` (the checkpoint of ``train.init_from``) the split is that checkpoint's, by
    frame name: fine-tuning never trains on the frames the first run held out, and frames
    the first run did not know are left out."""
    ops = list(cfg.data.operators)
    if frames is None:
        frames, names = load_frames(cfg.data.path, cfg.data.max_frames, cfg.data.exclude)
    else:
        frames = list(frames)[: cfg.data.max_frames] if cfg.data.max_frames else list(frames)
        names = list(frame_names) if frame_names is not None else [f"frame {k}" for k in range(len(frames))]
    check_frames(frames, names, ops)
    basis = dataset_basis(frames, names)
    if state is not None:
        check_basis_matches(state["model_args"]["basis"], basis, "the dataset")
        basis = {k: list(v) for k, v in state["model_args"]["basis"].items()}
    symbols = list(basis)
    if cfg.data.held_out is not None:
        tr_idx, va_idx, te_idx = held_out_indices(names, cfg.data.held_out, cfg.data.train_fraction)
        if init is not None:
            fixed = init["dataset"]["split"]
            leak = sorted({names[k] for k in tr_idx} & (set(fixed["val"]) | set(fixed["test"])))
            if leak:
                raise TrainingDataError(
                    f"data.held_out would train on frames {cfg.train.init_from} held out: {listed_names(leak)}; "
                    "name them in data.held_out or data.exclude")
    elif init is not None:
        fixed = init["dataset"]["split"]
        where = {nm: k for k, nm in enumerate(names)}
        absent = [nm for part in fixed.values() for nm in part if nm not in where]
        if absent:
            raise TrainingDataError(
                f"train.init_from: frames of its split are not in {cfg.data.path}: {listed_names(absent)}; "
                "fine-tune on the dataset that run was trained on")
        tr_idx, va_idx, te_idx = ([where[nm] for nm in fixed[part]] for part in ("train", "val", "test"))
        named = set(tr_idx) | set(va_idx) | set(te_idx)
        extra = [k for k in range(len(names)) if k not in named]
        if extra and cfg.data.extend_train:
            tr_idx = tr_idx + extra
            say(f"note: {len(extra)} frame(s) not in the split of {cfg.train.init_from} join the training set "
                "(data.extend_train)")
        elif extra:
            say(f"note: {len(extra)} frame(s) not in the split of {cfg.train.init_from} are left out "
                "(data.extend_train: true trains on them)")
    else:
        tr_idx, va_idx, te_idx = split_indices(len(frames), cfg.data.split, cfg.data.split_seed,
                                               cfg.data.train_fraction)
    split_names = {"train": [names[k] for k in tr_idx], "val": [names[k] for k in va_idx],
                   "test": [names[k] for k in te_idx]}
    if state is not None and state["dataset"]["split"] != split_names:
        raise TrainingDataError(
            "the dataset differs from the one this run was trained on (other frames in the train/val/test "
            "split); resume with the same frames or start a new run"
        )
    m = cfg.model
    max_norb = max(sum(2 * l + 1 for l in ls) for ls in basis.values())
    r_graph = m.r_max if m.lem else m.r_cut
    r_bond = m.r_bond if m.r_bond is not None else m.r_cut
    t0 = time.perf_counter()
    dtype = DTYPES[cfg.train.dtype]
    baseline = cfg.model.hamiltonian_baseline is not None and "hamiltonian" in ops
    samples = [make_sample(fr, nm, symbols, max_norb, r_graph, r_bond, ops, dtype, baseline)
               for fr, nm in zip(frames, names)]
    if cfg.train.band_weight > 0:
        mask = padded_orbital_mask([sum(2 * l + 1 for l in basis[el]) for el in symbols], max_norb)
        for fr, sm in zip(frames, samples):
            try:
                sm.band_refs = [band_reference(fr, mask, sm.species, cfg.train.band_extra, cfg.train.band_skip)]
            except ValueError as exc:
                raise TrainingDataError(f"frame {sm.name}: {exc}") from None
    data = _Data(ops, symbols, basis, r_bond, [samples[k] for k in tr_idx], [samples[k] for k in va_idx],
                 [samples[k] for k in te_idx], {})
    say(f"{len(frames)} frames ({len(data.train)} train, {len(data.val)} validation, {len(data.test)} test), "
        f"basis {basis}, graphs built in {time.perf_counter() - t0:.1f} s")
    for op in ops:
        unc = max(s.uncovered[op] for s in samples)
        if unc > 0:
            say(f"note: {op} blocks beyond r_bond = {r_bond} Å are not learned (largest element there "
                f"{unc * UNITS[op][1]:.3g} {UNITS[op][0]})")
    periodic = sorted({bool(fr.atoms.pbc.any()) for fr in frames})
    data.info = {
        "basis": basis, "basis_name": frames[0].basis.name or frames[0].settings.get("basis", ""),
        "settings": _json_clean(frames[0].settings), "periodic": periodic[0] if len(periodic) == 1 else "mixed",
        "split": split_names, "path": str(cfg.data.path),
    }
    return data


def _init_state(cfg: Config) -> dict:
    """The checkpoint ``train.init_from`` names, checked against the config."""
    text, operators = split_operators(cfg.train.init_from)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"train.init_from: {path} does not exist (give the checkpoint or exported model "
                          "file to fine-tune from)")
    if is_model_file(path):
        try:
            init = state_from_model_file(path, operators)
        except CheckpointError as err:
            raise ConfigError(f"train.init_from: {err}") from None
    elif operators:
        raise ConfigError(f"train.init_from: {path} is a training checkpoint of one network; the suffix "
                          f":{','.join(operators)} picks a network of a joined model file only, drop it")
    else:
        init = load_checkpoint(path)
    diffs = config_differences({"model": init["config"]["model"]}, {"model": cfg.to_dict()["model"]})
    # a stage may add the gated head branch to a model trained without it (it starts at zero)
    linear_heads = not init["model_args"].get("head_channels", 0)
    diffs = [d for d in diffs if not (d[0] == "model.head_channels" and linear_heads)]
    # ... and switch on a Hamiltonian baseline (the H head is re-scaled to H - H0, see _setup_model)
    diffs = [d for d in diffs if not (d[0] == "model.hamiltonian_baseline" and d[1] is None)]
    if diffs:
        listed = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diffs)
        raise ConfigError(f"train.init_from: the model section differs from {path}'s ({listed}); copy it from there")
    missing = [op for op in cfg.data.operators if op not in init["model_args"]["operators"]]
    if missing:
        raise ConfigError(f"train.init_from: {path} was not trained on {', '.join(missing)}; drop them from data.operators")
    return init


def _grow_heads(model: torch.nn.Module, model_args: dict, head_channels: int, dtype: str):
    """``model`` rebuilt with gated head branches of ``head_channels``; every trained weight is
    kept and the new branches start at zero (same predictions)."""
    grown_args = dict(model_args, head_channels=int(head_channels))
    grown = build_model(grown_args, dtype)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(".branch_" not in k for k in missing):
        raise ConfigError(f"model.head_channels: cannot add head branches to this model (missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]})")
    return grown_args, grown


def _start_small(mlp: torch.nn.Module, scale: float = 0.01) -> None:
    """Shrink the last linear layer of ``mlp``: the SK overlap head then starts near S = 0
    instead of O(1) values, whose normalized errors (targets ~0.1) would swamp the early loss."""
    last = [mod for mod in mlp.modules() if isinstance(mod, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.zero_()


def _setup_model(cfg: Config, data: _Data, state: Optional[dict], init: Optional[dict] = None):
    """(model, its constructor arguments, per-operator normalizers): restored from the
    checkpoint, or new ones with normalization statistics from the training samples."""
    t, m = cfg.train, cfg.model
    with default_dtype(DTYPES[t.dtype]):
        if init is not None:
            check_basis_matches(init["model_args"]["basis"], data.basis, "the dataset")
            init = None if state is not None else init
        if state is not None or init is not None:
            src = state if state is not None else init
            model_args = src["model_args"]
            model = build_model(model_args, t.dtype if init is not None else src["dtype"])
            model.load_state_dict(src["model"])
            if init is not None and init.get("ema"):  # fine-tuning starts from the averaged weights
                with torch.no_grad():
                    for p_, v in zip(model.parameters(), init["ema"]["shadow"]):
                        p_.copy_(v)
            if init is not None and m.head_channels != model_args.get("head_channels", 0):
                model_args, model = _grow_heads(model, model_args, m.head_channels, t.dtype)
        else:
            torch.manual_seed(t.seed)
            model_args = dict(
                basis=data.basis, r_cut=m.r_cut, channels=m.channels, lmax=m.lmax, n_layers=m.n_layers,
                num_radial=m.num_radial, latent_dim=m.latent_dim, mlp_hidden=m.mlp_hidden,
                avg_num_neighbors=average_neighbors(data.train), res_alpha=m.res_alpha, operators=data.operators,
                lem=m.lem, r_max=m.r_max if m.lem else None, lem_decay=m.lem_decay, envelope_p=m.envelope_p,
                head_channels=m.head_channels,
            )
            model = build_model(model_args, t.dtype)
        normalizers = {op: OperatorNormalizer(data.basis) for op in data.operators}
    src = state if state is not None else init
    # a fine-tuning stage that switches on the Hamiltonian baseline: the H head now predicts H - H0
    rebased = (init is not None and init["config"]["model"].get("hamiltonian_baseline") is None
               and m.hamiltonian_baseline is not None)
    for op, norm in normalizers.items():
        if src is not None and src.get("normalizers") and not (rebased and op == "hamiltonian"):
            norm.load_state_dict(src["normalizers"][op])
            continue
        norm.fit(data.train, op)
        if rebased and op == "hamiltonian":
            head = model.head(op)
            head.norm_node.set_statistics(norm.mu_node, norm.sigma_node)
            head.norm_edge.set_statistics(norm.mu_edge, norm.sigma_edge)
            continue
        if src is not None:  # weights from a model file: only the loss scales are refit
            continue
        if op == "overlap":
            model.overlap.set_onsite(onsite_overlap_means(data.train, len(data.symbols)))
            _start_small(model.overlap.mlp)
        else:
            head = model.head(op)
            head.norm_node.set_statistics(norm.mu_node, norm.sigma_node)
            head.norm_edge.set_statistics(norm.mu_edge, norm.sigma_edge)
    return model, model_args, normalizers


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train(config: Config | str | os.PathLike, *, frames: Optional[Sequence[Frame]] = None,
          frame_names: Optional[Sequence[str]] = None, resume: bool = False,
          log: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Train (or, with ``resume``, continue training) the model a config describes.

    ``frames``: train on these in-memory frames instead of reading ``config.data.path``
    (``frame_names`` name them in messages; default ``frame 0``, ``frame 1`` ...).
    ``log``: where progress lines go (default: print); they are also appended to
    ``<output>/train.log``.
    Raises :class:`TrainingDiverged`, :class:`~.data.TrainingDataError`,
    :class:`~.config.ConfigError` or :class:`~.checkpoint.CheckpointError` with a message
    that names the problem.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    t = cfg.train
    out_dir = Path(cfg.output)
    ck_dir = cfg.checkpoint_dir
    last_path, best_path = ck_dir / "last.pt", ck_dir / "best.pt"
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = out_dir / "train.log"

    bar = {"progress": None}

    def say(msg: str) -> None:
        if log is None and bar["progress"] is not None:
            bar["progress"].write(msg)  # keeps the progress bar intact
        else:
            (log or print)(msg)
        with open(log_file, "a") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")

    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    state = _resume_state(cfg, resume, last_path)
    init = _init_state(cfg) if t.init_from else None
    data = _prepare_data(cfg, frames, frame_names, state, say, init)
    model, model_args, normalizers = _setup_model(cfg, data, state, init)
    ops, symbols, r_bond = data.operators, data.symbols, data.r_bond
    train_s, val_s, test_s = data.train, data.val, data.test
    m = cfg.model
    n_params = sum(p.numel() for p in model.parameters())
    weights = {op: float(t.operator_weights.get(op, 1.0)) for op in ops}
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    schedule = LRSchedule(t.schedule, t.lr, t.steps, t.warmup_steps, t.min_lr, t.plateau_factor, t.plateau_patience)
    ema = EMA(model, t.ema_decay)
    start, best_train, best_val = 0, math.inf, math.inf
    metrics: Dict[str, Dict] = {"validation": {}, "test": {}}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        start, best_train, best_val = int(state["step"]), float(state["best_train_loss"]), float(state["best_val_loss"])
        metrics = state.get("metrics", metrics)
        say(f"resuming {last_path} at step {start}")
    dataset_info = data.info
    say(f"model: {'LEM' if m.lem else 'SLEM'} with {n_params} parameters, {t.dtype}, "
        f"N_avg = {model_args['avg_num_neighbors']:.2f}, predicts {', '.join(ops)}")
    bound = model.heads[0].rank_bound(model_args["channels"]) if len(model.heads) else []
    if bound and not model_args.get("head_channels", 0):
        say("note: the linear operator heads map model.channels = {} copies of each (l, p) onto more block "
            "irreps ({}); model.head_channels (e.g. 16) adds a gated branch that lifts this rank bound".format(
                model_args["channels"], ", ".join(f"{n} {ir}" for ir, n in bound)))

    csv_log = MetricsCSV(out_dir / "metrics.csv", ops, symbols, extra_terms(t))
    csv_log.start(keep_up_to=start if state is not None else None)

    def snapshot(step: int) -> dict:
        return {
            "config": cfg.to_dict(), "model_args": model_args, "r_bond": r_bond, "dtype": t.dtype,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "normalizers": {op: n.state_dict() for op, n in normalizers.items()},
            "rng": rng_state(), "step": step, "best_train_loss": best_train, "best_val_loss": best_val,
            "dataset": dataset_info, "metrics": metrics, "n_parameters": n_params,
        }

    order = epoch_entries(train_s, t.repeat_by_size)
    n_train = len(order)
    bs = min(t.batch_size, n_train)
    per_epoch = math.ceil(n_train / bs)
    last_saved: Optional[int] = start if state is not None else None
    progress = None
    if t.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=t.steps, initial=start, desc=cfg.name, dynamic_ncols=True, leave=True)
        bar["progress"] = progress
    t_start = time.perf_counter()
    val_loss = math.nan
    model.train()
    try:
        for s in range(start, t.steps):
            epoch, pos = divmod(s, per_epoch)
            perm = order[np.random.default_rng([t.seed, epoch]).permutation(n_train)]
            batch = collate([train_s[k] for k in perm[pos * bs : (pos + 1) * bs]])
            lr = schedule.apply(optimizer, s)
            out = _forward(model, batch)
            loss, parts, extra = _loss(out, batch, normalizers, weights, t, np.random.default_rng([t.seed, s, 1]))
            lval = float(loss.detach())
            if not math.isfinite(lval) or (s > 0 and lval > t.divergence_factor * best_train):
                raise TrainingDiverged(_diverged_message(s + 1, f"loss {lval:.4g} (lowest so far {best_train:.4g}, "
                                                         f"limit {t.divergence_factor:g}x)", last_path, last_saved))
            best_train = min(best_train, lval)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # the state after s updates is good (sane loss): validate / checkpoint it before updating
            if s > start and s % t.eval_every == 0:
                val_loss = _validate(model, ema, val_s, normalizers, weights, t, symbols, schedule, csv_log,
                                     s, epoch, lr, t_start, metrics, say)
                if val_s and val_loss < best_val:
                    best_val = val_loss
                    save_checkpoint(best_path, snapshot(s))
            if s > start and s % t.checkpoint_every == 0:
                save_checkpoint(last_path, snapshot(s))
                last_saved = s
            clip = t.grad_clip if t.grad_clip > 0 else math.inf
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            if not math.isfinite(gnorm):
                raise TrainingDiverged(_diverged_message(s + 1, f"gradient norm {gnorm}", last_path, last_saved))
            optimizer.step()
            ema.update()
            acc = MAEAccumulator(symbols, model.orbital_mask)
            si, sj = batch.bond_species
            for op in ops:
                acc.add(op, out[op + "_onsite"], batch.targets[op][0], batch.species, out[op + "_bond"],
                        batch.targets[op][1], si, sj)
            mae = {op: {"all": r["all"]} for op, r in acc.result().items()}
            for name, value in extra.items():
                mae[name] = {"all": UNITS[name][1] * float(value.detach())}
            csv_log.write(s + 1, epoch, "train", lr, lval, gnorm, time.perf_counter() - t_start,
                          {op: float(v.detach()) for op, v in parts.items()}, mae)
            if progress is not None:
                post = {"loss": f"{lval:.3g}", "lr": f"{lr:.2g}"}
                if "hamiltonian" in metrics.get("validation", {}):
                    post["val H meV"] = f"{metrics['validation']['hamiltonian']['all']:.3g}"
                if "bands" in metrics.get("validation", {}):
                    post["val bands meV"] = f"{metrics['validation']['bands']['all']:.3g}"
                progress.set_postfix(post, refresh=False)
                progress.update(1)
        # ---- end of training: validate, test and checkpoint the final state
        s = t.steps
        if s > start or state is None or not metrics.get("test"):
            epoch = s // per_epoch
            lr = schedule.lr_at(max(s - 1, 0))
            # (the schedule sees this validation only if a longer run would have made it too)
            val_loss = _validate(model, ema, val_s, normalizers, weights, t, symbols,
                                 schedule if s % t.eval_every == 0 else None, csv_log,
                                 s, epoch, lr, t_start, metrics, say)
            if val_s and not math.isfinite(val_loss):
                raise TrainingDiverged(_diverged_message(s, f"validation loss {val_loss}", last_path, last_saved))
            if val_s and val_loss < best_val:
                best_val = val_loss
                save_checkpoint(best_path, snapshot(s))
            if test_s:
                with ema.applied():
                    model.eval()
                    test_loss, test_mae = evaluate(model, test_s, normalizers, weights, t, symbols)
                    model.train()
                metrics["test"] = test_mae
                csv_log.write(s, epoch, "test", lr, test_loss, None, time.perf_counter() - t_start, None, test_mae)
                say(format_metrics(test_mae, f"test ({len(test_s)} frames) at step {s}:"))
            save_checkpoint(last_path, snapshot(s))
            if not val_s:
                save_checkpoint(best_path, snapshot(s))
    finally:
        if progress is not None:
            progress.close()
    with open(out_dir / "metrics.json", "w") as fh:
        json.dump({"step": t.steps, "n_parameters": n_params, **_json_clean(metrics)}, fh, indent=1)
    return TrainResult(last_path, best_path, out_dir / "metrics.csv", t.steps,
                       metrics.get("validation", {}), metrics.get("test", {}))


def _validate(model, ema, val_s, normalizers, weights, t, symbols, schedule, csv_log, s, epoch, lr,
              t_start, metrics, say) -> float:
    if not val_s:
        return math.nan
    with ema.applied():
        model.eval()
        val_loss, val_mae = evaluate(model, val_s, normalizers, weights, t, symbols)
        model.train()
    if schedule is not None:
        schedule.validation(val_loss)
    metrics["validation"] = val_mae
    csv_log.write(s, epoch, "val", lr, val_loss, None, time.perf_counter() - t_start, None, val_mae)
    say(format_metrics(val_mae, f"validation ({len(val_s)} frames) at step {s}: loss {val_loss:.4g}"))
    return val_loss


def _diverged_message(step: int, what: str, last_path: Path, last_saved: Optional[int]) -> str:
    if last_saved is None:
        keep = "no checkpoint had been written yet"
    else:
        keep = f"the last good checkpoint {last_path} (step {last_saved}) is kept"
    return (f"training diverged at step {step}: {what}; {keep}. Lower train.lr, add train.warmup_steps "
            "or train.grad_clip, or check the data")
