"""How an encryption run treats files (FolderRun), and what it carries over from an earlier run into the
same folder: its noise seed, its names map, and the outputs it finished."""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from avpcli.engine import AttackSettings
from avpcli.errors import ImageError, UsageError
from avpcli.files import UnusableFile, open_regular_file, write_output
from avpcli.images import MAX_PIXELS, SourceImage, check_link_stays_inside, is_inside
from avpcli.inputs import AlignMode
from avpcli.jobs.folders import face_output_name, file_digest
from avpcli.jobs.sealing import container_kept, container_of
from avpcli.manifest import Manifest, differences, settings_without_seed


@dataclass
class FolderRun:
    """How an encryption run handles files; what is encrypted with what is the Encryptor's.

    inputs: files and folders (searched recursively, sorted); output: the folder written.
    align: "auto" aligns faces for face targets, "never" centre-crops; all_faces: every face found.
    noise_seed: of the initial noise; None takes the earlier run's (so a resumed run finishes exactly
        as an uninterrupted one would) or, for a new run, 63 random bits.
    overwrite: redo every output (by default a rerun skips what an earlier run finished).
    shard: (index, count), 0-based: this process does files index, index + count, ...
    aligned_output: where to also save each aligned original (what the target saw), for reports and
        the demo; off by default, since these are plaintext faces.
    anonymize: name outputs by random ids; the id → name map goes to names_map, by default beside
        key_path as <key>.names-<run>.json (owner-only), never into the output folder.
    follow_links: read files that an input folder holds as symbolic links to places outside it; by
        default each fails with its reason (a planted link must not make avp encrypt what it points to).
    listed: every input is one file, read from a list (`avp encrypt -`): one that is missing, no
        image, a folder, or inside the output folder fails alone instead of stopping the run.
    max_pixels: an image whose header declares more pixels fails alone before it is decoded.
    seal: also write each input file, whole and byte for byte, sealed under the key (jobs/sealing.py,
        docs/SEALING.md) beside its model ciphertexts, where it is not already at the target's input
        size; an image that decodes but cannot be the model's input (no face, too small, animated) is
        then sealed only. False (`--no-seal`): the model's ciphertexts alone, as avp 0.2 wrote them.
    """

    inputs: list[Path]
    output: Path
    align: AlignMode = "auto"
    all_faces: bool = False
    noise_seed: int | None = None
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    aligned_output: Path | None = None
    anonymize: bool = False
    names_map: Path | None = None
    key_path: Path | None = None
    follow_links: bool = False
    listed: bool = False
    max_pixels: int = MAX_PIXELS
    seal: bool = True


# Settings added since manifests were first written, with the value that leaves them off: recorded
# only when used, so that a run that does not use them resumes a folder an older avp started.
_RECORDED_WHEN_USED = {"start_side_weight": 0.0}


_STOP_RECORDED_WHEN_USED = {"max_start_side": None}


def settings_record(settings: AttackSettings) -> dict[str, Any]:
    record = asdict(settings)
    record["autocast_dtype"] = str(settings.autocast_dtype).replace("torch.", "") if settings.autocast_dtype else None
    for fields, values in ((record, _RECORDED_WHEN_USED), (record["stop"] or {}, _STOP_RECORDED_WHEN_USED)):
        for name, off in values.items():
            if fields.get(name, off) == off:
                fields.pop(name, None)
    return record


@dataclass
class ResumeState:
    """What a run carries over from the one before it in the same folder (if any)."""

    noise_seed: int
    run_id: str | None
    entries: dict[str, list[dict[str, Any]]]


