"""Privacy benchmark: what filters, MTCNN and a second recognizer get out of avp's ciphertexts, and how
much of a key's scramble (ciphertext, original) pairs give away.

Faces: the first image of each of the first --faces identities of LFW's `multi` role (lfw.csv), encrypted
for --target with `avp evaluate`'s own set-up (avp's default settings). The observer's gallery: the first
--gallery-size `distractor` images (1,200: one identity each) plus *other* images of the encrypted
faces' identities (--gallery-others, default 1: every identity then has one photo, so that chance is
1/identities for all), so that the right identity is always there and the very photo never is. Then:
`avp evaluate privacy` (leak correlations, the filter suite, MTCNN, the observer), `avp evaluate
key-recovery` (training pairs = the first max(--pairs) faces, held out = the rest) and the keys of
other seeds (--other-key decrypting key-A ciphertexts). Everything lands under --out: each report's
JSON, markdown and pictures in <out>/<target>/, the summary in <out>/privacy-<target>.md; ciphertexts
live under --work (default <out>/work) and a rerun reuses them.

Run: python -m benchmarks.privacy --key K --other-key K2 --faces 50 --target dlib --out DIR
     [--pairs 1,2,5,10,20] [--gallery-size 1200] [--gallery-others 1] [--iterations N] [--device cpu] [--data PATH]
Threads: $AVP_THREADS (default 2).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from avpcli import Encryptor, load_key, load_target, report
from benchmarks.common import (FACE_WEIGHTS, add_settings_options, data_folder, events, lfw_identities, log,
                               read_lfw, settings_overrides)

if TYPE_CHECKING:
    from avpcli.key import KeyModel

# Where the shared data keeps each face model's weights (None: the model finds its own).
WEIGHTS = {**FACE_WEIGHTS, "mobilefacenet-foamliu": "weights/mobilefacenet_foamliu/mobilefacenet.pt"}


def lfw_selection(data: Path, faces: int, gallery_size: int,
                  others: int) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """The faces to encrypt (relative name → photo) and the gallery (identity → photos)."""
    multi = lfw_identities(data, "multi")
    chosen = list(multi)[:faces]
    if len(chosen) < faces:
        sys.exit(f"lfw.csv has only {len(chosen)} `multi` identities; lower --faces")
    selection, gallery = {}, defaultdict(list)
    for identity in chosen:
        first, *rest = multi[identity]
        selection[f"{identity}/{first.name}"] = first
        gallery[identity] += rest[:others] if others else rest
    for photo in read_lfw(data, "distractor")[:gallery_size]:
        gallery[photo.identity].append(photo.path)
    return selection, gallery


def link_gallery(gallery: dict[str, list[Path]], folder: Path) -> Path:
    """The gallery as a folder of identity sub-folders (symbolic links to the photos), as `--gallery` takes it.

    The folder is this script's own: links of an earlier run with other options are removed first."""
    shutil.rmtree(folder, ignore_errors=True)
    for identity, paths in gallery.items():
        (folder / identity).mkdir(parents=True, exist_ok=True)
        for path in paths:
            os.symlink(path.resolve(), folder / identity / path.name)
    return folder


def section(written: Path, title: str, body: str) -> str:
    """A report's markdown under a new heading, its pictures linked relative to the summary."""
    pictures = "\n".join(f"![{png.stem}]({written.parent.name}/{png.name})"
                         for png in sorted(written.parent.glob(f"{written.stem}-*.png")))
    # The report's own headings go one level down; its picture links are replaced by ones relative to the summary.
    body = "\n".join(line.replace("## ", "### ", 1) if line.startswith("## ") else line
                     for line in body.split("\n", 1)[1].splitlines() if not line.startswith("!["))
    return f"## {title}\n{body.rstrip()}\n\n{pictures}\n"


@dataclass
class PrivacyRun:
    """What one run wrote (`summary`, the reports under `reports`) and measured, for callers that quote it
    (benchmarks/privacy_doc.py)."""

    summary: Path  # <out>/privacy-<target>.md
    reports: Path  # <out>/<target>: each report's JSON, markdown and pictures
    pairs: report.PairedImages  # the faces and their ciphertexts, as read back from the PNGs
    key: KeyModel  # key A, as the encryptor holds it
    privacy: report.Report
    recovery: report.Report | None  # None when --faces is too few for any --pairs count
    cross: report.Report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", required=True, help="key A: the faces are encrypted with it")
    parser.add_argument("--other-key", required=True, help="key B, another seed: decrypts key-A ciphertexts for scale")
    parser.add_argument("--target", default="dlib", choices=sorted(WEIGHTS))
    parser.add_argument("--faces", type=int, default=50)
    parser.add_argument("--pairs", default="1,2,5,10,20", help="key recovery: pairs the attacker holds, comma-separated")
    parser.add_argument("--gallery-size", type=int, default=1200, help="distractor images in the gallery (LFW has 1,200)")
    parser.add_argument("--gallery-others", type=int, default=1,
                        help="other photos of each encrypted face's identity in the gallery (0: all). The default 1 "
                             "matches the distractors' one photo each, so that chance is 1/identities for every identity")
    add_settings_options(parser, only=["iterations"])
    parser.add_argument("--out", required=True, help="folder for the summary and the reports")
    parser.add_argument("--work", help="ciphertexts and the gallery's links (default: <out>/work)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", help="shared data (default: ../shared/data or $AVP_DATA)")
    return parser


