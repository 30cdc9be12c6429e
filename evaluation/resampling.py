"""Bootstrap resamples stored as per-case counts.

A bootstrap resample of N cases is N draws with replacement. Every metric heldout computes is
a function of the resampled multiset, so a resample is fully described by how often each case
was drawn. Storing an (R, N) count matrix instead of R sorted copies of the data is what lets
the metrics evaluate all R resamples with a few passes over small integer arrays.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.integer]
# Columns (case indices) and their (R, len(columns)) counts.
Block = tuple[npt.NDArray[np.intp], npt.NDArray[np.unsignedinteger]]

# Rows drawn at a time: at most 64, and at most ~2**17 (resample x case) cells, so that a
# block's int64 bincount (1 MB) stays in a core's cache whatever N is.
_DRAW_ROWS = 64
_DRAW_CELLS = 1 << 17

# Column selections remembered per matrix (each costs R x len(selection) bytes).
_TAKE_CACHE_SIZE = 8


class CaseCounts:
    """How often each of N cases is drawn in each of R resamples: an (R, N) count matrix.

    `take(idx)` returns the counts of a selection of cases as a contiguous (R, len(idx))
    array and remembers the last few selections, because the same selection (say, the
    positive cases) is needed again for every submission scored on the same ground truth.
    """

    def __init__(self, matrix: npt.NDArray[np.unsignedinteger]) -> None:
        if matrix.ndim != 2:
            raise ValueError("counts must be an (R, N) matrix")
        matrix.flags.writeable = False
        self._matrix: npt.NDArray[np.unsignedinteger] | None = matrix
        self._shape: tuple[int, int] = (int(matrix.shape[0]), int(matrix.shape[1]))
        self._blocks: list[Block] = []
        self._cache: OrderedDict[bytes, npt.NDArray[np.unsignedinteger]] = OrderedDict()
        self._restricted: OrderedDict[bytes, CaseCounts] = OrderedDict()

    @classmethod
    def of_blocks(cls, n_cases: int, blocks: list[Block]) -> CaseCounts:
        """Counts given as disjoint column blocks (columns, (R, len(columns)) counts), the
        other cases never drawn. The (R, N) matrix is assembled only when first asked for:
        AUC-type metrics read just the blocks (their strata), and at 100,000 cases writing
        the matrix cost a tenth of a board's statistics."""
        # One count type for all (a stratum widened to uint32 widens the others), as the
        # assembled matrix has.
        dtype = np.result_type(*(counts.dtype for _, counts in blocks))
        blocks = [(columns, counts.astype(dtype, copy=False)) for columns, counts in blocks]
        out = cls.__new__(cls)
        out._matrix = None
        out._shape = (int(blocks[0][1].shape[0]), n_cases)
        out._blocks = blocks
        out._cache, out._restricted = OrderedDict(), OrderedDict()
        for columns, counts in blocks:
            out.remember(columns, counts)
        return out

    @property
    def n_resamples(self) -> int:
        return self._shape[0]

    @property
    def n_cases(self) -> int:
        return self._shape[1]

    @property
    def matrix(self) -> npt.NDArray[np.unsignedinteger]:
        if self._matrix is None:
            dtype = self._blocks[0][1].dtype
            matrix: npt.NDArray[np.unsignedinteger] = np.zeros(self._shape, dtype=dtype)
            for columns, counts in self._blocks:
                matrix[:, columns] = counts
            matrix.flags.writeable = False
            self._matrix, self._blocks = matrix, []
        return self._matrix

    def take(self, idx: IntArray) -> npt.NDArray[np.unsignedinteger]:
        index = np.asarray(idx, dtype=np.intp)
        key = _digest(index)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        cols = np.ascontiguousarray(self.matrix[:, index])
        cols.flags.writeable = False
        _remember(self._cache, key, cols)
        return cols

    def remember(self, idx: IntArray, cols: npt.NDArray[np.unsignedinteger]) -> None:
        """Seed `take(idx)` with columns already at hand (equal to `matrix[:, idx]`), so the
        first take of them is not a strided gather over the whole matrix."""
        cols.flags.writeable = False
        _remember(self._cache, _digest(np.asarray(idx, dtype=np.intp)), cols)

    def restrict(self, idx: IntArray) -> CaseCounts:
        """Counts of a subset of the cases (draws that fell on other cases are ignored)."""
        index = np.asarray(idx, dtype=np.intp)
        if index.size == self.n_cases and np.array_equal(index, np.arange(index.size)):
            return self  # every case, in order: the counts as they are
        key = _digest(index)
        hit = self._restricted.get(key)
        if hit is None:
            hit = CaseCounts(self.take(index))
            _remember(self._restricted, key, hit)
        return hit


def _digest(idx: npt.NDArray[np.intp]) -> bytes:
    return hashlib.blake2b(idx.tobytes(), digest_size=16).digest()


