"""The `avp` command line: parse, call the library, report. The only module that prints or exits.

stdout carries data only (paths, JSON) so that avp works in pipelines; progress, warnings and
errors go to stderr. Exit codes: 0 all done, 1 some files failed or a domain error, 2 usage error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from avpcli import __version__
from avpcli.errors import AvpError, ImageError, KeyFileError, UsageError

app = typer.Typer(
    name="avp",
    help="Hide what images show from people while a chosen model still recognizes them; the key gives them back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)


def default_key_folder() -> Path:
    """Where keys go and are looked for: $AVP_KEYS or ./keys."""
    return Path(os.environ.get("AVP_KEYS", "keys"))


# What must not reach a line of output as it is: the backslash (so that escapes read back unambiguously),
# control characters (a newline splits a path in two; ESC sequences drive the terminal), Unicode line
# and paragraph separators, bidirectional overrides, and the bytes of names that are not UTF-8
# (Python holds them as lone surrogates).
_UNPRINTABLE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_character(match: re.Match) -> str:
    character = match.group()
    code = ord(character)
    if character in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[character]
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` safe for one line of output: backslash as \\\\, newline as \\n, ESC as \\x1b, a non-UTF-8 byte
    as \\xNN, a line separator as \\u2028, ...; every other character (accents, scripts) as it is."""
    return _UNPRINTABLE.sub(_escape_character, text)


def _echo_path(path: Path, null: bool = False) -> None:
    """One output path on stdout: escaped on a line of its own, or (--null) as it is and ended by a NUL byte."""
    if null:
        typer.echo(os.fsencode(path) + b"\0", nl=False)
    else:
        typer.echo(printable(str(path)))


def _say(prefix: str, text: str, console: Console = stderr) -> None:
    """One stderr line: a styled prefix, then `text` as it is (markup, emoji codes, control characters escaped)."""
    # soft_wrap: one line whatever the terminal's width, so that scripts can grep it.
    console.print(f"{prefix} {escape(printable(text))}", highlight=False, soft_wrap=True, emoji=False)


def _say_failed(event, console: Console = stderr) -> None:
    _say("[red]failed:[/]", f"{event.source}: {event.reason}", console)


def _json_line(event) -> str:
    """A finished or failed file as one line of JSON: source, output (its path), status, reason, whether an
    earlier run had done it (skipped), then the rest of its manifest entry (an encryption's figures)."""
    entry = dict(event.entry or {})
    record = {"source": event.source, "output": str(event.output) if event.output is not None else None,
              "status": entry.pop("status", "failed" if event.kind == "failed" else "ok"),
              "reason": entry.pop("reason", None) or event.reason or None, "skipped": event.kind == "skipped"}
    record.update((field, value) for field, value in entry.items() if field not in ("source", "output"))
    # ensure_ascii: every name, whatever its bytes, reads back from a line that is safe on a terminal.
    return json.dumps(record, ensure_ascii=True)


class EventPrinter:
    """Reports a run's events as they come, and counts them: a failure as one stderr line, each finished
    file on stdout (`stdout`: "paths", one path a line or NUL-ended with `null`; "json", one JSON
    object a line; "none") and progress on a bar of `progress`, if given, described by `description`."""

    def __init__(self, stdout: Literal["paths", "json", "none"] = "none", null: bool = False,
                 progress: Progress | None = None, description: str = "") -> None:
        self.stdout, self.null, self.progress = stdout, null, progress
        self.console = progress.console if progress is not None else stderr
        self.task = progress.add_task(description, total=None) if progress is not None else None
        self.finished = self.failed = self.missed_bars = 0

    def __call__(self, event) -> None:
        if event.kind == "progress":
            if self.progress is not None:
                self.progress.update(self.task, completed=event.done, total=event.total)
            return
        if event.kind == "failed":
            self.failed += 1
            _say_failed(event, self.console)
        else:
            self.finished += 1
            self.missed_bars += event.missed_bars
            if self.stdout == "paths":
                _echo_path(event.output, self.null)
        if self.stdout == "json":
            typer.echo(_json_line(event))  # echo flushes: a reader downstream gets each file at once


