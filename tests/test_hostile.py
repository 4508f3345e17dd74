"""Hostile manifests, keys, names and concurrent runs (issue #16).

Each case asserts its exact outcome: the exit code, the one-line reason, and that no file outside
the folders the command names has changed (a hash over a sentinel tree of everything else).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from avpcli.cli import app, printable
from avpcli.images import find_images, output_names
from avpcli.jobs import owned_folder
from avpcli.key import load_key
from conftest import folder_contents, snapshot, write_noise_photos

runner = CliRunner()
SIZE = 32  # the tiny targets' input size
# Ciphertexts of the test world, two of them with control characters in their names.
CIPHERTEXTS = ["a.png", "b.png", "sub/c.png", "esc\x1b[31mred.png", "new\nline.png"]
LOCKED = "another avp run is writing into {}; wait until it has finished, or choose another --out"
ENCRYPT = ["--target", "tiny-embedding", "--iterations", "2", "--device", "cpu", "--seed", "4"]


def invoke(*args, env: dict | None = None):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False, env=env)


def prefixed(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (what reading a pipe in keys/ used to do)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def noise_png(path: Path, size: int = SIZE, seed: int = 0, key: Path | None = None) -> Path:
    """Random pixels; with `key`, carrying a nonce that passes that key's check (KeyModel.verify), as a
    ciphertext of it does, so that decrypt takes it for one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    if key is not None:
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        image = _key_model(key).stamp(image, image)
        pixels = torch.round(image[0] * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)
    return path


@functools.lru_cache(maxsize=2)
def _key_model(key: Path):
    return load_key(key).model


def manifest_document(files, fingerprint: str, **fields) -> dict:
    return {"format": "avp-manifest", "version": 1, "kind": "encrypted", "complete": True,
            "target": {"name": "tiny-embedding", "input_size": [SIZE, SIZE]}, "key_fingerprint": fingerprint,
            "settings": {}, "files": files, **fields}


def entry(output) -> dict:
    return {"source": str(output), "output": output, "status": "ok"}


@dataclass
class World:
    """A sentinel tree, an encrypted folder with planted traps, and the key its manifest names."""

    root: Path
    sentinel: Path
    encrypted: Path
    key: Path
    fingerprint: str

    def state(self, *named: Path) -> dict[str, str]:
        """Everything under root but the folders a command may write (`named`)."""
        return snapshot(self.root, skip=named)

    def write_manifest(self, files, **fields) -> None:
        (self.encrypted / "avp-manifest.json").write_text(json.dumps(manifest_document(files, self.fingerprint,
                                                                                         **fields)))

    def decrypt(self, out: Path, *extra, key: Path | None = None, env: dict | None = None):
        return invoke("decrypt", self.encrypted, "--key", key or self.key, "--out", out, "--device", "cpu", *extra,
                      env=env)


@pytest.fixture(scope="module")
def fingerprint(tiny_key_file) -> str:
    return load_key(tiny_key_file).fingerprint


@pytest.fixture
def world(tmp_path, tiny_key_file, fingerprint) -> World:
    sentinel = tmp_path / "sentinel"
    noise_png(sentinel / "victim.png", seed=1)
    noise_png(sentinel / "deep" / "other.png", seed=2)
    (sentinel / "notes.txt").write_text("must never change\n")
    encrypted = tmp_path / "encrypted"
    for seed, name in enumerate(CIPHERTEXTS):
        noise_png(encrypted / name, seed=10 + seed, key=tiny_key_file)
    # Traps: links out of the folder (to a file and to a folder), a link inside it, a loop, a broken
    # link, a pipe, a folder, an empty file, a PNG of the wrong size, a file that is no image.
    os.symlink(sentinel / "victim.png", encrypted / "out-link.png")
    os.symlink(sentinel, encrypted / "linkdir")
    os.symlink("a.png", encrypted / "in-link.png")
    os.symlink("loop.png", encrypted / "loop.png")
    os.symlink("gone.png", encrypted / "broken.png")
    os.mkfifo(encrypted / "pipe.png")
    (encrypted / "dir.png").mkdir()
    (encrypted / "empty.png").write_bytes(b"")
    noise_png(encrypted / "big.png", size=64)
    (encrypted / "text.png").write_text("not a picture\n")
    made = World(tmp_path, sentinel, encrypted, tiny_key_file, fingerprint)
    made.write_manifest([entry(name) for name in CIPHERTEXTS])
    return made


def outputs(out: Path, names) -> list[str]:
    return [printable(str(out / name)) for name in names]


# ------------------------------------------------------------------------------------------------
# 1. Paths from a manifest


