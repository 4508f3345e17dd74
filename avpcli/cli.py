"""The `avp` command line: parse, call the library, report. The only module that prints or exits.

stdout carries data only (paths, JSON) so that avp works in pipelines; progress, warnings and
errors go to stderr. Exit codes: 0 all done, 1 some files failed or a domain error, 2 usage error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from avpcli import __version__
from avpcli.errors import AvpError, KeyFileError, UsageError

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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA GPU")
    return device


def _fail(message: str, code: int = 1) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False)
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
    seed: Annotated[Optional[int], typer.Option(help="Training seed: THE SECRET. Default: 64 random bits from `secrets`.")] = None,
    preset: Annotated[str, typer.Option(help="Key size: 'default' (trains on a CPU) or 'paper' (ngf 64, 9 blocks; GPU).")] = "default",
    data: Annotated[Optional[Path], typer.Option(help="Train on this folder of images instead of the built-in procedural source.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the preset's).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Key file to write (default: keys/key-<fingerprint>.safetensors).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing key file.")] = False,
) -> None:
    """Train a key (the generator G that decrypts) and save it as safetensors, mode 0600. Prints its path."""
    from avpcli.key import KEY_PRESETS, key_fingerprint, new_seed, save_key, seed_is_guessable, train_key

    with domain_errors():
        if preset not in KEY_PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(KEY_PRESETS)}")
        if data is not None and not data.is_dir():
            raise UsageError(f"--data must be a folder of images: {data}")
        if seed is None:
            seed = new_seed()
        elif seed_is_guessable(seed):
            stderr.print("[yellow]warning:[/] this seed is small enough to be guessed by trying them all; "
                         "anyone who guesses it can train your key. Omit --seed for a random 64-bit one.")
        resolved_device = resolve_device(device)
        total_steps = steps or KEY_PRESETS[preset].steps
        with _progress() as progress:
            task = progress.add_task("training key", total=total_steps)
            trained = train_key(preset, seed, data_dir=data, steps=steps, device=resolved_device,
                                progress=lambda step, total, loss: progress.update(task, completed=step))
        if out is None:
            fingerprint = key_fingerprint(trained.generator.state_dict())
            out = default_key_folder() / f"key-{fingerprint[:16]}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        path = save_key(trained, out, overwrite=overwrite)
    stderr.print(f"key trained in {trained.seconds:.0f} s; keep it secret: whoever holds it can decrypt")
    typer.echo(str(path))


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


def _encrypt_device(device: str) -> str:
    resolved = resolve_device(device)
    # Under torchrun each process takes its own GPU.
    if resolved == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return resolved


def _load_key_or_fail(path: Path, device: str):
    from avpcli.key import load_key

    return load_key(path, device=device)


@app.command()
def encrypt(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively, sorted).")],
    *,
    target: Annotated[str, typer.Option(help="Target model name (see `avp targets`).")],
    key: Annotated[Path, typer.Option(help="Key file from `avp keygen`.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: <input>-encrypted beside the input).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="The target's weights file, where it needs one.")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="Most optimization steps per image (default 800).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images optimized together.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    no_align: Annotated[bool, typer.Option("--no-align", help="Centre-crop and resize instead of detecting and aligning faces.")] = False,
    all_faces: Annotated[bool, typer.Option(help="Encrypt every face found, not only the largest.")] = False,
    early_stop: Annotated[bool, typer.Option(help="Stop each image once its 8-bit version meets every bar.")] = True,
    key_weight: Annotated[Optional[float], typer.Option(help="μ: weight of the reconstruction loss through the key.")] = None,
    variance_weight: Annotated[Optional[float], typer.Option(help="λ: weight of the variance-consistency loss.")] = None,
    smoothness: Annotated[str, typer.Option(help="'variance' (L_v, the paper's) or 'distance' (L_d, the ablation).")] = "variance",
    init: Annotated[str, typer.Option(help="Start from 'noise' or from the 'original'.")] = "noise",
    seed: Annotated[Optional[int], typer.Option(help="Seed of the initial noise (default: random; recorded in the manifest).")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Process only part i of n of the sorted file list (i/n).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that already exist (default: skip them, resuming).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON instead of output paths.")] = False,
    input_size: Annotated[Optional[str], typer.Option(help="Own models (onnx:/torchscript:): input HxW, e.g. 112x112.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Own models: per-channel mean on the [0,1] scale, in the model's channel order, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Own models: per-channel std on the [0,1] scale, e.g. 0.5,0.5,0.5.")] = None,
    channels: Annotated[str, typer.Option(help="Own models: channel order 'rgb' or 'bgr'.")] = "rgb",
    loss: Annotated[str, typer.Option(help="Own models: 'embedding' (feature vector) or 'classifier' (logits).")] = "embedding",
) -> None:
    """Encrypt images against a target: writes 8-bit PNGs and avp-manifest.json; prints one path per output."""
    from avpcli.engine import CLASSIFIER_SETTINGS, AttackSettings
    from avpcli.jobs import EncryptJob, encrypt_folder
    from avpcli.manifest import summarize
    from avpcli.targets import get_spec, load_target

    with domain_errors():
        if smoothness not in ("variance", "distance"):
            raise UsageError("--smoothness must be 'variance' or 'distance'")
        if init not in ("noise", "original"):
            raise UsageError("--init must be 'noise' or 'original'")
        if batch_size < 1 or (iterations is not None and iterations < 1):
            raise UsageError("--batch-size and --iterations must be at least 1")
        options = _custom_options(target, input_size, mean, std, channels, loss)
        spec = get_spec(target, options)
        shard_index = _parse_shard(shard)
        resolved_device = _encrypt_device(device)
        output = out if out is not None else inputs[0].with_name(inputs[0].stem + "-encrypted")
        loaded_key = _load_key_or_fail(key, resolved_device)
        target_model = load_target(target, weights, options).to(resolved_device)

        base = CLASSIFIER_SETTINGS if spec.loss == "classifier" else AttackSettings()
        overrides = {
            "smoothness": smoothness,
            "initialization": init,
            **({"iterations": iterations} if iterations is not None else {}),
            **({"key_weight": key_weight} if key_weight is not None else {}),
            **({"variance_weight": variance_weight} if variance_weight is not None else {}),
            **({} if early_stop else {"stop": None}),
        }
        if resolved_device.startswith("cuda"):
            import torch

            overrides["autocast_dtype"] = torch.bfloat16
        settings = dataclasses.replace(base, **overrides)
        job = EncryptJob(
            inputs=list(inputs), output=output, spec=spec, target=target_model, key=loaded_key.generator,
            key_fingerprint=loaded_key.fingerprint, settings=settings, batch_size=batch_size,
            device=resolved_device, align="never" if no_align else "auto", all_faces=all_faces,
            noise_seed=seed if seed is not None else secrets.randbits(63), overwrite=overwrite,
            shard=shard_index, weights_label=weights.name if weights else "default",
        )
        failures = 0
        with _progress() as progress:
            task = progress.add_task(f"encrypting for {target}", total=None)

            def on_event(event) -> None:
                nonlocal failures
                if event.kind == "progress":
                    progress.update(task, completed=event.done, total=event.total)
                elif event.kind == "failed":
                    failures += 1
                    progress.console.print(f"[red]failed:[/] {event.source}: {event.reason}", highlight=False)
                elif event.kind in ("written", "skipped") and not as_json:
                    typer.echo(str(event.output))

            manifest = encrypt_folder(job, on_event)
    if as_json:
        typer.echo(manifest.to_json(), nl=False)
    summary = summarize(manifest.files)
    missed = sum(1 for entry in manifest.files if entry.get("status") == "ok" and not entry.get("met_targets"))
    if missed:
        stderr.print(f"[yellow]note:[/] {missed} image(s) did not meet every quality bar within the iterations "
                     f"allowed; their figures are in the manifest")
    stderr.print(f"{summary.get('status_ok', 0)} encrypted, {failures} failed -> {output}", highlight=False)
    if failures:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------
# decrypt


def find_key(fingerprint: str, folders: list[Path], device: str):
    """The key in `folders` whose fingerprint matches, loaded; KeyFileError if there is none."""
    from avpcli.key import load_key

    for folder in folders:
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.glob("*.safetensors")):
            try:
                loaded = load_key(candidate, device=device)
            except KeyFileError:
                continue
            if loaded.fingerprint == fingerprint:
                return loaded
    searched = ", ".join(str(folder) for folder in folders)
    raise KeyFileError(f"no key with fingerprint {fingerprint[:16]}… in {searched}; give it with --key")


@app.command()
def decrypt(
    encrypted: Annotated[Path, typer.Argument(help="A folder written by `avp encrypt` (with its avp-manifest.json).")],
    *,
    key: Annotated[Optional[Path], typer.Option(help="Key file (default: the key in keys/ whose fingerprint the manifest names).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: <folder>-decrypted beside it).")] = None,
    force: Annotated[bool, typer.Option(help="Decrypt even with a key whose fingerprint differs from the manifest's.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images decrypted together.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON instead of output paths.")] = False,
) -> None:
    """Decrypt a folder with the key: writes the recovered images as PNGs; prints one path per output."""
    from avpcli.jobs import DecryptJob, decrypt_folder
    from avpcli.manifest import read_manifest

    with domain_errors():
        manifest = read_manifest(encrypted)
        resolved_device = resolve_device(device)
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
            loaded = find_key(manifest.key_fingerprint, [default_key_folder()], resolved_device)
        output = out if out is not None else encrypted.with_name(encrypted.name + "-decrypted")
        job = DecryptJob(encrypted=encrypted, output=output, key=loaded.generator, key_fingerprint=loaded.fingerprint,
                         batch_size=batch_size, device=resolved_device, manifest=manifest)
        failures = 0

        def on_event(event) -> None:
            nonlocal failures
            if event.kind == "failed":
                failures += 1
                stderr.print(f"[red]failed:[/] {event.source}: {event.reason}", highlight=False)
            elif event.kind == "written" and not as_json:
                typer.echo(str(event.output))

        result = decrypt_folder(job, on_event)
    if as_json:
        typer.echo(result.to_json(), nl=False)
    if failures:
        raise typer.Exit(1)


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
            stderr.print(f"training the demo key (once; cached at {key_path})")
        failures = 0
        with _progress() as progress:
            training = progress.add_task("training key", total=None, visible=not key_path.exists())
            encrypting = progress.add_task("encrypting for dlib", total=None)

            def on_event(event) -> None:
                nonlocal failures
                if event.kind == "progress":
                    progress.update(encrypting, completed=event.done, total=event.total)
                elif event.kind == "failed":
                    failures += 1
                    progress.console.print(f"[red]failed:[/] {event.source}: {event.reason}", highlight=False)

            result = run_demo(out, images or SAMPLES, resolved_device, key_path,
                              on_training_step=lambda step, total: progress.update(training, completed=step, total=total),
                              on_event=on_event)
    table = Table(title="avp demo: dlib target, metrics on the PNGs as written", title_justify="left")
    for column in ("image", "status", "distance (same person < 0.6)", "SSIM enc (low = hidden)",
                   "SSIM dec (high = recovered)", "iterations"):
        table.add_column(column)
    for row in result.rows:
        if row["status"] == "ok":
            table.add_row(row["source"], "ok", f"{row['feature_distance']:.3f}", f"{row['ssim_encrypted']:.3f}",
                          f"{row['ssim_decrypted']:.3f}", str(row["iterations"]))
        else:
            table.add_row(row["source"], row["status"], row.get("reason", ""), "", "", "")
    stderr.print(table)
    stderr.print(f"done in {result.seconds:.0f} s; original | encrypted | decrypted:")
    if result.contact_sheet is not None:
        typer.echo(str(result.contact_sheet))
    if failures:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
