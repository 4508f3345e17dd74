"""Output names that never replace another source's output: an output name that an earlier run's
finished output holds, made from other source bytes, is kept, and the new output is named by the rule
that keeps two inputs of one name apart (images.longer_names: its parent folders are added)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable

from avpcli.errors import AvpError, ImageError
from avpcli.images import contained_path, longer_names
from avpcli.jobs.resume import SourceTag
from avpcli.manifest import MANIFEST_NAME, manifest_parts, read_manifest

_FACE_SUFFIX = re.compile(r"_face\d+$")


def held_outputs(folder: Path) -> dict[str, dict[str, Any]]:
    """The finished outputs that the manifests of `avp encrypt` in `folder` list (avp-manifest.json and
    every shard part), by name (a face's _faceN dropped: its source's first output's name), where the
    file is still there: names that a new source must not take."""
    held: dict[str, dict[str, Any]] = {}
    for path in [folder / MANIFEST_NAME, *manifest_parts(folder)]:
        if not path.is_file():
            continue
        try:
            manifest = read_manifest(path)
        except AvpError:
            continue  # unreadable: its outputs are redone, as a resumed run does (previous_manifest)
        if manifest.kind != "encrypted":
            continue
        for entry in manifest.files:
            name = entry.get("output")
            if entry.get("status") == "sealed" and isinstance(entry.get("sealed"), str):
                # sealed only: its container holds the name its ciphertext would have had
                name = entry["sealed"].replace(".sealed.", ".", 1) if ".sealed." in entry["sealed"] else None
            if entry.get("status") not in ("ok", "sealed") or not isinstance(name, str):
                continue
            if entry.get("face", 1) != 1 and entry.get("status") == "ok":
                stem = Path(name)
                name = str(stem.with_name(_FACE_SUFFIX.sub("", stem.stem) + stem.suffix))
            try:
                exists = contained_path(folder, entry["sealed"] if entry.get("status") == "sealed" else name).exists()
            except ImageError:
                continue
            if exists:
                held.setdefault(name, entry)
    return held


def held_by_another(entry: dict[str, Any] | None, tag: SourceTag | None, label: str) -> bool:
    """Whether an earlier run's entry for an output name was made from another source than this one
    (`tag`: this source's tag, None if it cannot be read; `label`: what the manifest calls it). An entry
    without a tag (avp before 0.2) counts as this source's if it has the same label."""
    if entry is None:
        return False
    if "source_tag" not in entry:
        return entry.get("source") != label
    return tag is None or not tag.matches(entry["source_tag"])


def choose_label(natural: Path, path: Path, output_of: Callable[[Path], Path | None],
                 is_free: Callable[[Path | None, Path], bool], planned: set[str]) -> Path | None:
    """The label a source's outputs are named by: `natural` (its path relative to its input), or failing that
    the first of its longer names (images.longer_names of `path`) whose output (`output_of`; None: a new
    name, free) `is_free` and no other source of this run takes (`planned`); None if none is."""
    for label in [natural, *longer_names(path, natural)]:
        output = output_of(label)
        if label != natural and output is not None and str(output) in planned:
            continue
        if is_free(output, label):
            if output is not None:
                planned.add(str(output))
            return label
    return None


class DecryptedNames:
    """The output names of a decryption: a ciphertext's own name, unless an earlier run's output of
    another ciphertext (another source_sha256) holds it; then the name lengthened by the ciphertext's
    parent folders. Never replaces another ciphertext's decryption (only --overwrite does, by
    forgetting the earlier run)."""

    def __init__(self, folder: Path, earlier: dict[str, dict[str, Any]], planned: Iterable[str]) -> None:
        self.folder, self.earlier, self.planned = folder, earlier, set(planned)

    def _free(self, output: Path | None, digest: str) -> bool:
        entry = self.earlier.get(str(output))
        held = (entry is not None and entry.get("status") == "ok" and entry.get("source_sha256") != digest
                and (self.folder / str(output)).exists())
        if held:
            return False
        try:
            contained_path(self.folder, str(output))
        except ImageError:
            return False
        return True

    def choose(self, name: str, source: Path, digest: str) -> str | None:
        """The output name of the ciphertext `source` (sha256 `digest`), whose own name is `name`; None if
        it and every longer name hold other ciphertexts' decryptions."""
        label = choose_label(Path(name), source, lambda label: label, lambda output, _: self._free(output, digest),
                             self.planned)
        return None if label is None else label.as_posix()

    def kept(self, written: set[str]) -> list[dict[str, Any]]:
        """The earlier run's finished entries whose outputs this run leaves in place (a merge without loss)."""
        return [entry for name, entry in self.earlier.items() if name not in written and entry.get("status") == "ok"]
