"""Training configuration: dataclasses with validation, read from YAML or TOML.

A config has three sections and two top-level keys::

    name: si_pbe_dzvp              # model name (exported file models/<name>.pt)
    output: runs/si_pbe_dzvp       # run folder: checkpoints/, metrics.csv, train.log
    data:  {path: ../data/si_pbe_dzvp, split: [0.8, 0.1, 0.1], ...}
    model: {r_cut: 7.0, channels: 8, ...}
    train: {steps: 2000, lr: 0.005, ...}

Relative paths are taken relative to the working directory.  Every key of every section is
listed (with its default and meaning) in the dataclasses below; unknown keys, missing required
keys, values of the wrong type and values out of range are all reported together in one
:class:`ConfigError` that names them.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..hamiltonian_baseline import BASELINE_KINDS

OPERATORS = ("hamiltonian", "overlap", "density_matrix")
SCHEDULES = ("cosine", "plateau", "constant")
DTYPES = ("float32", "float64")
REQUIRED = object()  # marker default of required keys


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending key."""


def _required():
    return field(default=REQUIRED)  # type: ignore[arg-type]


@dataclass
class DataConfig:
    """Where the frames come from and how they are split.

    path: dataset folder of frames (``frame.NNNNNN`` DeePTB-layout folders, see
        :mod:`ase_slem.io.dataset`).
    operators: operators to learn, a subset of hamiltonian, overlap, density_matrix.
    split: fractions of the frames for training, validation and test (sum <= 1).
    split_seed: seed of the random split (the same seed gives the same split).
    train_fraction: use only this leading fraction of the (shuffled) training frames; the
        subsets are nested (0.2 is inside 0.4) and validation/test stay the same.
    max_frames: read at most this many frames (in index order) before splitting.
    exclude: frame folder names to leave out (e.g. frames finished after a run started, so
        that its split can be reproduced).
    extend_train: with ``train.init_from``, frames the first run's split does not name join
        the training set (more data for a later stage; validation and test stay the first
        run's, so they remain held out). False leaves them out.
    held_out: ``{val: [frame names], test: [frame names]}``: these frames are the validation and
        test sets and every other frame (after ``exclude``) trains; replaces the random split
        (e.g. to hold out the same structures as a model trained on another dataset of them).
        With ``train.init_from`` it replaces that checkpoint's split, provided no frame the
        checkpoint held out would be trained on.
    """

    path: str = _required()
    operators: list = field(default_factory=lambda: list(OPERATORS))
    split: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 0
    train_fraction: float = 1.0
    max_frames: Optional[int] = None
    exclude: list = field(default_factory=list)
    extend_train: bool = False
    held_out: Optional[dict] = None


@dataclass
class ModelConfig:
    """SLEM / LEM network sizes (see :class:`ase_slem.nn.slem.SLEM`).

    r_cut: locality cutoff in Å (neighbours of an atom; the graph cutoff of SLEM).
    r_bond: largest bond length whose blocks are predicted (Å, default r_cut).
    channels, lmax, n_layers, num_radial, latent_dim, mlp_hidden, res_alpha, envelope_p:
        network sizes; lmax defaults to twice the largest l of the basis.
    lem, r_max, lem_decay: the semi-local LEM variant (graph to r_max > r_cut).
    head_channels: width of a gated branch in each operator head (0: linear heads). The linear
        head maps ``channels`` copies of each (l, p) to the block irreps, more than 8 channels
        for 2-3 shells per l (rank-bound); the branch lifts that bound at little cost. A
        fine-tuning stage (``train.init_from``) may add it to a model trained without: it
        starts at zero, so the stage starts from the trained model's predictions.
    hamiltonian_baseline: ``None`` (the network predicts H) or a baseline kind of
        :mod:`ase_slem.hamiltonian_baseline` (``"minao"``): the network predicts H - H0 and the
        calculator adds H0 (PySCF, molecules only). The frames must hold H0
        (``scripts/add_hamiltonian_baseline.py``).
    """

    r_cut: float = _required()
    r_bond: Optional[float] = None
    channels: int = 16
    lmax: Optional[int] = None
    n_layers: int = 2
    num_radial: int = 8
    latent_dim: int = 64
    mlp_hidden: int = 64
    res_alpha: float = 0.5
    lem: bool = False
    r_max: Optional[float] = None
    lem_decay: float = 1.0
    envelope_p: int = 6
    head_channels: int = 0
    hamiltonian_baseline: Optional[str] = None


