"""The key's secret scramble S: exact inverse, determinism per size, independence, gradients."""

import hashlib

import pytest
import torch

from avpcli import scramble as scrambles
from avpcli.scramble import (CHECKED_SCHEME, NONCE_BODY_BYTES, NONCE_PIXELS, NONCE_V2_SCHEME, PER_IMAGE_SCHEME,
                             SCHEME, SCHEMES, SECRET_BYTES, Scramble, make_plan)

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
    assert _digest(first) == PINNED_150


PINNED_150 = "080f79d3a3aaa0ae0ad2d80b37420219c492ab5c8e25b3130e78bd3be5e4660d"


def _digest(plan) -> str:
    """sha256 of a plan as avp before issue #24 stored it: int64 sources, then float32 inversion."""
    return hashlib.sha256(plan.source.to(torch.int64).numpy().tobytes()
                          + plan.inverted.to(torch.float32).numpy().tobytes()).hexdigest()


# Computed with the code before issue #24 (int64 plans, a lexsort; main at 7eeb195): the smaller plans
# of today must give every existing key the same permutation and inversion.
PINNED_BEFORE_24 = {
    ((7, 13), None): "17916502f303c9570c0ec5840af7ef1401a1d542cb8ea1a859ee186234d899c0",
    ((1, 1), None): "38582a150baac43d7dc4b557e2f5a9faaa2a86cfd0bc2c636afb4fb9d80c58e6",
    ((250, 3), None): "e31b0076c906754a63c25ab9a48f11fe5b1e9de17317dce0b60b11a72233a81c",
    ((64, 65), None): "5fdeca88d1dedf7f1ca49e55fe83e1937094029afeec7269c4d174a3b6cbcdbf",
    ((1, 4), None): "16f6f4f580f51bd524872a8a9cf1480e4d1486428704396dfb270f3cce0b9a08",
    ((10, 12), NONCE_V2_SCHEME): "16d63c35d4c5259dde3e9f0787f312dd45ecda248a642d61823a37c15bf2c464",
    ((150, 150), NONCE_V2_SCHEME): "1076f5c8372487837b23bf05c722d7323030d2450c25e4bfe57fbcbfd9da1870",
    ((2, 4), NONCE_V2_SCHEME): "76121080d5c58345e8291f4526766d5b601be8c2804c960d888c258ad2899916",
    ((1, 4), NONCE_V2_SCHEME): "5cc3e6c5b9e8754957969161e0c3da6b4bb9b96a4ae74181c6b42097b7ee2c71",
    ((3, 5), NONCE_V2_SCHEME): "4b7a68e4a452653137d52c048b9031a73bf58d0b008655bea78ed9c31cddb5e2",
}
SCRAMBLED_BEFORE_24 = {
    SCHEME: "3730b452ea74c4fdd808503925c1c33858c8367b2bf86d873f8cfc39d0dd04ed",
    NONCE_V2_SCHEME: "7e8b814ed5cb85aadd3339f91d6ff87dd61932f987dae74695df7a3d2ceae62e",
}


@pytest.mark.parametrize(("shape", "scheme"), list(PINNED_BEFORE_24))
def test_existing_keys_plans_are_those_of_the_code_before_issue_24(shape, scheme):
    nonce = bytes(range(3 * NONCE_PIXELS)) if scheme else None
    plan = make_plan(SECRET, *shape, nonce, scheme)
    assert _digest(plan) == PINNED_BEFORE_24[shape, scheme]
    assert plan.source.dtype == torch.int32 and plan.inverted.dtype == torch.bool


@pytest.mark.parametrize("scheme", list(SCRAMBLED_BEFORE_24))
def test_existing_keys_scramble_a_batch_as_before_issue_24(scheme):
    images = torch.randint(0, 256, (3, 3, 10, 12), generator=torch.Generator().manual_seed(3)).float() / 255
    scramble = Scramble(SECRET, scheme)
    scrambled = scramble(images)
    assert hashlib.sha256(scrambled.numpy().tobytes()).hexdigest() == SCRAMBLED_BEFORE_24[scheme]
    restored = scramble.inverse(scrambled, scramble.nonces_of(images) if scramble.per_image else None)
    assert torch.allclose(restored, images, atol=1e-6)  # 1 − (1 − v) is v within a float's rounding


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
    assert float(plan.inverted.view(3, pixels)[:, NONCE_PIXELS:].float().mean()) == pytest.approx(0.5, abs=0.03)


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


# --------------------------------------------------------------------------------------------
# The key check (CHECKED_SCHEME, nonce-v3, issue #24): 8 bytes of HMAC of the pixels and a 4-byte tag


def _checked(secret: bytes = SECRET) -> Scramble:
    return Scramble(secret, CHECKED_SCHEME)


