"""The AVP attack: tensors and frozen modules in, ciphertexts and per-image metrics out. No files, no printing.

settings   what is optimized and when an image is done; the one builder of settings (attack_settings)
objective  the per-sample loss of paper Eq. 15 and the figures of 8-bit images
loop       the optimization loop (Algorithm 1) and the measurement of given ciphertexts
decryption applying a key, batched by key and size
device     devices, precisions and the models' memory layout
"""

from avpcli.engine.decryption import decrypt_batch, decrypt_grouped
from avpcli.engine.device import (PRECISIONS, autocast_dtype_for, cpu_has_bf16, default_autocast_dtype,
                                  precision_dtype, prepare_models, resolve_device)
from avpcli.engine.loop import EncryptionResult, ImageMetrics, ProgressCallback, encrypt_batch, measure_images
from avpcli.engine.objective import LeakPenalty, Measured, Objective, quantize, variance_consistency
from avpcli.engine.settings import (CLASSIFIER_SETTINGS, FACE_SETTINGS, RECIPES, AttackSettings, Initialization,
                                    LossKind, Smoothness, StopCriteria, attack_settings, meets_bars,
                                    stopping_past_the_original)

__all__ = [
    "CLASSIFIER_SETTINGS", "FACE_SETTINGS", "PRECISIONS", "RECIPES", "AttackSettings", "EncryptionResult",
    "ImageMetrics", "Initialization", "LeakPenalty", "LossKind", "Measured", "Objective", "ProgressCallback",
    "Smoothness", "StopCriteria", "attack_settings", "autocast_dtype_for", "cpu_has_bf16", "decrypt_batch",
    "decrypt_grouped", "default_autocast_dtype", "encrypt_batch", "measure_images", "meets_bars", "precision_dtype",
    "prepare_models", "quantize", "resolve_device", "stopping_past_the_original", "variance_consistency",
]
