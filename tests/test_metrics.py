"""SSIM against scikit-image, the box filter against hand-computed sums, per-sample feature metrics."""

import pytest
import torch
import torch.nn.functional as F

from avpcli.metrics import SsimAgainst, box_filter_sum, cosine_similarity, feature_distance, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")


def skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [
        skimage_metrics.structural_similarity(
            x.permute(1, 2, 0).double().numpy(), y.permute(1, 2, 0).double().numpy(), channel_axis=2,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
        for x, y in zip(a, b)
    ]


def smooth_images(generator: torch.Generator, n: int, height: int, width: int) -> torch.Tensor:
    coarse = torch.rand(n, 3, 5, 5, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True).clamp(0, 1)


def test_ssim_of_identical_images_is_one():
    images = torch.rand(3, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(images, images), torch.ones(3), atol=1e-6)


@pytest.mark.parametrize("kind", ["random", "smooth"])
@pytest.mark.parametrize("shape", [(150, 150), (112, 96), (32, 32)])
def test_ssim_matches_skimage(kind, shape):
    generator = torch.Generator().manual_seed(1)
    if kind == "random":
        a = torch.rand(2, 3, *shape, generator=generator)
        b = (a + 0.15 * torch.randn(a.shape, generator=generator)).clamp(0, 1)
    else:
        a = smooth_images(generator, 2, *shape)
        b = (0.8 * a + 0.2 * smooth_images(generator, 2, *shape)).clamp(0, 1)
    ours = ssim(a, b)
    reference = torch.tensor(skimage_ssim(a, b), dtype=ours.dtype)
    assert ours.shape == (2,)
    assert torch.allclose(ours, reference, atol=1e-4), (ours, reference)
    # The pairs are really different, so a constant 1 could not pass.
    assert (reference < 0.99).all()


def test_ssim_is_per_sample():
    generator = torch.Generator().manual_seed(2)
    a = torch.rand(4, 3, 24, 24, generator=generator)
    b = (a + 0.2 * torch.randn(a.shape, generator=generator)).clamp(0, 1)
    together = ssim(a, b)
    alone = torch.stack([ssim(a[i:i + 1], b[i:i + 1])[0] for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_ssim_against_fixed_references_gives_ssims_values_and_gradients():
    generator = torch.Generator().manual_seed(4)
    references = torch.rand(5, 3, 24, 30, generator=generator)
    noisy = (references + 0.2 * torch.randn(references.shape, generator=generator)).clamp(0, 1)
    against = SsimAgainst(references)
    which = torch.tensor([3, 0, 4])
    plain = noisy[which].clone().requires_grad_(True)
    cached = noisy[which].clone().requires_grad_(True)
    expected, got = ssim(plain, references[which]), against(cached, which)
    assert torch.allclose(got, expected, atol=1e-6) and expected.min() < 0.9  # not all trivially 1
    (plain_gradient,) = torch.autograd.grad(expected.sum(), plain)
    (cached_gradient,) = torch.autograd.grad(got.sum(), cached)
    assert torch.allclose(cached_gradient, plain_gradient, atol=1e-7, rtol=1e-5)
    assert torch.allclose(against(noisy), ssim(noisy, references), atol=1e-6)
    with pytest.raises(ValueError):
        against(noisy[:2])  # two images against five references
    with pytest.raises(ValueError):
        SsimAgainst(torch.rand(1, 3, 8, 8))


def test_ssim_rejects_tiny_or_mismatched_images():
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))


def test_box_filter_sum_by_hand():
    image = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    sums = box_filter_sum(image, 2)
    assert sums.shape == (1, 1, 2, 2)
    assert sums.flatten().tolist() == [12.0, 16.0, 24.0, 28.0]
    assert box_filter_sum(image, 3).flatten().tolist() == [45.0]


def test_box_filter_sum_is_per_channel():
    image = torch.stack([torch.ones(4, 5), 2 * torch.ones(4, 5), torch.zeros(4, 5)])[None]
    sums = box_filter_sum(image, 4)
    assert sums.shape == (1, 3, 1, 2)
    assert sums[0, :, 0, 0].tolist() == [16.0, 32.0, 0.0]


def test_feature_distance_and_cosine_per_sample():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert feature_distance(a, b).tolist() == pytest.approx([5.0, 2 ** 0.5])
    assert cosine_similarity(a, a).tolist() == pytest.approx([1.0, 1.0])
    assert cosine_similarity(a[1:], b[1:]).tolist() == pytest.approx([0.0])


def test_gaussian_blur_matches_scipy_mirror_mode():
    ndimage = pytest.importorskip("scipy.ndimage")
    from avpcli.metrics import gaussian_blur

    images = torch.rand(2, 3, 40, 33, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = gaussian_blur(images, 2.0)
    for image, blurred in zip(images, ours):
        for channel in range(3):
            expected = ndimage.gaussian_filter(image[channel].numpy(), 2.0, mode="mirror", truncate=3.0)
            assert torch.allclose(blurred[channel], torch.from_numpy(expected), atol=1e-10)


def test_gaussian_blur_keeps_a_constant_also_on_small_images():
    from avpcli.metrics import gaussian_blur

    assert torch.allclose(gaussian_blur(torch.full((1, 3, 20, 20), 0.3), 3.0), torch.full((1, 3, 20, 20), 0.3))
    # Smaller than the ±3σ taps: cut at the image size, still a weighted mean (a constant stays constant).
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 8, 8), 0.7), 3.0), torch.full((1, 3, 8, 8), 0.7))
    with pytest.raises(ValueError):
        gaussian_blur(torch.rand(1, 3, 1, 8), 3.0)


