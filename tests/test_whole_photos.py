"""Whole photos in, whole photos back (issue #23): every input sealed beside its model ciphertexts and
restored byte for byte by the folder form and the lone-file form; what cannot be the model's input is
sealed only; a container that is not as sealed is refused with one line and nothing written for it."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avpcli.cli import app
from avpcli.errors import NoFaceError

DAMAGED = "damaged, or sealed with another key"


def invoke(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def special(tmp_path) -> Path:
    """A folder of the special inputs the issue names, beside a plain photo and one at the target's size."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_noise(50, 60, 1)).save(folder / "photo.jpg", exif=Image.Exif())
    Image.fromarray(_noise(32, 32, 2)).save(folder / "at_size.png")  # tiny-embedding's input: no container
    Image.fromarray(_noise(40, 48, 3)).convert("CMYK").save(folder / "cmyk.jpg")
    deep = (np.random.default_rng(4).integers(0, 65535, (36, 44), dtype=np.uint16))
    Image.fromarray(deep).save(folder / "sub" / "deep.png")
    assert Image.open(folder / "sub" / "deep.png").mode.startswith("I")
    frames = [Image.fromarray(_noise(40, 40, 5 + index)).convert("P") for index in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one.png")
    Image.fromarray(_noise(48, 64, 9)).save(folder / "noface.png")
    return folder


def _no_face_for(monkeypatch, name: str, faces: dict[str, int] | None = None) -> None:
    """tiny-embedding aligns nothing: make `name` a photo in which no face is found, and the files in
    `faces` photos with that many faces (as MTCNN with --all-faces would give them)."""
    import avpcli.jobs.encrypt as encrypt_module

    real = encrypt_module.prepare_file

    def prepare(path, spec, align="auto", all_faces=False, *args, **kwargs):
        if Path(path).name == name:
            raise NoFaceError("no face found")
        found = real(path, spec, align, all_faces, *args, **kwargs)
        count = (faces or {}).get(Path(path).name)
        if count and all_faces:
            return [(found[0][0].roll(index, dims=-1), "mtcnn to the test template") for index in range(count)]
        return found

    monkeypatch.setattr(encrypt_module, "prepare_file", prepare)


def _encrypt(photos: Path, out: Path, key: Path, *extra: str):
    return invoke("encrypt", photos, "--target", "tiny-embedding", "--key", key, "--out", out, "--iterations", "1",
                  "--device", "cpu", *extra)


def test_special_inputs_get_their_documented_results(tmp_path, special, tiny_key_file, monkeypatch):
    _no_face_for(monkeypatch, "noface.png")
    before = {path: sha(path) for path in special.rglob("*") if path.is_file()}
    out = tmp_path / "enc"
    result = _encrypt(special, out, tiny_key_file)
    assert result.exit_code == 0, result.stderr
    assert "4 encrypted, 6 sealed (3 sealed only: no model input), 0 failed" in " ".join(result.stderr.split())
    manifest = json.loads((out / "avp-manifest.json").read_text())
    assert manifest["settings"]["seal"] is True
    entries = {entry["source"]: entry for entry in manifest["files"]}
    # Photos the model takes: their chip, and the whole file sealed beside it.
    for source, chip in (("photo.jpg", "photo.png"), ("cmyk.jpg", "cmyk.png"), ("sub/deep.png", "sub/deep.png")):
        entry = entries[source]
        assert entry["status"] == "ok" and entry["output"] == chip
        container = out / entry["sealed"]
        assert entry["sealed"] == chip.replace(".png", ".sealed.png") and entry["sealed_sha256"] == sha(container)
    # Already at the target's input size: the model's ciphertext is the only output, as before.
    assert entries["at_size.png"]["status"] == "ok" and "sealed" not in entries["at_size.png"]
    assert not (out / "at_size.sealed.png").exists()
    # Decodes but cannot be the model's input: sealed only, not a failure.
    for source, reason in (("noface.png", "no face found"), ("one.png", "image too small"),
                           ("animated.gif", "animated image (3 frames)")):
        entry = entries[source]
        assert entry["status"] == "sealed" and entry["output"] is None
        assert entry["reason"].startswith(reason) and entry["reason"].endswith(": sealed only")
        assert entry["sealed_sha256"] == sha(out / entry["sealed"])
    # Nothing readable leaks: the container is an image that says nothing of its name or EXIF.
    for entry in entries.values():
        if "sealed" in entry:
            data = (out / entry["sealed"]).read_bytes()
            assert Image.open(io.BytesIO(data)).format == "PNG"
            assert Path(entry["source"]).stem.encode() not in data and b"Exif" not in data
    assert {path: sha(path) for path in special.rglob("*") if path.is_file()} == before

    # The folder form gives back every input byte for byte (same name, same format) and at_size's image.
    restored = tmp_path / "dec"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    for source in entries:
        if source != "at_size.png":
            assert sha(restored / source) == before[special / source], source
    assert Image.open(restored / "at_size.png").size == (32, 32)
    assert not (restored / "chips").exists()
    decrypted = json.loads((restored / "avp-manifest.json").read_text())["files"]
    kinds = {entry["output"]: entry.get("restored", False) for entry in decrypted}
    assert kinds.pop("at_size.png") is False and all(kinds.values()) and len(kinds) == 6
    for entry in decrypted:
        assert entry["sha256"] == sha(restored / entry["output"])
    # --chips: the chips of sealed photos too, through the key, under chips/.
    with_chips = tmp_path / "dec-chips"
    assert invoke("decrypt", out, "--key", tiny_key_file, "--out", with_chips, "--chips", "--device", "cpu").exit_code == 0
    assert {path.relative_to(with_chips / "chips").as_posix() for path in (with_chips / "chips").rglob("*.png")} == {
        "photo.png", "cmyk.png", "sub/deep.png"}
    # The lone-file form: each container restored under the name sealed in it.
    lone = tmp_path / "lone"
    containers = [out / entry["sealed"] for entry in entries.values() if "sealed" in entry]
    result = invoke("decrypt", *containers, "--key", tiny_key_file, "--out", lone, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    for source in entries:
        if source != "at_size.png":
            assert sha(lone / source) == before[special / source], source


def test_three_faces_share_one_container(tmp_path, tiny_key_file, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_noise(60, 80, 1)).save(photos / "group.jpg")
    _no_face_for(monkeypatch, "none", {"group.jpg": 3})
    out = tmp_path / "enc"
    assert _encrypt(photos, out, tiny_key_file, "--all-faces").exit_code == 0
    entries = json.loads((out / "avp-manifest.json").read_text())["files"]
    assert [entry["output"] for entry in entries] == ["group.png", "group_face2.png", "group_face3.png"]
    assert {entry["sealed"] for entry in entries} == {"group.sealed.png"}
    restored = tmp_path / "dec"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--chips", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert sha(restored / "group.jpg") == sha(photos / "group.jpg")
    assert sorted(path.name for path in (restored / "chips").iterdir()) == [
        "group.png", "group_face2.png", "group_face3.png"]


@pytest.fixture
def sealed_run(tmp_path, tiny_key_file):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, name in enumerate(("a.jpg", "b.png", "c.png")):
        Image.fromarray(_noise(40, 50, index)).save(photos / name)
    out = tmp_path / "enc"
    assert _encrypt(photos, out, tiny_key_file).exit_code == 0
    return photos, out


def _flip(position: float):
    def tamper(path: Path, **_) -> None:
        data = bytearray(path.read_bytes())
        data[min(int(len(data) * position), len(data) - 1)] ^= 0x10
        path.write_bytes(bytes(data))
    return tamper


def _truncate(path: Path, **_) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def _reencode(path: Path, **_) -> None:
    stream = io.BytesIO()
    Image.open(path).save(stream, "JPEG", quality=100)
    path.write_bytes(stream.getvalue())


def _another_key(path: Path, photos: Path, tmp_path: Path, other_key: Path, **_) -> None:
    other = tmp_path / "other"
    assert _encrypt(photos, other, other_key).exit_code == 0
    shutil.copyfile(other / path.name, path)


def _renamed_onto_another_entry(path: Path, out: Path, **_) -> None:
    """b's container in a's place, its sha256 put in the manifest too: only the name sealed inside tells."""
    shutil.copyfile(out / "b.sealed.png", path)
    manifest = json.loads((out / "avp-manifest.json").read_text())
    for entry in manifest["files"]:
        if entry.get("sealed") == path.name:
            entry["sealed_sha256"] = sha(path)
    (out / "avp-manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("tamper", [_flip(0.0), _flip(0.02), _flip(0.5), _flip(0.999), _truncate, _reencode,
                                    _another_key, _renamed_onto_another_entry],
                         ids=["bit-signature", "bit-header", "bit-middle", "bit-end", "truncated", "jpeg",
                              "another-key", "renamed"])
def test_a_container_not_as_sealed_is_refused_and_the_rest_restored(tmp_path, sealed_run, tiny_key_file,
                                                                     other_tiny_key_file, tamper):
    photos, out = sealed_run
    container = out / "a.sealed.png"
    tamper(container, photos=photos, tmp_path=tmp_path, other_key=other_tiny_key_file, out=out)
    for form in ("folder", "lone"):
        restored = tmp_path / f"dec-{form}"
        given = [out] if form == "folder" else sorted(out.glob("*.sealed.png"))
        result = invoke("decrypt", *given, "--key", tiny_key_file, "--out", restored, "--device", "cpu")
        assert result.exit_code == 1
        failures = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
        if form == "lone" and tamper is _renamed_onto_another_entry:
            # Alone, b's container is simply b's photo: it opens (as b.png) once, and a second copy is refused.
            assert len(failures) == 1 and "b.png is restored from another container" in failures[0]
            continue
        label = "a.sealed.png" if form == "folder" else str(container)
        assert failures == [f"failed: {label}: {DAMAGED}"], result.stderr
        assert not (restored / "a.jpg").exists()
        assert not list(restored.glob(".*.part"))
        for name in ("b.png", "c.png"):
            assert sha(restored / name) == sha(photos / name)


def test_no_seal_writes_the_model_ciphertexts_alone(tmp_path, special, tiny_key_file, monkeypatch):
    _no_face_for(monkeypatch, "noface.png")
    out = tmp_path / "enc"
    result = _encrypt(special, out, tiny_key_file, "--no-seal")
    assert result.exit_code == 1  # no face, 1×1 and animated fail, as in avp 0.2
    assert "4 encrypted, 3 failed" in " ".join(result.stderr.split())
    manifest = json.loads((out / "avp-manifest.json").read_text())
    assert "seal" not in manifest["settings"]
    assert not list(out.rglob("*.sealed.png"))
    assert all("sealed" not in entry for entry in manifest["files"])
    statuses = {entry["source"]: entry["status"] for entry in manifest["files"]}
    assert statuses["noface.png"] == "no_face" and statuses["one.png"] == "failed"
    # Such a folder (as avp 0.2 wrote them) decrypts as before: every chip into the output folder.
    restored = tmp_path / "dec"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert sorted(path.relative_to(restored).as_posix() for path in restored.rglob("*.png")) == [
        "at_size.png", "cmyk.png", "photo.png", "sub/deep.png"]
    # A rerun of the other kind into the same folder is refused: its settings differ; the line says how to resume.
    refused = _encrypt(special, out, tiny_key_file)
    assert refused.exit_code == 2 and "without sealed originals; add --no-seal to resume it" in " ".join(
        refused.stderr.split())


def test_a_rerun_keeps_finished_containers_and_rewrites_a_missing_one(tmp_path, sealed_run, tiny_key_file):
    photos, out = sealed_run
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    (out / "b.sealed.png").unlink()
    result = _encrypt(photos, out, tiny_key_file, "--json")
    assert result.exit_code == 0
    lines = {Path(line["output"]).name: line["skipped"] for line in map(json.loads, result.stdout.splitlines())}
    assert lines == {"a.sealed.png": True, "a.png": True, "b.sealed.png": False, "b.png": False,
                     "c.sealed.png": True, "c.png": True}
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    # A fresh run (--overwrite) writes the same containers: sealing is deterministic.
    shutil.rmtree(out)
    assert _encrypt(photos, out, tiny_key_file, "--seed", "1").exit_code == 0
    assert all((out / name).read_bytes() == data for name, data in before.items() if ".sealed." in name)


def test_decrypt_resumes_finished_restores(tmp_path, sealed_run, tiny_key_file):
    photos, out = sealed_run
    restored = tmp_path / "dec"
    assert invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--device", "cpu").exit_code == 0
    (restored / "b.png").unlink()
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--device", "cpu", "--json")
    assert result.exit_code == 0
    lines = {Path(line["output"]).name: line["skipped"] for line in map(json.loads, result.stdout.splitlines())}
    assert lines == {"a.jpg": True, "b.png": False, "c.png": True}
    assert sha(restored / "b.png") == sha(photos / "b.png")


def test_anonymized_runs_seal_the_real_name_inside(tmp_path, sealed_run, tiny_key_file):
    photos, _ = sealed_run
    out = tmp_path / "anon"
    assert _encrypt(photos, out, tiny_key_file, "--anonymize", "--names-map", tmp_path / "names.json").exit_code == 0
    names = sorted(path.name for path in out.glob("*.sealed.png"))
    assert len(names) == 3 and not any(name.startswith(("a.", "b.", "c.")) for name in names)
    restored = tmp_path / "dec"
    assert invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--device", "cpu").exit_code == 0
    for name in ("a.jpg", "b.png", "c.png"):
        assert sha(restored / name) == sha(photos / name)


def test_a_container_with_an_unsafe_name_is_refused(tmp_path, tiny_key_file):
    from avpcli.jobs.sealing import sealing_key
    from avpcli.key import load_key
    from avpcli.seal import seal

    key = sealing_key(load_key(tiny_key_file))
    planted = tmp_path / "planted.sealed.png"
    planted.write_bytes(seal(b"x", "../escape.txt", key))
    restored = tmp_path / "dec"
    result = invoke("decrypt", planted, "--key", tiny_key_file, "--out", restored)
    assert result.exit_code == 1 and "unsafe name" in result.stderr
    assert not (tmp_path / "escape.txt").exists()


def test_an_input_named_like_a_container_is_refused_with_its_reason(tmp_path, tiny_key_file):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, name in enumerate(("a.png", "a.sealed.png")):
        Image.fromarray(_noise(40, 50, index)).save(photos / name)
    out = tmp_path / "enc"
    result = _encrypt(photos, out, tiny_key_file)
    assert result.exit_code == 1
    assert "failed: a.sealed.png: its output name a.sealed.png ends in .sealed.png" in " ".join(result.stderr.split())
    restored = tmp_path / "dec"
    assert invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--device", "cpu").exit_code == 0
    assert sha(restored / "a.png") == sha(photos / "a.png")


def test_a_pipeline_restores_what_encrypt_printed(tmp_path, sealed_run, tiny_key_file):
    """`avp encrypt … | avp decrypt - --out …`: the containers restore the photos, the chips go to chips/."""
    photos, out = sealed_run
    listing = "".join(f"{path}\n" for path in sorted(out.glob("*.png")))
    restored = tmp_path / "dec"
    result = CliRunner().invoke(app, ["decrypt", "-", "--key", str(tiny_key_file), "--out", str(restored),
                                      "--device", "cpu"], input=listing, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    for name in ("a.jpg", "b.png", "c.png"):
        assert sha(restored / name) == sha(photos / name)
    assert sorted(path.name for path in (restored / "chips").iterdir()) == ["a.png", "b.png", "c.png"]


def test_shards_seal_their_own_sources_and_the_merged_folder_restores_all(tmp_path, special, tiny_key_file,
                                                                          monkeypatch):
    _no_face_for(monkeypatch, "noface.png")
    out = tmp_path / "enc"
    for shard in ("1/2", "2/2"):
        assert _encrypt(special, out, tiny_key_file, "--shard", shard).exit_code == 0
    entries = json.loads((out / "avp-manifest.json").read_text())["files"]
    assert sum(entry["status"] == "sealed" for entry in entries) == 3
    restored = tmp_path / "dec"
    assert invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--device", "cpu").exit_code == 0
    for path in special.rglob("*"):
        if path.is_file() and path.name != "at_size.png":
            assert sha(restored / path.relative_to(special)) == sha(path), path


def test_a_restored_photo_and_a_ciphertext_of_one_name_both_stay(tmp_path, tiny_key_file):
    """b.png (sealed: restored as b.png) beside b.jpg at the target's size (its ciphertext decrypts to a PNG)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_noise(40, 50, 1)).save(photos / "b.png")
    Image.fromarray(_noise(32, 32, 2)).save(photos / "b.jpg")
    out = tmp_path / "enc"
    assert _encrypt(photos, out, tiny_key_file).exit_code == 0
    restored = tmp_path / "dec"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", restored, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert sha(restored / "b.png") == sha(photos / "b.png")
    decrypted = json.loads((restored / "avp-manifest.json").read_text())["files"]
    assert len(decrypted) == 2 and all(entry["sha256"] == sha(restored / entry["output"]) for entry in decrypted)
