"""The examples work with the shipped models: examples/tour.ipynb runs cell by cell (nbclient,
kernel ``python3``) and examples/si_dos.py and examples/water_density.py, run as scripts into a
temporary folder, write their files with physically sane numbers.

The models are looked up by name exactly as the examples do ($ASE_SLEM_MODELS first, then
models/), so in CI these are the shipped ``models/si_pbe_dzvp.pt`` and
``models/water_pbe_svp.pt``.  A missing model is an error, not a skip: these tests exist to prove
that the examples do not rot against what is shipped.

Each script runs once per module; one test checks what any model must give (files written and
readable, PNGs with content, internally consistent numbers), another the physics that only a
trained model gives (silicon: gap 0.2-1.5 eV, indirect, VBM at Gamma, CBM on Gamma-X near 0.85,
valence band ~12 eV wide and s-like at its bottom; water: 10 electrons on the grid within 1 %,
PBE-like HOMO and gap).  Subprocesses and the kernel run with one BLAS/OpenMP thread (small
matrices; a shared 2-core machine).  Tests do not assert wall times.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def shipped_model(name: str) -> Path:
    """Path of the model the examples will load for ``name``; fails the test if there is none."""
    from ase_slem.model_file import ModelFileError, resolve_model_path

    try:
        return resolve_model_path(name)
    except ModelFileError as err:
        problem = str(err)
    pytest.fail(f"the examples need the shipped model {name!r} (models/{name}.pt): {problem}", pytrace=False)


def run_example(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``examples/<script>`` with ``args`` in ``cwd``; fail with its output unless it exits 0."""
    env = {**os.environ, **SINGLE_THREAD, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n"
                    f"--- stderr\n{proc.stderr}", pytrace=False)
    return proc


def check_png(path: Path, min_side: int = 200) -> None:
    """A real PNG picture: signature, size, and pixels that are not all the same."""
    import matplotlib.image as mpimg

    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    img = mpimg.imread(path)
    assert min(img.shape[:2]) >= min_side, f"{path}: only {img.shape[:2]} pixels"
    assert float(np.ptp(img[..., :3])) > 0.1, f"{path} is blank"


# ---------------------------------------------------------------------------------------------
# examples/si_dos.py
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def si_dos(tmp_path_factory):
    """(stdout, PNG path, numbers from the JSON) of ``si_dos.py -o out/si_dos.png``."""
    model = shipped_model("si_pbe_dzvp")
    cwd = tmp_path_factory.mktemp("si_dos")
    proc = run_example("si_dos.py", ["-o", "out/si_dos.png"], cwd)
    png = cwd / "out" / "si_dos.png"
    numbers = json.loads((cwd / "out" / "si_dos.json").read_text())
    assert Path(numbers["model"]).resolve() == model.resolve()
    return proc.stdout, png, numbers


def test_si_dos_writes_png_and_consistent_json(si_dos):
    out, png, d = si_dos
    check_png(png)
    for phrase in ("Fermi level", "gap on the mesh", "gap along the seekpath path", "dos_pdos_tetrahedron",
                   "predict_H_S"):
        assert phrase in out, f"{phrase!r} missing from the printed output:\n{out}"
    assert d["method"] == "tetrahedron" and d["kmesh"]["mesh"] == [12, 12, 12]
    assert 0 < d["kmesh"]["n_irreducible"] < d["kmesh"]["n_full"] == 12**3
    e, g, n = (np.array(d[k]) for k in ("energies_eV", "dos", "idos"))
    assert len(e) == len(g) == len(n) == 1201 and np.all(np.diff(e) > 0)
    assert set(d["pdos"]) == {"s", "p", "d"}
    # the PDOS partition the DOS; all 26 bands (2 electrons each) lie inside the energy grid
    assert d["pdos_sum_minus_total_max"] < 1e-8 * g.max()
    de = np.gradient(e)
    norb = 2 * 13
    assert abs(np.sum(g * de) - 2 * norb) < 0.05 and abs(n[-1] - 2 * norb) < 1e-6
    assert np.all(g >= -1e-9) and np.all(np.diff(n) >= -1e-9)
    assert d["n_electrons"] == 8.0
    assert all(v >= 0 for v in d["timings_s"].values())