def test_decrypt_reads_and_writes_nothing_outside_its_two_folders(world):
    out = world.root / "out"
    out.mkdir()
    os.symlink(world.sentinel, out / "evil")  # planted in --out: writing out/evil/c.png would land in sentinel/
    hostile = [
        (f"{world.sentinel}/victim.png", "unsafe path: an absolute path"),
        (f"{world.encrypted}/a.png", "unsafe path: an absolute path"),  # would overwrite a ciphertext
        ("../sentinel/victim.png", "unsafe path: an empty, '.' or '..' part"),
        ("sub/../../sentinel/notes.txt", "unsafe path: an empty, '.' or '..' part"),
        ("./a.png", "unsafe path: an empty, '.' or '..' part"),
        ("sub//c.png", "unsafe path: an empty, '.' or '..' part"),
        ("out-link.png", "unsafe path: a symbolic link leads out of the folder"),
        ("linkdir/victim.png", "unsafe path: a symbolic link leads out of the folder"),
        ("loop.png", "unsafe path: a symbolic link loop"),
        ("evil/c.png", "unsafe path: a symbolic link leads out of the folder"),
    ]
    world.write_manifest([entry(name) for name in CIPHERTEXTS] + [entry(name) for name, _ in hostile])
    before = world.state(out)
    result = world.decrypt(out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert prefixed(result.stderr, "failed:") == [f"failed: {printable(name)}: {reason}" for name, reason in hostile]
    assert len(result.stderr.splitlines()) == len(hostile)
    assert result.stdout.splitlines() == outputs(out, CIPHERTEXTS)
    assert world.state(out) == before
    written = json.loads((out / "avp-manifest.json").read_text())
    assert written["complete"] and [item["status"] for item in written["files"]] == ["ok"] * 5 + ["failed"] * 10


def test_entries_without_a_usable_name_fail_alone_with_one_line(world):
    out = world.root / "out"
    broken = [{"source": "x", "status": "ok"}, {"source": "x", "output": None, "status": "ok"},
              {"source": "x", "output": 7, "status": "ok"}, {"source": "x", "output": ["a.png"], "status": "ok"},
              {"source": "x", "output": {}, "status": "ok"}, {"source": "x", "output": "", "status": "ok"},
              {"source": "x", "output": True, "status": "ok"}, entry("a.png")]
    reasons = ["missing", "missing", "a number, not a name", "a list, not a name", "an object, not a name", "empty",
               "true or false, not a name"]
    world.write_manifest([entry("a.png")] + broken)
    before = world.state(out)
    result = world.decrypt(out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        *(f"failed: entry {number}: the manifest gives no usable file name ({reason})"
          for number, reason in enumerate(reasons, 2)),
        "failed: a.png: listed twice in the manifest"]
    assert result.stdout.splitlines() == outputs(out, ["a.png"])
    assert world.state(out) == before


def test_encrypt_resume_does_not_trust_an_absolute_output(tmp_path, tiny_key_file):
    photos = write_noise_photos(tmp_path / "photos", ["p1.png", "p2.png"], SIZE, SIZE, seed=3)
    out, sentinel = tmp_path / "out", tmp_path / "sentinel"
    assert invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT).exit_code == 0
    expected = folder_contents(out)
    # The attacker copies p1's ciphertext elsewhere (so that its sha256 still matches) and points the entry there.
    sentinel.mkdir()
    (sentinel / "p1.png").write_bytes((out / "p1.png").read_bytes())
    (out / "p1.png").unlink()
    document = json.loads((out / "avp-manifest.json").read_text())
    document["files"][0]["output"] = str(sentinel / "p1.png")
    (out / "avp-manifest.json").write_text(json.dumps(document))
    before = snapshot(tmp_path, skip=(out,))
    result = invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT)
    # p2 is listed first: finished outputs are reported before the run starts on the rest.
    assert result.exit_code == 0 and result.stdout.splitlines() == outputs(out, ["p2.png", "p1.png"])
    assert result.stderr.splitlines()[-1] == f"2 encrypted, 0 failed -> {out}"
    assert folder_contents(out) == expected  # p1 redone in --out, byte for byte
    assert snapshot(tmp_path, skip=(out,)) == before


# ------------------------------------------------------------------------------------------------
# 2-3. Keys: checked before memory is spent, unusable files in keys/ skipped


BOMB_SCRIPT = """
import os, sys
from safetensors.torch import save
import torch
from avpcli.errors import KeyFileError
from avpcli.key import load_key

def kib(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1])

metadata = {"format": "avp-key", "format_version": "2", "architecture": "resnet-generator", "ngf": "512",
            "blocks": "64", "norm": "batch", "scramble": "none"}
path = sys.argv[1]
with open(path, "wb") as handle:
    handle.write(save({"w": torch.zeros(1)}, metadata=metadata))
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak resident size (VmHWM) to what the process holds now
resident = kib("VmRSS")
try:
    load_key(path)
    message = "loaded"
except KeyFileError as error:
    message = str(error)
print(os.path.getsize(path), kib("VmHWM") - resident, message, sep="\\n")
"""


def test_a_key_declaring_a_huge_network_is_refused_in_under_200_mb(tmp_path):
    path = tmp_path / "bomb.safetensors"
    completed = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(path)], capture_output=True, text=True,
                               timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    size, growth_kb, message = completed.stdout.splitlines()
    # Peak resident memory during the load, above what the process held before it (KiB).
    print(f"key file {size} bytes; peak memory growth while loading it: {int(growth_kb) / 1024:.1f} MB")
    assert int(size) < 300 and int(growth_kb) < 200 * 1024
    assert message == (f"{path} declares an architecture (ngf 512, 64 blocks) whose tensors hold 4,880,243,848 "
                       "values; an avp key holds at most 50,000,000")


def test_decrypt_skips_unusable_files_in_keys_with_a_warning(world, other_tiny_key_file):
    keys = world.root / "keys"
    keys.mkdir()
    from safetensors.torch import save
    import torch

    (keys / "bomb.safetensors").write_bytes(save({"w": torch.zeros(1)}, metadata={
        "format": "avp-key", "format_version": "2", "architecture": "resnet-generator", "ngf": "512", "blocks": "64",
        "norm": "batch", "scramble": "none"}))
    os.mkfifo(keys / "fifo.safetensors")
    with open(keys / "huge.safetensors", "wb") as handle:
        handle.truncate(10 << 30)  # sparse: 10 GiB declared, nothing stored
    os.symlink("/dev/zero", keys / "zero.safetensors")
    (keys / "folder.safetensors").mkdir()
    (keys / "text\x1b[2J.safetensors").write_text("-----BEGIN PRIVATE KEY-----\n")
    (keys / "other.safetensors").write_bytes(other_tiny_key_file.read_bytes())  # a key, but not this one
    (keys / "zz-right.safetensors").write_bytes(world.key.read_bytes())
    out = world.root / "out"
    world.write_manifest([entry("a.png")])
    before = world.state(out, keys / "huge.safetensors")  # not 10 GiB of zeros to hash
    with deadline(60):
        result = invoke("decrypt", world.encrypted, "--out", out, "--device", "cpu", env={"AVP_KEYS": str(keys)})
    assert result.exit_code == 0 and result.stdout.splitlines() == outputs(out, ["a.png"])
    assert result.stderr.splitlines() == [f"warning: skipped: {printable(message)}" for message in (
        f"{keys}/bomb.safetensors declares an architecture (ngf 512, 64 blocks) whose tensors hold "
        "4,880,243,848 values; an avp key holds at most 50,000,000",
        f"{keys}/fifo.safetensors is not a regular file (a folder, pipe or device), so it is not a key",
        f"{keys}/folder.safetensors is not a regular file (a folder, pipe or device), so it is not a key",
        f"{keys}/huge.safetensors is too large to be an avp key (10,737,418,240 bytes; a key has at most "
        "201,048,584)",
        f"{keys}/text\x1b[2J.safetensors is not a safetensors file (corrupt, truncated or another kind of file)",
        f"{keys}/zero.safetensors is not a regular file (a folder, pipe or device), so it is not a key",
    )]
    assert "\x1b" not in result.output
    assert world.state(out, keys / "huge.safetensors") == before


