"""Weights: downloads (checksummed, cached, offline-safe) and tensors-only loading."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from avpcli.errors import TargetError, WeightsUnavailableError
from avpcli.weights import (
    RemoteWeights,
    default_cache_dir,
    fetch_weights,
    load_checkpoint_into,
    load_torch_file,
    resolve_weights,
    unwrap_state_dict,
    user_cache_home,
)

PAYLOAD = b"pretend these are weights"


def _remote(tmp_path: Path, payload: bytes = PAYLOAD, sha256: str | None = "auto", **extra) -> RemoteWeights:
    source = tmp_path / "published.bin"
    source.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest() if sha256 == "auto" else sha256
    return RemoteWeights(url=source.as_uri(), filename="cached.bin", sha256=digest, **extra)


def test_download_from_file_url_is_checked_and_cached(tmp_path):
    cache = tmp_path / "cache"
    path = fetch_weights(_remote(tmp_path), "demo", cache_dir=cache)
    assert path == cache / "cached.bin" and path.read_bytes() == PAYLOAD
    assert [p.name for p in cache.iterdir()] == ["cached.bin"]  # no temporary files left behind


def test_cache_hit_does_not_download(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cached.bin").write_bytes(b"already here")

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")

    assert fetch_weights(_remote(tmp_path), "demo", cache_dir=cache, opener=no_network).read_bytes() == b"already here"


def test_checksum_mismatch_is_an_error_and_nothing_is_cached(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(WeightsUnavailableError, match="checksum mismatch"):
        fetch_weights(_remote(tmp_path, sha256="0" * 64), "demo", cache_dir=cache)
    assert not (cache / "cached.bin").exists()


def test_offline_names_weights_option_and_url(tmp_path):
    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    remote = _remote(tmp_path)
    with pytest.raises(WeightsUnavailableError) as error:
        fetch_weights(remote, "demo", cache_dir=tmp_path / "cache", opener=offline)
    assert "--weights PATH" in str(error.value) and remote.url in str(error.value)


def test_without_pinned_checksum_avp_does_not_download(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        fetch_weights(_remote(tmp_path, sha256=None), "demo", cache_dir=tmp_path / "cache")


def test_zip_member_is_extracted_after_the_archive_is_checked(tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr("pack/model.onnx", b"onnx bytes")
        writer.writestr("pack/other.onnx", b"unused")
    remote = _remote(tmp_path, archive.getvalue(), archive_member="pack/model.onnx")
    assert fetch_weights(remote, "demo", cache_dir=tmp_path / "cache").read_bytes() == b"onnx bytes"


def test_resolve_prefers_user_file_then_known_paths(tmp_path):
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"x")
    known = tmp_path / "known.pt"
    known.write_bytes(b"y")
    assert resolve_weights("demo", mine, known_paths=[known]) == mine
    assert resolve_weights("demo", None, known_paths=[tmp_path / "absent", known]) == known
    with pytest.raises(TargetError, match="does not exist"):
        resolve_weights("demo", tmp_path / "typo.pt")
    with pytest.raises(WeightsUnavailableError, match="--weights PATH. Get it from X"):
        resolve_weights("demo", None, how_to_get="Get it from X")


class NotATensor:
    """Any pickled object other than tensors must be refused."""


def test_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": NotATensor()}, path)
    with pytest.raises(TargetError, match="weights_only"):
        load_torch_file(path, "demo")


def test_safetensors_and_prefixes(tmp_path):
    from safetensors.torch import save_file

    model = nn.Linear(2, 3)
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_checkpoint_into(nn.Linear(2, 3), path, "demo")
    assert torch.equal(loaded.weight, model.weight)
    assert set(unwrap_state_dict({"net_state_dict": {"model.a": torch.zeros(1)}}, "demo")) == {"a"}


def test_architecture_mismatch_says_which_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(4, 2), "extra": torch.zeros(1)}, path)
    with pytest.raises(TargetError) as error:
        load_checkpoint_into(nn.Linear(2, 3), path, "demo")
    message = str(error.value)
    assert "missing (e.g. bias)" in message and "unexpected (e.g. extra)" in message and "(4, 2)" in message


@pytest.mark.parametrize("configured", ["", "relative/cache"])
def test_an_empty_or_relative_xdg_cache_home_means_the_home_cache(monkeypatch, tmp_path, configured):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", configured)
    monkeypatch.delenv("TORCH_HOME", raising=False)
    assert user_cache_home() == tmp_path / ".cache"
    assert default_cache_dir() == tmp_path / ".cache" / "torch" / "checkpoints"


def test_an_absolute_xdg_cache_home_and_torch_home_are_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TORCH_HOME", raising=False)
    assert user_cache_home() == tmp_path / "xdg"
    assert default_cache_dir() == tmp_path / "xdg" / "torch" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert default_cache_dir() == tmp_path / "torch-home" / "checkpoints"
