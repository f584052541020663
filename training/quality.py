"""Image-quality measures for generated 28×28 grey images in [0, 1] (the VAE/GAN comparison on Fashion-MNIST).

- `frechet_distance`: the Fréchet distance between Gaussians fitted to two feature sets. On the features of our
  Fashion-MNIST classifier (training/classifier.py) it is "FD (ours)": FID's formula, not FID's numbers (no
  Inception weights here), so it compares models measured here only.
- `ssim`: structural similarity of a reconstruction to its original (Wang et al. 2004).
- `laplacian_variance`: sharpness; blurry samples have a low variance of the Laplacian.
- `generation_report`: all of the above in one dict, given samples, reconstructions, originals and test images.

Torch only (no scipy, no skimage); the statistics are computed in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from training.classifier import DigitClassifier

SSIM_WINDOW = 11  # Wang et al. 2004, section III-C: 11×11 circular-symmetric Gaussian, σ = 1.5
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03  # ibid.
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def _sqrt_psd(m: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix; rounding's negative eigenvalues -> 0."""
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """a (N, D), b (M, D) -> ||μa − μb||² + tr(Σa + Σb − 2 (Σa Σb)^½), sample covariances (N − 1), in float64.

    tr((Σa Σb)^½) is the sum of the square roots of the eigenvalues of the symmetric Σa^½ Σb Σa^½ (the same
    eigenvalues as Σa Σb), which needs no non-symmetric matrix square root.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) features; got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 rows in each set for a covariance; got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # torch.cov: rows are variables, correction=1
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).square().sum()
    return float(mean_term + cov_a.trace() + cov_b.trace() - 2 * trace_root)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """(size, size) float64 Gaussian weights summing to 1."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma**2))
    return torch.outer(g, g) / g.sum() ** 2


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0) -> Tensor:
    """x, y (B, 1, H, W) -> (B,) float64: the mean of each pair's SSIM map over the 'valid' window positions."""
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"need two (B, 1, H, W) batches of one shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    w = gaussian_window().to(x.device)[None, None]
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    # Weighted (not sample) moments, as in the paper's eqs. 14-16.
    var_x = F.conv2d(x * x, w) - mu_x.square()
    var_y = F.conv2d(y * y, w) - mu_y.square()
    cov = F.conv2d(x * y, w) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def laplacian_variance(x: Tensor) -> Tensor:
    """x (B, 1, H, W) -> (B,) float64: the variance (over pixels) of each image's 3×3 Laplacian, 'valid'."""
    kernel = torch.tensor(LAPLACIAN, dtype=torch.float64, device=x.device)[None, None]
    return F.conv2d(x.double(), kernel).flatten(1).var(1, correction=0)


def _device(classifier: DigitClassifier) -> torch.device:
    return next(classifier.parameters()).device


@torch.no_grad()
def classifier_features(classifier: DigitClassifier, images: Tensor, *, batch: int = 1000) -> Tensor:
    """images (N, 1, 28, 28) in [0, 1] -> (N, 128) float64 penultimate features, on the CPU."""
    device = _device(classifier)
    return torch.cat([classifier.penultimate(images[i : i + batch].float().to(device)).double().cpu()
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def mean_confidence(classifier: DigitClassifier, images: Tensor, *, batch: int = 1000) -> float:
    """The classifier's mean max-softmax probability on images (N, 1, 28, 28): low on things it cannot name."""
    device = _device(classifier)
    top = [classifier(images[i : i + batch].float().to(device)).softmax(1).amax(1).double().cpu()
           for i in range(0, len(images), batch)]
    return float(torch.cat(top).mean())


def _mean_stderr(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / √n) of per-image values (n,)."""
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def generation_report(*, samples: Tensor, reconstructions: Tensor, originals: Tensor, test_images: Tensor,
                      classifier: DigitClassifier, floor_images: Tensor | None = None) -> dict[str, float]:
    """Everything the VAE/GAN evaluation reports, all images (·, 1, 28, 28) in [0, 1].

    samples: drawn from the model's prior. reconstructions: the model's reconstructions of originals (paired).
    test_images: the reference set for FD (ours) and sharpness. fd_ours compares samples with test_images;
    confidence_test is the classifier's confidence on real items, the scale to read confidence_samples against.
    floor_images: other real images (training images), whose distance to test_images (fd_ours_train_vs_test) is
    the floor fd_ours is read against; computed from the same test features.
    """
    if reconstructions.shape != originals.shape:
        raise ValueError(f"reconstructions {tuple(reconstructions.shape)} and originals {tuple(originals.shape)}")
    sharp_samples = laplacian_variance(samples).mean().item()
    sharp_test = laplacian_variance(test_images).mean().item()
    mse, mse_se = _mean_stderr((reconstructions.double() - originals.double()).square().flatten(1).mean(1))
    sim, sim_se = _mean_stderr(ssim(reconstructions, originals))
    test_features = classifier_features(classifier, test_images)
    floor = ({"fd_ours_train_vs_test": frechet_distance(classifier_features(classifier, floor_images), test_features)}
             if floor_images is not None else {})
    return floor | {
        "fd_ours": frechet_distance(classifier_features(classifier, samples), test_features),
        "confidence_samples": mean_confidence(classifier, samples),
        "confidence_test": mean_confidence(classifier, test_images),
        "sharpness_samples": sharp_samples,
        "sharpness_test": sharp_test,
        "sharpness_ratio": sharp_samples / sharp_test,  # samples / real: below 1 is blurrier than the data
        "recon_mse": mse, "recon_mse_stderr": mse_se,
        "recon_ssim": sim, "recon_ssim_stderr": sim_se,
        "samples": len(samples), "reconstructions": len(reconstructions), "test_images": len(test_images),
    }


def diversity(samples: Tensor, reference: Tensor, *, quantile: float = 0.05) -> dict[str, float]:
    """Two collapse checks of samples against real images (·, C, H, W), on pixels:

    - spread: the mean pairwise distance between samples over that between real images (near 1 when healthy; it
      falls only when samples collapse onto very few outputs, and blur lowers it too);
    - near_duplicates: the share of samples whose nearest other sample is closer than the real images' `quantile`
      nearest-neighbour distance; real images score `quantile` by construction, a generator stuck on k outputs
      scores about 1 − k/n.
    """
    def distances(x: Tensor) -> Tensor:
        flat = x.flatten(1).double()
        d = torch.cdist(flat, flat)
        return d.fill_diagonal_(float("inf"))

    real, fake = distances(reference), distances(samples)
    n_real, n_fake = real.shape[0], fake.shape[0]
    spread = (fake.masked_fill(fake.isinf(), 0).sum() / (n_fake * (n_fake - 1))) / (
        real.masked_fill(real.isinf(), 0).sum() / (n_real * (n_real - 1)))
    threshold = torch.quantile(real.min(1).values, quantile)
    return {"spread": float(spread), "near_duplicates": float((fake.min(1).values < threshold).double().mean())}
