"""The demo's key cache: where it lives (the run itself is covered by the CLI tests)."""

from __future__ import annotations

from avpcli.demo import demo_key_path


def test_demo_key_lives_in_the_user_cache_even_when_xdg_cache_home_is_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert demo_key_path() == tmp_path / ".cache" / "avp" / "demo-key.safetensors"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_key_path() == tmp_path / "xdg" / "avp" / "demo-key.safetensors"


def test_a_cached_demo_key_without_scramble_is_replaced(monkeypatch, tmp_path):
    from avpcli import demo
    from avpcli.key import KeyPreset, load_key, save_key, train_key

    tiny = KeyPreset(ngf=4, blocks=1, norm="none", steps=1, batch_size=2, crop_size=16, learning_rate=1e-3)
    monkeypatch.setattr(demo, "DEMO_PRESET", tiny)
    path = tmp_path / "demo-key.safetensors"
    save_key(train_key(tiny, seed=5, scramble=False), path)
    key, trained = demo.ensure_demo_key(path, "cpu", lambda step, total: None)
    assert trained and key.scrambles and load_key(path).scrambles
    again, trained_again = demo.ensure_demo_key(path, "cpu", lambda step, total: None)
    assert not trained_again and again.fingerprint == key.fingerprint
