"""Checkpoints of generated matrices (orbax-checkpoint, an optional dependency).

`save` writes a matrix (or named arrays) and the metadata needed to recompute
it; `restore` reads it back as a `jax.Array`, optionally straight into a
sharding; `restore_metadata` reads the metadata. `restore` verifies what it read
against the checksums `save` recorded and raises `ChecksumError` on a
mismatch. `scripts/init_large.py` saves with `save`; docs/CHECKPOINT.md
describes the format and the commit protocol.
"""

from alberta._src.checkpoint import ChecksumError
from alberta._src.checkpoint import restore
from alberta._src.checkpoint import restore_metadata
from alberta._src.checkpoint import save

__all__ = ("ChecksumError", "restore", "restore_metadata", "save")
