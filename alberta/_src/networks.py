"""`sparsify`: sparse init for every kernel of a model at once.

A model's parameters are a pytree (Haiku's nested dicts, Flax linen's
`params`, a Flax NNX `State`, an Equinox module). Its kernels are found by
name, as their framework names them, and each one is replaced by the sparse
kernel `SparseInit` would have made with a key derived from the model's key
and the leaf's path. The same selection (`select`) is `keep_zeros`'.

Selection by name:
- Haiku `w` and Flax `kernel` (linen and NNX) are `(..., in, out)`: every
  output unit (last axis) has `prod(shape[:-1])` inputs;
- Equinox and PyTorch-style `weight` are `(out, in, ...)`: every output unit
  (first axis) has `prod(shape[1:])` inputs; an Equinox `Embedding`'s `weight`
  is a table, not a kernel, and is left alone;
- only floating leaves of rank >= 2 are kernels: biases, norm scales and
  embedding tables (Haiku `embeddings`, Flax `embedding`) are not.

Per-layer sparsity: uniform (every kernel at `sparsity`), or the
Erdős–Rényi-kernel allocation (`erk_sparsities`) of Evci et al., "Rigging
the Lottery" (ICML 2020), as RigL and jaxpruner compute it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alberta._src import checks
from alberta._src import layouts
from alberta._src import keys

Array = jax.Array

# Names of kernels by layout: "in_out" is `(..., in, out)`, "out_in" is
# `(out, in, ...)`.
LAYOUTS = ("in_out", "out_in")
_LAYOUT_OF_NAME = {"w": "in_out", "kernel": "in_out", "weight": "out_in"}
DISTRIBUTIONS = ("uniform", "erk")
# `sparse_init`'s options that `sparsify` passes on (the dtype is each leaf's).
_OPTIONS = ("init_type", "method", "rounding")

# `include(path, leaf)`'s answer: see `sparsify`.
Include = Callable[[str, Any], Any]


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A selected leaf.

  Attributes:
    index: its position among the flattened leaves (`Leaves.leaves`).
    path: its path, "/"-joined (`path_string`).
    shape: its shape.
    dtype: its dtype.
    fan_in_axes: the axes of an output unit's inputs (`sparse_kernel`'s).
    sparsity: its own sparsity from `include`, or None (the call's).
  """

  index: int
  path: str
  shape: tuple[int, ...]
  dtype: np.dtype
  fan_in_axes: tuple[int, ...] | None
  sparsity: float | None

  @property
  def size(self) -> int:
    return math.prod(self.shape)


@dataclasses.dataclass
class Leaves:
  """A pytree's leaves, their paths and a way back to the tree.

  Attributes:
    leaves: the leaves, flattened; an Equinox `Embedding`'s inside it.
    paths: each leaf's path string.
    tables: whether each leaf sits in an Equinox `Embedding` (a table).
    unflatten: `leaves -> tree`, the same structure with new leaves.
  """

  leaves: list[Any]
  paths: list[str]
  tables: list[bool]
  unflatten: Callable[[list[Any]], Any]


def _entry_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_string(path: Sequence[Any]) -> str:
  """A key path as "/"-joined names: dict keys, attribute names, indices.

  A trailing `.value` attribute (Flax NNX's `Variable`, linen's boxed
  `Partitioned`) is the parameter's own value and is left out, so an NNX
  kernel's path ends in `kernel` as in linen.
  """
  entries = list(path)
  if (
      entries
      and isinstance(entries[-1], jax.tree_util.GetAttrKey)
      and (entries[-1].name == "value")
  ):
    entries = entries[:-1]
  return "/".join(_entry_name(e) for e in entries)


def _is_table_module(x: Any) -> bool:
  """An Equinox `Embedding` (checked only when Equinox is imported)."""
  eqx = sys.modules.get("equinox")
  return eqx is not None and isinstance(x, eqx.nn.Embedding)