def _remember(cache: OrderedDict[bytes, Any], key: bytes, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > _TAKE_CACHE_SIZE:
        cache.popitem(last=False)


def draw_counts(n_cases: int, n_resamples: int, seed: int) -> CaseCounts:
    """Draw R bootstrap resamples of N cases from `np.random.default_rng(seed)`.

    The indices are exactly those of `rng.integers(0, N, size=(R, N))`: they are drawn in
    blocks of rows (`_drawn_counts`), which consumes the generator's stream in the same order,
    so memory stays at R x N bytes for the counts instead of 8 R x N for the index matrix.
    """
    if n_cases < 1 or n_resamples < 1:
        raise ValueError("need at least one case and one resample")
    return CaseCounts(_drawn_counts(np.random.default_rng(seed), n_resamples, n_cases))


def _drawn_counts(
    rng: np.random.Generator, n_resamples: int, m: int
) -> npt.NDArray[np.unsignedinteger]:
    """(R, m) counts whose row r is the bincount of row r of `rng.integers(0, m, (R, m))`.

    Drawn in blocks of rows whose bincount (8 bytes a cell) stays in a core's cache: a fixed
    64 rows scattered their increments over 36 MB at 100,000 cases, and the draw then cost
    15x that of 10,000. Blocks of rows consume the generator's stream in the same order,
    and int32 indices are the same draws as int64 ones (numpy draws ranges below 2**32 from
    32-bit words either way), so the counts are exactly the documented ones.
    One byte per count: more than 255 draws of one case in a resample needs N < 256 or
    astronomically bad luck, and then the matrix is widened on the spot.
    """
    index_type = np.int32 if m <= np.iinfo(np.int32).max else np.int64
    rows = max(1, min(_DRAW_ROWS, _DRAW_CELLS // m))
    counts: npt.NDArray[np.unsignedinteger] = np.empty((n_resamples, m), dtype=np.uint8)
    for r0 in range(0, n_resamples, rows):
        block = rng.integers(0, m, size=(min(rows, n_resamples - r0), m), dtype=index_type)
        c = _row_counts(block, m)
        if m > np.iinfo(counts.dtype).max and c.max() > np.iinfo(counts.dtype).max:
            counts = counts.astype(np.uint32)
        counts[r0 : r0 + block.shape[0]] = c
    return counts


def _row_counts(block: npt.NDArray[np.integer[Any]], m: int) -> npt.NDArray[np.intp]:
    """np.bincount of each row of `block` (values in [0, m)), for all rows in one call."""
    rows = block.shape[0]
    if rows == 1:
        return np.bincount(block[0], minlength=m)[None, :]
    flat = (block + (np.arange(rows, dtype=block.dtype) * m)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * m).reshape(rows, m)


@functools.lru_cache(maxsize=4)
def cached_counts(n_cases: int, n_resamples: int, seed: int) -> CaseCounts:
    """`draw_counts`, remembered: every metric and submission scored on the same N cases with
    the same seed sees the same resamples (paired bootstrap) and pays for the draw once."""
    return draw_counts(n_cases, n_resamples, seed)


def draw_stratified_counts(strata: IntArray, n_resamples: int, seed: int) -> CaseCounts:
    """Stratified bootstrap: each resample keeps every stratum's size (pROC's default for
    AUC: positives and negatives are resampled separately, so no resample misses a class).

    `strata` (N,) holds a non-negative code per case; cases with a negative code (outside a
    metric's subset) are never drawn. For each stratum in ascending code order, the indices
    are those of `rng.integers(0, n_s, size=(R, n_s))` into its cases (drawn in row blocks,
    which consumes the stream in the same order), from one `np.random.default_rng(seed)`.
    """
    codes = np.asarray(strata, dtype=np.int64)
    if codes.ndim != 1 or n_resamples < 1 or not (codes >= 0).any():
        raise ValueError("need strata (N,) with at least one case drawn and one resample")
    rng = np.random.default_rng(seed)
    blocks: list[Block] = []
    for code in np.unique(codes[codes >= 0]).tolist():
        members = np.flatnonzero(codes == code)
        # Each stratum's counts drawn into its own contiguous block: the metrics take the
        # strata's columns again (AUC: the positives, the negatives), and get these blocks.
        blocks.append((members, _drawn_counts(rng, n_resamples, members.size)))
    return CaseCounts.of_blocks(codes.size, blocks)


@functools.lru_cache(maxsize=8)
def _cached_stratified(key: bytes, n_resamples: int, seed: int) -> CaseCounts:
    return draw_stratified_counts(np.frombuffer(key, dtype=np.int64), n_resamples, seed)


def cached_stratified_counts(strata: IntArray, n_resamples: int, seed: int) -> CaseCounts:
    """`draw_stratified_counts`, remembered per strata vector (all submissions of a phase
    share the ground truth, hence the strata, and so see the same resamples)."""
    key = np.ascontiguousarray(np.asarray(strata, dtype=np.int64)).tobytes()
    return _cached_stratified(key, n_resamples, seed)
