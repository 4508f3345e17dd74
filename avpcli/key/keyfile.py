"""The key file: safetensors holding G's weights and the scramble secret, with metadata that describes the key.

Writing is owner-only and atomic; reading checks everything on the header before any memory is spent
on the tensors, and says in one line what is wrong (KeyFileError).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from avpcli import __version__
from avpcli.errors import KeyFileError
from avpcli.files import UnusableFile, open_regular_file
from avpcli.key.network import ARCHITECTURE, NORMS, KeyGenerator
from avpcli.key.presets import KeyPreset
from avpcli.scramble import SCHEMES as SCRAMBLE_SCHEMES, SECRET_BYTES, Scramble

KEY_FORMAT = "avp-key"
KEY_FORMAT_VERSION = "2"
# Format 1 keys (a plain G, no scramble) still load, encrypt and decrypt.
READABLE_FORMAT_VERSIONS = ("1", "2")
NO_SCRAMBLE = "none"
SCRAMBLE_SECRET_TENSOR = "scramble.secret"


def key_metadata(preset_name: str, preset: KeyPreset, seed: int, training_data: str,
                 scheme: str | None) -> dict[str, str]:
    """The metadata a newly trained key's file carries: its format, architecture and how it was made.

    `seed_kdf` names the function the seed went through (SeedKdf.name); a key of a preset without one
    (the fast derivation of keys made before it) carries no such field, as those keys did.
    """
    metadata = {
        "format": KEY_FORMAT,
        "format_version": KEY_FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "ngf": str(preset.ngf),
        "blocks": str(preset.blocks),
        "norm": preset.norm,
        "image_size": str(preset.crop_size),
        "seed": str(seed),
        "training_data": training_data,
        "steps": str(preset.steps),
        "preset": preset_name,
        "scramble": scheme or NO_SCRAMBLE,
        "avp_version": __version__,
    }
    if preset.seed_kdf is not None:
        metadata["seed_kdf"] = preset.seed_kdf.name
    return metadata


def key_fingerprint(state_dict: Mapping[str, torch.Tensor], purpose: str = "") -> str:
    """sha256 (hex) over the sorted tensor names, dtypes, shapes and bytes: names a key without its seed.

    With a `purpose`, the hash starts with it: a secret of the key's own for that purpose, which only
    a holder of the key can compute and which the public fingerprint does not give away.
    """
    digest = hashlib.sha256(f"avp-key-derived:{purpose}\0".encode() if purpose else b"")
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def key_tensors(generator: KeyGenerator, scramble: Scramble | None) -> dict[str, torch.Tensor]:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in generator.state_dict().items()}
    if scramble is not None:
        tensors[SCRAMBLE_SECRET_TENSOR] = scramble.secret.detach().cpu().contiguous()
    return tensors


def _canonical_header(payload: bytes) -> bytes:
    """The same safetensors bytes with the metadata in sorted order.

    safetensors writes its metadata map in a random order, so two saves of one key would differ;
    a key must be byte-identical per seed. Same entries, so the header keeps its length.
    """
    length = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8:8 + length])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items())), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # never happens with the same entries; keep the library's bytes then
        return payload
    return payload[:8] + text + b" " * (length - len(text)) + payload[8 + length:]


def write_key_file(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str], path: str | os.PathLike[str],
                   overwrite: bool = False) -> Path:
    """Write a key's tensors as safetensors with its metadata: owner-only (0600), fsynced, atomically renamed.

    Raises KeyFileError if the file exists and overwrite is False, or if it cannot be written.
    """
    from safetensors.torch import save

    target = Path(path)
    if target.exists() and not overwrite:
        raise KeyFileError(f"key file already exists: {target} (refusing to overwrite a secret)")
    payload = _canonical_header(save(tensors, metadata=dict(metadata)))
    folder = target.parent if str(target.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise KeyFileError(f"cannot write key file {target}: {error.strerror}") from None
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temporary, target)
        else:
            try:
                os.link(temporary, target)  # fails if someone created the file meanwhile
            except FileExistsError:
                raise KeyFileError(f"key file already exists: {target} (refusing to overwrite a secret)") from None
            os.unlink(temporary)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise KeyFileError(f"cannot write key file {target}: {error.strerror}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target



# Values (parameters and buffers) a key may hold: the paper preset's hold 11.39 M. A key file whose
# metadata declares more is refused before anything is allocated for it.
MAX_KEY_VALUES = 50_000_000
# The header of a real key is a few KB (the paper preset's: about 12 KB).
MAX_HEADER_BYTES = 1 << 20
MAX_KEY_BYTES = 8 + MAX_HEADER_BYTES + 4 * MAX_KEY_VALUES
# The dtypes a key holds, as safetensors names them, and their sizes in bytes.
_DTYPE_NAMES = {torch.float32: ("F32", 4), torch.int64: ("I64", 8), torch.uint8: ("U8", 1)}


def _metadata_int(metadata: Mapping[str, str], field: str, path: Path, largest: int, smallest: int = 1) -> int:
    try:
        value = int(metadata[field])
    except (KeyError, ValueError):
        raise KeyFileError(f"{path} is not a usable avp key: metadata field {field!r} is missing or not a number") from None
    if not smallest <= value <= largest:  # bounds first: a forged ngf must not make us build a huge network
        raise KeyFileError(f"{path} is not a usable avp key: metadata field {field!r} = {value} is out of range")
    return value


def expected_key_tensors(ngf: int, blocks: int, norm: str, scrambles: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name → (shape, safetensors dtype) of every tensor a key of this architecture holds.

    Built on the meta device, so it costs no memory whatever the sizes: a key's metadata is checked
    against its tensors before anything is allocated for them.
    """
    with torch.device("meta"):
        generator = KeyGenerator(ngf, blocks, norm)
    expected = {name: (tuple(tensor.shape), _DTYPE_NAMES[tensor.dtype][0])
                for name, tensor in generator.state_dict().items()}
    if scrambles:
        expected[SCRAMBLE_SECRET_TENSOR] = ((SECRET_BYTES,), "U8")
    return expected


