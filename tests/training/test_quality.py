"""training/quality.py against closed forms and slow, obvious re-computations."""

import math

import pytest
import torch

from training.classifier import DigitClassifier
from training.quality import frechet_distance, generation_report, laplacian_variance, ssim


def _with_moments(n: int, mean: torch.Tensor, scales: torch.Tensor, rotation: torch.Tensor, seed: int) -> torch.Tensor:
    """(n, D) float64 whose *sample* mean is `mean` and sample covariance exactly R diag(scales²) Rᵀ."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # orthonormal, zero-mean columns: qᵀq = I, column means 0
    return math.sqrt(n - 1) * q * scales @ rotation.T + mean


def _random_set(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def test_frechet_distance_of_a_set_to_itself_is_zero():
    a = _random_set(500, 32, seed=0)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a.float(), a.float())) < 1e-6


def test_frechet_distance_matches_the_closed_form_for_commuting_sample_covariances():
    """Σa = R diag(sa²) Rᵀ and Σb = R diag(sb²) Rᵀ commute, so the distance is ||μa − μb||² + Σ (sa − sb)²; the
    sets are built so that these are their sample moments (N − 1), making the check exact up to rounding."""
    d = 12
    g = torch.Generator().manual_seed(1)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    mu_a, mu_b = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s_a = torch.rand(d, generator=g, dtype=torch.float64) * 2 + 0.1
    s_b = torch.rand(d, generator=g, dtype=torch.float64) * 2 + 0.1
    a = _with_moments(60, mu_a, s_a, rotation, seed=2)
    b = _with_moments(45, mu_b, s_b, rotation, seed=3)
    assert torch.allclose(torch.cov(a.T), rotation @ torch.diag(s_a**2) @ rotation.T, atol=1e-10)
    expected = float((mu_a - mu_b).square().sum() + (s_a - s_b).square().sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    identity = torch.eye(d, dtype=torch.float64)  # the diagonal case
    a, b = _with_moments(60, mu_a, s_a, identity, seed=4), _with_moments(45, mu_b, s_b, identity, seed=5)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_the_eigenvalues_of_the_product_when_covariances_do_not_commute():
    """tr((Σa Σb)^½) recomputed from the eigenvalues of the non-symmetric product Σa Σb itself."""
    a, b = _random_set(300, 8, seed=6), _random_set(200, 8, seed=7) + 0.5
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    trace_root = torch.linalg.eigvals(cov_a @ cov_b).real.sqrt().sum()
    expected = (a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-9)


def test_frechet_distance_is_symmetric():
    a, b = _random_set(300, 16, seed=8), _random_set(250, 16, seed=9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)


def test_frechet_distance_grows_with_a_shift_as_its_square():
    a = _random_set(400, 16, seed=10)
    direction = torch.randn(16, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    distances = [frechet_distance(a, a + t * direction) for t in (0.25, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] > 0
    for t, fd in zip((0.25, 0.5, 1.0, 2.0), distances, strict=True):
        assert fd == pytest.approx(t**2 * float(direction.square().sum()), rel=1e-6, abs=1e-6)


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def _ssim_by_loops(x: torch.Tensor, y: torch.Tensor) -> float:
    """Wang et al. 2004 written out: at each 'valid' 11×11 window, Gaussian-weighted (σ = 1.5) means, variances
    and covariance about those means, the SSIM formula, then the mean over windows. x, y (H, W)."""
    x, y = x.double(), y.double()
    size, sigma = 11, 1.5
    w = torch.tensor([[math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * sigma**2)) for j in range(size)]
                      for i in range(size)], dtype=torch.float64)
    w = w / w.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for r in range(x.shape[0] - size + 1):
        for c in range(x.shape[1] - size + 1):
            px, py = x[r : r + size, c : c + size], y[r : r + size, c : c + size]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(torch.stack(values).mean())


def test_ssim_of_identical_images_is_one():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_ssim_matches_the_loop_recomputation_per_image():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 14, 14, generator=g)
    y = (x + 0.3 * torch.randn(2, 1, 14, 14, generator=g)).clamp(0, 1)
    y[1] = torch.rand(1, 14, 14, generator=g)  # an unrelated pair: low SSIM
    got = ssim(x, y)
    assert got.shape == (2,)
    for i in range(2):
        assert got[i].item() == pytest.approx(_ssim_by_loops(x[i, 0], y[i, 0]), abs=1e-10)
    assert got[1] < got[0] < 1


def test_ssim_decreases_with_added_noise():
    g = torch.Generator().manual_seed(2)
    x = torch.nn.functional.avg_pool2d(torch.rand(4, 1, 32, 32, generator=g), 5, 1)  # smooth, 28×28
    noise = torch.randn(x.shape, generator=g)
    scores = [ssim(x, (x + s * noise).clamp(0, 1)).mean().item() for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert scores == sorted(scores, reverse=True) and scores[0] < 1


def test_laplacian_variance_is_zero_on_flat_and_ramped_images_and_known_on_a_checkerboard():
    i, j = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    constant = torch.full((28, 28), 0.7)
    ramp = (i + 2 * j) / 81  # linear: its second differences vanish
    checker = ((i + j) % 2).float()
    # Checkerboard by hand: a 1-pixel has four 0-neighbours (0 − 4·1 = −4), a 0-pixel four 1-neighbours (4 − 0 =
    # +4); the 26×26 'valid' responses are half +4, half −4, mean 0, variance 16.
    got = laplacian_variance(torch.stack([constant, ramp, checker, 0.5 * checker])[:, None])
    assert got.shape == (4,)
    assert got[:2].abs().max() < 1e-12
    assert got[2].item() == pytest.approx(16.0, abs=1e-12)
    assert got[3].item() == pytest.approx(4.0, abs=1e-12)  # scales with the contrast squared


def test_generation_report_on_perfect_reconstructions_and_samples_equal_to_the_test_set():
    torch.manual_seed(0)
    classifier = DigitClassifier().eval()  # untrained: the report's plumbing, not its numbers
    g = torch.Generator().manual_seed(3)
    test = torch.rand(300, 1, 28, 28, generator=g)
    blurred = torch.nn.functional.avg_pool2d(test, 3, 1, padding=1)
    report = generation_report(samples=test, reconstructions=test, originals=test, test_images=test,
                               classifier=classifier)
    assert abs(report["fd_ours"]) < 1e-6 and report["sharpness_ratio"] == pytest.approx(1.0)
    assert report["recon_mse"] == 0 and report["recon_ssim"] == pytest.approx(1.0)
    assert report["confidence_samples"] == pytest.approx(report["confidence_test"])
    assert 0.1 <= report["confidence_samples"] <= 1
    report = generation_report(samples=blurred, reconstructions=blurred, originals=test, test_images=test,
                               classifier=classifier)
    mse = (blurred.double() - test.double()).square().mean(dim=(1, 2, 3))
    assert report["recon_mse"] == pytest.approx(mse.mean().item())
    assert report["recon_mse_stderr"] == pytest.approx(mse.std().item() / math.sqrt(300))
    assert report["sharpness_ratio"] < 0.5 and report["fd_ours"] > 0 and report["recon_ssim"] < 1
    assert report["samples"] == report["reconstructions"] == report["test_images"] == 300


def test_diversity_tells_collapse_from_real_images():
    """Real images against other real images: spread ≈ 1 and near-duplicates ≈ the quantile; a generator stuck on
    10 outputs (each repeated, with tiny noise): near-duplicates ≈ 1 while the spread alone barely moves."""
    from training.quality import diversity

    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(40, 1, 8, 8, generator=g).round()  # 40 distinct binary "images"
    real = prototypes[torch.randint(0, 40, (200,), generator=g)] + 0.3 * torch.rand(200, 1, 8, 8, generator=g)
    other = prototypes[torch.randint(0, 40, (200,), generator=g)] + 0.3 * torch.rand(200, 1, 8, 8, generator=g)
    healthy = diversity(other, real)
    assert abs(healthy["spread"] - 1) < 0.05 and healthy["near_duplicates"] < 0.2
    stuck = prototypes[torch.arange(200) % 10] + 1e-3 * torch.rand(200, 1, 8, 8, generator=g)
    collapsed = diversity(stuck, real)
    assert collapsed["near_duplicates"] > 0.95 and collapsed["spread"] > 0.7
    assert diversity(real, real)["near_duplicates"] == pytest.approx(0.05, abs=0.01)  # the quantile, by construction
