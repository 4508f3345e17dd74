"""No output is ever replaced silently (issue #24), manifests are looked for only beside a ciphertext, source
tags are bound to their run, and line mode reads what line mode prints."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avpcli.cli import app
from conftest import write_noise_photos

ENCRYPT = ["--target", "tiny-embedding", "--iterations", "2", "--device", "cpu", "--seed", "5", "--no-align"]


def invoke(*args, stdin: bytes | None = None):
    return CliRunner().invoke(app, [str(arg) for arg in args], input=stdin, catch_exceptions=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entries(folder: Path) -> dict[str, dict]:
    from avpcli.manifest import read_manifest

    return {entry["output"]: entry for entry in read_manifest(folder).files if entry["status"] == "ok"}


def decrypted_as(ciphertext: Path, key: Path) -> torch.Tensor:
    from avpcli.engine import decrypt_batch
    from avpcli.images import read_png
    from avpcli.key import load_key

    return decrypt_batch(read_png(ciphertext)[None], load_key(key).model)[0]


@pytest.fixture
def two_photos_of_one_name(tmp_path) -> tuple[Path, Path]:
    write_noise_photos(tmp_path / "A", ["p.png"], 32, 32, seed=1)
    write_noise_photos(tmp_path / "B", ["p.png"], 32, 32, seed=2)
    return tmp_path / "A" / "p.png", tmp_path / "B" / "p.png"


def test_two_runs_of_different_photos_of_one_name_keep_both_and_decrypt_restores_both(
        tmp_path, two_photos_of_one_name, tiny_key_file):
    from avpcli.images import read_png

    first, second = two_photos_of_one_name
    out = tmp_path / "V"
    assert invoke("encrypt", first, "--key", tiny_key_file, "--out", out, *ENCRYPT).exit_code == 0
    kept = digest(out / "p.png")
    result = invoke("encrypt", second, "--key", tiny_key_file, "--out", out, *ENCRYPT)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(out / "B" / "p.png")]
    assert digest(out / "p.png") == kept
    listed = entries(out)
    assert sorted(listed) == ["B/p.png", "p.png"]
    assert {name: entry["sha256"] for name, entry in listed.items()} == {
        "p.png": kept, "B/p.png": digest(out / "B" / "p.png")}
    assert (listed["p.png"]["source"], listed["B/p.png"]["source"]) == ("p.png", "B/p.png")

    decrypted = tmp_path / "D"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", decrypted, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    for name in ("p.png", "B/p.png"):
        assert torch.equal(read_png(decrypted / name), decrypted_as(out / name, tiny_key_file))
        assert entries(decrypted)[name]["sha256"] == digest(decrypted / name)
    # A rerun of either recognises its own output and writes nothing.
    for photo in (first, second):
        again = invoke("encrypt", photo, "--key", tiny_key_file, "--out", out, *ENCRYPT)
        assert again.exit_code == 0 and "1 encrypted" in again.stderr
    assert sorted(entries(out)) == ["B/p.png", "p.png"] and digest(out / "p.png") == kept


def test_overwrite_replaces_as_asked(tmp_path, two_photos_of_one_name, tiny_key_file):
    first, second = two_photos_of_one_name
    out = tmp_path / "V"
    assert invoke("encrypt", first, "--key", tiny_key_file, "--out", out, *ENCRYPT).exit_code == 0
    before = digest(out / "p.png")
    assert invoke("encrypt", second, "--key", tiny_key_file, "--out", out, *ENCRYPT, "--overwrite").exit_code == 0
    assert digest(out / "p.png") != before and sorted(entries(out)) == ["p.png"]


def test_two_decryptions_of_one_output_name_keep_both(tmp_path, two_photos_of_one_name, tiny_key_file):
    from avpcli.images import read_png

    first, second = two_photos_of_one_name
    for photo, out in ((first, tmp_path / "X"), (second, tmp_path / "Y")):
        assert invoke("encrypt", photo, "--key", tiny_key_file, "--out", out, *ENCRYPT).exit_code == 0
    decrypted = tmp_path / "D"
    for ciphertext in (tmp_path / "X" / "p.png", tmp_path / "Y" / "p.png"):
        result = invoke("decrypt", ciphertext, "--key", tiny_key_file, "--out", decrypted, "--device", "cpu", "--json")
        assert result.exit_code == 0, result.stderr
        [line] = [json.loads(line) for line in result.stdout.splitlines()]
        assert line["source"] == str(ciphertext)  # the path given, not the output's name
    listed = entries(decrypted)
    assert sorted(listed) == ["Y/p.png", "p.png"]
    assert listed["p.png"]["source"] == str(tmp_path / "X" / "p.png")
    for name, ciphertext in (("p.png", tmp_path / "X" / "p.png"), ("Y/p.png", tmp_path / "Y" / "p.png")):
        assert torch.equal(read_png(decrypted / name), decrypted_as(ciphertext, tiny_key_file))
        assert listed[name]["source_sha256"] == digest(ciphertext) and listed[name]["sha256"] == digest(decrypted / name)


def test_shard_runs_of_different_inputs_into_one_folder_lose_nothing(tmp_path, tiny_key_file):
    first = write_noise_photos(tmp_path / "one", ["a.png", "b.png"], 32, 32, seed=3)
    second = write_noise_photos(tmp_path / "two", ["a.png", "c.png"], 32, 32, seed=4)
    out = tmp_path / "V"
    for photos in (first, second):
        result = invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT, "--shard", "1/2")
        assert result.exit_code == 0, result.stderr
    # Shard 1 of 2 takes a.png of each run; the second a.png is another photo, so it gets its folder's name.
    listed = entries(out)
    assert sorted(listed) == ["a.png", "two/a.png"]
    assert all(entry["sha256"] == digest(out / name) for name, entry in listed.items())
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", tmp_path / "D", "--device", "cpu")
    assert result.exit_code == 0
    assert result.stderr == (f"warning: {out} lacks the manifest parts of shard(s) 2/2 of a sharded run; "
                             "decrypting what the other parts list\n")
    assert sorted(str(path.relative_to(tmp_path / "D")) for path in (tmp_path / "D").rglob("*.png")) == [
        "a.png", "two/a.png"]


def test_a_manifest_of_an_unfinished_run_is_decrypted_with_a_warning(tmp_path, tiny_key_file):
    photos = write_noise_photos(tmp_path / "in", ["a.png"], 32, 32, seed=5)
    out = tmp_path / "V"
    assert invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT).exit_code == 0
    document = json.loads((out / "avp-manifest.json").read_text())
    document["complete"] = False
    (out / "avp-manifest.json").write_text(json.dumps(document))
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", tmp_path / "D", "--device", "cpu")
    assert result.exit_code == 0 and (tmp_path / "D" / "a.png").is_file()
    assert result.stderr == (f"warning: the manifest of {out} says its run did not finish (complete: false); "
                             "decrypting the 1 files it lists as done\n")


def test_a_manifest_in_a_folder_above_is_never_obeyed(tmp_path, tiny_key_file):
    from avpcli.images import read_png

    photos = write_noise_photos(tmp_path / "in", ["x.png"], 32, 32, seed=6)
    out = tmp_path / "V"
    assert invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT).exit_code == 0
    shared = tmp_path / "shared"
    (shared / "inbox").mkdir(parents=True)
    shutil.copyfile(out / "x.png", shared / "inbox" / "x.png")
    planted = json.loads((out / "avp-manifest.json").read_text())
    planted["settings"]["key_scramble"] = False  # would make decrypt use G alone
    planted["files"][0]["output"] = "inbox/x.png"
    (shared / "avp-manifest.json").write_text(json.dumps(planted))
    result = invoke("decrypt", shared / "inbox" / "x.png", "--key", tiny_key_file, "--out", tmp_path / "D",
                    "--device", "cpu")
    assert result.exit_code == 0 and result.stderr == ""  # no manifest used, so none named
    assert torch.equal(read_png(tmp_path / "D" / "x.png"), decrypted_as(out / "x.png", tiny_key_file))


def _tags(folder: Path) -> dict[str, str]:
    return {entry["source"]: entry["source_tag"] for entry in entries(folder).values()}


def test_source_tags_are_bound_to_the_run_and_blinded_when_anonymized(tmp_path, tiny_key_file):
    photos = write_noise_photos(tmp_path / "in", ["a.png"], 32, 32, seed=7)
    runs = {
        "plain": [], "again": [], "other-settings": ["--iterations", "3"], "other-target": ["--target", "tiny-classifier"],
        "anon1": ["--anonymize", "--names-map", tmp_path / "n1.json"],
        "anon2": ["--anonymize", "--names-map", tmp_path / "n2.json"]}
    tags = {}
    for name, extra in runs.items():
        result = invoke("encrypt", photos, "--key", tiny_key_file, "--out", tmp_path / name, *ENCRYPT, *extra)
        assert result.exit_code == 0, result.stderr
        [tags[name]] = _tags(tmp_path / name).values()
    assert tags["plain"] == tags["again"]  # one run identity: one tag (the seed aside)
    assert len({tags[name] for name in runs if name != "again"}) == len(runs) - 1
    # An anonymized rerun still recognises its file (the blind is in the names map, not the folder).
    assert "tag_blind" in json.loads((tmp_path / "n1.json").read_text())
    assert "tag_blind" not in (tmp_path / "anon1" / "avp-manifest.json").read_text()
    again = invoke("encrypt", photos, "--key", tiny_key_file, "--out", tmp_path / "anon1", *ENCRYPT, *runs["anon1"])
    assert again.exit_code == 0 and again.stdout.splitlines() == [str(path) for path in (tmp_path / "anon1").glob("*.png")]
    assert _tags(tmp_path / "anon1") == {Path(json.loads((tmp_path / "n1.json").read_text())["names"].popitem()[0]).stem:
                                         tags["anon1"]}


def test_a_folder_of_avp_0_2_still_resumes(tmp_path, tiny_key_file):
    """avp 0.2 tagged a source by the HMAC of its bytes under the key alone: such an entry still counts as done."""
    from avpcli.key import load_key

    photos = write_noise_photos(tmp_path / "in", ["a.png", "b.png"], 32, 32, seed=8)
    out = tmp_path / "V"
    assert invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT).exit_code == 0
    secret = load_key(tiny_key_file).derived_secret("source-tag")
    document = json.loads((out / "avp-manifest.json").read_text())
    for entry in document["files"]:
        entry["source_tag"] = hmac.new(secret, (photos / entry["source"]).read_bytes(), "sha256").hexdigest()
    document["avp_version"] = "0.2.0"
    (out / "avp-manifest.json").write_text(json.dumps(document))
    before = {name: digest(out / name) for name in ("a.png", "b.png")}
    result = invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT, "--json")
    assert result.exit_code == 0
    assert [json.loads(line)["skipped"] for line in result.stdout.splitlines()] == [True, True]
    assert {name: digest(out / name) for name in before} == before


def test_line_mode_reads_the_names_line_mode_prints(tmp_path, tiny_key_file):
    from avpcli.cli.output import printable, unprintable

    odd = ["back\\slash.png", "new\nline.png", os.fsdecode(b"bytes-\xff\xfe.png"), "c1-\u0085.png", "tab\t.png"]
    for name in odd:
        assert unprintable(printable(name)) == name
    photos = write_noise_photos(tmp_path / "in", odd, 32, 32, seed=9)
    out = tmp_path / "V"
    encrypted = invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT)
    assert encrypted.exit_code == 0, encrypted.stderr
    assert len(encrypted.stdout.splitlines()) == len(odd)
    decrypted = invoke("decrypt", "-", "--key", tiny_key_file, "--out", tmp_path / "D", "--device", "cpu",
                       stdin=encrypted.stdout_bytes)
    assert decrypted.exit_code == 0, decrypted.stderr
    assert sorted(path.name for path in (tmp_path / "D").glob("*.png")) == sorted(odd)
