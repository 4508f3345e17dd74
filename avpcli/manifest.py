"""The manifest: a JSON record in each output folder of what was done to every input file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from avpcli import __version__
from avpcli.errors import AvpError, ImageError
from avpcli.images import read_file_bytes, write_output

MANIFEST_NAME = "avp-manifest.json"
MANIFEST_FORMAT = "avp-manifest"
MANIFEST_VERSION = 1
_PART_NAME = re.compile(r"avp-manifest\.part-(\d+)-of-(\d+)\.json")
_SHARD = re.compile(r"[0-9]{1,9}/[0-9]{1,9}")
_RUN_ID = re.compile(r"[0-9a-f]{1,64}")
# Far above any real run (a million entries take about 300 MB); a larger file is refused unread.
MAX_MANIFEST_BYTES = 1 << 30


@dataclass
class Manifest:
    """What `avp encrypt` did: target, key fingerprint, settings, and one entry per input file.

    It never holds the key's path or seed: an output folder may be handed to an untrusted party.
    `complete` is False while a run is under way (the manifest is rewritten as the run goes);
    `shard` ("i/n") marks one process's part of a sharded run; `run` names an anonymized run's
    id → name map, which is kept outside the output folder.
    """

    kind: str  # "encrypted" or "decrypted"
    target: dict[str, Any]
    key_fingerprint: str
    settings: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    avp_version: str = __version__
    complete: bool = True
    shard: str | None = None
    run: str | None = None

    def _document(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "avp_version": self.avp_version,
            "kind": self.kind,
            "complete": self.complete,
            **({"shard": self.shard} if self.shard else {}),
            **({"run": self.run} if self.run else {}),
            "target": self.target,
            "key_fingerprint": self.key_fingerprint,
            "settings": self.settings,
            "summary": summarize(self.files),
            "files": self.files,
        }

    def to_json(self) -> str:
        return json.dumps(self._document(), indent=2, sort_keys=False) + "\n"

    def write(self, folder: Path, name: str = MANIFEST_NAME) -> Path:
        """Write atomically, piece by piece (the same bytes as to_json, never whole in memory: a run's
        manifest is rewritten as it goes); AvpError (one line) if the disk refuses."""
        path = folder / name
        pieces = json.JSONEncoder(indent=2).iterencode(self._document())
        write_output(path, _batched((piece.encode() for piece in pieces), 1 << 16, b"\n"))
        return path


def _batched(pieces: Iterator[bytes], size: int, tail: bytes) -> Iterator[bytes]:
    """The pieces joined into blocks of about `size` bytes, then `tail`: fewer, larger writes."""
    block: list[bytes] = []
    held = 0
    for piece in pieces:
        block.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(block)
            block, held = [], 0
    yield b"".join(block) + tail


def part_name(shard: tuple[int, int]) -> str:
    """The manifest's file name for shard (index from 0, count); the plain name when unsharded."""
    index, count = shard
    return MANIFEST_NAME if count == 1 else f"avp-manifest.part-{index + 1}-of-{count}.json"


