"""A run killed at any moment leaves no partial file, and a rerun finishes exactly what one uninterrupted run writes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from avpcli.cli import app
from avpcli.images import find_images, output_names
from conftest import folder_contents, write_noise_photos

runner = CliRunner()
SETTINGS = ["--target", "tiny-embedding", "--iterations", "20", "--batch-size", "3", "--device", "cpu",
            "--seed", "7"]


@pytest.fixture
def photos(tmp_path) -> Path:
    names = [f"{'nested/' if index % 4 == 0 else ''}p{index:02d}.{'jpg' if index % 3 else 'png'}" for index in range(12)]
    folder = write_noise_photos(tmp_path / "photos", names, 44, 36, seed=9)
    (folder / "broken.jpg").write_bytes(b"not a photo")
    return folder


def encrypt_in_process(photos: Path, key: Path, out: Path, *extra: str):
    return runner.invoke(app, ["encrypt", str(photos), "--key", str(key), "--out", str(out), *SETTINGS, *extra],
                         catch_exceptions=False)


def assert_no_partial_file(out: Path) -> None:
    """Every visible file is whole: a PNG that decodes or a manifest that parses. Temporaries are hidden."""
    for path in out.rglob("*"):
        if path.is_dir():
            continue
        if path.name.startswith("."):
            assert path.name.endswith(".part"), path
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        else:
            assert json.loads(path.read_text())["format"] == "avp-manifest"


def outputs_written(out: Path) -> int:
    return sum(1 for path in out.rglob("*.png") if not path.name.startswith("."))


def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_result(tmp_path, photos, tiny_key_file):
    reference = tmp_path / "reference"
    assert encrypt_in_process(photos, tiny_key_file, reference).exit_code == 1  # broken.jpg fails
    expected = folder_contents(reference)

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "avpcli", "encrypt", str(photos), "--key", str(tiny_key_file),
               "--out", str(out), *SETTINGS]
    # One thread, as in this test process: floating-point results depend on the thread count.
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    chooser = random.Random(1234)
    kills = 0
    # The first kill lands during start-up; each later one after more outputs exist, at a random moment.
    for goal in (0, 3, 8, 10):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
        deadline = time.monotonic() + 60
        while outputs_written(out) < goal and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(chooser.uniform(0, 0.6 if goal == 0 else 0.25))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        assert_no_partial_file(out)
    assert kills >= 2, "the runs finished before they could be killed; make them longer"

    resumed = encrypt_in_process(photos, tiny_key_file, out)
    assert resumed.exit_code == 1 and "broken.jpg" in resumed.stderr
    assert not list(out.rglob("*.part")), "the rerun must clean up the temporaries the kills left"
    assert folder_contents(out) == expected


def test_temporaries_are_not_outputs_and_the_next_run_removes_them(tmp_path, photos, tiny_key_file):
    out = tmp_path / "enc"
    encrypt_in_process(photos, tiny_key_file, out, "--shard", "1/2")
    sources = find_images([photos])
    names = output_names(sources)
    mine, others = [names[source.relative] for source in sources[0::2]], [names[source.relative] for source in sources[1::2]]
    # What a kill leaves: half-written PNGs under temporary names, ours and another shard's.
    ours = out / mine[1].parent / f".{mine[1].name}.abcd1234.part"
    theirs = out / others[1].parent / f".{others[1].name}.abcd1234.part"
    for temporary in (ours, theirs):
        temporary.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(b"\x89PNG half")
    (out / mine[2]).unlink()
    result = encrypt_in_process(photos, tiny_key_file, out, "--shard", "1/2")
    assert result.exit_code == 1
    assert not ours.exists(), "our own temporaries are cleaned up"
    assert theirs.exists(), "another shard may be writing this one right now"
    assert result.stdout.splitlines().count(str(out / mine[2])) == 1
    part = json.loads((out / "avp-manifest.part-1-of-2.json").read_text())
    assert all(".part" not in str(entry["output"]) for entry in part["files"])


def test_rerun_redoes_outputs_that_changed_or_lost_their_entry(tmp_path, photos, tiny_key_file):
    out = tmp_path / "enc"
    encrypt_in_process(photos, tiny_key_file, out)
    expected = folder_contents(out)
    (out / "p01.png").write_bytes(b"tampered")
    manifest = json.loads((out / "avp-manifest.json").read_text())
    manifest["files"] = [entry for entry in manifest["files"] if entry["source"] != "p02.jpg"]
    (out / "avp-manifest.json").write_text(json.dumps(manifest))
    # nested/p08 shares a batch with p01 and p02, so it is recomputed, but not rewritten.
    before = {name: (out / name).stat().st_mtime_ns for name in ("p03.png", "p05.png", "nested/p08.png")}
    result = encrypt_in_process(photos, tiny_key_file, out)
    assert folder_contents(out) == expected
    for name, mtime in before.items():
        assert (out / name).stat().st_mtime_ns == mtime, "finished outputs are not rewritten"
    assert len(result.stdout.splitlines()) == 24  # each photo's container and its ciphertext (issue #23)


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path, photos, tiny_key_file):
    out = tmp_path / "enc"
    encrypt_in_process(photos, tiny_key_file, out)
    expected = folder_contents(out)
    refused = runner.invoke(app, ["encrypt", str(photos), "--key", str(tiny_key_file), "--out", str(out),
                                  *SETTINGS[:-2], "--seed", "8"], catch_exceptions=False)
    assert refused.exit_code == 2 and "--overwrite" in " ".join(refused.stderr.split())
    assert folder_contents(out) == expected
    # Without --seed a rerun takes the earlier run's seed, so it resumes instead.
    resumed = runner.invoke(app, ["encrypt", str(photos), "--key", str(tiny_key_file), "--out", str(out),
                                  *SETTINGS[:-2]], catch_exceptions=False)
    assert resumed.exit_code == 1 and folder_contents(out) == expected