def resume(run: FolderRun, manifest: Manifest, previous: Manifest | None) -> ResumeState:
    """Check that the earlier run in run.output (`previous`) used the same target, key and settings; carry it over."""
    if previous is None or run.overwrite:
        seed = run.noise_seed if run.noise_seed is not None else secrets.randbits(63)
        return ResumeState(seed, secrets.token_hex(4) if run.anonymize else None, {})
    earlier_seed = previous.settings.get("noise_seed")
    different = differences(manifest, previous)
    if run.noise_seed is not None and run.noise_seed != earlier_seed:
        different.append("--seed")
    if different == ["settings"] and ({**manifest.settings, "seal": None, "noise_seed": None}
                                      == {**previous.settings, "seal": None, "noise_seed": None}):
        sealed_before = previous.settings.get("seal") is True
        raise UsageError(f"{run.output} holds outputs of an earlier run {'with' if sealed_before else 'without'} "
                         f"sealed originals; {'drop' if sealed_before else 'add'} --no-seal to resume it, use "
                         "--overwrite to redo them, or choose another --out")
    if different:
        raise UsageError(f"{run.output} holds outputs of an earlier run with another {' and '.join(different)}; "
                         "use --overwrite to redo them, or choose another --out")
    seed = run.noise_seed if run.noise_seed is not None else (
        earlier_seed if isinstance(earlier_seed, int) else secrets.randbits(63))
    entries: dict[str, list[dict[str, Any]]] = {}
    for entry in previous.files:
        entries.setdefault(str(entry.get("source")), []).append(entry)
    return ResumeState(seed, previous.run or (secrets.token_hex(4) if run.anonymize else None), entries)


def _names_map_path(run: FolderRun, run_id: str) -> Path:
    if run.names_map is not None:
        path = run.names_map
    elif run.key_path is not None:
        path = run.key_path.with_name(f"{run.key_path.name}.names-{run_id}.json")
    else:
        raise UsageError("--anonymize needs somewhere outside the output folder for the names map: give --names-map")
    if is_inside(path, run.output):
        raise UsageError(f"the names map {path} would be inside the output folder {run.output}, which would "
                         "undo --anonymize; give --names-map elsewhere")
    return path


@dataclass
class NamesMap:
    """An anonymized run's id → name map (kept outside the output folder): the ids known by source label,
    and `blind`, the run's random value that its source tags are made with (so that two anonymized
    folders cannot be joined by their tags)."""

    path: Path
    ids: dict[str, Path]
    blind: str
    changed: bool = False

    def id_for(self, label: Path) -> Path:
        """The output name of a source label: its id, a new one for a label not seen before."""
        if str(label) not in self.ids:
            self.ids[str(label)] = Path(f"{secrets.token_hex(8)}.png")
            self.changed = True
        return self.ids[str(label)]

    def save(self, run: FolderRun) -> None:
        if self.changed or not self.path.exists():
            document = {"format": "avp-names", "output": str(run.output.resolve()), "tag_blind": self.blind,
                        "names": {str(output): source for source, output in sorted(self.ids.items())}}
            write_output(self.path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o600)
            self.changed = False


def read_names_map(run: FolderRun, resumed: ResumeState) -> NamesMap:
    """The run's names map (a new one for a new run); UsageError if an earlier run's cannot be found or read.
    A map of avp 0.2 gets a blind the first time it is read."""
    path = _names_map_path(run, resumed.run_id or secrets.token_hex(4))
    if not path.exists():
        if resumed.entries:
            raise UsageError(f"the names map of the earlier run in {run.output} is not at {path}; give it with "
                             "--names-map, or use --overwrite to start afresh")
        return NamesMap(path, {}, secrets.token_hex(32), changed=True)
    try:
        document = json.loads(path.read_text())
        ids = {str(source): Path(output) for output, source in dict(document["names"]).items()}
        blind = document.get("tag_blind")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"cannot read the names map {path}; use --overwrite to start afresh") from None
    if isinstance(blind, str) and blind:
        return NamesMap(path, ids, blind)
    return NamesMap(path, ids, secrets.token_hex(32), changed=True)


