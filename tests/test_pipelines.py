"""avp in shell pipelines (issue #15): paths from stdin, loose ciphertext files, NDJSON as files finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avpcli.cli import app
from conftest import folder_contents, snapshot, write_noise_photos

REPO = Path(__file__).resolve().parents[1]
# The console script of this interpreter's environment; PYTHONPATH makes it import this checkout.
AVP = Path(sys.executable).parent / "avp"
ENCRYPT = ["--target", "tiny-embedding", "--iterations", "2", "--device", "cpu", "--seed", "5"]
runner = CliRunner()


def invoke(*args, stdin: bytes | None = None):
    return runner.invoke(app, [str(arg) for arg in args], input=stdin, catch_exceptions=False)


def shell(script: str, cwd: Path, **paths: Path) -> subprocess.CompletedProcess:
    """Run `script` with bash -c, pipefail on; $AVP is the console script, and each keyword a variable."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   "OMP_NUM_THREADS": "1", "AVP": str(AVP), **{name: str(path) for name, path in paths.items()}}
    return subprocess.run(["bash", "-c", f"set -o pipefail\n{script}"], cwd=cwd, env=environment,
                          capture_output=True, timeout=120)


@pytest.fixture
def photos(tmp_path) -> Path:
    """Target-sized photos, two of them with one name in different folders, and a file that is no photo."""
    folder = write_noise_photos(tmp_path / "in", ["a/x.png", "b/x.png", "c.png"], 32, 32, seed=15)
    (folder / "notes.txt").write_text("not a photo\n")
    return folder


# ------------------------------------------------------------------------------------------------
# Real pipelines through bash and the installed console script


@pytest.mark.skipif(not AVP.exists(), reason=f"the console script is not installed at {AVP}")
def test_find_into_encrypt_into_decrypt(tmp_path, photos, tiny_key_file):
    before = snapshot(photos)
    result = shell('find "$IN" -name "*.png" -print0 '
                   '| "$AVP" encrypt - --null --key "$KEY" --out "$ENC" ' + " ".join(ENCRYPT) +
                   ' | "$AVP" decrypt - --null --key "$KEY" --out "$DEC" --device cpu',
                   tmp_path, IN=photos, KEY=tiny_key_file, ENC=tmp_path / "enc", DEC=tmp_path / "dec")
    assert result.returncode == 0, result.stderr.decode()
    names = ["a/x.png", "b/x.png", "c.png"]  # x.png twice: each takes its folder's name
    assert sorted(result.stdout.split(b"\0")) == sorted([b""] + [os.fsencode(tmp_path / "dec" / name) for name in names])
    assert all((tmp_path / "enc" / name).is_file() and (tmp_path / "dec" / name).is_file() for name in names)
    assert snapshot(photos) == before
    # The files decrypted one by one (checked against their folder's manifest) are the folder's decryption.
    whole = invoke("decrypt", tmp_path / "enc", "--key", tiny_key_file, "--out", tmp_path / "whole", "--device", "cpu")
    assert whole.exit_code == 0, whole.stderr
    decrypted = folder_contents(tmp_path / "dec")
    assert {name: decrypted[name] for name in names} == {name: (tmp_path / "whole" / name).read_bytes()
                                                         for name in names}
    manifest = json.loads((tmp_path / "dec" / "avp-manifest.json").read_text())
    assert manifest["kind"] == "decrypted" and [entry["status"] for entry in manifest["files"]] == ["ok"] * 3


@pytest.mark.skipif(not AVP.exists(), reason=f"the console script is not installed at {AVP}")
def test_a_bad_path_in_the_stream_fails_alone(tmp_path, photos, tiny_key_file):
    before = snapshot(photos)
    listing = " ".join(["in/a/x.png", "in/missing.png", "''", "in/notes.txt", "in/a", "in/c.png"])
    result = shell(f'printf "%s\\0" {listing} | "$AVP" encrypt - --null --key "$KEY" --out enc {" ".join(ENCRYPT)} '
                   '| xargs -0 -r "$AVP" decrypt --key "$KEY" --out dec --device cpu',
                   tmp_path, KEY=tiny_key_file)
    assert result.returncode == 1, result.stderr.decode()
    failures = [line for line in result.stderr.decode().splitlines() if line.startswith("failed:")]
    assert failures == ["failed: missing.png: no such file",
                        "failed: notes.txt: not an image PIL can read (unknown or corrupt format)",
                        "failed: a: a folder, not an image file"]
    assert result.stdout.decode().splitlines() == [str(Path("dec") / name) for name in ("x.png", "c.png")]
    assert sorted(path.name for path in (tmp_path / "dec").iterdir()) == ["avp-manifest.json", "c.png", "x.png"]
    entries = {entry["source"]: entry for entry in json.loads((tmp_path / "enc" / "avp-manifest.json").read_text())["files"]}
    assert {source: entry["status"] for source, entry in entries.items()} == {
        "x.png": "ok", "missing.png": "failed", "notes.txt": "failed", "a": "failed", "c.png": "ok"}
    assert snapshot(photos) == before


