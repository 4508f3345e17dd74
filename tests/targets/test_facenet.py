"""facenet / facenet-casia: facenet-pytorch's checkpoint format, download rules, gradients."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from avpcli.errors import WeightsUnavailableError
from avpcli.targets import TargetModel, get_spec, load_target
from avpcli.targets.facenet import FACENET_VGGFACE2, build_inception_resnet_v1
from target_checks import check_target, randomize, save


def test_facenet_checkpoint_with_classifier_head_loads(tmp_path):
    reference = randomize(build_inception_resnet_v1(None, "facenet"))
    state = dict(reference.state_dict())
    state["logits.weight"] = torch.zeros(8631, 512)  # the released file carries its training head
    state["logits.bias"] = torch.zeros(8631)
    target = load_target("facenet", save(state, tmp_path / "20180402-114759-vggface2.pt"))
    check_target(target, 512, batch=1)
    images = torch.rand(1, 3, 160, 160)
    expected = TargetModel(get_spec("facenet"), reference)(images)
    assert torch.allclose(target(images), expected, atol=1e-5)


def test_facenet_spec_matches_facenet_pytorch_preprocessing():
    spec = get_spec("facenet")
    pixel = torch.tensor(200 / 255)
    assert torch.isclose((pixel - spec.mean[0]) / spec.std[0], torch.tensor((200 - 127.5) / 128))
    assert spec.input_size == (160, 160) and spec.channel_order == "rgb"


def test_facenet_reuses_facenet_pytorch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "checkpoints" / FACENET_VGGFACE2.filename
    cached.parent.mkdir()
    save(randomize(build_inception_resnet_v1(None, "facenet")).state_dict(), cached)

    def no_network(*args, **kwargs):
        raise AssertionError("cached weights must not be downloaded")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    assert load_target("facenet").spec.name == "facenet"


def test_facenet_offline_error_names_weights_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        load_target("facenet")
    assert "--weights PATH" in str(error.value) and FACENET_VGGFACE2.url in str(error.value)


def test_facenet_casia_is_never_downloaded_unchecked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        load_target("facenet-casia")
