"""The block generator: any tile of the matrix from its global coordinates.

Proves that `blocks.row_block` / `blocks.generate` give exactly the slice of
`sparse_init` for any row range (traced under jit), column tile and chunk
size; that the bits behind them are `jax.random`'s for the same global indices,
also where the flat index no longer fits in 32 bits; and that turning
`jax_threefry_partitionable` off makes them refuse rather than return other
numbers.
"""

from tests import env  # noqa: F401

import functools
import itertools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.extend.random import threefry2x32_p

import alberta
from tests import test_utils
from alberta._src import bits
from alberta._src import blocks
from alberta._src import driver
from alberta._src import keys
from alberta._src.spec import make_spec

_METHODS_AND_TYPES = tuple(
    dict(testcase_name=f"_{m}_{t}", method=m, init_type=t)
    for m, t in itertools.product(
        ("permutation", "counter"), ("uniform", "normal")
    )
)
# The default run's: each method and each distribution once (the distribution
# is an elementwise map of the same bits); the slow run has the other two.
_COVERING = (_METHODS_AND_TYPES[0], _METHODS_AND_TYPES[3])
_OTHERS = (_METHODS_AND_TYPES[1], _METHODS_AND_TYPES[2])

# The matrix whose tiles and chunks RowBlockTest and HostLoopTest check.
_SHAPE = (50, 33)
_SPARSITY = 0.6
_KEY = 3


def _spec(method: str, init_type: str):
  return make_spec(_SHAPE, _SPARSITY, init_type, method, "nearest")[0]


@functools.lru_cache(maxsize=None)
def _reference(method: str, init_type: str) -> np.ndarray:
  """`sparse_init` of the shared matrix, computed once per case."""
  return np.asarray(
      alberta.sparse_init(
          jax.random.key(_KEY), _SHAPE, _SPARSITY, init_type, method=method
      )
  )


assert_same_matrix = test_utils.assert_same_matrix


def reference_bits(key, rows, cols, row_length: int) -> np.ndarray:
  """`jax.random.bits(key, (*, row_length))[rows, cols]`, built independently.

  The 64-bit flat counter is computed in NumPy uint64 (not with the library's
  16-bit-limb arithmetic) and hashed with the raw Threefry primitive, as
  `jax.random` does under `jax_threefry_partitionable`: `hi, lo` words of the
  counter in, the two output words XOR-ed for a 32-bit draw.
  """
  counter = np.asarray(rows, np.uint64) * np.uint64(row_length) + np.asarray(
      cols, np.uint64
  )
  hi = (counter >> np.uint64(32)).astype(np.uint32)
  lo = (counter & np.uint64(0xFFFFFFFF)).astype(np.uint32)
  k = jax.random.key_data(key)
  b1, b2 = threefry2x32_p.bind(k[0], k[1], jnp.asarray(hi), jnp.asarray(lo))
  return np.asarray(b1 ^ b2)


class MulAddU64Test(parameterized.TestCase):

  def test_matches_python_integer_arithmetic(self):
    rng = np.random.default_rng(0)
    edges = [
        0,
        1,
        2,
        0xFFFF,
        0x10000,
        0x10001,
        2**31 - 1,
        2**31,
        2**32 - 2,
        2**32 - 1,
    ]
    a = np.array(edges + list(rng.integers(0, 2**32, 30)), np.uint32)
    c = np.array(
        list(reversed(edges)) + list(rng.integers(0, 2**32, 30)), np.uint32
    )
    for b in (
        edges
        + [3, 65536, 70000, 4_000_000_007]
        + [int(x) for x in rng.integers(0, 2**32, 4)]
    ):
      hi, lo = bits.mul_add_u64(jnp.asarray(a), b, jnp.asarray(c))
      got = [
          (int(high) << 32) | int(low)
          for high, low in zip(np.asarray(hi), np.asarray(lo), strict=True)
      ]
      want = [int(x) * b + int(y) for x, y in zip(a, c, strict=True)]
      self.assertEqual(got, want, msg=f"multiplier {b}")

  @parameterized.parameters(-1, 2**32, 2**40)
  def test_rejects_multiplier_outside_uint32(self, b):
    with self.assertRaisesRegex(ValueError, f"multiplier.*{b}"):
      bits.mul_add_u64(jnp.zeros((2,), jnp.uint32), b)


class ElementBitsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("typed_key", lambda: jax.random.key(7)),
      ("raw_key", lambda: jax.random.PRNGKey(7)),
  )
  def test_equals_jax_random_bits_for_same_global_indices(self, make_key):
    key = make_key()
    full = np.asarray(jax.random.bits(key, (13, 37), jnp.uint32))
    rows = np.array([0, 1, 5, 12], np.uint32)
    cols = np.array([0, 3, 36], np.uint32)
    element_bits = jax.jit(test_utils.element_bits, static_argnums=3)
    got = element_bits(
        keys.key_words(key),
        jnp.asarray(rows)[:, None],
        jnp.asarray(cols)[None, :],
        37,
    )
    np.testing.assert_array_equal(np.asarray(got), full[np.ix_(rows, cols)])
    everything = element_bits(
        keys.key_words(key),
        jnp.arange(13, dtype=jnp.uint32)[:, None],
        jnp.arange(37, dtype=jnp.uint32)[None, :],
        37,
    )
    np.testing.assert_array_equal(np.asarray(everything), full)

  def test_reference_counter_layout_is_jax_random_layout(self):
    # Pins `reference_bits` (used for far indices below) to jax.random itself.
    key = jax.random.key(11)
    rows, cols = np.meshgrid(np.arange(9), np.arange(21), indexing="ij")
    np.testing.assert_array_equal(
        reference_bits(key, rows, cols, 21),
        np.asarray(jax.random.bits(key, (9, 21), jnp.uint32)),
    )

  # `jax.random.bits(key, (70000, 65536))` itself cannot be checked at a far
  # tile: XLA does not sink a slice into the random-bits computation, so even
  # `jit(lambda k: bits(k, shape)[-10:, -36:])` allocates ~73 GB of temporaries
  # (its compiled memory_analysis says so). The reference is therefore the same
  # counter scheme with exact 64-bit NumPy counters, pinned to jax.random on
  # small shapes by the test above.
  @parameterized.named_parameters(
      # 70000 x 65536: row 65536 is the first whose flat index reaches 2**32.
      (
          "rows_straddling_2_32",
          65536,
          [65534, 65535, 65536, 65537],
          [0, 1, 65534, 65535],
      ),
      ("far_corner", 65536, [69990, 69995, 69999], [0, 65500, 65535]),
      # Row length close to 2**32: the column add carries into the high word.
      (
          "carry_from_column_add",
          2**32 - 1,
          [0, 1, 2, 3, 2**31],
          [0, 1, 2**32 - 3, 2**32 - 2],
      ),
      (
          "odd_row_length",
          4_000_000_007,
          [0, 1, 3, 4_000_000_000],
          [0, 123_456_789, 4_000_000_006],
      ),
  )
  def test_equals_64_bit_counter_bits_past_2_32(self, row_length, rows, cols):
    key = jax.random.key(2024)
    rows = np.array(rows, np.uint32)[:, None]
    cols = np.array(cols, np.uint32)[None, :]
    self.assertGreater(int(rows.max()) * row_length + int(cols.max()), 2**32)
    got = jax.jit(test_utils.element_bits, static_argnums=3)(
        keys.key_words(key), jnp.asarray(rows), jnp.asarray(cols), row_length
    )
    np.testing.assert_array_equal(
        np.asarray(got), reference_bits(key, rows, cols, row_length)
    )

  def test_bits_to_floats_equal_jax_random_samplers(self):
    key = jax.random.key(5)
    raw = jax.random.bits(key, (64, 48), jnp.uint32)
    scale = 1.0 / 48**0.5
    # Under jit, as the library always runs them: op by op the uniform map's
    # multiply-add is rounded twice, while XLA fuses it (in jax.random.uniform
    # too) into one FMA, a 1-ulp difference for half of these values.
    to_uniform = jax.jit(bits.bits_to_uniform, static_argnums=(1, 2))
    np.testing.assert_array_equal(
        np.asarray(to_uniform(raw, -scale, scale)),
        np.asarray(
            jax.random.uniform(key, (64, 48), jnp.float32, -scale, scale)
        ),
    )
    np.testing.assert_array_max_ulp(
        np.asarray(jax.jit(bits.bits_to_normal)(raw)),
        np.asarray(jax.random.normal(key, (64, 48), jnp.float32)),
        maxulp=4,
    )


