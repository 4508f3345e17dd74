"""cifar-resnetNN: akamaster's checkpoint format, real weights classify CIFAR-10 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from avpcli.targets import load_target
from avpcli.targets.cifar_resnet import CifarResNet
from target_checks import check_target, randomize, save

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_akamaster_checkpoint_format(tmp_path):
    state = randomize(CifarResNet(3)).state_dict()
    path = save({"best_prec1": 91.7, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "r20.th")
    check_target(load_target("cifar-resnet20", path), 10)


@pytest.mark.parametrize("depth", [20, 56])
def test_real_weights_classify_cifar10(depth, data_root):
    weights = sorted((data_root / "weights" / "cifar10_resnet_akamaster").glob(f"resnet{depth}-*.th"))
    if not weights or not (data_root / "cifar10").is_dir():
        pytest.skip("akamaster weights or CIFAR-10 images not present")
    files = [sorted((data_root / "cifar10" / name).glob("*.png"))[:5] for name in CLASSES]
    images = torch.stack([
        torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
        for per_class in files for f in per_class
    ])
    labels = torch.tensor([index for index, per_class in enumerate(files) for _ in per_class])
    target = load_target(f"cifar-resnet{depth}", weights[0])
    with torch.no_grad():
        accuracy = (target(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.8  # 50 images; the full 1,000-image check is benchmarks/real_weights_accuracy.py
