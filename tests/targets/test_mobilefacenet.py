"""mobilefacenet (Xiaoccer, 112x96) and mobilefacenet-foamliu (112x112): formats, real weights, errors."""

from __future__ import annotations

import pytest
import torch

from avpcli.errors import WeightsUnavailableError
from avpcli.targets import load_target
from avpcli.targets.mobilefacenet import MobileFaceNetFoamliu, MobileFaceNetXiaoccer
from target_checks import check_target, randomize, save

REAL = {
    "mobilefacenet": "weights/mobilefacenet_xiaoccer/068.ckpt",
    "mobilefacenet-foamliu": "weights/mobilefacenet_foamliu/mobilefacenet.pt",
}


def test_xiaoccer_checkpoint_format(tmp_path):
    model = randomize(MobileFaceNetXiaoccer())
    path = save({"epoch": 68, "net_state_dict": model.state_dict()}, tmp_path / "068.ckpt")
    check_target(load_target("mobilefacenet", path), 128)


def test_foamliu_plain_state_dict(tmp_path):
    path = save(randomize(MobileFaceNetFoamliu()).state_dict(), tmp_path / "mobilefacenet.pt")
    check_target(load_target("mobilefacenet-foamliu", path), 128)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_weights_load_and_separate_faces(name, data_root):
    path = data_root / REAL[name]
    if not path.is_file():
        pytest.skip(f"{path} not present")
    target = load_target(name, path)
    embeddings = check_target(target, 128)
    assert not torch.allclose(embeddings[0], embeddings[1])


@pytest.mark.parametrize("name", sorted(REAL))
def test_missing_weights_say_where_to_get_them(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"--weights PATH.*github.com"):
        load_target(name)
