"""resnet50 / vgg19 at ImageNet and CIFAR-10 size: the state_dict layouts docs/TARGETS.md promises."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from avpcli.errors import WeightsUnavailableError
from avpcli.targets import load_target
from avpcli.targets.classifiers import CifarVGG, resnet50_classifier
from target_checks import check_target, save


def test_resnet50_cifar_accepts_kuangliu_names(tmp_path):
    reference = resnet50_classifier({"fc.weight": torch.zeros(10, 2048)}, cifar=True).eval()
    state = {}
    for key, value in reference.state_dict().items():
        key = key.replace(".downsample.", ".shortcut.")
        state["module." + ("linear." + key[3:] if key.startswith("fc.") else key)] = value
    target = load_target("resnet50-cifar", save({"net": 0, "state_dict": state}, tmp_path / "ckpt.pth"))
    assert target.model.conv1.kernel_size == (3, 3)
    check_target(target, 10, batch=1)


def test_resnet50_imagenet_layout(tmp_path):
    state = models.resnet50(weights=None, num_classes=7).state_dict()
    target = load_target("resnet50", save(state, tmp_path / "resnet50.pth"))
    assert target.spec.input_size == (224, 224) and target.model.fc.out_features == 7


@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg19_cifar_with_and_without_batch_norm(batch_norm, tmp_path):
    state = CifarVGG(batch_norm, 10).state_dict()
    target = load_target("vgg19-cifar", save(state, tmp_path / "vgg19.pth"))
    check_target(target, 10, batch=1)


@pytest.mark.parametrize("name", ["resnet50", "resnet50-cifar", "vgg19", "vgg19-cifar"])
def test_classifiers_need_user_weights(name):
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        load_target(name)
