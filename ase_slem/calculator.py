"""SLEMCalculator: an ASE calculator whose results are the predicted operators H, S and D.

    calc = SLEMCalculator("si_pbe_dzvp", kpts=(6, 6, 6))   # shipped model name or a .pt path
    atoms.calc = calc
    H = calc.get_hamiltonian(atoms)          # RealSpaceOperator, eV
    bs = calc.band_structure()               # ase BandStructure along the seekpath path
    ef = calc.get_fermi_level()              # eV, from the kpts mesh

Properties (``implemented_properties``) are ``"hamiltonian"``, ``"overlap"`` and
``"density_matrix"`` (:class:`~ase_slem.operators.RealSpaceOperator`); H and S are computed in
one network pass (D with them if it is asked for first, else by a second pass when it is), and
cached until positions, cell, atomic numbers or pbc change (ASE's ``check_state``).  With
``overlap="exact"`` the overlap is not the network's but the exact two-centre integrals of the
model's Gaussian basis (:mod:`ase_slem.exact_overlap`).  A model trained on H - H0 (a
Hamiltonian baseline, ``ase-slem info`` names it; :mod:`ase_slem.hamiltonian_baseline`) gets H0
added to its prediction: one PySCF Fock build of superposed atoms per structure (molecules).

With ``kpts`` the calculator also speaks ASE's DFT-calculator interface (eigenvalues on the
irreducible k-points, weights, Fermi level, occupations), so ``ase.dft.dos.DOS(calc)`` works.
Spin-restricted: one spin channel, each band holds 2 electrons.  Energies are eV, k-points
fractional in the reciprocal cell of ``atoms.cell``.

SLEM predicts operators, not total energies: ``get_potential_energy``, forces and stress raise
``PropertyNotImplementedError`` saying so.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .model_file import MAX_EDGES, LoadedModel, check_elements, load_model, predict
from .operators import RealSpaceOperator
from .solvers import band_energies

__all__ = ["SLEMCalculator", "CalculatorInputError", "MIN_DISTANCE"]

MIN_DISTANCE = 0.5  # Å: closer atoms are rejected (the model never saw such structures)
_SMEARING = 0.05  # eV, Gaussian width for Fermi level and occupations of metals


class CalculatorInputError(ValueError):
    """A structure or a setting the calculator cannot work with; the message says what to change."""


class _OnDevice:
    """Calls a TorchScript module on ``device`` and hands the outputs back on the CPU."""

    def __init__(self, module, device: str):
        self.module = module.to(device)
        self.device = device

    def __call__(self, *args):
        out = self.module(*(a.to(self.device) for a in args))
        return {k: v.cpu() for k, v in out.items()}


def _prepare_model(model: LoadedModel, device: str, dtype: Optional[str]) -> LoadedModel:
    """The model moved to ``device`` and cast to ``dtype`` (None: the model's own)."""
    import torch

    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise CalculatorInputError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'), not {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CalculatorInputError(
            f"device={device!r} but CUDA is not available to torch {torch.__version__} on this machine "
            "(no GPU, or a CPU-only torch build); use device='cpu'"
        )
    if dtype is not None and dtype not in ("float32", "float64"):
        raise CalculatorInputError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
    meta = dict(model.metadata)
    module = model.module
    if dtype is not None and dtype != meta["dtype"]:
        module = module.to({"float32": torch.float32, "float64": torch.float64}[dtype])
        meta["dtype"] = dtype
    if device != "cpu":
        module = _OnDevice(module, device)
    return LoadedModel(model.path, module, meta)


def _resolve_kpts(kpts) -> Optional[dict]:
    """``kpts`` parameter -> {"mesh": ... or "density": ..., "gamma": bool} or None."""
    if kpts is None:
        return None
    if isinstance(kpts, dict):
        unknown = set(kpts) - {"size", "density", "gamma"}
        if unknown or ("size" in kpts) == ("density" in kpts):
            raise CalculatorInputError(
                "kpts as a dict takes exactly one of 'size' (n1, n2, n3) or 'density' (k-points per Å^-1), "
                f"and optionally 'gamma' (True for a Gamma-centred mesh); got {sorted(kpts)}"
            )
        return {"mesh": kpts.get("size"), "density": kpts.get("density"), "gamma": bool(kpts.get("gamma", False))}
    if isinstance(kpts, (int, np.integer)):
        return {"mesh": int(kpts), "density": None, "gamma": False}
    arr = np.asarray(kpts)
    if arr.shape == (3,) and np.all(np.equal(np.mod(arr, 1), 0)):
        return {"mesh": tuple(int(x) for x in arr), "density": None, "gamma": False}
    raise CalculatorInputError(
        f"kpts must be (n1, n2, n3), one integer, or {{'density': d}} / {{'size': (n1, n2, n3), 'gamma': True}}; "
        f"got {kpts!r}. For bands at arbitrary k-points use calc.get_band_energies(kpts)"
    )


