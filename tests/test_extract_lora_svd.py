"""extract-lora's truncated SVD (top eigenvectors of the float64 Gram matrix) against torch's full
SVD: tall, wide and square matrices of known spectrum, rank-deficient and zero ones, float32
input, both eigen-solvers (SciPy's dsyevr and torch's eigh); the error of the saved pieces."""

from __future__ import annotations

import math

import pytest
import torch

from mergetui.merge import extract_svd
from mergetui.merge.extract_svd import decompose, energy_rank, relative_error, truncated_svd


@pytest.fixture(params=["scipy", "torch"])
def solver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with SciPy's solver (when installed) and with torch's alone."""
    if request.param == "scipy":
        pytest.importorskip("scipy.linalg")
    else:
        monkeypatch.setattr(extract_svd, "_scipy", lambda: None)
    return request.param


def known(m: int, n: int, values: list[float], seed: int = 0) -> torch.Tensor:
    """U diag(values) V^T with random orthonormal U (m x k) and V (n x k), in float64."""
    generator = torch.Generator().manual_seed(seed)
    k = len(values)
    u = torch.linalg.qr(torch.randn(m, k, generator=generator, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=torch.float64))[0]
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


def best(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation, from torch's full SVD."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]


@pytest.mark.parametrize("shape", [(90, 40), (40, 90), (50, 50)], ids=["tall", "wide", "square"])
def test_matches_the_full_svd(solver: str, shape: tuple[int, int]) -> None:
    m, n = shape
    values = [10.0 * 0.8**i for i in range(min(m, n))]  # distinct, well separated
    matrix = known(m, n, values)
    u, s, vh, total = truncated_svd(matrix, 12)
    assert u.shape == (m, 12) and s.shape == (12,) and vh.shape == (12, n)
    assert u.dtype == s.dtype == vh.dtype == torch.float64
    torch.testing.assert_close(
        s, torch.tensor(values[:12], dtype=torch.float64), rtol=1e-12, atol=0
    )
    assert total == pytest.approx(sum(v * v for v in values), rel=1e-13)
    torch.testing.assert_close(u.T @ u, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(vh @ vh.T, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(u @ torch.diag(s) @ vh, best(matrix, 12), atol=1e-12, rtol=0)


def test_a_random_delta_and_float32_input(solver: str) -> None:
    """A Gaussian matrix (a dense spectrum, as a noisy fine-tune's delta) given in float32."""
    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(300, 120, generator=generator)
    u, s, vh, _ = truncated_svd(matrix, 16)
    reference = torch.linalg.svdvals(matrix.double())
    torch.testing.assert_close(s, reference[:16], rtol=1e-10, atol=0)
    torch.testing.assert_close(u @ torch.diag(s) @ vh, best(matrix.double(), 16), atol=1e-9, rtol=0)


@pytest.mark.parametrize("shape", [(70, 30), (30, 70)], ids=["tall", "wide"])
def test_rank_deficient(solver: str, shape: tuple[int, int]) -> None:
    """Rank 3 asked for 8: the 3 values, five (near) zeros, and B @ A is the matrix itself."""
    matrix = known(*shape, [5.0, 2.0, 0.5], seed=1)
    u, s, vh, _ = truncated_svd(matrix, 8)
    torch.testing.assert_close(s[:3], torch.tensor([5.0, 2.0, 0.5], dtype=torch.float64))
    assert float(s[3:].max()) < 1e-12
    torch.testing.assert_close(u @ torch.diag(s) @ vh, matrix, atol=1e-12, rtol=0)
    a, b, kept, total = decompose(matrix, 8, None)
    assert kept == pytest.approx(1.0, abs=1e-14)
    torch.testing.assert_close(b @ a, matrix, atol=1e-12, rtol=0)
    assert relative_error(matrix, a, b, total) < 1e-7


@pytest.mark.parametrize("shape", [(20, 8), (8, 20)], ids=["tall", "wide"])
def test_zero_delta(solver: str, shape: tuple[int, int]) -> None:
    """A module the fine-tune left alone: zero pieces (as mergekit's SVD gives), nothing lost."""
    matrix = torch.zeros(shape)
    u, s, vh, total = truncated_svd(matrix, 4)
    assert total == 0.0 and torch.equal(s, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(u @ torch.diag(s) @ vh, torch.zeros(shape, dtype=torch.float64))
    a, b, kept, total = decompose(matrix, 4, 0.9)
    assert a.shape == (1, shape[1]) and b.shape == (shape[0], 1)  # --energy keeps one
    assert not a.any() and not b.any() and kept == 1.0
    assert relative_error(matrix, a, b, total) == 0.0


def test_full_rank_is_exact(solver: str) -> None:
    matrix = known(24, 40, [3.0, 1.0, 0.1, 0.01] * 6, seed=2)
    a, b, kept, total = decompose(matrix, 128, None)  # asked above the shorter side: all 24
    assert a.shape == (24, 40) and b.shape == (24, 24)
    torch.testing.assert_close(b @ a, matrix, atol=1e-12, rtol=0)
    assert kept == pytest.approx(1.0, abs=1e-14)


def test_pieces_split_the_singular_values(solver: str) -> None:
    """mergekit's convention: A = sqrt(S) Vh, B = U sqrt(S), so each has norms sqrt(s)."""
    matrix = known(30, 50, [9.0, 4.0, 1.0], seed=4)
    a, b, kept, _ = decompose(matrix, 2, None)
    expected = torch.tensor([3.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(a.norm(dim=1), expected)
    torch.testing.assert_close(b.norm(dim=0), expected)
    assert kept == pytest.approx(97 / 98)


def test_energy_counts_the_whole_spectrum(solver: str) -> None:
    """--energy compares against ||delta||^2, not the share of the values computed."""
    values = [4.0, 2.0, 1.0, 0.5]
    matrix = known(40, 30, values, seed=5)
    power = [v * v for v in values]
    for energy, rank in ((0.75, 1), (0.9, 2), (0.98, 3), (1.0, 4)):
        a, _, kept, _ = decompose(matrix, 128, energy)
        assert a.shape[0] == rank, energy
        assert kept == pytest.approx(sum(power[:rank]) / sum(power))
    a, _, kept, _ = decompose(matrix, 2, 0.98)  # the rank caps it
    assert a.shape[0] == 2 and kept == pytest.approx(20 / 21.25)
    s = torch.tensor(values[:2], dtype=torch.float64)
    assert energy_rank(s, 0.78) == 1  # of their own total (0.78 <= 16 / 20) ...
    assert energy_rank(s, 0.78, total=sum(power)) == 2  # ... or the delta's (16 / 21.25 < 0.78)


def test_error_of_the_rounded_pieces(solver: str) -> None:
    """relative_error is ||D - B @ A|| / ||D|| for A and B as saved (bfloat16 rounding too)."""
    generator = torch.Generator().manual_seed(6)
    matrix = known(64, 48, [8.0, 4.0, 2.0, 1.0], seed=6)
    matrix += 0.01 * torch.randn(64, 48, generator=generator, dtype=torch.float64)
    a, b, _, total = decompose(matrix, 3, None)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        a_saved, b_saved = a.to(dtype), b.to(dtype)
        product = b_saved.double() @ a_saved.double()
        expected = float((matrix - product).norm() / matrix.norm())
        assert relative_error(matrix, a_saved, b_saved, total) == pytest.approx(expected, rel=1e-9)
    assert math.sqrt(1 - 84 / 85) < relative_error(matrix, a, b, total) < 0.2


def test_not_finite(solver: str) -> None:
    matrix = torch.ones(6, 4)
    matrix[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        truncated_svd(matrix, 2)


def test_empty_matrix(solver: str) -> None:
    u, s, vh, total = truncated_svd(torch.zeros(0, 5), 4)
    assert u.shape == (0, 0) and s.shape == (0,) and vh.shape == (0, 5) and total == 0.0


@pytest.mark.parametrize("shape", [(90, 40), (40, 90)], ids=["tall", "wide"])
def test_column_blocks_add_up(
    solver: str, shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float64 copies come BLOCK columns at a time: uneven blocks give the same results."""
    monkeypatch.setattr(extract_svd, "BLOCK", 7)
    generator = torch.Generator().manual_seed(8)
    matrix = torch.randn(shape, generator=generator)  # float32, as a delta
    u, s, vh, total = truncated_svd(matrix, 5)
    exact = matrix.double()
    torch.testing.assert_close(s, torch.linalg.svdvals(exact)[:5], rtol=1e-12, atol=0)
    torch.testing.assert_close(u @ torch.diag(s) @ vh, best(exact, 5), atol=1e-12, rtol=0)
    assert total == pytest.approx(float((exact**2).sum()), rel=1e-13)
    a, b, _, total = decompose(matrix, 5, None)
    a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    expected = float((exact - b.double() @ a.double()).norm() / exact.norm())
    assert relative_error(matrix, a, b, total) == pytest.approx(expected, rel=1e-9)
