"""Manifests: reading, refusing foreign or damaged ones, merging the parts of a sharded run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from avpcli.errors import AvpError
from avpcli.manifest import MANIFEST_NAME, Manifest, differences, merge_parts, part_name, read_manifest


def entry(source: str, status: str = "ok", **extra) -> dict:
    return {"source": source, "output": None if status != "ok" else source + ".png", "status": status, **extra}


def part(files: list[dict], index: int, count: int, seed: int = 1) -> Manifest:
    return Manifest(kind="encrypted", target={"name": "t"}, key_fingerprint="f" * 64,
                    settings={"iterations": 3, "noise_seed": seed}, files=files, shard=f"{index}/{count}")


def test_merge_restores_the_single_process_order_with_faces_and_failures():
    # Sources s0..s6 sorted; shard 1 of 3 has s0, s3, s6; shard 2 has s1, s4; shard 3 has s2, s5.
    first = part([entry("s0"), entry("s3", face=1, faces=2), entry("s3", face=2, faces=2), entry("s6", "failed")], 1, 3)
    second = part([entry("s1", "no_face"), entry("s4")], 2, 3)
    third = part([entry("s2"), entry("s5")], 3, 3)
    merged = merge_parts([first, second, third])
    assert [item["source"] for item in merged.files] == ["s0", "s1", "s2", "s3", "s3", "s4", "s5", "s6"]
    assert merged.shard is None and merged.settings["noise_seed"] == 1
    assert json.loads(merged.to_json())["summary"]["files"] == 8


def test_parts_from_different_runs_are_not_merged():
    other = part([entry("s1")], 2, 2)
    other.settings["iterations"] = 4
    with pytest.raises(AvpError, match="different"):
        merge_parts([part([entry("s0")], 1, 2), other])


def test_parts_with_their_own_seeds_merge_and_say_so():
    merged = merge_parts([part([entry("s0")], 1, 2, seed=5), part([entry("s1")], 2, 2, seed=6)])
    assert merged.settings["noise_seed"] == [5, 6]


def test_a_folder_with_only_parts_reads_as_their_merge(tmp_path):
    part([entry("s0"), entry("s2")], 1, 2).write(tmp_path, part_name((0, 2)))
    part([entry("s1")], 2, 2).write(tmp_path, part_name((1, 2)))
    assert [item["source"] for item in read_manifest(tmp_path).files] == ["s0", "s1", "s2"]


def test_part_names():
    assert part_name((0, 1)) == MANIFEST_NAME
    assert part_name((1, 4)) == "avp-manifest.part-2-of-4.json"


@pytest.mark.parametrize("content, reason", [
    ("{not json", "cannot read"),
    ('{"format": "something"}', "not an avp manifest"),
    ('{"format": "avp-manifest", "version": 99}', "newer avp"),
    ('{"format": "avp-manifest", "version": 1, "files": [3]}', "damaged"),
])
def test_foreign_or_damaged_manifests_are_clear_errors(tmp_path, content, reason):
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(AvpError, match=reason):
        read_manifest(tmp_path)


def test_a_folder_without_a_manifest_says_so(tmp_path):
    with pytest.raises(AvpError, match="avp encrypt"):
        read_manifest(tmp_path)


def test_manifest_round_trip_keeps_progress_fields(tmp_path):
    written = Manifest(kind="encrypted", target={}, key_fingerprint="x", files=[entry("a")], complete=False,
                       shard="1/2", run="abcd")
    written.write(tmp_path, "m.json")
    back = read_manifest(Path(tmp_path / "m.json"))
    assert (back.complete, back.shard, back.run, back.files) == (False, "1/2", "abcd", written.files)


def test_a_pipe_named_like_a_manifest_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / MANIFEST_NAME)
    with pytest.raises(AvpError, match="not a regular file"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("field, value, reason", [
    ("run", "../../names", "run id"), ("shard", "one", "shard"), ("kind", 3, "kind"), ("settings", [], "settings"),
    ("version", "1", "version"),
])
def test_fields_used_as_names_or_counted_on_are_checked(tmp_path, field, value, reason):
    document = json.loads(part([entry("s0")], 1, 2).to_json())
    document[field] = value
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(document))
    with pytest.raises(AvpError, match=f"damaged: its {reason}"):
        read_manifest(tmp_path)


def test_differences_ignore_the_noise_seed():
    assert differences(part([], 1, 2, seed=1), part([entry("x")], 2, 2, seed=2)) == []
    other = part([], 1, 2)
    other.target = {"name": "u"}
    other.key_fingerprint = "e" * 64
    assert differences(part([], 1, 2), other) == ["target", "key"]


def test_a_manifest_is_written_in_pieces_as_the_same_bytes_as_its_json(tmp_path):
    from avpcli.manifest import Manifest

    files = [{"source": f"photo {index}.jpg", "output": f"photo {index}.png", "status": "ok", "ssim_encrypted": 0.01}
             for index in range(3000)]  # over 64 KiB: several pieces
    manifest = Manifest(kind="encrypted", target={"name": "dlib"}, key_fingerprint="ab" * 32, settings={"a": 1},
                        files=files)
    path = manifest.write(tmp_path)
    assert path.read_text() == manifest.to_json() and len(path.read_bytes()) > 1 << 17