def check_structure(atoms: Atoms, model: LoadedModel, min_distance: float = MIN_DISTANCE) -> None:
    """Raise :class:`CalculatorInputError` / :class:`ModelFileError` for a structure ``model``
    cannot be used on: no atoms, non-finite positions, unknown elements, molecule vs crystal
    mismatch, atoms closer than ``min_distance`` Å."""
    from ase.neighborlist import neighbor_list

    if not isinstance(atoms, Atoms):
        raise CalculatorInputError(f"expected an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise CalculatorInputError("the structure is empty (no atoms): give the calculator an Atoms with atoms in it")
    if not np.all(np.isfinite(atoms.positions)):
        bad = int(np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))[0])
        raise CalculatorInputError(
            f"atom {bad} has a non-finite position {atoms.positions[bad].tolist()} (NaN or inf): fix the structure"
        )
    check_elements(model, atoms.get_chemical_symbols())
    periodic = bool(np.any(atoms.pbc))
    name = model.metadata.get("name", model.path.stem)
    if model.metadata.get("periodic") is True and not periodic:
        raise CalculatorInputError(
            f"the model {name!r} was trained on crystals (periodic), but the structure is a molecule "
            "(atoms.pbc all False): use a molecular model, or give the structure a cell and pbc=True"
        )
    if model.metadata.get("periodic") is False and periodic:
        raise CalculatorInputError(
            f"the model {name!r} was trained on molecules, but the structure is periodic (pbc="
            f"{atoms.pbc.tolist()}): use a periodic model, or set atoms.pbc = False for an isolated molecule"
        )
    if periodic:
        lengths = np.linalg.norm(atoms.cell[:], axis=1)
        if np.any(lengths[atoms.pbc] < 1e-8) or atoms.cell.rank < 3:
            raise CalculatorInputError(
                f"the structure is periodic (pbc={atoms.pbc.tolist()}) but its cell is missing or degenerate: "
                "set atoms.cell (three lattice vectors, Å)"
            )
    i, j, d = neighbor_list("ijd", atoms, min_distance)  # pairs closer than min_distance
    if len(d):
        k = int(np.argmin(d))
        raise CalculatorInputError(
            f"atoms {i[k]} and {j[k]} are {d[k]:.3g} Å apart (closer than {min_distance} Å): overlapping "
            "atoms, duplicated positions or a wrong unit (positions must be in Å); fix the structure"
        )


def valence_electrons(metadata: dict) -> Optional[dict]:
    """Electrons per element the model's DFT treated explicitly, ``{symbol: n}``, or None.

    Taken from ``metadata["valence_electrons"]`` (or ``dft_settings["valence_electrons"]``) when
    present; for PySCF settings from the pseudopotential named there (``"gth-pbe"``: Si 4) or, all
    electron (``pseudo`` None), the atomic number.
    """
    from ase.data import atomic_numbers

    species = list(metadata["species"])
    settings = metadata.get("dft_settings") or {}
    for source in (metadata.get("valence_electrons"), settings.get("valence_electrons")):
        if isinstance(source, dict) and all(s in source for s in species):
            return {s: float(source[s]) for s in species}
    if settings.get("code") != "pyscf":
        return None
    pseudo = settings.get("pseudo")
    if pseudo is None:
        return {s: float(atomic_numbers[s]) for s in species}
    if not isinstance(pseudo, str):
        return None
    try:
        from pyscf.pbc.gto.pseudo import load as load_pseudo

        return {s: float(sum(load_pseudo(pseudo, s)[0])) for s in species}
    except Exception:  # noqa: BLE001 - an unknown pseudopotential name: no count from metadata
        return None