class RowBlockTest(parameterized.TestCase):

  _SHAPE = _SHAPE
  _SPARSITY = _SPARSITY

  @parameterized.named_parameters(*_COVERING)
  def test_any_tile_with_traced_start_equals_slice_of_sparse_init(
      self, method, init_type
  ):
    self._check_any_tile(method, init_type)

  @parameterized.named_parameters(*_OTHERS)
  @test_utils.slow
  def test_any_tile_with_traced_start_equals_slice_of_sparse_init_others(
      self, method, init_type
  ):
    self._check_any_tile(method, init_type)

  def _check_any_tile(self, method, init_type):
    key = jax.random.key(_KEY)
    whole = _reference(method, init_type)
    spec = _spec(method, init_type)
    traces = []

    @jax.jit
    def tile(key, r0, c0):
      traces.append("tile")
      return blocks.row_block(key, spec, r0, 7, c0, 5)

    for r0 in (0, 1, 13, 43):  # 43: the tile ends at the last row.
      # Called on its own, outside any jit, too (it is jitted itself, its start
      # traced): a 1/sqrt(33) scale makes the uniform map round differently
      # op by op than fused (see ElementBitsTest).
      assert_same_matrix(
          blocks.row_block(key, spec, r0, 7), whole[r0 : r0 + 7], init_type
      )
      for c0 in (0, 17, 28):  # 28: the tile ends at the last column.
        assert_same_matrix(
            tile(key, r0, c0), whole[r0 : r0 + 7, c0 : c0 + 5], init_type
        )
    # The starts were traced: one compile serves every tile position.
    self.assertEqual(traces, ["tile"])

  @parameterized.named_parameters(
      ("_permutation_chunk1", "permutation", "uniform", 1),
      ("_permutation_chunk7", "permutation", "uniform", 7),
      ("_counter_chunk7", "counter", "normal", 7),
      ("_counter_default", "counter", "normal", None),
  )
  def test_chunked_generate_equals_slice(self, method, init_type, chunk_rows):
    # 20 rows in chunks of 7: the last chunk is shifted back over its
    # predecessor, which must recompute those rows identically.
    key = jax.random.PRNGKey(_KEY)  # A raw key: the same matrix.
    whole = _reference(method, init_type)
    spec = _spec(method, init_type)
    gen = jax.jit(
        lambda key, r0, c0: blocks.generate(
            key, spec, r0, 20, c0, 11, jnp.float32, chunk_rows
        )
    )
    for r0, c0 in ((0, 0), (30, 22), (11, 5)):
      assert_same_matrix(
          gen(key, r0, c0), whole[r0 : r0 + 20, c0 : c0 + 11], init_type
      )

  def test_generate_in_bfloat16_is_float32_cast(self):
    key = jax.random.key(4)
    spec, _ = make_spec(self._SHAPE, 0.5, "normal", "counter", "nearest")
    f32 = blocks.generate(key, spec, 3, 12, 0, 33, jnp.float32)
    bf16 = blocks.generate(key, spec, 3, 12, 0, 33, jnp.bfloat16)
    self.assertEqual(bf16.dtype, jnp.bfloat16)
    np.testing.assert_array_equal(
        np.asarray(bf16), np.asarray(f32.astype(jnp.bfloat16))
    )

  @parameterized.parameters((0, 33), (6, 0))
  def test_empty_tile(self, n_rows, n_cols):
    spec, _ = make_spec(self._SHAPE, 0.5, "uniform", "permutation", "nearest")
    out = blocks.generate(
        jax.random.key(0), spec, 0, n_rows, 0, n_cols, jnp.float32, None
    )
    self.assertEqual(out.shape, (n_rows, n_cols))

  def test_far_tile_of_huge_matrix_equals_independent_reference(self):
    # Rows [4199990, 4200000) x columns [1000, 1031) of a 4200000 x 1031
    # matrix (flat indices ~4.33e9 > 2**32), built without the rest of the
    # matrix and compared with the reference's recipe computed from global
    # indices: row keys from jax.random.split, masks from
    # jax.random.permutation, weight bits from exact 64-bit counters.
    self._check_far_tile((4_200_000, 1031), 4_199_990, 10, 1000, 31)

  @test_utils.slow
  def test_far_tile_of_huge_matrix_with_long_rows(self):
    # 70000 x 65536 (flat indices ~4.59e9): rows of two sort rounds, whose
    # mask takes the sort path instead of the compare path.
    self._check_far_tile((70000, 65536), 69990, 10, 65500, 36)

  def _check_far_tile(self, shape, r0, n_rows, c0, n_cols):
    sparsity = 0.9
    key = jax.random.key(1234)
    spec, _ = make_spec(shape, sparsity, "uniform", "permutation", "nearest")
    got = jax.jit(
        lambda key: blocks.row_block(key, spec, r0, n_rows, c0, n_cols)
    )(key)

    init_key, mask_key = jax.random.split(key)
    row_keys = jax.random.split(mask_key, shape[0])[r0 : r0 + n_rows]
    perms = jax.vmap(lambda k: jax.random.permutation(k, shape[1]))(row_keys)
    keep = np.asarray(perms)[:, c0 : c0 + n_cols] >= alberta.num_zeros(
        shape[1], sparsity
    )
    rows, cols = np.meshgrid(
        np.arange(r0, r0 + n_rows), np.arange(c0, c0 + n_cols), indexing="ij"
    )
    scale = 1.0 / shape[1] ** 0.5
    # Jitted, as the library runs it (see ElementBitsTest): one FMA.
    to_uniform = jax.jit(bits.bits_to_uniform, static_argnums=(1, 2))
    values = np.asarray(
        to_uniform(
            jnp.asarray(reference_bits(init_key, rows, cols, shape[1])),
            -scale,
            scale,
        )
    )
    want = np.where(keep, values, np.copysign(np.float32(0), values))
    self.assertTrue(keep.any() and not keep.all())
    assert_same_matrix(got, want, "uniform")