def flatten(tree: Any) -> Leaves:
  """`tree`'s leaves with their paths, an Equinox `Embedding`'s marked."""
  top, treedef = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=_is_table_module
  )
  leaves, paths, tables, spans = [], [], [], []
  for path, leaf in top:
    if _is_table_module(leaf):
      inner, inner_def = jax.tree_util.tree_flatten_with_path(leaf)
      spans.append((len(leaves), len(inner), inner_def))
      for sub, x in inner:
        leaves.append(x)
        paths.append(path_string(tuple(path) + tuple(sub)))
        tables.append(True)
    else:
      spans.append((len(leaves), 1, None))
      leaves.append(leaf)
      paths.append(path_string(path))
      tables.append(False)

  def unflatten(new: list[Any]) -> Any:
    top_new = [
        new[start]
        if inner_def is None
        else inner_def.unflatten(new[start : start + n])
        for start, n, inner_def in spans
    ]
    return treedef.unflatten(top_new)

  return Leaves(leaves, paths, tables, unflatten)


def _is_array_like(leaf: Any) -> bool:
  return (
      hasattr(leaf, "shape")
      and hasattr(leaf, "dtype")
      and not isinstance(leaf, (str, bytes))
  )


def _may_be_kernel(leaf: Any) -> bool:
  """A floating array of rank >= 2."""
  return (
      _is_array_like(leaf)
      and len(leaf.shape) >= 2
      and jnp.issubdtype(leaf.dtype, jnp.floating)
  )


def _default_layout(path: str, leaf: Any, table: bool) -> str | None:
  """The layout of a kernel named as its framework names kernels, else None."""
  if table or not _may_be_kernel(leaf):
    return None
  return _LAYOUT_OF_NAME.get(path.rsplit("/", 1)[-1])


def _fan_in_axes(
    layout: Any, path: str, shape: tuple[int, ...], name: str
) -> tuple[int, ...] | None:
  """`sparse_kernel`'s `fan_in_axes` for a layout, checked against `shape`."""
  if layout == "in_out":
    return None
  if layout == "out_in":
    return tuple(range(1, len(shape)))
  axes = layouts.check_fan_in_axes(layout)
  try:
    layouts.fan_in_and_out_axes(shape, axes)
  except ValueError as e:
    raise ValueError(f"{name}: include's layout for leaf {path!r}: {e}") from e
  return axes


def _interpret(
    answer: Any, path: str, name: str
) -> tuple[bool | None, float | None, Any]:
  """`include`'s answer: (selected, or None: the default; sparsity; layout)."""
  if answer is None:
    return None, None, None
  if isinstance(answer, (bool, np.bool_)):
    return bool(answer), None, None
  if isinstance(answer, numbers.Real):
    try:
      return True, checks.check_sparsity(answer), None
    except (TypeError, ValueError) as e:
      raise ValueError(
          f"{name}: include returned sparsity {answer!r} for leaf {path!r}, "
          "which is not a real number in [0, 1]."
      ) from e
  if isinstance(answer, str):
    if answer not in LAYOUTS:
      raise ValueError(
          f"{name}: include returned {answer!r} for leaf {path!r}; a layout "
          f"is one of {list(LAYOUTS)} or a tuple of fan-in axes."
      )
    return True, None, answer
  if isinstance(answer, tuple):
    if len(answer) == 2 and isinstance(answer[1], (str, tuple)):
      _, sparsity, _ = _interpret(answer[0], path, name)
      _, _, layout = _interpret(answer[1], path, name)
      if sparsity is None or layout is None:
        raise ValueError(
            f"{name}: include returned {answer!r} for leaf {path!r}; a pair "
            "is (sparsity, layout)."
        )
      return True, sparsity, layout
    if answer and all(
        isinstance(a, numbers.Integral) and not isinstance(a, (bool, np.bool_))
        for a in answer
    ):
      return True, None, answer
  raise TypeError(
      f"{name}: include returned {answer!r} of type {type(answer).__name__} "
      f"for leaf {path!r}; it must return None (the default choice), "
      f"True/False, a sparsity in [0, 1], a layout ({', '.join(LAYOUTS)} or "
      "a tuple of fan-in axes) or a (sparsity, layout) pair."
  )