class SLEMCalculator(Calculator):
    """ASE calculator predicting the Kohn–Sham Hamiltonian, overlap and density matrix with SLEM.

    Parameters
    ----------
    model:
        a shipped model's name (``"si_pbe_dzvp"`` -> ``models/si_pbe_dzvp.pt``, also searched in
        ``$ASE_SLEM_MODELS``) or a path to a model file.
    device:
        ``"cpu"`` or ``"cuda"``.
    dtype:
        ``"float32"`` or ``"float64"`` for the network (default: the model's own).  Casting a
        float32 model to float64 casts its weights, but constants baked into the TorchScript at
        export keep float32 precision (measured: rotated-structure bands agree to ~2e-9 eV, not
        1e-15 as with a model exported in float64).
    kpts:
        k-point mesh for the DFT interface (Fermi level, eigenvalues, DOS): ``(n1, n2, n3)``
        (Monkhorst–Pack), ``{"size": (n1, n2, n3), "gamma": True}`` or ``{"density": d}`` (points
        per Å^-1); reduced by symmetry (spglib).  Molecules always use Gamma alone.
    overlap:
        ``"model"`` (the network's overlap), ``"exact"`` (analytic two-centre integrals of the
        model's Gaussian basis) or ``"auto"`` (default): what the model file recommends
        (metadata ``recommended_overlap``, set at export when the predicted overlap is not
        accurate enough for the basis -- e.g. ``si_pbe_dzvp``, whose diffuse Gaussians make
        S(k) nearly singular in the crystal), else ``"model"``.
    max_edges:
        largest graph (edges) evaluated at once (default 20,000, about 100 silicon atoms);
        bigger structures are predicted in pieces with the same result and bounded memory.
    overlap_cutoff:
        with ``overlap="exact"``: ``None`` (default) keeps every pair the basis reaches;
        ``"r_bond"`` (the model's bond cutoff, the range of its H) or a distance in Å drops the
        pairs beyond it -- for big cells in diffuse bases (gth-dzvp silicon: five times fewer
        blocks at 10 Å, same bands; see its model card).
    n_electrons:
        electrons per cell; default: valence counts from the model's metadata, else Tr(D S) of the
        predicted density matrix (rounded to an integer), else an error asks for it.
    """

    implemented_properties = ["hamiltonian", "overlap", "density_matrix"]
    default_parameters: dict[str, Any] = {
        "model": "si_pbe_dzvp", "device": "cpu", "dtype": None, "kpts": None, "overlap": "auto",
        "max_edges": MAX_EDGES, "n_electrons": None, "overlap_cutoff": None,
    }
    ignored_changes = {"initial_charges", "initial_magmoms"}

    def __init__(self, model: str = "si_pbe_dzvp", *, device: str = "cpu", dtype: Optional[str] = None,
                 kpts=None, overlap: str = "auto", max_edges: int = MAX_EDGES,
                 n_electrons: Optional[float] = None, overlap_cutoff=None, atoms: Optional[Atoms] = None,
                 **kwargs):
        unknown = set(kwargs) - {"label", "directory"}
        if unknown:
            raise TypeError(f"SLEMCalculator got unknown parameter(s) {sorted(unknown)}; known: "
                            f"{sorted(self.default_parameters)}")
        if overlap not in ("model", "exact", "auto"):
            raise CalculatorInputError(f"overlap must be 'model', 'exact' or 'auto', not {overlap!r}")
        if int(max_edges) < 1:
            raise CalculatorInputError(f"max_edges must be a positive number of graph edges, got {max_edges}")
        if not (overlap_cutoff is None or overlap_cutoff == "r_bond"
                or (isinstance(overlap_cutoff, (int, float)) and overlap_cutoff > 0)):
            raise CalculatorInputError(f"overlap_cutoff must be None, 'r_bond' or a positive distance in Å, "
                                       f"got {overlap_cutoff!r}")
        if n_electrons is not None and not (np.isfinite(n_electrons) and n_electrons > 0):
            raise CalculatorInputError(f"n_electrons must be a positive number, got {n_electrons!r}")
        self._kpts_spec = _resolve_kpts(kpts)
        self.model = _prepare_model(load_model(model), device, dtype)
        if overlap == "auto":
            overlap = self.model.metadata.get("recommended_overlap", "model")
            if overlap == "model" and "overlap" not in self.model.operators:
                overlap = "exact"
        if overlap == "exact":
            self._radial_basis("overlap='exact'")  # fail now, not at the first calculation
        if overlap == "model" and "overlap" not in self.model.operators:
            raise CalculatorInputError(
                f"the model predicts {', '.join(self.model.operators)} but no overlap: use overlap='exact'"
            )
        self.prediction_count = 0  # network evaluations so far (caching is visible in tests)
        self._attached: Optional[Atoms] = None
        self._kcache: dict[str, Any] = {}
        super().__init__(atoms=atoms, model=str(model), device=device, dtype=dtype, kpts=kpts, overlap=overlap,
                         max_edges=int(max_edges), n_electrons=n_electrons, overlap_cutoff=overlap_cutoff,
                         **kwargs)
        self._ready = True

    # ------------------------------------------------------------------------------------------
    # ASE machinery
    # ------------------------------------------------------------------------------------------
    def set(self, **kwargs):
        changed = super().set(**kwargs)
        if "kpts" in changed:
            self._kpts_spec = _resolve_kpts(changed["kpts"])
            self._kcache = {}
        if "n_electrons" in changed:
            self._kcache = {}
        if changed.keys() & {"model", "device", "dtype", "overlap", "max_edges", "overlap_cutoff"} and \
                getattr(self, "_ready", False):
            raise CalculatorInputError("model, device, dtype, overlap, overlap_cutoff and max_edges are fixed: "
                                       "make a new SLEMCalculator")
        return changed

    def set_atoms(self, atoms: Atoms) -> None:
        """Called by ``atoms.calc = calc``: methods without an ``atoms`` argument use these atoms
        (as they are at the time of the call; moving them triggers a new prediction)."""
        self._attached = atoms

    def _structure(self, atoms: Optional[Atoms] = None) -> Atoms:
        for candidate in (atoms, self._attached, self.atoms):
            if candidate is not None:
                return candidate
        raise CalculatorInputError("no structure: attach the calculator (atoms.calc = calc) or pass the atoms")

    def reset(self):
        super().reset()
        self._kcache = {}

    def calculate(self, atoms: Optional[Atoms] = None, properties=("hamiltonian",), system_changes=all_changes):
        """Predict the operators of ``atoms`` into ``self.results``: H and S together in one network
        pass, and D with them when it is asked for; asked for later, D takes a second pass that
        leaves H and S as they are (bands and DOS of a big cell never hold D, a third of the
        memory of the prediction)."""
        if atoms is None and self.atoms is None:
            raise CalculatorInputError("no structure: attach the calculator (atoms.calc = calc) or pass the atoms")
        try:
            check_structure(atoms if atoms is not None else self.atoms, self.model)
        except ValueError:
            self.atoms = None  # ASE stored the rejected structure; forget it
            raise
        super().calculate(atoms, list(properties), system_changes)
        if system_changes:
            self._kcache = {}
        exact = self.parameters.overlap == "exact"
        wanted = [o for o in self.model.operators if o != "density_matrix" or "density_matrix" in properties]
        ops = [o for o in wanted if o not in self.results and not (o == "overlap" and exact)]
        if ops:
            self.prediction_count += 1
            self.results.update(predict(self.model, self.atoms, operators=ops, max_edges=self.parameters.max_edges))
        if exact and "overlap" not in self.results:
            from .exact_overlap import exact_overlap

            cut = self.parameters.overlap_cutoff
            self.results["overlap"] = exact_overlap(self.atoms, self._radial_basis("overlap='exact'"),
                                                    basis=self.model.basis,
                                                    r_max=self.model.r_bond if cut == "r_bond" else cut)

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(self._not_implemented(name))
        atoms = self._structure(atoms)
        if name == "density_matrix" and "density_matrix" not in self.model.operators:
            raise PropertyNotImplementedError(
                f"the model {self._name!r} predicts {', '.join(self.model.operators)}, not the density matrix; "
                "use a model trained with density_matrix (e.g. the shipped ones)"
            )
        return super().get_property(name, atoms, allow_calculation)

    def _not_implemented(self, name: str) -> str:
        return (f"SLEMCalculator does not compute {name!r}: SLEM predicts the operators H, S and D (electronic "
                "structure), not total energies, forces or stresses. Use get_hamiltonian / get_overlap / "
                "get_density_matrix, get_band_energies, band_structure, get_fermi_level or "
                "get_electron_density; for energies and forces use a DFT code or an ML potential")

    def get_potential_energy(self, atoms=None, force_consistent=False):
        raise PropertyNotImplementedError(self._not_implemented("energy"))

    def get_forces(self, atoms=None):
        raise PropertyNotImplementedError(self._not_implemented("forces"))

    def get_stress(self, atoms=None):
        raise PropertyNotImplementedError(self._not_implemented("stress"))

    # ------------------------------------------------------------------------------------------
    # operators
    # ------------------------------------------------------------------------------------------
    @property
    def _name(self) -> str:
        return str(self.model.metadata.get("name", self.model.path.stem))

    def get_hamiltonian(self, atoms: Optional[Atoms] = None) -> RealSpaceOperator:
        """Predicted Kohn–Sham Hamiltonian H(R), eV."""
        return self.get_property("hamiltonian", atoms)

    def get_overlap(self, atoms: Optional[Atoms] = None) -> RealSpaceOperator:
        """Overlap S(R): the network's, or exact with ``overlap="exact"``."""
        return self.get_property("overlap", atoms)

    def get_density_matrix(self, atoms: Optional[Atoms] = None) -> RealSpaceOperator:
        """Predicted spin-summed density matrix D(R) (Tr(D S) = electrons per cell)."""
        return self.get_property("density_matrix", atoms)

    def _operators(self, atoms: Optional[Atoms] = None) -> tuple[RealSpaceOperator, RealSpaceOperator]:
        return self.get_hamiltonian(atoms), self.get_overlap(atoms)

    def _radial_basis(self, why: str):
        from .orbitals import radial_basis_from_dict

        radial = self.model.metadata["basis"].get("radial")
        if radial is None:
            raise CalculatorInputError(
                f"{why} needs the radial functions of the basis, but the model {self._name!r} carries none "
                f"(basis {self.model.basis.name or 'unnamed'}: only PySCF Gaussian bases are stored)"
            )
        return radial_basis_from_dict(radial)

    # ------------------------------------------------------------------------------------------
    # electrons and k-space
    # ------------------------------------------------------------------------------------------
    def get_number_of_electrons(self, atoms: Optional[Atoms] = None) -> float:
        """Electrons per cell: the ``n_electrons`` parameter, else the valence counts of the
        model's metadata, else Tr(D S) of the predicted density matrix (rounded)."""
        if self.parameters.n_electrons is not None:
            return float(self.parameters.n_electrons)
        atoms = self._structure(atoms)
        counts = valence_electrons(self.model.metadata)
        if counts is not None:
            return float(sum(counts[s] for s in atoms.get_chemical_symbols()))
        if "density_matrix" in self.model.operators:
            n = self.get_density_matrix(atoms).trace_product(self.get_overlap(atoms))
            if abs(n - round(n)) > 0.1:
                warnings.warn(f"Tr(D S) of the predicted density matrix is {n:.4f}, far from an integer; "
                              f"using {round(n)} electrons (pass n_electrons= to set it)", stacklevel=2)
            return float(round(n))
        raise CalculatorInputError(
            f"the number of electrons is unknown: the model {self._name!r} has no valence electron counts in its "
            "metadata and predicts no density matrix. Pass n_electrons= (electrons per cell, valence only for "
            "pseudopotential models, e.g. 4 per Si atom)"
        )

    def _mesh(self):
        from .kmesh import monkhorst_pack

        if not np.any(self.atoms.pbc):
            return monkhorst_pack(self.atoms, 1, shift="gamma")
        spec = self._kpts_spec
        if spec is None:
            raise CalculatorInputError(
                "this needs a k-point mesh: create the calculator with kpts=(n1, n2, n3) or kpts={'density': 3.5}, "
                "or call calc.set(kpts=...)"
            )
        shift = "gamma" if spec["gamma"] else "monkhorst-pack"
        try:
            return monkhorst_pack(self.atoms, spec["mesh"], density=spec["density"], shift=shift)
        except ValueError as err:
            raise CalculatorInputError(f"kpts={self.parameters.kpts!r} does not fit the structure: {err}") from None

    def _kdata(self) -> dict:
        """Eigenvalues on the irreducible mesh, the mesh, electron count and Fermi level (cached)."""
        H, S = self._operators()  # re-predicts (and clears this cache) if the structure changed
        if not self._kcache:
            from .dos import band_gap, fermi_level

            km = self._mesh()
            e = band_energies(H, S, km.kpts)
            n = self.get_number_of_electrons()
            self._kcache = {"mesh": km, "energies": e, "n_electrons": n,
                            "fermi": float(fermi_level(e, km.weights, n, "gaussian", _SMEARING)),
                            "insulator": bool(band_gap(e, n).gap > 0)}
        return self._kcache

    def get_band_energies(self, kpts, atoms: Optional[Atoms] = None) -> np.ndarray:
        """Band energies (nk, nbands), eV, at fractional ``kpts`` (nk, 3) of the structure's cell."""
        H, S = self._operators(atoms)
        return band_energies(H, S, kpts)

    def band_structure(self, path=None, npoints: int = 200, atoms: Optional[Atoms] = None, **kwargs):
        """Bands along ``path`` (default: seekpath's path), an ``ase`` BandStructure referenced to
        the Fermi level (see :func:`ase_slem.bands.band_structure`)."""
        from .bands import band_structure

        H, S = self._operators(atoms)
        return band_structure(H, S, self.atoms, path=path, npoints=npoints,
                              n_electrons=self.get_number_of_electrons(), **kwargs)

    def get_fermi_level(self) -> float:
        """Fermi level (eV) on the ``kpts`` mesh (middle of the gap for insulators)."""
        return self._kdata()["fermi"]

    def get_ibz_k_points(self) -> np.ndarray:
        """Irreducible k-points (nirr, 3), fractional."""
        return self._kdata()["mesh"].kpts.copy()

    def get_k_point_weights(self) -> np.ndarray:
        """Weights of the irreducible k-points (sum 1)."""
        return self._kdata()["mesh"].weights.copy()

    def _bz_order(self) -> np.ndarray:
        """Full-mesh indices in ASE's order: ascending k along each axis, last axis fastest
        (``ase.dft.kpoints.monkhorst_pack(size) + offset``, what ``ase.dft.dos.DOS`` expects)."""
        km = self._kdata()["mesh"]
        key = np.rint(2 * km.full_kpts * km.mesh).astype(np.int64)  # exact integers on the mesh
        return np.lexsort((key[:, 2], key[:, 1], key[:, 0]))

    def get_bz_k_points(self) -> np.ndarray:
        """All mesh points (nk, 3), fractional in (-1/2, 1/2], in ASE's order (see _bz_order)."""
        return self._kdata()["mesh"].full_kpts[self._bz_order()].copy()

    def get_bz_to_ibz_map(self) -> np.ndarray:
        """For each point of :meth:`get_bz_k_points`, the index of its irreducible point."""
        return self._kdata()["mesh"].full_to_irr[self._bz_order()].copy()

    def get_number_of_spins(self) -> int:
        return 1

    def get_spin_polarized(self) -> bool:
        return False

    def get_number_of_bands(self) -> int:
        return int(self.get_hamiltonian().norb)

    def _kpt_index(self, kpt: int, spin: int) -> int:
        nk = len(self._kdata()["energies"])
        if spin != 0:
            raise CalculatorInputError(f"spin={spin}: the calculation is spin-restricted, only spin=0 exists")
        if not -nk <= int(kpt) < nk:
            raise CalculatorInputError(f"kpt={kpt} out of range: there are {nk} irreducible k-points")
        return int(kpt)

    def get_eigenvalues(self, kpt: int = 0, spin: int = 0) -> np.ndarray:
        """Band energies (nbands,), eV, at irreducible k-point ``kpt``."""
        return self._kdata()["energies"][self._kpt_index(kpt, spin)].copy()

    def get_occupation_numbers(self, kpt: int = 0, spin: int = 0) -> np.ndarray:
        """Occupations (0..2, spin included) of the bands at irreducible k-point ``kpt``: 2 below
        and 0 above the gap of an insulator, else Gaussian smearing of 0.05 eV around the Fermi
        level (the smearing that fixes it, so the weighted sum is the electron count)."""
        from scipy.special import erfc

        d = self._kdata()
        e = d["energies"][self._kpt_index(kpt, spin)]
        if d["insulator"]:
            occ = 2.0 * (e < d["fermi"])
        else:
            occ = erfc((e - d["fermi"]) / _SMEARING)  # = 2 * erfc(x) / 2
        return np.where(np.isfinite(e), occ, 0.0)

    # ------------------------------------------------------------------------------------------
    # density
    # ------------------------------------------------------------------------------------------
    def get_electron_density(self, spacing: float = 0.15, atoms: Optional[Atoms] = None, **kwargs):
        """Electron density of the predicted D on a grid: ``(rho e/Å^3, box (3, 3) Å)`` (a
        :class:`~ase_slem.density.DensityGrid`, see :func:`ase_slem.density.electron_density`)."""
        from .density import electron_density

        radial = self._radial_basis("the electron density")
        D = self.get_density_matrix(atoms)
        return electron_density(D, self.atoms, radial, spacing=spacing, **kwargs)
