"""The key's secret scramble S: exact inverse, determinism per size, independence, gradients."""

import hashlib

import pytest
import torch

from avpcli.scramble import NONCE_PIXELS, PER_IMAGE_SCHEME, SECRET_BYTES, Scramble, make_plan

SECRET = hashlib.sha256(b"test secret").digest()
OTHER_SECRET = hashlib.sha256(b"another secret").digest()


@pytest.mark.parametrize("shape", [(150, 150), (112, 96), (32, 32), (1, 1), (7, 13), (250, 3)])
def test_inverse_is_exact_for_any_size(shape):
    scramble = Scramble(SECRET)
    images = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    scrambled = scramble(images)
    assert scrambled.shape == images.shape
    assert torch.equal(scramble.inverse(scrambled), images)
    assert torch.equal(scramble(scramble.inverse(images)), images)


def test_values_stay_in_range_and_on_the_8bit_grid():
    images = torch.randint(0, 256, (1, 3, 20, 20)).float() / 255
    scrambled = Scramble(SECRET)(images)
    assert scrambled.min() >= 0 and scrambled.max() <= 1
    assert torch.allclose(torch.round(scrambled * 255) / 255, scrambled, atol=1e-6)


def test_channels_last_input_gives_the_same_result():
    images = torch.rand(2, 3, 16, 12)
    scramble = Scramble(SECRET)
    assert torch.equal(scramble(images), scramble(images.contiguous(memory_format=torch.channels_last)))


