"""Global coordinates at and beyond 2**31: the shuffle, tiles and huge tiles.

Dimensions may be anything below 2**32, so every coordinate and every counter
the generators compute in uint32 crosses 2**31, where signed arithmetic and
`K + n`-style sums overflow. Proves that the counter shuffle is a permutation
of `[0, n)` for n up to `2**32 - 1`; that tiles at rows and columns near
2**31 and 2**32 agree with overlapping tiles and with an independent numpy
(int64 / uint64) model of the same construction; and that a tile of more than
2**31 rows is built (traced and lowered here, not run) or refused up front.
"""

from tests import env  # noqa: F401

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from alberta._src import bits
from alberta._src import blocks
from alberta._src import counter
from alberta._src import keys
from alberta._src import methods
from alberta._src.spec import make_spec
from tests import test_utils

# Row lengths either side of and at 2**31, and the largest; each compiles its
# own programs, so the default run takes three and the slow step all five.
_LARGE_N = (2**31 - 1, 2**31, 2**32 - 1)
_MORE_LARGE_N = (2**31 + 1, 3 * 2**30)


def _columns(n: int, count: int = 3000) -> np.ndarray:
  """Extremes, both sides of 2**31, and random columns of `[0, n)`, distinct."""
  edges = [0, 1, 2, n - 3, n - 2, n - 1] + [
      c for c in range(2**31 - 3, 2**31 + 3) if c < n
  ]
  rand = np.random.default_rng(n).integers(0, n, count, dtype=np.int64)
  return np.unique(np.concatenate([edges, rand])).astype(np.uint32)


@functools.partial(jax.jit, static_argnames=("n",))
def _round_trip(key, rows, cols, n: int):
  mask_key = keys.key_words(key)
  material = test_utils.round_keys(mask_key, rows, n)
  x = jnp.broadcast_to(cols[None, :], (rows.shape[0], cols.shape[0]))
  image = counter.permute(x, material, n)
  return image, counter.permute(image, material, n, inverse=True), material


def _model_permute(x: np.ndarray, material, n: int) -> np.ndarray:
  """`counter.permute` of `x[r, :]` in numpy int64: `(K - x) % n` exactly."""
  ks, as_, bs = (np.asarray(m) for m in material)
  x = x.astype(np.int64)
  for r in range(x.shape[0]):
    for i in range(ks.shape[1]):
      x[r] = test_utils.counter_model_round(
          x[r], ks[r, i], as_[r, i], bs[r, i], n
      )
  return x


