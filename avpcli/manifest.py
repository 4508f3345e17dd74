"""The manifest: a JSON record in each output folder of what was done to every input file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avpcli import __version__
from avpcli.errors import AvpError
from avpcli.images import atomic_write_bytes

MANIFEST_NAME = "avp-manifest.json"
MANIFEST_FORMAT = "avp-manifest"
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """What `avp encrypt` did: target, key fingerprint, settings, and one entry per input file.

    It never holds the key's path or seed: an output folder may be handed to an untrusted party.
    """

    kind: str  # "encrypted" or "decrypted"
    target: dict[str, Any]
    key_fingerprint: str
    settings: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    avp_version: str = __version__

    def to_json(self) -> str:
        document = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "avp_version": self.avp_version,
            "kind": self.kind,
            "target": self.target,
            "key_fingerprint": self.key_fingerprint,
            "settings": self.settings,
            "summary": summarize(self.files),
            "files": self.files,
        }
        return json.dumps(document, indent=2, sort_keys=False) + "\n"

    def write(self, folder: Path, name: str = MANIFEST_NAME) -> Path:
        path = folder / name
        atomic_write_bytes(path, self.to_json().encode())
        return path


def summarize(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and the means of the numeric metrics over the files that succeeded."""
    counts: dict[str, int] = {}
    for entry in files:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    succeeded = [entry for entry in files if entry["status"] == "ok"]
    means = {}
    for metric in ("feature_distance", "cosine", "ssim_encrypted", "ssim_decrypted", "iterations"):
        values = [entry[metric] for entry in succeeded if isinstance(entry.get(metric), (int, float))]
        if values:
            means[f"mean_{metric}"] = sum(values) / len(values)
    return {"files": len(files), **{f"status_{status}": count for status, count in sorted(counts.items())}, **means}


def read_manifest(folder_or_file: Path) -> Manifest:
    """Load a manifest from a folder (its avp-manifest.json) or a path; AvpError if absent or foreign."""
    path = folder_or_file / MANIFEST_NAME if folder_or_file.is_dir() else folder_or_file
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise AvpError(f"no {MANIFEST_NAME} in {folder_or_file}: is it a folder written by `avp encrypt`?") from None
    except (OSError, ValueError) as broken:
        raise AvpError(f"cannot read manifest {path}: {broken}") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise AvpError(f"{path} is not an avp manifest")
    if document.get("version", 0) > MANIFEST_VERSION:
        raise AvpError(f"{path} was written by a newer avp (manifest version {document['version']})")
    return Manifest(
        kind=document.get("kind", "encrypted"),
        target=document.get("target", {}),
        key_fingerprint=document.get("key_fingerprint", ""),
        settings=document.get("settings", {}),
        files=document.get("files", []),
        avp_version=document.get("avp_version", ""),
    )
