"""Whole photos in, whole photos back (issue #23): encrypt whole photos with avp's defaults (every input
sealed beside its faces' ciphertexts), then check that the folder form and the lone-file form of
`avp decrypt` give back every input byte for byte, that every face chip meets the bars, and what the
ciphertext folder costs in storage.

    python -m benchmarks.whole_photos --key /tmp/keys/default-1-v3.safetensors   # prints a Markdown report

Sets: the first photo of the first 50 'multi' identities of lfw.csv (250×250, whole, not pre-aligned;
the largest face), and every photo in faces_misc/face_recognition_knn (--all-faces).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from avpcli import Encryptor, load_key
from avpcli.jobs import decrypt_paths, encrypt_folder
from avpcli.seal import ALGORITHM, ALGORITHM_NAMES
from benchmarks.common import data_folder, lfw_faces, log

KNN = Path("faces_misc/face_recognition_knn")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def size_of(files) -> int:
    return sum(path.stat().st_size for path in files)


def run_set(label: str, inputs: Path, work: Path, encryptor: Encryptor, key, all_faces: bool) -> dict:
    """Encrypt `inputs` into work/enc, restore by the folder and the lone-file form; the set's figures."""
    out = work / "enc"
    started = time.perf_counter()
    failures: list[str] = []
    manifest = encrypt_folder(encryptor, inputs, out, lambda event: failures.append(f"{event.source}: {event.reason}")
                              if event.kind == "failed" else None, all_faces=all_faces, noise_seed=1)
    encrypt_seconds = time.perf_counter() - started
    originals = {path.relative_to(inputs).as_posix(): path for path in sorted(inputs.rglob("*"))
                 if path.is_file() and path.suffix.lower() in {".jpg", ".jpeg", ".png"}}
    chips = [entry for entry in manifest.files if entry["status"] == "ok"]
    sealed_only = [entry for entry in manifest.files if entry["status"] == "sealed"]
    containers = sorted({out / entry["sealed"] for entry in manifest.files if "sealed" in entry})

    results = {}
    for form, given in (("folder", [out]), ("lone files", containers)):
        restored = work / f"dec-{form.replace(' ', '-')}"
        started = time.perf_counter()
        decrypt_paths(given, restored, key=key, device="cpu")
        seconds = time.perf_counter() - started
        identical = sum((restored / name).is_file() and sha(restored / name) == sha(path)
                        for name, path in originals.items())
        results[form] = (identical, seconds)
        log(f"{label}: {form}: {identical}/{len(originals)} restored byte-identical in {seconds:.1f} s")

    input_bytes = size_of(originals.values())
    sealed_bytes = size_of(containers)
    chip_bytes = size_of(out / entry["output"] for entry in chips)
    folder_bytes = size_of(path for path in out.rglob("*") if path.is_file())
    overheads = [path.stat().st_size for path in containers]
    return {
        "label": label, "photos": len(originals), "faces": len(chips), "sealed_only": len(sealed_only),
        "failed": failures, "containers": len(containers),
        "met": sum(bool(entry.get("met_targets")) for entry in chips),
        "max_distance": max((entry["feature_distance"] for entry in chips), default=float("nan")),
        "max_ssim_e": max((entry["ssim_encrypted"] for entry in chips), default=float("nan")),
        "min_ssim_d": min((entry["ssim_decrypted"] for entry in chips), default=float("nan")),
        "median_steps": statistics.median(entry["iterations"] for entry in chips) if chips else float("nan"),
        "encrypt_seconds": encrypt_seconds, "restored": results,
        "input_bytes": input_bytes, "sealed_bytes": sealed_bytes, "chip_bytes": chip_bytes,
        "folder_bytes": folder_bytes, "manifest_bytes": (out / "avp-manifest.json").stat().st_size,
        "sealed_bar": 1.01 * input_bytes + 1024 * len(containers),
        "largest_container": max(overheads, default=0),
    }


def report(rows: list[dict], key_path: Path, seconds: float) -> str:
    lines = [
        f"avp whole photos (issue #23); target dlib, avp's defaults (tuned recipe, sealing on); key {key_path.name} "
        f"(default preset); seal {ALGORITHM_NAMES[ALGORITHM]}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU; Python {platform.python_version()}; {seconds:.0f} s in all",
        "",
        "| set | photos | faces encrypted | sealed only | failed | restored byte-identical, folder form | "
        "lone-file form | faces meeting every bar | max distance | max SSIM_e | min SSIM_d | median steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        folder, lone = row["restored"]["folder"], row["restored"]["lone files"]
        lines.append(
            f"| {row['label']} | {row['photos']} | {row['faces']} | {row['sealed_only']} | {len(row['failed'])} | "
            f"{folder[0]}/{row['photos']} ({folder[1]:.1f} s) | {lone[0]}/{row['photos']} ({lone[1]:.1f} s) | "
            f"{row['met']}/{row['faces']} | {row['max_distance']:.4f} | {row['max_ssim_e']:.4f} | "
            f"{row['min_ssim_d']:.4f} | {row['median_steps']:.0f} |")
    lines += ["", "Storage (bytes; the ciphertext folder holds the containers, the chips and the manifest):", "",
              "| set | input folder | containers | chips | manifest | ciphertext folder / input | "
              "containers / input | bar: 1.01 × input + 1 KiB per file | met |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['input_bytes']:,} | {row['sealed_bytes']:,} | {row['chip_bytes']:,} | "
            f"{row['manifest_bytes']:,} | {row['folder_bytes'] / row['input_bytes']:.3f}× | "
            f"{row['sealed_bytes'] / row['input_bytes']:.4f}× | {row['sealed_bar']:,.0f} | "
            f"{'yes' if row['sealed_bytes'] <= row['sealed_bar'] else 'NO'} |")
    for row in rows:
        for failure in row["failed"]:
            lines.append(f"\n{row['label']}: failed: {failure}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", type=Path, required=True, help="a key file of the default preset")
    parser.add_argument("--lfw", type=int, default=50, help="LFW photos (the first photo of this many identities)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="where the folders go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = data_folder()
    key = load_key(args.key)
    encryptor = Encryptor("dlib", key, device="cpu", batch_size=args.batch_size)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        lfw = work / "lfw-input"
        lfw.mkdir(parents=True, exist_ok=True)
        for path in lfw_faces(data, args.lfw):
            shutil.copyfile(path, lfw / path.name)
        rows = [run_set(f"LFW, {args.lfw} whole photos", lfw, work / "lfw", encryptor, key, all_faces=False),
                run_set("face_recognition_knn, --all-faces", data / KNN, work / "knn", encryptor, key, all_faces=True)]
    print(report(rows, args.key, time.perf_counter() - started))


if __name__ == "__main__":
    main()
