"""Runs on a Ray cluster (avpcli.jobs.distributed, issue #25): on a local cluster of 2 CPUs, `--ray` writes what a
local run writes byte for byte, survives a worker killed mid-run and a driver killed and rerun, and refuses an
output folder that a worker cannot reach."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avpcli import AvpError, Encryptor, UsageError, encrypt_folder, encrypt_on_ray
from avpcli.cli import app
from avpcli.jobs import ray_pool
from conftest import REPO, folder_contents, write_noise_photos

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
# Ray Data warns of its own settings' names as it copies them.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

runner = CliRunner()
SETTINGS = ["--target", "tiny-embedding", "--iterations", "30", "--batch-size", "3", "--device", "cpu", "--seed", "4"]
ACTOR_TITLE = b"ray::MapWorker(MapBatches(EncryptActor))"


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster of this machine for the module (2 CPUs, no dashboard); its address, for drivers in other
    processes. Its workers import this checkout's avpcli and this module, whichever job starts them."""
    saved = os.environ.get("PYTHONPATH")
    # This module too, for its own actors (CrashingWorker).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), saved]))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def invoke(*arguments: object):
    return runner.invoke(app, [str(argument) for argument in arguments], catch_exceptions=False)


def json_lines(output: str, folder: Path) -> list[dict]:
    """A run's NDJSON lines, sorted, with its output folder's name taken out (to compare two runs)."""
    return sorted((json.loads(line.replace(str(folder), "OUT")) for line in output.splitlines()), key=json.dumps)