def finished_before(entries: list[dict[str, Any]], folder: Path, output: Path, source_tag: SourceTag | None,
                    sealing: bool = False) -> bool:
    """True if an earlier run wrote every output of one source's entries, under the names this run
    gives them (`output` and its _faceN siblings), from this very source file, and none has changed since.

    The names are compared, not trusted: a manifest naming any other file makes the source redone.
    So is a source whose bytes differ from those the entries were made from (another file of the same
    name, or the same file edited); entries of avp versions that did not record them count by name.
    """
    count = len(entries)
    if sealing and any("sealed" in entry for entry in entries):
        # Every entry of a sealed source names its container, which must be there as written.
        from_tag = all("source_tag" not in entry or (source_tag is not None and source_tag.matches(entry["source_tag"]))
                       for entry in entries)
        if not from_tag or not all(container_kept(entry, folder, container_of(output)) for entry in entries):
            return False
        if count == 1 and entries[0].get("status") == "sealed":
            return True  # sealed only
    for number, entry in enumerate(entries, 1):
        if entry.get("status") != "ok" or (entry.get("face", 1), entry.get("faces", 1)) != (number, count):
            return False
        if "source_tag" in entry and (source_tag is None or not source_tag.matches(entry["source_tag"])):
            return False
        name = str(face_output_name(output, number - 1))
        if entry.get("output") != name or file_digest(folder, name) != entry.get("sha256"):
            return False
    return count > 0


def linked_safely(source: SourceImage, run: FolderRun) -> bool:
    """Whether a source may be read to tag it: not a link out of its input folder (unless the run
    follows links); such a source is redone, and then fails with its reason."""
    if run.follow_links:
        return True
    try:
        check_link_stays_inside(source)
    except ImageError:
        return False
    return True


# Tags of avp 0.3 on: HMAC-SHA256 under the key's tag secret of the run's identity, then the file.
_RUN_TAG = "run:"


@dataclass(frozen=True)
class SourceTag:
    """A source file's tag as this run writes it (`value`), and as avp 0.2 wrote it (`plain`: the HMAC
    of the file alone, which linked one photo across every folder encrypted with one key)."""

    value: str
    plain: str

    def matches(self, tag: object) -> bool:
        """Whether a manifest's tag was made from these very bytes (by this run's identity, or by avp 0.2)."""
        if not isinstance(tag, str):
            return False
        return hmac.compare_digest(tag, self.value if tag.startswith(_RUN_TAG) else self.plain)


def run_identity(manifest: Manifest, blind: str | None = None) -> bytes:
    """What a run's source tags are bound to: its target, key and settings (the noise seed aside, so that
    shards and reruns of one run agree), and an anonymized run's blind (NamesMap)."""
    identity = {"target": manifest.target, "key": manifest.key_fingerprint,
                "settings": settings_without_seed(manifest.settings), "blind": blind}
    return json.dumps(identity, sort_keys=True, default=str).encode() + b"\0"


def source_file_tag(path: Path, secret: bytes, identity: bytes) -> SourceTag | None:
    """A source file's tag: HMAC-SHA256 under the key's tag secret of the run's identity (run_identity)
    and the file's bytes, so that one photo's tags differ across runs of other targets or settings and
    across anonymized runs; None if it is not a regular file that can be read (it then fails, with
    its reason, when it is loaded). Keyed: a plain hash in a manifest would let anyone holding a photo
    check whether it was encrypted. Opened without blocking and checked before reading: a FIFO must
    not hang the run."""
    bound = hmac.new(secret, identity, digestmod="sha256")
    plain = hmac.new(secret, digestmod="sha256")
    try:
        stream, _ = open_regular_file(path)
    except UnusableFile:
        return None
    with stream:
        try:
            for block in iter(lambda: stream.read(1 << 20), b""):
                bound.update(block)
                plain.update(block)
        except OSError:
            return None
    return SourceTag(_RUN_TAG + bound.hexdigest(), plain.hexdigest())


def earlier_entries(earlier: Manifest | None, manifest: Manifest, sources: set[str],
                     outputs: set[str]) -> list[dict[str, Any]]:
    """The entries of an earlier run into the same folder for sources that this run does not process.

    A later run with other inputs keeps them, so that the manifest lists every output in the folder
    and decrypt recovers them all; only if both runs used the same target, key and settings (every
    file of a manifest decrypts with its key). An entry whose output this run writes is left out:
    that file is being replaced.
    """
    if earlier is None or differences(manifest, earlier):
        return []
    return [entry for entry in earlier.files
            if str(entry.get("source")) not in sources and entry.get("output") not in outputs]
