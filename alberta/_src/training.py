"""`keep_zeros`: an optax transformation that keeps a sparse network sparse.

Imported on first use of `alberta.keep_zeros`, so that optax is needed only
by those who train with it (the `optax` extra).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

try:
  import optax
except ImportError as e:  # pragma: no cover (optax is in the test extra)
  raise ImportError(
      "alberta.keep_zeros needs optax: pip install optax (or, from "
      "alberta's clone, pip install -e '.[optax]')."
  ) from e

from alberta._src import networks

Array = jax.Array

# An unselected leaf's mask: no bits.
_NO_MASK = (0,)


class KeepZerosState(NamedTuple):
  """`keep_zeros`' state.

  Attributes:
    masks: a pytree like the params: for each selected kernel its keep-mask
      (`True` where the initial weight was nonzero), flattened and packed 8
      to a byte (`jnp.packbits`, uint8 of `ceil(size / 8)` bytes, 1/32 of a
      float32 kernel); for every other leaf an empty uint8 array.
  """

  masks: Any


def keep_zeros(
    include: networks.Include | None = None,
) -> optax.GradientTransformation:
  """An optax transformation that keeps every initial zero of a kernel at zero.

  `init(params)` records which weights of each selected kernel are zero in
  `params` (normally a sparse initialization: `sparsify`, `SparseInit`);
  `update` then sets those weights' updates to exactly zero, so the network
  stays exactly as sparse as it started, through any number of steps (static
  sparse training). Selection is `sparsify`'s, with the same default and the
  same `include` (its sparsity or layout answers only select): kernels, not
  biases, norm scales or embeddings. Biases start at zero and keep training.

  It chains before or after any optax optimizer:
  `optax.chain(alberta.keep_zeros(), optax.adam(1e-3))` zeroes the gradients
  of the zeros, so Adam's moments for them stay zero and so do its updates;
  `optax.chain(optax.adam(1e-3), alberta.keep_zeros())` zeroes the final
  updates (a decayed zero weight stays zero either way).

  This is an option beside the paper's method, not the paper's method:
  Elsayed et al. (2024) use sparse initialization only at initialization and
  let the zeroed weights train, so they fill in after the first update. Use
  plain optax for that.

  The masks are kept in the state as packed bits (`KeepZerosState`), 1/32 of
  a float32 kernel's bytes.

  Examples:
    >>> import haiku as hk
    >>> import optax
    >>> key = jax.random.key(0)
    >>> net = hk.transform(lambda x: hk.nets.MLP([32, 4])(x))
    >>> params = alberta.sparsify(key, net.init(key, jnp.ones([1, 8])), 0.5)
    >>> tx = optax.chain(alberta.keep_zeros(), optax.adam(1e-2))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> new = optax.apply_updates(params, updates)
    >>> w, new_w = params["mlp/~/linear_0"]["w"], new["mlp/~/linear_0"]["w"]
    >>> bool(((new_w == 0) == (w == 0)).all())   # zeros stay zero
    True
    >>> bool((new_w != w).any())   # the other weights train
    True

  Args:
    include: `sparsify`'s `(path, leaf) -> choice`, or None for the default
      selection (kernels by name).

  Returns:
    An `optax.GradientTransformation`; its `update` needs no `params`.
  """
  if include is not None and not callable(include):
    raise TypeError(
        "keep_zeros: include must be None or a callable (path, leaf) -> "
        f"choice, got {include!r}."
    )

  def init_fn(params: Any) -> KeepZerosState:
    flat, selected = networks.select(params, include, "keep_zeros")
    masks = [jnp.zeros(_NO_MASK, jnp.uint8)] * len(flat.leaves)
    for kernel in selected:
      weights = jnp.asarray(flat.leaves[kernel.index])
      masks[kernel.index] = jnp.packbits((weights != 0).reshape(-1))
    return KeepZerosState(flat.unflatten(masks))

  def update_fn(
      updates: Any, state: KeepZerosState, params: Any = None
  ) -> tuple[Any, KeepZerosState]:
    del params
    flat = networks.flatten(updates)
    masks = networks.flatten(state.masks).leaves
    if len(masks) != len(flat.leaves):
      raise ValueError(
          f"keep_zeros: the updates have {len(flat.leaves)} leaves but the "
          f"state was initialized with params of {len(masks)}; update must "
          "get updates shaped like the params given to init."
      )
    out = [
        update if mask.shape == _NO_MASK else _masked(update, mask)
        for update, mask in zip(flat.leaves, masks, strict=True)
    ]
    return flat.unflatten(out), state

  return optax.GradientTransformation(init_fn, update_fn)


def _masked(update: Array, packed: Array) -> Array:
  keep = jnp.unpackbits(packed, count=update.size).reshape(update.shape)
  return jnp.where(keep.astype(bool), update, jnp.zeros((), update.dtype))