def actor_processes() -> list[int]:
    """The encrypting actors of this process's cluster (their parent, the raylet, is this process's child)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            grandparent = int((Path("/proc") / str(parent) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if title.startswith(ACTOR_TITLE) and grandparent == os.getpid():
            found.append(int(entry.name))
    return found


def kill_an_actor_once_a_ciphertext_is_rewritten(folder: Path) -> tuple[threading.Thread, list[int]]:
    """A thread that kills one encrypting actor (SIGKILL) as soon as the first ciphertext in `folder` is written
    anew (its time set to 0 before), while the other batches are still under way; the list gets its process id."""
    ciphertexts = [path for path in folder.glob("*.png") if not path.name.endswith(".sealed.png")]
    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(path.stat().st_mtime_ns != 0 for path in ciphertexts):
                working = actor_processes()
                if working:
                    os.kill(working[0], signal.SIGKILL)
                    killed.append(working[0])
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def test_ray_run_writes_a_local_runs_files_events_and_exit_codes_even_with_a_worker_killed(tmp_path, tiny_key_file,
                                                                                         cluster, one_thread):
    names = [f"{'sub/' if index % 3 == 0 else ''}p{index}.{'jpg' if index % 2 else 'png'}" for index in range(11)]
    photos = write_noise_photos(tmp_path / "photos", names, 40, 36, seed=2)
    (photos / "bad.jpg").write_bytes(b"not a photo")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    expected = invoke("encrypt", photos, "--key", tiny_key_file, "--out", local, *SETTINGS, "--json")
    assert expected.exit_code == 1  # bad.jpg fails alone

    # --overwrite into a copy of the local run's folder, each file's time set to 0: every file is written again,
    # and must come out with the same bytes, though a worker is killed in the middle.
    shutil.copytree(local, on_ray)
    copies = [path for path in on_ray.rglob("*") if path.is_file()]
    for path in copies:
        os.utime(path, ns=(0, 0))
    watcher, killed = kill_an_actor_once_a_ciphertext_is_rewritten(on_ray)
    result = invoke("encrypt", photos, "--key", tiny_key_file, "--out", on_ray, *SETTINGS, "--json",
                    "--ray", cluster, "--ray-actors", "2", "--overwrite")
    watcher.join()
    assert killed, "no actor was killed"
    assert result.exit_code == 1, result.stderr
    # Every file, the manifest included, byte for byte; nothing else (no probe, no temporary) is left; each
    # file is written and reported once, though the killed worker's batch was done again.
    assert folder_contents(on_ray) == folder_contents(local)
    assert all(path.stat().st_mtime_ns != 0 for path in copies)
    lines = json_lines(result.stdout, on_ray)
    assert lines == json_lines(expected.stdout, local)
    assert len({line["output"] for line in lines}) == len(lines) == len(names) * 2 + 1
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert failures == ["failed: bad.jpg: not an image PIL can read (unknown or corrupt format)"]

    # A rerun finds everything done (no worker needed), as a local rerun does.
    again = invoke("encrypt", photos, "--key", tiny_key_file, "--out", on_ray, *SETTINGS, "--json", "--ray", cluster)
    local_again = invoke("encrypt", photos, "--key", tiny_key_file, "--out", local, *SETTINGS, "--json")
    assert again.exit_code == local_again.exit_code == 1
    assert json_lines(again.stdout, on_ray) == json_lines(local_again.stdout, local)
    assert all(line["skipped"] for line in json_lines(again.stdout, on_ray) if line["status"] != "failed")


def test_the_library_form_encrypts_a_ray_dataset_of_paths(tmp_path, tiny_key_file, cluster, one_thread):
    photos = write_noise_photos(tmp_path / "photos", ["x/f.png", "y/f.png", "g.jpg"], 36, 36, seed=5)
    files = sorted(path for path in photos.rglob("*") if path.is_file())
    make_encryptor = functools.partial(Encryptor, "tiny-embedding", tiny_key_file, iterations=10, batch_size=2,
                                       device="cpu")
    encrypt_folder(make_encryptor(), files, tmp_path / "local", noise_seed=8, listed=True)
    events = []
    # Each file of the Dataset is taken one by one, as a list of paths is (two of one name keep their folders'),
    # in sorted order (a Dataset's rows come in no set order).
    dataset = ray.data.from_items([{"path": str(path)} for path in reversed(files)])
    manifest = encrypt_on_ray(make_encryptor, dataset, tmp_path / "ray", events.append, noise_seed=8, actors=1)
    assert manifest.complete and {entry["source"] for entry in manifest.files} == {"x/f.png", "y/f.png", "g.jpg"}
    assert folder_contents(tmp_path / "ray") == folder_contents(tmp_path / "local")
    assert Counter(event.kind for event in events if event.kind != "progress") == {"written": 6}


def test_a_driver_killed_then_rerun_resumes_and_redoes_nothing_it_finished(tmp_path, tiny_key_file, cluster, one_thread):
    # Enough work that the driver is still running once 2 files are done (the engine got faster: with 8
    # photos of 80 steps it could finish them all between two looks at the manifest).
    count = 16
    settings = ["--target", "tiny-embedding", "--iterations", "200", "--batch-size", "1", "--device", "cpu", "--seed", "6"]
    photos = write_noise_photos(tmp_path / "photos", [f"q{index}.png" for index in range(count)], 36, 36, seed=7)
    reference = tmp_path / "reference"
    assert invoke("encrypt", photos, "--key", tiny_key_file, "--out", reference, *settings).exit_code == 0

    out = tmp_path / "out"
    manifest = out / "avp-manifest.json"
    driver = subprocess.Popen([sys.executable, "-m", "avpcli", "encrypt", str(photos), "--key", str(tiny_key_file),
                               "--out", str(out), *settings, "--ray", cluster], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    finished: dict[str, dict] = {}
    deadline = time.monotonic() + 120
    while len(finished) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if manifest.is_file():
            finished = {entry["output"]: entry for entry in json.loads(manifest.read_text())["files"]
                        if entry["status"] == "ok"}
    assert driver.poll() is None, "the driver ended before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 2 <= len(finished) < count
    before = {name: (out / name).stat() for name in finished}

    rerun = invoke("encrypt", photos, "--key", tiny_key_file, "--out", out, *settings, "--json", "--ray", cluster)
    assert rerun.exit_code == 0, rerun.stderr
    lines = {Path(line["output"]).name: line for line in map(json.loads, rerun.stdout.splitlines())}
    for name, status in before.items():
        assert lines[name]["skipped"] is True
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (status.st_ino, status.st_mtime_ns)  # not written again
    assert sum(not line["skipped"] for line in lines.values()) >= count - len(finished)
    assert folder_contents(out) == folder_contents(reference)


def test_a_worker_that_does_not_see_the_output_folder_stops_the_run_with_one_line(tmp_path, tiny_key_file, cluster):
    photos = write_noise_photos(tmp_path / "photos", ["a.png", "b.png"], 36, 36, seed=1)
    out = tmp_path / "out"

    def hide_the_probe(event) -> None:
        # As if the workers sat on machines where this path is another (unshared) folder.
        if event.kind == "progress" and event.done == 0:
            for probe in out.glob(".avp-ray-*"):
                probe.unlink()

    make_encryptor = functools.partial(Encryptor, "tiny-embedding", tiny_key_file, iterations=5, device="cpu")
    with pytest.raises(AvpError) as refused:
        encrypt_on_ray(make_encryptor, photos, out, hide_the_probe, actors=1)
    message = str(refused.value)
    assert "does not see the output folder" in message and "shared folder" in message and "\n" not in message
    assert not list(out.glob("*.png"))
    assert json.loads((out / "avp-manifest.json").read_text())["complete"] is False


def test_a_worker_that_cannot_write_the_output_folder_is_refused_with_one_line(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".avp-ray-probe").write_text("token")
    assert ray_pool.check_output_reachable(folder, ".avp-ray-probe", "token") is None
    assert "does not see" in str(ray_pool.check_output_reachable(folder, ".avp-ray-probe", "another"))
    if os.geteuid() == 0:  # root writes into any folder: make it immutable instead
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here, and root can write into any folder")
    else:
        folder.chmod(0o555)
    try:
        refused = ray_pool.check_output_reachable(folder, ".avp-ray-probe", "token")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True) if os.geteuid() == 0 else folder.chmod(0o755)
    assert refused is not None and "cannot write into the output folder" in str(refused) and "\n" not in str(refused)


def test_ray_usage_errors(tmp_path, tiny_key_file, monkeypatch):
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((36, 36, 3), dtype=np.uint8)).save(photo)
    actors_alone = invoke("encrypt", photo, "--key", tiny_key_file, "--out", tmp_path / "o", *SETTINGS, "--ray-actors", "2")
    assert actors_alone.exit_code == 2 and "--ray-actors goes with --ray" in actors_alone.stderr
    with_shard = invoke("encrypt", photo, "--key", tiny_key_file, "--out", tmp_path / "o", *SETTINGS, "--ray", "local",
                        "--shard", "1/2")
    assert with_shard.exit_code == 2 and "--shard and --ray do not go together" in with_shard.stderr
    # An address that takes no connection is one line within seconds (Ray itself would try for minutes).
    with pytest.raises(AvpError, match=r"^cannot join the Ray cluster at 127\.0\.0\.1:1: "):
        ray_pool._check_reachable("127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    with pytest.raises(UsageError, match=r'pip install "avp\[ray\]"'):
        ray_pool.import_ray()


def test_ray_decrypt_restores_and_reports_what_a_local_decrypt_does(tmp_path, tiny_key_file, cluster, one_thread):
    photos = write_noise_photos(tmp_path / "photos", [f"{'sub/' if index % 2 else ''}d{index}.png" for index in range(5)],
                                40, 36, seed=3)
    encrypted = tmp_path / "encrypted"
    assert invoke("encrypt", photos, "--key", tiny_key_file, "--out", encrypted, *SETTINGS, "--iterations", "3",
                  "--batch-size", "2").exit_code == 0
    damaged = encrypted / "d0.sealed.png"
    data = bytearray(damaged.read_bytes())
    data[-40] ^= 1
    damaged.write_bytes(bytes(data))
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    expected = invoke("decrypt", encrypted, "--key", tiny_key_file, "--out", local, "--device", "cpu", "--chips", "--json")
    result = invoke("decrypt", encrypted, "--key", tiny_key_file, "--out", on_ray, "--device", "cpu", "--chips", "--json",
                    "--ray", cluster, "--ray-actors", "2")
    assert expected.exit_code == result.exit_code == 1  # the damaged container fails alone
    assert folder_contents(on_ray) == folder_contents(local)
    assert json_lines(result.stdout, on_ray) == json_lines(expected.stdout, local)
    assert [line for line in result.stderr.splitlines() if line.startswith("failed:")] == [
        "failed: d0.sealed.png: damaged, or sealed with another key"]
    # A rerun keeps what was restored, as a local rerun does.
    again = invoke("decrypt", encrypted, "--key", tiny_key_file, "--out", on_ray, "--device", "cpu", "--chips", "--json",
                   "--ray", cluster)
    local_again = invoke("decrypt", encrypted, "--key", tiny_key_file, "--out", local, "--device", "cpu", "--chips",
                         "--json")
    assert json_lines(again.stdout, on_ray) == json_lines(local_again.stdout, local)
    assert folder_contents(on_ray) == folder_contents(local)
    lone = invoke("decrypt", encrypted / "d2.png", "--key", tiny_key_file, "--out", tmp_path / "lone", "--ray", cluster)
    assert lone.exit_code == 2 and "--ray decrypts one folder" in lone.stderr


def test_ray_decrypts_the_models_ciphertexts_on_its_actors(tmp_path, tiny_key_file, cluster, one_thread, monkeypatch):
    photos = write_noise_photos(tmp_path / "photos", [f"c{index}.png" for index in range(5)], 40, 36, seed=9)
    encrypted = tmp_path / "encrypted"
    assert invoke("encrypt", photos, "--key", tiny_key_file, "--out", encrypted, *SETTINGS, "--iterations", "3",
                  "--no-seal").exit_code == 0
    (encrypted / "c3.png").write_bytes((encrypted / "c1.png").read_bytes())  # another's bytes: fails its sha256
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    expected = invoke("decrypt", encrypted, "--key", tiny_key_file, "--out", local, "--device", "cpu", "--json")

    # The key runs on the actors only: this process (the driver) checks what they wrote and decrypts nothing.
    from avpcli.jobs import decrypt as decrypt_module

    def no_decryption_here(pairs, device):
        assert not pairs, "the driver decrypted a ciphertext that the actors should have"
        return []

    monkeypatch.setattr(decrypt_module, "_decrypt_groups", no_decryption_here)
    result = invoke("decrypt", encrypted, "--key", tiny_key_file, "--out", on_ray, "--device", "cpu", "--json",
                    "--ray", "--ray-actors", "2")  # a bare --ray: this machine's cluster (here the module's)
    assert expected.exit_code == result.exit_code == 1  # c3.png fails alone
    assert folder_contents(on_ray) == folder_contents(local)
    assert json_lines(result.stdout, on_ray) == json_lines(expected.stdout, local)
    assert [line for line in result.stderr.splitlines() if line.startswith("failed:")] == [
        "failed: c3.png: its bytes do not match the sha256 its manifest lists (damaged or replaced); "
        "use --force to decrypt it anyway"]


class CrashingWorker(ray_pool.PoolWorker):
    """An actor whose process dies on a piece ("crash", file) (as one that a file crashes, or that runs out of
    memory), adding a byte to the file as it does."""

    def run(self, work: tuple[str, str]) -> dict:
        if work[0] == "crash":
            with open(work[1], "ab") as tries:
                tries.write(b".")
            os._exit(1)
        return {"value": work[0]}


def test_a_piece_whose_worker_dies_on_every_try_fails_alone_after_the_tries_allowed(tmp_path, cluster):
    output = tmp_path / "out"
    output.mkdir()
    applied = {}
    tries = tmp_path / "tries"
    lost = ray_pool.run_on_actors(ray, output, CrashingWorker, {}, [("first", ""), ("crash", str(tries)), ("last", "")],
                                  lambda index, result: applied.update({index: result["value"]}), actors=1, cpus=1,
                                  gpus=0.0, on_start=lambda: None)
    assert lost == [1]
    assert applied == {0: "first", 2: "last"}
    assert tries.stat().st_size == ray_pool.BATCH_TRIES
    assert list(output.iterdir()) == []  # the probe and the count of tries are gone