@dataclass
class TrainConfig:
    """Optimisation.

    steps: number of optimizer updates.
    batch_size: frames per update (one disjoint graph).
    lr, weight_decay: AdamW learning rate and decoupled weight decay.
    schedule: "cosine" (to min_lr at the last step), "plateau" (multiply by plateau_factor
        after plateau_patience validations without improvement, not below min_lr) or
        "constant"; all start with a linear warmup over warmup_steps.
    ema_decay: exponential moving average of the weights used for validation, test and
        export (0 switches it off).
    grad_clip: largest gradient norm (0 switches clipping off).
    mae_weight, mse_weight: loss = sum over operators of weight * (mae_weight * MAE +
        mse_weight * MSE) of the normalized irreps of the blocks.
    operator_weights: per operator loss weight (default 1 each).
    onsite_weight: weight of an onsite block's components relative to a bond's in that loss
        (default 1; crystals with long cutoffs have ~100 bonds per atom).
    sigma_power: p in [0, 1]; each irreps channel's error is weighted by
        (sigma / median sigma)**p (default 0: the normalized loss of Eq. 3; 1: errors in eV over
        one common scale, which makes the large core-valence hoppings of all-electron bases count
        by their size).
    dtype: "float32" (default) or "float64".
    seed: seed of the weight initialisation.
    eval_every, checkpoint_every: in steps (the last step always does both).
    divergence_factor: stop when a training loss exceeds this factor times the lowest
        training loss seen (or is not finite).
    num_threads: torch threads (default: leave torch's setting alone).
    progress: show a tqdm progress bar.
    band_weight: weight of the band-energy term (loss += band_weight * mean |e_pred - e_DFT|
        in eV; 0 = off): eigenvalues of (H_pred(k), S_DFT(k)) against the DFT ones, the
        occupied bands and band_extra empty ones, at band_kpoints random k per periodic frame
        and step (Gamma for molecules); see :mod:`ase_slem.train.band_loss`.  Needs
        hamiltonian in data.operators.
    band_skip: the lowest band_skip levels are left out of the band term (core levels of
        all-electron bases: 1 for water, 3 for ethanol in def2-svp).
    band_mixing_weight: weight of the coupling term (loss += band_mixing_weight * mean
        |<psi_a|H_pred(k)|psi_b>| in eV over the DFT Bloch states a < b of the compared bands,
        at the band term's k-points; 0 = off): the band term checks the energies of the DFT
        states, this one that the predicted H does not mix them.  Needs band_weight > 0.
    band_gamma: make Gamma one of the band_kpoints k-points of every periodic frame (where
        silicon's valence-band maximum sits, which uniform random k almost never hit).
    electron_weight: weight of the electron-count term (loss += electron_weight * mean over
        frames of |Tr(D_pred S_DFT) - Tr(D_DFT S_DFT)| in electrons, over the predicted blocks;
        0 = off); see :mod:`ase_slem.train.electron_count`.  Needs density_matrix and overlap
        in data.operators.
    repeat_by_size: each training frame appears round(atoms / atoms of the smallest training
        frame) times per epoch, so that every atom's blocks weigh the same in the loss whatever the
        size of its cell (the loss is a per-frame mean: otherwise an 8-atom cell's blocks weigh a
        quarter of a 2-atom cell's).
    init_from: start from the (EMA) weights and normalization of this checkpoint (fine-tuning,
        e.g. with the band term on); a new run with its own schedule and optimizer.  The model
        section must equal the checkpoint's.  An exported model file works too (its averaged
        weights; the normalizers are refitted); of a file that joins networks, name the one to
        start from by an operator it gives: ``models/ethanol_pbe_svp.pt:hamiltonian``.
    """

    steps: int = _required()
    batch_size: int = 1
    lr: float = 5e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr: float = 1e-5
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    ema_decay: float = 0.99
    grad_clip: float = 10.0
    mae_weight: float = 1.0
    mse_weight: float = 1.0
    operator_weights: dict = field(default_factory=dict)
    onsite_weight: float = 1.0
    sigma_power: float = 0.0
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 50
    checkpoint_every: int = 50
    divergence_factor: float = 1e4
    num_threads: Optional[int] = None
    progress: bool = True
    band_weight: float = 0.0
    band_kpoints: int = 4
    band_extra: int = 4
    band_skip: int = 0
    band_mixing_weight: float = 0.0
    band_gamma: bool = False
    electron_weight: float = 0.0
    repeat_by_size: bool = False
    init_from: Optional[str] = None


