"""Image and feature metrics shared by keygen, encryption and evaluation (all per sample)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def gaussian_kernel_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
                       dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalized 1-D Gaussian weights of odd length `size` centred on the middle tap."""
    radius = size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def _gaussian_filter_valid(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (N,C,H,W), per channel, keeping only the valid region."""
    channels = images.shape[1]
    size = kernel.numel()
    horizontal = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    vertical = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    blurred = F.conv2d(images, horizontal, groups=channels)
    return F.conv2d(blurred, vertical, groups=channels)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N,C,H,W) per channel, same size (reflect padding), taps to ±3σ.

    On images smaller than 3σ + 1 pixels the taps are cut at the image size (reflect padding
    cannot reach further), so small images still work.
    """
    smallest = min(images.shape[-2:])
    if smallest < 2:
        raise ValueError(f"a blur needs images of at least 2×2 pixels, got {tuple(images.shape[-2:])}")
    radius = min(max(1, int(round(3 * sigma))), smallest - 1)
    kernel = gaussian_kernel_1d(2 * radius + 1, sigma, dtype=images.dtype, device=images.device)
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    return _gaussian_filter_valid(padded, kernel)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of (N,3,H,W) RGB images, (N,1,H,W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def lowpass_correlation(a: torch.Tensor, b: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """Pearson correlation per sample, Tensor[N], of the Gaussian-blurred luminance of a and b.

    A privacy measure for ciphertexts: blurring and stretching the contrast of x' shows the face
    when its coarse brightness follows x's, even where SSIM(x', x) is tiny (docs/PRIVACY.md).
    Near 0 means the coarse layout of x is not in x'; ±1 means it is (a negative image shows it too).
    A flat image has no layout and correlates 0.
    """
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise ValueError(f"lowpass_correlation needs two (N,3,H,W) batches of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    first = gaussian_blur(luminance(a.float()), sigma).flatten(1)
    second = gaussian_blur(luminance(b.float()), sigma).flatten(1)
    first = first - first.mean(dim=1, keepdim=True)
    second = second - second.mean(dim=1, keepdim=True)
    spread_first, spread_second = first.std(dim=1), second.std(dim=1)
    covariance = (first * second).mean(dim=1) * first.shape[1] / (first.shape[1] - 1)
    # Below a thousandth of a grey level of spread an image is flat (float rounding, not layout).
    flat = (spread_first < 1e-6) | (spread_second < 1e-6)
    correlation = covariance / (spread_first * spread_second).clamp_min(1e-12)
    return torch.where(flat, torch.zeros_like(correlation), correlation.clamp(-1, 1))


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM per pixel and channel, (N,C,H-10,W-10), for images in [0,1] (data range 1).

    Gaussian window 11×11, σ=1.5, population covariance: the same numbers as
    skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1) on its valid region.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (N,C,H,W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {tuple(a.shape[-2:])}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    a, b = a.to(dtype), b.to(dtype)
    kernel = gaussian_kernel_1d(dtype=dtype, device=a.device)
    # One conv pass over the five statistics at once.
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    mean_a, mean_b, mean_aa, mean_bb, mean_ab = _gaussian_filter_valid(stacked, kernel).chunk(5, dim=1)
    var_a = mean_aa - mean_a * mean_a
    var_b = mean_bb - mean_b * mean_b
    cov_ab = mean_ab - mean_a * mean_b
    c1 = SSIM_K1 ** 2
    c2 = SSIM_K2 ** 2
    numerator = (2 * mean_a * mean_b + c1) * (2 * cov_ab + c2)
    denominator = (mean_a * mean_a + mean_b * mean_b + c1) * (var_a + var_b + c2)
    return numerator / denominator


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per sample, Tensor[N], of two (N,3,H,W) batches in [0,1]; differentiable."""
    return ssim_map(a, b).flatten(1).mean(dim=1)


def box_filter_sum(images: torch.Tensor, block: int) -> torch.Tensor:
    """Sum over every block×block window (stride 1, valid region), per channel.

    (N,C,H,W) → (N,C,H-block+1,W-block+1). The variance loss L_v takes the variance of these sums.
    """
    if block < 1 or block > min(images.shape[-2:]):
        raise ValueError(f"block must be between 1 and the image side, got {block} for {tuple(images.shape[-2:])}")
    return F.avg_pool2d(images, kernel_size=block, stride=1) * (block * block)


def feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance per sample between two (N,D) feature batches (features flattened)."""
    return (a.flatten(1) - b.flatten(1)).norm(dim=1)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per sample between two (N,D) feature batches (features flattened)."""
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def colour_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Absolute difference of the per-channel means, per sample: Tensor[N,C] (a colour cast, not noise)."""
    return (a.flatten(2).mean(dim=2) - b.flatten(2).mean(dim=2)).abs()


def mean_absolute_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel error per sample and channel: Tensor[N,C]."""
    return (a - b).abs().flatten(2).mean(dim=2)


__all__ = [
    "ssim", "ssim_map", "box_filter_sum", "feature_distance", "cosine_similarity",
    "colour_error", "mean_absolute_error", "gaussian_kernel_1d",
]