class HostLoopTest(parameterized.TestCase):
  """`generate_host_loop` (top-level chunking) equals the one-piece tile."""

  # The default run: each method and distribution once, chunks of 7 (a
  # ragged last chunk; the program test_sparse_init_chunk_rows_changes_nothing
  # runs too) and an inner tile in one over-long chunk; the slow run: the
  # other two, and every kind of chunk size.
  @parameterized.named_parameters(*_COVERING)
  def test_every_chunk_size_equals_unchunked_bit_for_bit(
      self, method, init_type
  ):
    self._check_chunk_sizes(method, init_type, (7,), inner_chunk_rows=64)

  @parameterized.named_parameters(*_METHODS_AND_TYPES)
  @test_utils.slow
  def test_every_chunk_size_equals_unchunked_bit_for_bit_sweep(
      self, method, init_type
  ):
    # 1..50 and beyond: divisors, ragged last chunks, one chunk, over-long.
    self._check_chunk_sizes(method, init_type, (1, 3, 7, 16, 25, 49, 50, 64))

  def _check_chunk_sizes(
      self, method, init_type, chunk_sizes, inner_chunk_rows=7
  ):
    key = jax.random.key(_KEY)
    spec = _spec(method, init_type)
    whole = _reference(method, init_type)  # one piece
    for chunk_rows in chunk_sizes:
      got = blocks.generate_host_loop(
          key, spec, 0, 50, 0, 33, jnp.float32, chunk_rows
      )
      assert_same_matrix(got, whole, "uniform")  # bit for bit, also normal
    # An inner tile: global row and column offsets reach the chunks.
    tile = blocks.generate_host_loop(
        key, spec, 11, 20, 5, 17, jnp.float32, inner_chunk_rows
    )
    assert_same_matrix(tile, whole[11:31, 5:22], "uniform")

  @parameterized.parameters("permutation", "counter")
  def test_sparse_init_uses_it_for_chunked_matrices_with_same_result(
      self, method
  ):
    # Small matrices are chunked too without the policy's lower bound.
    with mock.patch.object(driver, "_UNCHUNKED_BYTES", 0):
      self._check_sparse_init_uses_it(method, (64, 40))

  @parameterized.parameters("permutation", "counter")
  @test_utils.slow
  def test_sparse_init_uses_it_for_large_matrices(self, method):
    self._check_sparse_init_uses_it(method, (1100, 1024))  # 4.3 MiB

  def _check_sparse_init_uses_it(self, method, shape):
    spec, _ = make_spec(shape, 0.9, "uniform", method, "nearest")
    self.assertLess(
        blocks.default_chunk_rows(spec, *shape, jnp.float32), shape[0]
    )
    key = jax.random.key(8)
    calls = []
    original = blocks.generate_host_loop

    def spy(*args, **kwargs):
      calls.append(args[1])
      return original(*args, **kwargs)

    with mock.patch.object(blocks, "generate_host_loop", spy):
      eager = alberta.sparse_init(key, shape, method=method)
      traced = jax.jit(lambda k: alberta.sparse_init(k, shape, method=method))(
          key
      )
    self.assertEqual(calls, [spec])  # the top-level call only, not under jit
    assert_same_matrix(eager, traced, "uniform")

  @parameterized.named_parameters(*_COVERING)
  def test_sparse_init_chunk_rows_changes_nothing(self, method, init_type):
    key = jax.random.key(_KEY)
    whole = _reference(method, init_type)
    # A ragged last chunk, at top level (a host loop) and under jit (a loop in
    # the graph).
    run = lambda k: alberta.sparse_init(
        k, _SHAPE, _SPARSITY, init_type, method=method, chunk_rows=7
    )
    assert_same_matrix(run(key), whole, "uniform")
    assert_same_matrix(jax.jit(run)(key), whole, "uniform")

  @parameterized.parameters(
      (0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)
  )
  def test_sparse_init_refuses_bad_chunk_rows(self, chunk_rows, error):
    with self.assertRaisesRegex(error, rf"chunk_rows .*{chunk_rows!r}"):
      alberta.sparse_init(jax.random.key(0), (4, 4), chunk_rows=chunk_rows)

  def test_at_top_level(self):
    key = jax.random.key(0)
    self.assertTrue(driver.at_top_level(key))
    seen = []
    jax.jit(lambda k: seen.append(driver.at_top_level(k)))(key)
    jax.jit(lambda x: seen.append(driver.at_top_level(key)))(1.0)
    jax.vmap(lambda k: seen.append(driver.at_top_level(k)))(
        jax.random.split(key, 2)
    )
    self.assertEqual(seen, [False, False, False])


