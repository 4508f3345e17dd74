"""The public API (avpcli.encryptor and the names avpcli exports): imported only by its public names."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import avpcli
from avpcli.key import TEST_SEED_KDF
from avpcli import (
    CLASSIFIER_SETTINGS,
    FACE_SETTINGS,
    AttackSettings,
    Ciphertext,
    Encryptor,
    Key,
    UsageError,
    attack_settings,
    decrypt,
    encrypt_folder,
    read_manifest,
)

from conftest import snapshot, write_noise_photos


def _image(seed: int, size: int = 32) -> torch.Tensor:
    """A smooth random image (3, size, size) on the 8-bit grid."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=generator)
    return (torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[0] * 255).round() / 255


@pytest.fixture
def encryptor(tiny_key_file) -> Encryptor:
    return Encryptor("tiny-embedding", tiny_key_file, device="cpu", iterations=4, batch_size=2)


def test_the_public_names_are_importable_and_listed():
    for name in avpcli.__all__:
        assert getattr(avpcli, name) is not None, name
    with pytest.raises(AttributeError):
        avpcli.not_a_public_name  # noqa: B018


def test_importing_avpcli_does_not_import_torch():
    code = "import sys, avpcli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------
# attack_settings: the one settings builder


def test_settings_by_loss_and_recipe():
    assert attack_settings("embedding") == FACE_SETTINGS
    assert attack_settings("embedding", "research") == AttackSettings()
    assert attack_settings("classifier") == CLASSIFIER_SETTINGS
    assert attack_settings("classifier", "research") == CLASSIFIER_SETTINGS


def test_the_start_side_is_the_targets_choice_and_the_tuned_recipes_alone(tiny_key_file):
    past = attack_settings("embedding", stop_past_original=True)
    assert past.stop.max_start_side == 0 and past.start_side_weight > 0
    assert (FACE_SETTINGS.stop.max_start_side, FACE_SETTINGS.start_side_weight) == (None, 0)
    assert attack_settings("embedding", "research", stop_past_original=True) == AttackSettings()
    assert attack_settings("classifier", stop_past_original=True) == CLASSIFIER_SETTINGS
    assert attack_settings("embedding", early_stop=False, stop_past_original=True).stop is None
    from avpcli import get_spec

    assert get_spec("dlib").stop_past_original and not get_spec("mobilefacenet").stop_past_original
    assert Encryptor("tiny-embedding", tiny_key_file, device="cpu").settings.stop.max_start_side is None
    chosen = Encryptor("tiny-embedding", tiny_key_file, device="cpu", stop_past_original=True).settings
    assert (chosen.start_side_weight, chosen.stop) == (past.start_side_weight, past.stop)


def test_settings_overrides_none_keeps_the_base_and_stop_options():
    tuned = attack_settings("embedding", iterations=7, key_weight=None, leak_weight=0.5)
    assert (tuned.iterations, tuned.key_weight, tuned.leak_weight) == (7, FACE_SETTINGS.key_weight, 0.5)
    assert attack_settings("embedding", early_stop=False).stop is None
    barred = attack_settings("embedding", max_lowpass_correlation=0.2, max_feature_distance=0.03).stop
    assert (barred.max_lowpass_correlation, barred.max_feature_distance) == (0.2, 0.03)
    assert barred.max_ssim_encrypted == FACE_SETTINGS.stop.max_ssim_encrypted
    assert attack_settings("embedding", early_stop=False, max_feature_distance=0.03).stop is None


@pytest.mark.parametrize("arguments", [
    {"recipe": "fast"}, {"iterations": 0}, {"initialization": "zeros"}, {"smoothness": "l2"},
    {"not_a_setting": 1}, {"max_lowpass_correlation": 1.5}, {"max_feature_distance": 0.0},
])
def test_settings_refuse_what_makes_no_sense(arguments):
    with pytest.raises(UsageError):
        attack_settings("embedding", **arguments)


# ------------------------------------------------------------------------------------------------
# Encryptor