def test_luminance_weights():
    from avpcli.metrics import luminance

    pixel = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    assert luminance(pixel).item() == pytest.approx(0.299 + 0.5 * 0.587)
    assert luminance(torch.ones(1, 3, 2, 2)).allclose(torch.ones(1, 1, 2, 2))


def test_lowpass_correlation_known_answers():
    from avpcli.metrics import lowpass_correlation

    generator = torch.Generator().manual_seed(0)
    # A smooth "scene": a bright disc on a dark background.
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = ((rows - 30) ** 2 + (cols - 34) ** 2 < 15 ** 2).float()
    scene = (0.2 + 0.6 * disc).expand(1, 3, 64, 64).contiguous()
    noise = torch.rand(1, 3, 64, 64, generator=generator)
    assert lowpass_correlation(scene, scene).item() == pytest.approx(1.0, abs=1e-5)
    assert lowpass_correlation(1 - scene, scene).item() == pytest.approx(-1.0, abs=1e-5)
    assert lowpass_correlation(torch.full_like(scene, 0.5), scene).item() == 0.0
    assert abs(lowpass_correlation(noise, scene).item()) < 0.3
    # The scene hidden under strong noise at a twentieth of its contrast: invisible to SSIM, not to a blur.
    hidden = (0.5 + 0.05 * (scene - 0.5) + 0.45 * (noise - 0.5)).clamp(0, 1)
    assert ssim(hidden, scene).item() < 0.1
    assert lowpass_correlation(hidden, scene).item() > 0.6


