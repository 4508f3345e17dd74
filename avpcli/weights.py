"""Find, download (checksummed, cached) and safely load the weight files that target models need.

Nothing here unpickles arbitrary objects: PyTorch files go through `torch.load(weights_only=True)`,
`.safetensors` through safetensors, ONNX through onnx. Every failure becomes a `TargetError` (or its
subclass `WeightsUnavailableError`) whose message says which file is expected and where it comes from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from avpcli.errors import TargetError, WeightsUnavailableError

# urllib.request.urlopen's shape: (url, timeout=...) -> a readable response. Tests pass their own.
Opener = Callable[..., Any]

DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteWeights:
    """A weights file avp may download for the user.

    url: where the file (or the zip archive holding it) is published.
    filename: the name it is cached under (facenet-pytorch's own name where it has one, so that
        both share the cache).
    sha256: checksum of what `url` serves; None means avp knows no pinned checksum and will not
        download the file itself (a cached copy or `--weights PATH` still works).
    archive_member: for a zip archive, the member to extract into the cache as `filename`.
    licence: the terms the user accepts by using the file.
    """

    url: str
    filename: str
    sha256: str | None
    archive_member: str | None = None
    licence: str = ""


def user_cache_home() -> Path:
    """$XDG_CACHE_HOME, or ~/.cache where it is unset, empty or relative (as the XDG spec says: a
    relative value would put the cache wherever the command happens to run)."""
    configured = os.environ.get("XDG_CACHE_HOME", "")
    if configured and Path(configured).expanduser().is_absolute():
        return Path(configured).expanduser()
    return Path.home() / ".cache"


def default_cache_dir() -> Path:
    """$TORCH_HOME/checkpoints (default ~/.cache/torch/checkpoints), where facenet-pytorch caches too
    (torch takes an empty or relative $XDG_CACHE_HOME literally, avp does not: only then do they differ)."""
    torch_home = os.environ.get("TORCH_HOME")
    return (Path(torch_home).expanduser() if torch_home else user_cache_home() / "torch") / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _offline_message(remote: RemoteWeights, target: str, reason: str) -> str:
    return (
        f"{target}: cannot download {remote.url} ({reason}). Download it yourself "
        f"on a machine with internet access and pass --weights PATH"
        + (f", or put it at {default_cache_dir() / remote.filename}" if remote.archive_member is None else "")
        + "."
    )


def fetch_weights(
    remote: RemoteWeights,
    target: str,
    cache_dir: Path | None = None,
    opener: Opener | None = None,
) -> Path:
    """The cached file for `remote`, downloading (and checking) it first if it is not cached.

    A cached file is trusted as is (it was checked when it was written, or the user put it there);
    a download is written to a temporary file, checked against `remote.sha256` and only then moved
    into place, so an interrupted or tampered download never becomes a cache hit.
    """
    cache_dir = cache_dir or default_cache_dir()
    cached = cache_dir / remote.filename
    if cached.is_file():
        return cached
    if remote.sha256 is None:
        raise WeightsUnavailableError(
            f"{target}: weights not found at {cached}, and avp knows no checksum for {remote.url}, "
            "so it does not download it itself. Download it, check it, and pass --weights PATH."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    opener = opener or urllib.request.urlopen
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as scratch:
        downloaded = Path(scratch) / "download"
        try:
            with opener(remote.url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(downloaded, "wb") as out:
                shutil.copyfileobj(response, out, _CHUNK)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise WeightsUnavailableError(_offline_message(remote, target, str(error))) from None
        actual = sha256_of(downloaded)
        if actual != remote.sha256:
            raise WeightsUnavailableError(
                f"{target}: checksum mismatch for {remote.url}: expected sha256 {remote.sha256}, got {actual}. "
                "The file was not kept; download it yourself and pass --weights PATH if you trust it."
            )
        if remote.archive_member is not None:
            try:
                with zipfile.ZipFile(downloaded) as archive, archive.open(remote.archive_member) as member:
                    with open(Path(scratch) / "member", "wb") as out:
                        shutil.copyfileobj(member, out, _CHUNK)
            except (zipfile.BadZipFile, KeyError) as error:
                raise WeightsUnavailableError(f"{target}: {remote.url} does not hold {remote.archive_member}: {error}")
            downloaded = Path(scratch) / "member"
        os.replace(downloaded, cached)
    return cached


def resolve_weights(
    target: str,
    weights: Path | None,
    remote: RemoteWeights | None = None,
    known_paths: Iterable[Path] = (),
    how_to_get: str = "",
    cache_dir: Path | None = None,
    opener: Opener | None = None,
) -> Path:
    """The weights file to use: the user's `--weights`, else a known local path, else a download.

    Raises TargetError when the user's file is missing, and WeightsUnavailableError (a TargetError)
    when nothing is found and nothing can be downloaded; the message says what is expected.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TargetError(f"{target}: weights file {path} does not exist")
        return path
    for candidate in known_paths:
        if candidate.is_file():
            return candidate
    if remote is not None:
        return fetch_weights(remote, target, cache_dir=cache_dir, opener=opener)
    raise WeightsUnavailableError(f"{target} needs its weights: pass --weights PATH. {how_to_get}".strip())


def load_torch_file(path: Path, target: str) -> Any:
    """A .pt/.pth/.ckpt/.th file loaded with weights_only=True, or a .safetensors file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any parse failure is the user's file, said plainly
        raise TargetError(
            f"{target}: cannot read weights {path} as a tensors-only checkpoint "
            f"(weights_only=True or safetensors): {type(error).__name__}: {str(error)[:300]}"
        ) from None


def unwrap_state_dict(
    checkpoint: Any,
    target: str,
    containers: tuple[str, ...] = ("state_dict", "net_state_dict", "model_state_dict", "model"),
    prefixes: tuple[str, ...] = ("module.", "model."),
) -> dict[str, torch.Tensor]:
    """The plain state_dict inside a checkpoint: looks into the usual container keys and strips the
    usual wrapper prefixes (DataParallel's `module.`, Lightning's `model.`) when every key has them."""
    state = checkpoint
    for key in containers:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TargetError(f"{target}: the weights file holds no state_dict of tensors")
    state = dict(state)
    for prefix in prefixes:
        tensor_keys = [k for k in state if not k.endswith("num_batches_tracked")]
        if tensor_keys and all(k.startswith(prefix) for k in tensor_keys):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_state_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    target: str,
    source: Path | str,
    ignore_prefixes: tuple[str, ...] = (),
) -> nn.Module:
    """Load `state` strictly (except keys under `ignore_prefixes`, e.g. a training-only classifier
    head) and say which keys or shapes differ when the file is for another architecture."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} with other shapes (e.g. {'; '.join(wrong_shape[:2])})")
        raise TargetError(f"{target}: {source} does not fit this architecture: " + "; ".join(details))
    model.load_state_dict(state, strict=False)
    return model


def load_checkpoint_into(
    model: nn.Module,
    path: Path,
    target: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> nn.Module:
    """Read a checkpoint safely, unwrap its state_dict and load it strictly into `model`."""
    state = unwrap_state_dict(load_torch_file(path, target), target)
    return load_state_into(model, state, target, path, ignore_prefixes)