def test_usage_errors_come_before_anything_is_loaded(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(UsageError, match="start"):
        Encryptor("tiny-embedding", missing, device="cpu", initialization="zeros")
    with pytest.raises(UsageError, match="fp16"):
        Encryptor("tiny-embedding", missing, device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="either settings or overrides"):
        Encryptor("tiny-embedding", missing, FACE_SETTINGS, device="cpu", iterations=3)


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", None), ("bf16", torch.bfloat16)])
def test_precision_sets_the_forwards_dtype(tiny_key_file, precision, dtype):
    assert Encryptor("tiny-embedding", tiny_key_file, device="cpu", precision=precision).settings.autocast_dtype is dtype


def test_recipe_picks_the_key_model(tiny_key_file):
    assert Encryptor("tiny-embedding", tiny_key_file, device="cpu").key_scrambles
    research = Encryptor("tiny-embedding", tiny_key_file, device="cpu", recipe="research", precision="fp32")
    assert not research.key_scrambles and research.settings == AttackSettings()


def test_repr_names_the_key_by_fingerprint_only(encryptor):
    text = repr(encryptor)
    assert encryptor.key_fingerprint[:16] in text and encryptor.key_fingerprint not in text
    assert "seed" not in text


def test_encrypt_takes_tensors_pil_images_and_paths_alike(encryptor, tmp_path):
    image = _image(1)
    path = tmp_path / "one.png"
    Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
    from_tensor, from_pil, from_path = (encryptor.encrypt(given)[0]
                                        for given in (image, Image.open(path), str(path)))
    assert isinstance(from_tensor, Ciphertext)
    assert torch.equal(from_tensor.image, from_pil.image) and torch.equal(from_tensor.image, from_path.image)
    assert torch.equal(from_tensor.original, image)


def test_ciphertexts_are_8_bit_and_their_figures_are_measured_on_the_png(encryptor):
    [ciphertext] = encryptor.encrypt(_image(2))
    assert torch.equal(ciphertext.image, (ciphertext.image * 255).round() / 255)
    read_back = torch.from_numpy(
        __import__("numpy").asarray(Image.open(io.BytesIO(ciphertext.png())).convert("RGB"))).permute(2, 0, 1) / 255
    assert torch.equal(read_back, ciphertext.image)
    [measured] = encryptor.measure(ciphertext.original[None], read_back[None])
    for name, value in measured.items():
        assert ciphertext.metrics[name] == pytest.approx(value, abs=1e-6), name
    assert 1 <= ciphertext.metrics["iterations"] <= 4 and isinstance(ciphertext.metrics["met_targets"], bool)
    assert ciphertext.pil().size == (32, 32)


def test_a_png_that_reads_back_as_the_engines_image_keeps_its_figures_and_another_is_measured(encryptor, monkeypatch):
    originals = torch.stack([_image(seed) for seed in (3, 4)])
    measured_counts: list[int] = []
    measure = Encryptor.measure
    monkeypatch.setattr(Encryptor, "measure", lambda self, given, encrypted: measured_counts.append(len(given))
                        or measure(self, given, encrypted))
    faithful = encryptor.encrypt_and_measure(originals, [1, 2])
    assert measured_counts == [], "PNGs identical to the engine's images need no second measurement"

    def darken_the_second(index, data):  # a store whose second file reads back otherwise
        pixels = torch.from_numpy(__import__("numpy").asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy())
        image = pixels.permute(2, 0, 1).float() / 255
        return (image * 127).round() / 255 if index == 1 else image

    altered = encryptor.encrypt_and_measure(originals, [1, 2], store=darken_the_second)
    assert measured_counts == [1]
    assert altered[0].metrics == faithful[0].metrics
    [expected] = measure(encryptor, originals[1:], altered[1].image[None])
    assert all(altered[1].metrics[name] == value for name, value in expected.items())
    assert altered[1].metrics["ssim_encrypted"] != faithful[1].metrics["ssim_encrypted"]


def test_a_batch_tensor_gives_one_ciphertext_per_image_in_order(encryptor):
    batch = torch.stack([_image(seed) for seed in range(3)])
    ciphertexts = encryptor.encrypt(batch)
    assert [c.source for c in ciphertexts] == [0, 1, 2]
    assert all(torch.equal(c.original, image) for c, image in zip(ciphertexts, batch))


def test_stream_holds_one_batch_at_a_time(encryptor):
    pulled = []

    def images():
        for seed in range(5):
            pulled.append(seed)
            yield _image(seed)

    stream = encryptor.stream(images())
    first = next(stream)
    assert first.source == 0 and len(pulled) == encryptor.batch_size  # nothing read beyond the first batch
    assert [c.source for c in stream] == [1, 2, 3, 4]


def test_encrypt_folder_is_what_avp_encrypt_writes(tmp_path, tiny_key_file):
    from typer.testing import CliRunner

    from avpcli.cli import app

    photos = write_noise_photos(tmp_path / "photos", ["a.png", "sub/b.png", "c.jpg"], 40, 48, seed=9)
    before = snapshot(photos)
    encryptor = Encryptor("tiny-embedding", tiny_key_file, device="cpu", iterations=3, batch_size=2)
    manifest = encrypt_folder(encryptor, photos, tmp_path / "api", noise_seed=5)
    result = CliRunner().invoke(app, ["encrypt", str(photos), "--target", "tiny-embedding", "--key", str(tiny_key_file),
                                      "--out", str(tmp_path / "cli"), "--iterations", "3", "--batch-size", "2",
                                      "--seed", "5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert snapshot(photos) == before
    assert [entry["status"] for entry in manifest.files] == ["ok"] * 3
    for entry in manifest.files:
        api_bytes = (tmp_path / "api" / entry["output"]).read_bytes()
        assert api_bytes == (tmp_path / "cli" / entry["output"]).read_bytes(), entry["output"]
    assert read_manifest(tmp_path / "api").settings == read_manifest(tmp_path / "cli").settings


# ------------------------------------------------------------------------------------------------
# decrypt


def test_decrypt_restores_what_the_key_decrypts_pil_in_pil_out(encryptor, tiny_key_file):
    ciphertexts = encryptor.encrypt([_image(3), _image(4)])
    tensors = decrypt([c.image for c in ciphertexts], tiny_key_file, device="cpu")
    pictures = decrypt([c.pil() for c in ciphertexts], Key.load(tiny_key_file), device="cpu")
    key = Key.load(tiny_key_file)
    expected = (key.model(torch.stack([c.image for c in ciphertexts])).clamp(0, 1) * 255).round() / 255
    for tensor, picture, wanted in zip(tensors, pictures, expected):
        assert isinstance(picture, Image.Image) and picture.size == (32, 32)
        assert torch.equal(tensor, wanted)
        assert hashlib.sha256(picture.tobytes()).digest() == hashlib.sha256(
            (tensor.permute(1, 2, 0) * 255).round().byte().numpy().tobytes()).digest()


def test_decrypt_takes_ciphertexts_of_different_sizes(tiny_key_file):
    small, large = _image(5, 32), _image(6, 48)
    small_out, large_out = decrypt([small, large], tiny_key_file, device="cpu")
    assert small_out.shape == (3, 32, 32) and large_out.shape == (3, 48, 48)


def test_research_ciphertexts_decrypt_with_the_plain_generator(tiny_key_file):
    image = _image(7)
    key = Key.load(tiny_key_file)
    [plain] = decrypt(image, key, research=True, device="cpu")
    assert torch.equal(plain, (key.plain_model(image[None]).clamp(0, 1)[0] * 255).round() / 255)


# ------------------------------------------------------------------------------------------------
# Key


def test_key_train_save_load_round_trip(tmp_path):
    preset = avpcli.KeyPreset(ngf=4, blocks=1, norm="none", steps=1, batch_size=2, crop_size=16, learning_rate=1e-3,
                       seed_kdf=TEST_SEED_KDF)
    trained = Key.train(preset, seed=11)
    path = trained.save(tmp_path / "k.safetensors")
    assert trained.path == path and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = Key.load(path)
    assert loaded.fingerprint == trained.fingerprint and loaded.scrambles and loaded.path == Path(path)
    assert Key.train(preset, seed=11).fingerprint == trained.fingerprint
    assert Key.train(preset).fingerprint != trained.fingerprint  # a fresh random seed


def test_a_key_repr_never_shows_its_seed(tiny_key_file):
    key = Key.load(tiny_key_file)
    text = repr(key)
    assert key.metadata["seed"] not in text and key.fingerprint[:16] in text


def test_building_an_encryptor_leaves_the_callers_key_and_target_as_they_were(tiny_key_file):
    from avpcli import load_target

    key, target = Key.load(tiny_key_file), load_target("tiny-embedding")
    weights = [parameter for parameter in key.generator.parameters() if parameter.ndim == 4]
    target_weights = [parameter for parameter in target.parameters() if parameter.ndim == 4]
    Encryptor(target, key, device="cpu")  # prepares its models in the channels-last layout
    assert all(parameter.is_contiguous() for parameter in weights + target_weights)


def test_encrypt_folder_anonymizes_with_the_names_map_beside_the_key(tmp_path, tiny_key_file):
    import shutil

    key_path = tmp_path / "keys" / "k.safetensors"
    key_path.parent.mkdir()
    shutil.copy(tiny_key_file, key_path)
    photos = write_noise_photos(tmp_path / "photos", ["a.png"], 32, 32, seed=3)
    encryptor = Encryptor("tiny-embedding", key_path, device="cpu", iterations=1)
    manifest = encrypt_folder(encryptor, photos, tmp_path / "out", anonymize=True)
    assert manifest.files[0]["output"] != "a.png"
    assert list(key_path.parent.glob("k.safetensors.names-*.json"))
