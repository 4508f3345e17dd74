"""The key: architecture, seeded training, the safetensors format and its refusals."""

import dataclasses
import hashlib
import json
import os
import stat
import time

import numpy as np
import pytest
import torch
from PIL import Image

from avpcli.errors import KeyFileError, UsageError
from avpcli.key import (
    GUESSABLE_SEED_LIMIT, KEY_PRESETS, NORMS, SEED_KDF, TEST_SEED_KDF, KeyGenerator, KeyModel, KeyPreset, SeedKdf,
    PROCEDURAL_SOURCES, count_parameters, expected_key_tensors, key_fingerprint, load_key, new_seed, procedural_images,
    procedural_images_with_strands, save_key,
    scramble_secret, seed_is_guessable, seed_secrets, seeded_generator, train_key, training_data_fingerprint,
    training_source,
)
from avpcli.scramble import PER_IMAGE_SCHEME, SCHEME as SCRAMBLE_SCHEME

TINY = KeyPreset(ngf=4, blocks=1, norm="batch", steps=3, batch_size=2, crop_size=16, learning_rate=1e-3,
                 warmup_steps=1, seed_kdf=TEST_SEED_KDF)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_key():
    torch.set_num_threads(1)
    return train_key(TINY, seed=12345)


@pytest.fixture
def key_file(tiny_key, tmp_path):
    return save_key(tiny_key, tmp_path / "tiny.avpkey")


def test_paper_preset_has_the_papers_parameter_count():
    preset = KEY_PRESETS["paper"]
    generator = KeyGenerator(preset.ngf, preset.blocks, preset.norm)
    assert preset.ngf == 64 and preset.blocks == 9
    assert count_parameters(generator) == pytest.approx(11.38e6, abs=0.01e6)


def test_batch_norm_convs_carry_no_bias_and_others_do():
    batch = KeyGenerator(4, 1, "batch")
    plain = KeyGenerator(4, 1, "none")
    conv_biases = lambda module: [m.bias for m in module.modules() if isinstance(m, torch.nn.Conv2d)]  # noqa: E731
    assert sum(b is not None for b in conv_biases(batch)) == 1  # only the final 7×7 conv to RGB
    assert all(b is not None for b in conv_biases(plain))


@pytest.mark.parametrize("shape", [(150, 150), (112, 96), (112, 112), (160, 160), (32, 32), (33, 47), (8, 8)])
def test_output_keeps_shape_and_range(tiny_key, shape):
    images = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = tiny_key.generator(images)
    assert output.shape == images.shape
    assert output.min() >= 0 and output.max() <= 1


def test_too_small_images_are_refused(tiny_key):
    with pytest.raises(ValueError, match="8×8"):
        tiny_key.generator(torch.rand(1, 3, 7, 20))