def _fail(message: str, code: int = 1) -> typer.Exit:
    _say("[bold red]error:[/]", message)
    return typer.Exit(code)


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn avp's domain errors into a one-line message and an exit code (2 for usage errors)."""
    try:
        yield
    except UsageError as error:
        raise _fail(str(error), 2) from None
    except AvpError as error:
        raise _fail(str(error), 1) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    )


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avp {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """avp: adversarial visual privacy (AVP / AVIH, ICCV 2023)."""


# ------------------------------------------------------------------------------------------------
# keygen


@app.command()
def keygen(
    *,
    seed: Annotated[Optional[int], typer.Option(help="Training seed: THE SECRET. Default: 256 random bits from `secrets`.")] = None,
    preset: Annotated[str, typer.Option(help="Key recipe: 'default' (trains on 2 CPU cores in minutes), 'small' (the same on 32-pixel crops, for images of about 32×32 such as CIFAR-10), 'demo' (shorter, for avp demo) or 'paper' (ngf 64, 9 blocks; GPU).")] = "default",
    data: Annotated[Optional[Path], typer.Option(help="Train on this folder of images instead of the built-in procedural source.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the preset's).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Key file to write (default: keys/key-<fingerprint>.safetensors).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing key file.")] = False,
    scramble: Annotated[Optional[bool], typer.Option("--scramble/--no-scramble", help="Put a secret scramble (derived from the seed) in front of G, so that ciphertexts hide the image's layout and colour from every filter (docs/PRIVACY.md). Default: on, except for the 'paper' preset, which reproduces the paper's plain G.")] = None,
    per_size_scramble: Annotated[bool, typer.Option("--per-size-scramble", help="One scramble per image size, as avp 0.1's keys had, instead of one per image: (ciphertext, original) pairs of any images then teach an attacker the scramble of all others (docs/KEY.md). For reproducing old figures only.")] = False,
) -> None:
    """Train a key (the generator G that decrypts) and save it as safetensors, mode 0600. Prints its path."""
    from avpcli.key import KEY_PRESETS, new_seed, save_key, seed_is_guessable, train_key
    from avpcli.scramble import SCHEME as SCRAMBLE_SCHEME

    with domain_errors():
        if preset not in KEY_PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(KEY_PRESETS)}")
        if data is not None and not data.is_dir():
            raise UsageError(f"--data must be a folder of images: {data}")
        if seed is None:
            seed = new_seed()
        elif seed_is_guessable(seed):
            stderr.print("[yellow]warning:[/] this seed is small enough to be guessed by trying them all; "
                         "anyone who guesses it can train your key. Omit --seed for a random 256-bit one.")
        resolved_device = resolve_device(device)
        if scramble is None:
            scramble = preset != "paper"
        if per_size_scramble and not scramble:
            raise UsageError("--per-size-scramble needs a scramble (drop --no-scramble)")
        total_steps = steps or KEY_PRESETS[preset].steps
        with _progress() as progress:
            task = progress.add_task("training key", total=total_steps)
            trained = train_key(preset, seed, data_dir=data, steps=steps, device=resolved_device,
                                progress=lambda step, total, loss: progress.update(task, completed=step),
                                scramble=(SCRAMBLE_SCHEME if per_size_scramble else scramble))
        if out is None:
            out = default_key_folder() / f"key-{trained.fingerprint[:16]}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        path = save_key(trained, out, overwrite=overwrite)
    stderr.print(f"key trained in {trained.seconds:.0f} s; keep it secret: whoever holds it can decrypt")
    _echo_path(path)


# ------------------------------------------------------------------------------------------------
# targets


@app.command()
def targets(
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
) -> None:
    """List the supported target models: input size, channel order, loss and where the weights come from."""
    from avpcli.targets import get_spec, target_names

    specs = [get_spec(name) for name in target_names()]
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(spec) for spec in specs], indent=2))
        return
    for spec in specs:
        height, width = spec.input_size
        typer.echo(f"{spec.name}\t{height}x{width}\t{spec.channel_order}\t{spec.loss}\t{spec.description}\t{spec.weights}")


# ------------------------------------------------------------------------------------------------
# encrypt


def _parse_shard(shard: Optional[str]) -> tuple[int, int]:
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


def _custom_options(target: str, input_size, mean, std, channels: str, loss: str):
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


NullOption = Annotated[bool, typer.Option("--null", "-0", help="End each output path with a NUL byte instead of a newline, and print names exactly as they are (for xargs -0; by default control characters and backslashes are escaped so that each path is one line). With - as the input, also read the input paths NUL-separated (for find -print0); with --json, only that.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object a line (NDJSON) per file as it finishes, instead of its output path: source, output, status, reason, skipped (done by an earlier run) and the rest of its manifest entry (for encrypt, the figures).")]
PrecisionOption = Annotated[str, typer.Option(help="Model forwards during the attack: 'auto' (bf16 on CUDA and on CPUs with bf16 instructions, else fp32), 'bf16', 'fp16' (CUDA) or 'fp32'. The image, momentum, losses, stop decisions and every reported figure stay fp32.")]


def resolve_device(device: str) -> str:
    from avpcli.encryptor import resolve_device as resolve

    return resolve(device)


