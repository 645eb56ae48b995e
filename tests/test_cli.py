"""The ase-slem command on real DFT output and on tiny model files: pictures plus numbers (JSON,
CSV, cube files that integrate to Tr(DS)), model info, one-line errors."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ase_slem.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit in the model files

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
SIESTA = EXTERNAL / "siesta-si-deeph" / "siesta_data"
needs_external = pytest.mark.skipif(not SIESTA.exists(), reason=f"third-party DFT samples not found at {EXTERNAL} (../shared/data/external beside the repository; absent in a user's clone)")


@needs_external
def test_bands_writes_png_json_csv(tmp_path, capsys):
    out = tmp_path / "si.png"
    assert main(["bands", str(SIESTA), "-o", str(out), "--npoints", "30"]) == 0
    assert out.stat().st_size > 10_000
    table = json.loads(out.with_suffix(".json").read_text())
    e = np.array(table["energies"])
    assert e.shape == (len(table["x"]), 26)
    # silicon: 8 valence electrons from Tr(DS) -> E_F mid-gap, 4 bands below it everywhere
    assert table["n_electrons"] == pytest.approx(8.0, abs=1e-4)
    assert (e[:, 3] < table["reference"]).all() and (e[:, 4] > table["reference"]).all()
    csv = np.loadtxt(out.with_suffix(".csv"), delimiter=",", skiprows=1)
    assert np.allclose(csv[:, 1:], e, atol=1e-6)
    assert "wrote" in capsys.readouterr().out


@needs_external
def test_dos_writes_png_and_json(tmp_path):
    out = tmp_path / "dos.png"
    assert main(["dos", str(SIESTA), "-o", str(out), "--mesh", "4", "4", "4", "--pdos", "l"]) == 0
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["gap_eV"] > 0.3 and set(table["pdos"]) >= {"s", "p"}
    e, d = np.array(table["energy_eV"]), np.array(table["dos"])
    below = e < table["fermi_level_eV"]
    assert np.trapezoid(d[below], e[below]) == pytest.approx(8.0, abs=0.05)


def test_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    assert main(["bands", str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file or folder" in err[0]
    (tmp_path / "junk").mkdir()
    assert main(["dos", str(tmp_path / "junk"), "-o", str(tmp_path / "x.png")]) == 1
    assert "junk" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------
# with --model: tiny model files made in the session (conftest: `models` untrained, `trained_water`)
# ---------------------------------------------------------------------------------------------
def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_bands_of_a_formula_are_the_models_bands(models, tmp_path, capsys):
    from ase.build import bulk

    from ase_slem import SLEMCalculator

    out = tmp_path / "si.png"
    assert main(["bands", "Si", "--model", str(models["si"]), "-o", str(out), "--npoints", "20"]) == 0
    assert _is_png(out) and "20 k-points, 26 bands" in capsys.readouterr().out
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["model"] == "si_tiny" and table["structure"] == "Si2"
    assert table["n_electrons"] == 8.0  # gth-pbe: 4 valence electrons per Si, from the model's metadata
    e = np.array(table["energies"])
    ref = SLEMCalculator(str(models["si"])).get_band_energies(table["kpts_fractional"], bulk("Si"))
    assert e.shape == (20, 26) and np.abs(e - ref).max() < 1e-8
    csv = np.loadtxt(out.with_suffix(".csv"), delimiter=",", skiprows=1)
    assert np.allclose(csv[:, 1:], e, atol=1e-6)


def test_dos_of_a_structure_file_counts_the_models_electrons(models, tmp_path):
    from ase.build import bulk
    from ase.io import write

    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=4)
    write(tmp_path / "si.extxyz", atoms)
    out = tmp_path / "dos.png"
    assert main(["dos", str(tmp_path / "si.extxyz"), "--model", str(models["si"]), "-o", str(out),
                 "--mesh", "2", "2", "2", "--pdos", "l"]) == 0
    assert _is_png(out)
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["method"] == "tetrahedron" and set(table["pdos"]) == {"s", "p", "d"}
    e, d = np.array(table["energy_eV"]), np.array(table["dos"])
    below = e < table["fermi_level_eV"]
    assert np.trapezoid(d[below], e[below]) == pytest.approx(8.0, abs=0.05)
    assert np.trapezoid(d, e) == pytest.approx(2 * 26, abs=0.1)  # every band, spin included


def test_dos_of_a_molecule_is_its_broadened_levels(trained_water, tmp_path, capsys):
    from ase.build import molecule

    from ase_slem import SLEMCalculator

    out = tmp_path / "levels.png"
    assert main(["dos", "H2O", "--model", str(trained_water), "-o", str(out), "--width", "0.1"]) == 0
    assert _is_png(out) and "7 levels, HOMO" in capsys.readouterr().out
    table = json.loads(out.with_suffix(".json").read_text())
    calc = SLEMCalculator(str(trained_water))
    levels = calc.get_band_energies([[0, 0, 0]], molecule("H2O"))[0]
    assert np.abs(np.array(table["levels_eV"]) - levels).max() < 1e-8
    assert table["n_electrons"] == 10.0  # all electron: O 8 + 2 H
    assert table["homo_eV"] == pytest.approx(levels[4]) and table["lumo_eV"] == pytest.approx(levels[5])
    assert table["gap_eV"] == pytest.approx(levels[5] - levels[4])
    e, d = np.array(table["energy_eV"]), np.array(table["dos"])
    assert np.trapezoid(d, e) == pytest.approx(2 * 7, abs=1e-3)  # seven levels, two electrons each
    assert e[0] < levels[0] - 0.5 and np.diff(e).max() <= 0.1 / 4 + 1e-9  # the O 1s core too, resolved
    below = e < 0.5 * (levels[4] + levels[5])
    assert np.trapezoid(d[below], e[below]) == pytest.approx(10.0, abs=0.05)


def test_bands_of_a_molecule_is_refused_with_a_hint(trained_water, tmp_path, capsys):
    assert main(["bands", "H2O", "--model", str(trained_water), "-o", str(tmp_path / "b.png")]) == 1
    line = _one_error_line(capsys)
    assert "molecular" in line and "band structures need a crystal" in line and "ase-slem dos" in line
    assert not (tmp_path / "b.png").exists()


def _printed_number(text: str, label: str) -> float:
    match = re.search(re.escape(label) + r" (-?[0-9.]+)", text)
    assert match, text
    return float(match.group(1))


def test_density_cube_integrates_to_tr_ds_and_has_a_slice(models, tmp_path, capsys):
    from ase.build import bulk

    from ase_slem import SLEMCalculator
    from ase_slem.density import read_cube

    out = tmp_path / "rho.cube"
    assert main(["density", "Si", "--model", str(models["si"]), "-o", str(out), "--spacing", "0.3",
                 "--overlap", "exact"]) == 0
    printed = capsys.readouterr().out
    atoms, grid = read_cube(out)
    assert atoms.get_chemical_symbols() == ["Si", "Si"] and grid.rho.shape == (13, 13, 13)
    assert grid.integral == pytest.approx(_printed_number(printed, "electrons on the grid"), abs=1e-3)
    # the density of the model's D: it integrates to Tr(D S) (exact S) up to the grid's quadrature error
    calc = SLEMCalculator(str(models["si"]), overlap="exact")
    si = bulk("Si")
    n = calc.get_density_matrix(si).trace_product(calc.get_overlap(si))
    assert abs(n) > 0.1 and grid.integral == pytest.approx(n, rel=3e-3)
    assert "the model's electron count 8" in printed and "differ" not in printed
    assert _is_png(out.with_suffix(".png"))


def test_band_density_is_a_normalized_bloch_orbital(models, tmp_path, capsys):
    from ase.build import bulk

    from ase_slem import SLEMCalculator
    from ase_slem.density import read_cube

    out = tmp_path / "vbm.cube"
    assert main(["density", "Si", "--model", str(models["si"]), "-o", str(out), "--spacing", "0.3",
                 "--band", "vbm", "--kpt", "0.5", "0", "0.5", "--overlap", "exact"]) == 0
    printed = capsys.readouterr().out
    _, grid = read_cube(out)
    assert grid.integral == pytest.approx(1.0, abs=2e-3)  # |psi|^2 with c^H S c = 1
    e = SLEMCalculator(str(models["si"]), overlap="exact").get_band_energies([[0.5, 0, 0.5]], bulk("Si"))[0]
    assert "band 3 at k = (0.5, 0, 0.5)" in printed  # vbm: 8 electrons fill bands 0..3
    assert _printed_number(printed, "E =") == pytest.approx(e[3], abs=1e-4)
    assert _is_png(out.with_suffix(".png"))


def test_density_argument_errors(trained_water, tmp_path, capsys):
    model = str(trained_water)
    assert main(["density", "H2O", "--model", model, "-o", str(tmp_path / "rho.png")]) == 1
    assert ".cube" in _one_error_line(capsys)
    assert main(["density", "H2O", "--model", model, "-o", str(tmp_path / "r.cube"), "--kpt", "0", "0", "0"]) == 1
    assert "--kpt goes with --band" in _one_error_line(capsys)
    assert main(["density", "H2O", "--model", model, "-o", str(tmp_path / "r.cube"), "--band", "homo",
                 "--kpt", "0.5", "0", "0"]) == 1
    assert "only k = Gamma" in _one_error_line(capsys)
    assert main(["density", "H2O", "--model", model, "-o", str(tmp_path / "r.cube"), "--band", "99"]) == 1
    assert "7 bands, numbered 0 to 6" in _one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_info_prints_the_metadata_without_torch(trained_water, capsys):
    from ase_slem.model_file import read_metadata

    meta = read_metadata(trained_water)
    assert main(["info", str(trained_water)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("water_tiny: tiny test model of water")
    for expected in ("species        H, O", "sto-3g: H 1s, O 2s1p", "molecular", "r_cut 3 Å", "xc pbe",
                     "pseudo none (all electron)", "H 1, O 8 per atom", "density_matrix",
                     f"{meta['network']['n_parameters']} parameters", "format 1", "accuracy (test-set MAE, training's final check)"):
        assert expected in text, expected
    mae = meta["metrics"]["test"]["hamiltonian"]["all"]
    assert re.search(rf"hamiltonian\s+{mae:.4g} meV \(onsite H", text)
    assert main(["info", str(trained_water), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == meta
    # info reads the archive only: no torch import (a fresh interpreter)
    code = ("import sys; from ase_slem.cli import main; rc = main(['info', sys.argv[1]]); "
            "sys.exit(10 if 'torch' in sys.modules else rc)")
    assert subprocess.run([sys.executable, "-c", code, str(trained_water)], capture_output=True).returncode == 0


def test_info_by_name_and_of_an_untrained_model(models, monkeypatch, capsys):
    monkeypatch.setenv("ASE_SLEM_MODELS", str(models["si"].parent))
    assert main(["info", "si_tiny"]) == 0
    text = capsys.readouterr().out
    assert "periodic (crystals)" in text and "Si 2s2p1d" in text and "Si 4 per atom" in text
    assert "accuracy       not measured" in text
    assert "model card" not in text  # none beside the test model
    card = models["si"].with_suffix(".md")
    card.write_text("# Model card: `si_tiny`\n")
    try:
        assert main(["info", "si_tiny"]) == 0
        assert f"model card     {card}: accuracy against DFT" in capsys.readouterr().out
    finally:
        card.unlink()  # the model folder is shared by the session's tests


def test_model_errors_are_one_line(models, tmp_path, monkeypatch, capsys):
    si = str(models["si"])
    monkeypatch.setenv("ASE_SLEM_MODELS", str(models["si"].parent))
    assert main(["bands", "Si", "--model", "no_such_model", "-o", str(tmp_path / "x.png")]) == 1
    line = _one_error_line(capsys)
    assert "no model file 'no_such_model'" in line and "models found there:" in line
    assert all(n in line for n in ("si_hs", "si_tiny", "water_tiny"))  # the session's models are listed
    assert main(["info", "no_such_model"]) == 1
    assert "no model file 'no_such_model'" in _one_error_line(capsys)
    (tmp_path / "garbage.cif").write_text("this is not a crystal\n")
    assert main(["dos", str(tmp_path / "garbage.cif"), "--model", si, "-o", str(tmp_path / "x.png")]) == 1
    assert "garbage.cif: ase cannot read it" in _one_error_line(capsys)
    assert main(["dos", str(tmp_path / "missing.cif"), "--model", si, "-o", str(tmp_path / "x.png")]) == 1
    assert "missing.cif: no such structure file" in _one_error_line(capsys)
    assert main(["dos", "Qq2", "--model", si, "-o", str(tmp_path / "x.png")]) == 1
    assert "Qq2: no such file, and not a formula ase can build" in _one_error_line(capsys)
    assert main(["bands", "C", "--model", si, "-o", str(tmp_path / "x.png")]) == 1
    assert "knows Si only; the structure contains C" in _one_error_line(capsys)
    assert main(["density", "Si", "--model", str(models["si_hs"]), "-o", str(tmp_path / "x.cube")]) == 1
    assert "carries none" in _one_error_line(capsys)  # no radial functions: no density in space
    assert main(["dos", "Si", "--model", str(models["si_hs"]), "-o", str(tmp_path / "x.png")]) == 1
    assert "pass --n-electrons N" in _one_error_line(capsys)  # no valence counts, no density matrix
    assert main(["bands", str(tmp_path), "--overlap", "exact", "-o", str(tmp_path / "x.png")]) == 1
    assert "--overlap goes with --model" in _one_error_line(capsys)
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".png", ".json", ".cube")]


def test_help_explains_structure_and_model(capsys):
    with pytest.raises(SystemExit):
        main(["bands", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a formula (Si -> ase.build.bulk for a periodic model, H2O -> ase.build.molecule" in text
    assert "ase-slem bands Si --model si_pbe_dzvp -o bands.png" in text