def select(
    tree: Any, include: Include | None, name: str
) -> tuple[Leaves, list[Kernel]]:
  """The kernels of `tree`, by name or by `include` (see `sparsify`).

  Every choice is checked here, before any work: a selected leaf must be a
  floating array of rank >= 2 in a dtype `sparse_init` accepts, with a layout
  (known from its name or given by `include`).

  Args:
    tree: the parameters.
    include: `sparsify`'s `include`, or None.
    name: the public function, named in errors.

  Returns:
    The flattened tree and its selected kernels, in leaf order.
  """
  if include is not None and not callable(include):
    raise TypeError(
        f"{name}: include must be None or a callable (path, leaf) -> choice, "
        f"got {include!r}."
    )
  flat = flatten(tree)
  selected = []
  for index, (leaf, path, table) in enumerate(
      zip(flat.leaves, flat.paths, flat.tables, strict=True)
  ):
    if not _is_array_like(leaf):
      continue
    layout = _default_layout(path, leaf, table)
    chosen, sparsity = layout is not None, None
    if include is not None:
      answer, sparsity, given = _interpret(include(path, leaf), path, name)
      if sparsity is not None and given is None and not _may_be_kernel(leaf):
        # A sparsity alone is for kernels: `0.99 if "Dense" in path` leaves
        # the layer's bias alone.
        answer, sparsity = False, None
      if answer is not None:
        chosen = answer
      if given is not None:
        layout = given
      elif chosen and layout is None:
        layout = _LAYOUT_OF_NAME.get(path.rsplit("/", 1)[-1])
    if not chosen:
      continue
    shape = tuple(int(d) for d in leaf.shape)
    if len(shape) < 2:
      raise ValueError(
          f"{name}: leaf {path!r} of shape {shape} was selected, but a kernel "
          "has rank >= 2 (its inputs and its outputs)."
      )
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(
          f"{name}: leaf {path!r} of dtype {leaf.dtype} was selected, but "
          "only floating kernels are initialized."
      )
    if layout is None:
      raise ValueError(
          f"{name}: leaf {path!r} of shape {shape} was selected, but its name "
          "does not say its layout (w and kernel are in_out, weight is "
          "out_in); have include return 'in_out', 'out_in' or its fan-in "
          "axes for it."
      )
    dtype = checks.check_dtype(leaf.dtype)
    selected.append(
        Kernel(
            index,
            path,
            shape,
            dtype,
            _fan_in_axes(layout, path, shape, name),
            sparsity,
        )
    )
  return flat, selected


def erk_sparsities(
    shapes: Sequence[Sequence[int]], sparsity: float
) -> list[float]:
  """The Erdős–Rényi-kernel per-layer sparsities (Evci et al. 2020).

  Layer `l` gets density `eps * sum(shape_l) / prod(shape_l)` (for a dense
  layer `(n_in + n_out) / (n_in n_out)`, for a convolution
  `(n_in + n_out + h + w) / (n_in n_out h w)`), with `eps` chosen so that the
  layers hold `(1 - sparsity) * sum(prod(shape_l))` weights in all. A layer
  whose density would exceed 1 is made dense and the others share its excess:
  the layers of largest `sum / prod` are capped one value at a time and `eps`
  recomputed, until none exceeds 1 (RigL's `get_sparsities_erdos_renyi`,
  jaxpruner's `erk`). Empty layers keep `sparsity`.

  Args:
    shapes: the layers' kernel shapes.
    sparsity: the overall sparsity of all these layers together, in [0, 1].

  Returns:
    Each layer's sparsity, `1 - density`, in [0, 1].
  """
  sizes = [math.prod(s) for s in shapes]
  raw = [sum(s) / n if n else 0.0 for s, n in zip(shapes, sizes, strict=True)]
  target_zeros = sparsity * sum(sizes)
  dense: set[int] = set()
  eps = 0.0
  while True:
    free = [i for i, n in enumerate(sizes) if n and i not in dense]
    if not free:
      break
    eps = (sum(sizes[i] for i in free) - target_zeros) / sum(
        raw[i] * sizes[i] for i in free
    )
    largest = max(raw[i] for i in free)
    if eps * largest <= 1:
      break
    dense.update(i for i in free if raw[i] == largest)
  out = []
  for i, n in enumerate(sizes):
    if not n:
      out.append(sparsity)
    elif i in dense:
      out.append(0.0)
    else:
      out.append(min(1.0, max(0.0, 1.0 - eps * raw[i])))
  return out