# ------------------------------------------------------------------------------------------------
# Paths from stdin


def test_stdin_needs_out_and_stands_alone(photos, tiny_key_file):
    for command in (["encrypt", "-", "--key", tiny_key_file, *ENCRYPT], ["decrypt", "-", "--key", tiny_key_file]):
        result = invoke(*command, stdin=b"x.png\n")
        assert result.exit_code == 2 and result.stderr == "error: with - (input paths from stdin), give --out\n"
    mixed = invoke("encrypt", "-", photos, "--key", tiny_key_file, "--out", photos.parent / "o", *ENCRYPT, stdin=b"")
    assert mixed.exit_code == 2 and "give it alone" in mixed.stderr


def test_stdin_files_with_one_name_do_not_overwrite_each_other(tmp_path, photos, tiny_key_file):
    out = tmp_path / "enc"
    listing = b"\0".join(os.fsencode(photos / name) for name in ("a/x.png", "b/x.png", "a/x.png", "c.png"))
    result = invoke("encrypt", "-", "-0", "--key", tiny_key_file, "--out", out, *ENCRYPT, stdin=listing + b"\0")
    assert result.exit_code == 0, result.stderr
    # A path given twice counts once; the two x.png keep their folders' names.
    assert result.stdout_bytes.split(b"\0") == [os.fsencode(out / name) for name in ("a/x.png", "b/x.png", "c.png")] + [b""]
    assert (out / "a" / "x.png").read_bytes() != (out / "b" / "x.png").read_bytes()
    sources = [entry["source"] for entry in json.loads((out / "avp-manifest.json").read_text())["files"]]
    assert sources == ["a/x.png", "b/x.png", "c.png"]
    again = invoke("encrypt", "-", "-0", "--key", tiny_key_file, "--out", out, *ENCRYPT, stdin=listing)
    assert again.exit_code == 0 and again.stdout_bytes == result.stdout_bytes  # resumed: nothing redone


def test_a_stdin_path_inside_the_output_folder_fails_alone(tmp_path, photos, tiny_key_file):
    out = tmp_path / "enc"
    assert invoke("encrypt", photos / "c.png", "--key", tiny_key_file, "--out", out, *ENCRYPT).exit_code == 0
    before = (out / "c.png").read_bytes()
    # What `find . -name '*.png'` lists on a rerun: the first run's outputs among the photos.
    listing = f"{photos / 'a/x.png'}\n{out / 'c.png'}\n".encode()
    result = invoke("encrypt", "-", "--key", tiny_key_file, "--out", out, *ENCRYPT, "--overwrite", stdin=listing)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == ("failed: c.png: it lies in the output folder, where an output could "
                                             "replace it; choose another --out")
    assert (out / "c.png").read_bytes() == before


# ------------------------------------------------------------------------------------------------
# Loose ciphertext files


@pytest.fixture
def encrypted(tmp_path, photos, tiny_key_file) -> Path:
    out = tmp_path / "enc"
    result = invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT)
    assert result.exit_code == 0, result.stderr
    return out


def test_loose_files_decrypt_as_their_folder_does(tmp_path, encrypted, tiny_key_file):
    whole = tmp_path / "whole"
    assert invoke("decrypt", encrypted, "--key", tiny_key_file, "--out", whole, "--device", "cpu").exit_code == 0
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "copied.png").write_bytes((encrypted / "c.png").read_bytes())  # no manifest here: G∘S
    before = snapshot(tmp_path, skip=(tmp_path / "dec",))
    result = invoke("decrypt", encrypted / "a" / "x.png", loose / "copied.png", "--key", tiny_key_file,
                    "--out", tmp_path / "dec", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "dec" / name) for name in ("x.png", "copied.png")]
    assert (tmp_path / "dec" / "x.png").read_bytes() == (whole / "a" / "x.png").read_bytes()
    assert (tmp_path / "dec" / "copied.png").read_bytes() == (whole / "c.png").read_bytes()
    assert snapshot(tmp_path, skip=(tmp_path / "dec",)) == before
    again = invoke("decrypt", encrypted / "a" / "x.png", loose / "copied.png", "--key", tiny_key_file,
                   "--out", tmp_path / "dec", "--device", "cpu", "--json")
    assert [json.loads(line)["skipped"] for line in again.stdout.splitlines()] == [True, True]


