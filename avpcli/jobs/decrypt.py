"""Decrypting: the ciphertexts of a folder's manifest, or loose ciphertext files, through the key into PNGs
and a manifest of kind "decrypted", resumably."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from torch import nn

from avpcli.engine import decrypt_grouped, resolve_device
from avpcli.errors import AvpError, ImageError, KeyFileError, UsageError
from avpcli.events import Event, EventCallback, ignore_events
from avpcli.images import (MAX_PNG_BYTES, check_named_file, contained_path, describe_error, find_images, is_inside,
                           output_names, png_bytes, png_tensor, read_file_bytes)
from avpcli.jobs.folders import (Checkpoint, file_digest, owned_folder, previous_manifest, remove_stale_temporaries,
                                 write_into, write_records)
from avpcli.key import Key, find_key, load_key
from avpcli.manifest import MANIFEST_NAME, Manifest, manifest_parts, read_manifest


@dataclass
class DecryptJob:
    """Everything `avp decrypt` needs: the encrypted folder (and its manifest, if already read), the key."""

    encrypted: Path
    output: Path
    key: nn.Module
    key_fingerprint: str
    batch_size: int = 16
    device: str = "cpu"
    manifest: Manifest | None = None
    # Redo every output; by default a rerun keeps what an earlier run with this key finished.
    overwrite: bool = False


@dataclass
class DecryptFilesJob:
    """Everything `avp decrypt FILE...` needs: ciphertext files decrypted one by one, and the key.

    files: ciphertext PNGs, each decrypted at its own size. One that is missing, not an 8-bit RGB
        PNG, smaller than the key takes or inside `output` fails alone. One that a manifest of
        `avp encrypt` in its folder (or a folder above) lists is held to that manifest, as a folder
        would be: a key of another fingerprint fails it unless `force`, the manifest's input size
        applies, and its key_scramble decides between G∘S and G alone.
    output: the folder written: the decrypted PNGs under the files' names (find_images's: parent
        folders are added where two would clash) and an avp-manifest.json of kind "decrypted".
    key: the loaded key (a file may need G∘S and another G alone).
    """

    files: list[Path]
    output: Path
    key: Key
    batch_size: int = 16
    device: str = "cpu"
    overwrite: bool = False
    force: bool = False


def uses_scramble(key: Key, manifest: Manifest | None) -> bool:
    """Whether ciphertexts listed in `manifest` (None: a loose ciphertext) decrypt with G∘S rather than G alone.

    Ciphertexts of `--recipe research` were made for G alone, and the manifest says so.
    """
    return key.scrambles and (manifest is None or manifest.settings.get("key_scramble", True) is not False)


@dataclass(frozen=True)
class _Ciphertext:
    """One ciphertext to decrypt: its place in the run, its name (in the output folder, the events and
    the manifest), where it is read and written, the key model it needs, and the size it must have (None: any)."""

    position: int
    name: str
    source: Path
    output: Path
    key: nn.Module
    size: tuple[int, int] | None = None


@dataclass
class _Decryption:
    """A decryption's plan, made before anything is read: what to decrypt, and what is refused already
    (position, name, reason). `png_only`: refuse anything but 8-bit RGB PNGs (loose files)."""

    output: Path
    key_fingerprint: str
    target: dict[str, Any]
    ciphertexts: list[_Ciphertext]
    refused: list[tuple[int, str, str]]
    batch_size: int
    device: str
    overwrite: bool
    png_only: bool = False


# The key's generator takes images of at least 8×8 pixels (key.KeyGenerator).
_SMALLEST_CIPHERTEXT_SIDE = 8


def decrypt_folder(job: DecryptJob, on_event: EventCallback = ignore_events) -> Manifest:
    """Apply the key to every ciphertext listed in the folder's manifest; writes PNGs and a manifest.

    Every name the manifest gives is checked before anything is read or written (contained_path):
    an entry that would lead out of the encrypted folder or the output folder, or names no file,
    fails alone with its reason. The run holds the output folder's lock, rewrites its manifest as
    it goes (`complete` is False until the end), and a rerun keeps every output that an earlier run
    with the same key finished (listed, unchanged on disk, made from the same ciphertext bytes), so
    that a killed run and its rerun write what one uninterrupted run writes; job.overwrite redoes all.
    """
    source_manifest = job.manifest or read_manifest(job.encrypted)
    if is_inside(job.output, job.encrypted) or is_inside(job.encrypted, job.output):
        raise UsageError(f"the output folder {job.output} and {job.encrypted} overlap; choose another --out")
    size = source_manifest.target.get("input_size")
    if size is None:
        raise AvpError(f"the manifest of {job.encrypted} does not give the target's input size; it is damaged")
    plan = _Decryption(job.output, job.key_fingerprint, source_manifest.target, [], [], job.batch_size, job.device,
                       job.overwrite)
    seen: set[str] = set()
    for position, entry in enumerate(source_manifest.files):
        if entry.get("status") != "ok":
            continue
        name = entry.get("output")
        label = name if isinstance(name, str) and name else f"entry {position + 1}"
        try:
            paths = contained_path(job.encrypted, name), contained_path(job.output, name)
        except ImageError as unsafe:
            plan.refused.append((position, label, str(unsafe)))
            continue
        if name in seen:
            plan.refused.append((position, label, "listed twice in the manifest"))
            continue
        seen.add(name)
        plan.ciphertexts.append(_Ciphertext(position, name, *paths, job.key, tuple(size)))
    with owned_folder(job.output):
        return _decrypt(plan, on_event)


def decrypt_files(job: DecryptFilesJob, on_event: EventCallback = ignore_events) -> Manifest:
    """Apply the key to ciphertext files one by one (DecryptFilesJob); writes PNGs and a manifest.

    As decrypt_folder does: each file that cannot be decrypted fails alone with its reason, the
    output folder is locked and its manifest rewritten as the run goes, and a rerun keeps what an
    earlier run with the same key finished (job.overwrite redoes all).
    """
    sources = find_images(job.files, listed=True)
    names = output_names(sources)
    models: dict[bool, nn.Module] = {}  # one module per kind, so that a batch's files share it
    manifests = _ListingManifests()
    plan = _Decryption(job.output, job.key.fingerprint, {}, [], [], job.batch_size, job.device, job.overwrite,
                       png_only=True)
    for position, source in enumerate(sources):
        name = str(names[source.relative])
        try:
            check_named_file(source.path, job.output)
            output = contained_path(job.output, name)
            manifest = manifests.listing(source.path)
        except (ImageError, AvpError) as refused:
            plan.refused.append((position, name, str(refused)))
            continue
        if manifest is not None and manifest.key_fingerprint != job.key.fingerprint and not job.force:
            plan.refused.append((position, name, f"encrypted with another key (fingerprint "
                                 f"{manifest.key_fingerprint[:16]}… in its folder's manifest, not "
                                 f"{job.key.fingerprint[:16]}…); use --force to decrypt it anyway"))
            continue
        scramble = uses_scramble(job.key, manifest)
        if scramble not in models:
            models[scramble] = job.key.model_for(scramble=scramble).to(job.device)
        size = manifest.target.get("input_size") if manifest is not None else None
        plan.ciphertexts.append(_Ciphertext(position, name, source.path, output, models[scramble],
                                            tuple(size) if size else None))
    with owned_folder(job.output):
        return _decrypt(plan, on_event)


class _ListingManifests:
    """The manifests of `avp encrypt` that list ciphertext files, found by looking up from each file's
    folder to the first folder that holds a manifest, and read once per folder."""

    def __init__(self) -> None:
        self._nearest: dict[Path, Path | None] = {}
        self._read: dict[Path, tuple[Manifest, set[str]] | AvpError] = {}

    def listing(self, path: Path) -> Manifest | None:
        """The manifest of the nearest folder above `path` that has one, if it is an encryption's and lists
        `path` as a finished output; AvpError if that manifest cannot be read."""
        absolute = Path(os.path.abspath(path))
        folder = self._nearest_manifest_folder(absolute.parent)
        if folder is None:
            return None
        if folder not in self._read:
            try:
                manifest = read_manifest(folder)
                self._read[folder] = manifest, {entry.get("output") for entry in manifest.files
                                                if entry.get("status") == "ok" and isinstance(entry.get("output"), str)}
            except AvpError as damaged:
                self._read[folder] = damaged
        found = self._read[folder]
        if isinstance(found, AvpError):
            raise found
        manifest, outputs = found
        if manifest.kind != "encrypted" or absolute.relative_to(folder).as_posix() not in outputs:
            return None
        return manifest

    def _nearest_manifest_folder(self, folder: Path) -> Path | None:
        visited = []
        found: Path | None = None
        while True:
            if folder in self._nearest:
                found = self._nearest[folder]
                break
            visited.append(folder)
            if (folder / MANIFEST_NAME).is_file() or manifest_parts(folder):
                found = folder
                break
            if folder.parent == folder:
                break
            folder = folder.parent
        for seen in visited:
            self._nearest[seen] = found
        return found


def _decrypt(plan: _Decryption, on_event: EventCallback) -> Manifest:
    """A decryption's work (decrypt_folder, decrypt_files), once the run holds plan.output."""
    earlier = _earlier_decryption(plan)
    manifest = Manifest(kind="decrypted", target=plan.target, key_fingerprint=plan.key_fingerprint, complete=False)
    records: list[tuple[int, dict[str, Any]]] = []

    def fail(position: int, label: str, reason: str) -> None:
        entry = {"source": label, "output": None, "status": "failed", "reason": reason}
        records.append((position, entry))
        on_event(Event("failed", source=label, reason=reason, entry=entry))

    for refused in plan.refused:
        fail(*refused)
    ciphertexts = plan.ciphertexts
    remove_stale_temporaries(plan.output, {Path(item.name) for item in ciphertexts} | {Path(MANIFEST_NAME)})
    checkpoint = Checkpoint(lambda: write_records(manifest, records, plan.output))
    checkpoint.write()

    # Batches are fixed runs of the list, whatever is already done, as in encrypt: a rerun decrypts
    # an unfinished batch whole so that every image comes out as in an uninterrupted run.
    for start in range(0, len(ciphertexts), plan.batch_size):
        batch = []
        for item in ciphertexts[start:start + plan.batch_size]:
            try:
                data = read_file_bytes(item.source, MAX_PNG_BYTES)
                tensor = png_tensor(data, item.size, png_only=plan.png_only)
                if min(tensor.shape[-2:]) < _SMALLEST_CIPHERTEXT_SIDE:
                    raise ImageError(f"{tensor.shape[-1]}x{tensor.shape[-2]} pixels, smaller than the key takes "
                                     f"({_SMALLEST_CIPHERTEXT_SIDE} a side)")
                batch.append((item, hashlib.sha256(data).hexdigest(), tensor))
            except Exception as broken:  # noqa: BLE001 - a damaged ciphertext fails alone
                fail(item.position, item.name, f"cannot read: {describe_error(broken, item.source)}")
        kept = [_decrypted_before(earlier.get(item.name), plan.output, item.name, digest) for item, digest, _ in batch]
        if not all(kept):
            decrypted = decrypt_grouped([(item.key, tensor) for item, _, tensor in batch], plan.device)
        for index, ((item, digest, _), entry) in enumerate(zip(batch, kept)):
            kind = "skipped"
            if entry is None:
                data = png_bytes(decrypted[index])
                write_into(plan.output, item.name, data)
                entry = {"source": item.name, "output": item.name, "status": "ok", "source_sha256": digest,
                         "sha256": hashlib.sha256(data).hexdigest()}
                kind = "written"
            records.append((item.position, entry))
            on_event(Event(kind, source=item.name, output=item.output, entry=entry))
        on_event(Event("progress", done=min(start + plan.batch_size, len(ciphertexts)), total=len(ciphertexts)))
        checkpoint.write_if_due()
    manifest.complete = True
    checkpoint.write()
    return manifest


