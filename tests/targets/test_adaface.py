"""adaface: the released checkpoint layout ({"state_dict": {"model.<k>", "head.kernel"}}), BGR, (feature, norm)."""

from __future__ import annotations

import pytest
import torch

from avpcli.errors import WeightsUnavailableError
from avpcli.targets import get_spec, load_target
from avpcli.targets.adaface import AdaFaceIR
from target_checks import check_target, randomize, save


def test_adaface_checkpoint_layout_loads(tmp_path):
    backbone = randomize(AdaFaceIR(18))
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state["head.kernel"] = torch.zeros(512, 10)  # the margin head's class centres, not needed
    path = save({"epoch": 24, "state_dict": state}, tmp_path / "adaface_ir18.ckpt")
    target = load_target("adaface", path)
    check_target(target, 512, batch=1)
    # TargetModel feeds BGR in [-1, 1] and keeps the feature (element 0) of (feature, norm).
    images = torch.rand(1, 3, 112, 112)
    feature, norm = backbone(images.flip(1) * 2 - 1)
    assert torch.allclose(target(images), feature, atol=1e-5)


def test_adaface_facts():
    spec = get_spec("adaface")
    assert (spec.input_size, spec.channel_order, spec.mean, spec.std) == ((112, 112), "bgr", (0.5,) * 3, (0.5,) * 3)
    assert sum(p.numel() for p in AdaFaceIR(50).body.parameters()) > 20_000_000


def test_adaface_needs_weights():
    with pytest.raises(WeightsUnavailableError, match="--weights PATH.*AdaFace"):
        load_target("adaface")
