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


def test_box_iou_on_hand_computed_boxes():
    assert evaluate.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    # Two 10×10 boxes shifted by 5: intersection 50, union 150.
    assert evaluate.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    # A 4×4 box inside a 10×10 one: 16 / 100.
    assert evaluate.box_iou((2, 2, 6, 6), (0, 0, 10, 10)) == pytest.approx(0.16)
    assert evaluate.box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert evaluate.box_iou((0, 0, 10, 10), (30, 30, 40, 40)) == 0.0
    assert evaluate.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty boxes
    # Boxes reaching outside the chip (MTCNN's can) are measured as they are.
    assert evaluate.box_iou((-10, -10, 10, 10), (0, 0, 10, 10)) == pytest.approx(0.25)


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


# ------------------------------------------------------------------------------------------------
# Privacy: filters, leak correlations, ranks


def test_percentile_stretch_maps_the_1st_and_99th_percentiles_to_black_and_white():
    # 0, 1, ..., 100: the 1st percentile is 1 and the 99th is 99 (linear interpolation).
    image = torch.arange(101.0).view(1, 1, 1, 101)
    stretched = evaluate.percentile_stretch(image)
    assert stretched[0, 0, 0, 50].item() == pytest.approx(49 / 98)
    assert stretched[0, 0, 0, 0].item() == 0.0 and stretched[0, 0, 0, 100].item() == 1.0
    # Per channel: a second channel at ten times the scale stretches to the same picture.
    both = torch.cat([image, 10 * image], dim=1)
    stretched_both = evaluate.percentile_stretch(both)
    assert torch.allclose(stretched_both[:, 0], stretched_both[:, 1])
    assert torch.equal(evaluate.percentile_stretch(torch.full((1, 1, 4, 4), 0.3)), torch.zeros(1, 1, 4, 4))


def test_median_filter_on_hand_computed_images():
    # The centre of a 5×5 window over 0..24 is their median, 12.
    ramp = torch.arange(25.0).view(1, 1, 5, 5)
    assert evaluate.median_filter(ramp, 5)[0, 0, 2, 2].item() == 12.0
    # A lone bright pixel (salt noise) vanishes; a straight step edge stays exactly where it is.
    salt = torch.zeros(1, 1, 7, 7)
    salt[0, 0, 3, 3] = 1.0
    assert torch.equal(evaluate.median_filter(salt, 5), torch.zeros(1, 1, 7, 7))
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0
    assert torch.equal(evaluate.median_filter(step, 5), step)
    with pytest.raises(ValueError):
        evaluate.median_filter(step, 4)


def test_downscale_and_back_keeps_block_averages():
    # Four constant 4×4 blocks: each corner of the enlarged thumbnail is its block's value.
    blocks = torch.tensor([[0.1, 0.5], [0.7, 0.9]]).repeat_interleave(4, 0).repeat_interleave(4, 1).view(1, 1, 8, 8)
    restored = evaluate.downscale_and_back(blocks, 4)
    assert restored.shape == blocks.shape
    corners = [restored[0, 0, 0, 0], restored[0, 0, 0, 7], restored[0, 0, 7, 0], restored[0, 0, 7, 7]]
    assert [round(float(value), 6) for value in corners] == [0.1, 0.5, 0.7, 0.9]
    assert torch.allclose(evaluate.downscale_and_back(torch.full((1, 3, 12, 12), 0.4)), torch.full((1, 3, 12, 12), 0.4))


@pytest.mark.parametrize("reveal", evaluate.REVEAL_FILTERS, ids=lambda reveal: reveal.name)
def test_every_filter_gives_a_picture_in_range_even_for_a_flat_image(reveal):
    noise = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    for images in (noise, torch.full((1, 3, 24, 24), 0.5)):
        shown = reveal.apply(images)
        assert shown.shape == images.shape and torch.isfinite(shown).all()
        assert shown.min() >= 0 and shown.max() <= 1
    assert evaluate.reveal_filter(reveal.name) is reveal


