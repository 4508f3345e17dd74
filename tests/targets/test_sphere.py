"""cosface (sphere-20, RGB) and sphereface (sphere20a, BGR): TIP-IM/AVIH checkpoint names."""

from __future__ import annotations

import pytest
import torch

from avpcli.errors import WeightsUnavailableError
from avpcli.targets import get_spec, load_target
from avpcli.targets.sphere import Sphere20, Sphere20a
from target_checks import check_target, randomize, save


def test_cosface_state_dict_names(tmp_path):
    state = randomize(Sphere20()).state_dict()
    assert {"layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer3.5.prelu2.weight", "fc.weight"} <= set(state)
    check_target(load_target("cosface", save(state, tmp_path / "cosface.pth")), 512)


def test_sphereface_ignores_the_angular_classifier(tmp_path):
    state = dict(randomize(Sphere20a()).state_dict())
    assert {"conv1_1.weight", "relu1_1.weight", "conv3_9.bias", "relu4_3.weight", "fc5.weight"} <= set(state)
    state["fc6.weight"] = torch.zeros(512, 10574)
    target = load_target("sphereface", save(state, tmp_path / "sphere20a_20171020.pth"))
    check_target(target, 512)
    assert target.spec.channel_order == "bgr"


@pytest.mark.parametrize("name", ["cosface", "sphereface"])
def test_sphere_facts_and_missing_weights(name):
    spec = get_spec(name)
    assert spec.input_size == (112, 96) and spec.alignment == "arcface96"
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        load_target(name)