def test_plan_is_a_permutation_with_half_of_each_channel_pair_inverted():
    plan = make_plan(SECRET, 15, 11)
    pixels = 15 * 11
    assert sorted(plan.source.tolist()) == list(range(3 * pixels))
    source_channel = (plan.source // pixels).view(3, pixels)
    inverted = plan.inverted.view(3, pixels)
    for output_channel in range(3):
        for channel in range(3):
            members = source_channel[output_channel] == channel
            assert int(inverted[output_channel][members].sum()) == int(members.sum()) // 2


@pytest.mark.parametrize("colour", [(0.9, 0.6, 0.5), (0.1, 0.2, 0.8), (0.0, 0.0, 0.0)])
def test_a_flat_colour_scrambles_to_grey(colour):
    # Half of each channel pair inverted: the ciphertext's mean colour no longer tells the original's.
    image = torch.tensor(colour).view(1, 3, 1, 1).expand(1, 3, 40, 30)
    means = Scramble(SECRET)(image).mean(dim=(2, 3))
    assert torch.allclose(means, torch.full_like(means, 0.5), atol=3 / (40 * 30))


def test_each_pixel_keeps_its_three_values_together():
    # The pixel permutation moves whole pixels; the channel permutation stays inside a pixel.
    plan = make_plan(SECRET, 9, 10)
    pixels = 90
    source = plan.source.view(3, pixels)
    assert torch.equal(source % pixels, (source % pixels)[0].expand(3, pixels))
    assert all(sorted((source[:, p] // pixels).tolist()) == [0, 1, 2] for p in range(pixels))


def test_plan_is_deterministic_and_pinned():
    first, second = make_plan(SECRET, 150, 150), make_plan(SECRET, 150, 150)
    assert torch.equal(first.source, second.source) and torch.equal(first.inverted, second.inverted)
    # Pinned bytes: a change of the derivation would make every existing key decrypt wrongly.
    digest = hashlib.sha256(first.source.numpy().tobytes() + first.inverted.numpy().tobytes()).hexdigest()
    assert digest == PINNED_150


PINNED_150 = "080f79d3a3aaa0ae0ad2d80b37420219c492ab5c8e25b3130e78bd3be5e4660d"


def _agreement(first, second) -> float:
    return float((first.source == second.source).float().mean())


def test_sizes_and_secrets_give_unrelated_plans():
    base = make_plan(SECRET, 64, 64)
    other_secret = make_plan(OTHER_SECRET, 64, 64)
    # A random permutation of n values fixes about one of them: agreement near 1/n, not near 1.
    assert _agreement(base, other_secret) < 0.01
    assert float((base.inverted == other_secret.inverted).float().mean()) == pytest.approx(0.5, abs=0.03)
    # Neighbouring sizes are not shifted copies of each other: on the common positions they agree by chance only.
    wider = make_plan(SECRET, 64, 65)
    assert float((base.source.view(3, 64 * 64)[:, :100] % 4096
                  == wider.source.view(3, 64 * 65)[:, :100] % 4096).float().mean()) < 0.05


def test_neighbouring_pixels_land_far_apart():
    plan = make_plan(SECRET, 100, 100)
    positions = plan.source[:10_000]  # channel 0's pixels, in output order
    rows, columns = (positions % 10_000) // 100, positions % 100
    steps = (rows[1:] - rows[:-1]).abs() + (columns[1:] - columns[:-1]).abs()
    assert float(steps.float().mean()) > 40  # a uniform shuffle: about 67 on a 100×100 grid


def test_gradient_flows_through_the_scramble():
    scramble = Scramble(SECRET)
    images = torch.rand(1, 3, 8, 8, requires_grad=True)
    weights = torch.rand(1, 3, 8, 8)
    (scramble(images) * weights).sum().backward()
    # S(x)_i = m_i + (1 − 2 m_i)·x_source(i), so the gradient at source(i) is (1 − 2 m_i)·w_i.
    plan = make_plan(SECRET, 8, 8)
    assert torch.allclose(images.grad.flatten()[plan.source], (1 - 2 * plan.inverted) * weights.flatten())


def test_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least"):
        Scramble(b"x" * (SECRET_BYTES - 1))


def test_the_secret_is_not_in_the_modules_text():
    assert SECRET.hex() not in repr(Scramble(SECRET))


# --------------------------------------------------------------------------------------------
# One plan per image (PER_IMAGE_SCHEME): the nonce in the top row's first pixels picks it


def _per_image() -> Scramble:
    return Scramble(SECRET, PER_IMAGE_SCHEME)


def _levels(*shape, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float() / 255


def test_the_nonce_is_read_from_the_first_pixels_exactly():
    scramble = _per_image()
    images = _levels(2, 3, 6, 8)
    nonces = scramble.nonces_of(images)
    assert len(nonces) == 2 and all(len(nonce) == 3 * NONCE_PIXELS for nonce in nonces)
    # Pixel by pixel, R, G, B: the 8-bit values of the top row's first NONCE_PIXELS pixels.
    expected = (images[0, :, 0, :NONCE_PIXELS].T * 255).round().to(torch.uint8).flatten().tolist()
    assert list(nonces[0]) == expected
    # Within half a level of the 8-bit grid (an optimizer's float image) it reads the same.
    assert scramble.nonces_of(images + 0.4 / 255) == nonces


def test_each_nonce_has_its_own_plan_and_the_rest_of_the_image_does_not_matter():
    scramble = _per_image()
    first, second = _levels(1, 3, 16, 16, seed=1), _levels(1, 3, 16, 16, seed=2)
    assert _agreement(scramble.plans_of(first).row(0), scramble.plans_of(second).row(0)) < 0.05
    same_nonce = second.clone()
    same_nonce[:, :, 0, :NONCE_PIXELS] = first[:, :, 0, :NONCE_PIXELS]
    assert torch.equal(scramble.plans_of(same_nonce).source, scramble.plans_of(first).source)
    # Nor is it the per-size plan, or another secret's plan for the same nonce.
    assert _agreement(scramble.plans_of(first).row(0), make_plan(SECRET, 16, 16)) < 0.05
    assert _agreement(scramble.plans_of(first).row(0),
                      Scramble(OTHER_SECRET, PER_IMAGE_SCHEME).plans_of(first).row(0)) < 0.05


def test_a_batch_is_scrambled_as_its_images_are_one_by_one():
    scramble = _per_image()
    images = _levels(3, 3, 10, 12, seed=3)
    together = scramble(images)
    alone = torch.cat([scramble(images[index:index + 1]) for index in range(3)])
    assert torch.equal(together, alone)
    assert torch.allclose(scramble.inverse(together, scramble.nonces_of(images)), images, atol=1e-6)


def test_the_per_image_inverse_needs_the_nonces():
    with pytest.raises(ValueError, match="nonces"):
        _per_image().inverse(_levels(1, 3, 8, 8))


def test_preimages_carry_the_originals_nonce_which_is_keyed_and_repeatable():
    scramble = _per_image()
    originals = _levels(2, 3, 12, 12, seed=4)
    preimage = scramble.preimage(originals)
    assert scramble.nonces_of(preimage) == scramble.nonces_for(originals)
    assert scramble.nonces_for(originals) == scramble.nonces_for(originals.clone())
    assert scramble.nonces_for(originals)[0] != scramble.nonces_for(originals)[1]
    assert Scramble(OTHER_SECRET, PER_IMAGE_SCHEME).nonces_for(originals) != scramble.nonces_for(originals)
    # S maps the preimage onto the original but for the nonce's pixels, which it leaves in place.
    differs = (scramble(preimage) - originals).abs() > 1e-6
    differs[:, :, 0, :NONCE_PIXELS] = False
    assert not differs.any()
    assert torch.equal(scramble(preimage)[:, :, 0, :NONCE_PIXELS], preimage[:, :, 0, :NONCE_PIXELS])


def test_the_nonce_pixels_stay_in_place_and_the_rest_is_a_balanced_shuffle():
    plan = make_plan(SECRET, 10, 12, bytes(range(3 * NONCE_PIXELS)))
    pixels = 120
    assert sorted(plan.source.tolist()) == list(range(3 * pixels))
    fixed = torch.tensor([channel * pixels + column for channel in range(3) for column in range(NONCE_PIXELS)])
    assert torch.equal(plan.source[fixed], fixed) and not plan.inverted[fixed].any()
    # The other pixels go anywhere but to the nonce's places, and about half of their values are inverted.
    moved = plan.source.view(3, pixels)[:, NONCE_PIXELS:]
    assert int((moved % pixels < NONCE_PIXELS).sum()) == 0
    assert float(plan.inverted.view(3, pixels)[:, NONCE_PIXELS:].mean()) == pytest.approx(0.5, abs=0.03)


def test_the_decrypted_nonce_pixels_come_from_the_row_below():
    decrypted = _levels(2, 3, 6, 8, seed=8)
    filled = _per_image().fill_nonce(decrypted)
    assert torch.equal(filled[:, :, 0, :NONCE_PIXELS], decrypted[:, :, 1, :NONCE_PIXELS])
    assert torch.equal(filled[:, :, 1:], decrypted[:, :, 1:]) and torch.equal(filled[:, :, 0, NONCE_PIXELS:],
                                                                                decrypted[:, :, 0, NONCE_PIXELS:])
    assert Scramble(SECRET).fill_nonce(decrypted) is decrypted


def test_only_the_nonce_pixels_are_pinned():
    mask = _per_image().pinned(5, 7, "cpu")
    assert mask.shape == (1, 1, 5, 7) and int(mask.sum()) == NONCE_PIXELS and bool(mask[0, 0, 0, :NONCE_PIXELS].all())
    assert Scramble(SECRET).pinned(5, 7, "cpu") is None
    assert torch.equal(Scramble(SECRET).stamp(_levels(1, 3, 5, 7), _levels(1, 3, 5, 7, seed=1)), _levels(1, 3, 5, 7))


def test_gradient_flows_through_a_per_image_scramble():
    scramble = _per_image()
    images = _levels(2, 3, 8, 8, seed=5).requires_grad_(True)
    weights = torch.rand(2, 3, 8, 8)
    (scramble(images) * weights).sum().backward()
    plan = scramble.plans_of(images)
    for index in range(2):
        assert torch.allclose(images.grad[index].flatten()[plan.source[index]],
                              (1 - 2 * plan.inverted[index]) * weights[index].flatten())


def test_unknown_schemes_are_refused():
    with pytest.raises(ValueError, match="unknown scramble scheme"):
        Scramble(SECRET, "pixels-v9")


def test_a_part_of_the_last_batch_gets_its_own_rows():
    # The engine scrambles the images still being optimized, a shrinking part of its batch.
    scramble = _per_image()
    images = _levels(4, 3, 8, 8, seed=6)
    whole = scramble(images)
    part = scramble(images[[3, 1]])
    assert torch.equal(part, whole[[3, 1]])
    assert torch.equal(scramble(images[2:3]), whole[2:3])
