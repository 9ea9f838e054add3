"""alberta: sparse weight initialization for JAX, from one layer to a pod."""

from alberta import checkpoint
from alberta import initializers
from alberta._src.checks import num_zeros
from alberta._src.core import sparse_init
from alberta._src.ell import sharded_sparse_init_ell
from alberta._src.ell import sparse_init_ell
from alberta._src.ell import to_bcoo
from alberta._src.ell import to_dense
from alberta._src.haiku_init import SparseInit
from alberta._src.sharding import pmap_sparse_init
from alberta._src.sharding import sharded_sparse_init
from alberta._src.verify import verify

__version__ = "0.1.0"

__all__ = (
    "SparseInit",
    "checkpoint",
    "initializers",
    "num_zeros",
    "pmap_sparse_init",
    "sharded_sparse_init",
    "sharded_sparse_init_ell",
    "sparse_init",
    "sparse_init_ell",
    "to_bcoo",
    "to_dense",
    "verify",
)
