"""Output folders that could mix with or replace the inputs are refused; inputs are never modified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avpcli.errors import UsageError
from avpcli.jobs import check_output_folder, encrypt_folder, remove_stale_temporaries


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.jpg"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("output, inputs, reason", [
    ("photos", ["photos"], "inside the input folder"),
    ("photos/sub/enc", ["photos"], "inside the input folder"),
    ("photos", ["photos/a.png"], "is the folder of the input"),
    (".", ["photos"], "inside the output folder"),
    ("photos/sub", ["photos/a.png", "photos/sub/b.jpg"], "is the folder of the input"),
])
def test_overlapping_output_folders_are_refused(tmp_path, photos, monkeypatch, output, inputs, reason):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=reason):
        check_output_folder([Path(given) for given in inputs], Path(output))


@pytest.mark.parametrize("output, inputs", [
    ("photos-encrypted", ["photos"]),
    ("photos/a-encrypted", ["photos/a.png"]),  # the default for one file: a folder beside it
    ("elsewhere", ["photos/a.png", "photos/sub"]),
])
def test_separate_output_folders_are_accepted(tmp_path, photos, monkeypatch, output, inputs):
    monkeypatch.chdir(tmp_path)
    check_output_folder([Path(given) for given in inputs], Path(output))


def test_an_output_folder_reached_through_a_link_is_still_refused(tmp_path, photos):
    (tmp_path / "link").symlink_to(photos)
    with pytest.raises(UsageError):
        check_output_folder([photos], tmp_path / "link" / "enc")


def test_only_our_own_temporaries_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    ours = [tmp_path / ".a.png.k2j4_x9q.part", tmp_path / "sub" / ".b.png.00000000.part",
            tmp_path / ".a_face2.png.abcdefgh.part"]
    kept = [tmp_path / ".c.png.abcdefgh.part", tmp_path / "a.png", tmp_path / ".a.png.notours"]
    for path in ours + kept:
        path.write_bytes(b"x")
    remove_stale_temporaries(tmp_path, {Path("a.png"), Path("sub/b.png")})
    assert not any(path.exists() for path in ours)
    assert all(path.exists() for path in kept)


def test_inputs_are_never_modified(tmp_path, photos, tiny_key_file):
    from typer.testing import CliRunner

    from avpcli.cli import app

    before = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in photos.rglob("*") if path.is_file()}
    modes = {path: path.stat().st_mode for path in before}
    for extra in ([], ["--overwrite"], ["--anonymize", "--names-map", str(tmp_path / "names.json")]):
        result = CliRunner().invoke(app, ["encrypt", str(photos), "--target", "tiny-embedding", "--key",
                                          str(tiny_key_file), "--out", str(tmp_path / f"out{len(extra)}"),
                                          "--iterations", "2", "--device", "cpu", *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
    after = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in photos.rglob("*") if path.is_file()}
    assert after == before and {path: path.stat().st_mode for path in after} == modes


def test_another_source_of_the_same_name_never_replaces_a_finished_output(tmp_path, tiny_key_file):
    import json

    from avpcli import Encryptor

    first, second = tmp_path / "one" / "c.png", tmp_path / "two" / "c.png"
    for path, seed in ((first, 1), (second, 2)):
        path.parent.mkdir()
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    encryptor = Encryptor("tiny-embedding", tiny_key_file, device="cpu", iterations=2)
    out = tmp_path / "enc"
    events = []
    encrypt_folder(encryptor, [first], out, events.append, noise_seed=1)
    before = (out / "c.png").read_bytes()
    encrypt_folder(encryptor, [first], out, events.append)  # the same file: skipped
    assert [event.kind for event in events if event.kind != "progress"] == ["written", "skipped"]
    # Another file of the same name is encrypted under its parent folder's name; the first stays.
    events.clear()
    encrypt_folder(encryptor, [second], out, events.append)
    assert [(event.kind, event.output) for event in events if event.kind != "progress"] == [
        ("written", out / "two" / "c.png")]
    assert (out / "c.png").read_bytes() == before
    entries = {entry["output"]: entry for entry in json.loads((out / "avp-manifest.json").read_text())["files"]}
    assert set(entries) == {"c.png", "two/c.png"} and entries["two/c.png"]["source"] == "two/c.png"
    for name, entry in entries.items():
        assert entry["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    # Each rerun recognises its own output; the manifest tags sources under the key and the run, never
    # with a plain hash a photo's holder could check.
    events.clear()
    encrypt_folder(encryptor, [second], out, events.append)
    encrypt_folder(encryptor, [first], out, events.append)
    assert [event.kind for event in events if event.kind != "progress"] == ["skipped", "skipped"]
    tag = entries["two/c.png"]["source_tag"]
    assert tag.startswith("run:") and hashlib.sha256(second.read_bytes()).hexdigest() not in tag


def test_a_rerun_does_not_read_a_fifo_that_replaced_a_finished_source(tmp_path, tiny_key_file):
    import os
    import signal

    from avpcli import Encryptor

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, seed in (("a.png", 1), ("b.png", 2)):
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photos / name)
    encryptor = Encryptor("tiny-embedding", tiny_key_file, device="cpu", iterations=1)
    encrypt_folder(encryptor, photos, tmp_path / "out", noise_seed=1)
    (photos / "b.png").unlink()
    os.mkfifo(photos / "b.png")  # opened for reading, a FIFO blocks until a writer comes: never here
    class Hung(Exception):  # not an OSError, which the code under test may catch
        pass

    def hung(signum, frame):
        raise Hung("the rerun hung on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)  # a hang fails this test, not the whole suite
    signal.alarm(20)
    try:
        events = []
        encrypt_folder(encryptor, photos, tmp_path / "out", events.append)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    kinds = {event.source: event.kind for event in events if event.kind != "progress"}
    assert kinds == {"a.png": "skipped", "b.png": "failed"}


def test_settings_added_later_are_recorded_only_when_used():
    # A folder an older avp started must resume with a newer one whose run leaves the new settings off.
    import dataclasses

    from avpcli.engine import FACE_SETTINGS, stopping_past_the_original
    from avpcli.jobs import settings_record

    plain = settings_record(FACE_SETTINGS)
    assert "start_side_weight" not in plain and "max_start_side" not in plain["stop"]
    assert plain["stop"]["max_feature_distance"] == FACE_SETTINGS.stop.max_feature_distance
    used = settings_record(stopping_past_the_original(FACE_SETTINGS))
    assert used["start_side_weight"] == 30.0 and used["stop"]["max_start_side"] == 0.0
    assert settings_record(dataclasses.replace(FACE_SETTINGS, stop=None))["stop"] is None
