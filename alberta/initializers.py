"""`jax.nn.initializers`-style sparse initializers, for Flax and Equinox."""

from jax.nn.initializers import Initializer
from alberta._src.jax_init import sparse

__all__ = ("Initializer", "sparse")