# ------------------------------------------------------------------------------------------------
# 4. One run per output folder; later runs keep earlier entries


def test_a_folder_held_by_a_run_refuses_a_second_one(tmp_path, world):
    photos = write_noise_photos(tmp_path / "photos", ["p1.png", "p2.png"], SIZE, SIZE, seed=5)
    out = tmp_path / "out"
    with owned_folder(out):
        before = world.state()
        encrypting = invoke("encrypt", photos, "--key", world.key, "--out", out, *ENCRYPT)
        decrypting = world.decrypt(out)
        assert world.state() == before
    for result in (encrypting, decrypting):
        assert result.exit_code == 1 and result.stdout == ""
        assert prefixed(result.stderr, "error:") == [f"error: {LOCKED.format(out)}"]
    # The shards of one run share a folder; a run without shards still may not join them.
    with owned_folder(out, shared=True):
        shard = invoke("encrypt", photos, "--key", world.key, "--out", out, *ENCRYPT, "--shard", "1/2")
        whole = invoke("encrypt", photos, "--key", world.key, "--out", out, *ENCRYPT)
    assert shard.exit_code == 0 and shard.stdout.splitlines() == outputs(out, ["p1.png"])
    assert whole.exit_code == 1 and prefixed(whole.stderr, "error:") == [f"error: {LOCKED.format(out)}"]


# Both processes stop inside the lock until the test says go, so whichever takes the folder first
# still holds it when the other one arrives, however the two are scheduled.
RACER = """
import sys, time
from pathlib import Path
import avpcli.jobs.encrypt as jobs

inside, go = Path(sys.argv[1]), Path(sys.argv[2])
encrypt_owned = jobs._encrypt_owned

def held(encryptor, run, on_event):
    inside.write_text("holding")
    while not go.exists():
        time.sleep(0.02)
    return encrypt_owned(encryptor, run, on_event)

jobs._encrypt_owned = held
from avpcli.cli import app
app(sys.argv[3:], prog_name="avp")
"""


def test_two_runs_started_at_once_into_one_folder_exactly_one_proceeds(tmp_path, tiny_key_file):
    inputs = [write_noise_photos(tmp_path / f"photos-{run}", [f"{run}{index}.png" for index in range(2)], SIZE, SIZE,
                                 seed=index) for index, run in enumerate("xy")]
    out, go = tmp_path / "out", tmp_path / "go"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(
        [sys.executable, "-c", RACER, str(tmp_path / f"inside-{index}"), str(go), "encrypt", str(photos), "--key",
         str(tiny_key_file), "--out", str(out), *ENCRYPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environment) for index, photos in enumerate(inputs)]
    try:
        finish = time.monotonic() + 120
        while not any(process.poll() is not None for process in processes) and time.monotonic() < finish:
            time.sleep(0.05)
        go.write_text("go")
        results = [(process.wait(timeout=120), *process.communicate()) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert sorted(code for code, _, _ in results) == [0, 1], results
    winner = next(index for index, (code, _, _) in enumerate(results) if code == 0)
    loser_code, loser_out, loser_err = results[1 - winner]
    assert loser_out == "" and prefixed(loser_err, "error:") == [f"error: {LOCKED.format(out)}"]
    assert [path.exists() for path in (tmp_path / "inside-0", tmp_path / "inside-1")] == [i == winner for i in (0, 1)]
    files = json.loads((out / "avp-manifest.json").read_text())["files"]
    assert sorted(item["output"] for item in files) == sorted(path.name for path in out.glob("*.png"))
    assert {item["source"][0] for item in files} == {"xy"[winner]}


def test_runs_one_after_another_with_other_inputs_keep_every_entry(tmp_path, tiny_key_file):
    first = write_noise_photos(tmp_path / "first", [f"f{index}.png" for index in range(3)], SIZE, SIZE, seed=6)
    second = write_noise_photos(tmp_path / "second", [f"s{index}.png" for index in range(3)], SIZE, SIZE, seed=7)
    out = tmp_path / "out"
    for photos in (first, second, first):  # the third run finds its files done and keeps the second's
        result = invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *ENCRYPT)
        assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    assert result.stderr.splitlines()[-1] == f"3 encrypted, 0 failed -> {out}"
    # --overwrite redoes this run's own files and still keeps the other run's.
    assert invoke("encrypt", second, "--key", tiny_key_file, "--out", out, *ENCRYPT, "--overwrite").exit_code == 0
    files = json.loads((out / "avp-manifest.json").read_text())["files"]
    on_disk = sorted(path.name for path in out.glob("*.png"))
    assert len(on_disk) == 6 and sorted(item["output"] for item in files) == on_disk
    assert all(hashlib.sha256((out / item["output"]).read_bytes()).hexdigest() == item["sha256"] for item in files)
    decrypted = tmp_path / "decrypted"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", decrypted, "--device", "cpu")
    assert result.exit_code == 0 and sorted(Path(line).name for line in result.stdout.splitlines()) == on_disk
    # A sharded run into the folder keeps them too: the last shard's merge adds the earlier entries.
    third = write_noise_photos(tmp_path / "third", [f"t{index}.png" for index in range(3)], SIZE, SIZE, seed=8)
    for shard in ("2/2", "1/2"):
        assert invoke("encrypt", third, "--key", tiny_key_file, "--out", out, *ENCRYPT, "--shard", shard).exit_code == 0
    files = json.loads((out / "avp-manifest.json").read_text())["files"]
    assert sorted(item["output"] for item in files) == sorted(path.name for path in out.glob("*.png"))
    assert [item["source"] for item in files[:3]] == ["t0.png", "t1.png", "t2.png"] and len(files) == 9


