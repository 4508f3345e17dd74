"""Option values the commands share: where keys live, --shard, own models' options, paths on stdin, and the
device and key files, loaded when a command runs (so that `avp --help` does not import torch)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from avpcli.cli.output import unprintable
from avpcli.errors import UsageError

NullOption = Annotated[bool, typer.Option("--null", "-0", help="End each output path with a NUL byte instead of a newline, and print names exactly as they are (for xargs -0; by default control characters and backslashes are escaped so that each path is one line). With - as the input, also read the input paths NUL-separated (for find -print0); with --json, only that.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object a line (NDJSON) per file as it finishes, instead of its output path: source, output, status, reason, skipped (done by an earlier run) and the rest of its manifest entry (for encrypt, the figures).")]
# images.MAX_PIXELS (a test holds them equal): a literal, so that `avp --help` does not import torch.
DEFAULT_MAX_PIXELS = 80_000_000
MaxPixelsOption = Annotated[int, typer.Option(min=1, help="Refuse an image whose header declares more pixels than this (it fails alone, before its pixels are decoded).")]
RayOption = Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Run on a Ray cluster (pip install \"avp\\[ray]\"): alone or 'local', one started on this machine for the run; 'auto' joins the running one (`ray start --head`, or $RAY_ADDRESS), or give its address host:port. Every worker must reach the output folder at the same path (README: More than one machine).")]
RayActorsOption = Annotated[Optional[int], typer.Option("--ray-actors", min=1, metavar="N", help="With --ray: how many Ray actors work, each with its own models (default: one per GPU of the cluster, else one per CPU).")]
PrecisionOption = Annotated[str, typer.Option(help="Model forwards during the attack: 'auto' (bf16 on CUDA and on CPUs with bf16 instructions, else fp32), 'bf16', 'fp16' (CUDA) or 'fp32'. The image, momentum, losses, stop decisions and every reported figure stay fp32.")]


def default_key_folder() -> Path:
    """Where keys go and are looked for: $AVP_KEYS or ./keys."""
    return Path(os.environ.get("AVP_KEYS", "keys"))


def parse_shard(shard: Optional[str]) -> tuple[int, int]:
    """--shard i/n (1-based), else torchrun's RANK / WORLD_SIZE, else the whole list."""
    if shard:
        try:
            index_text, count_text = shard.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise UsageError(f"--shard takes i/n, e.g. 2/8; got {shard!r}") from None
        if not 1 <= index <= count:
            raise UsageError(f"--shard {shard}: i must be between 1 and n")
        return index - 1, count
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return int(os.environ.get("RANK", "0")), world
    return 0, 1


def _numbers(text: str, separator: str, count: int, option: str, kind=float) -> tuple:
    try:
        values = tuple(kind(part) for part in text.split(separator))
    except ValueError:
        values = ()
    if len(values) != count:
        raise UsageError(f"{option} takes {count} numbers separated by '{separator}', got {text!r}")
    return values


def custom_options(target: str, input_size, mean, std, channels: str, loss: str):
    """The description of a user's own model (onnx:PATH / torchscript:PATH); None for registered targets."""
    from avpcli.targets import is_custom_reference

    if not is_custom_reference(target):
        if input_size or mean or std:
            raise UsageError("--input-size, --mean and --std describe your own model: use them with onnx:PATH or torchscript:PATH")
        return None
    from avpcli.targets.custom import CustomTargetOptions

    if input_size is None:
        raise UsageError(f"{target} needs --input-size HxW (and usually --mean/--std, --channels, --loss)")
    if channels not in ("rgb", "bgr") or loss not in ("embedding", "classifier"):
        raise UsageError("--channels is 'rgb' or 'bgr'; --loss is 'embedding' or 'classifier'")
    return CustomTargetOptions(
        input_size=_numbers(input_size.lower(), "x", 2, "--input-size", int),
        mean=_numbers(mean, ",", 3, "--mean") if mean else (0.0, 0.0, 0.0),
        std=_numbers(std, ",", 3, "--std") if std else (1.0, 1.0, 1.0),
        channel_order=channels,
        loss=loss,
    )


def resolve_device(device: str) -> str:
    """--device as a torch device ('auto' → CUDA where there is one); UsageError where it cannot be had."""
    from avpcli.engine import resolve_device as resolve

    return resolve(device)


# What --ray takes: 'local', 'auto', host:port (an IPv6 host in brackets) or a Ray client address.
_RAY_ADDRESS = re.compile(r"local|auto|ray://\S+|[^\s/]+:\d+")


def is_ray_address(value: str) -> bool:
    """Whether `value` is something --ray takes (else the argument after a bare --ray is an input or an option)."""
    return _RAY_ADDRESS.fullmatch(value) is not None


def with_ray_value(arguments: list[str]) -> list[str]:
    """The arguments with 'local' after each bare --ray (one not followed by an address): Typer has no option
    whose value may be left out, and `avp encrypt faces --ray` should start a cluster, not ask for a value."""
    given = list(arguments)
    completed: list[str] = []
    for index, argument in enumerate(given):
        completed.append(argument)
        if argument == "--":
            return completed + given[index + 1:]
        following = given[index + 1] if index + 1 < len(given) else None
        if argument == "--ray" and (following is None or not is_ray_address(following)):
            completed.append("local")
    return completed


def ray_address(address: Optional[str], actors: Optional[int]) -> Optional[str]:
    """--ray's address (None: a local run); UsageError for --ray-actors without --ray or an address --ray does not
    take (--ray=VALUE)."""
    if actors is not None and address is None:
        raise UsageError("--ray-actors goes with --ray")
    if address is not None and not is_ray_address(address):
        raise UsageError(f"--ray takes local, auto, HOST:PORT or ray://HOST:PORT, not {address!r}")
    return address


def reads_stdin(inputs: list[Path], null: bool, as_json: bool, out: Optional[Path]) -> bool:
    """Whether the inputs are `-` (paths on stdin); UsageError for what does not go together with it."""
    listed = Path("-") in inputs
    if listed and len(inputs) > 1:
        raise UsageError("- reads every input path from stdin: give it alone")
    if listed and out is None:
        raise UsageError("with - (input paths from stdin), give --out")
    if null and as_json and not listed:
        raise UsageError("--null and --json do not go together: the JSON lines hold every name safely")
    return listed


def stdin_paths(null: bool) -> list[Path]:
    """The paths on stdin, one a line or (null) NUL-separated and as they are; empty ones are ignored.
    Lines are read as line mode prints paths (output.printable; so `avp encrypt ... | avp decrypt -`
    works for any name): \\\\ is a backslash, \\n a newline, \\xNN a byte that is not UTF-8 (80-ff) or a
    control character, \\uNNNN a character. Names that are not UTF-8 keep their bytes (os.fsdecode)."""
    data = typer.get_binary_stream("stdin").read()
    if null:
        return [Path(os.fsdecode(name)) for name in data.split(b"\0") if name]
    return [Path(unprintable(os.fsdecode(line))) for line in data.split(b"\n") if line]
