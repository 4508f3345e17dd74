"""Whole runs over files and folders: the only place that joins image files, manifests and an Encryptor or a key.

folders   the output folder: its lock, atomic writes, the manifest rewritten as a run goes
resume    how an encryption run treats files (FolderRun) and what it carries over from an earlier run
names     output names that never replace another source's output
encrypt   encrypt_folder: files → faces → engine → 8-bit PNGs + manifest, resumably and in shards
decrypt   decrypt_folder, decrypt_files: ciphertexts through the key into PNGs + manifest
sealing   every input file sealed whole beside its ciphertexts (avpcli.seal), and restored byte for byte
distributed  encrypt_on_ray, decrypt_on_ray: the same runs spread over a pool of Ray actors (the extra "ray")
ray_pool  joining a Ray cluster, checking that every worker reaches the output folder, the actor pool
"""

from avpcli.events import Event, EventCallback
from avpcli.inputs import prepare_file as prepare_faces  # the name of avp 0.2
from avpcli.jobs.decrypt import DecryptFilesJob, DecryptJob, decrypt_files, decrypt_folder, decrypt_paths, uses_scramble
from avpcli.jobs.distributed import decrypt_on_ray, encrypt_on_ray
from avpcli.jobs.encrypt import encrypt_folder, merge_finished_parts, run_folder
from avpcli.jobs.folders import check_output_folder, owned_folder, remove_stale_temporaries
from avpcli.jobs.resume import FolderRun, settings_record

__all__ = [
    "DecryptFilesJob", "DecryptJob", "Event", "EventCallback", "FolderRun", "check_output_folder", "decrypt_files", "decrypt_paths",
    "decrypt_folder", "decrypt_on_ray", "encrypt_folder", "encrypt_on_ray", "merge_finished_parts", "owned_folder", "prepare_faces",
    "remove_stale_temporaries", "run_folder", "settings_record", "uses_scramble",
]
