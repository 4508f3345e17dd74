"""Decrypt's memory is bounded (issue #24): a pixel cap (--max-pixels, encrypt's MAX_PIXELS by default) is
checked from the PNG header before any pixel is decoded, and a file that exceeds it fails alone."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avpcli.cli import app
from conftest import write_noise_photos

REPO = Path(__file__).resolve().parents[1]
ENCRYPT = ["--target", "tiny-embedding", "--iterations", "2", "--device", "cpu", "--seed", "5", "--no-align"]

# Runs `avp ARGS...` in this process and prints its exit code and peak resident memory (ru_maxrss, KiB on Linux).
_MEASURED = """
import sys
from avpcli.cli import app
try:
    app(sys.argv[1:], prog_name="avp")
    code = 0
except SystemExit as exit:
    code = exit.code or 0
# VmHWM, not ru_maxrss: the kernel carries ru_maxrss over the exec from the parent (pytest, grown by the tests
# before this one), so it measured the test run rather than the command.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(f"exit={code} peak_kib={peak}", file=sys.stderr)
"""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_bomb(path: Path, width: int, height: int) -> Path:
    """A PNG of a few hundred bytes whose header claims width × height 8-bit RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 4096))
                     + _chunk(b"IEND", b""))
    return path


def measured(*args) -> tuple[int, int, list[str]]:
    """(exit code, peak RSS in bytes, stderr lines but the measurement's) of `avp ARGS` in a fresh process."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _MEASURED, *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=300)
    *lines, last = done.stderr.splitlines()
    fields = dict(field.split("=") for field in last.split())
    return int(fields["exit"]), int(fields["peak_kib"]) * 1024, lines


def test_a_header_bomb_fails_alone_in_bounded_memory(tmp_path, tiny_key_file):
    photos = write_noise_photos(tmp_path / "in", ["good.png"], 32, 32, seed=3)
    encrypted = tmp_path / "V"
    assert CliRunner().invoke(app, [str(arg) for arg in ("encrypt", photos, "--key", tiny_key_file, "--out",
                                                         encrypted, *ENCRYPT)]).exit_code == 0
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copyfile(encrypted / "good.png", inbox / "good.png")
    bomb = header_bomb(inbox / "bomb.png", 9400, 9400)
    assert bomb.stat().st_size < 300
    code, peak, lines = measured("decrypt", bomb, inbox / "good.png", "--key", tiny_key_file, "--out", tmp_path / "D",
                                 "--device", "cpu")
    print(f"9400x9400 header bomb beside a good file: peak RSS {peak / 2**20:.0f} MiB")
    assert code == 1
    assert lines == [f"failed: {bomb}: cannot read: image too large (9400x9400 pixels declared; the cap is "
                     "80,000,000 pixels, --max-pixels)"]
    assert peak <= 1 << 30
    assert [path.name for path in (tmp_path / "D").glob("*.png")] == ["good.png"]
    entries = json.loads((tmp_path / "D" / "avp-manifest.json").read_text())["files"]
    assert sorted(entry["status"] for entry in entries) == ["failed", "ok"]


def test_max_pixels_sets_the_cap_of_both_commands(tmp_path, tiny_key_file):
    from avpcli.cli.options import DEFAULT_MAX_PIXELS
    from avpcli.images import MAX_PIXELS

    assert DEFAULT_MAX_PIXELS == MAX_PIXELS
    photos = write_noise_photos(tmp_path / "in", ["a.png"], 32, 32, seed=4)
    runner = CliRunner()
    capped = runner.invoke(app, [str(arg) for arg in ("encrypt", photos, "--key", tiny_key_file, "--out",
                                                      tmp_path / "capped", *ENCRYPT, "--max-pixels", "1000")])
    assert capped.exit_code == 1
    assert "failed: a.png: image too large (32x32 pixels declared; the cap is 1,000 pixels, --max-pixels)" in capped.stderr
    assert runner.invoke(app, [str(arg) for arg in ("encrypt", photos, "--key", tiny_key_file, "--out",
                                                    tmp_path / "V", *ENCRYPT)]).exit_code == 0
    # The folder form names the manifest's file, the files form the path given.
    for given, shown in ((tmp_path / "V", "a.png"), (tmp_path / "V" / "a.png", tmp_path / "V" / "a.png")):
        result = runner.invoke(app, [str(arg) for arg in ("decrypt", given, "--key", tiny_key_file, "--out",
                                                          tmp_path / f"D{len(given.parts)}", "--device", "cpu",
                                                          "--max-pixels", "1000")])
        assert result.exit_code == 1
        assert result.stderr.splitlines()[-1] == (f"failed: {shown}: cannot read: image too large "
                                                  "(32x32 pixels declared; the cap is 1,000 pixels, --max-pixels)")


@pytest.mark.skipif(os.environ.get("AVP_HEAVY_TESTS") != "1",
                    reason="a real 6,000x6,000 ciphertext takes about 4.5 GB and 2.5 minutes: set AVP_HEAVY_TESTS=1")
def test_a_real_6000_square_ciphertext_decrypts_or_fails_alone(tmp_path, tiny_key_file):
    import torch

    from avpcli.images import png_bytes
    from avpcli.key import load_key

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    original = torch.rand(1, 3, 6000, 6000, generator=torch.Generator().manual_seed(0))
    (inbox / "big.png").write_bytes(png_bytes(load_key(tiny_key_file).model.preimage(original)[0]))
    del original
    code, peak, lines = measured("decrypt", inbox / "big.png", "--key", tiny_key_file, "--out", tmp_path / "D",
                                 "--device", "cpu")
    print(f"6000x6000 ciphertext: exit {code}, peak RSS {peak / 2**30:.2f} GiB, {lines}")
    assert not any("Traceback" in line for line in lines)
    if code == 0:
        assert lines == [] and (tmp_path / "D" / "big.png").is_file()
    else:
        assert code == 1 and len(lines) == 1 and lines[0].startswith(f"failed: {inbox / 'big.png'}: ")
