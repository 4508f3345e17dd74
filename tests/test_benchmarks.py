"""benchmarks/: every script runs as `python -m benchmarks.NAME` and shows its help; the shared pieces in
benchmarks/common.py (settings options, the LFW reader, the cached key) do what the scripts relied on."""

from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from avpcli import AttackSettings, KeyPreset, attack_settings, get_spec, load_key
from avpcli.key import TEST_SEED_KDF
from benchmarks import common

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.stem for path in (REPO / "benchmarks").glob("*.py") if path.stem not in ("__init__", "common"))


def test_no_benchmark_edits_the_import_path():
    for path in (REPO / "benchmarks").glob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text and "PYTHONPATH" not in text and "E402" not in text, path.name


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # imported by another test first
def test_every_benchmark_runs_as_a_module_and_shows_its_help(name, monkeypatch, capsys):
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit:
        runpy.run_module(f"benchmarks.{name}", run_name="__main__")
    assert exit.value.code == 0
    assert "usage:" in capsys.readouterr().out
    # --help changes nothing in the process: the suite's other tests compare results made with one thread.
    assert torch.get_num_threads() == threads


def test_a_fresh_python_in_the_repository_runs_a_benchmark_as_a_module():
    # privacy_doc imports encrypt_faces, privacy, mtcnn_hits and common: the import paths of most of them.
    finished = subprocess.run([sys.executable, "-m", "benchmarks.privacy_doc", "--help"], cwd=REPO,
                              capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "python -m benchmarks.privacy_doc" in finished.stdout


def parse(argv: list[str], **options) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    common.add_settings_options(parser, **options)
    return parser.parse_args(argv)


def test_settings_options_default_to_the_recipe():
    overrides = common.settings_overrides(parse([]))
    assert set(overrides) >= {"iterations", "key_weight", "hold_colour", "initialization", "max_lowpass_correlation"}
    assert all(value is None for value in overrides.values())
    for target in ("dlib", "mobilefacenet", "cifar-resnet20"):
        spec = get_spec(target)
        assert attack_settings(spec.loss, stop_past_original=spec.stop_past_original, **overrides) == attack_settings(
            spec.loss, stop_past_original=spec.stop_past_original)


def test_settings_options_carry_types_choices_aliases_and_bars():
    args = parse(["--iterations", "30", "--key-weight", "0.5", "--no-hold-colour", "--init", "noise",
                  "--lowpass-bar", "0.2"], aliases={"--init": "initialization", "--lowpass-bar": "max_lowpass_correlation"})
    overrides = common.settings_overrides(args)
    assert (overrides["iterations"], overrides["key_weight"], overrides["hold_colour"]) == (30, 0.5, False)
    settings = attack_settings("embedding", **overrides)
    assert settings.initialization == "noise" and settings.stop.max_lowpass_correlation == 0.2
    # A negative bar keeps the recipe's, as encrypt_faces.py's --lowpass-bar always did.
    assert common.settings_overrides(parse(["--max-lowpass-correlation", "-1"]))["max_lowpass_correlation"] is None
    with pytest.raises(SystemExit):
        parse(["--smoothness", "wiggly"])


def test_settings_options_can_be_a_few_with_a_benchmarks_own_default():
    args = parse([], only=["iterations", "key_weight"], defaults={"iterations": 300})
    assert common.settings_overrides(args) == {"iterations": 300, "key_weight": None}
    with pytest.raises(ValueError, match="no settings option"):
        parse([], only=["stop"])
    # Every field of a plain type has its option.
    names = {field for field in AttackSettings.__dataclass_fields__} - {"stop", "autocast_dtype"}
    assert names <= set(common.settings_overrides(parse([])))


def test_read_lfw_keeps_the_files_order_and_groups_identities_by_name(tmp_path):
    (tmp_path / "lfw.csv").write_text("path,identity,role\n"
                                      "lfw/B/B_0002.jpg,B,multi\nlfw/B/B_0001.jpg,B,multi\nlfw/A/A_0001.jpg,A,multi\n"
                                      "lfw/P/P_0001.jpg,P,probe\nlfw/D/D_0001.jpg,D,distractor\nlfw/E/E_0001.jpg,E,distractor\n")
    photos = common.read_lfw(tmp_path)
    assert [photo.file for photo in photos][:2] == ["lfw/B/B_0002.jpg", "lfw/B/B_0001.jpg"]
    assert photos[0].path == tmp_path / "lfw/B/B_0002.jpg" and photos[0].role == "multi"
    assert [photo.identity for photo in common.read_lfw(tmp_path, "distractor")] == ["D", "E"]
    assert common.lfw_faces(tmp_path, 5) == [tmp_path / "lfw/A/A_0001.jpg", tmp_path / "lfw/B/B_0001.jpg"]
    probes, gallery = common.lfw_split(tmp_path, 1)
    assert probes == {"P": [tmp_path / "lfw/P/P_0001.jpg"]} and gallery == [("D", tmp_path / "lfw/D/D_0001.jpg")]


def test_cached_key_trains_once_and_then_reuses_the_file(tmp_path):
    preset = KeyPreset(ngf=4, blocks=1, norm="batch", steps=2, batch_size=2, crop_size=32, learning_rate=1e-3,
                       seed_kdf=TEST_SEED_KDF)
    path = tmp_path / "keys" / "tiny.safetensors"
    said = []
    trained = common.cached_key(path, preset, seed=1, before_training=lambda: said.append("training"))
    assert trained is not None and said == ["training"] and load_key(path).fingerprint == trained.fingerprint
    before = path.read_bytes()
    assert common.cached_key(path, preset, seed=2, before_training=lambda: said.append("again")) is None
    assert said == ["training"] and path.read_bytes() == before
