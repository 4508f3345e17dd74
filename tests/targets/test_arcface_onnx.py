"""arcface: an .onnx file (as insightface ships w600k_r50.onnx) converts and matches; download rules."""

from __future__ import annotations

import urllib.error
import warnings

import pytest
import torch
from torch import nn

from avpcli.errors import WeightsUnavailableError
from avpcli.targets import load_target
from avpcli.targets.arcface_onnx import BUFFALO_L
from target_checks import check_target, randomize


def test_arcface_onnx_file_matches_its_source(tmp_path):
    model = randomize(nn.Sequential(
        nn.Conv2d(3, 8, 3, 4, 1), nn.BatchNorm2d(8), nn.PReLU(8), nn.Conv2d(8, 8, 3, 4, 1),
        nn.Flatten(), nn.Linear(8 * 7 * 7, 512), nn.BatchNorm1d(512),
    ))
    path = tmp_path / "w600k_r50.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 3, 112, 112),), str(path), dynamo=False, opset_version=13)
    target = load_target("arcface", path)
    check_target(target, 512)
    images = torch.rand(2, 3, 112, 112)
    expected = nn.functional.normalize(model(images * 2 - 1), dim=1)
    assert ((target(images) - expected).abs().max() / expected.abs().max()).item() <= 1e-4


def test_arcface_offline_names_buffalo_l(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("avpcli.targets.arcface_onnx.INSIGHTFACE_COPY", tmp_path / "absent.onnx")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        load_target("arcface")
    assert BUFFALO_L.url in str(error.value) and "--weights PATH" in str(error.value)
