"""The demo's key cache: where it lives (the run itself is covered by the CLI tests)."""

from __future__ import annotations

import io

import pytest

from avpcli.demo import demo_key_path
from avpcli.scramble import SCHEME


def test_demo_key_lives_in_the_user_cache_even_when_xdg_cache_home_is_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert demo_key_path() == tmp_path / ".cache" / "avp" / "demo-key.safetensors"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_key_path() == tmp_path / "xdg" / "avp" / "demo-key.safetensors"


@pytest.mark.parametrize("old_scramble", [False, SCHEME])
def test_a_cached_demo_key_without_a_per_image_scramble_is_replaced(monkeypatch, tmp_path, old_scramble):
    from avpcli import demo
    from avpcli.key import TEST_SEED_KDF, KeyPreset, load_key, save_key, train_key

    tiny = KeyPreset(ngf=4, blocks=1, norm="none", steps=1, batch_size=2, crop_size=16, learning_rate=1e-3,
                       seed_kdf=TEST_SEED_KDF)
    monkeypatch.setattr(demo, "DEMO_PRESET", tiny)
    path = tmp_path / "demo-key.safetensors"
    save_key(train_key(tiny, seed=5, scramble=old_scramble), path)
    key, trained = demo.ensure_demo_key(path, "cpu", lambda step, total: None)
    assert trained and key.scrambles and load_key(path).scramble.per_image
    again, trained_again = demo.ensure_demo_key(path, "cpu", lambda step, total: None)
    assert not trained_again and again.fingerprint == key.fingerprint


def test_the_demo_table_fits_80_columns_without_cutting_a_word():
    from rich.console import Console

    from avpcli.cli import demo_table

    rows = [{"source": "astronaut.png", "status": "ok", "feature_distance": 0.1234, "ssim_encrypted": 0.0123,
             "lowpass_correlation": -0.051, "ssim_decrypted": 0.9612, "iterations": 312,
             "restored_identical": True},
            {"source": "esc\x1b[31m[bold]x.png", "status": "no_face", "reason": "no face found"}]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(demo_table(rows))
    text = console.export_text()
    assert "…" not in text and "\x1b" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for word in ("astronaut.png", "distance", "SSIM enc", "blur corr", "SSIM dec", "steps", "0.961", "312",
                 "no_face", "recovered", "esc\\x1b[31m[b", "same", "file"):  # a name is shown as it is, escaped, not as markup
        assert word in text, word
