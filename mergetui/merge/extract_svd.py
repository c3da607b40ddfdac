"""extract-lora's truncated SVD: the top singular triplets of a delta without a full SVD.

mergekit-extract-lora computes every singular vector of each delta (a full float32 SVD) and keeps
r of them. Here X is the delta, or its transpose, with the shorter side (k) first: the top r
eigenvectors U of its k x k Gram matrix X X^T (in float64) span its top r left singular vectors,
and W = U^T X has rows s_i v_i^T, so s is their norms and vh their directions: u diag(s) vh =
U U^T X, the projection on the top singular subspace. That holds even where an eigenvalue is lost
to rounding (below ~1e-8 s_1, where the SVD itself is ill-determined), and a direction with no
energy (a rank-deficient or zero delta) gets s = 0 and a zero row in vh.

Three steps: `gram` (X X^T and ||X||_F^2), `top_eigenvectors` (the costly one), `project` (W);
then `lora_pieces` (A and B). A float32 matrix is read BLOCK columns at a time, each block
converted to float64 (the same sums as one whole float64 copy, at a fraction of its memory); a
float64 one (what extract-lora's run passes) is read whole, with no copies.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BLOCK = 256  # columns converted to float64 at a time (512: ~8 MiB more peak RSS, no faster)


@dataclass
class Gram:
    """Step 1: X X^T of X, the delta or its transpose with the shorter side first."""

    x: torch.Tensor  # k x N, k <= N, float32 or float64
    wide: bool  # X is the delta itself, not its transpose
    matrix: Any  # X X^T in float64: NumPy (upper triangle, from SciPy's dsyrk) or torch
    total: float  # ||X||_F^2


@dataclass(frozen=True)
class _SciPy:
    blas: Any
    eigh: Any
    controller: Any  # threadpoolctl's, when installed


@functools.cache
def _scipy() -> _SciPy | None:
    """SciPy's BLAS and eigh, or None without SciPy (an optional speed-up: the results are the
    same). Its dsyevr computes only the eigenvectors asked for, several times faster than torch's
    full eigh on a CPU."""
    try:
        from scipy.linalg import blas, eigh
    except ImportError:
        return None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return _SciPy(blas, eigh, None)
    return _SciPy(blas, eigh, ThreadpoolController())


def one_blas_thread() -> contextlib.AbstractContextManager:
    """SciPy's BLAS on one thread (with threadpoolctl), for the eigenvectors: dsyevr on two
    threads was 3-4x slower than on one whenever the other core was busy (measured)."""
    scipy = _scipy()
    if scipy is None or scipy.controller is None:
        return contextlib.nullcontext()
    return scipy.controller.limit(limits=1, user_api="blas")


def _block_width(x: Any) -> int:
    """Columns of x read at a time: BLOCK for a float32 matrix (each block copied to float64),
    all of them for a float64 one (nothing to copy)."""
    return max(1, x.shape[1]) if str(x.dtype).endswith("float64") else BLOCK


def _blocks(x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(first column, up to _block_width(x) columns of x in float64); none when x has no rows."""
    import torch

    if x.shape[0] == 0:
        return
    width = _block_width(x)
    for start in range(0, x.shape[1], width):
        yield start, x[:, start : start + width].to(torch.float64)


def gram(matrix: torch.Tensor) -> Gram:
    """Step 1 (ValueError if the matrix holds a NaN or an infinity)."""
    import torch

    wide = matrix.shape[0] <= matrix.shape[1]
    x = matrix if wide else matrix.T
    size = x.shape[0]
    scipy = _scipy() if x.device.type == "cpu" else None
    if scipy is None:
        product = torch.zeros((size, size), dtype=torch.float64, device=x.device)
        for _, block in _blocks(x):
            product.addmm_(block, block.T)
        total = float(product.diagonal().sum())
    else:
        import numpy as np

        product = np.zeros((size, size), order="F")
        array = x.numpy()
        width = _block_width(array)
        for start in range(0, array.shape[1] if size else 0, width):
            # NumPy converts (torch's OpenMP threads, spinning after an op, would slow dsyrk's)
            a = array[:, start : start + width].astype(np.float64, copy=False)
            if a.flags.f_contiguous:  # a a^T
                product = scipy.blas.dsyrk(1.0, a, beta=1.0, c=product, overwrite_c=1)
            else:  # a's transpose is column-major: (a^T)^T a^T
                product = scipy.blas.dsyrk(1.0, a.T, beta=1.0, c=product, trans=1, overwrite_c=1)
        total = float(np.trace(product))
    if not math.isfinite(total):
        raise ValueError("the matrix holds a NaN or an infinity")
    return Gram(x, wide, product, total)