@dataclass
class Config:
    """A whole training run: name, output folder and the three sections."""

    name: str = _required()
    output: str = _required()
    data: DataConfig = _required()
    model: ModelConfig = _required()
    train: TrainConfig = _required()
    description: str = ""

    def to_dict(self) -> dict:
        """Plain dict (JSON/YAML-able) that :func:`config_from_dict` reads back."""
        return dataclasses.asdict(self)

    @property
    def output_path(self) -> Path:
        return Path(self.output)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output) / "checkpoints"


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}

# keys that may differ between a checkpoint and the config that resumes it
RESUMABLE_CHANGES = {"train.steps", "train.eval_every", "train.checkpoint_every", "train.progress",
                     "train.num_threads", "description", "data.path"}


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """``raw`` with ``"section.key=value"`` settings put in (value parsed as YAML: ``3``,
    ``1e-3``, ``[a, b]``, ``models/x.pt``); a copy, ``raw`` is left alone."""
    import yaml

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: write it as section.key=value (e.g. train.steps=2000)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = out
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
            node = node[p]
        node[parts[-1]] = value
    return out


def merge_configs(base: dict, top: dict) -> dict:
    """``top`` laid over ``base``: sections (mappings) merge key by key, any other value of
    ``top`` replaces the base's.  Neither argument is changed."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a ``.yaml``/``.yml`` or ``.toml`` config file and validate it.

    A top-level ``extends: other.yaml`` (a path relative to this file's folder) reads that
    config first and lays this one over it (:func:`merge_configs`), so a training stage states
    only what it changes.  ``overrides``: ``"section.key=value"`` strings applied on top (see
    :func:`apply_overrides`)."""
    raw = _read_raw(Path(path), ())
    raw = apply_overrides(raw, overrides) if overrides else raw
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_raw(path: Path, chain: tuple) -> dict:
    """The parsed mapping of config file ``path`` with its ``extends`` chain resolved."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    elif suffix == ".toml":
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    else:
        raise ConfigError(f"{path}: unknown config format {suffix!r}; use .yaml, .yml or .toml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping with keys name, output, data, model, train")
    if "extends" not in raw:
        return raw
    base = raw.pop("extends")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be the path of another config file, not {base!r}")
    base_path = (path.parent / base).resolve()
    chain = chain + (path.resolve(),)
    if base_path in chain:
        raise ConfigError(f"{path}: extends {base} leads back to itself; a config cannot extend its own descendant")
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {base}, but {base_path} does not exist (paths are relative to {path.parent})")
    return merge_configs(_read_raw(base_path, chain), raw)


def config_from_dict(raw: dict) -> Config:
    """Build and validate a :class:`Config` from nested dicts (e.g. parsed YAML)."""
    problems: list[str] = []
    top = _build(Config, raw, "", problems, nested=SECTIONS)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    cfg = Config(**top)
    problems = validate(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg


def _build(cls, raw: Any, prefix: str, problems: list[str], nested: dict | None = None) -> dict:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a mapping of keys, not {type(raw).__name__}")
        return {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in fields]
    for k in unknown:
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        problems.append(f"unknown key {prefix}{k}{hint}")
    if unknown:
        problems.append(f"allowed keys in {where}: {', '.join(fields)}")
    missing = [name for name, f in fields.items() if f.default is REQUIRED and name not in raw]
    if missing:
        problems.append("missing required key(s): " + ", ".join(prefix + m for m in missing))
    out = {}
    for name, value in raw.items():
        if name not in fields:
            continue
        if nested and name in nested:
            sub = _build(nested[name], value, f"{prefix}{name}.", problems)
            try:
                out[name] = nested[name](**sub)
            except TypeError:  # missing keys already reported
                out[name] = None
            continue
        out[name] = _coerce(value, hints[name], prefix + name, problems)
    for name in missing:
        out[name] = None
    return out


def _coerce(value: Any, hint: Any, key: str, problems: list[str]) -> Any:
    """Check ``value`` against a field's type hint; ints are accepted for floats and numeric
    strings such as "1e-3" (PyYAML reads those as text) for numbers."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key} must be true or false, not {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = float(value) if hint is float else int(value)
            except ValueError:
                problems.append(f"{key} must be a number, not {value!r}")
                return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key} must be {'an integer' if hint is int else 'a number'}, not {value!r}")
            return value
        if hint is int:
            if float(value) != int(value):
                problems.append(f"{key} must be an integer, not {value!r}")
                return value
            return int(value)
        return float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        problems.append(f"{key} must be a string, not {value!r}")
        return value
    if hint is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        problems.append(f"{key} must be a list, not {value!r}")
        return value
    if hint is dict:
        if isinstance(value, dict):
            return dict(value)
        problems.append(f"{key} must be a mapping, not {value!r}")
        return value
    return value  # pragma: no cover - every field has one of the types above