def leaf_key(key: Array, path: str) -> Array:
  """A leaf's key: `key` folded with the 64-bit BLAKE2b hash of its path.

  `fold_in(fold_in(key, h_hi), h_lo)`, `h` the first 8 bytes of
  BLAKE2b(path, UTF-8), big-endian: a function of the key and the path alone.
  """
  digest = hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest()
  hi, lo = np.frombuffer(digest, dtype=">u4").astype(np.uint32)
  return jax.random.fold_in(jax.random.fold_in(key, hi), lo)


def _check_options(options: dict[str, Any], sparsity: float) -> dict[str, Any]:
  unknown = sorted(set(options) - set(_OPTIONS))
  if unknown:
    raise TypeError(
        f"sparsify got unexpected option(s) {unknown}; its options are "
        f"sparse_init's {list(_OPTIONS)} (each leaf keeps its own dtype)."
    )
  full = dict(init_type="uniform", method="permutation", rounding="nearest")
  full.update(options)
  layouts.check_options(
      sparsity, full["init_type"], full["method"], full["rounding"]
  )
  return full


def _placed_like(new: Array, leaf: Any) -> Array:
  """`new` on `leaf`'s devices, when `leaf` is a concrete array."""
  if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
    if new.sharding != leaf.sharding:
      return jax.device_put(new, leaf.sharding)
  return new


