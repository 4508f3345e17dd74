"""The paper's protocol and security analyses (§4, appendix A.1): tensors and modules in, results out.

Every function here is pure computation: no files, no printing. `avpcli.report` reads folders,
encrypts what is missing, calls these and writes the report.

Conventions: images are (N, 3, H, W) or (3, H, W) float tensors in [0, 1]; features are (N, D)
outputs of a `TargetModel` (already L2-normalized where the target's spec says so, raw for dlib),
so nearest neighbours are always taken by Euclidean distance on the target's own output.

One module per analysis: `summary`, `quality` (Table 1, features, top-1), `identification`
(§4.1 and an observer's ranks), `attack` (other keys and the paired-data attacker), `image_statistics`
(appendix A.1, detection), `reveal` (filters a person would try, leak correlations) and `recovery`
(guessing the scramble from pairs). Every name is importable from `avpcli.evaluate`.
"""

from avpcli.evaluate.attack import decryption_ssim, train_attacker
from avpcli.evaluate.identification import (
    IdentificationResult, chance_ranks, identify_turns, identity_ranks, rank_summary,
)
from avpcli.evaluate.image_statistics import (
    AT_FACE_IOU, DIRECTIONS, Direction, adjacent_correlation, adjacent_pairs, box_iou, correlation_table,
    detection_rate, grey_histogram, grey_levels, histogram_entropy, pearson,
)
from avpcli.evaluate.quality import QualityResult, features, measure_quality, top1_accuracy
from avpcli.evaluate.recovery import (
    RECOVERY_RULES, RecoveryResult, RecoveryRule, key_plan, key_recovery_curve, plan_agreement, recover_scramble,
)
from avpcli.evaluate.reveal import (
    REVEAL_FILTERS, RevealFilter, blur_reveal, downscale_and_back, leak_correlations, median_filter,
    percentile_stretch, reveal_filter,
)
from avpcli.evaluate.summary import nan_to_none, summarize

__all__ = [
    "AT_FACE_IOU", "DIRECTIONS", "RECOVERY_RULES", "REVEAL_FILTERS", "Direction", "IdentificationResult",
    "QualityResult", "RecoveryResult", "RecoveryRule", "RevealFilter", "adjacent_correlation", "adjacent_pairs",
    "blur_reveal", "box_iou", "chance_ranks", "correlation_table", "decryption_ssim", "detection_rate",
    "downscale_and_back", "features", "grey_histogram", "grey_levels", "histogram_entropy", "identify_turns",
    "identity_ranks", "key_plan", "key_recovery_curve", "leak_correlations", "measure_quality", "median_filter",
    "nan_to_none", "pearson", "percentile_stretch", "plan_agreement", "rank_summary", "recover_scramble",
    "reveal_filter", "summarize", "top1_accuracy", "train_attacker",
]