def _model_value_bits(
    init_key, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
  """`counter.value_bits` in numpy uint64, reduced mod 2**32 at every step."""
  s1, s2 = (
      np.asarray(w, np.uint64)
      for w in _threefry(init_key, rows, np.zeros_like(rows))
  )
  m32 = np.uint64(2**32 - 1)

  def mix(x):
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & m32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & m32
    return x ^ (x >> np.uint64(16))

  c = cols.astype(np.uint64)[None, :]
  return mix((mix(c ^ s1[:, None]) + s2[:, None]) & m32).astype(np.uint32)


# Jitted as in the generators: op by op, the uniform map's multiply-add would
# be rounded twice instead of fused.
_values_from_bits = jax.jit(methods.values_from_bits, static_argnums=0)
# The library's pieces the models below start from, each one program (op by
# op, every op would compile on its own).
_round_keys = jax.jit(test_utils.round_keys, static_argnums=2)
_threefry = jax.jit(test_utils.threefry)
_mul_add_u64 = jax.jit(bits.mul_add_u64, static_argnums=1)


@functools.partial(jax.jit, static_argnums=(1,))
def _permutation_values(key, spec, rows):
  """Permutation-method values at `rows` x all columns (from reference bits)."""
  init_key, _ = keys.split2(keys.key_words(key))
  return methods.values_from_bits(
      spec,
      test_utils.element_bits(
          init_key,
          rows[:, None],
          jnp.arange(spec.fan_in, dtype=jnp.uint32)[None, :],
          spec.fan_in,
      ),
  )


class LargeFanInShuffleTest(parameterized.TestCase):

  @parameterized.parameters(*_LARGE_N)
  def test_permute_is_a_permutation_of_fan_in(self, n):
    self.check_permute_is_a_permutation_of_fan_in(n)

  @parameterized.parameters(*_MORE_LARGE_N)
  @test_utils.slow
  def test_shuffle_and_round_keys_at_more_fan_ins(self, n):
    self.check_permute_is_a_permutation_of_fan_in(n)
    self.check_round_keys_k_is_the_64_bit_multiply_high(n)

  def check_permute_is_a_permutation_of_fan_in(self, n):
    rows = np.array([0, 1, 2**31 - 1, 2**31, 2**32 - 2], np.uint32)
    cols = _columns(n)
    image, back, material = _round_trip(jax.random.key(7), rows, cols, n)
    image = np.asarray(image)
    self.assertTrue((np.asarray(material[0]) < n).all())  # K in [0, n)
    self.assertTrue((image < n).all())
    np.testing.assert_array_equal(
        np.asarray(back), np.broadcast_to(cols, image.shape)
    )
    for row in image:  # injective on the sampled columns
      self.assertLen(np.unique(row), len(cols))
    # An independent model (int64, exact modular arithmetic) agrees on the
    # extremes and a few others.
    some = np.r_[0:12, -12:0]
    np.testing.assert_array_equal(
        _model_permute(
            np.broadcast_to(cols[some], (len(rows), len(some))), material, n
        ),
        image[:, some],
    )

  @parameterized.parameters(*_LARGE_N)
  def test_round_keys_k_is_the_64_bit_multiply_high(self, n):
    self.check_round_keys_k_is_the_64_bit_multiply_high(n)

  def check_round_keys_k_is_the_64_bit_multiply_high(self, n):
    rows = jnp.asarray([0, 2**32 - 1], jnp.uint32)
    mask_key = keys.key_words(jax.random.key(8))
    ks = np.asarray(_round_keys(mask_key, rows, n)[0])
    j = jnp.arange(1, counter.num_rounds(n) + 1, dtype=jnp.uint32)
    w1, w2 = (
        np.asarray(w, np.uint64)
        for w in _threefry(mask_key, rows[:, None], j[None, :])
    )
    u = [
        [(int(a) << 32) | int(b) for a, b in zip(w1[r], w2[r], strict=True)]
        for r in range(2)
    ]
    np.testing.assert_array_equal(ks, [[(v * n) >> 64 for v in r] for r in u])


class LargeCoordinateTileTest(parameterized.TestCase):
  """`blocks.row_block`'s tiles (jitted, starts traced) at large coordinates."""

  @parameterized.product(
      fan_in=(2**31 + 1, 2**32 - 1), row_start=(2**31 - 2, 2**32 - 6)
  )
  def test_counter_tile_matches_overlaps_and_numpy_model(
      self, fan_in, row_start
  ):
    self.check_counter_tile_matches_overlaps_and_numpy_model(fan_in, row_start)

  @parameterized.parameters(2**31 - 2, 2**32 - 6)
  @test_utils.slow
  def test_counter_tile_matches_overlaps_and_numpy_model_mid_fan_in(
      self, row_start
  ):
    self.check_counter_tile_matches_overlaps_and_numpy_model(
        3 * 2**30, row_start
    )

  def check_counter_tile_matches_overlaps_and_numpy_model(
      self, fan_in, row_start
  ):
    spec = make_spec((2**32 - 1, fan_in), 0.5, "uniform", "counter", "nearest")[
        0
    ]
    key = jax.random.key(9)
    for col_start in (2**31 - 9, fan_in - 16):
      r0, c0 = np.uint32(row_start), np.uint32(col_start)
      tile = np.asarray(blocks.row_block(key, spec, r0, 4, c0, 16))
      shifted = np.asarray(
          blocks.row_block(
              key, spec, r0 + np.uint32(1), 4, c0 + np.uint32(5), 16
          )
      )
      test_utils.assert_same_bits(tile[1:, 5:], shifted[:3, :11])
      # The same tile from the numpy model of mask and values.
      rows = row_start + np.arange(4, dtype=np.int64)
      cols = col_start + np.arange(16, dtype=np.int64)
      init_key = mask_key = keys.key_words(key)
      material = _round_keys(mask_key, jnp.asarray(rows, jnp.uint32), fan_in)
      keep = (
          _model_permute(np.broadcast_to(cols, (4, 16)), material, fan_in)
          >= spec.k
      )
      values = np.asarray(
          _values_from_bits(
              spec,
              jnp.asarray(
                  _model_value_bits(
                      init_key, rows.astype(np.uint32), cols.astype(np.uint32)
                  )
              ),
          )
      )
      np.testing.assert_array_equal(tile != 0, keep)
      test_utils.assert_same_bits(tile[keep], values[keep])

  @parameterized.product(
      method=("permutation", "counter"), row_start=(2**31 - 3, 2**32 - 7)
  )
  def test_small_rows_near_the_row_limit(self, method, row_start):
    fan_in = 8
    spec = make_spec((2**32 - 1, fan_in), 0.5, "uniform", method, "nearest")[0]
    key = jax.random.key(10)
    r0 = np.uint32(row_start)
    tile = np.asarray(blocks.row_block(key, spec, r0, 6))
    # Every full row has exactly k zeros (a kept weight is 0.0 w.p. 2**-23).
    np.testing.assert_array_equal((tile == 0).sum(axis=1), spec.k)
    # Overlapping row tiles and a column tile agree.
    later = np.asarray(blocks.row_block(key, spec, r0 + np.uint32(2), 4))
    test_utils.assert_same_bits(tile[2:], later)
    cols = np.asarray(blocks.row_block(key, spec, r0, 6, np.uint32(3), 4))
    test_utils.assert_same_bits(tile[:, 3:7], cols)
    if method == "permutation":
      # The value bits hash the flat 64-bit counter row * fan_in + col.
      rows = row_start + np.arange(6, dtype=np.uint64)
      hi, lo = _mul_add_u64(jnp.asarray(rows, jnp.uint32), fan_in)
      flat = rows * np.uint64(fan_in)
      np.testing.assert_array_equal(np.asarray(hi), flat >> np.uint64(32))
      np.testing.assert_array_equal(np.asarray(lo), flat & np.uint64(2**32 - 1))
      want = _permutation_values(key, spec, jnp.asarray(rows, jnp.uint32))
      keep = tile != 0
      test_utils.assert_same_bits(tile[keep], np.asarray(want)[keep])


class HugeTileTest(absltest.TestCase):

  def test_chunked_tile_of_over_2_31_rows_lowers_or_is_refused(self):
    # Traced and lowered only: the tile itself would be 8 GiB.
    n_rows = 2**31 + 8
    spec = make_spec((n_rows, 1), 0.0, "uniform", "counter", "nearest")[0]

    def build(key):
      return blocks.generate(
          key, spec, 0, n_rows, 0, 1, jnp.float32, chunk_rows=1024
      )

    try:
      out = jax.eval_shape(build, jax.random.key(0))
      jax.jit(build).lower(jax.random.key(0))
    except ValueError:  # a clear refusal up front is acceptable too
      return
    self.assertEqual(out.shape, (n_rows, 1))


if __name__ == "__main__":
  absltest.main()
