"""Reference implementations of sparse initialization, transcribed (README.md).

- `sparse_init`: alberta_framework's JAX `sparse_init`
  (`core/initializers.py`), the reference alberta's `method="permutation"`
  reproduces bit for bit;
- `torch_sparse_init`: the 2-D branch of Elsayed et al.'s PyTorch
  `sparse_init.py`, which that reference ports.

Import from the repository root: `from third_party.alberta_framework import
sparse_init`.
"""

from third_party.alberta_framework.initializers import sparse_init
from third_party.alberta_framework.torch_sparse_init import torch_sparse_init

__all__ = ("sparse_init", "torch_sparse_init")
