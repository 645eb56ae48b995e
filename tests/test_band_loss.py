"""The band-energy term of the training loss: the differentiable Bloch sum equals
RealSpaceOperator.bloch, exact blocks give zero band error, its gradient matches finite
differences, and training with it (also fine-tuning from a checkpoint) lowers the band error.
The coupling term: zero for exact blocks, it sees how a perturbation mixes the DFT states
(which the energies see only to second order), and its gradient is right."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from ase_slem.train.band_loss import (band_errors, band_reference, band_terms, bloch_blocks, generalized_eigvalsh,
                                     random_kpoints)
from ase_slem.train.config import ConfigError, config_from_dict
from ase_slem.train.data import make_sample
from ase_slem.train.loop import train

from _train_helpers import quiet, sk_silicon_frames, tiny_config

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def frames():
    out = sk_silicon_frames(5, seed=3)
    for fr in out:
        fr.results["nelectron"] = 4.0 * len(fr.atoms)  # sp3 valence of silicon
    return out


def sample_of(frame, r=3.0):
    s = make_sample(frame, "f", ["Si"], 4, r, r, ["hamiltonian", "overlap"], torch.float64)
    assert s.uncovered["hamiltonian"] == 0.0  # every stored block is in the sample
    return s


def assert_gradient_matches_differences(f, on, bd, seed: int) -> None:
    """At randomly perturbed blocks, the autograd directional derivative of the scalar f(onsite,
    bonds) equals central differences (and f is not trivially zero there)."""
    g = torch.Generator().manual_seed(seed)
    on_p = (on + 0.05 * torch.randn(on.shape, generator=g, dtype=on.dtype)).requires_grad_(True)
    bd_p = (bd + 0.05 * torch.randn(bd.shape, generator=g, dtype=bd.dtype)).requires_grad_(True)
    val = f(on_p, bd_p)
    assert float(val.detach()) > 1e-3
    val.backward()
    d_on = torch.randn(on.shape, generator=g, dtype=on.dtype)
    d_bd = torch.randn(bd.shape, generator=g, dtype=bd.dtype)
    analytic = float((on_p.grad * d_on).sum() + (bd_p.grad * d_bd).sum())
    h = 1e-6
    with torch.no_grad():
        numeric = float(f(on_p + h * d_on, bd_p + h * d_bd) - f(on_p - h * d_on, bd_p - h * d_bd)) / (2 * h)
    assert abs(analytic - numeric) < 1e-5 * max(1.0, abs(numeric))


def test_bloch_of_padded_blocks_equals_the_operator_bloch_sum(frames):
    fr = frames[0]
    s = sample_of(fr)
    k = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 3))
    on, bd = s.targets["hamiltonian"]
    orbitals = torch.arange(len(fr.atoms) * 4)
    got = bloch_blocks(on, bd, s.bond_i, s.bond_j, s.bond_shift, torch.as_tensor(k), orbitals)
    want = fr.operators["hamiltonian"].bloch(k)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    np.testing.assert_allclose(got.numpy(), np.conj(np.swapaxes(got.numpy(), 1, 2)), atol=1e-14)


def test_generalized_eigenvalues_match_scipy(frames):
    import scipy.linalg as sl

    fr = frames[1]
    k = np.array([[0.1, 0.2, -0.3]])
    h, s = fr.operators["hamiltonian"].bloch(k)[0], fr.operators["overlap"].bloch(k)[0]
    got = generalized_eigvalsh(torch.as_tensor(h)[None], torch.as_tensor(s)[None])[0].numpy()
    np.testing.assert_allclose(got, sl.eigh(h, s, eigvals_only=True), atol=1e-10)


def test_exact_blocks_have_no_band_error_and_the_gradient_is_right(frames):
    fr = frames[2]
    s = sample_of(fr)
    mask = torch.ones(1, 4, dtype=torch.bool)
    ref = band_reference(fr, mask, s.species, extra=4)
    assert ref.n_bands == 2 * len(fr.atoms) + 4
    k = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 3))
    on, bd = s.targets["hamiltonian"]
    err = band_errors(ref, on, bd, s.bond_i, s.bond_j, s.bond_shift, k)
    assert float(err.max()) < 1e-9
    # perturbed blocks: autograd directional derivative against central differences
    f = lambda a, b: band_errors(ref, a, b, s.bond_i, s.bond_j, s.bond_shift, k).mean()  # noqa: E731
    assert_gradient_matches_differences(f, on, bd, seed=0)


def test_a_frame_without_electron_count_is_named(frames, tmp_path):
    bad = sk_silicon_frames(5, seed=3)  # no results["nelectron"]
    cfg = config_from_dict(tiny_config(tmp_path / "r", train={"steps": 2, "band_weight": 1.0}))
    with pytest.raises(Exception, match="electron count"):
        train(cfg, frames=bad, log=quiet)


def rows(path, split):
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def test_training_with_the_band_term_and_fine_tuning_from_a_checkpoint(frames, tmp_path):
    base = config_from_dict(tiny_config(tmp_path / "base", train={"steps": 20, "lr": 0.02, "eval_every": 10}))
    res = train(base, frames=frames, log=quiet)
    assert "bands" not in res.validation

    over = {"steps": 30, "lr": 0.01, "eval_every": 10, "band_weight": 1.0, "band_kpoints": 2,
            "init_from": str(res.checkpoint), "warmup_steps": 0}
    tuned = train(config_from_dict(tiny_config(tmp_path / "tuned", train=over)), frames=frames, log=quiet)
    val = rows(tuned.metrics_csv, "val")
    band = [float(r["mae bands all [meV]"]) for r in val]
    tr = [float(r["mae bands all [meV]"]) for r in rows(tuned.metrics_csv, "train")]
    assert len(tr) == 30 and all(np.isfinite(tr))
    assert band[-1] < band[0]
    assert tuned.validation["bands"]["unit"] == "meV"
    from ase_slem.train.checkpoint import load_checkpoint
    assert load_checkpoint(tuned.checkpoint)["dataset"]["split"] == load_checkpoint(res.checkpoint)["dataset"]["split"]
    # fine-tuning starts where the first run ended, not from fresh weights
    first = lambda path: sum(float(rows(path, "train")[0][f"loss {op}"]) for op in ("hamiltonian", "overlap"))  # noqa: E731
    assert first(tuned.metrics_csv) < 0.3 * first(res.metrics_csv)

    wrong = dict(over, init_from=str(res.checkpoint))
    cfg = tiny_config(tmp_path / "wrong", train=wrong, model={"channels": 3})
    with pytest.raises(ConfigError, match="model.channels"):
        train(config_from_dict(cfg), frames=frames, log=quiet)
    missing = dict(over, init_from=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="does not exist"):
        train(config_from_dict(tiny_config(tmp_path / "m", train=missing)), frames=frames, log=quiet)


def test_molecules_use_gamma_and_exact_blocks_give_the_pyscf_orbital_energies():
    from _train_helpers import water_frames

    fr = water_frames(1, seed=4)[0]
    s = make_sample(fr, "w", ["H", "O"], 5, 4.0, 4.0, ["hamiltonian", "overlap"], torch.float64)
    counts = torch.tensor([1, 5])  # sto-3g: H 1s, O 1s2s2p
    mask = torch.arange(5)[None, :] < counts[:, None]
    ref = band_reference(fr, mask, s.species, extra=2)
    assert not ref.periodic and ref.n_bands == 5 + 2 and ref.orbitals.numel() == 7
    on, bd = s.targets["hamiltonian"]
    k = np.zeros((1, 3))
    assert float(band_errors(ref, on, bd, s.bond_i, s.bond_j, s.bond_shift, k).max()) < 1e-9
    shifted = band_errors(ref, on + 0.01 * torch.eye(5, dtype=on.dtype), bd, s.bond_i, s.bond_j, s.bond_shift, k)
    assert float(shifted.min()) > 1e-4  # a change of the onsite energies is seen


def test_band_skip_leaves_the_core_level_out():
    """band_skip = 1 on water compares levels 1 .. 6 only: an error on the O 1s onsite element
    alone, which moves the core level most, barely registers; a bad skip is refused."""
    from _train_helpers import water_frames

    fr = water_frames(1, seed=4)[0]
    s = make_sample(fr, "w", ["H", "O"], 5, 4.0, 4.0, ["hamiltonian", "overlap"], torch.float64)
    mask = torch.arange(5)[None, :] < torch.tensor([1, 5])[:, None]
    full = band_reference(fr, mask, s.species, extra=2)
    core_out = band_reference(fr, mask, s.species, extra=2, skip=1)
    on, bd = s.targets["hamiltonian"]
    o = int(torch.nonzero(s.species == 1)[0])
    bump = torch.zeros_like(on)
    bump[o, 0, 0] = 1.0  # 1 eV on the O 1s onsite element
    k = np.zeros((1, 3))
    e_full = band_errors(full, on + bump, bd, s.bond_i, s.bond_j, s.bond_shift, k)
    e_skip = band_errors(core_out, on + bump, bd, s.bond_i, s.bond_j, s.bond_shift, k)
    assert e_full.shape == (1, 7) and e_skip.shape == (1, 6)
    assert torch.allclose(e_skip, e_full[:, 1:])
    assert float(e_full[0, 0]) > 0.5 and float(e_skip.max()) < 0.1 * float(e_full[0, 0])
    with pytest.raises(ValueError, match="cannot leave out the lowest 7"):
        band_reference(fr, mask, s.species, extra=2, skip=7)


def test_coupling_term_sees_mixing_of_the_dft_states(frames):
    """<psi_a|H|psi_b> of the DFT states vanishes for exact blocks; an onsite change with zero
    expectation in states a and b but coupling eps between them moves their energies at second
    order only, while the coupling term reads eps; the gradient matches central differences."""
    import scipy.linalg as sl

    fr = frames[2]
    s = sample_of(fr)
    mask = torch.ones(1, 4, dtype=torch.bool)
    ref = band_reference(fr, mask, s.species, extra=4)
    k = np.zeros((1, 3))  # Gamma: real states, a perturbation that is a sum of real blocks
    on, bd = s.targets["hamiltonian"]
    err, mix = band_terms(ref, on, bd, s.bond_i, s.bond_j, s.bond_shift, k, mixing=True)
    nb = ref.n_bands
    assert err.shape == (1, nb) and mix.ndim == 1 and 0 < mix.numel() <= nb * (nb - 1) // 2
    assert float(mix.max()) < 1e-9
    _, none = band_terms(ref, on, bd, s.bond_i, s.bond_j, s.bond_shift, k)
    assert none is None

    # an onsite change X of atom 0 with <a|X|a> = <b|X|b> = 0 and <a|X|b> = 1 for two DFT states
    # at Gamma: their energies move at second order only, their coupling by eps
    h0 = fr.operators["hamiltonian"].bloch(k)[0].real
    s0 = fr.operators["overlap"].bloch(k)[0].real
    e, c = sl.eigh(h0, s0)
    gap = np.abs(e[:nb, None] - e[None, :nb])
    a, b = next((i, j) for i in range(nb) for j in range(i + 1, nb) if gap[i, j] > 0.5)
    ua, ub = c[:4, a], c[:4, b]
    basis = [np.outer(np.eye(4)[p], np.eye(4)[q]) + np.outer(np.eye(4)[q], np.eye(4)[p]) for p in range(4) for q in range(p, 4)]
    lhs = np.array([[x @ y @ z for y in basis] for x, z in ((ua, ua), (ub, ub), (ua, ub))])
    coef = np.linalg.lstsq(lhs, np.array([0.0, 0.0, 1.0]), rcond=None)[0]
    x = sum(w * y for w, y in zip(coef, basis))
    keep = np.triu(gap > 1e-3, k=1)
    pair = int(np.cumsum(keep.ravel())[a * nb + b]) - 1
    out = {}
    for eps in (1e-3, 5e-4):
        bump = torch.zeros_like(on)
        bump[0, :4, :4] = torch.as_tensor(eps * x)
        err, mix = band_terms(ref, on + bump, bd, s.bond_i, s.bond_j, s.bond_shift, k, mixing=True)
        assert float(mix[pair]) == pytest.approx(eps, rel=1e-6)
        out[eps] = (float(err[0, a]), float(err[0, b]))
    for big, small in zip(out[1e-3], out[5e-4]):  # halving the change quarters these errors
        assert small == pytest.approx(big / 4, rel=0.02)

    # gradient of the coupling term against central differences
    kk = np.random.default_rng(2).uniform(-0.5, 0.5, (2, 3))
    f = lambda x, y: band_terms(ref, x, y, s.bond_i, s.bond_j, s.bond_shift, kk, mixing=True)[1].mean()  # noqa: E731
    assert_gradient_matches_differences(f, on, bd, seed=1)


def test_training_with_the_coupling_term_and_its_config_errors(frames, tmp_path):
    over = {"steps": 6, "lr": 0.01, "eval_every": 3, "band_weight": 1.0, "band_kpoints": 2, "band_mixing_weight": 1.0}
    res = train(config_from_dict(tiny_config(tmp_path / "mix", train=over)), frames=frames, log=quiet)
    tr = rows(res.metrics_csv, "train")
    assert len(tr) == 6 and all(np.isfinite(float(r["loss"])) for r in tr)
    # the coupling adds to the loss: the same first step without it has a smaller loss
    plain = train(config_from_dict(tiny_config(tmp_path / "plain", train=dict(over, steps=1, band_mixing_weight=0.0))),
                  frames=frames, log=quiet)
    assert float(tr[0]["loss"]) > float(rows(plain.metrics_csv, "train")[0]["loss"])
    with pytest.raises(ConfigError, match="band_mixing_weight > 0 needs the band term"):
        config_from_dict(tiny_config(tmp_path / "bad", train={"band_mixing_weight": 1.0}))
    with pytest.raises(ConfigError, match="band_mixing_weight must be >= 0"):
        config_from_dict(tiny_config(tmp_path / "bad", train={"band_weight": 1.0, "band_mixing_weight": -1.0}))


def test_band_gamma_puts_gamma_among_the_kpoints_and_reaches_the_loss(frames, tmp_path):
    plain = random_kpoints(4, True, np.random.default_rng(7))
    with_gamma = random_kpoints(4, True, np.random.default_rng(7), gamma=True)
    assert np.all(with_gamma[0] == 0.0) and np.all(plain[0] != 0.0)
    assert np.array_equal(with_gamma[1:], plain[1:])
    assert np.array_equal(random_kpoints(4, False, np.random.default_rng(7), gamma=True), np.zeros((1, 3)))
    # wired through the config: the same first step sees different band errors
    over = {"steps": 1, "lr": 0.01, "eval_every": 1, "band_weight": 1.0, "band_kpoints": 1}
    losses = [float(rows(train(config_from_dict(tiny_config(tmp_path / str(g), train=dict(over, band_gamma=g))),
                               frames=frames, log=quiet).metrics_csv, "train")[0]["loss"]) for g in (False, True)]
    assert abs(losses[0] - losses[1]) > 1e-6 * abs(losses[0])