def validate(cfg: Config) -> list[str]:
    """Range and consistency checks; returns the problems found (empty when all is well)."""
    p: list[str] = []
    d, m, t = cfg.data, cfg.model, cfg.train
    if not cfg.name or any(c in cfg.name for c in "/\\ "):
        p.append(f"name must be a non-empty word without slashes or spaces, not {cfg.name!r}")
    bad_ops = [o for o in d.operators if o not in OPERATORS]
    if bad_ops or not d.operators:
        p.append(f"data.operators must be a non-empty subset of {list(OPERATORS)}, got {d.operators}")
    if len(d.split) != 3 or not all(isinstance(x, (int, float)) and x >= 0 for x in d.split):
        p.append(f"data.split must be three non-negative fractions [train, val, test], got {d.split}")
    elif sum(d.split) > 1 + 1e-9 or d.split[0] <= 0:
        p.append(f"data.split fractions must sum to at most 1 with a positive training share, got {d.split}")
    if not 0 < d.train_fraction <= 1:
        p.append(f"data.train_fraction must lie in (0, 1], got {d.train_fraction}")
    if d.max_frames is not None and d.max_frames < 1:
        p.append(f"data.max_frames must be at least 1, got {d.max_frames}")
    if not isinstance(d.extend_train, bool):
        p.append(f"data.extend_train must be true or false, got {d.extend_train!r}")
    elif d.extend_train and not t.init_from:
        p.append("data.extend_train adds frames to the split of train.init_from; set train.init_from "
                 "(or drop data.extend_train: a new run splits all frames itself)")
    if d.held_out is not None:
        h = d.held_out
        if not isinstance(h, dict) or set(h) != {"val", "test"} or not all(
                isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in h.values()):
            p.append("data.held_out must be {val: [frame names], test: [frame names]}, each a non-empty list, "
                     f"got {h!r}")
        else:
            both = sorted(set(h["val"]) & set(h["test"]))
            if both:
                p.append(f"data.held_out names {both[:3]} in both val and test")
            dropped = sorted((set(h["val"]) | set(h["test"])) & set(d.exclude))
            if dropped:
                p.append(f"data.held_out names {dropped[:3]}, which data.exclude leaves out")
        if d.extend_train:
            p.append("data.held_out trains on every frame it does not hold out; drop data.extend_train")
    if m.r_cut <= 0:
        p.append(f"model.r_cut must be positive (Å), got {m.r_cut}")
    if m.r_bond is not None and not 0 < m.r_bond <= m.r_cut:
        p.append(f"model.r_bond must lie in (0, r_cut = {m.r_cut}], got {m.r_bond}")
    if m.lem and (m.r_max is None or m.r_max <= m.r_cut):
        p.append(f"model.lem needs model.r_max > model.r_cut ({m.r_cut}), got r_max = {m.r_max}")
    if not m.lem and m.r_max is not None and abs(m.r_max - m.r_cut) > 1e-12:
        p.append("model.r_max is only used by LEM (model.lem: true); SLEM's graph cutoff is r_cut")
    for key in ("channels", "n_layers", "num_radial", "latent_dim", "mlp_hidden", "envelope_p"):
        if getattr(m, key) < 1:
            p.append(f"model.{key} must be at least 1, got {getattr(m, key)}")
    if m.hamiltonian_baseline is not None and m.hamiltonian_baseline not in BASELINE_KINDS:
        p.append(f"model.hamiltonian_baseline must be null or one of {', '.join(BASELINE_KINDS)}, "
                 f"got {m.hamiltonian_baseline!r}")
    if m.head_channels < 0:
        p.append(f"model.head_channels must be >= 0 (0 = linear heads), got {m.head_channels}")
    if m.lmax is not None and m.lmax < 0:
        p.append(f"model.lmax must be >= 0, got {m.lmax}")
    if not 0 <= m.res_alpha < 1:
        p.append(f"model.res_alpha must lie in [0, 1), got {m.res_alpha}")
    if t.steps < 1:
        p.append(f"train.steps must be at least 1, got {t.steps}")
    if t.batch_size < 1:
        p.append(f"train.batch_size must be at least 1, got {t.batch_size}")
    if t.lr <= 0:
        p.append(f"train.lr must be positive, got {t.lr}")
    if t.min_lr < 0 or t.min_lr > t.lr:
        p.append(f"train.min_lr must lie in [0, lr = {t.lr}], got {t.min_lr}")
    if t.weight_decay < 0:
        p.append(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    if t.schedule not in SCHEDULES:
        p.append(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {t.schedule!r}")
    if t.warmup_steps < 0:
        p.append(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    if not 0 < t.plateau_factor < 1:
        p.append(f"train.plateau_factor must lie in (0, 1), got {t.plateau_factor}")
    if t.plateau_patience < 1:
        p.append(f"train.plateau_patience must be at least 1, got {t.plateau_patience}")
    if not 0 <= t.ema_decay < 1:
        p.append(f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
    if t.grad_clip < 0:
        p.append(f"train.grad_clip must be >= 0 (0 = off), got {t.grad_clip}")
    if t.mae_weight < 0 or t.mse_weight < 0 or t.mae_weight + t.mse_weight == 0:
        p.append("train.mae_weight and train.mse_weight must be >= 0 and not both 0")
    for op, w in t.operator_weights.items():
        if op not in d.operators:
            p.append(f"train.operator_weights names {op!r}, which is not in data.operators {d.operators}")
        elif not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
            p.append(f"train.operator_weights.{op} must be a non-negative number, got {w!r}")
    if t.dtype not in DTYPES:
        p.append(f"train.dtype must be one of {', '.join(DTYPES)}, got {t.dtype!r}")
    if t.eval_every < 1 or t.checkpoint_every < 1:
        p.append("train.eval_every and train.checkpoint_every must be at least 1")
    if t.divergence_factor <= 1:
        p.append(f"train.divergence_factor must be > 1, got {t.divergence_factor}")
    if t.onsite_weight <= 0:
        p.append(f"train.onsite_weight must be positive, got {t.onsite_weight}")
    if not 0.0 <= t.sigma_power <= 1.0:
        p.append(f"train.sigma_power must be in [0, 1], got {t.sigma_power}")
    if t.band_weight < 0:
        p.append(f"train.band_weight must be >= 0 (0 = off), got {t.band_weight}")
    if t.band_weight > 0 and "hamiltonian" not in d.operators:
        p.append("train.band_weight > 0 needs hamiltonian in data.operators")
    if t.band_kpoints < 1 or t.band_extra < 0:
        p.append(f"train.band_kpoints must be >= 1 and train.band_extra >= 0, got {t.band_kpoints}, {t.band_extra}")
    if t.band_mixing_weight < 0:
        p.append(f"train.band_mixing_weight must be >= 0 (0 = off), got {t.band_mixing_weight}")
    if t.band_mixing_weight > 0 and t.band_weight <= 0:
        p.append("train.band_mixing_weight > 0 needs the band term on (train.band_weight > 0)")
    if t.electron_weight < 0:
        p.append(f"train.electron_weight must be >= 0 (0 = off), got {t.electron_weight}")
    if t.electron_weight > 0 and not {"density_matrix", "overlap"} <= set(d.operators):
        p.append("train.electron_weight > 0 needs density_matrix and overlap in data.operators")
    if t.band_skip < 0:
        p.append(f"train.band_skip must be >= 0 (the lowest bands left out), got {t.band_skip}")
    if t.num_threads is not None and t.num_threads < 1:
        p.append(f"train.num_threads must be at least 1, got {t.num_threads}")
    return p


def _default_of(key: str) -> Any:
    """Default of a dotted config key (``train.band_weight``), or None."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    for f in dataclasses.fields(cls) if cls else ():
        if f.name == name:
            if f.default is not dataclasses.MISSING and f.default is not REQUIRED:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    return None


def config_differences(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Keys (dotted) whose values differ between two config dicts: (key, old, new).

    A key absent from one side (a config written before the key existed) counts as its
    default value."""
    out = []
    for k in sorted(set(old) | set(new)):
        key = prefix + k
        a = old[k] if k in old else _default_of(key)
        b = new[k] if k in new else _default_of(key)
        if isinstance(a, dict) and isinstance(b, dict) and k in SECTIONS:
            out += config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((prefix + k, a, b))
    return out