def _earlier_decryption(plan: _Decryption) -> dict[str, dict[str, Any]]:
    """The entries of an earlier decryption into plan.output by ciphertext name ({} with plan.overwrite).

    UsageError if the folder holds avp output of another kind, or a decryption with another key.
    """
    earlier = None if plan.overwrite else previous_manifest(plan.output, (MANIFEST_NAME,))
    if earlier is None:
        return {}
    if earlier.kind != "decrypted":
        raise UsageError(f"{plan.output} holds avp output of another kind ({earlier.kind}); choose another --out")
    if earlier.key_fingerprint != plan.key_fingerprint:
        raise UsageError(f"{plan.output} holds a decryption with another key; use --overwrite to redo it, "
                         "or choose another --out")
    return {entry["source"]: entry for entry in earlier.files if isinstance(entry.get("source"), str)}


def _decrypted_before(entry: dict[str, Any] | None, folder: Path, name: str, digest: str) -> dict[str, Any] | None:
    """The earlier entry if it decrypted these very ciphertext bytes into folder/name, unchanged on disk since."""
    if (entry is None or entry.get("status") != "ok" or entry.get("output") != name
            or entry.get("source_sha256") != digest):
        return None
    return entry if file_digest(folder, name) == entry.get("sha256") else None


def decrypt_paths(inputs: Iterable[Path], output: Path | None = None, *, key: Key | Path | None = None,
                  key_folders: Sequence[Path] = (), listed: bool = False, force: bool = False, batch_size: int = 16,
                  device: str = "auto", overwrite: bool = False, on_event: EventCallback = ignore_events,
                  on_warning: Callable[[str], None] = lambda message: None) -> Manifest:
    """`avp decrypt`: one folder written by `avp encrypt`, or ciphertext files one by one; returns the manifest written.

    A folder: the key is `key` (KeyFileError if its fingerprint is not the manifest's, unless
    `force`, which warns through on_warning) or else the key in `key_folders` whose fingerprint the
    manifest names (find_key; unusable files there are passed to on_warning); the output defaults
    to <folder>-decrypted beside it, and --recipe research ciphertexts decrypt with G alone (the
    manifest says which). Files (or `listed`: paths read from a list, each checked alone): `key` and
    `output` are needed (UsageError), and each file is held to a manifest that lists it
    (DecryptFilesJob). `inputs` is read only after these checks, so that a usage error does not wait
    for a list that is still being written.
    """
    if not listed:
        inputs = list(inputs)
    folder = None if listed or len(inputs) != 1 or not inputs[0].is_dir() else inputs[0]
    if folder is None:
        _check_ciphertext_files(inputs, listed, key, output)
    resolved = resolve_device(device)
    if folder is None:
        loaded = key if isinstance(key, Key) else load_key(key, device=resolved)
        return decrypt_files(DecryptFilesJob(files=list(inputs), output=output, key=loaded, batch_size=batch_size,
                                             device=resolved, overwrite=overwrite, force=force), on_event)
    manifest = read_manifest(folder)
    if key is not None:
        loaded = key if isinstance(key, Key) else load_key(key, device=resolved)
        if loaded.fingerprint != manifest.key_fingerprint:
            if not force:
                raise KeyFileError(
                    f"{key if not isinstance(key, Key) else 'the key'} is not the key these images were encrypted "
                    f"with (fingerprint {loaded.fingerprint[:16]}… vs {manifest.key_fingerprint[:16]}… in the "
                    "manifest); use --force to decrypt anyway")
            on_warning("decrypting with a key that does not match the manifest")
    else:
        loaded = find_key(manifest.key_fingerprint, list(key_folders), resolved,
                          on_unusable=lambda reason: on_warning(f"skipped: {reason}"))
    job = DecryptJob(encrypted=folder, output=output if output is not None else folder.with_name(folder.name + "-decrypted"),
                     key=loaded.model_for(scramble=uses_scramble(loaded, manifest)), key_fingerprint=loaded.fingerprint,
                     batch_size=batch_size, device=resolved, manifest=manifest, overwrite=overwrite)
    return decrypt_folder(job, on_event)


def _check_ciphertext_files(inputs: Sequence[Path] | Iterable[Path], listed: bool, key: Key | Path | None,
                            output: Path | None) -> None:
    """UsageError for what decrypting files one by one cannot do without."""
    if not listed:
        for given in inputs:
            if given.is_dir():
                raise UsageError(f"{given} is a folder: give one folder written by `avp encrypt`, or ciphertext files")
            if not given.exists() and not given.is_symlink():
                raise UsageError(f"input not found: {given}")
    if key is None:
        raise UsageError("give --key to decrypt files: only a folder's manifest names the key to look for")
    if output is None:
        raise UsageError("give --out: the folder where the decrypted files go")