def sparsify(
    key: Array,
    params: Any,
    sparsity: float = 0.9,
    *,
    include: Include | None = None,
    distribution: str = "uniform",
    **options: Any,
) -> Any:
  """`params` with every selected kernel replaced by a sparse initialization.

  A whole model at once: the parameters of a Haiku transform, Flax linen's
  variables, a Flax NNX `State` (`nnx.split`/`nnx.state`) or an Equinox
  module. Each selected leaf becomes the kernel `SparseInit` makes for its
  shape, dtype and layout (every output unit with exactly
  `num_zeros(fan_in, s, rounding)` zeros among its inputs, LeCun-scale
  values), with its own key. Everything else is returned untouched, as the
  same objects.

  Selection (also `keep_zeros`'): by default the floating leaves of rank >= 2
  that their framework names as kernels: Haiku `w` and Flax `kernel`, laid
  out `(..., in, out)`, and Equinox and PyTorch-style `weight`, laid out
  `(out, in, ...)`. Biases, norm scales and embedding tables (Haiku
  `embeddings`, Flax `embedding`, an Equinox `Embedding`'s `weight`) are not
  kernels. `include(path, leaf)` overrides that, leaf by leaf; `path` is the
  leaf's "/"-joined path (dict keys, attribute names, indices; an NNX
  variable's trailing `.value` left out), e.g. "mlp/~/linear_0/w" (Haiku),
  "params/Conv_0/kernel" (Flax), "layers/0/weight" (Equinox). It returns:

  - None: the default choice;
  - False or True: leave the leaf alone, or select it (its name must then
    say its layout);
  - a number in [0, 1]: select it at that sparsity, if it is a floating
    array of rank >= 2 (a bias is left alone, so `0.99 if "Dense" in path`
    means the layer's kernel);
  - a layout: "in_out" (`(..., in, out)`), "out_in" (`(out, in, ...)`) or a
    tuple of the axes holding an output unit's inputs (as `SparseInit`'s
    `fan_in_axes`);
  - a pair `(sparsity, layout)`.

  Keys: leaf `path`'s key is `fold_in(fold_in(key, h_hi), h_lo)` for the
  64-bit BLAKE2b hash `h` of `path`, so a leaf's weights depend on the key,
  its path, shape, dtype and options only, not on the tree's order or on
  which other leaves are selected. A Haiku kernel equals
  `SparseInit(s, ...)` under that key.

  Distribution: "uniform" gives every kernel `sparsity`; "erk" gives kernel
  `l` the Erdős–Rényi-kernel density `eps * sum(shape_l) / prod(shape_l)`
  (Evci et al., "Rigging the Lottery", 2020, as RigL and jaxpruner), capped at
  1 with the excess redistributed, `eps` chosen so that the kernels' overall
  sparsity is `sparsity`. Kernels given a sparsity by `include` keep it and
  are left out of that allocation. Each kernel's zero count per output unit
  is then `num_zeros(fan_in, s_l, rounding)`, so the overall sparsity is met
  up to that rounding (under one weight per output unit).

  Examples:
    >>> import haiku as hk
    >>> key = jax.random.key(0)
    >>> net = hk.transform(lambda x: hk.nets.MLP([64, 64, 4])(x))
    >>> params = alberta.sparsify(key, net.init(key, jnp.ones([1, 16])), 0.9)
    >>> w = params["mlp/~/linear_0"]["w"]   # (16, 64): (in, out)
    >>> np.unique((w == 0).sum(axis=0)).tolist()   # num_zeros(16, 0.9)
    [14]
    >>> bool((params["mlp/~/linear_0"]["b"] == 0).all())   # biases untouched
    True

  Args:
    key: a threefry PRNG key, `jax.random.key(...)` or
      `jax.random.PRNGKey(...)`.
    params: a pytree of parameters (a Haiku or Flax params dict, an NNX
      `State`, an Equinox module, ...). Leaves that are not arrays pass
      through.
    sparsity: each kernel's sparsity ("uniform"), or the kernels' overall
      sparsity ("erk"), in [0, 1].
    include: `(path, leaf) -> choice`, or None for the default selection.
    distribution: "uniform" or "erk".
    **options: `sparse_init`'s `init_type`, `method` and `rounding`.

  Returns:
    A pytree of the same structure; selected kernels are new arrays of their
    leaf's shape and dtype (and, for concrete arrays, sharding).

  Warns:
    UserWarning: once for each kernel whose zero count is its whole fan-in
      (all zeros), naming its path, shape, sparsity and rounding.
  """
  keys.check_key(key)
  sparsity = checks.check_sparsity(sparsity)
  checks.check_choice("distribution", distribution, DISTRIBUTIONS)
  options = _check_options(options, sparsity)
  flat, selected = select(params, include, "sparsify")
  allotted = [k for k in selected if k.sparsity is None]
  if distribution == "erk":
    shares = erk_sparsities([k.shape for k in allotted], sparsity)
  else:
    shares = [sparsity] * len(allotted)
  share_of = dict(zip((k.index for k in allotted), shares, strict=True))
  leaves = list(flat.leaves)
  for kernel in selected:
    s = (
        kernel.sparsity
        if kernel.sparsity is not None
        else share_of[kernel.index]
    )
    new = layouts.sparse_kernel(
        leaf_key(key, kernel.path),
        kernel.shape,
        kernel.dtype,
        sparsity=s,
        fan_in_axes=kernel.fan_in_axes,
        name=kernel.path,
        **options,
    )
    leaves[kernel.index] = _placed_like(new, leaves[kernel.index])
  return flat.unflatten(leaves)