def _load_key_or_fail(path: Path, device: str):
    from avpcli.key import load_key

    return load_key(path, device=device)


def _reads_stdin(inputs: list[Path], null: bool, as_json: bool, out: Optional[Path]) -> bool:
    """Whether the inputs are `-` (paths on stdin); UsageError for what does not go together with it."""
    listed = Path("-") in inputs
    if listed and len(inputs) > 1:
        raise UsageError("- reads every input path from stdin: give it alone")
    if listed and out is None:
        raise UsageError("with - (input paths from stdin), give --out")
    if null and as_json and not listed:
        raise UsageError("--null and --json do not go together: the JSON lines hold every name safely")
    return listed


def _stdin_paths(null: bool) -> list[Path]:
    """The paths on stdin, one a line or (null) NUL-separated; empty ones are ignored. Names that are
    not UTF-8 keep their bytes (os.fsdecode)."""
    data = typer.get_binary_stream("stdin").read()
    return [Path(os.fsdecode(name)) for name in data.split(b"\0" if null else b"\n") if name]


@app.command()
def encrypt(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively, sorted); - reads image file paths from stdin, one a line (NUL-separated with --null), and needs --out: each that is missing or no image fails alone.")],
    *,
    target: Annotated[str, typer.Option(help="Target model name (see `avp targets`).")],
    key: Annotated[Path, typer.Option(help="Key file from `avp keygen`.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: <input>-encrypted beside the input; required with -).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="The target's weights file, where it needs one.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Most optimization steps per image (default: 800, the research code's K; most images stop far sooner).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images optimized together.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    no_align: Annotated[bool, typer.Option("--no-align", help="Centre-crop and resize instead of detecting and aligning faces.")] = False,
    all_faces: Annotated[bool, typer.Option(help="Encrypt every face found, not only the largest.")] = False,
    early_stop: Annotated[bool, typer.Option(help="Stop each image once its 8-bit version meets every bar.")] = True,
    recipe: Annotated[str, typer.Option(help="Embedding targets: 'tuned' (FACE_SETTINGS: start from the key's preimage, momentum 0.9, μ 0.3 with an SSIM term, leak weight 0.3, bars SSIM_e ≤ 0.02 and SSIM_d ≥ 0.95; for dlib also features that stop past the original's on their way from the start; docs/PRIVACY.md) or 'research' (the AVIH code's momentum 0.3, μ 0.2, λ 0.001 from noise, with the key's plain G as in the paper; a blur shows the face in its ciphertexts). Classifiers always use CLASSIFIER_SETTINGS (the tuned recipe with the research CIFAR step schedule, μ 10).")] = "tuned",
    key_weight: Annotated[Optional[float], typer.Option(help="μ: weight of the reconstruction loss through the key.")] = None,
    variance_weight: Annotated[Optional[float], typer.Option(help="λ: weight of the variance-consistency loss.")] = None,
    leak_weight: Annotated[Optional[float], typer.Option(help="ρ: weight of the leak term, the squared correlation of the ciphertext's low-pass, band-pass and edge map with the original's (what a filter and a contrast stretch would show).")] = None,
    max_lowpass_correlation: Annotated[Optional[float], typer.Option(help="Also require |low-pass correlation of x' and x| ≤ this before an image stops (docs/PRIVACY.md).")] = None,
    max_feature_distance: Annotated[Optional[float], typer.Option(help="Embedding targets: stop only once the target's output for x' is within this distance of x's (default 0.10; for dlib the tuned recipe also waits until it lies past x's on its way from the start, so that ciphertexts mixed with plain photos are found as often as their originals: docs/RESULTS.md). Lower costs steps.")] = None,
    stop_past_original: Annotated[Optional[bool], typer.Option("--stop-past-original/--stop-near-original", help="Embedding targets, tuned recipe: stop an image only once its features lie past the original's on their way from the start (default: the target's choice, on for dlib), so that ciphertexts mixed with plain photos are found as often as their originals; off stops sooner (dlib: a median of 30 steps instead of 40) and is enough when every image of a gallery is encrypted (docs/RESULTS.md).")] = None,
    smoothness: Annotated[str, typer.Option(help="'variance' (L_v, the paper's) or 'distance' (L_d, the ablation).")] = "variance",
    init: Annotated[Optional[str], typer.Option(help="Start from the key's 'preimage' (S⁻¹(x); the tuned default, noise for a key without scramble), from 'noise' (the research default) or from the 'original'.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the initial noise (default: random; recorded in the manifest).")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Process only part i of n of the sorted file list (i/n).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that already exist (default: skip them, resuming).")] = False,
    anonymize: Annotated[bool, typer.Option(help="Name outputs by random ids; the id → name map goes beside the key, not into --out.")] = False,
    names_map: Annotated[Optional[Path], typer.Option(help="With --anonymize: where to write the id → name map (default: <key>.names-<run>.json).")] = None,
    as_json: JsonOption = False,
    null: NullOption = False,
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Encrypt files that an input folder holds as symbolic links to places outside it (default: each fails with its reason).")] = False,
    precision: PrecisionOption = "auto",
    compile_models: Annotated[bool, typer.Option("--compile", help="torch.compile the target and key (CUDA; slow start, faster steps).")] = False,
    input_size: Annotated[Optional[str], typer.Option(help="Own models (onnx:/torchscript:): input HxW, e.g. 112x112.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Own models: per-channel mean on the [0,1] scale, in the model's channel order, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Own models: per-channel std on the [0,1] scale, e.g. 0.5,0.5,0.5.")] = None,
    channels: Annotated[str, typer.Option(help="Own models: channel order 'rgb' or 'bgr'.")] = "rgb",
    loss: Annotated[str, typer.Option(help="Own models: 'embedding' (feature vector) or 'classifier' (logits).")] = "embedding",
) -> None:
    """Encrypt images against a target: writes 8-bit PNGs and avp-manifest.json; prints one path per output."""
    from avpcli.encryptor import NO_SCRAMBLE_WARNING, Encryptor

    with domain_errors():
        listed = _reads_stdin(inputs, null, as_json, out)
        options = _custom_options(target, input_size, mean, std, channels, loss)
        shard_index = _parse_shard(shard)
        output = out if out is not None else inputs[0].with_name(inputs[0].stem + "-encrypted")
        encryptor = Encryptor(
            target, key, recipe=recipe, weights=weights, target_options=options, device=device, precision=precision,
            compile=compile_models, batch_size=batch_size, early_stop=early_stop,
            max_lowpass_correlation=max_lowpass_correlation, max_feature_distance=max_feature_distance,
            stop_past_original=stop_past_original, smoothness=smoothness, initialization=init,
            iterations=iterations, key_weight=key_weight, variance_weight=variance_weight, leak_weight=leak_weight)
        if recipe == "tuned" and not encryptor.key_scrambles:
            stderr.print(f"[yellow]warning:[/] {NO_SCRAMBLE_WARNING}", highlight=False)
        # Read once the options are known to be good: a usage error does not wait for the writer upstream.
        paths = _stdin_paths(null) if listed else inputs
        with _progress() as progress:
            # What this run did; the manifest also lists files of earlier runs into the same folder.
            printer = EventPrinter("json" if as_json else "paths", null, progress, f"encrypting for {target}")
            encryptor.encrypt_folder(
                paths, output, printer, align="never" if no_align else "auto", all_faces=all_faces, noise_seed=seed,
                overwrite=overwrite, shard=shard_index, anonymize=anonymize, names_map=names_map, key_path=key,
                follow_links=follow_links, listed=listed)
    if printer.missed_bars:
        stderr.print(f"[yellow]note:[/] {printer.missed_bars} image(s) did not meet every quality bar within the "
                     f"iterations allowed; their figures are in the manifest")
    _say(f"{printer.finished} encrypted, {printer.failed} failed ->", str(output))
    if printer.failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------
# decrypt


@app.command()
def decrypt(
    inputs: Annotated[list[Path], typer.Argument(help="A folder written by `avp encrypt` (with its avp-manifest.json), or ciphertext PNG files, decrypted one by one at their own size (they need --key and --out; one that a manifest beside it lists is held to that manifest); - reads the files' paths from stdin, one a line (NUL-separated with --null).")],
    *,
    key: Annotated[Optional[Path], typer.Option(help="Key file (default for a folder: the key in keys/ whose fingerprint the manifest names; required for files).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default for a folder: <folder>-decrypted beside it; required for files).")] = None,
    force: Annotated[bool, typer.Option(help="Decrypt even with a key whose fingerprint differs from the manifest's.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images decrypted together.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that already exist (default: keep those an earlier run with this key finished, resuming).")] = False,
    as_json: JsonOption = False,
    null: NullOption = False,
) -> None:
    """Decrypt a folder or ciphertext files with the key: writes the images as PNGs and avp-manifest.json; prints one path per output."""
    from avpcli.jobs import DecryptFilesJob, DecryptJob, decrypt_files, decrypt_folder, uses_scramble
    from avpcli.key import find_key
    from avpcli.manifest import read_manifest

    with domain_errors():
        listed = _reads_stdin(inputs, null, as_json, out)
        folder = None if listed or len(inputs) != 1 or not inputs[0].is_dir() else inputs[0]
        if folder is None:
            _check_ciphertext_files(inputs, listed, key, out)
        resolved_device = resolve_device(device)
        printer = EventPrinter("json" if as_json else "paths", null)
        if folder is None:
            loaded = _load_key_or_fail(key, resolved_device)
            files = _stdin_paths(null) if listed else inputs
            decrypt_files(DecryptFilesJob(files=files, output=out, key=loaded, batch_size=batch_size,
                                          device=resolved_device, overwrite=overwrite, force=force), printer)
        else:
            manifest = read_manifest(folder)
            if key is not None:
                loaded = _load_key_or_fail(key, resolved_device)
                if loaded.fingerprint != manifest.key_fingerprint:
                    if not force:
                        raise KeyFileError(
                            f"{key} is not the key these images were encrypted with (fingerprint "
                            f"{loaded.fingerprint[:16]}… vs {manifest.key_fingerprint[:16]}… in the manifest); "
                            "use --force to decrypt anyway")
                    stderr.print("[yellow]warning:[/] decrypting with a key that does not match the manifest")
            else:
                loaded = find_key(manifest.key_fingerprint, [default_key_folder()], resolved_device,
                                  on_unusable=lambda reason: _say("[yellow]warning:[/]", f"skipped: {reason}"))
            output = out if out is not None else folder.with_name(folder.name + "-decrypted")
            job = DecryptJob(encrypted=folder, output=output,
                             key=loaded.model_for(scramble=uses_scramble(loaded, manifest)),
                             key_fingerprint=loaded.fingerprint, batch_size=batch_size, device=resolved_device,
                             manifest=manifest, overwrite=overwrite)
            decrypt_folder(job, printer)
    if printer.failed:
        raise typer.Exit(1)


def _check_ciphertext_files(inputs: list[Path], listed: bool, key: Optional[Path], out: Optional[Path]) -> None:
    """UsageError for what decrypting files one by one cannot do without."""
    if not listed:
        for given in inputs:
            if given.is_dir():
                raise UsageError(f"{given} is a folder: give one folder written by `avp encrypt`, or ciphertext files")
            if not given.exists() and not given.is_symlink():
                raise UsageError(f"input not found: {given}")
    if key is None:
        raise UsageError("give --key to decrypt files: only a folder's manifest names the key to look for")
    if out is None:
        raise UsageError("give --out: the folder where the decrypted files go")


# ------------------------------------------------------------------------------------------------
# demo


@app.command()
def demo(
    *,
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs.")] = Path("avp-demo"),
    images: Annotated[Optional[Path], typer.Option(help="Your own folder of face photos (default: the shipped public-domain samples).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Offline round trip on shipped photos: key → encrypt against dlib → decrypt; prints the contact sheet's path."""
    from avpcli.demo import SAMPLES, demo_key_path, run_demo

    with domain_errors():
        resolved_device = resolve_device(device)
        key_path = demo_key_path()
        if not key_path.exists():
            _say("training the demo key", f"(once; cached at {key_path})")
        with _progress() as progress:
            training = progress.add_task("training key", total=None, visible=not key_path.exists())
            printer = EventPrinter(progress=progress, description="encrypting for dlib")
            result = run_demo(out, images or SAMPLES, resolved_device, key_path,
                              on_training_step=lambda step, total: progress.update(training, completed=step, total=total),
                              on_event=printer)
    stderr.print(demo_table(result.rows))
    stderr.print(f"done in {result.seconds:.0f} s; original | encrypted | encrypted, blurred and contrast-stretched "
                 "| decrypted:")
    if result.contact_sheet is not None:
        _echo_path(result.contact_sheet)
    if printer.failed:
        raise typer.Exit(1)


def demo_table(rows: list[dict]) -> Table:
    """The demo's figures per image, in 80 columns without cutting a word: one-word headers explained
    in the caption, figures that never wrap, and a name that folds (only a long one) rather than end
    in an ellipsis. A file that failed shows its status; its reason is on the failure's own line."""
    table = Table(title="avp demo: dlib target, figures of the PNGs as written", title_justify="left",
                  caption="distance < 0.6: the same person; SSIM enc and blur corr low: hidden; "
                          "SSIM dec high: recovered", caption_justify="left")
    table.add_column("image", overflow="fold")
    table.add_column("status", no_wrap=True)
    for header in ("distance", "SSIM enc", "blur corr", "SSIM dec", "steps"):
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        # Text, not markup: a file name with [brackets] is shown as it is.
        name = Text(printable(str(row["source"])))
        if row["status"] == "ok":
            table.add_row(name, "ok", f"{row['feature_distance']:.3f}", f"{row['ssim_encrypted']:.3f}",
                          f"{row['lowpass_correlation']:+.2f}", f"{row['ssim_decrypted']:.3f}", str(row["iterations"]))
        else:
            table.add_row(name, Text(printable(str(row["status"]))), "", "", "", "", "")
    return table


# ------------------------------------------------------------------------------------------------
# evaluate

evaluate_app = typer.Typer(
    help="The paper's protocol and security analyses; each writes JSON, a markdown table and PNGs into "
         "a report folder and prints the markdown report's path.",
    no_args_is_help=True,
)
app.add_typer(evaluate_app, name="evaluate")

TargetOption = Annotated[str, typer.Option(help="Target model name (see `avp targets`).")]
KeyOption = Annotated[Path, typer.Option(help="Key file the images are (or will be) encrypted with.")]
WeightsOption = Annotated[Optional[Path], typer.Option(help="The target's weights file, where it needs one.")]
ReportOption = Annotated[Path, typer.Option("--out", help="Report folder.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
IterationsOption = Annotated[Optional[int], typer.Option(help="Most optimization steps per image (default: avp encrypt's, 800; most images stop far sooner).")]
WorkOption = Annotated[Optional[Path], typer.Option(
    help="Where the selection, its ciphertexts and aligned originals go (default: --out); ciphertexts "
         "already there are reused.")]
RecipeOption = Annotated[str, typer.Option(help="How the images are encrypted: 'tuned' or 'research' (see `avp encrypt --recipe`).")]
OriginalsArgument = Annotated[Path, typer.Argument(help="The folder that was encrypted, or its aligned originals.")]
EncryptedArgument = Annotated[Path, typer.Argument(help="The folder `avp encrypt` wrote (with its manifest).")]


def _encryptor(target: str, key: Path, weights: Optional[Path], device: str, iterations: Optional[int],
               precision: str = "auto", recipe: str = "tuned"):
    """The Encryptor `avp encrypt` would build, for analyses that encrypt what they need."""
    from avpcli.encryptor import Encryptor

    return Encryptor(target, key, recipe=recipe, weights=weights, device=device, precision=precision,
                     iterations=iterations)


def _read_pairs(originals: Path, encrypted: Path, target: str, device: str):
    """The resolved device and the (original, ciphertext) pairs of an encrypted folder."""
    from avpcli.report import read_pairs
    from avpcli.targets import get_spec

    resolved = resolve_device(device)
    return resolved, read_pairs(originals, encrypted, get_spec(target), resolved)


def _finish(report, out: Path) -> None:
    _echo_path(report.write(out))


@evaluate_app.command("quality")
def evaluate_quality(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    weights: WeightsOption = None,
    wrong_key: Annotated[Optional[Path], typer.Option(help="Another key, for the contact sheet's last column.")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Table 1: SSIM_e, SSIM_d and feature match per image and summarized, plus a contact sheet."""
    from avpcli.report import quality_report
    from avpcli.targets import load_target

    with domain_errors():
        resolved, pairs = _read_pairs(originals, encrypted, target, device)
        other = _load_key_or_fail(wrong_key, resolved).model if wrong_key else None
        target_model = load_target(target, weights).to(resolved)
        report = quality_report(pairs, target_model, target_model.spec,
                                _load_key_or_fail(key, resolved).model, other)
        _finish(report, out)


@evaluate_app.command("identification")
def evaluate_identification(
    identities: Annotated[Path, typer.Argument(help="One sub-folder of images per person (LFW layout).")],
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    weights: WeightsOption = None,
    min_images: Annotated[int, typer.Option(help="Probe identities have more than this many images (paper: 12).")] = 12,
    turns: Annotated[Optional[int], typer.Option(help="Encrypted turns per probe identity (default: every image).")] = None,
    gallery_plain: Annotated[bool, typer.Option("--gallery-plain", help="Skip AVP-ALL (do not encrypt the gallery).")] = False,
    gallery_size: Annotated[Optional[int], typer.Option("--gallery", help="Use only the first N gallery images (sorted by identity and file) to save time; the report states N (default: all).")] = None,
    iterations: IterationsOption = None,
    recipe: RecipeOption = "tuned",
    precision: PrecisionOption = "auto",
    work: WorkOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Table 2: identification accuracy for Original, AVP-ONE and AVP-ALL (paper §4.1); encrypts under --out."""
    from avpcli.report import identification_report, split_identities

    with domain_errors():
        probes, gallery = split_identities(identities, min_images)
        if gallery_size is not None:
            if gallery_size < 1:
                raise UsageError("--gallery must be at least 1")
            gallery = gallery[:gallery_size]
        encryptor = _encryptor(target, key, weights, device, iterations, precision, recipe)
        with _progress() as progress:
            report = identification_report(probes, gallery, encryptor, work or out, turns, not gallery_plain,
                                           EventPrinter(progress=progress, description=f"encrypting for {target}"))
        _finish(report, out)


@evaluate_app.command("classification")
def evaluate_classification(
    dataset: Annotated[Path, typer.Argument(help="One sub-folder per class; labels follow the sorted folder names.")],
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    weights: WeightsOption = None,
    per_class: Annotated[Optional[int], typer.Option(help="Images per class (default: all).")] = None,
    iterations: IterationsOption = None,
    recipe: RecipeOption = "tuned",
    precision: PrecisionOption = "auto",
    work: WorkOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Table 4: top-1 accuracy on originals vs ciphertexts; encrypts under --out (a rerun resumes)."""
    from avpcli.report import classification_report

    with domain_errors():
        encryptor = _encryptor(target, key, weights, device, iterations, precision, recipe)
        with _progress() as progress:
            report = classification_report(dataset, encryptor, work or out, per_class,
                                           EventPrinter(progress=progress, description=f"encrypting for {target}"))
        _finish(report, out)


@evaluate_app.command("cross-key")
def evaluate_cross_key(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    key: KeyOption,
    other_key: Annotated[list[Path], typer.Option(help="A key of another seed (repeat the option for more).")],
    out: ReportOption,
    device: DeviceOption = "auto",
) -> None:
    """Fig. 5: SSIM of decryptions with keys of other seeds beside the right key's."""
    from avpcli.report import cross_key_report

    with domain_errors():
        resolved, pairs = _read_pairs(originals, encrypted, target, device)
        others = {path.stem: _load_key_or_fail(path, resolved).model for path in other_key}
        _finish(cross_key_report(pairs, _load_key_or_fail(key, resolved).model, others), out)


@evaluate_app.command("attack")
def evaluate_attack(
    originals: Annotated[Path, typer.Argument(help="The folder that was encrypted with --key, or its aligned originals.")],
    encrypted: Annotated[Path, typer.Argument(help="Its ciphertexts (with manifest): the attacker's training pairs.")],
    *,
    target: TargetOption,
    key: KeyOption,
    other_key: Annotated[Path, typer.Option(help="Key B: the held-out originals are encrypted with it too.")],
    out: ReportOption,
    weights: WeightsOption = None,
    held_out: Annotated[int, typer.Option(help="Pairs kept out of training (the last ones in file order).")] = 2,
    pairs_count: Annotated[Optional[int], typer.Option("--pairs", help="Train on the first N of the other pairs (default: all of them).")] = None,
    steps: Annotated[int, typer.Option(help="Attacker training steps.")] = 200,
    iterations: IterationsOption = None,
    recipe: RecipeOption = "tuned",
    precision: PrecisionOption = "auto",
    device: DeviceOption = "auto",
) -> None:
    """Fig. 6: train a key-shaped generator on key-A pairs; SSIM on held-out key-A and on key-B ciphertexts."""
    from avpcli.report import attack_report, encrypt_selection, read_pairs

    with domain_errors():
        encryptor_b = _encryptor(target, other_key, weights, device, iterations, precision, recipe)
        pairs = read_pairs(originals, encrypted, encryptor_b.spec, encryptor_b.device)
        training, testing = pairs.split(held_out, pairs_count)
        held_out_dir = out / "held-out-aligned"
        from avpcli.images import save_png

        files = {}
        for name, image in zip(testing.names, testing.originals):
            save_png(image, held_out_dir / name)
            files[name] = held_out_dir / name
        with _progress() as progress:
            other_pairs = encrypt_selection(files, out / "key-b", encryptor_b,
                                            EventPrinter(progress=progress, description="encrypting with key B"))
            training_task = progress.add_task("training the attacker", total=steps)
            report = attack_report(training, testing, other_pairs, _load_key_or_fail(key, encryptor_b.device).model,
                                   steps=steps, progress=lambda step, total: progress.update(training_task, completed=step))
        _finish(report, out)


@evaluate_app.command("privacy")
def evaluate_privacy(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    gallery: Annotated[Optional[Path], typer.Option(help="Photos in one sub-folder per identity (LFW layout), at least 300 identities, including the originals' own (other) photos: the observer identifies every filtered ciphertext among them. Without it, no observer.")] = None,
    observer: Annotated[Optional[str], typer.Option(help="The second recognizer (default: mobilefacenet-foamliu when the target is dlib, else dlib).")] = None,
    observer_weights: Annotated[Optional[Path], typer.Option(help="The observer's weights file, where it needs one.")] = None,
    max_images: Annotated[Optional[int], typer.Option(help="Use only the first N ciphertexts (manifest order).")] = None,
    detect: Annotated[bool, typer.Option(help="Run MTCNN on every filtered ciphertext and original (detection rate).")] = True,
    device: DeviceOption = "auto",
) -> None:
    """What filters, a face detector and a second recognizer get out of ciphertexts, beside the leak correlations.

    An original's identity comes from its file name (LFW style Name_NNNN.jpg) or its folder's name."""
    from avpcli.images import contained_path
    from avpcli.report import Observer, default_observer, fit_observer_transform, load_gallery, privacy_report
    from avpcli.targets import get_spec, load_target

    with domain_errors():
        if max_images is not None and max_images < 1:
            raise UsageError("--max-images must be at least 1")
        resolved, pairs = _read_pairs(originals, encrypted, target, device)
        if max_images is not None:
            pairs = pairs.subset(range(min(max_images, len(pairs.names))))
        spec = get_spec(target)
        watcher = None
        if gallery is not None:
            observer = observer or default_observer(target)
            if observer == target:
                raise UsageError("--observer must be another model than --target")
            observer_model = load_target(observer, observer_weights).to(resolved)
            with _progress() as progress:
                photos = load_gallery(gallery, observer_model, observer_model.spec, resolved,
                                      EventPrinter(progress=progress, description=f"gallery for {observer}"))
            if photos.identity_count < 300:
                _say("[yellow]warning:[/]", f"the gallery has {photos.identity_count} identities, fewer than 300: "
                     "the observer's rates are optimistic")
            photos_of_originals = []
            for source in pairs.sources:
                try:
                    photos_of_originals.append(contained_path(originals, source, follow_links=True))
                except ImageError:  # a name no file of the originals' folder can have: not fitted on
                    continue
            transform, fitted = fit_observer_transform(photos_of_originals, spec, observer_model.spec, resolved)
            watcher = Observer(observer_model.spec, observer_model, photos, transform, fitted, resolved)
        key_model = _load_key_or_fail(key, resolved).model
        _finish(privacy_report(pairs, spec, key_model, watcher, detect, resolved), out)


def _pair_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UsageError(f"--pairs takes pair counts of at least 1 separated by ',', e.g. 1,2,5,10,20; got {text!r}")
    return sorted(set(counts))


@evaluate_app.command("key-recovery")
def evaluate_key_recovery(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    pairs_counts: Annotated[str, typer.Option("--pairs", help="How many (ciphertext, original) pairs the attacker holds, one curve point each: comma-separated counts.")] = "1,2,5,10,20",
    held_out: Annotated[Optional[int], typer.Option(help="Pairs kept out of the attacker's hands (the last ones in manifest order; default: all beyond the largest --pairs).")] = None,
    rules: Annotated[str, typer.Option(help="How the attacker matches values over the pairs: 'correlation', 'distance' or both, comma-separated.")] = "correlation,distance",
    device: DeviceOption = "auto",
) -> None:
    """A method-aware attacker recovers the key's scramble from N pairs: share recovered, held-out SSIM."""
    from avpcli.evaluate import RECOVERY_RULES
    from avpcli.report import key_recovery_report

    with domain_errors():
        counts = _pair_counts(pairs_counts)
        chosen_rules = [rule.strip() for rule in rules.split(",") if rule.strip()]
        if not chosen_rules or any(rule not in RECOVERY_RULES for rule in chosen_rules):
            raise UsageError(f"--rules takes {' and/or '.join(RECOVERY_RULES)}, comma-separated; got {rules!r}")
        resolved, pairs = _read_pairs(originals, encrypted, target, device)
        training, testing = pairs.split(held_out, max(counts))
        report = key_recovery_report(training, testing, _load_key_or_fail(key, resolved).model, counts, chosen_rules)
        _finish(report, out)


@evaluate_app.command("statistics")
def evaluate_statistics(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    out: ReportOption,
    pairs_per_image: Annotated[int, typer.Option("--pairs", help="Random adjacent pixel pairs per image.")] = 3000,
    detect: Annotated[bool, typer.Option(help="Run MTCNN on originals and ciphertexts (detection rate).")] = True,
    device: DeviceOption = "auto",
) -> None:
    """Appendix A.1: adjacent-pixel correlation, histograms, and how often MTCNN still finds a face."""
    from avpcli.report import statistics_report

    with domain_errors():
        resolved, pairs = _read_pairs(originals, encrypted, target, device)
        _finish(statistics_report(pairs, pairs_per_image, detect, resolved), out)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
