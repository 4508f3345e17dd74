"""avp: hide what images show from people while a chosen model still sees them (AVP/AVIH).

The public Python API (README "Python"): every name below is importable from `avpcli`, e.g.

    from avpcli import Encryptor, Key, decrypt

    key = Key.load("keys/k.safetensors")
    encryptor = Encryptor("dlib", key)
    ciphertexts = encryptor.encrypt(["face.jpg"])
    originals = decrypt([c.image for c in ciphertexts], key)

The names load on first use, so that `import avpcli` (and `avp --help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

# Public name → the module that defines it.
_PUBLIC = {
    "Key": "avpcli.key",
    "load_key": "avpcli.key",
    "save_key": "avpcli.key",
    "train_key": "avpcli.key",
    "find_key": "avpcli.key",
    "cached_key": "avpcli.key",
    "KEY_PRESETS": "avpcli.key",
    "KeyPreset": "avpcli.key",
    "Encryptor": "avpcli.encryptor",
    "Ciphertext": "avpcli.encryptor",
    "MeasuredCiphertext": "avpcli.encryptor",
    "decrypt": "avpcli.encryptor",
    "attack_settings": "avpcli.engine",
    "meets_bars": "avpcli.engine",
    "resolve_device": "avpcli.engine",
    "AttackSettings": "avpcli.engine",
    "StopCriteria": "avpcli.engine",
    "FACE_SETTINGS": "avpcli.engine",
    "CLASSIFIER_SETTINGS": "avpcli.engine",
    "load_target": "avpcli.targets",
    "get_spec": "avpcli.targets",
    "target_names": "avpcli.targets",
    "TargetSpec": "avpcli.targets",
    "TargetModel": "avpcli.targets",
    "FolderRun": "avpcli.jobs",
    "encrypt_folder": "avpcli.jobs",
    "encrypt_on_ray": "avpcli.jobs",
    "DecryptJob": "avpcli.jobs",
    "DecryptFilesJob": "avpcli.jobs",
    "decrypt_folder": "avpcli.jobs",
    "decrypt_files": "avpcli.jobs",
    "decrypt_paths": "avpcli.jobs",
    "decrypt_on_ray": "avpcli.jobs",
    "Event": "avpcli.events",
    "EventCallback": "avpcli.events",
    "Manifest": "avpcli.manifest",
    "read_manifest": "avpcli.manifest",
    "AvpError": "avpcli.errors",
    "UsageError": "avpcli.errors",
    "KeyFileError": "avpcli.errors",
    "ImageError": "avpcli.errors",
    "NotModelInput": "avpcli.errors",
    "NoFaceError": "avpcli.errors",
    "seal": "avpcli.seal",
    "open_sealed": "avpcli.seal",
    "is_sealed": "avpcli.seal",
    "seal_key": "avpcli.seal",
    "SealError": "avpcli.seal",
    "sealing_key": "avpcli.jobs.sealing",
    "TargetError": "avpcli.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'avpcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