def test_an_image_does_not_depend_on_its_batch_mates(tiny_key):
    images = torch.rand(3, 3, 36, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        together = tiny_key.generator(images)
        alone = torch.cat([tiny_key.generator(images[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_trained_key_is_frozen_and_in_eval_mode(tiny_key):
    assert not tiny_key.generator.training
    assert not any(p.requires_grad for p in tiny_key.generator.parameters())


def test_training_is_byte_identical_per_seed_and_differs_between_seeds(tiny_key, key_file, tmp_path):
    again = save_key(train_key(TINY, seed=12345), tmp_path / "again.avpkey")
    other = save_key(train_key(TINY, seed=12346), tmp_path / "other.avpkey")
    assert key_file.read_bytes() == again.read_bytes()
    assert key_file.read_bytes() != other.read_bytes()
    assert load_key(key_file).fingerprint != load_key(other).fingerprint


def test_training_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_key(TINY, seed=1, steps=1)
    assert torch.equal(torch.rand(3), expected)


def test_progress_is_reported_every_step():
    calls = []
    train_key(TINY, seed=1, steps=2, progress=lambda step, total, loss: calls.append((step, total, loss)))
    assert [(step, total) for step, total, _ in calls] == [(1, 2), (2, 2)]
    assert all(isinstance(loss, float) and loss > 0 for _, _, loss in calls)


def test_round_trip_gives_the_same_outputs_and_metadata(tiny_key, key_file):
    loaded = load_key(key_file)
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded.generator(images), tiny_key.generator(images))
    assert loaded.metadata == tiny_key.metadata
    meta = loaded.metadata
    assert (meta["format"], meta["architecture"], meta["ngf"], meta["blocks"], meta["norm"]) == (
        "avp-key", "resnet-generator", "4", "1", "batch")
    assert (meta["seed"], meta["training_data"], meta["steps"], meta["image_size"]) == ("12345", "procedural-v1", "3", "16")


def test_a_key_without_residual_blocks_round_trips_like_the_default(tmp_path):
    # The default preset has no residual block since avp 0.3; its files must load as they were saved.
    assert KEY_PRESETS["default"].blocks == 0
    trained = train_key(dataclasses.replace(TINY, blocks=0, norm="none"), seed=7)
    loaded = load_key(save_key(trained, tmp_path / "no-blocks.avpkey"))
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded.model_for(scramble=True)(images), trained.model_for(scramble=True)(images))
    assert loaded.metadata["blocks"] == "0"
    assert not any(".body." in name for name in loaded.generator.state_dict())


def test_loaded_key_is_frozen_and_in_eval_mode(key_file):
    generator = load_key(key_file).generator
    assert not generator.training and all(not m.training for m in generator.modules())
    assert not any(p.requires_grad for p in generator.parameters())


def test_key_file_is_owner_only(key_file):
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_save_refuses_to_overwrite(tiny_key, key_file, tmp_path):
    before = key_file.read_bytes()
    other = train_key(TINY, seed=99)
    with pytest.raises(KeyFileError, match="already exists"):
        save_key(other, key_file)
    assert key_file.read_bytes() == before
    save_key(other, key_file, overwrite=True)
    assert key_file.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == [key_file.name]  # no temporary left behind


def test_fingerprint_is_stable_and_tracks_every_byte(tiny_key, key_file):
    fingerprint = load_key(key_file).fingerprint
    assert fingerprint == load_key(key_file).fingerprint == tiny_key.fingerprint
    assert len(fingerprint) == 64 and "12345" not in fingerprint
    state = {name: tensor.clone() for name, tensor in tiny_key.generator.state_dict().items()}
    state["network.1.weight"].view(-1)[0] += 1e-6
    assert key_fingerprint(state) != fingerprint


def _one_line_key_error(path) -> str:
    with pytest.raises(KeyFileError) as caught:
        load_key(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "not found" in _one_line_key_error(tmp_path / "nope.avpkey")


@pytest.mark.parametrize("cut", [0, 5, 100, -10])
def test_truncated_file(key_file, cut):
    data = key_file.read_bytes()
    key_file.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    _one_line_key_error(key_file)


def test_png_and_random_bytes_are_refused(tmp_path):
    png = tmp_path / "picture.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    assert "not a safetensors" in _one_line_key_error(png)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(4096))
    _one_line_key_error(noise)


def _rewrite(key_file, tensors=None, metadata=None):
    from safetensors.torch import load, save

    loaded = load_key(key_file)
    state = load(key_file.read_bytes()) if tensors is None else tensors(load(key_file.read_bytes()))
    meta = dict(loaded.metadata) if metadata is None else metadata(dict(loaded.metadata))
    key_file.write_bytes(save(state, metadata=meta))


def test_safetensors_without_our_metadata_is_refused(key_file):
    _rewrite(key_file, metadata=lambda meta: {"format": "pt"})
    assert "not an avp key" in _one_line_key_error(key_file)


def test_other_format_version_is_refused(key_file):
    _rewrite(key_file, metadata=lambda meta: {**meta, "format_version": "99"})
    assert "version" in _one_line_key_error(key_file)


def test_missing_tensor_is_refused(key_file):
    _rewrite(key_file, tensors=lambda state: {k: v for k, v in state.items() if k != "network.1.weight"})
    assert "missing tensor network.1.weight" in _one_line_key_error(key_file)


def test_wrong_shape_is_refused(key_file):
    _rewrite(key_file, tensors=lambda state: {**state, "network.1.weight": torch.zeros(4, 3, 5, 5)})
    assert "network.1.weight" in _one_line_key_error(key_file)


@pytest.mark.parametrize("field, value", [("ngf", "8"), ("ngf", "100000000"), ("blocks", "0"), ("norm", "group"),
                                          ("architecture", "unet")])
def test_metadata_that_does_not_match_the_tensors_is_refused(key_file, field, value):
    _rewrite(key_file, metadata=lambda meta: {**meta, field: value})
    _one_line_key_error(key_file)


def test_corrupt_header_is_refused(key_file):
    data = bytearray(key_file.read_bytes())
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    assert "__metadata__" in header
    data[8:12] = b"????"
    key_file.write_bytes(bytes(data))
    _one_line_key_error(key_file)


def test_seed_helpers():
    assert GUESSABLE_SEED_LIMIT == 2 ** 64
    assert seed_is_guessable(0) and seed_is_guessable(2 ** 32) and seed_is_guessable(2 ** 64 - 1)
    assert not seed_is_guessable(2 ** 64)
    seeds = {new_seed() for _ in range(4)}
    assert len(seeds) == 4 and all(seed.bit_length() > 64 for seed in seeds)  # fails with odds 2**-64
    assert not any(seed_is_guessable(seed) for seed in seeds)


def test_procedural_images_are_seeded_and_in_range():
    a = procedural_images(torch.Generator().manual_seed(3), 4, 32)
    b = procedural_images(torch.Generator().manual_seed(3), 4, 32)
    c = procedural_images(torch.Generator().manual_seed(4), 4, 32)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert a.std(dim=(1, 2, 3)).min() > 0.01  # every image has content


def test_strands_source_is_seeded_in_range_and_adds_fine_sharp_detail_to_v1():
    def fine_detail(images):  # mean |x − its 3×3 box mean|: what thin strands add
        return (images - torch.nn.functional.avg_pool2d(images, 3, 1, 1, count_include_pad=False)).abs().mean()

    a = procedural_images_with_strands(torch.Generator().manual_seed(3), 16, 64)
    b = procedural_images_with_strands(torch.Generator().manual_seed(3), 16, 64)
    plain = procedural_images(torch.Generator().manual_seed(3), 16, 64)
    assert a.shape == (16, 3, 64, 64) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    changed = (a - plain).flatten(1).abs().amax(dim=1) > 0.1
    assert 0 < int(changed.sum()) < 16, "some images get strands and some do not"
    assert fine_detail(a[changed]) > 1.3 * fine_detail(plain[changed])
    assert PROCEDURAL_SOURCES["procedural-v2"] is procedural_images_with_strands


def test_each_preset_names_its_procedural_source_and_keys_record_it():
    assert KEY_PRESETS["default"].procedural == "procedural-v2"
    assert KEY_PRESETS["small"].procedural == KEY_PRESETS["demo"].procedural == "procedural-v1"
    strands = dataclasses.replace(TINY, procedural="procedural-v2")
    assert train_key(strands, seed=1, steps=1).metadata["training_data"] == "procedural-v2"
    assert training_source(None, "procedural-v2") == (procedural_images_with_strands, "procedural-v2")
    with pytest.raises(UsageError, match="procedural-v9"):
        training_source(None, "procedural-v9")


def test_training_on_a_folder_records_its_fingerprint(tmp_path):
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    fingerprint = training_data_fingerprint(tmp_path / "images")
    trained = train_key(TINY, seed=5, data_dir=tmp_path / "images", steps=1)
    assert trained.metadata["training_data"] == fingerprint and len(fingerprint) == 64
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "0.png")
    assert training_data_fingerprint(tmp_path / "images") != fingerprint
    with pytest.raises(UsageError, match="not found"):
        train_key(TINY, seed=5, data_dir=tmp_path / "missing", steps=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        train_key(TINY, seed=5, data_dir=tmp_path / "empty", steps=1)


def test_learning_rate_warms_up_then_decays_to_zero():
    preset = KeyPreset(ngf=4, blocks=1, norm="none", steps=100, batch_size=1, crop_size=16, learning_rate=1e-2,
                       warmup_steps=10)
    rates = [preset.learning_rate_at(step) for step in range(100)]
    assert rates[0] == pytest.approx(1e-3) and rates[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert rates[-1] < 1e-4
    assert KeyPreset(**{**preset.__dict__, "schedule": "constant"}).learning_rate_at(99) == 1e-2


@pytest.mark.parametrize("name", sorted(KEY_PRESETS))
def test_every_preset_builds_and_names_a_known_norm(name):
    preset = KEY_PRESETS[name]
    generator = KeyGenerator(preset.ngf, preset.blocks, preset.norm)
    assert preset.crop_size % 4 == 0 and preset.steps > preset.warmup_steps
    with torch.no_grad():
        assert generator.eval()(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


# --------------------------------------------------------------------------------------------
# Format 2: the scramble


def test_keys_scramble_by_default_and_the_secret_is_saved_and_fingerprinted(tiny_key, key_file):
    loaded = load_key(key_file)
    assert tiny_key.scramble is not None and loaded.scrambles
    assert loaded.metadata["format_version"] == "2" and loaded.metadata["scramble"] == PER_IMAGE_SCHEME
    assert loaded.scramble.per_image
    assert torch.equal(loaded.scramble.secret, tiny_key.scramble.secret)
    assert bytes(loaded.scramble.secret.tolist()) == seed_secrets(12345, TEST_SEED_KDF).scramble
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded.model(images),
                           tiny_key.scramble.fill_nonce(tiny_key.generator(tiny_key.scramble(images))))
        assert torch.equal(loaded.plain_model(images), tiny_key.generator(images))
    # The fingerprint covers the secret: the same G with another scramble is another key.
    plain = train_key(TINY, seed=12345, scramble=False)
    assert plain.fingerprint != tiny_key.fingerprint


def test_no_scramble_keeps_the_papers_plain_key(tmp_path):
    plain = train_key(TINY, seed=12345, scramble=False)
    loaded = load_key(save_key(plain, tmp_path / "plain.avpkey"))
    assert not loaded.scrambles and loaded.metadata["scramble"] == "none"
    images = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), loaded.generator(images))
    with pytest.raises(KeyFileError, match="no scramble"):
        loaded.model_for(scramble=True)


def test_format_1_keys_still_load_without_scramble(tiny_key, tmp_path):
    from safetensors.torch import save_file

    tensors = {name: tensor for name, tensor in tiny_key.tensors().items() if not name.startswith("scramble")}
    metadata = {k: v for k, v in tiny_key.metadata.items() if k != "scramble"} | {"format_version": "1"}
    path = tmp_path / "v1.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    loaded = load_key(path)
    assert not loaded.scrambles
    assert loaded.fingerprint == key_fingerprint(tensors)  # unchanged from what format 1 named it


def test_a_scrambling_key_without_its_secret_is_refused(tiny_key, tmp_path):
    from safetensors.torch import save_file

    tensors = {name: tensor for name, tensor in tiny_key.tensors().items() if not name.startswith("scramble")}
    path = tmp_path / "lost-secret.safetensors"
    save_file(tensors, str(path), metadata=tiny_key.metadata)
    with pytest.raises(KeyFileError, match="missing tensor scramble.secret"):
        load_key(path)


def test_an_unknown_scramble_scheme_is_refused(tiny_key, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    save_file(tiny_key.tensors(), str(path), metadata=tiny_key.metadata | {"scramble": "something-v9"})
    with pytest.raises(KeyFileError, match="scramble this avp does not know"):
        load_key(path)


def test_key_model_preimage_inverts_the_scramble_but_for_the_nonce(tiny_key):
    model = tiny_key.model
    images = torch.randint(0, 256, (2, 3, 12, 12), generator=torch.Generator().manual_seed(4)).float() / 255
    preimage = model.preimage(images)
    # The preimage carries each image's nonce; S maps it onto the image but for the nonce's pixels.
    assert model.scramble.nonces_of(preimage) == model.scramble.nonces_for(images)
    differs = (model.scramble(preimage) - images).abs() > 1e-6
    assert differs[:, :, 0, :4].any() and not differs[:, :, 1:].any() and not differs[:, :, 0, 4:].any()
    assert torch.equal(KeyModel(tiny_key.generator, None).preimage(images), images)


def test_a_per_size_key_still_loads_encrypts_and_decrypts_as_avp_0_1_made_it(tmp_path):
    key = train_key(TINY, 12345,
                    scramble=SCRAMBLE_SCHEME)
    path = save_key(key, tmp_path / "old.safetensors")
    loaded = load_key(path)
    assert loaded.metadata["scramble"] == SCRAMBLE_SCHEME and not loaded.scramble.per_image
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    assert torch.equal(loaded.model.scramble(loaded.model.preimage(images)), images)
    assert loaded.model.pinned(12, 12, "cpu") is None


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("scrambles", [False, True])
def test_expected_tensors_are_those_of_a_built_generator(norm, scrambles):
    names = {torch.float32: "F32", torch.int64: "I64"}
    built = {name: (tuple(tensor.shape), names[tensor.dtype])
             for name, tensor in KeyGenerator(4, 2, norm).state_dict().items()}
    if scrambles:
        built["scramble.secret"] = ((32,), "U8")
    assert expected_key_tensors(4, 2, norm, scrambles) == built


def test_a_loaded_key_holds_its_tensors_and_nothing_else(key_file):
    generator = load_key(key_file).generator
    assert not any(tensor.is_meta for tensor in generator.state_dict().values())


def test_a_pipe_is_refused_without_being_opened_for_a_blocking_read(tmp_path):
    os.mkfifo(tmp_path / "key.safetensors")
    assert "not a regular file" in _one_line_key_error(tmp_path / "key.safetensors")


def test_the_scramble_scheme_changes_neither_g_nor_the_secret():
    # A seed's per-image key and its per-size key differ only in the metadata's scheme.
    per_image, per_size = train_key(TINY, seed=77), train_key(TINY, seed=77, scramble=SCRAMBLE_SCHEME)
    assert per_image.tensors().keys() == per_size.tensors().keys()
    assert all(torch.equal(tensor, per_size.tensors()[name]) for name, tensor in per_image.tensors().items())
    assert {name: value for name, value in per_image.metadata.items() if name != "scramble"} == \
        {name: value for name, value in per_size.metadata.items() if name != "scramble"}


# ------------------------------------------------------------------------------------------------
# keygen's mistakes are usage errors: one line and exit code 2 from the command, never a traceback


@pytest.mark.parametrize("options, message", [
    ({"preset": "huge"}, "unknown key preset 'huge'"),
    ({"seed": -1}, "the seed must be a non-negative integer"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"scramble": "rot13"}, "unknown scramble scheme 'rot13'"),
])
def test_bad_keygen_options_are_usage_errors_raised_before_any_training(options, message, monkeypatch):
    from avpcli.key import resolve_recipe
    from avpcli.key import training

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the options were wrong")

    monkeypatch.setattr(training.KeyGenerator, "__init__", no_training)
    arguments = {"preset": TINY, "seed": 1, "steps": None, "scramble": True, **options}
    with pytest.raises(UsageError, match=message):
        resolve_recipe(**arguments)
    with pytest.raises(UsageError, match=message):
        train_key(arguments.pop("preset"), **arguments)


def test_resolve_recipe_applies_the_steps_and_picks_the_scheme():
    from avpcli.key import resolve_recipe

    assert resolve_recipe("demo", seed=0) == ("demo", KEY_PRESETS["demo"], PER_IMAGE_SCHEME)
    name, preset, scheme = resolve_recipe(TINY, seed=0, steps=20, scramble=False)
    assert (name, preset.steps, preset.warmup_steps, scheme) == ("custom", 20, 1, None)
    assert resolve_recipe("default", seed=0, steps=5)[1].warmup_steps == 0


def _keygen(*args: str, tmp_path):
    from typer.testing import CliRunner

    from avpcli.cli import app

    return CliRunner().invoke(app, ["keygen", "--preset", "demo", "--device", "cpu",
                                    "--out", str(tmp_path / "key.safetensors"), *args], catch_exceptions=False)


@pytest.mark.parametrize("args, message", [
    (("--seed", "-7", "--steps", "1"), "the seed must be a non-negative integer"),
    (("--steps", "0"), "steps must be at least 1"),
])
def test_keygen_with_a_bad_seed_or_step_count_exits_2_with_its_reason(args, message, tmp_path):
    result = _keygen(*args, tmp_path=tmp_path)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.endswith(f"error: {message}\n") and result.stderr.count("error:") == 1
    assert "Traceback" not in result.output and not (tmp_path / "key.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    (("--seed", "-7", "--steps", "1"), "the seed must be a non-negative integer"),
    (("--steps", "0"), "steps must be at least 1"),
])
def test_keygen_with_a_bad_seed_or_step_count_prints_one_line(args, message, tmp_path):
    assert _keygen(*args, tmp_path=tmp_path).stderr == f"error: {message}\n"


# ------------------------------------------------------------------------------------------------
# The seed is a password: every secret of a key goes through scrypt, whose parameters the key records


def test_every_built_in_preset_puts_the_seed_through_the_full_scrypt():
    # Pinned: lowering the cost makes every seed cheaper to guess (docs/KEY.md, benchmarks/seed_search.py).
    assert (SEED_KDF.n, SEED_KDF.r, SEED_KDF.p) == (2 ** 17, 10, 1)
    assert SEED_KDF.memory_bytes == 160 * 2 ** 20 and SEED_KDF.name == "scrypt-v1:n=131072,r=10,p=1"
    assert {name: preset.seed_kdf for name, preset in KEY_PRESETS.items()} == dict.fromkeys(KEY_PRESETS, SEED_KDF)
    assert KeyPreset(ngf=4, blocks=1, norm="none", steps=1, batch_size=1, crop_size=16,
                     learning_rate=1e-3).seed_kdf == SEED_KDF  # a preset of one's own gets it too
    from avpcli.key import resolve_recipe

    assert resolve_recipe("default", seed=0, steps=1)[1].seed_kdf == SEED_KDF  # --steps keeps it


def test_one_full_cost_derivation_takes_at_least_a_fifth_of_a_second():
    # A floor, not a speed bar: it fails only if someone makes guessing cheaper.
    started = time.perf_counter()
    derived = seed_secrets(4242, SEED_KDF)
    assert time.perf_counter() - started >= 0.2
    assert derived.scramble != scramble_secret(4242)


def test_the_derivation_is_hmac_over_scrypt_of_the_seeds_digits():
    import hmac

    cheap = SeedKdf(n=4, r=2, p=1)
    master = hashlib.scrypt(b"4242", salt=b"avp-seed-kdf:scrypt-v1", n=4, r=2, p=1, dklen=32)
    label = b"avp-key:scrypt-v1:n=4,r=2,p=1:"
    derived = seed_secrets(4242, cheap)
    assert derived.scramble == hmac.new(master, label + b"scramble", hashlib.sha256).digest()
    init = hmac.new(master, label + b"init", hashlib.sha256).digest()
    assert derived.init == int.from_bytes(init[:8], "big") & (2 ** 63 - 1)
    assert derived.scramble.hex()[:16] not in repr(derived) and str(derived.init) not in repr(derived)


def test_the_seed_kdf_is_recorded_and_parsed_back(tiny_key, key_file):
    assert load_key(key_file).metadata["seed_kdf"] == TEST_SEED_KDF.name == "scrypt-v1:n=2,r=1,p=1"
    assert SeedKdf.parse(SEED_KDF.name) == SEED_KDF
    for bad in ("scrypt-v1:n=3,r=1,p=1", "argon2:n=2", "scrypt-v1:n=2,r=0,p=1"):
        with pytest.raises(UsageError):
            SeedKdf.parse(bad)


def test_every_secret_of_a_key_comes_from_the_kdf(tiny_key):
    derived = seed_secrets(12345, TEST_SEED_KDF)
    assert bytes(tiny_key.scramble.secret.tolist()) == derived.scramble
    initial = seeded_generator(TINY.ngf, TINY.blocks, TINY.norm, derived.init, "cpu")
    legacy = seeded_generator(TINY.ngf, TINY.blocks, TINY.norm, seed_secrets(12345, None).init, "cpu")
    untrained = train_key(TINY, seed=12345, steps=1)  # one step moves the weights a little from the init
    weight = "network.1.weight"
    assert (untrained.generator.state_dict()[weight] - initial.state_dict()[weight]).abs().max() < 0.01
    assert (untrained.generator.state_dict()[weight] - legacy.state_dict()[weight]).abs().max() > 0.01
    other_cost = seed_secrets(12345, SeedKdf(n=4, r=1, p=1))
    assert len({derived.scramble, other_cost.scramble, scramble_secret(12345)}) == 3
    assert len({derived.init, derived.data, other_cost.init}) == 3


def test_a_key_without_kdf_metadata_loads_and_decrypts_as_before(tmp_path):
    # A key made before the KDF: its secrets are the fast hashes of its seed, computed here from the
    # formulas those keys were made with, and its metadata has no seed_kdf.
    old = train_key(dataclasses.replace(TINY, seed_kdf=None), seed=12345)
    path = save_key(old, tmp_path / "old.safetensors")
    again = save_key(train_key(dataclasses.replace(TINY, seed_kdf=None), seed=12345), tmp_path / "again.safetensors")
    assert path.read_bytes() == again.read_bytes()
    loaded = load_key(path)
    assert "seed_kdf" not in loaded.metadata and set(loaded.metadata) == {
        "format", "format_version", "architecture", "ngf", "blocks", "norm", "image_size", "seed", "training_data",
        "steps", "preset", "scramble", "avp_version"}
    assert bytes(loaded.scramble.secret.tolist()) == hashlib.sha256(b"avp-key:scramble:12345").digest()
    init_seed = int.from_bytes(hashlib.sha256(b"avp-key:init:12345").digest()[:8], "big") & (2 ** 63 - 1)
    assert seed_secrets(12345, None).init == init_seed
    from avpcli.scramble import Scramble

    legacy_scramble = Scramble(hashlib.sha256(b"avp-key:scramble:12345").digest(), PER_IMAGE_SCHEME)
    ciphertexts = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # decryption is G∘S with the old secret, bit for bit
        expected = KeyModel(old.generator, legacy_scramble).freeze()(ciphertexts)
        assert torch.equal(loaded.model(ciphertexts), expected) and torch.equal(old.model(ciphertexts), expected)


def _keygen_demo(seed: int, tmp_path, name: str):
    result = _keygen("--seed", str(seed), "--steps", "1", tmp_path=tmp_path / name)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("seed", [2 ** 64 - 1])
def test_keygen_warns_in_one_line_for_a_seed_below_2_64_and_never_prints_it(seed, tmp_path):
    (tmp_path / "k").mkdir()
    result = _keygen_demo(seed, tmp_path, "k")
    lines = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and "2**64" in lines[0] and "guess" in lines[0] and "scramble" in lines[0]
    assert "Omit --seed for a random 256-bit seed (recommended)" in lines[0]
    assert str(seed) not in result.output and result.stdout.strip() == str(tmp_path / "k" / "key.safetensors")
    assert load_key(tmp_path / "k" / "key.safetensors").metadata["seed_kdf"] == SEED_KDF.name


def test_keygen_does_not_warn_for_a_seed_of_2_64_or_more(tmp_path):
    (tmp_path / "k").mkdir()
    assert "warning" not in _keygen_demo(2 ** 64, tmp_path, "k").stderr
