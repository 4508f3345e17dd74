"""The command line end to end on tiny models: stdout holds only data, errors are one line, exit codes mean something."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from avpcli.cli import app
from conftest import write_noise_photos

runner = CliRunner()


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False, env=env)


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    return write_noise_photos(tmp_path / "photos", ["a.jpg", "nested/b.png", "c.png"], 48, 40, seed=4)


def encrypt_tiny(photos: Path, key: Path, out: Path, *extra: str):
    return invoke("encrypt", photos, "--target", "tiny-embedding", "--key", key, "--out", out,
                  "--iterations", "6", "--device", "cpu", "--seed", "3", *extra)


def test_every_command_has_help():
    for command in ("keygen", "encrypt", "decrypt", "targets", "demo"):
        result = invoke(command, "--help")
        assert result.exit_code == 0, command
        assert "Usage" in result.stdout


def test_every_evaluate_subcommand_has_help():
    import typer

    from avpcli.cli import evaluate_app

    names = sorted(typer.main.get_command(evaluate_app).commands)
    assert {"privacy", "key-recovery", "attack"} <= set(names)
    for name in names:
        result = invoke("evaluate", name, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout, name


def test_stage_bars_appear_with_the_first_stage_and_a_warning_goes_below_them(capsys):
    from avpcli.cli import StagePrinter
    from avpcli.events import Event

    with StagePrinter() as printer:
        printer(Event("failed", source="a.png", reason="empty file"))
    assert capsys.readouterr().err == "failed: a.png: empty file\n"  # a call that fails before its first stage
    with StagePrinter() as printer:
        printer(Event("stage", source="gallery for x", total=2))
        printer(Event("progress", done=2, total=2))
        printer(Event("warning", reason="a small gallery"))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("gallery for x") and "2/2" in lines[0]
    assert lines[1:] == ["warning: a small gallery"]


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("avp ")


def test_keygen_prints_only_the_path_and_writes_an_owner_only_file(tmp_path):
    out = tmp_path / "k.safetensors"
    result = invoke("keygen", "--steps", "1", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_keygen_warns_about_a_guessable_seed_and_never_prints_it(tmp_path):
    out = tmp_path / "k.safetensors"
    result = invoke("keygen", "--steps", "1", "--seed", "4242", "--out", out, "--device", "cpu")
    assert result.exit_code == 0
    assert "guess" in result.stderr
    assert "4242" not in result.stdout + result.stderr


def test_keygen_refuses_to_overwrite_a_key(tmp_path):
    out = tmp_path / "k.safetensors"
    out.write_bytes(b"precious")
    result = invoke("keygen", "--steps", "1", "--out", out, "--device", "cpu")
    assert result.exit_code == 1
    assert out.read_bytes() == b"precious"


def test_a_foreign_file_as_key_is_a_clear_error(tmp_path, photo_folder):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"definitely not a key")
    result = encrypt_tiny(photo_folder, fake, tmp_path / "out")
    assert result.exit_code == 1
    assert "error" in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""


def test_encrypt_then_decrypt_end_to_end(tmp_path, photo_folder, tiny_key_file):
    out = tmp_path / "encrypted"
    result = encrypt_tiny(photo_folder, tiny_key_file, out)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # Each photo sealed whole (issue #23; a batch's containers come first), and its model ciphertext.
    assert lines == [str(out / name) for name in ("a.sealed.png", "c.sealed.png", "nested/b.sealed.png",
                                                  "a.png", "c.png", "nested/b.png")]
    manifest = json.loads((out / "avp-manifest.json").read_text())
    assert manifest["target"]["name"] == "tiny-embedding"
    assert len(manifest["key_fingerprint"]) == 64
    for entry in manifest["files"]:
        assert entry["status"] == "ok"
        assert {"feature_distance", "cosine", "ssim_encrypted", "ssim_decrypted", "iterations"} <= set(entry)
        with Image.open(out / entry["output"]) as written:
            assert written.size == (32, 32) and written.mode == "RGB"
    text = (out / "avp-manifest.json").read_text()
    assert str(tiny_key_file) not in text and "seed\": 2" not in text

    decrypted = tmp_path / "decrypted"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", decrypted, "--device", "cpu", "--chips")
    assert result.exit_code == 0, result.stderr
    # The photos themselves, byte for byte; then (--chips) their chips through the key.
    assert result.stdout.splitlines() == [str(decrypted / name) for name in (
        "a.jpg", "c.png", "nested/b.png", "chips/a.png", "chips/c.png", "chips/nested/b.png")]
    for name in ("a.jpg", "c.png", "nested/b.png"):
        assert (decrypted / name).read_bytes() == (photo_folder / name).read_bytes()

    again = tmp_path / "decrypted-again"
    invoke("decrypt", out, "--key", tiny_key_file, "--out", again, "--device", "cpu", "--chips")
    for name in ("a.png", "c.png", "nested/b.png"):
        assert (decrypted / "chips" / name).read_bytes() == (again / "chips" / name).read_bytes(), \
            "decryption must be deterministic"


def test_decrypt_finds_the_key_by_fingerprint_and_refuses_another(tmp_path, photo_folder, tiny_key_file):
    out = tmp_path / "encrypted"
    encrypt_tiny(photo_folder, tiny_key_file, out)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "mine.safetensors").write_bytes(tiny_key_file.read_bytes())
    result = invoke("decrypt", out, "--out", tmp_path / "d1", "--device", "cpu", env={"AVP_KEYS": str(keys)})
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3

    other = tmp_path / "other.safetensors"
    invoke("keygen", "--steps", "1", "--out", other, "--device", "cpu")
    refused = invoke("decrypt", out, "--key", other, "--out", tmp_path / "d2", "--device", "cpu")
    assert refused.exit_code == 1 and "not the key" in refused.stderr
    assert not (tmp_path / "d2").exists()
    # --force decrypts the chips with another key; the sealed photos never open under it.
    forced = invoke("decrypt", out, "--key", other, "--out", tmp_path / "d3", "--device", "cpu", "--force", "--chips")
    assert forced.exit_code == 1 and forced.stderr.count("damaged, or sealed with another key") == 3
    assert len(list((tmp_path / "d3" / "chips").rglob("*.png"))) == 3


def test_a_bad_file_fails_alone_and_the_run_exits_1(tmp_path, photo_folder, tiny_key_file):
    (photo_folder / "broken.jpg").write_bytes(b"garbage")
    out = tmp_path / "encrypted"
    result = encrypt_tiny(photo_folder, tiny_key_file, out)
    assert result.exit_code == 1
    assert "broken.jpg" in result.stderr and "Traceback" not in result.output
    assert len(result.stdout.splitlines()) == 6  # three containers, three chips
    entries = {entry["source"]: entry for entry in json.loads((out / "avp-manifest.json").read_text())["files"]}
    assert entries["broken.jpg"]["status"] == "failed" and entries["broken.jpg"]["reason"]


def test_rerun_skips_finished_outputs_and_overwrite_redoes_them(tmp_path, photo_folder, tiny_key_file):
    out = tmp_path / "encrypted"
    encrypt_tiny(photo_folder, tiny_key_file, out)
    before = (out / "a.png").stat().st_mtime_ns
    again = encrypt_tiny(photo_folder, tiny_key_file, out)
    assert again.exit_code == 0
    assert (out / "a.png").stat().st_mtime_ns == before
    assert len(json.loads((out / "avp-manifest.json").read_text())["files"]) == 3
    encrypt_tiny(photo_folder, tiny_key_file, out, "--overwrite")
    assert (out / "a.png").stat().st_mtime_ns != before


def test_output_inside_the_input_is_refused(photo_folder, tiny_key_file):
    result = encrypt_tiny(photo_folder, tiny_key_file, photo_folder / "enc")
    assert result.exit_code == 2
    assert not (photo_folder / "enc").exists()


def test_json_prints_one_line_per_file_with_its_manifest_figures(tmp_path, photo_folder, tiny_key_file):
    (photo_folder / "broken.jpg").write_bytes(b"garbage")
    out = tmp_path / "enc"
    result = encrypt_tiny(photo_folder, tiny_key_file, out, "--json")
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    manifest = {entry["source"]: entry for entry in json.loads((out / "avp-manifest.json").read_text())["files"]}
    assert sorted(set(line["source"] for line in lines)) == sorted(manifest) == ["a.jpg", "broken.jpg", "c.png", "nested/b.png"]
    for line in lines:
        entry = manifest[line["source"]]
        if line["status"] == "sealed":  # the photo's container
            assert line["output"] == str(out / entry["sealed"]) and line["sha256"] == entry["sealed_sha256"]
            continue
        assert line["status"] == entry["status"] and line["skipped"] is False
        if entry["status"] == "ok":
            assert line["output"] == str(out / entry["output"]) and line["reason"] is None
            for figure in ("feature_distance", "ssim_encrypted", "ssim_decrypted", "iterations", "met_targets", "sha256"):
                assert line[figure] == entry[figure]
        else:
            assert line["output"] is None and line["reason"] == entry["reason"]
    again = encrypt_tiny(photo_folder, tiny_key_file, out, "--json")
    assert all(json.loads(line)["skipped"] for line in again.stdout.splitlines() if "broken" not in line)

    decrypted = invoke("decrypt", out, "--key", tiny_key_file, "--out", tmp_path / "dec", "--device", "cpu", "--json")
    assert decrypted.exit_code == 0, decrypted.stderr
    lines = [json.loads(line) for line in decrypted.stdout.splitlines()]
    assert [line["output"] for line in lines] == [str(tmp_path / "dec" / name) for name in ("a.jpg", "c.png", "nested/b.png")]
    assert all(line["status"] == "ok" and len(line["sha256"]) == 64 for line in lines)


def test_unknown_target_lists_the_choices(tmp_path, photo_folder, tiny_key_file):
    result = invoke("encrypt", photo_folder, "--target", "nonsense", "--key", tiny_key_file, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert "dlib" in result.stderr


def test_targets_lists_real_targets_and_hides_test_ones():
    result = invoke("targets")
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert "dlib" in names and "facenet" in names
    assert not any(name.startswith("tiny") for name in names)


def test_shard_takes_every_nth_file(tmp_path, photo_folder, tiny_key_file):
    first = encrypt_tiny(photo_folder, tiny_key_file, tmp_path / "enc", "--shard", "1/2")
    second = encrypt_tiny(photo_folder, tiny_key_file, tmp_path / "enc", "--shard", "2/2")
    assert len(first.stdout.splitlines()) == 4 and len(second.stdout.splitlines()) == 2  # containers and chips
    assert (tmp_path / "enc" / "avp-manifest.part-1-of-2.json").exists()


def test_module_entry_point_keeps_stdout_clean(tmp_path, photo_folder, tiny_key_file):
    out = tmp_path / "enc"
    completed = subprocess.run(
        [sys.executable, "-m", "avpcli", "encrypt", str(photo_folder), "--target", "tiny-embedding",
         "--key", str(tiny_key_file), "--out", str(out), "--iterations", "3", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert all(Path(line).is_file() for line in completed.stdout.splitlines())
    assert len(completed.stdout.splitlines()) == 6


def test_own_torchscript_model_as_target(tmp_path, photo_folder, tiny_key_file):
    import torch

    from avpcli.targets import load_target

    scripted = torch.jit.script(load_target("tiny-embedding").model)
    model_path = tmp_path / "model.pt"
    scripted.save(str(model_path))
    missing = invoke("encrypt", photo_folder, "--target", f"torchscript:{model_path}", "--key", tiny_key_file,
                     "--out", tmp_path / "o1")
    assert missing.exit_code == 2 and "--input-size" in missing.stderr
    result = invoke("encrypt", photo_folder, "--target", f"torchscript:{model_path}", "--key", tiny_key_file,
                    "--out", tmp_path / "o2", "--input-size", "32x32", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5",
                    "--iterations", "3", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 6


def test_custom_model_options_are_refused_for_registered_targets(tmp_path, photo_folder, tiny_key_file):
    result = invoke("encrypt", photo_folder, "--target", "tiny-embedding", "--key", tiny_key_file,
                    "--out", tmp_path / "o", "--input-size", "32x32")
    assert result.exit_code == 2


def test_lowpass_bar_is_checked_and_recorded(tmp_path, photo_folder, tiny_key_file):
    refused = encrypt_tiny(photo_folder, tiny_key_file, tmp_path / "refused", "--max-lowpass-correlation", "1.5")
    assert refused.exit_code == 2 and "low-pass correlation bar must be between 0 and 1" in refused.stderr
    accepted = encrypt_tiny(photo_folder, tiny_key_file, tmp_path / "enc", "--max-lowpass-correlation", "0.3")
    assert accepted.exit_code == 0, accepted.stderr
    files = json.loads((tmp_path / "enc" / "avp-manifest.json").read_text())["files"]
    for entry in files:
        # Every ciphertext's low-pass correlation is in the manifest, and met_targets honours the bar.
        assert -1 <= entry["lowpass_correlation"] <= 1
        if abs(entry["lowpass_correlation"]) > 0.3:
            assert entry["met_targets"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
@pytest.mark.parametrize("extra", [(), ("--precision", "fp32"), ("--compile",)])
def test_encrypt_and_decrypt_on_cuda(tmp_path, photo_folder, tiny_key_file, extra):
    out = tmp_path / "encrypted"
    result = invoke("encrypt", photo_folder, "--target", "tiny-embedding", "--key", tiny_key_file, "--out", out,
                    "--iterations", "6", "--device", "cuda", "--seed", "3", *extra)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "avp-manifest.json").read_text())
    assert [entry["status"] for entry in manifest["files"]] == ["ok"] * 3
    decrypted = tmp_path / "decrypted"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", decrypted, "--device", "cuda")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_precision_bf16_runs_on_cpu_and_fp16_needs_cuda(tmp_path, photo_folder, tiny_key_file):
    result = encrypt_tiny(photo_folder, tiny_key_file, tmp_path / "bf16", "--precision", "bf16")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "bf16" / "avp-manifest.json").read_text())
    assert manifest["settings"]["autocast_dtype"] == "bfloat16"
    refused = encrypt_tiny(photo_folder, tiny_key_file, tmp_path / "fp16", "--precision", "fp16")
    assert refused.exit_code == 2 and "fp16" in refused.stderr
    assert not (tmp_path / "fp16").exists()


def test_the_start_side_is_the_targets_choice_unless_the_user_makes_it(tmp_path, photo_folder, tiny_key_file):
    from avpcli import read_manifest

    for name, extra, recorded in (("default", (), None), ("past", ("--stop-past-original",), 0.0)):
        assert encrypt_tiny(photo_folder, tiny_key_file, tmp_path / name, *extra).exit_code == 0
        settings = read_manifest(tmp_path / name).settings
        assert settings["stop"].get("max_start_side") == recorded, settings


def test_encrypt_help_states_the_engines_actual_defaults():
    from avpcli.engine import FACE_SETTINGS, AttackSettings

    result = runner.invoke(app, ["encrypt", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    text = " ".join(result.output.replace("│", " ").split())
    research = AttackSettings()
    assert f"(default: {FACE_SETTINGS.iterations}, the research code's K;" in text
    assert research.iterations == FACE_SETTINGS.iterations
    stop = FACE_SETTINGS.stop
    assert (f"'tuned' (FACE_SETTINGS: start from the key's {FACE_SETTINGS.initialization}, momentum "
            f"{FACE_SETTINGS.momentum}, μ {FACE_SETTINGS.key_weight} with an SSIM term, leak weight "
            f"{FACE_SETTINGS.leak_weight}, bars SSIM_e ≤ {stop.max_ssim_encrypted} and SSIM_d ≥ "
            f"{stop.min_ssim_decrypted}; for dlib also features that stop past the original's") in text
    assert f"momentum {research.momentum}, μ {research.key_weight}, λ {research.variance_weight}" in text


# --------------------------------------------------------------------------------------------
# Keys with and without scramble


def _decrypted_with(model, folder: Path, name: str) -> torch.Tensor:
    from avpcli.engine import decrypt_batch
    from avpcli.images import read_png

    return decrypt_batch(read_png(folder / name)[None], model)[0]


def test_keygen_scrambles_by_default_and_no_scramble_keeps_the_plain_key(tmp_path):
    from avpcli.key import load_key

    scrambled, plain = tmp_path / "s.safetensors", tmp_path / "p.safetensors"
    result = invoke("keygen", "--steps", "1", "--seed", "123456789123456789", "--out", scrambled, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert invoke("keygen", "--steps", "1", "--seed", "123456789123456789", "--no-scramble", "--out", plain,
                  "--device", "cpu").exit_code == 0
    assert load_key(scrambled).scrambles and not load_key(plain).scrambles
    secret = bytes(load_key(scrambled).scramble.secret.tolist())
    assert secret.hex() not in result.output and "123456789123456789" not in result.output


def test_manifest_records_the_scramble_and_decrypt_uses_what_it_says(tmp_path, photo_folder, tiny_key_file):
    from avpcli.key import load_key

    loaded = load_key(tiny_key_file)
    assert loaded.scrambles
    for recipe, scrambled in (("tuned", True), ("research", False)):
        out = tmp_path / f"enc-{recipe}"
        assert encrypt_tiny(photo_folder, tiny_key_file, out, "--recipe", recipe).exit_code == 0
        manifest = json.loads((out / "avp-manifest.json").read_text())
        assert manifest["settings"]["key_scramble"] is scrambled
        decrypted = tmp_path / f"dec-{recipe}"
        result = invoke("decrypt", out, "--key", tiny_key_file, "--out", decrypted, "--device", "cpu", "--chips")
        assert result.exit_code == 0, result.stderr
        decrypted = decrypted / "chips"
        from avpcli.images import read_png

        # Research ciphertexts were made for G alone, tuned ones for G∘S: decrypt applied the matching one.
        model = loaded.model if scrambled else loaded.plain_model
        assert torch.equal(read_png(decrypted / "a.png"), _decrypted_with(model, out, "a.png"))
        other = loaded.plain_model if scrambled else loaded.model
        assert not torch.equal(read_png(decrypted / "a.png"), _decrypted_with(other, out, "a.png"))


def test_a_key_without_scramble_warns_with_the_tuned_recipe(tmp_path, photo_folder):
    from avpcli.key import TEST_SEED_KDF, KeyPreset, save_key, train_key

    preset = KeyPreset(ngf=4, blocks=1, norm="batch", steps=1, batch_size=2, crop_size=32, learning_rate=1e-3,
                       seed_kdf=TEST_SEED_KDF)
    plain = save_key(train_key(preset, seed=2**70 + 9, scramble=False), tmp_path / "plain.safetensors")
    result = encrypt_tiny(photo_folder, plain, tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert "has no scramble" in result.stderr
    assert json.loads((tmp_path / "out" / "avp-manifest.json").read_text())["settings"]["key_scramble"] is False


def test_keygen_help_states_the_bits_of_the_default_seed():
    from avpcli.key import SEED_BITS, new_seed

    help_text = " ".join(invoke("keygen", "--help").stdout.split())
    assert f"{SEED_BITS} random bits" in help_text
    assert max(new_seed().bit_length() for _ in range(64)) > SEED_BITS - 8  # it draws as many as it says


def test_feature_bar_is_recorded(tmp_path, photo_folder, tiny_key_file):
    result = encrypt_tiny(photo_folder, tiny_key_file, tmp_path / "enc", "--max-feature-distance", "0.03")
    assert result.exit_code == 0, result.stderr
    settings = json.loads((tmp_path / "enc" / "avp-manifest.json").read_text())["settings"]
    assert settings["stop"]["max_feature_distance"] == 0.03


def test_a_bare_ray_option_means_a_cluster_of_this_machine():
    from avpcli.cli.options import with_ray_value

    assert with_ray_value(["faces", "--ray"]) == ["faces", "--ray", "local"]
    assert with_ray_value(["--ray", "faces", "--json"]) == ["--ray", "local", "faces", "--json"]
    assert with_ray_value(["faces", "--ray", "--json"]) == ["faces", "--ray", "local", "--json"]
    for address in ("auto", "local", "10.0.0.5:6379", "[::1]:6379", "ray://head:10001"):
        assert with_ray_value(["faces", "--ray", address]) == ["faces", "--ray", address]
    assert with_ray_value(["faces", "--", "--ray"]) == ["faces", "--", "--ray"]  # after --, a file's name
    result = invoke("encrypt", "x.png", "--target", "tiny-embedding", "--key", "k", "--ray=nowhere")
    assert result.exit_code == 2
    assert "--ray takes local, auto, HOST:PORT or ray://HOST:PORT, not 'nowhere'" in result.stderr


def test_ray_messages_go_to_stderr_while_the_data_lines_keep_stdout(capsys):
    from avpcli.cli.output import EventPrinter, ray_messages_to_stderr
    from avpcli.events import Event

    printer = EventPrinter("paths")
    with ray_messages_to_stderr(printer):
        print("(raylet) a worker died; retrying")  # as Ray's driver prints the cluster's messages
        printer(Event("written", source="a.png", output=Path("out/a.png"), entry={"status": "ok"}))
    printer(Event("written", source="b.png", output=Path("out/b.png"), entry={"status": "ok"}))
    captured = capsys.readouterr()
    assert captured.out == "out/a.png\nout/b.png\n"
    assert "a worker died" in captured.err and "out/" not in captured.err
