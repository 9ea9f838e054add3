"""Checkpoints of generated matrices (orbax-checkpoint, an optional dependency).

`save` writes a matrix (or named arrays) and the metadata needed to recompute
it; `restore` reads it back as a `jax.Array`, optionally straight into a
sharding; `restore_metadata` reads the metadata. `scripts/init_large.py` saves
with `save`.
"""

from alberta._src.checkpoint import restore
from alberta._src.checkpoint import restore_metadata
from alberta._src.checkpoint import save

__all__ = ("restore", "restore_metadata", "save")
