"""SHA-256 of files: what a model card records of its weights, a phantom of the files it wrote and run.json of
every input and result. Standard library only."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike, sync: bool = False) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB blocks; with sync, the file is also flushed to the disk
    (fsync), so that results recorded as complete survive a crash of the machine."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()
