"""Checkpoints of generated matrices (orbax-checkpoint, an optional dependency).

`save` writes a matrix (or named arrays) and the metadata needed to recompute
it; `restore` reads it back as a `jax.Array`, optionally straight into a
sharding (with `return_metadata=True`, with the metadata of the same read);
`restore_metadata` reads the metadata alone. `restore` verifies what it read
against the checksums `save` recorded and raises `ChecksumError` on a
mismatch, and `ReplacedError` when another save replaced the checkpoint
while it was read. `check_output` checks a target before any work,
`is_checkpoint` tells a complete checkpoint, `stale_staging` lists what killed
saves left beside a target and `remove_staging` removes what a failed or
abandoned save still writes there; `estimate_stored_bytes` predicts a save's
size on disk.
`scripts/init_large.py` saves with `save`; docs/CHECKPOINT.md describes the
format and the commit protocol.
"""

from alberta._src.checkpoint import check_output
from alberta._src.checkpoint import ChecksumError
from alberta._src.checkpoint import ReplacedError
from alberta._src.checkpoint import estimate_stored_bytes
from alberta._src.checkpoint import is_checkpoint
from alberta._src.checkpoint import remove_staging
from alberta._src.checkpoint import restore
from alberta._src.checkpoint import restore_metadata
from alberta._src.checkpoint import save
from alberta._src.checkpoint import stale_staging

__all__ = (
    "ChecksumError",
    "ReplacedError",
    "check_output",
    "estimate_stored_bytes",
    "is_checkpoint",
    "remove_staging",
    "restore",
    "restore_metadata",
    "save",
    "stale_staging",
)
