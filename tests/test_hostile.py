"""Hostile manifests, keys, names and concurrent runs (issue #16).

Each case asserts its exact outcome: the exit code, the one-line reason, and that no file outside
the folders the command names has changed (a hash over a sentinel tree of everything else).
"""

from __future__ import annotations

import errno
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


def noise_png(path: Path, size: int = SIZE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


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
        noise_png(encrypted / name, seed=10 + seed)
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
    assert message == (f"{path} declares an architecture (ngf 512, 64 blocks) of 4,880,243,848 parameters; "
                       "an avp key has at most 50,000,000")


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
        f"{keys}/bomb.safetensors declares an architecture (ngf 512, 64 blocks) of 4,880,243,848 parameters; "
        "an avp key has at most 50,000,000",
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
import avpcli.jobs as jobs

inside, go = Path(sys.argv[1]), Path(sys.argv[2])
encrypt_owned = jobs._encrypt_owned

def held(job, on_event):
    inside.write_text("holding")
    while not go.exists():
        time.sleep(0.02)
    return encrypt_owned(job, on_event)

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
    import hashlib

    assert all(hashlib.sha256((out / item["output"]).read_bytes()).hexdigest() == item["sha256"] for item in files)
    decrypted = tmp_path / "decrypted"
    result = invoke("decrypt", out, "--key", tiny_key_file, "--out", decrypted, "--device", "cpu")
    assert result.exit_code == 0 and sorted(Path(line).name for line in result.stdout.splitlines()) == on_disk


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
    assert null.exit_code == 1 and null.stdout_bytes.split(b"\0") == [os.fsencode(out / name) for name in expected] + [b""]
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
    rng = np.random.default_rng(12)
    for name in names:
        (world.encrypted / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(world.encrypted / name)
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
