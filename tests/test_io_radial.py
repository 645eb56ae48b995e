"""Radial functions from ABACUS .orb and SIESTA .ion files, checked against the codes' own overlaps."""
from pathlib import Path
import shutil

import numpy as np
import pytest
from ase.units import Bohr

from ase_slem.io import radial
from ase_slem.io.radial import RadialFileError, radial_basis_from_files, read_abacus_orb, read_siesta_ion

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
pytestmark = pytest.mark.skipif(not EXTERNAL.is_dir(), reason=f"external DFT data folder {EXTERNAL} is absent")

MO_ORB = EXTERNAL / "abacus-mos2-monolayer/orbitals/Mo_DZP/Mo_gga_8au_100Ry_4s2p2d1f.orb"
S_ORB = EXTERNAL / "abacus-mos2-monolayer/orbitals/S_DZP/S_gga_8au_100Ry_2s2p1d.orb"
CE_ORB = EXTERNAL / "abacus-ce-fcc-f/PP_ORB/Ce_gga_8au_80Ry_4s2p2d2f.Orb"
SI_ION = EXTERNAL / "siesta-si-deeph/siesta_data/Si.ion"


@pytest.mark.parametrize(
    "path, element, shells",
    [(MO_ORB, "Mo", "4s2p2d1f"), (S_ORB, "S", "2s2p1d"), (CE_ORB, "Ce", "4s2p2d2f")],
)
def test_abacus_orb_shells_units_and_normalization(path, element, shells):
    from ase_slem.basis import parse_shells

    el, fns = read_abacus_orb(path)
    assert el == element
    assert tuple(f.l for f in fns) == parse_shells(shells)  # the shells the file name announces
    for f in fns:
        assert f.cutoff == pytest.approx(8 * Bohr)  # "Radius Cutoff(a.u.) 8"
        assert f.r[1] - f.r[0] == pytest.approx(0.01 * Bohr)
        assert f.norm() == pytest.approx(1.0, abs=1e-6)  # integral R^2 r^2 dr in Å units
        assert f(np.array([f.cutoff + 0.1]))[0] == 0.0
        if f.l > 0:
            assert f.values[0] == 0.0  # R ~ r^l near the origin


def test_siesta_ion_multiplies_back_r_to_the_l():
    label, fns = read_siesta_ion(SI_ION)
    assert label == "Si"
    assert [(f.l, f.n, f.zeta) for f in fns] == [(0, 3, 1), (0, 3, 2), (1, 3, 1), (1, 3, 2), (2, 3, 1)]
    for f in fns:
        assert f.norm() == pytest.approx(1.0, abs=1e-6)
    # the file stores R / r^l: without the factor the p and d norms would be far from 1
    p = fns[2]
    r_bohr = p.r / Bohr
    stored = p.values * Bohr**1.5 / np.maximum(r_bohr, 1e-30)  # the column as written in the file
    assert np.trapezoid(stored**2 * r_bohr**2, r_bohr) < 0.5
    assert fns[0].cutoff == pytest.approx(5.392327147687009 * Bohr)


def two_center(f1, f2, l2, dist, n=300):
    """<R1 Y_00 (r) | R2 Y_{l2, sigma}(r - d z_hat)> for l2 in (0, 1) by cylindrical quadrature (Å)."""
    rc = max(f1.cutoff, f2.cutoff)
    rho = np.linspace(0, rc, n)[:, None]
    z = np.linspace(-rc, dist + rc, 2 * n)[None, :]
    r1, r2 = np.hypot(rho, z), np.hypot(rho, z - dist)
    ang2 = np.sqrt(1 / (4 * np.pi)) if l2 == 0 else np.sqrt(3 / (4 * np.pi)) * (z - dist) / np.maximum(r2, 1e-12)
    integrand = f1(r1) * f2(r2) * ang2 / np.sqrt(4 * np.pi) * 2 * np.pi * rho
    return np.trapezoid(np.trapezoid(integrand, z[0], axis=1), rho[:, 0])


def nearest_block(atoms, S, i, j):
    best = None
    for a, b, R, blk in S.iter_blocks():
        if (a, b) == (i, j):
            d = atoms.positions[j] + np.asarray(R) @ atoms.cell[:] - atoms.positions[i]
            if best is None or np.linalg.norm(d) < np.linalg.norm(best[0]):
                best = (d, blk)
    return best