def summarize(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and the means of the numeric metrics over the files that succeeded."""
    counts: dict[str, int] = {}
    for entry in files:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    succeeded = [entry for entry in files if entry["status"] == "ok"]
    means = {}
    for metric in ("feature_distance", "cosine", "ssim_encrypted", "ssim_decrypted", "lowpass_correlation",
                   "iterations"):
        values = [entry[metric] for entry in succeeded if isinstance(entry.get(metric), (int, float))]
        if values:
            means[f"mean_{metric}"] = sum(values) / len(values)
    return {"files": len(files), **{f"status_{status}": count for status, count in sorted(counts.items())}, **means}


def read_manifest(folder_or_file: Path) -> Manifest:
    """Load a manifest from a folder or a path; AvpError if absent or foreign.

    A folder without avp-manifest.json but with the parts of a sharded run reads as their merge.
    """
    if folder_or_file.is_dir():
        path = folder_or_file / MANIFEST_NAME
        if not path.exists():
            parts = manifest_parts(folder_or_file)
            if parts:
                return merge_parts([_read_manifest_file(part) for part in parts])
    else:
        path = folder_or_file
    return _read_manifest_file(path, folder_or_file)


def manifest_parts(folder: Path) -> list[Path]:
    """The manifest parts of a sharded run in `folder`, in shard order."""
    found = [(tuple(map(int, match.groups())), path) for path in folder.glob("avp-manifest.part-*-of-*.json")
             if (match := _PART_NAME.fullmatch(path.name))]
    return [path for _, path in sorted(found)]


def missing_parts(folder: Path) -> list[str]:
    """The shards ("i/n") of a sharded run whose manifest parts `folder` lacks, where it holds no merged
    avp-manifest.json: what decrypting the folder would go without."""
    if (folder / MANIFEST_NAME).exists():
        return []
    found: dict[int, set[int]] = {}
    for path in manifest_parts(folder):
        index, count = map(int, _PART_NAME.fullmatch(path.name).groups())
        found.setdefault(count, set()).add(index)
    return [f"{index}/{count}" for count, indices in sorted(found.items()) if count <= 1 << 16
            for index in range(1, count + 1) if index not in indices]


def _read_manifest_file(path: Path, named: Path | None = None) -> Manifest:
    """Read and check a manifest's structure; the paths its entries name are checked where they are used."""
    if not path.exists() and not path.is_symlink():
        raise AvpError(f"no {MANIFEST_NAME} in {named or path}: is it a folder written by `avp encrypt`?")
    try:
        document = json.loads(read_file_bytes(path, MAX_MANIFEST_BYTES))
    except ImageError as broken:
        raise AvpError(f"cannot read manifest {path}: {broken}") from None
    except (ValueError, RecursionError) as broken:
        raise AvpError(f"cannot read manifest {path}: {' '.join(str(broken).split())[:200]}") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise AvpError(f"{path} is not an avp manifest")
    if type(document.get("version", 0)) is not int:
        raise AvpError(f"{path} is damaged: its version is not a whole number")
    if document.get("version", 0) > MANIFEST_VERSION:
        raise AvpError(f"{path} was written by a newer avp (manifest version {document['version']})")
    files = document.get("files", [])
    if not isinstance(files, list) or not all(isinstance(entry, dict) and isinstance(entry.get("status"), str)
                                              for entry in files):
        raise AvpError(f"{path} is damaged: its file list is not a list of entries with a status")
    for member, kind in (("kind", str), ("target", dict), ("key_fingerprint", str), ("settings", dict)):
        if member in document and not isinstance(document[member], kind):
            raise AvpError(f"{path} is damaged: its {member} is not a JSON {'string' if kind is str else 'object'}")
    if not isinstance(document.get("shard") or "1/1", str) or not _SHARD.fullmatch(document.get("shard") or "1/1"):
        raise AvpError(f"{path} is damaged: its shard is not i/n")
    if not isinstance(document.get("run") or "0", str) or not _RUN_ID.fullmatch(document.get("run") or "0"):
        raise AvpError(f"{path} is damaged: its run id is not a short hexadecimal id")  # it names a file
    size = document.get("target", {}).get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(type(side) is int and 0 < side <= 1 << 16 for side in size)):
        raise AvpError(f"{path} is damaged: its target's input_size is not two sides in pixels")
    return Manifest(
        kind=document.get("kind", "encrypted"),
        target=document.get("target", {}),
        key_fingerprint=document.get("key_fingerprint", ""),
        settings=document.get("settings", {}),
        files=files,
        avp_version=document.get("avp_version", ""),
        complete=bool(document.get("complete", True)),
        shard=document.get("shard"),
        run=document.get("run"),
    )


def merge_parts(parts: list[Manifest]) -> Manifest:
    """One manifest from the parts of a sharded run, files in the order one process would list them.

    Shard i of n takes files i, i+n, i+2n, … of the sorted list, so taking each part's next file
    (all entries of one source) in turn restores the order. AvpError if the parts disagree on the
    target, key or settings (other than each part's own noise seed).
    """
    first = parts[0]
    for part in parts[1:]:
        if differences(part, first):
            raise AvpError("the manifest parts in this folder come from runs with different targets, keys or "
                           "settings; rerun the odd shard with --overwrite")
    grouped = [_group_by_source(part.files) for part in parts]
    files: list[dict[str, Any]] = []
    for position in range(max((len(groups) for groups in grouped), default=0)):
        for groups in grouped:
            if position < len(groups):
                files.extend(groups[position])
    seeds = [part.settings.get("noise_seed") for part in parts]
    settings = dict(first.settings)
    if len(set(map(str, seeds))) > 1:
        settings["noise_seed"] = seeds  # shards started without a common --seed
    return Manifest(kind=first.kind, target=first.target, key_fingerprint=first.key_fingerprint, settings=settings,
                    files=files, avp_version=first.avp_version, complete=all(part.complete for part in parts))


def differences(manifest: Manifest, other: Manifest) -> list[str]:
    """What two manifests' runs did differently ("target", "key", "settings"; the noise seed aside).

    Outputs of runs without differences belong together: one manifest may list them all.
    """
    return [name for name, mine, theirs in (
        ("target", manifest.target, other.target),
        ("key", manifest.key_fingerprint, other.key_fingerprint),
        ("settings", settings_without_seed(manifest.settings), settings_without_seed(other.settings)),
    ) if mine != theirs]


def settings_without_seed(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings less the noise seed: what must agree for outputs of two runs to belong together."""
    return {name: value for name, value in settings.items() if name != "noise_seed"}


def _group_by_source(files: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: list[list[dict[str, Any]]] = []
    for entry in files:
        if groups and groups[-1][0].get("source") == entry.get("source"):
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups
