"""The manifests of `avp encrypt` that ciphertext files given one by one are held to (jobs.decrypt.decrypt_files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from avpcli.errors import AvpError
from avpcli.manifest import MANIFEST_NAME, Manifest, manifest_parts, read_manifest


class ListingManifests:
    """The manifests of `avp encrypt` that list ciphertext files, looked for in each file's own folder
    only (a manifest planted in a folder above must not steer decryption), read once per folder;
    `on_used` is called once with the path of each manifest that lists a file."""

    def __init__(self, on_used: Callable[[Path], None]) -> None:
        self._read: dict[Path, tuple[Manifest, dict[str, str | None], Path] | AvpError | None] = {}
        self._on_used = on_used
        self._used: set[Path] = set()

    def listing(self, path: Path) -> tuple[Manifest, str | None] | None:
        """(manifest, the sha256 it lists) if the manifest in path's folder is an encryption's and lists
        `path` as a finished output; None if there is none or it does not; AvpError if it cannot be read."""
        absolute = Path(os.path.abspath(path))
        folder = absolute.parent
        if folder not in self._read:
            self._read[folder] = self._read_folder(folder)
        found = self._read[folder]
        if isinstance(found, AvpError):
            raise found
        if found is None:
            return None
        manifest, outputs, used = found
        if absolute.name not in outputs:
            return None
        if used not in self._used:
            self._used.add(used)
            self._on_used(used)
        return manifest, outputs[absolute.name]

    @staticmethod
    def _read_folder(folder: Path) -> tuple[Manifest, dict[str, str | None], Path] | AvpError | None:
        if not (folder / MANIFEST_NAME).is_file() and not manifest_parts(folder):
            return None
        try:
            manifest = read_manifest(folder)
        except AvpError as damaged:
            return damaged
        if manifest.kind != "encrypted":
            return None
        outputs = {entry["output"]: entry.get("sha256") if isinstance(entry.get("sha256"), str) else None
                   for entry in manifest.files if entry.get("status") == "ok" and isinstance(entry.get("output"), str)}
        used = folder / MANIFEST_NAME if (folder / MANIFEST_NAME).is_file() else folder
        return manifest, outputs, used