class RowOffsetTest(absltest.TestCase):

  def test_tiles_of_2_31_rows_and_more_lower(self):
    # Offsets are uint32: an int32 chunk start would wrap (and fail to lower)
    # past 2**31 rows. Lowered only, never run.
    spec, _ = make_spec((2**31 + 8, 1), 0.5, "uniform", "counter", "nearest")
    key = jax.random.key(0)
    jax.jit(
        lambda k: blocks.generate(
            k, spec, 0, 2**31 + 8, 0, 1, jnp.float32, 1024
        )
    ).lower(key)
    jax.jit(
        lambda k, r0: blocks.generate(
            k, spec, r0, 2**31 + 8, 0, 1, jnp.float32, 2**31
        )
    ).lower(key, jnp.uint32(5))


class DefaultChunkRowsTest(parameterized.TestCase):

  @parameterized.parameters("permutation", "counter")
  def test_small_tile_is_one_chunk(self, method):
    spec, _ = make_spec((64, 64), 0.9, "uniform", method, "nearest")
    self.assertEqual(blocks.default_chunk_rows(spec, 64, 64, jnp.float32), 64)
    self.assertEqual(blocks.default_chunk_rows(spec, 0, 64, jnp.float32), 1)

  def test_large_tile_is_chunked(self):
    spec, _ = make_spec((16384, 2048), 0.9, "uniform", "permutation", "nearest")
    chunk = blocks.default_chunk_rows(spec, 2048, 2048, jnp.float32)
    self.assertBetween(chunk, 1, 2047)

  def test_counter_chunks_short_rows_only(self):
    # Its temporaries are per-row round words: a long-row tile fits unchunked,
    # a tile of short rows (more round words than elements) is chunked.
    spec, _ = make_spec((2048, 2048), 0.9, "uniform", "counter", "nearest")
    self.assertEqual(
        blocks.default_chunk_rows(spec, 2048, 2048, jnp.float32), 2048
    )
    spec, _ = make_spec((2**20, 16), 0.9, "uniform", "counter", "nearest")
    self.assertBetween(
        blocks.default_chunk_rows(spec, 2**20, 16, jnp.float32), 1, 2**20 - 1
    )

  def test_chunks_are_equal(self):
    # 2048 rows that fit 1927 at a time run as two chunks of 1024, not
    # 1927 + a shifted second chunk that redoes 1806 rows.
    self.assertEqual(
        driver.chunk_rows_for(2048, 2**30, 1000, 1927 * 1000 / 2**30), 1024
    )


