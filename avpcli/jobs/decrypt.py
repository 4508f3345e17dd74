"""Decrypting: the ciphertexts of a folder's manifest, or loose ciphertext files, through the key into PNGs
and a manifest of kind "decrypted", resumably."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from torch import nn

from avpcli.engine import decrypt_grouped, resolve_device
from avpcli.errors import AvpError, ImageError, KeyFileError, UsageError
from avpcli.events import Event, EventCallback, ignore_events
from avpcli.images import (MAX_PIXELS, MAX_PNG_BYTES, check_named_file, contained_path, describe_error, find_images,
                           is_inside, output_names, png_bytes, png_tensor, read_file_bytes)
from avpcli.jobs.folders import (Checkpoint, file_digest, owned_folder, previous_manifest, remove_stale_temporaries,
                                 write_into, write_records)
from avpcli.jobs.listing import ListingManifests
from avpcli.jobs.names import DecryptedNames
from avpcli.jobs.sealing import SealedFile, looks_sealed, restore_all, sealing_key
from avpcli.key import Key, find_key, load_key
from avpcli.manifest import MANIFEST_NAME, Manifest, missing_parts, read_manifest

# The one line for a ciphertext whose key check fails (KeyModel.verify).
KEY_CHECK_FAILED = "damaged, or made with another key"


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
    # Decrypt ciphertexts that fail their sha256 in the manifest or the key check (the entry says "forced").
    force: bool = False
    max_pixels: int = MAX_PIXELS
    # Opens the sealed originals (jobs.sealing.sealing_key of the Key); chips: also decrypt their model
    # ciphertexts, into chips/ (by default a sealed source is restored from its container alone).
    sealing_key: bytes | None = None
    chips: bool = False


@dataclass
class DecryptFilesJob:
    """Everything `avp decrypt FILE...` needs: ciphertext files decrypted one by one, and the key.

    files: ciphertext PNGs, each decrypted at its own size. One that is missing, not an 8-bit RGB
        PNG, larger than `max_pixels`, smaller than the key takes or inside `output` fails alone. One
        that a manifest of `avp encrypt` in its own folder lists (no folder above is looked at) is
        held to that manifest, as a folder would be: its sha256 must match and a key of another
        fingerprint fails it, unless `force`; the manifest's input size applies, and its key_scramble
        decides between G∘S and G alone.
    output: the folder written: the decrypted PNGs under the files' names (find_images's: parent
        folders are added where two would clash, or where an earlier run's output holds the name)
        and an avp-manifest.json of kind "decrypted".
    key: the loaded key (a file may need G∘S and another G alone).
    force: also decrypt what fails the key check or its manifest's sha256; the entry says "forced".
    A sealed container among the files (seal.is_sealed) is opened and its file restored byte for byte
    as output/<the name sealed in it>; the ciphertexts then go into output/chips/.
    """

    files: list[Path]
    output: Path
    key: Key
    batch_size: int = 16
    device: str = "cpu"
    overwrite: bool = False
    force: bool = False
    max_pixels: int = MAX_PIXELS


def uses_scramble(key: Key, manifest: Manifest | None) -> bool:
    """Whether ciphertexts listed in `manifest` (None: a loose ciphertext) decrypt with G∘S rather than G alone.

    Ciphertexts of `--recipe research` were made for G alone, and the manifest says so.
    """
    return key.scrambles and (manifest is None or manifest.settings.get("key_scramble", True) is not False)


@dataclass(frozen=True)
class _Ciphertext:
    """One ciphertext to decrypt: its place in the run, its name (in the output folder, unless an earlier
    run's output holds it), where it is read, the key model it needs, the size it must have (None: any),
    the sha256 its manifest lists (None: none does) and what the events and the manifest entry call its
    source: the path given for a file, the manifest's name for a folder's ciphertext."""

    position: int
    name: str
    source: Path
    key: nn.Module
    size: tuple[int, int] | None = None
    sha256: str | None = None
    label: str = ""


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
    force: bool = False
    max_pixels: int = MAX_PIXELS
    png_only: bool = False
    containers: list[SealedFile] = field(default_factory=list)
    sealing_key: bytes | None = None


# The key's generator takes images of at least 8×8 pixels (key.KeyGenerator).
_SMALLEST_CIPHERTEXT_SIDE = 8


def decrypt_folder(job: DecryptJob, on_event: EventCallback = ignore_events) -> Manifest:
    """Apply the key to every ciphertext listed in the folder's manifest; writes PNGs and a manifest.

    Every name the manifest gives is checked before anything is read or written (contained_path):
    an entry that would lead out of the encrypted folder or the output folder, or names no file,
    fails alone with its reason. So does a ciphertext whose bytes are not the sha256 its entry
    lists, or that fails the key's check (KeyModel.verify), unless job.force. The run holds the
    output folder's lock, rewrites its manifest as it goes (`complete` is False until the end),
    and a rerun keeps every output that an earlier run with the same key finished (listed,
    unchanged on disk, made from the same ciphertext bytes), so that a killed run and its rerun
    write what one uninterrupted run writes; job.overwrite redoes all. A manifest that says its
    run did not finish, or a folder that lacks some of a sharded run's parts, is a "warning" event:
    what is listed is decrypted. Sealed originals are restored byte for byte (jobs.sealing.restore_all);
    their chips are decrypted only with job.chips, into chips/.
    """
    source_manifest = job.manifest or read_manifest(job.encrypted)
    if is_inside(job.output, job.encrypted) or is_inside(job.encrypted, job.output):
        raise UsageError(f"the output folder {job.output} and {job.encrypted} overlap; choose another --out")
    size = source_manifest.target.get("input_size")
    if size is None:
        raise AvpError(f"the manifest of {job.encrypted} does not give the target's input size; it is damaged")
    for warning in _unfinished(job.encrypted, source_manifest):
        on_event(Event("warning", reason=warning))
    with owned_folder(job.output):
        return _decrypt(folder_plan(job, source_manifest), on_event)


def folder_plan(job: DecryptJob, source_manifest: Manifest) -> _Decryption:
    """What decrypt_folder does with the folder that `source_manifest` describes: the sealed containers to open,
    the ciphertexts to decrypt (under their names in the output folder), and the entries refused already."""
    size = source_manifest.target["input_size"]
    plan = _Decryption(job.output, job.key_fingerprint, source_manifest.target, [], [], job.batch_size, job.device,
                       job.overwrite, job.force, job.max_pixels, sealing_key=job.sealing_key)
    seen: set[str] = set()
    anonymized = source_manifest.settings.get("anonymized") is True
    for position, entry in enumerate(source_manifest.files):
        sealed = entry.get("sealed")
        if isinstance(sealed, str) and sealed not in seen and entry.get("status") in ("ok", "sealed"):
            seen.add(sealed)  # several faces of one photo share its container
            try:
                plan.containers.append(SealedFile(position, sealed, contained_path(job.encrypted, sealed),
                                                  entry.get("sealed_sha256") or "-",
                                                  None if anonymized else str(entry.get("source"))))
            except ImageError as unsafe:
                plan.refused.append((position, sealed, str(unsafe)))
        if entry.get("status") != "ok" or (isinstance(sealed, str) and not job.chips):
            continue
        name = entry.get("output")
        label = name if isinstance(name, str) and name else f"entry {position + 1}"
        try:
            source = contained_path(job.encrypted, name)
            contained_path(job.output, name)
        except ImageError as unsafe:
            plan.refused.append((position, label, str(unsafe)))
            continue
        if name in seen:
            plan.refused.append((position, label, "listed twice in the manifest"))
            continue
        seen.add(name)
        digest = entry.get("sha256")
        plan.ciphertexts.append(_Ciphertext(position, f"chips/{name}" if isinstance(sealed, str) else name, source,
                                            job.key, tuple(size), digest if isinstance(digest, str) else None, name))
    return plan


def _unfinished(folder: Path, manifest: Manifest) -> list[str]:
    """One line for each way in which an encrypted folder holds less than its run meant to write."""
    lines = []
    if not manifest.complete:
        lines.append(f"the manifest of {folder} says its run did not finish (complete: false); decrypting the "
                     f"{sum(entry.get('status') == 'ok' for entry in manifest.files)} files it lists as done")
    missing = missing_parts(folder)
    if missing:
        lines.append(f"{folder} lacks the manifest parts of shard(s) {', '.join(missing)} of a sharded run; "
                     "decrypting what the other parts list")
    return lines


def decrypt_files(job: DecryptFilesJob, on_event: EventCallback = ignore_events) -> Manifest:
    """Apply the key to ciphertext files one by one (DecryptFilesJob); writes PNGs and a manifest.

    As decrypt_folder does: each file that cannot be decrypted fails alone with its reason, the
    output folder is locked and its manifest rewritten as the run goes, and a rerun keeps what an
    earlier run with the same key finished (job.overwrite redoes all). Each manifest a file is held
    to is named once, as a "note" event.
    """
    sources = find_images(job.files, listed=True)
    names = output_names(sources)
    models: dict[bool, nn.Module] = {}  # one module per kind, so that a batch's files share it
    manifests = ListingManifests(lambda path: on_event(Event("note", reason=f"using the manifest {path} for the "
                                                                               "ciphertexts it lists")))
    plan = _Decryption(job.output, job.key.fingerprint, {}, [], [], job.batch_size, job.device, job.overwrite,
                       job.force, job.max_pixels, png_only=True, sealing_key=sealing_key(job.key))
    sealed = {position for position, source in enumerate(sources) if looks_sealed(source.path)}
    for position, source in enumerate(sources):
        name = ("chips/" if sealed else "") + str(names[source.relative])
        given = str(source.path)
        try:
            check_named_file(source.path, job.output)
            if position in sealed:
                plan.containers.append(SealedFile(position, given, source.path))
                continue
            contained_path(job.output, name)
            listing = manifests.listing(source.path)
        except (ImageError, AvpError) as refused:
            plan.refused.append((position, given, str(refused)))
            continue
        manifest, digest = listing if listing is not None else (None, None)
        if manifest is not None and manifest.key_fingerprint != job.key.fingerprint and not job.force:
            plan.refused.append((position, given, f"encrypted with another key (fingerprint "
                                 f"{manifest.key_fingerprint[:16]}… in its folder's manifest, not "
                                 f"{job.key.fingerprint[:16]}…); use --force to decrypt it anyway"))
            continue
        scramble = uses_scramble(job.key, manifest)
        if scramble not in models:
            models[scramble] = job.key.model_for(scramble=scramble).to(job.device)
        size = manifest.target.get("input_size") if manifest is not None else None
        plan.ciphertexts.append(_Ciphertext(position, name, source.path, models[scramble],
                                            tuple(size) if size else None, digest, given))
    with owned_folder(job.output):
        return _decrypt(plan, on_event)


def _decrypt(plan: _Decryption, on_event: EventCallback) -> Manifest:
    """A decryption's work (decrypt_folder, decrypt_files), once the run holds plan.output."""
    earlier = _earlier_decryption(plan)
    manifest = Manifest(kind="decrypted", target=plan.target, key_fingerprint=plan.key_fingerprint, complete=False)
    records: list[tuple[int, dict[str, Any]]] = []
    names = DecryptedNames(plan.output, earlier, {item.name for item in plan.ciphertexts})

    def fail(position: int, label: str, reason: str) -> None:
        entry = {"source": label, "output": None, "status": "failed", "reason": reason}
        records.append((position, entry))
        on_event(Event("failed", source=label, reason=reason, entry=entry))

    for refused in plan.refused:
        fail(*refused)

    def record(position: int, entry: dict[str, Any], kind: str) -> None:
        records.append((position, entry))
        on_event(Event(kind, source=entry["source"], output=plan.output / entry["output"], entry=entry))

    done = restore_all(plan.containers, plan.output, plan.sealing_key, plan.overwrite, earlier, record, fail)
    names.planned |= done
    ciphertexts = beside_restored(plan.ciphertexts, done)
    remove_stale_temporaries(plan.output, {Path(item.name) for item in ciphertexts} | {Path(MANIFEST_NAME)})
    checkpoint = Checkpoint(lambda: write_records(manifest, records, plan.output,
                                                  earlier=names.kept({entry.get("output") for _, entry in records})))
    checkpoint.write()

    # Batches are fixed runs of the list, whatever is already done, as in encrypt: a rerun decrypts
    # an unfinished batch whole so that every image comes out as in an uninterrupted run.
    for start in range(0, len(ciphertexts), plan.batch_size):
        decrypt_batch(ciphertexts[start:start + plan.batch_size], plan, names, earlier, record, fail)
        on_event(Event("progress", done=min(start + plan.batch_size, len(ciphertexts)), total=len(ciphertexts)))
        checkpoint.write_if_due()
    manifest.complete = True
    checkpoint.write()
    return manifest


def beside_restored(ciphertexts: list[_Ciphertext], restored: set[str]) -> list[_Ciphertext]:
    """The ciphertexts, those whose name a restored original took (`restored`) going into chips/ instead."""
    return [replace(item, name=f"chips/{item.name}") if item.name in restored else item for item in ciphertexts]


def decrypt_batch(items: Sequence[_Ciphertext], plan: _Decryption, names: DecryptedNames,
                  earlier: dict[str, dict[str, Any]], record: Callable[[int, dict[str, Any], str], None],
                  fail: Callable[[int, str, str], None]) -> None:
    """Decrypt a batch of ciphertexts into plan.output: record(position, entry, kind) takes each one decrypted
    ("written") or that an earlier run decrypted from these very bytes ("skipped"); fail(position, label, reason)
    each one refused or that cannot be decrypted (nothing is written for it)."""
    batch = []
    for item in items:
        try:
            batch.append(_read_ciphertext(item, plan, names))
        except _Refused as refused:
            fail(item.position, item.label, str(refused))
    kept = [_decrypted_before(earlier.get(name), plan.output, name, digest) for _, name, digest, _, _ in batch]
    decrypted = _decrypt_groups([(item.key, tensor) for (item, _, _, tensor, _), entry in zip(batch, kept)
                                 if entry is None], plan.device)
    for (item, name, digest, _, forced), entry in zip(batch, kept):
        kind = "skipped"
        if entry is None:
            result = decrypted.pop(0)
            if isinstance(result, str):
                fail(item.position, item.label, result)
                continue
            data = png_bytes(result)
            write_into(plan.output, name, data)
            entry = {"source": item.label, "output": name, "status": "ok", "source_sha256": digest,
                     "sha256": hashlib.sha256(data).hexdigest(), **({"forced": forced} if forced else {})}
            kind = "written"
        record(item.position, entry, kind)


class _Refused(Exception):
    """A ciphertext that is not decrypted: its one-line reason."""


def _read_ciphertext(item: _Ciphertext, plan: _Decryption,
                     names: DecryptedNames) -> tuple[_Ciphertext, str, str, Any, str | None]:
    """(item, its output name, its sha256, its pixels, why it was forced or None) once it has passed every
    check that comes before decryption; _Refused with the reason where one fails (nothing is written)."""
    try:
        data = read_file_bytes(item.source, MAX_PNG_BYTES)
        tensor = png_tensor(data, item.size, png_only=plan.png_only, max_pixels=plan.max_pixels)
    except Exception as broken:  # noqa: BLE001 - a damaged ciphertext fails alone
        raise _Refused(f"cannot read: {describe_error(broken, item.source)}") from None
    if min(tensor.shape[-2:]) < _SMALLEST_CIPHERTEXT_SIDE:
        raise _Refused(f"cannot read: {tensor.shape[-1]}x{tensor.shape[-2]} pixels, smaller than the key takes "
                       f"({_SMALLEST_CIPHERTEXT_SIDE} a side)")
    digest = hashlib.sha256(data).hexdigest()
    forced = []
    if item.sha256 is not None and digest != item.sha256:
        if not plan.force:
            raise _Refused("its bytes do not match the sha256 its manifest lists (damaged or replaced); "
                           "use --force to decrypt it anyway")
        forced.append("sha256")
    if _key_check(item.key, tensor) is False:
        if not plan.force:
            raise _Refused(KEY_CHECK_FAILED)
        forced.append("key check")
    name = names.choose(item.name, item.source, digest)
    if name is None:
        raise _Refused(f"{item.name} in the output folder holds the decryption of another ciphertext, and so do "
                       "the longer names; use --overwrite to replace it, or choose another --out")
    return item, name, digest, tensor, " and ".join(forced) or None


def _key_check(model: nn.Module, ciphertext: Any) -> bool | None:
    """Whether a ciphertext (3, H, W) passes the key's check (KeyModel.verify); None where the key's
    scheme carries none (keys made before the check, keys without scramble, G alone)."""
    verify = getattr(model, "verify", None)  # a KeyModel's; any other module carries no check
    result = verify(ciphertext.unsqueeze(0)) if verify is not None else None
    return None if result is None else bool(result[0])


def _decrypt_groups(pairs: list[tuple[nn.Module, Any]], device: str) -> list[Any]:
    """decrypt_grouped, one group (key and size) at a time, so that a group that runs out of memory fails
    alone: its places hold the one-line reason instead of an image."""
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for index, (key, image) in enumerate(pairs):
        groups.setdefault((id(key), tuple(image.shape)), []).append(index)
    results: list[Any] = [None] * len(pairs)
    for indices in groups.values():
        try:
            decrypted = decrypt_grouped([pairs[index] for index in indices], device)
        except (MemoryError, RuntimeError) as error:
            if not isinstance(error, MemoryError) and "memory" not in str(error).lower():
                raise
            height, width = pairs[indices[0]][1].shape[-2:]
            decrypted = [f"not enough memory to decrypt {width}x{height} pixels; --max-pixels refuses such files "
                         "before reading them"] * len(indices)
        for index, result in zip(indices, decrypted):
            results[index] = result
    return results


def _earlier_decryption(plan: _Decryption) -> dict[str, dict[str, Any]]:
    """The finished entries of an earlier decryption into plan.output by output name ({} with plan.overwrite).

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
    return {entry["output"]: entry for entry in earlier.files if isinstance(entry.get("output"), str)}


def _decrypted_before(entry: dict[str, Any] | None, folder: Path, name: str, digest: str) -> dict[str, Any] | None:
    """The earlier entry if it decrypted these very ciphertext bytes into folder/name, unchanged on disk since."""
    if (entry is None or entry.get("status") != "ok" or entry.get("output") != name
            or entry.get("source_sha256") != digest):
        return None
    return entry if file_digest(folder, name) == entry.get("sha256") else None


def decrypt_paths(inputs: Iterable[Path], output: Path | None = None, *, key: Key | Path | None = None,
                  key_folders: Sequence[Path] = (), listed: bool = False, force: bool = False, batch_size: int = 16,
                  device: str = "auto", overwrite: bool = False, max_pixels: int = MAX_PIXELS,
                  on_event: EventCallback = ignore_events, chips: bool = False,
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
                                             device=resolved, overwrite=overwrite, force=force,
                                             max_pixels=max_pixels), on_event)
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
    job = folder_job(folder, output, loaded, manifest, batch_size=batch_size, device=resolved, overwrite=overwrite,
                     force=force, max_pixels=max_pixels, chips=chips)
    return decrypt_folder(job, on_event)


def folder_job(folder: Path, output: Path | None, key: Key, manifest: Manifest, **options: Any) -> DecryptJob:
    """The DecryptJob of an encrypted folder (its manifest read) with a loaded key; output None: <folder>-decrypted
    beside it. options: DecryptJob's batch_size, device, overwrite, force, max_pixels and chips."""
    return DecryptJob(encrypted=folder, output=output if output is not None else folder.with_name(folder.name + "-decrypted"),
                      key=key.model_for(scramble=uses_scramble(key, manifest)), key_fingerprint=key.fingerprint,
                      manifest=manifest, sealing_key=sealing_key(key), **options)


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
