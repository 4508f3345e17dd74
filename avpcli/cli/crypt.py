"""encrypt and decrypt: folders, files or paths on stdin in; PNGs and avp-manifest.json out; one line per file."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from avpcli.cli.options import (DEFAULT_MAX_PIXELS, JsonOption, MaxPixelsOption, NullOption, PrecisionOption, RayActorsOption, RayOption,
                                custom_options, default_key_folder, parse_shard, ray_address, reads_stdin, stdin_paths)
from avpcli.cli.output import EventPrinter, domain_errors, progress_bars, ray_messages_to_stderr, say, stderr


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
    stop_past_original: Annotated[Optional[bool], typer.Option("--stop-past-original/--stop-near-original", help="Embedding targets, tuned recipe: stop an image only once its features lie past the original's on their way from the start (default: the target's choice, on for dlib), so that ciphertexts mixed with plain photos are found as often as their originals; off is enough when every image of a gallery is encrypted (docs/RESULTS.md). On also pulls the features in by their distance rather than its square, which dlib's last steps need (docs/BENCHMARKS.md).")] = None,
    smoothness: Annotated[str, typer.Option(help="'variance' (L_v, the paper's) or 'distance' (L_d, the ablation).")] = "variance",
    init: Annotated[Optional[str], typer.Option(help="Start from the key's 'preimage' (S⁻¹(x); the tuned default, noise for a key without scramble), from 'noise' (the research default) or from the 'original'.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the initial noise (default: random; recorded in the manifest).")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Process only part i of n of the sorted file list (i/n).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that already exist (default: skip them, resuming; an earlier run's output of another photo with the same name is kept, and the new one named by its parent folders).")] = False,
    anonymize: Annotated[bool, typer.Option(help="Name outputs by random ids; the id → name map goes beside the key, not into --out.")] = False,
    names_map: Annotated[Optional[Path], typer.Option(help="With --anonymize: where to write the id → name map (default: <key>.names-<run>.json).")] = None,
    as_json: JsonOption = False,
    null: NullOption = False,
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Encrypt files that an input folder holds as symbolic links to places outside it (default: each fails with its reason).")] = False,
    precision: PrecisionOption = "auto",
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    compile_models: Annotated[bool, typer.Option("--compile", help="torch.compile the target and key (CUDA; slow start, faster steps).")] = False,
    input_size: Annotated[Optional[str], typer.Option(help="Own models (onnx:/torchscript:): input HxW, e.g. 112x112.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Own models: per-channel mean on the [0,1] scale, in the model's channel order, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Own models: per-channel std on the [0,1] scale, e.g. 0.5,0.5,0.5.")] = None,
    channels: Annotated[str, typer.Option(help="Own models: channel order 'rgb' or 'bgr'.")] = "rgb",
    loss: Annotated[str, typer.Option(help="Own models: 'embedding' (feature vector) or 'classifier' (logits).")] = "embedding",
    no_seal: Annotated[bool, typer.Option("--no-seal", help="Write the model's ciphertexts only, as avp 0.2 did (the paper's chip-only output): no sealed original (<name>.sealed.png) beside them, and a photo in which no face is found fails.")] = False,
    ray: RayOption = None,
    ray_actors: RayActorsOption = None,
) -> None:
    """Encrypt images against a target: writes 8-bit PNGs and avp-manifest.json; prints one path per output."""
    from avpcli.encryptor import NO_SCRAMBLE_WARNING, Encryptor
    from avpcli.jobs import encrypt_folder, encrypt_on_ray

    with domain_errors():
        listed = reads_stdin(inputs, null, as_json, out)
        address = ray_address(ray, ray_actors)
        options = custom_options(target, input_size, mean, std, channels, loss)
        shard_index = parse_shard(shard)
        output = out if out is not None else inputs[0].with_name(inputs[0].stem + "-encrypted")
        if address is not None:
            from avpcli.jobs.ray_pool import quiet_ray

            quiet_ray()  # before any model loads: without Ray, a usage error at once
        settings = dict(
            recipe=recipe, weights=weights, target_options=options, device=device, precision=precision,
            compile=compile_models, batch_size=batch_size, early_stop=early_stop,
            max_lowpass_correlation=max_lowpass_correlation, max_feature_distance=max_feature_distance,
            stop_past_original=stop_past_original, smoothness=smoothness, initialization=init,
            iterations=iterations, key_weight=key_weight, variance_weight=variance_weight, leak_weight=leak_weight)
        encryptor = Encryptor(target, key, **settings)
        if recipe == "tuned" and not encryptor.key_scrambles:
            stderr.print(f"[yellow]warning:[/] {NO_SCRAMBLE_WARNING}", highlight=False)
        # Read once the options are known to be good: a usage error does not wait for the writer upstream.
        paths = stdin_paths(null) if listed else inputs
        run_options = dict(align="never" if no_align else "auto", all_faces=all_faces, noise_seed=seed, overwrite=overwrite,
                           shard=shard_index, anonymize=anonymize, names_map=names_map, key_path=key,
                           follow_links=follow_links, listed=listed, max_pixels=max_pixels, seal=not no_seal)
        with progress_bars() as progress:
            # What this run did; the manifest also lists files of earlier runs into the same folder.
            printer = EventPrinter("json" if as_json else "paths", null, progress, f"encrypting for {target}")
            if address is None:
                encrypt_folder(encryptor, paths, output, printer, **run_options)
            else:
                from avpcli.key import load_key

                # The key travels to the workers (loaded on the CPU); each actor builds its own encryptor.
                make_encryptor = functools.partial(Encryptor, target, load_key(key), **settings)
                with ray_messages_to_stderr(printer):
                    encrypt_on_ray(make_encryptor, paths, output, printer, encryptor=encryptor, address=address,
                                   actors=ray_actors, **run_options)
    if printer.missed_bars:
        stderr.print(f"[yellow]note:[/] {printer.missed_bars} image(s) did not meet every quality bar within the "
                     f"iterations allowed; their figures are in the manifest")
    sealed = (f"{printer.sealed} sealed ({printer.sealed_only} sealed only: no model input), " if printer.sealed_only
              else f"{printer.sealed} sealed, " if printer.sealed else "")
    say(f"{printer.finished} encrypted, {sealed}{printer.failed} failed ->", str(output))
    if printer.failed:
        raise typer.Exit(1)


def decrypt(
    inputs: Annotated[list[Path], typer.Argument(help="A folder written by `avp encrypt` (with its avp-manifest.json), or ciphertext PNG files, decrypted one by one at their own size (they need --key and --out; one that a manifest beside it lists is held to that manifest); - reads the files' paths from stdin, one a line (NUL-separated with --null).")],
    *,
    key: Annotated[Optional[Path], typer.Option(help="Key file (default for a folder: the key in keys/ whose fingerprint the manifest names; required for files).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default for a folder: <folder>-decrypted beside it; required for files).")] = None,
    force: Annotated[bool, typer.Option(help="Decrypt even with a key whose fingerprint differs from the manifest's, a ciphertext whose bytes differ from the sha256 its manifest lists, or one that fails the key check (\"damaged, or made with another key\"); such entries say \"forced\".")] = False,
    batch_size: Annotated[int, typer.Option(help="Images decrypted together.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Redo outputs that already exist (default: keep those an earlier run with this key finished, resuming; another ciphertext's output of the same name is kept and the new one named by its parent folders).")] = False,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    as_json: JsonOption = False,
    null: NullOption = False,
    chips: Annotated[bool, typer.Option("--chips", help="A folder: also decrypt, through the key, the model's ciphertexts of the photos whose whole file was sealed (into <out>/chips/); by default only the originals are restored. Files: always decrypted, into <out>/chips/ when sealed originals are among the files.")] = False,
    ray: RayOption = None,
    ray_actors: RayActorsOption = None,
) -> None:
    """Decrypt a folder or ciphertext files with the key: restores each sealed original byte for byte, decrypts the other ciphertexts as PNGs, writes avp-manifest.json; prints one path per output."""
    from avpcli.jobs import decrypt_on_ray, decrypt_paths

    with domain_errors():
        listed = reads_stdin(inputs, null, as_json, out)
        address = ray_address(ray, ray_actors)
        if address is not None:
            from avpcli.jobs.ray_pool import quiet_ray

            quiet_ray()
        printer = EventPrinter("json" if as_json else "paths", null)
        # The paths on stdin are read only once the options are known to be good.
        paths = (path for path in stdin_paths(null)) if listed else inputs
        options = dict(key=key, key_folders=[default_key_folder()], listed=listed, force=force, batch_size=batch_size,
                       device=device, overwrite=overwrite, max_pixels=max_pixels, on_event=printer, chips=chips,
                       on_warning=lambda message: say("[yellow]warning:[/]", message))
        if address is None:
            decrypt_paths(paths, out, **options)
        else:
            with ray_messages_to_stderr(printer):
                decrypt_on_ray(paths, out, address=address, actors=ray_actors, **options)
    if printer.failed:
        raise typer.Exit(1)

