"""The key: a ResNet generator G trained to reproduce its input, its training (keygen) and its file format.

One module per concept, bottom up: `network` (G and the key model G∘S), `presets` (recipes and
seeds), `training_data` (the procedural source and folder crops), `training` (the loop that fits a
generator, which the paired-data attacker reuses), `keyfile` (the safetensors format and its checks)
and `key` (the Key object: train, save, load, find). Every name is importable from `avpcli.key`.
"""

from avpcli.key.key import Key, cached_key, find_key, load_key, save_key, train_key
from avpcli.key.keyfile import (
    KEY_FORMAT, KEY_FORMAT_VERSION, MAX_HEADER_BYTES, MAX_KEY_BYTES, MAX_KEY_VALUES, NO_SCRAMBLE,
    READABLE_FORMAT_VERSIONS, SCRAMBLE_SECRET_TENSOR, expected_key_tensors, key_fingerprint, key_metadata,
    key_tensors, read_key_file, write_key_file,
)
from avpcli.key.network import (
    ARCHITECTURE, NORMS, SIZE_MULTIPLE, KeyGenerator, KeyModel, ResidualBlock, count_parameters, resnet_generator,
)
from avpcli.key.presets import (
    GUESSABLE_SEED_LIMIT, KEY_PRESETS, SEED_BITS, SEED_KDF, SEED_KDF_SALT, TEST_SEED_KDF, KeyPreset, SeedKdf,
    SeedSecrets, derived_seed, new_seed, resolve_preset, resolve_recipe, scramble_secret, seed_is_guessable,
    seed_secrets,
)
from avpcli.key.training import BatchSource, ProgressCallback, fit_generator, seeded_generator
from avpcli.key.training_data import (
    PROCEDURAL_SOURCE, PROCEDURAL_SOURCES, ImageSource, find_training_images, procedural_images,
    procedural_images_with_strands, training_data_fingerprint, training_source,
)

__all__ = [
    "ARCHITECTURE", "BatchSource", "GUESSABLE_SEED_LIMIT", "ImageSource", "KEY_FORMAT", "KEY_FORMAT_VERSION",
    "KEY_PRESETS", "Key", "KeyGenerator", "KeyModel", "KeyPreset", "MAX_HEADER_BYTES", "MAX_KEY_BYTES",
    "MAX_KEY_VALUES", "NORMS", "NO_SCRAMBLE", "PROCEDURAL_SOURCE", "PROCEDURAL_SOURCES", "ProgressCallback",
    "READABLE_FORMAT_VERSIONS",
    "ResidualBlock", "SCRAMBLE_SECRET_TENSOR", "SEED_BITS", "SEED_KDF", "SEED_KDF_SALT", "SIZE_MULTIPLE",
    "SeedKdf", "SeedSecrets", "TEST_SEED_KDF", "count_parameters", "derived_seed",
    "cached_key", "expected_key_tensors", "find_key", "find_training_images", "fit_generator", "key_fingerprint",
    "key_metadata", "key_tensors", "load_key", "new_seed", "procedural_images", "procedural_images_with_strands",
    "read_key_file", "resnet_generator", "resolve_preset", "resolve_recipe", "save_key", "scramble_secret",
    "seed_is_guessable", "seed_secrets", "seeded_generator",
    "train_key", "training_data_fingerprint", "training_source", "write_key_file",
]
