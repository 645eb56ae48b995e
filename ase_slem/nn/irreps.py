"""Minimal irreps bookkeeping used at module construction time.

A feature vector is a flat tensor ``(..., dim)`` made of consecutive irrep blocks.
Block ``(mul, l, p)`` occupies ``mul * (2l + 1)`` numbers stored channel-major,
i.e. as a ``(mul, 2l + 1)`` row-major array; inside an irrep the components are
in e3nn's real spherical-harmonics order (m = -l..l, l = 1 is (x, y, z)).
``p`` is the parity, +1 (even, "e") or -1 (odd, "o").

Nothing here is used inside ``forward``: the modules turn these descriptions
into index tensors once, so that the forward passes stay TorchScript friendly.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

Irrep = Tuple[int, int]  # (l, p)
MulIrrep = Tuple[int, int, int]  # (mul, l, p)


class Irreps:
    """An ordered list of ``(mul, l, p)`` blocks."""

    def __init__(self, blocks: Iterable[Sequence[int]] = ()):
        self.blocks: List[MulIrrep] = []
        for b in blocks:
            mul, l, p = (int(v) for v in b)
            if mul < 0 or l < 0 or p not in (-1, 1):
                raise ValueError(f"invalid irrep block {b!r}")
            if mul > 0:
                self.blocks.append((mul, l, p))

    # -- constructors -----------------------------------------------------
    @staticmethod
    def spherical_harmonics(lmax: int, mul: int = 1) -> "Irreps":
        return Irreps((mul, l, (-1) ** l) for l in range(lmax + 1))

    @staticmethod
    def full(lmax: int, mul: int, parities: Sequence[int] = (1, -1)) -> "Irreps":
        """``mul`` channels of every (l, p) with l <= lmax and p in parities."""
        return Irreps((mul, l, p) for l in range(lmax + 1) for p in parities)

    # -- properties -------------------------------------------------------
    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __add__(self, other: "Irreps") -> "Irreps":
        return Irreps(self.blocks + list(other.blocks))

    def __eq__(self, other) -> bool:
        return isinstance(other, Irreps) and self.blocks == other.blocks

    def __repr__(self) -> str:
        return "+".join(f"{m}x{l}{'e' if p == 1 else 'o'}" for m, l, p in self.blocks) or "0"

    @property
    def dim(self) -> int:
        return sum(m * (2 * l + 1) for m, l, _ in self.blocks)

    @property
    def num_channels(self) -> int:
        """Number of irrep instances (sum of multiplicities)."""
        return sum(m for m, _, _ in self.blocks)

    @property
    def lmax(self) -> int:
        return max((l for _, l, _ in self.blocks), default=0)

    def offsets(self) -> List[int]:
        out, o = [], 0
        for m, l, _ in self.blocks:
            out.append(o)
            o += m * (2 * l + 1)
        return out

    def mul_of(self, l: int, p: int) -> int:
        return sum(m for m, ll, pp in self.blocks if ll == l and pp == p)

    def sorted(self) -> "Irreps":
        """Merge blocks of equal (l, p) and sort by l then parity (e before o)."""
        keys = sorted({(l, p) for _, l, p in self.blocks}, key=lambda k: (k[0], -k[1]))
        return Irreps((self.mul_of(l, p), l, p) for l, p in keys)

    # -- per component / per channel descriptors --------------------------
    def component_table(self) -> List[Tuple[int, int, int, int, int]]:
        """One row per component: (channel_index, l, p, m, block_index).

        ``channel_index`` counts irrep instances over the whole vector.
        """
        rows = []
        ch = 0
        for b, (mul, l, p) in enumerate(self.blocks):
            for _ in range(mul):
                for m in range(-l, l + 1):
                    rows.append((ch, l, p, m, b))
                ch += 1
        return rows

    def channel_table(self) -> List[Tuple[int, int, int]]:
        """One row per irrep instance: (l, p, block_index)."""
        rows = []
        for b, (mul, l, p) in enumerate(self.blocks):
            rows.extend((l, p, b) for _ in range(mul))
        return rows

    def sort_permutation(self) -> List[int]:
        """Indices ``perm`` such that ``x[..., perm]`` is laid out as ``self.sorted()``.

        Channels keep their relative order inside each (l, p) group.
        """
        groups = {}
        offs = self.offsets()
        for (mul, l, p), o in zip(self.blocks, offs):
            groups.setdefault((l, p), []).extend(range(o, o + mul * (2 * l + 1)))
        perm: List[int] = []
        for _, l, p in self.sorted().blocks:
            perm.extend(groups[(l, p)])
        return perm
