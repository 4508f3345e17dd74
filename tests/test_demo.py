"""The demo's key cache: where it lives (the run itself is covered by the CLI tests)."""

from __future__ import annotations

from avpcli.demo import demo_key_path


def test_demo_key_lives_in_the_user_cache_even_when_xdg_cache_home_is_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert demo_key_path() == tmp_path / ".cache" / "avp" / "demo-key.safetensors"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_key_path() == tmp_path / "xdg" / "avp" / "demo-key.safetensors"
