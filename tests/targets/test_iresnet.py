"""arcface_torch IResNet: architecture, depth read from the checkpoint, loading through `arcface`."""

from __future__ import annotations

import pytest
import torch

from avpcli.errors import TargetError
from avpcli.targets import load_target
from avpcli.targets.iresnet import IRESNET_LAYERS, IResNet, iresnet_depth_of
from target_checks import check_target, randomize, save


def test_iresnet50_size_matches_arcface_torch():
    model = IResNet(50)
    assert sum(p.numel() for p in model.parameters()) == 43_590_848
    assert iresnet_depth_of(model.state_dict()) == 50


@pytest.mark.parametrize("depth", [100])
def test_depth_is_read_from_block_counts(depth):
    state = {f"layer{stage}.{block}.conv1.weight": torch.zeros(1)
             for stage, blocks in enumerate(IRESNET_LAYERS[depth], start=1) for block in range(blocks)}
    assert iresnet_depth_of(state) == depth
    with pytest.raises(TargetError, match="no IResNet"):
        iresnet_depth_of({"layer1.0.conv1.weight": torch.zeros(1)})


def test_arcface_takes_an_arcface_torch_pth(tmp_path):
    path = save(randomize(IResNet(18)).state_dict(), tmp_path / "backbone.pth")
    target = load_target("arcface", path)
    assert isinstance(target.model, IResNet)
    check_target(target, 512, batch=1)