def _open_key_file(source: Path) -> tuple[BinaryIO, int]:
    """The key file opened for reading, and its size; KeyFileError unless it is a regular file of a key's size.

    Opened without blocking and checked on the descriptor (avpcli.files), so that a pipe or a device
    (in keys/, say) is refused instead of hanging or filling memory.
    """
    try:
        stream, status = open_regular_file(source)
    except UnusableFile as unusable:
        if unusable.missing:
            raise KeyFileError(f"key file not found: {source}") from None
        if unusable.not_regular:
            raise KeyFileError(f"{source} is not a regular file (a folder, pipe or device), "
                               "so it is not a key") from None
        # The system's own words ("Permission denied", "Too many levels of symbolic links"), as for a failed read.
        raise KeyFileError(f"cannot read key file {source}: {unusable.strerror}") from None
    if status.st_size > MAX_KEY_BYTES:
        stream.close()
        raise KeyFileError(f"{source} is too large to be an avp key ({status.st_size:,} bytes; "
                           f"a key has at most {MAX_KEY_BYTES:,})")
    return stream, status.st_size


def _read_header(stream: BinaryIO, size: int, source: Path) -> tuple[bytes, dict]:
    """The safetensors header's bytes (with their 8-byte length) and its JSON; KeyFileError if it is not one."""
    not_safetensors = KeyFileError(f"{source} is not a safetensors file (corrupt, truncated or another kind of file)")
    prefix = stream.read(8)
    length = int.from_bytes(prefix, "little")
    if len(prefix) < 8 or length > min(MAX_HEADER_BYTES, size - 8):
        raise not_safetensors
    text = stream.read(length)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        raise not_safetensors from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if (not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values())
            or not all(isinstance(entry, dict) for name, entry in header.items() if name != "__metadata__")):
        raise not_safetensors
    return prefix + text, header


def _check_metadata(metadata: Mapping[str, str], source: Path) -> tuple[bool, int, int, str]:
    """(scrambles, ngf, blocks, norm) from a key's metadata; KeyFileError if it is not an avp key this avp reads."""
    if metadata.get("format") != KEY_FORMAT:
        raise KeyFileError(f"{source} is a safetensors file but not an avp key (no '{KEY_FORMAT}' metadata)")
    version = metadata.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise KeyFileError(f"{source} is an avp key of format version {version!r}; "
                           f"this avp ({__version__}) reads versions {', '.join(READABLE_FORMAT_VERSIONS)}")
    scheme = metadata.get("scramble", NO_SCRAMBLE) if version != "1" else NO_SCRAMBLE
    if scheme not in (NO_SCRAMBLE, *SCRAMBLE_SCHEMES):
        raise KeyFileError(f"{source} has a scramble this avp does not know: {scheme!r}")
    if metadata.get("architecture") != ARCHITECTURE:
        raise KeyFileError(f"{source} has unknown architecture {metadata.get('architecture')!r}")
    ngf = _metadata_int(metadata, "ngf", source, largest=512)
    blocks = _metadata_int(metadata, "blocks", source, largest=64, smallest=0)  # 0: no residual block
    norm = metadata.get("norm")
    if norm not in NORMS:
        raise KeyFileError(f"{source} has unknown norm {norm!r}")
    return scheme != NO_SCRAMBLE, ngf, blocks, norm


