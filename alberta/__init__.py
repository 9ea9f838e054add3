"""alberta: sparse weight initialization for JAX, from one layer to a pod.

`SparseInit` (which needs Haiku), the ELL functions (which need
`jax.experimental.sparse`) and `keep_zeros` (which needs optax) are imported on
first use (PEP 562), so `import alberta` costs little more than `import jax`;
orbax is imported only when a checkpoint is saved or restored.
"""

import importlib
from typing import Any

from alberta import checkpoint
from alberta import initializers
from alberta._src.checks import num_zeros
from alberta._src.one_device import sparse_init
from alberta._src.masks import sparse_mask
from alberta._src.networks import sparsify
from alberta._src.sharding import pmap_sparse_init
from alberta._src.sharding import sharded_sparse_init
from alberta._src.verify import VerificationError
from alberta._src.verify import verify

__version__ = "0.4.1"

__all__ = (
    "SparseInit",
    "VerificationError",
    "checkpoint",
    "initializers",
    "keep_zeros",
    "num_zeros",
    "pmap_sparse_init",
    "sharded_sparse_init",
    "sharded_sparse_init_ell",
    "sparse_init",
    "sparse_init_ell",
    "sparse_mask",
    "sparsify",
    "to_bcoo",
    "to_dense",
    "verify",
)

# Public attributes imported on first access: name -> defining module.
_LAZY = {
    "SparseInit": "alberta._src.haiku_init",
    "keep_zeros": "alberta._src.training",
    "sharded_sparse_init_ell": "alberta._src.ell",
    "sparse_init_ell": "alberta._src.ell",
    "to_bcoo": "alberta._src.ell",
    "to_dense": "alberta._src.ell",
}


def __getattr__(name: str) -> Any:
  module = _LAZY.get(name)
  if module is None:
    raise AttributeError(f"module 'alberta' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value  # later accesses skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY))
