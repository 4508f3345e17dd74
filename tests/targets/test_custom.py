"""onnx:PATH and torchscript:PATH: round trips against the original torch model, options, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from avpcli.errors import TargetError
from avpcli.targets import get_spec, load_target
from avpcli.targets.custom import CustomTargetOptions, custom_target
from target_checks import check_target, randomize

OPTIONS = CustomTargetOptions(
    input_size=(24, 20), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), channel_order="bgr", loss="embedding"
)


def tiny_net() -> nn.Module:
    return randomize(nn.Sequential(
        nn.Conv2d(3, 6, 3, 2, 1), nn.BatchNorm2d(6), nn.PReLU(6),
        nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 5, 16),
    ))


def export_onnx(model: nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(model, (torch.rand(1, 3, 24, 20),), str(path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}})


def _reference_and_input(model: nn.Module):
    images = torch.rand(3, 3, 24, 20, requires_grad=True)
    normalized = (images.flip(1) - torch.tensor(OPTIONS.mean).view(1, 3, 1, 1)) / torch.tensor(OPTIONS.std).view(1, 3, 1, 1)
    reference = nn.functional.normalize(model(normalized), dim=1)
    return images, reference


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_round_trip_matches_outputs_and_gradients(kind, tmp_path):
    model = tiny_net()
    path = tmp_path / f"net.{kind}"
    if kind == "onnx":
        export_onnx(model, path)
    else:
        torch.jit.save(torch.jit.trace(model, torch.rand(1, 3, 24, 20)), str(path))
    target = load_target(f"{kind}:{path}", options=OPTIONS)
    check_target(target, 16)

    images, reference = _reference_and_input(model)
    direction = torch.randn(reference.shape)
    (reference * direction).sum().backward()
    expected_grad = images.grad.clone()
    images.grad = None
    output = target(images)
    (output * direction).sum().backward()
    scale = reference.abs().max()
    assert ((output - reference).abs().max() / scale).item() <= 1e-4
    assert ((images.grad - expected_grad).abs().max() / expected_grad.abs().max()).item() <= 1e-4


def test_custom_target_shortcut_and_spec(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(tiny_net()), str(path))
    target = custom_target(f"torchscript:{path}", (24, 20), loss="classifier")
    assert target.spec.loss == "classifier" and target.spec.alignment is None
    assert get_spec(f"torchscript:{path}", OPTIONS).channel_order == "bgr"


def test_custom_errors_are_domain_errors(tmp_path):
    with pytest.raises(TargetError, match="--input-size"):
        get_spec("onnx:model.onnx")
    with pytest.raises(TargetError, match="does not exist"):
        load_target(f"onnx:{tmp_path / 'absent.onnx'}", options=OPTIONS)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(TargetError, match="cannot convert ONNX"):
        load_target(f"onnx:{garbage}", options=OPTIONS)
    with pytest.raises(TargetError, match="cannot load TorchScript"):
        load_target(f"torchscript:{garbage}", options=OPTIONS)
    with pytest.raises(TargetError, match="channel order"):
        CustomTargetOptions((8, 8), channel_order="rbg")
    with pytest.raises(TargetError, match="names no file"):
        get_spec("onnx:", OPTIONS)
