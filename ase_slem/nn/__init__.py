"""SLEM / LEM networks for LCAO quantum operators (torch only).

Main entry points::

    from ase_slem.nn import SLEM, build_graph
    model = SLEM({"Si": [0, 0, 1, 1, 2]}, r_cut=5.0)
    graph, out = model.predict(atoms)            # padded blocks, see SLEM's docstring
    ops = outputs_to_operators(model, graph, out) # {"hamiltonian": RealSpaceOperator, ...}
"""

from .graph import AtomGraph, build_graph
from .irreps import Irreps
from .normalization import PairNormalization, irreps_statistics
from .overlap_head import SKOverlapHead
from .slem import OPERATORS, SLEM, average_num_neighbors, outputs_to_operators
from .so2 import SO2Conv
from .wigner import EdgeFrame
from .wigner_eckart import BlockIrrepsMap, block_to_irreps, cg_matrix, irreps_to_block

__all__ = [
    "AtomGraph", "BlockIrrepsMap", "EdgeFrame", "Irreps", "OPERATORS", "PairNormalization",
    "SKOverlapHead", "SLEM", "SO2Conv", "average_num_neighbors", "block_to_irreps",
    "build_graph", "cg_matrix", "irreps_statistics", "irreps_to_block", "outputs_to_operators",
]