def test_si_dos_numbers_are_those_of_silicon(si_dos):
    from ase.build import bulk

    _, _, d = si_dos
    gap, path = d["gap"], d["gap_along_path"]
    ef = d["fermi_level_eV"]
    assert 0.2 < gap["gap_eV"] < 1.5, f"gap on the 12x12x12 mesh {gap['gap_eV']:.3f} eV"
    assert 0.2 < path["gap_eV"] < 1.5, f"gap along the band path {path['gap_eV']:.3f} eV"
    assert path["gap_eV"] <= gap["gap_eV"] + 0.05  # the path passes closer to the true CBM
    assert gap["vbm_eV"] < ef < gap["cbm_eV"] and abs(d["electrons_below_fermi"] - 8.0) < 1e-3
    assert not gap["direct"] and gap["direct_gap_eV"] > gap["gap_eV"] + 0.3  # silicon is indirect
    assert np.allclose(gap["k_vbm"], 0.0)  # VBM at Gamma
    # CBM on the Delta line, ~0.85 of the way from Gamma to X (PBE)
    atoms = bulk("Si", "diamond", a=d["lattice_constant_A"])
    recip = 2 * np.pi * np.linalg.inv(atoms.cell[:]).T
    frac = np.linalg.norm(np.array(path["k_cbm"]) @ recip) / (2 * np.pi / d["lattice_constant_A"])
    assert 0.75 < frac < 0.95, f"CBM at {frac:.3f} of Gamma-X"
    # valence band: ~12 eV wide, s-like at the bottom, p-like at the top (sp3 silicon)
    e, g = np.array(d["energies_eV"]), np.array(d["dos"])
    bottom = e[np.argmax(g > 1e-3)]
    assert 11.0 < gap["vbm_eV"] - bottom < 13.0, f"valence band width {gap['vbm_eV'] - bottom:.2f} eV"
    s, p = np.array(d["pdos"]["s"]), np.array(d["pdos"]["p"])
    low = (e >= bottom) & (e < bottom + 2.0)
    top = (e > gap["vbm_eV"] - 2.0) & (e <= gap["vbm_eV"])
    assert s[low].sum() > 3 * p[low].sum() and p[top].sum() > 3 * s[top].sum()


# ---------------------------------------------------------------------------------------------
# examples/water_density.py
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def water(tmp_path_factory):
    """(stdout, output folder, numbers from the JSON) of ``water_density.py --homo -o out/water.cube``."""
    model = shipped_model("water_pbe_svp")
    cwd = tmp_path_factory.mktemp("water")
    proc = run_example("water_density.py", ["--homo", "-o", "out/water.cube"], cwd)
    numbers = json.loads((cwd / "out" / "water.json").read_text())
    assert Path(numbers["model"]).resolve() == model.resolve()
    return proc.stdout, cwd / "out", numbers


def test_water_density_writes_cube_png_and_json(water):
    from ase_slem.density import read_cube

    out, folder, d = water
    assert "electrons on the grid" in out and "HOMO" in out and "density_on_grid" in out
    assert sorted(p.name for p in folder.iterdir()) == ["water.cube", "water.json", "water.png",
                                                       "water_homo.cube"]  # no temporary files left
    check_png(folder / "water.png")
    atoms, grid = read_cube(folder / "water.cube")
    assert atoms.get_chemical_symbols() == ["O", "H", "H"]
    assert np.allclose(atoms.get_positions(), d["positions_A"], atol=1e-4)
    assert list(grid.rho.shape) == d["grid"]["shape"]
    assert np.allclose(grid.box, d["grid"]["box_A"], atol=1e-4)  # cube: 6 decimals in bohr
    assert np.allclose(grid.origin, d["grid"]["origin_A"], atol=1e-4)
    assert abs(grid.integral - d["electrons_on_grid"]) < 1e-4 * abs(d["electrons_on_grid"])  # e/Å^3 round trip
    _, homo = read_cube(folder / "water_homo.cube")
    assert np.all(homo.rho >= 0) and abs(homo.integral - d["homo"]["norm_on_grid"]) < 1e-4
    levels = np.array(d["orbital_energies_eV"])
    assert len(levels) == 24 and np.all(np.diff(levels) >= 0)  # def2-svp: O 14 + 2 x H 5 orbitals
    assert d["homo"]["index"] == 4 and d["homo_eV"] == levels[4] and d["lumo_eV"] == levels[5]


def test_water_density_numbers_are_those_of_water(water):
    _, _, d = water
    n = d["electrons_on_grid"]
    assert abs(n - 10.0) < 0.1, f"{n:.4f} electrons on the grid"
    assert abs(d["tr_DS"] - 10.0) < 0.1, f"Tr(D S) = {d['tr_DS']:.4f}"
    assert abs(d["homo"]["norm_on_grid"] - 1.0) < 0.02
    # PBE/def2-svp (PySCF): HOMO (1b1) -6.20 eV, LUMO 0.74 eV, gap 6.93 eV
    assert -7.5 < d["homo_eV"] < -5.0 and 5.5 < d["gap_eV"] < 8.5
    assert -560.0 < d["orbital_energies_eV"][0] < -460.0  # the O 1s level (-510 eV)


# ---------------------------------------------------------------------------------------------
# examples/tour.ipynb
# ---------------------------------------------------------------------------------------------
def test_tour_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(EXAMPLES / "tour.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 8
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"code cells {dirty} carry outputs: clear them before committing"
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_tour_notebook_runs_every_cell(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    shipped_model("si_pbe_dzvp")
    shipped_model("water_pbe_svp")
    for k, v in SINGLE_THREAD.items():
        monkeypatch.setenv(k, v)  # the kernel inherits the environment
    nb = nbformat.read(EXAMPLES / "tour.ipynb", as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # bands, DOS, ASE's plots, density slice
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for phrase in ("orbitals per cell", "Fermi level", "ase.dft.bandgap", "largest |S_model - S_exact|", "HOMO",
                   "electrons on the grid"):
        assert phrase in text, f"{phrase!r} missing from the notebook's output"
    assert list(tmp_path.iterdir()) == []  # the tour writes no files
