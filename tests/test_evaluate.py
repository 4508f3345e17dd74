"""The analyses of avpcli.evaluate on inputs whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from avpcli import evaluate
from avpcli.key import KeyGenerator


def _ramp(size: int = 64) -> torch.Tensor:
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    grey = (rows + columns).float() / (2 * (size - 1))
    return grey.expand(3, size, size).clone()


@pytest.mark.parametrize("direction", evaluate.DIRECTIONS)
def test_correlation_of_a_constant_image_is_undefined(direction):
    assert math.isnan(evaluate.adjacent_correlation(torch.full((3, 32, 32), 0.5), direction))


@pytest.mark.parametrize("direction", evaluate.DIRECTIONS)
def test_correlation_of_a_smooth_ramp_is_one(direction):
    assert evaluate.adjacent_correlation(_ramp(), direction) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("direction", evaluate.DIRECTIONS)
def test_correlation_of_iid_noise_is_near_zero(direction):
    noise = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    # 3000 pairs: the standard error of r is about 1/sqrt(3000) ≈ 0.018.
    assert abs(evaluate.adjacent_correlation(noise, direction)) < 0.07


def test_correlation_table_reports_undefined_images_separately():
    images = torch.stack([torch.full((3, 32, 32), 0.2), _ramp(32)])
    table = evaluate.correlation_table(images, pairs=500)
    assert table["horizontal"]["count"] == 1 and table["horizontal"]["undefined"] == 1
    assert table["horizontal"]["mean"] == pytest.approx(1.0, abs=1e-3)


def test_summary_of_nothing_defined_is_none():
    assert evaluate.summarize([float("nan")])["mean"] is None
    assert evaluate.summarize([1.0, 3.0]) == {"count": 2, "undefined": 0, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}


class MeanColour(nn.Module):
    """A fake embedding model: an image's feature is its mean colour, so identities are colours."""

    spec = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


class Identity(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


def _solid(colour) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32).view(3, 1, 1).expand(3, 16, 16).clone()


def test_identification_on_a_toy_gallery_gives_the_known_accuracy():
    model = MeanColour()
    person, distractor, far = (0.1, 0.1, 0.1), (0.8, 0.8, 0.8), (0.1, 0.9, 0.1)
    # Three images at the person's colour, one outlier just past the distractor's colour.
    person_images = torch.stack([_solid(person)] * 3 + [_solid((0.85, 0.85, 0.85))])
    probes = {"p": evaluate.features(model, person_images)}
    gallery = evaluate.features(model, torch.stack([_solid(distractor), _solid(far)]))
    result = evaluate.identify_turns(probes, probes, gallery, ["d", "f"])
    # Turns 0–2: the two other plain images find the inserted one, the outlier finds the distractor
    # (2/3 each). Turn 3: the outlier is inserted; the plain images are nearer the distractor (0/3).
    assert (result.correct, result.total, result.turns) == (6, 12, 4)
    assert result.accuracy == pytest.approx(0.5)
    only_first = evaluate.identify_turns(probes, probes, gallery, ["d", "f"], turns={"p": [0]})
    assert (only_first.correct, only_first.total) == (2, 3)


def test_identification_with_an_unrecognizable_inserted_image_fails_and_the_same_identity_in_the_gallery_counts():
    model = MeanColour()
    probes = {"p": evaluate.features(model, torch.stack([_solid((0.1, 0.1, 0.1))] * 3))}
    wrong = {"p": evaluate.features(model, torch.stack([_solid((0.9, 0.9, 0.9))] * 3))}
    gallery = evaluate.features(model, torch.stack([_solid((0.2, 0.2, 0.2))]))
    assert evaluate.identify_turns(probes, wrong, gallery, ["d"]).accuracy == 0.0
    assert evaluate.identify_turns(probes, wrong, gallery, ["p"]).accuracy == 1.0
    assert evaluate.identify_turns(probes, probes, gallery[:0], []).accuracy == 1.0


def test_identification_checks_its_inputs():
    probes = {"p": torch.zeros(2, 3)}
    with pytest.raises(ValueError):
        evaluate.identify_turns(probes, {"p": torch.zeros(3, 3)}, torch.zeros(0, 3), [])
    with pytest.raises(ValueError):
        evaluate.identify_turns(probes, probes, torch.zeros(2, 3), ["a"])


def test_ssim_of_identical_images_is_one_and_their_features_match():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = torch.round(images * 255) / 255
    result = evaluate.measure_quality(images, images, MeanColour(), Identity(), "embedding", ["a", "b"])
    assert result.ssim_encrypted == pytest.approx([1.0, 1.0])
    assert result.ssim_decrypted == pytest.approx([1.0, 1.0])
    assert result.feature_distance == pytest.approx([0.0, 0.0], abs=1e-6)
    assert result.summary()["cosine"]["mean"] == pytest.approx(1.0)
    assert evaluate.decryption_ssim(images, images, Identity()) == pytest.approx([1.0, 1.0])


def test_top1_accuracy():
    logits = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert evaluate.top1_accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert math.isnan(evaluate.top1_accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


def test_histogram_counts_every_pixel_and_entropy_is_in_bits():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    counts = evaluate.grey_histogram(images)
    assert counts.shape == (256,) and int(counts.sum()) == 2 * 16 * 16
    assert evaluate.histogram_entropy(torch.ones(256)) == pytest.approx(8.0)
    assert evaluate.histogram_entropy(torch.tensor([5, 0, 0])) == pytest.approx(0.0)


def test_detection_rate():
    assert evaluate.detection_rate([True, False, False, True]) == 0.5
    assert math.isnan(evaluate.detection_rate([]))


def test_attacker_has_the_keys_architecture_and_comes_back_frozen():
    key = KeyGenerator(ngf=4, blocks=1, norm="batch")
    pairs = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    attacker = evaluate.train_attacker(pairs, pairs, key, steps=2, batch_size=2)
    assert isinstance(attacker, KeyGenerator) and (attacker.ngf, attacker.blocks, attacker.norm) == (4, 1, "batch")
    assert not attacker.training and not any(parameter.requires_grad for parameter in attacker.parameters())
    assert len(evaluate.decryption_ssim(pairs, pairs, attacker)) == 3
    with pytest.raises(ValueError):
        evaluate.train_attacker(pairs, pairs[:2], key, steps=1)


def test_blur_reveal_shows_a_scene_hidden_under_noise():
    from avpcli.metrics import lowpass_correlation, ssim

    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    scene = (0.2 + 0.6 * ((rows - 32) ** 2 + (cols - 30) ** 2 < 14 ** 2).float()).expand(1, 3, 64, 64)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    hidden = (0.5 + 0.04 * (scene - 0.5) + 0.45 * (noise - 0.5)).clamp(0, 1)
    revealed = evaluate.blur_reveal(hidden)
    assert revealed.shape == hidden.shape and revealed.min() >= 0 and revealed.max() <= 1
    assert torch.equal(revealed[:, 0], revealed[:, 1]), "a grey picture"
    # Hardly any structure to SSIM in the ciphertext, yet the stretched blur looks like the scene.
    assert ssim(hidden, scene).item() < 0.1
    assert ssim(revealed, scene.contiguous()).item() > 3 * ssim(hidden, scene).item()
    assert lowpass_correlation(revealed, scene.contiguous()).item() > 0.6
    # A constant image stays a valid picture (no division by zero).
    assert torch.isfinite(evaluate.blur_reveal(torch.full((1, 3, 32, 32), 0.5))).all()