def _face_like(size: int = 64) -> torch.Tensor:
    """A grey oval head with two dark eyes and a dark mouth on a light background, (1, 3, size, size)."""
    rows, cols = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    scale = size / 64
    head = ((rows - 32 * scale) / (24 * scale)) ** 2 + ((cols - 32 * scale) / (18 * scale)) ** 2 < 1
    eyes = ((rows - 26 * scale) ** 2 + (cols - 24 * scale) ** 2 < (3 * scale) ** 2) | \
           ((rows - 26 * scale) ** 2 + (cols - 40 * scale) ** 2 < (3 * scale) ** 2)
    mouth = ((rows - 44 * scale).abs() < 2 * scale) & ((cols - 32 * scale).abs() < 8 * scale)
    grey = 0.85 - 0.35 * head.float() - 0.3 * (eyes | mouth).float()
    return grey.expand(1, 3, size, size).contiguous()


def test_leak_correlations_see_a_face_under_noise_and_not_noise_or_a_permutation():
    face = _face_like()
    generator = torch.Generator().manual_seed(6)
    noise = torch.rand(1, 3, 64, 64, generator=generator)
    hidden = (0.5 + 0.2 * (face - 0.5) + 0.4 * (noise - 0.5)).clamp(0, 1)
    leaks = evaluate.leak_correlations(hidden, face)
    assert leaks["lowpass_abs"][0] > 0.8 and leaks["bandpass_abs"][0] > 0.3 and leaks["edge"][0] > 0.5
    unrelated = evaluate.leak_correlations(noise, face)
    assert max(unrelated["lowpass_abs"][0], unrelated["bandpass_abs"][0], abs(unrelated["edge"][0])) < 0.2
    # The face's own pixels, moved to random places: the same histogram, none of the layout.
    permuted = face.flatten(2)[..., torch.randperm(64 * 64, generator=generator)].view(1, 3, 64, 64)
    scattered = evaluate.leak_correlations(permuted, face)
    assert scattered["bandpass_abs"][0] < 0.1 and abs(scattered["edge"][0]) < 0.1


def test_identity_ranks_count_identities_strictly_nearer():
    gallery = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    labels = ["ann", "bob", "cy", "ann"]
    queries = torch.tensor([[0.9], [0.9], [0.9], [0.1], [0.1]])
    ranks = evaluate.identity_ranks(queries, ["bob", "ann", "cy", "ann", "dee"], gallery, labels,
                                    excluded=[set(), set(), set(), {0}, set()])
    # From 0.9: bob 0.1, ann 0.9, cy 2.1. From 0.1 without ann's first photo: bob 0.9, cy 2.9, ann 4.9.
    assert ranks == [1, 2, 3, 3, None]
    assert evaluate.rank_summary([1, 3, 12, None]) == {"queries": 3, "unranked": 1, "top1": 1 / 3, "top10": 2 / 3,
                                                       "median_rank": 3.0}
    assert evaluate.rank_summary([None])["top1"] is None
    assert evaluate.chance_ranks(400) == {"top1": 1 / 400, "top10": 10 / 400, "median_rank": 200.5}


# ------------------------------------------------------------------------------------------------
# Key recovery


def _scrambled_pairs(count: int, size: int = 8, noise: float = 0.02, seed: int = 7):
    """Originals x and ciphertexts x′ = S⁻¹(x) + small noise for a known scramble S."""
    import hashlib

    from avpcli.scramble import Scramble

    scramble = Scramble(hashlib.sha256(b"recovery test").digest())
    generator = torch.Generator().manual_seed(seed)
    originals = torch.rand(count, 3, size, size, generator=generator)
    encrypted = (scramble.inverse(originals) + noise * torch.randn(originals.shape, generator=generator)).clamp(0, 1)
    return scramble, originals, encrypted


@pytest.mark.parametrize(("rule", "few"), [("correlation", 3), ("distance", 1)])
def test_recover_scramble_finds_a_known_scramble_from_enough_pairs(rule, few):
    scramble, originals, encrypted = _scrambled_pairs(20)
    truth = scramble.plan(8, 8, torch.device("cpu"))
    many = evaluate.plan_agreement(evaluate.recover_scramble(encrypted, originals, rule, block_rows=50), truth)
    some = evaluate.plan_agreement(evaluate.recover_scramble(encrypted[:few], originals[:few], rule, block_rows=50),
                                   truth)
    assert many["recovered"] >= 0.95
    assert some["recovered"] < 0.3 and some["recovered"] <= some["source"]