def _ciphertexts(scramble: Scramble, count: int = 3, height: int = 12, width: int = 10, seed: int = 9) -> torch.Tensor:
    """Images carrying the nonces of `count` originals, as an encryption leaves them (the preimages)."""
    return scramble.preimage(_levels(count, 3, height, width, seed=seed))


def _with_level(images: torch.Tensor, byte: int, level: int) -> torch.Tensor:
    """A copy whose nonce byte `byte` (pixel byte // 3, channel byte % 3 of the top row) holds `level`."""
    changed = images.clone()
    changed[:, byte % 3, 0, byte // 3] = level / 255
    return changed


def test_new_keys_get_the_checked_scheme_and_old_ones_stay_readable():
    assert PER_IMAGE_SCHEME == CHECKED_SCHEME and set(SCHEMES) == {SCHEME, NONCE_V2_SCHEME, CHECKED_SCHEME}
    assert _checked().per_image and _checked().checks_key
    assert Scramble(SECRET, NONCE_V2_SCHEME).per_image and not Scramble(SECRET, NONCE_V2_SCHEME).checks_key


def test_untouched_ciphertexts_pass_the_key_check():
    scramble = _checked()
    images = _ciphertexts(scramble)
    held = scramble.verify(images)
    assert held.dtype == torch.bool and held.shape == (3,) and bool(held.all())
    # What a PNG gives back is the 8-bit grid, and so is what the optimizer's float image reads as.
    assert bool(scramble.verify(torch.round(images * 255) / 255).all())
    assert bool(scramble.verify(images + 0.4 / 255).all())


def test_the_nonce_is_the_pixels_hmac_and_a_tag_of_it():
    scramble, originals = _checked(), _levels(2, 3, 12, 10, seed=9)
    nonces, unchecked = scramble.nonces_for(originals), Scramble(SECRET, NONCE_V2_SCHEME).nonces_for(originals)
    assert [len(nonce) for nonce in nonces] == [3 * NONCE_PIXELS] * 2
    assert [nonce[:NONCE_BODY_BYTES] for nonce in nonces] == [nonce[:NONCE_BODY_BYTES] for nonce in unchecked]
    assert nonces != unchecked and nonces == scramble.nonces_for(originals.clone())
    expected = [scrambles.nonce_tag(SECRET, 12, 10, nonce[:NONCE_BODY_BYTES]) for nonce in nonces]
    assert [nonce[NONCE_BODY_BYTES:] for nonce in nonces] == expected


@pytest.mark.parametrize("byte", range(3 * NONCE_PIXELS))
def test_one_flipped_bit_in_any_nonce_byte_fails_the_check(byte):
    scramble = _checked()
    images = _ciphertexts(scramble, count=1)
    level = round(float(images[0, byte % 3, 0, byte // 3]) * 255)
    flipped = torch.cat([_with_level(images, byte, level ^ (1 << bit)) for bit in range(8)])
    assert scramble.verify(flipped).tolist() == [False] * 8
    # A flip elsewhere leaves the nonce, and the check, as they were.
    elsewhere = images.clone()
    elsewhere[0, 0, 1, 0] = 1 - elsewhere[0, 0, 1, 0]
    assert scramble.verify(elsewhere).tolist() == [True]


def test_another_keys_ciphertexts_fail_the_check():
    mine, other = _checked(), _checked(OTHER_SECRET)
    assert other.verify(_ciphertexts(mine)).tolist() == [False] * 3
    assert mine.verify(_ciphertexts(other)).tolist() == [False] * 3
    assert other.verify(_ciphertexts(other)).tolist() == [True] * 3


def test_another_size_with_the_same_nonce_pixels_fails_the_check():
    scramble = _checked()
    images = _ciphertexts(scramble, count=2, height=12, width=10)
    cropped = [images[:, :, :11], images[:, :, :, :9], images[:, :, :6, :6]]  # the nonce's pixels kept
    grown = torch.zeros(2, 3, 13, 10)
    grown[:, :, :12] = images
    resized = torch.nn.functional.interpolate(images, size=(24, 20), mode="bilinear", align_corners=False)
    resized[:, :, 0, :NONCE_PIXELS] = images[:, :, 0, :NONCE_PIXELS]  # a resize that kept the nonce
    for other_size in [*cropped, grown, resized]:
        assert scramble.nonces_of(other_size) == scramble.nonces_of(images)
        assert scramble.verify(other_size).tolist() == [False, False]


def test_schemes_without_a_check_verify_nothing():
    images = _ciphertexts(_checked())
    assert Scramble(SECRET).verify(images) is None
    assert Scramble(SECRET, NONCE_V2_SCHEME).verify(images) is None


def test_images_too_narrow_for_a_nonce_fail_and_other_shapes_are_refused():
    assert _checked().verify(torch.rand(2, 3, 8, NONCE_PIXELS - 1)).tolist() == [False, False]
    with pytest.raises(ValueError, match="RGB"):
        _checked().verify(torch.rand(3, 8, 8))


def test_the_checked_scheme_has_plans_of_its_own():
    nonce = bytes(range(3 * NONCE_PIXELS))
    checked, unchecked = make_plan(SECRET, 16, 16, nonce, CHECKED_SCHEME), make_plan(SECRET, 16, 16, nonce)
    assert _agreement(checked, unchecked) < 0.05
    with pytest.raises(ValueError, match="no nonce"):
        make_plan(SECRET, 16, 16, nonce, SCHEME)
    with pytest.raises(ValueError, match="nonce has"):
        make_plan(SECRET, 16, 16, None, CHECKED_SCHEME)


def test_verify_makes_no_plan():
    images, scramble = _ciphertexts(_checked()), _checked()
    assert scramble.verify(images).tolist() == [True] * 3 and scramble.kept_bytes() == 0


def test_a_checked_key_encrypts_and_decrypts_through_the_engine():
    from avpcli.engine import AttackSettings, decrypt_batch, encrypt_batch, quantize
    from avpcli.key import KeyGenerator, KeyModel
    from avpcli.metrics import ssim
    from avpcli.targets import load_target

    torch.manual_seed(5)
    key = KeyModel(KeyGenerator(ngf=4, blocks=1, norm="none"), _checked()).freeze()
    smooth = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    images = quantize(torch.nn.functional.interpolate(smooth, size=(32, 32), mode="bilinear", align_corners=False))
    settings = AttackSettings(iterations=15, key_weight=1.0, stop=None, hold_colour=True)
    result = encrypt_batch(images, load_target("tiny-embedding"), key, settings, "embedding", [1, 2])
    assert key.scramble.nonces_of(result.encrypted) == key.scramble.nonces_for(images)
    assert key.verify(result.encrypted).tolist() == [True, True]
    decrypted = decrypt_batch(result.encrypted, key)
    assert torch.allclose(ssim(decrypted, images), torch.tensor([m.ssim_decrypted for m in result.metrics]), atol=1e-4)
    # The same ciphertexts with one nonce bit flipped, or under another key, fail the check.
    flipped = result.encrypted.clone()
    flipped[0, 0, 0, 0] = (round(float(flipped[0, 0, 0, 0]) * 255) ^ 1) / 255
    assert key.verify(flipped).tolist() == [False, True]
    other = KeyModel(KeyGenerator(ngf=4, blocks=1, norm="none"), _checked(OTHER_SECRET)).freeze()
    assert other.verify(result.encrypted).tolist() == [False, False]


# --------------------------------------------------------------------------------------------
# Plan memory: small plans, kept by their bytes


def test_a_plan_holds_five_bytes_per_value():
    plan = make_plan(SECRET, 30, 40, bytes(range(3 * NONCE_PIXELS)), CHECKED_SCHEME)
    assert plan.source.dtype == torch.int32 and plan.inverted.dtype == torch.bool
    assert plan.nbytes == 5 * 3 * 30 * 40


def test_plans_are_kept_by_bytes_least_recently_used_first_out(monkeypatch):
    one = 5 * 3 * 16 * 16
    monkeypatch.setattr(scrambles, "PLAN_BYTES_KEPT", 3 * one)
    scramble = _checked()
    images = [_levels(1, 3, 16, 16, seed=seed) for seed in range(5)]
    for image in images[:3]:
        scramble(image)
    assert scramble.kept_bytes() == 3 * one
    scramble(images[0])  # used again: the most recent now
    scramble(images[3])  # one more: the least recently used (images[1]'s) goes
    assert scramble.kept_bytes() == 3 * one
    kept = {key[-1] for key in scramble._plans}
    assert kept == {scramble.nonces_of(images[index])[0] for index in (0, 2, 3)}
    # A batch's stacked plans count too: the kept plans make room for them.
    scramble(torch.cat(images[3:5]))
    assert scramble.kept_bytes() <= 3 * one and scramble._batch is not None


def test_a_plan_larger_than_the_budget_is_used_but_not_kept(monkeypatch):
    monkeypatch.setattr(scrambles, "PLAN_BYTES_KEPT", 1000)
    for scramble in (_checked(), Scramble(SECRET)):
        images = _levels(2, 3, 20, 20, seed=7)
        scrambled = scramble(images)
        assert scramble.kept_bytes() == 0
        restored = scramble.inverse(scrambled, scramble.nonces_of(images) if scramble.per_image else None)
        assert torch.allclose(restored, images, atol=1e-6)
        assert torch.equal(scramble(images[1:]), scrambled[1:])