# ------------------------------------------------------------------------------------------------
# 5. A full disk while the manifest is rewritten


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_a_full_disk_while_rewriting_the_manifest_is_one_line(tmp_path, world, monkeypatch, command):
    photos = write_noise_photos(tmp_path / "photos", ["p1.png", "p2.png"], SIZE, SIZE, seed=8)
    out = tmp_path / "out"
    real_replace = os.replace
    manifest_writes = []

    def replace(source, target, *args, **kwargs):
        if Path(target).name == "avp-manifest.json":
            manifest_writes.append(target)
            if len(manifest_writes) == 2:  # the first rewrite after the run began
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    world.write_manifest([entry("a.png")])
    before = world.state(out)
    if command == "encrypt":
        result = invoke("encrypt", photos, "--key", world.key, "--out", out, *ENCRYPT, "--batch-size", "1")
    else:
        result = world.decrypt(out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == f"error: cannot write {out}/avp-manifest.json: No space left on device"
    assert prefixed(result.stderr, "error:") == result.stderr.splitlines()[-1:]
    assert not list(out.rglob(".*.part")) and world.state(out) == before


# ------------------------------------------------------------------------------------------------
# 6. Control characters in names


def test_names_with_control_characters_print_one_per_line_or_as_they_are_with_null(tmp_path, world):
    names = ["new\nline.png", "esc\x1b[31mred.png", "back\\slash.png", "tab\there.png", "latin-\udce9.png"]
    photos = write_noise_photos(tmp_path / "photos", names, SIZE, SIZE, seed=9)
    (photos / "bad\nname.jpg").write_bytes(b"garbage")
    sources = find_images([photos])
    expected = [output_names(sources)[source.relative] for source in sources if source.path.suffix == ".png"]
    out = tmp_path / "out"
    result = invoke("encrypt", photos, "--key", world.key, "--out", out, *ENCRYPT)
    assert result.exit_code == 1 and "\x1b" not in result.output
    assert result.stdout.splitlines() == outputs(out, expected)
    assert "back\\\\slash.png" in result.stdout and "latin-\\xe9.png" in result.stdout
    assert prefixed(result.stderr, "failed:") == [
        "failed: bad\\nname.jpg: not an image PIL can read (unknown or corrupt format)"]
    assert all((out / name).is_file() for name in expected)

    null = invoke("encrypt", photos, "--key", world.key, "--out", out, *ENCRYPT, "--null")
    assert null.exit_code == 1
    assert null.stdout_bytes.split(b"\0") == [os.fsencode(out / name) for name in expected] + [b""]
    decrypted = tmp_path / "decrypted"
    lines = invoke("decrypt", out, "--key", world.key, "--out", decrypted, "--device", "cpu")
    assert lines.exit_code == 0 and lines.stdout.splitlines() == outputs(decrypted, expected)
    raw = invoke("decrypt", out, "--key", world.key, "--out", decrypted, "--device", "cpu", "-0")
    assert raw.exit_code == 0 and raw.stdout_bytes.split(b"\0") == [os.fsencode(decrypted / name)
                                                                    for name in expected] + [b""]
    both = invoke("decrypt", out, "--key", world.key, "--out", decrypted, "--null", "--json")
    assert both.exit_code == 2 and both.stderr.startswith("error: --null and --json do not go together")


# ------------------------------------------------------------------------------------------------
# 7. Links out of the input folder; a killed decrypt; reruns


def test_a_link_out_of_the_input_folder_is_refused_unless_follow_links(tmp_path, world):
    photos = write_noise_photos(tmp_path / "photos", ["real.png"], SIZE, SIZE, seed=11)
    os.symlink("real.png", photos / "inside-link.png")
    os.symlink(world.sentinel / "victim.png", photos / "outside-link.png")
    os.symlink(world.sentinel, photos / "outside-folder")  # links to folders are never searched
    out, followed = tmp_path / "out", tmp_path / "followed"
    before = world.state(out, followed)
    result = invoke("encrypt", photos, "--key", world.key, "--out", out, *ENCRYPT)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == outputs(out, ["inside-link.png", "real.png"])
    assert prefixed(result.stderr, "failed:") == ["failed: outside-link.png: a symbolic link to a file outside the "
                                                  "input folder (give --follow-links to follow it)"]
    result = invoke("encrypt", photos, "--key", world.key, "--out", followed, *ENCRYPT, "--follow-links")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == outputs(followed, ["inside-link.png", "outside-link.png", "real.png"])
    assert world.state(out, followed) == before


def many_ciphertexts(world: World, count: int) -> list[str]:
    names = [f"d{index % 7}/c{index:04d}.png" for index in range(count)]
    for index, name in enumerate(names):
        noise_png(world.encrypted / name, seed=1200 + index, key=world.key)
    world.write_manifest([entry(name) for name in names] + [entry("nope.png")])
    return names


def test_kill_9_during_decrypt_then_a_rerun_gives_the_uninterrupted_result(world):
    names = many_ciphertexts(world, 400)
    reference = world.root / "reference"
    assert world.decrypt(reference, "--batch-size", "4").exit_code == 1  # nope.png fails
    expected = folder_contents(reference)
    out = world.root / "killed"
    command = [sys.executable, "-m", "avpcli", "decrypt", str(world.encrypted), "--key", str(world.key), "--out",
               str(out), "--device", "cpu", "--batch-size", "4"]
    kills = 0
    for goal in (60, 250):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        finish = time.monotonic() + 120
        while (process.poll() is None and time.monotonic() < finish
               and sum(1 for path in out.rglob("*.png") if not path.name.startswith(".")) < goal):
            time.sleep(0.005)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1, "every run finished before it could be killed; give it more files"
    result = world.decrypt(out, "--batch-size", "4")
    assert result.exit_code == 1 and result.stdout.splitlines() == outputs(out, names)
    assert not list(out.rglob(".*.part"))
    assert folder_contents(out) == expected


def test_a_decrypt_rerun_keeps_finished_outputs_and_refuses_what_is_not_its_own(world, other_tiny_key_file):
    out = world.root / "out"
    assert world.decrypt(out).exit_code == 0
    expected = folder_contents(out)
    before = {name: (out / name).stat().st_mtime_ns for name in CIPHERTEXTS}
    (out / "b.png").write_bytes(b"tampered")
    again = world.decrypt(out)
    assert again.exit_code == 0 and again.stdout.splitlines() == outputs(out, CIPHERTEXTS)
    assert folder_contents(out) == expected
    assert all((out / name).stat().st_mtime_ns == before[name] for name in CIPHERTEXTS if name != "b.png")
    other = world.decrypt(out, "--force", key=other_tiny_key_file)
    assert other.exit_code == 2 and other.stderr.splitlines()[-1] == (
        f"error: {out} holds a decryption with another key; use --overwrite to redo it, or choose another --out")
    assert folder_contents(out) == expected
    assert world.decrypt(out, "--force", "--overwrite", key=other_tiny_key_file).exit_code == 0
    # An encrypted folder is not a decryption to resume.
    (world.root / "other").mkdir()
    (world.root / "other" / "avp-manifest.json").write_text(json.dumps(manifest_document([], world.fingerprint)))
    refused = world.decrypt(world.root / "other")
    assert refused.exit_code == 2 and refused.stderr == (
        f"error: {world.root / 'other'} holds avp output of another kind (encrypted); choose another --out\n")


# ------------------------------------------------------------------------------------------------
# Generated: tampered manifests


MISSING = object()  # an entry without an "output" field
DAMAGED = "{manifest} is damaged: its file list is not a list of entries with a status"
# Output values refused before anything is read: (value, the reason after "failed: <value>: ").
UNSAFE = [
    *((value, "unsafe path: an absolute path") for value in (
        "{sentinel}/victim.png", "{sentinel}/notes.txt", "{encrypted}/a.png", "{root}/outs/x.png", "/etc/passwd", "/",
        "//a.png")),
    *((value, "unsafe path: an empty, '.' or '..' part") for value in (
        "..", ".", "../sentinel/victim.png", "sub/../../sentinel/notes.txt", "../../../../../../etc/passwd",
        "sub/..", "a.png/..", "./a.png", "sub/./c.png", "sub//c.png", "a.png/")),
    *((value, "unsafe path: a symbolic link leads out of the folder") for value in (
        "out-link.png", "linkdir/victim.png", "linkdir/deep/other.png", "linkdir/notes.txt", "linkdir/new.png")),
    ("loop.png", "unsafe path: a symbolic link loop"),
    ("loop.png/x.png", "unsafe path: a symbolic link loop"),
    *((value, "unsafe path: it holds a NUL character") for value in ("a.png\0", "\0", "sub/\0c.png", "/\0")),
]
# Output values that name no file: (value, what the reason says of it); failures are labelled "entry N".
NO_NAME = [(MISSING, "missing"), (None, "missing"), ("", "empty"), (0, "a number, not a name"),
           (7, "a number, not a name"), (-1, "a number, not a name"), (1.5, "a number, not a name"),
           (True, "true or false, not a name"), (False, "true or false, not a name"), ([], "a list, not a name"),
           (["a.png"], "a list, not a name"), ({}, "an object, not a name"),
           ({"name": "a.png"}, "an object, not a name")]
# Names that pass the check, then decrypt (None) or fail when read.
VANISHED = "cannot read: file vanished"
NOT_AN_IMAGE = "cannot read: not an image PIL can read (unknown or corrupt format)"
READABLE = [*((name, None) for name in CIPHERTEXTS), ("in-link.png", None),
            # A backslash is part of a name on POSIX, not a separator.
            *((name, VANISHED) for name in ("nope.png", "sub/nope.png", "deeper/and/deeper.png", "new\nnope.png",
                                            "..\\..\\sentinel\\victim.png")),
            ("broken.png", "cannot read: broken symbolic link"),
            ("pipe.png", "cannot read: not a regular file (a pipe, socket or device)"),
            ("dir.png", "cannot read: a folder, not an image file"), ("empty.png", "cannot read: empty file"),
            ("big.png", "cannot read: 64x64 pixels, not the target's input size"),
            ("text.png", NOT_AN_IMAGE), ("avp-manifest.json", NOT_AN_IMAGE)]
INPUT_SIZE = "{manifest} is damaged: its target's input_size is not two sides in pixels"
# Damage to the manifest as a whole: (change to the document, the one-line error). It stops before any output.
WHOLE = [
    *((lambda document, bad=bad: document["files"].append(bad), DAMAGED)
      for bad in (3, "a.png", None, [], {"output": "a.png"}, {"output": "a.png", "status": 1},
                  {"output": "a.png", "status": None})),
    *((lambda document, bad=bad: document.update(files=bad), DAMAGED) for bad in ({}, "a.png", 3)),
    *((lambda document, bad=bad: document["target"].update(input_size=bad), INPUT_SIZE)
      for bad in ([32], "32x32", [0, 32], [32, 32, 3], [True, 32], [32.0, 32], [32, 1 << 20])),
    *((change, "the manifest of {encrypted} does not give the target's input size; it is damaged") for change in (
        lambda document: document["target"].pop("input_size"),
        lambda document: document["target"].update(input_size=None))),
    (lambda document: document.update(target=[]), "{manifest} is damaged: its target is not a JSON object"),
    (lambda document: document.update(version=2), "{manifest} was written by a newer avp (manifest version 2)"),
    (lambda document: document.update(version="1"), "{manifest} is damaged: its version is not a whole number"),
    (lambda document: document.update(format="avp"), "{manifest} is not an avp manifest"),
    (lambda document: document.update(kind=3), "{manifest} is damaged: its kind is not a JSON string"),
    (lambda document: document.update(settings=[]), "{manifest} is damaged: its settings is not a JSON object"),
    (lambda document: document.update(key_fingerprint=5),
     "{manifest} is damaged: its key_fingerprint is not a JSON string"),
    (lambda document: document.update(run="../../names"),
     "{manifest} is damaged: its run id is not a short hexadecimal id"),
    (lambda document: document.update(shard="1/2/3"), "{manifest} is damaged: its shard is not i/n"),
    (lambda document: document.update(key_fingerprint="0" * 64),
     "{key} is not the key these images were encrypted with (fingerprint {fingerprint}… vs 0000000000000000… "
     "in the manifest); use --force to decrypt anyway"),
]
# Manifests that are not JSON documents at all: (text, the one-line error).
TEXTS = [(b"", "cannot read manifest {manifest}: empty file"), (b"[]", "{manifest} is not an avp manifest"),
         (b"null", "{manifest} is not an avp manifest"), (b"[" * 100_000 + b"]" * 100_000, None),
         (b'{"format": "avp-manifest"', None), (b"\xff\xfe", None)]


def generated_entries(rng: np.random.Generator, count: int, world: World) -> list:
    """`count` random entries; each is (entry, kind, value, reason) with kind path, no-name, read or skip."""
    places = {"sentinel": world.sentinel, "encrypted": world.encrypted, "root": world.root}
    made = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.35:
            kind, (value, reason) = "read", READABLE[rng.integers(len(READABLE))]
        elif roll < 0.65:
            kind, (value, reason) = "path", UNSAFE[rng.integers(len(UNSAFE))]
            value = value.format(**places)
        elif roll < 0.85:
            kind, (value, reason) = "no-name", NO_NAME[rng.integers(len(NO_NAME))]
        else:  # an entry that did not succeed is not decrypted, whatever it names
            kind, reason = "skip", None
            value = [name for name, _ in READABLE + UNSAFE][rng.integers(len(READABLE) + len(UNSAFE))]
        status = "ok" if kind != "skip" else ["failed", "no_face", "pending", "OK", "", "ok "][rng.integers(6)]
        item = {"source": f"s{len(made)}", "status": status}
        if value is not MISSING:
            item["output"] = value
        made.append((item, kind, value, reason))
    return made


def expected_decryption(entries: list, out: Path) -> tuple[int, list[str], list[str]]:
    """What decrypt must do with these entries: (exit code, stdout lines, stderr lines)."""
    refused, unreadable, written, seen = [], [], [], set()
    for number, (_, kind, value, reason) in enumerate(entries, 1):
        if kind == "no-name":
            refused.append(f"failed: entry {number}: the manifest gives no usable file name ({reason})")
        elif kind == "path":
            refused.append(f"failed: {printable(value)}: {reason}")
        elif kind == "read" and value in seen:
            refused.append(f"failed: {printable(value)}: listed twice in the manifest")
        elif kind == "read":
            seen.add(value)
            if reason is None:
                written.append(value)
            else:
                unreadable.append(f"failed: {printable(value)}: {reason}")
    failures = refused + unreadable  # names are all checked first, then ciphertexts read in order
    return (1 if failures else 0), outputs(out, written), failures


def test_generated_tampered_manifests_each_get_their_exact_outcome(world):
    outs = world.root / "outs"
    manifest = world.encrypted / "avp-manifest.json"
    before = world.state(outs, manifest)
    places = {"manifest": manifest, "encrypted": world.encrypted, "key": world.key,
              "fingerprint": world.fingerprint[:16]}
    cases = 0
    # The manifest as a whole is damaged: one line, exit 1, nothing written.
    for number, (text, message) in enumerate([(None, message) for _, message in WHOLE] + TEXTS):
        if text is None:
            document = manifest_document([entry(name) for name in CIPHERTEXTS], world.fingerprint)
            WHOLE[number][0](document)
            text = json.dumps(document).encode()
        manifest.write_bytes(text)
        out = outs / f"whole-{number}"
        result = world.decrypt(out)
        if message is None:  # the JSON parser's own words
            assert result.stderr.startswith(f"error: cannot read manifest {printable(str(manifest))}: "), result.stderr
        else:
            assert result.stderr == f"error: {printable(message.format(**places))}\n", (number, result.stderr)
        assert result.exit_code == 1 and result.stdout == "" and not out.exists(), number
        cases += 1
    # Entry by entry: each bad one fails alone with its reason, the others are decrypted.
    for number in range(200):
        rng = np.random.default_rng(1000 + number)
        count = 20_000 if number == 0 else 2_000 if number % 40 == 1 else int(rng.integers(1, 16))
        entries = generated_entries(rng, count, world)
        world.write_manifest([item for item, *_ in entries])
        out = outs / str(number)
        code, stdout, stderr = expected_decryption(entries, out)
        result = world.decrypt(out)
        assert (result.exit_code, result.stdout.splitlines()) == (code, stdout), number
        assert result.stderr.splitlines() == stderr, number
        written = json.loads((out / "avp-manifest.json").read_text())
        assert written["summary"].get("status_failed", 0) == len(stderr) and written["complete"], number
        cases += 1
    assert cases >= 230
    assert world.state(outs, manifest) == before


# ------------------------------------------------------------------------------------------------
# Generated: malformed key files


def key_parts(data: bytes) -> tuple[dict, bytes]:
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]), data[8 + length:]