def test_radial_functions_reproduce_siesta_overlap():
    """s-s and s-p(sigma) overlaps integrated from Si.ion agree with the HSX overlap."""
    from ase_slem.io import siesta

    folder = EXTERNAL / "siesta-si-deeph/siesta_data"
    atoms, ops = siesta.read(folder)
    fns = siesta.read_radial_basis(folder).functions["Si"]
    d, blk = nearest_block(atoms, ops["overlap"], 0, 1)
    dist, u = np.linalg.norm(d), d / np.linalg.norm(d)
    err_ss = abs(two_center(fns[0], fns[0], 0, dist) - blk[0, 0])
    err_sp = abs(two_center(fns[0], fns[2], 1, dist) - blk[0, 2:5] @ u)  # our p order is (x, y, z)
    print(f"SIESTA Si nearest-neighbour overlap from Si.ion: |dS_ss| = {err_ss:.2e}, |dS_sp| = {err_sp:.2e}")
    assert err_ss < 2e-5 and err_sp < 2e-5
    assert abs(blk[0, 2:5] @ u) > 0.3  # a real test: the p-s overlap is large


def test_radial_functions_reproduce_abacus_overlap():
    """Mo s with S s and S p from the .orb files agree with data-SR-sparse (MoS2)."""
    from ase_slem.io import abacus

    folder = EXTERNAL / "abacus-mos2-monolayer"
    atoms, ops = abacus.read(folder)
    rb = abacus.read_radial_basis(folder)
    assert rb.basis().as_strings() == {"Mo": "4s2p2d1f", "S": "2s2p1d"}
    mo, s = rb.functions["Mo"], rb.functions["S"]
    d, blk = nearest_block(atoms, ops["overlap"], 0, 1)
    dist, u = np.linalg.norm(d), d / np.linalg.norm(d)
    err_ss = abs(two_center(mo[0], s[0], 0, dist) - blk[0, 0])
    err_sp = abs(two_center(mo[0], s[2], 1, dist) - blk[0, 2:5] @ u)
    print(f"ABACUS MoS2 Mo-S overlap from .orb: |dS_ss| = {err_ss:.2e}, |dS_sp| = {err_sp:.2e}")
    assert err_ss < 2e-5 and err_sp < 2e-5
    assert abs(blk[0, 2:5] @ u) > 0.1


def test_radial_basis_from_files_and_interpolation():
    rb = radial_basis_from_files({"Mo": MO_ORB, "S": S_ORB}, source="abacus")
    assert rb.elements == ("Mo", "S")
    assert rb.shells("S") == (0, 0, 1, 1, 2)
    assert rb.cutoff("Mo") == pytest.approx(8 * Bohr)
    f = rb.functions["S"][0]
    mid = 0.5 * (f.r[10] + f.r[11])
    assert f(np.array([f.r[10]]))[0] == pytest.approx(f.values[10])
    assert min(f.values[10], f.values[11]) - 1e-9 <= f(np.array([mid]))[0] <= max(f.values[10], f.values[11]) + 1e-9
    rb2 = radial_basis_from_files([SI_ION])
    assert rb2.basis().as_strings() == {"Si": "2s2p1d"}


def test_truncated_orb_file_is_named(tmp_path):
    text = MO_ORB.read_text()
    bad = tmp_path / "Mo_trunc.orb"
    bad.write_text(text[: int(len(text) * 0.7)])
    with pytest.raises(RadialFileError, match=r"Mo_trunc\.orb.*(truncated|announces)"):
        read_abacus_orb(bad)


def test_not_an_orb_file(tmp_path):
    bad = tmp_path / "x.orb"
    bad.write_text("hello\n")
    with pytest.raises(RadialFileError, match=r"x\.orb is not an ABACUS \.orb file"):
        read_abacus_orb(bad)


def test_truncated_ion_file_is_named(tmp_path):
    lines = SI_ION.read_text().splitlines()
    cut = next(k for k, ln in enumerate(lines) if "#orbital l, n, z" in ln and " 1  3  2" in ln)
    bad = tmp_path / "Si.ion"
    bad.write_text("\n".join(lines[: cut + 100]))
    with pytest.raises(RadialFileError, match=r"Si\.ion.*truncated"):
        read_siesta_ion(bad)


def test_missing_ion_file_for_a_run(tmp_path):
    from ase_slem.io import siesta
    from ase_slem.io._blocks import ReaderError

    shutil.copy(EXTERNAL / "siesta-si-deeph/siesta_data/Si.HSX", tmp_path / "Si.HSX")
    with pytest.raises(ReaderError, match=r"Si\.ion is missing"):
        siesta.read_radial_basis(tmp_path)
    assert radial.RadialBasis  # public name
