"""Sharded encryption: two processes under torchrun write exactly what one process writes, and decrypt reads the parts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import avpcli
from avpcli.cli import app
from conftest import folder_contents, write_noise_photos

runner = CliRunner()
# Batch size 1: the engine's floating-point results can differ (by one 8-bit level) with an image's
# batch-mates, and shards group files differently from a single process.
SETTINGS = ["--target", "tiny-embedding", "--iterations", "15", "--batch-size", "1", "--device", "cpu", "--seed", "4"]


def test_torchrun_two_processes_match_one_process_and_decrypt_reads_the_parts(tmp_path, tiny_key_file):
    names = [f"{'sub/' if index % 3 == 0 else ''}img{index}.png" for index in range(7)]
    photos = write_noise_photos(tmp_path / "photos", names, 36, 36, seed=2)
    (photos / "img9.jpg").write_bytes(b"broken")

    single = tmp_path / "single"
    result = runner.invoke(app, ["encrypt", str(photos), "--key", str(tiny_key_file), "--out", str(single), *SETTINGS],
                           catch_exceptions=False)
    assert result.exit_code == 1  # img9.jpg fails

    sharded = tmp_path / "sharded"
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "avpcli",
         "encrypt", str(photos), "--key", str(tiny_key_file), "--out", str(sharded), *SETTINGS],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    # img9.jpg fails, so one shard exits 1 and torchrun reports it (with its own traceback,
    # whose frames are torch's: none may come from avp).
    assert completed.returncode == 1 and "exitcode  : 1" in completed.stderr, completed.stderr[-3000:]
    assert f'File "{Path(avpcli.__file__).parent}' not in completed.stderr, completed.stderr[-3000:]
    assert (sharded / "avp-manifest.part-1-of-2.json").is_file() and (sharded / "avp-manifest.part-2-of-2.json").is_file()
    merged = folder_contents(sharded)
    parts = {name: merged.pop(name) for name in list(merged) if ".part-" in name}
    assert len(parts) == 2
    # The last shard to finish merged the parts: the folder is byte for byte the single process's.
    assert merged == folder_contents(single)

    decrypted_single = tmp_path / "decrypted-single"
    assert runner.invoke(app, ["decrypt", str(single), "--key", str(tiny_key_file), "--out", str(decrypted_single),
                               "--device", "cpu"], catch_exceptions=False).exit_code == 0
    # A folder with only the parts (as while shards run, or if the merge was lost) decrypts as well.
    (sharded / "avp-manifest.json").unlink()
    decrypted_parts = tmp_path / "decrypted-parts"
    result = runner.invoke(app, ["decrypt", str(sharded), "--key", str(tiny_key_file), "--out", str(decrypted_parts),
                                 "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert folder_contents(decrypted_parts) == folder_contents(decrypted_single)


def test_shards_run_one_after_another_merge_when_the_last_finishes(tmp_path, tiny_key_file):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(5):
        Image.fromarray(np.full((32, 32, 3), index * 40, dtype=np.uint8)).save(photos / f"{index}.png")
    out = tmp_path / "out"

    def shard(label: str):
        return runner.invoke(app, ["encrypt", str(photos), "--key", str(tiny_key_file), "--out", str(out), *SETTINGS,
                                   "--shard", label], catch_exceptions=False)

    assert shard("2/3").exit_code == 0 and not (out / "avp-manifest.json").exists()
    assert shard("1/3").exit_code == 0 and not (out / "avp-manifest.json").exists()
    assert shard("3/3").exit_code == 0
    merged = (out / "avp-manifest.json").read_text()
    single = tmp_path / "single"
    runner.invoke(app, ["encrypt", str(photos), "--key", str(tiny_key_file), "--out", str(single), *SETTINGS],
                  catch_exceptions=False)
    assert merged == (single / "avp-manifest.json").read_text()
    # A rerun without shards finds everything done in the merged manifest.
    shutil.rmtree(single)
    again = runner.invoke(app, ["encrypt", str(photos), "--key", str(tiny_key_file), "--out", str(out), *SETTINGS],
                          catch_exceptions=False)
    assert again.exit_code == 0 and len(again.stdout.splitlines()) == 5
