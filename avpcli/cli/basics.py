"""The commands around a run: keygen (train a key), targets (list the models) and demo (the offline round trip)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from avpcli.cli.options import default_key_folder, resolve_device
from avpcli.cli.output import EventPrinter, domain_errors, echo_path, printable, progress_bars, say, stderr
from avpcli.errors import UsageError


def keygen(
    *,
    seed: Annotated[Optional[int], typer.Option(help="Training seed: THE SECRET. Default: 256 random bits from `secrets` (recommended). A seed given here makes the key reproducible (same CPU type, threads and torch; keep the key file) and is a password: below 2**64, or one a person could remember, it can be guessed (about 0.5 s of scrypt a guess), and a guess gives the key's scramble.")] = None,
    preset: Annotated[str, typer.Option(help="Key recipe: 'default' (trains on 2 CPU cores in minutes), 'small' (2 blocks on 32-pixel crops: avp 0.2's key for images of about 32×32; the default key now gives CIFAR-10 back better), 'demo' (shorter, for avp demo) or 'paper' (ngf 64, 9 blocks; GPU).")] = "default",
    data: Annotated[Optional[Path], typer.Option(help="Train on this folder of images instead of the built-in procedural source.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the preset's).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Key file to write (default: keys/key-<fingerprint>.safetensors).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing key file.")] = False,
    scramble: Annotated[Optional[bool], typer.Option("--scramble/--no-scramble", help="Put a secret scramble (derived from the seed) in front of G, so that ciphertexts hide the image's layout and colour from every filter (docs/PRIVACY.md). Default: on, except for the 'paper' preset, which reproduces the paper's plain G.")] = None,
    per_size_scramble: Annotated[bool, typer.Option("--per-size-scramble", help="One scramble per image size, as avp 0.1's keys had, instead of one per image: (ciphertext, original) pairs of any images then teach an attacker the scramble of all others (docs/KEY.md). For reproducing old figures only.")] = False,
) -> None:
    """Train a key (the generator G that decrypts) and save it as safetensors, mode 0600. Prints its path."""
    from avpcli.key import KEY_PRESETS, new_seed, resolve_recipe, save_key, seed_is_guessable, train_key
    from avpcli.scramble import SCHEME as SCRAMBLE_SCHEME

    with domain_errors():
        if preset not in KEY_PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(KEY_PRESETS)}")
        if data is not None and not data.is_dir():
            raise UsageError(f"--data must be a folder of images: {data}")
        given_seed = seed is not None
        if not given_seed:
            seed = new_seed()
        # A bad seed or step count is refused before any warning or progress bar: one line.
        total_steps = resolve_recipe(preset, seed, steps)[1].steps
        if given_seed and seed_is_guessable(seed):  # one line, never the seed itself
            stderr.print("[yellow]warning:[/] a seed below 2**64, or any a person could remember, can be guessed "
                         "by trying seeds (about 0.5 s each); a guess gives the key's scramble, and a blur of a "
                         "ciphertext's unscrambled pixels shows its photo. Omit --seed for a random 256-bit seed "
                         "(recommended).", soft_wrap=True, highlight=False)
        resolved_device = resolve_device(device)
        if scramble is None:
            scramble = preset != "paper"
        if per_size_scramble and not scramble:
            raise UsageError("--per-size-scramble needs a scramble (drop --no-scramble)")
        with progress_bars() as progress:
            task = progress.add_task("training key", total=total_steps)
            trained = train_key(preset, seed, data_dir=data, steps=steps, device=resolved_device,
                                progress=lambda step, total, loss: progress.update(task, completed=step),
                                scramble=(SCRAMBLE_SCHEME if per_size_scramble else scramble))
        if out is None:
            out = default_key_folder() / f"key-{trained.fingerprint[:16]}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        path = save_key(trained, out, overwrite=overwrite)
    stderr.print(f"key trained in {trained.seconds:.0f} s; keep it secret: whoever holds it can decrypt")
    echo_path(path)


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
            say("training the demo key", f"(once; cached at {key_path})")
        with progress_bars() as progress:
            training = progress.add_task("training key", total=None, visible=not key_path.exists())
            printer = EventPrinter(progress=progress, description="encrypting for dlib")
            result = run_demo(out, images or SAMPLES, resolved_device, key_path,
                              on_training_step=lambda step, total: progress.update(training, completed=step, total=total),
                              on_event=printer)
    stderr.print(demo_table(result.rows))
    stderr.print(f"done in {result.seconds:.0f} s; the contact sheet, a row per photo: original photo | its sealed "
                 "container | the face's ciphertext | its blur, contrast-stretched | decrypted face | restored photo:")
    if result.contact_sheet is not None:
        echo_path(result.contact_sheet)
    if printer.failed:
        raise typer.Exit(1)


def demo_table(rows: list[dict]) -> Table:
    """The demo's figures per image, in 80 columns without cutting a word: one-word headers explained
    in the caption, figures that never wrap, and a name that folds (only a long one) rather than end
    in an ellipsis. A file that failed shows its status; its reason is on the failure's own line."""
    table = Table(title="avp demo: dlib target, figures of the PNGs as written", title_justify="left",
                  caption="dist. (feature distance) < 0.6: the same person; SSIM enc and blur (blur corr) low: hidden; "
                          "SSIM dec high: recovered; file: the restored photo's sha256 is the original's (same) "
                          "or not (DIFF)", caption_justify="left")
    table.add_column("image", overflow="fold")
    table.add_column("status", no_wrap=True)
    for header in ("dist.", "SSIM enc", "blur", "SSIM dec", "steps", "file"):
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        # Text, not markup: a file name with [brackets] is shown as it is.
        name = Text(printable(str(row["source"])))
        restored = {True: "same", False: "DIFF"}.get(row.get("restored_identical"), "")
        if row["status"] == "ok":
            table.add_row(name, "ok", f"{row['feature_distance']:.3f}", f"{row['ssim_encrypted']:.3f}",
                          f"{row['lowpass_correlation']:+.2f}", f"{row['ssim_decrypted']:.3f}", str(row["iterations"]),
                          restored)
        else:
            table.add_row(name, Text(printable(str(row["status"]))), "", "", "", "", "", restored)
    return table
