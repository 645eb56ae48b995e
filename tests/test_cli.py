"""The ase-slem command on real DFT output: pictures plus numbers, one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from ase_slem.cli import main

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
SIESTA = EXTERNAL / "siesta-si-deeph" / "siesta_data"
needs_external = pytest.mark.skipif(not SIESTA.exists(), reason=f"third-party DFT samples not found at {EXTERNAL} (they sit beside the repository in CI)")


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