def key_bytes(header, body: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def with_metadata(data: bytes, **changes) -> bytes:
    header, body = key_parts(data)
    metadata = {**header["__metadata__"], **changes}
    header["__metadata__"] = {name: value for name, value in metadata.items() if value is not None}
    return key_bytes(header, body)


def with_header_entry(data: bytes, name: str, **changes) -> bytes:
    header, body = key_parts(data)
    header[name] = {**header[name], **changes}
    return key_bytes(header, body)


def resaved(data: bytes, change) -> bytes:
    """The key's tensors changed by `change(tensors)`, saved again as a well-formed safetensors file."""
    from safetensors.torch import load, save

    header, _ = key_parts(data)
    tensors = load(data)
    change(tensors)
    return save(tensors, metadata=header["__metadata__"])


def malformed_keys(data: bytes, folder: Path) -> list[tuple[str, Path, str]]:
    """(what is wrong, the file, the error message with {path}) for each generated key file."""
    import torch

    header, body = key_parts(data)
    header_end = len(data) - len(body)
    not_safetensors = "{path} is not a safetensors file (corrupt, truncated or another kind of file)"
    not_regular = "{path} is not a regular file (a folder, pipe or device), so it is not a key"
    damaged = "{path} is damaged: tensor network.1.weight has shape {shape} {dtype}, expected (4, 3, 7, 7) F32"
    out_of_range = "{path} is not a usable avp key: metadata field {field!r} = {value} is out of range"
    not_a_number = "{path} is not a usable avp key: metadata field {field!r} is missing or not a number"
    mismatch = "{path} does not match its declared architecture ({architecture}): {what}"
    size = "{path} is damaged: it holds {held:,} bytes of tensor data where its architecture needs 35,908 " \
           "(truncated or padded)"
    cases: list[tuple[str, bytes | None, str]] = [
        *((f"cut to {cut} bytes", data[:cut], not_safetensors) for cut in (0, 1, 7, 8, 9, 100, header_end - 1)),
        *((f"cut to {cut} bytes", data[:cut], size.replace("{held:,}", f"{cut - header_end:,}"))
          for cut in (header_end, header_end + 10, len(data) - 1)),
        *((f"{extra} bytes added", data + b"\0" * extra, size.replace("{held:,}", f"{len(body) + extra:,}"))
          for extra in (1, 4, 4096)),
        ("header length 2**63", (2 ** 63).to_bytes(8, "little") + data[8:], not_safetensors),
        ("header length over 1 MiB", ((1 << 20) + 1).to_bytes(8, "little") + data[8:] + bytes(1 << 20),
         not_safetensors),
        ("header not JSON", data[:8] + b"?" * (header_end - 8) + body, not_safetensors),
        ("header not UTF-8", key_bytes(b"\xff" * 64, body), not_safetensors),
        ("header a JSON list", key_bytes(b"[]", body), not_safetensors),
        ("header a JSON string", key_bytes(b'"key"', body), not_safetensors),
        ("header nested 100,000 deep", key_bytes(b"[" * 100_000 + b"]" * 100_000, body), not_safetensors),
        ("metadata a list", key_bytes({**header, "__metadata__": []}, body), not_safetensors),
        ("a metadata value a number", key_bytes({**header, "__metadata__": {**header["__metadata__"], "ngf": 4}}, body),
         not_safetensors),
        ("a tensor entry a number", key_bytes({**header, "network.1.weight": 5}, body), not_safetensors),
        ("no metadata", key_bytes({name: value for name, value in header.items() if name != "__metadata__"}, body),
         "{path} is a safetensors file but not an avp key (no 'avp-key' metadata)"),
        ("format pt", with_metadata(data, format="pt"),
         "{path} is a safetensors file but not an avp key (no 'avp-key' metadata)"),
        ("format version 3", with_metadata(data, format_version="3"),
         "{path} is an avp key of format version '3'; this avp (0.3.0) reads versions 1, 2"),
        ("no format version", with_metadata(data, format_version=None),
         "{path} is an avp key of format version None; this avp (0.3.0) reads versions 1, 2"),
        ("format version 1 with a scramble", with_metadata(data, format_version="1"),
         mismatch.format(path="{path}", architecture="ngf 4, 1 blocks", what="unexpected tensor scramble.secret")),
        ("scramble none with a scramble", with_metadata(data, scramble="none"),
         mismatch.format(path="{path}", architecture="ngf 4, 1 blocks", what="unexpected tensor scramble.secret")),
        ("unknown scramble", with_metadata(data, scramble="rot13"),
         "{path} has a scramble this avp does not know: 'rot13'"),
        ("architecture unet", with_metadata(data, architecture="unet"), "{path} has unknown architecture 'unet'"),
        ("no architecture", with_metadata(data, architecture=None), "{path} has unknown architecture None"),
        *((f"ngf {value!r}", with_metadata(data, ngf=value), not_a_number.format(path="{path}", field="ngf"))
          for value in ("abc", "4.0", "", None)),
        *((f"ngf {value}", with_metadata(data, ngf=value), out_of_range.format(path="{path}", field="ngf", value=value))
          for value in ("0", "-4", "513", "100000000")),
        *((f"blocks {value}", with_metadata(data, blocks=value),
           out_of_range.format(path="{path}", field="blocks", value=value)) for value in ("-1", "65")),
        ("norm group", with_metadata(data, norm="group"), "{path} has unknown norm 'group'"),
        ("ngf 8", with_metadata(data, ngf="8"),
         "{path} is damaged: tensor network.1.weight has shape (4, 3, 7, 7) F32, expected (8, 3, 7, 7) F32"),
        ("blocks 2", with_metadata(data, blocks="2"), mismatch.format(
            path="{path}", architecture="ngf 4, 2 blocks", what="missing tensor network.11.body.1.weight")),
        *((f"norm {norm}", with_metadata(data, norm=norm), mismatch.format(
            path="{path}", architecture="ngf 4, 1 blocks", what="missing tensor network.1.bias"))
          for norm in ("instance", "none")),
        ("ngf 512, 64 blocks", with_metadata(data, ngf="512", blocks="64"),
         "{path} declares an architecture (ngf 512, 64 blocks) whose tensors hold 4,880,243,880 values; an avp key "
         "holds at most 50,000,000"),
        ("ngf 128, 40 blocks", with_metadata(data, ngf="128", blocks="40"),
         "{path} declares an architecture (ngf 128, 40 blocks) whose tensors hold 191,899,512 values; an avp key "
         "holds at most 50,000,000"),
        ("the paper's architecture", with_metadata(data, ngf="64", blocks="9"), mismatch.format(
            path="{path}", architecture="ngf 64, 9 blocks", what="missing tensor network.11.body.1.weight")),
        ("a tensor missing", resaved(data, lambda tensors: tensors.pop("network.1.weight")),
         mismatch.format(path="{path}", architecture="ngf 4, 1 blocks", what="missing tensor network.1.weight")),
        ("the scramble secret missing", resaved(data, lambda tensors: tensors.pop("scramble.secret")),
         mismatch.format(path="{path}", architecture="ngf 4, 1 blocks", what="missing tensor scramble.secret")),
        ("an extra tensor", resaved(data, lambda tensors: tensors.update(extra=torch.zeros(2))),
         mismatch.format(path="{path}", architecture="ngf 4, 1 blocks", what="unexpected tensor extra")),
        ("a tensor renamed", resaved(data, lambda tensors: tensors.update(
            {"network.1.weights": tensors.pop("network.1.weight")})),
         mismatch.format(path="{path}", architecture="ngf 4, 1 blocks", what="missing tensor network.1.weight")),
        ("a smaller kernel", resaved(data, lambda tensors: tensors.update(
            {"network.1.weight": torch.zeros(4, 3, 5, 5)})),
         damaged.format(path="{path}", shape=(4, 3, 5, 5), dtype="F32")),
        ("a transposed kernel", resaved(data, lambda tensors: tensors.update(
            {"network.1.weight": tensors["network.1.weight"].transpose(0, 1).contiguous()})),
         damaged.format(path="{path}", shape=(3, 4, 7, 7), dtype="F32")),
        *((f"weights in {dtype}", resaved(data, lambda tensors, dtype=dtype: tensors.update(
            {"network.1.weight": tensors["network.1.weight"].to(getattr(torch, dtype))})),
           damaged.format(path="{path}", shape=(4, 3, 7, 7), dtype=name))
          for dtype, name in (("float16", "F16"), ("float64", "F64"), ("bfloat16", "BF16"), ("int32", "I32"))),
        ("the secret as int64", resaved(data, lambda tensors: tensors.update(
            {"scramble.secret": tensors["scramble.secret"].long()})),
         "{path} is damaged: tensor scramble.secret has shape (32,) I64, expected (32,) U8"),
        ("a 16-byte secret", resaved(data, lambda tensors: tensors.update(
            {"scramble.secret": tensors["scramble.secret"][:16].clone()})),
         "{path} is damaged: tensor scramble.secret has shape (16,) U8, expected (32,) U8"),
        ("a batch count as float", resaved(data, lambda tensors: tensors.update(
            {"network.2.num_batches_tracked": tensors["network.2.num_batches_tracked"].float()})),
         "{path} is damaged: tensor network.2.num_batches_tracked has shape () F32, expected () I64"),
        ("a shape as text", with_header_entry(data, "network.1.weight", shape="4,3,7,7"),
         "{path} is damaged: tensor network.1.weight has shape '4,3,7,7' F32, expected (4, 3, 7, 7) F32"),
        ("a negative shape", with_header_entry(data, "network.1.weight", shape=[-4, 3, 7, 7]),
         damaged.format(path="{path}", shape=(-4, 3, 7, 7), dtype="F32")),
        ("an unknown dtype", with_header_entry(data, "network.1.weight", dtype="XYZ"),
         damaged.format(path="{path}", shape=(4, 3, 7, 7), dtype="XYZ")),
        *((f"a weight {value}", resaved(data, lambda tensors, value=value: tensors["network.1.weight"].view(-1)
                                         .__setitem__(0, value)),
           "{path} is damaged: tensor network.1.weight holds NaN or infinite values")
          for value in (float("nan"), float("inf"), float("-inf"))),
        ("overlapping offsets", with_header_entry(data, "network.1.weight", data_offsets=[60, 2412]), not_safetensors),
        ("offsets past the end", with_header_entry(data, "scramble.secret", data_offsets=[35876, 99999]),
         not_safetensors),
        ("offsets as text", with_header_entry(data, "scramble.secret", data_offsets="35876-35908"), not_safetensors),
        ("a pipe", None, not_regular), ("a folder", None, not_regular), ("/dev/zero", None, not_regular),
        ("a sparse 300 MB file", None, "{path} is too large to be an avp key (314,572,800 bytes; a key has at most "
                                       "201,048,584)"),
        ("a broken link", None, "key file not found: {path}"),
        ("a link loop", None, "cannot read key file {path}: Too many levels of symbolic links"),
        ("no file", None, "key file not found: {path}"),
    ]
    made = []
    for number, (what, content, message) in enumerate(cases):
        path = folder / f"key-{number:02d}.safetensors"
        if content is not None:
            path.write_bytes(content)
        elif what == "a pipe":
            os.mkfifo(path)
        elif what == "a folder":
            path.mkdir()
        elif what == "/dev/zero":
            os.symlink("/dev/zero", path)
        elif what.startswith("a sparse"):
            with open(path, "wb") as handle:
                handle.truncate(300 << 20)
        elif what == "a broken link":
            os.symlink("nowhere", path)
        elif what == "a link loop":
            os.symlink(path.name, path)
        made.append((what, path, message))
    return made


def test_generated_malformed_keys_are_each_refused_with_their_reason(world):
    keys = world.root / "bad-keys"
    keys.mkdir()
    cases = malformed_keys(world.key.read_bytes(), keys)
    assert len(cases) >= 50
    out = world.root / "out"
    big = [path for what, path, _ in cases if what.startswith("a sparse")]
    before = world.state(out, *big)
    with deadline(120):
        for what, path, message in cases:
            result = world.decrypt(out, key=path)
            assert result.exit_code == 1 and result.stdout == "" and not out.exists(), what
            assert result.stderr == f"error: {printable(message.format(path=path))}\n", what
    assert world.state(out, *big) == before
    # What is not wrong still loads: the original, a format-1 key (no scramble), extra metadata fields.
    original = world.key.read_bytes()
    for what, content in (("original", original),
                          ("format 1", resaved(with_metadata(original, format_version="1"),
                                               lambda tensors: tensors.pop("scramble.secret"))),
                          ("more metadata", with_metadata(original, comment="made by hand"))):
        path = keys / f"good-{what}.safetensors"
        path.write_bytes(content)
        assert load_key(path).fingerprint, what
