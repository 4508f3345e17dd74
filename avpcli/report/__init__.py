"""`avp evaluate`'s reports: folders in, encrypt what is missing, run avpcli.evaluate, write JSON + markdown + PNGs.

Each analysis returns a Report; `Report.write` puts `<name>.json`, `<name>.md` and `<name>-*.png` into
one report folder and returns the markdown's path. Nothing here prints; progress goes through the
same `on_event` callback as folder runs.

render       table cells, markdown tables, the Report and its pictures
pairs        (original, ciphertext) pairs: read back from an encrypted folder, or made by encrypting files
datasets     folder layouts: one folder per identity (LFW) or per class; whose photo a file is
observer     a second recognizer that tries to identify filtered ciphertexts in a gallery
protocol     the paper's Tables 1, 2 and 4: quality, identification, classification
security     keys of other seeds, the paired-data attack, key recovery from pairs
leaks        pixel statistics, and what filters, MTCNN and the observer get out of ciphertexts
evaluations  each `avp evaluate` command as one call: paths and names in, a Report out
"""

from avpcli.report.datasets import class_folders, identity_images, identity_of, split_identities
from avpcli.report.evaluations import (attack_evaluation, classification_evaluation, cross_key_evaluation,
                                       identification_evaluation, key_recovery_evaluation, privacy_evaluation,
                                       quality_evaluation, statistics_evaluation)
from avpcli.report.leaks import faces_found, privacy_report, statistics_report
from avpcli.report.observer import (SMALL_GALLERY, Gallery, Observer, default_observer, fit_observer_transform,
                                    load_gallery, make_observer, warp_chips)
from avpcli.report.pairs import (PairedImages, encrypt_selection, original_chips, prepare_original, read_pairs,
                                 save_originals)
from avpcli.report.protocol import classification_report, identification_report, quality_report
from avpcli.report.render import (Report, histogram_picture, markdown_table, number, percent, scatter_picture,
                                  sheet_picture, side_by_side)
from avpcli.report.security import attack_report, cross_key_report, key_recovery_report

__all__ = [
    "SMALL_GALLERY", "Gallery", "Observer", "PairedImages", "Report", "attack_evaluation", "attack_report",
    "class_folders", "classification_evaluation", "classification_report", "cross_key_evaluation",
    "cross_key_report", "default_observer", "encrypt_selection", "faces_found", "fit_observer_transform",
    "histogram_picture", "identification_evaluation", "identification_report", "identity_images", "identity_of",
    "key_recovery_evaluation", "key_recovery_report", "load_gallery", "make_observer", "markdown_table", "number",
    "original_chips", "percent", "prepare_original", "privacy_evaluation", "privacy_report", "quality_evaluation",
    "quality_report", "read_pairs", "save_originals", "scatter_picture", "sheet_picture", "side_by_side",
    "split_identities", "statistics_evaluation", "statistics_report", "warp_chips",
]