def _check_tensors(header: dict, expected: dict[str, tuple[tuple[int, ...], str]], data_bytes: int, source: Path,
                   architecture: str) -> None:
    """KeyFileError unless the header lists exactly the expected tensors with their shapes and dtypes,
    and the file holds exactly their bytes (`data_bytes`) after the header."""
    declared = {name: entry for name, entry in header.items() if name != "__metadata__"}
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise KeyFileError(f"{source} does not match its declared architecture ({architecture}): {what}")
    for name, (shape, dtype) in sorted(expected.items()):
        found_shape, found_dtype = declared[name].get("shape"), declared[name].get("dtype")
        if found_shape != list(shape) or found_dtype != dtype:
            shown = tuple(found_shape) if isinstance(found_shape, list) else found_shape
            raise KeyFileError(f"{source} is damaged: tensor {name} has shape {shown!r} {found_dtype}, "
                               f"expected {shape} {dtype}")
    widths = {dtype_name: width for dtype_name, width in _DTYPE_NAMES.values()}
    needed = sum(math.prod(shape) * widths[dtype] for shape, dtype in expected.values())
    if data_bytes != needed:
        raise KeyFileError(f"{source} is damaged: it holds {data_bytes:,} bytes of tensor data where its "
                           f"architecture needs {needed:,} (truncated or padded)")


def read_key_file(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                  ) -> tuple[KeyGenerator, dict[str, str], Scramble | None]:
    """(G, metadata, S or None) from a key file written by write_key_file, after checking format,
    architecture, tensor names, shapes and dtypes.

    Everything is checked on the header first, before the tensors are read or any memory is spent on
    them: the metadata, the architecture it describes (at most MAX_KEY_VALUES values), and
    every tensor's name, shape and dtype against it. Returns the generator frozen and in eval mode.
    Raises KeyFileError (one-line message) for a missing, unreadable, truncated, corrupt, foreign or
    oversized file, or one that is not a regular file.
    """
    from safetensors.torch import load

    source = Path(path)
    stream, size = _open_key_file(source)
    with stream:
        head, header = _read_header(stream, size, source)
        metadata = header.get("__metadata__", {})
        scrambles, ngf, blocks, norm = _check_metadata(metadata, source)
        architecture = f"ngf {ngf}, {blocks} blocks"
        expected = expected_key_tensors(ngf, blocks, norm, scrambles)
        values = sum(math.prod(shape) for shape, _ in expected.values())
        if values > MAX_KEY_VALUES:
            raise KeyFileError(f"{source} declares an architecture ({architecture}) whose tensors hold {values:,} "
                               f"values; an avp key holds at most {MAX_KEY_VALUES:,}")
        _check_tensors(header, expected, size - len(head), source, architecture)
        try:
            payload = head + stream.read(size - len(head))
        except OSError as error:
            raise KeyFileError(f"cannot read key file {source}: {error.strerror or error}") from None
    try:
        tensors = load(payload)
    except Exception:  # whatever the parser trips on (offsets, a file changed while read), it is not one of ours
        raise KeyFileError(f"{source} is not a safetensors file (corrupt, truncated or another kind of file)") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise KeyFileError(f"{source} is damaged: tensor {name} holds NaN or infinite values")
    scramble = (Scramble(bytes(tensors.pop(SCRAMBLE_SECRET_TENSOR).tolist()), metadata["scramble"]).to(device)
                if scrambles else None)
    with torch.device("meta"):  # the loaded tensors become the parameters: nothing is allocated twice
        generator = KeyGenerator(ngf, blocks, norm)
    generator.load_state_dict(tensors, assign=True)
    generator.to(device).freeze()
    return generator, dict(metadata), scramble