def top_eigenvectors(step: Gram, count: int) -> torch.Tensor:
    """Step 2: the eigenvectors of X X^T's `count` largest eigenvalues, largest first (k x count,
    float64). Consumes the Gram matrix (LAPACK overwrites it)."""
    import torch

    matrix, step.matrix = step.matrix, None
    size = step.x.shape[0]
    if count == 0:
        return torch.zeros((size, 0), dtype=torch.float64, device=step.x.device)
    if isinstance(matrix, torch.Tensor):
        return torch.linalg.eigh(matrix)[1][:, size - count :].flip(1)
    scipy = _scipy()
    assert scipy is not None  # gram() made a NumPy matrix only with SciPy
    _, vectors = scipy.eigh(
        matrix,
        lower=False,  # dsyrk filled the upper triangle only
        subset_by_index=(size - count, size - 1),
        driver="evr",
        check_finite=False,
        overwrite_a=True,
    )
    return torch.from_numpy(vectors).flip(1)


def project(step: Gram, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3: (u, s, vh) of the delta (not X), float64, s in decreasing order."""
    import torch

    x = step.x
    w = torch.empty((vectors.shape[1], x.shape[1]), dtype=torch.float64, device=vectors.device)
    for start, block in _blocks(x):
        w[:, start : start + block.shape[1]] = vectors.T @ block
    s = torch.linalg.vector_norm(w, dim=1)
    s, order = torch.sort(s, descending=True)
    vectors, w = vectors[:, order], w[order]
    w *= torch.where(s > 0, 1.0 / s, 0.0)[:, None]
    if step.wide:
        return vectors, s, w
    return w.T, s, vectors.T


def truncated_svd(
    matrix: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(u, s, vh, ||matrix||_F^2): the top min(rank, shorter side) singular triplets, float64."""
    step = gram(matrix)
    vectors = top_eigenvectors(step, min(rank, step.x.shape[0]))
    return (*project(step, vectors), step.total)


def energy_rank(singular_values: torch.Tensor, energy: float, total: float | None = None) -> int:
    """The fewest leading singular values whose squares hold `energy` of `total` (by default
    their own sum of squares), at least 1 and at most as many as are given."""
    import torch

    power = singular_values.to(torch.float64) ** 2
    total = float(power.sum()) if total is None else total
    if total <= 0.0:
        return 1
    kept = torch.cumsum(power, 0) / total
    # a share within rounding of the target counts as reaching it
    index = int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=torch.float64)))
    return max(1, min(index + 1, singular_values.numel()))


def lora_pieces(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, total: float, energy: float | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, kept energy share): the singular values split evenly between the pieces, mergekit's
    convention (A = sqrt(S) Vh, B = U sqrt(S)); with `energy`, the fewest that hold that share."""
    import torch

    rank = s.shape[0]
    if energy is not None:
        rank = min(rank, energy_rank(s, energy, total))
    kept = float((s[:rank] ** 2).sum()) / total if total > 0 else 1.0
    sqrt_s = torch.sqrt(s[:rank])
    return sqrt_s[:, None] * vh[:rank], u[:, :rank] * sqrt_s[None, :], min(kept, 1.0)


def decompose(
    delta: torch.Tensor, max_rank: int, energy: float | None
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(A, B, kept energy share, ||delta||_F^2) in float64: B @ A the truncated SVD of `delta`."""
    u, s, vh, total = truncated_svd(delta, max_rank)
    return (*lora_pieces(u, s, vh, total, energy), total)


def relative_error(delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor, total: float) -> float:
    """||delta - B @ A||_F / ||delta||_F for the saved (rounded) A and B, without forming B @ A:
    ||D||^2 - 2 <B^T D, A> + <B^T B, A A^T>, in float64 (clamped at 0 against cancellation)."""
    import torch

    if total <= 0:
        return 0.0
    a, b = a.to(torch.float64), b.to(torch.float64)
    cross = 0.0
    for start, block in _blocks(delta):
        cross += float(((b.T @ block) * a[:, start : start + block.shape[1]]).sum())
    square = float(((b.T @ b) * (a @ a.T)).sum())
    return math.sqrt(max(total - 2.0 * cross + square, 0.0) / total)