class PartitionableFlagTest(parameterized.TestCase):

  def test_sparse_init_refuses_when_partitionable_is_off(self):
    key = jax.random.key(0)
    # Compile first with the flag on, so a stale cache would be the failure.
    expected = np.asarray(alberta.sparse_init(key, (16, 24)))
    previous = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    try:
      with self.assertRaisesRegex(RuntimeError, "jax_threefry_partitionable"):
        alberta.sparse_init(key, (16, 24))
      with self.assertRaisesRegex(RuntimeError, "jax_threefry_partitionable"):
        alberta.sparse_init(jax.random.PRNGKey(0), (8, 40), 0.5, "normal")
      with self.assertRaisesRegex(RuntimeError, "jax_threefry_partitionable"):
        spec, _ = make_spec((16, 24), 0.9, "uniform", "permutation", "nearest")
        blocks.row_block(key, spec, 0, 4)
    finally:
      jax.config.update("jax_threefry_partitionable", previous)
    np.testing.assert_array_equal(
        np.asarray(alberta.sparse_init(key, (16, 24))), expected
    )

  def test_counter_method_refuses_or_is_unchanged_when_partitionable_is_off(
      self,
  ):
    # The counter method does not reproduce jax.random's layout, so it may
    # either refuse too or give the same numbers; never different ones.
    key = jax.random.key(0)
    expected = np.asarray(alberta.sparse_init(key, (16, 24), method="counter"))
    previous = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    try:
      try:
        got = np.asarray(alberta.sparse_init(key, (16, 24), method="counter"))
      except RuntimeError as e:
        self.assertIn("jax_threefry_partitionable", str(e))
      else:
        np.testing.assert_array_equal(got, expected)
    finally:
      jax.config.update("jax_threefry_partitionable", previous)


if __name__ == "__main__":
  absltest.main()