def test_a_files_manifest_decides_the_key_and_the_scramble(tmp_path, photos, tiny_key_file, other_tiny_key_file):
    from avpcli.engine import decrypt_batch
    from avpcli.images import read_png
    from avpcli.key import load_key

    research = tmp_path / "research"
    assert invoke("encrypt", photos / "c.png", "--key", tiny_key_file, "--out", research, *ENCRYPT,
                  "--recipe", "research").exit_code == 0
    result = invoke("decrypt", research / "c.png", "--key", tiny_key_file, "--out", tmp_path / "dec", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    plain = decrypt_batch(read_png(research / "c.png")[None], load_key(tiny_key_file).plain_model)[0]
    assert torch.equal(read_png(tmp_path / "dec" / "c.png"), plain)  # the manifest says: made for G alone

    refused = invoke("decrypt", research / "c.png", "--key", other_tiny_key_file, "--out", tmp_path / "other",
                     "--device", "cpu")
    # The manifest used is named (only the ciphertext's own folder is looked in); failures name the path given.
    assert refused.exit_code == 1 and refused.stderr.splitlines()[0] == (
        f"note: using the manifest {research / 'avp-manifest.json'} for the ciphertexts it lists")
    assert refused.stderr.splitlines()[1].startswith(f"failed: {research / 'c.png'}: encrypted with another key")
    forced = invoke("decrypt", research / "c.png", "--key", other_tiny_key_file, "--out", tmp_path / "forced",
                    "--device", "cpu", "--force")
    assert forced.exit_code == 0 and (tmp_path / "forced" / "c.png").is_file()


def test_loose_files_that_are_no_ciphertexts_fail_alone(tmp_path, encrypted, photos, tiny_key_file):
    from PIL import Image

    odd = tmp_path / "odd"
    odd.mkdir()
    Image.open(encrypted / "c.png").convert("RGBA").save(odd / "alpha.png")
    Image.open(encrypted / "c.png").save(odd / "lossy.jpg")
    Image.open(encrypted / "c.png").resize((4, 4)).save(odd / "tiny.png")
    listing = "\n".join([str(encrypted / "c.png"), str(odd / "alpha.png"), str(odd / "lossy.jpg"),
                         str(odd / "tiny.png"), str(odd / "gone.png"), str(odd)]) + "\n"
    result = invoke("decrypt", "-", "--key", tiny_key_file, "--out", tmp_path / "dec", "--device", "cpu",
                    stdin=listing.encode())
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"note: using the manifest {encrypted / 'avp-manifest.json'} for the ciphertexts it lists",
        f"failed: {odd / 'gone.png'}: no such file",
        f"failed: {odd / 'alpha.png'}: cannot read: not an 8-bit RGB PNG (PNG image, mode RGBA)",
        f"failed: {odd / 'lossy.jpg'}: cannot read: not an 8-bit RGB PNG (JPEG image, mode RGB)",
        f"failed: {odd / 'tiny.png'}: cannot read: 4x4 pixels, smaller than the key takes (8 a side)",
        f"failed: {odd}: cannot read: a folder, not an image file"]
    assert result.stdout.splitlines() == [str(tmp_path / "dec" / "c.png")]


def test_decrypting_files_needs_a_key_and_an_output_folder(tmp_path, encrypted, tiny_key_file):
    no_key = invoke("decrypt", encrypted / "c.png", "--out", tmp_path / "dec")
    assert no_key.exit_code == 2 and "give --key to decrypt files" in no_key.stderr
    no_out = invoke("decrypt", encrypted / "c.png", "--key", tiny_key_file)
    assert no_out.exit_code == 2 and "give --out" in no_out.stderr
    mixed = invoke("decrypt", encrypted, encrypted / "c.png", "--key", tiny_key_file, "--out", tmp_path / "dec")
    assert mixed.exit_code == 2 and "is a folder" in mixed.stderr
    assert not (tmp_path / "dec").exists()


# ------------------------------------------------------------------------------------------------
# NDJSON


def test_the_printer_writes_each_files_line_when_its_event_comes(capsys):
    from avpcli.cli import EventPrinter
    from avpcli.jobs import Event

    printer = EventPrinter("json")
    printer(Event("written", source="a\nb.png", output=Path("out/a\nb.png"), entry={"status": "ok", "cosine": 0.5}))
    assert json.loads(capsys.readouterr().out) == {"source": "a\nb.png", "output": "out/a\nb.png", "status": "ok",
                                                    "reason": None, "skipped": False, "cosine": 0.5}
    printer(Event("progress", done=1, total=2))
    assert capsys.readouterr().out == ""
    printer(Event("failed", source="c.png", reason="empty file",
                  entry={"source": "c.png", "output": None, "status": "failed", "reason": "empty file"}))
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"source": "c.png", "output": None, "status": "failed", "reason": "empty file",
                                        "skipped": False}
    assert captured.err == "failed: c.png: empty file\n"
    assert (printer.finished, printer.failed) == (1, 1)
