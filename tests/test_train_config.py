"""Training configs: YAML and TOML read the same, every bad key or value is named."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from ase_slem.train.config import ConfigError, config_differences, config_from_dict, load_config

from _train_helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]

YAML = """
name: si_test
output: runs/si_test
data:
  path: ../data/si
  split: [0.8, 0.1, 0.1]
model:
  r_cut: 6.5
  channels: 8
train:
  steps: 100
  lr: 1e-3          # PyYAML reads this as text; numbers in text are accepted
  operator_weights: {hamiltonian: 2.0}
"""

TOML = """
name = "si_test"
output = "runs/si_test"
[data]
path = "../data/si"
split = [0.8, 0.1, 0.1]
[model]
r_cut = 6.5
channels = 8
[train]
steps = 100
lr = 0.001
operator_weights = {hamiltonian = 2.0}
"""


def test_yaml_and_toml_give_the_same_config(tmp_path):
    (tmp_path / "c.yaml").write_text(YAML)
    (tmp_path / "c.toml").write_text(TOML)
    a, b = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.toml")
    assert a.to_dict() == b.to_dict()
    assert a.train.lr == 1e-3 and isinstance(a.train.lr, float)
    assert a.model.r_cut == 6.5 and a.model.channels == 8 and a.model.n_layers == 2  # default kept
    assert a.train.operator_weights == {"hamiltonian": 2.0}
    # the dict form round-trips
    assert config_from_dict(a.to_dict()).to_dict() == a.to_dict()


def test_unknown_keys_are_named_with_a_suggestion(tmp_path):
    cfg = tiny_config(tmp_path, train={"lrr": 0.1}, model={"chanels": 4})
    cfg["extra_section"] = {}
    with pytest.raises(ConfigError) as err:
        config_from_dict(cfg)
    msg = str(err.value)
    assert "unknown key train.lrr (did you mean train.lr?)" in msg
    assert "unknown key model.chanels (did you mean model.channels?)" in msg
    assert "unknown key extra_section" in msg


def test_missing_required_keys_are_named(tmp_path):
    cfg = tiny_config(tmp_path)
    del cfg["model"]["r_cut"]
    del cfg["train"]["steps"]
    del cfg["name"]
    with pytest.raises(ConfigError, match=r"missing required key\(s\): name") as err:
        config_from_dict(cfg)
    assert "missing required key(s): model.r_cut" in str(err.value)
    assert "missing required key(s): train.steps" in str(err.value)
    cfg = tiny_config(tmp_path)
    del cfg["data"]
    with pytest.raises(ConfigError, match=r"missing required key\(s\): data"):
        config_from_dict(cfg)


def test_wrong_types_and_values_are_all_reported(tmp_path):
    cfg = tiny_config(
        tmp_path,
        train={"lr": "fast", "steps": 1.5, "schedule": "linear", "dtype": "float16", "progress": "yes"},
        data={"split": [0.9, 0.2, 0.1], "operators": ["hamiltonian", "spin"]},
    )
    with pytest.raises(ConfigError) as err:
        config_from_dict(cfg)
    msg = str(err.value)
    for part in ("train.lr must be a number, not 'fast'", "train.steps must be an integer, not 1.5",
                 "train.progress must be true or false"):
        assert part in msg
    cfg = tiny_config(tmp_path, train={"schedule": "linear", "dtype": "float16", "ema_decay": 1.0,
                                             "sigma_power": 2.0},
                      data={"split": [0.9, 0.2, 0.1], "operators": ["hamiltonian", "spin"]},
                      model={"r_bond": 4.0})
    with pytest.raises(ConfigError) as err:
        config_from_dict(cfg)
    msg = str(err.value)
    for part in ("train.schedule must be one of cosine, plateau, constant", "train.dtype must be one of",
                 "data.split fractions must sum to at most 1", "data.operators must be a non-empty subset",
                 "model.r_bond must lie in (0, r_cut = 3.0]", "train.ema_decay must lie in [0, 1)",
                 "train.sigma_power must be in [0, 1], got 2.0"):
        assert part in msg, part


def test_lem_needs_r_max_beyond_r_cut(tmp_path):
    with pytest.raises(ConfigError, match="model.lem needs model.r_max > model.r_cut"):
        config_from_dict(tiny_config(tmp_path, model={"lem": True}))
    cfg = config_from_dict(tiny_config(tmp_path, model={"lem": True, "r_max": 5.0}))
    assert cfg.model.r_max == 5.0
    with pytest.raises(ConfigError, match="model.r_max is only used by LEM"):
        config_from_dict(tiny_config(tmp_path, model={"r_max": 5.0}))


def test_operator_weights_must_name_learned_operators(tmp_path):
    with pytest.raises(ConfigError, match="operator_weights names 'density_matrix'"):
        config_from_dict(tiny_config(tmp_path, train={"operator_weights": {"density_matrix": 1.0}}))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match="unknown config format '.json'; use .yaml, .yml or .toml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_config_differences_lists_changed_keys(tmp_path):
    a = config_from_dict(tiny_config(tmp_path)).to_dict()
    b = config_from_dict(tiny_config(tmp_path, model={"channels": 4}, train={"steps": 99})).to_dict()
    assert config_differences(a, b) == [("model.channels", 2, 4), ("train.steps", 20, 99)]


SHIPPED_CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


@functools.lru_cache(maxsize=None)
def _run_folders() -> dict:
    """{name of each shipped config: its output folder}, read once for all the cases below."""
    return {name: load_config(REPO / "configs" / f"{name}.yaml").output for name in SHIPPED_CONFIGS}


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_are_valid(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert name.startswith(cfg.name)  # the later stages and variants (si_pbe_dzvp_bands, ...) make the same model
    assert set(cfg.data.operators) == {"hamiltonian", "overlap", "density_matrix"}
    assert cfg.model.r_cut > 0 and cfg.train.steps > 0
    others = {out: other for other, out in _run_folders().items() if other != name}
    assert cfg.output not in others, f"{name} would overwrite the run of {others.get(cfg.output)}"
    if cfg.train.init_from:  # a later stage starts from another config's run or a shipped model file
        start = cfg.train.init_from
        # ... or from an earlier shipped file, which the config says how to get back (git show REV:models/...)
        text = (REPO / "configs" / f"{name}.yaml").read_text()
        from_history = any("git show " in line and start in line for line in text.splitlines())
        assert start.startswith("models/") or any(start.startswith(out + "/") for out in others) or from_history, start


def test_command_line_overrides_change_one_setting_and_are_checked(tmp_path):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path / "run")))
    cfg = load_config(tmp_path / "c.yaml", ["train.steps=7", "train.init_from=models/x.pt", "train.lr=1e-3"])
    assert cfg.train.steps == 7 and cfg.train.init_from == "models/x.pt" and cfg.train.lr == 1e-3
    assert load_config(tmp_path / "c.yaml").train.steps == 20  # the file is unchanged
    with pytest.raises(ConfigError, match="did you mean train.steps"):
        load_config(tmp_path / "c.yaml", ["train.stesp=7"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(tmp_path / "c.yaml", ["train.steps"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(tmp_path / "c.yaml", ["train.steps=many"])


def test_extends_lays_a_stage_over_its_base_and_rejects_bad_chains(tmp_path):
    import yaml

    base = tiny_config(tmp_path / "run")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "stage.yaml").write_text(yaml.safe_dump(
        {"extends": "../base.yaml", "output": str(tmp_path / "run2"), "train": {"steps": 7}}))
    stage = load_config(tmp_path / "sub" / "stage.yaml", ["train.lr=1e-3"])
    full = load_config(tmp_path / "base.yaml")
    assert stage.train.steps == 7 and stage.train.lr == 1e-3 and stage.output == str(tmp_path / "run2")
    # every other setting, inside the merged train section as well, is the base's
    assert stage.model == full.model and stage.data == full.data
    assert stage.train.batch_size == full.train.batch_size and stage.train.seed == full.train.seed
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump({"extends": "loop.yaml", "train": {"steps": 3}}))
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"extends": "b.yaml"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"extends": "a.yaml"}))
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "lost.yaml").write_text(yaml.safe_dump({"extends": "nowhere.yaml"}))
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        load_config(tmp_path / "lost.yaml")
