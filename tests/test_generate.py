"""Training-set generation: structure sampling physics, resumable PySCF frames, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import write
from ase.units import kB

pytest.importorskip("pyscf", reason="PySCF (the 'dft' extra) makes the frames")

from ase_slem.cli import main as cli_main  # noqa: E402
from ase_slem.io.dataset import frame_paths, read_frame  # noqa: E402
from ase_slem.io.generate import SettingsError, generate_dataset, kmesh_for, load_settings  # noqa: E402
from ase_slem.io.sampling import (einstein_displacements, harmonic_modes, normal_mode_displacements,  # noqa: E402
                                  random_rotation, random_strain)

WATER = {"kind": "molecular", "xc": "pbe", "basis": "sto-3g", "pseudo": None, "grids_level": 1, "conv_tol": 1e-9}


def test_einstein_displacements_follow_equipartition():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(4)  # 512 atoms
    rng = np.random.default_rng(0)
    u = np.concatenate([einstein_displacements(atoms, 600.0, rng) for _ in range(4)])
    k = atoms.get_masses()[0] * 12.0 ** 2 * 4.0918e-3  # m (2 pi nu)^2, eV/Å^2 (amu, THz)
    # <1/2 k u^2> per axis = k_B T / 2 (6144 samples per axis: 2% statistical error)
    assert np.mean(0.5 * k * u ** 2) == pytest.approx(0.5 * kB * 600.0, rel=0.05)
    assert np.allclose(einstein_displacements(atoms, 0.0, rng), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        einstein_displacements(atoms, -1.0, rng)


def test_strain_is_symmetric_and_bounded_and_rotation_proper():
    rng = np.random.default_rng(1)
    for _ in range(20):
        f = random_strain(rng, 0.03)
        eps = f - np.eye(3)
        assert np.allclose(eps, eps.T) and np.abs(eps).max() <= 0.03
        q = random_rotation(rng)
        assert np.allclose(q @ q.T, np.eye(3), atol=1e-12) and np.linalg.det(q) == pytest.approx(1.0)


def test_normal_modes_of_a_harmonic_model_and_their_thermal_energy():
    # a water-like molecule with pair springs: the Hessian of E = sum 1/2 k (|r_a - r_b| - d0)^2
    atoms = molecule("H2O")
    pos, masses = atoms.positions, atoms.get_masses()
    pairs, ks = [(0, 1), (0, 2), (1, 2)], [40.0, 40.0, 5.0]
    h = np.zeros((9, 9))
    for (a, b), k in zip(pairs, ks):
        e = pos[b] - pos[a]
        e /= np.linalg.norm(e)
        blk = k * np.outer(e, e)
        for x, y, s in ((a, a, 1), (b, b, 1), (a, b, -1), (b, a, -1)):
            h[3 * x:3 * x + 3, 3 * y:3 * y + 3] += s * blk
    k, modes = harmonic_modes(h, masses)
    assert k.shape == (3,) and np.all(k > 0)
    rng = np.random.default_rng(2)
    t = 500.0
    d = np.stack([normal_mode_displacements(masses, k, modes, t, rng).ravel() for _ in range(4000)])
    energy = 0.5 * np.einsum("ni,ij,nj->n", d, h, d)
    assert energy.mean() == pytest.approx(3 * 0.5 * kB * t, rel=0.05)  # k_B T / 2 per mode
    # displacements carry no net translation (mass-weighted centre fixed)
    com = (d.reshape(-1, 3, 3) * masses[None, :, None]).sum(1)
    assert np.abs(com).max() < 1e-10
    with pytest.raises(ValueError, match="not a minimum"):
        harmonic_modes(-h - np.eye(9), masses)


def test_kmesh_for_lengths():
    prim = bulk("Si", "diamond", a=5.431)
    cube = bulk("Si", "diamond", a=5.431, cubic=True)
    assert kmesh_for(prim, 10.5) == (3, 3, 3) and kmesh_for(prim, 21.0) == (6, 6, 6)
    assert kmesh_for(cube, 10.5) == (2, 2, 2) and kmesh_for(cube, 21.0) == (4, 4, 4)


def test_shipped_settings_files_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "data"
    for name in ("si_pbe_dzvp", "water_pbe_svp", "ethanol_pbe_svp"):
        s = load_settings(root / f"{name}.yaml")
        assert s.kind == ("periodic" if name.startswith("si") else "molecular")


def test_settings_errors_name_the_problem(tmp_path):
    with pytest.raises(SettingsError, match="'kmesh_lenght'.*did you mean 'kmesh_length'"):
        load_settings({"kind": "periodic", "kmesh_lenght": 10.0})
    with pytest.raises(SettingsError, match="unknown basis 'no-such-basis'"):
        load_settings({**WATER, "basis": "no-such-basis"})
    with pytest.raises(SettingsError, match="unknown pseudopotential"):
        load_settings({"kind": "periodic", "kmesh": [1, 1, 1], "basis": "gth-szv", "pseudo": "gth-nonsense"})
    with pytest.raises(SettingsError, match="needs kmesh or kmesh_length"):
        load_settings({"kind": "periodic", "basis": "gth-szv"})
    with pytest.raises(SettingsError, match="smearing is a Fermi-Dirac width in eV"):
        load_settings({"kind": "periodic", "kmesh": [1, 1, 1], "basis": "gth-szv", "smearing": -0.1})
    assert load_settings({"kind": "periodic", "kmesh": [1, 1, 1], "basis": "gth-szv", "smearing": 0.05}).smearing == 0.05
    with pytest.raises(SettingsError, match="kpoint_symmetry must be false, time_reversal or space_group"):
        load_settings({"kind": "periodic", "kmesh": [1, 1, 1], "basis": "gth-szv", "kpoint_symmetry": "tr"})
    assert load_settings({"kind": "periodic", "kmesh": [1, 1, 1], "basis": "gth-szv",
                          "kpoint_symmetry": "time_reversal"}).kpoint_symmetry == "time_reversal"
    with pytest.raises(SettingsError, match="multigrid integrates on FFT grids"):
        load_settings({"kind": "periodic", "kmesh": [1, 1, 1], "basis": "gth-szv", "multigrid": True, "density_fit": True})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(SettingsError, match="periodic"):
        generate_dataset([bulk("Si")], WATER, tmp_path / "d", progress=False)


def _waters(n):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = molecule("H2O")
        a.positions += rng.normal(scale=0.03, size=(3, 3))
        out.append(a)
    return out


def test_generation_is_resumable_and_frames_match_pyscf(tmp_path):
    from pyscf import dft

    from ase_slem.io.pyscf import atoms_to_mole

    structures = _waters(3)
    out = tmp_path / "water"
    rep = generate_dataset(structures[:2], WATER, out, progress=False)
    assert rep.written == [0, 1] and rep.failed == []
    stamp = (out / "frame.000000" / "hamiltonians.h5").stat().st_mtime_ns
    rep = generate_dataset(structures, WATER, out, workers=2, progress=False)  # resumes: only frame 2 is new
    assert rep.skipped == [0, 1] and rep.written == [2]
    assert (out / "frame.000000" / "hamiltonians.h5").stat().st_mtime_ns == stamp
    assert [p.name for p in frame_paths(out)] == ["frame.000000", "frame.000001", "frame.000002"]
    log = [json.loads(line) for line in (out / "generation.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in log) == [0, 1, 2] and all(r["seconds"] > 0 for r in log)
    # frame 2 is structure 2, whatever order the workers finished in; its levels are PySCF's
    fr = read_frame(out / "frame.000002")
    assert np.allclose(fr.atoms.positions, structures[2].positions, atol=1e-10)
    mf = dft.RKS(atoms_to_mole(structures[2], "sto-3g"))
    mf.xc, mf.grids.level, mf.conv_tol, mf.verbose = "pbe", 1, 1e-9, 0
    mf.kernel()
    from ase_slem import band_energies

    e = band_energies(fr.operators["hamiltonian"], fr.operators["overlap"], np.zeros((1, 3)))[0]
    assert np.abs(e - mf.mo_energy * 27.211386245988).max() < 1e-5
    assert fr.operators["density_matrix"].trace_product(fr.operators["overlap"]) == pytest.approx(10.0, abs=1e-8)


def test_a_frame_that_fails_is_recorded_and_not_written(tmp_path):
    good = _waters(1)[0]
    odd = Atoms("H", positions=[[0, 0, 0]])  # one electron: not closed shell, PySCF interface refuses
    rep = generate_dataset([good, odd], WATER, tmp_path / "d", progress=False, log=lambda m: None)
    assert rep.written == [0] and rep.failed == [1]
    assert not (tmp_path / "d" / "frame.000001").exists()
    rec = json.loads((tmp_path / "d" / "failed.jsonl").read_text().splitlines()[0])
    assert rec["index"] == 1 and ("spin" in rec["error"].lower() or "closed" in rec["error"].lower())
    # a rerun leaves the failed structure out; retry_failed computes it again (and it fails again)
    rep = generate_dataset([good, odd], WATER, tmp_path / "d", progress=False, log=lambda m: None)
    assert rep.skipped == [0] and rep.left_out == [1] and rep.failed == [] and rep.written == []
    rep = generate_dataset([good, odd], WATER, tmp_path / "d", progress=False, log=lambda m: None, retry_failed=True)
    assert rep.left_out == [] and rep.failed == [1]


def test_cli_data_pyscf(tmp_path, capsys):
    structures = tmp_path / "w.extxyz"
    write(structures, _waters(2))
    settings = tmp_path / "s.yaml"
    settings.write_text("kind: molecular\nxc: pbe\nbasis: sto-3g\npseudo: null\ngrids_level: 1\n")
    assert cli_main(["data", "pyscf", str(structures), "--settings", str(settings), "--out", str(tmp_path / "d"),
                     "--no-progress"]) == 0
    assert "2 frames written" in capsys.readouterr().out
    assert len(frame_paths(tmp_path / "d")) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: molecular\nbasis: sto-3g\nfunctional: pbe\n")
    assert cli_main(["data", "pyscf", str(structures), "--settings", str(bad), "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'functional'" in err


def test_indices_compute_only_those_frames_under_their_own_numbers(tmp_path):
    structures = _waters(3)
    out = tmp_path / "water"
    rep = generate_dataset(structures, WATER, out, progress=False, indices=[2])
    assert rep.written == [2] and rep.skipped == []
    assert [p.name for p in frame_paths(out)] == ["frame.000002"]
    fr = read_frame(out / "frame.000002")
    assert np.allclose(fr.atoms.positions, structures[2].positions, atol=1e-10)
    rep = generate_dataset(structures, WATER, out, progress=False, indices=[0, 2])  # 2 is there already
    assert rep.written == [0] and rep.skipped == [2]
    with pytest.raises(SettingsError, match="outside the 3 structures"):
        generate_dataset(structures, WATER, out, progress=False, indices=[3])


def test_a_crystal_whose_gap_closed_is_not_retried(monkeypatch):
    """An unconverged periodic SCF with the HOMO-LUMO gap closed on the mesh fails at once with
    a message that says so; with a gap, damping and a level shift are tried in turn."""
    import ase_slem.io.generate as gen
    import ase_slem.io.pyscf as ps

    calls = []

    def fake(gap):
        def run(atoms, *args, **kwargs):
            calls.append((kwargs.get("scf_options"), kwargs.get("smearing")))
            return type("F", (), {"results": {"converged": False, "gap": gap}, "settings": {}})()
        return run

    settings = gen.load_settings({
        "kind": "periodic", "xc": "pbe", "basis": "gth-szv", "pseudo": "gth-pbe", "kmesh": [1, 1, 1]})
    monkeypatch.setattr(ps, "periodic_operators", fake(0.0))
    with pytest.raises(RuntimeError, match="gap closed on the k-mesh"):
        gen.run_frame(bulk("Si"), settings)
    assert len(calls) == 1
    calls.clear()
    monkeypatch.setattr(ps, "periodic_operators", fake(0.3))
    with pytest.raises(RuntimeError, match="tried plain, damped"):
        gen.run_frame(bulk("Si"), settings)
    assert len(calls) == len(gen._scf_attempts())
    # with smearing a closed gap is what the occupations are for: retried, and the width reaches PySCF
    calls.clear()
    smeared = gen.load_settings({"kind": "periodic", "xc": "pbe", "basis": "gth-szv", "pseudo": "gth-pbe",
                                 "kmesh": [1, 1, 1], "smearing": 0.05})
    monkeypatch.setattr(ps, "periodic_operators", fake(0.0))
    with pytest.raises(RuntimeError, match="tried plain, damped"):
        gen.run_frame(bulk("Si"), smeared)
    assert len(calls) == len(gen._scf_attempts()) and all(w == 0.05 for _, w in calls)
