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


def blur_radius(sigma: float, smallest_side: int) -> int:
    """Taps either side of a Gaussian blur: ±3σ, cut at the image size (reflect padding reaches no further)."""
    return min(max(1, int(round(3 * sigma))), smallest_side - 1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N,C,H,W) per channel, same size (reflect padding), taps to ±3σ.

    On images smaller than 3σ + 1 pixels the taps are cut at the image size (reflect padding
    cannot reach further), so small images still work.
    """
    smallest = min(images.shape[-2:])
    if smallest < 2:
        raise ValueError(f"a blur needs images of at least 2×2 pixels, got {tuple(images.shape[-2:])}")
    radius = blur_radius(sigma, smallest)
    kernel = gaussian_kernel_1d(2 * radius + 1, sigma, dtype=images.dtype, device=images.device)
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    return _gaussian_filter_valid(padded, kernel)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of (N,3,H,W) RGB images, (N,1,H,W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def pearson_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per sample, Tensor[N], of two (N, ...) batches of one shape.

    A flat sample (spread below a thousandth of a grey level: float rounding, not content) has
    nothing to correlate and scores 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"correlation needs two batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    first = a.float().flatten(1)
    second = b.float().flatten(1)
    first = first - first.mean(dim=1, keepdim=True)
    second = second - second.mean(dim=1, keepdim=True)
    spread_first = first.pow(2).mean(dim=1).sqrt()
    spread_second = second.pow(2).mean(dim=1).sqrt()
    covariance = (first * second).mean(dim=1)
    flat = (spread_first < 1e-6) | (spread_second < 1e-6)
    correlation = covariance / (spread_first * spread_second).clamp_min(1e-12)
    return torch.where(flat, torch.zeros_like(correlation), correlation.clamp(-1, 1))


def _check_rgb_pair(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise ValueError(f"{name} needs two (N,3,H,W) batches of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


# The leak measures below compare a ciphertext x' with its original x on luma, each at the scale a
# person with an image editor would look at (docs/PRIVACY.md): near 0 means that view of x' shows
# nothing of x; ±1 means it shows x (a negative shows it too). `avp evaluate privacy` reports them.
LOWPASS_SIGMA = 3.0
BANDPASS_SIGMAS = (1.0, 4.0)
EDGE_SIGMA = 2.0


def lowpass_correlation(a: torch.Tensor, b: torch.Tensor, sigma: float = LOWPASS_SIGMA) -> torch.Tensor:
    """Pearson correlation per sample, Tensor[N], of the Gaussian-blurred (σ 3) luma of a and b.

    A blur and a contrast stretch of x' show the face when its coarse brightness follows x's, even
    where SSIM(x', x) is tiny. A flat image has no layout and correlates 0.
    """
    _check_rgb_pair("lowpass_correlation", a, b)
    return pearson_correlation(gaussian_blur(luminance(a.float()), sigma), gaussian_blur(luminance(b.float()), sigma))


def difference_of_gaussians(images: torch.Tensor, sigmas: tuple[float, float] = BANDPASS_SIGMAS) -> torch.Tensor:
    """Band-pass of (N,C,H,W): blur σ_small minus blur σ_large (the scale of eyes, mouth and glasses)."""
    small, large = sigmas
    return gaussian_blur(images, small) - gaussian_blur(images, large)


def bandpass_correlation(a: torch.Tensor, b: torch.Tensor, sigmas: tuple[float, float] = BANDPASS_SIGMAS) -> torch.Tensor:
    """Pearson correlation per sample of the difference of Gaussians (σ 1 − σ 4) of the luma of a and b."""
    _check_rgb_pair("bandpass_correlation", a, b)
    return pearson_correlation(difference_of_gaussians(luminance(a.float()), sigmas),
                               difference_of_gaussians(luminance(b.float()), sigmas))


# d/dx; its transpose is d/dy.
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude √(gx² + gy²) of (N,C,H,W) with 3×3 Sobel kernels, reflect borders, same size."""
    kernel_x = torch.tensor(SOBEL_X, dtype=images.dtype, device=images.device)
    kernels = torch.stack([kernel_x, kernel_x.T])[:, None]  # (2,1,3,3): d/dx, d/dy
    batch, channels, height, width = images.shape
    padded = F.pad(images.reshape(batch * channels, 1, height, width), (1, 1, 1, 1), mode="reflect")
    gradients = F.conv2d(padded, kernels)
    return gradients.pow(2).sum(dim=1).sqrt().reshape(batch, channels, height, width)


def edge_correlation(a: torch.Tensor, b: torch.Tensor, sigma: float = EDGE_SIGMA) -> torch.Tensor:
    """Pearson correlation per sample of the edge magnitude (Sobel of a σ 2 blur) of the luma of a and b.

    Signed: edges are magnitudes, so only a positive correlation means x's outlines are in x'.
    """
    _check_rgb_pair("edge_correlation", a, b)
    return pearson_correlation(sobel_magnitude(gaussian_blur(luminance(a.float()), sigma)),
                               sobel_magnitude(gaussian_blur(luminance(b.float()), sigma)))


class LeakFilters:
    """The leak measures' filters of luma for one image size, by FFT: low-pass (σ 3), band-pass
    (σ 1 − σ 4) and the two Sobel gradients of a σ 2 blur, whose magnitude is the edge map.

    The low-pass and band-pass are the same numbers as gaussian_blur and difference_of_gaussians
    (reflect padding, taps to ±3σ), and the edge map those of sobel_magnitude(gaussian_blur(·, 2)),
    to float rounding (tests/test_metrics.py): the image is reflect-padded by the widest reach, so the
    FFT's circular wrap stays inside the padding. One forward and one inverse FFT serve all filters,
    which makes the attack's leak term cost a fraction of a step instead of a dozen small convolutions.
    """

    def __init__(self, height: int, width: int, lowpass_sigma: float = LOWPASS_SIGMA,
                 bandpass_sigmas: tuple[float, float] = BANDPASS_SIGMAS, edge_sigma: float = EDGE_SIGMA,
                 device: torch.device | str = "cpu") -> None:
        sigmas = (lowpass_sigma, *bandpass_sigmas, edge_sigma)
        smallest = min(height, width)
        if smallest < 2:
            raise ValueError(f"image of {height}×{width} is too small for the leak filters")
        radii = [blur_radius(sigma, smallest) for sigma in sigmas]
        self.pad = min(max(radii) + 1, smallest - 1)  # + 1 for the Sobel kernels' reach
        self.height, self.width = height, width
        padded = (height + 2 * self.pad, width + 2 * self.pad)

        def response(kernel_2d: torch.Tensor) -> torch.Tensor:
            """The FFT of a (2r+1)×(2r+1) kernel centred on pixel (0, 0), wrapped around the padded size."""
            radius = kernel_2d.shape[0] // 2
            offsets = torch.arange(-radius, radius + 1)
            placed = torch.zeros(padded, dtype=torch.float64)
            placed[offsets[:, None] % padded[0], offsets[None, :] % padded[1]] = kernel_2d
            return torch.fft.rfft2(placed)

        blurs = []
        for sigma, radius in zip(sigmas, radii):
            taps = gaussian_kernel_1d(2 * radius + 1, sigma, dtype=torch.float64)
            blurs.append(taps[:, None] * taps[None, :])
        lowpass, small, large, edge_blur = (response(kernel) for kernel in blurs)
        sobel_x = torch.tensor(SOBEL_X, dtype=torch.float64)
        # A circular convolution with the kernel flipped is conv2d's cross-correlation; flipping only
        # changes the gradients' sign, which the magnitude drops.
        gradient_x, gradient_y = response(sobel_x) * edge_blur, response(sobel_x.T) * edge_blur
        self.responses = torch.stack([lowpass, small - large, gradient_x, gradient_y]).to(torch.complex64).to(device)

    def __call__(self, luma: torch.Tensor) -> torch.Tensor:
        """(N,1,H,W) luma → (N,3,H,W): its low-pass, its band-pass and its edge magnitude."""
        padded = F.pad(luma.float(), (self.pad,) * 4, mode="reflect")
        filtered = torch.fft.irfft2(torch.fft.rfft2(padded) * self.responses, s=padded.shape[-2:])
        filtered = filtered[..., self.pad:self.pad + self.height, self.pad:self.pad + self.width]
        # The small constant keeps the square root's gradient finite where an image is flat.
        edges = (filtered[:, 2:3].pow(2) + filtered[:, 3:4].pow(2) + 1e-12).sqrt()
        return torch.cat([filtered[:, :2], edges], dim=1)


def colour_mean_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Across a set: Pearson correlation between the per-image mean colour of a and of b.

    Per channel (R, G and B each across the N images), then averaged over the three channels. Near 1
    means a ciphertext's average colour tells the original's (skin tone, background); needs at least
    two images. Channels are not pooled: a constant offset between channels (skin is redder than it
    is blue in every photo) would then count as a correlation although it tells nothing of any one
    image.
    """
    _check_rgb_pair("colour_mean_correlation", a, b)
    if a.shape[0] < 2:
        raise ValueError("colour_mean_correlation needs at least two images")
    means_a = a.float().flatten(2).mean(dim=2).T  # (3, N): each channel's means across the images
    means_b = b.float().flatten(2).mean(dim=2).T
    return float(pearson_correlation(means_a, means_b).mean())


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
    return _ssim_from_moments(*_gaussian_filter_valid(stacked, kernel).chunk(5, dim=1))


def _ssim_from_moments(mean_a, mean_b, mean_aa, mean_bb, mean_ab) -> torch.Tensor:
    """The SSIM map from the Gaussian-weighted local moments of a and b."""
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


class SsimAgainst:
    """ssim(a, b) for fixed references b (N,C,H,W), with b's local moments filtered once: each call
    filters a, a² and a·b only (9 maps instead of 15 for RGB), which the attack does on every step."""

    def __init__(self, references: torch.Tensor) -> None:
        if references.dim() != 4 or min(references.shape[-2:]) < SSIM_WINDOW:
            raise ValueError(f"SSIM needs (N,C,H,W) references of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, "
                             f"got {tuple(references.shape)}")
        self.references = references.float()
        self.kernel = gaussian_kernel_1d(dtype=torch.float32, device=references.device)
        with torch.no_grad():
            both = torch.cat([self.references, self.references * self.references], dim=1)
            self.mean_b, self.mean_bb = _gaussian_filter_valid(both, self.kernel).chunk(2, dim=1)

    def __call__(self, a: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
        """Mean SSIM per sample, Tensor[N], of a (N,C,H,W) against the references `which` selects
        (indices into the references; None: all of them, in order); differentiable in a."""
        chosen = slice(None) if which is None else which
        b, mean_b, mean_bb = self.references[chosen], self.mean_b[chosen], self.mean_bb[chosen]
        if a.shape != b.shape:
            raise ValueError(f"ssim needs images of the references' shape {tuple(b.shape)}, got {tuple(a.shape)}")
        a = a.float()
        moments = _gaussian_filter_valid(torch.cat([a, a * a, a * b], dim=1), self.kernel)
        mean_a, mean_aa, mean_ab = moments.chunk(3, dim=1)
        return _ssim_from_moments(mean_a, mean_b, mean_aa, mean_bb, mean_ab).flatten(1).mean(dim=1)


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
    "pearson_correlation", "lowpass_correlation", "bandpass_correlation", "edge_correlation",
    "colour_mean_correlation", "difference_of_gaussians", "LeakFilters", "sobel_magnitude", "ssim", "ssim_map",
    "SsimAgainst", "box_filter_sum", "feature_distance", "cosine_similarity",
    "colour_error", "mean_absolute_error", "gaussian_kernel_1d",
]