def test_lowpass_correlation_is_per_sample():
    from avpcli.metrics import lowpass_correlation

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    others = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    together = lowpass_correlation(images, others)
    alone = torch.cat([lowpass_correlation(images[i:i + 1], others[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_lowpass_correlation_works_on_images_smaller_than_the_blur():
    from avpcli.metrics import lowpass_correlation

    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    assert lowpass_correlation(images, images).allclose(torch.ones(2), atol=1e-5)


# --------------------------------------------------------------------------------------------
# The leak measures (what a filter and a contrast stretch show of x in x')


def _face_like(size: int = 48) -> torch.Tensor:
    """A grey oval with two dark eyes and a mouth on a light background, as (1,3,size,size)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    image = torch.full((size, size), 0.8)
    image[(xs / 0.6) ** 2 + (ys / 0.8) ** 2 < 1] = 0.55
    for centre_x in (-0.25, 0.25):
        image[(xs - centre_x) ** 2 + (ys + 0.25) ** 2 < 0.01] = 0.1
    image[((ys - 0.4).abs() < 0.05) & (xs.abs() < 0.25)] = 0.2
    return image.expand(1, 3, size, size).clone()


def test_pearson_correlation_by_hand():
    from avpcli.metrics import pearson_correlation

    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert float(pearson_correlation(a, 2 * a + 1)[0]) == pytest.approx(1.0)
    assert float(pearson_correlation(a, -a)[0]) == pytest.approx(-1.0)
    # x = (1,2,3,4), y = (1,3,2,4): centred (−1.5,−.5,.5,1.5)·(−1.5,.5,−.5,1.5) = 4, over 5 → 0.8
    assert float(pearson_correlation(a, torch.tensor([[1.0, 3.0, 2.0, 4.0]]))[0]) == pytest.approx(0.8)
    assert float(pearson_correlation(a, torch.ones(1, 4))[0]) == 0.0  # a flat image correlates 0


@pytest.mark.parametrize("name", ["lowpass_correlation", "bandpass_correlation", "edge_correlation"])
def test_a_face_correlates_with_itself_its_faint_copy_and_not_with_noise(name):
    from avpcli import metrics

    measure = getattr(metrics, name)
    face = _face_like()
    noise = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    faint = 0.7 * noise + 0.3 * face  # a face at under half the contrast of the noise over it
    assert float(measure(face, face)[0]) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(measure(noise, face)[0])) < 0.1
    assert float(measure(faint, face)[0]) > 0.4


def test_a_pixel_permuted_face_scores_near_zero_on_band_pass_and_edges():
    from avpcli.metrics import bandpass_correlation, edge_correlation
    from avpcli.scramble import Scramble

    face = _face_like(96)
    permuted = Scramble(bytes(range(32)))(face)
    assert abs(float(bandpass_correlation(permuted, face)[0])) < 0.05
    assert abs(float(edge_correlation(permuted, face)[0])) < 0.05
    assert float(bandpass_correlation(face.roll(1, -1), face)[0]) > 0.9  # a shift by a pixel still shows it


def test_difference_of_gaussians_removes_a_constant_and_sobel_finds_a_step():
    from avpcli.metrics import difference_of_gaussians, sobel_magnitude

    assert difference_of_gaussians(torch.full((1, 1, 20, 20), 0.3)).abs().max() < 1e-6
    step = torch.zeros(1, 1, 6, 6)
    step[..., 3:] = 1.0
    magnitude = sobel_magnitude(step)[0, 0]
    # Sobel x at the step: (1 + 2 + 1)·1 = 4 on the two columns beside it, 0 far from it.
    assert magnitude[2, 2].item() == pytest.approx(4.0) and magnitude[2, 3].item() == pytest.approx(4.0)
    assert magnitude[2, 0].item() == 0.0 and magnitude[2, 5].item() == 0.0


def test_colour_mean_correlation_across_images():
    from avpcli.metrics import colour_mean_correlation

    colours = torch.tensor([[0.2, 0.4, 0.6], [0.9, 0.5, 0.1], [0.3, 0.3, 0.8], [0.7, 0.6, 0.5]])
    originals = colours[:, :, None, None].expand(4, 3, 8, 8)
    assert colour_mean_correlation(originals * 0.5 + 0.1, originals) == pytest.approx(1.0)
    grey = torch.full((4, 3, 8, 8), 0.5) + torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 1e-3
    assert abs(colour_mean_correlation(grey, originals)) < 0.6
    with pytest.raises(ValueError, match="at least two"):
        colour_mean_correlation(originals[:1], originals[:1])
    # A fixed offset per channel, the same for every image, tells nothing of any image: r 0, not 1.
    offsets = torch.tensor([0.3, 0.5, 0.7])[None, :, None, None].expand(4, 3, 8, 8)
    assert abs(colour_mean_correlation(offsets + grey - 0.5, originals * 0 + offsets)) < 1e-6


@pytest.mark.parametrize("shape", [(150, 150), (112, 96), (32, 32), (9, 13)])
def test_leak_filters_by_fft_equal_the_convolutions(shape):
    from avpcli.metrics import LeakFilters, difference_of_gaussians, gaussian_blur, luminance, sobel_magnitude

    luma = luminance(torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(2)))
    filtered = LeakFilters(*shape)(luma)
    assert torch.allclose(filtered[:, 0:1], gaussian_blur(luma, 3.0), atol=1e-5)
    assert torch.allclose(filtered[:, 1:2], difference_of_gaussians(luma), atol=1e-5)
    assert torch.allclose(filtered[:, 2:3], sobel_magnitude(gaussian_blur(luma, 2.0)), atol=1e-5)