def run(argv: list[str]) -> PrivacyRun:
    """Run the benchmark with these command-line arguments and write its reports; the summary states `argv`."""
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    data = Path(args.data) if args.data else data_folder()
    if not (data / "lfw.csv").is_file():
        sys.exit(f"shared data not found at {data} (give --data or set AVP_DATA)")
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    reports = out / args.target
    counts = sorted({int(count) for count in args.pairs.split(",")})
    timings: list[str] = []

    def weights(name: str) -> Path | None:
        return WEIGHTS[name] and data / WEIGHTS[name]

    selection, gallery = lfw_selection(data, args.faces, args.gallery_size, args.gallery_others)
    # `avp evaluate`'s encryptor: the tuned recipe, precision auto, at most --iterations steps.
    encryptor = Encryptor(args.target, Path(args.key), weights=weights(args.target), device=args.device,
                          **settings_overrides(args))
    began = time.perf_counter()
    pairs = report.encrypt_selection(selection, work / args.target, encryptor, events(args.target))
    timings.append(f"encryption of {len(pairs.names)} faces: {time.perf_counter() - began:.0f} s")
    key = encryptor.key

    began = time.perf_counter()
    observer_name = report.default_observer(args.target)
    observer_model = load_target(observer_name, weights(observer_name)).to(encryptor.device)
    photos = report.load_gallery(link_gallery(gallery, work / "gallery"), observer_model, observer_model.spec,
                                 encryptor.device)
    transform, fitted = report.fit_observer_transform([selection[source] for source in pairs.sources],
                                                      encryptor.spec, observer_model.spec, encryptor.device)
    observer = report.Observer(observer_model.spec, observer_model, photos, transform, fitted, encryptor.device)
    privacy = report.privacy_report(pairs, encryptor.spec, key, observer, detect=True, device=encryptor.device)
    written = privacy.write(reports)
    timings.append(f"privacy report (gallery of {len(photos.identities)} photos, MTCNN, observer): "
                   f"{time.perf_counter() - began:.0f} s")
    sections = [section(written, "Filters, MTCNN and a second recognizer", privacy.markdown)]

    usable = [count for count in counts if count < len(pairs.names)]
    recovery = None
    if usable:
        began = time.perf_counter()
        split = max(usable)
        recovery = report.key_recovery_report(pairs.subset(range(split)), pairs.subset(range(split, len(pairs.names))),
                                              key, usable)
        written = recovery.write(reports)
        timings.append(f"key recovery: {time.perf_counter() - began:.0f} s")
        sections.append(section(written, "Key recovery from pairs", recovery.markdown))
    if len(usable) < len(counts):
        log(f"pair counts {sorted(set(counts) - set(usable))} need more than {len(pairs.names)} faces: skipped")

    other = load_key(Path(args.other_key), device=encryptor.device).model.freeze()
    cross = report.cross_key_report(pairs, key, {"key B (other seed)": other}, sheet_rows=4)
    written = cross.write(reports)
    sections.append(section(written, "Keys of other seeds", cross.markdown))

    command = "python -m benchmarks.privacy " + shlex.join(argv)
    summary = out / f"privacy-{args.target}.md"
    summary.write_text(
        f"# Privacy of avp's ciphertexts: {args.target}\n\n"
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} (device {args.device}, "
        f"{torch.get_num_threads()} threads, {time.perf_counter() - started:.0f} s in all).\n\n"
        f"{len(pairs.names)} LFW faces (the first image of the first {args.faces} `multi` identities) encrypted "
        f"with key A ({Path(args.key).name}) and `avp evaluate`'s settings"
        + (f" (at most {args.iterations} steps)" if args.iterations else "")
        + f"; observer {observer_name}; gallery: {args.gallery_size} distractor images plus "
        + (f"{args.gallery_others} other image(s)" if args.gallery_others else "all other images")
        + f" of each face's identity, {photos.identity_count} identities. Timings: {'; '.join(timings)}.\n\n"
        + "\n".join(sections))
    log(f"wrote {summary}")
    return PrivacyRun(summary, reports, pairs, key, privacy, recovery, cross)


def main() -> None:
    build_parser().parse_args(sys.argv[1:])  # --help and usage errors before anything changes in this process
    torch.set_num_threads(int(os.environ.get("AVP_THREADS", "2")))
    print(run(sys.argv[1:]).summary)


if __name__ == "__main__":
    main()