def test_the_correlation_rule_refuses_fewer_than_three_pairs():
    _, originals, encrypted = _scrambled_pairs(2)
    with pytest.raises(ValueError, match="at least 3 pairs"):
        evaluate.recover_scramble(encrypted, originals, "correlation")


class ScrambledIdentity(nn.Module):
    """A key whose G is exactly the identity: G(S(x′)) = S(x′)."""

    def __init__(self, scramble):
        super().__init__()
        self.scramble, self.generator = scramble, nn.Identity()

    def forward(self, images):
        return self.generator(self.scramble(images))


def test_key_recovery_curve_measures_the_guess_on_held_out_pairs():
    scramble, originals, encrypted = _scrambled_pairs(26, size=16, noise=0.01)
    curve = evaluate.key_recovery_curve(encrypted[:20], originals[:20], encrypted[20:], originals[20:],
                                        ScrambledIdentity(scramble), [1, 20], rules=["distance"], block_rows=300)
    assert [(result.pairs, result.rule) for result in curve] == [(1, "distance"), (20, "distance")]
    assert curve[1].recovered == 1.0 and curve[1].ssim_unscrambled > 0.9
    assert curve[0].ssim_unscrambled < curve[1].ssim_unscrambled
    assert curve[1].ssim_decrypted == pytest.approx(curve[1].ssim_unscrambled)
    assert set(curve[0].to_dict()) == {"pairs", "rule", "source", "recovered", "ssim_unscrambled",
                                       "lowpass_unscrambled", "ssim_decrypted"}
    with pytest.raises(ValueError):
        evaluate.key_recovery_curve(encrypted[:2], originals[:2], encrypted[20:], originals[20:], scramble, [3])


def test_pairs_of_other_images_teach_nothing_of_a_per_image_scramble():
    import hashlib

    from avpcli.scramble import PER_IMAGE_SCHEME, Scramble

    scramble = Scramble(hashlib.sha256(b"recovery test").digest(), PER_IMAGE_SCHEME)
    generator = torch.Generator().manual_seed(7)
    originals = torch.randint(0, 256, (26, 3, 16, 16), generator=generator).float() / 255
    noisy = scramble.preimage(originals) + 0.01 * torch.randn(originals.shape, generator=generator)
    encrypted = scramble.stamp(noisy.clamp(0, 1), originals)  # the nonce exact, as the engine keeps it
    key = ScrambledIdentity(scramble)
    curve = evaluate.key_recovery_curve(encrypted[:20], originals[:20], encrypted[20:], originals[20:], key, [20],
                                        rules=["distance"], block_rows=300)
    # With one plan per key, 20 such pairs recover the whole plan (the test above); per image, a guess's share.
    assert curve[0].recovered < 0.01 and curve[0].ssim_unscrambled < 0.2
    truth = evaluate.key_plan(key, 16, 16, encrypted[20:])
    assert truth.source.shape == (6, 3 * 16 * 16)
    with pytest.raises(ValueError, match="per-image"):
        evaluate.key_plan(key, 16, 16)


def test_key_plan_of_a_key_without_scramble_is_the_identity():
    plan = evaluate.key_plan(KeyGenerator(ngf=4, blocks=1, norm="batch"), 2, 3)
    assert torch.equal(plan.source, torch.arange(18)) and not plan.inverted.any()


def test_attacker_takes_a_key_model_and_copies_its_generator(tiny_key_file):
    from avpcli.key import load_key

    key = load_key(tiny_key_file).model
    assert key.scrambles
    pairs = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    attacker = evaluate.train_attacker(pairs, pairs, key, steps=1, batch_size=2)
    generator = key.generator
    assert isinstance(attacker, KeyGenerator)
    assert (attacker.ngf, attacker.blocks, attacker.norm) == (generator.ngf, generator.blocks, generator.norm)
